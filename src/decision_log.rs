//! Decision records: one JSON object per Check, the audit trail of who did what and why it
//! was allowed (schema: docs/decision-log.md, `hallpass.decision/v1`).
//!
//! The Check path only hands a record to a bounded queue (`try_send`); a dedicated thread
//! serializes and writes. When the sink cannot keep up, records are dropped and counted — a
//! Check never waits on logging. Records never contain the body, header values other than
//! `x-request-id`, credentials or cookies; the query string only when asked for.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Serialize;

/// The schema id written in every record.
pub const SCHEMA: &str = "hallpass.decision/v1";

/// The MCP call a record is about.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct McpSummary {
    /// JSON-RPC `method` (of the first element, for a batch).
    pub method: Option<String>,
    /// `params.name` of a tools/call (of the first element, for a batch).
    pub tool: Option<String>,
    /// Number of elements, for a batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
}

/// One decision record.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// RFC 3339 time of the decision.
    pub time: String,
    /// The decision id (also in the response and the upstream header).
    pub decision_id: String,
    /// Envoy's `x-request-id`, to join with Envoy's access log.
    pub request_id: Option<String>,
    /// The agent, if identified.
    pub agent: Option<String>,
    /// The user the agent acts for, if known.
    pub on_behalf_of: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Normalized host.
    pub host: String,
    /// Normalized path (without query); null when the path was refused.
    pub path: Option<String>,
    /// Why the path was refused, for `invalid_path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_error: Option<String>,
    /// The decoded query parameters, only with `include_query`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<Vec<(String, String)>>,
    /// The MCP call, when the body was read and is JSON-RPC.
    pub mcp: Option<McpSummary>,
    /// What Envoy was told: `allow` or `deny`.
    pub decision: &'static str,
    /// What the policy decided before a global dry run.
    pub policy_effect: &'static str,
    /// The deciding rule.
    pub rule: String,
    /// The message returned to the caller, for denies.
    pub message: Option<String>,
    /// The part of the deciding rule that was unknown (a deny rule that matched on unknown):
    /// `body`, `mcp`, `methods`, `query`, `headers`, `hosts`, `captures`. Absent when the
    /// rule matched on what it tests, or no rule matched on unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<&'static str>,
    /// A dry run turned a deny into an allow.
    pub dry_run: bool,
    /// Per-rule dry-run deny rules that matched.
    pub dry_run_rules: Vec<String>,
    /// The policy revision that decided.
    pub policy_revision: String,
    /// Whether the decision came from the cache.
    pub cache_hit: bool,
    /// How the body was read: json, form, absent, not_read, truncated, other_type, unparseable.
    pub body: &'static str,
    /// Time to decide, in microseconds.
    pub latency_us: f64,
}

/// Where records go.
pub enum Sink {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Any writer (a file, or a test's).
    Writer(Box<dyn Write + Send>),
}

/// The sending side, cheap to clone into the service.
#[derive(Clone)]
pub struct DecisionLog {
    tx: SyncSender<DecisionRecord>,
    dropped: Arc<AtomicU64>,
    on_drop: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog").field("dropped", &self.dropped.load(Ordering::Relaxed)).finish()
    }
}

/// The writer thread; join it after the last [`DecisionLog`] is dropped to flush.
pub struct LogWriter {
    handle: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Wait for the writer to drain and flush (all senders must be gone).
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn write_loop(rx: Receiver<DecisionRecord>, sink: Sink) {
    let mut out: Box<dyn Write> = match sink {
        Sink::Stdout => Box::new(std::io::BufWriter::new(std::io::stdout())),
        Sink::Stderr => Box::new(std::io::BufWriter::new(std::io::stderr())),
        Sink::Writer(w) => Box::new(std::io::BufWriter::new(w)),
    };
    while let Ok(rec) = rx.recv() {
        let mut next = Some(rec);
        // Write what is queued, then flush once.
        while let Some(r) = next {
            if serde_json::to_writer(&mut out, &r).is_ok() {
                let _ = out.write_all(b"\n");
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

impl DecisionLog {
    /// Start a writer thread with a queue of `capacity` records. `on_drop` is called for
    /// every dropped record (to count it in metrics).
    pub fn start(
        sink: Sink,
        capacity: usize,
        on_drop: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> (DecisionLog, LogWriter) {
        let (tx, rx) = sync_channel(capacity.max(1));
        let handle =
            std::thread::Builder::new().name("hallpass-decision-log".into()).spawn(move || write_loop(rx, sink)).ok();
        (DecisionLog { tx, dropped: Arc::new(AtomicU64::new(0)), on_drop }, LogWriter { handle })
    }

    /// Queue a record; never blocks. Returns false if it was dropped.
    pub fn send(&self, rec: DecisionRecord) -> bool {
        match self.tx.try_send(rec) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(f) = &self.on_drop {
                    f();
                }
                false
            }
        }
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
