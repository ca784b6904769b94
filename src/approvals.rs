//! Approval ids (agent-controls.md §2): the same action retried gets the same id on every
//! replica, and the id depends on no rule.
//!
//! `ap_` + the first 26 characters of the lowercase base32 (RFC 4648 alphabet, no padding) of
//! SHA-256 over the canonical text of the request, which is the canonical JSON of the array
//!
//! ```text
//! ["hallpass.approval/v1", agent, on_behalf_of, method, host, path, query, body]
//! ```
//!
//! - `agent`, `on_behalf_of`: the resolved identities, or `null`;
//! - `method`: the method as sent in ASCII uppercase; when the request carries method
//!   overrides, every reading (sent, uppercased, each override), sorted, unique, joined by `,`
//!   (so an approval for `POST` never covers a `POST` that some upstream reads as `DELETE`);
//! - `host`: normalized (lowercase, no port); `path`: normalized, without the query (`null`
//!   when the path is invalid);
//! - `query`: the decoded `[name, value]` pairs sorted by name, then value (bytewise);
//! - `body`: `null` without a body; a JSON body (strict parse) as its value with the JSON-RPC
//!   `id` of a call (an object with a `jsonrpc` and a `method` member), or of each such
//!   element of a batch, removed; any other body as `{"sha256": "<hex of its bytes>"}`, and a
//!   truncated body as `{"sha256": …, "truncated": true}`.
//!
//! Canonical JSON: objects with their keys sorted bytewise (UTF-8), no whitespace, strings
//! escaped as serde_json escapes them (`"`, `\`, control characters; everything else as is),
//! numbers as parsed (integers as integers; others in serde_json's shortest round-trip form).
//! docs/approval-ids.md documents the form with the test vectors pinned in `tests` below
//! (cross-checked with an independent implementation).

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::policy::eval::Identity;
use crate::request::{Parsed, Request};

/// The prefix of every approval id.
pub const PREFIX: &str = "ap_";
/// The first element of the canonical array: the version of this reading.
pub const VERSION: &str = "hallpass.approval/v1";

/// The approval id of a request made by `ident`.
pub fn approval_id(req: &Request, ident: Identity<'_>) -> String {
    id_of(&canonical_text(req, ident))
}

/// `ap_` + 26 characters of base32 of SHA-256 of `text`.
pub fn id_of(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(PREFIX.len() + 26);
    out.push_str(PREFIX);
    out.push_str(&base32_lower(&digest, 26));
    out
}

/// The canonical text an approval id is the hash of.
pub fn canonical_text(req: &Request, ident: Identity<'_>) -> String {
    let mut query: Vec<(&str, &str)> = req.query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    query.sort_unstable();
    let query: Vec<Json> = query.into_iter().map(|(k, v)| Json::Array(vec![Json::from(k), Json::from(v)])).collect();
    let doc = Json::Array(vec![
        Json::from(VERSION),
        ident.agent.map_or(Json::Null, Json::from),
        ident.on_behalf_of.map_or(Json::Null, Json::from),
        Json::from(method_reading(req)),
        Json::from(req.host.as_str()),
        req.path.as_deref().map_or(Json::Null, Json::from),
        Json::Array(query),
        body_reading(req),
    ]);
    let mut out = String::with_capacity(256);
    write_canonical(&doc, &mut out);
    out
}

fn method_reading(req: &Request) -> String {
    let upper = req.method.to_ascii_uppercase();
    if !req.method_override {
        return upper;
    }
    let mut all = vec![req.method.clone(), upper];
    req.method_overrides(|m| all.push(m.to_string()));
    all.sort_unstable();
    all.dedup();
    all.join(",")
}

fn body_reading(req: &Request) -> Json {
    let bytes = &req.body.bytes;
    if bytes.is_empty() && !req.body.truncated {
        return Json::Null;
    }
    if !req.body.truncated {
        if let Parsed::Json(v) = req.body.parsed() {
            let mut v = v.clone();
            strip_rpc_ids(&mut v);
            return v;
        }
    }
    let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    let mut o = serde_json::Map::new();
    o.insert("sha256".into(), Json::from(hex));
    if req.body.truncated {
        o.insert("truncated".into(), Json::Bool(true));
    }
    Json::Object(o)
}

/// Remove the `id` of a JSON-RPC call, or of each call of a batch.
fn strip_rpc_ids(v: &mut Json) {
    let strip = |o: &mut Json| {
        if let Json::Object(m) = o {
            if m.contains_key("jsonrpc") && m.contains_key("method") {
                m.remove("id");
            }
        }
    };
    match v {
        Json::Array(items) => items.iter_mut().for_each(strip),
        other => strip(other),
    }
}

