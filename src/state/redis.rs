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
use super::{
    bucket_after, AutoQuarantine, Grant, HoldAsk, HoldOutcome, PendingApproval, Quarantine, StateStore, StoreError,
    Take, TakeOutcome,
};
use crate::approvals::{ApprovalStatus, GrantKind};

/// Default per-operation deadline.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "hallpass:";

/// GCRA over every bucket, all or nothing (the arithmetic of [`super::gcra`]), with a quota
/// of buckets per owner. KEYS: buckets, then the owner's set of buckets (scored by the time
/// each is full again); ARGV: interval_us, burst, cost_us per bucket, then the quota.
/// Returns {1, used_us...} when taken, {0, index, retry_after_us} when limited, {2, index}
/// when bucket `index` would be new and the owner is at its quota.
const TAKE_FN: &str = r"
local function take_all(KEYS, ARGV)
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
if longest > 0 and redis.call('PTTL', owner) < longest then redis.call('PEXPIRE', owner, longest) end
return out
end
";

/// The limit script: [`TAKE_FN`] over the script's own KEYS and ARGV.
const TAKE_CALL: &str = "return take_all(KEYS, ARGV)";

/// A held request (agent-controls §2), atomically: if an approval grant is in force (by
/// Redis's clock), take the limits ([`TAKE_FN`]) and spend one use only if they were taken;
/// otherwise record or refresh the pending approval (bounded by max_pending) and count it.
/// A grant lifts only a request with the binding it was approved with (the holds and the
/// headers the policy reads). KEYS: approval grant hash, pending hash, pending index (zset by
/// expiry), grants hash, the agent's pending set, then the limit buckets and the owner set;
/// ARGV: approval id, pending JSON, pending ttl (ms), max pending, binding, max pending per
/// agent, then the limits' arguments. Returns {1, grant id, approved_by, take answer} or
/// {0, status, expires_ms, seen} (seen 0: not recorded).
const HOLD: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local g = redis.call('HMGET', KEYS[1], 'id', 'uses', 'expires_ms', 'approved_by', 'binding')
if g[1] and tonumber(g[2]) and tonumber(g[2]) > 0 and tonumber(g[3]) and tonumber(g[3]) > now_ms
    and (g[5] or '') == ARGV[5] then
  local keys, argv = {}, {}
  for i = 6, #KEYS do keys[#keys + 1] = KEYS[i] end
  for i = 7, #ARGV do argv[#argv + 1] = ARGV[i] end
  local r = {1}
  if #keys > 1 then r = take_all(keys, argv) end
  if r[1] == 1 then
    local left = redis.call('HINCRBY', KEYS[1], 'uses', -1)
    if left <= 0 then
      redis.call('DEL', KEYS[1])
      redis.call('HDEL', KEYS[4], g[1])
    end
  end
  return {1, g[1], g[4] or '', r}
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms)
local exp = now_ms + tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 0 then
  -- ended entries stay in the index until PENDING removes (and counts) them
  local live = redis.call('ZCOUNT', KEYS[3], '(' .. now_ms, '+inf')
  if live >= tonumber(ARGV[4]) or redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[6]) then
    return {0, 'pending', exp, 0}
  end
  redis.call('HSET', KEYS[2], 'json', ARGV[2], 'status', 'pending', 'binding', ARGV[5])
end
redis.call('ZADD', KEYS[5], exp, ARGV[1])
redis.call('PEXPIREAT', KEYS[5], exp)
local seen = redis.call('HINCRBY', KEYS[2], 'seen', 1)
redis.call('HSET', KEYS[2], 'expires_ms', exp)
redis.call('PEXPIREAT', KEYS[2], exp)
redis.call('ZADD', KEYS[3], exp, ARGV[1])
return {0, redis.call('HGET', KEYS[2], 'status'), exp, seen}
";

/// The pending approvals, dropping ended ones (Redis's clock). KEYS: pending index; ARGV:
/// the key prefix of pending hashes. Returns {how many ended, then {id, json, status, seen,
/// expires_ms, decided_by, reason} per approval, oldest expiry first}.
const PENDING: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ended = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local h = redis.call('HMGET', ARGV[1] .. id, 'json', 'status', 'seen', 'expires_ms', 'decided_by', 'reason')
  if h[1] then
    out[#out + 1] = {id, h[1], h[2] or 'pending', h[3] or '0', h[4] or '0', h[5] or '', h[6] or ''}
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return {ended, out}
";

/// Approve: the pending approval is replaced by its approval grant, bound as the pending
/// approval was. KEYS: pending hash, pending index, approval grant hash, grants hash, the
/// agent's pending set; ARGV: approval id, grant id, uses, expires_ms, approved_by, grant
/// JSON. Returns 0 when nothing is pending under the id.
const APPROVE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local binding = redis.call('HGET', KEYS[1], 'binding') or ''
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'id', ARGV[2], 'uses', ARGV[3], 'expires_ms', ARGV[4], 'approved_by', ARGV[5],
  'binding', binding)
