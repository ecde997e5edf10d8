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
//! nat_port_base = 32768                 # VM n's outbound traffic leaves from the public address
//! nat_ports_per_vm = 256                #   with source ports nat_port_base + n * nat_ports_per_vm ..
//! vm_host_tcp_ports = []                # node services VMs may reach (TCP); anything else is dropped
//! sustained_window_secs = 86400         # sustained_rate is an average over this window (bwmon)
//! default_burst_rate = 100              # Mbps: the ceiling of a VM whose RSpec has no burst_rate
//! node_rate = 1000                      # Mbps the node's VMs share (each in each direction):
//!                                       #   base rates are guaranteed out of it
//! xen_dom0_min_available_mb = 64       # linux-xen-x86: dom0 memory a guest's back ends need
//! root_services = ["plc.audit"]         # services run as root (the auditing service) the owner
//!                                       #   may have a client certificate made for
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
    /// Node services that run as root (they capture packets, say), for which the owner
    /// may have a client certificate made (`SignCertificate` with `slice`).
    pub root_services: Vec<SliceName>,
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
    /// The first source port of the outbound NAT blocks: VM number n's connections leave
    /// the public address from ports `nat_port_base + n * nat_ports_per_vm` up to the next
    /// block, so an (address, port) seen outside names one VM without a log.
    pub nat_port_base: u16,
    /// Source ports per VM in the outbound NAT.
    pub nat_ports_per_vm: u16,
    /// TCP ports of the node's own services that VMs may reach on the bridge address; ping
    /// and replies to the node's own connections always pass, anything else is dropped.
    pub vm_host_tcp_ports: Vec<u16>,
    /// The window over which a VM's `sustained_rate` is an average: once a VM has sent (or
    /// received) `sustained_rate × window` in a window, its ceiling drops from `burst_rate`
    /// to `sustained_rate` until the window ends (PlanetLab's bwmon).
    pub sustained_window_secs: u64,
    /// The ceiling, in Mbps, of a VM whose resources carry no `burst_rate` (the
    /// specification's default RSpec has 100).
    pub default_burst_rate: u64,
    /// What the node's VMs share, in Mbps, in each direction: the root of the HTB trees,
    /// out of which each VM's `base_rate` is guaranteed and up to its `burst_rate` lent.
    pub node_rate: u64,
    /// Sets this node manager's host-wide names (VM network namespaces, cgroups, libvirt
    /// domains) apart from another's on the same host: for several nodes on one machine
    /// (a testbed). Empty on a normal node.
    pub instance: String,
    /// Every VM type is an in-memory fake: no VM is made. For measuring the control path
    /// (the slice creation service and the authorities) with many nodes on one machine.
    pub fake_backend: bool,
    /// linux-xen-x86: the memory (MiB) dom0 must have available (`MemAvailable`) before a
    /// guest is made or started; each guest's disk back end (`qemu-system-xen`) runs there.
    pub xen_dom0_min_available_mb: u64,
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
            root_services: SliceName::parse("plc.audit").into_iter().collect(),
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
            nat_port_base: 32768,
            nat_ports_per_vm: 256,
            vm_host_tcp_ports: vec![],
            sustained_window_secs: 86400,
            default_burst_rate: 100,
            node_rate: 1000,
            fake_backend: false,
            instance: String::new(),
            xen_dom0_min_available_mb: 64,
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
        if self.nat_ports_per_vm < 16 {
            anyhow::bail!("nat_ports_per_vm: {} must be 16 or more", self.nat_ports_per_vm);
        }
        if self.nat_port_base < 1024 || self.nat_vm_slots() == 0 {
            anyhow::bail!(
                "nat_port_base: {} must be 1024 or more and leave room for one block of {} ports below 65536",
                self.nat_port_base,
                self.nat_ports_per_vm
            );
        }
        if self.ssh_port_base >= self.nat_port_base {
            anyhow::bail!(
                "ssh_port_base: {} must lie below nat_port_base ({}): forwards and NAT blocks are kept apart",
                self.ssh_port_base,
                self.nat_port_base
            );
        }
        if self.default_burst_rate == 0 || self.default_burst_rate > 100_000 {
            anyhow::bail!("default_burst_rate: {} must be 1 to 100000 (Mbps)", self.default_burst_rate);
        }
        if self.node_rate == 0 || self.node_rate > 100_000 {
            anyhow::bail!("node_rate: {} must be 1 to 100000 (Mbps)", self.node_rate);
        }
        if self.sustained_window_secs == 0 {
            anyhow::bail!("sustained_window_secs: must be 1 or more");
        }
        Ok(())
    }

    /// How many VMs get an outbound NAT block.
    pub fn nat_vm_slots(&self) -> u32 {
        (65536 - u32::from(self.nat_port_base)) / u32::from(self.nat_ports_per_vm.max(1))
    }

    /// The public port that forwards to VM number `index`'s ssh, when the node has a public
    /// address and the port lies below the NAT blocks.
    pub fn ssh_port(&self, index: u32) -> Option<u16> {
        self.public_address?;
        u16::try_from(u32::from(self.ssh_port_base) + index).ok().filter(|p| *p < self.nat_port_base)
    }

    /// VM number `index`'s outbound source ports on the public address (first, last), when
    /// the node has one and the block exists.
    pub fn nat_ports(&self, index: u32) -> Option<(u16, u16)> {
        self.public_address?;
        if index >= self.nat_vm_slots() {
            return None;
        }
        let first = u32::from(self.nat_port_base) + index * u32::from(self.nat_ports_per_vm);
        let last = first + u32::from(self.nat_ports_per_vm) - 1;
        Some((u16::try_from(first).ok()?, u16::try_from(last).ok()?))
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

    #[test]
    fn nat_blocks_are_disjoint_and_lie_above_the_ssh_forwards() {
        let mut c = Config { public_address: Some(Ipv4Addr::new(192, 0, 2, 10)), ..Config::default() };
        c.validate().unwrap();
        assert_eq!(c.nat_ports(0), Some((32768, 33023)));
        assert_eq!(c.nat_ports(1), Some((33024, 33279)));
        assert_eq!(c.nat_vm_slots(), 128);
        assert_eq!(c.nat_ports(127), Some((65280, 65535)));
        assert_eq!(c.nat_ports(128), None);
        assert_eq!(c.ssh_port(5), Some(22005));
        assert_eq!(c.ssh_port(10768), None, "a forward never lands in the NAT blocks");
        c.ssh_port_base = 40000;
        assert!(c.validate().unwrap_err().to_string().contains("ssh_port_base"));
        c.ssh_port_base = 22000;
        c.nat_ports_per_vm = 8;
        assert!(c.validate().unwrap_err().to_string().contains("nat_ports_per_vm"));
        c.nat_ports_per_vm = 256;
        c.nat_port_base = 65500;
        assert!(c.validate().unwrap_err().to_string().contains("nat_port_base"));
        c.public_address = None;
        assert_eq!(c.nat_ports(0), None, "no public address, no NAT");
    }
}
