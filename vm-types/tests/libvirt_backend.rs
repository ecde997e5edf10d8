//! The libvirt backend: domain XML for linux-kvm-x86 and linux-xen-x86 is valid for
//! libvirt's own schema (virt-xml-validate), and the lifecycle runs against libvirt's
//! test driver, which needs no hypervisor. Each test gets a test driver of its own
//! (`test:///<file>`: the default one is shared by every connection of the process, and
//! cargo runs these tests side by side). Host commands go through the real host except
//! where a test makes one fail. Needs libvirt-clients, qemu-utils, dosfstools and mtools
//! (`make test` installs them).
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use vm_types::host::recording::RecordingHost;
use vm_types::host::{Cmd, Host, LinuxHost};
use vm_types::libvirt::image::write_test_kernel;
use vm_types::libvirt::{
    domain_xml, meta_data, network_config, user_data, GuestBoot, GuestImage, LibvirtBackend, LibvirtConfig,
};
use vm_types::{Backend, BackendError, Resources, SliceName, SshKey, VmNetwork, VmSpec, VmState, VmType};

/// A test driver with its own empty hypervisor: a node description in `dir`.
fn private_test_uri(dir: &Path) -> String {
    let node = dir.join("test-node.xml");
    std::fs::write(
        &node,
        "<node><cpu><mhz>6000</mhz><model>i686</model><active>2</active><nodes>1</nodes><sockets>1</sockets>\
         <cores>2</cores><threads>1</threads></cpu><memory>8388608</memory></node>",
    )
    .unwrap();
    format!("test://{}", node.display())
}

/// The real host for file work (qemu-img, mkfs.vfat, mcopy), recording every command;
/// the tap commands, which need root and a bridge, only recorded.
struct RealFilesHost {
    record: RecordingHost,
}

impl Host for RealFilesHost {
    fn run(&self, cmd: &Cmd) -> Result<String, BackendError> {
        self.record.run(cmd)?;
        if ["qemu-img", "mkfs.vfat", "mcopy"].contains(&cmd.prog.as_str()) {
            LinuxHost.run(cmd)
        } else {
            Ok(String::new())
        }
    }
    fn run_logged(&self, cmd: &Cmd, log: &Path) -> Result<bool, BackendError> {
        self.record.run_logged(cmd, log)
    }
    fn is_mounted(&self, path: &Path) -> bool {
        self.record.is_mounted(path)
    }
}

fn host() -> Arc<RealFilesHost> {
    Arc::new(RealFilesHost { record: RecordingHost::new() })
}

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINvd4JWqGILryt7c7j2YX8GNJTHiRXgCbcOQj+vURAyx alice@example.org";
const KEY2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBk4pK5IYqk/NsoJWXGxbqUZBMzIjzY2JwqXEhyS6H7T bob@example.org";

fn spec(vm_type: VmType) -> VmSpec {
    let mut resources = Resources::spec_default();
    resources.disk_quota = vm_types::Quantity::from_milli(100);
    VmSpec {
        name: "plc_demo".into(),
        slice: SliceName::parse("plc.demo").unwrap(),
        vm_type,
        resources,
        keys: vec![SshKey::parse(KEY).unwrap()],
        bootscript: Some("#!/bin/sh\necho \"hello <&> world\"".into()),
        network: VmNetwork {
            index: 1,
            address: "10.213.0.2".parse().unwrap(),
            prefix_len: 24,
            gateway: "10.213.0.1".parse().unwrap(),
        },
        nm_socket_dir: None,
    }
}

fn config(dir: &Path, vm_type: VmType, domain_type: &str) -> LibvirtConfig {
    LibvirtConfig {
        uri: private_test_uri(dir),
        vm_type,
        domain_type: domain_type.into(),
        vm_dir: dir.join("vms"),
        image: GuestImage::project(dir),
        bridge: "plab0".into(),
        stop_timeout: Duration::from_secs(2),
        tap_move: None,
        owner: "test-owner".into(),
        scope: String::new(),
        dom0_min_available_mb: 64,
    }
}

fn require(tool: &str, pkg: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "`{tool}` is missing: apt-get install {pkg} (make test installs it)");
}

