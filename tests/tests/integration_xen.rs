//! linux-xen-x86 live (issue 11), on an emulated Xen host: Debian's Xen 4.17 with a PV
//! dom0 under QEMU (TCG; `images/build-xen-host.sh`, `images/xen-host.sh`). The node
//! manager runs in dom0 (the host's build shared over 9p) with libvirt's Xen driver;
//! a `XenSlice` RSpec becomes a PV guest of the project's image, its key and bootscript
//! arrive and OpenSSH logs in; its memory and CPU weight show in `xl list` and
//! `xl sched-credit2`; stop, start, `kill -9` of the node manager and reconciliation,
//! destroy. Needs root, QEMU and the image (built here when missing, cached).
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use plab_tests::keypair;
use plab_tests::xen::XenHost;
use std::time::{Duration, Instant};

#[test]
fn integration_xen_a_researcher_logs_in_to_a_pv_guest_made_from_an_rspec_on_an_emulated_xen_host() {
    plab_tests::prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path());
    let (host, booted) = XenHost::boot(&key);
    eprintln!("emulated Xen host: dom0 answers ssh after {booted:?}");
    let info = host.ok("xl info");
    assert!(info.contains("xen_major") && info.contains("virt_caps"), "{info}");
    host.start_nm();
    let node = host.nm("info");
    let types = node["vm_types"].to_string();
    assert!(types.contains("linux-xen-x86"), "the node manager in dom0 offers no linux-xen-x86: {node}");

    // The owner's pool, and a researcher's slice in it, bound: a PV guest.
    let pool =
        r#"<PoolRSpec vm_type="linux-xen-x86"><resources cpu_share="4" disk_quota="4" mem_limit="1024"/></PoolRSpec>"#;
    let slice = format!(
        r#"<XenSlice name="plc.xen.a"><resources cpu_share="3" disk_quota="1" mem_limit="256"/><key>{public}</key><bootscript>echo "xen bootscript ran on $(hostname)" > /tmp/bootscript.out</bootscript></XenSlice>"#
    );
    host.ok(&format!("cat > /root/pool.xml <<'EOF'\n{pool}\nEOF\ncat > /root/slice.xml <<'EOF'\n{slice}\nEOF"));
    let root = host.nm("create-pool /root/pool.xml plc.xen")["rcap"].as_str().unwrap().to_owned();
    let sub = host.nm(&format!("split-pool {root} /root/slice.xml"))["rcap"].as_str().unwrap().to_owned();
    let bind_started = Instant::now();
    let vm = host.nm(&format!("bind {sub} plc.xen.a"));
    let (name, addr) = (vm["vm"].as_str().unwrap().to_owned(), vm["address"].as_str().unwrap().to_owned());
    let login = name.clone();
    let (out, _) = host.ssh_guest(&login, &addr, "id -un; hostname; cat /tmp/bootscript.out", Duration::from_secs(400));
    let bind_to_login = bind_started.elapsed();
    eprintln!("Bind to OpenSSH login in the PV guest (emulated Xen host): {bind_to_login:?}");
    assert!(out.contains(&login) && out.contains("xen bootscript ran on"), "{out}");

    // The RSpec's limits, as Xen has them.
    let domain = host.ok(&format!("virsh -c xen:///system list --name | grep -- '{name}'")).trim().to_owned();
    let list = host.ok(&format!("xl list '{domain}'"));
    let mem: u64 = list.lines().nth(1).and_then(|l| l.split_whitespace().nth(2)).unwrap().parse().unwrap();
    assert!((250..=260).contains(&mem), "256 MB in xl list: {list}");
    let sched = host.ok(&format!("xl sched-credit2 -d '{domain}' || xl sched-credit -d '{domain}'"));
    assert!(sched.contains(&(3 * 1024).to_string()), "weight 3072 (cpu_share 3) in: {sched}");

    // Stop, start; the node manager killed with SIGKILL and started again finds the guest
    // running and keeps it; destroy removes the domain.
    host.nm(&format!("stop {name}"));
    assert_eq!(host.nm(&format!("status {name}"))["state"], "stopped");
    assert!(!host.ok("xl list").contains(&domain), "a stopped guest is no domain");
    host.nm(&format!("start {name}"));
    host.ssh_guest(&login, &addr, "true", Duration::from_secs(400));
    host.ok("pkill -KILL -x plab-nm; sleep 1");
    host.start_nm();
    assert_eq!(host.nm(&format!("status {name}"))["state"], "running");
    host.ssh_guest(&login, &addr, "true", Duration::from_secs(60));
    host.nm(&format!("destroy {name}"));
    assert!(!host.ok("xl list").contains(&domain), "destroyed");
    let left = host.ok("virsh -c xen:///system list --all --name");
    assert!(!left.contains("plab-"), "no domain of the node manager's left: {left}");

    // A dom0 whose toolstack is not running: the node manager (with no other VM type
    // here) refuses to start, saying what to start.
    host.ok("pkill -KILL -x plab-nm; /etc/init.d/libvirtd stop || pkill -x libvirtd; sleep 1");
    let (ok, out) = host.sh("timeout 60 /mnt/plab/plab-nm serve --config /etc/plab/nm.toml 2>&1");
    assert!(!ok, "plab-nm served without libvirtd: {out}");
    assert!(
        out.contains("linux-xen-x86 is unavailable")
            && out.contains("libvirtd")
            && out.contains("no VM type is usable"),
        "{out}"
    );
}
