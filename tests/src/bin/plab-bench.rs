//! `plab-bench`: the node manager's benchmarks, each against a peer measured in the same
//! run, printed with ratios. Needs root, runc and the image, like the integration tests.
//!
//! 1. Container VM lifecycle: NM `Bind` + `DestroyVM` against raw `runc create` + `start`
//!    + `delete` of the same OCI bundle, alternating; plus time from Bind to first ssh login.
//! 2. NM socket: `GetRSpec` calls per second on one connection, against a bare Unix-socket
//!    echo round trip (the floor any local RPC pays).
//! 3. NM resident memory with 100 VM records (100 real container VMs).
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
    let st = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "runc {args:?} failed");
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
    // The raw peer uses the bundle NM generated for a VM of its own (stopped, so its root
    // filesystem, network namespace and config.json are in place but no container runs).
    let raw_pool =
        c.call_str("SplitPool", json!([root, slice_rspec("plc.bench.raw", &public, 64, "0.05")]), "rcap").unwrap();
    c.call_value("Bind", json!([raw_pool, "plc.bench.raw"])).unwrap();
    c.call_value("StopVM", json!(["plc_bench_raw"])).unwrap();
    let bundle = node.state().join("vms/plc_bench_raw/bundle");
    let raw_root = node.dir.path().join("raw-runc");
    std::fs::create_dir_all(&raw_root).unwrap();

    let vm_pool =
        c.call_str("SplitPool", json!([root, slice_rspec("plc.bench.vm", &public, 64, "0.05")]), "rcap").unwrap();
    let (mut nm_cycle, mut raw_cycle, mut first_ssh) = (vec![], vec![], vec![]);
    println!("lifecycle: {iterations} iterations, NM and raw runc alternating");
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
        let (n, r) = if i % 2 == 0 {
            let n = nm();
            (n, raw())
        } else {
            let r = raw();
            (nm(), r)
        };
        nm_cycle.push(n.0);
        first_ssh.push(n.1);
        raw_cycle.push(r);
    }
    let (nmm, rawm) = (median(&mut nm_cycle), median(&mut raw_cycle));
    println!("  NM Bind+DestroyVM (create+start+delete)  median {nmm:8.1} ms");
    println!("  raw runc create+start+delete, same bundle median {rawm:8.1} ms");
    println!("  ratio NM / raw runc                      {:8.2}x   (target <= 1.3x)", nmm / rawm);
    println!("  Bind to first OpenSSH login              median {:8.1} ms", median(&mut first_ssh));
    c.call_value("DestroyVM", json!(["plc_bench_raw"])).unwrap();

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

    // --- 3. memory with N VM records ----------------------------------------------------
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
    println!("  NM resident memory, no VMs               {:8.1} MiB", before as f64 / 1024.0);
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
