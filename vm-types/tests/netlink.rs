//! A VM's network over netlink, as root, in namespaces this test makes: the namespace
//! and veth pair appear as `ip` would make them, set-up is idempotent, and removal leaves
//! nothing. Needs root and iproute2 (to look).
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::process::Command;
use vm_types::netlink;

fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(o.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn integration_netlink_vm_network_in_a_node_namespace() {
    assert!(nix::unistd::geteuid().is_root(), "run as root (make test does)");
    let node = format!("plab-nlt-node-{}", std::process::id());
    let vm = format!("plab-nlt-vm-{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &node]).status();
    ip(&["netns", "add", &node]);
    // The node manager runs in the node's namespace; so does this thread while it works.
    let result = std::thread::spawn({
        let (node, vm) = (node.clone(), vm.clone());
        move || {
            let f = std::fs::File::open(format!("/run/netns/{node}")).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            ip(&["link", "add", "plab0", "type", "bridge"]);
            ip(&["addr", "add", "10.77.0.1/24", "dev", "plab0"]);
            ip(&["link", "set", "plab0", "up"]);
            let setup = || {
                netlink::vm_network(&vm_types::host::VmLink {
                    netns: &vm,
                    host_if: "pv7",
                    bridge: "plab0",
                    mac: "02:00:0a:4d:00:07",
                    address: "10.77.0.7".parse().unwrap(),
                    prefix_len: 24,
                    gateway: "10.77.0.1".parse().unwrap(),
                })
            };
            setup().unwrap();
            assert!(netlink::netns_exists(&vm) && netlink::link_exists("pv7") && !netlink::link_exists("pv8"));
            let host = ip(&["-d", "link", "show", "pv7"]);
            assert!(host.contains("master plab0") && host.contains("state UP") || host.contains("UP"), "{host}");
            let inside = ip(&["-n", &vm, "addr", "show", "eth0"]);
            assert!(
                inside.contains("inet 10.77.0.7/24") && inside.contains("link/ether 02:00:0a:4d:00:07"),
                "{inside}"
            );
            assert!(ip(&["-n", &vm, "route"]).contains("default via 10.77.0.1 dev eth0"));
            assert!(ip(&["-n", &vm, "link", "show", "lo"]).contains("UP"));
            // Again: nothing changes, nothing fails.
            setup().unwrap();
            // The VM's address answers from the node: a connection to a closed port is
            // refused at once (a missing path would time out).
            let e = std::net::TcpStream::connect_timeout(
                &"10.77.0.7:9".parse().unwrap(),
                std::time::Duration::from_secs(3),
            )
            .unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
            netlink::netns_del(&vm).unwrap();
            assert!(!netlink::netns_exists(&vm));
            // The VM's end went with its namespace, and with it the pair.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while netlink::link_exists("pv7") && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert!(!netlink::link_exists("pv7"));
            netlink::netns_del(&vm).unwrap();
        }
    })
    .join();
    let _ = Command::new("ip").args(["netns", "del", &node]).status();
    let _ = Command::new("ip").args(["netns", "del", &vm]).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn integration_netlink_moves_a_link_between_namespaces() {
    assert!(nix::unistd::geteuid().is_root(), "run as root (make test does)");
    // As the libvirt backend moves a guest's tap from libvirtd's namespace to the node's.
    let (from, to) = (format!("plab-nlt-from-{}", std::process::id()), format!("plab-nlt-to-{}", std::process::id()));
    for ns in [&from, &to] {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
        ip(&["netns", "add", ns]);
    }
    let result = std::panic::catch_unwind(|| {
        ip(&["-n", &from, "link", "add", "pvt9", "type", "veth", "peer", "name", "pvt9p"]);
        let from_path = std::path::PathBuf::from(format!("/run/netns/{from}"));
        netlink::move_link("pvt9", &from_path, &to).unwrap();
        ip(&["-n", &to, "link", "show", "dev", "pvt9"]);
        let left = Command::new("ip").args(["-n", &from, "link", "show", "dev", "pvt9"]).output().unwrap();
        assert!(!left.status.success(), "pvt9 left {from}");
        // A link that is not there: the error names it.
        let e = netlink::move_link("pvt9", &from_path, &to).unwrap_err();
        assert!(e.to_string().contains("Cannot find device \"pvt9\""), "{e}");
    });
    for ns in [&from, &to] {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
