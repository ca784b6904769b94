//! Policy test suites (agent-controls.md §9): the `*_test.yaml` format, read by `hallpass
//! test` and by the project's own corpus (one format). A suite names a policy, a pinned
//! `now`, state fixtures (task grants, quarantines) and cases; each case's request is decided
//! through the same Check pipeline the gRPC server runs (normalization, identity, holds,
//! limits on an in-memory store, credentials), in order, so limits carry from case to case.
//! A failure is explained by the traced evaluator `hallpass check` uses.
//!
//! ```yaml
//! policy: policy.yaml                 # relative to this file (or `policy_yaml: |` inline)
//! now: 2026-11-23T12:00:00Z           # default: the wall clock
//! grants: [{agent: bot, rules: [send-email-approval], expires_at: 2026-11-23T13:00:00Z}]
//! quarantine: [rogue-bot]             # or {agent, until?, reason?}
//! cases:
//!   - name: bot reads mail
//!     request: {method: GET, host: mail.example.com, path: /v1/m, agent: bot}
//!     expect: {decision: allow, rule: mail-read}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use jiff::Timestamp;
use serde::Deserialize;

use crate::policy::rule::IdentitySource;
use crate::policy::Policy;
use crate::request::build::CheckRequestBuilder;

/// A suite file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// The policy file, relative to the suite file.
    pub policy: Option<String>,
    /// Or the policy itself, inline.
    pub policy_yaml: Option<String>,
    /// The time every case is decided at (RFC 3339), unless a case pins its own.
    pub now: Option<String>,
    /// Task grants in force (agent-controls §2).
    #[serde(default)]
    pub grants: Vec<GrantFixture>,
    /// Agents in quarantine.
    #[serde(default)]
    pub quarantine: Vec<QuarantineFixture>,
    /// Whether the policy's credentials have tokens: `available` (default: a placeholder
    /// token each) or `missing` (their rules answer 503 `credential_unavailable`).
    pub credentials: Option<String>,
    /// The cases, decided in order.
    pub cases: Vec<Case>,
}

/// A task grant fixture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantFixture {
    /// The agent.
    pub agent: String,
    /// For this user only.
    pub on_behalf_of: Option<String>,
    /// Hold rule ids it lifts.
    pub rules: Vec<String>,
    /// For these MCP tools only.
    pub tools: Option<Vec<String>>,
    /// When it ends (RFC 3339; default: never within the suite).
    pub expires_at: Option<String>,
}

/// A quarantine fixture: an agent id, or the agent with an end and a reason.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum QuarantineFixture {
    /// Quarantined until lifted.
    Agent(String),
    /// In detail.
    Detailed(QuarantineDetail),
}

/// A quarantine fixture in detail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineDetail {
    /// The agent.
    pub agent: String,
    /// When it ends by itself (RFC 3339).
    pub until: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

/// One case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What it shows.
    pub name: String,
    /// The request.
    pub request: TestRequest,
    /// The decision expected.
    pub expect: Expect,
}

/// A case's request, as Envoy would send it (with sugar for identity and bodies).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// Default GET, or POST with a body.
    pub method: Option<String>,
    /// Default `api.example.com`.
    pub host: Option<String>,
    /// Path and query, as sent.
    pub path: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The agent: set where the policy's first agent identity source reads it.
    pub agent: Option<String>,
    /// The user: set where the policy's first on-behalf-of source reads it.
    pub on_behalf_of: Option<String>,
    /// The mTLS peer principal.
    pub principal: Option<String>,
    /// Verified JWT payloads by provider: `{provider: claims}`.
    pub jwt: Option<serde_json::Value>,
    /// A JSON body (content type `application/json`).
    pub json: Option<serde_json::Value>,
    /// A raw body.
    pub body: Option<String>,
    /// Its content type.
    pub content_type: Option<String>,
    /// An MCP `tools/call` body.
    pub mcp: Option<McpCall>,
    /// The body is truncated (Envoy's `x-envoy-auth-partial-body: true`).
    pub partial_body: Option<bool>,
    /// This case's time (RFC 3339).
    pub now: Option<String>,
    /// The `upstream` of the route Envoy selected (route metadata `hallpass`), for
    /// credentials bound to a route.
    pub route: Option<String>,
}

