//! `SignCertificate` (section 5.5): the node manager certifies that a public key belongs
//! to the calling slice on this node, with the node's MA-issued certificate.

use super::{Caller, NmError, NodeManager};
use crate::api::CertificateResult;
use credentials::pki::{issue, Cert, KeyPair, Profile};
use credentials::Identity;
use vm_types::SliceName;

/// How long a service certificate is valid, in days.
pub const SERVICE_CERT_DAYS: i64 = 7;

impl NodeManager {
    /// This node's id at its management authority, from its certificate (once booted).
    pub fn node_id(&self) -> Option<i64> {
        let chain = std::fs::read_to_string(&self.cfg.node_cert).ok()?;
        match Cert::bundle_from_pem(&chain).ok()?.first()?.identity {
            Identity::Node(n) => Some(n),
            _ => None,
        }
    }

    pub(crate) fn sign_certificate(
        &self,
        caller: &Caller,
        public_key: &str,
        server: bool,
        for_slice: Option<&SliceName>,
    ) -> Result<CertificateResult, NmError> {
        // A slice is certified as itself; the owner may have a client certificate made
        // for one of the node's root-run services (`root_services`: the auditing service,
        // which captures packets and so cannot run as an unprivileged uid), and for nothing
        // else (not the slice creation service, no server certificate).
        let slice = match (caller, for_slice) {
            (Caller::Slice(s), None) => s,
            (Caller::Slice(s), Some(f)) if s == f => s,
            (Caller::Slice(s), Some(f)) => {
                return Err(NmError::PermissionDenied(format!("slice: {s} is certified only as itself, not as {f}")))
            }
            (Caller::Owner, Some(_)) if server => {
                return Err(NmError::PermissionDenied("server: a root-run service gets a client certificate only".into()))
            }
            (Caller::Owner, Some(f)) if self.cfg.root_services.contains(f) => f,
            (Caller::Owner, Some(f)) => {
                return Err(NmError::PermissionDenied(format!(
                    "slice: {f} is not one of this node's root-run services (root_services in the node manager's config)"
                )))
            }
            (Caller::Owner, None) => {
                return Err(NmError::PermissionDenied(
                    "SignCertificate: certifies the calling slice; call it from the slice's VM (or as a uid mapped to a slice), or as the owner name one of the node's services with `slice`".into(),
                ))
            }
        };
        // A server certificate only for one of the node's services (a VM's slice would
        // otherwise serve on a forwarded port with a certificate naming the node).
        if server && !self.tables().is_service(slice) {
            return Err(NmError::PermissionDenied(
                "server: only the node's services (slice_uids, or holders of an authority's pool) get server certificates".into(),
            ));
        }
        let unavailable = |what: &std::path::Path, e: String| {
            NmError::Internal(format!(
                "this node has no node certificate yet ({}: {e}); plab-boot writes it when the node boots",
                what.display()
            ))
        };
        let (cert_path, key_path) = (&self.cfg.node_cert, &self.cfg.node_key);
        let chain = std::fs::read_to_string(cert_path).map_err(|e| unavailable(cert_path, e.to_string()))?;
        let key_pem = std::fs::read_to_string(key_path).map_err(|e| unavailable(key_path, e.to_string()))?;
        let certs = Cert::bundle_from_pem(&chain).map_err(|e| unavailable(cert_path, e.to_string()))?;
        let Identity::Node(node) = certs[0].identity else {
            return Err(unavailable(cert_path, format!("names {}, not a node", certs[0].identity)));
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| unavailable(key_path, e.to_string()))?;
        let id = Identity::Service { slice: slice.clone(), node };
        // A server certificate names only the node's own public address: a slice cannot get
        // one for any other name (an authority's, say) that clients trusting the root would
        // then accept.
        let names: Vec<String> = match (server, self.cfg.public_address) {
            (false, _) => vec![],
            (true, Some(a)) => vec![a.to_string()],
            (true, None) => {
                return Err(NmError::Conflict("server: this node has no public_address to certify a server for".into()))
            }
        };
        let profile = if server { Profile::Server(&names) } else { Profile::Client };
        let cert = issue(&certs[0].pem, &key, &id, public_key, profile, SERVICE_CERT_DAYS)
            .map_err(|e| NmError::invalid("public_key", e))?;
        let rest: String = certs.iter().map(|c| c.pem.as_str()).collect();
        Ok(CertificateResult { certificate: format!("{cert}{rest}"), identity: id.to_string() })
    }
}
