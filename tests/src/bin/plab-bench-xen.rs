//! `make bench`: linux-xen-x86 on an emulated Xen host (Xen 4.17 and a PV dom0 under QEMU
//! TCG, so every time here is an emulated host's): the time from Bind to an OpenSSH login
//! in the PV guest through the node manager, and, alternating, the same guest (its disk
//! already booted once) started by the node manager (StartVM) and by hand with
//! `xl create` from the configuration libvirt makes of the node manager's domain
//! (`virsh domxml-to-native xen-xl`), each until OpenSSH logs in. Prints the ratios.
//! `PLAB_BENCH_ITERATIONS` rounds (default 2).
#![allow(clippy::unwrap_used)] // A benchmark: a failed step stops it with its message.

use plab_tests::keypair;
use plab_tests::xen::XenHost;
use std::time::{Duration, Instant};

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rounds: usize = std::env::var("PLAB_BENCH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path());
    let (host, booted) = XenHost::boot(&key);
    println!("linux-xen-x86 on an emulated Xen host (QEMU TCG; times are the emulated host's)");
    println!("  dom0 answers ssh {:.1} s after QEMU starts", booted.as_secs_f64());
    host.start_nm();
    let pool =
        r#"<PoolRSpec vm_type="linux-xen-x86"><resources cpu_share="4" disk_quota="4" mem_limit="1024"/></PoolRSpec>"#;
    let slice = format!(
        r#"<XenSlice name="plc.xen.bench"><resources cpu_share="1" disk_quota="1" mem_limit="256"/><key>{public}</key></XenSlice>"#
    );
    let (_, sub) = host.split_pool("slice", pool, &slice);
    let t = Instant::now();
    let vm = host.nm(&format!("bind {sub} plc.xen.bench"));
    let (name, addr) = (vm["vm"].as_str().unwrap().to_owned(), vm["address"].as_str().unwrap().to_owned());
    host.ssh_guest(&name, &addr, "true", Duration::from_secs(600));
    println!("  Bind to OpenSSH login (first boot of a new PV guest): {:.1} s", t.elapsed().as_secs_f64());
    // The same guest by hand: libvirt's own translation of the node manager's domain to
    // an xl configuration, under another name (the node manager leaves it alone).
    let domain = host.ok(&format!("virsh -c xen:///system list --name | grep -- '{name}'")).trim().to_owned();
    host.ok(&format!(
        "virsh -c xen:///system dumpxml '{domain}' > /root/dom.xml && \
         virsh -c xen:///system domxml-to-native xen-xl /root/dom.xml | sed 's/^name = .*/name = \"by-hand\"/' > /root/hand.cfg"
    ));
    host.nm(&format!("stop {name}"));
    let (mut nm, mut hand) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        host.nm(&format!("start {name}"));
        host.ssh_guest(&name, &addr, "true", Duration::from_secs(600));
        nm.push(t.elapsed().as_secs_f64());
        host.nm(&format!("stop {name}"));
        let t = Instant::now();
        host.ok("xl create /root/hand.cfg >/dev/null");
        host.ssh_guest(&name, &addr, "true", Duration::from_secs(600));
        hand.push(t.elapsed().as_secs_f64());
        host.ok("xl destroy by-hand");
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!("  start to OpenSSH login, {rounds} rounds alternating (the guest's disk booted before):");
    println!("    node manager (StartVM)   {:>6.1} s  (rounds {:?})", mean(&nm), nm);
    println!("    by hand (xl create)      {:>6.1} s  (rounds {:?})", mean(&hand), hand);
    println!("    ratio node manager / by hand  {:.2}", mean(&nm) / mean(&hand));
    host.nm(&format!("destroy {name}"));
}
