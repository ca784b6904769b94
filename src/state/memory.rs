//! The in-process store: limit buckets and deny counts in bounded maps, quarantines in a
//! map written through to `state.dir/quarantine.json` (atomic rename) when a directory is
//! set, so a quarantine survives a restart. Every operation completes without waiting.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use jiff::Timestamp;

use super::{
    bucket_after, gcra, micros, AutoQuarantine, Grant, HoldAsk, HoldOutcome, PendingApproval, Quarantine, StateStore,
    StoreError, Take, TakeOutcome,
};
use crate::approvals::{ApprovalStatus, GrantKind};

/// Default most limit buckets kept (~100 bytes each plus the key).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The in-process store.
#[derive(Debug)]
pub struct MemoryStore {
    /// Limit buckets: key → (theoretical arrival time in µs, owner) and buckets in use per
    /// owner. Bounded by `max_keys` in all and `max_per_owner` per owner.
    buckets: Mutex<Buckets>,
    /// Deny times (µs) per agent, at most `after_denies` each; bounded by `max_keys` agents.
    denies: Mutex<HashMap<Box<str>, VecDeque<i64>>>,
    /// Quarantines by agent.
    quarantines: Mutex<HashMap<String, Quarantine>>,
    /// Pending approvals and grants.
    approvals: Mutex<Approvals>,
    max_keys: usize,
    max_per_owner: usize,
    dir: Option<PathBuf>,
}

/// Pending approvals by id (bounded by `settings.approvals.max_pending`) and grants by id
/// (written through to `state.dir/grants.json`).
#[derive(Debug, Default)]
struct Approvals {
    pending: HashMap<String, PendingApproval>,
    grants: HashMap<String, Grant>,
    /// Pending approvals that ended unanswered since the last `pending` call.
    ended: u64,
}

impl Approvals {
    /// Drop the pending approvals ended at `now`, counting them.
    fn drop_ended(&mut self, now: Timestamp) {
        let before = self.pending.len();
        self.pending.retain(|_, p| now < p.expires_at);
        self.ended += (before - self.pending.len()) as u64;
    }
}

#[derive(Debug, Default)]
struct Buckets {
    tats: HashMap<Box<str>, (i64, Box<str>)>,
    per_owner: HashMap<Box<str>, usize>,
    /// When buckets whose time has passed were last swept (µs): at most once a second, so a
    /// client at its quota cannot make every request sweep the whole map.
    swept: i64,
}

impl Buckets {
    /// Forget the buckets whose arrival time has passed (they are full again: nothing lost).
    fn sweep(&mut self, now: i64) {
        let per_owner = &mut self.per_owner;
        self.tats.retain(|_, (tat, owner)| {
            let keep = *tat > now;
            if !keep {
                if let Some(n) = per_owner.get_mut(&**owner) {
                    *n = n.saturating_sub(1);
                }
            }
            keep
        });
        per_owner.retain(|_, n| *n > 0);
        self.swept = now;
    }
}

impl MemoryStore {
    /// A store keeping at most `max_keys` limit buckets, nothing persisted.
    pub fn ephemeral(max_keys: usize, max_per_owner: usize) -> MemoryStore {
        MemoryStore {
            buckets: Mutex::new(Buckets::default()),
            denies: Mutex::new(HashMap::new()),
            quarantines: Mutex::new(HashMap::new()),
            approvals: Mutex::new(Approvals::default()),
            max_keys,
            max_per_owner,
            dir: None,
        }
    }

