//! Heap allocations per decision (performance.md target 1: zero for a body-less decision is
//! the aim). Counts with dhat's global allocator over many iterations of each step, on the
//! shipped example policy and the shared sample requests. Prints one JSON line per step.
use hallpass::policy::{evaluate, Policy};
use hallpass::request::build::samples;
use hallpass::request::Request;
use hallpass::service::Authz;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const N: u64 = 10_000;

/// Allocations made by `f` (not by `setup`), averaged over N runs (frees are not counted,
/// so what `f` drops does not matter).
fn count<T>(name: &str, mut setup: impl FnMut() -> T, mut f: impl FnMut(T)) {
    f(setup()); // warm: lazily built state (regex caches, thread locals) is not per-decision
    let (mut blocks, mut bytes) = (0u64, 0u64);
    for _ in 0..N {
        let input = setup();
        let before = dhat::HeapStats::get();
        f(input);
        let after = dhat::HeapStats::get();
        blocks += after.total_blocks - before.total_blocks;
        bytes += after.total_bytes - before.total_bytes;
    }
    let (blocks, bytes) = (blocks as f64 / N as f64, bytes as f64 / N as f64);
    println!("{}", serde_json::json!({"step": name, "allocations": blocks, "bytes": bytes}));
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/policy.yaml");
    let policy = Policy::from_file(std::path::Path::new(root)).expect("example policy");
    let now = jiff::Timestamp::now();

    let get = Request::from_check_request(samples::read_mail().build()).expect("request");
    count(
        "evaluate/bodyless",
        || (),
        |()| {
            std::hint::black_box(evaluate(&policy, &get, now));
        },
    );
    let mail = samples::send_mail(samples::mail_body_1k()).build();
    count(
        "evaluate/json_body_1k (parse included)",
        || Request::from_check_request(mail.clone()).expect("request"),
        |r| {
            std::hint::black_box(evaluate(&policy, &r, now));
        },
    );
    let get_check = samples::read_mail().build();
    count(
        "extract/bodyless",
        || get_check.clone(),
        |c| {
            std::hint::black_box(Request::from_check_request(c).expect("request"));
        },
    );
    let authz = Authz::from_policy(Policy::from_file(std::path::Path::new(root)).expect("example policy"));
    count(
        "check/bodyless (extract+evaluate+respond)",
        || get_check.clone(),
        |c| {
            std::hint::black_box(ready(authz.decide(c, now)));
        },
    );
    count(
        "check/json_body_1k (cache off)",
        || mail.clone(),
        |c| {
            std::hint::black_box(ready(authz.decide(c, now)));
        },
    );

    // What a reload of a 1000-rule policy holds and needs at its peak.
    let text = policy_1000();
    let before = dhat::HeapStats::get();
    let compiled = Policy::from_yaml(&text, "policy-1000.yaml").expect("1000-rule policy");
    let after = dhat::HeapStats::get();
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "{}",
        serde_json::json!({"step": "compile/1000 rules", "text_mib": mib(text.len()),
            "retained_mib": mib(after.curr_bytes - before.curr_bytes),
            "peak_above_start_mib": mib(after.max_bytes.saturating_sub(before.curr_bytes)),
            "allocations": after.total_blocks - before.total_blocks})
    );
    std::hint::black_box(compiled);
}

/// The 1000-rule policy of benches/run.sh and benches/soak.sh.
fn policy_1000() -> String {
    let mut s = String::from("version: 1\nrules:\n");
    for i in 0..1000 {
        let effect = if i % 10 == 0 { "deny" } else { "allow" };
        s.push_str(&format!(
            "  - {{ id: r{i}, effect: {effect}, methods: [POST], paths: [\"/svc{i}/{{id}}/**\"], body: {{ field: /amount, lte: {} }} }}\n",
            i * 10
        ));
    }
    s
}

/// Run a Check on the in-memory state store (it never waits).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    hallpass::check::ready_now(f).expect("the in-memory pipeline never waits")
}
