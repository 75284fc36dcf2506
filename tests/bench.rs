//! `corral bench`: what its reports say is true. Handshakes against corral (minting, over its mint
//! rates, pinned), against nginx with an ordinary self-signed certificate; fallbacks timed and
//! named; an open loop that cannot keep its rate fails; resumption counted; the run's inputs and
//! the server's CPU time in the JSON.

mod common;

use std::time::{Duration, Instant};

use common::lab::{Lab, body};
use common::nginx::Nginx;
use common::{Corral, request, run_corral, sh};
use serde_json::Value;

/// `corral bench handshake ARGS… --json` against `target`: the exit code and the report.
fn handshake(target: &str, args: &[&str]) -> (Option<i32>, Value) {
    let args = [
        &["bench", "handshake", "--target", target, "--json"][..],
        args,
    ]
    .concat();
    let (code, stdout, stderr) = run_corral(&args, &[]);
    let report =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (code, report)
}

fn target(corral: &Corral) -> String {
    format!("127.0.0.1:{}", corral.https_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_tunnel_benches_report_json() {
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

/// A pinned corral answers every name with its one certificate: each of those handshakes is a
/// fallback with a rate and percentiles, the certificate served is named, and the server's CPU per
/// handshake is read from /proc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_server_s_fallbacks_are_timed_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let pinned = Corral::start_in(
        dir.path(),
        &[],
        &[("CATTLE_SERVER_URL", "https://pinned.lab.test")],
    )
    .unwrap();
    let pinned_target = target(&pinned);
    let pid = pinned.pid().to_string();
    let args = [
        "--insecure",
        "--unique-sni",
        "x.lab.test",
        "--count",
        "300",
        "--server-pid",
        &pid,
    ];
    let (code, report) = handshake(
        &target(&pinned),
        &[&args[..], &["--allow-fallback"]].concat(),
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        (report["ok"].as_u64(), report["fallback"].as_u64()),
        (Some(0), Some(300)),
        "{report}"
    );
    assert!(
        report["fallback_latency_us"]["p50"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(
        report["fallback_per_second"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    let served: Vec<&String> = report["served_instead"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(served.len(), 1, "{report}");
    assert!(
        served[0].contains("DNS:pinned.lab.test") && served[0].contains("cattle-ca"),
        "{served:?}"
    );
    assert_eq!(report["full"], 300);
    let signed: u64 = report["signature_schemes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(signed, 300, "{report}");
    assert!(
        report["server"]["cpu_us_per_handshake"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(report["inputs"]["sni"], "unique:x.lab.test");
    assert_eq!(report["inputs"]["count"], 300);
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));

    // Without --allow-fallback the run fails, and says what was served and why that happens.
    let plain = [
        &["bench", "handshake", "--target", &pinned_target][..],
        &args[..],
    ]
    .concat();
    let (code, text, _) = run_corral(&plain, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("fallback: "), "{text}");
    assert!(text.contains("does not cover the name sent"), "{text}");
    assert!(text.contains("corral once server-url is pinned"), "{text}");
    assert!(text.contains("server (pid "), "{text}");
}

/// nginx with a certificate from `openssl req -x509` (CA:TRUE): trusted as itself with --ca, as
/// curl --cacert trusts it; a certificate refused says why in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_self_signed_certificate_verifies_as_curl_verifies_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
         -subj /CN=nginx.lab.test -addext subjectAltName=DNS:nginx.lab.test \
         -keyout {} -out {} 2>/dev/null",
        path("key.pem"),
        path("cert.pem")
    ));
    let text = sh(&format!(
        "openssl x509 -in {} -noout -text",
        path("cert.pem")
    ));
    assert!(text.contains("CA:TRUE"), "{text}");
    let cert = std::fs::read_to_string(path("cert.pem")).unwrap();
    let key = std::fs::read_to_string(path("key.pem")).unwrap();
    let nginx = Nginx::answering(&cert, &key);
    let target = nginx.addr().to_string();
    let port = nginx.addr().port();
    let curl = sh(&format!(
        "curl -sS --noproxy '*' --cacert {} --resolve nginx.lab.test:{port}:127.0.0.1 https://nginx.lab.test:{port}/",
        path("cert.pem")
    ));
    assert_eq!(curl, "ok");

    let ca = path("cert.pem");
    let (code, report) = handshake(
        &target,
        &[
            "--ca",
            &ca,
            "--sni",
            "nginx.lab.test",
            "--count",
            "50",
            "--request",
            "/",
        ],
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        (report["ok"].as_u64(), report["failed"].as_u64()),
        (Some(50), Some(0)),
        "{report}"
    );
    assert_eq!(report["inputs"]["verify"], format!("ca:{ca}"));

    // Without SNI nginx serves the same certificate, which does not name the IP: a fallback.
    let (code, report) = handshake(&target, &["--ca", &ca, "--no-sni", "--count", "10"]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["fallback"], 10, "{report}");
    let served = report["served_instead"].to_string();
    assert!(served.contains("DNS:nginx.lab.test"), "{served}");

    // Another self-signed certificate in --ca: refused, and the reason is in words.
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
         -subj /CN=other -keyout {} -out {} 2>/dev/null",
        path("other-key.pem"),
        path("other.pem")
    ));
    let (code, report) = handshake(
        &target,
        &[
            "--ca",
            &path("other.pem"),
            "--sni",
            "nginx.lab.test",
            "--count",
            "5",
        ],
    );
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(
        report["failures"],
        serde_json::json!({
            "tls: certificate refused: a CA certificate (CA:TRUE) served as the server's own, and not itself in --ca": 5
        }),
        "{report}"
    );
}

/// An open loop reports what it scheduled and what it started, and a rate it could not keep fails
/// the run unless allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_that_cannot_keep_its_rate_says_so_and_fails() {
    let corral = Corral::start(&[]);
    let target = target(&corral);
    let fast = [
        "--insecure",
        "--sni",
        "rate.lab.test",
        "--rate",
        "20000",
        "--concurrency",
        "1",
        "--duration",
        "1s",
    ];
    let (code, report) = handshake(&target, &fast);
    assert_eq!(code, Some(1), "{report}");
    let open = &report["open_loop"];
    assert_eq!(open["reached"], false, "{report}");
    let (scheduled, started) = (
        open["scheduled"].as_u64().unwrap(),
        open["started"].as_u64().unwrap(),
    );
    assert!(scheduled >= 15_000 && started < scheduled / 2, "{report}");
    assert_eq!(
        started,
        report["ok"].as_u64().unwrap() + report["failed"].as_u64().unwrap()
    );
    let (code, _) = handshake(&target, &[&fast[..], &["--allow-below-rate"]].concat());
    assert_eq!(code, Some(0));

    let (code, report) = handshake(
        &target,
        &[
            "--insecure",
            "--sni",
            "rate.lab.test",
            "--rate",
            "40",
            "--duration",
            "1s",
        ],
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["open_loop"]["reached"], true, "{report}");
    assert!(
        report["open_loop"]["started"].as_u64().unwrap() >= 39,
        "{report}"
    );
}

/// `--resumption on` counts full and resumed handshakes apart (TLS 1.3 tickets are read after the
/// handshake so that the next connection can use one), with what each negotiated; a warm-up is
/// not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_handshakes_are_counted_apart_and_a_warmup_is_not_counted() {
    let corral = Corral::start(&[]);
    let target = target(&corral);
    for (tls, version) in [("1.3", "TLSv1_3"), ("1.2", "TLSv1_2")] {
        let args = [
            "--insecure",
            "--sni",
            "resume.lab.test",
            "--count",
            "100",
            "--concurrency",
            "1",
            "--tls",
            tls,
            "--resumption",
            "on",
        ];
        let (code, report) = handshake(&target, &args);
        assert_eq!(code, Some(0), "{report}");
        let (full, resumed) = (
            report["full"].as_u64().unwrap(),
            report["resumed"].as_u64().unwrap(),
        );
        assert!(
            full >= 1 && resumed >= 90 && full + resumed == 100,
            "{tls}: {report}"
        );
        let negotiated = report["negotiated"].as_object().unwrap();
        assert!(
            negotiated.keys().all(|k| k.starts_with(version)),
            "{report}"
        );
        assert_eq!(report["inputs"]["resumption"], true);
    }
    let (code, report) = handshake(
        &target,
        &[
            "--insecure",
            "--sni",
            "resume.lab.test",
            "--count",
            "20",
            "--resumption",
            "off",
        ],
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        (report["full"].as_u64(), report["resumed"].as_u64()),
        (Some(20), Some(0))
    );

    let (code, report) = handshake(
        &target,
        &[
            "--insecure",
            "--sni",
            "resume.lab.test",
            "--count",
            "20",
            "--warmup",
            "1s",
        ],
    );
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["ok"], 20, "{report}");
    assert_eq!(report["inputs"]["warmup_s"], 1.0);

    // A reader that goes away before the report is written (`| head`, `| true`) is no panic.
    let errors = tempfile::NamedTempFile::new().unwrap();
    sh(&format!(
        "sleep 0 | {} bench handshake --target {target} --insecure --count 5 2>{} | true",
        common::corral_bin(),
        errors.path().display()
    ));
    let stderr = std::fs::read_to_string(errors.path()).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");

    for (flag, value) in [("--count", "0"), ("--duration", "0s")] {
        let (code, _, stderr) = run_corral(
            &[
                "bench",
                "handshake",
                "--target",
                &target,
                "--insecure",
                flag,
                value,
            ],
            &[],
        );
        assert_eq!(code, Some(1), "{flag}");
        assert!(
            stderr.contains(&format!("{flag} must be more than 0")),
            "{stderr}"
        );
    }
}