#[test]
fn domain_xml_is_valid_for_libvirts_schema() {
    require("virt-xml-validate", "libvirt-clients");
    let dir = tempfile::tempdir().unwrap();
    let stock_image = GuestImage {
        disk: dir.path().join("cloud.qcow2"),
        format: "qcow2",
        virtual_size: 0,
        boot: GuestBoot::Firmware,
    };
    for (t, dtype, stock) in [
        (VmType::LinuxKvmX86, "qemu", false),
        (VmType::LinuxKvmX86, "kvm", false),
        (VmType::LinuxXenX86, "xen", false),
        (VmType::LinuxKvmX86, "qemu", true),
        (VmType::LinuxXenX86, "xen", true),
    ] {
        let mut cfg = config(dir.path(), t, dtype);
        if stock {
            cfg.image = stock_image.clone();
        }
        let xml = domain_xml(&cfg, &spec(t), Some("8d7a1e1c-2b7e-4c55-9d7e-0a1b2c3d4e5f"));
        // The project's image boots directly with the address on its command line; a
        // stock image boots from its disk and takes the address from cloud-init.
        assert_eq!(xml.contains("<kernel>"), !stock, "{xml}");
        assert_eq!(xml.contains("<boot dev='hd'/>"), stock, "{xml}");
        assert_eq!(xml.contains("plab.ip=10.213.0.2/24 plab.gw=10.213.0.1"), !stock, "{xml}");
        let f = dir.path().join("d.xml");
        std::fs::write(&f, &xml).unwrap();
        let out = Command::new("virt-xml-validate").arg(&f).arg("domain").output().unwrap();
        assert!(out.status.success(), "{t} ({dtype}):\n{}\n{xml}", String::from_utf8_lossy(&out.stderr));
        assert!(xml.contains("<shares>1024</shares>"), "cpu_share 1 -> 1024 shares");
        assert!(xml.contains("<memory unit='KiB'>262144</memory>"), "mem_limit 256 MB");
        assert!(xml.contains("02:00:0a:d5:00:02"), "MAC follows the address");
    }
}

/// Parses YAML with Python's yaml module into JSON (the test needs python3-yaml).
fn yaml(text: &str) -> serde_json::Value {
    let mut child = Command::new("python3")
        .args(["-c", "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is missing: apt-get install python3-yaml");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "not YAML (python3-yaml installed?):\n{text}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn cloud_init_seed_carries_login_keys_host_key_bootscript_and_address() {
    let mut s = spec(VmType::LinuxKvmX86);
    // A bootscript YAML could choke on, were it not encoded.
    s.bootscript = Some("#!/bin/sh\necho \"hello <&> world\": 'x' # not a comment\n  indented: [1\n\ttab\n".into());
    let host_key = vm_types::host_key::generate("plc_demo").unwrap();
    let text = user_data(&s, &host_key);
    assert!(text.starts_with("#cloud-config\n"));
    let u = yaml(&text);
    assert_eq!(u["users"][0]["name"], "plc_demo");
    assert_eq!(u["users"][0]["ssh_authorized_keys"][0], KEY);
    assert_eq!(u["users"][0]["lock_passwd"], true);
    assert_eq!(u["users"].as_array().unwrap().len(), 1, "no default user");
    assert_eq!(u["ssh_keys"]["ed25519_private"], host_key.private_openssh);
    assert_eq!(u["ssh_keys"]["ed25519_public"], host_key.public_openssh);
    assert_eq!(u["ssh_genkeytypes"], serde_json::json!([]), "the guest makes no host keys of its own");
    let f = &u["write_files"][0];
    assert_eq!(f["path"], "/var/lib/plab/bootscript");
    let runner = &u["write_files"][1];
    assert_eq!(runner["path"], "/var/lib/cloud/scripts/per-boot/plab-bootscript", "run by cloud-init at every boot");
    assert_eq!(runner["content"], "#!/bin/sh\nexec sh /var/lib/plab/bootscript\n", "with sh, shebang or not");
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.decode(f["content"].as_str().unwrap()).unwrap();
    assert_eq!(String::from_utf8(body).unwrap(), s.bootscript.clone().unwrap());

    let n = yaml(&network_config(&s));
    assert_eq!(n["version"], 2);
    let eth = &n["ethernets"]["eth0"];
    assert_eq!(eth["match"]["macaddress"], "02:00:0a:d5:00:02");
    assert_eq!(eth["addresses"][0], "10.213.0.2/24");
    assert_eq!(eth["routes"][0]["via"], "10.213.0.1");

    // The instance id follows the content: changed keys reach a stock image's cloud-init.
    let m = yaml(&meta_data(&s, &text, &network_config(&s)));
    assert_eq!(m["local-hostname"], "plc-demo");
    let id = m["instance-id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("plc_demo-"), "{id}");
    assert_eq!(yaml(&meta_data(&s, &text, &network_config(&s)))["instance-id"], id.as_str(), "stable");
    let mut t = s.clone();
    t.bootscript = None;
    assert_ne!(yaml(&meta_data(&t, &user_data(&t, &host_key), &network_config(&t)))["instance-id"], id.as_str());
    assert!(yaml(&user_data(&t, &host_key)).get("write_files").is_none());
}

#[test]
fn guest_images_are_told_apart_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    // A directory must hold the project's whole image.
    let e = GuestImage::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("make image") && e.contains(".plab-image"), "{e}");
    let e = GuestImage::open(&dir.path().join("nope.qcow2")).unwrap_err().to_string();
    assert!(e.contains("nope.qcow2") && e.contains("guest_image"), "{e}");
    // A file is a stock image; its format and guest-visible size are read from it.
    let q = dir.path().join("cloud.qcow2");
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("96M")
        .status()
        .unwrap()
        .success());
    let img = GuestImage::open(&q).unwrap();
    assert_eq!((img.format, img.virtual_size, img.boot.clone()), ("qcow2", 96 << 20, GuestBoot::Firmware));
    let r = dir.path().join("cloud.raw");
    std::fs::File::create(&r).unwrap().set_len(80 << 20).unwrap();
    let img = GuestImage::open(&r).unwrap();
    assert_eq!((img.format, img.virtual_size), ("raw", 80 << 20));
}

