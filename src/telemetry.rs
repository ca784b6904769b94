//! Prometheus metrics (see docs/operations.md). Handles are created once at startup;
//! recording a decision is a few atomic adds, never a lock on the Check path.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter as Counter};

use crate::policy::compile::FnvBuild;
use crate::policy::Decision;

/// `hallpass_decisions_total` handles of one rule, resolved on first use: [allow, deny,
/// allow in dry run, deny in dry run] (a series exists only once it has been counted).
type RuleCounters = [Option<Counter>; 4];

/// Handles resolved once (at startup, or at a policy load for the rule ids), so recording a
/// Check is atomic adds and one lock-free map lookup: never a lock on the Check path.
#[derive(Clone)]
struct Handles {
    /// Per rule id; copied and swapped when a rule is first counted in a slot (rare), read
    /// without a lock by every Check.
    by_rule: Arc<ArcSwap<HashMap<Box<str>, RuleCounters, FnvBuild>>>,
    /// `hallpass_check_duration_seconds` for allow, deny.
    seconds: [Histogram; 2],
    /// `hallpass_cache_lookups_total` for hit, miss.
    cache: [Counter; 2],
    /// `hallpass_request_bodies_total` by outcome, in `BODY_OUTCOMES` order.
    bodies: Vec<Counter>,
    /// `hallpass_invalid_path_total` by reason, in `INVALID_PATH_REASONS` order.
    invalid_paths: Vec<Counter>,
}

/// The metrics hallpass exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    decisions: IntCounterVec,
    policy_rules: IntGauge,
    policy_info: IntGaugeVec,
    last_reload: Gauge,
    reloads: IntCounterVec,
    /// Entries in the decision cache (set at scrape time).
    pub cache_entries: IntGauge,
    bodies: IntCounterVec,
    invalid_paths: IntCounterVec,
    log_dropped: IntCounter,
    handles: Handles,
    limits: IntCounterVec,
    /// Metrics of the state store and quarantines.
    pub state: StateMetrics,
    /// `hallpass_credential_token_requests_total{credential,result}`.
    token_requests: IntCounterVec,
    /// `hallpass_input_records_dropped_total`.
    inputs_dropped: IntCounter,
}

/// Metrics of the state store (agent-controls.md §7) and of quarantines (§5). On the Check
/// path only for a request whose allowing rule has limits (its one store operation), and for
/// a refused limit (`hallpass_limit_events_total`): a labelled-vector lookup each.
#[derive(Clone)]
pub struct StateMetrics {
    ops: IntCounterVec,
    seconds: HistogramVec,
    up: IntGauge,
    quarantined: IntGauge,
    quarantines: IntCounterVec,
    deny_dropped: IntCounter,
    pending: IntGauge,
    grants: IntGaugeVec,
    approvals: IntCounterVec,
    webhook: IntCounterVec,
}

/// Store operations (label `op`).
pub const STATE_OPS: [&str; 12] = [
    "take",
    "count_deny",
    "quarantine",
    "lift",
    "quarantines",
    "hold",
    "pending",
    "approve",
    "deny_approval",
    "add_grant",
    "revoke",
    "grants",
];
/// Approval events (label `event` of `hallpass_approvals_total`).
pub const APPROVAL_EVENTS: [&str; 7] = ["held", "requested", "approved", "denied", "expired", "lifted", "revoked"];

