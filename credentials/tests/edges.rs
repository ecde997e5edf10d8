//! Boundaries of the credentials: key lengths, clock skew, malformed names and sealed
//! keys, what issued certificates carry, and that secrets never show in debug output.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use credentials::boot_hmac::{BootAuth, NodeKey, MAX_SKEW};
use credentials::identity::AuthorityKind;
use credentials::pki::{issue, new_authority, new_root, verify_chain, Cert, KeyPair, Profile};
use credentials::{now, CredentialError, Identity};
use serde_json::json;

#[test]
fn node_keys_are_at_least_128_bits_and_never_printed() {
    assert!(NodeKey::from_hex(&"ab".repeat(16)).is_ok(), "exactly 128 bits");
    let e = NodeKey::from_hex(&"ab".repeat(15)).unwrap_err();
    assert!(e.to_string().contains("shorter than 128 bits"), "{e}");
    let k = NodeKey::generate();
    let shown = format!("{k:?}");
    assert!(shown.starts_with("NodeKey(") && shown.ends_with("…)") && shown.chars().count() == 18, "{shown}");
    assert!(!shown.contains(&k.to_hex()[..8]), "the key's own digits never show: {shown}");
}

#[test]
fn boot_calls_hold_to_the_skew_window_and_nonce_form() {
    let k = NodeKey::generate();
    let params = json!([{"state": "boot"}]);
    let a = BootAuth::sign(&k, 7, "BootUpdateState", &params);
    let t = a.timestamp;
    a.verify(&k, "BootUpdateState", &params, t + MAX_SKEW).unwrap();
    a.verify(&k, "BootUpdateState", &params, t - MAX_SKEW).unwrap();
    assert!(matches!(a.verify(&k, "BootUpdateState", &params, t + MAX_SKEW + 1), Err(CredentialError::Expired(_))));
    // A nonce of the right length that is not hex, and one of the wrong length.
    let mut bad = a.clone();
    bad.nonce = "z".repeat(32);
    assert!(matches!(bad.verify(&k, "BootUpdateState", &params, t), Err(CredentialError::Malformed(_))));
    let mut short = a.clone();
    short.nonce = "ab".repeat(8);
    assert!(matches!(short.verify(&k, "BootUpdateState", &params, t), Err(CredentialError::Malformed(_))));
    let mut other = a;
    other.method = "session".into();
    assert!(matches!(other.verify(&k, "BootUpdateState", &params, t), Err(CredentialError::Malformed(_))));
}

#[test]
fn root_names_must_be_simple() {
    assert_eq!(Identity::parse("plab-root:plc").unwrap(), Identity::Root("plc".into()));
    assert!(Identity::parse("plab-root:p l c").is_err());
    assert!(Identity::parse("plab-root:").is_err());
}

#[test]
fn a_certificate_from_der_round_trips_through_pem() {
    let rk = KeyPair::generate();
    let root = Cert::from_pem(&new_root("plc", &rk, 10).unwrap()).unwrap();
    let again = Cert::from_der_bytes(&root.der).unwrap();
    assert_eq!(again.der, root.der);
    assert_eq!(Cert::from_pem(&again.pem).unwrap().der, root.der, "the PEM made from DER parses back");
}

