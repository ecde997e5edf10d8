//! The exact source port the node's NAT gave each outbound connection, from the kernel's
//! connection tracking: the service listens to conntrack's new and destroy events
//! (ctnetlink, `NFNLGRP_CONNTRACK_NEW` and `_DESTROY`) in the node's namespace. Each event
//! carries the connection as the VM sent it (the original tuple) and as replies come back
//! (the reply tuple, whose destination port is the port the outside saw). A flow is stored
//! with that port only when exactly one connection of its tuple was alive during the flow
//! (a VM that reopens a tuple, a TCP SYN after a RST, gets a new port: its flow names the
//! block) and no event was lost since (the socket's buffer overflowed); otherwise, and for
//! connections made before the service started, with the VM's block of ports. A VM
//! cannot crowd out others' connections: each VM has its own cap.
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
/// `IPCTNL_MSG_CT_DELETE`.
const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// `NFNLGRP_CONNTRACK_NEW`.
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
/// `NFNLGRP_CONNTRACK_DESTROY`.
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// An ICMP echo's identifier, which the capture takes as both ports.
const CTA_PROTO_ICMP_ID: u16 = 4;
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
    let (mut src, mut dst, mut proto, mut sport, mut dport, mut icmp_id) = (None, None, None, None, None, None);
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
                        CTA_PROTO_ICMP_ID => icmp_id = port(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let (sport, dport) = match (icmp_id, sport, dport) {
        (Some(id), _, _) => (id, id),
        (None, s, d) => (s?, d?),
    };
    Some(Tuple { proto: proto?, src: src?, sport, dst: dst?, dport })
}

/// What a conntrack event says happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Made (its first packet passed the NAT).
    New,
    /// Forgotten (closed or timed out).
    Destroy,
}

/// The event, original and reply tuples of one netlink message, when it is a conntrack
/// new or destroy event of an IPv4 connection with ports (or an ICMP echo identifier).
pub fn parse_event(msg: &[u8]) -> Option<(Event, Tuple, Tuple)> {
    let nl = NetlinkBuffer::new_checked(msg).ok()?;
    let event = match nl.message_type() {
        t if t == NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW => Event::New,
        t if t == NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE => Event::Destroy,
        _ => return None,
    };
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
    Some((event, orig?, reply?))
}

/// How long an ended connection's port is remembered: longer than a flow is held after
/// its last packet (the idle timeout) before it is stored.
const KEEP_MS: i64 = 600_000;
/// How far apart the capture's clock (a packet on the VM's interface) and an event's
/// arrival may be.
const SLACK_MS: i64 = 2_000;
/// Connections remembered per VM (source address); a VM past it loses only its own.
const MAX_PER_VM: usize = 16_384;
/// Connections remembered in all; past it, the VM with the most loses its own.
const MAX_TOTAL: usize = 262_144;
/// Ports remembered per tuple (a tuple reopened, as a TCP SYN after a RST does).
const MAX_PER_TUPLE: usize = 4;
/// Times events were lost that are remembered.
const MAX_LOSSES: usize = 1024;

/// One connection of a tuple: the port the outside saw, and when it was made and ended
/// (ms since the epoch, when the event arrived).
#[derive(Debug, Clone, Copy)]
struct Conn {
    port: u16,
    start_ms: i64,
    end_ms: Option<i64>,
}

/// Outbound connections whose source port the NAT changed, from conntrack's new and
/// destroy events, by VM: what [`NatPorts::port`] answers for a flow.
#[derive(Default)]
pub struct NatPorts {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    vms: HashMap<Ipv4Addr, HashMap<Tuple, Vec<Conn>>>,
    total: usize,
    /// When events were lost (the socket's buffer overflowed): a port learnt before a loss
    /// may have been replaced by one whose event was lost.
    losses: std::collections::VecDeque<i64>,
    pruned_ms: i64,
}

impl Inner {
    /// Forgets connections that ended long ago.
    fn prune(&mut self, now_ms: i64) {
        if now_ms - self.pruned_ms < 10_000 {
            return;
        }
        self.pruned_ms = now_ms;
        let mut total = 0;
        self.vms.retain(|_, conns| {
            conns.retain(|_, cs| {
                cs.retain(|c| c.end_ms.is_none_or(|e| now_ms - e < KEEP_MS));
                !cs.is_empty()
            });
            total += conns.len();
            !conns.is_empty()
        });
        self.total = total;
    }

