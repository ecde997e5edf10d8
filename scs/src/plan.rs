//! What to do to make a node run what its slice authority says: a pure function from
//! what is wanted (the authority's slices for the node, and slices redeemed by ticket) and
//! what the node manager has, to a list of node manager calls. It reads no clock and calls
//! nothing, so every case is tested here without a node.

use plab_nm::api::Wanted;
use std::collections::BTreeMap;
use vm_types::{Quantity, RSpec, RSpecClass, Resources, SliceName, SliceRSpec, SshKey, VmState};

/// Where a wanted slice comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The authority's list for this node (central instantiation).
    Central,
    /// A ticket a user redeemed here (delegated instantiation).
    Ticket,
}

/// A slice that should have a VM on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The slice.
    pub name: SliceName,
    /// The authority's id for it (a slice deleted and made again gets a new one).
    pub id: Option<i64>,
    /// Should its VM run?
    pub run: bool,
    /// When it expires, Unix seconds.
    pub expires: i64,
    /// Its VM: type, keys, bootscript.
    pub vm: SliceRSpec,
    /// Its resources.
    pub resources: Resources,
    /// Where it comes from.
    pub source: Source,
}

/// A VM the node manager has that this service made (from its authority's pools).
#[derive(Debug, Clone, PartialEq)]
pub struct Have {
    /// The VM's name.
    pub vm: String,
    /// Its slice.
    pub slice: SliceName,
    /// What the node manager wants it to be.
    pub wanted: Wanted,
    /// What it is.
    pub live: Option<VmState>,
    /// Its VM (keys, bootscript) as recorded.
    pub spec: SliceRSpec,
    /// Its resources.
    pub resources: Resources,
    /// The slice id it was made for, as this service recorded it.
    pub slice_id: Option<i64>,
}

/// One node manager call to make.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Split a pool for the slice's VM and bind it (creates and starts the VM).
    Create(Box<Desired>),
    /// Split a pool with these resources (and the slice's keys) and bind it to the
    /// existing VM, which grows by that much.
    Grow {
        /// The VM.
        vm: String,
        /// The slice.
        slice: SliceName,
        /// What to add.
        extra: Resources,
        /// The slice's VM (its type and keys go into the added pool's RSpec).
        spec: SliceRSpec,
    },
    /// Replace the VM's keys and bootscript.
    Update {
        /// The VM.
        vm: String,
        /// Every key.
        keys: Vec<SshKey>,
        /// The bootscript.
        bootscript: Option<String>,
    },
    /// Start it.
    Start(String),
    /// Stop it.
    Stop(String),
    /// Remove it.
    Destroy(String),
    /// Give an unbound pool back to the pool it was split from.
    DropPool(String),
}

/// How a slice's VM differs from what is wanted, short of remaking it.
fn adjustments(want: &Desired, have: &Have, out: &mut Vec<Action>) {
    if have.spec.keys != want.vm.keys || have.spec.bootscript != want.vm.bootscript {
        out.push(Action::Update {
            vm: have.vm.clone(),
            keys: want.vm.keys.clone(),
            bootscript: want.vm.bootscript.clone(),
        });
    }
    // Resources only grow on a live VM; less than it has waits for the VM to be made again.
    let mut extra = Resources::default();
    let mut grows = false;
    for (attr, _) in Resources::ATTRIBUTES {
        let (w, h) = (want.resources.get(attr).unwrap_or_default(), have.resources.get(attr).unwrap_or_default());
        if w > h {
            extra.set(attr, Quantity::from_milli(w.milli() - h.milli()));
            grows = true;
        }
    }
    if grows {
        out.push(Action::Grow { vm: have.vm.clone(), slice: want.name.clone(), extra, spec: want.vm.clone() });
    }
    let running = have.live == Some(VmState::Running);
    if want.run && (!running || have.wanted != Wanted::Running) {
        out.push(Action::Start(have.vm.clone()));
    }
    if !want.run && (running || have.wanted == Wanted::Running) {
        out.push(Action::Stop(have.vm.clone()));
    }
}

