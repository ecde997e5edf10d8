//! linux-kvm-x86 and linux-xen-x86 through libvirt (the `virt` crate, pinned at 0.4.3).
//!
//! Per VM, under `<vm_dir>/<name>/`: `disk.qcow2`, an overlay on the shared guest image
//! whose virtual size is `disk_quota`; `seed.img`, a cloud-init NoCloud seed (a FAT image
//! labelled `cidata`, see [`write_seed`]); `ssh_host_ed25519_key`, the VM's host key
//! ([`crate::host_key`]); `console.log`, the guest's serial output. Domains are named
//! `plab-<name>` and carry the slice in their metadata.
//!
//! Two kinds of guest image ([`GuestImage`]): the project's image (`images/build-guest.sh`),
//! booted directly from its kernel and initramfs, which reads the seed's `plab/` files;
//! or a stock cloud image (a qcow2 or raw disk with its own boot loader and cloud-init),
//! booted by the firmware from its disk and configured by cloud-init from the seed's
//! `user-data` and `network-config`.

use crate::backend::{Backend, BackendError, VmSpec, VmState, VmStatus};
use crate::host_key::HostKey;
use crate::host::run;
use crate::vm_type::VmType;
use quick_xml::escape::escape;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};
use virt::connect::Connect;
use virt::domain::Domain;

/// Settings of a libvirt backend.
#[derive(Debug, Clone)]
pub struct LibvirtConfig {
    /// Connection URI: `qemu:///system`, `xen:///system`, or `test:///default` in tests.
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
}

/// The format (`qcow2` or `raw`) and guest-visible size of a disk image: a qcow2 file
/// starts with `QFI\xfb` and holds its size big-endian at byte 24; anything else is taken
/// as raw, whose size is the file's.
pub fn disk_virtual_size(path: &Path) -> std::io::Result<(&'static str, u64)> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut head = [0u8; 32];
    let n = f.read(&mut head)?;
    if n == 32 && &head[..4] == b"QFI\xfb" {
        let mut size = [0u8; 8];
        size.copy_from_slice(&head[24..32]);
        return Ok(("qcow2", u64::from_be_bytes(size)));
    }
    Ok(("raw", f.metadata()?.len()))
}

/// How a guest image boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestBoot {
    /// The project's image: the kernel and initramfs are given to QEMU (or Xen) directly.
    Direct {
        /// Guest kernel.
        kernel: PathBuf,
        /// Guest initramfs.
        initrd: PathBuf,
    },
    /// A stock cloud image: the firmware boots the disk's own boot loader.
    Firmware,
}

/// The shared, read-only image every VM disk of one backend is an overlay on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The disk image.
    pub disk: PathBuf,
    /// Its format as qemu-img names it: `qcow2` or `raw`.
    pub format: &'static str,
    /// The disk size the guest sees, in bytes: the smallest possible `disk_quota`.
    pub virtual_size: u64,
    /// How it boots.
    pub boot: GuestBoot,
}

impl GuestImage {
    /// The project's image built by `images/build-guest.sh` in directory `dir`.
    pub fn project(dir: &Path) -> GuestImage {
        let disk = dir.join("base.qcow2");
        GuestImage {
            virtual_size: disk_virtual_size(&disk).map(|(_, n)| n).unwrap_or(0),
            disk,
            format: "qcow2",
            boot: GuestBoot::Direct { kernel: dir.join("vmlinuz"), initrd: dir.join("initrd.img") },
        }
    }

    /// The image at `path`: a directory is the project's image (it must have been built
    /// completely); a file is a stock cloud image, qcow2 or raw (told apart by the qcow2
    /// magic), that boots by itself and runs cloud-init.
    pub fn open(path: &Path) -> Result<GuestImage, BackendError> {
        let meta = fs::metadata(path).map_err(|e| {
            BackendError::Unavailable(format!(
                "guest_image {}: {e}: build the project's image with `make image`, or point guest_image at a cloud image file",
                path.display()
            ))
        })?;
        if meta.is_dir() {
            // Checked before reading the disk's size, so a half-built image is named as such.
            for f in [".plab-image", "base.qcow2", "vmlinuz", "initrd.img"].map(|f| path.join(f)) {
                if !f.exists() {
                    return Err(BackendError::Unavailable(format!(
                        "guest_image {}: {} is missing: build the image with `make image`",
                        path.display(),
                        f.display()
                    )));
                }
            }
            return Ok(GuestImage::project(path));
        }
        let (format, virtual_size) = disk_virtual_size(path).map_err(|e| {
            BackendError::Unavailable(format!("guest_image {}: not a readable disk image: {e}", path.display()))
        })?;
        Ok(GuestImage { disk: path.to_owned(), format, virtual_size, boot: GuestBoot::Firmware })
    }

