//! The webhook (agent-controls.md §3): `{"type": "approval.pending" | "agent.quarantined", …}`
//! POSTed to `settings.approvals.webhook.url` of the policy in force, from a bounded queue
//! that never delays a Check (a full queue drops the event and counts it).
//!
//! One worker sends the events in order, each with a 5 s deadline and up to three attempts
//! (0.5 s, then 1 s apart); the receiver must answer 2xx. Plain `http://` only: hallpass has
//! no TLS client yet, so point the URL at an in-cluster receiver or relay (a Slack or Teams
//! bridge). The body is JSON with `type`, `time` and the event's object; it carries what an
//! approver sees in the console (arguments redacted per `settings.approvals.redact`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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

/// A webhook URL: authority (`host:port`) and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port`.
    pub authority: String,
    /// The `Host` header.
    pub host: String,
    /// Path and query.
    pub path: String,
}

/// Read a webhook URL (`http://host[:port][/path]`).
pub fn parse_url(u: &str) -> Result<Url, String> {
    let rest = match u.strip_prefix("http://") {
        Some(r) => r,
        None if u.starts_with("https://") => {
            return Err("https:// is not supported yet (hallpass has no TLS client): use an http:// receiver or relay \
                        inside the cluster"
                .into())
        }
        None => return Err("must be an http:// URL".into()),
    };
    let (auth, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("/")),
        None => (rest, "/"),
    };
    if auth.is_empty() || auth.contains('@') || auth.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("needs a host (and no user info)".into());
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the path may not contain spaces or control characters".into());
    }
    let authority = if auth.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !auth.ends_with(']') {
        auth.to_string()
    } else {
        format!("{auth}:80")
    };
    Ok(Url { authority, host: auth.to_string(), path: path.to_string() })
}

/// Start the worker; events go to the webhook of the policy in force when they are sent.
pub fn start(policy: PolicyHandle, metrics: Option<StateMetrics>) -> Events {
    let (tx, mut rx) = mpsc::channel::<serde_json::Value>(QUEUE);
    tokio::spawn(async move {
        while let Some(mut ev) = rx.recv().await {
            let Some(url) = policy.load().policy.settings.approvals.webhook.clone() else { continue };
            if let Some(o) = ev.as_object_mut() {
                o.entry("time").or_insert_with(|| jiff::Timestamp::now().to_string().into());
            }
            let body = ev.to_string();
            let mut result = Err(String::new());
            for delay in [Duration::ZERO, Duration::from_millis(500), Duration::from_secs(1)] {
                tokio::time::sleep(delay).await;
                result = match tokio::time::timeout(TIMEOUT, post(&url, &body)).await {
                    Ok(r) => r,
                    Err(_) => Err("timed out".into()),
                };
                if result.is_ok() {
                    break;
                }
            }
            match result {
                Ok(()) => {
                    if let Some(m) = &metrics {
                        m.webhook("sent");
                    }
                }
                Err(e) => {
                    tracing::warn!(url = %url, error = %e, "webhook event not delivered");
                    if let Some(m) = &metrics {
                        m.webhook("failed");
                    }
                }
            }
        }
    });
    Events { tx }
}

/// POST `body` to `url`; `Ok` on a 2xx answer.
async fn post(url: &str, body: &str) -> Result<(), String> {
    let u = parse_url(url)?;
    let mut s = TcpStream::connect(&u.authority).await.map_err(|e| format!("connect {}: {e}", u.authority))?;
    let req = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nuser-agent: hallpass\r\nconnection: close\r\n\r\n{body}",
        u.path,
        u.host,
        body.len()
    );
    s.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    // The status line is all that is read.
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n).unwrap_or(&[]));
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("malformed answer")?;
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
        assert_eq!(u.authority, "hooks.ops.svc:8080");
        assert_eq!(u.path, "/hallpass?x=1");
        assert_eq!(parse_url("http://relay").unwrap().authority, "relay:80");
        assert!(parse_url("https://hooks.slack.com/x").unwrap_err().contains("https"));
        assert!(parse_url("http://user:pw@relay/").is_err());
        assert!(parse_url("ftp://relay/").is_err());
        assert!(parse_url("http:///x").is_err());
    }
}
