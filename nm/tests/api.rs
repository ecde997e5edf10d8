//! The node manager's API against the fake backend: pools, rcaps, permissions, Bind's
//! all-or-nothing behaviour, persistence, and the wire protocol's limits.

use plab_nm::protocol::Method;
use plab_nm::{Caller, Config, Node, NmClient};
use serde_json::{json, Value};
use std::sync::Arc;
use vm_types::fake::FakeBackend;
use vm_types::{Registry, SliceName};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINvd4JWqGILryt7c7j2YX8GNJTHiRXgCbcOQj+vURAyx alice@example.org";

fn pool_xml(mem: u32) -> String {
    format!(r#"<PoolRSpec vm_type="linux-vserver-x86"><resources cpu_share="4" disk_quota="10" mem_limit="{mem}"/></PoolRSpec>"#)
}

fn slice_xml(name: &str, mem: u32) -> String {
    format!(
        r#"<VServerSlice name="{name}"><resources cpu_share="1" disk_quota="1" mem_limit="{mem}"/><key>{KEY}</key><bootscript>echo hi</bootscript></VServerSlice>"#
    )
}

fn node(dir: &std::path::Path, fake: Arc<FakeBackend>) -> Arc<Node> {
    let cfg = Config { state_dir: dir.to_path_buf(), vm_prefix: "10.99.0.0/24".into(), ..Config::default() };
    let mut reg = Registry::new();
    reg.register(fake);
    Node::open(cfg, reg).unwrap()
}

fn slice(s: &str) -> Caller {
    Caller::Slice(SliceName::parse(s).unwrap())
}

async fn call(n: &Arc<Node>, c: &Caller, m: Method, p: Value) -> Result<Value, String> {
    n.call(c, m, &p).await.map_err(|e| e.message)
}

#[tokio::test]
async fn owner_creates_slice_splits_and_binds() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::new());
    let n = node(dir.path(), fake.clone());
    let root = call(&n, &Caller::Owner, Method::CreatePool, json!({"rspec": pool_xml(1024), "slice_name": "plc.demo"}))
        .await
        .unwrap()["rcap"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(root.len(), 32);

    // The slice finds its pool, reads it, splits and binds.
    let me = slice("plc.demo");
    let rcaps = call(&n, &me, Method::GetRcap, json!({})).await.unwrap();
    assert_eq!(rcaps["rcaps"], json!([root]));
    assert!(call(&n, &slice("plc.other"), Method::GetRcap, json!({})).await.unwrap()["rcaps"].as_array().unwrap().is_empty());
    let sub = call(&n, &me, Method::SplitPool, json!([root, slice_xml("plc.demo", 256)])).await.unwrap()["rcap"]
        .as_str()
        .unwrap()
        .to_owned();
    let left = call(&n, &me, Method::GetRSpec, json!({"rcap": root})).await.unwrap();
    assert!(left["rspec"].as_str().unwrap().contains(r#"mem_limit="768""#), "{left}");
    let vm = call(&n, &me, Method::Bind, json!({"rcap": sub, "slice_name": "plc.demo"})).await.unwrap();
    assert_eq!(vm["vm"], "plc_demo");
    assert_eq!(vm["address"], "10.99.0.2");
    assert_eq!(fake.calls(), vec!["create plc_demo", "start plc_demo"]);
    assert_eq!(fake.spec("plc_demo").unwrap().keys.len(), 1);

    // A second pool adds its resources to the running VM.
    let more = call(&n, &me, Method::SplitPool, json!([root, slice_xml("plc.demo", 128)])).await.unwrap()["rcap"]
        .as_str()
        .unwrap()
        .to_owned();
    call(&n, &me, Method::Bind, json!([more, "plc.demo"])).await.unwrap();
    assert_eq!(fake.spec("plc_demo").unwrap().resources.mem_limit.scaled(1), 384);

    // Destroying the VM unbinds its pools, which can be given back to the root pool.
    call(&n, &me, Method::DestroyVM, json!({"vm": "plc_demo"})).await.unwrap();
    call(&n, &me, Method::DestroyPool, json!({"rcap": sub})).await.unwrap();
    call(&n, &me, Method::DestroyPool, json!({"rcap": more})).await.unwrap();
    let back = call(&n, &me, Method::GetRSpec, json!({"rcap": root})).await.unwrap();
    assert!(back["rspec"].as_str().unwrap().contains(r#"mem_limit="1024""#), "{back}");
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), Arc::new(FakeBackend::new()));
    let owner = Caller::Owner;
    let me = slice("plc.demo");

    let e = call(&n, &me, Method::CreatePool, json!([pool_xml(64), "plc.demo"])).await.unwrap_err();
    assert!(e.contains("permission denied"), "{e}");
    let e = call(&n, &owner, Method::CreatePool, json!(["<PoolRSpec>\n<resources mem_limit='x'/>", "plc.demo"]))
        .await
        .unwrap_err();
    assert!(e.starts_with("rspec: line 2, column 1"), "{e}");
    let e = call(&n, &owner, Method::CreatePool, json!([pool_xml(64), "plc.Demo"])).await.unwrap_err();
    assert!(e.starts_with("slice_name:"), "{e}");
    let e = call(&n, &owner, Method::CreatePool, json!([pool_xml(64), "plc.averyveryveryveryverylongname"])).await.unwrap_err();
    assert!(e.contains("32"), "{e}");

    for bad in ["", "zz", "00000000000000000000000000000000", "0123456789abcdef0123456789abcdef0", "'; DROP TABLE pools; --"] {
        let e = call(&n, &me, Method::GetRSpec, json!({ "rcap": bad })).await.unwrap_err();
        assert_eq!(e, "unknown rcap");
    }

    let root = call(&n, &owner, Method::CreatePool, json!([pool_xml(512), "plc.demo"])).await.unwrap()["rcap"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = call(&n, &me, Method::GetRSpec, json!([root])).await.unwrap();
    let e = call(&n, &me, Method::SplitPool, json!([root, slice_xml("plc.demo", 4096)])).await.unwrap_err();
    assert_eq!(e, "rspec: mem_limit: asks for 4096 MB but the pool holds only 512 MB");
    let e = call(&n, &me, Method::SplitPool, json!([root, slice_xml("plc.elsewhere", 64)])).await.unwrap_err();
    assert!(e.contains("outside the pool's slice"), "{e}");
    assert_eq!(call(&n, &me, Method::GetRSpec, json!([root])).await.unwrap(), before);

    // Binding a bare pool is refused with advice; so is binding to a foreign slice.
    let e = call(&n, &me, Method::Bind, json!([root, "plc.demo"])).await.unwrap_err();
    assert!(e.contains("split off a slice RSpec"), "{e}");
    let sub = call(&n, &me, Method::SplitPool, json!([root, slice_xml("plc.demo", 16)])).await.unwrap()["rcap"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = call(&n, &me, Method::Bind, json!([sub, "plc.other"])).await.unwrap_err();
    assert!(e.contains("cannot be bound"), "{e}");
    let e = call(&n, &me, Method::Bind, json!([sub, "plc.demo"])).await.unwrap_err();
    assert!(e.starts_with("mem_limit:") && e.contains("at least 32 MB"), "{e}");
    let e = call(&n, &me, Method::GetRcap, json!(["plc.other"])).await.unwrap_err();
    assert!(e.contains("only ask for its own"), "{e}");
    let e = call(&n, &me, Method::StopVM, json!(["plc_other"])).await.unwrap_err();
    assert!(e.contains("no VM named"), "{e}");
    // More memory than the node has: refused before anything is made.
    let big = call(&n, &owner, Method::CreatePool, json!([pool_xml(100_000_000), "plc.huge"])).await.unwrap()["rcap"]
        .as_str()
        .unwrap()
        .to_owned();
    let huge = Caller::Slice(SliceName::parse("plc.huge").unwrap());
    let sub = call(&n, &huge, Method::SplitPool, json!([big, slice_xml("plc.huge", 90_000_000)])).await.unwrap()["rcap"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = call(&n, &huge, Method::Bind, json!([sub, "plc.huge"])).await.unwrap_err();
    assert!(e.starts_with("mem_limit:") && e.contains("more than this node's memory"), "{e}");
    let e = call(&n, &me, Method::SignCertificate, json!(["x"])).await.unwrap_err();
    assert!(e.contains("no node certificate yet"), "{e}");
}

#[tokio::test]
async fn failed_bind_leaves_no_state_and_state_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::new());
    let (root, sub) = {
        let n = node(dir.path(), fake.clone());
        let root = call(&n, &Caller::Owner, Method::CreatePool, json!([pool_xml(1024), "plc"])).await.unwrap()["rcap"]
            .as_str()
            .unwrap()
            .to_owned();
        let sub = call(&n, &Caller::Owner, Method::SplitPool, json!([root, slice_xml("plc.demo", 256)])).await.unwrap()["rcap"]
            .as_str()
            .unwrap()
            .to_owned();
        fake.fail_next_start();
        let e = call(&n, &Caller::Owner, Method::Bind, json!([sub, "plc.demo"])).await.unwrap_err();
        assert!(e.contains("fake start failure"), "{e}");
        assert!(call(&n, &Caller::Owner, Method::ListVMs, json!({})).await.unwrap()["vms"].as_array().unwrap().is_empty());
        assert!(fake.calls().ends_with(&["destroy plc_demo".to_string()]), "{:?}", fake.calls());
        assert!(!dir.path().join("sockets/plc_demo").exists());
        // The pool is free again: binding now works.
        call(&n, &Caller::Owner, Method::Bind, json!([sub, "plc.demo"])).await.unwrap();
        (root, sub)
    };
    // A new node manager on the same state directory sees the same table.
    let n = node(dir.path(), fake.clone());
    let me = slice("plc.demo");
    let r = call(&n, &me, Method::GetRSpec, json!([sub])).await.unwrap();
    assert!(r["rspec"].as_str().unwrap().contains("VServerSlice"));
    assert!(call(&n, &Caller::Owner, Method::GetRSpec, json!([root])).await.unwrap()["rspec"].as_str().unwrap().contains("768"));
    let vms = call(&n, &me, Method::ListVMs, json!({})).await.unwrap();
    assert_eq!(vms["vms"][0]["vm"], "plc_demo");
    assert_eq!(vms["vms"][0]["state"], "running");
    let report = n.reconcile().await;
    assert!(report.is_empty(), "{report:?}");
}

#[tokio::test]
async fn wire_protocol_limits_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), Arc::new(FakeBackend::new()));
    let sock = dir.path().join("nm.sock");
    let listener = plab_nm::server::bind_socket(&sock, 0o600).unwrap();
    tokio::spawn(plab_nm::server::serve(n.clone(), listener));
    let sock2 = sock.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock2).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut ask = |line: &str| {
            // The server may refuse and close while an oversized line is still being
            // written (EPIPE here); its answer is readable all the same.
            let _ = s.write_all(line.as_bytes()).and_then(|_| s.write_all(b"\n"));
            let mut out = String::new();
            r.read_line(&mut out).unwrap();
            serde_json::from_str::<Value>(&out).unwrap()
        };
        assert_eq!(ask("{not json")["error"]["code"], -32700);
        assert_eq!(ask(r#"{"jsonrpc":"2.0","id":1,"method":"Nope"}"#)["error"]["code"], -32601);
        assert_eq!(ask(r#"{"jsonrpc":"1.0","id":1,"method":"NodeInfo"}"#)["error"]["code"], -32600);
        let batch = ask(r#"[{"jsonrpc":"2.0","id":1,"method":"NodeInfo"},{"jsonrpc":"2.0","method":"NodeInfo"},{"jsonrpc":"2.0","id":2,"method":"GetRSpec","params":{"rcap":"x"}}]"#);
        assert_eq!(batch.as_array().unwrap().len(), 2, "{batch}");
        assert_eq!(batch[1]["error"]["message"], "unknown rcap");
        // Over 1 MiB: refused, connection closed.
        let big = format!(r#"{{"jsonrpc":"2.0","id":3,"method":"CreatePool","params":["{}","plc"]}}"#, "x".repeat(1 << 20));
        let e = ask(&big);
        assert_eq!(e["error"]["code"], -32600);
        assert!(e["error"]["message"].as_str().unwrap().contains("1 MiB"));
        // The daemon still serves new connections.
        let mut c = NmClient::connect(&sock2).unwrap();
        assert_eq!(c.call("NodeInfo", json!({})).unwrap()["vm_types"], json!(["linux-vserver-x86"]));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn slices_get_service_certificates_that_verify_back_to_the_root() {
    use credentials::identity::{AuthorityKind, Identity};
    use credentials::pki::{issue, new_root, verify_pem, Cert, KeyPair, Profile};
    let dir = tempfile::tempdir().unwrap();
    // The chain plab-boot leaves on a booted node: root -> MA -> node 7.
    let rk = KeyPair::generate();
    let root = new_root("plc", &rk, 10).unwrap();
    let mak = KeyPair::generate();
    let ma = issue(&root, &rk, &Identity::Authority(AuthorityKind::Ma, "plc".into()), &mak.public_key_pem(), Profile::Authority, 10).unwrap();
    let nk = KeyPair::generate();
    let node_cert = issue(&ma, &mak, &Identity::Node(7), &nk.public_key_pem(), Profile::Node, 10).unwrap();
    std::fs::write(dir.path().join("node-cert.pem"), format!("{node_cert}{ma}")).unwrap();
    std::fs::write(dir.path().join("node.key"), nk.to_pem()).unwrap();
    let cfg = Config {
        state_dir: dir.path().join("state"),
        node_cert: dir.path().join("node-cert.pem"),
        node_key: dir.path().join("node.key"),
        ..Config::default()
    };
    let mut reg = Registry::new();
    reg.register(Arc::new(FakeBackend::new()));
    let n = Node::open(cfg, reg).unwrap();

    let sk = KeyPair::generate();
    let r = call(&n, &slice("plc.scs"), Method::SignCertificate, json!([sk.public_key_pem()])).await.unwrap();
    let chain = r["certificate"].as_str().unwrap();
    let id = verify_pem(chain, &[Cert::from_pem(&root).unwrap()]).unwrap();
    assert_eq!(id, Identity::Service { slice: SliceName::parse("plc.scs").unwrap(), node: 7 });
    // The owner is no slice; a bad key is named.
    let e = call(&n, &Caller::Owner, Method::SignCertificate, json!([sk.public_key_pem()])).await.unwrap_err();
    assert!(e.contains("certifies the calling slice"), "{e}");
    let e = call(&n, &slice("plc.scs"), Method::SignCertificate, json!(["not a key"])).await.unwrap_err();
    assert!(e.starts_with("public_key:"), "{e}");
}
