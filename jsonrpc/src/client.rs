//! The calling side: a [`Client`] generic over its [`Transport`] (a Unix socket with one
//! message per line, HTTPS), and [`Call`], which ties a method to its params and result
//! types so that a client and its server cannot drift apart.

use crate::error::{ErrorCode, RpcError};
use crate::params::Params;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};

/// One method of an API: its wire name, params and result.
pub trait Call {
    /// The wire name.
    const METHOD: &'static str;
    /// What it takes.
    type Params: Params;
    /// What it answers.
    type Result: Serialize + DeserializeOwned;
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service could not be reached or the connection broke.
    #[error("{0}")]
    Transport(String),
    /// The service answered with an error.
    #[error("{0}")]
    Rpc(RpcError),
    /// The answer was not the JSON-RPC answer expected.
    #[error("answer not understood: {0}")]
    Protocol(String),
    /// The client's own settings are wrong (an address, a certificate, a key).
    #[error("{0}")]
    Setup(String),
}

impl ClientError {
    /// The error code, when the service answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Rpc(e) => Some(e.code),
            _ => None,
        }
    }
}

/// Carries one request message to the service and its answer back.
pub trait Transport {
    /// Sends `request` (one JSON message) and returns the answer's bytes.
    fn round_trip(&mut self, request: &[u8]) -> Result<Vec<u8>, ClientError>;
}

/// The async form of [`Transport`].
pub trait AsyncTransport: Send {
    /// Sends `request` and returns the answer's bytes.
    fn round_trip(&mut self, request: Vec<u8>) -> impl Future<Output = Result<Vec<u8>, ClientError>> + Send;
}

/// Builds the request message for call number `id`.
pub fn request(id: u64, method: &str, params: &Value) -> Vec<u8> {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string().into_bytes()
}

/// Reads an answer: the result, or the error the service sent.
pub fn result(answer: &[u8]) -> Result<Value, ClientError> {
    let mut v: Value = serde_json::from_slice(answer).map_err(|e| ClientError::Protocol(format!("not JSON: {e}")))?;
    if let Some(e) = v.get_mut("error") {
        let e: RpcError =
            serde_json::from_value(e.take()).map_err(|e| ClientError::Protocol(format!("error object: {e}")))?;
        return Err(ClientError::Rpc(e));
    }
    match v.get_mut("result") {
        Some(r) => Ok(r.take()),
        None => Err(ClientError::Protocol("neither result nor error".into())),
    }
}

fn typed<C: Call>(v: Value) -> Result<C::Result, ClientError> {
    serde_path_to_error::deserialize(v)
        .map_err(|e| ClientError::Protocol(format!("{}: result {}: {}", C::METHOD, e.path(), e.inner())))
}

fn params_value<C: Call>(p: &C::Params) -> Result<Value, ClientError> {
    crate::params::encode(p).map_err(|e| ClientError::Protocol(format!("{}: params: {e}", C::METHOD)))
}

/// A client over a blocking transport.
pub struct Client<T> {
    transport: T,
    next_id: u64,
}

impl<T: Transport> Client<T> {
    /// A client over `transport`.
    pub fn new(transport: T) -> Client<T> {
        Client { transport, next_id: 1 }
    }

    /// The transport.
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Calls `method` with raw params.
    pub fn call_value(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        result(&self.transport.round_trip(&request(id, method, &params))?)
    }

    /// Calls `C` with typed params and reads its typed result.
    pub fn call<C: Call>(&mut self, params: &C::Params) -> Result<C::Result, ClientError> {
        let v = self.call_value(C::METHOD, params_value::<C>(params)?)?;
        typed::<C>(v)
    }
}

/// A client over an async transport.
pub struct AsyncClient<T> {
    transport: T,
    next_id: u64,
}

impl<T: AsyncTransport> AsyncClient<T> {
    /// A client over `transport`.
    pub fn new(transport: T) -> AsyncClient<T> {
        AsyncClient { transport, next_id: 1 }
    }

    /// The transport.
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Calls `method` with raw params.
    pub async fn call_value(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        result(&self.transport.round_trip(request(id, method, &params)).await?)
    }

    /// Calls `C` with typed params and reads its typed result.
    pub async fn call<C: Call>(&mut self, params: &C::Params) -> Result<C::Result, ClientError> {
        let v = self.call_value(C::METHOD, params_value::<C>(params)?).await?;
        typed::<C>(v)
    }
}

/// One JSON message per line over a stream (a Unix socket, a TCP connection).
pub struct LineTransport<S: Read + Write> {
    reader: BufReader<S>,
    line: Vec<u8>,
}

impl<S: Read + Write> LineTransport<S> {
    /// Frames messages on `stream`.
    pub fn new(stream: S) -> LineTransport<S> {
        LineTransport { reader: BufReader::new(stream), line: Vec::new() }
    }

    /// The stream.
    pub fn stream(&self) -> &S {
        self.reader.get_ref()
    }
}

impl<S: Read + Write> Transport for LineTransport<S> {
    fn round_trip(&mut self, request: &[u8]) -> Result<Vec<u8>, ClientError> {
        let w = self.reader.get_mut();
        // A server that refuses a request (too large) answers and closes while we may still
        // be writing: read its answer even when the write failed.
        let written = w.write_all(request).and_then(|_| w.write_all(b"\n")).and_then(|_| w.flush());
        self.line.clear();
        match self.reader.read_until(b'\n', &mut self.line) {
            Ok(n) if n > 0 => Ok(std::mem::take(&mut self.line)),
            Ok(_) => Err(ClientError::Transport(match written {
                Err(e) => format!("connection closed while sending: {e}"),
                Ok(()) => "connection closed before an answer".into(),
            })),
            Err(e) => Err(ClientError::Transport(format!("reading the answer: {e}"))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A transport answering from a closure, to test the client alone.
    struct Canned(fn(&Value) -> Value);
    impl Transport for Canned {
        fn round_trip(&mut self, request: &[u8]) -> Result<Vec<u8>, ClientError> {
            let req: Value = serde_json::from_slice(request).unwrap();
            let mut a = (self.0)(&req);
            a["id"] = req["id"].clone();
            Ok(a.to_string().into_bytes())
        }
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct P {
        x: u32,
    }
    impl Params for P {
        const NAMES: &'static [&'static str] = &["x"];
    }
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct R {
        y: u32,
    }
    struct Double;
    impl Call for Double {
        const METHOD: &'static str = "Double";
        type Params = P;
        type Result = R;
    }

    #[test]
    fn typed_calls_errors_and_bad_answers() {
        let mut c =
            Client::new(Canned(|r| json!({"jsonrpc": "2.0", "result": {"y": r["params"]["x"].as_u64().unwrap() * 2}})));
        assert_eq!(c.call::<Double>(&P { x: 21 }).unwrap(), R { y: 42 });
        let mut c =
            Client::new(Canned(|_| json!({"jsonrpc": "2.0", "error": {"code": 3, "message": "no such thing"}})));
        let e = c.call::<Double>(&P { x: 1 }).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NOT_FOUND));
        assert_eq!(e.to_string(), "no such thing");
        let mut c = Client::new(Canned(|_| json!({"jsonrpc": "2.0", "result": {"y": "two"}})));
        let e = c.call::<Double>(&P { x: 1 }).unwrap_err();
        assert!(matches!(e, ClientError::Protocol(ref m) if m.contains("Double: result y")), "{e}");
    }
}
