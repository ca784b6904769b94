//! A Check load generator: closed loop (`--concurrency N`) or fixed arrival rate (`--rate R`,
//! latency measured from each request's scheduled start, so a stalled server cannot hide its
//! queueing: coordinated-omission correction). Prints one JSON line with rps and percentiles.
//!
//!   loadgen --addr 127.0.0.1:9191 --scenario get|json|mcp|svc [--concurrency 4] [--rate 5000]
//!           [--duration 10] [--warmup 2] [--label name] [--distinct 20000]
//!   loadgen --http 127.0.0.1:8080 --request-file req.http [same options]
//!
//! With `--http`, every worker holds one keep-alive HTTP/1.1 connection and sends the raw
//! request in the file (headers and a `content-length` body); a non-2xx answer counts as
//! `denied`. This is the fixed-rate end-to-end client (wrk cannot hold a rate).
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hallpass::request::build::{samples, CheckRequestBuilder};
use hallpass_bench_harness::http1;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

enum Client {
    Grpc(AuthorizationClient<Channel>),
    Http(http1::Conn, Arc<Vec<u8>>),
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// The requests. `get`, `json`, `mcp`: against config/policy.yaml (all allowed by it), the same
/// request every time. `svc`: against benches' 1000-rule policy, a different path and body per
/// request (`--distinct` of them, cycling), to fill the decision cache.
fn scenario(name: &str, n: u64, distinct: u64) -> CheckRequest {
    match name {
        "svc" => {
            let k = n % distinct.max(1);
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

// One thread: the load generator is pinned to one core, and two runtime threads on one core
// let a task whose response has arrived wait out the other thread's whole time slice (the
// fixed-rate workers spin until their slot), which showed up as milliseconds of p99.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = arg(&args, "--addr").unwrap_or_else(|| "127.0.0.1:9191".into());
    let scen = arg(&args, "--scenario").unwrap_or_else(|| "get".into());
    let label = arg(&args, "--label").unwrap_or_else(|| addr.clone());
    let concurrency: usize = arg(&args, "--concurrency").and_then(|v| v.parse().ok()).unwrap_or(4);
    let rate: Option<f64> = arg(&args, "--rate").and_then(|v| v.parse().ok());
    let duration = Duration::from_secs_f64(arg(&args, "--duration").and_then(|v| v.parse().ok()).unwrap_or(10.0));
    let warmup = Duration::from_secs_f64(arg(&args, "--warmup").and_then(|v| v.parse().ok()).unwrap_or(2.0));
    let distinct: u64 = arg(&args, "--distinct").and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let http = arg(&args, "--http");
    let raw: Arc<Vec<u8>> = Arc::new(match &http {
        Some(_) => {
            std::fs::read(arg(&args, "--request-file").expect("--http needs --request-file")).expect("request file")
        }
        None => Vec::new(),
    });
    let fixed = scenario(if http.is_some() { "get" } else { &scen }, 0, distinct);
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
        let (hist, errors, denied, done, issued, fixed, counter) = (
            hist.clone(),
            errors.clone(),
            denied.clone(),
            done.clone(),
            issued.clone(),
            fixed.clone(),
            counter.clone(),
        );
        let scen = scen.clone();
        let addr = addr.clone();
        let (http, raw) = (http.clone(), raw.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = match http {
                Some(a) => Client::Http(http1::Conn::new(&a), raw),
                None => Client::Grpc(AuthorizationClient::connect(format!("http://{addr}")).await.expect("connect")),
            };
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
                // Ok(true): allowed (gRPC OK / HTTP 2xx); Ok(false): denied; Err: transport error.
                let outcome: Result<bool, ()> = match &mut client {
                    Client::Grpc(c) => {
                        let req = if scen == "svc" {
                            scenario(&scen, counter.fetch_add(1, Ordering::Relaxed), distinct)
                        } else {
                            fixed.clone()
                        };
                        match c.check(req).await {
                            Ok(r) => Ok(r.get_ref().status.as_ref().map(|s| s.code) == Some(0)),
                            Err(_) => Err(()),
                        }
                    }
                    Client::Http(c, raw) => match c.roundtrip(raw).await {
                        Ok(status) => Ok((200..300).contains(&status)),
                        Err(_) => Err(()),
                    },
                };
                let now = Instant::now();
                if now > end {
                    break;
                }
                match outcome {
                    Ok(true) => {}
                    Ok(false) => {
                        denied.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(()) => {
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
        "label": label, "scenario": if http.is_some() { "http".to_string() } else { scen },
        "mode": if rate.is_some() { "fixed-rate" } else { "closed-loop" },
        "target_rate": rate, "concurrency": workers,
        "rps": h.len() as f64 / duration.as_secs_f64(),
        "p50_us": us(0.5), "p90_us": us(0.9), "p99_us": us(0.99), "p999_us": us(0.999), "max_us": h.max() as f64 / 1000.0,
        "requests": h.len(), "errors": errors.load(Ordering::Relaxed), "denied": denied.load(Ordering::Relaxed),
    });
    println!("{out}");
}
