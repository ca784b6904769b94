//! The table-driven policy corpus: every `tests/corpus/*.yaml` file holds one policy and
//! cases (request → expected decision, rule, dry run), decided through the same path a gRPC
//! Check takes (CheckRequest → normalize → evaluate → CheckResponse). `invalid_policies.yaml`
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

use common::ready;
use std::path::{Path, PathBuf};

use common::CorpusFile;
use envoy_types::ext_authz::v3::pb::HttpResponse;
use envoy_types::pb::google::protobuf::value::Kind;
use hallpass::policy::Policy;
use hallpass::service::Authz;
use serde::Deserialize;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn corpus_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n != "invalid_policies.yaml" && n != "valid_policies.yaml"
        })
        .collect();
    files.sort();
    files
}

fn meta_str(resp: &envoy_types::ext_authz::v3::pb::CheckResponse, key: &str) -> Option<String> {
    match &resp.dynamic_metadata.as_ref()?.fields.get(key)?.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        Some(Kind::BoolValue(b)) => Some(b.to_string()),
        _ => None,
    }
}

#[test]
fn corpus_decisions() {
    let files = corpus_files();
    assert!(!files.is_empty(), "no corpus files found");
    let mut failures = Vec::new();
    let mut total = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let corpus: CorpusFile =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: bad fixture file: {e}", file.display()));
        let (text, label) = match (&corpus.policy, &corpus.policy_file) {
            (Some(p), None) => (p.clone(), file.display().to_string()),
            (None, Some(f)) => {
                let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
                (std::fs::read_to_string(&path).unwrap(), path.display().to_string())
            }
            _ => panic!("{}: give exactly one of `policy` and `policy_file`", file.display()),
        };
        let policy = Policy::from_yaml(&text, &label)
            .unwrap_or_else(|e| panic!("{}: policy does not load:\n{e}", file.display()));
        let authz = Authz::from_policy(policy.clone());
        let fname = file.file_name().unwrap().to_string_lossy().to_string();
        for case in &corpus.cases {
            total += 1;
            let checked = ready(authz.decide(case.request.to_check_request(), case.request.now()));
            let (decision, resp) = (checked.decision, checked.response);
            let got_decision = if decision.allowed() { "allow" } else { "deny" };
            let got = (got_decision.to_string(), decision.rule.as_str().to_string(), decision.dry_run());
            let want = (case.expect.decision.clone(), case.expect.rule.clone(), case.expect.dry_run);
            if got != want {
                failures.push(format!(
                    "{fname} / {}: want {} by `{}`{}, got {} by `{}`{}",
                    case.name,
                    want.0,
                    want.1,
                    if want.2 { " (dry run)" } else { "" },
                    got.0,
                    got.1,
                    if got.2 { " (dry run)" } else { "" },
                ));
                continue;
            }
            if let Some(f) = deny_fields_disagree(&case.expect, &resp) {
                failures.push(format!("{fname} / {}: {f}", case.name));
            }
            // `hallpass check` explains with the same evaluation core (a tracer that goes on
            // through every rule): its decision must be the one Check made — before the state
            // stages (quarantine, limits), which explain does not run.
            let req = hallpass::request::Request::from_check_request(case.request.to_check_request()).unwrap();
            let (explained, traces) = hallpass::policy::explain(&policy, &req, case.request.now());
            // The holds stage (task grants, approvability) may change a held decision.
            let stateful = decision.limit.is_some()
                || decision.rule == hallpass::policy::eval::RuleId::Quarantined
                || decision.rule == hallpass::policy::eval::RuleId::CredentialUnavailable
                || !decision.holds.is_empty();
            // The holds stage names the approval (explain does not run it).
            let mut decision = decision;
            decision.approval = None;
            if stateful {
                if (decision.limit.is_some() || !decision.holds.is_empty()) && explained.rule != decision.rule {
                    failures
                        .push(format!("{fname} / {}: explain decided {explained:?}, Check {decision:?}", case.name));
                }
            } else if explained != decision {
                failures.push(format!("{fname} / {}: explain decided {explained:?}, Check {decision:?}", case.name));
            }
            if matches!(decision.rule, hallpass::policy::eval::RuleId::Rule(_))
                && !traces.iter().any(|t| t.applies && *t.rule == *decision.rule.as_str())
            {
                failures.push(format!("{fname} / {}: the deciding rule is not among the traces", case.name));
            }
            // The response must say the same thing to Envoy.
            let status = resp.status.as_ref().map(|s| s.code).unwrap_or(-1);
            let ok = match (&resp.http_response, decision.allowed()) {
                (Some(HttpResponse::OkResponse(_)), true) => status == 0,
                (Some(HttpResponse::DeniedResponse(_)), false) => status == 7,
                _ => false,
            };
            if !ok || meta_str(&resp, "rule").as_deref() != Some(decision.rule.as_str()) {
                failures.push(format!("{fname} / {}: CheckResponse disagrees with the decision", case.name));
            }
            if meta_str(&resp, "decision").as_deref() != Some(got_decision)
                || (meta_str(&resp, "dry_run").as_deref() == Some("true")) != decision.dry_run()
            {
                failures.push(format!("{fname} / {}: metadata disagrees with the decision", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {total} corpus cases failed:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{total} corpus cases in {} files passed", files.len());
}

/// The deny's status, body `error` and `retry-after`, where the case names them.
fn deny_fields_disagree(want: &common::Expect, resp: &envoy_types::ext_authz::v3::pb::CheckResponse) -> Option<String> {
    if want.status.is_none() && want.error.is_none() && want.retry_after.is_none() && want.approval.is_none() {
        return None;
    }
    let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response else {
        return Some("expected a denied response with status/error/retry-after".into());
    };
    let status = d.status.as_ref().map(|s| s.code);
    let body: serde_json::Value = serde_json::from_str(&d.body).unwrap_or_default();
    // A JSON-RPC answer (agent-controls §8) carries the deny body inside.
    let body = if body.get("jsonrpc").is_some() {
        body["result"]["_meta"]["dev.hallpass/decision"]
            .as_object()
            .or_else(|| body["error"]["data"].as_object())
            .map(|o| serde_json::Value::Object(o.clone()))
            .unwrap_or_default()
    } else {
        body
    };
    let retry = d
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "retry-after")
        .and_then(|h| h.value.parse::<u64>().ok());
    let mut bad = Vec::new();
    if let Some(s) = want.status {
        if status != Some(i32::from(s)) {
            bad.push(format!("status {status:?}, want {s}"));
        }
    }
    if let Some(e) = &want.error {
        if body["error"] != e.as_str() {
            bad.push(format!("error {}, want {e}", body["error"]));
        }
    }
    if let Some(r) = want.retry_after {
        // A 429 says it at the top of the body, a held request in its `approval`.
        let said =
            if body.get("approval").is_some() { &body["approval"]["retry_after_s"] } else { &body["retry_after_s"] };
        if retry != Some(r) || *said != r {
            bad.push(format!("retry-after {retry:?} / body {said}, want {r}"));
        }
    }
    if let Some(a) = &want.approval {
        let id = body["approval"]["id"].as_str().unwrap_or("");
        if body["approval"]["status"] != a.as_str() || !id.starts_with("ap_") || id.len() != 29 {
            bad.push(format!("approval {}, want status {a} and an ap_ id", body["approval"]));
        }
        if body["approval"]["expires_at"].as_str().is_none_or(|t| t.parse::<jiff::Timestamp>().is_err()) {
            bad.push(format!("approval expires_at {}", body["approval"]["expires_at"]));
        }
    }
    (!bad.is_empty()).then(|| bad.join("; "))
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
