//! `X-API-Tunnel-Params` from an agent: parsed or refused with a text, never a panic.
#![no_main]

use corral::tunnel::ClusterParams;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(params) = ClusterParams::from_header(text) {
            assert!(!params.address.trim().is_empty() && !params.token.trim().is_empty());
        }
    }
});