#[test]
fn issued_certificates_carry_their_purpose() {
    use x509_parser::prelude::*;
    let rk = KeyPair::generate();
    let root = new_root("plc", &rk, 10).unwrap();
    let (ma, mak) = new_authority(&root, &rk, AuthorityKind::Ma, "plc", 10).unwrap();
    let nk = KeyPair::generate();
    let node = issue(&ma, &mak, &Identity::Node(3), &nk.public_key_pem(), Profile::Node, 10).unwrap();
    let sk = KeyPair::generate();
    let id = Identity::Service { slice: vm_types::SliceName::parse("plc.scs").unwrap(), node: 3 };
    let purpose = |pem: &str| {
        let (_, p) = parse_x509_pem(pem.as_bytes()).unwrap();
        let c = p.parse_x509().unwrap();
        let e = c.extended_key_usage().unwrap().map(|e| (e.value.client_auth, e.value.server_auth));
        let ips: Vec<std::net::IpAddr> = c
            .subject_alternative_name()
            .unwrap()
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::IPAddress(b) if b.len() == 4 => {
                            Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        (e, ips)
    };
    let client = issue(&node, &nk, &id, &sk.public_key_pem(), Profile::Client, 1).unwrap();
    assert_eq!(purpose(&client), (Some((true, false)), vec![]));
    let names = ["192.0.2.7".to_string()];
    let server = issue(&node, &nk, &id, &sk.public_key_pem(), Profile::Server(&names), 1).unwrap();
    assert_eq!(purpose(&server), (Some((false, true)), vec!["192.0.2.7".parse().unwrap()]));
    // Node certificates are CAs: never accepted as a client.
    let r = Cert::from_pem(&root).unwrap();
    let chain = vec![Cert::from_pem(&node).unwrap(), Cert::from_pem(&ma).unwrap()];
    assert!(verify_chain(&chain, std::slice::from_ref(&r), now()).is_err());
}

#[test]
fn sealed_keys_shorter_than_the_envelope_are_refused_before_any_decryption() {
    use base64::Engine;
    let k = KeyPair::generate();
    let b64 = base64::engine::general_purpose::STANDARD;
    let e = credentials::seal::open(&k.to_pem(), &b64.encode([4u8; 92])).unwrap_err();
    assert!(e.to_string().contains("too short"), "{e}");
    // One byte more is long enough to be tried (and fails as the forgery it is).
    let e = credentials::seal::open(&k.to_pem(), &b64.encode([4u8; 93])).unwrap_err();
    assert!(!e.to_string().contains("too short"), "{e}");
}

/// A slice authority may issue CA certificates (its path length allows one), so it could
/// name one "node 7" and certify services on node 7 through it. Only a management
/// authority makes nodes: a service chain is checked link by link, and a decoy node
/// certificate put first in the chain does not stand in for the one that issued the leaf.
#[test]
fn only_a_management_authority_certifies_the_node_behind_a_service() {
    let rk = KeyPair::generate();
    let root_pem = new_root("plc", &rk, 10).unwrap();
    let root = Cert::from_pem(&root_pem).unwrap();
    let (ma_pem, ma_key) = new_authority(&root_pem, &rk, AuthorityKind::Ma, "plc", 10).unwrap();
    let (sa_pem, sa_key) = new_authority(&root_pem, &rk, AuthorityKind::Sa, "plc", 10).unwrap();
    let slice = vm_types::SliceName::parse("plc.scs").unwrap();
    let node_cert = |issuer: &str, issuer_key: &KeyPair, node: i64| {
        let k = KeyPair::generate();
        (issue(issuer, issuer_key, &Identity::Node(node), &k.public_key_pem(), Profile::Node, 10).unwrap(), k)
    };
    let service = |node_pem: &str, node_key: &KeyPair, node: i64| {
        let k = KeyPair::generate();
        let id = Identity::Service { slice: slice.clone(), node };
        issue(node_pem, node_key, &id, &k.public_key_pem(), Profile::Client, 1).unwrap()
    };
    let bundle = |pems: &[&str]| -> Vec<Cert> { pems.iter().map(|p| Cert::from_pem(p).unwrap()).collect() };

    // The real thing: a service on node 7, its node certified by the MA.
    let (n7, n7k) = node_cert(&ma_pem, &ma_key, 7);
    let good = service(&n7, &n7k, 7);
    let id = verify_chain(&bundle(&[&good, &n7, &ma_pem]), std::slice::from_ref(&root), now()).unwrap();
    assert_eq!(id, Identity::Service { slice: slice.clone(), node: 7 });

    // The SA makes its own "node 7" and a service under it.
    let (fake7, fake7k) = node_cert(&sa_pem, &sa_key, 7);
    let forged = service(&fake7, &fake7k, 7);
    let (n3, _) = node_cert(&ma_pem, &ma_key, 3);
    for chain in [
        vec![forged.as_str(), fake7.as_str(), sa_pem.as_str()],
        // A real MA-issued node certificate first, as a decoy; the path runs beside it.
        vec![forged.as_str(), n3.as_str(), fake7.as_str(), sa_pem.as_str()],
        vec![forged.as_str(), n7.as_str(), fake7.as_str(), sa_pem.as_str(), ma_pem.as_str()],
    ] {
        let e = verify_chain(&bundle(&chain), std::slice::from_ref(&root), now()).unwrap_err();
        assert!(matches!(e, CredentialError::Untrusted(_)), "{} certificates: {e}", chain.len());
        assert!(e.to_string().contains("may not certify"), "{e}");
    }
    // The node's old certificate (before a new key) sent after its current one: the path
    // through the old one is valid, but the certificate that follows the leaf did not sign
    // it, and an authority that compares that one with the node's current certificate
    // must not be fooled.
    let (n7_new, _) = node_cert(&ma_pem, &ma_key, 7);
    let e = verify_chain(&bundle(&[&good, &n7_new, &ma_pem, &n7]), std::slice::from_ref(&root), now()).unwrap_err();
    assert!(matches!(e, CredentialError::Untrusted(_)), "{e}");
    // The right certificates in the wrong order are refused too (the leaf's issuer follows it).
    let e = verify_chain(&bundle(&[&good, &ma_pem, &n7]), std::slice::from_ref(&root), now()).unwrap_err();
    assert!(matches!(e, CredentialError::Untrusted(_)), "{e}");
}

/// An authority certificate is valid from the later of its and its root's start to the
/// earlier of their ends, both ends included.
#[test]
fn an_authority_certificate_is_valid_exactly_within_its_and_its_roots_periods() {
    use credentials::pki::verify_authority;
    let rk = KeyPair::generate();
    let root_pem = new_root("plc", &rk, 10).unwrap();
    let (sa_pem, _) = new_authority(&root_pem, &rk, AuthorityKind::Sa, "plc", 5).unwrap();
    let (root, sa) = (Cert::from_pem(&root_pem).unwrap(), Cert::from_pem(&sa_pem).unwrap());
    let period = |c: &Cert| {
        let (_, x) = x509_parser::parse_x509_certificate(&c.der).unwrap();
        (x.validity().not_before.timestamp(), x.validity().not_after.timestamp())
    };
    let ((fa, ta), (fr, tr)) = (period(&sa), period(&root));
    let (from, to) = (fa.max(fr), ta.min(tr));
    assert!(from < to);
    for ok in [from, from + 1, to - 1, to] {
        assert!(verify_authority(&sa, &root, ok).is_ok(), "at {ok} (valid {from}..={to})");
    }
    for bad in [from - 1, to + 1] {
        assert!(matches!(verify_authority(&sa, &root, bad), Err(CredentialError::Expired(_))), "at {bad}");
    }
}
