//! Bringing VMs in line with the records when the node manager starts, and VMs that a
//! backend holds without a record (orphans).

use super::{blocking, owner_only, Caller, NmError, NodeManager};
use crate::api::{Orphan, OrphansResult, RemovedResult, Wanted};
use std::sync::Arc;
use vm_types::VmState;

/// One repair reconciliation made, or failed to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// A VM whose creation a crash interrupted was removed.
    RemovedHalfMade(String),
    /// A VM that should run was started again.
    Restarted(String),
    /// A VM that should be stopped was stopped.
    Stopped(String),
    /// Backends hold VMs the node manager has no record of.
    Orphans(Vec<String>),
    /// A repair failed; the message says which and why.
    Failed(String),
}

impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repair::RemovedHalfMade(n) => write!(f, "{n}: removed a VM whose creation was interrupted"),
            Repair::Restarted(n) => write!(f, "{n}: restarted"),
            Repair::Stopped(n) => write!(f, "{n}: stopped, as recorded"),
            Repair::Orphans(o) => {
                write!(f, "orphans (VMs without a record; remove with `plab nm clean-orphans`): {}", o.join(", "))
            }
            Repair::Failed(m) => f.write_str(m),
        }
    }
}

impl NodeManager {
    /// Brings VMs in line with the records after a start: half-made VMs (a crash during
    /// Bind) are removed, VMs that should run are started, VMs that should be stopped are
    /// stopped, per-VM sockets are opened, and orphans are reported.
    pub async fn reconcile(self: &Arc<Self>) -> Vec<Repair> {
        let mut report = Vec::new();
        // Without the network policy a VM would run unfiltered: none is started then.
        let network = self.install_network().map_err(|e| e.to_string());
        if let Err(e) = &network {
            report.push(Repair::Failed(format!("network policy, NAT, ssh forwards and bandwidth: {e}")));
        }
        let slivers: Vec<_> =
            self.tables().slivers.values().map(|s| (s.name.clone(), s.slice.clone(), s.wanted)).collect();
        for (name, slice, wanted) in slivers {
            let _g = self.locks.lock(&name).await;
            let (spec, b) = match self.vm_for(&Caller::Owner, &name) {
                Ok(x) => x,
                Err(e) => {
                    report.push(Repair::Failed(format!("{name}: {e}")));
                    continue;
                }
            };
            if wanted == Wanted::Creating {
                let n = name.clone();
                let r = blocking(move || b.destroy(&n)).await.map_err(|e| e.to_string());
                match r.and_then(|_| self.forget_vm(&name).map_err(|e| e.to_string())) {
                    Ok(()) => report.push(Repair::RemovedHalfMade(name)),
                    Err(e) => report.push(Repair::Failed(format!("{name}: could not remove a half-made VM: {e}"))),
                }
                continue;
            }
            if let Err(e) = self.open_vm_socket(&name, slice, spec.network.index) {
                report.push(Repair::Failed(format!("{name}: VM socket: {e}")));
            }
            let b2 = b.clone();
            let n = name.clone();
            let state = blocking(move || b2.status(&n)).await.map(|s| s.state);
            match (wanted, state) {
                (Wanted::Running, Ok(VmState::Running)) => {
                    if let Err(e) = self.shape_vm(&name) {
                        report.push(Repair::Failed(format!("{name}: bandwidth: {e}")));
                    }
                }
                (Wanted::Stopped, Ok(VmState::Stopped)) => {}
                (Wanted::Running, _) if network.is_err() => report
                    .push(Repair::Failed(format!("{name}: not started, since the network policy is not in place"))),
                (Wanted::Running, _) => {
                    let b2 = b.clone();
                    match blocking(move || b2.start(&spec)).await {
                        Err(e) => report.push(Repair::Failed(format!("{name}: should run but failed to start: {e}"))),
                        Ok(()) => match self.shape_vm(&name) {
                            Ok(()) => report.push(Repair::Restarted(name)),
                            Err(e) => {
                                // Not left running without its bandwidth limits.
                                let n = name.clone();
                                let _ = blocking(move || b.stop(&n)).await;
                                report.push(Repair::Failed(format!(
                                    "{name}: stopped again, since its bandwidth limits could not be applied: {e}"
                                )))
                            }
                        },
                    }
                }
                (_, _) => {
                    let n = name.clone();
                    match blocking(move || b.stop(&n)).await {
                        Ok(()) => report.push(Repair::Stopped(name)),
                        Err(e) => {
                            report.push(Repair::Failed(format!("{name}: should be stopped but failed to stop: {e}")))
                        }
                    }
                }
            }
        }
        match self.orphans().await {
            Ok(o) if !o.is_empty() => report.push(Repair::Orphans(o.into_iter().map(|o| o.vm).collect())),
            Err(e) => report.push(Repair::Failed(format!("listing orphans failed: {e}"))),
            _ => {}
        }
        report
    }

    /// VMs the backends hold that have no record.
    pub(crate) async fn orphans(&self) -> Result<Vec<Orphan>, NmError> {
        let mut out = Vec::new();
        for b in self.registry.iter() {
            let b2 = b.clone();
            let names = blocking(move || b2.list()).await.map_err(NmError::backend("Orphans"))?;
            let t = self.tables();
            out.extend(
                names.into_iter().filter(|n| !t.slivers.contains_key(n)).map(|vm| Orphan { vm, vm_type: b.vm_type() }),
            );
        }
        Ok(out)
    }

    pub(crate) async fn orphans_for(&self, caller: &Caller) -> Result<OrphansResult, NmError> {
        owner_only(caller, "Orphans")?;
        Ok(OrphansResult { orphans: self.orphans().await? })
    }

    pub(crate) async fn clean_orphans(&self, caller: &Caller) -> Result<RemovedResult, NmError> {
        owner_only(caller, "CleanOrphans")?;
        let mut removed = Vec::new();
        for o in self.orphans().await? {
            let _g = self.locks.lock(&o.vm).await;
            // A Bind may have recorded it while we waited.
            if self.tables().slivers.contains_key(&o.vm) {
                continue;
            }
            if let Some(b) = self.registry.get(o.vm_type).cloned() {
                let n = o.vm.clone();
                blocking(move || b.destroy(&n)).await.map_err(NmError::backend("CleanOrphans"))?;
                removed.push(o.vm);
            }
        }
        Ok(RemovedResult { removed })
    }
}
