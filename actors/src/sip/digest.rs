//! The Digest header grammar (RFC 7235 §2.1, RFC 7616 §3.3–3.4): one parser
//! for `WWW-Authenticate` / `Proxy-Authenticate` challenges and
//! `Authorization` / `Proxy-Authorization` credentials, and [`quote`], its
//! inverse for values.
//!
//! Sans-IO: a header value in, [`DigestParams`] or a typed
//! [`DigestSyntaxError`] out. Every decision about a credential (which
//! algorithm, whose failure counter, the verification itself) is taken on
//! this parser's output, so no two readings of one header can disagree.
//!
//! Lenient where deployed clients are: names case-insensitive, whitespace
//! around `=` and `,`, empty list elements, bare (unquoted) values with
//! token68 characters. Strict where it matters: control characters, bad
//! escapes, a missing `=` or `,`, over-long values.

use super::lex::is_lws;

/// Longest Digest header value accepted (DoS bound: a real one is ~400 bytes).
pub const MAX_VALUE_LEN: usize = 4096;

/// Why a Digest header value does not parse. The messages name the problem
/// (and the parameter), for a 400 reason phrase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestSyntaxError {
    /// Longer than [`MAX_VALUE_LEN`]; checked before anything else is read.
    #[error("longer than {MAX_VALUE_LEN} bytes")]
    TooLong,
    /// The auth-scheme is not `Digest` (at most 32 characters of it kept).
    #[error("scheme {0:?} is not Digest")]
    NotDigest(String),
    /// `Digest` alone, or not followed by whitespace.
    #[error("no parameters after Digest")]
    NoParameters,
    /// Something other than a token where a parameter name belongs.
    #[error("expected a parameter name at byte {0}")]
    ExpectedName(usize),
    /// A parameter name without `=`.
    #[error("expected '=' after {0}")]
    ExpectedEquals(String),
    /// A quoted value without its closing quote.
    #[error("unterminated quoted {0}")]
    Unterminated(String),
    /// A backslash before a control character or at the end.
    #[error("bad escape in {0}")]
    BadEscape(String),
    /// A control character (other than HTAB) inside a quoted value.
    #[error("control character in {0}")]
    ControlCharacter(String),
    /// A quoted value that is not UTF-8.
    #[error("bad UTF-8 in {0}")]
    BadUtf8(String),
    /// `name=` with nothing after it.
    #[error("empty value for {0}")]
    EmptyValue(String),
    /// A value followed by something other than `,`.
    #[error("expected ',' after {0}")]
    ExpectedComma(String),
}

/// The parameters of one `Digest ...` value, in order: names lowercased,
/// values unquoted and unescaped. Repeated names are kept; the accessors
/// answer the first, and a caller that must refuse repeats checks
/// [`DigestParams::iter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestParams {
    params: Vec<(String, String)>,
}

impl DigestParams {
    /// Parse a challenge or credentials value (`Digest name=value, ...`).
    pub fn parse(value: &str) -> Result<DigestParams, DigestSyntaxError> {
        if value.len() > MAX_VALUE_LEN {
            return Err(DigestSyntaxError::TooLong);
        }
        parse_list(value).map(|params| DigestParams { params })
    }

    /// The value of the first parameter called `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `username=` (credentials).
    pub fn username(&self) -> Option<&str> {
        self.get("username")
    }

    /// `algorithm=` as sent; absent means MD5 (RFC 7616 §3.3).
    pub fn algorithm(&self) -> Option<&str> {
        self.get("algorithm")
    }

