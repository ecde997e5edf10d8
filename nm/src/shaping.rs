//! Bandwidth per VM (specification section 4.10), as PlanetLab did it: one HTB tree per
//! direction for the whole node, a class per VM with `rate base_rate ceil burst_rate`
//! under a root of the node's capacity (`node_rate`), so that a VM gets its base rate
//! whatever the others send, and borrows up to its burst rate when the node has room. The
//! sustained rate is a byte budget over a window (PlanetLab's bwmon).
//!
//! - Two IFB devices carry the trees: `plabup` (what VMs send) and `plabdn` (what they
//!   receive). Each VM's host interface (veth end or tap) gets a `clsact` qdisc whose
//!   filters redirect what the VM sends with its own source MAC to `plabup`, anything
//!   else it sends to `plabnull` (dropped), and everything towards it to `plabdn` (`u32`
//!   filters and `mirred`: this kernel has neither `matchall`, `basic`, `skbedit` nor
//!   `gact`). Shaping happens on the host, outside anything the VM controls, before the
//!   bridge sees a frame, and is the same for containers and guests.
//! - On each IFB, a `u32` filter per VM (item `800::<index+1>`, so at most 4095 VMs)
//!   sends the VM's frames (by source MAC upwards, every protocol; by destination address
//!   downwards) to its class `1:<index+0x10>`; anything else (the node's broadcasts) falls
//!   in class `1:2`.
//! - `sustained_rate`: the node manager's upkeep reads each class's sent bytes; once a VM
//!   has moved `sustained_rate × sustained_window_secs` in the current window in one
//!   direction, that direction's ceiling drops to `max(base_rate, sustained_rate)` (what
//!   keeps the long-term average where the RSpec puts it) until the window ends, when it
//!   goes back to `burst_rate`.
//!
//! Everything is written with `tc -batch` (one fork; `replace` makes it idempotent) and
//! read back with `tc -j qdisc` and `tc -s class show` (this iproute2 prints HTB classes
//! as text even with `-j`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_types::host::{Cmd, Host};
use vm_types::{BackendError, Resources};

/// The lowest rate HTB is given (a zero `base_rate` guarantees nothing but must still
/// send): 8 kbit/s.
pub const MIN_RATE_BPS: u64 = 8_000;

/// The IFB carrying what VMs send.
pub const UP: &str = "plabup";
/// The IFB carrying what VMs receive.
pub const DOWN: &str = "plabdn";

/// An IFB device whose queue holds no packet: what is redirected there is dropped (this
/// kernel has neither the `dummy` device nor the `gact` action).
pub const NULL: &str = "plabnull";

/// u32 selectors matching frames whose source MAC is the VM's at `address` (offsets are
/// from the network header; the MAC, `02:00:` and the address, starts 8 bytes before it).
pub fn mac_match(address: Ipv4Addr) -> String {
    let o = address.octets();
    format!(
        "match u32 0x0200{:02x}{:02x} 0xffffffff at -8 match u16 0x{:02x}{:02x} 0xffff at -4",
        o[0], o[1], o[2], o[3]
    )
}

/// How many VMs can be shaped (u32 items in one hash table).
pub const MAX_SHAPED: u32 = 0xfff;

/// One VM's HTB class, in bits per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// Guaranteed rate.
    pub rate: u64,
    /// Ceiling.
    pub ceil: u64,
}

/// A VM's rates from its resources, in bits per second: (base, burst, sustained). A VM
/// without a `burst_rate` gets `default_burst_mbps` as its ceiling.
pub fn rates(r: &Resources, default_burst_mbps: u64) -> (u64, u64, u64) {
    // base_rate is in Kbps, the others in Mbps; Quantity holds thousandths.
    let base = r.base_rate.milli().max(MIN_RATE_BPS);
    let burst = match r.burst_rate.milli() {
        0 => default_burst_mbps.saturating_mul(1_000_000),
        b => b.saturating_mul(1000),
    }
    .max(base);
    let sustained = r.sustained_rate.milli().saturating_mul(1000);
    (base, burst, sustained)
}

/// VM number `index`'s class id (minor, hex as tc reads it).
pub fn classid(index: u32) -> String {
    format!("1:{:x}", index + 0x10)
}

