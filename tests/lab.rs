//! Lab scenarios (issue 23): faults made through `/v3/corral/faults`, the config file and the
//! status page, each met by the real clients users have — openssl, curl, Python's ssl, kubectl —
//! with the exact error each one gives.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::*;
use serde_json::{Value, json};

fn json_of(response: &HttpResponse) -> Value {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("{e}: {} {}", response.status, response.body))
}

/// Creates a fault as `auth`; the answer.
async fn add_fault(lab: &Lab, body: Value) -> HttpResponse {
    request(
        lab.addr,
        "POST",
        "/v3/corral/faults",
        &[&lab.auth()],
        Some(&body.to_string()),
    )
    .await
}

/// A command's exit code and its stdout and stderr together, bounded at 20 s.
fn run(program: &str, args: &[&str]) -> (i32, String) {
    let output = Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// What each client says of a name's certificate.
struct Verdicts {
    /// `openssl s_client`'s `Verify return code: N (…)` line, the first.
    openssl: String,
    /// The server key's size as `openssl s_client` reports it.
    key_bits: String,
    curl_exit: i32,
    /// `ok`, or Python's `ssl` error.
    python: String,
    /// kubectl's last line.
    kubectl: String,
}

fn verdicts(lab: &Lab, name: &str) -> Verdicts {
    let port = lab.addr.port().to_string();
    let ca = lab.ca_file.path().to_str().unwrap();
    let connect = format!("127.0.0.1:{port}");
    let (_, openssl) = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            name,
            "-CAfile",
            ca,
            "-verify_hostname",
            name,
        ],
    );
    let line = |prefix: &str| {
        openssl
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_default()
            .to_string()
    };
    let resolve = format!("{name}:{port}:127.0.0.1");
    let url = format!("https://{name}:{port}/ping");
    let (curl_exit, _) = run(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            &url,
        ],
    );
    let script = format!(
        "import ssl, socket\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         try:\n    ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})), server_hostname={name:?}); print('ok')\n\
         except ssl.SSLError as e:\n    print(e)\n"
    );
    let (_, python) = run("python3", &["-c", &script]);
    let server = format!("https://127.0.0.1:{port}");
    let (_, kubectl) = run(
        "kubectl",
        &[
            "--server",
            &server,
            "--tls-server-name",
            name,
            "--certificate-authority",
            ca,
            "--token",
            "not-a-token",
            "get",
            "--raw",
            "/ping",
        ],
    );
    Verdicts {
        openssl: line("Verify return code:"),
        key_bits: line("Server public key is"),
        curl_exit,
        python: python.trim().to_string(),
        kubectl: kubectl
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string(),
    }
}

/// Every scenario, on a name of its own, as openssl (its verify code), curl (its exit code),
/// Python and kubectl (their texts) meet it; a name without a fault keeps corral's own leaf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_certificate_scenario_fails_real_clients_exactly() {
    let lab = Lab::start().await;
    let scenarios = [
        "expired",
        "not-yet-valid",
        "wrong-host",
        "self-signed",
        "untrusted-root",
        "incomplete-chain",
        "no-san",
        "rsa-2048",
        "rsa-4096",
        "many-sans",
    ];
    for scenario in scenarios {
        let name = format!("{scenario}.lab.test");
        let made = add_fault(
            &lab,
            json!({"kind": "certificate", "scenario": scenario, "name": name, "ttl": "10m"}),
        )
        .await;
        assert_eq!(made.status, 201, "{scenario}: {}", made.body);
    }
    // scenario: openssl's code, curl's exit code, Python's words, kubectl's (Go's) words.
    let expected: [(&str, &str, i32, &str, &str); 10] = [
        (
            "expired",
            "10 (certificate has expired)",
            60,
            "certificate verify failed: certificate has expired",
            "x509: certificate has expired or is not yet valid: current time",
        ),
        (
            "not-yet-valid",
            "9 (certificate is not yet valid)",
            60,
            "certificate verify failed: certificate is not yet valid",
            "x509: certificate has expired or is not yet valid: current time",
        ),
        (
            "wrong-host",
            "62 (hostname mismatch)",
            60,
            "certificate verify failed: Hostname mismatch, certificate is not valid for 'wrong-host.lab.test'.",
            "x509: certificate is valid for wrong.host.invalid, not wrong-host.lab.test",
        ),
        (
            "self-signed",
            "18 (self-signed certificate)",
            60,
            "certificate verify failed: self-signed certificate (",
            "x509: certificate signed by unknown authority",
        ),
        (
            "untrusted-root",
            "19 (self-signed certificate in certificate chain)",
            60,
            "certificate verify failed: self-signed certificate in certificate chain",
            "x509: certificate signed by unknown authority",
        ),
        (
            "incomplete-chain",
            "21 (unable to verify the first certificate)",
            60,
            "certificate verify failed: unable to get local issuer certificate",
            "x509: certificate signed by unknown authority",
        ),
        // OpenSSL, curl and Python still read the subject's CN; Go does not.
        (
            "no-san",
            "0 (ok)",
            0,
            "ok",
            "x509: certificate relies on legacy Common Name field, use SANs instead",
        ),
        ("rsa-2048", "0 (ok)", 0, "ok", "pong"),
        ("rsa-4096", "0 (ok)", 0, "ok", "pong"),
        ("many-sans", "0 (ok)", 0, "ok", "pong"),
    ];
    let mut wrong = Vec::new();
    for (scenario, openssl, curl, python, kubectl) in expected {
        let got = verdicts(&lab, &format!("{scenario}.lab.test"));
        let fine = got.openssl == format!("Verify return code: {openssl}")
            && got.curl_exit == curl
            && got.python.contains(python)
            && got.kubectl.contains(kubectl);
        if !fine {
            wrong.push(format!(
                "{scenario}: openssl {:?}, curl {}, python {:?}, kubectl {:?}",
                got.openssl, got.curl_exit, got.python, got.kubectl
            ));
        }
        let bits = match scenario {
            "rsa-2048" => "Server public key is 2048 bit",
            "rsa-4096" => "Server public key is 4096 bit",
            _ => "Server public key is 256 bit",
        };
        if got.key_bits != bits && curl == 0 {
            wrong.push(format!("{scenario}: {:?}, not {bits:?}", got.key_bits));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // The certificates themselves: no SAN at all, and 1,000 of them.
    let leaf_text = |name: &str| {
        let port = lab.addr.port();
        sh(&format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null \
             | openssl x509 -noout -text"
        ))
    };
    let no_san = leaf_text("no-san.lab.test");
    assert!(!no_san.contains("Subject Alternative Name"), "{no_san}");
    assert!(no_san.contains("Subject: CN = no-san.lab.test"), "{no_san}");
    let many = leaf_text("many-sans.lab.test");
    assert_eq!(many.matches("DNS:").count(), 1000);
    // A name with no fault: corral's own leaf, which every client accepts.
    let plain = verdicts(&lab, "plain.lab.test");
    assert_eq!(plain.openssl, "Verify return code: 0 (ok)");
    assert_eq!((plain.curl_exit, plain.python.as_str()), (0, "ok"));
}

