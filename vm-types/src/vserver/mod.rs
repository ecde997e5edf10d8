//! linux-vserver-x86: VMs as containers through an OCI runtime (runc by default).
//!
//! Per VM, under `<vm_dir>/<name>/`:
//!
//! | path          | what |
//! |---------------|------|
//! | `disk.img`    | sparse ext4 image of `disk_quota` bytes: the VM's writable layer, so writing past the quota fails with ENOSPC |
//! | `disk/`       | where `disk.img` is loop-mounted (`upper/`, `work/` of the overlay) |
//! | `lower/`      | the shared read-only image, idmapped into the VM's uid range |
//! | `rootfs/`     | overlay of `lower/` and `disk/upper`: the VM's `/` |
//! | `plab/`       | node-manager-owned files: `login`, `keys/<login>`, `bootscript`, `ssh_host_ed25519_key` (0600, see [`crate::host_key`]) |
//! | `etc-plab/`   | `plab/` idmapped into the VM's uid range, read-only at `/etc/plab` in the VM |
//! | `bundle/`     | the OCI bundle (`config.json`) |
//! | `disk/console.log` | everything the VM's init and bootscript print: on the VM's own disk (outside its `/`), so it counts against its quota; past [`CONSOLE_CAP`] its last part moves to `console.log.1` ([`Backend::maintain`]) |
//!
//! Networking: a network namespace `plab-<name>` per VM, a veth pair whose host end
//! `pv<index>` joins the node bridge and whose VM end is `eth0` with the VM's address.
//! cgroups: `/plab/<name>` with `cpu.shares` (v1) or `cpu.weight` (v2), the memory limit
//! (swap included) and a pids limit; runc translates for cgroup v1 or v2.
//!
//! Users: every VM has a user namespace of its own. VM number n's ids 0..65536 are host
//! ids `uid_base + n * 65536` onwards ([`VM_IDS`]): root in the VM is an unprivileged host
//! uid that owns nothing outside the VM's disk. The shared image and `plab/` (written by
//! the node manager as host root) are seen through idmapped mounts, so they appear owned
//! by the VM's root without a file being copied or chowned; the files the VM writes land
//! on its disk with host ids from its range. The node manager's VM number is unique among
//! its VMs and is reused only once the VM is destroyed, and with it the range.

pub mod oci;
pub mod seccomp;

use crate::backend::{Backend, BackendError, VmSpec, VmState, VmStatus};
use crate::host::{s, Cmd, Host, IdMap, VmLink};
use crate::vm_type::VmType;
use oci_spec::runtime::{ContainerState, State};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Smallest disk a VM can have: ext4 needs room for its own metadata.
pub const MIN_DISK_BYTES: u64 = 16 << 20;

/// A VM's console log is rotated once it is past this size: its last [`CONSOLE_KEEP`]
/// bytes go to `console.log.1`, and the log starts again (the VM writes with O_APPEND, so
/// it simply goes on at the new end).
pub const CONSOLE_CAP: u64 = 4 << 20;

/// What a rotation keeps of the old log.
pub const CONSOLE_KEEP: u64 = 1 << 20;

/// A VM directory's mount points, the overlay first (it holds the others).
const MOUNTS: [&str; 4] = ["rootfs", "lower", "etc-plab", "disk"];

/// inotify instances a VM may hold (all its users together): Debian's per-user default.
/// The kernel counts them per user namespace, and above it against the host uid that made
/// the namespace (root, for every VM): see [`VserverBackend::check`].
pub const INOTIFY_INSTANCES: u32 = 128;

/// inotify watches a VM may hold.
pub const INOTIFY_WATCHES: u32 = 65536;

pub use crate::idmap::{host_ids, VM_IDS};

/// Settings of the container backend.
#[derive(Debug, Clone)]
pub struct VserverConfig {
    /// Where per-VM directories live.
    pub vm_dir: PathBuf,
    /// The read-only root filesystem image built by `images/build-rootfs.sh`.
    pub image_dir: PathBuf,
    /// The OCI runtime binary.
    pub runtime: String,
    /// The runtime's state directory (`runc --root`).
    pub runtime_root: PathBuf,
    /// The node bridge that VM interfaces join.
    pub bridge: String,
    /// How long `stop` waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// Set apart this node manager's host-wide names (network namespaces, cgroups) from
    /// another's on the same host (a testbed of several nodes on one machine); empty on a
    /// host with one node manager.
    pub scope: String,
    /// The first host uid/gid of VM ranges: VM number n maps to `uid_base + n * VM_IDS`.
    pub uid_base: u32,
    /// Where lxcfs is mounted, if VMs are to see their own limits in `/proc`.
    pub lxcfs_dir: Option<PathBuf>,
}

