//! The node network around each VM: its place in the wire policy and NAT
//! ([`crate::network`]) and its bandwidth ([`crate::shaping`]).
//!
//! Order matters for a hostile VM: a VM's port is in the policy before the backend makes
//! the VM (so its first frame is already filtered), its shaping is applied once the
//! interface exists (after each start), and the sustained-rate meters run in the upkeep.

use super::{NmError, NodeManager, Sliver};
use crate::network::{NodeNet, VmPort};
use crate::shaping::{rates, Class, ClassStats, Meter, Shaper};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_types::host::Host;
use vm_types::{BackendError, VmNetwork};

/// The node's network machinery (absent for a node manager without real VMs).
pub struct Network {
    net: NodeNet,
    shaper: Shaper,
    meters: Mutex<HashMap<u32, Meter>>,
    window: Duration,
}

impl Network {
    /// Network policy and shaping through `host` for a node with settings `cfg`.
    pub fn new(host: Arc<dyn Host>, cfg: &crate::Config) -> Network {
        Network {
            net: NodeNet::new(host.clone(), cfg),
            shaper: Shaper::new(host, cfg.node_rate.saturating_mul(1_000_000)),
            meters: Mutex::new(HashMap::new()),
            window: Duration::from_secs(cfg.sustained_window_secs),
        }
    }

