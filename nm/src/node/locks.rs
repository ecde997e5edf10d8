//! One lifecycle lock per VM: operations on one VM (Bind, Start, Stop, Destroy, repair at
//! start) run one at a time, while other VMs' operations go on beside them. A guest that
//! takes ten seconds to boot under TCG holds up only its own VM.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The lock table.
#[derive(Default)]
pub struct VmLocks {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Held while one VM's lifecycle operation runs.
pub type VmGuard = OwnedMutexGuard<()>;

impl VmLocks {
    /// Waits for VM `name`'s lock.
    pub async fn lock(&self, name: &str) -> VmGuard {
        let m = {
            let mut t = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            // Entries nobody holds or waits for (only the table refers to them) go, so the
            // table does not grow with every VM name ever used. Safe: under the table's
            // lock nobody can be about to take one of them.
            t.retain(|_, m| Arc::strong_count(m) > 1);
            t.entry(name.to_owned()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// How many VMs have a lock held or awaited (for tests).
    pub fn busy(&self) -> usize {
        let t = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        t.values().filter(|m| Arc::strong_count(m) > 1).count()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_vm_waits_another_does_not() {
        let l = Arc::new(VmLocks::default());
        let a = l.lock("a").await;
        // Another VM's lock is free at once.
        tokio::time::timeout(Duration::from_secs(1), l.lock("b")).await.expect("b is not held up by a");
        // The same VM waits until the holder lets go.
        let l2 = l.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("a").await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a second lock on a must wait");
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        assert_eq!(l.busy(), 0);
    }
}
