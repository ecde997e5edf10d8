//! linux-kvm-x86 and linux-xen-x86 through libvirt (the `virt` crate, pinned at 0.4.3).
//!
//! Per VM, under `<vm_dir>/<name>/` (0711: QEMU's user must traverse it, nobody may list
//! it): `disk.qcow2` (0600), an overlay on the shared guest image whose virtual size is
//! `disk_quota`; `seed.img` (0600), a cloud-init NoCloud seed ([`seed`]);
//! `ssh_host_ed25519_key` (0600), the VM's host key ([`crate::host_key`]); `console.log`,
//! the guest's serial output. Domains are named `plab-<name>` and carry the slice and
//! their owner (the node manager's guest directory) in their metadata, so a node manager
//! only ever lists, and cleans, its own domains.
//!
//! | module | what |
//! |---|---|
//! | [`image`] | the guest image and disk overlays |
//! | [`domain`] | domain XML, KVM and Xen |
//! | [`seed`] | the cloud-init seed |

pub mod domain;
pub mod image;
pub mod seed;

pub use domain::{domain_name, domain_xml, tap_name, DIRECT_CMDLINE};
pub use image::{disk_virtual_size, sector_floor, xen_pv_kernel, GuestBoot, GuestImage};
pub use seed::{meta_data, network_config, user_data, write_seed};

use crate::backend::{Backend, BackendError, VmSpec, VmState, VmStatus};
use crate::host::{Cmd, Host};
use crate::vm_type::VmType;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};
use virt::connect::Connect;
use virt::domain::Domain;

/// Settings of a libvirt backend.
#[derive(Debug, Clone)]
pub struct LibvirtConfig {
    /// Connection URI: `qemu:///system`, `xen:///system`, or a `test:///` URI in tests.
    pub uri: String,
    /// The VM type served: linux-kvm-x86 or linux-xen-x86.
    pub vm_type: VmType,
    /// Domain type: `kvm`, `qemu` (TCG) or `xen`.
    pub domain_type: String,
    /// Where per-VM files live.
    pub vm_dir: PathBuf,
    /// The guest image VM disks are overlays on.
    pub image: GuestImage,
    /// The node bridge.
    pub bridge: String,
    /// How long `stop` waits for a clean shutdown before forcing the domain off.
    pub stop_timeout: Duration,
    /// When the node's network lives in a namespace other than libvirtd's: the path of
    /// libvirtd's (the host's) network namespace and the node's namespace name. The
    /// guest's tap, which libvirt makes on the host, is moved into the node's namespace.
    pub tap_move: Option<(PathBuf, String)>,
    /// Who owns the domains this backend makes (written in their metadata); by default
    /// the VM directory's path, unique per node manager.
    pub owner: String,
    /// Set apart this node manager's domain names from another's on the same libvirtd
    /// (several nodes on one machine); empty on a host with one node manager.
    pub scope: String,
    /// linux-xen-x86: the memory, in MiB, dom0 must have available before a guest is made
    /// or started (each guest's disk back end, `qemu-system-xen`, runs in dom0).
    pub dom0_min_available_mb: u64,
}

impl LibvirtConfig {
    /// The owner tag for a VM directory.
    pub fn owner_of(vm_dir: &Path) -> String {
        vm_dir.to_string_lossy().into_owned()
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
    let what = what.into();
    move |e| BackendError::Io(what, e)
}

fn lv(what: &str) -> impl FnOnce(virt::error::Error) -> BackendError + '_ {
    move |e| BackendError::Command { command: format!("libvirt {what}"), message: e.to_string() }
}

/// Whether libvirt's QEMU user (`libvirt-qemu`, in group `kvm` on Debian) can open `kvm`
/// (`/dev/kvm`). When it cannot, libvirt finds KVM usable when it probes QEMU as root, then
/// unusable for QEMU's user, and probes QEMU again at every call: about 36 s per domain
/// start. The error says what to run; Debian's udev rule does the same on a normal host.
pub fn qemu_user_can_open_kvm(kvm: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = fs::metadata(kvm) else { return Ok(()) };
    let Ok(Some(user)) = nix::unistd::User::from_name("libvirt-qemu") else { return Ok(()) };
    let name = std::ffi::CString::new("libvirt-qemu").map_err(|e| e.to_string())?;
    let groups = nix::unistd::getgrouplist(&name, user.gid).unwrap_or_default();
    let mode = meta.permissions().mode();
    let can = (meta.uid() == user.uid.as_raw() && mode & 0o600 == 0o600)
        || (groups.iter().any(|g| g.as_raw() == meta.gid()) && mode & 0o060 == 0o060)
        || mode & 0o006 == 0o006;
    if can {
        return Ok(());
    }
    Err(format!(
        "libvirt's QEMU user (libvirt-qemu) cannot open {} (mode {:o}, uid {}, gid {}), so libvirt probes QEMU again at every call \
         (about 36 s per VM start); fix it as Debian's udev rule does: chgrp kvm {0} && chmod 0660 {0}",
        kvm.display(),
        mode & 0o7777,
        meta.uid(),
        meta.gid()
    ))
}

