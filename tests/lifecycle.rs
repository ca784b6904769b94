//! Shutdown: health flips to NOT_SERVING first, a Check in flight completes, then the
//! server stops.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hallpass::policy::Policy;
use hallpass::request::build::CheckRequestBuilder;
use hallpass::service::{run, Authz, Lifecycle, SERVICE_NAME};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_check_completes_and_health_flips_first() {
    let policy = Policy::from_yaml("version: 1\nrules:\n  - { id: all, effect: allow }\n", "p.yaml").unwrap();
    let authz = Authz::from_policy(policy).with_check_delay(Duration::from_millis(800));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let lifecycle = Lifecycle { drain_delay: Duration::from_millis(400) };
    let server = tokio::spawn(run(listener, authz, lifecycle, async {
        let _ = stop_rx.await;
    }));

    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = |s: &str| HealthCheckRequest { service: s.into() };
    assert_eq!(health.check(status(SERVICE_NAME)).await.unwrap().into_inner().status, SERVING);

    let mut client = AuthorizationClient::new(channel.clone());
    let in_flight = tokio::spawn(async move {
        let started = Instant::now();
        let r = client.check(CheckRequestBuilder::new("GET", "/x").build()).await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop_at = Instant::now();
    stop.send(()).unwrap();

    // Within the drain window, health says NOT_SERVING (for the service and overall).
    let mut flipped = None;
    while stop_at.elapsed() < Duration::from_millis(350) {
        if health.check(status(SERVICE_NAME)).await.unwrap().into_inner().status == NOT_SERVING {
            flipped = Some(stop_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let flipped = flipped.expect("health went NOT_SERVING during the drain delay");
    assert_eq!(health.check(status("")).await.unwrap().into_inner().status, NOT_SERVING);

    let (result, took) = in_flight.await.unwrap();
    let resp = result.expect("the in-flight Check completed").into_inner();
    assert_eq!(resp.status.unwrap().code, 0);
    assert!(took >= Duration::from_millis(800));
    drop(health);
    drop(channel);
    let done = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "server stopped cleanly: {done:?}");
    eprintln!(
        "NOT_SERVING after {flipped:?}; in-flight Check answered after {took:?}; stopped after {:?}",
        stop_at.elapsed()
    );
    assert!(stop_at.elapsed() >= Duration::from_millis(400), "the drain delay was honoured");
}
