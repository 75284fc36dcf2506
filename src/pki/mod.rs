//! Certificates: the CA's lifecycle (`ca`), minting leaves (`factory`), the names they may carry
//! (`names`), and the CA checksum agents verify.

pub mod ca;
pub mod chain_check;
pub mod factory;
pub mod inspect;
pub mod names;
pub mod scenarios;
pub mod server_url;

use rand::RngCore;
use rcgen::{DnValue, SerialNumber};
use sha2::{Digest, Sha256};

pub use ca::{CaError, CaProfile, CertificateAuthority};
pub use factory::{LeafFactory, MintedLeaf};
pub use names::{AllowList, AllowListError, NameError, SubjectName};
pub use server_url::{ServerUrl, ServerUrlError};

/// The body `/cacerts` serves for a `cacerts` value: the value plus one `\n` (empty stays empty).
/// The ALPN protocol of TLS-ALPN-01 validations (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A key identifier as RFC 5280 §4.2.1.2 method 1 makes it: the SHA-1 of the subjectPublicKey BIT
/// STRING's value (for P-256, the uncompressed point), which strict linters (pkilint) recognise.
pub fn key_identifier(public_key_raw: &[u8]) -> rcgen::KeyIdMethod {
    use sha1::Digest;
    rcgen::KeyIdMethod::PreSpecified(sha1::Sha1::digest(public_key_raw).to_vec())
}

pub fn cacerts_body(cacerts: &str) -> String {
    let trimmed = cacerts.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}\n")
    }
}

/// The CA checksum: lower-case hex SHA-256 of the `/cacerts` body, as Rancher's `CAChecksum()` and
/// the agent's `sha256sum` compute it. Empty when there is no CA to pin.
pub fn ca_checksum(cacerts: &str) -> String {
    let body = cacerts_body(cacerts);
    if body.is_empty() {
        return String::new();
    }
    hex::encode(Sha256::digest(body.as_bytes()))
}

/// A random, positive, 128-bit certificate serial (RFC 5280 §4.1.2.2: positive, at most 20 octets).
/// Leaves share a key, so a serial derived from the key would repeat: it must be random.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and never a shorter, zero-led encoding
    SerialNumber::from_slice(&bytes)
}

/// A directory-string value encoded as Go's crypto/x509 does: PrintableString when every character
/// allows it, UTF8String otherwise (e.g. the `@` in `dynamiclistener-ca@…`).
pub(crate) fn dn_value(text: &str) -> DnValue {
    match rcgen::string::PrintableString::try_from(text) {
        Ok(printable) => DnValue::PrintableString(printable),
        Err(_) => DnValue::Utf8String(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_exactly_one_trailing_newline() {
        assert_eq!(cacerts_body("PEM\n\n"), "PEM\n");
        assert_eq!(cacerts_body("PEM"), "PEM\n");
        assert_eq!(cacerts_body("  "), "");
    }

    #[test]
    fn checksum_is_sha256_of_the_body() {
        // printf 'abc\n' | sha256sum
        assert_eq!(
            ca_checksum("abc"),
            "edeaaff3f1774ad2888673770c6d64097e391bc362d7d6fb34982ddf0efd18cb"
        );
        assert_eq!(ca_checksum(""), "");
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let (a, b) = (random_serial(), random_serial());
        assert_ne!(a, b);
        assert!(a.as_ref()[0] & 0x80 == 0 && a.as_ref()[0] != 0);
    }
}
