//! The node's VMs as the node manager records them: which interface each one has, its
//! slice and the people responsible (the comments of the slice users' ssh keys, which
//! name them), and its place behind the node's NAT.

use crate::store::VmMeta;
use serde_json::Value;
use std::net::Ipv4Addr;

/// The most users a flow names.
pub const MAX_USERS: usize = 16;
/// The longest user name kept, in characters.
pub const MAX_USER_CHARS: usize = 64;
/// ... and in bytes (what the archive takes of a name).
pub const MAX_USER_BYTES: usize = 255;

/// A user name as a flow keeps it: at most [`MAX_USER_CHARS`] characters and
/// [`MAX_USER_BYTES`] bytes, cut on a character boundary.
pub fn cut_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().take(MAX_USER_CHARS) {
        if out.len() + c.len_utf8() > MAX_USER_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

/// The people responsible for a VM, from its RSpec's keys (their comments).
pub fn users_of(rspec_xml: &str) -> Vec<String> {
    let Ok(r) = vm_types::RSpec::from_xml(rspec_xml) else { return vec![] };
    let vm_types::RSpecClass::Slice(s) = r.class else { return vec![] };
    let mut users: Vec<String> =
        s.keys.iter().filter_map(|k| k.as_str().split_whitespace().nth(2)).map(cut_name).collect();
    users.sort();
    users.dedup();
    // A slice chooses its keys' comments: a few short names, so that no slice can make
    // its flows too big to archive.
    users.truncate(MAX_USERS);
    users
}

fn nat_block(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `address/length`, as `NodeInfo` gives `vm_prefix`.
pub fn prefix(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = s.split_once('/')?;
    let len: u8 = l.parse().ok()?;
    (len <= 32).then_some((a.parse().ok()?, len))
}

/// The running VMs with a host interface, from a `ListVMs` answer, on a node whose public
/// address is `public` and whose VM network is `vm_net`.
pub fn from_list(list: &Value, public: Option<Ipv4Addr>, vm_net: Option<(Ipv4Addr, u8)>) -> Vec<VmMeta> {
    let Some(vms) = list["vms"].as_array() else { return vec![] };
    vms.iter()
        .filter(|v| v["state"] == "running")
        .filter_map(|v| {
            Some(VmMeta {
                vm: v["vm"].as_str()?.to_owned(),
                slice: v["slice"].as_str()?.to_owned(),
                users: users_of(v["rspec"].as_str().unwrap_or("")),
                iface: v["details"]["interface"].as_str()?.to_owned(),
                vm_addr: v["address"].as_str()?.parse().ok()?,
                public_addr: public,
                nat_ports: v["nat_ports"].as_str().and_then(nat_block),
                vm_net,
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn running_vms_with_an_interface_become_capture_targets() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINvd4JWqGILryt7c7j2YX8GNJTHiRXgCbcOQj+vURAyx alice@example.org";
        let rspec = format!(r#"<VServerSlice name="plc.a"><resources cpu_share="1"/><key>{key}</key></VServerSlice>"#);
        let list = serde_json::json!({"vms": [
            {"vm": "plc_a", "slice": "plc.a", "address": "10.213.0.2", "state": "running", "rspec": rspec,
             "nat_ports": "32768-33023", "details": {"interface": "pv1"}},
            {"vm": "plc_b", "slice": "plc.b", "address": "10.213.0.3", "state": "stopped", "details": {"interface": "pv2"}},
            {"vm": "plc_c", "slice": "plc.c", "address": "10.213.0.4", "state": "running", "details": {}},
        ]});
        let got = from_list(&list, Some([192, 0, 2, 10].into()), prefix("10.213.0.0/16"));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].users, ["alice@example.org"]);
        assert_eq!((got[0].iface.as_str(), got[0].nat_ports), ("pv1", Some((32768, 33023))));
        assert!(from_list(&serde_json::json!({"oops": 1}), None, None).is_empty());
        // Out through the NAT: anything but the VM network and the node itself.
        let a = &got[0];
        assert!(a.natted([10, 77, 0, 2].into()) && a.natted([198, 51, 100, 7].into()));
        assert!(!a.natted([10, 213, 0, 1].into()) && !a.natted([10, 213, 9, 9].into()));
        assert!(!a.natted([192, 0, 2, 10].into()), "the node's own public address");
        assert_eq!((prefix("10.213.0.0/33"), prefix("x/8")), (None, None));
        assert!(users_of("<not xml").is_empty());
        // Four-byte characters: cut by bytes too, on a character boundary.
        let wide = cut_name(&"\u{1F600}".repeat(64));
        assert!(wide.len() <= MAX_USER_BYTES && wide.chars().count() == MAX_USER_BYTES / 4, "{}", wide.len());
    }
}
