//! Arbitrary bytes as an OTLP metrics request, as the collector receives it
//! (protobuf, prost) → `querywatch_wire::otlp::decode_metrics`: a clean
//! `Err` or a batch; an accepted batch is coherent (`check_decoded`) and can
//! be encoded and decoded again. Thin on purpose: only the public decode
//! entry points are called, so the target follows a rewrite of the path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use querywatch_fuzz::otlp::check_decoded;
use querywatch_wire::otlp::{decode_metrics, encode_metrics};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = ExportMetricsServiceRequest::decode(data) else { return };
    let Ok(decoded) = decode_metrics(&req) else { return };
    check_decoded(&decoded, |obs, res, interval| {
        let again = decode_metrics(&encode_metrics(obs, res, interval)).expect("re-encoded metrics decode");
        again.batches.into_iter().map(|b| b.1).collect()
    });
});
