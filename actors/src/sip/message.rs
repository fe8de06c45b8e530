//! [`SipMessage`]: parsing a whole message, typed access, validation, the
//! proxy's edits and serialization.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use super::addr::{parse_any_uri, CSeq, Contacts, NameAddr, Via};
use super::lex::{excerpt, parse_decimal, split_list, trim_lws};
use super::parse::{find_head_end, parse_head, Framing};
use super::{Header, HeaderName, Method, ParseError, MAX_BODY, MAX_HEADER_BLOCK};

/// Request line or status line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD Request-URI SIP/2.0`
    Request {
        /// The method.
        method: Method,
        /// The Request-URI as written.
        uri: String,
    },
    /// `SIP/2.0 code reason`
    Response {
        /// Status code (100..=699).
        code: u16,
        /// Reason phrase as written (may be empty).
        reason: String,
    },
}

/// One SIP message. Headers keep their order and their bytes as received;
/// typed views are parsed on demand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipMessage {
    /// Request or status line.
    pub start: StartLine,
    /// Headers in order.
    pub headers: Vec<Header>,
    /// The body (exactly Content-Length bytes when that header is present).
    pub body: Bytes,
}

/// Headers that may appear only once, in the order they are checked.
const SINGLE: [HeaderName; 6] = [
    HeaderName::To,
    HeaderName::From,
    HeaderName::CallId,
    HeaderName::CSeq,
    HeaderName::MaxForwards,
    HeaderName::ContentLength,
];

fn bad(name: HeaderName, why: impl Into<String>) -> ParseError {
    ParseError::BadHeader {
        name: name.canonical(),
        why: why.into(),
    }
}

impl SipMessage {
    /// Parse one whole message (a datagram, or a test fixture).
    ///
    /// CRLFs before the start line are skipped. The body is everything after
    /// the blank line; when Content-Length is present the body must be at least
    /// that long and is cut to it (RFC 3261 §18.3: extra bytes are discarded).
    /// Structure and limits are checked here; [`SipMessage::validate`] checks
    /// the headers a proxy needs.
    pub fn parse(bytes: Bytes) -> Result<SipMessage, ParseError> {
        let base = bytes
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(bytes.len());
        let data = &bytes[base..];
        let end = find_head_end(data, 0).map_err(|_| {
            if data.len() > MAX_HEADER_BLOCK {
                ParseError::HeaderBlockTooLarge
            } else {
                ParseError::Truncated
            }
        })?;
        let head = parse_head(&data[..end]);
        if let Some(e) = head.fatal_error() {
            return Err(e);
        }
        if let Some(e) = head.content_error() {
            return Err(e);
        }
        let available = data.len() - end;
        let body_len = match head.framing {
            Framing::Length(n) if n > available => {
                return Err(ParseError::BadContentLength(format!(
                    "Content-Length {n} but only {available} bytes of body"
                )))
            }
            Framing::Length(n) => n,
            _ if available > MAX_BODY => return Err(ParseError::BodyTooLarge(available)),
            _ => available,
        };
        let body = bytes.slice(base + end..base + end + body_len);
        Ok(head.build(&bytes, base, body))
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method (`None` for a response).
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code (`None` for a request).
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The first header with that name.
    pub fn header(&self, name: HeaderName) -> Option<&Header> {
        self.headers.iter().find(|h| h.name == name)
    }

    /// Every header with that name, in order (`Other` yields every unknown header).
    pub fn headers_named(&self, name: HeaderName) -> impl Iterator<Item = &Header> + '_ {
        self.headers.iter().filter(move |h| h.name == name)
    }

    /// All values of every header of that name, in order. List headers (see
    /// [`HeaderName::is_list`]) are split at commas outside quotes and `<...>`;
    /// other headers give their whole value.
    pub fn values(&self, name: HeaderName) -> Vec<&str> {
        let mut out = Vec::new();
        for h in self.headers_named(name) {
            let v = h.value_str();
            if name.is_list() {
                out.extend(split_list(v).into_iter().map(|r| &v[r]));
            } else {
                out.push(v);
            }
        }
        out
    }

    /// The first unknown header with this name (case-insensitive).
    pub fn other_header(&self, raw_name: &str) -> Option<&Header> {
        self.headers
            .iter()
            .find(|h| h.name == HeaderName::Other && h.raw_name.eq_ignore_ascii_case(raw_name.as_bytes()))
    }

    fn required(&self, name: HeaderName) -> Result<&Header, ParseError> {
        self.header(name).ok_or(ParseError::MissingHeader(name.canonical()))
    }

