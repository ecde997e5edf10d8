//! The owner's blacklist (section 3): an owner may bar slices, or whole slice authorities,
//! from its node whatever its management authority says. A barred slice's VM is destroyed
//! and no pool can be split or bound for it (so no slice creation service recreates it)
//! until the owner lifts the bar.

use super::{owner_only, Caller, NmError, NodeManager};
use crate::api::BlacklistResult;
use std::sync::Arc;
use vm_types::SliceName;

impl NodeManager {
    fn blacklist_now(&self, destroyed: Vec<String>) -> BlacklistResult {
        BlacklistResult { blacklist: self.tables().blacklist.iter().cloned().collect(), destroyed }
    }

    pub(crate) async fn blacklist(
        self: &Arc<Self>,
        caller: &Caller,
        name: SliceName,
    ) -> Result<BlacklistResult, NmError> {
        owner_only(caller, "Blacklist")?;
        {
            let mut t = self.tables();
            self.store.blacklist_add(name.as_str())?;
            t.blacklist.insert(name.clone());
        }
        tracing::warn!(entry = %name, "Blacklist: the owner barred it from this node");
        // New Binds are refused from here on; destroy what is already there.
        let barred: Vec<String> =
            self.tables().slivers.values().filter(|s| name.covers(&s.slice)).map(|s| s.name.clone()).collect();
        let mut destroyed = Vec::new();
        for vm in barred {
            match self.destroy_vm(&Caller::Owner, &vm).await {
                Ok(_) => destroyed.push(vm),
                Err(NmError::NoSuchVm(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.blacklist_now(destroyed))
    }

    pub(crate) fn unblacklist(&self, caller: &Caller, name: &SliceName) -> Result<BlacklistResult, NmError> {
        owner_only(caller, "Unblacklist")?;
        {
            let mut t = self.tables();
            if !self.store.blacklist_remove(name.as_str())? {
                return Err(NmError::NotFound(format!("name: {name} is not on the blacklist")));
            }
            t.blacklist.remove(name);
        }
        Ok(self.blacklist_now(vec![]))
    }

    pub(crate) fn get_blacklist(&self) -> BlacklistResult {
        self.blacklist_now(vec![])
    }
}
