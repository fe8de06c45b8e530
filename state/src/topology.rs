//! The trusted-server set ("topology"): [`Role`], [`TrustedServer`],
//! [`Topology`], and validation of the operator's TOML file.
//!
//! Validation collects every problem in one pass ([`TopologyError::Invalid`])
//! so an operator fixes a broken file in one edit, not one error at a time.
//! The TOML is first read into a loose raw form (every field optional and
//! untyped) precisely so that one bad field does not hide the others.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::federation::{self, Federation, RawFederation, RawPartner};
use crate::fqdn::Fqdn;

/// What a trusted server does in the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Registrar / home server for users ("front-end").
    FrontEnd,
    /// Edge server facing external networks ("edge").
    Edge,
    /// Director: routes and authenticates without homing users ("director").
    Director,
}

impl Role {
    /// Every role, in the order used in messages.
    pub const ALL: [Role; 3] = [Role::FrontEnd, Role::Edge, Role::Director];

    /// The text form: "front-end", "edge" or "director".
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::FrontEnd => "front-end",
            Role::Edge => "edge",
            Role::Director => "director",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    /// Parse the exact text form; the error names the value and the allowed ones.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role \"{s}\" (expected front-end, edge or director)"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a member's mesh port is: an address, or a DNS name (`HOST:PORT`)
/// resolved when dialled. DNS only says where: the certificate must still
/// name the member, so a wrong answer fails the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MeshAddr {
    /// `IP:PORT`.
    Ip(SocketAddr),
    /// `NAME:PORT`.
    Name(Fqdn, u16),
}

impl MeshAddr {
    /// The address, when it is one.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            MeshAddr::Ip(a) => Some(*a),
            MeshAddr::Name(..) => None,
        }
    }

    /// The IP, when it is an address.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.socket_addr().map(|a| a.ip())
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            MeshAddr::Ip(a) => a.port(),
            MeshAddr::Name(_, p) => *p,
        }
    }
}

impl fmt::Display for MeshAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeshAddr::Ip(a) => write!(f, "{a}"),
            MeshAddr::Name(n, p) => write!(f, "{}:{p}", n.as_str()),
        }
    }
}

impl FromStr for MeshAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(a) = SocketAddr::from_str(s) {
            return Ok(MeshAddr::Ip(a));
        }
        let bad = || format!("\"{s}\" is not an IP:port socket address or a DNS NAME:PORT");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse::<u16>().map_err(|_| bad())?;
        let name = Fqdn::new(host).map_err(|_| bad())?;
        Ok(MeshAddr::Name(name, port))
    }
}

impl From<SocketAddr> for MeshAddr {
    fn from(a: SocketAddr) -> MeshAddr {
        MeshAddr::Ip(a)
    }
}

impl PartialEq<SocketAddr> for MeshAddr {
    fn eq(&self, other: &SocketAddr) -> bool {
        self.socket_addr() == Some(*other)
    }
}

impl Serialize for MeshAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MeshAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MeshAddr::from_str(&s).map_err(serde::de::Error::custom)
    }
}

/// One member of the trusted-server set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedServer {
    /// The server's name; also the identity its TLS certificate must carry.
    pub fqdn: Fqdn,
    /// What the server does.
    pub role: Role,
    /// Where other mesh members reach it over mutual TLS.
    pub mesh_addr: MeshAddr,
    /// Where SIP clients reach it (optional for an edge, which may serve
    /// only the mesh and its partners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<SocketAddr>,
    /// The pool this server belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Fqdn>,
    /// Edge only: the external listener partners dial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation_addr: Option<SocketAddr>,
    /// Edge only: the public name on its external certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation_fqdn: Option<Fqdn>,
}

/// The published trusted-server set. Members sorted by fqdn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Monotonic version, at least 1; a newer set has a larger version.
    pub version: u64,
    /// The members, sorted by fqdn.
    pub members: Vec<TrustedServer>,
    /// Partners and blocked domains.
    #[serde(default, skip_serializing_if = "Federation::is_empty")]
    pub federation: Federation,
}

