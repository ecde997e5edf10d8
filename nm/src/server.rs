//! The local API's sockets: the node socket, whose callers are identified by
//! `SO_PEERCRED`, and one socket per VM, whose callers are that VM's slice. The protocol
//! is in [`crate::protocol`].

use crate::node::{Caller, Node};
use crate::protocol::{ErrorCode, Method, RpcError};
use futures::StreamExt;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use vm_types::SliceName;

/// Largest request line accepted.
pub const MAX_REQUEST: usize = 1 << 20;

/// Binds a Unix socket at `path`, replacing a stale socket file but refusing to steal the
/// socket of a node manager that still answers.
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

/// Who a node-socket peer is, from its uid.
fn caller_of(node: &Node, uid: u32) -> Result<Caller, String> {
    let cfg = node.config();
    if uid == 0 || cfg.owner_uids.contains(&uid) {
        return Ok(Caller::Owner);
    }
    match cfg.slice_uids.get(&uid.to_string()).map(|s| SliceName::parse(s)) {
        Some(Ok(s)) => Ok(Caller::Slice(s)),
        _ => Err(format!(
            "permission denied: uid {uid} is neither the node owner nor mapped to a slice (owner_uids and slice_uids in the node manager's config)"
        )),
    }
}

/// Serves the node socket until the task is dropped.
pub async fn serve(node: Arc<Node>, listener: UnixListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let caller = match stream.peer_cred() {
            Ok(cred) => caller_of(&node, cred.uid()),
            Err(e) => Err(format!("permission denied: cannot read the caller's credentials: {e}")),
        };
        tokio::spawn(connection(node.clone(), stream, caller));
    }
}

/// Opens VM `name`'s own socket (`<state>/sockets/<name>/nm.sock`); every caller on it is
/// `slice`.
pub fn spawn_vm_socket(node: &Arc<Node>, name: &str, slice: SliceName) -> std::io::Result<()> {
    let dir = node.vm_socket_dir(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    // Only one node manager runs per state directory (the node socket guarantees it), so
    // a socket file here is always stale. Any user inside the VM may call; the socket
    // itself says which slice it is.
    let path = dir.join("nm.sock");
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = bind_socket(&path, 0o666)?;
    let n = node.clone();
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(n.clone(), stream, Ok(Caller::Slice(slice.clone()))));
                }
                Err(e) => {
                    tracing::warn!("VM socket accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    node.register_vm_socket(name, task.abort_handle());
    Ok(())
}

async fn connection(node: Arc<Node>, stream: UnixStream, caller: Result<Caller, String>) {
    let (r, mut w) = stream.into_split();
    let mut lines = FramedRead::new(r, LinesCodec::new_with_max_length(MAX_REQUEST));
    while let Some(line) = lines.next().await {
        let reply = match line {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => handle_line(&node, &caller, &line).await,
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                let e = RpcError::new(ErrorCode::InvalidRequest, "request refused: larger than 1 MiB");
                let _ = w.write_all(format!("{}\n", error_reply(Value::Null, &e)).as_bytes()).await;
                return;
            }
            Err(LinesCodecError::Io(_)) => return,
        };
        if let Some(reply) = reply {
            let mut bytes = reply.to_string().into_bytes();
            bytes.push(b'\n');
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }
}

fn error_reply(id: Value, e: &RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": e.to_json() })
}

/// Answers one line: a request, a notification or a batch.
pub async fn handle_line(node: &Arc<Node>, caller: &Result<Caller, String>, line: &str) -> Option<Value> {
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return Some(error_reply(Value::Null, &RpcError::new(ErrorCode::ParseError, format!("not JSON: {e}")))),
    };
    match v {
        Value::Array(items) if items.is_empty() => {
            Some(error_reply(Value::Null, &RpcError::new(ErrorCode::InvalidRequest, "empty batch")))
        }
        Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                if let Some(r) = handle_one(node, caller, item).await {
                    out.push(r);
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        v => handle_one(node, caller, v).await,
    }
}

async fn handle_one(node: &Arc<Node>, caller: &Result<Caller, String>, v: Value) -> Option<Value> {
    let Value::Object(obj) = v else {
        return Some(error_reply(Value::Null, &RpcError::new(ErrorCode::InvalidRequest, "a request must be a JSON object")));
    };
    let id = obj.get("id").cloned();
    let reply_id = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(error_reply(reply_id, &RpcError::new(ErrorCode::InvalidRequest, "jsonrpc: must be \"2.0\"")));
    }
    let Some(name) = obj.get("method").and_then(Value::as_str) else {
        return Some(error_reply(reply_id, &RpcError::new(ErrorCode::InvalidRequest, "method: missing or not a string")));
    };
    let result = match (Method::parse(name), caller) {
        (None, _) => Err(RpcError::new(ErrorCode::MethodNotFound, format!("method: no method {name:?}"))),
        (Some(_), Err(msg)) => Err(RpcError::new(ErrorCode::PermissionDenied, msg.clone())),
        (Some(m), Ok(c)) => node.call(c, m, obj.get("params").unwrap_or(&Value::Null)).await,
    };
    id.as_ref()?;
    Some(match result {
        Ok(r) => json!({ "jsonrpc": "2.0", "id": reply_id, "result": r }),
        Err(e) => error_reply(reply_id, &e),
    })
}
