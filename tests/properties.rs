//! Property tests (proptest) for normalization, path matching and the decision cache key:
//! what must hold for every input, not just for the corpus's examples.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

use hallpass::cache::{CacheOptions, DecisionCache};
use hallpass::policy::eval::{evaluate_identified, resolve_identity};
use hallpass::policy::pattern::{Captures, PathPattern};
use hallpass::policy::Policy;
use hallpass::reload::LivePolicy;
use hallpass::request::build::CheckRequestBuilder;
use hallpass::request::path::normalize;
use hallpass::request::Request;
use proptest::prelude::*;

/// Path segments that exercise normalization: dot segments (also encoded), empty segments
/// (repeated slashes), escapes, case, `;`.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just("a".to_string()),
        Just("B".to_string()),
        Just("%41".to_string()),
        Just("x y".to_string()),
        Just("caf%C3%A9".to_string()),
        Just("a;b".to_string()),
        "[a-z]{1,3}",
    ]
}

fn raw_path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..8), any::<bool>()).prop_map(|(segs, slash)| {
        let mut p = format!("/{}", segs.join("/"));
        if slash {
            p.push('/');
        }
        p
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// Normalizing twice changes nothing; a normalized path starts with `/`, has no empty
    /// segment but a trailing one, and no `.` or `..` segment.
    #[test]
    fn normalization_is_idempotent_and_clean(p in raw_path()) {
        if let Ok(n) = normalize(&p) {
            prop_assert_eq!(normalize(&n), Ok(n.clone()), "not idempotent: {} -> {}", p, n);
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.contains("//"), "{} -> {}", p, n);
            let segs: Vec<&str> = n[1..].split('/').collect();
            for s in &segs {
                prop_assert!(*s != "." && *s != "..", "{} -> {}", p, n);
            }
        }
    }

    /// A pattern without `**` matches only paths with as many segments as it has, and every
    /// capture it records is one whole, non-empty segment of the path. Loose matching (deny
    /// rules) matches everything exact matching does.
    #[test]
    fn patterns_match_by_segments(
        pat_segs in prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("*"), Just("{c}"), Just("**")], 1..5),
        path in raw_path(),
    ) {
        let stars = pat_segs.iter().filter(|s| **s == "**").count();
        let caps_n = pat_segs.iter().filter(|s| **s == "{c}").count();
        prop_assume!(stars <= 1 && caps_n <= 1);
        let src = format!("/{}", pat_segs.join("/"));
        let pat = PathPattern::parse(&src).unwrap();
        let Ok(n) = normalize(&path) else { return Ok(()) };
        let mut caps = Captures::new();
        let exact = pat.matches(&n, &mut caps);
        if exact {
            if stars == 0 {
                prop_assert_eq!(n[1..].split('/').count(), pat_segs.len(), "{} matched {}", src, n);
            }
            if let Some(c) = caps.get("c") {
                prop_assert!(!c.is_empty() && n[1..].split('/').any(|s| s == c), "{} captured {:?} of {}", src, c, n);
            }
            let mut loose_caps = Captures::new();
            prop_assert!(pat.matches_loose(&n, &mut loose_caps), "{} matches {} exactly but not loosely", src, n);
        }
    }
}

const POLICY: &str = r#"
version: 1
identity:
  agent: [principal, { header: x-agent-id }]
rules:
  - id: no-delete
    effect: deny
    methods: [DELETE]
  - id: big
    effect: deny
    paths: ["/pay"]
    body: { field: /amount, gt: 100 }
  - id: env
    effect: deny
    headers: { x-env: { equals: prod } }
  - id: read
    effect: allow
    agents: [bot]
    methods: [GET, POST]
    paths: ["/pay", "/items/{id}"]
    query: { limit: { lte: 10 } }
  - id: pay
    effect: allow
    methods: [POST]
    paths: ["/pay"]
    body: { field: /amount, lte: 100 }
"#;

