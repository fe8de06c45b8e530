//! The header-block scanner shared by [`super::SipMessage::parse`] and the
//! stream decoder: finds the end of the header block, splits it into a start
//! line and (unfolded) header lines, and records byte ranges so that the
//! message can later be built zero-copy from one `Bytes`.

use std::ops::Range;

use bytes::Bytes;
use memchr::memchr;

use super::lex::{is_token, trim_range};
use super::{Header, HeaderName, Method, ParseError, SipMessage, StartLine, MAX_HEADERS, MAX_HEADER_BLOCK, MAX_LINE};

/// Where the header block ends (just past its blank line), searching no
/// further than [`MAX_HEADER_BLOCK`] bytes.
///
/// `Err(resume)`: not found yet; a later search of the same, longer buffer may
/// start at `resume`. Lines end with LF, optionally preceded by CR.
pub(crate) fn find_head_end(buf: &[u8], from: usize) -> Result<usize, usize> {
    let window = &buf[..buf.len().min(MAX_HEADER_BLOCK)];
    let mut i = from;
    while i < window.len() {
        let Some(off) = memchr(b'\n', &window[i..]) else {
            return Err(window.len());
        };
        let nl = i + off;
        match window.get(nl + 1) {
            None => return Err(nl),
            Some(b'\n') => return Ok(nl + 2),
            Some(b'\r') => match window.get(nl + 2) {
                None => return Err(nl),
                Some(b'\n') => return Ok(nl + 3),
                Some(_) => {}
            },
            Some(_) => {}
        }
        i = nl + 1;
    }
    Err(i.min(window.len()))
}

/// What the Content-Length header(s) say about the body on a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No Content-Length.
    Absent,
    /// A valid length within [`super::MAX_BODY`].
    Length(usize),
    /// Not a non-negative decimal, or several different values.
    Bad(String),
    /// A valid length over [`super::MAX_BODY`] (saturated at `usize::MAX`).
    TooLarge(usize),
}

/// One header line's ranges within the header block.
#[derive(Clone, Debug)]
pub(crate) struct RawHeader {
    name: HeaderName,
    raw_name: Range<usize>,
    value: Range<usize>,
}

/// A scanned header block. Ranges are relative to the block's first byte.
#[derive(Clone, Debug)]
pub(crate) struct RawHead {
    /// The start line (a best guess when `start_error` is set).
    pub start: StartLine,
    pub start_error: Option<ParseError>,
    headers: Vec<RawHeader>,
    /// First over-limit condition (line length, header count).
    pub limit_error: Option<ParseError>,
    /// First header line that is not `name: value`.
    pub header_error: Option<ParseError>,
    pub framing: Framing,
    /// Set when several Content-Length headers agree (a validation error,
    /// but the framing is still sound).
    pub repeated_length: bool,
}

impl RawHead {
    /// Errors that leave the stream framing unsound: the caller must close.
    pub(crate) fn fatal_error(&self) -> Option<ParseError> {
        if let Some(e) = &self.limit_error {
            return Some(e.clone());
        }
        match &self.framing {
            Framing::Bad(why) => Some(ParseError::BadContentLength(why.clone())),
            Framing::TooLarge(n) => Some(ParseError::BodyTooLarge(*n)),
            Framing::Absent | Framing::Length(_) => None,
        }
    }

    /// Errors in a message whose framing is sound.
    pub(crate) fn content_error(&self) -> Option<ParseError> {
        self.start_error.clone().or_else(|| self.header_error.clone())
    }

    /// Build the message from `bytes`, in which the header block starts at `base`.
    pub(crate) fn build(self, bytes: &Bytes, base: usize, body: Bytes) -> SipMessage {
        let headers = self
            .headers
            .into_iter()
            .map(|h| Header {
                name: h.name,
                raw_name: bytes.slice(base + h.raw_name.start..base + h.raw_name.end),
                value: bytes.slice(base + h.value.start..base + h.value.end),
            })
            .collect();
        SipMessage {
            start: self.start,
            headers,
            body,
        }
    }
}

