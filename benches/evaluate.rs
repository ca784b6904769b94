//! Criterion benchmarks of the decision path against the shipped example policy:
//! evaluation alone (body-less and with a JSON body), and the whole synchronous Check
//! (CheckRequest → normalize → evaluate → CheckResponse). See docs/benchmarks.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "benches may panic; criterion macros generate undocumented items"
)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use hallpass::cache::{CacheOptions, DecisionCache};
use hallpass::policy::{evaluate, Policy};
use hallpass::request::build::samples::{self, read_mail};
use hallpass::request::build::CheckRequestBuilder;
use hallpass::request::Request;
use hallpass::service::Authz;

fn policy() -> Policy {
    Policy::from_file(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.yaml"))).unwrap()
}

fn send_mail() -> CheckRequestBuilder {
    samples::send_mail(samples::mail_body_1k())
}

fn bench(c: &mut Criterion) {
    let p = policy();
    let now = jiff::Timestamp::now();
    let req = Request::from_check_request(read_mail().build()).unwrap();
    c.bench_function("evaluate/bodyless", |b| b.iter(|| black_box(evaluate(&p, black_box(&req), now))));

    let body_req = send_mail().build();
    c.bench_function("evaluate/json_body_1k (parse included)", |b| {
        b.iter_batched(
            || Request::from_check_request(body_req.clone()).unwrap(),
            |r| black_box(evaluate(&p, &r, now)),
            criterion::BatchSize::SmallInput,
        )
    });

    c.bench_function("evaluate/json_body_1k (body already parsed)", |b| {
        b.iter_batched_ref(
            || {
                let r = Request::from_check_request(body_req.clone()).unwrap();
                let _ = r.body.parsed();
                r
            },
            |r| black_box(evaluate(&p, r, now)),
            criterion::BatchSize::SmallInput,
        )
    });
    // Where the body time goes: hallpass's strict parse against plain serde_json.
    let mail = samples::mail_body_1k();
    c.bench_function("parse/json_body_1k strict", |b| {
        b.iter(|| black_box(hallpass::request::body::parse_json(black_box(mail.as_bytes()))))
    });
    c.bench_function("parse/json_body_1k serde_json::Value (baseline)", |b| {
        b.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(black_box(mail.as_bytes())).ok()))
    });

    c.bench_function("extract/bodyless", |b| {
        b.iter_batched(
            || read_mail().build(),
            |r| black_box(Request::from_check_request(r).unwrap()),
            criterion::BatchSize::SmallInput,
        )
    });

    let authz = Authz::from_policy(policy());
    c.bench_function("check/bodyless (extract+evaluate+respond)", |b| {
        b.iter_batched(
            || read_mail().build(),
            |r| black_box(ready(authz.decide(r, now))),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("check/json_body_1k", |b| {
        b.iter_batched(
            || send_mail().build(),
            |r| black_box(ready(authz.decide(r, now))),
            criterion::BatchSize::SmallInput,
        )
    });

    // With the decision cache on (it only holds body-reading decisions): a hit (the same
    // request again) and a miss (every body different: key, lookup, evaluate, insert).
    let cached = Authz::from_policy(policy())
        .with_cache(Arc::new(DecisionCache::new(CacheOptions { ttl: Duration::from_secs(3600), max_entries: 10_000 })));
    let _ = ready(cached.decide(send_mail().build(), now));
    c.bench_function("check/json_body_1k cache hit", |b| {
        b.iter_batched(
            || send_mail().build(),
            |r| black_box(ready(cached.decide(r, now))),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut n = 0u64;
    c.bench_function("check/json_body_1k cache miss", |b| {
        b.iter_batched(
            || {
                n += 1;
                let body = format!(
                    r#"{{"to":["bob@example.com"],"subject":"report {n}","body":"{}"}}"#,
                    "lorem ipsum ".repeat(75)
                );
                send_mail().body(body).build()
            },
            |r| black_box(ready(cached.decide(r, now))),
            criterion::BatchSize::SmallInput,
        )
    });
}

/// A policy of `n` path-scoped rules (distinct first segments, a body condition on every
/// tenth), plus five rules that apply to every path, as real policies have.
fn generated_policy(n: usize) -> Policy {
    let mut y = String::from("version: 1\nidentity: { agent: [principal, { header: x-agent-id }] }\nrules:\n");
    y.push_str("  - { id: g-no-delete, effect: deny, methods: [DELETE] }\n");
    y.push_str("  - { id: g-no-admin, effect: deny, paths: [\"/admin/**\"] }\n");
    y.push_str("  - { id: g-night, effect: deny, methods: [PUT], when: { hours: \"22:00-06:00\" } }\n");
    y.push_str("  - { id: g-debug, effect: deny, query: { debug: { exists: true } } }\n");
    y.push_str("  - { id: g-env, effect: deny, headers: { x-env: { equals: staging } } }\n");
    for i in 0..n {
        let body = if i % 10 == 0 { ", body: { field: /amount, lte: 1000 }" } else { "" };
        y.push_str(&format!(
            "  - {{ id: r{i}, effect: allow, agents: [\"agent-{}\", \"@all\"], methods: [GET, POST], paths: [\"/svc{i}/{{id}}/**\"]{body} }}\n",
            i % 7
        ));
    }
    y.push_str("groups:\n  all: [bot-a, bot-b]\n");
    Policy::from_yaml(&y, "generated.yaml").unwrap()
}

fn scaling(c: &mut Criterion) {
    let now = jiff::Timestamp::now();
    let body = format!(r#"{{"amount":500,"note":"{}"}}"#, "x".repeat(990));
    for n in [10usize, 100, 1000] {
        let p = generated_policy(n);
        let target = n - 1;
        let req = Request::from_check_request(
            CheckRequestBuilder::new("GET", &format!("/svc{target}/42/items")).header("x-agent-id", "bot-a").build(),
        )
        .unwrap();
        assert_eq!(
            evaluate(&p, &req, now).rule.as_str(),
            format!("r{target}"),
            "the benchmark decides by the intended rule"
        );
        c.bench_function(&format!("scale/bodyless/{n} rules"), |b| {
            b.iter(|| black_box(evaluate(&p, black_box(&req), now)))
        });
        // The rule at index n-10 has a body condition; 1 KB JSON body, parse included.
        let body_target = n - 10;
        let breq = CheckRequestBuilder::new("POST", &format!("/svc{body_target}/42/items"))
            .header("x-agent-id", "bot-a")
            .header("content-type", "application/json")
            .body(body.clone())
            .build();
        let d = evaluate(&p, &Request::from_check_request(breq.clone()).unwrap(), now);
        assert_eq!(d.rule.as_str(), format!("r{body_target}"));
        assert!(d.allowed());
        c.bench_function(&format!("scale/json_body_1k/{n} rules"), |b| {
            b.iter_batched(
                || Request::from_check_request(breq.clone()).unwrap(),
                |r| black_box(evaluate(&p, &r, now)),
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

/// The cost of a limit (agent-controls.md §4) on the memory store: the same body-less Check
/// against the example policy, and against it with a limit on the deciding rule (one GCRA
/// bucket per agent and user, so high that it never refuses here).
fn limits(c: &mut Criterion) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.yaml")).unwrap();
    let limited_text = text.replacen(
        "    paths: [\"/v1/users/{user}/messages/{id}\"]\n",
        "    paths: [\"/v1/users/{user}/messages/{id}\"]\n    limits:\n      - { per: [agent, on_behalf_of], rate: \"1000/s\", burst: 1000000000000 }\n",
        1,
    );
    assert_ne!(text, limited_text, "the limit was added to mail-read");
    let plain = Authz::from_policy(Policy::from_yaml(&text, "policy.yaml").unwrap());
    let limited = Authz::from_policy(Policy::from_yaml(&limited_text, "limited.yaml").unwrap());
    let now = jiff::Timestamp::now();
    for (name, authz) in
        [("check/bodyless unlimited rule", &plain), ("check/bodyless limited rule (memory store)", &limited)]
    {
        let d = ready(authz.decide(read_mail().build(), now)).decision;
        assert!(d.allowed() && d.rule.as_str() == "mail-read" && d.limit.is_none(), "{name}: {d:?}");
        assert_eq!(d.limited.is_empty(), name.contains("unlimited"), "{name}: the limit is taken");
        c.bench_function(name, |b| {
            b.iter_batched(
                || read_mail().build(),
                |r| black_box(ready(authz.decide(r, now))),
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

/// `hallpass replay`'s per-input work: parse a `hallpass.input/v1` line, rebuild the
/// CheckRequest, decide it through the Check pipeline, compare with the recorded decision.
/// Three recorded inputs in turn (a body-less read, a 1 KB JSON send, an MCP call).
fn replay(c: &mut Criterion) {
    use hallpass::replay::{capture, InputRecord, Masks, RecordedDecision, Replayer};
    let p = policy();
    let now = jiff::Timestamp::now();
    let mcp = CheckRequestBuilder::new("POST", "/mcp")
        .host("tools.example.com")
        .header("x-agent-id", "research-bot")
        .header("content-type", "application/json")
        .body(&br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"q":"quarterly report"}}}"#[..]);
    let authz = Authz::from_policy(p.clone());
    let lines: Vec<String> = [read_mail(), send_mail(), mcp]
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let req = b.build();
            let d = ready(authz.decide(req.clone(), now)).decision;
            let rec = InputRecord {
                schema: hallpass::replay::SCHEMA.into(),
                decision_id: format!("{i:032x}"),
                time: now,
                revision: "bench".into(),
                request: capture(&req, &p, &Masks::default()).unwrap(),
                decision: RecordedDecision {
                    decision: if d.allowed() { "allow" } else { "deny" }.into(),
                    rule: d.rule.as_str().into(),
                    dry_run: d.dry_run(),
                    grant: None,
                },
            };
            serde_json::to_string(&rec).unwrap()
        })
        .collect();
    let replayer = Replayer::new(p);
    for l in &lines {
        let rec: InputRecord = serde_json::from_str(l).unwrap();
        let r = replayer.replay(&rec);
        assert_eq!(r.change, hallpass::replay::Change::Unchanged, "{l}");
    }
    let mut i = 0usize;
    c.bench_function("replay/one input (parse+decide+compare), 3 kinds in turn", |b| {
        b.iter(|| {
            i = (i + 1) % lines.len();
            let rec: InputRecord = serde_json::from_str(lines.get(i).unwrap()).unwrap();
            black_box(replayer.replay(&rec))
        })
    });
}

criterion_group!(benches, bench, scaling, limits, replay);
criterion_main!(benches);

/// Run a Check on the in-memory state store (it never waits).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    hallpass::check::ready_now(f).expect("the in-memory pipeline never waits")
}
