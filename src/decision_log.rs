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

use jiff::Timestamp;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::check::Checked;
use crate::policy::{Decision, Effect};
use crate::reload::LivePolicy;
use crate::request::{Parsed, PathError, Request};
use crate::response::deny_message;

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

/// One decision record: the parts of a Check, moved (not copied) off the Check path; the
/// writer thread formats them (schema `hallpass.decision/v1`, field order as documented).
#[derive(Debug)]
pub struct DecisionRecord {
    /// When the Check was decided.
    pub time: Timestamp,
    /// The decision id (also in the response and the upstream header).
    pub decision_id: String,
    /// What the record says about the request.
    pub summary: RequestSummary,
    /// The decision.
    pub decision: Decision,
    /// The policy that decided (its revision is written).
    pub live: Arc<LivePolicy>,
    /// Whether the decision came from the cache.
    pub cache_hit: bool,
    /// Time to decide, in microseconds.
    pub latency_us: f64,
    /// The credential injected (its name; never its value).
    pub credential: Option<Arc<str>>,
}

impl Serialize for DecisionRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = &self.decision;
        let r = &self.summary;
        let mut m = s.serialize_struct("DecisionRecord", 30)?;
        m.serialize_field("schema", SCHEMA)?;
        m.serialize_field("time", &Display(&self.time))?;
        m.serialize_field("decision_id", &self.decision_id)?;
        m.serialize_field("request_id", &r.request_id)?;
        m.serialize_field("agent", &r.agent)?;
        m.serialize_field("on_behalf_of", &r.on_behalf_of)?;
        m.serialize_field("method", &r.method)?;
        m.serialize_field("host", &r.host)?;
        m.serialize_field("path", &r.path)?;
        if let Some(e) = r.path_error {
            m.serialize_field("path_error", e.label())?;
        }
        if let Some(q) = &r.query {
            m.serialize_field("query", q)?;
        }
        m.serialize_field("mcp", &r.mcp)?;
        m.serialize_field("decision", if d.allowed() { "allow" } else { "deny" })?;
        m.serialize_field("policy_effect", d.policy_effect().as_str())?;
        m.serialize_field("rule", d.rule.as_str())?;
        let message = (d.policy_effect() == Effect::Deny).then(|| deny_message(d));
        m.serialize_field("message", &message)?;
        if let Some(p) = d.unknown {
            m.serialize_field("unknown", p.as_str())?;
        }
        if let Some(h) = &d.limit {
            let retry = match h.kind {
                crate::limits::HitKind::Limited { retry_after_s } => Some(retry_after_s),
                _ => None,
            };
            m.serialize_field(
                "limit",
                &serde_json::json!({
                    "rule": &*h.rule,
                    "index": h.index,
                    "result": h.kind.label(),
                    "rate": format!("{}/{}", h.quota, crate::limits::window_unit(h.window_s)),
                    "retry_after_s": retry,
                }),
            )?;
        }
        if let Some(c) = &self.credential {
            m.serialize_field("credential", &**c)?;
        }
        if !d.holds.is_empty() {
            let holds: Vec<&str> = d.holds.iter().map(|h| &*h.id).collect();
            m.serialize_field("holds", &holds)?;
        }
        if let Some(a) = &d.approval {
            if let Some(id) = &a.id {
                m.serialize_field("approval_id", id)?;
            }
            if let Some(st) = a.status.filter(|_| !d.allowed()) {
                m.serialize_field("approval_status", st.as_str())?;
            }
            if let Some(g) = &a.grant {
                m.serialize_field("grant", g)?;
            }
            if let Some(b) = &a.approved_by {
                m.serialize_field("approved_by", b)?;
            }
        }
        m.serialize_field("dry_run", &d.dry_run())?;
        let dry: Vec<&str> = d.dry_run_rules.iter().map(|r| &**r).collect();
        m.serialize_field("dry_run_rules", &dry)?;
        m.serialize_field("policy_revision", &self.live.revision)?;
        m.serialize_field("cache_hit", &self.cache_hit)?;
        m.serialize_field("body", r.body)?;
        m.serialize_field("latency_us", &self.latency_us)?;
        m.end()
    }
}

/// Serializes a value by its `Display`.
struct Display<'a, T>(&'a T);

impl<T: std::fmt::Display> Serialize for Display<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// What a decision record says about the request (moved out of the normalized request, not
/// copied). Never the body, never header values but `x-request-id`.
#[derive(Debug, Clone, Default)]
pub struct RequestSummary {
    /// Method.
    pub method: String,
    /// Normalized host.
    pub host: String,
    /// Normalized path, if valid.
    pub path: Option<String>,
    /// Why the path was refused.
    pub path_error: Option<PathError>,
    /// Decoded query parameters (only kept when the log asks for them).
    pub query: Option<Vec<(String, String)>>,
    /// Envoy's `x-request-id`.
    pub request_id: Option<String>,
    /// The MCP call, if the body was read and is JSON-RPC.
    pub mcp: Option<McpSummary>,
    /// How the body was read.
    pub body: &'static str,
    /// The agent, when known (kept only when there is a decision log).
    pub agent: Option<String>,
    /// The user the agent acts for, when known (kept only when there is a decision log).
    pub on_behalf_of: Option<String>,
}

