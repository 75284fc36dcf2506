//! The server half of the WebSocket handshake (RFC 6455) on a hyper request, with gorilla's status
//! codes and texts for requests that are not WebSocket upgrades, and the tunnel's WebSocket limits.

use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Largest tunnel message accepted. Agents send Data of at most 32 KiB; SyncConnections lists 8 bytes
/// per stream. 16 MiB carries every real agent's traffic and bounds what a hostile one can make us hold.
pub const MAX_MESSAGE: usize = 16 << 20;

/// WebSocket settings for tunnels. The read buffer is allocated up front for every tunnel and is
/// what tungstenite reads at once (a larger frame gets room of its own): 2 KiB instead of 8 halved
/// the server's memory per idle tunnel (25.8 → 13.8 KiB at 3,000 tunnels), and bulk throughput
/// measured the same with 2, 8 and 64 KiB (docs/PERFORMANCE.md). Writes are sent once 32 KiB are
/// queued or the queue empties.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(32 * 1024)
        .max_write_buffer_size(MAX_MESSAGE + 64 * 1024)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// A refused upgrade: status and gorilla's text.
pub type HandshakeRefusal = (StatusCode, &'static str);

/// Checks an upgrade request and prepares the 101 response. The caller returns the response, then
/// awaits the upgrade with [`accept`].
pub fn upgrade(req: &mut Request<Body>) -> Result<(Response<Body>, OnUpgrade), HandshakeRefusal> {
    let has_token = |name: header::HeaderName, token: &str| {
        crate::support::header_has_token(req.headers(), name, token)
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err((
            StatusCode::BAD_REQUEST,
            "websocket: the client is not using the websocket protocol: 'upgrade' token not found in 'Connection' header",
        ));
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err((
            StatusCode::BAD_REQUEST,
            "websocket: the client is not using the websocket protocol: 'websocket' token not found in 'Upgrade' header",
        ));
    }
    if req.method() != Method::GET {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "websocket: the client is not using the websocket protocol: request method is not GET",
        ));
    }
    if !has_token(header::SEC_WEBSOCKET_VERSION, "13") {
        return Err((
            StatusCode::BAD_REQUEST,
            "websocket: unsupported version: 13 not found in 'Sec-Websocket-Version' header",
        ));
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
        .filter(|k| k.len() == 24)
        .ok_or((StatusCode::BAD_REQUEST, "websocket: not a websocket handshake: 'Sec-WebSocket-Key' header must be Base64 encoded value of 16-byte in length"))?;
    let on_upgrade = req.extensions_mut().remove::<OnUpgrade>().ok_or((
        StatusCode::INTERNAL_SERVER_ERROR,
        "websocket: response does not implement http.Hijacker",
    ))?;
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, derive_accept_key(&key))
        .body(Body::empty())
        .expect("static headers are valid");
    Ok((response, on_upgrade))
}

/// Completes the upgrade into a server-side WebSocket.
pub async fn accept(
    on_upgrade: OnUpgrade,
) -> Result<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, hyper::Error> {
    let upgraded = on_upgrade.await?;
    Ok(
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config()))
            .await,
    )
}
