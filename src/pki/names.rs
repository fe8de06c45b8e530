//! Names that go into certificates: node DNS names (which also become file
//! names), SAN URIs and CA common names, each validated before use.

use std::net::IpAddr;

use rcgen::string::Ia5String;
use rcgen::{DistinguishedName, DnType};

use super::PkiError;

/// Longest DNS name (RFC 1035, presentation form without the trailing dot).
const MAX_DNS_NAME: usize = 253;
/// Longest DNS label (RFC 1035).
const MAX_DNS_LABEL: usize = 63;
/// Longest CA common name (X.520 ub-common-name).
const MAX_CA_NAME: usize = 64;

/// A distinguished name holding only the common name `cn`.
pub(super) fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Validate a host name (letters, digits, hyphens; RFC 1035 lengths) and lower-case it.
///
/// Wildcards, IP literals, empty labels and a trailing dot are refused: the name
/// becomes a file name and must match a node's configured FQDN.
pub(super) fn validate_dns_name(name: &str) -> Result<String, PkiError> {
    let bad = || PkiError::BadName(name.to_owned());
    if name.is_empty() || name.len() > MAX_DNS_NAME || name.parse::<IpAddr>().is_ok() {
        return Err(bad());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_DNS_LABEL
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad());
        }
    }
    // An all-numeric last label would read as an IPv4 address to some parsers.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    Ok(name.to_ascii_lowercase())
}

/// Validate a SAN URI: a scheme, a colon and a non-empty printable ASCII rest.
pub(super) fn validate_uri(uri: &str) -> Result<Ia5String, PkiError> {
    let bad = || PkiError::BadName(uri.to_owned());
    let (scheme, rest) = uri.split_once(':').ok_or_else(bad)?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let rest_ok = !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_graphic());
    if !scheme_ok || !rest_ok {
        return Err(bad());
    }
    Ia5String::try_from(uri).map_err(|_| bad())
}

/// Validate a CA common name: not blank, no control characters, X.520 length.
pub(super) fn validate_ca_name(name: &str) -> Result<(), PkiError> {
    if name.trim().is_empty() || name.len() > MAX_CA_NAME || name.chars().any(char::is_control) {
        return Err(PkiError::BadName(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{new_ca, read_index};
    use super::super::{init_ca, issue, IssueOptions};
    use super::*;

    #[test]
    fn bad_names_are_refused() {
        let (tmp, ca) = new_ca();
        for name in [
            "not a name!",
            "",
            "*.contoso.test",
            "fe1..contoso.test",
            "-fe1.contoso.test",
            "fe1.contoso.test.",
            "10.0.0.1",
            "../etc/passwd",
        ] {
            match issue(&ca, &IssueOptions::new(name), tmp.path()) {
                Err(PkiError::BadName(n)) => assert_eq!(n, name),
                other => panic!("{name:?}: expected BadName, got {other:?}"),
            }
        }
        let opts = IssueOptions {
            uris: vec!["no scheme".into()],
            ..IssueOptions::new("fe1.contoso.test")
        };
        assert!(matches!(issue(&ca, &opts, tmp.path()), Err(PkiError::BadName(u)) if u == "no scheme"));
        assert!(matches!(
            init_ca(&tmp.path().join("ca2"), ""),
            Err(PkiError::BadName(_))
        ));
        // Nothing was recorded for the refused requests.
        assert_eq!(read_index(&ca)["certs"].as_array().unwrap().len(), 0);
    }
}