/// The calls that make `have` into `want` at time `now`. `loose_pools` are pools split
/// from this service's pools that no VM holds (left by an interrupted create): they are
/// given back first, so their resources are there for what follows.
pub fn plan(want: &[Desired], have: &[Have], loose_pools: &[String], now: i64) -> Vec<Action> {
    let mut out: Vec<Action> = loose_pools.iter().cloned().map(Action::DropPool).collect();
    // One entry per slice: the authority's list wins over a ticket when it runs the slice;
    // a slice it lists as stopped (or not yet started) does not undo a ticket redeemed
    // since (the authority lists a slice until the ticket's delegation reaches the node).
    let mut wanted: BTreeMap<&SliceName, &Desired> = BTreeMap::new();
    for d in want.iter().filter(|d| d.expires > now) {
        let replace = match wanted.get(&d.name) {
            None => true,
            Some(prev) => match (prev.source, d.source) {
                (Source::Central, Source::Ticket) => !prev.run,
                (Source::Ticket, Source::Central) => d.run,
                _ => false,
            },
        };
        if replace {
            wanted.insert(&d.name, d);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for h in have {
        match wanted.get(&h.slice) {
            // Gone from the authority, expired, or never ours to keep: stopped, then removed.
            None => {
                if h.wanted == Wanted::Running || h.live == Some(VmState::Running) {
                    out.push(Action::Stop(h.vm.clone()));
                }
                out.push(Action::Destroy(h.vm.clone()));
            }
            Some(d) => {
                seen.insert(&h.slice);
                let remade = matches!((d.id, h.slice_id), (Some(a), Some(b)) if a != b);
                // A record whose VM the backend no longer holds cannot be started: remake it.
                let lost = h.live == Some(VmState::Missing);
                let other_type = h.spec.vm_type != d.vm.vm_type;
                if remade || lost || other_type {
                    out.push(Action::Destroy(h.vm.clone()));
                    if d.run {
                        out.push(Action::Create(Box::new((*d).clone())));
                    }
                } else {
                    adjustments(d, h, &mut out);
                }
            }
        }
    }
    for (name, d) in &wanted {
        if !seen.contains(name) && d.run {
            out.push(Action::Create(Box::new((*d).clone())));
        }
    }
    out
}

/// The wanted slice a slice RSpec (from the authority, or a ticket) describes.
pub fn desired(
    name: &SliceName,
    id: Option<i64>,
    run: bool,
    expires: i64,
    rspec: &RSpec,
    source: Source,
) -> Result<Desired, String> {
    let RSpecClass::Slice(vm) = &rspec.class else {
        return Err(format!("{name}: the authority's RSpec is a {}, not a slice's", rspec.class_name()));
    };
    if let Some(n) = &vm.name {
        if n != name {
            return Err(format!("{name}: the RSpec names slice {n}"));
        }
    }
    let mut vm = vm.clone();
    vm.name = Some(name.clone());
    Ok(Desired { name: name.clone(), id, run, expires, vm, resources: rspec.resources, source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vm_types::VmType;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINvd4JWqGILryt7c7j2YX8GNJTHiRXgCbcOQj+vURAyx alice@example.org";
    const KEY2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBk4pK5IYqk/NsoJWXGxbqUZBMzIjzY2JwqXEhyS6H7T bob@example.org";

    fn spec(keys: &[&str], boot: Option<&str>) -> SliceRSpec {
        SliceRSpec {
            name: None,
            vm_type: VmType::LinuxVserverX86,
            keys: keys.iter().map(|k| SshKey::parse(k).unwrap()).collect(),
            bootscript: boot.map(str::to_owned),
        }
    }

    fn want(name: &str, id: i64, run: bool) -> Desired {
        Desired {
            name: SliceName::parse(name).unwrap(),
            id: Some(id),
            run,
            expires: 1000,
            vm: spec(&[KEY], Some("x")),
            resources: Resources::spec_default(),
            source: Source::Central,
        }
    }

    fn have(name: &str, id: i64) -> Have {
        let slice = SliceName::parse(name).unwrap();
        Have {
            vm: slice.login(),
            slice,
            wanted: Wanted::Running,
            live: Some(VmState::Running),
            spec: spec(&[KEY], Some("x")),
            resources: Resources::spec_default(),
            slice_id: Some(id),
        }
    }

    #[test]
    fn nothing_to_do_when_the_node_matches() {
        assert_eq!(plan(&[want("plc.a", 1, true)], &[have("plc.a", 1)], &[], 10), vec![]);
    }

    #[test]
    fn new_slices_are_made_and_stopped_ones_are_not() {
        let p = plan(&[want("plc.a", 1, true), want("plc.b", 2, false)], &[], &[], 10);
        assert!(matches!(p.as_slice(), [Action::Create(d)] if d.name.as_str() == "plc.a"), "{p:?}");
    }

    #[test]
    fn slices_gone_from_the_authority_are_stopped_then_removed() {
        let p = plan(&[], &[have("plc.a", 1)], &[], 10);
        assert_eq!(p, vec![Action::Stop("plc_a".into()), Action::Destroy("plc_a".into())]);
        let mut stopped = have("plc.b", 2);
        (stopped.wanted, stopped.live) = (Wanted::Stopped, Some(VmState::Stopped));
        assert_eq!(plan(&[], &[stopped], &[], 10), vec![Action::Destroy("plc_b".into())]);
    }

    #[test]
    fn expired_slices_go_even_if_the_authority_still_lists_them() {
        let p = plan(&[want("plc.a", 1, true)], &[have("plc.a", 1)], &[], 1000);
        assert_eq!(p, vec![Action::Stop("plc_a".into()), Action::Destroy("plc_a".into())]);
    }

    #[test]
    fn a_slice_made_again_under_its_name_gets_a_fresh_vm() {
        let p = plan(&[want("plc.a", 2, true)], &[have("plc.a", 1)], &[], 10);
        assert!(
            matches!(p.as_slice(), [Action::Destroy(v), Action::Create(d)] if v == "plc_a" && d.id == Some(2)),
            "{p:?}"
        );
        // Unknown id (the service's records were lost): the VM is kept.
        let mut h = have("plc.a", 1);
        h.slice_id = None;
        assert_eq!(plan(&[want("plc.a", 2, true)], &[h], &[], 10), vec![]);
    }

    #[test]
    fn keys_bootscript_resources_and_run_state_follow_the_authority() {
        let mut w = want("plc.a", 1, false);
        w.vm = spec(&[KEY2], None);
        w.resources.mem_limit = Quantity::whole(512);
        w.resources.cpu_share = Quantity::from_milli(500);
        let p = plan(&[w], &[have("plc.a", 1)], &[], 10);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(matches!(&p[0], Action::Update { keys, bootscript: None, .. } if keys[0].as_str() == KEY2));
        let Action::Grow { extra, .. } = &p[1] else { panic!("{p:?}") };
        assert_eq!(extra.mem_limit, Quantity::whole(256), "only what is missing");
        assert_eq!(extra.cpu_share, Quantity::ZERO, "less cpu waits for the VM to be made again");
        assert_eq!(p[2], Action::Stop("plc_a".into()));
        let mut h = have("plc.a", 1);
        (h.wanted, h.live) = (Wanted::Stopped, Some(VmState::Stopped));
        assert_eq!(plan(&[want("plc.a", 1, true)], &[h], &[], 10), vec![Action::Start("plc_a".into())]);
    }

    #[test]
    fn a_vm_the_backend_lost_is_made_again_and_loose_pools_go_back_first() {
        let mut h = have("plc.a", 1);
        h.live = Some(VmState::Missing);
        let p = plan(&[want("plc.a", 1, true)], &[h], &["ab".into()], 10);
        assert!(
            matches!(p.as_slice(), [Action::DropPool(r), Action::Destroy(_), Action::Create(_)] if r == "ab"),
            "{p:?}"
        );
    }

    #[test]
    fn the_authority_wins_over_a_ticket_for_the_same_slice_when_it_runs_it() {
        let mut t = want("plc.a", 1, true);
        t.source = Source::Ticket;
        t.vm = spec(&[KEY2], None);
        let c = want("plc.a", 1, true);
        let p = plan(&[t.clone(), c.clone()], &[have("plc.a", 1)], &[], 10);
        assert_eq!(p, vec![], "the central spec is what the VM has");
        let p = plan(&[c, t.clone()], &[have("plc.a", 1)], &[], 10);
        assert_eq!(p, vec![]);
        // Listed but not started: the ticket's VM is made, in either order.
        let stopped = want("plc.a", 1, false);
        for list in [vec![stopped.clone(), t.clone()], vec![t.clone(), stopped.clone()]] {
            let p = plan(&list, &[], &[], 10);
            assert!(matches!(p.as_slice(), [Action::Create(d)] if d.source == Source::Ticket), "{p:?}");
        }
    }

    #[test]
    fn a_slice_rspec_naming_another_slice_is_refused() {
        let r = RSpec::from_xml(r#"<VServerSlice name="plc.b"><resources mem_limit="64"/></VServerSlice>"#).unwrap();
        let e = desired(&SliceName::parse("plc.a").unwrap(), None, true, 10, &r, Source::Central).unwrap_err();
        assert!(e.contains("names slice plc.b"), "{e}");
        let pool = RSpec::from_xml(r#"<PoolRSpec><resources mem_limit="64"/></PoolRSpec>"#).unwrap();
        assert!(desired(&SliceName::parse("plc.a").unwrap(), None, true, 10, &pool, Source::Central).is_err());
    }
}