/// Bytes HTB may send at once at `bps`: 10 ms worth, at least two full frames. (tc's
/// own default, with high-resolution timers, is one frame: too little to hold a rate of
/// tens of Mbit/s accurately.)
fn burst_bytes(bps: u64) -> u64 {
    (bps / 8 / 100).max(3028)
}

fn class_line(dev: &str, parent: &str, id: &str, c: Class, verb: &str) -> String {
    format!(
        "class {verb} dev {dev} parent {parent} classid {id} htb rate {}bit ceil {}bit burst {}b cburst {}b quantum 1514\n",
        c.rate,
        c.ceil,
        burst_bytes(c.rate),
        burst_bytes(c.ceil)
    )
}

/// Reads which qdiscs `tc -j qdisc show dev X` lists, by kind.
pub fn qdisc_kinds(json: &str) -> Vec<String> {
    let v: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    v.iter().filter_map(|q| q["kind"].as_str().map(str::to_owned)).collect()
}

/// One HTB class's counters and rates, from `tc -s class show`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes sent.
    pub bytes: u64,
    /// Packets sent.
    pub packets: u64,
    /// Packets dropped.
    pub drops: u64,
    /// Guaranteed rate, bits/s.
    pub rate: u64,
    /// Ceiling, bits/s.
    pub ceil: u64,
}

/// Every class's counters from `tc -s class show dev X`, by class id.
pub fn class_stats(text: &str) -> BTreeMap<String, ClassStats> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, ClassStats)> = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["class", "htb", id, ..] => {
                let after = |key: &str| {
                    words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).and_then(|w| parse_rate(w))
                };
                let st = ClassStats {
                    rate: after("rate").unwrap_or(0),
                    ceil: after("ceil").unwrap_or(0),
                    ..Default::default()
                };
                current = Some(((*id).to_owned(), st));
            }
            ["Sent", bytes, "bytes", packets, "pkt", "(dropped", drops, ..] => {
                if let Some((id, mut st)) = current.take() {
                    st.bytes = bytes.parse().unwrap_or(0);
                    st.packets = packets.parse().unwrap_or(0);
                    st.drops = drops.trim_end_matches(',').parse().unwrap_or(0);
                    out.insert(id, st);
                }
            }
            _ => {}
        }
    }
    out
}

/// Which class each VM address is sent to, from `tc filter show dev X` (`... flowid
/// 1:11` followed by `match 0ad50002/ffffffff at 12` or `at 16`).
pub fn filter_classes(text: &str) -> BTreeMap<Ipv4Addr, String> {
    let mut out = BTreeMap::new();
    let mut flowid: Option<String> = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "*flowid" || *w == "flowid") {
            flowid = words.get(i + 1).map(|w| (*w).to_owned());
        } else if let (["match", m, "at", "12" | "16"], Some(id)) = (words.as_slice(), &flowid) {
            if let Some((hex, "ffffffff")) = m.split_once('/') {
                if let Ok(v) = u32::from_str_radix(hex, 16) {
                    out.insert(Ipv4Addr::from(v), id.clone());
                }
            }
        }
    }
    out
}

/// Parses a rate as `tc` prints it (`8Kbit`, `1500Kbit`, `100Mbit`, `12bit`) into bits/s.
pub fn parse_rate(s: &str) -> Option<u64> {
    let s = s.strip_suffix("bit")?;
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K') => (&s[..i], 1_000),
        (i, 'M') => (&s[..i], 1_000_000),
        (i, 'G') => (&s[..i], 1_000_000_000),
        _ => (s, 1),
    };
    let v: f64 = num.parse().ok()?;
    Some((v * mult as f64).round() as u64)
}

/// Shapes VM traffic on a host.
pub struct Shaper {
    host: Arc<dyn Host>,
    capacity: u64,
}

impl Shaper {
    /// A shaper working through `host` for a node whose VMs share `capacity` bits/s.
    pub fn new(host: Arc<dyn Host>, capacity: u64) -> Shaper {
        Shaper { host, capacity }
    }

    fn tc(&self, batch: String) -> Result<(), BackendError> {
        self.host.run(&Cmd::new("tc").args(["-batch", "-"]).input(batch)).map(|_| ())
    }

    fn kinds(&self, dev: &str) -> Result<Vec<String>, BackendError> {
        self.host.run(&Cmd::new("tc").args(["-j", "qdisc", "show", "dev", dev])).map(|j| qdisc_kinds(&j))
    }

