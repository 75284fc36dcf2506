//! Users, global roles and cluster membership (`shared/spec/norman-api.md` §6-8), as Rancher's
//! official Python client sees them with two users: the admin makes a standard user, binds it to
//! the `user` global role, as `cluster-owner` of one cluster and `cluster-member` of another, and
//! the user's own client sees exactly what Rancher would show it; then kubectl as that user
//! through corral's proxy meets each simulated cluster's RBAC.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::Lab;
use common::python::rancher_client;
use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_user_sees_and_may_do_what_its_roles_grant() {
    let lab = Lab::start().await;
    let passed = rancher_client(&lab, "users", &[]);
    assert_eq!(
        passed,
        [
            "ok users created with Rancher's checks",
            "ok global roles and bindings",
            "ok cluster membership",
            "ok a standard user's view",
            "ok clusters by membership",
            "ok self-protection, disabling and deleting",
        ]
    );
}

/// The second user's name in the kubectl test.
const ALICE: &str = "alice-jürgen\u{7}";

/// Creates a cluster through the API as `auth`; its id and a registration token.
async fn new_cluster(lab: &Lab, auth: &str, name: &str) -> (String, String) {
    let body = json!({ "name": name }).to_string();
    let created = request(lab.addr, "POST", "/v3/clusters", &[auth], Some(&body)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = json_of(&created)["id"].as_str().unwrap().to_string();
    let new_token = json!({ "clusterId": id }).to_string();
    let token = request(
        lab.addr,
        "POST",
        "/v3/clusterregistrationtokens",
        &[auth],
        Some(&new_token),
    )
    .await;
    assert_eq!(token.status, 201, "{}", token.body);
    (id, json_of(&token)["token"].as_str().unwrap().to_string())
}

fn json_of(response: &HttpResponse) -> Value {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("{e}: {} {}", response.status, response.body))
}

/// POSTs `body` to `path` as `auth`, which must answer `status`; the answer's JSON.
async fn post(lab: &Lab, auth: &str, path: &str, body: Value, status: u16) -> Value {
    let answer = request(lab.addr, "POST", path, &[auth], Some(&body.to_string())).await;
    assert_eq!(answer.status, status, "POST {path}: {}", answer.body);
    json_of(&answer)
}

