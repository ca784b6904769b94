//! The policy language, version 1: parse → validate/compile → evaluate.
//!
//! - [`model`]: serde types of the file as written (unknown keys rejected).
//! - [`parse`]: YAML text → model, duplicate keys rejected, errors located.
//! - [`compile`]: model → [`Policy`] (validated, indexed, regexes and patterns compiled);
//!   [`rule`]: the compiled types; [`index`]: rules by first path segment;
//!   [`condition_parse`]: conditions and operators from YAML.
//! - [`pattern`], [`condition`], [`time`]: the matchers a compiled rule is made of.
//! - [`eval`]: the pure decision function, [`evaluate`].

pub mod compile;
pub mod condition;
pub mod condition_parse;
pub mod eval;
pub mod index;
pub mod model;
pub mod parse;
pub mod pattern;
pub mod rule;
pub mod time;

pub use compile::{Effect, Mode, Policy, Rule};
pub use condition::Tri;
pub use eval::{evaluate, explain, Decision, RuleId, Verdict};
pub use parse::{PolicyError, PolicyErrors};
