//! Node manager settings: a TOML file (`plab-nm serve --config FILE`), every key optional.
//!
//! ```toml
//! state_dir = "/var/lib/plab/nm"        # SQLite database, VM disks, per-VM sockets
//! socket = "/run/plab/nm.sock"          # the local API socket
//! owner_uids = [0]                      # callers treated as the owner (site_admin)
//! node_netns = "plab-node1"             # run the node's networking in this netns
//! bridge = "plab0"                      # node bridge VM interfaces join
//! vm_prefix = "10.213.0.0/16"           # node-private VM addresses; .1 is the bridge
//! image_dir = "/var/cache/plab/images/vserver-bookworm"
//! oci_runtime = "runc"
//! stop_timeout_secs = 30                # a clean stop may take this long before the VM is forced off
//! vm_uid_base = 1073741824              # container VM n's root is host uid vm_uid_base + n * 65536
//! lxcfs_dir = "/var/lib/lxcfs"          # container VMs' /proc/meminfo etc. from lxcfs ("" for none)
//! node_cert = "/var/lib/plab/node/node-cert.pem"   # written by plab-boot at boot
//! node_key = "/var/lib/plab/node/node.key"
//! accelerator = "auto"                  # hypervisor VM types: auto (probe), kvm or tcg
//! libvirt_uri = "qemu:///system"        # linux-kvm-x86 through libvirt
//! guest_image = "/var/cache/plab/images/guest-bookworm"   # or a cloud image file (qcow2/raw)
//! guest_dir = "/var/lib/plab/guests"    # guest disks and seeds (QEMU's user must traverse it)
//! public_address = "192.0.2.10"         # the node's address: VM n's ssh is forwarded from port
//! ssh_port_base = 22000                 #   ssh_port_base + n there (unset: no forwarding)
//!
//! [slice_uids]                          # unprivileged local services acting as a slice
//! 998 = "plc.scs"
//! ```

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use vm_types::SliceName;

/// Which accelerator hypervisor VM types get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, strum::Display)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum AcceleratorSetting {
    /// Probe whether KVM really runs stock guests here (see `vm_types::accel`).
    Auto,
    /// KVM, whatever the probe would say.
    Kvm,
    /// QEMU's TCG.
    Tcg,
}

/// `slice_uids` keys are uids written as TOML keys (strings): read them as numbers here, so
/// the rest of the program never parses them again.
fn slice_uids<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, SliceName>, D::Error> {
    let raw = BTreeMap::<String, SliceName>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            k.parse::<u32>()
                .map(|uid| (uid, v))
                .map_err(|_| serde::de::Error::custom(format!("slice_uids.{k}: the key must be a numeric uid")))
        })
        .collect()
}

/// Node manager settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the database, VM disks and per-VM sockets live.
    pub state_dir: PathBuf,
    /// The local API socket.
    pub socket: PathBuf,
    /// Uids whose connections act as the owner (site_admin). Root always does.
    pub owner_uids: Vec<u32>,
    /// Uids of local services that act as a slice (for example a slice creation service
    /// running as an unprivileged user).
    #[serde(deserialize_with = "slice_uids")]
    pub slice_uids: BTreeMap<u32, SliceName>,
    /// A network namespace (under /var/run/netns) that holds the node's networking.
    pub node_netns: Option<String>,
    /// The node bridge.
    pub bridge: String,
    /// The node-private VM prefix, `a.b.c.d/len`.
    pub vm_prefix: Prefix,
    /// The container root filesystem image.
    pub image_dir: PathBuf,
    /// The OCI runtime binary.
    pub oci_runtime: String,
    /// Seconds a stopping VM gets to stop cleanly (SIGTERM to a container, the ACPI power
    /// button of a hypervisor guest) before it is forced off. A stock cloud image's
    /// systemd may need most of it under TCG.
    pub stop_timeout_secs: u64,
    /// The first host uid (and gid) of container VMs' ranges: VM number n's ids 0..65536
    /// are host ids `vm_uid_base + n * 65536` onwards. Above every host user; on a host
    /// with several node managers (a testbed), give each its own.
    pub vm_uid_base: u32,
    /// Where lxcfs is mounted: container VMs' `/proc/meminfo`, `cpuinfo`, `uptime`, ...
    /// come from it, so they show the VM's limits and not the host's. Empty: none.
    pub lxcfs_dir: PathBuf,
    /// The node's MA-signed certificate chain (node, MA), as plab-boot writes it.
    pub node_cert: PathBuf,
    /// The node's private key, as plab-boot writes it.
    pub node_key: PathBuf,
    /// Accelerator for hypervisor VM types: `auto` probes whether KVM really runs stock
    /// guests here (see `vm_types::accel`), `kvm` or `tcg` force one.
    pub accelerator: AcceleratorSetting,
    /// libvirt connection for linux-kvm-x86.
    pub libvirt_uri: String,
    /// The image hypervisor VMs boot: the directory `images/build-guest.sh` builds (the
    /// project's image, booted directly), or a stock cloud image file, qcow2 or raw, with
    /// its own boot loader and cloud-init (see `vm_types::libvirt::GuestImage`).
    /// `guest_image_dir` is accepted as an older name.
    #[serde(alias = "guest_image_dir")]
    pub guest_image: PathBuf,
    /// The node's public address. When set, VM number n's ssh is reachable there on port
    /// `ssh_port_base + n` (nft DNAT in the node's namespace), and forwarded traffic other
    /// than those connections is not routed for VMs.
    pub public_address: Option<Ipv4Addr>,
    /// The first port of the ssh forwards (VM number n gets `ssh_port_base + n`).
    pub ssh_port_base: u16,
    /// Sets this node manager's host-wide names (VM network namespaces, cgroups, libvirt
    /// domains) apart from another's on the same host: for several nodes on one machine
    /// (a testbed). Empty on a normal node.
    pub instance: String,
    /// Every VM type is an in-memory fake: no VM is made. For measuring the control path
    /// (the slice creation service and the authorities) with many nodes on one machine.
    pub fake_backend: bool,
    /// Guest disks, seeds and console logs. Kept apart from `state_dir` (which holds the
    /// rcap table and stays private): QEMU runs as libvirt's unprivileged user and must
    /// be able to traverse this directory.
    pub guest_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            state_dir: "/var/lib/plab/nm".into(),
            socket: "/run/plab/nm.sock".into(),
            owner_uids: vec![],
            slice_uids: BTreeMap::new(),
            node_netns: None,
            bridge: "plab0".into(),
            vm_prefix: Prefix { network: Ipv4Addr::new(10, 213, 0, 0), len: 16 },
            image_dir: "/var/cache/plab/images/vserver-bookworm".into(),
            oci_runtime: "runc".into(),
            stop_timeout_secs: 30,
            vm_uid_base: 1 << 30,
            lxcfs_dir: "/var/lib/lxcfs".into(),
            node_cert: "/var/lib/plab/node/node-cert.pem".into(),
            node_key: "/var/lib/plab/node/node.key".into(),
            accelerator: AcceleratorSetting::Auto,
            libvirt_uri: "qemu:///system".into(),
            guest_image: "/var/cache/plab/images/guest-bookworm".into(),
            guest_dir: "/var/lib/plab/guests".into(),
            public_address: None,
            ssh_port_base: 22000,
            fake_backend: false,
            instance: String::new(),
        }
    }
}

