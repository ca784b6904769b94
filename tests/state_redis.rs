//! Two hallpass replicas (the whole server, in-process on port 0) sharing one real Redis
//! (Debian's `redis-server`, started by the test on a free port with an append-only file):
//! one limit enforced together, a quarantine set through one replica in force on the other
//! within a second, automatic quarantine counted across both, and Redis killed mid-run —
//! limits deny with `state_unavailable` (or allow where `on_store_error: allow`), quarantines
//! stay in force, nothing panics — and service back when Redis returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests may panic")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hallpass::app;
use hallpass::reload::PolicyStore;
use hallpass::request::build::CheckRequestBuilder;
use hallpass::settings::{Overrides, ServerSettings};
use hallpass::telemetry::Metrics;

const TOKEN: &str = "redis-test-approver-token";

struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start(bin: &Path, dir: &Path, port: Option<u16>) -> Redis {
        let port = port.unwrap_or_else(|| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--dir", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Redis { child, port, dir: dir.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r.pong() {
            assert!(Instant::now() < deadline, "redis-server did not answer on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn pong(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Replica {
    grpc: SocketAddr,
    admin: SocketAddr,
    control: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), app::ServeError>>>,
}

impl Replica {
    async fn start(policy: &Path, redis: &str) -> Replica {
        let settings = ServerSettings::resolve(Overrides {
            policy: Some(policy.to_path_buf()),
            grpc_listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            control_listen: Some("127.0.0.1:0".into()),
            drain_delay: Some("0s".into()),
            decision_log: Some("off".into()),
            redis_url: Some(redis.into()),
            config: Some(policy.with_file_name("hallpass.yaml")),
            ..Overrides::default()
        })
        .unwrap();
        let metrics = Metrics::new().unwrap();
        let store = Arc::new(PolicyStore::open(&settings.policy, Some(metrics.clone())).unwrap());
        let bound = app::bind(&settings).await.unwrap();
        let (grpc, admin, control) =
            (bound.grpc_addr().unwrap(), bound.admin_addr().unwrap(), bound.control_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app::run(settings, bound, store, metrics, async move {
            let _ = stopped.await;
        }));
        Replica { grpc, admin, control, stop: Some(stop), task: Some(task) }
    }

    /// (status, rule): status 200 for an allow.
    async fn check(&self, method: &str, path: &str, agent: &str) -> (i32, String) {
        self.check_with(method, path, agent, None).await
    }

    async fn check_with(&self, method: &str, path: &str, agent: &str, tenant: Option<&str>) -> (i32, String) {
        let mut c = AuthorizationClient::connect(format!("http://{}", self.grpc)).await.unwrap();
        let mut b = CheckRequestBuilder::new(method, path).header("x-agent-id", agent);
        if let Some(t) = tenant {
            b = b.header("x-tenant", t);
        }
        let req = b.build();
        let resp = c.check(req).await.unwrap().into_inner();
        let rule = match resp.dynamic_metadata.as_ref().and_then(|m| m.fields.get("rule")).and_then(|v| v.kind.clone())
        {
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => s,
            _ => String::new(),
        };
        let status = match resp.http_response {
            Some(HttpResponse::DeniedResponse(d)) => d.status.map_or(0, |s| s.code),
            Some(HttpResponse::OkResponse(_)) => 200,
            _ => 0,
        };
        (status, rule)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let r = tokio::time::timeout(Duration::from_secs(10), self.task.take().unwrap()).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "replica stopped cleanly (no panic): {r:?}");
    }
}

async fn http(addr: SocketAddr, method: &'static str, path: String, body: Option<String>) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        hallpass::control::client::call(&format!("http://{addr}"), TOKEN, method, &path, body.as_deref()).unwrap()
    })
    .await
    .unwrap()
}

async fn readyz(admin: SocketAddr) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(admin).unwrap();
        write!(s, "GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        (out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), out)
    })
    .await
    .unwrap()
}

fn setup(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(TOKEN.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    std::fs::write(dir.join("approvers.yaml"), format!("- name: ops\n  token_sha256: {digest}\n")).unwrap();
    // At most 3 buckets per agent: a key part the client chooses cannot fill Redis. A store
    // timeout of 500 ms (default 50 ms): these tests are about sharing, and a busy CI machine
    // must not turn a slow script into `state_unavailable`.
    std::fs::write(dir.join("hallpass.yaml"), "state:\n  max_keys_per_agent: 3\n  redis:\n    timeout: 500ms\n")
        .unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        r#"version: 1
identity:
  agent: [{header: x-agent-id}]
settings:
  quarantine: { after_denies: 15, within: 1m, for: 10m }
  control: { approvers_file: approvers.yaml }
rules:
  - id: no-deletes
    effect: deny
    methods: [DELETE]
  - id: search
    effect: allow
    methods: [GET]
    paths: ["/search"]
    limits:
      - { per: [agent], rate: "10/m" }
  - id: open
    effect: allow
    methods: [GET]
    paths: ["/open"]
    limits:
      - { per: [agent], rate: "1000/s", on_store_error: allow }
  - id: tenant
    effect: allow
    methods: [GET]
    paths: ["/tenant"]
    limits:
      - { per: [agent, header.x-tenant], rate: "10/m" }
"#,
    )
    .unwrap();
    policy
}

