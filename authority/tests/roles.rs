//! The role matrix: every method, called by every kind of caller, succeeds or is refused
//! with the exact code, as this table says. The table is written here from sections 4.7
//! and 4.8 and the method docs in `api.rs`, not from the server's code. An allowed call
//! must succeed (a transport error, an Internal error or a NotFound is a failure); a
//! denied call must give PermissionDenied (1), or NotAuthenticated (2) for anonymous
//! callers and for boot calls without their HMAC.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

mod common;
use common::{code, Backend, Harness};
use plab_authority::{AuthorityClient, Method};
use serde_json::{json, Value};

const WHO: [&str; 11] = [
    "anon",
    "operator",
    "admin",
    "other_admin",
    "member",
    "outsider",
    "tech",
    "tech_elsewhere",
    "service",
    "other_service",
    "slice_service",
];

/// Who may call each cell (by WHO name).
fn allowed(cell: &str) -> Vec<&'static str> {
    let principals = vec!["operator", "admin", "other_admin", "member", "outsider", "tech", "tech_elsewhere"];
    let mut authenticated = principals.clone();
    authenticated.extend(["service", "other_service", "slice_service"]);
    match cell {
        "AuthenticateCertificate" | "RegisterPrincipal" | "GetPrincipalCert" => WHO.to_vec(),
        // Operator-only: new organisations, package versions, the rate attributes, and
        // principals with the admin or operator role.
        "AddOrg" | "SetPackage" | "AddPrincipal:admin" | "AddPrincipal:operator" => vec!["operator"],
        "SetSliceAttr:base_rate" | "SetSliceAttr:burst_rate" | "SetSliceAttr:sustained_rate" => vec!["operator"],
        // Any principal, for itself or what it may see.
        "GetOrgs" | "GetPrincipals" | "AddPrincipalKey" | "RekeyPrincipal" | "GetSlices" => principals,
        // The admin of the slice's (or principal's, or site's) organisation.
        "ApprovePrincipal" | "AddPrincipal:user" | "AddPrincipal:tech" | "CreateSlice" | "AddSite" => {
            vec!["operator", "admin"]
        }
        "SetSliceAttr:cpu_share" | "SetSliceAttr:mem_limit" | "SetSliceAttr:disk_quota" => vec!["operator", "admin"],
        // Members of the slice.
        "SetSliceAttr:bootscript"
        | "SetSliceAttr:vm_type"
        | "AddSlicePrincipal"
        | "AddSliceNode"
        | "StartSlice"
        | "StopSlice"
        | "DeleteSlice"
        | "RenewSlice"
        | "GetSliceTicket"
        | "GetSliceStatus" => vec!["operator", "admin", "member"],
        // The node's designated slice creation service (not any slice's service there).
        "GetSlicesForNode" | "ReportSlivers" => vec!["operator", "service"],
        // Only a node's auditing service (`plc.audit`, none of these) uploads its flows
        // and asks who is responsible for its slices; the archive's query is public, as
        // each node's page is.
        "ArchiveFlows" | "SliceContacts" => vec![],
        "QueryFlows" => WHO.to_vec(),
        // The MA's public listing: any authenticated caller.
        "GetSites" | "GetManagedNodes" | "GetNodes" => authenticated,
        // The site's tech, the org's admin.
        "AddNode" | "UpdateNode" | "DeleteNode" | "GetNodeConfig" => vec!["operator", "admin", "tech"],
        // Boot calls need the node key's HMAC, which none of these callers uses.
        "BootGetState" | "BootUpdateState" | "BootGetCertificate" | "BootCheckUpdates" => vec![],
        other => panic!("the matrix lacks {other}"),
    }
}

