//! The Redis store (Redis ≥ 6): replicas share limit buckets, deny counts and quarantines.
//! Every operation is one command or one Lua script (atomic in Redis, one round trip) with a
//! deadline of `state.redis.timeout`; limits and deny windows run on Redis's clock (`TIME`),
//! so replicas with skewed clocks still share one bucket. The connection is the `redis`
//! crate's tokio connection manager: connected lazily, re-established after a failure.
//!
//! Keys (all under `key_prefix`, default `hallpass:`): `limit:<rule>:<n>:<parts>` (a GCRA
//! arrival time in µs, expiring when the bucket is full again), `owner:<len>:<agent>` (a sorted
//! set of the buckets an agent created, for its quota), `denies:<agent>` (a sorted set
//! of deny times, expiring after the window), `quarantine` (a hash agent → JSON entry).
//! Redis Cluster is not supported (one script touches several keys), nor Sentinel discovery or
//! TLS (the `redis` crate is built without them): give hallpass an address that always points
//! at the current primary (a managed Redis endpoint, or a Sentinel-aware proxy).

use std::time::Duration;

use jiff::Timestamp;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use serde::{Deserialize, Serialize};

use super::memory::auto_entry;
use super::{bucket_after, AutoQuarantine, Quarantine, StateStore, StoreError, Take, TakeOutcome};

/// Default per-operation deadline.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "hallpass:";

/// GCRA over every bucket, all or nothing (the arithmetic of [`super::gcra`]), with a quota
/// of buckets per owner. KEYS: buckets, then the owner's set of buckets (scored by the time
/// each is full again); ARGV: interval_us, burst, cost_us per bucket, then the quota.
/// Returns {1, used_us...} when taken, {0, index, retry_after_us} when limited, {2, index}
/// when bucket `index` would be new and the owner is at its quota.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS - 1
local owner = KEYS[#KEYS]
local tats = {}
local fresh = {}
for i = 1, n do
  local interval = tonumber(ARGV[3 * i - 2])
  local tolerance = interval * tonumber(ARGV[3 * i - 1])
  local raw = redis.call('GET', KEYS[i])
  local tat = now
  if raw then
    tat = tonumber(raw)
    -- a value that is not a finite number is not a full bucket: fail (on_store_error)
    if not tat or tat ~= tat or tat == math.huge or tat == -math.huge then
      return redis.error_reply('hallpass: unreadable limit bucket ' .. KEYS[i])
    end
  else
    fresh[#fresh + 1] = i
  end
  if tat < now then tat = now end
  local new = tat + tonumber(ARGV[3 * i])
  local allow_at = new - tolerance
  if now < allow_at then
    return {0, i - 1, allow_at - now}
  end
  tats[i] = new
end
if #fresh > 0 then
  redis.call('ZREMRANGEBYSCORE', owner, '-inf', now)
  if redis.call('ZCARD', owner) + #fresh > tonumber(ARGV[3 * n + 1]) then
    return {2, fresh[1] - 1}
  end
end
local out = {1}
local longest = 0
for i = 1, n do
  local ttl = math.floor((tats[i] - now) / 1000) + 1
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
  redis.call('ZADD', owner, string.format('%.0f', tats[i]), KEYS[i])
  if ttl > longest then longest = ttl end
  out[#out + 1] = tats[i] - now
end
if redis.call('PTTL', owner) < longest then redis.call('PEXPIRE', owner, longest) end
return out
";

/// Count a deny in a sliding window; at the threshold, quarantine unless already in force.
/// KEYS: denies set, quarantine hash; ARGV: window_us, threshold, member, agent, entry JSON,
/// now_ms (the caller's clock, to compare with stored `until_ms`). Returns 1 when it
/// quarantined.
const COUNT_DENY: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], math.floor(window / 1000) + 1)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[1])
local cur = redis.call('HGET', KEYS[2], ARGV[4])
if cur then
  local ok, e = pcall(cjson.decode, cur)
  if ok and type(e) == 'table' and tonumber(e['until_ms']) and tonumber(e['until_ms']) > tonumber(ARGV[6]) then
    return 0
  end
end
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
return 1
";

/// Every quarantine entry, deleting those ended by Redis's clock in the same atomic step (so
/// an agent quarantined again meanwhile is never deleted, and no replica's clock ends another
/// replica's quarantines early). KEYS: quarantine hash. Returns the flat list agent, entry, …
/// of the rest (entries that cannot be read are kept and returned).
const QUARANTINES: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local ok, e = pcall(cjson.decode, all[i + 1])
  if ok and type(e) == 'table' and tonumber(e['until_ms']) and tonumber(e['until_ms']) <= now_ms then
    redis.call('HDEL', KEYS[1], all[i])
  else
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return out
";

/// A quarantine as stored in the hash: the entry and its end in ms (for the script).
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    until_ms: i64,
    entry: Quarantine,
}

/// The Redis store.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    take: std::sync::Arc<Script>,
    count_deny: std::sync::Arc<Script>,
    list: std::sync::Arc<Script>,
    max_per_owner: usize,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).field("timeout", &self.timeout).finish()
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    let text = e.to_string();
    // Redis out of memory (`maxmemory` with `noeviction`) is a full store, not an outage: a
    // limit must not open on it (clients can grow the key space).
    if text.contains("OOM") {
        return StoreError::Full(0);
    }
    StoreError::Unavailable(text)
}

