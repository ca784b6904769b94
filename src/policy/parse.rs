//! YAML text → [`PolicyFile`], with duplicate keys rejected anywhere and every error located.
//!
//! serde_yaml keeps the last of duplicate keys when deserializing into a struct, but refuses
//! them when building a [`serde_yaml::Value`]; so the text is parsed twice: once into a
//! `Value` (duplicates, syntax, and the source of rule ids for error messages), then into the
//! typed model (unknown keys, types), whose errors carry line and column.

use std::fmt;

use serde_yaml::Value;

use super::model::PolicyFile;

/// One problem found while loading a policy, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// What kind of problem it is.
    pub kind: PolicyErrorKind,
    /// The file (or label) the policy came from.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The id of the rule the problem is in, when it is in a rule.
    pub rule: Option<String>,
    /// What is wrong, in words a person can act on.
    pub message: String,
}

/// What kind of problem a policy error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyErrorKind {
    /// The file could not be read.
    Read,
    /// Not YAML, or not the policy's shape (an unknown key, a wrong type, a duplicate key).
    Syntax,
    /// Well-formed, but not a valid policy (a bad pattern, a cycle in groups, …).
    Invalid,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(rule) = &self.rule {
            write!(f, "rule `{rule}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// All the problems found in one policy; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for e in &self.0 {
            if !first {
                writeln!(f)?;
            }
            first = false;
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl PolicyErrors {
    /// A single error without a location.
    pub fn single(kind: PolicyErrorKind, file: &str, message: impl Into<String>) -> Self {
        PolicyErrors(vec![PolicyError {
            kind,
            file: file.to_string(),
            line: None,
            column: None,
            rule: None,
            message: message.into(),
        }])
    }
}

/// Parse policy text into the typed model.
///
/// The untyped document is built first only to refuse duplicate keys, and dropped before
/// the typed parse: the two never live together, which halves what a reload of a large
/// policy needs at its peak. A typed error re-reads it to name the rule.
pub fn parse(src: &str, file: &str) -> Result<PolicyFile, PolicyErrors> {
    let raw: Value = serde_yaml::from_str(src).map_err(|e| {
        // Duplicate keys fail here; the typed parse (which keeps the last duplicate) can
        // still tell which rule the path `rules[N]` is.
        let rule = rule_index(&e.to_string()).map(|idx| {
            serde_yaml::from_str::<LooseDoc>(src)
                .ok()
                .and_then(|doc| doc.rules.into_iter().nth(idx).and_then(|r| r.id))
                .unwrap_or_else(|| format!("#{}", idx + 1))
        });
        yaml_error(&e, file, rule)
    })?;
    if raw.is_null() {
        return Err(PolicyErrors::single(
            PolicyErrorKind::Syntax,
            file,
            "the policy is empty; it needs at least `version: 1`",
        ));
    }
    drop(raw);
    serde_yaml::from_str(src).map_err(|e| {
        let rule = serde_yaml::from_str::<Value>(src).ok().and_then(|raw| rule_from_error_path(&e.to_string(), &raw));
        yaml_error(&e, file, rule)
    })
}

/// Just the rule ids, read without rejecting duplicates or unknown keys: to name the rule
/// in an error about a duplicate key.
#[derive(serde::Deserialize)]
struct LooseDoc {
    #[serde(default)]
    rules: Vec<LooseRule>,
}

#[derive(serde::Deserialize)]
struct LooseRule {
    #[serde(default)]
    id: Option<String>,
}

fn yaml_error(e: &serde_yaml::Error, file: &str, rule: Option<String>) -> PolicyErrors {
    let loc = e.location();
    let mut message = e.to_string();
    // serde_yaml appends " at line L column C" to some messages; the location is printed
    // in front already.
    if let Some(pos) = message.find(" at line ") {
        message.truncate(pos);
    }
    PolicyErrors(vec![PolicyError {
        kind: PolicyErrorKind::Syntax,
        file: file.to_string(),
        line: loc.as_ref().map(|l| l.line()),
        column: loc.as_ref().map(|l| l.column()),
        rule,
        message,
    }])
}

/// serde_yaml prefixes errors with a path such as `rules[3].effect: ...`; map the index to
/// the rule's id when it has one.
fn rule_index(msg: &str) -> Option<usize> {
    let rest = msg.strip_prefix("rules[")?;
    let end = rest.find(']')?;
    rest.get(..end)?.parse().ok()
}

fn rule_from_error_path(msg: &str, raw: &Value) -> Option<String> {
    let idx = rule_index(msg)?;
    let rule = raw.get("rules")?.get(idx)?;
    match rule.get("id") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => Some(format!("#{}", idx + 1)),
    }
}

/// Find the 1-based line of the `nth` (0-based) `id: <id>` in the source, to locate
/// rule-level errors.
pub fn locate_rule(src: &str, id: &str, nth: usize) -> Option<usize> {
    let mut seen = 0;
    for (n, line) in src.lines().enumerate() {
        if line_has_id(line, id) {
            if seen == nth {
                return Some(n + 1);
            }
            seen += 1;
        }
    }
    None
}

fn line_has_id(line: &str, id: &str) -> bool {
    let mut rest = line;
    while let Some(p) = rest.find("id:") {
        let before = rest.get(..p).and_then(|b| b.chars().last());
        let after = rest.get(p + 3..).unwrap_or("");
        rest = after;
        // `id:` must be a key of its own: at the start, or after `{`, `,`, `-` or a space.
        if !matches!(before, None | Some('{' | ',' | '-' | ' ' | '\t')) {
            continue;
        }
        let v = after.trim_start();
        let (quoted, v) = match v.chars().next() {
            Some(q @ ('"' | '\'')) => (Some(q), v.get(1..).unwrap_or("")),
            _ => (None, v),
        };
        let Some(tail) = v.strip_prefix(id) else { continue };
        let ok = match quoted {
            Some(q) => tail.starts_with(q),
            None => tail.is_empty() || tail.starts_with([',', '}', ' ', '\t', '#']),
        };
        if ok {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_rules() {
        let src = "rules:\n  - id: a\n    paid: a\n  - { id: \"b\", effect: deny }\n  - id: a # again\n";
        assert_eq!(locate_rule(src, "a", 0), Some(2));
        assert_eq!(locate_rule(src, "a", 1), Some(5));
        assert_eq!(locate_rule(src, "b", 0), Some(4));
        assert_eq!(locate_rule(src, "c", 0), None);
    }
}
