//! The flow archive end to end (issue 10, item 7): a testbed of an authority and two
//! nodes, each running `plab-audit serve` with `archive_url` set. A slice's VMs on both
//! nodes send datagrams out; the authority's public query (`QueryFlows`) names the node,
//! the slice and its users from the node's address and the source port an outsider saw.
//! The authority goes down while a VM sends: the flows wait in the node's spool and
//! arrive once it is back. Real runc containers, real TLS, real OpenSSH. Needs root.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use plab_tests::testbed::{Options, TbNode, Testbed};
use serde_json::{json, Value};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Three datagrams from one socket in the VM that `ssh` logs in to, to `host`:`port`.
fn send(tb: &Testbed, key: &std::path::Path, ssh: &str, host: &str, port: u16) {
    let cmd = format!("exec 3>/dev/udp/{host}/{port}; for k in 1 2 3; do echo datagram-$k >&3; done");
    let (code, out) = tb.ssh_wait(key, ssh, Duration::from_secs(30));
    assert_eq!(code, 0, "{out}");
    let (code, out) = tb.ssh(key, ssh, &format!("bash -c '{cmd}'"));
    assert_eq!(code, 0, "{out}");
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn integration_archive_the_authority_answers_which_slice_sent_a_packet_from_any_node() {
    let mut tb = Testbed::new(Options { nodes: 2, ..Options::default() });
    let alice = tb.researcher("alice");
    let mut op = tb.operator();
    let slice = "plc.princeton.flows";
    op.call("CreateSlice", vec![json!(slice)]).unwrap();
    op.call("AddSlicePrincipal", vec![json!(slice), json!(["alice"])]).unwrap();
    op.call("SetSliceAttr", vec![json!(slice), json!("mem_limit"), json!(64)]).unwrap();
    op.call("SetSliceAttr", vec![json!(slice), json!("disk_quota"), json!(0.1)]).unwrap();
    op.call("AddSliceNode", vec![json!(slice), json!(tb.nodes.iter().map(|n| n.id).collect::<Vec<_>>())]).unwrap();
    op.call("StartSlice", vec![json!(slice)]).unwrap();
    let (st, _) = tb.wait_status(slice, Duration::from_secs(90), |st| {
        st["slivers"].as_array().is_some_and(|s| s.len() == 2 && s.iter().all(|s| s["state"] == "running"))
    });
    let (url, root) = (tb.urls[0].clone(), tb.authority_dir.join("ca/root.pem"));
    for n in &mut tb.nodes {
        n.start_audit(&url, &root);
    }
    // The VMs send to a listener on the testbed's own address (without one, the ICMP
    // port unreachable would fail the next send on the VM's connected socket).
    let host = tb.urls[0].trim_start_matches("https://").split(':').next().unwrap().to_owned();
    let _sinks: Vec<Killed> = [9001, 9002]
        .iter()
        .map(|p| {
            Killed(
                Command::new("socat")
                    .args(["-u", &format!("UDP-RECV:{p},bind={host},reuseaddr"), "OPEN:/dev/null"])
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let t0 = now() - 1;
    let ssh: Vec<String> = (0..2)
        .map(|i| {
            st["slivers"].as_array().unwrap().iter().find(|s| s["node_id"] == tb.nodes[i].id).unwrap()["ssh"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // Until the service captures (it looks at the node's VMs every 2 s), send again.
    let mut anon = plab_authority::AuthorityClient::new(&tb.urls[0], &tb.root_pem, None, None).unwrap();
    let mut ask = |src: &str, dst: &str, from: i64| -> Vec<Value> {
        let r = anon.call("QueryFlows", vec![json!(src), json!(dst), json!(from.to_string())]).unwrap();
        r["flows"].as_array().unwrap().clone()
    };
    let block = |n: &TbNode| -> (u16, u16) {
        let vms = n.vms();
        let (a, b) = vms[0]["nat_ports"].as_str().unwrap().split_once('-').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    // Once each service captures on its VM's interface, each VM sends once.
    // And once each has learnt the slice's principals from the authority (SliceContacts),
    // the flows name them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tb.nodes.iter().all(|n| n.audit_captures() && n.log("audit.log").contains("the authority names the people"))
    {
        assert!(Instant::now() < deadline, "the services do not capture or learn the principals\n{}", logs(&tb));
        std::thread::sleep(Duration::from_millis(200));
    }
    for s in &ssh {
        send(&tb, &alice.ssh_key, s, &host, 9001);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut found = vec![vec![]; 2];
    while found.iter().any(|f| f.is_empty()) {
        assert!(Instant::now() < deadline, "no flows archived: {found:?}\n{}", logs(&tb));
        std::thread::sleep(Duration::from_secs(1));
        for (i, n) in tb.nodes.iter().enumerate() {
            // What an outsider saw: the node's address (the port below).
            found[i] = ask(&n.addr, &format!("{host}:9001"), t0);
        }
    }
    for (i, n) in tb.nodes.iter().enumerate() {
        assert_eq!(found[i].len(), 1, "{:?}", found[i]);
        let f = &found[i][0];
        assert_eq!(f["node_id"], n.id, "{f}");
        assert_eq!(f["flow"]["meta"]["slice"], slice, "{f}");
        assert_eq!(
            f["flow"]["meta"]["users"],
            json!(["alice"]),
            "the slice's principals, as the node learnt them from the authority (not the key's comment): {f}"
        );
        assert_eq!(
            f["responsible"],
            json!(["alice"]),
            "the slice's principals at the authority (names, to anyone): {f}"
        );
        assert_eq!((f["flow"]["proto"].as_u64(), f["flow"]["packets"].as_u64()), (Some(17), Some(3)), "{f}");
        assert_eq!(f["flow"]["bytes"], 3 * (20 + 8 + 11), "{f}");
        // The exact port the node's NAT chose (conntrack), in the VM's block.
        let exact = f["flow"]["post_nat_src"].as_str().unwrap().strip_prefix(&format!("{}:", n.addr)).unwrap();
        let exact: u16 = exact.parse().unwrap_or_else(|e| panic!("not one port: {e}: {f}"));
        assert!((block(n).0..=block(n).1).contains(&exact), "{f}");
        // That port names the flow; another of the block does not.
        assert_eq!(ask(&format!("{}:{exact}", n.addr), &format!("{host}:9001"), t0).len(), 1);
        let next = if exact > block(n).0 { exact - 1 } else { exact + 1 };
        assert!(ask(&format!("{}:{next}", n.addr), &format!("{host}:9001"), t0).is_empty(), "{f}");
    }
    // Another node's address with this node's port finds nothing.
    let (first, _) = block(&tb.nodes[0]);
    let other = ask(&format!("{}:{first}", tb.nodes[1].addr), &format!("{host}:9001"), t0);
    assert!(other.iter().all(|f| f["node_id"] == tb.nodes[1].id), "{other:?}");

    // The authority is down while node 1's VM sends: its flows wait in the node's spool
    // and reach the archive once the authority is back.
    tb.kill_server(0);
    let t1 = now() - 1;
    send(&tb, &alice.ssh_key, &ssh[0], &host, 9002);
    std::thread::sleep(Duration::from_secs(6));
    tb.start_server(0);
    let mut anon = plab_authority::AuthorityClient::new(&tb.urls[0], &tb.root_pem, None, None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = anon
            .call("QueryFlows", vec![json!(tb.nodes[0].addr), json!(format!("{host}:9002")), json!(t1.to_string())]);
        if let Ok(r) = r {
            if let Some(f) = r["flows"].as_array().and_then(|f| f.first()) {
                assert_eq!(
                    (f["flow"]["meta"]["slice"].as_str(), f["flow"]["packets"].as_u64()),
                    (Some(slice), Some(3))
                );
                break;
            }
        }
        assert!(Instant::now() < deadline, "the spooled flows never arrived\n{}", logs(&tb));
        std::thread::sleep(Duration::from_secs(1));
    }
    let log = tb.nodes[0].log("audit.log");
    assert!(
        log.contains("they wait in the spool") && log.contains("sending again"),
        "the upload failed and resumed:\n{log}"
    );
}

fn logs(tb: &Testbed) -> String {
    tb.nodes.iter().map(|n| format!("node {} audit.log:\n{}\n", n.id, n.log("audit.log"))).collect()
}
