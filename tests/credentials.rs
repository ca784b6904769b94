//! Credential custody (agent-controls.md §6), static credentials from files, against the real
//! `hallpass serve` on port 0: on allow, Envoy is told to set the credential's header
//! (overwriting the agent's) and to remove `strip_headers`; a token file rewritten the way
//! Kubernetes updates a mounted Secret (a `..data` symlink swap) is in force within 1 s; a
//! missing or empty file denies with `credential_unavailable` (503) and recovers; a batch
//! allowed by rules with different credentials is denied; and the token is in no output
//! channel but Envoy's answer (records, logs, metrics, metadata, deny bodies, `/policy`,
//! `hallpass check`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests may panic")]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hallpass::request::build::CheckRequestBuilder;

const TOKEN_1: &str = "crm-token-FIRST-7f3a9c";
const TOKEN_2: &str = "crm-token-SECOND-b81e44";
const API_KEY: &str = "api-key-THIRD-0c5d2e";

/// Write `token` as Kubernetes does for a mounted Secret: a new timestamped directory, then
/// `..data` swapped to it by one rename; `token` is a symlink through `..data`.
fn k8s_write(dir: &Path, name: &str, token: &str, n: u32) {
    let ts = dir.join(format!("..2026_12_07_{n:04}"));
    std::fs::create_dir_all(&ts).unwrap();
    std::fs::write(ts.join(name), format!("{token}\n")).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(ts.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join(name);
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
    }
}

fn setup() -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("hallpass-credentials-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    k8s_write(&secrets, "crm-token", TOKEN_1, 1);
    std::fs::write(secrets.join("api-key"), API_KEY).unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            r#"version: 1
identity:
  agent: [{{header: x-agent-id}}]
credentials:
  crm: {{ file: {crm} }}
  api: {{ file: {api}, header: x-api-key, format: "{{token}}" }}
rules:
  - id: contacts
    effect: allow
    methods: [GET]
    paths: ["/contacts"]
    credential: crm
    strip_headers: [cookie, x-api-key]
  - id: search
    effect: allow
    methods: [GET]
    paths: ["/search"]
    credential: api
  - id: limited-search
    effect: allow
    methods: [GET]
    paths: ["/lsearch"]
    credential: api
    limits:
      - {{ per: [agent], rate: "1/m" }}
  - id: plain
    effect: allow
    methods: [GET]
    paths: ["/plain"]
  - id: mcp-crm
    effect: allow
    methods: [POST]
    paths: ["/mcp"]
    mcp: {{ tools: [crm_read] }}
    credential: crm
  - id: mcp-api
    effect: allow
    methods: [POST]
    paths: ["/mcp"]
    mcp: {{ tools: [api_search] }}
    credential: api
  - id: secret-denied
    effect: deny
    paths: ["/denied"]
    message: denied here
"#,
            crm = secrets.join("crm-token").display(),
            api = secrets.join("api-key").display(),
        ),
    )
    .unwrap();
    (dir, policy)
}

async fn check(grpc: std::net::SocketAddr, method: &str, path: &str, body: Option<&str>) -> CheckResponse {
    let mut c = AuthorizationClient::connect(format!("http://{grpc}")).await.unwrap();
    let mut b = CheckRequestBuilder::new(method, path)
        .header("x-agent-id", "bot")
        .header("authorization", "Bearer the-agents-own-token")
        .header("cookie", "session=agent");
    if let Some(body) = body {
        b = b.header("content-type", "application/json").body(body.as_bytes().to_vec());
    }
    c.check(b.build()).await.unwrap().into_inner()
}

/// Headers set by an allow: (name, value, overwriting?).
type Set = Vec<(String, String, bool)>;

/// The headers set and removed by an allow; `None` for a deny.
fn injected(r: &CheckResponse) -> Option<(Set, Vec<String>)> {
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => Some((
            ok.headers
                .iter()
                .filter_map(|h| h.header.as_ref().map(|v| (v.key.clone(), v.value.clone(), h.append_action == 2)))
                .filter(|(k, _, _)| k != "x-hallpass-decision-id")
                .collect(),
            ok.headers_to_remove.clone(),
        )),
        _ => None,
    }
}

