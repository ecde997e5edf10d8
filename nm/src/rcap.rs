//! Resource capabilities (section 4.3): 128-bit random strings, hex on the wire.
//!
//! Rcaps are secrets. They come from the OS CSPRNG, are looked up through their SHA-256
//! digest (so a lookup's timing depends on the digest, not on the rcap), and the final
//! comparison is constant-time.

use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// A resource capability.
#[derive(Clone, Copy)]
pub struct Rcap([u8; 16]);

/// The digest an rcap is indexed by.
pub type RcapKey = [u8; 32];

impl Rcap {
    /// A fresh rcap from the OS CSPRNG.
    pub fn generate() -> std::io::Result<Rcap> {
        let mut b = [0u8; 16];
        getrandom::getrandom(&mut b).map_err(std::io::Error::other)?;
        Ok(Rcap(b))
    }

    /// Parses 32 hex digits. Anything else is not an rcap.
    pub fn from_hex(s: &str) -> Option<Rcap> {
        if s.len() != 32 {
            return None;
        }
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(Rcap(b))
    }

    /// The rcap as 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The index key of this rcap.
    pub fn key(&self) -> RcapKey {
        Sha256::digest(self.0).into()
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Rcap) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for Rcap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret itself in logs.
        write!(f, "Rcap({}…)", &hex::encode(&self.key()[..4]))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_strict_parsing() {
        let r = Rcap::generate().unwrap();
        let h = r.to_hex();
        assert_eq!(h.len(), 32);
        assert!(Rcap::from_hex(&h).unwrap().ct_eq(&r));
        assert!(Rcap::from_hex(&h[..31]).is_none());
        assert!(Rcap::from_hex(&format!("{h}0")).is_none());
        assert!(Rcap::from_hex(&"g".repeat(32)).is_none());
        assert!(Rcap::from_hex("").is_none());
    }

    #[test]
    fn rcaps_differ() {
        let a = Rcap::generate().unwrap();
        let b = Rcap::generate().unwrap();
        assert!(!a.ct_eq(&b));
        assert!(!format!("{a:?}").contains(&a.to_hex()));
    }
}