/// An MCP tool call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpCall {
    /// The tool.
    pub tool: String,
    /// Its arguments (default `{}`).
    pub arguments: Option<serde_json::Value>,
}

/// What a case expects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `allow` or `deny`.
    pub decision: String,
    /// The deciding rule (a policy rule id or a built-in one).
    pub rule: Option<String>,
    /// The decision was made in dry run (checked when given).
    pub dry_run: Option<bool>,
    /// The HTTP status of a deny.
    pub status: Option<u16>,
    /// The deny body's `error`: forbidden | approval_required | rate_limited | unavailable …
    pub error: Option<String>,
    /// The `retry-after` of a 429 or a held request, seconds.
    pub retry_after: Option<u64>,
    /// A held request's approval status (`pending`).
    pub approval: Option<String>,
}

/// Why a suite cannot run (exit 2).
#[derive(Debug)]
pub struct SuiteError(pub String);

impl std::fmt::Display for SuiteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A suite read, with its policy loaded.
#[derive(Debug)]
pub struct Loaded {
    /// The suite file.
    pub path: PathBuf,
    /// Its content.
    pub suite: Suite,
    /// The policy under test.
    pub policy: Policy,
}

/// The default time of a suite without `now`: the wall clock.
fn parse_time(what: &str, t: &str) -> Result<Timestamp, SuiteError> {
    t.parse().map_err(|e| SuiteError(format!("{what} `{t}` is not an RFC 3339 time ({e})")))
}

/// Read a suite file and load its policy.
pub fn load(path: &Path) -> Result<Loaded, SuiteError> {
    let text = std::fs::read_to_string(path).map_err(|e| SuiteError(format!("{}: {e}", path.display())))?;
    let suite: Suite =
        serde_yaml::from_str(&text).map_err(|e| SuiteError(format!("{}: not a test suite: {e}", path.display())))?;
    let (policy_text, label) = match (&suite.policy, &suite.policy_yaml) {
        (Some(p), None) => {
            let file = path.parent().unwrap_or(Path::new(".")).join(p);
            let t = std::fs::read_to_string(&file)
                .map_err(|e| SuiteError(format!("{}: policy {}: {e}", path.display(), file.display())))?;
            (t, file.display().to_string())
        }
        (None, Some(t)) => (t.clone(), path.display().to_string()),
        _ => return Err(SuiteError(format!("{}: give `policy` (a file) or `policy_yaml` (inline)", path.display()))),
    };
    let policy = Policy::from_yaml(&policy_text, &label)
        .map_err(|e| SuiteError(format!("{}: the policy does not load:\n{e}", path.display())))?;
    if let Some(c) = suite.credentials.as_deref().filter(|c| !matches!(*c, "available" | "missing")) {
        return Err(SuiteError(format!("{}: `credentials` `{c}` is not available or missing", path.display())));
    }
    Ok(Loaded { path: path.to_path_buf(), suite, policy })
}

