//! Path patterns: `literal`, `*`, `{name}`, and at most one `**`, matched segment by segment
//! against the normalized path (without the query).

use std::sync::Arc;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// Exactly this segment (may be empty for a written trailing slash).
    Literal(Box<str>),
    /// Exactly one non-empty segment.
    Star,
    /// Exactly one non-empty segment, captured.
    Capture(Arc<str>),
}

/// A compiled path pattern.
// INVARIANT: `head` are the segments before `**` (all of them when `globstar` is false) and
// `tail` the segments after it; `tail` is empty when `globstar` is false.
#[derive(Debug, Clone)]
pub struct PathPattern {
    source: Box<str>,
    head: Vec<Seg>,
    globstar: bool,
    tail: Vec<Seg>,
    /// The pattern ends with a written trailing slash (a last empty literal) and is not the
    /// root `/`: the loose match drops it.
    trailing_slash: bool,
}

/// Most captures one pattern may have (a load error beyond).
pub const MAX_CAPTURES: usize = 8;

/// Captured segments of a matched path: (name from the pattern, value from the path). A fixed
/// buffer on the stack: matching a path never allocates.
#[derive(Debug, Clone, Copy)]
pub struct Captures<'a> {
    items: [(&'a str, &'a str); MAX_CAPTURES],
    len: usize,
}

impl Default for Captures<'_> {
    fn default() -> Self {
        Captures { items: [("", ""); MAX_CAPTURES], len: 0 }
    }
}

impl<'a> Captures<'a> {
    /// No captures.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, name: &'a str, value: &'a str) -> bool {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = (name, value);
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The value captured as `name`.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.items.iter().take(self.len).find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// How many captures.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No captures at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl PathPattern {
    /// Parse a pattern, or say what is wrong with it.
    pub fn parse(src: &str) -> Result<PathPattern, String> {
        let Some(rest) = src.strip_prefix('/') else {
            return Err(format!("path pattern `{src}` must start with `/`"));
        };
        if src.contains(['?', '#']) {
            return Err(format!(
                "path pattern `{src}` contains `?` or `#`; patterns match the path without the query (use `query:`)"
            ));
        }
        if src.contains('%') {
            return Err(format!(
                "path pattern `{src}` contains `%`; patterns match the percent-decoded path, write the character itself"
            ));
        }
        if src.contains('\\') {
            return Err(format!("path pattern `{src}` contains a backslash, which no valid path has"));
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let last = parts.len().saturating_sub(1);
        let mut head = Vec::new();
        let mut tail = Vec::new();
        let mut globstar = false;
        let mut names: Vec<&str> = Vec::new();
        for (i, part) in parts.iter().copied().enumerate() {
            let seg = if part == "**" {
                if globstar {
                    return Err(format!("path pattern `{src}` has more than one `**`"));
                }
                globstar = true;
                continue;
            } else if part == "*" {
                Seg::Star
            } else if let Some(inner) = part.strip_prefix('{') {
                let Some(name) = inner.strip_suffix('}') else {
                    return Err(format!("path pattern `{src}`: segment `{part}` opens `{{` without closing it"));
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("path pattern `{src}`: capture name `{name}` must be letters, digits or `_`"));
                }
                if names.contains(&name) {
                    return Err(format!("path pattern `{src}` captures `{name}` twice"));
                }
                names.push(name);
                if names.len() > MAX_CAPTURES {
                    return Err(format!("path pattern `{src}` has more than {MAX_CAPTURES} captures"));
                }
                Seg::Capture(Arc::from(name))
            } else {
                if part.contains(['*', '{', '}']) {
                    return Err(format!(
                        "path pattern `{src}`: segment `{part}` mixes `*`, `{{` or `}}` with text; a segment is a literal, `*`, `**` or `{{name}}`"
                    ));
                }
                if part == "." || part == ".." {
                    return Err(format!(
                        "path pattern `{src}` has a `{part}` segment, which a normalized path never has"
                    ));
                }
                if part.is_empty() && i != last {
                    return Err(format!(
                        "path pattern `{src}` has an empty segment (`//`), which a normalized path never has"
                    ));
                }
                if part.chars().any(|c| c.is_control()) {
                    return Err(format!("path pattern `{src}` contains a control character"));
                }
                Seg::Literal(Box::from(part))
            };
            if globstar {
                tail.push(seg);
            } else {
                head.push(seg);
            }
        }
        let ends_empty = if globstar { tail.last() } else { head.last() } == Some(&Seg::Literal(Box::from("")));
        let trailing_slash = ends_empty && (globstar || head.len() > 1);
        Ok(PathPattern { source: Box::from(src), head, globstar, tail, trailing_slash })
    }

