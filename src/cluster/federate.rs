//! `sipmesh cluster federate --dir A --dir B`: make two running local
//! clusters allowed-server partners of each other. Each gets a new signed
//! topology (version + 1) naming the other as a partner (its edge's
//! federation name and address, its external CA embedded), published on one
//! of its nodes; membership replicates it to the rest.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use sipmesh_state::{signed, AdminKey, Partner, PartnerMode, Topology};

use super::ClusterFile;

fn edge_of<'a>(dir: &Path, c: &'a ClusterFile) -> anyhow::Result<&'a super::ClusterEdge> {
    c.edge.as_ref().with_context(|| {
        format!(
            "{} has no edge: start that cluster with `sipmesh cluster up --edge`",
            dir.display()
        )
    })
}

/// Add `partner` to `cluster`'s topology (replacing an entry of the same
/// domain), sign it, write it to the cluster's topology file and publish it.
fn add_partner(dir: &Path, cluster: &ClusterFile, partner: Partner) -> anyhow::Result<u64> {
    let doc = std::fs::read_to_string(&cluster.topology)
        .with_context(|| format!("cannot read {}", cluster.topology.display()))?;
    let mut topology = Topology::from_toml_str(signed::unsigned_content(&doc))
        .with_context(|| format!("{} is not a valid topology", cluster.topology.display()))?;
    topology.version += 1;
    topology.federation.partners.retain(|p| p.domain != partner.domain);
    topology.federation.partners.push(partner);
    let text = topology.to_toml_string();
    // Validate what is about to be signed (and what the nodes will check).
    Topology::from_toml_str(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let signed_doc = AdminKey::load(&cluster.topology_key)?.sign(&text);
    crate::topology::write_atomically(&cluster.topology, &signed_doc)?;
    let node = cluster.nodes.iter().find(|n| super::alive(n.pid)).with_context(|| {
        format!(
            "no node of {} is running: start it with `sipmesh cluster up --dir {}`",
            dir.display(),
            dir.display()
        )
    })?;
    let result = crate::ctl::request(
        &node.debug_socket,
        &serde_json::json!({"cmd": "publish", "document": signed_doc}),
    )?;
    if result["applied"] != serde_json::Value::Bool(true) {
        bail!(
            "{}: topology v{} was not applied: {result}",
            dir.display(),
            topology.version
        );
    }
    Ok(topology.version)
}

/// Federate the clusters in `dirs` (exactly two).
pub fn federate(dirs: &[PathBuf]) -> anyhow::Result<()> {
    let [a_dir, b_dir] = dirs else {
        bail!("cluster federate: give exactly two --dir (got {})", dirs.len());
    };
    let a = ClusterFile::load(a_dir)?;
    let b = ClusterFile::load(b_dir)?;
    if a.domain == b.domain {
        bail!(
            "both clusters serve {}: partners need different domains (cluster up --domain)",
            a.domain
        );
    }
    let partner_of = |c: &ClusterFile, dir: &Path| -> anyhow::Result<Partner> {
        let edge = edge_of(dir, c)?;
        let ca_pem = std::fs::read_to_string(&edge.federation_ca)
            .with_context(|| format!("cannot read {}", edge.federation_ca.display()))?;
        Ok(Partner {
            domain: c.domain.clone(),
            mode: PartnerMode::AllowedServer,
            edge: Some(sipmesh_state::Fqdn::new(&edge.federation_fqdn)?),
            address: Some(edge.federation_addr.to_string()),
            ca_pem,
            crl_pem: None,
            max_rate: None,
        })
    };
    let pa = partner_of(&a, a_dir)?;
    let pb = partner_of(&b, b_dir)?;
    let va = add_partner(a_dir, &a, pb)?;
    let vb = add_partner(b_dir, &b, pa)?;
    println!("{}: topology v{va} names {} as a partner", a.domain, b.domain);
    println!("{}: topology v{vb} names {} as a partner", b.domain, a.domain);
    Ok(())
}