    /// Makes room for one more connection of `vm`: a VM at its cap, or the largest when
    /// the node is at its cap, forgets its connections (its flows then name its block).
    fn make_room(&mut self, vm: Ipv4Addr) {
        let full =
            |vms: &HashMap<Ipv4Addr, HashMap<Tuple, Vec<Conn>>>, v: &Ipv4Addr| vms.get(v).map_or(0, HashMap::len);
        if full(&self.vms, &vm) >= MAX_PER_VM {
            tracing::warn!(%vm, "more than {MAX_PER_VM} connections at once: this VM's flows name its block of ports");
            self.total -= full(&self.vms, &vm);
            self.vms.remove(&vm);
        }
        if self.total >= MAX_TOTAL {
            if let Some(largest) = self.vms.iter().max_by_key(|(_, c)| c.len()).map(|(v, _)| *v) {
                tracing::warn!(vm = %largest, "more than {MAX_TOTAL} connections on the node: the largest VM's flows name its block");
                self.total -= full(&self.vms, &largest);
                self.vms.remove(&largest);
            }
        }
    }
}

impl NatPorts {
    /// Records a new connection, if the NAT translated its source; `now_ms` is when the
    /// event arrived.
    pub fn record_new(&self, orig: Tuple, reply: Tuple, now_ms: i64) {
        // Replies come back to the port the outside saw: the reply tuple's destination.
        if orig.src == reply.dst && orig.sport == reply.dport {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.prune(now_ms);
        if !g.vms.get(&orig.src).is_some_and(|c| c.contains_key(&orig)) {
            g.make_room(orig.src);
            g.total += 1;
        }
        let conns = g.vms.entry(orig.src).or_default().entry(orig).or_default();
        if conns.len() >= MAX_PER_TUPLE {
            conns.remove(0);
        }
        conns.push(Conn { port: reply.dport, start_ms: now_ms, end_ms: None });
    }

    /// Records that a connection ended (conntrack forgot it).
    pub fn record_destroy(&self, orig: Tuple, reply: Tuple, now_ms: i64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let conns = g.vms.get_mut(&orig.src).and_then(|v| v.get_mut(&orig));
        for c in conns.into_iter().flatten().filter(|c| c.port == reply.dport && c.end_ms.is_none()) {
            c.end_ms = Some(now_ms);
        }
    }

    /// Records that events were lost at `now_ms`.
    pub fn record_loss(&self, now_ms: i64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.losses.len() >= MAX_LOSSES {
            g.losses.pop_front();
        }
        g.losses.push_back(now_ms);
    }

    /// The port the outside saw for the flow the VM sent as `orig` between `first_ms` and
    /// `last_ms`: only when exactly one port was in use for that tuple then, and no event
    /// was lost since that connection began (a lost one might have replaced it).
    pub fn port(&self, orig: &Tuple, first_ms: i64, last_ms: i64) -> Option<u16> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let conns = g.vms.get(&orig.src)?.get(orig)?;
        let live: Vec<&Conn> = conns
            .iter()
            .filter(|c| c.start_ms <= last_ms + SLACK_MS && c.end_ms.is_none_or(|e| e >= first_ms - SLACK_MS))
            .collect();
        let first = live.first()?;
        if live.iter().any(|c| c.port != first.port) {
            return None;
        }
        let since = live.iter().map(|c| c.start_ms).min().unwrap_or(first.start_ms).min(first_ms) - SLACK_MS;
        if g.losses.iter().any(|l| *l >= since && *l <= last_ms + SLACK_MS) {
            return None;
        }
        Some(first.port)
    }
}

