//! The decision: a pure, synchronous function of (policy, normalized request, instant).
//!
//! Order (policy-language.md "Decision"): `invalid_path`, then `invalid_identity` (both
//! enforced even in dry run); then the first matching deny rule, else the first matching allow
//! rule, else `settings.default`. An allow rule matches only when all its parts are true; a
//! deny rule also when they are unknown. A JSON-RPC batch is decided element by element.
//! No I/O, no locks, no panics; the body is parsed only if a candidate rule reads it.

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::Value as Json;

use super::compile::{AgentSet, Candidates, Effect, IdentitySource, McpMatch, Mode, Policy, Rule};
use super::condition::{Doc, RefName, RefValue, Resolve, Subject, Tri};
use super::pattern::Captures;
use crate::request::body::{lookup_key, KeyLookup};
use crate::request::{path, Parsed, PathError, Request};

/// The id of the rule (or built-in reason) that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleId {
    /// A policy rule.
    Rule(Arc<str>),
    /// No rule matched: `settings.default`.
    Default,
    /// The path was refused by normalization.
    InvalidPath,
    /// A header identity source was ambiguous.
    InvalidIdentity,
    /// The CheckRequest had no HTTP attributes.
    InvalidRequest,
    /// Deciding failed inside hallpass (a bug); the request is denied.
    InternalError,
    /// The agent is quarantined (agent-controls.md §5).
    Quarantined,
    /// A limit could not be read from the state store in time and its `on_store_error` is
    /// `deny` (agent-controls.md §4).
    StateUnavailable,
    /// The allowing rule's credential has no usable token (agent-controls.md §6).
    CredentialUnavailable,
}

/// A decision hallpass makes itself, without a policy rule: its id, and the message a denied
/// caller reads. One table (the reserved ids a policy may not use, the ids reported to Envoy
/// and in records, the deny messages), so the strings are written once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Builtin {
    /// The rule id reported.
    pub id: &'static str,
    /// The message of a deny.
    pub message: &'static str,
    /// The HTTP status of a deny.
    pub status: DenyStatus,
}

/// The HTTP status a denied caller gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyStatus {
    /// The policy's `settings.deny_status` (403 unless set).
    Policy,
    /// Always this status, whatever the policy says (e.g. 503 for a failure of hallpass's
    /// own dependencies, 429 for a limit).
    Fixed(u16),
}

impl DenyStatus {
    /// The status, given the policy's `deny_status`.
    pub fn code(self, deny_status: u16) -> u16 {
        match self {
            DenyStatus::Policy => deny_status,
            DenyStatus::Fixed(c) => c,
        }
    }
}

/// Every built-in decision, in [`RuleId`] order.
pub const BUILTINS: [Builtin; 8] = [
    Builtin { id: "default", message: "No policy rule allows this request.", status: DenyStatus::Policy },
    Builtin { id: "invalid_path", message: "The request path is not acceptable", status: DenyStatus::Policy },
    Builtin {
        id: "invalid_identity",
        message:
            "The caller identity is ambiguous: an identity header was sent more than once, or under another spelling.",
        status: DenyStatus::Policy,
    },
    Builtin {
        id: "invalid_request",
        message: "The authorization request carried no HTTP request to decide on.",
        status: DenyStatus::Policy,
    },
    Builtin {
        id: "internal_error",
        message: "The authorization service failed to decide; the request is denied.",
        status: DenyStatus::Policy,
    },
    Builtin {
        id: "quarantined",
        message: "This agent is quarantined: every request it makes is denied until the quarantine ends or is lifted.",
        status: DenyStatus::Fixed(403),
    },
    Builtin {
        id: "credential_unavailable",
        message: "The upstream credential this rule injects is not available; the request is denied.",
        status: DenyStatus::Fixed(503),
    },
    Builtin {
        id: "state_unavailable",
        message: "The state store that keeps this rule's limits could not be reached; the request is denied.",
        status: DenyStatus::Fixed(503),
    },
];

impl RuleId {
    /// The built-in decision this is, if it is not a policy rule.
    pub fn builtin(&self) -> Option<&'static Builtin> {
        let i = match self {
            RuleId::Rule(_) => return None,
            RuleId::Default => 0,
            RuleId::InvalidPath => 1,
            RuleId::InvalidIdentity => 2,
            RuleId::InvalidRequest => 3,
            RuleId::InternalError => 4,
            RuleId::Quarantined => 5,
            RuleId::CredentialUnavailable => 6,
            RuleId::StateUnavailable => 7,
        };
        BUILTINS.get(i)
    }

    /// The id as reported to Envoy and in logs.
    pub fn as_str(&self) -> &str {
        match self {
            RuleId::Rule(id) => id,
            other => other.builtin().map_or("internal_error", |b| b.id),
        }
    }
}

/// What Envoy is told, and why (never a set of booleans).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through: an allow rule, or `settings.default: allow`.
    Allow,
    /// Refuse it.
    Deny,
    /// Let it through because a dry run turned a deny into an allow. `global`: the policy is
    /// in `mode: dry_run` and decided deny (the decision's rule is the would-deny rule);
    /// otherwise deny rules in per-rule dry run matched (`dry_run_rules`) and the request was
    /// then allowed.
    DryRunAllow {
        /// The whole policy is in dry run.
        global: bool,
    },
    /// Refuse it with 429: the deciding allow rule's limit has no room (`Decision::limit`).
    RateLimited,
    /// Refuse it until a human approves it: `require_approval` rules matched and no grant
    /// lifted them (`Decision::holds`, `Decision::approval`).
    Held,
}

