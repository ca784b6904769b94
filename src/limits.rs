//! Limits and budgets on allow rules (agent-controls.md §4): compiled from `limits:`, and
//! turned into GCRA takes for the state store when a rule with limits allows a request.
//!
//! A limit's key is the rule id, the limit's position and its `per` parts; a part that is
//! absent or ambiguous, or a cost that is missing, not a number or negative, makes the limit
//! unknown and the request is denied (nothing is charged). A request over any limit of its
//! rule is charged nothing (the store takes from every bucket or from none).

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::policy::model::{CostDef, LimitDef, OnStoreErrorDef};
use crate::request::{Parsed, Request};
use crate::state::Take;

/// One `per` part of a limit's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The agent id.
    Agent,
    /// The user the agent acts for.
    OnBehalfOf,
    /// `params.name` of a JSON-RPC `tools/call`.
    McpTool,
    /// A capture of the rule's path pattern.
    Capture(Arc<str>),
    /// A request header (lowercase).
    Header(Box<str>),
}

impl KeyPart {
    fn parse(s: &str) -> Result<KeyPart, String> {
        match s {
            "agent" => Ok(KeyPart::Agent),
            "on_behalf_of" => Ok(KeyPart::OnBehalfOf),
            "mcp.tool" => Ok(KeyPart::McpTool),
            _ => {
                if let Some(c) = s.strip_prefix("path.").filter(|c| !c.is_empty()) {
                    Ok(KeyPart::Capture(Arc::from(c)))
                } else if let Some(h) = s.strip_prefix("header.").filter(|h| !h.is_empty()) {
                    let h = h.to_ascii_lowercase();
                    if h == "host" || h == ":authority" {
                        return Err(
                            "`header.host` cannot key a limit: the host is `:authority` (use a rule per host)".into()
                        );
                    }
                    Ok(KeyPart::Header(Box::from(h.as_str())))
                } else {
                    Err(format!(
                        "`per` part `{s}` is not one of agent, on_behalf_of, mcp.tool, path.<capture>, header.<name>"
                    ))
                }
            }
        }
    }

    /// As written in the policy.
    pub fn label(&self) -> String {
        match self {
            KeyPart::Agent => "agent".into(),
            KeyPart::OnBehalfOf => "on_behalf_of".into(),
            KeyPart::McpTool => "mcp.tool".into(),
            KeyPart::Capture(c) => format!("path.{c}"),
            KeyPart::Header(h) => format!("header.{h}"),
        }
    }
}

/// What one request costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cost {
    /// 1 (the default).
    One,
    /// The number at this JSON Pointer of the body.
    Field(Vec<Box<str>>),
    /// The length of the array at this JSON Pointer.
    Length(Vec<Box<str>>),
}

/// What happens when the state store cannot be reached in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Deny with `state_unavailable` (503). The default.
    Deny,
    /// Let the request through uncounted.
    Allow,
}

/// A compiled limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// The key parts, after the rule id and the limit's position.
    pub per: Vec<KeyPart>,
    /// Units per window (the N of `N/unit`).
    pub count: u64,
    /// The window in seconds (1, 60, 3600, 86400).
    pub window_s: u64,
    /// Microseconds one unit adds to the bucket.
    pub interval_us: u64,
    /// Units that may come at once (default `count`).
    pub burst: u64,
    /// What a request costs.
    pub cost: Cost,
    /// When the store cannot be reached.
    pub on_store_error: OnStoreError,
}

