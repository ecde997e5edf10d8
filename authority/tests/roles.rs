//! The role matrix: every method, called by every kind of caller, is allowed or denied
//! exactly as this table says. The table is written here, independently of the server's
//! code, from sections 4.7 and 4.8 and the method docs.

mod common;
use common::{code, Backend, Harness};
use plab_authority::{AuthorityClient, Method};
use serde_json::{json, Value};

const WHO: [&str; 8] = ["anon", "operator", "admin", "other_admin", "member", "outsider", "tech", "service"];

/// Who may call each method (by WHO name). `*` is everyone, `principals` the six people.
fn allowed(m: &str) -> Vec<&'static str> {
    let principals = vec!["operator", "admin", "other_admin", "member", "outsider", "tech"];
    let mut authenticated = principals.clone();
    authenticated.push("service");
    match m {
        "AuthenticateCertificate" | "RegisterPrincipal" | "GetPrincipalCert" => WHO.to_vec(),
        "AddOrg" | "SetPackage" | "SetSliceAttr:sustained_rate" => vec!["operator"],
        "GetOrgs" | "GetPrincipals" | "AddPrincipalKey" | "GetSlices" => principals,
        "ApprovePrincipal" | "AddPrincipal" | "CreateSlice" | "AddSite" | "SetSliceAttr:mem_limit" => vec!["operator", "admin"],
        "SetSliceAttr:bootscript" | "AddSlicePrincipal" | "AddSliceNode" | "StartSlice" | "StopSlice" | "DeleteSlice"
        | "RenewSlice" | "GetSliceTicket" => vec!["operator", "admin", "member"],
        "GetSlicesForNode" => vec!["operator", "service"],
        "GetSites" | "GetManagedNodes" | "GetNodes" => authenticated,
        "AddNode" | "UpdateNode" | "DeleteNode" | "GetNodeConfig" => vec!["operator", "admin", "tech"],
        "BootGetState" | "BootUpdateState" | "BootGetCertificate" | "BootCheckUpdates" => vec![],
        other => panic!("the matrix lacks {other}"),
    }
}