    /// A store keeping at most `max_keys` limit buckets (and as many deny counters); with
    /// `dir`, quarantines are read from and written to `dir/quarantine.json`.
    pub fn new(max_keys: usize, max_per_owner: usize, dir: Option<PathBuf>) -> Result<MemoryStore, String> {
        let (mut quarantines, mut grants) = (HashMap::new(), HashMap::new());
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).map_err(|e| format!("state.dir {}: {e}", d.display()))?;
            let list: Vec<Quarantine> = read_list(d, "quarantine.json", "a quarantine list")?;
            quarantines.extend(list.into_iter().map(|q| (q.agent.clone(), q)));
            let list: Vec<Grant> = read_list(d, "grants.json", "a grant list")?;
            grants.extend(list.into_iter().map(|g| (g.id.clone(), g)));
        }
        Ok(MemoryStore {
            buckets: Mutex::new(Buckets::default()),
            denies: Mutex::new(HashMap::new()),
            quarantines: Mutex::new(quarantines),
            approvals: Mutex::new(Approvals { pending: HashMap::new(), grants, ended: 0 }),
            max_keys,
            max_per_owner,
            dir,
        })
    }

    fn persist(&self, map: &HashMap<String, Quarantine>) -> Result<(), StoreError> {
        let mut list: Vec<&Quarantine> = map.values().collect();
        list.sort_by(|a, b| a.agent.cmp(&b.agent));
        self.write("quarantine.json", &list)
    }

    fn persist_grants(&self, map: &HashMap<String, Grant>) -> Result<(), StoreError> {
        let mut list: Vec<&Grant> = map.values().collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        self.write("grants.json", &list)
    }

    /// Add (or replace) a grant and write the grants through; a failed write undoes it, so
    /// what the API reports (an error) is true.
    fn put_grant(&self, a: &mut Approvals, grant: Grant) -> Result<(), StoreError> {
        let gid = grant.id.clone();
        let old = a.grants.insert(gid.clone(), grant);
        if let Err(e) = self.persist_grants(&a.grants) {
            match old {
                Some(o) => a.grants.insert(gid, o),
                None => a.grants.remove(&gid),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Write `name` in `state.dir` atomically (a temporary file renamed over it).
    fn write<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let text = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, dir.join(name)))
            .map_err(|e| StoreError::Unavailable(format!("writing {}: {e}", dir.display())))
    }

    /// GCRA over every bucket, all or nothing, under the buckets lock.
    fn take_locked(&self, owner: &str, takes: &[Take], now: Timestamp) -> Result<TakeOutcome, StoreError> {
        let now = micros(now);
        let mut b = self.buckets.lock().map_err(poisoned)?;
        let mut new_tats = Vec::with_capacity(takes.len());
        for (index, t) in takes.iter().enumerate() {
            let tat = b.tats.get(t.key.as_str()).map_or(now, |(tat, _)| *tat);
            match gcra(tat, now, t) {
                Ok(n) => new_tats.push(n),
                Err(retry_after_us) => return Ok(TakeOutcome::Limited { index, retry_after_us }),
            }
        }
        let first_new = takes.iter().position(|t| !b.tats.contains_key(t.key.as_str()));
        if let Some(index) = first_new {
            let new_keys = takes.iter().filter(|t| !b.tats.contains_key(t.key.as_str())).count();
            let over = |b: &Buckets| {
                (
                    b.tats.len() + new_keys > self.max_keys,
                    b.per_owner.get(owner).copied().unwrap_or(0) + new_keys > self.max_per_owner,
                )
            };
            if (over(&b).0 || over(&b).1) && now.saturating_sub(b.swept) >= 1_000_000 {
                b.sweep(now);
            }
            match over(&b) {
                (_, true) => return Ok(TakeOutcome::OverQuota { index }),
                (true, false) => return Err(StoreError::Full(self.max_keys)),
                (false, false) => {}
            }
        }
        let mut buckets = Vec::with_capacity(takes.len());
        for (t, n) in takes.iter().zip(new_tats) {
            buckets.push(bucket_after(n, now, t));
            match b.tats.get_mut(t.key.as_str()) {
                Some(v) => v.0 = n,
                None => {
                    b.tats.insert(Box::from(t.key.as_str()), (n, Box::from(owner)));
                    *b.per_owner.entry(Box::from(owner)).or_default() += 1;
                }
            }
        }
        Ok(TakeOutcome::Taken(buckets))
    }
}

/// A JSON list kept in `state.dir` (empty when the file does not exist yet).
fn read_list<T: serde::de::DeserializeOwned>(dir: &std::path::Path, name: &str, what: &str) -> Result<Vec<T>, String> {
    let file = dir.join(name);
    match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: not {what}: {e}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Unavailable("memory store lock poisoned".into())
}

