//! First-start setup through the API and the web page: bootstrap password, login, tokens, password
//! change, and server-url pinning one certificate for every client.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::webdriver::Browser;
use common::{Corral, HttpResponse, LOGIN, login, request, request_from, sans, sh, tls_connect};
use serde_json::{Value, json};

const NEW_PASSWORD: &str = "a-much-better-password";

fn bootstrap_password(corral: &Corral) -> String {
    corral
        .logs()
        .iter()
        .find_map(|l| l.split("Bootstrap Password: ").nth(1).map(str::to_string))
        .expect("the banner shows the bootstrap password")
}

async fn token(addr: SocketAddr, password: &str) -> String {
    let response = login(addr, "admin", password).await;
    assert_eq!(response.status, 201, "{}", response.body);
    json(&response)["token"].as_str().unwrap().to_string()
}

fn json(response: &HttpResponse) -> Value {
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{e}: {}", response.body))
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

async fn get_server_url(addr: SocketAddr, token: &str) -> Value {
    json(
        &request(
            addr,
            "GET",
            "/v3/settings/server-url",
            &[&bearer(token)],
            None,
        )
        .await,
    )
}

async fn put_server_url(addr: SocketAddr, token: &str, value: &str) -> HttpResponse {
    let body = serde_json::json!({ "value": value }).to_string();
    request(
        addr,
        "PUT",
        "/v3/settings/server-url",
        &[&bearer(token)],
        Some(&body),
    )
    .await
}

async fn change_password(addr: SocketAddr, token: &str, current: &str, new: &str) -> HttpResponse {
    let body = serde_json::json!({ "currentPassword": current, "newPassword": new }).to_string();
    request(
        addr,
        "POST",
        "/v3/users?action=changepassword",
        &[&bearer(token)],
        Some(&body),
    )
    .await
}

/// The leaf a client sending `sni` gets.
async fn leaf_for(addr: SocketAddr, sni: Option<&str>) -> Vec<u8> {
    tls_connect(addr, sni, None).await.unwrap().leaf().to_vec()
}

#[tokio::test]
async fn generated_bootstrap_password_is_logged_once_and_stored_hashed() {
    let corral = Corral::start(&[]);
    let password = bootstrap_password(&corral);
    assert_eq!(password.len(), 54);
    assert!(
        password
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
    );
    let logs = corral.logs().join("\n");
    for line in [
        "Welcome to Rancher",
        "A bootstrap password has been generated for your admin user.",
    ] {
        assert!(logs.contains(line), "{line}");
    }
    // The tests start corral with --https-port 0: the banner names the port really bound.
    assert!(
        logs.contains(&format!(
            ":{}/dashboard/?setup={password} to complete setup in the UI",
            corral.https_port
        )),
        "{logs}"
    );

    let addr = corral.https("127.0.0.1");
    let token = token(addr, &password).await;
    let (name, secret) = token.split_once(':').unwrap();
    assert!(name.starts_with("token-") && secret.len() == 54, "{token}");
    // Every file corral keeps: the admin's argon2 hash in its user file, no password or token
    // secret anywhere.
    // (The generated bootstrap password itself is kept until first login, as Rancher keeps it.)
    let stored = sh(&format!(
        "cat $(find {} -type f ! -name bootstrap-password)",
        corral.data_dir.display()
    ));
    let admin = sh(&format!("cat {}/users/*.json", corral.data_dir.display()));
    assert!(admin.contains("$argon2id$"), "{admin}");
    assert!(
        !stored.contains(&password) && !stored.contains(secret),
        "no secret stored in the clear"
    );
    assert!(
        !corral.logs().join("\n").contains(secret),
        "tokens are never logged"
    );
}

#[tokio::test]
async fn bootstrap_password_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let password = "lab-bootstrap-password";
    let corral = Corral::start_in(
        &dir.path().join("d"),
        &[],
        &[("CATTLE_BOOTSTRAP_PASSWORD", password)],
    )
    .unwrap();
    let logs = corral.logs().join("\n");
    assert!(
        logs.contains("/dashboard/ to complete setup in the UI"),
        "{logs}"
    );
    assert!(!logs.contains(password), "a given password is not logged");
    token(corral.https("127.0.0.1"), password).await;
    // The setup page tells where the password comes from, and has an icon for its tab.
    let status = json(
        &request(
            corral.https("127.0.0.1"),
            "GET",
            "/corral/status",
            &[],
            None,
        )
        .await,
    );
    assert_eq!(status["bootstrapPasswordGenerated"], false);
    let page = request(corral.https("127.0.0.1"), "GET", "/dashboard/", &[], None).await;
    assert!(
        page.body
            .contains("the CATTLE_BOOTSTRAP_PASSWORD corral was started with")
    );
    let icon = request(corral.https("127.0.0.1"), "GET", "/favicon.ico", &[], None).await;
    assert_eq!(
        (icon.status, icon.header("content-type")),
        (200, Some("image/svg+xml"))
    );
}

