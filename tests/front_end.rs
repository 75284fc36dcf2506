//! The TLS front end end to end: the CA, minting on first contact, both certificate modes and CA
//! profiles, the endpoints and the HTTP port, driven with rustls, curl and openssl.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::hello::{self, Answer, Hello};
use common::{
    Corral, get, plain, sans, serial, sh, sha256_hex, subject, temp_file, tls_connect,
    tls_connect_from,
};

/// `openssl s_client` against corral with strict verification; returns its output.
fn s_client(connect: &str, args: &[&str], ca_file: &std::path::Path) -> String {
    let output = Command::new("timeout")
        .args([
            "20",
            "openssl",
            "s_client",
            "-connect",
            connect,
            "-x509_strict",
        ])
        .arg("-CAfile")
        .arg(ca_file)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[tokio::test]
async fn ca_checksum_is_the_same_everywhere() {
    let corral = Corral::start(&[]);
    let body = corral.cacerts().await;
    assert!(body.starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(body.ends_with("-----END CERTIFICATE-----\n") && !body.ends_with("\n\n"));
    let checksum = sha256_hex(body.as_bytes());

    let logged = format!("CA checksum: {checksum}");
    assert!(
        corral.logs().iter().any(|l| l.ends_with(&logged)),
        "{:?}",
        corral.logs()
    );

    let dir = corral.data_dir.to_str().unwrap().to_string();
    let (code, printed, _) = common::run_corral(&["ca", "checksum", "--data-dir", &dir], &[]);
    assert_eq!((code, printed.trim()), (Some(0), checksum.as_str()));

    // Exactly the agents' pipelines.
    let port = corral.https_port;
    let via_cacerts = sh(&format!(
        "curl -sk https://127.0.0.1:{port}/cacerts | sha256sum"
    ));
    let via_setting = sh(&format!(
        "curl -sk https://127.0.0.1:{port}/v3/settings/cacerts | jq -r .value | sha256sum"
    ));
    assert_eq!(via_cacerts, format!("{checksum}  -"));
    assert_eq!(via_setting, format!("{checksum}  -"));
}

#[tokio::test]
async fn rustls_and_curl_verify_a_minted_leaf_against_the_ca() {
    let corral = Corral::start(&[]);
    let ca = corral.cacerts().await;
    let addr = corral.https("127.0.0.1");
    let response = get(addr, Some("alpha.lab.test"), Some(&ca), "/ping").await;
    assert_eq!((response.status, response.body.as_str()), (200, "pong"));

    let ca_file = temp_file(&ca);
    let port = corral.https_port;
    let out = sh(&format!(
        "curl -sS --cacert {} --resolve alpha.lab.test:{port}:127.0.0.1 https://alpha.lab.test:{port}/ping",
        ca_file.path().display()
    ));
    assert_eq!(out, "pong");

    // A name the CA never signed for is not accepted by a verifying client.
    let handshake = tls_connect(addr, Some("alpha.lab.test"), Some(&ca))
        .await
        .unwrap();
    assert_eq!(sans(handshake.leaf()), ["DNS:alpha.lab.test"]);
    assert_eq!(handshake.chain.len(), 2, "chain is leaf + CA");
    assert_eq!(
        handshake.stream.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..])
    );
}

