//! Input capture and replay (agent-controls.md §9): with `decision_log.inputs: full`, every
//! Check's input is written as a `hallpass.input/v1` record (docs/input.schema.json) — the
//! request as Envoy sent it, reduced to what deciding needs: header values only for headers
//! the policy reads (and the few normalization reads), every header's name, the JWT claims
//! identity reads, the body with `decision_log.mask` pointers replaced by a marker — and the
//! decision made. `hallpass replay --policy CANDIDATE` re-decides the records at their recorded
//! times, in order, through the same Check pipeline, and reports what the candidate changes.
//!
//! A replayed decision is `indeterminate` (reported apart, never counted as a change) when the
//! candidate reads what was not recorded: a masked body value, an omitted body, the value of a
//! header that was present but whose value was not kept; or when the recorded decision came
//! from state replay does not have (a manual quarantine, a missing credential, the store).

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::policy::condition::Condition;
use crate::policy::eval::RuleId;
use crate::policy::rule::IdentitySource;
use crate::policy::Policy;
use crate::request::{RequestParts, METHOD_OVERRIDE_HEADERS};

/// The schema name of an input record.
pub const SCHEMA: &str = "hallpass.input/v1";
/// What a masked value becomes.
pub const MASKED: &str = "hallpass:masked";

/// One captured input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputRecord {
    /// `hallpass.input/v1`.
    pub schema: String,
    /// The decision record's id (the two files join on it).
    pub decision_id: String,
    /// When it was decided.
    pub time: Timestamp,
    /// The policy revision that decided.
    pub revision: String,
    /// The request.
    pub request: InputRequest,
    /// What was decided.
    pub decision: RecordedDecision,
}

/// The request of an input record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InputRequest {
    /// The method as sent.
    pub method: String,
    /// `:authority` as sent.
    pub host: String,
    /// `:path` as sent (query included).
    pub path: String,
    /// Values of the headers kept (lowercase names, repeated ones joined with `,`).
    pub headers: BTreeMap<String, String>,
    /// Every header's name (values of the others were not kept).
    pub header_names: Vec<String>,
    /// The mTLS principal.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub principal: Option<String>,
    /// The JWT claims identity reads: `{provider: {claim: …}}`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub jwt: Option<serde_json::Value>,
    /// The JWT claims capture looked for (`provider/claim.path`), present or not: a claim
    /// outside this list was not recorded.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub jwt_claims: Vec<String>,
    /// The selected route's `hallpass` metadata `upstream`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub route: Option<String>,
    /// The body (UTF-8), masked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub body: Option<String>,
    /// The body was not kept (not UTF-8, or not JSON while masks are set).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub body_omitted: bool,
    /// The pointers whose values were masked.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub masked: Vec<String>,
}

/// The decision an input got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedDecision {
    /// `allow` or `deny`.
    pub decision: String,
    /// The deciding rule.
    pub rule: String,
    /// Made in dry run.
    #[serde(default)]
    pub dry_run: bool,
    /// A grant lifted its holds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grant: Option<String>,
}

/// What capture masks in bodies (JSON Pointers), and the header names whose values it keeps
/// for the live policy last seen (computed once per policy, not per Check).
pub struct Masks {
    pointers: Vec<String>,
    /// Longest body kept (what hallpass reads: `limits.max_body_bytes`).
    max_body: usize,
    kept: arc_swap::ArcSwapOption<(Arc<crate::reload::LivePolicy>, BTreeSet<String>)>,
}

impl std::fmt::Debug for Masks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masks").field("pointers", &self.pointers).finish_non_exhaustive()
    }
}

impl Default for Masks {
    /// No masks; bodies kept up to hallpass's default `max_body_bytes`.
    fn default() -> Masks {
        Masks::new(Vec::new(), crate::check::DEFAULT_MAX_BODY_BYTES)
    }
}

impl Masks {
    /// Masks for these pointers (each starts with `/`).
    pub fn new(pointers: Vec<String>, max_body: usize) -> Masks {
        Masks { pointers, max_body, kept: arc_swap::ArcSwapOption::empty() }
    }

