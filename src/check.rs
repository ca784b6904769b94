//! The Check as a pipeline of typed stages (architecture.md), one stage per line in
//! [`Checker::check`]:
//!
//! ```text
//! CheckRequest ─► request     Envoy adapter → normalized Request, every upstream reading
//!              ─► identity    the policy's sources (an ambiguous one is `invalid_identity`)
//!              ─► quarantine  the local copy of the quarantine list (agent-controls §5)
//!              ─► cache       admission and lookup (`cache::DecisionCache::decide`)
//!              ─► evaluate    policy::eval, pure and synchronous
//!              ─► holds       task grants (local copy); else the approval: one store step
//!                             spends an approval grant with the limits, or records the
//!                             pending approval (agent-controls §2)
//!              ─► limits      GCRA takes of the allowing rule's limits (agent-controls §4)
//!              ─► credentials (no-op until the credentials issue)
//!              ─► response    Decision → CheckResponse
//!              ─► deny count  toward automatic quarantine (never delays the answer)
//! ```
//! Metrics and the decision record are taken from the [`Checked`] by the gRPC service. The
//! synchronous stages run under `catch_unwind`, so a bug denies (`internal_error`) instead
//! of failing open; the only awaits are the state store's (limits, deny count), whose code
//! is total.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use jiff::Timestamp;

use crate::approvals::{self, ApprovalState, ApprovalStatus, PendingApproval};
use crate::cache::DecisionCache;
use crate::decision_log::{summarize, RequestSummary};
use crate::limits::{self, HitKind, LimitHit, OnStoreError};
use crate::policy::eval::{checked_path, evaluate_identified, resolve_identity, AmbiguousIdentity, Identity};
use crate::policy::pattern::Captures;
use crate::policy::{Decision, Mode, RuleId, Verdict};
use crate::quarantine::StateRuntime;
use crate::reload::{LivePolicy, PolicyHandle};
use crate::request::Request;
use crate::response::{check_response, rpc_call, DecisionIds, RpcCall};
use crate::state::{HoldAsk, HoldOutcome, Take, TakeOutcome};

/// Whether, and how, the decision cache answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLookup {
    /// Not consulted (no cache, or a decision that does not go through it: no body, an
    /// invalid path or identity, a path with readings the rule index does not cover).
    Skipped,
    /// Consulted; decided anew.
    Miss,
    /// Answered from the cache.
    Hit,
}

/// The outcome of one Check: what Envoy gets, and what metrics and the record say.
#[derive(Debug)]
pub struct Checked {
    /// The decision.
    pub decision: Decision,
    /// Its id, fresh for every Check (also on a cache hit).
    pub decision_id: String,
    /// What Envoy gets.
    pub response: CheckResponse,
    /// Whether the cache answered.
    pub cache: CacheLookup,
    /// The policy that decided (its revision goes into the record).
    pub live: Arc<LivePolicy>,
    /// When the Check was decided.
    pub time: Timestamp,
    /// What the decision record says about the request.
    pub summary: RequestSummary,
    /// The credential injected (its name), if any.
    pub credential: Option<Arc<str>>,
}

impl Checked {
    /// Whether the decision came from the cache.
    pub fn cache_hit(&self) -> bool {
        self.cache == CacheLookup::Hit
    }
}

/// Poll a future once with a no-op waker: its output if it completed without waiting. The
/// pipeline on the in-memory state store never waits, so tests, benchmarks and fuzz targets
/// run a Check synchronously with it (`None` would mean a Redis store was in use).
pub fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Default largest body hallpass parses; a longer one is treated as truncated (unknown).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// The pipeline's configuration and shared state: the live policy, the cache, decision ids.
#[derive(Clone)]
pub struct Checker {
    /// The live policy (swapped by reloads).
    pub policy: PolicyHandle,
    /// Decision ids.
    pub ids: Arc<DecisionIds>,
    /// The decision cache, if on.
    pub cache: Option<Arc<DecisionCache>>,
    /// Bodies longer than this are truncated (unknown).
    pub max_body_bytes: usize,
    /// Keep the identities for the decision record (a log is written).
    pub keep_identities: bool,
    /// Keep the decoded query for the decision record.
    pub include_query: bool,
    /// The state store and the quarantine list in force.
    pub state: Arc<StateRuntime>,
    /// Upstream credentials' tokens (agent-controls §6).
    pub tokens: Arc<crate::credentials::Tokens>,
}