    /// The pattern as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Capture names in this pattern.
    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.head.iter().chain(self.tail.iter()).filter_map(|s| match s {
            Seg::Capture(n) => Some(&**n),
            _ => None,
        })
    }

    /// The literal first segment, if the pattern starts with one (used to index rules).
    pub fn first_literal(&self) -> Option<&str> {
        match self.head.first() {
            Some(Seg::Literal(l)) => Some(l),
            _ => None,
        }
    }

    /// Match a normalized path (starting with `/`); on success push the captures.
    pub fn matches<'a>(&'a self, path: &'a str, caps: &mut Captures<'a>) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let start = caps.len;
        let ok = self.match_rest(&self.head, &self.tail, rest, false, caps);
        if !ok {
            caps.len = start;
        }
        ok
    }

    /// The match deny rules use (policy-language.md "Path case and trailing slash"): also
    /// a path that differs only in ASCII case or by one trailing slash. Literals compare
    /// ignoring ASCII case, and a trailing slash of the pattern and of the path are both
    /// dropped before matching. Captures are taken from the path as sent. Every path
    /// [`Self::matches`] matches, this matches too.
    pub fn matches_loose<'a>(&'a self, path: &'a str, caps: &mut Captures<'a>) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let rest = if rest.is_empty() { rest } else { rest.strip_suffix('/').unwrap_or(rest) };
        let (head, tail) = match (self.trailing_slash, self.globstar) {
            (false, _) => (&self.head[..], &self.tail[..]),
            (true, false) => (self.head.split_last().map_or(&[][..], |(_, h)| h), &self.tail[..]),
            (true, true) => (&self.head[..], self.tail.split_last().map_or(&[][..], |(_, t)| t)),
        };
        let start = caps.len;
        let ok = self.match_rest(head, tail, rest, true, caps);
        if !ok {
            caps.len = start;
        }
        ok
    }

    fn match_rest<'a>(
        &self,
        head: &'a [Seg],
        tail: &'a [Seg],
        rest: &'a str,
        fold: bool,
        caps: &mut Captures<'a>,
    ) -> bool {
        // `left` is what is still unmatched; None once every segment is consumed.
        let mut left: Option<&'a str> = Some(rest);
        if head.is_empty() && !self.globstar {
            // Only the loose form of `/`-ended root-like patterns gets here: nothing left
            // to match but the empty path.
            return rest.is_empty();
        }
        for seg in head {
            let Some(r) = left else { return false };
            let s = match r.split_once('/') {
                Some((s, more)) => {
                    left = Some(more);
                    s
                }
                None => {
                    left = None;
                    r
                }
            };
            if !seg_matches(seg, s, fold, caps) {
                return false;
            }
        }
        if !self.globstar {
            return left.is_none();
        }
        // `**` takes zero or more of the remaining segments; the tail must match the last
        // `tail.len()` of them exactly (taken from the right, so no allocation).
        if tail.is_empty() {
            return true;
        }
        let Some(r) = left else { return false };
        let mut from_right = r.rsplit('/');
        for seg in tail.iter().rev() {
            match from_right.next() {
                Some(s) if seg_matches(seg, s, fold, caps) => {}
                _ => return false,
            }
        }
        true
    }
}