#[test]
fn a_quota_smaller_than_the_image_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("cloud.qcow2");
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("2G")
        .status()
        .unwrap()
        .success());
    let mut cfg = config(dir.path(), VmType::LinuxKvmX86, "qemu");
    cfg.image = GuestImage::open(&q).unwrap();
    let b = LibvirtBackend::connect(cfg.clone(), host()).unwrap();
    let e = b.create(&spec(VmType::LinuxKvmX86)).unwrap_err();
    assert!(matches!(e, BackendError::Invalid(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.starts_with("disk_quota:") && e.contains("smaller than the guest image"), "{e}");
    assert!(b.list().unwrap().is_empty(), "no half-made domain");
    assert!(!cfg.vm_dir.join("plc_demo").exists(), "no half-made overlay");
}

#[test]
fn xen_lifecycle_against_libvirts_test_driver() {
    for (t, p) in [("qemu-img", "qemu-utils"), ("mkfs.vfat", "dosfstools"), ("mcopy", "mtools"), ("mdir", "mtools")] {
        require(t, p);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), VmType::LinuxXenX86, "xen");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&cfg.image.disk)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    let h = host();
    let b = LibvirtBackend::connect(cfg.clone(), h.clone()).unwrap();
    let s = spec(VmType::LinuxXenX86);
    // A kernel without Xen's PV entry: refused when the backend is checked and when a
    // VM is made, with nothing made.
    write_test_kernel(&dir.path().join("vmlinuz"), &[6, 18]).unwrap();
    let e = b.check().unwrap_err().to_string();
    assert!(e.contains("only a PVH entry point") && e.contains("CONFIG_XEN_PV"), "{e}");
    let e = b.create(&s).unwrap_err().to_string();
    assert!(e.contains("vmlinuz") && e.contains("CONFIG_XEN_PV"), "{e}");
    assert!(b.list().unwrap().is_empty() && !cfg.vm_dir.join("plc_demo").exists(), "nothing half-made");
    write_test_kernel(&dir.path().join("vmlinuz"), &[6, 1, 18]).unwrap();
    b.check().unwrap();
    // The memory its VMs share is the Xen host's (libvirt's node info), not dom0's. (More
    // than Xen has free is refused on the emulated Xen host, integration_xen: libvirt's
    // test driver does not say what is free.)
    assert!(b.memory_mb().unwrap() > 0);
    // dom0 (here: this machine) with less memory available than the setting asks.
    let greedy = LibvirtBackend::connect(
        LibvirtConfig { dom0_min_available_mb: 1 << 40, vm_dir: dir.path().join("vms3"), ..cfg.clone() },
        h.clone(),
    )
    .unwrap();
    let e = greedy.create(&s).unwrap_err().to_string();
    assert!(e.contains("dom0 has") && e.contains("dom0_mem="), "{e}");
    assert!(greedy.list().unwrap().is_empty() && !dir.path().join("vms3/plc_demo").exists(), "nothing half-made");

    b.create(&s).unwrap();
    assert_eq!(b.list().unwrap(), vec!["plc_demo".to_string()]);
    assert_eq!(b.status("plc_demo").unwrap().state, VmState::Stopped);
    // The overlay's virtual size is the disk quota; the seed is a cidata FAT image.
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(cfg.vm_dir.join("plc_demo/disk.qcow2"))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let quota = s.resources.disk_quota_bytes();
    assert_eq!(info["virtual-size"], quota - quota % 512, "at most the quota, in whole sectors");
    let seed =
        Command::new("mdir").arg("-i").arg(cfg.vm_dir.join("plc_demo/seed.img")).arg("-b").arg("::/").output().unwrap();
    let listing = String::from_utf8_lossy(&seed.stdout);
    for f in ["user-data", "meta-data", "network-config", "plab"] {
        assert!(listing.contains(f), "{f} missing from the seed: {listing}");
    }
    let key = Command::new("mtype")
        .arg("-i")
        .arg(cfg.vm_dir.join("plc_demo/seed.img"))
        .arg("::/plab/ssh_host_ed25519_key")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&key.stdout).starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(cfg.vm_dir.join("plc_demo/seed.img")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the seed holds the host key: root only");

    b.start(&s).unwrap();
    let st = b.status("plc_demo").unwrap();
    assert_eq!(st.state, VmState::Running);
    assert_eq!(st.details["accelerator"], "xen");
    assert!(st.details["ssh_host_key"].starts_with("ssh-ed25519 "), "status shows the host key");
    b.start(&s).unwrap(); // idempotent

    // Growing the disk needs a stopped VM; nothing changes when refused.
    let size = || {
        let out = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(cfg.vm_dir.join("plc_demo/disk.qcow2"))
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["virtual-size"].as_u64().unwrap()
    };
    let mut bigger = s.clone();
    bigger.resources.disk_quota = vm_types::Quantity::from_milli(200);
    bigger.keys.push(SshKey::parse(KEY2).unwrap());
    let seed_before = std::fs::read(cfg.vm_dir.join("plc_demo/seed.img")).unwrap();
    let e = b.update(&s, &bigger).unwrap_err();
    assert!(matches!(&e, BackendError::Invalid(m) if m.contains("stop the VM to grow its disk")), "{e:?}");
    assert_eq!(size(), quota - quota % 512, "not grown");
    assert_eq!(std::fs::read(cfg.vm_dir.join("plc_demo/seed.img")).unwrap(), seed_before, "seed untouched");
    // Shrinking is refused, running or not.
    let mut smaller = s.clone();
    smaller.resources.disk_quota = vm_types::Quantity::from_milli(50);
    assert!(matches!(b.update(&s, &smaller), Err(BackendError::Invalid(m)) if m.contains("cannot shrink")));
    b.stop("plc_demo").unwrap();
    assert_eq!(b.status("plc_demo").unwrap().state, VmState::Stopped);
    b.update(&s, &bigger).unwrap();
    let big = bigger.resources.disk_quota_bytes();
    assert_eq!(size(), big - big % 512, "grown to the new quota");
    let keys = Command::new("mtype")
        .arg("-i")
        .arg(cfg.vm_dir.join("plc_demo/seed.img"))
        .arg("::/plab/keys/plc_demo")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&keys.stdout).lines().count(), 2, "the new key is in the seed");
    assert!(h.record.lines().iter().any(|l| l.starts_with("qemu-img resize")), "{:?}", h.record.lines());

    b.destroy("plc_demo").unwrap();
    assert!(b.list().unwrap().is_empty());
    assert!(!cfg.vm_dir.join("plc_demo").exists());
    assert_eq!(b.status("plc_demo").unwrap().state, VmState::Missing);
    b.destroy("plc_demo").unwrap(); // idempotent
}

