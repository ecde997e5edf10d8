//! The node's network policy in nftables: who may send what on the node bridge, outbound
//! NAT with a fixed block of source ports per VM, and inbound ssh forwards.
//!
//! Two tables in the node's network namespace, written together in one `nft -f`
//! transaction whenever a VM comes or goes (so a reader never sees half a policy):
//!
//! - `bridge plab`, isolation on the wire (specification section 4.2). Every VM port
//!   (a container's veth end or a guest's tap, by name) may send only frames from its own
//!   MAC, ARP only for its own MAC and address, IPv4 only from its own address, no DHCP
//!   answers and no other protocol (IPv6 router advertisements included; the node network
//!   is IPv4 only). Frames from one VM port to another are dropped, and a VM port is sent
//!   only frames addressed to its own MAC or broadcast, so a VM sees neither another VM's
//!   unicast nor what the bridge floods. The checks run in the bridge's prerouting hook,
//!   before the bridge learns a source address, so a stolen MAC is never learned either.
//!   The rules name ports, not interface indexes: they are in force before a VM starts and
//!   hold for a tap that libvirt makes again.
//! - `ip plab`, routing for VMs. VM number n's TCP, UDP and ICMP to the outside leave from
//!   the public address with source ports (ICMP ids) in its own block
//!   (`nat_port_base + n × nat_ports_per_vm`, RFC 7422's deterministic mapping): anyone who
//!   saw a packet knows the VM from its source port alone. Other protocols are not routed.
//!   VM n's ssh is forwarded from `ssh_port_base + n`; a VM reaching another VM's forward is
//!   masqueraded behind the bridge address so that the answer comes back the same way.
//!   Traffic from a VM to the node itself passes only for ping, replies and the TCP ports
//!   in `vm_host_tcp_ports`. What a VM may not send is refused with an ICMP
//!   "administratively prohibited", so that its programs fail at once (a resolver asking
//!   the node for DNS) instead of waiting for a timeout.
//!
//! The ruleset is nft's own text, read back by `nft list table`; the typed JSON schema of
//! the `nftables` crate would be several times as long for the same rules.

use crate::config::Config;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use vm_types::host::{Cmd, Host};
use vm_types::BackendError;

/// New connections one VM may have tracked at once (outbound, to the node, forwarded):
/// past it, its new connections are dropped, and the node's conntrack table stays
/// available to the others.
pub const MAX_CONNS: u32 = 4096;

/// One VM's place in the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPort {
    /// The VM's address.
    pub address: Ipv4Addr,
    /// Its MAC.
    pub mac: String,
    /// The host-side interface on the bridge (none for a backend without one).
    pub ifname: Option<String>,
}

/// The node's network policy and the VMs it covers, by VM number.
pub struct NodeNet {
    host: Arc<dyn Host>,
    cfg: Config,
    vms: Mutex<BTreeMap<u32, VmPort>>,
}

impl NodeNet {
    /// The policy for a node with settings `cfg`.
    pub fn new(host: Arc<dyn Host>, cfg: &Config) -> NodeNet {
        NodeNet { host, cfg: cfg.clone(), vms: Mutex::new(BTreeMap::new()) }
    }

