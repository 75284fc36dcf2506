//! Agent tunnels end to end: clusters and tokens through the API, `corral agent` against a fake
//! cluster API, the cluster proxy (streaming, upgrades, failures), kubeconfig with real kubectl, and
//! the tunnel protocol's handshake and error rules seen by a raw WebSocket client.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::lab::{BOOTSTRAP, Lab, body};
use common::target::{SA_TOKEN, TestPki, VERSION_JSON, kube_api, serve};
use common::{corral_bin, open_fds, request, rss_kib, stress_size, temp_file};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

async fn https_target() -> (SocketAddr, tempfile::NamedTempFile) {
    let pki = TestPki::new("fake-cluster-ca");
    let addr = serve(Some(pki.server_config()), kube_api).await;
    (addr, temp_file(&pki.ca_pem))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reaches_the_cluster_through_the_tunnel() {
    let lab = Lab::start().await;
    let (target, target_ca) = https_target().await;
    let agent = lab.agent(target, Some(target_ca.path()), &[]);
    lab.wait_connected(true).await;

    let version = lab.proxied("/version").await;
    assert_eq!((version.status, version.body.as_str()), (200, VERSION_JSON));

    // The kubeconfig, from the API and from `corral kubeconfig`, used by the real kubectl.
    let path = format!("/v3/clusters/{}?action=generateKubeconfig", lab.cluster);
    let generated = body(&request(lab.addr, "POST", &path, &[&lab.auth()], None).await);
    let config = generated["config"].as_str().unwrap().to_string();
    assert!(
        config.contains(&format!(
            "server: \"https://127.0.0.1:{}/k8s/clusters/{}\"",
            lab.corral.https_port, lab.cluster
        )),
        "{config}"
    );
    let output = Command::new(corral_bin())
        .args([
            "kubeconfig",
            "--server",
            &lab.server(),
            "--token",
            &lab.token,
            "--cluster",
            &lab.cluster,
        ])
        .arg("--cacert")
        .arg(lab.ca_file.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let from_cli = String::from_utf8(output.stdout).unwrap();
    assert!(from_cli.contains("certificate-authority-data"));
    let kube_tokens: Vec<String> = [&config, &from_cli]
        .iter()
        .flat_map(|c| c.lines())
        .filter_map(|l| l.trim().strip_prefix("token: "))
        .map(|t| t.trim_matches('"').to_string())
        .collect();
    assert_eq!(kube_tokens.len(), 2, "{config}");
    for kubeconfig in [config, from_cli] {
        let file = temp_file(&kubeconfig);
        let kubectl = |args: &[&str]| kubectl(file.path(), args);
        let version: Value = serde_json::from_str(&kubectl(&["version", "-o", "json"])).unwrap();
        assert_eq!(version["serverVersion"]["gitVersion"], "v1.31.4");
        // kubectl sends raw paths from the server's root: /version is corral's own (as Rancher's);
        // the cluster's is under its proxy prefix.
        let own: Value = serde_json::from_str(&kubectl(&["get", "--raw", "/version"])).unwrap();
        assert!(
            own["Version"].as_str().unwrap().starts_with("corral-v"),
            "{own}"
        );
        let raw = format!("/k8s/clusters/{}/version", lab.cluster);
        assert_eq!(kubectl(&["get", "--raw", &raw]).trim(), VERSION_JSON);
    }

    // No password, token or private key used in this run reaches the server's or the agent's log.
    let logs = format!(
        "{}\n{}",
        lab.corral.logs().join("\n"),
        agent.stop_and_logs()
    );
    assert!(
        logs.contains("minted certificate") && logs.contains("connected"),
        "{logs}"
    );
    let mut secrets = vec![BOOTSTRAP.to_string(), SA_TOKEN.to_string()];
    for token in [&lab.token, &lab.registration]
        .into_iter()
        .chain(&kube_tokens)
    {
        // `name:secret` tokens: the name may be logged, the secret never.
        secrets.push(token.rsplit(':').next().unwrap().to_string());
    }
    for key in ["ca.key", "leaf.key"] {
        let pem = std::fs::read_to_string(lab.corral.data_dir.join(key)).unwrap();
        secrets.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_string),
        );
    }
    for secret in &secrets {
        assert!(secret.len() >= 8, "{secret:?} is too short to look for");
        assert!(
            !logs.contains(secret.as_str()),
            "a secret reached the logs: {secret}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through_the_proxy() {
    let lab = Lab::start().await;
    let (target, target_ca) = https_target().await;
    let _agent = lab.agent(target, Some(target_ca.path()), &[]);
    lab.wait_connected(true).await;
    let tls = common::tls_connect(lab.addr, None, None)
        .await
        .unwrap()
        .stream;
    let url = format!(
        "wss://127.0.0.1:{}/k8s/clusters/{}/ws",
        lab.corral.https_port, lab.cluster
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", lab.token).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    ws.send(WsMessage::text("hello through two tunnels"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        echoed.into_text().unwrap().as_str(),
        "hello through two tunnels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_with_a_slow_reader_keeps_memory_bounded() {
    const TOTAL: usize = 256 << 20;
    let lab = Lab::start().await;
    let target = serve(None, kube_api).await;
    let agent = lab.agent(target, None, &[]);
    lab.wait_connected(true).await;
    let (server_before, agent_before) = (rss_kib(lab.corral.pid()), rss_kib(agent.pid()));

    let mut tls = common::tls_connect(lab.addr, None, None)
        .await
        .unwrap()
        .stream;
    let request = format!(
        "GET /k8s/clusters/{}/big?bytes={TOTAL} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        lab.cluster, lab.addr, lab.token
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let (mut received, mut peak_server, mut peak_agent) = (0usize, 0, 0);
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut stalled = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "transfer too slow: {received} bytes"
        );
        // A stalled transfer (say, a lost Resume) fails here instead of hanging the suite.
        let n = tokio::time::timeout(Duration::from_secs(30), tls.read(&mut buf))
            .await
            .expect("the transfer stalled for 30 s")
            .unwrap();
        if n == 0 {
            break;
        }
        received += n;
        if !stalled && received > 32 << 20 {
            // A reader that stops for a while: the tunnel must hold the sender back (Pause), not
            // buffer what the target keeps producing.
            stalled = true;
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                peak_server = peak_server.max(rss_kib(lab.corral.pid()));
                peak_agent = peak_agent.max(rss_kib(agent.pid()));
            }
        }
        if received % (8 << 20) < n {
            peak_server = peak_server.max(rss_kib(lab.corral.pid()));
            peak_agent = peak_agent.max(rss_kib(agent.pid()));
        }
    }
    assert!(
        received > TOTAL,
        "headers and the whole body arrived: {received}"
    );
    let grew = |peak: u64, before: u64| peak.saturating_sub(before) / 1024;
    eprintln!(
        "RSS growth over a 256 MiB transfer: server {} MiB, agent {} MiB",
        grew(peak_server, server_before),
        grew(peak_agent, agent_before)
    );
    assert!(
        grew(peak_server, server_before) < 64,
        "server buffered: {peak_server} KiB"
    );
    assert!(
        grew(peak_agent, agent_before) < 64,
        "agent buffered: {peak_agent} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_agent_mid_request_gives_502_and_a_new_agent_serves() {
    let lab = Lab::start().await;
    let (target, target_ca) = https_target().await;
    let mut agent = lab.agent(target, Some(target_ca.path()), &[]);
    lab.wait_connected(true).await;

    let hanging = {
        let (addr, cluster, auth) = (lab.addr, lab.cluster.clone(), lab.auth());
        tokio::spawn(async move {
            let path = format!("/k8s/clusters/{cluster}/hang");
            let started = Instant::now();
            (request(addr, "GET", &path, &[&auth], None).await, started)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    agent.kill();
    let (response, _) = hanging.await.unwrap();
    assert_eq!(response.status, 502, "{}", response.body);
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "502 came {:?} after the agent died",
        killed.elapsed()
    );

    lab.wait_connected(false).await;
    // An agent that goes away is the end of a tunnel, logged as such: not a warning with a link.
    let logs = lab.corral.logs().join("\n");
    assert!(!logs.contains("docs.rs/rustls"), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains(" INFO ")
                && l.contains(&format!("tunnel for {} closed", lab.cluster))),
        "{logs}"
    );
    let absent = lab.proxied("/version").await;
    assert_eq!(
        (absent.status, absent.body.trim()),
        (503, "cluster agent disconnected")
    );

    let _again = lab.agent(target, Some(target_ca.path()), &[]);
    lab.wait_connected(true).await;
    assert_eq!(lab.proxied("/version").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_wrong_checksum_or_a_foreign_certificate() {
    let lab = Lab::start().await;
    let run = |server: &str, checksum: &str| {
        let output = Command::new("timeout")
            .args([
                "60",
                corral_bin(),
                "agent",
                "--server",
                server,
                "--token",
                &lab.registration,
            ])
            .args(["--ca-checksum", checksum])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let wrong = "0".repeat(64);
    let (code, stderr) = run(&lab.server(), &wrong);
    assert_eq!(code, Some(1));
    let expected = format!(
        "Configured cacerts checksum ({}) does not match given --ca-checksum ({wrong})",
        lab.checksum
    );
    assert!(stderr.contains(&expected), "{stderr}");

    // An impostor serving corral's CA on /v3/settings/cacerts, with a certificate from another CA.
    let ca_pem = std::fs::read_to_string(lab.ca_file.path()).unwrap();
    let impostor = TestPki::new("impostor-ca");
    let cacerts = json!({ "value": ca_pem.trim() }).to_string();
    let addr = serve(
        Some(impostor.server_config()),
        move |req: hyper::Request<hyper::body::Incoming>| {
            let cacerts = cacerts.clone();
            async move {
                match req.uri().path() {
                    "/ping" => common::target::full(hyper::StatusCode::OK, "pong"),
                    _ => common::target::full(hyper::StatusCode::OK, cacerts),
                }
            }
        },
    )
    .await;
    let (code, stderr) = run(&format!("https://127.0.0.1:{}", addr.port()), &lab.checksum);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("does not verify against its CA"),
        "{stderr}"
    );

    // corral pinned to a name, reached by IP: the CA is right, only the name differs, and the agent
    // says so.
    lab.pin_server_url("https://pinned.lab.test").await;
    let (code, stderr) = run(&lab.server(), &lab.checksum);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("name mismatch: the certificate is for pinned.lab.test, not 127.0.0.1"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_handshake_errors_use_rancher_texts() {
    let lab = Lab::start().await;
    let encode = |json: &str| base64::engine::general_purpose::STANDARD.encode(json);
    let good = encode(r#"{"cluster":{"address":"10.43.0.1:443","caCert":"Y2E=","token":"sa"}}"#);
    let cases = [
        (None, None, 401, "failed authentication"),
        (
            Some("not-a-token"),
            Some(good.clone()),
            400,
            "cluster not found",
        ),
        (
            Some(lab.registration.as_str()),
            Some("%%%".to_string()),
            400,
            "illegal base64 data",
        ),
        (
            Some(lab.registration.as_str()),
            Some(encode("{}")),
            400,
            "missing node or cluster registration info",
        ),
        (
            Some(lab.registration.as_str()),
            Some(encode(r#"{"cluster":{"address":""}}"#)),
            400,
            "invalid input, address empty",
        ),
        (
            Some(lab.registration.as_str()),
            Some(encode(r#"{"cluster":{"address":"a:1","token":""}}"#)),
            400,
            "invalid input, token empty",
        ),
        (
            Some(lab.registration.as_str()),
            Some(encode(
                r#"{"cluster":{"address":"a:1","token":"sa","caCert":""}}"#,
            )),
            400,
            "invalid input, caCert empty",
        ),
        (
            Some(lab.registration.as_str()),
            Some(good.clone()),
            400,
            "'upgrade' token not found in 'Connection' header",
        ),
    ];
    for (token, params, status, text) in cases {
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push(format!("X-API-Tunnel-Token: {token}"));
        }
        if let Some(params) = params {
            headers.push(format!("X-API-Tunnel-Params: {params}"));
        }
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let response = request(lab.addr, "GET", "/v3/connect/register", &headers, None).await;
        assert_eq!(response.status, status, "{text}: {}", response.body);
        assert!(response.body.contains(text), "{text}: {}", response.body);
    }
}

type RawTunnel =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A raw WebSocket tunnel to corral, speaking the protocol by hand.
async fn raw_tunnel(lab: &Lab) -> RawTunnel {
    raw_tunnel_over(lab, tokio::net::TcpStream::connect(lab.addr).await.unwrap()).await
}

/// [`raw_tunnel`] over a connection the caller made.
async fn raw_tunnel_over(lab: &Lab, tcp: tokio::net::TcpStream) -> RawTunnel {
    let config = corral::client::tls_insecure(&[b"http/1.1"]);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let url = format!("wss://127.0.0.1:{}/v3/connect", lab.corral.https_port);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    let params = base64::engine::general_purpose::STANDARD
        .encode(r#"{"cluster":{"address":"127.0.0.1:1","caCert":"Y2E=","token":"sa"}}"#);
    request
        .headers_mut()
        .insert("x-api-tunnel-token", lab.registration.parse().unwrap());
    request
        .headers_mut()
        .insert("x-api-tunnel-params", params.parse().unwrap());
    tokio_tungstenite::client_async(request, tls)
        .await
        .unwrap()
        .0
}

async fn next_binary<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()??
        {
            Ok(WsMessage::Binary(bytes)) => return Some(bytes.to_vec()),
            Ok(WsMessage::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tunnel_input_ends_only_that_tunnel() {
    let lab = Lab::start().await;

    // Data for an unknown stream is answered with remotedialer's error text.
    let mut ws = raw_tunnel(&lab).await;
    ws.send(WsMessage::binary(vec![
        0x0a, 0xc6, 0x01, 0x02, 0xb0, 0xea, 0x01, 0x68, 0x69,
    ]))
    .await
    .unwrap();
    let reply = next_binary(&mut ws).await.expect("an Error message");
    let reply = corral::tunnel::codec::Message::decode(reply.into()).unwrap();
    assert_eq!(
        (reply.conn_id, reply.kind),
        (99, corral::tunnel::codec::MessageType::Error)
    );
    let text = reply.text();
    assert!(
        text.starts_with(&format!("connection not found {}/", lab.cluster))
            && text.ends_with("/99"),
        "{text}"
    );

    drop(ws);

    // A text message, a truncated varint, and a Connect sent to the server each end their tunnel.
    for poison in [
        WsMessage::text("hello"),
        WsMessage::binary(vec![0x80]),
        WsMessage::binary(vec![
            0x02, 0x04, 0x04, 0xb0, 0xea, 0x01, b't', b'c', b'p', b'/', b'x',
        ]),
    ] {
        let mut ws = raw_tunnel(&lab).await;
        ws.send(poison.clone()).await.unwrap();
        assert!(
            next_binary(&mut ws).await.is_none(),
            "{poison:?} ended the tunnel"
        );
    }
    // The server is unharmed.
    assert_eq!(
        request(lab.addr, "GET", "/ping", &[], None).await.body,
        "pong"
    );
    lab.wait_connected(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_tokens_come_with_rancher_commands_and_a_manifest() {
    let lab = Lab::start().await;
    let new_token = json!({ "clusterId": lab.cluster }).to_string();
    let create = || async {
        let path = "/v3/clusterregistrationtokens";
        body(&request(lab.addr, "POST", path, &[&lab.auth()], Some(&new_token)).await)
    };
    // As in Rancher, the commands stay empty until server-url is set.
    let before = create().await;
    for field in ["manifestUrl", "command", "insecureCommand", "nodeCommand"] {
        assert_eq!(before[field], "", "{field} before server-url: {before}");
    }
    lab.pin_server_url(&lab.server()).await;
    let created = create().await;
    let token = created["token"].as_str().unwrap();
    let manifest_url = format!("{}/v3/import/{token}_{}.yaml", lab.server(), lab.cluster);
    assert_eq!(created["manifestUrl"], manifest_url.as_str());
    assert_eq!(
        created["command"],
        format!("kubectl apply -f {manifest_url}").as_str()
    );
    assert_eq!(
        created["insecureCommand"],
        format!("curl --insecure -sfL {manifest_url} | kubectl apply -f -").as_str()
    );

    let path = format!("/v3/import/{token}_{}.yaml", lab.cluster);
    let manifest = request(lab.addr, "GET", &path, &[], None).await;
    assert_eq!(manifest.status, 200);
    for needle in [
        "name: CATTLE_SERVER",
        &format!("value: \"{}\"", lab.checksum),
        "kind: Deployment",
    ] {
        assert!(
            manifest.body.contains(needle),
            "{needle} missing:\n{}",
            manifest.body
        );
    }
    let wrong = request(
        lab.addr,
        "GET",
        &format!("/v3/import/nope_{}.yaml", lab.cluster),
        &[],
        None,
    )
    .await;
    assert_eq!(wrong.status, 404);
    let anonymous = request(
        lab.addr,
        "POST",
        "/v3/clusters",
        &[],
        Some(r#"{"name":"x"}"#),
    )
    .await;
    assert_eq!(anonymous.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_runs_many_agents() {
    let lab = Lab::start().await;
    let target = serve(None, kube_api).await;
    let _agents = lab.agent(target, None, &["--count", "5"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let connected = || {
        lab.corral
            .logs()
            .iter()
            .filter(|l| l.contains("tunnel for") && l.contains("connected"))
            .count()
    };
    while connected() < 5 {
        assert!(
            Instant::now() < deadline,
            "only {} of 5 agents connected",
            connected()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lab.proxied("/version").await.status, 200);
}

/// What a churn cycle sends before it goes: nothing, or one kind of garbage.
fn garbage(cycle: usize) -> Option<WsMessage> {
    match cycle % 6 {
        1 => Some(WsMessage::text("hello")),
        // A truncated varint.
        2 => Some(WsMessage::binary(vec![0x80])),
        // A Connect without `/` (and to the server, which never dials).
        3 => Some(WsMessage::binary(vec![
            0x02, 0x04, 0x04, 0xb0, 0xea, 0x01, b't', b'c', b'p',
        ])),
        // Data for a stream that does not exist.
        4 => Some(WsMessage::binary(vec![
            0x0a, 0xc6, 0x01, 0x02, 0xb0, 0xea, 0x01, 0x68, 0x69,
        ])),
        // Past the 16 MiB message limit (now and then: it is the slow one).
        5 if cycle % 60 == 5 => Some(WsMessage::binary(vec![0u8; 17 << 20])),
        _ => None,
    }
}

/// `cycles` tunnels, 8 at a time, each opened, fed its garbage, and dropped.
async fn churn(lab: &Lab, cycles: usize) {
    futures_util::stream::iter(0..cycles)
        .for_each_concurrent(8, |cycle| async move {
            let mut ws = raw_tunnel(lab).await;
            if let Some(message) = garbage(cycle) {
                let _ = ws.send(message).await;
                let _ = next_binary(&mut ws).await;
            }
        })
        .await;
}

/// Waits (bounded) until no tunnel session is left on the server.
async fn settle(lab: &Lab) {
    for _ in 0..200 {
        let metrics = request(lab.addr, "GET", "/metrics", &[], None).await.body;
        if metrics.lines().any(|l| l == "corral_tunnel_sessions 0") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("tunnel sessions never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_churn_and_garbage_leave_no_leaks() {
    let cycles = stress_size(300, 1_000);
    let lab = Lab::start().await;
    let pid = lab.corral.pid();
    // Warm-up: the first tunnels allocate what later ones reuse.
    churn(&lab, 60).await;
    settle(&lab).await;
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));
    churn(&lab, cycles).await;
    settle(&lab).await;
    let (fds_after, rss_after) = (open_fds(pid), rss_kib(pid));
    println!(
        "{cycles} tunnels opened, fed garbage and dropped: fds {fds_before} → {fds_after}, RSS {rss_before} → {rss_after} KiB"
    );
    assert!(
        fds_after <= fds_before + 3,
        "fds {fds_before} → {fds_after}"
    );
    assert!(
        rss_after <= rss_before + 16 * 1024,
        "RSS {rss_before} → {rss_after} KiB"
    );
    assert_eq!(
        request(lab.addr, "GET", "/ping", &[], None).await.body,
        "pong"
    );
}

/// A second cluster of the lab, with its own registration token.
async fn second_cluster(lab: &Lab) -> (String, String) {
    let created = request(
        lab.addr,
        "POST",
        "/v3/clusters",
        &[&lab.auth()],
        Some(r#"{"name":"two"}"#),
    )
    .await;
    let id = body(&created)["id"].as_str().unwrap().to_string();
    let new_token = json!({ "clusterId": id }).to_string();
    let token = request(
        lab.addr,
        "POST",
        "/v3/clusterregistrationtokens",
        &[&lab.auth()],
        Some(&new_token),
    )
    .await;
    (id, body(&token)["token"].as_str().unwrap().to_string())
}

/// An agent that floods Data for streams that do not exist and then neither reads nor pings: the
/// Errors corral owes it back up until corral's writer waits on it. Requests for its cluster answer
/// within `--agent-wait`, another cluster and the server carry on, and the tunnel ends by the
/// 60 s liveness rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stops_reading_holds_up_nothing() {
    let mut lab = Lab::start().await;
    let (other, other_token) = second_cluster(&lab).await;
    let (target, target_ca) = https_target().await;

    // The stuck agent, for the lab's cluster: a small receive buffer, so corral's replies back up soon.
    let tcp = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(lab.addr).await.unwrap()
    };
    let mut ws = raw_tunnel_over(&lab, tcp).await;
    let flooding = tokio::spawn(async move {
        for i in 0..400_000i64 {
            let data = corral::tunnel::codec::encode(
                i,
                1_000 + i,
                corral::tunnel::codec::MessageType::Data,
                b"x",
            );
            let sent =
                tokio::time::timeout(Duration::from_secs(5), ws.feed(WsMessage::Binary(data)))
                    .await;
            if !matches!(sent, Ok(Ok(()))) {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.flush()).await;
        // Hold the connection open, reading nothing, until the test ends.
        tokio::time::sleep(Duration::from_secs(600)).await;
        drop(ws);
    });
    lab.wait_connected(true).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stuck_since = Instant::now();

    // The other cluster, with a real agent, works throughout.
    lab.registration = other_token;
    let _agent = lab.agent(target, Some(target_ca.path()), &[]);
    let other_path = format!("/k8s/clusters/{other}/version");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = request(lab.addr, "GET", &other_path, &[&lab.auth()], None).await;
        if response.status == 200 {
            assert_eq!(response.body, VERSION_JSON);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other cluster never answered: {}",
            response.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The stuck cluster answers within --agent-wait (2 s), without hanging: telling it who its users
    // are and forwarding the request share that wait (each waited it in full before: 4 s or more).
    let asked = Instant::now();
    let response = lab.proxied("/version").await;
    assert!(
        [502, 503].contains(&response.status),
        "{} {}",
        response.status,
        response.body
    );
    eprintln!("the stuck cluster answered after {:?}", asked.elapsed());
    assert!(
        asked.elapsed() < Duration::from_millis(3800),
        "answered after {:?}",
        asked.elapsed()
    );
    assert_eq!(
        request(lab.addr, "GET", "/ping", &[], None).await.body,
        "pong"
    );

    // The stuck tunnel ends by the liveness rule (60 s without a ping), then the cluster shows
    // disconnected.
    lab.wait_connected_within(false, Duration::from_secs(90))
        .await;
    eprintln!(
        "the stuck tunnel ended {:?} after it stopped",
        stuck_since.elapsed()
    );
    assert_eq!(
        request(lab.addr, "GET", &other_path, &[&lab.auth()], None)
            .await
            .status,
        200
    );
    flooding.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_reads_ids_as_routed_and_forwards_only_end_to_end_headers() {
    let lab = Lab::start().await;
    let (target, target_ca) = https_target().await;
    let _agent = lab.agent(target, Some(target_ca.path()), &[]);
    lab.wait_connected(true).await;

    // `c-` then the id's first letter percent-encoded: the same cluster, and the same path.
    let id = &lab.cluster;
    let encoded = format!("c-%{:02X}{}", id.as_bytes()[2], &id[3..]);
    let path = format!("/k8s/clusters/{encoded}/version");
    let response = request(lab.addr, "GET", &path, &[&lab.auth()], None).await;
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, VERSION_JSON),
        "{path}"
    );

    let path = format!("/k8s/clusters/{id}/headers?watch=1");
    let headers = [
        lab.auth(),
        "Connection: keep-alive, X-Hop-Secret".to_string(),
        "X-Hop-Secret: 1".to_string(),
        "X-Remote-User: admin".to_string(),
        "X-Remote-Group: system:masters".to_string(),
        "X-Remote-Extra-Scopes: all".to_string(),
        "Impersonate-Group: system:masters".to_string(),
        "Impersonate-Extra-Scopes: all".to_string(),
        "Accept: application/json".to_string(),
    ];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let seen = body(&request(lab.addr, "GET", &path, &headers, None).await);
    assert_eq!(seen["uri"], "/headers?watch=1");
    let names: Vec<&str> = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for gone in [
        "x-hop-secret",
        "x-remote-user",
        "x-remote-group",
        "x-remote-extra-scopes",
        "impersonate-extra-scopes",
    ] {
        assert!(
            !names.contains(&gone),
            "{gone} reached the cluster: {names:?}"
        );
    }
    // Who the caller is, corral says (the caller's own groups and extras without a user of its
    // own are dropped, as Rancher drops them).
    for set in [
        "accept",
        "authorization",
        "impersonate-user",
        "impersonate-group",
        "impersonate-extra-requesttokenid",
        "impersonate-extra-principalid",
    ] {
        assert!(names.contains(&set), "{set} missing: {names:?}");
    }
    let groups = names.iter().filter(|n| **n == "impersonate-group").count();
    assert_eq!(
        groups, 2,
        "system:authenticated and system:cattle:authenticated"
    );

    // An id that names no cluster: 404 at once, not after --agent-wait.
    let asked = Instant::now();
    let response = request(
        lab.addr,
        "GET",
        "/k8s/clusters/c-nosuch/version",
        &[&lab.auth()],
        None,
    )
    .await;
    assert_eq!(response.status, 404, "{}", response.body);
    assert!(response.body.contains("c-nosuch"), "{}", response.body);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
}

/// Without `--ca-cert` and `--sa-token` the agent still sends what Rancher requires (a CA of its own,
/// a generated token) and answers the server's TLS for a plain-HTTP target; a dial that fails
/// reaches the caller in Go's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_target_is_reached_through_the_agents_own_tls() {
    let lab = Lab::start().await;
    let plain = serve(None, kube_api).await;
    let agent = lab.agent(plain, None, &[]);
    lab.wait_connected(true).await;
    let version = lab.proxied("/version").await;
    assert_eq!((version.status, version.body.as_str()), (200, VERSION_JSON));
    drop(agent);
    lab.wait_connected(false).await;

    let closed = SocketAddr::from(([127, 0, 0, 1], 1));
    let output_of = |agent: common::lab::Agent| agent.stop_and_logs();
    let agent = lab.agent_without_sa_token(closed);
    lab.wait_connected(true).await;
    let refused = lab.proxied("/version").await;
    assert_eq!(refused.status, 502, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("dial tcp 127.0.0.1:1: connect: connection refused"),
        "{}",
        refused.body
    );
    let logs = output_of(agent);
    assert!(logs.contains("no --sa-token"), "{logs}");
    assert!(logs.contains("no --ca-cert"), "{logs}");
}

/// Runs kubectl with `kubeconfig`, within 60 s; panics with its stderr when it fails.
fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new("timeout")
        .args(["60", "kubectl", "--kubeconfig"])
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `corral agent --simulate --count 2`: two clusters, each its own in-process API, that the real
/// kubectl drives through corral: version, list, create, get, delete, and a watch that sees a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drives_simulated_clusters() {
    let lab = Lab::start().await;
    let (other, other_token) = second_cluster(&lab).await;
    let _agents = lab.simulated_agents(&[&lab.registration, &other_token], 2);
    lab.wait_connected(true).await;
    let one = lab.kubeconfig(&lab.cluster).await;
    let two = lab.kubeconfig(&other).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while request(
        lab.addr,
        "GET",
        &format!("/v3/clusters/{other}"),
        &[&lab.auth()],
        None,
    )
    .await
    .body
    .contains("\"connected\":false")
    {
        assert!(
            Instant::now() < deadline,
            "the second cluster never connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let version: Value =
        serde_json::from_str(&kubectl(one.path(), &["version", "-o", "json"])).unwrap();
    assert_eq!(
        version["serverVersion"]["gitVersion"],
        "v1.31.4+corral-simulated"
    );
    let listed = kubectl(one.path(), &["get", "ns"]);
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(listed.contains(name), "{listed}");
    }
    let pods = kubectl(one.path(), &["get", "pods", "-A"]);
    assert!(
        pods.lines().any(|l| l.starts_with("kube-system ")
            && l.contains("coredns-")
            && l.contains("1/1")
            && l.contains("Running")),
        "{pods}"
    );
    let info = kubectl(one.path(), &["cluster-info"]);
    assert!(
        info.contains("Kubernetes control plane") && info.contains("CoreDNS"),
        "{info}"
    );
    let nodes = kubectl(one.path(), &["get", "nodes"]);
    assert!(
        nodes.contains("simulated-node-1") && nodes.contains("Ready"),
        "{nodes}"
    );

    // A watch on the first cluster sees a namespace created after it started.
    let mut watch = Command::new("timeout")
        .args(["30", "kubectl", "--kubeconfig"])
        .arg(one.path())
        .args(["get", "ns", "-w"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        kubectl(one.path(), &["create", "namespace", "lab-one"]).trim(),
        "namespace/lab-one created"
    );
    assert!(kubectl(one.path(), &["get", "ns", "lab-one"]).contains("Active"));
    // Each cluster is its own: the second has no lab-one.
    let missing = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(two.path())
        .args(["get", "ns", "lab-one"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    assert!(kubectl(one.path(), &["delete", "namespace", "lab-one"]).contains("deleted"));

    // kubectl's typed clients may send protobuf (`k8s\0` + runtime.Unknown): taken as a real API
    // server takes it; a media type the API does not speak is 415, on which clients use JSON.
    let namespaces = format!("/k8s/clusters/{}/api/v1/namespaces", lab.cluster);
    let protobuf = String::from_utf8(
        [
            &b"k8s\0\x0a\x0f\x0a\x02v1\x12\x09Namespace\x12\x1c\x0a\x14\x0a\x04pbns"[..],
            &b"\x12\x00\x1a\x00\x22\x00\x2a\x00\x32\x00\x38\x00\x42\x00\x12\x00\x1a\x02\x0a\x00"[..],
            &b"\x1a\x00\x22\x00"[..],
        ]
        .concat(),
    )
    .unwrap();
    let typed = [
        lab.auth(),
        "Content-Type: application/vnd.kubernetes.protobuf".to_string(),
    ];
    let typed: Vec<&str> = typed.iter().map(String::as_str).collect();
    let created = request(lab.addr, "POST", &namespaces, &typed, Some(&protobuf)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(kubectl(one.path(), &["get", "ns", "pbns"]).contains("Active"));
    let cbor = [lab.auth(), "Content-Type: application/cbor".to_string()];
    let cbor: Vec<&str> = cbor.iter().map(String::as_str).collect();
    let refused = request(lab.addr, "POST", &namespaces, &cbor, Some("\u{a0}")).await;
    assert_eq!(refused.status, 415, "{}", refused.body);

    let mut seen = String::new();
    let mut stdout = watch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut all = String::new();
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            if all.contains("Terminating") {
                break;
            }
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = watch.kill();
    let _ = watch.wait();
    if let Ok(text) = reader.join() {
        seen = text;
    }
    assert!(seen.contains("lab-one"), "the watch saw: {seen}");
    assert!(
        seen.contains("Terminating"),
        "the watch saw the deletion: {seen}"
    );
}

/// SIGTERM with a request in flight and a tunnel open: corral stops accepting, lets the request
/// finish (through the tunnel), closes the tunnel (the agent sees a close, not a broken socket) and
/// exits 0 within 10 s; the agent reconnects to the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_corral_cleanly_and_agents_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let (https, http) = (
        common::free_port().to_string(),
        common::free_port().to_string(),
    );
    let ports = ["--https-port", https.as_str(), "--http-port", http.as_str()];
    let corral = Lab::corral(&data, &ports);
    let addr = corral.https("127.0.0.1");
    let mut lab = Lab::setup(corral, addr).await;
    let (target, target_ca) = https_target().await;
    let agent = lab.agent(target, Some(target_ca.path()), &[]);
    lab.wait_connected(true).await;

    let in_flight = {
        let (addr, path, token) = (
            lab.addr,
            format!("/k8s/clusters/{}/slow?ms=3000", lab.cluster),
            lab.token.clone(),
        );
        tokio::spawn(
            async move { common::try_request(addr, "GET", &path, Some(&token), None).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, took) = lab.corral.terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "exit status after SIGTERM");
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
    let answered = in_flight
        .await
        .unwrap()
        .expect("the request in flight was answered");
    assert_eq!((answered.status, answered.body.as_str()), (200, "slow"));
    let logs = lab.corral.logs().join("\n");
    assert!(logs.contains("1 tunnel(s) closed"), "{logs}");

    // The next start, on the same ports and data: the agent comes back by itself.
    lab.corral = Lab::corral(&data, &ports);
    lab.wait_connected_within(true, Duration::from_secs(30))
        .await;
    assert_eq!(lab.proxied("/version").await.status, 200);
    let agent_logs = agent.stop_and_logs();
    assert!(
        agent_logs
            .lines()
            .any(|l| l.contains(" INFO ") && l.contains("tunnel closed")),
        "the agent saw a close: {agent_logs}"
    );
}

/// A node agent (cattle-node-agent): listed under `/v3/nodes` with Rancher's node name and its
/// state, and a lab user reaches a plain-HTTP service through its tunnel.
#[tokio::test]
async fn node_agents_are_listed_and_reach_what_their_node_reaches() {
    let lab = Lab::start().await;
    let web = serve(
        None,
        |req: hyper::Request<hyper::body::Incoming>| async move {
            let seen = format!("node web saw {}", req.uri());
            common::target::full(hyper::StatusCode::OK, seen)
        },
    )
    .await;
    let mut agent = lab.node_agents("worker-1", 1);
    // `echo -n worker-1 | md5sum` starts fd8beb38b0b3: Rancher's node name is m- and those 12.
    let id = format!("{}:m-fd8beb38b0b3", lab.cluster);
    let nodes_path = format!("/v3/nodes?clusterId={}", lab.cluster);
    let node_state = |want: &'static str| {
        let (path, auth, addr) = (nodes_path.clone(), lab.auth(), lab.addr);
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let listed = body(&request(addr, "GET", &path, &[&auth], None).await);
                if listed["data"][0]["state"] == want {
                    return listed["data"][0].clone();
                }
                assert!(Instant::now() < deadline, "node never {want}: {listed}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let node = node_state("active").await;
    assert_eq!(node["id"], id);
    assert_eq!(node["nodeName"], "m-fd8beb38b0b3");
    assert_eq!(node["requestedHostname"], "worker-1");
    assert_eq!(node["worker"], true);
    let one = request(
        lab.addr,
        "GET",
        &format!("/v3/nodes/{id}"),
        &[&lab.auth()],
        None,
    )
    .await;
    assert_eq!(body(&one)["id"], id);
    // A node agent is not the cluster's agent.
    let cluster = request(
        lab.addr,
        "GET",
        &format!("/v3/clusters/{}", lab.cluster),
        &[&lab.auth()],
        None,
    )
    .await;
    assert_eq!(body(&cluster)["connected"], false);

    let proxy = format!("/v3/nodes/{id}/proxy/{web}/hello?x=1");
    let reached = request(lab.addr, "GET", &proxy, &[&lab.auth()], None).await;
    assert_eq!(
        (reached.status, reached.body.as_str()),
        (200, "node web saw /hello?x=1")
    );
    let anonymous = request(lab.addr, "GET", &proxy, &[], None).await;
    assert_eq!(anonymous.status, 401);
    let unknown = format!("/v3/nodes/{}:m-000000000000/proxy/{web}/", lab.cluster);
    let missing = request(lab.addr, "GET", &unknown, &[&lab.auth()], None).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    // A dial the node agent cannot make: the 502 says why, in Go's words, as the cluster proxy's.
    let closed = common::free_port();
    let unreachable = format!("/v3/nodes/{id}/proxy/127.0.0.1:{closed}/");
    let refused = request(lab.addr, "GET", &unreachable, &[&lab.auth()], None).await;
    assert_eq!(refused.status, 502, "{}", refused.body);
    assert!(
        refused.body.contains(&format!(
            "dial tcp 127.0.0.1:{closed}: connect: connection refused"
        )),
        "{}",
        refused.body
    );

    agent.kill();
    node_state("unavailable").await;
}

/// Watches (or log follows) whose client never reads while the cluster goes on sending — 20 of
/// them, at about 3 MB/s each: once the kernel's socket buffers are full and the client has taken
/// nothing for 50 ms, corral pauses the agent at a quarter megabyte, so what corral holds for each
/// (`corral_tunnel_buffered_bytes`) is that, what was in flight, and the agent's probes (64 KiB
/// each, at doubling intervals: about 8 in the test's 6 s) — not a whole window (2 MiB, what it
/// held before), nor what the cluster sends at the client's pace. (The proxy's HTTP client reads
/// ahead at most 64 KiB.) Memory is reported, and bounded loosely: the allocator keeps some of what
/// passed through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_whose_client_never_reads_cost_little() {
    const STREAMS: u64 = 20;
    let lab = Lab::start().await;
    let target = serve(None, kube_api).await;
    let agent = lab.agent(target, None, &[]);
    lab.wait_connected(true).await;
    let (pid, agent_pid) = (lab.corral.pid(), agent.pid());
    let (before, agent_before) = (rss_kib(pid), rss_kib(agent_pid));
    let request = format!(
        "GET /k8s/clusters/{}/watch?bytes={} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
        lab.cluster,
        64 << 20,
        lab.addr,
        lab.token
    );
    let mut held = Vec::new();
    for _ in 0..STREAMS {
        // A client whose socket takes little (what the kernel holds is not corral's).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let tcp = socket.connect(lab.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(lab.addr.ip().into());
        let config = corral::client::tls_insecure(&[b"http/1.1"]);
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(request.as_bytes()).await.unwrap();
        held.push(tls);
    }
    // Kernel buffers first (up to 4 MiB a socket), then corral's: at 3 MB/s both are full in 4 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let buffered = common::metric(lab.addr, "corral_tunnel_buffered_bytes").await as u64;
    let buffered_per_stream = buffered / 1024 / STREAMS;
    let per_stream = rss_kib(pid).saturating_sub(before) / STREAMS;
    let agent_per_stream = rss_kib(agent_pid).saturating_sub(agent_before) / STREAMS;
    eprintln!(
        "{STREAMS} watches never read: {buffered_per_stream} KiB each held in the \
         tunnel; RSS {per_stream} KiB each on the server, {agent_per_stream} KiB on the agent"
    );
    assert!(
        buffered_per_stream > 0 && buffered_per_stream < 1280,
        "{buffered_per_stream} KiB held a stream"
    );
    assert!(per_stream < 8 * 1024, "{per_stream} KiB a stream");
    assert!(
        agent_per_stream < 1024,
        "the agent: {agent_per_stream} KiB a stream"
    );
    drop(held);
}

/// A spliced upgrade (a stuck `kubectl exec`) whose target neither reads nor writes: the caller's
/// writes back up until the agent pauses corral, and stop being taken. The caller then goes away
/// (its process killed: its connection reset): corral ends the stream toward the agent within
/// seconds — not when the agent process dies — and what it held for it is freed. (A caller whose
/// close waits behind its own unsent bytes cannot be seen leaving: the splice then ends once its
/// bytes have waited for a minute; a unit test covers that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_a_stalled_upgrade_frees_its_stream() {
    let lab = Lab::start().await;
    let target = serve(None, kube_api).await;
    let _agent = lab.agent(target, None, &[]);
    lab.wait_connected(true).await;
    let streams = || common::metric(lab.addr, "corral_tunnel_streams");
    let mut tls = common::tls_connect(lab.addr, None, None)
        .await
        .unwrap()
        .stream;
    let request = format!(
        "GET /k8s/clusters/{}/stall HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: corral-stall\r\n\r\n",
        lab.cluster, lab.addr, lab.token
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Write until nothing more is taken for a second (at most 512 MiB).
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 512 << 20 {
        match tokio::time::timeout(Duration::from_secs(1), tls.write_all(&chunk)).await {
            Ok(written) => {
                written.unwrap();
                sent += chunk.len();
            }
            Err(_) => break,
        }
    }
    assert!(sent < 512 << 20, "the stall never backed up to the caller");
    assert!(streams().await >= 1.0);
    let (tcp, _) = tls.get_ref();
    socket2::SockRef::from(tcp)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(tls);
    let deadline = Instant::now() + Duration::from_secs(20);
    while streams().await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the stream outlived its caller by 20 s ({} MiB were sent)",
            sent >> 20
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let held = common::metric(lab.addr, "corral_tunnel_buffered_bytes").await;
    assert_eq!(held, 0.0, "what it held is freed");
}
