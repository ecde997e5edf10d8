//! Flows as the auditing service records them, shared by the node's service
//! (`plab-audit`) and the authority's archive: a flow's 5-tuple and counters, who it
//! belongs to ([`VmMeta`]), and the public query ([`Query`]: a packet's source,
//! destination and a time window, from a URL's query string
//! `src=ADDR[:PORT]&dst=ADDR[:PORT]&from=T&to=T`, times as Unix seconds or RFC 3339)
//! with what answers it ([`FlowRecord::matches`]). What does not parse is refused with
//! the field and the reason.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// A flow's 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// IP protocol number.
    pub proto: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Source port (ICMP: echo identifier).
    pub sport: u16,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Destination port (ICMP: echo identifier).
    pub dport: u16,
}

/// A flow being counted, or a finished one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Its 5-tuple.
    pub key: FlowKey,
    /// First packet, milliseconds since the Unix epoch.
    pub first_ms: i64,
    /// Last packet.
    pub last_ms: i64,
    /// IP bytes.
    pub bytes: u64,
    /// Packets.
    pub packets: u64,
    /// OR of the TCP flags seen.
    pub tcp_flags: u8,
}

/// Who a VM's flows belong to, and where the VM sits behind the node's NAT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMeta {
    /// The VM's name on the node.
    pub vm: String,
    /// Its slice.
    pub slice: String,
    /// The people responsible for the slice.
    pub users: Vec<String>,
    /// The host interface captured.
    pub iface: String,
    /// The VM's node-private address.
    pub vm_addr: Ipv4Addr,
    /// The node's public address, when it has one.
    pub public_addr: Option<Ipv4Addr>,
    /// The VM's block of NAT source ports on the public address.
    pub nat_ports: Option<(u16, u16)>,
    /// The node-private VM network (address, prefix length): what the node's NAT does
    /// not translate towards.
    #[serde(default)]
    pub vm_net: Option<(Ipv4Addr, u8)>,
}

impl VmMeta {
    /// Whether a flow from the VM to `dst` leaves through the node's NAT: it goes
    /// neither to the VM network nor to the node itself.
    pub fn natted(&self, dst: Ipv4Addr) -> bool {
        if Some(dst) == self.public_addr {
            return false;
        }
        match self.vm_net {
            Some((net, len)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
                u32::from(dst) & mask != u32::from(net) & mask
            }
            // Records from before the network was recorded: private space is not translated.
            None => !is_private(dst),
        }
    }
}

/// A stored flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Protocol number.
    pub proto: u8,
    /// Source as seen on the VM's interface.
    pub src: Ipv4Addr,
    /// Source port.
    pub sport: u16,
    /// Destination as seen on the VM's interface.
    pub dst: Ipv4Addr,
    /// Destination port.
    pub dport: u16,
    /// First packet, ms since the epoch.
    pub first_ms: i64,
    /// Last packet.
    pub last_ms: i64,
    /// IP bytes.
    pub bytes: u64,
    /// Packets.
    pub packets: u64,
    /// OR of TCP flags.
    pub tcp_flags: u8,
    /// The source as the outside saw it (after NAT), when the VM sent the flow out:
    /// `ADDR:PORT` when the node's connection tracking told the port its NAT chose, else
    /// `ADDR:FIRST-LAST`, the VM's block of ports (any port the outside saw is in it).
    pub post_nat_src: Option<String>,
    /// Whose it is.
    pub meta: VmMeta,
}

impl FlowRecord {
    /// A finished flow of a VM.
    pub fn new(f: &Flow, meta: &VmMeta) -> FlowRecord {
        let FlowKey { proto, src, sport, dst, dport } = f.key;
        let outbound = src == meta.vm_addr && meta.natted(dst);
        let post_nat_src = match (outbound, meta.public_addr, meta.nat_ports) {
            (true, Some(p), Some((a, b))) => Some(format!("{p}:{a}-{b}")),
            _ => None,
        };
        FlowRecord {
            proto,
            src,
            sport,
            dst,
            dport,
            first_ms: f.first_ms,
            last_ms: f.last_ms,
            bytes: f.bytes,
            packets: f.packets,
            tcp_flags: f.tcp_flags,
            post_nat_src,
            meta: meta.clone(),
        }
    }

