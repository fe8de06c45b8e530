//! Character classes and the small scanners shared by the header-value parsers
//! (RFC 3261 §25.1): tokens, LWS, quoted strings, `;name=value` parameters and
//! comma lists that respect quotes and `<...>`.

use std::fmt;
use std::ops::Range;

/// Parameters as written: names as received, values as received (a quoted
/// value keeps its quotes), `None` for a parameter without `=value`.
pub type Params = Vec<(String, Option<String>)>;

/// `token` characters (RFC 3261 §25.1).
pub(crate) fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~')
}

/// Linear white space, folds included (a fold is CRLF followed by SP/HT).
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// `unreserved` URI characters.
pub(crate) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')')
}

/// `gen-value` characters of a header parameter: token or host (IPv4, IPv6
/// with or without brackets).
pub(crate) fn is_param_value(b: u8) -> bool {
    is_token(b) || matches!(b, b':' | b'[' | b']')
}

/// `s` trimmed of LWS on both ends.
pub(crate) fn trim_lws(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && is_lws(c as u8))
}

/// Byte range of `s` within `bytes` trimmed of LWS.
pub(crate) fn trim_range(bytes: &[u8], mut r: Range<usize>) -> Range<usize> {
    while r.start < r.end && is_lws(bytes[r.start]) {
        r.start += 1;
    }
    while r.end > r.start && is_lws(bytes[r.end - 1]) {
        r.end -= 1;
    }
    r
}

/// Parse an unsigned decimal made only of digits; `None` when empty, not all
/// digits, or over `max`.
pub(crate) fn parse_decimal(s: &str, max: u64) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n: u64 = 0;
    for b in s.bytes() {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        if n > max {
            return None;
        }
    }
    Some(n)
}

/// A cursor over a header value.
pub(crate) struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        Cursor { s, i: 0 }
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    pub(crate) fn eof(&self) -> bool {
        self.i >= self.s.len()
    }

    pub(crate) fn pos(&self) -> usize {
        self.i
    }

    pub(crate) fn set_pos(&mut self, i: usize) {
        self.i = i;
    }

    pub(crate) fn rest(&self) -> &'a str {
        &self.s[self.i..]
    }

    /// Skip LWS; true if anything was skipped.
    pub(crate) fn skip_lws(&mut self) -> bool {
        let start = self.i;
        while self.peek().is_some_and(is_lws) {
            self.i += 1;
        }
        self.i > start
    }

    pub(crate) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// The longest run of bytes matching `f`. `f` must accept ASCII bytes only,
    /// so the run always ends on a character boundary.
    pub(crate) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii() && f(b)) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    /// A quoted string at the cursor: (raw text with its quotes, unescaped content).
    pub(crate) fn quoted(&mut self) -> Result<(&'a str, String), String> {
        let start = self.i;
        if !self.eat(b'"') {
            return Err("expected a quoted string".into());
        }
        let bytes = self.s.as_bytes();
        let mut out = Vec::new();
        loop {
            match bytes.get(self.i) {
                None => return Err("unterminated quoted string".into()),
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    let Some(&next) = bytes.get(self.i + 1) else {
                        return Err("unterminated quoted string".into());
                    };
                    out.push(next);
                    self.i += 2;
                }
                Some(&b) => {
                    out.push(b);
                    self.i += 1;
                }
            }
        }
        // Only ASCII backslashes were removed, so this is still UTF-8 unless the
        // escape split a multi-byte character (then it is repaired lossily).
        let text = String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        // A backslash before a multi-byte character moves the cursor into it.
        while !self.s.is_char_boundary(self.i) {
            self.i += 1;
        }
        Ok((&self.s[start..self.i], text))
    }
}

/// Parse `*( SEMI generic-param )` up to the end of the input.
pub(crate) fn parse_params(c: &mut Cursor<'_>) -> Result<Params, String> {
    let mut params = Params::new();
    loop {
        c.skip_lws();
        if c.eof() {
            return Ok(params);
        }
        if !c.eat(b';') {
            return Err(format!("unexpected {:?}", excerpt(c.rest())));
        }
        c.skip_lws();
        let name = c.take_while(is_token);
        if name.is_empty() {
            return Err("empty parameter".into());
        }
        let before = c.pos();
        c.skip_lws();
        let value = if c.eat(b'=') {
            c.skip_lws();
            let v = if c.peek() == Some(b'"') {
                c.quoted()?.0
            } else {
                c.take_while(is_param_value)
            };
            if v.is_empty() {
                return Err(format!("parameter {name} has an empty value"));
            }
            Some(v.to_owned())
        } else {
            c.set_pos(before);
            None
        };
        params.push((name.to_owned(), value));
    }
}