impl Checker {
    /// A pipeline over the live `policy`, without cache or records, with an in-memory state
    /// store.
    pub fn new(policy: PolicyHandle) -> Checker {
        Checker {
            policy,
            ids: Arc::new(DecisionIds::new()),
            cache: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            keep_identities: false,
            include_query: false,
            state: Arc::new(StateRuntime::memory()),
            tokens: Arc::new(crate::credentials::Tokens::new()),
        }
    }

    /// Decide one CheckRequest at `now`.
    pub async fn check(&self, req: CheckRequest, now: Timestamp) -> Checked {
        let live = self.policy.load_full();
        let decision_id = self.ids.next_id();
        let staged = catch_unwind(AssertUnwindSafe(|| {
            let request = self.request(req)?;
            Some(self.decide(&live, request, &decision_id, now, true))
        }));
        // An OAuth2 credential without a valid token and a token request in flight: wait for
        // it (the one request every such Check waits for), then decide again, without waiting.
        let staged = match staged {
            Ok(Some(Decided::Wait(request, waiter))) => {
                let waited = std::time::Instant::now();
                waiter.wait().await;
                // Decided again at the time it is now (time windows, limits).
                let later = jiff::SignedDuration::try_from(waited.elapsed()).ok().and_then(|d| now.checked_add(d).ok());
                let now = later.unwrap_or(now);
                catch_unwind(AssertUnwindSafe(|| Some(self.decide(&live, *request, &decision_id, now, false))))
            }
            other => other,
        };
        let mut staged = match staged {
            Ok(Some(Decided::Staged(s))) => s,
            Ok(Some(Decided::Wait(..))) => Staged::refused(Decision::internal_error()),
            Ok(None) => Staged::refused(Decision::invalid_request()),
            Err(_) => Staged::refused(Decision::internal_error()),
        };
        if let Some(mut pending) = staged.pending.take() {
            let owner = pending.agent.as_deref().unwrap_or("");
            match pending.hold.take() {
                Some(hold) => self.hold(&live, &mut staged.decision, hold, &pending.takes, owner, now).await,
                None => self.limits(&live, &mut staged.decision, &pending.takes, owner, now).await,
            }
            let inject = self.credentials(&live, &mut staged.decision, pending.batch, pending.route.as_deref());
            staged.credential = inject.as_ref().and_then(|i| i.credential.clone());
            staged.response = Some(pending.respond(&staged.decision, &decision_id, &live, inject.as_ref()));
        }
        let response = staged.response.take().unwrap_or_else(|| {
            check_response(
                &staged.decision,
                Identity::default(),
                &decision_id,
                live.policy.settings.deny_status,
                &live.revision,
                None,
                None,
            )
        });
        if let (Some(auto), Some(agent)) = (live.policy.settings.quarantine, staged.agent.as_deref()) {
            if counts_toward_quarantine(&staged.decision) {
                self.state.count_deny(agent, &decision_id, auto, now).await;
            }
        }
        let mut summary = staged.summary;
        if !self.keep_identities {
            summary.agent = None;
            summary.on_behalf_of = None;
        }
        Checked {
            decision: staged.decision,
            decision_id,
            response,
            cache: staged.cache,
            live,
            time: now,
            summary,
            credential: staged.credential,
        }
    }

