//! A real etcd cluster (Debian's `etcd-server`) on loopback for the HA tests: three members by
//! default, so that one can be killed while the others keep a quorum. Every member is killed when
//! the cluster is dropped; its data lives in a temporary directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::target::TestPki;

/// How long a member (or the whole cluster) gets to become healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    token: String,
    tmp: tempfile::TempDir,
    /// With TLS: the files under `tmp` (CA, server and client certificates and keys).
    tls: Option<TlsFiles>,
    /// More flags for every member.
    extra: Vec<String>,
}

/// PEM files of a TLS-only etcd that requires client certificates.
pub struct TlsFiles {
    pub ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one answers health checks.
    pub fn start(size: usize) -> Self {
        Self::start_with(size, false, &[])
    }

    /// Like [`EtcdCluster::start`], clients served over TLS only, with client certificates
    /// required (`--client-cert-auth`), from a CA of the test's own.
    pub fn start_tls(size: usize) -> Self {
        Self::start_with(size, true, &[])
    }

    /// Like [`EtcdCluster::start`], with more flags for every member (`--quota-backend-bytes …`).
    pub fn start_with_flags(size: usize, flags: &[&str]) -> Self {
        Self::start_with(size, false, flags)
    }

    fn start_with(size: usize, tls: bool, flags: &[&str]) -> Self {
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let tmp = tempfile::tempdir().unwrap();
        let tls = tls.then(|| {
            let pki = TestPki::new("etcd-test-ca");
            let server = pki.issue(&["127.0.0.1", "localhost"]);
            let client = pki.issue(&["corral"]);
            let write = |name: &str, pem: &str| {
                let path = tmp.path().join(name);
                std::fs::write(&path, pem).unwrap();
                path
            };
            TlsFiles {
                ca: write("ca.pem", &pki.ca_pem),
                server_cert: write("server.pem", &server.cert),
                server_key: write("server.key", &server.key),
                client_cert: write("client.pem", &client.cert),
                client_key: write("client.key", &client.key),
            }
        });
        let mut cluster = Self {
            members,
            token: format!("corral-test-{}", std::process::id()),
            tmp,
            tls,
            extra: flags.iter().map(|f| f.to_string()).collect(),
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_healthy(&(0..size).collect::<Vec<_>>());
        cluster
    }

    /// The TLS files, for a cluster from [`EtcdCluster::start_tls`].
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// etcdctl's TLS flags, when the cluster has TLS.
    fn etcdctl_tls(&self) -> Vec<String> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        [
            ("--cacert", &tls.ca),
            ("--cert", &tls.client_cert),
            ("--key", &tls.client_key),
        ]
        .iter()
        .map(|(flag, path)| format!("{flag}={}", path.display()))
        .collect()
    }

    /// `etcd://127.0.0.1:P1,127.0.0.1:P2,…`, corral's `--store`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// The client endpoints, `127.0.0.1:PORT` each.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.tmp.path().join(&self.members[i].name)
    }

    fn spawn(&mut self, i: usize) {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let data_dir = self.data_dir(i);
        let member = &self.members[i];
        let client = format!("{}://127.0.0.1:{}", self.scheme(), member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let log = std::fs::File::create(self.tmp.path().join(format!("{}.log", member.name)))
            .expect("etcd log file");
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key);
        }
        let child = command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            // Fast elections keep the fault tests short; loopback has no latency to absorb.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd from Debian's etcd-server (apt-get install etcd-server)");
        self.members[i].child = Some(child);
    }

    /// Kills member `i` (SIGKILL): its data stays, for [`EtcdCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts member `i` again on its data (and ports), and waits for it to be healthy.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_healthy(&[i]);
    }

    /// Starts every stopped member and waits until all are healthy.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        self.wait_healthy(&(0..self.members.len()).collect::<Vec<_>>());
    }

    fn wait_healthy(&self, members: &[usize]) {
        let endpoints: Vec<String> = members
            .iter()
            .map(|&i| {
                format!(
                    "{}://127.0.0.1:{}",
                    self.scheme(),
                    self.members[i].client_port
                )
            })
            .collect();
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            let healthy = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &endpoints.join(","), "--dial-timeout", "1s"])
                .args(self.etcdctl_tls())
                .args(["endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd members {members:?} not healthy within {HEALTHY_WITHIN:?}; logs in {}",
                self.tmp.path().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `etcdctl get --prefix PREFIX --keys-only`: the keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let output = self.etcdctl(&["get", "--prefix", prefix, "--keys-only"]);
        output
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The database size the first live member reports (`etcdctl endpoint status`), in bytes.
    pub fn db_size(&self) -> u64 {
        let status = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        status[0]["Status"]["dbSize"].as_u64().unwrap()
    }

    /// `etcdctl get KEY --print-value-only`.
    pub fn value(&self, key: &str) -> String {
        self.etcdctl(&["get", key, "--print-value-only"])
    }

    /// Runs etcdctl (API v3) against the live members; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
            .collect();
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints.join(",")])
            .args(self.etcdctl_tls())
            .args(args)
            .output()
            .expect("etcdctl (apt-get install etcd-client)");
        assert!(
            output.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
