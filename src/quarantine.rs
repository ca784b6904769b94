//! The state the Check pipeline reads and writes, around the [`Store`]: the quarantine list
//! and the task grants in force (agent-controls.md §5, §2), holds and approvals (§2), limit
//! takes (§4) and deny counting, with metrics.
//!
//! Task grants are read like quarantines (a local copy, refreshed every [`REFRESH`], changes
//! made here in force at once). Unlike a quarantine, a grant opens: when the store has not
//! been read for [`GRANTS_STALE`], the local task grants are dropped (a revocation made on
//! another replica is never missed for longer than that), and holds wait for the store.
//!
//! The Check reads quarantines from a local copy ([`StateRuntime::is_quarantined`]: one
//! lock-free load, no I/O). The copy is replaced from the store every [`REFRESH`] and at
//! once after a change made here, so a quarantine set on any replica is in force on every
//! replica within a second; when the store cannot be read, the last copy stays in force (a
//! kill switch never fails open). Deny counting for automatic quarantine never delays a
//! Check: on the memory store it completes at once; on Redis it goes through a bounded queue
//! to one worker (a full queue drops and counts).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jiff::Timestamp;
use tokio::sync::mpsc;

use crate::approvals::{Grant, GrantKind, PendingApproval};
use crate::state::memory::{MemoryStore, DEFAULT_MAX_KEYS};
use crate::state::{
    AutoQuarantine, HoldAsk, HoldOutcome, Quarantine, StateStore, Store, StoreError, Take, TakeOutcome,
};
use crate::telemetry::StateMetrics;

/// How often the quarantine list is read from the store.
pub const REFRESH: Duration = Duration::from_millis(250);
/// Task grants read longer ago than this are not trusted (a revocation elsewhere may be
/// missing): they are dropped until the store answers again.
pub const GRANTS_STALE: Duration = Duration::from_secs(1);
/// Deny events waiting for the Redis worker before new ones are dropped.
pub const DENY_QUEUE: usize = 4096;

struct DenyEvent {
    agent: String,
    id: String,
    auto: AutoQuarantine,
    now: Timestamp,
}

/// The store, the quarantine list in force, and the deny queue.
pub struct StateRuntime {
    /// The backend.
    pub store: Store,
    view: ArcSwap<HashMap<Box<str>, Quarantine>>,
    deny_tx: Option<mpsc::Sender<DenyEvent>>,
    deny_rx: std::sync::Mutex<Option<mpsc::Receiver<DenyEvent>>>,
    metrics: Option<StateMetrics>,
    up: AtomicBool,
    /// Local changes (quarantine, lift) so far: a refresh that began before one is discarded,
    /// so an older list never undoes a newer change.
    changes: AtomicU64,
    /// The quarantine list has been read from the store at least once.
    read_once: AtomicBool,
    /// Task grants in force, as last read (or changed here).
    grants: ArcSwap<Vec<Grant>>,
    /// Local grant changes so far (as `changes`, for grants).
    grant_changes: AtomicU64,
    /// When the grants were last read from the store.
    grants_read: std::sync::Mutex<Option<Instant>>,
    /// Where events go (the webhook), if anywhere.
    events: std::sync::Mutex<Option<crate::webhook::Events>>,
}

impl std::fmt::Debug for StateRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateRuntime").field("store", &self.store.backend()).finish()
    }
}

impl StateRuntime {
    /// A runtime over `store`. Call [`StateRuntime::run`] to keep the quarantine list fresh
    /// (and, for Redis, to count denies).
    pub fn new(store: Store, metrics: Option<StateMetrics>) -> StateRuntime {
        let (deny_tx, deny_rx) = match store {
            Store::Redis(_) => {
                let (tx, rx) = mpsc::channel(DENY_QUEUE);
                (Some(tx), Some(rx))
            }
            Store::Memory(_) => (None, None),
        };
        StateRuntime {
            store,
            view: ArcSwap::from_pointee(HashMap::new()),
            deny_tx,
            deny_rx: std::sync::Mutex::new(deny_rx),
            metrics,
            up: AtomicBool::new(true),
            changes: AtomicU64::new(0),
            read_once: AtomicBool::new(false),
            grants: ArcSwap::from_pointee(Vec::new()),
            grant_changes: AtomicU64::new(0),
            grants_read: std::sync::Mutex::new(None),
            events: std::sync::Mutex::new(None),
        }
    }

