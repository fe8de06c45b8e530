//! SIP and SIPS URIs (RFC 3261 §19.1).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::lex::{excerpt, find_param, fmt_params, is_unreserved, Params};
use super::ParseError;

/// `sip:` or `sips:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `sip:`
    Sip,
    /// `sips:` (TLS on every hop).
    Sips,
}

/// The host part of a URI or Via.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A domain name, lower-cased.
    Domain(String),
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 address (written `[...]`).
    V6(Ipv6Addr),
}

impl Host {
    /// The address, when the host is one.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Host::Domain(_) => None,
            Host::V4(a) => Some((*a).into()),
            Host::V6(a) => Some((*a).into()),
        }
    }

    /// Parse a host: `[IPv6]`, dotted IPv4 or a hostname (RFC 3261 §25.1
    /// `host`; the top label must start with a letter).
    pub fn parse(s: &str) -> Option<Host> {
        if let Some(inner) = s.strip_prefix('[') {
            return inner.strip_suffix(']')?.parse().ok().map(Host::V6);
        }
        if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return s.parse().ok().map(Host::V4);
        }
        let trimmed = s.strip_suffix('.').unwrap_or(s);
        let mut labels = trimmed.split('.').peekable();
        let mut top_alpha = false;
        while let Some(label) = labels.next() {
            if label.is_empty() || !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return None;
            }
            if labels.peek().is_none() {
                top_alpha = label.as_bytes()[0].is_ascii_alphabetic();
            }
        }
        top_alpha.then(|| Host::Domain(s.to_ascii_lowercase()))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// A parsed `sip:`/`sips:` URI. User, password, parameters and headers are
/// kept as written (escapes included) so that [`fmt::Display`] round-trips.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipUri {
    /// sip or sips.
    pub scheme: Scheme,
    /// User part as written (may contain escapes and `;`).
    pub user: Option<String>,
    /// Password as written (deprecated by RFC 3261, still parsed).
    pub password: Option<String>,
    /// Host.
    pub host: Host,
    /// Port, if given.
    pub port: Option<u16>,
    /// URI parameters (`;transport=tls`, `;lr`), as written.
    pub params: Params,
    /// The `?headers` part without the `?`, as written.
    pub headers: Option<String>,
}

fn is_escape_at(b: &[u8], i: usize) -> bool {
    b[i] == b'%' && b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()
}

