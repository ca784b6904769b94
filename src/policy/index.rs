//! The rule index: rules of one effect by the literal first segment of their path patterns,
//! so a request meets only the rules that could match its path.

use std::collections::HashMap;

use super::rule::{Effect, Rule};

/// FNV-1a: a fast hasher for the policy's own read-only tables (rule index, agent sets). Their
/// keys come from the policy, not from requests, so flooding attacks on insertion do not apply;
/// request-built maps keep std's SipHash.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Build FNV hashers.
pub type FnvBuild = std::hash::BuildHasherDefault<Fnv>;

/// Rules of one effect, indexed by the literal first segment of their path patterns.
// INVARIANT: every list holds rule indexes in ascending (file) order, without duplicates.
// INVARIANT: with `fold_case`, every key is ASCII lowercase.
#[derive(Debug, Clone, Default)]
pub struct RuleIndex {
    by_first: HashMap<Box<str>, Vec<u32>, FnvBuild>,
    generic: Vec<u32>,
    fold_case: bool,
}

impl RuleIndex {
    /// Whether keys are lowercase (the deny index: deny rules match paths in any ASCII case).
    pub fn folds_case(&self) -> bool {
        self.fold_case
    }

    pub(super) fn build(rules: &[Rule], effect: Effect) -> RuleIndex {
        // The deny index holds every restrictive rule (deny and require_approval): both are
        // matched in the same pass, true or unknown, paths in any ASCII case.
        let mut idx = RuleIndex { fold_case: effect.restrictive(), ..RuleIndex::default() };
        for (i, r) in rules.iter().enumerate() {
            if r.effect.restrictive() != effect.restrictive() {
                continue;
            }
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let mut generic = false;
            match &r.paths {
                None => generic = true,
                Some(pats) => {
                    for p in pats {
                        match p.first_literal() {
                            Some(lit) => {
                                let key = if idx.fold_case { lit.to_ascii_lowercase() } else { lit.to_string() };
                                let list = idx.by_first.entry(Box::from(key.as_str())).or_default();
                                if list.last() != Some(&i) {
                                    list.push(i);
                                }
                            }
                            None => generic = true,
                        }
                    }
                }
            }
            if generic {
                idx.generic.push(i);
            }
        }
        idx
    }

    /// Candidate rule indexes for a path whose first segment is `first`, in file order.
    pub fn candidates<'a>(&'a self, first: &str) -> Candidates<'a> {
        let specific = self.by_first.get(first).map(Vec::as_slice).unwrap_or(&[]);
        Candidates { a: specific, b: &self.generic }
    }
}

/// A merge of two ascending index lists.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    a: &'a [u32],
    b: &'a [u32],
}

impl Iterator for Candidates<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let (next, a, b) = match (self.a.split_first(), self.b.split_first()) {
            (None, None) => return None,
            (Some((x, ra)), None) => (*x, ra, self.b),
            (None, Some((y, rb))) => (*y, self.a, rb),
            (Some((x, ra)), Some((y, rb))) => {
                if x < y {
                    (*x, ra, self.b)
                } else if y < x {
                    (*y, self.a, rb)
                } else {
                    (*x, ra, rb)
                }
            }
        };
        self.a = a;
        self.b = b;
        Some(next as usize)
    }
}
