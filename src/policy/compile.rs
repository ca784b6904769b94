//! Validate the parsed policy and compile it into the structure evaluation runs on:
//! groups resolved to sets, patterns and regexes compiled, rules indexed by their first
//! path segment. Every error names the file, the rule and (where it can be found) the line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use regex::RegexBuilder;
use serde_json::Value as Json;
use serde_yaml::Value;

use super::condition::{Condition, Operand, RefName, Test};
use super::model::{EffectDef, IdentityDef, McpDef, ModeDef, PolicyFile, RuleDef};
use super::parse::{locate_rule, parse, PolicyError, PolicyErrors};
use super::pattern::PathPattern;
use super::time::TimeWindow;

/// allow | deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Let the request through.
    Allow,
    /// Refuse it.
    Deny,
}

impl Effect {
    /// `allow` / `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
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
    /// This deny rule alone is in dry run.
    pub dry_run: bool,
    /// Whether matching needs the parsed body (`body` or `mcp`).
    pub reads_body: bool,
    /// Line of the rule's `id:` in the source, for messages.
    pub line: Option<usize>,
}

/// FNV-1a: a fast hasher for the policy's own read-only tables (rule index, agent sets). Their
/// keys come from the policy, not from requests, so flooding attacks on insertion do not apply;
/// request-built maps keep std's SipHash.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Build FNV hashers.
pub type FnvBuild = std::hash::BuildHasherDefault<Fnv>;

/// Rules of one effect, indexed by the literal first segment of their path patterns.
// INVARIANT: every list holds rule indexes in ascending (file) order, without duplicates.
// INVARIANT: with `fold_case`, every key is ASCII lowercase.
#[derive(Debug, Clone, Default)]
pub struct RuleIndex {
    by_first: HashMap<Box<str>, Vec<u32>, FnvBuild>,
    generic: Vec<u32>,
    fold_case: bool,
}

impl RuleIndex {
    /// Whether keys are lowercase (the deny index: deny rules match paths in any ASCII case).
    pub fn folds_case(&self) -> bool {
        self.fold_case
    }

    fn build(rules: &[Rule], effect: Effect) -> RuleIndex {
        let mut idx = RuleIndex { fold_case: effect == Effect::Deny, ..RuleIndex::default() };
        for (i, r) in rules.iter().enumerate() {
            if r.effect != effect {
                continue;
            }
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let mut generic = false;
            match &r.paths {
                None => generic = true,
                Some(pats) => {
                    for p in pats {
                        match p.first_literal() {
                            Some(lit) => {
                                let key = if idx.fold_case { lit.to_ascii_lowercase() } else { lit.to_string() };
                                let list = idx.by_first.entry(Box::from(key.as_str())).or_default();
                                if list.last() != Some(&i) {
                                    list.push(i);
                                }
                            }
                            None => generic = true,
                        }
                    }
                }
            }
            if generic {
                idx.generic.push(i);
            }
        }
        idx
    }

    /// Candidate rule indexes for a path whose first segment is `first`, in file order.
    pub fn candidates<'a>(&'a self, first: &str) -> Candidates<'a> {
        let specific = self.by_first.get(first).map(Vec::as_slice).unwrap_or(&[]);
        Candidates { a: specific, b: &self.generic }
    }
}

/// A merge of two ascending index lists.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    a: &'a [u32],
    b: &'a [u32],
}

impl Iterator for Candidates<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let (next, a, b) = match (self.a.split_first(), self.b.split_first()) {
            (None, None) => return None,
            (Some((x, ra)), None) => (*x, ra, self.b),
            (None, Some((y, rb))) => (*y, self.a, rb),
            (Some((x, ra)), Some((y, rb))) => {
                if x < y {
                    (*x, ra, self.b)
                } else if y < x {
                    (*y, self.a, rb)
                } else {
                    (*x, ra, rb)
                }
            }
        };
        self.a = a;
        self.b = b;
        Some(next as usize)
    }
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
    fn of(rules: &[Rule]) -> Inputs {
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

impl Policy {
    /// Parse, validate and compile policy text. `file` names the source in errors.
    pub fn from_yaml(src: &str, file: &str) -> Result<Policy, PolicyErrors> {
        let def = parse(src, file)?;
        compile(def, src, file)
    }

    /// Read and compile a policy file.
    pub fn from_file(path: &std::path::Path) -> Result<Policy, PolicyErrors> {
        let name = path.display().to_string();
        let src = std::fs::read_to_string(path)
            .map_err(|e| PolicyErrors::single(&name, format!("cannot read the policy file: {e}")))?;
        Policy::from_yaml(&src, &name)
    }

    /// A rule by id.
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| &*r.id == id)
    }
}