    /// Makes `disk`, a qcow2 overlay on this image whose virtual size is `bytes`.
    pub fn create_overlay(&self, disk: &Path, bytes: u64) -> Result<(), BackendError> {
        let size = bytes.to_string();
        let (base, disk) = (self.disk.to_string_lossy(), disk.to_string_lossy());
        run("qemu-img", &["create", "-q", "-f", "qcow2", "-F", self.format, "-b", &base, &disk, &size]).map(|_| ())
    }
}

/// The host-side tap of VM number `index` (interface names hold 15 characters at most).
pub fn tap_name(index: u32) -> String {
    format!("pvt{index}")
}

/// Kernel arguments of the project's image besides console, root and address. Under TCG
/// every one counts: `quiet` keeps the (slow, emulated) serial console short, and
/// `cryptomgr.notests` skips the boot-time self-tests of the kernel's crypto algorithms
/// (about 0.5 s of a 10 s boot here; the algorithms themselves are unchanged).
pub const DIRECT_CMDLINE: &str = "rw quiet cryptomgr.notests";

/// The domain name of VM `name`.
pub fn domain_name(name: &str) -> String {
    format!("plab-{name}")
}

/// The libvirt domain XML of a VM; `uuid` keeps an existing domain's identity when it is
/// redefined.
pub fn domain_xml(cfg: &LibvirtConfig, spec: &VmSpec, uuid: Option<&str>) -> String {
    let uuid = uuid.map(|u| format!("\n  <uuid>{}</uuid>", escape(u))).unwrap_or_default();
    let dir = cfg.vm_dir.join(&spec.name);
    let p = |f: &str| escape(dir.join(f).to_string_lossy().into_owned()).into_owned();
    let e = |s: &Path| escape(s.to_string_lossy().into_owned()).into_owned();
    let mem_kib = spec.resources.mem_limit_bytes() / 1024;
    let mac = crate::vserver::vm_mac(spec.network.address);
    let xen = cfg.vm_type == VmType::LinuxXenX86;
    let (bus, disk0, disk1) = if xen { ("xen", "xvda", "xvdb") } else { ("virtio", "vda", "vdb") };
    let os = match &cfg.image.boot {
        GuestBoot::Direct { kernel, initrd } => {
            let (os_type, cmdline) = if xen {
                ("<type arch='x86_64' machine='xenpvh'>xenpvh</type>", "console=hvc0 root=/dev/xvda")
            } else {
                ("<type arch='x86_64' machine='pc'>hvm</type>", "console=ttyS0 root=/dev/vda")
            };
            format!(
                "<os>{os_type}<kernel>{}</kernel><initrd>{}</initrd><cmdline>{cmdline} {DIRECT_CMDLINE} plab.ip={}/{} plab.gw={}</cmdline></os>",
                e(kernel),
                e(initrd),
                spec.network.address,
                spec.network.prefix_len,
                spec.network.gateway
            )
        }
        // The image's own boot loader and kernel; cloud-init takes the address from the
        // seed's network-config.
        GuestBoot::Firmware if xen => {
            "<os><type arch='x86_64' machine='xenfv'>hvm</type><loader type='rom'>/usr/lib/xen/boot/hvmloader</loader><boot dev='hd'/></os>".to_string()
        }
        GuestBoot::Firmware => "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>".to_string(),
    };
    // Entropy from the host: without it the guest's sshd waits seconds for the kernel's
    // random pool under TCG. No USB controller and no balloon, which libvirt would add by
    // default: probing them cost a TCG guest about 1.3 s of boot.
    let rng = if xen { "" } else { "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>" };
    // ACPI: libvirt's shutdown is the ACPI power button, which the project's image (its
    // acpid) and stock images (systemd-logind) both turn into a clean power-off.
    let features = if xen { "" } else { "\n  <features><acpi/></features>" };
    let lean = if xen { "" } else { "\n    <controller type='usb' model='none'/>\n    <memballoon model='none'/>" };
    let console = if xen {
        "<console type='pty'><target type='xen' port='0'/></console>".to_string()
    } else {
        format!("<serial type='file'><source path='{}' append='on'/><target port='0'/></serial>", p("console.log"))
    };
    // KVM guests get a tap the node manager attaches to the bridge itself (the bridge may
    // live in a namespace libvirtd cannot see); Xen's vif joins the bridge directly.
    let interface = if xen {
        format!("<interface type='bridge'><source bridge='{}'/><mac address='{mac}'/></interface>", escape(&cfg.bridge))
    } else {
        format!(
            "<interface type='ethernet'><target dev='{}' managed='yes'/><mac address='{mac}'/><model type='virtio'/></interface>",
            tap_name(spec.network.index)
        )
    };
    format!(
        "<domain type='{dtype}'>
  <name>{name}</name>{uuid}
  <metadata><plab:vm xmlns:plab='urn:plab:vm:1' slice='{slice}' vm_type='{vm_type}'/></metadata>
  <memory unit='KiB'>{mem_kib}</memory>
  <currentMemory unit='KiB'>{mem_kib}</currentMemory>
  <vcpu>1</vcpu>
  <cputune><shares>{shares}</shares></cputune>
  {os}{features}
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='{disk0}' bus='{bus}'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{seed}'/><target dev='{disk1}' bus='{bus}'/><readonly/></disk>
    {interface}
    {console}
    {rng}{lean}
  </devices>
</domain>
",
        dtype = escape(&cfg.domain_type),
        name = escape(domain_name(&spec.name)),
        slice = spec.slice,
        vm_type = spec.vm_type,
        shares = spec.resources.cpu_shares(),
        disk = p("disk.qcow2"),
        seed = p("seed.img"),
    )
}

