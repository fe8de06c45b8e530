//! Why a SIP message was refused, and the one mapping to SIP answers.

/// A malformed, over-limit or semantically unusable SIP message.
///
/// Each variant carries what is needed to name the problem; [`ParseError::status`]
/// is the one place these map to a status code and reason phrase.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The message ends before the blank line that closes its header block.
    #[error("incomplete message: no end of headers")]
    Truncated,
    /// The request or status line does not follow RFC 3261 syntax.
    #[error("bad start line: {0}")]
    BadStartLine(String),
    /// The start line names a SIP version other than 2.0.
    #[error("unsupported SIP version {0:?}")]
    BadVersion(String),
    /// A method that is not a token.
    #[error("bad method {0:?}")]
    BadMethod(String),
    /// The Request-URI is not an absolute URI, or is an unusable SIP URI.
    #[error("bad Request-URI: {0}")]
    BadRequestUri(String),
    /// A header line that is not `name: value`.
    #[error("bad header line: {0}")]
    BadHeaderLine(String),
    /// A header the message must carry is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header allowed once appears more than once (or with several values).
    #[error("more than one {0} header")]
    DuplicateHeader(&'static str),
    /// A known header whose value does not parse.
    #[error("bad {name} header: {why}")]
    BadHeader {
        /// Canonical name of the header.
        name: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The CSeq method differs from the request method.
    #[error("CSeq method {cseq} differs from request method {method}")]
    CSeqMethodMismatch {
        /// Method in the CSeq header.
        cseq: String,
        /// Method of the request line.
        method: String,
    },
    /// Content-Length is not a number, negative, repeated with another value,
    /// or disagrees with the body.
    #[error("bad Content-Length: {0}")]
    BadContentLength(String),
    /// The start line or one (unfolded) header line exceeds [`super::MAX_LINE`].
    #[error("line longer than {} bytes", super::MAX_LINE)]
    LineTooLong,
    /// More than [`super::MAX_HEADERS`] header lines.
    #[error("more than {} headers", super::MAX_HEADERS)]
    TooManyHeaders,
    /// The header block exceeds [`super::MAX_HEADER_BLOCK`].
    #[error("header block larger than {} bytes", super::MAX_HEADER_BLOCK)]
    HeaderBlockTooLarge,
    /// The body (announced or present) exceeds [`super::MAX_BODY`]; carries its size.
    #[error("body of {0} bytes exceeds the {max}-byte limit", max = super::MAX_BODY)]
    BodyTooLarge(usize),
    /// A SIP URI that does not parse.
    #[error("bad URI: {0}")]
    BadUri(String),
}

impl ParseError {
    /// The one place errors map to SIP answers: status code and reason phrase.
    pub fn status(&self) -> (u16, String) {
        match self {
            ParseError::Truncated => (400, "Incomplete Message".into()),
            ParseError::BadStartLine(_) => (400, "Bad Start Line".into()),
            ParseError::BadVersion(_) => (505, "Version Not Supported".into()),
            ParseError::BadMethod(_) => (400, "Bad Method".into()),
            ParseError::BadRequestUri(_) => (400, "Bad Request-URI".into()),
            ParseError::BadHeaderLine(_) => (400, "Bad Header Line".into()),
            ParseError::MissingHeader(name) => (400, format!("Missing {name}")),
            ParseError::DuplicateHeader(name) => (400, format!("Duplicate {name}")),
            ParseError::BadHeader { name, .. } => (400, format!("Bad {name}")),
            ParseError::CSeqMethodMismatch { .. } => (400, "CSeq Method Mismatch".into()),
            ParseError::BadContentLength(_) => (400, "Bad Content-Length".into()),
            ParseError::LineTooLong | ParseError::TooManyHeaders | ParseError::HeaderBlockTooLarge => {
                (513, "Message Too Large".into())
            }
            ParseError::BodyTooLarge(_) => (413, "Request Entity Too Large".into()),
            ParseError::BadUri(_) => (400, "Bad URI".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_name_the_problem() {
        let cases = [
            (ParseError::MissingHeader("Call-ID"), 400, "Missing Call-ID"),
            (ParseError::MissingHeader("From"), 400, "Missing From"),
            (
                ParseError::CSeqMethodMismatch {
                    cseq: "INVITE".into(),
                    method: "OPTIONS".into(),
                },
                400,
                "CSeq Method Mismatch",
            ),
            (ParseError::BadContentLength("-1".into()), 400, "Bad Content-Length"),
            (
                ParseError::BadHeader {
                    name: "Via",
                    why: "x".into(),
                },
                400,
                "Bad Via",
            ),
            (ParseError::BadVersion("SIP/7.0".into()), 505, "Version Not Supported"),
            (ParseError::BodyTooLarge(1 << 20), 413, "Request Entity Too Large"),
            (ParseError::LineTooLong, 513, "Message Too Large"),
            (ParseError::TooManyHeaders, 513, "Message Too Large"),
            (ParseError::HeaderBlockTooLarge, 513, "Message Too Large"),
            (ParseError::DuplicateHeader("To"), 400, "Duplicate To"),
        ];
        for (err, code, reason) in cases {
            assert_eq!(err.status(), (code, reason.to_owned()), "{err}");
        }
    }
}
