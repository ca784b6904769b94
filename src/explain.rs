//! The `hallpass check` report: the decision, the deciding rule, and for every other rule
//! why it did not decide (the first part that did not match, or that was unknown).

use std::fmt::Write;

use crate::policy::condition::Tri;
use crate::policy::eval::{Identity, RuleTrace};
use crate::policy::{Decision, Effect, Policy};
use crate::response::deny_message;

/// Render a decision and its rule traces as text.
pub fn render_text(policy: &Policy, d: &Decision, ident: Identity<'_>, traces: &[RuleTrace]) -> String {
    let mut out = String::new();
    let decision = if d.allowed() { "allow" } else { "deny" };
    let _ = writeln!(out, "decision: {decision}");
    let _ = writeln!(out, "rule: {}", d.rule.as_str());
    if d.dry_run() {
        let _ = writeln!(out, "dry_run: true");
    }
    if !d.dry_run_rules.is_empty() {
        let ids: Vec<&str> = d.dry_run_rules.iter().map(|r| &**r).collect();
        let _ = writeln!(out, "dry_run_rules: {}", ids.join(","));
    }
    if !d.allowed() || d.policy_effect() == Effect::Deny {
        let _ = writeln!(out, "message: {}", deny_message(d));
    }
    let _ = writeln!(out, "agent: {}", ident.agent.unwrap_or("-"));
    let _ = writeln!(out, "on_behalf_of: {}", ident.on_behalf_of.unwrap_or("-"));
    if let Some(e) = d.path_error {
        let _ = writeln!(out, "path_error: {e}");
    }
    if let Some(p) = d.unknown {
        let _ = writeln!(out, "unknown: {} (the deciding deny rule matched on unknown)", p.as_str());
    }
    if !d.holds.is_empty() {
        let ids: Vec<&str> = d.holds.iter().map(|h| &*h.id).collect();
        let _ = writeln!(out, "holds: {} (held for a human's approval)", ids.join(","));
        if let Some(l) = &d.lifted {
            let then = match l.verdict {
                crate::policy::Verdict::Deny | crate::policy::Verdict::RateLimited | crate::policy::Verdict::Held => {
                    "deny"
                }
                _ => "allow",
            };
            let _ = writeln!(out, "once approved: {then} by {}", l.rule.as_str());
        }
    }
    if let Some(id) = d.approval.as_ref().and_then(|a| a.id.as_deref()) {
        let _ = writeln!(out, "approval_id: {id}");
    }
    if let Some((c, strip)) = injection(policy, d) {
        if let Some(c) = c {
            let route = c.route.as_deref().map(|r| format!(", only when Envoy routes it to `{r}`")).unwrap_or_default();
            let _ = writeln!(out, "credential: {} (sets `{}`, overwriting the agent's{route})", c.name, c.header);
        }
        if !strip.is_empty() {
            let _ = writeln!(out, "removes: {}", strip.join(","));
        }
    }
    if traces.is_empty() {
        return out;
    }
    let width = policy.rules.iter().map(|r| r.id.len()).max().unwrap_or(4);
    let _ = writeln!(out, "rules:");
    for t in traces {
        let status = if t.rule.as_ref() == d.rule.as_str() && t.applies {
            match (t.result.result, t.result.part) {
                (Tri::Unknown, Some(p)) => format!("decided: `{}` unknown (deny rules match on unknown)", p.as_str()),
                _ => "decided".to_string(),
            }
        } else {
            match (t.result.result, t.result.part, t.applies) {
                (Tri::True, _, _) => "matched".to_string(),
                (Tri::Unknown, Some(p), true) => {
                    format!("matched: `{}` unknown (deny rules match on unknown)", p.as_str())
                }
                (Tri::Unknown, Some(p), false) => {
                    format!("not matched: `{}` unknown (allow rules need true)", p.as_str())
                }
                (Tri::False, Some(p), _) => format!("not matched: `{}`", p.as_str()),
                _ => "not matched".to_string(),
            }
        };
        let element = t.element.map(|e| format!(" [element {e}]")).unwrap_or_default();
        let rule = policy.rule(&t.rule);
        let dry = if rule.is_some_and(|r| r.dry_run) { " (dry run)" } else { "" };
        let _ = writeln!(out, "  {:width$}  {:5}  {status}{dry}{element}", t.rule, t.effect.as_str());
    }
    out
}

/// What an allow changes in the upstream request: the allowing rule's credential (never its
/// token: `check` does not read it) and the headers removed.
fn injection<'p>(
    policy: &'p Policy,
    d: &Decision,
) -> Option<(Option<&'p crate::credentials::Credential>, Vec<&'p str>)> {
    if !d.allowed() {
        return None;
    }
    let rule = d.limited.iter().find_map(|by| policy.rules.get(by.rule).filter(|r| r.injects()))?;
    let c = rule.credential.and_then(|i| policy.credentials.get(i));
    Some((c, rule.strip_headers.iter().map(|h| &**h).collect()))
}

/// Render a decision and its rule traces as JSON.
pub fn render_json(policy: &Policy, d: &Decision, ident: Identity<'_>, traces: &[RuleTrace]) -> serde_json::Value {
    let inject = injection(policy, d);
    let rules: Vec<serde_json::Value> = traces
        .iter()
        .map(|t| {
            serde_json::json!({
                "rule": &*t.rule,
                "effect": t.effect.as_str(),
                "element": t.element,
                "result": match t.result.result { Tri::True => "true", Tri::False => "false", Tri::Unknown => "unknown" },
                "part": t.result.part.map(|p| p.as_str()),
                "applies": t.applies,
            })
        })
        .collect();
    serde_json::json!({
        "decision": if d.allowed() { "allow" } else { "deny" },
        "rule": d.rule.as_str(),
        "dry_run": d.dry_run(),
        "dry_run_rules": d.dry_run_rules.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "unknown": d.unknown.map(|p| p.as_str()),
        "message": if d.allowed() && !d.dry_run() { None } else { Some(deny_message(d)) },
        "agent": ident.agent,
        "on_behalf_of": ident.on_behalf_of,
        "holds": d.holds.iter().map(|h| h.id.to_string()).collect::<Vec<_>>(),
        "once_approved": d.lifted.as_ref().map(|l| serde_json::json!({
            "decision": if matches!(l.verdict, crate::policy::Verdict::Deny | crate::policy::Verdict::RateLimited | crate::policy::Verdict::Held) { "deny" } else { "allow" },
            "rule": l.rule.as_str(),
        })),
        "approval_id": d.approval.as_ref().and_then(|a| a.id.clone()),
        "credential": inject.as_ref().and_then(|(c, _)| c.map(|c| serde_json::json!({
            "name": &*c.name,
            "header": &*c.header,
            "route": c.route.as_deref(),
        }))),
        "removes": inject.as_ref().map(|(_, s)| s.clone()).unwrap_or_default(),
        "rules": rules,
    })
}