    fn meters(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Meter>> {
        self.meters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The classes (what it sends, what it receives) for `s` with each direction's sustained
/// cap.
fn classes(s: &Sliver, capped: [bool; 2], default_burst: u64) -> (Class, Class) {
    let (base, burst, sustained) = rates(&s.resources, default_burst);
    let class = |cap: bool| {
        let ceil = if cap && sustained > 0 { sustained.max(base).min(burst) } else { burst };
        Class { rate: base, ceil }
    };
    (class(capped[0]), class(capped[1]))
}

impl NodeManager {
    fn network_of(&self, s: &Sliver) -> VmNetwork {
        VmNetwork {
            index: s.index,
            address: s.address,
            prefix_len: self.cfg.vm_prefix.len,
            gateway: self.cfg.vm_prefix.gateway(),
        }
    }

    /// VM `s`'s host interface, when its backend makes one.
    fn interface_of(&self, s: &Sliver) -> Option<String> {
        self.registry.get(s.vm.vm_type)?.host_interface(&self.network_of(s))
    }

    fn port_of(&self, s: &Sliver) -> VmPort {
        VmPort { address: s.address, mac: vm_types::vm_mac(s.address), ifname: self.interface_of(s) }
    }

    /// VM `s`'s classes as its RSpec and its meter say.
    fn set_classes(&self, n: &Network, s: &Sliver) -> Result<(), BackendError> {
        let capped = n.meters().get(&s.index).map(Meter::capped).unwrap_or_default();
        let (up, down) = classes(s, capped, self.cfg.default_burst_rate);
        n.shaper.set(s.index, s.address, up, down)
    }

    /// Writes the node's whole network policy and bandwidth classes for every recorded
    /// VM (at start).
    pub fn install_network(&self) -> Result<(), BackendError> {
        let Some(n) = &self.network else { return Ok(()) };
        let slivers: Vec<Sliver> = self.tables().slivers.values().cloned().collect();
        n.net.install(slivers.iter().map(|s| (s.index, self.port_of(s))).collect())?;
        n.shaper.install()?;
        for s in &slivers {
            self.set_classes(n, s)?;
        }
        Ok(())
    }

    /// Puts VM `s` into the policy and gives it its bandwidth classes, before it is made.
    pub(crate) fn attach_vm(&self, s: &Sliver) -> Result<(), NmError> {
        let Some(n) = &self.network else { return Ok(()) };
        n.net.add(s.index, self.port_of(s)).map_err(NmError::backend("network policy"))?;
        self.set_classes(n, s).map_err(NmError::backend("bandwidth"))
    }

    /// Takes VM number `index` (at `address`) out of the policy, forgets its tracked
    /// connections and drops its classes.
    pub(crate) fn detach_vm(&self, index: u32, address: std::net::Ipv4Addr) {
        let Some(n) = &self.network else { return };
        if let Err(e) = n.net.remove(index) {
            tracing::error!(index, "network policy: removing a VM: {e}");
        }
        if let Err(e) = n.net.forget_connections(address) {
            tracing::error!(index, %address, "conntrack: forgetting a destroyed VM's connections: {e}");
        }
        if let Err(e) = n.shaper.remove(index) {
            tracing::error!(index, "bandwidth: removing a VM's classes: {e}");
        }
        n.meters().remove(&index);
    }

    /// Shapes VM `name` as its RSpec says: its classes (live, when its rates changed) and,
    /// when its interface exists (after a start), the redirect of its traffic through them.
    pub(crate) fn shape_vm(&self, name: &str) -> Result<(), NmError> {
        let Some(n) = &self.network else { return Ok(()) };
        let Some(s) = self.tables().slivers.get(name).cloned() else { return Ok(()) };
        self.set_classes(n, &s).map_err(NmError::backend("bandwidth"))?;
        if let Some(dev) = self.interface_of(&s).filter(|d| n.net.link_exists(d)) {
            n.shaper.attach(&dev, s.address).map_err(NmError::backend("bandwidth"))?;
        }
        // The sustained-rate window opens when the VM first runs.
        if !n.meters().contains_key(&s.index) {
            let id = crate::shaping::classid(s.index);
            if let Ok(trees) = n.shaper.classes() {
                let bytes = trees.map(|t| t.get(&id).map_or(0, |c| c.bytes));
                n.meters().entry(s.index).or_insert_with(|| Meter::new(n.window, Instant::now(), bytes));
            }
        }
        Ok(())
    }

    /// One round of the sustained-rate meters: a VM that spent its window's budget in a
    /// direction has that ceiling lowered, and gets it back with the next window.
    pub(crate) fn meter_round(&self) {
        let Some(n) = &self.network else { return };
        let counters = match n.shaper.classes() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("sustained rate: reading the counters: {e}");
                return;
            }
        };
        let slivers: Vec<Sliver> = self.tables().slivers.values().cloned().collect();
        let now = Instant::now();
        for s in slivers {
            let id = crate::shaping::classid(s.index);
            let (Some(up), Some(down)) = (counters[0].get(&id), counters[1].get(&id)) else { continue };
            let (up, down) = (&up.bytes, &down.bytes);
            let (_, _, sustained) = rates(&s.resources, self.cfg.default_burst_rate);
            let changed = {
                let mut m = n.meters();
                let meter = m.entry(s.index).or_insert_with(|| Meter::new(n.window, now, [*up, *down]));
                meter.tick(now, [*up, *down], sustained)
            };
            if changed {
                tracing::info!(vm = %s.name, capped = ?n.meters().get(&s.index).map(Meter::capped), "sustained rate");
                if let Err(e) = self.set_classes(n, &s) {
                    tracing::warn!(vm = %s.name, "sustained rate: {e}");
                }
            }
        }
    }

    /// The bandwidth classes in force (up, down), read once for every VM a call reports.
    pub(crate) fn bandwidth_classes(&self) -> Option<[BTreeMap<String, ClassStats>; 2]> {
        self.network.as_ref()?.shaper.classes().ok()
    }

    /// What an operator sees of VM `name`'s network: its interface and the rates in force,
    /// read back from the kernel (`classes`, from [`NodeManager::bandwidth_classes`]).
    pub(crate) fn network_details(
        &self,
        name: &str,
        classes: Option<&[BTreeMap<String, ClassStats>; 2]>,
    ) -> BTreeMap<String, String> {
        let mut d = BTreeMap::new();
        let Some(n) = &self.network else { return d };
        let Some(s) = self.tables().slivers.get(name).cloned() else { return d };
        if let Some(dev) = self.interface_of(&s) {
            d.insert("interface".into(), dev);
        }
        let id = crate::shaping::classid(s.index);
        for (dir, tree) in ["up", "down"].into_iter().zip(classes.into_iter().flatten()) {
            if let Some(c) = tree.get(&id) {
                d.insert(format!("rate_{dir}_bps"), c.rate.to_string());
                d.insert(format!("ceil_{dir}_bps"), c.ceil.to_string());
            }
        }
        if let Some(m) = n.meters().get(&s.index) {
            let c = m.capped();
            d.insert("sustained_capped".into(), format!("up={} down={}", c[0], c[1]));
        }
        d
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_direction_falls_to_the_sustained_rate_but_never_below_the_base_rate() {
        let xml = r#"<VServerSlice name="plc.a"><resources base_rate="2000" burst_rate="50" sustained_rate="1.5"/></VServerSlice>"#;
        let rspec = vm_types::RSpec::from_xml(xml).unwrap();
        let vm_types::RSpecClass::Slice(vm) = rspec.class.clone() else { panic!() };
        let s = Sliver {
            name: "plc_a".into(),
            slice: vm_types::SliceName::parse("plc.a").unwrap(),
            resources: rspec.resources,
            vm,
            index: 1,
            address: "10.213.0.2".parse().unwrap(),
            wanted: crate::api::Wanted::Running,
        };
        let (up, down) = classes(&s, [false, true], 100);
        assert_eq!(up, Class { rate: 2_000_000, ceil: 50_000_000 });
        assert_eq!(down, Class { rate: 2_000_000, ceil: 2_000_000 }, "the base rate is guaranteed even when capped");
    }
}