async fn until(within: Duration, mut f: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < within {
        if f().await {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Two replicas on `redis`, ready: connected, scripts loaded, the quarantine list read (a
/// first Check on a replica still connecting would meet the 50 ms store deadline on a busy
/// machine).
async fn two_ready_replicas(policy: &Path, redis: &str) -> (Replica, Replica) {
    let (a, b) = (Replica::start(policy, redis).await, Replica::start(policy, redis).await);
    for r in [&a, &b] {
        assert!(until(Duration::from_secs(5), async || readyz(r.admin).await.0 == 200).await.is_some());
    }
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_limits_and_quarantines_through_redis() {
    let Some(bin) = common::tool("redis-server") else { return };
    let dir = std::env::temp_dir().join(format!("hallpass-redis-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let policy = setup(&dir);
    let mut redis = Redis::start(&bin, &dir, None);
    let (a, b) = two_ready_replicas(&policy, &redis.url()).await;

    // -- one limit, two replicas: an agent alternating between them gets 10 in total, not 20.
    let mut allowed = 0;
    let mut limited = 0;
    for i in 0..24 {
        let r = if i % 2 == 0 { &a } else { &b };
        match r.check("GET", "/search", "bot-1").await {
            (200, _) => allowed += 1,
            (429, rule) if rule == "search" => limited += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((allowed, limited), (10, 14), "one shared bucket of 10 across both replicas");
    assert_eq!(b.check("GET", "/search", "bot-2").await.0, 200, "another agent has its own bucket");

    // -- a quota of buckets per agent: bot-8 may key 3 buckets by tenant, across replicas;
    // a 4th new one is refused (403, `key_quota`); its buckets in use still answer; another
    // agent is not affected.
    for (r, t) in [(&a, "t1"), (&b, "t2"), (&a, "t3")] {
        assert_eq!(r.check_with("GET", "/tenant", "bot-8", Some(t)).await.0, 200, "{t}");
    }
    assert_eq!(b.check_with("GET", "/tenant", "bot-8", Some("t4")).await, (403, "tenant".into()));
    assert_eq!(b.check_with("GET", "/tenant", "bot-8", Some("t1")).await.0, 200);
    assert_eq!(a.check_with("GET", "/tenant", "bot-9", Some("t4")).await.0, 200);

    // -- a quarantine set through replica A is in force on replica B within 1 s.
    let (st, body) =
        http(a.control, "POST", "/v1/quarantine".into(), Some(r#"{"agent":"bot-3","reason":"test"}"#.into())).await;
    assert_eq!(st, 201, "{body}");
    let took =
        until(Duration::from_secs(2), async || b.check("GET", "/open", "bot-3").await == (403, "quarantined".into()))
            .await;
    assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "quarantine on B after {took:?}");
    eprintln!("quarantine set through A, in force on B after {took:?}");
    // Lifted through B: A lets it through again within 1 s.
    let (st, body) = http(b.control, "DELETE", "/v1/quarantine/bot-3".into(), None).await;
    assert_eq!(st, 200, "{body}");
    let took = until(Duration::from_secs(2), async || a.check("GET", "/open", "bot-3").await.0 == 200).await;
    assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "lifted on A after {took:?}");
    eprintln!("quarantine lifted through B, lifted on A after {took:?}");

    // -- automatic quarantine counts denies across replicas: 8 on A and 7 on B make 15 (the
    // 14 rate-limited requests of bot-1 above did not reach it).
    assert_eq!(a.check("GET", "/open", "bot-1").await.0, 200, "bot-1: 14 denies, not quarantined");
    for i in 0..15 {
        let r = if i % 2 == 0 { &a } else { &b };
        assert_eq!(r.check("DELETE", "/x", "bot-4").await, (403, "no-deletes".into()));
    }
    let took = until(Duration::from_secs(2), async || {
        a.check("GET", "/open", "bot-4").await.1 == "quarantined"
            && b.check("GET", "/open", "bot-4").await.1 == "quarantined"
    })
    .await;
    assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "auto quarantine on both after {took:?}");
    eprintln!("automatic quarantine in force on both after {took:?}");

    // -- a bucket whose value is not a number (someone wrote to Redis) is not a full bucket:
    // the limit fails as a store error (503 with on_store_error: deny), never resets.
    {
        let mut s = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
        s.write_all(b"SET hallpass:limit:search:0:5:bot-7; garbage\r\n").unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"+OK"), "{:?}", &buf[..n]);
    }
    assert_eq!(a.check("GET", "/search", "bot-7").await, (503, "state_unavailable".into()));

    // -- Redis killed mid-run: limits deny with state_unavailable (503) or allow where
    // on_store_error: allow; the quarantine stays in force; nothing panics.
    redis.kill();
    let t = Instant::now();
    assert_eq!(a.check("GET", "/search", "bot-5").await, (503, "state_unavailable".into()));
    assert!(t.elapsed() < Duration::from_secs(2), "a store error is answered within the timeout: {:?}", t.elapsed());
    assert_eq!(b.check("GET", "/open", "bot-5").await.0, 200, "on_store_error: allow");
    tokio::time::sleep(Duration::from_millis(600)).await; // several failed refreshes
    assert_eq!(a.check("GET", "/open", "bot-4").await.1, "quarantined", "the last list read stays in force");
    assert_eq!(b.check("GET", "/open", "bot-4").await.1, "quarantined");
    let (_, ready) = readyz(a.admin).await;
    assert!(ready.contains("state store (redis) unreachable"), "{ready}");
    // A replica started now has never read the quarantine list: not ready (it cannot tell
    // whom to refuse), and it still refuses nothing it should not: limits fail closed.
    let c = Replica::start(&policy, &redis.url()).await;
    assert_eq!(readyz(c.admin).await.0, 503, "a replica that never read the quarantine list is not ready");

    // -- Redis back (same port, same append-only file): limits work again, the quarantine
    // (kept by Redis) still holds.
    let port = redis.port;
    let redis_dir = redis.dir.clone();
    drop(redis);
    let _redis = Redis::start(&bin, &redis_dir, Some(port));
    let took = until(Duration::from_secs(10), async || a.check("GET", "/search", "bot-5").await.0 == 200).await;
    assert!(took.is_some(), "service recovered when Redis returned");
    eprintln!("limits answered again {took:?} after Redis returned");
    // Each replica reconnects on its own.
    let took = until(Duration::from_secs(10), async || b.check("GET", "/search", "bot-6").await.0 == 200).await;
    assert!(took.is_some(), "replica B recovered too");
    assert_eq!(b.check("GET", "/open", "bot-4").await.1, "quarantined");
    let took = until(Duration::from_secs(5), async || readyz(c.admin).await.0 == 200).await;
    assert!(took.is_some(), "the late replica is ready once it has read the list");
    assert_eq!(c.check("GET", "/open", "bot-4").await.1, "quarantined");
    a.stop().await;
    b.stop().await;
    c.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

impl Replica {
    /// A Check; the deny body (JSON) of a refused one, `None` when allowed.
    async fn body_of(&self, path: &str, agent: &str) -> Option<serde_json::Value> {
        let mut c = AuthorizationClient::connect(format!("http://{}", self.grpc)).await.unwrap();
        let req = CheckRequestBuilder::new("GET", path).header("x-agent-id", agent).build();
        match c.check(req).await.unwrap().into_inner().http_response {
            Some(HttpResponse::OkResponse(_)) => None,
            Some(HttpResponse::DeniedResponse(d)) => {
                let mut v: serde_json::Value = serde_json::from_str(&d.body).unwrap();
                v["status"] = d.status.map_or(0, |s| s.code).into();
                Some(v)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The approval id of a held answer.
fn approval(body: Option<serde_json::Value>) -> (String, String) {
    let b = body.expect("held, not allowed");
    assert_eq!(b["error"], "approval_required", "{b}");
    (b["approval"]["id"].as_str().unwrap().to_string(), b["approval"]["status"].as_str().unwrap().to_string())
}

/// Holds and grants on two replicas sharing one Redis (agent-controls §2, §7): a pending
/// approval seen by both; approved through one, the retry goes through on the other, once
/// across both (also under concurrent retries); an approval grant is not spent by a retry
/// its rule's limit refuses; task grants and revocations reach the other replica within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_shared_and_single_use_across_replicas_on_redis() {
    let Some(bin) = common::tool("redis-server") else { return };
    let dir = std::env::temp_dir().join(format!("hallpass-redis-approvals-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let policy = setup(&dir);
    std::fs::write(
        &policy,
        r#"version: 1
identity:
  agent: [{header: x-agent-id}]
settings:
  control: { approvers_file: approvers.yaml }
rules:
  - id: wire-hold
    effect: require_approval
    paths: ["/wire/{to}", "/limited/secret"]
  - id: wire
    effect: allow
    methods: [GET]
    paths: ["/wire/{to}"]
  - id: limited
    effect: allow
    methods: [GET]
    paths: ["/limited/{x}"]
    limits:
      - { per: [agent], rate: "1/m" }
"#,
    )
    .unwrap();
    let redis = Redis::start(&bin, &dir, None);
    let (a, b) = two_ready_replicas(&policy, &redis.url()).await;

    // -- held on A, pending on B too (one store), the same id on both.
    let (id, status) = approval(a.body_of("/wire/acme", "bot-1").await);
    assert_eq!(status, "pending");
    assert_eq!(approval(b.body_of("/wire/acme", "bot-1").await).0, id, "the same action, the same id on every replica");
    let (st, list) = http(b.control, "GET", "/v1/approvals".into(), None).await;
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        (st, list["approvals"][0]["id"].as_str(), list["approvals"][0]["seen"].as_u64()),
        (200, Some(id.as_str()), Some(2))
    );

    // -- approved through A; the retry goes through on B, once across both.
    let (st, g) = http(a.control, "POST", format!("/v1/approvals/{id}/approve"), Some(r#"{"ttl":"5m"}"#.into())).await;
    assert_eq!(st, 201, "{g}");
    assert_eq!(b.body_of("/wire/acme", "bot-1").await, None, "approved on A, through on B");
    approval(a.body_of("/wire/acme", "bot-1").await);
    approval(b.body_of("/wire/acme", "bot-1").await);

    // -- single use under concurrent retries on both replicas: exactly one goes through.
    let (id2, _) = approval(a.body_of("/wire/globex", "bot-1").await);
    let (st, _) = http(b.control, "POST", format!("/v1/approvals/{id2}/approve"), Some("{}".into())).await;
    assert_eq!(st, 201);
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { r.body_of("/wire/globex", "bot-1").await.is_none() }));
    }
    let mut through = 0;
    for t in tasks {
        through += usize::from(t.await.unwrap());
    }
    assert_eq!(through, 1, "one use, one request through, across 16 concurrent retries on two replicas");

    // -- a retry its rule's limit refuses does not spend the approval.
    assert_eq!(a.body_of("/limited/open", "bot-2").await, None, "takes the one request a minute");
    let (id3, _) = approval(a.body_of("/limited/secret", "bot-2").await);
    let (st, _) = http(a.control, "POST", format!("/v1/approvals/{id3}/approve"), Some("{}".into())).await;
    assert_eq!(st, 201);
    let limited = b.body_of("/limited/secret", "bot-2").await.unwrap();
    assert_eq!((limited["status"].as_u64(), limited["error"].as_str()), (Some(429), Some("rate_limited")), "{limited}");
    let (_, grants) = http(a.control, "GET", "/v1/grants".into(), None).await;
    let grants: serde_json::Value = serde_json::from_str(&grants).unwrap();
    let g = grants["grants"].as_array().unwrap().iter().find(|g| g["approval"] == id3.as_str()).expect("not spent");
    assert_eq!(g["uses"], 1, "{grants}");

    // -- a task grant made on B lifts holds on A within 1 s; its revocation too.
    let (st, task) = http(
        b.control,
        "POST",
        "/v1/grants".into(),
        Some(r#"{"agent":"bot-3","rules":["wire-hold"],"ttl":"10m"}"#.into()),
    )
    .await;
    assert_eq!(st, 201, "{task}");
    let took = until(Duration::from_secs(2), async || a.body_of("/wire/initech", "bot-3").await.is_none()).await;
    assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "task grant on A after {took:?}");
    let tid = serde_json::from_str::<serde_json::Value>(&task).unwrap()["id"].as_str().unwrap().to_string();
    let (st, _) = http(b.control, "DELETE", format!("/v1/grants/{tid}"), None).await;
    assert_eq!(st, 200);
    let took = until(Duration::from_secs(2), async || a.body_of("/wire/initech", "bot-3").await.is_some()).await;
    assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "revocation on A after {took:?}");

    // -- denied on B: A tells the agent so.
    let (id4, _) = approval(a.body_of("/wire/umbrella", "bot-4").await);
    let (st, _) = http(b.control, "POST", format!("/v1/approvals/{id4}/deny"), Some(r#"{"reason":"no"}"#.into())).await;
    assert_eq!(st, 200);
    assert_eq!(approval(a.body_of("/wire/umbrella", "bot-4").await), (id4, "denied".to_string()));

    for r in [a, b] {
        Arc::try_unwrap(r).ok().unwrap().stop().await;
    }
    drop(redis);
}
