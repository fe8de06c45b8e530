//! [`Fqdn`]: a validated, lower-cased, fully-qualified DNS name.
//!
//! Every server in the mesh is identified by its FQDN (the name in its TLS
//! certificate), so names are normalised once, here, and compared as plain
//! strings everywhere else.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

/// Longest DNS name in presentation form, without the trailing dot (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;
/// Longest single DNS label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// A validated, lower-cased DNS name (e.g. "fe1.contoso.test").
///
/// Rules: ASCII only, lower-cased on input, one trailing dot stripped, total
/// length 1..=253, at least two labels, each label 1..=63 characters of
/// `[a-z0-9-]` not starting or ending with `-`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fqdn(String);

/// Why a string is not a valid [`Fqdn`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FqdnError {
    /// The name is empty (or only a dot).
    #[error("empty DNS name")]
    Empty,
    /// The name is longer than 253 characters; carries its length.
    #[error("DNS name is {0} characters long (at most 253 allowed)")]
    TooLong(usize),
    /// The name has no dot; carries the name.
    #[error("DNS name \"{0}\" is a single label (expected at least one dot)")]
    SingleLabel(String),
    /// One label is empty, too long, or has a character outside `[a-z0-9-]`
    /// or a leading/trailing `-`.
    #[error(
        "DNS name \"{name}\" has an invalid label \"{label}\" \
         (1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-')"
    )]
    BadLabel {
        /// The whole name, as given.
        name: String,
        /// The offending label, as given.
        label: String,
    },
}

impl Fqdn {
    /// Validate and normalise `s` (lower-case, trailing dot stripped).
    pub fn new(s: &str) -> Result<Fqdn, FqdnError> {
        let trimmed = s.strip_suffix('.').unwrap_or(s);
        if trimmed.is_empty() {
            return Err(FqdnError::Empty);
        }
        // Length in characters, so a non-ASCII name reports a sensible count.
        let len = trimmed.chars().count();
        if len > MAX_NAME_LEN {
            return Err(FqdnError::TooLong(len));
        }
        if !trimmed.contains('.') {
            return Err(FqdnError::SingleLabel(s.to_owned()));
        }
        for label in trimmed.split('.') {
            if !label_ok(label) {
                return Err(FqdnError::BadLabel {
                    name: s.to_owned(),
                    label: label.to_owned(),
                });
            }
        }
        Ok(Fqdn(trimmed.to_ascii_lowercase()))
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One label, checked case-insensitively (lower-casing happens afterwards).
fn label_ok(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

impl FromStr for Fqdn {
    type Err = FqdnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fqdn::new(s)
    }
}

impl TryFrom<String> for Fqdn {
    type Error = FqdnError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Fqdn::new(&s)
    }
}

impl From<Fqdn> for String {
    fn from(f: Fqdn) -> String {
        f.0
    }
}

impl fmt::Display for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Fqdn {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Fqdn {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn valid_names_are_normalised() {
        assert_eq!(Fqdn::new("FE1.Contoso.TEST").unwrap().as_str(), "fe1.contoso.test");
        assert_eq!(Fqdn::new("fe1.contoso.test.").unwrap().as_str(), "fe1.contoso.test");
        assert_eq!(Fqdn::new("a-1.b2").unwrap().to_string(), "a-1.b2");
        let parsed: Fqdn = "Edge.Contoso.Test".parse().unwrap();
        assert_eq!(String::from(parsed.clone()), "edge.contoso.test");
        assert_eq!(parsed.as_ref(), "edge.contoso.test");
        // Borrow<str> lets sets of Fqdn be queried with &str.
        let set: HashSet<Fqdn> = [parsed].into_iter().collect();
        assert!(set.contains("edge.contoso.test"));
        // Longest allowed label and name.
        let label63 = "a".repeat(63);
        assert!(Fqdn::new(&format!("{label63}.test")).is_ok());
        let ok253 = format!("{}.{}", "a".repeat(61), vec!["b".repeat(63); 3].join("."));
        assert_eq!(ok253.len(), 253);
        assert!(Fqdn::new(&ok253).is_ok());
        assert!(Fqdn::new(&format!("{ok253}.")).is_ok());
    }

    #[test]
    fn empty() {
        assert_eq!(Fqdn::new(""), Err(FqdnError::Empty));
        assert_eq!(Fqdn::new("."), Err(FqdnError::Empty));
        assert_eq!(FqdnError::Empty.to_string(), "empty DNS name");
    }

    #[test]
    fn too_long() {
        let name = format!("{}.{}", "a".repeat(62), vec!["b".repeat(63); 3].join("."));
        assert_eq!(name.len(), 254);
        let err = Fqdn::new(&name).unwrap_err();
        assert_eq!(err, FqdnError::TooLong(254));
        assert_eq!(err.to_string(), "DNS name is 254 characters long (at most 253 allowed)");
    }

    #[test]
    fn single_label() {
        let err = Fqdn::new("localhost").unwrap_err();
        assert_eq!(err, FqdnError::SingleLabel("localhost".into()));
        assert_eq!(
            err.to_string(),
            "DNS name \"localhost\" is a single label (expected at least one dot)"
        );
        assert_eq!(Fqdn::new("Host."), Err(FqdnError::SingleLabel("Host.".into())));
    }

    #[test]
    fn bad_labels() {
        let bad = |name: &str, label: &str| {
            assert_eq!(
                Fqdn::new(name),
                Err(FqdnError::BadLabel {
                    name: name.into(),
                    label: label.into()
                }),
                "{name}"
            );
        };
        bad("fe_1.contoso.test", "fe_1");
        bad("-fe1.contoso.test", "-fe1");
        bad("fe1-.contoso.test", "fe1-");
        bad("fe1..test", "");
        bad(".fe1.test", "");
        bad("fe1.test..", "");
        bad("fé1.contoso.test", "fé1");
        bad("fe 1.contoso.test", "fe 1");
        let long = "a".repeat(64);
        bad(&format!("{long}.test"), &long);
        assert_eq!(
            Fqdn::new("fe_1.Contoso.test").unwrap_err().to_string(),
            "DNS name \"fe_1.Contoso.test\" has an invalid label \"fe_1\" \
             (1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-')"
        );
    }

    #[test]
    fn serde_validates() {
        let f: Fqdn = serde_json::from_str("\"FE1.contoso.test\"").unwrap();
        assert_eq!(f.as_str(), "fe1.contoso.test");
        assert_eq!(serde_json::to_string(&f).unwrap(), "\"fe1.contoso.test\"");
        let err = serde_json::from_str::<Fqdn>("\"localhost\"").unwrap_err();
        assert!(
            err.to_string().starts_with("DNS name \"localhost\" is a single label"),
            "{err}"
        );
    }
}
