//! Flows: packets decoded into 5-tuples and counted, with idle and active timeouts.
//!
//! A flow is keyed by (protocol, source, source port, destination, destination port) as
//! seen on the VM's interface (ICMP: the identifier of echo messages as both ports, 0 for
//! other types). It carries its first and last time, bytes (IP length), packets and the
//! OR of the TCP flags seen. A flow ends when it has been idle for `idle`, or has run for
//! `active` (then a new record starts, as NetFlow/IPFIX meters do).

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// IP protocol numbers the auditing service names.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// ICMP.
pub const ICMP: u8 = 1;

pub use plab_authority::flows::{Flow, FlowKey};

/// One decoded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Its flow.
    pub key: FlowKey,
    /// IP total length (bytes on the wire above the link layer).
    pub bytes: u64,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
}

/// Decodes an Ethernet frame captured with only its first bytes (the headers): `None`
/// for what is not IPv4 or whose headers are malformed or cut short (the auditing service
/// never panics on what a VM sends). The payload may be cut: the byte count is the IP
/// header's total length.
///
/// The common case (untagged IPv4, not fragmented, with a whole TCP, UDP or ICMP header)
/// is read directly, at a fraction of the cost; everything else goes to etherparse. A
/// property test holds both to the same answer on any bytes.
pub fn decode(frame: &[u8]) -> Option<Packet> {
    match fast(frame) {
        Some(p) => Some(p),
        None => decode_lax(frame),
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The common case of [`decode`]; `None` when etherparse must look.
fn fast(frame: &[u8]) -> Option<Packet> {
    if be16(frame, 12)? != 0x0800 {
        return None;
    }
    let ip = frame.get(14..)?;
    let (version, ihl) = (ip.first()? >> 4, usize::from(ip.first()? & 0x0f) * 4);
    let total = usize::from(be16(ip, 2)?);
    let fragment = be16(ip, 6)?;
    // More fragments, or not the first: etherparse's rules apply.
    if version != 4 || ihl < 20 || total < ihl || fragment & 0x3fff != 0 || ip.len() < ihl {
        return None;
    }
    let proto = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    // The transport header as far as both the capture and the IP length reach.
    let l4 = ip.get(ihl..total.min(ip.len()))?;
    let (sport, dport, tcp_flags) = match proto {
        TCP => {
            let offset = usize::from(*l4.get(12)? >> 4) * 4;
            if offset < 20 || l4.len() < offset {
                return None;
            }
            let f = l4[13];
            // FIN, SYN, RST, PSH, ACK, URG: the order `decode_lax` reports them in.
            (be16(l4, 0)?, be16(l4, 2)?, f & 0x3f)
        }
        UDP if l4.len() >= 8 => (be16(l4, 0)?, be16(l4, 2)?, 0),
        ICMP if l4.len() >= 8 => {
            // Echo request or reply (type 8 or 0, code 0): the identifier.
            let id = if (l4[0] == 8 || l4[0] == 0) && l4[1] == 0 { be16(l4, 4)? } else { 0 };
            (id, id, 0)
        }
        _ => return None,
    };
    Some(Packet { key: FlowKey { proto, src, sport, dst, dport }, bytes: total as u64, tcp_flags })
}

/// [`decode`] by etherparse (lax: what it can of cut or odd frames).
fn decode_lax(frame: &[u8]) -> Option<Packet> {
    let p = LaxSlicedPacket::from_ethernet(frame).ok()?;
    let Some(LaxNetSlice::Ipv4(v4)) = &p.net else { return None };
    let h = v4.header();
    let (src, dst, bytes) = (h.source_addr(), h.destination_addr(), u64::from(h.total_len()));
    let (proto, sport, dport, tcp_flags) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let flags = u8::from(t.fin())
                | u8::from(t.syn()) << 1
                | u8::from(t.rst()) << 2
                | u8::from(t.psh()) << 3
                | u8::from(t.ack()) << 4
                | u8::from(t.urg()) << 5;
            (TCP, t.source_port(), t.destination_port(), flags)
        }
        Some(TransportSlice::Udp(u)) => (UDP, u.source_port(), u.destination_port(), 0),
        Some(TransportSlice::Icmpv4(i)) => {
            let id = match i.icmp_type() {
                etherparse::Icmpv4Type::EchoRequest(e) | etherparse::Icmpv4Type::EchoReply(e) => e.id,
                _ => 0,
            };
            (ICMP, id, id, 0)
        }
        // Other protocols (and fragments after the first) count under port 0.
        _ => (h.protocol().0, 0, 0, 0),
    };
    Some(Packet { key: FlowKey { proto, src, sport, dst, dport }, bytes, tcp_flags })
}