    /// Send events (`approval.pending`, `agent.quarantined`) to the webhook.
    pub fn set_events(&self, events: crate::webhook::Events) {
        if let Ok(mut e) = self.events.lock() {
            *e = Some(events);
        }
    }

    fn event(&self, mut ev: serde_json::Value) {
        if let Some(o) = ev.as_object_mut() {
            o.insert("time".into(), Timestamp::now().to_string().into());
        }
        let sent = self.events.lock().ok().and_then(|e| e.as_ref().map(|e| e.send(ev)));
        if sent == Some(false) {
            if let Some(m) = &self.metrics {
                m.webhook("dropped");
            }
        }
    }

    /// Metrics, if any.
    pub fn metrics(&self) -> Option<&StateMetrics> {
        self.metrics.as_ref()
    }

    /// The task grant in force that lifts hold `rule` for this caller (its id and approver).
    /// `tools`: the request's MCP tools.
    pub fn task_grant(
        &self,
        rule: &str,
        agent: Option<&str>,
        obo: Option<&str>,
        tools: &[&str],
        now: Timestamp,
    ) -> Option<(String, String)> {
        let grants = self.grants.load();
        if grants.is_empty() || agent.is_none() {
            return None;
        }
        grants.iter().find(|g| g.lifts(rule, agent, obo, tools, now)).map(|g| (g.id.clone(), g.approved_by.clone()))
    }

    /// A held request: spend an approval grant with the limits, or record the pending
    /// approval (and announce a new one).
    pub async fn hold(
        &self,
        ask: HoldAsk<'_>,
        owner: &str,
        takes: &[Take],
        now: Timestamp,
    ) -> Result<HoldOutcome, StoreError> {
        let r = self.timed("hold", self.store.hold(ask.clone(), owner, takes, now)).await;
        if let Some(m) = &self.metrics {
            match &r {
                Ok(HoldOutcome::Held { seen, .. }) if *seen > 0 => {
                    m.approval_event("held");
                    if *seen == 1 {
                        m.approval_event("requested");
                    }
                }
                Ok(HoldOutcome::Lifted { take: TakeOutcome::Taken(_), .. }) => m.approval_event("lifted"),
                _ => {}
            }
        }
        if let Ok(HoldOutcome::Held { seen: 1, expires_at, .. }) = &r {
            let mut p = ask.record.clone();
            p.seen = 1;
            p.expires_at = *expires_at;
            self.event(serde_json::json!({ "type": "approval.pending", "approval": p }));
        }
        r
    }

    /// The pending approvals.
    pub async fn pending(&self, now: Timestamp) -> Result<Vec<PendingApproval>, StoreError> {
        let (list, ended) = self.timed("pending", self.store.pending(now)).await?;
        if let Some(m) = &self.metrics {
            for _ in 0..ended {
                m.approval_event("expired");
            }
            // Denied ones wait for nobody.
            m.pending_approvals(list.iter().filter(|p| p.status == crate::approvals::ApprovalStatus::Pending).count());
        }
        Ok(list)
    }

    /// Approve a pending approval (of `agent`) with `grant`; whether it was pending.
    pub async fn approve(&self, id: &str, agent: Option<&str>, grant: Grant) -> Result<bool, StoreError> {
        let by = grant.approved_by.clone();
        let ok = self.timed("approve", self.store.approve(id, agent, grant)).await?;
        if ok {
            tracing::info!(approval = id, by = %by, "approval granted");
            if let Some(m) = &self.metrics {
                m.approval_event("approved");
            }
        }
        Ok(ok)
    }