/// Why a topology could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read topology file {}: {message}", .path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// Not well-formed TOML, a wrongly shaped document, or an unknown key;
    /// carries toml's message (with line and column).
    #[error("topology syntax error: {0}")]
    Syntax(String),
    /// Well-formed, but with one or more semantic problems (all of them).
    #[error("{}", display_issues(.0))]
    Invalid(Vec<TopologyIssue>),
}

fn display_issues(issues: &[TopologyIssue]) -> String {
    let mut out = format!("invalid topology: {} problem(s):", issues.len());
    for issue in issues {
        out.push_str("\n  - ");
        out.push_str(&issue.to_string());
    }
    out
}

/// One problem found while validating a topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyIssue {
    /// 1-based index of the member in the document; `None` for a
    /// document-level problem.
    pub member: Option<usize>,
    /// The member's fqdn as written, when it has one.
    pub fqdn: Option<String>,
    /// What is wrong, naming the field and the offending value.
    pub problem: String,
}

impl fmt::Display for TopologyIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.member, &self.fqdn) {
            (Some(n), Some(fqdn)) => write!(f, "member #{n} ({fqdn}): {}", self.problem),
            (Some(n), None) => write!(f, "member #{n}: {}", self.problem),
            (None, _) => f.write_str(&self.problem),
        }
    }
}

/// The operator's file as written: untyped so validation can report every
/// bad field instead of stopping at the first.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    version: Option<toml::Value>,
    #[serde(default)]
    member: Vec<RawMember>,
    federation: Option<RawFederation>,
    #[serde(default)]
    partner: Vec<RawPartner>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    fqdn: Option<toml::Value>,
    role: Option<toml::Value>,
    mesh_addr: Option<toml::Value>,
    client_addr: Option<toml::Value>,
    pool: Option<toml::Value>,
    federation_addr: Option<toml::Value>,
    federation_fqdn: Option<toml::Value>,
}

/// The `[[member]]` file form, for writing.
#[derive(Serialize)]
struct TomlOut<'a> {
    version: u64,
    member: Vec<TomlMember<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    federation: Option<TomlFederation<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    partner: Vec<&'a federation::Partner>,
}

#[derive(Serialize)]
struct TomlFederation<'a> {
    blocked_domains: &'a [String],
}

#[derive(Serialize)]
struct TomlMember<'a> {
    fqdn: &'a str,
    role: &'a str,
    mesh_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    federation_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    federation_fqdn: Option<&'a str>,
}

/// What the set-wide checks need of one member; fields that failed to
/// parse are `None` and simply take no part.
struct Partial {
    fqdn: Option<Fqdn>,
    mesh_addr: Option<MeshAddr>,
    client_addr: Option<SocketAddr>,
}

/// Collects issues for one document.
#[derive(Default)]
struct Issues(Vec<TopologyIssue>);

impl Issues {
    fn doc(&mut self, problem: String) {
        self.0.push(TopologyIssue {
            member: None,
            fqdn: None,
            problem,
        });
    }

    fn member(&mut self, index: usize, fqdn: Option<&str>, problem: String) {
        self.0.push(TopologyIssue {
            member: Some(index + 1),
            fqdn: fqdn.map(str::to_owned),
            problem,
        });
    }

    /// Document-level issues first, then by member, keeping the order in
    /// which each member's problems were found.
    fn finish(mut self) -> Result<(), TopologyError> {
        if self.0.is_empty() {
            return Ok(());
        }
        self.0.sort_by_key(|i| i.member);
        Err(TopologyError::Invalid(self.0))
    }
}

impl Topology {
    /// Parse and validate TOML; collects EVERY problem, not just the first.
    /// Partner anchors must be embedded (`ca_pem`), as in a signed document.
    pub fn from_toml_str(text: &str) -> Result<Topology, TopologyError> {
        Topology::from_toml_str_at(text, None)
    }