impl TestRequest {
    /// The CheckRequest Envoy would send for this request under `policy` (whose identity
    /// sources say where `agent` and `on_behalf_of` go).
    pub fn to_check_request(&self, policy: &Policy) -> Result<CheckRequest, SuiteError> {
        let has_body = self.body.is_some() || self.json.is_some() || self.mcp.is_some();
        let method = self.method.as_deref().unwrap_or(if has_body { "POST" } else { "GET" });
        let mut b =
            CheckRequestBuilder::new(method, &self.path).host(self.host.as_deref().unwrap_or("api.example.com"));
        let mut headers = self.headers.clone();
        let mut principal = self.principal.clone();
        let mut jwt = self.jwt.clone().unwrap_or(serde_json::Value::Null);
        for (who, value, sources) in [
            ("agent", &self.agent, &policy.identity.agent),
            ("on_behalf_of", &self.on_behalf_of, &policy.identity.on_behalf_of),
        ] {
            let Some(v) = value else { continue };
            match sources.first() {
                Some(IdentitySource::Header(h)) => {
                    if headers.keys().any(|k| k.eq_ignore_ascii_case(h)) {
                        return Err(SuiteError(format!("`{who}` and `headers` both set `{h}`: give one")));
                    }
                    headers.insert(h.clone(), v.clone());
                }
                Some(IdentitySource::Principal) => principal = Some(v.clone()),
                Some(IdentitySource::Jwt { provider, claim }) => {
                    if !jwt.is_object() {
                        jwt = serde_json::json!({});
                    }
                    let mut at = &mut jwt;
                    for key in std::iter::once(provider).chain(claim.iter()) {
                        let Some(o) = at.as_object_mut() else {
                            return Err(SuiteError(format!("`{who}`: the JWT fixture has a non-object at `{key}`")));
                        };
                        at = o.entry(key.clone()).or_insert_with(|| serde_json::json!({}));
                    }
                    *at = serde_json::Value::String(v.clone());
                }
                None => {
                    return Err(SuiteError(format!("`{who}`: the policy has no `identity.{who}` source to carry it")))
                }
            }
        }
        for (k, v) in &headers {
            b = b.header(k, v);
        }
        let body = match (&self.body, &self.json, &self.mcp) {
            (Some(raw), None, None) => Some(raw.clone().into_bytes()),
            (None, Some(j), None) => Some(j.to_string().into_bytes()),
            (None, None, Some(m)) => Some(
                serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": m.tool, "arguments": m.arguments.clone().unwrap_or_else(|| serde_json::json!({}))}})
                    .to_string()
                    .into_bytes(),
            ),
            (None, None, None) => None,
            _ => return Err(SuiteError("give one of `body`, `json` and `mcp`".into())),
        };
        let content_type =
            self.content_type.as_deref().or((self.json.is_some() || self.mcp.is_some()).then_some("application/json"));
        if content_type.is_some() && headers.keys().any(|k| k.eq_ignore_ascii_case("content-type")) {
            return Err(SuiteError(
                "`headers` sets content-type, and so do `content_type`, `json` or `mcp`: give one".into(),
            ));
        }
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        if self.partial_body == Some(true) {
            b = b.header("x-envoy-auth-partial-body", "true");
        }
        if let Some(body) = body {
            b = b.body(body);
        }
        if let Some(p) = &principal {
            b = b.principal(p);
        }
        if !jwt.is_null() {
            b = b.jwt(&jwt);
        }
        if let Some(r) = &self.route {
            b = b.route_upstream(r);
        }
        Ok(b.build())
    }
}

/// One case decided.
#[derive(Debug)]
pub struct CaseRun {
    /// The case's name.
    pub name: String,
    /// The CheckRequest sent.
    pub request: CheckRequest,
    /// When it was decided.
    pub now: Timestamp,
    /// The Check's result.
    pub checked: crate::check::Checked,
    /// What differs from the expectation (empty: passed).
    pub failures: Vec<String>,
}

