//! `Bind(rcap, slice_name)` (section 4.3): binds a pool to the slice's VM, creating and
//! starting the VM if it does not exist, else adding the pool's resources (and keys, and
//! a new bootscript) to it.
//!
//! [`plan`] decides from the tables alone what a Bind will do, and changes nothing;
//! [`NodeManager::bind`] reserves the pool, applies the plan through the backend, and
//! records the result, undoing what it did when a step fails.

use super::{blocking, Caller, NmError, NodeManager, Pool, Sliver, Tables, MIN_VM_MEM_MB};
use crate::api::{VmInfo, Wanted};
use crate::config::Prefix;
use crate::store::VmRow;
use std::sync::Arc;
use vm_types::{RSpecClass, Resources, SliceName};

/// What a Bind will do.
#[derive(Debug, Clone)]
pub enum BindPlan {
    /// Make the slice's VM.
    New(Sliver),
    /// Add the pool to the slice's existing VM: the sliver as it is, and as it will be.
    Add {
        /// Now.
        old: Sliver,
        /// After the Bind.
        new: Sliver,
    },
}

impl BindPlan {
    /// The sliver as it will be.
    pub fn sliver(&self) -> &Sliver {
        match self {
            BindPlan::New(s) | BindPlan::Add { new: s, .. } => s,
        }
    }
}

/// Decides what binding `pool` to `slice`'s VM does. Pure: it reads the tables and the
/// node's memory size (`node_mem_mb`, when known) and changes nothing.
pub(crate) fn plan(
    t: &Tables,
    caller: &Caller,
    pool: &Pool,
    slice: &SliceName,
    prefix: &Prefix,
    node_mem_mb: Option<u64>,
) -> Result<BindPlan, NmError> {
    if let Some(vm) = &pool.vm {
        return Err(NmError::Conflict(format!("rcap: the pool is already bound to VM {vm}")));
    }
    if &pool.slice != slice && !matches!(caller, Caller::Owner) {
        return Err(NmError::PermissionDenied(format!(
            "slice_name: the pool belongs to {} and cannot be bound to {slice}",
            pool.slice
        )));
    }
    if let Some(b) = t.blacklisted(slice) {
        return Err(NmError::PermissionDenied(format!("slice_name: {slice} is blacklisted on this node (entry {b})")));
    }
    if t.is_service(slice) {
        return Err(NmError::PermissionDenied(format!(
            "slice_name: {slice} is one of this node's services; it runs on the node, never as a VM"
        )));
    }
    let RSpecClass::Slice(srs) = &pool.rspec.class else {
        return Err(NmError::InvalidRSpec(
            "rcap: the pool is a PoolRSpec; split off a slice RSpec (VServerSlice, ...) with the keys and bootscript first".into(),
        ));
    };
    if let Some(n) = &srs.name {
        if n != slice {
            return Err(NmError::invalid("slice_name", format!("the pool's RSpec is for slice {n}, not {slice}")));
        }
    }
    let name = slice.login();
    match t.slivers.get(&name) {
        Some(old) => {
            // Adding to a VM is for those who may act on it already: a service cannot take
            // over a VM the owner, the slice or another service made by binding a pool to it.
            if !t.may_act_on(caller, old) {
                return Err(NmError::PermissionDenied(format!(
                    "slice_name: VM {name} exists and was not made from your pools; it is not yours to add to"
                )));
            }
            if old.vm.vm_type != srs.vm_type {
                return Err(NmError::Conflict(format!(
                    "rspec: VM {name} is {}; a {} pool cannot be added to it",
                    old.vm.vm_type, srs.vm_type
                )));
            }
            let mut new = old.clone();
            new.resources =
                old.resources.checked_add(&pool.rspec.resources).map_err(|e| NmError::invalid("rspec", e))?;
            if let Some(total) = node_mem_mb {
                if new.resources.mem_limit.scaled(1) > total {
                    return Err(NmError::Resources(format!(
                        "mem_limit: VM {name} would hold {} MB, more than this node's memory ({total} MB)",
                        new.resources.mem_limit
                    )));
                }
            }
            for k in &srs.keys {
                if !new.vm.keys.contains(k) {
                    new.vm.keys.push(k.clone());
                }
            }
            if srs.bootscript.is_some() {
                new.vm.bootscript = srs.bootscript.clone();
            }
            Ok(BindPlan::Add { old: old.clone(), new })
        }
        None => {
            check_vm_minimums(&pool.rspec.resources, node_mem_mb)?;
            let index = (1..).find(|i| !t.slivers.values().any(|v| v.index == *i)).unwrap_or(1);
            let address = prefix
                .vm_address(index)
                .ok_or_else(|| NmError::Resources(format!("vm_prefix {prefix} has no address left for another VM")))?;
            let mut vm = srs.clone();
            vm.name = Some(slice.clone());
            Ok(BindPlan::New(Sliver {
                name,
                slice: slice.clone(),
                resources: pool.rspec.resources,
                vm,
                index,
                address,
                wanted: Wanted::Creating,
            }))
        }
    }
}

