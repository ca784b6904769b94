//! Prometheus metrics of the decision path (a first set; see docs/metrics.md).
//!
//! Handles are created once at startup; recording a decision is a few atomic adds.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::policy::Decision;

/// The metrics hallpass exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    decisions: IntCounterVec,
    check_seconds: HistogramVec,
    /// Number of rules in the live policy.
    pub policy_rules: IntGauge,
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
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(check_seconds.clone()))?;
        registry.register(Box::new(policy_rules.clone()))?;
        Ok(Metrics { registry, decisions, check_seconds, policy_rules })
    }

    /// Count one decision and its latency.
    pub fn record(&self, d: &Decision, seconds: f64) {
        let decision = if d.allowed { "allow" } else { "deny" };
        self.decisions.with_label_values(&[decision, d.rule.as_str(), if d.dry_run { "true" } else { "false" }]).inc();
        self.check_seconds.with_label_values(&[decision]).observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
