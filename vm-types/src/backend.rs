//! The `Backend` trait: what the node manager asks of a VM type's implementation.
//!
//! One backend exists per [`VmType`]; the node manager keeps them in a [`Registry`] and never
//! names the technology behind one (runc, libvirt, Xen). Calls are blocking: the node
//! manager runs them on a blocking thread pool.
//!
//! Contract every backend keeps:
//! - `create` is all-or-nothing: when it fails, nothing it made is left behind.
//! - `destroy` is idempotent and also cleans up a half-made VM (after a crash mid-create).
//! - `start` is idempotent and re-creates host state that a reboot lost (mounts, links).

use crate::resources::Resources;
use crate::rspec::SshKey;
use crate::slice_name::SliceName;
use crate::vm_type::VmType;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Everything a backend needs to make one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The VM's name on this node: the slice's Unix login (unique per node).
    pub name: String,
    /// The slice the VM belongs to.
    pub slice: SliceName,
    /// The VM type.
    pub vm_type: VmType,
    /// Resources bound to the VM.
    pub resources: Resources,
    /// The slice users' ssh keys.
    pub keys: Vec<SshKey>,
    /// The bootscript, run at every start.
    pub bootscript: Option<String>,
    /// The VM's network attachment, chosen by the node manager.
    pub network: VmNetwork,
    /// A host directory holding the VM's own node manager socket; the backend makes it
    /// visible inside the VM at `/run/plab` (read-only), so that processes in the VM reach
    /// the node manager as their slice and as nothing else.
    pub nm_socket_dir: Option<std::path::PathBuf>,
}

/// A VM's place on the node network: an address from the node-private prefix, and a
/// small index that names host-side interfaces (`pv<index>`, at most 15 characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmNetwork {
    /// Node-unique small number of the VM.
    pub index: u32,
    /// The VM's address.
    pub address: Ipv4Addr,
    /// Prefix length of the node-private network.
    pub prefix_len: u8,
    /// The node bridge's address, the VM's default gateway.
    pub gateway: Ipv4Addr,
}

impl VmNetwork {
    /// The VM's MAC: locally administered, `02:00:` followed by the IPv4 address's bytes.
    /// It follows from the address, so a VM re-created with the same address is reachable
    /// at once: the node's neighbour cache never holds a dead MAC for it.
    pub fn mac(&self) -> String {
        vm_mac(self.address)
    }
}

/// A backend's `create`: `steps` make the VM; when they fail, `undo` (the backend's
/// destroy) removes whatever they made, and the steps' error is what the caller gets (a
/// failed undo is logged).
pub fn create_or_undo(
    name: &str,
    steps: impl FnOnce() -> Result<(), BackendError>,
    undo: impl FnOnce() -> Result<(), BackendError>,
) -> Result<(), BackendError> {
    let r = steps();
    if r.is_err() {
        if let Err(e) = undo() {
            tracing::warn!(vm = %name, "cleaning up after a failed create: {e}");
        }
    }
    r
}

/// The locally administered MAC of the VM with this address: `02:00:` + the IPv4 bytes.
pub fn vm_mac(addr: Ipv4Addr) -> String {
    let o = addr.octets();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// Whether a VM runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, strum::Display, strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum VmState {
    /// The VM runs.
    Running,
    /// The VM exists but does not run.
    Stopped,
    /// The backend knows no such VM.
    Missing,
}

/// What a backend reports about one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    /// Running, stopped or missing.
    pub state: VmState,
    /// Backend-specific facts worth showing an operator (pid, cgroup, limits in force).
    pub details: BTreeMap<String, String>,
}

/// Why a backend call failed. Messages say what to do where there is something to do;
/// each variant's doc comment is its message.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum BackendError {
    /// VM {0} does not exist
    NotFound(String),
    /// {command} failed: {message}
    Command {
        /// The command line, shortened.
        command: String,
        /// Its error output.
        message: String,
    },
    /// {0}: {1}
    Io(String, #[source] std::io::Error),
    /// The host lacks something the backend needs; the message says what to install.
    #[displaydoc("{0}")]
    Unavailable(String),
    /// The request cannot be met as asked (too small a disk, a disk that would shrink).
    #[displaydoc("{0}")]
    Invalid(String),
    /// The backend itself failed (a panicked task, a state it should never be in).
    #[displaydoc("{0}")]
    Internal(String),
}