impl StateMetrics {
    fn new(registry: &Registry) -> Result<StateMetrics, prometheus::Error> {
        let ops = IntCounterVec::new(
            Opts::new(
                "hallpass_state_operations_total",
                "State store operations by operation and result (ok, error, timeout).",
            ),
            &["op", "result"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new("hallpass_state_operation_duration_seconds", "State store operation latency.")
                .buckets(vec![1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1]),
            &["op"],
        )?;
        let up = IntGauge::new("hallpass_state_store_up", "1 when the state store answered its last operation.")?;
        let quarantined =
            IntGauge::new("hallpass_quarantined_agents", "Agents quarantined now (as last read from the store).")?;
        let quarantines = IntCounterVec::new(
            Opts::new("hallpass_quarantines_total", "Quarantines set by this replica, by source (auto, manual)."),
            &["source"],
        )?;
        let deny_dropped = IntCounter::new(
            "hallpass_deny_events_dropped_total",
            "Denies not counted toward automatic quarantine because the queue to the store was full.",
        )?;
        for op in STATE_OPS {
            for r in ["ok", "error", "timeout"] {
                ops.with_label_values(&[op, r]);
            }
            seconds.with_label_values(&[op]);
        }
        for src in ["auto", "manual"] {
            quarantines.with_label_values(&[src]);
        }
        let pending = IntGauge::new(
            "hallpass_approvals_pending",
            "Pending approvals waiting for a human (as last read from the store).",
        )?;
        let grants = IntGaugeVec::new(
            Opts::new(
                "hallpass_grants_in_force",
                "Grants in force by kind (approval, task), as last read from the store.",
            ),
            &["kind"],
        )?;
        let approvals = IntCounterVec::new(
            Opts::new(
                "hallpass_approvals_total",
                "Approval events on this replica: held (a request held), requested (a new pending approval), \
                 approved, denied (by a human), expired (a pending approval ended unanswered, counted by \
                 the replica that removed it), lifted (a grant let a held request through), revoked.",
            ),
            &["event"],
        )?;
        let webhook = IntCounterVec::new(
            Opts::new(
                "hallpass_webhook_events_total",
                "Webhook events by result: sent, failed (no 2xx after retries), dropped (queue full).",
            ),
            &["result"],
        )?;
        for e in APPROVAL_EVENTS {
            approvals.with_label_values(&[e]);
        }
        for k in ["approval", "task"] {
            grants.with_label_values(&[k]);
        }
        for r in ["sent", "failed", "dropped"] {
            webhook.with_label_values(&[r]);
        }
        up.set(1);
        registry.register(Box::new(ops.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(quarantined.clone()))?;
        registry.register(Box::new(quarantines.clone()))?;
        registry.register(Box::new(deny_dropped.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(grants.clone()))?;
        registry.register(Box::new(approvals.clone()))?;
        registry.register(Box::new(webhook.clone()))?;
        Ok(StateMetrics {
            ops,
            seconds,
            up,
            quarantined,
            quarantines,
            deny_dropped,
            pending,
            grants,
            approvals,
            webhook,
        })
    }

    /// One store operation.
    pub fn operation(&self, op: &str, err: Option<&crate::state::StoreError>, secs: f64) {
        let result = match err {
            None => "ok",
            Some(crate::state::StoreError::Timeout) => "timeout",
            Some(_) => "error",
        };
        self.ops.with_label_values(&[op, result]).inc();
        self.seconds.with_label_values(&[op]).observe(secs);
    }

    /// Whether the store answered its last operation.
    pub fn store_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    /// Agents quarantined now.
    pub fn quarantined_agents(&self, n: usize) {
        self.quarantined.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A quarantine set here (`auto` or `manual`).
    pub fn quarantined(&self, source: &str) {
        self.quarantines.with_label_values(&[source]).inc();
    }

    /// A deny event dropped.
    pub fn deny_event_dropped(&self) {
        self.deny_dropped.inc();
    }

    /// Pending approvals now.
    pub fn pending_approvals(&self, n: usize) {
        self.pending.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Grants in force now, by kind.
    pub fn grants_in_force(&self, approval: usize, task: usize) {
        self.grants.with_label_values(&["approval"]).set(i64::try_from(approval).unwrap_or(i64::MAX));
        self.grants.with_label_values(&["task"]).set(i64::try_from(task).unwrap_or(i64::MAX));
    }

    /// One approval event (one of [`APPROVAL_EVENTS`]).
    pub fn approval_event(&self, event: &str) {
        self.approvals.with_label_values(&[event]).inc();
    }

    /// One webhook event's fate: sent, failed or dropped.
    pub fn webhook(&self, result: &str) {
        self.webhook.with_label_values(&[result]).inc();
    }
}

/// Body outcomes, all pre-registered so dashboards see zeros.
pub const BODY_OUTCOMES: [&str; 10] =
    ["json", "form", "absent", "not_read", "truncated", "other_type", "unparseable", "charset", "encoded", "ambiguous"];
/// `invalid_path` reasons (bounded; see `request::PathError::label`).
pub const INVALID_PATH_REASONS: [&str; 10] = [
    "empty",
    "not_absolute",
    "encoded_slash",
    "backslash",
    "bad_escape",
    "control_char",
    "bad_utf8",
    "above_root",
    "semicolon",
    "dot_segment_param",
];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Register every metric in a fresh registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let decisions = IntCounterVec::new(
            Opts::new(
                "hallpass_decisions_total",
                "Checks answered, by decision sent to Envoy, deciding rule and dry run.",
            ),
            &["decision", "rule", "dry_run"],
        )?;
        let check_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hallpass_check_duration_seconds",
                "Time to decide one Check, from request to response.",
            )
            .buckets(vec![1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3]),
            &["decision"],
        )?;
        let policy_rules = IntGauge::new("hallpass_policy_rules", "Rules in the policy in force.")?;
        let policy_info = IntGaugeVec::new(
            Opts::new("hallpass_policy_info", "The policy revision in force (value 1)."),
            &["revision"],
        )?;
        let last_reload = Gauge::new(
            "hallpass_policy_last_reload_success_timestamp_seconds",
            "Unix time the policy in force was loaded.",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "hallpass_policy_reloads_total",
                "Policy reload attempts by result (success, unchanged, failure).",
            ),
            &["result"],
        )?;
        let cache_lookups = IntCounterVec::new(
            Opts::new("hallpass_cache_lookups_total", "Decision cache lookups by result (hit, miss)."),
            &["result"],
        )?;
        let cache_entries = IntGauge::new("hallpass_cache_entries", "Entries in the decision cache.")?;
        let bodies = IntCounterVec::new(
            Opts::new(
                "hallpass_request_bodies_total",
                "Checks by how the body was read: json, form, absent, not_read, truncated, other_type, unparseable, charset, encoded, ambiguous.",
            ),
            &["outcome"],
        )?;
        let invalid_paths = IntCounterVec::new(
            Opts::new("hallpass_invalid_path_total", "Checks denied as invalid_path, by reason."),
            &["reason"],
        )?;
        let log_dropped = IntCounter::new(
            "hallpass_decision_log_dropped_total",
            "Decision records dropped because the log sink could not keep up.",
        )?;
        let build_info =
            IntGaugeVec::new(Opts::new("hallpass_build_info", "The running hallpass build (value 1)."), &["version"])?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(bodies.clone()))?;
        registry.register(Box::new(invalid_paths.clone()))?;
        registry.register(Box::new(log_dropped.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(ProcessCollector::new()?))?;
        for o in BODY_OUTCOMES {
            bodies.with_label_values(&[o]);
        }
        for r in INVALID_PATH_REASONS {
            invalid_paths.with_label_values(&[r]);
        }
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(check_seconds.clone()))?;
        registry.register(Box::new(policy_rules.clone()))?;
        registry.register(Box::new(policy_info.clone()))?;
        registry.register(Box::new(last_reload.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(cache_lookups.clone()))?;
        registry.register(Box::new(cache_entries.clone()))?;
        for r in ["success", "unchanged", "failure"] {
            reloads.with_label_values(&[r]);
        }
        for r in ["hit", "miss"] {
            cache_lookups.with_label_values(&[r]);
        }
        let limits = IntCounterVec::new(
            Opts::new(
                "hallpass_limit_events_total",
                "Limits that refused or could not decide, by rule and result (limited, unknown, store_error).",
            ),
            &["rule", "result"],
        )?;
        registry.register(Box::new(limits.clone()))?;
        let token_requests = IntCounterVec::new(
            Opts::new(
                "hallpass_credential_token_requests_total",
                "OAuth2 token requests by credential and result (ok, error); the token in force is used until it expires.",
            ),
            &["credential", "result"],
        )?;
        registry.register(Box::new(token_requests.clone()))?;
        let inputs_dropped = IntCounter::new(
            "hallpass_input_records_dropped_total",
            "Input records (decision_log.inputs: full) dropped because their queue was full.",
        )?;
        registry.register(Box::new(inputs_dropped.clone()))?;
        let state = StateMetrics::new(&registry)?;
        let handles = Handles {
            by_rule: Arc::new(ArcSwap::from_pointee(HashMap::default())),
            seconds: [check_seconds.with_label_values(&["allow"]), check_seconds.with_label_values(&["deny"])],
            cache: [cache_lookups.with_label_values(&["hit"]), cache_lookups.with_label_values(&["miss"])],
            bodies: BODY_OUTCOMES.iter().map(|o| bodies.with_label_values(&[o])).collect(),
            invalid_paths: INVALID_PATH_REASONS.iter().map(|r| invalid_paths.with_label_values(&[r])).collect(),
        };
        let m = Metrics {
            registry,
            decisions,
            policy_rules,
            policy_info,
            last_reload,
            reloads,
            cache_entries,
            bodies,
            invalid_paths,
            limits,
            state,
            token_requests,
            inputs_dropped,
            log_dropped,
            handles,
        };
        Ok(m)
    }

