//! Shared helpers for the integration tests: start the real `corral` binary on ephemeral loopback
//! ports, and talk to it with real clients (rustls here; curl and openssl through `Command`).
#![allow(dead_code)]

pub mod balancer;
pub mod etcd;
pub mod hello;
pub mod lab;
pub mod nginx;
pub mod pebble;
pub mod python;
pub mod target;
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long a server gets to print its listening lines.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `corral serve`, killed when dropped.
pub struct Corral {
    child: Child,
    pub https_port: u16,
    pub http_port: u16,
    pub data_dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn corral_bin() -> &'static str {
    env!("CARGO_BIN_EXE_corral")
}

impl Corral {
    /// Starts corral with a fresh data directory and `extra` arguments.
    pub fn start(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut corral = Self::start_in(&dir, extra, &[]).expect("corral starts");
        corral._tmp = Some(tmp);
        corral
    }

    /// Starts corral on `data_dir`; `Err` carries the exit status and output when it does not start.
    pub fn start_in(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        Self::start_command(Command::new(corral_bin()), data_dir, extra, env)
    }

    /// Like [`Corral::start_in`], with at most `files` open files (soft and hard: `prlimit`).
    pub fn start_with_open_files(
        files: u64,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={files}:{files}"))
            .arg(corral_bin());
        Self::start_command(command, data_dir, extra, env)
    }

