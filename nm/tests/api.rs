//! The node manager's API against fake backends, without root: pools, rcaps, who may see
//! what, Bind's all-or-nothing behaviour and its undo paths, reconciliation's repairs,
//! per-VM locking, pool accounting under concurrency, persistence, and the wire
//! protocol's limits.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use jsonrpc::ErrorCode;
use plab_nm::node::reconcile::Repair;
use plab_nm::{Caller, Config, NmClient, NodeManager};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_types::fake::{FakeBackend, Op};
use vm_types::{BackendError, Registry, SliceName, VmState, VmType};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINvd4JWqGILryt7c7j2YX8GNJTHiRXgCbcOQj+vURAyx alice@example.org";
/// A P-256 public key (SubjectPublicKeyInfo PEM) for SignCertificate.
const KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEWdp8GPcGqmPnGMHbMpWaQpGTQHYf\n8QEuQxJG6zV2l9sWVl5tcqXyDM2o3A6oM3+wVRmJMr0Lh5QqJqI0d+ZyBA==\n-----END PUBLIC KEY-----\n";
const KEY2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBk4pK5IYqk/NsoJWXGxbqUZBMzIjzY2JwqXEhyS6H7T bob@example.org";

fn pool_xml(mem: u32) -> String {
    format!(
        r#"<PoolRSpec vm_type="linux-vserver-x86"><resources cpu_share="4" disk_quota="10" mem_limit="{mem}"/></PoolRSpec>"#
    )
}

fn slice_xml(name: &str, mem: u32) -> String {
    format!(
        r#"<VServerSlice name="{name}"><resources cpu_share="1" disk_quota="1" mem_limit="{mem}"/><key>{KEY}</key><bootscript>echo hi</bootscript></VServerSlice>"#
    )
}

fn cfg(dir: &std::path::Path) -> Config {
    Config { state_dir: dir.to_path_buf(), vm_prefix: "10.99.0.0/24".parse().unwrap(), ..Config::default() }
}

fn node(dir: &std::path::Path, fake: Arc<FakeBackend>) -> Arc<NodeManager> {
    let mut reg = Registry::new();
    reg.register(fake);
    NodeManager::open(cfg(dir), reg).unwrap()
}

fn slice(s: &str) -> Caller {
    Caller::Slice(SliceName::parse(s).unwrap())
}

/// A call's result, or its error code and message.
async fn call(n: &Arc<NodeManager>, c: &Caller, m: &str, p: Value) -> Result<Value, (ErrorCode, String)> {
    n.call(c, m, p).await.map_err(|e| (e.code, e.message))
}

async fn rcap(n: &Arc<NodeManager>, c: &Caller, m: &str, p: Value) -> String {
    call(n, c, m, p).await.unwrap()["rcap"].as_str().unwrap().to_owned()
}

/// Owner pool for `s`, and a sub-pool split off it for `s`'s VM.
async fn bound_vm(n: &Arc<NodeManager>, s: &str, mem: u32) -> (String, String) {
    let root = rcap(n, &Caller::Owner, "CreatePool", json!([pool_xml(1024), s])).await;
    let sub = rcap(n, &slice(s), "SplitPool", json!([root, slice_xml(s, mem)])).await;
    call(n, &slice(s), "Bind", json!([sub, s])).await.unwrap();
    (root, sub)
}