    fn vms(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, VmPort>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Both tables for `vms`, replacing any earlier ones.
    pub fn ruleset(&self, vms: &BTreeMap<u32, VmPort>) -> String {
        let br = &self.cfg.bridge;
        let mut t =
            String::from("add table bridge plab\ndelete table bridge plab\nadd table ip plab\ndelete table ip plab\n");
        // The bridge: isolation on the wire.
        let ports: Vec<(&String, &VmPort)> = vms.values().filter_map(|v| v.ifname.as_ref().map(|i| (i, v))).collect();
        let elements = |items: Vec<String>| {
            if items.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", items.join(", "))
            }
        };
        let names = elements(ports.iter().map(|(i, _)| format!("\"{i}\"")).collect());
        let macs = elements(ports.iter().map(|(i, v)| format!("\"{i}\" . {}", v.mac)).collect());
        let addrs = elements(ports.iter().map(|(i, v)| format!("\"{i}\" . {} . {}", v.mac, v.address)).collect());
        let only_own = "oifname @ports oifname . ether daddr != @macs ether daddr != ff:ff:ff:ff:ff:ff drop";
        let _ = write!(
            t,
            "table bridge plab {{\n\
             \tset ports {{ type ifname;{names} }}\n\
             \tset macs {{ type ifname . ether_addr;{macs} }}\n\
             \tset addrs {{ type ifname . ether_addr . ipv4_addr;{addrs} }}\n\
             \tchain prerouting {{ type filter hook prerouting priority -200; policy accept;\n\
             \t\tiifname {{ \"pv*\", \"vif*\" }} iifname != @ports counter drop\n\
             \t\tiifname != @ports accept\n\
             \t\tiifname . ether saddr != @macs counter drop\n\
             \t\tether type arp iifname . arp saddr ether . arp saddr ip != @addrs counter drop\n\
             \t\tether type ip iifname . ether saddr . ip saddr != @addrs counter drop\n\
             \t\tether type ip udp sport {{ 67, 68 }} counter drop\n\
             \t\tether type != {{ ip, arp }} counter drop\n\t}}\n\
             \tchain forward {{ type filter hook forward priority -200; policy accept;\n\
             \t\tiifname @ports oifname @ports counter drop\n\
             \t\t{only_own}\n\t}}\n\
             \tchain output {{ type filter hook output priority -200; policy accept;\n\
             \t\t{only_own}\n\t}}\n\
             \tchain input {{ type filter hook input priority -200; policy accept;\n\
             \t\tiifname @ports ether daddr & ff:ff:ff:ff:ff:f0 == 01:80:c2:00:00:00 counter drop\n\t}}\n\
             }}\n"
        );
        // Routing: forwards, NAT blocks, what VMs may reach on the node.
        let mut nat_rules = String::new();
        let mut nat_vms = Vec::new();
        let mut forwards = Vec::new();
        if let Some(public) = self.cfg.public_address {
            for (&n, v) in vms {
                if let Some((first, last)) = self.cfg.nat_ports(n) {
                    let _ = writeln!(
                        nat_rules,
                        "\t\tip saddr {} oifname != \"{br}\" meta l4proto {{ tcp, udp, icmp }} snat to {public}:{first}-{last}",
                        v.address
                    );
                    nat_vms.push(v.address.to_string());
                }
                if let Some(port) = self.cfg.ssh_port(n) {
                    forwards.push(format!("{port} : {} . 22", v.address));
                }
            }
        }
        let nat_vms = elements(nat_vms);
        let forwards = elements(forwards);
        let host_ports = if self.cfg.vm_host_tcp_ports.is_empty() {
            String::new()
        } else {
            let p: Vec<String> = self.cfg.vm_host_tcp_ports.iter().map(u16::to_string).collect();
            format!("\t\ttcp dport {{ {} }} accept\n", p.join(", "))
        };
        let prefix = format!("{}/{}", self.cfg.vm_prefix.network, self.cfg.vm_prefix.len);
        let dnat = match self.cfg.public_address {
            Some(public) => format!(
                "\tchain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n\
                 \t\tip daddr {public} dnat ip addr . port to tcp dport map @ssh_fwd\n\t}}\n\
                 \tchain output {{ type nat hook output priority -100; policy accept;\n\
                 \t\tip daddr {public} dnat ip addr . port to tcp dport map @ssh_fwd\n\t}}\n"
            ),
            None => String::new(),
        };
        let _ = write!(
            t,
            "table ip plab {{\n\
             \tmap ssh_fwd {{ type inet_service : ipv4_addr . inet_service;{forwards} }}\n\
             \tset nat_vms {{ type ipv4_addr;{nat_vms} }}\n\
             \tset conns {{ type ipv4_addr; flags dynamic; }}\n\
             \tchain guard {{ type filter hook prerouting priority -150; policy accept;\n\
             \t\tiifname \"{br}\" ct state new add @conns {{ ip saddr ct count over {MAX_CONNS} }} counter drop\n\t}}\n\
             \tchain leak {{ type filter hook postrouting priority 110; policy accept;\n\
             \t\toifname != \"{br}\" ip saddr {prefix} counter drop\n\t}}\n\
             {dnat}\
             \tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {prefix} oifname \"{br}\" ct status dnat masquerade\n\
             {nat_rules}\t}}\n\
             \tchain forward {{ type filter hook forward priority filter; policy accept;\n\
             \t\tct state invalid counter drop\n\
             \t\tct state established,related accept\n\
             \t\tct status dnat oifname \"{br}\" accept\n\
             \t\tiifname \"{br}\" oifname != \"{br}\" ip saddr @nat_vms meta l4proto {{ tcp, udp, icmp }} accept\n\
             \t\tiifname \"{br}\" counter reject with icmp type admin-prohibited\n\
             \t\toifname \"{br}\" counter drop\n\t}}\n\
             \tchain input {{ type filter hook input priority filter; policy accept;\n\
             \t\tiifname != \"{br}\" accept\n\
             \t\tct state established,related accept\n\
             \t\ticmp type echo-request accept\n\
             {host_ports}\
             \t\tcounter reject with icmp type admin-prohibited\n\t}}\n\
             }}\n"
        );
        t
    }

