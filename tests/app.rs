//! The whole server in-process on port 0 (`app::bind` + `app::run`, what `hallpass serve`
//! runs): a Check is answered, the admin endpoints answer, the decision log is written, and one
//! cancellation signal drains and stops everything.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests may panic")]

use std::io::{Read, Write};
use std::sync::Arc;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hallpass::app;
use hallpass::reload::PolicyStore;
use hallpass::request::build::samples;
use hallpass::settings::{Overrides, ServerSettings};
use hallpass::telemetry::Metrics;

fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_server_in_process_on_port_0() {
    let dir = std::env::temp_dir().join(format!("hallpass-app-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("decisions.jsonl");
    let _ = std::fs::remove_file(&log);
    let settings = ServerSettings::resolve(Overrides {
        policy: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.yaml").into()),
        grpc_listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        drain_delay: Some("0s".into()),
        decision_log: Some(log.display().to_string()),
        ..Overrides::default()
    })
    .unwrap();
    let metrics = Metrics::new().unwrap();
    let store = Arc::new(PolicyStore::open(&settings.policy, Some(metrics.clone())).unwrap());
    let bound = app::bind(&settings).await.unwrap();
    let (grpc, admin) = (bound.grpc_addr().unwrap(), bound.admin_addr().unwrap());
    assert_ne!(grpc.port(), 0, "port 0 resolved before anything starts");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app::run(settings, bound, store, metrics, async move {
        let _ = stopped.await;
    }));

    let mut client = AuthorizationClient::connect(format!("http://{grpc}")).await.unwrap();
    let resp = client.check(samples::read_mail().build()).await.unwrap().into_inner();
    assert_eq!(resp.status.map(|s| s.code), Some(0), "the example policy allows the sample read");
    let (status, _) = tokio::task::spawn_blocking(move || http_get(admin, "/readyz")).await.unwrap();
    assert_eq!(status, 200);
    let (_, metrics_text) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics")).await.unwrap();
    assert!(metrics_text.contains(r#"rule="mail-read""#), "{metrics_text}");
    drop(client);

    // One signal stops everything: the server returns, the admin port closes, the log is flushed.
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
    assert!(std::net::TcpStream::connect(admin).is_err(), "the admin listener is closed");
    let records = std::fs::read_to_string(&log).unwrap();
    assert_eq!(records.lines().count(), 1, "{records}");
    assert!(records.contains(r#""rule":"mail-read""#), "{records}");
}
