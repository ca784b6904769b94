//! Compiled rule types: what evaluation runs on (the raw serde model is [`super::model`]).

use std::collections::HashSet;
use std::sync::Arc;

use super::condition::{Condition, Operand, RefName, Test};
use super::index::{FnvBuild, RuleIndex};
use super::pattern::PathPattern;
use super::time::TimeWindow;

/// allow | deny | require_approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Let the request through.
    Allow,
    /// Refuse it.
    Deny,
    /// Hold it until a human approves it (agent-controls.md §2).
    RequireApproval,
}

impl Effect {
    /// `allow` / `deny` / `require_approval`.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::RequireApproval => "require_approval",
        }
    }

    /// A rule that keeps requests out: it matches when its parts are true or unknown, and
    /// matches paths loosely (deny and require_approval rules).
    pub fn restrictive(self) -> bool {
        matches!(self, Effect::Deny | Effect::RequireApproval)
    }
}

/// enforce | dry_run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Denies are enforced.
    Enforce,
    /// Denies are logged and returned to Envoy as allow.
    DryRun,
}

/// `settings:` with defaults applied.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Decision when no rule matches.
    pub default: Effect,
    /// Global mode.
    pub mode: Mode,
    /// HTTP status of a deny.
    pub deny_status: u16,
    /// `;` in a path is an ordinary character instead of `invalid_path`.
    pub allow_path_semicolons: bool,
    /// Automatic quarantine, if set.
    pub quarantine: Option<crate::state::AutoQuarantine>,
    /// The control API's approvers file (relative to the policy file), if set.
    pub control_approvers_file: Option<String>,
    /// Answer a denied JSON-RPC call with a JSON-RPC response (agent-controls.md §8).
    pub mcp_jsonrpc_responses: bool,
    /// Holds and approvals (agent-controls.md §2-3).
    pub approvals: crate::approvals::ApprovalSettings,
}

/// Where an identity comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// `attributes.source.principal` (mTLS peer identity).
    Principal,
    /// A claim of a JWT payload Envoy's jwt_authn filter verified.
    Jwt {
        /// The `payload_in_metadata` key.
        provider: String,
        /// The claim path, split at dots.
        claim: Vec<String>,
    },
    /// A request header (lowercase name); only safe where Envoy sets or overwrites it.
    Header(String),
}

/// Identity sources for the agent and the on-behalf-of user, in order.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// First source that yields a non-empty string wins.
    pub agent: Vec<IdentitySource>,
    /// Same, for the user the agent acts for.
    pub on_behalf_of: Vec<IdentitySource>,
}

impl Default for IdentityConfig {
    /// The agent from the mTLS principal only; no on-behalf-of source. A header is a source
    /// only where the policy names it: a client can send any header, and only the operator
    /// knows whether Envoy strips and sets it (policy-language.md, revised 2026-12-04).
    fn default() -> Self {
        IdentityConfig { agent: vec![IdentitySource::Principal], on_behalf_of: Vec::new() }
    }
}

/// Which agents a rule applies to.
#[derive(Debug, Clone)]
pub enum AgentSet {
    /// `*`: any identified agent.
    AnyIdentified,
    /// These ids (groups already expanded).
    Ids(HashSet<Box<str>, FnvBuild>),
}

/// A host pattern.
#[derive(Debug, Clone)]
pub enum HostPattern {
    /// This host exactly (lowercase).
    Exact(Box<str>),
    /// `*.example.com`: stored as `.example.com`; one or more labels before it.
    Suffix(Box<str>),
}

impl HostPattern {
    /// Whether a normalized (lowercase, portless) host matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => **h == *host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(&**s),
        }
    }
}

/// The `mcp:` part of a rule.
#[derive(Debug, Clone)]
pub struct McpMatch {
    /// JSON-RPC method names; `None` = any.
    pub methods: Option<Vec<Box<str>>>,
    /// `params.name` values; `None` = any.
    pub tools: Option<Vec<Box<str>>>,
    /// Condition on `params.arguments`.
    pub arguments: Option<Condition>,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique id.
    pub id: Arc<str>,
    /// allow | deny.
    pub effect: Effect,
    /// `None` = any request, identified or not.
    pub agents: Option<AgentSet>,
    /// `None` = any method.
    pub methods: Option<Vec<Box<str>>>,
    /// `None` = any host.
    pub hosts: Option<Vec<HostPattern>>,
    /// `None` = any path.
    pub paths: Option<Vec<PathPattern>>,
    /// Tests on captures.
    pub captures: Vec<(Arc<str>, Test)>,
    /// Tests on query parameters.
    pub query: Vec<(Box<str>, Test)>,
    /// Tests on headers (lowercase names).
    pub headers: Vec<(Box<str>, Test)>,
    /// Condition on the body.
    pub body: Option<Condition>,
    /// JSON-RPC / MCP part.
    pub mcp: Option<McpMatch>,
    /// Time bounds.
    pub when: Option<TimeWindow>,
    /// Message on deny.
    pub message: Option<Arc<str>>,
    /// This deny or require_approval rule alone is in dry run.
    pub dry_run: bool,
    /// Whether matching needs the parsed body (`body` or `mcp`).
    pub reads_body: bool,
    /// Limits and budgets (allow rules; empty when none).
    pub limits: Vec<crate::limits::Limit>,
    /// The credential injected on allow: an index into [`Policy::credentials`].
    pub credential: Option<usize>,
    /// Headers removed from the upstream request on allow (lowercase).
    pub strip_headers: Vec<Box<str>>,
    /// Line of the rule's `id:` in the source, for messages.
    pub line: Option<usize>,
}

