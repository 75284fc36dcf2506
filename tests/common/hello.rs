//! Hand-built TLS ClientHellos, for what real clients refuse to send (an SNI that is not a DNS name,
//! a TLS 1.1 hello that offers TLS 1.2 suites) and for reading the server's first answer exactly:
//! its ServerHello, or the alert it ends the handshake with.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TLS12: u16 = 0x0303;
pub const TLS13: u16 = 0x0304;
pub const TLS11: u16 = 0x0302;
pub const AES128_GCM_SHA256: u16 = 0x1301;
pub const ECDHE_ECDSA_AES128_GCM_SHA256: u16 = 0xc02b;
pub const ECDSA_P256_SHA256: u16 = 0x0403;
pub const X25519: u16 = 0x001d;
pub const SECP256R1: u16 = 0x0017;

/// The alerts the tests look for (RFC 8446 §6).
pub const HANDSHAKE_FAILURE: u8 = 40;
pub const ILLEGAL_PARAMETER: u8 = 47;
pub const PROTOCOL_VERSION: u8 = 70;
pub const NO_APPLICATION_PROTOCOL: u8 = 120;

/// What goes into a ClientHello.
#[derive(Clone, Debug)]
pub struct Hello {
    pub legacy_version: u16,
    /// The `supported_versions` extension, if sent.
    pub versions: Option<Vec<u16>>,
    /// The `server_name` extension's host name, as raw bytes, if sent.
    pub sni: Option<Vec<u8>>,
    pub alpn: Option<Vec<&'static [u8]>>,
    pub suites: Vec<u16>,
    pub signature_schemes: Vec<u16>,
    pub groups: Vec<u16>,
}

/// How the server answered a hello.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A handshake record: the ServerHello (or a HelloRetryRequest).
    ServerHello,
    /// A fatal alert with this description.
    Alert(u8),
    /// The connection closed without a record.
    Closed,
}

impl Hello {
    /// A TLS 1.3 hello as a modern client sends it, with an X25519 key share.
    pub fn tls13(sni: Option<&str>) -> Self {
        Self {
            legacy_version: TLS12,
            versions: Some(vec![TLS13, TLS12]),
            sni: sni.map(|s| s.as_bytes().to_vec()),
            alpn: Some(vec![b"http/1.1"]),
            suites: vec![AES128_GCM_SHA256, ECDHE_ECDSA_AES128_GCM_SHA256],
            signature_schemes: vec![ECDSA_P256_SHA256],
            groups: vec![X25519, SECP256R1],
        }
    }

    pub fn with_sni_bytes(mut self, sni: &[u8]) -> Self {
        self.sni = Some(sni.to_vec());
        self
    }

    /// The hello as one TLS record.
    pub fn record(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(self.legacy_version.to_be_bytes());
        body.extend([0x42; 32]); // random
        body.push(32);
        body.extend([0x17; 32]); // legacy session id
        body.extend(u16_len(&be16s(&self.suites)));
        body.extend([1, 0]); // compression: null
        let mut extensions = Vec::new();
        if let Some(sni) = &self.sni {
            let mut entry = vec![0];
            entry.extend(u16_len(sni));
            extension(&mut extensions, 0x0000, &u16_len(&entry));
        }
        extension(&mut extensions, 0x000a, &u16_len(&be16s(&self.groups)));
        extension(&mut extensions, 0x000b, &[1, 0]); // ec_point_formats: uncompressed
        extension(
            &mut extensions,
            0x000d,
            &u16_len(&be16s(&self.signature_schemes)),
        );
        if let Some(alpn) = &self.alpn {
            let mut list = Vec::new();
            for protocol in alpn {
                list.push(protocol.len() as u8);
                list.extend(*protocol);
            }
            extension(&mut extensions, 0x0010, &u16_len(&list));
        }
        if let Some(versions) = &self.versions {
            let list = be16s(versions);
            let mut data = vec![list.len() as u8];
            data.extend(list);
            extension(&mut extensions, 0x002b, &data);
            if versions.contains(&TLS13) {
                // key_share: one X25519 share (any 32 bytes are a valid X25519 public value).
                let mut share = X25519.to_be_bytes().to_vec();
                share.extend(u16_len(&[9; 32]));
                extension(&mut extensions, 0x0033, &u16_len(&share));
            }
        }
        body.extend(u16_len(&extensions));
        let mut handshake = vec![1];
        handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend(body);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend(u16_len(&handshake));
        record
    }

    /// Sends the hello to `addr` and reads the server's first record.
    pub async fn send(&self, addr: SocketAddr) -> Answer {
        let exchange = async {
            let mut tcp = TcpStream::connect(addr).await.ok()?;
            tcp.write_all(&self.record()).await.ok()?;
            let mut header = [0u8; 5];
            if tcp.read_exact(&mut header).await.is_err() {
                return Some(Answer::Closed);
            }
            match header[0] {
                0x16 => Some(Answer::ServerHello),
                0x15 => {
                    let mut alert = [0u8; 2];
                    tcp.read_exact(&mut alert).await.ok()?;
                    Some(Answer::Alert(alert[1]))
                }
                other => panic!("unexpected record type {other}"),
            }
        };
        tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .expect("an answer within 20 s")
            .unwrap_or(Answer::Closed)
    }
}

fn be16s(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

/// `data` with a two-byte length in front.
fn u16_len(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u16).to_be_bytes().to_vec();
    out.extend(data);
    out
}

fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend(kind.to_be_bytes());
    out.extend(u16_len(data));
}
