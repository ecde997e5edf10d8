//! The node manager, from async code: each call on a fresh connection, on a blocking
//! thread (calls such as Bind take as long as a VM takes to start).

use jsonrpc::{Call, ClientError};
use plab_nm::NmClient;
use std::path::PathBuf;
use std::time::Duration;

/// How long a call may go unanswered: longer than the slowest Bind (a KVM guest on a host
/// whose libvirt re-probes QEMU takes about a minute), so that a node manager that hangs
/// cannot hold the service, and its lock, for ever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(180);

/// The node manager at a socket.
#[derive(Clone)]
pub struct Nm {
    socket: PathBuf,
}

impl Nm {
    /// The node manager listening at `socket`.
    pub fn new(socket: PathBuf) -> Nm {
        Nm { socket }
    }

    /// Calls `C`.
    pub async fn call<C: Call>(&self, params: C::Params) -> Result<C::Result, ClientError>
    where
        C::Params: Send + 'static,
        C::Result: Send + 'static,
    {
        let socket = self.socket.clone();
        tokio::task::spawn_blocking(move || NmClient::connect_timeout(&socket, CALL_TIMEOUT)?.call::<C>(&params))
            .await
            .map_err(|e| ClientError::Transport(format!("node manager call: {e}")))?
    }
}
