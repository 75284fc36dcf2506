//! The WebSocket handshake (RFC 6455 §4) of tunnels, both halves: the server's on a hyper request,
//! with gorilla's status codes and texts for requests that are not WebSocket upgrades, and the
//! client's (agents, peer replicas), which keeps whatever the server sent straight after its 101.

use std::fmt::Write as _;
use std::io;

use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode, header};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub use super::connection::{MAX_MESSAGE, WebSocket};

/// Most bytes of a handshake answer's head, and of a refusal's body kept for the error.
const MAX_ANSWER_HEAD: usize = 16 * 1024;
const MAX_REFUSAL_BODY: usize = 64 * 1024;

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
) -> Result<WebSocket<TokioIo<hyper::upgrade::Upgraded>>, hyper::Error> {
    accept_through(on_upgrade, |io| io).await
}

/// Completes the upgrade into a server-side WebSocket over `wrap` of the connection (a lab's
/// toxics).
pub async fn accept_through<S: AsyncRead + AsyncWrite + Unpin>(
    on_upgrade: OnUpgrade,
    wrap: impl FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> S,
) -> Result<WebSocket<S>, hyper::Error> {
    // hyper hands on anything read past the request inside `Upgraded`.
    Ok(WebSocket::server(
        wrap(TokioIo::new(on_upgrade.await?)),
        Bytes::new(),
    ))
}

/// Why a client handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server answered, but not with a WebSocket: its status and (the start of) its body.
    #[error("the server answered {status}: {body}")]
    Refused { status: StatusCode, body: String },
    #[error("not a websocket handshake answer: {0}")]
    Invalid(&'static str),
    #[error("the request header {0} cannot hold a line break")]
    LineBreak(String),
}

/// The client half: sends the upgrade request for `path` on `io` (to `authority`, with `headers`),
/// checks the server's 101 and its `Sec-WebSocket-Accept`. Callers bound the time it takes.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<WebSocket<S>, HandshakeError> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    for (name, value) in headers {
        if value.contains(['\r', '\n']) || name.contains(['\r', '\n', ':']) {
            return Err(HandshakeError::LineBreak(name.to_string()));
        }
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;

    let mut read = BytesMut::with_capacity(1024);
    let (status, head_len, answer) = loop {
        if io.read_buf(&mut read).await? == 0 {
            return Err(HandshakeError::Invalid(
                "the server closed before answering",
            ));
        }
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut answer = httparse::Response::new(&mut fields);
        match answer.parse(&read) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = StatusCode::from_u16(answer.code.unwrap_or(0))
                    .map_err(|_| HandshakeError::Invalid("bad status code"))?;
                let mut headers = header::HeaderMap::new();
                for field in answer.headers.iter() {
                    if let (Ok(name), Ok(value)) = (
                        header::HeaderName::from_bytes(field.name.as_bytes()),
                        header::HeaderValue::from_bytes(field.value),
                    ) {
                        headers.append(name, value);
                    }
                }
                break (status, head_len, headers);
            }
            Ok(httparse::Status::Partial) if read.len() < MAX_ANSWER_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(HandshakeError::Invalid("answer head too long"));
            }
            Err(_) => return Err(HandshakeError::Invalid("malformed answer")),
        }
    };
    let rest = read.split_off(head_len).freeze();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let content_length = answer
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
        let body = refusal_body(&mut io, rest, content_length).await;
        return Err(HandshakeError::Refused { status, body });
    }
    // RFC 6455 §4.1: the 101 must name the upgrade, and prove it read our key.
    let has_token = |name, token| crate::support::header_has_token(&answer, name, token);
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(HandshakeError::Invalid(
            "no 'Upgrade: websocket' and 'Connection: Upgrade'",
        ));
    }
    let accept = answer
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(|v| v.as_bytes());
    if accept != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
        return Err(HandshakeError::Invalid("wrong Sec-WebSocket-Accept"));
    }
    Ok(WebSocket::client(io, rest))
}