/// The cloud-init NoCloud `user-data` of a VM, for stock cloud images: the slice login
/// (no other user, no password) with the slice users' keys; the VM's host key, made by the
/// node manager, instead of keys generated in the guest; the bootscript as a per-boot
/// script (run with `sh`), so cloud-init runs it at every boot. Free text travels base64-encoded, so no
/// bootscript can break the YAML.
pub fn user_data(spec: &VmSpec, host_key: &HostKey) -> String {
    use base64::Engine;
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t.as_bytes());
    let login = spec.slice.login();
    let mut s = format!(
        "#cloud-config\nusers:\n  - name: {login}\n    shell: /bin/bash\n    lock_passwd: true\n    ssh_authorized_keys:\n"
    );
    for k in &spec.keys {
        s += &format!("      - \"{}\"\n", k.as_str().replace('\\', "\\\\").replace('"', "\\\""));
    }
    s += "disable_root: true\nssh_pwauth: false\nssh_deletekeys: true\nssh_genkeytypes: []\nssh_keys:\n  ed25519_private: |\n";
    for line in host_key.private_openssh.lines() {
        s += &format!("    {line}\n");
    }
    s += &format!("  ed25519_public: \"{}\"\n", host_key.public_openssh);
    if let Some(b) = &spec.bootscript {
        // Run with sh, as in every other VM, whether or not it starts with `#!`.
        s += &format!(
            "write_files:\n  - path: /var/lib/plab/bootscript\n    permissions: '0700'\n    encoding: b64\n    content: {}\n  - path: /var/lib/cloud/scripts/per-boot/plab-bootscript\n    permissions: '0700'\n    content: |\n      #!/bin/sh\n      exec sh /var/lib/plab/bootscript\n",
            b64(b)
        );
    }
    s
}

/// The cloud-init NoCloud `network-config` (version 2) of a VM: its address on the node
/// network and the default route, on the interface with the VM's MAC.
pub fn network_config(spec: &VmSpec) -> String {
    let n = &spec.network;
    format!(
        "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"{mac}\"\n    set-name: eth0\n    addresses: [\"{ip}/{len}\"]\n    routes:\n      - to: 0.0.0.0/0\n        via: {gw}\n",
        mac = crate::vserver::vm_mac(n.address),
        ip = n.address,
        len = n.prefix_len,
        gw = n.gateway,
    )
}

/// The NoCloud `meta-data`. The instance id changes with the seed's content, so that a
/// stock image's cloud-init applies changed keys or bootscript at the next boot (it runs
/// its per-instance steps once per instance id).
pub fn meta_data(spec: &VmSpec, user_data: &str, network_config: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new().chain_update(user_data).chain_update(network_config).finalize();
    let tag: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("instance-id: {}-{tag}\nlocal-hostname: {}\n", spec.name, spec.name.replace('_', "-"))
}

