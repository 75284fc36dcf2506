//! HA: several corral replicas on one real etcd (Debian's `etcd-server`, three members on loopback).
//! One installation whatever replica a client reaches: one CA, one admin, one server-url; a change on
//! one replica reaches the others through etcd's watch; etcd going away stops writes, not handshakes.
#![cfg(feature = "etcd")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::balancer::Balancer;
use common::etcd::EtcdCluster;
use common::lab::{self, Lab};
use common::*;
use serde_json::{Value, json};

/// How long a change on one replica may take to reach the others in these tests (the goal is ≤ 1 s;
/// the benchmark measures it, the tests only bound it generously for a loaded 2-core machine).
const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);

/// A replica on `etcd`, with a data directory of its own (which holds nothing durable in store mode).
fn replica(etcd: &EtcdCluster, dir: &std::path::Path, env: &[(&str, &str)]) -> Corral {
    let args = ["--store", &etcd.url(), "--agent-wait", "5"];
    Corral::start_in(dir, &args, env).expect("replica starts")
}

/// Starts `count` replicas at once (each in its own thread), as a deployment's pods start.
fn replicas_at_once(
    etcd: &EtcdCluster,
    root: &std::path::Path,
    count: usize,
    env: &[(&str, &str)],
) -> Vec<Corral> {
    std::thread::scope(|scope| {
        let started: Vec<_> = (0..count)
            .map(|i| {
                let dir = root.join(format!("replica-{i}"));
                scope.spawn(move || replica(etcd, &dir, env))
            })
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn json(response: &HttpResponse) -> Value {
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{e}: {}", response.body))
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

async fn admin_token(addr: SocketAddr, password: &str) -> String {
    let response = login(addr, "admin", password).await;
    assert_eq!(response.status, 201, "{}", response.body);
    json(&response)["token"].as_str().unwrap().to_string()
}

async fn put_server_url(addr: SocketAddr, token: &str, value: &str) -> HttpResponse {
    let body = serde_json::json!({ "value": value }).to_string();
    let auth = bearer(token);
    request(
        addr,
        "PUT",
        "/v3/settings/server-url",
        &[&auth],
        Some(&body),
    )
    .await
}

async fn leaf_for(addr: SocketAddr, sni: &str) -> Vec<u8> {
    tls_connect(addr, Some(sni), None)
        .await
        .unwrap()
        .leaf()
        .to_vec()
}

/// Polls `path` on `addr` (with `auth`) until it answers 200; its body.
async fn until_ok(addr: SocketAddr, path: &str, auth: &str, what: &str) -> String {
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    loop {
        let answer = request(addr, "GET", path, &[auth], None).await;
        if answer.status == 200 {
            return answer.body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} {}",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One etcd, two peered replicas: a lab set up on the first (the holder), and the other. The etcd
/// and the replicas' root directory live as long as what is returned.
async fn two_replicas() -> (EtcdCluster, tempfile::TempDir, Lab, Corral) {
    let etcd = EtcdCluster::start(1);
    let root = tempfile::tempdir().unwrap();
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", lab::BOOTSTRAP)];
    let mut replicas = replicas_at_once(&etcd, root.path(), 2, &env);
    let other = replicas.pop().unwrap();
    let holder = replicas.pop().unwrap();
    wait_peered(&[&holder, &other]).await;
    let holder_addr = holder.https("127.0.0.1");
    let lab = Lab::setup(holder, holder_addr).await;
    (etcd, root, lab, other)
}

fn banner_password(corral: &Corral) -> Option<String> {
    corral
        .logs()
        .iter()
        .find_map(|l| l.split("Bootstrap Password: ").nth(1).map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_on_an_empty_store_make_one_installation() {
    let etcd = EtcdCluster::start(3);
    let root = tempfile::tempdir().unwrap();
    let replicas = replicas_at_once(&etcd, root.path(), 3, &[]);

    // One CA: the same /cacerts and checksum everywhere.
    let mut cacerts = Vec::new();
    for corral in &replicas {
        cacerts.push(corral.cacerts().await);
    }
    assert!(cacerts.iter().all(|c| c == &cacerts[0]), "{cacerts:#?}");
    let checksum = sha256_hex(cacerts[0].as_bytes());
    for corral in &replicas {
        assert!(
            corral.logged(&format!("CA checksum: {checksum}")),
            "{:#?}",
            corral.logs()
        );
    }

    // One bootstrap password, shown by every replica's banner, and one admin it logs in to.
    let passwords: Vec<_> = replicas.iter().map(banner_password).collect();
    assert!(passwords[0].is_some(), "{passwords:?}");
    assert!(
        passwords.iter().all(|p| p == &passwords[0]),
        "{passwords:?}"
    );
    let password = passwords[0].clone().unwrap();
    let mut user_ids = Vec::new();
    for corral in &replicas {
        let response = login(corral.https("127.0.0.1"), "admin", &password).await;
        assert_eq!(response.status, 201, "{}", response.body);
        user_ids.push(json(&response)["userId"].as_str().unwrap().to_string());
    }
    assert!(user_ids.iter().all(|id| id == &user_ids[0]), "{user_ids:?}");
    // Users are keys of their own: exactly one admin.
    let users = etcd.keys("/corral/corral/users/");
    let admins: Vec<Value> = users
        .iter()
        .map(|key| serde_json::from_str(&etcd.value(key)).unwrap())
        .filter(|u: &Value| u["username"] == "admin")
        .collect();
    assert_eq!(admins.len(), 1, "{admins:?}");
    assert_eq!(admins[0]["id"], user_ids[0].as_str());

    // Readable with etcdctl, Rancher's secret names where Rancher has them; nothing durable on disk.
    let keys = etcd.keys("/corral/");
    for key in [
        "/corral/cattle-system/tls-rancher",
        "/corral/cattle-system/bootstrap-secret",
        "/corral/corral/accounts",
        "/corral/corral/leaf-key",
    ] {
        assert!(keys.contains(&key.to_string()), "{key} in {keys:?}");
    }
    let secret: Value =
        serde_json::from_str(&etcd.value("/corral/cattle-system/tls-rancher")).unwrap();
    assert_eq!(
        secret["tls.crt"].as_str().unwrap().trim(),
        cacerts[0].trim()
    );
    for i in 0..replicas.len() {
        let dir = root.path().join(format!("replica-{i}"));
        for file in [
            "ca.key",
            "ca.crt",
            "leaf.key",
            "setup.json",
            "bootstrap-password",
        ] {
            assert!(!dir.join(file).exists(), "{file} in replica {i}'s data dir");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_url_set_on_one_replica_pins_every_replica() {
    let etcd = EtcdCluster::start(3);
    let root = tempfile::tempdir().unwrap();
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", "ha-bootstrap")];
    let replicas = replicas_at_once(&etcd, root.path(), 3, &env);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|c| c.https("127.0.0.1")).collect();

    // Before: every replica mints per name, from the one CA.
    for addr in &addrs {
        assert_eq!(
            sans(&leaf_for(*addr, "before.lab.test").await),
            ["DNS:before.lab.test"]
        );
    }
    let token = admin_token(addrs[0], "ha-bootstrap").await;
    let set = put_server_url(addrs[0], &token, "https://ha.lab.test").await;
    assert_eq!(set.status, 200, "{}", set.body);

    // Replicas 2 and 3 pin ha.lab.test without being asked (bounded poll).
    for addr in &addrs[1..] {
        let deadline = Instant::now() + PROPAGATION_LIMIT;
        loop {
            let served = sans(&leaf_for(*addr, "other.lab.test").await);
            if served == ["DNS:ha.lab.test"] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{addr} still serves {served:?} {PROPAGATION_LIMIT:?} after the PUT"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The token issued by replica 1 is good on replica 3, and the 409 rule holds there.
    let moved = put_server_url(addrs[2], &token, "https://elsewhere.lab.test").await;
    assert_eq!(moved.status, 409, "{}", moved.body);
    let again = put_server_url(addrs[1], &token, "https://ha.lab.test").await;
    assert_eq!(again.status, 200, "{}", again.body);

    // A replica started later pins from the stored setting before it serves anything.
    let late = replica(&etcd, &root.path().join("late"), &env);
    assert_eq!(
        sans(&leaf_for(late.https("127.0.0.1"), "x.lab.test").await),
        ["DNS:ha.lab.test"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_faults_stop_writes_but_not_handshakes_and_everything_recovers() {
    let mut etcd = EtcdCluster::start(3);
    let root = tempfile::tempdir().unwrap();
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", lab::BOOTSTRAP)];
    let corral = replica(&etcd, &root.path().join("r"), &env);
    let addr = corral.https("127.0.0.1");
    // An agent's tunnel, open before etcd goes.
    let lab = Lab::setup(corral, addr).await;
    let _agent = lab.simulated_agents(&[&lab.registration], 1);
    lab.wait_connected(true).await;
    let auth = lab.auth();
    let create = |name: &'static str| {
        let auth = auth.clone();
        async move {
            let body = serde_json::json!({ "name": name }).to_string();
            request(addr, "POST", "/v3/clusters", &[&auth], Some(&body)).await
        }
    };
    let minted_before = sans(&leaf_for(addr, "cached.lab.test").await);

    // One member down: the others keep a quorum, and writes go on.
    etcd.kill(0);
    let created = create("one-member-down").await;
    assert_eq!(created.status, 201, "{}", created.body);

    // All of etcd down: handshakes (cached and new names) and authenticated reads go on; writes 503.
    etcd.kill_all();
    assert_eq!(
        sans(&leaf_for(addr, "cached.lab.test").await),
        minted_before
    );
    assert_eq!(
        sans(&leaf_for(addr, "new-while-down.lab.test").await),
        ["DNS:new-while-down.lab.test"]
    );
    let listed = request(addr, "GET", "/v3/clusters", &[&auth], None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert!(listed.body.contains("one-member-down"), "{}", listed.body);
    let refused = create("while-down").await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(
        json(&refused)["code"],
        "ServiceUnavailable",
        "{}",
        refused.body
    );
    // The open tunnel goes on: kubectl's requests reach the cluster.
    let through = lab.proxied("/version").await;
    assert_eq!(through.status, 200, "{}", through.body);
    assert!(
        json(&refused)["message"]
            .as_str()
            .is_some_and(|m| m.contains("store")),
        "{}",
        refused.body
    );

    // etcd back: writes work again (bounded wait for the client to reconnect), nothing was lost.
    etcd.restart_all();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let created = create("after-recovery").await;
        if created.status == 201 {
            break;
        }
        assert_eq!(created.status, 503, "{}", created.body);
        assert!(
            Instant::now() < deadline,
            "no write 30 s after etcd came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One key per cluster.
    let stored: String = etcd
        .keys("/corral/corral/clusters/")
        .iter()
        .map(|key| etcd.value(key))
        .collect();
    for name in ["one-member-down", "after-recovery"] {
        assert!(stored.contains(name), "{name} in {stored}");
    }
    assert!(!stored.contains("while-down\""), "{stored}");
}

/// Waits until every replica has a peer session from each of the others.
async fn wait_peered(replicas: &[&Corral]) {
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    let peers = replicas.len() - 1;
    loop {
        let counts: Vec<usize> = replicas
            .iter()
            .map(|c| {
                c.logs()
                    .iter()
                    .filter(|l| l.contains("peer ") && l.ends_with(" connected"))
                    .count()
            })
            .collect();
        if counts.iter().all(|&n| n >= peers) {
            return;
        }
        assert!(Instant::now() < deadline, "peer sessions: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("timeout")
        .args(["20", "kubectl", "--kubeconfig"])
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_balancer_every_replica_reaches_every_agent_and_a_killed_replica_loses_nothing() {
    let etcd = EtcdCluster::start(3);
    let root = tempfile::tempdir().unwrap();
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", lab::BOOTSTRAP)];
    let mut replicas = replicas_at_once(&etcd, root.path(), 3, &env);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|c| c.https("127.0.0.1")).collect();
    let pids: Vec<u32> = replicas.iter().map(Corral::pid).collect();
    wait_peered(&replicas.iter().collect::<Vec<_>>()).await;
    let balancer = Balancer::start(&addrs);
    let lab = Lab::setup(replicas.remove(0), balancer.addr).await;
    let _agent = lab.simulated_agents(&[&lab.registration], 1);
    lab.wait_connected(true).await;

    // Every replica reaches the cluster: the one holding the tunnel directly, the others through
    // it (a relayed dial), and each shows the cluster connected.
    let holder = {
        let needle = format!("tunnel for {} connected", lab.cluster);
        let mut holders = Vec::new();
        if lab.corral.logged(&needle) {
            holders.push(0);
        }
        for (i, corral) in replicas.iter().enumerate() {
            if corral.logged(&needle) {
                holders.push(i + 1);
            }
        }
        assert_eq!(
            holders.len(),
            1,
            "one replica holds the tunnel: {holders:?}"
        );
        holders[0]
    };
    let version = format!("/k8s/clusters/{}/version", lab.cluster);
    for (i, addr) in addrs.iter().enumerate() {
        let what = format!("replica {i} (holder {holder})");
        let body = until_ok(*addr, &version, &lab.auth(), &what).await;
        assert!(body.contains("corral-simulated"), "{body}");
        let path = format!("/v3/clusters/{}", lab.cluster);
        let state = json(&request(*addr, "GET", &path, &[&lab.auth()], None).await);
        assert_eq!(state["connected"], true, "replica {i}: {state}");
    }

    // A node agent's tunnel is reached from every replica too (`<cluster>:<node>` relayed).
    let web = common::target::serve(None, |_req: hyper::Request<hyper::body::Incoming>| async {
        common::target::full(hyper::StatusCode::OK, "on the node")
    })
    .await;
    let _node = lab.node_agents("ha-node", 1);
    let node_id = {
        let nodes = format!("/v3/nodes?clusterId={}", lab.cluster);
        let deadline = Instant::now() + PROPAGATION_LIMIT;
        loop {
            let listed = json(&request(balancer.addr, "GET", &nodes, &[&lab.auth()], None).await);
            if listed["data"][0]["state"] == "active" {
                break listed["data"][0]["id"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "{listed}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let through_node = format!("/v3/nodes/{node_id}/proxy/{web}/");
    for (i, addr) in addrs.iter().enumerate() {
        let body = until_ok(*addr, &through_node, &lab.auth(), &format!("replica {i}")).await;
        assert_eq!(body, "on the node");
    }

    // One key per agent session and per node: the clusters document does not grow with agents
    // (etcd takes at most 1.5 MiB in one write).
    let keys = etcd.keys("/corral/corral/");
    let session_prefix = format!("/corral/corral/cluster-agents/{}:", lab.cluster);
    assert!(
        keys.iter().any(|k| k.starts_with(&session_prefix)),
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!("/corral/corral/nodes/{node_id}")),
        "{keys:?}"
    );
    let cluster_key = format!("/corral/corral/clusters/{}", lab.cluster);
    assert!(!etcd.value(&cluster_key).contains("caCert"));

    // kubectl through the balancer, then the replica holding the agent is killed.
    let kubeconfig = lab.kubeconfig(&lab.cluster).await;
    let created = kubectl(kubeconfig.path(), &["create", "namespace", "before-kill"]);
    assert!(created.is_ok(), "{created:?}");
    let cluster_before = request(balancer.addr, "GET", "/v3/clusters", &[&lab.auth()], None).await;
    assert!(cluster_before.body.contains(&lab.cluster));
    std::process::Command::new("kill")
        .args(["-KILL", &pids[holder].to_string()])
        .status()
        .unwrap();
    let killed = Instant::now();
    let dead = format!("/corral/corral/replicas/{}", addrs[holder]);

    // The agent comes back through the balancer to another replica, and kubectl works again.
    let deadline = killed + Duration::from_secs(60);
    loop {
        if let Ok(listed) = kubectl(kubeconfig.path(), &["get", "ns", "before-kill"]) {
            assert!(listed.contains("Active"), "{listed}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl failed 60 s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "kubectl through the balancer again {:?} after the kill",
        killed.elapsed()
    );
    // Nothing written before the kill is lost: the cluster, its token's login session, the admin.
    let after = request(balancer.addr, "GET", "/v3/clusters", &[&lab.auth()], None).await;
    assert_eq!(after.status, 200, "{}", after.body);
    assert!(after.body.contains(&lab.cluster), "{}", after.body);
    assert_eq!(
        login(balancer.addr, "admin", lab::BOOTSTRAP).await.status,
        201
    );
    // The dead replica leaves the peer set when its lease (10 s) expires.
    let deadline = killed + Duration::from_secs(40);
    while etcd.keys("/corral/corral/replicas/").contains(&dead) {
        assert!(
            Instant::now() < deadline,
            "{dead} still registered 40 s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Signs, with the installation's CA and leaf key (read from etcd, as an admin with etcdctl could),
/// a certificate for `hostname` that expires in a day: inside the renewal window.
fn expiring_ingress_secret(etcd: &EtcdCluster, hostname: &str) -> String {
    let ca: Value = serde_json::from_str(&etcd.value("/corral/cattle-system/tls-rancher")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(ca["tls.key"].as_str().unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca["tls.crt"].as_str().unwrap(), ca_key).unwrap();
    let leaf_key_pem = etcd.value("/corral/corral/leaf-key");
    let leaf_key = rcgen::KeyPair::from_pem(leaf_key_pem.trim()).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(1);
    let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
    serde_json::json!({
        "tls.crt": leaf.pem(),
        "tls.key": leaf_key_pem,
        "ca.crt": ca["tls.crt"],
    })
    .to_string()
}

fn renewers(replicas: &[Option<Corral>], hostname: &str) -> Vec<usize> {
    let needle = format!("renewed the certificate for {hostname}");
    (0..replicas.len())
        .filter(|&i| replicas[i].as_ref().is_some_and(|c| c.logged(&needle)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_mode_serves_one_stored_certificate_renewed_by_one_replica() {
    const HOSTNAME: &str = "rancher.lab.test";
    let etcd = EtcdCluster::start(3);
    let root = tempfile::tempdir().unwrap();
    let env = [("CORRAL_HOSTNAME", HOSTNAME)];
    let mut replicas: Vec<Option<Corral>> = replicas_at_once(&etcd, root.path(), 3, &env)
        .into_iter()
        .map(Some)
        .collect();
    let addrs: Vec<SocketAddr> = replicas
        .iter()
        .map(|c| c.as_ref().unwrap().https("127.0.0.1"))
        .collect();

    // One certificate, for the hostname only, whatever the client asks for, on every replica.
    let stored_leaf = || {
        let secret: Value =
            serde_json::from_str(&etcd.value("/corral/cattle-system/tls-rancher-ingress")).unwrap();
        for field in ["tls.crt", "tls.key", "ca.crt"] {
            assert!(secret[field].as_str().is_some(), "{field} in {secret}");
        }
        use rustls::pki_types::pem::PemObject;
        let pem = secret["tls.crt"].as_str().unwrap().to_string();
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    let first = stored_leaf();
    for addr in &addrs {
        for sni in [HOSTNAME, "other.lab.test"] {
            assert_eq!(leaf_for(*addr, sni).await, first, "{addr} {sni}");
        }
        let no_sni = tls_connect(*addr, None, None).await.unwrap();
        assert_eq!(no_sni.leaf().to_vec(), first);
    }
    assert_eq!(sans(&first), [format!("DNS:{HOSTNAME}")]);
    let banner = format!("Use https://{HOSTNAME}/dashboard/");
    assert!(replicas[0].as_ref().unwrap().logged(&banner));

    // A certificate about to expire (as cert-manager would find it): exactly one replica renews
    // it, and every replica serves the renewal.
    // Puts an expiring certificate; returns the leaf put.
    let put_expiring = || {
        let secret = expiring_ingress_secret(&etcd, HOSTNAME);
        etcd.etcdctl(&["put", "/corral/cattle-system/tls-rancher-ingress", &secret]);
        stored_leaf()
    };
    put_expiring();
    let deadline = Instant::now() + Duration::from_secs(30);
    let holds_lease = |replicas: &[Option<Corral>], i: usize| {
        replicas[i]
            .as_ref()
            .is_some_and(|c| c.logged("now holds /corral/corral/ingress-renewer"))
    };
    let renewer = loop {
        let found = renewers(&replicas, HOSTNAME);
        if let [one] = found[..] {
            // The renewal is the lease holder's, not whoever noticed first.
            assert!(
                holds_lease(&replicas, one),
                "replica {one} renewed without the lease"
            );
            break one;
        }
        assert!(found.len() < 2, "several replicas renewed: {found:?}");
        assert!(Instant::now() < deadline, "nobody renewed within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let renewed = stored_leaf();
    assert_ne!(renewed, first);
    for addr in &addrs {
        let deadline = Instant::now() + PROPAGATION_LIMIT;
        while leaf_for(*addr, "x.lab.test").await != renewed {
            assert!(
                Instant::now() < deadline,
                "{addr} does not serve the renewal"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Again: the same replica (the holder) renews, no other.
    let expiring = put_expiring();
    let deadline = Instant::now() + Duration::from_secs(30);
    while [&expiring, &renewed].contains(&&stored_leaf()) {
        assert!(Instant::now() < deadline, "the second renewal never came");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(renewers(&replicas, HOSTNAME), [renewer]);

    // The renewer dies: another replica takes the lease over and renews the next time.
    let killed = replicas[renewer].take().unwrap();
    drop(killed);
    put_expiring();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let found = renewers(&replicas, HOSTNAME);
        if let [one] = found[..] {
            assert_ne!(one, renewer);
            assert!(
                holds_lease(&replicas, one),
                "replica {one} renewed without the lease"
            );
            break;
        }
        assert!(found.len() < 2, "several replicas renewed: {found:?}");
        assert!(
            Instant::now() < deadline,
            "no other replica renewed within 45 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An agent that reconnects to another replica may advertise another CA and token (each simulated
/// cluster makes its own): every replica proxies with what the agent advertised on the session the
/// dial takes, never with what an earlier session advertised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnected_agent_is_proxied_with_what_it_advertised_last() {
    let etcd = EtcdCluster::start(1);
    let root = tempfile::tempdir().unwrap();
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", lab::BOOTSTRAP)];
    let mut replicas = replicas_at_once(&etcd, root.path(), 2, &env);
    let other = replicas.pop().unwrap();
    wait_peered(&[&replicas[0], &other]).await;
    let lab = Lab::setup(replicas.pop().unwrap(), other.https("127.0.0.1")).await;
    let addrs = [lab.corral.https("127.0.0.1"), other.https("127.0.0.1")];
    let version = format!("/k8s/clusters/{}/version", lab.cluster);
    let answers_everywhere = || async {
        for (i, addr) in addrs.iter().enumerate() {
            until_ok(*addr, &version, &lab.auth(), &format!("replica {i}")).await;
        }
    };
    // The first agent on replica 0, reached from both.
    let first_server = format!("https://{}", addrs[0]);
    let mut first = lab.simulated_agents_at(&first_server, &[&lab.registration], 1);
    answers_everywhere().await;
    first.kill();
    // A new agent process (a new CA) on replica 1: replica 0 relays, with the new CA.
    let second_server = format!("https://{}", addrs[1]);
    let _second = lab.simulated_agents_at(&second_server, &[&lab.registration], 1);
    answers_everywhere().await;

    // Another cluster, its agent (another CA) on replica 0. Each replica lists both clusters with
    // the apiEndpoint and caCert their agents advertised: its own agent's from memory, the other's
    // read from etcd (a list reads those together): the same on both, each with its own cluster.
    let (extra, extra_token) = lab.add_cluster("extra").await;
    let _third = lab.simulated_agents_at(&first_server, &[&extra_token], 1);
    let advertised = |listed: &Value, id: &str| {
        let cluster = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id);
        let cluster = cluster.unwrap_or_else(|| panic!("{id} in {listed}"));
        (cluster["apiEndpoint"].clone(), cluster["caCert"].clone())
    };
    let mut seen = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (lab_cluster, extra_cluster) = loop {
            let listed = request(*addr, "GET", "/v3/clusters", &[&lab.auth()], None).await;
            let listed = json(&listed);
            let both = (
                advertised(&listed, &lab.cluster),
                advertised(&listed, &extra),
            );
            if both.0.1.is_string() && both.1.1.is_string() {
                break both;
            }
            assert!(Instant::now() < deadline, "replica {i}: {listed}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(lab_cluster.0.as_str().unwrap().starts_with("https://"));
        assert_ne!(lab_cluster.1, extra_cluster.1, "two agents, two CAs");
        let path = format!("/v3/clusters/{extra}");
        let one = json(&request(*addr, "GET", &path, &[&lab.auth()], None).await);
        assert_eq!(
            (one["apiEndpoint"].clone(), one["caCert"].clone()),
            extra_cluster
        );
        // A list reads what was advertised for its page only: a page past the first has it too,
        // and a filter on it (read for every cluster then) still finds the cluster.
        let path = format!("/v3/clusters?limit=1&marker={extra}");
        let page = json(&request(*addr, "GET", &path, &[&lab.auth()], None).await);
        assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");
        assert_eq!(advertised(&page, &extra), extra_cluster);
        let endpoint = extra_cluster.0.as_str().unwrap();
        let path = format!("/v3/clusters?apiEndpoint={endpoint}");
        let filtered = json(&request(*addr, "GET", &path, &[&lab.auth()], None).await);
        assert_eq!(advertised(&filtered, &extra), extra_cluster);
        let endpoints: Vec<&Value> = filtered["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["apiEndpoint"])
            .collect();
        assert!(
            endpoints.iter().all(|e| *e == &extra_cluster.0),
            "{filtered}"
        );
        seen.push((lab_cluster, extra_cluster));
    }
    assert_eq!(
        seen[0], seen[1],
        "both replicas show what the agents advertised"
    );
}

/// etcd with TLS and client certificates: corral reaches it with `--etcd-ca/--etcd-cert/--etcd-key`,
/// and without a client certificate it does not start (etcd refuses it), saying so. The commands
/// that work on the state without serving (`ca checksum`, `reset-password`) take `--store` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_and_the_offline_commands_on_the_store() {
    let etcd = EtcdCluster::start_tls(1);
    let tls = etcd.tls().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (
        tls.ca.display().to_string(),
        tls.client_cert.display().to_string(),
        tls.client_key.display().to_string(),
    );
    let url = etcd.url();
    let with_tls = [
        "--store",
        &url,
        "--etcd-ca",
        &ca,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key,
    ];
    let corral = Corral::start_in(
        &root.path().join("r"),
        &with_tls,
        &[("CATTLE_BOOTSTRAP_PASSWORD", "tls-bootstrap")],
    )
    .expect("starts with etcd's TLS");
    let addr = corral.https("127.0.0.1");
    let token = admin_token(addr, "tls-bootstrap").await;
    assert!(
        etcd.keys("/corral/")
            .contains(&"/corral/corral/accounts".to_string())
    );

    // Without a client certificate etcd refuses the connection: no start, and why.
    let refused = Corral::start_in(
        &root.path().join("no-cert"),
        &["--store", &url, "--etcd-ca", &ca],
        &[],
    );
    let output = refused
        .err()
        .expect("no start without a client certificate");
    assert!(output.contains("store is unavailable"), "{output}");

    // `ca checksum --store` prints what the running replica logged; `reset-password --store`
    // changes the password the running replica checks.
    let data_dir = root.path().join("offline");
    let data_dir = data_dir.display().to_string();
    let offline = [&["--data-dir", data_dir.as_str()][..], &with_tls[..]].concat();
    let (code, stdout, stderr) = run_corral(&[&["ca", "checksum"][..], &offline].concat(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        corral.logged(&format!("CA checksum: {}", stdout.trim())),
        "{stdout}"
    );
    let (code, stdout, stderr) = run_corral(&[&["reset-password"][..], &offline].concat(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let new_password = stdout.lines().last().unwrap().trim().to_string();
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    while login(addr, "admin", &new_password).await.status != 201 {
        assert!(Instant::now() < deadline, "the new password never worked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old = request(addr, "GET", "/v3/clusters", &[&bearer(&token)], None).await;
    assert_eq!(old.status, 401, "the old token is revoked: {}", old.body);
}

/// ACME on replicas: the replica holding the orderer lease orders once, and every replica serves the
/// certificate it stored. The ACME server's HTTP-01 validation goes through a balancer to the
/// *other* replica only: it answers with what the orderer stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_replicas_order_once_and_any_replica_answers_the_validation() {
    let etcd = EtcdCluster::start(1);
    let (http_front, tls_front) = (free_port(), free_port());
    let pebble = common::pebble::Pebble::start(http_front, tls_front);
    let root = tempfile::tempdir().unwrap();
    let store = ["--store".to_string(), etcd.url()];
    let args: Vec<String> = [&store[..], &pebble.corral_args("http-01")].concat();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let replicas: Vec<Corral> = (0..2)
        .map(|i| Corral::start_in(&root.path().join(format!("r{i}")), &args, &[]).unwrap())
        .collect();
    let orderer = {
        let deadline = Instant::now() + PROPAGATION_LIMIT;
        loop {
            let holding: Vec<usize> = (0..2)
                .filter(|&i| replicas[i].logged("now holds /corral/corral/acme-orderer"))
                .collect();
            if let [one] = holding[..] {
                break one;
            }
            assert!(holding.len() < 2, "two orderers");
            assert!(
                Instant::now() < deadline,
                "no replica took the orderer lease"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let other = 1 - orderer;
    let _http = Balancer::start_on(http_front, &[replicas[other].http()]);

    let deadline = Instant::now() + Duration::from_secs(90);
    while !replicas[orderer].logged("ACME: obtained a certificate") {
        assert!(
            Instant::now() < deadline,
            "{}",
            replicas[orderer].logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!replicas[other].logged("ACME: obtained"), "one order only");
    let pebble_root = pebble.issuing_root().await;
    let mut leaves = Vec::new();
    for corral in &replicas {
        let addr = corral.https("127.0.0.1");
        let deadline = Instant::now() + PROPAGATION_LIMIT;
        let leaf = loop {
            match tls_connect(addr, Some("corral.lab.test"), Some(&pebble_root)).await {
                Ok(handshake) => break handshake.leaf().to_vec(),
                Err(e) => assert!(Instant::now() < deadline, "{addr}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        leaves.push(leaf);
    }
    assert_eq!(leaves[0], leaves[1], "one certificate for both");
    let keys = etcd.keys("/corral/corral/acme");
    for key in ["acme-account", "acme-cert", "acme-key"] {
        assert!(keys.contains(&format!("/corral/corral/{key}")), "{keys:?}");
    }
}

/// `--cert-mode shared` on replicas: names learned on one replica reach the others, and every
/// replica ends up serving one certificate with all of them (each write stores the union).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_mode_replicas_converge_on_one_set_of_names() {
    let etcd = EtcdCluster::start(1);
    let root = tempfile::tempdir().unwrap();
    let url = etcd.url();
    let args = ["--store", &url, "--cert-mode", "shared"];
    let replicas: Vec<Corral> = (0..2)
        .map(|i| Corral::start_in(&root.path().join(format!("r{i}")), &args, &[]).unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|c| c.https("127.0.0.1")).collect();
    leaf_for(addrs[0], "a.lab.test").await;
    leaf_for(addrs[1], "b.lab.test").await;
    leaf_for(addrs[0], "c.lab.test").await;
    for addr in &addrs {
        let deadline = Instant::now() + PROPAGATION_LIMIT;
        loop {
            let served = sans(&leaf_for(*addr, "a.lab.test").await);
            let has = |name: &str| served.iter().any(|s| s == &format!("DNS:{name}"));
            if has("a.lab.test") && has("b.lab.test") && has("c.lab.test") {
                break;
            }
            assert!(Instant::now() < deadline, "{addr} serves {served:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let stored = etcd.value("/corral/cattle-system/serving-cert");
    for name in ["a.lab.test", "b.lab.test", "c.lab.test"] {
        assert!(stored.contains(name), "{name} in {stored}");
    }
}

/// An etcd with a 1 MiB quota (what a lab might give it) takes 300 kubeconfig tokens and 6,000
/// settings writes — about 1.4 MB of history, past its quota — and still takes logins: a write
/// costs what it changed (a token is a key of its own), and corral compacts etcd's history itself.
/// Expired tokens are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_etcd_keeps_taking_tokens_settings_and_logins() {
    const QUOTA: u64 = 1 << 20;
    let etcd = EtcdCluster::start_with_flags(1, &["--quota-backend-bytes", &QUOTA.to_string()]);
    let root = tempfile::tempdir().unwrap();
    let password = "small-etcd-bootstrap";
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", password)];
    let url = etcd.url();
    let args = ["--store", &url, "--etcd-compaction-interval", "1"];
    let corral = Corral::start_in(&root.path().join("r"), &args, &env).unwrap();
    let addr = corral.https("127.0.0.1");
    let auth = bearer(&admin_token(addr, password).await);
    let mut api = KeepAlive::open(addr).await;
    let created = api
        .request(
            "POST",
            "/v3/clusters",
            &[&auth],
            Some(r#"{"name":"quota"}"#),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let kubeconfig = format!(
        "/v3/clusters/{}?action=generateKubeconfig",
        json(&created)["id"].as_str().unwrap()
    );
    for i in 0..300 {
        let response = api.request("POST", &kubeconfig, &[&auth], None).await;
        assert_eq!(response.status, 200, "kubeconfig {i}: {}", response.body);
    }
    for i in 0..6000 {
        let value = ["false", "true"][i % 2];
        let body = format!(r#"{{"value":"{value}"}}"#);
        let path = "/v3/settings/first-login";
        let response = api.request("PUT", path, &[&auth], Some(&body)).await;
        assert_eq!(response.status, 200, "setting write {i}: {}", response.body);
    }
    let size = etcd.db_size();
    eprintln!("etcd's database after 6,300 writes: {size} bytes (quota {QUOTA})");
    assert!(size < QUOTA / 2, "{size} bytes: the history is compacted");
    assert_eq!(login(addr, "admin", password).await.status, 201);
    assert!(
        etcd.keys("/corral/corral/tokens/").len() >= 300,
        "the tokens are keys of their own"
    );

    // Tokens that expired long ago are deleted (here: by a restarted replica's first sweep).
    for i in 0..20 {
        let token = serde_json::json!({"name": format!("token-old{i}"), "secretHash": "00",
            "userId": "user-x", "created": 1, "expiresAt": 2});
        let key = format!("/corral/corral/tokens/token-old{i}");
        etcd.etcdctl(&["put", &key, &token.to_string()]);
    }
    drop(api);
    let dir = corral.stop();
    let corral = Corral::start_in(&root.path().join("r"), &args, &env).unwrap();
    assert_eq!(
        login(corral.https("127.0.0.1"), "admin", password)
            .await
            .status,
        201
    );
    let left: Vec<String> = etcd
        .keys("/corral/corral/tokens/")
        .into_iter()
        .filter(|k| k.contains("token-old"))
        .collect();
    assert!(left.is_empty(), "expired tokens kept: {left:?}");
    drop(dir);
}

/// Logins on three replicas while `corral reset-password --store` runs: no token they got outlives
/// the reset, on any replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_on_every_replica_racing_a_reset_keep_no_session() {
    let etcd = EtcdCluster::start(1);
    let root = tempfile::tempdir().unwrap();
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", "replicas-racing-a-reset")];
    let replicas = replicas_at_once(&etcd, root.path(), 3, &env);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.https("127.0.0.1")).collect();
    let (url, offline) = (etcd.url(), root.path().join("offline"));
    let reset = move || {
        let data_dir = offline.display().to_string();
        let args = ["reset-password", "--store", &url, "--data-dir", &data_dir];
        let (code, _, stderr) = run_corral(&args, &[]);
        assert_eq!(code, Some(0), "{stderr}");
    };
    let issued = logins_racing_a_reset(&addrs, "replicas-racing-a-reset", reset).await;
    assert!(issued > 0, "some logins succeeded before the reset");
}

/// Two agents of one cluster (two processes, so two CAs and tokens) on one replica, as two agent
/// replicas or a rolling restart make them: every replica proxies through whichever session the
/// dial takes, with what that session advertised, and when either ends the others keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_tunnels_for_one_cluster_serve_every_replica_whichever_ends() {
    let etcd = EtcdCluster::start(1);
    let root = tempfile::tempdir().unwrap();
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", lab::BOOTSTRAP)];
    let mut replicas = replicas_at_once(&etcd, root.path(), 3, &env);
    let others: Vec<Corral> = replicas.drain(1..).collect();
    let holder = replicas.pop().unwrap();
    wait_peered(&[&holder, &others[0], &others[1]]).await;
    let holder_addr = holder.https("127.0.0.1");
    let lab = Lab::setup(holder, holder_addr).await;
    let addrs: Vec<SocketAddr> = std::iter::once(holder_addr)
        .chain(others.iter().map(|r| r.https("127.0.0.1")))
        .collect();
    let version = format!("/k8s/clusters/{}/version", lab.cluster);
    let tunnels_opened = |n: usize| {
        let line = format!("tunnel for {} connected", lab.cluster);
        let deadline = Instant::now() + PROPAGATION_LIMIT;
        while lab
            .corral
            .logs()
            .iter()
            .filter(|l| l.contains(&line))
            .count()
            < n
        {
            assert!(Instant::now() < deadline, "{n} tunnels never opened");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let every_replica_answers = |when: &'static str| {
        let (addrs, version, auth) = (addrs.clone(), version.clone(), lab.auth());
        async move {
            for (i, addr) in addrs.iter().enumerate() {
                until_ok(*addr, &version, &auth, &format!("{when}: replica {i}")).await;
                for _ in 0..5 {
                    let answer = request(*addr, "GET", &version, &[&auth], None).await;
                    assert_eq!(answer.status, 200, "{when}: replica {i}: {}", answer.body);
                }
            }
        }
    };
    let server = lab.server();
    let mut first = lab.simulated_agents_at(&server, &[&lab.registration], 1);
    tunnels_opened(1);
    every_replica_answers("one agent").await;
    let mut second = lab.simulated_agents_at(&server, &[&lab.registration], 1);
    tunnels_opened(2);
    every_replica_answers("two agents").await;
    second.kill();
    every_replica_answers("the newer one gone").await;
    let _third = lab.simulated_agents_at(&server, &[&lab.registration], 1);
    tunnels_opened(3);
    every_replica_answers("two agents again").await;
    first.kill();
    every_replica_answers("the older one gone").await;
}

/// A process that takes a dead replica's port while the replica is still registered gets TLS
/// connections from the others but never their peer token: a replica sends it only to a peer
/// whose certificate proves it one of the installation's replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_on_a_dead_replicas_port_gets_no_peer_token() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    let etcd = EtcdCluster::start(1);
    let root = tempfile::tempdir().unwrap();
    let mut replicas = replicas_at_once(&etcd, root.path(), 2, &[]);
    wait_peered(&[&replicas[0], &replicas[1]]).await;
    let victim = replicas.pop().unwrap();
    let port = victim.https_port;
    drop(victim.stop());
    let impostor = common::target::TestPki::new("impostor").server_config();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (dials, tokens) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (counted_dials, counted_tokens) = (dials.clone(), tokens.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted_dials.fetch_add(1, Ordering::SeqCst);
            let (acceptor, tokens) = (impostor.clone(), counted_tokens.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(acceptor).accept(tcp).await
                else {
                    return;
                };
                let mut head = vec![0u8; 4096];
                let n = tls.read(&mut head).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
                if head.contains("x-api-tunnel-token") {
                    tokens.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    // The dead replica stays registered until its lease (10 s) expires; the survivor redials it
    // every 5 s meanwhile.
    let deadline = Instant::now() + Duration::from_secs(15);
    while dials.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the survivor never dialed the impostor"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(tokens.load(Ordering::SeqCst), 0, "the peer token was sent");
    assert!(replicas[0].logged("not sending the peer token to"));
}

/// With `CORRAL_PEER_TOKEN`, every replica presents that token and accepts any peer presenting it,
/// registered or not — how Rancher's Go peers take part; a wrong token is not a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_peer_token_admits_peers_as_rancher_does() {
    let etcd = EtcdCluster::start(1);
    let root = tempfile::tempdir().unwrap();
    let env = [("CORRAL_PEER_TOKEN", "one-token-for-every-peer")];
    let replicas = replicas_at_once(&etcd, root.path(), 2, &env);
    wait_peered(&[&replicas[0], &replicas[1]]).await;
    let addr = replicas[0].https("127.0.0.1");
    let open_as_peer = |token: &'static str| async move {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("wss://{addr}/v3/connect")
            .into_client_request()
            .unwrap();
        let headers = request.headers_mut();
        headers.insert("X-API-Tunnel-ID", "10.0.0.9:443".parse().unwrap());
        headers.insert("X-API-Tunnel-Token", token.parse().unwrap());
        let tls = tls_connect(addr, None, None).await.unwrap().stream;
        tokio_tungstenite::client_async(request, tls).await
    };
    let (_ws, response) = open_as_peer("one-token-for-every-peer")
        .await
        .expect("a peer");
    assert_eq!(response.status(), 101);
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    while !replicas[0].logged("peer 10.0.0.9:443 connected") {
        assert!(Instant::now() < deadline, "served as a peer session");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Err(refused) = open_as_peer("another-token").await else {
        panic!("another token is not a peer's");
    };
    assert!(refused.to_string().contains("400"), "{refused}");
}

/// One installation through the API, whichever replica is asked: an API key made on one replica
/// works on the others and, deleted there, is refused everywhere; so is a session logged out of on
/// another replica; a cluster deleted through a
/// replica that does not hold its tunnel loses the tunnel anyway, and its agent is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_cluster_deletions_reach_every_replica() {
    let (_etcd, _root, lab, other) = two_replicas().await;
    let (holder_addr, other_addr) = (lab.addr, other.https("127.0.0.1"));

    let created = request(
        holder_addr,
        "POST",
        "/v3/tokens",
        &[&lab.auth()],
        Some(r#"{"type":"token","description":"ci"}"#),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let key = json(&created);
    let (name, secret) = (
        key["name"].as_str().unwrap(),
        key["token"].as_str().unwrap(),
    );
    let (_, secret_part) = secret.split_once(':').unwrap();
    let basic = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{secret_part}"))
    );
    for (i, addr) in [holder_addr, other_addr].into_iter().enumerate() {
        let me = until_ok(addr, "/v3/users?me=true", &basic, &format!("replica {i}")).await;
        assert!(me.contains("\"username\":\"admin\""), "{me}");
    }
    let deleted = request(
        other_addr,
        "DELETE",
        &format!("/v3/tokens/{name}"),
        &[&lab.auth()],
        None,
    )
    .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    loop {
        let refused = request(holder_addr, "GET", "/v3/users?me=true", &[&basic], None).await;
        if refused.status == 401 {
            assert_eq!(
                json(&refused)["message"],
                "must authenticate",
                "{}",
                refused.body
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted key still works: {}",
            refused.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A session made on the holder, logged out of through the other replica: refused on both.
    let session = admin_token(holder_addr, lab::BOOTSTRAP).await;
    // Each replica learns of a new session through its store watch, as Rancher's caches do.
    until_ok(
        other_addr,
        "/v3/tokens",
        &bearer(&session),
        "the session reaching the other replica",
    )
    .await;
    let logout = request(
        other_addr,
        "POST",
        "/v3/tokens?action=logout",
        &[&bearer(&session)],
        Some("{}"),
    )
    .await;
    assert_eq!(logout.status, 200, "{}", logout.body);
    for addr in [other_addr, holder_addr] {
        let deadline = Instant::now() + PROPAGATION_LIMIT;
        while request(addr, "GET", "/v3/tokens", &[&bearer(&session)], None)
            .await
            .status
            != 401
        {
            assert!(
                Instant::now() < deadline,
                "{addr} took a logged-out session"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _agent = lab.simulated_agents_at(&lab.server(), &[&lab.registration], 1);
    let version = format!("/k8s/clusters/{}/version", lab.cluster);
    until_ok(other_addr, &version, &lab.auth(), "through the holder").await;
    let gone = request(
        other_addr,
        "DELETE",
        &format!("/v3/clusters/{}", lab.cluster),
        &[&lab.auth()],
        None,
    )
    .await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    // The holder ends the tunnel, and refuses the agent when it comes back.
    lab.wait_tunnel_ended_and_refused(PROPAGATION_LIMIT).await;
    for addr in [holder_addr, other_addr] {
        let answer = request(addr, "GET", &version, &[&lab.auth()], None).await;
        assert_eq!(answer.status, 404, "{}", answer.body);
    }
}

/// A user made on one replica logs in on the other; a cluster binding made on one decides what
/// the user sees on the other; a user disabled on one is refused on the other. Each within the
/// propagation limit (a second or so on this machine: the store's watch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_their_bindings_reach_every_replica() {
    let (_etcd, _root, lab, other) = two_replicas().await;
    let (holder_addr, other_addr) = (lab.addr, other.https("127.0.0.1"));

    let alice = request(
        holder_addr,
        "POST",
        "/v3/users",
        &[&lab.auth()],
        Some(r#"{"username":"alice","password":"alice-password-1"}"#),
    )
    .await;
    assert_eq!(alice.status, 201, "{}", alice.body);
    let alice_id = json(&alice)["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let session = loop {
        let answer = login(other_addr, "alice", "alice-password-1").await;
        if answer.status == 201 {
            break json(&answer)["token"].as_str().unwrap().to_string();
        }
        assert!(
            started.elapsed() < PROPAGATION_LIMIT,
            "the new user never logged in on the other replica: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let clusters = until_ok(other_addr, "/v3/clusters", &bearer(&session), "alice").await;
    assert_eq!(
        serde_json::from_str::<Value>(&clusters).unwrap()["data"],
        json!([])
    );

    let binding = json!({"clusterId": lab.cluster, "roleTemplateId": "cluster-member",
                         "userId": alice_id})
    .to_string();
    let bound = request(
        holder_addr,
        "POST",
        "/v3/clusterroletemplatebindings",
        &[&lab.auth()],
        Some(&binding),
    )
    .await;
    assert_eq!(bound.status, 201, "{}", bound.body);
    let started = Instant::now();
    loop {
        let seen = request(
            other_addr,
            "GET",
            "/v3/clusters",
            &[&bearer(&session)],
            None,
        )
        .await;
        if seen.body.contains(&lab.cluster) {
            eprintln!(
                "the binding took effect on the other replica after {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < PROPAGATION_LIMIT,
            "the binding never reached the other replica: {}",
            seen.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let disabled = request(
        other_addr,
        "PUT",
        &format!("/v3/users/{alice_id}"),
        &[&lab.auth()],
        Some(r#"{"enabled":false}"#),
    )
    .await;
    assert_eq!(disabled.status, 200, "{}", disabled.body);
    let started = Instant::now();
    while request(
        holder_addr,
        "GET",
        "/v3/clusters",
        &[&bearer(&session)],
        None,
    )
    .await
    .status
        != 401
    {
        assert!(
            started.elapsed() < PROPAGATION_LIMIT,
            "the disabled user still works on the holder"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lab faults are shared through etcd: one made on a replica is served by the other, one removed
/// on either ends on both, and one whose replica is gone ends with it (its lease lapses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_faults_reach_every_replica_and_end_with_their_replica() {
    let (_etcd, _root, lab, other) = two_replicas().await;
    let (holder_addr, other_addr) = (lab.addr, other.https("127.0.0.1"));
    let ca = std::fs::read_to_string(lab.ca_file.path()).unwrap();
    let fault = |name: &str| {
        json!({"kind": "certificate", "scenario": "expired", "name": name}).to_string()
    };
    // Until `refused` is what a verifying client of `addr` meets for `name`.
    let until = |addr, name: &'static str, refused: bool| {
        let ca = ca.clone();
        async move {
            let started = Instant::now();
            while tls_connect(addr, Some(name), Some(&ca)).await.is_err() != refused {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "{name} on {addr} never became refused={refused}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            started.elapsed()
        }
    };
    let made = request(
        holder_addr,
        "POST",
        "/v3/corral/faults",
        &[&lab.auth()],
        Some(&fault("shared.lab.test")),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let id = json(&made)["id"].as_str().unwrap().to_string();
    until(holder_addr, "shared.lab.test", true).await;
    let reached = until(other_addr, "shared.lab.test", true).await;
    println!("a fault reached the other replica in {reached:?}");
    assert!(other.logged(&format!("lab fault {id} started")));
    // The other replica made the fault's keys and CAs itself, not at its first handshake.
    let ready = format!("lab fault {id}: ready to serve");
    let started = Instant::now();
    while !other.logged(&ready) {
        assert!(started.elapsed() < PROPAGATION_LIMIT, "{:?}", other.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Removed through the other replica: ended on both.
    let path = format!("/v3/corral/faults/{id}");
    let started = Instant::now();
    let removed = loop {
        let answer = request(other_addr, "DELETE", &path, &[&lab.auth()], None).await;
        if answer.status != 401 || started.elapsed() > PROPAGATION_LIMIT {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(removed.status, 200, "{}", removed.body);
    until(other_addr, "shared.lab.test", false).await;
    until(holder_addr, "shared.lab.test", false).await;
    assert!(
        lab.corral
            .logged(&format!("lab fault {id} ended (removed)"))
    );

    // A tunnel toxic made on the other replica slows the tunnel this replica holds.
    let agent = lab.simulated_agents(&[&lab.registration], 1);
    lab.wait_connected(true).await;
    // Once first (the cluster is told of its users then), to time what follows alone.
    let first = lab.proxied("/api/v1/namespaces/default").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let slow = json!({"kind": "tunnel", "toxic": "latency", "cluster": lab.cluster,
        "direction": "upstream", "latency": "400ms"})
    .to_string();
    let made = request(
        other_addr,
        "POST",
        "/v3/corral/faults",
        &[&lab.auth()],
        Some(&slow),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let started = Instant::now();
    loop {
        let asked = Instant::now();
        let answer = lab.proxied("/api/v1/namespaces/default").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        if asked.elapsed() >= Duration::from_millis(400) {
            break;
        }
        assert!(
            started.elapsed() < PROPAGATION_LIMIT,
            "the toxic never reached the replica holding the tunnel"
        );
    }
    let toxic_id = json(&made)["id"].as_str().unwrap().to_string();
    let gone = request(
        other_addr,
        "DELETE",
        &format!("/v3/corral/faults/{toxic_id}"),
        &[&lab.auth()],
        None,
    )
    .await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    drop(agent);

    // A fault of the other replica's ends with it.
    let theirs = request(
        other_addr,
        "POST",
        "/v3/corral/faults",
        &[&lab.auth()],
        Some(&fault("theirs.lab.test")),
    )
    .await;
    assert_eq!(theirs.status, 201, "{}", theirs.body);
    until(holder_addr, "theirs.lab.test", true).await;
    drop(other.stop()); // SIGKILL: nothing revokes its lease
    let lapsed = until(holder_addr, "theirs.lab.test", false).await;
    println!("a gone replica's fault ended {lapsed:?} after it was killed");
}

/// Clusters, registration tokens, nodes and settings are one etcd key each (issue 24): a store
/// written by an earlier corral, with every cluster in one document, another cluster's tokens and
/// nodes inside its key, and the settings in the accounts document, is moved to a key per object at
/// the first start, losing nothing (the old registration tokens still register agents, the old
/// setting reads as it was); deleting a cluster deletes its tokens' and nodes' keys; and a few
/// hundred clusters with their tokens fit a small-quota etcd whose database stays small, where the
/// document's rewrites filled it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_are_a_key_each_and_fit_a_small_etcd() {
    let etcd = EtcdCluster::start_with_flags(1, &["--quota-backend-bytes", "16777216"]);
    let root = tempfile::tempdir().unwrap();
    let secret = "legacy-registration-token-0123456789";
    let legacy = json!({"clusters": [{"id": "c-legcy", "name": "from-before", "created": 1,
        "tokens": [{"id": "crt-legcy", "hash": corral_hash(secret), "created": 1}]}]});
    etcd.etcdctl(&["put", "/corral/corral/clusters", &legacy.to_string()]);
    let embedded_secret = "embedded-registration-token-0123456789";
    let embedded = json!({"id": "c-embed", "name": "embedded", "created": 2,
        "tokens": [{"id": "crt-embed", "hash": corral_hash(embedded_secret), "created": 2}],
        "nodes": [{"id": "m-0123456789ab", "clusterId": "c-embed", "requestedHostname": "n1",
            "address": "10.0.0.1", "internalAddress": "", "etcd": true, "controlPlane": true,
            "worker": true, "created": 3}]});
    let embedded_key = "/corral/corral/clusters/c-embed";
    etcd.etcdctl(&["put", embedded_key, &embedded.to_string()]);
    let accounts = json!({"created": 1, "settings": {"ui-pl": "from-before"}});
    etcd.etcdctl(&["put", "/corral/corral/accounts", &accounts.to_string()]);
    let env = [("CATTLE_BOOTSTRAP_PASSWORD", lab::BOOTSTRAP)];
    let corral = replica(&etcd, &root.path().join("r0"), &env);
    let addr = corral.https("127.0.0.1");
    let lab = Lab::setup(corral, addr).await;
    assert!(
        lab.corral.logged("moved 1 cluster(s) from"),
        "{:?}",
        lab.corral.logs()
    );
    assert!(
        etcd.keys("/corral/corral/clusters")
            .iter()
            .all(|k| k != "/corral/corral/clusters")
    );
    let listed = request(addr, "GET", "/v3/clusters/c-legcy", &[&lab.auth()], None).await;
    assert_eq!(json(&listed)["name"], "from-before", "{}", listed.body);
    assert!(
        lab.corral
            .logged("moved 1 registration token(s) and 1 node(s) of 1 cluster(s)"),
        "{:?}",
        lab.corral.logs()
    );
    let token_keys = etcd.keys("/corral/corral/clusterregistrationtokens/");
    for key in ["c-legcy:crt-legcy", "c-embed:crt-embed"] {
        let key = format!("/corral/corral/clusterregistrationtokens/{key}");
        assert!(token_keys.contains(&key), "{token_keys:?}");
    }
    assert!(!etcd.value(embedded_key).contains("crt-embed"));
    let node_key = "/corral/corral/nodes/c-embed:m-0123456789ab";
    assert!(etcd.value(node_key).contains("10.0.0.1"));
    for (secret, cluster) in [(secret, "c-legcy"), (embedded_secret, "c-embed")] {
        let manifest = format!("/v3/import/{secret}_{cluster}.yaml");
        let found = request(addr, "GET", &manifest, &[], None).await;
        assert_eq!(found.status, 200, "{cluster}: {}", found.body);
    }
    let path = "/v3/clusterregistrationtokens/c-embed:crt-embed";
    let listed = request(addr, "GET", path, &[&lab.auth()], None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let path = "/v3/nodes?clusterId=c-embed";
    let nodes = request(addr, "GET", path, &[&lab.auth()], None).await;
    assert!(nodes.body.contains("m-0123456789ab"), "{}", nodes.body);
    let path = "/v3/clusters/c-embed";
    let deleted = request(addr, "DELETE", path, &[&lab.auth()], None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let left = etcd.keys("/corral/corral/");
    assert!(!left.iter().any(|k| k.contains("c-embed")), "{left:?}");
    assert!(lab.corral.logged("and 1 setting(s) out of"));
    let setting = request(addr, "GET", "/v3/settings/ui-pl", &[&lab.auth()], None).await;
    assert_eq!(json(&setting)["value"], "from-before", "{}", setting.body);
    assert!(
        !etcd
            .value("/corral/corral/accounts")
            .contains("from-before")
    );
    let stored: Value = serde_json::from_str(&etcd.value("/corral/corral/settings/ui-pl")).unwrap();
    assert_eq!(stored["value"], "from-before");
    let agent = lab.simulated_agents(&[secret], 1);
    let path = "/v3/clusters/c-legcy";
    let started = Instant::now();
    while json(&request(addr, "GET", path, &[&lab.auth()], None).await)["connected"] != true {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the legacy token never registered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(agent);

    // 300 clusters with a registration token each.
    let before = etcd.db_size();
    for i in 0..300 {
        lab.add_cluster(&format!("scale-{i}")).await;
    }
    let after = etcd.db_size();
    println!("etcd's database: {before} bytes before 300 clusters, {after} after");
    let tokens = etcd.keys("/corral/corral/clusterregistrationtokens/");
    assert_eq!(
        tokens.len(),
        302,
        "a key per token: 300, the lab's and the legacy one"
    );
    assert!(after - before < 8 << 20, "{before} → {after}");
    let all = json(&request(addr, "GET", "/v3/clusters", &[&lab.auth()], None).await);
    assert_eq!(
        all["data"].as_array().unwrap().len(),
        302,
        "lab, from-before and 300"
    );
}

/// The token hash corral keeps (`secrets::hash_token_secret`), for a store written by hand.
fn corral_hash(secret: &str) -> String {
    corral::secrets::hash_token_secret(secret)
}

/// A replica follows the store's changes through one queue per follower, sent only the paths that
/// follower wants: thousands of writes elsewhere (agents connecting, each saving what it
/// advertised) do not make the clusters' or the accounts' follower lag, which would make it read
/// everything it follows again. The old single queue of every change lagged after 256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_unrelated_writes_does_not_make_a_follower_lag() {
    use corral::store::etcd::{EtcdBackend, EtcdTls, EtcdUrl};
    use corral::store::{Backend, Changes};
    let etcd = EtcdCluster::start(1);
    let url = EtcdUrl::parse(&etcd.url()).unwrap();
    let store = EtcdBackend::connect(&url, &EtcdTls::default(), None, &[]).unwrap();
    let mut followed = Changes::of(store.as_ref(), |p| p.starts_with("test/followed/")).unwrap();
    let writer = store.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..1000 {
            writer
                .put_path(&format!("test/elsewhere/{i}"), b"{}")
                .unwrap();
        }
        writer.put_path("test/followed/one", b"{}").unwrap();
    })
    .await
    .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(20), followed.next_path()).await;
    assert_eq!(
        next.expect("the followed change arrives"),
        Some(Some("test/followed/one".to_string())),
        "the one change followed, not a lag"
    );
}

/// A replica starts, and catches up, however much the store holds: the whole prefix is read in
/// pages. In one answer, past 4 MiB (about 7,000 clusters with their bindings), gRPC refused it
/// ("decoded message length too large") and no replica could start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_larger_than_one_grpc_answer_still_loads() {
    use corral::store::Backend;
    use corral::store::etcd::{EtcdBackend, EtcdTls, EtcdUrl};
    let etcd = EtcdCluster::start(1);
    let url = EtcdUrl::parse(&etcd.url()).unwrap();
    let store = EtcdBackend::connect(&url, &EtcdTls::default(), None, &[]).unwrap();
    let value = vec![b'x'; 1024];
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (store, value) = (store.clone(), value.clone());
            tokio::task::spawn_blocking(move || {
                for i in 0..1300 {
                    store
                        .put_path(&format!("test/big/{w}-{i}"), &value)
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let again = tokio::task::spawn_blocking(move || {
        EtcdBackend::connect(&url, &EtcdTls::default(), None, &[])
            .map(|s| s.list("test/big/").len())
    })
    .await
    .unwrap();
    assert_eq!(again.expect("a second replica's store loads"), 5200);
}

/// What every agent advertised (a key per tunnel of every replica) is kept out of each replica's
/// cache, so that a replica's memory grows with the tunnels it holds: an uncached prefix is read
/// from etcd when asked for (one value, a list in pages, many values in a few transactions), is
/// jumped over when the prefix is loaded at start, and is not kept when the watch brings it; what
/// is around it is cached as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncached_prefix_is_read_from_etcd_and_never_kept() {
    use corral::store::etcd::{EtcdBackend, EtcdTls, EtcdUrl};
    use corral::store::{Backend, Collection, Kind};
    const COLD: Kind = Kind {
        dir: "cold",
        prefix: "test/cold/",
        secret: false,
    };
    let etcd = EtcdCluster::start(1);
    let url = EtcdUrl::parse(&etcd.url()).unwrap();
    tokio::task::spawn_blocking(move || {
        let connect = || EtcdBackend::connect(&url, &EtcdTls::default(), None, &["test/cold/"]);
        let first = connect().unwrap();
        let cold = Collection::<Value>::new(first.clone(), COLD);
        for i in 0..250 {
            cold.create(&format!("k-{i}"), &json!({ "i": i })).unwrap();
        }
        first.put_path("test/before/one", b"{}").unwrap();
        first.put_path("test/zzz/after", b"{}").unwrap();
        assert!(first.list("test/cold/").is_empty(), "not kept when written");
        assert_eq!(cold.get("k-7").unwrap().unwrap().value["i"], 7);
        assert!(cold.get("k-999").unwrap().is_none());
        assert_eq!(cold.list().unwrap().len(), 250, "listed past one page");
        let mut pages = Vec::new();
        cold.for_each_page(|page| {
            pages.push(page.len());
            Ok(())
        })
        .unwrap();
        assert_eq!(pages, [100, 100, 50], "handed over a page at a time");
        assert_eq!(cold.list_prefixed("k-1").unwrap().len(), 111);
        let ids: Vec<String> = ["k-3", "k-999", "../escape", "k-200"]
            .map(String::from)
            .to_vec();
        let found: Vec<bool> = cold
            .get_many(&ids)
            .unwrap()
            .iter()
            .map(Option::is_some)
            .collect();
        assert_eq!(found, [true, false, false, true]);
        let all: Vec<String> = (0..250).map(|i| format!("k-{i}")).collect();
        let read = cold.get_many(&all).unwrap();
        assert!(
            read.iter()
                .enumerate()
                .all(|(i, v)| v.as_ref().unwrap()["i"] == i)
        );

        // Loaded at start: the cold range jumped over, what follows it read.
        let second = connect().unwrap();
        assert!(second.list("test/cold/").is_empty());
        assert_eq!(second.list("test/before/").len(), 1);
        assert_eq!(
            second.list("test/zzz/").len(),
            1,
            "what follows the jump is loaded"
        );
        // Watched: a value another replica writes is not kept either.
        let other = Collection::<Value>::new(second.clone(), COLD);
        other.create("k-new", &json!({ "i": -1 })).unwrap();
        second.put_path("test/before/two", b"{}").unwrap();
        second.put_path("test/zzz/two", b"{}").unwrap();
        // Both ranges around the cold one are watched.
        let deadline = Instant::now() + Duration::from_secs(10);
        while first.list("test/before/").len() < 2 || first.list("test/zzz/").len() < 2 {
            assert!(Instant::now() < deadline, "the watch never brought them");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(first.list("test/cold/").is_empty());
        assert_eq!(cold.get("k-new").unwrap().unwrap().value["i"], -1);
    })
    .await
    .unwrap();
}

/// What agent sessions advertised is swept when its session is gone: sessions of a replica that is
/// no longer registered, this replica's own from before it restarted, and keys of an earlier form;
/// a live replica's stay. 211 keys: the sweep's pages of 100 (`for_each_page`, whose paging
/// `an_uncached_prefix_is_read_from_etcd_and_never_kept` checks) lose none between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_agent_sessions_are_swept() {
    use corral::clusters::{AGENT_SESSIONS, Advertised, ClusterParams, Clusters};
    use corral::store::etcd::{EtcdBackend, EtcdTls, EtcdUrl};
    use corral::store::{Backend, Collection};
    let etcd = EtcdCluster::start(1);
    let url = EtcdUrl::parse(&etcd.url()).unwrap();
    tokio::task::spawn_blocking(move || {
        const UNCACHED: &[&str] = &[AGENT_SESSIONS.prefix];
        let store: Arc<dyn Backend> =
            EtcdBackend::connect(&url, &EtcdTls::default(), None, UNCACHED).unwrap();
        let sessions = Collection::<Advertised>::new(store.clone(), AGENT_SESSIONS);
        let advertised = |session: i64, replica: &str| Advertised {
            session,
            replica: replica.to_string(),
            params: ClusterParams {
                address: "10.0.0.1:6443".into(),
                ca_cert: "Y2E=".into(),
                token: "t".into(),
            },
        };
        for i in 0..150 {
            let id = format!("c-dead{i}:{i}");
            sessions.create(&id, &advertised(i, "r-dead")).unwrap();
        }
        for i in 0..30 {
            let id = format!("c-live{i}:{i}");
            sessions.create(&id, &advertised(i, "r-live")).unwrap();
            let id = format!("c-mine{i}:{i}");
            sessions.create(&id, &advertised(i, "r-me")).unwrap();
        }
        sessions
            .create("c-older", &advertised(1, "r-live"))
            .unwrap();
        let clusters = Clusters::open(store.clone(), Some("r-me")).unwrap();
        let swept = clusters.sweep_agent_sessions(|replica| replica == "r-live");
        assert_eq!(swept.unwrap(), 150 + 30 + 1);
        let left: Vec<String> = sessions
            .list()
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(left.len(), 30, "{left:?}");
        assert!(left.iter().all(|id| id.starts_with("c-live")), "{left:?}");
    })
    .await
    .unwrap();
}
