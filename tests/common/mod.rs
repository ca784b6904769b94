//! Shared test helpers: the corpus fixture format and turning a fixture request into the
//! CheckRequest Envoy would send.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

use std::collections::BTreeMap;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use hallpass::request::build::CheckRequestBuilder;
use serde::Deserialize;

/// One request of a corpus case.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FixtureRequest {
    pub method: Option<String>,
    pub path: String,
    pub host: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: Option<String>,
    pub partial_body: Option<bool>,
    pub principal: Option<String>,
    pub jwt: Option<serde_json::Value>,
    pub now: Option<String>,
}

/// What the case expects.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub decision: String,
    pub rule: String,
    #[serde(default)]
    pub dry_run: bool,
}

/// One case.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub request: FixtureRequest,
    pub expect: Expect,
}

/// A corpus file: one policy, many cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusFile {
    /// The policy text, or
    pub policy: Option<String>,
    /// a policy file, relative to the crate root (for the shipped examples).
    pub policy_file: Option<String>,
    pub cases: Vec<Case>,
}

pub const DEFAULT_NOW: &str = "2026-11-23T12:00:00Z";

impl FixtureRequest {
    pub fn now(&self) -> jiff::Timestamp {
        self.now.as_deref().unwrap_or(DEFAULT_NOW).parse().expect("fixture `now` must be RFC 3339")
    }

    pub fn to_check_request(&self) -> CheckRequest {
        let mut b = CheckRequestBuilder::new(self.method.as_deref().unwrap_or("GET"), &self.path)
            .host(self.host.as_deref().unwrap_or("api.example.com"));
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        if let Some(ct) = &self.content_type {
            b = b.header("content-type", ct);
        }
        if self.partial_body == Some(true) {
            b = b.header("x-envoy-auth-partial-body", "true");
        }
        if let Some(body) = &self.body {
            b = b.body(body.as_bytes().to_vec());
        }
        if let Some(p) = &self.principal {
            b = b.principal(p);
        }
        if let Some(j) = &self.jwt {
            b = b.jwt(j);
        }
        b.build()
    }
}

/// An external tool on PATH. Missing: a skip message, unless HALLPASS_REQUIRE_TOOLS=1 (set
/// by scripts/test.sh, which installs the tools), where it is a failure.
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()));
    if found.is_none() {
        assert!(
            std::env::var("HALLPASS_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "`{name}` is required (HALLPASS_REQUIRE_TOOLS=1) but not on PATH"
        );
        eprintln!("SKIPPED: `{name}` not on PATH (scripts/test.sh installs it)");
    }
    found
}
