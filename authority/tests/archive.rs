//! The flow archive (issue 10, item 7) on a real server over TLS, with SQLite and with
//! PostgreSQL: a node's auditing service uploads its flows (a repeat stores nothing new),
//! anyone asks the public query across nodes and gets the node, the slice and its users;
//! a node's service cannot upload for another node, nor another service for it; bad
//! uploads are refused naming the flow and field, and store nothing.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;
use common::{code, Backend, Harness};
use serde_json::{json, Value};

fn flow(id: i64, vm_addr: &str, sport: u16, nat: (u16, u16), slice: &str, first_ms: i64) -> Value {
    json!({"id": id, "flow": {
        "proto": 17, "src": vm_addr, "sport": sport, "dst": "198.51.100.7", "dport": 53,
        "first_ms": first_ms, "last_ms": first_ms + 500, "bytes": 384, "packets": 3, "tcp_flags": 0,
        "post_nat_src": format!("127.0.0.1:{}-{}", nat.0, nat.1),
        "meta": {"vm": slice.replace('.', "_"), "slice": slice, "users": ["alice@example.org"], "iface": "pv1",
                 "vm_addr": vm_addr, "public_addr": "127.0.0.1", "nat_ports": [nat.0, nat.1],
                 "vm_net": ["10.213.0.0", 16]}}})
}