    /// Records the exact source port the node's NAT gave this outbound flow.
    pub fn set_post_nat_port(&mut self, port: u16) {
        // Only a port of the VM's own block: the blocks are what names the VM.
        let in_block = self.meta.nat_ports.is_some_and(|(a, b)| (a..=b).contains(&port));
        if let (Some(_), Some(public), true) = (&self.post_nat_src, self.meta.public_addr, in_block) {
            self.post_nat_src = Some(format!("{public}:{port}"));
        }
    }

    /// The exact source port the outside saw, when the node knew it.
    pub fn post_nat_port(&self) -> Option<u16> {
        let (_, port) = self.post_nat_src.as_deref()?.rsplit_once(':')?;
        port.parse().ok()
    }

    /// Does endpoint `e` name the VM's side of this flow, whose address and port on the
    /// VM's interface are `addr`:`port`?
    fn vm_side(&self, e: &Endpoint, addr: Ipv4Addr, port: u16) -> bool {
        if addr != self.meta.vm_addr {
            return false;
        }
        let inside = e.addr == addr && e.port.is_none_or(|p| p == port);
        // The public address names the VM only for what left through the NAT.
        let outside = self.post_nat_src.is_some()
            && Some(e.addr) == self.meta.public_addr
            && match (e.port, self.post_nat_port(), self.meta.nat_ports) {
                (None, _, _) => true,
                (Some(p), Some(exact), _) => p == exact,
                (Some(p), None, Some((a, b))) => (a..=b).contains(&p),
                (Some(_), None, None) => false,
            };
        inside || outside
    }

    fn side(&self, e: &Endpoint, addr: Ipv4Addr, port: u16) -> bool {
        self.vm_side(e, addr, port) || (e.addr == addr && e.port.is_none_or(|p| p == port))
    }

    /// Does this flow answer query `q`?
    pub fn matches(&self, q: &Query) -> bool {
        self.first_ms <= q.to_ms
            && self.last_ms >= q.from_ms
            && self.side(&q.src, self.src, self.sport)
            && q.dst.as_ref().is_none_or(|d| self.side(d, self.dst, self.dport))
    }
}

/// RFC 1918 and link-local space: what the node's NAT does not translate towards.
fn is_private(a: Ipv4Addr) -> bool {
    a.is_private() || a.is_link_local() || a.is_loopback()
}

/// An address with an optional port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The address.
    pub addr: Ipv4Addr,
    /// The port, when given.
    pub port: Option<u16>,
}

/// What someone asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The packet's source.
    pub src: Endpoint,
    /// Its destination, when given.
    pub dst: Option<Endpoint>,
    /// The window's start, ms since the epoch.
    pub from_ms: i64,
    /// Its end.
    pub to_ms: i64,
}

/// Why a query was refused: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct QueryError {
    /// The parameter.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> QueryError {
    QueryError { field, reason: reason.into() }
}

/// A field that was given: present and not blank.
fn given(v: Option<&str>) -> Option<&str> {
    v.filter(|v| !v.trim().is_empty())
}

/// The longest window one query may cover: 31 days.
pub const MAX_WINDOW_MS: i64 = 31 * 24 * 3600 * 1000;

fn endpoint(field: &'static str, s: &str) -> Result<Endpoint, QueryError> {
    let s = s.trim();
    let (addr, port) = match s.rsplit_once(':') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: Ipv4Addr =
        addr.parse().map_err(|_| bad(field, format!("{addr:?} is not an IPv4 address (a.b.c.d, optionally :port)")))?;
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| bad(field, format!("{p:?} is not a port (0 to 65535)")))?),
        None => None,
    };
    Ok(Endpoint { addr, port })
}

fn time_ms(field: &'static str, s: &str) -> Result<i64, QueryError> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && (0.0..1e11).contains(&secs) {
            return Ok((secs * 1000.0) as i64);
        }
        return Err(bad(field, format!("{s} is not a time after 1970 in Unix seconds")));
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|_| {
        bad(field, format!("{s:?} is neither Unix seconds nor an RFC 3339 time (2026-11-27T10:00:00Z)"))
    })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

