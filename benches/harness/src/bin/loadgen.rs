//! A Check load generator: closed loop (`--concurrency N`) or fixed arrival rate (`--rate R`,
//! latency measured from each request's scheduled start, so a stalled server cannot hide its
//! queueing: coordinated-omission correction). Prints one JSON line with rps and percentiles.
//!
//!   loadgen --addr 127.0.0.1:9191 --scenario get|json|mcp [--concurrency 4] [--rate 5000]
//!           [--duration 10] [--warmup 2] [--label name]
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hallpass::request::build::{samples, CheckRequestBuilder};
use hdrhistogram::Histogram;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// The requests. `get`, `json`, `mcp`: against config/policy.yaml (all allowed by it), the same
/// request every time. `svc`: against benches' 1000-rule policy, a different path and body per
/// request (20 000 distinct ones, cycling), to fill the decision cache.
fn scenario(name: &str, n: u64) -> CheckRequest {
    match name {
        "svc" => {
            let k = n % 20_000;
            CheckRequestBuilder::new("POST", &format!("/svc{}/{}/items", k % 1000, k))
                .host("api.example.com")
                .header("content-type", "application/json")
                .body(format!(r#"{{"amount":{},"note":"{}"}}"#, k % 5000, "x".repeat(200)))
                .build()
        }
        "get" => samples::read_mail().build(),
        "json" => samples::send_mail(samples::mail_body_1k()).build(),
        "mcp" => samples::mcp_search().build(),
        other => panic!("unknown scenario {other}"),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = arg(&args, "--addr").unwrap_or_else(|| "127.0.0.1:9191".into());
    let scen = arg(&args, "--scenario").unwrap_or_else(|| "get".into());
    let label = arg(&args, "--label").unwrap_or_else(|| addr.clone());
    let concurrency: usize = arg(&args, "--concurrency").and_then(|v| v.parse().ok()).unwrap_or(4);
    let rate: Option<f64> = arg(&args, "--rate").and_then(|v| v.parse().ok());
    let duration = Duration::from_secs_f64(arg(&args, "--duration").and_then(|v| v.parse().ok()).unwrap_or(10.0));
    let warmup = Duration::from_secs_f64(arg(&args, "--warmup").and_then(|v| v.parse().ok()).unwrap_or(2.0));
    let fixed = scenario(&scen, 0);
    let counter = Arc::new(AtomicU64::new(0));

    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram")));
    let errors = Arc::new(AtomicU64::new(0));
    let denied = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    // With a rate, enough workers that one slow response does not hold the schedule back.
    let workers = if rate.is_some() { concurrency.max(16) } else { concurrency };
    for _ in 0..workers {
        let (hist, errors, denied, done, issued, fixed, counter) =
            (hist.clone(), errors.clone(), denied.clone(), done.clone(), issued.clone(), fixed.clone(), counter.clone());
        let scen = scen.clone();
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = AuthorizationClient::connect(format!("http://{addr}")).await.expect("connect");
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
            loop {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let scheduled = match rate {
                    Some(r) => {
                        let n = issued.fetch_add(1, Ordering::Relaxed);
                        let at = start + Duration::from_secs_f64(n as f64 / r);
                        if at > end {
                            break;
                        }
                        // tokio's timer has 1 ms granularity: sleep to just before the slot,
                        // then yield until it (the load generator has its own core).
                        if let Some(early) = at.checked_sub(Duration::from_millis(2)) {
                            if early > Instant::now() {
                                tokio::time::sleep_until(early.into()).await;
                            }
                        }
                        while Instant::now() < at {
                            tokio::task::yield_now().await;
                        }
                        at
                    }
                    None => Instant::now(),
                };
                let req = if scen == "svc" { scenario(&scen, counter.fetch_add(1, Ordering::Relaxed)) } else { fixed.clone() };
                let resp = client.check(req).await;
                let now = Instant::now();
                if now > end {
                    break;
                }
                match resp {
                    Ok(r) => {
                        if r.get_ref().status.as_ref().map(|s| s.code) != Some(0) {
                            denied.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if scheduled >= measure_from {
                    let _ = local.record((now - scheduled).as_nanos() as u64);
                }
            }
            hist.lock().expect("lock").add(&local).expect("add");
        }));
    }
    tokio::time::sleep_until(end.into()).await;
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let h = hist.lock().expect("lock");
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let out = serde_json::json!({
        "label": label, "scenario": scen,
        "mode": if rate.is_some() { "fixed-rate" } else { "closed-loop" },
        "target_rate": rate, "concurrency": workers,
        "rps": h.len() as f64 / duration.as_secs_f64(),
        "p50_us": us(0.5), "p90_us": us(0.9), "p99_us": us(0.99), "p999_us": us(0.999), "max_us": h.max() as f64 / 1000.0,
        "requests": h.len(), "errors": errors.load(Ordering::Relaxed), "denied": denied.load(Ordering::Relaxed),
    });
    println!("{out}");
}
