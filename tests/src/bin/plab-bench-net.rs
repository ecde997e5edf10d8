//! `plab-bench-net`: how exactly the node manager's bandwidth shaping holds a VM to its
//! rate, against a hand-written `tc` HTB on the same veth, in one run (alternating).
//!
//! Two network namespaces made here ("node" and "VM", joined by a veth pair). For each
//! rate, a TCP sender in the node namespace sends to a sink in the VM's as fast as it can;
//! the rate is what the VM's interface received (its kernel byte counter, so Ethernet
//! headers count, as HTB counts them) over `PLAB_BENCH_SECS` seconds (default 5) after a
//! second of warm-up.
//!
//! - node manager: `plab_nm::shaping::Shaper` (the IFB trees, a class for the VM, the
//!   redirect on its interface), exactly what `plab-nm` writes;
//! - by hand: `tc qdisc add dev pv1 root handle 1: htb default 10` and one class.
//!
//! Then packet capture: the "VM" sends small UDP datagrams as fast as it can (one sender
//! process, `plab-bench-net blast`), and in turn `tcpdump -w /dev/null`, `softflowd`
//! (exporting IPFIX to a closed local port) and `plab-audit`'s capture (the code the
//! service runs, in this process) capture on the node's end: packets seen against packets
//! that crossed the interface, what the capture lost, and CPU seconds per million packets.
//!
//! Needs root, iproute2, ethtool, tcpdump and softflowd. Traffic stays inside the two
//! namespaces.
#![allow(clippy::unwrap_used)] // Benchmark code: a failed unwrap is a failed run.

use plab_nm::shaping::{Class, Shaper};
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

fn ip(args: &str) {
    let o = Command::new("sh").arg("-c").arg(format!("ip {args}")).output().unwrap();
    assert!(o.status.success(), "ip {args}: {}", String::from_utf8_lossy(&o.stderr));
}

use plab_tests::in_netns as in_ns;

fn rx_bytes(ns: &str) -> u64 {
    in_ns(ns, || std::fs::read_to_string("/proc/thread-self/net/dev").unwrap())
        .lines()
        .find_map(|l| l.trim().strip_prefix("eth0:").map(|r| r.split_whitespace().next().unwrap().parse().unwrap()))
        .unwrap()
}

