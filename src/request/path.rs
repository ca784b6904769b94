//! Path and query normalization, as policy-language.md "Request normalization" says.
//!
//! The path part is strict: anything a proxy and an upstream could read differently
//! (encoded slashes, backslashes, bad escapes, control characters, bad UTF-8, `..` above the
//! root) is an [`PathError`] and the request is denied as `invalid_path`. The query is decoded
//! leniently: it is only ever tested, never routed on.

use std::borrow::Cow;
use std::fmt;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path part is empty.
    Empty,
    /// The path does not start with `/`.
    NotAbsolute,
    /// `%2F` or `%5C`: an encoded slash or backslash.
    EncodedSlash,
    /// A raw backslash.
    Backslash,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// A control character (C0, DEL, C1, NUL), raw or decoded.
    ControlChar,
    /// The decoded bytes are not UTF-8.
    BadUtf8,
    /// A `..` segment climbs above the root.
    AboveRoot,
    /// A `;` in the path: Tomcat and Jetty strip `;params` per segment, so `/public/..;/admin`
    /// reaches `/admin` there (refused unless `settings.allow_path_semicolons`).
    Semicolon,
    /// With `allow_path_semicolons`: a segment that is `.` or `..` before its first `;`.
    DotSegmentParam,
}

impl PathError {
    /// A short, bounded label (metrics, logs).
    pub fn label(self) -> &'static str {
        match self {
            PathError::Empty => "empty",
            PathError::NotAbsolute => "not_absolute",
            PathError::EncodedSlash => "encoded_slash",
            PathError::Backslash => "backslash",
            PathError::BadEscape => "bad_escape",
            PathError::ControlChar => "control_char",
            PathError::BadUtf8 => "bad_utf8",
            PathError::AboveRoot => "above_root",
            PathError::Semicolon => "semicolon",
            PathError::DotSegmentParam => "dot_segment_param",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::Empty => "the path is empty",
            PathError::NotAbsolute => "the path does not start with /",
            PathError::EncodedSlash => "the path has an encoded slash or backslash",
            PathError::Backslash => "the path has a backslash",
            PathError::BadEscape => "the path has an invalid percent escape",
            PathError::ControlChar => "the path has a control character",
            PathError::BadUtf8 => "the path is not valid UTF-8 once decoded",
            PathError::AboveRoot => "the path climbs above the root with ..",
            PathError::Semicolon => "the path has a `;` (path parameters, which Tomcat and Jetty strip)",
            PathError::DotSegmentParam => "a path segment is `.` or `..` before its `;` parameters",
        })
    }
}

/// Split Envoy's `:path` into the path part and the query string. The fragment (from the
/// first `#`) is dropped first, as RFC 3986 reads a URI reference.
pub fn split(raw: &str) -> (&str, &str) {
    let no_fragment = match raw.split_once('#') {
        Some((before, _)) => before,
        None => raw,
    };
    match no_fragment.split_once('?') {
        Some((p, q)) => (p, q),
        None => (no_fragment, ""),
    }
}

/// The value of one hex digit.
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_control(c: char) -> bool {
    c < ' ' || c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c)
}

/// Normalize the path part: percent-decode, resolve `.`/`..`, merge repeated slashes.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    let decoded: Cow<'_, str> = if path.contains('%') {
        let bytes = path.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b == b'%' {
                let hi = bytes.get(i + 1).copied().and_then(hex);
                let lo = bytes.get(i + 2).copied().and_then(hex);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi * 16 + lo;
                if v == b'/' || v == b'\\' {
                    return Err(PathError::EncodedSlash);
                }
                out.push(v);
                i += 3;
            } else {
                out.push(b);
                i += 1;
            }
        }
        Cow::Owned(String::from_utf8(out).map_err(|_| PathError::BadUtf8)?)
    } else {
        Cow::Borrowed(path)
    };
    if decoded.chars().any(is_control) {
        return Err(PathError::ControlChar);
    }
    // Fast path: nothing to resolve or merge.
    let rest = decoded.get(1..).unwrap_or("");
    let needs_work = decoded.contains("//") || rest.split('/').any(|s| s == "." || s == "..");
    if !needs_work {
        return Ok(decoded.into_owned());
    }
    // remove_dot_segments (RFC 3986 5.2.4), keeping a trailing slash, refusing to climb
    // above the root; then merge repeated slashes: Envoy's order, as the contract fixes it.
    // (`/public//../admin` is `/public/admin` here; an upstream that merges slashes first
    // would read `/admin`, which is why Envoy should forward its normalized path.)
    resolve(rest)
}

