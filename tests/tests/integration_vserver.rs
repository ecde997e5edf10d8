//! Integration test: a real node manager (`plab-nm serve`) in a network namespace this
//! test creates, real runc containers built from the project image, real OpenSSH logins.
//! Needs root, runc, OpenSSH's client and the image (`make image`); it fails, saying what
//! to install, when any is missing.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use plab_nm::NmClient;
use plab_tests::{assert_exit, assert_key_refused, keypair, mounts_under, prerequisites, TestNode};
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

fn slice_rspec(slice: &str, key: &str, mem: u32, disk: &str) -> String {
    format!(
        r#"<VServerSlice name="{slice}"><resources cpu_share="2" disk_quota="{disk}" mem_limit="{mem}"/><key>{key}</key><bootscript>echo "bootscript ran as $(id -un) on $(hostname)"</bootscript></VServerSlice>"#
    )
}

#[test]
fn integration_vserver_vm_lifecycle_ssh_limits_and_restart() {
    prerequisites();
    let mut node = TestNode::new("life");
    let (key, public) = keypair(node.dir.path());
    let mut c = node.client();

    // On a PVM host the node must not take /dev/kvm for working KVM (the decision itself
    // is unit-tested in vm_types::accel).
    let info = c.call_value("NodeInfo", json!({})).unwrap();
    if std::path::Path::new("/sys/module/kvm_pvm").exists() && !std::path::Path::new("/sys/module/kvm_intel").exists() {
        assert_eq!(info["accelerator"], "tcg", "PVM must not be taken for working KVM: {info}");
    }

    // Owner creates a pool for an authority; the slice splits off its VM and binds it.
    let pool = r#"<PoolRSpec vm_type="linux-vserver-x86"><resources cpu_share="4" disk_quota="1" mem_limit="512"/></PoolRSpec>"#;
    let root = c.call_str("CreatePool", json!([pool, "plc.it"]), "rcap").unwrap();
    let sub = c.call_str("SplitPool", json!([root, slice_rspec("plc.it.demo", &public, 64, "0.05")]), "rcap").unwrap();
    let vm = c.call_value("Bind", json!([sub, "plc.it.demo"])).unwrap();
    let (name, addr) = (vm["vm"].as_str().unwrap().to_owned(), vm["address"].as_str().unwrap().to_owned());
    assert_eq!(name, "plc_it_demo");

    // The slice's user logs in with OpenSSH and the key from the RSpec.
    let (code, out) = node.ssh_ready(&key, "plc_it_demo", &addr);
    assert_eq!(code, 0, "ssh failed: {out}\nNM log:\n{}", node.nm_log());
    let (_, who) = node.ssh(&key, "plc_it_demo", &addr, "id -un; hostname; ls /run/plab");
    assert_eq!(who.lines().collect::<Vec<_>>(), ["plc_it_demo", "plc-it-demo", "nm.sock"]);
    // Issue 9.2: what a slice tries first on its way out is refused by the seccomp filter:
    // the kernel keyrings, a new user namespace, io_uring; raw sockets need NET_RAW. (Root
    // in the VM, through sudo, is tried in the user namespace test below.)
    let probe = concat!(
        "unshare -U true 2>/dev/null; echo unshare=$?; ",
        "perl -e '($t, $d, $p) = (\"user\", \"plab\", \"secret\"); $r = syscall(248, $t, $d, $p, 6, -2); print \"add_key=$r errno=\", $!+0, \"\\n\"'; ",
        "perl -e '$r = syscall(250, 0, -2); print \"keyctl=$r errno=\", $!+0, \"\\n\"'; ",
        "perl -e '$p = \"\\0\" x 120; $r = syscall(425, 4, $p); print \"io_uring=$r errno=\", $!+0, \"\\n\"'; ",
        "perl -MSocket -e 'socket(S, AF_INET, SOCK_RAW, 1) ? print \"raw=ok\\n\" : print \"raw=refused\\n\"'",
    );
    let (code, out) = node.ssh(&key, "plc_it_demo", &addr, probe);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    for want in ["unshare=1", "add_key=-1 errno=1", "keyctl=-1 errno=1", "io_uring=-1 errno=1", "raw=refused"] {
        assert!(lines.contains(&want), "{want} expected in:\n{out}");
    }

    // Another key does not get in.
    let other_dir = node.dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let (other, _) = keypair(&other_dir);
    assert_key_refused(&node.ssh(&other, "plc_it_demo", &addr, "true"), "a key not in the RSpec");

    // The disk quota is enforced: writing past 0.05 GB fails with ENOSPC.
    let (code, out) = node.ssh(&key, "plc_it_demo", &addr, "dd if=/dev/zero of=$HOME/fill bs=1M count=100");
    assert_ne!(code, 0);
    assert!(out.contains("No space left on device"), "{out}");
    node.ssh(&key, "plc_it_demo", &addr, "rm -f $HOME/fill");

    // The memory limit is enforced: holding 200 MB in a 64 MB VM gets the process killed.
    let (code, out) =
        node.ssh(&key, "plc_it_demo", &addr, "head -c 200000000 /dev/zero | tail > /dev/null; echo status=$?");
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l == "status=137"), "tail must be killed by the OOM killer (SIGKILL): {out}");

    // NM reports the limits in force, read back from the cgroup.
    let st = c.call_value("VmStatus", json!({"vm": name})).unwrap();
    assert_eq!(st["state"], "running");
    assert_eq!(st["details"]["memory_limit_bytes"], (64u64 << 20).to_string());
    assert_eq!(st["details"]["cpu_shares"], "2048");
    // sshd presents the host key the node manager made and shows, and the slice's login
    // cannot read its private half.
    let host_key = st["details"]["ssh_host_key"].as_str().expect("status shows the ssh host key").to_owned();
    let kh = Command::new(plab_tests::bin("plab"))
        .args(["nm", "--socket"])
        .arg(node.socket())
        .args(["known-hosts", &name])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&kh.stdout).trim(), format!("{addr} {host_key}"), "plab nm known-hosts");
    let r = node.ssh_verified(
        &key,
        "plc_it_demo",
        &addr,
        &host_key,
        "cat /etc/plab/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key",
    );
    assert_exit(&r, 1, "cat of root-only files");
    assert!(r.1.contains("cat: /etc/plab/ssh_host_ed25519_key: Permission denied"), "{}", r.1);
    assert!(!r.1.contains("PRIVATE KEY"), "{}", r.1);

    // The bootscript runs at every start; its output is in the console log.
    c.call_value("StopVM", json!([name])).unwrap();
    assert_eq!(c.call_value("VmStatus", json!([name])).unwrap()["state"], "stopped");
    c.call_value("StartVM", json!([name])).unwrap();
    assert_eq!(node.ssh_ready(&key, "plc_it_demo", &addr).0, 0);
    assert_eq!(
        node.ssh_verified(&key, "plc_it_demo", &addr, &host_key, "true").0,
        0,
        "the same host key after a restart"
    );
    // sshd starts before the bootscript is run in the background: wait for its output.
    let log = node.wait_log(&name, "bootscript ran as root on plc-it-demo", 2);
    assert_eq!(log.matches("bootscript ran as root on plc-it-demo").count(), 2, "{log}");

    // Binding a second pool adds its resources to the running VM, live: memory in the
    // cgroup, and disk: the VM's filesystem grows (while it runs, where the kernel allows).
    let df = |node: &TestNode| -> u64 {
        let (code, out) = node.ssh(&key, "plc_it_demo", &addr, "df -B1M --output=size $HOME | tail -1");
        assert_eq!(code, 0, "{out}");
        out.trim().parse().unwrap()
    };
    let before = df(&node);
    let more = c.call_str("SplitPool", json!([root, slice_rspec("plc.it.demo", &public, 64, "0.05")]), "rcap").unwrap();
    c.call_value("Bind", json!([more, "plc.it.demo"])).unwrap();
    let st = c.call_value("VmStatus", json!([name])).unwrap();
    assert_eq!(st["details"]["memory_limit_bytes"], (128u64 << 20).to_string());
    assert_eq!(st["resources"]["mem_limit"], "128 MB");
    assert_eq!(st["resources"]["disk_quota"], "0.1 GB");
    let mut after = df(&node);
    if after < before + 40 {
        // The kernel refuses to grow a mounted filesystem on hosts without CAP_SYS_RESOURCE
        // (some sandboxes and nested CI runners): the disk then grows at the next start,
        // and until then status shows the disk as it is.
        eprintln!("the disk did not grow online; NM log:\n{}", node.nm_log());
        let quota = (1u64 << 30) / 10; // 0.1 GB
        let disk: u64 = st["details"]["disk_bytes"].as_str().unwrap().parse().unwrap();
        assert!(disk < quota, "not grown online, so the disk is still the old size: {st}");
        c.call_value("StopVM", json!([name])).unwrap();
        c.call_value("StartVM", json!([name])).unwrap();
        assert_eq!(node.ssh_ready(&key, "plc_it_demo", &addr).0, 0);
        let st = c.call_value("VmStatus", json!([name])).unwrap();
        assert_eq!(st["details"]["disk_bytes"], quota.to_string(), "grown at the restart: {st}");
        after = df(&node);
    }
    assert!(after >= before + 40, "the filesystem grew from {before} MB to {after} MB\n{}", node.nm_log());
    let (code, out) =
        node.ssh(&key, "plc_it_demo", &addr, "dd if=/dev/zero of=$HOME/fill bs=1M count=70 2>&1; rm -f $HOME/fill");
    assert_eq!(code, 0, "70 MB fit now: {out}");

    // kill -9 the node manager: the VM keeps running (the same init process, not one
    // started again by reconciliation) and a new NM knows it.
    let pid = c.call_value("VmStatus", json!([name])).unwrap()["details"]["pid"].as_str().unwrap().to_owned();
    node.kill_nm();
    node.start_nm();
    let mut c = node.client();
    let st = c.call_value("VmStatus", json!([name])).unwrap();
    assert_eq!(st["state"], "running");
    assert_eq!(st["details"]["pid"], pid.as_str(), "the same container, not a restarted one");
    assert!(c.call_str("GetRSpec", json!([sub]), "rspec").unwrap().contains("plc.it.demo"));
    // The VM's own socket identifies the caller as its slice, and only that.
    let mut inside = NmClient::connect(&node.state().join("sockets").join(&name).join("run/nm.sock")).unwrap();
    let rcaps = inside.call_value("GetRcap", json!({})).unwrap();
    assert_eq!(rcaps["rcaps"].as_array().unwrap().len(), 2);
    let e = inside.call_value("CreatePool", json!([pool, "plc.it.demo"])).unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");

    // Destroy leaves nothing behind: no mounts, no namespace, no directory.
    c.call_value("DestroyVM", json!([name])).unwrap();
    assert_eq!(mounts_under(&node.state()), 0);
    assert!(!node.state().join("vms").join(&name).exists());
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains(&format!("plab-{name}")));
    assert!(c.call_value("ListVMs", json!({})).unwrap()["vms"].as_array().unwrap().is_empty());
}

