//! Hostile inputs: oversized batches, deep nesting, long paths. None may crash the sidecar
//! or turn into an allow.
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
use hallpass::policy::eval::MAX_BATCH;
use hallpass::policy::Policy;
use hallpass::request::build::CheckRequestBuilder;
use hallpass::service::Authz;

const POLICY: &str = r#"
version: 1
identity:
  agent: [principal, { header: x-agent-id }]
rules:
  - id: no-shell
    effect: deny
    paths: ["/mcp"]
    mcp: { tools: [run_shell] }
  - id: mcp-ok
    effect: allow
    paths: ["/mcp"]
    mcp: { methods: [tools/list, tools/call] }
  - id: body-ok
    effect: allow
    paths: ["/doc"]
    body: { field: /a, exists: true }
  - id: anything
    effect: allow
    paths: ["/open/**"]
"#;

fn authz() -> Authz {
    Authz::from_policy(Policy::from_yaml(POLICY, "limits.yaml").unwrap())
}

fn decide(a: &Authz, b: CheckRequestBuilder) -> (bool, String) {
    let d = ready(a.decide(b.build(), jiff::Timestamp::now())).decision;
    (d.allowed(), d.rule.as_str().to_string())
}

fn batch(n: usize) -> String {
    let el = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    format!("[{}]", vec![el; n].join(","))
}

#[test]
fn batches_up_to_the_limit_are_decided_element_by_element() {
    let a = authz();
    let req =
        CheckRequestBuilder::new("POST", "/mcp").header("content-type", "application/json").body(batch(MAX_BATCH));
    assert_eq!(decide(&a, req), (true, "mcp-ok".into()));
}

#[test]
fn an_oversized_batch_is_unknown_not_allowed() {
    let a = authz();
    let req =
        CheckRequestBuilder::new("POST", "/mcp").header("content-type", "application/json").body(batch(MAX_BATCH + 1));
    assert_eq!(decide(&a, req), (false, "no-shell".into()));
}

#[test]
fn deeply_nested_json_is_unknown() {
    let a = authz();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let req = CheckRequestBuilder::new("POST", "/doc").header("content-type", "application/json").body(deep);
    assert_eq!(decide(&a, req), (false, "default".into()));
    let ok = CheckRequestBuilder::new("POST", "/doc").header("content-type", "application/json").body(r#"{"a":1}"#);
    assert_eq!(decide(&a, ok), (true, "body-ok".into()));
}

#[test]
fn long_and_strange_paths_do_not_crash() {
    let a = authz();
    let long = format!("/open/{}", "a/".repeat(50_000));
    assert_eq!(decide(&a, CheckRequestBuilder::new("GET", &long)), (true, "anything".into()));
    let dots = format!("/open/{}", "../".repeat(10_000));
    assert_eq!(decide(&a, CheckRequestBuilder::new("GET", &dots)), (false, "invalid_path".into()));
    for p in ["", "*", "open", "/open/%", "/open/%%41", "/open/\u{7f}", "/open/a%C0%AFb", "//////"] {
        let (allowed, rule) = decide(&a, CheckRequestBuilder::new("GET", p));
        assert!(!allowed || rule == "anything", "{p:?} -> {rule}");
    }
}

#[test]
fn huge_headers_and_query_do_not_crash() {
    let a = authz();
    let q = format!("/open/x?{}", "a=1&".repeat(20_000));
    let req = CheckRequestBuilder::new("GET", &q).header("x-agent-id", &"x,".repeat(10_000));
    // The policy's identity sources read x-agent-id: repeated parts are ambiguous.
    assert_eq!(decide(&a, req), (false, "invalid_identity".into()));
    // 20 000 query parameters: past what `qs` reads, unknown to query tests (none here).
    assert_eq!(decide(&a, CheckRequestBuilder::new("GET", &q)), (true, "anything".into()));
}

#[test]
fn hallpass_check_agrees_with_the_decision_on_a_300_element_batch() {
    // `explain` (what `hallpass check` prints) decides in the same loop as Check, so the
    // 256-element batch limit applies to it too: one decision, no per-element traces.
    let policy = Policy::from_yaml(POLICY, "limits.yaml").unwrap();
    let b = CheckRequestBuilder::new("POST", "/mcp").header("content-type", "application/json").body(batch(300));
    let req = hallpass::request::Request::from_check_request(b.clone().build()).unwrap();
    let now = jiff::Timestamp::now();
    let (explained, traces) = hallpass::policy::explain(&policy, &req, now);
    assert_eq!(explained, hallpass::policy::evaluate(&policy, &req, now));
    assert_eq!(decide(&authz(), b), (explained.allowed(), explained.rule.as_str().to_string()));
    assert!(!explained.allowed(), "an oversized batch is an unknown body");
    assert!(traces.iter().all(|t| t.element.is_none()), "not decided element by element");
}
