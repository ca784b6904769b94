//! MCP-native answers (agent-controls.md §8): a denied single JSON-RPC call with an `id` is
//! answered with HTTP 200 and a JSON-RPC response carrying the deny (a `tools/call` as a tool
//! result with `isError`, anything else as a JSON-RPC error); batches, notifications and other
//! bodies keep the HTTP deny; `settings.mcp_responses: http` keeps it for every call; records,
//! metadata and metrics still say deny.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests may panic")]

mod common;

use common::ready;
use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
use hallpass::policy::Policy;
use hallpass::request::build::CheckRequestBuilder;
use hallpass::service::Authz;
use serde_json::{json, Value};

const POLICY: &str = r#"version: 1
identity:
  agent: [{header: x-agent-id}]
settings:
  quarantine: { after_denies: 100, within: 1m, for: 1m }
rules:
  - id: no-shell
    effect: deny
    paths: ["/mcp"]
    mcp: { tools: [run_shell] }
    message: Shell tools are not available to agents.
  - id: tools
    effect: allow
    agents: [bot]
    paths: ["/mcp"]
    limits:
      - { per: [agent, mcp.tool], rate: "1/m" }
"#;

fn authz(policy: &str) -> Authz {
    Authz::from_policy(Policy::from_yaml(policy, "mcp.yaml").unwrap())
}

fn call(authz: &Authz, agent: &str, body: &str) -> (CheckResponse, bool) {
    let req = CheckRequestBuilder::new("POST", "/mcp")
        .header("x-agent-id", agent)
        .header("content-type", "application/json")
        .body(body.to_string())
        .build();
    let c = ready(authz.decide(req, jiff::Timestamp::now()));
    (c.response, c.decision.allowed())
}

/// (HTTP status, body JSON) of a deny.
fn denied(r: &CheckResponse) -> (i32, Value) {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            (d.status.as_ref().map_or(0, |s| s.code), serde_json::from_str(&d.body).unwrap_or(Value::Null))
        }
        other => panic!("not a deny: {other:?}"),
    }
}

fn meta(r: &CheckResponse, k: &str) -> String {
    match r.dynamic_metadata.as_ref().and_then(|m| m.fields.get(k)).and_then(|v| v.kind.clone()) {
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => s,
        _ => String::new(),
    }
}

#[test]
fn a_denied_tool_call_is_a_tool_result_with_is_error() {
    let a = authz(POLICY);
    let (r, allowed) = call(
        &a,
        "bot",
        r#"{"jsonrpc":"2.0","id":"call-7","method":"tools/call","params":{"name":"run_shell","arguments":{"cmd":"id"}}}"#,
    );
    assert!(!allowed);
    assert_eq!(r.status.as_ref().map(|s| s.code), Some(7), "gRPC still PERMISSION_DENIED");
    assert_eq!((meta(&r, "decision"), meta(&r, "rule")), ("deny".into(), "no-shell".into()), "metadata says deny");
    let (status, body) = denied(&r);
    assert_eq!(status, 200);
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], "call-7", "the request's id, as sent");
    assert_eq!(body["result"]["isError"], true);
    assert_eq!(
        body["result"]["content"],
        json!([{"type": "text", "text": "Shell tools are not available to agents. (rule no-shell)"}])
    );
    let d = &body["result"]["_meta"]["dev.hallpass/decision"];
    assert_eq!((d["error"].as_str(), d["rule"].as_str()), (Some("forbidden"), Some("no-shell")));
    assert_eq!(d["decision_id"].as_str().map(str::len), Some(32));
    assert!(body.get("error").is_none());
}

#[test]
fn other_methods_get_a_json_rpc_error_and_limits_answer_the_same_way() {
    let a = authz(POLICY);
    // Not allowed (unknown agent): the default deny, as a JSON-RPC error with a numeric id.
    let (r, _) = call(&a, "stranger", r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#);
    let (status, body) = denied(&r);
    assert_eq!(status, 200);
    assert_eq!(body["id"], 3);
    assert_eq!(body["error"]["code"], -32001);
    assert_eq!(body["error"]["message"], "No policy rule allows this request.");
    assert_eq!(body["error"]["data"]["rule"], "default");
    // Over a limit: the tool result says so; the 429's headers are still set for Envoy.
    let search = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{}}}"#;
    assert!(call(&a, "bot", search).1);
    let (r, allowed) = call(&a, "bot", search);
    assert!(!allowed);
    let (status, body) = denied(&r);
    assert_eq!(status, 200);
    let d = &body["result"]["_meta"]["dev.hallpass/decision"];
    assert_eq!((d["error"].as_str(), d["retry_after_s"].as_u64()), (Some("rate_limited"), Some(60)));
    assert!(body["result"]["content"][0]["text"].as_str().unwrap().contains("(rule tools)"), "{body}");
}

#[test]
fn batches_notifications_and_non_rpc_bodies_keep_the_http_deny() {
    let a = authz(POLICY);
    for body in [
        // a batch
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_shell"}}]"#,
        // a notification (no id)
        r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"run_shell"}}"#,
        // an id that is neither a string nor a number
        r#"{"jsonrpc":"2.0","id":{"x":1},"method":"tools/call","params":{"name":"run_shell"}}"#,
        r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"run_shell"}}"#,
        // not JSON-RPC 2.0
        r#"{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"run_shell"}}"#,
        // unparseable
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call""#,
    ] {
        let (r, allowed) = call(&a, "bot", body);
        assert!(!allowed, "{body}");
        let (status, deny) = denied(&r);
        assert_eq!((status, deny["error"].as_str()), (403, Some("forbidden")), "{body}: {deny}");
        assert!(deny.get("jsonrpc").is_none());
    }
}

#[test]
fn mcp_responses_http_keeps_plain_denies() {
    let a = authz(&POLICY.replace("settings:\n", "settings:\n  mcp_responses: http\n"));
    let (r, _) = call(
        &a,
        "bot",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_shell","arguments":{}}}"#,
    );
    let (status, body) = denied(&r);
    assert_eq!((status, body["rule"].as_str()), (403, Some("no-shell")));
}