impl CaseRun {
    /// Passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Decide every case of a suite, in order, on one in-memory state store with its fixtures.
pub fn run(loaded: &Loaded) -> Result<Vec<CaseRun>, SuiteError> {
    let suite = &loaded.suite;
    let at = loaded.path.display();
    let suite_now = match &suite.now {
        Some(t) => parse_time(&format!("{at}: `now`"), t)?,
        None => Timestamp::now(),
    };
    let state = Arc::new(crate::quarantine::StateRuntime::memory());
    for (i, g) in suite.grants.iter().enumerate() {
        for r in &g.rules {
            if !loaded
                .policy
                .rules
                .iter()
                .any(|p| &*p.id == r.as_str() && p.effect == crate::policy::Effect::RequireApproval)
            {
                return Err(SuiteError(format!("{at}: grant {i}: `{r}` is not a require_approval rule of the policy")));
            }
        }
        let expires_at = match &g.expires_at {
            Some(t) => parse_time(&format!("{at}: grant {i} `expires_at`"), t)?,
            None => Timestamp::MAX,
        };
        let grant = crate::approvals::Grant {
            id: format!("gr_test{i}"),
            kind: crate::approvals::GrantKind::Task {
                agent: g.agent.clone(),
                on_behalf_of: g.on_behalf_of.clone(),
                rules: g.rules.clone(),
                tools: g.tools.clone(),
            },
            created_at: suite_now,
            expires_at,
            approved_by: "test".into(),
            reason: "fixture".into(),
        };
        crate::check::ready_now(state.add_grant(grant))
            .ok_or_else(|| SuiteError("the in-memory store waited".into()))?
            .map_err(|e| SuiteError(format!("{at}: grant {i}: {e:?}")))?;
    }
    for q in &suite.quarantine {
        let (agent, until, reason) = match q {
            QuarantineFixture::Agent(a) => (a.clone(), None, None),
            QuarantineFixture::Detailed(d) => (d.agent.clone(), d.until.clone(), d.reason.clone()),
        };
        let until = match until {
            Some(t) => parse_time(&format!("{at}: quarantine of `{agent}` `until`"), &t)?,
            None => Timestamp::MAX,
        };
        let q = crate::state::Quarantine {
            agent,
            since: suite_now,
            until,
            reason: reason.unwrap_or_else(|| "fixture".into()),
            by: "test".into(),
        };
        crate::check::ready_now(state.quarantine(q))
            .ok_or_else(|| SuiteError("the in-memory store waited".into()))?
            .map_err(|e| SuiteError(format!("{at}: quarantine: {e:?}")))?;
    }
    let authz = crate::service::Authz::from_policy(loaded.policy.clone()).with_state(state);
    if suite.credentials.as_deref() != Some("missing") {
        authz.tokens().assume_all(&loaded.policy.credentials);
    }
    let mut out = Vec::with_capacity(suite.cases.len());
    for case in &suite.cases {
        let request = case
            .request
            .to_check_request(&loaded.policy)
            .map_err(|e| SuiteError(format!("{at} / {}: {e}", case.name)))?;
        let now = match &case.request.now {
            Some(t) => parse_time(&format!("{at} / {}: `now`", case.name), t)?,
            None => suite_now,
        };
        let checked = crate::check::ready_now(authz.decide(request.clone(), now))
            .ok_or_else(|| SuiteError(format!("{at} / {}: the Check waited (a credential's token)", case.name)))?;
        let failures = compare(&case.expect, &checked)?;
        out.push(CaseRun { name: case.name.clone(), request, now, checked, failures });
    }
    Ok(out)
}

/// What differs between `want` and the Check's result.
fn compare(want: &Expect, checked: &crate::check::Checked) -> Result<Vec<String>, SuiteError> {
    let d = &checked.decision;
    if !matches!(want.decision.as_str(), "allow" | "deny") {
        return Err(SuiteError(format!("`expect.decision` `{}` is not allow or deny", want.decision)));
    }
    let got = if d.allowed() { "allow" } else { "deny" };
    let mut bad = Vec::new();
    let rule_ok = want.rule.as_deref().is_none_or(|r| r == d.rule.as_str());
    let dry_ok = want.dry_run.is_none_or(|w| w == d.dry_run());
    if got != want.decision || !rule_ok || !dry_ok {
        bad.push(format!(
            "want {}{}{}, got {} by `{}`{}",
            want.decision,
            want.rule.as_deref().map(|r| format!(" by `{r}`")).unwrap_or_default(),
            if want.dry_run == Some(true) { " (dry run)" } else { "" },
            got,
            d.rule.as_str(),
            if d.dry_run() { " (dry run)" } else { "" },
        ));
        return Ok(bad);
    }
    if want.status.is_some() || want.error.is_some() || want.retry_after.is_some() || want.approval.is_some() {
        bad.extend(deny_fields(want, &checked.response));
    }
    Ok(bad)
}

/// The deny's status, body `error`, `retry-after` and approval, where expected.
fn deny_fields(want: &Expect, resp: &CheckResponse) -> Vec<String> {
    let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response else {
        return vec!["expected a denied response (status, error, retry-after or approval were given)".into()];
    };
    let status = d.status.as_ref().map(|s| s.code);
    let body: serde_json::Value = serde_json::from_str(&d.body).unwrap_or_default();
    // A JSON-RPC answer (agent-controls §8) carries the deny body inside.
    let body = if body.get("jsonrpc").is_some() {
        body.pointer("/result/_meta/dev.hallpass~1decision")
            .filter(|v| v.is_object())
            .or_else(|| body.pointer("/error/data").filter(|v| v.is_object()))
            .cloned()
            .unwrap_or_default()
    } else {
        body
    };
    let at = |p: &str| body.pointer(p).cloned().unwrap_or_default();
    let retry = d
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "retry-after")
        .and_then(|h| h.value.parse::<u64>().ok());
    let mut bad = Vec::new();
    if let Some(s) = want.status {
        if status != Some(i32::from(s)) {
            bad.push(format!("status {}, want {s}", status.map_or("none".into(), |s| s.to_string())));
        }
    }
    if let Some(e) = &want.error {
        if at("/error") != e.as_str() {
            bad.push(format!("error {}, want {e}", at("/error")));
        }
    }
    if let Some(r) = want.retry_after {
        // A 429 says it at the top of the body, a held request in its `approval`.
        let said = if body.get("approval").is_some() { at("/approval/retry_after_s") } else { at("/retry_after_s") };
        if retry != Some(r) || said != r {
            let sent = retry.map_or("none".to_string(), |r| r.to_string());
            bad.push(format!("retry-after {sent} (body {said}), want {r}"));
        }
    }
    if let Some(a) = &want.approval {
        let id = at("/approval/id");
        let id = id.as_str().unwrap_or("");
        if at("/approval/status") != a.as_str() || !id.starts_with("ap_") || id.len() != 29 {
            bad.push(format!("approval {}, want status {a} and an ap_ id", at("/approval")));
        }
    }
    bad
}