#[tokio::test]
async fn login_failures_are_401_and_rate_limited_per_client() {
    let corral = Corral::start(&[]);
    let addr = corral.https("127.0.0.1");
    let wrong = login(addr, "admin", "not-the-password").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(json(&wrong)["message"], "authentication failed");
    // Unknown users are not tracked per user: this is the per-client limit (a burst of 10).
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(login(addr, "nobody", "still-wrong").await.status);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        !corral.logs().join("\n").contains("still-wrong"),
        "attempted passwords are not logged"
    );
}

/// Five wrong passwords from one client make that client wait (even with the right password),
/// doubling; another client is not held up at all.
#[tokio::test]
async fn failed_logins_back_off_per_client_and_lock_nobody_else_out() {
    let corral = Corral::start(&[]);
    let addr = corral.https("127.0.0.1");
    let password = bootstrap_password(&corral);
    let login_from = |last: u8, password: String| async move {
        let body = serde_json::json!({ "username": "admin", "password": password }).to_string();
        let source = Some(std::net::IpAddr::from([127, 0, 0, last]));
        request_from(source, addr, "POST", LOGIN, &[], Some(&body)).await
    };
    for _ in 0..5 {
        assert_eq!(login_from(2, "guess".into()).await.status, 401);
    }
    let blocked = login_from(2, password.clone()).await;
    assert_eq!(blocked.status, 429, "{}", blocked.body);
    assert_eq!(blocked.header("retry-after"), Some("1"));
    let elsewhere = login_from(3, password.clone()).await;
    assert_eq!(elsewhere.status, 201, "another client: {}", elsewhere.body);
    // The first wait is one second; bounded retries.
    let mut status = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = login_from(2, password.clone()).await.status;
        if status == 201 {
            break;
        }
    }
    assert_eq!(status, 201, "the client may log in once its wait is over");
}

