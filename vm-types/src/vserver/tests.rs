//! The container backend on a recording host: every host step it takes, and its undo
//! paths, without root.

use super::*;
use crate::backend::VmNetwork;
use crate::host::recording::RecordingHost;
use crate::resources::Quantity;
use crate::{Resources, SliceName, SshKey};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINvd4JWqGILryt7c7j2YX8GNJTHiRXgCbcOQj+vURAyx alice@example.org";

struct Fixture {
    dir: tempfile::TempDir,
    host: Arc<RecordingHost>,
    b: VserverBackend,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(RecordingHost::new());
    let cfg = VserverConfig {
        vm_dir: dir.path().join("vms"),
        image_dir: dir.path().join("image"),
        runtime: "runc".into(),
        runtime_root: dir.path().join("runc"),
        bridge: "plab0".into(),
        stop_timeout: Duration::from_millis(100),
        scope: String::new(),
        uid_base: 1 << 30,
        lxcfs_dir: None,
    };
    let b = VserverBackend::new(cfg, host.clone()).unwrap();
    Fixture { dir, host, b }
}

fn spec(disk_gb_milli: u64) -> VmSpec {
    let mut resources = Resources::spec_default();
    resources.disk_quota = Quantity::from_milli(disk_gb_milli);
    VmSpec {
        name: "plc_demo".into(),
        slice: SliceName::parse("plc.demo").unwrap(),
        vm_type: VmType::LinuxVserverX86,
        resources,
        keys: vec![SshKey::parse(KEY).unwrap()],
        bootscript: Some("echo hi".into()),
        network: VmNetwork {
            index: 3,
            address: "10.0.0.4".parse().unwrap(),
            prefix_len: 24,
            gateway: "10.0.0.1".parse().unwrap(),
        },
        nm_socket_dir: None,
    }
}

impl Fixture {
    fn vm(&self) -> PathBuf {
        self.dir.path().join("vms/plc_demo")
    }
    /// Makes runc report the container in `status` (and its state directory exist).
    fn runc_says(&self, status: &str) {
        std::fs::create_dir_all(self.dir.path().join("runc/plc_demo")).unwrap();
        let state = format!(
            r#"{{"ociVersion":"1.0.2","id":"plc_demo","status":"{status}","pid":4242,"bundle":"/b","rootfs":"/r","created":"x","owner":""}}"#
        );
        self.host.reply(&format!("runc --root {} state plc_demo", self.dir.path().join("runc").display()), &state);
    }
}

#[test]
fn too_small_a_disk_issues_no_command() {
    let f = fixture();
    let e = f.b.create(&spec(10)).unwrap_err();
    assert!(matches!(&e, BackendError::Invalid(m) if m.starts_with("disk_quota:")), "{e:?}");
    assert!(f.host.lines().iter().all(|l| !l.starts_with("mkfs") && !l.starts_with("mount")), "{:?}", f.host.lines());
    assert!(!f.vm().exists());
}

#[test]
fn a_failed_mkfs_leaves_nothing() {
    let f = fixture();
    f.host.fail("mkfs.ext4", 1, "mkfs.ext4: No space left on device");
    let e = f.b.create(&spec(100)).unwrap_err();
    assert!(e.to_string().contains("No space left"), "{e}");
    assert!(!f.vm().exists(), "the VM directory is cleaned up");
    assert!(f.host.mounted().is_empty() && f.host.namespaces().is_empty());
}

