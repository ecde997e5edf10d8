//! The node manager's state and operations (section 4.3): the rcap table, pools, slivers
//! (each slice's VM on this node), and the calls into backends.
//!
//! | module | what |
//! |---|---|
//! | [`pools`] | `CreatePool`, `GetRcap`, `GetRSpec`, `SplitPool`, `DestroyPool`, `ListPools` |
//! | [`bind`] | `Bind`: a pure plan from the tables, then its application |
//! | [`vms`] | `ListVMs`, `VmStatus`, `StartVM`, `StopVM`, `DestroyVM`, `VmLog`, `NodeInfo` |
//! | [`reconcile`] | repairs at start, `Orphans`, `CleanOrphans` |
//! | [`blacklist`] | `Blacklist`, `Unblacklist`, `GetBlacklist` (section 3: the owner's veto) |
//! | [`certify`] | `SignCertificate` (section 5.5) |
//! | [`locks`] | one lifecycle lock per VM |
//! | [`net`] | each VM's place in the wire policy, NAT and bandwidth |
//! | [`sockets`] | each VM's own socket |
//!
//! Locking: `tables` (a std mutex, never held across an await or a backend call) guards
//! the in-memory copy of the database; every change is written to the [`Store`] inside
//! the same critical section, before the in-memory tables, so a failed write changes
//! nothing and two calls can never both spend one pool. Lifecycle operations on one VM are
//! serialised by that VM's lock ([`locks::VmLocks`]); different VMs proceed side by side.

pub mod bind;
pub mod blacklist;
pub mod certify;
pub mod error;
pub mod locks;
pub mod net;
pub mod pools;
pub mod reconcile;
pub mod sockets;
pub mod vms;

use crate::api::{Request, Wanted};
use crate::config::Config;
use crate::rcap::{Rcap, RcapKey};
use crate::store::Store;
pub use error::NmError;
use jsonrpc::{reply, RpcError, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use vm_types::{Backend, BackendError, RSpec, Registry, SliceName, VmNetwork, VmSpec};

/// Smallest memory limit a VM may have, in MB.
pub const MIN_VM_MEM_MB: u64 = 32;

/// Who is calling, as the kernel tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The node owner (site_admin).
    Owner,
    /// A slice: a process in its VM, or a local service mapped to it.
    Slice(SliceName),
}

impl Caller {
    /// Is the caller slice `slice` itself (or the owner)? A slice's name never covers the
    /// slices whose names extend it: `plc.a` has no say over `plc.a.b`.
    pub fn is(&self, slice: &SliceName) -> bool {
        match self {
            Caller::Owner => true,
            Caller::Slice(s) => s == slice,
        }
    }
}

/// A resource pool (section 4.3).
pub(crate) struct Pool {
    pub id: i64,
    pub rcap: Rcap,
    pub parent: Option<i64>,
    pub slice: SliceName,
    pub rspec: RSpec,
    pub xml: Arc<str>,
    /// The VM the pool is bound to, or is being bound to by a Bind in progress.
    pub vm: Option<String>,
}

/// A sliver: one slice's VM on this node, as the node manager records it.
#[derive(Debug, Clone)]
pub struct Sliver {
    /// The VM's name: the slice's login.
    pub name: String,
    /// The slice.
    pub slice: SliceName,
    /// Resources bound to it.
    pub resources: vm_types::Resources,
    /// Its VM type, the users' keys and the bootscript.
    pub vm: vm_types::SliceRSpec,
    /// Node-unique small number (names host interfaces).
    pub index: u32,
    /// Its address on the node network.
    pub address: Ipv4Addr,
    /// What the node manager wants it to be.
    pub wanted: Wanted,
}

impl Sliver {
    /// Its whole RSpec, as recorded.
    pub fn rspec(&self) -> RSpec {
        RSpec { class: vm_types::RSpecClass::Slice(self.vm.clone()), resources: self.resources }
    }
}

/// The in-memory copy of the database.
#[derive(Default)]
pub(crate) struct Tables {
    pub pools: BTreeMap<i64, Pool>,
    pub by_key: HashMap<RcapKey, i64>,
    pub slivers: BTreeMap<String, Sliver>,
    /// Slices and authorities the owner has barred from this node.
    pub blacklist: std::collections::BTreeSet<SliceName>,
    /// The node's local services (`slice_uids`): slices that run as uids here, never VMs.
    pub services: std::collections::BTreeSet<SliceName>,
}

