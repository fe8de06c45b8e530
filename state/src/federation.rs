//! Federation policy of the signed topology: the partner organisations an
//! Edge pool federates with and the domains refused in both directions.
//!
//! It lives in the topology so it replicates, versions and diffs like the
//! member list. A partner's trust anchors travel inside the document
//! (`ca_pem`): `sipmesh topology sign` embeds the PEM named by `ca_file`
//! ([`embed_ca_files`]), so every node judges partners by the same anchors.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::fqdn::Fqdn;

/// Largest embedded PEM of one partner (a few anchors; DoS bound on the document).
pub const MAX_PARTNER_PEM: usize = 64 * 1024;

/// How a partner's edge is found and named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartnerMode {
    /// The edge is pinned by name (`edge`) and address (`address`).
    AllowedServer,
    /// The edge is found by DNS SRV for the domain and named per RFC 5922.
    AllowedDomain,
}

impl PartnerMode {
    /// The text form: "allowed-server" or "allowed-domain".
    pub fn as_str(self) -> &'static str {
        match self {
            PartnerMode::AllowedServer => "allowed-server",
            PartnerMode::AllowedDomain => "allowed-domain",
        }
    }
}

impl FromStr for PartnerMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allowed-server" => Ok(PartnerMode::AllowedServer),
            "allowed-domain" => Ok(PartnerMode::AllowedDomain),
            _ => Err(format!(
                "mode: unknown value \"{s}\" (expected allowed-server or allowed-domain)"
            )),
        }
    }
}

impl fmt::Display for PartnerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One partner organisation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    /// Its SIP domain, lower case.
    pub domain: String,
    /// How its edge is found.
    pub mode: PartnerMode,
    /// The name its edge certificate must carry (allowed-server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<Fqdn>,
    /// Where to dial its edge, `HOST:PORT` (allowed-server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Its trust anchors, PEM, embedded at sign time.
    pub ca_pem: String,
    /// Its CA's revocation list(s), PEM, embedded at sign time (`crl_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_pem: Option<String>,
    /// Requests per second accepted from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<u32>,
}

/// The federation policy: partners and blocked domains.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Federation {
    /// Domains refused in both directions, lower case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_domains: Vec<String>,
    /// The partners, in document order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partners: Vec<Partner>,
}

/// What the policy says about a foreign domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainVerdict<'a> {
    /// Listed in `blocked_domains`.
    Blocked,
    /// A partner.
    Partner(&'a Partner),
    /// Neither.
    NotPartner,
}

impl Federation {
    /// Whether nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.blocked_domains.is_empty() && self.partners.is_empty()
    }

    /// The verdict for `domain` (compared case-insensitively).
    pub fn verdict(&self, domain: &str) -> DomainVerdict<'_> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if self.blocked_domains.contains(&domain) {
            return DomainVerdict::Blocked;
        }
        match self.partners.iter().find(|p| p.domain == domain) {
            Some(p) => DomainVerdict::Partner(p),
            None => DomainVerdict::NotPartner,
        }
    }

    /// The problem with this policy for a node serving `domain`: our own
    /// domain listed as a partner (its users would be spoofable by that
    /// "partner") or blocked. Checked by each node, which knows its domain.
    pub fn own_domain_problem(&self, domain: &str) -> Option<String> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(i) = self.partners.iter().position(|p| p.domain == domain) {
            return Some(format!("partner #{} ({domain}) is this node's own SIP domain", i + 1));
        }
        self.blocked_domains
            .contains(&domain)
            .then(|| format!("federation.blocked_domains lists this node's own SIP domain {domain}"))
    }

    /// The partner of `domain`, unless blocked.
    pub fn partner(&self, domain: &str) -> Option<&Partner> {
        match self.verdict(domain) {
            DomainVerdict::Partner(p) => Some(p),
            _ => None,
        }
    }
}

/// The `[federation]` table as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFederation {
    blocked_domains: Option<toml::Value>,
}