/// A VM type's implementation.
pub trait Backend: Send + Sync {
    /// The VM type this backend makes.
    fn vm_type(&self) -> VmType;
    /// Checks that the host can run this VM type; the error says what to install.
    fn check(&self) -> Result<(), BackendError>;
    /// Makes the VM (storage, network, configuration) without starting it.
    fn create(&self, spec: &VmSpec) -> Result<(), BackendError>;
    /// Starts the VM; the bootscript runs. Idempotent.
    fn start(&self, spec: &VmSpec) -> Result<(), BackendError>;
    /// Stops the VM, keeping its storage. Idempotent.
    fn stop(&self, name: &str) -> Result<(), BackendError>;
    /// Removes the VM and everything made for it. Idempotent.
    fn destroy(&self, name: &str) -> Result<(), BackendError>;
    /// Applies changed resources, keys or bootscript to an existing VM, live when it runs.
    fn update(&self, old: &VmSpec, new: &VmSpec) -> Result<(), BackendError>;
    /// Reports the VM's state.
    fn status(&self, name: &str) -> Result<VmStatus, BackendError>;
    /// Names of every VM this backend holds on the node, including ones the node manager
    /// has no record of.
    fn list(&self) -> Result<Vec<String>, BackendError>;
    /// The memory, in MiB, this backend's VMs share, when it is not the node manager's
    /// host's (a Xen host's, seen from dom0): no VM may ask for more.
    fn memory_mb(&self) -> Option<u64> {
        None
    }
    /// The last `max_bytes` of the VM's console output (init and bootscript output),
    /// rotated part included.
    fn console_log(&self, name: &str, max_bytes: u64) -> Result<String, BackendError> {
        let end = self.console_from(name, u64::MAX, 0)?.next;
        let c = self.console_from(name, end.saturating_sub(max_bytes), max_bytes)?;
        Ok(String::from_utf8_lossy(&c.bytes).into_owned())
    }
    /// The VM's console from position `from` (bytes since the VM's console began, across
    /// rotations), at most `max_bytes`: for following the log.
    fn console_from(
        &self,
        name: &str,
        from: u64,
        max_bytes: u64,
    ) -> Result<crate::console::ConsoleChunk, BackendError> {
        let _ = (name, from, max_bytes);
        Err(BackendError::Unavailable(format!("{}: its console cannot be followed", self.vm_type())))
    }
    /// The host-side network interface that carries VM `network`'s traffic on the node
    /// bridge (a veth end, a tap), when the backend makes one: the node manager filters,
    /// shapes and captures there. It need not exist while the VM is stopped.
    fn host_interface(&self, network: &VmNetwork) -> Option<String> {
        let _ = network;
        None
    }
    /// Periodic upkeep of a VM the node manager knows (the node manager calls it every
    /// few seconds): rotating what grows, for one. Nothing by default.
    fn maintain(&self, name: &str) -> Result<(), BackendError> {
        let _ = name;
        Ok(())
    }
}

/// The backends a node supports, by VM type.
#[derive(Clone, Default)]
pub struct Registry {
    backends: BTreeMap<VmType, Arc<dyn Backend>>,
    unavailable: BTreeMap<VmType, String>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds a backend under its VM type, replacing any earlier one.
    pub fn register(&mut self, backend: Arc<dyn Backend>) {
        self.backends.insert(backend.vm_type(), backend);
    }

    /// The backend for a VM type.
    pub fn get(&self, t: VmType) -> Option<&Arc<dyn Backend>> {
        self.backends.get(&t)
    }

    /// Records why a VM type is not offered on this node (what to install or start).
    pub fn mark_unavailable(&mut self, t: VmType, why: impl Into<String>) {
        self.unavailable.insert(t, why.into());
    }

    /// Why a VM type is not offered, if that is known.
    pub fn unavailable(&self, t: VmType) -> Option<&str> {
        self.unavailable.get(&t).map(String::as_str)
    }

    /// The VM types this node supports.
    pub fn types(&self) -> Vec<VmType> {
        self.backends.keys().copied().collect()
    }

    /// Every backend.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.backends.values()
    }
}
