//! Approval ids (agent-controls.md §2): the same action retried gets the same id on every
//! replica, and the id depends on no rule.
//!
//! `ap_` + the first 26 characters of the lowercase base32 (RFC 4648 alphabet, no padding) of
//! SHA-256 over the canonical text of the request, which is the canonical JSON of the array
//!
//! ```text
//! ["hallpass.approval/v1", agent, on_behalf_of, method, host, path, query, body]
//! ```
//!
//! - `agent`, `on_behalf_of`: the resolved identities, or `null`;
//! - `method`: the method as sent in ASCII uppercase; when the request carries method
//!   overrides, every reading (sent, uppercased, each override), sorted, unique, joined by `,`
//!   (so an approval for `POST` never covers a `POST` that some upstream reads as `DELETE`);
//! - `host`: normalized (lowercase, no port); `path`: normalized, without the query (`null`
//!   when the path is invalid);
//! - `query`: the decoded `[name, value]` pairs sorted by name, then value (bytewise; the order
//!   of a repeated name's values is bound to a grant separately, see [`binding`]);
//! - `body`: `null` without a body; a JSON body (strict parse) as its value with the JSON-RPC
//!   `id` (a string, number or null) of a JSON-RPC 2.0 call (`"jsonrpc": "2.0"` and a string
//!   `method`), or of each such
//!   element of a batch, removed; any other body as `{"sha256": "<hex of its bytes>"}`, and a
//!   truncated body as `{"sha256": …, "truncated": true}`.
//!
//! Canonical JSON: objects with their keys sorted bytewise (UTF-8), no whitespace, strings
//! escaped as serde_json escapes them (`"`, `\`, control characters; everything else as is),
//! numbers as parsed (integers as integers; others in serde_json's shortest round-trip form).
//! docs/approval-ids.md documents the form with the test vectors pinned in `tests` below
//! (cross-checked with an independent implementation).

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::policy::eval::{HoldRule, Identity};
use crate::request::{Parsed, Request};

/// `settings.approvals` of the policy, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// How long a pending approval waits for a human (refreshed by every retry).
    pub pending_ttl: Duration,
    /// An approval grant's lifetime unless the approver says otherwise.
    pub grant_ttl: Duration,
    /// The longest any grant may last.
    pub max_grant_ttl: Duration,
    /// What a held caller is told to wait before retrying, in seconds.
    pub retry_after_s: u64,
    /// JSON Pointers shown as `"[redacted]"` in pending approvals (into an MCP call's
    /// arguments, and into any other JSON body).
    pub redact: Vec<String>,
    /// Most pending approvals kept; past it a held request is denied, not recorded.
    pub max_pending: usize,
    /// Most pending approvals one agent may have; past it its held requests are denied.
    pub max_pending_per_agent: usize,
    /// Where events are POSTed.
    pub webhook: Option<crate::webhook::Webhook>,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            pending_ttl: Duration::from_secs(15 * 60),
            grant_ttl: Duration::from_secs(10 * 60),
            max_grant_ttl: Duration::from_secs(24 * 3600),
            retry_after_s: 30,
            redact: Vec::new(),
            max_pending: 1000,
            max_pending_per_agent: 20,
            webhook: None,
        }
    }
}

impl ApprovalSettings {
    /// Read `settings.approvals`; the message names what is wrong.
    pub fn compile(def: Option<&crate::policy::model::ApprovalsDef>) -> Result<ApprovalSettings, String> {
        let mut a = ApprovalSettings::default();
        let Some(d) = def else { return Ok(a) };
        let dur = |what: &str, v: &Option<String>, default: Duration| -> Result<Duration, String> {
            match v {
                None => Ok(default),
                Some(t) => match crate::settings::parse_duration(&format!("`settings.approvals.{what}`"), t)? {
                    d if d.is_zero() => Err(format!("`settings.approvals.{what}` must be longer than 0")),
                    d if d > Duration::from_secs(366 * 86_400) => {
                        Err(format!("`settings.approvals.{what}` must be at most 366d"))
                    }
                    d => Ok(d),
                },
            }
        };
        a.pending_ttl = dur("pending_ttl", &d.pending_ttl, a.pending_ttl)?;
        a.max_grant_ttl = dur("max_grant_ttl", &d.max_grant_ttl, a.max_grant_ttl)?;
        a.grant_ttl = dur("grant_ttl", &d.grant_ttl, a.grant_ttl.min(a.max_grant_ttl))?;
        if a.grant_ttl > a.max_grant_ttl {
            return Err("`settings.approvals.grant_ttl` must not exceed `max_grant_ttl`".into());
        }
        let retry = dur("retry_after", &d.retry_after, Duration::from_secs(a.retry_after_s))?;
        a.retry_after_s = retry.as_secs().max(1);
        for p in d.redact.iter().flatten() {
            if !p.starts_with('/') {
                return Err(format!(
                    "`settings.approvals.redact`: `{p}` is not a JSON Pointer to a field (it starts with `/`)"
                ));
            }
            a.redact.push(p.clone());
        }
        if let Some(n) = d.max_pending {
            if n == 0 || n > 1_000_000 {
                return Err("`settings.approvals.max_pending` must be 1-1000000".into());
            }
            a.max_pending = usize::try_from(n).unwrap_or(1_000_000);
        }
        if let Some(n) = d.max_pending_per_agent {
            if n == 0 || n > 1_000_000 {
                return Err("`settings.approvals.max_pending_per_agent` must be 1-1000000".into());
            }
            a.max_pending_per_agent = usize::try_from(n).unwrap_or(1_000_000);
        }
        if let Some(w) = &d.webhook {
            // The URL is not repeated in the message: it may carry a token (a Slack hook).
            let url = match &w.url {
                Some(u) => {
                    crate::webhook::parse_url(u).map_err(|e| format!("`settings.approvals.webhook.url`: {e}"))?
                }
                None => return Err("`settings.approvals.webhook` needs a `url`".into()),
            };
            let ca_file = match &w.ca_file {
                Some(f) if std::path::Path::new(f).is_absolute() => Some(std::path::PathBuf::from(f)),
                Some(f) => return Err(format!("`settings.approvals.webhook.ca_file` `{f}` must be an absolute path")),
                None => None,
            };
            a.webhook = Some(crate::webhook::Webhook { url, ca_file });
        }
        Ok(a)
    }
}