/// The flows of one interface being counted.
#[derive(Debug, Default)]
pub struct FlowTable {
    // FxHash: the keys are the node's own traffic, and SipHash's resistance to chosen
    // keys costs more per packet than the whole decode; a VM choosing colliding 5-tuples
    // slows only its own interface's capture thread.
    flows: HashMap<FlowKey, Flow, rustc_hash::FxBuildHasher>,
}

impl FlowTable {
    /// Counts packet `p` seen at `ms`.
    pub fn add(&mut self, p: &Packet, ms: i64) {
        let f = self.flows.entry(p.key).or_insert(Flow {
            key: p.key,
            first_ms: ms,
            last_ms: ms,
            bytes: 0,
            packets: 0,
            tcp_flags: 0,
        });
        f.last_ms = f.last_ms.max(ms);
        f.bytes += p.bytes;
        f.packets += 1;
        f.tcp_flags |= p.tcp_flags;
    }

    /// Flows that ended by `now_ms`: idle for `idle_ms`, or running for `active_ms`.
    pub fn expire(&mut self, now_ms: i64, idle_ms: i64, active_ms: i64) -> Vec<Flow> {
        let done: Vec<FlowKey> = self
            .flows
            .values()
            .filter(|f| now_ms - f.last_ms >= idle_ms || now_ms - f.first_ms >= active_ms)
            .map(|f| f.key)
            .collect();
        done.iter().filter_map(|k| self.flows.remove(k)).collect()
    }

    /// Every flow, ended now (an interface that went away, a service that stops).
    pub fn drain(&mut self) -> Vec<Flow> {
        self.flows.drain().map(|(_, f)| f).collect()
    }

    /// How many flows are being counted.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is being counted.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    const A: [u8; 4] = [10, 213, 0, 2];
    const B: [u8; 4] = [10, 77, 0, 2];

    fn frame(b: etherparse::PacketBuilderStep<etherparse::UdpHeader>, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
        PacketBuilder::ethernet2([2, 0, 10, 213, 0, 2], [2, 0, 0, 0, 0, 1])
    }

    #[test]
    fn tcp_udp_and_icmp_decode_to_their_tuples() {
        let udp = frame(eth().ipv4(A, B, 64).udp(40000, 53), b"hello");
        let p = decode(&udp).unwrap();
        assert_eq!(p.key, FlowKey { proto: UDP, src: A.into(), sport: 40000, dst: B.into(), dport: 53 });
        assert_eq!(p.bytes, 20 + 8 + 5);
        let b = eth().ipv4(A, B, 64).tcp(40001, 80, 7, 1024).syn();
        let mut tcp = Vec::new();
        b.write(&mut tcp, &[]).unwrap();
        let p = decode(&tcp).unwrap();
        assert_eq!((p.key.proto, p.key.dport, p.tcp_flags), (TCP, 80, 0b10));
        let b = eth().ipv4(A, B, 64).icmpv4_echo_request(0x1234, 1);
        let mut icmp = Vec::new();
        b.write(&mut icmp, b"ping").unwrap();
        let p = decode(&icmp).unwrap();
        assert_eq!((p.key.proto, p.key.sport, p.key.dport), (ICMP, 0x1234, 0x1234));
    }

