//! Typed header values: name-addr (From, To, Contact, Route, Record-Route),
//! Via, CSeq.

use std::fmt;

use super::lex::{excerpt, find_param, fmt_params, is_lws, is_token, parse_decimal, parse_params, Cursor, Params};
use super::uri::{Host, SipUri};
use super::Method;

/// `[display-name] <uri> *(;param)` or `uri *(;param)` (RFC 3261 §20.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, unquoted and unescaped (LWS runs of a token display
    /// name collapsed to one space).
    pub display: Option<String>,
    /// The URI when its scheme is sip or sips.
    pub uri: Option<SipUri>,
    /// The URI as written, whatever its scheme.
    pub raw_uri: String,
    /// Header parameters (`tag`, `expires`, `q`, ...), values as written.
    pub params: Params,
}

fn uri_scheme_ok(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, rest)) => {
            !rest.is_empty()
                && scheme.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        }
        None => false,
    }
}

/// Check an absolute URI (any scheme, see [`check_absolute_uri`]); returns
/// the parsed SIP URI for sip/sips.
pub(crate) fn parse_any_uri(s: &str) -> Result<Option<SipUri>, String> {
    check_absolute_uri(s)?;
    let scheme = &s[..s.find(':').unwrap_or_default()];
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        SipUri::parse(s).map(Some).map_err(|e| e.to_string())
    } else {
        Ok(None)
    }
}

/// The syntax every Request-URI must have, whatever its scheme: `scheme:`
/// then visible ASCII without `<`, `>` or `"`.
pub(crate) fn check_absolute_uri(s: &str) -> Result<(), String> {
    if !uri_scheme_ok(s) {
        return Err(format!("not an absolute URI: {:?}", excerpt(s)));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"'))
    {
        return Err(format!("bad character in URI {:?}", excerpt(s)));
    }
    Ok(())
}

impl NameAddr {
    /// Parse one name-addr / addr-spec with its parameters.
    pub fn parse(s: &str) -> Result<NameAddr, String> {
        let mut c = Cursor::new(s);
        c.skip_lws();
        let mut display = None;
        if c.peek() == Some(b'"') {
            display = Some(c.quoted()?.1);
            c.skip_lws();
            if c.peek() != Some(b'<') {
                return Err("expected <uri> after the display name".into());
            }
        } else {
            // A run of tokens and LWS directly followed by '<' is a display name.
            let start = c.pos();
            c.take_while(|b| is_token(b) || is_lws(b));
            if c.peek() == Some(b'<') {
                let words: Vec<&str> = s[start..c.pos()]
                    .split(|ch: char| ch.is_ascii() && is_lws(ch as u8))
                    .filter(|w| !w.is_empty())
                    .collect();
                if !words.is_empty() {
                    display = Some(words.join(" "));
                }
            } else {
                c.set_pos(start);
            }
        }
        let raw_uri = if c.eat(b'<') {
            let rest = c.rest();
            let close = rest.find('>').ok_or("unterminated <uri>")?;
            let uri = &rest[..close];
            c.set_pos(c.pos() + close + 1);
            uri
        } else {
            // addr-spec: parameters after it belong to the header.
            c.take_while(|b| !is_lws(b) && b != b';' && b != b',')
        };
        let uri = parse_any_uri(raw_uri)?;
        let params = parse_params(&mut c)?;
        Ok(NameAddr {
            display,
            uri,
            raw_uri: raw_uri.to_owned(),
            params,
        })
    }

    /// Case-insensitive parameter lookup: `Some(None)` for a parameter without value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            f.write_str("\"")?;
            for ch in d.chars() {
                if ch == '"' || ch == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{ch}")?;
            }
            f.write_str("\" ")?;
        }
        write!(f, "<{}>", self.raw_uri)?;
        fmt_params(f, &self.params)
    }
}

/// The values of Contact: `*` or a list of addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contacts {
    /// `Contact: *` (remove all bindings).
    Star,
    /// Zero or more addresses (`expires` and `q` are in their params).
    List(Vec<NameAddr>),
}

/// One Via value: `SIP/2.0/<transport> host[:port] *(;param)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    /// Transport, upper-cased (`UDP`, `TCP`, `TLS`, ...).
    pub transport: String,
    /// Host as written (an IPv6 reference keeps its brackets).
    pub host: String,
    /// Port, if given.
    pub port: Option<u16>,
    /// Parameters (`branch`, `received`, `rport`, ...), values as written.
    pub params: Params,
}

