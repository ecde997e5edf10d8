//! Integration test of the node network (issue 10, items 1 and 2): a real node manager in
//! a network namespace this test creates, with a public side towards an "outside"
//! namespace the test also creates, and real container VMs.
//!
//! - Outbound NAT: each VM's connections leave the public address from the ports of its
//!   own block, so the outside can tell the VM from the source port alone.
//! - Inbound: a VM's ssh is reachable on its forward port and nowhere else; the outside
//!   cannot route to a VM.
//! - Isolation on the wire (section 4.2): from VM A's network namespace, as host root
//!   (which can do everything root in the VM can, and more: a container's root may not even
//!   change its MAC), `plab-wire` tries ARP poisoning, MAC theft, IP spoofing, sniffing,
//!   a router advertisement, a DHCP answer and sending to VM B directly. Every attack has a
//!   control that succeeds, so the test fails if the tool, not the node, stopped it.
//!
//! Needs root, runc, OpenSSH, nft, socat and the image (`make test` sets them up).
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use plab_tests::{keypair, prerequisites, TestNode};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WIRE: &str = env!("CARGO_BIN_EXE_plab-wire");

/// Runs `cmd` with `sh -c` in network namespace `ns`: (exit code, output).
fn sh_in(ns: &str, cmd: &str) -> (i32, String) {
    let o = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
    )
}

fn must(ns: &str, cmd: &str) -> String {
    let (code, out) = sh_in(ns, cmd);
    assert_eq!(code, 0, "{cmd} in {ns}: {out}");
    out
}

/// Processes to stop.
struct Cleanup(Vec<Child>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_in(ns: &str, cmd: &str) -> Child {
    Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).stdout(Stdio::piped()).spawn().unwrap()
}

/// Starts `plab-wire DEV sniff SECS` in `ns`; returns once it listens.
fn sniffer(ns: &str, dev: &str, secs: u64) -> Child {
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns, WIRE, dev, "sniff", &secs.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(c.stdout.as_mut().unwrap()), &mut first).unwrap();
    assert_eq!(first.trim(), "sniffing");
    c
}

fn sniffed(c: Child) -> String {
    String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned()
}

fn wire(ns: &str, args: &str) {
    must(ns, &format!("{WIRE} eth0 {args}"));
}

