//! Flows: packets decoded into 5-tuples and counted, with idle and active timeouts.
//!
//! A flow is keyed by (protocol, source, source port, destination, destination port) as
//! seen on the VM's interface (ICMP: the identifier of echo messages as both ports, 0 for
//! other types). It carries its first and last time, bytes (IP length), packets and the
//! OR of the TCP flags seen. A flow ends when it has been idle for `idle`, or has run for
//! `active` (then a new record starts, as NetFlow/IPFIX meters do).

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use std::collections::HashMap;

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
pub fn decode(frame: &[u8]) -> Option<Packet> {
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
    flows: HashMap<FlowKey, Flow>,
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
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
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
