//! A body-less decision allocates nothing (performance.md target 1): identities are borrowed
//! from the request, the candidate rules and captures live on the stack. Counted with dhat's
//! allocator; this file is its own test binary, so nothing else runs under it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    reason = "tests may panic"
)]

use hallpass::policy::{evaluate, Policy};
use hallpass::request::build::samples;
use hallpass::request::Request;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[test]
fn a_body_less_decision_allocates_nothing() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let policy =
        Policy::from_file(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.yaml"))).unwrap();
    let now = jiff::Timestamp::now();
    let get = Request::from_check_request(samples::read_mail().build()).unwrap();
    let first = evaluate(&policy, &get, now); // lazily built state (regex caches) is not per decision
    assert!(first.allowed(), "the sample is allowed by {}", first.rule.as_str());

    let before = dhat::HeapStats::get();
    for _ in 0..100 {
        let d = evaluate(&policy, &get, now);
        assert!(d.allowed());
    }
    let after = dhat::HeapStats::get();
    assert_eq!(after.total_blocks - before.total_blocks, 0, "allocations in 100 body-less decisions");

    // And the counter counts: a decision with a JSON body does allocate (the parsed body).
    let mail = Request::from_check_request(samples::send_mail(samples::mail_body_1k()).build()).unwrap();
    let before = dhat::HeapStats::get();
    assert!(evaluate(&policy, &mail, now).allowed());
    assert!(dhat::HeapStats::get().total_blocks > before.total_blocks);
}
