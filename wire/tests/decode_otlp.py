#!/usr/bin/env python3
"""The other side of wire/tests/python_interop.rs: OTLP read and written by the
official Python `opentelemetry-proto` package, a decoder querywatch did not
write. Run with the venv scripts/deps.sh creates (target/pyenv).

  decode_otlp.py metrics FILE        parse ExportMetricsServiceRequest bytes, print a JSON summary
  decode_otlp.py logs FILE           parse ExportLogsServiceRequest bytes, print a JSON summary
  decode_otlp.py build-metrics FILE  write a request with a histogram (and foreign data) to FILE
  decode_otlp.py build-logs FILE     write a request with a sample event (and a foreign record)

The summary names every field querywatch sets. Doubles are printed as their
IEEE-754 bits, so both sides compare exactly rather than through two float
formatters.
"""

import json
import math
import struct
import sys

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2


def bits(x):
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value":
        return {"string": v.string_value}
    if kind == "int_value":
        return {"int": v.int_value}
    if kind == "double_value":
        return {"double": bits(v.double_value)}
    if kind == "bool_value":
        return {"bool": v.bool_value}
    if kind == "bytes_value":
        return {"bytes": v.bytes_value.hex()}
    if kind == "array_value":
        return {"array": [any_value(x) for x in v.array_value.values]}
    if kind == "kvlist_value":
        return {"kvlist": attributes(v.kvlist_value.values)}
    raise ValueError(f"unknown AnyValue kind {kind}")


def attributes(kvs):
    return [[kv.key, any_value(kv.value) if kv.HasField("value") else None] for kv in kvs]


def optional(msg, field):
    return bits(getattr(msg, field)) if msg.HasField(field) else None


def scope(s):
    return {"name": s.name, "version": s.version, "attributes": attributes(s.attributes)}


def number_point(p):
    kind = p.WhichOneof("value")
    value = None
    if kind == "as_int":
        value = {"int": p.as_int}
    elif kind == "as_double":
        value = {"double": bits(p.as_double)}
    return {
        "attributes": attributes(p.attributes),
        "start": p.start_time_unix_nano,
        "time": p.time_unix_nano,
        "flags": p.flags,
        "exemplars": len(p.exemplars),
        "value": value,
    }


def buckets(p, field):
    if not p.HasField(field):
        return None
    b = getattr(p, field)
    return {"offset": b.offset, "counts": list(b.bucket_counts)}


def counted(p):
    """What every histogram and summary point has: its series and count."""
    return {
        "attributes": attributes(p.attributes),
        "start": p.start_time_unix_nano,
        "time": p.time_unix_nano,
        "count": p.count,
    }


def exp_point(p):
    return {
        **counted(p),
        "sum": optional(p, "sum"),
        "min": optional(p, "min"),
        "max": optional(p, "max"),
        "scale": p.scale,
        "zero_count": p.zero_count,
        "zero_threshold": bits(p.zero_threshold),
        "positive": buckets(p, "positive"),
        "negative": buckets(p, "negative"),
        "flags": p.flags,
        "exemplars": len(p.exemplars),
    }


def hist_point(p):
    return {
        **counted(p),
        "sum": optional(p, "sum"),
        "bucket_counts": list(p.bucket_counts),
        "explicit_bounds": [bits(b) for b in p.explicit_bounds],
    }


def summary_point(p):
    return {
        **counted(p),
        "sum": bits(p.sum),
        "quantiles": [[bits(q.quantile), bits(q.value)] for q in p.quantile_values],
    }


def metric(m):
    kind = m.WhichOneof("data")
    out = {"name": m.name, "unit": m.unit, "description": m.description, "kind": kind}
    data = getattr(m, kind)
    temporality = metrics_pb2.AggregationTemporality.Name
    if kind == "sum":
        out["temporality"] = temporality(data.aggregation_temporality)
        out["monotonic"] = data.is_monotonic
        out["points"] = [number_point(p) for p in data.data_points]
    elif kind == "gauge":
        out["points"] = [number_point(p) for p in data.data_points]
    elif kind == "exponential_histogram":
        out["temporality"] = temporality(data.aggregation_temporality)
        out["points"] = [exp_point(p) for p in data.data_points]
    elif kind == "histogram":
        # The collector's [forward] push (the agent sends none).
        out["temporality"] = temporality(data.aggregation_temporality)
        out["points"] = [hist_point(p) for p in data.data_points]
    elif kind == "summary":
        out["points"] = [summary_point(p) for p in data.data_points]
    else:
        raise ValueError(f"{m.name}: querywatch does not send {kind}")
    return out


def summarize_metrics(req):
    return {
        "resource_metrics": [
            {
                "resource": attributes(rm.resource.attributes),
                "schema_url": rm.schema_url,
                "scopes": [
                    {"scope": scope(sm.scope), "schema_url": sm.schema_url, "metrics": [metric(m) for m in sm.metrics]}
                    for sm in rm.scope_metrics
                ],
            }
            for rm in req.resource_metrics
        ]
    }


def record(r):
    return {
        "time": r.time_unix_nano,
        "observed_time": r.observed_time_unix_nano,
        "severity_number": r.severity_number,
        "severity_number_name": logs_pb2.SeverityNumber.Name(r.severity_number),
        "severity_text": r.severity_text,
        "body": any_value(r.body) if r.HasField("body") else None,
        "attributes": attributes(r.attributes),
        "event_name": r.event_name,
        "flags": r.flags,
        "trace_id": r.trace_id.hex(),
        "span_id": r.span_id.hex(),
    }