/// Runs kubectl with `kubeconfig` (at most 60 s): its exit success, stdout and stderr.
fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new("timeout")
        .args(["60", "kubectl", "--kubeconfig"])
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits (at most 20 s) until `cluster` reports a connected agent.
async fn wait_connected(lab: &Lab, cluster: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let path = format!("/v3/clusters/{cluster}");
    loop {
        let state = json_of(&request(lab.addr, "GET", &path, &[&lab.auth()], None).await);
        if state["connected"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "{cluster} never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// kubectl as a cluster owner and as a cluster member of two simulated clusters, through corral's
/// proxy: the owner creates a namespace; the member reads nodes but is refused a namespace with
/// kube-apiserver's message; `kubectl auth can-i` says so; the caller cannot impersonate someone
/// else, and a binding removed takes effect at the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_meets_each_clusters_rbac_as_the_user() {
    let lab = Lab::start().await;
    let admin = lab.auth();
    let (owned, owned_token) = new_cluster(&lab, &admin, "owned").await;
    let (member, member_token) = new_cluster(&lab, &admin, "member").await;
    let _agents = lab.simulated_agents(&[&owned_token, &member_token], 2);
    let alice = post(
        &lab,
        &admin,
        "/v3/users",
        // The name travels to the cluster in a header (Impersonate-Extra-username): not ASCII, and
        // with a control character no header may hold.
        json!({"username": ALICE, "password": "alice-password-1"}),
        201,
    )
    .await;
    let alice_id = alice["id"].as_str().unwrap().to_string();
    post(
        &lab,
        &admin,
        "/v3/globalrolebindings",
        json!({"globalRoleId": "user", "userId": alice_id}),
        201,
    )
    .await;
    for (cluster, template) in [(&owned, "cluster-owner"), (&member, "cluster-member")] {
        let binding = json!({"clusterId": cluster, "roleTemplateId": template, "userId": alice_id});
        post(
            &lab,
            &admin,
            "/v3/clusterroletemplatebindings",
            binding,
            201,
        )
        .await;
    }
    let session = login(lab.addr, ALICE, "alice-password-1").await;
    assert_eq!(session.status, 201, "{}", session.body);
    let alice_auth = format!(
        "Authorization: Bearer {}",
        json_of(&session)["token"].as_str().unwrap()
    );
    wait_connected(&lab, &owned).await;
    wait_connected(&lab, &member).await;
    let kubeconfig = |cluster: String| {
        let (lab, auth) = (&lab, alice_auth.clone());
        async move {
            let path = format!("/v3/clusters/{cluster}?action=generateKubeconfig");
            let config = post(lab, &auth, &path, json!({}), 200).await;
            temp_file(config["config"].as_str().unwrap())
        }
    };
    let as_owner = kubeconfig(owned.clone()).await;
    let as_member = kubeconfig(member.clone()).await;

    let (created, _, err) = kubectl(as_owner.path(), &["create", "namespace", "alices"]);
    assert!(created, "the owner creates a namespace: {err}");
    let (listed, nodes, err) = kubectl(as_member.path(), &["get", "nodes"]);
    assert!(listed && nodes.contains("simulated-node-1"), "{nodes}{err}");
    let (created, _, err) = kubectl(as_member.path(), &["create", "namespace", "not-mine"]);
    let wanted = format!(
        "Error from server (Forbidden): namespaces is forbidden: User \"{alice_id}\" cannot create resource \"namespaces\" in API group \"\" at the cluster scope"
    );
    assert!(!created && err.contains(&wanted), "{err}");
    let (yes, answer, _) = kubectl(as_owner.path(), &["auth", "can-i", "create", "namespaces"]);
    assert!(yes && answer.trim() == "yes", "{answer}");
    let (yes, answer, _) = kubectl(as_member.path(), &["auth", "can-i", "create", "namespaces"]);
    assert!(!yes && answer.trim() == "no", "{answer}");
    let (_, owner_rules, _) = kubectl(as_owner.path(), &["auth", "can-i", "--list"]);
    let (_, member_rules, _) = kubectl(as_member.path(), &["auth", "can-i", "--list"]);
    assert!(owner_rules.contains("*.*"), "{owner_rules}");
    assert!(
        member_rules.contains("nodes") && !member_rules.contains("*.*"),
        "{member_rules}"
    );

    // Impersonating someone else is for those allowed to (admins), in Rancher's words.
    let (impersonated, _, err) = kubectl(as_member.path(), &["get", "ns", "--as", "admin"]);
    assert!(
        !impersonated && err.contains("not allowed to impersonate user"),
        "{err}"
    );
    // The admin's own requests reach the cluster as the admin (a global admin is cluster-admin).
    let admin_config = lab.kubeconfig(&member).await;
    let (created, _, err) = kubectl(admin_config.path(), &["create", "namespace", "admins"]);
    assert!(created, "{err}");

    // What the owned cluster was told: its bindings, alice's among them, and the admin's.
    let admin_owned = lab.kubeconfig(&owned).await;
    let told = |config: &std::path::Path| {
        let listed = kubectl(
            config,
            &[
                "get",
                "clusterrolebindings",
                "-l",
                "cattle.io/creator=norman",
                "-o",
                "name",
            ],
        );
        assert!(listed.0, "{}", listed.2);
        listed.1
    };
    let before = told(admin_owned.path());
    assert!(
        before.contains("/crtb-") && before.contains("/creator-cluster-owner"),
        "{before}"
    );
    assert!(before.contains("/globaladmin-user-"), "{before}");

    // Losing the binding loses the rights at the next request, and the cluster forgets it.
    let bindings = request(
        lab.addr,
        "GET",
        &format!("/v3/clusterroletemplatebindings?clusterId={owned}&userId={alice_id}"),
        &[&admin],
        None,
    )
    .await;
    let id = json_of(&bindings)["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let removed = request(
        lab.addr,
        "DELETE",
        &format!("/v3/clusterroletemplatebindings/{id}"),
        &[&admin],
        None,
    )
    .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    let (seen, _, err) = kubectl(as_owner.path(), &["get", "ns"]);
    assert!(!seen && err.contains("NotFound"), "{err}");
    let after = told(admin_owned.path());
    assert!(
        !after.contains("/crtb-") && after.contains("/creator-cluster-owner"),
        "{after}"
    );
}
