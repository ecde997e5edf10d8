//! `plab-bench`: the node manager's benchmarks, each against a peer measured in the same
//! run, printed with ratios. Needs root, runc and the image, like the integration tests.
//!
//! 1. Container VM lifecycle, alternating: NM `Bind` + `DestroyVM`; against the same VM
//!    made by hand with the same tools (sparse image and `mkfs.ext4`, loop, idmapped and overlay
//!    mounts, `ip` for the namespace, veth, address and route, `runc create`/`start`/
//!    `delete`, unmounts, `ip netns del`, `rm`); and against `runc create`/`start`/
//!    `delete` alone on a prepared bundle (the container start, without the VM's disk and
//!    network). Plus the time from Bind to the first OpenSSH login.
//! 2. A VM's network set-up alone: netlink (what the node manager does) against two `ip
//!    -batch` runs (what it did before), alternating, in a node namespace.
//! 3. NM socket: `GetRSpec` calls per second on one connection, against a bare Unix-socket
//!    echo round trip (the floor any local RPC pays).
//! 4. NM resident memory, on a freshly started node manager, with 100 VM records (100 real
//!    container VMs).
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use plab_nm::NmClient;
use plab_tests::{bin, keypair, prerequisites, TestNode};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn runc(root: &std::path::Path, args: &[&str]) {
    let mut err = tempfile::NamedTempFile::new().unwrap();
    let st = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdout(Stdio::null())
        // A file, not a pipe: `create` hands its stdio on to the container's init, and a
        // pipe would never reach its end.
        .stderr(err.reopen().unwrap())
        .status()
        .unwrap();
    let mut why = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut why);
    assert!(st.success(), "runc {args:?} failed: {why}");
}

fn slice_rspec(slice: &str, key: &str, mem: u32, disk: &str) -> String {
    format!(
        r#"<VServerSlice name="{slice}"><resources cpu_share="1" disk_quota="{disk}" mem_limit="{mem}"/><key>{key}</key></VServerSlice>"#
    )
}

