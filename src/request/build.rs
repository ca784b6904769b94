//! Build a CheckRequest the way Envoy 1.40 fills one (envoy-facts.md): path with the query
//! in `path`, pseudo-headers in the header map, the body in `raw_body`. Used by
//! `hallpass check`, the tests and the benchmarks, never on the request path.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request as AttrRequest};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};

use super::JWT_AUTHN_NAMESPACE;

/// A CheckRequest under construction.
#[derive(Debug, Clone, Default)]
pub struct CheckRequestBuilder {
    method: String,
    path: String,
    host: String,
    headers: HashMap<String, String>,
    body: Option<Vec<u8>>,
    principal: Option<String>,
    jwt: Option<Struct>,
    route_upstream: Option<String>,
}

/// Convert JSON to a protobuf Struct value (as Envoy's metadata holds it).
pub fn json_to_proto(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue { values: a.iter().map(json_to_proto).collect() }),
        J::Object(o) => {
            Kind::StructValue(Struct { fields: o.iter().map(|(k, v)| (k.clone(), json_to_proto(v))).collect() })
        }
    };
    Value { kind: Some(kind) }
}

impl CheckRequestBuilder {
    /// A request with this method and `:path` (query included).
    pub fn new(method: &str, path: &str) -> Self {
        CheckRequestBuilder {
            method: method.to_string(),
            path: path.to_string(),
            host: "localhost".to_string(),
            ..Default::default()
        }
    }

    /// Set `:authority`.
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_string();
        self
    }

    /// Add a header (name lowercased; a repeated header is joined with `,` as Envoy does).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = name.to_ascii_lowercase();
        match self.headers.get_mut(&name) {
            Some(v) => {
                v.push(',');
                v.push_str(value);
            }
            None => {
                self.headers.insert(name, value.to_string());
            }
        }
        self
    }

    /// Set the body (sent as `raw_body`).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Set `attributes.source.principal`.
    pub fn principal(mut self, p: &str) -> Self {
        self.principal = Some(p.to_string());
        self
    }

    /// Set the jwt_authn metadata: an object of provider → payload.
    pub fn jwt(mut self, providers: &serde_json::Value) -> Self {
        if let Value { kind: Some(Kind::StructValue(s)) } = json_to_proto(providers) {
            self.jwt = Some(s);
        }
        self
    }

    /// Set the selected route's `hallpass` metadata `upstream` (as Envoy sends it with
    /// `route_metadata_context_namespaces: [hallpass]`).
    pub fn route_upstream(mut self, upstream: &str) -> Self {
        self.route_upstream = Some(upstream.to_string());
        self
    }

    /// The CheckRequest.
    pub fn build(self) -> CheckRequest {
        let mut headers = self.headers;
        headers.insert(":method".into(), self.method.clone());
        headers.insert(":path".into(), self.path.clone());
        headers.insert(":authority".into(), self.host.clone());
        headers.insert(":scheme".into(), "http".into());
        headers.entry("x-request-id".into()).or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
        if self.body.is_some() {
            headers.entry(super::PARTIAL_BODY_HEADER.into()).or_insert_with(|| "false".into());
        }
        let body = self.body.unwrap_or_default();
        let http = HttpRequest {
            method: self.method,
            path: self.path,
            host: self.host,
            scheme: "http".into(),
            protocol: "HTTP/1.1".into(),
            size: i64::try_from(body.len()).unwrap_or(i64::MAX),
            headers,
            raw_body: body,
            ..Default::default()
        };
        let metadata_context = self.jwt.map(|s| Metadata {
            filter_metadata: [(JWT_AUTHN_NAMESPACE.to_string(), s)].into_iter().collect(),
            ..Default::default()
        });
        let route_metadata_context = self.route_upstream.map(|u| Metadata {
            filter_metadata: [(
                super::envoy::ROUTE_NAMESPACE.to_string(),
                Struct {
                    fields: [("upstream".to_string(), Value { kind: Some(Kind::StringValue(u)) })]
                        .into_iter()
                        .collect(),
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        });
        CheckRequest {
            attributes: Some(AttributeContext {
                source: self.principal.map(|p| Peer { principal: p, ..Default::default() }),
                request: Some(AttrRequest { http: Some(http), ..Default::default() }),
                metadata_context,
                route_metadata_context,
                ..Default::default()
            }),
        }
    }
}

/// Sample requests against the shipped `config/policy.yaml`, shared by the criterion benches
/// and the load generator so both measure the same thing. All three are allowed by it.
pub mod samples {
    use super::CheckRequestBuilder;

    /// GET of one message of the user the agent acts for (rule `mail-read`).
    pub fn read_mail() -> CheckRequestBuilder {
        CheckRequestBuilder::new("GET", "/v1/users/alice/messages/m1")
            .host("mail.example.com")
            .header("x-agent-id", "triage-bot")
            .header("x-on-behalf-of", "alice")
    }

    /// The JSON body of [`send_mail`]: 8 internal recipients, about 1 KB.
    pub fn mail_body_1k() -> String {
        let to: Vec<String> = (0..8).map(|i| format!("\"user{i}@example.com\"")).collect();
        format!(r#"{{"to":[{}],"subject":"weekly report","body":"{}"}}"#, to.join(","), "lorem ipsum ".repeat(67))
    }

    /// POST of a 1 KB JSON mail the body rules read (rule `mail-send`).
    pub fn send_mail(body: String) -> CheckRequestBuilder {
        CheckRequestBuilder::new("POST", "/v1/users/alice/messages/send")
            .host("mail.example.com")
            .header("x-agent-id", "triage-bot")
            .header("x-on-behalf-of", "alice")
            .header("content-type", "application/json")
            .body(body)
    }

    /// An MCP `tools/call` with argument conditions (rule `mcp-search`).
    pub fn mcp_search() -> CheckRequestBuilder {
        CheckRequestBuilder::new("POST", "/mcp")
            .host("tools.example.com")
            .header("x-agent-id", "research-bot")
            .header("content-type", "application/json")
            .body(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search_docs","arguments":{"query":"refund policy for enterprise customers","limit":10}}}"#)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::policy::{evaluate, Policy};
        use crate::request::Request;

        #[test]
        fn samples_are_allowed_by_the_example_policy() {
            let p = Policy::from_file(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.yaml")))
                .unwrap();
            assert!((1000..1100).contains(&mail_body_1k().len()));
            for (b, rule) in
                [(read_mail(), "mail-read"), (send_mail(mail_body_1k()), "mail-send"), (mcp_search(), "mcp-search")]
            {
                let d = evaluate(&p, &Request::from_check_request(b.build()).unwrap(), jiff::Timestamp::now());
                assert!(d.allowed());
                assert_eq!(d.rule.as_str(), rule);
            }
        }
    }
}
