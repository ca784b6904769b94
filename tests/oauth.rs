//! OAuth2 credential custody (agent-controls.md §6) against a real OAuth 2.0 server (the npm
//! `oidc-provider`, tests/oauth/server.mjs) and the real `hallpass serve` on port 0:
//! - `client_credentials`: the token is obtained before serving and injected; 200 concurrent
//!   Checks at its expiry wait for one token request (counted at the server); the server down
//!   → the token in force is used until it expires, then 503 `credential_unavailable`; back up
//!   → recovered; the server's tokens, the client secret appear in no output channel.
//! - `refresh_token`: each refresh rotates the refresh token and hallpass uses the new one
//!   (reusing a spent one is refused by the server and would revoke the grant).
//! - https with a private CA (`ca_file`); without it the endpoint is not trusted: no token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests may panic")]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::OAuthServer;
use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hallpass::request::build::CheckRequestBuilder;

const CC_SECRET: &str = "cc-secret-3b9f1d77e0";
const RT_SECRET: &str = "rt-secret-a04c5e2b19";

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hallpass-oauth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn client(grpc: std::net::SocketAddr) -> AuthorizationClient<tonic::transport::Channel> {
    AuthorizationClient::connect(format!("http://{grpc}")).await.unwrap()
}

async fn check(c: &mut AuthorizationClient<tonic::transport::Channel>, path: &str) -> CheckResponse {
    let req = CheckRequestBuilder::new("GET", path)
        .header("x-agent-id", "bot")
        .header("authorization", "Bearer the-agents-own-token")
        .build();
    c.check(req).await.unwrap().into_inner()
}

/// A Check whose agent sends no credential of its own.
async fn check_bare(c: &mut AuthorizationClient<tonic::transport::Channel>, path: &str) -> CheckResponse {
    c.check(CheckRequestBuilder::new("GET", path).header("x-agent-id", "bot").build()).await.unwrap().into_inner()
}

/// The `authorization` hallpass sets on an allow; `Err((status, body))` for a deny.
fn outcome(r: &CheckResponse) -> Result<String, (i32, serde_json::Value)> {
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => Ok(ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "authorization")
            .map(|h| h.value.clone())
            .unwrap_or_default()),
        Some(HttpResponse::DeniedResponse(d)) => {
            Err((d.status.as_ref().map_or(0, |s| s.code), serde_json::from_str(&d.body).unwrap_or_default()))
        }
        other => panic!("no answer: {other:?}"),
    }
}

fn bearer(v: &str) -> &str {
    v.strip_prefix("Bearer ").unwrap_or_else(|| panic!("not a bearer: {v:?}"))
}

