//! Input capture and `hallpass replay` (agent-controls.md §9) with the real `hallpass serve`
//! (port 0) and the real binary: inputs are written as `hallpass.input/v1` with masked body
//! values and header values only for headers the policy reads; replayed against the same
//! policy every decision is reproduced; against a changed one the report names exactly the
//! decisions that change (checked case by case), reading a masked value or an unrecorded
//! header is indeterminate, and `--fail-on` gates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests may panic")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hallpass::request::build::CheckRequestBuilder;
use serde_json::Value;

const POLICY: &str = r#"version: 1
identity:
  agent: [{header: x-agent-id}]
rules:
  - id: no-basic-auth
    effect: deny
    headers: { authorization: { prefix: "Basic " } }
  - id: no-deletes
    effect: deny
    methods: [DELETE]
  - id: admin-only
    effect: deny
    paths: ["/admin/**"]
  - id: mail-send
    effect: allow
    methods: [POST]
    paths: ["/send"]
    body: { field: /to, max_len: 3 }
  - id: mcp-tools
    effect: allow
    methods: [POST]
    paths: ["/mcp"]
    mcp: { tools: [search] }
  - id: read
    effect: allow
    methods: [GET]
    paths: ["/items/**"]
"#;

/// A request sent: name, method, path, extra headers, body.
type Sent = (&'static str, &'static str, &'static str, Vec<(&'static str, &'static str)>, Option<&'static str>);

/// The requests sent.
fn requests() -> Vec<Sent> {
    vec![
        ("read", "GET", "/items/1", vec![], None),
        ("delete", "DELETE", "/items/1", vec![], None),
        ("send", "POST", "/send", vec![], Some(r#"{"to":["a@example.com"],"PassWord":"hunter2-SECRET"}"#)),
        (
            "mcp",
            "POST",
            "/mcp",
            vec![],
            Some(
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"x","api_key":"k-SECRET-123"}}}"#,
            ),
        ),
        ("admin", "GET", "/admin/x", vec![], None),
        ("unread-header", "GET", "/items/2", vec![("x-unread", "header-SECRET-99")], None),
        ("other", "GET", "/other", vec![], None),
        (
            "token",
            "GET",
            "/items/3?q=1&Access_Token=qtok-SECRET-5;api_key[]=semi-SECRET-9",
            vec![("authorization", "Bearer atok-SECRET-6")],
            None,
        ),
        // A duplicate key: hallpass cannot read it (denied); masking would collapse it.
        (
            "dup",
            "POST",
            "/send",
            vec![],
            Some(r#"{"to":["a@example.com"],"to":["b@evil.io"],"password":"dup-SECRET-7"}"#),
        ),
    ]
}

