//! plab credentials: what the security architecture (section 5 of the PlanetLab
//! architecture overview) is made of, shared by the authorities, the node manager, the
//! boot manager and the CLI.
//!
//! - [`pki`]: the static key infrastructure with X.509 instead of XML-SEC (the
//!   specification's evolution note allows it): a root CA, authority certificates signed by
//!   it, principal, node and service certificates, and chain verification that also checks
//!   *who* may issue *what* (only the MA issues node certificates, only a node vouches for
//!   a service on itself).
//! - [`seal`]: a session key encrypted to a certificate's public key (section 5.5's
//!   `AuthenticateCertificate`): ECIES over P-256, HKDF-SHA256, AES-256-GCM.
//! - [`ticket`]: an RSpec signed by a slice authority (sections 4.5 and 4.7).
//! - [`boot_hmac`]: the boot manager's per-call HMAC-SHA256 over the node key (4.8.2).
//!
//! Keys are ECDSA P-256 throughout; secrets come from the OS CSPRNG and are compared in
//! constant time.
#![warn(missing_docs)]

pub mod boot_hmac;
pub mod identity;
pub mod pki;
pub mod seal;
pub mod ticket;

pub use identity::Identity;

/// Why a credential is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// the text is not what it should be
    #[error("{0}")]
    Malformed(String),
    /// a signature or MAC does not verify
    #[error("{0}")]
    BadSignature(String),
    /// the credential is outside its validity period
    #[error("{0}")]
    Expired(String),
    /// the chain does not lead to a trusted root, or a link may not issue what it issued
    #[error("{0}")]
    Untrusted(String),
}

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `n` random bytes from the OS CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the OS CSPRNG failed");
    b
}