/// `corral bench tunnel --server …` measures a running corral with its agents: requests through the
/// cluster proxy against `/ping`, and a bulk download through a node agent's tunnel against direct
/// TLS. A wrong token is an error, not a figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_bench_measures_a_running_deployment() {
    let lab = Lab::start().await;
    let _agent = lab.simulated_agents_at(&lab.server(), &[&lab.registration], 1);
    let _node_agent = lab.node_agents("bench-node", 1);
    lab.wait_connected(true).await;
    let nodes_path = format!("/v3/nodes?clusterId={}", lab.cluster);
    let deadline = Instant::now() + Duration::from_secs(20);
    let node = loop {
        let nodes = body(&request(lab.addr, "GET", &nodes_path, &[&lab.auth()], None).await);
        let active = nodes["data"]
            .as_array()
            .and_then(|d| d.iter().find(|n| n["state"] == "active"))
            .and_then(|n| n["id"].as_str())
            .map(str::to_string);
        if let Some(id) = active {
            break id.split_once(':').unwrap().1.to_string();
        }
        assert!(Instant::now() < deadline, "no node agent: {nodes}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let server = lab.server();
    let ca = lab.ca_file.path().to_str().unwrap().to_string();
    let run = |token: &str| {
        run_corral(
            &[
                "bench",
                "tunnel",
                "--server",
                &server,
                "--token",
                token,
                "--cluster",
                &lab.cluster,
                "--node",
                &node,
                "--ca",
                &ca,
                "--streams",
                "40",
                "--megabytes",
                "8",
                "--rounds",
                "2",
                "--json",
            ],
            &[],
        )
    };
    let (code, stdout, stderr) = run(&lab.token);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    eprintln!("{report:#}");
    assert_eq!(report["requests"], 40);
    assert!(report["ping_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["proxied_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["proxied_latency_us"]["p50"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["bulk"]["megabytes"], 8);
    assert!(
        report["bulk"]["node_proxy_mib_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(report["bulk"]["ratio"].as_f64().unwrap() > 0.0, "{report}");

    let (code, _, stderr) = run("token-wrong:secret");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("401"), "{stderr}");
}