    /// Capture `req` for the live policy `live` (its kept header names computed once).
    pub fn capture(&self, req: &CheckRequest, live: &Arc<crate::reload::LivePolicy>) -> Option<InputRequest> {
        let cached = self.kept.load_full().filter(|k| Arc::ptr_eq(&k.0, live));
        let kept = match cached {
            Some(k) => k,
            None => {
                let k = Arc::new((Arc::clone(live), kept_headers(&live.policy)));
                self.kept.store(Some(Arc::clone(&k)));
                k
            }
        };
        capture_with(req, &live.policy, &kept.1, self)
    }
}

/// Whether a lowercase header name is one of `names` to some upstream (`_` = `-`).
fn among(name: &str, names: &BTreeSet<String>) -> bool {
    names.iter().any(|n| crate::request::same_header(name, n))
}

/// The header names whose values a capture keeps for `policy`: those its rules read, its
/// identity headers, and those normalization reads.
pub fn kept_headers(policy: &Policy) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = policy.inputs.headers.iter().map(|h| h.to_string()).collect();
    for s in policy.identity.agent.iter().chain(&policy.identity.on_behalf_of) {
        if let IdentitySource::Header(h) = s {
            out.insert(h.clone());
        }
    }
    // Limit keys read headers too (`per: [header.x]`).
    for r in &policy.rules {
        for l in &r.limits {
            for k in &l.per {
                if let crate::limits::KeyPart::Header(h) = k {
                    out.insert(h.to_string());
                }
            }
        }
    }
    for h in
        METHOD_OVERRIDE_HEADERS.iter().chain(&["content-type", "content-encoding", crate::request::PARTIAL_BODY_HEADER])
    {
        out.insert((*h).to_string());
    }
    out
}

/// Headers whose values a capture never keeps: the credential headers hallpass knows, every
/// rule's `strip_headers` and every credential's own header.
pub fn secret_headers(policy: &Policy) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = crate::credentials::DEFAULT_STRIP.iter().map(|h| (*h).to_string()).collect();
    for r in &policy.rules {
        out.extend(r.strip_headers.iter().map(|h| h.to_string()));
    }
    out.extend(policy.credentials.iter().map(|c| c.header.to_string()));
    out
}

/// Protobuf Struct → JSON.
fn proto_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, serde_json::Value::Number)
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(proto_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

fn struct_to_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), proto_to_json(v))).collect())
}

/// The JWT claims `policy`'s identity reads, out of the jwt_authn metadata.
fn kept_claims(policy: &Policy, jwt: &Struct) -> Option<serde_json::Value> {
    let all = struct_to_json(jwt);
    let mut out = serde_json::json!({});
    let mut any = false;
    for s in policy.identity.agent.iter().chain(&policy.identity.on_behalf_of) {
        let IdentitySource::Jwt { provider, claim } = s else { continue };
        let mut from = all.get(provider);
        for c in claim {
            from = from.and_then(|v| v.get(c));
        }
        let Some(v) = from else { continue };
        let mut nested = v.clone();
        for key in std::iter::once(provider).chain(claim.iter()).rev() {
            nested = serde_json::Value::Object([(key.clone(), nested)].into_iter().collect());
        }
        merge(&mut out, nested);
        any = true;
    }
    any.then_some(out)
}

/// The JWT claim paths `policy`'s identity reads, as `provider/claim.path`, sorted.
pub fn jwt_claim_paths(policy: &Policy) -> Vec<String> {
    let mut out: Vec<String> = policy
        .identity
        .agent
        .iter()
        .chain(&policy.identity.on_behalf_of)
        .filter_map(|s| match s {
            IdentitySource::Jwt { provider, claim } => Some(format!("{provider}/{}", claim.join("."))),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Merge object `b` into `a` (objects merged key by key, anything else replaced).
fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (a, b) => *a = b,
    }
}

/// Replace the values at `pointers` (in the document, and in each element of a top-level
/// array: a JSON-RPC batch) by [`MASKED`]; the pointers that were present.
fn mask_json(doc: &mut serde_json::Value, pointers: &[String]) -> Vec<String> {
    let mut hit = Vec::new();
    for p in pointers {
        let tokens: Vec<String> = p.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect();
        let mut any = mask_at(doc, &tokens);
        if let serde_json::Value::Array(items) = doc {
            for item in items.iter_mut() {
                any |= mask_at(item, &tokens);
            }
        }
        if any {
            hit.push(p.clone());
        }
    }
    hit
}

/// Mask the value(s) at `tokens`: object keys compared in any ASCII case (an upstream may
/// bind `Password` to `password`: every spelling is masked), array elements by index.
fn mask_at(v: &mut serde_json::Value, tokens: &[String]) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        *v = serde_json::Value::String(MASKED.into());
        return true;
    };
    match v {
        serde_json::Value::Object(o) => {
            let mut any = false;
            for (k, child) in o.iter_mut() {
                if k.eq_ignore_ascii_case(first) {
                    any |= mask_at(child, rest);
                }
            }
            any
        }
        serde_json::Value::Array(a) => {
            first.parse::<usize>().ok().and_then(|i| a.get_mut(i)).is_some_and(|child| mask_at(child, rest))
        }
        _ => false,
    }
}