struct Errors<'a> {
    file: &'a str,
    src: &'a str,
    list: Vec<PolicyError>,
}

impl Errors<'_> {
    fn top(&mut self, message: String) {
        self.list.push(PolicyError { file: self.file.to_string(), line: None, column: None, rule: None, message });
    }
    fn rule(&mut self, rule: &str, message: String) {
        self.list.push(PolicyError {
            file: self.file.to_string(),
            line: locate_rule(self.src, rule, 0),
            column: None,
            rule: Some(rule.to_string()),
            message,
        });
    }
}

/// An HTTP header name (RFC 9110 token, lowercase), or a pseudo-header such as `:path`.
pub fn valid_header_name(s: &str) -> bool {
    let name = s.strip_prefix(':').unwrap_or(s);
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn compile(def: PolicyFile, src: &str, file: &str) -> Result<Policy, PolicyErrors> {
    let mut errs = Errors { file, src, list: Vec::new() };

    match &def.version {
        None => errs.top("`version` is required; write `version: 1`".into()),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(other) => errs.top(format!(
            "`version` must be 1 (this hallpass reads policy language version 1), found {}",
            yaml_brief(other)
        )),
    }

    let deny_status = def.settings.deny_status.unwrap_or(403);
    if !(400..=599).contains(&deny_status) {
        errs.top(format!("`settings.deny_status` must be an HTTP error status (400-599), found {deny_status}"));
    }
    let settings = Settings {
        default: match def.settings.default {
            Some(EffectDef::Allow) => Effect::Allow,
            _ => Effect::Deny,
        },
        mode: match def.settings.mode {
            Some(ModeDef::DryRun) => Mode::DryRun,
            _ => Mode::Enforce,
        },
        deny_status,
        allow_path_semicolons: def.settings.allow_path_semicolons.unwrap_or(false),
    };

    let identity = match &def.identity {
        None => IdentityConfig::default(),
        Some(d) => compile_identity(d, &mut errs),
    };

    let groups = resolve_groups(&def.groups, &mut errs);

    let mut rules = Vec::with_capacity(def.rules.len());
    let mut seen: HashSet<String> = HashSet::new();
    for (n, rd) in def.rules.iter().enumerate() {
        let label = match &rd.id {
            Some(id) => id.clone(),
            None => {
                errs.top(format!("rule #{} has no `id`; every rule needs a unique id", n + 1));
                continue;
            }
        };
        if !valid_id(&label) {
            errs.rule(&label, "the id may only use letters, digits, `.`, `_` and `-`".into());
            continue;
        }
        if super::eval::BUILTINS.iter().any(|b| b.id == label) {
            errs.rule(&label, format!("`{label}` is reserved for decisions hallpass makes itself; choose another id"));
            continue;
        }
        if !seen.insert(label.clone()) {
            let dupes = def.rules.iter().take(n).filter(|r| r.id.as_deref() == Some(label.as_str())).count();
            errs.list.push(PolicyError {
                file: file.to_string(),
                line: locate_rule(src, &label, dupes),
                column: None,
                rule: Some(label.clone()),
                message: "this id is used by an earlier rule; rule ids must be unique".into(),
            });
            continue;
        }
        match compile_rule(rd, &label, &groups) {
            Ok(mut r) => {
                r.line = locate_rule(src, &label, 0);
                rules.push(r);
            }
            Err(msgs) => {
                for m in msgs {
                    errs.rule(&label, m);
                }
            }
        }
    }

    if !errs.list.is_empty() {
        return Err(PolicyErrors(errs.list));
    }
    let deny_index = RuleIndex::build(&rules, Effect::Deny);
    let allow_index = RuleIndex::build(&rules, Effect::Allow);
    let inputs = Inputs::of(&rules);
    Ok(Policy { settings, identity, rules, deny_index, allow_index, source: file.to_string(), inputs })
}

fn yaml_brief(v: &Value) -> String {
    match serde_yaml::to_string(v) {
        Ok(s) => format!("`{}`", s.trim()),
        Err(_) => "a value of another type".into(),
    }
}

fn compile_identity(d: &IdentityDef, errs: &mut Errors<'_>) -> IdentityConfig {
    let defaults = IdentityConfig::default();
    let mut read = |list: &Option<Vec<Value>>, what: &str, default: Vec<IdentitySource>| -> Vec<IdentitySource> {
        let Some(list) = list else { return default };
        if list.is_empty() {
            errs.top(format!(
                "`identity.{what}` is an empty list, so no request would ever have one; omit it for the default sources"
            ));
        }
        let mut out = Vec::new();
        for v in list {
            match identity_source(v) {
                Ok(s) => out.push(s),
                Err(m) => errs.top(format!("`identity.{what}`: {m}")),
            }
        }
        out
    };
    let agent = read(&d.agent, "agent", defaults.agent);
    let on_behalf_of = read(&d.on_behalf_of, "on_behalf_of", defaults.on_behalf_of);
    IdentityConfig { agent, on_behalf_of }
}

fn identity_source(v: &Value) -> Result<IdentitySource, String> {
    const SHAPE: &str = "a source is `principal`, `{ jwt: { provider: P, claim: C } }` or `{ header: NAME }`";
    match v {
        Value::String(s) if s == "principal" => Ok(IdentitySource::Principal),
        Value::Mapping(m) if m.len() == 1 => {
            let (k, val) = m.iter().next().ok_or_else(|| SHAPE.to_string())?;
            match k.as_str() {
                Some("header") => {
                    let name = val.as_str().ok_or_else(|| "`header` takes a header name".to_string())?;
                    if name.is_empty() || name.chars().any(|c| c.is_ascii_uppercase() || c.is_whitespace()) {
                        return Err(format!("header source `{name}` must be a lowercase header name"));
                    }
                    Ok(IdentitySource::Header(name.to_string()))
                }
                Some("jwt") => {
                    let m = val.as_mapping().ok_or_else(|| "`jwt` takes `{ provider: P, claim: C }`".to_string())?;
                    let mut provider = None;
                    let mut claim = None;
                    for (k, v) in m {
                        match (k.as_str(), v.as_str()) {
                            (Some("provider"), Some(p)) if !p.is_empty() => provider = Some(p.to_string()),
                            (Some("claim"), Some(c)) if !c.is_empty() => claim = Some(c.to_string()),
                            (Some(other), _) => {
                                return Err(format!("`jwt.{other}` is not a key here (or not a non-empty string); `jwt` takes `provider` and `claim`"))
                            }
                            _ => return Err("`jwt` takes `{ provider: P, claim: C }`".into()),
                        }
                    }
                    match (provider, claim) {
                        (Some(provider), Some(claim)) => {
                            let parts: Vec<String> = claim.split('.').map(String::from).collect();
                            if parts.iter().any(String::is_empty) {
                                return Err(format!("claim path `{claim}` has an empty part"));
                            }
                            Ok(IdentitySource::Jwt { provider, claim: parts })
                        }
                        _ => Err("`jwt` needs both `provider` and `claim`".into()),
                    }
                }
                _ => Err(format!("unknown identity source {}; {SHAPE}", yaml_brief(v))),
            }
        }
        _ => Err(format!("unknown identity source {}; {SHAPE}", yaml_brief(v))),
    }
}

fn resolve_groups(defs: &BTreeMap<String, Vec<String>>, errs: &mut Errors<'_>) -> HashMap<String, HashSet<Box<str>>> {
    fn visit(
        name: &str,
        defs: &BTreeMap<String, Vec<String>>,
        done: &mut HashMap<String, HashSet<Box<str>>>,
        stack: &mut Vec<String>,
        errs: &mut Vec<String>,
    ) -> HashSet<Box<str>> {
        if let Some(s) = done.get(name) {
            return s.clone();
        }
        if let Some(pos) = stack.iter().position(|s| s == name) {
            let cycle: Vec<&str> = stack.iter().skip(pos).map(String::as_str).chain([name]).collect();
            errs.push(format!("group cycle: {}", cycle.join(" -> @")));
            return HashSet::new();
        }
        let mut out = HashSet::new();
        let Some(members) = defs.get(name) else { return out };
        if members.is_empty() {
            errs.push(format!("group `{name}` is empty; a rule naming it could never match"));
        }
        stack.push(name.to_string());
        for m in members {
            if let Some(g) = m.strip_prefix('@') {
                if defs.contains_key(g) {
                    out.extend(visit(g, defs, done, stack, errs));
                } else {
                    errs.push(format!("group `{name}` includes `@{g}`, which is not a group"));
                }
            } else if m == "*" {
                errs.push(format!(
                    "group `{name}` contains `*`; groups list agent ids (use `agents: [\"*\"]` in a rule)"
                ));
            } else if m.is_empty() {
                errs.push(format!("group `{name}` contains an empty agent id"));
            } else {
                out.insert(Box::from(m.as_str()));
            }
        }
        stack.pop();
        done.insert(name.to_string(), out.clone());
        out
    }
    let mut done = HashMap::new();
    let mut messages = Vec::new();
    for name in defs.keys() {
        if !valid_id(name) {
            messages.push(format!("group name `{name}` may only use letters, digits, `.`, `_` and `-`"));
        }
        let mut stack = Vec::new();
        visit(name, defs, &mut done, &mut stack, &mut messages);
    }
    messages.sort();
    messages.dedup();
    for m in messages {
        errs.top(format!("`groups`: {m}"));
    }
    done
}

/// What a rule's conditions may refer to.
struct Scope<'a> {
    captures: &'a HashSet<String>,
}

