//! The command line: configuration precedence and errors, startup failures, `corral ca checksum`.

mod common;

use common::{Corral, run_corral};

#[test]
fn bad_values_name_the_setting_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (&["--https-port", "abc"], &[], "--https-port"),
        (&["--cert-mode", "sometimes"], &[], "--cert-mode"),
        (&["--rotate-days", "400"], &[], "rotate-days"),
        (
            &[],
            &[("CATTLE_NEW_SIGNED_CERT_EXPIRATION_DAYS", "soon")],
            "--cert-expiration-days",
        ),
        (&["--allowed-names", "re:("], &[], "allowed-names"),
    ];
    // A bad value from the environment is told by the variable's name.
    let (code, _, stderr) = run_corral(
        &["serve", "--data-dir", data],
        &[("CORRAL_MINT_RATE", "many")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "invalid CORRAL_MINT_RATE=\"many\" (the environment variable of --mint-rate)"
        ),
        "{stderr}"
    );
    // A bad value in the TOML file is told by its line and key.
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "# corral\nbind = [\"::\"]\nhttps_port = \"x\"\n").unwrap();
    let (code, _, stderr) = run_corral(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.toml, line 3, https_port: invalid type"),
        "{stderr}"
    );
    for (args, env, setting) in cases {
        let mut all = vec![
            "serve",
            "--data-dir",
            data,
            "--https-port",
            "0",
            "--http-port",
            "0",
        ];
        all.extend_from_slice(args);
        let (code, _, stderr) = run_corral(&all, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(setting), "{setting} not named in: {stderr}");
        assert!(!stderr.contains("Listening"), "nothing listens: {stderr}");
    }
}

