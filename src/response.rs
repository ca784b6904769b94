//! Decision → CheckResponse, as policy-language.md "What Envoy gets back" says.
//!
//! Allow: gRPC OK, `ok_response` setting `x-hallpass-decision-id` with OVERWRITE_IF_EXISTS_OR_ADD
//! (a client-sent value never survives). Deny: PERMISSION_DENIED, `denied_response` with the
//! policy's deny status and a JSON body naming the rule, never echoing request data.
//! Both carry `dynamic_metadata` for Envoy's access log.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus,
    OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc;

use crate::limits::HitKind;
use crate::policy::eval::Identity;
use crate::policy::{Decision, RuleId, Verdict};

/// The upstream request header carrying the decision id on allow.
pub const DECISION_ID_HEADER: &str = "x-hallpass-decision-id";

/// gRPC status codes used here.
const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;

/// Generates unique decision ids: a random per-process prefix and a counter, 32 hex digits.
#[derive(Debug)]
pub struct DecisionIds {
    prefix: u64,
    counter: AtomicU64,
}

impl Default for DecisionIds {
    fn default() -> Self {
        DecisionIds::new()
    }
}

impl DecisionIds {
    /// A generator with a fresh random prefix (from the std hasher's per-process random keys,
    /// mixed with the time and pid).
    pub fn new() -> DecisionIds {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
        );
        h.write_u32(std::process::id());
        DecisionIds { prefix: h.finish(), counter: AtomicU64::new(0) }
    }

    /// The next id.
    pub fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{:016x}", self.prefix, n)
    }
}

fn s(v: &str) -> Value {
    Value { kind: Some(Kind::StringValue(v.to_string())) }
}

/// The message a denied caller reads.
pub fn deny_message(d: &Decision) -> String {
    if d.verdict == Verdict::RateLimited {
        if let Some(h) = &d.limit {
            return format!(
                "Rate limit of rule `{}` reached ({} per {}).",
                h.rule,
                h.quota,
                crate::limits::window_name(h.window_s)
            );
        }
    }
    if let Some(m) = &d.message {
        return m.to_string();
    }
    match (&d.rule, d.rule.builtin()) {
        (RuleId::Rule(id), _) if d.verdict == Verdict::Held => {
            format!("This request needs a human's approval (rule `{id}`).")
        }
        (RuleId::Rule(id), _) => format!("Denied by policy rule `{id}`."),
        (RuleId::InvalidPath, Some(b)) => match d.path_error {
            Some(e) => format!("{}: {e}.", b.message),
            None => format!("{}.", b.message),
        },
        (_, Some(b)) => b.message.to_string(),
        (_, None) => "Denied.".to_string(),
    }
}

/// The dynamic metadata Envoy exposes as `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:...)%`.
pub fn metadata(d: &Decision, ident: Identity<'_>, decision_id: &str, revision: &str) -> Struct {
    // Sized to what is inserted: room for 8 made a ~1 KB table, and glibc serves requests
    // that size by first consolidating its small-chunk bins (malloc_consolidate), which
    // showed up at an eighth of a whole body-less Check's time.
    let n = 4
        + usize::from(ident.agent.is_some())
        + usize::from(ident.on_behalf_of.is_some())
        + usize::from(d.dry_run())
        + usize::from(!d.dry_run_rules.is_empty())
        + usize::from(d.limit.is_some())
        + usize::from(d.approval.is_some()) * 3;
    let mut fields = HashMap::with_capacity(n);
    fields.insert("decision".to_string(), s(if d.allowed() { "allow" } else { "deny" }));
    fields.insert("rule".to_string(), s(d.rule.as_str()));
    fields.insert("decision_id".to_string(), s(decision_id));
    if !revision.is_empty() {
        fields.insert("policy_revision".to_string(), s(revision));
    }
    if let Some(a) = ident.agent {
        fields.insert("agent".to_string(), s(a));
    }
    if let Some(o) = ident.on_behalf_of {
        fields.insert("on_behalf_of".to_string(), s(o));
    }
    if d.dry_run() {
        fields.insert("dry_run".to_string(), Value { kind: Some(Kind::BoolValue(true)) });
    }
    if !d.dry_run_rules.is_empty() {
        let joined: Vec<&str> = d.dry_run_rules.iter().map(|r| &**r).collect();
        fields.insert("dry_run_rules".to_string(), s(&joined.join(",")));
    }
    if let Some(h) = &d.limit {
        fields.insert("limit".to_string(), s(&format!("{}.{}:{}", h.rule, h.index, h.kind.label())));
    }
    if let Some(a) = &d.approval {
        if let Some(id) = &a.id {
            fields.insert("approval_id".to_string(), s(id));
        }
        if let Some(g) = &a.grant {
            fields.insert("grant".to_string(), s(g));
        }
        if let Some(b) = &a.approved_by {
            fields.insert("approved_by".to_string(), s(b));
        }
    }
    Struct { fields }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_string(), value: value.to_string(), raw_value: Vec::new() }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// The `error` of a deny body: `rate_limited` over a limit, `unavailable` when a state store
