//! The control API (agent-controls.md §3) on its own listener (`--control-listen`, off unless
//! set; never the admin port): approvals, grants, quarantines, and the approval console.
//!
//! Every request needs `authorization: Bearer <token>` whose SHA-256 (hex) is listed in the
//! approvers file named by the policy's `settings.control.approvers_file` (YAML: a list of
//! `{name, token_sha256}`), read on every request so an edit is in force at once; anything
//! else gets 401. The approver's `name` is recorded as who acted. Bad input gets a 4xx with
//! a JSON `{"error": "..."}` and changes nothing.
//!
//! - `GET /v1/quarantine` — the quarantines in force
//! - `POST /v1/quarantine` `{"agent": "...", "for": "1h", "reason": "..."}` (`for` omitted:
//!   until lifted) → 201 and the quarantine
//! - `DELETE /v1/quarantine/{agent}` → 200, or 404 when the agent is not quarantined
//! - `GET /v1/approvals` (pending), `GET /v1/approvals/{id}`
//! - `POST /v1/approvals/{id}/approve` `{"ttl": "10m", "uses": 1, "reason": "..."}` → 201 and
//!   the grant; `POST /v1/approvals/{id}/deny` `{"reason": "..."}` → 200 and the approval
//! - `GET /v1/grants`, `POST /v1/grants` (a task grant) → 201, `DELETE /v1/grants/{id}`
//! - `GET /` — the approval console (one self-contained page; the API calls carry the token)

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::approvals::{self, Grant, GrantKind};
use crate::policy::Effect;
use crate::quarantine::StateRuntime;
use crate::reload::PolicyStore;
use crate::state::Quarantine;

/// What the control API works on.
#[derive(Debug, Clone)]
pub struct ControlState {
    /// The state store and the quarantine list.
    pub state: Arc<StateRuntime>,
    /// The policy store (for `settings.control.approvers_file`, relative to the policy file).
    pub policy: Arc<PolicyStore>,
}

/// Longest agent id accepted (SPIFFE ids run long).
const MAX_AGENT: usize = 2048;
/// Largest request body read (before authentication as well).
const MAX_BODY: usize = 64 * 1024;

/// An approver as listed in the approvers file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Approver {
    name: String,
    token_sha256: String,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// The approvers file named by the policy in force, resolved against the policy's directory.
fn approvers_file(st: &ControlState) -> Option<PathBuf> {
    let live = st.policy.handle().load();
    let f = live.policy.settings.control_approvers_file.as_deref()?;
    let f = Path::new(f);
    Some(if f.is_relative() { st.policy.path().parent().unwrap_or(Path::new(".")).join(f) } else { f.to_path_buf() })
}

/// [`approver`] off the async runtime (it reads the approvers file).
async fn authenticate(st: &ControlState, headers: &HeaderMap) -> Result<String, &'static str> {
    let (st, headers) = (st.clone(), headers.clone());
    tokio::task::spawn_blocking(move || approver(&st, &headers)).await.unwrap_or(Err("authentication failed"))
}

/// The approver a request authenticates as, or why not (a 401).
fn approver(st: &ControlState, headers: &HeaderMap) -> Result<String, &'static str> {
    let unauthorized = |m: &'static str| m;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("authorization: Bearer <token> is required"))?;
    let file = approvers_file(st)
        .ok_or_else(|| unauthorized("no approvers: the policy sets no settings.control.approvers_file"))?;
    let text = std::fs::read_to_string(&file).map_err(|e| {
        tracing::warn!(file = %file.display(), error = %e, "cannot read the approvers file");
        unauthorized("approvers file unreadable")
    })?;
    let list: Vec<Approver> = serde_yaml::from_str(&text).map_err(|e| {
        tracing::warn!(file = %file.display(), error = %e, "approvers file is invalid");
        unauthorized("approvers file invalid")
    })?;
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    // Both sides are digests: comparing them leaks nothing about the token.
    list.into_iter()
        .find(|a| a.token_sha256.trim().eq_ignore_ascii_case(&hex))
        .map(|a| a.name)
        .ok_or_else(|| unauthorized("unknown token"))
}

