//! The real gRPC server on port 0, called by a tonic client: what Envoy gets back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

mod common;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HeaderAppendAction, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::google::protobuf::value::Kind;
use hallpass::policy::Policy;
use hallpass::request::build::CheckRequestBuilder;
use hallpass::service::{run, Authz, Lifecycle};
use tokio::sync::oneshot;
use tonic::transport::Channel;

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn start(policy_yaml: &str) -> Server {
    let policy = Policy::from_yaml(policy_yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let authz = Authz::from_policy(policy);
    let task = tokio::spawn(run(listener, authz, Lifecycle::default(), async {
        let _ = rx.await;
    }));
    Server { addr, stop: Some(tx), task }
}

async fn client(addr: std::net::SocketAddr) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://{addr}")).await.unwrap()
}

fn example_policy() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.yaml")).unwrap()
}

fn meta(resp: &CheckResponse, key: &str) -> Option<String> {
    match &resp.dynamic_metadata.as_ref()?.fields.get(key)?.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        Some(Kind::BoolValue(b)) => Some(b.to_string()),
        _ => None,
    }
}

async fn check(c: &mut AuthorizationClient<Channel>, req: CheckRequest) -> CheckResponse {
    c.check(req).await.expect("Check must never return a gRPC error").into_inner()
}

fn mail_read(agent: &str, user: &str) -> CheckRequestBuilder {
    CheckRequestBuilder::new("GET", &format!("/v1/users/{user}/messages/m1"))
        .host("mail.example.com")
        .header("x-agent-id", agent)
        .header("x-on-behalf-of", user)
}

#[tokio::test]
async fn allow_sets_decision_id_header_overwriting_the_client_value() {
    let srv = start(&example_policy()).await;
    let mut c = client(srv.addr).await;
    let req = mail_read("triage-bot", "alice").header("x-hallpass-decision-id", "spoofed").build();
    let resp = check(&mut c, req).await;
    assert_eq!(resp.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else { panic!("want ok_response: {resp:?}") };
    let h: Vec<_> = ok.headers.iter().filter(|h| h.header.as_ref().unwrap().key == "x-hallpass-decision-id").collect();
    assert_eq!(h.len(), 1);
    let value = &h[0].header.as_ref().unwrap().value;
    assert_ne!(value, "spoofed");
    assert_eq!(h[0].append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
    assert_eq!(meta(&resp, "decision").as_deref(), Some("allow"));
    assert_eq!(meta(&resp, "rule").as_deref(), Some("mail-read"));
    assert_eq!(meta(&resp, "decision_id").as_deref(), Some(value.as_str()));
    assert_eq!(meta(&resp, "agent").as_deref(), Some("triage-bot"));
    assert_eq!(meta(&resp, "on_behalf_of").as_deref(), Some("alice"));
    assert_eq!(meta(&resp, "dry_run"), None);
    let _ = srv.stop.map(|s| s.send(()));
}

#[tokio::test]
async fn deny_returns_json_body_without_echoing_request_data() {
    let srv = start(&example_policy()).await;
    let mut c = client(srv.addr).await;
    let secret = "top-secret-subject-4711";
    let body = format!(r#"{{"to":["eve@evil.io"],"subject":"{secret}"}}"#);
    let req = CheckRequestBuilder::new("POST", "/v1/users/alice/messages/send?token=secret-query-0815")
        .host("mail.example.com")
        .header("x-agent-id", "triage-bot")
        .header("x-on-behalf-of", "alice")
        .header("content-type", "application/json")
        .body(body)
        .build();
    let resp = check(&mut c, req).await;
    assert_eq!(resp.status.as_ref().unwrap().code, 7, "PERMISSION_DENIED");
    let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response else { panic!("want denied_response") };
    assert_eq!(d.status.as_ref().unwrap().code, 403);
    let ct = d.headers.iter().find(|h| h.header.as_ref().unwrap().key == "content-type").unwrap();
    assert_eq!(ct.header.as_ref().unwrap().value, "application/json");
    let v: serde_json::Value = serde_json::from_str(&d.body).unwrap();
    assert_eq!(v["error"], "forbidden");
    assert_eq!(v["rule"], "mail-external-recipients");
    assert_eq!(v["message"], "Agents may only send mail to example.com addresses.");
    assert_eq!(v["decision_id"].as_str(), meta(&resp, "decision_id").as_deref());
    assert!(!d.body.contains(secret) && !d.body.contains("secret-query") && !d.body.contains("evil.io"));
    assert_eq!(meta(&resp, "decision").as_deref(), Some("deny"));
    let _ = srv.stop.map(|s| s.send(()));
}

#[tokio::test]
async fn missing_http_attributes_is_a_deny_not_a_grpc_error() {
    let srv = start(&example_policy()).await;
    let mut c = client(srv.addr).await;
    let resp = check(&mut c, CheckRequest { attributes: None }).await;
    assert_eq!(resp.status.as_ref().unwrap().code, 7);
    assert_eq!(meta(&resp, "rule").as_deref(), Some("invalid_request"));
    let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response else { panic!("want denied_response") };
    assert!(d.body.contains("no HTTP request"));
    let _ = srv.stop.map(|s| s.send(()));
}

#[tokio::test]
async fn deny_status_default_message_and_invalid_path() {
    let srv = start(
        "version: 1\nsettings: { deny_status: 404 }\nrules:\n  - { id: read, effect: allow, methods: [GET], paths: [\"/docs/**\"] }\n",
    )
    .await;
    let mut c = client(srv.addr).await;
    let resp = check(&mut c, CheckRequestBuilder::new("POST", "/docs/a").build()).await;
    let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response else { panic!() };
    assert_eq!(d.status.as_ref().unwrap().code, 404);
    let v: serde_json::Value = serde_json::from_str(&d.body).unwrap();
    assert_eq!(v["rule"], "default");
    assert_eq!(v["message"], "No policy rule allows this request.");
    let resp = check(&mut c, CheckRequestBuilder::new("GET", "/docs/%2e%2e/%2e%2e/etc/passwd").build()).await;
    assert_eq!(meta(&resp, "rule").as_deref(), Some("invalid_path"));
    let resp = check(&mut c, CheckRequestBuilder::new("GET", "/docs/a%2Fb").build()).await;
    assert_eq!(meta(&resp, "rule").as_deref(), Some("invalid_path"));
    let resp = check(&mut c, CheckRequestBuilder::new("GET", "/docs/./a/../b").build()).await;
    assert_eq!(meta(&resp, "rule").as_deref(), Some("read"));
    let _ = srv.stop.map(|s| s.send(()));
}

#[tokio::test]
async fn global_dry_run_reports_the_would_deny_rule() {
    let srv = start(
        "version: 1\nsettings: { mode: dry_run }\nrules:\n  - { id: no-post, effect: deny, methods: [POST] }\n  - { id: get, effect: allow, methods: [GET] }\n",
    )
    .await;
    let mut c = client(srv.addr).await;
    let resp = check(&mut c, CheckRequestBuilder::new("POST", "/x").build()).await;
    assert_eq!(resp.status.as_ref().unwrap().code, 0);
    assert!(matches!(resp.http_response, Some(HttpResponse::OkResponse(_))));
    assert_eq!(meta(&resp, "decision").as_deref(), Some("allow"));
    assert_eq!(meta(&resp, "dry_run").as_deref(), Some("true"));
    assert_eq!(meta(&resp, "rule").as_deref(), Some("no-post"));
    // invalid_path is enforced even in dry run.
    let resp = check(&mut c, CheckRequestBuilder::new("GET", "/..").build()).await;
    assert_eq!(resp.status.as_ref().unwrap().code, 7);
    assert_eq!(meta(&resp, "rule").as_deref(), Some("invalid_path"));
    let _ = srv.stop.map(|s| s.send(()));
}

#[tokio::test]
async fn health_service_reports_serving() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let srv = start(&example_policy()).await;
    let channel = Channel::from_shared(format!("http://{}", srv.addr)).unwrap().connect().await.unwrap();
    let mut h = HealthClient::new(channel);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let r = h.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, 1, "SERVING for `{service}`");
    }
    let _ = srv.stop.map(|s| s.send(()));
}