/// or credential hallpass depends on failed (503: retrying later may succeed), `forbidden`
/// otherwise.
pub fn deny_error(d: &Decision) -> &'static str {
    if d.verdict == Verdict::RateLimited {
        return "rate_limited";
    }
    if d.verdict == Verdict::Held {
        return "approval_required";
    }
    match d.rule {
        RuleId::StateUnavailable | RuleId::CredentialUnavailable => "unavailable",
        _ => "forbidden",
    }
}

/// Seconds until a rate-limited request would go through.
fn retry_after(d: &Decision) -> Option<u64> {
    match d.limit.as_ref().map(|h| h.kind) {
        Some(HitKind::Limited { retry_after_s }) if d.verdict == Verdict::RateLimited => Some(retry_after_s),
        _ => None,
    }
}

/// The JSON body of a deny.
pub fn deny_body(d: &Decision, decision_id: &str) -> String {
    let mut body = serde_json::json!({
        "error": deny_error(d),
        "rule": d.rule.as_str(),
        "message": deny_message(d),
        "decision_id": decision_id,
    });
    if let (Some(n), Some(o)) = (retry_after(d), body.as_object_mut()) {
        o.insert("retry_after_s".into(), n.into());
    }
    if let (Some(a), Some(o)) = (held(d), body.as_object_mut()) {
        o.insert(
            "approval".into(),
            serde_json::json!({
                "id": a.id,
                "status": a.status.map(|s| s.as_str()),
                "expires_at": a.expires_at.map(|t| t.to_string()),
                "retry_after_s": a.retry_after_s,
            }),
        );
    }
    body.to_string()
}

/// The approval of a held decision.
fn held(d: &Decision) -> Option<&crate::approvals::ApprovalState> {
    d.approval.as_deref().filter(|_| d.verdict == Verdict::Held)
}

fn deny_headers(d: &Decision, decision_id: &str) -> Vec<HeaderValueOption> {
    let mut h = vec![header("content-type", "application/json"), header(DECISION_ID_HEADER, decision_id)];
    if let (Some(n), Some(hit)) = (retry_after(d), &d.limit) {
        let (policy, state) = crate::limits::headers(hit, n);
        h.push(header("retry-after", &n.to_string()));
        h.push(header("ratelimit-policy", &policy));
        h.push(header("ratelimit", &state));
    }
    // The contract's held response carries it whether pending or denied (the tool text tells
    // a model not to retry a denied one).
    if let Some(a) = held(d) {
        h.push(header("retry-after", &a.retry_after_s.to_string()));
    }
    h
}

/// A single JSON-RPC call (not a notification, not a batch): what an MCP-native answer needs
/// (agent-controls.md §8).
#[derive(Debug, Clone, PartialEq)]
pub struct RpcCall {
    /// The call's `id` (a string or a number), echoed in the answer.
    pub id: serde_json::Value,
    /// A `tools/call`: answered as a tool result with `isError`; any other method as a
    /// JSON-RPC error.
    pub tool_call: bool,
}

/// The JSON-RPC call a request's body is, if it is exactly one call with an `id`: an object
/// with `"jsonrpc": "2.0"`, a string `method` and a string or number `id`, read strictly
/// (members spelt exactly). Anything else — a batch, a notification, an unparseable,
/// truncated or other body — is answered with a plain HTTP deny.
pub fn rpc_call(req: &crate::request::Request) -> Option<RpcCall> {
    if req.body.truncated {
        return None;
    }
    let crate::request::Parsed::Json(serde_json::Value::Object(o)) = req.body.parsed() else { return None };
    if o.get("jsonrpc").and_then(|v| v.as_str()) != Some("2.0") {
        return None;
    }
    let method = o.get("method")?.as_str()?;
    let id = o.get("id")?;
    if !(id.is_string() || id.is_number()) {
        return None;
    }
    Some(RpcCall { id: id.clone(), tool_call: method == "tools/call" })
}