    /// The synchronous stages, one per line. With `may_wait`, a credential whose token is
    /// being requested hands the request back to wait for it.
    fn decide(
        &self,
        live: &LivePolicy,
        request: Request,
        decision_id: &str,
        now: Timestamp,
        may_wait: bool,
    ) -> Decided {
        let ident = resolve_identity(&live.policy, &request);
        let path_ok = checked_path(&live.policy, &request).is_ok();
        let quarantined = self.quarantine(path_ok, ident, now);
        let (decision, cache) = match (quarantined, &self.cache) {
            (true, _) => (Decision::builtin(RuleId::Quarantined), CacheLookup::Skipped),
            (false, Some(c)) => c.decide(live, &request, ident, now),
            (false, None) => (evaluate_identified(&live.policy, &request, ident, now), CacheLookup::Skipped),
        };
        let mut decision = decision;
        let mut hold = self.holds(live, &request, ident, &mut decision, now);
        // A credential without a token denies before the limits are charged (a request its
        // rule cannot let through consumes no budget); it is injected after them.
        let missing = match (hold.is_none() && decision.allowed()).then(|| self.token_missing(live, &decision)) {
            Some(Missing::Wait(w)) if may_wait => return Decided::Wait(Box::new(request), w),
            Some(Missing::Wait(_)) => self.token_missing_name(live, &decision),
            Some(Missing::Yes(name)) => Some(name),
            Some(Missing::No) | None => None,
        };
        if missing.is_some() {
            decision.verdict = Verdict::Deny;
            decision.rule = RuleId::CredentialUnavailable;
            decision.message = None;
        } else if decision.allowed() && credential_in_query(live, &request, &decision) {
            // The agent's own credential in the query would travel with the injected one.
            decision.verdict = Verdict::Deny;
            decision.message = Some(Arc::from(
                "A request to this upstream may not carry a credential in its query (access_token, api_key, key, …): hallpass supplies the credential.",
            ));
        }
        // The limits of the rule the request goes on to: now, or once an approval grant
        // lifts its holds (taken in the same store step).
        let takes = match &mut hold {
            Some(h) => takes_for(live, &request, ident, &mut h.lifted),
            None => takes_for(live, &request, ident, &mut decision),
        };
        // Identities are shown only where deciding got to them (not for an invalid path or
        // an ambiguous identity).
        let shown = match (path_ok, ident) {
            (true, Ok(i)) => i,
            _ => Identity::default(),
        };
        // Owned copies only where a later stage or the record needs them.
        let keep =
            self.keep_identities || !takes.is_empty() || hold.is_some() || live.policy.settings.quarantine.is_some();
        let owned = |v: Option<&str>| if keep { v.map(str::to_owned) } else { None };
        let (agent, on_behalf_of) = (owned(shown.agent), owned(shown.on_behalf_of));
        // A denied JSON-RPC call is answered in JSON-RPC (agent-controls §8); read only for a
        // request that is denied, or may be by its limits.
        // A request its limits may still refuse is parsed only if it can be JSON-RPC at all.
        // (Or by its credentials stage: a missing token.)
        let injects = decision.limited.iter().any(|l| live.policy.rules.get(l.rule).is_some_and(|r| r.injects()));
        let maybe_rpc = !decision.allowed()
            || ((!takes.is_empty() || injects) && memchr::memmem::find(&request.body.bytes, b"\"jsonrpc\"").is_some());
        let rpc = (live.policy.settings.mcp_jsonrpc_responses && maybe_rpc).then(|| rpc_call(&request)).flatten();
        // A batch's length, for the credentials stage (every element must agree).
        let batch = if decision.limited.iter().any(|l| l.element.is_some()) {
            match request.body.parsed() {
                crate::request::Parsed::Json(serde_json::Value::Array(items)) => Some(items.len()),
                _ => Some(0),
            }
        } else {
            None
        };
        let mut credential = missing;
        let (response, pending) = if takes.is_empty() && hold.is_none() {
            let deny_status = live.policy.settings.deny_status;
            let inject = self.credentials(live, &mut decision, batch, request.route_upstream.as_deref());
            credential = credential.or_else(|| inject.as_ref().and_then(|i| i.credential.clone()));
            let r = check_response(
                &decision,
                shown,
                decision_id,
                deny_status,
                &live.revision,
                rpc.as_ref(),
                inject.as_ref(),
            );
            (Some(r), None)
        } else {
            let route = request.route_upstream.clone();
            (
                None,
                Some(Pending {
                    takes,
                    hold,
                    agent: agent.clone(),
                    on_behalf_of: on_behalf_of.clone(),
                    rpc,
                    batch,
                    route,
                }),
            )
        };
        // Denies count toward automatic quarantine for the resolved agent, also when the path
        // was refused (probing with paths that cannot be read is a deny like any other).
        let counted = match (live.policy.settings.quarantine, ident) {
            (Some(_), Ok(i)) => i.agent.map(str::to_owned),
            _ => None,
        };
        let summary = self.summary(request, &decision, (agent, on_behalf_of));
        Decided::Staged(Staged { decision, cache, summary, response, pending, agent: counted, credential })
    }

    /// Stage `request`: the Envoy adapter (a body over the limit counts as truncated).
    fn request(&self, req: CheckRequest) -> Option<Request> {
        let mut r = Request::from_check_request(req).ok()?;
        if r.body.bytes.len() > self.max_body_bytes {
            r.body.truncated = true;
        }
        Some(r)
    }

    /// Stage `quarantine`: after `invalid_path` and `invalid_identity` (which evaluation
    /// reports), before every rule, in every mode.
    fn quarantine(&self, path_ok: bool, ident: Result<Identity<'_>, AmbiguousIdentity>, now: Timestamp) -> bool {
        match (path_ok, ident) {
            (true, Ok(Identity { agent: Some(a), .. })) => self.state.is_quarantined(a, now),
            _ => false,
        }
    }

