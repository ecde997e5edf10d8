//! Capture on a real veth pair in network namespaces this test makes: UDP datagrams sent
//! across it come out as one flow with exact counts, and deleting the interface
//! mid-capture flushes its flows and ends the capture. Needs root and iproute2.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use plab_audit::capture::{self, Timeouts};
use plab_audit::store::VmMeta;
use std::process::Command;
use std::time::Duration;

fn ip(args: &str) {
    let o = Command::new("sh").arg("-c").arg(format!("ip {args}")).output().unwrap();
    assert!(o.status.success(), "ip {args}: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_captured_flow_counts_exactly_and_a_vanished_interface_flushes_its_flows() {
    assert!(nix::unistd::geteuid().is_root(), "run as root (make test does)");
    let p = std::process::id();
    let (node, vm) = (format!("pa-node-{p}"), format!("pa-vm-{p}"));
    for ns in [&node, &vm] {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        ip(&format!("netns add {ns}"));
    }
    ip(&format!("-n {node} link add pcap1 type veth peer name eth0 netns {vm}"));
    ip(&format!("-n {node} addr add 10.98.0.1/24 dev pcap1"));
    ip(&format!("-n {node} link set pcap1 up"));
    ip(&format!("-n {vm} addr add 10.98.0.2/24 dev eth0"));
    ip(&format!("-n {vm} link set eth0 up"));
    let meta = VmMeta {
        vm: "v".into(),
        slice: "plc.v".into(),
        users: vec![],
        iface: "pcap1".into(),
        vm_addr: [10, 98, 0, 2].into(),
        public_addr: None,
        nat_ports: None,
        vm_net: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let nsfile = |ns: &str| std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    let (node_f, vm_f) = (nsfile(&node), nsfile(&vm));
    let cap = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(node_f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            capture::start(meta, Timeouts { idle_ms: 1000, active_ms: 60_000 }, tx).unwrap()
        })
        .join()
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(vm_f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let sock = std::net::UdpSocket::bind("10.98.0.2:40000").unwrap();
            for _ in 0..5 {
                sock.send_to(&[7u8; 100], "10.98.0.1:9").unwrap();
            }
        });
    });
    // Idle for a second: the flow ends and is handed on.
    let flows = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|e| {
        panic!(
            "no flow within 10 s ({e}); packets seen {}, ended {}",
            cap.packets.load(std::sync::atomic::Ordering::Relaxed),
            cap.ended()
        )
    });
    let f = flows.iter().find(|f| f.sport == 40000).unwrap_or_else(|| panic!("{flows:?}"));
    assert_eq!((f.packets, f.bytes, f.dport, f.meta.slice.as_str()), (5, 5 * 128, 9, "plc.v"));
    // Traffic, then the interface vanishes mid-capture: what was counted is handed on and
    // the capture ends.
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(nsfile(&vm), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let sock = std::net::UdpSocket::bind("10.98.0.2:40001").unwrap();
            sock.send_to(&[7u8; 10], "10.98.0.1:9").unwrap();
        });
    });
    // Packets are handed over at least every BLOCK_TIMEOUT_MS: older ones are never lost.
    std::thread::sleep(Duration::from_millis(100));
    ip(&format!("netns del {vm}"));
    let flows = rx.recv_timeout(Duration::from_secs(10)).expect("the vanished interface's flows were not flushed");
    assert!(flows.iter().any(|f| f.sport == 40001 && f.packets == 1), "{flows:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cap.ended() {
        assert!(std::time::Instant::now() < deadline, "the capture did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    ip(&format!("netns del {node}"));
}
