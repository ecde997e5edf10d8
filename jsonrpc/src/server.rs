//! The serving side: one message in (a request, a notification or a batch), the answer
//! out. Transports (a Unix socket with one message per line, HTTPS bodies) hand messages
//! to [`answer`]; a [`Handler`] runs each call.

use crate::error::{ErrorCode, RpcError};
use serde_json::{json, Value};
use std::future::Future;

/// Most requests one batch may hold.
pub const MAX_BATCH: usize = 64;
/// Longest method name accepted.
pub const MAX_METHOD: usize = 64;

/// Runs one call for a caller.
pub trait Handler: Send + Sync {
    /// Who is calling, as the transport established it (never a field of the request).
    type Caller: Sync;
    /// Runs `method` with `params` (absent params are `Null`).
    fn call(
        &self,
        caller: &Self::Caller,
        method: &str,
        params: Value,
    ) -> impl Future<Output = Result<Value, RpcError>> + Send;
}

/// One decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The id; `None` for a notification, which gets no answer.
    pub id: Option<Value>,
    /// The method name.
    pub method: String,
    /// The params (`Null` when absent).
    pub params: Value,
}

/// Decodes one request object. The error carries the id when one could be read.
pub fn decode_request(v: Value) -> Result<Request, (Value, RpcError)> {
    let Value::Object(mut o) = v else {
        return Err((Value::Null, RpcError::new(ErrorCode::INVALID_REQUEST, "a request must be a JSON object")));
    };
    let id = o.remove("id");
    let rid = match &id {
        None | Some(Value::Null | Value::String(_) | Value::Number(_)) => id.clone().unwrap_or(Value::Null),
        Some(_) => {
            return Err((
                Value::Null,
                RpcError::new(ErrorCode::INVALID_REQUEST, "id: must be a string, a number or null"),
            ))
        }
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((rid, RpcError::new(ErrorCode::INVALID_REQUEST, "jsonrpc: must be \"2.0\"")));
    }
    let method = match o.remove("method") {
        Some(Value::String(m)) if m.len() <= MAX_METHOD => m,
        _ => return Err((rid, RpcError::new(ErrorCode::INVALID_REQUEST, "method: missing or not a short string"))),
    };
    let params = match o.remove("params") {
        None => Value::Null,
        Some(p @ (Value::Null | Value::Array(_) | Value::Object(_))) => p,
        Some(_) => {
            return Err((rid, RpcError::new(ErrorCode::INVALID_REQUEST, "params: must be an array or an object")))
        }
    };
    Ok(Request { id, method, params })
}

/// The response object for an id and a result.
pub fn response(id: Value, r: Result<Value, RpcError>) -> Value {
    match r {
        Ok(v) => json!({ "jsonrpc": "2.0", "id": id, "result": v }),
        Err(e) => json!({ "jsonrpc": "2.0", "id": id, "error": e }),
    }
}

async fn one<H: Handler>(h: &H, caller: &H::Caller, v: Value) -> Option<Value> {
    let req = match decode_request(v) {
        Ok(r) => r,
        Err((id, e)) => return Some(response(id, Err(e))),
    };
    let r = h.call(caller, &req.method, req.params).await;
    if let Err(e) = &r {
        tracing::debug!(method = %req.method, code = e.code.0, "{}", e.message);
    }
    let id = req.id?;
    Some(response(id, r))
}

