//! The whole testbed (issue: slices at the authority become VMs on many nodes): an
//! authority and three nodes, each a network namespace with a booted node manager, an
//! owner script's pools and a slice creation service, and a researcher namespace that
//! logs in with OpenSSH through each node's ssh forward. Real runc containers, real TLS,
//! real OpenSSH; one linux-kvm-x86 sliver (TCG). Needs root.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use plab_tests::testbed::{Options, Testbed, TICKET_PORT};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

fn states(st: &Value) -> Vec<String> {
    st["slivers"]
        .as_array()
        .map(|a| a.iter().map(|s| s["state"].as_str().unwrap_or("").to_owned()).collect())
        .unwrap_or_default()
}

fn all(st: &Value, n: usize, state: &str) -> bool {
    let s = states(st);
    s.len() == n && s.iter().all(|x| x == state)
}

const LIMIT: Duration = Duration::from_secs(90);

#[test]
fn integration_testbed_slices_at_the_authority_become_vms_on_every_node() {
    let mut tb = Testbed::new(Options::default());
    let mut alice = tb.researcher("alice");
    let mut op = tb.operator();
    let nodes: Vec<i64> = tb.nodes.iter().map(|n| n.id).collect();

    // A researcher's slice on all three nodes, started: within seconds every node runs
    // it, the authority shows how to log in to each, and each login works.
    let slice = "plc.princeton.codeen";
    op.call("CreateSlice", vec![json!(slice)]).unwrap();
    op.call("AddSlicePrincipal", vec![json!(slice), json!(["alice"])]).unwrap();
    op.call("SetSliceAttr", vec![json!(slice), json!("mem_limit"), json!(128)]).unwrap();
    op.call("SetSliceAttr", vec![json!(slice), json!("disk_quota"), json!(0.2)]).unwrap();
    op.call("SetSliceAttr", vec![json!(slice), json!("bootscript"), json!("echo codeen started on $(hostname)")])
        .unwrap();
    op.call("AddSliceNode", vec![json!(slice), json!(nodes)]).unwrap();
    op.call("StartSlice", vec![json!(slice)]).unwrap();
    let (st, took) = tb.wait_status(slice, LIMIT, |st| all(st, 3, "running"));
    assert!(all(&st, 3, "running"), "{st:#}\n{}", tb.logs());
    eprintln!("StartSlice to every sliver reported running on 3 nodes: {took:?}");
    // The researcher sees the same through `plab sa get-slice-status`.
    let out = Command::new(plab_tests::bin("plab"))
        .env("PLAB_AUTHORITY_CONFIG", &alice.config)
        .args(["sa", "get-slice-status", slice])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.matches("running").count() == 3,
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, s) in st["slivers"].as_array().unwrap().iter().enumerate() {
        let ssh = s["ssh"].as_str().unwrap();
        assert!(ssh.contains(&tb.nodes[i].addr), "{ssh}");
        let (code, out) = tb.ssh_wait(&alice.ssh_key, ssh, Duration::from_secs(30));
        assert_eq!(code, 0, "ssh {ssh}: {out}");
        assert_eq!(out.trim(), "plc_princeton_codeen@plc-princeton-codeen", "{out}");
    }

    // Stop at the authority: every sliver stops (its disk stays); start: they run again.
    op.call("StopSlice", vec![json!(slice)]).unwrap();
    let (st, _) = tb.wait_status(slice, LIMIT, |st| all(st, 3, "stopped"));
    assert!(all(&st, 3, "stopped"), "{st:#}\n{}", tb.logs());
    op.call("StartSlice", vec![json!(slice)]).unwrap();
    let (st, _) = tb.wait_status(slice, LIMIT, |st| all(st, 3, "running"));
    assert!(all(&st, 3, "running"), "{st:#}");

    // A member added later: her key reaches every running sliver.
    let bob = tb.researcher("bob");
    op.call("AddSlicePrincipal", vec![json!(slice), json!(["bob"])]).unwrap();
    let ssh0 = st["slivers"][0]["ssh"].as_str().unwrap().to_owned();
    let (code, out) = tb.ssh_wait(&bob.ssh_key, &ssh0, Duration::from_secs(60));
    assert_eq!(code, 0, "bob's key on node 1: {out}\n{}", tb.logs());

    // The authority goes down: slices keep running; changes made once it is back reach
    // the nodes.
    tb.kill_server(0);
    std::thread::sleep(Duration::from_secs(3));
    let (code, out) = tb.ssh(&alice.ssh_key, &ssh0, "true");
    assert_eq!(code, 0, "the sliver keeps running while the authority is down: {out}");
    for n in &tb.nodes {
        assert_eq!(n.vms().len(), 1, "node {} keeps its VM", n.id);
    }
    tb.start_server(0);
    let mut op = tb.operator();
    op.call("DeleteSlice", vec![json!(slice)]).unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while tb.nodes.iter().any(|n| !n.vms().is_empty()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in &tb.nodes {
        assert!(n.vms().is_empty(), "node {}: the deleted slice's VM is gone: {:?}\n{}", n.id, n.vms(), tb.logs());
    }
    // ...and every pool goes back to the authority's.
    for n in &tb.nodes {
        let deadline = std::time::Instant::now() + LIMIT;
        let pools = loop {
            let pools = n.nm().call_value("ListPools", json!({})).unwrap();
            if pools["pools"].as_array().unwrap().len() == 1 || std::time::Instant::now() > deadline {
                break pools;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(pools["pools"].as_array().unwrap().len(), 1, "node {}: {pools}", n.id);
        assert_eq!(pools["pools"][0]["resources"]["mem_limit"], "8192 MB", "all of it: {pools}");
    }

    // Delegated instantiation: a ticket for node 2, redeemed there directly.
    let other = "plc.princeton.other";
    op.call("CreateSlice", vec![json!(other)]).unwrap();
    op.call("AddSlicePrincipal", vec![json!(other), json!(["alice"])]).unwrap();
    op.call("SetSliceAttr", vec![json!(other), json!("mem_limit"), json!(64)]).unwrap();
    op.call("SetSliceAttr", vec![json!(other), json!("disk_quota"), json!(0.1)]).unwrap();
    op.call("AddSliceNode", vec![json!(other), json!([tb.nodes[1].id])]).unwrap();
    let ticket = alice.client.call("GetSliceTicket", vec![json!(other)]).unwrap();
    let ticket_file = tb.dir.path().join("ticket.json");
    std::fs::write(&ticket_file, ticket.to_string()).unwrap();
    let redeem = |node: usize| {
        let out = Command::new("ip")
            .args(["netns", "exec", &tb.researcher_ns])
            .arg(plab_tests::bin("plab"))
            .env("PLAB_AUTHORITY_CONFIG", &alice.config)
            .args(["--json", "scs", "redeem", &format!("https://{}:{TICKET_PORT}", tb.nodes[node].addr)])
            .arg(&ticket_file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // At a node the ticket does not name: refused, nothing made.
    let (ok, out) = redeem(0);
    assert!(!ok && out.contains("not this node"), "{out}");
    assert!(tb.nodes[0].vms().is_empty());
    let (ok, out) = redeem(1);
    assert!(ok, "{out}\n{}", tb.logs());
    let r: Value = serde_json::from_str(&out).unwrap();
    let (code, text) = tb.ssh_wait(&alice.ssh_key, r["ssh"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(code, 0, "{text}");
    // Replayed: refused.
    let (ok, out) = redeem(1);
    assert!(!ok && out.contains("replay"), "{out}");
    // The ticket's VM stays although the authority lists no central slice for it.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(tb.nodes[1].vms().len(), 1, "{}", tb.logs());

    // The owner of node 3 blacklists the authority's slices below plc.princeton: a
    // started slice there is removed and not made again; elsewhere it runs.
    let third = "plc.princeton.third";
    op.call("CreateSlice", vec![json!(third)]).unwrap();
    op.call("AddSlicePrincipal", vec![json!(third), json!(["alice"])]).unwrap();
    op.call("SetSliceAttr", vec![json!(third), json!("mem_limit"), json!(64)]).unwrap();
    op.call("SetSliceAttr", vec![json!(third), json!("disk_quota"), json!(0.1)]).unwrap();
    op.call("AddSliceNode", vec![json!(third), json!([tb.nodes[0].id, tb.nodes[2].id])]).unwrap();
    op.call("StartSlice", vec![json!(third)]).unwrap();
    let (st, _) = tb.wait_status(third, LIMIT, |st| all(st, 2, "running"));
    assert!(all(&st, 2, "running"), "{st:#}");
    let (ok, out) = tb.nodes[2].site_admin(&["blacklist", "plc.princeton.third"]);
    assert!(ok && out.contains("plc_princeton_third"), "{out}");
    let (st, _) = tb.wait_status(third, LIMIT, |st| states(st) == ["running", "failed"]);
    assert_eq!(states(&st), ["running", "failed"], "{st:#}");
    assert!(st["slivers"][1]["message"].as_str().unwrap_or("").contains("blacklisted"), "{st:#}");
    std::thread::sleep(Duration::from_secs(6));
    assert!(tb.nodes[2].vms().is_empty(), "not made again: {:?}", tb.nodes[2].vms());

    // Expiry is enforced on the nodes: renewed to end in a few seconds, the slice's VM
    // stops, then goes, with no further word from anyone.
    let soon = credentials::now() + 4;
    op.call("RenewSlice", vec![json!(third), json!(soon)]).unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while !tb.nodes[0].vms().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(tb.nodes[0].vms().is_empty(), "the expired slice's VM is gone: {:?}\n{}", tb.nodes[0].vms(), tb.logs());
    assert!(credentials::now() >= soon, "not before it expired");

    // One linux-kvm-x86 sliver (a QEMU guest, TCG here) on node 3.
    let kvm = "plc.princeton.kvm";
    op.call("CreateSlice", vec![json!(kvm)]).unwrap();
    op.call("AddSlicePrincipal", vec![json!(kvm), json!(["alice"])]).unwrap();
    op.call("SetSliceAttr", vec![json!(kvm), json!("vm_type"), json!("linux-kvm-x86")]).unwrap();
    op.call("SetSliceAttr", vec![json!(kvm), json!("mem_limit"), json!(256)]).unwrap();
    op.call("SetSliceAttr", vec![json!(kvm), json!("disk_quota"), json!(1)]).unwrap();
    op.call("AddSliceNode", vec![json!(kvm), json!([tb.nodes[2].id])]).unwrap();
    op.call("StartSlice", vec![json!(kvm)]).unwrap();
    let (st, took) = tb.wait_status(kvm, LIMIT, |st| all(st, 1, "running"));
    assert!(all(&st, 1, "running"), "{st:#}\n{}", tb.logs());
    let (code, out) = tb.ssh_wait(&alice.ssh_key, st["slivers"][0]["ssh"].as_str().unwrap(), Duration::from_secs(120));
    assert_eq!(code, 0, "ssh into the KVM sliver: {out}\n{}", tb.logs());
    assert_eq!(out.trim(), "plc_princeton_kvm@plc-princeton-kvm");
    eprintln!("linux-kvm-x86 sliver: StartSlice to running {took:?}");
    op.call("DeleteSlice", vec![json!(kvm)]).unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while tb.nodes[2].vms().iter().any(|v| v["slice"] == kvm) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(tb.nodes[2].vms().is_empty(), "{:?}", tb.nodes[2].vms());
    drop(tb);
}

#[test]
fn integration_testbed_two_authority_servers_on_one_postgresql() {
    // Node 1's service follows server 1, node 2's server 2; every change is made through
    // server 1, and reaches node 2 through the database (LISTEN/NOTIFY).
    let tb = Testbed::new(Options { nodes: 2, postgres_servers: 2, ..Options::default() });
    assert_ne!(tb.nodes[0].url, tb.nodes[1].url);
    tb.researcher("alice");
    let mut op = tb.operator();
    let slice = "plc.princeton.pg";
    op.call("CreateSlice", vec![json!(slice)]).unwrap();
    op.call("AddSlicePrincipal", vec![json!(slice), json!(["alice"])]).unwrap();
    op.call("SetSliceAttr", vec![json!(slice), json!("mem_limit"), json!(64)]).unwrap();
    op.call("SetSliceAttr", vec![json!(slice), json!("disk_quota"), json!(0.1)]).unwrap();
    op.call("AddSliceNode", vec![json!(slice), json!([tb.nodes[0].id, tb.nodes[1].id])]).unwrap();
    op.call("StartSlice", vec![json!(slice)]).unwrap();
    let (st, took) = tb.wait_status(slice, LIMIT, |st| all(st, 2, "running"));
    assert!(all(&st, 2, "running"), "{st:#}\n{}", tb.logs());
    eprintln!("two servers on PostgreSQL: StartSlice to both slivers running {took:?}");
    op.call("DeleteSlice", vec![json!(slice)]).unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while tb.nodes.iter().any(|n| !n.vms().is_empty()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in &tb.nodes {
        assert!(n.vms().is_empty(), "node {}: {:?}\n{}", n.id, n.vms(), tb.logs());
    }
}