    /// The decision counter of a rule in a slot, resolved once and kept.
    fn decision_counter(&self, rule: &str, slot: usize) -> Option<Counter> {
        if let Some(c) = self.handles.by_rule.load().get(rule).and_then(|c| c.get(slot)).and_then(Option::clone) {
            return Some(c);
        }
        let decision = if slot.is_multiple_of(2) { "allow" } else { "deny" };
        let dry = if slot >= 2 { "true" } else { "false" };
        let counter = self.decisions.with_label_values(&[decision, rule, dry]);
        self.handles.by_rule.rcu(|map| {
            let mut map = HashMap::clone(map);
            let entry = map.entry(Box::from(rule)).or_insert_with(|| [None, None, None, None]);
            if let Some(s) = entry.get_mut(slot) {
                *s = Some(counter.clone());
            }
            map
        });
        Some(counter)
    }

    /// Count how a Check's body was read.
    pub fn body(&self, outcome: &str) {
        match BODY_OUTCOMES.iter().position(|o| *o == outcome).and_then(|i| self.handles.bodies.get(i)) {
            Some(c) => c.inc(),
            None => self.bodies.with_label_values(&[outcome]).inc(),
        }
    }

    /// Count an `invalid_path` denial.
    pub fn invalid_path(&self, reason: &str) {
        match INVALID_PATH_REASONS.iter().position(|r| *r == reason).and_then(|i| self.handles.invalid_paths.get(i)) {
            Some(c) => c.inc(),
            None => self.invalid_paths.with_label_values(&[reason]).inc(),
        }
    }