/// A parsed IPv4 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

impl Prefix {
    /// Parses `a.b.c.d/len` with 8 <= len <= 30.
    pub fn parse(s: &str) -> Result<Prefix, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| format!("vm_prefix: {s:?} is not address/length"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("vm_prefix: {a:?} is not an IPv4 address"))?;
        let len: u8 = l.parse().map_err(|_| format!("vm_prefix: {l:?} is not a prefix length"))?;
        if !(8..=30).contains(&len) {
            return Err(format!("vm_prefix: length {len} must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - len);
        Ok(Prefix { network: Ipv4Addr::from(u32::from(addr) & mask), len })
    }

    /// The bridge (gateway) address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The address of VM number `index` (1-based), if the prefix has room for it.
    pub fn vm_address(&self, index: u32) -> Option<Ipv4Addr> {
        let hosts = (1u64 << (32 - self.len)) - 2; // minus network and broadcast
        let offset = index as u64 + 1; // .1 is the gateway
        (index >= 1 && offset < hosts + 1).then(|| Ipv4Addr::from(u32::from(self.network) + offset as u32))
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Prefix, String> {
        Prefix::parse(s)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        Prefix::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// Reads a TOML file; unknown keys are errors.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let cfg: Config = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.bridge.is_empty() || self.bridge.len() > 15 {
            anyhow::bail!("bridge: {:?} must be 1 to 15 characters", self.bridge);
        }
        if self.instance.len() > 24
            || !self.instance.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            anyhow::bail!("instance: {:?} must be at most 24 of a-z, 0-9 and -", self.instance);
        }
        if self.vm_uid_base < 65536 {
            anyhow::bail!(
                "vm_uid_base: {} must be 65536 or more (lower uids are the host's own users)",
                self.vm_uid_base
            );
        }
        if self.ssh_port_base < 1024 {
            anyhow::bail!(
                "ssh_port_base: {} must be 1024 or more (ports below are the node's own)",
                self.ssh_port_base
            );
        }
        Ok(())
    }

    /// The public port that forwards to VM number `index`'s ssh, when the node has a public
    /// address and the port exists.
    pub fn ssh_port(&self, index: u32) -> Option<u16> {
        self.public_address?;
        u16::try_from(u32::from(self.ssh_port_base) + index).ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefix_addresses() {
        let p = Prefix::parse("10.213.7.9/24").unwrap();
        assert_eq!(p.network.to_string(), "10.213.7.0");
        assert_eq!(p.gateway().to_string(), "10.213.7.1");
        assert_eq!(p.vm_address(1).unwrap().to_string(), "10.213.7.2");
        assert_eq!(p.vm_address(253).unwrap().to_string(), "10.213.7.254");
        assert!(p.vm_address(254).is_none());
        assert!(p.vm_address(0).is_none());
        assert!(Prefix::parse("10.0.0.0/31").is_err());
        assert!(Prefix::parse("nonsense").is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<Config>("bridge = \"x\"\nbrige = 1").is_err());
        let c: Config = toml::from_str("[slice_uids]\n998 = \"plc.scs\"").unwrap();
        assert_eq!(c.slice_uids[&998].as_str(), "plc.scs");
        c.validate().unwrap();
        let bad = toml::from_str::<Config>("[slice_uids]\nroot = \"plc.scs\"").unwrap_err();
        assert!(bad.to_string().contains("numeric uid"), "{bad}");
        let bad = toml::from_str::<Config>("[slice_uids]\n7 = \"plc.S\"").unwrap_err();
        assert!(bad.to_string().contains("plc.S"), "{bad}");
        let bad = toml::from_str::<Config>("accelerator = \"fast\"").unwrap_err();
        assert!(bad.to_string().contains("accelerator"), "{bad}");
        let bad = toml::from_str::<Config>("vm_prefix = \"10.0.0.0/31\"").unwrap_err();
        assert!(bad.to_string().contains("between 8 and 30"), "{bad}");
    }
}
