//! The table-driven policy corpus: every `tests/corpus/*_test.yaml` file is a policy test
//! suite in the format `hallpass test` runs (src/policy_test.rs: one policy, cases of request
//! → expected decision), decided through the same path a gRPC Check takes (CheckRequest →
//! normalize → evaluate → state stages → CheckResponse). `invalid_policies.yaml`
//! lists policies that must fail to load, with substrings the error must name;
//! `valid_policies.yaml` tricky policies that must load.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

mod common;

use std::path::{Path, PathBuf};

use envoy_types::ext_authz::v3::pb::HttpResponse;
use envoy_types::pb::google::protobuf::value::Kind;
use hallpass::policy::Policy;
use hallpass::policy_test;
use serde::Deserialize;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Every suite: `tests/corpus/*_test.yaml` and the shipped example's `config/policy_test.yaml`.
fn suites() -> Vec<PathBuf> {
    let mut files = policy_test::discover(&corpus_dir()).unwrap();
    files.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policy_test.yaml"));
    files
}

fn meta_str(resp: &envoy_types::ext_authz::v3::pb::CheckResponse, key: &str) -> Option<String> {
    match &resp.dynamic_metadata.as_ref()?.fields.get(key)?.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        Some(Kind::BoolValue(b)) => Some(b.to_string()),
        _ => None,
    }
}

/// Every case of every suite passes as `hallpass test` runs it (the same library), and
/// besides: `hallpass check`'s traced evaluator decides as the Check did, the deciding rule is
/// among the traces, and the CheckResponse and its metadata say the same as the decision.
#[test]
fn corpus_decisions() {
    let files = suites();
    assert!(files.len() > 20, "corpus suites not found: {files:?}");
    let mut failures = Vec::new();
    let mut total = 0;
    for file in &files {
        let loaded = policy_test::load(file).unwrap_or_else(|e| panic!("{e}"));
        let runs = policy_test::run(&loaded).unwrap_or_else(|e| panic!("{e}"));
        let policy = &loaded.policy;
        let fname = file.file_name().unwrap().to_string_lossy().to_string();
        for run in &runs {
            total += 1;
            if !run.passed() {
                failures.push(format!("{fname} / {}: {}", run.name, run.failures.join("; ")));
                continue;
            }
            let (decision, resp) = (run.checked.decision.clone(), &run.checked.response);
            let got_decision = if decision.allowed() { "allow" } else { "deny" };
            // `hallpass check` explains with the same evaluation core (a tracer that goes on
            // through every rule): its decision must be the one Check made — before the state
            // stages (quarantine, limits), which explain does not run.
            let req = hallpass::request::Request::from_check_request(run.request.clone()).unwrap();
            let (explained, traces) = hallpass::policy::explain(policy, &req, run.now);
            // The holds stage (task grants, approvability) may change a held decision; the
            // credentials stage a route-bound credential's.
            let stateful = decision.limit.is_some()
                || decision.rule == hallpass::policy::eval::RuleId::Quarantined
                || decision.rule == hallpass::policy::eval::RuleId::CredentialUnavailable
                || !decision.holds.is_empty()
                || (explained.allowed() && !decision.allowed() && explained.rule == decision.rule);
            // The holds stage names the approval (explain does not run it).
            let mut decision = decision;
            decision.approval = None;
            if stateful {
                // A task grant fixture may lift the holds: the Check is decided by the rule
                // explain names for "once approved".
                let lifted_to = explained.lifted.as_ref().map(|l| &l.rule);
                if (decision.limit.is_some() || !decision.holds.is_empty())
                    && explained.rule != decision.rule
                    && lifted_to != Some(&decision.rule)
                {
                    failures.push(format!("{fname} / {}: explain decided {explained:?}, Check {decision:?}", run.name));
                }
            } else if explained != decision {
                failures.push(format!("{fname} / {}: explain decided {explained:?}, Check {decision:?}", run.name));
            }
            if matches!(decision.rule, hallpass::policy::eval::RuleId::Rule(_))
                && !traces.iter().any(|t| t.applies && *t.rule == *decision.rule.as_str())
            {
                failures.push(format!("{fname} / {}: the deciding rule is not among the traces", run.name));
            }
            // The response must say the same thing to Envoy.
            let status = resp.status.as_ref().map(|s| s.code).unwrap_or(-1);
            let ok = match (&resp.http_response, decision.allowed()) {
                (Some(HttpResponse::OkResponse(_)), true) => status == 0,
                (Some(HttpResponse::DeniedResponse(_)), false) => status == 7,
                _ => false,
            };
            if !ok || meta_str(resp, "rule").as_deref() != Some(decision.rule.as_str()) {
                failures.push(format!("{fname} / {}: CheckResponse disagrees with the decision", run.name));
            }
            if meta_str(resp, "decision").as_deref() != Some(got_decision)
                || (meta_str(resp, "dry_run").as_deref() == Some("true")) != decision.dry_run()
            {
                failures.push(format!("{fname} / {}: metadata disagrees with the decision", run.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {total} corpus cases failed:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{total} corpus cases in {} suites passed", files.len());
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidCase {
    name: String,
    policy: String,
    error_contains: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidFile {
    cases: Vec<InvalidCase>,
}

#[test]
fn invalid_policies_are_refused_with_located_errors() {
    let path = corpus_dir().join("invalid_policies.yaml");
    let file: InvalidFile = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(!file.cases.is_empty());
    let mut failures = Vec::new();
    for case in &file.cases {
        match Policy::from_yaml(&case.policy, "policy.yaml") {
            Ok(_) => failures.push(format!("{}: loaded, but must be refused", case.name)),
            Err(e) => {
                let text = e.to_string();
                if !text.starts_with("policy.yaml") {
                    failures.push(format!("{}: error does not name the file: {text}", case.name));
                }
                for want in &case.error_contains {
                    if !text.contains(want.as_str()) {
                        failures.push(format!("{}: error lacks `{want}`: {text}", case.name));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} invalid-policy cases failed:\n{}", failures.len(), failures.join("\n"));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidCase {
    name: String,
    policy: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidFile {
    cases: Vec<ValidCase>,
}

#[test]
fn tricky_valid_policies_load() {
    let path = corpus_dir().join("valid_policies.yaml");
    let file: ValidFile = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let failures: Vec<String> = file
        .cases
        .iter()
        .filter_map(|c| Policy::from_yaml(&c.policy, "policy.yaml").err().map(|e| format!("{}: {e}", c.name)))
        .collect();
    assert!(failures.is_empty(), "valid policies refused:\n{}", failures.join("\n"));
}