fn is_sp_ht(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Scan a complete header block (start line through blank line).
pub(crate) fn parse_head(head: &[u8]) -> RawHead {
    let line_end = |from: usize| -> (usize, usize) {
        // (end of content, start of next line)
        match memchr(b'\n', &head[from..]) {
            Some(off) => {
                let nl = from + off;
                let end = if nl > from && head[nl - 1] == b'\r' { nl - 1 } else { nl };
                (end, nl + 1)
            }
            None => (head.len(), head.len()),
        }
    };
    let (end, mut pos) = line_end(0);
    let mut raw = RawHead {
        start: StartLine::Request {
            method: Method::Other(String::new()),
            uri: String::new(),
        },
        start_error: None,
        headers: Vec::with_capacity(16),
        limit_error: None,
        header_error: None,
        framing: Framing::Absent,
        repeated_length: false,
    };
    if end > MAX_LINE {
        raw.limit_error = Some(ParseError::LineTooLong);
    }
    let (start, err) = parse_start_line(&head[..end]);
    raw.start = start;
    raw.start_error = err;

    // The header being accumulated: (line start, content end incl. folds).
    let mut current: Option<(usize, usize)> = None;
    let mut count = 0usize;
    while pos < head.len() {
        let (end, next) = line_end(pos);
        if end == pos {
            break; // the blank line
        }
        if is_sp_ht(head[pos]) {
            match current.as_mut() {
                Some((_, cur_end)) => *cur_end = end,
                None => {
                    if raw.header_error.is_none() {
                        raw.header_error =
                            Some(ParseError::BadHeaderLine("continuation line before any header".into()));
                    }
                }
            }
        } else {
            if let Some((s, e)) = current.take() {
                finish_header(head, s, e, &mut raw);
            }
            count += 1;
            if count > MAX_HEADERS {
                raw.limit_error.get_or_insert(ParseError::TooManyHeaders);
                return raw;
            }
            current = Some((pos, end));
        }
        pos = next;
    }
    if let Some((s, e)) = current {
        finish_header(head, s, e, &mut raw);
    }
    raw
}

fn finish_header(head: &[u8], start: usize, end: usize, raw: &mut RawHead) {
    if end - start > MAX_LINE {
        raw.limit_error.get_or_insert(ParseError::LineTooLong);
        return;
    }
    let line = &head[start..end];
    let Some(colon) = memchr(b':', line) else {
        bad_line(raw, line, "no colon");
        return;
    };
    let name_range = trim_range(head, start..start + colon);
    let name = &head[name_range.clone()];
    // Only trailing SP/HT may separate the name from the colon.
    if name_range.start != start || name.is_empty() || !name.iter().all(|&b| is_token(b)) {
        bad_line(raw, line, "bad header name");
        return;
    }
    let hname = HeaderName::from_bytes(name);
    let value = trim_range(head, start + colon + 1..end);
    if hname == HeaderName::ContentLength {
        content_length(&head[value.clone()], raw);
    }
    if std::str::from_utf8(&head[value.clone()]).is_err() {
        if raw.header_error.is_none() {
            raw.header_error = Some(ParseError::BadHeader {
                name: if hname == HeaderName::Other {
                    "Header"
                } else {
                    hname.canonical()
                },
                why: "value is not UTF-8".into(),
            });
        }
        return;
    }
    raw.headers.push(RawHeader {
        name: hname,
        raw_name: name_range,
        value,
    });
}

fn bad_line(raw: &mut RawHead, line: &[u8], why: &str) {
    // A broken line that may have meant Content-Length makes the framing unknown.
    let word_end = line.iter().position(|&b| !is_token(b)).unwrap_or(line.len());
    if HeaderName::from_bytes(&line[..word_end]) == HeaderName::ContentLength {
        raw.framing = Framing::Bad(format!("malformed Content-Length line ({why})"));
    }
    if raw.header_error.is_none() {
        let text = String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned();
        raw.header_error = Some(ParseError::BadHeaderLine(format!("{why}: {text:?}")));
    }
}

fn content_length(value: &[u8], raw: &mut RawHead) {
    let parsed = if !value.is_empty() && value.iter().all(u8::is_ascii_digit) {
        let n = value.iter().fold(0usize, |n, &d| {
            n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
        });
        if n > super::MAX_BODY {
            Framing::TooLarge(n)
        } else {
            Framing::Length(n)
        }
    } else {
        let text = String::from_utf8_lossy(&value[..value.len().min(32)]).into_owned();
        Framing::Bad(format!("{text:?} is not a non-negative number"))
    };
    raw.framing = match (&raw.framing, parsed) {
        (Framing::Absent, p) => p,
        (Framing::Bad(_), _) => return,
        (_, p @ Framing::Bad(_)) => p,
        (old, p) if *old == p => {
            raw.repeated_length = true;
            p
        }
        _ => Framing::Bad("several different values".into()),
    };
}

/// Whether `v` looks like `SIP/<digits>.<digits>` (any case).
fn is_sip_version(v: &str) -> bool {
    let Some(num) = v.get(..4).filter(|p| p.eq_ignore_ascii_case("SIP/")).map(|_| &v[4..]) else {
        return false;
    };
    match num.split_once('.') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

fn check_version(v: &str) -> Option<ParseError> {
    if v.eq_ignore_ascii_case("SIP/2.0") {
        None
    } else if is_sip_version(v) {
        Some(ParseError::BadVersion(super::lex::excerpt(v).to_owned()))
    } else {
        Some(ParseError::BadStartLine(format!(
            "bad version {:?}",
            super::lex::excerpt(v)
        )))
    }
}

/// Parse a request or status line; on error, also return a best guess of it
/// (so that a response can still be built from the headers).
pub(crate) fn parse_start_line(line: &[u8]) -> (StartLine, Option<ParseError>) {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(_) => {
            let guess = StartLine::Request {
                method: Method::Other(String::new()),
                uri: String::new(),
            };
            return (guess, Some(ParseError::BadStartLine("not UTF-8".into())));
        }
    };
    if text.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/")) {
        return parse_status_line(text);
    }
    let (method, rest) = text.split_once(' ').unwrap_or((text, ""));
    let (uri, version) = rest.rsplit_once(' ').unwrap_or((rest, ""));
    let guess = StartLine::Request {
        method: method
            .parse()
            .unwrap_or_else(|_| Method::Other(super::lex::excerpt(method).to_owned())),
        uri: uri.trim().to_owned(),
    };
    let err = if !text.contains(' ') || !rest.contains(' ') {
        Some(ParseError::BadStartLine(
            "expected METHOD SP Request-URI SP SIP/2.0".into(),
        ))
    } else if uri.is_empty() || uri.contains(' ') || version.is_empty() {
        Some(ParseError::BadStartLine("extra whitespace in the request line".into()))
    } else if let Some(e) = check_version(version) {
        Some(e)
    } else if let Err(e) = method.parse::<Method>() {
        Some(e)
    } else if let Err(why) = super::addr::check_absolute_uri(uri) {
        Some(ParseError::BadRequestUri(why))
    } else {
        None
    };
    (guess, err)
}

