//! The same decisions in three engines: hallpass, Rego (regorus) and Cedar (cedar-policy).
//! Before measuring, every engine must return the expected verdict for every request.
//!
//! What each engine is given (documented in docs/benchmarks.md):
//! - hallpass: a normalized request (path, headers, body); the body is parsed on the first
//!   evaluation and reused, as the other engines receive parsed input.
//! - Rego: an `input` document with the path split into segments and the parsed body.
//! - Cedar: a prepared Request (principal, action per method, a resource the caller already
//!   routed from the path) with a context; Cedar does no path matching itself.
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, EntityUid, PolicySet, Request as CedarRequest,
};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use hallpass::policy::{evaluate, Policy};
use hallpass::request::build::CheckRequestBuilder;
use hallpass::request::Request;

const HALLPASS: &str = r#"
version: 1
identity: { agent: [principal, { header: x-agent-id }], on_behalf_of: [{ header: x-on-behalf-of }] }
groups:
  mail-agents: [triage-bot, summarizer]
  tool-agents: ["@mail-agents", research-bot]
rules:
  - { id: no-deletes, effect: deny, methods: [DELETE] }
  - { id: mcp-no-shell, effect: deny, paths: ["/mcp"], mcp: { tools: [run_shell] } }
  - id: mail-read
    effect: allow
    agents: ["@mail-agents"]
    methods: [GET]
    paths: ["/v1/users/{user}/messages/{id}"]
    captures: { user: { equals: { ref: on_behalf_of } } }
  - id: mcp-search
    effect: allow
    agents: ["@tool-agents"]
    methods: [POST]
    paths: ["/mcp"]
    mcp:
      tools: [search_docs, search_email]
      arguments: { any: [ { field: /limit, exists: false }, { field: /limit, lte: 20 } ] }
"#;

const REGO: &str = r#"
package hallpass
import rego.v1

default allow := false

mail_agents := {"triage-bot", "summarizer"}
tool_agents := mail_agents | {"research-bot"}

deny if input.method == "DELETE"
deny if {
  input.path == ["mcp"]
  input.body.method == "tools/call"
  input.body.params.name == "run_shell"
}

permit if {
  input.agent in mail_agents
  input.method == "GET"
  count(input.path) == 5
  input.path[0] == "v1"
  input.path[1] == "users"
  input.path[3] == "messages"
  input.path[2] == input.on_behalf_of
}
permit if {
  input.agent in tool_agents
  input.method == "POST"
  input.path == ["mcp"]
  input.body.method == "tools/call"
  input.body.params.name in {"search_docs", "search_email"}
  limit_ok
}
limit_ok if not input.body.params.arguments.limit
limit_ok if input.body.params.arguments.limit <= 20

allow if {
  permit
  not deny
}
"#;

const CEDAR: &str = r#"
forbid (principal, action == Action::"DELETE", resource);
forbid (principal, action, resource == Endpoint::"mcp")
  when { context.call && context.tool == "run_shell" };
permit (principal in Group::"mail-agents", action == Action::"GET", resource == Endpoint::"mail-message")
  when { context has on_behalf_of && context.user == context.on_behalf_of };
permit (principal in Group::"tool-agents", action == Action::"POST", resource == Endpoint::"mcp")
  when { context.call && ["search_docs", "search_email"].contains(context.tool) &&
         (!(context has limit) || context.limit <= 20) };
"#;

const CEDAR_ENTITIES: &str = r#"[
  {"uid": {"type": "Group", "id": "mail-agents"}, "attrs": {}, "parents": [{"type": "Group", "id": "tool-agents"}]},
  {"uid": {"type": "Group", "id": "tool-agents"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Agent", "id": "triage-bot"}, "attrs": {}, "parents": [{"type": "Group", "id": "mail-agents"}]},
  {"uid": {"type": "Agent", "id": "summarizer"}, "attrs": {}, "parents": [{"type": "Group", "id": "mail-agents"}]},
  {"uid": {"type": "Agent", "id": "research-bot"}, "attrs": {}, "parents": [{"type": "Group", "id": "tool-agents"}]}
]"#;

/// One request, as each engine sees it.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    agent: &'static str,
    obo: Option<&'static str>,
    body: Option<&'static str>,
    allow: bool,
}

