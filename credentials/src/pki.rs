//! Keys, certificates and chain verification.
//!
//! The chain of trust (section 5.1.1 and 5.5):
//!
//! ```text
//! root CA ─┬─ authority:sa:NAME ── principal:LOGIN          (users, admins, techs)
//!          ├─ authority:ma:NAME ── node:ID ── service:SLICE@ID (issued by that node's NM)
//!          └─ TLS server certificates of the authorities' HTTPS endpoints
//! ```
//!
//! [`verify_chain`] checks signatures, validity and basic constraints with rustls-webpki,
//! then who issued what: a principal's certificate must come from a slice authority, a
//! node's from a management authority, a service's from the node it names.

use crate::identity::{AuthorityKind, Identity};
use crate::{now, random_bytes, CredentialError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, SanType,
    SerialNumber,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

/// An ECDSA P-256 key pair.
pub struct KeyPair(rcgen::KeyPair);

impl KeyPair {
    /// A fresh key pair from the OS CSPRNG.
    pub fn generate() -> KeyPair {
        KeyPair(rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation"))
    }

    /// Reads a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<KeyPair, CredentialError> {
        rcgen::KeyPair::from_pem(pem).map(KeyPair).map_err(|e| CredentialError::Malformed(format!("private key: {e}")))
    }

    /// The private key, PKCS#8 PEM.
    pub fn to_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// The public key, SubjectPublicKeyInfo PEM.
    pub fn public_key_pem(&self) -> String {
        self.0.public_key_pem()
    }
}

/// A parsed certificate.
#[derive(Debug, Clone)]
pub struct Cert {
    /// PEM text.
    pub pem: String,
    /// DER bytes.
    pub der: Vec<u8>,
    /// Who it names.
    pub identity: Identity,
    /// Who issued it (the issuer's common name as an identity).
    pub issuer: Identity,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// SubjectPublicKeyInfo, DER.
    pub spki: Vec<u8>,
}

fn cn_of(name: &x509_parser::x509::X509Name<'_>) -> Result<Identity, CredentialError> {
    let cn = name
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .ok_or_else(|| CredentialError::Malformed("certificate has no common name".into()))?;
    Identity::parse(cn)
}

impl Cert {
    /// Parses one PEM certificate.
    pub fn from_pem(pem: &str) -> Result<Cert, CredentialError> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| CredentialError::Malformed(format!("certificate: not PEM ({e})")))?;
        Cert::from_der(&p.contents, pem.trim().to_owned() + "\n")
    }

    /// Parses one DER certificate (as a TLS peer presents it).
    pub fn from_der_bytes(der: &[u8]) -> Result<Cert, CredentialError> {
        let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", base64_lines(der));
        Cert::from_der(der, pem)
    }

    fn from_der(der: &[u8], pem: String) -> Result<Cert, CredentialError> {
        let (_, c) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CredentialError::Malformed(format!("certificate: not X.509 ({e})")))?;
        Ok(Cert {
            identity: cn_of(c.subject())?,
            issuer: cn_of(c.issuer())?,
            not_after: c.validity().not_after.timestamp(),
            spki: c.tbs_certificate.subject_pki.raw.to_vec(),
            der: der.to_vec(),
            pem,
        })
    }

    /// Every certificate in a PEM bundle, in order.
    pub fn bundle_from_pem(pem: &str) -> Result<Vec<Cert>, CredentialError> {
        let mut out = Vec::new();
        for p in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
            let p = p.map_err(|e| CredentialError::Malformed(format!("certificate bundle: {e}")))?;
            let text =
                format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", base64_lines(&p.contents));
            out.push(Cert::from_der(&p.contents, text)?);
        }
        if out.is_empty() {
            return Err(CredentialError::Malformed("certificate: no PEM certificate found".into()));
        }
        Ok(out)
    }
}

fn base64_lines(der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    b.as_bytes().chunks(64).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("\n")
}

fn params(subject: &Identity, days: i64, ca: IsCa) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, subject.to_string());
    dn.push(DnType::OrganizationName, "plab");
    p.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::days(days);
    p.serial_number = Some(SerialNumber::from_slice(&random_bytes::<16>()));
    p.is_ca = ca;
    p.use_authority_key_identifier_extension = true;
    p
}

