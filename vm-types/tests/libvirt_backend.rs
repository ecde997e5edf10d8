//! The libvirt backend: domain XML for linux-kvm-x86 and linux-xen-x86 is valid for
//! libvirt's own schema (virt-xml-validate), and the lifecycle runs against libvirt's
//! test driver (test:///default), which needs no hypervisor. Needs libvirt-clients,
//! qemu-utils, dosfstools and mtools (`make test` installs them).

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vm_types::libvirt::{domain_xml, user_data, LibvirtBackend, LibvirtConfig};
use vm_types::{Backend, Resources, SliceName, SshKey, VmNetwork, VmSpec, VmState, VmType};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINvd4JWqGILryt7c7j2YX8GNJTHiRXgCbcOQj+vURAyx alice@example.org";

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
        network: VmNetwork { index: 1, address: "10.213.0.2".parse().unwrap(), prefix_len: 24, gateway: "10.213.0.1".parse().unwrap() },
        nm_socket_dir: None,
    }
}

fn config(dir: &Path, vm_type: VmType, domain_type: &str) -> LibvirtConfig {
    LibvirtConfig {
        uri: "test:///default".into(),
        vm_type,
        domain_type: domain_type.into(),
        vm_dir: dir.join("vms"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        base_image: dir.join("base.qcow2"),
        bridge: "plab0".into(),
        stop_timeout: Duration::from_secs(2),
        tap_move: None,
    }
}

fn require(tool: &str, pkg: &str) {
    let ok = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "`{tool}` is missing: apt-get install {pkg} (make test installs it)");
}

#[test]
fn domain_xml_is_valid_for_libvirts_schema() {
    require("virt-xml-validate", "libvirt-clients");
    let dir = tempfile::tempdir().unwrap();
    for (t, dtype) in [(VmType::LinuxKvmX86, "qemu"), (VmType::LinuxKvmX86, "kvm"), (VmType::LinuxXenX86, "xen")] {
        let xml = domain_xml(&config(dir.path(), t, dtype), &spec(t), Some("8d7a1e1c-2b7e-4c55-9d7e-0a1b2c3d4e5f"));
        let f = dir.path().join("d.xml");
        std::fs::write(&f, &xml).unwrap();
        let out = Command::new("virt-xml-validate").arg(&f).arg("domain").output().unwrap();
        assert!(out.status.success(), "{t} ({dtype}):\n{}\n{xml}", String::from_utf8_lossy(&out.stderr));
        assert!(xml.contains("<shares>1024</shares>"), "cpu_share 1 -> 1024 shares");
        assert!(xml.contains("<memory unit='KiB'>262144</memory>"), "mem_limit 256 MB");
        assert!(xml.contains("02:00:0a:d5:00:02"), "MAC follows the address");
    }
}

#[test]
fn user_data_carries_keys_and_bootscript() {
    let u = user_data(&spec(VmType::LinuxKvmX86));
    assert!(u.starts_with("#cloud-config\n"));
    assert!(u.contains("  - name: plc_demo\n"));
    assert!(u.contains(&format!("      - \"{KEY}\"\n")));
    assert!(u.contains("      echo \"hello <&> world\"\n"), "{u}");
}

#[test]
fn xen_lifecycle_against_libvirts_test_driver() {
    for (t, p) in [("qemu-img", "qemu-utils"), ("mkfs.vfat", "dosfstools"), ("mcopy", "mtools"), ("mdir", "mtools")] {
        require(t, p);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), VmType::LinuxXenX86, "xen");
    let st = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&cfg.base_image).arg("64M").status().unwrap();
    assert!(st.success());
    let b = LibvirtBackend::connect(cfg.clone()).unwrap();
    b.check().unwrap();
    let s = spec(VmType::LinuxXenX86);

    b.create(&s).unwrap();
    assert_eq!(b.list().unwrap(), vec!["plc_demo".to_string()]);
    assert_eq!(b.status("plc_demo").unwrap().state, VmState::Stopped);
    // The overlay's virtual size is the disk quota; the seed is a cidata FAT image.
    let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(cfg.vm_dir.join("plc_demo/disk.qcow2")).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let quota = s.resources.disk_quota_bytes();
    assert_eq!(info["virtual-size"], quota - quota % 512, "at most the quota, in whole sectors");
    let seed = Command::new("mdir").arg("-i").arg(cfg.vm_dir.join("plc_demo/seed.img")).arg("-b").arg("::/").output().unwrap();
    let listing = String::from_utf8_lossy(&seed.stdout);
    assert!(listing.contains("user-data") && listing.contains("meta-data") && listing.contains("plab"), "{listing}");

    b.start(&s).unwrap();
    let st = b.status("plc_demo").unwrap();
    assert_eq!(st.state, VmState::Running);
    assert_eq!(st.details["accelerator"], "xen");
    b.start(&s).unwrap(); // idempotent

    // Growing the disk needs a stopped VM; nothing changes when refused.
    let mut bigger = s.clone();
    bigger.resources.disk_quota = vm_types::Quantity::from_milli(200);
    assert!(b.update(&s, &bigger).is_err());
    b.stop("plc_demo").unwrap();
    assert_eq!(b.status("plc_demo").unwrap().state, VmState::Stopped);
    b.update(&s, &bigger).unwrap();

    b.destroy("plc_demo").unwrap();
    assert!(b.list().unwrap().is_empty());
    assert!(!cfg.vm_dir.join("plc_demo").exists());
    assert_eq!(b.status("plc_demo").unwrap().state, VmState::Missing);
    b.destroy("plc_demo").unwrap(); // idempotent
}

#[test]
fn a_missing_guest_image_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), VmType::LinuxKvmX86, "qemu");
    let b = LibvirtBackend::connect(cfg.clone()).unwrap();
    let e = b.create(&spec(VmType::LinuxKvmX86)).unwrap_err();
    assert!(e.to_string().contains("make image"), "{e}");
    assert!(b.list().unwrap().is_empty(), "no half-made domain");
    assert!(!cfg.vm_dir.join("plc_demo").exists(), "no half-made overlay");
}