impl Tables {
    /// The pool an rcap names. Malformed and unknown rcaps get the same answer.
    pub fn pool(&self, rcap: &str) -> Result<&Pool, NmError> {
        let r = Rcap::from_hex(rcap).ok_or(NmError::UnknownRcap)?;
        self.by_key
            .get(&r.key())
            .and_then(|id| self.pools.get(id))
            .filter(|p| p.rcap.ct_eq(&r))
            .ok_or(NmError::UnknownRcap)
    }

    pub fn insert_pool(&mut self, p: Pool) {
        self.by_key.insert(p.rcap.key(), p.id);
        self.pools.insert(p.id, p);
    }

    /// The sliver named `name` if the caller may act on it. Missing and not-yours give
    /// the same answer.
    pub fn sliver_for(&self, caller: &Caller, name: &str) -> Result<&Sliver, NmError> {
        self.slivers.get(name).filter(|s| self.may_act_on(caller, s)).ok_or_else(|| NmError::NoSuchVm(name.to_owned()))
    }

    /// Is `slice` one of the node's services: a local service (`slice_uids`), or the holder
    /// of a pool the owner gave for an authority? Such a slice never gets a VM, whose
    /// socket would speak with the service's identity.
    pub fn is_service(&self, slice: &SliceName) -> bool {
        self.services.contains(slice)
            || self.pools.values().any(|p| &p.slice == slice && p.rspec.authorities().next().is_some())
    }

    /// The blacklist entry (a slice, or an authority above it) that bars `slice`, if any.
    pub fn blacklisted(&self, slice: &SliceName) -> Option<&SliceName> {
        self.blacklist.iter().find(|b| b.covers(slice))
    }

    /// Pool `p` and the pools it was split from, nearest first.
    pub fn lineage<'a>(&'a self, p: &'a Pool) -> impl Iterator<Item = &'a Pool> + 'a {
        std::iter::successors(Some(p), move |q| q.parent.and_then(|id| self.pools.get(&id)))
    }

    /// Is slice `service` designated to act for `slice` through pool `p`: does `p` come
    /// from a pool the owner gave `service` for an authority above `slice`?
    pub fn designated(&self, service: &SliceName, slice: &SliceName, p: &Pool) -> bool {
        self.lineage(p).any(|a| &a.slice == service && a.rspec.authorities().any(|auth| auth.is_above(slice)))
    }

    /// May the caller see pool `p` (and use its rcap's listing)? Its own pools, and the
    /// pools split for the slices it was designated for.
    pub fn may_see_pool(&self, caller: &Caller, p: &Pool) -> bool {
        match caller {
            Caller::Owner => true,
            Caller::Slice(s) => &p.slice == s || self.designated(s, &p.slice, p),
        }
    }

    /// May the caller act on sliver `v`: the owner, the slice itself, or a service
    /// designated for it through a pool bound to the VM.
    pub fn may_act_on(&self, caller: &Caller, v: &Sliver) -> bool {
        match caller {
            Caller::Owner => true,
            Caller::Slice(s) => {
                &v.slice == s
                    || self
                        .pools
                        .values()
                        .filter(|p| p.vm.as_deref() == Some(v.name.as_str()))
                        .any(|p| self.designated(s, &v.slice, p))
            }
        }
    }
}

/// The node manager.
pub struct NodeManager {
    cfg: Config,
    store: Store,
    registry: Registry,
    tables: Mutex<Tables>,
    locks: locks::VmLocks,
    sockets: sockets::VmSockets,
    facts: Mutex<NodeFacts>,
    network: Option<net::Network>,
}

/// What the daemon found out about the node at start, for `NodeInfo`.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// `kvm` or `tcg`, and why.
    pub accelerator: Option<(String, String)>,
    /// Problems that make things slow or fail, each with its fix.
    pub warnings: Vec<String>,
}

impl NodeManager {
    /// Opens the state directory and loads the tables, for VMs that have no node network
    /// (fake backends in tests). Does not touch VMs: call [`NodeManager::reconcile`] for
    /// that.
    pub fn open(cfg: Config, registry: Registry) -> anyhow::Result<Arc<NodeManager>> {
        NodeManager::open_with_network(cfg, registry, None)
    }

