//! The node's ssh forwards with real nftables, in namespaces this test makes: a client
//! outside the node reaches a VM's port 22 through the node's public address and the
//! VM's forward port; a VM cannot route anything else past the node. Needs root, nft,
//! socat and iproute2.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use plab_nm::forward::SshForward;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sh(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

struct Namespaces(Vec<String>, Vec<Child>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for c in &mut self.1 {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// What a client in `ns` reads from `addr:port` (empty when it cannot connect).
fn fetch(ns: &str, addr: &str, port: u16) -> String {
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "timeout",
            "3",
            "socat",
            "-T2",
            "-",
            &format!("TCP:{addr}:{port},connect-timeout=2"),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn integration_forward_reaches_a_vms_ssh_port_and_nothing_else_is_routed() {
    assert!(nix::unistd::geteuid().is_root(), "run as root (make test does)");
    for tool in ["nft", "socat"] {
        let ok = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).stdout(Stdio::null()).status().unwrap();
        assert!(ok.success(), "`{tool}` is missing: apt-get install {}", if tool == "nft" { "nftables" } else { tool });
    }
    let p = std::process::id();
    let (node, vm, client) = (format!("plab-fw-node-{p}"), format!("plab-fw-vm-{p}"), format!("plab-fw-cl-{p}"));
    let mut ns = Namespaces(vec![node.clone(), vm.clone(), client.clone()], vec![]);
    for n in &ns.0 {
        let _ = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
        sh(&["ip", "netns", "add", n]);
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    // The node: bridge plab0 (10.213.0.1) with the VM on it; public side 10.77.0.1.
    sh(&["ip", "-n", &node, "link", "add", "plab0", "type", "bridge"]);
    sh(&["ip", "-n", &node, "addr", "add", "10.213.0.1/24", "dev", "plab0"]);
    sh(&["ip", "-n", &node, "link", "set", "plab0", "up"]);
    sh(&["ip", "-n", &node, "link", "add", "pv1", "type", "veth", "peer", "name", "eth0", "netns", &vm]);
    sh(&["ip", "-n", &node, "link", "set", "pv1", "master", "plab0", "up"]);
    sh(&["ip", "-n", &vm, "addr", "add", "10.213.0.2/24", "dev", "eth0"]);
    sh(&["ip", "-n", &vm, "link", "set", "eth0", "up"]);
    sh(&["ip", "-n", &vm, "route", "add", "default", "via", "10.213.0.1"]);
    sh(&["ip", "-n", &node, "link", "add", "pub", "type", "veth", "peer", "name", "eth0", "netns", &client]);
    sh(&["ip", "-n", &node, "addr", "add", "10.77.0.1/24", "dev", "pub"]);
    sh(&["ip", "-n", &node, "link", "set", "pub", "up"]);
    sh(&["ip", "-n", &client, "addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    sh(&["ip", "-n", &client, "link", "set", "eth0", "up"]);
    // The outside knows the way back to VMs, so only the node's rules can stop a VM.
    sh(&["ip", "-n", &client, "route", "add", "10.213.0.0/24", "via", "10.77.0.1"]);
    // "sshd" in the VM, and a server the VM will try to reach past the node.
    for (where_, port, text) in [(&vm, 22, "vm-ssh"), (&client, 80, "outside")] {
        let c = Command::new("ip")
            .args([
                "netns",
                "exec",
                where_,
                "socat",
                &format!("TCP-LISTEN:{port},reuseaddr,fork"),
                &format!("SYSTEM:echo {text}"),
            ])
            .spawn()
            .unwrap();
        ns.1.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    // Install the forwards in the node's namespace, as the node manager does.
    let result = std::thread::spawn({
        let node = node.clone();
        move || {
            let f = std::fs::File::open(format!("/run/netns/{node}")).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let fw = SshForward::new(vm_types::host::linux(), "10.77.0.1".parse().unwrap(), "plab0");
            fw.install(&[]).unwrap();
            fw.add(22001, "10.213.0.2".parse().unwrap()).unwrap();
            fw.install(&[(22001, "10.213.0.2".parse().unwrap())]).unwrap();
        }
    })
    .join();
    assert!(result.is_ok(), "installing the forwards failed");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = String::new();
    while Instant::now() < deadline && got != "vm-ssh" {
        got = fetch(&client, "10.77.0.1", 22001);
    }
    assert_eq!(got, "vm-ssh", "the client reaches the VM's port 22 through the forward");
    assert_eq!(fetch(&client, "10.77.0.1", 22002), "", "a port with no VM forwards nowhere");
    // Routed straight at the VM (not through a forward): dropped.
    assert_eq!(fetch(&client, "10.213.0.2", 22), "", "the outside reached a VM port without a forward");
    // The VM cannot reach past the node: routed traffic that is not a forward is dropped.
    assert_eq!(fetch(&vm, "10.77.0.2", 80), "", "the VM reached the outside");
    // Removing the forward closes it (idempotently).
    std::thread::spawn({
        let node = node.clone();
        move || {
            let f = std::fs::File::open(format!("/run/netns/{node}")).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let fw = SshForward::new(vm_types::host::linux(), "10.77.0.1".parse().unwrap(), "plab0");
            fw.remove(22001).unwrap();
            fw.remove(22001).unwrap();
        }
    })
    .join()
    .unwrap();
    assert_eq!(fetch(&client, "10.77.0.1", 22001), "");
}
