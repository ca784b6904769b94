//! Human approval (agent-controls.md §2-3, §8) against the whole server in-process on port 0
//! with the memory store: a held MCP call answered in JSON-RPC with its approval id, the
//! pending approval as an approver sees it (arguments redacted), bad input refused with
//! nothing changed, approve → the identical retry goes through once, deny, task grants until
//! they expire (exactly) or are revoked, the webhook (a real HTTP receiver), decision records,
//! metrics, grants kept across a restart by `state.dir`, and the CLI verbs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests may panic")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hallpass::request::build::CheckRequestBuilder;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

const TOKEN: &str = "approvals-test-token-1";

use common::InProcess as Server;

async fn start(dir: &Path) -> Server {
    Server::start(dir, Some(&dir.join("decisions.jsonl"))).await
}

/// A tools/call body with JSON-RPC `id` `rpc_id`.
fn tool_call(rpc_id: u64, tool: &str, path: &str) -> String {
    json!({"jsonrpc":"2.0","id":rpc_id,"method":"tools/call",
           "params":{"name":tool,"arguments":{"path":path,"secret":"hunter2"}}})
    .to_string()
}

/// What a Check answered: allowed?, the HTTP status and body of a deny, and the metadata.
struct Answer {
    allowed: bool,
    status: i32,
    body: Value,
    meta: std::collections::HashMap<String, String>,
}

