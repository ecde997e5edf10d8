//! linux-kvm-x86 through the node manager: a KvmSlice bound on a node whose networking
//! lives in a namespace the test creates becomes a libvirt/QEMU guest (KVM where it runs
//! stock guests, TCG otherwise), reached with OpenSSH at its node-private address; it
//! survives a `kill -9` of the node manager and is removed completely. Needs root,
//! libvirtd (`make test` starts it), qemu-system-x86 and the guest image (`make image`).

use plab_tests::{keypair, prerequisites, TestNode};
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
    let up = Command::new("virsh").args(["-c", "qemu:///system", "version"]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(up, "libvirtd is not running: `make test` starts it (ci/setup.sh), or run `virtlogd -d; libvirtd -d`");
    let mut node = TestNode::new("kvm");
    let (key, public) = keypair(node.dir.path());
    let mut c = node.client();
    let info = c.call_value("NodeInfo", json!({})).unwrap();
    assert!(info["vm_types"].as_array().unwrap().iter().any(|t| t == "linux-kvm-x86"), "the node offers linux-kvm-x86: {info}");

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
    let log = c.call_value("VmLog", json!(["plc_it_kvm"])).map(|v| v["log"].as_str().unwrap_or("").to_owned()).unwrap_or_default();
    assert_eq!(code, 0, "no ssh login into the guest: {out}\nconsole:\n{log}\nNM log:\n{}", node.nm_log());
    eprintln!("kvm guest: Bind {:.2} s, first ssh login {:.1} s after Bind", bind.as_secs_f64(), t0.elapsed().as_secs_f64());
    let t1 = Instant::now();
    let (_, who) = node.ssh(&key, "plc_it_kvm", &addr, "id -un; hostname");
    eprintln!("kvm guest: a later ssh login takes {:.2} s", t1.elapsed().as_secs_f64());
    assert_eq!(who.lines().collect::<Vec<_>>(), ["plc_it_kvm", "plc-it-kvm"]);

    let st = c.call_value("VmStatus", json!(["plc_it_kvm"])).unwrap();
    assert_eq!(st["state"], "running");
    assert_eq!(st["details"]["accelerator"], info["accelerator"], "the guest runs with the node's accelerator: {st}");
    // The host key the node manager made and shows is the one the guest's sshd presents.
    let host_key = st["details"]["ssh_host_key"].as_str().expect("status shows the ssh host key").to_owned();
    let (code, out) = node.ssh_verified(&key, "plc_it_kvm", &addr, &host_key, "true");
    assert_eq!(code, 0, "the guest presents the host key in its status: {out}");
    let other = vm_types::host_key::generate("x").unwrap().public_openssh;
    let (code, out) = node.ssh_verified(&key, "plc_it_kvm", &addr, &other, "true");
    assert_ne!(code, 0, "a different host key must be refused: {out}");
    let log = c.call_value("VmLog", json!(["plc_it_kvm"])).unwrap()["log"].as_str().unwrap().to_owned();
    assert!(log.contains("kvm bootscript ran on plc-it-kvm"), "{log}");

    // StopVM is a clean shutdown (the ACPI power button): a file written just before,
    // with no sync, is still there after the next start, and so is the host key.
    // A second pool bound to the slice brings another user's key, which the guest reads
    // from the seed at its next boot.
    let bob_dir = node.dir.path().join("bob");
    std::fs::create_dir_all(&bob_dir).unwrap();
    let (bob, bob_public) = keypair(&bob_dir);
    let more = format!(r#"<KvmSlice name="plc.it.kvm"><resources cpu_share="0" disk_quota="0" mem_limit="0"/><key>{bob_public}</key></KvmSlice>"#);
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

    // kill -9 the node manager: the guest keeps running and a new NM knows it.
    node.kill_nm();
    node.start_nm();
    let mut c = node.client();
    assert_eq!(c.call_value("VmStatus", json!(["plc_it_kvm"])).unwrap()["state"], "running");
    assert_eq!(node.ssh(&key, "plc_it_kvm", &addr, "true").0, 0);

    // A plab domain libvirt holds without a record is an orphan: reported, then cleaned.
    let orphan = node.dir.path().join("orphan.xml");
    std::fs::write(&orphan, "<domain type='qemu'><name>plab-orphan_x</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>").unwrap();
    let st = Command::new("virsh").args(["-c", "qemu:///system", "define"]).arg(&orphan).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let o = c.call_value("Orphans", json!({})).unwrap();
    assert!(o["orphans"].as_array().unwrap().iter().any(|x| x["vm"] == "orphan_x" && x["vm_type"] == "linux-kvm-x86"), "{o}");
    c.call_value("CleanOrphans", json!({})).unwrap();
    assert!(!virsh_names().contains("plab-orphan_x"), "the orphan is gone");

    c.call_value("DestroyVM", json!(["plc_it_kvm"])).unwrap();
    assert!(!virsh_names().contains("plab-plc_it_kvm"), "no domain left");
    assert!(!std::path::Path::new("/var/lib/plab/guests/plc_it_kvm").exists(), "no disk or seed left");
}