/// The outcome of deciding one request. This record is what the decision log says.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What Envoy is told, and why.
    pub verdict: Verdict,
    /// The deciding rule (in a global dry run that turned a deny into an allow, the
    /// would-deny rule).
    pub rule: RuleId,
    /// The deciding rule's message, if it has one.
    pub message: Option<Arc<str>>,
    /// Deny rules in per-rule dry run that matched (their would-be denials), file order.
    pub dry_run_rules: Vec<Arc<str>>,
    /// Why the path was refused, for `invalid_path`.
    pub path_error: Option<PathError>,
    /// The deciding rule matched on an unknown part (a deny rule): which part. An auditor
    /// tells "denied because the body could not be read" from "denied because it matched".
    pub unknown: Option<Part>,
    /// The allow rules with `limits`, a `credential` or `strip_headers` that allowed this
    /// request (or a batch element of it): what the limits stage charges and the credentials
    /// stage injects. Empty (and unallocated) when no such rule allowed it.
    pub limited: Vec<LimitedBy>,
    /// What the limits stage found, when a limit refused the request (or would have, in a
    /// dry run) or a key part or cost was unknown.
    pub limit: Option<crate::limits::LimitHit>,
    /// The `require_approval` rules that matched (true or unknown, not in dry run), file
    /// order, when no deny rule decided. Empty (and unallocated) when none did.
    pub holds: Vec<HoldRule>,
    /// With holds: what the allow rules (or the default) decide once every hold is lifted.
    pub lifted: Option<Box<Lifted>>,
    /// The approval of a held (or lifted) request: its id, status and grant.
    pub approval: Option<Box<crate::approvals::ApprovalState>>,
}

/// A `require_approval` rule that held a request.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldRule {
    /// The rule's id.
    pub id: Arc<str>,
    /// Its message.
    pub message: Option<Arc<str>>,
}

/// What a held request's decision becomes once its holds are lifted by a grant.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifted {
    /// The verdict of the allow rules (or the default).
    pub verdict: Verdict,
    /// Their deciding rule.
    pub rule: RuleId,
    /// Its message.
    pub message: Option<Arc<str>>,
    /// Its unknown part.
    pub unknown: Option<Part>,
}

/// An allow rule with limits that allowed a request, or batch element `element` of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitedBy {
    /// The rule's position in the policy.
    pub rule: usize,
    /// The batch element, for batches.
    pub element: Option<usize>,
}

impl Decision {
    /// Whether Envoy lets the request through.
    pub fn allowed(&self) -> bool {
        !matches!(self.verdict, Verdict::Deny | Verdict::RateLimited | Verdict::Held)
    }

    /// Lift every hold: the decision becomes what the allow rules (or the default) decide.
    /// The holds stay listed (the record names what was lifted).
    pub fn lift(&mut self) {
        if let Some(l) = self.lifted.take() {
            self.verdict = l.verdict;
            self.rule = l.rule;
            self.message = l.message;
            self.unknown = l.unknown;
        }
    }

    /// The HTTP status of this decision as a deny, given the policy's `deny_status`: a
    /// built-in decision's own status, else `deny_status`.
    pub fn deny_status(&self, deny_status: u16) -> u16 {
        if self.verdict == Verdict::RateLimited {
            return 429;
        }
        self.rule.builtin().map_or(deny_status, |b| b.status.code(deny_status))
    }

    /// What the policy decided before any global dry run.
    pub fn policy_effect(&self) -> Effect {
        match self.verdict {
            Verdict::Deny | Verdict::RateLimited | Verdict::Held | Verdict::DryRunAllow { global: true } => {
                Effect::Deny
            }
            Verdict::Allow | Verdict::DryRunAllow { global: false } => Effect::Allow,
        }
    }

    /// Whether a dry run (global or per-rule) turned a deny into an allow.
    pub fn dry_run(&self) -> bool {
        matches!(self.verdict, Verdict::DryRunAllow { .. })
    }

    /// A deny by a built-in rule.
    pub fn builtin(rule: RuleId) -> Decision {
        Decision {
            verdict: Verdict::Deny,
            rule,
            message: None,
            dry_run_rules: Vec::new(),
            path_error: None,
            unknown: None,
            limited: Vec::new(),
            limit: None,
            holds: Vec::new(),
            lifted: None,
            approval: None,
        }
    }

    /// The decision for a CheckRequest without HTTP attributes.
    pub fn invalid_request() -> Decision {
        Decision::builtin(RuleId::InvalidRequest)
    }

    /// The decision when deciding failed inside hallpass: deny.
    pub fn internal_error() -> Decision {
        Decision::builtin(RuleId::InternalError)
    }
}

/// Which part of a rule made it not match (or made it unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `agents`.
    Agents,
    /// `methods`.
    Methods,
    /// `hosts`.
    Hosts,
    /// `paths`.
    Paths,
    /// `when`.
    When,
    /// `captures`.
    Captures,
    /// `query`.
    Query,
    /// `headers`.
    Headers,
    /// `mcp`.
    Mcp,
    /// `body`.
    Body,
}

impl Part {
    /// The policy key of this part.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Agents => "agents",
            Part::Methods => "methods",
            Part::Hosts => "hosts",
            Part::Paths => "paths",
            Part::When => "when",
            Part::Captures => "captures",
            Part::Query => "query",
            Part::Headers => "headers",
            Part::Mcp => "mcp",
            Part::Body => "body",
        }
    }
}

/// How one rule fared against one request (or batch element).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleMatch {
    /// True, false, or unknown.
    pub result: Tri,
    /// The first part that was false; else the first that was unknown; else none.
    pub part: Option<Part>,
}