/// The host uid range a VM's root is, from `/proc/self/uid_map` as read inside it.
fn host_base(uid_map: &str) -> u32 {
    let f: Vec<u32> = uid_map.split_whitespace().map(|w| w.parse().unwrap()).collect();
    assert_eq!((f.len(), f[0], f[2]), (3, 0, 65536), "one range of 65536 ids from VM uid 0: {uid_map}");
    f[1]
}

#[test]
fn integration_vserver_user_namespaces_sudo_and_isolation_between_vms() {
    prerequisites();
    let node = TestNode::new("userns");
    let (key, public) = keypair(node.dir.path());
    let mut c = node.client();
    let pool = r#"<PoolRSpec vm_type="linux-vserver-x86"><resources cpu_share="4" disk_quota="1" mem_limit="1024"/></PoolRSpec>"#;
    let root = c.call_str("CreatePool", json!([pool, "plc.it"]), "rcap").unwrap();
    let mut vms = Vec::new();
    for slice in ["plc.it.alpha", "plc.it.beta"] {
        let sub = c.call_str("SplitPool", json!([root, slice_rspec(slice, &public, 256, "0.1")]), "rcap").unwrap();
        let vm = c.call_value("Bind", json!([sub, slice])).unwrap();
        let (name, addr) = (vm["vm"].as_str().unwrap().to_owned(), vm["address"].as_str().unwrap().to_owned());
        assert_eq!(node.ssh_ready(&key, &name, &addr).0, 0, "ssh into {name}:\n{}", node.nm_log());
        vms.push((name, addr));
    }
    let ((a, a_addr), (b, b_addr)) = (&vms[0], &vms[1]);
    let ssh = |vm: &str, addr: &str, cmd: &str| {
        let (code, out) = node.ssh(&key, vm, addr, cmd);
        assert_eq!(code, 0, "{cmd} in {vm}: {out}");
        out
    };

    // 9.1: each VM's ids are a host range of their own, above every host user, apart
    // from the other VM's; root in the VM (through sudo, 9.3) is the start of that range.
    let out =
        ssh(a, a_addr, "cat /proc/self/uid_map; sudo -n id -u; sudo -n cat /proc/self/uid_map /proc/self/gid_map");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let base_a = host_base(lines[0]);
    assert_eq!(lines[1], "0", "passwordless sudo gives the slice root in its VM: {out}");
    assert_eq!((host_base(lines[2]), host_base(lines[3])), (base_a, base_a), "{out}");
    let base_b = host_base(&ssh(b, b_addr, "cat /proc/self/uid_map"));
    assert!(base_a >= 65536 && base_b >= 65536, "VM ids are no host user's: {base_a} {base_b}");
    assert!(base_a.abs_diff(base_b) >= 65536, "the VMs' ranges do not overlap: {base_a} {base_b}");
    // Seen from the host, the VM's processes are its range's, never root.
    for (vm, base) in [(a, base_a), (b, base_b)] {
        let pid = c.call_value("VmStatus", json!([vm])).unwrap()["details"]["pid"].as_str().unwrap().to_owned();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(uid.split_whitespace().nth(1), Some(base.to_string().as_str()), "{vm}'s init on the host: {uid}");
    }

    // 9.4: the VM sees its own memory limit (256 MB) and its own uptime, from lxcfs.
    let out = ssh(a, a_addr, "head -1 /proc/meminfo; free -m | sed -n 2p; cut -d. -f1 /proc/uptime");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["MemTotal:", "262144", "kB"], "{out}");
    assert_eq!(lines[1].split_whitespace().nth(1), Some("256"), "free -m: {out}");
    assert!(lines[2].parse::<u64>().unwrap() < 600, "the VM's uptime, not the host's: {out}");

    // Root in a VM, tried: every one of these is refused (mount, a new user namespace, the
    // keyrings, writing kernel settings) or shows nothing of the host or the other VMs (the
    // host's cgroups and interfaces, in the read-only /sys).
    let probe = concat!(
        "sudo -n mount -t tmpfs t /mnt 2>/dev/null; echo mount=$?; ",
        "sudo -n unshare -U true 2>/dev/null; echo unshare=$?; ",
        "sudo -n perl -e '($t, $d, $p) = (\"user\", \"plab\", \"secret\"); $r = syscall(248, $t, $d, $p, 6, -2); print \"add_key=$r errno=\", $!+0, \"\\n\"'; ",
        "sudo -n sh -c 'echo 1 > /proc/sys/kernel/sysrq' 2>/dev/null; echo sysrq=$?; ",
        "sudo -n sh -c 'echo x > /sys/kernel/uevent_helper' 2>/dev/null; echo sys=$?; ",
        "echo cgroups=$(ls /sys/fs/cgroup | wc -l) links=$(ls /sys/class/net | wc -l); ",
        "sudo -n touch /etc/made-by-root && stat -c 'owner=%u:%g' /etc/made-by-root",
    );
    let out = ssh(a, a_addr, probe);
    let lines: Vec<&str> = out.lines().collect();
    for want in ["mount=32", "unshare=1", "add_key=-1 errno=1", "sysrq=2", "sys=2", "cgroups=0 links=0", "owner=0:0"] {
        assert!(lines.contains(&want), "{want} expected in:\n{out}");
    }
    // What root in the VM writes is its range's on the host disk.
    let made = node.state().join("vms").join(a).join("disk/upper/etc/made-by-root");
    let m = std::fs::metadata(&made).unwrap();
    assert_eq!((m.uid(), m.gid()), (base_a, base_a), "{}", made.display());

    // The shared image is seen read-only, even by host root, through the VM's directory:
    // an `rm -rf` of the state directory cannot empty it.
    let lower = node.state().join("vms").join(a).join("lower/etc/hostname");
    let e = std::fs::remove_file(&lower).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{}: {e}", lower.display());

    // The other VM's files: root in B keeps a secret; A's root, even escaped to the host
    // as its host uid, cannot read it (and inside A, nothing of B is mounted).
    ssh(b, b_addr, "sudo -n sh -c 'umask 077; echo b-secret > /root/secret'");
    let secret = node.state().join("vms").join(b).join("rootfs/root/secret");
    assert_eq!(std::fs::read_to_string(&secret).unwrap().trim(), "b-secret");
    assert_eq!(std::fs::metadata(&secret).unwrap().uid(), base_b);
    let escaped = Command::new("setpriv")
        .args(["--reuid", &base_a.to_string(), "--regid", &base_a.to_string(), "--clear-groups", "cat"])
        .arg(&secret)
        .output()
        .unwrap();
    assert!(!escaped.status.success(), "A's host uid read B's secret");
    assert!(String::from_utf8_lossy(&escaped.stderr).contains("Permission denied"), "{escaped:?}");
    // Nor can any other host user (here B's root, escaped) reach A's root filesystem or
    // A's node manager socket (which would speak as A's slice).
    let as_b = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid", &base_b.to_string(), "--regid", &base_b.to_string(), "--clear-groups"])
            .args(args)
            .output()
            .unwrap()
    };
    let a_hostname = node.state().join("vms").join(a).join("rootfs/etc/hostname");
    let o = as_b(&["cat", &a_hostname.to_string_lossy()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Permission denied"), "{o:?}");
    let a_socket = node.state().join("sockets").join(a).join("run/nm.sock");
    let connect = format!("import socket; socket.socket(socket.AF_UNIX).connect({:?})", a_socket.to_string_lossy());
    let o = as_b(&["/usr/bin/python3", "-c", &connect]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("PermissionError"), "{o:?}");
    let out = ssh(a, a_addr, "sudo -n grep -rls b-secret /root /home /etc /var /tmp; echo found=$?");
    assert!(out.lines().any(|l| l == "found=1") && !out.contains("/secret"), "{out}");

    // inotify (9.5): 200 watchers in A get at most A's own share; B and the host (the node
    // manager) can still make theirs while A holds every one it got.
    let hold = concat!(
        "for i in $(seq 200); do tail -f /etc/hostname >/dev/null 2>&1 & done; ",
        "nohup perl -e 'for (1..200) { $r = syscall(294, 0); last if $r < 0; $n++ } ",
        "open(F, \">/tmp/inotify\"); print F \"$n\\n\"; close F; sleep 60' >/dev/null 2>&1 & ",
        "sleep 1; cat /tmp/inotify",
    );
    let got: u32 = ssh(a, a_addr, hold).trim().parse().unwrap();
    assert!(got < 200, "A is held to its limit, got {got}");
    eprintln!("inotify instances one VM got of 200 tried: {got}");
    let b_out =
        ssh(b, b_addr, "perl -e '$r = syscall(294, 0); print \"inotify=\", ($r >= 0 ? \"ok\" : $!+0), \"\\n\"'");
    assert_eq!(b_out.trim(), "inotify=ok", "B still gets an inotify instance");
    // SAFETY: a plain system call with no pointers; the descriptor is closed right after.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    assert!(fd >= 0, "the host still gets an inotify instance: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just returned by inotify_init1 and is owned here.
    unsafe { libc::close(fd) };
}

#[test]
fn integration_vserver_a_hostile_vm_neither_fills_the_host_nor_holds_up_others() {
    prerequisites();
    let node = TestNode::with_config("hostile", "stop_timeout_secs = 4\n");
    let (key, public) = keypair(node.dir.path());
    let mut c = node.client();
    let pool = r#"<PoolRSpec vm_type="linux-vserver-x86"><resources cpu_share="8" disk_quota="1" mem_limit="1024"/></PoolRSpec>"#;
    let root = c.call_str("CreatePool", json!([pool, "plc.it"]), "rcap").unwrap();
    // The loud VM's bootscript prints 150 MB to its console, past its 0.1 GB disk.
    let loud = format!(
        r#"<VServerSlice name="plc.it.loud"><resources cpu_share="2" disk_quota="0.1" mem_limit="128"/><key>{public}</key><bootscript>yes loud | head -c 150000000; echo loud-done</bootscript></VServerSlice>"#
    );
    let sub = c.call_str("SplitPool", json!([root, loud]), "rcap").unwrap();
    let vm = c.call_value("Bind", json!([sub, "plc.it.loud"])).unwrap();
    let (loud, loud_addr) = (vm["vm"].as_str().unwrap().to_owned(), vm["address"].as_str().unwrap().to_owned());
    let sub = c.call_str("SplitPool", json!([root, slice_rspec("plc.it.quiet", &public, 64, "0.05")]), "rcap").unwrap();
    let vm = c.call_value("Bind", json!([sub, "plc.it.quiet"])).unwrap();
    let (quiet, quiet_addr) = (vm["vm"].as_str().unwrap().to_owned(), vm["address"].as_str().unwrap().to_owned());

    // 9.8: the console log is on the VM's own disk, so it never outgrows the VM's quota on
    // the host, and the node manager's upkeep rotates it.
    let dir = node.state().join("vms").join(&loud).join("disk");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let size = |f: &str| std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
        let (now, old) = (size("console.log"), size("console.log.1"));
        assert!(now + old <= (1 << 30) / 10, "the console is held to the VM's quota: {now} + {old} bytes");
        if old > 0 && now <= plab_tests::CONSOLE_CAP {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never rotated: {now} bytes\n{}", node.nm_log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let log = c.call_value("VmLog", json!([loud, 1 << 20])).unwrap()["log"].as_str().unwrap().len();
    assert!(log <= 1 << 20, "VmLog is bounded: {log} bytes");
    assert!(log > 0);
    // Following the log: positions count every byte printed, across the rotation; a
    // reader from the start learns how much went before it could read it.
    let first = c.call_value("VmLog", json!({"vm": loud, "bytes": 1000, "from": 0})).unwrap();
    assert!(first["skipped"].as_u64().unwrap() > 50_000_000, "the start was rotated away: {first}");
    assert_eq!(first["log"].as_str().unwrap().len(), 1000);
    // It starts wherever the rotation cut: the tail of one "loud" line, then whole lines.
    let (head, rest) = first["log"].as_str().unwrap().split_once('\n').unwrap();
    assert!("loud".ends_with(head) && rest.starts_with("loud\n"), "{first}");
    let end = c.call_value("VmLog", json!({"vm": loud, "bytes": 10})).unwrap()["next"].as_u64().unwrap();
    assert!(end > 50_000_000 && end >= first["next"].as_u64().unwrap(), "{end}");
    let after = c.call_value("VmLog", json!({"vm": loud, "from": end})).unwrap();
    assert!(after["next"].as_u64().unwrap() >= end && after["skipped"] == 0, "{after}");

    // `plab nm log --follow` shows what a VM prints as it comes.
    let ticker = format!(
        r#"<VServerSlice name="plc.it.ticker"><resources cpu_share="1" disk_quota="0.05" mem_limit="64"/><key>{public}</key><bootscript>i=0; while [ $i -lt 300 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done</bootscript></VServerSlice>"#
    );
    let sub = c.call_str("SplitPool", json!([root, ticker]), "rcap").unwrap();
    c.call_value("Bind", json!([sub, "plc.it.ticker"])).unwrap();
    let mut follow = Command::new(plab_tests::bin("plab"))
        .args(["nm", "--socket"])
        .arg(node.socket())
        .args(["log", "--follow", "plc_it_ticker"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let mut seen = Vec::new();
    for line in lines {
        let line = line.unwrap();
        let done = line == "tick 40";
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen.last().map(String::as_str), Some("tick 40"), "{seen:?}");
    assert!(seen.iter().any(|l| l == "tick 39"), "nothing lost between reads: {seen:?}");

    // 9.8: a VM whose init will not stop (root in it stops plab-init, so SIGTERM goes
    // nowhere) holds up only its own stop, for stop_timeout_secs: the node manager answers
    // for the other VM meanwhile, and the stop ends with the VM forced off.
    let (code, out) =
        node.ssh(&key, &loud, &loud_addr, "sudo -n sh -c 'kill -STOP $(cat /run/plab-init.pid)'; echo stopped=$?");
    assert!(code == 0 && out.contains("stopped=0"), "{out}");
    let socket = node.socket();
    let stopping = {
        let loud = loud.clone();
        std::thread::spawn(move || NmClient::connect(&socket).unwrap().call_value("StopVM", json!([loud])))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let st = c.call_value("VmStatus", json!([quiet])).unwrap();
    assert_eq!(st["state"], "running");
    assert_eq!(node.ssh(&key, &quiet, &quiet_addr, "true").0, 0);
    assert!(!stopping.is_finished(), "the other VM's calls did not wait for the held stop");
    stopping.join().unwrap().unwrap();
    assert_eq!(c.call_value("VmStatus", json!([loud])).unwrap()["state"], "stopped");
}

#[test]
fn integration_vserver_failed_start_leaves_nothing() {
    prerequisites();
    // An OCI runtime that works for everything but `create`, as a broken runtime would.
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("failing-runc");
    std::fs::write(
        &runtime,
        "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = create ] && { echo 'injected failure: cannot create container' >&2; exit 1; }; done\nexec runc \"$@\"\n",
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&runtime).unwrap().permissions(), 0o755);
    Command::new("chmod").arg("755").arg(&runtime).status().unwrap();
    let node = TestNode::with_config("fail", &format!("oci_runtime = \"{}\"\n", runtime.display()));
    let (_, public) = keypair(node.dir.path());
    let mut c = node.client();
    let pool = r#"<PoolRSpec><resources cpu_share="4" disk_quota="1" mem_limit="256"/></PoolRSpec>"#;
    let root = c.call_str("CreatePool", json!([pool, "plc.it"]), "rcap").unwrap();

    // A VM type the node does not have is refused up front.
    // (This is no Xen host: the refusal says so.)
    let xen = format!(
        r#"<XenSlice name="plc.it.xen"><resources cpu_share="1" disk_quota="0.1" mem_limit="64"/><key>{public}</key></XenSlice>"#
    );
    let sub = c.call_str("SplitPool", json!([root, xen]), "rcap").unwrap();
    let e = c.call_value("Bind", json!([sub, "plc.it.xen"])).unwrap_err();
    assert!(e.to_string().contains("linux-xen-x86 is not supported on this node"), "{e}");
    assert!(e.to_string().contains("Xen"), "the refusal says why: {e}");

    // A VM whose start fails is removed completely, and the pool is free again.
    let sub =
        c.call_str("SplitPool", json!([root, slice_rspec("plc.it.broken", &public, 64, "0.05")]), "rcap").unwrap();
    let e = c.call_value("Bind", json!([sub, "plc.it.broken"])).unwrap_err();
    assert!(e.to_string().contains("injected failure"), "the runtime's message reaches the caller: {e}");
    assert!(c.call_value("ListVMs", json!({})).unwrap()["vms"].as_array().unwrap().is_empty());
    assert!(!node.state().join("vms/plc_it_broken").exists());
    assert!(!node.state().join("sockets/plc_it_broken").exists());
    assert_eq!(mounts_under(&node.state()), 0);
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains("plab-plc_it_broken"));
    let pools = c.call_value("ListPools", json!({})).unwrap();
    assert!(pools["pools"].as_array().unwrap().iter().all(|p| p["vm"].is_null()), "{pools}");
    assert!(c.call_value("Orphans", json!({})).unwrap()["orphans"].as_array().unwrap().is_empty());
}

#[test]
fn integration_local_callers_owner_script_and_uid_mapping() {
    prerequisites();
    let node = TestNode::with_config("callers", "[slice_uids]\n65534 = \"plc.it.nobody\"\n");
    // Let unprivileged users reach the socket; the node manager still checks SO_PEERCRED.
    Command::new("chmod").arg("755").arg(node.dir.path()).status().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // The owner script (root) gives the slice a pool; applying it again changes nothing.
    let config = node.dir.path().join("site-admin.toml");
    std::fs::write(
        &config,
        "[[slice]]\nname = \"plc.it.nobody\"\nvm_type = \"linux-vserver-x86\"\n\
         resources = { cpu_share = 8, disk_quota = 20, mem_limit = 4096, base_rate = 1, burst_rate = 100, sustained_rate = 10 }\n",
    )
    .unwrap();
    let owner_script = || {
        let out = Command::new("python3")
            .arg(repo.join("owner/site-admin.py"))
            .arg("--socket")
            .arg(node.socket())
            .arg("apply")
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let first = owner_script();
    assert!(first.contains("slice plc.it.nobody: pool") && first.ends_with("1 change(s)"), "{first}");
    let again = owner_script();
    assert!(again.contains("already has a pool") && again.ends_with("0 change(s)"), "{again}");
    let rcaps = node.client().call_value("GetRcap", json!(["plc.it.nobody"])).unwrap();
    assert_eq!(rcaps["rcaps"].as_array().unwrap().len(), 1, "{rcaps}");
    let rcap = rcaps["rcaps"][0].as_str().unwrap().to_owned();

    // A copy of plab other users may run: the checkout may be in a directory they cannot
    // enter (a clone under /root).
    let plab = node.dir.path().join("plab");
    std::fs::copy(plab_tests::bin("plab"), &plab).unwrap();
    std::fs::set_permissions(&plab, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755))
        .unwrap();
    let as_uid = |uid: &str, args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid", uid, "--regid", uid, "--clear-groups"])
            .arg(&plab)
            .args(["nm", "--socket"])
            .arg(node.socket())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    // uid 65534 is mapped to plc.it.nobody: it sees its pool, but is not the owner. (The
    // RSpec it hands over is in a file it can read: the checkout may be in a directory
    // other users cannot enter, and the refusal checked is the node manager's.)
    let (ok, out) = as_uid("65534", &["get-rcap"]);
    assert!(ok && out.trim() == rcap, "{out}");
    let readable = node.dir.path().join("pool.xml");
    std::fs::copy(repo.join("examples/rspec/pool.xml"), &readable).unwrap();
    std::fs::set_permissions(&readable, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644))
        .unwrap();
    let (ok, out) = as_uid("65534", &["create-pool", &readable.to_string_lossy(), "plc.it.nobody"]);
    assert!(!ok && out.contains("CreatePool: permission denied: only the node owner (site_admin) may call it, and the caller is slice plc.it.nobody"), "{out}");
    // An unmapped uid gets nothing at all.
    let (ok, out) = as_uid("65533", &["info"]);
    assert!(
        !ok && out.contains("permission denied: uid 65533 is neither the node owner nor mapped to a slice"),
        "{out}"
    );
    let (ok, out) = as_uid("65533", &["get-rspec", &rcap]);
    assert!(
        !ok && out.contains("permission denied: uid 65533 is neither the node owner nor mapped to a slice"),
        "{out}"
    );
}