/// Answers one message: a request, a notification or a batch. `None` when nothing is
/// owed (notifications only).
pub async fn answer<H: Handler>(h: &H, caller: &H::Caller, message: &[u8]) -> Option<Value> {
    let v: Value = match serde_json::from_slice(message) {
        Ok(v) => v,
        Err(e) => {
            return Some(response(Value::Null, Err(RpcError::new(ErrorCode::PARSE_ERROR, format!("not JSON: {e}")))))
        }
    };
    match v {
        Value::Array(items) if items.is_empty() => {
            Some(response(Value::Null, Err(RpcError::new(ErrorCode::INVALID_REQUEST, "empty batch"))))
        }
        Value::Array(items) if items.len() > MAX_BATCH => Some(response(
            Value::Null,
            Err(RpcError::new(
                ErrorCode::INVALID_REQUEST,
                format!("batch of {} requests; at most {MAX_BATCH}", items.len()),
            )),
        )),
        Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                if let Some(r) = one(h, caller, item).await {
                    out.push(r);
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        v => one(h, caller, v).await,
    }
}

/// Limits of a newline-framed connection.
#[derive(Debug, Clone, Copy)]
pub struct LineLimits {
    /// Longest request line; a longer one is answered with InvalidRequest and the
    /// connection is closed.
    pub max_line: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle: std::time::Duration,
    /// How long writing one answer may take before the connection is given up (a client
    /// that does not read cannot hold the server's memory).
    pub write: std::time::Duration,
}

/// Serves newline-framed JSON-RPC on one connection until the peer closes it, it stays
/// idle past `limits.idle`, or it sends a line over `limits.max_line`.
pub async fn serve_lines<H, R, W>(h: &H, caller: &H::Caller, reader: R, mut writer: W, limits: LineLimits)
where
    H: Handler,
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
    let mut lines = FramedRead::new(reader, LinesCodec::new_with_max_length(limits.max_line));
    loop {
        let line = match tokio::time::timeout(limits.idle, lines.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(LinesCodecError::Io(_)))) => return,
            Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => {
                let e = RpcError::new(
                    ErrorCode::INVALID_REQUEST,
                    format!("request refused: longer than {} bytes", limits.max_line),
                );
                let out = format!("{}\n", response(Value::Null, Err(e)));
                let _ = tokio::time::timeout(limits.write, writer.write_all(out.as_bytes())).await;
                return;
            }
            Ok(Some(Ok(line))) => line,
        };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(reply) = answer(h, caller, line.as_bytes()).await {
            let mut bytes = reply.to_string().into_bytes();
            bytes.push(b'\n');
            match tokio::time::timeout(limits.write, writer.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }
}

/// Waits for a free connection slot of `slots`, then for a connection on `listener`
/// (a failed accept, such as running out of file descriptors, is logged and retried after
/// a pause). The slot is held while the permit lives; `None` once `slots` is closed.
pub async fn accept_capped(
    listener: &tokio::net::TcpListener,
    slots: &std::sync::Arc<tokio::sync::Semaphore>,
) -> Option<(tokio::sync::OwnedSemaphorePermit, tokio::net::TcpStream, std::net::SocketAddr)> {
    let slot = slots.clone().acquire_owned().await.ok()?;
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => return Some((slot, tcp, peer)),
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Echo;
    impl Handler for Echo {
        type Caller = ();
        async fn call(&self, _: &(), method: &str, params: Value) -> Result<Value, RpcError> {
            match method {
                "Echo" => Ok(params),
                _ => Err(RpcError::new(ErrorCode::METHOD_NOT_FOUND, format!("method: no method {method:?}"))),
            }
        }
    }

    fn ask(msg: &str) -> Option<Value> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(answer(&Echo, &(), msg.as_bytes()))
    }

    #[test]
    fn envelope_batches_and_notifications() {
        assert_eq!(ask("{x").unwrap()["error"]["code"], -32700);
        assert_eq!(ask(r#"{"jsonrpc":"2.0","id":1,"method":"Nope"}"#).unwrap()["error"]["code"], -32601);
        assert_eq!(ask(r#"{"jsonrpc":"1.0","id":1,"method":"Echo"}"#).unwrap()["error"]["code"], -32600);
        assert_eq!(ask(r#"{"jsonrpc":"2.0","id":[1],"method":"Echo"}"#).unwrap()["error"]["code"], -32600);
        assert_eq!(ask(r#"{"jsonrpc":"2.0","id":1,"method":"Echo","params":3}"#).unwrap()["error"]["code"], -32600);
        let r = ask(r#"{"jsonrpc":"2.0","id":"a","method":"Echo","params":[1]}"#).unwrap();
        assert_eq!(r, json!({"jsonrpc": "2.0", "id": "a", "result": [1]}));
        assert_eq!(ask(r#"{"jsonrpc":"2.0","method":"Echo"}"#), None, "a notification gets no answer");
        let b = ask(r#"[{"jsonrpc":"2.0","id":1,"method":"Echo"},{"jsonrpc":"2.0","method":"Echo"},{"jsonrpc":"2.0","id":2,"method":"X"}]"#)
            .unwrap();
        assert_eq!(b.as_array().unwrap().len(), 2, "{b}");
        assert_eq!(ask("[]").unwrap()["error"]["code"], -32600);
        let big = format!("[{}]", vec![r#"{"jsonrpc":"2.0","id":1,"method":"Echo"}"#; MAX_BATCH + 1].join(","));
        assert!(ask(&big).unwrap()["error"]["message"].as_str().unwrap().contains("at most"));
        assert_eq!(ask(r#"[{"jsonrpc":"2.0","method":"Echo"}]"#), None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_get_an_answer_or_none_and_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = ask(&String::from_utf8_lossy(&bytes));
        }
    }
}
