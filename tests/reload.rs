//! Live policy: Kubernetes-style ConfigMap updates (an atomic `..data` symlink swap), bad
//! updates that must keep the last good policy, and reloads under concurrent Checks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

mod common;

use common::ready;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::google::protobuf::value::Kind;
use hallpass::reload::{watch, PolicyStore, ReloadOptions, ReloadOutcome};
use hallpass::request::build::CheckRequestBuilder;
use hallpass::service::{run, Authz, Lifecycle};

const DENY_X: &str =
    "version: 1\nrules:\n  - { id: old-deny-x, effect: deny, paths: [\"/x\"] }\n  - { id: old-allow, effect: allow }\n";
const ALLOW_X: &str = "version: 1\nrules:\n  - { id: new-allow-x, effect: allow, paths: [\"/x\"] }\n";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hallpass-reload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Lay out a directory the way the kubelet mounts a ConfigMap: `policy.yaml ->
/// ..data/policy.yaml`, `..data -> ..<version>`.
fn configmap(dir: &Path, version: &str, text: &str) {
    let v = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("policy.yaml"), text).unwrap();
    symlink(format!("..{version}"), dir.join("..data")).unwrap();
    symlink("..data/policy.yaml", dir.join("policy.yaml")).unwrap();
}

/// The kubelet's update: write the new version, point `..data_tmp` at it, rename it over
/// `..data` (atomic), remove the old version.
fn configmap_update(dir: &Path, old: &str, version: &str, text: &str) {
    let v = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("policy.yaml"), text).unwrap();
    symlink(format!("..{version}"), dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join(format!("..{old}"))).unwrap();
}

fn rule_for_x(store: &PolicyStore) -> String {
    let a = Authz::new(store.handle(), None);
    ready(a.decide(CheckRequestBuilder::new("GET", "/x").build(), jiff::Timestamp::now()))
        .decision
        .rule
        .as_str()
        .to_string()
}