    /// [`Topology::from_toml_str`], reading a partner's `ca_file` relative to
    /// `base` when given (an operator's file before signing).
    pub fn from_toml_str_at(text: &str, base: Option<&Path>) -> Result<Topology, TopologyError> {
        let raw: RawTopology = toml::from_str(text).map_err(|e| TopologyError::Syntax(e.to_string()))?;
        let mut issues = Issues::default();

        let version = match &raw.version {
            None => {
                issues.doc("version: missing".into());
                None
            }
            Some(toml::Value::Integer(v)) if *v >= 1 => Some(*v as u64),
            Some(toml::Value::Integer(_)) => {
                issues.doc("version: must be at least 1".into());
                None
            }
            Some(other) => {
                issues.doc(format!(
                    "version: expected an integer, found {} {other}",
                    other.type_str()
                ));
                None
            }
        };
        if raw.member.is_empty() {
            issues.doc("topology has no members".into());
        }

        let mut partials = Vec::with_capacity(raw.member.len());
        let mut typed = Vec::with_capacity(raw.member.len());
        for (i, m) in raw.member.iter().enumerate() {
            // The fqdn as written labels every issue of this member.
            let label = m.fqdn.as_ref().and_then(toml::Value::as_str);
            let mut field = |name: &str, value: &Option<toml::Value>, required: bool| match value {
                None if required => {
                    issues.member(i, label, format!("missing field \"{name}\""));
                    None
                }
                None => None,
                Some(toml::Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    issues.member(
                        i,
                        label,
                        format!("{name}: expected a string, found {} {other}", other.type_str()),
                    );
                    None
                }
            };
            let fqdn_s = field("fqdn", &m.fqdn, true);
            let role_s = field("role", &m.role, true);
            let mesh_s = field("mesh_addr", &m.mesh_addr, true);
            // An edge may have no client port.
            let is_edge = matches!(&m.role, Some(toml::Value::String(r)) if r == "edge");
            let client_s = field("client_addr", &m.client_addr, !is_edge);
            let pool_s = field("pool", &m.pool, false);
            let fed_addr_s = field("federation_addr", &m.federation_addr, false);
            let fed_fqdn_s = field("federation_fqdn", &m.federation_fqdn, false);

            let fqdn = fqdn_s.and_then(|s| {
                Fqdn::new(&s)
                    .map_err(|e| issues.member(i, label, format!("bad fqdn: {e}")))
                    .ok()
            });
            let role = role_s.and_then(|s| Role::from_str(&s).map_err(|e| issues.member(i, label, e)).ok());
            let mesh_addr = mesh_s.and_then(|s| {
                MeshAddr::from_str(&s)
                    .map_err(|e| issues.member(i, label, format!("mesh_addr {e}")))
                    .ok()
            });
            let mut addr = |name: &str, s: Option<String>| {
                s.and_then(|s| {
                    SocketAddr::from_str(&s)
                        .map_err(|_| {
                            issues.member(i, label, format!("{name} \"{s}\" is not an IP:port socket address"))
                        })
                        .ok()
                })
            };
            let client_addr = addr("client_addr", client_s);
            let federation_addr = addr("federation_addr", fed_addr_s.clone());
            let federation_fqdn = fed_fqdn_s.clone().and_then(|s| {
                Fqdn::new(&s)
                    .map_err(|e| issues.member(i, label, format!("bad federation_fqdn: {e}")))
                    .ok()
            });
            match role {
                // An edge federates when it has a federation listener; the
                // two keys come together.
                Some(Role::Edge) => match (&fed_addr_s, &fed_fqdn_s) {
                    (Some(_), None) => issues.member(
                        i,
                        label,
                        "federation_addr without federation_fqdn (the name on its external certificate)".into(),
                    ),
                    (None, Some(_)) => issues.member(
                        i,
                        label,
                        "federation_fqdn without federation_addr (the listener partners dial)".into(),
                    ),
                    _ => {}
                },
                Some(r) => {
                    for (name, v) in [("federation_addr", &fed_addr_s), ("federation_fqdn", &fed_fqdn_s)] {
                        if v.is_some() {
                            issues.member(i, label, format!("{name} is for edges only, not a {r}"));
                        }
                    }
                }
                None => {}
            }
            let pool_ok = match pool_s {
                None => Ok(None),
                Some(s) => Fqdn::new(&s).map(Some).map_err(|e| {
                    issues.member(i, label, format!("bad pool: {e}"));
                }),
            };

            let client_ok = client_addr.is_some() || (is_edge && m.client_addr.is_none());
            if let (Some(fqdn), Some(role), Some(mesh_addr), true, Ok(pool)) =
                (&fqdn, role, mesh_addr.clone(), client_ok, pool_ok)
            {
                typed.push(TrustedServer {
                    fqdn: fqdn.clone(),
                    role,
                    mesh_addr,
                    client_addr,
                    pool,
                    federation_addr: federation_addr.filter(|_| role == Role::Edge),
                    federation_fqdn: federation_fqdn.clone().filter(|_| role == Role::Edge),
                });
            }
            partials.push((
                label,
                Partial {
                    fqdn,
                    mesh_addr,
                    client_addr,
                },
            ));
        }
        check_set(&partials, &mut issues);
        let mut problems = Vec::new();
        let federation = federation::parse(raw.federation, raw.partner, base, &mut problems);
        check_edges(&typed, &federation, &mut problems);
        for p in problems {
            issues.doc(p);
        }
        issues.finish()?;

        // No issues: version is set and every member was fully typed.
        let mut members = typed;
        members.sort_by(|a, b| a.fqdn.cmp(&b.fqdn));
        Ok(Topology {
            version: version.unwrap_or_default(),
            members,
            federation,
        })
    }