#[tokio::test]
async fn openssl_strict_accepts_dns_ipv4_and_ipv6_leaves() {
    let corral = Corral::start(&[]);
    let ca_file = temp_file(&corral.cacerts().await);
    let port = corral.https_port;
    let cases = [
        (
            format!("127.0.0.1:{port}"),
            vec![
                "-servername",
                "alpha.lab.test",
                "-verify_hostname",
                "alpha.lab.test",
            ],
        ),
        (
            format!("127.0.0.7:{port}"),
            vec!["-noservername", "-verify_ip", "127.0.0.7"],
        ),
        (
            format!("[::1]:{port}"),
            vec!["-noservername", "-verify_ip", "::1"],
        ),
    ];
    for (connect, args) in cases {
        let mut args = args;
        args.push("-verify_return_error");
        let out = s_client(&connect, &args, ca_file.path());
        assert!(
            out.contains("Verify return code: 0 (ok)"),
            "{connect} {args:?}\n{out}"
        );
    }

    // The leaf alone, through `openssl verify` with the strict checks and the server purpose.
    let handshake = tls_connect(corral.https("127.0.0.1"), Some("beta.lab.test"), None)
        .await
        .unwrap();
    let leaf = temp_file(&pem(handshake.leaf()));
    let verified = sh(&format!(
        "openssl verify -x509_strict -purpose sslserver -CAfile {} {}",
        ca_file.path().display(),
        leaf.path().display()
    ));
    assert!(verified.ends_with(": OK"), "{verified}");
    let text = sh(&format!(
        "openssl x509 -noout -text -in {}",
        leaf.path().display()
    ));
    for needle in [
        "Subject Key Identifier",
        "Authority Key Identifier",
        "TLS Web Server Authentication",
        "Subject: O = dynamic, CN = dynamic",
        "DNS:beta.lab.test",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
}

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<_> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// Whether `openssl s_client` completed its handshake. It prints `Verify return code: 0 (ok)`, and
/// for TLS 1.3 even a cipher, after a handshake the server refused: only a received certificate and
/// the absence of an alert tell.
fn handshake_completed(out: &str) -> bool {
    out.contains("-----BEGIN CERTIFICATE-----") && !out.contains("SSL alert number")
}

#[tokio::test]
async fn sni_is_folded_and_names_rustls_cannot_parse_end_the_handshake() {
    let corral = Corral::start(&[]);
    let ca_file = temp_file(&corral.cacerts().await);
    let addr = corral.https("127.0.0.1");
    let connect = format!("127.0.0.1:{}", corral.https_port);
    let out = s_client(
        &connect,
        &[
            "-servername",
            "ALPHA.Lab.Test",
            "-verify_hostname",
            "alpha.lab.test",
        ],
        ca_file.path(),
    );
    assert!(handshake_completed(&out), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");

    // Not DNS names: rustls refuses the hello with illegal_parameter before corral sees a name.
    let long_label = format!("{}.test", "a".repeat(64));
    let hostile: [&[u8]; 9] = [
        b"*",
        b"*.lab.test",
        b"..",
        long_label.as_bytes(),
        b"a\0b.test",
        b"a b.test",
        b"[::1]",
        b"1.2.3.4.5",
        b"bad_label-.-x",
    ];
    for name in hostile {
        let answer = Hello::tls13(None).with_sni_bytes(name).send(addr).await;
        assert_eq!(
            answer,
            Answer::Alert(hello::ILLEGAL_PARAMETER),
            "{:?}",
            String::from_utf8_lossy(name)
        );
    }
    // The same hello with a DNS name completes: the alerts above are about the names alone.
    let fine = Hello::tls13(None).with_sni_bytes(b"fine.lab.test");
    assert_eq!(fine.send(addr).await, Answer::ServerHello);
    let handshake = tls_connect(addr, None, None).await.unwrap();
    assert_eq!(sans(handshake.leaf()), ["IP:127.0.0.1"]);
    assert!(
        !corral
            .logs()
            .iter()
            .any(|l| l.contains("minted certificate for *")),
        "nothing minted for a refused name"
    );
}

/// Hellos that rustls will refuse once it has read them (a TLS 1.1 hello; ALPN `h2` only; no cipher
/// suite in common) never make corral mint; the same hellos made whole do.
#[tokio::test]
async fn hellos_that_cannot_complete_mint_nothing() {
    let corral = Corral::start(&[]);
    let addr = corral.https("127.0.0.1");
    let minted = || async move { common::metric(addr, "corral_certificates_minted_total").await };
    // Warm up: the metrics connection itself mints the certificate for 127.0.0.1.
    let before = minted().await;

    let tls11 = hello::Hello {
        legacy_version: hello::TLS11,
        versions: None,
        suites: vec![hello::ECDHE_ECDSA_AES128_GCM_SHA256],
        ..Hello::tls13(Some("old.lab.test"))
    };
    assert_eq!(
        tls11.send(addr).await,
        Answer::Alert(hello::PROTOCOL_VERSION)
    );
    // TLS 1.2 hellos, whose refusals come as plain alerts (TLS 1.3 encrypts them).
    let tls12 = hello::Hello {
        legacy_version: hello::TLS12,
        ..tls11.clone()
    };
    let h2_only = hello::Hello {
        alpn: Some(vec![b"h2"]),
        sni: Some(b"h2only.lab.test".to_vec()),
        ..tls12.clone()
    };
    assert_eq!(
        h2_only.send(addr).await,
        Answer::Alert(hello::NO_APPLICATION_PROTOCOL)
    );
    let no_suite = hello::Hello {
        suites: vec![0xc02f],
        sni: Some(b"nosuite.lab.test".to_vec()),
        ..tls12.clone()
    };
    assert_eq!(
        no_suite.send(addr).await,
        Answer::Alert(hello::HANDSHAKE_FAILURE)
    );
    // Real clients: TLS 1.1 only, and TLS 1.3 with ALPN h2 only.
    for (flags, name) in [
        (&["-tls1_1"][..], "old2.lab.test"),
        (&["-alpn", "h2"][..], "h2.lab.test"),
    ] {
        let out = Command::new("timeout")
            .args(["20", "openssl", "s_client", "-servername", name])
            .args(["-connect", &addr.to_string()])
            .args(flags)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!handshake_completed(&out), "{flags:?}: {out}");
    }
    assert_eq!(
        minted().await,
        before,
        "nothing minted for hellos that fail"
    );
    let minted_for = |name: &str| {
        corral
            .logs()
            .iter()
            .any(|l| l.contains(&format!("minted certificate for {name}")))
    };
    for name in [
        "old.lab.test",
        "h2only.lab.test",
        "nosuite.lab.test",
        "old2.lab.test",
        "h2.lab.test",
    ] {
        assert!(!minted_for(name), "{name}");
    }

    // The same hellos, whole: TLS 1.2, and both ALPN protocols offered.
    assert_eq!(tls12.send(addr).await, Answer::ServerHello);
    let both = hello::Hello {
        alpn: Some(vec![b"h2", b"http/1.1"]),
        ..h2_only
    };
    assert_eq!(both.send(addr).await, Answer::ServerHello);
    assert_eq!(minted().await, before + 2.0);
}

#[tokio::test]
async fn concurrent_first_handshakes_mint_once() {
    let corral = Corral::start(&[]);
    let addr = corral.https("127.0.0.1");
    let handshakes = (0..200).map(|_| {
        tokio::spawn(async move {
            let handshake = tls_connect(addr, Some("burst.lab.test"), None)
                .await
                .unwrap();
            handshake.leaf().to_vec()
        })
    });
    let mut leaves = BTreeSet::new();
    for task in handshakes {
        leaves.insert(task.await.unwrap());
    }
    assert_eq!(leaves.len(), 1, "every client got the same leaf");
    let mints = corral
        .logs()
        .iter()
        .filter(|l| l.contains("minted certificate for burst.lab.test"))
        .count();
    assert_eq!(mints, 1);
}

#[tokio::test]
async fn restart_keeps_the_ca_and_its_checksum() {
    let corral = Corral::start(&[]);
    let before = corral.cacerts().await;
    let dir = corral.data_dir.clone();
    let _tmp = corral.stop();
    let again = Corral::start_in(&dir, &[], &[]).unwrap();
    assert_eq!(again.cacerts().await, before);
    assert!(
        again
            .logs()
            .iter()
            .any(|l| l.contains("Loaded CA CN=cattle-ca,O=the-ranch"))
    );
}

#[tokio::test]
async fn refused_names_still_complete_the_handshake() {
    let corral = Corral::start(&["--allowed-names", "*.lab.test"]);
    let ca = corral.cacerts().await;
    let addr = corral.https("127.0.0.1");
    let allowed = tls_connect(addr, Some("ok.lab.test"), Some(&ca))
        .await
        .unwrap();
    assert_eq!(sans(allowed.leaf()), ["DNS:ok.lab.test"]);

    // Outside the allow-list: the certificate for the local IP.
    let refused = tls_connect(addr, Some("evil.example"), None).await.unwrap();
    assert_eq!(sans(refused.leaf()), ["IP:127.0.0.1"]);
    let response = get(addr, Some("evil.example"), None, "/ping").await;
    assert_eq!(response.body, "pong");
    assert!(corral.logs().iter().any(|l| {
        l.contains("SNI refused (not in allowed-names); serving the certificate for 127.0.0.1")
    }));
}

/// Over its mint rate, a client gets the certificate for the local IP, or, when that needs a mint
/// too, the fallback certificate; another client still has its own budget.
#[tokio::test]
async fn each_client_has_its_own_mint_rate() {
    let corral = Corral::start(&["--mint-rate", "0", "--mint-rate-per-client", "1"]);
    let addr = corral.https("127.0.0.1");
    let mut own = 0;
    let mut fallback = 0;
    for i in 0..5 {
        let name = format!("c{i}.lab.test");
        let handshake = tls_connect(addr, Some(&name), None).await.unwrap();
        let names = sans(handshake.leaf());
        own += usize::from(names == [format!("DNS:{name}")]);
        fallback += usize::from(names.contains(&"DNS:localhost".to_string()));
    }
    assert!((1..5).contains(&own), "{own} of 5 minted within a second");
    assert!(fallback >= 1, "the local IP needed a mint too: fallback");
    let other = tls_connect_from(Some([127, 0, 0, 2].into()), addr, Some("d.lab.test"), None)
        .await
        .unwrap();
    assert_eq!(
        sans(other.leaf()),
        ["DNS:d.lab.test"],
        "another client's budget"
    );
    let metrics = get(addr, None, None, "/metrics").await.body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("corral_names_refused_total{reason=\"client_rate\"}")),
        "{metrics}"
    );
    let logs = corral.logs().join("\n");
    assert!(
        logs.contains("refused (mint-rate-per-client exceeded); serving the fallback certificate (localhost, 127.0.0.1, ::1"),
        "the log names the certificate served: {logs}"
    );
}

