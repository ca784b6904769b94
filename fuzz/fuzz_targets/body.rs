//! The body parser: `Body::new(..).parsed()`, `parse_json`, `parse_form`, and a small policy
//! with `body` and `mcp` conditions deciding a request carrying the same bytes.
//!
//! The first byte chooses the content type (JSON / form / JSON in UTF-7 / none, low 2 bits),
//! whether Envoy said the body was truncated (bits 2-4 all set) and whether it came with a
//! content-encoding (bits 5-7 all set); the rest is the body.
#![no_main]

use std::sync::LazyLock;

use hallpass::policy::Policy;
use hallpass::request::body::{parse_form, parse_json, Body, Parsed};
use hallpass::request::build::CheckRequestBuilder;
use hallpass::service::Authz;
use libfuzzer_sys::fuzz_target;

const POLICY: &str = r#"
version: 1
rules:
  - id: mcp-no-shell
    effect: deny
    paths: ["/mcp"]
    mcp: { tools: [run_shell] }
  - id: mcp-no-traversal
    effect: deny
    paths: ["/mcp"]
    mcp:
      tools: [read_file]
      arguments: { field: /path, contains: ".." }
  - id: mcp-search
    effect: allow
    paths: ["/mcp"]
    mcp:
      tools: [search, read_file]
      arguments:
        all:
          - { field: /query, max_len: 64 }
          - { field: /limit, lte: 50 }
  - id: mcp-session
    effect: allow
    paths: ["/mcp"]
    mcp: { methods: [initialize, tools/list, ping] }
  - id: pay-big
    effect: deny
    paths: ["/pay"]
    body: { field: /amount, gt: 1000 }
  - id: pay
    effect: allow
    paths: ["/pay"]
    body:
      any:
        - { field: /to, matches: "[a-z]+@example\\.com" }
        - { field: /to, each: { suffix: "@example.com" } }
        - { field: /user, in: [alice, bob] }
"#;

static AUTHZ: LazyLock<Authz> =
    LazyLock::new(|| Authz::from_policy(Policy::from_yaml(POLICY, "body.yaml").expect("the body policy loads")));

const CONTENT_TYPES: [Option<&str>; 4] = [
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    Some("application/json; charset=utf-7"),
    None,
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let content_type = CONTENT_TYPES[usize::from(sel & 3)];
    let truncated = sel & 0b0001_1100 == 0b0001_1100;
    let encoding = (sel & 0b1110_0000 == 0b1110_0000).then_some("gzip");

    let body = Body::new(bytes.to_vec(), content_type, encoding, truncated);
    let parsed = body.parsed();
    let json = parse_json(bytes);
    let form = parse_form(bytes);

    // What the Body reads agrees with the parsers it uses.
    match parsed {
        Parsed::Json(v) => assert_eq!(Some(v), json.as_ref()),
        Parsed::Form(v) => assert_eq!(Some(v), form.as_ref().ok()),
        Parsed::Unknown(_) => {}
    }
    if sel & 3 == 0 && !truncated && encoding.is_none() && !bytes.is_empty() {
        assert_eq!(matches!(parsed, Parsed::Json(_)), json.is_some());
    }
    // The strict parser accepts what it produced, written out again.
    if let Some(v) = &json {
        let text = serde_json::to_vec(v).expect("a Value serializes");
        assert!(parse_json(&text).is_some(), "strict JSON refuses its own output: {text:?}");
    }

    // The same bytes as the body of a request a policy with body and mcp conditions decides.
    let now = jiff::Timestamp::now();
    for path in ["/mcp", "/pay"] {
        let mut b = CheckRequestBuilder::new("POST", path).body(bytes.to_vec());
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        if let Some(e) = encoding {
            b = b.header("content-encoding", e);
        }
        if truncated {
            b = b.header("x-envoy-auth-partial-body", "true");
        }
        let d = ready(AUTHZ.decide(b.build(), now)).decision;
        // Only a body hallpass read with certainty may be allowed.
        if d.allowed() {
            let read = Body::new(bytes.to_vec(), content_type, encoding, truncated);
            assert!(!matches!(read.parsed(), Parsed::Unknown(_)), "allowed on an unknown body: {d:?}");
        }
    }
});

/// Run a Check on the in-memory state store (it never waits).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    hallpass::check::ready_now(f).expect("the in-memory pipeline never waits")
}
