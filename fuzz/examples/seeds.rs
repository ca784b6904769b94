//! Writes the seed corpus of the `check_request` target: a few encoded CheckRequests, the
//! way Envoy fills them, against the example policy (config/policy.yaml).
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seeds
//!
//! Output: fuzz/seeds/check_request/*.pb (committed; small).

use std::path::PathBuf;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use hallpass::request::build::{samples, CheckRequestBuilder};
use prost::Message;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds/check_request");
    std::fs::create_dir_all(&dir)?;
    let jwt = serde_json::json!({"agents": {"sub": "triage-bot", "act": {"sub": "alice"}}});
    let mut seeds: Vec<(&str, CheckRequest)> = vec![
        ("read_mail", samples::read_mail().build()),
        ("send_mail", samples::send_mail(r#"{"to":["bob@example.com"],"subject":"hi","body":"x"}"#.into()).build()),
        ("mcp_search", samples::mcp_search().build()),
        (
            "mcp_batch",
            CheckRequestBuilder::new("POST", "/mcp")
                .host("tools.example.com")
                .principal("spiffe://cluster.local/ns/agents/sa/summarizer")
                .header("content-type", "application/json")
                .body(r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/workspace/../etc"}}}]"#)
                .build(),
        ),
        (
            "crm_form_jwt",
            CheckRequestBuilder::new("PATCH", "/api/contacts/42?fields=name&_method=PUT")
                .host("crm.example.com:8443")
                .jwt(&jwt)
                .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
                .header("x-http-method-override", "DELETE")
                .body("status=won&notes=a+b%20c&discount_percent=5")
                .build(),
        ),
        (
            "odd_path",
            CheckRequestBuilder::new("get", "//v1/users/alice/./messages/%2e%2e/m1;jsessionid=1?a=1&a=2")
                .host("MAIL.example.com.")
                .header("x_agent_id", "triage-bot")
                .header("x-envoy-auth-partial-body", "true")
                .body(vec![0xEF, 0xBB, 0xBF, b'{', b'}'])
                .build(),
        ),
        ("no_http", CheckRequest::default()),
    ];
    // Envoy may send the headers as a HeaderMap (raw_value bytes) instead of the string map.
    let mut header_map = samples::read_mail().build();
    if let Some(http) = header_map.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
        let headers = std::mem::take(&mut http.headers);
        http.header_map = Some(HeaderMap {
            headers: headers
                .into_iter()
                .map(|(key, v)| HeaderValue { key, raw_value: v.into_bytes(), ..Default::default() })
                .collect(),
        });
    }
    seeds.push(("header_map", header_map));
    for (name, req) in seeds {
        std::fs::write(dir.join(format!("{name}.pb")), req.encode_to_vec())?;
    }
    Ok(())
}