/// The files lxcfs makes per container, bound over the VM's own: memory, CPUs, load,
/// uptime and disk statistics as the VM's limits and life make them.
pub const LXCFS_FILES: [&str; 9] = [
    "proc/cpuinfo",
    "proc/diskstats",
    "proc/loadavg",
    "proc/meminfo",
    "proc/slabinfo",
    "proc/stat",
    "proc/swaps",
    "proc/uptime",
    "sys/devices/system/cpu/online",
];

/// Why lxcfs at `dir` cannot serve VMs (with what to do), or None when it can. An empty
/// `dir` is a choice, not a problem.
pub fn lxcfs_problem(dir: &Path) -> Option<String> {
    if dir.as_os_str().is_empty() {
        return None;
    }
    match fs::metadata(dir.join("proc/meminfo")) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "lxcfs is not serving {} ({e}): container VMs see the host's memory, CPUs and uptime in /proc until it does; install and start it (apt-get install lxcfs; lxcfs {}), or set lxcfs_dir = \"\" to go without",
            dir.display(),
            dir.display()
        )),
    }
}

/// The container backend.
pub struct VserverBackend {
    cfg: VserverConfig,
    host: Arc<dyn Host>,
    /// The VMs' seccomp filter (from Podman's profile, read once).
    seccomp: oci_spec::runtime::LinuxSeccomp,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
    let what = what.into();
    move |e| BackendError::Io(what, e)
}