/// Resolved identities of the caller, borrowed from the request (deciding copies nothing).
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity<'a> {
    /// Agent id.
    pub agent: Option<&'a str>,
    /// On-behalf-of id.
    pub on_behalf_of: Option<&'a str>,
}

/// A header identity source carried more than one comma-separated part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmbiguousIdentity;

fn resolve_sources<'a>(sources: &[IdentitySource], req: &'a Request) -> Result<Option<&'a str>, AmbiguousIdentity> {
    for s in sources {
        match s {
            IdentitySource::Principal => {
                if let Some(p) = &req.principal {
                    return Ok(Some(p.as_str()));
                }
            }
            IdentitySource::Jwt { provider, claim } => {
                if let Some(v) = req.jwt_claim(provider, claim) {
                    return Ok(Some(v));
                }
            }
            IdentitySource::Header(name) => {
                if let Some(v) = req.header(name) {
                    if v.contains(',') {
                        return Err(AmbiguousIdentity);
                    }
                    let v = v.trim();
                    if !v.is_empty() {
                        return Ok(Some(v));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// Whether a header the policy takes an identity from also arrives under another spelling
/// (`x_on_behalf_of` for `x-on-behalf-of`): CGI/WSGI upstreams read both as one variable, so
/// which one the upstream acts on is anyone's guess.
fn identity_header_spoofed(policy: &Policy, req: &Request) -> bool {
    req.underscore_headers
        && policy.identity.agent.iter().chain(&policy.identity.on_behalf_of).any(|s| match s {
            IdentitySource::Header(name) => req.header_has_variant(name),
            _ => false,
        })
}

/// Resolve the agent and on-behalf-of identities by the policy's sources.
pub fn resolve_identity<'a>(policy: &Policy, req: &'a Request) -> Result<Identity<'a>, AmbiguousIdentity> {
    if identity_header_spoofed(policy, req) {
        return Err(AmbiguousIdentity);
    }
    let agent = match &req.agent_override {
        Some(a) => Some(a.as_str()),
        None => resolve_sources(&policy.identity.agent, req)?,
    };
    let on_behalf_of = match &req.on_behalf_of_override {
        Some(o) => Some(o.as_str()),
        None => resolve_sources(&policy.identity.on_behalf_of, req)?,
    };
    Ok(Identity { agent, on_behalf_of })
}

/// What the body looks like to one evaluation (the whole body, or one batch element).
#[derive(Debug, Clone, Copy)]
pub enum BodyView<'a> {
    /// Unknown to conditions.
    Unknown,
    /// Parsed JSON.
    Json(&'a Json),
    /// A parsed form.
    Form(&'a Json),
    /// An array mixing JSON-RPC objects with other values: `mcp` is unknown on it.
    MixedRpcArray(&'a Json),
}

impl<'a> BodyView<'a> {
    fn doc(self) -> Doc<'a> {
        match self {
            BodyView::Unknown => Doc::Unknown,
            BodyView::Json(v) | BodyView::Form(v) | BodyView::MixedRpcArray(v) => Doc::Value(v),
        }
    }
}

/// Whether a JSON value is a JSON-RPC call, in every upstream's reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    /// An object with `"jsonrpc": "2.0"`.
    Yes,
    /// Not an object, or an object without a `jsonrpc` member.
    No,
    /// An object whose `jsonrpc` member is only there under case folding (Go binds
    /// `"JSONRPC"`), or an object with a `method` member but no `"jsonrpc": "2.0"`: a server
    /// that does not check the version (many hand-written Go and Python ones, JSON-RPC 1.0)
    /// dispatches it all the same.
    Unknown,
}

fn rpc_kind(v: &Json) -> Rpc {
    let Json::Object(o) = v else { return Rpc::No };
    match lookup_key(o, "jsonrpc") {
        KeyLookup::Found(Json::String(s)) if s == "2.0" => Rpc::Yes,
        KeyLookup::Folded => Rpc::Unknown,
        KeyLookup::Found(_) | KeyLookup::Missing => match lookup_key(o, "method") {
            KeyLookup::Missing => Rpc::No,
            KeyLookup::Found(_) | KeyLookup::Folded => Rpc::Unknown,
        },
    }
}

/// The evaluation context of one request.
struct Cx<'r> {
    req: &'r Request,
    path: &'r str,
    /// More readings of the path that deny rules match too: with `allow_path_semicolons`,
    /// the path with each segment's `;params` removed (Tomcat, Jetty); and the path with a
    /// format suffix cut from its last segment (`/admin.json` is `/admin` to Rails and to
    /// Spring's suffix matching), of either.
    alt_paths: [Option<&'r str>; 3],
    /// An alternative path starts with another segment: try every deny rule.
    every_deny: bool,
    ident: Identity<'r>,
    now: Timestamp,
}

/// The path with a format suffix cut from its last segment (`/admin.json` → `/admin`,
/// `/users/5.json/` → `/users/5`), as Rails routes (`(.:format)`) and Spring's suffix-pattern
/// matching read it; `None` when the last segment has no `.` after its first character.
pub fn cut_format_suffix(path: &str) -> Option<&str> {
    let p = if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path };
    let seg_start = p.rfind('/').map_or(0, |i| i + 1);
    let seg = p.get(seg_start..)?;
    let dot = seg.get(1..)?.find('.')? + 1;
    p.get(..seg_start + dot)
}

/// The alternative path readings deny rules match (see `Cx::alt_paths`), and whether one of
/// them starts with another segment than the path (then the rule index, asked about the
/// path's first segment, does not find every deny rule they may match).
fn alt_paths<'a>(path: &'a str, stripped: Option<&'a str>) -> ([Option<&'a str>; 3], bool) {
    let alts = [stripped, cut_format_suffix(path), stripped.and_then(cut_format_suffix)];
    let first = first_segment(path);
    let moved = alts.iter().flatten().any(|a| !first_segment(a).eq_ignore_ascii_case(first));
    (alts, moved)
}