    fn start_command(
        mut command: Command,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        command
            .args(["serve", "--bind", "::"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env_remove("CORRAL_CONFIG")
            // Ephemeral ports unless the test chose its own.
            .env("CORRAL_HTTPS_PORT", "0")
            .env("CORRAL_HTTP_PORT", "0")
            .env("CORRAL_LOG", "info,corral=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn corral");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                sink.lock().unwrap().push(line);
            }
        });
        let (mut https, mut http) = (None, None);
        let deadline = Instant::now() + START_TIMEOUT;
        while https.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    https = https.or_else(|| port_after(&line, "Listening on https://"));
                    http = http.or_else(|| port_after(&line, "Listening on http://"));
                }
                Err(_) => {
                    let status = child
                        .wait_timeout(Duration::from_secs(5))
                        .and_then(|s| s.code());
                    let _ = child.kill();
                    let output = logs.lock().unwrap().join("\n");
                    return Err(format!("exit: {status:?}\n{output}"));
                }
            }
        }
        Ok(Self {
            child,
            https_port: https.unwrap(),
            http_port: http.unwrap(),
            data_dir: data_dir.to_path_buf(),
            logs,
            _tmp: None,
        })
    }

    pub fn https(&self, ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), self.https_port)
    }

    pub fn http(&self) -> SocketAddr {
        SocketAddr::new([127, 0, 0, 1].into(), self.http_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether any log line so far contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(text))
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits, at most `limit`, for the process to exit: its exit code, and how
    /// long it took.
    pub fn terminate(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait_timeout(limit);
        (status.and_then(|s| s.code()), started.elapsed())
    }

    /// Stops the server and waits for it, keeping the data directory.
    pub fn stop(mut self) -> Option<tempfile::TempDir> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self._tmp.take()
    }

    /// The CA PEM as `/cacerts` serves it (fetched without verification, as agents do).
    pub async fn cacerts(&self) -> String {
        let response = get(self.https("127.0.0.1"), None, None, "/cacerts").await;
        assert_eq!(response.status, 200);
        response.body
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

trait WaitTimeout {
    fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus>;
}

impl WaitTimeout for Child {
    fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn port_after(line: &str, marker: &str) -> Option<u16> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split_whitespace()
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

/// Resident memory of a process, in KiB (from /proc).
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// Peak resident memory of a process since it started (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of a process (from /proc).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd is readable")
        .count()
}

/// Whether the stress tests run at the full size (`CORRAL_STRESS=full`).
pub fn stress_full() -> bool {
    std::env::var("CORRAL_STRESS").is_ok_and(|v| v == "full")
}

/// The quick size, or the full one under `CORRAL_STRESS=full`.
pub fn stress_size(quick: usize, full: usize) -> usize {
    if stress_full() { full } else { quick }
}

/// A port that is free now, for a server the caller starts next. It is taken from below the kernel's
/// ephemeral range: a port from that range (what binding port 0 gives) can be handed to some client
/// socket's local end before the server binds it, which made tests fail with "Address already in
/// use". No port is handed out twice in one test binary.
pub fn free_port() -> u16 {
    use rand::Rng;
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let range = 10_000..ephemeral_from.max(11_000);
    let mut handed_out = HANDED_OUT.lock().unwrap();
    for _ in 0..500 {
        let port = rand::rng().random_range(range.clone());
        // `::` is dual-stack: free there means free for IPv4 too (on a host without IPv6, IPv4 alone).
        let free = match std::net::TcpListener::bind(("::", port)) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => false,
            Err(_) => std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        };
        if free && !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port in {range:?}");
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// The sum of the samples on `/metrics` (over HTTPS at `addr`) whose line starts with `prefix`.
pub async fn metric(addr: SocketAddr, prefix: &str) -> f64 {
    get(addr, None, None, "/metrics")
        .await
        .body
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs corral to completion (for commands that must fail or print), with a time limit.
pub fn run_corral(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut child = Command::new(corral_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corral");
    let status = child.wait_timeout(Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    (
        status.and_then(|s| s.code()),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A TLS connection and the chain the server presented.
pub struct Handshake {
    pub stream: TlsStream<TcpStream>,
    pub chain: Vec<CertificateDer<'static>>,
}

impl Handshake {
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

/// Connects with rustls. `sni` None sends no SNI (an IP server name). With `ca_pem`, the chain is
/// verified against that CA alone; without, anything is accepted (to inspect what is served).
pub async fn tls_connect(
    addr: SocketAddr,
    sni: Option<&str>,
    ca_pem: Option<&str>,
) -> std::io::Result<Handshake> {
    tls_connect_from(None, addr, sni, ca_pem).await
}

/// [`tls_connect`] from a chosen loopback source address (a different client, as the server sees it).
pub async fn tls_connect_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    sni: Option<&str>,
    ca_pem: Option<&str>,
) -> std::io::Result<Handshake> {
    let alpn: &[&[u8]] = &[b"http/1.1"];
    let config = match ca_pem {
        Some(pem) => corral::client::tls_trusting(pem.as_bytes(), alpn).unwrap(),
        None => corral::client::tls_insecure(alpn),
    };
    let name = match sni {
        Some(name) => ServerName::try_from(name.to_string()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let handshake = async {
        let tcp = match source {
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
            None => TcpStream::connect(addr).await?,
        };
        TlsConnector::from(config).connect(name, tcp).await
    };
    let stream = tokio::time::timeout(Duration::from_secs(20), handshake)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake took over 20 s")
        })??;
    let chain = stream
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .to_vec();
    Ok(Handshake { stream, chain })
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header lines as sent, `Name: value`.
    pub headers: Vec<String>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One request over TLS (`sni`, verified against `ca_pem` when given) with `Connection: close`.
pub async fn get(
    addr: SocketAddr,
    sni: Option<&str>,
    ca_pem: Option<&str>,
    path: &str,
) -> HttpResponse {
    let host = sni.map_or_else(|| addr.to_string(), |s| format!("{s}:{}", addr.port()));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let handshake = tls_connect(addr, sni, ca_pem).await.expect("TLS handshake");
    exchange(handshake.stream, &request).await
}

/// A request with a method, extra header lines and a JSON body, over TLS without verification.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&str>,
) -> HttpResponse {
    request_from(None, addr, method, path, headers, body).await
}

/// [`request`] from a chosen loopback source address.
pub async fn request_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&str>,
) -> HttpResponse {
    let handshake = tls_connect_from(source, addr, None, None)
        .await
        .expect("TLS handshake");
    send(handshake.stream, addr, method, path, headers, body)
        .await
        .expect("a response within 20 s")
}

/// One request through hyper's HTTP/1.1 client on `stream` — a real client's framing, for ordinary
/// API calls; `None` when the server hangs up or takes over 20 s. (Raw bytes, for malformed
/// requests, go through [`exchange`].)
async fn send<S>(
    stream: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&str>,
) -> Option<HttpResponse>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let exchange = async {
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.ok()?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string());
        for line in headers {
            let (name, value) = line.split_once(':')?;
            request = request.header(name.trim(), value.trim());
        }
        let body = bytes::Bytes::from(body.unwrap_or_default().to_string());
        let request = request.body(http_body_util::Full::new(body)).ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or_default()))
            .collect();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .ok()?
            .to_bytes();
        Some(HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .ok()?
}

/// Where corral (and Rancher) logs users in.
pub const LOGIN: &str = "/v3-public/localProviders/local?action=login";

/// A login attempt, as the UI sends it.
pub async fn login(addr: SocketAddr, username: &str, password: &str) -> HttpResponse {
    let body = serde_json::json!({ "username": username, "password": password }).to_string();
    request(addr, "POST", LOGIN, &[], Some(&body)).await
}

/// The admin's session token; `None` when the login fails or the server is gone.
pub async fn try_admin_token(addr: SocketAddr, password: &str) -> Option<String> {
    let body = serde_json::json!({ "username": "admin", "password": password }).to_string();
    let response = try_request(addr, "POST", LOGIN, None, Some(&body)).await?;
    let value: serde_json::Value = serde_json::from_str(&response.body).ok()?;
    value["token"].as_str().map(str::to_string)
}

/// An HTTP/1.1 request with `Connection: close`, extra header lines and a body.
pub fn request_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&str>,
) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    let body = body.unwrap_or_default();
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    text
}

/// A request that reports failure instead of panicking (the server may die mid-request).
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<HttpResponse> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
    let stream = tls_connect(addr, None, None).await.ok()?.stream;
    send(stream, addr, method, path, &headers, body).await
}

/// [`exchange`] for a server that may hang up or die first: `None` instead of a panic.
pub async fn try_exchange<S>(mut stream: S, request: &str) -> Option<HttpResponse>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    // A read error after the response (a peer that skips close_notify) still leaves the response.
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .ok()?;
    let response = parse_response(&String::from_utf8_lossy(&raw));
    (response.status != 0).then_some(response)
}

