//! Admin HTTP endpoints for Kubernetes probes and Prometheus: `GET /healthz` (the process is
//! up), `GET /readyz` (a policy is loaded and the gRPC server is serving), `GET /metrics`, and
//! `GET /policy` (the revision in force and the reload status, as JSON).
//!
//! A deliberately small HTTP/1.1 responder: one request per connection, bounded header size,
//! a read timeout, `Connection: close`. It never touches the decision path.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cache::DecisionCache;
use crate::reload::PolicyStore;
use crate::telemetry::Metrics;

/// What the admin endpoints report.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Set once the gRPC server is serving with a loaded policy.
    pub ready: Arc<AtomicBool>,
    /// The metrics to expose.
    pub metrics: Metrics,
    /// The policy store, for `/policy`.
    pub store: Arc<PolicyStore>,
    /// The decision cache, to report its size.
    pub cache: Option<Arc<DecisionCache>>,
    /// The state store, reported by `/readyz`.
    pub state: Option<Arc<crate::quarantine::StateRuntime>>,
}

fn policy_status(state: &AdminState) -> String {
    let live = state.store.handle().load();
    let st = state.store.status();
    serde_json::json!({
        "file": state.store.path().display().to_string(),
        "revision": live.revision,
        "generation": live.generation,
        "rules": live.policy.rules.len(),
        "loaded_at": live.loaded_at.to_string(),
        "reloads": st.reloads,
        "reload_failures": st.failures,
        "last_reload_error": st.last_error,
    })
    .to_string()
        + "\n"
}

const MAX_REQUEST: usize = 8192;

/// Serve the admin endpoints on `listener` until `shutdown` resolves.
pub async fn run(listener: TcpListener, state: AdminState, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), handle(stream, &state)).await;
                });
            }
        }
    }
}

async fn handle(mut stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > MAX_REQUEST {
            break;
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => {
            if state.ready.load(Ordering::Acquire) {
                // An unreachable state store does not make the pod unready: every Check is
                // still answered (limits follow on_store_error, quarantines the last list
                // read), and taking every replica out at once when Redis blips would turn a
                // degraded store into an outage. It is reported here, in
                // hallpass_state_store_up and by the HallpassStateStoreDown alert. Only a
                // replica that has never read the quarantine list is not ready: it cannot
                // tell whom to refuse.
                match &state.state {
                    Some(s) if !s.quarantines_known() => (
                        "503 Service Unavailable",
                        "text/plain",
                        format!(
                            "not ready: the quarantine list has not been read from the state store ({}) yet\n",
                            s.store.backend()
                        ),
                    ),
                    Some(s) if !s.store_up() => {
                        ("200 OK", "text/plain", format!("ready; state store ({}) unreachable\n", s.store.backend()))
                    }
                    _ => ("200 OK", "text/plain", "ready\n".to_string()),
                }
            } else {
                ("503 Service Unavailable", "text/plain", "not ready\n".to_string())
            }
        }
        ("GET", "/metrics") => {
            if let Some(c) = &state.cache {
                state.metrics.cache_entries.set(i64::try_from(c.entry_count()).unwrap_or(i64::MAX));
            }
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", state.metrics.render())
        }
        ("GET", "/policy") => ("200 OK", "application/json", policy_status(state)),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "method not allowed\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
