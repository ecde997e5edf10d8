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
    // Issue 9.6: slice names do not nest, with each other, with an authority below, or
    // with the nodes' service.
    pi.call("CreateSlice", vec![json!("plc.princeton.a")]).unwrap();
    let e = pi.call("CreateSlice", vec![json!("plc.princeton.a.b")]).unwrap_err();
    assert!(code(&e) == 4 && e.to_string().contains("do not nest"), "{e}");
    op.call("AddOrg", vec![json!({"name": "lab", "authority": "plc.princeton.lab.x"})]).unwrap();
    let e = pi.call("CreateSlice", vec![json!("plc.princeton.lab")]).unwrap_err();
    assert!(code(&e) == -32602 && e.to_string().contains("above the authority plc.princeton.lab.x"), "{e}");
    let e = op.call("CreateSlice", vec![json!("plc.scs")]).unwrap_err();
    assert!(code(&e) == -32602 && e.to_string().contains("service"), "{e}");
    op.call("DeleteSlice", vec![json!("plc.princeton.a")]).unwrap();
    pi.call("CreateSlice", vec![json!("plc.princeton.a.b")]).unwrap();
    op.call("DeleteSlice", vec![json!("plc.princeton.a.b")]).unwrap();
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

/// Issue 9.11: a node key stolen from a node is worth nothing once the node boots with a
/// new key, or is deleted: in TLS, for new sessions, and for the sessions it made.
#[test]
fn a_stolen_node_key_dies_when_the_node_rekeys_or_is_deleted() {
    let h = Harness::start(Backend::Sqlite);
    let (mut op, node, plnode) = h.one_node("127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    let mut bm = BootManager::new(PlNode::parse(&plnode).unwrap(), &h.url, &h.root, dir.path()).unwrap();
    bm.boot(None).unwrap();
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let (stolen_chain, stolen_key) = (read("node-cert.pem"), read("node.key"));
    let (svc, svc_key) = h.service_chain(&stolen_chain, &stolen_key, "plc.scs", node);
    let ask = |c: &mut plab_authority::AuthorityClient| c.call("GetSlicesForNode", vec![json!(node), json!(0)]);
    let mut tls = h.client(Some((&svc, &svc_key)));
    ask(&mut tls).unwrap();
    let mut session = h.client(None);
    session.start_session(&svc, &svc_key).unwrap();
    ask(&mut session).unwrap();

    // The node boots again: a new key and certificate.
    bm.boot(None).unwrap();
    assert_ne!(read("node.key"), stolen_key, "each boot makes a new node key");
    let e = ask(&mut h.client(Some((&svc, &svc_key)))).unwrap_err();
    assert!(code(&e) == 2 && e.to_string().contains("no longer has"), "{e}");
    let e = h.client(None).call("AuthenticateCertificate", vec![json!(svc)]).unwrap_err();
    assert!(code(&e) == 2 && e.to_string().contains("no longer has"), "{e}");
    let e = ask(&mut session).unwrap_err();
    assert_eq!(code(&e), 2, "the session made with the old key died: {e}");
    // The node's new certificate works.
    let (svc2, svc2_key) = h.service_chain(&read("node-cert.pem"), &read("node.key"), "plc.scs", node);
    let mut session2 = h.client(None);
    session2.start_session(&svc2, &svc2_key).unwrap();
    ask(&mut session2).unwrap();
    ask(&mut h.client(Some((&svc2, &svc2_key)))).unwrap();

    // Deleted: nothing made with any of its keys works.
    op.call("DeleteNode", vec![json!(node)]).unwrap();
    let e = ask(&mut session2).unwrap_err();
    assert_eq!(code(&e), 2, "{e}");
    let e = ask(&mut h.client(Some((&svc2, &svc2_key)))).unwrap_err();
    assert!(code(&e) == 2 && e.to_string().contains("deleted"), "{e}");
    let e = h.client(None).call("AuthenticateCertificate", vec![json!(svc2)]).unwrap_err();
    assert!(code(&e) == 2 && e.to_string().contains("deleted"), "{e}");
}

/// Issue 9.10: the authority's keys and its database (every node's boot key) are private
/// from the moment they exist, whatever the umask.
#[test]
fn the_authoritys_secrets_are_private_from_creation() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // The harness ran `init` under the test process's umask (022 for cargo test).
    let h = Harness::start(Backend::Sqlite);
    let state = h.state.path();
    assert_eq!(mode(state), 0o700, "the state directory");
    assert_eq!(mode(&state.join("ca")), 0o700, "the CA directory");
    for key in ["root.key", "sa.key", "ma.key"] {
        assert_eq!(mode(&state.join("ca").join(key)), 0o600, "{key}");
    }
    assert_eq!(mode(&state.join("a.db")), 0o600, "the database");
    for side in ["a.db-wal", "a.db-shm"] {
        let p = state.join(side);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{side} takes the database's mode");
        }
    }
    // The node's key, written by the boot manager.
    let (_op, _node, plnode) = h.one_node("127.0.0.1");
    let dir = tempfile::tempdir().unwrap();
    BootManager::new(PlNode::parse(&plnode).unwrap(), &h.url, &h.root, dir.path()).unwrap().boot(None).unwrap();
    assert_eq!(mode(&dir.path().join("node.key")), 0o600, "node.key");
    assert_eq!(mode(dir.path()), 0o700, "the node's state directory");
}

