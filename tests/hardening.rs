//! Hardening: SNI floods, clients that stall or send too much, and SIGKILL at random moments.
//!
//! Each test has a quick size for `cargo test` and the full size with `CORRAL_STRESS=full`
//! (run with `--release -- --nocapture` to see the figures; docs/RELIABILITY.md has them).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::{
    Corral, corral_bin, get, metric, open_fds, rss_kib, sha256_hex, stress_full, stress_size,
    tls_connect, try_admin_token, try_request,
};
use rand::Rng;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Each file of the data directory and its size.
fn state_files(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| {
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), size)
        })
        .collect()
}

/// `corral bench handshake` against `addr` with `args`; its JSON report.
fn bench(addr: SocketAddr, args: &[&str]) -> Value {
    let output = Command::new(corral_bin())
        .args(["bench", "handshake", "--insecure", "--json", "--target"])
        .arg(addr.to_string())
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

fn serial_of(handshake: &common::Handshake) -> String {
    common::serial(handshake.leaf())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sni_flood_keeps_known_names_and_stays_bounded() {
    let flood = stress_size(3_000, 200_000);
    let max_names = stress_size(300, 10_000);
    let max_names_arg = max_names.to_string();
    let corral = Corral::start(&[
        "--max-names",
        &max_names_arg,
        "--mint-rate",
        "0",
        "--mint-rate-per-client",
        "0",
        "--allowed-names",
        "*.lab.test",
    ]);
    let addr = corral.https("127.0.0.1");
    // Fill the cache once, so the baseline includes a full cache and a warmed allocator.
    let warm = (max_names * 2).to_string();
    bench(
        addr,
        &[
            "--unique-sni",
            "warm.lab.test",
            "--count",
            &warm,
            "--concurrency",
            "8",
        ],
    );
    // The name clients really use: seen often before the flood. The cache is full, so a new name is
    // admitted only once it has been seen more often than the name it would displace: the first
    // few handshakes each get a fresh leaf, then the leaf stays.
    let mut serials = Vec::new();
    for _ in 0..30 {
        let known = tls_connect(addr, Some("app.lab.test"), None).await.unwrap();
        serials.push(serial_of(&known));
    }
    let known_serial = serials.last().unwrap().clone();
    let first_kept = serials.iter().position(|s| *s == known_serial).unwrap();
    assert!(first_kept < 10, "admitted after {first_kept} handshakes");
    let files_before = state_files(&corral.data_dir);
    let rss_before = rss_kib(corral.pid());
    // A real client of the known name: 50 handshakes a second, first on the idle server.
    let known_client = [
        "--sni",
        "app.lab.test",
        "--rate",
        "50",
        "--concurrency",
        "4",
    ];
    let idle = bench(addr, &[&known_client[..], &["--count", "300"]].concat());

    // The flood, with a client of the known name handshaking alongside it.
    // Open loop, so the flood keeps its pace whatever the server does: new names, and (a quarter as
    // many) names outside the allow-list.
    let rate = stress_size(600, 1_500);
    let start_flood = move |suffix: &str, share: usize| {
        let (count, rate) = ((flood / share).to_string(), (rate / share).to_string());
        let suffix = suffix.to_string();
        tokio::task::spawn_blocking(move || {
            bench(
                addr,
                &[
                    "--unique-sni",
                    &suffix,
                    "--count",
                    &count,
                    "--rate",
                    &rate,
                    "--concurrency",
                    "64",
                ],
            )
        })
    };
    let flooding = start_flood("flood.lab.test", 1);
    let refused = start_flood("flood.example", 4);
    // The same client for as long as the flood lasts.
    let during_count = (flood * 50 / rate).max(300).to_string();
    let during = tokio::task::spawn_blocking(move || {
        bench(
            addr,
            &[&known_client[..], &["--count", &during_count]].concat(),
        )
    });
    let mut checks = 0;
    while !flooding.is_finished() && checks < 10_000 {
        let again = tls_connect(addr, Some("app.lab.test"), None).await.unwrap();
        assert_eq!(
            serial_of(&again),
            known_serial,
            "the known name kept its leaf"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flooded = flooding.await.unwrap();
    let refused = refused.await.unwrap();
    let during = during.await.unwrap();
    assert_eq!(flooded["failed"], 0, "{flooded}");
    assert_eq!(
        flooded["fallback"], 0,
        "every flood name got its own leaf: {flooded}"
    );
    assert_eq!(
        refused["failed"], 0,
        "refused names still handshake: {refused}"
    );
    assert_eq!(
        refused["fallback"].as_u64(),
        Some((flood / 4) as u64),
        "the bench counts them as fallback, not ok: {refused}"
    );
    let not_allowed = metric(addr, "corral_names_refused_total{reason=\"not_allowed\"}").await;
    assert_eq!(not_allowed, (flood / 4) as f64);
    assert_eq!(during["failed"], 0, "{during}");
    assert!(checks > 0);

    let cached = metric(addr, "corral_certificate_cache_entries").await;
    let rss_after = rss_kib(corral.pid());
    let p99 = |report: &Value| report["latency_us"]["p99"].as_f64().unwrap_or(f64::NAN);
    println!(
        "flood of {flood} names, max-names {max_names}: cache entries {cached}, RSS {rss_before} → {rss_after} KiB, known-name p99 idle {} µs, during the flood {} µs ({:.1}×)",
        p99(&idle),
        p99(&during),
        p99(&during) / p99(&idle)
    );
    assert!(
        cached <= max_names as f64 * 1.1,
        "{cached} cached of at most {max_names}"
    );
    // Without the cap, the full flood alone would add ~180 MiB (0.9 KiB a leaf).
    let bound_kib = if stress_full() { 64 * 1024 } else { 32 * 1024 };
    assert!(
        rss_after.saturating_sub(rss_before) < bound_kib,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert_eq!(
        state_files(&corral.data_dir),
        files_before,
        "persisted state unchanged"
    );
    // The known name was never evicted: still the same leaf.
    let after = tls_connect(addr, Some("app.lab.test"), None).await.unwrap();
    assert_eq!(serial_of(&after), known_serial);
}

/// Connections that open and then stall before finishing their ClientHello.
async fn stalled_hellos(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut stalled = Vec::with_capacity(count);
    for _ in 0..count {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // A handshake record header promising 512 bytes that never come.
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
            .await
            .unwrap();
        stalled.push(tcp);
    }
    stalled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_time_out_without_blocking_new_clients() {
    let count = 2_000;
    let corral = Corral::start(&["--handshake-timeout", "8"]);
    let addr = corral.https("127.0.0.1");
    // One client first, so the baseline has its certificate and worker threads.
    get(addr, None, None, "/ping").await;
    let fds_before = open_fds(corral.pid());
    let mut stalled = stalled_hellos(addr, count).await;
    let all_held = || open_fds(corral.pid()) >= fds_before + count * 9 / 10;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all_held() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fds_during = open_fds(corral.pid());
    assert!(
        all_held(),
        "{fds_during} fds with {count} stalled clients (baseline {fds_before})"
    );
    // A new client is served while they stall: they are all still held once it has its answer.
    let response = get(addr, Some("new.lab.test"), None, "/ping").await;
    assert_eq!(response.body, "pong");
    assert!(
        all_held(),
        "the new client was served while the stalled ones were held"
    );
    // Every stalled client is closed by the timeout.
    let mut closed = 0;
    for tcp in &mut stalled {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut byte)).await;
        closed += usize::from(matches!(read, Ok(Ok(0)) | Ok(Err(_))));
    }
    assert_eq!(
        closed, count,
        "stalled clients closed by the handshake timeout"
    );
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(corral.pid()) > fds_before + 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fds_after = open_fds(corral.pid());
    println!(
        "fds: {fds_before} before, {fds_during} with {count} stalled clients, {fds_after} after"
    );
    assert!(
        fds_after <= fds_before + 5,
        "{fds_after} fds after, {fds_before} before"
    );
}

/// The status of a `/ping` carrying an `X-Big` header of `size` bytes; `None` if the server hung up.
async fn with_header(addr: SocketAddr, size: usize) -> Option<u16> {
    let big = "a".repeat(size);
    let request =
        format!("GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let mut stream = tls_connect(addr, None, None).await.unwrap().stream;
    let _ = stream.write_all(request.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    status_of(&raw)
}

/// The status of a response's first bytes, if there is a status line.
fn status_of(raw: &[u8]) -> Option<u16> {
    Some(common::parse_response(&String::from_utf8_lossy(raw)).status).filter(|s| *s != 0)
}

/// The status of a request (with `token`) that declares a `length`-byte body and sends none of it.
async fn with_declared_body(
    addr: SocketAddr,
    token: &str,
    (method, path): (&str, &str),
    length: usize,
) -> Option<u16> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    let mut stream = tls_connect(addr, None, None).await.unwrap().stream;
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut head))
        .await
        .ok()?
        .ok()?;
    status_of(&head[..read])
}

#[tokio::test]
async fn oversized_headers_and_bodies_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", BOOTSTRAP)];
    let corral = Corral::start_in(tmp.path(), &[], &env).unwrap();
    let addr = corral.https("127.0.0.1");
    // Request heads are capped at 64 KiB: a head just under passes, one just over gets 431, and so
    // does one that hyper's read buffer would still take (up to about 112 KiB). One of 200 KiB
    // (which hyper's default of ~400 KiB would take) gets 431 or a closed connection.
    assert_eq!(with_header(addr, 63 * 1024).await, Some(200));
    assert_eq!(with_header(addr, 65 * 1024).await, Some(431));
    assert_eq!(with_header(addr, 100 * 1024).await, Some(431));
    let huge = with_header(addr, 200 * 1024).await;
    assert!(matches!(huge, Some(431) | None), "{huge:?}");

    // Every API body is capped at 64 KiB, before parsing: a larger declared body is refused without
    // being read (an authenticated caller, so that the cap, not a 401, answers). generateKubeconfig
    // reads no body, so it is not in the list.
    let token = try_admin_token(addr, BOOTSTRAP)
        .await
        .expect("admin logs in");
    for endpoint in [
        ("POST", "/v3-public/localProviders/local?action=login"),
        ("POST", "/v1-public/login"),
        ("PUT", "/v3/settings/server-url"),
        ("POST", "/v3/clusters"),
        ("POST", "/v3/clusterregistrationtokens"),
        ("POST", "/v3/users?action=changepassword"),
    ] {
        let status = with_declared_body(addr, &token, endpoint, 80 * 1024).await;
        assert_eq!(status, Some(413), "{endpoint:?}");
    }
    assert_eq!(get(addr, None, None, "/ping").await.body, "pong");
}

const BOOTSTRAP: &str = "crash-test-bootstrap";

/// Setup writes, as fast as they go: a password change, server-url, a cluster and its token.
async fn mutate(addr: SocketAddr, token: String, current: String, next: String) {
    let change = json!({"currentPassword": current, "newPassword": next}).to_string();
    let _ = try_request(
        addr,
        "POST",
        "/v3/users?action=changepassword",
        Some(&token),
        Some(&change),
    )
    .await;
    let url = json!({"value": "https://crash.lab.test"}).to_string();
    let _ = try_request(
        addr,
        "PUT",
        "/v3/settings/server-url",
        Some(&token),
        Some(&url),
    )
    .await;
    for i in 0..20 {
        let cluster = json!({"name": format!("c{i}")}).to_string();
        let Some(created) =
            try_request(addr, "POST", "/v3/clusters", Some(&token), Some(&cluster)).await
        else {
            return;
        };
        let Ok(created) = serde_json::from_str::<Value>(&created.body) else {
            return;
        };
        let new_token = json!({"clusterId": created["id"]}).to_string();
        let _ = try_request(
            addr,
            "POST",
            "/v3/clusterregistrationtokens",
            Some(&token),
            Some(&new_token),
        )
        .await;
    }
}

/// Every JSON state file parses.
fn assert_state_whole(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        // Users and tokens are files of their own, in folders of their kind.
        if path.is_dir() {
            assert_state_whole(&path);
        } else if path.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&path).unwrap();
            serde_json::from_slice::<Value>(&bytes)
                .unwrap_or_else(|e| panic!("{} is torn: {e}", path.display()));
        }
    }
}

