//! The node socket, whose callers are identified by `SO_PEERCRED`. Each VM's own socket
//! is in [`crate::node::sockets`]; the protocol is in [`crate::api`].

use crate::node::{Caller, NodeManager};
use crate::wire::{serve as serve_conn, ConnCaller, NmHandler, Slots};
use std::sync::Arc;
use tokio::net::UnixListener;

pub use crate::wire::bind_socket;

/// Who a node-socket peer is, from its uid.
fn caller_of(nm: &NodeManager, uid: u32) -> ConnCaller {
    let cfg = nm.config();
    if uid == 0 || cfg.owner_uids.contains(&uid) {
        return Ok(Caller::Owner);
    }
    match cfg.slice_uids.get(&uid) {
        Some(s) => Ok(Caller::Slice(s.clone())),
        None => Err(format!(
            "permission denied: uid {uid} is neither the node owner nor mapped to a slice (owner_uids and slice_uids in the node manager's config)"
        )),
    }
}

/// Serves the node socket until the task is dropped.
pub async fn serve(nm: Arc<NodeManager>, listener: UnixListener) {
    let handler = Arc::new(NmHandler(nm.clone()));
    let slots = Slots::default();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (caller, slot) = match stream.peer_cred() {
            Ok(cred) => (caller_of(&nm, cred.uid()), slots.take(&cred.uid().to_string())),
            Err(e) => {
                (Err(format!("permission denied: cannot read the caller's credentials: {e}")), slots.take("unknown"))
            }
        };
        tokio::spawn(serve_conn(handler.clone(), caller, stream, slot));
    }
}
