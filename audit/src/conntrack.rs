//! The exact source port the node's NAT gave each outbound connection, from the kernel's
//! connection tracking: the service listens to conntrack's "new connection" events
//! (ctnetlink, `NFNLGRP_CONNTRACK_NEW`) in the node's namespace. Each event carries the
//! connection as the VM sent it (the original tuple) and as replies come back (the reply
//! tuple, whose destination port is the port the outside saw). Flows are stored with that
//! port when the event was seen, and with the VM's block of ports otherwise (events lost
//! to a full socket buffer, a service started after the connection).
//!
//! Written here on `netlink-sys` and `netlink-packet-core`'s attribute iterator: the Rust
//! conntrack crates either only dump the table (`conntrack`) or are unmerged forks of
//! `netlink-packet-netfilter`.

use netlink_packet_core::{NetlinkBuffer, NlaBuffer, NlasIterator};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `NFNL_SUBSYS_CTNETLINK`, the high byte of a conntrack message's type.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_NEW`.
const IPCTNL_MSG_CT_NEW: u16 = 0;
/// `NFNLGRP_CONNTRACK_NEW`.
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`: flag bits of an attribute's type.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A connection's 5-tuple, as conntrack names one direction of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Protocol number (TCP and UDP only carry ports).
    pub proto: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Source port.
    pub sport: u16,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Destination port.
    pub dport: u16,
}

fn attrs(buf: &[u8]) -> impl Iterator<Item = NlaBuffer<&[u8]>> {
    NlasIterator::new(buf).map_while(Result::ok)
}

fn tuple(buf: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for a in attrs(buf) {
        match a.kind() & NLA_TYPE_MASK {
            CTA_TUPLE_IP => {
                for ip in attrs(a.value()) {
                    let v: Option<[u8; 4]> = ip.value().try_into().ok();
                    match ip.kind() & NLA_TYPE_MASK {
                        CTA_IP_V4_SRC => src = v.map(Ipv4Addr::from),
                        CTA_IP_V4_DST => dst = v.map(Ipv4Addr::from),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for p in attrs(a.value()) {
                    let port = || p.value().try_into().ok().map(u16::from_be_bytes);
                    match p.kind() & NLA_TYPE_MASK {
                        CTA_PROTO_NUM => proto = p.value().first().copied(),
                        CTA_PROTO_SRC_PORT => sport = port(),
                        CTA_PROTO_DST_PORT => dport = port(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple { proto: proto?, src: src?, sport: sport?, dst: dst?, dport: dport? })
}

/// The original and reply tuples of one netlink message, when it is a conntrack "new"
/// event of an IPv4 connection with ports.
pub fn parse_new(msg: &[u8]) -> Option<(Tuple, Tuple)> {
    let nl = NetlinkBuffer::new_checked(msg).ok()?;
    if nl.message_type() != (NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW) {
        return None;
    }
    // The netfilter header (family, version, resource id) comes first.
    let payload = nl.payload().get(4..)?;
    let (mut orig, mut reply) = (None, None);
    for a in attrs(payload) {
        match a.kind() & NLA_TYPE_MASK {
            CTA_TUPLE_ORIG => orig = tuple(a.value()),
            CTA_TUPLE_REPLY => reply = tuple(a.value()),
            _ => {}
        }
    }
    Some((orig?, reply?))
}

/// How long a connection's port is remembered after its event (or after it last named a
/// flow): longer than any flow lasts between two records (the active timeout).
const KEEP: Duration = Duration::from_secs(600);
/// The most connections remembered at once (about 40 bytes each).
const MAX_ENTRIES: usize = 1 << 20;

/// Outbound connections whose source port the NAT changed: the original tuple to the
/// port the outside saw. Two generations: one is dropped every [`KEEP`], and a lookup
/// keeps what it finds.
#[derive(Default)]
pub struct NatPorts {
    inner: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<Tuple, u16>,
    previous: HashMap<Tuple, u16>,
    since: Option<Instant>,
}

impl Generations {
    fn rotate_if_due(&mut self) {
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= KEEP || self.current.len() >= MAX_ENTRIES {
            self.previous = std::mem::take(&mut self.current);
            self.since = Some(Instant::now());
        }
    }
}

impl NatPorts {
    /// Records a new connection, if the NAT translated its source.
    pub fn record(&self, orig: Tuple, reply: Tuple) {
        // Replies come back to the port the outside saw: the reply tuple's destination.
        if orig.src == reply.dst && orig.sport == reply.dport {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.rotate_if_due();
        g.current.insert(orig, reply.dport);
    }

    /// The port the outside saw for a connection the VM sent as `orig`.
    pub fn port(&self, orig: &Tuple) -> Option<u16> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.rotate_if_due();
        if let Some(p) = g.current.get(orig) {
            return Some(*p);
        }
        let p = *g.previous.get(orig)?;
        g.current.insert(*orig, p);
        Some(p)
    }
}

/// Listens to conntrack's new-connection events in this namespace until `stop`, recording
/// each translated connection in `ports`. Returns an error only when it cannot listen at
/// all (no CAP_NET_ADMIN, no conntrack in this kernel).
pub fn listen(ports: &Arc<NatPorts>, stop: &AtomicBool) -> std::io::Result<()> {
    use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
    use std::os::fd::AsFd;
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind(&SocketAddr::new(0, 1 << (NFNLGRP_CONNTRACK_NEW - 1)))?;
    // A burst of connections must not overflow the buffer; the timeout lets it stop.
    let _ = nix::sys::socket::setsockopt(&socket.as_fd(), nix::sys::socket::sockopt::RcvBuf, &(4 << 20));
    nix::sys::socket::setsockopt(
        &socket.as_fd(),
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 200_000),
    )
    .map_err(std::io::Error::from)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut lost_warned = Instant::now() - Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                if lost_warned.elapsed() >= Duration::from_secs(60) {
                    lost_warned = Instant::now();
                    tracing::warn!(
                        "conntrack events were lost (socket buffer full): those flows name the VM's port block"
                    );
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut at = 0;
        while at < n {
            let Ok(nl) = NetlinkBuffer::new_checked(&buf[at..n]) else { break };
            let len = (nl.length() as usize).max(16);
            if let Some((orig, reply)) = parse_new(&buf[at..(at + len).min(n)]) {
                ports.record(orig, reply);
            }
            at += (len + 3) & !3;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        v.extend(kind.to_ne_bytes());
        v.extend(value);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    fn tuple_nla(kind: u16, t: Tuple) -> Vec<u8> {
        let ip = [nla(CTA_IP_V4_SRC, &t.src.octets()), nla(CTA_IP_V4_DST, &t.dst.octets())].concat();
        let proto = [
            nla(CTA_PROTO_NUM, &[t.proto]),
            nla(CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes()),
            nla(CTA_PROTO_DST_PORT, &t.dport.to_be_bytes()),
        ]
        .concat();
        nla(kind | 0x8000, &[nla(CTA_TUPLE_IP | 0x8000, &ip), nla(CTA_TUPLE_PROTO | 0x8000, &proto)].concat())
    }

    fn message(kind: u16, orig: Tuple, reply: Tuple) -> Vec<u8> {
        let body = [vec![2, 0, 0, 0], tuple_nla(CTA_TUPLE_ORIG, orig), tuple_nla(CTA_TUPLE_REPLY, reply)].concat();
        let mut m = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend(kind.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(body);
        m
    }

    #[test]
    fn a_new_events_reply_tuple_gives_the_port_the_outside_saw() {
        let orig =
            Tuple { proto: 17, src: [10, 213, 0, 2].into(), sport: 40000, dst: [198, 51, 100, 7].into(), dport: 53 };
        let reply =
            Tuple { proto: 17, src: [198, 51, 100, 7].into(), sport: 53, dst: [192, 0, 2, 10].into(), dport: 32900 };
        let m = message(NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW, orig, reply);
        assert_eq!(parse_new(&m), Some((orig, reply)));
        let ports = NatPorts::default();
        ports.record(orig, reply);
        assert_eq!(ports.port(&orig), Some(32900));
        // Not translated (the node's own, or towards the VM network): nothing recorded.
        let local = Tuple { sport: 5000, ..orig };
        ports.record(local, Tuple { dst: local.src, dport: local.sport, ..reply });
        assert_eq!(ports.port(&local), None);
        // Other messages, cut ones and rubbish are no events.
        assert_eq!(parse_new(&message(NFNL_SUBSYS_CTNETLINK << 8 | 2, orig, reply)), None);
        assert_eq!(parse_new(&m[..m.len() - 12]), None);
        assert_eq!(parse_new(&[0xff; 40]), None);
        assert_eq!(parse_new(&[]), None);
    }
}