/// Where a pending approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Waiting for a human.
    Pending,
    /// A human refused it (until the record expires).
    Denied,
}

impl ApprovalStatus {
    /// `pending` / `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Denied => "denied",
        }
    }
}

/// The approval side of a decision with holds: the id, and either where the approval stands
/// (held) or the grant that lifted the holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalState {
    /// The approval id (`None` when a task grant lifted every hold before one was needed).
    pub id: Option<String>,
    /// Held: pending or denied.
    pub status: Option<ApprovalStatus>,
    /// Held: when the pending approval expires (unless retried).
    pub expires_at: Option<Timestamp>,
    /// Held: seconds to wait before retrying.
    pub retry_after_s: u64,
    /// Lifted: the grant's id.
    pub grant: Option<String>,
    /// Lifted: who granted it.
    pub approved_by: Option<String>,
    /// Held: this hold created the pending approval (it was not pending before).
    pub new: bool,
}

/// The MCP call a pending approval shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpAction {
    /// JSON-RPC method.
    pub method: String,
    /// `params.name` of a `tools/call`.
    pub tool: Option<String>,
    /// `params.arguments`, redacted.
    pub arguments: Option<Json>,
}

/// A hold rule as a pending approval shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldView {
    /// Rule id.
    pub id: String,
    /// Its message.
    pub message: Option<String>,
}

/// A pending approval (agent-controls.md §2): what a human is asked to approve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingApproval {
    /// `ap_…`.
    pub id: String,
    /// pending | denied.
    pub status: ApprovalStatus,
    /// First held.
    pub created_at: Timestamp,
    /// When it is forgotten unless held again.
    pub expires_at: Timestamp,
    /// The agent.
    pub agent: Option<String>,
    /// The user it acts for.
    pub on_behalf_of: Option<String>,
    /// The method as the approval id reads it: as sent, uppercased, and every override a
    /// request carries (`DELETE,POST`).
    pub method: String,
    /// Normalized host.
    pub host: String,
    /// Normalized path.
    pub path: Option<String>,
    /// The decoded query pairs, in order.
    #[serde(default)]
    pub query: Vec<(String, String)>,
    /// The headers the approval is bound to (those the policy reads, and `content-type`):
    /// values, or a digest for credentials.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Json>,
    /// The MCP call, for a single JSON-RPC call (a summary of `body`).
    pub mcp: Option<McpAction>,
    /// The body: JSON as parsed (redacted); any other body as `{"text", "bytes", "truncated"}`;
    /// a JSON body too large to show as `{"too_large_bytes"}`.
    pub body: Option<Json>,
    /// What `body` is: `json`, `form` (its fields), `text` or `too_large` (a JSON body may
    /// look like the others).
    #[serde(default)]
    pub body_kind: Option<String>,
    /// Whether everything above is shown in full (a body too large to show is not): an
    /// incomplete one is approved only with `force`.
    #[serde(default = "yes")]
    pub complete: bool,
    /// The digest of what a grant for this approval is bound to besides its id: the holds
    /// and the bound headers.
    #[serde(default)]
    pub binding: String,
    /// The holding rules.
    pub rules: Vec<HoldView>,
    /// How many times the action was held.
    pub seen: u64,
    /// Who denied it.
    pub decided_by: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