fn nat_block(vm: &Value) -> (u16, u16) {
    let s = vm["nat_ports"].as_str().unwrap_or_else(|| panic!("no nat_ports: {vm}"));
    let (a, b) = s.split_once('-').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

#[test]
fn integration_network_nat_blocks_forwards_and_isolation_on_the_wire() {
    prerequisites();
    for (tool, pkg) in [("nft", "nftables"), ("socat", "socat"), ("tc", "iproute2")] {
        let ok = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).stdout(Stdio::null()).status().unwrap();
        assert!(ok.success(), "`{tool}` is missing: apt-get install {pkg}");
    }
    let node = TestNode::with_config("net", "public_address = \"10.77.0.1\"\nvm_host_tcp_ports = [7007]\n");
    // The outside knows the way to the VMs, so only the node's rules can keep it out.
    let out = plab_tests::Outside::new(&node.netns, "net");
    let outside = out.netns.clone();
    let mut cleanup = Cleanup(vec![]);
    let n = &node.netns;

    let (key, public) = keypair(node.dir.path());
    let mut c = node.client();
    let pool = r#"<PoolRSpec vm_type="linux-vserver-x86"><resources cpu_share="8" disk_quota="1" mem_limit="1024"/></PoolRSpec>"#;
    let root = c.call_str("CreatePool", json!([pool, "plc.net"]), "rcap").unwrap();
    let mut vms = Vec::new();
    for s in ["plc.net.a", "plc.net.b"] {
        let r = format!(
            r#"<VServerSlice name="{s}"><resources cpu_share="2" disk_quota="0.05" mem_limit="64"/><key>{public}</key></VServerSlice>"#
        );
        let sub = c.call_str("SplitPool", json!([root, r]), "rcap").unwrap();
        let vm = c.call_value("Bind", json!([sub, s])).unwrap();
        let (name, addr) = (vm["vm"].as_str().unwrap().to_owned(), vm["address"].as_str().unwrap().to_owned());
        let (code, out) = node.ssh_wait(&key, &name, &addr, Duration::from_secs(60));
        assert_eq!(code, 0, "{out}");
        vms.push(c.call_value("VmStatus", json!([name])).unwrap());
    }
    let (a, b) = (&vms[0], &vms[1]);
    let (a_name, b_name) = (a["vm"].as_str().unwrap(), b["vm"].as_str().unwrap());
    let (a_addr, b_addr) = (a["address"].as_str().unwrap(), b["address"].as_str().unwrap());
    let (a_ns, b_ns) = (format!("plab-{a_name}"), format!("plab-{b_name}"));
    let a_mac = vm_types::vm_mac(a_addr.parse().unwrap());
    let b_mac = vm_types::vm_mac(b_addr.parse().unwrap());
    let b_if = b["details"]["interface"].as_str().unwrap().to_owned();
    let bridge_mac = must(n, "cat /sys/class/net/plab0/address").trim().to_owned();

    // 1. Outbound NAT: the outside sees the node's public address and a port of the
    // sender's own block, for TCP and for UDP.
    cleanup.0.push(spawn_in(
        &outside,
        "exec socat TCP-LISTEN:8080,reuseaddr,fork 'SYSTEM:echo $SOCAT_PEERADDR $SOCAT_PEERPORT'",
    ));
    cleanup.0.push(spawn_in(
        &outside,
        "exec socat UDP-RECVFROM:8081,reuseaddr,fork 'SYSTEM:echo $SOCAT_PEERADDR $SOCAT_PEERPORT'",
    ));
    std::thread::sleep(Duration::from_millis(300));
    for vm in [a, b] {
        let (first, last) = nat_block(vm);
        let name = vm["vm"].as_str().unwrap();
        for (proto, port) in [("TCP", 8080), ("UDP", 8081)] {
            let out =
                must(&format!("plab-{name}"), &format!("echo x | timeout 5 socat -T2 - {proto}:10.77.0.2:{port}"));
            let mut words = out.split_whitespace();
            assert_eq!(words.next(), Some("10.77.0.1"), "{name} {proto}: {out}");
            let p: u16 = words.next().unwrap().parse().unwrap();
            assert!((first..=last).contains(&p), "{name} {proto}: source port {p} outside its block {first}-{last}");
        }
    }
    assert_ne!(nat_block(a), nat_block(b));

    // 2. Inbound: the forward port reaches A's sshd; the outside cannot route to a VM.
    let a_port = a["ssh_port"].as_u64().unwrap();
    let banner = must(&outside, &format!("timeout 5 socat -T2 - TCP:10.77.0.1:{a_port} </dev/null | head -c 4"));
    assert_eq!(banner, "SSH-", "the forward reaches the VM's sshd");
    let (code, _) = sh_in(&outside, &format!("timeout 5 socat -T2 - TCP:{a_addr}:22,connect-timeout=2 </dev/null"));
    assert_ne!(code, 0, "the outside reached a VM's port without a forward");

    // 3. The node's own services: only vm_host_tcp_ports, and a refusal is immediate.
    cleanup.0.push(spawn_in(n, "exec socat TCP-LISTEN:7007,bind=10.213.0.1,reuseaddr,fork SYSTEM:'echo open'"));
    cleanup.0.push(spawn_in(n, "exec socat TCP-LISTEN:7008,bind=10.213.0.1,reuseaddr,fork SYSTEM:'echo closed'"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(must(&a_ns, "timeout 5 socat -T2 - TCP:10.213.0.1:7007 </dev/null").trim(), "open");
    let t = Instant::now();
    let (code, out) = sh_in(&a_ns, "timeout 10 socat -T2 - TCP:10.213.0.1:7008,connect-timeout=8 </dev/null");
    assert!(code != 0 && !out.contains("closed"), "a VM reached a node service it may not: {out}");
    assert!(t.elapsed() < Duration::from_secs(8), "the refusal came only as a timeout: {out}");

    // 4. Isolation on the wire. What passes the bridge's checks shows on the node's side
    // of the bridge.
    let node_sniff = sniffer(n, "plab0", 2);
    // B's bandwidth class (what B sends) must not count what A forges.
    let b_index: u32 = b_if.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().unwrap();
    let b_class = format!("class htb 1:{:x} ", b_index + 0x10);
    let b_sent = || {
        let text = must(n, "tc -s class show dev plabup");
        let mut lines = text.lines().skip_while(|l| !l.starts_with(&b_class));
        lines
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no {b_class}in\n{text}"))
            .to_owned()
    };
    let b_before = b_sent();
    // Control: A's own frame (its MAC, its address) reaches the node.
    wire(&a_ns, &format!("udp {a_mac} {bridge_mac} {a_addr} 10.213.0.1 9999 from-a"));
    // IP spoofing: A's MAC with B's address; MAC theft: B's MAC and B's address, from A's
    // port. 300 of each (about 30 kB): were they counted as B's, B's class would show it.
    wire(&a_ns, &format!("udp {a_mac} {bridge_mac} {b_addr} 10.213.0.1 9999 spoofed-ip{} 300", "-".repeat(40)));
    wire(&a_ns, &format!("udp {b_mac} {bridge_mac} {b_addr} 10.213.0.1 9999 stolen-mac{} 300", "-".repeat(40)));
    let got = sniffed(node_sniff);
    assert!(got.contains("from-a"), "the control frame did not arrive, so the test proves nothing: {got:?}");
    assert!(!got.contains("spoofed-ip"), "a spoofed source address reached the node");
    assert!(!got.contains("stolen-mac"), "a stolen MAC reached the node");
    // (B's own traffic, an ARP answer or a late TCP segment, may add a few bytes.)
    let grew = b_sent().parse::<u64>().unwrap() - b_before.parse::<u64>().unwrap();
    assert!(grew < 3000, "{grew} bytes A forged were counted (and queued) in B's bandwidth class");
    let fdb = must(n, &format!("bridge fdb show br plab0 | grep -i {b_mac} || true"));
    assert!(
        !fdb.contains(&format!("dev {}", a["details"]["interface"].as_str().unwrap())),
        "the bridge learned B's MAC on A's port: {fdb}"
    );

    // ARP poisoning: A claims B's address, to the node and to everyone.
    must(n, &format!("echo hello | socat -u - UDP:{b_addr}:9 && sleep 0.2"));
    wire(&a_ns, &format!("arp reply {a_mac} {b_addr} 10.213.0.1 {bridge_mac}"));
    wire(&a_ns, &format!("arp request {a_mac} {b_addr} {b_addr} ff:ff:ff:ff:ff:ff"));
    // Control: A may announce itself.
    wire(&a_ns, &format!("arp reply {a_mac} {a_addr} 10.213.0.1 {bridge_mac}"));
    std::thread::sleep(Duration::from_millis(300));
    let neigh = must(n, &format!("ip neigh show {b_addr}"));
    assert!(neigh.contains(&b_mac) && !neigh.contains(&a_mac), "the node's ARP entry for B was poisoned: {neigh}");
    let neigh = must(n, &format!("ip neigh show {a_addr}"));
    assert!(neigh.contains(&a_mac), "A's own announcement should stand: {neigh}");

    // Sniffing, router advertisement, DHCP answer and frames straight to B. B sniffs too,
    // as the control: what the node sends B does arrive there.
    let a_sniff = sniffer(&a_ns, "eth0", 3);
    let b_sniff = sniffer(&b_ns, "eth0", 3);
    // The node forgets where B's MAC lives, so its next frame to B is flooded.
    let _ = sh_in(n, &format!("bridge fdb del {b_mac} dev {b_if} master"));
    must(n, &format!("echo for-b-flooded | socat -u - UDP:{b_addr}:9"));
    must(n, &format!("echo for-b-known | socat -u - UDP:{b_addr}:9"));
    must(n, &format!("echo for-a | socat -u - UDP:{a_addr}:9"));
    wire(&a_ns, &format!("ra {a_mac}"));
    wire(&a_ns, &format!("dhcp-offer {a_mac} {a_addr}"));
    wire(&a_ns, &format!("udp {a_mac} {b_mac} {a_addr} {b_addr} 9 a-to-b-direct"));
    wire(&a_ns, &format!("udp {a_mac} ff:ff:ff:ff:ff:ff {a_addr} 255.255.255.255 9 a-broadcast"));
    let (seen_a, seen_b) = (sniffed(a_sniff), sniffed(b_sniff));
    assert!(seen_a.contains("for-a"), "A's sniffer saw not even A's own traffic, so it proves nothing:\n{seen_a}");
    assert!(!seen_a.contains("for-b"), "A sniffed B's unicast:\n{seen_a}");
    assert!(seen_b.contains("for-b-flooded") && seen_b.contains("for-b-known"), "B missed its own traffic:\n{seen_b}");
    for bad in ["86dd", "udp 67 > 68", "a-to-b-direct", "a-broadcast"] {
        assert!(!seen_b.contains(bad), "B received {bad} from A:\n{seen_b}");
    }

    // A destroyed VM's tracked connections go with it: its number, address and NAT block
    // may go to the next VM, which must not inherit them.
    let tracked =
        || must(n, &format!("conntrack -L --orig-src {a_addr} 2>/dev/null | wc -l")).trim().parse::<u32>().unwrap();
    assert!(tracked() > 0, "A's connections (to the outside, step 1) are tracked");
    let a_if = a["details"]["interface"].as_str().unwrap();
    let a_index: u32 = a_if.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().unwrap();
    let a_class = format!("1:{:x} ", a_index + 0x10);
    let shaping = || {
        must(
            n,
            "tc class show dev plabup; tc filter show dev plabup; tc class show dev plabdn; tc filter show dev plabdn",
        )
    };
    assert!(shaping().contains(&a_class), "A's classes: {}", shaping());
    c.call_value("DestroyVM", json!([a_name])).unwrap();
    assert_eq!(tracked(), 0, "a destroyed VM's connections are still tracked");
    // ... and its bandwidth classes and filters, both ways.
    let left = shaping();
    assert!(!left.contains(&a_class), "a destroyed VM's classes or filters are left:\n{left}");
    drop(cleanup);
    drop(node);
}

/// Runs `f` on a thread that has joined network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

/// Bits per second that a TCP sender in `from` gets through to a sink in `to` (listening on
/// `addr:port`) in `secs` seconds, measured at the sink after the first half second.
fn throughput(from: &str, to: &str, addr: &str, port: u16, secs: f64) -> f64 {
    use std::io::{Read, Write};
    let target = format!("{addr}:{port}");
    let bind_to = target.clone();
    let listener = in_ns(to, move || std::net::TcpListener::bind(bind_to).unwrap()).join().unwrap();
    let sink = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut buf = vec![0u8; 65536];
        let start = Instant::now();
        let (mut counted, mut since) = (0u64, None);
        while start.elapsed() < Duration::from_secs_f64(secs) {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) if start.elapsed() >= Duration::from_millis(500) => {
                    since.get_or_insert_with(Instant::now);
                    counted += n as u64;
                }
                _ => {}
            }
        }
        let took = since.map(|s: Instant| s.elapsed().as_secs_f64()).unwrap_or(1.0);
        counted as f64 * 8.0 / took
    });
    let sender = in_ns(from, move || {
        let mut s = std::net::TcpStream::connect(&target).unwrap();
        let chunk = vec![0u8; 16384];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs_f64(secs + 0.5) {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let bps = sink.join().unwrap();
    sender.join().unwrap();
    bps
}

fn details(c: &mut plab_nm::NmClient, vm: &str) -> Value {
    c.call_value("VmStatus", json!([vm])).unwrap()["details"].clone()
}

fn bps(d: &Value, key: &str) -> u64 {
    d[key].as_str().unwrap_or_else(|| panic!("no {key}: {d}")).parse().unwrap()
}

#[test]
fn integration_network_bandwidth_base_burst_and_sustained_rates_hold() {
    prerequisites();
    let node = TestNode::with_config(
        "bw",
        "node_rate = 20\nsustained_window_secs = 20\nvm_host_tcp_ports = [7101, 7102, 7110, 7111, 7112, 7113, 7114, 7115, 7116, 7117]\n",
    );
    let n = node.netns.clone();
    let (_, public) = keypair(node.dir.path());
    let mut c = node.client();
    let pool = r#"<PoolRSpec vm_type="linux-vserver-x86"><resources cpu_share="8" disk_quota="1" mem_limit="1024" base_rate="30000" burst_rate="100" sustained_rate="40"/></PoolRSpec>"#;
    let root = c.call_str("CreatePool", json!([pool, "plc.bw"]), "rcap").unwrap();
    let bind = |c: &mut plab_nm::NmClient, slice: &str, rates: &str| {
        let r = format!(
            r#"<VServerSlice name="{slice}"><resources cpu_share="2" disk_quota="0.05" mem_limit="64" {rates}/><key>{public}</key></VServerSlice>"#
        );
        let sub = c.call_str("SplitPool", json!([root, r]), "rcap").unwrap();
        c.call_value("Bind", json!([sub, slice])).unwrap()["vm"].as_str().unwrap().to_owned()
    };
    // A: 200 Kbps guaranteed, 1.5 Mbps ceiling, 0.5 Mbps sustained over 20 s (a budget of
    // 1.25 MB per direction).
    let a = bind(&mut c, "plc.bw.a", r#"base_rate="200" burst_rate="1.5" sustained_rate="0.5""#);
    let a_ns = format!("plab-{a}");
    let a_addr = c.call_value("VmStatus", json!([a])).unwrap()["address"].as_str().unwrap().to_owned();

    // The classes in force, read back from the kernel, are the RSpec's.
    let d = details(&mut c, &a);
    assert_eq!((bps(&d, "rate_up_bps"), bps(&d, "ceil_up_bps")), (200_000, 1_500_000), "{d}");
    assert_eq!((bps(&d, "rate_down_bps"), bps(&d, "ceil_down_bps")), (200_000, 1_500_000), "{d}");

    // What A sends and what it receives is held to its ceiling. (Slowness can only lower
    // what is measured; the upper bound is what the test is about.)
    let up = throughput(&a_ns, &n, "10.213.0.1", 7101, 3.0);
    assert!(
        up < 1_500_000.0 * 1.15 && up > 1_500_000.0 * 0.3,
        "A sent at {up:.0} bit/s against a ceiling of 1.5 Mbit/s\n{}\n{}",
        sh_in(&n, "tc -s class show dev plabup; tc filter show dev plabup; tc filter show dev pv1 ingress").1,
        node.nm_log()
    );
    let down = throughput(&n, &a_ns, &a_addr, 7102, 3.0);
    assert!(down < 1_500_000.0 * 1.15 && down > 1_500_000.0 * 0.3, "A received at {down:.0} bit/s against 1.5 Mbit/s");

    // While A keeps sending, it spends its window's 1.25 MB within about 7 s: its upward
    // ceiling drops to its sustained rate at the next upkeep (every 5 s), which leaves
    // the window at least 8 s to run, and comes back with the next window.
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut d = details(&mut c, &a);
    while bps(&d, "ceil_up_bps") != 500_000 {
        assert!(Instant::now() < deadline, "the ceiling never dropped to the sustained rate: {d}\n{}", node.nm_log());
        throughput(&a_ns, &n, "10.213.0.1", 7101, 1.0);
        d = details(&mut c, &a);
    }
    assert!(d["sustained_capped"].as_str().unwrap().contains("up=true"), "{d}");
    let capped = throughput(&a_ns, &n, "10.213.0.1", 7101, 2.0);
    assert!(capped < 500_000.0 * 1.15, "capped at 0.5 Mbit/s, A sent at {capped:.0} bit/s");
    let deadline = Instant::now() + Duration::from_secs(30);
    while bps(&d, "ceil_up_bps") != 1_500_000 {
        assert!(Instant::now() < deadline, "the ceiling never came back with a new window: {d}");
        std::thread::sleep(Duration::from_millis(500));
        d = details(&mut c, &a);
    }

    // Rates change live when the RSpec does: binding a pool with 1.5 Mbps more burst rate
    // raises the ceiling of the running VM.
    let more = r#"<VServerSlice name="plc.bw.a"><resources burst_rate="1.5"/></VServerSlice>"#;
    let sub = c.call_str("SplitPool", json!([root, more]), "rcap").unwrap();
    c.call_value("Bind", json!([sub, "plc.bw.a"])).unwrap();
    let d = details(&mut c, &a);
    assert_eq!(bps(&d, "ceil_up_bps"), 3_000_000, "{d}");
    assert_eq!(c.call_value("VmStatus", json!([a])).unwrap()["state"], "running");

    // A flooding VM cannot take a neighbour's base rate: the node has 20 Mbit/s; F is
    // guaranteed 15 and may borrow all 20, G is guaranteed 5 and asks for all 20 too. (Were
    // G's guarantee lower, F would take its 15 and half of what is left.)
    let f = bind(&mut c, "plc.bw.f", r#"base_rate="15000" burst_rate="20""#);
    let g = bind(&mut c, "plc.bw.g", r#"base_rate="5000" burst_rate="20""#);
    let (f_ns, g_ns) = (format!("plab-{f}"), format!("plab-{g}"));
    // F floods with 8 connections.
    let floods: Vec<_> = (0..8u16)
        .map(|i| {
            let (n, f_ns) = (n.clone(), f_ns.clone());
            std::thread::spawn(move || throughput(&f_ns, &n, "10.213.0.1", 7110 + i, 6.0))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let neighbour = throughput(&g_ns, &n, "10.213.0.1", 7101, 3.0);
    let flooded: f64 = floods.into_iter().map(|f| f.join().unwrap()).sum();
    println!("flooding VM (8 connections): {flooded:.0} bit/s; neighbour with a 5 Mbit/s base: {neighbour:.0} bit/s");
    assert!(neighbour > 5_000_000.0 * 0.9, "the neighbour got {neighbour:.0} bit/s, below its base rate");

    // No VM is left running without its limits: with the node's upward tree gone, StartVM
    // fails and the VM is stopped again.
    c.call_value("StopVM", json!([g])).unwrap();
    let o = std::process::Command::new("ip").args(["-n", &n, "link", "del", "plabup"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e = c.call_value("StartVM", json!([g])).unwrap_err();
    assert!(e.to_string().contains("bandwidth limits could not be applied"), "{e}");
    assert_eq!(c.call_value("VmStatus", json!([g])).unwrap()["state"], "stopped");
}

#[test]
fn integration_network_root_in_a_kvm_guest_cannot_spoof_poison_or_sniff() {
    prerequisites();
    let up = Command::new("virsh").args(["-c", "qemu:///system", "version"]).output().map(|o| o.status.success());
    assert!(up.unwrap_or(false), "libvirtd is not running: `make test` starts it (ci/setup.sh)");
    let node = TestNode::with_config("netkvm", "");
    let n = node.netns.clone();
    let (key, public) = keypair(node.dir.path());
    let mut c = node.client();
    let pool = r#"<PoolRSpec><resources cpu_share="4" disk_quota="2" mem_limit="1024"/></PoolRSpec>"#;
    let root = c.call_str("CreatePool", json!([pool, "plc.nk"]), "rcap").unwrap();
    let mut vms = Vec::new();
    for (kind, slice, disk) in [("KvmSlice", "plc.nk.guest", "1"), ("VServerSlice", "plc.nk.b", "0.05")] {
        let r = format!(
            r#"<{kind} name="{slice}"><resources cpu_share="1" disk_quota="{disk}" mem_limit="256"/><key>{public}</key></{kind}>"#
        );
        let sub = c.call_str("SplitPool", json!([root, r]), "rcap").unwrap();
        let vm = c.call_value("Bind", json!([sub, slice])).unwrap();
        let (name, addr) = (vm["vm"].as_str().unwrap().to_owned(), vm["address"].as_str().unwrap().to_owned());
        let (code, out) = node.ssh_wait(&key, &name, &addr, Duration::from_secs(120));
        assert_eq!(code, 0, "{name}: {out}\n{}", node.nm_log());
        vms.push((name, addr));
    }
    let ((a, a_addr), (b, b_addr)) = (vms[0].clone(), vms[1].clone());
    let (a_mac, b_mac) = (vm_types::vm_mac(a_addr.parse().unwrap()), vm_types::vm_mac(b_addr.parse().unwrap()));
    let bridge_mac = must(&n, "cat /sys/class/net/plab0/address").trim().to_owned();

    // The attack tool goes into the guest; its root runs it through sudo.
    let copy = Command::new("ip")
        .args(["netns", "exec", &n, "ssh", "-i"])
        .arg(&key)
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .arg(format!("{a}@{a_addr}"))
        .arg("cat > /tmp/plab-wire && chmod +x /tmp/plab-wire && ls /sys/class/net | grep -v '^lo$' | head -n1")
        .stdin(std::fs::File::open(WIRE).unwrap())
        .output()
        .unwrap();
    let dev = String::from_utf8_lossy(&copy.stdout).trim().to_owned();
    assert!(copy.status.success() && !dev.is_empty(), "{}", String::from_utf8_lossy(&copy.stderr));
    let guest = |cmd: &str| node.ssh(&key, &a, &a_addr, &format!("sudo -n /tmp/plab-wire {dev} {cmd}"));

    // Spoofed address, stolen MAC and a poisoned ARP entry, with the guest's own frame as
    // the control; and the guest taking B's MAC for its own interface.
    must(&n, &format!("echo hello | socat -u - UDP:{b_addr}:9 && sleep 0.2"));
    let node_sniff = sniffer(&n, "plab0", 4);
    for cmd in [
        format!("udp {a_mac} {bridge_mac} {a_addr} 10.213.0.1 9999 guest-own"),
        format!("udp {a_mac} {bridge_mac} {b_addr} 10.213.0.1 9999 guest-spoofed-ip"),
        format!("udp {b_mac} {bridge_mac} {b_addr} 10.213.0.1 9999 guest-stolen-mac"),
        format!("arp reply {a_mac} {b_addr} 10.213.0.1 {bridge_mac}"),
        format!("arp request {a_mac} {b_addr} {b_addr} ff:ff:ff:ff:ff:ff"),
        format!("ra {a_mac}"),
        format!("dhcp-offer {a_mac} {a_addr}"),
    ] {
        let (code, out) = guest(&cmd);
        assert_eq!(code, 0, "{cmd}: {out}");
    }
    // Root in the guest takes B's MAC for its interface and sends, then takes its own back
    // (in the background: while it wears B's MAC, its own ssh session is cut off too).
    let theft = format!(
        "sudo -n sh -c '(ip link set dev {dev} address {b_mac} && /tmp/plab-wire {dev} udp {b_mac} {bridge_mac} {a_addr} 10.213.0.1 9999 guest-with-b-mac; \
         sleep 0.5; ip link set dev {dev} address {a_mac}) >/tmp/theft.log 2>&1 &' && echo started"
    );
    let (code, out) = node.ssh(&key, &a, &a_addr, &theft);
    assert!(code == 0 && out.contains("started"), "{out}");
    std::thread::sleep(Duration::from_secs(2));
    let got = sniffed(node_sniff);
    assert!(got.contains("guest-own"), "the guest's own frame did not arrive, so the test proves nothing:\n{got}");
    for bad in ["guest-spoofed-ip", "guest-stolen-mac", "guest-with-b-mac", "86dd", "udp 67 > 68"] {
        assert!(!got.contains(bad), "{bad} from the guest reached the node:\n{got}");
    }
    let neigh = must(&n, &format!("ip neigh show {b_addr}"));
    assert!(neigh.contains(&b_mac) && !neigh.contains(&a_mac), "the node's ARP entry for B was poisoned: {neigh}");
    let fdb = must(&n, &format!("bridge fdb show br plab0 | grep -i {b_mac} || true"));
    assert!(!fdb.contains("pvt"), "the bridge learned B's MAC on the guest's tap: {fdb}");
    // Back to its own MAC, the guest sniffs while the node talks to B (flooded, then
    // known) and to the guest itself.
    let (code, out) = node.ssh_wait(&key, &a, &a_addr, Duration::from_secs(30));
    assert_eq!(code, 0, "{out}");
    let (_, out) = node.ssh(&key, &a, &a_addr, &format!("cat /tmp/theft.log; cat /sys/class/net/{dev}/address"));
    assert!(
        out.contains("sent") && out.trim().ends_with(&a_mac),
        "the guest sent with B's MAC and took its own back: {out}"
    );
    let sniff = {
        let (key, a, a_addr, dev, n) = (key.clone(), a.clone(), a_addr.clone(), dev.clone(), n.clone());
        std::thread::spawn(move || {
            plab_tests::ssh_in(
                &n,
                &key,
                &format!("{a}@{a_addr}"),
                &plab_tests::ANY_HOST_KEY,
                &format!("sudo -n /tmp/plab-wire {dev} sniff 6"),
            )
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let b_if = c.call_value("VmStatus", json!([b])).unwrap()["details"]["interface"].as_str().unwrap().to_owned();
    let _ = sh_in(&n, &format!("bridge fdb del {b_mac} dev {b_if} master"));
    must(&n, &format!("echo for-b-flooded | socat -u - UDP:{b_addr}:9"));
    must(&n, &format!("echo for-b-known | socat -u - UDP:{b_addr}:9"));
    must(&n, &format!("echo for-guest | socat -u - UDP:{a_addr}:9"));
    let seen = String::from_utf8_lossy(&sniff.join().unwrap().stdout).into_owned();
    assert!(seen.contains("for-guest"), "the guest's sniffer saw not even its own traffic:\n{seen}");
    assert!(!seen.contains("for-b"), "the guest sniffed B's unicast:\n{seen}");
    for vm in [&a, &b] {
        c.call_value("DestroyVM", json!([vm])).unwrap();
    }
}
