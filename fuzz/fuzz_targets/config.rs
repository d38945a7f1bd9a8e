//! The agent's and the collector's TOML configuration: arbitrary text gives
//! a config or a clear error, never a panic. Seed byte even: agent, odd:
//! collector. Paths the loaders would read (CA file, token file, TLS) are
//! cleared: reading whatever file the input names (`/dev/zero`) is not
//! what this target tests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use querywatch_fuzz::split_first;

fuzz_target!(|data: &[u8]| {
    let (seed, text) = split_first(data);
    let Ok(text) = std::str::from_utf8(text) else { return };
    if seed % 2 == 0 {
        use querywatch_agent::config::{Config, Env, Overrides, RawConfig};
        match toml::from_str::<RawConfig>(text) {
            Ok(mut raw) => {
                raw.export.ca_file = None;
                let env = Env::from_pairs([("HOSTNAME", "fuzz-node")]);
                match Config::resolve(raw, &env, &Overrides::default()) {
                    Ok(c) => assert!(!c.node.is_empty()),
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    } else {
        use querywatch_collector::config::{Config, Overrides, RawConfig};
        match toml::from_str::<RawConfig>(text) {
            Ok(mut raw) => {
                raw.receive.token_file = None;
                raw.receive.tls_cert = None;
                raw.receive.tls_key = None;
                match Config::resolve(raw, &Overrides::default()) {
                    Ok(_) => {}
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