fn compile_rule(rd: &RuleDef, id: &str, groups: &HashMap<String, HashSet<Box<str>>>) -> Result<Rule, Vec<String>> {
    let mut msgs = Vec::new();
    let effect = match rd.effect {
        Some(EffectDef::Allow) => Effect::Allow,
        Some(EffectDef::Deny) => Effect::Deny,
        None => {
            msgs.push("`effect` is required: `allow` or `deny`".to_string());
            Effect::Deny
        }
    };
    let nonempty = |key: &str, list: &Option<Vec<String>>, msgs: &mut Vec<String>| {
        if list.as_ref().is_some_and(Vec::is_empty) {
            msgs.push(format!("`{key}` is an empty list, which matches nothing; omit `{key}` to match any"));
        }
    };
    nonempty("agents", &rd.agents, &mut msgs);
    nonempty("methods", &rd.methods, &mut msgs);
    nonempty("hosts", &rd.hosts, &mut msgs);
    nonempty("paths", &rd.paths, &mut msgs);

    let agents = rd.agents.as_ref().map(|list| {
        if list.iter().any(|a| a == "*") {
            return AgentSet::AnyIdentified;
        }
        let mut ids: HashSet<Box<str>, FnvBuild> = HashSet::default();
        for a in list {
            if let Some(g) = a.strip_prefix('@') {
                match groups.get(g) {
                    Some(members) => ids.extend(members.iter().cloned()),
                    None => msgs.push(format!("`agents` names `@{g}`, which is not a group")),
                }
            } else if a.is_empty() {
                msgs.push("`agents` contains an empty id".into());
            } else {
                ids.insert(Box::from(a.as_str()));
            }
        }
        AgentSet::Ids(ids)
    });

    let methods = rd.methods.as_ref().map(|list| {
        let mut out = Vec::new();
        for m in list {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_') {
                msgs.push(format!("method `{m}` must be an uppercase HTTP method (e.g. `{}`)", m.to_ascii_uppercase()));
            } else {
                out.push(Box::from(m.as_str()));
            }
        }
        out
    });

    let hosts = rd.hosts.as_ref().map(|list| {
        let mut out = Vec::new();
        for h in list {
            let lower = h.to_ascii_lowercase();
            if lower.is_empty() || lower.contains(['/', ' ', '?', '#', '@']) {
                msgs.push(format!("host `{h}` is not a host name"));
            } else if lower.starts_with('[') && !lower.ends_with(']') || lower.contains(':') && !lower.starts_with('[')
            {
                msgs.push(format!("host `{h}` has a port; hosts are matched without the port"));
            } else if let Some(rest) = lower.strip_prefix("*.") {
                let rest = rest.trim_end_matches('.');
                if rest.is_empty() || rest.contains('*') {
                    msgs.push(format!("host `{h}`: a wildcard is `*.` followed by a domain"));
                } else {
                    out.push(HostPattern::Suffix(Box::from(format!(".{rest}").as_str())));
                }
            } else if lower.contains('*') {
                msgs.push(format!("host `{h}`: `*` is only allowed as a leading `*.` label"));
            } else {
                out.push(HostPattern::Exact(Box::from(lower.trim_end_matches('.'))));
            }
        }
        out
    });

    let mut capture_names: HashSet<String> = HashSet::new();
    let paths = rd.paths.as_ref().map(|list| {
        let mut out = Vec::new();
        for p in list {
            match PathPattern::parse(p) {
                Ok(pat) => {
                    capture_names.extend(pat.capture_names().map(String::from));
                    out.push(pat);
                }
                Err(m) => msgs.push(m),
            }
        }
        out
    });
    let scope = Scope { captures: &capture_names };

    let mut captures = Vec::new();
    if let Some(map) = &rd.captures {
        for (name, v) in map {
            if !capture_names.contains(name) {
                msgs.push(format!("`captures.{name}`: no path pattern of this rule captures `{{{name}}}`"));
                continue;
            }
            if let Some(p) = paths.iter().flatten().find(|p| !p.capture_names().any(|c| c == name)) {
                msgs.push(format!(
                    "`captures.{name}`: path pattern `{}` has no `{{{name}}}`; every pattern of a rule with `captures.{name}` must capture it",
                    p.source()
                ));
                continue;
            }
            match op_map(v, &scope, &format!("captures.{name}"), false) {
                Ok(t) => captures.push((Arc::from(name.as_str()), t)),
                Err(m) => msgs.push(m),
            }
        }
    }
    let mut query = Vec::new();
    if let Some(map) = &rd.query {
        for (name, v) in map {
            if name.contains(['[', ']']) {
                msgs.push(format!(
                    "`query.{name}`: write the parameter's name without brackets (`{}`); its bracket forms (`a[]`, `a[0]`) are read as it",
                    name.split('[').next().unwrap_or(name)
                ));
                continue;
            }
            match op_map(v, &scope, &format!("query.{name}"), false) {
                Ok(t) => query.push((Box::from(name.as_str()), t)),
                Err(m) => msgs.push(m),
            }
        }
    }
    let mut headers = Vec::new();
    if let Some(map) = &rd.headers {
        for (name, v) in map {
            if name.is_empty() || name.chars().any(|c| c.is_ascii_uppercase()) {
                msgs.push(format!("`headers.{name}`: header names are lowercase (`{}`)", name.to_ascii_lowercase()));
                continue;
            }
            if !valid_header_name(name) {
                msgs.push(format!("`headers.{name}`: not an HTTP header name"));
                continue;
            }
            if name == "host" {
                msgs.push(
                    "`headers.host`: Envoy sends the host as `:authority`, never as `host`; match it with `hosts`"
                        .into(),
                );
                continue;
            }
            match op_map(v, &scope, &format!("headers.{name}"), false) {
                Ok(t) => headers.push((Box::from(name.as_str()), t)),
                Err(m) => msgs.push(m),
            }
        }
    }
    let body = match &rd.body {
        None => None,
        Some(v) => match condition(v, &scope, "body") {
            Ok(c) => Some(c),
            Err(m) => {
                msgs.push(m);
                None
            }
        },
    };
    let mcp = match &rd.mcp {
        None => None,
        Some(m) => match compile_mcp(m, &scope) {
            Ok(m) => Some(m),
            Err(m) => {
                msgs.push(m);
                None
            }
        },
    };
    let when = match &rd.when {
        None => None,
        Some(w) => match TimeWindow::compile(w) {
            Ok(w) => Some(w),
            Err(m) => {
                msgs.push(m);
                None
            }
        },
    };
    let dry_run = rd.dry_run.unwrap_or(false);
    if dry_run && effect == Effect::Allow {
        msgs.push("`dry_run: true` is only for deny rules (an allow rule in dry run would mean nothing)".into());
    }
    if !msgs.is_empty() {
        return Err(msgs);
    }
    let reads_body = body.is_some() || mcp.is_some();
    Ok(Rule {
        id: Arc::from(id),
        effect,
        agents,
        methods,
        hosts,
        paths,
        captures,
        query,
        headers,
        body,
        mcp,
        when,
        message: rd.message.as_deref().map(Arc::from),
        dry_run,
        reads_body,
        line: None,
    })
}