    /// Stage `limits`: take from the buckets; over a limit → 429 (counted only in a dry
    /// run), store unreachable → each limit's `on_store_error`.
    async fn limits(
        &self,
        live: &LivePolicy,
        decision: &mut Decision,
        takes: &[LimitTake],
        owner: &str,
        now: Timestamp,
    ) {
        let plain: Vec<Take> = takes.iter().map(|t| t.take.clone()).collect();
        let taken = self.state.take(owner, &plain, now).await;
        apply_take(live, decision, takes, taken);
    }

    /// Stage `holds` (synchronous part): a task grant in force for every hold lifts them
    /// here; otherwise the request needs its approval, which the store answers (`Some`). In
    /// a global dry run the approval id is only recorded.
    fn holds(
        &self,
        live: &LivePolicy,
        request: &Request,
        ident: Result<Identity<'_>, AmbiguousIdentity>,
        decision: &mut Decision,
        now: Timestamp,
    ) -> Option<HoldPending> {
        if decision.holds.is_empty() || decision.lifted.is_none() {
            return None;
        }
        let ident = ident.unwrap_or_default();
        let settings = &live.policy.settings.approvals;
        let tools = approvals::tools(request);
        // Task grants lift holds one by one; the first hold left decides.
        let mut lifted_by = None;
        let mut left = Vec::new();
        for h in &decision.holds {
            match self.state.task_grant(&h.id, ident.agent, ident.on_behalf_of, &tools, now) {
                Some(g) => {
                    lifted_by.get_or_insert(g);
                }
                None => left.push(h.clone()),
            }
        }
        let Some(first) = left.first() else {
            let (grant, by) = lifted_by.unzip();
            decision.lift();
            decision.approval = Some(Box::new(ApprovalState {
                id: None,
                status: None,
                expires_at: None,
                retry_after_s: settings.retry_after_s,
                grant,
                approved_by: by,
                new: false,
            }));
            if let Some(m) = self.state.metrics() {
                m.approval_event("lifted");
            }
            return None;
        };
        decision.rule = RuleId::Rule(first.id.clone());
        decision.message = first.message.clone();
        if let Some(why) = approvals::unapprovable(request) {
            // An approval of this request could be stretched to cover another: refused.
            if decision.verdict == Verdict::Held {
                decision.verdict = Verdict::Deny;
            }
            decision.message = Some(Arc::from(format!(
                "{} This request cannot be approved: {why}.",
                first.message.as_deref().unwrap_or("This request needs a human's approval.")
            )));
            return None;
        }
        let id = approvals::approval_id(request, ident);
        let held = decision.verdict == Verdict::Held;
        decision.approval = Some(Box::new(ApprovalState {
            id: Some(id.clone()),
            status: held.then_some(ApprovalStatus::Pending),
            expires_at: held.then(|| approvals::add(now, settings.pending_ttl)),
            retry_after_s: settings.retry_after_s,
            grant: None,
            approved_by: None,
            new: false,
        }));
        if !held {
            // A global dry run: the request goes through; the record names the approval.
            return None;
        }
        let record =
            PendingApproval::of(&id, request, ident, &decision.holds, &live.policy.inputs.headers, settings, now);
        let mut lifted = decision.clone();
        lifted.lift();
        lifted.approval = None;
        Some(HoldPending { approval_id: id, record, lifted })
    }