/// A self-signed root CA certificate (PEM) for `name`.
pub fn new_root(name: &str, key: &KeyPair, days: i64) -> Result<String, CredentialError> {
    let p = params(&Identity::Root(name.into()), days, IsCa::Ca(BasicConstraints::Unconstrained));
    p.self_signed(&key.0).map(|c| c.pem()).map_err(|e| CredentialError::Malformed(format!("root certificate: {e}")))
}

/// What kind of certificate to issue.
pub enum Profile<'a> {
    /// An authority: a CA for principals (SA) or nodes (MA).
    Authority,
    /// A node: a CA that may certify services on itself only.
    Node,
    /// A client certificate (principal, service).
    Client,
    /// A TLS server certificate for these DNS names or IP addresses.
    Server(&'a [String]),
}

/// A new key pair for authority `name` of `kind` and its certificate, signed by the root
/// (`root_pem`, `root_key`) and valid for `days`.
pub fn new_authority(
    root_pem: &str,
    root_key: &KeyPair,
    kind: AuthorityKind,
    name: &str,
    days: i64,
) -> Result<(String, KeyPair), CredentialError> {
    let k = KeyPair::generate();
    let c = issue(
        root_pem,
        root_key,
        &Identity::Authority(kind, name.into()),
        &k.public_key_pem(),
        Profile::Authority,
        days,
    )?;
    Ok((c, k))
}

/// Issues a certificate for `subject` (public key in PEM) signed by the issuer.
pub fn issue(
    issuer_pem: &str,
    issuer_key: &KeyPair,
    subject: &Identity,
    subject_public_key_pem: &str,
    profile: Profile<'_>,
    days: i64,
) -> Result<String, CredentialError> {
    let ca = match profile {
        Profile::Authority => IsCa::Ca(BasicConstraints::Constrained(1)),
        Profile::Node => IsCa::Ca(BasicConstraints::Constrained(0)),
        Profile::Client | Profile::Server(_) => IsCa::ExplicitNoCa,
    };
    let mut p = params(subject, days, ca);
    match profile {
        Profile::Client => p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
        Profile::Server(names) => {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            for n in names {
                p.subject_alt_names.push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        n.clone().try_into().map_err(|_| CredentialError::Malformed(format!("server name {n:?}")))?,
                    ),
                });
            }
        }
        _ => {}
    }
    let spki = rcgen::SubjectPublicKeyInfo::from_pem(subject_public_key_pem)
        .map_err(|e| CredentialError::Malformed(format!("public key: {e}")))?;
    let issuer_params = CertificateParams::from_ca_cert_pem(issuer_pem)
        .map_err(|e| CredentialError::Malformed(format!("issuer certificate: {e}")))?;
    let issuer =
        issuer_params.self_signed(&issuer_key.0).map_err(|e| CredentialError::Malformed(format!("issuer: {e}")))?;
    p.signed_by(&spki, &issuer, &issuer_key.0)
        .map(|c| c.pem())
        .map_err(|e| CredentialError::Malformed(format!("issuing {subject}: {e}")))
}

/// Verifies `chain` (leaf first, then intermediates, PEM) against `roots` at time `at`
/// and returns the leaf's identity.
pub fn verify_chain(chain: &[Cert], roots: &[Cert], at: i64) -> Result<Identity, CredentialError> {
    let leaf = chain.first().ok_or_else(|| CredentialError::Malformed("empty certificate chain".into()))?;
    let leaf_der = CertificateDer::from(leaf.der.clone());
    let ee = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| CredentialError::Malformed(format!("certificate: {e:?}")))?;
    let root_ders: Vec<CertificateDer<'static>> = roots.iter().map(|r| CertificateDer::from(r.der.clone())).collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .map(|d| webpki::anchor_from_trusted_cert(d).map(|a| a.to_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| CredentialError::Malformed(format!("root certificate: {e:?}")))?;
    let intermediates: Vec<CertificateDer<'static>> =
        chain[1..].iter().map(|c| CertificateDer::from(c.der.clone())).collect();
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(at.max(0) as u64));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        time,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
            CredentialError::Expired(format!("certificate of {} is outside its validity period", leaf.identity))
        }
        e => CredentialError::Untrusted(format!(
            "certificate of {} does not lead to a trusted root: {e:?}",
            leaf.identity
        )),
    })?;
    // Who may issue what. The issuer named in each certificate was just verified by its
    // signature, so the names below are trustworthy. Only principals and services are end
    // entities: authority and node certificates are CAs, which the check above refuses as
    // a leaf (see [`verify_authority`] for those).
    let ok = match (&leaf.identity, &leaf.issuer) {
        (Identity::Principal(_), Identity::Authority(AuthorityKind::Sa, _)) => true,
        (Identity::Service { node, .. }, Identity::Node(n)) => node == n && service_path(chain, roots, at)?,
        _ => false,
    };
    if !ok {
        return Err(CredentialError::Untrusted(format!("{} may not certify {}", leaf.issuer, leaf.identity)));
    }
    Ok(leaf.identity.clone())
}

