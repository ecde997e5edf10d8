//! linux-kvm-x86 through the node manager: a KvmSlice bound on a node whose networking
//! lives in a namespace the test creates becomes a libvirt/QEMU guest (KVM where it runs
//! stock guests, TCG otherwise), reached with OpenSSH at its node-private address; it
//! survives a `kill -9` of the node manager and is removed completely. Needs root,
//! libvirtd (`make test` starts it), qemu-system-x86 and the guest image (`make image`).
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use plab_tests::{
    assert_host_key_refused, assert_key_refused, keypair, prerequisites, qemu_cmdline, virsh_domid, virsh_dumpxml,
    TestNode,
};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

fn virsh_names() -> String {
    let o = Command::new("virsh").args(["-c", "qemu:///system", "list", "--all", "--name"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn integration_kvm_guest_through_the_node_manager() {
    prerequisites();
    let up = Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(up, "libvirtd is not running: `make test` starts it (ci/setup.sh), or run `virtlogd -d; libvirtd -d`");
    // A clean ACPI shutdown under TCG on a loaded 2-core machine can take a while; the
    // test is about the shutdown being clean, not fast.
    let mut node = TestNode::with_config("kvm", "stop_timeout_secs = 120\n");
    let (key, public) = keypair(node.dir.path());
    let mut c = node.client();
    let info = c.call_value("NodeInfo", json!({})).unwrap();
    assert!(
        info["vm_types"].as_array().unwrap().iter().any(|t| t == "linux-kvm-x86"),
        "the node offers linux-kvm-x86: {info}"
    );

    let pool = r#"<PoolRSpec><resources cpu_share="4" disk_quota="4" mem_limit="2048"/></PoolRSpec>"#;
    let root = c.call_str("CreatePool", json!([pool, "plc.it"]), "rcap").unwrap();
    let vm_rspec = format!(
        r#"<KvmSlice name="plc.it.kvm"><resources cpu_share="1" disk_quota="1" mem_limit="256"/><key>{public}</key><bootscript>echo "kvm bootscript ran on $(hostname)"</bootscript></KvmSlice>"#
    );
    let sub = c.call_str("SplitPool", json!([root, vm_rspec]), "rcap").unwrap();
    let t0 = Instant::now();
    let vm = c.call_value("Bind", json!([sub, "plc.it.kvm"])).unwrap();
    let bind = t0.elapsed();
    assert_eq!(vm["vm_type"], "linux-kvm-x86");
    let addr = vm["address"].as_str().unwrap().to_owned();
    let (code, out) = node.ssh_wait(&key, "plc_it_kvm", &addr, Duration::from_secs(120));
    let log = c
        .call_value("VmLog", json!(["plc_it_kvm"]))
        .map(|v| v["log"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    assert_eq!(code, 0, "no ssh login into the guest: {out}\nconsole:\n{log}\nNM log:\n{}", node.nm_log());
    eprintln!(
        "kvm guest: Bind {:.2} s, first ssh login {:.1} s after Bind",
        bind.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let t1 = Instant::now();
    let (_, who) = node.ssh(&key, "plc_it_kvm", &addr, "id -un; hostname");
    eprintln!("kvm guest: a later ssh login takes {:.2} s", t1.elapsed().as_secs_f64());
    assert_eq!(who.lines().collect::<Vec<_>>(), ["plc_it_kvm", "plc-it-kvm"]);

    let st = c.call_value("VmStatus", json!(["plc_it_kvm"])).unwrap();
    assert_eq!(st["state"], "running");
    // What libvirt and QEMU really run the guest with: the node's accelerator.
    let (dtype, accel) = if info["accelerator"] == "kvm" { ("kvm", "-accel kvm") } else { ("qemu", "-accel tcg") };
    assert_eq!(st["details"]["domain_type"], dtype, "{st}");
    assert!(virsh_dumpxml("plab-plc_it_kvm").contains(&format!("<domain type='{dtype}'")), "libvirt's live XML");
    let cmdline = qemu_cmdline("plab-plc_it_kvm");
    assert!(cmdline.contains(accel), "QEMU's command line has {accel}: {cmdline}");
    // The host key the node manager made and shows is the one the guest's sshd presents.
    let host_key = st["details"]["ssh_host_key"].as_str().expect("status shows the ssh host key").to_owned();
    let (code, out) = node.ssh_verified(&key, "plc_it_kvm", &addr, &host_key, "true");
    assert_eq!(code, 0, "the guest presents the host key in its status: {out}");
    let other = vm_types::host_key::generate("x").unwrap().public_openssh;
    assert_host_key_refused(&node.ssh_verified(&key, "plc_it_kvm", &addr, &other, "true"), "a different host key");
    let stranger_dir = node.dir.path().join("stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let (stranger, _) = keypair(&stranger_dir);
    assert_key_refused(&node.ssh_verified(&stranger, "plc_it_kvm", &addr, &host_key, "true"), "a key not in the RSpec");
    let log = c.call_value("VmLog", json!(["plc_it_kvm"])).unwrap()["log"].as_str().unwrap().to_owned();
    assert!(log.contains("kvm bootscript ran on plc-it-kvm"), "{log}");

    // StopVM is a clean shutdown (the ACPI power button): a file written just before,
    // with no sync, is still there after the next start, and so is the host key.
    // A second pool bound to the slice brings another user's key, which the guest reads
    // from the seed at its next boot.
    let bob_dir = node.dir.path().join("bob");
    std::fs::create_dir_all(&bob_dir).unwrap();
    let (bob, bob_public) = keypair(&bob_dir);
    let more = format!(
        r#"<KvmSlice name="plc.it.kvm"><resources cpu_share="0" disk_quota="0" mem_limit="0"/><key>{bob_public}</key></KvmSlice>"#
    );
    let more = c.call_str("SplitPool", json!([root, more]), "rcap").unwrap();
    c.call_value("Bind", json!([more, "plc.it.kvm"])).unwrap();
    let (code, out) = node.ssh(&key, "plc_it_kvm", &addr, "echo kept > ~/unsynced");
    assert_eq!(code, 0, "{out}");
    let t = Instant::now();
    c.call_value("StopVM", json!(["plc_it_kvm"])).unwrap();
    let stop = t.elapsed();
    assert_eq!(c.call_value("VmStatus", json!(["plc_it_kvm"])).unwrap()["state"], "stopped");
    let log = c.call_value("VmLog", json!(["plc_it_kvm"])).unwrap()["log"].as_str().unwrap().to_owned();
    assert!(log.contains("plab-init: powering off"), "the guest powered itself off: {log}");
    c.call_value("StartVM", json!(["plc_it_kvm"])).unwrap();
    let (code, out) = node.ssh_wait(&key, "plc_it_kvm", &addr, Duration::from_secs(120));
    assert_eq!(code, 0, "no ssh after restart: {out}");
    eprintln!("kvm guest: StopVM {:.2} s", stop.as_secs_f64());
    let (code, out) = node.ssh_verified(&key, "plc_it_kvm", &addr, &host_key, "cat ~/unsynced");
    assert_eq!((code, out.trim()), (0, "kept"), "data written before StopVM survives: {out}");
    let (code, out) = node.ssh_verified(&bob, "plc_it_kvm", &addr, &host_key, "id -un");
    assert_eq!((code, out.trim()), (0, "plc_it_kvm"), "the second user's key works after the restart: {out}");
    let log = c.call_value("VmLog", json!(["plc_it_kvm"])).unwrap()["log"].as_str().unwrap().to_owned();
    assert_eq!(log.matches("kvm bootscript ran on plc-it-kvm").count(), 2, "the bootscript runs at every start: {log}");

    // kill -9 the node manager: the guest keeps running (the same QEMU, not one started
    // again by reconciliation) and a new NM knows it.
    let id = virsh_domid("plab-plc_it_kvm");
    node.kill_nm();
    node.start_nm();
    let mut c = node.client();
    assert_eq!(c.call_value("VmStatus", json!(["plc_it_kvm"])).unwrap()["state"], "running");
    assert_eq!(virsh_domid("plab-plc_it_kvm"), id, "the same guest, not a restarted one");
    assert!(!node.nm_log().contains("plc_it_kvm: restarted"), "{}", node.nm_log());
    assert_eq!(node.ssh(&key, "plc_it_kvm", &addr, "true").0, 0);

    // A domain of this node manager's (its metadata names this NM's guest directory) that
    // it has no record of is an orphan: reported, then cleaned. Another node manager's
    // domain on the same libvirtd is neither.
    let define = |name: &str, owner: &str| {
        let xml = node.dir.path().join(format!("{name}.xml"));
        std::fs::write(&xml, format!(
            "<domain type='qemu'><name>{name}</name><metadata><plab:vm xmlns:plab='urn:plab:vm:1' owner='{owner}'/></metadata>\
             <memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>"
        )).unwrap();
        let st = Command::new("virsh").args(["-c", "qemu:///system", "define"]).arg(&xml).output().unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    };
    for leftover in ["plab-orphan_x", "plab-theirs_y"] {
        let _ = Command::new("virsh").args(["-c", "qemu:///system", "undefine", leftover]).output();
    }
    define("plab-orphan_x", "/var/lib/plab/guests");
    define("plab-theirs_y", "/var/lib/plab/another-node");
    let o = c.call_value("Orphans", json!({})).unwrap();
    assert_eq!(o["orphans"], json!([{"vm": "orphan_x", "vm_type": "linux-kvm-x86"}]), "{o}");
    c.call_value("CleanOrphans", json!({})).unwrap();
    assert!(!virsh_names().contains("plab-orphan_x"), "the orphan is gone");
    assert!(virsh_names().contains("plab-theirs_y"), "another node manager's domain is left alone");
    let _ = Command::new("virsh").args(["-c", "qemu:///system", "undefine", "plab-theirs_y"]).output();

    c.call_value("DestroyVM", json!(["plc_it_kvm"])).unwrap();
    assert!(!virsh_names().contains("plab-plc_it_kvm"), "no domain left");
    assert!(!std::path::Path::new("/var/lib/plab/guests/plc_it_kvm").exists(), "no disk or seed left");
}