impl VserverBackend {
    /// A backend with these settings on `host`. Paths must not hold `,` or `:` (overlayfs
    /// options).
    pub fn new(cfg: VserverConfig, host: Arc<dyn Host>) -> Result<VserverBackend, BackendError> {
        for p in [&cfg.vm_dir, &cfg.image_dir] {
            if p.to_string_lossy().contains([',', ':']) {
                return Err(BackendError::Invalid(format!(
                    "{}: paths for VMs may not contain ',' or ':'",
                    p.display()
                )));
            }
        }
        // Searchable, not listable, by others: runc sets up each VM's root as the VM's
        // root (an unprivileged host uid), which must reach its directory.
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&cfg.vm_dir)
                .map_err(io(cfg.vm_dir.display().to_string()))?;
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&cfg.runtime_root)
                .map_err(io(cfg.runtime_root.display().to_string()))?;
        }
        let seccomp = seccomp::load(&oci::CAPABILITIES).map_err(BackendError::Unavailable)?;
        Ok(VserverBackend { cfg, host, seccomp })
    }

    fn run(&self, prog: &str, args: &[&str]) -> Result<String, BackendError> {
        self.host.run(&Cmd::new(prog).args(args))
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.cfg.vm_dir.join(name)
    }

    /// The VM's host uid/gid range (see the module's documentation).
    pub fn ids(&self, spec: &VmSpec) -> Result<IdMap, BackendError> {
        let index = spec.network.index;
        host_ids(self.cfg.uid_base, index).ok_or_else(|| {
            BackendError::Invalid(format!(
                "VM number {index} has no host uid range left above vm_uid_base {}",
                self.cfg.uid_base
            ))
        })
    }

    /// The VM's network namespace (host-wide name).
    fn netns(&self, name: &str) -> String {
        match self.cfg.scope.as_str() {
            "" => format!("plab-{name}"),
            s => format!("plab-{s}-{name}"),
        }
    }

    /// The VM's cgroup, below the cgroup roots.
    fn cgroup(&self, name: &str) -> String {
        match self.cfg.scope.as_str() {
            "" => format!("plab/{name}"),
            s => format!("plab/{s}/{name}"),
        }
    }

    fn runtime_cmd(&self, args: &[&str]) -> Cmd {
        Cmd::new(&self.cfg.runtime).arg("--root").arg(&self.cfg.runtime_root).args(args)
    }

    fn runtime(&self, args: &[&str]) -> Result<String, BackendError> {
        self.host.run(&self.runtime_cmd(args))
    }

    /// The runtime's view of a container (OCI state: status and pid), or None when it
    /// has none.
    fn runtime_state(&self, name: &str) -> Result<Option<State>, BackendError> {
        // runc keeps one directory per container under its root: no directory, no
        // container, and no need to ask runc.
        if self.cfg.runtime == "runc" && !self.cfg.runtime_root.join(name).exists() {
            return Ok(None);
        }
        match self.runtime(&["state", name]) {
            Ok(out) => serde_json::from_str(&out).map(Some).map_err(|e| {
                BackendError::Internal(format!("{} state {name}: unreadable output: {e}", self.cfg.runtime))
            }),
            Err(BackendError::Command { message, .. }) if message.contains("does not exist") => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn is_running(&self, name: &str) -> Result<bool, BackendError> {
        Ok(self.runtime_state(name)?.is_some_and(|st| *st.status() == ContainerState::Running))
    }

    fn write_plab_files(&self, spec: &VmSpec) -> Result<(), BackendError> {
        let plab = self.dir(&spec.name).join("plab");
        let login = spec.slice.login();
        fs::create_dir_all(plab.join("keys")).map_err(io("plab dir"))?;
        write_atomic(&plab.join("login"), &format!("{login}\n"))?;
        let keys: String = spec.keys.iter().map(|k| format!("{}\n", k.as_str())).collect();
        write_atomic(&plab.join("keys").join(&login), &keys)?;
        crate::host_key::ensure(&plab, &spec.name)?;
        let boot = plab.join("bootscript");
        match &spec.bootscript {
            Some(b) => write_atomic(&boot, b)?,
            None => match fs::remove_file(&boot) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(BackendError::Io("bootscript".into(), e))
                }
                _ => {}
            },
        }
        Ok(())
    }

    /// Grows a stopped VM's disk to `quota` offline, when it is smaller (growth that
    /// could not happen while the VM ran): unmounted first, resized as a file.
    fn grow_pending(&self, name: &str, quota: u64) -> Result<(), BackendError> {
        let d = self.dir(name);
        let (img, disk, rootfs) = (d.join("disk.img"), d.join("disk"), d.join("rootfs"));
        let len = fs::metadata(&img).map(|m| m.len()).map_err(io("disk.img"))?;
        if len >= quota {
            return Ok(());
        }
        // Not lazily: a filesystem still in use must not be resized underneath.
        for m in [&rootfs, &disk] {
            if self.host.is_mounted(m) {
                self.run("umount", &[&s(m)])?;
            }
        }
        // A process that made a mount namespace of its own while the VM ran (`ip netns
        // exec`, `unshare -m`) holds a copy of the disk's mount, and so its loop device,
        // until it ends. Resizing the image under that mount would corrupt it (and the
        // next mount would reuse the old device, at the old size): wait for it to go, and
        // otherwise grow at a later start.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.run("losetup", &["-j", &s(&img)])?.trim().is_empty() {
            if std::time::Instant::now() >= deadline {
                tracing::warn!(
                    vm = name,
                    "the disk is still mounted in another mount namespace (a process that entered one while the VM ran): it grows at a later start"
                );
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let set_len =
            |n: u64| fs::OpenOptions::new().write(true).open(&img).and_then(|f| f.set_len(n)).map_err(io("disk.img"));
        set_len(quota)?;
        if let Err(e) = self.run("resize2fs", &["-f", &s(&img)]) {
            let _ = set_len(len);
            return Err(e);
        }
        // resize2fs trims the file to whole blocks; the image keeps the quota's length (the
        // filesystem ends up to a block short of it) so that the next start finds nothing to do.
        set_len(quota)
    }

    /// Loop-mounts the VM disk, mounts the image and the node manager's files idmapped
    /// into the VM's range, and the overlay root. Idempotent.
    fn mount(&self, spec: &VmSpec, running: bool) -> Result<(), BackendError> {
        let (name, ids) = (&spec.name, self.ids(spec)?);
        let d = self.dir(name);
        let (img, disk, rootfs) = (d.join("disk.img"), d.join("disk"), d.join("rootfs"));
        self.gate(name, &d, ids)?;
        if !self.host.is_mounted(&disk) {
            self.run("mount", &["-o", "loop,nodev,nosuid", &s(&img), &s(&disk)])?;
        }
        // The overlay's root directory is `upper`'s: the VM's root must own it. The work
        // directory is the kernel's (it works there as the mounter, host root).
        self.own_upper(name, &disk.join("upper"), ids, running)?;
        fs::create_dir_all(disk.join("work")).map_err(io(format!("{name}: disk/work")))?;
        let wanted = [(self.cfg.image_dir.clone(), d.join("lower")), (d.join("plab"), d.join("etc-plab"))];
        let mut todo = Vec::new();
        for (src, dst) in &wanted {
            if !self.host.is_mounted(dst) {
                fs::create_dir_all(src).map_err(io(format!("{name}: {}", src.display())))?;
                fs::create_dir_all(dst).map_err(io(format!("{name}: {}", dst.display())))?;
                todo.push((src.as_path(), dst.as_path()));
            }
        }
        if !todo.is_empty() {
            self.host.idmapped_binds(&todo, ids)?;
        }
        if !self.host.is_mounted(&rootfs) {
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                s(&d.join("lower")),
                s(&disk.join("upper")),
                s(&disk.join("work"))
            );
            self.run("mount", &["-t", "overlay", "overlay", "-o", &opts, &s(&rootfs)])?;
        }
        Ok(())
    }

    /// Makes the overlay's upper directory (the VM's `/`) its root's. A disk whose files
    /// belong to another range (one made before VMs had user namespaces, whose files are
    /// host ids 0..65536, or under another `vm_uid_base`) is shifted into this one, once.
    ///
    /// Never while the VM runs: its root could swap what the walk is about to change for a
    /// symbolic link to a host file. (A VM cannot give its `/` an owner outside its own
    /// range, so only a disk from before, not the VM, asks for a shift.)
    fn own_upper(&self, name: &str, upper: &Path, ids: IdMap, running: bool) -> Result<(), BackendError> {
        use std::os::unix::fs::MetadataExt;
        let io_upper = |e| BackendError::Io(format!("{name}: disk/upper"), e);
        match fs::symlink_metadata(upper) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(upper).map_err(io_upper)?;
                self.run("chown", &[&format!("{0}:{0}", ids.host_base), &s(upper)]).map(|_| ())
            }
            Err(e) => Err(io_upper(e)),
            Ok(m) if m.uid().checked_sub(ids.host_base).is_some_and(|i| i < ids.count) => Ok(()),
            Ok(m) if running => {
                tracing::warn!(
                    vm = name,
                    owner = m.uid(),
                    "the VM's files are of another range: shifted at its next start"
                );
                Ok(())
            }
            Ok(m) => {
                let from = IdMap { host_base: m.uid(), count: VM_IDS };
                tracing::info!(
                    vm = name,
                    from = from.host_base,
                    to = ids.host_base,
                    "shifting the VM's files into its uid range"
                );
                shift_owners(upper, from, ids).map_err(io_upper)
            }
        }
    }

    /// Bytes of the VM's console rotated away so far (`disk/console.rotated`).
    fn console_rotated(&self, name: &str) -> u64 {
        fs::read_to_string(self.console_path(name).with_extension("rotated"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Rotates the VM's console log when it is past [`CONSOLE_CAP`]; whether it did.
    pub fn rotate_console(&self, name: &str) -> Result<bool, BackendError> {
        let path = self.console_path(name);
        match fs::metadata(&path) {
            Ok(m) if m.len() > CONSOLE_CAP => {}
            _ => return Ok(false),
        }
        // Emptied before the kept part is written: a log that filled the VM's disk leaves
        // no room for the copy otherwise.
        let kept = crate::console::tail(&path, CONSOLE_KEEP)?;
        // Positions run on across the rotation (`console_from`): what goes is counted.
        let len = fs::metadata(&path).map(|m| m.len()).map_err(io("console.log"))?;
        let rotated = self.console_rotated(name) + len;
        fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(0)).map_err(io("console.log"))?;
        crate::files::replace(&path.with_extension("rotated"), rotated.to_string().as_bytes(), 0o600)
            .map_err(io("console.rotated"))?;
        crate::files::replace(&path.with_extension("log.1"), &kept, 0o600).map_err(io("console.log.1"))?;
        tracing::info!(vm = name, "console log rotated");
        Ok(true)
    }

    /// The VM's directory lets only root and the VM's root through (runc, setting up the
    /// VM as its root, must): 0710, group the VM's. Another host user, or another VM's
    /// root, cannot reach its root filesystem. Files made before this was so (disk image
    /// and console log readable by all) are made private or removed.
    fn gate(&self, name: &str, d: &Path, ids: IdMap) -> Result<(), BackendError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = fs::metadata(d).map_err(io(format!("{name}: its directory")))?;
        if m.gid() != ids.host_base {
            self.run("chown", &[&format!("0:{}", ids.host_base), &s(d)])?;
        }
        if m.mode() & 0o7777 != 0o710 {
            fs::set_permissions(d, fs::Permissions::from_mode(0o710)).map_err(io(format!("{name}: its directory")))?;
        }
        let img = d.join("disk.img");
        if fs::metadata(&img).is_ok_and(|m| m.mode() & 0o077 != 0) {
            fs::set_permissions(&img, fs::Permissions::from_mode(0o600)).map_err(io("disk.img"))?;
        }
        match fs::remove_file(d.join("console.log")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BackendError::Io("old console.log".into(), e)),
            _ => Ok(()),
        }
    }

    /// Creates the VM's network namespace and veth pair and addresses it. Idempotent.
    fn network(&self, spec: &VmSpec) -> Result<(), BackendError> {
        let n = &spec.network;
        let (netns, host_if, mac) = (self.netns(&spec.name), format!("pv{}", n.index), n.mac());
        self.host.vm_network(&VmLink {
            netns: &netns,
            host_if: &host_if,
            bridge: &self.cfg.bridge,
            mac: &mac,
            address: n.address,
            prefix_len: n.prefix_len,
            gateway: n.gateway,
        })?;
        // The namespace belongs to the host's user namespace, not the VM's, so the VM's
        // root may not bind ports below 1024 in it (sshd's 22) unless they are open to
        // every uid there: only the VM's own uids are.
        self.host.netns_sysctl(&netns, "net.ipv4.ip_unprivileged_port_start", "0")
    }

    fn write_config(&self, spec: &VmSpec) -> Result<(), BackendError> {
        let d = self.dir(&spec.name);
        let netns = PathBuf::from("/var/run/netns").join(self.netns(&spec.name));
        let cgroup = format!("/{}", self.cgroup(&spec.name));
        // lxcfs's files, when it serves them now (a dead FUSE mount would fail the start).
        let lxcfs = self.cfg.lxcfs_dir.as_deref().filter(|dir| match lxcfs_problem(dir) {
            None => true,
            Some(p) => {
                tracing::warn!(vm = spec.name, "{p}");
                false
            }
        });
        let m = oci::VmMounts {
            rootfs: &d.join("rootfs"),
            plab_dir: &d.join("etc-plab"),
            netns: &netns,
            cgroup: &cgroup,
            ids: self.ids(spec)?,
            lxcfs,
        };
        let json = serde_json::to_string_pretty(&oci::config(spec, &m, &self.seccomp))
            .map_err(|e| BackendError::Invalid(format!("config.json: {e}")))?;
        fs::create_dir_all(d.join("bundle")).map_err(io("bundle"))?;
        write_atomic(&d.join("bundle/config.json"), &json)
    }

    fn create_inner(&self, spec: &VmSpec) -> Result<(), BackendError> {
        let quota = spec.resources.disk_quota_bytes();
        if quota < MIN_DISK_BYTES {
            return Err(BackendError::Invalid(format!(
                "disk_quota: {} GB is below the smallest VM disk, {} MB",
                spec.resources.disk_quota,
                MIN_DISK_BYTES >> 20
            )));
        }
        let d = self.dir(&spec.name);
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new().mode(0o710).create(&d).map_err(io(format!("{}: its directory", spec.name)))?;
        }
        for sub in ["disk", "rootfs", "bundle"] {
            fs::create_dir_all(d.join(sub)).map_err(io(format!("{}: {sub}", spec.name)))?;
        }
        let img = d.join("disk.img");
        {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&img)
                .and_then(|f| f.set_len(quota))
                .map_err(io("disk.img"))?;
        }
        self.run(
            "mkfs.ext4",
            &["-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-L", "plab-vm", &s(&img)],
        )?;
        // Mounts, network and config.json are made by `start`, which must make them anyway
        // after a host reboot; doing them here too would only repeat the work.
        self.write_plab_files(spec)
    }

    /// The VM's console log: on its disk, so that what it prints counts against its quota.
    fn console_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("disk/console.log")
    }

    fn console_offset(&self, name: &str) -> u64 {
        fs::metadata(self.console_path(name)).map(|m| m.len()).unwrap_or(0)
    }

    fn console_since(&self, name: &str, offset: u64) -> String {
        let c = crate::console::chunk(&self.console_path(name), None, 0, offset, 8192);
        c.map(|c| String::from_utf8_lossy(&c.bytes).trim().to_owned()).unwrap_or_default()
    }

    fn start_container(&self, name: &str) -> Result<(), BackendError> {
        let d = self.dir(name);
        let log = self.console_path(name);
        let offset = self.console_offset(name);
        // The runtime hands its stdio to the VM's init, so stdout/stderr go straight to the
        // console log (a file, never a pipe that would keep us waiting).
        let pid_file = d.join("init.pid");
        let create =
            self.runtime_cmd(&["create", "--bundle", &s(&d.join("bundle")), "--pid-file", &s(&pid_file), name]);
        if !self.host.run_logged(&create, &log)? {
            return Err(BackendError::Command {
                command: format!("{} create {name}", self.cfg.runtime),
                message: self.console_since(name, offset),
            });
        }
        // The VM's namespaces exist and nothing of it runs yet: set its limits first.
        let pid = fs::read_to_string(&pid_file).map_err(io(format!("{name}: init.pid")))?;
        let pid = pid.trim();
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BackendError::Internal(format!("{} create {name} wrote no pid: {pid:?}", self.cfg.runtime)));
        }
        self.run(
            "nsenter",
            &[
                "--target",
                pid,
                "--user",
                "--",
                "sysctl",
                "-qw",
                &format!("user.max_inotify_instances={INOTIFY_INSTANCES}"),
                &format!("user.max_inotify_watches={INOTIFY_WATCHES}"),
            ],
        )?;
        self.runtime(&["start", name])?;
        Ok(())
    }

    /// Grows a mounted VM disk online (loop device capacity, then resize2fs); on failure
    /// the image is truncated back. `Ok(false)` when the kernel refused the online resize
    /// for want of CAP_SYS_RESOURCE (some sandboxes and nested hosts run without it): the
    /// disk then grows, offline, at the VM's next start.
    fn grow_disk(&self, name: &str, old_q: u64, new_q: u64) -> Result<bool, BackendError> {
        let img = self.dir(name).join("disk.img");
        let set_len = |len: u64| {
            fs::OpenOptions::new().write(true).open(&img).and_then(|f| f.set_len(len)).map_err(io("disk.img"))
        };
        set_len(new_q)?;
        let r = (|| {
            let dev = self.run("losetup", &["-j", &s(&img)])?;
            let dev = dev
                .split(':')
                .next()
                .filter(|d| d.starts_with("/dev/"))
                .ok_or_else(|| BackendError::Internal("the VM disk is not attached to a loop device".into()))?;
            self.run("losetup", &["-c", dev])?;
            self.run("resize2fs", &[dev]).map(|_| ())
        })();
        if r.is_err() {
            let _ = set_len(old_q);
            if let Ok(dev) = self.run("losetup", &["-j", &s(&img)]) {
                if let Some(dev) = dev.split(':').next().filter(|d| d.starts_with("/dev/")) {
                    let _ = self.run("losetup", &["-c", dev]);
                }
            }
        }
        match r {
            Ok(()) => Ok(true),
            Err(BackendError::Command { message, .. })
                if message.contains("Permission denied to resize filesystem") =>
            {
                tracing::warn!(
                    vm = name,
                    "the kernel refused to grow the mounted disk (no CAP_SYS_RESOURCE): it grows at the next start"
                );
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// A cgroup file's content: `v1` is the controller's file below the v1 hierarchy,
    /// `v2` the file in the unified one.
    fn cgroup_value(&self, name: &str, v1: &str, v2: &str) -> Option<String> {
        let (ctl, file) = v1.split_once('/')?;
        let cg = self.cgroup(name);
        let v1p = Path::new("/sys/fs/cgroup").join(ctl).join(&cg).join(file);
        let v2p = Path::new("/sys/fs/cgroup").join(&cg).join(v2);
        fs::read_to_string(v1p).or_else(|_| fs::read_to_string(v2p)).ok().map(|s| s.trim().to_owned())
    }
}

/// Gives every file below `dir` (itself included, symbolic links not followed) owned by
/// an id of range `from` the same id of range `to`; ids outside `from` are left alone.
/// Set-user-ID and set-group-ID bits, which a change of owner clears, are put back.
fn shift_owners(dir: &Path, from: IdMap, to: IdMap) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let shift = |id: u32| id.checked_sub(from.host_base).filter(|i| *i < from.count).and_then(|i| to.host_id(i));
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p)?;
        let (uid, gid) = (shift(m.uid()), shift(m.gid()));
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&p, uid, gid)?;
            if !m.file_type().is_symlink() && m.mode() & 0o6000 != 0 {
                fs::set_permissions(&p, fs::Permissions::from_mode(m.mode() & 0o7777))?;
            }
        }
        if m.is_dir() {
            for e in fs::read_dir(&p)? {
                todo.push(e?.path());
            }
        }
    }
    Ok(())
}

