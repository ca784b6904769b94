//! The decision cache never changes a decision: over a large randomized stream of requests
//! (time-bounded rules, bodies, query and header tests, references, MCP, dry run, policy
//! swaps), decisions with the cache on equal decisions with it off.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

mod common;

use common::ready;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hallpass::cache::{CacheOptions, DecisionCache};
use hallpass::policy::Policy;
use hallpass::reload::LivePolicy;
use hallpass::request::build::CheckRequestBuilder;
use hallpass::service::Authz;

const POLICY_A: &str = r#"
version: 1
identity:
  agent: [header: x-agent-id]
  on_behalf_of: [header: x-on-behalf-of]
rules:
  - id: no-delete
    effect: deny
    methods: [DELETE]
  - id: night-freeze
    effect: deny
    methods: [POST]
    when: { hours: "22:00-06:00", timezone: Europe/Berlin }
  - id: window-closed
    effect: deny
    paths: ["/ops/**"]
    when: { not_before: "2026-11-23T09:00:00Z", not_after: "2026-11-23T09:30:00Z" }
  - id: big-amount
    effect: deny
    paths: ["/pay"]
    body: { field: /amount, gt: 1000 }
  - id: trial-env
    effect: deny
    headers: { x-env: { equals: staging } }
    dry_run: true
  - id: mcp-shell
    effect: deny
    paths: ["/mcp"]
    mcp: { tools: [run_shell] }
  - id: own-mail
    effect: allow
    agents: [bot-a, bot-b]
    methods: [GET]
    paths: ["/users/{user}/mail/**"]
    captures: { user: { equals: { ref: on_behalf_of } } }
    query: { limit: { lte: 10 } }
  - id: business-hours-write
    effect: allow
    agents: ["*"]
    methods: [POST, PUT]
    paths: ["/pay", "/users/{user}/mail/send"]
    when: { days: [mon, tue, wed, thu, fri], hours: "08:00-18:00", timezone: Europe/Berlin }
  - id: mcp-tools
    effect: allow
    paths: ["/mcp"]
    mcp: { tools: [search, read_file], arguments: { field: /q, max_len: 10 } }
  - id: ops-read
    effect: allow
    methods: [GET]
    paths: ["/ops/**"]
    headers: { x-env: { in: [prod, staging] } }
  - id: echo-header
    effect: allow
    paths: ["/echo"]
    query: { who: { equals: { ref: header.x-agent-id } } }
"#;

const POLICY_B: &str = r#"
version: 1
settings: { mode: dry_run }
rules:
  - id: b-deny-pay
    effect: deny
    paths: ["/pay"]
  - id: b-allow-get
    effect: allow
    methods: [GET]
"#;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

