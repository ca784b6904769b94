//! The `hallpass` binary: validate, check, and serve (exit codes, messages, endpoints).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_hallpass");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.yaml");

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hallpass-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn validate_accepts_the_example_policy() {
    let out = Command::new(BIN).args(["validate", EXAMPLE]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (20 rules)"));
}

#[test]
fn validate_rejects_with_file_line_and_rule() {
    let p = temp_file(
        "bad.yaml",
        "version: 1\nrules:\n  - id: ok\n    effect: allow\n  - id: broken\n    effect: deny\n    methods: [delete]\n",
    );
    let out = Command::new(BIN).args(["validate", p.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5", p.display())), "located: {err}");
    assert!(err.contains("rule `broken`") && err.contains("`delete`"), "{err}");
    let p = temp_file("typo.yaml", "version: 1\nrules:\n  - id: r1\n    effect: allow\n    method: [GET]\n");
    let out = Command::new(BIN).args(["validate", p.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":5:") && err.contains("unknown field `method`") && err.contains("rule `r1`"), "{err}");
    let out = Command::new(BIN).args(["validate", "/nonexistent/policy.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn check_explains_the_decision() {
    let out = Command::new(BIN)
        .args(["check", "--policy", EXAMPLE, "--method", "DELETE", "--host", "mail.example.com"])
        .args(["--path", "/v1/users/alice/messages/m1", "--agent", "triage-bot", "--on-behalf-of", "alice"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("decision: deny\nrule: no-deletes\n"), "{text}");
    assert!(text.contains("message: Agents may not delete data."), "{text}");
    assert!(text.contains("mail-read") && text.contains("not matched: `methods`"), "{text}");

    let out = Command::new(BIN)
        .args(["check", "--policy", EXAMPLE, "--method", "GET", "--host", "mail.example.com", "--json"])
        .args([
            "--path",
            "/v1/users/bob/messages/m1",
            "--header",
            "x-agent-id: triage-bot",
            "--header",
            "x-on-behalf-of: alice",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["rule"], "default");
    let read = v["rules"].as_array().unwrap().iter().find(|r| r["rule"] == "mail-read").unwrap();
    assert_eq!(read["part"], "captures");
    assert_eq!(v["unknown"], serde_json::Value::Null, "no rule decided on unknown");

    // `delete` over HTTP/2 is also DELETE (and not only): the deny rule decides on unknown,
    // and the report says so, in text and in JSON.
    let out = Command::new(BIN)
        .args(["check", "--policy", EXAMPLE, "--method", "delete", "--host", "mail.example.com"])
        .args(["--path", "/v1/users/alice/messages/m1", "--agent", "triage-bot"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rule: no-deletes\n"), "{text}");
    assert!(text.contains("unknown: methods"), "{text}");
    assert!(text.contains("decided: `methods` unknown"), "{text}");
    let out = Command::new(BIN)
        .args(["check", "--policy", EXAMPLE, "--method", "delete", "--host", "mail.example.com", "--json"])
        .args(["--path", "/v1/users/alice/messages/m1", "--agent", "triage-bot"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["rule"].as_str(), v["unknown"].as_str()), (Some("no-deletes"), Some("methods")));
}

#[test]
fn serve_refuses_an_invalid_policy() {
    let p = temp_file("invalid-serve.yaml", "version: 2\nrules: []\n");
    let start = Instant::now();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--policy",
            p.to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "a configuration error exits 64");
    assert!(start.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("version") && err.contains("refusing to start"), "{err}");
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, buf))
}

#[test]
fn serve_answers_checks_probes_and_metrics_then_stops_on_sigterm() {
    let mut served = common::Served::start(&["--policy", EXAMPLE]);
    let (grpc, admin) = (served.grpc, served.admin);
    let deadline = Instant::now() + Duration::from_secs(15);
    let ready = loop {
        if let Some((200, _)) = http_get(admin, "/readyz") {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ready, "serve did not become ready");
    assert_eq!(http_get(admin, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(admin, "/nope").unwrap().0, 404);

    // One gRPC Check through the real binary.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rule = rt.block_on(async {
        use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
        let mut c = AuthorizationClient::connect(format!("http://{grpc}")).await.unwrap();
        let req = hallpass::request::build::CheckRequestBuilder::new("DELETE", "/anything").build();
        let resp = c.check(req).await.unwrap().into_inner();
        resp.dynamic_metadata.unwrap().fields["rule"].clone()
    });
    assert!(format!("{rule:?}").contains("no-deletes"), "{rule:?}");

    let (status, metrics) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"hallpass_decisions_total{decision="deny",dry_run="false",rule="no-deletes"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("hallpass_policy_rules 20"), "{metrics}");

    served.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = served.child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = status.expect("serve exits after SIGTERM");
    let err = served.log();
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(err.contains("hallpass serving") && err.contains("shutting down"), "{err}");
}

fn wait_for_value(admin: SocketAddr, series: &str, at_least: f64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some((200, m)) = http_get(admin, "/metrics") {
            let v = m.lines().find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok());
            if v.is_some_and(|v| v >= at_least) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn wait_for_metric(admin: SocketAddr, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some((200, m)) = http_get(admin, "/metrics") {
            if m.contains(needle) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A SIGHUP the moment hallpass says it is serving reloads; it never ends the process (the
/// signal's default action, before hallpass takes it over).
#[test]
fn an_early_sighup_reloads_and_does_not_kill() {
    let policy = temp_file("early-hup.yaml", "version: 1\nrules:\n  - { id: a, effect: allow }\n");
    let mut served = common::Served::start(&["--policy", policy.to_str().unwrap(), "--reload-interval", "60m"]);
    served.signal("HUP");
    assert!(wait_for_metric(served.admin, "hallpass_policy_reloads_total{result=\"unchanged\"} 1"));
    assert!(served.child.try_wait().unwrap().is_none(), "still running");
}

#[test]
fn sighup_reloads_and_policy_endpoint_reports_the_revision() {
    let policy = temp_file("hup.yaml", "version: 1\nrules:\n  - { id: a, effect: allow }\n");
    let mut served = common::Served::start(&[
        "--policy",
        policy.to_str().unwrap(),
        "--reload-interval",
        "60m",
        "--drain-delay",
        "0s",
    ]);
    let admin = served.admin;
    assert!(wait_for_metric(admin, "hallpass_policy_rules 1"), "serving");
    let (_, body) = http_get(admin, "/policy").unwrap();
    let first: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let rev = first["revision"].as_str().unwrap().to_string();
    assert_eq!(rev.len(), 12);
    assert!(wait_for_metric(admin, &format!("hallpass_policy_info{{revision=\"{rev}\"}} 1")));

    // SIGHUP with an unchanged file: re-read, nothing to swap.
    served.signal("HUP");
    assert!(wait_for_metric(admin, "hallpass_policy_reloads_total{result=\"unchanged\"} 1"));

    // An invalid edit: reported, the old revision stays in force.
    std::fs::write(&policy, "version: 1\nrules:\n  - { id: b, effect: allow, methods: [get] }\n").unwrap();
    served.signal("HUP");
    assert!(wait_for_value(admin, "hallpass_policy_reloads_total{result=\"failure\"}", 1.0));
    let (_, body) = http_get(admin, "/policy").unwrap();
    let st: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(st["revision"], rev.as_str());
    assert!(st["last_reload_error"].as_str().unwrap().contains("rule `b`"), "{st}");

    // A valid edit: in force.
    std::fs::write(&policy, "version: 1\nrules:\n  - { id: a, effect: allow }\n  - { id: c, effect: deny }\n").unwrap();
    served.signal("HUP");
    assert!(wait_for_metric(admin, "hallpass_policy_rules 2"));
    let (_, body) = http_get(admin, "/policy").unwrap();
    let st: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_ne!(st["revision"], rev.as_str());
    assert!(st["last_reload_error"].is_null());

    served.signal("TERM");
    let status = served.child.wait().unwrap();
    let err = served.log();
    assert!(status.success(), "{err}");
    assert!(err.contains("policy reload failed") && err.contains("policy reloaded"), "{err}");
}
