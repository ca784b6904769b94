//! Prometheus metrics (see docs/operations.md). Handles are created once at startup;
//! recording a decision is a few atomic adds, never a lock on the Check path.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::policy::Decision;

/// The metrics hallpass exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    decisions: IntCounterVec,
    check_seconds: HistogramVec,
    policy_rules: IntGauge,
    policy_info: IntGaugeVec,
    last_reload: Gauge,
    reloads: IntCounterVec,
    cache_lookups: IntCounterVec,
    /// Entries in the decision cache (set at scrape time).
    pub cache_entries: IntGauge,
}

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
        Ok(Metrics {
            registry,
            decisions,
            check_seconds,
            policy_rules,
            policy_info,
            last_reload,
            reloads,
            cache_lookups,
            cache_entries,
        })
    }

    /// Count one decision and its latency.
    pub fn record(&self, d: &Decision, seconds: f64) {
        let decision = if d.allowed { "allow" } else { "deny" };
        self.decisions.with_label_values(&[decision, d.rule.as_str(), if d.dry_run { "true" } else { "false" }]).inc();
        self.check_seconds.with_label_values(&[decision]).observe(seconds);
    }

    /// Count a cache lookup.
    pub fn cache_lookup(&self, hit: bool) {
        self.cache_lookups.with_label_values(&[if hit { "hit" } else { "miss" }]).inc();
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