    /// Stage `holds` (the store step): an approval grant in force lifts the holds (one use
    /// spent, with the limits of the rule the request goes on to, both or neither);
    /// otherwise the pending approval is recorded and the request stays held. A store that
    /// cannot answer: `state_unavailable` (503), the request is not let through.
    async fn hold(
        &self,
        live: &LivePolicy,
        decision: &mut Decision,
        hold: HoldPending,
        takes: &[LimitTake],
        owner: &str,
        now: Timestamp,
    ) {
        let settings = &live.policy.settings.approvals;
        let ask = HoldAsk {
            approval_id: &hold.approval_id,
            record: &hold.record,
            pending_ttl: settings.pending_ttl,
            max_pending: settings.max_pending,
            max_pending_per_agent: settings.max_pending_per_agent,
            binding: &hold.record.binding,
        };
        let plain: Vec<Take> = takes.iter().map(|t| t.take.clone()).collect();
        match self.state.hold(ask, owner, &plain, now).await {
            Ok(HoldOutcome::Lifted { grant, approved_by, take }) => {
                let mut lifted = hold.lifted;
                lifted.approval = Some(Box::new(ApprovalState {
                    id: Some(hold.approval_id),
                    status: None,
                    expires_at: None,
                    retry_after_s: settings.retry_after_s,
                    grant: Some(grant),
                    approved_by: Some(approved_by),
                    new: false,
                }));
                *decision = lifted;
                if !takes.is_empty() {
                    apply_take(live, decision, takes, Ok(take));
                }
            }
            Ok(HoldOutcome::Held { seen: 0, .. }) => {
                // Not recorded: the agent (or everyone) has as many pending approvals as the
                // settings allow. A deny of the agent's making (it counts toward quarantine).
                decision.verdict = Verdict::Deny;
                decision.approval = None;
                decision.message = Some(Arc::from(format!(
                    "{} It was not recorded for approval: too many approvals are pending (for this agent, or in all). Retry once pending ones are decided or expired.",
                    decision.message.as_deref().unwrap_or("This request needs a human's approval.")
                )));
            }
            Ok(HoldOutcome::Held { status, expires_at, seen }) => {
                if let Some(a) = decision.approval.as_mut() {
                    a.status = Some(status);
                    a.expires_at = Some(expires_at);
                    a.new = seen == 1;
                }
            }
            Err(_) => {
                decision.verdict = Verdict::Deny;
                decision.rule = RuleId::StateUnavailable;
                decision.message = None;
                // Nothing was recorded: the record names the approval id only.
                if let Some(a) = decision.approval.as_mut() {
                    a.status = None;
                    a.expires_at = None;
                }
            }
        }
    }
}

impl Checker {
    /// Whether a credential of a rule that allowed the request has no usable token now (and
    /// whether one is being requested).
    fn token_missing(&self, live: &LivePolicy, decision: &Decision) -> Missing {
        for by in &decision.limited {
            let Some(c) =
                live.policy.rules.get(by.rule).and_then(|r| r.credential).and_then(|i| live.policy.credentials.get(i))
            else {
                continue;
            };
            match self.tokens.lookup(c) {
                crate::oauth::Lookup::Ready(_) => {}
                crate::oauth::Lookup::Wait(w) => return Missing::Wait(w),
                crate::oauth::Lookup::Missing => return Missing::Yes(c.name.clone()),
            }
        }
        Missing::No
    }

    /// The first credential of a rule that allowed the request without a valid token now.
    fn token_missing_name(&self, live: &LivePolicy, decision: &Decision) -> Option<Arc<str>> {
        decision.limited.iter().find_map(|by| {
            let c = live.policy.rules.get(by.rule)?.credential.and_then(|i| live.policy.credentials.get(i))?;
            self.tokens.current(c).is_none().then(|| c.name.clone())
        })
    }

    /// Stage `credentials` (agent-controls §6): what an allow changes in the upstream
    /// request — the allowing rule's credential (its token from memory) and `strip_headers`.
    /// A batch's elements must all be allowed by rules that change it alike, or it is denied;
    /// a credential without a usable token denies with `credential_unavailable` (503).
    fn credentials(
        &self,
        live: &LivePolicy,
        decision: &mut Decision,
        batch: Option<usize>,
        route: Option<&str>,
    ) -> Option<crate::response::Injection> {
        if !decision.allowed() || decision.limited.is_empty() {
            return None;
        }
        let policy = &live.policy;
        let mut spec: Option<(Option<usize>, &[Box<str>])> = None;
        let mut covered = 0usize;
        let mut alike = true;
        for by in &decision.limited {
            let Some(rule) = policy.rules.get(by.rule) else { continue };
            if !rule.injects() {
                continue;
            }
            covered += 1;
            let this = (rule.credential, rule.strip_headers.as_slice());
            match spec {
                None => spec = Some(this),
                Some(s) if s == this => {}
                Some(_) => alike = false,
            }
        }
        let (credential, strip) = spec?;
        if !alike || batch.is_some_and(|n| covered != n) {
            decision.verdict = Verdict::Deny;
            decision.message = Some(Arc::from(
                "The elements of this batch are allowed by rules that change the upstream request differently (credentials, removed headers): send them one by one.",
            ));
            return None;
        }
        let mut inject = crate::response::Injection { set: None, remove: strip.to_vec(), credential: None };
        if let Some(c) = credential.and_then(|i| policy.credentials.get(i)) {
            // Bound to a route: Envoy must be sending this request to that upstream (the host
            // hallpass decided on is not what routes it: a port, a catch-all route).
            if let Some(want) = c.route.as_deref().filter(|w| route != Some(*w)) {
                decision.verdict = Verdict::Deny;
                decision.message = Some(Arc::from(format!(
                    "This request is not routed to the upstream the credential `{}` is for (route `{want}`): it is not sent with it.",
                    c.name
                )));
                return None;
            }
            match self.tokens.current(c) {
                Some(token) => {
                    inject.set = Some((c.header.clone(), crate::credentials::Secret::new(&c.value(&token))));
                    inject.credential = Some(c.name.clone());
                }
                None => {
                    decision.verdict = Verdict::Deny;
                    decision.rule = RuleId::CredentialUnavailable;
                    decision.message = None;
                    // Nothing is injected into a deny; the record names the credential.
                    return Some(crate::response::Injection {
                        set: None,
                        remove: Vec::new(),
                        credential: Some(c.name.clone()),
                    });
                }
            }
        }
        Some(inject)
    }
}