/// Compile one `limits:` entry; `captures`: the capture names every path pattern of the rule
/// declares (a `path.<capture>` part must be one of them).
pub fn compile(def: &LimitDef, at: &str, captures: &[&str]) -> Result<Limit, String> {
    let rate = def.rate.as_deref().ok_or_else(|| format!("{at}: `rate` is required, e.g. `rate: \"30/m\"`"))?;
    let bad_rate = || format!("{at}: `rate: {rate}` must be N/s, N/m, N/h or N/d with N ≥ 1");
    let (n, unit) = rate.split_once('/').ok_or_else(bad_rate)?;
    let count: u64 = n.trim().parse().ok().filter(|n| *n >= 1).ok_or_else(bad_rate)?;
    let window_s: u64 = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad_rate()),
    };
    // One unit adds window / count, rounded up to whole microseconds (never more than the
    // rate written; a rate above 10^6/s is not a limit and is held to 10^6/s).
    let interval_us = (window_s * 1_000_000).div_ceil(count).max(1);
    let burst = match def.burst {
        None => count,
        Some(0) => return Err(format!("{at}: `burst` must be at least 1")),
        Some(b) => b,
    };
    let mut per = Vec::new();
    for p in def.per.iter().flatten() {
        let part = KeyPart::parse(p).map_err(|m| format!("{at}: {m}"))?;
        if let KeyPart::Capture(c) = &part {
            if !captures.contains(&&**c) {
                return Err(format!(
                    "{at}: `per` part `path.{c}`: every path pattern of the rule must capture `{{{c}}}`"
                ));
            }
        }
        if per.contains(&part) {
            return Err(format!("{at}: `per` names `{p}` twice"));
        }
        per.push(part);
    }
    let cost = match &def.cost {
        None => Cost::One,
        Some(CostDef { field, length }) => {
            let field = field.as_deref().ok_or_else(|| format!("{at}: `cost` needs `field`, a JSON Pointer"))?;
            let pointer =
                crate::policy::condition_parse::parse_pointer(field).map_err(|m| format!("{at}: `cost.field`: {m}"))?;
            if length.unwrap_or(false) {
                Cost::Length(pointer)
            } else {
                Cost::Field(pointer)
            }
        }
    };
    let on_store_error = match def.on_store_error {
        None | Some(OnStoreErrorDef::Deny) => OnStoreError::Deny,
        Some(OnStoreErrorDef::Allow) => OnStoreError::Allow,
    };
    Ok(Limit { per, count, window_s, interval_us, burst, cost, on_store_error })
}

/// Why a limit could not be read from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unknown {
    /// A key part was absent or ambiguous.
    Key(String),
    /// The cost was missing, not a number, or negative.
    Cost,
}

/// What the limits stage found, for the response and the decision record.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitHit {
    /// The rule whose limit it was.
    pub rule: Arc<str>,
    /// The limit's position in the rule's `limits`.
    pub index: usize,
    /// What happened.
    pub kind: HitKind,
    /// The limit's units per window and window (for `ratelimit-policy`).
    pub quota: u64,
    /// Window, seconds.
    pub window_s: u64,
    /// The limit's key has an `agent` part (the bucket is the agent's own).
    pub per_agent: bool,
}

/// What happened to a limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HitKind {
    /// No room: retry after this many seconds (rounded up, at least 1).
    Limited {
        /// Seconds.
        retry_after_s: u64,
    },
    /// A key part was absent or ambiguous, or the cost unreadable: denied, nothing charged.
    Unknown,
    /// The store could not be reached and `on_store_error` decided.
    StoreError,
    /// The cost exceeds the burst: the request can never fit (denied, nothing charged).
    TooLarge,
    /// The agent has its quota of buckets in use and this one would be new (denied, nothing
    /// charged).
    KeyQuota,
}

impl HitKind {
    /// `limited`, `unknown`, `store_error` (records).
    pub fn label(self) -> &'static str {
        match self {
            HitKind::Limited { .. } => "limited",
            HitKind::Unknown => "unknown",
            HitKind::StoreError => "store_error",
            HitKind::TooLarge => "too_large",
            HitKind::KeyQuota => "key_quota",
        }
    }
}

fn body_view(req: &Request, element: Option<usize>) -> Option<&Json> {
    match req.body.parsed() {
        Parsed::Json(v) => match element {
            None => Some(v),
            Some(n) => v.as_array()?.get(n),
        },
        Parsed::Form(v) => element.is_none().then_some(v),
        Parsed::Unknown(_) => None,
    }
}

