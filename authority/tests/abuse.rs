//! Bad input and abuse: wrong source address, replayed and forged HMACs, foreign roots,
//! expired sessions, names outside the caller's authority or full of metacharacters,
//! oversized requests. Each is refused with a clear error and changes nothing. Also the
//! MA contacting a node when it is set to debug.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

mod common;
use common::{code, Backend, Harness};
use credentials::boot_hmac::BootAuth;
use plab_authority::bootmgr::{BootManager, Outcome, PlNode};
use serde_json::{json, Value};

fn setup(h: &Harness) -> (plab_authority::AuthorityClient, i64, String) {
    h.one_node("127.0.0.2")
}

#[test]
fn boot_calls_need_the_right_key_address_and_a_fresh_nonce() {
    let h = Harness::start(Backend::Sqlite);
    let (_op, node, plnode) = setup(&h);
    let dir = tempfile::tempdir().unwrap();
    let pl = PlNode::parse(&plnode).unwrap();

    // From another address: refused, naming both addresses.
    let mut elsewhere = pl.clone();
    elsewhere.ip = "127.0.0.3".parse().unwrap();
    let e = BootManager::new(elsewhere, &h.url, &h.root, dir.path()).unwrap().boot(None).unwrap_err();
    assert_eq!(code(&e), 1, "{e}");
    assert!(e.to_string().contains("127.0.0.2") && e.to_string().contains("127.0.0.3"), "{e}");

    // With a wrong key: refused.
    let mut forged = pl.clone();
    forged.node_key = credentials::boot_hmac::NodeKey::generate();
    let e = BootManager::new(forged, &h.url, &h.root, dir.path()).unwrap().boot(None).unwrap_err();
    assert_eq!(code(&e), 2, "{e}");

    // Replay: the same signed request twice.
    let mut c = plab_authority::AuthorityClient::new(&h.url, &h.root, None, Some(pl.ip)).unwrap();
    let params = json!({});
    let auth =
        serde_json::to_value(BootAuth::sign(&pl.node_key, node, "BootGetState", &Value::Array(vec![params.clone()])))
            .unwrap();
    c.call_with_auth("BootGetState", auth.clone(), vec![params.clone()]).unwrap();
    let e = c.call_with_auth("BootGetState", auth, vec![params.clone()]).unwrap_err();
    assert!(e.to_string().contains("replayed"), "{e}");
    // The MAC covers the params: changing them breaks it.
    let auth = serde_json::to_value(BootAuth::sign(&pl.node_key, node, "BootUpdateState", &json!([{"state": "boot"}])))
        .unwrap();
    let e = c.call_with_auth("BootUpdateState", auth, vec![json!({"state": "failboot"})]).unwrap_err();
    assert_eq!(code(&e), 2, "{e}");

    // Certificates are only issued in boot state, and a node cannot put itself in debug.
    let mut bm = BootManager::new(pl, &h.url, &h.root, dir.path()).unwrap();
    let e = bm
        .call("BootGetCertificate", json!({"public_key": credentials::pki::KeyPair::generate().public_key_pem()}))
        .unwrap_err();
    assert!(e.to_string().contains("boot state"), "{e}");
    let e = bm.call("BootUpdateState", json!({"state": "debug"})).unwrap_err();
    assert_eq!(code(&e), 4, "{e}");
}