/// Canonical JSON: keys sorted bytewise, no whitespace.
pub fn write_canonical(v: &Json, out: &mut String) {
    match v {
        Json::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                if let Some(val) = m.get(k) {
                    write_canonical(val, out);
                }
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Json::String(s) => write_string(s, out),
        // Scalars: serde_json's own text (numbers as parsed).
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push_str(&Json::from(s).to_string());
}

/// Lowercase RFC 4648 base32 without padding, the first `n` characters.
fn base32_lower(bytes: &[u8], n: usize) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let symbol = |v: u64| ALPHABET.get((v & 31) as usize).map_or('a', |c| char::from(*c));
    let mut out = String::with_capacity(n);
    // INVARIANT: fewer than 5 bits are left in `acc` after each byte, so it never exceeds 13.
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in bytes {
        if out.len() >= n {
            return out;
        }
        acc = ((acc << 8) | u64::from(b)) & 0x1fff;
        bits += 8;
        while bits >= 5 && out.len() < n {
            bits -= 5;
            out.push(symbol(acc >> bits));
        }
    }
    if bits > 0 && out.len() < n {
        out.push(symbol(acc << (5 - bits)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::build::CheckRequestBuilder;

    fn req(b: CheckRequestBuilder) -> Request {
        Request::from_check_request(b.build()).unwrap()
    }

    fn ident<'a>(agent: &'a str, obo: Option<&'a str>) -> Identity<'a> {
        Identity { agent: Some(agent), on_behalf_of: obo }
    }

    #[test]
    fn base32_matches_rfc4648() {
        // RFC 4648 §10 test vectors, lowercase, unpadded.
        for (input, want) in [
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            assert_eq!(base32_lower(input.as_bytes(), 100), want, "{input}");
        }
    }

    /// Test vectors, cross-checked by an independent implementation (Python: `json.dumps` with
    /// `sort_keys=True, separators=(",", ":"), ensure_ascii=False`, `hashlib.sha256`,
    /// `base64.b32encode`, lowercased, `=` stripped, first 26 characters).
    #[test]
    fn test_vectors() {
        let mcp = |id: u32| {
            CheckRequestBuilder::new("POST", "/mcp?b=2&a=1")
                .host("Tools.Example.com:443")
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"send_mail","arguments":{{"to":["eve@evil.io"],"subject":"hi"}}}}}}"#
                ))
        };
        let a = req(mcp(1));
        let text = canonical_text(&a, ident("triage-bot", Some("alice")));
        assert_eq!(
            text,
            r#"["hallpass.approval/v1","triage-bot","alice","POST","tools.example.com","/mcp",[["a","1"],["b","2"]],{"jsonrpc":"2.0","method":"tools/call","params":{"arguments":{"subject":"hi","to":["eve@evil.io"]},"name":"send_mail"}}]"#
        );
        let id = approval_id(&a, ident("triage-bot", Some("alice")));
        assert_eq!(id, "ap_su52sl4mnxhvgu6aaa5lcn67pi");
        // The JSON-RPC id is not part of it: a retry with a new id is the same action.
        assert_eq!(approval_id(&req(mcp(77)), ident("triage-bot", Some("alice"))), id);
        // Another user, another agent, another argument: another action.
        assert_ne!(approval_id(&a, ident("triage-bot", Some("bob"))), id);
        assert_ne!(approval_id(&a, ident("other-bot", Some("alice"))), id);

        let get = req(CheckRequestBuilder::new("delete", "/v1/users/alice/messages/m1").host("mail.example.com"));
        assert_eq!(
            canonical_text(&get, ident("triage-bot", None)),
            r#"["hallpass.approval/v1","triage-bot",null,"DELETE","mail.example.com","/v1/users/alice/messages/m1",[],null]"#
        );
        assert_eq!(approval_id(&get, ident("triage-bot", None)), "ap_2cvadofkb3izs3q4qb6ao3vw2h");

        let form = req(CheckRequestBuilder::new("POST", "/deals")
            .host("crm.example.com")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("discount=30&name=x"));
        assert_eq!(
            canonical_text(&form, ident("sales", None)),
            r#"["hallpass.approval/v1","sales",null,"POST","crm.example.com","/deals",[],{"sha256":"f6cc349059c6c50b183a43c9cf93cf09e8f5a27797dd99e2b6ab29adee286314"}]"#
        );
        assert_eq!(approval_id(&form, ident("sales", None)), "ap_jsepui7kzv2dvdxsi3ejc5amel");
    }

    #[test]
    fn method_overrides_are_part_of_the_method() {
        let plain = req(CheckRequestBuilder::new("POST", "/x").host("h"));
        let overridden =
            req(CheckRequestBuilder::new("POST", "/x").host("h").header("x-http-method-override", "DELETE"));
        let t = canonical_text(&overridden, Identity::default());
        assert!(t.contains(r#""DELETE,POST""#), "{t}");
        assert_ne!(approval_id(&plain, Identity::default()), approval_id(&overridden, Identity::default()));
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter_but_values_do() {
        let body = |b: &str| {
            req(CheckRequestBuilder::new("POST", "/x")
                .host("h")
                .header("content-type", "application/json")
                .body(b.to_string()))
        };
        let i = Identity::default();
        assert_eq!(
            approval_id(&body(r#"{"a":1,"b":[1,2]}"#), i),
            approval_id(&body("{ \"b\" : [1, 2],\n \"a\": 1 }"), i)
        );
        assert_ne!(approval_id(&body(r#"{"a":1,"b":[1,2]}"#), i), approval_id(&body(r#"{"a":1,"b":[2,1]}"#), i));
        assert_ne!(approval_id(&body(r#"{"a":1}"#), i), approval_id(&body(r#"{"a":1.0}"#), i), "numbers as written");
        // A body that is not strict JSON (a duplicate key) is taken by its bytes.
        assert!(canonical_text(&body(r#"{"a":1,"a":2}"#), i).contains("sha256"));
    }
}
