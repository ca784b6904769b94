//! Conditions and operator tests, with three-valued logic.
//!
//! A test yields [`Tri::True`], [`Tri::False`] or [`Tri::Unknown`]. Unknown comes from an
//! unknown body, a reference to something absent or ambiguous, an operator that does not fit
//! the value's type, a request string that does not read as a number where a number is
//! needed, or repeated query values / header parts that disagree. Allow rules need True; deny
//! rules match on True or Unknown (see `eval`).

use std::sync::Arc;

use regex::Regex;
use serde_json::Value as Json;

use crate::request::body::{lookup_key, KeyLookup};

/// A three-valued truth value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    /// Holds.
    True,
    /// Does not hold.
    False,
    /// Cannot be decided from what the request says.
    Unknown,
}

impl Tri {
    /// From a boolean.
    pub fn from_bool(b: bool) -> Tri {
        if b {
            Tri::True
        } else {
            Tri::False
        }
    }

    /// Three-valued conjunction.
    pub fn and(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::False, _) | (_, Tri::False) => Tri::False,
            (Tri::Unknown, _) | (_, Tri::Unknown) => Tri::Unknown,
            _ => Tri::True,
        }
    }

    /// Three-valued disjunction.
    pub fn or(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::True, _) | (_, Tri::True) => Tri::True,
            (Tri::Unknown, _) | (_, Tri::Unknown) => Tri::Unknown,
            _ => Tri::False,
        }
    }
}

impl std::ops::Not for Tri {
    type Output = Tri;
    /// Three-valued negation: unknown stays unknown.
    fn not(self) -> Tri {
        match self {
            Tri::True => Tri::False,
            Tri::False => Tri::True,
            Tri::Unknown => Tri::Unknown,
        }
    }
}

/// What a `{ ref: NAME }` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefName {
    /// The caller's agent id.
    Agent,
    /// The human/user the agent acts for.
    OnBehalfOf,
    /// A path capture.
    Capture(Arc<str>),
    /// A request header (lowercase name).
    Header(Box<str>),
    /// A query parameter.
    Query(Box<str>),
}

impl RefName {
    /// Parse `agent`, `on_behalf_of`, `path.<capture>`, `header.<name>`, `query.<name>`.
    pub fn parse(s: &str) -> Result<RefName, String> {
        match s {
            "agent" => return Ok(RefName::Agent),
            "on_behalf_of" => return Ok(RefName::OnBehalfOf),
            _ => {}
        }
        if let Some(c) = s.strip_prefix("path.") {
            if !c.is_empty() {
                return Ok(RefName::Capture(Arc::from(c)));
            }
        }
        if let Some(h) = s.strip_prefix("header.") {
            if h.is_empty() {
                return Err("`header.` needs a header name".into());
            }
            if h.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(format!("header names are lowercase: write `header.{}`", h.to_ascii_lowercase()));
            }
            return Ok(RefName::Header(Box::from(h)));
        }
        if let Some(q) = s.strip_prefix("query.") {
            if !q.is_empty() {
                return Ok(RefName::Query(Box::from(q)));
            }
        }
        Err(format!(
            "unknown reference `{s}`; a reference is `agent`, `on_behalf_of`, `path.<capture>`, `header.<name>` or `query.<name>`"
        ))
    }
}

/// The value of a resolved reference.
#[derive(Debug, Clone, Copy)]
pub enum RefValue<'a> {
    /// A string from the request line (capture, query value, header value): read leniently
    /// as a number where it meets a number.
    Text(&'a str),
    /// An identity string.
    Ident(&'a str),
}

impl<'a> RefValue<'a> {
    fn text(self) -> &'a str {
        match self {
            RefValue::Text(s) | RefValue::Ident(s) => s,
        }
    }
}

/// Resolves references against the request being decided.
pub trait Resolve {
    /// `None` when the referenced thing is absent or ambiguous (the test is then unknown).
    fn resolve(&self, r: &RefName) -> Option<RefValue<'_>>;
}

/// A value in a test: a literal from the policy or a reference into the request.
#[derive(Debug, Clone)]
pub enum Operand {
    /// A literal (JSON) value.
    Lit(Json),
    /// `{ ref: NAME }`.
    Ref(RefName),
}

