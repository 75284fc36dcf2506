//! Bring-your-own certificate files: whatever the chain and key files hold, they load or are
//! refused with a reason; never a panic. The first byte splits the input into the two files.
#![no_main]

use corral::certs::byo::parse_pair;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(rest.len()) * rest.len() / 255;
    let (chain, key) = rest.split_at(at.min(rest.len()));
    let _ = parse_pair(chain, key, false);
});