fn mcp_tool(doc: Option<&Json>) -> Option<&str> {
    use crate::request::body::{lookup_key, KeyLookup};
    fn member<'a>(o: &'a serde_json::Map<String, Json>, k: &str) -> Option<&'a Json> {
        match lookup_key(o, k) {
            KeyLookup::Found(v) => Some(v),
            _ => None,
        }
    }
    let call = doc?.as_object()?;
    if member(call, "jsonrpc")?.as_str()? != "2.0" || member(call, "method")?.as_str()? != "tools/call" {
        return None;
    }
    member(member(call, "params")?.as_object()?, "name")?.as_str()
}

fn cost_of(cost: &Cost, doc: Option<&Json>) -> Result<f64, Unknown> {
    let at = |p: &[Box<str>]| match doc.map(|d| crate::policy::condition::lookup(d, p)) {
        Some(crate::policy::condition::Found::Value(v)) => Ok(v),
        _ => Err(Unknown::Cost),
    };
    match cost {
        Cost::One => Ok(1.0),
        Cost::Field(p) => match at(p)? {
            Json::Number(n) => n.as_f64().filter(|c| c.is_finite() && *c >= 0.0).ok_or(Unknown::Cost),
            _ => Err(Unknown::Cost),
        },
        Cost::Length(p) => match at(p)? {
            Json::Array(a) => Ok(a.len() as f64),
            _ => Err(Unknown::Cost),
        },
    }
}

/// The bucket key of limit `index` of `rule` for this request: `limit:<rule>:<index>:` and
/// each part length-prefixed (so no two part lists share a key); parts longer than 256 bytes
/// in all are hashed (SHA-256) to bound the store's memory.
pub fn key(
    rule: &str,
    index: usize,
    limit: &Limit,
    req: &Request,
    ident: (Option<&str>, Option<&str>),
    captures: &crate::policy::pattern::Captures<'_>,
    element: Option<usize>,
) -> Result<String, Unknown> {
    let mut parts = String::new();
    for p in &limit.per {
        let v: Option<String> = match p {
            KeyPart::Agent => ident.0.map(str::to_owned),
            KeyPart::OnBehalfOf => ident.1.map(str::to_owned),
            KeyPart::McpTool => mcp_tool(body_view(req, element)).map(str::to_owned),
            // A capture with a `;` (only with `settings.allow_path_semicolons`) is read by some
            // upstreams without its parameter: `bob;1` and `bob` are one user there.
            KeyPart::Capture(c) => captures.get(c).filter(|v| !v.contains(';')).map(str::to_owned),
            KeyPart::Header(h) => {
                let mut vals = req.header_values(h);
                match (vals.next(), vals.next()) {
                    // Sent once, under one spelling, one value (a comma may be two headers
                    // Envoy joined): the part is known.
                    (Some(v), None) if !v.contains(',') && !v.is_empty() => Some(v.to_owned()),
                    _ => None,
                }
            }
        };
        let v = v.filter(|v| !v.is_empty()).ok_or_else(|| Unknown::Key(p.label()))?;
        let _ = write!(parts, "{}:{v};", v.len());
    }
    let mut k = format!("limit:{rule}:{index}:");
    if parts.len() > 256 {
        let digest = Sha256::digest(parts.as_bytes());
        for b in digest {
            let _ = write!(k, "{b:02x}");
        }
    } else {
        k.push_str(&parts);
    }
    Ok(k)
}

/// Whether the body may be a JSON-RPC batch that was not decided element by element: its
/// first significant byte (after a UTF-8 byte order mark, whitespace and the NULs of UTF-16 or
/// UTF-32) is `[`, and it is not a JSON array of which no element is a JSON-RPC object.
pub fn unsplit_batch(req: &Request) -> bool {
    let bytes = req.body.bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&req.body.bytes);
    let first = bytes.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0 | 0xFE | 0xFF));
    if first != Some(&b'[') {
        return false;
    }
    match req.body.parsed() {
        Parsed::Json(Json::Array(items)) => items.iter().any(|i| {
            i.as_object().is_some_and(|o| {
                o.keys().any(|k| k.eq_ignore_ascii_case("jsonrpc") || k.eq_ignore_ascii_case("method"))
            })
        }),
        _ => true,
    }
}