fn spawn_raw(dir: &Path) -> std::process::Child {
    Command::new(corral_bin())
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--https-port",
            "0",
            "--http-port",
            "0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("CATTLE_BOOTSTRAP_PASSWORD", BOOTSTRAP)
        .env("CORRAL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_never_tears_state() {
    let rounds = stress_size(100, 300);
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", BOOTSTRAP)];

    // First start: killed while it creates the CA and the admin user.
    for round in 0..rounds / 4 {
        let dir = tmp.path().join(format!("first-{round}"));
        let mut child = spawn_raw(&dir);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..120)));
        child.kill().unwrap();
        child.wait().unwrap();
        let ca_before = std::fs::read(dir.join("ca.crt")).ok();
        let corral = Corral::start_in(&dir, &[], &env)
            .unwrap_or_else(|e| panic!("round {round}: no restart after SIGKILL: {e}"));
        assert_state_whole(&dir);
        if let Some(ca) = ca_before {
            assert_eq!(
                sha256_hex(corral.cacerts().await.as_bytes()),
                sha256_hex(&ca),
                "round {round}: a CA on disk is the CA served"
            );
        }
    }

    // Setup and cluster writes, killed at random moments; passwords chain from one round to the next.
    let dir = tmp.path().join("setup");
    let mut passwords = vec![BOOTSTRAP.to_string()];
    let mut checksum = None;
    for round in 0..rounds - rounds / 4 {
        let corral = Corral::start_in(&dir, &[], &env)
            .unwrap_or_else(|e| panic!("round {round}: no restart after SIGKILL: {e}"));
        assert_state_whole(&dir);
        let addr = corral.https("127.0.0.1");
        let served = sha256_hex(corral.cacerts().await.as_bytes());
        assert_eq!(
            checksum.get_or_insert(served.clone()),
            &served,
            "round {round}: the CA changed"
        );
        // Either the newest password or the one before it works: never neither.
        let mut token = None;
        for password in passwords.iter().rev().take(2) {
            if let Some(t) = try_admin_token(addr, password).await {
                token = Some((t, password.clone()));
                break;
            }
        }
        let (token, current) = token.unwrap_or_else(|| panic!("round {round}: no password works"));
        passwords.retain(|p| *p != current);
        passwords.push(current.clone());
        let next = format!("crash-password-{round:04}");
        passwords.push(next.clone());
        let writes = tokio::spawn(mutate(addr, token, current, next));
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        corral.stop();
        writes.abort();
    }
    let corral = Corral::start_in(&dir, &[], &env).unwrap();
    assert_state_whole(&dir);
    let ping = try_request(corral.https("127.0.0.1"), "GET", "/ping", None, None).await;
    assert_eq!(ping.map(|r| r.body), Some("pong".to_string()));
}