type Parts = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<(&'static str, &'static str)>,
    Option<(&'static str, &'static str)>,
);

/// The parts of a request, each from a small domain of readings that matter.
fn parts() -> impl Strategy<Value = Parts> {
    (
        prop_oneof![Just("GET"), Just("POST"), Just("DELETE"), Just("get"), Just("HEAD")],
        prop_oneof![
            Just("/pay"),
            Just("/Pay/"),
            Just("/items/1"),
            Just("/items/1?limit=5"),
            Just("/items/1?limit[]=50"),
            Just("/items/1?limit=5,50"),
            Just("/items/1?Limit=50"),
            Just("/pay?_method=DELETE")
        ],
        prop_oneof![Just(None), Just(Some("bot")), Just(Some("eve"))],
        prop_oneof![
            Just(None),
            Just(Some(("x-env", "prod"))),
            Just(Some(("x_env", "prod"))),
            Just(Some(("x-http-method-override", "DELETE"))),
            Just(Some(("x_http_method_override", "DELETE"))),
            Just(Some(("x-unrelated", "1")))
        ],
        prop_oneof![
            Just(None),
            Just(Some(("application/json", r#"{"amount":5}"#))),
            Just(Some(("application/json", r#"{"amount":500}"#))),
            Just(Some(("application/json; charset=utf-7", r#"{"amount":5}"#))),
            Just(Some(("application/json", r#"{"Amount":500}"#))),
            Just(Some(("application/json", r#"{"amount":5,"_method":"DELETE"}"#))),
            Just(Some(("application/x-www-form-urlencoded", "amount=5&_method=DELETE"))),
            Just(Some(("application/x-www-form-urlencoded", "amount=5"))),
        ],
    )
}

fn build((m, p, agent, header, body): Parts) -> CheckRequestBuilder {
    let mut b = CheckRequestBuilder::new(m, p);
    if let Some(a) = agent {
        b = b.header("x-agent-id", a);
    }
    if let Some((k, v)) = header {
        b = b.header(k, v);
    }
    if let Some((ct, body)) = body {
        b = b.header("content-type", ct).body(body);
    }
    b
}

/// Two requests that differ in one part (so their cache keys are often equal).
fn request_pair() -> impl Strategy<Value = (CheckRequestBuilder, CheckRequestBuilder)> {
    (parts(), parts(), 0..5usize).prop_map(|(a, alt, which)| {
        let mut b = a;
        match which {
            0 => b.0 = alt.0,
            1 => b.1 = alt.1,
            2 => b.2 = alt.2,
            3 => b.3 = alt.3,
            _ => b.4 = alt.4,
        }
        (build(a), build(b))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Two requests with the same cache key get the same decision: the key holds everything
    /// a decision reads (every reading of method, query, headers and body included).
    #[test]
    fn equal_cache_keys_mean_equal_decisions((a, b) in request_pair()) {
        let policy = Policy::from_yaml(POLICY, "p.yaml").unwrap();
        let live = LivePolicy::new(policy, POLICY.as_bytes(), 1);
        let cache = DecisionCache::new(CacheOptions::default());
        let now = jiff::Timestamp::now();
        let ra = Request::from_check_request(a.build()).unwrap();
        let rb = Request::from_check_request(b.build()).unwrap();
        let (Ok(pa), Ok(pb)) = (&ra.path, &rb.path) else { return Ok(()) };
        let (Ok(ia), Ok(ib)) = (resolve_identity(&live.policy, &ra), resolve_identity(&live.policy, &rb)) else {
            return Ok(());
        };
        let ka = cache.key(&live, &ra, pa, &ia);
        let kb = cache.key(&live, &rb, pb, &ib);
        let da = evaluate_identified(&live.policy, &ra, Ok(ia), now);
        let db = evaluate_identified(&live.policy, &rb, Ok(ib), now);
        if ka == kb {
            prop_assert_eq!(da, db);
        }
    }
}
