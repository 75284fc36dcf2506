//! A real etcd cluster (Debian's `etcd-server`) on loopback for the HA tests: three members by
//! default, so that one can be killed while the others keep a quorum. Every member is killed when
//! the cluster is dropped; its data lives in a temporary directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

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
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one answers health checks.
    pub fn start(size: usize) -> Self {
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = Self {
            members,
            token: format!("corral-test-{}", std::process::id()),
            tmp: tempfile::tempdir().unwrap(),
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_healthy(&(0..size).collect::<Vec<_>>());
        cluster
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
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let log = std::fs::File::create(self.tmp.path().join(format!("{}.log", member.name)))
            .expect("etcd log file");
        let child = Command::new("etcd")
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
            .map(|&i| format!("http://127.0.0.1:{}", self.members[i].client_port))
            .collect();
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            let healthy = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &endpoints.join(","), "--dial-timeout", "1s"])
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
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect();
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints.join(",")])
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
