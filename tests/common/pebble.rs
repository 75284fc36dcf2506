//! Debian's pebble ACME test server on loopback, for the ACME tests.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::target::TestPki;
use super::{free_port, get};

/// Debian's pebble ACME test server, with pebble-challtestsrv as its DNS (every name is 127.0.0.1).
/// It validates HTTP-01 on `http_port`. Killed on drop.
pub struct Pebble {
    children: Vec<Child>,
    pub port: u16,
    management: u16,
    dir: tempfile::TempDir,
}

impl Pebble {
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        // pebble's own HTTPS certificate, from a CA corral is told to trust for the directory.
        let https_ca = TestPki::new("pebble-https-ca");
        let https = https_ca.issue(&["127.0.0.1", "localhost"]);
        std::fs::write(path("cert.pem"), &https.cert).unwrap();
        std::fs::write(path("key.pem"), &https.key).unwrap();
        std::fs::write(path("https-ca.pem"), &https_ca.ca_pem).unwrap();
        let (port, management, dns) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": path("cert.pem"),
            "privateKey": path("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        std::fs::write(path("pebble.json"), config.to_string()).unwrap();
        let quiet = |command: &mut Command| {
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pebble is installed (.ci/test installs it)")
        };
        let dns_server = quiet(Command::new("pebble-challtestsrv").args([
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{}", free_port()),
        ]));
        let pebble = quiet(
            Command::new("pebble")
                .args(["-config", &path("pebble.json")])
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
        );
        let pebble = Pebble {
            children: vec![dns_server, pebble],
            port,
            management,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        pebble
    }

    /// corral's flags for a certificate for `corral.lab.test` from this pebble, by `challenge`.
    pub fn corral_args(&self, challenge: &str) -> Vec<String> {
        [
            "--acme-domain",
            "corral.lab.test",
            "--acme-directory",
            &format!("https://127.0.0.1:{}/dir", self.port),
            "--acme-ca-cert",
            &self.https_ca(),
            "--acme-challenge",
            challenge,
        ]
        .map(str::to_string)
        .to_vec()
    }

    pub fn https_ca(&self) -> String {
        self.dir
            .path()
            .join("https-ca.pem")
            .to_string_lossy()
            .into_owned()
    }

    /// The root pebble issues under (made fresh at each start).
    pub async fn issuing_root(&self) -> String {
        let ca = std::fs::read_to_string(self.https_ca()).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.management));
        get(addr, None, Some(&ca), "/roots/0").await.body
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