/// What [`Checker::decide`] gives: the staged decision, or the request handed back to wait for
/// a credential's token request in flight.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per Check and matched at once, as `Option<Staged>` was; boxing would allocate per Check"
)]
enum Decided {
    /// Decided (the async stages may follow).
    Staged(Staged),
    /// Wait, then decide again.
    Wait(Box<Request>, crate::oauth::Waiter),
}

/// Whether an allowed request's credential has no token now.
enum Missing {
    /// Every credential has one.
    No,
    /// This one has none.
    Yes(Arc<str>),
    /// One is being requested.
    Wait(crate::oauth::Waiter),
}

/// Whether a rule with a credential allowed a request whose query carries a credential
/// parameter (any case).
fn credential_in_query(live: &LivePolicy, request: &Request, decision: &Decision) -> bool {
    let credentialed =
        decision.limited.iter().any(|by| live.policy.rules.get(by.rule).is_some_and(|r| r.credential.is_some()));
    credentialed
        && request
            .query
            .iter()
            .chain(&request.query_alt)
            .any(|(k, _)| crate::credentials::CREDENTIAL_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p)))
}

/// What the store answered to a limits take, applied to the decision: over a limit → 429
/// (counted only in a dry run); the agent's quota of keys → deny; store unreachable → each
/// limit's `on_store_error`.
fn apply_take(
    live: &LivePolicy,
    decision: &mut Decision,
    takes: &[LimitTake],
    taken: Result<TakeOutcome, crate::state::StoreError>,
) {
    {
        match taken {
            Ok(TakeOutcome::Taken(_)) => {}
            // The agent already has its quota of buckets in use (key parts it chose): denied,
            // nothing charged; the agent's own doing, so it counts toward quarantine.
            Ok(TakeOutcome::OverQuota { index }) => match takes.get(index) {
                Some(t) => {
                    decision.verdict = match live.policy.settings.mode {
                        Mode::DryRun => Verdict::DryRunAllow { global: true },
                        Mode::Enforce => Verdict::Deny,
                    };
                    decision.message = Some(Arc::from(format!(
                        "Limit {} of rule `{}` cannot be applied: this agent has too many distinct limit keys in use.",
                        t.index, t.rule
                    )));
                    decision.limit = Some(t.hit(HitKind::KeyQuota));
                }
                None => store_failed(live, decision, takes, false),
            },
            Ok(TakeOutcome::Limited { index, retry_after_us }) => match takes.get(index) {
                Some(t) => {
                    let retry_after_s = retry_after_us.div_ceil(1_000_000).max(1);
                    decision.verdict = verdict_over_limit(&live.policy);
                    decision.limit = Some(t.hit(HitKind::Limited { retry_after_s }));
                }
                // An answer that names no limit of this request: the store is not answering
                // what was asked; treat it as a failed store (never as room).
                None => store_failed(live, decision, takes, false),
            },
            // A full memory store is not an outage to ride out: the key space it bounds is
            // one clients can grow, so `on_store_error: allow` must not open on it.
            Err(e) => store_failed(live, decision, takes, matches!(e, crate::state::StoreError::Full(_))),
        }
    }
}

impl Checker {
    /// What the record says about the request, moving its strings.
    fn summary(
        &self,
        request: Request,
        decision: &Decision,
        (agent, on_behalf_of): (Option<String>, Option<String>),
    ) -> RequestSummary {
        let mut summary = summarize(request, self.include_query);
        // A path refused by the policy's reading (`;` parameters) is reported like one
        // refused by normalization.
        if summary.path_error.is_none() {
            summary.path_error = decision.path_error;
        }
        summary.agent = agent;
        summary.on_behalf_of = on_behalf_of;
        summary
    }
}

