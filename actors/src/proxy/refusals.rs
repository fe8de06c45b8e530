//! Why the client door refused someone: one enum, counted in `ctl status`
//! (`sip.refusals`) and logged at most once a second per reason
//! ([`refused!`](crate::refused)).

use crate::net::throttle::Reason;

/// A refusal at the client port; the text form is an interface (`ctl status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ClientRefusal {
    /// Digest credentials that did not verify (wrong password, unknown user).
    DigestFailure,
    /// A connection turned away because every client-connection permit was taken.
    ClientLimit,
}

impl Reason for ClientRefusal {
    fn as_str(self) -> &'static str {
        match self {
            ClientRefusal::DigestFailure => "digest-failure",
            ClientRefusal::ClientLimit => "client-limit",
        }
    }
}

/// The client door's refusal counters.
pub type ClientRefusals = crate::net::throttle::Refusals<ClientRefusal>;
