//! An in-memory backend for unit tests: it records calls and can be told to fail.

use crate::backend::{Backend, BackendError, VmSpec, VmState, VmStatus};
use crate::vm_type::VmType;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A backend that keeps VMs in memory.
#[derive(Default)]
pub struct FakeBackend {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    vms: BTreeMap<String, (VmSpec, VmState)>,
    calls: Vec<String>,
    fail_next_start: bool,
}

impl FakeBackend {
    /// A fake with no VMs.
    pub fn new() -> FakeBackend {
        FakeBackend::default()
    }

    /// Makes the next `start` fail, as a VM that cannot boot would.
    pub fn fail_next_start(&self) {
        self.lock().fail_next_start = true;
    }

    /// The calls made so far, as `method name`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The spec a VM was last created or updated with.
    pub fn spec(&self, name: &str) -> Option<VmSpec> {
        self.lock().vms.get(name).map(|(s, _)| s.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for FakeBackend {
    fn vm_type(&self) -> VmType {
        VmType::LinuxVserverX86
    }
    fn check(&self) -> Result<(), BackendError> {
        Ok(())
    }
    fn create(&self, spec: &VmSpec) -> Result<(), BackendError> {
        let mut s = self.lock();
        s.calls.push(format!("create {}", spec.name));
        s.vms.insert(spec.name.clone(), (spec.clone(), VmState::Stopped));
        Ok(())
    }
    fn start(&self, spec: &VmSpec) -> Result<(), BackendError> {
        let mut s = self.lock();
        s.calls.push(format!("start {}", spec.name));
        if std::mem::take(&mut s.fail_next_start) {
            return Err(BackendError::Invalid("fake start failure".into()));
        }
        match s.vms.get_mut(&spec.name) {
            Some(v) => {
                v.1 = VmState::Running;
                Ok(())
            }
            None => Err(BackendError::NotFound(spec.name.clone())),
        }
    }
    fn stop(&self, name: &str) -> Result<(), BackendError> {
        let mut s = self.lock();
        s.calls.push(format!("stop {name}"));
        match s.vms.get_mut(name) {
            Some(v) => {
                v.1 = VmState::Stopped;
                Ok(())
            }
            None => Err(BackendError::NotFound(name.into())),
        }
    }
    fn destroy(&self, name: &str) -> Result<(), BackendError> {
        let mut s = self.lock();
        s.calls.push(format!("destroy {name}"));
        s.vms.remove(name);
        Ok(())
    }
    fn update(&self, _old: &VmSpec, new: &VmSpec) -> Result<(), BackendError> {
        let mut s = self.lock();
        s.calls.push(format!("update {}", new.name));
        match s.vms.get_mut(&new.name) {
            Some(v) => {
                v.0 = new.clone();
                Ok(())
            }
            None => Err(BackendError::NotFound(new.name.clone())),
        }
    }
    fn status(&self, name: &str) -> Result<VmStatus, BackendError> {
        let s = self.lock();
        let state = s.vms.get(name).map_or(VmState::Missing, |v| v.1);
        Ok(VmStatus { state, details: BTreeMap::new() })
    }
    fn list(&self) -> Result<Vec<String>, BackendError> {
        Ok(self.lock().vms.keys().cloned().collect())
    }
    fn console_log(&self, name: &str, _max: u64) -> Result<String, BackendError> {
        Ok(format!("fake console of {name}\n"))
    }
}
