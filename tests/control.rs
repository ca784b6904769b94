//! The control API and `hallpass quarantine` against the whole server in-process on port 0
//! with the memory store: bearer tokens from the approvers file the policy names (edits in
//! force at once), 4xx with a JSON error and nothing changed on bad input, the CLI verbs,
//! a quarantine enforced on the Check path at once, and kept across a restart by `state.dir`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests may panic")]

use std::path::{Path, PathBuf};
use std::process::Command;

use envoy_types::ext_authz::v3::pb::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hallpass::request::build::CheckRequestBuilder;

mod common;

use common::{sha256_hex, InProcess as Server};

const TOKEN: &str = "control-test-token-1";

async fn start(dir: &Path) -> Server {
    Server::start(dir, None).await
}

/// The rule that decided a GET by `agent` (`allow` when allowed).
async fn rule(srv: &Server, agent: &str) -> String {
    {
        let mut c = AuthorizationClient::connect(format!("http://{}", srv.grpc)).await.unwrap();
        let resp = c.check(CheckRequestBuilder::new("GET", "/x").header("x-agent-id", agent).build()).await.unwrap();
        let resp = resp.into_inner();
        match (&resp.http_response, resp.dynamic_metadata.as_ref().and_then(|m| m.fields.get("rule"))) {
            (Some(HttpResponse::OkResponse(_)), _) => "allow".into(),
            (_, Some(v)) => match &v.kind {
                Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => s.clone(),
                _ => String::new(),
            },
            _ => String::new(),
        }
    }
}