#[test]
fn a_guest_whose_tap_cannot_be_attached_is_stopped_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), VmType::LinuxKvmX86, "qemu");
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&cfg.image.disk)
        .arg("64M")
        .status()
        .unwrap()
        .success());
    let h = host();
    h.record.fail("ip link set pvt1 master plab0 up", 1, "Cannot find device \"plab0\"");
    let b = LibvirtBackend::connect(cfg.clone(), h.clone()).unwrap();
    let s = spec(VmType::LinuxKvmX86);
    b.create(&s).unwrap();
    let e = b.start(&s).unwrap_err();
    assert!(e.to_string().contains("Cannot find device"), "{e}");
    assert_eq!(b.status("plc_demo").unwrap().state, VmState::Stopped, "not left running without its network");
    b.start(&s).unwrap();
    assert_eq!(b.status("plc_demo").unwrap().state, VmState::Running);
    assert_eq!(b.status("plc_demo").unwrap().details["domain_type"], "qemu", "what libvirt really runs");
    b.destroy("plc_demo").unwrap();
}

#[test]
fn only_its_own_domains_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mine = config(dir.path(), VmType::LinuxXenX86, "xen");
    write_test_kernel(&dir.path().join("vmlinuz"), &[1]).unwrap();
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&mine.image.disk)
        .arg("64M")
        .status()
        .unwrap()
        .success());
    let theirs =
        LibvirtConfig { owner: "another node manager".into(), vm_dir: dir.path().join("vms2"), ..mine.clone() };
    let (a, b) = (LibvirtBackend::connect(mine, host()).unwrap(), LibvirtBackend::connect(theirs, host()).unwrap());
    a.create(&spec(VmType::LinuxXenX86)).unwrap();
    let mut other = spec(VmType::LinuxXenX86);
    other.name = "plc_other".into();
    b.create(&other).unwrap();
    assert_eq!(a.list().unwrap(), ["plc_demo"]);
    assert_eq!(b.list().unwrap(), ["plc_other"]);
}