#[tokio::test]
async fn toml_file_is_read_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("corral.toml");
    std::fs::write(
        &config,
        "cert_mode = \"shared\"\nca_profile = \"dynamiclistener\"\nhttp_port = 1\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let corral = Corral::start(&["--config", config]);
    let logs = corral.logs().join("\n");
    assert!(logs.contains("Created CA CN=dynamiclistener-ca@"), "{logs}");
    assert_ne!(
        corral.http_port, 1,
        "CORRAL_HTTP_PORT (the environment) wins over the file"
    );
    let handshake = common::tls_connect(corral.https("127.0.0.1"), Some("a.lab.test"), None)
        .await
        .unwrap();
    assert!(
        common::sans(handshake.leaf()).contains(&"DNS:rancher.cattle-system".to_string()),
        "shared mode from the file"
    );

    std::fs::write(dir.path().join("bad.toml"), "https_prot = 1\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let (code, _, stderr) = run_corral(&["serve", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("https_prot"), "{stderr}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/corral.toml");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let corral =
        Corral::start_in(&data, &["--config", example], &[]).expect("example config starts");
    drop(corral);
}

#[test]
fn a_corrupt_ca_stops_startup_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    drop(Corral::start_in(&data, &[], &[]).unwrap());
    std::fs::write(
        data.join("ca.crt"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = Corral::start_in(&data, &[], &[])
        .err()
        .expect("startup fails");
    assert!(err.starts_with("exit: Some(1)"), "{err}");
    assert!(
        err.contains("is unusable") && err.contains("will not create a new CA"),
        "{err}"
    );
    let (code, _, stderr) = run_corral(
        &["ca", "checksum", "--data-dir", data.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("unusable"), "{stderr}");
}

#[test]
fn checksum_without_a_ca_explains_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run_corral(
        &["ca", "checksum", "--data-dir", dir.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no CA in"), "{stderr}");
}

/// The README, as shipped.
fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The `sh` blocks of the README between `<!-- NAME -->` and `<!-- /NAME -->`, as one script.
fn readme_script(name: &str) -> String {
    let text = readme();
    let start = text
        .find(&format!("<!-- {name} -->"))
        .unwrap_or_else(|| panic!("the README's {name} start marker"));
    let end = text
        .find(&format!("<!-- /{name} -->"))
        .unwrap_or_else(|| panic!("its end marker"));
    let mut script = String::new();
    let mut in_block = false;
    for line in text[start..end].lines() {
        match line.trim() {
            "```sh" => in_block = true,
            "```" => in_block = false,
            _ if in_block => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    script
}

/// Runs `script` in bash (stopping at the first failure, its background jobs killed at the end) in
/// a fresh directory that is also `$HOME`, with the built `corral` first on the PATH, `env` set and
/// the variables a developer may have exported unset, within `seconds`. Whether it succeeded, its
/// stdout, and an explanation for a failure: stdout, stderr and the tails of `logs` (files the
/// script writes).
fn run_in_bash(
    script: &str,
    seconds: u32,
    env: &[(&str, String)],
    logs: &[&str],
) -> (bool, String, String) {
    let bin_dir = std::path::Path::new(common::corral_bin()).parent().unwrap();
    let work = tempfile::tempdir().unwrap();
    let preamble = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n";
    let output = std::process::Command::new("timeout")
        .arg(seconds.to_string())
        .args(["bash", "-c", &format!("{preamble}{script}")])
        .current_dir(work.path())
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("HOME", work.path())
        .env_remove("KUBECONFIG")
        .env_remove("CATTLE_TOKEN")
        .env_remove("CORRAL_CONFIG")
        .env_remove("CORRAL_DATA_DIR")
        .env_remove("CORRAL_HTTPS_PORT")
        .env_remove("CORRAL_HTTP_PORT")
        .envs(env.iter().map(|(name, value)| (name, value)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let logs: Vec<String> = logs
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(work.path().join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("== {f}\n{}", tail.join("\n"))
        })
        .collect();
    let why = format!(
        "stdout:\n{stdout}\nstderr:\n{}\nlogs:\n{}",
        String::from_utf8_lossy(&output.stderr),
        logs.join("\n")
    );
    (output.status.success(), stdout, why)
}

/// The README's walkthrough — the `sh` blocks between `<!-- walkthrough -->` and
/// `<!-- /walkthrough -->` — run as written in one bash, in an empty directory, with the built
/// `corral` first on the PATH. Only the ports differ: free ones instead of 8443 and 8080.
#[test]
fn the_readme_walkthrough_runs_as_written() {
    let script = readme_script("walkthrough");
    assert!(
        script.contains("corral agent") && script.contains("kubectl"),
        "{script}"
    );
    let (https, http) = (common::free_port(), common::free_port());
    let script = script.replace("8443", &https.to_string());
    let env = [
        ("CORRAL_HTTPS_PORT", https.to_string()),
        ("CORRAL_HTTP_PORT", http.to_string()),
    ];
    let (succeeded, stdout, why) = run_in_bash(&script, 180, &env, &["corral.log", "agent.log"]);
    assert!(succeeded, "the walkthrough failed: {why}");
    for expected in [
        "pong",
        &format!("\"https://localhost:{https}\""),
        "Server Version: v1.31.4+corral-simulated",
        "kube-system",
        "namespace/lab created",
        "simulated-node-1",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing: {why}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("lab ") && l.contains("Active")),
        "{why}"
    );
    // Step 5: the member may not create a namespace, and the cluster said so.
    assert!(stdout.lines().any(|l| l == "no"), "can-i: {why}");
    assert!(!stdout.contains("namespace/alices created"), "{why}");
}

/// The README's lab walkthrough (`<!-- lab-walkthrough -->`): broken certificates met by openssl
/// and curl, then a CA rotation that an agent with the old checksum refuses in run.sh's words.
#[test]
fn the_readme_lab_walkthrough_runs_as_written() {
    let script = readme_script("lab-walkthrough");
    assert!(script.contains("corral lab rotate-ca"), "{script}");
    let (https, http) = (common::free_port(), common::free_port());
    let script = script.replace("8443", &https.to_string());
    let env = [
        ("CORRAL_HTTPS_PORT", https.to_string()),
        ("CORRAL_HTTP_PORT", http.to_string()),
    ];
    let (succeeded, stdout, why) = run_in_bash(&script, 120, &env, &["corral.log", "agent.log"]);
    assert!(succeeded, "the lab walkthrough failed: {why}");
    let lines: Vec<&str> = stdout.lines().collect();
    for expected in [
        "Verify return code: 10 (certificate has expired)",
        "Verify return code: 62 (hostname mismatch)",
        "Verify return code: 21 (unable to verify the first certificate)",
        "curl: exit 60",
        "the agent with the new checksum is connected",
    ] {
        assert!(lines.contains(&expected), "{expected:?} missing: {why}");
    }
    let listed = lines.iter().filter(|l| l.starts_with("fault-")).count();
    assert_eq!(listed, 3 + 3, "three made, three listed: {why}");
    let sums = lines
        .iter()
        .find_map(|l| l.strip_prefix("CA checksum: "))
        .expect("the checksums");
    let (old, new) = sums.split_once(" -> ").unwrap();
    assert_ne!(old, new);
    let refusal = format!(
        "corral: Configured cacerts checksum ({new}) does not match given --ca-checksum ({old})"
    );
    assert!(
        lines.contains(&refusal.as_str()),
        "{refusal:?} missing: {why}"
    );
}

/// Every flag each command has (from its --help) appears in the README's usage synopsis for it; a
/// command that reads the server's settings may say so (`[flags of corral serve]`) instead of
/// listing those.
#[test]
fn the_usage_synopses_list_every_flag() {
    let text = readme();
    let usage = &text[text.find("## Usage").unwrap()..];
    let usage = &usage[..usage[3..].find("\n## ").map_or(usage.len(), |i| i + 3)];
    let flags_of = |help: &str| -> Vec<String> {
        help.lines()
            .filter_map(|l| l.trim_start().strip_prefix("--"))
            .filter_map(|l| l.split([' ', '<', '=']).next())
            .filter(|f| !["help", "version"].contains(f))
            .map(str::to_string)
            .collect()
    };
    let serve_flags = flags_of(&run_corral(&["serve", "--help"], &[]).1);
    for command in [
        &["serve"][..],
        &["agent"],
        &["kubeconfig"],
        &["reset-password"],
        &["healthcheck"],
        &["ca", "checksum"],
        &["bench", "handshake"],
        &["bench", "tunnel"],
        &["lab", "up"],
        &["lab", "cert"],
        &["lab", "tunnel"],
        &["lab", "faults"],
        &["lab", "remove"],
        &["lab", "clear"],
        &["lab", "rotate-ca"],
    ] {
        let (_, help, _) = run_corral(&[command, &["--help"]].concat(), &[]);
        let flags = flags_of(&help);
        assert!(!flags.is_empty(), "{command:?}: {help}");
        // The synopsis: the line that starts with the command and its continuation lines.
        let head = format!("corral {}", command.join(" "));
        let mut synopsis = String::new();
        let mut lines = usage.lines().skip_while(|l| !l.starts_with(&head));
        for line in lines.by_ref() {
            synopsis.push_str(line);
            if !line.trim_end().ends_with('\\') {
                break;
            }
        }
        assert!(!synopsis.is_empty(), "no synopsis for {head}");
        let takes_serves = synopsis.contains("[flags of corral serve]") && command != ["serve"];
        for flag in flags {
            if takes_serves && serve_flags.contains(&flag) {
                continue;
            }
            assert!(
                synopsis.contains(&format!("--{flag}")),
                "{head}: --{flag} is missing from the README's synopsis"
            );
        }
    }
}

/// `corral healthcheck` (the image's HEALTHCHECK): 0 against a running corral, 1 against nothing.
/// Without --url it checks where the server's own settings (here its environment) put it: the
/// HTTPS port, or plain HTTP there behind a proxy that terminates TLS (`--tls external`).
#[tokio::test]
async fn healthcheck_answers_for_the_container() {
    let corral = Corral::start(&[]);
    let url = format!("https://127.0.0.1:{}/healthz", corral.https_port);
    let (code, _, stderr) = run_corral(&["healthcheck", "--url", &url], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let port = corral.https_port.to_string();
    let (code, _, stderr) = run_corral(&["healthcheck"], &[("CORRAL_HTTPS_PORT", &port)]);
    assert_eq!(code, Some(0), "{stderr}");
    let closed = format!("https://127.0.0.1:{}/healthz", common::free_port());
    let (code, _, stderr) = run_corral(&["healthcheck", "--url", &closed], &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot connect"), "{stderr}");

    let external = Corral::start(&["--tls", "external"]);
    let port = external.https_port.to_string();
    let env = [
        ("CORRAL_HTTPS_PORT", port.as_str()),
        ("CORRAL_TLS", "external"),
    ];
    let (code, _, stderr) = run_corral(&["healthcheck"], &env);
    assert_eq!(code, Some(0), "{stderr}");
    let url = format!("http://127.0.0.1:{port}/healthz");
    let (code, _, stderr) = run_corral(&["healthcheck", "--url", &url], &[]);
    assert_eq!(code, Some(0), "{stderr}");
}

/// The container image (not built here: no Docker engine on these machines) is built with the Rust
/// release the tests run with, runs as a user that is not root yet binds 443 and 80, checks its
/// health with corral itself, and its build context leaves out build output and history.
#[test]
fn the_container_image_is_pinned_unprivileged_and_checked() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&rustc.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.rsplit_once('.'))
        .unwrap()
        .0;
    assert!(
        dockerfile.contains(&format!("FROM rust:{minor}-")),
        "the build stage pins rust {minor}: {dockerfile}"
    );
    assert!(dockerfile.contains("setcap cap_net_bind_service=+ep /usr/local/bin/corral"));
    // HA replicas run from the image too: the etcd store is built in (with protoc for its client).
    assert!(
        dockerfile.contains("--features etcd") && dockerfile.contains("protobuf-compiler"),
        "{dockerfile}"
    );
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert_ne!(user.trim(), "root");
    // The health check follows the server's settings: both are given by the environment.
    assert!(
        dockerfile.contains(r#"CMD ["corral", "healthcheck"]"#)
            && dockerfile.contains(r#"CMD ["serve"]"#)
            && dockerfile.contains("CORRAL_HTTPS_PORT=443"),
        "{dockerfile}"
    );
    let ignore = std::fs::read_to_string(format!("{root}/.dockerignore")).unwrap();
    for left_out in ["target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == left_out),
            "{left_out}: {ignore}"
        );
    }
}

/// The README's HA walkthrough (`<!-- ha-walkthrough -->`): a three-member etcd, three replicas with
/// `--hostname`, HAProxy, a simulated agent and kubectl through the balancer, then a SIGKILL of the
/// replica holding the agent — run as written, with free ports instead of the ones it names.
#[cfg(feature = "etcd")]
#[test]
fn the_readme_ha_walkthrough_runs_as_written() {
    let mut script = readme_script("ha-walkthrough");
    for port in [
        "2379", "22379", "32379", "2380", "22380", "32380", "8444", "8445", "8446", "8443",
    ] {
        let free = common::free_port().to_string();
        let pattern = regex::Regex::new(&format!(r"\b{port}\b")).unwrap();
        script = pattern.replace_all(&script, free.as_str()).into_owned();
    }
    let logs = [
        "replica-0.log",
        "replica-1.log",
        "replica-2.log",
        "agent.log",
    ];
    let (succeeded, stdout, why) = run_in_bash(&script, 240, &[], &logs);
    assert!(succeeded, "the HA walkthrough failed: {why}");
    let checksums: std::collections::HashSet<&str> =
        stdout.lines().filter(|l| l.ends_with("  -")).collect();
    assert_eq!(checksums.len(), 1, "one CA on every replica: {why}");
    let versions = stdout
        .lines()
        .filter(|l| *l == "v1.31.4+corral-simulated")
        .count();
    assert_eq!(versions, 3, "every replica reaches the cluster: {why}");
    for expected in [
        "namespace/ha created",
        "/corral/cattle-system/tls-rancher-ingress",
        "/corral/corral/replicas/",
        "kubectl works again",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing: {why}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ha ") && l.contains("Active")),
        "{why}"
    );
}
