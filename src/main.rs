//! The `hallpass` command: `serve`, `validate`, `check`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use hallpass::policy::{explain, Policy};
use hallpass::reload::PolicyStore;
use hallpass::request::build::CheckRequestBuilder;
use hallpass::request::Request;
use hallpass::settings::{LogFormat, Overrides, ServerSettings};
use hallpass::telemetry::Metrics;
use hallpass::{app, explain as report};

#[derive(Parser)]
#[command(name = "hallpass", version, about = "Per-action authorization for AI agents: an Envoy ext_authz v3 sidecar")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ext_authz v3 gRPC and the admin endpoints (/metrics, /healthz, /readyz).
    Serve(Overrides),
    /// Check a policy file; exit 0 if valid, 1 with located errors otherwise.
    Validate {
        /// The policy file.
        file: PathBuf,
    },
    /// Decide one request against a policy and explain why.
    Check {
        /// The policy file.
        #[arg(long)]
        policy: PathBuf,
        /// HTTP method.
        #[arg(long)]
        method: String,
        /// Request path, query included, as Envoy's :path.
        #[arg(long)]
        path: String,
        /// Host (:authority).
        #[arg(long, default_value = "localhost")]
        host: String,
        /// A header `name: value`; repeatable.
        #[arg(long = "header", value_name = "'NAME: VALUE'")]
        headers: Vec<String>,
        /// Request body (content-type defaults to application/json).
        #[arg(long)]
        body: Option<String>,
        /// The agent id (bypasses the policy's identity sources).
        #[arg(long)]
        agent: Option<String>,
        /// The on-behalf-of id (bypasses the policy's identity sources).
        #[arg(long = "on-behalf-of")]
        on_behalf_of: Option<String>,
        /// The mTLS principal (source.principal), to exercise identity sources.
        #[arg(long)]
        principal: Option<String>,
        /// Decide at this RFC 3339 instant instead of now.
        #[arg(long)]
        now: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run policy test suites (`*_test.yaml`): each case decided as a Check would decide it.
    /// Exit 0 when all pass, 1 when a case fails (or coverage is below the minimum), 2 when
    /// a suite is invalid.
    Test {
        /// Suite files, or directories searched for `*_test.yaml` [default: .].
        paths: Vec<PathBuf>,
        /// Fail unless each suite's cases decide at least this percentage of its policy's rules.
        #[arg(long, value_name = "PCT")]
        coverage_min: Option<f64>,
        /// Also write a JUnit XML report here.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Print every case, not only the failures.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Re-decide recorded inputs (`decision_log.inputs: full`) against a candidate policy and
    /// report what it changes. Exit 1 with `--fail-on` when such a change is found.
    Replay {
        /// The candidate policy.
        #[arg(long)]
        policy: PathBuf,
        /// Input files (`hallpass.input/v1` JSON lines), in recorded order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Exit 1 when any input changes this way.
        #[arg(long, value_enum)]
        fail_on: Option<FailOn>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Read bodies up to this many bytes, as the server did (`limits.max_body_bytes`)
        /// [default: 1048576].
        #[arg(long)]
        max_body_bytes: Option<usize>,
        /// Replay only the inputs this policy revision decided (as `/policy` and the decision
        /// records name it): replaying them against that policy must reproduce every decision.
        #[arg(long)]
        revision: Option<String>,
    },
    /// Quarantine agents through a running hallpass's control API.
    Quarantine {
        #[command(subcommand)]
        verb: QuarantineVerb,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Approve or deny held requests through a running hallpass's control API.
    Approvals {
        #[command(subcommand)]
        verb: ApprovalsVerb,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List, add and revoke grants through a running hallpass's control API.
    Grants {
        #[command(subcommand)]
        verb: GrantsVerb,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// What `hallpass replay --fail-on` fails on.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FailOn {
    /// A decision that was a deny is now an allow (the change opens something).
    DenyToAllow,
    /// An allow is now a deny.
    AllowToDeny,
    /// Any change of decision or rule.
    Any,
}

#[derive(Subcommand)]
enum ApprovalsVerb {
    /// List the pending approvals (what each agent wants to do, and why it is held).
    List,
    /// Approve a held action: the agent's identical retry goes through (`--uses` times).
    Approve {
        /// The approval id (`ap_…`).
        id: String,
        /// How long the grant lasts, e.g. 10m (default: settings.approvals.grant_ttl).
        #[arg(long)]
        ttl: Option<String>,
        /// How many times the action may go through (default 1).
        #[arg(long)]
        uses: Option<u32>,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
        /// Approve although the pending approval is not shown in full.
        #[arg(long)]
        force: bool,
    },
    /// Deny a held action: the agent is told so until the approval expires.
    Deny {
        /// The approval id (`ap_…`).
        id: String,
        /// Why (recorded, shown to the agent's operator).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum GrantsVerb {
    /// List the grants in force.
    List,
    /// Add a task grant: lift holds of these rules for an agent until it expires.
    Add {
        /// The agent id.
        agent: String,
        /// Hold rule ids to lift (repeat or comma-separate).
        #[arg(long = "rule", required = true, value_delimiter = ',')]
        rules: Vec<String>,
        /// Only for this user.
        #[arg(long)]
        on_behalf_of: Option<String>,
        /// Only for these MCP tools (repeat or comma-separate).
        #[arg(long = "tool", value_delimiter = ',')]
        tools: Vec<String>,
        /// How long, e.g. 30m (at most settings.approvals.max_grant_ttl).
        #[arg(long)]
        ttl: String,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Revoke a grant.
    Revoke {
        /// The grant id (`gr_…`).
        id: String,
    },
}

/// Where the control API is and how to authenticate.
#[derive(clap::Args)]
struct ServerArgs {
    /// The control API, e.g. http://127.0.0.1:9193.
    #[arg(long, global = true, env = "HALLPASS_SERVER", default_value = "http://127.0.0.1:9193")]
    server: String,
    /// A file holding the bearer token (the first line).
    #[arg(long, global = true, env = "HALLPASS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum QuarantineVerb {
    /// List the quarantined agents.
    List,
    /// Quarantine an agent: every request it makes is denied.
    Add {
        /// The agent id.
        agent: String,
        /// How long, e.g. 1h (default: until lifted).
        #[arg(long = "for")]
        duration: Option<String>,
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift an agent's quarantine.
    Lift {
        /// The agent id.
        agent: String,
    },
}

/// Exit status for a configuration error (an invalid policy or settings file, a bad flag):
/// 64, as sysexits' EX_USAGE, so a supervisor tells it from a crash (1) and does not restart
/// into the same error.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Check { policy, method, path, host, headers, body, agent, on_behalf_of, principal, now, json } => {
            check(CheckArgs { policy, method, path, host, headers, body, agent, on_behalf_of, principal, now, json })
        }
        Command::Serve(o) => serve(o),
        Command::Test { paths, coverage_min, junit, verbose } => test(paths, coverage_min, junit, verbose),
        Command::Replay { policy, files, fail_on, json, revision, max_body_bytes } => {
            replay(&policy, &files, fail_on, json, revision.as_deref(), max_body_bytes)
        }
        Command::Quarantine { verb, server } => quarantine(verb, &server),
        Command::Approvals { verb, server } => {
            let seg =
                |id: &str| percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string();
            let (method, path, body) = match &verb {
                ApprovalsVerb::List => ("GET", "/v1/approvals".to_string(), None),
                ApprovalsVerb::Approve { id, ttl, uses, reason, force } => (
                    "POST",
                    format!("/v1/approvals/{}/approve", seg(id)),
                    Some(
                        serde_json::json!({ "ttl": ttl, "uses": uses, "reason": reason, "force": force.then_some(true) })
                            .to_string(),
                    ),
                ),
                ApprovalsVerb::Deny { id, reason } => (
                    "POST",
                    format!("/v1/approvals/{}/deny", seg(id)),
                    Some(serde_json::json!({ "reason": reason }).to_string()),
                ),
            };
            control_call("approvals", &server, method, &path, body.as_deref())
        }
        Command::Grants { verb, server } => {
            let (method, path, body) = match &verb {
                GrantsVerb::List => ("GET", "/v1/grants".to_string(), None),
                GrantsVerb::Add { agent, rules, on_behalf_of, tools, ttl, reason } => (
                    "POST",
                    "/v1/grants".to_string(),
                    Some(
                        serde_json::json!({
                            "agent": agent,
                            "on_behalf_of": on_behalf_of,
                            "rules": rules,
                            "tools": if tools.is_empty() { None } else { Some(tools) },
                            "ttl": ttl,
                            "reason": reason,
                        })
                        .to_string(),
                    ),
                ),
                GrantsVerb::Revoke { id } => (
                    "DELETE",
                    format!(
                        "/v1/grants/{}",
                        percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
                    ),
                    None,
                ),
            };
            control_call("grants", &server, method, &path, body.as_deref())
        }
    }
}

fn quarantine(verb: QuarantineVerb, server: &ServerArgs) -> ExitCode {
    let (method, path, body) = match &verb {
        QuarantineVerb::List => ("GET", "/v1/quarantine".to_string(), None),
        QuarantineVerb::Add { agent, duration, reason } => (
            "POST",
            "/v1/quarantine".to_string(),
            Some(serde_json::json!({ "agent": agent, "for": duration, "reason": reason }).to_string()),
        ),
        QuarantineVerb::Lift { agent } => {
            let enc = percent_encoding::utf8_percent_encode(agent, percent_encoding::NON_ALPHANUMERIC).to_string();
            ("DELETE", format!("/v1/quarantine/{enc}"), None)
        }
    };
    control_call("quarantine", server, method, &path, body.as_deref())
}

/// One call to the control API for `hallpass <verb>`: the answer on stdout, exit 0 on 2xx, 1
/// otherwise, 64 without a token.
fn control_call(verb: &str, server: &ServerArgs, method: &str, path: &str, body: Option<&str>) -> ExitCode {
    let Some(file) = &server.token_file else {
        eprintln!("hallpass {verb}: --token-file FILE is required (the control API needs a bearer token)");
        return ExitCode::from(EXIT_CONFIG);
    };
    let token = match std::fs::read_to_string(file) {
        Ok(t) => t.lines().next().unwrap_or("").trim().to_string(),
        Err(e) => {
            eprintln!("hallpass {verb}: cannot read {}: {e}", file.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match hallpass::control::client::call(&server.server, &token, method, path, body) {
        Ok((status, text)) => {
            println!("{}", text.trim_end());
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("hallpass {verb}: the control API answered {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("hallpass {verb}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn test(paths: Vec<PathBuf>, coverage_min: Option<f64>, junit: Option<PathBuf>, verbose: bool) -> ExitCode {
    use hallpass::policy_test as pt;
    let paths = if paths.is_empty() { vec![PathBuf::from(".")] } else { paths };
    let (mut passed, mut failed, mut invalid, mut below) = (0usize, 0usize, 0usize, 0usize);
    let mut results = Vec::new();
    let mut errors: Vec<(String, String)> = Vec::new();
    let mut files = Vec::new();
    for p in &paths {
        match pt::discover(p) {
            Ok(f) => files.extend(f),
            Err(e) => {
                eprintln!("INVALID {e}");
                errors.push((p.display().to_string(), e.to_string()));
                invalid += 1;
            }
        }
    }
    if files.is_empty() && invalid == 0 {
        eprintln!("no *_test.yaml suites found");
        invalid += 1;
    }
    for file in files {
        let (loaded, runs) = match pt::load(&file).and_then(|l| pt::run(&l).map(|r| (l, r))) {
            Ok(lr) => lr,
            Err(e) => {
                eprintln!("INVALID {e}");
                errors.push((file.display().to_string(), e.to_string()));
                invalid += 1;
                continue;
            }
        };
        for r in &runs {
            if r.passed() {
                passed += 1;
                if verbose {
                    println!("ok   {} / {}", file.display(), r.name);
                }
            } else {
                failed += 1;
                println!("FAIL {} / {}", file.display(), r.name);
                for f in &r.failures {
                    println!("     {f}");
                }
                println!("     why (hallpass check):");
                for line in pt::explain(&loaded.policy, r).lines() {
                    println!("       {line}");
                }
            }
        }
        // A deny expected without its rule passes on any deny, the default one too.
        for (r, case) in runs.iter().zip(&loaded.suite.cases) {
            if r.passed()
                && case.expect.rule.is_none()
                && case.expect.decision == "deny"
                && r.checked.decision.rule.as_str() == "default"
            {
                println!(
                    "warn {} / {}: passed on the default deny (no rule matched); give `rule:` to test what decides it",
                    file.display(),
                    r.name
                );
            }
        }
        let uncovered = pt::uncovered(&loaded.policy, &runs);
        let total = loaded.policy.rules.len();
        let covered = total - uncovered.len();
        let pct = if total == 0 { 100.0 } else { covered as f64 * 100.0 / total as f64 };
        println!(
            "{}: {} cases, rule coverage {covered}/{total} ({pct:.1}%){}",
            file.display(),
            runs.len(),
            if uncovered.is_empty() { String::new() } else { format!("; no case decided: {}", uncovered.join(", ")) }
        );
        if let Some(min) = coverage_min {
            if pct + 1e-9 < min {
                let msg = format!("rule coverage {pct:.1}% is below --coverage-min {min}%");
                println!("{}: {msg}", file.display());
                errors.push((format!("{} (coverage)", file.display()), msg));
                below += 1;
            }
        }
        results.push((file, runs));
    }
    if let Some(j) = &junit {
        if let Err(e) = std::fs::write(j, pt::junit(&results, &errors)) {
            eprintln!("cannot write {}: {e}", j.display());
            invalid += 1;
        }
    }
    let also = if invalid + below > 0 {
        format!(" ({invalid} suites invalid, {below} below the coverage minimum)")
    } else {
        String::new()
    };
    println!("{passed} passed, {failed} failed{also}");
    if invalid > 0 {
        ExitCode::from(2)
    } else if failed > 0 || below > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn replay(
    policy: &std::path::Path,
    files: &[PathBuf],
    fail_on: Option<FailOn>,
    json: bool,
    revision: Option<&str>,
    max_body_bytes: Option<usize>,
) -> ExitCode {
    use hallpass::replay::{Change, Replayer, Report};
    let candidate = match Policy::from_file(policy) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let replayer =
        Replayer::with_max_body_bytes(candidate, max_body_bytes.unwrap_or(hallpass::check::DEFAULT_MAX_BODY_BYTES));
    let mut report = Report::default();
    for f in files {
        match std::fs::File::open(f) {
            Ok(file) => hallpass::replay::replay_lines(&replayer, std::io::BufReader::new(file), revision, &mut report),
            Err(e) => {
                eprintln!("{}: {e}", f.display());
                return ExitCode::from(2);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        println!("{} inputs replayed against {}", report.total, policy.display());
        for c in
            [Change::Unchanged, Change::AllowToDeny, Change::DenyToAllow, Change::RuleChanged, Change::Indeterminate]
        {
            println!("  {:14} {}", c.as_str(), report.count(c));
        }
        if report.indeterminate_opens + report.indeterminate_closes > 0 {
            println!(
                "  of the indeterminate, {} would now be allowed and {} denied (they count for --fail-on)",
                report.indeterminate_opens, report.indeterminate_closes
            );
        }
        if report.revisions.len() > 1 {
            println!(
                "  note: the inputs were decided by {} policy revisions; each is compared with what its revision decided (--revision replays one)",
                report.revisions.len()
            );
        }
        if report.skipped > 0 {
            println!("  {:14} {} (decided by another revision than --revision)", "skipped", report.skipped);
        }
        if report.unreadable > 0 {
            println!("  {:14} {} (lines that are not hallpass.input/v1 records)", "unreadable", report.unreadable);
        }
        if !report.by_rule.is_empty() {
            println!("by rule (recorded → replayed):");
            for (k, v) in &report.by_rule {
                let counts: Vec<String> = v.iter().map(|(c, n)| format!("{c} {n}")).collect();
                println!("  {k}: {}", counts.join(", "));
            }
        }
        for (c, ex) in &report.examples {
            println!("examples, {c}:");
            for e in ex {
                let why = e.why.as_deref().map(|w| format!(" ({w})")).unwrap_or_default();
                println!(
                    "  {} {}: {} by {} → {} by {}{why}",
                    e.decision_id,
                    e.request,
                    e.recorded.decision,
                    e.recorded.rule,
                    e.replayed.decision,
                    e.replayed.rule
                );
            }
        }
    }
    if fail_on.is_some() && report.total == 0 {
        eprintln!("no input was replayed (wrong --revision, or no hallpass.input/v1 records): the gate cannot pass");
        return ExitCode::from(2);
    }
    if fail_on.is_some() && report.unreadable > 0 {
        eprintln!("{} lines could not be read as hallpass.input/v1 records: the gate cannot pass", report.unreadable);
        return ExitCode::from(2);
    }
    // An indeterminate input whose replayed decision differs counts against the gate: the
    // candidate may change it, and a gate must not be blinded by what was not recorded.
    let failing = match fail_on {
        None => 0,
        Some(FailOn::DenyToAllow) => report.count(Change::DenyToAllow) + report.indeterminate_opens,
        Some(FailOn::AllowToDeny) => report.count(Change::AllowToDeny) + report.indeterminate_closes,
        Some(FailOn::Any) => {
            report.count(Change::DenyToAllow)
                + report.count(Change::AllowToDeny)
                + report.count(Change::RuleChanged)
                + report.indeterminate_opens
                + report.indeterminate_closes
        }
    };
    if failing > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn validate(file: &std::path::Path) -> ExitCode {
    match Policy::from_file(file) {
        Ok(p) => {
            println!("{}: valid ({} rules)", file.display(), p.rules.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{}: invalid ({} error{})", file.display(), e.0.len(), if e.0.len() == 1 { "" } else { "s" });
            ExitCode::FAILURE
        }
    }
}

struct CheckArgs {
    policy: PathBuf,
    method: String,
    path: String,
    host: String,
    headers: Vec<String>,
    body: Option<String>,
    agent: Option<String>,
    on_behalf_of: Option<String>,
    principal: Option<String>,
    now: Option<String>,
    json: bool,
}

fn check(a: CheckArgs) -> ExitCode {
    let policy = match Policy::from_file(&a.policy) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let now = match a.now.as_deref().map(str::parse::<jiff::Timestamp>) {
        None => jiff::Timestamp::now(),
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("--now: not an RFC 3339 instant: {e}");
            return ExitCode::from(2);
        }
    };
    let mut b = CheckRequestBuilder::new(&a.method, &a.path).host(&a.host);
    let mut has_ct = false;
    for h in &a.headers {
        let Some((k, v)) = h.split_once(':') else {
            eprintln!("--header `{h}`: expected `name: value`");
            return ExitCode::from(2);
        };
        has_ct |= k.trim().eq_ignore_ascii_case("content-type");
        b = b.header(k.trim(), v.trim());
    }
    if let Some(body) = &a.body {
        if !has_ct {
            b = b.header("content-type", "application/json");
        }
        b = b.body(body.as_bytes().to_vec());
    }
    if let Some(p) = &a.principal {
        b = b.principal(p);
    }
    let mut req = match Request::from_check_request(b.build()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    req.agent_override = a.agent;
    req.on_behalf_of_override = a.on_behalf_of;
    let (decision, traces) = explain(&policy, &req, now);
    // Shown as `-` where the decision did not get to identities (invalid path, ambiguous).
    let ident = match hallpass::policy::eval::checked_path(&policy, &req) {
        Ok(_) => hallpass::policy::eval::resolve_identity(&policy, &req).unwrap_or_default(),
        Err(_) => Default::default(),
    };
    let mut decision = decision;
    if let (false, Some(why)) = (decision.holds.is_empty(), hallpass::approvals::unapprovable(&req)) {
        // As the Check answers it: denied by the hold, no approval id.
        if decision.verdict == hallpass::policy::Verdict::Held {
            decision.verdict = hallpass::policy::Verdict::Deny;
        }
        let m = decision.message.as_deref().unwrap_or("This request needs a human's approval.").to_string();
        decision.message = Some(format!("{m} This request cannot be approved: {why}.").into());
    } else if !decision.holds.is_empty() {
        // The id the approval would have, so an approver (or a test) can name it.
        decision.approval = Some(Box::new(hallpass::approvals::ApprovalState {
            id: Some(hallpass::approvals::approval_id(&req, ident)),
            status: None,
            expires_at: None,
            retry_after_s: policy.settings.approvals.retry_after_s,
            grant: None,
            approved_by: None,
            new: false,
        }));
    }
    if a.json {
        println!("{}", report::render_json(&policy, &decision, ident, &traces));
    } else {
        print!("{}", report::render_text(&policy, &decision, ident, &traces));
    }
    ExitCode::SUCCESS
}

fn init_logging(s: &ServerSettings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&s.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match s.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(o: Overrides) -> ExitCode {
    let settings = match ServerSettings::resolve(o) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hallpass serve: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let metrics = match Metrics::new() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("hallpass serve: cannot register metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Parse and validate the policy before binding anything.
    let store = match PolicyStore::open(&settings.policy, Some(metrics.clone())) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("{e}");
            eprintln!("hallpass serve: refusing to start with an invalid policy");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&settings);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hallpass serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async move {
        let bound = app::bind(&settings).await?;
        app::run(settings, bound, store, metrics, shutdown_signal()).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "hallpass serve failed");
            eprintln!("hallpass serve: {e}");
            // A listener that cannot be bound or a log file that cannot be opened is the
            // configuration's fault.
            match e {
                app::ServeError::Listen { .. } | app::ServeError::DecisionLog { .. } | app::ServeError::State(_) => {
                    ExitCode::from(EXIT_CONFIG)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
