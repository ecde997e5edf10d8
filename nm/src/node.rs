//! The node manager's state and operations (section 4.3): the rcap table, pools, VM
//! records, and the calls into backends.
//!
//! Locking: `tables` (a std mutex, never held across an await or a backend call) guards
//! the in-memory copy of the database; `lifecycle` (an async mutex) serialises operations
//! that change VMs, so two binds for one slice cannot race. Every change is written to the
//! [`Store`] before the in-memory tables, so a failed write changes nothing.

use crate::config::{Config, Prefix};
use crate::protocol::{ErrorCode, Method, Params, RpcError};
use crate::rcap::{Rcap, RcapKey};
use crate::store::{Store, StoreError, VmRow};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use vm_types::{Backend, BackendError, RSpec, RSpecClass, Registry, Resources, SliceName, VmNetwork, VmSpec, VmState};

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
    fn may_see(&self, slice: &SliceName) -> bool {
        match self {
            Caller::Owner => true,
            Caller::Slice(s) => s.covers(slice),
        }
    }
}

struct Pool {
    id: i64,
    rcap: Rcap,
    parent: Option<i64>,
    slice: SliceName,
    rspec: RSpec,
    xml: Arc<str>,
    vm: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Creating,
    Running,
    Stopped,
}

impl Wanted {
    fn as_str(self) -> &'static str {
        match self {
            Wanted::Creating => "creating",
            Wanted::Running => "running",
            Wanted::Stopped => "stopped",
        }
    }
}

struct Vm {
    name: String,
    slice: SliceName,
    rspec: RSpec,
    index: u32,
    address: Ipv4Addr,
    wanted: Wanted,
}

#[derive(Default)]
struct Tables {
    pools: BTreeMap<i64, Pool>,
    by_key: HashMap<RcapKey, i64>,
    vms: BTreeMap<String, Vm>,
}

impl Tables {
    fn pool(&self, rcap: &str) -> Result<&Pool, RpcError> {
        let r = Rcap::from_hex(rcap).ok_or_else(RpcError::unknown_rcap)?;
        self.by_key
            .get(&r.key())
            .and_then(|id| self.pools.get(id))
            .filter(|p| p.rcap.ct_eq(&r))
            .ok_or_else(RpcError::unknown_rcap)
    }

    fn insert_pool(&mut self, p: Pool) {
        self.by_key.insert(p.rcap.key(), p.id);
        self.pools.insert(p.id, p);
    }
}

fn internal(e: StoreError) -> RpcError {
    tracing::error!("{e}");
    RpcError::new(ErrorCode::Internal, format!("{e}; nothing was changed"))
}

fn backend_err(what: &str, e: BackendError) -> RpcError {
    let code = match e {
        BackendError::NotFound(_) => ErrorCode::NotFound,
        BackendError::Invalid(_) => ErrorCode::Resources,
        _ => ErrorCode::Backend,
    };
    RpcError::new(code, format!("{what}: {e}"))
}

fn invalid(field: &str, e: impl std::fmt::Display) -> RpcError {
    RpcError::new(ErrorCode::InvalidParams, format!("{field}: {e}"))
}

fn parse_rspec(xml: &str) -> Result<RSpec, RpcError> {
    RSpec::from_xml(xml).map_err(|e| RpcError::new(ErrorCode::InvalidRSpec, format!("rspec: {e}")))
}

fn parse_slice(field: &str, s: &str) -> Result<SliceName, RpcError> {
    SliceName::parse(s).map_err(|e| invalid(field, e))
}

fn resources_json(r: &Resources) -> Value {
    let mut m = serde_json::Map::new();
    for (attr, unit) in Resources::ATTRIBUTES {
        m.insert(attr.to_string(), json!(format!("{} {unit}", r.get(attr).unwrap_or_default())));
    }
    Value::Object(m)
}

/// The node manager.
pub struct Node {
    cfg: Config,
    prefix: Prefix,
    store: Store,
    registry: Registry,
    tables: Mutex<Tables>,
    lifecycle: tokio::sync::Mutex<()>,
    vm_sockets: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    accelerator: Mutex<Option<(String, String)>>,
}

impl Node {
    /// Records the accelerator hypervisor VM types get here, and why, for `NodeInfo`.
    pub fn set_accelerator(&self, name: &str, reason: &str) {
        *self.accelerator.lock().unwrap_or_else(|p| p.into_inner()) = Some((name.into(), reason.into()));
    }