#[tokio::test]
async fn v1_login_with_json_and_cookie() {
    let corral = Corral::start(&[]);
    let addr = corral.https("127.0.0.1");
    let password = bootstrap_password(&corral);
    let body = |kind: &str| {
        serde_json::json!({"type": "localProvider", "username": "admin", "password": password, "responseType": kind})
            .to_string()
    };
    let as_json = request(addr, "POST", "/v1-public/login", &[], Some(&body("json"))).await;
    assert_eq!(as_json.status, 201);
    assert_eq!(json(&as_json)["type"], "token");

    let as_cookie = request(addr, "POST", "/v1-public/login", &[], Some(&body("cookie"))).await;
    assert_eq!(as_cookie.status, 200);
    let cookie = as_cookie.header("Set-Cookie").unwrap().to_string();
    assert!(
        cookie.starts_with("R_SESS=token-")
            && cookie.contains("HttpOnly")
            && cookie.contains("Secure"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap();
    let setting = request(
        addr,
        "GET",
        "/v3/settings/server-url",
        &[&format!("Cookie: {session}")],
        None,
    )
    .await;
    assert_eq!(setting.status, 200, "{}", setting.body);
    assert_eq!(setting.header("X-Api-Cattle-Auth"), Some("true"));
    assert_eq!(json(&setting)["source"], "default");
}

#[tokio::test]
async fn password_change_rules_and_first_login() {
    let corral = Corral::start(&[]);
    let addr = corral.https("127.0.0.1");
    let password = bootstrap_password(&corral);
    let first_login = || async {
        json(&request(addr, "GET", "/v3/settings/first-login", &[], None).await)["value"].clone()
    };
    assert_eq!(first_login().await, "true");

    let body =
        serde_json::json!({"currentPassword": password, "newPassword": NEW_PASSWORD}).to_string();
    let anonymous = request(
        addr,
        "POST",
        "/v3/users?action=changepassword",
        &[],
        Some(&body),
    )
    .await;
    assert_eq!(
        (anonymous.status, json(&anonymous)["message"].as_str()),
        (401, Some("must authenticate"))
    );

    let token = token(addr, &password).await;
    let short = change_password(addr, &token, &password, "short").await;
    assert_eq!(short.status, 422);
    assert!(
        json(&short)["message"]
            .as_str()
            .unwrap()
            .contains("at least 12")
    );
    assert_eq!(
        change_password(addr, &token, "wrong-current-pw", NEW_PASSWORD)
            .await
            .status,
        422
    );
    assert_eq!(
        change_password(addr, &token, &password, NEW_PASSWORD)
            .await
            .status,
        200
    );
    assert_eq!(first_login().await, "false");
    assert_eq!(
        login(addr, "admin", &password).await.status,
        401,
        "the old password is gone"
    );
    assert_eq!(login(addr, "admin", NEW_PASSWORD).await.status, 201);
}

#[tokio::test]
async fn server_url_pins_one_certificate_for_every_client() {
    let corral = Corral::start(&[]);
    let addr = corral.https("127.0.0.1");
    let password = bootstrap_password(&corral);

    // Before pinning: minted per name.
    assert_eq!(
        sans(&leaf_for(addr, Some("other.lab.test")).await),
        ["DNS:other.lab.test"]
    );

    let anonymous = request(
        addr,
        "PUT",
        "/v3/settings/server-url",
        &[],
        Some(r#"{"value":"https://pinned.lab.test"}"#),
    )
    .await;
    assert_eq!(anonymous.status, 401, "PUT before login");
    assert_eq!(
        request(addr, "GET", "/v3/settings/server-url", &[], None)
            .await
            .status,
        401
    );

    let token = token(addr, &password).await;
    for bad in [
        "pinned.lab.test",
        "http://pinned.lab.test",
        "https://pinned.lab.test/path",
        "https://*.lab.test",
    ] {
        let response = put_server_url(addr, &token, bad).await;
        assert_eq!(response.status, 422, "{bad}: {}", response.body);
        assert_eq!(json(&response)["code"], "InvalidBodyContent", "{bad}");
    }
    let set = put_server_url(addr, &token, "https://pinned.lab.test:8443").await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(
        (json(&set)["value"].as_str(), json(&set)["source"].as_str()),
        (Some("https://pinned.lab.test:8443"), Some("db"))
    );

    let pinned = leaf_for(addr, Some("pinned.lab.test")).await;
    assert_eq!(sans(&pinned), ["DNS:pinned.lab.test"]);
    assert_eq!(leaf_for(addr, Some("other.lab.test")).await, pinned);
    assert_eq!(leaf_for(addr, Some("brand-new.lab.test")).await, pinned);
    assert_eq!(leaf_for(addr, None).await, pinned);
    assert_eq!(leaf_for(corral.https("::1"), None).await, pinned);

    assert_eq!(
        put_server_url(addr, &token, "https://pinned.lab.test:8443")
            .await
            .status,
        200,
        "same value: no-op"
    );
    let moved = put_server_url(addr, &token, "https://elsewhere.lab.test").await;
    assert_eq!(moved.status, 409);
    assert!(
        json(&moved)["message"]
            .as_str()
            .unwrap()
            .contains("cannot be changed"),
        "{}",
        moved.body
    );
    assert_eq!(leaf_for(addr, None).await, pinned);

    // A restart comes back pinned, with the same certificate.
    let dir = corral.data_dir.clone();
    let _tmp = corral.stop();
    let again = Corral::start_in(&dir, &[], &[]).unwrap();
    let addr = again.https("127.0.0.1");
    assert_eq!(leaf_for(addr, Some("other.lab.test")).await, pinned);
    assert_eq!(leaf_for(addr, None).await, pinned);
    let token = self::token(addr, &password).await;
    assert_eq!(
        get_server_url(addr, &token).await["value"],
        "https://pinned.lab.test:8443"
    );
}

#[tokio::test]
async fn concurrent_server_url_puts_have_one_winner() {
    let corral = Corral::start(&[]);
    let addr = corral.https("127.0.0.1");
    let token = token(addr, &bootstrap_password(&corral)).await;
    let attempts: Vec<_> = (0..8)
        .map(|i| {
            let token = token.clone();
            tokio::spawn(async move {
                let host = format!("host{i}.lab.test");
                (
                    host.clone(),
                    put_server_url(addr, &token, &format!("https://{host}"))
                        .await
                        .status,
                )
            })
        })
        .collect();
    let mut winners = Vec::new();
    for attempt in attempts {
        let (host, status) = attempt.await.unwrap();
        assert!(status == 200 || status == 409, "{host}: {status}");
        if status == 200 {
            winners.push(host);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(
        sans(&leaf_for(addr, Some("x.lab.test")).await),
        [format!("DNS:{}", winners[0])]
    );
}

#[tokio::test]
async fn server_url_from_the_environment_pins_from_boot() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("CATTLE_SERVER_URL", "https://ha.lab.test"),
        ("CATTLE_BOOTSTRAP_PASSWORD", "env-bootstrap-pw"),
    ];
    let corral = Corral::start_in(&dir.path().join("d"), &[], &env).unwrap();
    let addr = corral.https("127.0.0.1");
    for sni in [Some("other.lab.test"), Some("ha.lab.test"), None] {
        assert_eq!(
            sans(&leaf_for(addr, sni).await),
            ["DNS:ha.lab.test"],
            "{sni:?}"
        );
    }
    assert!(
        !corral
            .logs()
            .iter()
            .any(|l| l.contains("minted certificate")),
        "nothing is minted"
    );
    let token = token(addr, "env-bootstrap-pw").await;
    assert_eq!(get_server_url(addr, &token).await["source"], "env");
    let refused = put_server_url(addr, &token, "https://ha.lab.test").await;
    assert_eq!(refused.status, 405);
    assert_eq!(
        json(&refused)["message"],
        "server-url is readOnly because its value is from environment variable"
    );
    let cacerts = request(
        addr,
        "PUT",
        "/v3/settings/cacerts",
        &[&bearer(&token)],
        Some(r#"{"value":"x"}"#),
    )
    .await;
    assert_eq!(
        (cacerts.status, json(&cacerts)["message"].as_str()),
        (405, Some("cacerts is readOnly"))
    );
}

#[tokio::test]
async fn shared_mode_keeps_learned_names_and_adds_only_the_host() {
    let corral = Corral::start(&["--cert-mode", "shared"]);
    let addr = corral.https("127.0.0.1");
    tls_connect(addr, Some("before.lab.test"), None)
        .await
        .unwrap();
    let token = token(addr, &bootstrap_password(&corral)).await;
    assert_eq!(
        put_server_url(addr, &token, "https://rancher.lab.test")
            .await
            .status,
        200
    );
    let names = sans(&leaf_for(addr, Some("after.lab.test")).await);
    assert!(
        names.contains(&"DNS:before.lab.test".into())
            && names.contains(&"DNS:rancher.lab.test".into()),
        "{names:?}"
    );
    assert!(!names.contains(&"DNS:after.lab.test".into()), "{names:?}");
}

#[tokio::test]
async fn a_browser_completes_setup_through_the_page() {
    let corral = Corral::start(&[]);
    let ca = corral.cacerts().await;
    let password = bootstrap_password(&corral);
    let host = "pinned.lab.test";
    let origin = format!("https://{host}:{}", corral.https_port);
    let browser = Browser::start(&ca, host).await;

    browser
        .goto(&format!("{origin}/dashboard/?setup={password}"))
        .await;
    assert!(
        browser
            .wait_until(
                "return !document.getElementById('setup').hidden",
                Duration::from_secs(20)
            )
            .await
    );
    assert_eq!(
        browser.property("#server-url", "value").await,
        origin.as_str(),
        "prefilled from the address bar"
    );
    assert_eq!(
        browser.property("#current", "value").await,
        password.as_str(),
        "prefilled from ?setup="
    );
    // Before setup too, the page shows what agents need: the CA checksum and the CA.
    let checksum = common::sh(&format!(
        "curl -sk https://127.0.0.1:{}/cacerts | sha256sum | cut -d' ' -f1",
        corral.https_port
    ));
    assert!(browser.page_text().await.contains(&checksum));
    assert_eq!(
        browser.property("#setup-ca a", "href").await,
        format!("{origin}/cacerts").as_str()
    );
    assert_eq!(browser.property("#url-warning", "hidden").await, true);
    browser.screenshot("setup-1-form").await;

    // A server URL for another address than the browser's: a warning, gone when it matches again.
    let elsewhere = format!("https://elsewhere.lab.test:{}", corral.https_port);
    browser.type_into("#server-url", &elsewhere).await;
    assert!(
        browser
            .wait_until(
                "return !document.getElementById('url-warning').hidden",
                Duration::from_secs(10)
            )
            .await
    );
    let warning = browser.property("#url-warning", "textContent").await;
    assert!(
        warning
            .as_str()
            .unwrap_or_default()
            .contains("will stop working"),
        "{warning}"
    );
    browser.screenshot("setup-1b-warning").await;
    browser.type_into("#server-url", &origin).await;
    assert!(
        browser
            .wait_until(
                "return document.getElementById('url-warning').hidden",
                Duration::from_secs(10)
            )
            .await
    );

    // A mistake is shown where the eye is (inside the 1280×900 window), in the page's words.
    let error_in_view = "const box = document.getElementById('error'); \
        const r = box.getBoundingClientRect(); \
        return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight";
    browser.type_into("#new-password", "short").await;
    browser.click("#submit").await;
    assert!(
        browser
            .wait_until(error_in_view, Duration::from_secs(10))
            .await
    );
    let shown = browser.property("#error", "textContent").await;
    assert_eq!(shown, "The new password must be at least 12 characters.");
    browser
        .type_into("#current", "wrong-bootstrap-password")
        .await;
    browser.type_into("#new-password", NEW_PASSWORD).await;
    browser.type_into("#confirm-password", NEW_PASSWORD).await;
    browser.eval("window.scrollTo(0, 0); return true").await;
    browser.click("#submit").await;
    assert!(browser.wait_until("return document.getElementById('error').textContent.includes('not the bootstrap password')", Duration::from_secs(20)).await,
        "{}", browser.page_text().await);
    assert!(
        browser
            .wait_until(error_in_view, Duration::from_secs(5))
            .await,
        "the error is out of sight"
    );
    let shown = browser.property("#error", "textContent").await;
    assert!(
        !shown
            .as_str()
            .unwrap_or_default()
            .contains("authentication failed"),
        "the server's raw text: {shown}"
    );
    assert_eq!(
        browser.eval("return document.activeElement.id").await,
        "current",
        "the cursor is in the field to fix"
    );
    browser.screenshot("setup-2-error").await;

    browser.type_into("#current", &password).await;
    browser.click("#submit").await;
    assert!(
        browser
            .wait_until(
                "return !document.getElementById('status').hidden",
                Duration::from_secs(30)
            )
            .await,
        "{}",
        browser.page_text().await
    );
    let text = browser.page_text().await;
    assert!(
        text.contains(&origin) && text.contains(&checksum) && text.contains("DNS:pinned.lab.test"),
        "{text}"
    );
    let shot = browser.screenshot("setup-3-status").await;
    eprintln!("screenshots in {}", shot.parent().unwrap().display());

    // The API agrees: pinned, first login over, the new password works.
    assert_eq!(
        sans(&leaf_for(corral.https("127.0.0.1"), Some("elsewhere.lab.test")).await),
        ["DNS:pinned.lab.test"]
    );
    token(corral.https("127.0.0.1"), NEW_PASSWORD).await;
}

/// A tmpfs of a fixed size, to make writes fail for want of space; unmounted when dropped.
struct SmallDisk {
    root: tempfile::TempDir,
}

const PAGE: u64 = 4096;

impl SmallDisk {
    /// `None` when this process may not mount file systems (the tests run as root in CI).
    fn mount(size: &str) -> Option<Self> {
        let root = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(root.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self { root })
    }

    fn path(&self) -> &std::path::Path {
        self.root.path()
    }

    fn filler(&self) -> std::path::PathBuf {
        self.path().join("filler")
    }

    /// Fills the file system, then frees exactly `pages` pages.
    fn fill_leaving(&self, pages: u64) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..10_000 {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = file.sync_all();
        let len = std::fs::metadata(self.filler()).unwrap().len() / PAGE * PAGE;
        file.set_len(len.saturating_sub(pages * PAGE)).unwrap();
        assert_eq!(self.free_pages(), pages, "free space set up");
    }

    fn free_pages(&self) -> u64 {
        let out = std::process::Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(self.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap());
        let (blocks, size) = (fields.next().unwrap(), fields.next().unwrap());
        blocks * size / PAGE
    }

    fn free_all(&self) {
        let _ = std::fs::remove_file(self.filler());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(self.root.path())
            .status();
    }
}

/// What the server says server-url is, and whether every client gets one certificate for its host.
async fn setting_and_served(addr: SocketAddr, token: &str, host: &str) -> (String, bool) {
    let value = get_server_url(addr, token).await["value"]
        .as_str()
        .unwrap()
        .to_string();
    let wanted = [format!("DNS:{host}")];
    let mut pinned = true;
    for sni in [None, Some("probe.lab.test")] {
        pinned &= sans(&leaf_for(addr, sni).await) == wanted;
    }
    (value, pinned)
}

/// A PUT that cannot be saved for want of space (no free page) changes nothing that is served; a
/// later PUT for another host (one free page) then pins that host, and a restart keeps exactly it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_url_and_the_served_certificate_agree_on_a_full_disk() {
    let Some(disk) = SmallDisk::mount("1m") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs the tests as root)");
        return;
    };
    let dir = disk.path().join("data");
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", "small-disk-bootstrap")];
    let corral = Corral::start_in(&dir, &[], &env).unwrap();
    let addr = corral.https("127.0.0.1");
    let token = token(addr, "small-disk-bootstrap").await;
    // setup.json holds what setup settled (users, tokens and settings are files of their own): one
    // page.
    let setup_len = std::fs::metadata(dir.join("setup.json")).unwrap().len();
    assert!(
        setup_len < PAGE - 256,
        "setup.json is one page: {setup_len} bytes"
    );

    for pages in [0] {
        disk.fill_leaving(pages);
        let put = put_server_url(addr, &token, "https://first.lab.test").await;
        let (value, pinned) = setting_and_served(addr, &token, "first.lab.test").await;
        disk.free_all();
        assert_eq!(put.status, 500, "{pages} free pages: {}", put.body);
        assert!(put.body.contains("No space left on device"), "{}", put.body);
        assert_eq!(value, "", "{pages} free pages: nothing saved");
        assert!(
            !pinned,
            "{pages} free pages: first.lab.test served though not saved"
        );
    }

    // One free page holds the server-url setting; the pinned certificate is stored once the setting
    // is saved.
    disk.fill_leaving(1);
    let put = put_server_url(addr, &token, "https://second.lab.test").await;
    disk.free_all();
    assert_eq!(put.status, 200, "{}", put.body);
    let (value, pinned) = setting_and_served(addr, &token, "second.lab.test").await;
    assert_eq!(value, "https://second.lab.test");
    assert!(pinned, "second.lab.test is served to everyone");

    let _ = corral.stop();
    let again = Corral::start_in(&dir, &[], &env).unwrap();
    let (value, pinned) =
        setting_and_served(again.https("127.0.0.1"), &token, "second.lab.test").await;
    assert_eq!(value, "https://second.lab.test");
    assert!(pinned, "after a restart: exactly second.lab.test");
}

/// Rewrites the stored server-url (`None` removes it), as a crash or a restored backup leaves it.
fn set_stored_server_url(dir: &std::path::Path, value: Option<&str>) {
    let path = dir.join("settings/server-url.json");
    match value {
        Some(value) => {
            let setting = json!({ "name": "server-url", "value": value });
            std::fs::write(&path, serde_json::to_vec(&setting).unwrap()).unwrap();
        }
        None => std::fs::remove_file(&path).unwrap(),
    }
}

/// The saved setting is the record: at start, a pinned certificate that does not match it is made
/// again from it (never merged with the stored names), a missing one is made, and one without a
/// setting pins nothing.
#[tokio::test]
async fn at_start_the_pin_follows_the_saved_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", "restart-bootstrap")];
    let start = || Corral::start_in(&dir, &[], &env).unwrap();
    let corral = start();
    let addr = corral.https("127.0.0.1");
    let token = token(addr, "restart-bootstrap").await;
    assert_eq!(
        put_server_url(addr, &token, "https://stale.lab.test")
            .await
            .status,
        200
    );
    let _ = corral.stop();
    let stale_pin = std::fs::read(dir.join("pinned-cert.json")).unwrap();

    // A setting for another host than the stored certificate (a write the pin never followed).
    set_stored_server_url(&dir, Some("https://first.lab.test"));
    let corral = start();
    let (value, pinned) =
        setting_and_served(corral.https("127.0.0.1"), &token, "first.lab.test").await;
    assert_eq!(value, "https://first.lab.test");
    assert!(
        pinned,
        "exactly first.lab.test, not merged with stale.lab.test"
    );
    let _ = corral.stop();

    // Killed between saving the setting and storing the certificate.
    std::fs::remove_file(dir.join("pinned-cert.json")).unwrap();
    let corral = start();
    let (_, pinned) = setting_and_served(corral.https("127.0.0.1"), &token, "first.lab.test").await;
    assert!(pinned, "made again from the setting");
    let _ = corral.stop();

    // A stored certificate without a saved setting pins nothing.
    set_stored_server_url(&dir, None);
    std::fs::write(dir.join("pinned-cert.json"), &stale_pin).unwrap();
    let corral = start();
    let addr = corral.https("127.0.0.1");
    assert_eq!(get_server_url(addr, &token).await["value"], "");
    assert_eq!(
        sans(&leaf_for(addr, Some("x.lab.test")).await),
        ["DNS:x.lab.test"]
    );
}