#[test]
fn create_then_start_sets_up_disk_network_and_container_in_that_order() {
    let f = fixture();
    let s = spec(100);
    f.b.create(&s).unwrap();
    assert!(f.vm().join("disk.img").exists());
    assert_eq!(
        std::fs::metadata(f.vm().join("disk.img")).unwrap().len(),
        s.resources.disk_quota_bytes(),
        "sparse file of disk_quota bytes"
    );
    assert_eq!(std::fs::read_to_string(f.vm().join("plab/keys/plc_demo")).unwrap().trim(), KEY);
    f.host.clear();
    f.b.start(&s).unwrap();
    let lines = f.host.lines();
    let pos = |p: &str| lines.iter().position(|l| l.starts_with(p)).unwrap_or_else(|| panic!("no {p} in {lines:?}"));
    assert!(pos("mount -o loop,nodev,nosuid") < pos("mount -t overlay"));
    assert!(pos("mount -t overlay") < pos("runc --root"), "{lines:?}");
    // The image and the node manager's files are seen through the VM's range (VM 3:
    // 2^30 + 3 * 65536), under the overlay; the user namespace's limits are set between
    // create and start.
    let image = format!(
        "idmapped-bind {} 1073938432:65536 {}",
        f.dir.path().join("image").display(),
        f.vm().join("lower").display()
    );
    assert!(pos(&image) < pos("mount -t overlay"), "{lines:?}");
    assert!(pos(&format!("idmapped-bind {} 1073938432:65536", f.vm().join("plab").display())) < pos("runc --root"));
    assert!(pos("runc --root") < pos("nsenter --target 4242 --user -- sysctl -qw user.max_inotify_instances=128"));
    assert!(
        lines.iter().any(|l| l == "ip netns exec plab-plc_demo sysctl -qw net.ipv4.ip_unprivileged_port_start=0"),
        "{lines:?}"
    );
    assert!(
        pos(&format!("chown 1073938432:1073938432 {}", f.vm().join("disk/upper").display())) < pos("mount -t overlay"),
        "the VM's root owns its /"
    );
    // A new namespace: added, with the veth, in one batch.
    let batch = f.host.calls().into_iter().find(|c| c.args == ["-batch", "-"]).unwrap().input.unwrap();
    assert_eq!(
        batch,
        "netns add plab-plc_demo\nlink add pv3 type veth peer name eth0 address 02:00:0a:00:00:04 netns plab-plc_demo\nlink set pv3 master plab0 up\n"
    );
    let inside = f.host.calls().into_iter().find(|c| c.args.starts_with(&["-n".to_string()])).unwrap();
    assert_eq!(
        inside.input.unwrap(),
        "link set lo up\naddr replace 10.0.0.4/24 dev eth0\nlink set eth0 up\nroute replace default via 10.0.0.1\n"
    );
    assert!(lines.iter().any(|l| l.contains(" create --bundle ") && l.ends_with(" plc_demo")), "{lines:?}");
    assert!(lines.last().unwrap().ends_with("start plc_demo"), "{lines:?}");
    let config = std::fs::read_to_string(f.vm().join("bundle/config.json")).unwrap();
    assert!(config.contains("/var/run/netns/plab-plc_demo"));
}

#[test]
fn the_veth_is_made_again_when_the_namespace_survived_but_the_link_did_not() {
    let f = fixture();
    let s = spec(100);
    f.b.create(&s).unwrap();
    f.host.run(&Cmd::new("ip").args(["netns", "add", "plab-plc_demo"])).unwrap();
    f.host.fail("ip link show dev pv3", 1, "Device \"pv3\" does not exist.");
    f.host.clear();
    f.b.start(&s).unwrap();
    let batch = f.host.calls().into_iter().find(|c| c.args == ["-batch", "-"]).unwrap().input.unwrap();
    assert_eq!(batch, "link add pv3 type veth peer name eth0 address 02:00:0a:00:00:04 netns plab-plc_demo\nlink set pv3 master plab0 up\n");
}

#[test]
fn a_failed_container_create_is_deleted_and_its_message_reaches_the_caller() {
    let f = fixture();
    let s = spec(100);
    f.b.create(&s).unwrap();
    f.host.fail(
        &format!("runc --root {} create", f.dir.path().join("runc").display()),
        1,
        "injected: cannot create container",
    );
    let e = f.b.start(&s).unwrap_err();
    assert!(e.to_string().contains("injected: cannot create container"), "{e}");
    assert!(f.host.lines().last().unwrap().ends_with("delete --force plc_demo"), "{:?}", f.host.lines());
}

#[test]
fn a_container_left_created_is_replaced_on_start() {
    let f = fixture();
    let s = spec(100);
    f.b.create(&s).unwrap();
    f.runc_says("created");
    f.host.clear();
    f.b.start(&s).unwrap();
    let lines = f.host.lines();
    let del = lines.iter().position(|l| l.ends_with("delete --force plc_demo")).expect("deleted first");
    let create = lines.iter().position(|l| l.contains(" create --bundle ")).unwrap();
    assert!(del < create, "{lines:?}");
}