/// A `[[partner]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPartner {
    domain: Option<toml::Value>,
    mode: Option<toml::Value>,
    edge: Option<toml::Value>,
    address: Option<toml::Value>,
    ca_file: Option<toml::Value>,
    ca_pem: Option<toml::Value>,
    crl_file: Option<toml::Value>,
    crl_pem: Option<toml::Value>,
    max_rate: Option<toml::Value>,
}

fn domain_of(s: &str) -> Result<String, String> {
    Fqdn::new(s)
        .map(|f| f.as_str().to_ascii_lowercase())
        .map_err(|e| format!("bad domain \"{s}\": {e}"))
}

/// Check a `HOST:PORT` (the host may be a name, resolved at dial time).
pub fn check_host_port(s: &str) -> Result<(), String> {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("address \"{s}\" is not HOST:PORT");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad()),
    }
    Fqdn::new(host).map(|_| ()).map_err(|_| bad())
}

/// Whether `pem` holds at least one well-formed certificate.
fn check_pem(pem: &str) -> Result<(), String> {
    if pem.len() > MAX_PARTNER_PEM {
        return Err(format!("ca_pem: {} bytes, more than {MAX_PARTNER_PEM}", pem.len()));
    }
    let mut certs = 0;
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let body = &rest[start + 27..];
        let end = body
            .find("-----END CERTIFICATE-----")
            .ok_or("ca_pem: a certificate has no END line")?;
        let b64: String = body[..end].split_whitespace().collect();
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("ca_pem: a certificate is not base64: {e}"))?;
        certs += 1;
        rest = &body[end..];
    }
    if certs == 0 {
        return Err("no trust anchors: ca_pem holds no certificate".into());
    }
    Ok(())
}

