//! Loopback helpers the tunnel benches share: a self-signed server config, a TLS client, bulk bytes
//! written and drained, and the figures made of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::BenchError;
use crate::client::tls_insecure;

pub(super) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub(super) fn mib_per_s(bytes: usize, since: Instant) -> f64 {
    bytes as f64 / (1 << 20) as f64 / since.elapsed().as_secs_f64()
}

pub(super) async fn write_zeros<W: AsyncWriteExt + Unpin>(out: &mut W, mut left: usize) {
    let chunk = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = left.min(chunk.len());
        if out.write_all(&chunk[..n]).await.is_err() {
            return;
        }
        left -= n;
    }
    let _ = out.shutdown().await;
}

pub(super) async fn drain<R: AsyncReadExt + Unpin>(input: &mut R) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    while let Ok(n) = input.read(&mut buf).await {
        if n == 0 {
            break;
        }
        total += n;
    }
    total
}

pub(super) fn self_signed() -> Result<(Arc<rustls::ServerConfig>, String), BenchError> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
    Ok((Arc::new(config), certified.cert.pem()))
}

pub(super) async fn connect_tls(
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BenchError> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(tls_insecure(&[]))
        .connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await
        .map_err(BenchError::Io)
}