impl StateStore for MemoryStore {
    async fn take(&self, owner: &str, takes: &[Take], now: Timestamp) -> Result<TakeOutcome, StoreError> {
        self.take_locked(owner, takes, now)
    }

    async fn count_deny(
        &self,
        agent: &str,
        _id: &str,
        auto: AutoQuarantine,
        now: Timestamp,
    ) -> Result<Option<Quarantine>, StoreError> {
        let at = micros(now);
        let window = i64::try_from(auto.within.as_micros()).unwrap_or(i64::MAX);
        let reached = {
            let mut map = self.denies.lock().map_err(poisoned)?;
            if !map.contains_key(agent) && map.len() >= self.max_keys {
                map.retain(|_, times| times.back().is_some_and(|t| at.saturating_sub(*t) < window));
                if map.len() >= self.max_keys {
                    return Err(StoreError::Full(self.max_keys));
                }
            }
            let times = map.entry(Box::from(agent)).or_default();
            times.push_back(at);
            while times.front().is_some_and(|t| at.saturating_sub(*t) >= window) {
                times.pop_front();
            }
            while times.len() > auto.after_denies as usize {
                times.pop_front();
            }
            let reached = times.len() >= auto.after_denies as usize;
            if reached {
                map.remove(agent);
            }
            reached
        };
        if !reached {
            return Ok(None);
        }
        let mut q = self.quarantines.lock().map_err(poisoned)?;
        if q.get(agent).is_some_and(|e| e.in_force(now)) {
            return Ok(None);
        }
        let entry = auto_entry(agent, auto, now);
        q.insert(agent.to_owned(), entry.clone());
        // The quarantine is in force here even if it cannot be written to `state.dir` (a kill
        // switch never fails open); it would not survive a restart.
        if let Err(e) = self.persist(&q) {
            tracing::warn!(error = %e, agent, "automatic quarantine not persisted");
        }
        Ok(Some(entry))
    }

    async fn quarantine(&self, entry: Quarantine) -> Result<(), StoreError> {
        let mut q = self.quarantines.lock().map_err(poisoned)?;
        let agent = entry.agent.clone();
        let old = q.insert(agent.clone(), entry);
        if let Err(e) = self.persist(&q) {
            // Not persisted: the change is undone, so what the API reports (an error) is true.
            match old {
                Some(o) => q.insert(agent, o),
                None => q.remove(&agent),
            };
            return Err(e);
        }
        Ok(())
    }

    async fn lift(&self, agent: &str) -> Result<bool, StoreError> {
        let mut q = self.quarantines.lock().map_err(poisoned)?;
        let Some(old) = q.remove(agent) else { return Ok(false) };
        if let Err(e) = self.persist(&q) {
            // Not persisted: the quarantine stays in force (never lifted by a failed call).
            q.insert(agent.to_owned(), old);
            return Err(e);
        }
        Ok(true)
    }