impl RedisStore {
    /// A store at `url` (`redis://[user:pass@]host:port[/db]`); connects on first use, so a
    /// Redis that is down at start does not keep hallpass from serving (limits then follow
    /// `on_store_error`, `/readyz` reports the store).
    pub fn new(url: &str, prefix: &str, timeout: Duration, max_per_owner: usize) -> Result<RedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| format!("state.redis.url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| format!("state.redis: {e}"))?;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            take: std::sync::Arc::new(Script::new(TAKE)),
            count_deny: std::sync::Arc::new(Script::new(COUNT_DENY)),
            list: std::sync::Arc::new(Script::new(QUARANTINES)),
            max_per_owner,
        })
    }

    fn key(&self, rest: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + rest.len());
        k.push_str(&self.prefix);
        k.push_str(rest);
        k
    }

    async fn within<T>(&self, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(StoreError::Timeout),
        }
    }
}

impl StateStore for RedisStore {
    async fn take(&self, owner: &str, takes: &[Take], _now: Timestamp) -> Result<TakeOutcome, StoreError> {
        let mut inv = self.take.prepare_invoke();
        for t in takes {
            inv.key(self.key(&t.key));
            inv.arg(t.interval_us).arg(t.burst).arg(t.cost_us);
        }
        inv.key(self.key(&format!("owner:{}:{owner}", owner.len())));
        inv.arg(self.max_per_owner);
        let mut conn = self.conn.clone();
        let out: Vec<i64> = self.within(inv.invoke_async(&mut conn)).await?;
        match out.as_slice() {
            [0, index, retry] => match (usize::try_from(*index), u64::try_from(*retry)) {
                (Ok(index), Ok(retry_after_us)) if index < takes.len() => {
                    Ok(TakeOutcome::Limited { index, retry_after_us })
                }
                _ => Err(StoreError::Unavailable(format!("unexpected answer from the limit script: {out:?}"))),
            },
            [2, index] => match usize::try_from(*index) {
                Ok(index) if index < takes.len() => Ok(TakeOutcome::OverQuota { index }),
                _ => Err(StoreError::Unavailable(format!("unexpected answer from the limit script: {out:?}"))),
            },
            [1, used @ ..] if used.len() == takes.len() => {
                Ok(TakeOutcome::Taken(used.iter().zip(takes).map(|(u, t)| bucket_after(*u, 0, t)).collect()))
            }
            other => Err(StoreError::Unavailable(format!("unexpected answer from the limit script: {other:?}"))),
        }
    }

    async fn count_deny(
        &self,
        agent: &str,
        id: &str,
        auto: AutoQuarantine,
        now: Timestamp,
    ) -> Result<Option<Quarantine>, StoreError> {
        let entry = auto_entry(agent, auto, now);
        let stored = Stored { until_ms: entry.until.as_millisecond(), entry };
        let json = serde_json::to_string(&stored).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut inv = self.count_deny.prepare_invoke();
        inv.key(self.key(&format!("denies:{agent}"))).key(self.key("quarantine"));
        inv.arg(u64::try_from(auto.within.as_micros()).unwrap_or(u64::MAX))
            .arg(auto.after_denies)
            .arg(id)
            .arg(agent)
            .arg(json)
            .arg(now.as_millisecond());
        let mut conn = self.conn.clone();
        let quarantined: i64 = self.within(inv.invoke_async(&mut conn)).await?;
        Ok((quarantined == 1).then_some(stored.entry))
    }

    async fn quarantine(&self, q: Quarantine) -> Result<(), StoreError> {
        let stored = Stored { until_ms: q.until.as_millisecond(), entry: q };
        let json = serde_json::to_string(&stored).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut conn = self.conn.clone();
        let key = self.key("quarantine");
        let _: i64 =
            self.within(redis::cmd("HSET").arg(&key).arg(&stored.entry.agent).arg(json).query_async(&mut conn)).await?;
        Ok(())
    }

    async fn lift(&self, agent: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.key("quarantine");
        let n: i64 = self.within(redis::cmd("HDEL").arg(&key).arg(agent).query_async(&mut conn)).await?;
        Ok(n > 0)
    }

    async fn quarantines(&self, now: Timestamp) -> Result<Vec<Quarantine>, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.key("quarantine");
        let mut inv = self.list.prepare_invoke();
        inv.key(&key);
        let flat: Vec<String> = self.within(inv.invoke_async(&mut conn)).await?;
        let mut list = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let [agent, json] = pair else { continue };
            let agent = agent.clone();
            match serde_json::from_str::<Stored>(json) {
                Ok(s) if s.entry.in_force(now) => list.push(s.entry),
                Ok(_) => {}
                // An entry hallpass cannot read still quarantines its agent (fail closed), for
                // the longest a quarantine can last.
                Err(_) => list.push(Quarantine {
                    agent: agent.clone(),
                    since: now,
                    until: Timestamp::MAX,
                    reason: "unreadable quarantine entry in the state store".into(),
                    by: "store".into(),
                }),
            }
        }
        list.sort_by(|a, b| a.agent.cmp(&b.agent));
        Ok(list)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = self.within(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(())
    }
}