fn mcp_summary(req: &Request) -> Option<McpSummary> {
    let Some(Parsed::Json(v)) = req.body.parsed_if_read() else { return None };
    let one = |o: &serde_json::Value| -> Option<McpSummary> {
        if o.get("jsonrpc").is_none_or(|j| j != "2.0") {
            return None;
        }
        let method = o.get("method").and_then(|m| m.as_str()).map(String::from);
        let tool = o.get("params").and_then(|p| p.get("name")).and_then(|n| n.as_str()).map(String::from);
        Some(McpSummary { method, tool, batch: None })
    };
    match v {
        serde_json::Value::Array(items) => {
            let mut first = one(items.first()?)?;
            first.batch = Some(items.len());
            Some(first)
        }
        o => one(o),
    }
}

impl RequestSummary {
    /// The summary of a Check that had no request to summarize.
    pub fn empty() -> RequestSummary {
        RequestSummary { body: "absent", ..Default::default() }
    }
}

/// Shape what a record says about a request, moving its strings (no copies).
pub fn summarize(req: Request, include_query: bool) -> RequestSummary {
    let mcp = mcp_summary(&req);
    let body = req.body.outcome();
    let request_id = req.headers.get("x-request-id").cloned();
    let (path, path_error) = match req.path {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e)),
    };
    RequestSummary {
        method: req.method,
        host: req.host,
        path,
        path_error,
        query: include_query.then_some(req.query),
        request_id,
        mcp,
        body,
        agent: None,
        on_behalf_of: None,
    }
}

impl DecisionRecord {
    /// The record of one Check (record shaping: moves its parts, formats nothing).
    pub fn new(c: Checked, latency: std::time::Duration) -> DecisionRecord {
        DecisionRecord {
            time: c.time,
            decision_id: c.decision_id,
            summary: c.summary,
            decision: c.decision,
            live: c.live,
            cache_hit: c.cache == crate::check::CacheLookup::Hit,
            latency_us: latency.as_secs_f64() * 1e6,
            credential: c.credential,
        }
    }
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

/// The sending side, cheap to clone into the service. Records are decision records, or any
/// other JSON lines written the same way (the inputs of `hallpass replay`).
pub struct DecisionLog<T = DecisionRecord> {
    tx: SyncSender<T>,
    dropped: Arc<AtomicU64>,
    on_drop: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl<T> Clone for DecisionLog<T> {
    fn clone(&self) -> Self {
        DecisionLog { tx: self.tx.clone(), dropped: Arc::clone(&self.dropped), on_drop: self.on_drop.clone() }
    }
}

impl<T> std::fmt::Debug for DecisionLog<T> {
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

/// How long the writer rests after writing a batch (10 ms: 200 records at 20 k Checks/s, far
/// below the queue's 8 192). Under load it is not parked on the
/// queue when records arrive, so a Check's `try_send` never has to wake it (a futex wake and
/// a context switch per record, on the core that serves Checks); it then takes everything
/// queued in one pass and one `write`. Idle, it parks until the next record.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Records formatted between two yields of the writer thread (~25 µs of work).
const YIELD_EVERY: u32 = 16;

fn write_loop<T: serde::Serialize>(rx: Receiver<T>, sink: Sink) {
    const BUF: usize = 64 * 1024;
    let mut out: Box<dyn Write> = match sink {
        Sink::Stdout => Box::new(std::io::BufWriter::with_capacity(BUF, std::io::stdout())),
        Sink::Stderr => Box::new(std::io::BufWriter::with_capacity(BUF, std::io::stderr())),
        Sink::Writer(w) => Box::new(std::io::BufWriter::with_capacity(BUF, w)),
    };
    while let Ok(rec) = rx.recv() {
        let mut next = Some(rec);
        // Write what is queued, then flush once. Every few records the thread yields: a batch
        // is formatted in slices between the Checks sharing its core, not in one burst that
        // every Check arriving meanwhile waits behind (the tail of a busy single core).
        let mut n = 0u32;
        while let Some(r) = next {
            if serde_json::to_writer(&mut out, &r).is_ok() {
                let _ = out.write_all(b"\n");
            }
            drop(r);
            n = n.wrapping_add(1);
            if n.is_multiple_of(YIELD_EVERY) {
                std::thread::yield_now();
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
        std::thread::sleep(BATCH_PAUSE);
    }
    let _ = out.flush();
}

impl<T: serde::Serialize + Send + 'static> DecisionLog<T> {
    /// Start a writer thread with a queue of `capacity` records. `on_drop` is called for
    /// every dropped record (to count it in metrics).
    pub fn start(
        sink: Sink,
        capacity: usize,
        on_drop: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> (DecisionLog<T>, LogWriter) {
        let (tx, rx) = sync_channel(capacity.max(1));
        let handle =
            std::thread::Builder::new().name("hallpass-decision-log".into()).spawn(move || write_loop(rx, sink)).ok();
        (DecisionLog { tx, dropped: Arc::new(AtomicU64::new(0)), on_drop }, LogWriter { handle })
    }

    /// Queue a record; never blocks. Returns false if it was dropped.
    pub fn send(&self, rec: T) -> bool {
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
