//! Arbitrary bytes as an OTLP logs request, as the collector receives it
//! (protobuf, prost) → `querywatch_wire::otlp::decode_logs`: a clean
//! `Err` or a batch; an accepted batch is coherent (`check_decoded`) and can
//! be encoded and decoded again. Thin on purpose: only the public decode
//! entry points are called, so the target follows a rewrite of the path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use querywatch_fuzz::otlp::check_decoded;
use querywatch_wire::otlp::{decode_logs, encode_logs};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = ExportLogsServiceRequest::decode(data) else { return };
    let Ok(decoded) = decode_logs(&req) else { return };
    check_decoded(&decoded, |obs, res, interval| {
        let again = decode_logs(&encode_logs(obs, res, interval)).expect("re-encoded logs decode");
        again.batches.into_iter().map(|b| b.1).collect()
    });
});
