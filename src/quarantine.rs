//! The state the Check pipeline reads and writes, around the [`Store`]: the quarantine list
//! in force (agent-controls.md §5), limit takes (§4) and deny counting, with metrics.
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

use crate::state::memory::{MemoryStore, DEFAULT_MAX_KEYS};
use crate::state::{AutoQuarantine, Quarantine, StateStore, Store, StoreError, Take, TakeOutcome};
use crate::telemetry::StateMetrics;

/// How often the quarantine list is read from the store.
pub const REFRESH: Duration = Duration::from_millis(250);
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
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {
                    let _ = self.refresh(Timestamp::now()).await;
                }
            }
        }
        if let Some(w) = worker {
            w.abort();
        }
    }
}
