//! The control API (agent-controls.md §3) on its own listener (`--control-listen`, off unless
//! set; never the admin port): today the quarantine endpoints; approvals, grants and the
//! console come with the approvals issue.
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

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use jiff::Timestamp;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

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

fn entry_json(q: &Quarantine) -> serde_json::Value {
    serde_json::json!({
        "agent": q.agent,
        "since": q.since.to_string(),
        "until": if q.until == Timestamp::MAX { serde_json::Value::Null } else { q.until.to_string().into() },
        "reason": q.reason,
        "by": q.by,
    })
}

async fn list_quarantine(State(st): State<ControlState>, headers: HeaderMap) -> Response {
    if let Err(m) = authenticate(&st, &headers).await {
        return error(StatusCode::UNAUTHORIZED, m);
    }
    let list: Vec<serde_json::Value> = st.state.quarantines(Timestamp::now()).iter().map(entry_json).collect();
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
        Ok(()) => (StatusCode::CREATED, Json(entry_json(&q))).into_response(),
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