#[tokio::test]
async fn mint_rate_limits_new_names() {
    let corral = Corral::start(&["--mint-rate", "1"]);
    let addr = corral.https("127.0.0.1");
    let mut own = 0;
    for i in 0..5 {
        let name = format!("n{i}.lab.test");
        let handshake = tls_connect(addr, Some(&name), None).await.unwrap();
        own += usize::from(sans(handshake.leaf()) == [format!("DNS:{name}")]);
    }
    assert!(
        (1..5).contains(&own),
        "{own} of 5 names minted within one second"
    );
}

#[tokio::test]
async fn dynamiclistener_profile_names_the_ca_like_current_rancher() {
    let corral = Corral::start(&["--ca-profile", "dynamiclistener"]);
    let handshake = tls_connect(corral.https("127.0.0.1"), Some("a.lab.test"), None)
        .await
        .unwrap();
    let issuer = subject(&handshake.chain[1]);
    assert!(
        issuer.starts_with("O=dynamiclistener-org, CN=dynamiclistener-ca@"),
        "{issuer}"
    );
    assert_eq!(subject(handshake.leaf()), "O=dynamic, CN=dynamic");
}

#[tokio::test]
async fn shared_mode_accumulates_names_in_one_certificate() {
    let corral = Corral::start(&["--cert-mode", "shared", "--max-names", "7"]);
    let ca = corral.cacerts().await;
    let addr = corral.https("127.0.0.1");
    let first = tls_connect(addr, Some("one.lab.test"), Some(&ca))
        .await
        .unwrap();
    let names = sans(first.leaf());
    for initial in [
        "DNS:localhost",
        "DNS:rancher.cattle-system",
        "IP:127.0.0.1",
        "DNS:one.lab.test",
    ] {
        assert!(
            names.contains(&initial.to_string()),
            "{initial} missing from {names:?}"
        );
    }
    let second = tls_connect(addr, Some("two.lab.test"), Some(&ca))
        .await
        .unwrap();
    let grown = sans(second.leaf());
    assert!(
        grown.contains(&"DNS:one.lab.test".into()) && grown.contains(&"DNS:two.lab.test".into())
    );
    assert_eq!(
        public_key(first.leaf()),
        public_key(second.leaf()),
        "re-signed with the same key"
    );
    assert_ne!(serial(first.leaf()), serial(second.leaf()));

    // Fill up to the cap; later names are refused but the handshake still succeeds.
    for i in 0..10 {
        tls_connect(addr, Some(&format!("fill{i}.lab.test")), None)
            .await
            .unwrap();
    }
    let capped = tls_connect(addr, Some("late.lab.test"), None)
        .await
        .unwrap();
    assert_eq!(sans(capped.leaf()).len(), 7);

    // Restored on restart: the same certificate, byte for byte.
    let dir = corral.data_dir.clone();
    let _tmp = corral.stop();
    let again =
        Corral::start_in(&dir, &["--cert-mode", "shared", "--max-names", "7"], &[]).unwrap();
    let after = tls_connect(again.https("127.0.0.1"), Some("one.lab.test"), Some(&ca))
        .await
        .unwrap();
    assert_eq!(after.leaf(), capped.leaf());
}