/// The path with the values of credential query parameters (`access_token`, `api_key`, …,
/// any case) replaced by [`MASKED`], and `?name` for each one masked.
fn mask_query(path: &str) -> (String, Vec<String>) {
    let Some((p, q)) = path.split_once('?') else { return (path.to_string(), Vec::new()) };
    let mut masked = Vec::new();
    // Split where any upstream splits (`&`, and `;` for Rails/Rack and older Go/Python);
    // names read as upstreams read them (case, brackets, PHP's mangling).
    let mut out = String::with_capacity(path.len());
    out.push_str(p);
    out.push('?');
    // Where the current pair starts in `q` (the byte before it is the separator as sent).
    let mut at = 0usize;
    for (i, pair) in q.split(['&', ';']).enumerate() {
        if i > 0 {
            out.push_str(q.get(at - 1..at).unwrap_or("&"));
        }
        at += pair.len() + 1;
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        // `+` is a space in a form-encoded name (as hallpass reads it).
        let plus = name.replace('+', " ");
        let decoded = percent_encoding::percent_decode_str(&plus).decode_utf8_lossy();
        let lower = decoded.to_ascii_lowercase();
        if let Some(c) =
            crate::credentials::CREDENTIAL_PARAMS.iter().find(|c| crate::request::param_is(&lower, c) || lower == **c)
        {
            masked.push(format!("?{c}"));
            out.push_str(name);
            out.push('=');
            out.push_str(MASKED);
        } else {
            out.push_str(pair);
        }
    }
    masked.sort();
    masked.dedup();
    (out, masked)
}

/// The request part of an input record, from a CheckRequest (a copy: the Check goes on with
/// the original). `None` when it carries no HTTP request.
pub fn capture(req: &CheckRequest, policy: &Policy, masks: &Masks) -> Option<InputRequest> {
    capture_with(req, policy, &kept_headers(policy), masks)
}

fn capture_with(req: &CheckRequest, policy: &Policy, kept: &BTreeSet<String>, masks: &Masks) -> Option<InputRequest> {
    let parts: RequestParts = crate::request::envoy::parts(req.clone()).ok()?;
    let mut header_names: Vec<String> = parts.headers.keys().filter(|k| !k.starts_with(':')).cloned().collect();
    header_names.sort();
    // Never the value of a header that carries credentials, even one the policy reads.
    let secret = secret_headers(policy);
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with(':') && among(k, kept) && !among(k, &secret))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (path, masked_params) = mask_query(&parts.path);
    let (mut body, mut body_omitted, mut masked) = (None, false, masked_params);
    let mut raw = parts.body;
    if raw.len() > masks.max_body {
        // Longer than hallpass reads (it was decided as truncated): kept as far as it read.
        raw.truncate(masks.max_body);
        body_omitted = true;
    }
    if !raw.is_empty() && !body_omitted {
        match String::from_utf8(raw) {
            Err(_) => body_omitted = true,
            Ok(text) if masks.pointers.is_empty() => body = Some(text),
            // Masked only if it reads as hallpass reads it (strictly: a duplicate key would be
            // collapsed by re-serializing, and a body hallpass refused would read in replay).
            Ok(text) => match crate::request::body::parse_json(text.as_bytes()) {
                Some(mut doc) => {
                    let hit = mask_json(&mut doc, &masks.pointers);
                    body = Some(if hit.is_empty() { text } else { doc.to_string() });
                    masked.extend(hit);
                }
                // Masks are set and this body's fields cannot be found: not kept.
                None => body_omitted = true,
            },
        }
    }
    Some(InputRequest {
        method: parts.method,
        host: parts.host,
        path,
        headers,
        header_names,
        principal: parts.principal,
        jwt: parts.jwt.as_ref().and_then(|j| kept_claims(policy, j)),
        jwt_claims: jwt_claim_paths(policy),
        route: parts.route_upstream,
        body,
        body_omitted,
        masked,
    })
}

