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

use crate::policy::eval::Identity;
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

/// Fewest slots of the admission filter (a power of two).
const DOORKEEPER_MIN_SLOTS: usize = 4096;

/// The decision cache.
pub struct DecisionCache {
    cache: moka::sync::Cache<Box<[u8]>, Arc<Entry>>,
    ttl: jiff::SignedDuration,
    body_keys: (RandomState, RandomState),
    // Admission on second sight: a request is inserted only if its key's fingerprint was
    // seen recently, so one-off requests (unique bodies) never pay for an insert.
    doorkeeper: Box<[AtomicU64]>,
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
            // Twice the cache size (a power of two): a working set that fits the cache is
            // admitted on its second round.
            doorkeeper: {
                let slots = usize::try_from(opts.max_entries.saturating_mul(2))
                    .unwrap_or(usize::MAX)
                    .clamp(DOORKEEPER_MIN_SLOTS, 1 << 24)
                    .next_power_of_two();
                (0..slots).map(|_| AtomicU64::new(0)).collect()
            },
            fingerprint_key: RandomState::new(),
        }
    }

    /// Whether this key was seen recently (and remember it if not).
    fn admit(&self, key: &[u8]) -> bool {
        let fp = self.fingerprint_key.hash_one(key) | 1;
        let slot = (fp as usize) & (self.doorkeeper.len() - 1);
        match self.doorkeeper.get(slot) {
            Some(s) => s.swap(fp, Ordering::Relaxed) == fp,
            None => true,
        }
    }

    /// Entries currently held (approximate, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// The key for a request whose path is valid and identity resolved.
    pub fn key(&self, live: &LivePolicy, req: &Request, path: &str, ident: &Identity) -> Box<[u8]> {
        let mut key = Vec::with_capacity(64 + path.len());
        key.extend_from_slice(&live.generation.to_le_bytes());
        put(&mut key, Some(req.method.as_bytes()));
        put(&mut key, Some(req.host.as_bytes()));
        put(&mut key, Some(path.as_bytes()));
        put(&mut key, ident.agent.as_deref().map(str::as_bytes));
        put(&mut key, ident.on_behalf_of.as_deref().map(str::as_bytes));
        let inputs = &live.policy.inputs;
        for name in &inputs.query {
            let values = req.query.iter().filter(|(n, _)| **n == **name);
            key.extend_from_slice(&(values.clone().count() as u64).to_le_bytes());
            for (_, v) in values {
                put(&mut key, Some(v.as_bytes()));
            }
        }
        for name in &inputs.headers {
            put(&mut key, req.header(name).map(str::as_bytes));
        }
        if inputs.body {
            put(&mut key, req.body.media_type.as_deref().map(str::as_bytes));
            key.push(u8::from(req.body.truncated));
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