fn parse_status_line(text: &str) -> (StartLine, Option<ParseError>) {
    let (version, rest) = text.split_once(' ').unwrap_or((text, ""));
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let parsed = (code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
        .then(|| code.parse::<u16>().ok())
        .flatten()
        .filter(|c| (100..=699).contains(c));
    let start = StartLine::Response {
        code: parsed.unwrap_or(0),
        reason: reason.to_owned(),
    };
    let err = if let Some(e) = check_version(version) {
        Some(e)
    } else if parsed.is_none() {
        Some(ParseError::BadStartLine(format!(
            "bad status code {:?}",
            super::lex::excerpt(code)
        )))
    } else {
        None
    };
    (start, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_with_crlf_and_lf() {
        assert_eq!(find_head_end(b"A\r\nB: c\r\n\r\nbody", 0), Ok(11));
        assert_eq!(find_head_end(b"A\nB: c\n\nbody", 0), Ok(8));
        assert_eq!(find_head_end(b"A\r\nB: c\r\n\r", 0), Err(8));
        assert_eq!(find_head_end(b"A\r\nB: c\r\n", 0), Err(8));
        assert_eq!(find_head_end(b"A\r\nB: c", 0), Err(7));
        // Resuming from the returned position finds the same end.
        let full = b"A\r\nB: c\r\n\r\n";
        for cut in 0..full.len() {
            let resume = find_head_end(&full[..cut], 0).unwrap_err();
            assert_eq!(find_head_end(full, resume), Ok(11), "cut {cut}");
        }
    }

    #[test]
    fn head_end_is_bounded() {
        let mut big = vec![b'a'; MAX_HEADER_BLOCK + 10];
        assert_eq!(find_head_end(&big, 0), Err(MAX_HEADER_BLOCK));
        big[MAX_HEADER_BLOCK - 2] = b'\n';
        big[MAX_HEADER_BLOCK - 1] = b'\n';
        assert_eq!(find_head_end(&big, 0), Ok(MAX_HEADER_BLOCK));
    }

    #[test]
    fn start_lines() {
        let ok = |l: &str| parse_start_line(l.as_bytes());
        assert_eq!(
            ok("INVITE sip:a@b SIP/2.0"),
            (
                StartLine::Request {
                    method: Method::Invite,
                    uri: "sip:a@b".into()
                },
                None
            )
        );
        assert_eq!(
            ok("SIP/2.0 180 Ringing now"),
            (
                StartLine::Response {
                    code: 180,
                    reason: "Ringing now".into()
                },
                None
            )
        );
        assert_eq!(ok("SIP/2.0 100 ").1, None);
        assert_eq!(ok("SIP/2.0 100").1, None);
        assert_eq!(ok("sip/2.0 200 OK").1, None);
        let err = |l: &str| ok(l).1.map(|e| e.status().0);
        assert_eq!(err("OPTIONS sip:t.watson@example.org SIP/7.0"), Some(505));
        assert_eq!(err("SIP/7.0 200 OK"), Some(505));
        assert_eq!(err("INVITE  sip:a@b  SIP/2.0"), Some(400));
        assert_eq!(err("OPTIONS sip:a@b SIP/2.0  "), Some(400));
        assert_eq!(err("INVITE sip:a@b; lr SIP/2.0"), Some(400));
        assert_eq!(err("INVITE <sip:a@b> SIP/2.0"), Some(400));
        assert_eq!(err("INVITE sip:a@b"), Some(400));
        assert_eq!(err("INVITE"), Some(400));
        assert_eq!(err(""), Some(400));
        assert_eq!(err("SIP/2.0 4294967301 better not break the receiver"), Some(400));
        assert_eq!(err("SIP/2.0 099 Low"), Some(400));
        assert_eq!(err("IN\"VITE sip:a@b SIP/2.0"), Some(400));
        assert_eq!(err("OPTIONS nobodyknowsthisscheme:totallyopaquecontent SIP/2.0"), None);
        // The guess keeps method and URI for an answer.
        assert_eq!(
            ok("INVITE <sip:a@b> SIP/2.0").0,
            StartLine::Request {
                method: Method::Invite,
                uri: "<sip:a@b>".into()
            }
        );
    }

    #[test]
    fn folded_headers_and_ranges() {
        let head = b"OPTIONS sip:a@b SIP/2.0\r\nSubject :  hello\r\n  world \r\nl: 5\r\nX:\r\n\r\n";
        let raw = parse_head(head);
        assert!(raw.content_error().is_none() && raw.fatal_error().is_none());
        assert_eq!(raw.framing, Framing::Length(5));
        let msg = raw.build(&Bytes::from_static(head), 0, Bytes::new());
        assert_eq!(msg.headers.len(), 3);
        assert_eq!(&msg.headers[0].raw_name[..], b"Subject");
        assert_eq!(&msg.headers[0].value[..], b"hello\r\n  world");
        assert_eq!(msg.headers[1].name, HeaderName::ContentLength);
        assert_eq!(&msg.headers[2].value[..], b"");
    }

    #[test]
    fn content_length_framing() {
        let framing = |cl: &str| {
            let head = format!("OPTIONS sip:a@b SIP/2.0\r\n{cl}\r\n\r\n");
            parse_head(head.as_bytes()).framing
        };
        assert_eq!(framing("Content-Length: 0012"), Framing::Length(12));
        assert!(matches!(framing("Content-Length: -1"), Framing::Bad(_)));
        assert!(matches!(framing("Content-Length: 1 2"), Framing::Bad(_)));
        assert!(matches!(framing("Content-Length:"), Framing::Bad(_)));
        assert!(matches!(framing("Content-Length 5"), Framing::Bad(_)));
        assert_eq!(framing("l: 99999999999999999999999"), Framing::TooLarge(usize::MAX));
        assert_eq!(framing("l: 131073"), Framing::TooLarge(131073));
        assert_eq!(framing("l: 131072"), Framing::Length(131072));
        assert!(matches!(framing("l: 1\r\nContent-Length: 2"), Framing::Bad(_)));
        assert_eq!(framing("l: 1\r\nContent-Length: 01"), Framing::Length(1));
    }

    #[test]
    fn bad_header_lines_are_recorded_not_fatal() {
        for line in ["NoColon", ": empty name", "Bad Name: x", "Bad\"Name: x"] {
            let head = format!("OPTIONS sip:a@b SIP/2.0\r\n{line}\r\nTo: <sip:x@y>\r\n\r\n");
            let raw = parse_head(head.as_bytes());
            assert!(
                matches!(raw.content_error(), Some(ParseError::BadHeaderLine(_))),
                "{line}"
            );
            assert!(raw.fatal_error().is_none());
            assert_eq!(raw.headers.len(), 1);
        }
        let raw = parse_head(b"OPTIONS sip:a@b SIP/2.0\r\n folded\r\n\r\n");
        assert!(matches!(raw.content_error(), Some(ParseError::BadHeaderLine(_))));
        let raw = parse_head(b"OPTIONS sip:a@b SIP/2.0\r\nX: \xff\r\n\r\n");
        assert!(matches!(raw.content_error(), Some(ParseError::BadHeader { .. })));
    }

    #[test]
    fn limits() {
        let long = format!("OPTIONS sip:a@b SIP/2.0\r\nX: {}\r\n\r\n", "a".repeat(MAX_LINE));
        assert_eq!(parse_head(long.as_bytes()).fatal_error(), Some(ParseError::LineTooLong));
        let fits = format!("OPTIONS sip:a@b SIP/2.0\r\nX: {}\r\n\r\n", "a".repeat(MAX_LINE - 3));
        assert_eq!(parse_head(fits.as_bytes()).fatal_error(), None);
        // A fold counts towards the line it continues.
        let folded = format!(
            "OPTIONS sip:a@b SIP/2.0\r\nX: {}\r\n {}\r\n\r\n",
            "a".repeat(5000),
            "b".repeat(5000)
        );
        assert_eq!(
            parse_head(folded.as_bytes()).fatal_error(),
            Some(ParseError::LineTooLong)
        );
        let many = format!("OPTIONS sip:a@b SIP/2.0\r\n{}\r\n", "X: 1\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(
            parse_head(many.as_bytes()).fatal_error(),
            Some(ParseError::TooManyHeaders)
        );
        let enough = format!("OPTIONS sip:a@b SIP/2.0\r\n{}\r\n", "X: 1\r\n".repeat(MAX_HEADERS));
        assert_eq!(parse_head(enough.as_bytes()).fatal_error(), None);
    }
}
