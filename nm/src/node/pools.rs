//! Resource pools (section 4.3): `CreatePool`, `GetRcap`, `GetRSpec`, `SplitPool`,
//! `DestroyPool` and `ListPools`.

use super::{owner_only, Caller, NmError, NodeManager, Pool};
use crate::api::{PoolInfo, PoolsResult, RSpecResult, RcapResult, RcapsResult};
use crate::rcap::Rcap;
use std::collections::BTreeMap;
use std::sync::Arc;
use vm_types::{RSpec, RSpecClass, Resources, SliceName};

/// Resources with their units, as the API shows them (`"256 MB"`).
pub fn resources_map(r: &Resources) -> BTreeMap<String, String> {
    Resources::ATTRIBUTES
        .iter()
        .map(|(attr, unit)| (attr.to_string(), format!("{} {unit}", r.get(attr).unwrap_or_default())))
        .collect()
}

pub(crate) fn parse_rspec(xml: &str) -> Result<RSpec, NmError> {
    RSpec::from_xml(xml).map_err(|e| NmError::InvalidRSpec(format!("rspec: {e}")))
}

/// Most pools one slice may hold on a node (the owner's own splits excepted): every pool
/// costs the node manager work on every listing.
pub const MAX_POOLS_PER_SLICE: usize = 256;

fn fresh_rcap() -> Result<Rcap, NmError> {
    Rcap::generate().map_err(|e| NmError::Internal(format!("the OS random generator failed: {e}")))
}

impl NodeManager {
    pub(crate) fn create_pool(&self, caller: &Caller, xml: &str, slice: SliceName) -> Result<RcapResult, NmError> {
        owner_only(caller, "CreatePool")?;
        let rspec = parse_rspec(xml)?;
        let rcap = fresh_rcap()?;
        let xml: Arc<str> = rspec.to_xml().into();
        let mut t = self.tables();
        let id = self.store.insert_pool(&rcap.to_hex(), slice.as_str(), &xml)?;
        t.insert_pool(Pool { id, rcap, parent: None, slice, rspec, xml, vm: None });
        tracing::info!(pool = id, "CreatePool");
        Ok(RcapResult { rcap: rcap.to_hex() })
    }

    pub(crate) fn get_rcap(&self, caller: &Caller, slice: Option<SliceName>) -> Result<RcapsResult, NmError> {
        let wanted = match (caller, slice) {
            (Caller::Owner, s) => s,
            (Caller::Slice(own), Some(s)) if &s != own => {
                return Err(NmError::PermissionDenied(format!(
                    "slice_name: a slice may only ask for its own rcaps ({own})"
                )))
            }
            (Caller::Slice(own), _) => Some(own.clone()),
        };
        let t = self.tables();
        let rcaps = t
            .pools
            .values()
            .filter(|p| wanted.as_ref().is_none_or(|w| &p.slice == w))
            .map(|p| p.rcap.to_hex())
            .collect();
        Ok(RcapsResult { rcaps })
    }

    pub(crate) fn get_rspec(&self, rcap: &str) -> Result<RSpecResult, NmError> {
        Ok(RSpecResult { rspec: self.tables().pool(rcap)?.xml.to_string() })
    }

