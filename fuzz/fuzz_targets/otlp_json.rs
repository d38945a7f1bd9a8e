//! OTLP/JSON request bodies, decoded as the collector's HTTP receiver does
//! (`collector/src/receive/http.rs`, `parse`: `serde_json::from_slice` into
//! the `opentelemetry-proto` message with its `with-serde` feature), then
//! `decode_metrics` / `decode_logs`. Seed byte even: metrics, odd: logs.
//! Kept thin (the receiver is being reworked): it calls the same serde
//! entry point rather than a private function of the receiver.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use querywatch_fuzz::otlp::check_decoded;
use querywatch_fuzz::split_first;
use querywatch_wire::otlp::{decode_logs, decode_metrics, encode_logs, encode_metrics};

fuzz_target!(|data: &[u8]| {
    let (seed, body) = split_first(data);
    if seed % 2 == 0 {
        let Ok(req) = serde_json::from_slice::<ExportMetricsServiceRequest>(body) else { return };
        let Ok(decoded) = decode_metrics(&req) else { return };
        check_decoded(&decoded, |obs, res, interval| {
            decode_metrics(&encode_metrics(obs, res, interval))
                .expect("re-encoded")
                .batches
                .into_iter()
                .map(|b| b.1)
                .collect()
        });
    } else {
        let Ok(req) = serde_json::from_slice::<ExportLogsServiceRequest>(body) else { return };
        let Ok(decoded) = decode_logs(&req) else { return };
        check_decoded(&decoded, |obs, res, interval| {
            decode_logs(&encode_logs(obs, res, interval))
                .expect("re-encoded")
                .batches
                .into_iter()
                .map(|b| b.1)
                .collect()
        });
    }
});