/// Every byte is allowed by `ok` or starts a valid `%HH` escape.
fn chars_ok(s: &str, ok: impl Fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if is_escape_at(b, i) {
            i += 3;
        } else if ok(b[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

fn is_user_char(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/')
}

fn is_password_char(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'&' | b'=' | b'+' | b'$' | b',')
}

fn is_param_char(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$')
}

fn is_header_char(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$' | b'=' | b'&')
}

/// Split `host[:port]` (host possibly `[IPv6]`).
pub(crate) fn split_hostport(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let close = s.find(']')?;
        let (h, rest) = s.split_at(close + 1);
        match rest.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if rest.is_empty() => (h, None),
            None => return None,
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => Some(super::lex::parse_decimal(p, u64::from(u16::MAX))? as u16),
        None => None,
    };
    Some((host, port))
}

impl SipUri {
    /// Parse a `sip:` or `sips:` URI (scheme case-insensitive).
    pub fn parse(s: &str) -> Result<SipUri, ParseError> {
        let bad = |why: &str| ParseError::BadUri(format!("{why}: {:?}", excerpt(s)));
        let (scheme, rest) = s.split_once(':').ok_or_else(|| bad("no scheme"))?;
        let scheme = if scheme.eq_ignore_ascii_case("sip") {
            Scheme::Sip
        } else if scheme.eq_ignore_ascii_case("sips") {
            Scheme::Sips
        } else {
            return Err(bad("not a sip or sips URI"));
        };
        // '@' appears in neither host, params nor headers unescaped, so the
        // first one ends the userinfo (whose user may contain ';' and '?').
        let (userinfo, rest) = match rest.split_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pw) = match u.split_once(':') {
                    Some((user, pw)) => (user, Some(pw)),
                    None => (u, None),
                };
                if user.is_empty() || !chars_ok(user, is_user_char) {
                    return Err(bad("bad user part"));
                }
                if let Some(pw) = pw {
                    if !chars_ok(pw, is_password_char) {
                        return Err(bad("bad password"));
                    }
                }
                (Some(user.to_owned()), pw.map(str::to_owned))
            }
        };
        let (rest, headers) = match rest.split_once('?') {
            Some((r, h)) => {
                if !chars_ok(h, is_header_char) {
                    return Err(bad("bad headers"));
                }
                (r, Some(h.to_owned()))
            }
            None => (rest, None),
        };
        let mut parts = rest.split(';');
        let hostport = parts.next().unwrap_or_default();
        let (host, port) = split_hostport(hostport).ok_or_else(|| bad("bad host or port"))?;
        let host = Host::parse(host).ok_or_else(|| bad("bad host"))?;
        let mut params = Params::new();
        for p in parts {
            let (name, value) = match p.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (p, None),
            };
            if name.is_empty() || !chars_ok(name, is_param_char) {
                return Err(bad("bad parameter"));
            }
            if let Some(v) = value {
                if v.is_empty() || !chars_ok(v, is_param_char) {
                    return Err(bad("bad parameter value"));
                }
            }
            params.push((name.to_owned(), value.map(str::to_owned)));
        }
        Ok(SipUri {
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// Case-insensitive parameter lookup: `Some(None)` for a flag like `lr`.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// The address of record: `sip:user@host` with the host lower-cased, no
    /// port, parameters or headers, `sips` normalised to `sip`, and escapes of
    /// unreserved characters decoded (RFC 3261 §19.1.4 treats them as equal).
    pub fn aor(&self) -> String {
        match &self.user {
            Some(user) => format!("sip:{}@{}", normalise_escapes(user), self.host),
            None => format!("sip:{}", self.host),
        }
    }
}

/// Decode `%HH` escapes of unreserved characters; upper-case the others.
fn normalise_escapes(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if is_escape_at(b, i) {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            let v = hex(b[i + 1]) * 16 + hex(b[i + 2]);
            if is_unreserved(v) {
                out.push(v as char);
            } else {
                out.push('%');
                out.push(b[i + 1].to_ascii_uppercase() as char);
                out.push(b[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            // The user part was checked to be ASCII when parsed.
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.scheme {
            Scheme::Sip => "sip:",
            Scheme::Sips => "sips:",
        })?;
        if let Some(user) = &self.user {
            f.write_str(user)?;
            if let Some(pw) = &self.password {
                write!(f, ":{pw}")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        fmt_params(f, &self.params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uri() {
        let u = SipUri::parse("sips:Alice:secret@Atlanta.Example.COM:5061;transport=tls;lr?subject=hi").unwrap();
        assert_eq!(u.scheme, Scheme::Sips);
        assert_eq!(u.user.as_deref(), Some("Alice"));
        assert_eq!(u.password.as_deref(), Some("secret"));
        assert_eq!(u.host, Host::Domain("atlanta.example.com".into()));
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.param("TRANSPORT"), Some(Some("tls")));
        assert_eq!(u.param("lr"), Some(None));
        assert_eq!(u.param("maddr"), None);
        assert_eq!(u.headers.as_deref(), Some("subject=hi"));
        assert_eq!(u.aor(), "sip:Alice@atlanta.example.com");
        assert_eq!(
            u.to_string(),
            "sips:Alice:secret@atlanta.example.com:5061;transport=tls;lr?subject=hi"
        );
    }

    #[test]
    fn ipv6_and_ipv4_hosts() {
        let u = SipUri::parse("sip:bob@[2001:db8::1]:5061;transport=tls").unwrap();
        assert_eq!(u.host, Host::V6("2001:db8::1".parse().unwrap()));
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.to_string(), "sip:bob@[2001:db8::1]:5061;transport=tls");
        assert_eq!(u.aor(), "sip:bob@[2001:db8::1]");
        let u = SipUri::parse("sip:[::1]").unwrap();
        assert_eq!((u.host, u.port), (Host::V6(Ipv6Addr::LOCALHOST), None));
        let u = SipUri::parse("sip:user@255.255.255.255").unwrap();
        assert_eq!(u.host, Host::V4(Ipv4Addr::BROADCAST));
        for bad in [
            "sip:bob@[2001:db8::1",
            "sip:bob@[zz::1]",
            "sip:bob@999.1.1.1",
            "sip:bob@host:99999",
            "sip:bob@host:",
            "sip:bob@[::1]x",
            "sip:",
            "sip:@host",
            "sip:a b@host",
            "sip:bob@-",
            "sip:bob@a..b",
            "sip:bob@host;;lr",
            "sip:bob@host;a=",
            "tel:+123",
            "nocolon",
        ] {
            assert!(SipUri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn escapes_and_semicolons_in_user() {
        // RFC 4475 esc01 / semiuri / escnull.
        let u = SipUri::parse("sip:sips%3Auser%40example.com@example.net").unwrap();
        assert_eq!(u.user.as_deref(), Some("sips%3Auser%40example.com"));
        assert_eq!(u.host, Host::Domain("example.net".into()));
        let u = SipUri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user.as_deref(), Some("user;par=u%40example.net"));
        assert!(u.params.is_empty());
        let u = SipUri::parse("sip:cal%6Cer@192.168.0.2:5060;%6C%72;n%61me=v%61lue%25%34%31").unwrap();
        assert_eq!(u.param("%6C%72"), Some(None));
        assert_eq!(u.aor(), "sip:caller@192.168.0.2");
        assert_eq!(
            SipUri::parse("sip:%75se%72@example.com").unwrap().aor(),
            "sip:user@example.com"
        );
        assert_eq!(
            SipUri::parse("sip:null-%00-null@example.com").unwrap().aor(),
            "sip:null-%00-null@example.com"
        );
        assert!(SipUri::parse("sip:bad%4@example.com").is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "sip:example.com",
            "sip:a@b.example;maddr=[2001:db8::9];x",
            "sips:%41lice@[2001:db8::1]:5061",
            "sip:u:@h.example",
            "sip:user;par=u%40example.net@example.com",
        ] {
            let u = SipUri::parse(s).unwrap();
            assert_eq!(u.to_string(), s);
            assert_eq!(SipUri::parse(&u.to_string()).unwrap(), u);
        }
    }
}