/// Largest body or arguments a pending approval keeps (as JSON text); larger ones are shown
/// as their size.
pub const MAX_SHOWN: usize = 16 * 1024;

fn yes() -> bool {
    true
}

impl PendingApproval {
    /// A new pending approval for a held request (seen 0: the store counts). `bound`: the
    /// header names the approval is bound to ([`binding`]).
    pub fn of(
        id: &str,
        req: &Request,
        ident: Identity<'_>,
        holds: &[HoldRule],
        bound: &[Box<str>],
        settings: &ApprovalSettings,
        now: Timestamp,
    ) -> PendingApproval {
        let expires_at = add(now, settings.pending_ttl);
        let (mut mcp, mut body, mut complete, mut kind) = (None, None, true, None);
        if !req.body.bytes.is_empty() || req.body.truncated {
            match (req.body.truncated, req.body.parsed()) {
                (false, Parsed::Json(v)) => {
                    if let Json::Object(o) = v {
                        if is_call(o) {
                            let params = o.get("params").and_then(Json::as_object);
                            mcp = Some(McpAction {
                                method: o.get("method").and_then(Json::as_str).unwrap_or("").to_owned(),
                                tool: params.and_then(|p| p.get("name")).and_then(Json::as_str).map(str::to_owned),
                                arguments: params
                                    .and_then(|p| p.get("arguments"))
                                    .map(|a| exact_numbers(redacted(a.clone(), &settings.redact))),
                            });
                        }
                    }
                    let (b, full) = shown(v, &settings.redact);
                    body = Some(b);
                    complete &= full;
                    kind = Some(if full { "json" } else { "too_large" }.to_owned());
                }
                (false, Parsed::Form(v)) => {
                    // Shown as its fields, so `redact` names them as in a JSON body.
                    let (b, full) = shown(v, &settings.redact);
                    body = Some(b);
                    complete &= full;
                    kind = Some(if full { "form" } else { "too_large" }.to_owned());
                }
                _ => {
                    let bytes = &req.body.bytes;
                    let text = String::from_utf8_lossy(bytes.get(..bytes.len().min(MAX_SHOWN)).unwrap_or(&[]));
                    complete &= bytes.len() <= MAX_SHOWN && !req.body.truncated && std::str::from_utf8(bytes).is_ok();
                    kind = Some("text".to_owned());
                    body = Some(serde_json::json!({
                        "text": text,
                        "bytes": bytes.len(),
                        "truncated": req.body.truncated,
                    }));
                }
            }
        }
        let (binding, mut headers) = binding(req, bound, holds);
        // Long values are cut (and the approval is not shown in full); `redact` pointers
        // naming one field (`/password`) hide a query parameter of that name too.
        let cut = |v: &str, complete: &mut bool| -> String {
            if v.len() <= MAX_SHOWN_VALUE {
                return v.to_owned();
            }
            *complete = false;
            let mut end = MAX_SHOWN_VALUE;
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", v.get(..end).unwrap_or(""))
        };
        let redacted_names: Vec<&str> =
            settings.redact.iter().filter_map(|p| p.strip_prefix('/')).filter(|n| !n.contains('/')).collect();
        let query: Vec<(String, String)> = req
            .query
            .iter()
            .map(|(k, v)| {
                let v =
                    if redacted_names.contains(&k.as_str()) { "[redacted]".to_owned() } else { cut(v, &mut complete) };
                (k.clone(), v)
            })
            .collect();
        for v in headers.values_mut() {
            if let Some(t) = v.as_str().filter(|t| t.len() > MAX_SHOWN_VALUE) {
                *v = Json::from(cut(t, &mut complete));
            }
        }
        if mcp.as_ref().is_some_and(|m| m.arguments.as_ref().is_some_and(|a| a.to_string().len() > MAX_SHOWN)) {
            if let Some(m) = mcp.as_mut() {
                m.arguments = Some(serde_json::json!({ "shown_in": "body" }));
            }
        }
        PendingApproval {
            id: id.to_owned(),
            status: ApprovalStatus::Pending,
            created_at: now,
            expires_at,
            agent: ident.agent.map(str::to_owned),
            on_behalf_of: ident.on_behalf_of.map(str::to_owned),
            method: method_reading(req),
            host: req.host.clone(),
            path: req.path.as_deref().ok().map(str::to_owned),
            query,
            headers,
            mcp,
            body,
            body_kind: kind,
            complete,
            binding,
            rules: holds
                .iter()
                .map(|h| HoldView { id: h.id.to_string(), message: h.message.as_deref().map(str::to_owned) })
                .collect(),
            seen: 0,
            decided_by: None,
            reason: None,
        }
    }
}