/// Whether libxl balloons dom0 down to make room for guests: xl.conf's `autoballoon`
/// (`on`/`1`, `off`/`0`, or `auto`, the default: on unless Xen's command line fixes dom0's
/// memory with `dom0_mem=`). When Xen's command line cannot be read, taken as on (libxl
/// decides).
fn autoballoon(xl_conf: Option<&str>, xen_cmdline: Option<&str>) -> bool {
    let setting = xl_conf.and_then(|c| {
        c.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter_map(|l| l.strip_prefix("autoballoon"))
            .filter_map(|r| r.trim_start().strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .next_back()
    });
    match setting.as_deref() {
        Some("on" | "1") => true,
        Some("off" | "0") => false,
        _ => xen_cmdline.is_none_or(|c| !c.split_whitespace().any(|w| w.starts_with("dom0_mem="))),
    }
}

/// `MemAvailable` of this host (dom0 on a Xen host), in MiB.
fn dom0_available_mb() -> std::io::Result<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no MemAvailable line"))
}

static EVENT_LOOP: Once = Once::new();

/// A VM type served by libvirt.
pub struct LibvirtBackend {
    cfg: LibvirtConfig,
    conn: Mutex<Connect>,
    host: Arc<dyn Host>,
    /// linux-xen-x86: the Xen host's memory in MiB (it does not change), and whether
    /// libxl balloons dom0 down to make room for a guest (then Xen's free memory is not
    /// what a guest can have, and libxl decides).
    xen: Option<(Option<u64>, bool)>,
    /// Held from a Xen guest's memory check until Xen has given it the memory, so two
    /// starts cannot both count the same free memory.
    starting: Mutex<()>,
}