/// Validate the federation part of a document; `problems` gets one text per
/// problem, naming the entry.
pub(crate) fn parse(
    raw: Option<RawFederation>,
    partners: Vec<RawPartner>,
    base: Option<&Path>,
    problems: &mut Vec<String>,
) -> Federation {
    let raw = raw.unwrap_or_default();
    let mut fed = Federation::default();
    match raw.blocked_domains {
        None => {}
        Some(toml::Value::Array(items)) => {
            for item in items {
                match item.as_str().map(domain_of) {
                    Some(Ok(d)) => fed.blocked_domains.push(d),
                    Some(Err(e)) => problems.push(format!("federation.blocked_domains: {e}")),
                    None => problems.push(format!("federation.blocked_domains: expected strings, found {item}")),
                }
            }
        }
        Some(other) => problems.push(format!(
            "federation.blocked_domains: expected an array of domains, found {other}"
        )),
    }
    for (i, p) in partners.into_iter().enumerate() {
        let label = match p.domain.as_ref().and_then(toml::Value::as_str) {
            Some(d) => format!("partner #{} ({d})", i + 1),
            None => format!("partner #{}", i + 1),
        };
        let mut issue = |what: String| problems.push(format!("{label}: {what}"));
        let mut string = |name: &str, v: &Option<toml::Value>| match v {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(other) => {
                issue(format!("{name}: expected a string, found {other}"));
                None
            }
        };
        let domain_s = string("domain", &p.domain);
        let mode_s = string("mode", &p.mode);
        let edge_s = string("edge", &p.edge);
        let address = string("address", &p.address);
        let ca_file = string("ca_file", &p.ca_file);
        let ca_pem_s = string("ca_pem", &p.ca_pem);
        let crl_file = string("crl_file", &p.crl_file);
        let crl_pem_s = string("crl_pem", &p.crl_pem);
        let domain = match domain_s {
            None => {
                issue("missing field \"domain\"".into());
                None
            }
            Some(d) => domain_of(&d).map_err(&mut issue).ok(),
        };
        let mode = match mode_s {
            None => {
                issue("missing field \"mode\"".into());
                None
            }
            Some(m) => PartnerMode::from_str(&m).map_err(&mut issue).ok(),
        };
        let edge = edge_s.and_then(|e| {
            Fqdn::new(&e)
                .map_err(|err| issue(format!("bad edge \"{e}\": {err}")))
                .ok()
        });
        if let Some(a) = &address {
            if let Err(e) = check_host_port(a) {
                issue(e);
            }
        }
        if mode == Some(PartnerMode::AllowedServer) {
            if edge.is_none() && p.edge.is_none() {
                issue("allowed-server partner without \"edge\" (the name its certificate must carry)".into());
            }
            if address.is_none() {
                issue("allowed-server partner without \"address\" (where to dial its edge)".into());
            }
        }
        let ca_pem = match (ca_pem_s, ca_file) {
            (Some(_), Some(_)) => {
                issue("both ca_file and ca_pem: give one".into());
                None
            }
            (Some(pem), None) => Some(pem),
            (None, Some(file)) => match base {
                Some(dir) => {
                    let path = dir.join(&file);
                    match std::fs::read_to_string(&path) {
                        Ok(pem) => Some(pem),
                        Err(e) => {
                            issue(format!("ca_file {}: {e}", path.display()));
                            None
                        }
                    }
                }
                None => {
                    issue(format!(
                        "ca_file \"{file}\" is not embedded: sign the topology with `sipmesh topology sign`, which embeds it as ca_pem"
                    ));
                    None
                }
            },
            (None, None) => {
                issue("no trust anchors: give ca_file (or ca_pem)".into());
                None
            }
        };
        let ca_pem = ca_pem.and_then(|pem| check_pem(&pem).map(|_| pem).map_err(&mut issue).ok());
        let crl_pem = match (crl_pem_s, crl_file) {
            (Some(_), Some(_)) => {
                issue("both crl_file and crl_pem: give one".into());
                None
            }
            (Some(pem), None) => Some(pem),
            (None, Some(file)) => match base {
                Some(dir) => std::fs::read_to_string(dir.join(&file))
                    .map_err(|e| issue(format!("crl_file {}: {e}", dir.join(&file).display())))
                    .ok(),
                None => {
                    issue(format!(
                        "crl_file \"{file}\" is not embedded: sign the topology with `sipmesh topology sign`, which embeds it as crl_pem"
                    ));
                    None
                }
            },
            (None, None) => None,
        };
        let crl_pem = crl_pem.filter(|pem| {
            let ok = pem.len() <= MAX_PARTNER_PEM && pem.contains("-----BEGIN X509 CRL-----");
            if !ok {
                issue(format!("crl_pem: no X509 CRL, or more than {MAX_PARTNER_PEM} bytes"));
            }
            ok
        });
        let max_rate = match p.max_rate {
            None => None,
            Some(toml::Value::Integer(n)) if n >= 1 && n <= u32::MAX as i64 => Some(n as u32),
            Some(other) => {
                issue(format!("max_rate: expected a positive integer, found {other}"));
                None
            }
        };
        if let (Some(domain), Some(mode), Some(ca_pem)) = (domain, mode, ca_pem) {
            if fed.partners.iter().any(|q| q.domain == domain) {
                issue("duplicate partner domain".into());
            } else if fed.blocked_domains.contains(&domain) {
                issue("domain is both a partner and in federation.blocked_domains".into());
            }
            fed.partners.push(Partner {
                domain,
                mode,
                edge,
                address,
                ca_pem,
                crl_pem,
                max_rate,
            });
        }
    }
    fed
}