    /// As [`NodeManager::open`], with the node's network policy, NAT and bandwidth
    /// shaping worked through `host` when given.
    pub fn open_with_network(
        cfg: Config,
        registry: Registry,
        host: Option<Arc<dyn vm_types::host::Host>>,
    ) -> anyhow::Result<Arc<NodeManager>> {
        cfg.validate()?;
        // Searchable but not listable by others: container VMs' roots are unprivileged
        // host uids, and runc, working as one, must reach the VM's directory and socket
        // below. What is private here stays so by its own mode (nm.db is 0600).
        std::fs::create_dir_all(&cfg.state_dir)?;
        set_mode(&cfg.state_dir, 0o711)?;
        std::fs::create_dir_all(cfg.state_dir.join("sockets"))?;
        set_mode(&cfg.state_dir.join("sockets"), 0o711)?;
        let store = Store::open(&cfg.state_dir.join("nm.db"))?;
        let (pools, vms) = store.load()?;
        let mut t = Tables::default();
        for p in pools {
            let ctx = |what: &str| anyhow::anyhow!("state database, pool {}: {what}", p.id);
            let rspec = RSpec::from_xml(&p.rspec).map_err(|e| ctx(&e.to_string()))?;
            let slice = SliceName::parse(&p.slice).map_err(|e| ctx(&e.to_string()))?;
            let rcap = Rcap::from_hex(&p.rcap).ok_or_else(|| ctx("bad rcap"))?;
            t.insert_pool(Pool { id: p.id, rcap, parent: p.parent, slice, rspec, xml: p.rspec.into(), vm: p.vm });
        }
        t.services = cfg.slice_uids.values().cloned().collect();
        for b in store.blacklist()? {
            t.blacklist
                .insert(SliceName::parse(&b).map_err(|e| anyhow::anyhow!("state database, blacklist {b}: {e}"))?);
        }
        for v in vms {
            let ctx = |what: &str| anyhow::anyhow!("state database, VM {}: {what}", v.name);
            let rspec = RSpec::from_xml(&v.rspec).map_err(|e| ctx(&e.to_string()))?;
            let vm_types::RSpecClass::Slice(vm) = rspec.class else {
                return Err(ctx("its RSpec is not a slice RSpec"));
            };
            let sliver = Sliver {
                name: v.name.clone(),
                slice: SliceName::parse(&v.slice).map_err(|e| ctx(&e.to_string()))?,
                resources: rspec.resources,
                vm,
                index: v.idx,
                address: v.address.parse().map_err(|_| ctx("bad address"))?,
                wanted: v.state.parse().map_err(|_| ctx("bad state"))?,
            };
            t.slivers.insert(v.name, sliver);
        }
        let network = host.map(|h| net::Network::new(h, &cfg));
        Ok(Arc::new(NodeManager {
            network,
            cfg,
            store,
            registry,
            tables: Mutex::new(t),
            locks: locks::VmLocks::default(),
            sockets: sockets::VmSockets::default(),
            facts: Mutex::new(NodeFacts::default()),
        }))
    }

    /// Records what the daemon found out about the node, for `NodeInfo`.
    pub fn set_facts(&self, facts: NodeFacts) {
        *self.facts.lock().unwrap_or_else(|p| p.into_inner()) = facts;
    }

    pub(crate) fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The backend for a VM type, or why this node has none.
    fn backend(&self, t: vm_types::VmType) -> Result<Arc<dyn Backend>, NmError> {
        self.registry.get(t).cloned().ok_or_else(|| {
            let have: Vec<String> = self.registry.types().iter().map(|t| t.to_string()).collect();
            let why = self.registry.unavailable(t).map(|w| format!("; {w}")).unwrap_or_default();
            NmError::Unsupported(format!("{t} is not supported on this node (supported: {}){why}", have.join(", ")))
        })
    }

    /// Periodic upkeep of every VM's backend side (console logs rotated): what fails is
    /// logged, and the next round tries again.
    pub async fn maintain(&self) {
        let vms: Vec<(String, vm_types::VmType)> =
            self.tables().slivers.values().map(|s| (s.name.clone(), s.vm.vm_type)).collect();
        for (name, t) in vms {
            let Ok(b) = self.backend(t) else { continue };
            let n = name.clone();
            if let Err(e) = blocking(move || b.maintain(&n)).await {
                tracing::warn!(vm = name, "upkeep: {e}");
            }
        }
        self.meter_round();
    }

