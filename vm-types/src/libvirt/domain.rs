//! The libvirt domain XML of a VM: what differs between a KVM (QEMU) guest and a Xen
//! guest is decided in [`kvm`] and [`xen`]; [`domain_xml`] puts the common document
//! together. Every free string is escaped; everything else is typed.

use super::image::GuestBoot;
use super::LibvirtConfig;
use crate::backend::VmSpec;
use crate::vm_type::VmType;
use quick_xml::escape::escape;
use std::path::Path;

/// The XML namespace of the node manager's domain metadata.
pub const METADATA_NS: &str = "urn:plab:vm:1";

/// The host-side tap of VM number `index` (interface names hold 15 characters at most).
pub fn tap_name(index: u32) -> String {
    format!("pvt{index}")
}

/// Kernel arguments of the project's image besides console, root and address. Under TCG
/// every one counts: `quiet` keeps the (slow, emulated) serial console short, and
/// `cryptomgr.notests` skips the boot-time self-tests of the kernel's crypto algorithms
/// (about 0.5 s of a 10 s boot here; the algorithms themselves are unchanged).
pub const DIRECT_CMDLINE: &str = "rw quiet cryptomgr.notests";

/// The domain name of VM `name`, set apart by `scope` (see [`LibvirtConfig::scope`]).
pub fn domain_name(scope: &str, name: &str) -> String {
    match scope {
        "" => format!("plab-{name}"),
        s => format!("plab-{s}-{name}"),
    }
}

/// The parts of a domain that depend on the hypervisor.
struct Flavour {
    bus: &'static str,
    disks: (&'static str, &'static str),
    os: String,
    features: &'static str,
    devices_extra: &'static str,
    console: String,
    interface: String,
    /// The seed disk's driver.
    seed_driver: &'static str,
    /// `<readonly/>` on the seed disk, where the hypervisor can give a read-only disk.
    seed_readonly: &'static str,
}

fn xml_path(p: &Path) -> String {
    escape(p.to_string_lossy().into_owned()).into_owned()
}

fn direct_os(os_type: &str, console_root: &str, kernel: &Path, initrd: &Path, spec: &VmSpec) -> String {
    let n = &spec.network;
    format!(
        "<os>{os_type}<kernel>{}</kernel><initrd>{}</initrd><cmdline>{console_root} {DIRECT_CMDLINE} plab.ip={}/{} plab.gw={}</cmdline></os>",
        xml_path(kernel),
        xml_path(initrd),
        n.address,
        n.prefix_len,
        n.gateway
    )
}

/// A QEMU guest (KVM or TCG).
fn kvm(cfg: &LibvirtConfig, spec: &VmSpec, dir: &Path) -> Flavour {
    let os = match &cfg.image.boot {
        GuestBoot::Direct { kernel, initrd } => direct_os(
            "<type arch='x86_64' machine='pc'>hvm</type>",
            "console=ttyS0 root=/dev/vda",
            kernel,
            initrd,
            spec,
        ),
        // The image's own boot loader and kernel; cloud-init takes the address from the
        // seed's network-config.
        GuestBoot::Firmware => "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>".into(),
    };
    Flavour {
        bus: "virtio",
        disks: ("vda", "vdb"),
        os,
        // ACPI: libvirt's shutdown is the ACPI power button, which the project's image
        // (its acpid) and stock images (systemd-logind) both turn into a clean power-off.
        features: "\n  <features><acpi/></features>",
        // Entropy from the host: without it the guest's sshd waits seconds for the
        // kernel's random pool under TCG. No USB controller and no balloon, which libvirt
        // would add by default: probing them cost a TCG guest about 1.3 s of boot.
        devices_extra: "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\n    \
                        <controller type='usb' model='none'/>\n    <memballoon model='none'/>",
        console: format!(
            "<serial type='file'><source path='{}' append='on'/><target port='0'/></serial>",
            xml_path(&dir.join("console.log"))
        ),
        // The node manager attaches the tap to the bridge itself: the bridge may live in a
        // namespace libvirtd cannot see.
        interface: format!(
            "<interface type='ethernet'><target dev='{}' managed='yes'/><mac address='{}'/><model type='virtio'/></interface>",
            tap_name(spec.network.index),
            spec.network.mac()
        ),
        seed_driver: "<driver name='qemu' type='raw'/>",
        seed_readonly: "<readonly/>",
    }
}

