//! Sans-IO SIP (RFC 3261) codec: framing, parsing, typed access, serialization.