impl InputRecord {
    /// The record of a Check: its captured request and what was decided.
    pub fn new(request: InputRequest, checked: &crate::check::Checked) -> InputRecord {
        InputRecord {
            schema: SCHEMA.into(),
            decision_id: checked.decision_id.clone(),
            time: checked.time,
            revision: checked.live.revision.to_string(),
            request,
            decision: recorded(&checked.decision),
        }
    }
}

/// The recorded form of a decision.
fn recorded(d: &crate::policy::Decision) -> RecordedDecision {
    RecordedDecision {
        decision: if d.allowed() { "allow" } else { "deny" }.into(),
        rule: d.rule.as_str().to_string(),
        dry_run: d.dry_run(),
        grant: d.approval.as_ref().and_then(|a| a.grant.clone()),
    }
}

impl InputRequest {
    /// The CheckRequest to decide again (headers whose values were not kept are sent empty).
    pub fn to_check_request(&self) -> CheckRequest {
        let mut b = crate::request::build::CheckRequestBuilder::new(&self.method, &self.path).host(&self.host);
        for name in &self.header_names {
            b = b.header(name, self.headers.get(name).map_or("", String::as_str));
        }
        if let Some(body) = &self.body {
            b = b.body(body.clone().into_bytes());
        }
        if let Some(p) = &self.principal {
            b = b.principal(p);
        }
        if let Some(j) = &self.jwt {
            b = b.jwt(j);
        }
        if let Some(r) = &self.route {
            b = b.route_upstream(r);
        }
        let mut req = b.build();
        // The builder adds a request id and the partial-body header; keep only what was sent.
        if let Some(http) = req.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
            for h in ["x-request-id", crate::request::PARTIAL_BODY_HEADER] {
                if !self.header_names.iter().any(|n| n == h) {
                    http.headers.remove(h);
                }
            }
        }
        req
    }
}

/// How a replayed decision compares with the recorded one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Same decision, same rule.
    Unchanged,
    /// Allowed then, denied now.
    AllowToDeny,
    /// Denied then, allowed now.
    DenyToAllow,
    /// Same decision by another rule.
    RuleChanged,
    /// The candidate reads what was not recorded, or the recorded decision came from state
    /// replay does not have.
    Indeterminate,
}

impl Change {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Unchanged => "unchanged",
            Change::AllowToDeny => "allow_to_deny",
            Change::DenyToAllow => "deny_to_allow",
            Change::RuleChanged => "rule_changed",
            Change::Indeterminate => "indeterminate",
        }
    }
}

/// One input replayed.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    /// The recorded decision id.
    pub decision_id: String,
    /// Method, host and path, for examples.
    pub request: String,
    /// Then.
    pub recorded: RecordedDecision,
    /// Now.
    pub replayed: RecordedDecision,
    /// How they compare.
    pub change: Change,
    /// Why indeterminate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The body pointers (decoded tokens) each rule of a policy reads, by rule index.
fn body_pointers(policy: &Policy) -> Vec<Vec<Vec<Box<str>>>> {
    fn walk(c: &Condition, prefix: &[Box<str>], out: &mut Vec<Vec<Box<str>>>) {
        match c {
            Condition::All(cs) | Condition::Any(cs) => cs.iter().for_each(|c| walk(c, prefix, out)),
            Condition::Not(c) => walk(c, prefix, out),
            Condition::Field { pointer, .. } => {
                out.push(prefix.iter().cloned().chain(pointer.iter().cloned()).collect())
            }
        }
    }
    policy
        .rules
        .iter()
        .map(|r| {
            let mut out = Vec::new();
            if let Some(b) = &r.body {
                walk(b, &[], &mut out);
            }
            for l in &r.limits {
                match &l.cost {
                    crate::limits::Cost::Field(p) | crate::limits::Cost::Length(p) => out.push(p.clone()),
                    crate::limits::Cost::One => {}
                }
                if l.per.contains(&crate::limits::KeyPart::McpTool) {
                    out.push(vec![Box::from("params"), Box::from("name")]);
                }
            }
            if let Some(m) = &r.mcp {
                // The call itself: method and tool name.
                out.push(vec![Box::from("method")]);
                out.push(vec![Box::from("params"), Box::from("name")]);
                if let Some(a) = &m.arguments {
                    walk(a, &[Box::from("params"), Box::from("arguments")], &mut out);
                }
            }
            out
        })
        .collect()
}