    /// All parameters in order, as (lowercased name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// A quoted-string for a parameter value, escaping `"` and `\`; parsing it
/// gives `s` back.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// HTTP `tchar` (RFC 7230 §3.2.6), wider than SIP's `token`: Digest is
/// shared with HTTP and clients send its names and algorithms.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Unquoted values: tokens, plus token68 characters (`/`, `=`) and the few
/// others lenient clients put in bare nonces or URIs.
fn is_bare_value_char(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && !matches!(b, b',' | b'"' | b'\\')
}

/// Inside a quoted value, and after a backslash: HTAB or a visible or
/// non-ASCII byte, never another control character.
fn is_quoted_char(c: u8) -> bool {
    c == b'\t' || c >= 0x20 && c != 0x7f
}

/// `Digest name=value, ...` into lowercased names and unescaped values
/// (RFC 7235 §2.1 / RFC 7616 syntax; empty list elements are allowed).
fn parse_list(value: &str) -> Result<Vec<(String, String)>, DigestSyntaxError> {
    use DigestSyntaxError as E;
    let b = value.as_bytes();
    let mut i = 0;
    while i < b.len() && is_lws(b[i]) {
        i += 1;
    }
    let start = i;
    while i < b.len() && is_tchar(b[i]) {
        i += 1;
    }
    if !value[start..i].eq_ignore_ascii_case("Digest") {
        // Peers control the scheme: keep an excerpt only.
        return Err(E::NotDigest(value[start..i].chars().take(32).collect()));
    }
    if i >= b.len() || !is_lws(b[i]) {
        return Err(E::NoParameters);
    }
    let mut out: Vec<(String, String)> = Vec::new();
    loop {
        while i < b.len() && (is_lws(b[i]) || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let name_start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if i == name_start {
            return Err(E::ExpectedName(i));
        }
        let name = value[name_start..i].to_ascii_lowercase();
        while i < b.len() && is_lws(b[i]) {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(E::ExpectedEquals(name));
        }
        i += 1;
        while i < b.len() && is_lws(b[i]) {
            i += 1;
        }
        let v = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut buf = Vec::new();
            loop {
                match b.get(i) {
                    None => return Err(E::Unterminated(name)),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => match b.get(i + 1) {
                        Some(&c) if is_quoted_char(c) => {
                            buf.push(c);
                            i += 2;
                        }
                        _ => return Err(E::BadEscape(name)),
                    },
                    Some(&c) if is_quoted_char(c) => {
                        buf.push(c);
                        i += 1;
                    }
                    Some(_) => return Err(E::ControlCharacter(name)),
                }
            }
            // Only ASCII backslashes were removed, so this stays UTF-8.
            match String::from_utf8(buf) {
                Ok(v) => v,
                Err(_) => return Err(E::BadUtf8(name)),
            }
        } else {
            let vs = i;
            while i < b.len() && is_bare_value_char(b[i]) {
                i += 1;
            }
            if i == vs {
                return Err(E::EmptyValue(name));
            }
            value[vs..i].to_owned()
        };
        out.push((name, v));
        while i < b.len() && is_lws(b[i]) {
            i += 1;
        }
        if i < b.len() && b[i] != b',' {
            return Err(E::ExpectedComma(out[out.len() - 1].0.clone()));
        }
    }
    if out.is_empty() {
        return Err(E::NoParameters);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(value: &str) -> Vec<(String, String)> {
        let p = DigestParams::parse(value).unwrap();
        p.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect()
    }

    #[test]
    fn escaped_and_utf8_values() {
        assert_eq!(
            pairs(r#"Digest a="x\\y\"z", b="héllo", c=tok/68=="#),
            vec![
                ("a".to_owned(), "x\\y\"z".to_owned()),
                ("b".to_owned(), "héllo".to_owned()),
                ("c".to_owned(), "tok/68==".to_owned()),
            ]
        );
        // quote() round-trips through the parser.
        let q = format!("Digest v={}", quote("a\"b\\c"));
        assert_eq!(pairs(&q)[0].1, "a\"b\\c");
    }

    #[test]
    fn accessors_are_case_insensitive_and_answer_the_first() {
        let p = DigestParams::parse("digest UserName=\"alice\", ALGORITHM=sha-256, Nonce=\"n\", x=1, x=2, realm=\"r\"")
            .unwrap();
        assert_eq!(p.username(), Some("alice"));
        assert_eq!(p.algorithm(), Some("sha-256"));
        assert_eq!(p.get("NONCE"), Some("n"));
        assert_eq!(p.get("x"), Some("1"));
        assert_eq!(p.get("opaque"), None);
        let names: Vec<&str> = p.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["username", "algorithm", "nonce", "x", "x", "realm"]);
    }

    #[test]
    fn a_comma_or_name_inside_quotes_is_part_of_the_value() {
        // A scan that splits on ',' would read algorithm=MD5 out of the username.
        let p = DigestParams::parse("Digest username=\"a, algorithm=MD5\", algorithm=SHA-256").unwrap();
        assert_eq!(p.username(), Some("a, algorithm=MD5"));
        assert_eq!(p.algorithm(), Some("SHA-256"));
        let p = DigestParams::parse("Digest realm=\"r\"").unwrap();
        assert_eq!(p.algorithm(), None);
    }

    #[test]
    fn syntax_errors_name_the_problem() {
        use DigestSyntaxError as E;
        let cases: [(&str, E, &str); 13] = [
            ("", E::NotDigest(String::new()), "scheme \"\" is not Digest"),
            (
                "Basic YWxpY2U6c2VjcmV0",
                E::NotDigest("Basic".into()),
                "scheme \"Basic\" is not Digest",
            ),
            ("Digest", E::NoParameters, "no parameters after Digest"),
            ("Digest ", E::NoParameters, "no parameters after Digest"),
            ("Digest ,, ", E::NoParameters, "no parameters after Digest"),
            ("Digest,a=b", E::NoParameters, "no parameters after Digest"),
            (
                "Digest a=b, =x",
                E::ExpectedName(12),
                "expected a parameter name at byte 12",
            ),
            ("Digest a b", E::ExpectedEquals("a".into()), "expected '=' after a"),
            ("Digest A=\"x", E::Unterminated("a".into()), "unterminated quoted a"),
            ("Digest a=\"x\\\u{1}\"", E::BadEscape("a".into()), "bad escape in a"),
            (
                "Digest a=\"x\u{7f}\"",
                E::ControlCharacter("a".into()),
                "control character in a",
            ),
            ("Digest a=, b=c", E::EmptyValue("a".into()), "empty value for a"),
            ("Digest a=\"x\" y", E::ExpectedComma("a".into()), "expected ',' after a"),
        ];
        for (value, want, message) in cases {
            let got = DigestParams::parse(value).unwrap_err();
            assert_eq!(got, want, "{value:?}");
            assert_eq!(got.to_string(), message, "{value:?}");
        }
        let long = format!("Digest x={}", "a".repeat(MAX_VALUE_LEN));
        assert_eq!(DigestParams::parse(&long), Err(E::TooLong));
        assert_eq!(E::TooLong.to_string(), "longer than 4096 bytes");
        // The scheme excerpt is bounded.
        let e = DigestParams::parse(&"B".repeat(100)).unwrap_err();
        assert_eq!(e, E::NotDigest("B".repeat(32)));
    }

    #[test]
    fn limit_is_inclusive() {
        let head = "Digest x=\"";
        let fits = format!("{head}{}\"", "a".repeat(MAX_VALUE_LEN - head.len() - 1));
        assert_eq!(fits.len(), MAX_VALUE_LEN);
        assert_eq!(
            DigestParams::parse(&fits).unwrap().get("x").map(str::len),
            Some(MAX_VALUE_LEN - 11)
        );
        let over = format!("{fits} ");
        assert_eq!(DigestParams::parse(&over), Err(DigestSyntaxError::TooLong));
    }
}
