//! A blocking client of the node manager's local API, for the `plab` CLI, the slice
//! creation service, tests and benchmarks. Typed calls take the params and give the
//! results of [`crate::api`]: `client.call::<calls::GetRSpec>(&RcapParams { rcap })`.

use jsonrpc::{Call, Client, ClientError, LineTransport, Value};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A connection to the node manager.
pub struct NmClient {
    inner: Client<LineTransport<UnixStream>>,
}

impl NmClient {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<NmClient, ClientError> {
        let s = UnixStream::connect(path).map_err(|e| {
            ClientError::Transport(format!(
                "cannot connect to the node manager at {} ({e}); is `plab-nm serve` running?",
                path.display()
            ))
        })?;
        Ok(NmClient { inner: Client::new(LineTransport::new(s)) })
    }

    /// Connects to the socket at `path`; a call that gets no answer within `timeout`
    /// fails (the node manager may still finish it).
    pub fn connect_timeout(path: &Path, timeout: std::time::Duration) -> Result<NmClient, ClientError> {
        let mut c = NmClient::connect(path)?;
        let s = c.inner.transport().stream();
        s.set_read_timeout(Some(timeout))
            .and_then(|()| s.set_write_timeout(Some(timeout)))
            .map_err(|e| ClientError::Transport(format!("node manager socket: {e}")))?;
        Ok(c)
    }

    /// Calls `C` with typed params; its typed result.
    pub fn call<C: Call>(&mut self, params: &C::Params) -> Result<C::Result, ClientError> {
        self.inner.call::<C>(params)
    }

    /// Calls `method` with raw params (an object by name, or an array).
    pub fn call_value(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.inner.call_value(method, params)
    }

    /// A string field of a raw result.
    pub fn call_str(&mut self, method: &str, params: Value, field: &str) -> Result<String, ClientError> {
        let v = self.call_value(method, params)?;
        v[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol(format!("{method}: no {field} in the answer")))
    }
}
