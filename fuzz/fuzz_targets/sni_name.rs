//! A client's SNI or Host: refused, or a clean name that parses to itself again; the allow-list
//! never panics on it.
#![no_main]

use corral::pki::{AllowList, SubjectName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = SubjectName::parse(raw) {
        let text = name.to_string();
        assert!(text.len() <= 253 && !text.contains('*'));
        assert_eq!(SubjectName::parse(&text), Ok(name.clone()));
        let allow = AllowList::new(&["*.lab.test".to_string(), "re:^[a-z]+\\.example$".to_string()])
            .expect("a valid allow-list");
        let _ = allow.allows(&name);
    }
});