/// One operator test.
#[derive(Debug, Clone)]
pub enum Test {
    /// JSON equality (numbers by value).
    Equals(Operand),
    /// Equal to one of the list.
    In(Vec<Operand>),
    /// Equal to none of the list; false on a missing field.
    NotIn(Vec<Operand>),
    /// String starts with.
    Prefix(Operand),
    /// String ends with.
    Suffix(Operand),
    /// String contains.
    Contains(Operand),
    /// Whole-string regex match (the regex is anchored at compile time).
    Matches(Regex),
    /// Number comparison `<`.
    Lt(Operand),
    /// Number comparison `<=`.
    Lte(Operand),
    /// Number comparison `>`.
    Gt(Operand),
    /// Number comparison `>=`.
    Gte(Operand),
    /// String length in characters or array length at most n.
    MaxLen(u64),
    /// Field present (true) or absent (false).
    Exists(bool),
    /// Array whose every element passes.
    Each(Box<Test>),
    /// Array with at least one passing element.
    Some(Box<Test>),
}

/// A condition on a JSON document.
#[derive(Debug, Clone)]
pub enum Condition {
    /// Every part holds.
    All(Vec<Condition>),
    /// At least one part holds.
    Any(Vec<Condition>),
    /// Negation.
    Not(Box<Condition>),
    /// A test on the value at a JSON Pointer.
    Field {
        /// Decoded reference tokens of the pointer (empty = the whole document).
        pointer: Vec<Box<str>>,
        /// The test.
        test: Test,
    },
}

/// The document a condition reads.
#[derive(Debug, Clone, Copy)]
pub enum Doc<'a> {
    /// Nothing can be said about it (absent, truncated, unparseable, other type).
    Unknown,
    /// Known to be missing (e.g. `params.arguments` of a call without arguments).
    Missing,
    /// A parsed value.
    Value(&'a Json),
}

/// A value being tested.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// From a JSON document: strict JSON types.
    Json(&'a Json),
    /// A string from the request line: read leniently as a number where it meets one.
    Text(&'a str),
}

/// Read a request-line string as a number: Rust's `f64` parsing, minus infinities and NaN.
pub fn lenient_number(s: &str) -> Option<f64> {
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() => Some(n),
        _ => None,
    }
}

/// A number as read from JSON or a request-line string: integers are kept exact, so that
/// two different 64-bit ids never compare equal because they round to the same f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// An integer, exactly.
    Int(i128),
    /// Anything else, as f64.
    Float(f64),
}

/// 2^53: integers up to this magnitude are exact in an f64.
const F64_EXACT: u128 = 1 << 53;

impl Num {
    /// From a JSON number.
    pub fn from_json(n: &serde_json::Number) -> Option<Num> {
        if let Some(i) = n.as_i64() {
            Some(Num::Int(i128::from(i)))
        } else if let Some(u) = n.as_u64() {
            Some(Num::Int(i128::from(u)))
        } else {
            n.as_f64().filter(|f| f.is_finite()).map(Num::Float)
        }
    }

    /// From a request-line string, read leniently (see [`lenient_number`]).
    pub fn from_text(s: &str) -> Option<Num> {
        let f = lenient_number(s)?;
        let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(i) = s.strip_prefix('+').unwrap_or(s).parse::<i128>() {
                return Some(Num::Int(i));
            }
        }
        Some(Num::Float(f))
    }

    /// Compare; `None` when the order cannot be known (a large integer against a float
    /// it rounds to).
    pub fn cmp3(self, other: Num) -> Option<std::cmp::Ordering> {
        use std::cmp::Ordering;
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => {
                let exact = a.cmp(&b);
                // Past 2^53 a JavaScript or Go `float64` upstream reads both as the nearest
                // f64: where that reading orders them otherwise, the order is unknown.
                if a.unsigned_abs() > F64_EXACT || b.unsigned_abs() > F64_EXACT {
                    let rounded = (a as f64).partial_cmp(&(b as f64));
                    if rounded != Some(exact) {
                        return None;
                    }
                }
                Some(exact)
            }
            (Num::Float(a), Num::Float(b)) => a.partial_cmp(&b),
            (Num::Int(a), Num::Float(b)) => int_float(a, b),
            (Num::Float(a), Num::Int(b)) => int_float(b, a).map(Ordering::reverse),
        }
    }
}

