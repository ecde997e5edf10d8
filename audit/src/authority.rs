//! The node's auditing service at the authority: a key of its own, certified by the node
//! manager for the local service `service` (a root service, `plc.audit`), opens a session
//! as that node's auditing service. Used to upload flows ([`crate::spool::Archive`]) and to
//! learn who is responsible for each slice ([`crate::contacts`]).

use anyhow::Context;

/// How to reach the authority.
#[derive(Debug, Clone)]
pub struct AuthorityLink {
    /// The authority's URL.
    pub url: String,
    /// The root certificate it chains to (PEM).
    pub root_pem: String,
    /// The local service the key is certified for.
    pub service: String,
    /// The node manager's socket.
    pub nm_socket: std::path::PathBuf,
}

impl AuthorityLink {
    /// A session, and the node's id (a node that has not booted yet has none: callers
    /// wait until it has).
    pub fn session(&self) -> anyhow::Result<(plab_authority::AuthorityClient, i64)> {
        let key = credentials::pki::KeyPair::generate();
        let mut nm = plab_nm::NmClient::connect(&self.nm_socket)
            .with_context(|| format!("the node manager at {}", self.nm_socket.display()))?;
        let node_id = nm.call_value("NodeInfo", serde_json::json!({}))?["node_id"]
            .as_i64()
            .context("this node has no node id yet (plab-boot gives it one when the node boots)")?;
        let cert = nm
            .call_value(
                "SignCertificate",
                serde_json::json!({"public_key": key.public_key_pem(), "slice": self.service}),
            )
            .context("SignCertificate")?;
        let chain = cert["certificate"].as_str().context("SignCertificate: no certificate")?;
        let mut c = plab_authority::AuthorityClient::new(&self.url, &self.root_pem, None, None)
            .with_context(|| self.url.clone())?;
        c.start_session(chain, &key.to_pem()).with_context(|| format!("AuthenticateCertificate at {}", self.url))?;
        Ok((c, node_id))
    }
}