    /// One input record dropped (its queue was full).
    pub fn input_dropped(&self) {
        self.inputs_dropped.inc();
    }

    /// One OAuth2 token request of `credential`: `ok` or `error`.
    pub fn token_request(&self, credential: &str, result: &str) {
        self.token_requests.with_label_values(&[credential, result]).inc();
    }

    /// Count a dropped decision record.
    pub fn decision_log_dropped(&self) {
        self.log_dropped.inc();
    }

    /// Count one decision and its latency.
    pub fn record(&self, d: &Decision, seconds: f64) {
        let slot = usize::from(!d.allowed()) + 2 * usize::from(d.dry_run());
        if let Some(c) = self.decision_counter(d.rule.as_str(), slot) {
            c.inc();
        }
        if let Some(h) = self.handles.seconds.get(usize::from(!d.allowed())) {
            h.observe(seconds);
        }
    }

    /// A limit refused a request, or could not decide (its rule, and what happened).
    pub fn limit(&self, hit: &crate::limits::LimitHit) {
        self.limits.with_label_values(&[&hit.rule, hit.kind.label()]).inc();
    }

    /// Count a cache lookup.
    pub fn cache_lookup(&self, hit: bool) {
        if let Some(c) = self.handles.cache.get(usize::from(!hit)) {
            c.inc();
        }
    }