fn denied(r: &CheckResponse) -> (i32, serde_json::Value) {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            (d.status.as_ref().map_or(0, |s| s.code), serde_json::from_str(&d.body).unwrap_or_default())
        }
        other => panic!("expected a deny, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_injected_rotated_and_never_shown() {
    let (dir, policy) = setup();
    let records = dir.join("decisions.jsonl");
    let mut srv = common::Served::start(&[
        "--policy",
        policy.to_str().unwrap(),
        "--decision-log",
        records.to_str().unwrap(),
        "--drain-delay",
        "0s",
        "--log-level",
        "debug",
    ]);

    // -- on allow: the credential's header set, overwriting the agent's; strip_headers removed.
    let r = check(srv.grpc, "GET", "/contacts", None).await;
    let (set, removed) = injected(&r).expect("allowed");
    assert_eq!(set, vec![("authorization".to_string(), format!("Bearer {TOKEN_1}"), true)], "overwrite, not append");
    // The rule's strip_headers and every other place an agent's own credential travels.
    let want = [
        "api-key",
        "cookie",
        "cookie2",
        "proxy-authorization",
        "x-access-token",
        "x-api-key",
        "x-apikey",
        "x-auth-token",
        "x-forwarded-authorization",
    ];
    assert_eq!(removed, want.map(String::from).to_vec());
    let r = check(srv.grpc, "GET", "/search", None).await;
    let (set, removed) = injected(&r).unwrap();
    assert_eq!(set, vec![("x-api-key".to_string(), API_KEY.to_string(), true)], "header and format");
    assert!(removed.contains(&"authorization".to_string()) && !removed.contains(&"x-api-key".to_string()));
    // The agent's own credential in the query would travel along: denied.
    for q in ["/contacts?access_token=agent", "/contacts?API_KEY=agent", "/search?key=agent"] {
        let (st, body) = denied(&check(srv.grpc, "GET", q, None).await);
        assert_eq!(st, 403, "{q}: {body}");
        assert!(body["message"].as_str().unwrap().contains("credential in its query"), "{q}");
    }
    assert!(injected(&check(srv.grpc, "GET", "/plain?access_token=x", None).await).is_some(), "not a credential rule");
    let r = check(srv.grpc, "GET", "/plain", None).await;
    assert_eq!(injected(&r).unwrap(), (vec![], vec![]), "a rule without a credential changes nothing");

    // -- a batch whose elements carry different credentials is denied; alike, injected.
    let call = |id: u32, tool: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#)
    };
    let mixed = format!("[{},{}]", call(1, "crm_read"), call(2, "api_search"));
    let (st, body) = denied(&check(srv.grpc, "POST", "/mcp", Some(&mixed)).await);
    assert_eq!(st, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("one by one"), "{body}");
    let alike = format!("[{},{}]", call(1, "crm_read"), call(2, "crm_read"));
    let r = check(srv.grpc, "POST", "/mcp", Some(&alike)).await;
    assert_eq!(injected(&r).unwrap().0[0].1, format!("Bearer {TOKEN_1}"));

    // -- the Secret rewritten as Kubernetes does: in force within 1 s.
    k8s_write(&dir.join("secrets"), "crm-token", TOKEN_2, 2);
    let t = Instant::now();
    loop {
        let r = check(srv.grpc, "GET", "/contacts", None).await;
        if injected(&r).unwrap().0[0].1 == format!("Bearer {TOKEN_2}") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(1), "the new token not in force after 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("rotated token in force after {:?}", t.elapsed());

    // -- no usable token: 503 credential_unavailable (never let through without it); back
    // when the file is.
    std::fs::write(dir.join("secrets").join("api-key"), "\n").unwrap();
    let t = Instant::now();
    let (st, body) = loop {
        let r = check(srv.grpc, "GET", "/search", None).await;
        if injected(&r).is_none() {
            break denied(&r);
        }
        assert!(t.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (st, body["rule"].as_str(), body["error"].as_str()),
        (503, Some("credential_unavailable"), Some("unavailable"))
    );
    // Denied before its limit is charged: the bucket (1 a minute) is still full afterwards.
    for _ in 0..3 {
        assert_eq!(denied(&check(srv.grpc, "GET", "/lsearch", None).await).0, 503);
    }
    std::fs::write(dir.join("secrets").join("api-key"), API_KEY).unwrap();
    let t = Instant::now();
    while injected(&check(srv.grpc, "GET", "/search", None).await).is_none() {
        assert!(t.elapsed() < Duration::from_secs(2), "recovers when the file is back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(injected(&check(srv.grpc, "GET", "/lsearch", None).await).is_some(), "no budget spent by the 503s");
    assert_eq!(denied(&check(srv.grpc, "GET", "/lsearch", None).await).0, 429);
    let (st, _) = denied(&check(srv.grpc, "GET", "/denied", None).await);
    assert_eq!(st, 403);
    // A single MCP call whose credential has no token is answered in JSON-RPC (§8).
    k8s_write(&dir.join("secrets"), "crm-token", "", 3);
    let t = Instant::now();
    let (st, body) = loop {
        let r = check(srv.grpc, "POST", "/mcp", Some(&call(9, "crm_read"))).await;
        if injected(&r).is_none() {
            break denied(&r);
        }
        assert!(t.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["result"]["isError"], true, "{body}");
    assert_eq!(body["result"]["_meta"]["dev.hallpass/decision"]["rule"], "credential_unavailable", "{body}");
    k8s_write(&dir.join("secrets"), "crm-token", TOKEN_2, 4);
    let t = Instant::now();
    while injected(&check(srv.grpc, "GET", "/contacts", None).await).is_none() {
        assert!(t.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // -- no secret in any output channel but the answer to Envoy.
    let metrics = common::http_get(srv.admin, "/metrics");
    let policy_status = common::http_get(srv.admin, "/policy");
    let meta = {
        let r = check(srv.grpc, "GET", "/contacts", None).await;
        format!("{:?}", r.dynamic_metadata)
    };
    let deny = format!("{:?}", check(srv.grpc, "GET", "/denied", None).await);
    let check_out = std::process::Command::new(env!("CARGO_BIN_EXE_hallpass"))
        .args(["check", "--policy"])
        .arg(&policy)
        .args(["--method", "GET", "--path", "/contacts", "--agent", "bot", "--json"])
        .output()
        .unwrap();
    let check_out =
        format!("{}{}", String::from_utf8_lossy(&check_out.stdout), String::from_utf8_lossy(&check_out.stderr));
    assert!(check_out.contains("contacts"), "{check_out}");
    // `check` says which credential an allow injects and what it removes (never a token).
    let report: serde_json::Value = serde_json::from_str(check_out.lines().next().unwrap()).unwrap();
    assert_eq!(report["credential"], serde_json::json!({"name": "crm", "header": "authorization", "route": null}));
    let removes = report["removes"].as_array().unwrap();
    for h in ["cookie", "x-api-key", "proxy-authorization"] {
        assert!(removes.contains(&serde_json::json!(h)), "{h}: {report}");
    }
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_hallpass"))
        .args(["check", "--policy"])
        .arg(&policy)
        .args(["--method", "GET", "--path", "/search", "--agent", "bot"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("credential: api (sets `x-api-key`, overwriting the agent's)"), "{text}");
    srv.signal("TERM");
    let _ = srv.child.wait();
    let logs = srv.log();
    let recs = std::fs::read_to_string(&records).unwrap();
    assert!(recs.contains("\"credential\":\"crm\""), "records name the credential: {recs}");
    assert!(
        recs.lines().any(|l| l.contains("\"rule\":\"credential_unavailable\"") && l.contains("\"credential\":\"api\"")),
        "a 503's record names the credential that had no token"
    );
    for (channel, text) in [
        ("decision records", recs.as_str()),
        ("logs", logs.as_str()),
        ("metrics", metrics.as_str()),
        ("/policy", policy_status.as_str()),
        ("metadata", meta.as_str()),
        ("deny bodies", deny.as_str()),
        ("hallpass check", check_out.as_str()),
    ] {
        for secret in [TOKEN_1, TOKEN_2, API_KEY] {
            assert!(!text.contains(secret), "{channel} shows a secret");
        }
    }
}