fn setup() -> PathBuf {
    let dir = common::approvers_dir("control", TOKEN);
    std::fs::write(
        dir.join("policy.yaml"),
        "version: 1\nidentity:\n  agent: [{header: x-agent-id}]\nsettings:\n  control: { approvers_file: approvers.yaml }\nrules:\n  - { id: all, effect: allow }\n",
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_quarantines_with_approvers_and_refuses_bad_input() {
    let dir = setup();
    let srv = start(&dir).await;
    assert_eq!(rule(&srv, "bot-1").await, "allow");

    // -- authentication: no token, a wrong token: 401 with a JSON error, nothing done.
    let body = r#"{"agent":"bot-1","for":"1h","reason":"test"}"#;
    let (st, err) = srv.api("", "POST", "/v1/quarantine", Some(body)).await;
    assert_eq!(st, 401, "{err}");
    assert!(err["error"].as_str().unwrap().contains("Bearer"), "{err}");
    let (st, err) = srv.api("not-the-token", "POST", "/v1/quarantine", Some(body)).await;
    assert_eq!((st, err["error"].as_str()), (401, Some("unknown token")));
    assert_eq!(rule(&srv, "bot-1").await, "allow", "nothing changed");

    // -- bad input: 4xx, a JSON error, nothing changed.
    for (bad, what) in [
        (r#"{"agent":"bot-1","for":"1h""#, "EOF"),
        (r#"{"agent":"bot-1","for":"soon"}"#, "soon"),
        (r#"{"agent":"bot-1","for":"0s"}"#, "longer than 0"),
        (r#"{"agent":"","for":"1h"}"#, "agent"),
        (r#"{"agent":"bot-1","ttl":"1h"}"#, "ttl"),
        (r#"{"for":"1h"}"#, "agent"),
    ] {
        let (st, err) = srv.api(TOKEN, "POST", "/v1/quarantine", Some(bad)).await;
        assert_eq!(st, 400, "{bad}: {err}");
        assert!(err["error"].as_str().unwrap().contains(what), "{bad}: {err}");
    }
    let (st, err) = srv.api(TOKEN, "POST", "/v1/quarantine", Some(r#"{"agent":"bot-1","for":"99999999999d"}"#)).await;
    assert_eq!(st, 400, "a duration beyond the calendar is refused, not read as `until lifted`: {err}");
    let (st, err) = srv.api(TOKEN, "PUT", "/v1/quarantine", Some(body)).await;
    assert_eq!((st, err["error"].as_str().is_some()), (405, true), "{err}");
    let big = format!(r#"{{"agent":"bot-1","reason":"{}"}}"#, "x".repeat(100 * 1024));
    let (st, err) = srv.api(TOKEN, "POST", "/v1/quarantine", Some(&big)).await;
    assert_eq!((st, err["error"].as_str().is_some()), (413, true), "{err}");
    let (st, err) = srv.api(TOKEN, "DELETE", "/v1/quarantine/%FF", None).await;
    assert_eq!((st, err["error"].as_str().is_some()), (400, true), "{err}");
    let (st, list) = srv.api(TOKEN, "GET", "/v1/quarantine", None).await;
    assert_eq!((st, list["quarantined"].as_array().unwrap().len()), (200, 0), "{list}");
    let (st, err) = srv.api(TOKEN, "DELETE", "/v1/quarantine/nobody", None).await;
    assert_eq!(st, 404, "{err}");
    let (st, err) = srv.api(TOKEN, "GET", "/v1/nothing-here", None).await;
    assert_eq!((st, err["error"].as_str()), (404, Some("no such endpoint")));

    // -- a quarantine: in force on the Check path at once, recorded with the approver's name.
    let (st, q) = srv.api(TOKEN, "POST", "/v1/quarantine", Some(body)).await;
    assert_eq!(st, 201, "{q}");
    assert_eq!(
        (q["agent"].as_str(), q["by"].as_str(), q["reason"].as_str()),
        (Some("bot-1"), Some("ops"), Some("test"))
    );
    assert_eq!(rule(&srv, "bot-1").await, "quarantined");
    assert_eq!(rule(&srv, "bot-2").await, "allow");

    // -- the approvers file is read on every request: a token removed is refused at once.
    std::fs::write(dir.join("approvers.yaml"), format!("- name: other\n  token_sha256: {}\n", sha256_hex("t2")))
        .unwrap();
    assert_eq!(srv.api(TOKEN, "GET", "/v1/quarantine", None).await.0, 401);
    std::fs::write(dir.join("approvers.yaml"), format!("- name: ops\n  token_sha256: {}\n", sha256_hex(TOKEN)))
        .unwrap();

    // -- the CLI verbs against the same server.
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let server = format!("http://{}", srv.control);
    let token_path = token_file.clone();
    let cli = move |args: &[&str]| {
        let token_file = &token_path;
        let out = Command::new(env!("CARGO_BIN_EXE_hallpass"))
            .arg("quarantine")
            .args(args)
            .args(["--server", &server, "--token-file", token_file.to_str().unwrap()])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    let (code, out) = tokio::task::spawn_blocking({
        let cli = cli.clone();
        move || cli(&["add", "bot 3/x", "--for", "30m", "--reason", "cli"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = tokio::task::spawn_blocking({
        let cli = cli.clone();
        move || cli(&["list"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0));
    assert!(out.contains("\"bot 3/x\"") && out.contains("\"bot-1\""), "{out}");
    assert_eq!(rule(&srv, "bot 3/x").await, "quarantined");
    let (code, out) = tokio::task::spawn_blocking({
        let cli = cli.clone();
        move || cli(&["lift", "bot 3/x"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(rule(&srv, "bot 3/x").await, "allow");
    let (code, _) = tokio::task::spawn_blocking(move || cli(&["lift", "bot 3/x"])).await.unwrap();
    assert_eq!(code, Some(1), "lifting what is not quarantined fails (404)");

    // -- state.dir: the quarantine survives a restart of the whole server.
    srv.shutdown().await;
    let srv = start(&dir).await;
    assert_eq!(rule(&srv, "bot-1").await, "quarantined", "kept across a restart");
    let (st, _) = srv.api(TOKEN, "DELETE", "/v1/quarantine/bot-1", None).await;
    assert_eq!(st, 200);
    assert_eq!(rule(&srv, "bot-1").await, "allow");
    srv.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