fn int_float(a: i128, b: f64) -> Option<std::cmp::Ordering> {
    let af = a as f64;
    if a.unsigned_abs() <= F64_EXACT {
        return af.partial_cmp(&b);
    }
    // Rounding is monotonic: a strict order of the rounded value is the true order; equality
    // after rounding says nothing.
    match af.partial_cmp(&b) {
        Some(std::cmp::Ordering::Equal) | None => None,
        o => o,
    }
}

/// The integer a truncating parser reads from the start of a request-line string
/// (JavaScript `parseInt`, PHP `intval`, Ruby `to_i`): an optional sign and the leading
/// digits (`0.5` reads 0, `5e2` reads 5, `12px` reads 12).
fn int_prefix(s: &str) -> Option<i128> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    let v: i128 = digits.get(..n).filter(|d| !d.is_empty())?.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// A test of a request-line string read as a number: as Rust's `f64` parsing reads it and,
/// when that is a fraction, also as a truncating integer parser reads it; readings that
/// disagree are unknown (`/accounts/0.5` must not slip past a deny rule on account 0). A
/// whole number keeps its one reading, as the contract fixes it (`5e2` and `500.` are 500).
fn with_text_num(s: &str, f: impl Fn(Num) -> Tri) -> Tri {
    let Some(full) = Num::from_text(s) else { return Tri::Unknown };
    let r = f(full);
    let fraction = matches!(full, Num::Float(x) if x.fract() != 0.0);
    match int_prefix(s) {
        Some(p) if fraction && f(Num::Int(p)) != r => Tri::Unknown,
        _ => r,
    }
}

fn num_eq(a: Option<Num>, b: Option<Num>) -> Tri {
    match (a, b) {
        (Some(a), Some(b)) => match a.cmp3(b) {
            Some(o) => Tri::from_bool(o == std::cmp::Ordering::Equal),
            None => Tri::Unknown,
        },
        _ => Tri::Unknown,
    }
}

/// JSON equality with numbers compared by value (1 equals 1.0; large integers exactly).
/// Values of different JSON types are neither equal nor unequal: upstreams coerce
/// (`["admin"] == "admin"` in JavaScript, `"42"` binds to an int field in many binders), so
/// the result is unknown.
pub fn json_eq(a: &Json, b: &Json) -> Tri {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => num_eq(Num::from_json(x), Num::from_json(y)),
        (Json::Array(x), Json::Array(y)) => {
            if x.len() != y.len() {
                return Tri::False;
            }
            x.iter().zip(y).fold(Tri::True, |acc, (x, y)| acc.and(json_eq(x, y)))
        }
        (Json::Object(x), Json::Object(y)) => {
            if x.len() != y.len() {
                return Tri::False;
            }
            x.iter().fold(Tri::True, |acc, (k, v)| match y.get(k) {
                Some(w) => acc.and(json_eq(v, w)),
                None => Tri::False,
            })
        }
        (Json::String(x), Json::String(y)) => Tri::from_bool(x == y),
        (Json::Bool(x), Json::Bool(y)) => Tri::from_bool(x == y),
        (Json::Null, Json::Null) => Tri::True,
        _ => Tri::Unknown,
    }
}

/// Where a JSON Pointer leads.
pub(crate) enum Found<'a> {
    Value(&'a Json),
    Missing,
    Unknown,
}

pub(crate) fn lookup<'a>(root: &'a Json, pointer: &[Box<str>]) -> Found<'a> {
    let mut cur = root;
    for tok in pointer {
        cur = match cur {
            Json::Object(map) => match lookup_key(map, tok) {
                KeyLookup::Found(v) => v,
                // Only a key equal under case folding: Go's encoding/json binds it.
                KeyLookup::Folded => return Found::Unknown,
                KeyLookup::Missing => return Found::Missing,
            },
            Json::Array(items) => {
                if &**tok == "-" {
                    return Found::Missing;
                }
                // RFC 6901 array index: "0" or digits without a leading zero; any other
                // token means the document's shape is not what the policy expects.
                let valid = !tok.is_empty()
                    && tok.bytes().all(|b| b.is_ascii_digit())
                    && (tok.len() == 1 || !tok.starts_with('0'));
                if !valid {
                    return Found::Unknown;
                }
                match tok.parse::<usize>().ok().and_then(|i| items.get(i)) {
                    Some(v) => v,
                    None => return Found::Missing,
                }
            }
            // A pointer into a scalar: the shape is not what the policy expects.
            _ => return Found::Unknown,
        };
    }
    Found::Value(cur)
}