/// A JSON body as a pending approval shows it: redacted (in the body itself, in a call's
/// `params.arguments`, in every element of an array and its arguments), integers no reader
/// of JSON numbers can hold exactly shown as strings, and no larger than [`MAX_SHOWN`]
/// (`false`: not shown in full).
fn shown(v: &Json, redact: &[String]) -> (Json, bool) {
    let v = match v {
        Json::Array(items) => Json::Array(items.iter().map(|i| redacted_call(i.clone(), redact)).collect()),
        other => redacted_call(other.clone(), redact),
    };
    let v = exact_numbers(v);
    let len = v.to_string().len();
    if len > MAX_SHOWN {
        return (serde_json::json!({ "too_large_bytes": len }), false);
    }
    (v, true)
}

/// `v` redacted, and a JSON-RPC call's `params.arguments` redacted too.
fn redacted_call(v: Json, redact: &[String]) -> Json {
    let mut v = redacted(v, redact);
    if let Some(args) = v.pointer_mut("/params/arguments") {
        *args = redacted(std::mem::take(args), redact);
    }
    v
}

/// Every field `redact` names replaced by `"[redacted]"`.
fn redacted(mut v: Json, redact: &[String]) -> Json {
    for p in redact {
        if let Some(field) = v.pointer_mut(p) {
            *field = Json::from("[redacted]");
        }
    }
    v
}

/// Integers above 2^53 in magnitude as strings: a browser's `JSON.parse` would round them
/// and show the approver another number.
fn exact_numbers(v: Json) -> Json {
    const SAFE: u64 = 1 << 53;
    match v {
        Json::Number(n) => {
            let big = n.as_u64().is_some_and(|u| u > SAFE) || n.as_i64().is_some_and(|i| i.unsigned_abs() > SAFE);
            if big {
                Json::String(n.to_string())
            } else {
                Json::Number(n)
            }
        }
        Json::Array(a) => Json::Array(a.into_iter().map(exact_numbers).collect()),
        Json::Object(o) => Json::Object(o.into_iter().map(|(k, v)| (k, exact_numbers(v))).collect()),
        other => other,
    }
}

/// Whether a header is shown to approvers only as a digest: credentials by name
/// (`authorization`, `cookie`, anything naming a key, token, secret, password, session or
/// signature).
fn is_credential_header(name: &str) -> bool {
    ["auth", "cookie", "key", "token", "secret", "passw", "session", "signature"].iter().any(|w| name.contains(w))
}

/// Longest query or header value a pending approval shows whole.
pub const MAX_SHOWN_VALUE: usize = 2048;

/// What an approval is bound to besides its id (which names the action): the holds the
/// approver saw, the values of `bound` headers (those the policy reads, and
/// `content-type`) and the query in its order. A grant lifts only a request with the same binding, so a header the
/// policy reads (or another hold) cannot be changed after approval. Returns the digest and
/// the headers as shown (credentials as a digest).
pub fn binding(
    req: &Request,
    bound: &[Box<str>],
    holds: &[HoldRule],
) -> (String, std::collections::BTreeMap<String, Json>) {
    let mut names: Vec<&str> = bound.iter().map(|b| &**b).chain(["content-type", "content-encoding"]).collect();
    names.sort_unstable();
    names.dedup();
    let mut rules: Vec<&str> = holds.iter().map(|h| &*h.id).collect();
    rules.sort_unstable();
    let mut shown = std::collections::BTreeMap::new();
    let mut pairs = Vec::with_capacity(names.len());
    for n in names {
        let v = req.headers.get(n).map(String::as_str);
        pairs.push(Json::Array(vec![Json::from(n), v.map_or(Json::Null, Json::from)]));
        if let Some(v) = v {
            let show = if is_credential_header(n) {
                let d: String = Sha256::digest(v.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
                format!("[sha256:{d}…]")
            } else {
                v.to_owned()
            };
            shown.insert(n.to_owned(), Json::from(show));
        }
    }
    // The query in order: the id sorts its pairs, and upstreams take a repeated name's first
    // or last value.
    let query: Vec<Json> =
        req.query.iter().map(|(k, v)| Json::Array(vec![Json::from(k.as_str()), Json::from(v.as_str())])).collect();
    let doc = Json::Array(vec![Json::from(rules), Json::Array(pairs), Json::Array(query)]);
    let mut text = String::new();
    write_canonical(&doc, &mut text);
    let hex: String = Sha256::digest(text.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect();
    (hex, shown)
}

/// Why a held request cannot be approved — its action cannot be named exactly, so an
/// approval could be stretched to cover another — or `None` when it can.
pub fn unapprovable(req: &Request) -> Option<&'static str> {
    if req.body.truncated {
        return Some("its body was not received in full");
    }
    if req.body.encoded {
        return Some("its body is compressed or encoded (`content-encoding`): the upstream acts on what it decodes");
    }
    if let Parsed::Unknown(u) = req.body.parsed() {
        use crate::request::body::UnknownBody;
        if matches!(u, UnknownBody::Unparseable | UnknownBody::Charset | UnknownBody::Ambiguous) {
            return Some("its body is declared JSON or a form but does not read alike to every upstream (duplicate keys, another charset, bracketed or JSON-looking fields)");
        }
    }
    if !req.method_overrides(|_| {}) {
        return Some("its method overrides cannot be read (a multipart or encoded body may carry `_method`)");
    }
    if req.query_overflow {
        return Some("its query has more parameters than hallpass reads");
    }
    if !req.query_alt.is_empty() {
        return Some("its query reads differently to different upstreams (`;`)");
    }
    if req.query.iter().any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}')) {
        return Some("its query is not valid UTF-8");
    }
    if matches!(req.body.parsed(), Parsed::Json(_)) && inexact_numbers(&req.body.bytes) {
        return Some("its body has numbers that JSON readers do not read alike");
    }
    None
}