/// Disk sizes in whole 512-byte sectors, rounded down: qemu-img would round up, giving
/// the VM more than its quota.
pub fn sector_floor(bytes: u64) -> u64 {
    bytes - bytes % 512
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
    let what = what.into();
    move |e| BackendError::Io(what, e)
}

fn lv(what: &str) -> impl FnOnce(virt::error::Error) -> BackendError + '_ {
    move |e| BackendError::Command { command: format!("libvirt {what}"), message: e.to_string() }
}

/// Writes `<dir>/seed.img`: the VM's cloud-init NoCloud seed, a FAT image labelled
/// `cidata` and readable by root only, holding
/// - `meta-data`, `user-data` and `network-config` for stock cloud images (see
///   [`user_data`], [`network_config`], [`meta_data`]);
/// - `plab/` for the project's image: `login`, `keys/<login>`, `bootscript` (if any) and
///   `ssh_host_ed25519_key`, the same layout the container VMs see at `/etc/plab`.
///
/// The VM's host key is made first if it has none (kept in `<dir>`).
pub fn write_seed(d: &Path, spec: &VmSpec) -> Result<(), BackendError> {
    let host_key = crate::host_key::ensure(d, &spec.name)?;
    let stage = d.join("seed");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(stage.join("plab/keys")).map_err(io("seed"))?;
    let (user, net) = (user_data(spec, &host_key), network_config(spec));
    fs::write(stage.join("meta-data"), meta_data(spec, &user, &net)).map_err(io("meta-data"))?;
    fs::write(stage.join("user-data"), user).map_err(io("user-data"))?;
    fs::write(stage.join("network-config"), net).map_err(io("network-config"))?;
    let login = spec.slice.login();
    fs::write(stage.join("plab/login"), format!("{login}\n")).map_err(io("seed login"))?;
    let keys: String = spec.keys.iter().map(|k| format!("{}\n", k.as_str())).collect();
    fs::write(stage.join("plab/keys").join(&login), keys).map_err(io("seed keys"))?;
    if let Some(b) = &spec.bootscript {
        fs::write(stage.join("plab/bootscript"), b).map_err(io("seed bootscript"))?;
    }
    fs::write(stage.join("plab").join(crate::host_key::FILE), &host_key.private_openssh).map_err(io("seed host key"))?;
    let img = d.join("seed.img");
    let _ = fs::remove_file(&img);
    let img_s = img.to_string_lossy().into_owned();
    run("mkfs.vfat", &["-C", "-n", "CIDATA", &img_s, "2048"])?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&img, fs::Permissions::from_mode(0o600)).map_err(io("seed.img"))?;
    }
    let mut args = vec!["-i".to_string(), img_s, "-s".into()];
    for entry in ["meta-data", "user-data", "network-config", "plab"] {
        args.push(stage.join(entry).to_string_lossy().into_owned());
    }
    args.push("::/".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run("mcopy", &argv);
    let _ = fs::remove_dir_all(&stage);
    r.map(|_| ())
}

static EVENT_LOOP: Once = Once::new();

/// A VM type served by libvirt.
pub struct LibvirtBackend {
    cfg: LibvirtConfig,
    conn: Mutex<Connect>,
}

impl LibvirtBackend {
    /// Connects to `cfg.uri`. libvirt's default error printer is silenced (errors come back
    /// as values) and its event loop is registered before the first connection.
    pub fn connect(cfg: LibvirtConfig) -> Result<LibvirtBackend, BackendError> {
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
        fs::create_dir_all(&cfg.vm_dir).map_err(io(cfg.vm_dir.display().to_string()))?;
        Ok(LibvirtBackend { cfg, conn: Mutex::new(conn) })
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
        Domain::lookup_by_name(&self.conn(), &domain_name(name)).ok()
    }

    /// Moves the guest's tap into the node's namespace (when that differs from
    /// libvirtd's) and puts it on the node bridge.
    fn attach_tap(&self, index: u32) -> Result<(), BackendError> {
        let tap = tap_name(index);
        if let Some((host_ns, node_ns)) = &self.cfg.tap_move {
            let host = format!("--net={}", host_ns.display());
            run("nsenter", &[&host, "ip", "link", "set", &tap, "netns", node_ns])?;
        }
        run("ip", &["link", "set", &tap, "master", &self.cfg.bridge, "up"]).map(|_| ())
    }

