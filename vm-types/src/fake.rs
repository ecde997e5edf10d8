//! An in-memory backend for unit tests: it serves any one VM type, records every call
//! (typed), and can be told to fail any operation a number of times, or to take a while.

use crate::backend::{Backend, BackendError, VmSpec, VmState, VmStatus};
use crate::vm_type::VmType;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// A backend operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `create`
    Create,
    /// `start`
    Start,
    /// `stop`
    Stop,
    /// `destroy`
    Destroy,
    /// `update`
    Update,
    /// `status`
    Status,
    /// `list`
    List,
    /// `console_log`
    ConsoleLog,
}

/// One recorded call: the operation and the VM it named (empty for `list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCall {
    /// What was asked.
    pub op: Op,
    /// Of which VM.
    pub vm: String,
}

/// A backend that keeps VMs in memory.
pub struct FakeBackend {
    vm_type: VmType,
    state: Mutex<FakeState>,
}

/// How an injected failure is made, from the VM's name.
type MakeError = fn(String) -> BackendError;

#[derive(Default)]
struct FakeState {
    vms: BTreeMap<String, (VmSpec, VmState)>,
    calls: Vec<FakeCall>,
    failures: BTreeMap<Op, (usize, MakeError)>,
    delays: BTreeMap<Op, Duration>,
}

impl Default for FakeBackend {
    fn default() -> FakeBackend {
        FakeBackend::new()
    }
}

impl FakeBackend {
    /// A fake linux-vserver-x86 backend with no VMs.
    pub fn new() -> FakeBackend {
        FakeBackend::of(VmType::LinuxVserverX86)
    }

    /// A fake backend for `vm_type`.
    pub fn of(vm_type: VmType) -> FakeBackend {
        FakeBackend { vm_type, state: Mutex::new(FakeState::default()) }
    }

    /// Makes the next `times` calls of `op` fail with the error `make` builds from the
    /// VM's name.
    pub fn fail(&self, op: Op, times: usize, make: MakeError) {
        self.lock().failures.insert(op, (times, make));
    }

    /// Makes the next `start` fail, as a VM that cannot boot would.
    pub fn fail_next_start(&self) {
        self.fail(Op::Start, 1, |_| BackendError::Command {
            command: "start".into(),
            message: "fake start failure".into(),
        });
    }

    /// Makes every `op` take `d` (to see what waits for what).
    pub fn delay(&self, op: Op, d: Duration) {
        self.lock().delays.insert(op, d);
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// The calls made so far of `op`, by VM name.
    pub fn calls_of(&self, op: Op) -> Vec<String> {
        self.lock().calls.iter().filter(|c| c.op == op).map(|c| c.vm.clone()).collect()
    }

    /// The spec a VM was last created or updated with.
    pub fn spec(&self, name: &str) -> Option<VmSpec> {
        self.lock().vms.get(name).map(|(s, _)| s.clone())
    }

    /// A VM's state, without recording a call.
    pub fn status_of(&self, name: &str) -> VmState {
        self.lock().vms.get(name).map_or(VmState::Missing, |v| v.1)
    }

    /// Sets a VM's state behind the node manager's back, as a crash or an operator would.
    pub fn set_state(&self, name: &str, state: VmState) {
        let mut s = self.lock();
        match state {
            VmState::Missing => {
                s.vms.remove(name);
            }
            st => {
                if let Some(v) = s.vms.get_mut(name) {
                    v.1 = st;
                }
            }
        }
    }

    /// Adds a VM the node manager has no record of (an orphan).
    pub fn insert(&self, spec: VmSpec, state: VmState) {
        self.lock().vms.insert(spec.name.clone(), (spec, state));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a call, waits its delay, and fails it if told to.
    fn enter(&self, op: Op, vm: &str) -> Result<(), BackendError> {
        let (delay, fail) = {
            let mut s = self.lock();
            s.calls.push(FakeCall { op, vm: vm.to_owned() });
            let fail = match s.failures.get_mut(&op) {
                Some((n, make)) if *n > 0 => {
                    *n -= 1;
                    Some(*make)
                }
                _ => None,
            };
            (s.delays.get(&op).copied(), fail)
        };
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        match fail {
            Some(make) => Err(make(vm.to_owned())),
            None => Ok(()),
        }
    }
}

impl Backend for FakeBackend {
    fn vm_type(&self) -> VmType {
        self.vm_type
    }
    fn check(&self) -> Result<(), BackendError> {
        Ok(())
    }
    fn create(&self, spec: &VmSpec) -> Result<(), BackendError> {
        self.enter(Op::Create, &spec.name)?;
        self.lock().vms.insert(spec.name.clone(), (spec.clone(), VmState::Stopped));
        Ok(())
    }
    fn start(&self, spec: &VmSpec) -> Result<(), BackendError> {
        self.enter(Op::Start, &spec.name)?;
        match self.lock().vms.get_mut(&spec.name) {
            Some(v) => {
                v.1 = VmState::Running;
                Ok(())
            }
            None => Err(BackendError::NotFound(spec.name.clone())),
        }
    }
    fn stop(&self, name: &str) -> Result<(), BackendError> {
        self.enter(Op::Stop, name)?;
        if let Some(v) = self.lock().vms.get_mut(name) {
            v.1 = VmState::Stopped;
        }
        Ok(())
    }
    fn destroy(&self, name: &str) -> Result<(), BackendError> {
        self.enter(Op::Destroy, name)?;
        self.lock().vms.remove(name);
        Ok(())
    }
    fn update(&self, _old: &VmSpec, new: &VmSpec) -> Result<(), BackendError> {
        self.enter(Op::Update, &new.name)?;
        match self.lock().vms.get_mut(&new.name) {
            Some(v) => {
                v.0 = new.clone();
                Ok(())
            }
            None => Err(BackendError::NotFound(new.name.clone())),
        }
    }
    fn status(&self, name: &str) -> Result<VmStatus, BackendError> {
        self.enter(Op::Status, name)?;
        let state = self.lock().vms.get(name).map_or(VmState::Missing, |v| v.1);
        Ok(VmStatus { state, details: BTreeMap::new() })
    }
    fn list(&self) -> Result<Vec<String>, BackendError> {
        self.enter(Op::List, "")?;
        Ok(self.lock().vms.keys().cloned().collect())
    }
    fn console_log(&self, name: &str, _max: u64) -> Result<String, BackendError> {
        self.enter(Op::ConsoleLog, name)?;
        Ok(format!("fake console of {name}\n"))
    }
}