    /// Writes both tables for the VMs recorded now.
    fn write(&self, vms: &BTreeMap<u32, VmPort>) -> Result<(), BackendError> {
        self.host.run(&Cmd::new("nft").args(["-f", "-"]).input(self.ruleset(vms))).map(|_| ())
    }

    /// Does interface `dev` exist (a stopped guest has no tap)?
    pub fn link_exists(&self, dev: &str) -> bool {
        self.host.link_exists(dev)
    }

    /// Writes the policy for `vms` (at start), replacing whatever was there; turns routing
    /// on, keeps the node's own connections out of the NAT blocks (its ephemeral port
    /// range moves below `nat_port_base`, and the blocks are reserved: a source port names
    /// a VM and nothing else) and keeps the bridge from learning addresses from link-local
    /// frames (which skip the bridge's prerouting checks).
    pub fn install(&self, vms: BTreeMap<u32, VmPort>) -> Result<(), BackendError> {
        let mut held = self.vms();
        self.host.run(&Cmd::new("ip").args([
            "link",
            "set",
            &self.cfg.bridge,
            "type",
            "bridge",
            "no_linklocal_learn",
            "1",
        ]))?;
        if self.cfg.public_address.is_some() {
            let sysctl = |key: &str, value: &str| {
                std::fs::write(format!("/proc/sys/net/ipv4/{key}"), value)
                    .map_err(|e| BackendError::Io(format!("/proc/sys/net/ipv4/{key}"), e))
            };
            sysctl("ip_forward", "1")?;
            // The node's own connections take their ports below the NAT blocks.
            let base = u32::from(self.cfg.nat_port_base);
            let path = "/proc/sys/net/ipv4/ip_local_port_range";
            let range = std::fs::read_to_string(path).map_err(|e| BackendError::Io(path.into(), e))?;
            let mut r = range.split_whitespace().filter_map(|w| w.parse::<u32>().ok());
            let (lo, hi) = (r.next().unwrap_or(32768), r.next().unwrap_or(60999));
            if hi >= base {
                let lo = lo.min(base / 2).max(1024);
                sysctl("ip_local_port_range", &format!("{lo} {}", base - 1))?;
            }
            sysctl("ip_local_reserved_ports", &format!("{base}-65535"))?;
        }
        self.write(&vms)?;
        *held = vms;
        Ok(())
    }

    /// Adds (or changes) VM number `index`. Nothing changes when writing fails.
    pub fn add(&self, index: u32, port: VmPort) -> Result<(), BackendError> {
        let mut held = self.vms();
        if held.get(&index) == Some(&port) {
            return Ok(());
        }
        let mut next = held.clone();
        next.insert(index, port);
        self.write(&next)?;
        *held = next;
        Ok(())
    }

    /// Forgets the connections the kernel tracks for `address` (both directions): a VM
    /// number, address and NAT block given to the next VM must not carry the last one's
    /// flows, nor let it answer them from the same public port.
    pub fn forget_connections(&self, address: Ipv4Addr) -> Result<(), BackendError> {
        let a = address.to_string();
        for side in ["--orig-src", "--reply-src"] {
            match self.host.run(&Cmd::new("conntrack").args(["-D", side, &a])) {
                // Nothing to delete is exit status 1.
                Err(BackendError::Command { message, .. }) if message.contains("0 flow entries") => {}
                r => {
                    r?;
                }
            }
        }
        Ok(())
    }

