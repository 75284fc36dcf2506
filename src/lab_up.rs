//! `corral lab up`: a lab in one command — corral, N simulated clusters registered and connected,
//! a kubeconfig per cluster, the CA in a file (and trusted in an NSS database when asked), and an
//! env file for `corral lab …` — what takes two API calls per cluster by hand.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agent::{AgentArgs, AgentError};
use crate::app::{RunningServer, StartError};
use crate::client::{ApiCallError, ApiTarget};
use crate::config::{Config, ConfigError, Secret, ServeArgs};
use crate::store::{PUBLIC_MODE, SECRET_MODE, write_atomic};

/// How long the clusters get to connect.
const CONNECT_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Simulated clusters to register and connect (lab-1, lab-2, …).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub clusters: usize,
    /// Where the lab keeps corral's data, the CA, the kubeconfigs and the env file.
    #[arg(long, default_value = "corral-lab", value_name = "DIR")]
    pub dir: PathBuf,
    /// HTTPS port; 0 picks a free one.
    #[arg(long, default_value_t = 8443, value_name = "PORT")]
    pub https_port: u16,
    /// HTTP port; 0 picks a free one.
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    pub http_port: u16,
    /// Trust the lab's CA in this NSS database (Chromium's and Firefox's: ~/.pki/nssdb), as mkcert
    /// and `caddy trust` do; needs certutil.
    #[arg(long, value_name = "DIR")]
    pub trust_nss: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("cannot use {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Api(#[from] ApiCallError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("the clusters did not connect within {0:?}")]
    NotConnected(Duration),
    #[error("certutil: {0}")]
    Trust(String),
}

/// A running lab: stop it with [`Lab::stop`].
pub struct Lab {
    /// What runs where, for the terminal.
    pub summary: String,
    server: RunningServer,
    agents: tokio::task::JoinHandle<()>,
}