/// The node's memory in MB.
pub(crate) fn node_memory_mb() -> Option<u64> {
    nix::sys::sysinfo::sysinfo().ok().map(|i| i.ram_total() / (1 << 20))
}

/// Refuses a new VM smaller than a VM can be, or larger than the node.
pub(crate) fn check_vm_minimums(r: &Resources, node_mem_mb: Option<u64>) -> Result<(), NmError> {
    if let Some(total) = node_mem_mb {
        if r.mem_limit.scaled(1) > total {
            return Err(NmError::Resources(format!(
                "mem_limit: {} MB is more than this node's memory ({total} MB)",
                r.mem_limit
            )));
        }
    }
    if r.mem_limit.scaled(1) < MIN_VM_MEM_MB {
        return Err(NmError::Resources(format!(
            "mem_limit: the pool holds {} MB; a VM needs at least {MIN_VM_MEM_MB} MB",
            r.mem_limit
        )));
    }
    if r.cpu_share.milli() == 0 {
        return Err(NmError::Resources("cpu_share: the pool holds 0 shares; a VM needs some".into()));
    }
    if r.disk_quota.milli() < 16 {
        return Err(NmError::Resources(format!(
            "disk_quota: the pool holds {} GB; a VM needs at least 0.016 GB",
            r.disk_quota
        )));
    }
    Ok(())
}

/// The database row of a sliver.
pub(crate) fn row_of(s: &Sliver) -> VmRow {
    VmRow {
        name: s.name.clone(),
        slice: s.slice.to_string(),
        rspec: s.rspec().to_xml(),
        idx: s.index,
        address: s.address.to_string(),
        state: s.wanted.to_string(),
    }
}