async fn list_quarantine(State(st): State<ControlState>, headers: HeaderMap) -> Response {
    if let Err(m) = authenticate(&st, &headers).await {
        return error(StatusCode::UNAUTHORIZED, m);
    }
    let list: Vec<serde_json::Value> = st.state.quarantines(Timestamp::now()).iter().map(Quarantine::view).collect();
    Json(serde_json::json!({ "quarantined": list })).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddQuarantine {
    agent: String,
    #[serde(rename = "for")]
    duration: Option<String>,
    reason: Option<String>,
}

async fn add_quarantine(
    State(st): State<ControlState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let by = match authenticate(&st, &headers).await {
        Ok(n) => n,
        Err(m) => return error(StatusCode::UNAUTHORIZED, m),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return error(e.status(), format!("body: {}", e.body_text())),
    };
    let req: AddQuarantine = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    if req.agent.is_empty() || req.agent.len() > MAX_AGENT || req.agent.chars().any(char::is_control) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`agent` must be 1-{MAX_AGENT} bytes without control characters"),
        );
    }
    let now = Timestamp::now();
    let until = match req.duration.as_deref() {
        None => Timestamp::MAX,
        Some(d) => match crate::settings::parse_duration("`for`", d) {
            Ok(d) if !d.is_zero() => {
                match jiff::SignedDuration::try_from(d).ok().and_then(|d| now.checked_add(d).ok()) {
                    Some(t) => t,
                    None => {
                        return error(StatusCode::BAD_REQUEST, "`for` is too long; omit it to quarantine until lifted")
                    }
                }
            }
            Ok(_) => return error(StatusCode::BAD_REQUEST, "`for` must be longer than 0"),
            Err(m) => return error(StatusCode::BAD_REQUEST, m),
        },
    };
    let q = Quarantine { agent: req.agent, since: now, until, reason: req.reason.unwrap_or_default(), by };
    match st.state.quarantine(q.clone()).await {
        Ok(()) => (StatusCode::CREATED, Json(q.view())).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn lift_quarantine(
    State(st): State<ControlState>,
    headers: HeaderMap,
    agent: Result<UrlPath<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let by = match authenticate(&st, &headers).await {
        Ok(n) => n,
        Err(m) => return error(StatusCode::UNAUTHORIZED, m),
    };
    let UrlPath(agent) = match agent {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("agent in the path: {}", e.body_text())),
    };
    match st.state.lift(&agent, &by).await {
        Ok(true) => Json(serde_json::json!({ "lifted": agent })).into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("`{agent}` is not quarantined")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// A refusal to answer as is (boxed: a Response is large).
type Refused = Box<Response>;

/// Authenticate, or the 401 to answer.
async fn who(st: &ControlState, headers: &HeaderMap) -> Result<String, Refused> {
    authenticate(st, headers).await.map_err(|m| Box::new(error(StatusCode::UNAUTHORIZED, m)))
}

/// A JSON request body (empty: `{}`), or the 400 to answer.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, Refused> {
    let body = body.map_err(|e| Box::new(error(e.status(), format!("body: {}", e.body_text()))))?;
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &body };
    serde_json::from_slice(text).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, format!("body: {e}"))))
}

/// An id in the URL, or the 400 to answer.
fn url_id(id: Result<UrlPath<String>, axum::extract::rejection::PathRejection>) -> Result<String, Refused> {
    id.map(|UrlPath(i)| i)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, format!("id in the path: {}", e.body_text()))))
}

