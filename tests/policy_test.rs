//! `hallpass test` (agent-controls.md §9), the real binary: the shipped example suite passes
//! with full rule coverage; a broken expectation fails (exit 1) with the traced explanation;
//! an invalid suite exits 2; `--coverage-min` and `--junit` do what they say; the identity
//! sugar reaches the policy's header, principal and JWT sources.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "tests may panic")]

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn hallpass_test(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hallpass")).arg("test").args(args).current_dir(ROOT).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hallpass-ptest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_example_suite_passes_with_full_coverage() {
    let (code, out) = hallpass_test(&["config", "--coverage-min", "100"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("config/policy_test.yaml: ") && out.contains("rule coverage 20/20 (100.0%)"), "{out}");
    let last = out.lines().last().unwrap();
    let passed: usize = last.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 60 && last.ends_with(" passed, 0 failed"), "{last}");
}

#[test]
fn a_broken_expectation_fails_with_the_explanation() {
    let d = dir("broken");
    let policy = Path::new(ROOT).join("config/policy.yaml");
    std::fs::write(
        d.join("mail_test.yaml"),
        format!(
            r#"policy: {}
now: "2026-11-23T12:00:00Z"
cases:
  - name: deleting mail is allowed (it is not)
    request: {{method: DELETE, host: mail.example.com, path: /v1/users/alice/messages/m1, agent: triage-bot, on_behalf_of: alice}}
    expect: {{decision: allow, rule: mail-read}}
  - name: reading mail is allowed
    request: {{method: GET, host: mail.example.com, path: /v1/users/alice/messages/m1, agent: triage-bot, on_behalf_of: alice}}
    expect: {{decision: allow, rule: mail-read}}
  - name: a 429 says so
    request: {{method: GET, host: mail.example.com, path: /v1/users/alice/messages/m1, agent: triage-bot, on_behalf_of: alice}}
    expect: {{decision: deny, rule: mail-read, status: 429}}
"#,
            policy.display()
        ),
    )
    .unwrap();
    let junit = d.join("junit.xml");
    let (code, out) = hallpass_test(&[d.to_str().unwrap(), "--junit", junit.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL ") && out.contains("/ deleting mail is allowed (it is not)"), "{out}");
    assert!(out.contains("want allow by `mail-read`, got deny by `no-deletes`"), "{out}");
    // The explanation is `hallpass check`'s: the deciding rule and why the others did not.
    assert!(out.contains("why (hallpass check):") && out.contains("no-deletes") && out.contains("decided"), "{out}");
    assert!(out.contains("mail-read                 allow  not matched: `methods`"), "{out}");
    assert!(out.contains("want deny by `mail-read`, got allow by `mail-read`"), "{out}");
    assert!(out.lines().last().unwrap() == "1 passed, 2 failed", "{out}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(r#"tests="3" failures="2""#) && xml.contains("<failure message=\"want allow by `mail-read`"),
        "{xml}"
    );
    assert!(xml.contains(r#"name="reading mail is allowed"/>"#), "{xml}");

    // Coverage below the minimum fails a suite whose cases pass.
    std::fs::write(
        d.join("mail_test.yaml"),
        format!(
            "policy: {}\nnow: \"2026-11-23T12:00:00Z\"\ncases:\n  - name: read\n    request: {{method: GET, host: mail.example.com, path: /v1/users/alice/messages/m1, agent: triage-bot, on_behalf_of: alice}}\n    expect: {{decision: allow, rule: mail-read}}\n",
            policy.display()
        ),
    )
    .unwrap();
    // A deny expected without its rule that only the default gives: passes, with a warning.
    std::fs::write(
        d.join("vague_test.yaml"),
        format!(
            "policy: {}\nnow: \"2026-11-23T12:00:00Z\"\ncases:\n  - name: vague\n    request: {{method: GET, path: /v1/users/alice/messages/m1, agent: triage-bot}}\n    expect: {{decision: deny}}\n",
            policy.display()
        ),
    )
    .unwrap();
    let (code, out) = hallpass_test(&[d.join("vague_test.yaml").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warn ") && out.contains("/ vague: passed on the default deny"), "{out}");
    std::fs::remove_file(d.join("vague_test.yaml")).unwrap();
    let (code, out) = hallpass_test(&[d.to_str().unwrap(), "--coverage-min", "50"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("rule coverage 1/20 (5.0%)") && out.contains("below --coverage-min 50%"), "{out}");
    assert!(out.contains("no case decided: no-deletes,"), "{out}");
    assert_eq!(hallpass_test(&[d.to_str().unwrap()]).0, 0, "without a minimum it passes");
}

#[test]
fn invalid_suites_exit_2() {
    let d = dir("invalid");
    for (name, text, why) in [
        ("yaml_test.yaml", "cases: [", "not a test suite"),
        ("nopolicy_test.yaml", "cases: []\n", "give `policy`"),
        ("badpolicy_test.yaml", "policy_yaml: \"version: 2\"\ncases: []\n", "does not load"),
        ("badnow_test.yaml", "policy_yaml: \"version: 1\"\nnow: yesterday\ncases: []\n", "RFC 3339"),
        (
            "unknownkey_test.yaml",
            "policy_yaml: \"version: 1\"\ncases:\n  - name: x\n    request: {path: /, agentt: a}\n    expect: {decision: allow}\n",
            "agentt",
        ),
        (
            "noidentity_test.yaml",
            "policy_yaml: \"version: 1\"\ncases:\n  - name: x\n    request: {path: /, on_behalf_of: alice}\n    expect: {decision: deny}\n",
            "no `identity.on_behalf_of` source",
        ),
        (
            "collide_test.yaml",
            "policy_yaml: \"version: 1\\nidentity: {agent: [{header: x-agent-id}]}\"\ncases:\n  - name: x\n    request: {path: /, agent: a, headers: {X-Agent-Id: b}}\n    expect: {decision: deny}\n",
            "both set `x-agent-id`",
        ),
        (
            "quarantine_test.yaml",
            "policy_yaml: \"version: 1\"\nquarantine: [{agent: a, untill: 2026-01-01T00:00:00Z}]\ncases: []\n",
            "quarantine",
        ),
        (
            "grant_test.yaml",
            "policy_yaml: \"version: 1\"\ngrants: [{agent: a, rules: [nope]}]\ncases: []\n",
            "not a require_approval rule",
        ),
    ] {
        let f = d.join(name);
        std::fs::write(&f, text).unwrap();
        let (code, out) = hallpass_test(&[f.to_str().unwrap()]);
        assert_eq!(code, 2, "{name}: {out}");
        assert!(out.contains("INVALID") && out.contains(why), "{name}: {out}");
    }
    let (code, out) = hallpass_test(&[dir("empty").to_str().unwrap()]);
    assert_eq!(code, 2, "no suites found: {out}");
    // Invalid suites are in the JUnit report too (a CI report is never greener than the run).
    let junit = d.join("report.xml");
    let (code, _) = hallpass_test(&[d.to_str().unwrap(), "--junit", junit.to_str().unwrap()]);
    assert_eq!(code, 2);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<error message=").count(), 9, "{xml}");
}

/// `agent:` and `on_behalf_of:` go where the policy's first identity source reads them: a
/// header, the mTLS principal, a JWT claim (nested).
#[test]
fn identity_sugar_reaches_each_kind_of_source() {
    let d = dir("sugar");
    for (identity, agent_rule) in [
        ("agent: [{header: x-agent-id}]\n    on_behalf_of: [{header: x-user}]", "header"),
        ("agent: [principal]\n    on_behalf_of: [{jwt: {provider: idp, claim: act.sub}}]", "principal"),
        (
            "agent: [{jwt: {provider: idp, claim: azp}}]\n    on_behalf_of: [{jwt: {provider: idp, claim: act.sub}}]",
            "jwt",
        ),
    ] {
        let suite = format!(
            r#"policy_yaml: |
  version: 1
  identity:
    {identity}
  rules:
    - id: bot-for-alice
      effect: allow
      agents: [bot]
      paths: ["/{{user}}/x"]
      captures: {{ user: {{ equals: {{ ref: on_behalf_of }} }} }}
now: "2026-11-23T12:00:00Z"
cases:
  - name: bot for alice
    request: {{path: /alice/x, agent: bot, on_behalf_of: alice}}
    expect: {{decision: allow, rule: bot-for-alice}}
  - name: bot for mallory
    request: {{path: /alice/x, agent: bot, on_behalf_of: mallory}}
    expect: {{decision: deny, rule: default}}
  - name: nobody
    request: {{path: /alice/x}}
    expect: {{decision: deny, rule: default}}
"#
        );
        let f = d.join(format!("{agent_rule}_test.yaml"));
        std::fs::write(&f, suite).unwrap();
        let (code, out) = hallpass_test(&[f.to_str().unwrap()]);
        assert_eq!(code, 0, "{agent_rule}: {out}");
        assert!(out.ends_with("3 passed, 0 failed\n"), "{agent_rule}: {out}");
    }
}