/// Case-insensitive parameter lookup: `Some(None)` for a parameter without value.
pub(crate) fn find_param<'a>(params: &'a Params, name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref())
}

/// Write `;name[=value]` for each parameter.
pub(crate) fn fmt_params(f: &mut fmt::Formatter<'_>, params: &Params) -> fmt::Result {
    for (name, value) in params {
        match value {
            Some(v) => write!(f, ";{name}={v}")?,
            None => write!(f, ";{name}")?,
        }
    }
    Ok(())
}

/// At most 64 characters of `s`, for error messages (peers control `s`).
pub(crate) fn excerpt(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Byte ranges of the comma-separated elements of `s`, each trimmed of LWS.
///
/// Commas inside quoted strings (with `\` escapes) and inside `<...>` do not
/// split. An empty value has no elements; empty elements between commas are
/// kept (so that a typed parser can refuse them).
pub(crate) fn split_list(s: &str) -> Vec<Range<usize>> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    if trim_lws(s).is_empty() {
        return out;
    }
    let (mut in_quote, mut in_angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if in_quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quote = false;
            }
            continue;
        }
        match b {
            b'"' if !in_angle => in_quote = true,
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            b',' if !in_angle => {
                out.push(trim_range(bytes, start..i));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(trim_range(bytes, start..bytes.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(s: &str) -> Vec<&str> {
        split_list(s).into_iter().map(|r| &s[r]).collect()
    }

    #[test]
    fn comma_lists_respect_quotes_escapes_and_angles() {
        assert_eq!(
            pieces(r#""Doe, John" <sip:a@b;x=1,2>, <sip:c@d> ,sip:e@f"#),
            vec![r#""Doe, John" <sip:a@b;x=1,2>"#, "<sip:c@d>", "sip:e@f"]
        );
        assert_eq!(pieces(r#""a \", b" <sip:x@y>, z"#), vec![r#""a \", b" <sip:x@y>"#, "z"]);
        assert_eq!(pieces("a,,b"), vec!["a", "", "b"]);
        assert_eq!(pieces("  "), Vec::<&str>::new());
        assert_eq!(pieces("a,\r\n b"), vec!["a", "b"]);
        // An unterminated quote swallows the rest instead of failing here.
        assert_eq!(pieces(r#""a, b"#), vec![r#""a, b"#]);
    }

    #[test]
    fn quoted_strings_unescape() {
        let mut c = Cursor::new(r#""J Rosenberg \\\"" rest"#);
        let (raw, text) = c.quoted().unwrap();
        assert_eq!(raw, r#""J Rosenberg \\\"""#);
        assert_eq!(text, r#"J Rosenberg \""#);
        assert_eq!(c.rest(), " rest");
        assert_eq!(
            Cursor::new(r#""open"#).quoted().unwrap_err(),
            "unterminated quoted string"
        );
        assert_eq!(Cursor::new("\"a\\").quoted().unwrap_err(), "unterminated quoted string");
        // A backslash before a multi-byte character must not split it.
        let mut c = Cursor::new("\"\\é\"x");
        assert!(c.quoted().is_ok());
        assert_eq!(c.rest(), "x");
    }

    #[test]
    fn params_with_lws_quotes_and_no_values() {
        let mut c = Cursor::new(" ; lr ;branch = z9hG4bK1;\r\n received=2001:db8::1 ; x=\"a;b\";rport");
        let p = parse_params(&mut c).unwrap();
        assert_eq!(
            p,
            vec![
                ("lr".to_owned(), None),
                ("branch".to_owned(), Some("z9hG4bK1".to_owned())),
                ("received".to_owned(), Some("2001:db8::1".to_owned())),
                ("x".to_owned(), Some("\"a;b\"".to_owned())),
                ("rport".to_owned(), None),
            ]
        );
        assert_eq!(find_param(&p, "BRANCH"), Some(Some("z9hG4bK1")));
        assert_eq!(find_param(&p, "lr"), Some(None));
        assert_eq!(find_param(&p, "maddr"), None);
        assert!(parse_params(&mut Cursor::new(";;")).is_err());
        assert!(parse_params(&mut Cursor::new(";a=")).is_err());
        assert!(parse_params(&mut Cursor::new(" x")).is_err());
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal("0068", u64::MAX), Some(68));
        assert_eq!(parse_decimal("", 10), None);
        assert_eq!(parse_decimal("-1", 10), None);
        assert_eq!(parse_decimal("11", 10), None);
        assert_eq!(parse_decimal("36893488147419103232", u64::MAX), None);
    }
}