/// The JSON-RPC answer to a denied call: a `tools/call` gets a tool result with `isError`
/// whose text the model reads; any other method a JSON-RPC error. Both carry the HTTP deny
/// body (`_meta."dev.hallpass/decision"`, `error.data`).
pub fn rpc_deny_body(d: &Decision, decision_id: &str, call: &RpcCall) -> String {
    let deny: serde_json::Value = serde_json::from_str(&deny_body(d, decision_id)).unwrap_or_default();
    let message = deny_message(d);
    let answer = if call.tool_call {
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": call.id,
            "result": {
                "content": [{"type": "text", "text": rpc_text(d, &message)}],
                "isError": true,
                "_meta": {"dev.hallpass/decision": deny},
            },
        })
    } else {
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": call.id,
            "error": {"code": -32001, "message": message, "data": deny},
        })
    };
    answer.to_string()
}

/// The text a model reads in a denied `tools/call`: the message and rule, and for a held call
/// the approval id and what to do.
fn rpc_text(d: &Decision, message: &str) -> String {
    let mut text = format!("{message} (rule {})", d.rule.as_str());
    if let Some(a) = held(d) {
        let id = a.id.as_deref().unwrap_or("");
        match a.status {
            Some(crate::approvals::ApprovalStatus::Denied) => text.push_str(&format!(
                " A human denied approval {id} for this exact call: do not retry it; tell the user it was refused."
            )),
            _ => text.push_str(&format!(
                " Approval {id} is pending: a human must approve this exact call. Retry the identical call (same arguments) in {} seconds or later; a changed call needs a new approval.",
                a.retry_after_s
            )),
        }
    }
    text
}

/// What an allow changes in the upstream request (agent-controls §6): a header set (the
/// credential; overwriting what the agent sent) and headers removed.
#[derive(Debug, Clone, Default)]
pub struct Injection {
    /// The credential's header and its value (a secret).
    pub set: Option<(Box<str>, crate::credentials::Secret)>,
    /// Headers removed.
    pub remove: Vec<Box<str>>,
    /// The credential's name, for the record.
    pub credential: Option<std::sync::Arc<str>>,
}

/// Build the CheckResponse for a decision. `rpc`: the request is one JSON-RPC call and the
/// policy answers those natively (a deny becomes HTTP 200 with a JSON-RPC answer; records,
/// metadata and metrics still say deny).
pub fn check_response(
    d: &Decision,
    ident: Identity<'_>,
    decision_id: &str,
    deny_status: u16,
    revision: &str,
    rpc: Option<&RpcCall>,
    inject: Option<&Injection>,
) -> CheckResponse {
    let dynamic_metadata = Some(metadata(d, ident, decision_id, revision));
    if d.allowed() {
        let mut headers = vec![header(DECISION_ID_HEADER, decision_id)];
        let mut headers_to_remove = Vec::new();
        if let Some(i) = inject {
            if let Some((name, value)) = &i.set {
                headers.push(header(name, value.expose()));
            }
            headers_to_remove.extend(i.remove.iter().map(|h| h.to_string()));
        }
        CheckResponse {
            status: Some(rpc::Status { code: GRPC_OK, message: String::new(), details: Vec::new() }),
            dynamic_metadata,
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove,
                ..Default::default()
            })),
        }
    } else {
        let (status, body) = match rpc {
            Some(call) => (200, rpc_deny_body(d, decision_id, call)),
            None => (d.deny_status(deny_status), deny_body(d, decision_id)),
        };
        CheckResponse {
            status: Some(rpc::Status {
                code: GRPC_PERMISSION_DENIED,
                message: format!("denied by {}", d.rule.as_str()),
                details: Vec::new(),
            }),
            dynamic_metadata,
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code: i32::from(status) }),
                headers: deny_headers(d, decision_id),
                body,
            })),
        }
    }
}
