//! Readings that are easier to build in code than to write in the corpus: a query string and
//! a form body past the 1000 parameters the `qs` parser reads (policy-language.md "Query
//! names", "Body type"), and the fold table against Go's `unicode.SimpleFold` orbits.
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
use hallpass::policy::Policy;
use hallpass::request::build::CheckRequestBuilder;
use hallpass::service::Authz;

const POLICY: &str = r#"
version: 1
rules:
  - id: deny-ssn
    effect: deny
    paths: ["/contacts"]
    query: { fields: { contains: ssn } }
  - id: allow-contacts
    effect: allow
    paths: ["/contacts"]
    query: { fields: { in: [name, email] } }
  - id: allow-plain
    effect: allow
    paths: ["/plain"]
  - id: deny-external
    effect: deny
    paths: ["/send"]
    body: { field: /to, suffix: "@evil.com" }
  - id: allow-send
    effect: allow
    paths: ["/send"]
    body: { field: /to, suffix: "@example.com" }
"#;

fn decide(b: CheckRequestBuilder) -> (bool, String) {
    let a = Authz::from_policy(Policy::from_yaml(POLICY, "readings.yaml").unwrap());
    let d = ready(a.decide(b.build(), jiff::Timestamp::now())).decision;
    (d.allowed(), d.rule.as_str().to_string())
}

fn params(n: usize) -> String {
    (0..n).map(|i| format!("p{i}=1")).collect::<Vec<_>>().join("&")
}

#[test]
fn a_query_past_1000_parameters_is_unknown_to_query_tests() {
    // 999 others + fields: 1000 parameters, all read.
    let ok = format!("/contacts?{}&fields=name", params(999));
    assert_eq!(decide(CheckRequestBuilder::new("GET", &ok)), (true, "allow-contacts".into()));
    // 1000 others + fields: qs never sees `fields`, the handler returns every field.
    let over = format!("/contacts?{}&fields=name", params(1000));
    assert_eq!(decide(CheckRequestBuilder::new("GET", &over)), (false, "deny-ssn".into()));
    // Empty pieces count as qs counts them.
    let empties = format!("/contacts?{}fields=name", "&".repeat(1000));
    assert_eq!(decide(CheckRequestBuilder::new("GET", &empties)), (false, "deny-ssn".into()));
    // A rule without query tests does not care.
    let plain = format!("/plain?{}", params(5000));
    assert_eq!(decide(CheckRequestBuilder::new("GET", &plain)), (true, "allow-plain".into()));
}

#[test]
fn a_form_past_1000_fields_is_unknown() {
    let form = |n: usize| {
        CheckRequestBuilder::new("POST", "/send")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("{}&to=a%40example.com", params(n)))
    };
    assert_eq!(decide(form(999)), (true, "allow-send".into()));
    assert_eq!(decide(form(1000)), (false, "deny-external".into()));
}

/// Every non-trivial `unicode.SimpleFold` orbit of Go 1.19 that contains an ASCII letter or
/// a letter whose folding differs from lowercasing, as Go's encoding/json binds them: the
/// members of each orbit must fold together.
#[test]
fn go_fold_orbits_fold_together() {
    use hallpass::request::body::fold_eq;
    let orbits: &[&[char]] = &[
        &['K', 'k', '\u{212A}'],
        &['S', 's', '\u{17F}'],
        &['\u{C5}', '\u{E5}', '\u{212B}'],
        &['\u{B5}', '\u{39C}', '\u{3BC}'],
        &['\u{345}', '\u{399}', '\u{3B9}', '\u{1FBE}'],
        &['\u{392}', '\u{3B2}', '\u{3D0}'],
        &['\u{395}', '\u{3B5}', '\u{3F5}'],
        &['\u{398}', '\u{3B8}', '\u{3D1}', '\u{3F4}'],
        &['\u{39A}', '\u{3BA}', '\u{3F0}'],
        &['\u{3A0}', '\u{3C0}', '\u{3D6}'],
        &['\u{3A1}', '\u{3C1}', '\u{3F1}'],
        &['\u{3A3}', '\u{3C2}', '\u{3C3}'],
        &['\u{3A6}', '\u{3C6}', '\u{3D5}'],
        &['\u{3A9}', '\u{3C9}', '\u{2126}'],
        &['\u{1C4}', '\u{1C5}', '\u{1C6}'],
        &['\u{1C7}', '\u{1C8}', '\u{1C9}'],
        &['\u{1CA}', '\u{1CB}', '\u{1CC}'],
        &['\u{1F1}', '\u{1F2}', '\u{1F3}'],
        &['\u{1E60}', '\u{1E61}', '\u{1E9B}'],
        &['\u{DF}', '\u{1E9E}'],
        &['\u{13A0}', '\u{AB70}'],
    ];
    for orbit in orbits {
        for a in *orbit {
            for b in *orbit {
                assert!(fold_eq(&a.to_string(), &b.to_string()), "U+{:04X} U+{:04X}", *a as u32, *b as u32);
            }
        }
    }
}