fn unavailable(e: crate::state::StoreError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// What a call on one approval carries: the approver, the approval id and the request body.
async fn on_approval<T: serde::de::DeserializeOwned>(
    st: &ControlState,
    headers: &HeaderMap,
    id: Result<UrlPath<String>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(String, String, T), Refused> {
    let by = who(st, headers).await?;
    Ok((by, url_id(id)?, json_body(body)?))
}

/// Longest `reason` accepted.
const MAX_REASON: usize = 2048;

fn check_reason(r: &Option<String>) -> Result<String, Refused> {
    match r {
        Some(r) if r.len() > MAX_REASON => {
            Err(Box::new(error(StatusCode::BAD_REQUEST, format!("`reason` is longer than {MAX_REASON} bytes"))))
        }
        Some(r) => Ok(r.clone()),
        None => Ok(String::new()),
    }
}

/// A grant's end: `ttl` from now, at most `settings.approvals.max_grant_ttl` ahead.
fn grant_end(ttl: &str, now: Timestamp, max: std::time::Duration) -> Result<Timestamp, Refused> {
    let d = crate::settings::parse_duration("`ttl`", ttl).map_err(|m| Box::new(error(StatusCode::BAD_REQUEST, m)))?;
    if d.is_zero() {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, "`ttl` must be longer than 0")));
    }
    if d > max {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("`ttl` {ttl} is above the maximum (settings.approvals.max_grant_ttl: {}s)", max.as_secs()),
        )));
    }
    Ok(approvals::add(now, d))
}