fn hallpass(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hallpass")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

/// Serve POLICY with input capture, send every request, stop: (dir, inputs file, decision ids by name).
async fn capture() -> (PathBuf, PathBuf, Vec<(String, String)>) {
    let dir = std::env::temp_dir().join(format!("hallpass-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    std::fs::write(
        dir.join("hallpass.yaml"),
        format!(
            "policy: policy.yaml\ndecision_log:\n  sink: {}\n  inputs: full\n  inputs_path: inputs.jsonl\n  mask: [/password, /params/arguments/api_key]\n",
            dir.join("decisions.jsonl").display()
        ),
    )
    .unwrap();
    let mut srv =
        common::Served::start(&["--config", dir.join("hallpass.yaml").to_str().unwrap(), "--drain-delay", "0s"]);
    let mut c = AuthorizationClient::connect(format!("http://{}", srv.grpc)).await.unwrap();
    let mut ids = Vec::new();
    for (name, method, path, headers, body) in requests() {
        let mut b = CheckRequestBuilder::new(method, path).host("api.example.com").header("x-agent-id", "bot");
        for (k, v) in headers {
            b = b.header(k, v);
        }
        if let Some(body) = body {
            b = b.header("content-type", "application/json").body(body.as_bytes().to_vec());
        }
        let r = c.check(b.build()).await.unwrap().into_inner();
        let id = r.dynamic_metadata.as_ref().unwrap().fields["decision_id"].kind.clone();
        let Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(id)) = id else { panic!() };
        ids.push((name.to_string(), id));
    }
    srv.signal("TERM");
    let _ = srv.child.wait();
    (dir.clone(), dir.join("inputs.jsonl"), ids)
}

fn replay(policy: &Path, inputs: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["replay", "--policy", policy.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    args.push(inputs.to_str().unwrap());
    let (code, out) = hallpass(&args);
    (code, serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")))
}

/// The ids of the examples of one change.
fn changed(report: &Value, change: &str) -> Vec<String> {
    report["examples"][change]
        .as_array()
        .map_or(vec![], |a| a.iter().map(|e| e["decision_id"].as_str().unwrap().to_string()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_inputs_replay_exactly_and_changes_are_reported() {
    let (dir, inputs, ids) = capture().await;
    let id = |n: &str| ids.iter().find(|(k, _)| k == n).unwrap().1.clone();
    let text = std::fs::read_to_string(&inputs).unwrap();
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 9, "{text}");

    // -- what an input keeps: the schema, masked values, header values only where read.
    for s in [
        "hunter2-SECRET",
        "semi-SECRET-9",
        "k-SECRET-123",
        "header-SECRET-99",
        "qtok-SECRET-5",
        "atok-SECRET-6",
        "dup-SECRET-7",
    ] {
        assert!(!text.contains(s), "{s} captured");
    }
    let send = records.iter().find(|r| r["decision_id"] == id("send").as_str()).unwrap();
    assert_eq!(send["schema"], "hallpass.input/v1");
    assert_eq!(send["decision"], serde_json::json!({"decision": "allow", "rule": "mail-send", "dry_run": false}));
    assert_eq!(send["request"]["masked"], serde_json::json!(["/password"]));
    let body: Value = serde_json::from_str(send["request"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"to": ["a@example.com"], "PassWord": "hallpass:masked"}),
        "`/password` masks every spelling an upstream may bind to it"
    );
    let mcp = records.iter().find(|r| r["decision_id"] == id("mcp").as_str()).unwrap();
    assert_eq!(mcp["request"]["masked"], serde_json::json!(["/params/arguments/api_key"]));
    let unread = records.iter().find(|r| r["decision_id"] == id("unread-header").as_str()).unwrap();
    assert!(unread["request"]["header_names"].as_array().unwrap().contains(&Value::from("x-unread")));
    assert!(unread["request"]["headers"].get("x-unread").is_none(), "a header the policy does not read: name only");
    assert_eq!(unread["request"]["headers"]["x-agent-id"], "bot", "identity headers are kept");
    // Credentials never: not the value of `authorization` (though the policy reads it), not
    // a credential query parameter's.
    let token = records.iter().find(|r| r["decision_id"] == id("token").as_str()).unwrap();
    assert!(token["request"]["headers"].get("authorization").is_none(), "{token}");
    assert_eq!(token["request"]["path"], "/items/3?q=1&Access_Token=hallpass:masked;api_key[]=hallpass:masked");
    assert_eq!(token["request"]["masked"], serde_json::json!(["?access_token", "?api_key"]));
    let dup = records.iter().find(|r| r["decision_id"] == id("dup").as_str()).unwrap();
    assert_eq!((dup["request"]["body_omitted"].as_bool(), dup["request"].get("body")), (Some(true), None), "{dup}");
    assert_eq!(dup["decision"]["decision"], "deny");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&inputs).unwrap().permissions().mode() & 0o777, 0o600, "inputs are hallpass's alone");
    // Every record joins its decision record.
    let decisions = std::fs::read_to_string(dir.join("decisions.jsonl")).unwrap();
    for (_, i) in &ids {
        assert!(decisions.contains(i.as_str()));
    }
    // The input schema validates them (docs/input.schema.json).
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/input.schema.json")).unwrap(),
    )
    .unwrap();
    for r in &records {
        for k in schema["required"].as_array().unwrap() {
            assert!(r.get(k.as_str().unwrap()).is_some(), "{k} missing in {r}");
        }
    }

    // -- against the same policy: every decision reproduced; the one whose `authorization`
    // (read by no-basic-auth) was not recorded is indeterminate, never guessed.
    let (code, report) = replay(&dir.join("policy.yaml"), &inputs, &["--fail-on", "any"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!((report["total"].as_u64(), report["counts"]["unchanged"].as_u64()), (Some(9), Some(7)), "{report}");
    let mut ind = changed(&report, "indeterminate");
    ind.sort();
    let mut want = vec![id("token"), id("dup")];
    want.sort();
    assert_eq!(ind, want, "the omitted body is read by mail-send: {report}");
    // A gate that replayed nothing fails (exit 2), never passes silently.
    let (code, out) = hallpass(&[
        "replay",
        "--policy",
        dir.join("policy.yaml").to_str().unwrap(),
        "--fail-on",
        "any",
        "--revision",
        "000000000000",
        inputs.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no input was replayed"), "{out}");

    // -- a changed policy: deletes of items allowed (deny→allow), /items/2 denied
    // (allow→deny), a deny that reads the masked password (indeterminate for `send` only),
    // a rule that reads the unrecorded header (indeterminate for `unread-header` only).
    let candidate = dir.join("candidate.yaml");
    std::fs::write(
        &candidate,
        POLICY
            .replace("  - id: no-deletes\n    effect: deny\n    methods: [DELETE]\n", "  - id: delete-items\n    effect: allow\n    methods: [DELETE]\n    paths: [\"/items/**\"]\n")
            .replace(
                "  - id: admin-only\n",
                "  - id: no-item-2\n    effect: deny\n    paths: [\"/items/2\"]\n  - id: weak-passwords\n    effect: deny\n    paths: [\"/send\"]\n    body: { field: /password, max_len: 3 }\n  - id: tenant\n    effect: deny\n    paths: [\"/items/2\"]\n    headers: { x-unread: { equals: nope } }\n  - id: admin-only\n",
            ),
    )
    .unwrap();
    let (code, report) = replay(&candidate, &inputs, &["--fail-on", "deny-to-allow"]);
    assert_eq!(code, 1, "a change that opens something fails the gate: {report}");
    assert_eq!(changed(&report, "deny_to_allow"), vec![id("delete")], "{report}");
    assert_eq!(
        changed(&report, "allow_to_deny"),
        Vec::<String>::new(),
        "no-item-2 is decided on the unrecorded header first: {report}"
    );
    let mut indeterminate = changed(&report, "indeterminate");
    indeterminate.sort();
    let mut want = vec![id("send"), id("unread-header"), id("token"), id("dup")];
    want.sort();
    assert_eq!(indeterminate, want, "{report}");
    assert_eq!(report["counts"]["unchanged"].as_u64(), Some(4), "read, mcp, admin, other: {report}");
    assert_eq!(report["by_rule"]["no-deletes → delete-items"]["deny_to_allow"], 1, "{report}");
    // Indeterminate is not a way around the gate: two indeterminate inputs (unread-header,
    // and send, whose `PassWord` a deny reads case-folded: unknown) are denied by the
    // candidate where they were allowed — counted, and they fail `allow-to-deny`.
    assert_eq!(
        (report["indeterminate_closes"].as_u64(), report["indeterminate_opens"].as_u64()),
        (Some(2), Some(0)),
        "{}",
        report["examples"]["indeterminate"]
    );
    let (code, _) = replay(&candidate, &inputs, &["--fail-on", "allow-to-deny"]);
    assert_eq!(code, 1, "an indeterminate input the candidate closes fails the allow-to-deny gate");
    let why = report["examples"]["indeterminate"].to_string();
    assert!(why.contains("reads `/password`, which was masked") && why.contains("`x-unread`"), "{why}");

    // -- a change that only closes: `--fail-on deny-to-allow` passes, `allow-to-deny` fails.
    let closing = dir.join("closing.yaml");
    std::fs::write(
        &closing,
        POLICY.replace(
            "  - id: admin-only\n",
            "  - id: no-item-2\n    effect: deny\n    paths: [\"/items/2\"]\n  - id: admin-only\n",
        ),
    )
    .unwrap();
    let (code, report) = replay(&closing, &inputs, &["--fail-on", "deny-to-allow"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(changed(&report, "allow_to_deny"), vec![id("unread-header")], "{report}");
    assert_eq!(report["counts"]["unchanged"].as_u64(), Some(6));
    assert_eq!(report["counts"]["indeterminate"].as_u64(), Some(2));
    assert_eq!(replay(&closing, &inputs, &["--fail-on", "allow-to-deny"]).0, 1);
    // A candidate whose identity reads a JWT claim the recording policy did not: every
    // input indeterminate (the claim was not kept), never decided as if absent.
    let jwt = dir.join("jwt.yaml");
    std::fs::write(
        &jwt,
        POLICY.replace("  agent: [{header: x-agent-id}]", "  agent: [{jwt: {provider: idp, claim: sub}}]"),
    )
    .unwrap();
    let (_, report) = replay(&jwt, &inputs, &[]);
    assert_eq!(report["counts"]["indeterminate"].as_u64(), Some(9), "{report}");
    assert!(report["examples"]["indeterminate"]
        .to_string()
        .contains("reads JWT claim `idp/sub`, which was not recorded"));
    // The text report names the counts and the example.
    let (code, text) = hallpass(&["replay", "--policy", closing.to_str().unwrap(), inputs.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        text.contains("9 inputs replayed") && text.contains("allow_to_deny  1") && text.contains("read → no-item-2"),
        "{text}"
    );
}
