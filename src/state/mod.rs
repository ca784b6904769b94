//! The state store (agent-controls.md §7): what hallpass remembers between Checks and shares
//! between replicas — limit counters (GCRA), deny counts for automatic quarantine,
//! quarantines, pending approvals and grants (single use across replicas).
//!
//! One trait, [`StateStore`], two backends: [`memory::MemoryStore`] (the default, one replica;
//! quarantines survive a restart when `state.dir` is set) and [`redis::RedisStore`] (replicas
//! share everything; every operation is one atomic script or command, one round trip).
//! [`Store`] is the one the server runs, chosen by the settings file.

pub mod memory;
pub mod redis;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use crate::approvals::{Grant, PendingApproval};

/// Why a store operation failed. The caller decides what that means for a request
/// (`on_store_error`, or the last quarantine list read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The operation did not finish within the store's timeout.
    Timeout,
    /// The store could not be reached or answered with an error.
    Unavailable(String),
    /// The store is full: the memory store keeps at most this many limit keys and all are in
    /// use, or Redis is out of memory (0). A limit never opens on it.
    Full(usize),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Timeout => write!(f, "state store timed out"),
            StoreError::Unavailable(e) => write!(f, "state store unavailable: {e}"),
            StoreError::Full(0) => write!(f, "state store full (out of memory)"),
            StoreError::Full(n) => write!(f, "state store full: {n} limit keys in use"),
        }
    }
}

impl std::error::Error for StoreError {}

/// One GCRA bucket to take from: `key` (already prefixed with the rule id and limit index),
/// the time one unit adds (`interval_us` = the period / the rate), how many units may come at
/// once (`burst`), and this request's cost in microseconds of the bucket (`cost` × interval).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// The bucket.
    pub key: String,
    /// Microseconds one unit of cost adds to the bucket.
    pub interval_us: u64,
    /// Units that may come at once.
    pub burst: u64,
    /// This request's cost, in microseconds (cost × `interval_us`, rounded up).
    pub cost_us: u64,
}

/// What a bucket said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Whole units left after this request (0 when limited).
    pub remaining: u64,
    /// Microseconds until the bucket is full again.
    pub reset_us: u64,
}

/// The answer to a set of [`Take`]s, taken all or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOutcome {
    /// Every bucket had room; all were charged. One [`Bucket`] per take, in order.
    Taken(Vec<Bucket>),
    /// Bucket `index` had no room: nothing was charged. Retry after `retry_after_us`.
    Limited {
        /// Which take.
        index: usize,
        /// Microseconds until it would go through.
        retry_after_us: u64,
    },
    /// Bucket `index` would be new, and its owner (the requesting agent) already has its
    /// quota of buckets in use: nothing was charged. Key parts a client chooses must not let
    /// one agent fill the store for everyone.
    OverQuota {
        /// Which take.
        index: usize,
    },
}

/// Default most buckets one agent may have in use at once.
pub const DEFAULT_MAX_KEYS_PER_AGENT: usize = 1_000;

/// The GCRA step for one bucket (the same arithmetic as the Redis script): the theoretical
/// arrival time `tat` (µs), `now` (µs). `Ok(new_tat)` when the request fits, else
/// `Err(retry_after_us)`.
pub fn gcra(tat: i64, now: i64, t: &Take) -> Result<i64, u64> {
    let tat = tat.max(now);
    let new_tat = tat.saturating_add(i64::try_from(t.cost_us).unwrap_or(i64::MAX));
    let tolerance = i64::try_from(t.interval_us.saturating_mul(t.burst)).unwrap_or(i64::MAX);
    let allow_at = new_tat.saturating_sub(tolerance);
    if now < allow_at {
        Err(u64::try_from(allow_at - now).unwrap_or(u64::MAX))
    } else {
        Ok(new_tat)
    }
}

/// What a bucket looks like after `new_tat` was stored at `now`.
pub fn bucket_after(new_tat: i64, now: i64, t: &Take) -> Bucket {
    let used = u64::try_from(new_tat.saturating_sub(now)).unwrap_or(0);
    let tolerance = t.interval_us.saturating_mul(t.burst);
    let remaining = tolerance.saturating_sub(used).checked_div(t.interval_us).unwrap_or(0);
    Bucket { remaining, reset_us: used }
}

/// A quarantined agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// The agent id.
    pub agent: String,
    /// When it began (RFC 3339).
    pub since: Timestamp,
    /// When it ends by itself (RFC 3339): at or after this instant it is no longer in force.
    pub until: Timestamp,
    /// Why (free text from the approver, or the automatic rule).
    pub reason: String,
    /// Who: an approver's name, or `auto`.
    pub by: String,
}

impl Quarantine {
    /// In force at `now`.
    pub fn in_force(&self, now: Timestamp) -> bool {
        now < self.until
    }