/// The API as scripts use it: norman's shapes, refusals naming what is valid, admins only;
/// a fault for every name (a client without SNI too), its end by ttl and by removal, each in the
/// log and `/metrics`; a pinned server overlaid the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_made_listed_and_ended_through_the_api() {
    let lab = Lab::start().await;
    let ca = std::fs::read_to_string(lab.ca_file.path()).unwrap();

    // Refusals: norman's 422 naming the field and the valid values; strangers and users are not admins.
    let unknown = add_fault(&lab, json!({"kind": "certificate", "scenario": "broken"})).await;
    assert_eq!(unknown.status, 422, "{}", unknown.body);
    let body = json_of(&unknown);
    assert_eq!(body["code"], "InvalidOption");
    assert_eq!(body["fieldName"], "scenario");
    assert_eq!(
        body["message"],
        "invalid scenario \"broken\": valid ones are expired, not-yet-valid, wrong-host, \
         self-signed, untrusted-root, incomplete-chain, no-san, rsa-2048, rsa-4096, many-sans, \
         short-lived"
    );
    let weak = add_fault(&lab, json!({"kind": "certificate", "scenario": "weak-key"})).await;
    assert!(
        json_of(&weak)["message"]
            .as_str()
            .unwrap()
            .contains("refuses RSA keys under 2048 bits")
    );
    let kind = add_fault(&lab, json!({"kind": "dns"})).await;
    assert_eq!(
        (kind.status, json_of(&kind)["code"].as_str()),
        (422, Some("InvalidOption"))
    );
    let ttl = add_fault(
        &lab,
        json!({"kind": "certificate", "scenario": "expired", "ttl": "soon"}),
    )
    .await;
    assert_eq!(json_of(&ttl)["fieldName"], "ttl");
    let stranger = request(lab.addr, "GET", "/v3/corral/faults", &[], None).await;
    assert_eq!(stranger.status, 401);
    let user = json!({"username": "lab-user", "password": "lab-user-password-1", "enabled": true});
    let made = request(
        lab.addr,
        "POST",
        "/v3/users",
        &[&lab.auth()],
        Some(&user.to_string()),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let user_token = json_of(&login(lab.addr, "lab-user", "lab-user-password-1").await)["token"]
        .as_str()
        .unwrap()
        .to_string();
    let as_user = format!("Authorization: Bearer {user_token}");
    let refused = request(
        lab.addr,
        "POST",
        "/v3/corral/faults",
        &[&as_user],
        Some(r#"{"kind":"certificate","scenario":"expired"}"#),
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);

    // A fault for every name, with a ttl: a client without SNI (by IP) meets it too.
    let every = add_fault(
        &lab,
        json!({"kind": "certificate", "scenario": "expired", "ttl": "3s"}),
    )
    .await;
    assert_eq!(every.status, 201, "{}", every.body);
    let fault = json_of(&every);
    let id = fault["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("fault-"), "{id}");
    assert_eq!(fault["type"], "fault");
    assert_eq!(fault["scenario"], "expired");
    assert_eq!(fault["name"], Value::Null);
    assert!(fault["expires"].is_string() && fault["links"]["remove"].is_string());
    let listed =
        json_of(&request(lab.addr, "GET", "/v3/corral/faults", &[&lab.auth()], None).await);
    assert_eq!(listed["type"], "collection");
    assert_eq!(listed["data"][0]["id"], id.as_str());
    let users_list =
        json_of(&request(lab.addr, "GET", "/v3/corral/faults", &[&as_user], None).await);
    assert!(
        users_list["data"].as_array().is_none_or(Vec::is_empty),
        "{users_list}"
    );
    assert_eq!(
        metric(lab.addr, "corral_lab_faults_active{kind=\"certificate\"}").await,
        1.0
    );
    let by_ip = sh(&format!(
        "openssl s_client -connect 127.0.0.1:{} -CAfile {} </dev/null 2>/dev/null | grep -m1 'Verify return code'",
        lab.addr.port(),
        lab.ca_file.path().display()
    ));
    assert_eq!(by_ip, "Verify return code: 10 (certificate has expired)");
    assert!(lab.corral.logged(&format!(
        "lab fault {id} started: certificate scenario expired for every name until"
    )));
    // Its ttl passes: it ends, in the log and the metrics, and clients verify again.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lab
        .corral
        .logged(&format!("lab fault {id} ended (expired)"))
    {
        assert!(Instant::now() < deadline, "{:?}", lab.corral.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric(lab.addr, "corral_lab_faults_active{kind=\"certificate\"}").await,
        0.0
    );
    assert!(
        tls_connect(lab.addr, Some("after.lab.test"), Some(&ca))
            .await
            .is_ok()
    );

    // A leaf that expires while it is used: valid at its first handshake, expired 2 s later (and
    // not made again: the client keeps meeting the same expired leaf).
    let brief = add_fault(
        &lab,
        json!({"kind": "certificate", "scenario": "short-lived", "name": "brief.lab.test", "lifetime": "2s"}),
    )
    .await;
    assert_eq!(json_of(&brief)["lifetime"], "2s");
    let first = tls_connect(lab.addr, Some("brief.lab.test"), Some(&ca))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = verdicts(&lab, "brief.lab.test");
    assert_eq!(
        later.openssl,
        "Verify return code: 10 (certificate has expired)"
    );
    let again = tls_connect(lab.addr, Some("brief.lab.test"), None)
        .await
        .unwrap();
    assert_eq!(first.leaf(), again.leaf());
    let misplaced = add_fault(
        &lab,
        json!({"kind": "certificate", "scenario": "expired", "lifetime": "2s"}),
    )
    .await;
    assert_eq!(
        json_of(&misplaced)["message"],
        "invalid lifetime \"2s\": only short-lived takes a lifetime"
    );

    // A glob; removed, it is gone at once.
    let glob = add_fault(
        &lab,
        json!({"kind": "certificate", "scenario": "self-signed", "name": "*.glob.lab.test"}),
    )
    .await;
    let glob_id = json_of(&glob)["id"].as_str().unwrap().to_string();
    assert!(
        tls_connect(lab.addr, Some("a.glob.lab.test"), Some(&ca))
            .await
            .is_err()
    );
    assert!(
        tls_connect(lab.addr, Some("glob.lab.test"), Some(&ca))
            .await
            .is_ok()
    );
    let path = format!("/v3/corral/faults/{glob_id}");
    let got = request(lab.addr, "GET", &path, &[&lab.auth()], None).await;
    assert_eq!(json_of(&got)["name"], "*.glob.lab.test");
    let removed = request(lab.addr, "DELETE", &path, &[&lab.auth()], None).await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert!(
        tls_connect(lab.addr, Some("a.glob.lab.test"), Some(&ca))
            .await
            .is_ok()
    );
    assert!(
        lab.corral
            .logged(&format!("lab fault {glob_id} ended (removed)"))
    );
    let again = request(lab.addr, "DELETE", &path, &[&lab.auth()], None).await;
    assert_eq!(again.status, 404);

    // Pinned to server-url, the fault still wins for its name; other names get the pinned leaf.
    lab.pin_server_url("https://pinned.lab.test").await;
    add_fault(
        &lab,
        json!({"kind": "certificate", "scenario": "wrong-host", "name": "pinned.lab.test"}),
    )
    .await;
    let hit = tls_connect(lab.addr, Some("pinned.lab.test"), Some(&ca)).await;
    assert!(hit.is_err());
    let met = verdicts(&lab, "pinned.lab.test");
    assert_eq!(met.openssl, "Verify return code: 62 (hostname mismatch)");
    assert_eq!(met.curl_exit, 60);
    let other = tls_connect(lab.addr, Some("other.lab.test"), None)
        .await
        .unwrap();
    let sans = sh(&format!(
        "echo '{}' | base64 -d | openssl x509 -inform der -noout -ext subjectAltName",
        base64_of(other.leaf())
    ));
    assert!(sans.contains("DNS:pinned.lab.test"), "{sans}");
}

/// Faults from the config file are active from the first handshake, and nothing of them survives
/// a restart without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_faults_last_as_long_as_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = temp_file(
        "[[lab_faults]]\nkind = \"certificate\"\nscenario = \"not-yet-valid\"\nname = \"early.lab.test\"\n\n\
         [[lab_faults]]\nkind = \"certificate\"\nscenario = \"rsa-4096\"\nname = \"big.lab.test\"\n",
    );
    let data = dir.path().join("d");
    let config_flag = config.path().to_str().unwrap();
    let corral = Corral::start_in(&data, &["--config", config_flag], &[]).unwrap();
    let addr = corral.https("127.0.0.1");
    let ca = corral.cacerts().await;
    assert!(
        tls_connect(addr, Some("early.lab.test"), Some(&ca))
            .await
            .is_err()
    );
    let leaf = tls_connect(addr, Some("big.lab.test"), Some(&ca))
        .await
        .unwrap();
    let text = sh(&format!(
        "echo '{}' | base64 -d | openssl x509 -inform der -noout -text",
        base64_of(leaf.leaf())
    ));
    assert!(text.contains("Public-Key: (4096 bit)"), "{text}");
    assert_eq!(
        metric(addr, "corral_lab_faults_active{kind=\"certificate\"}").await,
        2.0
    );
    // A bad fault in the file stops the start, naming it.
    let bad = temp_file("[[lab_faults]]\nkind = \"certificate\"\nscenario = \"sha1\"\n");
    let (code, _, err) = run_corral(
        &[
            "serve",
            "--config",
            bad.path().to_str().unwrap(),
            "--data-dir",
            dir.path().join("e").to_str().unwrap(),
            "--https-port",
            "0",
            "--http-port",
            "0",
            "--bind",
            "127.0.0.1",
        ],
        &[],
    );
    assert_ne!(code, Some(0));
    assert!(
        err.contains("invalid lab_faults: invalid scenario \"sha1\""),
        "{err}"
    );
    assert!(
        err.contains("rcgen cannot sign certificates with SHA-1"),
        "{err}"
    );
    // Restarted without the file: nothing is left.
    drop(corral.stop());
    let corral = Corral::start_in(&data, &[], &[]).unwrap();
    let addr = corral.https("127.0.0.1");
    assert!(
        tls_connect(addr, Some("early.lab.test"), Some(&ca))
            .await
            .is_ok()
    );
}

fn base64_of(der: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// The status page lists the active faults, and clears them with the admin's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_lists_faults_and_clears_them() {
    let lab = Lab::start().await;
    let ca = std::fs::read_to_string(lab.ca_file.path()).unwrap();
    for (scenario, name) in [("expired", "a.lab.test"), ("no-san", "b.lab.test")] {
        let made = add_fault(
            &lab,
            json!({"kind": "certificate", "scenario": scenario, "name": name, "ttl": "1h"}),
        )
        .await;
        assert_eq!(made.status, 201, "{}", made.body);
    }
    let slow =
        json!({"kind": "tunnel", "toxic": "latency", "cluster": lab.cluster, "latency": "1s"});
    assert_eq!(add_fault(&lab, slow).await.status, 201);
    let host = "page.lab.test";
    let browser = common::webdriver::Browser::start(&ca, host).await;
    browser
        .goto(&format!("https://{host}:{}/dashboard/", lab.addr.port()))
        .await;
    let listed = "return !document.getElementById('faults').hidden && \
        document.querySelectorAll('#fault-list li').length === 3";
    assert!(browser.wait_until(listed, Duration::from_secs(20)).await);
    let text = browser.property("#fault-list", "textContent").await;
    let text = text.as_str().unwrap_or_default();
    assert!(
        text.contains("certificate expired for a.lab.test until"),
        "{text}"
    );
    assert!(text.contains("certificate no-san for b.lab.test"), "{text}");
    // The page is public: a tunnel fault's cluster is not named there.
    assert!(
        text.contains("tunnel latency (both) for one cluster"),
        "{text}"
    );
    assert!(!text.contains(&lab.cluster), "{text}");
    browser.screenshot("lab-faults").await;
    // A wrong password is refused in the page's words; the right one clears every fault.
    browser
        .type_into("#clear-password", "not-the-password")
        .await;
    browser.click("#clear").await;
    let refused = "return document.getElementById('clear-error').classList.contains('shown')";
    assert!(browser.wait_until(refused, Duration::from_secs(20)).await);
    browser
        .type_into("#clear-password", common::lab::BOOTSTRAP)
        .await;
    browser.click("#clear").await;
    let cleared = "return document.getElementById('faults').hidden";
    assert!(browser.wait_until(cleared, Duration::from_secs(20)).await);
    let left = request(lab.addr, "GET", "/v3/corral/faults", &[&lab.auth()], None).await;
    assert_eq!(json_of(&left)["data"], json!([]));
    assert!(
        tls_connect(lab.addr, Some("a.lab.test"), Some(&ca))
            .await
            .is_ok()
    );
}

/// `corral lab` drives the same API: a certificate fault made, listed, met, removed, cleared; and
/// a refusal in norman's words with a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corral_lab_drives_the_api() {
    let lab = Lab::start().await;
    let server = lab.server();
    let ca = lab.ca_file.path().to_str().unwrap().to_string();
    let env = [
        ("CORRAL_TOKEN", lab.token.as_str()),
        ("CATTLE_SERVER", server.as_str()),
    ];
    let corral = |args: &[&str]| {
        let args = [args, &["--cacert", &ca][..]].concat();
        run_corral(&args, &env)
    };
    let (code, out, err) = corral(&[
        "lab",
        "cert",
        "expired",
        "--name",
        "cli.lab.test",
        "--ttl",
        "10m",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let id = out.trim().to_string();
    assert!(id.starts_with("fault-"), "{out}");
    let (code, out, err) = corral(&["lab", "faults"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("EXPIRES"),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&id)
            && lines[1].contains("certificate")
            && lines[1].contains("expired")
            && lines[1].contains("cli.lab.test"),
        "{out}"
    );
    // A fault for every client: `corral lab` itself then fails to verify the server, and says so.
    let (_, out, _) = corral(&["lab", "cert", "untrusted-root"]);
    let every = out.trim().to_string();
    let (code, _, err) = corral(&["lab", "faults"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    let insecure = |args: &[&str]| run_corral(&[args, &["--insecure"][..]].concat(), &env);
    let (_, out, _) = insecure(&["lab", "faults"]);
    let theirs = out.lines().find(|l| l.starts_with(&every)).expect("listed");
    assert!(
        theirs.contains("every name") && theirs.ends_with("never"),
        "{out}"
    );
    let (code, out, _) = insecure(&["lab", "remove", &every]);
    assert_eq!(
        (code, out.trim()),
        (Some(0), format!("removed {every}").as_str())
    );
    let (code, _, err) = corral(&["lab", "cert", "weak-key"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("422 Unprocessable Entity: invalid scenario \"weak-key\""),
        "{err}"
    );
    let (code, out, _) = corral(&["lab", "clear"]);
    assert_eq!(
        (code, out.trim()),
        (Some(0), format!("removed {id}").as_str())
    );
    let (_, out, _) = corral(&["lab", "faults"]);
    assert_eq!(out.lines().count(), 1, "{out}");
}

/// Runs `corral agent --simulate` for the lab's cluster with `checksum` until it exits (at most
/// 20 s): its exit code and log.
fn agent_with_checksum(lab: &Lab, checksum: &str) -> (Option<i32>, String) {
    let server = lab.server();
    let (code, _, err) = run_corral(
        &[
            "agent",
            "--simulate",
            "--server",
            &server,
            "--token",
            &lab.registration,
            "--ca-checksum",
            checksum,
        ],
        &[("CORRAL_LOG", "info")],
    );
    (code, err)
}

/// A CA rotation as Rancher users meet it: the checksum changes; an agent started with the old one
/// refuses to go on with the run.sh text, and one given the new checksum connects; kubeconfigs
/// made before fail kubectl (unknown authority), new ones work; the old CA kept in the bundle for
/// `keepOld` keeps bundle-trusting clients working, then leaves; a restart keeps it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_fails_agents_and_kubectl_as_rancher_does() {
    let lab = Lab::start().await;
    let old = lab.checksum.clone();
    // Pinned, as a set-up Rancher is: the rotation pins the new CA's certificate to it again.
    lab.pin_server_url(&lab.server()).await;
    let mut agent = lab.simulated_agents(&[&lab.registration], 1);
    lab.wait_connected(true).await;
    let old_kubeconfig = lab.kubeconfig(&lab.cluster).await;
    let kubectl = |config: &std::path::Path| {
        run(
            "kubectl",
            &[
                "--kubeconfig",
                config.to_str().unwrap(),
                "get",
                "ns",
                "default",
                "-o",
                "name",
            ],
        )
    };
    assert_eq!(
        kubectl(old_kubeconfig.path()),
        (0, "namespace/default\n".into())
    );

    // Rotate, dropping the old CA at once (corral lab rotate-ca, the API underneath).
    let server = lab.server();
    let env = [
        ("CORRAL_TOKEN", lab.token.as_str()),
        ("CATTLE_SERVER", server.as_str()),
    ];
    let (code, out, err) = run_corral(&["lab", "rotate-ca", "--insecure"], &env);
    assert_eq!(code, Some(0), "{err}");
    let new = out.trim().to_string();
    let cacerts = request(lab.addr, "GET", "/cacerts", &[], None).await.body;
    assert_eq!(sha256_hex(cacerts.as_bytes()), new);
    assert_ne!(new, old);
    assert!(lab.corral.logged(&format!(
        "CA rotated: CN=cattle-ca,O=the-ranch now signs every certificate; CA checksum: {new}"
    )));
    // The registration command now carries the new checksum.
    let new_token = json!({ "clusterId": lab.cluster }).to_string();
    let made = request(
        lab.addr,
        "POST",
        "/v3/clusterregistrationtokens",
        &[&lab.auth()],
        Some(&new_token),
    )
    .await;
    let node_command = json_of(&made)["nodeCommand"].as_str().unwrap().to_string();
    assert!(
        node_command.ends_with(&format!("--ca-checksum {new}")),
        "{node_command}"
    );

    // The connected agent's tunnel stays up (its TLS session is made), as a Rancher agent's does.
    assert_eq!(
        kubectl(old_kubeconfig.path()).0,
        1,
        "the old kubeconfig trusts the old CA only"
    );
    let (_, text) = kubectl(old_kubeconfig.path());
    assert!(
        text.contains("x509: certificate signed by unknown authority"),
        "{text}"
    );
    let new_kubeconfig = lab.kubeconfig(&lab.cluster).await;
    assert_eq!(
        kubectl(new_kubeconfig.path()),
        (0, "namespace/default\n".into())
    );
    // An agent (re)started with the old checksum refuses to go on, in run.sh's words.
    let (code, log) = agent_with_checksum(&lab, &old);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "Configured cacerts checksum ({new}) does not match given --ca-checksum ({old})"
        )),
        "{log}"
    );
    // Given the new checksum, it connects.
    agent.kill();
    lab.wait_connected(false).await;
    let mut fixed = lab.simulated_agents_checking(&lab.server(), &[&lab.registration], 1, &new);
    lab.wait_connected(true).await;
    assert_eq!(
        kubectl(new_kubeconfig.path()),
        (0, "namespace/default\n".into())
    );
    fixed.kill();

    // Rotated again, keeping the previous CA for a while: /cacerts is a bundle of both, so a
    // client that trusts the bundle verifies, one that trusts the previous CA alone does not.
    let previous_ca = cacerts.clone();
    let rotated = request(
        lab.addr,
        "POST",
        "/v3/corral/ca?action=rotate",
        &[&lab.auth()],
        Some(r#"{"keepOld":"3s"}"#),
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let bundle = request(lab.addr, "GET", "/cacerts", &[], None).await.body;
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(
        bundle.ends_with(&previous_ca),
        "the previous CA comes second"
    );
    assert_eq!(
        json_of(&rotated)["bundleChecksum"],
        sha256_hex(bundle.as_bytes())
    );
    assert!(tls_connect(lab.addr, None, Some(&bundle)).await.is_ok());
    assert!(
        tls_connect(lab.addr, None, Some(&previous_ca))
            .await
            .is_err()
    );
    let listed = json_of(&request(lab.addr, "GET", "/v3/corral/ca", &[&lab.auth()], None).await);
    assert_eq!(listed["data"][1]["id"], "previous");
    assert!(listed["data"][1]["keptUntil"].is_string());
    // When keepOld has passed, the previous CA leaves and the checksum changes again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = request(lab.addr, "GET", "/cacerts", &[], None).await.body;
        if now.matches("BEGIN CERTIFICATE").count() == 1 {
            assert!(!now.contains(previous_ca.trim()));
            break;
        }
        assert!(Instant::now() < deadline, "the previous CA never left");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        lab.corral
            .logged("the previous CA left /cacerts; CA checksum:")
    );

    // A user who is not an admin may not rotate it; a stranger is 401.
    let stranger = request(
        lab.addr,
        "POST",
        "/v3/corral/ca?action=rotate",
        &[],
        Some("{}"),
    )
    .await;
    assert_eq!(stranger.status, 401);
    let bad = request(
        lab.addr,
        "POST",
        "/v3/corral/ca?action=rotate",
        &[&lab.auth()],
        Some(r#"{"keepOld":"forever"}"#),
    )
    .await;
    assert_eq!(
        (bad.status, json_of(&bad)["fieldName"].as_str()),
        (422, Some("keepOld"))
    );
}

/// A rotation survives a restart: the new CA, and the previous one for the rest of its time
/// (`corral ca checksum` agrees); bring-your-own CAs are not corral's to rotate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_ca_and_its_kept_predecessor_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", common::lab::BOOTSTRAP)];
    let corral = Corral::start_in(&data, &[], &env).unwrap();
    let addr = corral.https("127.0.0.1");
    let token = json_of(&login(addr, "admin", common::lab::BOOTSTRAP).await)["token"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = format!("Authorization: Bearer {token}");
    let rotated = request(
        addr,
        "POST",
        "/v3/corral/ca?action=rotate",
        &[&auth],
        Some(r#"{"keepOld":"1h"}"#),
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let bundle = corral.cacerts().await;
    drop(corral.stop());
    let data_flag = data.to_str().unwrap();
    let (code, out, err) = run_corral(&["ca", "checksum", "--data-dir", data_flag], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), sha256_hex(bundle.as_bytes()));
    let corral = Corral::start_in(&data, &[], &env).unwrap();
    assert_eq!(corral.cacerts().await, bundle);
    assert!(corral.logged(&format!("CA checksum: {}", sha256_hex(bundle.as_bytes()))));
    assert!(
        tls_connect(corral.https("127.0.0.1"), Some("y.lab.test"), Some(&bundle))
            .await
            .is_ok()
    );
}

/// Where the CA cannot be rotated (`--hostname`: the ingress certificate is issued from it), a
/// rotation is refused before anything is written: the CA on disk and /cacerts stay as they were.
/// (The CA files were replaced first, and only then was the rotation refused.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_rotation_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", common::lab::BOOTSTRAP)];
    let corral = Corral::start_in(&data, &["--hostname", "rancher.lab.test"], &env).unwrap();
    let addr = corral.https("127.0.0.1");
    let token = json_of(&login(addr, "admin", common::lab::BOOTSTRAP).await)["token"]
        .as_str()
        .unwrap()
        .to_string();
    let ca_before = std::fs::read(data.join("ca.crt")).unwrap();
    let bundle = corral.cacerts().await;
    let refused = request(
        addr,
        "POST",
        "/v3/corral/ca?action=rotate",
        &[&format!("Authorization: Bearer {token}")],
        Some(r#"{"keepOld":"0s"}"#),
    )
    .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(
        json_of(&refused)["code"],
        "InvalidAction",
        "{}",
        refused.body
    );
    assert_eq!(std::fs::read(data.join("ca.crt")).unwrap(), ca_before);
    assert!(!data.join("ca.rotated.pem").exists());
    assert_eq!(corral.cacerts().await, bundle);
}

async fn remove_fault(lab: &Lab, id: &str) {
    let path = format!("/v3/corral/faults/{id}");
    let gone = request(lab.addr, "DELETE", &path, &[&lab.auth()], None).await;
    assert_eq!(gone.status, 200, "{}", gone.body);
}

/// kubectl through corral's proxy, with a 3 s request timeout: its exit code, output and time.
fn timed_kubectl(config: &std::path::Path, args: &[&str]) -> (i32, String, Duration) {
    let started = Instant::now();
    let config = config.to_str().unwrap();
    let (code, text) = run(
        "kubectl",
        &[
            &["--kubeconfig", config, "--request-timeout", "3s"][..],
            args,
        ]
        .concat(),
    );
    (code, text, started.elapsed())
}

/// Tunnel toxics as kubectl and the agent meet them through corral's proxy: latency slows every
/// call, a timeout hangs them until it is removed (the tunnel survives), slicing changes nothing
/// but the pieces, and reset-peer, limit-data and down end the tunnel, the agent reconnecting
/// once they are gone, as Rancher's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_toxics_act_as_a_bad_network() {
    let lab = Lab::start().await;
    let agent = lab.simulated_agents(&[&lab.registration], 1);
    lab.wait_connected(true).await;
    let config = lab.kubeconfig(&lab.cluster).await;
    let get_ns = || timed_kubectl(config.path(), &["get", "ns", "default", "-o", "name"]);
    let (code, out, _) = get_ns();
    assert_eq!((code, out.as_str()), (0, "namespace/default\n"));
    let toxic = |body: Value| {
        let mut body = body;
        body["kind"] = "tunnel".into();
        body["cluster"] = lab.cluster.clone().into();
        add_fault(&lab, body)
    };
    let id_of = |r: &HttpResponse| json_of(r)["id"].as_str().unwrap().to_string();

    // Refusals name what is valid.
    let unknown = add_fault(&lab, json!({"kind": "tunnel", "toxic": "jam"})).await;
    assert_eq!(
        json_of(&unknown)["message"],
        "invalid toxic \"jam\": valid ones are latency, bandwidth, slow-close, timeout, \
         reset-peer, slicer, limit-data, down"
    );
    let odds = add_fault(
        &lab,
        json!({"kind": "tunnel", "toxic": "down", "toxicity": 2}),
    )
    .await;
    assert_eq!(json_of(&odds)["fieldName"], "toxicity");

    // Latency, downstream: each call waits at least that long.
    let slow =
        toxic(json!({"toxic": "latency", "direction": "downstream", "latency": "300ms"})).await;
    assert_eq!(slow.status, 201, "{}", slow.body);
    assert_eq!(json_of(&slow)["latency"], "300ms");
    let (code, text, took) = get_ns();
    assert_eq!(code, 0, "{text}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    remove_fault(&lab, &id_of(&slow)).await;

    // Slicing into 7-byte pieces: the same answers.
    let sliced = toxic(json!({"toxic": "slicer", "average_size": 7, "size_variation": 3})).await;
    let (code, out, _) = timed_kubectl(config.path(), &["get", "nodes", "-o", "name"]);
    assert_eq!((code, out.as_str()), (0, "node/simulated-node-1\n"));
    remove_fault(&lab, &id_of(&sliced)).await;

    // Bandwidth, upstream at 1 KB/s: an answer of n bytes takes about n ms.
    let narrow = toxic(json!({"toxic": "bandwidth", "direction": "upstream", "rate": 1})).await;
    let (code, out, took) = timed_kubectl(config.path(), &["get", "ns", "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let floor = Duration::from_millis(out.len() as u64).saturating_sub(Duration::from_millis(200));
    assert!(took >= floor, "{} bytes in {took:?}", out.len());
    remove_fault(&lab, &id_of(&narrow)).await;

    // A timeout of 0 holds every byte: the proxy's dial through the tunnel gets no answer
    // within --agent-wait (2 s here) and kubectl is told 503; removed, the same tunnel works again.
    let hold = toxic(json!({"toxic": "timeout", "timeout": "0s"})).await;
    let (code, text, took) = get_ns();
    assert_eq!(code, 1);
    assert!(text.contains("(ServiceUnavailable)"), "{text}");
    assert!(took >= Duration::from_secs(2), "{took:?}");
    remove_fault(&lab, &id_of(&hold)).await;
    let (code, _, _) = get_ns();
    assert_eq!(code, 0);
    let sessions = lab
        .corral
        .logs()
        .iter()
        .filter(|l| l.contains(&format!("tunnel for {} connected", lab.cluster)))
        .count();
    assert_eq!(
        sessions,
        1,
        "the tunnel survived the hold: {:?}",
        lab.corral.logs()
    );

    // reset-peer: the tunnel is reset (the agent reads ECONNRESET); the agent reconnects once the
    // toxic is gone.
    let reset = toxic(json!({"toxic": "reset-peer", "timeout": "0s"})).await;
    lab.wait_connected_within(false, Duration::from_secs(10))
        .await;
    remove_fault(&lab, &id_of(&reset)).await;
    lab.wait_connected_within(true, Duration::from_secs(20))
        .await;
    assert_eq!(get_ns().0, 0);

    // down: the tunnel ends and a new one hangs, so the proxy answers 503 after --agent-wait;
    // back up, the agent reconnects.
    let down = toxic(json!({"toxic": "down"})).await;
    lab.wait_connected_within(false, Duration::from_secs(10))
        .await;
    let answer = lab.proxied("/api/v1/namespaces/default").await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    remove_fault(&lab, &id_of(&down)).await;
    lab.wait_connected_within(true, Duration::from_secs(20))
        .await;
    assert_eq!(get_ns().0, 0);

    // limit-data: the tunnel closes once that much has come back; the agent reconnects.
    let capped =
        toxic(json!({"toxic": "limit-data", "direction": "upstream", "bytes": 2000})).await;
    let (code, _, _) = timed_kubectl(config.path(), &["get", "ns", "-o", "json"]);
    assert_eq!(code, 1, "more than 2000 bytes cannot come back");
    lab.wait_connected_within(false, Duration::from_secs(10))
        .await;
    remove_fault(&lab, &id_of(&capped)).await;
    lab.wait_connected_within(true, Duration::from_secs(20))
        .await;
    assert_eq!(get_ns().0, 0);

    let logs = agent.stop_and_logs();
    assert!(logs.contains("Connection reset by peer"), "{logs}");
    assert!(
        lab.corral
            .logged("started: tunnel toxic latency downstream for cluster")
    );
}

/// `corral lab up`: one command, two connected simulated clusters with their kubeconfigs, the CA
/// in a file and in an NSS database, an env file `corral lab` reads; a second run keeps the
/// clusters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corral_lab_up_starts_a_whole_lab() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let lab_dir = dir.path().join("lab");
    let nss = dir.path().join("nss");
    let up = |extra: &[&str]| {
        let mut child = std::process::Command::new(corral_bin())
            .args([
                "lab",
                "up",
                "--clusters",
                "2",
                "--https-port",
                "0",
                "--http-port",
                "0",
            ])
            .arg("--dir")
            .arg(&lab_dir)
            .args(extra)
            .env_remove("CATTLE_BOOTSTRAP_PASSWORD")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The summary, printed once every cluster is connected.
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut summary = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !summary
            .last()
            .is_some_and(|l: &String| l.starts_with("Ctrl-C stops it"))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            summary.push(
                rx.recv_timeout(left)
                    .expect("the lab's summary within 60 s"),
            );
        }
        (child, summary)
    };
    let nss_flag = nss.to_str().unwrap();
    let (mut child, summary) = up(&["--trust-nss", nss_flag]);
    let text = summary.join("\n");
    assert_eq!(summary[0], "corral lab is up", "{text}");
    let kubeconfigs: Vec<&str> = summary
        .iter()
        .filter_map(|l| l.split("kubectl --kubeconfig ").nth(1))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert_eq!(kubeconfigs.len(), 2, "{text}");
    for config in &kubeconfigs {
        let (code, out) = run(
            "kubectl",
            &["--kubeconfig", config, "get", "nodes", "-o", "name"],
        );
        assert_eq!(
            (code, out.as_str()),
            (0, "node/simulated-node-1\n"),
            "{config}"
        );
    }
    // The CA in the NSS database, as a browser would read it.
    let listed = sh(&format!("certutil -L -d sql:{nss_flag}"));
    assert!(listed.contains("corral lab CA"), "{listed}");
    // The env file drives `corral lab`.
    let ca = lab_dir.join("ca.pem");
    let script = format!(
        ". {}/env && {} lab faults --cacert {}",
        lab_dir.display(),
        corral_bin(),
        ca.display()
    );
    assert!(sh(&script).starts_with("ID"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(lab_dir.join("env"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the env file holds a token");
    let _ = child.kill();
    let _ = child.wait();

    // Again: the same clusters, connected again.
    let (mut child, again) = up(&[]);
    let ids = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.trim_start().starts_with("cluster"))
            .map(|l| l.split_whitespace().nth(2).unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(ids(&again), ids(&summary), "{again:?}");
    let _ = child.kill();
    let _ = child.wait();
}

/// slow-close: when an agent goes away, corral's side of its tunnel closes only after the delay —
/// the cluster shows connected for that long, as behind a link that is slow to tear down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_close_delays_the_end_of_a_tunnel() {
    let lab = Lab::start().await;
    // Until the cluster shows disconnected, from when its agent is killed.
    async fn gone_after(lab: &Lab) -> Duration {
        let mut agent = lab.simulated_agents(&[&lab.registration], 1);
        lab.wait_connected(true).await;
        let killed = Instant::now();
        agent.kill();
        lab.wait_connected_within(false, Duration::from_secs(20))
            .await;
        killed.elapsed()
    }
    let plain = gone_after(&lab).await;
    let slow =
        json!({"kind": "tunnel", "toxic": "slow-close", "cluster": lab.cluster, "delay": "3s"});
    assert_eq!(add_fault(&lab, slow).await.status, 201);
    let slowed = gone_after(&lab).await;
    println!(
        "a killed agent's cluster showed disconnected after {plain:?}, {slowed:?} with slow-close 3s"
    );
    assert!(slowed >= Duration::from_secs(3), "{slowed:?}");
    assert!(plain < Duration::from_secs(2), "{plain:?}");
}