fn answer(resp: CheckResponse) -> Answer {
    let meta = resp
        .dynamic_metadata
        .map(|m| {
            m.fields
                .into_iter()
                .filter_map(|(k, v)| match v.kind {
                    Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => Some((k, s)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match resp.http_response {
        Some(HttpResponse::OkResponse(_)) => Answer { allowed: true, status: 0, body: Value::Null, meta },
        Some(HttpResponse::DeniedResponse(d)) => Answer {
            allowed: false,
            status: d.status.map_or(0, |s| s.code),
            body: serde_json::from_str(&d.body).unwrap_or(Value::Null),
            meta,
        },
        other => panic!("unexpected http_response {other:?}"),
    }
}

/// Checks through the gRPC service, and the admin metrics.
trait Client {
    async fn mcp(&self, agent: &str, body: &str) -> Answer;
    async fn check(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer;
    async fn metrics(&self) -> String;
}

impl Client for Server {
    async fn mcp(&self, agent: &str, body: &str) -> Answer {
        let mut c = AuthorizationClient::connect(format!("http://{}", self.grpc)).await.unwrap();
        let req = CheckRequestBuilder::new("POST", "/mcp")
            .header("x-agent-id", agent)
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .build();
        answer(c.check(req).await.unwrap().into_inner())
    }

    async fn check(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
        let mut c = AuthorizationClient::connect(format!("http://{}", self.grpc)).await.unwrap();
        let mut b = CheckRequestBuilder::new(method, path);
        for (k, v) in headers {
            b = b.header(k, v);
        }
        if let Some(body) = body {
            b = b.header("content-type", "application/json").body(body.as_bytes().to_vec());
        }
        answer(c.check(b.build()).await.unwrap().into_inner())
    }

    async fn metrics(&self) -> String {
        let mut s = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

/// The approval id and status of a held answer (a JSON-RPC tool result with `isError`).
fn held(a: &Answer) -> (String, String, String) {
    assert!(!a.allowed, "expected a held request");
    assert_eq!(a.status, 200, "a held tools/call is answered in JSON-RPC: {}", a.body);
    assert_eq!(a.body["result"]["isError"], true, "{}", a.body);
    let d = &a.body["result"]["_meta"]["dev.hallpass/decision"];
    assert_eq!(d["error"], "approval_required", "{}", a.body);
    let id = d["approval"]["id"].as_str().unwrap().to_string();
    assert_eq!(a.meta.get("approval_id"), Some(&id), "metadata names the approval");
    assert_eq!(a.meta.get("decision").map(String::as_str), Some("deny"), "metadata still says deny");
    let text = a.body["result"]["content"][0]["text"].as_str().unwrap().to_string();
    assert!(text.contains(&id), "the model reads the approval id: {text}");
    (id, d["approval"]["status"].as_str().unwrap().to_string(), text)
}

/// A webhook receiver: every POST body, answered 200.
async fn receiver() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
                            let _ = tx.send(serde_json::from_str(body).unwrap());
                            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await;
                            break;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn setup(name: &str, hook: SocketAddr) -> PathBuf {
    let dir = common::approvers_dir(&format!("approvals-{name}"), TOKEN);
    std::fs::write(
        dir.join("policy.yaml"),
        format!(
            r#"version: 1
identity:
  agent: [{{header: x-agent-id}}]
settings:
  control: {{ approvers_file: approvers.yaml }}
  approvals:
    retry_after: 20s
    max_grant_ttl: 1h
    redact: [/secret]
    webhook: {{ url: "http://{hook}/hook" }}
rules:
  - id: delete-file
    effect: require_approval
    paths: ["/mcp"]
    mcp: {{ tools: [delete_file] }}
    message: Deleting files needs a human's approval.
  - id: mcp
    effect: allow
    methods: [POST]
    paths: ["/mcp"]
"#
        ),
    )
    .unwrap();
    dir
}

async fn wait_for(mut f: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 10 s");
}

/// The webhook over https: a receiver whose certificate a private CA signed (`ca_file`) gets
/// the event (logs name the receiver by its origin only: `webhook::tests::urls`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_go_over_https_to_a_receiver_the_ca_file_vouches_for() {
    let dir = common::approvers_dir("approvals-https", TOKEN);
    let Some((ca, cert, key)) = common::test_ca(&dir) else { return };
    let Some(rx) = common::OAuthServer::start_script(
        "receiver.mjs",
        &[("TLS_CERT", cert.to_str().unwrap()), ("TLS_KEY", key.to_str().unwrap())],
    ) else {
        return;
    };
    let policy = std::fs::read_to_string(setup("https-template", "127.0.0.1:1".parse().unwrap()).join("policy.yaml"))
        .unwrap()
        .replace(
            r#"webhook: { url: "http://127.0.0.1:1/hook" }"#,
            &format!(r#"webhook: {{ url: "{}/hook/T0/B0/hook-secret-77", ca_file: {} }}"#, rx.issuer, ca.display()),
        );
    assert!(policy.contains("hook-secret-77"));
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
    let srv = start(&dir).await;
    let (id, _, _) = held(&srv.mcp("bot", &tool_call(1, "delete_file", "/tmp/tls")).await);
    let client = hallpass::oauth::http_client(Duration::from_secs(5), Some(&std::fs::read(&ca).unwrap())).unwrap();
    let mut got = Value::Null;
    wait_for(async || {
        let r = client.get(format!("{}/_test/events", rx.issuer)).send().await.unwrap();
        got = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        got.as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let ev = &got[0];
    assert_eq!(ev["path"], "/hook/T0/B0/hook-secret-77");
    assert_eq!(
        (ev["body"]["type"].as_str(), ev["body"]["approval"]["id"].as_str()),
        (Some("approval.pending"), Some(id.as_str())),
        "{ev}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_once_deny_and_task_grants_through_the_control_api() {
    let (hook, mut events) = receiver().await;
    let dir = setup("api", hook);
    let srv = start(&dir).await;

    // -- held: a JSON-RPC tool result the model can read, with the approval id.
    let call = tool_call(1, "delete_file", "/tmp/a");
    let (id, status, text) = held(&srv.mcp("bot", &call).await);
    assert_eq!(status, "pending");
    assert!(text.contains("retry the identical call") || text.contains("Retry the identical call"), "{text}");
    assert!(text.contains("20 seconds"), "retry_after from the settings: {text}");
    // The same action with another JSON-RPC id is the same approval (ids are not part of it).
    let (again, _, _) = held(&srv.mcp("bot", &tool_call(2, "delete_file", "/tmp/a")).await);
    assert_eq!(again, id);

    // -- the approver sees what the agent wants to do, redacted, and how often it tried.
    let (st, list) = srv.api(TOKEN, "GET", "/v1/approvals", None).await;
    assert_eq!(st, 200, "{list}");
    let p = &list["approvals"][0];
    assert_eq!(list["approvals"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        (p["id"].as_str(), p["status"].as_str(), p["seen"].as_u64()),
        (Some(id.as_str()), Some("pending"), Some(2))
    );
    assert_eq!(p["agent"], "bot");
    assert_eq!((p["method"].as_str(), p["path"].as_str()), (Some("POST"), Some("/mcp")));
    assert_eq!(p["mcp"]["tool"], "delete_file");
    assert_eq!(p["mcp"]["arguments"], json!({"path": "/tmp/a", "secret": "[redacted]"}));
    assert_eq!(p["rules"][0]["id"], "delete-file");
    assert_eq!(p["rules"][0]["message"], "Deleting files needs a human's approval.");
    assert!(!list.to_string().contains("hunter2"), "a redacted value never leaves hallpass");

    // -- the webhook got exactly one approval.pending (the first hold), with the redaction.
    let ev = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
    assert_eq!(ev["type"], "approval.pending");
    assert_eq!(ev["approval"]["id"], id.as_str());
    assert_eq!(ev["approval"]["mcp"]["arguments"]["secret"], "[redacted]");
    assert!(ev["time"].as_str().is_some());

    // -- bad input: 4xx with a JSON error, and nothing changes.
    let approve = format!("/v1/approvals/{id}/approve");
    for (token, path, body, want, what) in [
        ("wrong", approve.as_str(), r#"{"ttl":"10m"}"#, 401, "unknown token"),
        (TOKEN, "/v1/approvals/ap_aaaaaaaaaaaaaaaaaaaaaaaaaa/approve", r#"{}"#, 404, "no pending approval"),
        (TOKEN, approve.as_str(), r#"{"ttl":"2h"}"#, 400, "above the maximum"),
        (TOKEN, approve.as_str(), r#"{"ttl":"soon"}"#, 400, "soon"),
        (TOKEN, approve.as_str(), r#"{"uses":0}"#, 400, "uses"),
        (TOKEN, approve.as_str(), r#"{"ttl":"10m""#, 400, "body"),
        (TOKEN, approve.as_str(), r#"{"tll":"10m"}"#, 400, "tll"),
    ] {
        let (st, err) = srv.api(token, "POST", path, Some(body)).await;
        assert_eq!(st, want, "{body}: {err}");
        assert!(err["error"].as_str().unwrap().contains(what), "{body}: {err}");
    }
    let (_, list) = srv.api(TOKEN, "GET", "/v1/approvals", None).await;
    assert_eq!(list["approvals"][0]["status"], "pending", "still pending after bad input");
    let (_, grants) = srv.api(TOKEN, "GET", "/v1/grants", None).await;
    assert_eq!(grants["grants"], json!([]), "no grant made by bad input");
    held(&srv.mcp("bot", &call).await);

    // -- approve: the identical retry goes through once, naming the grant.
    let (st, grant) = srv.api(TOKEN, "POST", &approve, Some(r#"{"ttl":"10m","reason":"cleanup ticket 42"}"#)).await;
    assert_eq!(st, 201, "{grant}");
    assert_eq!((grant["kind"].as_str(), grant["uses"].as_u64()), (Some("approval"), Some(1)));
    assert_eq!((grant["approval"].as_str(), grant["approved_by"].as_str()), (Some(id.as_str()), Some("ops")));
    let gid = grant["id"].as_str().unwrap().to_string();
    let (st, got) = srv.api(TOKEN, "GET", &format!("/v1/approvals/{id}"), None).await;
    assert_eq!((st, got["status"].as_str()), (200, Some("approved")), "{got}");
    // Another agent's identical call is another action: still held.
    held(&srv.mcp("other-bot", &call).await);
    let ok = srv.mcp("bot", &tool_call(3, "delete_file", "/tmp/a")).await;
    assert!(ok.allowed, "the approved action goes through: {}", ok.body);
    assert_eq!(ok.meta.get("grant"), Some(&gid));
    assert_eq!(ok.meta.get("approved_by").map(String::as_str), Some("ops"), "metadata names the approver");
    assert_eq!(ok.meta.get("rule").map(String::as_str), Some("mcp"), "the allow rule decides once lifted");
    // Once: the same retry again is held anew.
    let (id2, st2, _) = held(&srv.mcp("bot", &call).await);
    assert_eq!((id2.as_str(), st2.as_str()), (id.as_str(), "pending"));
    let (_, grants) = srv.api(TOKEN, "GET", "/v1/grants", None).await;
    assert_eq!(grants["grants"], json!([]), "a spent grant is gone");

    // -- deny: the agent is told so (until the pending approval expires).
    let (st, denied) = srv.api(TOKEN, "POST", &format!("/v1/approvals/{id}/deny"), Some(r#"{"reason":"no"}"#)).await;
    assert_eq!((st, denied["status"].as_str(), denied["decided_by"].as_str()), (200, Some("denied"), Some("ops")));
    let (_, status, text) = held(&srv.mcp("bot", &call).await);
    assert_eq!(status, "denied");
    assert!(text.contains("denied"), "{text}");
    let (st, _) = srv.api(TOKEN, "POST", "/v1/approvals/ap_aaaaaaaaaaaaaaaaaaaaaaaaaa/deny", Some("{}")).await;
    assert_eq!(st, 404);

    // -- task grants: bad input first.
    for (body, what) in [
        (r#"{"agent":"bot","rules":["nope"],"ttl":"10m"}"#, "not a require_approval rule"),
        (r#"{"agent":"bot","rules":["mcp"],"ttl":"10m"}"#, "not a require_approval rule"),
        (r#"{"agent":"bot","rules":[],"ttl":"10m"}"#, "at least one"),
        (r#"{"agent":"bot","rules":["delete-file"]}"#, "ttl"),
        (r#"{"agent":"bot","rules":["delete-file"],"ttl":"2h"}"#, "above the maximum"),
        (r#"{"agent":"bot","rules":["delete-file"],"expires_at":"2020-01-01T00:00:00Z"}"#, "not in the future"),
        (r#"{"agent":"","rules":["delete-file"],"ttl":"10m"}"#, "agent"),
        (r#"{"agent":"bot","rules":["delete-file"],"ttl":"10m","tools":[]}"#, "tools"),
    ] {
        let (st, err) = srv.api(TOKEN, "POST", "/v1/grants", Some(body)).await;
        assert_eq!(st, 400, "{body}: {err}");
        assert!(err["error"].as_str().unwrap().contains(what), "{body}: {err}");
    }
    // A grant for other tools does not lift this one.
    let (st, _) = srv
        .api(
            TOKEN,
            "POST",
            "/v1/grants",
            Some(r#"{"agent":"bot","rules":["delete-file"],"tools":["move_file"],"ttl":"10m"}"#),
        )
        .await;
    assert_eq!(st, 201);
    held(&srv.mcp("bot", &tool_call(4, "delete_file", "/tmp/b")).await);
    // A task grant lifts the hold for that agent, any arguments, until it expires (exactly).
    let (st, task) = srv
        .api(
            TOKEN,
            "POST",
            "/v1/grants",
            Some(
                r#"{"agent":"bot","rules":["delete-file"],"tools":["delete_file"],"ttl":"1500ms","reason":"cleanup"}"#,
            ),
        )
        .await;
    assert_eq!((st, task["kind"].as_str()), (201, Some("task")), "{task}");
    let expires: jiff::Timestamp = task["expires_at"].as_str().unwrap().parse().unwrap();
    let through = srv.mcp("bot", &tool_call(5, "delete_file", "/tmp/c")).await;
    assert!(through.allowed, "{}", through.body);
    assert_eq!(through.meta.get("grant").map(String::as_str), task["id"].as_str());
    held(&srv.mcp("other-bot", &tool_call(6, "delete_file", "/tmp/c")).await);
    let wait = expires.duration_since(jiff::Timestamp::now()).unsigned_abs() + Duration::from_millis(20);
    tokio::time::sleep(wait).await;
    held(&srv.mcp("bot", &tool_call(7, "delete_file", "/tmp/c")).await);
    // Revoked: in force at once.
    let (_, task) =
        srv.api(TOKEN, "POST", "/v1/grants", Some(r#"{"agent":"bot","rules":["delete-file"],"ttl":"10m"}"#)).await;
    assert!(srv.mcp("bot", &tool_call(8, "delete_file", "/tmp/d")).await.allowed);
    let tid = task["id"].as_str().unwrap();
    let (st, _) = srv.api(TOKEN, "DELETE", &format!("/v1/grants/{tid}"), None).await;
    assert_eq!(st, 200);
    held(&srv.mcp("bot", &tool_call(9, "delete_file", "/tmp/d")).await);
    let (st, _) = srv.api(TOKEN, "DELETE", &format!("/v1/grants/{tid}"), None).await;
    assert_eq!(st, 404, "revoking twice: not found");

    // -- metrics.
    let m = srv.metrics().await;
    for (line, at_least) in [
        ("hallpass_approvals_total{event=\"approved\"}", 1),
        ("hallpass_approvals_total{event=\"denied\"}", 1),
        ("hallpass_approvals_total{event=\"lifted\"}", 3),
        ("hallpass_approvals_total{event=\"requested\"}", 3),
        ("hallpass_approvals_total{event=\"revoked\"}", 1),
        ("hallpass_webhook_events_total{result=\"sent\"}", 1),
    ] {
        let v: u64 = m.lines().find_map(|l| l.strip_prefix(line)).map_or(0, |v| v.trim().parse().unwrap_or(0));
        assert!(v >= at_least, "{line} is {v}, want ≥ {at_least}");
    }

    // -- a task grant survives a restart with state.dir.
    let (_, keep) =
        srv.api(TOKEN, "POST", "/v1/grants", Some(r#"{"agent":"bot","rules":["delete-file"],"ttl":"30m"}"#)).await;
    srv.shutdown().await;
    let records = std::fs::read_to_string(dir.join("decisions.jsonl")).unwrap();
    let recs: Vec<Value> = records.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let lifted = recs.iter().find(|r| r["grant"] == gid.as_str()).expect("a record names the approval grant");
    assert_eq!((lifted["approval_id"].as_str(), lifted["approved_by"].as_str()), (Some(id.as_str()), Some("ops")));
    assert_eq!((lifted["decision"].as_str(), lifted["rule"].as_str()), (Some("allow"), Some("mcp")));
    assert_eq!(lifted["holds"], json!(["delete-file"]));
    let first = recs.iter().find(|r| r["approval_id"] == id.as_str()).unwrap();
    assert_eq!((first["decision"].as_str(), first["approval_status"].as_str()), (Some("deny"), Some("pending")));
    assert!(!records.contains("hunter2"), "records carry no body");

    let srv = start(&dir).await;
    let (_, grants) = srv.api(TOKEN, "GET", "/v1/grants", None).await;
    assert!(grants["grants"].as_array().unwrap().iter().any(|g| g["id"] == keep["id"]), "{grants}");
    wait_for(async || srv.mcp("bot", &tool_call(10, "delete_file", "/tmp/e")).await.allowed).await;

    // -- the CLI verbs.
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (_, _, _) = held(&srv.mcp("cli-bot", &tool_call(11, "delete_file", "/x")).await);
    let control = srv.control;
    let cli = move |args: Vec<String>| {
        let out = Command::new(env!("CARGO_BIN_EXE_hallpass"))
            .args(&args)
            .args(["--server", &format!("http://{control}"), "--token-file"])
            .arg(&token_file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let cli = cli.clone();
        async move { tokio::task::spawn_blocking(move || cli(args)).await.unwrap() }
    };
    let (code, out, err) = run(&["approvals", "list"]).await;
    assert_eq!(code, Some(0), "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let cli_id = list["approvals"].as_array().unwrap().iter().find(|p| p["agent"] == "cli-bot").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _, err) = run(&["approvals", "approve", &cli_id, "--ttl", "2h"]).await;
    assert_eq!(code, Some(1), "ttl above the maximum: exit 1");
    assert!(err.contains("400"), "{err}");
    let (code, out, err) =
        run(&["approvals", "approve", &cli_id, "--ttl", "5m", "--uses", "2", "--reason", "cli"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["uses"], 2);
    assert!(srv.mcp("cli-bot", &tool_call(12, "delete_file", "/x")).await.allowed);
    assert!(srv.mcp("cli-bot", &tool_call(13, "delete_file", "/x")).await.allowed, "uses: 2");
    held(&srv.mcp("cli-bot", &tool_call(14, "delete_file", "/x")).await);
    let (code, out, err) =
        run(&["grants", "add", "cli-bot", "--rule", "delete-file", "--tool", "delete_file", "--ttl", "5m"]).await;
    assert_eq!(code, Some(0), "{err}");
    let g: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(g["tools"], json!(["delete_file"]));
    let (code, out, _) = run(&["grants", "list"]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains(g["id"].as_str().unwrap()));
    let (code, _, _) = run(&["grants", "revoke", g["id"].as_str().unwrap()]).await;
    assert_eq!(code, Some(0));
    let (code, _, _) = run(&["approvals", "deny", "ap_aaaaaaaaaaaaaaaaaaaaaaaaaa"]).await;
    assert_eq!(code, Some(1), "unknown id: exit 1");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_one_page_under_a_strict_csp() {
    let (hook, _events) = receiver().await;
    let dir = setup("console-page", hook);
    let srv = start(&dir).await;
    let mut s = tokio::net::TcpStream::connect(srv.control).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");
    let csp = head.lines().find_map(|l| l.strip_prefix("content-security-policy:")).unwrap().trim().to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    // The one inline script is allowed by its hash; nothing is loaded from elsewhere.
    assert_eq!(body.matches("<script").count(), 1);
    for external in ["src=\"http", "href=\"http", "src=\"//", "@import", "url(http"] {
        assert!(!body.contains(external), "the console loads nothing from elsewhere ({external})");
    }
    assert!(!body.contains("innerHTML"), "API data is never parsed as HTML");
    srv.shutdown().await;
}

/// The console in a real headless Chromium (Debian `chromium`) driven by Playwright
/// (`tests/console/console.mjs`): log in with a token, see the pending action with its
/// arguments, approve it, see the grant; then the agent's retry goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_approves_in_a_real_browser() {
    let (Some(node), Some(chromium)) = (common::tool("node"), common::tool("chromium")) else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.mjs");
    if !Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/node_modules/playwright-core").exists() {
        assert!(
            std::env::var("HALLPASS_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "tests/console: run npm ci (scripts/test.sh does)"
        );
        eprintln!("skipped: tests/console/node_modules missing");
        return;
    }
    let (hook, _events) = receiver().await;
    let dir = setup("console", hook);
    let srv = start(&dir).await;
    let (id, _, _) = held(&srv.mcp("mail-bot", &tool_call(1, "delete_file", "/srv/reports/q3-draft.txt")).await);
    let shot = std::env::var("HALLPASS_CONSOLE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png"));
    let url = format!("http://{}/", srv.control);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(node)
            .arg(script)
            .args(["--url", &url, "--token", TOKEN, "--approval", &id, "--expect-text", "/srv/reports/q3-draft.txt"])
            .args(["--tool", "delete_file", "--screenshot"])
            .arg(&shot)
            .env("CHROMIUM", chromium)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "console.mjs failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["ok"], true, "{stdout}");
    // The grant the browser made lets the agent's identical retry through, once.
    assert!(srv.mcp("mail-bot", &tool_call(2, "delete_file", "/srv/reports/q3-draft.txt")).await.allowed);
    held(&srv.mcp("mail-bot", &tool_call(3, "delete_file", "/srv/reports/q3-draft.txt")).await);
    srv.shutdown().await;
}

/// `hallpass check` explains a held request with the same core as the Check: the holds, what
/// the allow rules decide once they are lifted, and the approval id the Check gives.
#[test]
fn check_names_the_holds_and_the_approval_id_the_check_gives() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let body = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"send_email","arguments":{"to":["bob@partner.test"],"subject":"Q3"}}}"#;
    let out = Command::new(env!("CARGO_BIN_EXE_hallpass"))
        .args(["check", "--policy"])
        .arg(root.join("config/policy.yaml"))
        .args(["--method", "POST", "--path", "/mcp", "--host", "tools.example.com", "--agent", "research-bot"])
        .args(["--body", body, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["decision"].as_str(), v["rule"].as_str()), (Some("deny"), Some("mcp-email-approval")));
    assert_eq!(v["holds"], json!(["mcp-email-approval"]));
    assert_eq!(v["once_approved"], json!({"decision": "allow", "rule": "mcp-email"}));
    // The Check (in process, identity from a header source naming the same agent) gives the
    // same approval id: it depends on the action, not on how the agent was identified.
    let policy = hallpass::policy::Policy::from_file(&root.join("config/policy.yaml")).unwrap();
    let authz = hallpass::service::Authz::from_policy(policy);
    let req = CheckRequestBuilder::new("POST", "/mcp")
        .host("tools.example.com")
        .header("x-agent-id", "research-bot")
        .header("content-type", "application/json")
        .body(body.as_bytes().to_vec())
        .build();
    let checked = common::ready(authz.decide(req, jiff::Timestamp::now()));
    let a = answer(checked.response);
    let d = &a.body["result"]["_meta"]["dev.hallpass/decision"];
    assert_eq!(d["approval"]["id"], v["approval_id"], "check and Check name the same approval");
    // Text output too.
    let out = Command::new(env!("CARGO_BIN_EXE_hallpass"))
        .args(["check", "--policy"])
        .arg(root.join("config/policy.yaml"))
        .args(["--method", "POST", "--path", "/mcp", "--host", "tools.example.com", "--agent", "research-bot"])
        .args(["--body", body])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("holds: mcp-email-approval"), "{text}");
    assert!(text.contains("once approved: allow by mcp-email"), "{text}");
    assert!(text.contains(&format!("approval_id: {}", v["approval_id"].as_str().unwrap())), "{text}");
}

/// The approval id of a plain-HTTP held answer (403).
fn held_http(a: &Answer) -> String {
    assert!(!a.allowed, "expected a held request");
    assert_eq!((a.status, a.body["error"].as_str()), (403, Some("approval_required")), "{}", a.body);
    a.body["approval"]["id"].as_str().unwrap().to_string()
}

/// What a security review found an approval could be stretched to, each closed: an approval
/// covers exactly the action the approver saw — its query in order, the headers the policy
/// reads, the holds it was held by — and everything it covers is shown; one agent cannot
/// fill the approvers' queue; a tool-scoped task grant is not fooled by a member spelt in
/// another case; redaction reaches into batches; a body too large to show needs `force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_covers_exactly_what_the_approver_saw() {
    let (hook, _events) = receiver().await;
    let dir = setup("exact", hook);
    std::fs::write(
        dir.join("policy.yaml"),
        r#"version: 1
identity:
  agent: [{header: x-agent-id}]
settings:
  control: { approvers_file: approvers.yaml }
  approvals: { redact: [/password], max_pending_per_agent: 4 }
rules:
  - id: pay-hold
    effect: require_approval
    paths: ["/pay"]
  - id: prod-hold
    effect: require_approval
    paths: ["/pay"]
    headers: { x-env: { equals: prod } }
  - id: tool-hold
    effect: require_approval
    paths: ["/mcp"]
    mcp: { tools: [send_mail, delete_all] }
  - id: upload-hold
    effect: require_approval
    paths: ["/upload"]
  - id: pay
    effect: allow
    paths: ["/pay", "/upload"]
  - id: mcp
    effect: allow
    methods: [POST]
    paths: ["/mcp"]
"#,
    )
    .unwrap();
    let srv = start(&dir).await;
    let bot = [("x-agent-id", "bot"), ("x-env", "staging")];

    // -- the approver sees the query (in order), the bound headers, the method readings.
    let id = held_http(&srv.check("POST", "/pay?to=alice&to=mallory", &bot, Some(r#"{"amount":10}"#)).await);
    let (_, p) = srv.api(TOKEN, "GET", &format!("/v1/approvals/{id}"), None).await;
    assert_eq!(p["query"], json!([["to", "alice"], ["to", "mallory"]]), "{p}");
    assert_eq!(p["headers"]["x-env"], "staging", "{p}");
    assert_eq!(p["headers"]["content-type"], "application/json", "{p}");
    assert_eq!((&p["body"], p["body_kind"].as_str()), (&json!({"amount": 10}), Some("json")));
    assert_eq!((p["complete"].as_bool(), p["rules"][0]["id"].as_str()), (Some(true), Some("pay-hold")));
    let (st, _) = srv.api(TOKEN, "POST", &format!("/v1/approvals/{id}/approve"), Some("{}")).await;
    assert_eq!(st, 201);
    // Another order of the same values: the same id (its pairs are sorted), but the grant is
    // bound to the order (upstreams take the first or the last value): held.
    let other = held_http(&srv.check("POST", "/pay?to=mallory&to=alice", &bot, Some(r#"{"amount":10}"#)).await);
    assert_eq!(other, id);
    // The same id with a header the policy reads changed (and so another hold): not lifted.
    let prod = [("x-agent-id", "bot"), ("x-env", "prod")];
    let again = srv.check("POST", "/pay?to=alice&to=mallory", &prod, Some(r#"{"amount":10}"#)).await;
    assert_eq!(held_http(&again), id, "the same action id, but bound to other headers and holds: held");
    assert!(srv.check("POST", "/pay?to=alice&to=mallory", &bot, Some(r#"{"amount":10}"#)).await.allowed, "as approved");

    // -- an object that is not a JSON-RPC 2.0 call keeps its `id` in the action, and is shown whole.
    let a = held_http(
        &srv.check("POST", "/pay", &bot, Some(r#"{"jsonrpc":"-","method":"ping","id":"acct_1","amount":5}"#)).await,
    );
    let b = held_http(
        &srv.check("POST", "/pay", &bot, Some(r#"{"jsonrpc":"-","method":"ping","id":"acct_2","amount":5}"#)).await,
    );
    assert_ne!(a, b, "the id of something that is not a call names the action");
    let (_, p) = srv.api(TOKEN, "GET", &format!("/v1/approvals/{a}"), None).await;
    assert_eq!((p["mcp"].is_null(), p["body"]["amount"].as_u64()), (true, Some(5)), "{p}");

    // -- one agent cannot fill the queue: past its quota its holds are refused, not recorded.
    let n = srv.api(TOKEN, "GET", "/v1/approvals", None).await.1["approvals"].as_array().unwrap().len();
    assert_eq!(n, 3, "bot has 3 pending (the reordered query or prod header: one id; a; b)");
    held_http(&srv.check("POST", "/pay?n=4", &bot, None).await);
    let refused = srv.check("POST", "/pay?n=5", &bot, None).await;
    assert_eq!((refused.status, refused.body["error"].as_str()), (403, Some("forbidden")), "{}", refused.body);
    assert!(refused.body["message"].as_str().unwrap().contains("too many approvals are pending"));
    assert!(refused.body.get("approval").is_none());
    let (_, list) = srv.api(TOKEN, "GET", "/v1/approvals", None).await;
    assert_eq!(list["approvals"].as_array().unwrap().len(), 4, "not recorded");
    assert!(refused.body["message"].as_str().unwrap().starts_with("This request needs a human's approval."));
    // Others still are.
    held(&srv.mcp("other", &tool_call(1, "send_mail", "/x")).await);

    // -- a tool-scoped task grant: a member spelt in another case is a tool it does not name.
    let (st, _) = srv
        .api(
            TOKEN,
            "POST",
            "/v1/grants",
            Some(r#"{"agent":"mailer","rules":["tool-hold"],"tools":["send_mail"],"ttl":"5m"}"#),
        )
        .await;
    assert_eq!(st, 201);
    assert!(srv.mcp("mailer", &tool_call(1, "send_mail", "/x")).await.allowed, "the granted tool");
    let sneaky = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_mail","arguments":{}}},{"jsonrpc":"2.0","id":2,"Method":"tools/call","params":{"name":"delete_all","arguments":{}}}]"#;
    let r = srv.mcp("mailer", sneaky).await;
    assert!(!r.allowed, "a folded `Method` (Go reads it) calling another tool is not lifted: {}", r.body);

    // -- a tool-scoped task grant does not lift other calls in the same batch (a
    // resources/read beside the granted tool call).
    let mixed = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_mail","arguments":{}}},{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///etc/secret"}}]"#;
    let r = srv.mcp("mailer", mixed).await;
    assert!(!r.allowed, "a batch with a call that is not the granted tool: {}", r.body);

    // -- bodies that read differently to upstreams, or hide a method, cannot be approved.
    let env = [("x-agent-id", "bot2"), ("x-env", "staging")];
    let dup = srv.check("POST", "/pay", &env, Some(r#"{"discount":5,"discount":95}"#)).await;
    assert_eq!((dup.status, dup.body["error"].as_str()), (403, Some("forbidden")), "duplicate keys: {}", dup.body);
    assert!(dup.body["message"].as_str().unwrap().contains("cannot be approved"));
    let mut c = AuthorizationClient::connect(format!("http://{}", srv.grpc)).await.unwrap();
    for (ct, extra, body) in [
        ("application/octet-stream", Some(("content-encoding", "gzip")), "hello world"),
        (
            "multipart/form-data; boundary=x",
            None,
            "--x\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--x--\r\n",
        ),
    ] {
        let mut b = CheckRequestBuilder::new("POST", "/pay").header("x-agent-id", "bot2").header("content-type", ct);
        if let Some((k, v)) = extra {
            b = b.header(k, v);
        }
        let r = answer(c.check(b.body(body.as_bytes().to_vec()).build()).await.unwrap().into_inner());
        assert_eq!((r.status, r.body["error"].as_str()), (403, Some("forbidden")), "{ct}: {}", r.body);
    }
    // A binary upload is approvable, and bound to its content-encoding (none).
    let mut c2 = c.clone();
    let octet = |enc: Option<&str>| {
        let mut b = CheckRequestBuilder::new("POST", "/upload")
            .header("x-agent-id", "bot2")
            .header("content-type", "application/octet-stream");
        if let Some(e) = enc {
            b = b.header("content-encoding", e);
        }
        b.body(b"hello world".to_vec()).build()
    };
    let r = answer(c2.check(octet(None)).await.unwrap().into_inner());
    let up = held_http(&r);
    let (_, p) = srv.api(TOKEN, "GET", &format!("/v1/approvals/{up}"), None).await;
    assert_eq!((p["body_kind"].as_str(), p["body"]["text"].as_str()), (Some("text"), Some("hello world")), "{p}");
    // Approved as seen (the binding the approver saw is checked).
    let (st, err) =
        srv.api(TOKEN, "POST", &format!("/v1/approvals/{up}/approve"), Some(r#"{"binding":"not-this"}"#)).await;
    assert_eq!(st, 409, "another record than the one seen: {err}");
    let body = format!(r#"{{"binding":"{}"}}"#, p["binding"].as_str().unwrap());
    let (st, _) = srv.api(TOKEN, "POST", &format!("/v1/approvals/{up}/approve"), Some(&body)).await;
    assert_eq!(st, 201);

    // -- query parameters named by `redact`, and credential-like headers, are not shown.
    let r = srv.check("POST", "/pay?password=hunter5&to=x", &env, None).await;
    let q = held_http(&r);
    let (_, p) = srv.api(TOKEN, "GET", &format!("/v1/approvals/{q}"), None).await;
    assert_eq!(p["query"], json!([["password", "[redacted]"], ["to", "x"]]), "{p}");

    // -- redaction reaches the arguments of every element of a batch.
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_mail","arguments":{"password":"hunter2"}}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_all","arguments":{"password":"hunter3"}}}]"#;
    let r = srv.mcp("batcher", batch).await;
    let id = held_http(&r);
    let (_, p) = srv.api(TOKEN, "GET", &format!("/v1/approvals/{id}"), None).await;
    assert_eq!(p["body"][0]["params"]["arguments"]["password"], "[redacted]", "{p}");
    assert!(!p.to_string().contains("hunter"), "{p}");

    // -- a body too large to show: approved only with force; big integers shown exactly.
    let big = format!(r#"{{"amount":9007199254740993,"memo":"{}"}}"#, "x".repeat(20_000));
    let id = held_http(&srv.check("POST", "/pay", &[("x-agent-id", "big"), ("x-env", "staging")], Some(&big)).await);
    let (_, p) = srv.api(TOKEN, "GET", &format!("/v1/approvals/{id}"), None).await;
    assert_eq!(p["complete"], false, "a body too large to show is not complete");
    let (st, err) = srv.api(TOKEN, "POST", &format!("/v1/approvals/{id}/approve"), Some("{}")).await;
    assert_eq!(st, 409, "{err}");
    let (st, _) = srv.api(TOKEN, "POST", &format!("/v1/approvals/{id}/approve"), Some(r#"{"force":true}"#)).await;
    assert_eq!(st, 201);
    // Integers beyond 64 bits (negative too) are read as floats: such a request cannot be
    // approved (one approval would cover its neighbours).
    for n in ["-9999999999999999999", "18446744073709551616", "0.10000000000000000001"] {
        let r = srv
            .check("POST", "/pay", &[("x-agent-id", "num"), ("x-env", "staging")], Some(&format!(r#"{{"n":{n}}}"#)))
            .await;
        assert_eq!((r.status, r.body["error"].as_str()), (403, Some("forbidden")), "{n}: {}", r.body);
        assert!(r.body["message"].as_str().unwrap().contains("cannot be approved"), "{n}");
    }
    let r = srv
        .check("POST", "/pay", &[("x-agent-id", "num"), ("x-env", "staging")], Some(r#"{"n":-9223372036854775808}"#))
        .await;
    held_http(&r);
    let small = held_http(
        &srv.check(
            "POST",
            "/pay",
            &[("x-agent-id", "big"), ("x-env", "staging")],
            Some(r#"{"amount":9007199254740993}"#),
        )
        .await,
    );
    let (_, p) = srv.api(TOKEN, "GET", &format!("/v1/approvals/{small}"), None).await;
    assert_eq!(p["body"]["amount"], "9007199254740993", "a browser would round the number: shown as its digits");
    srv.shutdown().await;
}

/// A pending approval nobody answers ends after `pending_ttl` (counted as expired); the same
/// action held again is a new pending approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_approval_expires() {
    let (hook, _events) = receiver().await;
    let dir = setup("expire", hook);
    let policy = std::fs::read_to_string(dir.join("policy.yaml")).unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        policy.replace("    retry_after: 20s\n", "    retry_after: 20s\n    pending_ttl: 1s\n"),
    )
    .unwrap();
    let srv = start(&dir).await;
    let (id, _, _) = held(&srv.mcp("bot", &tool_call(1, "delete_file", "/a")).await);
    let (_, list) = srv.api(TOKEN, "GET", "/v1/approvals", None).await;
    assert_eq!(list["approvals"][0]["id"], id.as_str());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, list) = srv.api(TOKEN, "GET", "/v1/approvals", None).await;
    assert_eq!(list["approvals"], json!([]), "ended unanswered");
    let (st, _) = srv.api(TOKEN, "POST", &format!("/v1/approvals/{id}/approve"), Some("{}")).await;
    assert_eq!(st, 404, "an ended approval cannot be approved");
    let m = srv.metrics().await;
    let expired: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("hallpass_approvals_total{event=\"expired\"}"))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    assert_eq!(expired, 1, "counted once");
    held(&srv.mcp("bot", &tool_call(2, "delete_file", "/a")).await);
    let (_, list) = srv.api(TOKEN, "GET", "/v1/approvals", None).await;
    assert_eq!(
        (list["approvals"][0]["id"].as_str(), list["approvals"][0]["seen"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
    srv.shutdown().await;
}
