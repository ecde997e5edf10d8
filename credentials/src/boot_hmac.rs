//! The boot manager's request authentication (section 4.8.2): every call carries an
//! HMAC-SHA256, keyed with the node key from `plnode.txt`, over a canonical encoding:
//!
//! ```text
//! plab-boot-v1 \n METHOD \n NODE_ID \n TIMESTAMP \n NONCE \n hex(SHA-256(canonical JSON of params))
//! ```
//!
//! Canonical JSON: objects with keys sorted by byte order, no whitespace, serde_json's
//! number and string forms. The server rejects a timestamp more than [`MAX_SKEW`] seconds
//! from its clock and any nonce it has already seen for the node within that window, so a
//! captured request cannot be replayed.

use crate::{now, random_bytes, CredentialError};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Largest accepted clock difference, seconds.
pub const MAX_SKEW: i64 = 300;

/// A node key (sections 4.1 and 5.2): the secret the MA generates when a node is
/// registered and the node keeps in `plnode.txt`. Never printed: its `Debug` shows only
/// a digest prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeKey(Vec<u8>);

impl NodeKey {
    /// A fresh 256-bit key from the OS CSPRNG.
    pub fn generate() -> NodeKey {
        NodeKey(random_bytes::<32>().to_vec())
    }

    /// Parses the hex form of `plnode.txt`.
    pub fn from_hex(s: &str) -> Result<NodeKey, CredentialError> {
        let b = hex::decode(s.trim()).map_err(|_| CredentialError::Malformed("node key: not hex".into()))?;
        if b.len() < 16 {
            return Err(CredentialError::Malformed("node key: shorter than 128 bits".into()));
        }
        Ok(NodeKey(b))
    }

    /// The hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({}…)", &hex::encode(Sha256::digest(&self.0))[..8])
    }
}

/// The `auth` value of a boot manager call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootAuth {
    /// Always `"hmac"`.
    #[serde(rename = "AuthMethod")]
    pub method: String,
    /// The node.
    pub node_id: i64,
    /// Unix seconds.
    pub timestamp: i64,
    /// 16 random bytes, hex.
    pub nonce: String,
    /// HMAC-SHA256, hex.
    pub signature: String,
}

/// Canonical JSON text of `v`.
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> =
                keys.into_iter().map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&m[k]))).collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        v => v.to_string(),
    }
}

fn message(method: &str, node_id: i64, timestamp: i64, nonce: &str, params: &Value) -> String {
    let digest = hex::encode(Sha256::digest(canonical_json(params).as_bytes()));
    format!("plab-boot-v1\n{method}\n{node_id}\n{timestamp}\n{nonce}\n{digest}")
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length")
}

impl BootAuth {
    /// Signs a call now, with a fresh nonce.
    pub fn sign(node_key: &NodeKey, node_id: i64, method: &str, params: &Value) -> BootAuth {
        let timestamp = now();
        let nonce = hex::encode(random_bytes::<16>());
        let mut m = mac(node_key.as_bytes());
        m.update(message(method, node_id, timestamp, &nonce, params).as_bytes());
        BootAuth { method: "hmac".into(), node_id, timestamp, nonce, signature: hex::encode(m.finalize().into_bytes()) }
    }

    /// Checks the MAC (in constant time) and the clock skew. The caller checks the nonce
    /// against those it has seen.
    pub fn verify(&self, node_key: &NodeKey, method: &str, params: &Value, at: i64) -> Result<(), CredentialError> {
        if self.method != "hmac" {
            return Err(CredentialError::Malformed("auth.AuthMethod must be \"hmac\"".into()));
        }
        if self.nonce.len() != 32 || hex::decode(&self.nonce).is_err() {
            return Err(CredentialError::Malformed("auth.nonce must be 32 hex digits".into()));
        }
        // abs_diff: a hostile timestamp (i64::MIN) cannot overflow the arithmetic.
        if at.abs_diff(self.timestamp) > MAX_SKEW as u64 {
            return Err(CredentialError::Expired(format!(
                "auth.timestamp is {} s away from the server's clock (at most {MAX_SKEW})",
                at.abs_diff(self.timestamp)
            )));
        }
        let sig =
            hex::decode(&self.signature).map_err(|_| CredentialError::Malformed("auth.signature: not hex".into()))?;
        let mut m = mac(node_key.as_bytes());
        m.update(message(method, self.node_id, self.timestamp, &self.nonce, params).as_bytes());
        m.verify_slice(&sig)
            .map_err(|_| CredentialError::BadSignature("auth.signature does not verify with the node key".into()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys() {
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": [true, {"y": "x", "c": null}]})),
            r#"{"a":[true,{"c":null,"y":"x"}],"b":1}"#
        );
    }

    #[test]
    fn mac_binds_method_params_and_key() {
        let key = &NodeKey::generate();
        let p = json!({"state": "boot"});
        let a = BootAuth::sign(key, 7, "BootUpdateState", &p);
        a.verify(key, "BootUpdateState", &p, now()).unwrap();
        assert!(a.verify(key, "BootGetState", &p, now()).is_err());
        assert!(a.verify(key, "BootUpdateState", &json!({"state": "debug"}), now()).is_err());
        assert!(a.verify(&NodeKey::generate(), "BootUpdateState", &p, now()).is_err());
        assert!(matches!(a.verify(key, "BootUpdateState", &p, now() + 1000), Err(CredentialError::Expired(_))));
        assert!(matches!(a.verify(key, "BootUpdateState", &p, now() - 1000), Err(CredentialError::Expired(_))));
        let other_node = BootAuth { node_id: 8, ..a.clone() };
        assert!(other_node.verify(key, "BootUpdateState", &p, now()).is_err());
        // A hostile timestamp is refused, not an overflow.
        let extreme = BootAuth { timestamp: i64::MIN, ..a.clone() };
        assert!(matches!(extreme.verify(key, "BootUpdateState", &p, now()), Err(CredentialError::Expired(_))));
        let extreme = BootAuth { timestamp: i64::MAX, ..a };
        assert!(matches!(extreme.verify(key, "BootUpdateState", &p, i64::MIN), Err(CredentialError::Expired(_))));
    }

    #[test]
    fn node_keys_are_never_printed() {
        let k = NodeKey::generate();
        assert!(!format!("{k:?}").contains(&k.to_hex()));
        assert_eq!(NodeKey::from_hex(&k.to_hex()).unwrap(), k);
        assert!(NodeKey::from_hex("zz").is_err());
        assert!(NodeKey::from_hex("00ff").is_err(), "too short");
    }
}