/// Listens to conntrack's new and destroy events in this namespace until `stop`, recording
/// each translated connection in `ports`. Returns an error only when it cannot listen at
/// all (no CAP_NET_ADMIN, no conntrack in this kernel).
pub fn listen(ports: &Arc<NatPorts>, stop: &AtomicBool) -> std::io::Result<()> {
    use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
    use std::os::fd::AsFd;
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind(&SocketAddr::new(0, 1 << (NFNLGRP_CONNTRACK_NEW - 1) | 1 << (NFNLGRP_CONNTRACK_DESTROY - 1)))?;
    // A burst of connections must not overflow the buffer (past `rmem_max`: root may);
    // the timeout lets it stop.
    if nix::sys::socket::setsockopt(&socket.as_fd(), nix::sys::socket::sockopt::RcvBufForce, &(8 << 20)).is_err() {
        let _ = nix::sys::socket::setsockopt(&socket.as_fd(), nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
    }
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
                ports.record_loss(crate::capture::now_ms());
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
            match parse_event(&buf[at..(at + len).min(n)]) {
                Some((Event::New, orig, reply)) => ports.record_new(orig, reply, crate::capture::now_ms()),
                Some((Event::Destroy, orig, reply)) => ports.record_destroy(orig, reply, crate::capture::now_ms()),
                None => {}
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

    const NEW: u16 = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW;
    const DELETE: u16 = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE;

    fn out(sport: u16) -> Tuple {
        Tuple { proto: 17, src: [10, 213, 0, 2].into(), sport, dst: [198, 51, 100, 7].into(), dport: 53 }
    }

    fn back(o: Tuple, port: u16) -> Tuple {
        Tuple { proto: o.proto, src: o.dst, sport: o.dport, dst: [192, 0, 2, 10].into(), dport: port }
    }

    #[test]
    fn events_parse_and_anything_else_is_no_event() {
        let (orig, reply) = (out(40000), back(out(40000), 32900));
        let m = message(NEW, orig, reply);
        assert_eq!(parse_event(&m), Some((Event::New, orig, reply)));
        assert_eq!(parse_event(&message(DELETE, orig, reply)), Some((Event::Destroy, orig, reply)));
        assert_eq!(parse_event(&message(NFNL_SUBSYS_CTNETLINK << 8 | 1, orig, reply)), None);
        assert_eq!(parse_event(&m[..m.len() - 12]), None);
        assert_eq!(parse_event(&[0xff; 40]), None);
        assert_eq!(parse_event(&[]), None);
        // An ICMP echo: its identifier, as the capture keys it (both ports).
        let ping = Tuple { proto: 1, sport: 7, dport: 7, ..orig };
        let proto = [nla(CTA_PROTO_NUM, &[1]), nla(CTA_PROTO_ICMP_ID, &7u16.to_be_bytes())].concat();
        let ip = [nla(CTA_IP_V4_SRC, &ping.src.octets()), nla(CTA_IP_V4_DST, &ping.dst.octets())].concat();
        let icmp = nla(
            CTA_TUPLE_ORIG | 0x8000,
            &[nla(CTA_TUPLE_IP | 0x8000, &ip), nla(CTA_TUPLE_PROTO | 0x8000, &proto)].concat(),
        );
        assert_eq!(tuple(&icmp[4..]), Some(ping));
    }

    #[test]
    fn a_flow_gets_the_port_only_when_one_connection_of_its_tuple_lived_and_nothing_was_lost() {
        let p = NatPorts::default();
        let (a, b, c, d) = (out(40000), out(40001), out(40002), out(40003));
        p.record_new(a, back(a, 32900), 1_000);
        assert_eq!(p.port(&a, 1_000, 5_000), Some(32900));
        assert_eq!(p.port(&b, 1_000, 5_000), None, "no event");
        // Not translated (towards the VM network, or the node's own): nothing recorded.
        p.record_new(b, Tuple { dst: b.src, ..back(b, b.sport) }, 1_000);
        assert_eq!(p.port(&b, 1_000, 5_000), None);
        // Ended long before the flow: not it.
        p.record_destroy(a, back(a, 32900), 6_000);
        assert_eq!(p.port(&a, 1_000, 7_000), Some(32900));
        assert_eq!(p.port(&a, 60_000, 61_000), None, "a connection that ended before");
        // A tuple reopened within one flow (a SYN after a RST: a new port): the block.
        p.record_new(c, back(c, 33000), 10_000);
        p.record_destroy(c, back(c, 33000), 11_000);
        p.record_new(c, back(c, 33001), 11_000);
        assert_eq!(p.port(&c, 10_000, 12_000), None);
        assert_eq!(p.port(&c, 20_000, 21_000), Some(33001), "a later flow of the second connection");
        // Events lost while a connection lived: a replacement may have been missed.
        p.record_new(d, back(d, 33002), 30_000);
        assert_eq!(p.port(&d, 30_000, 31_000), Some(33002));
        p.record_loss(35_000);
        assert_eq!(p.port(&d, 30_000, 36_000), None);
        assert_eq!(p.port(&a, 1_000, 5_000), Some(32900), "an older flow, before the loss");
    }

    #[test]
    fn one_vm_cannot_crowd_out_another_vms_ports() {
        let p = NatPorts::default();
        let theirs = out(40000);
        p.record_new(theirs, back(theirs, 32900), 0);
        let flood = |sport: u16| Tuple { src: [10, 213, 0, 3].into(), sport, ..out(0) };
        for i in 0..(MAX_PER_VM as u32 + 10) {
            let t = Tuple { dport: (i / 60_000) as u16, ..flood((i % 60_000) as u16) };
            p.record_new(t, back(t, 33024), 1);
        }
        assert_eq!(p.port(&theirs, 0, 1), Some(32900));
        let g = p.inner.lock().unwrap();
        assert!(g.total <= MAX_PER_VM + 1, "{}", g.total);
    }
}