    /// Deny a pending approval.
    pub async fn deny_approval(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<Option<PendingApproval>, StoreError> {
        let p = self.timed("deny_approval", self.store.deny_approval(id, by, reason, now)).await?;
        if p.is_some() {
            tracing::info!(approval = id, by, reason, "approval denied");
            if let Some(m) = &self.metrics {
                m.approval_event("denied");
            }
        }
        Ok(p)
    }

    /// Add a task grant: in the store, then in force here at once.
    pub async fn add_grant(&self, grant: Grant) -> Result<(), StoreError> {
        self.timed("add_grant", self.store.add_grant(grant.clone())).await?;
        tracing::info!(grant = %grant.id, by = %grant.approved_by, "task grant added");
        self.grant_changes.fetch_add(1, Ordering::AcqRel);
        let mut next = Vec::clone(&self.grants.load());
        next.retain(|g| g.id != grant.id);
        next.push(grant);
        self.grants.store(Arc::new(next));
        Ok(())
    }

    /// Revoke a grant: in the store, then here at once. Whether there was one.
    pub async fn revoke(&self, id: &str, by: &str) -> Result<bool, StoreError> {
        let had = self.timed("revoke", self.store.revoke(id)).await?;
        self.grant_changes.fetch_add(1, Ordering::AcqRel);
        let mut next = Vec::clone(&self.grants.load());
        let before = next.len();
        next.retain(|g| g.id != id);
        let here = next.len() != before;
        self.grants.store(Arc::new(next));
        if had || here {
            tracing::info!(grant = id, by, "grant revoked");
            if let Some(m) = &self.metrics {
                m.approval_event("revoked");
            }
        }
        Ok(had || here)
    }

    /// Every grant in force, from the store.
    pub async fn grants(&self, now: Timestamp) -> Result<Vec<Grant>, StoreError> {
        self.timed("grants", self.store.grants(now)).await
    }

    /// Read the task grants into the local copy; when they cannot be read for longer than
    /// [`GRANTS_STALE`], the local copy is emptied (holds then wait for the store).
    pub async fn refresh_grants(&self, now: Timestamp) -> Result<(), StoreError> {
        let before = self.grant_changes.load(Ordering::Acquire);
        match self.grants(now).await {
            Ok(list) => {
                if let Ok(mut t) = self.grants_read.lock() {
                    *t = Some(Instant::now());
                }
                if let Some(m) = &self.metrics {
                    let task = list.iter().filter(|g| matches!(g.kind, GrantKind::Task { .. })).count();
                    m.grants_in_force(list.len() - task, task);
                }
                if self.grant_changes.load(Ordering::Acquire) == before {
                    let task: Vec<Grant> =
                        list.into_iter().filter(|g| matches!(g.kind, GrantKind::Task { .. })).collect();
                    self.grants.store(Arc::new(task));
                }
                Ok(())
            }
            Err(e) => {
                let stale = self.grants_read.lock().ok().and_then(|t| *t).is_none_or(|t| t.elapsed() > GRANTS_STALE);
                if stale && !self.grants.load().is_empty() {
                    tracing::warn!(error = %e, "task grants not readable for over 1s: none are in force until they are");
                    self.grants.store(Arc::new(Vec::new()));
                }
                Err(e)
            }
        }
    }

    /// An in-memory runtime with nothing persisted (tests, `check`, the default).
    pub fn memory() -> StateRuntime {
        StateRuntime::new(
            Store::Memory(Arc::new(MemoryStore::ephemeral(DEFAULT_MAX_KEYS, crate::state::DEFAULT_MAX_KEYS_PER_AGENT))),
            None,
        )
    }

    /// Whether the store answered its last operation (for `/readyz`).
    pub fn store_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether the quarantine list has been read from the store at least once: until then a
    /// replica cannot know whom to refuse, and `/readyz` says not ready (a pod started while
    /// Redis is down takes no traffic rather than letting quarantined agents through).
    pub fn quarantines_known(&self) -> bool {
        self.read_once.load(Ordering::Acquire)
    }

    /// The quarantine of `agent` in force at `now`, from the local copy.
    pub fn is_quarantined(&self, agent: &str, now: Timestamp) -> bool {
        let view = self.view.load();
        !view.is_empty() && view.get(agent).is_some_and(|q| q.in_force(now))
    }

    /// The quarantines in force, as last read.
    pub fn quarantines(&self, now: Timestamp) -> Vec<Quarantine> {
        let mut list: Vec<Quarantine> = self.view.load().values().filter(|q| q.in_force(now)).cloned().collect();
        list.sort_by(|a, b| a.agent.cmp(&b.agent));
        list
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let r = f.await;
        if let Some(m) = &self.metrics {
            m.operation(op, r.as_ref().err(), start.elapsed().as_secs_f64());
        }
        let up = !matches!(r, Err(StoreError::Timeout | StoreError::Unavailable(_)));
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(store = self.store.backend(), "state store reachable again");
            } else if let Err(e) = &r {
                tracing::warn!(store = self.store.backend(), error = %e, "state store unreachable");
            }
        }
        if let Some(m) = &self.metrics {
            m.store_up(self.up.load(Ordering::Relaxed));
        }
        r
    }

    /// Take from every bucket or from none.
    pub async fn take(&self, owner: &str, takes: &[Take], now: Timestamp) -> Result<TakeOutcome, StoreError> {
        self.timed("take", self.store.take(owner, takes, now)).await
    }

    /// Count a deny of `agent` toward automatic quarantine.
    pub async fn count_deny(&self, agent: &str, id: &str, auto: AutoQuarantine, now: Timestamp) {
        match &self.deny_tx {
            None => {
                let r = self.timed("count_deny", self.store.count_deny(agent, id, auto, now)).await;
                self.after_count(r);
            }
            Some(tx) => {
                let ev = DenyEvent { agent: agent.to_owned(), id: id.to_owned(), auto, now };
                if tx.try_send(ev).is_err() {
                    if let Some(m) = &self.metrics {
                        m.deny_event_dropped();
                    }
                }
            }
        }
    }

    fn after_count(&self, r: Result<Option<Quarantine>, StoreError>) {
        if let Ok(Some(q)) = r {
            tracing::warn!(agent = %q.agent, until = %q.until, reason = %q.reason, "agent quarantined automatically");
            if let Some(m) = &self.metrics {
                m.quarantined("auto");
            }
            self.event(serde_json::json!({ "type": "agent.quarantined", "quarantine": q.view() }));
            self.apply(q);
        }
    }

    fn apply(&self, q: Quarantine) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        let mut next = HashMap::clone(&self.view.load());
        next.insert(Box::from(q.agent.as_str()), q);
        self.publish(next);
    }

    fn publish(&self, view: HashMap<Box<str>, Quarantine>) {
        if let Some(m) = &self.metrics {
            let now = Timestamp::now();
            m.quarantined_agents(view.values().filter(|q| q.in_force(now)).count());
        }
        self.view.store(Arc::new(view));
    }

    /// Quarantine an agent by hand (the control API): in the store, then in force here at once.
    pub async fn quarantine(&self, q: Quarantine) -> Result<(), StoreError> {
        self.timed("quarantine", self.store.quarantine(q.clone())).await?;
        tracing::warn!(agent = %q.agent, until = %q.until, by = %q.by, reason = %q.reason, "agent quarantined");
        if let Some(m) = &self.metrics {
            m.quarantined("manual");
        }
        self.event(serde_json::json!({ "type": "agent.quarantined", "quarantine": q.view() }));
        self.apply(q);
        Ok(())
    }

    /// Lift a quarantine: in the store, then here at once. Whether there was one.
    pub async fn lift(&self, agent: &str, by: &str) -> Result<bool, StoreError> {
        let had = self.timed("lift", self.store.lift(agent)).await?;
        self.changes.fetch_add(1, Ordering::AcqRel);
        let mut next = HashMap::clone(&self.view.load());
        let here = next.remove(agent).is_some();
        self.publish(next);
        tracing::info!(agent, by, "quarantine lifted");
        Ok(had || here)
    }

    /// Read the quarantine list from the store into the local copy; on failure the last
    /// copy stays.
    pub async fn refresh(&self, now: Timestamp) -> Result<(), StoreError> {
        let before = self.changes.load(Ordering::Acquire);
        let list = self.timed("quarantines", self.store.quarantines(now)).await?;
        self.read_once.store(true, Ordering::Release);
        if self.changes.load(Ordering::Acquire) != before {
            // A change made here while this list was read: the list may predate it. The next
            // refresh reads a list that includes it.
            return Ok(());
        }
        self.publish(list.into_iter().map(|q| (Box::from(q.agent.as_str()), q)).collect());
        Ok(())
    }

    /// Keep the quarantine list fresh and (Redis) count denies until `stop` resolves.
    pub async fn run(self: Arc<Self>, stop: impl Future<Output = ()> + Send) {
        let rx = self.deny_rx.lock().ok().and_then(|mut g| g.take());
        let worker = rx.map(|mut rx| {
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    let r = me.timed("count_deny", me.store.count_deny(&ev.agent, &ev.id, ev.auto, ev.now)).await;
                    me.after_count(r);
                }
            })
        });
        tokio::pin!(stop);
        if let Store::Redis(r) = &self.store {
            if let Err(e) = r.load_scripts().await {
                tracing::warn!(error = %e, "state store scripts not preloaded; loaded on first use");
            }
        }
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {
                    let _ = self.refresh(Timestamp::now()).await;
                    let _ = self.refresh_grants(Timestamp::now()).await;
                    // The pending-approvals gauge (and the cleanup of ended ones), every 5 s.
                    if ticks.is_multiple_of(20) && self.metrics.is_some() {
                        let _ = self.pending(Timestamp::now()).await;
                    }
                    ticks = ticks.wrapping_add(1);
                }
            }
        }
        if let Some(w) = worker {
            w.abort();
        }
    }
}