#[test]
fn every_method_by_every_caller() {
    let h = Harness::start(Backend::Sqlite);
    let mut op = h.operator();
    op.call("AddOrg", vec![json!({"name": "princeton", "authority": "plc.princeton"})]).unwrap();
    op.call("AddOrg", vec![json!({"name": "mit", "authority": "plc.mit"})]).unwrap();
    let creds = |name: &str, org: &str, role: &str, op: &mut AuthorityClient| h.principal(op, name, org, role);
    let admin = creds("padmin", "princeton", "admin", &mut op);
    let other = creds("madmin", "mit", "admin", &mut op);
    let member = creds("alice", "princeton", "user", &mut op);
    let outsider = creds("bob", "princeton", "user", &mut op);
    let tech = creds("tina", "princeton", "tech", &mut op);
    op.call("AddSite", vec![json!({"org": "princeton", "name": "princeton-cs", "tech": "tina"})]).unwrap();
    let node = op.call("AddNode", vec![json!({"site": "princeton-cs", "hostname": "n1.princeton.test", "ip": "127.0.0.1"})]).unwrap()["node_id"].as_i64().unwrap();
    // The node boots so that it has a certificate, and its NM certifies a service.
    let plnode = op.call("GetNodeConfig", vec![json!(node)]).unwrap()["plnode"].as_str().unwrap().to_owned();
    let nd = tempfile::tempdir().unwrap();
    let mut bm = plab_authority::bootmgr::BootManager::new(plab_authority::bootmgr::PlNode::parse(&plnode).unwrap(), &h.url, &h.root, nd.path()).unwrap();
    bm.boot(None).unwrap();
    let node_chain = std::fs::read_to_string(nd.path().join("node-cert.pem")).unwrap();
    let node_key = std::fs::read_to_string(nd.path().join("node.key")).unwrap();
    let svc = h.service_chain(&node_chain, &node_key, "plc.scs", node);

    let mut clients: Vec<AuthorityClient> = vec![
        h.client(None),
        h.operator(),
        h.client(Some((&admin.0, &admin.1))),
        h.client(Some((&other.0, &other.1))),
        h.client(Some((&member.0, &member.1))),
        h.client(Some((&outsider.0, &outsider.1))),
        h.client(Some((&tech.0, &tech.1))),
        h.client(None),
    ];
    clients[7].start_session(&svc.0, &svc.1).unwrap();

    let mut checked = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for (i, who) in WHO.iter().enumerate() {
        // Fresh objects per caller, so that allowed destructive calls do not disturb others.
        let slice = format!("plc.princeton.s{i}");
        op.call("CreateSlice", vec![json!(slice)]).unwrap();
        op.call("AddSlicePrincipal", vec![json!(slice), json!(["alice"])]).unwrap();
        let n = op.call("AddNode", vec![json!({"site": "princeton-cs", "hostname": format!("d{i}.princeton.test"), "ip": "127.0.0.9"})]).unwrap()["node_id"].as_i64().unwrap();
        let pending = format!("pending{i}");
        let k = credentials::pki::KeyPair::generate();
        h.client(None).call("RegisterPrincipal", vec![json!({"name": pending, "email": "p@x.test", "org": "princeton", "public_key": k.public_key_pem()})]).unwrap();
        let now = credentials::now();
        let key = format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINvd4JWqGILryt7c7j2YX8GNJTHiRXgCbcOQj+vURAyx k{i}@x");
        let calls: Vec<(String, &str, Vec<Value>)> = vec![
            ("AuthenticateCertificate".into(), "AuthenticateCertificate", vec![json!(h.op.0)]),
            ("AddOrg".into(), "AddOrg", vec![json!({"name": format!("org{i}"), "authority": format!("plc.org{i}")})]),
            ("GetOrgs".into(), "GetOrgs", vec![]),
            ("RegisterPrincipal".into(), "RegisterPrincipal", vec![json!({"name": format!("reg{i}"), "email": "r@x.test", "org": "princeton", "public_key": k.public_key_pem()})]),
            ("ApprovePrincipal".into(), "ApprovePrincipal", vec![json!(pending)]),
            ("AddPrincipal".into(), "AddPrincipal", vec![json!({"name": format!("new{i}"), "email": "n@x.test", "org": "princeton", "role": "user", "public_key": k.public_key_pem()})]),
            ("GetPrincipals".into(), "GetPrincipals", vec![]),
            ("GetPrincipalCert".into(), "GetPrincipalCert", vec![json!("alice")]),
            ("AddPrincipalKey".into(), "AddPrincipalKey", vec![json!(key)]),
            ("CreateSlice".into(), "CreateSlice", vec![json!(format!("plc.princeton.c{i}"))]),
            ("SetSliceAttr:bootscript".into(), "SetSliceAttr", vec![json!(slice), json!("bootscript"), json!("true")]),
            ("SetSliceAttr:mem_limit".into(), "SetSliceAttr", vec![json!(slice), json!("mem_limit"), json!("512")]),
            ("SetSliceAttr:sustained_rate".into(), "SetSliceAttr", vec![json!(slice), json!("sustained_rate"), json!("10")]),
            ("AddSlicePrincipal".into(), "AddSlicePrincipal", vec![json!(slice), json!(["bob"])]),
            ("AddSliceNode".into(), "AddSliceNode", vec![json!(slice), json!([node])]),
            ("StartSlice".into(), "StartSlice", vec![json!(slice)]),
            ("StopSlice".into(), "StopSlice", vec![json!(slice)]),
            ("RenewSlice".into(), "RenewSlice", vec![json!(slice), json!(now + 20 * 86400)]),
            ("GetSliceTicket".into(), "GetSliceTicket", vec![json!(slice)]),
            ("GetSlices".into(), "GetSlices", vec![]),
            ("GetSlicesForNode".into(), "GetSlicesForNode", vec![json!(node), json!(0)]),
            ("DeleteSlice".into(), "DeleteSlice", vec![json!(slice)]),
            ("AddSite".into(), "AddSite", vec![json!({"org": "princeton", "name": format!("site{i}")})]),
            ("GetSites".into(), "GetSites", vec![]),
            ("AddNode".into(), "AddNode", vec![json!({"site": "princeton-cs", "hostname": format!("a{i}.princeton.test"), "ip": "127.0.0.8"})]),
            ("UpdateNode".into(), "UpdateNode", vec![json!(n), json!({"mac": "00:11:22:33:44:55"})]),
            ("GetManagedNodes".into(), "GetManagedNodes", vec![]),
            ("GetNodes".into(), "GetNodes", vec![]),
            ("GetNodeConfig".into(), "GetNodeConfig", vec![json!(n)]),
            ("DeleteNode".into(), "DeleteNode", vec![json!(n)]),
            ("SetPackage".into(), "SetPackage", vec![json!("pkg"), json!(format!("{i}"))]),
            ("BootGetState".into(), "BootGetState", vec![json!({})]),
            ("BootUpdateState".into(), "BootUpdateState", vec![json!({"state": "boot"})]),
            ("BootGetCertificate".into(), "BootGetCertificate", vec![json!({"public_key": k.public_key_pem()})]),
            ("BootCheckUpdates".into(), "BootCheckUpdates", vec![json!({"packages": {}})]),
        ];
        for (label, method, params) in calls {
            checked.insert(method.to_owned());
            let r = clients[i].call(method, params);
            let denied = matches!(&r, Err(e) if code(e) == 1 || code(e) == 2);
            let should = allowed(&label).contains(who);
            if denied == should {
                failures.push(format!("{label} by {who}: expected {}, got {:?}", if should { "allowed" } else { "denied" }, r));
            }
        }
    }
    assert!(failures.is_empty(), "role matrix violations:\n{}", failures.join("\n"));
    let all: std::collections::BTreeSet<String> = Method::ALL.iter().map(|m| m.name().to_owned()).collect();
    assert_eq!(checked, all, "every method is in the matrix");
}