impl LibvirtBackend {
    /// Connects to `cfg.uri`. libvirt's default error printer is silenced (errors come back
    /// as values) and its event loop is registered before the first connection.
    pub fn connect(cfg: LibvirtConfig, host: Arc<dyn Host>) -> Result<LibvirtBackend, BackendError> {
        // Registered before the first connection and run for the life of the process:
        // without a running loop libvirt cannot answer keepalives, and the daemon drops
        // an idle connection.
        EVENT_LOOP.call_once(|| {
            if virt::event::event_register_default_impl().is_ok() {
                let _ = std::thread::Builder::new().name("libvirt-events".into()).spawn(|| loop {
                    if virt::event::event_run_default_impl().is_err() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
            }
        });
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(&cfg.uri)).map_err(|e| {
            BackendError::Unavailable(format!(
                "libvirt at {} does not answer ({e}): start virtlogd and libvirtd (`libvirtd -d`), or install libvirt-daemon",
                cfg.uri
            ))
        })?;
        crate::files::private_dir(&cfg.vm_dir, 0o711).map_err(io(cfg.vm_dir.display().to_string()))?;
        let xen = (cfg.vm_type == VmType::LinuxXenX86).then(|| {
            let memory = conn.get_node_info().ok().map(|i| i.memory / 1024);
            let xl_conf = fs::read_to_string("/etc/xen/xl.conf").ok();
            let cmdline = host.run(&Cmd::new("xl").arg("info")).ok().and_then(|info| {
                info.lines().find_map(|l| {
                    l.strip_prefix("xen_commandline").map(|r| r.trim_start_matches([' ', ':']).to_owned())
                })
            });
            (memory, autoballoon(xl_conf.as_deref(), cmdline.as_deref()))
        });
        Ok(LibvirtBackend { cfg, conn: Mutex::new(conn), host, xen, starting: Mutex::new(()) })
    }

    /// The connection, opened again if libvirtd closed it (a daemon restart).
    fn conn(&self) -> std::sync::MutexGuard<'_, Connect> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if !c.is_alive().unwrap_or(false) {
            match Connect::open(Some(&self.cfg.uri)) {
                Ok(fresh) => *c = fresh,
                Err(e) => tracing::warn!(uri = %self.cfg.uri, "libvirt connection lost and not reopened: {e}"),
            }
        }
        c
    }

    fn domain(&self, name: &str) -> Option<Domain> {
        Domain::lookup_by_name(&self.conn(), &domain_name(&self.cfg.scope, name)).ok()
    }

    /// Moves the guest's tap into the node's namespace (when that differs from
    /// libvirtd's) and puts it on the node bridge.
    fn attach_tap(&self, index: u32) -> Result<(), BackendError> {
        let tap = tap_name(index);
        if let Some((host_ns, node_ns)) = &self.cfg.tap_move {
            self.host.move_link(&tap, host_ns, node_ns)?;
        }
        self.host.enslave(&tap, &self.cfg.bridge)
    }

    fn create_inner(&self, spec: &VmSpec) -> Result<(), BackendError> {
        if self.cfg.vm_type == VmType::LinuxXenX86 {
            self.xen_kernel()?;
            self.xen_room(spec)?;
        }
        let d = self.cfg.vm_dir.join(&spec.name);
        crate::files::private_dir(&d, 0o711).map_err(io(d.display().to_string()))?;
        if !self.cfg.image.disk.exists() {
            return Err(BackendError::Unavailable(format!(
                "the guest image {} is missing: build it with `make image`, or set guest_image",
                self.cfg.image.disk.display()
            )));
        }
        let quota = sector_floor(spec.resources.disk_quota_bytes());
        if quota < self.cfg.image.virtual_size {
            return Err(BackendError::Invalid(format!(
                "disk_quota: {} bytes is smaller than the guest image ({} bytes, {}); ask for at least that much",
                quota,
                self.cfg.image.virtual_size,
                self.cfg.image.disk.display()
            )));
        }
        self.cfg.image.create_overlay(&*self.host, &d.join("disk.qcow2"), quota)?;
        write_seed(&*self.host, &d, spec)?;
        Domain::define_xml(&self.conn(), &domain_xml(&self.cfg, spec, None)).map_err(lv("define"))?;
        Ok(())
    }

    /// linux-xen-x86 boots the project's image PV: its kernel must have Xen's PV entry.
    fn xen_kernel(&self) -> Result<(), BackendError> {
        match &self.cfg.image.boot {
            GuestBoot::Direct { kernel, .. } => xen_pv_kernel(kernel),
            GuestBoot::Firmware => Ok(()),
        }
    }

    /// Whether a Xen guest of `spec`'s memory fits now: Xen must have the memory free
    /// (a Xen guest's memory is its own, never overcommitted), and dom0 enough for the
    /// guest's back ends. Checked before anything is made or started, so a guest that
    /// does not fit leaves nothing behind and the error says what to change.
    fn xen_room(&self, spec: &VmSpec) -> Result<(), BackendError> {
        const MIB: u64 = 1 << 20;
        let want = spec.resources.mem_limit_bytes();
        // libvirt's Xen driver says; where a driver cannot (libvirt's test driver), or
        // where libxl balloons dom0 down for guests, Xen itself decides when it starts.
        let free = if self.xen.is_some_and(|(_, balloon)| balloon) {
            u64::MAX
        } else {
            self.conn().get_free_memory().unwrap_or_else(|e| {
                tracing::warn!(uri = %self.cfg.uri, "libvirt does not say how much memory is free: {e}");
                u64::MAX
            })
        };
        if want > free {
            return Err(BackendError::Invalid(format!(
                "mem_limit: VM {} needs {} MiB but the Xen host has {} MiB free (`xl info` free_memory): \
                 stop or shrink other guests, ask for less, or give the host more memory",
                spec.name,
                want / MIB,
                free / MIB
            )));
        }
        let available = dom0_available_mb().map_err(io("/proc/meminfo"))?;
        if available < self.cfg.dom0_min_available_mb {
            return Err(BackendError::Unavailable(format!(
                "dom0 has {available} MiB of memory available, under the {} MiB (dom0_min_available_mb) a Xen \
                 guest's back ends need there (its disk's qemu-system-xen runs in dom0): give dom0 more memory \
                 (Xen's dom0_mem= boot option) or stop other guests",
                self.cfg.dom0_min_available_mb
            )));
        }
        Ok(())
    }

    /// Is this domain one of ours?
    fn owned(&self, dom: &Domain) -> bool {
        dom.get_metadata(2 /* VIR_DOMAIN_METADATA_ELEMENT */, Some(domain::METADATA_NS), 0)
            .ok()
            .and_then(|m| domain::metadata_owner(&m))
            .is_some_and(|o| o == self.cfg.owner)
    }
}