/// SIGKILL at random moments around a server-url PUT: after each restart the saved setting and
/// the certificate every client gets agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_server_url_put_never_splits_setting_and_certificate() {
    let template = tempfile::tempdir().unwrap();
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", "kill-bootstrap")];
    let corral = Corral::start_in(&template.path().join("data"), &[], &env).unwrap();
    let token = token(corral.https("127.0.0.1"), "kill-bootstrap").await;
    let _ = corral.stop();
    let (mut pinned_runs, mut unpinned_runs) = (0, 0);
    for run in 0..common::stress_size(12, 60) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        common::sh(&format!(
            "cp -a {} {}",
            template.path().join("data").display(),
            dir.display()
        ));
        let corral = Corral::start_in(&dir, &[], &env).unwrap();
        let addr = corral.https("127.0.0.1");
        let token_for_put = token.clone();
        let put = tokio::spawn(async move {
            common::try_request(
                addr,
                "PUT",
                "/v3/settings/server-url",
                Some(&token_for_put),
                Some(r#"{"value":"https://first.lab.test"}"#),
            )
            .await
        });
        tokio::time::sleep(Duration::from_micros(1_500 * (run as u64 % 12))).await;
        let _ = corral.stop();
        let _ = put.await;
        let again = Corral::start_in(&dir, &[], &env).unwrap();
        let (value, pinned) =
            setting_and_served(again.https("127.0.0.1"), &token, "first.lab.test").await;
        assert_eq!(
            value == "https://first.lab.test",
            pinned,
            "run {run}: {value:?}, pinned {pinned}"
        );
        if pinned {
            pinned_runs += 1;
        } else {
            unpinned_runs += 1;
        }
    }
    eprintln!("killed around the PUT: {pinned_runs} runs saved it, {unpinned_runs} did not");
}