#[test]
fn stop_asks_nicely_then_forces() {
    let f = fixture();
    f.runc_says("running");
    f.b.stop("plc_demo").unwrap();
    let lines = f.host.lines();
    let kill = lines.iter().position(|l| l.ends_with("kill plc_demo TERM")).expect("TERM first");
    let del = lines.iter().position(|l| l.ends_with("delete --force plc_demo")).expect("then delete --force");
    assert!(kill < del, "{lines:?}");
    // It waited the stop timeout, asking runc meanwhile.
    assert!(lines.iter().filter(|l| l.ends_with("state plc_demo")).count() > 2, "{lines:?}");
}

#[test]
fn update_refuses_to_shrink_before_touching_anything() {
    let f = fixture();
    let s = spec(200);
    f.b.create(&s).unwrap();
    let keys_before = std::fs::read_to_string(f.vm().join("plab/keys/plc_demo")).unwrap();
    f.host.clear();
    let mut smaller = spec(100);
    smaller.keys.clear();
    let e = f.b.update(&s, &smaller).unwrap_err();
    assert!(matches!(&e, BackendError::Invalid(m) if m.contains("cannot shrink")), "{e:?}");
    assert!(f.host.lines().is_empty(), "{:?}", f.host.lines());
    assert_eq!(std::fs::read_to_string(f.vm().join("plab/keys/plc_demo")).unwrap(), keys_before);
}

/// A running VM of 0.1 GB whose disk is attached to /dev/loop7: the fixture, its spec,
/// its disk image.
fn running_on_loop7() -> (Fixture, VmSpec, PathBuf) {
    let f = fixture();
    let s = spec(100);
    f.b.create(&s).unwrap();
    f.b.start(&s).unwrap();
    f.runc_says("running");
    let img = f.vm().join("disk.img");
    f.host.reply(&format!("losetup -j {}", img.display()), &format!("/dev/loop7: []: ({})\n", img.display()));
    (f, s, img)
}

