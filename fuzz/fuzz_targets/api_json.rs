//! The API's JSON bodies (login, settings, password change, clusters, tokens): parsed or refused.
#![no_main]

use corral::http::{ChangePassword, LoginInput, NewCluster, NewToken, SettingInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<LoginInput>(data);
    let _ = serde_json::from_slice::<SettingInput>(data);
    let _ = serde_json::from_slice::<ChangePassword>(data);
    let _ = serde_json::from_slice::<NewCluster>(data);
    let _ = serde_json::from_slice::<NewToken>(data);
});
