//! Rancher's other TLS set-ups: bring-your-own certificates (flags and the `/etc/rancher/ssl`
//! layout, rotation, Rancher's start-up errors) and external termination behind a real nginx, with a
//! `corral agent` tunnel through it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::nginx::Nginx;
use common::pebble::Pebble;
use common::target::{IssuedPem, TestPki, VERSION_JSON, kube_api, serve};
use common::{Corral, free_port, get, request, run_corral, serial, tls_connect};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ONE_OF_CERT_AND_KEY: &str = "invalid SSL configuration found, please set both certificate file and certificate key file (one is missing)";
const CACERTS_OR_NO_CACERTS: &str = "invalid SSL configuration found, please set cacerts when using self signed certificates or use --no-cacerts when using certificates from a recognized Certificate Authority, do not use both at the same time";

/// A directory laid out like Rancher's `/etc/rancher/ssl`.
struct SslDir {
    dir: tempfile::TempDir,
}

impl SslDir {
    fn new(leaf: &IssuedPem, cacerts: Option<&str>) -> Self {
        let ssl = SslDir {
            dir: tempfile::tempdir().unwrap(),
        };
        ssl.write("cert.pem", &leaf.cert);
        ssl.write("key.pem", &leaf.key);
        if let Some(ca) = cacerts {
            ssl.write("cacerts.pem", ca);
        }
        ssl
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// Replaces a file the way a rotation does: a new file renamed over the old one.
    fn write(&self, name: &str, contents: &str) {
        let temp = self.path(&format!(".{name}.new"));
        std::fs::write(&temp, contents).unwrap();
        std::fs::rename(temp, self.path(name)).unwrap();
    }
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Waits (bounded) until a new handshake is served `expected`.
async fn wait_for_leaf(addr: SocketAddr, ca: &str, expected: &CertificateDer<'static>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let handshake = tls_connect(addr, Some("byo.lab.test"), Some(ca))
            .await
            .unwrap();
        if handshake.leaf() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the rotated certificate was never served");
}

/// One keep-alive request on an open connection; true when it answered `pong`.
async fn ping_on<S>(stream: &mut S) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = b"GET /ping HTTP/1.1\r\nHost: byo.lab.test\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return false,
        }
        if seen.ends_with(b"pong") {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brought_certificate_is_served_as_given_and_rotated_live() {
    let pki = TestPki::new("byo-ca");
    let first = pki.issue(&["byo.lab.test", "127.0.0.1"]);
    let ssl = SslDir::new(&first, Some(&pki.ca_pem));
    let corral = Corral::start(&[
        "--tls-cert",
        &ssl.arg("cert.pem"),
        "--tls-key",
        &ssl.arg("key.pem"),
        "--cacerts",
        &ssl.arg("cacerts.pem"),
    ]);
    let addr = corral.https("127.0.0.1");
    // /cacerts is the given CA, trimmed, plus one newline.
    assert_eq!(corral.cacerts().await, format!("{}\n", pki.ca_pem.trim()));

    // The file's leaf, whatever the client asks for; nothing is minted.
    let handshake = tls_connect(addr, Some("byo.lab.test"), Some(&pki.ca_pem))
        .await
        .unwrap();
    assert_eq!(handshake.leaf(), &der_of(&first.cert));
    let other = tls_connect(addr, Some("other.example"), None)
        .await
        .unwrap();
    assert_eq!(serial(other.leaf()), serial(&der_of(&first.cert)));
    assert!(
        !corral.logged("minted certificate for"),
        "nothing is minted"
    );

    // ALPN offers h2 in this mode: curl negotiates HTTP/2.
    let url = format!("https://byo.lab.test:{}/ping", corral.https_port);
    let resolve = format!("byo.lab.test:{}:127.0.0.1", corral.https_port);
    let version = Command::new("curl")
        .args(["-s", "--http2", "--max-time", "20", "--cacert"])
        .arg(ssl.path("cacerts.pem"))
        .args([
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout), "2");

    // A connection open across the rotation keeps working.
    let mut open = tls_connect(addr, Some("byo.lab.test"), Some(&pki.ca_pem))
        .await
        .unwrap()
        .stream;
    assert!(ping_on(&mut open).await);
    let second = pki.issue(&["byo.lab.test", "127.0.0.1"]);
    ssl.write("cert.pem", &second.cert);
    ssl.write("key.pem", &second.key);
    wait_for_leaf(addr, &pki.ca_pem, &der_of(&second.cert)).await;
    assert!(ping_on(&mut open).await, "the open connection survived");

    // A broken rotation keeps the current certificate and says why.
    ssl.write(
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !corral.logged("keeping the current certificate") {
        assert!(Instant::now() < deadline, "{:?}", corral.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let still = tls_connect(addr, Some("byo.lab.test"), Some(&pki.ca_pem))
        .await
        .unwrap();
    assert_eq!(still.leaf(), &der_of(&second.cert));
}

#[tokio::test]
async fn the_rancher_layout_and_no_cacerts() {
    let pki = TestPki::new("layout-ca");
    let leaf = pki.issue(&["byo.lab.test", "127.0.0.1"]);
    // cert.pem, key.pem and cacerts.pem in the ssl directory.
    let ssl = SslDir::new(&leaf, Some(&pki.ca_pem));
    let corral = Corral::start(&["--ssl-dir", &ssl.arg("")]);
    let handshake = tls_connect(
        corral.https("127.0.0.1"),
        Some("byo.lab.test"),
        Some(&pki.ca_pem),
    )
    .await
    .unwrap();
    assert_eq!(handshake.leaf(), &der_of(&leaf.cert));
    let served = corral.cacerts().await;
    assert_eq!(served, format!("{}\n", pki.ca_pem.trim()));
    // `corral ca checksum` with the server's settings prints the checksum of what /cacerts serves
    // (the brought CA), not of corral's own CA.
    let data_dir = corral.data_dir.display().to_string();
    let checksum = |extra: &[&str]| {
        let args = [&["ca", "checksum", "--data-dir", &data_dir][..], extra].concat();
        run_corral(&args, &[])
    };
    let (code, stdout, stderr) = checksum(&["--ssl-dir", &ssl.arg("")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), common::sha256_hex(served.as_bytes()));
    drop(corral);

    // A certificate from a CA clients trust: --no-cacerts, and /cacerts is empty (200, no body).
    let public = SslDir::new(&leaf, None);
    let corral = Corral::start(&["--ssl-dir", &public.arg(""), "--no-cacerts"]);
    let addr = corral.https("127.0.0.1");
    let cacerts = get(addr, None, None, "/cacerts").await;
    assert_eq!((cacerts.status, cacerts.body.as_str()), (200, ""));
    let setting = get(addr, None, None, "/v3/settings/cacerts").await;
    let value: serde_json::Value = serde_json::from_str(&setting.body).unwrap();
    assert_eq!(value["value"], "");
    assert!(corral.logged("/cacerts is empty"), "{:?}", corral.logs());
    let (code, stdout, stderr) = checksum(&["--ssl-dir", &public.arg(""), "--no-cacerts"]);
    assert_eq!((code, stdout.as_str()), (Some(0), ""), "{stderr}");
    assert!(stderr.contains("/cacerts is empty"), "{stderr}");
}

/// A server with a certificate from a CA the system trusts (no /cacerts): `corral agent` without
/// --ca-checksum verifies it with the system roots, as Rancher's agent does — here the test CA,
/// given as SSL_CERT_FILE. Without that CA among the roots, the agent refuses the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_checksum_the_agent_trusts_the_system_roots() {
    let pki = TestPki::new("public-ca");
    let leaf = pki.issue(&["127.0.0.1", "localhost"]);
    let public = SslDir::new(&leaf, None);
    let data = tempfile::tempdir().unwrap();
    let ssl_dir = public.arg("");
    let corral = Lab::corral(
        &data.path().join("d"),
        &["--ssl-dir", &ssl_dir, "--no-cacerts"],
    );
    let addr = corral.https("127.0.0.1");
    let lab = Lab::setup(corral, addr).await;
    let (_roots_dir, roots) = write_temp(&pki.ca_pem);
    let agent = |roots: &Path| {
        Command::new(common::corral_bin())
            .args(["agent", "--simulate", "--server", &lab.server()])
            .args(["--token", &lab.registration])
            .env_remove("CATTLE_CA_CHECKSUM")
            .env("SSL_CERT_FILE", roots)
            .env("SSL_CERT_DIR", "/nonexistent")
            .env("CORRAL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut trusted = agent(&roots);
    lab.wait_connected(true).await;
    let version = lab.proxied("/version").await;
    assert_eq!(version.status, 200, "{}", version.body);
    let _ = trusted.kill();
    let _ = trusted.wait();

    let (_other_dir, other_roots) = write_temp(&TestPki::new("another-ca").ca_pem);
    let refused = agent(&other_roots).wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{logs}");
    assert!(
        logs.contains("UnknownIssuer") || logs.contains("unknown issuer"),
        "{logs}"
    );
}

/// `corral serve` with `args` that must not start; its exit code and stderr.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_string_lossy().into_owned();
    let base = [
        "serve",
        "--data-dir",
        &data_dir,
        "--https-port",
        "0",
        "--http-port",
        "0",
    ];
    let (code, _, stderr) = run_corral(&[&base[..], args].concat(), &[]);
    (code, stderr)
}

#[test]
fn rancher_start_up_errors_word_for_word() {
    let pki = TestPki::new("errors-ca");
    let leaf = pki.issue(&["byo.lab.test"]);
    let ssl = SslDir::new(&leaf, Some(&pki.ca_pem));
    let (cert, key, ca) = (
        ssl.arg("cert.pem"),
        ssl.arg("key.pem"),
        ssl.arg("cacerts.pem"),
    );
    let cases: [(&[&str], &str); 4] = [
        (&["--tls-cert", &cert], ONE_OF_CERT_AND_KEY),
        (&["--tls-key", &key], ONE_OF_CERT_AND_KEY),
        (
            &["--tls-cert", &cert, "--tls-key", &key],
            CACERTS_OR_NO_CACERTS,
        ),
        (
            &[
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--cacerts",
                &ca,
                "--no-cacerts",
            ],
            CACERTS_OR_NO_CACERTS,
        ),
    ];
    for (args, text) in cases {
        let (code, stderr) = refused(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(text), "{args:?}: {stderr}");
    }
    // A key of another certificate: a clear error.
    let other = pki.issue(&["other.lab.test"]);
    let stray = SslDir::new(&other, None);
    let (code, stderr) = refused(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &stray.arg("key.pem"),
        "--no-cacerts",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("does not match the certificate"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_expired_certificate_is_served_with_a_warning() {
    let pki = TestPki::new("expired-ca");
    let leaf = pki.issue_with(&["byo.lab.test"], |params| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let ssl = SslDir::new(&leaf, Some(&pki.ca_pem));
    let corral = Corral::start(&["--ssl-dir", &ssl.arg("")]);
    let handshake = tls_connect(corral.https("127.0.0.1"), Some("byo.lab.test"), None)
        .await
        .unwrap();
    assert_eq!(handshake.leaf(), &der_of(&leaf.cert));
    assert!(corral.logged("has expired: clients will refuse it"));
    // A client that verifies refuses it, as it would refuse Rancher.
    assert!(
        tls_connect(
            corral.https("127.0.0.1"),
            Some("byo.lab.test"),
            Some(&pki.ca_pem)
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn a_chain_cacerts_does_not_sign_is_served_with_a_warning() {
    let pki = TestPki::new("real-ca");
    let unrelated = TestPki::new("unrelated-ca");
    let leaf = pki.issue(&["byo.lab.test", "127.0.0.1"]);
    let ssl = SslDir::new(&leaf, Some(&unrelated.ca_pem));
    let corral = Corral::start(&["--ssl-dir", &ssl.arg("")]);
    let handshake = tls_connect(corral.https("127.0.0.1"), Some("byo.lab.test"), None)
        .await
        .unwrap();
    assert_eq!(handshake.leaf(), &der_of(&leaf.cert));
    assert!(
        corral.logged("not signed by the CA in cacerts"),
        "{:?}",
        corral.logs()
    );
}

fn write_temp(contents: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cacerts.pem");
    std::fs::write(&path, contents).unwrap();
    (dir, path)
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_termination_behind_nginx_carries_requests_and_a_tunnel() {
    let balancer = TestPki::new("balancer-ca");
    let (_ca_dir, ca_file) = write_temp(&balancer.ca_pem);
    let data = tempfile::tempdir().unwrap();
    let corral = Lab::corral(
        &data.path().join("d"),
        &["--tls", "external", "--cacerts", &path_arg(&ca_file)],
    );
    // Plain HTTP on the main port; without the proxy's header a browser is sent to HTTPS.
    let backend = corral.https("127.0.0.1");
    let direct = common::plain(
        backend,
        "GET /dashboard/ HTTP/1.1\r\nHost: corral.lab\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(direct.status, 302);
    let nginx = {
        let leaf = balancer.issue(&["127.0.0.1", "localhost"]);
        Nginx::proxying(backend, &leaf.cert, &leaf.key)
    };

    // Through nginx: HTTPS with the balancer's certificate; /cacerts is the balancer's CA.
    let lab = Lab::setup(corral, nginx.addr()).await;
    let cacerts = get(nginx.addr(), None, Some(&balancer.ca_pem), "/cacerts").await;
    assert_eq!(cacerts.body, format!("{}\n", balancer.ca_pem.trim()));
    let ping = request(nginx.addr(), "GET", "/ping", &[], None).await;
    assert_eq!(ping.body, "pong");

    // An agent that verifies the CA checksum tunnels through nginx; the cluster proxy works through it.
    let target = serve(None, kube_api).await;
    let _agent = lab.agent(target, None, &[]);
    lab.wait_connected(true).await;
    let version = lab.proxied("/version").await;
    assert_eq!((version.status, version.body.as_str()), (200, VERSION_JSON));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_obtains_a_certificate_from_pebble_with_http_01() {
    acme_obtains_a_certificate_from_pebble("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_obtains_a_certificate_from_pebble_with_tls_alpn_01() {
    acme_obtains_a_certificate_from_pebble("tls-alpn-01").await;
}

async fn acme_obtains_a_certificate_from_pebble(challenge: &str) {
    let (http_port, https_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, https_port);
    let data = tempfile::tempdir().unwrap();
    let ports = [
        "--http-port".to_string(),
        http_port.to_string(),
        "--https-port".to_string(),
        https_port.to_string(),
    ];
    let args: Vec<String> = [&ports[..], &pebble.corral_args(challenge)].concat();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let corral = Corral::start_in(&data.path().join("d"), &args, &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !corral.logged("ACME: obtained a certificate") {
        assert!(Instant::now() < deadline, "{}", corral.logs().join("\n"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A real certificate from pebble, verified against pebble's root; /cacerts is empty.
    let root = pebble.issuing_root().await;
    assert!(root.contains("BEGIN CERTIFICATE"), "{root}");
    let addr = corral.https("127.0.0.1");
    let handshake = tls_connect(addr, Some("corral.lab.test"), Some(&root))
        .await
        .expect("the ACME certificate verifies against pebble's root");
    assert_eq!(common::sans(handshake.leaf()), ["DNS:corral.lab.test"]);
    // An empty or localhost SNI gets the same certificate.
    let bare = tls_connect(addr, None, None).await.unwrap();
    assert_eq!(bare.leaf(), handshake.leaf());
    let cacerts = get(addr, None, None, "/cacerts").await;
    assert_eq!((cacerts.status, cacerts.body.as_str()), (200, ""));
    // The account key and the certificate's key are stored as secrets.
    for secret in ["account.json", "key.pem"] {
        let mode = std::fs::metadata(data.path().join("d/acme").join(secret))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600,
            "{secret}"
        );
    }
    // After a restart the stored certificate is served at once, without a new order.
    let leaf = handshake.leaf().clone();
    drop(handshake);
    corral.stop();
    let corral = Corral::start_in(&data.path().join("d"), &args, &[]).unwrap();
    let again = tls_connect(
        corral.https("127.0.0.1"),
        Some("corral.lab.test"),
        Some(&root),
    )
    .await
    .unwrap();
    assert_eq!(again.leaf(), &leaf);
    assert!(!corral.logged("ACME: obtained"), "no new order");
}

/// `--hostname-certificate cert-manager`: the HA certificate as cert-manager issues it for
/// `tls-rancher-ingress` — 90 days, a key of its own (not the shared leaf key) — and a restart
/// serves the stored one rather than issuing another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostname_certificate_can_be_cert_managers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let args = [
        "--hostname",
        "rancher.lab.test",
        "--hostname-certificate",
        "cert-manager",
    ];
    let leaf_of = |corral: &Corral| {
        let addr = corral.https("127.0.0.1");
        async move {
            tls_connect(addr, Some("rancher.lab.test"), None)
                .await
                .unwrap()
                .leaf()
                .to_vec()
        }
    };
    let corral = Corral::start_in(&dir, &args, &[]).expect("corral starts");
    let first = leaf_of(&corral).await;
    let (_, cert) = x509_parser::parse_x509_certificate(&first).unwrap();
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(
        (90 * 86_400..=90 * 86_400 + 3_600).contains(&lifetime),
        "{lifetime} s"
    );
    let secret: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("tls-rancher-ingress.json")).unwrap(),
    )
    .unwrap();
    let shared_key = std::fs::read_to_string(dir.join("leaf.key")).unwrap();
    let own_key = secret["tls.key"].as_str().unwrap();
    assert!(own_key.contains("PRIVATE KEY") && own_key.trim() != shared_key.trim());
    drop(corral);

    let again = Corral::start_in(&dir, &args, &[]).expect("corral starts again");
    assert_eq!(
        leaf_of(&again).await,
        first,
        "the stored certificate, not a new one"
    );
    drop(again);
    // One that ends in 20 days is inside cert-manager's 30-day window: renewed. One that ends in 40
    // days is not.
    for (days, renewed) in [(40, false), (20, true)] {
        let secret = own_key_secret(&dir, "rancher.lab.test", days);
        std::fs::write(dir.join("tls-rancher-ingress.json"), &secret).unwrap();
        let corral = Corral::start_in(&dir, &args, &[]).expect("corral starts");
        let served = leaf_of(&corral).await;
        let (_, cert) = x509_parser::parse_x509_certificate(&served).unwrap();
        let left = cert.validity().not_after.timestamp()
            - time::OffsetDateTime::now_utc().unix_timestamp();
        if renewed {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !corral.logged("renewed the certificate for rancher.lab.test") {
                assert!(Instant::now() < deadline, "not renewed within 20 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } else {
            assert!(left > 39 * 86_400, "the stored one is served: {left} s");
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert!(
                !corral.logged("renewed the certificate"),
                "renewed too early"
            );
        }
    }
    // The chart's certificate (the default) replaces it: the shared leaf key, 365 days.
    let rancher = Corral::start_in(&dir, &["--hostname", "rancher.lab.test"], &[]).unwrap();
    let replaced = leaf_of(&rancher).await;
    let (_, cert) = x509_parser::parse_x509_certificate(&replaced).unwrap();
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(lifetime >= 365 * 86_400, "{lifetime} s");
}

/// A `tls-rancher-ingress` secret for `hostname` as cert-manager leaves it: signed by the data
/// directory's CA for a key of its own, ending in `days`.
fn own_key_secret(dir: &Path, hostname: &str, days: i64) -> String {
    let ca_pem = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    let leaf = params.signed_by(&key, &issuer).unwrap();
    serde_json::json!({
        "tls.crt": leaf.pem(),
        "tls.key": key.serialize_pem(),
        "ca.crt": ca_pem,
    })
    .to_string()
}
