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

    // The launcher refuses a dom0 too small to run the toolstack, before it makes anything.
    let ns = format!("plab-xen-small-{}", std::process::id());
    let o = std::process::Command::new("bash")
        .arg(plab_tests::xen::repo().join("images/xen-host.sh"))
        .arg("start")
        .env("PLAB_XENHOST_DOM0_MEM", "128M")
        .env("PLAB_XENHOST_NETNS", &ns)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("too little") && err.contains("at least 384M"), "{err}");
    let namespaces = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&namespaces.stdout).contains(&ns), "no namespace for a refused host");

    let (host, booted) = XenHost::boot(&key);
    eprintln!("emulated Xen host: dom0 answers ssh after {booted:?}");
    let info = host.ok("xl info");
    assert!(info.contains("xen_major") && info.contains("virt_caps"), "{info}");
    host.start_nm();
    let node = host.nm("info");
    let types = node["vm_types"].to_string();
    assert!(types.contains("linux-xen-x86"), "the node manager in dom0 offers no linux-xen-x86: {node}");

    // An image whose kernel has no PV entry (the project's kernel with its PV entry note
    // retyped: a PVH-only kernel): a node manager given it offers no linux-xen-x86 and
    // says why and what to use.
    host.ok(
        "mkdir -p /root/pvh-only && cd /root/pvh-only && touch .plab-image base.qcow2 initrd.img && \
         perl -0777 -pe 's/\\x04\\0\\0\\0\\x08\\0\\0\\0\\x01\\0\\0\\0Xen\\0/\\x04\\0\\0\\0\\x08\\0\\0\\0\\x7e\\0\\0\\0Xen\\0/' \\
           < /mnt/images/vmlinuz > vmlinuz && ! cmp -s vmlinuz /mnt/images/vmlinuz && \
         sed -e 's|/mnt/images|/root/pvh-only|; s|/run/plab/nm.sock|/run/plab/nm-pvh.sock|; s|/var/lib/plab/nm|/var/lib/plab/nm-pvh|; s|/var/lib/plab/guests|/var/lib/plab/guests-pvh|' \
           /etc/plab/nm.toml > /etc/plab/nm-pvh.toml",
    );
    let (ok, out) = host.sh("timeout 60 /mnt/plab/plab-nm serve --config /etc/plab/nm-pvh.toml 2>&1");
    assert!(!ok, "plab-nm served a kernel without Xen's PV entry: {out}");
    assert!(
        out.contains("linux-xen-x86 is unavailable")
            && out.contains("/root/pvh-only/vmlinuz")
            && out.contains("only a PVH entry point")
            && out.contains("CONFIG_XEN_PV"),
        "{out}"
    );

    // The owner's pool, and a researcher's slice in it, bound: a PV guest.
    let pool =
        r#"<PoolRSpec vm_type="linux-xen-x86"><resources cpu_share="4" disk_quota="4" mem_limit="1024"/></PoolRSpec>"#;
    let slice = format!(
        r#"<XenSlice name="plc.xen.a"><resources cpu_share="3" disk_quota="1" mem_limit="256"/><key>{public}</key><bootscript>echo "xen bootscript ran on $(hostname)" > /tmp/bootscript.out</bootscript></XenSlice>"#
    );
    let (root, sub) = host.split_pool("slice", pool, &slice);
    let bind_started = Instant::now();
    let vm = host.nm(&format!("bind {sub} plc.xen.a"));
    let (name, addr) = (vm["vm"].as_str().unwrap().to_owned(), vm["address"].as_str().unwrap().to_owned());
    let login = name.clone();
    let (out, _) = host.ssh_guest(&login, &addr, "id -un; hostname; cat /tmp/bootscript.out", Duration::from_secs(400));
    let bind_to_login = bind_started.elapsed();
    eprintln!("Bind to OpenSSH login in the PV guest (emulated Xen host): {bind_to_login:?}");
    assert!(out.contains(&login) && out.contains("xen bootscript ran on"), "{out}");

    eprintln!(
        "dom0's memory with one guest running:\n{}",
        host.ok("free -m; ps -o rss=,comm= -C qemu-system-i386,qemu-system-x86_64,qemu-system-xen,libvirtd,xenstored || true")
    );

    // More memory than Xen has free (the machine has 3072 MiB, dom0 768): refused before
    // anything is made, naming mem_limit; the pool stays unbound.
    let big =
        r#"<PoolRSpec vm_type="linux-xen-x86"><resources cpu_share="1" disk_quota="1" mem_limit="2800"/></PoolRSpec>"#;
    let big_slice =
        r#"<XenSlice name="plc.xen.big"><resources cpu_share="1" disk_quota="1" mem_limit="2800"/></XenSlice>"#;
    let (_, big_sub) = host.split_pool("big", big, big_slice);
    for _ in 0..2 {
        let (ok, out) =
            host.sh(&format!("PLAB_NM_SOCKET=/run/plab/nm.sock /mnt/plab/plab nm bind {big_sub} plc.xen.big 2>&1"));
        assert!(!ok && out.contains("mem_limit: VM plc_xen_big needs 2800 MiB") && out.contains("MiB free"), "{out}");
    }
    assert!(!host.ok("virsh -c xen:///system list --all --name").contains("plc_xen_big"), "no domain");
    assert!(!host.sh("test -e /var/lib/plab/guests/plc_xen_big").0, "no guest files");
    assert!(!host.nm("ls").to_string().contains("plc_xen_big"), "no VM record");

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

    // A dom0 with less memory available than a guest's back ends need (the threshold set
    // above what this dom0 has): Bind is refused, saying what to change, nothing is left.
    host.ok("pkill -KILL -x plab-nm; sleep 1; echo 'xen_dom0_min_available_mb = 100000' >> /etc/plab/nm.toml");
    host.start_nm();
    host.ok("sed 's/cpu_share=\"3\"/cpu_share=\"1\"/' /root/slice.xml > /root/slice1.xml");
    let sub = host.nm(&format!("split-pool {root} /root/slice1.xml"))["rcap"].as_str().unwrap().to_owned();
    let (ok, out) = host.sh(&format!("PLAB_NM_SOCKET=/run/plab/nm.sock /mnt/plab/plab nm bind {sub} plc.xen.a 2>&1"));
    assert!(!ok && out.contains("dom0 has") && out.contains("dom0_mem="), "{out}");
    assert!(!host.ok("virsh -c xen:///system list --all --name").contains("plab-"), "no domain");
    assert!(!host.nm("ls").to_string().contains(&name), "no VM record");

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