/// Whether a JSON text has a number hallpass's reading does not hold exactly: an integer
/// outside the 64-bit range (read as a float), or a fraction or exponent with more than 15
/// significant digits.
fn inexact_numbers(text: &[u8]) -> bool {
    let (mut in_str, mut esc, mut i) = (false, false, 0usize);
    while let Some(&b) = text.get(i) {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_str = true;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let (mut sig, mut frac, mut in_exp, mut leading) = (0usize, false, false, true);
                while let Some(&c) = text.get(i) {
                    match c {
                        b'0' if !in_exp && leading => {}
                        b'0'..=b'9' if !in_exp => {
                            leading = false;
                            sig += 1;
                        }
                        b'.' => frac = true,
                        b'e' | b'E' => {
                            frac = true;
                            in_exp = true;
                        }
                        b'0'..=b'9' | b'-' | b'+' => {}
                        _ => break,
                    }
                    i += 1;
                }
                let literal = std::str::from_utf8(text.get(start..i).unwrap_or(&[])).unwrap_or("");
                let inexact = if frac {
                    sig > 15
                } else {
                    sig > 18
                        && !matches!(literal.parse::<i128>(),
                            Ok(n) if n >= i128::from(i64::MIN) && n <= i128::from(u64::MAX))
                };
                if inexact {
                    return true;
                }
            }
            _ => i += 1,
        }
    }
    false
}

/// A JSON-RPC 2.0 call (a request or notification): `"jsonrpc": "2.0"` and a string
/// `method`, spelt exactly.
pub fn is_call(o: &serde_json::Map<String, Json>) -> bool {
    o.get("jsonrpc").and_then(Json::as_str) == Some("2.0") && o.get("method").is_some_and(Json::is_string)
}

/// The MCP tools a request calls: `params.name` of its `tools/call` (of every element of a
/// batch); `""` for anything a reader may take for a tool call whose name is not read
/// exactly (a member spelt in another case, a name that is not a string, an element that is
/// not a JSON-RPC object): no task grant names `""`, so none lifts it. Empty for a body that
/// calls no tool.
pub fn tools(req: &Request) -> Vec<&str> {
    use crate::request::body::{lookup_key, KeyLookup};
    fn name(v: &Json) -> Option<&str> {
        let Some(o) = v.as_object() else { return Some("") };
        match lookup_key(o, "method") {
            KeyLookup::Found(Json::String(m)) if m == "tools/call" => {}
            KeyLookup::Missing => return None,
            // Another method (resources/read, prompts/get, …) is no tool a grant names.
            _ => return Some(""),
        }
        let Some(params) = o.get("params").and_then(Json::as_object) else { return Some("") };
        match lookup_key(params, "name") {
            KeyLookup::Found(Json::String(n))
                if o.keys().all(|k| k == "params" || !k.eq_ignore_ascii_case("params")) =>
            {
                Some(n)
            }
            _ => Some(""),
        }
    }
    if req.body.truncated {
        return vec![""];
    }
    match req.body.parsed() {
        // Every element of an array counts: one that is not a tool call is not lifted by a
        // grant for tools.
        Parsed::Json(Json::Array(items)) => items.iter().map(|i| name(i).unwrap_or("")).collect(),
        Parsed::Json(v) => name(v).into_iter().collect(),
        Parsed::Unknown(_) => vec![""],
        _ => Vec::new(),
    }
}

/// `now + d`, saturating.
pub fn add(now: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d).ok().and_then(|d| now.checked_add(d).ok()).unwrap_or(Timestamp::MAX)
}

/// A grant (agent-controls.md §2): it lifts holds, never a deny.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// `gr_…`.
    pub id: String,
    /// What it lifts.
    #[serde(flatten)]
    pub kind: GrantKind,
    /// When it was made.
    pub created_at: Timestamp,
    /// At or after this instant it lifts nothing.
    pub expires_at: Timestamp,
    /// The approver's name.
    pub approved_by: String,
    /// Why.
    pub reason: String,
}

