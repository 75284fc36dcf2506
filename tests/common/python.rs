//! Rancher's official Python client (`rancher-client-python-3p`, installed unmodified by
//! `.ci/deps` into `target/ci-python`), running the scenarios of
//! `tests/python/rancher_client_checks.py`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::lab::Lab;

/// The Python that `.ci/deps` set up with Rancher's client.
fn python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-python/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run .ci/deps (the README's test command, .ci/test, does)",
        python.display()
    );
    python
}

/// Runs one scenario of `tests/python/rancher_client_checks.py` against `lab` (at most two
/// minutes); returns its `ok …` lines, or panics with its output.
pub fn rancher_client(lab: &Lab, scenario: &str, extra: &[&str]) -> Vec<String> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/rancher_client_checks.py");
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new("timeout");
    command
        .arg("120")
        .arg(python())
        .arg(script)
        .args([&lab.server(), &lab.token, scenario])
        .args(extra)
        // requests trusts this bundle (not the system's) when it verifies, as a user points it at
        // Rancher's CA; the loopback is never proxied.
        .env("REQUESTS_CA_BUNDLE", lab.ca_file.path())
        .env_remove("CURL_CA_BUNDLE")
        .env("NO_PROXY", "*")
        .env("HOME", home.path())
        .stdin(Stdio::null());
    for proxy in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
    ] {
        command.env_remove(proxy);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{scenario}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}