fn cases() -> Vec<Case> {
    let call = |tool: &str, args: &str| -> &'static str {
        Box::leak(
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#
            )
            .into_boxed_str(),
        )
    };
    vec![
        Case {
            name: "read own mail",
            method: "GET",
            path: "/v1/users/alice/messages/m1",
            agent: "triage-bot",
            obo: Some("alice"),
            body: None,
            allow: true,
        },
        Case {
            name: "read other mail",
            method: "GET",
            path: "/v1/users/bob/messages/m1",
            agent: "triage-bot",
            obo: Some("alice"),
            body: None,
            allow: false,
        },
        Case {
            name: "delete",
            method: "DELETE",
            path: "/v1/users/alice/messages/m1",
            agent: "triage-bot",
            obo: Some("alice"),
            body: None,
            allow: false,
        },
        Case {
            name: "unknown agent",
            method: "GET",
            path: "/v1/users/alice/messages/m1",
            agent: "stranger",
            obo: Some("alice"),
            body: None,
            allow: false,
        },
        Case {
            name: "search, limit 5",
            method: "POST",
            path: "/mcp",
            agent: "research-bot",
            obo: None,
            body: Some(call("search_docs", r#"{"query":"refunds","limit":5}"#)),
            allow: true,
        },
        Case {
            name: "search, limit 50",
            method: "POST",
            path: "/mcp",
            agent: "research-bot",
            obo: None,
            body: Some(call("search_docs", r#"{"query":"refunds","limit":50}"#)),
            allow: false,
        },
        Case {
            name: "shell",
            method: "POST",
            path: "/mcp",
            agent: "research-bot",
            obo: None,
            body: Some(call("run_shell", r#"{"cmd":"id"}"#)),
            allow: false,
        },
        Case {
            name: "search, no limit, via group",
            method: "POST",
            path: "/mcp",
            agent: "triage-bot",
            obo: None,
            body: Some(call("search_email", r#"{"query":"invoice"}"#)),
            allow: true,
        },
    ]
}

fn hallpass_requests(cases: &[Case]) -> Vec<Request> {
    cases
        .iter()
        .map(|c| {
            let mut b = CheckRequestBuilder::new(c.method, c.path).header("x-agent-id", c.agent);
            if let Some(o) = c.obo {
                b = b.header("x-on-behalf-of", o);
            }
            if let Some(body) = c.body {
                b = b.header("content-type", "application/json").body(body);
            }
            Request::from_check_request(b.build()).unwrap()
        })
        .collect()
}

fn rego_inputs(cases: &[Case]) -> Vec<regorus::Value> {
    cases
        .iter()
        .map(|c| {
            let segs: Vec<&str> = c.path.trim_start_matches('/').split('/').collect();
            let mut input = serde_json::json!({"method": c.method, "path": segs, "agent": c.agent});
            if let Some(o) = c.obo {
                input["on_behalf_of"] = o.into();
            }
            if let Some(b) = c.body {
                input["body"] = serde_json::from_str(b).unwrap();
            }
            regorus::Value::from_json_str(&input.to_string()).unwrap()
        })
        .collect()
}

fn cedar_requests(cases: &[Case]) -> Vec<CedarRequest> {
    cases
        .iter()
        .map(|c| {
            let segs: Vec<&str> = c.path.trim_start_matches('/').split('/').collect();
            // The caller routes the path to a resource; Cedar has no path patterns.
            let (resource, user) =
                if segs.first() == Some(&"mcp") { ("mcp", None) } else { ("mail-message", segs.get(2).copied()) };
            let mut ctx = serde_json::json!({"call": false});
            if let Some(u) = user {
                ctx["user"] = u.into();
            }
            if let Some(o) = c.obo {
                ctx["on_behalf_of"] = o.into();
            }
            if let Some(b) = c.body {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                ctx["call"] = (v["method"] == "tools/call").into();
                ctx["tool"] = v["params"]["name"].clone();
                if let Some(l) = v["params"]["arguments"].get("limit") {
                    ctx["limit"] = l.clone();
                }
            }
            CedarRequest::new(
                EntityUid::from_str(&format!(r#"Agent::"{}""#, c.agent)).unwrap(),
                EntityUid::from_str(&format!(r#"Action::"{}""#, c.method)).unwrap(),
                EntityUid::from_str(&format!(r#"Endpoint::"{resource}""#)).unwrap(),
                Context::from_json_value(ctx, None).unwrap(),
                None,
            )
            .unwrap()
        })
        .collect()
}

fn rego_engine() -> regorus::Engine {
    let mut e = regorus::Engine::new();
    e.add_policy("hallpass.rego".into(), REGO.into()).unwrap();
    e
}

fn rego_allow(e: &mut regorus::Engine, input: &regorus::Value) -> bool {
    e.set_input(input.clone());
    e.eval_rule("data.hallpass.allow".into()).unwrap() == regorus::Value::from(true)
}

fn bench(c: &mut Criterion) {
    let cases = cases();
    let now = jiff::Timestamp::now();
    let policy = Policy::from_yaml(HALLPASS, "engines.yaml").unwrap();
    let hp = hallpass_requests(&cases);
    let mut rego = rego_engine();
    let rin = rego_inputs(&cases);
    let cedar_policies = PolicySet::from_str(CEDAR).unwrap();
    let entities = Entities::from_json_str(CEDAR_ENTITIES, None).unwrap();
    let creq = cedar_requests(&cases);
    let authorizer = Authorizer::new();

    // The three engines agree with the expected verdicts before anything is measured.
    for (i, case) in cases.iter().enumerate() {
        let h = evaluate(&policy, &hp[i], now).allowed();
        let r = rego_allow(&mut rego, &rin[i]);
        let c = authorizer.is_authorized(&creq[i], &cedar_policies, &entities).decision() == CedarDecision::Allow;
        assert_eq!((h, r, c), (case.allow, case.allow, case.allow), "{}: hallpass/rego/cedar disagree", case.name);
    }
    eprintln!("all three engines agree on {} requests", cases.len());

    let n = cases.len();
    c.bench_function(&format!("engines/hallpass ({n} decisions)"), |b| {
        b.iter(|| {
            for r in &hp {
                black_box(evaluate(&policy, r, now));
            }
        })
    });
    c.bench_function(&format!("engines/cedar ({n} decisions)"), |b| {
        b.iter(|| {
            for r in &creq {
                black_box(authorizer.is_authorized(r, &cedar_policies, &entities));
            }
        })
    });
    c.bench_function(&format!("engines/rego-regorus ({n} decisions)"), |b| {
        b.iter(|| {
            for i in &rin {
                black_box(rego_allow(&mut rego, i));
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
