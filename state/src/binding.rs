//! Registrar bindings (location records).
//!
//! A binding ties an address of record to one contact, with an absolute
//! expiry, and remembers which node holds the client's TLS connection (the
//! flow) so requests for the AOR can be delivered over it.

use serde::{Deserialize, Serialize};

/// One registered contact of an AOR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// Address of record, normalised (`sip:alice@contoso.test`).
    pub aor: String,
    /// The Contact URI as registered.
    pub contact: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// FQDN of the node holding the client's connection.
    pub flow_node: String,
    /// Flow id at that node.
    pub flow_id: u64,
    /// Call-ID of the REGISTER that made or refreshed it.
    pub call_id: String,
    /// CSeq number of that REGISTER.
    pub cseq: u32,
    /// When it was last refreshed, seconds since the Unix epoch.
    pub updated_at: u64,
    /// The Contact's q-value in thousandths (RFC 3261 §20.10): higher is tried
    /// first when forking; 1000 when the Contact named none. Absent in
    /// bindings stored before it existed.
    #[serde(default = "default_q")]
    pub q: u16,
}

fn default_q() -> u16 {
    Q_DEFAULT
}

/// The q-value of a Contact without one (1.0), in thousandths.
pub const Q_DEFAULT: u16 = 1000;

/// Parse a q-value (`0`, `0.5`, `1.000`; RFC 3261 §25.1 qvalue) into thousandths.
pub fn parse_q(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

impl Binding {
    /// Seconds left at `now` (0 when expired).
    pub fn expires_in(&self, now: u64) -> u64 {
        self.expires_at.saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_values() {
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.0"), Some(1000));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.125"), Some(125));
        assert_eq!(parse_q("0"), Some(0));
        for bad in ["1.5", "2", "0.1234", "", "x", "0.a", "-0.5"] {
            assert_eq!(parse_q(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bindings_stored_before_q_read_as_one() {
        let old = r#"{"aor":"sip:a@b","contact":"sip:a@h","expires_at":9,"flow_node":"fe1.b","flow_id":1,"call_id":"c","cseq":1,"updated_at":0}"#;
        let b: Binding = serde_json::from_str(old).unwrap();
        assert_eq!(b.q, Q_DEFAULT);
    }
}