/// Bits per second the VM's interface received while the node sent for `secs`, over
/// one TCP connection or as UDP datagrams of 1472 bytes (full frames) sent as fast as
/// the socket takes them.
fn measure(node: &str, vm: &str, secs: f64, udp: bool) -> f64 {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sink = if udp {
        std::thread::spawn(|| {})
    } else {
        let listener = in_ns(vm, || std::net::TcpListener::bind("10.99.0.2:7000").unwrap());
        std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 65536];
            while c.read(&mut buf).unwrap_or(0) > 0 {}
        })
    };
    let sender = {
        let (node, stop) = (node.to_owned(), stop.clone());
        std::thread::spawn(move || {
            in_ns(&node, || {
                let go = || !stop.load(std::sync::atomic::Ordering::Relaxed);
                if udp {
                    let s = std::net::UdpSocket::bind("10.99.0.1:0").unwrap();
                    let datagram = vec![0u8; 1472];
                    while go() {
                        let _ = s.send_to(&datagram, "10.99.0.2:7001");
                    }
                } else {
                    let mut s = std::net::TcpStream::connect("10.99.0.2:7000").unwrap();
                    let chunk = vec![0u8; 16384];
                    while go() && s.write_all(&chunk).is_ok() {}
                }
            })
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let (b0, t0) = (rx_bytes(vm), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (b1, t1) = (rx_bytes(vm), Instant::now());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    sink.join().unwrap();
    (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64()
}

/// Sends 18-byte UDP datagrams to `addr` for `secs` seconds; prints how many.
/// Small datagrams to `addr` for `secs`: `pps` a second, in bursts of 64 (0: as fast as
/// one sender can).
fn blast(addr: &str, secs: f64, pps: u64) {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let payload = [0u8; 18];
    let (start, mut n) = (Instant::now(), 0u64);
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..64 {
            if s.send_to(&payload, addr).is_ok() {
                n += 1;
            }
        }
        if pps > 0 {
            let due = start + Duration::from_secs_f64(n as f64 / pps as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    println!("{n}");
}

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of proc(5); after the command name, the state
    // (field 3) is word 0, so they are words 11 and 12.
    let tick = |i: usize| f.get(i).and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) as f64 / 100.0
}

fn self_cpu() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

fn rx_packets(ns: &str, dev: &str) -> u64 {
    in_ns(ns, || std::fs::read_to_string("/proc/thread-self/net/dev").unwrap())
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{dev}:")).and_then(|r| r.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// One capture run: (packets the tool saw, packets that crossed, CPU seconds).
fn capture_run(tool: &str, node: &str, vm: &str, secs: f64, pps: u64) -> (u64, u64, f64) {
    let before = rx_packets(node, "pv1");
    let me = std::env::current_exe().unwrap();
    let blast = || {
        Command::new("ip")
            .args(["netns", "exec", vm])
            .arg(&me)
            .args(["blast", "10.99.0.1:9", &secs.to_string(), &pps.to_string()])
            .output()
            .unwrap()
    };
    let result = match tool {
        "plab-audit" => {
            let (tx, rx) = std::sync::mpsc::channel();
            let meta = plab_audit::store::VmMeta {
                vm: "bench".into(),
                slice: "plc.bench".into(),
                users: vec![],
                iface: "pv1".into(),
                vm_addr: [10, 99, 0, 2].into(),
                public_addr: None,
                nat_ports: None,
                vm_net: None,
            };
            let t = plab_audit::capture::Timeouts { idle_ms: 1000, active_ms: 60_000 };
            let cap = in_ns(node, || plab_audit::capture::start(meta, t, tx).unwrap());
            let cpu0 = self_cpu();
            blast();
            std::thread::sleep(Duration::from_millis(300));
            let cpu = self_cpu() - cpu0;
            let packets = cap.packets.clone();
            plab_audit::capture::stop(cap);
            drop(rx);
            (packets.load(std::sync::atomic::Ordering::Relaxed), cpu)
        }
        _ => {
            let args: Vec<&str> = if tool == "tcpdump" {
                vec!["tcpdump", "-i", "pv1", "-n", "-s", "128", "-w", "/dev/null"]
            } else {
                vec![
                    "softflowd",
                    "-i",
                    "pv1",
                    "-d",
                    "-C",
                    "128",
                    "-v",
                    "10",
                    "-n",
                    "127.0.0.1:9995",
                    "-c",
                    "/tmp/plab-bench-softflowd.ctl",
                    "-p",
                    "/tmp/plab-bench-softflowd.pid",
                ]
            };
            let mut child = Command::new("ip")
                .args(["netns", "exec", node])
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(700));
            let cpu0 = cpu_secs(child.id());
            blast();
            std::thread::sleep(Duration::from_millis(300));
            let cpu = cpu_secs(child.id()) - cpu0;
            let seen = if tool == "tcpdump" {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)
                    .unwrap();
                let out = child.wait_with_output().unwrap();
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                err.lines()
                    .find_map(|l| l.strip_suffix(" packets captured").and_then(|n| n.trim().parse().ok()))
                    .unwrap_or(0)
            } else {
                let stats = Command::new("softflowctl")
                    .args(["-c", "/tmp/plab-bench-softflowd.ctl", "statistics"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&stats.stdout).into_owned();
                let _ = child.kill();
                let _ = child.wait();
                text.lines()
                    .find_map(|l| l.strip_prefix("Packets processed: "))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            };
            (seen, cpu)
        }
    };
    let crossed = rx_packets(node, "pv1") - before;
    (result.0, crossed, result.1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("blast") {
        blast(&args[2], args[3].parse().unwrap(), args.get(4).and_then(|p| p.parse().ok()).unwrap_or(0));
        return;
    }
    let secs: f64 = std::env::var("PLAB_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5.0);
    let rounds: usize = std::env::var("PLAB_BENCH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let p = std::process::id();
    let (node, vm) = (format!("pbn-node-{p}"), format!("pbn-vm-{p}"));
    for ns in [&node, &vm] {
        ip(&format!("netns add {ns}"));
        ip(&format!("-n {ns} link set lo up"));
    }
    ip(&format!("-n {node} link add pv1 type veth peer name eth0 netns {vm}"));
    ip(&format!("-n {node} addr add 10.99.0.1/24 dev pv1"));
    ip(&format!("-n {node} link set pv1 up"));
    ip(&format!("-n {vm} addr add 10.99.0.2/24 dev eth0"));
    // The MAC a VM at that address has: the shaping lets nothing else out of the VM.
    ip(&format!("-n {vm} link set eth0 address {}", vm_types::vm_mac("10.99.0.2".parse().unwrap())));
    ip(&format!("-n {vm} link set eth0 up"));
    // Frames as a wire carries them: with segmentation offload, a 64 kB TCP packet crosses
    // the veth whole, HTB counts the headers of every segment it stands for, and the
    // receiver's byte counter does not.
    let o =
        Command::new("ip").args(["netns", "exec", &node, "ethtool", "-K", "pv1", "tso", "off", "gso", "off"]).output();
    assert!(o.is_ok_and(|o| o.status.success()), "ethtool -K failed: apt-get install ethtool");
    let tc = |args: &str| {
        let o = Command::new("ip").args(["netns", "exec", &node, "sh", "-c", &format!("tc {args}")]).output().unwrap();
        assert!(o.status.success(), "tc {args}: {}", String::from_utf8_lossy(&o.stderr));
    };
    // PLAB_BENCH_ONLY=capture or =bandwidth runs one half.
    let only = std::env::var("PLAB_BENCH_ONLY").unwrap_or_default();
    let bandwidth: &[(u64, bool)] = if only == "capture" {
        &[]
    } else {
        &[(1_500_000u64, false), (1_500_000, true), (50_000_000, false), (50_000_000, true)]
    };
    if !bandwidth.is_empty() {
        println!(
            "bandwidth towards a VM: {rounds} rounds of {secs} s each, node manager and hand-written tc alternating"
        );
    }
    for &(rate, udp) in bandwidth {
        let (mut nm, mut hand) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            in_ns(&node, || {
                let s = Shaper::new(vm_types::host::linux(), 1_000_000_000);
                s.install().unwrap();
                let c = Class { rate, ceil: rate };
                s.set(1, "10.99.0.2".parse().unwrap(), c, c).unwrap();
                s.attach("pv1", "10.99.0.2".parse().unwrap()).unwrap();
            });
            nm.push(measure(&node, &vm, secs, udp));
            tc("qdisc del dev pv1 clsact");
            tc(&format!("qdisc add dev pv1 root handle 1: htb default 10 && tc class add dev pv1 parent 1: classid 1:10 htb rate {rate}bit ceil {rate}bit"));
            hand.push(measure(&node, &vm, secs, udp));
            tc("qdisc del dev pv1 root");
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (n, h) = (mean(&nm), mean(&hand));
        let r = rate as f64;
        println!("  held to {:>5.1} Mbit/s, {}:", r / 1e6, if udp { "UDP flood" } else { "one TCP connection" });
        println!(
            "    node manager  {:>8.3} Mbit/s  ({:+.2}% of the rate; rounds {:?})",
            n / 1e6,
            (n / r - 1.0) * 100.0,
            nm.iter().map(|x| (x / 1e4).round() / 100.0).collect::<Vec<_>>()
        );
        println!("    by hand (tc)  {:>8.3} Mbit/s  ({:+.2}% of the rate)", h / 1e6, (h / r - 1.0) * 100.0);
        println!("    ratio node manager / by hand  {:.4}   (target within 1%; accuracy target ±2%)", n / h);
    }
    println!("capture of small UDP datagrams sent as fast as one sender can, {rounds} rounds of {secs} s, alternating");
    let mut results: std::collections::BTreeMap<&str, Vec<(u64, u64, f64)>> = Default::default();
    for _ in 0..if only == "bandwidth" { 0 } else { rounds } {
        for tool in ["tcpdump", "softflowd", "plab-audit"] {
            results.entry(tool).or_default().push(capture_run(tool, &node, &vm, secs, 0));
        }
    }
    let mut per_mpkt = std::collections::BTreeMap::new();
    for (tool, runs) in &results {
        let (seen, crossed, cpu) = runs.iter().fold((0u64, 0u64, 0f64), |a, r| (a.0 + r.0, a.1 + r.1, a.2 + r.2));
        let lost = crossed.saturating_sub(seen) as f64 / crossed.max(1) as f64 * 100.0;
        let cpm = cpu / (seen.max(1) as f64 / 1e6);
        per_mpkt.insert(*tool, cpm);
        println!(
            "  {tool:<10} {:>9.0} packets/s offered, seen {seen} of {crossed} ({lost:.3}% lost), {cpm:.2} CPU s per million packets",
            crossed as f64 / (secs * rounds as f64)
        );
    }
    if let (Some(a), Some(t)) = (per_mpkt.get("plab-audit"), per_mpkt.get("tcpdump")) {
        println!("  ratio plab-audit / tcpdump CPU per packet  {:.2}   (target <= 2)", a / t);
    }
    if only != "bandwidth" {
        // The sweep: each tool at rising offered rates (one run each, alternating); the
        // highest with under 0.1% lost. The last step is as fast as one sender goes.
        println!("capture sweep: the highest offered rate each tool takes with under 0.1% lost ({secs} s per step)");
        let steps = [50_000u64, 100_000, 150_000, 0];
        let mut best: std::collections::BTreeMap<&str, f64> = Default::default();
        for pps in steps {
            for tool in ["tcpdump", "softflowd", "plab-audit"] {
                let (seen, crossed, _) = capture_run(tool, &node, &vm, secs, pps);
                let lost = crossed.saturating_sub(seen) as f64 / crossed.max(1) as f64 * 100.0;
                let offered = crossed as f64 / secs;
                println!("  {tool:<10} offered {offered:>9.0} packets/s: {lost:.3}% lost");
                if lost < 0.1 {
                    let b = best.entry(tool).or_default();
                    *b = b.max(offered);
                }
            }
        }
        for tool in ["tcpdump", "softflowd", "plab-audit"] {
            println!(
                "  {tool:<10} highest rate with under 0.1% lost: {:.0} packets/s (the sender's limit is the last step)",
                best.get(tool).copied().unwrap_or(0.0)
            );
        }
    }
    for ns in [&node, &vm] {
        ip(&format!("netns del {ns}"));
    }
}