redis.call('PEXPIREAT', KEYS[3], ARGV[4])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[6])
return 1
";

/// Deny a pending approval. KEYS: pending hash; ARGV: by, reason. Returns false when none,
/// else {json, status, seen, expires_ms, decided_by, reason}.
const DENY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'status', 'denied', 'decided_by', ARGV[1], 'reason', ARGV[2])
local h = redis.call('HMGET', KEYS[1], 'json', 'status', 'seen', 'expires_ms', 'decided_by', 'reason')
return {h[1], h[2], h[3] or '0', h[4] or '0', h[5], h[6]}
";

/// Revoke a grant (and an approval grant's uses). KEYS: grants hash; ARGV: grant id, key
/// prefix of approval grant hashes. Returns 1 when there was one.
const REVOKE: &str = r"
local w = redis.call('HGET', KEYS[1], ARGV[1])
if not w then return 0 end
local ok, e = pcall(cjson.decode, w)
if ok and type(e) == 'table' and type(e['grant']) == 'table' and type(e['grant']['approval']) == 'string' then
  local k = ARGV[2] .. e['grant']['approval']
  if redis.call('HGET', k, 'id') == ARGV[1] then redis.call('DEL', k) end
end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
";

/// Every grant in force (Redis's clock), deleting ended and spent ones. KEYS: grants hash;
/// ARGV: key prefix of approval grant hashes. Returns {id, json, uses} per grant (uses -1
/// for a task grant); an entry that cannot be read is returned as is (and refused by the
/// reader).
const GRANTS: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local id, w = all[i], all[i + 1]
  local ok, e = pcall(cjson.decode, w)
  local keep, uses = true, -1
  if ok and type(e) == 'table' then
    if tonumber(e['expires_ms']) and tonumber(e['expires_ms']) <= now_ms then keep = false end
    if keep and type(e['grant']) == 'table' and type(e['grant']['approval']) == 'string' then
      local k = ARGV[1] .. e['grant']['approval']
      local h = redis.call('HMGET', k, 'id', 'uses')
      if h[1] ~= id or not tonumber(h[2]) or tonumber(h[2]) <= 0 then keep = false else uses = tonumber(h[2]) end
    end
  end
  if keep then
    out[#out + 1] = {id, w, uses}
  else
    redis.call('HDEL', KEYS[1], id)
  end
end
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
    hold: std::sync::Arc<Script>,
    pending: std::sync::Arc<Script>,
    approve: std::sync::Arc<Script>,
    deny: std::sync::Arc<Script>,
    revoke: std::sync::Arc<Script>,
    grants: std::sync::Arc<Script>,
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
            take: std::sync::Arc::new(Script::new(&format!("{TAKE_FN}\n{TAKE_CALL}"))),
            count_deny: std::sync::Arc::new(Script::new(COUNT_DENY)),
            list: std::sync::Arc::new(Script::new(QUARANTINES)),
            hold: std::sync::Arc::new(Script::new(&format!("{TAKE_FN}\n{HOLD}"))),
            pending: std::sync::Arc::new(Script::new(PENDING)),
            approve: std::sync::Arc::new(Script::new(APPROVE)),
            deny: std::sync::Arc::new(Script::new(DENY)),
            revoke: std::sync::Arc::new(Script::new(REVOKE)),
            grants: std::sync::Arc::new(Script::new(GRANTS)),
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

/// A grant as stored in the grants hash: the grant and its end in ms (for the scripts).
#[derive(Debug, Serialize, Deserialize)]
struct StoredGrant {
    expires_ms: i64,
    grant: Grant,
}

fn bad_answer(what: &str, v: &redis::Value) -> StoreError {
    StoreError::Unavailable(format!("unexpected answer from the {what} script: {v:?}"))
}

fn v_int(v: &redis::Value) -> Option<i64> {
    match v {
        redis::Value::Int(n) => Some(*n),
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        redis::Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn v_str(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A pending approval from its stored fields: json, status, seen, expires_ms, decided_by,
/// reason (empty strings for none).
fn pending_of(f: &[redis::Value]) -> Option<PendingApproval> {
    let [json, status, seen, expires, by, reason] = f else { return None };
    let mut p: PendingApproval = serde_json::from_str(&v_str(json)?).ok()?;
    p.status = if v_str(status)?.as_str() == "denied" { ApprovalStatus::Denied } else { ApprovalStatus::Pending };
    p.seen = u64::try_from(v_int(seen)?).unwrap_or(0);
    p.expires_at = Timestamp::from_millisecond(v_int(expires)?).ok()?;
    p.decided_by = v_str(by).filter(|s| !s.is_empty());
    p.reason = v_str(reason).filter(|s| !s.is_empty());
    Some(p)
}

impl RedisStore {
    /// Load every script into Redis's script cache, so the first Check that needs one does
    /// not spend its deadline on `NOSCRIPT` and a second round trip. Best effort.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for s in [
            &self.take,
            &self.count_deny,
            &self.list,
            &self.hold,
            &self.pending,
            &self.approve,
            &self.deny,
            &self.revoke,
            &self.grants,
        ] {
            let inv = s.prepare_invoke();
            match tokio::time::timeout(self.timeout * 20, inv.load_async(&mut conn)).await {
                Ok(r) => {
                    r.map_err(unavailable)?;
                }
                Err(_) => return Err(StoreError::Timeout),
            }
        }
        Ok(())
    }

    fn take_args(&self, inv: &mut redis::ScriptInvocation<'_>, owner: &str, takes: &[Take]) {
        for t in takes {
            inv.key(self.key(&t.key));
            inv.arg(t.interval_us).arg(t.burst).arg(t.cost_us);
        }
        inv.key(self.key(&format!("owner:{}:{owner}", owner.len())));
        inv.arg(self.max_per_owner);
    }
}

/// The limit script's answer.
fn take_outcome(out: &[i64], takes: &[Take]) -> Result<TakeOutcome, StoreError> {
    {
        match out {
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
}

impl StateStore for RedisStore {
    async fn take(&self, owner: &str, takes: &[Take], _now: Timestamp) -> Result<TakeOutcome, StoreError> {
        let mut inv = self.take.prepare_invoke();
        self.take_args(&mut inv, owner, takes);
        let mut conn = self.conn.clone();
        let out: Vec<i64> = self.within(inv.invoke_async(&mut conn)).await?;
        take_outcome(&out, takes)
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

    async fn hold(
        &self,
        ask: HoldAsk<'_>,
        owner: &str,
        takes: &[Take],
        _now: Timestamp,
    ) -> Result<HoldOutcome, StoreError> {
        let json = serde_json::to_string(ask.record).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut inv = self.hold.prepare_invoke();
        inv.key(self.key(&format!("agrant:{}", ask.approval_id)))
            .key(self.key(&format!("pending:{}", ask.approval_id)))
            .key(self.key("pending_idx"))
            .key(self.key("grants"))
            .key(self.key(&format!("pending_agent:{}:{owner}", owner.len())));
        inv.arg(ask.approval_id)
            .arg(json)
            .arg(u64::try_from(ask.pending_ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(ask.max_pending)
            .arg(ask.binding)
            .arg(ask.max_pending_per_agent);
        self.take_args(&mut inv, owner, takes);
        let mut conn = self.conn.clone();
        let out: redis::Value = self.within(inv.invoke_async(&mut conn)).await?;
        let bad = || bad_answer("hold", &out);
        let redis::Value::Array(items) = &out else { return Err(bad()) };
        match items.as_slice() {
            [kind, grant, by, redis::Value::Array(take)] if v_int(kind) == Some(1) => {
                let take: Vec<i64> = take.iter().map(v_int).collect::<Option<_>>().ok_or_else(bad)?;
                let take = if takes.is_empty() { TakeOutcome::Taken(Vec::new()) } else { take_outcome(&take, takes)? };
                Ok(HoldOutcome::Lifted {
                    grant: v_str(grant).ok_or_else(bad)?,
                    approved_by: v_str(by).unwrap_or_default(),
                    take,
                })
            }
            [kind, status, expires, seen] if v_int(kind) == Some(0) => Ok(HoldOutcome::Held {
                status: if v_str(status).as_deref() == Some("denied") {
                    ApprovalStatus::Denied
                } else {
                    ApprovalStatus::Pending
                },
                expires_at: v_int(expires).and_then(|ms| Timestamp::from_millisecond(ms).ok()).ok_or_else(bad)?,
                seen: v_int(seen).and_then(|n| u64::try_from(n).ok()).ok_or_else(bad)?,
            }),
            _ => Err(bad()),
        }
    }

    async fn pending(&self, _now: Timestamp) -> Result<(Vec<PendingApproval>, u64), StoreError> {
        let mut inv = self.pending.prepare_invoke();
        inv.key(self.key("pending_idx")).arg(self.key("pending:"));
        let mut conn = self.conn.clone();
        let (ended, out): (u64, Vec<Vec<redis::Value>>) = self.within(inv.invoke_async(&mut conn)).await?;
        let mut list = Vec::with_capacity(out.len());
        for row in &out {
            let Some((_id, fields)) = row.split_first() else { continue };
            match pending_of(fields) {
                Some(p) => list.push(p),
                None => tracing::warn!("unreadable pending approval in the state store; skipped"),
            }
        }
        list.sort_by(|x, y| x.created_at.cmp(&y.created_at).then_with(|| x.id.cmp(&y.id)));
        Ok((list, ended))
    }

    async fn approve(&self, id: &str, agent: Option<&str>, grant: Grant) -> Result<bool, StoreError> {
        let GrantKind::Approval { uses, .. } = &grant.kind else {
            return Err(StoreError::Unavailable("approve needs an approval grant".into()));
        };
        let uses = *uses;
        let owner = agent.unwrap_or("");
        let stored = StoredGrant { expires_ms: grant.expires_at.as_millisecond(), grant };
        let json = serde_json::to_string(&stored).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut inv = self.approve.prepare_invoke();
        inv.key(self.key(&format!("pending:{id}")))
            .key(self.key("pending_idx"))
            .key(self.key(&format!("agrant:{id}")))
            .key(self.key("grants"))
            .key(self.key(&format!("pending_agent:{}:{owner}", owner.len())));
        inv.arg(id).arg(&stored.grant.id).arg(uses).arg(stored.expires_ms).arg(&stored.grant.approved_by).arg(json);
        let mut conn = self.conn.clone();
        let n: i64 = self.within(inv.invoke_async(&mut conn)).await?;
        Ok(n == 1)
    }

    async fn deny_approval(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        _now: Timestamp,
    ) -> Result<Option<PendingApproval>, StoreError> {
        let mut inv = self.deny.prepare_invoke();
        inv.key(self.key(&format!("pending:{id}"))).arg(by).arg(reason);
        let mut conn = self.conn.clone();
        let out: Option<Vec<redis::Value>> = self.within(inv.invoke_async(&mut conn)).await?;
        match out {
            None => Ok(None),
            Some(f) => pending_of(&f)
                .map(Some)
                .ok_or_else(|| StoreError::Unavailable("unreadable pending approval in the state store".into())),
        }
    }

    async fn add_grant(&self, grant: Grant) -> Result<(), StoreError> {
        let stored = StoredGrant { expires_ms: grant.expires_at.as_millisecond(), grant };
        let json = serde_json::to_string(&stored).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut conn = self.conn.clone();
        let key = self.key("grants");
        let _: i64 =
            self.within(redis::cmd("HSET").arg(&key).arg(&stored.grant.id).arg(json).query_async(&mut conn)).await?;
        Ok(())
    }

    async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let mut inv = self.revoke.prepare_invoke();
        inv.key(self.key("grants")).arg(id).arg(self.key("agrant:"));
        let mut conn = self.conn.clone();
        let n: i64 = self.within(inv.invoke_async(&mut conn)).await?;
        Ok(n == 1)
    }

    async fn grants(&self, now: Timestamp) -> Result<Vec<Grant>, StoreError> {
        let mut inv = self.grants.prepare_invoke();
        inv.key(self.key("grants")).arg(self.key("agrant:"));
        let mut conn = self.conn.clone();
        let out: Vec<(String, String, i64)> = self.within(inv.invoke_async(&mut conn)).await?;
        let mut list = Vec::with_capacity(out.len());
        for (id, json, uses) in out {
            match serde_json::from_str::<StoredGrant>(&json) {
                Ok(mut s) if s.grant.in_force(now) => {
                    if let GrantKind::Approval { uses: u, .. } = &mut s.grant.kind {
                        *u = u32::try_from(uses).unwrap_or(0);
                    }
                    list.push(s.grant);
                }
                Ok(_) => {}
                // A grant hallpass cannot read lifts nothing (fail closed).
                Err(e) => tracing::warn!(grant = %id, error = %e, "unreadable grant in the state store; ignored"),
            }
        }
        list.sort_by(|x, y| x.created_at.cmp(&y.created_at).then_with(|| x.id.cmp(&y.id)));
        Ok(list)
    }
}
