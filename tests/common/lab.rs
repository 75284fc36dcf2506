//! A lab for tunnel tests: corral with a logged-in admin, a cluster and its registration token, and
//! `corral agent` processes for it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::target::SA_TOKEN;
use super::{Corral, HttpResponse, corral_bin, request, sha256_hex, temp_file};

pub const BOOTSTRAP: &str = "tunnel-test-bootstrap";

/// corral with a logged-in admin, one cluster and a registration token.
pub struct Lab {
    pub corral: Corral,
    /// Where clients reach the API over HTTPS (corral itself, or a proxy in front of it).
    pub addr: SocketAddr,
    pub token: String,
    pub cluster: String,
    pub registration: String,
    pub checksum: String,
    pub ca_file: tempfile::NamedTempFile,
    _dir: Option<tempfile::TempDir>,
}

impl Lab {
    pub async fn start() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let corral = Lab::corral(&dir.path().join("d"), &[]);
        let addr = corral.https("127.0.0.1");
        let mut lab = Lab::setup(corral, addr).await;
        lab._dir = Some(dir);
        lab
    }

    /// A lab on a corral started with `extra` flags.
    pub async fn start_with(extra: &[&str]) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let corral = Lab::corral(&dir.path().join("d"), extra);
        let addr = corral.https("127.0.0.1");
        let mut lab = Lab::setup(corral, addr).await;
        lab._dir = Some(dir);
        lab
    }

    /// corral started for a lab: the known bootstrap password, a short agent wait, `extra` flags.
    pub fn corral(data_dir: &std::path::Path, extra: &[&str]) -> Corral {
        let env = [("CATTLE_BOOTSTRAP_PASSWORD", BOOTSTRAP)];
        let args = [&["--agent-wait", "2"][..], extra].concat();
        Corral::start_in(data_dir, &args, &env).unwrap()
    }

    /// Logs in through `addr` and creates a cluster and its registration token.
    pub async fn setup(corral: Corral, addr: SocketAddr) -> Lab {
        let response = super::login(addr, "admin", BOOTSTRAP).await;
        let token = body(&response)["token"].as_str().unwrap().to_string();
        let auth = format!("Authorization: Bearer {token}");
        let (cluster, registration) = create_cluster(addr, &auth, "lab").await;
        let ca = request(addr, "GET", "/cacerts", &[], None).await.body;
        let checksum = sha256_hex(ca.as_bytes());
        Lab {
            addr,
            token,
            cluster,
            registration,
            checksum,
            ca_file: temp_file(&ca),
            corral,
            _dir: None,
        }
    }

    /// A new cluster called `name` with a registration token: its id and the token.
    pub async fn add_cluster(&self, name: &str) -> (String, String) {
        create_cluster(self.addr, &self.auth(), name).await
    }

    /// Sets server-url to `url` as the admin: corral pins its certificate to that host.
    pub async fn pin_server_url(&self, url: &str) {
        let body = json!({ "value": url }).to_string();
        let put = request(
            self.addr,
            "PUT",
            "/v3/settings/server-url",
            &[&self.auth()],
            Some(&body),
        )
        .await;
        assert_eq!(put.status, 200, "{}", put.body);
    }

    pub fn auth(&self) -> String {
        format!("Authorization: Bearer {}", self.token)
    }

    /// The URL agents are given.
    pub fn server(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Starts `corral agent` for this cluster, advertising `target` (with `ca` for TLS to it).
    pub fn agent(&self, target: SocketAddr, ca: Option<&std::path::Path>, extra: &[&str]) -> Agent {
        let mut command = self.agent_command(target);
        command.args(["--sa-token", SA_TOKEN]).args(extra);
        if let Some(ca) = ca {
            command.arg("--ca-cert").arg(ca);
        }
        Agent(command.spawn().unwrap())
    }

    /// Starts `corral agent --simulate --count N` with `tokens` (round-robin).
    pub fn simulated_agents(&self, tokens: &[&str], count: usize) -> Agent {
        self.simulated_agents_at(&self.server(), tokens, count)
    }

    /// [`Lab::simulated_agents`] connecting to `server` (another replica) instead.
    pub fn simulated_agents_at(&self, server: &str, tokens: &[&str], count: usize) -> Agent {
        self.simulated_agents_checking(server, tokens, count, &self.checksum)
    }

    /// [`Lab::simulated_agents_at`], given `checksum` as `--ca-checksum` (after a CA rotation).
    pub fn simulated_agents_checking(
        &self,
        server: &str,
        tokens: &[&str],
        count: usize,
        checksum: &str,
    ) -> Agent {
        let mut command = Command::new(corral_bin());
        command
            .args(["agent", "--simulate", "--server", server])
            .args(["--token", &tokens.join(",")])
            .args(["--ca-checksum", checksum])
            .args(["--count", &count.to_string()])
            .env("CORRAL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Agent(command.spawn().unwrap())
    }

    /// Starts `corral agent --node NAME --count N` (node agents of this lab's cluster).
    pub fn node_agents(&self, name: &str, count: usize) -> Agent {
        let mut command = Command::new(corral_bin());
        command
            .args(["agent", "--server", &self.server()])
            .args(["--token", &self.registration])
            .args(["--ca-checksum", &self.checksum])
            .args(["--node", name, "--count", &count.to_string()])
            .env("CORRAL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Agent(command.spawn().unwrap())
    }

    /// A kubeconfig for `cluster` from `generateKubeconfig`, in a temporary file.
    pub async fn kubeconfig(&self, cluster: &str) -> tempfile::NamedTempFile {
        let path = format!("/v3/clusters/{cluster}?action=generateKubeconfig");
        let generated = request(self.addr, "POST", &path, &[&self.auth()], None).await;
        assert_eq!(generated.status, 200, "{}", generated.body);
        temp_file(body(&generated)["config"].as_str().unwrap())
    }

    /// Starts `corral agent` advertising `target`, with neither `--ca-cert` nor `--sa-token`.
    pub fn agent_without_sa_token(&self, target: SocketAddr) -> Agent {
        Agent(self.agent_command(target).spawn().unwrap())
    }

    fn agent_command(&self, target: SocketAddr) -> Command {
        let mut command = Command::new(corral_bin());
        command
            .args(["agent", "--server", &self.server()])
            .args(["--token", &self.registration])
            .args(["--ca-checksum", &self.checksum])
            .args(["--address", &target.to_string()])
            .env("CORRAL_LOG", "info,corral=debug")
            .env_remove("CORRAL_AGENT_SA_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    pub async fn wait_connected(&self, connected: bool) {
        self.wait_connected_within(connected, Duration::from_secs(20))
            .await
    }

    pub async fn wait_connected_within(&self, connected: bool, limit: Duration) {
        let deadline = Instant::now() + limit;
        let path = format!("/v3/clusters/{}", self.cluster);
        while Instant::now() < deadline {
            let state = body(&request(self.addr, "GET", &path, &[&self.auth()], None).await);
            if state["connected"] == connected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cluster never became connected={connected}");
    }

    /// Waits up to `limit` for this corral to log that the cluster's tunnel ended, then that its
    /// agent, coming back, was refused (the cluster was deleted).
    pub async fn wait_tunnel_ended_and_refused(&self, limit: Duration) {
        let ended = format!("tunnel for {} ", self.cluster);
        let deadline = Instant::now() + limit;
        let logged = |matches: &dyn Fn(&str) -> bool| self.corral.logs().iter().any(|l| matches(l));
        while !logged(&|l| l.contains(&ended) && (l.contains(" closed") || l.contains(" ended"))) {
            assert!(Instant::now() < deadline, "the tunnel outlived its cluster");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while !logged(&|l| l.contains("tunnel refused")) {
            assert!(Instant::now() < deadline, "the agent never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn proxied(&self, path: &str) -> HttpResponse {
        let full = format!("/k8s/clusters/{}{path}", self.cluster);
        request(self.addr, "GET", &full, &[&self.auth()], None).await
    }
}

/// A `corral agent` process, killed when dropped.
pub struct Agent(Child);

impl Agent {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Stops the agent and returns what it logged.
    pub fn stop_and_logs(mut self) -> String {
        self.kill();
        let mut logs = String::new();
        if let Some(mut stderr) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut logs);
        }
        logs
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates cluster `name` and a registration token for it on `addr` (as `auth`, a header line):
/// the cluster's id and the token.
pub async fn create_cluster(addr: SocketAddr, auth: &str, name: &str) -> (String, String) {
    let cluster = json!({ "name": name }).to_string();
    let created = request(addr, "POST", "/v3/clusters", &[auth], Some(&cluster)).await;
    assert_eq!(created.status, 201, "cluster {name}: {}", created.body);
    let id = body(&created)["id"].as_str().unwrap().to_string();
    let token = json!({ "clusterId": id }).to_string();
    let path = "/v3/clusterregistrationtokens";
    let made = request(addr, "POST", path, &[auth], Some(&token)).await;
    assert_eq!(made.status, 201, "token of {name}: {}", made.body);
    let token = body(&made)["token"].as_str().unwrap().to_string();
    (id, token)
}

pub fn body(response: &HttpResponse) -> Value {
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{e}: {}", response.body))
}