def summarize_logs(req):
    return {
        "resource_logs": [
            {
                "resource": attributes(rl.resource.attributes),
                "schema_url": rl.schema_url,
                "scopes": [
                    {"scope": scope(sl.scope), "schema_url": sl.schema_url, "records": [record(r) for r in sl.log_records]}
                    for sl in rl.scope_logs
                ],
            }
            for rl in req.resource_logs
        ]
    }


def kv(key, value):
    if isinstance(value, bool):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(bool_value=value))
    if isinstance(value, int):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=value))
    if isinstance(value, float):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(double_value=value))
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))


RESOURCE = [
    kv("service.name", "querywatch-agent"),
    kv("querywatch.node", "py-node"),
    kv("server.port", 5433),
    kv("py.extra", "kept"),
]
STATEMENT = [
    kv("db.namespace", "shop"),
    kv("querywatch.db.user", "app"),
    kv("db.query.text", "SELECT * FROM t WHERE id = $1"),
    kv("db.operation.name", "SELECT"),
    kv("querywatch.source", "log"),
]
START, END = 1_700_000_000_000_000_000, 1_700_000_010_000_000_000
DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA


def build_metrics():
    """1 ms .. 100 ms in 1 ms steps at scale 3 (not querywatch's 8), plus
    data that is not querywatch's: 2 histogram points and 1 gauge point."""
    scale = 3
    values = [k / 1000 for k in range(1, 101)]
    index = [math.ceil(math.log2(v) * 2**scale) - 1 for v in values]
    offset = min(index)
    counts = [0] * (max(index) - offset + 1)
    for i in index:
        counts[i - offset] += 1
    duration = metrics_pb2.Metric(
        name="querywatch.query.duration",
        unit="s",
        exponential_histogram=metrics_pb2.ExponentialHistogram(
            aggregation_temporality=DELTA,
            data_points=[
                metrics_pb2.ExponentialHistogramDataPoint(
                    attributes=STATEMENT,
                    start_time_unix_nano=START,
                    time_unix_nano=END,
                    count=len(values),
                    sum=sum(values),
                    min=min(values),
                    max=max(values),
                    scale=scale,
                    zero_count=0,
                    positive=metrics_pb2.ExponentialHistogramDataPoint.Buckets(offset=offset, bucket_counts=counts),
                )
            ],
        ),
    )
    errors = metrics_pb2.Metric(
        name="querywatch.statement.errors",
        sum=metrics_pb2.Sum(
            aggregation_temporality=DELTA,
            is_monotonic=True,
            data_points=[
                metrics_pb2.NumberDataPoint(
                    attributes=STATEMENT + [kv("db.response.status_code", "23505")],
                    start_time_unix_nano=START,
                    time_unix_nano=END,
                    as_int=3,
                )
            ],
        ),
    )
    foreign = metrics_pb2.Metric(
        name="http.server.request.duration",
        histogram=metrics_pb2.Histogram(
            aggregation_temporality=DELTA,
            data_points=[metrics_pb2.HistogramDataPoint(count=1, sum=0.2, bucket_counts=[0, 1], explicit_bounds=[0.1])] * 2,
        ),
    )
    other_service = metrics_pb2.ResourceMetrics(
        resource={"attributes": [kv("service.name", "checkout")]},
        scope_metrics=[
            metrics_pb2.ScopeMetrics(
                metrics=[metrics_pb2.Metric(name="process.cpu.utilization", gauge=metrics_pb2.Gauge(data_points=[metrics_pb2.NumberDataPoint(as_double=0.5)]))]
            )
        ],
    )
    ours = metrics_pb2.ResourceMetrics(
        resource={"attributes": RESOURCE},
        scope_metrics=[metrics_pb2.ScopeMetrics(scope={"name": "python-producer"}, metrics=[duration, errors, foreign])],
    )
    return ExportMetricsServiceRequest(resource_metrics=[other_service, ours])


def build_logs():
    sample = logs_pb2.LogRecord(
        time_unix_nano=1_700_000_001_234_000_000,
        observed_time_unix_nano=END,
        severity_number=logs_pb2.SEVERITY_NUMBER_INFO,
        severity_text="INFO",
        body=common_pb2.AnyValue(string_value="SELECT * FROM t WHERE id = $1"),
        attributes=STATEMENT + [kv("querywatch.duration_ms", 12.5)],
        event_name="querywatch.query.sample",
    )
    foreign = logs_pb2.LogRecord(body=common_pb2.AnyValue(string_value="hello"), event_name="app.greeting")
    return ExportLogsServiceRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(
                resource={"attributes": RESOURCE},
                scope_logs=[logs_pb2.ScopeLogs(log_records=[sample, foreign])],
            )
        ]
    )


def main():
    command, path = sys.argv[1], sys.argv[2]
    if command in ("metrics", "logs"):
        req = ExportMetricsServiceRequest() if command == "metrics" else ExportLogsServiceRequest()
        with open(path, "rb") as f:
            req.ParseFromString(f.read())
        summary = summarize_metrics(req) if command == "metrics" else summarize_logs(req)
        json.dump(summary, sys.stdout, indent=1, sort_keys=True)
    elif command in ("build-metrics", "build-logs"):
        req = build_metrics() if command == "build-metrics" else build_logs()
        with open(path, "wb") as f:
            f.write(req.SerializeToString())
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