impl Condition {
    /// Evaluate on a document.
    pub fn eval(&self, doc: Doc<'_>, refs: &dyn Resolve) -> Tri {
        match self {
            Condition::All(parts) => {
                let mut acc = Tri::True;
                for p in parts {
                    acc = acc.and(p.eval(doc, refs));
                    if acc == Tri::False {
                        return acc;
                    }
                }
                acc
            }
            Condition::Any(parts) => {
                let mut acc = Tri::False;
                for p in parts {
                    acc = acc.or(p.eval(doc, refs));
                    if acc == Tri::True {
                        return acc;
                    }
                }
                acc
            }
            Condition::Not(c) => !c.eval(doc, refs),
            Condition::Field { pointer, test } => match doc {
                Doc::Unknown => Tri::Unknown,
                Doc::Missing => test.on_missing(refs),
                Doc::Value(root) => match lookup(root, pointer) {
                    Found::Unknown => Tri::Unknown,
                    Found::Missing => test.on_missing(refs),
                    Found::Value(v) => test.eval(Subject::Json(v), refs),
                },
            },
        }
    }
}

impl Test {
    /// The result on a missing field: false, except `exists: false`; but unknown when the
    /// test compares with a reference to something absent or ambiguous (fail closed: a
    /// missing field and a missing reference say nothing about each other).
    pub fn on_missing(&self, refs: &dyn Resolve) -> Tri {
        if matches!(self, Test::Exists(false)) {
            return Tri::True;
        }
        if self.has_unresolved_ref(refs) {
            return Tri::Unknown;
        }
        Tri::False
    }

    fn has_unresolved_ref(&self, refs: &dyn Resolve) -> bool {
        let unresolved = |o: &Operand| matches!(o, Operand::Ref(r) if refs.resolve(r).is_none());
        match self {
            Test::Equals(o) | Test::Prefix(o) | Test::Suffix(o) | Test::Contains(o) => unresolved(o),
            Test::Lt(o) | Test::Lte(o) | Test::Gt(o) | Test::Gte(o) => unresolved(o),
            Test::In(l) | Test::NotIn(l) => l.iter().any(unresolved),
            Test::Each(t) | Test::Some(t) => t.has_unresolved_ref(refs),
            Test::Matches(_) | Test::MaxLen(_) | Test::Exists(_) => false,
        }
    }

    /// Evaluate on several request-line values (repeated query parameter, header parts):
    /// true if it holds for every value, false if for none, unknown otherwise. No values at
    /// all is a missing field.
    pub fn eval_values<'v>(&self, values: impl Iterator<Item = &'v str>, refs: &dyn Resolve) -> Tri {
        let mut any_true = false;
        let mut any_false = false;
        for v in values {
            match self.eval(Subject::Text(v), refs) {
                Tri::True => any_true = true,
                Tri::False => any_false = true,
                Tri::Unknown => return Tri::Unknown,
            }
            if any_true && any_false {
                return Tri::Unknown;
            }
        }
        match (any_true, any_false) {
            (false, false) => self.on_missing(refs),
            (true, _) => Tri::True,
            (false, true) => Tri::False,
        }
    }

    /// Evaluate on a present value.
    pub fn eval(&self, v: Subject<'_>, refs: &dyn Resolve) -> Tri {
        match self {
            Test::Exists(want) => Tri::from_bool(*want),
            Test::Equals(o) => equals(v, o, refs),
            Test::In(list) => in_list(v, list, refs),
            Test::NotIn(list) => !in_list(v, list, refs),
            Test::Prefix(o) => string_op(v, o, refs, |s, p| s.starts_with(p)),
            Test::Suffix(o) => string_op(v, o, refs, |s, p| s.ends_with(p)),
            Test::Contains(o) => string_op(v, o, refs, |s, p| s.contains(p)),
            Test::Matches(re) => match as_str(v) {
                Some(s) => Tri::from_bool(re.is_match(s)),
                None => Tri::Unknown,
            },
            Test::Lt(o) => compare(v, o, refs, |o| o.is_lt()),
            Test::Lte(o) => compare(v, o, refs, |o| o.is_le()),
            Test::Gt(o) => compare(v, o, refs, |o| o.is_gt()),
            Test::Gte(o) => compare(v, o, refs, |o| o.is_ge()),
            Test::MaxLen(n) => match v {
                Subject::Json(Json::String(s)) => Tri::from_bool(s.chars().count() as u64 <= *n),
                Subject::Text(s) => Tri::from_bool(s.chars().count() as u64 <= *n),
                Subject::Json(Json::Array(a)) => Tri::from_bool(a.len() as u64 <= *n),
                Subject::Json(_) => Tri::Unknown,
            },
            Test::Each(inner) => match v {
                Subject::Json(Json::Array(items)) => {
                    let mut acc = Tri::True;
                    for item in items {
                        acc = acc.and(inner.eval(Subject::Json(item), refs));
                        if acc == Tri::False {
                            break;
                        }
                    }
                    acc
                }
                _ => Tri::Unknown,
            },
            Test::Some(inner) => match v {
                Subject::Json(Json::Array(items)) => {
                    let mut acc = Tri::False;
                    for item in items {
                        acc = acc.or(inner.eval(Subject::Json(item), refs));
                        if acc == Tri::True {
                            break;
                        }
                    }
                    acc
                }
                _ => Tri::Unknown,
            },
        }
    }
}