#[tokio::test]
async fn owner_creates_slice_splits_and_binds() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::new());
    let n = node(dir.path(), fake.clone());
    let root = rcap(&n, &Caller::Owner, "CreatePool", json!({"rspec": pool_xml(1024), "slice_name": "plc.demo"})).await;
    assert_eq!(root.len(), 32);

    // The slice finds its pool, reads it, splits and binds.
    let me = slice("plc.demo");
    assert_eq!(call(&n, &me, "GetRcap", json!({})).await.unwrap()["rcaps"], json!([root]));
    assert_eq!(call(&n, &slice("plc.other"), "GetRcap", json!({})).await.unwrap()["rcaps"], json!([]));
    let sub = rcap(&n, &me, "SplitPool", json!([root, slice_xml("plc.demo", 256)])).await;
    let left = call(&n, &me, "GetRSpec", json!({"rcap": root})).await.unwrap();
    assert!(left["rspec"].as_str().unwrap().contains(r#"mem_limit="768""#), "{left}");
    let vm = call(&n, &me, "Bind", json!({"rcap": sub, "slice_name": "plc.demo"})).await.unwrap();
    assert_eq!(vm["vm"], "plc_demo");
    assert_eq!(vm["address"], "10.99.0.2");
    assert_eq!(vm["wanted"], "running");
    assert_eq!(fake.calls_of(Op::Create), ["plc_demo"]);
    assert_eq!(fake.calls_of(Op::Start), ["plc_demo"]);
    assert_eq!(fake.spec("plc_demo").unwrap().keys.len(), 1);

    // A second pool adds its resources to the running VM.
    let more = rcap(&n, &me, "SplitPool", json!([root, slice_xml("plc.demo", 128)])).await;
    call(&n, &me, "Bind", json!([more, "plc.demo"])).await.unwrap();
    assert_eq!(fake.spec("plc_demo").unwrap().resources.mem_limit.scaled(1), 384);
    assert_eq!(fake.calls_of(Op::Update), ["plc_demo"]);

    // Destroying the VM unbinds its pools, which can be given back to the root pool.
    call(&n, &me, "DestroyVM", json!({"vm": "plc_demo"})).await.unwrap();
    call(&n, &me, "DestroyPool", json!({"rcap": sub})).await.unwrap();
    call(&n, &me, "DestroyPool", json!({"rcap": more})).await.unwrap();
    let back = call(&n, &me, "GetRSpec", json!({"rcap": root})).await.unwrap();
    assert!(back["rspec"].as_str().unwrap().contains(r#"mem_limit="1024""#), "{back}");
}

#[tokio::test]
async fn bad_input_is_refused_with_its_code_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), Arc::new(FakeBackend::new()));
    let owner = Caller::Owner;
    let me = slice("plc.demo");

    let e = call(&n, &me, "CreatePool", json!([pool_xml(64), "plc.demo"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::PERMISSION_DENIED, "{e:?}");
    let e = call(&n, &owner, "CreatePool", json!(["<PoolRSpec>\n<resources mem_limit='x'/>", "plc.demo"]))
        .await
        .unwrap_err();
    assert_eq!(e.0, ErrorCode::INVALID_RSPEC);
    assert!(e.1.starts_with("rspec: line 2, column 1"), "{e:?}");
    let e = call(&n, &owner, "CreatePool", json!([pool_xml(64), "plc.Demo"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::INVALID_PARAMS);
    assert!(e.1.starts_with("slice_name:"), "{e:?}");
    let e =
        call(&n, &owner, "CreatePool", json!([pool_xml(64), "plc.averyveryveryveryverylongname"])).await.unwrap_err();
    assert!(e.1.contains("32"), "{e:?}");
    let e = call(&n, &owner, "CreatePool", json!({"rspec": pool_xml(64), "slice": "plc"})).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::INVALID_PARAMS);
    let e = call(&n, &owner, "NoSuchMethod", json!({})).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::METHOD_NOT_FOUND);

    for bad in
        ["", "zz", "00000000000000000000000000000000", "0123456789abcdef0123456789abcdef0", "'; DROP TABLE pools; --"]
    {
        let e = call(&n, &me, "GetRSpec", json!({ "rcap": bad })).await.unwrap_err();
        assert_eq!(e, (ErrorCode::UNKNOWN_RCAP, "unknown rcap".to_string()));
    }

    let root = rcap(&n, &owner, "CreatePool", json!([pool_xml(512), "plc.demo"])).await;
    let before = call(&n, &me, "GetRSpec", json!([root])).await.unwrap();
    let e = call(&n, &me, "SplitPool", json!([root, slice_xml("plc.demo", 4096)])).await.unwrap_err();
    assert_eq!(
        e,
        (ErrorCode::RESOURCES, "rspec: mem_limit: asks for 4096 MB but the pool holds only 512 MB".to_string())
    );
    let e = call(&n, &me, "SplitPool", json!([root, slice_xml("plc.elsewhere", 64)])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::PERMISSION_DENIED);
    assert!(e.1.contains("not the pool's slice"), "{e:?}");
    assert_eq!(call(&n, &me, "GetRSpec", json!([root])).await.unwrap(), before);

    // Binding a bare pool is refused with advice; so is binding to a foreign slice.
    let e = call(&n, &me, "Bind", json!([root, "plc.demo"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::INVALID_RSPEC);
    assert!(e.1.contains("split off a slice RSpec"), "{e:?}");
    let sub = rcap(&n, &me, "SplitPool", json!([root, slice_xml("plc.demo", 16)])).await;
    let e = call(&n, &me, "Bind", json!([sub, "plc.other"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::PERMISSION_DENIED);
    assert!(e.1.contains("cannot be bound"), "{e:?}");
    let e = call(&n, &me, "Bind", json!([sub, "plc.demo"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::RESOURCES);
    assert!(e.1.starts_with("mem_limit:") && e.1.contains("at least 32 MB"), "{e:?}");
    let e = call(&n, &me, "GetRcap", json!(["plc.other"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::PERMISSION_DENIED);
    assert!(e.1.contains("only ask for its own"), "{e:?}");
    // More memory than the node has: refused before anything is made.
    let big = rcap(&n, &owner, "CreatePool", json!([pool_xml(100_000_000), "plc.huge"])).await;
    let huge = slice("plc.huge");
    let sub = rcap(&n, &huge, "SplitPool", json!([big, slice_xml("plc.huge", 90_000_000)])).await;
    let e = call(&n, &huge, "Bind", json!([sub, "plc.huge"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::RESOURCES);
    assert!(e.1.starts_with("mem_limit:") && e.1.contains("more than this node's memory"), "{e:?}");
    let e = call(&n, &me, "SignCertificate", json!(["x"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::INTERNAL);
    assert!(e.1.contains("no node certificate yet"), "{e:?}");
    assert!(call(&n, &owner, "ListVMs", json!({})).await.unwrap()["vms"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn the_node_managers_own_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), Arc::new(FakeBackend::new()));
    let (owner, me) = (Caller::Owner, slice("plc.demo"));
    let (root, sub) = bound_vm(&n, "plc.demo", 64).await;
    // 1. A bound pool cannot be split.
    let e = call(&n, &me, "SplitPool", json!([sub, slice_xml("plc.demo", 32)])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::CONFLICT, "{e:?}");
    assert!(e.1.contains("bound to VM plc_demo"), "{e:?}");
    // 2. A pool for one VM type cannot give another.
    let kvm = format!(
        r#"<KvmSlice name="plc.demo"><resources cpu_share="1" disk_quota="1" mem_limit="64"/><key>{KEY}</key></KvmSlice>"#
    );
    let e = call(&n, &me, "SplitPool", json!([root, kvm])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::INVALID_RSPEC, "{e:?}");
    assert!(e.1.contains("not allowed by the pool"), "{e:?}");
    // 3. A bound pool cannot be destroyed.
    let e = call(&n, &me, "DestroyPool", json!([sub])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::CONFLICT, "{e:?}");
    assert!(e.1.contains("destroy the VM first"), "{e:?}");
    // 4. A pool that has children cannot be destroyed.
    let e = call(&n, &me, "DestroyPool", json!([root])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::CONFLICT, "{e:?}");
    assert!(e.1.contains("split off this one"), "{e:?}");
    // 5. A bound pool cannot be bound again.
    let e = call(&n, &me, "Bind", json!([sub, "plc.demo"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::CONFLICT, "{e:?}");
    assert!(e.1.contains("already bound"), "{e:?}");
    // 6. A pool of another VM type cannot be added to an existing VM.
    let untyped = rcap(
        &n,
        &owner,
        "CreatePool",
        json!([r#"<PoolRSpec><resources cpu_share="4" disk_quota="10" mem_limit="512"/></PoolRSpec>"#, "plc.demo"]),
    )
    .await;
    let kvm_sub = rcap(&n, &me, "SplitPool", json!([untyped, kvm])).await;
    let e = call(&n, &me, "Bind", json!([kvm_sub, "plc.demo"])).await.unwrap_err();
    assert!(e.0 == ErrorCode::UNSUPPORTED || e.0 == ErrorCode::CONFLICT, "{e:?}");
    // 7. The node-private prefix running out.
    let small = Config { vm_prefix: "10.98.0.0/30".parse().unwrap(), ..cfg(&dir.path().join("small")) };
    let mut reg = Registry::new();
    reg.register(Arc::new(FakeBackend::new()));
    let n2 = NodeManager::open(small, reg).unwrap();
    bound_vm(&n2, "plc.one", 64).await;
    let root2 = rcap(&n2, &owner, "CreatePool", json!([pool_xml(1024), "plc.two"])).await;
    let sub2 = rcap(&n2, &slice("plc.two"), "SplitPool", json!([root2, slice_xml("plc.two", 64)])).await;
    let e = call(&n2, &slice("plc.two"), "Bind", json!([sub2, "plc.two"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::RESOURCES, "{e:?}");
    assert!(e.1.contains("no address left"), "{e:?}");
    // Orphans and CleanOrphans are the owner's.
    for m in ["Orphans", "CleanOrphans"] {
        let e = call(&n, &me, m, json!({})).await.unwrap_err();
        assert_eq!(e.0, ErrorCode::PERMISSION_DENIED, "{m}: {e:?}");
    }
}

#[tokio::test]
async fn a_slice_cannot_see_or_touch_another_slices_vm() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::new());
    let n = node(dir.path(), fake.clone());
    bound_vm(&n, "plc.demo", 64).await;
    bound_vm(&n, "plc.other", 64).await;
    let me = slice("plc.demo");
    for m in ["StopVM", "DestroyVM", "VmStatus", "VmLog", "StartVM"] {
        let e = call(&n, &me, m, json!({"vm": "plc_other"})).await.unwrap_err();
        assert_eq!(e, (ErrorCode::NOT_FOUND, "vm: no VM named \"plc_other\" that you may see".to_string()), "{m}");
    }
    // The same answer as for a VM that does not exist: nothing is learnt.
    let e = call(&n, &me, "VmStatus", json!({"vm": "plc_nobody"})).await.unwrap_err();
    assert_eq!(e.1, "vm: no VM named \"plc_nobody\" that you may see");
    let vms = call(&n, &me, "ListVMs", json!({})).await.unwrap();
    let names: Vec<&str> = vms["vms"].as_array().unwrap().iter().map(|v| v["vm"].as_str().unwrap()).collect();
    assert_eq!(names, ["plc_demo"]);
    let pools = call(&n, &me, "ListPools", json!({})).await.unwrap();
    assert!(pools["pools"].as_array().unwrap().iter().all(|p| p["slice"] == "plc.demo"), "{pools}");
    // The other VM was never touched.
    assert!(fake
        .calls()
        .iter()
        .all(|c| c.vm != "plc_other" || matches!(c.op, Op::Create | Op::Start | Op::Status | Op::List)));
    assert_eq!(call(&n, &Caller::Owner, "VmStatus", json!(["plc_other"])).await.unwrap()["state"], "running");
}

#[tokio::test]
async fn a_failed_bind_leaves_no_state_and_state_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::new());
    let (root, sub) = {
        let n = node(dir.path(), fake.clone());
        let root = rcap(&n, &Caller::Owner, "CreatePool", json!([pool_xml(1024), "plc"])).await;
        let sub = rcap(&n, &Caller::Owner, "SplitPool", json!([root, slice_xml("plc.demo", 256)])).await;
        fake.fail_next_start();
        let e = call(&n, &Caller::Owner, "Bind", json!([sub, "plc.demo"])).await.unwrap_err();
        assert_eq!(e.0, ErrorCode::BACKEND);
        assert!(e.1.contains("fake start failure"), "{e:?}");
        assert!(call(&n, &Caller::Owner, "ListVMs", json!({})).await.unwrap()["vms"].as_array().unwrap().is_empty());
        assert_eq!(fake.calls().last().map(|c| c.op), Some(Op::Destroy));
        assert!(!dir.path().join("sockets/plc_demo").exists());
        // The pool is free again: binding now works.
        call(&n, &Caller::Owner, "Bind", json!([sub, "plc.demo"])).await.unwrap();
        (root, sub)
    };
    // A new node manager on the same state directory sees the same table.
    let n = node(dir.path(), fake.clone());
    let me = slice("plc.demo");
    let r = call(&n, &me, "GetRSpec", json!([sub])).await.unwrap();
    assert!(r["rspec"].as_str().unwrap().contains("VServerSlice"));
    assert!(call(&n, &Caller::Owner, "GetRSpec", json!([root])).await.unwrap()["rspec"]
        .as_str()
        .unwrap()
        .contains("768"));
    let vms = call(&n, &me, "ListVMs", json!({})).await.unwrap();
    assert_eq!(vms["vms"][0]["vm"], "plc_demo");
    assert_eq!(vms["vms"][0]["state"], "running");
    let starts = fake.calls_of(Op::Start).len();
    assert_eq!(n.reconcile().await, vec![]);
    assert_eq!(fake.calls_of(Op::Start).len(), starts, "a consistent node is left alone");
}

#[tokio::test]
async fn a_failed_update_or_cleanup_is_undone_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::new());
    let n = node(dir.path(), fake.clone());
    let me = slice("plc.demo");
    let (root, _) = bound_vm(&n, "plc.demo", 64).await;
    // Adding a pool whose backend update fails changes nothing, and the pool stays free.
    let more = rcap(&n, &me, "SplitPool", json!([root, slice_xml("plc.demo", 32)])).await;
    fake.fail(Op::Update, 1, |_| BackendError::Invalid("disk_quota: the disk cannot grow".into()));
    let e = call(&n, &me, "Bind", json!([more, "plc.demo"])).await.unwrap_err();
    assert_eq!(e, (ErrorCode::RESOURCES, "Bind: disk_quota: the disk cannot grow".to_string()));
    let st = call(&n, &me, "VmStatus", json!(["plc_demo"])).await.unwrap();
    assert_eq!((st["resources"]["mem_limit"].as_str(), st["pools"].as_u64()), (Some("64 MB"), Some(1)));
    let pools = call(&n, &me, "ListPools", json!({})).await.unwrap();
    assert!(
        pools["pools"].as_array().unwrap().iter().any(|p| p["rcap"] == more.as_str() && p["vm"].is_null()),
        "{pools}"
    );
    // ... and binds once the backend recovers.
    call(&n, &me, "Bind", json!([more, "plc.demo"])).await.unwrap();
    assert_eq!(call(&n, &me, "VmStatus", json!(["plc_demo"])).await.unwrap()["resources"]["mem_limit"], "96 MB");

    // DestroyVM failing in the backend keeps the record.
    fake.fail(Op::Destroy, 1, |n| BackendError::Command { command: format!("delete {n}"), message: "busy".into() });
    let e = call(&n, &me, "DestroyVM", json!(["plc_demo"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::BACKEND);
    assert_eq!(call(&n, &me, "VmStatus", json!(["plc_demo"])).await.unwrap()["vm"], "plc_demo");

    // A Bind whose start fails and whose cleanup fails too forgets the VM; the backend's
    // leftover is then an orphan, reported and removable.
    let other = rcap(&n, &Caller::Owner, "CreatePool", json!([pool_xml(512), "plc.x"])).await;
    let xs = rcap(&n, &slice("plc.x"), "SplitPool", json!([other, slice_xml("plc.x", 64)])).await;
    fake.fail_next_start();
    fake.fail(Op::Destroy, 1, |_| BackendError::Internal("cleanup failed".into()));
    call(&n, &slice("plc.x"), "Bind", json!([xs, "plc.x"])).await.unwrap_err();
    let o = call(&n, &Caller::Owner, "Orphans", json!({})).await.unwrap();
    assert_eq!(o["orphans"], json!([{"vm": "plc_x", "vm_type": "linux-vserver-x86"}]));
    assert_eq!(call(&n, &Caller::Owner, "CleanOrphans", json!({})).await.unwrap()["removed"], json!(["plc_x"]));
    assert_eq!(call(&n, &Caller::Owner, "Orphans", json!({})).await.unwrap()["orphans"], json!([]));
}

#[tokio::test]
async fn a_failed_store_write_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), Arc::new(FakeBackend::new()));
    let root = rcap(&n, &Caller::Owner, "CreatePool", json!([pool_xml(1024), "plc.demo"])).await;
    // Another writer makes every insert and update of pools fail, as a full disk would.
    let db = rusqlite::Connection::open(dir.path().join("nm.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER full1 BEFORE INSERT ON pools BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;
         CREATE TRIGGER full2 BEFORE UPDATE ON pools BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    )
    .unwrap();
    let me = slice("plc.demo");
    let before = call(&n, &me, "ListPools", json!({})).await.unwrap();
    let e = call(&n, &me, "SplitPool", json!([root, slice_xml("plc.demo", 64)])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::INTERNAL);
    assert!(e.1.contains("disk is full") && e.1.contains("nothing was changed"), "{e:?}");
    let e = call(&n, &Caller::Owner, "CreatePool", json!([pool_xml(64), "plc.demo"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::INTERNAL);
    assert_eq!(call(&n, &me, "ListPools", json!({})).await.unwrap(), before);
    db.execute_batch("DROP TRIGGER full1; DROP TRIGGER full2;").unwrap();
    rcap(&n, &me, "SplitPool", json!([root, slice_xml("plc.demo", 64)])).await;
}

#[tokio::test]
async fn reconcile_repairs_every_kind_of_drift() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::new());
    {
        let n = node(dir.path(), fake.clone());
        bound_vm(&n, "plc.died", 64).await;
        bound_vm(&n, "plc.stopped", 64).await;
        bound_vm(&n, "plc.broken", 64).await;
        bound_vm(&n, "plc.fine", 64).await;
        call(&n, &Caller::Owner, "StopVM", json!(["plc_stopped"])).await.unwrap();
    }
    // Meanwhile: one VM died, the stopped one was started behind the node manager's back,
    // one will not start, and a VM with no record appeared.
    fake.set_state("plc_died", VmState::Stopped);
    fake.set_state("plc_broken", VmState::Stopped);
    fake.set_state("plc_stopped", VmState::Running);
    let spec = fake.spec("plc_fine").unwrap();
    fake.insert(vm_types::VmSpec { name: "plc_stray".into(), ..spec }, VmState::Running);
    // A Bind interrupted by a crash: its record says creating.
    let db = rusqlite::Connection::open(dir.path().join("nm.db")).unwrap();
    db.execute("UPDATE vms SET state = 'creating' WHERE name = 'plc_fine'", []).unwrap();
    fake.fail(Op::Start, 1, |_| BackendError::Command { command: "start".into(), message: "no such image".into() });

    let n = node(dir.path(), fake.clone());
    let mut report = n.reconcile().await;
    report.sort_by_key(|r| r.to_string());
    // Repairs run in name order: plc_broken is the first to start, and fails.
    assert_eq!(
        report,
        vec![
            Repair::Orphans(vec!["plc_stray".into()]),
            Repair::Failed("plc_broken: should run but failed to start: start failed: no such image".into()),
            Repair::Restarted("plc_died".into()),
            Repair::RemovedHalfMade("plc_fine".into()),
            Repair::Stopped("plc_stopped".into()),
        ]
    );
    assert_eq!(fake.status_of("plc_died"), VmState::Running);
    assert_eq!(fake.status_of("plc_stopped"), VmState::Stopped);
    assert_eq!(fake.status_of("plc_fine"), VmState::Missing);
    assert!(call(&n, &Caller::Owner, "VmStatus", json!(["plc_fine"])).await.is_err());
    // The wanted state survives: a VM stopped on purpose stays stopped across restarts.
    let n = node(dir.path(), fake.clone());
    let starts = fake.calls_of(Op::Start).len();
    let report = n.reconcile().await;
    assert!(!report.iter().any(|r| matches!(r, Repair::Restarted(v) if v == "plc_stopped")), "{report:?}");
    assert_eq!(fake.calls_of(Op::Start).len(), starts + 1, "only plc_broken is tried again: {report:?}");
}

/// A node offering containers (`vs`) and KVM guests (`kvm`), with a root pool for `plc`
/// large enough for a dozen small VMs.
async fn two_types(dir: &std::path::Path, vs: &Arc<FakeBackend>, kvm: &Arc<FakeBackend>) -> (Arc<NodeManager>, String) {
    let mut reg = Registry::new();
    reg.register(vs.clone());
    reg.register(kvm.clone());
    let n = NodeManager::open(cfg(dir), reg).unwrap();
    let root = rcap(
        &n,
        &Caller::Owner,
        "CreatePool",
        json!([r#"<PoolRSpec><resources cpu_share="40" disk_quota="100" mem_limit="4096"/></PoolRSpec>"#, "plc"]),
    )
    .await;
    (n, root)
}

#[tokio::test]
async fn two_vm_types_on_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let (vs, kvm) =
        (Arc::new(FakeBackend::of(VmType::LinuxVserverX86)), Arc::new(FakeBackend::of(VmType::LinuxKvmX86)));
    let (n, root) = two_types(dir.path(), &vs, &kvm).await;
    let a = rcap(&n, &Caller::Owner, "SplitPool", json!([root, slice_xml("plc.a", 64)])).await;
    let k = format!(
        r#"<KvmSlice name="plc.k"><resources cpu_share="1" disk_quota="1" mem_limit="64"/><key>{KEY2}</key></KvmSlice>"#
    );
    let b = rcap(&n, &Caller::Owner, "SplitPool", json!([root, k])).await;
    call(&n, &Caller::Owner, "Bind", json!([a, "plc.a"])).await.unwrap();
    assert_eq!(call(&n, &Caller::Owner, "Bind", json!([b, "plc.k"])).await.unwrap()["vm_type"], "linux-kvm-x86");
    assert_eq!(
        (vs.calls_of(Op::Create), kvm.calls_of(Op::Create)),
        (vec!["plc_a".to_string()], vec!["plc_k".to_string()])
    );
    let info = call(&n, &Caller::Owner, "NodeInfo", json!({})).await.unwrap();
    assert_eq!(info["vm_types"], json!(["linux-vserver-x86", "linux-kvm-x86"]));
    assert_eq!(info["vms"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_boot_holds_up_only_its_own_vm() {
    let dir = tempfile::tempdir().unwrap();
    let (vs, kvm) =
        (Arc::new(FakeBackend::of(VmType::LinuxVserverX86)), Arc::new(FakeBackend::of(VmType::LinuxKvmX86)));
    kvm.delay(Op::Start, Duration::from_secs(3));
    let (n, root) = two_types(dir.path(), &vs, &kvm).await;
    let k = format!(
        r#"<KvmSlice name="plc.k"><resources cpu_share="1" disk_quota="1" mem_limit="64"/><key>{KEY2}</key></KvmSlice>"#
    );
    let kp = rcap(&n, &Caller::Owner, "SplitPool", json!([root, k])).await;
    let mut vps = Vec::new();
    for i in 0..10 {
        vps.push(rcap(&n, &Caller::Owner, "SplitPool", json!([root, slice_xml(&format!("plc.c{i}"), 64)])).await);
    }
    let t0 = Instant::now();
    let n2 = n.clone();
    let guest =
        tokio::spawn(
            async move { call(&n2, &Caller::Owner, "Bind", json!([kp, "plc.k"])).await.map(|_| Instant::now()) },
        );
    // Wait until the guest's start is under way, then bind ten containers beside it.
    while kvm.calls_of(Op::Start).is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut containers = Vec::new();
    for (i, p) in vps.into_iter().enumerate() {
        let n2 = n.clone();
        containers.push(tokio::spawn(async move {
            call(&n2, &Caller::Owner, "Bind", json!([p, format!("plc.c{i}")])).await.map(|_| Instant::now())
        }));
    }
    let mut last_container = t0;
    for c in containers {
        last_container = last_container.max(c.await.unwrap().unwrap());
    }
    assert!(!guest.is_finished(), "all ten container Binds finished while the guest was still booting");
    let guest_done = guest.await.unwrap().unwrap();
    assert!(last_container < guest_done);
    assert_eq!(vs.calls_of(Op::Start).len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_is_never_spent_twice() {
    // Bind (adding to a running VM, whose backend update takes a while) races SplitPool and
    // DestroyPool of the same rcap from other tasks: exactly one of them gets the pool.
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::new());
    let n = node(dir.path(), fake.clone());
    let me = slice("plc.demo");
    let big = r#"<PoolRSpec><resources cpu_share="10" disk_quota="10" mem_limit="1024"/></PoolRSpec>"#;
    let root = rcap(&n, &Caller::Owner, "CreatePool", json!([big, "plc.demo"])).await;
    let first = rcap(&n, &me, "SplitPool", json!([root, slice_xml("plc.demo", 64)])).await;
    call(&n, &me, "Bind", json!([first, "plc.demo"])).await.unwrap();
    fake.delay(Op::Update, Duration::from_millis(300));
    for round in 0..5 {
        let p = rcap(&n, &me, "SplitPool", json!([root, slice_xml("plc.demo", 32)])).await;
        let (n1, n2, n3) = (n.clone(), n.clone(), n.clone());
        let (p1, p2, p3) = (p.clone(), p.clone(), p.clone());
        let bind =
            tokio::spawn(async move { call(&n1, &slice("plc.demo"), "Bind", json!([p1, "plc.demo"])).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let split = tokio::spawn(async move {
            call(&n2, &slice("plc.demo"), "SplitPool", json!([p2, slice_xml("plc.demo", 32)])).await.is_ok()
        });
        let destroy =
            tokio::spawn(async move { call(&n3, &slice("plc.demo"), "DestroyPool", json!([p3])).await.is_ok() });
        let wins = [bind.await.unwrap(), split.await.unwrap(), destroy.await.unwrap()];
        assert_eq!(wins, [true, false, false], "round {round}");
    }
    // Everything adds up: the root holds what was never handed out.
    let st = call(&n, &me, "VmStatus", json!(["plc_demo"])).await.unwrap();
    assert_eq!(st["resources"]["mem_limit"], "224 MB", "64 + 5 x 32");
    let left = call(&n, &me, "GetRSpec", json!([root])).await.unwrap();
    assert!(left["rspec"].as_str().unwrap().contains(r#"mem_limit="800""#), "{left}");
}

#[tokio::test]
async fn wire_protocol_limits_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Whoever runs the test is the owner (root need not run it).
    let owner = Config { owner_uids: vec![nix::unistd::getuid().as_raw()], ..cfg(dir.path()) };
    let mut reg = Registry::new();
    reg.register(Arc::new(FakeBackend::new()));
    let n = NodeManager::open(owner, reg).unwrap();
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
        assert_eq!(batch[1]["error"], json!({"code": 6, "message": "unknown rcap"}));
        // Over 1 MiB: refused, connection closed.
        let big = format!(r#"{{"jsonrpc":"2.0","id":3,"method":"CreatePool","params":["{}","plc"]}}"#, "x".repeat(1 << 20));
        let e = ask(&big);
        assert_eq!(e["error"]["code"], -32600);
        assert!(e["error"]["message"].as_str().unwrap().contains("longer than"));
        // The daemon still serves new connections, typed.
        let mut c = NmClient::connect(&sock2).unwrap();
        let info = c.call::<plab_nm::api::calls::NodeInfo>(&jsonrpc::NoParams {}).unwrap();
        assert_eq!(info.vm_types, [VmType::LinuxVserverX86]);
        // One caller may hold only so many connections; the next gets told why.
        let held: Vec<_> = (0..plab_nm::api::MAX_CONNECTIONS_PER_CALLER - 1)
            .map(|_| std::os::unix::net::UnixStream::connect(&sock2).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut one_more = BufReader::new(std::os::unix::net::UnixStream::connect(&sock2).unwrap());
        let mut line = String::new();
        one_more.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["code"], 11, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("too many connections"), "{v}");
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        let mut c = NmClient::connect(&sock2).unwrap();
        assert!(c.call_value("NodeInfo", json!({})).is_ok(), "slots come back when connections close");
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
    let (ma, mak) = credentials::pki::new_authority(&root, &rk, AuthorityKind::Ma, "plc", 10).unwrap();
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
    let n = NodeManager::open(cfg, reg).unwrap();

    let sk = KeyPair::generate();
    let r = call(&n, &slice("plc.scs"), "SignCertificate", json!([sk.public_key_pem()])).await.unwrap();
    let chain = r["certificate"].as_str().unwrap();
    let id = verify_pem(chain, &[Cert::from_pem(&root).unwrap()]).unwrap();
    assert_eq!(id, Identity::Service { slice: SliceName::parse("plc.scs").unwrap(), node: 7 });
    // The owner is no slice; a bad key is named.
    let e = call(&n, &Caller::Owner, "SignCertificate", json!([sk.public_key_pem()])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::PERMISSION_DENIED);
    assert!(e.1.contains("certifies the calling slice"), "{e:?}");
    // The owner certifies a local service (slice_uids) for a daemon it runs as root; no
    // other slice, and a slice only itself.
    let r =
        call(&n, &Caller::Owner, "SignCertificate", json!({"public_key": sk.public_key_pem(), "slice": "plc.audit"}))
            .await
            .unwrap();
    let id = verify_pem(r["certificate"].as_str().unwrap(), &[Cert::from_pem(&root).unwrap()]).unwrap();
    assert_eq!(id, Identity::Service { slice: SliceName::parse("plc.audit").unwrap(), node: 7 });
    for (caller, for_slice, says) in [
        (Caller::Owner, "plc.scs", "not one of this node's root-run services"),
        (slice("plc.scs"), "plc.audit", "only as itself"),
    ] {
        let e = call(&n, &caller, "SignCertificate", json!({"public_key": sk.public_key_pem(), "slice": for_slice}))
            .await
            .unwrap_err();
        assert_eq!(e.0, ErrorCode::PERMISSION_DENIED);
        assert!(e.1.contains(says), "{e:?}");
    }
    let e = call(
        &n,
        &Caller::Owner,
        "SignCertificate",
        json!({"public_key": sk.public_key_pem(), "slice": "plc.audit", "server": true}),
    )
    .await
    .unwrap_err();
    assert!(e.1.starts_with("server:"), "{e:?}");
    let e = call(&n, &slice("plc.scs"), "SignCertificate", json!(["not a key"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::INVALID_PARAMS);
    assert!(e.1.starts_with("public_key:"), "{e:?}");
}

#[tokio::test]
async fn a_database_written_by_release_0_1_0_is_migrated_losing_nothing() {
    // nm-0.1.0.sql is `sqlite3 nm.db .dump` of a state directory plab-nm 0.1.0 wrote:
    // a root pool, two slice pools split off it, one bound to a stopped container VM.
    let dir = tempfile::tempdir().unwrap();
    let db = rusqlite::Connection::open(dir.path().join("nm.db")).unwrap();
    db.execute_batch(include_str!("fixtures/nm-0.1.0.sql")).unwrap();
    let v: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, 0, "0.1.0 wrote no schema version");
    drop(db);
    let fake = Arc::new(FakeBackend::new());
    let n = node(dir.path(), fake);
    let db = rusqlite::Connection::open(dir.path().join("nm.db")).unwrap();
    let v: usize = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, plab_nm::store::schema_version());
    let o = Caller::Owner;
    let pools = call(&n, &o, "ListPools", json!({})).await.unwrap();
    let pools = pools["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 3);
    assert_eq!(pools[0]["resources"]["mem_limit"], "768 MB");
    assert_eq!((pools[1]["vm"].as_str(), pools[2]["vm"].as_str()), (Some("plc_fx_demo"), None));
    let st = call(&n, &o, "VmStatus", json!(["plc_fx_demo"])).await.unwrap();
    assert_eq!(
        (st["wanted"].as_str(), st["address"].as_str(), st["keys"].as_u64()),
        (Some("stopped"), Some("10.213.0.2"), Some(1))
    );
    // The rcaps still work, and the pools still split.
    let r = call(&n, &slice("plc.fx"), "GetRSpec", json!(["80430f969de55b7b098f4287ef89db12"])).await.unwrap();
    assert!(r["rspec"].as_str().unwrap().contains(r#"vm_type="linux-vserver-x86""#));
    // Release 0.1.0 let a pool's slice act for the names below it; now only a pool that
    // names an authority does (the owner can still split for anyone).
    let e = call(
        &n,
        &slice("plc.fx"),
        "SplitPool",
        json!(["80430f969de55b7b098f4287ef89db12", slice_xml("plc.fx.two", 64)]),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, ErrorCode::PERMISSION_DENIED, "{e:?}");
    rcap(&n, &Caller::Owner, "SplitPool", json!(["80430f969de55b7b098f4287ef89db12", slice_xml("plc.fx.two", 64)]))
        .await;
}

/// The owner's pool for `service`, designating `authority` (as an owner script makes it).
async fn service_pool(n: &Arc<NodeManager>, service: &str, authority: &str) -> String {
    let xml = format!(
        r#"<PoolRSpec vm_type="linux-vserver-x86"><resources cpu_share="8" disk_quota="20" mem_limit="2048"/><slice_authority name="{authority}" url="https://sa.test/rpc"/></PoolRSpec>"#
    );
    rcap(n, &Caller::Owner, "CreatePool", json!([xml, service])).await
}

fn names(v: &Value, list: &str, field: &str) -> Vec<String> {
    v[list].as_array().unwrap().iter().map(|x| x[field].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_slice_never_controls_a_slice_whose_name_extends_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::new());
    let n = node(dir.path(), fake.clone());
    let (root, _) = bound_vm(&n, "plc.a", 64).await;
    bound_vm(&n, "plc.a.b", 64).await;
    let a = slice("plc.a");
    for m in ["StopVM", "DestroyVM", "VmStatus", "VmLog", "StartVM"] {
        let e = call(&n, &a, m, json!(["plc_a_b"])).await.unwrap_err();
        assert_eq!(e.0, ErrorCode::NOT_FOUND, "{m}: {e:?}");
    }
    let e = call(&n, &a, "UpdateVM", json!(["plc_a_b", [KEY2], null])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::NOT_FOUND, "{e:?}");
    assert_eq!(names(&call(&n, &a, "ListVMs", json!({})).await.unwrap(), "vms", "vm"), ["plc_a"]);
    let pools = call(&n, &a, "ListPools", json!({})).await.unwrap();
    assert!(pools["pools"].as_array().unwrap().iter().all(|p| p["slice"] == "plc.a"), "{pools}");
    // Nor can it make plc.a.b's VM (or add its keys to it) from its own pool...
    let e = call(&n, &a, "SplitPool", json!([root, slice_xml("plc.a.b", 32)])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::PERMISSION_DENIED, "{e:?}");
    assert!(e.1.contains("names no authority above it"), "{e:?}");
    // ...or give itself an authority.
    let xml =
        r#"<PoolRSpec><resources mem_limit="64"/><slice_authority name="plc.a" url="https://x.test/"/></PoolRSpec>"#;
    let e = call(&n, &a, "SplitPool", json!([root, xml])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::PERMISSION_DENIED, "{e:?}");
    assert!(e.1.contains("only the owner designates authorities"), "{e:?}");
    assert!(fake.calls().iter().all(|c| c.vm != "plc_a_b" || matches!(c.op, Op::Create | Op::Start | Op::Status)));
}

#[tokio::test]
async fn a_designated_service_acts_for_the_slices_below_its_authority_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::new());
    let n = node(dir.path(), fake.clone());
    let scs = slice("plc.scs");
    let pool = service_pool(&n, "plc.scs", "plc.princeton").await;
    // The service finds its pool and its RSpec (with the authority) as section 4.5 says.
    let rcaps = call(&n, &scs, "GetRcap", json!({})).await.unwrap();
    assert_eq!(rcaps["rcaps"], json!([pool]));
    // Naming itself is the same as naming no one; naming another slice is refused.
    assert_eq!(call(&n, &scs, "GetRcap", json!(["plc.scs"])).await.unwrap()["rcaps"], json!([pool]));
    let e = call(&n, &scs, "GetRcap", json!(["plc.princeton.codeen"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::PERMISSION_DENIED, "{e:?}");
    let rspec = call(&n, &scs, "GetRSpec", json!([pool])).await.unwrap()["rspec"].as_str().unwrap().to_owned();
    assert!(rspec.contains(r#"slice_authority name="plc.princeton""#), "{rspec}");
    // It makes a slice's VM below its authority and manages it.
    let sub = rcap(&n, &scs, "SplitPool", json!([pool, slice_xml("plc.princeton.codeen", 64)])).await;
    let vm = call(&n, &scs, "Bind", json!([sub, "plc.princeton.codeen"])).await.unwrap();
    assert_eq!(vm["vm"], "plc_princeton_codeen");
    assert!(vm["rspec"].as_str().unwrap().contains(KEY), "{vm}");
    assert_eq!(names(&call(&n, &scs, "ListVMs", json!({})).await.unwrap(), "vms", "vm"), ["plc_princeton_codeen"]);
    let listed = names(&call(&n, &scs, "ListPools", json!({})).await.unwrap(), "pools", "rcap");
    assert_eq!(listed, [pool.clone(), sub.clone()], "its pool and what it split off");
    let v = call(&n, &scs, "UpdateVM", json!(["plc_princeton_codeen", [KEY2], "echo new"])).await.unwrap();
    assert!(v["rspec"].as_str().unwrap().contains(KEY2) && !v["rspec"].as_str().unwrap().contains(KEY), "{v}");
    assert_eq!(fake.spec("plc_princeton_codeen").unwrap().keys[0].as_str(), KEY2, "the backend has the new keys");
    assert_eq!(call(&n, &scs, "StopVM", json!(["plc_princeton_codeen"])).await.unwrap()["wanted"], "stopped");
    // The slice itself still controls its own VM.
    let me = slice("plc.princeton.codeen");
    assert_eq!(call(&n, &me, "StartVM", json!(["plc_princeton_codeen"])).await.unwrap()["wanted"], "running");
    // Outside its authority: refused, and the authority's own name is no slice.
    for other in ["plc.mit.x", "plc.princeton"] {
        let e = call(&n, &scs, "SplitPool", json!([pool, slice_xml(other, 32)])).await.unwrap_err();
        assert_eq!(e.0, ErrorCode::PERMISSION_DENIED, "{other}: {e:?}");
    }
    // A VM below the same authority made by someone else is not the service's.
    bound_vm(&n, "plc.princeton.private", 64).await;
    let e = call(&n, &scs, "DestroyVM", json!(["plc_princeton_private"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::NOT_FOUND, "{e:?}");
    // Nor does another service designated for the same authority control the first one's.
    service_pool(&n, "plc.scs2", "plc.princeton").await;
    let e = call(&n, &slice("plc.scs2"), "StopVM", json!(["plc_princeton_codeen"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::NOT_FOUND, "{e:?}");
    // And the slice it made cannot act for its neighbours through the pool it was given.
    let e = call(&n, &me, "SplitPool", json!([sub, slice_xml("plc.princeton.other", 32)])).await.unwrap_err();
    assert!(e.0 == ErrorCode::CONFLICT || e.0 == ErrorCode::PERMISSION_DENIED, "{e:?}");
    // A VM made by someone else is not the service's to add to, even for a slice below its
    // authority.
    let sub2 = rcap(&n, &scs, "SplitPool", json!([pool, slice_xml("plc.princeton.private", 32)])).await;
    let e = call(&n, &scs, "Bind", json!([sub2, "plc.princeton.private"])).await.unwrap_err();
    assert!(e.0 == ErrorCode::PERMISSION_DENIED && e.1.contains("not yours to add to"), "{e:?}");
    call(&n, &scs, "DestroyPool", json!([sub2])).await.unwrap();
    // A service never gets a VM of its own (its socket would speak as the service)...
    let e = call(&n, &scs, "SplitPool", json!([pool, slice_xml("plc.scs", 32)])).await;
    if let Ok(r) = e {
        let e = call(&n, &scs, "Bind", json!([r["rcap"], "plc.scs"])).await.unwrap_err();
        assert!(e.0 == ErrorCode::PERMISSION_DENIED && e.1.contains("services"), "{e:?}");
        call(&n, &scs, "DestroyPool", json!([r["rcap"]])).await.unwrap();
    }
    // ...while a VM's slice gets no server certificate for the node's address.
    let e = call(&n, &me, "SignCertificate", json!([KEY_PEM, true])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::PERMISSION_DENIED, "{e:?}");
    // Splits: nothing, or of a VM's pool, or handing on an authority with another URL.
    // Empty splits are allowed (bound to a VM, one adds keys), but no slice piles up more
    // than the cap of pools, empty or not.
    let empty = r#"<PoolRSpec><resources mem_limit="0"/></PoolRSpec>"#;
    let mut made = Vec::new();
    let e = loop {
        match call(&n, &scs, "SplitPool", json!([pool, empty])).await {
            Ok(r) => made.push(r["rcap"].clone()),
            Err(e) => break e,
        }
        assert!(made.len() <= 300, "no cap on pools per slice");
    };
    assert!(e.0 == ErrorCode::RESOURCES && e.1.contains("destroy some first"), "{e:?}");
    assert!(!made.is_empty() && made.len() < 256, "{} made", made.len());
    for r in made {
        call(&n, &scs, "DestroyPool", json!([r])).await.unwrap();
    }
    let e = call(&n, &me, "SplitPool", json!([sub, slice_xml("plc.princeton.codeen", 8)])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::CONFLICT, "{e:?}");
    let moved = r#"<PoolRSpec><resources mem_limit="64"/><slice_authority name="plc.princeton" url="https://evil.test/"/></PoolRSpec>"#;
    let e = call(&n, &scs, "SplitPool", json!([pool, moved])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::PERMISSION_DENIED, "{e:?}");
    let same = r#"<PoolRSpec><resources mem_limit="64"/><slice_authority name="plc.princeton.cs" url="https://sa.test/rpc"/></PoolRSpec>"#;
    let part = rcap(&n, &scs, "SplitPool", json!([pool, same])).await;
    call(&n, &scs, "DestroyPool", json!([part])).await.unwrap();
    // Destroying the VM leaves the pool unbound; the service gives it back to its own.
    call(&n, &scs, "DestroyVM", json!(["plc_princeton_codeen"])).await.unwrap();
    call(&n, &scs, "DestroyPool", json!([sub])).await.unwrap();
    let pools = call(&n, &scs, "ListPools", json!({})).await.unwrap();
    assert_eq!(pools["pools"][0]["resources"]["mem_limit"], "2048 MB", "all of it back: {pools}");
}

#[tokio::test]
async fn a_pools_vm_type_survives_splitting_through_an_untyped_pool() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), Arc::new(FakeBackend::new()));
    let me = slice("plc.demo");
    let root = rcap(&n, &Caller::Owner, "CreatePool", json!([pool_xml(1024), "plc.demo"])).await;
    let untyped =
        rcap(&n, &me, "SplitPool", json!([root, r#"<PoolRSpec><resources mem_limit="256"/></PoolRSpec>"#])).await;
    let rspec = call(&n, &me, "GetRSpec", json!([untyped])).await.unwrap()["rspec"].as_str().unwrap().to_owned();
    assert!(rspec.contains(r#"vm_type="linux-vserver-x86""#), "the restriction is inherited: {rspec}");
    let kvm = format!(
        r#"<KvmSlice name="plc.demo"><resources cpu_share="1" disk_quota="1" mem_limit="64"/><key>{KEY}</key></KvmSlice>"#
    );
    let e = call(&n, &me, "SplitPool", json!([untyped, kvm])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::INVALID_RSPEC, "{e:?}");
    let other = r#"<PoolRSpec vm_type="linux-kvm-x86"><resources mem_limit="64"/></PoolRSpec>"#;
    let e = call(&n, &me, "SplitPool", json!([untyped, other])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::INVALID_RSPEC, "{e:?}");
}

#[tokio::test]
async fn the_owners_blacklist_removes_vms_and_bars_new_ones_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::new());
    let scs = slice("plc.scs");
    {
        let n = node(dir.path(), fake.clone());
        let pool = service_pool(&n, "plc.scs", "plc").await;
        for s in ["plc.japan.a", "plc.japan.b", "plc.mit.c"] {
            let sub = rcap(&n, &scs, "SplitPool", json!([pool, slice_xml(s, 64)])).await;
            call(&n, &scs, "Bind", json!([sub, s])).await.unwrap();
        }
        let e = call(&n, &scs, "Blacklist", json!(["plc.japan"])).await.unwrap_err();
        assert_eq!(e.0, ErrorCode::PERMISSION_DENIED, "only the owner: {e:?}");
        let r = call(&n, &Caller::Owner, "Blacklist", json!(["plc.japan"])).await.unwrap();
        assert_eq!(r["destroyed"], json!(["plc_japan_a", "plc_japan_b"]), "{r}");
        assert_eq!(fake.status_of("plc_japan_a"), VmState::Missing);
        assert_eq!(fake.status_of("plc_mit_c"), VmState::Running, "other authorities' slices stay");
    }
    // After a restart the bar holds: the service cannot make the slice again.
    let n = node(dir.path(), fake.clone());
    assert_eq!(call(&n, &scs, "GetBlacklist", json!({})).await.unwrap()["blacklist"], json!(["plc.japan"]));
    let pool = call(&n, &scs, "GetRcap", json!({})).await.unwrap()["rcaps"][0].as_str().unwrap().to_owned();
    let e = call(&n, &scs, "SplitPool", json!([pool, slice_xml("plc.japan.a", 64)])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::PERMISSION_DENIED, "{e:?}");
    assert!(e.1.contains("blacklisted") && e.1.contains("plc.japan"), "{e:?}");
    // A pool split before the bar cannot be bound either.
    let orphan = call(&n, &scs, "ListPools", json!({})).await.unwrap()["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["slice"] == "plc.japan.a")
        .map(|p| p["rcap"].as_str().unwrap().to_owned())
        .unwrap();
    let e = call(&n, &scs, "Bind", json!([orphan, "plc.japan.a"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::PERMISSION_DENIED, "{e:?}");
    // Lifted: it can be made again.
    let e = call(&n, &Caller::Owner, "Unblacklist", json!(["plc.nothere"])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::NOT_FOUND, "{e:?}");
    call(&n, &Caller::Owner, "Unblacklist", json!(["plc.japan"])).await.unwrap();
    call(&n, &scs, "Bind", json!([orphan, "plc.japan.a"])).await.unwrap();
}

#[tokio::test]
async fn a_failed_vm_update_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::new());
    let n = node(dir.path(), fake.clone());
    bound_vm(&n, "plc.demo", 64).await;
    let me = slice("plc.demo");
    fake.fail(Op::Update, 1, |_| BackendError::Command { command: "x".into(), message: "disk full".into() });
    let e = call(&n, &me, "UpdateVM", json!(["plc_demo", [KEY2], null])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::BACKEND, "{e:?}");
    let v = call(&n, &me, "VmStatus", json!(["plc_demo"])).await.unwrap();
    assert!(v["rspec"].as_str().unwrap().contains(KEY) && v["rspec"].as_str().unwrap().contains("echo hi"), "{v}");
    let e = call(&n, &me, "UpdateVM", json!(["plc_demo", ["not a key"], null])).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::INVALID_PARAMS, "{e:?}");
    assert!(e.1.contains("keys"), "{e:?}");
}

#[tokio::test]
async fn a_vms_socket_caps_its_connections_and_others_still_get_answers() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), Arc::new(FakeBackend::new()));
    bound_vm(&n, "plc.noisy", 64).await;
    bound_vm(&n, "plc.calm", 64).await;
    let (noisy, calm) =
        (dir.path().join("sockets/plc_noisy/run/nm.sock"), dir.path().join("sockets/plc_calm/run/nm.sock"));
    tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader};
        // A VM opens every connection it may and then one more: that one is told why
        // and closed; the other VM's socket answers all the while.
        let held: Vec<_> = (0..plab_nm::api::MAX_CONNECTIONS_PER_CALLER)
            .map(|_| std::os::unix::net::UnixStream::connect(&noisy).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut one_more = BufReader::new(std::os::unix::net::UnixStream::connect(&noisy).unwrap());
        let mut line = String::new();
        one_more.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["code"], 11, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("too many connections"), "{v}");
        let mut c = NmClient::connect(&calm).unwrap();
        let rcaps = c.call_value("GetRcap", json!({})).unwrap();
        assert_eq!(
            rcaps["rcaps"].as_array().unwrap().len(),
            2,
            "the calm VM is served (its pool and the VM's): {rcaps}"
        );
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        let mut c = NmClient::connect(&noisy).unwrap();
        assert!(c.call_value("GetRcap", json!({})).is_ok(), "slots come back when connections close");
    })
    .await
    .unwrap();
}