/// Resolve dot segments of the path after its leading `/`, then merge slashes.
fn resolve(rest: &str) -> Result<String, PathError> {
    let segs: Vec<&str> = rest.split('/').collect();
    let last = segs.len().saturating_sub(1);
    let mut stack: Vec<&str> = Vec::with_capacity(segs.len());
    let mut trailing = false;
    for (i, seg) in segs.iter().copied().enumerate() {
        match seg {
            "." => trailing = i == last,
            ".." => {
                if stack.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing = i == last;
            }
            s => {
                stack.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(rest.len() + 1);
    out.push('/');
    let mut first = true;
    for s in stack.iter().copied() {
        if s.is_empty() {
            continue;
        }
        if !first {
            out.push('/');
        }
        out.push_str(s);
        first = false;
    }
    let ends_empty = stack.last().is_some_and(|s| s.is_empty());
    if (trailing || ends_empty) && !first {
        out.push('/');
    }
    Ok(out)
}

/// Check a normalized path for `;` path parameters (policy-language.md "Path parameters").
/// Without `allow` any `;` is refused; with it, a segment that is `.` or `..` before its first
/// `;` still is (Tomcat strips the parameters and then resolves the dot segment).
pub fn check_semicolons(path: &str, allow: bool) -> Result<(), PathError> {
    if !path.contains(';') {
        return Ok(());
    }
    if !allow {
        return Err(PathError::Semicolon);
    }
    for seg in path.split('/') {
        if let Some((before, _)) = seg.split_once(';') {
            if before == "." || before == ".." {
                return Err(PathError::DotSegmentParam);
            }
        }
    }
    Ok(())
}

/// The most query parameters read; a longer query string is unknown to every query test
/// (the `qs` parser's `parameterLimit` drops the rest).
pub const MAX_QUERY_PARAMS: usize = 1000;

/// Whether a query string has more than [`MAX_QUERY_PARAMS`] `&`-separated pieces (empty
/// ones count, as `qs` counts them).
pub fn query_overflows(q: &str) -> bool {
    q.len() >= MAX_QUERY_PARAMS && q.split('&').count() > MAX_QUERY_PARAMS
}

/// Decode a query string leniently: split on `&`, `+` is a space, percent escapes decoded
/// where valid (kept as written where not), invalid UTF-8 replaced. Names may repeat.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    parse_query_with(q, &['&'])
}

/// [`parse_query`] with other separators (Rails and Rack 2 also split on `;`).
pub fn parse_query_with(q: &str, seps: &[char]) -> Vec<(String, String)> {
    q.split(seps)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_lenient(n), decode_lenient(v))
        })
        .collect()
}

fn decode_lenient(s: &str) -> String {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_envoy() {
        let ok = [
            ("/a/../deny", "/deny"),
            ("//deny", "/deny"),
            ("/./deny", "/deny"),
            ("/%64eny", "/deny"),
            ("/a/%2e%2e/deny", "/deny"),
            ("/a/%2E%2E/deny", "/deny"),
            ("/a/b/", "/a/b/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/", "/"),
            ("/a//b///c", "/a/b/c"),
            ("/a//", "/a/"),
            ("/a//b/../c", "/a/c"),
            ("/public//../admin", "/public/admin"),
            ("/caf%C3%A9", "/café"),
            ("/a b", "/a b"),
        ];
        for (input, want) in ok {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_ambiguous_paths() {
        let bad = [
            ("", PathError::Empty),
            ("a/b", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%5cb", PathError::EncodedSlash),
            ("/a\\b", PathError::Backslash),
            ("/a%zz", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%00b", PathError::ControlChar),
            ("/a%0Ab", PathError::ControlChar),
            ("/a%7F", PathError::ControlChar),
            ("/a%C2%85", PathError::ControlChar),
            ("/a%FF", PathError::BadUtf8),
            ("/..", PathError::AboveRoot),
            ("/a/../..", PathError::AboveRoot),
            ("/%2e%2e/x", PathError::AboveRoot),
        ];
        for (input, want) in bad {
            assert_eq!(normalize(input), Err(want), "{input}");
        }
    }

    #[test]
    fn splits_query_and_fragment() {
        assert_eq!(split("/a?x=1#f"), ("/a", "x=1"));
        assert_eq!(split("/a#f?x=1"), ("/a", ""));
        assert_eq!(split("/deny#/../allow"), ("/deny", ""));
        assert_eq!(split("/a"), ("/a", ""));
    }

    #[test]
    fn query_is_lenient() {
        let q = parse_query("a=1&b=x+y&c=%41%zz&a=2&&d");
        assert_eq!(
            q,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "A%zz".into()),
                ("a".into(), "2".into()),
                ("d".into(), String::new())
            ]
        );
    }
}