fn in_list(v: Subject<'_>, list: &[Operand], refs: &dyn Resolve) -> Tri {
    let mut acc = Tri::False;
    for o in list {
        acc = acc.or(equals(v, o, refs));
        if acc == Tri::True {
            break;
        }
    }
    acc
}

fn as_str(v: Subject<'_>) -> Option<&str> {
    match v {
        Subject::Json(Json::String(s)) => Some(s),
        Subject::Text(s) => Some(s),
        Subject::Json(_) => None,
    }
}

fn equals(v: Subject<'_>, o: &Operand, refs: &dyn Resolve) -> Tri {
    match o {
        Operand::Lit(lit) => match v {
            Subject::Json(j) => json_eq(j, lit),
            Subject::Text(s) => match lit {
                Json::Number(n) => with_text_num(s, |a| num_eq(Some(a), Num::from_json(n))),
                Json::String(l) => Tri::from_bool(s == l),
                // INVARIANT: the compiler refuses other literals in text tests; different
                // types would be unknown anyway.
                _ => Tri::Unknown,
            },
        },
        Operand::Ref(r) => {
            let Some(rv) = refs.resolve(r) else {
                return Tri::Unknown;
            };
            match (v, rv) {
                (Subject::Json(Json::Number(n)), RefValue::Text(t)) => {
                    with_text_num(t, |b| num_eq(Num::from_json(n), Some(b)))
                }
                (Subject::Json(Json::String(s)), rv) => Tri::from_bool(s == rv.text()),
                // An identity is a string; a boolean, null, array or object against a
                // string is a comparison between types: unknown.
                (Subject::Json(_), _) => Tri::Unknown,
                (Subject::Text(s), rv) => Tri::from_bool(s == rv.text()),
            }
        }
    }
}

fn string_op(v: Subject<'_>, o: &Operand, refs: &dyn Resolve, f: impl Fn(&str, &str) -> bool) -> Tri {
    let Some(s) = as_str(v) else {
        return Tri::Unknown;
    };
    match o {
        Operand::Lit(Json::String(p)) => Tri::from_bool(f(s, p)),
        // INVARIANT: the compiler only builds string operators with string literals.
        Operand::Lit(_) => Tri::Unknown,
        Operand::Ref(r) => match refs.resolve(r) {
            Some(rv) => Tri::from_bool(f(s, rv.text())),
            None => Tri::Unknown,
        },
    }
}

