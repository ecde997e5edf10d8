//! Sealing a secret to a certificate's public key (ECIES): an ephemeral P-256 key agrees
//! a secret with the recipient's key; HKDF-SHA256 turns it into an AES-256-GCM key. Only
//! the holder of the certificate's private key can open the result.
//!
//! Wire form: base64 of `ephemeral public key (65 bytes, uncompressed) || nonce (12) ||
//! ciphertext with tag`.

use crate::{random_bytes, CredentialError};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use p256::{PublicKey, SecretKey};

const INFO: &[u8] = b"plab session key v1";

fn key(shared: &[u8], eph_pub: &[u8]) -> Aes256Gcm {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(eph_pub), shared);
    let mut k = [0u8; 32];
    hk.expand(INFO, &mut k).expect("32 bytes is a valid HKDF length");
    Aes256Gcm::new_from_slice(&k).expect("32-byte key")
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Encrypts `secret` to the P-256 public key in `spki_der` (a certificate's key).
pub fn seal(spki_der: &[u8], secret: &[u8]) -> Result<String, CredentialError> {
    let recipient = PublicKey::from_public_key_der(spki_der)
        .map_err(|_| CredentialError::Malformed("the certificate's key is not a P-256 key".into()))?;
    let eph = loop {
        if let Ok(k) = SecretKey::from_slice(&random_bytes::<32>()) {
            break k;
        }
    };
    let eph_pub = eph.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(eph.to_nonzero_scalar(), recipient.as_affine());
    let nonce = random_bytes::<12>();
    let ct = key(shared.raw_secret_bytes(), eph_pub.as_bytes())
        .encrypt(Nonce::from_slice(&nonce), secret)
        .map_err(|_| CredentialError::Malformed("sealing failed".into()))?;
    let mut out = eph_pub.as_bytes().to_vec();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(b64().encode(out))
}

/// Opens what [`seal`] made, with the PKCS#8 PEM private key.
pub fn open(private_key_pem: &str, sealed: &str) -> Result<Vec<u8>, CredentialError> {
    let sk = SecretKey::from_pkcs8_pem(private_key_pem)
        .map_err(|e| CredentialError::Malformed(format!("private key: {e}")))?;
    let raw = b64().decode(sealed.trim()).map_err(|_| CredentialError::Malformed("sealed key: not base64".into()))?;
    if raw.len() < 65 + 12 + 16 {
        return Err(CredentialError::Malformed("sealed key: too short".into()));
    }
    let (eph_pub, rest) = raw.split_at(65);
    let (nonce, ct) = rest.split_at(12);
    let eph =
        PublicKey::from_sec1_bytes(eph_pub).map_err(|_| CredentialError::Malformed("sealed key: bad point".into()))?;
    let shared = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), eph.as_affine());
    key(shared.raw_secret_bytes(), eph_pub)
        .decrypt(Nonce::from_slice(nonce), ct)
        .map_err(|_| CredentialError::BadSignature("sealed key: not sealed to this key, or altered".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pki::KeyPair;
    use p256::pkcs8::EncodePublicKey;

    fn spki(k: &KeyPair) -> Vec<u8> {
        PublicKey::from_public_key_pem(&k.public_key_pem()).unwrap().to_public_key_der().unwrap().as_bytes().to_vec()
    }

    #[test]
    fn only_the_key_holder_opens() {
        let k = KeyPair::generate();
        let sealed = seal(&spki(&k), b"session-secret").unwrap();
        assert_eq!(open(&k.to_pem(), &sealed).unwrap(), b"session-secret");
        let other = KeyPair::generate();
        assert!(open(&other.to_pem(), &sealed).is_err());
        let mut tampered = b64().decode(&sealed).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(open(&k.to_pem(), &b64().encode(tampered)).is_err());
    }
}