/// The take for limit `limit` with key `key`, for a request costing `cost` units.
pub fn take(key: String, limit: &Limit, cost: f64) -> Take {
    let cost_us = (cost * limit.interval_us as f64).ceil();
    // Saturates: a cost beyond u64 microseconds can never fit a bucket anyway.
    let cost_us = if cost_us >= u64::MAX as f64 { u64::MAX } else { cost_us as u64 };
    Take { key, interval_us: limit.interval_us, burst: limit.burst, cost_us }
}

/// The cost of a request (or batch element) for `limit`.
pub fn cost(limit: &Limit, req: &Request, element: Option<usize>) -> Result<f64, Unknown> {
    match limit.cost {
        Cost::One => Ok(1.0),
        _ => cost_of(&limit.cost, body_view(req, element)),
    }
}

/// `second`, `minute`, `hour`, `day` (messages).
pub fn window_name(window_s: u64) -> &'static str {
    match window_s {
        1 => "second",
        60 => "minute",
        3_600 => "hour",
        _ => "day",
    }
}

/// `s`, `m`, `h`, `d` (as a rate is written).
pub fn window_unit(window_s: u64) -> &'static str {
    match window_s {
        1 => "s",
        60 => "m",
        3_600 => "h",
        _ => "d",
    }
}

/// `ratelimit-policy` and `ratelimit` header values (draft-ietf-httpapi-ratelimit-headers):
/// the policy named after the rule and limit, its quota and window; remaining 0 and the
/// seconds until it would go through.
pub fn headers(hit: &LimitHit, retry_after_s: u64) -> (String, String) {
    let name = format!("{}.{}", hit.rule, hit.index);
    (format!("\"{name}\";q={};w={}", hit.quota, hit.window_s), format!("\"{name}\";r=0;t={retry_after_s}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests may panic")]
    use super::*;

    fn def(rate: &str) -> LimitDef {
        LimitDef { per: None, rate: Some(rate.into()), burst: None, cost: None, on_store_error: None }
    }

    #[test]
    fn rates_compile_to_intervals() {
        let l = compile(&def("30/m"), "limit 1", &[]).unwrap();
        assert_eq!((l.interval_us, l.burst, l.window_s), (2_000_000, 30, 60));
        assert_eq!(compile(&def("500/d"), "x", &[]).unwrap().interval_us, 172_800_000);
        for bad in ["0/m", "30", "30/w", "x/s", "-1/s"] {
            assert!(compile(&def(bad), "x", &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn per_parts_are_checked() {
        let mut d = def("1/s");
        d.per = Some(vec!["path.user".into()]);
        assert!(compile(&d, "x", &["id"]).unwrap_err().contains("capture `{user}`"));
        assert!(compile(&d, "x", &["user"]).is_ok());
        d.per = Some(vec!["header.Host".into()]);
        assert!(compile(&d, "x", &[]).is_err());
        d.per = Some(vec!["agent".into(), "agent".into()]);
        assert!(compile(&d, "x", &[]).is_err());
        d.per = Some(vec!["tenant".into()]);
        assert!(compile(&d, "x", &[]).is_err());
    }

    #[test]
    fn costs_round_up_to_whole_microseconds() {
        let l = compile(&def("3/s"), "x", &[]).unwrap();
        assert_eq!(take("k".into(), &l, 1.0).cost_us, 333_334, "rounded up: never more than 3/s");
        assert_eq!(take("k".into(), &l, 0.5).cost_us, 166_667);
        assert_eq!(take("k".into(), &l, 1e300).cost_us, u64::MAX);
    }
}