/// Whether the rule index does not cover every deny rule a request on this path may meet
/// (a second path reading starts with another segment): such decisions are not cached,
/// since the cache bounds an entry's life by the candidates' time windows.
pub fn path_bypasses_index(policy: &Policy, path: &str) -> bool {
    let stripped = (policy.settings.allow_path_semicolons && path.contains(';')).then(|| strip_path_params(path));
    alt_paths(path, stripped.as_deref()).1
}

/// The path with `;params` removed from every segment and repeated slashes merged (what
/// Tomcat and Jetty route on): `/admin;x/users` and `/;x/admin/users` are `/admin/users`.
pub fn strip_path_params(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').skip(1) {
        let seg = seg.split(';').next().unwrap_or("");
        if !out.ends_with('/') || out.is_empty() {
            out.push('/');
        }
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

struct Refs<'a, 'r> {
    cx: &'a Cx<'r>,
    caps: &'a Captures<'a>,
}

impl Resolve for Refs<'_, '_> {
    fn resolve(&self, r: &RefName) -> Option<RefValue<'_>> {
        match r {
            RefName::Agent => self.cx.ident.agent.map(RefValue::Ident),
            RefName::OnBehalfOf => self.cx.ident.on_behalf_of.map(RefValue::Ident),
            RefName::Capture(name) => self.caps.get(name).map(RefValue::Text),
            RefName::Header(name) => {
                let mut it = self.cx.req.header_values(name);
                match (it.next(), it.next()) {
                    (Some(v), None) if !v.contains(',') => Some(RefValue::Text(v.trim())),
                    _ => None,
                }
            }
            RefName::Query(name) => {
                if self.cx.req.query_overflow {
                    return None;
                }
                let mut it = self.cx.req.query_values(name);
                match (it.next(), it.next()) {
                    (Some(v), None) if !v.contains(',') => Some(RefValue::Text(v)),
                    _ => None,
                }
            }
        }
    }
}

/// Fold a part's result into the rule's running result.
fn fold(acc: &mut RuleMatch, part: Part, r: Tri) -> bool {
    match r {
        Tri::True => true,
        Tri::False => {
            acc.result = Tri::False;
            acc.part = Some(part);
            false
        }
        Tri::Unknown => {
            if acc.result == Tri::True {
                acc.result = Tri::Unknown;
                acc.part = Some(part);
            }
            true
        }
    }
}

/// A member of a JSON-RPC object as a test sees it: exact key, else unknown when only a
/// case-folded key exists.
fn rpc_member<'a>(o: &'a serde_json::Map<String, Json>, key: &str) -> Result<Option<&'a Json>, ()> {
    match lookup_key(o, key) {
        KeyLookup::Found(v) => Ok(Some(v)),
        KeyLookup::Missing => Ok(None),
        KeyLookup::Folded => Err(()),
    }
}

fn match_mcp(m: &McpMatch, body: BodyView<'_>, refs: &dyn Resolve) -> Tri {
    let call = match body {
        BodyView::Unknown | BodyView::MixedRpcArray(_) => return Tri::Unknown,
        BodyView::Form(_) => return Tri::False,
        BodyView::Json(v) => match (rpc_kind(v), v) {
            (Rpc::Yes, Json::Object(o)) => o,
            (Rpc::Unknown, _) => return Tri::Unknown,
            _ => return Tri::False,
        },
    };
    let mut acc = Tri::True;
    if let Some(methods) = &m.methods {
        acc = acc.and(match rpc_member(call, "method") {
            Err(()) => Tri::Unknown,
            Ok(None) => Tri::False,
            Ok(Some(Json::String(s))) => Tri::from_bool(methods.iter().any(|x| **x == **s)),
            Ok(Some(_)) => Tri::Unknown,
        });
        if acc == Tri::False {
            return acc;
        }
    }
    let params = rpc_member(call, "params");
    if let Some(tools) = &m.tools {
        acc = acc.and(match params {
            Err(()) => Tri::Unknown,
            Ok(None) => Tri::False,
            Ok(Some(Json::Object(p))) => match rpc_member(p, "name") {
                Err(()) => Tri::Unknown,
                Ok(None) => Tri::False,
                Ok(Some(Json::String(s))) => Tri::from_bool(tools.iter().any(|x| **x == **s)),
                Ok(Some(_)) => Tri::Unknown,
            },
            Ok(Some(_)) => Tri::Unknown,
        });
        if acc == Tri::False {
            return acc;
        }
    }
    if let Some(cond) = &m.arguments {
        let doc = match params {
            Err(()) => Doc::Unknown,
            Ok(None) => Doc::Missing,
            Ok(Some(Json::Object(p))) => match rpc_member(p, "arguments") {
                Ok(Some(a)) => Doc::Value(a),
                Ok(None) => Doc::Missing,
                Err(()) => Doc::Unknown,
            },
            Ok(Some(_)) => Doc::Unknown,
        };
        acc = acc.and(cond.eval(doc, refs));
    }
    acc
}