impl Backend for LibvirtBackend {
    fn vm_type(&self) -> VmType {
        self.cfg.vm_type
    }

    fn check(&self) -> Result<(), BackendError> {
        self.conn().get_lib_version().map_err(lv("version"))?;
        if self.cfg.vm_type == VmType::LinuxXenX86 {
            self.xen_kernel()?;
        }
        for (tool, arg) in [("qemu-img", "--version"), ("mkfs.vfat", "--help"), ("mcopy", "-V")] {
            if let Err(BackendError::Unavailable(m)) = self.host.run(&Cmd::new(tool).arg(arg)) {
                return Err(BackendError::Unavailable(m));
            }
        }
        Ok(())
    }

    fn create(&self, spec: &VmSpec) -> Result<(), BackendError> {
        if self.domain(&spec.name).is_some() || self.cfg.vm_dir.join(&spec.name).exists() {
            self.destroy(&spec.name)?;
        }
        crate::backend::create_or_undo(&spec.name, || self.create_inner(spec), || self.destroy(&spec.name))
    }

    fn start(&self, spec: &VmSpec) -> Result<(), BackendError> {
        let dom = self.domain(&spec.name).ok_or_else(|| BackendError::NotFound(spec.name.clone()))?;
        if dom.is_active().map_err(lv("is_active"))? {
            return Ok(());
        }
        let _one_at_a_time =
            (self.cfg.vm_type == VmType::LinuxXenX86).then(|| self.starting.lock().unwrap_or_else(|p| p.into_inner()));
        if self.cfg.vm_type == VmType::LinuxXenX86 {
            self.xen_room(spec)?;
        }
        dom.create().map_err(lv("start"))?;
        if self.cfg.vm_type == VmType::LinuxKvmX86 {
            if let Err(e) = self.attach_tap(spec.network.index) {
                if let Err(de) = dom.destroy() {
                    tracing::warn!(vm = %spec.name, "stopping a guest whose tap could not be attached: {de}");
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn stop(&self, name: &str) -> Result<(), BackendError> {
        let Some(dom) = self.domain(name) else { return Ok(()) };
        if !dom.is_active().map_err(lv("is_active"))? {
            return Ok(());
        }
        if let Err(e) = dom.shutdown() {
            tracing::debug!(vm = name, "ACPI shutdown request: {e}");
        }
        let deadline = Instant::now() + self.cfg.stop_timeout;
        while Instant::now() < deadline {
            if !dom.is_active().unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(vm = name, "no clean shutdown within {:?}: forcing the guest off", self.cfg.stop_timeout);
        dom.destroy().map_err(lv("destroy"))
    }

    fn destroy(&self, name: &str) -> Result<(), BackendError> {
        if let Some(dom) = self.domain(name) {
            if dom.is_active().unwrap_or(false) {
                dom.destroy().map_err(lv("destroy"))?;
            }
            dom.undefine().map_err(lv("undefine"))?;
        }
        let d = self.cfg.vm_dir.join(name);
        if d.exists() {
            fs::remove_dir_all(&d).map_err(io(d.display().to_string()))?;
        }
        Ok(())
    }

    fn update(&self, old: &VmSpec, new: &VmSpec) -> Result<(), BackendError> {
        let dom = self.domain(&new.name).ok_or_else(|| BackendError::NotFound(new.name.clone()))?;
        let active = dom.is_active().map_err(lv("is_active"))?;
        let (old_q, new_q) = (old.resources.disk_quota_bytes(), new.resources.disk_quota_bytes());
        if new_q < old_q {
            return Err(BackendError::Invalid("disk_quota: a VM disk cannot shrink".into()));
        }
        if new_q > old_q && active {
            return Err(BackendError::Invalid("disk_quota: stop the VM to grow its disk; nothing was changed".into()));
        }
        let d = self.cfg.vm_dir.join(&new.name);
        write_seed(&*self.host, &d, new)?;
        if new_q > old_q {
            if let Err(e) = image::grow(&*self.host, &d.join("disk.qcow2"), new_q) {
                // Leave the VM as it was.
                let _ = write_seed(&*self.host, &d, old);
                return Err(e);
            }
        }
        let uuid = dom.get_uuid_string().map_err(lv("uuid"))?;
        Domain::define_xml(&self.conn(), &domain_xml(&self.cfg, new, Some(&uuid))).map_err(lv("define"))?;
        if active && new.resources.mem_limit != old.resources.mem_limit {
            // Live, within the maximum the guest booted with; the rest at next start.
            if let Err(e) = dom.set_memory(new.resources.mem_limit_bytes() / 1024) {
                tracing::warn!(vm = %new.name, "the new memory limit applies at the next start: {e}");
            }
        }
        Ok(())
    }

    fn status(&self, name: &str) -> Result<VmStatus, BackendError> {
        let mut details = BTreeMap::new();
        let Some(dom) = self.domain(name) else {
            return Ok(VmStatus { state: VmState::Missing, details });
        };
        let info = dom.get_info().map_err(lv("info"))?;
        // What libvirt actually runs the guest with: its live domain XML's type.
        if let Ok(xml) = dom.get_xml_desc(0) {
            if let Some(t) = xml.split("<domain type='").nth(1).and_then(|r| r.split('\'').next()) {
                details.insert("domain_type".into(), t.to_owned());
            }
        }
        details.insert(
            "accelerator".into(),
            match self.cfg.domain_type.as_str() {
                "kvm" => "kvm".to_string(),
                "qemu" => "tcg".to_string(),
                other => other.to_string(),
            },
        );
        details.insert("memory_kib".into(), info.memory.to_string());
        if let Some(k) = crate::host_key::public(&self.cfg.vm_dir.join(name)) {
            details.insert("ssh_host_key".into(), k);
        }
        // virDomainState: 1 running, 2 blocked, 3 paused; 4 shutting down; 5 shut off.
        let state = match info.state {
            1..=4 => VmState::Running,
            _ => VmState::Stopped,
        };
        Ok(VmStatus { state, details })
    }

    fn list(&self) -> Result<Vec<String>, BackendError> {
        let doms = self.conn().list_all_domains(0).map_err(lv("list"))?;
        let mut names: Vec<String> = doms
            .iter()
            .filter(|d| self.owned(d))
            .filter_map(|d| d.get_name().ok())
            .filter_map(|n| n.strip_prefix(&domain_name(&self.cfg.scope, "")).map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    fn memory_mb(&self) -> Option<u64> {
        // A Xen host's memory, not dom0's (where the node manager runs); KVM guests share
        // the node manager's host.
        self.xen.and_then(|(memory, _)| memory)
    }

    fn host_interface(&self, network: &crate::backend::VmNetwork) -> Option<String> {
        Some(tap_name(network.index))
    }

    fn console_from(
        &self,
        name: &str,
        from: u64,
        max_bytes: u64,
    ) -> Result<crate::console::ConsoleChunk, BackendError> {
        let path = self.cfg.vm_dir.join(name).join("console.log");
        if !path.exists() && self.domain(name).is_none() {
            return Err(BackendError::NotFound(name.into()));
        }
        crate::console::chunk(&path, None, 0, from, max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::autoballoon;

    #[test]
    fn libxl_balloons_dom0_unless_told_not_to_or_dom0s_memory_is_fixed() {
        let fixed = Some("placeholder=1 dom0_mem=768M,max:768M loglvl=all");
        assert!(!autoballoon(None, fixed), "auto, with dom0_mem: off");
        assert!(autoballoon(None, Some("console=com1")), "auto, without dom0_mem: on");
        assert!(autoballoon(None, None), "unknown: libxl decides");
        assert!(autoballoon(Some("autoballoon=\"on\"\n"), fixed));
        assert!(!autoballoon(Some("# autoballoon=\"on\"\nautoballoon = \"off\"\n"), None));
        assert!(!autoballoon(Some("autoballoon=0"), Some("console=com1")));
        assert!(!autoballoon(Some("#autoballoon=\"on\"\n"), fixed), "a comment is no setting");
        assert!(!autoballoon(Some("autoballoon=\"auto\""), fixed));
    }
}