/// Replace every `ca_file = "..."` (and `crl_file`) of the `[[partner]]`
/// entries of a topology text by `ca_pem` (`crl_pem`) with the file's contents (relative paths from `base`), so
/// the anchors travel in the signed document.
pub fn embed_ca_files(text: &str, base: &Path) -> Result<String, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| format!("topology syntax error: {e}"))?;
    let Some(toml::Value::Array(partners)) = doc.get_mut("partner") else {
        return Ok(text.to_owned());
    };
    let mut changed = false;
    for (i, p) in partners.iter_mut().enumerate() {
        let Some(table) = p.as_table_mut() else { continue };
        for (file_key, pem_key) in [("ca_file", "ca_pem"), ("crl_file", "crl_pem")] {
            let Some(file) = table.get(file_key).and_then(toml::Value::as_str).map(str::to_owned) else {
                continue;
            };
            let path = base.join(&file);
            let pem = std::fs::read_to_string(&path)
                .map_err(|e| format!("partner #{}: {file_key} {}: {e}", i + 1, path.display()))?;
            table.remove(file_key);
            table.insert(pem_key.into(), toml::Value::String(pem));
            changed = true;
        }
    }
    if !changed {
        return Ok(text.to_owned());
    }
    toml::to_string(&doc).map_err(|e| format!("cannot write the topology: {e}"))
}