fn main() {
    prerequisites();
    let _ = bin("plab-nm");
    let iterations: usize = std::env::var("PLAB_BENCH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let records: usize = std::env::var("PLAB_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let node = TestNode::new("bench");
    let (key, public) = keypair(node.dir.path());
    let mut c = node.client();
    let pool = r#"<PoolRSpec><resources cpu_share="1000" disk_quota="100" mem_limit="100000"/></PoolRSpec>"#;
    let root = c.call_str("CreatePool", json!([pool, "plc.bench"]), "rcap").unwrap();

    // --- 1. lifecycle -------------------------------------------------------------------
    // The raw peers use the bundle NM generated for a VM of its own (stopped, so its
    // config.json is in place but no container runs) as their template.
    let raw_pool =
        c.call_str("SplitPool", json!([root, slice_rspec("plc.bench.raw", &public, 64, "0.05")]), "rcap").unwrap();
    c.call_value("Bind", json!([raw_pool, "plc.bench.raw"])).unwrap();
    c.call_value("StopVM", json!(["plc_bench_raw"])).unwrap();
    let bundle = node.state().join("vms/plc_bench_raw/bundle");
    let template = std::fs::read_to_string(bundle.join("config.json")).unwrap();
    let raw_root = node.dir.path().join("raw-runc");
    std::fs::create_dir_all(&raw_root).unwrap();
    let hand = HandMade::new(&node, &template);

    let vm_pool =
        c.call_str("SplitPool", json!([root, slice_rspec("plc.bench.vm", &public, 64, "0.05")]), "rcap").unwrap();
    let (mut nm_cycle, mut hand_cycle, mut raw_cycle, mut first_ssh) = (vec![], vec![], vec![], vec![]);
    println!("lifecycle: {iterations} iterations, NM, by hand and raw runc alternating");
    for i in 0..iterations {
        let raw = || {
            let id = format!("bench-raw-{i}");
            let t = Instant::now();
            runc(&raw_root, &["create", "--bundle", &bundle.to_string_lossy(), &id]);
            runc(&raw_root, &["start", &id]);
            runc(&raw_root, &["delete", "--force", &id]);
            ms(t.elapsed())
        };
        let mut nm = || {
            let t = Instant::now();
            let vm = c.call_value("Bind", json!([vm_pool, "plc.bench.vm"])).unwrap();
            let bind = t.elapsed();
            let addr = vm["address"].as_str().unwrap().to_owned();
            let (code, out) = node.ssh_ready(&key, "plc_bench_vm", &addr);
            assert_eq!(code, 0, "{out}");
            let ssh = t.elapsed();
            let t2 = Instant::now();
            c.call_value("DestroyVM", json!(["plc_bench_vm"])).unwrap();
            (ms(bind + t2.elapsed()), ms(ssh))
        };
        // Rotate the order, so that no peer always runs right after another.
        let mut order = [0, 1, 2];
        order.rotate_left(i % 3);
        for o in order {
            match o {
                0 => {
                    let n = nm();
                    nm_cycle.push(n.0);
                    first_ssh.push(n.1);
                }
                1 => hand_cycle.push(hand.cycle(&format!("plab-bench-hand-{i}"))),
                _ => raw_cycle.push(raw()),
            }
        }
    }
    let (nmm, handm, rawm) = (median(&mut nm_cycle), median(&mut hand_cycle), median(&mut raw_cycle));
    println!("  NM Bind+DestroyVM (disk, network, container)   median {nmm:8.1} ms");
    println!("  by hand: same disk, mounts, network (ip), runc median {handm:8.1} ms");
    println!("  raw runc create+start+delete, same bundle      median {rawm:8.1} ms");
    println!("  ratio NM / by hand                             {:8.2}x   (target <= 1.0x)", nmm / handm);
    println!("  ratio NM / raw runc alone                      {:8.2}x   (target <= 1.3x)", nmm / rawm);
    println!("  Bind to first OpenSSH login                    median {:8.1} ms", median(&mut first_ssh));
    c.call_value("DestroyVM", json!(["plc_bench_raw"])).unwrap();

    // --- 2. network set-up alone --------------------------------------------------------
    let (mut nl, mut viaip) = (vec![], vec![]);
    let netns_of_node = node.netns.clone();
    for i in 0..iterations * 2 {
        let ns = format!("plab-bench-net-{i}");
        let t = in_netns(&netns_of_node, || {
            let t = Instant::now();
            let (a, p, g) = ("10.213.1.2".parse().unwrap(), 16, "10.213.0.1".parse().unwrap());
            let link = vm_types::host::VmLink {
                netns: &ns,
                host_if: "pvbench",
                bridge: "plab0",
                mac: "02:00:0a:d5:01:02",
                address: a,
                prefix_len: p,
                gateway: g,
            };
            if i % 2 == 0 {
                vm_types::netlink::vm_network(&link).unwrap();
            } else {
                vm_types::host::vm_network_with_ip(&vm_types::host::LinuxHost, &link).unwrap();
            }
            let e = ms(t.elapsed());
            vm_types::netlink::netns_del(&ns).unwrap();
            // The host end goes with the namespace's end; wait so the next run starts clean.
            while vm_types::netlink::link_exists("pvbench") {
                std::thread::sleep(Duration::from_millis(5));
            }
            e
        });
        if i % 2 == 0 {
            nl.push(t)
        } else {
            viaip.push(t)
        }
    }
    let (nlm, ipm) = (median(&mut nl), median(&mut viaip));
    println!("network set-up of one VM (namespace, veth, bridge, address, route): {iterations} each, alternating");
    println!("  netlink (the node manager)               median {nlm:8.2} ms");
    println!("  two `ip -batch` runs (before)            median {ipm:8.2} ms");
    println!("  ratio netlink / ip                       {:8.2}x", nlm / ipm);

    // --- 2. socket throughput -----------------------------------------------------------
    let window = Duration::from_secs(3);
    let mut n = 0u64;
    let t = Instant::now();
    while t.elapsed() < window {
        for _ in 0..100 {
            c.call_value("GetRSpec", json!({"rcap": root})).unwrap();
        }
        n += 100;
    }
    let nm_rate = n as f64 / t.elapsed().as_secs_f64();
    // Peer: a bare echo of the same request size over a Unix socket (no JSON, no lookup).
    let echo_path = node.dir.path().join("echo.sock");
    let listener = std::os::unix::net::UnixListener::bind(&echo_path).unwrap();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if w.write_all(line.as_bytes()).is_err() {
                break;
            }
            line.clear();
        }
    });
    let s = std::os::unix::net::UnixStream::connect(&echo_path).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let req = format!("{}\n", json!({"jsonrpc":"2.0","id":1,"method":"GetRSpec","params":{"rcap": root}}));
    let (mut m, mut line) = (0u64, String::new());
    let t = Instant::now();
    while t.elapsed() < window {
        for _ in 0..100 {
            w.write_all(req.as_bytes()).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
        }
        m += 100;
    }
    let echo_rate = m as f64 / t.elapsed().as_secs_f64();
    println!("socket: one connection, {} s each", window.as_secs());
    println!("  NM GetRSpec                              {nm_rate:10.0} calls/s   (target >= 10000/s)");
    println!("  bare Unix-socket echo (floor)            {echo_rate:10.0} round trips/s");
    println!("  ratio NM / echo                          {:10.2}", nm_rate / echo_rate);

    // --- 4. memory with N VM records, on a fresh node manager ---------------------------
    drop(c);
    drop(node);
    let node = TestNode::new("benchmem");
    let mut c = node.client();
    let root = c.call_str("CreatePool", json!([pool, "plc.bench"]), "rcap").unwrap();
    let pid = node.nm_pid().unwrap();
    let rss = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
    };
    let before = rss();
    let t = Instant::now();
    for i in 0..records {
        let name = format!("plc.bench.m{i}");
        let sub = c.call_str("SplitPool", json!([root, slice_rspec(&name, &public, 32, "0.016")]), "rcap").unwrap();
        c.call_value("Bind", json!([sub, name])).unwrap();
    }
    let created = t.elapsed();
    let vms = c.call_value("ListVMs", json!({})).unwrap()["vms"].as_array().unwrap().len();
    let after = rss();
    println!(
        "memory: {vms} running container VMs created in {:.1} s ({:.0} ms each)",
        created.as_secs_f64(),
        ms(created) / records as f64
    );
    println!("  NM resident memory, fresh, no VMs        {:8.1} MiB", before as f64 / 1024.0);
    println!("  NM resident memory, {vms} VM records       {:8.1} MiB   (target < 30 MiB)", after as f64 / 1024.0);
    println!(
        "  per VM                                   {:8.1} KiB",
        (after.saturating_sub(before)) as f64 / vms as f64
    );
    let mut c2 = NmClient::connect(&node.socket()).unwrap();
    for i in 0..records {
        c2.call_value("DestroyVM", json!([format!("plc_bench_m{i}")])).unwrap();
    }
}

