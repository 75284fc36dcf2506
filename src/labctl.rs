//! `corral lab`: the lab's faults from the command line, through the same API scripts use
//! (`/v3/corral/faults`), so that it works against any corral, local or a replica behind a balancer.

use serde_json::{Value, json};

use crate::client::{ApiCallError, ApiTarget};

#[derive(clap::Subcommand)]
pub enum LabCommand {
    /// A lab in one command: corral, N simulated clusters registered and connected, a kubeconfig
    /// each, the CA (trusted in an NSS database when asked); runs until Ctrl-C.
    Up(crate::lab_up::UpArgs),
    #[command(flatten)]
    Api(ApiCommand),
}

/// The commands that call a running corral's API.
#[derive(clap::Subcommand)]
pub enum ApiCommand {
    /// List the faults active now.
    Faults {
        #[command(flatten)]
        api: ApiTarget,
    },
    /// Serve a broken certificate to a name, a glob of names, or every client.
    Cert {
        /// expired, not-yet-valid, wrong-host, self-signed, untrusted-root, incomplete-chain,
        /// no-san, rsa-2048, rsa-4096, many-sans or short-lived.
        scenario: String,
        /// The name (or IP, or a glob such as *.lab.test) it is served to [default: every client].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// How long it lasts (90s, 10m, 1h30m) [default: until removed or the server stops].
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// short-lived: how long its leaf lasts from its first handshake [default: 60s].
        #[arg(long, value_name = "DURATION")]
        lifetime: Option<String>,
        #[command(flatten)]
        api: ApiTarget,
    },
    /// Put a toxic on clusters' tunnels, as toxiproxy's (latency, bandwidth, slow-close, timeout,
    /// reset-peer, slicer, limit-data, down).
    Tunnel {
        toxic: String,
        /// The cluster whose tunnels get it [default: every cluster].
        #[arg(long, value_name = "ID")]
        cluster: Option<String>,
        /// downstream (toward the cluster), upstream (back from it) or both.
        #[arg(long, default_value = "both", value_name = "WAY")]
        direction: String,
        /// The share of tunnels that get it, 0 to 1.
        #[arg(long, default_value_t = 1.0, value_name = "P")]
        toxicity: f64,
        /// The toxic's attributes, as toxiproxy names them: latency=300ms, jitter=50ms, rate=100
        /// (KB/s), delay=2s (slow-close; microseconds for slicer), timeout=5s, bytes=10000,
        /// average_size=64, size_variation=16.
        #[arg(short = 'a', long = "attribute", value_name = "KEY=VALUE")]
        attributes: Vec<String>,
        /// How long it lasts [default: until removed or the server stops].
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        #[command(flatten)]
        api: ApiTarget,
    },
    /// End faults by id.
    Remove {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        #[command(flatten)]
        api: ApiTarget,
    },
    /// End every fault.
    Clear {
        #[command(flatten)]
        api: ApiTarget,
    },
    /// Rotate the CA now: a new CA signs every certificate; prints the new CA checksum.
    RotateCa {
        /// How long the old CA stays in /cacerts beside the new one (0s: it leaves at once).
        #[arg(long, default_value = "0s", value_name = "DURATION")]
        keep_old: String,
        #[command(flatten)]
        api: ApiTarget,
    },
}

const FAULTS: &str = "/v3/corral/faults";

/// What a `corral lab` command left: text to print, or a lab running until it is stopped.
pub enum Ran {
    Printed(String),
    Lab(crate::lab_up::Lab),
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Api(#[from] ApiCallError),
    #[error(transparent)]
    Up(#[from] crate::lab_up::UpError),
}

/// Runs a `corral lab` command.
pub async fn run(command: LabCommand) -> Result<Ran, LabError> {
    match command {
        LabCommand::Up(args) => Ok(Ran::Lab(crate::lab_up::start(&args).await?)),
        LabCommand::Api(command) => Ok(Ran::Printed(call(command).await?)),
    }
}

/// Runs a command that calls the API; what it prints.
async fn call(command: ApiCommand) -> Result<String, ApiCallError> {
    match command {
        ApiCommand::Faults { api } => {
            let list = api.call("GET", FAULTS, None).await?;
            Ok(table(
                list["data"].as_array().map_or(&[][..], Vec::as_slice),
            ))
        }
        ApiCommand::Cert {
            scenario,
            name,
            ttl,
            lifetime,
            api,
        } => {
            let body = json!({"kind": "certificate", "scenario": scenario, "name": name,
                "ttl": ttl, "lifetime": lifetime});
            let made = api.call("POST", FAULTS, Some(body)).await?;
            Ok(format!("{}\n", made["id"].as_str().unwrap_or_default()))
        }
        ApiCommand::Tunnel {
            toxic,
            cluster,
            direction,
            toxicity,
            attributes,
            ttl,
            api,
        } => {
            let mut body = json!({"kind": "tunnel", "toxic": toxic, "cluster": cluster,
                "direction": direction, "toxicity": toxicity, "ttl": ttl});
            for attribute in &attributes {
                let Some((key, value)) = attribute.split_once('=') else {
                    return Err(ApiCallError::Refused {
                        status: hyper::StatusCode::BAD_REQUEST,
                        message: format!("--attribute {attribute:?}: expected KEY=VALUE"),
                    });
                };
                body[key.trim()] = value.trim().into();
            }
            let made = api.call("POST", FAULTS, Some(body)).await?;
            Ok(format!("{}\n", made["id"].as_str().unwrap_or_default()))
        }
        ApiCommand::Remove { ids, api } => {
            let mut out = String::new();
            for id in ids {
                api.call("DELETE", &format!("{FAULTS}/{id}"), None).await?;
                out.push_str(&format!("removed {id}\n"));
            }
            Ok(out)
        }
        ApiCommand::RotateCa { keep_old, api } => {
            let body = json!({ "keepOld": keep_old });
            let rotated = api
                .call("POST", "/v3/corral/ca?action=rotate", Some(body))
                .await?;
            Ok(format!(
                "{}\n",
                rotated["bundleChecksum"].as_str().unwrap_or_default()
            ))
        }
        ApiCommand::Clear { api } => {
            let list = api.call("GET", FAULTS, None).await?;
            let mut out = String::new();
            for fault in list["data"].as_array().into_iter().flatten() {
                let id = fault["id"].as_str().unwrap_or_default();
                api.call("DELETE", &format!("{FAULTS}/{id}"), None).await?;
                out.push_str(&format!("removed {id}\n"));
            }
            Ok(out)
        }
    }
}

/// The faults as a table, one per line.
fn table(faults: &[Value]) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut rows = vec![["ID", "KIND", "WHAT", "TARGET", "EXPIRES"].map(str::to_string)];
    for fault in faults {
        let (what, target) = match fault["kind"].as_str() {
            Some("tunnel") => (
                format!("{} {}", text(&fault["toxic"]), text(&fault["direction"])),
                fault["cluster"]
                    .as_str()
                    .map_or("every cluster".into(), |c| format!("cluster {c}")),
            ),
            _ => (
                text(&fault["scenario"]),
                fault["name"].as_str().unwrap_or("every name").to_string(),
            ),
        };
        rows.push([
            text(&fault["id"]),
            text(&fault["kind"]),
            what,
            target,
            fault["expires"].as_str().unwrap_or("never").to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
