//! A brief decision cache (moka), keyed on exactly what a decision reads.
//!
//! Only decisions that parse a request body go through it (see `service`): parsing is the
//! expensive part of a decision; a body-less decision is cheaper to make than to look up.
//! A decision is stored the second time its key is seen within a short while, so traffic of
//! one-off requests does not pay for inserts.
//!
//! The key is the policy generation plus the method, host, normalized path, resolved
//! identities, the values of the query parameters and headers the policy tests, and — when
//! any rule reads the body — the content type, the truncation flag and a 128-bit keyed hash of
//! the body. Keys are compared byte for byte (only the body is hashed, with per-process random
//! SipHash keys, so collisions cannot be chosen). An entry expires after the TTL and never
//! outlives the next time-window change of the rules that could have decided it; a hit is
//! re-checked against the instant of the Check, so a cached decision is always one the policy
//! would make now.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use crate::check::CacheLookup;
use crate::policy::eval::{
    candidates_read_body, checked_path, evaluate_identified, path_bypasses_index, valid_until, AmbiguousIdentity,
    Identity,
};
use crate::policy::Decision;
use crate::reload::LivePolicy;
use crate::request::Request;

/// Cache settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheOptions {
    /// How long a decision is reused at most.
    pub ttl: Duration,
    /// Bound on the number of entries.
    pub max_entries: u64,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions { ttl: Duration::from_secs(5), max_entries: 10_000 }
    }
}

#[derive(Debug)]
struct Entry {
    decision: Decision,
    expires_at: Timestamp,
}

/// Fewest bits of the admission filter (a power of two).
const DOORKEEPER_MIN_BITS: usize = 1 << 16;

/// The decision cache.
pub struct DecisionCache {
    cache: moka::sync::Cache<Box<[u8]>, Arc<Entry>>,
    ttl: jiff::SignedDuration,
    body_keys: (RandomState, RandomState),
    // Admission on second sight: a request is inserted only if its key was seen recently
    // (a Bloom filter), so one-off requests (unique bodies) rarely pay for an insert.
    doorkeeper: Box<[AtomicU64]>,
    door_new_keys: AtomicU64,
    door_clear_after: u64,
    fingerprint_key: RandomState,
}

impl std::fmt::Debug for DecisionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionCache").field("entries", &self.cache.entry_count()).finish_non_exhaustive()
    }
}

fn put(key: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        Some(b) => {
            key.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX - 1).to_le_bytes());
            key.extend_from_slice(b);
        }
        None => key.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
}

impl DecisionCache {
    /// An empty cache.
    pub fn new(opts: CacheOptions) -> DecisionCache {
        DecisionCache {
            cache: moka::sync::Cache::builder().max_capacity(opts.max_entries).time_to_live(opts.ttl).build(),
            ttl: jiff::SignedDuration::try_from(opts.ttl).unwrap_or(jiff::SignedDuration::from_secs(5)),
            body_keys: (RandomState::new(), RandomState::new()),
            // A Bloom filter of the keys seen since it was last cleared: 16 bits per entry
            // (a power of two), three bits per key, cleared after 4 × max_entries new keys.
            // Bits are only ever set between clears, so no two keys can keep each other out
            // (a one-slot-per-fingerprint table let two colliding keys evict each other's
            // fingerprint forever: a 9 000-key working set stayed 59 % cached).
            doorkeeper: {
                let bits = usize::try_from(opts.max_entries.saturating_mul(16))
                    .unwrap_or(usize::MAX)
                    .clamp(DOORKEEPER_MIN_BITS, 1 << 30)
                    .next_power_of_two();
                (0..bits / 64).map(|_| AtomicU64::new(0)).collect()
            },
            door_new_keys: AtomicU64::new(0),
            door_clear_after: opts.max_entries.saturating_mul(4).max(1024),
            fingerprint_key: RandomState::new(),
        }
    }

    /// Whether this key was seen since the filter was last cleared (and remember it).
    fn admit(&self, key: &[u8]) -> bool {
        let h = self.fingerprint_key.hash_one(key);
        let bits = (self.doorkeeper.len() as u64) * 64;
        // Three positions from one hash (Kirsch–Mitzenmacher double hashing).
        let step = h.rotate_left(32) | 1;
        let mut seen = true;
        for i in 0..3u64 {
            let bit = h.wrapping_add(i.wrapping_mul(step)) & (bits - 1);
            let mask = 1u64 << (bit & 63);
            match self.doorkeeper.get((bit >> 6) as usize) {
                Some(word) => seen &= word.fetch_or(mask, Ordering::Relaxed) & mask != 0,
                None => return true,
            }
        }
        if !seen && self.door_new_keys.fetch_add(1, Ordering::Relaxed) + 1 >= self.door_clear_after {
            // Racing Checks may set a bit during the clear: at worst a key is admitted on
            // first sight or needs a third; the cache stays correct either way.
            self.door_new_keys.store(0, Ordering::Relaxed);
            for word in self.doorkeeper.iter() {
                word.store(0, Ordering::Relaxed);
            }
        }
        seen
    }

