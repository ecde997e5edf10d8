//! Integration test: a real node manager (`plab-nm serve`) in a network namespace this
//! test creates, real runc containers built from the project image, real OpenSSH logins.
//! Needs root, runc, OpenSSH's client and the image (`make image`); it fails, saying what
//! to install, when any is missing.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use plab_nm::NmClient;
use plab_tests::{assert_exit, assert_key_refused, keypair, mounts_under, prerequisites, TestNode};
use serde_json::json;
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
    // the kernel keyrings (shared by every container of a host uid), a new user namespace,
    // io_uring; setuid gains nothing (no_new_privileges), raw sockets need NET_RAW.
    let probe = concat!(
        "unshare -U true 2>/dev/null; echo unshare=$?; ",
        "perl -e '($t, $d, $p) = (\"user\", \"plab\", \"secret\"); $r = syscall(248, $t, $d, $p, 6, -2); print \"add_key=$r errno=\", $!+0, \"\\n\"'; ",
        "perl -e '$r = syscall(250, 0, -2); print \"keyctl=$r errno=\", $!+0, \"\\n\"'; ",
        "perl -e '$p = \"\\0\" x 120; $r = syscall(425, 4, $p); print \"io_uring=$r errno=\", $!+0, \"\\n\"'; ",
        "grep -E '^NoNewPrivs' /proc/self/status | tr -d ' \\t'; ",
        "perl -MSocket -e 'socket(S, AF_INET, SOCK_RAW, 1) ? print \"raw=ok\\n\" : print \"raw=refused\\n\"'",
    );
    let (code, out) = node.ssh(&key, "plc_it_demo", &addr, probe);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    for want in
        ["unshare=1", "add_key=-1 errno=1", "keyctl=-1 errno=1", "io_uring=-1 errno=1", "NoNewPrivs:1", "raw=refused"]
    {
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
    assert!(after >= before + 40, "the filesystem grew from {before} MB to {after} MB");
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
    let mut inside = NmClient::connect(&node.state().join("sockets").join(&name).join("nm.sock")).unwrap();
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