/// 320 logins at once for a user that does not exist, 8 from each of 40 addresses (within each
/// address's burst): every one is answered (401, or 503 with Retry-After once the password checks
/// that may run at once are taken), and memory grows by a few argon2 runs, not by 320 of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_answered_within_bounded_memory() {
    let corral = Corral::start(&[]);
    let addr = corral.https("127.0.0.1");
    let pid = corral.pid();
    let body = json!({"username": "nobody", "password": "a-guess-of-some-length"}).to_string();
    let before = rss_kib(pid);
    let logins: Vec<_> = (1..=40u8)
        .flat_map(|host| std::iter::repeat_n(host, 8))
        .map(|host| {
            let body = body.clone();
            tokio::spawn(async move {
                common::request_from(
                    Some([127, 0, 10, host].into()),
                    addr,
                    "POST",
                    common::LOGIN,
                    &[],
                    Some(&body),
                )
                .await
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for login in logins {
        let response = login.await.expect("every login is answered");
        if response.status == 503 {
            assert_eq!(response.header("retry-after"), Some("1"), "{response:?}");
        }
        *statuses.entry(response.status).or_default() += 1;
    }
    let grew_mib = common::peak_rss_kib(pid).saturating_sub(before) / 1024;
    eprintln!("320 logins at once: {statuses:?}; peak RSS {grew_mib} MiB over the start");
    assert!(
        statuses.keys().all(|s| [401, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains_key(&401),
        "some were checked: {statuses:?}"
    );
    assert!(grew_mib < 128, "memory grew by {grew_mib} MiB");
    assert_eq!(get(addr, None, None, "/ping").await.body, "pong");
}

/// 320 wrong passwords for admin at once from 160 addresses (within each address's own limits):
/// at most the per-user bucket's checks run (10, then about one a second), not 320; afterwards the
/// right password works at once from where the admin logged in before, and within a couple of
/// seconds from an address it never used: nobody is locked out for minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_guesses_from_many_addresses_runs_few_checks_and_locks_nobody_out() {
    let password = "flood-bootstrap-password";
    let tmp = tempfile::tempdir().unwrap();
    let corral = Corral::start_in(
        &tmp.path().join("data"),
        &[],
        &[("CATTLE_BOOTSTRAP_PASSWORD", password)],
    )
    .unwrap();
    let addr = corral.https("127.0.0.1");
    let login_from = |source: [u8; 4], password: &str| {
        let body = json!({"username": "admin", "password": password}).to_string();
        async move {
            common::request_from(
                Some(source.into()),
                addr,
                "POST",
                common::LOGIN,
                &[],
                Some(&body),
            )
            .await
        }
    };
    assert_eq!(login_from([127, 0, 0, 1], password).await.status, 201);
    let checks_before = common::metric(addr, "corral_password_checks_total").await;
    assert!(checks_before >= 1.0, "the admin's login was a check");
    let started = std::time::Instant::now();
    let guesses: Vec<_> = (1..=160u8)
        .flat_map(|host| [host, host])
        .map(|host| tokio::spawn(login_from([127, 0, 20, host], "a-wrong-guess")))
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for guess in guesses {
        let response = guess.await.unwrap();
        if response.status == 429 {
            let wait: u64 = response.header("retry-after").unwrap().parse().unwrap();
            assert!(wait <= 2, "{response:?}");
        }
        *statuses.entry(response.status).or_default() += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let checks = common::metric(addr, "corral_password_checks_total").await - checks_before;
    eprintln!("320 guesses in {seconds:.1} s: {statuses:?}, {checks} password checks");
    assert!(
        statuses.keys().all(|s| [401, 429, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(
        checks <= 10.0 + seconds.ceil() + 1.0,
        "{checks} checks in {seconds:.1} s: the bucket allows 10 and one a second"
    );
    // The admin's own address is not slowed at all; a new one by a second or two at most.
    assert_eq!(login_from([127, 0, 0, 1], password).await.status, 201);
    let mut status = 0;
    for _ in 0..3 {
        let response = login_from([127, 0, 21, 1], password).await;
        status = response.status;
        match response.header("retry-after") {
            Some(wait) if status == 429 => {
                tokio::time::sleep(Duration::from_secs(wait.parse().unwrap())).await
            }
            _ => break,
        }
    }
    assert_eq!(status, 201, "the right password from a new address");
}

/// Tunnels count among the open connections and leave room for everything else; one cluster holds
/// a few; and however many agents come, corral stays below its open-files limit: accept never
/// fails with "too many open files" and /ping answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_are_bounded_per_cluster_by_the_connections_and_by_open_files() {
    let sessions = |addr: SocketAddr| async move { metric(addr, "corral_tunnel_sessions").await };
    let settle = |addr: SocketAddr, want: f64| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while sessions(addr).await != want {
            assert!(
                Instant::now() < deadline,
                "{} tunnels, not {want}",
                sessions(addr).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // And no more come.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sessions(addr).await, want);
    };

    // Eight agents with one registration token: three tunnels, the others told why.
    let lab = Lab::start_with(&["--max-tunnels-per-cluster", "3"]).await;
    let agents = lab.simulated_agents(&[&lab.registration], 8);
    settle(lab.addr, 3.0).await;
    let refusal = format!("too many tunnels for {}: at most 3 at once", lab.cluster);
    assert!(lab.corral.logged(&refusal), "the server says why");
    let logs = agents.stop_and_logs();
    assert!(logs.contains(&refusal), "so does the agent: {logs}");

    // Ten connections: tunnels take nine, and a tenth is kept for the rest (/ping).
    let lab = Lab::start_with(&["--max-connections", "10", "--max-tunnels-per-cluster", "0"]).await;
    let _agents = lab.simulated_agents(&[&lab.registration], 12);
    settle(lab.addr, 9.0).await;
    assert!(
        lab.corral
            .logged("too many tunnels: this server holds as many as it may")
    );
    assert_eq!(get(lab.addr, None, None, "/ping").await.body, "pong");

    // 150 agents against a corral allowed 128 open files.
    let tmp = tempfile::tempdir().unwrap();
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", common::lab::BOOTSTRAP)];
    let args = ["--max-tunnels-per-cluster", "0", "--agent-wait", "2"];
    let limited = Corral::start_with_open_files(128, &tmp.path().join("d"), &args, &env).unwrap();
    let addr = limited.https("127.0.0.1");
    let lab = Lab::setup(limited, addr).await;
    let _agents = lab.simulated_agents(&[&lab.registration], 150);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut most = 0.0f64;
    while Instant::now() < deadline {
        let ping = tokio::time::timeout(Duration::from_secs(5), get(addr, None, None, "/ping"));
        assert_eq!(ping.await.expect("/ping answers").body, "pong");
        most = most.max(sessions(addr).await);
        assert!(open_fds(lab.corral.pid()) < 128);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("150 agents, 128 open files: {most} tunnels at most");
    assert!(most > 0.0 && most < 128.0, "{most}");
    assert!(lab.corral.logged("the open-files limit is 128"));
    assert!(
        !lab.corral.logged("Too many open files"),
        "accept never ran out of files"
    );
}

/// corral runs without transparent huge pages: mimalloc asks for them, and a huge page is resident
/// whole (2 MiB) once any byte of it is touched, which made a server's memory per tunnel jump from
/// run to run. The kernel shows the process's setting in /proc (Linux 6.x: `THP_enabled`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runs_without_transparent_huge_pages() {
    let corral = Corral::start(&[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", corral.pid())).unwrap();
    let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) else {
        eprintln!("this kernel does not show THP_enabled: not checked");
        return;
    };
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}