async fn list_approvals(State(st): State<ControlState>, headers: HeaderMap) -> Response {
    if let Err(r) = who(&st, &headers).await {
        return *r;
    }
    match st.state.pending(Timestamp::now()).await {
        Ok(list) => Json(serde_json::json!({ "approvals": list })).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn get_approval(
    State(st): State<ControlState>,
    headers: HeaderMap,
    id: Result<UrlPath<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    if let Err(r) = who(&st, &headers).await {
        return *r;
    }
    let id = match url_id(id) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let now = Timestamp::now();
    match st.state.pending(now).await {
        Ok(list) => match list.into_iter().find(|p| p.id == id) {
            Some(p) => Json(p).into_response(),
            None => {
                // Approved already: its grant, while in force.
                let gid = Grant::approval_grant_id(&id);
                match st.state.grants(now).await {
                    Ok(gs) => match gs.into_iter().find(|g| g.id == gid) {
                        Some(g) => {
                            Json(serde_json::json!({ "id": id, "status": "approved", "grant": g })).into_response()
                        }
                        None => error(StatusCode::NOT_FOUND, format!("no pending approval `{id}`")),
                    },
                    Err(e) => unavailable(e),
                }
            }
        },
        Err(e) => unavailable(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Approve {
    ttl: Option<String>,
    uses: Option<u32>,
    reason: Option<String>,
    /// Approve a pending approval that is not shown in full (`complete: false`).
    force: Option<bool>,
    /// The `binding` of the pending approval the approver saw: if the record under the id
    /// is another one now (expired and held again differently), the approval is refused.
    binding: Option<String>,
}

/// Most uses one approval grant may have.
const MAX_USES: u32 = 1000;

async fn approve(
    State(st): State<ControlState>,
    headers: HeaderMap,
    id: Result<UrlPath<String>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let (by, id, req) = match on_approval::<Approve>(&st, &headers, id, body).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let settings = st.policy.handle().load().policy.settings.approvals.clone();
    let now = Timestamp::now();
    let expires_at = match &req.ttl {
        Some(t) => match grant_end(t, now, settings.max_grant_ttl) {
            Ok(e) => e,
            Err(r) => return *r,
        },
        None => approvals::add(now, settings.grant_ttl),
    };
    let uses = req.uses.unwrap_or(1);
    if uses == 0 || uses > MAX_USES {
        return error(StatusCode::BAD_REQUEST, format!("`uses` must be 1-{MAX_USES}"));
    }
    let reason = match check_reason(&req.reason) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    // What the approver approves is what the pending approval shows: it must be pending, and
    // shown in full unless the approver insists.
    let pending = match st.state.pending(now).await {
        Ok(list) => list.into_iter().find(|p| p.id == id),
        Err(e) => return unavailable(e),
    };
    let Some(pending) = pending else { return error(StatusCode::NOT_FOUND, format!("no pending approval `{id}`")) };
    if req.binding.as_deref().is_some_and(|b| b != pending.binding) {
        return error(
            StatusCode::CONFLICT,
            "the pending approval under this id is not the one you saw (it was held again with other headers, holds or query order): look at it again",
        );
    }
    if !pending.complete && req.force != Some(true) {
        return error(
            StatusCode::CONFLICT,
            "this pending approval is not shown in full (its body is too large to show, or not text); approve with \"force\": true only if you know what it does",
        );
    }
    let grant = Grant {
        id: Grant::approval_grant_id(&id),
        kind: GrantKind::Approval { approval: id.clone(), uses, binding: pending.binding.clone() },
        created_at: now,
        expires_at,
        approved_by: by,
        reason,
    };
    match st.state.approve(&id, pending.agent.as_deref(), grant.clone()).await {
        Ok(true) => (StatusCode::CREATED, Json(grant)).into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no pending approval `{id}`")),
        Err(e) => unavailable(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyApproval {
    reason: Option<String>,
}

async fn deny_approval(
    State(st): State<ControlState>,
    headers: HeaderMap,
    id: Result<UrlPath<String>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let (by, id, req) = match on_approval::<DenyApproval>(&st, &headers, id, body).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let reason = match check_reason(&req.reason) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match st.state.deny_approval(&id, &by, &reason, Timestamp::now()).await {
        Ok(Some(p)) => Json(p).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no pending approval `{id}`")),
        Err(e) => unavailable(e),
    }
}

async fn list_grants(State(st): State<ControlState>, headers: HeaderMap) -> Response {
    if let Err(r) = who(&st, &headers).await {
        return *r;
    }
    match st.state.grants(Timestamp::now()).await {
        Ok(list) => Json(serde_json::json!({ "grants": list })).into_response(),
        Err(e) => unavailable(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddGrant {
    agent: String,
    on_behalf_of: Option<String>,
    rules: Vec<String>,
    tools: Option<Vec<String>>,
    ttl: Option<String>,
    expires_at: Option<String>,
    reason: Option<String>,
}

async fn add_grant(
    State(st): State<ControlState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let by = match who(&st, &headers).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let req: AddGrant = match json_body(body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let bad = |m: String| error(StatusCode::BAD_REQUEST, m);
    let text_ok = |v: &str| !v.is_empty() && v.len() <= MAX_AGENT && !v.chars().any(char::is_control);
    if !text_ok(&req.agent) {
        return bad(format!("`agent` must be 1-{MAX_AGENT} bytes without control characters"));
    }
    if req.on_behalf_of.as_deref().is_some_and(|o| !text_ok(o)) {
        return bad(format!("`on_behalf_of` must be 1-{MAX_AGENT} bytes without control characters"));
    }
    let live = st.policy.handle().load_full();
    let policy = &live.policy;
    if req.rules.is_empty() {
        return bad("`rules` must name at least one require_approval rule".into());
    }
    for r in &req.rules {
        if !policy.rule(r).is_some_and(|r| r.effect == Effect::RequireApproval) {
            return bad(format!("`{r}` is not a require_approval rule of the policy in force"));
        }
    }
    if let Some(t) = &req.tools {
        if t.is_empty() || t.iter().any(|t| !text_ok(t)) {
            return bad("`tools` must be a non-empty list of tool names (omit it for any tool)".into());
        }
    }
    let now = Timestamp::now();
    let max = policy.settings.approvals.max_grant_ttl;
    let expires_at = match (&req.ttl, &req.expires_at) {
        (Some(t), None) => match grant_end(t, now, max) {
            Ok(e) => e,
            Err(r) => return *r,
        },
        (None, Some(e)) => match e.parse::<Timestamp>() {
            Ok(e) if e <= now => return bad("`expires_at` is not in the future".into()),
            Ok(e) if e > approvals::add(now, max) => {
                return bad(format!(
                    "`expires_at` is above the maximum (settings.approvals.max_grant_ttl: {}s ahead)",
                    max.as_secs()
                ))
            }
            Ok(e) => e,
            Err(e) => return bad(format!("`expires_at`: {e}")),
        },
        _ => return bad("a task grant needs exactly one of `ttl` or `expires_at`".into()),
    };
    let reason = match check_reason(&req.reason) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let grant = Grant {
        id: approvals::new_grant_id(),
        kind: GrantKind::Task { agent: req.agent, on_behalf_of: req.on_behalf_of, rules: req.rules, tools: req.tools },
        created_at: now,
        expires_at,
        approved_by: by,
        reason,
    };
    match st.state.add_grant(grant.clone()).await {
        Ok(()) => (StatusCode::CREATED, Json(grant)).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn revoke_grant(
    State(st): State<ControlState>,
    headers: HeaderMap,
    id: Result<UrlPath<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let by = match who(&st, &headers).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let id = match url_id(id) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    match st.state.revoke(&id, &by).await {
        Ok(true) => Json(serde_json::json!({ "revoked": id })).into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no grant `{id}`")),
        Err(e) => unavailable(e),
    }
}

/// The approval console: one page, its one inline script allowed by hash (no other script,
/// no external anything), never framed.
const CONSOLE: &str = include_str!("console.html");

/// The `Content-Security-Policy` of the console: the hash of its one inline script.
fn console_csp() -> String {
    let script =
        CONSOLE.split_once("<script>").and_then(|(_, rest)| rest.split_once("</script>")).map_or("", |(s, _)| s);
    let hash = base64(&Sha256::digest(script.as_bytes()));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(A.get(((n >> shift) & 63) as usize).copied().unwrap_or(b'A')));
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn console() -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
            (axum::http::header::CONTENT_SECURITY_POLICY, console_csp()),
            (axum::http::header::X_FRAME_OPTIONS, "DENY".to_string()),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (axum::http::header::REFERRER_POLICY, "no-referrer".to_string()),
            (axum::http::header::CACHE_CONTROL, "no-store".to_string()),
        ],
        CONSOLE,
    )
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
}

/// The control API's routes.
pub fn router(st: ControlState) -> Router {
    Router::new()
        .route("/v1/quarantine", get(list_quarantine).post(add_quarantine))
        .route("/v1/quarantine/{agent}", delete(lift_quarantine))
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/{id}", get(get_approval))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny_approval))
        .route("/v1/grants", get(list_grants).post(add_grant))
        .route("/v1/grants/{id}", delete(revoke_grant))
        .route("/", get(console))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(st)
}

/// Serve the control API on `listener` until `shutdown` resolves.
pub async fn run(listener: TcpListener, st: ControlState, shutdown: impl Future<Output = ()> + Send + 'static) {
    if let Err(e) = axum::serve(listener, router(st)).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "control API stopped");
    }
}

/// A small client for the control API (`hallpass quarantine …`): plain HTTP/1.1 over TCP,
/// one request per connection. `server`: `http://host:port` (the control API has no TLS of
/// its own: reach it inside the cluster or through a port-forward).
pub mod client {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// Send `method path` with the bearer `token` and an optional JSON `body`; the status and
    /// the response body.
    pub fn call(
        server: &str,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        let authority = server
            .strip_prefix("http://")
            .ok_or_else(|| format!("--server `{server}` must start with http://"))?
            .trim_end_matches('/');
        let mut s = TcpStream::connect(authority).map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| format!("sending to {authority}: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| format!("reading from {authority}: {e}"))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text.split_once("\r\n\r\n").ok_or("malformed response")?;
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("malformed status line")?;
        Ok((status, rest.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors_and_the_console_csp_names_its_script() {
        // RFC 4648 §10.
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        let csp = console_csp();
        assert!(csp.contains("script-src 'sha256-") && csp.len() > 100, "{csp}");
        assert_eq!(CONSOLE.matches("<script>").count(), 1, "one inline script, allowed by its hash");
    }
}
