//! The users file: Digest users of one realm, passwords stored only as HA1
//! hashes (MD5 and SHA-256).
//!
//! Inside: [`UsersFile`] (load, parse and check, write back as TOML),
//! [`UserEntry`] (one user, built from a clear password by the tools), and
//! [`AuthConfigError`] (why a file was refused, naming the path and user).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::digest::{ha1, Algorithm};

/// Users file (TOML), passwords stored only as HA1 hashes:
///
/// ```toml
/// realm = "contoso.test"
/// [[user]]
/// name = "alice"
/// ha1_md5 = "<hex MD5(name:realm:password)>"
/// ha1_sha256 = "<hex SHA-256(name:realm:password)>"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// The Digest realm every user belongs to.
    pub realm: String,
    /// The users (`[[user]]` tables).
    #[serde(default, rename = "user")]
    pub users: Vec<UserEntry>,
}

/// One user of a [`UsersFile`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The user name (Digest `username`), case-sensitive.
    pub name: String,
    /// Lowercase hex MD5(name:realm:password).
    pub ha1_md5: String,
    /// Lowercase hex SHA-256(name:realm:password).
    pub ha1_sha256: String,
}

impl UserEntry {
    /// An entry with both HA1 hashes computed from a clear password.
    pub fn from_password(name: &str, realm: &str, password: &str) -> UserEntry {
        UserEntry {
            name: name.to_owned(),
            ha1_md5: ha1(Algorithm::Md5, name, realm, password),
            ha1_sha256: ha1(Algorithm::Sha256, name, realm, password),
        }
    }

    /// This user's HA1 for `alg`.
    pub fn ha1(&self, alg: Algorithm) -> &str {
        match alg {
            Algorithm::Md5 => &self.ha1_md5,
            Algorithm::Sha256 => &self.ha1_sha256,
        }
    }
}

/// Why a users file was refused. `path` is `None` for [`UsersFile::parse`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthConfigError {
    /// The file could not be read.
    #[error("cannot read users file {}: {cause}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// TOML syntax, unknown key, wrong type; toml's message names the key and line.
    #[error("{}: {message}", origin(.path))]
    Parse {
        /// The file.
        path: Option<PathBuf>,
        /// toml's message.
        message: String,
    },
    /// `realm` is empty or contains control characters.
    #[error("{}: realm: {message}", origin(.path))]
    BadRealm {
        /// The file.
        path: Option<PathBuf>,
        /// What is wrong.
        message: String,
    },
    /// Two `[[user]]` entries share a name.
    #[error("{}: user {user:?}: duplicate name", origin(.path))]
    DuplicateUser {
        /// The file.
        path: Option<PathBuf>,
        /// The repeated name.
        user: String,
    },
    /// A user entry's field is not acceptable.
    #[error("{}: user {user:?}: {field}: {message}", origin(.path))]
    BadUser {
        /// The file.
        path: Option<PathBuf>,
        /// The user name (possibly empty, when that is the problem).
        user: String,
        /// The field: `name`, `ha1_md5` or `ha1_sha256`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn origin(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("users file {}", p.display()),
        None => "users file".to_owned(),
    }
}

impl UsersFile {
    /// Read and check a users file; errors name the path and, for a bad
    /// entry, the user.
    pub fn load(path: &Path) -> Result<UsersFile, AuthConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| AuthConfigError::Io {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse_from(&text, Some(path))
    }

    /// Parse and check users-file text. Hashes are normalised to lowercase.
    pub fn parse(text: &str) -> Result<UsersFile, AuthConfigError> {
        Self::parse_from(text, None)
    }