/// The code a denied cell must give.
fn denial(cell: &str, who: &str) -> i64 {
    if who == "anon" || cell.starts_with("Boot") {
        2
    } else {
        1
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
    let tech2 = creds("tom", "princeton", "tech", &mut op);
    op.call("AddSite", vec![json!({"org": "princeton", "name": "princeton-cs", "tech": "tina"})]).unwrap();
    op.call("AddSite", vec![json!({"org": "princeton", "name": "princeton-ee", "tech": "tom"})]).unwrap();
    let node = op
        .call("AddNode", vec![json!({"site": "princeton-cs", "hostname": "n1.princeton.test", "ip": "127.0.0.1"})])
        .unwrap()["node_id"]
        .as_i64()
        .unwrap();
    // The node boots so that it has a certificate, and its NM certifies a service; a
    // second node does the same.
    let boot = |n: i64, ip: &str| {
        let mut op = h.operator();
        op.call("UpdateNode", vec![json!(n), json!({"ip": ip})]).unwrap();
        let plnode = op.call("GetNodeConfig", vec![json!(n)]).unwrap()["plnode"].as_str().unwrap().to_owned();
        let nd = tempfile::tempdir().unwrap();
        let pl = plab_authority::bootmgr::PlNode::parse(&plnode).unwrap();
        let mut bm = plab_authority::bootmgr::BootManager::new(pl, &h.url, &h.root, nd.path()).unwrap();
        bm.boot(None).unwrap();
        let chain = std::fs::read_to_string(nd.path().join("node-cert.pem")).unwrap();
        let key = std::fs::read_to_string(nd.path().join("node.key")).unwrap();
        (chain, key)
    };
    let (node_chain, node_key) = boot(node, "127.0.0.1");
    let node2 = op
        .call("AddNode", vec![json!({"site": "princeton-cs", "hostname": "n2.princeton.test", "ip": "127.0.0.1"})])
        .unwrap()["node_id"]
        .as_i64()
        .unwrap();
    let (node2_chain, node2_key) = boot(node2, "127.0.0.1");
    let svc = h.service_chain(&node_chain, &node_key, "plc.scs", node);
    let svc2 = h.service_chain(&node2_chain, &node2_key, "plc.scs", node2);
    // An ordinary slice's service on the same node: certified by the NM, but not the node's.
    let svc3 = h.service_chain(&node_chain, &node_key, "plc.princeton.s0", node);

    let mut clients: Vec<AuthorityClient> = vec![
        h.client(None),
        h.operator(),
        h.client(Some((&admin.0, &admin.1))),
        h.client(Some((&other.0, &other.1))),
        h.client(Some((&member.0, &member.1))),
        h.client(Some((&outsider.0, &outsider.1))),
        h.client(Some((&tech.0, &tech.1))),
        h.client(Some((&tech2.0, &tech2.1))),
        h.client(None),
        h.client(None),
        h.client(None),
    ];
    clients[8].start_session(&svc.0, &svc.1).unwrap();
    clients[9].start_session(&svc2.0, &svc2.1).unwrap();
    clients[10].start_session(&svc3.0, &svc3.1).unwrap();

    let mut checked = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for (i, who) in WHO.iter().enumerate() {
        // Fresh objects per caller, so that allowed destructive calls do not disturb others.
        let slice = format!("plc.princeton.s{i}");
        op.call("CreateSlice", vec![json!(slice)]).unwrap();
        op.call("AddSlicePrincipal", vec![json!(slice), json!(["alice"])]).unwrap();
        let n = op
            .call(
                "AddNode",
                vec![json!({"site": "princeton-cs", "hostname": format!("d{i}.princeton.test"), "ip": "127.0.0.9"})],
            )
            .unwrap()["node_id"]
            .as_i64()
            .unwrap();
        let pending = format!("pending{i}");
        let k = credentials::pki::KeyPair::generate();
        // From an address of its own: anonymous registrations are rate-limited per address.
        let from = format!("127.0.2.{}", i + 1).parse().unwrap();
        AuthorityClient::new(&h.url, &h.root, None, Some(from))
            .unwrap()
            .call(
                "RegisterPrincipal",
                vec![
                    json!({"name": pending, "email": "p@x.test", "org": "princeton", "public_key": k.public_key_pem()}),
                ],
            )
            .unwrap();
        let now = credentials::now();
        let key = format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINvd4JWqGILryt7c7j2YX8GNJTHiRXgCbcOQj+vURAyx k{i}@x");
        let new_principal = |role: &str| json!({"name": format!("new{role}{i}"), "email": "n@x.test", "org": "princeton", "role": role, "public_key": k.public_key_pem()});
        let mut calls: Vec<(String, &str, Vec<Value>)> = vec![
            ("AuthenticateCertificate".into(), "AuthenticateCertificate", vec![json!(h.op.0)]),
            ("AddOrg".into(), "AddOrg", vec![json!({"name": format!("org{i}"), "authority": format!("plc.org{i}")})]),
            ("GetOrgs".into(), "GetOrgs", vec![]),
            (
                "RegisterPrincipal".into(),
                "RegisterPrincipal",
                vec![
                    json!({"name": format!("reg{i}"), "email": "r@x.test", "org": "princeton", "public_key": k.public_key_pem()}),
                ],
            ),
            ("ApprovePrincipal".into(), "ApprovePrincipal", vec![json!(pending)]),
            ("GetPrincipals".into(), "GetPrincipals", vec![]),
            ("GetPrincipalCert".into(), "GetPrincipalCert", vec![json!("alice")]),
            ("AddPrincipalKey".into(), "AddPrincipalKey", vec![json!(key)]),
            ("CreateSlice".into(), "CreateSlice", vec![json!(format!("plc.princeton.c{i}"))]),
            ("AddSlicePrincipal".into(), "AddSlicePrincipal", vec![json!(slice), json!(["bob"])]),
            ("AddSliceNode".into(), "AddSliceNode", vec![json!(slice), json!([node])]),
            ("StartSlice".into(), "StartSlice", vec![json!(slice)]),
            ("StopSlice".into(), "StopSlice", vec![json!(slice)]),
            ("RenewSlice".into(), "RenewSlice", vec![json!(slice), json!(now + 20 * 86400)]),
            ("GetSliceTicket".into(), "GetSliceTicket", vec![json!(slice)]),
            ("GetSlices".into(), "GetSlices", vec![]),
            ("GetSlicesForNode".into(), "GetSlicesForNode", vec![json!(node), json!(0)]),
            (
                "ReportSlivers".into(),
                "ReportSlivers",
                vec![json!(node), json!([{"slice": slice, "state": "running", "ssh": "ssh -p 22001 x@n1"}])],
            ),
            ("GetSliceStatus".into(), "GetSliceStatus", vec![json!(slice)]),
            ("ArchiveFlows".into(), "ArchiveFlows", vec![json!(node), json!("e1"), json!([])]),
            ("QueryFlows".into(), "QueryFlows", vec![json!("192.0.2.10:33000")]),
            ("SliceContacts".into(), "SliceContacts", vec![json!(node), json!([slice])]),
            ("DeleteSlice".into(), "DeleteSlice", vec![json!(slice)]),
            ("AddSite".into(), "AddSite", vec![json!({"org": "princeton", "name": format!("site{i}")})]),
            ("GetSites".into(), "GetSites", vec![]),
            (
                "AddNode".into(),
                "AddNode",
                vec![json!({"site": "princeton-cs", "hostname": format!("a{i}.princeton.test"), "ip": "127.0.0.8"})],
            ),
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
        for role in ["user", "tech", "admin", "operator"] {
            calls.push((format!("AddPrincipal:{role}"), "AddPrincipal", vec![new_principal(role)]));
        }
        for (attr, value) in [
            ("bootscript", json!("true")),
            ("vm_type", json!("linux-kvm-x86")),
            ("cpu_share", json!(2)),
            ("mem_limit", json!("512")),
            ("disk_quota", json!(2.5)),
            ("base_rate", json!("1")),
            ("burst_rate", json!(100)),
            ("sustained_rate", json!("10")),
        ] {
            calls.insert(9, (format!("SetSliceAttr:{attr}"), "SetSliceAttr", vec![json!(slice), json!(attr), value]));
        }
        for (cell, method, params) in calls {
            checked.insert(method.to_owned());
            let r = clients[i].call(method, params);
            let should = allowed(&cell).contains(who);
            match (&r, should) {
                (Ok(_), true) => {}
                (Err(e), false) if code(e) == denial(&cell, who) => {}
                (r, should) => failures.push(format!(
                    "{cell} by {who}: expected {}, got {r:?}",
                    if should { "success".to_string() } else { format!("error {}", denial(&cell, who)) }
                )),
            }
        }
    }
    // Rekeying last, once every caller is done: it replaces the caller's certificate.
    for (i, who) in WHO.iter().enumerate() {
        checked.insert("RekeyPrincipal".to_owned());
        let k = credentials::pki::KeyPair::generate();
        let r = clients[i].call("RekeyPrincipal", vec![json!(k.public_key_pem())]);
        let should = allowed("RekeyPrincipal").contains(who);
        match (&r, should) {
            (Ok(_), true) => {}
            (Err(e), false) if code(e) == denial("RekeyPrincipal", who) => {}
            (r, _) => failures.push(format!("RekeyPrincipal by {who}: {r:?}")),
        }
    }
    assert!(failures.is_empty(), "role matrix violations:\n{}", failures.join("\n"));
    let all: std::collections::BTreeSet<String> = Method::ALL.iter().map(|m| m.name().to_owned()).collect();
    assert_eq!(checked, all, "every method is in the matrix");
}

#[test]
fn a_node_certificate_certifies_services_but_calls_nothing() {
    let h = Harness::start(Backend::Sqlite);
    let (_op, node, plnode) = h.one_node("127.0.0.1");
    let nd = tempfile::tempdir().unwrap();
    let pl = plab_authority::bootmgr::PlNode::parse(&plnode).unwrap();
    plab_authority::bootmgr::BootManager::new(pl, &h.url, &h.root, nd.path()).unwrap().boot(None).unwrap();
    let chain = std::fs::read_to_string(nd.path().join("node-cert.pem")).unwrap();
    let key = std::fs::read_to_string(nd.path().join("node.key")).unwrap();
    // In TLS: refused at the handshake, no call is made.
    let e = h.client(Some((&chain, &key))).call("GetSlicesForNode", vec![json!(node), json!(0)]).unwrap_err();
    assert!(matches!(e, plab_authority::ClientError::Transport(_)), "{e:?}");
    // By AuthenticateCertificate: no session.
    let e = h.client(None).call("AuthenticateCertificate", vec![json!(chain)]).unwrap_err();
    assert_eq!(code(&e), 2, "{e}");
    // It still certifies services on its node, which may poll.
    let svc = h.service_chain(&chain, &key, "plc.scs", node);
    let mut s = h.client(None);
    s.start_session(&svc.0, &svc.1).unwrap();
    s.call("GetSlicesForNode", vec![json!(node), json!(0)]).unwrap();
}

#[test]
fn what_each_caller_sees() {
    let h = Harness::start(Backend::Sqlite);
    let mut op = h.operator();
    op.call("AddOrg", vec![json!({"name": "princeton", "authority": "plc.princeton"})]).unwrap();
    op.call("AddOrg", vec![json!({"name": "mit", "authority": "plc.mit"})]).unwrap();
    let padmin = h.principal(&mut op, "padmin", "princeton", "admin");
    let madmin = h.principal(&mut op, "madmin", "mit", "admin");
    let alice = h.principal(&mut op, "alice", "princeton", "user");
    h.principal(&mut op, "bob", "princeton", "user");
    h.principal(&mut op, "mallory", "mit", "user");
    op.call("CreateSlice", vec![json!("plc.princeton.a")]).unwrap();
    op.call("CreateSlice", vec![json!("plc.princeton.b")]).unwrap();
    op.call("CreateSlice", vec![json!("plc.mit.m")]).unwrap();
    op.call("AddSlicePrincipal", vec![json!("plc.princeton.a"), json!(["alice"])]).unwrap();
    let names = |v: Value, key: &str| -> Vec<String> {
        let mut n: Vec<String> = v.as_array().unwrap().iter().map(|x| x[key].as_str().unwrap().to_owned()).collect();
        n.sort();
        n
    };
    let mut pa = h.client(Some((&padmin.0, &padmin.1)));
    let mut ma = h.client(Some((&madmin.0, &madmin.1)));
    let mut al = h.client(Some((&alice.0, &alice.1)));
    assert_eq!(
        names(pa.call("GetPrincipals", vec![]).unwrap(), "name"),
        ["alice", "bob", "padmin"],
        "an admin sees its org"
    );
    assert_eq!(names(ma.call("GetPrincipals", vec![]).unwrap(), "name"), ["madmin", "mallory"]);
    assert_eq!(names(al.call("GetPrincipals", vec![]).unwrap(), "name"), ["alice"], "a user sees itself");
    assert_eq!(names(op.call("GetPrincipals", vec![]).unwrap(), "name").len(), 6);
    assert_eq!(names(pa.call("GetSlices", vec![]).unwrap(), "name"), ["plc.princeton.a", "plc.princeton.b"]);
    assert_eq!(
        names(ma.call("GetSlices", vec![]).unwrap(), "name"),
        ["plc.mit.m"],
        "another org's admin sees none of princeton's"
    );
    assert_eq!(names(al.call("GetSlices", vec![]).unwrap(), "name"), ["plc.princeton.a"], "a member sees its slices");
    assert_eq!(names(op.call("GetSlices", vec![]).unwrap(), "name").len(), 3);
}
