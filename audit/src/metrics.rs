//! Prometheus text-format metrics (`GET /metrics`): per VM (with its slice) the bytes,
//! packets and drops of its bandwidth classes in each direction, its current rate (from
//! the change since the previous scrape) and ceiling, read from the kernel's HTB classes
//! that the node manager keeps; and per captured interface, the packets seen and those
//! the capture lost.

use crate::store::VmMeta;
use plab_nm::shaping::{class_stats, filter_classes, ClassStats, DOWN, UP};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One captured interface's counters.
#[derive(Clone)]
pub struct CaptureCounters {
    /// Packets seen.
    pub packets: Arc<AtomicU64>,
    /// Packets the capture lost (libpcap's drop counters).
    pub drops: Arc<AtomicU64>,
}

/// A (direction, VM) whose byte count was last seen when.
type Sample = (&'static str, String);

/// What the metrics are made from, shared with the capture manager.
#[derive(Default)]
pub struct Metrics {
    /// The VMs captured now.
    pub vms: Mutex<Vec<VmMeta>>,
    /// Capture counters by interface.
    pub captures: Mutex<BTreeMap<String, CaptureCounters>>,
    previous: Mutex<HashMap<Sample, (Instant, u64)>>,
}

/// One direction's classes and which VM address goes to which.
pub struct Tree {
    /// `up` (what VMs send) or `down` (what they receive).
    pub direction: &'static str,
    /// Classes by id.
    pub classes: BTreeMap<String, ClassStats>,
    /// Class id by VM address.
    pub filters: BTreeMap<Ipv4Addr, String>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The metrics text for `vms`, with `rate` giving each (direction, VM) its current rate.
pub fn render(
    vms: &[VmMeta],
    trees: &[Tree],
    captures: &BTreeMap<String, (u64, u64)>,
    mut rate: impl FnMut(&'static str, &str, u64) -> Option<f64>,
) -> String {
    let mut out = String::new();
    let families: [(&str, &str, &str); 5] = [
        (
            "plab_vm_bytes_total",
            "counter",
            "Bytes a VM sent (up) or received (down), as its bandwidth class counted them.",
        ),
        ("plab_vm_packets_total", "counter", "Packets a VM sent (up) or received (down)."),
        ("plab_vm_drops_total", "counter", "Packets of a VM dropped by its bandwidth class."),
        ("plab_vm_rate_bits_per_second", "gauge", "A VM's rate since the previous scrape."),
        (
            "plab_vm_ceil_bits_per_second",
            "gauge",
            "A VM's ceiling in force (burst_rate, or sustained_rate once its budget is spent).",
        ),
    ];
    for (i, (name, kind, help)) in families.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for t in trees {
            for v in vms {
                let Some(st) = t.filters.get(&v.vm_addr).and_then(|id| t.classes.get(id)) else { continue };
                let labels =
                    format!("slice=\"{}\",vm=\"{}\",direction=\"{}\"", escape(&v.slice), escape(&v.vm), t.direction);
                let value = match i {
                    0 => st.bytes.to_string(),
                    1 => st.packets.to_string(),
                    2 => st.drops.to_string(),
                    3 => match rate(t.direction, &v.vm, st.bytes) {
                        Some(r) => format!("{r:.0}"),
                        None => continue,
                    },
                    _ => st.ceil.to_string(),
                };
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    }
    let _ = writeln!(out, "# HELP plab_audit_captured_packets_total Packets the auditing service saw on an interface.\n# TYPE plab_audit_captured_packets_total counter");
    for (iface, (p, _)) in captures {
        let _ = writeln!(out, "plab_audit_captured_packets_total{{interface=\"{}\"}} {p}", escape(iface));
    }
    let _ = writeln!(out, "# HELP plab_audit_capture_drops_total Packets the capture lost on an interface.\n# TYPE plab_audit_capture_drops_total counter");
    for (iface, (_, d)) in captures {
        let _ = writeln!(out, "plab_audit_capture_drops_total{{interface=\"{}\"}} {d}", escape(iface));
    }
    out
}

impl Metrics {
    /// Reads the kernel's classes and renders the metrics.
    pub fn scrape(&self) -> String {
        let tc = |args: &[&str]| {
            std::process::Command::new("tc")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        // A VM's class has the same id in both trees; the downward filters name it by the
        // VM's address (the upward ones by its MAC).
        let filters = filter_classes(&tc(&["filter", "show", "dev", DOWN]));
        let trees: Vec<Tree> = [("up", UP), ("down", DOWN)]
            .into_iter()
            .map(|(direction, dev)| Tree {
                direction,
                classes: class_stats(&tc(&["-s", "class", "show", "dev", dev])),
                filters: filters.clone(),
            })
            .collect();
        let vms = self.vms.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let captures: BTreeMap<String, (u64, u64)> = self
            .captures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(i, c)| (i.clone(), (c.packets.load(Ordering::Relaxed), c.drops.load(Ordering::Relaxed))))
            .collect();
        let mut previous = self.previous.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        render(&vms, &trees, &captures, |dir, vm, bytes| {
            let before = previous.insert((dir, vm.to_owned()), (now, bytes))?;
            let secs = now.duration_since(before.0).as_secs_f64();
            (secs > 0.0 && bytes >= before.1).then(|| (bytes - before.1) as f64 * 8.0 / secs)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_vm_gets_its_classes_counters_under_its_slice() {
        let vm = VmMeta {
            vm: "plc_a".into(),
            slice: "plc.a".into(),
            users: vec![],
            iface: "pv1".into(),
            vm_addr: [10, 213, 0, 2].into(),
            public_addr: None,
            nat_ports: None,
            vm_net: None,
        };
        let st = ClassStats { bytes: 1000, packets: 10, drops: 2, rate: 8000, ceil: 1_500_000 };
        let tree = |direction| Tree {
            direction,
            classes: [("1:11".to_owned(), st)].into_iter().collect(),
            filters: [(Ipv4Addr::new(10, 213, 0, 2), "1:11".to_owned())].into_iter().collect(),
        };
        let caps = [("pv1".to_owned(), (55, 1))].into_iter().collect();
        let text = render(&[vm], &[tree("up"), tree("down")], &caps, |_, _, b| Some(b as f64));
        for line in [
            "plab_vm_bytes_total{slice=\"plc.a\",vm=\"plc_a\",direction=\"up\"} 1000",
            "plab_vm_packets_total{slice=\"plc.a\",vm=\"plc_a\",direction=\"down\"} 10",
            "plab_vm_drops_total{slice=\"plc.a\",vm=\"plc_a\",direction=\"up\"} 2",
            "plab_vm_rate_bits_per_second{slice=\"plc.a\",vm=\"plc_a\",direction=\"up\"} 1000",
            "plab_vm_ceil_bits_per_second{slice=\"plc.a\",vm=\"plc_a\",direction=\"down\"} 1500000",
            "plab_audit_captured_packets_total{interface=\"pv1\"} 55",
            "plab_audit_capture_drops_total{interface=\"pv1\"} 1",
            "# TYPE plab_vm_bytes_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
}
