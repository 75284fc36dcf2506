//! The API's JSON bodies: parsed as the norman dispatcher parses them, then admitted against every
//! schema it serves, for a create and an update — refused or taken, never a panic.
#![no_main]

use corral::api::input::{Op, admit, parse_object};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = parse_object(data) else {
        return;
    };
    let registry = &corral::http::norman::api().registry;
    for version in registry.versions() {
        for schema in registry.schemas(version) {
            let _ = admit(schema, Op::Create, body.clone());
            let _ = admit(schema, Op::Update, body.clone());
        }
    }
});