/// What the synchronous stages hand to the asynchronous ones.
struct Staged {
    decision: Decision,
    cache: CacheLookup,
    summary: RequestSummary,
    /// Built at once unless limits must be taken first.
    response: Option<CheckResponse>,
    pending: Option<Pending>,
    /// The agent, where deciding got to it (deny counting).
    agent: Option<String>,
    /// The credential injected, for the record.
    credential: Option<Arc<str>>,
}

impl Staged {
    fn refused(decision: Decision) -> Staged {
        Staged {
            decision,
            cache: CacheLookup::Skipped,
            summary: RequestSummary::empty(),
            response: None,
            pending: None,
            agent: None,
            credential: None,
        }
    }
}

/// A held request waiting for the store's answer about its approval.
struct HoldPending {
    approval_id: String,
    /// The pending approval to record.
    record: PendingApproval,
    /// The decision once its holds are lifted.
    lifted: Decision,
}

/// A response waiting for the holds or limits stage.
struct Pending {
    takes: Vec<LimitTake>,
    hold: Option<HoldPending>,
    agent: Option<String>,
    on_behalf_of: Option<String>,
    rpc: Option<RpcCall>,
    /// A batch's length, when rules that inject allowed its elements.
    batch: Option<usize>,
    /// The route Envoy selected (its `hallpass` `upstream`).
    route: Option<String>,
}

impl Pending {
    fn respond(
        &self,
        decision: &Decision,
        decision_id: &str,
        live: &LivePolicy,
        inject: Option<&crate::response::Injection>,
    ) -> CheckResponse {
        let ident = Identity { agent: self.agent.as_deref(), on_behalf_of: self.on_behalf_of.as_deref() };
        check_response(
            decision,
            ident,
            decision_id,
            live.policy.settings.deny_status,
            &live.revision,
            self.rpc.as_ref(),
            inject,
        )
    }
}

/// One bucket to take from, and the limit it belongs to.
struct LimitTake {
    take: Take,
    rule: Arc<str>,
    index: usize,
    quota: u64,
    window_s: u64,
    on_store_error: OnStoreError,
    per_agent: bool,
}

impl LimitTake {
    fn hit(&self, kind: HitKind) -> LimitHit {
        LimitHit {
            rule: self.rule.clone(),
            index: self.index,
            kind,
            quota: self.quota,
            window_s: self.window_s,
            per_agent: self.per_agent,
        }
    }
}

/// The state store failed (or answered nonsense): the first limit that denies on a store
/// error decides (`state_unavailable`, 503); if none does, the request goes through uncounted.
/// `always_deny`: every limit denies (the memory store is full).
fn store_failed(live: &LivePolicy, decision: &mut Decision, takes: &[LimitTake], always_deny: bool) {
    if let Some(t) = takes.iter().find(|t| always_deny || t.on_store_error == OnStoreError::Deny) {
        decision.limit = Some(t.hit(HitKind::StoreError));
        if live.policy.settings.mode == Mode::DryRun {
            decision.verdict = Verdict::DryRunAllow { global: true };
        } else {
            decision.verdict = Verdict::Deny;
            decision.rule = RuleId::StateUnavailable;
        }
    } else if let Some(t) = takes.first() {
        decision.limit = Some(t.hit(HitKind::StoreError));
    }
}

/// A limit refuses: 429, or in a global dry run, let through and recorded.
fn verdict_over_limit(policy: &crate::policy::Policy) -> Verdict {
    match policy.settings.mode {
        Mode::DryRun => Verdict::DryRunAllow { global: true },
        Mode::Enforce => Verdict::RateLimited,
    }
}

/// The limit takes for a decision; a key part or cost that cannot be read (or a cost that can
/// never fit) denies it instead, nothing charged.
fn takes_for(
    live: &LivePolicy,
    request: &Request,
    ident: Result<Identity<'_>, AmbiguousIdentity>,
    decision: &mut Decision,
) -> Vec<LimitTake> {
    match limit_takes(&live.policy, request, ident, decision) {
        Ok(t) => t,
        Err(hit) => {
            decision.verdict = match live.policy.settings.mode {
                Mode::DryRun => Verdict::DryRunAllow { global: true },
                Mode::Enforce => Verdict::Deny,
            };
            decision.message = Some(Arc::from(match hit.kind {
                HitKind::TooLarge => format!(
                    "The cost of this request exceeds what limit {} of rule `{}` allows at once (its burst): it can never go through.",
                    hit.index, hit.rule
                ),
                _ => format!(
                    "Limit {} of rule `{}` cannot be applied: a key part or the cost is missing or ambiguous in this request.",
                    hit.index, hit.rule
                ),
            }));
            decision.limit = Some(hit);
            Vec::new()
        }
    }
}

