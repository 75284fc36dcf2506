//! The cluster proxy: `/k8s/clusters/<id>/…` forwarded through the cluster's tunnel to the API
//! address its agent advertised, TLS-verified with the CA the agent sent (plain HTTP without one),
//! presenting the agent's token instead of the caller's. Bodies stream both ways; upgrades
//! (websocket, SPDY for `kubectl exec`) are spliced through.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use base64::Engine;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use super::registry::{ClusterParams, TunnelRegistry};
use super::session::Io;

/// Headers that belong to one hop and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Forwards `req` to `path_and_query` on `cluster_id`'s API, waiting up to `wait` for its agent.
pub async fn forward(
    registry: &TunnelRegistry,
    cluster_id: &str,
    wait: Duration,
    mut req: Request<Body>,
    path_and_query: &str,
) -> Response<Body> {
    let Some((session, params)) = registry.wait_for(cluster_id, wait).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster agent disconnected",
        );
    };
    let bad_gateway = |e: String| {
        error(
            StatusCode::BAD_GATEWAY,
            &format!("cluster {cluster_id}: {e}"),
        )
    };
    let stream = match session.open_stream("tcp", &params.address).await {
        Ok(stream) => stream,
        Err(e) => return bad_gateway(e.to_string()),
    };
    let io: Box<dyn Io> = match params.ca_cert.is_empty() {
        true => Box::new(stream),
        false => match tls_to_target(stream, &params).await {
            Ok(tls) => Box::new(tls),
            Err(e) => return bad_gateway(e),
        },
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(io)).await {
            Ok(pair) => pair,
            Err(e) => return bad_gateway(e.to_string()),
        };
    tokio::spawn(connection.with_upgrades());

    let upgrading = is_upgrade(req.headers());
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let outgoing = match outgoing_request(req, path_and_query, &params, upgrading) {
        Ok(outgoing) => outgoing,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let mut response = match sender.send_request(outgoing).await {
        Ok(response) => response,
        Err(e) => return bad_gateway(e.to_string()),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let target_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(client), Ok(target)) = (client_upgrade.await, target_upgrade.await) {
                let _ = tokio::io::copy_bidirectional(
                    &mut TokioIo::new(client),
                    &mut TokioIo::new(target),
                )
                .await;
            }
        });
        return response.map(|_| Body::empty());
    }
    strip_hop_by_hop(response.headers_mut(), false);
    response.map(Body::new)
}

fn outgoing_request(
    req: Request<Body>,
    path_and_query: &str,
    params: &ClusterParams,
    upgrading: bool,
) -> Result<Request<Body>, String> {
    let (mut parts, body) = req.into_parts();
    parts.uri = path_and_query
        .parse::<Uri>()
        .map_err(|e| format!("bad path: {e}"))?;
    parts.version = axum::http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrading);
    let headers = &mut parts.headers;
    // The caller's corral credentials stay here; impersonation is not the caller's to choose.
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::COOKIE);
    let impersonation: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("impersonate-"))
        .cloned()
        .collect();
    for name in impersonation {
        headers.remove(name);
    }
    if !params.token.is_empty() {
        let bearer = HeaderValue::from_str(&format!("Bearer {}", params.token))
            .map_err(|e| e.to_string())?;
        headers.insert(header::AUTHORIZATION, bearer);
    }
    let host = HeaderValue::from_str(&params.address).map_err(|e| e.to_string())?;
    headers.insert(header::HOST, host);
    Ok(Request::from_parts(parts, body))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        })
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    for name in HOP_BY_HOP {
        if keep_upgrade && name == "connection" {
            continue;
        }
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// TLS to the cluster API inside the tunnel, trusting only the CA its agent advertised.
async fn tls_to_target(
    stream: super::TunnelStream,
    params: &ClusterParams,
) -> Result<tokio_rustls::client::TlsStream<super::TunnelStream>, String> {
    let pem = base64::engine::general_purpose::STANDARD
        .decode(params.ca_cert.trim())
        .map_err(|e| format!("the agent's caCert is not base64: {e}"))?;
    let tls = crate::client::tls_trusting(&pem, &[b"http/1.1"])?;
    let host = match params.address.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => params.address.as_str(),
    };
    let name =
        ServerName::try_from(host.to_string()).map_err(|e| format!("bad address {host}: {e}"))?;
    tokio_rustls::TlsConnector::from(Arc::clone(&tls))
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS to {} failed: {e}", params.address))
}

fn error(status: StatusCode, text: &str) -> Response<Body> {
    crate::http::text_response(status, "text/plain; charset=utf-8", format!("{text}\n"))
}
