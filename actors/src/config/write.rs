//! Writing `node.toml` back ([`NodeConfig::to_toml`]): what `cluster up`
//! generates, and what a parse reads back unchanged.

use std::path::Path;

use super::*;

impl NodeConfig {
    /// Render as TOML (used by `cluster up` to write each node's file).
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let q = |p: &Path| toml_str(&p.display().to_string());
        s += &format!("fqdn = {}\n", toml_str(self.fqdn.as_str()));
        if let Some(t) = &self.topology {
            s += &format!("topology = {}\n", q(t));
        }
        if let Some(k) = &self.topology_public_key {
            s += &format!("topology_public_key = {}\n", q(k));
        }
        s += &format!("data_dir = {}\n", q(&self.data_dir));
        s += &format!("debug_socket = {}\n", q(&self.debug_socket));
        s += "\n[listen]\n";
        if let Some(a) = self.mesh_listen {
            s += &format!("mesh = \"{a}\"\n");
        }
        if let Some(a) = self.client_listen {
            s += &format!("client = \"{a}\"\n");
        }
        s += "\n[tls]\n";
        s += &format!(
            "cert = {}\nkey = {}\nca = {}\n",
            q(&self.tls.cert),
            q(&self.tls.key),
            q(&self.tls.ca)
        );
        let crls: Vec<String> = self.tls.crls.iter().map(|p| q(p)).collect();
        s += &format!("crls = [{}]\n", crls.join(", "));
        s += &format!("crl_expired = \"{}\"\n", self.tls.crl_expired.as_str());
        if let Some(k) = &self.tls.keylog {
            s += &format!("keylog = {}\n", q(k));
        }
        let m = &self.mesh;
        s += "\n[mesh]\n";
        s += &format!(
            "heartbeat_interval_ms = {}\nheartbeat_timeout_ms = {}\nbackoff_cap_ms = {}\nhandshake_timeout_ms = {}\nmax_connections = {}\nmax_connections_per_ip = {}\nmember_reserved_connections = {}\n",
            m.heartbeat_interval.as_millis(),
            m.heartbeat_timeout.as_millis(),
            m.backoff_cap.as_millis(),
            m.handshake_timeout.as_millis(),
            m.max_connections,
            m.max_connections_per_ip,
            m.member_reserved_connections
        );
        if let Some(dns) = m.dns {
            s += &format!("dns = \"{dns}\"\n");
        }
        let p = &self.sip;
        s += "\n[sip]\n";
        if let Some(d) = &p.domain {
            s += &format!("domain = {}\n", toml_str(d));
        }
        if let Some(u) = &p.users {
            s += &format!("users = {}\n", q(u));
        }
        s += &format!(
            "t1_ms = {}\ninvite_timeout_ms = {}\nmin_expires = {}\nmax_expires = {}\nauth_retry_limit = {}\nmax_client_connections = {}\nclient_idle_timeout_ms = {}\n\
             max_client_connections_per_ip = {}\nclient_message_timeout_ms = {}\nunauthenticated_lifetime_ms = {}\n\
             max_transaction_bytes = {}\nmax_transaction_bytes_per_user = {}\n",
            p.t1.as_millis(),
            p.invite_timeout.as_millis(),
            p.min_expires,
            p.max_expires,
            p.auth_retry_limit,
            p.max_client_connections,
            p.client_idle_timeout.as_millis(),
            p.max_client_connections_per_ip,
            p.client_message_timeout.as_millis(),
            p.unauthenticated_lifetime.as_millis(),
            p.max_transaction_bytes,
            p.max_transaction_bytes_per_user
        );
        s += &format!(
            "lockout_base_ms = {}\nlockout_cap_ms = {}\n",
            p.lockout.base.as_millis(),
            p.lockout.cap.as_millis()
        );
        let algs: Vec<String> = p
            .digest_algorithms
            .iter()
            .map(|a| format!("\"{}\"", a.as_str()))
            .collect();
        s += &format!("digest_algorithms = [{}]\n", algs.join(", "));
        if let Some(a) = &p.advertise {
            s += &format!("advertise = {}\n", toml_str(a));
        }
        s += &format!("assert_identity_to_clients = {}\n", p.assert_identity_to_clients);
        for (cert, key) in &p.certs {
            s += &format!("\n[[sip.certs]]\ncert = {}\nkey = {}\n", q(cert), q(key));
        }
        if self.admin != AdminConfig::default() {
            s += "\n[admin]\n";
        }
        if let Some(m) = self.admin.metrics {
            s += &format!("metrics = \"{m}\"\n");
        }
        if let Some(h) = self.admin.http {
            s += &format!("http = \"{h}\"\n");
        }
        if let Some(f) = &self.federation {
            s += &format!("\n[federation]\nmax_connections = {}\n", f.max_connections);
            if let Some(a) = f.listen {
                s += &format!("listen = \"{a}\"\n");
            }
            if let Some(a) = f.dns {
                s += &format!("dns = \"{a}\"\n");
            }
            s += &format!("\n[federation.tls]\ncert = {}\nkey = {}\n", q(&f.cert), q(&f.key));
        }
        s
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
