//! The policy file as written: serde types that mirror `policy-language.md` one to one.
//!
//! Every struct rejects unknown keys (a typo must never silently widen access). Conditions,
//! operator maps and identity sources are kept as raw YAML values here and read by
//! [`super::compile`], which can then name the rule in every error.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

/// The whole policy document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Must be present and equal to 1.
    pub version: Option<Value>,
    /// Global settings; all optional.
    #[serde(default)]
    pub settings: SettingsDef,
    /// Where identities come from; defaults documented in the spec.
    pub identity: Option<IdentityDef>,
    /// Named sets of agent ids.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Rules in file order.
    #[serde(default)]
    pub rules: Vec<RuleDef>,
    /// Upstream credentials hallpass injects on allow (agent-controls.md §6).
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialDef>,
}

/// One entry of `credentials:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialDef {
    /// A file holding the token (its first line), re-read when it changes.
    pub file: Option<String>,
    /// An OAuth2 token endpoint hallpass gets the token from (and refreshes it).
    pub oauth2: Option<OAuth2Def>,
    /// The header set on allow (default `authorization`).
    pub header: Option<String>,
    /// Its value, `{token}` replaced (default `Bearer {token}`).
    pub format: Option<String>,
    /// The `upstream` Envoy's route must name (route metadata, namespace `hallpass`) for the
    /// credential to be injected.
    pub route: Option<String>,
}

/// `credentials.<name>.oauth2`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Def {
    /// The token endpoint: `https://`, or `http://` to a loopback address.
    pub token_url: String,
    /// `client_credentials` or `refresh_token`.
    pub grant: String,
    /// The client id.
    pub client_id: String,
    /// A file holding the client secret (its first line).
    pub client_secret_file: Option<String>,
    /// A file holding the refresh token to start from (`grant: refresh_token`).
    pub refresh_token_file: Option<String>,
    /// Scopes asked for.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// How long before expiry the token is refreshed (default 60s).
    pub refresh_before: Option<String>,
    /// How the client authenticates: `basic` (default) or `post`.
    pub client_auth: Option<String>,
    /// PEM file of CA certificates trusted for the endpoint, besides the system's.
    pub ca_file: Option<String>,
}

/// `settings:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsDef {
    /// Decision when no rule matches.
    #[serde(default)]
    pub default: Option<EffectDef>,
    /// enforce | dry_run.
    #[serde(default)]
    pub mode: Option<ModeDef>,
    /// HTTP status of a deny.
    #[serde(default)]
    pub deny_status: Option<u16>,
    /// `;` in a path is an ordinary character (default false: `invalid_path`).
    #[serde(default)]
    pub allow_path_semicolons: Option<bool>,
    /// Automatic quarantine (agent-controls.md §5).
    #[serde(default)]
    pub quarantine: Option<QuarantineDef>,
    /// The control API (agent-controls.md §3).
    #[serde(default)]
    pub control: Option<ControlDef>,
    /// How a denied JSON-RPC call is answered: `jsonrpc` (default) or `http`.
    #[serde(default)]
    pub mcp_responses: Option<McpResponsesDef>,
    /// Holds and approvals (agent-controls.md §2-3).
    #[serde(default)]
    pub approvals: Option<ApprovalsDef>,
}

/// `settings.approvals:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsDef {
    /// How long a pending approval waits for a human (default 15m).
    pub pending_ttl: Option<String>,
    /// How long an approval grant lasts unless the approver says otherwise (default 10m).
    pub grant_ttl: Option<String>,
    /// The longest a grant may last (default 24h).
    pub max_grant_ttl: Option<String>,
    /// What a held caller is told to wait before retrying (default 30s).
    pub retry_after: Option<String>,
    /// JSON Pointers into the body (or an MCP call's arguments) shown as `"[redacted]"`.
    pub redact: Option<Vec<String>>,
    /// Most pending approvals kept (default 1000).
    pub max_pending: Option<u64>,
    /// Most pending approvals of one agent (default 20).
    pub max_pending_per_agent: Option<u64>,
    /// Where `approval.pending` and `agent.quarantined` events are POSTed.
    pub webhook: Option<WebhookDef>,
}

/// `settings.approvals.webhook:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDef {
    /// An `http://` or `https://` URL.
    pub url: Option<String>,
    /// PEM file of CA certificates trusted for an https receiver, besides the system's.
    pub ca_file: Option<String>,
}