    fn parse_from(text: &str, path: Option<&Path>) -> Result<UsersFile, AuthConfigError> {
        let path = || path.map(Path::to_owned);
        let mut file: UsersFile = toml::from_str(text).map_err(|e| AuthConfigError::Parse {
            path: path(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        if file.realm.is_empty() {
            return Err(AuthConfigError::BadRealm {
                path: path(),
                message: "must not be empty".to_owned(),
            });
        }
        if file.realm.chars().any(char::is_control) {
            return Err(AuthConfigError::BadRealm {
                path: path(),
                message: "must not contain control characters".to_owned(),
            });
        }
        let mut seen = HashSet::new();
        for u in &mut file.users {
            let bad = |field, message: &str| AuthConfigError::BadUser {
                path: path(),
                user: u.name.clone(),
                field,
                message: message.to_owned(),
            };
            if u.name.is_empty() {
                return Err(bad("name", "must not be empty"));
            }
            if u.name.chars().any(char::is_control) {
                return Err(bad("name", "must not contain control characters"));
            }
            for (field, alg) in [("ha1_md5", Algorithm::Md5), ("ha1_sha256", Algorithm::Sha256)] {
                let h = u.ha1(alg);
                if h.len() != alg.hex_len() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(
                        field,
                        &format!("expected {} hex characters, got {:?}", alg.hex_len(), truncate(h, 80)),
                    ));
                }
            }
            if !seen.insert(u.name.clone()) {
                return Err(AuthConfigError::DuplicateUser {
                    path: path(),
                    user: u.name.clone(),
                });
            }
            // Digest responses are computed over lowercase hex (RFC 7616 §3.4.1).
            u.ha1_md5.make_ascii_lowercase();
            u.ha1_sha256.make_ascii_lowercase();
        }
        Ok(file)
    }

    /// The file as TOML text, readable by [`UsersFile::parse`].
    pub fn to_toml(&self) -> String {
        // Two strings and an array of string-only tables always serialise.
        toml::to_string(self).expect("users file serialises to TOML")
    }

    /// The user called `name` (exact match).
    pub fn user(&self, name: &str) -> Option<&UserEntry> {
        self.users.iter().find(|u| u.name == name)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Alice and Bob in contoso.test, the fixture the digest tests share.
    pub(in crate::auth) fn users() -> UsersFile {
        UsersFile {
            realm: "contoso.test".to_owned(),
            users: vec![
                UserEntry::from_password("alice", "contoso.test", "secret"),
                UserEntry::from_password("bob", "contoso.test", "hunter2"),
            ],
        }
    }

    #[test]
    fn from_password_hashes() {
        // printf 'alice:contoso.test:secret' | md5sum / sha256sum
        let u = UserEntry::from_password("alice", "contoso.test", "secret");
        assert_eq!(u.ha1_md5, "20599ad03ffee5aae1554fab1a27a172");
        assert_eq!(
            u.ha1_sha256,
            "7fcbbb72e23f6f0932c718683e50e5efd1b0e0a98e2d3a2d6fc66cccc4980a7b"
        );
        assert_eq!(u.name, "alice");
    }

    #[test]
    fn users_file_round_trip() {
        let u = users();
        let text = u.to_toml();
        assert!(text.contains("[[user]]"), "{text}");
        assert!(text.contains("realm = \"contoso.test\""), "{text}");
        assert_eq!(UsersFile::parse(&text).unwrap(), u);
        assert_eq!(u.user("bob").unwrap().name, "bob");
        assert!(u.user("carol").is_none());

        let no_users = UsersFile::parse("realm = \"r\"\n").unwrap();
        assert!(no_users.users.is_empty());
    }

    #[test]
    fn users_file_normalises_hex_case() {
        let text = format!(
            "realm = \"contoso.test\"\n[[user]]\nname = \"alice\"\nha1_md5 = \"{}\"\nha1_sha256 = \"{}\"\n",
            "20599AD03FFEE5AAE1554FAB1A27A172", "7fcbbb72e23f6f0932c718683e50e5efd1b0e0a98e2d3a2d6fc66cccc4980a7b"
        );
        let f = UsersFile::parse(&text).unwrap();
        assert_eq!(f.users[0], UserEntry::from_password("alice", "contoso.test", "secret"));
    }

    fn entry(name: &str, md5: &str, sha: &str) -> String {
        format!("[[user]]\nname = \"{name}\"\nha1_md5 = \"{md5}\"\nha1_sha256 = \"{sha}\"\n")
    }

    #[test]
    fn users_file_errors_name_user_and_field() {
        let md5 = "20599ad03ffee5aae1554fab1a27a172";
        let sha = "7fcbbb72e23f6f0932c718683e50e5efd1b0e0a98e2d3a2d6fc66cccc4980a7b";
        let head = "realm = \"contoso.test\"\n";
        let cases = [
            (
                format!("{head}{}{}", entry("alice", md5, sha), entry("alice", md5, sha)),
                "users file: user \"alice\": duplicate name",
            ),
            (
                format!("{head}{}", entry("carol", &md5[1..], sha)),
                "users file: user \"carol\": ha1_md5: expected 32 hex characters, got \"0599ad03ffee5aae1554fab1a27a172\"",
            ),
            (
                format!("{head}{}", entry("dave", md5, &sha.replace('7', "z"))),
                "users file: user \"dave\": ha1_sha256: expected 64 hex characters",
            ),
            (
                format!("{head}{}", entry("erin", sha, sha)),
                "users file: user \"erin\": ha1_md5: expected 32 hex characters",
            ),
            (
                format!("{head}{}", entry("", md5, sha)),
                "users file: user \"\": name: must not be empty",
            ),
            (
                format!("realm = \"\"\n{}", entry("alice", md5, sha)),
                "users file: realm: must not be empty",
            ),
        ];
        for (text, want) in cases {
            let err = UsersFile::parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} does not start with {want:?}");
        }
        let err = UsersFile::parse(&format!("{head}{}password = \"x\"\n", entry("alice", md5, sha))).unwrap_err();
        assert!(matches!(err, AuthConfigError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains("password"), "{err}");
        let err = UsersFile::parse(&entry("alice", md5, sha)).unwrap_err();
        assert!(err.to_string().contains("realm"), "{err}");
    }

    #[test]
    fn load_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let err = UsersFile::load(&path).unwrap_err();
        assert!(matches!(err, AuthConfigError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");

        std::fs::write(&path, users().to_toml()).unwrap();
        assert_eq!(UsersFile::load(&path).unwrap(), users());

        let dup = format!(
            "{}{}",
            users().to_toml(),
            entry("bob", &"a".repeat(32), &"b".repeat(64))
        );
        std::fs::write(&path, dup).unwrap();
        let err = UsersFile::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("users file {}: user \"bob\": duplicate name", path.display())
        );

        std::fs::write(&path, "realm = 3\n").unwrap();
        let err = UsersFile::load(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("users file {}: ", path.display())), "{err}");
    }
}
