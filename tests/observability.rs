//! Metrics and decision records, driven through the real gRPC server: values move as they
//! should, records validate against docs/decision-log.schema.json, a blocked sink never
//! slows a Check, and the exposition passes `promtool check metrics`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hallpass::cache::{CacheOptions, DecisionCache};
use hallpass::decision_log::{DecisionLog, Sink};
use hallpass::reload::PolicyStore;
use hallpass::request::build::CheckRequestBuilder;
use hallpass::service::{run, Authz, Lifecycle};
use hallpass::telemetry::Metrics;
use serde_json::Value;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.yaml");

/// A sink the test can read.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);
impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A sink that blocks until released (a stuck stdout).
struct Blocked(Arc<(Mutex<bool>, std::sync::Condvar)>);
impl Write for Blocked {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let (lock, cv) = &*self.0;
        let mut released = lock.lock().unwrap();
        while !*released {
            released = cv.wait(released).unwrap();
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Server {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn serve(authz: Authz) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(listener, authz, Lifecycle::default(), async {
        let _ = rx.await;
    }));
    Server { addr, stop, task }
}

impl Server {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn requests() -> Vec<CheckRequest> {
    let mail = |m: &str, p: &str| {
        CheckRequestBuilder::new(m, p)
            .host("mail.example.com")
            .header("x-agent-id", "triage-bot")
            .header("x-on-behalf-of", "alice")
            .header("x-request-id", "req-1")
            .header("authorization", "Bearer secret-token-123")
            .header("cookie", "session=secret-cookie-456")
    };
    let send = |to: &str| {
        mail("POST", "/v1/users/alice/messages/send?token=secret-query-789")
            .header("content-type", "application/json")
            .body(format!(r#"{{"to":["{to}"],"subject":"secret-subject-000"}}"#))
    };
    let mcp = |body: &str| {
        CheckRequestBuilder::new("POST", "/mcp")
            .host("tools.example.com")
            .header("x-agent-id", "research-bot")
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    vec![
        mail("GET", "/v1/users/alice/messages/m1").build(),
        mail("DELETE", "/v1/users/alice/messages/m1").build(),
        mail("GET", "/v1/users/alice/messages/a%2Fb").build(),
        send("bob@example.com").build(),
        send("bob@example.com").build(),
        send("bob@example.com").build(),
        send("eve@evil.io").build(),
        mcp(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_shell","arguments":{"cmd":"id"}}}"#)
            .build(),
        mcp(r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/list"}]"#)
            .build(),
        mcp(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list""#).build(),
        CheckRequest { attributes: None },
        // crm-create-deal: a burst of 5 per agent, the 6th (a cache hit) is rate limited
        // (11-16): the limits stage runs after the cache.
        deal(1),
        deal(2),
        deal(3),
        deal(5),
        deal(5),
        deal(5),
    ]
}

fn deal(n: u32) -> CheckRequest {
    CheckRequestBuilder::new("POST", "/api/deals")
        .host("crm.example.com")
        .header("x-agent-id", "sales-assistant")
        .header("content-type", "application/json")
        .body(format!(r#"{{"discount_percent":{n}}}"#))
        .build()
}

// ---- a small JSON Schema checker: the subset docs/decision-log.schema.json uses ----------

fn type_ok(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        _ => false,
    }
}

fn validate(schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let s = schema.as_object().unwrap();
    for key in s.keys() {
        assert!(
            [
                "$schema",
                "$id",
                "title",
                "type",
                "const",
                "enum",
                "required",
                "properties",
                "additionalProperties",
                "items",
                "minItems",
                "maxItems",
                "minimum",
                "pattern",
                "format"
            ]
            .contains(&key.as_str()),
            "the test's schema checker does not know `{key}`"
        );
    }
    if let Some(t) = s.get("type") {
        let ok = match t {
            Value::String(t) => type_ok(v, t),
            Value::Array(ts) => ts.iter().any(|t| type_ok(v, t.as_str().unwrap())),
            _ => false,
        };
        if !ok {
            errs.push(format!("{at}: {v} is not of type {t}"));
            return;
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            errs.push(format!("{at}: {v} != {c}"));
        }
    }
    if let Some(Value::Array(e)) = s.get("enum") {
        if !e.contains(v) {
            errs.push(format!("{at}: {v} not in {e:?}"));
        }
    }
    if let (Some(Value::String(p)), Some(sv)) = (s.get("pattern"), v.as_str()) {
        if !regex::Regex::new(p).unwrap().is_match(sv) {
            errs.push(format!("{at}: {sv} does not match {p}"));
        }
    }
    if let (Some(Value::String(f)), Some(sv)) = (s.get("format"), v.as_str()) {
        assert_eq!(f, "date-time");
        if sv.parse::<jiff::Timestamp>().is_err() {
            errs.push(format!("{at}: {sv} is not a date-time"));
        }
    }
    if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            errs.push(format!("{at}: {n} < {min}"));
        }
    }
    if let Some(o) = v.as_object() {
        if let Some(Value::Array(req)) = s.get("required") {
            for r in req.iter().map(|r| r.as_str().unwrap()) {
                if !o.contains_key(r) {
                    errs.push(format!("{at}: missing `{r}`"));
                }
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, val) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(ps, val, &format!("{at}.{k}"), errs),
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errs.push(format!("{at}: unexpected `{k}`"))
                }
                None => {}
            }
        }
    }
    if let Some(a) = v.as_array() {
        if let Some(n) = s.get("minItems").and_then(Value::as_u64) {
            if (a.len() as u64) < n {
                errs.push(format!("{at}: fewer than {n} items"));
            }
        }
        if let Some(n) = s.get("maxItems").and_then(Value::as_u64) {
            if (a.len() as u64) > n {
                errs.push(format!("{at}: more than {n} items"));
            }
        }
        if let Some(items) = s.get("items") {
            for (i, x) in a.iter().enumerate() {
                validate(items, x, &format!("{at}[{i}]"), errs);
            }
        }
    }
}

#[test]
fn the_schema_checker_catches_bad_records() {
    let schema: Value =
        serde_json::from_str(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/decision-log.schema.json")))
            .unwrap();
    let mut errs = Vec::new();
    validate(
        &schema,
        &serde_json::json!({"schema": "hallpass.decision/v2", "extra": 1, "decision": "maybe"}),
        "$",
        &mut errs,
    );
    let text = errs.join("\n");
    for want in ["!= \"hallpass.decision/v1\"", "unexpected `extra`", "not in", "missing `rule`"] {
        assert!(text.contains(want), "{want}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_validate_and_metrics_move() {
    let metrics = Metrics::new().unwrap();
    let store = PolicyStore::open(std::path::Path::new(EXAMPLE), Some(metrics.clone())).unwrap();
    let sink = Shared::default();
    let m = metrics.clone();
    let (log, writer) = DecisionLog::start(
        Sink::Writer(Box::new(sink.clone())),
        1024,
        Some(Arc::new(move || m.decision_log_dropped())),
    );
    let cache = Arc::new(DecisionCache::new(CacheOptions::default()));
    let authz = Authz::new(store.handle(), Some(metrics.clone())).with_cache(cache).with_decision_log(log, false);
    let srv = serve(authz).await;
    let mut c = AuthorizationClient::connect(format!("http://{}", srv.addr)).await.unwrap();
    for r in requests() {
        c.check(r).await.unwrap();
    }
    drop(c);
    srv.shutdown().await;
    tokio::task::spawn_blocking(move || writer.join()).await.unwrap();

    // ---- records ----
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), requests().len(), "one record per Check:\n{text}");
    let schema: Value =
        serde_json::from_str(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/decision-log.schema.json")))
            .unwrap();
    let mut errs = Vec::new();
    let recs: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (i, r) in recs.iter().enumerate() {
        validate(&schema, r, &format!("record {i}"), &mut errs);
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    for secret in ["secret-token-123", "secret-cookie-456", "secret-query-789", "secret-subject-000", "evil.io\"]"] {
        assert!(!text.contains(secret), "records leak `{secret}`");
    }
    let by = |i: usize, k: &str| recs[i][k].clone();
    assert_eq!((by(0, "decision"), by(0, "rule")), ("allow".into(), "mail-read".into()));
    assert_eq!(by(0, "request_id"), "req-1");
    assert_eq!(by(0, "agent"), "triage-bot");
    assert_eq!(by(0, "on_behalf_of"), "alice");
    assert_eq!(by(0, "body"), "absent");
    assert_eq!(by(1, "rule"), "no-deletes");
    assert_eq!(by(1, "message"), "Agents may not delete data.");
    assert_eq!(
        (by(2, "rule"), by(2, "path_error"), by(2, "path")),
        ("invalid_path".into(), "encoded_slash".into(), Value::Null)
    );
    assert_eq!(by(3, "path"), "/v1/users/alice/messages/send", "no query in the path");
    assert_eq!((by(3, "body"), by(3, "cache_hit")), ("json".into(), false.into()));
    assert_eq!((by(5, "cache_hit"), by(5, "body")), (true.into(), "not_read".into()), "third identical send is a hit");
    assert_eq!(by(6, "rule"), "mail-external-recipients");
    assert_eq!(by(7, "mcp"), serde_json::json!({"method": "tools/call", "tool": "run_shell"}));
    assert_eq!(by(8, "mcp"), serde_json::json!({"method": "tools/list", "tool": null, "batch": 2}));
    assert_eq!(by(9, "body"), "unparseable");
    // Denied because the body could not be read, not because it named a denied tool: the
    // record says which part of the deciding rule was unknown.
    assert_eq!((by(9, "rule"), by(9, "unknown")), ("mcp-no-shell".into(), "mcp".into()));
    assert_eq!(by(7, "rule"), "mcp-no-shell");
    assert!(recs[7].get("unknown").is_none() && recs[6].get("unknown").is_none(), "a plain match has no `unknown`");
    assert_eq!(by(10, "rule"), "invalid_request");
    assert_eq!((by(15, "decision"), by(15, "rule")), ("allow".into(), "crm-create-deal".into()));
    assert!(recs[15].get("limit").is_none(), "a request within its limit has no `limit`");
    assert_eq!(by(16, "cache_hit"), true, "a cached decision is still charged and limited");
    assert_eq!(
        (by(16, "decision"), by(16, "rule"), by(16, "policy_effect")),
        ("deny".into(), "crm-create-deal".into(), "deny".into())
    );
    assert_eq!(
        by(16, "limit"),
        serde_json::json!({"rule": "crm-create-deal", "index": 0, "result": "limited", "rate": "30/h", "retry_after_s": 120})
    );
    assert_eq!(recs.iter().map(|r| r["policy_revision"].clone()).collect::<std::collections::HashSet<_>>().len(), 1);

    // ---- metrics ----
    let expo = metrics.render();
    let value = |series: &str| -> f64 {
        expo.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no `{series}` in\n{expo}"))
    };
    assert_eq!(value(r#"hallpass_decisions_total{decision="allow",dry_run="false",rule="mail-read"}"#), 1.0);
    assert_eq!(value(r#"hallpass_decisions_total{decision="deny",dry_run="false",rule="no-deletes"}"#), 1.0);
    assert_eq!(value(r#"hallpass_decisions_total{decision="allow",dry_run="false",rule="mail-send"}"#), 3.0);
    assert_eq!(value(r#"hallpass_invalid_path_total{reason="encoded_slash"}"#), 1.0);
    assert_eq!(value(r#"hallpass_limit_events_total{result="limited",rule="crm-create-deal"}"#), 1.0);
    assert_eq!(value(r#"hallpass_decisions_total{decision="deny",dry_run="false",rule="crm-create-deal"}"#), 1.0);
    // Parsed: two sends before the cache hit, the external send, run_shell, the batch, and the
    // deals but the last (the third identical one: a cache hit, body not read).
    assert_eq!(value(r#"hallpass_request_bodies_total{outcome="json"}"#), 10.0);
    assert_eq!(value(r#"hallpass_request_bodies_total{outcome="not_read"}"#), 2.0);
    assert_eq!(value(r#"hallpass_request_bodies_total{outcome="unparseable"}"#), 1.0);
    assert_eq!(value(r#"hallpass_cache_lookups_total{result="hit"}"#), 2.0);
    assert!(value(r#"hallpass_cache_lookups_total{result="miss"}"#) >= 3.0);
    assert_eq!(
        value(r#"hallpass_check_duration_seconds_count{decision="deny"}"#)
            + value(r#"hallpass_check_duration_seconds_count{decision="allow"}"#),
        requests().len() as f64
    );
    assert_eq!(value("hallpass_decision_log_dropped_total"), 0.0);
    assert_eq!(value("hallpass_policy_rules"), 20.0);
    assert!(expo.contains("hallpass_policy_info{revision=\""));
    assert!(value("hallpass_policy_last_reload_success_timestamp_seconds") > 1.7e9);
    assert!(expo.contains(&format!("hallpass_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") > 0.0);
    assert!(value("process_start_time_seconds") > 1.7e9);
    // Reloads by result.
    assert_eq!(store.reload("test"), hallpass::reload::ReloadOutcome::Unchanged);
    assert_eq!(
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with(r#"hallpass_policy_reloads_total{result="unchanged"}"#))
            .unwrap(),
        r#"hallpass_policy_reloads_total{result="unchanged"} 1"#
    );
    // No label carries a path or an agent id.
    for l in expo.lines().filter(|l| !l.starts_with('#')) {
        assert!(!l.contains("/v1/") && !l.contains("triage-bot") && !l.contains("alice"), "unbounded label: {l}");
    }
    promtool_check_metrics(&expo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_sink_never_slows_a_check_and_drops_are_counted() {
    let metrics = Metrics::new().unwrap();
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let m = metrics.clone();
    let (log, writer) = DecisionLog::start(
        Sink::Writer(Box::new(Blocked(gate.clone()))),
        4,
        Some(Arc::new(move || m.decision_log_dropped())),
    );
    let probe = log.clone();
    let store = PolicyStore::open(std::path::Path::new(EXAMPLE), None).unwrap();
    let authz = Authz::new(store.handle(), Some(metrics.clone())).with_decision_log(log, false);
    let srv = serve(authz).await;
    let mut c = AuthorizationClient::connect(format!("http://{}", srv.addr)).await.unwrap();
    let mut slowest = Duration::ZERO;
    let n = 300;
    for _ in 0..n {
        let t = Instant::now();
        c.check(CheckRequestBuilder::new("DELETE", "/x").build()).await.unwrap();
        slowest = slowest.max(t.elapsed());
    }
    // The writer holds one record, the queue four: everything else was dropped, not waited on.
    let dropped = probe.dropped();
    eprintln!("{n} Checks with a blocked sink: slowest {slowest:?}, {dropped} records dropped");
    assert!(dropped >= (n - 5) as u64, "dropped {dropped}");
    assert!(slowest < Duration::from_millis(500), "a Check waited on the log: {slowest:?}");
    let expo = metrics.render();
    assert!(expo.contains(&format!("hallpass_decision_log_dropped_total {dropped}")), "{expo}");
    drop(c);
    srv.shutdown().await;
    drop(probe);
    {
        let (lock, cv) = &*gate;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
    tokio::task::spawn_blocking(move || writer.join()).await.unwrap();
}

/// `promtool check metrics` on an exposition. promtool comes from Debian's `prometheus`
/// package; scripts/test.sh installs it and sets HALLPASS_REQUIRE_TOOLS=1 so CI cannot skip.
pub fn promtool_check_metrics(expo: &str) {
    let Some(promtool) = common::tool("promtool") else { return };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(expo.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
}