/// A `methods` test over every reading of the method (policy-language.md "Method"): the
/// method as sent, its ASCII uppercase, and each method override. True when every reading
/// is in the list, false when none is, unknown otherwise.
fn match_methods(methods: &[Box<str>], req: &Request) -> Tri {
    let m = req.method.as_str();
    let sent_in = methods.iter().any(|x| **x == *m);
    if req.method_plain {
        // One reading (the common case; decided once per request in `Request`).
        return Tri::from_bool(sent_in);
    }
    let head = m.eq_ignore_ascii_case("HEAD");
    // Policy methods are uppercase: the uppercase reading is in the list iff a method
    // equals it ignoring ASCII case.
    let upper_in = methods.iter().any(|x| x.eq_ignore_ascii_case(m));
    let mut any_in = sent_in || upper_in;
    let mut any_out = !sent_in || !upper_in;
    if head {
        // Express, Flask, Go's mux and Tomcat run a GET handler for HEAD.
        if methods.iter().any(|x| &**x == "GET") {
            any_in = true;
        } else {
            any_out = true;
        }
    }
    let known = req.method_overrides(|v| {
        if methods.iter().any(|x| x.eq_ignore_ascii_case(v)) {
            any_in = true;
        } else {
            any_out = true;
        }
    });
    match (known, any_in, any_out) {
        (false, _, _) | (true, true, true) => Tri::Unknown,
        (true, true, false) => Tri::True,
        (true, false, _) => Tri::False,
    }
}

/// A query value's readings: the value whole and, when it has commas, each part (trimmed;
/// empty parts skipped): `?fields=name,ssn` is also `name` and `ssn` to upstreams that split.
fn with_parts(v: &str) -> impl Iterator<Item = &str> + Clone {
    let parts = v.contains(',').then(|| v.split(',').map(str::trim).filter(|p| !p.is_empty())).into_iter().flatten();
    std::iter::once(v).chain(parts)
}

/// Match one rule. Cheap parts first; stops at the first false part.
fn match_rule<'r>(rule: &Rule, cx: &Cx<'r>, body: BodyView<'_>) -> RuleMatch {
    let mut m = RuleMatch { result: Tri::True, part: None };
    let req = cx.req;
    if let Some(methods) = &rule.methods {
        if !fold(&mut m, Part::Methods, match_methods(methods, req)) {
            return m;
        }
    }
    if let Some(hosts) = &rule.hosts {
        if !req.host_valid {
            fold(&mut m, Part::Hosts, Tri::Unknown);
        } else if !hosts.iter().any(|h| h.matches(&req.host)) {
            fold(&mut m, Part::Hosts, Tri::False);
            return m;
        }
    }
    let agent_ok = match (&rule.agents, cx.ident.agent) {
        (None, _) => true,
        (Some(AgentSet::AnyIdentified), Some(_)) => true,
        (Some(AgentSet::Ids(ids)), Some(a)) => ids.contains(a),
        (Some(_), None) => false,
    };
    if !agent_ok {
        fold(&mut m, Part::Agents, Tri::False);
        return m;
    }
    let mut caps = Captures::new();
    if let Some(paths) = &rule.paths {
        // Deny rules also match a path that differs only in ASCII case or by one trailing
        // slash (Express, ASP.NET and older Spring route `/MCP` and `/mcp/` to `/mcp`).
        let loose = rule.effect.restrictive();
        let hit = if loose {
            paths.iter().any(|p| {
                p.matches_loose(cx.path, &mut caps)
                    || cx.alt_paths.iter().flatten().any(|a| p.matches_loose(a, &mut caps))
            })
        } else {
            paths.iter().any(|p| p.matches(cx.path, &mut caps))
        };
        if !hit {
            fold(&mut m, Part::Paths, Tri::False);
            return m;
        }
    }
    if let Some(w) = &rule.when {
        if !w.contains(cx.now) {
            fold(&mut m, Part::When, Tri::False);
            return m;
        }
    }
    let refs = Refs { cx, caps: &caps };
    for (name, test) in &rule.captures {
        let r = match caps.get(name) {
            Some(v) => test.eval(Subject::Text(v), &refs),
            None => test.on_missing(&refs),
        };
        if !fold(&mut m, Part::Captures, r) {
            return m;
        }
    }
    for (name, test) in &rule.query {
        let r = if req.query_overflow {
            // More parameters than `qs` reads: it may never see the one tested here.
            Tri::Unknown
        } else {
            test.eval_values(req.query_values(name).flat_map(with_parts), &refs)
        };
        if !fold(&mut m, Part::Query, r) {
            return m;
        }
    }
    for (name, test) in &rule.headers {
        let values = req.header_values(name).flat_map(|v| v.split(',').map(str::trim));
        if !fold(&mut m, Part::Headers, test.eval_values(values, &refs)) {
            return m;
        }
    }
    if let Some(mcp) = &rule.mcp {
        if !fold(&mut m, Part::Mcp, match_mcp(mcp, body, &refs)) {
            return m;
        }
    }
    if let Some(cond) = &rule.body {
        fold(&mut m, Part::Body, cond.eval(body.doc(), &refs));
    }
    m
}

/// Does this rule's match result make it apply?
fn applies(rule: &Rule, m: RuleMatch) -> bool {
    match rule.effect {
        Effect::Allow => m.result == Tri::True,
        Effect::Deny | Effect::RequireApproval => m.result != Tri::False,
    }
}

/// The outcome of deciding one body (the whole request, or one batch element), before the
/// global mode is applied.
struct Outcome {
    effect: Effect,
    rule: RuleId,
    message: Option<Arc<str>>,
    dry_run_rules: Vec<Arc<str>>,
    unknown: Option<Part>,
    /// The deciding allow rule's index, when it has limits.
    limited: Option<usize>,
    /// The holds that matched (rule index, unknown part), when no deny rule decided.
    holds: Vec<(usize, Option<Part>)>,
}

impl Outcome {
    /// Denied by a deny rule or the default, with no hold (a held element is not denied yet).
    fn denied(&self) -> bool {
        self.effect == Effect::Deny && self.holds.is_empty()
    }
}

fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').next().unwrap_or("")
}

/// The candidate rules for one path, looked up once per request.
#[derive(Clone, Copy)]
struct Cands<'a> {
    deny: Candidates<'a>,
    allow: Candidates<'a>,
}

impl<'a> Cands<'a> {
    fn of(policy: &'a Policy, path: &str) -> Cands<'a> {
        let first = first_segment(path);
        Cands { deny: policy.deny_index.candidates_for(first), allow: policy.allow_index.candidates_for(first) }
    }
}

/// The deny index is keyed on lowercase first segments (deny rules match paths in any ASCII
/// case): `candidates` of it lowercases the request's first segment, on the stack.
impl super::compile::RuleIndex {
    /// Candidates for a first path segment (lowercased when the index folds case).
    pub fn candidates_for<'a>(&'a self, first: &str) -> Candidates<'a> {
        if !self.folds_case() || !first.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.candidates(first);
        }
        let mut buf = [0u8; 64];
        match buf.get_mut(..first.len()) {
            Some(dst) => {
                dst.copy_from_slice(first.as_bytes());
                dst.make_ascii_lowercase();
                match std::str::from_utf8(dst) {
                    Ok(lower) => self.candidates(lower),
                    Err(_) => self.candidates(&first.to_ascii_lowercase()),
                }
            }
            None => self.candidates(&first.to_ascii_lowercase()),
        }
    }
}

/// The rules to try: the index's candidates, or every rule (when the request has a second
/// path reading the index was not asked about, or a tracer wants every rule explained).
enum RuleIter<'a> {
    Indexed(Candidates<'a>),
    All(std::ops::Range<usize>),
}

impl Iterator for RuleIter<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        match self {
            RuleIter::Indexed(c) => c.next(),
            RuleIter::All(r) => r.next(),
        }
    }
}

/// Sees every rule the evaluator matches, in the order it matches them. [`NoTrace`] on the
/// request path (compiled away); [`Collect`] for `hallpass check` and the test runner: the
/// same evaluation loop serves both, so an explanation never contradicts its decision.
pub trait Tracer {
    /// Whether to go on matching every rule after the decision is known (an explanation);
    /// the decision itself is the same either way.
    fn wants_all(&self) -> bool;
    /// One rule's result (`element`: the batch element, for batches).
    fn rule(&mut self, index: usize, rule: &Rule, element: Option<usize>, result: RuleMatch, applies: bool);
}

/// The request path's tracer: records nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTrace;

impl Tracer for NoTrace {
    #[inline(always)]
    fn wants_all(&self) -> bool {
        false
    }
    #[inline(always)]
    fn rule(&mut self, _: usize, _: &Rule, _: Option<usize>, _: RuleMatch, _: bool) {}
}

/// A tracer that keeps every rule's result (for explanations).
#[derive(Debug, Clone, Default)]
pub struct Collect(pub Vec<RuleTrace>);

impl Tracer for Collect {
    fn wants_all(&self) -> bool {
        true
    }
    fn rule(&mut self, index: usize, rule: &Rule, element: Option<usize>, result: RuleMatch, applies: bool) {
        self.0.push(RuleTrace { index, rule: rule.id.clone(), effect: rule.effect, element, result, applies });
    }
}

fn decide_one<T: Tracer>(
    policy: &Policy,
    cands: Cands<'_>,
    cx: &Cx<'_>,
    body: BodyView<'_>,
    element: Option<usize>,
    tracer: &mut T,
) -> Outcome {
    let all = tracer.wants_all();
    let mut dry_run_rules = Vec::new();
    let mut holds = Vec::new();
    // (index, how it matched) of the deciding rule.
    let mut decided: Option<(usize, RuleMatch)> = None;
    let deny = if cx.every_deny || all { RuleIter::All(0..policy.rules.len()) } else { RuleIter::Indexed(cands.deny) };
    for i in deny {
        let Some(rule) = policy.rules.get(i) else { continue };
        if !rule.effect.restrictive() {
            continue;
        }
        let m = match_rule(rule, cx, body);
        let applies = applies(rule, m);
        tracer.rule(i, rule, element, m, applies);
        if applies && decided.is_none() {
            if rule.dry_run {
                dry_run_rules.push(rule.id.clone());
                continue;
            }
            if rule.effect == Effect::RequireApproval {
                // Every hold is collected; a deny rule anywhere still decides first.
                holds.push((i, if m.result == Tri::Unknown { m.part } else { None }));
                continue;
            }
            decided = Some((i, m));
            if !all {
                break;
            }
        }
    }
    if decided.is_none() || all {
        let allow = if all { RuleIter::All(0..policy.rules.len()) } else { RuleIter::Indexed(cands.allow) };
        for i in allow {
            let Some(rule) = policy.rules.get(i) else { continue };
            if rule.effect != Effect::Allow {
                continue;
            }
            let m = match_rule(rule, cx, body);
            let applies = applies(rule, m);
            tracer.rule(i, rule, element, m, applies);
            if applies && decided.is_none() {
                decided = Some((i, m));
                if !all {
                    break;
                }
            }
        }
    }
    match decided.and_then(|(i, m)| policy.rules.get(i).map(|r| (i, r, m))) {
        Some((i, rule, m)) => Outcome {
            effect: rule.effect,
            rule: RuleId::Rule(rule.id.clone()),
            message: if rule.effect == Effect::Deny { rule.message.clone() } else { None },
            dry_run_rules,
            unknown: if m.result == Tri::Unknown { m.part } else { None },
            limited: (rule.effect == Effect::Allow && (!rule.limits.is_empty() || rule.injects())).then_some(i),
            // A deny rule decides before any hold (agent-controls §1).
            holds: if rule.effect == Effect::Deny { Vec::new() } else { holds },
        },
        None => Outcome {
            effect: policy.settings.default,
            rule: RuleId::Default,
            message: None,
            dry_run_rules,
            unknown: None,
            limited: None,
            holds,
        },
    }
}