    /// As the control API and events show it: `until` null for a quarantine until lifted.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "agent": self.agent,
            "since": self.since.to_string(),
            "until": if self.until == Timestamp::MAX { serde_json::Value::Null } else { self.until.to_string().into() },
            "reason": self.reason,
            "by": self.by,
        })
    }
}

/// `settings.quarantine` of the policy: an agent denied `after_denies` times within `within`
/// is quarantined for `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoQuarantine {
    /// Denies that trigger it.
    pub after_denies: u32,
    /// The sliding window they are counted in.
    pub within: Duration,
    /// How long the quarantine lasts.
    pub duration: Duration,
}

/// A held request's approval, asked of the store in one step: if an approval grant for
/// `approval_id` is in force, take the limits of the rule the request then goes on to
/// (`takes`) and spend one use of the grant — both or neither; otherwise record (or refresh)
/// the pending approval.
#[derive(Debug, Clone)]
pub struct HoldAsk<'a> {
    /// The approval id.
    pub approval_id: &'a str,
    /// The pending approval to record when there is none (`seen` is counted by the store).
    pub record: &'a crate::approvals::PendingApproval,
    /// How long the pending approval lives after this hold.
    pub pending_ttl: Duration,
    /// Most pending approvals kept.
    pub max_pending: usize,
    /// Most pending approvals one agent (the `owner`) may have.
    pub max_pending_per_agent: usize,
    /// What a grant must be bound to, besides the approval id, to lift this request.
    pub binding: &'a str,
}

/// What the store answered to a [`HoldAsk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// An approval grant is in force. `take` says what the limits did: a use of the grant
    /// was spent only if they were `Taken`.
    Lifted {
        /// The grant's id.
        grant: String,
        /// Who approved it.
        approved_by: String,
        /// The limits' answer.
        take: TakeOutcome,
    },
    /// No grant: the request stays held.
    Held {
        /// pending | denied.
        status: crate::approvals::ApprovalStatus,
        /// When the pending approval expires.
        expires_at: Timestamp,
        /// How many times it was held, this one included (1: new). 0: not recorded (the
        /// store holds `max_pending` already, or the agent `max_pending_per_agent`).
        seen: u64,
    },
}

/// The operations every backend offers. Times come from the caller for the memory store (so
/// tests pin the clock); the Redis store reads Redis's own clock for limits and deny counts, so
/// replicas whose clocks differ still share one bucket.
pub trait StateStore: Send + Sync {
    /// Take from every bucket, or from none (a request over any limit consumes nothing).
    /// `owner`: the requesting agent (`""` when unidentified), whose new buckets count against
    /// its quota.
    fn take(
        &self,
        owner: &str,
        takes: &[Take],
        now: Timestamp,
    ) -> impl Future<Output = Result<TakeOutcome, StoreError>> + Send;

    /// Count one deny of `agent` (`id` makes it unique); when the count within the window
    /// reaches the threshold, quarantine the agent (unless it already is) and return the
    /// new quarantine.
    fn count_deny(
        &self,
        agent: &str,
        id: &str,
        auto: AutoQuarantine,
        now: Timestamp,
    ) -> impl Future<Output = Result<Option<Quarantine>, StoreError>> + Send;

    /// Quarantine an agent (replacing any quarantine it is under).
    fn quarantine(&self, q: Quarantine) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Lift an agent's quarantine; whether there was one.
    fn lift(&self, agent: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every quarantine in force at `now`.
    fn quarantines(&self, now: Timestamp) -> impl Future<Output = Result<Vec<Quarantine>, StoreError>> + Send;

    /// Whether the store answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A held request: spend an approval grant (with the limits), or record the pending
    /// approval. `owner` and `takes` as for [`StateStore::take`].
    fn hold(
        &self,
        ask: HoldAsk<'_>,
        owner: &str,
        takes: &[Take],
        now: Timestamp,
    ) -> impl Future<Output = Result<HoldOutcome, StoreError>> + Send;

    /// The pending approvals at `now`, oldest first, and how many ended (unanswered) since the
    /// last call on this store: they are dropped.
    fn pending(&self, now: Timestamp) -> impl Future<Output = Result<(Vec<PendingApproval>, u64), StoreError>> + Send;

    /// Approve a pending approval (of `agent`): it is replaced by `grant` (an approval grant
    /// for it, bound as the pending approval was). `false`: no such pending approval.
    fn approve(
        &self,
        id: &str,
        agent: Option<&str>,
        grant: Grant,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deny a pending approval (it stays, `denied`, until it expires). `None`: no such one.
    fn deny_approval(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<Option<PendingApproval>, StoreError>> + Send;

    /// Add a grant (a task grant; approval grants come from [`StateStore::approve`]).
    fn add_grant(&self, grant: Grant) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Revoke a grant; whether there was one.
    fn revoke(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every grant in force at `now` (approval grants with their uses left).
    fn grants(&self, now: Timestamp) -> impl Future<Output = Result<Vec<Grant>, StoreError>> + Send;
}

/// The store the server runs: one of the backends.
#[derive(Debug, Clone)]
pub enum Store {
    /// In process.
    Memory(std::sync::Arc<memory::MemoryStore>),
    /// Shared by replicas.
    Redis(redis::RedisStore),
}

impl Store {
    /// `memory` or `redis`, for metrics and logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }
}

impl StateStore for Store {
    async fn take(&self, owner: &str, takes: &[Take], now: Timestamp) -> Result<TakeOutcome, StoreError> {
        match self {
            Store::Memory(m) => m.take(owner, takes, now).await,
            Store::Redis(r) => r.take(owner, takes, now).await,
        }
    }

    async fn count_deny(
        &self,
        agent: &str,
        id: &str,
        auto: AutoQuarantine,
        now: Timestamp,
    ) -> Result<Option<Quarantine>, StoreError> {
        match self {
            Store::Memory(m) => m.count_deny(agent, id, auto, now).await,
            Store::Redis(r) => r.count_deny(agent, id, auto, now).await,
        }
    }

    async fn quarantine(&self, q: Quarantine) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.quarantine(q).await,
            Store::Redis(r) => r.quarantine(q).await,
        }
    }

    async fn lift(&self, agent: &str) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => m.lift(agent).await,
            Store::Redis(r) => r.lift(agent).await,
        }
    }