/// Sends a raw request on any stream and reads the response to EOF (bounded by a timeout).
pub async fn exchange<S>(stream: S, request: &str) -> HttpResponse
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    try_exchange(stream, request)
        .await
        .expect("a response within 20 s")
}

/// A plain-HTTP request to the HTTP port.
pub async fn plain(addr: SocketAddr, request: &str) -> HttpResponse {
    exchange(TcpStream::connect(addr).await.unwrap(), request).await
}

/// A response as text; status 0 when there is no status line.
pub fn parse_response(raw: &str) -> HttpResponse {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    HttpResponse {
        status,
        headers: lines.map(str::to_string).collect(),
        body: body.to_string(),
    }
}

/// Subject alternative names of a certificate, as text (`DNS:a.test`, `IP:127.0.0.1`).
pub fn sans(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let Some(ext) = cert.subject_alternative_name().unwrap() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                format!(
                    "IP:{}",
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap())
                )
            }
            GeneralName::IPAddress(b) => {
                format!(
                    "IP:{}",
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap())
                )
            }
            other => format!("{other:?}"),
        })
        .collect()
}

/// `subject` of a certificate as OpenSSL prints it in one line (e.g. `O=dynamic, CN=dynamic`).
pub fn subject(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.subject().to_string()
}

pub fn serial(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial_as_string()
}

/// Writes `contents` into a temp file that lives as long as the returned guard.
pub fn temp_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, contents.as_bytes()).unwrap();
    file
}

/// Runs a shell pipeline and returns its stdout (trimmed); panics with stderr on failure.
pub fn sh(script: &str) -> String {
    let output = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        output.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Logs `admin` in with `password` over and over from 40 addresses at once, on every server of
/// `addrs` in turn, while `reset` (run once the logins are under way) resets the password; then
/// checks every token those logins got: none may work once `reset` has returned, on any server.
/// Returns how many tokens the logins got (each one issued for the old password).
pub async fn logins_racing_a_reset(
    addrs: &[SocketAddr],
    password: &str,
    reset: impl FnOnce() + Send + 'static,
) -> usize {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let logins: Vec<_> = (1..=40u8)
        .map(|host| {
            let (addr, done) = (addrs[host as usize % addrs.len()], done.clone());
            let body = serde_json::json!({"username": "admin", "password": password}).to_string();
            tokio::spawn(async move {
                let mut tokens = Vec::new();
                let source = Some(IpAddr::from([127, 0, 30, host]));
                // Each address's burst is 10 logins; keep going a little past the reset.
                for _ in 0..10 {
                    let finished = done.load(std::sync::atomic::Ordering::Acquire);
                    let response =
                        request_from(source, addr, "POST", LOGIN, &[], Some(&body)).await;
                    if response.status == 201 {
                        let value: serde_json::Value =
                            serde_json::from_str(&response.body).unwrap();
                        tokens.push(value["token"].as_str().unwrap().to_string());
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if finished {
                        break;
                    }
                }
                tokens
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reset_done = done.clone();
    tokio::task::spawn_blocking(move || {
        reset();
        reset_done.store(true, std::sync::atomic::Ordering::Release);
    })
    .await
    .unwrap();
    let mut tokens = Vec::new();
    for login in logins {
        tokens.extend(login.await.unwrap());
    }
    for token in &tokens {
        for addr in addrs {
            let auth = format!("Authorization: Bearer {token}");
            let response = request(*addr, "GET", "/v3/settings/server-url", &[&auth], None).await;
            assert_eq!(
                response.status,
                401,
                "a token of the old password works on {addr} after the reset ({} tokens)",
                tokens.len()
            );
        }
    }
    tokens.len()
}

/// One HTTPS connection (not verified) kept open for many requests, as a script's client keeps it.
pub struct KeepAlive {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
}

impl KeepAlive {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = tls_connect(addr, None, None).await.unwrap().stream;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        Self { addr, sender }
    }

    /// One request on the connection; panics when the server does not answer within 20 s.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: Option<&str>,
    ) -> HttpResponse {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string());
        for line in headers {
            let (name, value) = line.split_once(':').unwrap();
            request = request.header(name.trim(), value.trim());
        }
        let body = bytes::Bytes::from(body.unwrap_or_default().to_string());
        let request = request.body(http_body_util::Full::new(body)).unwrap();
        let exchange = async {
            self.sender
                .ready()
                .await
                .expect("the connection stays open");
            let response = self.sender.send_request(request).await.unwrap();
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or_default()))
                .collect();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            HttpResponse {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        };
        tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .expect("an answer within 20 s")
    }
}
