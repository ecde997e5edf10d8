//! The OCI runtime configuration (`config.json`) of a linux-vserver-x86 VM.

use crate::backend::VmSpec;
use crate::idmap::IdMap;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, LinuxSeccomp, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec,
};
use std::collections::HashSet;
use std::path::Path;

/// Capabilities of the VM's root: Podman's default set, which sshd and package installs
/// need (setuid, chroot for privilege separation, chown), and nothing that reaches the host:
/// Docker's MKNOD and NET_RAW (raw sockets forge and sniff packets on the VM's link) are not
/// in it.
pub const CAPABILITIES: [Capability; 12] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::NetBindService,
    Capability::Setfcap,
    Capability::Setgid,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysChroot,
    Capability::AuditWrite,
];

/// Most processes a VM may hold at once.
pub const PIDS_LIMIT: i64 = 4096;

/// Where NM's per-VM files appear inside the VM.
pub struct VmMounts<'a> {
    /// The VM's root filesystem (the overlay mount).
    pub rootfs: &'a Path,
    /// NM-owned files (login, keys, bootscript), mounted read-only at /etc/plab.
    pub plab_dir: &'a Path,
    /// The VM's network namespace.
    pub netns: &'a Path,
    /// Its cgroup (`/plab/<name>`, or `/plab/<scope>/<name>`).
    pub cgroup: &'a str,
    /// Its host uid/gid range: the user namespace's mapping.
    pub ids: IdMap,
    /// Where lxcfs serves its files, if the VM gets them.
    pub lxcfs: Option<&'a Path>,
}

fn bind(source: &Path, destination: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .expect("all mount fields set")
}

/// Paths masked in every VM on top of the runtime's defaults: the RAPL power meters (a
/// side channel on what other VMs compute, as are the hardware sensors), and the parts of
/// the host's `/sys` (bound in, read-only, see [`config`]) that show other VMs or hold the
/// kernel's own controls: cgroups, interfaces, block devices (their backing files name
/// other VMs), `/sys/kernel` (tracing, debugfs, securityfs) and `/sys/fs` (bpf, fuse, pstore).
pub const MASKED: &[&str] = &[
    "/sys/devices/virtual/powercap",
    "/sys/class/hwmon",
    "/sys/fs",
    "/sys/kernel",
    "/sys/class/net",
    "/sys/devices/virtual/net",
    "/sys/block",
    "/sys/class/block",
    "/sys/devices/virtual/block",
];