/// `settings.mcp_responses:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum McpResponsesDef {
    /// A JSON-RPC response (HTTP 200) the model can read.
    Jsonrpc,
    /// A plain HTTP deny.
    Http,
}

/// `settings.control:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlDef {
    /// YAML list of `{name, token_sha256}`; relative to the policy file.
    pub approvers_file: Option<String>,
}

/// allow | deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectDef {
    /// Let the request through.
    Allow,
    /// Refuse the request.
    Deny,
    /// Hold the request for a human's approval (agent-controls.md §2).
    RequireApproval,
}

/// enforce | dry_run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeDef {
    /// Denies are enforced.
    Enforce,
    /// Denies are logged and returned as allow.
    DryRun,
}

/// `identity:`; each list is kept raw and read by the compiler.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityDef {
    /// Sources of the agent id, in order.
    pub agent: Option<Vec<Value>>,
    /// Sources of the on-behalf-of id, in order.
    pub on_behalf_of: Option<Vec<Value>>,
}

/// One rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Required, unique, `[A-Za-z0-9._-]+`.
    pub id: Option<String>,
    /// Free text, not used in decisions.
    pub description: Option<String>,
    /// allow | deny | require_approval, required.
    pub effect: Option<EffectDef>,
    /// Agent ids, `@group`, `*`.
    pub agents: Option<Vec<String>>,
    /// Uppercase HTTP methods.
    pub methods: Option<Vec<String>>,
    /// Hosts, `*.` wildcards.
    pub hosts: Option<Vec<String>>,
    /// Path patterns.
    pub paths: Option<Vec<String>>,
    /// Tests on path captures.
    pub captures: Option<BTreeMap<String, Value>>,
    /// Tests on query parameters.
    pub query: Option<BTreeMap<String, Value>>,
    /// Tests on request headers.
    pub headers: Option<BTreeMap<String, Value>>,
    /// Condition on the parsed body.
    pub body: Option<Value>,
    /// JSON-RPC / MCP part.
    pub mcp: Option<McpDef>,
    /// Time bounds.
    pub when: Option<WhenDef>,
    /// Message returned on deny.
    pub message: Option<String>,
    /// This rule alone in dry run (deny and require_approval rules only).
    pub dry_run: Option<bool>,
    /// Rate limits and budgets (allow rules only; agent-controls.md §4).
    pub limits: Option<Vec<LimitDef>>,
    /// The credential injected on allow (allow rules only; agent-controls.md §6).
    pub credential: Option<String>,
    /// Headers removed from the upstream request on allow (allow rules only).
    pub strip_headers: Option<Vec<String>>,
}

/// One entry of a rule's `limits:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitDef {
    /// Key parts: agent, on_behalf_of, mcp.tool, path.<capture>, header.<name>.
    pub per: Option<Vec<String>>,
    /// `N/s|m|h|d`.
    pub rate: Option<String>,
    /// Requests that may come at once (default N).
    pub burst: Option<u64>,
    /// What a request costs (default 1).
    pub cost: Option<CostDef>,
    /// deny (default) | allow, when the state store cannot be reached.
    pub on_store_error: Option<OnStoreErrorDef>,
}

/// `cost:` of a limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostDef {
    /// JSON Pointer into the body.
    pub field: Option<String>,
    /// Cost is the length of the array there.
    pub length: Option<bool>,
}

/// `on_store_error:` of a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreErrorDef {
    /// Deny with `state_unavailable`.
    Deny,
    /// Let it through uncounted.
    Allow,
}

/// `settings.quarantine:` — automatic quarantine.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineDef {
    /// Denies that trigger a quarantine.
    pub after_denies: Option<u32>,
    /// The window they are counted in, e.g. `1m`.
    pub within: Option<String>,
    /// How long the quarantine lasts, e.g. `15m`.
    #[serde(rename = "for")]
    pub duration: Option<String>,
}

/// `mcp:` of a rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpDef {
    /// JSON-RPC method names.
    pub methods: Option<Vec<String>>,
    /// `params.name` of a tools/call.
    pub tools: Option<Vec<String>>,
    /// Condition on `params.arguments`.
    pub arguments: Option<Value>,
}

/// `when:` of a rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhenDef {
    /// mon..sun.
    pub days: Option<Vec<String>>,
    /// `HH:MM-HH:MM`.
    pub hours: Option<String>,
    /// IANA name, default UTC.
    pub timezone: Option<String>,
    /// RFC 3339 instant, inclusive.
    pub not_before: Option<String>,
    /// RFC 3339 instant, inclusive.
    pub not_after: Option<String>,
}
