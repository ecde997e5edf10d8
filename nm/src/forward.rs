//! Inbound ssh forwarding: VM number n's sshd answers at the node's public address on port
//! `ssh_port_base + n`, so a researcher outside the node reaches every sliver with the
//! command `VmStatus` shows (`ssh -p PORT login@PUBLIC`).
//!
//! One nftables table, `ip plab`, in the node's network namespace: a map from public port
//! to VM address and port 22, used by DNAT in `prerouting` (from outside) and `output`
//! (from the node itself), and a `forward` chain that routes only those connections for
//! VMs: anything else a VM tries to send past the node, and anything routed towards a VM
//! that is not a forward, is dropped. The whole table is
//! written in one `nft -f` transaction at start; each VM adds and removes its map element.
//! The ruleset is nft's own text, small and read back by `nft list table ip plab`; the
//! typed JSON schema of the `nftables` crate would be four times as long for the same
//! three rules.

use std::net::Ipv4Addr;
use std::sync::Arc;
use vm_types::host::{Cmd, Host};
use vm_types::BackendError;

/// The node's ssh forwards.
pub struct SshForward {
    host: Arc<dyn Host>,
    public: Ipv4Addr,
    bridge: String,
}

impl SshForward {
    /// Forwards at `public`, for VMs on `bridge`.
    pub fn new(host: Arc<dyn Host>, public: Ipv4Addr, bridge: &str) -> SshForward {
        SshForward { host, public, bridge: bridge.to_owned() }
    }

    /// The whole table, with a forward for each `(port, VM address)`.
    pub fn ruleset(&self, forwards: &[(u16, Ipv4Addr)]) -> String {
        let elements: Vec<String> = forwards.iter().map(|(port, addr)| format!("{port} : {addr} . 22")).collect();
        let elements =
            if elements.is_empty() { String::new() } else { format!("elements = {{ {} }}", elements.join(", ")) };
        let (public, bridge) = (self.public, &self.bridge);
        format!(
            "add table ip plab\n\
             delete table ip plab\n\
             table ip plab {{\n\
             \tmap ssh_fwd {{\n\t\ttype inet_service : ipv4_addr . inet_service\n\t\t{elements}\n\t}}\n\
             \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tip daddr {public} dnat ip addr . port to tcp dport map @ssh_fwd\n\t}}\n\
             \tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\
             \t\tip daddr {public} dnat ip addr . port to tcp dport map @ssh_fwd\n\t}}\n\
             \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tct state established,related accept\n\
             \t\tct status dnat accept\n\
             \t\tiifname \"{bridge}\" drop\n\
             \t\toifname \"{bridge}\" drop\n\t}}\n\
             }}\n"
        )
    }

    /// Writes the table (replacing any earlier one) and turns routing on in the node's
    /// namespace.
    pub fn install(&self, forwards: &[(u16, Ipv4Addr)]) -> Result<(), BackendError> {
        self.host.run(&Cmd::new("nft").args(["-f", "-"]).input(self.ruleset(forwards)))?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| BackendError::Io("/proc/sys/net/ipv4/ip_forward".into(), e))
    }

    /// Forwards `port` to `addr`:22.
    pub fn add(&self, port: u16, addr: Ipv4Addr) -> Result<(), BackendError> {
        let element = format!("{{ {port} : {addr} . 22 }}");
        self.host.run(&Cmd::new("nft").args(["add", "element", "ip", "plab", "ssh_fwd", &element])).map(|_| ())
    }

    /// Stops forwarding `port`. Idempotent.
    pub fn remove(&self, port: u16) -> Result<(), BackendError> {
        let element = format!("{{ {port} }}");
        match self.host.run(&Cmd::new("nft").args(["delete", "element", "ip", "plab", "ssh_fwd", &element])) {
            Err(BackendError::Command { message, .. }) if message.contains("No such file or directory") => Ok(()),
            r => r.map(|_| ()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vm_types::host::recording::RecordingHost;

    #[test]
    fn the_table_holds_every_forward_and_drops_other_routed_vm_traffic() {
        let host = Arc::new(RecordingHost::new());
        let f = SshForward::new(host.clone(), "192.0.2.10".parse().unwrap(), "plab0");
        let text = f.ruleset(&[(22001, "10.213.0.2".parse().unwrap()), (22003, "10.213.0.4".parse().unwrap())]);
        assert!(text.contains("elements = { 22001 : 10.213.0.2 . 22, 22003 : 10.213.0.4 . 22 }"), "{text}");
        assert!(text.contains("ip daddr 192.0.2.10 dnat ip addr . port to tcp dport map @ssh_fwd"), "{text}");
        assert!(text.contains("iifname \"plab0\" drop"), "{text}");
        assert!(!f.ruleset(&[]).contains("elements"), "an empty map has no elements clause");
        f.add(22005, "10.213.0.6".parse().unwrap()).unwrap();
        f.remove(22005).unwrap();
        assert_eq!(
            host.lines(),
            [
                "nft add element ip plab ssh_fwd { 22005 : 10.213.0.6 . 22 }",
                "nft delete element ip plab ssh_fwd { 22005 }"
            ]
        );
        host.fail("nft delete", 1, "Error: Could not process rule: No such file or directory");
        f.remove(22005).unwrap();
    }
}
