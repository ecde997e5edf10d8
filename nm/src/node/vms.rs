//! VMs: `ListVMs`, `VmStatus`, `StartVM`, `StopVM`, `DestroyVM`, `VmLog`, and `NodeInfo`.

use super::pools::resources_map;
use super::{blocking, Caller, NmError, NodeManager};
use crate::api::{
    DestroyedResult, NodeInfoResult, UpdateVmParams, VmInfo, VmLogResult, VmsResult, Wanted, MAX_LOG_BYTES,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use vm_types::{Backend, VmSpec, VmState};

/// Live facts about a VM: its state and the backend's details.
pub(crate) type Live = (VmState, BTreeMap<String, String>);

impl NodeManager {
    /// The API's view of VM `name`, with live facts when given.
    pub(crate) fn vm_info(&self, caller: &Caller, name: &str, live: Option<Live>) -> Result<VmInfo, NmError> {
        let t = self.tables();
        let s = t.sliver_for(caller, name)?;
        let login = s.slice.login();
        let (state, details) = match live {
            Some((st, d)) => (Some(st), Some(d)),
            None => (None, None),
        };
        let ssh_port = self.cfg.ssh_port(s.index);
        let nat_ports = self.cfg.nat_ports(s.index).map(|(first, last)| format!("{first}-{last}"));
        let ssh_command = match (ssh_port, self.cfg.public_address) {
            (Some(port), Some(public)) => format!("ssh -p {port} {login}@{public}"),
            _ => format!("ssh {login}@{}", s.address),
        };
        Ok(VmInfo {
            vm: s.name.clone(),
            slice: s.slice.clone(),
            ssh: format!("{login}@{}", s.address),
            ssh_port,
            ssh_command,
            nat_ports,
            rspec: s.rspec().to_xml(),
            login,
            vm_type: s.vm.vm_type,
            address: s.address.to_string(),
            wanted: s.wanted,
            resources: resources_map(&s.resources),
            keys: s.vm.keys.len(),
            pools: t.pools.values().filter(|p| p.vm.as_deref() == Some(name)).count(),
            state,
            details,
        })
    }

    /// VM `name`'s spec and backend, if the caller may act on it.
    pub(crate) fn vm_for(&self, caller: &Caller, name: &str) -> Result<(VmSpec, Arc<dyn Backend>), NmError> {
        let t = self.tables();
        let s = t.sliver_for(caller, name)?;
        Ok((self.spec_of(s), self.backend(s.vm.vm_type)?))
    }

    /// `classes`: the bandwidth classes, read once by the caller for every VM it reports.
    pub(crate) async fn live(
        &self,
        name: &str,
        backend: Arc<dyn Backend>,
        classes: Option<&[BTreeMap<String, crate::shaping::ClassStats>; 2]>,
    ) -> Live {
        let n = name.to_owned();
        let (state, mut details) = match blocking(move || backend.status(&n)).await {
            Ok(s) => (s.state, s.details),
            Err(e) => (VmState::Missing, [("error".to_string(), e.to_string())].into_iter().collect()),
        };
        if state == VmState::Running {
            details.extend(self.network_details(name, classes));
        }
        (state, details)
    }

    pub(crate) async fn list_vms(&self, caller: &Caller) -> VmsResult {
        let names: Vec<String> = {
            let t = self.tables();
            t.slivers.values().filter(|v| t.may_act_on(caller, v)).map(|v| v.name.clone()).collect()
        };
        let mut vms = Vec::new();
        let classes = self.bandwidth_classes();
        for n in names {
            // A VM destroyed meanwhile is simply not listed.
            if let Ok((_, b)) = self.vm_for(caller, &n) {
                let live = self.live(&n, b, classes.as_ref()).await;
                if let Ok(v) = self.vm_info(caller, &n, Some(live)) {
                    vms.push(v);
                }
            }
        }
        VmsResult { vms }
    }

    pub(crate) async fn vm_status(&self, caller: &Caller, name: &str) -> Result<VmInfo, NmError> {
        let (_, b) = self.vm_for(caller, name)?;
        let classes = self.bandwidth_classes();
        let live = self.live(name, b, classes.as_ref()).await;
        self.vm_info(caller, name, Some(live))
    }

    pub(crate) async fn start_vm(&self, caller: &Caller, name: &str) -> Result<VmInfo, NmError> {
        self.vm_for(caller, name)?;
        let _g = self.locks.lock(name).await;
        let (spec, b) = self.vm_for(caller, name)?;
        blocking(move || b.start(&spec)).await.map_err(NmError::backend("StartVM"))?;
        self.set_wanted(name, Wanted::Running)?;
        if let Err(e) = self.shape_vm(name) {
            // No VM runs without its bandwidth limits: stop it again (reconciliation
            // starts it, and shapes it, once shaping works).
            let (_, b) = self.vm_for(caller, name)?;
            let n = name.to_owned();
            if let Err(se) = blocking(move || b.stop(&n)).await {
                tracing::error!(vm = %name, "StartVM: stopping the unshaped VM failed: {se}");
            }
            return Err(NmError::Internal(format!(
                "StartVM: its bandwidth limits could not be applied, so it was stopped: {e}"
            )));
        }
        self.vm_info(caller, name, None)
    }

    pub(crate) async fn stop_vm(&self, caller: &Caller, name: &str) -> Result<VmInfo, NmError> {
        self.vm_for(caller, name)?;
        let _g = self.locks.lock(name).await;
        let (spec, b) = self.vm_for(caller, name)?;
        blocking(move || b.stop(&spec.name)).await.map_err(NmError::backend("StopVM"))?;
        self.set_wanted(name, Wanted::Stopped)?;
        self.vm_info(caller, name, None)
    }

    pub(crate) async fn destroy_vm(&self, caller: &Caller, name: &str) -> Result<DestroyedResult, NmError> {
        self.vm_for(caller, name)?;
        let _g = self.locks.lock(name).await;
        let (spec, b) = self.vm_for(caller, name)?;
        blocking(move || b.destroy(&spec.name)).await.map_err(NmError::backend("DestroyVM"))?;
        self.forget_vm(name)?;
        tracing::info!(vm = name, "DestroyVM");
        Ok(DestroyedResult { vm: name.to_owned(), destroyed: true })
    }

    pub(crate) async fn update_vm(&self, caller: &Caller, p: UpdateVmParams) -> Result<VmInfo, NmError> {
        let name = p.vm.as_str();
        self.vm_for(caller, name)?;
        let _g = self.locks.lock(name).await;
        let (old, new) = {
            let t = self.tables();
            let old = t.sliver_for(caller, name)?.clone();
            let mut new = old.clone();
            new.vm.keys = p.keys;
            new.vm.bootscript = p.bootscript;
            (old, new)
        };
        let (old_spec, new_spec) = (self.spec_of(&old), self.spec_of(&new));
        let b = self.backend(new.vm.vm_type)?;
        let b2 = b.clone();
        let (o, n) = (old_spec.clone(), new_spec.clone());
        blocking(move || b2.update(&o, &n)).await.map_err(NmError::backend("UpdateVM"))?;
        let recorded = {
            let mut t = self.tables();
            self.store.set_vm_rspec(name, &new.rspec().to_xml()).map(|()| t.slivers.insert(name.to_owned(), new))
        };
        if let Err(e) = recorded {
            if let Err(re) = blocking(move || b.update(&new_spec, &old_spec)).await {
                tracing::error!(vm = name, "UpdateVM: undoing an unrecorded update failed: {re}");
            }
            return Err(e.into());
        }
        tracing::info!(vm = name, "UpdateVM: keys and bootscript replaced");
        self.vm_info(caller, name, None)
    }

    pub(crate) async fn vm_log(
        &self,
        caller: &Caller,
        name: &str,
        bytes: Option<u64>,
        from: Option<u64>,
    ) -> Result<VmLogResult, NmError> {
        let (_, b) = self.vm_for(caller, name)?;
        let n = name.to_owned();
        let bytes = bytes.unwrap_or(64 * 1024).min(MAX_LOG_BYTES);
        if let Some(from) = from {
            let c = blocking(move || b.console_from(&n, from, bytes)).await.map_err(NmError::backend("VmLog"))?;
            return Ok(VmLogResult {
                vm: name.to_owned(),
                log: String::from_utf8_lossy(&c.bytes).into_owned(),
                next: Some(c.next),
                skipped: Some(c.skipped),
            });
        }
        let (log, next) = blocking(move || {
            let log = b.console_log(&n, bytes)?;
            // Where the log ends, for a reader that follows it (when it can be followed).
            let next = b.console_from(&n, u64::MAX, 0).ok().map(|c| c.next);
            Ok((log, next))
        })
        .await
        .map_err(NmError::backend("VmLog"))?;
        Ok(VmLogResult { vm: name.to_owned(), log, next, skipped: None })
    }

    pub(crate) fn node_info(&self) -> NodeInfoResult {
        let facts = self.facts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let t = self.tables();
        NodeInfoResult {
            accelerator: facts.accelerator.as_ref().map(|a| a.0.clone()),
            accelerator_reason: facts.accelerator.map(|a| a.1),
            version: env!("CARGO_PKG_VERSION").into(),
            vm_types: self.registry.types(),
            unavailable: vm_types::VmType::ALL
                .iter()
                .filter_map(|t| self.registry.unavailable(*t).map(|w| (t.to_string(), w.to_owned())))
                .collect(),
            warnings: facts.warnings,
            bridge: self.cfg.bridge.clone(),
            vm_prefix: self.cfg.vm_prefix.to_string(),
            gateway: self.cfg.vm_prefix.gateway().to_string(),
            node_netns: self.cfg.node_netns.clone(),
            public_address: self.cfg.public_address.map(|a| a.to_string()),
            node_id: self.node_id(),
            pools: t.pools.len(),
            vms: t.slivers.len(),
        }
    }
}