    async fn quarantines(&self, now: Timestamp) -> Result<Vec<Quarantine>, StoreError> {
        match self {
            Store::Memory(m) => m.quarantines(now).await,
            Store::Redis(r) => r.quarantines(now).await,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.ping().await,
            Store::Redis(r) => r.ping().await,
        }
    }

    async fn hold(
        &self,
        ask: HoldAsk<'_>,
        owner: &str,
        takes: &[Take],
        now: Timestamp,
    ) -> Result<HoldOutcome, StoreError> {
        match self {
            Store::Memory(m) => m.hold(ask, owner, takes, now).await,
            Store::Redis(r) => r.hold(ask, owner, takes, now).await,
        }
    }

    async fn pending(&self, now: Timestamp) -> Result<(Vec<PendingApproval>, u64), StoreError> {
        match self {
            Store::Memory(m) => m.pending(now).await,
            Store::Redis(r) => r.pending(now).await,
        }
    }

    async fn approve(&self, id: &str, agent: Option<&str>, grant: Grant) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => m.approve(id, agent, grant).await,
            Store::Redis(r) => r.approve(id, agent, grant).await,
        }
    }

    async fn deny_approval(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<Option<PendingApproval>, StoreError> {
        match self {
            Store::Memory(m) => m.deny_approval(id, by, reason, now).await,
            Store::Redis(r) => r.deny_approval(id, by, reason, now).await,
        }
    }

    async fn add_grant(&self, grant: Grant) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => m.add_grant(grant).await,
            Store::Redis(r) => r.add_grant(grant).await,
        }
    }

    async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => m.revoke(id).await,
            Store::Redis(r) => r.revoke(id).await,
        }
    }

    async fn grants(&self, now: Timestamp) -> Result<Vec<Grant>, StoreError> {
        match self {
            Store::Memory(m) => m.grants(now).await,
            Store::Redis(r) => r.grants(now).await,
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn micros(t: Timestamp) -> i64 {
    t.as_microsecond()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests may panic")]
    use super::*;

    fn take(interval_us: u64, burst: u64, cost: u64) -> Take {
        Take { key: "k".into(), interval_us, burst, cost_us: cost * interval_us }
    }

    #[test]
    fn gcra_lets_a_burst_through_then_one_per_interval() {
        let t = take(1_000_000, 3, 1);
        let mut tat = 0;
        let now = 10_000_000;
        for _ in 0..3 {
            tat = gcra(tat, now, &t).unwrap();
        }
        // The fourth at the same instant waits exactly one interval.
        assert_eq!(gcra(tat, now, &t), Err(1_000_000));
        assert_eq!(gcra(tat, now + 999_999, &t), Err(1));
        let after = gcra(tat, now + 1_000_000, &t).unwrap();
        assert_eq!(bucket_after(after, now + 1_000_000, &t), Bucket { remaining: 0, reset_us: 3_000_000 });
    }

    #[test]
    fn a_cost_above_the_burst_never_fits() {
        let t = take(1_000, 5, 6);
        assert!(gcra(0, 1_000_000, &t).is_err());
        let t = take(1_000, 5, 5);
        assert_eq!(bucket_after(gcra(0, 1_000_000, &t).unwrap(), 1_000_000, &t).remaining, 0);
    }
}