    /// What a backend needs to know to make or change a sliver.
    fn spec_of(&self, s: &Sliver) -> VmSpec {
        VmSpec {
            name: s.name.clone(),
            slice: s.slice.clone(),
            vm_type: s.vm.vm_type,
            resources: s.resources,
            keys: s.vm.keys.clone(),
            bootscript: s.vm.bootscript.clone(),
            network: VmNetwork {
                index: s.index,
                address: s.address,
                prefix_len: self.cfg.vm_prefix.len,
                gateway: self.cfg.vm_prefix.gateway(),
            },
            nm_socket_dir: Some(self.sockets.dir(&self.cfg.state_dir, &s.name)),
        }
    }

    /// Runs one decoded call for `caller`.
    pub async fn dispatch(self: &Arc<Self>, caller: &Caller, req: Request) -> Result<Value, RpcError> {
        use crate::api::calls as c;
        fn r<T>(x: Result<T, NmError>) -> Result<T, RpcError> {
            x.map_err(RpcError::from)
        }
        match req {
            Request::CreatePool(p) => reply::<c::CreatePool>(r(self.create_pool(caller, &p.rspec, p.slice_name))),
            Request::GetRcap(p) => reply::<c::GetRcap>(r(self.get_rcap(caller, p.slice_name))),
            Request::GetRSpec(p) => reply::<c::GetRSpec>(r(self.get_rspec(&p.rcap))),
            Request::SplitPool(p) => reply::<c::SplitPool>(r(self.split_pool(caller, &p.rcap, &p.rspec))),
            Request::Bind(p) => reply::<c::Bind>(r(self.bind(caller, &p.rcap, p.slice_name).await)),
            Request::DestroyPool(p) => reply::<c::DestroyPool>(r(self.destroy_pool(&p.rcap))),
            Request::ListPools(_) => reply::<c::ListPools>(Ok(self.list_pools(caller))),
            Request::ListVMs(_) => reply::<c::ListVMs>(Ok(self.list_vms(caller).await)),
            Request::VmStatus(p) => reply::<c::VmStatus>(r(self.vm_status(caller, &p.vm).await)),
            Request::StartVM(p) => reply::<c::StartVM>(r(self.start_vm(caller, &p.vm).await)),
            Request::StopVM(p) => reply::<c::StopVM>(r(self.stop_vm(caller, &p.vm).await)),
            Request::DestroyVM(p) => reply::<c::DestroyVM>(r(self.destroy_vm(caller, &p.vm).await)),
            Request::VmLog(p) => reply::<c::VmLog>(r(self.vm_log(caller, &p.vm, p.bytes, p.from).await)),
            Request::NodeInfo(_) => reply::<c::NodeInfo>(Ok(self.node_info())),
            Request::Orphans(_) => reply::<c::Orphans>(r(self.orphans_for(caller).await)),
            Request::CleanOrphans(_) => reply::<c::CleanOrphans>(r(self.clean_orphans(caller).await)),
            Request::SignCertificate(p) => reply::<c::SignCertificate>(r(self.sign_certificate(
                caller,
                &p.public_key,
                p.server.unwrap_or(false),
                p.slice.as_ref(),
            ))),
            Request::UpdateVM(p) => reply::<c::UpdateVM>(r(self.update_vm(caller, p).await)),
            Request::Blacklist(p) => reply::<c::Blacklist>(r(self.blacklist(caller, p.name).await)),
            Request::Unblacklist(p) => reply::<c::Unblacklist>(r(self.unblacklist(caller, &p.name))),
            Request::GetBlacklist(_) => reply::<c::GetBlacklist>(Ok(self.get_blacklist())),
        }
    }

    /// Decodes and runs one call (by wire name) for `caller`.
    pub async fn call(self: &Arc<Self>, caller: &Caller, method: &str, params: Value) -> Result<Value, RpcError> {
        let req = Request::decode(method, params)?;
        self.dispatch(caller, req).await
    }
}

/// Refuses callers other than the owner.
pub(crate) fn owner_only(caller: &Caller, method: &str) -> Result<(), NmError> {
    match caller {
        Caller::Owner => Ok(()),
        Caller::Slice(s) => Err(NmError::PermissionDenied(format!(
            "{method}: permission denied: only the node owner (site_admin) may call it, and the caller is slice {s}"
        ))),
    }
}

/// Runs a blocking backend call on the blocking pool. A panic in it is an internal
/// failure, never a resource error.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(BackendError::Internal(format!("backend task failed: {e}"))))
}

pub(crate) fn set_mode(p: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

/// The directory holding a VM's own socket.
pub fn vm_socket_dir(state_dir: &std::path::Path, vm: &str) -> PathBuf {
    state_dir.join("sockets").join(vm).join("run")
}
