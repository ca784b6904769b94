//! The webhook (agent-controls.md §3): `{"type": "approval.pending" | "agent.quarantined", …}`
//! POSTed to `settings.approvals.webhook.url` of the policy in force, from a bounded queue
//! that never delays a Check (a full queue drops the event and counts it).
//!
//! One worker sends the events in order, each with a 5 s deadline and up to three attempts
//! (0.5 s, then 1 s apart); the receiver must answer 2xx. `http://` (an in-cluster receiver
//! or relay) or `https://` (rustls, the system's roots plus `ca_file`'s; no redirects
//! followed). The body is JSON with `type`, `time` and the event's object; it carries what an
//! approver sees in the console (arguments redacted per `settings.approvals.redact`). Logs
//! name the receiver by scheme, host and port only: the URL's path may carry a token.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::reload::PolicyHandle;
use crate::telemetry::StateMetrics;

/// Events waiting to be sent before new ones are dropped.
pub const QUEUE: usize = 1024;
/// Deadline of one attempt.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Where events are queued.
#[derive(Debug, Clone)]
pub struct Events {
    tx: mpsc::Sender<serde_json::Value>,
}

impl Events {
    /// Queue an event; `false` when the queue is full (dropped).
    pub fn send(&self, ev: serde_json::Value) -> bool {
        self.tx.try_send(ev).is_ok()
    }
}

/// `settings.approvals.webhook`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The receiver.
    pub url: reqwest::Url,
    /// Extra CA certificates (PEM) for an https receiver.
    pub ca_file: Option<PathBuf>,
}

impl Webhook {
    /// The receiver as logs name it: scheme, host and port (no path: it may carry a token).
    pub fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }
}

/// Read a webhook URL (`http://` or `https://`, a host, no user info or fragment).
pub fn parse_url(u: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(u).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) || !url.username().is_empty() || url.password().is_some() {
        return Err("needs a host (and no user info)".into());
    }
    if url.fragment().is_some() {
        return Err("may not have a fragment".into());
    }
    Ok(url)
}

/// Start the worker; events go to the webhook of the policy in force when they are sent.
pub fn start(policy: PolicyHandle, metrics: Option<StateMetrics>) -> Events {
    let (tx, mut rx) = mpsc::channel::<serde_json::Value>(QUEUE);
    tokio::spawn(async move {
        while let Some(mut ev) = rx.recv().await {
            let Some(hook) = policy.load().policy.settings.approvals.webhook.clone() else { continue };
            if let Some(o) = ev.as_object_mut() {
                o.entry("time").or_insert_with(|| jiff::Timestamp::now().to_string().into());
            }
            let body = ev.to_string();
            let mut result = Err(String::new());
            match client(&hook).await {
                Ok(c) => {
                    for delay in [Duration::ZERO, Duration::from_millis(500), Duration::from_secs(1)] {
                        tokio::time::sleep(delay).await;
                        result = match tokio::time::timeout(TIMEOUT, post(&c, &hook.url, &body)).await {
                            Ok(r) => r,
                            Err(_) => Err("timed out".into()),
                        };
                        if result.is_ok() {
                            break;
                        }
                    }
                }
                Err(e) => result = Err(e),
            }
            match result {
                Ok(()) => {
                    if let Some(m) = &metrics {
                        m.webhook("sent");
                    }
                }
                Err(e) => {
                    tracing::warn!(webhook = %hook.origin(), error = %e, "webhook event not delivered");
                    if let Some(m) = &metrics {
                        m.webhook("failed");
                    }
                }
            }
        }
    });
    Events { tx }
}

/// The HTTP client for `hook` (its `ca_file` read now: a rotated CA is picked up).
async fn client(hook: &Webhook) -> Result<reqwest::Client, String> {
    let ca = match hook.ca_file.clone() {
        Some(f) => Some(
            tokio::task::spawn_blocking(move || std::fs::read(f))
                .await
                .map_err(|_| "reading `ca_file` failed".to_string())?
                .map_err(|e| format!("`ca_file` unreadable: {e}"))?,
        ),
        None => None,
    };
    crate::oauth::http_client(TIMEOUT, ca.as_deref())
}

/// POST `body` to `url`; `Ok` on a 2xx answer.
async fn post(client: &reqwest::Client, url: &reqwest::Url, body: &str) -> Result<(), String> {
    let resp = client
        .post(url.clone())
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(crate::oauth::error_chain)?;
    let code = resp.status().as_u16();
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("answered {code}"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests may panic")]
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://hooks.ops.svc:8080/hallpass?x=1").unwrap();
        assert_eq!(
            (u.host_str(), u.port(), u.path(), u.query()),
            (Some("hooks.ops.svc"), Some(8080), "/hallpass", Some("x=1"))
        );
        let hook = Webhook { url: parse_url("https://hooks.slack.com/services/T0/B0/SECRET").unwrap(), ca_file: None };
        assert_eq!(hook.origin(), "https://hooks.slack.com", "logs never show the path");
        assert!(parse_url("http://user:pw@relay/").is_err());
        assert!(parse_url("ftp://relay/").is_err());
        assert!(parse_url("http://").is_err());
        assert!(parse_url("https://relay/#f").is_err());
    }
}