    /// Opens the state directory and loads the tables. Does not touch VMs: call
    /// [`Node::reconcile`] for that.
    pub fn open(cfg: Config, registry: Registry) -> anyhow::Result<Arc<Node>> {
        cfg.validate()?;
        let prefix = Prefix::parse(&cfg.vm_prefix).map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(&cfg.state_dir)?;
        set_mode(&cfg.state_dir, 0o700)?;
        std::fs::create_dir_all(cfg.state_dir.join("sockets"))?;
        let store = Store::open(&cfg.state_dir.join("nm.db"))?;
        let (pools, vms) = store.load()?;
        let mut t = Tables::default();
        for p in pools {
            let ctx = |what: &str| format!("state database, pool {}: {what}", p.id);
            let rspec = RSpec::from_xml(&p.rspec).map_err(|e| anyhow::anyhow!("{}", ctx(&e.to_string())))?;
            let slice = SliceName::parse(&p.slice).map_err(|e| anyhow::anyhow!("{}", ctx(&e.to_string())))?;
            let rcap = Rcap::from_hex(&p.rcap).ok_or_else(|| anyhow::anyhow!("{}", ctx("bad rcap")))?;
            t.insert_pool(Pool { id: p.id, rcap, parent: p.parent, slice, rspec, xml: p.rspec.into(), vm: p.vm });
        }
        for v in vms {
            let ctx = |what: &str| anyhow::anyhow!("state database, VM {}: {what}", v.name);
            let wanted = match v.state.as_str() {
                "creating" => Wanted::Creating,
                "running" => Wanted::Running,
                _ => Wanted::Stopped,
            };
            t.vms.insert(
                v.name.clone(),
                Vm {
                    name: v.name.clone(),
                    slice: SliceName::parse(&v.slice).map_err(|e| ctx(&e.to_string()))?,
                    rspec: RSpec::from_xml(&v.rspec).map_err(|e| ctx(&e.to_string()))?,
                    index: v.idx,
                    address: v.address.parse().map_err(|_| ctx("bad address"))?,
                    wanted,
                },
            );
        }
        Ok(Arc::new(Node {
            cfg,
            prefix,
            store,
            registry,
            tables: Mutex::new(t),
            lifecycle: tokio::sync::Mutex::new(()),
            vm_sockets: Mutex::new(HashMap::new()),
            accelerator: Mutex::new(None),
        }))
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The directory whose `nm.sock` is the VM's own socket.
    pub fn vm_socket_dir(&self, vm: &str) -> PathBuf {
        self.cfg.state_dir.join("sockets").join(vm)
    }

    fn backend(&self, rspec: &RSpec) -> Result<Arc<dyn Backend>, RpcError> {
        let t = rspec
            .vm_type()
            .ok_or_else(|| RpcError::new(ErrorCode::InvalidRSpec, "rspec: names no VM type"))?;
        self.registry.get(t).cloned().ok_or_else(|| {
            let have: Vec<String> = self.registry.types().iter().map(|t| t.to_string()).collect();
            let why = self.registry.unavailable(t).map(|w| format!("; {w}")).unwrap_or_default();
            RpcError::new(
                ErrorCode::Unsupported,
                format!("vm_type: {t} is not supported on this node (supported: {}){why}", have.join(", ")),
            )
        })
    }

    fn spec_of(&self, vm: &Vm) -> Result<VmSpec, RpcError> {
        let s = vm
            .rspec
            .slice()
            .ok_or_else(|| RpcError::new(ErrorCode::Internal, format!("VM {}: record holds no slice RSpec", vm.name)))?;
        Ok(VmSpec {
            name: vm.name.clone(),
            slice: vm.slice.clone(),
            vm_type: s.vm_type,
            resources: vm.rspec.resources,
            keys: s.keys.clone(),
            bootscript: s.bootscript.clone(),
            network: VmNetwork {
                index: vm.index,
                address: vm.address,
                prefix_len: self.prefix.len,
                gateway: self.prefix.gateway(),
            },
            nm_socket_dir: Some(self.vm_socket_dir(&vm.name)),
        })
    }

    /// Runs one API call for `caller`.
    pub async fn call(self: &Arc<Self>, caller: &Caller, method: Method, params: &Value) -> Result<Value, RpcError> {
        let p = Params::new(method, params)?;
        match method {
            Method::CreatePool => self.create_pool(caller, p.str("rspec")?, p.str("slice_name")?),
            Method::GetRcap => self.get_rcap(caller, p.opt_str("slice_name")?),
            Method::GetRSpec => {
                let t = self.tables();
                Ok(json!({ "rspec": &*t.pool(p.str("rcap")?)?.xml }))
            }
            Method::SplitPool => self.split_pool(p.str("rcap")?, p.str("rspec")?),
            Method::Bind => self.bind(p.str("rcap")?, p.str("slice_name")?).await,
            Method::DestroyPool => self.destroy_pool(p.str("rcap")?),
            Method::ListPools => Ok(self.list_pools(caller)),
            Method::ListVMs => self.list_vms(caller).await,
            Method::VmStatus => self.vm_status(caller, p.str("vm")?).await,
            Method::StartVM => self.start_vm(caller, p.str("vm")?).await,
            Method::StopVM => self.stop_vm(caller, p.str("vm")?).await,
            Method::DestroyVM => self.destroy_vm(caller, p.str("vm")?).await,
            Method::VmLog => self.vm_log(caller, p.str("vm")?, p.opt_u64("bytes")?.unwrap_or(64 * 1024)).await,
            Method::NodeInfo => Ok(self.node_info()),
            Method::Orphans => {
                owner_only(caller, method)?;
                Ok(json!({ "orphans": self.orphans().await? }))
            }
            Method::CleanOrphans => {
                owner_only(caller, method)?;
                self.clean_orphans().await
            }
            Method::SignCertificate => self.sign_certificate(caller, p.str("public_key")?),
        }
    }

    fn sign_certificate(&self, caller: &Caller, public_key: &str) -> Result<Value, RpcError> {
        let Caller::Slice(slice) = caller else {
            return Err(RpcError::new(
                ErrorCode::PermissionDenied,
                "SignCertificate: certifies the calling slice; call it from the slice's VM (or as a uid mapped to a slice)",
            ));
        };
        let unavailable = |what: &std::path::Path, e: String| {
            RpcError::new(
                ErrorCode::Internal,
                format!("this node has no node certificate yet ({}: {e}); plab-boot writes it when the node boots", what.display()),
            )
        };
        let chain = std::fs::read_to_string(&self.cfg.node_cert).map_err(|e| unavailable(&self.cfg.node_cert, e.to_string()))?;
        let key_pem = std::fs::read_to_string(&self.cfg.node_key).map_err(|e| unavailable(&self.cfg.node_key, e.to_string()))?;
        let certs = credentials::pki::Cert::bundle_from_pem(&chain).map_err(|e| unavailable(&self.cfg.node_cert, e.to_string()))?;
        let credentials::Identity::Node(node) = certs[0].identity else {
            return Err(unavailable(&self.cfg.node_cert, format!("names {}, not a node", certs[0].identity)));
        };
        let key = credentials::pki::KeyPair::from_pem(&key_pem).map_err(|e| unavailable(&self.cfg.node_key, e.to_string()))?;
        let id = credentials::Identity::Service { slice: slice.clone(), node };
        let cert = credentials::pki::issue(&certs[0].pem, &key, &id, public_key, credentials::pki::Profile::Client, 7)
            .map_err(|e| invalid("public_key", e))?;
        let rest: String = certs.iter().map(|c| c.pem.as_str()).collect();
        Ok(json!({ "certificate": format!("{cert}{rest}"), "identity": id.to_string() }))
    }

    fn create_pool(&self, caller: &Caller, xml: &str, slice: &str) -> Result<Value, RpcError> {
        owner_only(caller, Method::CreatePool)?;
        let rspec = parse_rspec(xml)?;
        let slice = parse_slice("slice_name", slice)?;
        let rcap = Rcap::generate().map_err(|e| RpcError::new(ErrorCode::Internal, format!("CSPRNG: {e}")))?;
        let xml: Arc<str> = rspec.to_xml().into();
        let id = self.store.insert_pool(&rcap.to_hex(), slice.as_str(), &xml).map_err(internal)?;
        self.tables().insert_pool(Pool { id, rcap, parent: None, slice, rspec, xml, vm: None });
        tracing::info!(pool = id, "CreatePool");
        Ok(json!({ "rcap": rcap.to_hex() }))
    }

    fn get_rcap(&self, caller: &Caller, slice: Option<&str>) -> Result<Value, RpcError> {
        let wanted = match (caller, slice) {
            (Caller::Owner, Some(s)) => Some(parse_slice("slice_name", s)?),
            (Caller::Owner, None) => None,
            (Caller::Slice(own), Some(s)) if s != own.as_str() => {
                return Err(RpcError::new(ErrorCode::PermissionDenied, format!("slice_name: a slice may only ask for its own rcaps ({own})")))
            }
            (Caller::Slice(own), _) => Some(own.clone()),
        };
        let t = self.tables();
        let rcaps: Vec<String> = t
            .pools
            .values()
            .filter(|p| wanted.as_ref().is_none_or(|w| &p.slice == w))
            .map(|p| p.rcap.to_hex())
            .collect();
        Ok(json!({ "rcaps": rcaps }))
    }

    fn split_pool(&self, rcap: &str, xml: &str) -> Result<Value, RpcError> {
        let child = parse_rspec(xml)?;
        let mut t = self.tables();
        let parent = t.pool(rcap)?;
        if let Some(vm) = &parent.vm {
            return Err(RpcError::new(ErrorCode::Conflict, format!("rcap: the pool is bound to VM {vm} and cannot be split")));
        }
        if let (Some(limit), Some(want)) = (parent.rspec.vm_type(), child.vm_type()) {
            if limit != want {
                return Err(RpcError::new(ErrorCode::InvalidRSpec, format!("rspec: vm_type {want} is not allowed by the pool, which is for {limit}")));
            }
        }
        let slice = match child.slice().and_then(|s| s.name.clone()) {
            Some(n) if !parent.slice.covers(&n) => {
                return Err(RpcError::new(
                    ErrorCode::PermissionDenied,
                    format!("rspec: slice {n} is outside the pool's slice {}", parent.slice),
                ))
            }
            Some(n) => n,
            None => parent.slice.clone(),
        };
        let rest = parent
            .rspec
            .resources
            .checked_sub(&child.resources)
            .map_err(|e| RpcError::new(ErrorCode::Resources, format!("rspec: {e}")))?;
        let mut parent_rspec = parent.rspec.clone();
        parent_rspec.resources = rest;
        let parent_xml: Arc<str> = parent_rspec.to_xml().into();
        let child_xml: Arc<str> = child.to_xml().into();
        let new = Rcap::generate().map_err(|e| RpcError::new(ErrorCode::Internal, format!("CSPRNG: {e}")))?;
        let pid = parent.id;
        let id = self.store.split(pid, &parent_xml, &new.to_hex(), slice.as_str(), &child_xml).map_err(internal)?;
        if let Some(p) = t.pools.get_mut(&pid) {
            p.rspec = parent_rspec;
            p.xml = parent_xml;
        }
        t.insert_pool(Pool { id, rcap: new, parent: Some(pid), slice, rspec: child, xml: child_xml, vm: None });
        Ok(json!({ "rcap": new.to_hex() }))
    }

    fn destroy_pool(&self, rcap: &str) -> Result<Value, RpcError> {
        let mut t = self.tables();
        let pool = t.pool(rcap)?;
        if let Some(vm) = &pool.vm {
            return Err(RpcError::new(ErrorCode::Conflict, format!("rcap: the pool is bound to VM {vm}; destroy the VM first")));
        }
        let id = pool.id;
        if t.pools.values().any(|p| p.parent == Some(id)) {
            return Err(RpcError::new(ErrorCode::Conflict, "rcap: pools were split off this one; destroy them first"));
        }
        let parent_update = match pool.parent.and_then(|pid| t.pools.get(&pid)) {
            Some(parent) => {
                let mut r = parent.rspec.clone();
                r.resources = r.resources.checked_add(&pool.rspec.resources).map_err(|e| invalid("rspec", e))?;
                Some((parent.id, r))
            }
            None => None,
        };
        let xml = parent_update.as_ref().map(|(pid, r)| (*pid, r.to_xml()));
        self.store.remove_pool(id, xml.as_ref().map(|(p, x)| (*p, x.as_str()))).map_err(internal)?;
        if let (Some((pid, r)), Some((_, x))) = (parent_update, xml) {
            if let Some(p) = t.pools.get_mut(&pid) {
                p.rspec = r;
                p.xml = x.into();
            }
        }
        if let Some(p) = t.pools.remove(&id) {
            t.by_key.remove(&p.rcap.key());
        }
        Ok(json!({}))
    }

    async fn bind(self: &Arc<Self>, rcap: &str, slice: &str) -> Result<Value, RpcError> {
        let slice = parse_slice("slice_name", slice)?;
        let _guard = self.lifecycle.lock().await;
        enum Plan {
            New(VmRow, VmSpec),
            Add(VmSpec, VmSpec, RSpec),
        }
        let (pool_id, backend, plan) = {
            let t = self.tables();
            let pool = t.pool(rcap)?;
            if let Some(vm) = &pool.vm {
                return Err(RpcError::new(ErrorCode::Conflict, format!("rcap: the pool is already bound to VM {vm}")));
            }
            if !pool.slice.covers(&slice) {
                return Err(RpcError::new(
                    ErrorCode::PermissionDenied,
                    format!("slice_name: the pool belongs to {} and cannot be bound to {slice}", pool.slice),
                ));
            }
            let Some(srs) = pool.rspec.slice() else {
                return Err(RpcError::new(
                    ErrorCode::InvalidRSpec,
                    "rcap: the pool is a PoolRSpec; split off a slice RSpec (VServerSlice, ...) with the keys and bootscript first",
                ));
            };
            if let Some(n) = &srs.name {
                if n != &slice {
                    return Err(invalid("slice_name", format!("the pool's RSpec is for slice {n}, not {slice}")));
                }
            }
            let backend = self.backend(&pool.rspec)?;
            let name = slice.login();
            let plan = match t.vms.get(&name) {
                Some(vm) => {
                    let old = self.spec_of(vm)?;
                    let mut rspec = vm.rspec.clone();
                    rspec.resources = rspec.resources.checked_add(&pool.rspec.resources).map_err(|e| invalid("rspec", e))?;
                    if let (RSpecClass::Slice(s), Some(vm_type)) = (&mut rspec.class, pool.rspec.vm_type()) {
                        if s.vm_type != vm_type {
                            return Err(RpcError::new(
                                ErrorCode::Conflict,
                                format!("rspec: VM {name} is {}; a {vm_type} pool cannot be added to it", s.vm_type),
                            ));
                        }
                        for k in &srs.keys {
                            if !s.keys.contains(k) {
                                s.keys.push(k.clone());
                            }
                        }
                        if srs.bootscript.is_some() {
                            s.bootscript = srs.bootscript.clone();
                        }
                    }
                    let mut new = old.clone();
                    new.resources = rspec.resources;
                    if let Some(s) = rspec.slice() {
                        new.keys = s.keys.clone();
                        new.bootscript = s.bootscript.clone();
                    }
                    Plan::Add(old, new, rspec)
                }
                None => {
                    check_vm_minimums(&pool.rspec.resources)?;
                    let index = (1..).find(|i| !t.vms.values().any(|v| v.index == *i)).unwrap_or(1);
                    let address = self.prefix.vm_address(index).ok_or_else(|| {
                        RpcError::new(ErrorCode::Resources, format!("vm_prefix {} has no address left for another VM", self.cfg.vm_prefix))
                    })?;
                    let mut rspec = pool.rspec.clone();
                    if let RSpecClass::Slice(s) = &mut rspec.class {
                        s.name = Some(slice.clone());
                    }
                    let vm = Vm { name: name.clone(), slice: slice.clone(), rspec, index, address, wanted: Wanted::Creating };
                    let spec = self.spec_of(&vm)?;
                    let row = VmRow {
                        name,
                        slice: slice.to_string(),
                        rspec: vm.rspec.to_xml(),
                        idx: index,
                        address: address.to_string(),
                        state: "creating".into(),
                    };
                    Plan::New(row, spec)
                }
            };
            (pool.id, backend, plan)
        };
        match plan {
            Plan::Add(old, new, rspec) => {
                let b = backend.clone();
                let n2 = new.clone();
                blocking(move || b.update(&old, &n2)).await.map_err(|e| backend_err("Bind", e))?;
                let xml = rspec.to_xml();
                self.store.bind_existing(pool_id, &new.name, &xml).map_err(internal)?;
                let mut t = self.tables();
                if let Some(vm) = t.vms.get_mut(&new.name) {
                    vm.rspec = rspec;
                }
                if let Some(p) = t.pools.get_mut(&pool_id) {
                    p.vm = Some(new.name.clone());
                }
                drop(t);
                tracing::info!(vm = %new.name, "Bind: resources added");
                Ok(self.vm_json(&new.name, None))
            }
            Plan::New(row, spec) => {
                self.store.bind_new(pool_id, &row).map_err(internal)?;
                {
                    let mut t = self.tables();
                    let rspec = RSpec::from_xml(&row.rspec).map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))?;
                    t.vms.insert(
                        row.name.clone(),
                        Vm { name: row.name.clone(), slice: slice.clone(), rspec, index: row.idx, address: spec.network.address, wanted: Wanted::Creating },
                    );
                    if let Some(p) = t.pools.get_mut(&pool_id) {
                        p.vm = Some(row.name.clone());
                    }
                }
                let started = std::time::Instant::now();
                let result = match crate::server::spawn_vm_socket(self, &row.name, slice.clone()) {
                    Ok(()) => {
                        let b = backend.clone();
                        let s = spec.clone();
                        blocking(move || b.create(&s).and_then(|_| b.start(&s))).await.map_err(|e| backend_err("Bind", e))
                    }
                    Err(e) => Err(RpcError::new(ErrorCode::Internal, format!("VM socket: {e}"))),
                };
                match result {
                    Ok(()) => {
                        self.store.set_vm_state(&row.name, "running").map_err(internal)?;
                        if let Some(vm) = self.tables().vms.get_mut(&row.name) {
                            vm.wanted = Wanted::Running;
                        }
                        tracing::info!(vm = %row.name, ms = started.elapsed().as_millis() as u64, "Bind: VM created and started");
                        Ok(self.vm_json(&row.name, None))
                    }
                    Err(e) => {
                        tracing::warn!(vm = %row.name, "Bind failed, undoing: {}", e.message);
                        let b = backend.clone();
                        let n = row.name.clone();
                        if let Err(de) = blocking(move || b.destroy(&n)).await {
                            tracing::error!(vm = %row.name, "cleanup after failed Bind: {de}");
                        }
                        self.forget_vm(&row.name).map_err(internal)?;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Removes a VM's record, its socket, and unbinds its pools.
    fn forget_vm(&self, name: &str) -> Result<(), StoreError> {
        self.store.remove_vm(name)?;
        let mut t = self.tables();
        t.vms.remove(name);
        for p in t.pools.values_mut() {
            if p.vm.as_deref() == Some(name) {
                p.vm = None;
            }
        }
        drop(t);
        if let Some(h) = self.vm_sockets.lock().unwrap_or_else(|p| p.into_inner()).remove(name) {
            h.abort();
        }
        let _ = std::fs::remove_dir_all(self.vm_socket_dir(name));
        Ok(())
    }

    pub(crate) fn register_vm_socket(&self, name: &str, handle: tokio::task::AbortHandle) {
        if let Some(old) = self.vm_sockets.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), handle) {
            old.abort();
        }
    }

    fn vm_json(&self, name: &str, live: Option<(VmState, BTreeMap<String, String>)>) -> Value {
        let t = self.tables();
        let Some(vm) = t.vms.get(name) else { return json!({ "vm": name }) };
        let slice = vm.rspec.slice();
        let mut v = json!({
            "vm": vm.name,
            "slice": vm.slice.to_string(),
            "login": vm.slice.login(),
            "vm_type": slice.map(|s| s.vm_type.to_string()),
            "address": vm.address.to_string(),
            "ssh": format!("{}@{}", vm.slice.login(), vm.address),
            "wanted": vm.wanted.as_str(),
            "resources": resources_json(&vm.rspec.resources),
            "keys": slice.map_or(0, |s| s.keys.len()),
            "pools": t.pools.values().filter(|p| p.vm.as_deref() == Some(name)).count(),
        });
        if let Some((state, details)) = live {
            v["state"] = json!(state.to_string());
            v["details"] = json!(details);
        }
        v
    }

    /// The VM `name` if the caller may act on it, with its backend.
    fn vm_for(&self, caller: &Caller, name: &str) -> Result<(VmSpec, Arc<dyn Backend>), RpcError> {
        let t = self.tables();
        let vm = t
            .vms
            .get(name)
            .filter(|vm| caller.may_see(&vm.slice))
            .ok_or_else(|| RpcError::new(ErrorCode::NotFound, format!("vm: no VM named {name:?} that you may see")))?;
        Ok((self.spec_of(vm)?, self.backend(&vm.rspec)?))
    }

    async fn live(&self, name: &str, backend: Arc<dyn Backend>) -> (VmState, BTreeMap<String, String>) {
        let n = name.to_owned();
        match blocking(move || backend.status(&n)).await {
            Ok(s) => (s.state, s.details),
            Err(e) => (VmState::Missing, [("error".to_string(), e.to_string())].into_iter().collect()),
        }
    }

    async fn list_vms(&self, caller: &Caller) -> Result<Value, RpcError> {
        let names: Vec<String> = self.tables().vms.values().filter(|v| caller.may_see(&v.slice)).map(|v| v.name.clone()).collect();
        let mut out = Vec::new();
        for n in names {
            if let Ok((_, b)) = self.vm_for(caller, &n) {
                let live = self.live(&n, b).await;
                out.push(self.vm_json(&n, Some(live)));
            }
        }
        Ok(json!({ "vms": out }))
    }

    async fn vm_status(&self, caller: &Caller, name: &str) -> Result<Value, RpcError> {
        let (_, b) = self.vm_for(caller, name)?;
        let live = self.live(name, b).await;
        Ok(self.vm_json(name, Some(live)))
    }

    fn list_pools(&self, caller: &Caller) -> Value {
        let t = self.tables();
        let pools: Vec<Value> = t
            .pools
            .values()
            .filter(|p| caller.may_see(&p.slice))
            .map(|p| {
                json!({
                    "id": p.id,
                    "rcap": p.rcap.to_hex(),
                    "parent": p.parent,
                    "slice": p.slice.to_string(),
                    "class": p.rspec.class_name(),
                    "vm_type": p.rspec.vm_type().map(|t| t.to_string()),
                    "vm": p.vm,
                    "resources": resources_json(&p.rspec.resources),
                })
            })
            .collect();
        json!({ "pools": pools })
    }

    async fn set_wanted(&self, name: &str, w: Wanted) -> Result<(), RpcError> {
        self.store.set_vm_state(name, w.as_str()).map_err(internal)?;
        if let Some(vm) = self.tables().vms.get_mut(name) {
            vm.wanted = w;
        }
        Ok(())
    }

    async fn start_vm(&self, caller: &Caller, name: &str) -> Result<Value, RpcError> {
        let _g = self.lifecycle.lock().await;
        let (spec, b) = self.vm_for(caller, name)?;
        blocking(move || b.start(&spec)).await.map_err(|e| backend_err("StartVM", e))?;
        self.set_wanted(name, Wanted::Running).await?;
        Ok(self.vm_json(name, None))
    }

    async fn stop_vm(&self, caller: &Caller, name: &str) -> Result<Value, RpcError> {
        let _g = self.lifecycle.lock().await;
        let (spec, b) = self.vm_for(caller, name)?;
        blocking(move || b.stop(&spec.name)).await.map_err(|e| backend_err("StopVM", e))?;
        self.set_wanted(name, Wanted::Stopped).await?;
        Ok(self.vm_json(name, None))
    }

    async fn destroy_vm(&self, caller: &Caller, name: &str) -> Result<Value, RpcError> {
        let _g = self.lifecycle.lock().await;
        let (spec, b) = self.vm_for(caller, name)?;
        blocking(move || b.destroy(&spec.name)).await.map_err(|e| backend_err("DestroyVM", e))?;
        self.forget_vm(name).map_err(internal)?;
        tracing::info!(vm = name, "DestroyVM");
        Ok(json!({ "vm": name, "destroyed": true }))
    }

    async fn vm_log(&self, caller: &Caller, name: &str, bytes: u64) -> Result<Value, RpcError> {
        let (_, b) = self.vm_for(caller, name)?;
        let n = name.to_owned();
        let log = blocking(move || b.console_log(&n, bytes.min(16 << 20))).await.map_err(|e| backend_err("VmLog", e))?;
        Ok(json!({ "vm": name, "log": log }))
    }

    fn node_info(&self) -> Value {
        let accel = self.accelerator.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let t = self.tables();
        json!({
            "accelerator": accel.as_ref().map(|a| a.0.clone()),
            "accelerator_reason": accel.map(|a| a.1),
            "version": env!("CARGO_PKG_VERSION"),
            "vm_types": self.registry.types().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            "bridge": self.cfg.bridge,
            "vm_prefix": format!("{}/{}", self.prefix.network, self.prefix.len),
            "gateway": self.prefix.gateway().to_string(),
            "node_netns": self.cfg.node_netns,
            "pools": t.pools.len(),
            "vms": t.vms.len(),
        })
    }

    async fn orphans(&self) -> Result<Vec<Value>, RpcError> {
        let mut out = Vec::new();
        for b in self.registry.iter() {
            let b2 = b.clone();
            let names = blocking(move || b2.list()).await.map_err(|e| backend_err("Orphans", e))?;
            let t = self.tables();
            for n in names.into_iter().filter(|n| !t.vms.contains_key(n)) {
                out.push(json!({ "vm": n, "vm_type": b.vm_type().to_string() }));
            }
        }
        Ok(out)
    }

    async fn clean_orphans(&self) -> Result<Value, RpcError> {
        let _g = self.lifecycle.lock().await;
        let mut removed = Vec::new();
        for o in self.orphans().await? {
            let (Some(n), Some(t)) = (o["vm"].as_str(), o["vm_type"].as_str().and_then(vm_types::VmType::parse)) else { continue };
            if let Some(b) = self.registry.get(t).cloned() {
                let n2 = n.to_owned();
                blocking(move || b.destroy(&n2)).await.map_err(|e| backend_err("CleanOrphans", e))?;
                removed.push(n.to_owned());
            }
        }
        Ok(json!({ "removed": removed }))
    }

    /// Brings VMs in line with the records after a start: half-made VMs (a crash during
    /// Bind) are removed, VMs that should run are started, per-VM sockets are opened, and
    /// orphans are reported. Returns a summary line per action.
    pub async fn reconcile(self: &Arc<Self>) -> Vec<String> {
        let _g = self.lifecycle.lock().await;
        let mut report = Vec::new();
        let vms: Vec<(String, SliceName, Wanted)> =
            self.tables().vms.values().map(|v| (v.name.clone(), v.slice.clone(), v.wanted)).collect();
        for (name, slice, wanted) in vms {
            let Ok((spec, b)) = self.vm_for(&Caller::Owner, &name) else { continue };
            if wanted == Wanted::Creating {
                let n = name.clone();
                let r = blocking(move || b.destroy(&n)).await;
                match r.map_err(|e| e.to_string()).and_then(|_| self.forget_vm(&name).map_err(|e| e.to_string())) {
                    Ok(()) => report.push(format!("{name}: removed a VM whose creation was interrupted")),
                    Err(e) => report.push(format!("{name}: could not remove a half-made VM: {e}")),
                }
                continue;
            }
            if let Err(e) = crate::server::spawn_vm_socket(self, &name, slice) {
                report.push(format!("{name}: VM socket: {e}"));
            }
            let b2 = b.clone();
            let n = name.clone();
            let state = blocking(move || b2.status(&n)).await.map(|s| s.state);
            match (wanted, state) {
                (Wanted::Running, Ok(VmState::Running)) | (Wanted::Stopped, Ok(VmState::Stopped)) => {}
                (Wanted::Running, _) => {
                    let s = spec.clone();
                    match blocking(move || b.start(&s)).await {
                        Ok(()) => report.push(format!("{name}: restarted")),
                        Err(e) => report.push(format!("{name}: should run but failed to start: {e}")),
                    }
                }
                (_, _) => {
                    let n = name.clone();
                    if let Err(e) = blocking(move || b.stop(&n)).await {
                        report.push(format!("{name}: should be stopped but failed to stop: {e}"));
                    }
                }
            }
        }
        drop(_g);
        match self.orphans().await {
            Ok(o) if !o.is_empty() => report.push(format!(
                "orphans (VMs without a record; remove with `plab nm clean-orphans`): {}",
                o.iter().filter_map(|v| v["vm"].as_str()).collect::<Vec<_>>().join(", ")
            )),
            Err(e) => report.push(format!("listing orphans failed: {}", e.message)),
            _ => {}
        }
        report
    }
}

fn owner_only(caller: &Caller, m: Method) -> Result<(), RpcError> {
    match caller {
        Caller::Owner => Ok(()),
        Caller::Slice(s) => Err(RpcError::new(
            ErrorCode::PermissionDenied,
            format!("{}: permission denied: only the node owner (site_admin) may call it, and the caller is slice {s}", m.name()),
        )),
    }
}

/// The node's memory in MB, from /proc/meminfo.
fn node_memory_mb() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn check_vm_minimums(r: &Resources) -> Result<(), RpcError> {
    if let Some(total) = node_memory_mb() {
        if r.mem_limit.scaled(1) > total {
            return Err(RpcError::new(
                ErrorCode::Resources,
                format!("mem_limit: {} MB is more than this node's memory ({total} MB)", r.mem_limit),
            ));
        }
    }
    if r.mem_limit.scaled(1) < MIN_VM_MEM_MB {
        return Err(RpcError::new(
            ErrorCode::Resources,
            format!("mem_limit: the pool holds {} MB; a VM needs at least {MIN_VM_MEM_MB} MB", r.mem_limit),
        ));
    }
    if r.cpu_share.milli() == 0 {
        return Err(RpcError::new(ErrorCode::Resources, "cpu_share: the pool holds 0 shares; a VM needs some"));
    }
    if r.disk_quota.milli() < 16 {
        return Err(RpcError::new(
            ErrorCode::Resources,
            format!("disk_quota: the pool holds {} GB; a VM needs at least 0.016 GB", r.disk_quota),
        ));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(BackendError::Invalid(format!("backend task failed: {e}"))))
}

fn set_mode(p: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}