fn seg_matches<'a>(seg: &'a Seg, s: &'a str, fold: bool, caps: &mut Captures<'a>) -> bool {
    match seg {
        Seg::Literal(l) if fold => l.eq_ignore_ascii_case(s),
        Seg::Literal(l) => **l == *s,
        Seg::Star => !s.is_empty(),
        Seg::Capture(name) => {
            if s.is_empty() {
                return false;
            }
            // INVARIANT: parse() refuses patterns with more than MAX_CAPTURES captures.
            caps.push(name, s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, path: &str) -> bool {
        let pat = PathPattern::parse(p).unwrap_or_else(|e| unreachable!("{e}"));
        let mut caps = Captures::new();
        pat.matches(path, &mut caps)
    }

    #[test]
    fn literals_stars_and_globstar() {
        assert!(m("/a/b", "/a/b"));
        assert!(!m("/a/b", "/a/b/"));
        assert!(!m("/a/b", "/a/B"));
        assert!(m("/a/b/", "/a/b/"));
        assert!(m("/a/b/**", "/a/b"));
        assert!(m("/a/b/**", "/a/b/"));
        assert!(m("/a/b/**", "/a/b/c/d"));
        assert!(!m("/a/b/**", "/a/bc"));
        assert!(m("/**", "/"));
        assert!(m("/**", "/x/y"));
        assert!(m("/a/*", "/a/x"));
        assert!(!m("/a/*", "/a/"));
        assert!(!m("/a/*", "/a/x/y"));
        assert!(m("/**/end", "/end"));
        assert!(m("/**/end", "/x/y/end"));
        assert!(!m("/**/end", "/x/y/end/"));
        assert!(m("/a/**/z", "/a/z"));
        assert!(m("/a/**/z", "/a/b/c/z"));
        assert!(!m("/a/**/z", "/z"));
        assert!(m("/", "/"));
        assert!(!m("/", "/a"));
    }

    fn loose(p: &str, path: &str) -> bool {
        let pat = PathPattern::parse(p).unwrap_or_else(|e| unreachable!("{e}"));
        let mut caps = Captures::new();
        pat.matches_loose(path, &mut caps)
    }

    #[test]
    fn loose_matching_for_deny_rules() {
        for (p, path) in [
            ("/mcp", "/mcp"),
            ("/mcp", "/mcp/"),
            ("/mcp", "/MCP"),
            ("/mcp", "/Mcp/"),
            ("/mcp/", "/mcp"),
            ("/a/b/", "/A/b/"),
            ("/a/*", "/a/x/"),
            ("/a/{id}/x", "/A/7/X/"),
            ("/a/**", "/A"),
            ("/**/end", "/x/END/"),
            ("/", "/"),
            ("/**/", "/x"),
        ] {
            assert!(loose(p, path), "{p} should loosely match {path}");
        }
        for (p, path) in
            [("/mcp", "/mcp//"), ("/mcp", "/mcpx"), ("/mcp", "/mc"), ("/", "/a"), ("/a/*", "/a/"), ("/a/b", "/a/b/c")]
        {
            assert!(!loose(p, path), "{p} should not loosely match {path}");
        }
        // Captures come from the path as sent.
        let pat = PathPattern::parse("/Users/{u}").unwrap_or_else(|e| unreachable!("{e}"));
        let mut caps = Captures::new();
        assert!(pat.matches_loose("/users/Alice/", &mut caps));
        assert_eq!(caps.get("u"), Some("Alice"));
        // Loose matching only widens: every exact match is a loose match.
        let pats = ["/", "/a", "/a/", "/a/b", "/a/*", "/a/**", "/**", "/**/", "/**/b", "/a/**/b/", "/{x}/b/", "/a/{x}"];
        let paths = ["/", "/a", "/a/", "/a/b", "/a/b/", "/a/b/c", "/b/", "/x/b", "/A/b/", "/a//"];
        for p in pats {
            for path in paths {
                if m(p, path) {
                    assert!(loose(p, path), "{p} matches {path} exactly but not loosely");
                }
            }
        }
    }

    #[test]
    fn captures_are_recorded() {
        let pat = PathPattern::parse("/users/{user}/messages/{id}").unwrap_or_else(|e| unreachable!("{e}"));
        let mut caps = Captures::new();
        assert!(pat.matches("/users/alice/messages/42", &mut caps));
        assert_eq!(caps.len(), 2);
        assert_eq!(caps.get("user"), Some("alice"));
        assert_eq!(caps.get("id"), Some("42"));
        let mut caps = Captures::new();
        assert!(!pat.matches("/users//messages/42", &mut caps));
        assert!(caps.is_empty());
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for p in [
            "a/b",
            "/a/**/b/**",
            "/a/{x",
            "/a/{}",
            "/a/x*",
            "/a/{x}/{x}",
            "/a//b",
            "/a/../b",
            "/a?x=1",
            "/a%2Fb",
            "/a/./b",
        ] {
            assert!(PathPattern::parse(p).is_err(), "{p} should be rejected");
        }
    }
}