/// The VM's files (login, keys, bootscript, config.json) are made again from the node
/// manager's records at every start: replaced atomically, not synced.
fn write_atomic(path: &Path, content: &str) -> Result<(), BackendError> {
    crate::files::replace(path, content.as_bytes(), 0o644).map_err(io(path.display().to_string()))
}

impl Backend for VserverBackend {
    fn vm_type(&self) -> VmType {
        VmType::LinuxVserverX86
    }

    fn check(&self) -> Result<(), BackendError> {
        self.run(&self.cfg.runtime, &["--version"])?;
        if !self.cfg.image_dir.join(".plab-image").exists() {
            return Err(BackendError::Unavailable(format!(
                "the container image {} is missing: build it with `make image` (images/build-rootfs.sh)",
                self.cfg.image_dir.display()
            )));
        }
        for tool in [("ip", "-V"), ("mkfs.ext4", "-V"), ("losetup", "--version"), ("resize2fs", "-h")] {
            if let Err(BackendError::Unavailable(m)) = self.run(tool.0, &[tool.1]) {
                return Err(BackendError::Unavailable(m));
            }
        }
        // Every VM's inotify use is also counted against host root (who made its user
        // namespace): make room for 512 VMs at their limit besides the host's own use, so
        // that one VM's use never starves the host or another VM.
        for (key, want) in [
            ("fs.inotify.max_user_instances", u64::from(INOTIFY_INSTANCES) * 512 + 1024),
            ("fs.inotify.max_user_watches", u64::from(INOTIFY_WATCHES) * 512 + (1 << 20)),
        ] {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            let now: u64 = fs::read_to_string(&path).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
            if now < want {
                tracing::info!("raising {key} from {now} to {want} (VMs' inotify use counts against host root)");
                self.run("sysctl", &["-qw", &format!("{key}={want}")])?;
            }
        }
        // runc sets up a VM's root filesystem as the VM's root, an unprivileged host uid:
        // every directory above the VMs' must let others through.
        for dir in self.cfg.vm_dir.ancestors() {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = fs::metadata(dir) {
                if m.permissions().mode() & 0o001 == 0 {
                    return Err(BackendError::Unavailable(format!(
                        "{} is not searchable by other users (mode {:o}): container VMs' roots are unprivileged host uids that must reach {}; chmod o+x it (0711 lets them through without listing it)",
                        dir.display(),
                        m.permissions().mode() & 0o7777,
                        self.cfg.vm_dir.display()
                    )));
                }
            }
        }
        let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !fss.contains("overlay") {
            let _ = self.run("modprobe", &["overlay"]);
            if !fs::read_to_string("/proc/filesystems").unwrap_or_default().contains("overlay") {
                return Err(BackendError::Unavailable("the kernel lacks overlayfs: modprobe overlay".into()));
            }
        }
        Ok(())
    }