/// The longest JSON-RPC batch decided element by element.
pub const MAX_BATCH: usize = 256;

/// How the body is to be decided.
enum Shape<'a> {
    Single(BodyView<'a>),
    Batch(&'a [Json]),
}

/// Whether any rule that could decide a request on this (normalized) path reads the body.
pub fn candidates_read_body(policy: &Policy, path: &str) -> bool {
    reads_body(policy, Cands::of(policy, path))
}

fn reads_body(policy: &Policy, cands: Cands<'_>) -> bool {
    cands.deny.chain(cands.allow).any(|i| policy.rules.get(i).is_some_and(|r| r.reads_body))
}

fn body_shape<'a>(policy: &Policy, req: &'a Request, cands: Cands<'_>) -> Shape<'a> {
    if !reads_body(policy, cands) {
        // No candidate reads the body: every element of a batch would be decided alike.
        return Shape::Single(BodyView::Unknown);
    }
    shape(req.body.parsed())
}

/// How a parsed body is decided: whole, or element by element (a batch).
fn shape(parsed: &Parsed) -> Shape<'_> {
    match parsed {
        Parsed::Unknown(_) => Shape::Single(BodyView::Unknown),
        Parsed::Form(v) => Shape::Single(BodyView::Form(v)),
        Parsed::Json(v) => match v {
            Json::Array(items) => {
                let (mut yes, mut maybe) = (0usize, false);
                for item in items {
                    match rpc_kind(item) {
                        Rpc::Yes => yes += 1,
                        Rpc::Unknown => maybe = true,
                        Rpc::No => {}
                    }
                }
                if yes == 0 && !maybe {
                    Shape::Single(BodyView::Json(v))
                } else if items.len() > MAX_BATCH {
                    // A batch longer than any real client sends would cost elements x rules
                    // to decide: it is unknown instead (deny rules that read the body match).
                    Shape::Single(BodyView::Unknown)
                } else if yes == items.len() {
                    Shape::Batch(items)
                } else {
                    // Some elements are (or may be) calls an upstream runs: `mcp` is unknown.
                    Shape::Single(BodyView::MixedRpcArray(v))
                }
            }
            _ => Shape::Single(BodyView::Json(v)),
        },
    }
}

/// The normalized path, or why it is `invalid_path` under this policy (normalization, then
/// `;` path parameters unless `settings.allow_path_semicolons`).
pub fn checked_path<'r>(policy: &Policy, req: &'r Request) -> Result<&'r str, PathError> {
    let p = req.path.as_deref().map_err(|e| *e)?;
    path::check_semicolons(p, policy.settings.allow_path_semicolons)?;
    Ok(p)
}

/// Decide a request against a policy at instant `now`.
pub fn evaluate(policy: &Policy, req: &Request, now: Timestamp) -> Decision {
    evaluate_identified(policy, req, resolve_identity(policy, req), now)
}

/// [`evaluate`] with the identity already resolved (by [`resolve_identity`] on the same
/// policy and request): the service resolves it once for the cache key, the decision and
/// Envoy's metadata.
pub fn evaluate_identified(
    policy: &Policy,
    req: &Request,
    ident: Result<Identity<'_>, AmbiguousIdentity>,
    now: Timestamp,
) -> Decision {
    evaluate_traced(policy, req, ident, now, &mut NoTrace)
}

