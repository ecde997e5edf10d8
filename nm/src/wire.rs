//! The local API's transport: Unix sockets with one JSON-RPC message per line
//! ([`jsonrpc::server::serve_lines`]), connection limits per caller, and the handler that
//! hands decoded calls to the [`NodeManager`].

use crate::api::{Method, IDLE_SECS, MAX_CONNECTIONS_PER_CALLER, MAX_REQUEST};
use crate::node::{Caller, NodeManager};
use jsonrpc::server::{Handler, LineLimits};
use jsonrpc::{ErrorCode, RpcError, Value};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits every connection gets.
pub const LIMITS: LineLimits =
    LineLimits { max_line: MAX_REQUEST, idle: Duration::from_secs(IDLE_SECS), write: Duration::from_secs(30) };

/// Binds a Unix socket at `path` with `mode`, replacing a stale socket file but refusing
/// to steal the socket of a node manager that still answers.
pub fn bind_socket(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{}: another node manager is serving on this socket", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    l.set_nonblocking(true)?;
    UnixListener::from_std(l)
}

/// The caller of a connection: who it is, or why it is refused.
pub type ConnCaller = Result<Caller, String>;

/// Hands calls to the node manager.
pub struct NmHandler(pub Arc<NodeManager>);

impl Handler for NmHandler {
    type Caller = ConnCaller;
    async fn call(&self, caller: &ConnCaller, method: &str, params: Value) -> Result<Value, RpcError> {
        if Method::parse(method).is_none() {
            return Err(RpcError::new(ErrorCode::METHOD_NOT_FOUND, format!("method: no method {method:?}")));
        }
        match caller {
            Err(why) => Err(RpcError::new(ErrorCode::PERMISSION_DENIED, why.clone())),
            Ok(c) => self.0.call(c, method, params).await,
        }
    }
}

/// Connection slots per caller (a uid, or one VM's socket): a caller that opens
/// connections without end runs out of its own slots, not the node manager's.
#[derive(Default)]
pub struct Slots {
    per_caller: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Slots {
    /// A slot for `caller`, or `None` when it holds [`MAX_CONNECTIONS_PER_CALLER`] already.
    pub fn take(&self, caller: &str) -> Option<OwnedSemaphorePermit> {
        let mut m = self.per_caller.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, s| s.available_permits() < MAX_CONNECTIONS_PER_CALLER);
        m.entry(caller.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_CALLER)))
            .clone()
            .try_acquire_owned()
            .ok()
    }
}

/// Serves one connection, holding `slot` until it ends; without a slot the peer gets one
/// error line and the connection is closed.
pub async fn serve(h: Arc<NmHandler>, caller: ConnCaller, stream: UnixStream, slot: Option<OwnedSemaphorePermit>) {
    let (r, mut w) = stream.into_split();
    let Some(_slot) = slot else {
        let e = RpcError::new(
            ErrorCode::UNAVAILABLE,
            format!("too many connections from this caller (at most {MAX_CONNECTIONS_PER_CALLER}); close some and try again"),
        );
        let line = format!("{}\n", jsonrpc::server::response(Value::Null, Err(e)));
        let _ = tokio::time::timeout(LIMITS.write, w.write_all(line.as_bytes())).await;
        return;
    };
    jsonrpc::server::serve_lines(&*h, &caller, r, w, LIMITS).await;
}
