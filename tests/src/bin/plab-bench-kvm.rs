//! `plab-bench-kvm`: linux-kvm-x86 guests, three ways, alternating in one run:
//!
//! - through the node manager: `Bind` until the first OpenSSH login, then `DestroyVM`;
//! - raw `virsh create` of the same domain XML (same kernel, initramfs, disk and seed);
//! - raw `qemu-system-x86_64` with the same kernel, initramfs, disk and seed.
//!
//! It prints how long creating the guest took: NM Bind against the same steps by hand
//! (a new host key, the qcow2 overlay and the NoCloud seed, `virsh create`, the tap moved
//! into the node's namespace and onto the bridge; virsh opens a libvirt connection per
//! call where the NM keeps one), the time until sshd's banner answers and until the
//! first ssh login for each, what one more login costs on a running guest, and the node manager's
//! resident memory per running guest (QEMU excluded: it is another process). The
//! accelerator is the node's (TCG on hosts where KVM cannot run stock guests).
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use plab_tests::{guest_files, keypair, prerequisites, raw_qemu, TestNode, GUEST_IMAGE};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use vm_types::libvirt::{domain_xml, LibvirtConfig};
use vm_types::{Quantity, Resources, SliceName, SshKey, VmNetwork, VmSpec, VmType};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ok(c: &mut Command) {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    prerequisites();
    let iterations: usize = std::env::var("PLAB_BENCH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let g = Path::new(GUEST_IMAGE);
    let node = TestNode::new("bkvm");
    let (key, public) = keypair(node.dir.path());
    let mut c = node.client();
    let info = c.call_value("NodeInfo", json!({})).unwrap();
    assert!(info["vm_types"].as_array().unwrap().iter().any(|t| t == "linux-kvm-x86"), "{info}");
    let accel = info["accelerator"].as_str().unwrap_or("tcg").to_owned();
    let pool = r#"<PoolRSpec><resources cpu_share="64" disk_quota="64" mem_limit="16384"/></PoolRSpec>"#;
    let root = c.call_str("CreatePool", json!([pool, "plc.bench"]), "rcap").unwrap();
    let vm_rspec = |slice: &str| {
        format!(
            r#"<KvmSlice name="{slice}"><resources cpu_share="1" disk_quota="1" mem_limit="256"/><key>{public}</key></KvmSlice>"#
        )
    };
    let sub = c.call_str("SplitPool", json!([root, vm_rspec("plc.bench.nm")]), "rcap").unwrap();

    // The raw peers' guest: the same files the backend makes, at an address of its own.
    let raw_dir = node.dir.path().join("bench_raw");
    std::fs::create_dir_all(&raw_dir).unwrap();
    ok(Command::new("chmod").arg("711").arg(node.dir.path()));
    let mut resources = Resources::spec_default();
    resources.disk_quota = Quantity::whole(1);
    let spec = VmSpec {
        name: "bench_raw".into(),
        slice: SliceName::parse("plc.bench.raw").unwrap(),
        vm_type: VmType::LinuxKvmX86,
        resources,
        keys: vec![SshKey::parse(&public).unwrap()],
        bootscript: None,
        network: VmNetwork {
            index: 250,
            address: "10.213.0.250".parse().unwrap(),
            prefix_len: 16,
            gateway: "10.213.0.1".parse().unwrap(),
        },
        nm_socket_dir: None,
    };
    let cfg = LibvirtConfig {
        uri: "qemu:///system".into(),
        vm_type: VmType::LinuxKvmX86,
        domain_type: if accel == "kvm" { "kvm".into() } else { "qemu".into() },
        vm_dir: node.dir.path().to_owned(),
        image: vm_types::libvirt::GuestImage::project(g),
        bridge: "plab0".into(),
        stop_timeout: Duration::from_secs(5),
        tap_move: None,
        owner: "plab-bench".into(),
        scope: String::new(),
        dom0_min_available_mb: 0,
    };
    let fresh_disk = || guest_files(&raw_dir, &spec);
    let xml_path = node.dir.path().join("raw.xml");
    std::fs::write(&xml_path, domain_xml(&cfg, &spec, None).replace("plab-bench_raw", "plabbench-raw")).unwrap();
    // (sshd's banner, first login), both from `since`; then one more login on the running
    // guest, which is what ssh itself costs there.
    let mut later_login = vec![];
    let mut wait_ssh = |addr: &str, login: &str, since: Instant| -> (f64, f64) {
        assert!(node.ssh_banner_wait(addr, Duration::from_secs(180)), "no ssh banner from {addr}");
        let banner = since.elapsed().as_secs_f64();
        let (code, out) = node.ssh_wait(&key, login, addr, Duration::from_secs(180));
        assert_eq!(code, 0, "{out}");
        let first = since.elapsed().as_secs_f64();
        let t = Instant::now();
        let (code, out) = node.ssh(&key, login, addr, "true");
        assert_eq!(code, 0, "{out}");
        later_login.push(t.elapsed().as_secs_f64());
        (banner, first)
    };
    let (mut nm_create, mut nm_ssh, mut virsh_create, mut virsh_ssh, mut qemu_ssh) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut nm_banner, mut virsh_banner, mut qemu_banner) = (vec![], vec![], vec![]);
    let record = |(banner, login): (f64, f64), b: &mut Vec<f64>, l: &mut Vec<f64>| {
        b.push(banner);
        l.push(login);
    };
    for i in 0..iterations {
        let order: [u8; 3] = if i % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for which in order {
            match which {
                0 => {
                    let t = Instant::now();
                    let vm = c.call_value("Bind", json!([sub, "plc.bench.nm"])).unwrap();
                    nm_create.push(t.elapsed().as_secs_f64());
                    record(wait_ssh(vm["address"].as_str().unwrap(), "plc_bench_nm", t), &mut nm_banner, &mut nm_ssh);
                    c.call_value("DestroyVM", json!(["plc_bench_nm"])).unwrap();
                }
                1 => {
                    // The same work a Bind does, timed from the same point: a new host key,
                    // the overlay and the seed, the domain started, the tap attached.
                    let _ = std::fs::remove_file(raw_dir.join(vm_types::host_key::FILE));
                    let t = Instant::now();
                    fresh_disk();
                    ok(Command::new("virsh").args(["-c", "qemu:///system", "create"]).arg(&xml_path));
                    ok(Command::new("ip").args(["link", "set", "pvt250", "netns", &node.netns]));
                    ok(Command::new("ip").args(["-n", &node.netns, "link", "set", "pvt250", "master", "plab0", "up"]));
                    virsh_create.push(t.elapsed().as_secs_f64());
                    record(wait_ssh("10.213.0.250", "plc_bench_raw", t), &mut virsh_banner, &mut virsh_ssh);
                    ok(Command::new("virsh").args(["-c", "qemu:///system", "destroy", "plabbench-raw"]));
                }
                _ => {
                    fresh_disk();
                    ok(Command::new("ip").args(["-n", &node.netns, "tuntap", "add", "pvt251", "mode", "tap"]));
                    ok(Command::new("ip").args(["-n", &node.netns, "link", "set", "pvt251", "master", "plab0", "up"]));
                    let t = Instant::now();
                    let mut q = raw_qemu(&node.netns, &accel, &raw_dir, &spec, "pvt251", None).spawn().unwrap();
                    record(wait_ssh("10.213.0.250", "plc_bench_raw", t), &mut qemu_banner, &mut qemu_ssh);
                    let _ = q.kill();
                    let _ = q.wait();
                    let _ = Command::new("ip").args(["-n", &node.netns, "link", "del", "pvt251"]).status();
                }
            }
        }
    }
    let (nc, vc) = (median(&mut nm_create), median(&mut virsh_create));
    println!("linux-kvm-x86 guests ({accel}), {iterations} iterations, alternating:");
    println!(
        "  create: NM Bind {:8.0} ms   by hand (overlay, seed, virsh create, tap) {:8.0} ms   NM adds {:+6.0} ms (target <= 100 ms)",
        nc * 1e3,
        vc * 1e3,
        (nc - vc) * 1e3
    );
    println!(
        "  sshd's banner:       NM {:6.1} s   virsh {:6.1} s   raw qemu {:6.1} s   (target <= 10 s under TCG)",
        median(&mut nm_banner),
        median(&mut virsh_banner),
        median(&mut qemu_banner)
    );
    println!(
        "  first OpenSSH login: NM {:6.1} s   virsh {:6.1} s   raw qemu {:6.1} s",
        median(&mut nm_ssh),
        median(&mut virsh_ssh),
        median(&mut qemu_ssh)
    );
    println!(
        "  one more login on a running guest (what ssh itself costs under {accel}): {:.2} s",
        median(&mut later_login)
    );

    // Per-VM locks: ten container Binds issued while a guest binds and boots, each on a
    // connection of its own. They wait for no lock of the guest's.
    let kvm_pool = c.call_str("SplitPool", json!([root, vm_rspec("plc.bench.lk")]), "rcap").unwrap();
    let container_pools: Vec<String> = (0..10)
        .map(|i| {
            let r = format!(
                r#"<VServerSlice name="plc.bench.c{i}"><resources cpu_share="1" disk_quota="0.1" mem_limit="64"/><key>{public}</key></VServerSlice>"#
            );
            c.call_str("SplitPool", json!([root, r]), "rcap").unwrap()
        })
        .collect();
    let t = Instant::now();
    let (guest_bound, guest_ssh, containers_done) = std::thread::scope(|sc| {
        let guest = sc.spawn(|| {
            let mut c = node.client();
            let vm = c.call_value("Bind", json!([kvm_pool, "plc.bench.lk"])).unwrap();
            let bound = t.elapsed().as_secs_f64();
            let (code, out) =
                node.ssh_wait(&key, "plc_bench_lk", vm["address"].as_str().unwrap(), Duration::from_secs(180));
            assert_eq!(code, 0, "{out}");
            (bound, t.elapsed().as_secs_f64())
        });
        let binds: Vec<_> = container_pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let node = &node;
                sc.spawn(move || {
                    node.client().call_value("Bind", json!([p, format!("plc.bench.c{i}")])).unwrap();
                    t.elapsed().as_secs_f64()
                })
            })
            .collect();
        let last = binds.into_iter().map(|h| h.join().unwrap()).fold(0.0, f64::max);
        let (bound, ssh) = guest.join().unwrap();
        (bound, ssh, last)
    });
    println!(
        "  per-VM locks: 10 container Binds issued beside a guest's Bind all done at {:.2} s; the guest's Bind returned at {:.2} s, its first login at {:.1} s",
        containers_done, guest_bound, guest_ssh
    );
    let _ = c.call_value("DestroyVM", json!(["plc_bench_lk"]));
    for i in 0..10 {
        let _ = c.call_value("DestroyVM", json!([format!("plc_bench_c{i}")]));
    }

    // NM memory per running guest (QEMU is another process).
    let pid = node.nm_pid().unwrap();
    let before = rss_kib(pid);
    let n = 3;
    for i in 0..n {
        let slice = format!("plc.bench.m{i}");
        let s = c.call_str("SplitPool", json!([root, vm_rspec(&slice)]), "rcap").unwrap();
        c.call_value("Bind", json!([s, slice])).unwrap();
    }
    let after = rss_kib(pid);
    println!(
        "  NM resident memory: {:.1} MiB with no guest, {:.1} MiB with {n} running: {:.0} KiB per guest",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / n as f64
    );
    for i in 0..n {
        let _ = c.call_value("DestroyVM", json!([format!("plc_bench_m{i}")]));
    }
}