#[test]
fn a_missing_guest_image_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), VmType::LinuxKvmX86, "qemu");
    let b = LibvirtBackend::connect(cfg.clone(), host()).unwrap();
    let e = b.create(&spec(VmType::LinuxKvmX86)).unwrap_err();
    assert!(e.to_string().contains("make image"), "{e}");
    assert!(b.list().unwrap().is_empty(), "no half-made domain");
    assert!(!cfg.vm_dir.join("plc_demo").exists(), "no half-made overlay");
}

#[test]
fn a_kvm_device_libvirts_qemu_user_cannot_open_is_reported_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        nix::unistd::User::from_name("libvirt-qemu").ok().flatten().is_some(),
        "user libvirt-qemu is missing: apt-get install libvirt-daemon-system (make test installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("kvm");
    std::fs::write(&dev, "").unwrap();
    // As a host without udev leaves it: root:root 0600.
    nix::unistd::chown(&dev, Some(nix::unistd::Uid::from_raw(0)), Some(nix::unistd::Gid::from_raw(0))).ok();
    std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = vm_types::libvirt::qemu_user_can_open_kvm(&dev).unwrap_err();
    assert!(e.contains("libvirt-qemu") && e.contains("chgrp kvm") && e.contains("chmod 0660"), "{e}");
    // As Debian's udev rule makes it: root:kvm 0660.
    let kvm = nix::unistd::Group::from_name("kvm").unwrap().expect("group kvm");
    nix::unistd::chown(&dev, None, Some(kvm.gid)).unwrap();
    std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o660)).unwrap();
    vm_types::libvirt::qemu_user_can_open_kvm(&dev).unwrap();
}