#[test]
fn foreign_roots_expired_sessions_and_replaced_certificates() {
    let h = Harness::start(Backend::Sqlite);
    let other = Harness::start(Backend::Sqlite);
    // A certificate from another authority's root.
    let e = h.client(None).call("AuthenticateCertificate", vec![json!(other.op.0)]).unwrap_err();
    assert_eq!(code(&e), 2, "{e}");
    assert!(e.to_string().contains("trusted root"), "{e}");
    // Presented in TLS, it does not even get through the handshake.
    let mut c = h.client(Some((&other.op.0, &other.op.1)));
    assert!(c.call("GetOrgs", vec![]).is_err());

    // An expired session.
    let id = credentials::Identity::Principal("admin".into());
    h.rt.block_on(h.authority.sessions.create(&h.authority.db, "old-session", &id, credentials::now() - 1)).unwrap();
    let mut c = h.client(None);
    c.auth = json!({"AuthMethod": "session", "session": "old-session"});
    let e = c.call("GetOrgs", vec![]).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    c.auth = json!({"AuthMethod": "session", "session": "never-issued"});
    assert_eq!(code(&c.call("GetOrgs", vec![]).unwrap_err()), 2);

    // A replaced certificate is dead: in TLS, for new sessions, and its old sessions.
    let mut op = h.operator();
    op.call("AddOrg", vec![json!({"name": "princeton", "authority": "plc.princeton"})]).unwrap();
    let (old_cert, old_key) = h.principal(&mut op, "carol", "princeton", "user");
    let mut carol = h.client(Some((&old_cert, &old_key)));
    carol.call("GetOrgs", vec![]).unwrap();
    let mut carol_s = h.client(None);
    carol_s.start_session(&old_cert, &old_key).unwrap();
    carol_s.call("GetOrgs", vec![]).unwrap();
    let new_key = credentials::pki::KeyPair::generate();
    let new_cert = carol.call("RekeyPrincipal", vec![json!(new_key.public_key_pem())]).unwrap()["certificate"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = h.client(Some((&old_cert, &old_key))).call("GetOrgs", vec![]).unwrap_err();
    assert!(code(&e) == 2 && e.to_string().contains("replaced"), "{e}");
    let e = h.client(None).call("AuthenticateCertificate", vec![json!(old_cert)]).unwrap_err();
    assert!(code(&e) == 2 && e.to_string().contains("not the current certificate"), "{e}");
    let e = carol_s.call("GetOrgs", vec![]).unwrap_err();
    assert_eq!(code(&e), 2, "the old session died with its certificate: {e}");
    h.client(Some((&new_cert, &new_key.to_pem()))).call("GetOrgs", vec![]).unwrap();

    // A session key is sealed to the certificate's key: a thief of the certificate
    // (public) cannot open it.
    let r = h.client(None).call("AuthenticateCertificate", vec![json!(h.op.0)]).unwrap();
    let thief = credentials::pki::KeyPair::generate();
    assert!(credentials::seal::open(&thief.to_pem(), r["session"].as_str().unwrap()).is_err());
    assert!(credentials::seal::open(&h.op.1, r["session"].as_str().unwrap()).is_ok());
}

#[test]
fn names_outside_authority_and_metacharacters_change_nothing() {
    let h = Harness::start(Backend::Sqlite);
    let (mut op, node, _) = setup(&h);
    op.call("AddOrg", vec![json!({"name": "mit", "authority": "plc.mit"})]).unwrap();
    let admin = h.principal(&mut op, "padmin", "princeton", "admin");
    let mut pi = h.client(Some((&admin.0, &admin.1)));

    let e = pi.call("CreateSlice", vec![json!("plc.mit.sneaky")]).unwrap_err();
    assert_eq!(code(&e), 1, "another org's authority: {e}");
    let e = pi.call("CreateSlice", vec![json!("plc.princeton")]).unwrap_err();
    assert_eq!(code(&e), -32602, "the authority itself is no slice: {e}");
    let e = op.call("AddOrg", vec![json!({"name": "evil", "authority": "com.evil"})]).unwrap_err();
    assert!(e.to_string().contains("outside this authority"), "{e}");
    for bad in
        ["plc.princeton.x'; DROP TABLE slices;--", "plc.princeton.$(reboot)", "plc.princeton.a b", "PLC.princeton.x"]
    {
        let e = pi.call("CreateSlice", vec![json!(bad)]).unwrap_err();
        assert_eq!(code(&e), -32602, "{bad}: {e}");
        assert!(e.to_string().starts_with("slice_name:"), "{e}");
    }
    let k = credentials::pki::KeyPair::generate();
    for bad in ["bob'; DROP TABLE principals;--", "`id`", "a/b", ""] {
        let e = h
            .client(None)
            .call(
                "RegisterPrincipal",
                vec![json!({"name": bad, "email": "b@x.test", "org": "princeton", "public_key": k.public_key_pem()})],
            )
            .unwrap_err();
        assert!(e.to_string().starts_with("principal.name:"), "{bad}: {e}");
    }
    let e = h
        .client(None)
        .call(
            "RegisterPrincipal",
            vec![json!({"name": "eve", "email": "e@x.test", "org": "princeton", "public_key": "not a key"})],
        )
        .unwrap_err();
    assert!(e.to_string().starts_with("principal.public_key:"), "{e}");
    for bad in ["n1;rm -rf /", "$(reboot).test", "-x.test"] {
        let e = pi.call("AddNode", vec![json!({"site": "pcs", "hostname": bad, "ip": "127.0.0.4"})]).unwrap_err();
        assert!(e.to_string().starts_with("node.hostname:"), "{bad}: {e}");
    }
    let e = pi.call("UpdateNode", vec![json!(node), json!({"site": "elsewhere"})]).unwrap_err();
    assert!(e.to_string().contains("never changes site"), "{e}");

    // A list with one bad entry changes nothing.
    pi.call("CreateSlice", vec![json!("plc.princeton.ok")]).unwrap();
    let e = pi.call("AddSliceNode", vec![json!("plc.princeton.ok"), json!([node, 999999])]).unwrap_err();
    assert_eq!(code(&e), 3, "{e}");
    let slices = pi.call("GetSlices", vec![]).unwrap();
    assert_eq!(slices[0]["nodes"], json!([]), "the good node was not added either: {slices}");
    let e = pi.call("SetSliceAttr", vec![json!("plc.princeton.ok"), json!("mem_limit"), json!("lots")]).unwrap_err();
    assert!(e.to_string().starts_with("value: mem_limit:"), "{e}");

    // Everything is still there.
    assert_eq!(op.call("GetSlices", vec![]).unwrap().as_array().unwrap().len(), 1);
    assert!(op.call("GetPrincipals", vec![]).unwrap().as_array().unwrap().len() >= 2);
}

#[test]
fn oversized_and_malformed_requests() {
    let h = Harness::start(Backend::Sqlite);
    let mut op = h.operator();
    let e = op.call("AddOrg", vec![json!({"name": "x".repeat(2 << 20)})]).unwrap_err();
    assert!(e.to_string().contains("1 MiB"), "{e}");
    let e = op.call("NoSuchMethod", vec![]).unwrap_err();
    assert_eq!(code(&e), -32601);
    let e = op.call("GetNodes", vec![json!("not a list")]).unwrap_err();
    assert!(e.to_string().starts_with("node_ids:"), "{e}");
    let e = op.call_with_auth("GetOrgs", json!("password"), vec![]).unwrap_err();
    assert!(e.to_string().starts_with("auth:"), "{e}");
    // The server still answers.
    assert!(op.call("GetOrgs", vec![]).is_ok());
}

#[test]
fn setting_debug_contacts_the_node_which_boots_into_debug() {
    use plab_authority::bootmgr::{serve_triggers, TriggerServer};
    use plab_authority::types::BootState;
    let h = Harness::start(Backend::Sqlite);
    let (mut op, node, plnode) = h.one_node("127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let pl = PlNode::parse(&plnode).unwrap();
    // The node's trigger listener, as `plab-boot serve` runs it.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let server = std::sync::Arc::new(TriggerServer::new(node, pl.node_key.clone(), tx));
    let listener = h.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    h.rt.spawn(serve_triggers(server.clone(), listener));
    let mut bm = BootManager::new(pl.clone(), &h.url, &h.root, dir.path()).unwrap();
    assert!(matches!(bm.boot(Some(port)).unwrap(), Outcome::Booted { .. }));

    let r = op.call("UpdateNode", vec![json!(node), json!({"state": "debug"})]).unwrap();
    assert_eq!(r["contacted"], true, "{r}");
    let state =
        h.rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await }).unwrap();
    assert_eq!(state, Some(BootState::Debug));
    assert_eq!(bm.boot(Some(port)).unwrap(), Outcome::Debug);
    assert_eq!(std::fs::read_to_string(dir.path().join("boot-state")).unwrap(), "debug\n");

    // A trigger seen on the wire cannot be replayed, and one signed with another key or
    // for another node is refused.
    let params = json!([{"state": "debug"}]);
    let auth = serde_json::to_value(BootAuth::sign(&pl.node_key, node, "BootTrigger", &params)).unwrap();
    let now = credentials::now();
    server.check(&auth, &params, now).unwrap();
    let e = server.check(&auth, &params, now).unwrap_err();
    assert!(e.message.contains("replayed"), "{e}");
    let forged = serde_json::to_value(BootAuth::sign(
        &credentials::boot_hmac::NodeKey::generate(),
        node,
        "BootTrigger",
        &params,
    ))
    .unwrap();
    assert!(server.check(&forged, &params, now).is_err());
    let other = serde_json::to_value(BootAuth::sign(&pl.node_key, node + 1, "BootTrigger", &params)).unwrap();
    assert!(server.check(&other, &params, now).unwrap_err().message.contains("not this one"));
    let stale = serde_json::to_value(BootAuth::sign(&pl.node_key, node, "BootTrigger", &params)).unwrap();
    assert!(server.check(&stale, &params, now + 3600).is_err(), "outside the skew window");

    // A peer that connects and trickles bytes holds nothing: the listener still answers.
    let slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::Write;
    (&slow).write_all(b"{").unwrap();
    let r = op.call("UpdateNode", vec![json!(node), json!({"state": "debug"})]).unwrap();
    assert_eq!(r["contacted"], true, "a slow peer does not block the trigger: {r}");
    drop(slow);
}