/// The admin's banner password as the latest start printed it.
fn last_bootstrap_password(logs: &str) -> Option<String> {
    logs.lines()
        .rev()
        .find_map(|l| l.split("Bootstrap Password: ").nth(1))
        .map(str::to_string)
}

/// A first start whose HTTPS port is taken stops before creating the admin (no banner, nothing to
/// lose). A generated password is kept until first login: a start killed after its banner, and every
/// start after it, shows the same password, and a later CATTLE_BOOTSTRAP_PASSWORD does not replace
/// it (as Rancher's bootstrap secret wins over the variable). After first login it is gone from disk
/// and from the banner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_password_is_kept_until_first_login() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let Err(failed) = Corral::start_in(&dir, &["--https-port", &port], &[]) else {
        panic!("corral started on a port in use");
    };
    assert!(failed.contains("Address already in use"), "{failed}");
    assert!(last_bootstrap_password(&failed).is_none(), "{failed}");
    assert!(!dir.join("setup.json").exists(), "no admin was made");
    drop(busy);

    let first_start = Corral::start_in(&dir, &[], &[]).unwrap();
    let first = last_bootstrap_password(&first_start.logs().join("\n")).unwrap();
    let _ = first_start.stop();

    let later = [("CATTLE_BOOTSTRAP_PASSWORD", "set-too-late-password")];
    let corral = Corral::start_in(&dir, &[], &later).unwrap();
    let logs = corral.logs().join("\n");
    assert_eq!(
        last_bootstrap_password(&logs).as_deref(),
        Some(first.as_str()),
        "{logs}"
    );
    let addr = corral.https("127.0.0.1");
    assert_eq!(
        login(addr, "admin", "set-too-late-password").await.status,
        401
    );
    let kept = dir.join("bootstrap-password");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kept).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let token = token(addr, &first).await;
    assert_eq!(
        change_password(addr, &token, &first, NEW_PASSWORD)
            .await
            .status,
        200
    );
    assert!(
        !kept.exists(),
        "first login done: the bootstrap password is no longer kept"
    );
    let _ = corral.stop();
    let again = Corral::start_in(&dir, &[], &[]).unwrap();
    let logs = again.logs().join("\n");
    assert!(last_bootstrap_password(&logs).is_none(), "{logs}");
    assert!(!logs.contains(&first));
}

