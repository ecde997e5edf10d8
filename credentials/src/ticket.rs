//! Tickets (sections 4.5 and 4.7): an RSpec for a slice, signed by the slice authority,
//! that anyone holding the authority's certificate can verify.
//!
//! Wire form (JSON): `{"body": base64(JSON of TicketBody), "signature": base64(DER
//! ECDSA P-256 SHA-256 over the body bytes), "signer": PEM of the SA certificate}`. The
//! verifier never trusts `signer`: it checks against the certificate it already holds
//! (from the slice pool's RSpec), and `signer` only helps it pick one.

use crate::pki::Cert;
use crate::{now, random_bytes, CredentialError, Identity};
use base64::Engine;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{DerSignature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use serde::{Deserialize, Serialize};

/// What a ticket grants: the right to create this slice with this RSpec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketBody {
    /// Format version (1).
    pub version: u32,
    /// The slice authority's name.
    pub authority: String,
    /// The slice.
    pub slice: String,
    /// The slice's RSpec (XML), with the users' keys.
    pub rspec: String,
    /// Node ids the slice may be created on (empty: any node trusting the authority).
    pub nodes: Vec<i64>,
    /// Issue time, Unix seconds.
    pub issued: i64,
    /// Expiry, Unix seconds.
    pub expires: i64,
    /// Random, so two tickets are never equal.
    pub nonce: String,
    /// When the slice itself expires, Unix seconds: a node keeps a VM made from the ticket
    /// until then (the ticket's own `expires` only bounds when it may be redeemed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_expires: Option<i64>,
}

/// A signed ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTicket {
    /// base64 of the body's JSON.
    pub body: String,
    /// base64 of the DER signature.
    pub signature: String,
    /// The signing authority's certificate (a hint, never trusted by itself).
    pub signer: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl TicketBody {
    /// A body valid from now for `ttl` seconds.
    pub fn new(authority: &str, slice: &str, rspec: String, nodes: Vec<i64>, ttl: i64) -> TicketBody {
        let issued = now();
        TicketBody {
            version: 1,
            authority: authority.into(),
            slice: slice.into(),
            rspec,
            nodes,
            issued,
            expires: issued + ttl,
            nonce: hex::encode(random_bytes::<12>()),
            slice_expires: None,
        }
    }

    /// Signs the body with the SA's private key (PKCS#8 PEM).
    pub fn sign(&self, sa_key_pem: &str, sa_cert_pem: &str) -> Result<SignedTicket, CredentialError> {
        let key =
            SigningKey::from_pkcs8_pem(sa_key_pem).map_err(|e| CredentialError::Malformed(format!("SA key: {e}")))?;
        let body = serde_json::to_vec(self).map_err(|e| CredentialError::Malformed(e.to_string()))?;
        let sig: DerSignature = key.sign(&body);
        Ok(SignedTicket {
            body: b64().encode(&body),
            signature: b64().encode(sig.as_bytes()),
            signer: sa_cert_pem.into(),
        })
    }
}

impl SignedTicket {
    /// Verifies the ticket against the slice authority certificate `sa` at time `at`.
    pub fn verify(&self, sa: &Cert, at: i64) -> Result<TicketBody, CredentialError> {
        let Identity::Authority(crate::identity::AuthorityKind::Sa, sa_name) = &sa.identity else {
            return Err(CredentialError::Untrusted(format!("{} is not a slice authority", sa.identity)));
        };
        let body =
            b64().decode(&self.body).map_err(|_| CredentialError::Malformed("ticket body: not base64".into()))?;
        let sig = b64()
            .decode(&self.signature)
            .map_err(|_| CredentialError::Malformed("ticket signature: not base64".into()))?;
        let sig = DerSignature::try_from(sig.as_slice())
            .map_err(|_| CredentialError::Malformed("ticket signature: not DER".into()))?;
        let vk = VerifyingKey::from_public_key_der(&sa.spki)
            .map_err(|_| CredentialError::Malformed("SA certificate: not a P-256 key".into()))?;
        vk.verify(&body, &sig).map_err(|_| {
            CredentialError::BadSignature("ticket: the signature does not verify (forged or altered)".into())
        })?;
        let t: TicketBody =
            serde_json::from_slice(&body).map_err(|e| CredentialError::Malformed(format!("ticket body: {e}")))?;
        if &t.authority != sa_name {
            return Err(CredentialError::Untrusted(format!(
                "ticket: issued by {} but signed by {sa_name}",
                t.authority
            )));
        }
        if at >= t.expires {
            return Err(CredentialError::Expired(format!("ticket for {} expired at {}", t.slice, t.expires)));
        }
        Ok(t)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::identity::AuthorityKind;
    use crate::pki::{new_authority, new_root, KeyPair};

    #[test]
    fn forged_altered_and_expired_tickets_are_refused() {
        let rk = KeyPair::generate();
        let root = new_root("plc", &rk, 10).unwrap();
        let (sa, sak) = new_authority(&root, &rk, AuthorityKind::Sa, "plc", 10).unwrap();
        let sa_cert = Cert::from_pem(&sa).unwrap();
        let t = TicketBody::new("plc", "plc.demo", "<VServerSlice/>".into(), vec![1], 3600);
        let s = t.sign(&sak.to_pem(), &sa).unwrap();
        assert_eq!(s.verify(&sa_cert, now()).unwrap(), t);
        // Expired.
        assert!(matches!(s.verify(&sa_cert, now() + 7200), Err(CredentialError::Expired(_))));
        // Altered body.
        let mut body = t.clone();
        body.rspec = "<VServerSlice><resources mem_limit=\"99999\"/></VServerSlice>".into();
        let altered = SignedTicket { body: b64().encode(serde_json::to_vec(&body).unwrap()), ..s.clone() };
        assert!(matches!(altered.verify(&sa_cert, now()), Err(CredentialError::BadSignature(_))));
        // Forged: signed by another key that claims the same authority.
        let mallory = KeyPair::generate();
        let forged = t.sign(&mallory.to_pem(), &sa).unwrap();
        assert!(matches!(forged.verify(&sa_cert, now()), Err(CredentialError::BadSignature(_))));
    }
}
