//! Raw protobuf bytes → CheckRequest → the whole decision (normalization, identity, body
//! parsing, evaluation, response), as `Authz::decide` makes it for Envoy.
//!
//! Bytes that do not decode as a CheckRequest are skipped. Every decoded request is decided
//! twice: without a cache and through a decision cache shared by all inputs; both must give
//! the same decision (a cache hit from another input with the same key would otherwise be a
//! key that misses something the decision reads). A panic anywhere aborts (libfuzzer-sys's
//! panic hook), even though `decide` would have caught it and answered `internal_error`.
#![no_main]

use std::sync::{Arc, LazyLock};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use hallpass::cache::{CacheOptions, DecisionCache};
use hallpass::policy::Policy;
use hallpass::service::Authz;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const POLICY: &str = include_str!("../../config/policy.yaml");

fn policy() -> Policy {
    Policy::from_yaml(POLICY, "config/policy.yaml").expect("config/policy.yaml loads")
}

static PLAIN: LazyLock<Authz> = LazyLock::new(|| Authz::from_policy(policy()));
static CACHED: LazyLock<Authz> =
    LazyLock::new(|| Authz::from_policy(policy()).with_cache(Arc::new(DecisionCache::new(CacheOptions::default()))));

fuzz_target!(|data: &[u8]| {
    let Ok(req) = CheckRequest::decode(data) else { return };
    let now = jiff::Timestamp::now();
    let plain = ready(PLAIN.decide(req.clone(), now));
    let cached = ready(CACHED.decide(req, now));
    assert_eq!(plain.decision, cached.decision, "decided differently through the cache ({:?})", cached.cache);
});

/// Run a Check on the in-memory state store (it never waits).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    hallpass::check::ready_now(f).expect("the in-memory pipeline never waits")
}