/// The evaluation core: [`evaluate_identified`] with a [`Tracer`] that sees every rule
/// matched. Check, `hallpass check` (through [`explain`]) and the test runner all decide
/// here.
pub fn evaluate_traced<T: Tracer>(
    policy: &Policy,
    req: &Request,
    ident: Result<Identity<'_>, AmbiguousIdentity>,
    now: Timestamp,
    tracer: &mut T,
) -> Decision {
    let path = match checked_path(policy, req) {
        Ok(p) => p,
        Err(e) => {
            let mut d = Decision::builtin(RuleId::InvalidPath);
            d.path_error = Some(e);
            return d;
        }
    };
    let ident = match ident {
        Ok(i) => i,
        Err(AmbiguousIdentity) => return Decision::builtin(RuleId::InvalidIdentity),
    };
    let stripped = (policy.settings.allow_path_semicolons && path.contains(';')).then(|| strip_path_params(path));
    let (alts, every_deny) = alt_paths(path, stripped.as_deref());
    let cx = Cx { req, path, alt_paths: alts, every_deny, ident, now };
    let cands = Cands::of(policy, path);
    let shape_now = if every_deny || tracer.wants_all() {
        // Every rule is a candidate: parse the body if any rule reads it.
        if policy.inputs.body {
            shape(req.body.parsed())
        } else {
            Shape::Single(BodyView::Unknown)
        }
    } else {
        body_shape(policy, req, cands)
    };
    let mut limited = Vec::new();
    let outcome = match shape_now {
        Shape::Single(view) => {
            let o = decide_one(policy, cands, &cx, view, None, tracer);
            if let Some(rule) = o.limited {
                limited.push(LimitedBy { rule, element: None });
            }
            o
        }
        Shape::Batch(items) => {
            let mut first_outcome: Option<Outcome> = None;
            let mut dry_run_rules: Vec<Arc<str>> = Vec::new();
            let mut denied: Option<Outcome> = None;
            // Held elements: what the first whose allow rules deny decides once lifted, and
            // every hold of every element.
            let mut held: Option<Outcome> = None;
            let mut holds: Vec<(usize, Option<Part>)> = Vec::new();
            for (n, item) in items.iter().enumerate() {
                let mut o = decide_one(policy, cands, &cx, BodyView::Json(item), Some(n), tracer);
                if denied.is_some() {
                    // Only explaining the rest (a tracer that wants every rule).
                    continue;
                }
                for r in &o.dry_run_rules {
                    if !dry_run_rules.contains(r) {
                        dry_run_rules.push(r.clone());
                    }
                }
                if o.denied() {
                    denied = Some(o);
                    if !tracer.wants_all() {
                        break;
                    }
                    continue;
                }
                for h in o.holds.drain(..) {
                    if !holds.iter().any(|(i, _)| *i == h.0) {
                        holds.push(h);
                    }
                }
                if o.effect == Effect::Deny {
                    // Held, and denied by the default once lifted.
                    if held.is_none() {
                        held = Some(o);
                    }
                    continue;
                }
                if let Some(rule) = o.limited {
                    limited.push(LimitedBy { rule, element: Some(n) });
                }
                if first_outcome.is_none() {
                    first_outcome = Some(o);
                }
            }
            holds.sort_by_key(|(i, _)| *i);
            let mut o = match (denied, held, first_outcome) {
                (Some(d), _, _) => d,
                (None, Some(mut h), _) => {
                    h.holds = holds;
                    h
                }
                (None, None, Some(mut f)) => {
                    f.holds = holds;
                    f
                }
                // INVARIANT: a batch is non-empty; this arm only keeps the code total.
                (None, None, None) => Outcome {
                    effect: Effect::Deny,
                    rule: RuleId::Default,
                    message: None,
                    dry_run_rules: Vec::new(),
                    unknown: None,
                    limited: None,
                    holds: Vec::new(),
                },
            };
            o.dry_run_rules = dry_run_rules;
            o
        }
    };
    let verdict = match (outcome.effect, policy.settings.mode) {
        (Effect::Deny | Effect::RequireApproval, Mode::DryRun) => Verdict::DryRunAllow { global: true },
        (Effect::Deny | Effect::RequireApproval, Mode::Enforce) => Verdict::Deny,
        (Effect::Allow, _) if !outcome.dry_run_rules.is_empty() => Verdict::DryRunAllow { global: false },
        (Effect::Allow, _) => Verdict::Allow,
    };
    // Only a request that goes through on an allow rule is charged.
    let limited = if outcome.effect == Effect::Allow { limited } else { Vec::new() };
    let Some(&(first, first_unknown)) = outcome.holds.first() else {
        return Decision {
            verdict,
            rule: outcome.rule,
            message: outcome.message,
            dry_run_rules: outcome.dry_run_rules,
            path_error: None,
            unknown: outcome.unknown,
            limited,
            limit: None,
            holds: Vec::new(),
            lifted: None,
            approval: None,
        };
    };
    // Held (agent-controls §1-2): the first hold decides; what the allow rules decided is
    // kept for when a grant lifts every hold.
    let holds: Vec<HoldRule> = outcome
        .holds
        .iter()
        .filter_map(|(i, _)| policy.rules.get(*i))
        .map(|r| HoldRule { id: r.id.clone(), message: r.message.clone() })
        .collect();
    let first = policy.rules.get(first);
    Decision {
        verdict: match policy.settings.mode {
            Mode::DryRun => Verdict::DryRunAllow { global: true },
            Mode::Enforce => Verdict::Held,
        },
        rule: first.map_or(RuleId::InternalError, |r| RuleId::Rule(r.id.clone())),
        message: first.and_then(|r| r.message.clone()),
        dry_run_rules: outcome.dry_run_rules,
        path_error: None,
        unknown: first_unknown,
        limited,
        limit: None,
        holds,
        lifted: Some(Box::new(Lifted {
            verdict,
            rule: outcome.rule,
            message: outcome.message,
            unknown: outcome.unknown,
        })),
        approval: None,
    }
}

/// Until when a decision for this request stays valid as far as time bounds go: the
/// earliest time-window change among the rules that could have been consulted. `None`
/// when no candidate rule has time bounds.
pub fn valid_until(policy: &Policy, req: &Request, now: Timestamp) -> Option<Timestamp> {
    let first = match &req.path {
        Ok(p) => first_segment(p),
        Err(_) => return None,
    };
    policy
        .deny_index
        .candidates_for(first)
        .chain(policy.allow_index.candidates_for(first))
        .filter_map(|i| policy.rules.get(i)?.when.as_ref()?.next_change(now))
        .min()
}

/// One rule's result in an explanation.
#[derive(Debug, Clone)]
pub struct RuleTrace {
    /// The rule's position in the policy (file order).
    pub index: usize,
    /// The rule.
    pub rule: Arc<str>,
    /// Its effect.
    pub effect: Effect,
    /// Batch element index, for batches.
    pub element: Option<usize>,
    /// How it fared.
    pub result: RuleMatch,
    /// Whether it would apply (true for allow, true-or-unknown for deny).
    pub applies: bool,
}

/// Explain a decision: every rule's result, from the same evaluation core as Check (with a
/// [`Collect`] tracer), in file order per batch element. For `hallpass check`.
pub fn explain(policy: &Policy, req: &Request, now: Timestamp) -> (Decision, Vec<RuleTrace>) {
    let mut tracer = Collect::default();
    let decision = evaluate_traced(policy, req, resolve_identity(policy, req), now, &mut tracer);
    let mut traces = tracer.0;
    traces.sort_by_key(|t| (t.element, t.index));
    (decision, traces)
}