impl NodeManager {
    pub(crate) async fn bind(
        self: &Arc<Self>,
        caller: &Caller,
        rcap: &str,
        slice: SliceName,
    ) -> Result<VmInfo, NmError> {
        let name = slice.login();
        let _guard = self.locks.lock(&name).await;
        // Decide and reserve in one critical section: the pool is marked bound (and a new
        // VM recorded) before the backend runs, so a concurrent SplitPool, DestroyPool or
        // Bind of the same rcap is refused instead of spending the pool twice.
        let (pool_id, plan, backend) = {
            let mut t = self.tables();
            let pool = t.pool(rcap)?;
            let pool_id = pool.id;
            // A VM may not be larger than the memory its VM type shares: a Xen host's, not
            // dom0's, where the node manager runs.
            let memory = match &pool.rspec.class {
                RSpecClass::Slice(s) => self.backend(s.vm_type).ok().and_then(|b| b.memory_mb()),
                RSpecClass::Pool(_) => None,
            }
            .or_else(node_memory_mb);
            let plan = plan(&t, caller, pool, &slice, &self.cfg.vm_prefix, memory)?;
            let backend = self.backend(plan.sliver().vm.vm_type)?;
            if let BindPlan::New(s) = &plan {
                self.store.bind_new(pool_id, &row_of(s))?;
                t.slivers.insert(s.name.clone(), s.clone());
            }
            if let Some(p) = t.pools.get_mut(&pool_id) {
                p.vm = Some(name.clone());
            }
            (pool_id, plan, backend)
        };
        match plan {
            BindPlan::Add { old, new } => {
                let (old_spec, new_spec) = (self.spec_of(&old), self.spec_of(&new));
                let b = backend.clone();
                let (o, n) = (old_spec.clone(), new_spec.clone());
                if let Err(e) = blocking(move || b.update(&o, &n)).await {
                    self.release_pool(pool_id);
                    return Err(NmError::Backend { op: "Bind", source: e });
                }
                let recorded = {
                    let mut t = self.tables();
                    self.store
                        .bind_existing(pool_id, &name, &new.rspec().to_xml())
                        .map(|()| t.slivers.insert(name.clone(), new))
                };
                if let Err(e) = recorded {
                    // The backend applied the change but it could not be recorded: put the VM
                    // back as the record says it is.
                    self.release_pool(pool_id);
                    let b = backend.clone();
                    if let Err(re) = blocking(move || b.update(&new_spec, &old_spec)).await {
                        tracing::error!(vm = %name, "Bind: undoing an unrecorded update failed: {re}");
                    }
                    return Err(e.into());
                }
                if let Err(e) = self.shape_vm(&name) {
                    tracing::error!(vm = %name, "Bind: the new rates are recorded but not applied: {e}");
                }
                tracing::info!(vm = %name, "Bind: resources added");
                Ok(self.vm_info(&Caller::Owner, &name, None)?)
            }
            BindPlan::New(sliver) => {
                let spec = self.spec_of(&sliver);
                let started = std::time::Instant::now();
                let result = match self.attach_vm(&sliver).and_then(|()| {
                    self.open_vm_socket(&name, slice.clone(), spec.network.index)
                        .map_err(|e| NmError::Internal(format!("VM socket: {e}")))
                }) {
                    Ok(()) => {
                        let b = backend.clone();
                        let s = spec.clone();
                        blocking(move || b.create(&s).and_then(|_| b.start(&s)))
                            .await
                            .map_err(NmError::backend("Bind"))
                            .and_then(|()| self.shape_vm(&name))
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {
                        self.set_wanted(&name, Wanted::Running)?;
                        tracing::info!(vm = %name, ms = started.elapsed().as_millis() as u64, "Bind: VM created and started");
                        Ok(self.vm_info(&Caller::Owner, &name, None)?)
                    }
                    Err(e) => {
                        tracing::warn!(vm = %name, "Bind failed, undoing: {e}");
                        let b = backend.clone();
                        let n = name.clone();
                        if let Err(de) = blocking(move || b.destroy(&n)).await {
                            tracing::error!(vm = %name, "cleanup after failed Bind: {de}");
                        }
                        self.forget_vm(&name)?;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Gives a pool reserved by a failed Bind back.
    fn release_pool(&self, pool_id: i64) {
        if let Some(p) = self.tables().pools.get_mut(&pool_id) {
            p.vm = None;
        }
    }

    /// Removes a VM's record and its socket, and unbinds its pools.
    pub(crate) fn forget_vm(&self, name: &str) -> Result<(), NmError> {
        let index = {
            let mut t = self.tables();
            self.store.remove_vm(name)?;
            let index = t.slivers.remove(name).map(|s| (s.index, s.address));
            for p in t.pools.values_mut() {
                if p.vm.as_deref() == Some(name) {
                    p.vm = None;
                }
            }
            index
        };
        if let Some((i, address)) = index {
            self.detach_vm(i, address);
        }
        self.close_vm_socket(name);
        Ok(())
    }

    /// Records what the node manager wants a VM to be.
    pub(crate) fn set_wanted(&self, name: &str, w: Wanted) -> Result<(), NmError> {
        let mut t = self.tables();
        self.store.set_vm_state(name, &w.to_string())?;
        if let Some(s) = t.slivers.get_mut(name) {
            s.wanted = w;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rcap::Rcap;
    use vm_types::RSpec;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINvd4JWqGILryt7c7j2YX8GNJTHiRXgCbcOQj+vURAyx a@b";

    fn pool(id: i64, slice: &str, xml: &str) -> Pool {
        let rspec = RSpec::from_xml(xml).unwrap();
        Pool {
            id,
            rcap: Rcap::generate().unwrap(),
            parent: None,
            slice: SliceName::parse(slice).unwrap(),
            xml: xml.into(),
            rspec,
            vm: None,
        }
    }

    fn vserver(name: &str, mem: u32, key: bool, boot: &str) -> String {
        let k = if key { format!("<key>{KEY}</key>") } else { String::new() };
        format!(
            r#"<VServerSlice name="{name}"><resources cpu_share="1" disk_quota="1" mem_limit="{mem}"/>{k}<bootscript>{boot}</bootscript></VServerSlice>"#
        )
    }

    /// A slice calling (a bearer of the rcap, not the owner).
    fn caller() -> Caller {
        Caller::Slice(SliceName::parse("plc.caller").unwrap())
    }

    fn prefix() -> Prefix {
        Prefix::parse("10.9.0.0/29").unwrap()
    }

    #[test]
    fn a_new_vm_gets_the_first_free_index_and_its_address() {
        let mut t = Tables::default();
        let p = pool(1, "plc.a", &vserver("plc.a", 64, true, "x"));
        let s = SliceName::parse("plc.a").unwrap();
        let BindPlan::New(sl) = plan(&t, &caller(), &p, &s, &prefix(), Some(1024)).unwrap() else { panic!() };
        assert_eq!((sl.name.as_str(), sl.index, sl.address.to_string()), ("plc_a", 1, "10.9.0.2".into()));
        assert_eq!(sl.wanted, Wanted::Creating);
        t.slivers.insert(sl.name.clone(), sl);
        let p2 = pool(2, "plc.b", &vserver("plc.b", 64, true, "x"));
        let BindPlan::New(sl) = plan(&t, &caller(), &p2, &SliceName::parse("plc.b").unwrap(), &prefix(), None).unwrap()
        else {
            panic!()
        };
        assert_eq!(sl.index, 2);
    }

    #[test]
    fn adding_merges_resources_and_keys_and_replaces_the_bootscript() {
        let mut t = Tables::default();
        let s = SliceName::parse("plc.a").unwrap();
        let BindPlan::New(first) =
            plan(&t, &caller(), &pool(1, "plc.a", &vserver("plc.a", 64, true, "one")), &s, &prefix(), None).unwrap()
        else {
            panic!()
        };
        t.slivers.insert(first.name.clone(), first);
        let me = Caller::Slice(s.clone());
        // Someone else's pool for the slice cannot be added to its VM...
        let e = plan(&t, &caller(), &pool(2, "plc.a", &vserver("plc.a", 32, true, "two")), &s, &prefix(), None);
        assert!(matches!(&e, Err(NmError::PermissionDenied(m)) if m.contains("not yours to add to")), "{e:?}");
        // ...the slice's own can.
        let BindPlan::Add { old, new } =
            plan(&t, &me, &pool(2, "plc.a", &vserver("plc.a", 32, true, "two")), &s, &prefix(), None).unwrap()
        else {
            panic!()
        };
        assert_eq!(old.resources.mem_limit.scaled(1), 64);
        assert_eq!(new.resources.mem_limit.scaled(1), 96);
        assert_eq!(new.vm.keys.len(), 1, "the same key is not added twice");
        assert_eq!(new.vm.bootscript.as_deref(), Some("two"));
        assert_eq!(new.index, old.index);
    }

    #[test]
    fn refusals_change_nothing_and_say_why() {
        let t = Tables::default();
        let s = SliceName::parse("plc.a").unwrap();
        let mut bound = pool(1, "plc.a", &vserver("plc.a", 64, true, "x"));
        bound.vm = Some("plc_a".into());
        assert!(
            matches!(plan(&t, &caller(), &bound, &s, &prefix(), None), Err(NmError::Conflict(m)) if m.contains("already bound"))
        );
        let other = pool(1, "plc.b", &vserver("plc.b", 64, true, "x"));
        assert!(matches!(plan(&t, &caller(), &other, &s, &prefix(), None), Err(NmError::PermissionDenied(_))));
        let bare = pool(1, "plc.a", r#"<PoolRSpec><resources mem_limit="64"/></PoolRSpec>"#);
        assert!(
            matches!(plan(&t, &caller(), &bare, &s, &prefix(), None), Err(NmError::InvalidRSpec(m)) if m.contains("split off"))
        );
        let named = pool(1, "plc.a", &vserver("plc.c", 64, true, "x"));
        assert!(matches!(
            plan(&t, &caller(), &named, &s, &prefix(), None),
            Err(NmError::InvalidParams { field: "slice_name", .. })
        ));
        let small = pool(1, "plc.a", &vserver("plc.a", 16, true, "x"));
        assert!(
            matches!(plan(&t, &caller(), &small, &s, &prefix(), None), Err(NmError::Resources(m)) if m.contains("at least 32 MB"))
        );
        let big = pool(1, "plc.a", &vserver("plc.a", 4096, true, "x"));
        assert!(
            matches!(plan(&t, &caller(), &big, &s, &prefix(), Some(1024)), Err(NmError::Resources(m)) if m.contains("node's memory"))
        );
        let no_cpu = pool(
            1,
            "plc.a",
            r#"<VServerSlice><resources cpu_share="0" mem_limit="64" disk_quota="1"/></VServerSlice>"#,
        );
        assert!(
            matches!(plan(&t, &caller(), &no_cpu, &s, &prefix(), None), Err(NmError::Resources(m)) if m.starts_with("cpu_share"))
        );
        let no_disk = pool(
            1,
            "plc.a",
            r#"<VServerSlice><resources cpu_share="1" mem_limit="64" disk_quota="0.01"/></VServerSlice>"#,
        );
        assert!(
            matches!(plan(&t, &caller(), &no_disk, &s, &prefix(), None), Err(NmError::Resources(m)) if m.starts_with("disk_quota"))
        );
        // An existing VM of another type.
        let mut t = Tables::default();
        let BindPlan::New(sl) =
            plan(&t, &caller(), &pool(1, "plc.a", &vserver("plc.a", 64, true, "x")), &s, &prefix(), None).unwrap()
        else {
            panic!()
        };
        t.slivers.insert(sl.name.clone(), sl);
        let kvm = pool(
            2,
            "plc.a",
            r#"<KvmSlice name="plc.a"><resources cpu_share="1" mem_limit="64" disk_quota="1"/></KvmSlice>"#,
        );
        assert!(
            matches!(plan(&t, &Caller::Owner, &kvm, &s, &prefix(), None), Err(NmError::Conflict(m)) if m.contains("cannot be added"))
        );
    }

    #[test]
    fn only_the_pools_own_slice_is_bound_unless_the_owner_binds_and_never_a_blacklisted_one() {
        let mut t = Tables::default();
        let (a, ab) = (SliceName::parse("plc.a").unwrap(), SliceName::parse("plc.a.b").unwrap());
        // A pool of plc.a cannot make plc.a.b's VM: a name does not cover the names below it.
        let p = pool(1, "plc.a", &vserver("plc.a.b", 64, true, "x"));
        assert!(matches!(plan(&t, &caller(), &p, &ab, &prefix(), None), Err(NmError::PermissionDenied(_))));
        assert!(plan(&t, &Caller::Owner, &p, &ab, &prefix(), None).is_ok(), "the owner may");
        // The owner's blacklist bars the slice, and everything below a barred authority.
        t.blacklist.insert(SliceName::parse("plc").unwrap());
        let own = pool(2, "plc.a", &vserver("plc.a", 64, true, "x"));
        let e = plan(&t, &Caller::Owner, &own, &a, &prefix(), None).unwrap_err();
        assert!(
            matches!(&e, NmError::PermissionDenied(m) if m.contains("blacklisted") && m.contains("entry plc")),
            "{e:?}"
        );
    }

    #[test]
    fn a_service_of_the_node_never_gets_a_vm() {
        let mut t = Tables::default();
        let scs = SliceName::parse("plc.scs").unwrap();
        t.services.insert(scs.clone());
        let p = pool(1, "plc.scs", &vserver("plc.scs", 64, true, "x"));
        let e = plan(&t, &Caller::Owner, &p, &scs, &prefix(), None).unwrap_err();
        assert!(matches!(&e, NmError::PermissionDenied(m) if m.contains("services")), "{e:?}");
        // Nor does a slice that holds an authority's pool (a designated service).
        let mut t = Tables::default();
        t.insert_pool(pool(
            2,
            "plc.svc",
            r#"<PoolRSpec><resources mem_limit="64"/><slice_authority name="plc" url="https://x/"/></PoolRSpec>"#,
        ));
        let svc = SliceName::parse("plc.svc").unwrap();
        let e =
            plan(&t, &Caller::Owner, &pool(3, "plc.svc", &vserver("plc.svc", 64, true, "x")), &svc, &prefix(), None);
        assert!(matches!(&e, Err(NmError::PermissionDenied(_))), "{e:?}");
    }

    #[test]
    fn vm_minimums_hold_at_their_exact_bounds() {
        let r = |mem: u64, cpu: u64, disk: u64| {
            let mut r = Resources::spec_default();
            r.mem_limit = vm_types::Quantity::from_milli(mem);
            r.cpu_share = vm_types::Quantity::from_milli(cpu);
            r.disk_quota = vm_types::Quantity::from_milli(disk);
            r
        };
        check_vm_minimums(&r(32_000, 1, 16), Some(32)).unwrap();
        assert!(check_vm_minimums(&r(31_999, 1, 16), None).is_err(), "below 32 MB");
        assert!(check_vm_minimums(&r(32_000, 0, 16), None).is_err(), "no cpu");
        assert!(check_vm_minimums(&r(32_000, 1, 15), None).is_err(), "below 0.016 GB");
        assert!(check_vm_minimums(&r(33_000, 1, 16), Some(32)).is_err(), "more than the node");
    }

    #[test]
    fn the_nodes_memory_is_read_in_megabytes() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse()
            .unwrap();
        let mb = node_memory_mb().unwrap();
        assert!(mb.abs_diff(kb / 1024) <= 1, "{mb} MB, /proc/meminfo says {kb} kB");
    }

    #[test]
    fn the_prefix_running_out_is_a_resource_error() {
        let mut t = Tables::default();
        // A /29 has six host addresses: the gateway and five VMs.
        for i in 1..=5 {
            let n = format!("plc.s{i}");
            let s = SliceName::parse(&n).unwrap();
            let BindPlan::New(sl) =
                plan(&t, &caller(), &pool(i, &n, &vserver(&n, 64, true, "x")), &s, &prefix(), None).unwrap()
            else {
                panic!()
            };
            t.slivers.insert(sl.name.clone(), sl);
        }
        let s = SliceName::parse("plc.s6").unwrap();
        let e = plan(&t, &caller(), &pool(6, "plc.s6", &vserver("plc.s6", 64, true, "x")), &s, &prefix(), None)
            .unwrap_err();
        assert!(matches!(e, NmError::Resources(m) if m.contains("no address left")));
    }
}