fn public_key(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.public_key().raw.to_vec()
}

#[tokio::test]
async fn endpoints_answer_like_rancher() {
    let corral = Corral::start(&[]);
    let addr = corral.https("127.0.0.1");
    let ping = get(addr, None, None, "/ping").await;
    assert_eq!((ping.status, ping.body.as_str()), (200, "pong"));
    assert_eq!(
        ping.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    for (name, value) in [
        ("X-Api-Cattle-Auth", "false"),
        ("X-Content-Type-Options", "nosniff"),
        ("Cache-Control", "no-cache, no-store, must-revalidate"),
    ] {
        assert!(
            ping.headers.contains(&format!("{name}: {value}")),
            "{name}: {:?}",
            ping.headers
        );
    }
    assert_eq!(get(addr, None, None, "/healthz").await.body, "ok");
    assert_eq!(get(addr, None, None, "/healthz/ping").await.body, "ok");
    assert_eq!(
        get(addr, None, None, "/healthz?verbose").await.body,
        "[+]ping ok\nhealthz check passed\n"
    );

    let cacerts = get(addr, None, None, "/cacerts").await;
    assert!(
        cacerts
            .headers
            .contains(&"Content-Type: text/plain".to_string()),
        "{:?}",
        cacerts.headers
    );
    let tls = tls_connect(addr, None, None).await.unwrap();
    let posted = common::exchange(
        tls.stream,
        &format!("POST /cacerts HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(
        (posted.status, posted.body.as_str()),
        (200, cacerts.body.as_str())
    );

    let setting = get(addr, Some("rancher.lab.test"), None, "/v3/settings/cacerts").await;
    assert_eq!(setting.header("Content-Type"), Some("application/json"));
    assert_eq!(
        setting.header("Expires"),
        Some("Wed 24 Feb 1982 18:42:00 GMT")
    );
    let base = format!("https://rancher.lab.test:{}", addr.port());
    assert_eq!(
        setting.header("X-Api-Schemas"),
        Some(format!("{base}/v3/schemas").as_str())
    );
    assert!(setting.body.ends_with("}\n"));
    let json: serde_json::Value = serde_json::from_str(&setting.body).unwrap();
    assert_eq!(json["value"].as_str().unwrap(), cacerts.body.trim_end());
    assert_eq!(json["links"]["self"], format!("{base}/v3/settings/cacerts"));
    for (key, value) in [
        ("id", "cacerts"),
        ("type", "setting"),
        ("baseType", "setting"),
        ("source", "db"),
        ("default", ""),
    ] {
        assert_eq!(json[key], value, "{key}");
    }
    assert_eq!(json["customized"], true);
    let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "keys are sorted as Go's encoder writes them");
    let missing = get(addr, None, None, "/nope").await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (404, "404 page not found\n")
    );
}