/// Whether `child` carries a signature by `parent`'s key.
fn signed_by(child: &Cert, parent: &Cert) -> Result<bool, CredentialError> {
    let (_, c) = x509_parser::parse_x509_certificate(&child.der)
        .map_err(|e| CredentialError::Malformed(format!("certificate: not X.509 ({e})")))?;
    let (_, p) = x509_parser::parse_x509_certificate(&parent.der)
        .map_err(|e| CredentialError::Malformed(format!("certificate: not X.509 ({e})")))?;
    Ok(c.verify_signature(Some(p.public_key())).is_ok())
}

/// A service certificate's own path, checked link by link: the leaf signed by the node
/// certificate that follows it, that one signed by the management authority certificate
/// after it, and that one by a root. (The path-building check before it proves that *some*
/// path leads to a root; this proves the node certificate the caller sent is the one that
/// issued the leaf, and that a management authority issued it.)
fn service_path(chain: &[Cert], roots: &[Cert], at: i64) -> Result<bool, CredentialError> {
    let [leaf, node, ma, ..] = chain else { return Ok(false) };
    let node_named = matches!((&leaf.issuer, &node.identity), (Identity::Node(a), Identity::Node(b)) if a == b);
    let ma_named = matches!(ma.identity, Identity::Authority(AuthorityKind::Ma, _)) && node.issuer == ma.identity;
    if !node_named || !ma_named || !signed_by(leaf, node)? || !signed_by(node, ma)? {
        return Ok(false);
    }
    Ok(roots.iter().any(|r| verify_authority(ma, r, at).is_ok()))
}

/// Verifies that authority certificate `authority` was issued by `root` (its signature,
/// and both valid at `at`) and returns the authority's identity. For a certificate that
/// is itself a CA (an SA's, whose key signs tickets), which [`verify_chain`] would refuse
/// as an end entity.
pub fn verify_authority(authority: &Cert, root: &Cert, at: i64) -> Result<Identity, CredentialError> {
    if !matches!(authority.identity, Identity::Authority(..)) || !matches!(root.identity, Identity::Root(_)) {
        return Err(CredentialError::Untrusted(format!(
            "{} is not an authority under root {}",
            authority.identity, root.identity
        )));
    }
    let (_, a) = x509_parser::parse_x509_certificate(&authority.der)
        .map_err(|e| CredentialError::Malformed(format!("certificate: not X.509 ({e})")))?;
    let (_, r) = x509_parser::parse_x509_certificate(&root.der)
        .map_err(|e| CredentialError::Malformed(format!("root certificate: not X.509 ({e})")))?;
    a.verify_signature(Some(r.public_key())).map_err(|_| {
        CredentialError::BadSignature(format!(
            "the certificate of {} was not issued by root {}",
            authority.identity, root.identity
        ))
    })?;
    for c in [&a, &r] {
        let (from, to) = (c.validity().not_before.timestamp(), c.validity().not_after.timestamp());
        if at < from || at > to {
            return Err(CredentialError::Expired(format!(
                "certificate of {} is outside its validity period",
                cn_of(c.subject())?
            )));
        }
    }
    Ok(authority.identity.clone())
}

