//! A blocking client of the node manager's local API, for the `plab` CLI, other services
//! and benchmarks.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to the node manager at {0} (is `plab-nm serve` running?)")]
    Connect(String, #[source] std::io::Error),
    /// The connection failed.
    #[error("node manager connection: {0}")]
    Io(#[from] std::io::Error),
    /// The node manager answered with an error.
    #[error("{message}")]
    Rpc {
        /// Error code (see the protocol docs).
        code: i64,
        /// Message.
        message: String,
    },
    /// The answer was not JSON-RPC.
    #[error("node manager answer: {0}")]
    Protocol(String),
}

/// A connection to the node manager.
pub struct NmClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    line: String,
}

impl NmClient {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<NmClient, ClientError> {
        let s = UnixStream::connect(path).map_err(|e| ClientError::Connect(path.display().to_string(), e))?;
        Ok(NmClient { reader: BufReader::new(s.try_clone()?), writer: s, next_id: 1, line: String::new() })
    }

    /// Calls `method` with `params` (an object by name, or an array).
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string();
        req.push('\n');
        self.writer.write_all(req.as_bytes())?;
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            return Err(ClientError::Protocol("connection closed".into()));
        }
        let mut v: Value = serde_json::from_str(&self.line).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Some(e) = v.get("error") {
            return Err(ClientError::Rpc {
                code: e["code"].as_i64().unwrap_or(0),
                message: e["message"].as_str().unwrap_or("").to_owned(),
            });
        }
        Ok(v.get_mut("result").map(Value::take).unwrap_or(Value::Null))
    }

    /// A string field of a result.
    pub fn call_str(&mut self, method: &str, params: Value, field: &str) -> Result<String, ClientError> {
        let v = self.call(method, params)?;
        v[field].as_str().map(str::to_owned).ok_or_else(|| ClientError::Protocol(format!("{method}: no {field} in the answer")))
    }
}