/// Runs `f` on a thread inside network namespace `ns` (the node's).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// A container VM made and removed by hand, with the tools an operator would use, doing
/// the work a Bind and a DestroyVM do.
struct HandMade {
    dir: std::path::PathBuf,
    runc_root: std::path::PathBuf,
    image: String,
    netns_of_node: String,
    template: String,
    /// The template's first host uid (its VM's root).
    uid_base: u32,
}

impl HandMade {
    fn new(node: &TestNode, template: &str) -> HandMade {
        let dir = node.dir.path().join("hand");
        let runc_root = dir.join("runc");
        std::fs::create_dir_all(&runc_root).unwrap();
        let image = std::env::var("PLAB_IMAGE_DIR").unwrap_or_else(|_| plab_tests::IMAGE.into());
        let config: serde_json::Value = serde_json::from_str(template).unwrap();
        let uid_base = config["linux"]["uidMappings"][0]["hostID"].as_u64().unwrap() as u32;
        HandMade { dir, runc_root, image, netns_of_node: node.netns.clone(), template: template.to_owned(), uid_base }
    }

    fn sh(&self, cmd: &str) {
        let o = Command::new("sh").arg("-ec").arg(cmd).output().unwrap();
        assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
    }

    /// One VM made, started and removed; milliseconds.
    fn cycle(&self, name: &str) -> f64 {
        let d = self.dir.join(name);
        let (disk, rootfs, bundle) = (d.join("disk"), d.join("rootfs"), d.join("bundle"));
        let img = d.join("disk.img");
        let ns = format!("{name}-ns");
        let node_ns = &self.netns_of_node;
        let t = Instant::now();
        for p in [&disk, &rootfs, &bundle] {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::File::create(&img).unwrap().set_len(50 << 20).unwrap();
        self.sh(&format!(
            "mkfs.ext4 -q -F -m 0 -E lazy_itable_init=1,lazy_journal_init=1 -L plab-vm {}",
            img.display()
        ));
        self.sh(&format!("mount -o loop,nodev,nosuid {} {}", img.display(), disk.display()));
        std::fs::create_dir_all(disk.join("upper")).unwrap();
        std::fs::create_dir_all(disk.join("work")).unwrap();
        // The VM's root owns its `/` (the user namespace's range; the template's), and
        // sees the image through an idmapped mount: util-linux 2.38 has no command for
        // one, so this step calls the same library function the node manager does.
        self.sh(&format!("chown {0}:{0} {1}", self.uid_base, disk.join("upper").display()));
        let lower = d.join("lower");
        std::fs::create_dir_all(&lower).unwrap();
        let ids = vm_types::idmap::IdMap { host_base: self.uid_base, count: 65536 };
        vm_types::idmap::bind(&[(std::path::Path::new(&self.image), lower.as_path())], ids).unwrap();
        self.sh(&format!(
            "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}",
            lower.display(),
            disk.join("upper").display(),
            disk.join("work").display(),
            rootfs.display()
        ));
        self.sh(&format!(
            "ip netns add {ns}; ip netns exec {node_ns} ip link add pvhand type veth peer name eth0 address 02:00:0a:d5:02:02 netns {ns}; \
             ip -n {node_ns} link set pvhand master plab0 up; ip -n {ns} link set lo up; \
             ip -n {ns} addr replace 10.213.2.2/16 dev eth0; ip -n {ns} link set eth0 up; ip -n {ns} route replace default via 10.213.0.1; \
             ip netns exec {ns} sysctl -qw net.ipv4.ip_unprivileged_port_start=0"
        ));
        let config = self
            .template
            .replace("/vms/plc_bench_raw/rootfs", &format!("/../hand/{name}/rootfs"))
            .replace("/var/run/netns/plab-plc_bench_raw", &format!("/var/run/netns/{ns}"));
        let config = config.replace("\"/plab/plc_bench_raw\"", &format!("\"/plab/{name}\""));
        std::fs::write(bundle.join("config.json"), config).unwrap();
        let pid_file = d.join("init.pid");
        runc(
            &self.runc_root,
            &["create", "--bundle", &bundle.to_string_lossy(), "--pid-file", &pid_file.to_string_lossy(), name],
        );
        self.sh(&format!(
            "nsenter --target $(cat {}) --user -- sysctl -qw user.max_inotify_instances=128 user.max_inotify_watches=65536",
            pid_file.display()
        ));
        runc(&self.runc_root, &["start", name]);
        runc(&self.runc_root, &["delete", "--force", name]);
        self.sh(&format!(
            "umount -l {}; umount -l {}; umount -l {}; ip netns del {ns}",
            rootfs.display(),
            lower.display(),
            disk.display()
        ));
        std::fs::remove_dir_all(&d).unwrap();
        ms(t.elapsed())
    }
}