/// Whether two pointers overlap (one is a prefix of the other).
fn overlap(read: &[Box<str>], masked: &[String]) -> bool {
    read.iter().zip(masked.iter()).all(|(a, b)| **a == *b)
}

/// Replays inputs against a candidate policy.
pub struct Replayer {
    policy: Policy,
    jwt_claims: Vec<String>,
    authz: crate::service::Authz,
    kept_by_candidate: BTreeSet<String>,
    body_pointers: Vec<Vec<Vec<Box<str>>>>,
}

impl Replayer {
    /// A replayer for `policy` (in-memory state; credentials assumed available, as in
    /// `hallpass test`).
    pub fn new(policy: Policy) -> Replayer {
        Replayer::with_max_body_bytes(policy, crate::check::DEFAULT_MAX_BODY_BYTES)
    }

    /// A replayer reading bodies up to `max_body` bytes (the server's `limits.max_body_bytes`).
    pub fn with_max_body_bytes(policy: Policy, max_body: usize) -> Replayer {
        // No automatic quarantine: replay has no record of releases, and a quarantine it
        // imposed itself would hide what the candidate decides (`quarantined` records are
        // reported apart instead).
        let mut deciding = policy.clone();
        deciding.settings.quarantine = None;
        let authz = crate::service::Authz::from_policy(deciding)
            .with_max_body_bytes(max_body)
            .with_state(Arc::new(crate::quarantine::StateRuntime::memory()));
        authz.tokens().assume_all(&policy.credentials);
        let kept_by_candidate = kept_headers(&policy);
        let body_pointers = body_pointers(&policy);
        let jwt_claims = jwt_claim_paths(&policy);
        Replayer { policy, jwt_claims, authz, kept_by_candidate, body_pointers }
    }

    /// Decide one input again (inputs must come in recorded order: limits carry over).
    pub fn replay(&self, input: &InputRecord) -> Replayed {
        let req = &input.request;
        let request = format!("{} {}{}", req.method, req.host, req.path);
        // Decided by state replay does not have: not decided again (it would charge limits
        // the server never charged).
        if let Some(why) = self.state_only(input) {
            return self.compare(input, request, input.decision.clone(), Some(why));
        }
        let checked = crate::check::ready_now(self.authz.decide(req.to_check_request(), input.time));
        let replayed = match &checked {
            Some(c) => recorded(&c.decision),
            None => {
                RecordedDecision { decision: "deny".into(), rule: "internal_error".into(), dry_run: false, grant: None }
            }
        };
        let mut why = self.indeterminate(input);
        if why.is_none() {
            // A hold a grant lifted then: the replay has no grants; the rule it is lifted to
            // is what the candidate decides.
            if let (Some(_), Some(c)) = (&input.decision.grant, &checked) {
                if let Some(l) = &c.decision.lifted {
                    let lifted = RecordedDecision {
                        decision: if matches!(
                            l.verdict,
                            crate::policy::Verdict::Allow | crate::policy::Verdict::DryRunAllow { .. }
                        ) {
                            "allow".into()
                        } else {
                            "deny".into()
                        },
                        rule: l.rule.as_str().to_string(),
                        dry_run: false,
                        grant: input.decision.grant.clone(),
                    };
                    return self.compare(input, request, lifted, None);
                }
            }
            if let Some(c) = &checked {
                why = self.reads_masked(input, c);
            }
        }
        self.compare(input, request, replayed, why)
    }

