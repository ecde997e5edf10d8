//! Each VM's own socket: `<state>/sockets/<vm>/run/nm.sock`, `run/` bind-mounted
//! read-only at `/run/plab` inside the VM. `<state>/sockets/<vm>` (0710, group the VM's
//! root's host gid) lets only root and runc, setting the VM up as its root, through: no
//! other host user or VM reaches the socket and speaks as the slice. Every caller on it is the VM's slice, so a process
//! in a VM can claim no other identity.

use super::NodeManager;
use crate::wire::{bind_socket, serve, NmHandler, Slots};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vm_types::SliceName;

/// The per-VM sockets' accept tasks.
#[derive(Default)]
pub struct VmSockets {
    tasks: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

impl VmSockets {
    /// The directory holding VM `vm`'s socket.
    pub fn dir(&self, state_dir: &Path, vm: &str) -> PathBuf {
        super::vm_socket_dir(state_dir, vm)
    }
}

impl NodeManager {
    /// Opens VM `name` (number `index`)'s own socket; every caller on it is `slice`.
    pub(crate) fn open_vm_socket(self: &Arc<Self>, name: &str, slice: SliceName, index: u32) -> std::io::Result<()> {
        let dir = self.sockets.dir(&self.cfg.state_dir, name);
        let gate = self.cfg.state_dir.join("sockets").join(name);
        let gid = vm_types::idmap::host_ids(self.cfg.vm_uid_base, index).map(|ids| ids.host_base).ok_or_else(|| {
            std::io::Error::other(format!("VM number {index} has no host uid range above vm_uid_base"))
        })?;
        {
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(0o710).create(&gate) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        // (A node manager not running as root has no container VMs to gate for.)
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&gate, Some(0), Some(gid))?;
        }
        super::set_mode(&gate, 0o710)?;
        std::fs::create_dir_all(&dir)?;
        super::set_mode(&dir, 0o755)?;
        // Only one node manager runs per state directory (the node socket guarantees it),
        // so a socket file here is always stale. Any user inside the VM may call; the
        // socket itself says which slice it is.
        match std::fs::remove_file(dir.join("nm.sock")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = bind_socket(&dir.join("nm.sock"), 0o666)?;
        let handler = Arc::new(NmHandler(self.clone()));
        let slots = Arc::new(Slots::default());
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let slot = slots.take("vm");
                        tokio::spawn(serve(handler.clone(), Ok(super::Caller::Slice(slice.clone())), stream, slot));
                    }
                    Err(e) => {
                        tracing::warn!("VM socket accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        if let Some(old) =
            self.sockets.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), task.abort_handle())
        {
            old.abort();
        }
        Ok(())
    }

    /// Closes VM `name`'s socket and removes its directory.
    pub(crate) fn close_vm_socket(&self, name: &str) {
        if let Some(h) = self.sockets.tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(name) {
            h.abort();
        }
        let _ = std::fs::remove_dir_all(self.cfg.state_dir.join("sockets").join(name));
    }
}