async fn wait_for(store: &PolicyStore, rule: &str, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if rule_for_x(store) == rule {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test]
async fn configmap_symlink_swap_takes_effect_within_a_second() {
    let dir = temp_dir("swap");
    configmap(&dir, "v1", DENY_X);
    let store = Arc::new(PolicyStore::open(&dir.join("policy.yaml"), None).unwrap());
    assert_eq!(rule_for_x(&store), "old-deny-x");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    // A periodic re-hash far in the future: only the directory watch can make this pass.
    let opts = ReloadOptions { debounce: Duration::from_millis(50), interval: Duration::from_secs(3600) };
    let task = tokio::spawn(watch(store.clone(), opts, stop_rx));
    tokio::time::sleep(Duration::from_millis(100)).await;

    configmap_update(&dir, "v1", "v2", ALLOW_X);
    let took = wait_for(&store, "new-allow-x", Duration::from_secs(3)).await;
    let took = took.expect("the new policy is in force");
    eprintln!("symlink swap -> new decision in {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(store.handle().load().generation, 2);

    // And again: a watch on the file itself would have gone stale after the first swap.
    configmap_update(&dir, "v2", "v3", DENY_X);
    assert!(wait_for(&store, "old-deny-x", Duration::from_secs(3)).await.is_some(), "second swap seen");

    let _ = stop.send(true);
    let _ = task.await;
}

#[tokio::test]
async fn bad_updates_keep_the_last_good_policy_and_are_reported() {
    let dir = temp_dir("bad");
    configmap(&dir, "v1", DENY_X);
    let path = dir.join("policy.yaml");
    let store = Arc::new(PolicyStore::open(&path, None).unwrap());
    let revision = store.handle().load().revision.clone();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let opts = ReloadOptions { debounce: Duration::from_millis(20), interval: Duration::from_secs(3600) };
    let task = tokio::spawn(watch(store.clone(), opts, stop_rx));
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Garbled YAML.
    configmap_update(&dir, "v1", "v2", "version: 1\nrules:\n  - id: broken\n    effect: [\n");
    let deadline = Instant::now() + Duration::from_secs(3);
    while store.status().failures == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = store.status();
    assert!(st.failures >= 1, "garbled update reported");
    assert!(st.last_error.as_deref().unwrap().contains("policy.yaml:"), "located: {:?}", st.last_error);
    assert_eq!(store.handle().load().revision, revision);
    assert_eq!(rule_for_x(&store), "old-deny-x");

    // A policy that parses but does not validate.
    configmap_update(&dir, "v2", "v3", "version: 1\nrules:\n  - { id: r, effect: allow, methods: [get] }\n");
    let _ = stop.send(true);
    let _ = task.await;
    assert!(matches!(store.reload("test"), ReloadOutcome::Failed { error } if error.contains("rule `r`")));
    assert_eq!(rule_for_x(&store), "old-deny-x");

    // Deleted file.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(store.reload("test"), ReloadOutcome::Failed { error } if error.contains("cannot read")));
    assert_eq!(rule_for_x(&store), "old-deny-x");

    // Unreadable: a directory where the file should be (tests run as root, where chmod 000
    // would not stop a read).
    std::fs::create_dir(&path).unwrap();
    assert!(matches!(store.reload("test"), ReloadOutcome::Failed { error } if error.contains("cannot read")));
    assert_eq!(rule_for_x(&store), "old-deny-x");
    std::fs::remove_dir(&path).unwrap();

    // Not UTF-8.
    std::fs::write(&path, b"version: 1\nrules: []\n# \xff\xfe\n").unwrap();
    assert!(matches!(store.reload("test"), ReloadOutcome::Failed { .. }));
    assert!(store.status().failures >= 5);
    assert_eq!(store.handle().load().revision, revision);

    // A good file again: in force, error cleared.
    std::fs::write(&path, ALLOW_X).unwrap();
    assert!(matches!(store.reload("test"), ReloadOutcome::Reloaded { .. }));
    assert_eq!(rule_for_x(&store), "new-allow-x");
    assert!(store.status().last_error.is_none());
    assert_eq!(store.reload("test"), ReloadOutcome::Unchanged);
}

#[tokio::test]
async fn periodic_rehash_catches_a_missed_event() {
    let dir = temp_dir("periodic");
    let path = dir.join("policy.yaml");
    std::fs::write(&path, DENY_X).unwrap();
    let store = Arc::new(PolicyStore::open(&path, None).unwrap());
    // Watch a directory where nothing happens, so only the periodic re-hash can notice.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let opts = ReloadOptions { debounce: Duration::from_millis(10), interval: Duration::from_millis(200) };
    // Write before the watcher exists: no event will ever be seen for it.
    std::fs::write(&path, ALLOW_X).unwrap();
    let task = tokio::spawn(watch(store.clone(), opts, stop_rx));
    assert!(wait_for(&store, "new-allow-x", Duration::from_secs(3)).await.is_some());
    let _ = stop.send(true);
    let _ = task.await;
}

fn policy_text(generation: usize) -> String {
    // Every policy names its rules after itself, so a decision reveals which policy made it.
    format!(
        "version: 1\nrules:\n  - {{ id: p{g}-deny, effect: deny, paths: [\"/d/**\"] }}\n  - {{ id: p{g}-allow, effect: allow, paths: [\"/a/**\"] }}\n",
        g = generation % 2
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_reloads_under_load_zero_failed_or_mixed_checks() {
    let dir = temp_dir("load");
    let path = dir.join("policy.yaml");
    std::fs::write(&path, policy_text(0)).unwrap();
    let store = Arc::new(PolicyStore::open(&path, None).unwrap());
    let revisions = [
        hallpass::reload::revision_of(policy_text(0).as_bytes()),
        hallpass::reload::revision_of(policy_text(1).as_bytes()),
    ];

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, Authz::new(store.handle(), None), Lifecycle::default(), async {
        let _ = rx.await;
    }));

    let done = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..4 {
        let done = done.clone();
        let checks = checks.clone();
        let revisions = revisions.clone();
        clients.push(tokio::spawn(async move {
            let mut client = AuthorizationClient::connect(format!("http://{addr}")).await.unwrap();
            let mut i = 0usize;
            while !done.load(Ordering::Relaxed) {
                let (path, want) =
                    if (i + c).is_multiple_of(2) { ("/d/x", ("deny", "deny")) } else { ("/a/x", ("allow", "allow")) };
                let resp = client.check(CheckRequestBuilder::new("GET", path).build()).await.expect("no failed Check");
                let resp = resp.into_inner();
                let f = &resp.dynamic_metadata.as_ref().unwrap().fields;
                let get = |k: &str| match &f[k].kind {
                    Some(Kind::StringValue(s)) => s.clone(),
                    other => panic!("{k}: {other:?}"),
                };
                let (decision, rule, revision) = (get("decision"), get("rule"), get("policy_revision"));
                assert_eq!(decision, want.0);
                let g = revisions.iter().position(|r| *r == revision).expect("a known revision");
                assert_eq!(rule, format!("p{g}-{}", want.1), "rule and revision come from one policy");
                i += 1;
                checks.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while checks.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut reloaded = 0;
    let mut intervals_with_checks = 0;
    let mut last = checks.load(Ordering::Relaxed);
    for g in 1..=100 {
        std::fs::write(&path, policy_text(g)).unwrap();
        let s = store.clone();
        let out = tokio::task::spawn_blocking(move || s.reload("test")).await.unwrap();
        assert!(matches!(out, ReloadOutcome::Reloaded { .. }), "{out:?}");
        reloaded += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = checks.load(Ordering::Relaxed);
        if now > last {
            intervals_with_checks += 1;
        }
        last = now;
    }
    done.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let _ = tx.send(());
    server.await.unwrap().unwrap();
    let n = checks.load(Ordering::Relaxed);
    eprintln!("{reloaded} reloads, {n} concurrent Checks ({intervals_with_checks} reload intervals saw Checks), all consistent");
    assert_eq!(reloaded, 100);
    assert!(intervals_with_checks >= 90, "Checks ran between the reloads: {intervals_with_checks}");
    assert_eq!(store.handle().load().generation, 101);
}