impl Via {
    /// Parse one via-parm (LWS allowed around `/`, `:` and `;`).
    pub fn parse(s: &str) -> Result<Via, String> {
        let mut c = Cursor::new(s);
        c.skip_lws();
        let proto = c.take_while(is_token);
        if !proto.eq_ignore_ascii_case("SIP") {
            return Err(format!("protocol {:?} is not SIP", excerpt(proto)));
        }
        c.skip_lws();
        if !c.eat(b'/') {
            return Err("expected '/' after SIP".into());
        }
        c.skip_lws();
        let version = c.take_while(is_token);
        if version != "2.0" {
            return Err(format!("version {:?} is not 2.0", excerpt(version)));
        }
        c.skip_lws();
        if !c.eat(b'/') {
            return Err("expected '/' after the version".into());
        }
        c.skip_lws();
        let transport = c.take_while(is_token);
        if transport.is_empty() {
            return Err("missing transport".into());
        }
        if !c.skip_lws() {
            return Err("expected whitespace before sent-by".into());
        }
        let host_start = c.pos();
        if c.peek() == Some(b'[') {
            c.take_while(|b| b != b']');
            if !c.eat(b']') {
                return Err("unterminated IPv6 reference".into());
            }
        } else {
            c.take_while(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        }
        let host = &s[host_start..c.pos()];
        if Host::parse(host).is_none() {
            return Err(format!("bad sent-by host {:?}", excerpt(host)));
        }
        let before = c.pos();
        c.skip_lws();
        let port = if c.eat(b':') {
            c.skip_lws();
            let digits = c.take_while(|b| b.is_ascii_digit());
            Some(parse_decimal(digits, u64::from(u16::MAX)).ok_or("bad port")? as u16)
        } else {
            c.set_pos(before);
            None
        };
        let params = parse_params(&mut c)?;
        Ok(Via {
            transport: transport.to_ascii_uppercase(),
            host: host.to_owned(),
            port,
            params,
        })
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    /// Case-insensitive parameter lookup: `Some(None)` for a flag like `rport`.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        fmt_params(f, &self.params)
    }
}

/// `CSeq: <seq> <method>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number (RFC 3261 requires < 2**31; any u32 is accepted).
    pub seq: u32,
    /// Method.
    pub method: Method,
}

