//! The shipped monitoring: alert rules pass `promtool check rules` and their unit tests, every
//! PromQL expression of the Grafana dashboard parses, and every metric they name exists.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

mod common;

use common::ready;
use std::path::Path;
use std::process::Command;

use hallpass::request::build::CheckRequestBuilder;
use hallpass::telemetry::Metrics;
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/monitoring");

fn promtool(args: &[&str]) {
    let Some(p) = common::tool("promtool") else { return };
    let out = Command::new(p).args(args).current_dir(DIR).output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{report}");
}

fn dashboard_exprs() -> Vec<String> {
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(DIR).join("hallpass-dashboard.json")).unwrap())
            .unwrap();
    let mut exprs = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for a in d["annotations"]["list"].as_array().unwrap() {
        exprs.push(a["expr"].as_str().unwrap().to_string());
    }
    assert!(exprs.len() >= 15);
    exprs
}

/// Grafana variables replaced by what they expand to, so promtool can parse the PromQL.
fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$pod", ".*")
}

#[test]
fn alert_rules_are_valid_and_fire_when_they_should() {
    promtool(&["check", "rules", "hallpass-alerts.yaml"]);
    promtool(&["test", "rules", "hallpass-alerts.test.yaml"]);
}

#[test]
fn dashboard_promql_parses() {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(&expand(e)).unwrap()
        ));
    }
    let dir = std::env::temp_dir().join(format!("hallpass-dash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("dashboard-rules.yaml");
    std::fs::write(&f, rules).unwrap();
    promtool(&["check", "rules", f.to_str().unwrap()]);
}

#[test]
fn every_metric_named_in_dashboard_and_alerts_is_exported() {
    let m = Metrics::new().unwrap();
    // One decision of each kind so every labelled series exists.
    let a = hallpass::service::Authz::from_policy(
        hallpass::policy::Policy::from_yaml("version: 1\nrules: []\n", "p.yaml").unwrap(),
    );
    let c = ready(a.decide(CheckRequestBuilder::new("GET", "/x").build(), jiff::Timestamp::now()));
    m.record(&c.decision, 1e-6);
    m.policy_loaded("abc", 0, jiff::Timestamp::now());
    // `hallpass_limit_events_total` has a series only once a limit refused something.
    m.limit(&hallpass::limits::LimitHit {
        rule: std::sync::Arc::from("r"),
        index: 0,
        kind: hallpass::limits::HitKind::Limited { retry_after_s: 1 },
        quota: 1,
        window_s: 60,
        per_agent: true,
    });
    // `hallpass_credential_token_requests_total` has a series once an OAuth2 credential asked.
    m.token_request("crm", "ok");
    let expo = m.render();
    let alerts = std::fs::read_to_string(Path::new(DIR).join("hallpass-alerts.yaml")).unwrap();
    let mut text = dashboard_exprs().join("\n");
    text.push_str(&alerts);
    let re = regex::Regex::new(r"\b(hallpass_[a-z_]+|process_[a-z_]+)\b").unwrap();
    let mut missing = Vec::new();
    for name in re.find_iter(&text).map(|m| m.as_str()).collect::<std::collections::BTreeSet<_>>() {
        if !expo.lines().any(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "named but not exported: {missing:?}");
}