impl Lab {
    pub async fn stop(self, grace: Duration) {
        self.agents.abort();
        self.server.shutdown(grace).await;
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> UpError + '_ {
    move |source| UpError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Starts the lab and returns once every cluster is connected.
pub async fn start(args: &UpArgs) -> Result<Lab, UpError> {
    std::fs::create_dir_all(&args.dir).map_err(io_error(&args.dir))?;
    let password = admin_password(&args.dir)?;
    let mut config = Config::resolve(ServeArgs {
        data_dir: Some(args.dir.join("data")),
        https_port: Some(args.https_port),
        http_port: Some(args.http_port),
        ..ServeArgs::default()
    })?;
    config.bootstrap_password = Some(Secret(password.clone()));
    let server = crate::app::start(&config).await?;
    let port = server.https.first().map_or(args.https_port, |a| a.port());
    let url = format!("https://localhost:{port}");

    // The CA as agents fetch it, then every call verified against it.
    let ca_path = args.dir.join("ca.pem");
    let mut api = ApiTarget {
        server: url.clone(),
        token: String::new(),
        cacert: None,
        insecure: true,
    };
    let cacerts = api.text("/cacerts").await?;
    write_atomic(&ca_path, cacerts.as_bytes(), PUBLIC_MODE).map_err(io_error(&ca_path))?;
    api.cacert = Some(ca_path.clone());
    api.insecure = false;
    let login = api
        .call(
            "POST",
            "/v3-public/localProviders/local?action=login",
            Some(
                json!({"username": "admin", "password": password, "description": "corral lab up"}),
            ),
        )
        .await?;
    api.token = login["token"].as_str().unwrap_or_default().to_string();

    let clusters = register(&api, args.clusters).await?;
    let agent_args = AgentArgs {
        server: url.clone(),
        token: clusters.iter().map(|c| c.token.clone()).collect(),
        ca_checksum: Some(server.checksum.clone()),
        address: None,
        simulate: true,
        ca_cert: None,
        sa_token: None,
        allow: vec!["tcp:*".into()],
        count: clusters.len(),
        node: None,
    };
    let prepared = crate::agent::prepare(&agent_args).await?;
    let agents = tokio::spawn(crate::agent::run(agent_args, prepared));
    wait_connected(&api, &clusters).await?;

    let mut lines = vec![
        "corral lab is up".to_string(),
        format!("  server    {url}   (admin / {password})"),
        format!(
            "  CA        {}   checksum {}",
            ca_path.display(),
            server.checksum
        ),
    ];
    for cluster in &clusters {
        let path = format!("/v3/clusters/{}?action=generateKubeconfig", cluster.id);
        let answer = api.call("POST", &path, None).await?;
        let file = args.dir.join(format!("{}.kubeconfig", cluster.name));
        let config = answer["config"].as_str().unwrap_or_default();
        write_atomic(&file, config.as_bytes(), SECRET_MODE).map_err(io_error(&file))?;
        lines.push(format!(
            "  cluster   {} ({})   kubectl --kubeconfig {} get nodes",
            cluster.name,
            cluster.id,
            file.display()
        ));
    }
    let env = args.dir.join("env");
    let exports = format!(
        "export CATTLE_SERVER={url}\nexport CORRAL_TOKEN={}\n",
        api.token
    );
    write_atomic(&env, exports.as_bytes(), SECRET_MODE).map_err(io_error(&env))?;
    lines.push(format!(
        "  faults    . {} && corral lab cert|tunnel|rotate-ca … --cacert {}",
        env.display(),
        ca_path.display()
    ));
    if let Some(db) = &args.trust_nss {
        trust_in_nss(db, &ca_path, &server.checksum)?;
        lines.push(format!("  trusted   in the NSS database {}", db.display()));
    }
    lines.push("Ctrl-C stops it; the directory keeps it for the next `corral lab up`.".into());
    Ok(Lab {
        summary: lines.join("\n") + "\n",
        server,
        agents,
    })
}

/// The admin's password: the environment's `CATTLE_BOOTSTRAP_PASSWORD`, else the one this lab
/// chose before (kept 0600 in the directory), else a new one.
fn admin_password(dir: &Path) -> Result<String, UpError> {
    if let Ok(given) = std::env::var("CATTLE_BOOTSTRAP_PASSWORD")
        && !given.is_empty()
    {
        return Ok(given);
    }
    let path = dir.join("admin-password");
    let kept = crate::store::read_optional(&path).map_err(io_error(&path))?;
    let kept = String::from_utf8_lossy(kept.as_deref().unwrap_or_default());
    if !kept.trim().is_empty() {
        return Ok(kept.trim().to_string());
    }
    let password = crate::secrets::random_token(20);
    write_atomic(&path, password.as_bytes(), SECRET_MODE).map_err(io_error(&path))?;
    Ok(password)
}

struct LabCluster {
    id: String,
    name: String,
    token: String,
}

/// Clusters `lab-1` … `lab-N` (those a previous run made are kept), each with a new registration
/// token.
async fn register(api: &ApiTarget, count: usize) -> Result<Vec<LabCluster>, UpError> {
    let existing = api.call("GET", "/v3/clusters", None).await?;
    let mut clusters = Vec::new();
    for i in 1..=count {
        let name = format!("lab-{i}");
        let known = existing["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name.as_str())
            .and_then(|c| c["id"].as_str().map(str::to_string));
        let id = match known {
            Some(id) => id,
            None => {
                let made = api
                    .call("POST", "/v3/clusters", Some(json!({ "name": name })))
                    .await?;
                made["id"].as_str().unwrap_or_default().to_string()
            }
        };
        let token = api
            .call(
                "POST",
                "/v3/clusterregistrationtokens",
                Some(json!({ "clusterId": id })),
            )
            .await?;
        clusters.push(LabCluster {
            token: token["token"].as_str().unwrap_or_default().to_string(),
            id,
            name,
        });
    }
    Ok(clusters)
}

async fn wait_connected(api: &ApiTarget, clusters: &[LabCluster]) -> Result<(), UpError> {
    let started = Instant::now();
    for cluster in clusters {
        let path = format!("/v3/clusters/{}", cluster.id);
        while api.call("GET", &path, None).await?["connected"] != Value::Bool(true) {
            if started.elapsed() > CONNECT_WITHIN {
                return Err(UpError::NotConnected(CONNECT_WITHIN));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Adds the CA to the NSS database `db` (made if absent), as `corral lab CA <checksum prefix>`.
fn trust_in_nss(db: &Path, ca: &Path, checksum: &str) -> Result<(), UpError> {
    std::fs::create_dir_all(db).map_err(io_error(db))?;
    let database = format!("sql:{}", db.display());
    let certutil = |args: &[&str]| -> Result<(), UpError> {
        let output = std::process::Command::new("certutil")
            .args(args)
            .output()
            .map_err(|e| {
                UpError::Trust(format!(
                    "cannot run it ({e}): apt-get install libnss3-tools"
                ))
            })?;
        match output.status.success() {
            true => Ok(()),
            false => Err(UpError::Trust(
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
            )),
        }
    };
    if !db.join("cert9.db").exists() {
        certutil(&["-N", "--empty-password", "-d", &database])?;
    }
    let nickname = format!("corral lab CA {}", &checksum[..checksum.len().min(12)]);
    let ca = ca.display().to_string();
    certutil(&[
        "-A", "-d", &database, "-t", "C,,", "-n", &nickname, "-i", &ca,
    ])
}