    #[test]
    fn what_is_not_ipv4_or_has_its_headers_cut_is_skipped_and_a_cut_payload_counts_whole() {
        let udp = frame(eth().ipv4(A, B, 64).udp(40000, 53), b"hello");
        for cut in [0, 10, 14, 20, 33] {
            assert_eq!(decode(&udp[..cut]), None, "cut at {cut}");
        }
        let long = frame(eth().ipv4(A, B, 64).udp(40000, 53), &[0u8; 1000]);
        let p = decode(&long[..128]).unwrap();
        assert_eq!((p.key.dport, p.bytes), (53, 1028), "the snap length cuts the payload, not the count");
        let v6 = {
            let b = PacketBuilder::ethernet2([2; 6], [3; 6]).ipv6([1; 16], [2; 16], 64).udp(1, 2);
            let mut out = Vec::new();
            b.write(&mut out, b"x").unwrap();
            out
        };
        assert_eq!(decode(&v6), None);
    }

    #[test]
    fn flows_end_when_idle_or_after_running_too_long_and_count_exactly() {
        let mut t = FlowTable::default();
        let p = decode(&frame(eth().ipv4(A, B, 64).udp(40000, 53), b"hello")).unwrap();
        let q = decode(&frame(eth().ipv4(A, B, 64).udp(40001, 53), b"hi")).unwrap();
        t.add(&p, 1000);
        t.add(&p, 2000);
        t.add(&q, 1500);
        assert!(t.expire(5000, 10_000, 60_000).is_empty());
        let ended = t.expire(11_600, 10_000, 60_000);
        assert_eq!(ended.len(), 1, "only the flow idle for 10 s: {ended:?}");
        assert_eq!((ended[0].key.sport, ended[0].packets, ended[0].bytes), (40001, 1, 30));
        for ms in (3000..70_000).step_by(1000) {
            t.add(&p, ms);
        }
        let ended = t.expire(70_000, 10_000, 60_000);
        assert_eq!(ended.len(), 1, "the active timeout ends a flow that never idles");
        assert_eq!((ended[0].first_ms, ended[0].last_ms, ended[0].packets), (1000, 69_000, 69));
        assert!(t.is_empty());
    }

    proptest! {
        // Many cases: the fast path must agree with etherparse on every corner.
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn the_fast_path_agrees_with_etherparse_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..120), ipv4 in any::<bool>(), proto in prop_oneof![Just(1u8), Just(6), Just(17), any::<u8>()]) {
            let mut f = bytes;
            // Mostly IPv4 frames with plausible headers, damaged anywhere.
            if ipv4 && f.len() >= 34 {
                f[12] = 8;
                f[13] = 0;
                f[14] = 0x45;
                f[20] &= 0x1f;
                f[23] = proto;
            }
            if let Some(p) = fast(&f) {
                prop_assert_eq!(Some(p), decode_lax(&f), "{:?}", f);
            }
        }

        #[test]
        fn the_fast_path_agrees_with_etherparse_on_damaged_real_frames(cut in 0usize..90, flip in any::<u8>(), at in 0usize..90, which in 0usize..4) {
            let mut f = Vec::new();
            match which {
                0 => eth().ipv4(A, B, 64).udp(40000, 53).write(&mut f, b"hello there").unwrap(),
                1 => eth().ipv4(A, B, 64).tcp(40001, 80, 7, 1024).syn().ack(9).write(&mut f, b"payload").unwrap(),
                2 => eth().ipv4(A, B, 64).icmpv4_echo_request(0x1234, 1).write(&mut f, b"ping").unwrap(),
                _ => eth().ipv4(A, B, 64).icmpv4_raw(3, 1, [0; 4]).write(&mut f, b"unreachable").unwrap(),
            }
            prop_assert!(fast(&f).is_some() || which == 3);
            prop_assert_eq!(fast(&f).or_else(|| decode_lax(&f)), decode_lax(&f));
            let at = at % f.len();
            f[at] ^= flip;
            f.truncate(cut.min(f.len()));
            if let Some(p) = fast(&f) {
                prop_assert_eq!(Some(p), decode_lax(&f), "{:?}", f);
            }
        }

        #[test]
        fn a_valid_frame_with_its_tail_damaged_never_panics(cut in 0usize..60, flip in any::<u8>(), at in 0usize..60) {
            let mut f = frame(eth().ipv4(A, B, 64).udp(40000, 53), b"hello there");
            let at = at % f.len();
            f[at] ^= flip;
            f.truncate(cut.min(f.len()));
            let _ = decode(&f);
        }
    }
}
