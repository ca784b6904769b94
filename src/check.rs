//! The Check as a pipeline of typed stages (architecture.md), one stage per line in
//! [`Checker::stages`]:
//!
//! ```text
//! CheckRequest ─► request     Envoy adapter → normalized Request, every upstream reading
//!              ─► identity    the policy's sources (an ambiguous one is `invalid_identity`)
//!              ─► quarantine  (agent-controls §5; no-op until the state-store issue)
//!              ─► cache       admission and lookup (`cache::DecisionCache::decide`)
//!              ─► evaluate    policy::eval, pure and synchronous
//!              ─► holds/grants ─► limits ─► credentials   (no-ops until their issues)
//!              ─► response    Decision → CheckResponse
//! ```
//! Metrics and the decision record are taken from the [`Checked`] by the gRPC service. Every
//! stage is synchronous and total; the whole runs under `catch_unwind`, so a bug denies
//! (`internal_error`) instead of failing open.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use jiff::Timestamp;

use crate::cache::DecisionCache;
use crate::decision_log::{summarize, RequestSummary};
use crate::policy::eval::{checked_path, resolve_identity, Identity};
use crate::policy::Decision;
use crate::reload::{LivePolicy, PolicyHandle};
use crate::request::Request;
use crate::response::{check_response, DecisionIds};

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
}

impl Checked {
    /// Whether the decision came from the cache.
    pub fn cache_hit(&self) -> bool {
        self.cache == CacheLookup::Hit
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
}

impl Checker {
    /// A pipeline over the live `policy`, without cache or records.
    pub fn new(policy: PolicyHandle) -> Checker {
        Checker {
            policy,
            ids: Arc::new(DecisionIds::new()),
            cache: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            keep_identities: false,
            include_query: false,
        }
    }

    /// Decide one CheckRequest at `now`.
    pub fn check(&self, req: CheckRequest, now: Timestamp) -> Checked {
        let live = self.policy.load_full();
        let decision_id = self.ids.next_id();
        let staged = catch_unwind(AssertUnwindSafe(|| self.stages(&live, req, &decision_id, now)));
        let (decision, cache, summary, response) = match staged {
            Ok(Some(s)) => s,
            Ok(None) => (Decision::invalid_request(), CacheLookup::Skipped, RequestSummary::empty(), None),
            Err(_) => (Decision::internal_error(), CacheLookup::Skipped, RequestSummary::empty(), None),
        };
        let response = response.unwrap_or_else(|| {
            check_response(
                &decision,
                Identity::default(),
                &decision_id,
                live.policy.settings.deny_status,
                &live.revision,
            )
        });
        Checked { decision, decision_id, response, cache, live, time: now, summary }
    }

    /// The stages, one per line. `None`: the CheckRequest carries no HTTP request.
    fn stages(
        &self,
        live: &LivePolicy,
        req: CheckRequest,
        decision_id: &str,
        now: Timestamp,
    ) -> Option<(Decision, CacheLookup, RequestSummary, Option<CheckResponse>)> {
        let request = self.request(req)?;
        let ident = resolve_identity(&live.policy, &request);
        // quarantine: agent-controls §5 (the state-store issue).
        let (decision, cache) = match &self.cache {
            Some(c) => c.decide(live, &request, ident, now),
            None => {
                (crate::policy::eval::evaluate_identified(&live.policy, &request, ident, now), CacheLookup::Skipped)
            }
        };
        // holds and grants, limits, credentials: agent-controls §1-2, §4, §6 (their issues).
        // Identities are shown only where deciding got to them (not for an invalid path or
        // an ambiguous identity).
        let shown = match (checked_path(&live.policy, &request), ident) {
            (Ok(_), Ok(i)) => i,
            _ => Identity::default(),
        };
        let response = check_response(&decision, shown, decision_id, live.policy.settings.deny_status, &live.revision);
        let owned = |v: Option<&str>| if self.keep_identities { v.map(str::to_owned) } else { None };
        let identities = (owned(shown.agent), owned(shown.on_behalf_of));
        let summary = self.summary(request, &decision, identities);
        Some((decision, cache, summary, Some(response)))
    }

    /// Stage `request`: the Envoy adapter (a body over the limit counts as truncated).
    fn request(&self, req: CheckRequest) -> Option<Request> {
        let mut r = Request::from_check_request(req).ok()?;
        if r.body.bytes.len() > self.max_body_bytes {
            r.body.truncated = true;
        }
        Some(r)
    }

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