/// Builds the OCI configuration for a VM, with its seccomp filter.
pub fn config(spec: &VmSpec, m: &VmMounts<'_>, seccomp: &LinuxSeccomp) -> Spec {
    let caps: HashSet<Capability> = CAPABILITIES.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .expect("capability sets set");
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(vec!["/usr/bin/tini".into(), "--".into(), "/sbin/plab-init".into()])
        .env(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            format!("PLAB_SLICE={}", spec.slice),
        ])
        .cwd("/")
        // Setuid binaries work: the slice's login gets root in its VM through sudo (section
        // 4.2 gives each slice root in its VM), and that root is an unprivileged host uid.
        .no_new_privileges(false)
        .capabilities(capabilities)
        .build()
        .expect("process fields set");

    let mem = spec.resources.mem_limit_bytes() as i64;
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().expect("device rule")])
        .memory(LinuxMemoryBuilder::default().limit(mem).swap(mem).build().expect("memory"))
        .cpu(LinuxCpuBuilder::default().shares(spec.resources.cpu_shares()).build().expect("cpu"))
        .pids(LinuxPidsBuilder::default().limit(PIDS_LIMIT).build().expect("pids"))
        .build()
        .expect("resources");

    let namespaces = [
        LinuxNamespaceType::User,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build().expect("namespace"))
    .chain(std::iter::once(
        LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path(m.netns).build().expect("namespace"),
    ))
    .collect::<Vec<_>>();

    let default_linux = oci_spec::runtime::Linux::default();
    let ids = vec![LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(m.ids.host_base)
        .size(m.ids.count)
        .build()
        .expect("id mapping")];
    let linux = LinuxBuilder::default()
        .uid_mappings(ids.clone())
        .gid_mappings(ids)
        .resources(resources)
        .cgroups_path(m.cgroup.to_owned())
        .namespaces(namespaces)
        .masked_paths(
            default_linux
                .masked_paths()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .chain(MASKED.iter().map(|p| p.to_string()))
                .collect::<Vec<_>>(),
        )
        .seccomp(seccomp.clone())
        .readonly_paths(default_linux.readonly_paths().clone().unwrap_or_default())
        .build()
        .expect("linux");

    // A user namespace may mount sysfs only with a network namespace of its own; the
    // VM's belongs to the host (the node manager made it), so `/sys` is the host's,
    // bound read-only, with what would show other VMs masked (MASKED).
    let mut mounts: Vec<Mount> =
        oci_spec::runtime::get_default_mounts().into_iter().filter(|m| m.destination() != Path::new("/sys")).collect();
    // `rro`: read-only all the way down (runc 1.1, Linux 5.12), not only the top mount.
    mounts.push(bind(Path::new("/sys"), "/sys", &["rbind", "rro", "nosuid", "nodev", "noexec"]));
    if let Some(dir) = m.lxcfs {
        for f in super::LXCFS_FILES {
            mounts.push(bind(&dir.join(f), &format!("/{f}"), &["bind", "ro", "nosuid", "nodev", "noexec"]));
        }
    }
    mounts.push(bind(m.plab_dir, "/etc/plab", &["rbind", "ro", "nosuid", "nodev"]));
    if let Some(dir) = &spec.nm_socket_dir {
        mounts.push(bind(dir, "/run/plab", &["rbind", "ro", "nosuid", "nodev", "noexec"]));
    }

    let mut s = Spec::default();
    s.set_root(Some(RootBuilder::default().path(m.rootfs).readonly(false).build().expect("root")));
    s.set_process(Some(process));
    s.set_hostname(Some(spec.name.replace('_', "-")));
    s.set_mounts(Some(mounts));
    s.set_linux(Some(linux));
    s.set_annotations(Some([("org.plab.slice".to_string(), spec.slice.to_string())].into_iter().collect()));
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::backend::VmNetwork;
    use crate::resources::{Quantity, Resources};
    use crate::{SliceName, VmType};
    use serde_json::json;

    #[test]
    fn config_carries_limits_namespace_and_mounts() {
        let mut resources = Resources::spec_default();
        resources.cpu_share = Quantity::from_milli(2500);
        let spec = VmSpec {
            name: "plc_demo".into(),
            slice: SliceName::parse("plc.demo").unwrap(),
            vm_type: VmType::LinuxVserverX86,
            resources,
            keys: vec![],
            bootscript: None,
            network: VmNetwork {
                index: 1,
                address: "10.0.0.2".parse().unwrap(),
                prefix_len: 24,
                gateway: "10.0.0.1".parse().unwrap(),
            },
            nm_socket_dir: Some("/s/run".into()),
        };
        let m = VmMounts {
            rootfs: Path::new("/s/rootfs"),
            plab_dir: Path::new("/s/plab"),
            netns: Path::new("/var/run/netns/plab-plc_demo"),
            cgroup: "/plab/plc_demo",
            ids: IdMap { host_base: 1 << 30, count: 65536 },
            lxcfs: Some(Path::new("/var/lib/lxcfs")),
        };
        let seccomp = crate::vserver::seccomp::load(&CAPABILITIES).unwrap();
        let json = serde_json::to_value(config(&spec, &m, &seccomp)).unwrap();
        let r = &json["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 256 << 20);
        assert_eq!(r["cpu"]["shares"], 2560);
        assert_eq!(json["linux"]["cgroupsPath"], "/plab/plc_demo");
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().any(|n| n["type"] == "network" && n["path"] == "/var/run/netns/plab-plc_demo"));
        let mounts = json["mounts"].as_array().unwrap();
        let plab = mounts.iter().find(|m| m["destination"] == "/etc/plab").unwrap();
        assert!(plab["options"].as_array().unwrap().iter().any(|o| o == "ro"));
        assert_eq!(json["process"]["terminal"], false);
        assert_eq!(json["hostname"], "plc-demo");
        // Hardening: a user namespace whose root is the VM's host range, no raw sockets or
        // device nodes, the power meters and other VMs' cgroups masked, the seccomp filter
        // in place; sysfs is the host's, read-only.
        assert!(ns.iter().any(|n| n["type"] == "user" && n.get("path").is_none()));
        for map in ["uidMappings", "gidMappings"] {
            assert_eq!(json["linux"][map], json!([{"containerID": 0, "hostID": 1u32 << 30, "size": 65536}]));
        }
        let sys: Vec<_> = mounts.iter().filter(|m| m["destination"] == "/sys").collect();
        assert_eq!(sys.len(), 1);
        assert_eq!(sys[0]["type"], "bind");
        assert!(sys[0]["options"].as_array().unwrap().iter().any(|o| o == "rro"));
        assert!(json["linux"]["maskedPaths"].to_string().contains("\"/sys/kernel\""));
        let meminfo = mounts.iter().find(|m| m["destination"] == "/proc/meminfo").unwrap();
        assert_eq!(meminfo["source"], "/var/lib/lxcfs/proc/meminfo");
        let caps = json["process"]["capabilities"]["bounding"].to_string();
        assert!(
            !caps.contains("CAP_NET_RAW") && !caps.contains("CAP_MKNOD") && !caps.contains("CAP_SYS_ADMIN"),
            "{caps}"
        );
        assert!(json["linux"]["maskedPaths"].to_string().contains("/sys/devices/virtual/powercap"));
        assert!(json["linux"]["seccomp"]["syscalls"].to_string().contains("keyctl"));
    }
}