    pub(crate) fn split_pool(&self, caller: &Caller, rcap: &str, xml: &str) -> Result<RcapResult, NmError> {
        let mut child = parse_rspec(xml)?;
        let mut t = self.tables();
        let parent = t.pool(rcap)?;
        if let Some(vm) = &parent.vm {
            return Err(NmError::Conflict(format!("rcap: the pool is bound to VM {vm} and cannot be split")));
        }
        if parent.rspec.slice().is_some() {
            return Err(NmError::Conflict(format!(
                "rcap: a VM's pool ({}) is not split; split the pool it came from",
                parent.rspec.class_name()
            )));
        }
        // An empty sub-pool is allowed (bound to a VM it adds keys); the cap on pools per
        // slice below bounds how many anyone can make.
        let owner = matches!(caller, Caller::Owner);
        if !owner && t.pools.values().filter(|p| p.slice == parent.slice).count() >= MAX_POOLS_PER_SLICE {
            return Err(NmError::Resources(format!(
                "rspec: {} holds {MAX_POOLS_PER_SLICE} pools on this node already; destroy some first",
                parent.slice
            )));
        }
        if let Some(limit) = parent.rspec.vm_type() {
            match &mut child.class {
                RSpecClass::Slice(s) if s.vm_type != limit => {
                    return Err(NmError::InvalidRSpec(format!(
                        "rspec: vm_type {} is not allowed by the pool, which is for {limit}",
                        s.vm_type
                    )))
                }
                RSpecClass::Pool(p) if p.vm_type.is_some_and(|w| w != limit) => {
                    return Err(NmError::InvalidRSpec(format!(
                        "rspec: vm_type {} is not allowed by the pool, which is for {limit}",
                        p.vm_type.map(|v| v.to_string()).unwrap_or_default()
                    )))
                }
                // A sub-pool keeps its parent's restriction, so no split can shed it.
                RSpecClass::Pool(p) => p.vm_type = Some(limit),
                RSpecClass::Slice(_) => {}
            }
        }
        // Only the owner designates authorities; a pool may hand on one of its own, as it
        // is (the same URL and certificate), for its authority or one below it.
        if let (false, RSpecClass::Pool(cp), RSpecClass::Pool(pp)) = (owner, &child.class, &parent.rspec.class) {
            for a in &cp.slice_authorities {
                let given = pp
                    .slice_authorities
                    .iter()
                    .any(|pa| pa.name.covers(&a.name) && pa.url == a.url && pa.certificate == a.certificate);
                if !given {
                    return Err(NmError::PermissionDenied(format!(
                        "rspec: slice_authority {} is not the pool's to give (only the owner designates authorities)",
                        a.name
                    )));
                }
            }
        }
        let slice = match child.slice().and_then(|s| s.name.clone()) {
            Some(n) if !owner && n != parent.slice && !parent.rspec.authorities().any(|a| a.is_above(&n)) => {
                return Err(NmError::PermissionDenied(format!(
                    "rspec: slice {n} is not the pool's slice ({}) and the pool names no authority above it",
                    parent.slice
                )))
            }
            Some(n) => n,
            None => parent.slice.clone(),
        };
        if let Some(b) = t.blacklisted(&slice) {
            return Err(NmError::PermissionDenied(format!("rspec: {slice} is blacklisted on this node (entry {b})")));
        }
        let rest = parent
            .rspec
            .resources
            .checked_sub(&child.resources)
            .map_err(|e| NmError::Resources(format!("rspec: {e}")))?;
        let mut parent_rspec = parent.rspec.clone();
        parent_rspec.resources = rest;
        let parent_xml: Arc<str> = parent_rspec.to_xml().into();
        let child_xml: Arc<str> = child.to_xml().into();
        let new = fresh_rcap()?;
        let pid = parent.id;
        let id = self.store.split(pid, &parent_xml, &new.to_hex(), slice.as_str(), &child_xml)?;
        if let Some(p) = t.pools.get_mut(&pid) {
            p.rspec = parent_rspec;
            p.xml = parent_xml;
        }
        t.insert_pool(Pool { id, rcap: new, parent: Some(pid), slice, rspec: child, xml: child_xml, vm: None });
        Ok(RcapResult { rcap: new.to_hex() })
    }

    pub(crate) fn destroy_pool(&self, rcap: &str) -> Result<jsonrpc::Empty, NmError> {
        let mut t = self.tables();
        let pool = t.pool(rcap)?;
        if let Some(vm) = &pool.vm {
            return Err(NmError::Conflict(format!("rcap: the pool is bound to VM {vm}; destroy the VM first")));
        }
        let id = pool.id;
        if t.pools.values().any(|p| p.parent == Some(id)) {
            return Err(NmError::Conflict("rcap: pools were split off this one; destroy them first".into()));
        }
        let parent_update = match pool.parent.and_then(|pid| t.pools.get(&pid)) {
            Some(parent) => {
                let mut r = parent.rspec.clone();
                r.resources =
                    r.resources.checked_add(&pool.rspec.resources).map_err(|e| NmError::invalid("rspec", e))?;
                let xml: Arc<str> = r.to_xml().into();
                Some((parent.id, r, xml))
            }
            None => None,
        };
        self.store.remove_pool(id, parent_update.as_ref().map(|(p, _, x)| (*p, &**x)))?;
        if let Some((pid, r, x)) = parent_update {
            if let Some(p) = t.pools.get_mut(&pid) {
                p.rspec = r;
                p.xml = x;
            }
        }
        if let Some(p) = t.pools.remove(&id) {
            t.by_key.remove(&p.rcap.key());
        }
        Ok(jsonrpc::Empty {})
    }

    pub(crate) fn list_pools(&self, caller: &Caller) -> PoolsResult {
        let t = self.tables();
        let pools = t
            .pools
            .values()
            .filter(|p| t.may_see_pool(caller, p))
            .map(|p| PoolInfo {
                id: p.id,
                rcap: p.rcap.to_hex(),
                parent: p.parent,
                slice: p.slice.clone(),
                class: p.rspec.class_name().to_owned(),
                vm_type: p.rspec.vm_type(),
                vm: p.vm.clone(),
                resources: resources_map(&p.rspec.resources),
            })
            .collect();
        PoolsResult { pools }
    }
}