    fn create(&self, spec: &VmSpec) -> Result<(), BackendError> {
        if self.dir(&spec.name).exists() {
            // Leftovers of a create that a crash interrupted.
            self.destroy(&spec.name)?;
        }
        crate::backend::create_or_undo(&spec.name, || self.create_inner(spec), || self.destroy(&spec.name))
    }

    fn start(&self, spec: &VmSpec) -> Result<(), BackendError> {
        if !self.dir(&spec.name).join("disk.img").exists() {
            return Err(BackendError::NotFound(spec.name.clone()));
        }
        let running = self.is_running(&spec.name)?;
        if !running {
            // A container left created but not running (a node manager that died between
            // create and start) still has an init holding the disk's mount: gone first.
            if self.runtime_state(&spec.name)?.is_some() {
                self.runtime(&["delete", "--force", &spec.name])?;
            }
            self.grow_pending(&spec.name, spec.resources.disk_quota_bytes())?;
        }
        // Disk and network are independent: set them up side by side.
        let (disk, net) = std::thread::scope(|sc| {
            let net = sc.spawn(|| self.network(spec));
            let disk = self.mount(spec, running);
            (disk, net.join().unwrap_or_else(|_| Err(BackendError::Internal("network set-up panicked".into()))))
        });
        disk?;
        net?;
        self.write_plab_files(spec)?;
        self.write_config(spec)?;
        match self.runtime_state(&spec.name)? {
            Some(st) if *st.status() == ContainerState::Running => return Ok(()),
            Some(_) => {
                self.runtime(&["delete", "--force", &spec.name])?;
            }
            None => {}
        }
        let r = self.start_container(&spec.name);
        if r.is_err() {
            let _ = self.runtime(&["delete", "--force", &spec.name]);
        }
        r
    }