    /// Entries currently held (approximate, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Stage `cache` of the Check: decide `req` through the cache where that pays.
    /// invalid_path and invalid_identity are decided before any cache. Only decisions that
    /// parse a body are cached: without one, evaluating (~0.4 µs) costs less than a lookup
    /// plus, on a miss, an insert (docs/benchmarks.md). A path with a second reading that
    /// starts elsewhere (`;` parameters allowed by the policy, `/admin.json`) is decided
    /// against every deny rule, which an entry's lifetime (`valid_until`, by candidates) does
    /// not cover: not cached.
    pub fn decide(
        &self,
        live: &LivePolicy,
        req: &Request,
        ident: Result<Identity<'_>, AmbiguousIdentity>,
        now: Timestamp,
    ) -> (Decision, CacheLookup) {
        let evaluate = || evaluate_identified(&live.policy, req, ident, now);
        let Ok(path) = checked_path(&live.policy, req) else {
            return (evaluate(), CacheLookup::Skipped);
        };
        if req.body.bytes.is_empty()
            || path_bypasses_index(&live.policy, path)
            || !candidates_read_body(&live.policy, path)
        {
            return (evaluate(), CacheLookup::Skipped);
        }
        let Ok(id) = ident else {
            return (evaluate(), CacheLookup::Skipped);
        };
        let key = self.key(live, req, path, &id);
        if let Some(d) = self.get(&key, now) {
            return (d, CacheLookup::Hit);
        }
        let d = evaluate();
        self.insert(key, &d, now, valid_until(&live.policy, req, now));
        (d, CacheLookup::Miss)
    }

    /// The key for a request whose path is valid and identity resolved.
    pub fn key(&self, live: &LivePolicy, req: &Request, path: &str, ident: &Identity) -> Box<[u8]> {
        let mut key = Vec::with_capacity(64 + path.len());
        key.extend_from_slice(&live.generation.to_le_bytes());
        put(&mut key, Some(req.method.as_bytes()));
        put(&mut key, Some(req.host.as_bytes()));
        put(&mut key, Some(path.as_bytes()));
        put(&mut key, ident.agent.map(str::as_bytes));
        put(&mut key, ident.on_behalf_of.map(str::as_bytes));
        let inputs = &live.policy.inputs;
        // Every reading a decision takes of them (see `Request::query_values` and
        // `Request::header_values`): bracket forms, underscore spellings, the overflow flag.
        key.push(u8::from(req.query_overflow));
        for name in &inputs.query {
            let values = req.query_values(name);
            key.extend_from_slice(&(values.clone().count() as u64).to_le_bytes());
            for v in values {
                put(&mut key, Some(v.as_bytes()));
            }
        }
        for name in &inputs.headers {
            let values = req.header_values(name);
            key.extend_from_slice(&(values.clone().count() as u64).to_le_bytes());
            for v in values {
                put(&mut key, Some(v.as_bytes()));
            }
        }
        if inputs.body {
            put(&mut key, req.body.media_type.as_deref().map(str::as_bytes));
            key.push(u8::from(req.body.truncated));
            key.push(u8::from(req.body.foreign_charset));
            key.push(u8::from(req.body.encoded));
            let mut h1 = self.body_keys.0.build_hasher();
            let mut h2 = self.body_keys.1.build_hasher();
            h1.write(&req.body.bytes);
            h2.write(&req.body.bytes);
            key.extend_from_slice(&(req.body.bytes.len() as u64).to_le_bytes());
            key.extend_from_slice(&h1.finish().to_le_bytes());
            key.extend_from_slice(&h2.finish().to_le_bytes());
        }
        key.into_boxed_slice()
    }

    /// A cached decision still valid at `now`.
    pub fn get(&self, key: &[u8], now: Timestamp) -> Option<Decision> {
        let e = self.cache.get(key)?;
        if now < e.expires_at {
            Some(e.decision.clone())
        } else {
            self.cache.invalidate(key);
            None
        }
    }

    /// Remember a decision made at `now`, valid until the TTL or `valid_until`, whichever
    /// comes first.
    pub fn insert(&self, key: Box<[u8]>, decision: &Decision, now: Timestamp, valid_until: Option<Timestamp>) {
        let by_ttl = now.checked_add(self.ttl).unwrap_or(now);
        let expires_at = match valid_until {
            Some(t) if t < by_ttl => t,
            _ => by_ttl,
        };
        if expires_at <= now || !self.admit(&key) {
            return;
        }
        self.cache.insert(key, Arc::new(Entry { decision: decision.clone(), expires_at }));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests may panic")]
    use super::*;

    /// A working set that fits the cache ends up cached: admission on second sight and
    /// moka's own admission must not keep a fitting working set out.
    #[test]
    fn a_fitting_working_set_is_cached() {
        let c = DecisionCache::new(CacheOptions { ttl: Duration::from_secs(60), max_entries: 10_000 });
        let now = Timestamp::now();
        let d = Decision::invalid_request();
        for round in 0..6 {
            for k in 0..9_000u32 {
                let key: Box<[u8]> = k.to_le_bytes().to_vec().into_boxed_slice();
                if c.get(&key, now).is_none() {
                    c.insert(key, &d, now, None);
                }
            }
            if round == 0 {
                // One-off keys are not inserted (but for the filter's false positives).
                assert!(c.entry_count() < 90, "{} entries after one round", c.entry_count());
            }
        }
        assert!(c.entry_count() >= 8_500, "{} entries", c.entry_count());
    }
}