fn policy(dir: &Path, credentials: &str) -> PathBuf {
    let p = dir.join("policy.yaml");
    std::fs::write(
        &p,
        format!(
            r#"version: 1
identity:
  agent: [{{header: x-agent-id}}]
credentials:
{credentials}
rules:
  - id: contacts
    effect: allow
    methods: [GET]
    paths: ["/contacts"]
    credential: crm
  - id: mail
    effect: allow
    methods: [GET]
    paths: ["/mail"]
    credential: mail
  - id: untrusted
    effect: allow
    methods: [GET]
    paths: ["/untrusted"]
    credential: untrusted
  - id: nope
    effect: deny
    paths: ["/denied"]
"#
        ),
    )
    .unwrap();
    p
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_tokens_are_requested_once_renewed_at_expiry_and_never_shown() {
    let d = dir("cc");
    std::fs::write(d.join("cc-secret"), format!("{CC_SECRET}\n")).unwrap();
    let Some(mut idp) = OAuthServer::start(&[("CC_SECRET", CC_SECRET), ("TTL", "3")]) else { return };
    let policy = policy(
        &d,
        &format!(
            "  crm:\n    oauth2:\n      token_url: {}/token\n      grant: client_credentials\n      client_id: crm-gateway\n      client_secret_file: {}\n      scopes: [crm.read]\n      refresh_before: 0s\n  mail: {{ file: /nonexistent/mail }}\n  untrusted: {{ file: /nonexistent/untrusted }}",
            idp.issuer,
            d.join("cc-secret").display()
        ),
    );
    let records = d.join("decisions.jsonl");
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
    let mut c = client(srv.grpc).await;
    let mut seen = Vec::new();

    // -- obtained before serving (a first Check waits for it): the server vouches for it.
    let first = outcome(&check(&mut c, "/contacts").await).expect("allowed");
    // The token was requested before this: it expires less than 3 s from now.
    let started = Instant::now();
    assert_eq!(idp.stats().await["token_requests"], 1, "one token request");
    let t1 = bearer(&first).to_string();
    let about = idp.introspect("crm-gateway", CC_SECRET, &t1).await;
    assert_eq!((about["active"].as_bool(), about["client_id"].as_str()), (Some(true), Some("crm-gateway")), "{about}");
    assert_eq!(about["scope"], "crm.read");
    for _ in 0..50 {
        assert_eq!(outcome(&check(&mut c, "/contacts").await).unwrap(), first, "no request while valid");
    }
    assert_eq!(outcome(&check_bare(&mut c, "/contacts").await).unwrap(), first, "also when the agent sends none");
    assert_eq!(idp.stats().await["token_requests"], 1);
    seen.push(t1.clone());

    // -- at expiry (refresh_before 0s: not renewed ahead), the server slowed down (60 ms): 200
    // concurrent Checks share one token request (those that come while it is in flight wait
    // for it) and all get its token.
    idp.delay(60).await;
    tokio::time::sleep(Duration::from_millis(3100).saturating_sub(started.elapsed())).await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move { outcome(&check(&mut c, "/contacts").await) }));
    }
    let mut got = std::collections::BTreeMap::new();
    for t in tasks {
        let o = t.await.unwrap().unwrap_or_else(|e| panic!("a Check at expiry was denied: {e:?}"));
        *got.entry(o).or_insert(0) += 1;
    }
    assert_eq!(got.len(), 1, "every Check got the one new token: {got:?}");
    let t2 = bearer(got.keys().next().unwrap()).to_string();
    assert_ne!(t2, t1, "a new token");
    let stats = idp.stats().await;
    assert_eq!(stats["token_requests"], 2, "exactly one token request for 200 Checks at expiry: {stats}");
    assert_eq!(stats["by_grant"]["client_credentials:ok"], 2, "{stats}");
    seen.push(t2.clone());
    idp.delay(0).await;

    // -- the server down: the token in force is used until it expires (no 503 before),
    // then 503 credential_unavailable; the server back: recovered.
    idp.stop();
    let down = Instant::now();
    let (st, body) = loop {
        match outcome(&check(&mut c, "/contacts").await) {
            Ok(v) => assert_eq!(bearer(&v), t2, "the token in force while the server is down"),
            Err(e) => break e,
        }
        assert!(down.elapsed() < Duration::from_secs(5), "not unavailable after the token expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(down.elapsed() >= Duration::from_millis(1500), "denied at {:?}, before the token expired", down.elapsed());
    assert_eq!((st, body["rule"].as_str()), (503, Some("credential_unavailable")), "{body}");
    // During the backoff a Check does not wait.
    let t = Instant::now();
    let _ = check(&mut c, "/contacts").await;
    assert!(t.elapsed() < Duration::from_millis(500), "a Check waited {:?} with the server down", t.elapsed());
    idp.restart();
    let back = Instant::now();
    let t3 = loop {
        if let Ok(v) = outcome(&check(&mut c, "/contacts").await) {
            break bearer(&v).to_string();
        }
        assert!(back.elapsed() < Duration::from_secs(8), "not recovered 8 s after the server returned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("recovered {:?} after the server returned", back.elapsed());
    assert_eq!(idp.introspect("crm-gateway", CC_SECRET, &t3).await["active"], true);
    seen.push(t3);

    let metrics = common::http_get(srv.admin, "/metrics");
    assert!(
        metric(&metrics, r#"hallpass_credential_token_requests_total{credential="crm",result="ok"}"#) >= 3,
        "{metrics}"
    );
    assert!(metric(&metrics, r#"hallpass_credential_token_requests_total{credential="crm",result="error"}"#) >= 1);

    // -- no secret in any output channel: records, logs (debug), metrics, /policy, the deny
    // bodies, `hallpass check --json`.
    let denied = format!("{:?}", check(&mut c, "/denied").await);
    let metadata = format!("{:?}", check(&mut c, "/contacts").await.dynamic_metadata);
    assert!(metadata.contains("decision_id"), "{metadata}");
    let policy_status = common::http_get(srv.admin, "/policy");
    let check_out = std::process::Command::new(env!("CARGO_BIN_EXE_hallpass"))
        .args(["check", "--policy", policy.to_str().unwrap(), "--json", "--method", "GET", "--path", "/contacts"])
        .output()
        .unwrap();
    assert!(check_out.status.success(), "{}", String::from_utf8_lossy(&check_out.stderr));
    srv.signal("TERM");
    let _ = srv.child.wait();
    let log = srv.log();
    assert!(log.contains("OAuth2 token request failed"), "the failure is logged");
    let recorded = std::fs::read_to_string(&records).unwrap();
    assert!(recorded.contains(r#""credential":"crm""#), "records name the credential");
    let channels = [
        ("records", recorded),
        ("log", log),
        ("metrics", metrics),
        ("/policy", policy_status),
        ("check", String::from_utf8_lossy(&check_out.stdout).into_owned()),
        ("a deny", denied),
        ("an allow's metadata", metadata),
    ];
    for (what, text) in &channels {
        for s in seen.iter().map(String::as_str).chain([CC_SECRET]) {
            assert!(!text.contains(s), "a secret in {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_and_the_rotated_one_is_used() {
    let d = dir("rt");
    std::fs::write(d.join("rt-secret"), format!("{RT_SECRET}\n")).unwrap();
    let rt_file = d.join("refresh-token");
    let Some(idp) =
        OAuthServer::start(&[("RT_SECRET", RT_SECRET), ("RT_FILE", rt_file.to_str().unwrap()), ("TTL", "2")])
    else {
        return;
    };
    let seeded = std::fs::read_to_string(&rt_file).unwrap().trim().to_string();
    let policy = policy(
        &d,
        &format!(
            "  mail:\n    oauth2:\n      token_url: {}/token\n      grant: refresh_token\n      refresh_token_file: {}\n      client_id: mail-gateway\n      client_secret_file: {}\n      client_auth: post\n      refresh_before: 1s\n  crm: {{ file: /nonexistent/crm }}\n  untrusted: {{ file: /nonexistent/untrusted }}",
            idp.issuer,
            rt_file.display(),
            d.join("rt-secret").display()
        ),
    );
    let mut srv =
        common::Served::start(&["--policy", policy.to_str().unwrap(), "--drain-delay", "0s", "--log-level", "debug"]);
    let mut c = client(srv.grpc).await;
    // Tokens live 2 s and are renewed 1 s ahead: over 5 s, several refreshes, each rotating
    // the refresh token; every Check allowed meanwhile (renewed ahead, nobody waits).
    let t = Instant::now();
    let mut tokens = std::collections::BTreeSet::new();
    while t.elapsed() < Duration::from_secs(5) {
        let v = outcome(&check(&mut c, "/mail").await).unwrap_or_else(|e| panic!("denied at {:?}: {e:?}", t.elapsed()));
        tokens.insert(bearer(&v).to_string());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A reload changing the credential (refresh_before) keeps the refresh chain: the new
    // configuration goes on from the rotated refresh token, never the spent one in the file.
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, text.replace("refresh_before: 1s", "refresh_before: 1200ms")).unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        let v = outcome(&check(&mut c, "/mail").await).unwrap_or_else(|e| panic!("denied after the reload: {e:?}"));
        tokens.insert(bearer(&v).to_string());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = idp.stats().await;
    let ok = stats["by_grant"]["refresh_token:ok"].as_u64().unwrap_or(0);
    assert!(ok >= 7, "renewed ahead of expiry, again and again: {stats}");
    assert_eq!(stats["token_requests"].as_u64(), Some(ok), "every refresh succeeded (the rotated token used): {stats}");
    assert!(tokens.len() >= 7, "{} tokens", tokens.len());
    let last = tokens.iter().last().unwrap().clone();
    // Each token is the server's, for alice.
    let v = outcome(&check(&mut c, "/mail").await).unwrap();
    let about = idp.introspect("mail-gateway", RT_SECRET, bearer(&v)).await;
    assert_eq!((about["active"].as_bool(), about["sub"].as_str()), (Some(true), Some("alice")), "{about}");
    // The seeded refresh token was spent long ago: the server refuses it (hallpass moved on
    // to the rotated ones).
    let (st, body) =
        idp.token("mail-gateway", RT_SECRET, &format!("grant_type=refresh_token&refresh_token={seeded}")).await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    srv.signal("TERM");
    let _ = srv.child.wait();
    let log = srv.log();
    for s in [seeded.as_str(), RT_SECRET, last.as_str()] {
        assert!(!log.contains(s), "a secret in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_need_a_trusted_certificate() {
    let d = dir("tls");
    let Some((ca, cert, key)) = common::test_ca(&d) else { return };
    std::fs::write(d.join("cc-secret"), CC_SECRET).unwrap();
    let Some(idp) = OAuthServer::start(&[
        ("CC_SECRET", CC_SECRET),
        ("TLS_CERT", cert.to_str().unwrap()),
        ("TLS_KEY", key.to_str().unwrap()),
    ]) else {
        return;
    };
    assert!(idp.issuer.starts_with("https://"));
    let oauth = |ca: &str| {
        format!(
            "    oauth2:\n      token_url: {}/token\n      grant: client_credentials\n      client_id: crm-gateway\n      client_secret_file: {}\n{ca}",
            idp.issuer,
            d.join("cc-secret").display()
        )
    };
    let policy = policy(
        &d,
        &format!(
            "  crm:\n{}  untrusted:\n{}  mail: {{ file: /nonexistent/mail }}",
            oauth(&format!("      ca_file: {}\n", ca.display())),
            oauth("")
        ),
    );
    let mut srv = common::Served::start(&["--policy", policy.to_str().unwrap(), "--drain-delay", "0s"]);
    let mut c = client(srv.grpc).await;
    let v = outcome(&check(&mut c, "/contacts").await)
        .unwrap_or_else(|e| panic!("the CA in ca_file is trusted: {e:?}\n{}", srv.log()));
    assert!(v.starts_with("Bearer ") && v.len() > 20);
    let (st, body) = outcome(&check(&mut c, "/untrusted").await).expect_err("an unknown CA is not trusted");
    assert_eq!((st, body["rule"].as_str()), (503, Some("credential_unavailable")));
    srv.signal("TERM");
    let _ = srv.child.wait();
    let log = srv.log();
    assert!(log.contains("could not be reached") && log.contains("certificate"), "the TLS failure is logged: {log}");
}
