//! A tunnel message from a peer: decoded or refused, and what decodes re-encodes to the same bytes
//! (minus the deadline field, which receivers ignore).
#![no_main]

use corral::tunnel::codec::{Message, decode_sync, encode_sync};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(bytes::Bytes::copy_from_slice(data)) {
        let again = Message::decode(message.encode()).expect("an encoded message decodes");
        assert_eq!(again, message);
        if let Ok(ids) = decode_sync(&message.payload) {
            assert_eq!(decode_sync(&encode_sync(&ids)).unwrap().len(), ids.len());
        }
    }
});