#[tokio::test]
async fn http_port_follows_rancher_redirect_rules() {
    let corral = Corral::start(&[]);
    let http = corral.http();
    let redirect = plain(
        http,
        "GET /dashboard/?a=1 HTTP/1.1\r\nHost: rancher.lab.test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(redirect.status, 302);
    assert_eq!(
        redirect.header("Location"),
        Some("https://rancher.lab.test:8443/dashboard/?a=1")
    );
    assert_eq!(
        redirect.body,
        "<a href=\"https://rancher.lab.test:8443/dashboard/?a=1\">Found</a>.\n\n"
    );
    assert_eq!(
        redirect.header("X-Api-Cattle-Auth"),
        None,
        "redirects lack Rancher's headers"
    );

    // A request for corral's own HTTP port goes to its own HTTPS port, whatever the ports are.
    let own = format!(
        "GET /x HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        corral.http_port
    );
    let own = plain(http, &own).await;
    let expected = format!("https://127.0.0.1:{}/x", corral.https_port);
    assert_eq!(own.header("Location"), Some(expected.as_str()));

    let no_port = plain(
        http,
        "HEAD /x HTTP/1.1\r\nHost: rancher.lab.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        (no_port.status, no_port.header("Location")),
        (302, Some("https://rancher.lab.test/x"))
    );

    let post = plain(
        http,
        "POST /v3/x HTTP/1.1\r\nHost: h:80\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((post.status, post.body.as_str()), (400, "Use HTTPS\n"));
    assert_eq!(post.header("X-Content-Type-Options"), Some("nosniff"));

    for path in ["/ping", "/healthz", "/healthz/ping"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: h:80\r\nConnection: close\r\n\r\n");
        let response = plain(http, &request).await;
        assert_eq!(response.status, 200, "{path} passes through");
        assert_eq!(response.header("X-Api-Cattle-Auth"), Some("false"));
    }
    let forwarded = plain(
        http,
        "GET /cacerts HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(forwarded.status, 200);
    assert!(forwarded.body.starts_with("-----BEGIN CERTIFICATE-----"));
    let acme = plain(
        http,
        "GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(acme.status, 404, "passes through to the router");
}

#[tokio::test]
async fn stalled_handshakes_are_closed_by_the_timeout() {
    use tokio::io::AsyncReadExt;
    let corral = Corral::start(&["--handshake-timeout", "1"]);
    let mut idle = tokio::net::TcpStream::connect(corral.https("127.0.0.1"))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(15), idle.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the server closed the stalled connection"
    );
    // And a real client is still served.
    assert_eq!(
        get(corral.https("127.0.0.1"), None, None, "/ping")
            .await
            .body,
        "pong"
    );
}

#[tokio::test]
async fn keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let corral = Corral::start(&[]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&corral.data_dir), 0o700);
    assert_eq!(mode(&corral.data_dir.join("ca.key")), 0o600);
    assert_eq!(mode(&corral.data_dir.join("leaf.key")), 0o600);
    assert_eq!(mode(&corral.data_dir.join("ca.crt")), 0o644);

    // Keys found readable by others are narrowed, with a warning; temporary files that a crash left
    // mid-write (they may hold token hashes) are removed.
    let dir = corral.data_dir.clone();
    let tmp = corral.stop();
    for key in ["ca.key", "leaf.key"] {
        std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let stale = dir.join(".clusters.json.tmp-999999");
    std::fs::write(&stale, b"{\"clusters\":[]}").unwrap();
    // Left by a crash a while ago (a file just created may be a write about to lock it).
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    let again = Corral::start_in(&dir, &[], &[]).unwrap();
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    assert_eq!(mode(&dir.join("leaf.key")), 0o600);
    assert!(!stale.exists(), "the stale temporary file is removed");
    let logs = again.logs().join("\n");
    assert!(
        logs.contains("ca.key had mode 0644; set it to 0600"),
        "{logs}"
    );
    assert!(logs.contains(".clusters.json.tmp-999999"), "{logs}");
    drop((again, tmp));
}

#[tokio::test]
async fn shared_mode_learns_ip_host_headers_from_non_browsers_only() {
    let corral = Corral::start(&["--cert-mode", "shared"]);
    let addr = corral.https("127.0.0.1");
    for (host, agent) in [
        ("10.9.8.7", "curl/8"),
        ("10.6.5.4:8443", "Mozilla/5.0 (X11)"),
    ] {
        let tls = tls_connect(addr, None, None).await.unwrap();
        let request = format!(
            "GET /ping HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(common::exchange(tls.stream, &request).await.body, "pong");
    }
    let names = sans(tls_connect(addr, None, None).await.unwrap().leaf());
    assert!(names.contains(&"IP:10.9.8.7".to_string()), "{names:?}");
    assert!(
        !names.contains(&"IP:10.6.5.4".to_string()),
        "browsers add nothing: {names:?}"
    );
}

#[tokio::test]
async fn metrics_count_handshakes_mints_and_refusals() {
    let corral = Corral::start(&["--allowed-names", "*.lab.test"]);
    let addr = corral.https("127.0.0.1");
    tls_connect(addr, Some("counted.lab.test"), None)
        .await
        .unwrap();
    tls_connect(addr, Some("refused.example"), None)
        .await
        .unwrap();
    let text = get(addr, None, None, "/metrics").await.body;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert!(value("corral_tls_handshakes_total{result=\"ok\"}") >= 2.0);
    assert!(
        value("corral_certificates_minted_total") >= 2.0,
        "the name and the local IP"
    );
    assert_eq!(
        value("corral_names_refused_total{reason=\"not_allowed\"}"),
        1.0
    );
    assert!(value("corral_certificate_cache_entries") >= 2.0);
    assert!(value("process_resident_memory_bytes") > 0.0);
}

#[tokio::test]
async fn session_resumption_is_on_by_default_and_can_be_turned_off() {
    use rustls::HandshakeKind;
    async fn second_handshake(addr: std::net::SocketAddr) -> Option<HandshakeKind> {
        let config = corral::client::tls_insecure(&[b"http/1.1"]);
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut kind = None;
        for _ in 0..2 {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("resume.lab.test").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            // Read the response so the client has processed the session tickets.
            let response = common::exchange(
                &mut tls,
                "GET /ping HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert_eq!(response.body, "pong");
            kind = tls.get_ref().1.handshake_kind();
        }
        kind
    }
    let on = Corral::start(&[]);
    assert_eq!(
        second_handshake(on.https("127.0.0.1")).await,
        Some(HandshakeKind::Resumed)
    );
    let off = Corral::start(&["--session-tickets", "off"]);
    assert_eq!(
        second_handshake(off.https("127.0.0.1")).await,
        Some(HandshakeKind::Full)
    );
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let corral = Corral::start(&["--max-connections", "2", "--handshake-timeout", "2"]);
    let addr = corral.https("127.0.0.1");
    // Two clients that never send a ClientHello hold both slots…
    let _idle: Vec<_> =
        futures_util::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(addr))).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // …so a third client is not served while they last,
    let waiting = tokio::spawn(async move { get(addr, None, None, "/ping").await });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "served past the connection cap");
    // and is served once the handshake timeout has closed them.
    let response = tokio::time::timeout(std::time::Duration::from_secs(15), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.body, "pong");
}

/// A CA within 30 days of its end: the log says so at start, `/metrics` says when it ends, the
/// status page carries the warning; a fresh CA (ten years) warns of nothing.
#[tokio::test]
async fn a_ca_near_its_end_is_announced_in_the_log_metrics_and_status() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "5", "-subj", "/O=the-ranch/CN=cattle-ca"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args([
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        ])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.crt"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let corral = Corral::start_in(&dir, &[], &[]).expect("corral starts");
    let addr = corral.https("127.0.0.1");
    let status: serde_json::Value =
        serde_json::from_str(&get(addr, None, None, "/corral/status").await.body).unwrap();
    let warning = status["caWarning"].as_str().unwrap_or_default().to_string();
    // Five days from the second openssl ran: 4 whole days left, or 5 within that second.
    assert!(
        warning.contains("the CA (CN=cattle-ca,O=the-ranch) expires on")
            && (warning.contains("in 4 day(s)") || warning.contains("in 5 day(s)")),
        "{status}"
    );
    assert!(
        corral.logs().iter().any(|l| l.contains(&warning)),
        "{:?}",
        corral.logs()
    );
    let metrics = get(addr, None, None, "/metrics").await.body;
    let expiry: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("corral_ca_expiry_timestamp_seconds "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
        .unwrap_or_else(|| panic!("{metrics}"));
    let left = expiry - time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((4 * 86_400..=5 * 86_400).contains(&left), "{expiry}");

    let fresh = Corral::start(&[]);
    let status: serde_json::Value = serde_json::from_str(
        &get(fresh.https("127.0.0.1"), None, None, "/corral/status")
            .await
            .body,
    )
    .unwrap();
    assert!(status["caWarning"].is_null(), "{status}");
    assert!(
        status["caExpires"].as_str().unwrap().starts_with("20"),
        "{status}"
    );
}
