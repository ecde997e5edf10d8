//! IPFIX export (RFC 7011) of finished flows to a collector over UDP.
//!
//! Every message carries its templates (UDP may lose any message, and a collector that
//! starts late must still decode the next one), then data sets, and stays within
//! [`MAX_MESSAGE`] bytes. Three templates, all made of IANA information elements:
//!
//! | id | fields |
//! |---|---|
//! | 256 | `sourceIPv4Address` (8), `destinationIPv4Address` (12), `sourceTransportPort` (7), `destinationTransportPort` (11), `protocolIdentifier` (4), `tcpControlBits` (6), `octetDeltaCount` (1), `packetDeltaCount` (2), `flowStartMilliseconds` (152), `flowEndMilliseconds` (153), `userName` (371, the slice) |
//! | 257 | the same, then `postNATSourceIPv4Address` (225), `portRangeStart` (361), `portRangeEnd` (362): the node's public address and the sending VM's block of source ports (RFC 8158's port-block fields) |
//! | 258 | 257's, then `postNAPTSourceTransportPort` (227): the exact source port the NAT chose |
//!
//! The slice travels in `userName` (371, variable length, UTF-8): the principal
//! responsible for the flow. Template 258 is used for flows a VM sent out through the
//! node's NAT whose exact port the service learnt from conntrack
//! ([`crate::conntrack`]), 257 for those whose port it did not (the block names the VM).
//!
//! UDP cannot confirm delivery. The exporter sends from a connected socket and, after each
//! round, waits [`CONFIRM`] for an ICMP error (a collector that is down on a host that is
//! up answers "port unreachable"): then the round counts as not sent and is sent again
//! from the spool later (at-least-once; a collector that silently drops cannot be seen).

use crate::store::FlowRecord;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// The largest message sent (fits one Ethernet frame with IP and UDP headers).
pub const MAX_MESSAGE: usize = 1400;
/// How long a round waits for the collector's host to report an error.
pub const CONFIRM: Duration = Duration::from_millis(200);
/// Template of flows without NAT.
pub const TEMPLATE_PLAIN: u16 = 256;
/// Template of flows sent out through the NAT.
pub const TEMPLATE_NAT: u16 = 257;
/// Template of flows sent out through the NAT whose exact post-NAT port is known.
pub const TEMPLATE_NAT_PORT: u16 = 258;
/// `userName` (the slice) is cut to this many bytes.
pub const MAX_SLICE: usize = 254;

const VARIABLE: u16 = 0xffff;
const FIELDS: [(u16, u16); 11] =
    [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 2), (1, 8), (2, 8), (152, 8), (153, 8), (371, VARIABLE)];
const NAT_FIELDS: [(u16, u16); 3] = [(225, 4), (361, 2), (362, 2)];