    /// Read and validate a topology file; an I/O error names the path.
    pub fn from_file(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|e| TopologyError::Io {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Topology::from_toml_str_at(&text, path.parent())
    }

    /// Validate already-typed members (used after deserializing from the
    /// store or the wire). Sorts members.
    pub fn new(version: u64, mut members: Vec<TrustedServer>) -> Result<Topology, TopologyError> {
        let mut issues = Issues::default();
        if version == 0 {
            issues.doc("version: must be at least 1".into());
        }
        if members.is_empty() {
            issues.doc("topology has no members".into());
        }
        let partials: Vec<_> = members
            .iter()
            .map(|m| {
                (
                    Some(m.fqdn.as_str()),
                    Partial {
                        fqdn: Some(m.fqdn.clone()),
                        mesh_addr: Some(m.mesh_addr.clone()),
                        client_addr: m.client_addr,
                    },
                )
            })
            .collect();
        check_set(&partials, &mut issues);
        issues.finish()?;
        members.sort_by(|a, b| a.fqdn.cmp(&b.fqdn));
        Ok(Topology {
            version,
            members,
            federation: Federation::default(),
        })
    }

    /// The same topology with `federation` as its policy, validated against
    /// the members (used after deserializing from the store or the wire).
    pub fn with_federation(mut self, federation: Federation) -> Result<Topology, TopologyError> {
        let mut problems = Vec::new();
        check_edges(&self.members, &federation, &mut problems);
        if !problems.is_empty() {
            return Err(TopologyError::Invalid(
                problems
                    .into_iter()
                    .map(|problem| TopologyIssue {
                        member: None,
                        fqdn: None,
                        problem,
                    })
                    .collect(),
            ));
        }
        self.federation = federation;
        Ok(self)
    }

    /// The edges that serve federation (those with a federation listener;
    /// all in one pool).
    pub fn federation_edges(&self) -> impl Iterator<Item = &TrustedServer> {
        self.members.iter().filter(|m| m.federation_addr.is_some())
    }

    /// The `[[member]]` TOML file form; round-trips through
    /// [`Topology::from_toml_str`].
    pub fn to_toml_string(&self) -> String {
        let out = TomlOut {
            version: self.version,
            member: self
                .members
                .iter()
                .map(|m| TomlMember {
                    fqdn: m.fqdn.as_str(),
                    role: m.role.as_str(),
                    mesh_addr: m.mesh_addr.to_string(),
                    client_addr: m.client_addr.map(|a| a.to_string()),
                    pool: m.pool.as_ref().map(Fqdn::as_str),
                    federation_addr: m.federation_addr.map(|a| a.to_string()),
                    federation_fqdn: m.federation_fqdn.as_ref().map(Fqdn::as_str),
                })
                .collect(),
            federation: (!self.federation.blocked_domains.is_empty()).then(|| TomlFederation {
                blocked_domains: &self.federation.blocked_domains,
            }),
            partner: self.federation.partners.iter().collect(),
        };
        // Only strings and an integer: serialization cannot fail.
        toml::to_string(&out).expect("topology serializes to TOML")
    }

    /// The member named `fqdn`, compared case-insensitively (a trailing dot
    /// is ignored); `None` for an unknown or malformed name.
    pub fn member(&self, fqdn: &str) -> Option<&TrustedServer> {
        let fqdn = Fqdn::new(fqdn).ok()?;
        self.members.iter().find(|m| m.fqdn == fqdn)
    }

    /// Whether `fqdn` (case-insensitive) is a member.
    pub fn contains(&self, fqdn: &str) -> bool {
        self.member(fqdn).is_some()
    }
}

/// Federation checks that need the members: partners need an edge, and
/// edges form one pool (one federation route per organisation).
fn check_edges(members: &[TrustedServer], federation: &Federation, problems: &mut Vec<String>) {
    let mut pools: Vec<Option<&Fqdn>> = Vec::new();
    let mut edges = 0;
    for m in members.iter().filter(|m| m.federation_addr.is_some()) {
        edges += 1;
        let pool = m.pool.as_ref();
        if !pools.contains(&pool) {
            pools.push(pool);
        }
    }
    if edges > 1 && (pools.len() > 1 || pools == [None]) {
        problems.push(format!(
            "more than one active federation edge pool ({edges} edges): put every edge in the same pool"
        ));
    }
    if edges == 0 && !federation.partners.is_empty() {
        problems.push("partners are configured but no edge member has a federation_addr".into());
    }
}

/// Checks across members: port 0, duplicate fqdn / mesh_addr / client_addr,
/// and a mesh_addr that is also some member's client_addr.
fn check_set(members: &[(Option<&str>, Partial)], issues: &mut Issues) {
    let mut fqdns: HashMap<&Fqdn, usize> = HashMap::new();
    let mut meshes: HashMap<&MeshAddr, usize> = HashMap::new();
    let mut clients: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, (_, p)) in members.iter().enumerate() {
        if let Some(a) = p.client_addr {
            clients.entry(a).or_insert(i);
        }
    }
    let mut seen_clients: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, (label, p)) in members.iter().enumerate() {
        let label = *label;
        if let Some(f) = &p.fqdn {
            if let Some(first) = fqdns.get(f) {
                issues.member(i, label, format!("duplicate fqdn, also member #{}", first + 1));
            } else {
                fqdns.insert(f, i);
            }
        }
        if let Some(a) = &p.mesh_addr {
            if a.port() == 0 {
                issues.member(i, label, format!("mesh_addr {a}: port must not be 0"));
            }
            if let Some(first) = meshes.get(a) {
                issues.member(i, label, format!("duplicate mesh_addr {a}, also member #{}", first + 1));
            } else {
                meshes.insert(a, i);
            }
            if let Some(owner) = a.socket_addr().and_then(|sa| clients.get(&sa)) {
                let whose = if *owner == i {
                    "its own client_addr".to_owned()
                } else {
                    format!("the client_addr of member #{}", owner + 1)
                };
                issues.member(i, label, format!("mesh_addr {a} is also {whose}"));
            }
        }
        if let Some(a) = p.client_addr {
            if a.port() == 0 {
                issues.member(i, label, format!("client_addr {a}: port must not be 0"));
            }
            if let Some(first) = seen_clients.get(&a) {
                issues.member(
                    i,
                    label,
                    format!("duplicate client_addr {a}, also member #{}", first + 1),
                );
            } else {
                seen_clients.insert(a, i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
version = 3

[[member]]
fqdn = "FE2.contoso.test"
role = "front-end"
mesh_addr = "127.0.0.1:5071"
client_addr = "127.0.0.1:5070"
pool = "pool1.contoso.test"

[[member]]
fqdn = "fe1.contoso.test"
role = "front-end"
mesh_addr = "127.0.0.1:5061"
client_addr = "127.0.0.1:5060"
pool = "pool1.contoso.test"

[[member]]
fqdn = "edge.contoso.test"
role = "edge"
mesh_addr = "[::1]:5081"
client_addr = "[::1]:5080"
"#;

    fn invalid(text: &str) -> Vec<String> {
        match Topology::from_toml_str(text) {
            Err(TopologyError::Invalid(issues)) => issues.iter().map(ToString::to_string).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn role_text_forms() {
        for (role, text) in [
            (Role::FrontEnd, "front-end"),
            (Role::Edge, "edge"),
            (Role::Director, "director"),
        ] {
            assert_eq!(role.as_str(), text);
            assert_eq!(role.to_string(), text);
            assert_eq!(text.parse::<Role>(), Ok(role));
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{text}\""));
        }
        assert_eq!(
            "Edge".parse::<Role>(),
            Err("unknown role \"Edge\" (expected front-end, edge or director)".to_owned())
        );
    }

    #[test]
    fn valid_file_parses_sorted_and_round_trips() {
        let t = Topology::from_toml_str(VALID).unwrap();
        assert_eq!(t.version, 3);
        let names: Vec<&str> = t.members.iter().map(|m| m.fqdn.as_str()).collect();
        assert_eq!(names, ["edge.contoso.test", "fe1.contoso.test", "fe2.contoso.test"]);
        assert_eq!(
            t.members[1],
            TrustedServer {
                fqdn: Fqdn::new("fe1.contoso.test").unwrap(),
                role: Role::FrontEnd,
                mesh_addr: addr("127.0.0.1:5061").into(),
                client_addr: Some(addr("127.0.0.1:5060")),
                pool: Some(Fqdn::new("pool1.contoso.test").unwrap()),
                federation_addr: None,
                federation_fqdn: None,
            }
        );
        assert_eq!(t.members[0].pool, None);
        assert_eq!(t.members[0].mesh_addr, MeshAddr::Ip(addr("[::1]:5081")));

        let text = t.to_toml_string();
        assert_eq!(
            text,
            r#"version = 3

[[member]]
fqdn = "edge.contoso.test"
role = "edge"
mesh_addr = "[::1]:5081"
client_addr = "[::1]:5080"

[[member]]
fqdn = "fe1.contoso.test"
role = "front-end"
mesh_addr = "127.0.0.1:5061"
client_addr = "127.0.0.1:5060"
pool = "pool1.contoso.test"

[[member]]
fqdn = "fe2.contoso.test"
role = "front-end"
mesh_addr = "127.0.0.1:5071"
client_addr = "127.0.0.1:5070"
pool = "pool1.contoso.test"
"#
        );
        assert_eq!(Topology::from_toml_str(&text).unwrap(), t);
        // The JSON form (store, wire) round-trips too.
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Topology>(&json).unwrap(), t);
    }

    #[test]
    fn every_problem_of_three_broken_members_is_reported() {
        let text = r#"
version = 0

[[member]]
fqdn = "fe1.contoso.test"
role = "front-end"
mesh_addr = "127.0.0.1:5061"
client_addr = "127.0.0.1:5060"

[[member]]
fqdn = "fe2.contoso.test"
role = "frontend"
mesh_addr = "localhost:5071"
client_addr = "127.0.0.1:0"

[[member]]
fqdn = "edge_1.contoso.test"
mesh_addr = "127.0.0.1:5060"
client_addr = "127.0.0.1:5060"
pool = "pool"

[[member]]
role = "director"
mesh_addr = "127.0.0.1:5061"
client_addr = 5090
"#;
        let err = Topology::from_toml_str(text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid topology: 12 problem(s):
  - version: must be at least 1
  - member #2 (fe2.contoso.test): unknown role \"frontend\" (expected front-end, edge or director)
  - member #2 (fe2.contoso.test): mesh_addr \"localhost:5071\" is not an IP:port socket address or a DNS NAME:PORT
  - member #2 (fe2.contoso.test): client_addr 127.0.0.1:0: port must not be 0
  - member #3 (edge_1.contoso.test): missing field \"role\"
  - member #3 (edge_1.contoso.test): bad fqdn: DNS name \"edge_1.contoso.test\" has an invalid label \"edge_1\" (1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-')
  - member #3 (edge_1.contoso.test): bad pool: DNS name \"pool\" is a single label (expected at least one dot)
  - member #3 (edge_1.contoso.test): mesh_addr 127.0.0.1:5060 is also the client_addr of member #1
  - member #3 (edge_1.contoso.test): duplicate client_addr 127.0.0.1:5060, also member #1
  - member #4: missing field \"fqdn\"
  - member #4: client_addr: expected a string, found integer 5090
  - member #4: duplicate mesh_addr 127.0.0.1:5061, also member #1"
        );
    }

    #[test]
    fn unknown_key_is_a_syntax_error_naming_the_key() {
        let text = VALID.replace("role = \"edge\"", "role = \"edge\"\ntransport = \"tls\"");
        match Topology::from_toml_str(&text) {
            Err(TopologyError::Syntax(msg)) => {
                assert!(msg.contains("unknown field `transport`"), "{msg}");
                assert!(msg.contains("line 21, column 1"), "{msg}");
            }
            other => panic!("expected Syntax, got {other:?}"),
        }
        let text = format!("serial = 7\n{VALID}");
        match Topology::from_toml_str(&text) {
            Err(TopologyError::Syntax(msg)) => {
                assert!(msg.contains("unknown field `serial`"), "{msg}");
            }
            other => panic!("expected Syntax, got {other:?}"),
        }
    }

    #[test]
    fn malformed_toml_is_a_syntax_error() {
        let err = Topology::from_toml_str("version = \n").unwrap_err();
        assert!(
            matches!(&err, TopologyError::Syntax(m) if m.contains("line 1")),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("topology syntax error: "));
    }

    #[test]
    fn empty_set() {
        assert_eq!(invalid("version = 1\n"), ["topology has no members"]);
        assert_eq!(invalid(""), ["version: missing", "topology has no members"]);
        assert_eq!(
            Topology::new(0, vec![]).unwrap_err().to_string(),
            "invalid topology: 2 problem(s):\n  - version: must be at least 1\n  - topology has no members"
        );
    }

    #[test]
    fn duplicate_fqdn_names_both_members() {
        let text = r#"
version = 1
[[member]]
fqdn = "fe1.contoso.test"
role = "front-end"
mesh_addr = "127.0.0.1:5061"
client_addr = "127.0.0.1:5060"
[[member]]
fqdn = "FE1.contoso.test."
role = "director"
mesh_addr = "127.0.0.1:5071"
client_addr = "127.0.0.1:5070"
"#;
        assert_eq!(
            invalid(text),
            ["member #2 (FE1.contoso.test.): duplicate fqdn, also member #1"]
        );
    }

    #[test]
    fn new_validates_and_sorts() {
        let m = |name: &str, mesh: &str, client: &str| TrustedServer {
            fqdn: Fqdn::new(name).unwrap(),
            role: Role::Director,
            mesh_addr: addr(mesh).into(),
            client_addr: Some(addr(client)),
            pool: None,
            federation_addr: None,
            federation_fqdn: None,
        };
        let t = Topology::new(
            7,
            vec![
                m("b.test", "10.0.0.2:5061", "10.0.0.2:5060"),
                m("a.test", "10.0.0.1:5061", "10.0.0.1:5060"),
            ],
        )
        .unwrap();
        assert_eq!(t.members[0].fqdn.as_str(), "a.test");
        assert_eq!(t.members[1].fqdn.as_str(), "b.test");

        let err = Topology::new(
            7,
            vec![
                m("b.test", "10.0.0.2:0", "10.0.0.2:5060"),
                m("b.test", "10.0.0.1:5061", "10.0.0.2:5060"),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err,
            TopologyError::Invalid(vec![
                TopologyIssue {
                    member: Some(1),
                    fqdn: Some("b.test".into()),
                    problem: "mesh_addr 10.0.0.2:0: port must not be 0".into(),
                },
                TopologyIssue {
                    member: Some(2),
                    fqdn: Some("b.test".into()),
                    problem: "duplicate fqdn, also member #1".into(),
                },
                TopologyIssue {
                    member: Some(2),
                    fqdn: Some("b.test".into()),
                    problem: "duplicate client_addr 10.0.0.2:5060, also member #1".into(),
                },
            ])
        );
    }

    #[test]
    fn member_lookup_is_case_insensitive() {
        let t = Topology::from_toml_str(VALID).unwrap();
        let fe1 = t.member("FE1.Contoso.Test").unwrap();
        assert_eq!(fe1.mesh_addr, MeshAddr::Ip(addr("127.0.0.1:5061")));
        assert_eq!(t.member("fe1.contoso.test.").unwrap(), fe1);
        assert!(t.contains("Edge.contoso.test"));
        assert!(!t.contains("fe3.contoso.test"));
        assert!(!t.contains("not a name"));
        assert_eq!(t.member(""), None);
    }

    #[test]
    fn from_file_reads_and_names_path_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topology.toml");
        std::fs::write(&path, VALID).unwrap();
        assert_eq!(Topology::from_file(&path).unwrap().version, 3);

        let missing = dir.path().join("missing.toml");
        let err = Topology::from_file(&missing).unwrap_err();
        match &err {
            TopologyError::Io { path, message } => {
                assert_eq!(path, &missing);
                assert!(!message.is_empty());
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(err
            .to_string()
            .starts_with(&format!("cannot read topology file {}: ", missing.display())));
    }
}

/// What changes between two topologies, by FQDN.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TopologyDiff {
    /// Members only in the new topology.
    pub added: Vec<TrustedServer>,
    /// Members only in the old topology.
    pub removed: Vec<TrustedServer>,
    /// Members in both whose entry differs: (old, new).
    pub changed: Vec<(TrustedServer, TrustedServer)>,
    /// Federation policy changes, one line each (`+ partner d (mode)`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub federation: Vec<String>,
}

impl TopologyDiff {
    /// Compare `old` to `new`.
    pub fn between(old: &Topology, new: &Topology) -> TopologyDiff {
        let mut diff = TopologyDiff::default();
        for m in &new.members {
            match old.member(m.fqdn.as_str()) {
                None => diff.added.push(m.clone()),
                Some(o) if o != m => diff.changed.push((o.clone(), m.clone())),
                Some(_) => {}
            }
        }
        diff.removed = old
            .members
            .iter()
            .filter(|m| new.member(m.fqdn.as_str()).is_none())
            .cloned()
            .collect();
        diff.federation = federation::diff_lines(&old.federation, &new.federation);
        diff
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty() && self.federation.is_empty()
    }
}

#[cfg(test)]
mod diff_tests {
    use super::*;

    fn member(n: u8, port: u16) -> TrustedServer {
        TrustedServer {
            fqdn: Fqdn::new(&format!("fe{n}.contoso.test")).unwrap(),
            role: Role::FrontEnd,
            mesh_addr: format!("127.0.0.1:{port}").parse::<SocketAddr>().unwrap().into(),
            client_addr: Some(format!("127.0.0.1:{}", port + 1000).parse().unwrap()),
            pool: None,
            federation_addr: None,
            federation_fqdn: None,
        }
    }

    #[test]
    fn diff_names_added_removed_and_changed() {
        let old = Topology::new(1, vec![member(1, 5001), member(2, 5002), member(3, 5003)]).unwrap();
        let new = Topology::new(2, vec![member(1, 5001), member(3, 5333), member(4, 5004)]).unwrap();
        let d = TopologyDiff::between(&old, &new);
        assert_eq!(d.added, vec![member(4, 5004)]);
        assert_eq!(d.removed, vec![member(2, 5002)]);
        assert_eq!(d.changed, vec![(member(3, 5003), member(3, 5333))]);
        assert!(TopologyDiff::between(&new, &new).is_empty());
    }
}