fn compare(v: Subject<'_>, o: &Operand, refs: &dyn Resolve, f: impl Fn(std::cmp::Ordering) -> bool) -> Tri {
    let cmp = |a: Num, b: Num| match a.cmp3(b) {
        Some(o) => Tri::from_bool(f(o)),
        None => Tri::Unknown,
    };
    let against = |a: Num| -> Tri {
        match o {
            Operand::Lit(Json::Number(n)) => match Num::from_json(n) {
                Some(b) => cmp(a, b),
                None => Tri::Unknown,
            },
            Operand::Lit(_) => Tri::Unknown,
            Operand::Ref(r) => match refs.resolve(r) {
                Some(rv) => with_text_num(rv.text(), |b| cmp(a, b)),
                None => Tri::Unknown,
            },
        }
    };
    match v {
        Subject::Json(Json::Number(n)) => match Num::from_json(n) {
            Some(a) => against(a),
            None => Tri::Unknown,
        },
        Subject::Text(s) => with_text_num(s, against),
        Subject::Json(_) => Tri::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct NoRefs;
    impl Resolve for NoRefs {
        fn resolve(&self, _: &RefName) -> Option<RefValue<'_>> {
            None
        }
    }

    #[test]
    fn tri_logic_tables() {
        use Tri::*;
        assert_eq!(True.and(Unknown), Unknown);
        assert_eq!(False.and(Unknown), False);
        assert_eq!(True.or(Unknown), True);
        assert_eq!(False.or(Unknown), Unknown);
        assert_eq!(!Unknown, Unknown);
    }

    #[test]
    fn lenient_numbers() {
        for (s, n) in [("+500", 500.0), ("0500", 500.0), ("5e2", 500.0), ("500.", 500.0), (".5", 0.5)] {
            assert_eq!(lenient_number(s), Some(n), "{s}");
        }
        for s in ["inf", "-infinity", "NaN", "0x10", "", " 5", "1e400"] {
            assert_eq!(lenient_number(s), None, "{s}");
        }
    }

    #[test]
    fn type_mismatch_is_unknown() {
        let t = Test::Gt(Operand::Lit(json!(1000)));
        assert_eq!(t.eval(Subject::Json(&json!("5000")), &NoRefs), Tri::Unknown);
        assert_eq!(t.eval(Subject::Json(&json!(5000)), &NoRefs), Tri::True);
        assert_eq!(t.eval(Subject::Text("+5000"), &NoRefs), Tri::True);
        assert_eq!(t.eval(Subject::Text("lots"), &NoRefs), Tri::Unknown);
        // Truncating parsers (parseInt, intval, to_i) read `0.5` as 0 and `1000.5` as 1000.
        let zero = Test::Equals(Operand::Lit(json!(0)));
        assert_eq!(zero.eval(Subject::Text("0.5"), &NoRefs), Tri::Unknown);
        assert_eq!(zero.eval(Subject::Text("1.5"), &NoRefs), Tri::False);
        assert_eq!(zero.eval(Subject::Text("0"), &NoRefs), Tri::True);
        assert_eq!(zero.eval(Subject::Text("-0.5"), &NoRefs), Tri::Unknown);
        assert_eq!(t.eval(Subject::Text("5e3"), &NoRefs), Tri::True, "a whole number keeps its reading");
        assert_eq!(t.eval(Subject::Text("1000.5"), &NoRefs), Tri::Unknown);
        assert_eq!(t.eval(Subject::Text("2000.5"), &NoRefs), Tri::True);
        assert_eq!(Test::Equals(Operand::Lit(json!(1))).eval(Subject::Json(&json!(1.0)), &NoRefs), Tri::True);
        assert_eq!(Test::Equals(Operand::Lit(json!(42))).eval(Subject::Json(&json!("42")), &NoRefs), Tri::Unknown);
        let admin = Test::Equals(Operand::Lit(json!("admin")));
        assert_eq!(admin.eval(Subject::Json(&json!(["admin"])), &NoRefs), Tri::Unknown);
        assert_eq!(admin.eval(Subject::Json(&json!(true)), &NoRefs), Tri::Unknown);
        assert_eq!(admin.eval(Subject::Json(&json!(null)), &NoRefs), Tri::Unknown);
        assert_eq!(admin.eval(Subject::Json(&json!("user")), &NoRefs), Tri::False);
        let null = Test::Equals(Operand::Lit(json!(null)));
        assert_eq!(null.eval(Subject::Json(&json!(null)), &NoRefs), Tri::True);
        assert_eq!(null.eval(Subject::Json(&json!(0)), &NoRefs), Tri::Unknown);
        let list = Test::NotIn(vec![Operand::Lit(json!("a")), Operand::Lit(json!("b"))]);
        assert_eq!(list.eval(Subject::Json(&json!(["a"])), &NoRefs), Tri::Unknown);
        assert_eq!(list.eval(Subject::Json(&json!("c")), &NoRefs), Tri::True);
        assert_eq!(
            Test::Equals(Operand::Lit(json!([1, "x"]))).eval(Subject::Json(&json!([1.0, "x"])), &NoRefs),
            Tri::True
        );
        assert_eq!(Test::Equals(Operand::Lit(json!([1]))).eval(Subject::Json(&json!(["1"])), &NoRefs), Tri::Unknown);
    }

    #[test]
    fn large_integers_compare_exactly() {
        let id = Test::In(vec![Operand::Lit(json!(1234567890123456789u64))]);
        // Different integers never compare equal; but these two are one f64 to a JavaScript
        // upstream, so they are not unequal either: unknown.
        assert_eq!(id.eval(Subject::Text("1234567890123456790"), &NoRefs), Tri::Unknown);
        assert_eq!(id.eval(Subject::Text("1234567890123456789"), &NoRefs), Tri::True);
        assert_eq!(id.eval(Subject::Text("+01234567890123456789"), &NoRefs), Tri::True);
        assert_eq!(id.eval(Subject::Json(&json!(1234567890123456790u64)), &NoRefs), Tri::Unknown);
        assert_eq!(id.eval(Subject::Json(&json!(1234567890123457000u64)), &NoRefs), Tri::False);
        // A float that the large id rounds to: cannot tell.
        assert_eq!(id.eval(Subject::Text("1.2345678901234568e18"), &NoRefs), Tri::Unknown);
        let gt = Test::Gt(Operand::Lit(json!(9007199254740993u64)));
        assert_eq!(gt.eval(Subject::Text("9007199254740994"), &NoRefs), Tri::True);
        assert_eq!(gt.eval(Subject::Text("9007199254740993"), &NoRefs), Tri::False);
        assert_eq!(gt.eval(Subject::Text("9007199254740996"), &NoRefs), Tri::True);
        // Equal once read as f64 (as JavaScript and Go's float64 read them): unknown.
        let eq = Test::Equals(Operand::Lit(json!(9007199254740992u64)));
        assert_eq!(eq.eval(Subject::Json(&json!(9007199254740993u64)), &NoRefs), Tri::Unknown);
        assert_eq!(eq.eval(Subject::Json(&json!(9007199254740992u64)), &NoRefs), Tri::True);
        assert_eq!(eq.eval(Subject::Json(&json!(9007199254740994u64)), &NoRefs), Tri::False);
        assert_eq!(Test::Equals(Operand::Lit(json!(2))).eval(Subject::Text("2.0"), &NoRefs), Tri::True);
    }

    #[test]
    fn repeated_values_must_agree() {
        let t = Test::In(vec![Operand::Lit(json!("name"))]);
        assert_eq!(t.eval_values(["name", "name"].into_iter(), &NoRefs), Tri::True);
        assert_eq!(t.eval_values(["ssn", "x"].into_iter(), &NoRefs), Tri::False);
        assert_eq!(t.eval_values(["name", "ssn"].into_iter(), &NoRefs), Tri::Unknown);
    }

    #[test]
    fn pointer_shapes() {
        let doc = json!({"a": [1, {"b": 2}], "s": "x"});
        let f = |p: &[&str], t: Test| {
            Condition::Field { pointer: p.iter().map(|s| Box::from(*s)).collect(), test: t }
                .eval(Doc::Value(&doc), &NoRefs)
        };
        assert_eq!(f(&["a", "1", "b"], Test::Equals(Operand::Lit(json!(2)))), Tri::True);
        assert_eq!(f(&["a", "5"], Test::Exists(false)), Tri::True);
        assert_eq!(f(&["a", "01"], Test::Exists(true)), Tri::Unknown);
        assert_eq!(f(&["s", "x"], Test::Exists(false)), Tri::Unknown);
        assert_eq!(f(&["nope"], Test::NotIn(vec![Operand::Lit(json!(1))])), Tri::False);
        // Only a key equal under case folding: unknown (Go binds it), not missing.
        assert_eq!(f(&["S"], Test::Exists(false)), Tri::Unknown);
        assert_eq!(f(&["\u{17f}"], Test::Exists(true)), Tri::Unknown);
    }
}
