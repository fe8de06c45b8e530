//! Methods, header names (with compact forms) and raw headers.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use super::lex::is_token;
use super::ParseError;

/// A SIP request method. Method names are case-sensitive (RFC 3261 §7.1):
/// `invite` is an unknown method, not INVITE.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// REGISTER
    Register,
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// MESSAGE (RFC 3428)
    Message,
    /// OPTIONS
    Options,
    /// SUBSCRIBE (RFC 6665)
    Subscribe,
    /// NOTIFY (RFC 6665)
    Notify,
    /// Any other token, as written.
    Other(String),
}

impl Method {
    /// The method name as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Register => "REGISTER",
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Message => "MESSAGE",
            Method::Options => "OPTIONS",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Other(s) => s,
        }
    }
}

impl FromStr for Method {
    type Err = ParseError;

    /// Any non-empty token is a method; the known ones map to their variant.
    fn from_str(s: &str) -> Result<Method, ParseError> {
        Ok(match s {
            "REGISTER" => Method::Register,
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "MESSAGE" => Method::Message,
            "OPTIONS" => Method::Options,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            _ if !s.is_empty() && s.bytes().all(is_token) => Method::Other(s.to_owned()),
            _ => return Err(ParseError::BadMethod(super::lex::excerpt(s).to_owned())),
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The headers a proxy or registrar looks at; everything else is `Other`
/// (and is forwarded byte for byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // each variant is the header of the same name
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Contact,
    ContentLength,
    ContentType,
    Route,
    RecordRoute,
    Expires,
    MinExpires,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    Allow,
    Supported,
    Require,
    ProxyRequire,
    Unsupported,
    UserAgent,
    Server,
    RetryAfter,
    Event,
    AllowEvents,
    SubscriptionState,
    Subject,
    ContentEncoding,
    ReferTo,
    ReferredBy,
    SessionExpires,
    /// A header not listed above (look it up with `SipMessage::other_header`).
    Other,
}

impl HeaderName {
    /// Case-insensitive lookup of a header name, compact forms included
    /// (RFC 3261 §7.3.3 and the extensions: i f t v m l c k s e o u r b x).
    pub fn parse(name: &str) -> HeaderName {
        HeaderName::from_bytes(name.as_bytes())
    }

    pub(crate) fn from_bytes(name: &[u8]) -> HeaderName {
        if let [c] = name {
            return match c.to_ascii_lowercase() {
                b'i' => HeaderName::CallId,
                b'f' => HeaderName::From,
                b't' => HeaderName::To,
                b'v' => HeaderName::Via,
                b'm' => HeaderName::Contact,
                b'l' => HeaderName::ContentLength,
                b'c' => HeaderName::ContentType,
                b'k' => HeaderName::Supported,
                b's' => HeaderName::Subject,
                b'e' => HeaderName::ContentEncoding,
                b'o' => HeaderName::Event,
                b'u' => HeaderName::AllowEvents,
                b'r' => HeaderName::ReferTo,
                b'b' => HeaderName::ReferredBy,
                b'x' => HeaderName::SessionExpires,
                _ => HeaderName::Other,
            };
        }
        // Longest known name: "subscription-state" / "proxy-authorization" (19).
        let mut lower = [0u8; 19];
        if name.len() > lower.len() {
            return HeaderName::Other;
        }
        for (d, s) in lower.iter_mut().zip(name) {
            *d = s.to_ascii_lowercase();
        }
        match &lower[..name.len()] {
            b"via" => HeaderName::Via,
            b"from" => HeaderName::From,
            b"to" => HeaderName::To,
            b"call-id" => HeaderName::CallId,
            b"cseq" => HeaderName::CSeq,
            b"max-forwards" => HeaderName::MaxForwards,
            b"contact" => HeaderName::Contact,
            b"content-length" => HeaderName::ContentLength,
            b"content-type" => HeaderName::ContentType,
            b"route" => HeaderName::Route,
            b"record-route" => HeaderName::RecordRoute,
            b"expires" => HeaderName::Expires,
            b"min-expires" => HeaderName::MinExpires,
            b"authorization" => HeaderName::Authorization,
            b"proxy-authorization" => HeaderName::ProxyAuthorization,
            b"www-authenticate" => HeaderName::WwwAuthenticate,
            b"proxy-authenticate" => HeaderName::ProxyAuthenticate,
            b"allow" => HeaderName::Allow,
            b"supported" => HeaderName::Supported,
            b"require" => HeaderName::Require,
            b"proxy-require" => HeaderName::ProxyRequire,
            b"unsupported" => HeaderName::Unsupported,
            b"user-agent" => HeaderName::UserAgent,
            b"server" => HeaderName::Server,
            b"retry-after" => HeaderName::RetryAfter,
            b"event" => HeaderName::Event,
            b"allow-events" => HeaderName::AllowEvents,
            b"subscription-state" => HeaderName::SubscriptionState,
            b"subject" => HeaderName::Subject,
            b"content-encoding" => HeaderName::ContentEncoding,
            b"refer-to" => HeaderName::ReferTo,
            b"referred-by" => HeaderName::ReferredBy,
            b"session-expires" => HeaderName::SessionExpires,
            _ => HeaderName::Other,
        }
    }

    /// The canonical spelling ("Call-ID", "CSeq", "WWW-Authenticate"); "" for `Other`.
    pub fn canonical(&self) -> &'static str {
        match self {
            HeaderName::Via => "Via",
            HeaderName::From => "From",
            HeaderName::To => "To",
            HeaderName::CallId => "Call-ID",
            HeaderName::CSeq => "CSeq",
            HeaderName::MaxForwards => "Max-Forwards",
            HeaderName::Contact => "Contact",
            HeaderName::ContentLength => "Content-Length",
            HeaderName::ContentType => "Content-Type",
            HeaderName::Route => "Route",
            HeaderName::RecordRoute => "Record-Route",
            HeaderName::Expires => "Expires",
            HeaderName::MinExpires => "Min-Expires",
            HeaderName::Authorization => "Authorization",
            HeaderName::ProxyAuthorization => "Proxy-Authorization",
            HeaderName::WwwAuthenticate => "WWW-Authenticate",
            HeaderName::ProxyAuthenticate => "Proxy-Authenticate",
            HeaderName::Allow => "Allow",
            HeaderName::Supported => "Supported",
            HeaderName::Require => "Require",
            HeaderName::ProxyRequire => "Proxy-Require",
            HeaderName::Unsupported => "Unsupported",
            HeaderName::UserAgent => "User-Agent",
            HeaderName::Server => "Server",
            HeaderName::RetryAfter => "Retry-After",
            HeaderName::Event => "Event",
            HeaderName::AllowEvents => "Allow-Events",
            HeaderName::SubscriptionState => "Subscription-State",
            HeaderName::Subject => "Subject",
            HeaderName::ContentEncoding => "Content-Encoding",
            HeaderName::ReferTo => "Refer-To",
            HeaderName::ReferredBy => "Referred-By",
            HeaderName::SessionExpires => "Session-Expires",
            HeaderName::Other => "",
        }
    }

    /// Whether the header's grammar is a comma-separated list, so that several
    /// values may share one header line (RFC 3261 §7.3.1).
    pub fn is_list(&self) -> bool {
        matches!(
            self,
            HeaderName::Via
                | HeaderName::Contact
                | HeaderName::Route
                | HeaderName::RecordRoute
                | HeaderName::Allow
                | HeaderName::Supported
                | HeaderName::Require
                | HeaderName::ProxyRequire
                | HeaderName::Unsupported
                | HeaderName::AllowEvents
                | HeaderName::ContentEncoding
        )
    }
}

/// One header as received: its name as written and its value, both slices of
/// the received message (zero-copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the name means.
    pub name: HeaderName,
    /// The name as received (e.g. `v` or `VIA`), used when forwarding.
    pub raw_name: Bytes,
    /// The value as received, trimmed of surrounding whitespace; folds inside
    /// are kept byte for byte.
    pub value: Bytes,
}

impl Header {
    /// A header with the canonical name (use [`Header::other`] for unknown names).
    pub fn new(name: HeaderName, value: &str) -> Header {
        Header {
            name,
            raw_name: Bytes::from_static(name.canonical().as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    /// A header with the given name as written (its meaning is looked up).
    pub fn other(raw_name: &str, value: &str) -> Header {
        Header {
            name: HeaderName::parse(raw_name),
            raw_name: Bytes::copy_from_slice(raw_name.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    /// The value as text ("" if it is not UTF-8, which the parser never produces).
    pub fn value_str(&self) -> &str {
        std::str::from_utf8(&self.value).unwrap_or("")
    }

    /// The name as received, as text.
    pub fn raw_name_str(&self) -> &str {
        std::str::from_utf8(&self.raw_name).unwrap_or("")
    }

    /// Whether this header has the same name as `other` (unknown headers are
    /// compared by their raw names, case-insensitively).
    pub(crate) fn same_name(&self, other: &Header) -> bool {
        self.name == other.name
            && (self.name != HeaderName::Other || self.raw_name.eq_ignore_ascii_case(&other.raw_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_compact_form() {
        let cases = [
            ("i", HeaderName::CallId),
            ("f", HeaderName::From),
            ("t", HeaderName::To),
            ("v", HeaderName::Via),
            ("m", HeaderName::Contact),
            ("l", HeaderName::ContentLength),
            ("c", HeaderName::ContentType),
            ("k", HeaderName::Supported),
            ("s", HeaderName::Subject),
            ("e", HeaderName::ContentEncoding),
            ("o", HeaderName::Event),
            ("u", HeaderName::AllowEvents),
            ("r", HeaderName::ReferTo),
            ("b", HeaderName::ReferredBy),
            ("x", HeaderName::SessionExpires),
            ("I", HeaderName::CallId),
            ("V", HeaderName::Via),
            ("z", HeaderName::Other),
        ];
        for (name, want) in cases {
            assert_eq!(HeaderName::parse(name), want, "{name}");
        }
    }

    #[test]
    fn long_names_are_case_insensitive_and_canonical() {
        assert_eq!(HeaderName::parse("cAlL-iD"), HeaderName::CallId);
        assert_eq!(HeaderName::parse("MaX-fOrWaRdS"), HeaderName::MaxForwards);
        assert_eq!(HeaderName::parse("www-authenticate"), HeaderName::WwwAuthenticate);
        assert_eq!(HeaderName::parse("X-Custom"), HeaderName::Other);
        assert_eq!(HeaderName::parse(""), HeaderName::Other);
        let all = [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
            HeaderName::MaxForwards,
            HeaderName::Contact,
            HeaderName::ContentLength,
            HeaderName::ContentType,
            HeaderName::Route,
            HeaderName::RecordRoute,
            HeaderName::Expires,
            HeaderName::MinExpires,
            HeaderName::Authorization,
            HeaderName::ProxyAuthorization,
            HeaderName::WwwAuthenticate,
            HeaderName::ProxyAuthenticate,
            HeaderName::Allow,
            HeaderName::Supported,
            HeaderName::Require,
            HeaderName::ProxyRequire,
            HeaderName::Unsupported,
            HeaderName::UserAgent,
            HeaderName::Server,
            HeaderName::RetryAfter,
            HeaderName::Event,
            HeaderName::AllowEvents,
            HeaderName::SubscriptionState,
            HeaderName::Subject,
            HeaderName::ContentEncoding,
            HeaderName::ReferTo,
            HeaderName::ReferredBy,
            HeaderName::SessionExpires,
        ];
        for h in all {
            assert_eq!(HeaderName::parse(h.canonical()), h, "{h:?}");
            assert_eq!(HeaderName::parse(&h.canonical().to_ascii_uppercase()), h, "{h:?}");
        }
        assert_eq!(HeaderName::CallId.canonical(), "Call-ID");
        assert_eq!(HeaderName::CSeq.canonical(), "CSeq");
        assert_eq!(HeaderName::WwwAuthenticate.canonical(), "WWW-Authenticate");
        assert_eq!(HeaderName::Other.canonical(), "");
    }

    #[test]
    fn methods_are_case_sensitive() {
        assert_eq!("INVITE".parse::<Method>().unwrap(), Method::Invite);
        assert_eq!("invite".parse::<Method>().unwrap(), Method::Other("invite".into()));
        assert_eq!("RE%47IST%45R".parse::<Method>().unwrap().as_str(), "RE%47IST%45R");
        assert!("IN VITE".parse::<Method>().is_err());
        assert!("".parse::<Method>().is_err());
        for m in [
            "REGISTER",
            "INVITE",
            "ACK",
            "BYE",
            "CANCEL",
            "MESSAGE",
            "OPTIONS",
            "SUBSCRIBE",
            "NOTIFY",
        ] {
            assert_eq!(m.parse::<Method>().unwrap().to_string(), m);
        }
    }

    #[test]
    fn header_constructors() {
        let h = Header::new(HeaderName::CallId, "abc@host");
        assert_eq!((&h.raw_name[..], h.value_str()), (&b"Call-ID"[..], "abc@host"));
        let h = Header::other("X-Foo", "bar");
        assert_eq!((h.name, h.raw_name_str()), (HeaderName::Other, "X-Foo"));
        assert!(h.same_name(&Header::other("x-foo", "baz")));
        assert!(!h.same_name(&Header::other("x-bar", "baz")));
    }
}
