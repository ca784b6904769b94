//! The policy loader: any UTF-8 text gives a policy or located errors, never a panic or a
//! hang. A policy that loads then decides a few fixed requests (evaluation of arbitrary
//! compiled rules).
#![no_main]

use hallpass::policy::Policy;
use hallpass::request::build::CheckRequestBuilder;
use hallpass::service::Authz;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let policy = match Policy::from_yaml(text, "fuzz.yaml") {
        Ok(p) => p,
        Err(e) => {
            assert!(!e.0.is_empty(), "an error without a problem");
            let _ = e.to_string();
            return;
        }
    };
    let authz = Authz::from_policy(policy);
    let now = jiff::Timestamp::now();
    let requests = [
        CheckRequestBuilder::new("GET", "/v1/users/alice/messages/m1?fields=a&x=1")
            .host("mail.example.com")
            .header("x-agent-id", "triage-bot")
            .header("x-on-behalf-of", "alice"),
        CheckRequestBuilder::new("POST", "/mcp")
            .host("tools.example.com")
            .principal("spiffe://cluster.local/ns/agents/sa/summarizer")
            .header("content-type", "application/json")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"query":"x","limit":3,"path":"../a"}}}"#),
        CheckRequestBuilder::new("PUT", "/a/b;c/../d").header("content-type", "application/x-www-form-urlencoded").body("a=1&b=x+y"),
    ];
    for r in requests {
        let _ = ready(authz.decide(r.build(), now));
    }
});

/// Run a Check on the in-memory state store (it never waits).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    hallpass::check::ready_now(f).expect("the in-memory pipeline never waits")
}
