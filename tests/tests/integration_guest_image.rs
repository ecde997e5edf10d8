//! The linux-kvm-x86 guest image (images/build-guest.sh): a stock Debian kernel with the
//! project's initramfs and root filesystem boots under QEMU (TCG, as on hosts where KVM
//! cannot run stock guests), reads the NoCloud seed the libvirt backend writes, grows its
//! root filesystem to the disk quota, runs the bootscript and lets the slice's user log in
//! with OpenSSH. QEMU runs inside a network namespace this test creates, on a tap in a
//! bridge there. Needs root, qemu-system-x86 and the guest image (`make image`).
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use plab_tests::{guest_files, keypair, prerequisites, raw_qemu};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vm_types::{Quantity, Resources, SliceName, SshKey, VmNetwork, VmSpec, VmType};

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Qemu(std::process::Child);
impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ip(ns: &str, args: &str) {
    let st = Command::new("ip").args(["-n", ns]).args(args.split(' ')).status().unwrap();
    assert!(st.success(), "ip -n {ns} {args}");
}

#[test]
fn integration_guest_image_boots_under_tcg_and_takes_an_ssh_login() {
    prerequisites();
    let ok = Command::new("sh")
        .arg("-c")
        .arg("command -v qemu-system-x86_64")
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "qemu-system-x86_64 is missing: apt-get install qemu-system-x86 (make test installs it)");

    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path());
    let mut resources = Resources::spec_default();
    resources.disk_quota = Quantity::from_milli(1000);
    let spec = VmSpec {
        name: "plc_guest".into(),
        slice: SliceName::parse("plc.guest").unwrap(),
        vm_type: VmType::LinuxKvmX86,
        resources,
        keys: vec![SshKey::parse(&public).unwrap()],
        bootscript: Some("echo \"guest bootscript ran on $(hostname)\"".into()),
        network: VmNetwork {
            index: 1,
            address: "10.214.0.2".parse().unwrap(),
            prefix_len: 24,
            gateway: "10.214.0.1".parse().unwrap(),
        },
        nm_socket_dir: None,
    };
    guest_files(dir.path(), &spec);

    let ns = Netns(format!("plab-gi-{}", std::process::id()));
    let _ = Command::new("ip").args(["netns", "del", &ns.0]).stderr(Stdio::null()).status();
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
    ip(&ns.0, "link set lo up");
    ip(&ns.0, "link add br0 type bridge");
    ip(&ns.0, "addr add 10.214.0.1/24 dev br0");
    ip(&ns.0, "link set br0 up");
    ip(&ns.0, "tuntap add tap0 mode tap");
    ip(&ns.0, "link set tap0 master br0 up");

    let console = dir.path().join("console.log");
    let started = Instant::now();
    let _qemu = Qemu(raw_qemu(&ns.0, "tcg", dir.path(), &spec, "tap0", Some(&console)).spawn().unwrap());
    let ssh = |cmd: &str| plab_tests::ssh_in(&ns.0, &key, "plc_guest@10.214.0.2", &plab_tests::ANY_HOST_KEY, cmd);
    let deadline = started + Duration::from_secs(120);
    let out = loop {
        let o = ssh("echo $(id -un) $(hostname)");
        if o.status.success() || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        out.status.success(),
        "no ssh login within 120 s: {}\nconsole:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("guest: first ssh login {:.1} s after QEMU started (TCG)", started.elapsed().as_secs_f64());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "plc_guest plc-guest");
    // The root filesystem is grown to the quota in the background after sshd starts
    // (so as not to slow the way to ssh), and the bootscript runs in the background too:
    // wait for both.
    let deadline = Instant::now() + Duration::from_secs(120);
    let size_mb = loop {
        let o = ssh("df -B1M --output=size / | tail -1");
        let mb: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0);
        if mb > 900 || Instant::now() > deadline {
            break mb;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(size_mb > 900, "root filesystem grown to the 1 GB quota: {size_mb} MB");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&console).unwrap_or_default().contains("guest bootscript ran on plc-guest")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(log.contains("guest bootscript ran on plc-guest"), "{log}");
    // A key that is not the slice's does not get in.
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let (other, _) = keypair(&other_dir);
    let o = plab_tests::ssh_in(&ns.0, &other, "plc_guest@10.214.0.2", &plab_tests::ANY_HOST_KEY, "true");
    let r = (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned());
    plab_tests::assert_key_refused(&r, "a key not the slice's");
}
