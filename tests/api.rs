//! Rancher's `/v3` API as its clients use it (`shared/spec/norman-api.md`): Rancher's official
//! Python client (`rancher-client-python-3p`, installed unmodified by `.ci/deps` into
//! `target/ci-python`) drives discovery, clusters, settings, tokens and passwords; curl and raw
//! requests check what the Go norman client (the `rancher` CLI, Terraform) relies on and the error
//! bodies, collections and the cluster lifecycle byte for byte.

mod common;

use std::time::Duration;

use common::lab::{self, Lab};
use common::python::rancher_client;
use common::*;
use serde_json::{Value, json};

fn json_of(response: &HttpResponse) -> Value {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("{e}: {} {}", response.status, response.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rancher_python_client_works_unmodified() {
    let lab = Lab::start().await;
    let expect = [
        (
            "discovery",
            &["discovery", "public discovery", "discovery without a token"][..],
        ),
        (
            "clusters",
            &[
                "create",
                "by_id",
                "filters",
                "update",
                "generateKubeconfig",
                "registration token",
                "delete",
            ],
        ),
        (
            "settings",
            &["list and get", "create, update, delete", "errors"],
        ),
        (
            "tokens",
            &[
                "API key as access and secret key",
                "tokens listed without their secrets",
                "deleted key refused",
            ],
        ),
    ];
    for (scenario, checks) in expect {
        let passed = rancher_client(&lab, scenario, &[]);
        let wanted: Vec<String> = checks.iter().map(|c| format!("ok {c}")).collect();
        assert_eq!(passed, wanted, "{scenario}");
    }
    // Last: it changes the admin's password, and so ends the lab's session.
    let passed = rancher_client(&lab, "password", &[lab::BOOTSTRAP, "another-password-42"]);
    assert_eq!(
        passed,
        [
            "ok changepassword",
            "ok login with the new password",
            "ok changed back"
        ]
    );
    let back = login(lab.addr, "admin", lab::BOOTSTRAP).await;
    assert_eq!(back.status, 201, "{}", back.body);
}

/// What the Go norman client checks before anything else: exactly 200 on `GET /v3` with the
/// `X-Api-Schemas` header, schemas it can load; then an API key as Basic auth (curl's `-u`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_clients_discover_the_api_and_use_api_keys_as_basic_auth() {
    let lab = Lab::start().await;
    let root = request(lab.addr, "GET", "/v3", &[&lab.auth()], None).await;
    assert_eq!(root.status, 200, "{}", root.body);
    let schemas_url = format!("{}/v3/schemas", lab.server());
    assert_eq!(root.header("x-api-schemas"), Some(schemas_url.as_str()));
    assert_eq!(root.header("x-api-cattle-auth"), Some("true"));
    let root = json_of(&root);
    assert_eq!(root["type"], "apiRoot");
    assert_eq!(
        root["links"]["clusters"],
        format!("{}/v3/clusters", lab.server())
    );

    let schemas = json_of(&request(lab.addr, "GET", "/v3/schemas", &[&lab.auth()], None).await);
    assert_eq!(schemas["type"], "collection");
    assert_eq!(schemas["resourceType"], "schema");
    let cluster = schemas["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "cluster")
        .expect("the cluster schema");
    assert_eq!(cluster["pluralName"], "clusters");
    assert_eq!(
        cluster["links"]["collection"],
        format!("{}/v3/clusters", lab.server())
    );
    assert_eq!(cluster["collectionMethods"], json!(["GET", "POST"]));
    assert_eq!(cluster["resourceMethods"], json!(["GET", "PUT", "DELETE"]));
    assert!(cluster["resourceActions"]["generateKubeconfig"].is_object());
    let one = json_of(&request(lab.addr, "GET", "/v3/schemas/cluster", &[&lab.auth()], None).await);
    assert_eq!(one["id"], "cluster");
    // A type by its id or plural, in any case.
    for path in [
        "/v3/Clusters",
        "/v3/cluster",
        "/v3/CLUSTERREGISTRATIONTOKENS",
    ] {
        let listed = request(lab.addr, "GET", path, &[&lab.auth()], None).await;
        assert_eq!(listed.status, 200, "{path}: {}", listed.body);
        assert_eq!(json_of(&listed)["type"], "collection", "{path}");
    }

    let key = json_of(
        &request(
            lab.addr,
            "POST",
            "/v3/tokens",
            &[&lab.auth()],
            Some(r#"{"type":"token","description":"terraform"}"#),
        )
        .await,
    );
    let (access, secret) = key["token"].as_str().unwrap().split_once(':').unwrap();
    assert_eq!(access, key["name"].as_str().unwrap());
    assert_eq!(key["expired"], false);
    let curl = |user: &str| {
        sh(&format!(
            "curl -sS --noproxy '*' --cacert {} -u '{user}' -w ' %{{http_code}}' {}/v3/users?me=true",
            lab.ca_file.path().display(),
            lab.server()
        ))
    };
    let me = curl(&format!("{access}:{secret}"));
    assert!(me.ends_with(" 200"), "{me}");
    assert!(me.contains(r#""username":"admin""#), "{me}");
    let wrong = curl(&format!("{access}:not-the-secret"));
    assert!(wrong.ends_with(" 401"), "{wrong}");
    assert!(
        wrong.contains(r#""message":"must authenticate""#),
        "{wrong}"
    );
}

/// Rancher's errors: the status, code and message clients branch on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_rancher_s_status_code_and_message() {
    let lab = Lab::start().await;
    let auth = lab.auth();
    let call = |method: &'static str, path: &'static str, body: Option<&'static str>| {
        let (auth, addr) = (auth.clone(), lab.addr);
        async move {
            let response = request(addr, method, path, &[&auth], body).await;
            (response.status, json_of(&response))
        }
    };
    // Not logged in: every /v3 path (types that do not exist too) is 401, as Rancher answers
    // before it looks the type up; /v3-public answers.
    for path in ["/v3/clusters", "/v3/nothings", "/v3"] {
        let response = request(lab.addr, "GET", path, &[], None).await;
        assert_eq!(response.status, 401, "{path}");
        assert_eq!(
            json_of(&response),
            json!({"type": "error", "status": "401", "message": "must authenticate"}),
            "{path}"
        );
    }
    let public = request(lab.addr, "GET", "/v3-public/authProviders", &[], None).await;
    assert_eq!(public.status, 200, "{}", public.body);

    let unknown = request(lab.addr, "GET", "/v3/nothings", &[&auth], None).await;
    assert_eq!(unknown.status, 404);
    let schemas_url = format!("{}/v3/schemas", lab.server());
    assert_eq!(unknown.header("x-api-schemas"), Some(schemas_url.as_str()));
    assert_eq!(
        unknown.header("expires"),
        Some("Wed 24 Feb 1982 18:42:00 GMT")
    );
    let body = json_of(&unknown);
    assert_eq!(body["code"], "NotFound");
    assert_eq!(body["message"], "failed to find schema nothings");
    let (status, body) = call("GET", "/v3/clusters/c-nope", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["status"], 404);
    assert_eq!(
        body["message"],
        "clusters.management.cattle.io \"c-nope\" not found"
    );

    // A link, as a path segment or `?link=`: the object is looked up first; norman serves none.
    for path in [
        format!("/v3/clusters/{}/nodes", lab.cluster),
        format!("/v3/clusters/{}?link=nodes", lab.cluster),
    ] {
        let response = request(lab.addr, "GET", &path, &[&auth], None).await;
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(json_of(&response)["message"], "Link not found", "{path}");
    }
    let (status, body) = call("GET", "/v3/clusters/c-nope/nodes", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["message"],
        "clusters.management.cattle.io \"c-nope\" not found"
    );

    let (status, body) = call("PATCH", "/v3/clusters", Some("{}")).await;
    assert_eq!(status, 405);
    assert_eq!(body["code"], "MethodNotAllow");
    assert_eq!(body["message"], "Method PATCH not supported");
    let (status, body) = call("POST", "/v3/features", Some(r#"{"name":"x"}"#)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (405, Some("MethodNotAllow"))
    );
    assert_eq!(body["message"], "cannot create new features");
    let (status, body) = call("DELETE", "/v3/authConfigs/local", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (405, Some("MethodNotAllow")),
        "{body}"
    );
    let (status, body) = call("PUT", "/v3/settings/nothing", Some(r#"{"value":"x"}"#)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("NotFound")),
        "{body}"
    );
    let (status, body) = call("PUT", "/v3/settings/cacerts", Some(r#"{"value":"x"}"#)).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (405, Some("cacerts is readOnly"))
    );

    let (status, body) = call(
        "POST",
        "/v3/settings",
        Some(r#"{"name":"one","value":"1"}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        "POST",
        "/v3/settings",
        Some(r#"{"name":"one","value":"2"}"#),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("AlreadyExists")),
        "{body}"
    );

    // A setting's name is a Kubernetes object name.
    let (status, body) = call(
        "POST",
        "/v3/settings",
        Some(r#"{"name":"a/b","value":"1"}"#),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("InvalidFormat")),
        "{body}"
    );
    assert_eq!(body["fieldName"], "name");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid value a/b: a lowercase RFC 1123 subdomain")
    );
    // The settings are bounded (every replica keeps them all in memory), and full ones refuse with words.
    let big = "v".repeat(60_000);
    let mut refused = None;
    for i in 0..25 {
        let body = json!({ "name": format!("big-{i}"), "value": big }).to_string();
        let response = request(lab.addr, "POST", "/v3/settings", &[&auth], Some(&body)).await;
        if response.status != 201 {
            refused = Some((i, response));
            break;
        }
    }
    let (taken, refused) = refused.expect("a bound on the settings");
    assert!(
        (15..=18).contains(&taken),
        "{taken} settings of 60 KB taken"
    );
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("the settings are full"),
        "{}",
        refused.body
    );
    let listed = request(lab.addr, "GET", "/v3/settings", &[&auth], None).await;
    assert_eq!(listed.status, 200);

    // A cluster cannot grow the clusters document without bound, and a refused create leaves
    // nothing behind.
    let before = json_of(&request(lab.addr, "GET", "/v3/clusters", &[&auth], None).await);
    let huge = json!({ "name": "huge", "annotations": { "a": "x".repeat(5000) } }).to_string();
    let refused = request(lab.addr, "POST", "/v3/clusters", &[&auth], Some(&huge)).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("annotations must hold at most"),
        "{}",
        refused.body
    );
    let after = json_of(&request(lab.addr, "GET", "/v3/clusters", &[&auth], None).await);
    assert_eq!(
        after["data"].as_array().unwrap().len(),
        before["data"].as_array().unwrap().len()
    );
    let long_label = json!({ "labels": { "env": "v".repeat(64) } }).to_string();
    let path = format!("/v3/clusters/{}", lab.cluster);
    let refused = request(lab.addr, "PUT", &path, &[&auth], Some(&long_label)).await;
    assert_eq!(refused.status, 422, "{}", refused.body);

    let (status, body) = call("POST", "/v3/clusterregistrationtokens", Some("{}")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "MissingRequired");
    assert_eq!(body["fieldName"], "clusterId");
    let (status, body) = call("POST", "/v3/clusters", Some("[1, 2")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("InvalidBodyContent")),
        "{body}"
    );
    let (status, body) = call("POST", "/v3/users?action=nothing", Some("{}")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("InvalidAction")),
        "{body}"
    );
    assert_eq!(body["message"], "Invalid action: nothing");

    // The login URL Rancher's UI and CLI use, in either case.
    for path in [
        "/v3-public/localproviders/local?action=login",
        "/v3-public/localProviders/local?action=login",
    ] {
        let wrong = json!({"username": "admin", "password": "wrong", "responseType": "json"});
        let response = request(lab.addr, "POST", path, &[], Some(&wrong.to_string())).await;
        assert_eq!(response.status, 401, "{path}: {}", response.body);
        assert_eq!(json_of(&response)["code"], "Unauthorized", "{path}");
    }
}

/// Tokens as Rancher lists them: the caller's own, `current` on the one in use, no secrets; the
/// session in use cannot be deleted, only logged out of, which expires its cookies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_session_is_marked_and_only_logged_out_of() {
    let lab = Lab::start().await;
    let session = lab.token.split(':').next().unwrap().to_string();
    let listed = json_of(&request(lab.addr, "GET", "/v3/tokens", &[&lab.auth()], None).await);
    let mine = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == session.as_str())
        .unwrap_or_else(|| panic!("{session} in {listed}"));
    assert_eq!(mine["current"], true, "{mine}");
    assert_eq!(mine["expired"], false, "{mine}");
    assert!(mine.get("token").is_none_or(|t| t == ""), "{mine}");
    assert_eq!(
        listed["actions"]["logout"],
        format!("{}/v3/tokens?action=logout", lab.server())
    );

    let path = format!("/v3/tokens/{session}");
    let refused = request(lab.addr, "DELETE", &path, &[&lab.auth()], None).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let body = json_of(&refused);
    assert_eq!(body["code"], "ServerError");
    assert_eq!(
        body["message"],
        "Cannot delete token for current session. Use logout instead"
    );

    let logout = request(
        lab.addr,
        "POST",
        "/v3/tokens?action=logout",
        &[&lab.auth()],
        Some("{}"),
    )
    .await;
    assert_eq!(logout.status, 200, "{}", logout.body);
    assert_eq!(logout.body, "");
    let cookies: Vec<&String> = logout
        .headers
        .iter()
        .filter(|h| h.to_ascii_lowercase().starts_with("set-cookie:"))
        .collect();
    assert!(
        cookies.iter().any(|c| c.contains("R_SESS=;")
            && c.contains("Max-Age=0")
            && c.contains("Expires=Wed, 10 Feb 1982 23:00:00 GMT")
            && c.contains("Secure")),
        "{cookies:?}"
    );
    let after = request(lab.addr, "GET", "/v3/tokens", &[&lab.auth()], None).await;
    assert_eq!(after.status, 401, "{}", after.body);
}

/// A browser's websocket from another origin is refused with Rancher's exact body; one from the
/// page's own origin, and non-browser clients, are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_websocket_from_another_origin_is_refused() {
    let lab = Lab::start().await;
    let upgrade = |origin: String| {
        let (auth, addr) = (lab.auth(), lab.addr);
        async move {
            let origin = format!("Origin: {origin}");
            let headers = [
                auth.as_str(),
                "Connection: Upgrade",
                "Upgrade: websocket",
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/130.0",
                origin.as_str(),
            ];
            request(addr, "GET", "/v3/subscribe", &headers, None).await
        }
    };
    let foreign = upgrade("https://evil.example".into()).await;
    assert_eq!(foreign.status, 403);
    assert_eq!(
        foreign.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        foreign.body,
        "{\"Code\":{\"Code\":\"PermissionDenied\",\"Status\":403},\"Message\":\"origin not allowed\",\"Cause\":null,\"FieldName\":\"\"}\n"
    );
    let own = upgrade(lab.server()).await;
    assert_ne!(own.status, 403, "{}", own.body);
}

/// Filters, sorting and pagination as norman does them, with the envelope's links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_filter_sort_and_page() {
    let lab = Lab::start().await;
    for name in ["bravo", "alpha", "delta", "charlie"] {
        let body = json!({ "name": name }).to_string();
        let made = request(
            lab.addr,
            "POST",
            "/v3/clusters",
            &[&lab.auth()],
            Some(&body),
        )
        .await;
        assert_eq!(made.status, 201, "{}", made.body);
    }
    let names = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    let get = |path: String| {
        let (auth, addr) = (lab.auth(), lab.addr);
        async move { json_of(&request(addr, "GET", &path, &[&auth], None).await) }
    };
    let sorted = get("/v3/clusters?sort=name&order=desc".into()).await;
    assert_eq!(
        names(&sorted),
        ["lab", "delta", "charlie", "bravo", "alpha"]
    );
    assert_eq!(sorted["sort"]["order"], "desc");
    let filtered = get("/v3/clusters?name_in=alpha&name_in=delta&sort=name".into()).await;
    assert_eq!(names(&filtered), ["alpha", "delta"]);
    assert_eq!(
        filtered["filters"]["name"],
        json!([{"modifier": "in", "value": ["alpha", "delta"]}])
    );
    let one = get("/v3/clusters?name=charlie".into()).await;
    assert_eq!(names(&one), ["charlie"]);
    assert_eq!(
        one["filters"]["name"],
        json!([{"modifier": "eq", "value": "charlie"}])
    );
    let others = get("/v3/clusters?name_ne=lab&sort=name".into()).await;
    assert_eq!(names(&others), ["alpha", "bravo", "charlie", "delta"]);
    // Unknown filters are ignored, as norman ignores them.
    let all = get("/v3/clusters?colour=blue".into()).await;
    assert_eq!(names(&all).len(), 5);

    let mut seen = Vec::new();
    let mut path = "/v3/clusters?sort=name&limit=2".to_string();
    for _ in 0..5 {
        let page = get(path.clone()).await;
        assert!(names(&page).len() <= 2, "{page}");
        seen.extend(names(&page));
        assert_eq!(page["pagination"]["limit"], 2);
        match page["pagination"]["next"].as_str() {
            Some(next) => {
                let prefix = lab.server();
                assert!(next.starts_with(&prefix), "{next}");
                path = next[prefix.len()..].to_string();
            }
            None => break,
        }
    }
    assert_eq!(seen, ["alpha", "bravo", "charlie", "delta", "lab"]);
}

/// Deleting a cluster refuses its registration tokens and ends its agent's tunnel at once; the
/// agent, coming back, is refused, and nothing answers for the cluster any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_cluster_ends_its_tunnel_and_refuses_its_agent() {
    let lab = Lab::start().await;
    let _agent = lab.simulated_agents_at(&lab.server(), &[&lab.registration], 1);
    lab.wait_connected(true).await;
    let cluster = json_of(
        &request(
            lab.addr,
            "GET",
            &format!("/v3/clusters/{}", lab.cluster),
            &[&lab.auth()],
            None,
        )
        .await,
    );
    assert_eq!(cluster["state"], "active", "{cluster}");
    let deleted = request(
        lab.addr,
        "DELETE",
        &format!("/v3/clusters/{}", lab.cluster),
        &[&lab.auth()],
        None,
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(json_of(&deleted)["id"], lab.cluster.as_str());

    lab.wait_tunnel_ended_and_refused(Duration::from_secs(10))
        .await;
    for path in [
        format!("/v3/clusters/{}", lab.cluster),
        format!("/k8s/clusters/{}/version", lab.cluster),
    ] {
        let gone = request(lab.addr, "GET", &path, &[&lab.auth()], None).await;
        assert_eq!(gone.status, 404, "{path}: {}", gone.body);
    }
    let tokens = json_of(
        &request(
            lab.addr,
            "GET",
            "/v3/clusterregistrationtokens",
            &[&lab.auth()],
            None,
        )
        .await,
    );
    assert_eq!(tokens["data"], json!([]), "{tokens}");
}

/// A request refused before its body arrived (a method the type does not allow, an action that
/// does not exist) leaves the connection open for the next one, as Go's server does. Python's
/// http.client sends the headers and the body in two writes and then reuses the connection: a
/// server that answered and closed without reading the body failed that client's next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_before_its_body_arrived_keeps_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let lab = Lab::start().await;
    let body = format!("{{\"value\":\"{}\"}}", "x".repeat(4000));
    for (method, path) in [
        ("PUT", "/v3/nodes/c-x:m-y"),
        ("POST", "/v3/users?action=nope"),
    ] {
        let mut tls = tls_connect(lab.addr, None, None).await.unwrap().stream;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            lab.addr,
            lab.auth(),
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The server may have answered already; the body follows as the client sends it.
        let _ = tls.write_all(body.as_bytes()).await;
        let _ = tls.flush().await;
        let next = format!(
            "GET /v3/users?me=true HTTP/1.1\r\nHost: {}\r\n{}\r\n\r\n",
            lab.addr,
            lab.auth()
        );
        let _ = tls.write_all(next.as_bytes()).await;
        let _ = tls.flush().await;
        let mut answers = Vec::new();
        let mut buffer = [0u8; 16 * 1024];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&answers).contains("\"username\":\"admin\"") {
            match tokio::time::timeout_at(deadline, tls.read(&mut buffer)).await {
                Ok(Ok(n)) if n > 0 => answers.extend_from_slice(&buffer[..n]),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&answers);
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            2,
            "{method} {path}: both answered on one connection: {text}"
        );
        assert!(text.contains("\"username\":\"admin\""), "{text}");
    }
}