fn template(id: u16, fields: &[(u16, u16)], out: &mut Vec<u8>) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (ie, len) in fields {
        out.extend_from_slice(&ie.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// The template set every message starts with.
fn template_set() -> Vec<u8> {
    let mut body = Vec::new();
    template(TEMPLATE_PLAIN, &FIELDS, &mut body);
    let nat: Vec<(u16, u16)> = FIELDS.iter().chain(NAT_FIELDS.iter()).copied().collect();
    template(TEMPLATE_NAT, &nat, &mut body);
    let nat_port: Vec<(u16, u16)> = nat.iter().copied().chain([(227, 2)]).collect();
    template(TEMPLATE_NAT_PORT, &nat_port, &mut body);
    set(2, &body)
}

fn set(id: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A flow's template and its data record.
fn record(f: &FlowRecord) -> (u16, Vec<u8>) {
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&f.src.octets());
    r.extend_from_slice(&f.dst.octets());
    r.extend_from_slice(&f.sport.to_be_bytes());
    r.extend_from_slice(&f.dport.to_be_bytes());
    r.push(f.proto);
    r.extend_from_slice(&u16::from(f.tcp_flags).to_be_bytes());
    r.extend_from_slice(&f.bytes.to_be_bytes());
    r.extend_from_slice(&f.packets.to_be_bytes());
    r.extend_from_slice(&(f.first_ms.max(0) as u64).to_be_bytes());
    r.extend_from_slice(&(f.last_ms.max(0) as u64).to_be_bytes());
    let slice = f.meta.slice.as_bytes();
    let slice = &slice[..slice.len().min(MAX_SLICE)];
    r.push(slice.len() as u8);
    r.extend_from_slice(slice);
    let nat = match (f.post_nat_src.is_some(), f.meta.public_addr, f.meta.nat_ports) {
        (true, Some(public), Some((first, last))) => Some((public, first, last)),
        _ => None,
    };
    match nat {
        Some((public, first, last)) => {
            r.extend_from_slice(&public.octets());
            r.extend_from_slice(&first.to_be_bytes());
            r.extend_from_slice(&last.to_be_bytes());
            match f.post_nat_port() {
                Some(port) => {
                    r.extend_from_slice(&port.to_be_bytes());
                    (TEMPLATE_NAT_PORT, r)
                }
                None => (TEMPLATE_NAT, r),
            }
        }
        None => (TEMPLATE_PLAIN, r),
    }
}

/// Builds messages for one observation domain, numbering data records as RFC 7011 asks
/// (the header's sequence number counts the records sent before the message).
#[derive(Debug)]
pub struct Encoder {
    domain: u32,
    sequence: u32,
}

impl Encoder {
    /// An encoder for observation domain `domain`.
    pub fn new(domain: u32) -> Encoder {
        Encoder { domain, sequence: 0 }
    }

    /// `flows` as messages of at most [`MAX_MESSAGE`] bytes, exported at `export_secs`.
    pub fn messages<'a>(&mut self, flows: impl IntoIterator<Item = &'a FlowRecord>, export_secs: u32) -> Vec<Vec<u8>> {
        let templates = template_set();
        let mut out = Vec::new();
        let mut records = flows.into_iter().map(record).peekable();
        while records.peek().is_some() {
            let mut msg = vec![0u8; 16];
            msg.extend_from_slice(&templates);
            let mut count = 0u32;
            // Data sets: consecutive records of one template share a set.
            while let Some((tid, _)) = records.peek() {
                let tid = *tid;
                let mut body = Vec::new();
                while let Some((t, r)) = records.peek() {
                    if *t != tid || msg.len() + 4 + body.len() + r.len() > MAX_MESSAGE {
                        break;
                    }
                    body.extend_from_slice(r);
                    count += 1;
                    records.next();
                }
                if body.is_empty() {
                    break;
                }
                msg.extend_from_slice(&set(tid, &body));
            }
            msg[0..2].copy_from_slice(&10u16.to_be_bytes());
            let len = msg.len() as u16;
            msg[2..4].copy_from_slice(&len.to_be_bytes());
            msg[4..8].copy_from_slice(&export_secs.to_be_bytes());
            msg[8..12].copy_from_slice(&self.sequence.to_be_bytes());
            msg[12..16].copy_from_slice(&self.domain.to_be_bytes());
            self.sequence = self.sequence.wrapping_add(count);
            out.push(msg);
        }
        out
    }
}

/// Sends flows to one collector.
#[derive(Debug)]
pub struct Exporter {
    socket: UdpSocket,
    encoder: Encoder,
}

impl Exporter {
    /// An exporter to `collector`, for observation domain `domain`.
    pub fn new(collector: SocketAddr, domain: u32) -> io::Result<Exporter> {
        let any: SocketAddr = if collector.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = UdpSocket::bind(any)?;
        socket.connect(collector)?;
        Ok(Exporter { socket, encoder: Encoder::new(domain) })
    }

    /// Sends `flows`, then waits [`CONFIRM`] for an error from the collector's host. An
    /// error means the round may not have arrived: the caller sends it again later.
    pub fn send<'a>(&mut self, flows: impl IntoIterator<Item = &'a FlowRecord>) -> io::Result<()> {
        // An error left from before this round (a collector that was down) is cleared first.
        let _ = self.socket.take_error();
        let now = crate::capture::now_ms() / 1000;
        for m in self.encoder.messages(flows, u32::try_from(now).unwrap_or(u32::MAX)) {
            self.socket.send(&m)?;
        }
        std::thread::sleep(CONFIRM);
        match self.socket.take_error()? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::flow::{Flow, FlowKey, TCP, UDP};
    use crate::store::VmMeta;

    fn rec(i: u16, proto: u8, out: bool) -> FlowRecord {
        let meta = VmMeta {
            vm: "plc_a".into(),
            slice: "plc.a".into(),
            users: vec![],
            iface: "pv1".into(),
            vm_addr: [10, 213, 0, 2].into(),
            public_addr: Some([192, 0, 2, 10].into()),
            nat_ports: Some((32768, 33023)),
            vm_net: None,
        };
        let dst = if out { [198, 51, 100, 7] } else { [10, 213, 0, 1] };
        let f = Flow {
            key: FlowKey { proto, src: [10, 213, 0, 2].into(), sport: 40000 + i, dst: dst.into(), dport: 53 },
            first_ms: 1_700_000_000_123,
            last_ms: 1_700_000_001_456,
            bytes: 1000 + u64::from(i),
            packets: 3,
            tcp_flags: 0x12,
        };
        FlowRecord::new(&f, &meta)
    }

    /// A minimal reader of what the encoder writes: (set id, template or record bytes).
    fn sets(msg: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 16;
        while at < msg.len() {
            let id = u16::from_be_bytes([msg[at], msg[at + 1]]);
            let len = usize::from(u16::from_be_bytes([msg[at + 2], msg[at + 3]]));
            out.push((id, msg[at + 4..at + len].to_vec()));
            at += len;
        }
        assert_eq!(at, msg.len(), "sets fill the message exactly");
        out
    }

    #[test]
    fn messages_carry_templates_numbered_records_and_stay_small() {
        let mut flows: Vec<FlowRecord> = (0..100).map(|i| rec(i, if i % 2 == 0 { UDP } else { TCP }, i < 60)).collect();
        // Some outbound flows have their exact post-NAT port (from conntrack).
        for (i, f) in flows.iter_mut().enumerate().filter(|(i, _)| *i >= 30 && *i < 60) {
            f.set_post_nat_port(32768 + i as u16);
        }
        let mut e = Encoder::new(7);
        let msgs = e.messages(&flows, 1_700_000_002);
        assert!(msgs.len() > 1, "100 records need several messages");
        let mut seen = 0u32;
        for m in &msgs {
            assert!(m.len() <= MAX_MESSAGE);
            assert_eq!(u16::from_be_bytes([m[0], m[1]]), 10, "IPFIX version");
            assert_eq!(usize::from(u16::from_be_bytes([m[2], m[3]])), m.len());
            assert_eq!(u32::from_be_bytes([m[8], m[9], m[10], m[11]]), seen, "sequence = records before");
            assert_eq!(u32::from_be_bytes([m[12], m[13], m[14], m[15]]), 7);
            let s = sets(m);
            assert_eq!(s[0].0, 2, "templates first");
            for (id, body) in &s[1..] {
                // 47 fixed bytes, the slice's length byte and "plc.a", NAT fields.
                let each = match *id {
                    TEMPLATE_NAT => 47 + 6 + 8,
                    TEMPLATE_NAT_PORT => 47 + 6 + 8 + 2,
                    _ => 47 + 6,
                };
                assert_eq!(body.len() % each, 0, "set {id}");
                seen += (body.len() / each) as u32;
            }
        }
        assert_eq!(seen, 100);
        let again = e.messages(&flows[..1], 0);
        assert_eq!(u32::from_be_bytes([again[0][8], again[0][9], again[0][10], again[0][11]]), 100);
        // The first record: fields where the template says.
        let (id, body) = &sets(&msgs[0])[1];
        assert_eq!(*id, TEMPLATE_NAT);
        assert_eq!(&body[0..4], &[10, 213, 0, 2]);
        assert_eq!(&body[8..10], &40000u16.to_be_bytes());
        assert_eq!(body[12], UDP);
        assert_eq!(&body[15..23], &1000u64.to_be_bytes());
        assert_eq!(&body[31..39], &1_700_000_000_123u64.to_be_bytes());
        assert_eq!(body[47], 5);
        assert_eq!(&body[48..53], b"plc.a");
        assert_eq!(&body[53..57], &[192, 0, 2, 10]);
        assert_eq!(&body[57..61], &[0x80, 0x00, 0x80, 0xff], "ports 32768-33023");
        // A flow with its exact port: template 258, the port after the block.
        let m = Encoder::new(7).messages(&flows[30..31], 0);
        let (id, body) = &sets(&m[0])[1];
        assert_eq!((*id, body.len()), (TEMPLATE_NAT_PORT, 47 + 6 + 8 + 2));
        assert_eq!(&body[61..63], &(32768u16 + 30).to_be_bytes());
    }

    #[test]
    fn a_long_slice_name_is_cut_and_nothing_is_sent_for_no_flows() {
        let mut f = rec(0, UDP, false);
        f.meta.slice = "x".repeat(400);
        let msgs = Encoder::new(0).messages(&[f], 0);
        let (_, body) = &sets(&msgs[0])[1];
        assert_eq!(usize::from(body[47]), MAX_SLICE);
        assert!(Encoder::new(0).messages(&[], 0).is_empty());
    }

    #[test]
    fn a_collector_that_is_down_is_noticed_and_one_that_listens_receives() {
        let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut x = Exporter::new(addr, 1).unwrap();
        assert!(x.send(&[rec(0, UDP, true)]).is_err(), "nothing listens on {addr}");
        let listener = UdpSocket::bind(addr).unwrap();
        x.send(&[rec(0, UDP, true)]).unwrap();
        let mut buf = [0u8; 2000];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), 10);
        assert_eq!(usize::from(u16::from_be_bytes([buf[2], buf[3]])), n);
    }
}