/// Issue 9.13: a client that opens a connection, finishes TLS and then sends nothing is
/// cut off (hyper sets no timeout of its own without a timer), so silent clients cannot
/// hold every connection slot.
#[test]
fn a_silent_client_is_cut_off() {
    use std::io::Read;
    let h = Harness::start(Backend::Sqlite);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(credentials::pki::Cert::from_pem(&h.root).unwrap().der)).unwrap();
    let cfg =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let addr = h.url.trim_start_matches("https://").to_owned();
    let tcp = std::net::TcpStream::connect(&addr).unwrap();
    // Far longer than the server's header timeout: a read that times out means the
    // server kept the silent connection open.
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(90))).unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), "127.0.0.1".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    let mut buf = [0u8; 64];
    match tls.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("the server sent {n} bytes to a client that asked nothing"),
        Err(e) => assert!(
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "the server kept a silent connection open for 90 s: {e}"
        ),
    }
}

/// Issue 9.13: sessions are purged once expired (anonymous `AuthenticateCertificate`
/// calls make them), and live ones stay.
#[test]
fn expired_sessions_are_purged() {
    let h = Harness::start(Backend::Sqlite);
    let now = credentials::now();
    let id = credentials::Identity::Principal("admin".into());
    for i in 0..50 {
        h.rt.block_on(h.authority.sessions.create(&h.authority.db, &format!("old-{i}"), &id, now - 1)).unwrap();
    }
    let mut live = h.client(None);
    live.start_session(&h.op.0, &h.op.1).unwrap();
    // (The server's own sweep may take some first.)
    h.rt.block_on(h.authority.sessions.purge_expired(&h.authority.db, now)).unwrap();
    let db = &h.authority.db;
    let (left,): (i64,) =
        h.rt.block_on(
            sqlx::query_as(&db.q("SELECT COUNT(*) FROM sessions WHERE expires <= ?")).bind(now).fetch_one(db.pool()),
        )
        .unwrap();
    assert_eq!(left, 0, "expired sessions left");
    assert_eq!(h.rt.block_on(h.authority.sessions.purge_expired(&h.authority.db, now)).unwrap(), 0);
    let mut c = h.client(None);
    c.auth = json!({"AuthMethod": "session", "session": "old-1"});
    let e = c.call("GetOrgs", vec![]).unwrap_err();
    assert!(code(&e) == 2 && !e.to_string().contains("expired"), "gone, not merely expired: {e}");
    live.call("GetOrgs", vec![]).unwrap();
}

#[test]
fn anonymous_registration_is_rate_limited_per_address_and_the_refused_one_changes_nothing() {
    let h = Harness::start(Backend::Sqlite);
    let (mut op, _, _) = setup(&h);
    let register = |name: &str| {
        let k = credentials::pki::KeyPair::generate();
        h.client(None).call(
            "RegisterPrincipal",
            vec![json!({"name": name, "email": "r@x.test", "org": "princeton", "public_key": k.public_key_pem()})],
        )
    };
    for i in 0..plab_authority::api::REGISTRATION_BURST {
        register(&format!("reg{i}")).unwrap();
    }
    let e = register("one-too-many").unwrap_err();
    assert!(e.to_string().contains("too many registrations from 127.0.0.1"), "{e}");
    let names = op.call("GetPrincipals", vec![]).unwrap().to_string();
    assert!(names.contains("reg0") && !names.contains("one-too-many"), "{names}");
}

#[test]
fn registrations_that_wait_too_long_are_swept_and_approved_ones_stay() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        swept_on(backend);
    }
}

fn swept_on(backend: Backend) {
    let h = Harness::start(backend);
    let (mut op, _, _) = setup(&h);
    let k = credentials::pki::KeyPair::generate();
    let register = |name: &str| {
        h.client(None).call(
            "RegisterPrincipal",
            vec![json!({"name": name, "email": "w@x.test", "org": "princeton", "public_key": k.public_key_pem()})],
        )
    };
    register("waits").unwrap();
    register("approved").unwrap();
    op.call("ApprovePrincipal", vec![json!("approved")]).unwrap();
    let a = &h.authority;
    let now = credentials::now();
    assert_eq!(h.rt.block_on(a.sweep_registrations(now)).unwrap(), 0, "not yet");
    let later = now + a.settings.registration_ttl + 1;
    assert_eq!(h.rt.block_on(a.sweep_registrations(later)).unwrap(), 1);
    let names = op.call("GetPrincipals", vec![]).unwrap().to_string();
    assert!(!names.contains("\"waits\"") && names.contains("\"approved\""), "{names}");
    // The name is free again.
    register("waits").unwrap();
}