    fn compare(
        &self,
        input: &InputRecord,
        request: String,
        replayed: RecordedDecision,
        why: Option<String>,
    ) -> Replayed {
        let rec = &input.decision;
        let change = if why.is_some() {
            Change::Indeterminate
        } else if rec.decision != replayed.decision {
            if rec.decision == "allow" {
                Change::AllowToDeny
            } else {
                Change::DenyToAllow
            }
        } else if rec.rule != replayed.rule || rec.dry_run != replayed.dry_run {
            Change::RuleChanged
        } else {
            Change::Unchanged
        };
        Replayed { decision_id: input.decision_id.clone(), request, recorded: rec.clone(), replayed, change, why }
    }

    /// Why the candidate cannot decide this input as it was (before deciding).
    fn state_only(&self, input: &InputRecord) -> Option<String> {
        let state_only =
            [RuleId::Quarantined, RuleId::CredentialUnavailable, RuleId::StateUnavailable, RuleId::InternalError];
        state_only
            .iter()
            .any(|r| r.as_str() == input.decision.rule)
            .then(|| format!("decided by state replay does not have (`{}`)", input.decision.rule))
    }

    fn indeterminate(&self, input: &InputRecord) -> Option<String> {
        let req = &input.request;
        // An identity claim the recording policy did not read was not kept.
        if let Some(c) = self.jwt_claims.iter().find(|c| !req.jwt_claims.contains(c)) {
            return Some(format!("reads JWT claim `{c}`, which was not recorded"));
        }
        for m in req.masked.iter().filter_map(|m| m.strip_prefix('?')) {
            if self.policy.inputs.query.iter().any(|q| q.eq_ignore_ascii_case(m)) {
                return Some(format!("reads query parameter `{m}`, whose value was masked"));
            }
        }
        for h in &self.kept_by_candidate {
            let present = req.header_names.iter().find(|n| crate::request::same_header(n, h));
            if let Some(n) = present {
                if !req.headers.contains_key(n) {
                    return Some(format!("reads header `{h}`, whose value was not recorded"));
                }
            }
        }
        None
    }

    /// Whether deciding read a masked or omitted body value: a rule that got to its body (or
    /// MCP) part and reads a masked pointer.
    fn reads_masked(&self, input: &InputRecord, c: &crate::check::Checked) -> Option<String> {
        let req = &input.request;
        if !req.masked.iter().any(|m| m.starts_with('/')) && !req.body_omitted {
            return None;
        }
        let parsed = crate::request::Request::from_check_request(req.to_check_request()).ok()?;
        let (_, traces) = crate::policy::explain(&self.policy, &parsed, input.time);
        // Decided by a deny (or hold) rule: only deny and hold rules could have changed it
        // (allow rules come after every deny); otherwise any rule could.
        let by_deny = self
            .policy
            .rules
            .iter()
            .any(|r| *r.id == *c.decision.rule.as_str() && r.effect != crate::policy::Effect::Allow);
        let masked: Vec<Vec<String>> = req
            .masked
            .iter()
            .filter(|p| p.starts_with('/'))
            .map(|p| p.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
            .collect();
        for t in &traces {
            use crate::policy::condition::Tri;
            use crate::policy::eval::Part;
            let reached = matches!(t.result.result, Tri::True | Tri::Unknown)
                || matches!(t.result.part, Some(Part::Body | Part::Mcp));
            if !reached || (by_deny && t.effect == crate::policy::Effect::Allow) {
                continue;
            }
            let Some(reads) = self.body_pointers.get(t.index) else { continue };
            // A rule with limits reads the body to count a batch's elements.
            let limited = self.policy.rules.get(t.index).is_some_and(|r| !r.limits.is_empty());
            if req.body_omitted && limited {
                return Some(format!("rule `{}` has limits, which read the body, which was not recorded", t.rule));
            }
            if reads.is_empty() {
                continue;
            }
            if req.body_omitted {
                return Some(format!("rule `{}` reads the body, which was not recorded", t.rule));
            }
            // Each batch element's fields sit one level down.
            for m in &masked {
                let tail = if t.element.is_some() { m.get(1..).unwrap_or(&[]) } else { m.as_slice() };
                let hits = |m: &[String]| reads.iter().any(|r| overlap(r, m));
                if hits(m) || (t.element.is_some() && hits(tail)) {
                    return Some(format!("rule `{}` reads `/{}`, which was masked", t.rule, m.join("/")));
                }
            }
        }
        None
    }
}

/// The report of a replay.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Inputs replayed.
    pub total: u64,
    /// Counts by change.
    pub counts: BTreeMap<&'static str, u64>,
    /// Changes by rule: `recorded rule → replayed rule` with counts per change.
    pub by_rule: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// Up to 5 examples per change (not `unchanged`).
    pub examples: BTreeMap<&'static str, Vec<Replayed>>,
    /// Indeterminate inputs whose replayed decision allows what was denied (the candidate may
    /// open them: `--fail-on deny-to-allow` fails on these too).
    pub indeterminate_opens: u64,
    /// Indeterminate inputs whose replayed decision denies what was allowed.
    pub indeterminate_closes: u64,
    /// Inputs by the revision that decided them.
    pub revisions: BTreeMap<String, u64>,
    /// Lines that were not input records.
    pub unreadable: u64,
    /// Records of another revision than `--revision`.
    pub skipped: u64,
}