fn compile_mcp(m: &McpDef, scope: &Scope<'_>) -> Result<McpMatch, String> {
    let list = |key: &str, l: &Option<Vec<String>>| -> Result<Option<Vec<Box<str>>>, String> {
        match l {
            None => Ok(None),
            Some(v) if v.is_empty() => Err(format!("`mcp.{key}` is an empty list; omit it to match any")),
            Some(v) => Ok(Some(v.iter().map(|s| Box::from(s.as_str())).collect())),
        }
    };
    let mut methods = list("methods", &m.methods)?;
    let tools = list("tools", &m.tools)?;
    let arguments = match &m.arguments {
        None => None,
        Some(v) => Some(condition(v, scope, "mcp.arguments")?),
    };
    // `tools` and `arguments` describe a tools/call; without `methods` that is the method.
    if methods.is_none() && (tools.is_some() || arguments.is_some()) {
        methods = Some(vec![Box::from("tools/call")]);
    }
    Ok(McpMatch { methods, tools, arguments })
}

const OPERATORS: [&str; 15] = [
    "equals", "in", "not_in", "prefix", "suffix", "contains", "matches", "lt", "lte", "gt", "gte", "max_len", "exists",
    "each", "some",
];

fn condition(v: &Value, scope: &Scope<'_>, at: &str) -> Result<Condition, String> {
    let Some(map) = v.as_mapping() else {
        return Err(format!("`{at}`: a condition is a map (`all`, `any`, `not`, or `field` with one operator)"));
    };
    let keys: Vec<&str> = map.keys().map(|k| k.as_str().unwrap_or("<non-string key>")).collect();
    for combinator in ["all", "any", "not"] {
        if let Some(inner) = map.get(combinator) {
            if map.len() != 1 {
                return Err(format!(
                    "`{at}`: `{combinator}` must stand alone in its map (found also {})",
                    keys.iter().filter(|k| **k != combinator).map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                ));
            }
            if combinator == "not" {
                return Ok(Condition::Not(Box::new(condition(inner, scope, &format!("{at}.not"))?)));
            }
            let Some(items) = inner.as_sequence() else {
                return Err(format!("`{at}.{combinator}` takes a list of conditions"));
            };
            if items.is_empty() {
                return Err(format!("`{at}.{combinator}` is an empty list"));
            }
            let parts = items
                .iter()
                .enumerate()
                .map(|(i, c)| condition(c, scope, &format!("{at}.{combinator}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if combinator == "all" { Condition::All(parts) } else { Condition::Any(parts) });
        }
    }
    let Some(field) = map.get("field") else {
        return Err(format!(
            "`{at}`: a condition needs `all`, `any`, `not`, or `field` with one operator (found {})",
            keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ));
    };
    let Some(field) = field.as_str() else {
        return Err(format!("`{at}.field` must be a JSON Pointer string such as `/to`"));
    };
    let pointer = parse_pointer(field).map_err(|m| format!("`{at}.field`: {m}"))?;
    let mut ops = map.iter().filter(|(k, _)| k.as_str() != Some("field"));
    let (Some((k, val)), None) = (ops.next(), ops.next()) else {
        let n = map.len() - 1;
        return Err(if n == 0 {
            format!("`{at}`: field `{field}` has no operator; add one of {}", OPERATORS.join(", "))
        } else {
            format!("`{at}`: field `{field}` has {n} operators; write exactly one per field test (combine with `all`)")
        });
    };
    let key = k.as_str().unwrap_or("<non-string key>");
    let test = operator(key, val, scope, at, true)?;
    Ok(Condition::Field { pointer, test })
}

fn parse_pointer(p: &str) -> Result<Vec<Box<str>>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("`{p}` is not a JSON Pointer; it must start with `/` (e.g. `/{p}`)"));
    };
    rest.split('/')
        .map(|tok| {
            let mut out = String::with_capacity(tok.len());
            let mut chars = tok.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(format!("`{p}`: `~` must be followed by 0 or 1 (RFC 6901)")),
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(Box::from(out.as_str()))
        })
        .collect()
}