#[tokio::test]
async fn concurrent_checks_each_get_their_own_decision() {
    let srv = start(&example_policy()).await;
    let c = client(srv.addr).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            // Even: alice's agent reads alice's mail. Odd: it tries bob's mailbox.
            let mailbox = if i % 2 == 0 { "alice" } else { "bob" };
            let req = CheckRequestBuilder::new("GET", &format!("/v1/users/{mailbox}/messages/m{i}"))
                .host("mail.example.com")
                .header("x-agent-id", "triage-bot")
                .header("x-on-behalf-of", "alice")
                .build();
            let resp = check(&mut c, req).await;
            (i, meta(&resp, "decision").unwrap(), meta(&resp, "rule").unwrap(), meta(&resp, "decision_id").unwrap())
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (i, decision, rule, id) = t.await.unwrap();
        let want = if i % 2 == 0 { ("allow", "mail-read") } else { ("deny", "default") };
        assert_eq!((decision.as_str(), rule.as_str()), want, "request {i}");
        assert!(ids.insert(id), "decision ids are unique");
    }
    // A repeated identity header is ambiguous: invalid_identity.
    let mut c = client(srv.addr).await;
    let resp = check(&mut c, mail_read("triage-bot", "alice").header("x-agent-id", "other-bot").build()).await;
    assert_eq!(meta(&resp, "decision").as_deref(), Some("deny"));
    assert_eq!(meta(&resp, "rule").as_deref(), Some("invalid_identity"));
    let _ = srv.stop.map(|s| s.send(()));
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let mut srv = start(&example_policy()).await;
    let mut c = client(srv.addr).await;
    let _ = check(&mut c, mail_read("triage-bot", "alice").build()).await;
    srv.stop.take().unwrap().send(()).unwrap();
    drop(c);
    let res = tokio::time::timeout(std::time::Duration::from_secs(5), srv.task).await;
    assert!(matches!(res, Ok(Ok(Ok(())))), "server returns after shutdown: {res:?}");
}