    async fn quarantines(&self, now: Timestamp) -> Result<Vec<Quarantine>, StoreError> {
        let mut q = self.quarantines.lock().map_err(poisoned)?;
        let before = q.len();
        q.retain(|_, e| e.in_force(now));
        if q.len() != before {
            // Ended quarantines are gone either way; a failed write only leaves them on disk,
            // where they are ended too.
            if let Err(e) = self.persist(&q) {
                tracing::warn!(error = %e, "ended quarantines not removed from state.dir");
            }
        }
        let mut list: Vec<Quarantine> = q.values().cloned().collect();
        list.sort_by(|a, b| a.agent.cmp(&b.agent));
        Ok(list)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn hold(
        &self,
        ask: HoldAsk<'_>,
        owner: &str,
        takes: &[Take],
        now: Timestamp,
    ) -> Result<HoldOutcome, StoreError> {
        let mut a = self.approvals.lock().map_err(poisoned)?;
        let gid = Grant::approval_grant_id(ask.approval_id);
        let live = a.grants.get(&gid).filter(|g| g.in_force(now)).and_then(|g| match &g.kind {
            GrantKind::Approval { uses, binding, .. } if *uses > 0 && binding == ask.binding => {
                Some((g.approved_by.clone(), *uses))
            }
            _ => None,
        });
        if let Some((approved_by, uses)) = live {
            let take = self.take_locked(owner, takes, now)?;
            if matches!(take, TakeOutcome::Taken(_)) {
                if uses <= 1 {
                    let old = a.grants.remove(&gid);
                    if let Err(e) = self.persist_grants(&a.grants) {
                        // Spent in memory either way (single use never becomes two); only a
                        // restart could bring it back.
                        tracing::warn!(error = %e, grant = %gid, "spent grant not removed from state.dir");
                    }
                    drop(old);
                } else if let Some(GrantKind::Approval { uses, .. }) = a.grants.get_mut(&gid).map(|g| &mut g.kind) {
                    *uses -= 1;
                    if let Err(e) = self.persist_grants(&a.grants) {
                        tracing::warn!(error = %e, grant = %gid, "grant use not written to state.dir");
                    }
                }
            }
            return Ok(HoldOutcome::Lifted { grant: gid, approved_by, take });
        }
        a.drop_ended(now);
        let expires_at = crate::approvals::add(now, ask.pending_ttl);
        if let Some(p) = a.pending.get_mut(ask.approval_id) {
            p.seen += 1;
            p.expires_at = expires_at;
            return Ok(HoldOutcome::Held { status: p.status, expires_at, seen: p.seen });
        }
        let agent = ask.record.agent.as_deref();
        if a.pending.len() >= ask.max_pending
            || a.pending.values().filter(|p| p.agent.as_deref() == agent).count() >= ask.max_pending_per_agent
        {
            return Ok(HoldOutcome::Held { status: ApprovalStatus::Pending, expires_at, seen: 0 });
        }
        let mut p = ask.record.clone();
        p.seen = 1;
        p.expires_at = expires_at;
        a.pending.insert(ask.approval_id.to_owned(), p);
        Ok(HoldOutcome::Held { status: ApprovalStatus::Pending, expires_at, seen: 1 })
    }

    async fn pending(&self, now: Timestamp) -> Result<(Vec<PendingApproval>, u64), StoreError> {
        let mut a = self.approvals.lock().map_err(poisoned)?;
        a.drop_ended(now);
        let mut list: Vec<PendingApproval> = a.pending.values().cloned().collect();
        list.sort_by(|x, y| x.created_at.cmp(&y.created_at).then_with(|| x.id.cmp(&y.id)));
        Ok((list, std::mem::take(&mut a.ended)))
    }

    async fn approve(&self, id: &str, _agent: Option<&str>, mut grant: Grant) -> Result<bool, StoreError> {
        let mut a = self.approvals.lock().map_err(poisoned)?;
        let now = grant.created_at;
        let Some(pending) = a.pending.get(id).filter(|p| now < p.expires_at) else { return Ok(false) };
        if let GrantKind::Approval { binding, .. } = &mut grant.kind {
            binding.clone_from(&pending.binding);
        }
        self.put_grant(&mut a, grant)?;
        a.pending.remove(id);
        Ok(true)
    }

    async fn deny_approval(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<Option<PendingApproval>, StoreError> {
        let mut a = self.approvals.lock().map_err(poisoned)?;
        let Some(p) = a.pending.get_mut(id).filter(|p| now < p.expires_at) else { return Ok(None) };
        p.status = ApprovalStatus::Denied;
        p.decided_by = Some(by.to_owned());
        p.reason = Some(reason.to_owned());
        Ok(Some(p.clone()))
    }

    async fn add_grant(&self, grant: Grant) -> Result<(), StoreError> {
        let mut a = self.approvals.lock().map_err(poisoned)?;
        self.put_grant(&mut a, grant)
    }

    async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let mut a = self.approvals.lock().map_err(poisoned)?;
        let Some(old) = a.grants.remove(id) else { return Ok(false) };
        if let Err(e) = self.persist_grants(&a.grants) {
            // Not written: the grant stays revoked here (never lifts again by a failed
            // call), but a restart would bring it back, so the call reports the failure.
            tracing::warn!(error = %e, grant = %old.id, "revoked grant not removed from state.dir");
            return Err(e);
        }
        Ok(true)
    }

    async fn grants(&self, now: Timestamp) -> Result<Vec<Grant>, StoreError> {
        let mut a = self.approvals.lock().map_err(poisoned)?;
        let before = a.grants.len();
        a.grants.retain(|_, g| g.in_force(now));
        if a.grants.len() != before {
            if let Err(e) = self.persist_grants(&a.grants) {
                tracing::warn!(error = %e, "ended grants not removed from state.dir");
            }
        }
        let mut list: Vec<Grant> = a.grants.values().cloned().collect();
        list.sort_by(|x, y| x.created_at.cmp(&y.created_at).then_with(|| x.id.cmp(&y.id)));
        Ok(list)
    }
}

/// The quarantine an automatic trigger sets.
pub fn auto_entry(agent: &str, auto: AutoQuarantine, now: Timestamp) -> Quarantine {
    let until = now
        .checked_add(jiff::SignedDuration::try_from(auto.duration).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    Quarantine {
        agent: agent.to_owned(),
        since: now,
        until,
        reason: format!("{} denies within {}s", auto.after_denies, auto.within.as_secs()),
        by: "auto".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(agent: &str, now: Timestamp) -> Quarantine {
        Quarantine { agent: agent.into(), since: now, until: Timestamp::MAX, reason: "test".into(), by: "ops".into() }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        crate::check::ready_now(f).expect("the memory store never waits")
    }

    #[test]
    fn quarantines_survive_a_restart_and_a_failed_write_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("hallpass-mem-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now = Timestamp::now();
        let m = MemoryStore::new(10, 10, Some(dir.clone())).unwrap();
        block_on(m.quarantine(q("bot-1", now))).unwrap();
        let again = MemoryStore::new(10, 10, Some(dir.clone())).unwrap();
        assert_eq!(block_on(again.quarantines(now)).unwrap().len(), 1, "read back after a restart");
        // The directory disappears: writes fail, and what failed is not in force either way.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(block_on(again.quarantine(q("bot-2", now))).is_err());
        assert!(block_on(again.lift("bot-1")).is_err());
        let agents: Vec<String> = block_on(again.quarantines(now)).unwrap().into_iter().map(|q| q.agent).collect();
        assert_eq!(agents, vec!["bot-1".to_string()], "bot-2 not quarantined, bot-1 not lifted");
    }

    #[test]
    fn the_bucket_map_is_bounded_in_all_and_per_agent() {
        let m = MemoryStore::ephemeral(3, 2);
        let now = Timestamp::now();
        let take = |k: &str| Take { key: k.into(), interval_us: 1_000_000, burst: 10, cost_us: 1_000_000 };
        let ok = |r: Result<TakeOutcome, StoreError>| matches!(r, Ok(TakeOutcome::Taken(_)));
        assert!(ok(block_on(m.take("bot-a", &[take("a1")], now))));
        assert!(ok(block_on(m.take("bot-a", &[take("a2")], now))));
        // bot-a's third bucket is over its quota of 2; its existing buckets still work.
        assert_eq!(block_on(m.take("bot-a", &[take("a3")], now)), Ok(TakeOutcome::OverQuota { index: 0 }));
        assert!(ok(block_on(m.take("bot-a", &[take("a1")], now))));
        // Others are not affected by bot-a's quota, until the map as a whole is full.
        assert!(ok(block_on(m.take("bot-b", &[take("b1")], now))));
        assert_eq!(block_on(m.take("bot-b", &[take("b2")], now)), Err(StoreError::Full(3)));
        // Once buckets are full again (their arrival time passed), they are forgotten and
        // their owner's quota is free.
        let later = now.checked_add(jiff::SignedDuration::from_secs(5)).unwrap();
        assert!(ok(block_on(m.take("bot-a", &[take("a3")], later))));
        assert!(ok(block_on(m.take("bot-b", &[take("b2")], later))));
    }
}
