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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_commands_report_json() {
    let corral = Corral::start(&["--mint-rate", "0", "--mint-rate-per-client", "0"]);
    let target = format!("127.0.0.1:{}", corral.https_port);
    let args = [
        "bench",
        "handshake",
        "--target",
        &target,
        "--insecure",
        "--unique-sni",
        "bench.test",
        "--count",
        "50",
        "--json",
    ];
    let (code, stdout, stderr) = run_corral(&args, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (report["ok"].as_u64(), report["failed"].as_u64()),
        (Some(50), Some(0)),
        "{stdout}"
    );
    assert!(report["latency_us"]["p99"].as_u64().unwrap() > 0);
    let logs = corral.logs().join("\n");
    assert!(
        logs.matches("minted certificate for ").count() >= 50,
        "a new name per connection"
    );

    // The same against corral's default mint rates: most names are refused and get the default
    // certificate. They are counted as fallback, with --insecure and with --ca alike (grouped, not a
    // line each), and fail the run unless --allow-fallback.
    let defaults = Corral::start(&[]);
    let target = format!("127.0.0.1:{}", defaults.https_port);
    let ca = common::temp_file(&defaults.cacerts().await);
    let ca = ca.path().to_str().unwrap();
    let run = |trust: &[&str], extra: &[&str]| {
        let args = [
            &["bench", "handshake", "--target", &target][..],
            trust,
            &[
                "--unique-sni",
                "refused.test",
                "--count",
                "200",
                "--concurrency",
                "8",
            ],
            extra,
        ]
        .concat();
        run_corral(&args, &[])
    };
    for trust in [&["--insecure"][..], &["--ca", ca]] {
        let (code, stdout, _) = run(trust, &["--json"]);
        assert_eq!(code, Some(1), "{trust:?}: {stdout}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let (ok, fallback) = (
            report["ok"].as_u64().unwrap(),
            report["fallback"].as_u64().unwrap(),
        );
        assert!(
            fallback > 100 && ok + fallback == 200,
            "{trust:?}: {stdout}"
        );
        assert_eq!(report["failed"], 0, "{trust:?}: {stdout}");
        let (code, text, _) = run(trust, &["--allow-fallback"]);
        assert_eq!(code, Some(0), "{trust:?}: {text}");
        assert!(text.lines().count() < 6, "grouped: {text}");
        assert!(
            text.contains("--mint-rate 0 --mint-rate-per-client 0"),
            "{text}"
        );
    }
    // A target without a port means port 8443; failures are grouped by kind.
    let closed = common::free_port();
    let (code, text, _) = run_corral(
        &[
            "bench",
            "handshake",
            "--target",
            &format!("127.0.0.1:{closed}"),
            "--insecure",
            "--count",
            "3",
        ],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(text.contains("3 × connect: connection refused"), "{text}");
    let (_, _, stderr) = run_corral(
        &[
            "bench",
            "handshake",
            "--target",
            "127.0.0.1",
            "--insecure",
            "--count",
            "1",
        ],
        &[],
    );
    assert!(!stderr.contains("invalid socket address"), "{stderr}");

    let (code, stdout, stderr) = run_corral(
        &[
            "bench",
            "tunnel",
            "--megabytes",
            "8",
            "--streams",
            "20",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        report["tunnel_mib_per_s"].as_f64().unwrap() > 0.0
            && report["stream_opens_per_s"].as_f64().unwrap() > 0.0
    );
}