/// A refusal's body, as far as it can be read: to its Content-Length, else to the end of the stream
/// (at most [`MAX_REFUSAL_BODY`]; a read error ends it).
async fn refusal_body<S: AsyncRead + Unpin>(
    io: &mut S,
    start: Bytes,
    content_length: Option<usize>,
) -> String {
    let limit = content_length
        .unwrap_or(MAX_REFUSAL_BODY)
        .min(MAX_REFUSAL_BODY);
    let mut body = BytesMut::from(&start[..start.len().min(limit)]);
    while body.len() < limit {
        let room = limit - body.len();
        match io.read_buf(&mut (&mut body).limit(room)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::codec::{Message, MessageType, encode};
    use crate::tunnel::connection::{Incoming, split};

    /// Bounds a step of a test: a handshake bug makes it fail, not hang.
    async fn soon<T>(step: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(10), step)
            .await
            .expect("no answer within 10 s")
    }

    /// A server that answers the upgrade with `answer(key)` in one write, and what it was asked.
    async fn answering(
        answer: impl FnOnce(&str) -> Vec<u8> + Send + 'static,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<String>) {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let asked = tokio::spawn(async move {
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                server.read_exact(&mut byte).await.unwrap();
                request.push(byte[0]);
            }
            let request = String::from_utf8(request).unwrap();
            let key = request
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .to_string();
            server.write_all(&answer(&key)).await.unwrap();
            let _ = server.shutdown().await;
            // Kept open until the client is done with it.
            let mut rest = Vec::new();
            let _ = server.read_to_end(&mut rest).await;
            request
        });
        (client, asked)
    }

    #[tokio::test]
    async fn frames_sent_with_the_101_are_not_lost() {
        let (io, asked) = answering(|key| {
            let mut answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            )
            .into_bytes();
            let message = encode(1, 2, MessageType::Data, b"straight after");
            let mut frame = BytesMut::new();
            super::super::frame::encode_header(&mut frame, 0x2, message.len(), None);
            answer.extend_from_slice(&frame);
            answer.extend_from_slice(&message);
            answer
        })
        .await;
        let ws = soon(connect(
            io,
            "corral.lab.test:443",
            "/v3/connect",
            &[("X-API-Tunnel-Token", "t")],
        ))
        .await
        .unwrap();
        let (mut reader, writer) = split(ws, std::time::Duration::from_secs(5));
        let Incoming::Message(Message { payload, .. }) = soon(reader.next()).await.unwrap() else {
            panic!("the frame sent with the 101 was lost")
        };
        assert_eq!(&payload[..], b"straight after");
        drop((reader, writer));
        let request = soon(asked).await.unwrap();
        assert!(request.starts_with("GET /v3/connect HTTP/1.1\r\nHost: corral.lab.test:443\r\n"));
        assert!(
            request.contains("\r\nX-API-Tunnel-Token: t\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_refusal_gives_its_status_and_body_and_a_wrong_accept_is_refused() {
        let (io, _asked) = answering(|_| {
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 29\r\n\r\nfailed authentication: nope\r\n".to_vec()
        })
        .await;
        match soon(connect(io, "h", "/v3/connect", &[])).await {
            Err(HandshakeError::Refused { status, body }) => {
                assert_eq!(status, StatusCode::UNAUTHORIZED);
                assert_eq!(body, "failed authentication: nope\r\n");
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        for (answer, expected) in [
            (
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: wrong",
                "wrong Sec-WebSocket-Accept",
            ),
            (
                "Connection: Upgrade\r\nSec-WebSocket-Accept: wrong",
                "no 'Upgrade: websocket' and 'Connection: Upgrade'",
            ),
        ] {
            let (io, _asked) = answering(move |_| {
                format!("HTTP/1.1 101 Switching Protocols\r\n{answer}\r\n\r\n").into_bytes()
            })
            .await;
            let error = soon(connect(io, "h", "/", &[]))
                .await
                .map(|_| ())
                .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("not a websocket handshake answer: {expected}")
            );
        }
        let (io, _) = tokio::io::duplex(64);
        let error = connect(io, "h", "/", &[("X-Evil", "a\r\nb")])
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the request header X-Evil cannot hold a line break"
        );
    }
}
