"""Send OTLP to the querywatch receiver with the official OpenTelemetry
Python SDK exporters, the way any instrumented application would.

    python_sdk_send.py GRPC_HOST:PORT HTTP_BASE_URL TOKEN

Records a few metrics and log records (foreign data: not querywatch's)
with the SDK, then exports them with OTLPMetricExporter and OTLPLogExporter
over gRPC and over HTTP/protobuf, each with `Authorization: Bearer TOKEN`.
Prints one JSON line per export with its result and the number of items
sent, and exits 1 unless every export returned SUCCESS.

Run by collector/tests/receive.rs with the venv scripts/deps.sh creates.
"""

import json
import logging
import sys

from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.sdk._logs import LoggerProvider, LogRecord
from opentelemetry.sdk._logs.export import InMemoryLogExporter, LogExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource


def metrics_data():
    """Three data points of an application's own metrics."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=Resource.create({"service.name": "shop-api"}), metric_readers=[reader])
    meter = provider.get_meter("shop")
    requests = meter.create_counter("http.server.requests", unit="{request}")
    requests.add(3, {"http.route": "/orders"})
    requests.add(1, {"http.route": "/cart"})
    meter.create_histogram("http.server.request.duration", unit="s").record(0.25, {"http.route": "/orders"})
    data = reader.get_metrics_data()
    points = sum(
        len(m.data.data_points) for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    )
    provider.shutdown()
    return data, points


def log_batch():
    """Two log records of an application's own."""
    memory = InMemoryLogExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "shop-api"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("shop")
    for body in ("order 1 placed", "order 2 placed"):
        logger.emit(LogRecord(body=body, severity_number=SeverityNumber.INFO, severity_text="INFO"))
    batch = list(memory.get_finished_logs())
    provider.shutdown()
    return batch


def main():
    grpc_endpoint, http_base, token = sys.argv[1:4]
    headers = {"authorization": f"Bearer {token}"}
    data, points = metrics_data()
    logs = log_batch()
    assert points == 3 and len(logs) == 2, (points, len(logs))
    exports = [
        (
            "grpc metrics",
            GrpcMetricExporter(endpoint=grpc_endpoint, insecure=True, headers=headers, timeout=10),
            data,
            MetricExportResult.SUCCESS,
            points,
        ),
        (
            "http metrics",
            HttpMetricExporter(
                endpoint=f"{http_base}/v1/metrics", headers=headers, timeout=10, compression=Compression.Gzip
            ),
            data,
            MetricExportResult.SUCCESS,
            points,
        ),
        (
            "grpc logs",
            GrpcLogExporter(endpoint=grpc_endpoint, insecure=True, headers=headers, timeout=10),
            logs,
            LogExportResult.SUCCESS,
            len(logs),
        ),
        (
            "http logs",
            HttpLogExporter(endpoint=f"{http_base}/v1/logs", headers=headers, timeout=10),
            logs,
            LogExportResult.SUCCESS,
            len(logs),
        ),
    ]
    ok = True
    for name, exporter, payload, success, items in exports:
        result = exporter.export(payload)
        exporter.shutdown()
        print(json.dumps({"export": name, "result": result.name, "items": items}), flush=True)
        ok = ok and result == success
    return 0 if ok else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(main())