/// A Xen guest: PVH with the project's image, HVM (hvmloader) with a stock image.
fn xen(cfg: &LibvirtConfig, spec: &VmSpec) -> Flavour {
    let hvm = cfg.image.boot == GuestBoot::Firmware;
    let os = match &cfg.image.boot {
        // A PV guest: it needs no virtualization extensions of the host (under QEMU's TCG,
        // an emulated Xen host boots PV guests about three times as fast as PVH, and
        // reliably), and the project's kernel has the PV drivers.
        GuestBoot::Direct { kernel, initrd } => direct_os(
            "<type arch='x86_64' machine='xenpv'>linux</type>",
            "console=hvc0 root=/dev/xvda",
            kernel,
            initrd,
            spec,
        ),
        GuestBoot::Firmware => "<os><type arch='x86_64' machine='xenfv'>hvm</type><loader type='rom'>/usr/lib/xen/boot/hvmloader</loader><boot dev='hd'/></os>".into(),
    };
    Flavour {
        bus: "xen",
        disks: ("xvda", "xvdb"),
        os,
        features: "",
        devices_extra: "",
        console: "<console type='pty'><target type='xen' port='0'/></console>".into(),
        // PV: Xen's QEMU disk back end refuses a read-only raw file ("Block node is
        // read-only"); the kernel's block back end (on a loop device) takes it. HVM: the
        // disks are also emulated IDE disks, which Xen's QEMU cannot make read-only
        // ("qemu-xen doesn't support read-only IDE disk drivers"), so an HVM guest's seed
        // is writable: it is the guest's own (its settings and host key), and nothing on
        // the node reads it back.
        seed_driver: if hvm { "<driver name='qemu' type='raw'/>" } else { "<driver name='phy' type='raw'/>" },
        seed_readonly: if hvm { "" } else { "<readonly/>" },
        // Xen's vif joins the bridge directly, under the name the node manager's network
        // policy and shaping expect (a vif named by Xen, `vif<domid>.0`, would be in
        // neither).
        interface: format!(
            "<interface type='bridge'><source bridge='{}'/><mac address='{}'/><target dev='{}'/></interface>",
            escape(&cfg.bridge),
            spec.network.mac(),
            tap_name(spec.network.index)
        ),
    }
}

/// The libvirt domain XML of a VM; `uuid` keeps an existing domain's identity when it is
/// redefined.
pub fn domain_xml(cfg: &LibvirtConfig, spec: &VmSpec, uuid: Option<&str>) -> String {
    let uuid = uuid.map(|u| format!("\n  <uuid>{}</uuid>", escape(u))).unwrap_or_default();
    let dir = cfg.vm_dir.join(&spec.name);
    let f = if cfg.vm_type == VmType::LinuxXenX86 { xen(cfg, spec) } else { kvm(cfg, spec, &dir) };
    let mem_kib = spec.resources.mem_limit_bytes() / 1024;
    format!(
        "<domain type='{dtype}'>
  <name>{name}</name>{uuid}
  <metadata><plab:vm xmlns:plab='{METADATA_NS}' slice='{slice}' vm_type='{vm_type}' owner='{owner}'/></metadata>
  <memory unit='KiB'>{mem_kib}</memory>
  <currentMemory unit='KiB'>{mem_kib}</currentMemory>
  <vcpu>1</vcpu>
  <cputune><shares>{shares}</shares></cputune>
  {os}{features}
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='{d0}' bus='{bus}'/></disk>
    <disk type='file' device='disk'>{seed_driver}<source file='{seed}'/><target dev='{d1}' bus='{bus}'/>{seed_readonly}</disk>
    {interface}
    {console}
    {extra}
  </devices>
</domain>
",
        dtype = escape(&cfg.domain_type),
        name = escape(domain_name(&cfg.scope, &spec.name)),
        slice = spec.slice,
        vm_type = spec.vm_type,
        owner = escape(&cfg.owner),
        shares = spec.resources.cpu_shares(),
        os = f.os,
        features = f.features,
        disk = xml_path(&dir.join("disk.qcow2")),
        seed = xml_path(&dir.join("seed.img")),
        d0 = f.disks.0,
        d1 = f.disks.1,
        bus = f.bus,
        interface = f.interface,
        console = f.console,
        extra = f.devices_extra,
        seed_driver = f.seed_driver,
        seed_readonly = f.seed_readonly,
    )
}

/// The `owner` attribute of a domain's plab metadata element, if it has one.
pub fn metadata_owner(metadata: &str) -> Option<String> {
    let i = metadata.find("owner=")? + "owner=".len();
    let quote = metadata[i..].chars().next()?;
    let rest = &metadata[i + 1..];
    let end = rest.find(quote)?;
    quick_xml::escape::unescape(&rest[..end]).ok().map(|c| c.into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn owner_is_read_back_from_metadata() {
        assert_eq!(
            super::metadata_owner("<vm xmlns='urn:plab:vm:1' slice='plc.a' owner='/var/lib/x&amp;y'/>").as_deref(),
            Some("/var/lib/x&y")
        );
        assert_eq!(super::metadata_owner("<vm slice=\"a\" owner=\"n1\"/>").as_deref(), Some("n1"));
        assert_eq!(super::metadata_owner("<vm slice='a'/>"), None);
    }
}
