//! A stock cloud image as the node's `guest_image`: a disk with its own boot loader,
//! kernel, systemd and cloud-init, and no plab code (`images/build-cloud.sh` builds one
//! from Debian packages, as Debian builds its genericcloud images; none can be downloaded
//! here). The node manager boots it from its disk and cloud-init configures it from the
//! NoCloud seed alone: the address (network-config), the slice login and keys, the VM's
//! host key (the one the node manager shows), and the bootscript at every boot; keys
//! added later arrive at the next boot. StopVM is a clean ACPI shutdown. Needs root, libvirtd and the image (`make test` makes both).
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use plab_tests::{assert_key_refused, keypair, prerequisites, TestNode};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const CLOUD_IMAGE: &str = "/var/cache/plab/images/cloud-bookworm.qcow2";

#[test]
fn integration_stock_cloud_image_configured_by_cloud_init() {
    prerequisites();
    let up = Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(up, "libvirtd is not running: `make test` starts it (ci/setup.sh), or run `virtlogd -d; libvirtd -d`");
    let image = std::env::var("PLAB_CLOUD_IMAGE").unwrap_or_else(|_| CLOUD_IMAGE.into());
    assert!(
        Path::new(&image).exists(),
        "stock cloud image {image} missing: run `make cloud-image` (images/build-cloud.sh)"
    );
    // systemd's shutdown takes a while under TCG on a loaded machine: give it three
    // minutes before forcing it off (the test checks that it was not forced).
    let node = TestNode::with_config("cloud", &format!("guest_image = \"{image}\"\nstop_timeout_secs = 180\n"));
    let (key, public) = keypair(node.dir.path());
    let mut c = node.client();

    let pool = r#"<PoolRSpec><resources cpu_share="4" disk_quota="8" mem_limit="2048"/></PoolRSpec>"#;
    let root = c.call_str("CreatePool", json!([pool, "plc.it"]), "rcap").unwrap();
    // The image's disk is 2 GiB: a smaller quota is refused before anything is made.
    let small = format!(
        r#"<KvmSlice name="plc.it.cloud"><resources cpu_share="1" disk_quota="1" mem_limit="512"/><key>{public}</key></KvmSlice>"#
    );
    let sub = c.call_str("SplitPool", json!([root, small]), "rcap").unwrap();
    let e = c.call_value("Bind", json!([sub, "plc.it.cloud"])).unwrap_err().to_string();
    assert!(e.contains("disk_quota") && e.contains("smaller than the guest image"), "{e}");
    assert!(c.call_value("ListVMs", json!({})).unwrap()["vms"].as_array().unwrap().is_empty(), "{e}");

    let rspec = format!(
        r#"<KvmSlice name="plc.it.cloud"><resources cpu_share="1" disk_quota="3" mem_limit="512"/><key>{public}</key><bootscript>echo "boot as $(id -un)" >> /var/tmp/plab-boots; awk -F: '$1 == "plc_it_cloud" {{print $2}}' /etc/shadow > /var/tmp/plab-shadow; ls /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys > /var/tmp/plab-keyfiles 2>/dev/null; cat /root/.ssh/authorized_keys > /var/tmp/plab-rootkeys 2>/dev/null; chmod 644 /var/tmp/plab-shadow /var/tmp/plab-keyfiles /var/tmp/plab-rootkeys</bootscript></KvmSlice>"#
    );
    let sub = c.call_str("SplitPool", json!([root, rspec]), "rcap").unwrap();
    let t0 = Instant::now();
    let vm = c.call_value("Bind", json!([sub, "plc.it.cloud"])).unwrap();
    let addr = vm["address"].as_str().unwrap().to_owned();
    let host_key = c.call_value("VmStatus", json!(["plc_it_cloud"])).unwrap()["details"]["ssh_host_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let login = |what: &str| -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(400);
        loop {
            let r = node.ssh_verified(&key, "plc_it_cloud", &addr, &host_key, "true");
            if r.0 == 0 || Instant::now() > deadline {
                let log = c_log(&node);
                assert_eq!(r.0, 0, "{what}: no ssh login into the cloud image: {}\nconsole:\n{log}", r.1);
                return r;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    // The first login checks the host key against the one the node manager shows: the
    // guest made none of its own.
    login("first boot");
    eprintln!("stock cloud image: first ssh login {:.1} s after Bind", t0.elapsed().as_secs_f64());
    let run = |cmd: &str| {
        let (code, out) = node.ssh_verified(&key, "plc_it_cloud", &addr, &host_key, cmd);
        assert_eq!(code, 0, "{cmd}: {out}");
        out
    };
    assert_eq!(run("id -un; hostname").lines().collect::<Vec<_>>(), ["plc_it_cloud", "plc-it-cloud"]);
    // The address came from the seed's network-config, on the interface with the VM's MAC.
    let ip = run("ip -4 -o addr show eth0");
    assert!(ip.contains(&format!("inet {addr}/16")), "{ip}");
    // It is a stock image: its own kernel from its own disk, configured by cloud-init.
    assert!(run("uname -r").contains("cloud-amd64"));
    let status = run("cloud-init status --wait --long || true");
    assert!(
        status.contains("status: done"),
        "cloud-init finished without errors: {status}\n{}",
        run("sudo -n tail -30 /var/log/cloud-init-output.log 2>&1 || true")
    );
    // The bootscript ran as root, once per boot (cloud-init may be a little behind ssh).
    let boots = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = run("cat /var/tmp/plab-boots 2>/dev/null || true");
            if out.lines().filter(|l| *l == "boot as root").count() == n || Instant::now() > deadline {
                assert_eq!(out.lines().filter(|l| *l == "boot as root").count(), n, "{out}");
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    boots(1);
    // No password login and no other user with a key: only the slice's. (Read by the
    // bootscript, which runs as root, into files the login may read.)
    let shadow = run("cat /var/tmp/plab-shadow");
    assert!(
        shadow.trim().starts_with('!') || shadow.trim().starts_with('*'),
        "the slice login's password is locked: {shadow:?}"
    );
    // Only the slice login has keys; root's, if cloud-init wrote any (disable_root), only
    // tell whoever tries to log in as root to use the slice login, and close.
    let files = run("cat /var/tmp/plab-keyfiles");
    let files: Vec<&str> = files.lines().collect();
    assert!(
        files == ["/home/plc_it_cloud/.ssh/authorized_keys"]
            || files == ["/home/plc_it_cloud/.ssh/authorized_keys", "/root/.ssh/authorized_keys"],
        "{files:?}"
    );
    for line in run("cat /var/tmp/plab-rootkeys").lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.contains("command=\"echo 'Please login as the user") && line.contains("exit 142"),
            "root cannot log in: {line}"
        );
    }

    // A second pool bound to the slice brings another user's key. It reaches the guest
    // at its next boot: the seed's instance id changes with it, so cloud-init applies it.
    let bob_dir = node.dir.path().join("bob");
    std::fs::create_dir_all(&bob_dir).unwrap();
    let (bob, bob_public) = keypair(&bob_dir);
    let more = format!(
        r#"<KvmSlice name="plc.it.cloud"><resources cpu_share="0" disk_quota="0" mem_limit="0"/><key>{bob_public}</key></KvmSlice>"#
    );
    let more = c.call_str("SplitPool", json!([root, more]), "rcap").unwrap();
    c.call_value("Bind", json!([more, "plc.it.cloud"])).unwrap();
    assert_key_refused(
        &node.ssh_verified(&bob, "plc_it_cloud", &addr, &host_key, "true"),
        "bob's key before the next boot",
    );

    // StopVM is systemd's clean shutdown (ACPI); the next boot runs the bootscript again
    // and keeps the same host key.
    run("echo kept > ~/unsynced");
    let t = Instant::now();
    c.call_value("StopVM", json!(["plc_it_cloud"])).unwrap();
    eprintln!("stock cloud image: StopVM {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(c.call_value("VmStatus", json!(["plc_it_cloud"])).unwrap()["state"], "stopped");
    let log = c_log(&node);
    assert!(
        log.contains("reboot: Power down"),
        "systemd powered the guest off (not forced): {}",
        &log[log.len().saturating_sub(3000)..]
    );
    c.call_value("StartVM", json!(["plc_it_cloud"])).unwrap();
    login("after StopVM/StartVM");
    assert_eq!(run("cat ~/unsynced").trim(), "kept");
    let (code, out) = node.ssh_verified(&bob, "plc_it_cloud", &addr, &host_key, "id -un");
    assert_eq!((code, out.trim()), (0, "plc_it_cloud"), "the second user's key works after the reboot: {out}");
    boots(2);

    c.call_value("DestroyVM", json!(["plc_it_cloud"])).unwrap();
    let names = Command::new("virsh").args(["-c", "qemu:///system", "list", "--all", "--name"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&names.stdout).contains("plab-plc_it_cloud"), "no domain left");
    assert!(!Path::new("/var/lib/plab/guests/plc_it_cloud").exists(), "no disk or seed left");
}

fn c_log(node: &TestNode) -> String {
    node.client()
        .call_value("VmLog", json!(["plc_it_cloud"]))
        .map(|v| v["log"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}