    /// Removes VM number `index`. Idempotent.
    pub fn remove(&self, index: u32) -> Result<(), BackendError> {
        let mut held = self.vms();
        if !held.contains_key(&index) {
            return Ok(());
        }
        let mut next = held.clone();
        next.remove(&index);
        self.write(&next)?;
        *held = next;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vm_types::host::recording::RecordingHost;

    fn vm(addr: &str, ifname: Option<&str>) -> VmPort {
        let address: Ipv4Addr = addr.parse().unwrap();
        VmPort { address, mac: vm_types::backend::vm_mac(address), ifname: ifname.map(str::to_owned) }
    }

    #[test]
    fn the_ruleset_pins_each_port_to_its_vm_and_gives_each_vm_its_own_nat_block() {
        let host = Arc::new(RecordingHost::new());
        let cfg = Config { public_address: Some("192.0.2.10".parse().unwrap()), ..Config::default() };
        let net = NodeNet::new(host.clone(), &cfg);
        let vms: BTreeMap<u32, VmPort> =
            [(1, vm("10.213.0.2", Some("pv1"))), (3, vm("10.213.0.4", Some("pvt3")))].into_iter().collect();
        let text = net.ruleset(&vms);
        assert!(
            text.contains(
                "elements = { \"pv1\" . 02:00:0a:d5:00:02 . 10.213.0.2, \"pvt3\" . 02:00:0a:d5:00:04 . 10.213.0.4 }"
            ),
            "{text}"
        );
        assert!(text.contains("iifname @ports oifname @ports counter drop"), "{text}");
        assert!(text.contains("ip saddr 10.213.0.2 oifname != \"plab0\" meta l4proto { tcp, udp, icmp } snat to 192.0.2.10:33024-33279"), "{text}");
        assert!(text.contains("ip saddr 10.213.0.4 oifname != \"plab0\" meta l4proto { tcp, udp, icmp } snat to 192.0.2.10:33536-33791"), "{text}");
        assert!(text.contains("elements = { 22001 : 10.213.0.2 . 22, 22003 : 10.213.0.4 . 22 }"), "{text}");
        assert!(!text.contains("tcp dport {"), "no node service is open to VMs by default: {text}");
        let empty = net.ruleset(&BTreeMap::new());
        assert!(!empty.contains("elements"), "empty sets have no elements clause: {empty}");

        // Without a public address: isolation, but no NAT and no forwards.
        let private = NodeNet::new(host.clone(), &Config { vm_host_tcp_ports: vec![53, 80], ..Config::default() });
        let text = private.ruleset(&vms);
        assert!(text.contains("\"pv1\" . 02:00:0a:d5:00:02"), "{text}");
        assert!(!text.contains("snat to") && !text.contains("dnat ip addr"), "{text}");
        assert!(text.contains("tcp dport { 53, 80 } accept"), "{text}");
    }

    #[test]
    fn a_failed_write_changes_nothing_and_the_next_write_holds_every_vm() {
        let host = Arc::new(RecordingHost::new());
        let net = NodeNet::new(host.clone(), &Config::default());
        net.add(1, vm("10.213.0.2", Some("pv1"))).unwrap();
        host.fail("nft -f", 1, "Error: syntax");
        assert!(net.add(2, vm("10.213.0.3", Some("pv2"))).is_err());
        assert_eq!(net.vms().len(), 1, "the refused VM is not held");
        net.add(3, vm("10.213.0.4", Some("pv3"))).unwrap();
        let last = net.ruleset(&net.vms());
        assert!(last.contains("pv1") && last.contains("pv3") && !last.contains("\"pv2\""), "{last}");
        net.remove(1).unwrap();
        net.remove(1).unwrap();
        assert_eq!(net.vms().keys().copied().collect::<Vec<_>>(), [3]);
        // Forgetting a VM's connections: nothing to forget is no error, a failure is.
        host.fail(
            "conntrack -D --orig-src",
            1,
            "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.",
        );
        net.forget_connections("10.213.0.4".parse().unwrap()).unwrap();
        assert!(host.lines().iter().any(|l| l == "conntrack -D --reply-src 10.213.0.4"));
        host.fail("conntrack -D --orig-src", 1, "conntrack: Operation failed: No such file or directory");
        assert!(net.forget_connections("10.213.0.4".parse().unwrap()).is_err());
        // Adding what is already held writes nothing.
        let writes = host.lines().len();
        net.add(3, vm("10.213.0.4", Some("pv3"))).unwrap();
        assert_eq!(host.lines().len(), writes);
    }
}
