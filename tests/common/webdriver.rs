//! A minimal W3C WebDriver client for Debian's chromium + chromedriver, enough to fill a form, click,
//! wait, and take screenshots. The browser trusts a CA through its own NSS database (not by ignoring
//! certificate errors), and resolves test host names to 127.0.0.1 itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// W3C's key for element references.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _home: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless chromium that trusts `ca_pem` and maps `host` to 127.0.0.1.
    pub async fn start(ca_pem: &str, host: &str) -> Browser {
        for tool in ["chromium", "chromedriver", "certutil"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .output()
                    .unwrap()
                    .status
                    .success(),
                "{tool} is missing: apt-get install chromium chromium-driver libnss3-tools (.ci/test does)"
            );
        }
        let home = tempfile::tempdir().unwrap();
        trust_ca(home.path(), ca_pem);
        let port = super::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _home: home,
        };
        browser.wait_for_driver().await;
        let profile = browser._home.path().join("profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--host-resolver-rules=MAP {host} 127.0.0.1"),
                ]
            }
        }}});
        let created = browser.call("POST", "/session", Some(capabilities)).await;
        browser.session = created["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser
    }

    async fn wait_for_driver(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start");
    }

    pub async fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The element matching a CSS selector, waiting up to 10 s for it.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .try_session_call(
                    "POST",
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Ok(value) = found {
                return value[ELEMENT_KEY].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} on the page:\n{}",
                self.page_text().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.session_call(
            "POST",
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.session_call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn property(&self, css: &str, name: &str) -> Value {
        let element = self.find(css).await;
        self.session_call("GET", &format!("/element/{element}/property/{name}"), None)
            .await
    }

    /// Runs a script (`return …`) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Waits up to `limit` for a script to return true.
    pub async fn wait_until(&self, script: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.eval(script).await == Value::Bool(true) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        false
    }

    pub async fn page_text(&self) -> String {
        let text = self.try_session_call("POST", "/execute/sync", Some(json!({"script": "return document.body ? document.body.innerText : ''", "args": []}))).await;
        text.ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Saves a PNG screenshot as a test artifact and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let png = self.session_call("GET", "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    async fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        match self.try_session_call(method, path, body).await {
            Ok(value) => value,
            Err(error) => panic!("WebDriver {method} {path}: {error}"),
        }
    }

    async fn try_session_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let full = format!("/session/{}{path}", self.session);
        let response = self.raw_call(method, &full, body).await;
        match response.get("value") {
            Some(value) if value.get("error").is_some() => Err(value.clone()),
            Some(value) => Ok(value.clone()),
            None => Err(response),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let response = self.raw_call(method, path, body).await;
        let value = response["value"].clone();
        assert!(
            value.get("error").is_none(),
            "WebDriver {method} {path}: {value}"
        );
        value
    }

    /// One HTTP/1.1 exchange with chromedriver on loopback.
    async fn raw_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        // chromedriver says `Connection: close` but may keep the socket open: read by Content-Length.
        let raw = tokio::time::timeout(Duration::from_secs(60), read_response(&mut stream))
            .await
            .expect("chromedriver answers within 60 s");
        let text = String::from_utf8_lossy(&raw);
        let payload = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        serde_json::from_str(payload)
            .unwrap_or_else(|e| panic!("bad WebDriver reply ({e}): {text}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask chromedriver to quit the browser first: killing chromedriver alone orphans chromium.
        if !self.session.is_empty()
            && let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", self.port))
        {
            use std::io::{Read, Write};
            let _ = socket.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            let _ = socket.write_all(request.as_bytes());
            let mut reply = [0u8; 1024];
            let _ = socket.read(&mut reply);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Reads one HTTP response: the head, then exactly Content-Length bytes (or to EOF without one).
async fn read_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        raw.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|len| body.len() >= len) {
                return raw;
            }
        }
        if n == 0 {
            return raw;
        }
    }
}

/// Creates the NSS database chromium reads ($HOME/.pki/nssdb) and trusts `ca_pem` for TLS servers.
fn trust_ca(home: &Path, ca_pem: &str) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let ca_file = home.join("corral-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let db_arg = format!("sql:{}", db.display());
    for args in [
        vec!["-N", "--empty-password", "-d", &db_arg],
        vec![
            "-A",
            "-d",
            &db_arg,
            "-n",
            "corral-ca",
            "-t",
            "C,,",
            "-i",
            ca_file.to_str().unwrap(),
        ],
    ] {
        let status = Command::new("certutil").args(&args).status().unwrap();
        assert!(status.success(), "certutil {args:?}");
    }
}