/// The explanation of a case's decision by the traced evaluator (`hallpass check`'s).
pub fn explain(policy: &Policy, run: &CaseRun) -> String {
    match crate::request::Request::from_check_request(run.request.clone()) {
        Ok(req) => {
            let (d, traces) = crate::policy::explain(policy, &req, run.now);
            let ident = crate::policy::eval::resolve_identity(policy, &req).unwrap_or_default();
            crate::explain::render_text(policy, &d, ident, &traces)
        }
        Err(e) => format!("the request cannot be read: {e:?}\n"),
    }
}

/// Rules of `policy` no case decided: not the deciding rule, not a hold of a held request
/// (nor the rule that decides it once approved), not a dry-run rule that would have decided.
pub fn uncovered<'p>(policy: &'p Policy, runs: &[CaseRun]) -> Vec<&'p str> {
    let decided: std::collections::HashSet<&str> = runs
        .iter()
        .flat_map(|r| {
            let d = &r.checked.decision;
            std::iter::once(d.rule.as_str())
                .chain(d.holds.iter().map(|h| &*h.id))
                .chain(d.lifted.iter().map(|l| l.rule.as_str()))
                .chain(d.dry_run_rules.iter().map(|r| &**r))
        })
        .collect();
    policy.rules.iter().map(|r| &*r.id).filter(|id| !decided.contains(id)).collect()
}

/// The `*_test.yaml` files under `path` (itself, if a file), sorted.
pub fn discover(path: &Path) -> Result<Vec<PathBuf>, SuiteError> {
    let meta = std::fs::metadata(path).map_err(|e| SuiteError(format!("{}: {e}", path.display())))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| SuiteError(format!("{}: {e}", d.display())))?;
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            // Not into symlinked directories (no loops), hidden ones, or build output.
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    dirs.push(p);
                }
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("_test.yaml") || n.ends_with("_test.yml"))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// JUnit XML for suites' runs; `errors`: suites that could not run (and coverage
/// shortfalls), each as a suite with one case in error.
pub fn junit(results: &[(PathBuf, Vec<CaseRun>)], errors: &[(String, String)]) -> String {
    fn esc(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '&' => "&amp;".into(),
                '<' => "&lt;".into(),
                '>' => "&gt;".into(),
                '"' => "&quot;".into(),
                c if c.is_control() && c != '\n' && c != '\t' => format!("&#x{:x};", u32::from(c)),
                c => c.to_string(),
            })
            .collect()
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for (path, runs) in results {
        let failed = runs.iter().filter(|r| !r.passed()).count();
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\">\n",
            esc(&path.display().to_string()),
            runs.len()
        ));
        for r in runs {
            out.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\"",
                esc(&path.display().to_string()),
                esc(&r.name)
            ));
            if r.passed() {
                out.push_str("/>\n");
            } else {
                let msg = r.failures.join("; ");
                out.push_str(&format!(
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    esc(&msg),
                    esc(&msg)
                ));
            }
        }
        out.push_str("  </testsuite>\n");
    }
    for (name, why) in errors {
        out.push_str(&format!(
            "  <testsuite name=\"{n}\" tests=\"1\" failures=\"0\" errors=\"1\">\n    <testcase classname=\"{n}\" name=\"suite\">\n      <error message=\"{w}\">{w}</error>\n    </testcase>\n  </testsuite>\n",
            n = esc(name),
            w = esc(why)
        ));
    }
    out.push_str("</testsuites>\n");
    out
}