    /// Makes the node's two trees (at start). Idempotent; classes already there stay.
    pub fn install(&self) -> Result<(), BackendError> {
        if !self.host.link_exists(NULL) {
            self.host.run(&Cmd::new("ip").args(["link", "add", NULL, "type", "ifb"]))?;
        }
        self.host.run(&Cmd::new("ip").args(["link", "set", NULL, "up"]))?;
        // A queue of no packets: everything sent there is dropped (and counted).
        let mut b = format!("qdisc replace dev {NULL} root pfifo limit 0\n");
        for ifb in [UP, DOWN] {
            if !self.host.link_exists(ifb) {
                self.host.run(&Cmd::new("ip").args(["link", "add", ifb, "type", "ifb"]))?;
            }
            // Each VM class's queue is as long as the device's (an IFB's default is 32
            // packets: too short for TCP to hold a low rate, measured 4% under it).
            self.host.run(&Cmd::new("ip").args(["link", "set", ifb, "txqueuelen", "1000", "up"]))?;
            // HTB cannot "replace" itself: it is added once and kept (with its classes).
            if !self.kinds(ifb)?.iter().any(|k| k == "htb") {
                b += &format!("qdisc replace dev {ifb} root handle 1: htb default 2\n");
            }
            let all = Class { rate: self.capacity, ceil: self.capacity };
            b += &class_line(ifb, "1:", "1:1", all, "replace");
            b += &class_line(ifb, "1:1", "1:2", Class { rate: MIN_RATE_BPS, ceil: self.capacity }, "replace");
        }
        self.tc(b)
    }

    /// Gives VM number `index` (at `address`) its classes (`up`: what it sends, `down`:
    /// what it receives). Live: a VM that has them keeps its queues.
    pub fn set(&self, index: u32, address: Ipv4Addr, up: Class, down: Class) -> Result<(), BackendError> {
        if index >= MAX_SHAPED {
            return Err(BackendError::Invalid(format!(
                "bandwidth: VM number {index} cannot be shaped (at most {MAX_SHAPED} VMs per node)"
            )));
        }
        let id = classid(index);
        let item = format!("800::{:x}", index + 1);
        let mut b = class_line(UP, "1:1", &id, up, "replace");
        // Upwards by source MAC (every protocol, ARP included: only frames with the VM's
        // own MAC get this far, see `attach`); downwards by destination address.
        b += &format!(
            "filter replace dev {UP} parent 1: prio 1 handle {item} protocol all u32 {} flowid {id}\n",
            mac_match(address)
        );
        b += &class_line(DOWN, "1:1", &id, down, "replace");
        b += &format!(
            "filter replace dev {DOWN} parent 1: prio 1 handle {item} protocol ip u32 match ip dst {address}/32 flowid {id}\n"
        );
        self.tc(b)
    }

    /// Sends what VM interface `dev` carries through the node's trees (after each start:
    /// a tap is made anew): frames from the VM with its own source MAC (that of `address`)
    /// to `plabup`, any other frame from it to `plabnull` (an IFB whose queue holds no
    /// packet: this kernel has no `gact` action to drop with), everything towards it
    /// to `plabdn`. So a VM cannot put frames into another VM's class, whatever address it
    /// forges. The interface's `clsact` is made anew each time (u32 handles are shared by
    /// its two sides, so filters are added whole rather than replaced).
    pub fn attach(&self, dev: &str, address: Ipv4Addr) -> Result<(), BackendError> {
        let mut b = String::new();
        if self.kinds(dev)?.iter().any(|k| k == "clsact") {
            b += &format!("qdisc del dev {dev} clsact\n");
        }
        b += &format!("qdisc add dev {dev} clsact\n");
        b += &format!(
            "filter add dev {dev} ingress prio 1 protocol all u32 {} action mirred egress redirect dev {UP}\n",
            mac_match(address)
        );
        b += &format!(
            "filter add dev {dev} ingress prio 2 protocol all u32 match u32 0 0 action mirred egress redirect dev {NULL}\n"
        );
        b += &format!(
            "filter add dev {dev} egress prio 1 protocol all u32 match u32 0 0 action mirred egress redirect dev {DOWN}\n"
        );
        self.tc(b)
    }