impl CSeq {
    /// Parse a CSeq value.
    pub fn parse(s: &str) -> Result<CSeq, String> {
        let mut c = Cursor::new(s);
        c.skip_lws();
        let digits = c.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() {
            return Err("missing sequence number".into());
        }
        let seq = parse_decimal(digits, u64::from(u32::MAX)).ok_or("sequence number out of range")? as u32;
        if !c.skip_lws() {
            return Err("expected whitespace after the sequence number".into());
        }
        let method = c.take_while(is_token);
        let method: Method = method.parse().map_err(|_| "bad method".to_owned())?;
        c.skip_lws();
        if !c.eof() {
            return Err(format!("unexpected {:?}", excerpt(c.rest())));
        }
        Ok(CSeq { seq, method })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_forms() {
        let a = NameAddr::parse(r#""J Rosenberg \\\""       <sip:jdrosen@example.com>;tag=98asjd8"#).unwrap();
        assert_eq!(a.display.as_deref(), Some(r#"J Rosenberg \""#));
        assert_eq!(a.raw_uri, "sip:jdrosen@example.com");
        assert_eq!(a.tag(), Some("98asjd8"));
        let a = NameAddr::parse("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(a.display.as_deref(), Some("caller"));
        let a = NameAddr::parse("Joe  \r\n Doe <sip:joe@example.com>").unwrap();
        assert_eq!(a.display.as_deref(), Some("Joe Doe"));
        // addr-spec: parameters belong to the header, not the URI.
        let a = NameAddr::parse("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").unwrap();
        assert_eq!(a.display, None);
        assert_eq!(a.uri.as_ref().unwrap().params, vec![]);
        assert_eq!(a.tag(), Some("1918181833n"));
        let a = NameAddr::parse("<sip:a@b;lr>;expires=60;q=0.5;+sip.instance=\"<urn:uuid:1>\"").unwrap();
        assert_eq!(a.uri.as_ref().unwrap().param("lr"), Some(None));
        assert_eq!(a.param("expires"), Some(Some("60")));
        assert_eq!(a.param("q"), Some(Some("0.5")));
        assert_eq!(a.param("+sip.instance"), Some(Some("\"<urn:uuid:1>\"")));
        let a = NameAddr::parse("isbn:2983792873").unwrap();
        assert_eq!((a.uri, a.raw_uri.as_str()), (None, "isbn:2983792873"));
    }

    #[test]
    fn bad_name_addrs() {
        for bad in [
            r#""Mr. J. User <sip:j.user@example.com>"#,          // quotbal
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43", // baddn
            "\"Watson, Thomas\" < sip:t.watson@example.org >",   // badaspec
            "<sip:a@b",
            "sip:a@b, sip:c@d",
            "<sip:a@b>;;",
            "<sip:a@b> x",
            "",
            "<>",
        ] {
            assert!(NameAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn name_addr_display_round_trips() {
        for s in [
            r#""A \"B\" \\ C" <sip:a@b.example>;tag=x;lr"#,
            "<sip:[2001:db8::1]:5061;transport=tls>",
            "<urn:uuid:f81d4fae>;expires=0",
        ] {
            let a = NameAddr::parse(s).unwrap();
            assert_eq!(a.to_string(), s);
            assert_eq!(NameAddr::parse(&a.to_string()).unwrap(), a);
        }
    }

    #[test]
    fn via_forms() {
        let v = Via::parse("SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bK776;received=2001:db8::9;rport").unwrap();
        assert_eq!(v.transport, "TLS");
        assert_eq!(v.host, "[2001:db8::1]");
        assert_eq!(v.port, Some(5061));
        assert_eq!(v.branch(), Some("z9hG4bK776"));
        assert_eq!(v.param("received"), Some(Some("2001:db8::9")));
        assert_eq!(v.param("rport"), Some(None));
        assert_eq!(
            v.to_string(),
            "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bK776;received=2001:db8::9;rport"
        );
        // wsinv: LWS and folds everywhere.
        let v = Via::parse("SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(
            (v.transport.as_str(), v.host.as_str(), v.port),
            ("UDP", "192.0.2.2", None)
        );
        let v = Via::parse("SIP  /    2.0   / udp  192.168.255.111   ; branch=\r\n z9hG4bK30239").unwrap();
        assert_eq!((v.transport.as_str(), v.branch()), ("UDP", Some("z9hG4bK30239")));
        let v = Via::parse("SIP/2.0/TCP host.example : 5070").unwrap();
        assert_eq!(v.port, Some(5070));
        assert_eq!(Via::parse(&v.to_string()).unwrap(), v);
    }

    #[test]
    fn bad_vias() {
        for bad in [
            "SIP/2.0/UDP 192.0.2.15;;", // badinv01
            "SIP/3.0/UDP host",
            "SIP/2.0/UDP",
            "SIP/2.0/UDPhost",
            "SIP/2.0 host",
            "HTTP/2.0/TCP host",
            "SIP/2.0/TLS [2001:db8::1:5061",
            "SIP/2.0/TLS host:99999",
            "SIP/2.0/TLS host:",
            "SIP/2.0/TLS ho_st",
            "SIP/2.0/TLS host;branch=",
            "",
        ] {
            assert!(Via::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Via::parse("SIP/2.0/TLS host;branch").unwrap().branch().is_none());
    }

    #[test]
    fn cseq_forms() {
        assert_eq!(
            CSeq::parse("0009\r\n  INVITE").unwrap(),
            CSeq {
                seq: 9,
                method: Method::Invite
            }
        );
        assert_eq!(
            CSeq::parse("1 NEWMETHOD").unwrap().method,
            Method::Other("NEWMETHOD".into())
        );
        assert_eq!(CSeq::parse("4294967295 ACK").unwrap().seq, u32::MAX);
        for bad in [
            "36893488147419103232 REGISTER",
            "1",
            "INVITE",
            "1INVITE",
            "1 INVITE x",
            "-1 BYE",
        ] {
            assert!(CSeq::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(CSeq::parse("7 BYE").unwrap().to_string(), "7 BYE");
    }
}