/// An operator map without `field` (captures, query, headers, each/some): exactly one key.
fn op_map(v: &Value, scope: &Scope<'_>, at: &str, json: bool) -> Result<Test, String> {
    let Some(map) = v.as_mapping() else {
        return Err(format!("`{at}` takes one operator, e.g. `{{ equals: x }}`"));
    };
    let mut it = map.iter();
    match (it.next(), it.next()) {
        (Some((k, val)), None) => {
            let key = k.as_str().unwrap_or("<non-string key>");
            operator(key, val, scope, at, json)
        }
        (None, _) => Err(format!("`{at}` has no operator; add one of {}", OPERATORS.join(", "))),
        _ => Err(format!("`{at}` has {} operators; write exactly one", map.len())),
    }
}

fn operator(key: &str, val: &Value, scope: &Scope<'_>, at: &str, json: bool) -> Result<Test, String> {
    let at = format!("{at}.{key}");
    let num = |v: &Value| -> Result<Operand, String> {
        match operand(v, scope, &at)? {
            Operand::Lit(Json::Number(n)) => Ok(Operand::Lit(Json::Number(n))),
            Operand::Ref(r) => Ok(Operand::Ref(r)),
            _ => Err(format!("`{at}` takes a number or a reference")),
        }
    };
    let string = |v: &Value| -> Result<Operand, String> {
        match operand(v, scope, &at)? {
            Operand::Lit(Json::String(s)) => Ok(Operand::Lit(Json::String(s))),
            Operand::Ref(r) => Ok(Operand::Ref(r)),
            _ => Err(format!("`{at}` takes a string or a reference")),
        }
    };
    let list = |v: &Value| -> Result<Vec<Operand>, String> {
        let Some(items) = v.as_sequence() else {
            return Err(format!("`{at}` takes a list of values"));
        };
        if items.is_empty() {
            return Err(format!("`{at}` is an empty list"));
        }
        items.iter().map(|i| operand(i, scope, &at)).collect()
    };
    // Captures, query and header values are strings: a literal that is not a string or a
    // number could never equal one, so a test with it can only be a mistake.
    let text_literal = |o: Operand| -> Result<Operand, String> {
        match &o {
            Operand::Lit(Json::String(_) | Json::Number(_)) | Operand::Ref(_) => Ok(o),
            Operand::Lit(_) if !json => Err(format!(
                "`{at}`: captures, query values and header values are strings; compare them with a string or a number"
            )),
            Operand::Lit(_) => Ok(o),
        }
    };
    Ok(match key {
        "equals" => Test::Equals(text_literal(operand(val, scope, &at)?)?),
        "in" => Test::In(list(val)?.into_iter().map(text_literal).collect::<Result<_, _>>()?),
        "not_in" => Test::NotIn(list(val)?.into_iter().map(text_literal).collect::<Result<_, _>>()?),
        "prefix" => Test::Prefix(string(val)?),
        "suffix" => Test::Suffix(string(val)?),
        "contains" => Test::Contains(string(val)?),
        "matches" => {
            let Some(re) = val.as_str() else {
                return Err(format!("`{at}` takes a regular expression string"));
            };
            // Compile it alone first: `a)|(b` is invalid on its own but would parse once
            // wrapped, as `^(?:a)|(b)$`, losing the whole-string anchoring.
            RegexBuilder::new(re)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("`{at}`: invalid regular expression `{re}`: {e}"))?;
            let compiled = RegexBuilder::new(&format!("^(?:{re})$"))
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("`{at}`: invalid regular expression `{re}`: {e}"))?;
            Test::Matches(compiled)
        }
        "lt" => Test::Lt(num(val)?),
        "lte" => Test::Lte(num(val)?),
        "gt" => Test::Gt(num(val)?),
        "gte" => Test::Gte(num(val)?),
        "max_len" => match val.as_u64() {
            Some(n) => Test::MaxLen(n),
            None => return Err(format!("`{at}` takes a non-negative integer")),
        },
        "exists" => match val.as_bool() {
            Some(b) => Test::Exists(b),
            None => return Err(format!("`{at}` takes true or false")),
        },
        "each" | "some" => {
            if !json {
                return Err(format!(
                    "`{at}`: `{key}` tests arrays, and captures, query values and header values are strings"
                ));
            }
            let inner = op_map(val, scope, &at, true)?;
            if matches!(inner, Test::Exists(_)) {
                return Err(format!("`{at}`: `exists` inside `{key}` means nothing (elements always exist)"));
            }
            if key == "each" {
                Test::Each(Box::new(inner))
            } else {
                Test::Some(Box::new(inner))
            }
        }
        other => {
            return Err(format!("`{at}`: unknown operator `{other}`; operators are {}", OPERATORS.join(", ")));
        }
    })
}