    /// A policy is in force.
    pub fn policy_loaded(&self, revision: &str, rules: usize, at: jiff::Timestamp) {
        self.policy_info.reset();
        self.policy_info.with_label_values(&[revision]).set(1);
        self.policy_rules.set(i64::try_from(rules).unwrap_or(i64::MAX));
        self.last_reload.set(at.as_millisecond() as f64 / 1000.0);
    }

    /// Count a reload attempt.
    pub fn reload(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Standard `process_*` metrics read from /proc at scrape time (Linux; absent elsewhere).
struct ProcessCollector {
    descs: Vec<Desc>,
    cpu: prometheus::Counter,
    rss: IntGauge,
    vsize: IntGauge,
    fds: IntGauge,
    start: Gauge,
    threads: IntGauge,
}

impl ProcessCollector {
    fn new() -> Result<ProcessCollector, prometheus::Error> {
        let cpu =
            prometheus::Counter::new("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.")?;
        let rss = IntGauge::new("process_resident_memory_bytes", "Resident memory size in bytes.")?;
        let vsize = IntGauge::new("process_virtual_memory_bytes", "Virtual memory size in bytes.")?;
        let fds = IntGauge::new("process_open_fds", "Number of open file descriptors.")?;
        let start = Gauge::new("process_start_time_seconds", "Start time of the process since unix epoch in seconds.")?;
        let threads = IntGauge::new("process_threads", "Number of OS threads in the process.")?;
        let mut descs = Vec::new();
        for c in [&cpu as &dyn Collector, &rss, &vsize, &fds, &start, &threads] {
            descs.extend(c.desc().into_iter().cloned());
        }
        Ok(ProcessCollector { descs, cpu, rss, vsize, fds, start, threads })
    }
}

/// Clock ticks per second in /proc (USER_HZ, fixed at 100 in the Linux ABI).
const USER_HZ: f64 = 100.0;

fn proc_stat() -> Option<Vec<String>> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(String::from).collect())
}

fn boot_time() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    s.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Fields after the command: state is index 0, so field N of proc(5) is index N-3.
        if let Some(f) = proc_stat() {
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
            if let (Some(u), Some(s)) = (num(11), num(12)) {
                let total = (u + s) / USER_HZ;
                let cur = self.cpu.get();
                if total > cur {
                    self.cpu.inc_by(total - cur);
                }
            }
            if let Some(t) = num(17) {
                self.threads.set(t as i64);
            }
            if let (Some(start_ticks), Some(btime)) = (num(19), boot_time()) {
                self.start.set(btime + start_ticks / USER_HZ);
            }
            if let Some(v) = num(20) {
                self.vsize.set(v as i64);
            }
        }
        // VmRSS is in kB, independent of the page size.
        if let Some(kb) = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        }) {
            self.rss.set(kb * 1024);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(dir.count() as i64);
        }
        let mut out = Vec::new();
        for c in [&self.cpu as &dyn Collector, &self.rss, &self.vsize, &self.fds, &self.start, &self.threads] {
            out.extend(c.collect());
        }
        out
    }
}
