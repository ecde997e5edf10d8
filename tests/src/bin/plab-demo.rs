//! `make demo`: a whole small testbed on this machine, step by step. An authority (SQLite)
//! and three nodes, each a network namespace with its boot manager, node manager, the
//! owner's site-admin pools and a slice creation service; a researcher namespace. A slice
//! made at the authority becomes a VM on every node, researchers log in with OpenSSH, a
//! datagram a VM sent is traced back to its slice (the node's auditing service and the
//! authority's flow archive), a ticket is redeemed at one node, an owner blacklists a
//! slice, and everything is torn down at the end (or kept with `--keep` until Enter).
//!
//! ```text
//! plab-demo [--nodes N] [--vm-type linux-vserver-x86|linux-kvm-x86] [--keep]
//! ```
#![allow(clippy::unwrap_used)] // A demo: a failed step stops it with its message.

use plab_tests::bin;
use plab_tests::testbed::{Options, Testbed, TICKET_PORT};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

fn step(n: &mut u32, what: &str) {
    *n += 1;
    println!("\n=== {n}. {what}");
}

/// Runs `plab` with the authority settings `config`, printing the command and its output.
fn plab(config: &std::path::Path, who: &str, args: &[&str]) -> String {
    println!("$ plab {}    # as {who}", args.join(" "));
    let out = Command::new(bin("plab")).env("PLAB_AUTHORITY_CONFIG", config).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    print!("{text}");
    assert!(out.status.success(), "plab {} failed", args.join(" "));
    text
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut nodes = 3;
    let mut vm_type = "linux-vserver-x86".to_string();
    let mut keep = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--nodes" => {
                nodes = it.next().and_then(|n| n.parse().ok()).filter(|n| (1..=20).contains(n)).expect("--nodes 1..20")
            }
            "--vm-type" => vm_type = it.next().expect("--vm-type TYPE").clone(),
            "--keep" => keep = true,
            "-h" | "--help" => {
                println!("plab-demo [--nodes N (3)] [--vm-type linux-vserver-x86|linux-kvm-x86] [--keep]");
                return;
            }
            other => panic!("unknown argument {other:?} (see --help)"),
        }
    }
    let (mem, disk) = if vm_type == "linux-kvm-x86" { ("256", "1") } else { ("128", "0.25") };
    let mut n = 0;
    let started = Instant::now();

    step(&mut n, &format!("a testbed: an authority (SQLite) and {nodes} nodes, each booted by plab-boot, running plab-nm, the owner's site-admin pools for plc.scs, and plab-scs"));
    let mut tb = Testbed::new(Options { nodes, ..Options::default() });
    let (url, root) = (tb.urls[0].clone(), tb.authority_dir.join("ca/root.pem"));
    for node in &mut tb.nodes {
        node.start_audit(&url, &root);
    }
    println!("authority: {} (state in {})", tb.urls[0], tb.authority_dir.display());
    for (i, node) in tb.nodes.iter().enumerate() {
        println!("node {}: id {}, address {}, namespace {}", i + 1, node.id, node.addr, node.ns);
    }
    println!("researchers log in from namespace {}", tb.researcher_ns);
    println!("(built in {:.1} s)", started.elapsed().as_secs_f64());
    let op = tb.operator_config.clone();

    step(&mut n, "researcher alice (organisation princeton) registers an ssh key");
    let alice = tb.researcher("alice");
    println!("alice's certificate and settings: {}", alice.config.display());

    step(&mut n, "the organisation's admin creates plc.princeton.demo; alice fills it in and starts it");
    let slice = "plc.princeton.demo";
    let ids: Vec<String> = tb.nodes.iter().map(|n| n.id.to_string()).collect();
    plab(&op, "the operator", &["sa", "create-slice", slice]);
    plab(&op, "the operator", &["sa", "add-slice-principal", slice, "[\"alice\"]"]);
    let a = &alice.config;
    plab(a, "alice", &["sa", "set-slice-attr", slice, "vm_type", &vm_type]);
    plab(&op, "the operator", &["sa", "set-slice-attr", slice, "mem_limit", mem]);
    plab(&op, "the operator", &["sa", "set-slice-attr", slice, "disk_quota", disk]);
    plab(a, "alice", &["sa", "set-slice-attr", slice, "bootscript", "echo \"demo bootscript ran on $(hostname)\""]);
    plab(a, "alice", &["sa", "add-slice-node", slice, &format!("[{}]", ids.join(","))]);
    plab(a, "alice", &["sa", "start-slice", slice]);

    step(&mut n, "every node's slice creation service makes the VM and reports it");
    let all_running = |st: &Value| {
        let s = st["slivers"].as_array().cloned().unwrap_or_default();
        s.len() == nodes && s.iter().all(|x| x["state"] == "running")
    };
    let (st, took) = tb.wait_status(slice, Duration::from_secs(180), all_running);
    assert!(all_running(&st), "not every sliver came up:\n{st:#}\n{}", tb.logs());
    println!("StartSlice to every sliver running: {:.2} s", took.as_secs_f64());
    plab(a, "alice", &["sa", "get-slice-status", slice]);

    step(&mut n, "alice logs in to each sliver with OpenSSH, with the command the authority shows");
    for s in st["slivers"].as_array().unwrap() {
        let ssh = s["ssh"].as_str().unwrap();
        println!("$ ip netns exec {} {ssh}", tb.researcher_ns);
        let (code, out) = tb.ssh_wait(&alice.ssh_key, ssh, Duration::from_secs(120));
        assert_eq!(code, 0, "{out}");
        let (_, out) = tb.ssh(&alice.ssh_key, ssh, "echo \"logged in as $(id -un) on $(hostname)\"; df -h / | tail -1");
        print!("{out}");
    }

    step(&mut n, "alice's VM on node 1 sends a datagram out; its receiver asks who sent it");
    let first = st["slivers"].as_array().unwrap().iter().find(|s| s["node_id"] == tb.nodes[0].id).unwrap();
    trace(&tb, &alice, first["ssh"].as_str().unwrap());

    step(&mut n, "delegated creation: alice takes a ticket for plc.princeton.tkt and redeems it at node 1");
    let tkt = "plc.princeton.tkt";
    plab(&op, "the operator", &["sa", "create-slice", tkt]);
    plab(&op, "the operator", &["sa", "add-slice-principal", tkt, "[\"alice\"]"]);
    plab(&op, "the operator", &["sa", "set-slice-attr", tkt, "mem_limit", "64"]);
    plab(&op, "the operator", &["sa", "set-slice-attr", tkt, "disk_quota", "0.1"]);
    plab(a, "alice", &["sa", "add-slice-node", tkt, &format!("[{}]", tb.nodes[0].id)]);
    let ticket = plab_quiet(a, &["--json", "sa", "get-slice-ticket", tkt]);
    let ticket_file = tb.dir.path().join("ticket.json");
    std::fs::write(&ticket_file, ticket).unwrap();
    println!("$ plab --json sa get-slice-ticket {tkt} > ticket.json    # as alice");
    let url = format!("https://{}:{TICKET_PORT}", tb.nodes[0].addr);
    println!("$ plab scs redeem {url} ticket.json    # as alice, from her namespace");
    let redeem = || {
        Command::new("ip")
            .args(["netns", "exec", &tb.researcher_ns])
            .arg(bin("plab"))
            .env("PLAB_AUTHORITY_CONFIG", a)
            .args(["scs", "redeem", &url])
            .arg(&ticket_file)
            .output()
            .unwrap()
    };
    let out = redeem();
    print!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "redeem failed");
    println!("redeeming the same ticket again:");
    print!("{}", String::from_utf8_lossy(&redeem().stderr));

    if nodes > 1 {
        let last = nodes - 1;
        step(&mut n, &format!("the owner of node {} blacklists {slice} with its site-admin script", last + 1));
        let (_, out) = tb.nodes[last].site_admin(&["blacklist", slice]);
        print!("{out}");
        let (st, _) = tb.wait_status(slice, Duration::from_secs(60), |st| st["slivers"][last]["state"] == "failed");
        println!("node {} reports: {} ({})", last + 1, st["slivers"][last]["state"], st["slivers"][last]["message"]);
    }

    step(
        &mut n,
        "the slice is deleted at the authority: its VMs go from every node, and their pools return to the authority's",
    );
    plab(&op, "the operator", &["sa", "delete-slice", slice]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while tb.nodes.iter().any(|n| n.vms().iter().any(|v| v["slice"] == slice)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, node) in tb.nodes.iter().enumerate() {
        let vms: Vec<String> = node.vms().iter().map(|v| v["slice"].as_str().unwrap_or("").to_owned()).collect();
        println!("node {}: VMs now {:?}", i + 1, vms);
    }

    if keep {
        step(&mut n, "the testbed stays up: try it, then press Enter to tear it down");
        println!("export PLAB_AUTHORITY_CONFIG={}", a.display());
        println!("plab sa get-slices; plab sa get-slice-status {tkt}");
        println!(
            "ip netns exec {} ssh -i {} -p 22001 plc_princeton_tkt@{}",
            tb.researcher_ns,
            alice.ssh_key.display(),
            tb.nodes[0].addr
        );
        println!("PLAB_NM_SOCKET={} plab nm ls", tb.nodes[0].socket().display());
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    step(&mut n, "teardown: VMs, node managers, services, authority, namespaces");
    drop(tb);
    println!("done in {:.1} s; nothing left behind", started.elapsed().as_secs_f64());
}

/// A datagram from the VM `ssh` logs in to, to a receiver on the testbed's own address;
/// the receiver asks node 1's public page and the authority's archive who sent it.
fn trace(tb: &Testbed, alice: &plab_tests::testbed::Researcher, ssh: &str) {
    let host = tb.urls[0].trim_start_matches("https://").split(':').next().unwrap().to_owned();
    let receiver = std::net::UdpSocket::bind((host.as_str(), 0)).unwrap();
    receiver.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let port = receiver.local_addr().unwrap().port();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Once the service captures and has learnt the slice's principals from the authority.
    while !(tb.nodes[0].audit_captures() && tb.nodes[0].log("audit.log").contains("the authority names the people")) {
        assert!(
            Instant::now() < deadline,
            "node 1's auditing service does not capture or know the slice's principals:\n{}",
            tb.nodes[0].log("audit.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let cmd = format!("echo 'hello from the demo' > /dev/udp/{host}/{port}");
    println!("$ {cmd}    # in alice's VM on node 1");
    let (code, out) = tb.ssh(&alice.ssh_key, ssh, &cmd);
    assert_eq!(code, 0, "{out}");
    let mut buf = [0u8; 100];
    let (_, from) = receiver.recv_from(&mut buf).unwrap();
    println!(
        "the receiver at {host}:{port} got a datagram from {from}: the node's address, the port its NAT chose in the VM's block"
    );
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 60;
    let path = format!("/api/flows?src={from}&dst={host}:{port}&from={since}");
    println!("$ curl 'http://{}:8880{path}'    # node 1's public page (also a form at /)", tb.nodes[0].addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let (status, body) = plab_tests::try_http_get(&tb.researcher_ns, &format!("{}:8880", tb.nodes[0].addr), &path)
            .unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        if status == 200 && v["flows"].as_array().is_some_and(|f| !f.is_empty()) {
            break v;
        }
        assert!(Instant::now() < deadline, "no answer from node 1: {status} {body}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let f = &answer["flows"][0];
    println!(
        "slice {}, users {}, {} packet(s), {} bytes, seen outside from {}",
        f["meta"]["slice"], f["meta"]["users"], f["packets"], f["bytes"], f["post_nat_src"]
    );
    let args = ["--json", "sa", "query-flows", &from.to_string(), &format!("{host}:{port}"), &since.to_string()];
    println!("$ plab {}    # as alice: the authority's archive, across every node", args.join(" "));
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let v: Value = serde_json::from_str(&plab_quiet(&alice.config, &args)).unwrap_or_default();
        if v["flows"].as_array().is_some_and(|f| !f.is_empty()) {
            break v;
        }
        assert!(Instant::now() < deadline, "the archive never had the flow:\n{}", tb.nodes[0].log("audit.log"));
        std::thread::sleep(Duration::from_millis(500));
    };
    let f = &answer["flows"][0];
    println!(
        "node {}, slice {}, responsible {}, {} packet(s)",
        f["node_id"], f["flow"]["meta"]["slice"], f["responsible"], f["flow"]["packets"]
    );
}

fn plab_quiet(config: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(bin("plab")).env("PLAB_AUTHORITY_CONFIG", config).args(args).output().unwrap();
    assert!(out.status.success(), "plab {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
