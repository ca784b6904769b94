//! Validate the parsed policy and compile it into the structure evaluation runs on:
//! groups resolved to sets, patterns and regexes compiled, rules indexed by their first
//! path segment. Every error names the file, the rule and (where it can be found) the line.
//! The compiled types are in [`super::rule`], the index in [`super::index`], condition
//! parsing in [`super::condition_parse`]; they are re-exported here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_yaml::Value;

use super::condition_parse::{condition, op_map, Scope};
pub use super::index::{Candidates, Fnv, FnvBuild, RuleIndex};
use super::model::{EffectDef, IdentityDef, McpDef, ModeDef, PolicyFile, RuleDef};
use super::parse::{locate_rule, parse, PolicyError, PolicyErrorKind, PolicyErrors};
use super::pattern::PathPattern;
pub use super::rule::{
    AgentSet, Effect, HostPattern, IdentityConfig, IdentitySource, Inputs, McpMatch, Mode, Policy, Rule, Settings,
};
use super::time::TimeWindow;

impl Policy {
    /// Parse, validate and compile policy text. `file` names the source in errors.
    pub fn from_yaml(src: &str, file: &str) -> Result<Policy, PolicyErrors> {
        let def = parse(src, file)?;
        compile(def, src, file)
    }

    /// Read and compile a policy file.
    pub fn from_file(path: &std::path::Path) -> Result<Policy, PolicyErrors> {
        let name = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| {
            PolicyErrors::single(PolicyErrorKind::Read, &name, format!("cannot read the policy file: {e}"))
        })?;
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
        self.list.push(PolicyError {
            kind: PolicyErrorKind::Invalid,
            file: self.file.to_string(),
            line: None,
            column: None,
            rule: None,
            message,
        });
    }
    fn rule(&mut self, rule: &str, message: String) {
        self.list.push(PolicyError {
            kind: PolicyErrorKind::Invalid,
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
        quarantine: def.settings.quarantine.as_ref().and_then(|q| match compile_quarantine(q) {
            Ok(q) => Some(q),
            Err(m) => {
                errs.top(m);
                None
            }
        }),
        control_approvers_file: def.settings.control.as_ref().and_then(|c| c.approvers_file.clone()),
        mcp_jsonrpc_responses: def.settings.mcp_responses != Some(crate::policy::model::McpResponsesDef::Http),
        approvals: match crate::approvals::ApprovalSettings::compile(def.settings.approvals.as_ref()) {
            Ok(a) => a,
            Err(m) => {
                errs.top(m);
                crate::approvals::ApprovalSettings::default()
            }
        },
    };

    let identity = match &def.identity {
        None => IdentityConfig::default(),
        Some(d) => compile_identity(d, &mut errs),
    };

    let groups = resolve_groups(&def.groups, &mut errs);
    let (credentials, msgs) = crate::credentials::compile(&def.credentials);
    for m in msgs {
        errs.top(m);
    }

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
                kind: PolicyErrorKind::Invalid,
                file: file.to_string(),
                line: locate_rule(src, &label, dupes),
                column: None,
                rule: Some(label.clone()),
                message: "this id is used by an earlier rule; rule ids must be unique".into(),
            });
            continue;
        }
        match compile_rule(rd, &label, &groups, &credentials) {
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
    Ok(Policy { settings, identity, rules, deny_index, allow_index, source: file.to_string(), inputs, credentials })
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

fn compile_rule(
    rd: &RuleDef,
    id: &str,
    groups: &HashMap<String, HashSet<Box<str>>>,
    credentials: &[crate::credentials::Credential],
) -> Result<Rule, Vec<String>> {
    let mut msgs = Vec::new();
    let effect = match rd.effect {
        Some(EffectDef::Allow) => Effect::Allow,
        Some(EffectDef::Deny) => Effect::Deny,
        Some(EffectDef::RequireApproval) => Effect::RequireApproval,
        None => {
            msgs.push("`effect` is required: `allow`, `deny` or `require_approval`".to_string());
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
        msgs.push(
            "`dry_run: true` is only for deny and require_approval rules (an allow rule in dry run would mean nothing)"
                .into(),
        );
    }
    let mut limits = Vec::new();
    if let Some(defs) = &rd.limits {
        if effect != Effect::Allow {
            msgs.push("`limits` are only for allow rules (they bound what a rule lets through)".into());
        } else if defs.is_empty() {
            msgs.push("`limits` is an empty list; omit it for no limits".into());
        }
        // A `path.<capture>` part must be captured by every path pattern of the rule.
        let captures: Vec<&str> = match &paths {
            None => Vec::new(),
            Some(ps) => {
                let mut names: Vec<&str> = ps.first().map(|p| p.capture_names().collect()).unwrap_or_default();
                names.retain(|n| ps.iter().all(|p| p.capture_names().any(|m| m == *n)));
                names
            }
        };
        for (n, d) in defs.iter().enumerate() {
            match crate::limits::compile(d, &format!("limits[{n}]"), &captures) {
                Ok(l) => limits.push(l),
                Err(m) => msgs.push(m),
            }
        }
    }
    let credential = match &rd.credential {
        None => None,
        Some(_) if effect != Effect::Allow => {
            msgs.push("`credential` is only for allow rules (it is injected into what a rule lets through)".into());
            None
        }
        Some(name) => match credentials.iter().position(|c| &*c.name == name.as_str()) {
            Some(i) => Some(i),
            None => {
                msgs.push(format!("`credential` `{name}` is not defined under `credentials:`"));
                None
            }
        },
    };
    let mut strip_headers: Vec<Box<str>> = Vec::new();
    if let Some(list) = &rd.strip_headers {
        if effect != Effect::Allow {
            msgs.push("`strip_headers` is only for allow rules".into());
        }
        for h in list {
            let lower = h.to_ascii_lowercase();
            if !valid_header_name(&lower)
                || lower.starts_with(':')
                || matches!(
                    lower.as_str(),
                    "host" | "content-length" | "transfer-encoding" | "connection" | "te" | "upgrade"
                )
            {
                msgs.push(format!("`strip_headers`: `{h}` is not a header hallpass can remove"));
            } else if credential.and_then(|i| credentials.get(i)).is_some_and(|c| *c.header == *lower) {
                msgs.push(format!(
                    "`strip_headers`: `{h}` is the header the credential sets (Envoy removes after it sets: it would be gone)"
                ));
            } else if !strip_headers.iter().any(|x| **x == *lower) {
                strip_headers.push(Box::from(lower.as_str()));
            }
        }
    }
    // A credential also removes the other places an agent's own credential travels.
    if let Some(c) = credential.and_then(|i| credentials.get(i)) {
        for h in crate::credentials::DEFAULT_STRIP {
            if h != &*c.header && !strip_headers.iter().any(|x| &**x == h) {
                strip_headers.push(Box::from(h));
            }
        }
    }
    // Sorted: rules that remove the same headers compare equal (batches).
    strip_headers.sort();
    if !msgs.is_empty() {
        return Err(msgs);
    }
    // A rule with limits charges a JSON-RPC batch per element, so it reads the body too.
    let reads_body = body.is_some() || mcp.is_some() || !limits.is_empty();
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
        limits,
        credential,
        strip_headers,
        line: None,
    })
}

fn compile_quarantine(q: &crate::policy::model::QuarantineDef) -> Result<crate::state::AutoQuarantine, String> {
    let after_denies = q.after_denies.filter(|n| *n >= 1).ok_or_else(|| {
        "`settings.quarantine.after_denies` is required and at least 1 (e.g. `after_denies: 20`)".to_string()
    })?;
    let dur = |key: &str, v: &Option<String>| -> Result<std::time::Duration, String> {
        let v = v.as_deref().ok_or_else(|| format!("`settings.quarantine.{key}` is required (e.g. `1m`)"))?;
        let d = crate::settings::parse_duration(&format!("`settings.quarantine.{key}`"), v)?;
        if d.is_zero() {
            return Err(format!("`settings.quarantine.{key}` must be longer than 0"));
        }
        Ok(d)
    };
    Ok(crate::state::AutoQuarantine {
        after_denies,
        within: dur("within", &q.within)?,
        duration: dur("for", &q.duration)?,
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
