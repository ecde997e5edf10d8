//! Each VM's own socket: `<state>/sockets/<vm>/nm.sock`, bind-mounted read-only at
//! `/run/plab/nm.sock` inside the VM. Every caller on it is the VM's slice, so a process
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
    /// Opens VM `name`'s own socket; every caller on it is `slice`.
    pub(crate) fn open_vm_socket(self: &Arc<Self>, name: &str, slice: SliceName) -> std::io::Result<()> {
        let dir = self.sockets.dir(&self.cfg.state_dir, name);
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
        let _ = std::fs::remove_dir_all(self.sockets.dir(&self.cfg.state_dir, name));
    }
}
