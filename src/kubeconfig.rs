//! A downstream cluster's kubeconfig, laid out as Rancher's template writes it; and
//! `corral kubeconfig`, which asks a server for one.

use base64::Engine;

use crate::client::{ApiCallError, ApiTarget};

#[derive(clap::Args)]
pub struct KubeconfigArgs {
    #[command(flatten)]
    pub api: ApiTarget,
    /// The cluster id (`c-xxxxx`).
    #[arg(long, value_name = "ID")]
    pub cluster: String,
}

/// Asks the server for the kubeconfig of `args.cluster` (Rancher's `generateKubeconfig` action).
pub async fn fetch(args: &KubeconfigArgs) -> Result<String, ApiCallError> {
    let path = format!("/v3/clusters/{}?action=generateKubeconfig", args.cluster);
    let answer = args.api.call("POST", &path, None).await?;
    match answer["config"].as_str() {
        Some(config) => Ok(config.to_string()),
        None => Err(ApiCallError::Refused {
            status: hyper::StatusCode::OK,
            message: "no kubeconfig in the answer".into(),
        }),
    }
}

/// Everything a kubeconfig names.
pub struct KubeconfigInput<'a> {
    pub cluster_id: &'a str,
    /// Display name (context, cluster and user entries); the id when empty.
    pub cluster_name: &'a str,
    /// `host[:port]` of the server: server-url's, else the request's.
    pub host: &'a str,
    /// The `cacerts` PEM; empty omits `certificate-authority-data`.
    pub cacerts: &'a str,
    pub token: &'a str,
}

/// Renders the YAML. Strings are written as JSON strings, which are valid YAML double-quoted scalars.
pub fn render(input: &KubeconfigInput<'_>) -> String {
    let name = if input.cluster_name.is_empty() {
        input.cluster_id
    } else {
        input.cluster_name
    };
    let quoted = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let name = quoted(name);
    let server = quoted(&format!(
        "https://{}/k8s/clusters/{}",
        input.host, input.cluster_id
    ));
    let mut out = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n"
    );
    if !input.cacerts.trim().is_empty() {
        let data = base64::engine::general_purpose::STANDARD.encode(input.cacerts.trim());
        out.push_str(&format!(
            "    certificate-authority-data: \"{}\"\n",
            wrap_base64(&data)
        ));
    }
    out.push_str(&format!(
        "\nusers:\n- name: {name}\n  user:\n    token: {}\n\ncontexts:\n- name: {name}\n  context:\n    user: {name}\n    cluster: {name}\n\ncurrent-context: {name}\n",
        quoted(input.token)
    ));
    out
}

/// Rancher's wrapping of long base64 in a double-quoted scalar: the first 49 characters, then chunks
/// of up to 76, each after a backslash, a newline and six spaces (YAML folds it back into one line).
fn wrap_base64(data: &str) -> String {
    let (first, rest) = data.split_at(data.len().min(49));
    let mut out = first.to_string();
    for chunk in rest.as_bytes().chunks(76) {
        out.push_str("\\\n      ");
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_like_rancher() {
        let data = "A".repeat(49 + 76 + 10);
        let wrapped = wrap_base64(&data);
        let lines: Vec<_> = wrapped.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), 50, "49 characters and the backslash");
        assert_eq!(lines[1], format!("      {}\\", "A".repeat(76)));
        assert_eq!(lines[2], format!("      {}", "A".repeat(10)));
    }

    #[test]
    fn omits_the_ca_when_there_is_none() {
        let input = KubeconfigInput {
            cluster_id: "c-abcde",
            cluster_name: "lab \"one\"",
            host: "rancher.lab.test:8443",
            cacerts: "",
            token: "token-x:y",
        };
        let yaml = render(&input);
        assert!(yaml.contains("server: \"https://rancher.lab.test:8443/k8s/clusters/c-abcde\""));
        assert!(yaml.contains("- name: \"lab \\\"one\\\"\""));
        assert!(!yaml.contains("certificate-authority-data"));
        assert!(yaml.contains("current-context: \"lab \\\"one\\\"\""));
    }
}