    fn stop(&self, name: &str) -> Result<(), BackendError> {
        let Some(st) = self.runtime_state(name)? else { return Ok(()) };
        if *st.status() == ContainerState::Running {
            let _ = self.runtime(&["kill", name, "TERM"]);
            let deadline = Instant::now() + self.cfg.stop_timeout;
            while Instant::now() < deadline && self.is_running(name)? {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.runtime(&["delete", "--force", name])?;
        Ok(())
    }

    fn destroy(&self, name: &str) -> Result<(), BackendError> {
        let d = self.dir(name);
        // Killing the container and taking its disk and network away are independent:
        // a lazily detached mount and a deleted netns live on until the last process in
        // them is gone. The VM's data is being deleted, so there is nothing to flush.
        let (container, rest) = std::thread::scope(|sc| {
            let container = sc.spawn(|| -> Result<(), BackendError> {
                if self.runtime_state(name)?.is_some() {
                    match self.runtime(&["delete", "--force", name]) {
                        Err(BackendError::Command { message, .. }) if !message.contains("does not exist") => {
                            return Err(BackendError::Command {
                                command: format!("{} delete {name}", self.cfg.runtime),
                                message,
                            })
                        }
                        _ => {}
                    }
                }
                Ok(())
            });
            let rest = (|| -> Result<(), BackendError> {
                for m in MOUNTS.map(|m| d.join(m)) {
                    if self.host.is_mounted(&m) {
                        self.run("umount", &["-l", &s(&m)])?;
                    }
                }
                self.host.netns_del(&self.netns(name))
            })();
            (container.join().unwrap_or_else(|_| Err(BackendError::Internal("runtime delete panicked".into()))), rest)
        });
        container?;
        rest?;
        if d.exists() {
            // Never remove through a mount: `lower` is the shared image.
            if MOUNTS.iter().any(|m| self.host.is_mounted(&d.join(m))) {
                return Err(BackendError::Internal(format!(
                    "{name}: disk or image still mounted, not removing {}",
                    d.display()
                )));
            }
            fs::remove_dir_all(&d).map_err(io(d.display().to_string()))?;
        }
        Ok(())
    }

    fn update(&self, old: &VmSpec, new: &VmSpec) -> Result<(), BackendError> {
        let name = &new.name;
        let (old_q, new_q) = (old.resources.disk_quota_bytes(), new.resources.disk_quota_bytes());
        if new_q < old_q {
            return Err(BackendError::Invalid(format!(
                "disk_quota: a VM disk cannot shrink ({} GB to {} GB)",
                old.resources.disk_quota, new.resources.disk_quota
            )));
        }
        self.write_plab_files(new)?;
        self.write_config(new)?;
        if new_q > old_q && self.is_running(name)? {
            if let Err(e) = self.grow_disk(name, old_q, new_q) {
                // Leave the VM as it was: the caller records no change.
                self.write_plab_files(old)?;
                self.write_config(old)?;
                return Err(BackendError::Invalid(format!(
                    "disk_quota: growing the VM's disk failed ({e}); nothing was changed"
                )));
            }
        }
        if self.is_running(name)? {
            {
                let mem = new.resources.mem_limit_bytes().to_string();
                let shares = new.resources.cpu_shares().to_string();
                self.runtime(&["update", "--cpu-share", &shares, "--memory", &mem, "--memory-swap", &mem, name])?;
            }
        }
        Ok(())
    }

    fn status(&self, name: &str) -> Result<VmStatus, BackendError> {
        let mut details = BTreeMap::new();
        let state = match self.runtime_state(name)? {
            Some(st) if *st.status() == ContainerState::Running => {
                details.insert("pid".into(), st.pid().unwrap_or(0).to_string());
                if let Some(m) = self.cgroup_value(name, "memory/memory.limit_in_bytes", "memory.max") {
                    details.insert("memory_limit_bytes".into(), m);
                }
                if let Some(c) = self.cgroup_value(name, "cpu/cpu.shares", "cpu.weight") {
                    details.insert("cpu_shares".into(), c);
                }
                VmState::Running
            }
            _ if self.dir(name).join("disk.img").exists() => VmState::Stopped,
            _ => VmState::Missing,
        };
        if let Ok(len) = fs::metadata(self.dir(name).join("disk.img")).map(|m| m.len()) {
            // The disk as it is; a larger quota not yet applied is applied at the next start.
            details.insert("disk_bytes".into(), len.to_string());
        }
        if let Some(k) = crate::host_key::public(&self.dir(name).join("plab")) {
            details.insert("ssh_host_key".into(), k);
        }
        Ok(VmStatus { state, details })
    }

    fn list(&self) -> Result<Vec<String>, BackendError> {
        let mut names: Vec<String> = fs::read_dir(&self.cfg.vm_dir)
            .map_err(io(self.cfg.vm_dir.display().to_string()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for n in self.runtime(&["list", "-q"])?.lines() {
            if !n.is_empty() && !names.iter().any(|m| m == n) {
                names.push(n.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn host_interface(&self, network: &crate::backend::VmNetwork) -> Option<String> {
        Some(format!("pv{}", network.index))
    }

    fn console_from(
        &self,
        name: &str,
        from: u64,
        max_bytes: u64,
    ) -> Result<crate::console::ConsoleChunk, BackendError> {
        if !self.dir(name).exists() {
            return Err(BackendError::NotFound(name.into()));
        }
        let path = self.console_path(name);
        let old = path.with_extension("log.1");
        crate::console::chunk(&path, Some(&old), self.console_rotated(name), from, max_bytes)
    }

    fn maintain(&self, name: &str) -> Result<(), BackendError> {
        self.rotate_console(name).map(|_| ())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