impl Report {
    /// Count one replayed input.
    pub fn add(&mut self, r: Replayed) {
        self.total += 1;
        if r.change == Change::Indeterminate && r.recorded.decision != r.replayed.decision {
            if r.recorded.decision == "deny" {
                self.indeterminate_opens += 1;
            } else {
                self.indeterminate_closes += 1;
            }
        }
        *self.counts.entry(r.change.as_str()).or_default() += 1;
        if r.change != Change::Unchanged {
            let key = format!("{} → {}", r.recorded.rule, r.replayed.rule);
            *self.by_rule.entry(key).or_default().entry(r.change.as_str()).or_default() += 1;
            let ex = self.examples.entry(r.change.as_str()).or_default();
            if ex.len() < 5 {
                ex.push(r);
            }
        }
    }

    /// How many inputs changed this way.
    pub fn count(&self, c: Change) -> u64 {
        self.counts.get(c.as_str()).copied().unwrap_or(0)
    }
}

/// Replay every record of `reader` (JSON lines) with `replayer`, into `report`; with
/// `revision`, only the records that policy revision decided (the others are counted as
/// `skipped`).
pub fn replay_lines(replayer: &Replayer, reader: impl BufRead, revision: Option<&str>, report: &mut Report) {
    for line in reader.lines() {
        let Ok(line) = line else {
            // An I/O error (a directory, a broken file) repeats: stop here.
            report.unreadable += 1;
            break;
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<InputRecord>(&line) {
            Ok(rec) if rec.schema == SCHEMA && revision.is_some_and(|r| r != rec.revision) => report.skipped += 1,
            Ok(rec) if rec.schema == SCHEMA => {
                *report.revisions.entry(rec.revision.clone()).or_default() += 1;
                report.add(replayer.replay(&rec));
            }
            _ => report.unreadable += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests may panic")]
    use super::*;

    #[test]
    fn credential_query_parameters_are_masked_under_every_reading() {
        for (path, masked) in [
            ("/x?Access_Token=s", "/x?Access_Token=hallpass:masked"),
            ("/x?a=1;api_key[]=s&b=2", "/x?a=1;api_key[]=hallpass:masked&b=2"),
            ("/x?api+key=s", "/x?api+key=hallpass:masked"),
            ("/x?%6Bey=s", "/x?%6Bey=hallpass:masked"),
            ("/x?keys=s&monkey=t", "/x?keys=s&monkey=t"),
            ("/x", "/x"),
        ] {
            assert_eq!(mask_query(path).0, masked, "{path}");
        }
        assert_eq!(mask_query("/x?KEY=1&key=2;apikey=3").1, vec!["?apikey", "?key"]);
    }

    #[test]
    fn body_masks_match_any_case_and_depth() {
        let mut doc = serde_json::json!({"User": {"PassWord": "s", "items": [{"password": "t"}]}, "password": "u"});
        let hit = mask_json(&mut doc, &["/user/password".into(), "/user/items/0/password".into(), "/nope".into()]);
        assert_eq!(hit, vec!["/user/password", "/user/items/0/password"]);
        assert_eq!(
            doc,
            serde_json::json!({"User": {"PassWord": MASKED, "items": [{"password": MASKED}]}, "password": "u"})
        );
    }
}