#[test]
fn growing_the_disk_online_and_undoing_a_failed_growth() {
    let (f, s, img) = running_on_loop7();
    let bigger = spec(200);
    f.b.update(&s, &bigger).unwrap();
    assert_eq!(std::fs::metadata(&img).unwrap().len(), bigger.resources.disk_quota_bytes());
    assert!(f.host.lines().iter().any(|l| l == "losetup -c /dev/loop7"));
    assert!(f.host.lines().iter().any(|l| l == "resize2fs /dev/loop7"));
    // resize2fs failing: the image goes back to its size, the loop device is told, the
    // VM's files are as before, and the error says nothing changed.
    let mut more = spec(300);
    more.bootscript = Some("echo changed".into());
    f.host.fail("resize2fs", 1, "resize2fs: No space left on device");
    f.host.clear();
    let e = f.b.update(&bigger, &more).unwrap_err();
    assert!(e.to_string().contains("nothing was changed"), "{e}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), bigger.resources.disk_quota_bytes());
    let lines = f.host.lines();
    assert_eq!(lines.iter().filter(|l| *l == "losetup -c /dev/loop7").count(), 2, "grown, then shrunk back: {lines:?}");
    assert_eq!(std::fs::read_to_string(f.vm().join("plab/bootscript")).unwrap(), "echo hi");
}

#[test]
fn a_disk_the_kernel_will_not_grow_online_grows_at_the_next_start() {
    let (f, s, img) = running_on_loop7();
    // Without CAP_SYS_RESOURCE the kernel refuses the online resize: the update is kept
    // (the quota is the VM's), the image stays as it was, and status shows the disk as it is.
    f.host.fail("resize2fs /dev/loop7", 1, "resize2fs: Permission denied to resize filesystem");
    let bigger = spec(200);
    f.b.update(&s, &bigger).unwrap();
    assert_eq!(std::fs::metadata(&img).unwrap().len(), s.resources.disk_quota_bytes());
    assert_eq!(f.b.status("plc_demo").unwrap().details["disk_bytes"], s.resources.disk_quota_bytes().to_string());
    // At the next start the disk is unmounted (not lazily), grown as a file, checked and
    // resized before anything mounts it again.
    f.runc_says("stopped");
    // While another mount namespace still holds the disk's mount (its loop device stays
    // attached), the image is not resized under it: the VM starts at its old size.
    f.host.clear();
    f.b.start(&s).unwrap_or_else(|e| panic!("{e}"));
    assert!(!f.host.lines().iter().any(|l| l.starts_with("resize2fs")), "{:?}", f.host.lines());
    f.b.start(&bigger).unwrap();
    assert!(!f.host.lines().iter().any(|l| l.starts_with("resize2fs")), "{:?}", f.host.lines());
    assert_eq!(std::fs::metadata(&img).unwrap().len(), s.resources.disk_quota_bytes());
    // Once it is gone (the device detached), the disk grows.
    f.host.reply(&format!("losetup -j {}", img.display()), "");
    f.runc_says("stopped");
    f.host.clear();
    f.b.start(&bigger).unwrap();
    let lines = f.host.lines();
    let pos = |p: &str| lines.iter().position(|l| l.starts_with(p)).unwrap_or_else(|| panic!("no {p} in {lines:?}"));
    assert!(!lines.iter().any(|l| l.starts_with("umount -l")), "{lines:?}");
    assert!(pos("umount ") < pos("resize2fs -f"), "{lines:?}");
    assert!(pos("resize2fs -f") < pos("mount -o loop"), "{lines:?}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), bigger.resources.disk_quota_bytes());
    // A start with nothing pending does not touch the disk.
    f.host.clear();
    f.b.start(&bigger).unwrap();
    assert!(!f.host.lines().iter().any(|l| l.starts_with("resize2fs")), "{:?}", f.host.lines());
}

#[test]
fn an_offline_growth_that_fails_leaves_the_disk_as_it_was() {
    let f = fixture();
    let s = spec(100);
    f.b.create(&s).unwrap();
    let img = f.vm().join("disk.img");
    let bigger = spec(200);
    // Stopped: the update only records the quota; the next start grows the disk.
    f.b.update(&s, &bigger).unwrap();
    assert!(!f.host.lines().iter().any(|l| l.starts_with("resize2fs") || l.starts_with("losetup")));
    f.host.fail("resize2fs -f", 1, "resize2fs: Bad magic number in super-block");
    let e = f.b.start(&bigger).unwrap_err();
    assert!(e.to_string().contains("Bad magic number"), "{e}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), s.resources.disk_quota_bytes(), "truncated back");
    assert!(!f.host.lines().iter().any(|l| l.starts_with("runc")), "no container started: {:?}", f.host.lines());
}

#[test]
fn destroy_refuses_to_delete_a_disk_that_is_still_mounted() {
    let f = fixture();
    let s = spec(100);
    f.b.create(&s).unwrap();
    f.b.start(&s).unwrap();
    assert_eq!(f.host.mounted().len(), 4, "disk, image, the node manager's files, overlay");
    f.host.fail("umount -l", 1, "umount: target is busy");
    let e = f.b.destroy("plc_demo").unwrap_err();
    assert!(e.to_string().contains("target is busy"), "{e}");
    assert!(f.vm().exists(), "nothing removed while mounted");
    // The disk stays mounted although umount claims success: refused, as an internal fault.
    f.host.pin_mounted(&f.vm().join("disk"));
    let e = f.b.destroy("plc_demo").unwrap_err();
    assert!(matches!(&e, BackendError::Internal(m) if m.contains("still mounted")), "{e:?}");
    assert!(f.vm().exists());
    // Nor through the shared image, mounted in the VM's directory.
    let f3 = fixture();
    f3.b.create(&s).unwrap();
    f3.b.start(&s).unwrap();
    std::fs::write(f3.dir.path().join("image/precious"), "shared").unwrap();
    f3.host.pin_mounted(&f3.vm().join("lower"));
    let e = f3.b.destroy("plc_demo").unwrap_err();
    assert!(matches!(&e, BackendError::Internal(m) if m.contains("still mounted")), "{e:?}");
    assert!(f3.dir.path().join("image/precious").exists());
    // And when it all works, nothing is left.
    let f2 = fixture();
    f2.b.create(&s).unwrap();
    f2.b.start(&s).unwrap();
    f2.b.destroy("plc_demo").unwrap();
    let f = f2;
    assert!(!f.vm().exists() && f.host.mounted().is_empty() && f.host.namespaces().is_empty());
}

#[test]
fn leftovers_of_a_crashed_create_are_removed_first() {
    let f = fixture();
    std::fs::create_dir_all(f.vm().join("rootfs")).unwrap();
    std::fs::write(f.vm().join("stale"), "x").unwrap();
    f.b.create(&spec(100)).unwrap();
    assert!(!f.vm().join("stale").exists());
}

#[test]
fn lxcfs_that_is_not_serving_is_named_with_the_fix_and_an_empty_dir_is_a_choice() {
    assert_eq!(lxcfs_problem(Path::new("")), None);
    let dir = tempfile::tempdir().unwrap();
    let p = lxcfs_problem(dir.path()).unwrap();
    assert!(p.contains("apt-get install lxcfs") && p.contains("lxcfs_dir = \"\""), "{p}");
    std::fs::create_dir_all(dir.path().join("proc")).unwrap();
    std::fs::write(dir.path().join("proc/meminfo"), "MemTotal: 1 kB\n").unwrap();
    assert_eq!(lxcfs_problem(dir.path()), None);
}

#[test]
fn the_console_log_is_on_the_vms_disk_and_rotated_past_its_cap() {
    let f = fixture();
    let s = spec(100);
    f.b.create(&s).unwrap();
    f.b.start(&s).unwrap();
    let log = f.vm().join("disk/console.log");
    assert!(!f.b.rotate_console("plc_demo").unwrap(), "nothing to rotate yet");
    let mut big = vec![b'a'; (CONSOLE_CAP - CONSOLE_KEEP) as usize];
    big.extend(vec![b'z'; CONSOLE_KEEP as usize + 10]);
    std::fs::write(&log, &big).unwrap();
    assert!(f.b.rotate_console("plc_demo").unwrap());
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 0, "the log starts again");
    let old = std::fs::read(f.vm().join("disk/console.log.1")).unwrap();
    assert_eq!(old.len() as u64, CONSOLE_KEEP);
    assert!(old.iter().all(|b| *b == b'z'), "the newest part is kept");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(f.vm().join("disk/console.log.1")).unwrap().permissions().mode() & 0o777, 0o600);
    // Reading shows the kept part, then what came after.
    std::fs::write(&log, "after\n").unwrap();
    let tail = f.b.console_log("plc_demo", 10).unwrap();
    assert_eq!(tail, "zzzzafter\n");
    assert_eq!(f.b.console_log("plc_demo", 4).unwrap(), "ter\n");
    f.b.maintain("plc_demo").unwrap();
    assert!(matches!(f.b.console_log("nope", 10), Err(BackendError::NotFound(_))));
}

/// A disk from before user namespaces (files of host ids 0..65536) is shifted into the
/// VM's range at a start, but never while the VM runs: its root could swap the walk's
/// next step for a link to a host file.
#[test]
fn an_old_disk_is_shifted_into_the_vms_range_only_while_the_vm_is_stopped() {
    use std::os::unix::fs::MetadataExt;
    assert!(nix::unistd::geteuid().is_root(), "changing owners needs root: run as root (make test does)");
    let f = fixture();
    let s = spec(100);
    f.b.create(&s).unwrap();
    f.b.start(&s).unwrap();
    let upper = f.vm().join("disk/upper");
    // (The recording host only logs the chown of a new upper: it is root's, as on an old disk.)
    std::fs::create_dir_all(upper.join("home/u")).unwrap();
    std::os::unix::fs::chown(upper.join("home/u"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", upper.join("home/link")).unwrap();
    let base = 1073938432; // VM 3
    f.runc_says("running");
    f.b.start(&s).unwrap();
    assert_eq!(std::fs::metadata(upper.join("home/u")).unwrap().uid(), 1000, "not while it runs");
    f.runc_says("stopped");
    f.b.start(&s).unwrap();
    assert_eq!(std::fs::metadata(&upper).unwrap().uid(), base);
    assert_eq!(std::fs::metadata(upper.join("home/u")).unwrap().uid(), base + 1000);
    assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0, "links are not followed");
    assert_eq!(std::fs::symlink_metadata(upper.join("home/link")).unwrap().uid(), base);
    // The VM's directory lets only root and the VM's root group through.
    let m = std::fs::metadata(f.vm()).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o710);
}