fn archive(backend: Backend) {
    let h = Harness::start(backend);
    let (mut op, node, plnode) = h.one_node("127.0.0.1");
    let other = op.call("AddNode", vec![json!({"site": "pcs", "hostname": "n2.test", "ip": "127.0.0.3"})]).unwrap()
        ["node_id"]
        .as_i64()
        .unwrap();
    // The auditing service of node 1, as node 1's NM certifies it.
    let nd = tempfile::tempdir().unwrap();
    let (chain, key) = {
        let pl = plab_authority::bootmgr::PlNode::parse(&plnode).unwrap();
        plab_authority::bootmgr::BootManager::new(pl, &h.url, &h.root, nd.path()).unwrap().boot(None).unwrap();
        let chain = std::fs::read_to_string(nd.path().join("node-cert.pem")).unwrap();
        let key = std::fs::read_to_string(nd.path().join("node.key")).unwrap();
        (chain, key)
    };
    let audit_cred = h.service_chain(&chain, &key, "plc.audit", node);
    // A's slice is this authority's and has the node; its principals answer for it.
    h.principal(&mut op, "alice", "princeton", "user");
    op.call("CreateSlice", vec![json!("plc.princeton.a")]).unwrap();
    op.call("AddSlicePrincipal", vec![json!("plc.princeton.a"), json!(["alice"])]).unwrap();
    op.call("AddSliceNode", vec![json!("plc.princeton.a"), json!([node])]).unwrap();
    // The slice creation service's name and the auditing service's are no slice's.
    let e = op.call("CreateSlice", vec![json!("plc.audit")]).unwrap_err();
    assert!(e.to_string().contains("service"), "{e}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let scs_cred = h.service_chain(&chain, &key, "plc.scs", node);
    let mut audit = h.client(None);
    audit.start_session(&audit_cred.0, &audit_cred.1).unwrap();
    // Flows of the last moment (the slice existed when they were sent).
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 100;
    let batch = json!([
        flow(1, "10.213.0.2", 40000, (32768, 33023), "plc.princeton.a", t),
        flow(2, "10.213.0.3", 40000, (33024, 33279), "plc.princeton.b", t),
    ]);
    let r = audit.call("ArchiveFlows", vec![json!(node), json!("e1"), batch.clone()]).unwrap();
    assert_eq!((r["stored"].as_u64(), r["duplicates"].as_u64()), (Some(2), Some(0)), "{r}");
    // At least once: the same upload again stores nothing new.
    let r = audit.call("ArchiveFlows", vec![json!(node), json!("e1"), batch.clone()]).unwrap();
    assert_eq!((r["stored"].as_u64(), r["duplicates"].as_u64()), (Some(0), Some(2)), "{r}");
    // The same ids from a new flow database (a reinstalled node) are new flows.
    let r = audit.call("ArchiveFlows", vec![json!(node), json!("e2"), json!([batch[0].clone()])]).unwrap();
    assert_eq!(r["stored"], 1, "{r}");

    // Anyone asks with what they saw: the node's address and a port of B's block.
    let mut anon = h.client(None);
    let q = |src: &str, from: i64| {
        h.client(None)
            .call("QueryFlows", vec![json!(src), json!("198.51.100.7:53"), json!(from.to_string()), Value::Null])
    };
    let r = q("127.0.0.1:33100", t / 1000 - 10).unwrap();
    let flows = r["flows"].as_array().unwrap();
    assert_eq!((flows.len(), &r["truncated"]), (1, &json!(false)), "{r}");
    assert_eq!(flows[0]["node_id"], node);
    assert_eq!(flows[0]["flow"]["meta"]["slice"], "plc.princeton.b");
    assert_eq!(flows[0]["flow"]["meta"]["users"], json!(["alice@example.org"]));
    assert_eq!(flows[0]["responsible"], json!([]), "a slice this authority does not have");
    // A's slice: its principals, by name to anyone and with their address to principals;
    // the flow from the other database too.
    let a = q("127.0.0.1:32800", t / 1000 - 10).unwrap();
    assert_eq!(a["flows"].as_array().unwrap().len(), 2, "{a}");
    assert_eq!(a["flows"][0]["flow"]["meta"]["slice"], "plc.princeton.a", "{a}");
    assert_eq!(a["flows"][0]["responsible"], json!(["alice"]), "{a}");
    let a = op
        .call(
            "QueryFlows",
            vec![json!("127.0.0.1:32800"), json!("198.51.100.7:53"), json!((t / 1000 - 10).to_string())],
        )
        .unwrap();
    assert_eq!(a["flows"][0]["responsible"], json!(["alice <alice@x.test>"]), "{a}");
    assert_eq!(q("127.0.0.1:40000", t / 1000 - 10).unwrap()["flows"], json!([]), "a port in no block");
    let before = h
        .client(None)
        .call(
            "QueryFlows",
            vec![
                json!("127.0.0.1:33100"),
                Value::Null,
                json!((t / 1000 - 100).to_string()),
                json!((t / 1000 - 5).to_string()),
            ],
        )
        .unwrap();
    assert_eq!(before["flows"], json!([]), "outside the window");
    // Bad queries name the field.
    let e = anon.call("QueryFlows", vec![json!("127.0.0.1:99999")]).unwrap_err();
    assert!(e.to_string().contains("src") && e.to_string().contains("not a port"), "{e}");
    let e = anon.call("QueryFlows", vec![json!("127.0.0.1"), Value::Null, json!("yesterday")]).unwrap_err();
    assert!(e.to_string().contains("from"), "{e}");

    // Node 1's auditing service cannot upload for node 2, nor the slice creation service
    // (or the operator) for anyone, nor an anonymous caller.
    let e = audit.call(
        "ArchiveFlows",
        vec![json!(other), json!("e1"), json!([flow(9, "10.213.0.2", 1, (32768, 33023), "plc.x", t)])],
    );
    assert_eq!(code(&e.unwrap_err()), 1);
    let mut scs = h.client(None);
    scs.start_session(&scs_cred.0, &scs_cred.1).unwrap();
    assert_eq!(code(&scs.call("ArchiveFlows", vec![json!(node), json!("e1"), json!([])]).unwrap_err()), 1);
    assert_eq!(code(&op.call("ArchiveFlows", vec![json!(node), json!("e1"), json!([])]).unwrap_err()), 1);
    assert_eq!(code(&anon.call("ArchiveFlows", vec![json!(node), json!("e1"), json!([])]).unwrap_err()), 2);

    // The node's page names the principals of its slices (SliceContacts): only the
    // node's own auditing service may ask, and only slices that have the node answer.
    let names = json!(["plc.princeton.a", "plc.princeton.b", "plc.princeton.a"]);
    let r = audit.call("SliceContacts", vec![json!(node), names.clone()]).unwrap();
    assert_eq!(r["contacts"], json!({"plc.princeton.a": ["alice"]}), "names only, known slices only: {r}");
    op.call("CreateSlice", vec![json!("plc.princeton.c")]).unwrap();
    op.call("AddSlicePrincipal", vec![json!("plc.princeton.c"), json!(["alice"])]).unwrap();
    let r = audit.call("SliceContacts", vec![json!(node), json!(["plc.princeton.c"])]).unwrap();
    assert_eq!(r["contacts"], json!({}), "a slice without this node: {r}");
    assert_eq!(code(&audit.call("SliceContacts", vec![json!(other), names.clone()]).unwrap_err()), 1);
    assert_eq!(code(&scs.call("SliceContacts", vec![json!(node), names.clone()]).unwrap_err()), 1);
    assert_eq!(code(&op.call("SliceContacts", vec![json!(node), names.clone()]).unwrap_err()), 1);
    assert_eq!(code(&anon.call("SliceContacts", vec![json!(node), names]).unwrap_err()), 2);
    let many: Vec<String> = (0..257).map(|i| format!("plc.princeton.s{i}")).collect();
    let e = audit.call("SliceContacts", vec![json!(node), json!(many)]).unwrap_err();
    assert!(e.to_string().contains("slices") && e.to_string().contains("at most 256"), "{e}");

    // Bad uploads name the flow and field and store nothing, not even their good flows.
    let good = flow(10, "10.213.0.2", 41000, (32768, 33023), "plc.princeton.a", t);
    for (bad, says) in [
        (json!({"id": 11, "flow": {"proto": 17}}), "flows"),
        (
            {
                let mut f = flow(11, "10.213.0.2", 1, (32768, 33023), "plc.princeton.a", t);
                f["flow"]["last_ms"] = json!(t - 1);
                f
            },
            "[1].first_ms: after last_ms",
        ),
        (
            {
                let mut f = flow(11, "10.213.0.2", 1, (32768, 33023), "plc.princeton.a", t);
                f["flow"]["meta"]["slice"] = json!("x".repeat(300));
                f
            },
            "[1].meta.slice",
        ),
        (
            {
                let mut f = flow(11, "10.213.0.2", 1, (32768, 33023), "plc.princeton.a", t);
                f["flow"]["src"] = json!("10.213.0.300");
                f
            },
            "flows",
        ),
        (
            // A node files flows only under its own address.
            {
                let mut f = flow(11, "10.213.0.2", 1, (32768, 33023), "plc.princeton.a", t);
                f["flow"]["meta"]["public_addr"] = json!("198.51.100.1");
                f
            },
            "[1].meta.public_addr",
        ),
        (
            // What the outside saw: a port outside the VM's block, or another address.
            {
                let mut f = flow(11, "10.213.0.2", 1, (32768, 33023), "plc.princeton.a", t);
                f["flow"]["post_nat_src"] = json!("127.0.0.1:40000");
                f
            },
            "[1].post_nat_src: the port is not in meta.nat_ports",
        ),
        (
            {
                let mut f = flow(11, "10.213.0.2", 1, (32768, 33023), "plc.princeton.a", t);
                f["flow"]["post_nat_src"] = json!("198.51.100.1:32800");
                f
            },
            "[1].post_nat_src: not the flow's meta.public_addr",
        ),
        (
            // An "eternal" flow, to crowd every query's window, and one from the future.
            {
                let mut f = flow(11, "10.213.0.2", 1, (32768, 33023), "plc.princeton.a", 0);
                f["flow"]["last_ms"] = json!(t);
                f
            },
            "[1].first_ms",
        ),
        (
            {
                let mut f = flow(11, "10.213.0.2", 1, (32768, 33023), "plc.princeton.a", t + 3_600_000);
                f["flow"]["first_ms"] = json!(t);
                f
            },
            "[1].last_ms",
        ),
    ] {
        let e = audit.call("ArchiveFlows", vec![json!(node), json!("e1"), json!([good, bad])]).unwrap_err();
        assert!(e.to_string().contains(says), "{says}: {e}");
    }
    let too_many: Vec<Value> = (0..1001).map(|i| flow(100 + i, "10.213.0.2", 1, (32768, 33023), "plc.a", t)).collect();
    let e = audit.call("ArchiveFlows", vec![json!(node), json!("e1"), json!(too_many)]).unwrap_err();
    assert!(e.to_string().contains("at most 1000"), "{e}");
    let e = audit.call("ArchiveFlows", vec![json!(node), json!("../x"), json!([])]).unwrap_err();
    assert!(e.to_string().contains("epoch"), "{e}");
    let r = anon.call("QueryFlows", vec![json!("10.213.0.2:41000"), Value::Null, json!((t / 1000 - 10).to_string())]);
    assert_eq!(r.unwrap()["flows"], json!([]), "nothing of a refused upload is stored");
    // Anonymous queries are rationed per address; a principal's are not.
    let refused = (0..40)
        .filter_map(|_| anon.call("QueryFlows", vec![json!("127.0.0.1")]).err())
        .filter(|e| e.to_string().contains("too many queries"))
        .count();
    assert!(refused > 0, "40 queries at once from one address all answered");
    op.call("QueryFlows", vec![json!("127.0.0.1")]).unwrap();
}

#[test]
fn the_archive_stores_each_nodes_flows_once_and_answers_the_public_query_on_sqlite() {
    archive(Backend::Sqlite);
}

#[test]
fn the_archive_stores_each_nodes_flows_once_and_answers_the_public_query_on_postgres() {
    archive(Backend::Postgres);
}
