//! The whole authority flow, on SQLite and on PostgreSQL: an organisation and its admin,
//! users registering and being approved, a site and a node that boots with plab-boot,
//! a slice created, configured, started, polled by the node's service, and ticketed.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

mod common;
use common::{code, Backend, Harness};
use credentials::pki::Cert;
use credentials::ticket::SignedTicket;
use plab_authority::bootmgr::{BootManager, Outcome, PlNode};
use serde_json::json;

fn flow(backend: Backend) {
    let h = Harness::start(backend);
    let mut op = h.operator();
    op.call("AddOrg", vec![json!({"name": "princeton", "authority": "plc.princeton", "address": "Princeton, NJ"})])
        .unwrap();
    let pi = h.principal(&mut op, "larry", "princeton", "admin");
    let mut pi = h.client(Some((&pi.0, &pi.1)));

    // A user registers with no credentials; the org's admin approves; the user fetches the certificate.
    let uk = credentials::pki::KeyPair::generate();
    let mut anon = h.client(None);
    anon.call("RegisterPrincipal", vec![json!({"name": "alice", "email": "alice@princeton.test", "org": "princeton", "public_key": uk.public_key_pem()})]).unwrap();
    let e = anon.call("GetPrincipalCert", vec![json!("alice")]).unwrap_err();
    assert_eq!(code(&e), 3, "not approved yet: {e}");
    pi.call("ApprovePrincipal", vec![json!("alice")]).unwrap();
    let cert = anon.call("GetPrincipalCert", vec![json!("alice")]).unwrap()["certificate"].as_str().unwrap().to_owned();
    let mut alice = h.client(Some((&cert, &uk.to_pem())));
    let alice_key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINvd4JWqGILryt7c7j2YX8GNJTHiRXgCbcOQj+vURAyx alice@princeton.test";
    alice.call("AddPrincipalKey", vec![json!(alice_key)]).unwrap();
    // Sessions work as well as client certificates.
    let mut alice_s = h.client(None);
    alice_s.start_session(&cert, &uk.to_pem()).unwrap();
    assert_eq!(alice_s.call("GetPrincipals", vec![]).unwrap()[0]["name"], "alice");

    // The admin registers a site and a node, and downloads its plnode.txt.
    pi.call("AddSite", vec![json!({"org": "princeton", "name": "princeton-cs", "subnets": "127.0.0.0/8", "latitude": 40.35, "longitude": -74.65})]).unwrap();
    let node = pi.call("AddNode", vec![json!({"site": "princeton-cs", "hostname": "planetlab1.cs.princeton.test", "ip": "127.0.0.1", "mac": "00:06:5b:ec:33:bb"})]).unwrap()["node_id"].as_i64().unwrap();
    let plnode = pi.call("GetNodeConfig", vec![json!(node)]).unwrap()["plnode"].as_str().unwrap().to_owned();
    assert!(plnode.contains(&format!("NODE_ID = \"{node}\"")));

    // The node boots: install, then boot with an MA-signed node certificate.
    op.call("SetPackage", vec![json!("plab-nm"), json!("0.1.0")]).unwrap();
    let node_dir = tempfile::tempdir().unwrap();
    let mut bm = BootManager::new(PlNode::parse(&plnode).unwrap(), &h.url, &h.root, node_dir.path()).unwrap();
    assert_eq!(bm.boot(None).unwrap(), Outcome::Booted { installed: true, updated: 0 });
    op.call("SetPackage", vec![json!("plab-nm"), json!("0.2.0")]).unwrap();
    assert_eq!(bm.boot(None).unwrap(), Outcome::Booted { installed: false, updated: 1 });
    let nodes = alice.call("GetNodes", vec![json!([node])]).unwrap();
    assert_eq!(nodes[0]["state"], "boot");
    assert_eq!(nodes[0]["certified"], true);
    assert!(nodes[0].get("node_key").is_none() && !nodes.to_string().contains("NODE_KEY"));

    // The admin creates a slice and gives alice to it; alice configures and starts it.
    pi.call("CreateSlice", vec![json!("plc.princeton.codeen")]).unwrap();
    pi.call("AddSlicePrincipal", vec![json!("plc.princeton.codeen"), json!(["alice"])]).unwrap();
    alice.call("SetSliceAttr", vec![json!("plc.princeton.codeen"), json!("bootscript"), json!("echo codeen")]).unwrap();
    let e =
        alice.call("SetSliceAttr", vec![json!("plc.princeton.codeen"), json!("mem_limit"), json!("4096")]).unwrap_err();
    assert_eq!(code(&e), 1, "mem_limit is an admin-level attribute: {e}");
    pi.call("SetSliceAttr", vec![json!("plc.princeton.codeen"), json!("mem_limit"), json!("512")]).unwrap();
    alice.call("AddSliceNode", vec![json!("plc.princeton.codeen"), json!([node])]).unwrap();
    alice.call("StartSlice", vec![json!("plc.princeton.codeen")]).unwrap();

    // The node's slice creation service (certified by the node's NM) authenticates and polls.
    let node_chain = std::fs::read_to_string(node_dir.path().join("node-cert.pem")).unwrap();
    let node_key = std::fs::read_to_string(node_dir.path().join("node.key")).unwrap();
    let (svc_chain, svc_key) = h.service_chain(&node_chain, &node_key, "plc.scs", node);
    let mut scs = h.client(None);
    scs.start_session(&svc_chain, &svc_key).unwrap();
    let r = scs.call("GetSlicesForNode", vec![json!(node), json!(0)]).unwrap();
    assert_eq!(r["slices"][0]["name"], "plc.princeton.codeen");
    let rspec = vm_types::RSpec::from_xml(r["slices"][0]["rspec"].as_str().unwrap()).unwrap();
    assert_eq!(rspec.slice().unwrap().keys[0].as_str(), alice_key);
    assert_eq!(rspec.slice().unwrap().bootscript.as_deref(), Some("echo codeen"));
    assert_eq!(rspec.resources.mem_limit.to_string(), "512");
    let gen = r["generation"].as_i64().unwrap();
    assert_eq!(scs.call("GetSlicesForNode", vec![json!(node), json!(gen)]).unwrap()["unchanged"], true);
    // A service on another node may not ask for this node.
    let e = scs.call("GetSlicesForNode", vec![json!(node + 1), json!(0)]).unwrap_err();
    assert_eq!(code(&e), 1, "{e}");

    // Renewal: at most eight weeks ahead.
    let now = credentials::now();
    alice.call("RenewSlice", vec![json!("plc.princeton.codeen"), json!(now + 30 * 86400)]).unwrap();
    let e = alice.call("RenewSlice", vec![json!("plc.princeton.codeen"), json!(now + 60 * 86400)]).unwrap_err();
    assert!(e.to_string().starts_with("expires:"), "{e}");

    // A ticket verifies with the SA certificate; the slice becomes delegated.
    let t: SignedTicket =
        serde_json::from_value(alice.call("GetSliceTicket", vec![json!("plc.princeton.codeen")]).unwrap()).unwrap();
    let body = t.verify(&Cert::from_pem(&h.authority.ca.sa.cert_pem).unwrap(), credentials::now()).unwrap();
    assert_eq!(body.slice, "plc.princeton.codeen");
    assert_eq!(body.nodes, vec![node]);
    let r = scs.call("GetSlicesForNode", vec![json!(node), json!(gen)]).unwrap();
    assert_eq!(r["slices"].as_array().unwrap().len(), 0, "a delegated slice is not created centrally: {r}");
    let slices = alice.call("GetSlices", vec![]).unwrap();
    assert_eq!(slices[0]["state"]["mode"], "delegated");

    // Numeric attributes may be sent as numbers.
    pi.call("SetSliceAttr", vec![json!("plc.princeton.codeen"), json!("mem_limit"), json!(768)]).unwrap();
    pi.call("SetSliceAttr", vec![json!("plc.princeton.codeen"), json!("disk_quota"), json!(2.5)]).unwrap();
    let rs = vm_types::RSpec::from_xml(alice.call("GetSlices", vec![]).unwrap()[0]["rspec"].as_str().unwrap()).unwrap();
    assert_eq!((rs.resources.mem_limit.to_string(), rs.resources.disk_quota.to_string()), ("768".into(), "2.5".into()));

    // A centrally managed slice expiring moves the generation: a node polling with the
    // generation it has learns that the slice must go.
    pi.call("CreateSlice", vec![json!("plc.princeton.brief")]).unwrap();
    pi.call("AddSliceNode", vec![json!("plc.princeton.brief"), json!([node])]).unwrap();
    pi.call("StartSlice", vec![json!("plc.princeton.brief")]).unwrap();
    let before = scs.call("GetSlicesForNode", vec![json!(node), json!(0)]).unwrap();
    assert_eq!(before["slices"].as_array().unwrap().len(), 1, "{before}");
    let gen = before["generation"].as_i64().unwrap();
    let now = credentials::now();
    h.rt.block_on(async {
        sqlx::query(&h.authority.db.q("UPDATE slices SET expires = ? WHERE name = 'plc.princeton.brief'"))
            .bind(now - 1)
            .execute(h.authority.db.pool())
            .await
            .unwrap();
        // Swept here or by the server's own sweeper meanwhile: published exactly once.
        h.authority.sweep_expired(now).await.unwrap();
        assert_eq!(h.authority.sweep_expired(now + 1).await.unwrap(), 0, "published once");
    });
    let after = scs.call("GetSlicesForNode", vec![json!(node), json!(gen)]).unwrap();
    assert_eq!(after["unchanged"], false, "{after}");
    assert_eq!(after["slices"], json!([]), "{after}");

    // A deleted node is given no slices.
    pi.call("CreateSlice", vec![json!("plc.princeton.gone")]).unwrap();
    let gone = pi
        .call("AddNode", vec![json!({"site": "princeton-cs", "hostname": "gone.cs.princeton.test", "ip": "127.0.0.5"})])
        .unwrap()["node_id"]
        .as_i64()
        .unwrap();
    pi.call("AddSliceNode", vec![json!("plc.princeton.gone"), json!([gone])]).unwrap();
    pi.call("StartSlice", vec![json!("plc.princeton.gone")]).unwrap();
    assert_eq!(
        op.call("GetSlicesForNode", vec![json!(gone), json!(0)]).unwrap()["slices"].as_array().unwrap().len(),
        1
    );
    op.call("DeleteNode", vec![json!(gone)]).unwrap();
    assert_eq!(op.call("GetSlicesForNode", vec![json!(gone), json!(0)]).unwrap()["slices"], json!([]));

    // Deleted slices stay on record; the name can be reused.
    pi.call("DeleteSlice", vec![json!("plc.princeton.codeen")]).unwrap();
    assert!(alice.call("GetSlices", vec![]).unwrap().as_array().unwrap().is_empty());
    for s in ["plc.princeton.brief", "plc.princeton.gone"] {
        pi.call("DeleteSlice", vec![json!(s)]).unwrap();
    }
    pi.call("CreateSlice", vec![json!("plc.princeton.codeen")]).unwrap();
    h.rt.block_on(async {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) AS n FROM slices WHERE name = 'plc.princeton.codeen'")
            .fetch_one(h.authority.db.pool())
            .await
            .unwrap();
        assert_eq!(n, 2);
    });
}

#[test]
fn flow_sqlite() {
    flow(Backend::Sqlite);
}

#[test]
fn flow_postgres() {
    flow(Backend::Postgres);
}