    fn create_inner(&self, spec: &VmSpec) -> Result<(), BackendError> {
        let d = self.cfg.vm_dir.join(&spec.name);
        fs::create_dir_all(&d).map_err(io(d.display().to_string()))?;
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
        self.cfg.image.create_overlay(&d.join("disk.qcow2"), quota)?;
        write_seed(&d, spec)?;
        Domain::define_xml(&self.conn(), &domain_xml(&self.cfg, spec, None)).map_err(lv("define"))?;
        Ok(())
    }
}

impl Backend for LibvirtBackend {
    fn vm_type(&self) -> VmType {
        self.cfg.vm_type
    }

    fn check(&self) -> Result<(), BackendError> {
        self.conn().get_lib_version().map_err(lv("version"))?;
        for (tool, arg) in [("qemu-img", "--version"), ("mkfs.vfat", "--help"), ("mcopy", "-V")] {
            if let Err(BackendError::Unavailable(m)) = run(tool, &[arg]) {
                return Err(BackendError::Unavailable(m));
            }
        }
        Ok(())
    }

    fn create(&self, spec: &VmSpec) -> Result<(), BackendError> {
        if self.domain(&spec.name).is_some() || self.cfg.vm_dir.join(&spec.name).exists() {
            self.destroy(&spec.name)?;
        }
        let r = self.create_inner(spec);
        if r.is_err() {
            let _ = self.destroy(&spec.name);
        }
        r
    }

    fn start(&self, spec: &VmSpec) -> Result<(), BackendError> {
        let dom = self.domain(&spec.name).ok_or_else(|| BackendError::NotFound(spec.name.clone()))?;
        if dom.is_active().map_err(lv("is_active"))? {
            return Ok(());
        }
        dom.create().map_err(lv("start"))?;
        if self.cfg.vm_type == VmType::LinuxKvmX86 && !self.cfg.uri.starts_with("test:") {
            if let Err(e) = self.attach_tap(spec.network.index) {
                let _ = dom.destroy();
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
        let _ = dom.shutdown();
        let deadline = Instant::now() + self.cfg.stop_timeout;
        while Instant::now() < deadline {
            if !dom.is_active().unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
        if new_q > old_q {
            if active {
                return Err(BackendError::Invalid("disk_quota: stop the VM to grow its disk; nothing was changed".into()));
            }
            let disk = self.cfg.vm_dir.join(&new.name).join("disk.qcow2");
            run("qemu-img", &["resize", "-q", &disk.to_string_lossy(), &sector_floor(new_q).to_string()])?;
        }
        write_seed(&self.cfg.vm_dir.join(&new.name), new)?;
        let uuid = dom.get_uuid_string().map_err(lv("uuid"))?;
        Domain::define_xml(&self.conn(), &domain_xml(&self.cfg, new, Some(&uuid))).map_err(lv("define"))?;
        if active && new.resources.mem_limit != old.resources.mem_limit {
            // Live, within the maximum the guest booted with; the rest at next start.
            let _ = dom.set_memory(new.resources.mem_limit_bytes() / 1024);
        }
        Ok(())
    }

    fn status(&self, name: &str) -> Result<VmStatus, BackendError> {
        let mut details = BTreeMap::new();
        let Some(dom) = self.domain(name) else {
            return Ok(VmStatus { state: VmState::Missing, details });
        };
        let info = dom.get_info().map_err(lv("info"))?;
        details.insert("accelerator".into(), match self.cfg.domain_type.as_str() {
            "kvm" => "kvm".to_string(),
            "qemu" => "tcg".to_string(),
            other => other.to_string(),
        });
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
        let mut names: Vec<String> =
            doms.iter().filter_map(|d| d.get_name().ok()).filter_map(|n| n.strip_prefix("plab-").map(str::to_owned)).collect();
        names.sort();
        Ok(names)
    }

    fn console_log(&self, name: &str, max_bytes: u64) -> Result<String, BackendError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.cfg.vm_dir.join(name).join("console.log");
        let Ok(mut f) = fs::File::open(&path) else {
            return if self.domain(name).is_some() { Ok(String::new()) } else { Err(BackendError::NotFound(name.into())) };
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        f.seek(SeekFrom::Start(len.saturating_sub(max_bytes))).map_err(io("console.log"))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io("console.log"))?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}