/// One line per federation change between two policies (for `topology diff`
/// and `publish`).
pub fn diff_lines(old: &Federation, new: &Federation) -> Vec<String> {
    let mut out = Vec::new();
    for d in &new.blocked_domains {
        if !old.blocked_domains.contains(d) {
            out.push(format!("+ blocked domain {d}"));
        }
    }
    for d in &old.blocked_domains {
        if !new.blocked_domains.contains(d) {
            out.push(format!("- blocked domain {d}"));
        }
    }
    for p in &new.partners {
        match old.partners.iter().find(|o| o.domain == p.domain) {
            None => out.push(format!("+ partner {} ({})", p.domain, p.mode)),
            Some(o) if o != p => out.push(format!("~ partner {}", p.domain)),
            Some(_) => {}
        }
    }
    for o in &old.partners {
        if !new.partners.iter().any(|p| p.domain == o.domain) {
            out.push(format!("- partner {}", o.domain));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::topology::{Topology, TopologyError};

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n";

    fn doc(federation: &str) -> String {
        format!(
            "version = 1\n\n[[member]]\nfqdn = \"fe1.contoso.test\"\nrole = \"front-end\"\nmesh_addr = \"127.0.0.1:5001\"\nclient_addr = \"127.0.0.1:5002\"\n\n[[member]]\nfqdn = \"edge1.contoso.test\"\nrole = \"edge\"\nmesh_addr = \"127.0.0.1:5003\"\nclient_addr = \"127.0.0.1:5004\"\nfederation_addr = \"127.0.0.1:5005\"\nfederation_fqdn = \"sip.contoso.test\"\n\n{federation}"
        )
    }

    fn problems(text: &str) -> Vec<String> {
        match Topology::from_toml_str(text) {
            Err(TopologyError::Invalid(issues)) => issues.into_iter().map(|i| i.to_string()).collect(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn partners_parse_round_trip_and_judge_domains() {
        let text = doc(&format!(
            "[federation]\nblocked_domains = [\"Blocked.test\"]\n\n[[partner]]\ndomain = \"fabrikam.test\"\nmode = \"allowed-server\"\nedge = \"sip.fabrikam.test\"\naddress = \"127.0.0.1:5071\"\nca_pem = \"\"\"\n{PEM}\"\"\"\nmax_rate = 50\n\n[[partner]]\ndomain = \"northwind.test\"\nmode = \"allowed-domain\"\nca_pem = \"\"\"\n{PEM}\"\"\"\n"
        ));
        // An edge may have no client port.
        let text = text.replace("client_addr = \"127.0.0.1:5004\"\n", "");
        let t = Topology::from_toml_str(&text).unwrap();
        assert_eq!(t.member("edge1.contoso.test").unwrap().client_addr, None);
        let no_client = doc("").replace("client_addr = \"127.0.0.1:5002\"\n", "");
        assert_eq!(
            problems(&no_client),
            vec!["member #1 (fe1.contoso.test): missing field \"client_addr\""]
        );
        assert_eq!(t.federation.blocked_domains, vec!["blocked.test".to_owned()]);
        assert_eq!(t.federation.partners.len(), 2);
        let f = &t.federation.partners[0];
        assert_eq!(f.edge.as_ref().map(|e| e.as_str()), Some("sip.fabrikam.test"));
        assert_eq!(f.max_rate, Some(50));
        assert_eq!(t.federation_edges().count(), 1);
        assert_eq!(Topology::from_toml_str(&t.to_toml_string()).unwrap(), t);
        assert!(matches!(
            t.federation.verdict("BLOCKED.test."),
            super::DomainVerdict::Blocked
        ));
        assert!(matches!(
            t.federation.verdict("fabrikam.test"),
            super::DomainVerdict::Partner(_)
        ));
        assert!(matches!(
            t.federation.verdict("other.test"),
            super::DomainVerdict::NotPartner
        ));
    }

    #[test]
    fn every_bad_partner_is_named() {
        let text = doc(&format!(
            "[federation]\nblocked_domains = [\"fabrikam.test\"]\n\n[[partner]]\ndomain = \"fabrikam.test\"\nmode = \"allowed-server\"\nca_pem = \"\"\"\n{PEM}\"\"\"\n\n[[partner]]\ndomain = \"northwind.test\"\nmode = \"allowed-domain\"\n\n[[partner]]\ndomain = \"x.test\"\nmode = \"sometimes\"\nca_file = \"x.pem\"\n"
        ));
        assert_eq!(
            problems(&text),
            vec![
                "partner #1 (fabrikam.test): allowed-server partner without \"edge\" (the name its certificate must carry)",
                "partner #1 (fabrikam.test): allowed-server partner without \"address\" (where to dial its edge)",
                "partner #1 (fabrikam.test): domain is both a partner and in federation.blocked_domains",
                "partner #2 (northwind.test): no trust anchors: give ca_file (or ca_pem)",
                "partner #3 (x.test): mode: unknown value \"sometimes\" (expected allowed-server or allowed-domain)",
                "partner #3 (x.test): ca_file \"x.pem\" is not embedded: sign the topology with `sipmesh topology sign`, which embeds it as ca_pem",
            ]
        );
    }

    #[test]
    fn ca_files_are_embedded_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fab.pem"), PEM).unwrap();
        let text = doc("[[partner]]\ndomain = \"fabrikam.test\"\nmode = \"allowed-server\"\nedge = \"sip.fabrikam.test\"\naddress = \"127.0.0.1:5071\"\nca_file = \"fab.pem\"\n");
        let embedded = super::embed_ca_files(&text, dir.path()).unwrap();
        let t = Topology::from_toml_str(&embedded).unwrap();
        assert_eq!(t.federation.partners[0].ca_pem, PEM);
        let path = dir.path().join("topology.toml");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(Topology::from_file(&path).unwrap(), t);
    }

    #[test]
    fn two_edge_pools_and_partners_without_edges_are_refused() {
        let two = doc("").replace("[[member]]\nfqdn = \"fe1.contoso.test\"\nrole = \"front-end\"", "[[member]]\nfqdn = \"fe1.contoso.test\"\nrole = \"edge\"\nfederation_addr = \"127.0.0.1:5006\"\nfederation_fqdn = \"sip2.contoso.test\"");
        assert_eq!(
            problems(&two),
            vec!["more than one active federation edge pool (2 edges): put every edge in the same pool"]
        );
        let none = doc(&format!(
            "[[partner]]\ndomain = \"n.test\"\nmode = \"allowed-domain\"\nca_pem = \"\"\"\n{PEM}\"\"\"\n"
        ))
        .replace(
            "federation_addr = \"127.0.0.1:5005\"\nfederation_fqdn = \"sip.contoso.test\"\n",
            "",
        );
        assert_eq!(
            problems(&none),
            vec!["partners are configured but no edge member has a federation_addr"]
        );
    }
}