/// An approval grant or a task grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GrantKind {
    /// Lifts every hold of the request with this approval id, `uses` times.
    Approval {
        /// `ap_…`.
        approval: String,
        /// Uses left.
        uses: u32,
        /// What it is bound to besides the approval id (the pending approval's `binding`).
        #[serde(default)]
        binding: String,
    },
    /// Lifts these holds for this agent (for this user, calling these tools).
    Task {
        /// The agent.
        agent: String,
        /// The user, if the grant is for one.
        on_behalf_of: Option<String>,
        /// Hold rule ids.
        rules: Vec<String>,
        /// MCP tools, if the grant is for some only.
        tools: Option<Vec<String>>,
    },
}

impl Grant {
    /// In force at `now` (expiry is exact).
    pub fn in_force(&self, now: Timestamp) -> bool {
        now < self.expires_at
    }

    /// The id of the approval grant for approval `ap`: one per approval (approving again
    /// replaces it).
    pub fn approval_grant_id(ap: &str) -> String {
        format!("gr_{}", ap.strip_prefix(PREFIX).unwrap_or(ap))
    }

    /// Whether this task grant lifts hold `rule` for a request by `agent` acting for `obo`
    /// whose MCP tools are `tools` (every `tools/call` of it; empty when none).
    pub fn lifts(&self, rule: &str, agent: Option<&str>, obo: Option<&str>, tools: &[&str], now: Timestamp) -> bool {
        let GrantKind::Task { agent: ga, on_behalf_of, rules, tools: gtools } = &self.kind else { return false };
        self.in_force(now)
            && agent == Some(ga.as_str())
            && on_behalf_of.as_deref().is_none_or(|o| obo == Some(o))
            && rules.iter().any(|r| r == rule)
            && gtools.as_ref().is_none_or(|g| !tools.is_empty() && tools.iter().all(|t| g.iter().any(|x| x == t)))
    }
}

/// A fresh grant id: `gr_` + 26 base32 characters (the std hasher's per-process random keys
/// over the time and pid; ids name grants, they are not secrets).
pub fn new_grant_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let now = Timestamp::now().as_nanosecond();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i128(now);
    h.write_u32(std::process::id());
    let mut seed = Vec::with_capacity(24);
    seed.extend_from_slice(&h.finish().to_le_bytes());
    seed.extend_from_slice(&now.to_le_bytes());
    let digest = Sha256::digest(&seed);
    format!("gr_{}", base32_lower(&digest, 26))
}

/// The prefix of every approval id.
pub const PREFIX: &str = "ap_";
/// The first element of the canonical array: the version of this reading.
pub const VERSION: &str = "hallpass.approval/v1";

/// The approval id of a request made by `ident`.
pub fn approval_id(req: &Request, ident: Identity<'_>) -> String {
    id_of(&canonical_text(req, ident))
}

/// `ap_` + 26 characters of base32 of SHA-256 of `text`.
pub fn id_of(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(PREFIX.len() + 26);
    out.push_str(PREFIX);
    out.push_str(&base32_lower(&digest, 26));
    out
}

/// The canonical text an approval id is the hash of.
pub fn canonical_text(req: &Request, ident: Identity<'_>) -> String {
    // Sorted pairs (the contract's form); the order of a repeated name's values, which
    // upstreams read differently (first or last), is bound separately ([`binding`]).
    let mut query: Vec<(&str, &str)> = req.query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    query.sort_unstable();
    let query: Vec<Json> = query.into_iter().map(|(k, v)| Json::Array(vec![Json::from(k), Json::from(v)])).collect();
    let doc = Json::Array(vec![
        Json::from(VERSION),
        ident.agent.map_or(Json::Null, Json::from),
        ident.on_behalf_of.map_or(Json::Null, Json::from),
        Json::from(method_reading(req)),
        Json::from(req.host.as_str()),
        req.path.as_deref().map_or(Json::Null, Json::from),
        Json::Array(query),
        body_reading(req),
    ]);
    let mut out = String::with_capacity(256);
    write_canonical(&doc, &mut out);
    out
}

/// The method as the approval id reads it.
pub fn method_reading(req: &Request) -> String {
    let upper = req.method.to_ascii_uppercase();
    if !req.method_override {
        return upper;
    }
    let mut all = vec![req.method.clone(), upper];
    req.method_overrides(|m| all.push(m.to_string()));
    all.sort_unstable();
    all.dedup();
    all.join(",")
}

fn body_reading(req: &Request) -> Json {
    let bytes = &req.body.bytes;
    if bytes.is_empty() && !req.body.truncated {
        return Json::Null;
    }
    if !req.body.truncated {
        if let Parsed::Json(v) = req.body.parsed() {
            let mut v = v.clone();
            strip_rpc_ids(&mut v);
            return v;
        }
    }
    let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    let mut o = serde_json::Map::new();
    o.insert("sha256".into(), Json::from(hex));
    if req.body.truncated {
        o.insert("truncated".into(), Json::Bool(true));
    }
    Json::Object(o)
}