/// Verifies a PEM bundle (leaf first) against root PEMs, now.
pub fn verify_pem(chain_pem: &str, roots: &[Cert]) -> Result<Identity, CredentialError> {
    verify_chain(&Cert::bundle_from_pem(chain_pem)?, roots, now())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(crate) struct Pki {
        pub root: Cert,
        pub sa: (String, KeyPair),
        pub ma: (String, KeyPair),
    }

    pub(crate) fn pki() -> Pki {
        let rk = KeyPair::generate();
        let root = new_root("plc", &rk, 3650).unwrap();
        let sa = new_authority(&root, &rk, AuthorityKind::Sa, "plc", 365).unwrap();
        let ma = new_authority(&root, &rk, AuthorityKind::Ma, "plc", 365).unwrap();
        Pki { root: Cert::from_pem(&root).unwrap(), sa, ma }
    }

    #[test]
    fn service_chain_verifies_back_to_the_root() {
        let p = pki();
        let nk = KeyPair::generate();
        let node = issue(&p.ma.0, &p.ma.1, &Identity::Node(7), &nk.public_key_pem(), Profile::Node, 30).unwrap();
        let sk = KeyPair::generate();
        let svc_id = Identity::Service { slice: vm_types::SliceName::parse("plc.scs").unwrap(), node: 7 };
        let svc = issue(&node, &nk, &svc_id, &sk.public_key_pem(), Profile::Client, 1).unwrap();
        let bundle = format!("{svc}{node}{}", p.ma.0);
        assert_eq!(verify_pem(&bundle, std::slice::from_ref(&p.root)).unwrap(), svc_id);

        // A node may not vouch for a service on another node.
        let other = Identity::Service { slice: vm_types::SliceName::parse("plc.scs").unwrap(), node: 8 };
        let forged = issue(&node, &nk, &other, &sk.public_key_pem(), Profile::Client, 1).unwrap();
        let e = verify_pem(&format!("{forged}{node}{}", p.ma.0), std::slice::from_ref(&p.root)).unwrap_err();
        assert!(matches!(e, CredentialError::Untrusted(_)), "{e}");

        // A principal certificate from the MA is refused; one from the SA is fine.
        let uk = KeyPair::generate();
        let u = Identity::Principal("alice".into());
        let bad = issue(&p.ma.0, &p.ma.1, &u, &uk.public_key_pem(), Profile::Client, 1).unwrap();
        assert!(verify_pem(&format!("{bad}{}", p.ma.0), std::slice::from_ref(&p.root)).is_err());
        let good = issue(&p.sa.0, &p.sa.1, &u, &uk.public_key_pem(), Profile::Client, 1).unwrap();
        assert_eq!(verify_pem(&format!("{good}{}", p.sa.0), std::slice::from_ref(&p.root)).unwrap(), u);
    }

    #[test]
    fn an_authority_certificate_is_checked_against_its_root() {
        let p = pki();
        let sa = Cert::from_pem(&p.sa.0).unwrap();
        assert_eq!(verify_authority(&sa, &p.root, now()).unwrap(), sa.identity);
        let other = pki();
        let e = verify_authority(&sa, &other.root, now()).unwrap_err();
        assert!(matches!(e, CredentialError::BadSignature(_)), "{e}");
        assert!(matches!(verify_authority(&sa, &p.root, now() + 400 * 86400), Err(CredentialError::Expired(_))));
        assert!(verify_authority(&p.root, &p.root, now()).is_err(), "a root is not an authority");
    }

    #[test]
    fn foreign_roots_and_expiry_are_refused() {
        let p = pki();
        let other = pki();
        let uk = KeyPair::generate();
        let u = Identity::Principal("mallory".into());
        let c = issue(&other.sa.0, &other.sa.1, &u, &uk.public_key_pem(), Profile::Client, 1).unwrap();
        let e = verify_pem(&format!("{c}{}", other.sa.0), std::slice::from_ref(&p.root)).unwrap_err();
        assert!(matches!(e, CredentialError::Untrusted(_)), "{e}");
        let c = issue(&p.sa.0, &p.sa.1, &u, &uk.public_key_pem(), Profile::Client, 1).unwrap();
        let chain = Cert::bundle_from_pem(&format!("{c}{}", p.sa.0)).unwrap();
        let e = verify_chain(&chain, std::slice::from_ref(&p.root), now() + 3 * 86400).unwrap_err();
        assert!(matches!(e, CredentialError::Expired(_)), "{e}");
    }
}