impl Query {
    /// Parses a URL query string. `to` defaults to `now_ms`, `from` to an hour before `to`.
    pub fn parse_at(qs: &str, now_ms: i64) -> Result<Query, QueryError> {
        let (mut src, mut dst, mut from, mut to) = (None, None, None, None);
        for (k, v) in url::form_urlencoded::parse(qs.as_bytes()) {
            match k.as_ref() {
                "src" => src = Some(v),
                "dst" => dst = Some(v),
                "from" => from = Some(v),
                "to" => to = Some(v),
                "format" => {}
                other => return Err(bad("query", format!("unknown parameter {other:?} (src, dst, from, to)"))),
            }
        }
        Query::from_fields(src.as_deref(), dst.as_deref(), from.as_deref(), to.as_deref(), now_ms)
    }

    /// A query from its fields as a person gives them (empty ones count as absent, but
    /// `src` is required). `to` defaults to `now_ms`, `from` to an hour before `to`.
    pub fn from_fields(
        src: Option<&str>,
        dst: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
        now_ms: i64,
    ) -> Result<Query, QueryError> {
        let src = endpoint(
            "src",
            src.ok_or_else(|| bad("src", "missing: the packet's source address (and port, if known)"))?,
        )?;
        let dst = given(dst).map(|v| endpoint("dst", v)).transpose()?;
        let to_ms = given(to).map(|v| time_ms("to", v)).transpose()?.unwrap_or(now_ms);
        let from_ms = given(from).map(|v| time_ms("from", v)).transpose()?.unwrap_or(to_ms - 3_600_000);
        if from_ms > to_ms {
            return Err(bad("from", "is after to"));
        }
        if to_ms - from_ms > MAX_WINDOW_MS {
            return Err(bad("to", "the window is longer than 31 days"));
        }
        Ok(Query { src, dst, from_ms, to_ms })
    }

    /// Milliseconds since the Unix epoch now.
    pub fn now_ms() -> i64 {
        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
    }

    /// Parses a URL query string, the window defaulting to the last hour.
    pub fn parse(qs: &str) -> Result<Query, QueryError> {
        Query::parse_at(qs, Query::now_ms())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_name_the_field() {
        let q = Query::parse_at("src=192.0.2.10%3A33100&dst=198.51.100.7&from=2026-11-27T10:00:00Z&to=1795780800.5", 0)
            .unwrap();
        assert_eq!(q.src, Endpoint { addr: [192, 0, 2, 10].into(), port: Some(33100) });
        assert_eq!(q.dst, Some(Endpoint { addr: [198, 51, 100, 7].into(), port: None }));
        assert_eq!(q.from_ms, 1_795_773_600_000);
        assert_eq!(q.to_ms, 1_795_780_800_500);
        let q = Query::parse_at("src=10.0.0.1&dst=&from=&to=", 7_200_000).unwrap();
        assert_eq!((q.from_ms, q.to_ms, q.dst), (3_600_000, 7_200_000, None));
        for (qs, field, says) in [
            ("dst=10.0.0.1", "src", "missing"),
            ("src=10.0.0.300", "src", "not an IPv4"),
            ("src=10.0.0.1:70000", "src", "not a port"),
            ("src=10.0.0.1&dst=x", "dst", "not an IPv4"),
            ("src=10.0.0.1&from=yesterday", "from", "RFC 3339"),
            ("src=10.0.0.1&from=-5", "from", "after 1970"),
            ("src=10.0.0.1&from=20&to=10", "from", "after to"),
            ("src=10.0.0.1&from=0&to=99999999", "to", "31 days"),
            ("src=10.0.0.1&sql=1", "query", "unknown parameter"),
        ] {
            let e = Query::parse_at(qs, 0).unwrap_err();
            assert_eq!(e.field, field, "{qs}: {e}");
            assert!(e.reason.contains(says), "{qs}: {e}");
        }
    }
}