    /// The Call-ID (`word ["@" word]`: non-empty, no whitespace).
    pub fn call_id(&self) -> Result<&str, ParseError> {
        let v = self.required(HeaderName::CallId)?.value_str();
        if v.is_empty() || v.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(bad(HeaderName::CallId, format!("{:?}", excerpt(v))));
        }
        Ok(v)
    }

    /// The CSeq.
    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        CSeq::parse(self.required(HeaderName::CSeq)?.value_str()).map_err(|why| bad(HeaderName::CSeq, why))
    }

    /// The From header.
    #[allow(clippy::wrong_self_convention)] // "from" is the header's name, not a conversion
    pub fn from_hdr(&self) -> Result<NameAddr, ParseError> {
        let v = self.required(HeaderName::From)?.value_str();
        NameAddr::parse(v).map_err(|why| bad(HeaderName::From, why))
    }

    /// The To header.
    pub fn to_hdr(&self) -> Result<NameAddr, ParseError> {
        let v = self.required(HeaderName::To)?.value_str();
        NameAddr::parse(v).map_err(|why| bad(HeaderName::To, why))
    }

    /// Every Via value, top first (empty when there is none).
    pub fn vias(&self) -> Result<Vec<Via>, ParseError> {
        self.values(HeaderName::Via)
            .into_iter()
            .map(|v| Via::parse(v).map_err(|why| bad(HeaderName::Via, why)))
            .collect()
    }

    /// The top Via (first value of the first Via header).
    pub fn top_via(&self) -> Result<Via, ParseError> {
        let v = self.required(HeaderName::Via)?.value_str();
        let first = split_list(v).into_iter().next().map_or("", |r| &v[r]);
        Via::parse(first).map_err(|why| bad(HeaderName::Via, why))
    }

    fn number(&self, name: HeaderName) -> Result<Option<u32>, ParseError> {
        match self.header(name) {
            None => Ok(None),
            Some(h) => parse_decimal(h.value_str(), u64::from(u32::MAX))
                .map(|n| Some(n as u32))
                .ok_or_else(|| bad(name, format!("{:?} is not a number", excerpt(h.value_str())))),
        }
    }

    /// Max-Forwards, if present.
    pub fn max_forwards(&self) -> Result<Option<u32>, ParseError> {
        self.number(HeaderName::MaxForwards)
    }

    /// The Expires header, if present (delta-seconds up to 2**32-1).
    pub fn expires(&self) -> Result<Option<u32>, ParseError> {
        self.number(HeaderName::Expires)
    }

    fn addresses(&self, name: HeaderName) -> Result<Vec<NameAddr>, ParseError> {
        self.values(name)
            .into_iter()
            .map(|v| NameAddr::parse(v).map_err(|why| bad(name, why)))
            .collect()
    }

    /// The Contact values: `*` alone, or a list (empty when there is none).
    pub fn contacts(&self) -> Result<Contacts, ParseError> {
        let values = self.values(HeaderName::Contact);
        if values.contains(&"*") {
            if values.len() == 1 {
                return Ok(Contacts::Star);
            }
            return Err(bad(HeaderName::Contact, "* with other contacts"));
        }
        self.addresses(HeaderName::Contact).map(Contacts::List)
    }

    /// The Route values, in order.
    pub fn routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        self.addresses(HeaderName::Route)
    }

    /// The Record-Route values, in order.
    pub fn record_routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        self.addresses(HeaderName::RecordRoute)
    }

    /// Semantic checks for a request/response to be processed by a proxy: To,
    /// From, Call-ID, CSeq present (once) and parseable; CSeq method equals
    /// request method; at least one Via, top Via parseable with
    /// SIP/2.0/<transport>; a SIP Request-URI parseable and without headers;
    /// Max-Forwards numeric if present; Content-Length consistent.
    pub fn validate(&self) -> Result<(), ParseError> {
        let mut counts = [0usize; SINGLE.len()];
        for h in &self.headers {
            if let Some(i) = SINGLE.iter().position(|n| *n == h.name) {
                counts[i] += 1;
            }
        }
        for (name, count) in SINGLE.iter().zip(counts).take(4) {
            if count == 0 {
                return Err(ParseError::MissingHeader(name.canonical()));
            }
        }
        self.required(HeaderName::Via)?;
        if let Some((name, _)) = SINGLE.iter().zip(counts).find(|(_, c)| *c > 1) {
            return Err(ParseError::DuplicateHeader(name.canonical()));
        }
        self.to_hdr()?;
        self.from_hdr()?;
        self.call_id()?;
        let cseq = self.cseq()?;
        self.top_via()?;
        if let StartLine::Request { method, uri } = &self.start {
            if cseq.method != *method {
                return Err(ParseError::CSeqMethodMismatch {
                    cseq: cseq.method.to_string(),
                    method: method.to_string(),
                });
            }
            match parse_any_uri(uri) {
                Err(why) => return Err(ParseError::BadRequestUri(why)),
                Ok(Some(u)) if u.headers.is_some() => {
                    return Err(ParseError::BadRequestUri(
                        "headers are not allowed in a Request-URI".into(),
                    ))
                }
                Ok(_) => {}
            }
        }
        self.max_forwards()?;
        if let Some(h) = self.header(HeaderName::ContentLength) {
            match parse_decimal(h.value_str(), u64::MAX) {
                Some(n) if n == self.body.len() as u64 => {}
                _ => {
                    return Err(ParseError::BadContentLength(format!(
                        "{:?} for a body of {} bytes",
                        excerpt(h.value_str()),
                        self.body.len()
                    )))
                }
            }
        }
        Ok(())
    }

    /// Insert `h` before the first header of the same name, or at the front
    /// (a new top Via or Record-Route).
    pub fn push_header_front(&mut self, h: Header) {
        let at = self.headers.iter().position(|x| x.same_name(&h)).unwrap_or(0);
        self.headers.insert(at, h);
    }

    /// Remove the first value of the first header with that name. For a list
    /// header holding several values in one line, only the first value is
    /// removed (returned as its own header) and the rest stays in place.
    pub fn remove_first(&mut self, name: HeaderName) -> Option<Header> {
        let i = self.headers.iter().position(|h| h.name == name)?;
        if name.is_list() {
            let h = &self.headers[i];
            let v = h.value_str();
            let parts = split_list(v);
            if parts.len() > 1 {
                let first = h.value.slice(parts[0].clone());
                let rest = h.value.slice(parts[1].start..v.len());
                let removed = Header {
                    name,
                    raw_name: h.raw_name.clone(),
                    value: first,
                };
                self.headers[i].value = rest;
                return Some(removed);
            }
        }
        Some(self.headers.remove(i))
    }

    /// Replace every header of that name with `h` (at the first one's place,
    /// or at the end).
    pub fn set_header(&mut self, h: Header) {
        match self.headers.iter().position(|x| x.same_name(&h)) {
            Some(i) => {
                // Later duplicates go; the first (at `i`) is then overwritten.
                let mut first = true;
                self.headers
                    .retain(|x| !x.same_name(&h) || std::mem::replace(&mut first, false));
                self.headers[i] = h;
            }
            None => self.headers.push(h),
        }
    }

    /// Serialize: start line, headers as `raw_name: value` in order,
    /// Content-Length set to the body length (added at the end if absent, later
    /// duplicates dropped), blank line, body.
    pub fn to_bytes(&self) -> Bytes {
        let size: usize = self.headers.iter().map(|h| h.raw_name.len() + h.value.len() + 4).sum();
        let mut out = BytesMut::with_capacity(size + self.body.len() + 96);
        // Writing into a BytesMut cannot fail.
        let _ = match &self.start {
            StartLine::Request { method, uri } => write!(out, "{method} {uri} SIP/2.0\r\n"),
            StartLine::Response { code, reason } => write!(out, "SIP/2.0 {code} {reason}\r\n"),
        };
        let mut length_written = false;
        for h in &self.headers {
            if h.name == HeaderName::ContentLength {
                if length_written {
                    continue;
                }
                length_written = true;
                out.put_slice(&h.raw_name);
                let _ = write!(out, ": {}\r\n", self.body.len());
            } else {
                out.put_slice(&h.raw_name);
                out.put_slice(b": ");
                out.put_slice(&h.value);
                out.put_slice(b"\r\n");
            }
        }
        if !length_written {
            let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        }
        out.put_slice(b"\r\n");
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Build a response to a request: copies all Via, From, To (adding
    /// `;tag=<to_tag>` when given and To has none), Call-ID, CSeq; then
    /// `Content-Length: 0`.
    pub fn response_to(req: &SipMessage, code: u16, reason: &str, to_tag: Option<&str>) -> SipMessage {
        let mut headers: Vec<Header> = req.headers_named(HeaderName::Via).cloned().collect();
        for name in [HeaderName::From, HeaderName::To, HeaderName::CallId, HeaderName::CSeq] {
            let Some(h) = req.header(name) else { continue };
            let mut h = h.clone();
            if let (HeaderName::To, Some(tag)) = (name, to_tag) {
                let has_tag = NameAddr::parse(h.value_str())
                    .map(|a| a.tag().is_some())
                    .unwrap_or(false);
                if !has_tag {
                    let mut v = BytesMut::with_capacity(h.value.len() + tag.len() + 5);
                    v.put_slice(trim_lws(h.value_str()).as_bytes());
                    v.put_slice(b";tag=");
                    v.put_slice(tag.as_bytes());
                    h.value = v.freeze();
                }
            }
            headers.push(h);
        }
        headers.push(Header::new(HeaderName::ContentLength, "0"));
        SipMessage {
            start: StartLine::Response {
                code,
                reason: reason.to_owned(),
            },
            headers,
            body: Bytes::new(),
        }
    }
}