fn operand(v: &Value, scope: &Scope<'_>, at: &str) -> Result<Operand, String> {
    if let Some(map) = v.as_mapping() {
        if let Some(r) = map.get("ref") {
            if map.len() != 1 {
                return Err(format!("`{at}`: a reference is `{{ ref: NAME }}` with nothing else"));
            }
            let Some(name) = r.as_str() else {
                return Err(format!("`{at}`: `ref` takes a name such as `on_behalf_of`"));
            };
            let parsed = RefName::parse(name).map_err(|m| format!("`{at}`: {m}"))?;
            if let RefName::Header(h) = &parsed {
                if !valid_header_name(h) {
                    return Err(format!("`{at}`: `{h}` is not an HTTP header name"));
                }
                if &**h == "host" {
                    return Err(format!(
                        "`{at}`: Envoy sends the host as `:authority`, never as `host`; use `header.:authority` or `hosts`"
                    ));
                }
            }
            if let RefName::Query(q) = &parsed {
                if q.contains(['[', ']']) {
                    return Err(format!("`{at}`: write the query parameter's name without brackets"));
                }
            }
            if let RefName::Capture(c) = &parsed {
                if !scope.captures.contains(&**c) {
                    return Err(format!(
                        "`{at}`: `{{ ref: {name} }}` names a capture no path pattern of this rule has"
                    ));
                }
            }
            return Ok(Operand::Ref(parsed));
        }
    }
    yaml_to_json(v).map(Operand::Lit).map_err(|m| format!("`{at}`: {m}"))
}

fn yaml_to_json(v: &Value) -> Result<Json, String> {
    Ok(match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                match n.as_f64().and_then(serde_json::Number::from_f64) {
                    Some(f) => Json::Number(f),
                    None => return Err("numbers must be finite".into()),
                }
            }
        }
        Value::String(s) => Json::String(s.clone()),
        Value::Sequence(items) => Json::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Value::Mapping(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                let Some(k) = k.as_str() else {
                    return Err("object keys must be strings".into());
                };
                out.insert(k.to_string(), yaml_to_json(v)?);
            }
            Json::Object(out)
        }
        Value::Tagged(_) => return Err("YAML tags are not supported in values".into()),
    })
}