/// Logins that are checking the password while `corral reset-password` runs get no token that
/// outlives the reset (each is issued for the password it checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_in_flight_during_a_reset_keep_no_session() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", "racing-the-reset")];
    let corral = Corral::start_in(&dir, &[], &env).unwrap();
    let data_dir = dir.to_str().unwrap().to_string();
    let reset = move || {
        let (code, _, stderr) =
            common::run_corral(&["reset-password", "--data-dir", &data_dir], &[]);
        assert_eq!(code, Some(0), "{stderr}");
    };
    let issued =
        common::logins_racing_a_reset(&[corral.https("127.0.0.1")], "racing-the-reset", reset)
            .await;
    assert!(issued > 0, "some logins succeeded before the reset");
}

/// `corral reset-password` beside a running server: the new password works at once, the old one and
/// every login token of the admin stop working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_password_takes_effect_on_a_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", "reset-test-bootstrap")];
    let corral = Corral::start_in(&dir, &[], &env).unwrap();
    let addr = corral.https("127.0.0.1");
    let old_token = token(addr, "reset-test-bootstrap").await;
    assert_eq!(get_server_url(addr, &old_token).await["value"], "");

    let (code, stdout, stderr) = common::run_corral(
        &["reset-password", "--data-dir", dir.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let mut lines = stdout.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("New password for default administrator (user-")
            && header.ends_with("):"),
        "{stdout}"
    );
    let new_password = lines.next().unwrap().trim().to_string();
    assert_eq!(new_password.len(), 54);

    let stale = request(
        addr,
        "GET",
        "/v3/settings/server-url",
        &[&bearer(&old_token)],
        None,
    )
    .await;
    assert_eq!(stale.status, 401, "the admin's tokens are revoked");
    assert_eq!(
        login(addr, "admin", "reset-test-bootstrap").await.status,
        401
    );
    let fresh = token(addr, &new_password).await;
    assert_eq!(get_server_url(addr, &fresh).await["value"], "");

    let empty = tempfile::tempdir().unwrap();
    let (code, _, stderr) = common::run_corral(
        &[
            "reset-password",
            "--data-dir",
            empty.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("no admin in this data directory yet"),
        "{stderr}"
    );
}

/// `--access-log`: a line per request — method, path, status, duration, client, user — and no
/// secret: not the password, the token, a `?setup=` password or a registration token in a path.
/// Off by default.
#[tokio::test]
async fn the_access_log_tells_who_did_what_and_no_secret() {
    let password = "access-log-bootstrap";
    let tmp = tempfile::tempdir().unwrap();
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", password)];
    let corral = Corral::start_in(&tmp.path().join("d"), &["--access-log"], &env).unwrap();
    let addr = corral.https("127.0.0.1");
    let token = token(addr, password).await;
    let auth = bearer(&token);
    let created = request(
        addr,
        "POST",
        "/v3/clusters",
        &[&auth],
        Some(r#"{"name":"a"}"#),
    )
    .await;
    let cluster = json(&created)["id"].as_str().unwrap().to_string();
    let body = serde_json::json!({ "clusterId": cluster }).to_string();
    let registration = request(
        addr,
        "POST",
        "/v3/clusterregistrationtokens",
        &[&auth],
        Some(&body),
    )
    .await;
    let registration = json(&registration)["token"].as_str().unwrap().to_string();
    let import = format!("/v3/import/{registration}_{cluster}.yaml");
    assert_eq!(request(addr, "GET", &import, &[], None).await.status, 200);
    request(
        addr,
        "GET",
        &format!("/dashboard/?setup={password}"),
        &[],
        None,
    )
    .await;
    request(addr, "GET", "/v3/settings/server-url", &[&auth], None).await;

    // A request's line is written as its response ends: it may come just after the response.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !corral
        .logs()
        .iter()
        .any(|l| l.contains("GET /v3/settings/server-url"))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = corral.logs().join("\n");
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("corral::access"))
        .collect();
    let has = |text: &str| lines.iter().any(|l| l.contains(text));
    assert!(
        has("POST /v3-public/localProviders/local?action=login 201")
            && has("client=127.0.0.1 user=-"),
        "{lines:#?}"
    );
    assert!(
        has("GET /v3/settings/server-url 200") && has("user=admin"),
        "{lines:#?}"
    );
    assert!(
        has("GET /v3/import/… 200") && has("GET /dashboard/ 200"),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| l.contains("ms client=")), "{lines:#?}");
    let secret = token.split_once(':').unwrap().1;
    for leaked in [password, secret, registration.as_str()] {
        assert!(!logs.contains(leaked), "{leaked} in the log");
    }

    let quiet = Corral::start(&[]);
    let first_login = "/v3/settings/first-login";
    request(quiet.https("127.0.0.1"), "GET", first_login, &[], None).await;
    assert!(!quiet.logged("corral::access"), "off by default");
}