/// A compiled, validated policy: immutable, shared by every request decided against it.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Settings with defaults applied.
    pub settings: Settings,
    /// Identity sources.
    pub identity: IdentityConfig,
    /// Rules in file order.
    pub rules: Vec<Rule>,
    /// Deny rules by first path segment.
    pub deny_index: RuleIndex,
    /// Allow rules by first path segment.
    pub allow_index: RuleIndex,
    /// Where the policy came from (file name or label).
    pub source: String,
    /// What of a request any rule reads beyond method, host, path and identity: the decision
    /// cache keys on exactly this.
    pub inputs: Inputs,
    /// Upstream credentials (agent-controls.md §6).
    pub credentials: Vec<crate::credentials::Credential>,
}

impl Rule {
    /// Whether allowing by this rule changes the upstream request (a credential, headers
    /// removed): the credentials stage must see which rules allowed it.
    pub fn injects(&self) -> bool {
        self.credential.is_some() || !self.strip_headers.is_empty()
    }
}

/// The request inputs a policy's decisions can depend on, besides method, host, path,
/// identity and time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Query parameter names tested or referenced, sorted, unique.
    pub query: Vec<Box<str>>,
    /// Header names tested or referenced, sorted, unique.
    pub headers: Vec<Box<str>>,
    /// Whether any rule reads the body (`body` or `mcp`).
    pub body: bool,
}

fn collect_test_refs(t: &Test, out: &mut Vec<RefName>) {
    let mut op = |o: &Operand| {
        if let Operand::Ref(r) = o {
            out.push(r.clone());
        }
    };
    match t {
        Test::Equals(o) | Test::Prefix(o) | Test::Suffix(o) | Test::Contains(o) => op(o),
        Test::Lt(o) | Test::Lte(o) | Test::Gt(o) | Test::Gte(o) => op(o),
        Test::In(l) | Test::NotIn(l) => l.iter().for_each(op),
        Test::Each(t) | Test::Some(t) => collect_test_refs(t, out),
        Test::Matches(_) | Test::MaxLen(_) | Test::Exists(_) => {}
    }
}

fn collect_cond_refs(c: &Condition, out: &mut Vec<RefName>) {
    match c {
        Condition::All(p) | Condition::Any(p) => p.iter().for_each(|c| collect_cond_refs(c, out)),
        Condition::Not(c) => collect_cond_refs(c, out),
        Condition::Field { test, .. } => collect_test_refs(test, out),
    }
}

impl Inputs {
    pub(super) fn of(rules: &[Rule]) -> Inputs {
        let mut refs = Vec::new();
        let mut query: Vec<Box<str>> = Vec::new();
        let mut headers: Vec<Box<str>> = Vec::new();
        let mut body = false;
        for r in rules {
            query.extend(r.query.iter().map(|(n, _)| n.clone()));
            headers.extend(r.headers.iter().map(|(n, _)| n.clone()));
            for (_, t) in r.captures.iter().map(|(n, t)| (n, t)) {
                collect_test_refs(t, &mut refs);
            }
            for (_, t) in r.query.iter().chain(r.headers.iter()) {
                collect_test_refs(t, &mut refs);
            }
            if let Some(b) = &r.body {
                collect_cond_refs(b, &mut refs);
            }
            if let Some(a) = r.mcp.as_ref().and_then(|m| m.arguments.as_ref()) {
                collect_cond_refs(a, &mut refs);
            }
            body |= r.reads_body;
        }
        for r in refs {
            match r {
                RefName::Query(q) => query.push(q),
                RefName::Header(h) => headers.push(h),
                RefName::Agent | RefName::OnBehalfOf | RefName::Capture(_) => {}
            }
        }
        // A `methods` test reads the method overrides too.
        if rules.iter().any(|r| r.methods.is_some()) {
            headers.extend(crate::request::METHOD_OVERRIDE_HEADERS.iter().map(|h| Box::from(*h)));
            query.push(Box::from(crate::request::METHOD_OVERRIDE_PARAM));
        }
        query.sort();
        query.dedup();
        headers.sort();
        headers.dedup();
        Inputs { query, headers, body }
    }
}