/// Remove the `id` of a JSON-RPC 2.0 call, or of each call of a batch: only a string, number
/// or null `id` of an object that is a call (anything else stays in the reading, so it
/// cannot be varied under one approval).
fn strip_rpc_ids(v: &mut Json) {
    let strip = |o: &mut Json| {
        if let Json::Object(m) = o {
            if is_call(m) && m.get("id").is_some_and(|i| i.is_string() || i.is_number() || i.is_null()) {
                m.remove("id");
            }
        }
    };
    match v {
        Json::Array(items) => items.iter_mut().for_each(strip),
        other => strip(other),
    }
}

/// Canonical JSON: keys sorted bytewise, no whitespace.
pub fn write_canonical(v: &Json, out: &mut String) {
    match v {
        Json::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                if let Some(val) = m.get(k) {
                    write_canonical(val, out);
                }
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Json::String(s) => write_string(s, out),
        // Scalars: serde_json's own text (numbers as parsed).
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push_str(&Json::from(s).to_string());
}

/// Lowercase RFC 4648 base32 without padding, the first `n` characters.
fn base32_lower(bytes: &[u8], n: usize) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let symbol = |v: u64| ALPHABET.get((v & 31) as usize).map_or('a', |c| char::from(*c));
    let mut out = String::with_capacity(n);
    // INVARIANT: fewer than 5 bits are left in `acc` after each byte, so it never exceeds 13.
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in bytes {
        if out.len() >= n {
            return out;
        }
        acc = ((acc << 8) | u64::from(b)) & 0x1fff;
        bits += 8;
        while bits >= 5 && out.len() < n {
            bits -= 5;
            out.push(symbol(acc >> bits));
        }
    }
    if bits > 0 && out.len() < n {
        out.push(symbol(acc << (5 - bits)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(tools: Option<Vec<&str>>, obo: Option<&str>) -> Grant {
        Grant {
            id: "gr_x".into(),
            kind: GrantKind::Task {
                agent: "bot".into(),
                on_behalf_of: obo.map(str::to_owned),
                rules: vec!["hold-a".into()],
                tools: tools.map(|t| t.into_iter().map(str::to_owned).collect()),
            },
            created_at: Timestamp::UNIX_EPOCH,
            expires_at: Timestamp::from_second(100).unwrap_or(Timestamp::MAX),
            approved_by: "ops".into(),
            reason: String::new(),
        }
    }

    #[test]
    fn a_task_grant_lifts_only_its_agent_user_rules_and_tools_until_it_expires() {
        let at = |s: i64| Timestamp::from_second(s).unwrap_or(Timestamp::MAX);
        let g = task(None, None);
        assert!(g.lifts("hold-a", Some("bot"), None, &[], at(99)));
        assert!(!g.lifts("hold-a", Some("bot"), None, &[], at(100)), "expiry is exact");
        assert!(!g.lifts("hold-b", Some("bot"), None, &[], at(1)), "another rule");
        assert!(!g.lifts("hold-a", Some("bot2"), None, &[], at(1)), "another agent");
        assert!(!g.lifts("hold-a", None, None, &[], at(1)), "an unidentified caller");
        let g = task(None, Some("alice"));
        assert!(g.lifts("hold-a", Some("bot"), Some("alice"), &[], at(1)));
        assert!(!g.lifts("hold-a", Some("bot"), Some("bob"), &[], at(1)), "another user");
        assert!(!g.lifts("hold-a", Some("bot"), None, &[], at(1)), "no user");
        let g = task(Some(vec!["send_email"]), None);
        assert!(g.lifts("hold-a", Some("bot"), None, &["send_email"], at(1)));
        assert!(g.lifts("hold-a", Some("bot"), None, &["send_email", "send_email"], at(1)));
        assert!(!g.lifts("hold-a", Some("bot"), None, &["send_email", "delete_file"], at(1)), "every tool of a batch");
        assert!(!g.lifts("hold-a", Some("bot"), None, &[], at(1)), "a request that calls no tool");
        assert!(!g.lifts("hold-a", Some("bot"), None, &["send_email", ""], at(1)), "an unreadable tool name");
        let a = Grant {
            kind: GrantKind::Approval { approval: "ap_x".into(), uses: 1, binding: String::new() },
            ..task(None, None)
        };
        assert!(!a.lifts("hold-a", Some("bot"), None, &[], at(1)), "an approval grant is not a task grant");
    }

    #[test]
    fn approval_grant_ids_follow_the_approval_id() {
        assert_eq!(Grant::approval_grant_id("ap_su52sl4mnxhvgu6aaa5lcn67pi"), "gr_su52sl4mnxhvgu6aaa5lcn67pi");
        let (a, b) = (new_grant_id(), new_grant_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 29);
        assert!(a.starts_with("gr_"));
    }
    use crate::request::build::CheckRequestBuilder;

    fn req(b: CheckRequestBuilder) -> Request {
        Request::from_check_request(b.build()).unwrap()
    }

    fn ident<'a>(agent: &'a str, obo: Option<&'a str>) -> Identity<'a> {
        Identity { agent: Some(agent), on_behalf_of: obo }
    }

    #[test]
    fn base32_matches_rfc4648() {
        // RFC 4648 §10 test vectors, lowercase, unpadded.
        for (input, want) in [
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            assert_eq!(base32_lower(input.as_bytes(), 100), want, "{input}");
        }
    }

    /// Test vectors, cross-checked by an independent implementation (Python: `json.dumps` with
    /// `sort_keys=True, separators=(",", ":"), ensure_ascii=False`, `hashlib.sha256`,
    /// `base64.b32encode`, lowercased, `=` stripped, first 26 characters).
    #[test]
    fn test_vectors() {
        let mcp = |id: u32| {
            CheckRequestBuilder::new("POST", "/mcp?b=2&a=1")
                .host("Tools.Example.com:443")
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"send_mail","arguments":{{"to":["eve@evil.io"],"subject":"hi"}}}}}}"#
                ))
        };
        let a = req(mcp(1));
        let text = canonical_text(&a, ident("triage-bot", Some("alice")));
        assert_eq!(
            text,
            r#"["hallpass.approval/v1","triage-bot","alice","POST","tools.example.com","/mcp",[["a","1"],["b","2"]],{"jsonrpc":"2.0","method":"tools/call","params":{"arguments":{"subject":"hi","to":["eve@evil.io"]},"name":"send_mail"}}]"#
        );
        let id = approval_id(&a, ident("triage-bot", Some("alice")));
        assert_eq!(id, "ap_su52sl4mnxhvgu6aaa5lcn67pi");
        // The JSON-RPC id is not part of it: a retry with a new id is the same action.
        assert_eq!(approval_id(&req(mcp(77)), ident("triage-bot", Some("alice"))), id);
        // Another user, another agent, another argument: another action.
        assert_ne!(approval_id(&a, ident("triage-bot", Some("bob"))), id);
        assert_ne!(approval_id(&a, ident("other-bot", Some("alice"))), id);

        let get = req(CheckRequestBuilder::new("delete", "/v1/users/alice/messages/m1").host("mail.example.com"));
        assert_eq!(
            canonical_text(&get, ident("triage-bot", None)),
            r#"["hallpass.approval/v1","triage-bot",null,"DELETE","mail.example.com","/v1/users/alice/messages/m1",[],null]"#
        );
        assert_eq!(approval_id(&get, ident("triage-bot", None)), "ap_2cvadofkb3izs3q4qb6ao3vw2h");

        let form = req(CheckRequestBuilder::new("POST", "/deals")
            .host("crm.example.com")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("discount=30&name=x"));
        assert_eq!(
            canonical_text(&form, ident("sales", None)),
            r#"["hallpass.approval/v1","sales",null,"POST","crm.example.com","/deals",[],{"sha256":"f6cc349059c6c50b183a43c9cf93cf09e8f5a27797dd99e2b6ab29adee286314"}]"#
        );
        assert_eq!(approval_id(&form, ident("sales", None)), "ap_jsepui7kzv2dvdxsi3ejc5amel");
    }

    #[test]
    fn method_overrides_are_part_of_the_method() {
        let plain = req(CheckRequestBuilder::new("POST", "/x").host("h"));
        let overridden =
            req(CheckRequestBuilder::new("POST", "/x").host("h").header("x-http-method-override", "DELETE"));
        let t = canonical_text(&overridden, Identity::default());
        assert!(t.contains(r#""DELETE,POST""#), "{t}");
        assert_ne!(approval_id(&plain, Identity::default()), approval_id(&overridden, Identity::default()));
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter_but_values_do() {
        let body = |b: &str| {
            req(CheckRequestBuilder::new("POST", "/x")
                .host("h")
                .header("content-type", "application/json")
                .body(b.to_string()))
        };
        let i = Identity::default();
        assert_eq!(
            approval_id(&body(r#"{"a":1,"b":[1,2]}"#), i),
            approval_id(&body("{ \"b\" : [1, 2],\n \"a\": 1 }"), i)
        );
        assert_ne!(approval_id(&body(r#"{"a":1,"b":[1,2]}"#), i), approval_id(&body(r#"{"a":1,"b":[2,1]}"#), i));
        assert_ne!(approval_id(&body(r#"{"a":1}"#), i), approval_id(&body(r#"{"a":1.0}"#), i), "numbers as written");
        // A body that is not strict JSON (a duplicate key) is taken by its bytes.
        assert!(canonical_text(&body(r#"{"a":1,"a":2}"#), i).contains("sha256"));
    }
}