fn random_request(r: &mut Rng) -> CheckRequestBuilder {
    let method = r.pick(&["GET", "GET", "POST", "PUT", "DELETE", "delete", "post"]);
    let path = r.pick(&[
        "/users/alice/mail/inbox?limit=5",
        "/users/alice/mail/inbox?limit=50",
        "/users/alice/mail/inbox?limit=5&limit=6",
        "/users/bob/mail/inbox?limit=1",
        "/users/alice/mail/send",
        "/pay",
        "/pay",
        "/pay",
        "/pay",
        "/mcp",
        "/mcp",
        "/mcp",
        "/mcp",
        "/ops/status",
        "/ops/./status",
        "/echo?who=bot-a",
        "/echo?who=bot-b",
        "/echo",
        "/other",
        "/a/../..",
        // Other readings of the same requests (policy-language.md "Reading a request the way
        // upstreams do"): each must be part of the cache key.
        "/users/alice/mail/inbox?limit[]=50",
        "/users/alice/mail/inbox?limit=5&limit[0]=50",
        "/users/alice/mail/inbox?limit=5,50",
        "/pay?_method=DELETE",
        "/Pay/",
        "/MCP",
        "/echo?who[]=bot-a",
        "/ops;x/status",
    ]);
    let mut b = CheckRequestBuilder::new(method, path);
    match r.next() % 4 {
        0 => {}
        1 => b = b.header("x-agent-id", "bot-a"),
        2 => b = b.header("x-agent-id", "bot-b").header("x-on-behalf-of", "alice"),
        _ => b = b.header("x-agent-id", "bot-a").header("x-on-behalf-of", r.pick(&["alice", "bob"])),
    }
    if r.next().is_multiple_of(3) {
        b = b.header("x-env", r.pick(&["prod", "staging", "dev", "prod,staging"]));
    }
    match r.next() % 8 {
        0 => b = b.header("x_env", r.pick(&["prod", "staging"])),
        1 => b = b.header("x-http-method-override", r.pick(&["DELETE", "GET", "POST"])),
        2 => b = b.header("x_method_override", "DELETE"),
        _ => {}
    }
    match r.next() % 7 {
        0 => {}
        1 => b = b.header("content-type", "application/json").body(r.pick(&[r#"{"amount":5}"#, r#"{"amount":5000}"#, r#"{"amount":"5000"}"#])),
        2 => b = b.header("content-type", "application/x-www-form-urlencoded").body("amount=7"),
        3 => {
            b = b.header("content-type", "application/json").body(r.pick(&[
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"hi"}}}"#,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"a very long query"}}}"#,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run_shell","arguments":{}}}"#,
                r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"q":"x"}}}]"#,
            ]))
        }
        4 => {
            b = b.header("content-type", "application/json").body(r.pick(&[
                r#"{"amount":1,"amount":2}"#,
                r#"{"Amount":5000}"#,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","Params":{"name":"run_shell","arguments":{}}}"#,
            ]))
        }
        5 => {
            let (ct, body) = match r.next() % 4 {
                0 => ("application/json; charset=utf-7", r#"{"amount":5}"#),
                1 => ("application/x-www-form-urlencoded", "amount=7&_method=DELETE"),
                2 => ("application/x-www-form-urlencoded", r#"{"amount":5000}"#),
                _ => ("application/json", r#"{"amount":5}"#),
            };
            b = b.header("content-type", ct).body(body);
            if r.next().is_multiple_of(3) {
                b = b.header("content-encoding", "gzip");
            }
        }
        _ => b = b.header("content-type", "application/json").header("x-envoy-auth-partial-body", "true").body(r#"{"amount":5}"#),
    }
    b
}

#[test]
fn cached_decisions_equal_uncached_decisions() {
    let live = |text: &str, generation| {
        LivePolicy::new(Policy::from_yaml(text, "p.yaml").unwrap(), text.as_bytes(), generation)
    };
    let handle = Arc::new(ArcSwap::from_pointee(live(POLICY_A, 1)));
    let cache = Arc::new(DecisionCache::new(CacheOptions { ttl: Duration::from_secs(45), max_entries: 5_000 }));
    let cached = Authz::new(handle.clone(), None).with_cache(cache.clone());
    let uncached = Authz::new(handle.clone(), None);

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // From 05:00 UTC on Monday 2026-11-23 (06:00 in Berlin) through Tuesday night: crosses the
    // 08:00 and 18:00 Berlin hours, the 22:00-06:00 freeze, midnight, and the 09:00-09:30 window.
    let mut now: jiff::Timestamp = "2026-11-23T05:00:00Z".parse().unwrap();
    let (mut hits, mut total) = (0usize, 0usize);
    let mut generation = 1;
    // Agents repeat themselves: most requests come from a pool, some are new.
    let pool: Vec<_> = (0..60).map(|_| random_request(&mut rng).build()).collect();
    for i in 0..30_000 {
        // Bursts of traffic, and now and then a jump of 10-40 minutes: over the run the clock
        // crosses every window of the policy, days and midnights included.
        let step_ms = if rng.next().is_multiple_of(200) { 600_000 + rng.next() % 1_800_000 } else { rng.next() % 500 };
        now = now.checked_add(jiff::SignedDuration::from_millis(step_ms as i64)).unwrap();
        if i % 7_500 == 7_499 {
            // Swap the policy (as a reload would): the cache must not serve the old one.
            generation += 1;
            handle.store(Arc::new(live(if generation % 2 == 0 { POLICY_B } else { POLICY_A }, generation)));
        }
        let req = if rng.next().is_multiple_of(5) {
            random_request(&mut rng).build()
        } else {
            pool[(rng.next() % pool.len() as u64) as usize].clone()
        };
        let a = ready(cached.decide(req.clone(), now));
        let b = ready(uncached.decide(req, now));
        assert_eq!(a.decision, b.decision, "request {i} at {now}: cache changed the decision");
        assert_ne!(a.decision_id, b.decision_id);
        hits += usize::from(a.cache_hit());
        total += 1;
    }
    eprintln!("{total} requests up to {now}, {hits} cache hits, all decisions equal");
    // Only body-reading decisions are cached (a third of this stream); thousands of hits.
    assert!(hits > 1_000, "the cache was exercised: {hits} hits of {total}");
}

#[test]
fn a_hit_gets_a_fresh_decision_id_and_is_marked() {
    let policy = Policy::from_yaml(POLICY_A, "p.yaml").unwrap();
    let cache = Arc::new(DecisionCache::new(CacheOptions::default()));
    let a = Authz::from_policy(policy).with_cache(cache.clone());
    let now: jiff::Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
    let pay = |agent: &str, amount: u32| {
        CheckRequestBuilder::new("POST", "/pay")
            .header("x-agent-id", agent)
            .header("content-type", "application/json")
            .body(format!(r#"{{"amount":{amount}}}"#))
            .build()
    };
    // Stored on second sight, served from the third.
    let first = ready(a.decide(pay("bot-a", 5), now));
    assert!(!first.cache_hit());
    assert_eq!(cache.entry_count(), 0, "a one-off request is not stored");
    assert!(!ready(a.decide(pay("bot-a", 5), now)).cache_hit());
    let second = ready(a.decide(pay("bot-a", 5), now));
    assert!(second.cache_hit());
    assert!(first.decision.allowed());
    assert_eq!(first.decision, second.decision);
    assert_ne!(first.decision_id, second.decision_id);
    assert_eq!(cache.entry_count(), 1);
    // The body is part of the key.
    let big = ready(a.decide(pay("bot-a", 5000), now));
    assert!(!big.cache_hit() && !big.decision.allowed());
    let big = ready(a.decide(pay("bot-a", 5000), now));
    assert!(!big.cache_hit() && !big.decision.allowed());
    // Body-less decisions are not cached at all.
    let get = || CheckRequestBuilder::new("GET", "/echo?who=bot-a").header("x-agent-id", "bot-a").build();
    assert!(!ready(a.decide(get(), now)).cache_hit() && !ready(a.decide(get(), now)).cache_hit());
    assert_eq!(cache.entry_count(), 2);
}

#[test]
fn entries_do_not_outlive_a_time_window_boundary() {
    let policy = Policy::from_yaml(POLICY_A, "p.yaml").unwrap();
    let cache = Arc::new(DecisionCache::new(CacheOptions { ttl: Duration::from_secs(3600), max_entries: 100 }));
    let a = Authz::from_policy(policy).with_cache(cache);
    let req = || {
        CheckRequestBuilder::new("POST", "/pay")
            .header("x-agent-id", "bot-a")
            .header("content-type", "application/json")
            .body(r#"{"amount":5}"#)
            .build()
    };
    // 16:59:59 in Berlin on a Monday: allowed; one second later the 08:00-18:00 window has closed.
    let before: jiff::Timestamp = "2026-11-23T16:59:59Z".parse().unwrap();
    let after: jiff::Timestamp = "2026-11-23T17:00:00Z".parse().unwrap();
    assert!(ready(a.decide(req(), before)).decision.allowed());
    assert!(ready(a.decide(req(), before)).decision.allowed());
    assert!(ready(a.decide(req(), before)).cache_hit());
    let d = ready(a.decide(req(), after));
    assert!(!d.cache_hit(), "the entry expired at the boundary despite the 1h TTL");
    assert!(!d.decision.allowed());
}