/// The takes for every limit of every allow rule with limits that allowed the request (or
/// one of its batch elements); the same bucket charged by several elements is charged once
/// with their summed cost. `Err`: a key part or a cost is unknown (deny, charge nothing).
fn limit_takes(
    policy: &crate::policy::Policy,
    req: &Request,
    ident: Result<Identity<'_>, AmbiguousIdentity>,
    decision: &Decision,
) -> Result<Vec<LimitTake>, LimitHit> {
    if decision.limited.is_empty() || !decision.allowed() {
        return Ok(Vec::new());
    }
    let ident = ident.unwrap_or_default();
    let path = checked_path(policy, req).unwrap_or("");
    let mut out: Vec<(LimitTake, f64)> = Vec::new();
    for by in &decision.limited {
        let Some(rule) = policy.rules.get(by.rule) else { continue };
        let mut caps = Captures::new();
        if let Some(paths) = &rule.paths {
            let _ = paths.iter().any(|p| p.matches(path, &mut caps));
        }
        for (index, limit) in rule.limits.iter().enumerate() {
            let unknown = || LimitHit {
                rule: rule.id.clone(),
                index,
                kind: HitKind::Unknown,
                quota: limit.count,
                window_s: limit.window_s,
                per_agent: limit.per.contains(&limits::KeyPart::Agent),
            };
            // A body that may be a JSON-RPC batch but was not decided element by element
            // (longer than hallpass decides, mixed, unreadable, truncated) cannot be charged
            // per element: the limit is unknown.
            if by.element.is_none() && limits::unsplit_batch(req) {
                return Err(unknown());
            }
            let key = limits::key(&rule.id, index, limit, req, (ident.agent, ident.on_behalf_of), &caps, by.element)
                .map_err(|_| unknown())?;
            let cost = limits::cost(limit, req, by.element).map_err(|_| unknown())?;
            match out.iter_mut().find(|(t, _)| t.take.key == key) {
                Some((_, c)) => *c += cost,
                None => out.push((
                    LimitTake {
                        take: Take { key, interval_us: limit.interval_us, burst: limit.burst, cost_us: 0 },
                        rule: rule.id.clone(),
                        index,
                        quota: limit.count,
                        window_s: limit.window_s,
                        on_store_error: limit.on_store_error,
                        per_agent: limit.per.contains(&limits::KeyPart::Agent),
                    },
                    cost,
                )),
            }
        }
    }
    let mut takes = Vec::with_capacity(out.len());
    for (mut t, cost) in out {
        let Some(limit) = policy.rules.iter().find(|r| r.id == t.rule).and_then(|r| r.limits.get(t.index)) else {
            continue;
        };
        t.take = limits::take(std::mem::take(&mut t.take.key), limit, cost);
        if t.take.cost_us > t.take.interval_us.saturating_mul(t.take.burst) {
            // More than the bucket holds: it can never fit, so no retry-after would be true.
            return Err(t.hit(HitKind::TooLarge));
        }
        takes.push(t);
    }
    Ok(takes)
}

/// Whether a deny counts toward automatic quarantine: a deny by policy (a rule, the default,
/// a limit, an invalid path), not one hallpass makes about itself or its dependencies, and
/// not the quarantine itself.
fn counts_toward_quarantine(d: &Decision) -> bool {
    // A 429 from a bucket the agent shares with others (its key has no `agent` part) may be
    // another agent's doing: it does not count, or one agent could get another quarantined.
    let shared_bucket = d
        .limit
        .as_ref()
        .is_some_and(|h| matches!(h.kind, HitKind::Limited { .. } | HitKind::StoreError) && !h.per_agent);
    // Being held is how approvals work (the agent retries the same call): only a new pending
    // approval counts, so an agent flooding approvers with distinct actions is still caught.
    let held_again = d.verdict == Verdict::Held && !d.approval.as_ref().is_some_and(|a| a.new);
    !d.allowed()
        && !shared_bucket
        && !held_again
        && !matches!(
            d.rule,
            RuleId::Quarantined
                | RuleId::StateUnavailable
                | RuleId::CredentialUnavailable
                | RuleId::InternalError
                | RuleId::InvalidRequest
        )
}
