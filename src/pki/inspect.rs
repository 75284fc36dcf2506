//! Reading certificates: a readable summary for the status page, and validity for checks.

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ca::go_style_name;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSummary {
    pub subject: String,
    pub issuer: String,
    /// `DNS:name` and `IP:address` entries.
    pub sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub serial: String,
}

/// Summarises a DER certificate; `None` if it does not parse.
pub fn summarize(der: &[u8]) -> Option<CertificateSummary> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(san_text)
                .collect()
        })
        .unwrap_or_default();
    let time = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp())
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default()
    };
    Some(CertificateSummary {
        subject: go_style_name(cert.subject()),
        issuer: go_style_name(cert.issuer()),
        sans,
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
        serial: cert.raw_serial_as_string(),
    })
}

/// Bytes that are not an X.509 certificate, and the parser's reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnreadableCertificate(#[from] x509_parser::nom::Err<x509_parser::error::X509Error>);

/// A certificate's notBefore and notAfter in unix seconds.
pub fn validity(der: &[u8]) -> Result<(i64, i64), UnreadableCertificate> {
    let (_, cert) = X509Certificate::from_der(der)?;
    let validity = cert.validity();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

fn san_text(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(dns) => Some(format!("DNS:{dns}")),
        GeneralName::IPAddress(bytes) => {
            let ip: std::net::IpAddr = match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok()?.into(),
                16 => <[u8; 16]>::try_from(*bytes).ok()?.into(),
                _ => return None,
            };
            Some(format!("IP:{ip}"))
        }
        _ => None,
    }
}