    /// Removes VM number `index`'s filters and classes. Idempotent.
    pub fn remove(&self, index: u32) -> Result<(), BackendError> {
        if index >= MAX_SHAPED {
            return Ok(());
        }
        let (id, item) = (classid(index), format!("800::{:x}", index + 1));
        // Each filter is deleted as it was added (`set`): upwards by MAC (`protocol all`),
        // downwards by address (`protocol ip`). Each deletion on its own, both directions
        // always, and what is already gone counts as done: a half-made VM (its class made,
        // its filter not) is removed too.
        let mut first_error = None;
        for ((ifb, protocol), classes) in [(UP, "all"), (DOWN, "ip")].into_iter().zip(self.classes()?) {
            if !classes.contains_key(&id) {
                continue;
            }
            for line in [
                format!("filter del dev {ifb} parent 1: prio 1 handle {item} protocol {protocol} u32\n"),
                format!("class del dev {ifb} classid {id}\n"),
            ] {
                match self.tc(line) {
                    Err(BackendError::Command { message, .. })
                        if message.contains("not found") || message.contains("Cannot find") => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                    Ok(()) => {}
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Every class in force with its counters (up, down), read back from the kernel
    /// for all VMs at once.
    pub fn classes(&self) -> Result<[BTreeMap<String, ClassStats>; 2], BackendError> {
        let show = |d: &str| self.host.run(&Cmd::new("tc").args(["-s", "class", "show", "dev", d]));
        Ok([class_stats(&show(UP)?), class_stats(&show(DOWN)?)])
    }
}

/// One VM's sustained-rate accounting (both directions: up, down).
#[derive(Debug, Clone)]
pub struct Meter {
    window: Duration,
    started: Instant,
    at_start: [u64; 2],
    capped: [bool; 2],
}

impl Meter {
    /// A window opening at `now` with the counters at `bytes`.
    pub fn new(window: Duration, now: Instant, bytes: [u64; 2]) -> Meter {
        Meter { window, started: now, at_start: bytes, capped: [false; 2] }
    }

    /// Whether each direction's ceiling is held down now.
    pub fn capped(&self) -> [bool; 2] {
        self.capped
    }

    /// Takes the counters at `now`; true when a direction's cap changed (new state in
    /// [`Meter::capped`]). A counter that went backwards (the class was made again) opens
    /// a new window.
    pub fn tick(&mut self, now: Instant, bytes: [u64; 2], sustained_bps: u64) -> bool {
        let expired = now.duration_since(self.started) >= self.window;
        let reset = bytes.iter().zip(self.at_start).any(|(b, s)| *b < s);
        let before = self.capped;
        if expired || reset {
            *self = Meter::new(self.window, now, bytes);
        } else if sustained_bps > 0 {
            let budget = u128::from(sustained_bps) * self.window.as_millis() / 8000;
            for ((cap, now), start) in self.capped.iter_mut().zip(bytes).zip(self.at_start) {
                if u128::from(now - start) >= budget {
                    *cap = true;
                }
            }
        }
        self.capped != before
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vm_types::host::recording::RecordingHost;
    use vm_types::Quantity;

    #[test]
    fn rates_follow_the_rspec_units() {
        let r = Resources {
            base_rate: Quantity::whole(500),
            burst_rate: Quantity::from_milli(1500),
            sustained_rate: Quantity::whole(1),
            ..Resources::default()
        };
        assert_eq!(rates(&r, 100), (500_000, 1_500_000, 1_000_000));
        let none = Resources::default();
        assert_eq!(rates(&none, 100), (MIN_RATE_BPS, 100_000_000, 0), "no burst_rate: the node's default ceiling");
        let low =
            Resources { base_rate: Quantity::whole(5000), burst_rate: Quantity::whole(1), ..Resources::default() };
        assert_eq!(rates(&low, 100).1, 5_000_000, "a ceiling is never below the rate");
    }

    #[test]
    fn class_counters_and_filter_addresses_are_read_back() {
        let classes = "class htb 1:11 parent 1:1 prio 0 rate 200Kbit ceil 1500Kbit burst 3028b cburst 3027b \n \
                       Sent 608090 bytes 405 pkt (dropped 3, overlimits 28 requeues 0) \n \
                       backlog 0b 0p requeues 0\n";
        let st = class_stats(classes);
        assert_eq!(st["1:11"], ClassStats { bytes: 608_090, packets: 405, drops: 3, rate: 200_000, ceil: 1_500_000 });
        let filters = "filter parent 1: protocol ip pref 1 u32 chain 0 \n\
                       filter parent 1: protocol ip pref 1 u32 chain 0 fh 800::2 order 2 key ht 800 bkt 0 *flowid 1:11 not_in_hw \n  \
                       match 0ad50002/ffffffff at 12\n\
                       filter parent 1: protocol ip pref 1 u32 chain 0 fh 800::3 order 3 key ht 800 bkt 0 *flowid 1:12 not_in_hw \n  \
                       match 0ad50003/ffffffff at 16\n";
        let f = filter_classes(filters);
        assert_eq!(f.get(&Ipv4Addr::new(10, 213, 0, 2)).map(String::as_str), Some("1:11"));
        assert_eq!(f.get(&Ipv4Addr::new(10, 213, 0, 3)).map(String::as_str), Some("1:12"));
    }

    #[test]
    fn tc_text_is_read_back() {
        let out = "class htb 1:1 root rate 1Gbit ceil 1Gbit burst 1375b cburst 1375b \n \
                   Sent 123 bytes 2 pkt (dropped 0, overlimits 0 requeues 0) \n\
                   class htb 1:1f parent 1:1 prio 0 rate 1500Kbit ceil 50Mbit burst 3028b cburst 62500b \n \
                   Sent 4567 bytes 9 pkt (dropped 1, overlimits 0 requeues 0) \n";
        let st = class_stats(out);
        let class = |id: &str| st.get(id).map(|c| Class { rate: c.rate, ceil: c.ceil });
        assert_eq!(class("1:1f"), Some(Class { rate: 1_500_000, ceil: 50_000_000 }));
        assert_eq!(class("1:1"), Some(Class { rate: 1_000_000_000, ceil: 1_000_000_000 }));
        assert_eq!(class("1:2"), None);
        let bytes: BTreeMap<String, u64> = st.iter().map(|(id, c)| (id.clone(), c.bytes)).collect();
        assert_eq!(bytes, [("1:1".to_owned(), 123), ("1:1f".to_owned(), 4567)].into_iter().collect());
        assert_eq!(parse_rate("8Kbit"), Some(8000));
        assert_eq!(parse_rate("12bit"), Some(12));
        assert_eq!(parse_rate("1.5Gbit"), Some(1_500_000_000));
        assert_eq!(parse_rate("fast"), None);
        assert_eq!(classid(15), "1:1f");
        assert_eq!(qdisc_kinds(r#"[{"kind":"noqueue"},{"kind":"clsact","handle":"ffff:"}]"#), ["noqueue", "clsact"]);
        assert!(qdisc_kinds("garbage").is_empty());
    }

    #[test]
    fn removing_a_half_made_vm_removes_what_there_is_both_ways() {
        let host = Arc::new(RecordingHost::new());
        let s = Shaper::new(host.clone(), 1_000_000_000);
        host.reply(
            "tc -s class show",
            "class htb 1:13 parent 1:1 prio 0 rate 8Kbit ceil 100Mbit burst 3028b cburst 3028b \n \
             Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) \n",
        );
        // Its upward filter was never made: that deletion fails as "not found".
        host.fail("tc -batch -", 1, "Error: Filter with specified priority/protocol not found.");
        s.remove(3).unwrap();
        let batches: Vec<String> = host.calls().iter().filter_map(|c| c.input.clone()).collect();
        assert_eq!(
            batches,
            [
                "filter del dev plabup parent 1: prio 1 handle 800::4 protocol all u32\n",
                "class del dev plabup classid 1:13\n",
                "filter del dev plabdn parent 1: prio 1 handle 800::4 protocol ip u32\n",
                "class del dev plabdn classid 1:13\n",
            ]
        );
        // Another failure is reported, after both directions were tried.
        host.fail("tc -batch -", 1, "RTNETLINK answers: Operation not permitted");
        assert!(s.remove(3).is_err());
        assert_eq!(host.calls().iter().filter(|c| c.input.is_some()).count(), 8);
    }

    #[test]
    fn a_vm_gets_a_class_and_a_filter_per_direction_and_its_port_redirects_to_both() {
        let host = Arc::new(RecordingHost::new());
        let s = Shaper::new(host.clone(), 1_000_000_000);
        let (up, down) = (Class { rate: 8000, ceil: 1_500_000 }, Class { rate: 8000, ceil: 50_000_000 });
        s.set(3, "10.213.0.4".parse().unwrap(), up, down).unwrap();
        let text = host.calls()[0].input.clone().unwrap_or_default();
        assert!(text.contains("class replace dev plabup parent 1:1 classid 1:13 htb rate 8000bit ceil 1500000bit burst 3028b cburst 3028b"), "{text}");
        assert!(text.contains("class replace dev plabdn parent 1:1 classid 1:13 htb rate 8000bit ceil 50000000bit burst 3028b cburst 62500b"), "{text}");
        assert!(text.contains("filter replace dev plabup parent 1: prio 1 handle 800::4 protocol all u32 match u32 0x02000ad5 0xffffffff at -8 match u16 0x0004 0xffff at -4 flowid 1:13"), "{text}");
        assert!(text.contains("match ip dst 10.213.0.4/32 flowid 1:13"), "{text}");
        host.clear();
        host.reply("tc -j qdisc show dev pv3", r#"[{"kind":"noqueue"}]"#);
        s.attach("pv3", "10.213.0.4".parse().unwrap()).unwrap();
        let text = host.calls()[1].input.clone().unwrap_or_default();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "qdisc add dev pv3 clsact",
                "filter add dev pv3 ingress prio 1 protocol all u32 match u32 0x02000ad5 0xffffffff at -8 match u16 0x0004 0xffff at -4 action mirred egress redirect dev plabup",
                "filter add dev pv3 ingress prio 2 protocol all u32 match u32 0 0 action mirred egress redirect dev plabnull",
                "filter add dev pv3 egress prio 1 protocol all u32 match u32 0 0 action mirred egress redirect dev plabdn",
            ]
        );
        // Again on a running VM: the old clsact goes first.
        host.clear();
        host.reply("tc -j qdisc show dev pv3", r#"[{"kind":"noqueue"},{"kind":"clsact"}]"#);
        s.attach("pv3", "10.213.0.4".parse().unwrap()).unwrap();
        assert!(host.calls()[1]
            .input
            .clone()
            .unwrap_or_default()
            .starts_with("qdisc del dev pv3 clsact\nqdisc add dev pv3 clsact\n"));
        assert!(s
            .set(MAX_SHAPED, "10.213.0.4".parse().unwrap(), up, down)
            .unwrap_err()
            .to_string()
            .contains("at most"));
    }

    #[test]
    fn the_ceiling_drops_once_the_windows_budget_is_spent_and_returns_with_the_next_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(100);
        let mut m = Meter::new(window, t0, [1000, 5000]);
        // 1 Mbit/s over 100 s: a budget of 12.5 MB per direction.
        assert!(!m.tick(t0 + Duration::from_secs(10), [1000 + 12_499_999, 5000], 1_000_000));
        assert_eq!(m.capped(), [false, false]);
        assert!(m.tick(t0 + Duration::from_secs(20), [1000 + 12_500_000, 5000 + 10], 1_000_000));
        assert_eq!(m.capped(), [true, false], "only the direction that spent its budget");
        assert!(!m.tick(t0 + Duration::from_secs(30), [1000 + 12_500_001, 5000 + 10], 1_000_000));
        assert!(m.tick(t0 + Duration::from_secs(100), [20_000_000, 6000], 1_000_000), "a new window");
        assert_eq!(m.capped(), [false, false]);
        // A counter that starts again from zero (the class was made again) opens a new window.
        let mut m = Meter::new(window, t0, [1000, 1000]);
        m.tick(t0 + Duration::from_secs(1), [20_000_000, 1000], 1_000_000);
        assert!(m.tick(t0 + Duration::from_secs(2), [10, 10], 1_000_000));
        assert_eq!(m.capped(), [false, false]);
        // No sustained rate: never capped.
        let mut m = Meter::new(window, t0, [0, 0]);
        assert!(!m.tick(t0 + Duration::from_secs(1), [u64::MAX / 2, 0], 0));
    }
}
