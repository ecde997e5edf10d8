//! The node manager's local API: JSON-RPC 2.0, one JSON object per line, over a Unix
//! stream socket.
//!
//! ```text
//! → {"jsonrpc":"2.0","id":1,"method":"GetRSpec","params":{"rcap":"8f3c…"}}
//! ← {"jsonrpc":"2.0","id":1,"result":{"rspec":"<PoolRSpec …>…</PoolRSpec>\n"}}
//! ```
//!
//! Params are an object with the names below, or an array in the same order (the
//! specification's argument order). A request line may be at most 1 MiB; a longer one
//! gets error -32600 and the connection is closed. Batches (arrays of requests) and
//! notifications (no `id`) work as JSON-RPC 2.0 says.
//!
//! # Who is calling
//! The caller is never named in a request. It is found from the socket:
//! - on the node socket (`/run/plab/nm.sock`), the peer's uid from `SO_PEERCRED`: root or
//!   a uid in `owner_uids` is the **owner** (site_admin); a uid in `slice_uids` is that
//!   slice; anyone else is refused;
//! - on a VM's own socket (`/run/plab/nm.sock` *inside* the VM, a read-only bind mount of
//!   a per-VM socket on the host), the caller is the VM's slice. A process inside a VM can
//!   reach no other socket of the node manager, so it cannot claim another slice.
//!
//! # Methods
//! Each is a variant of [`Method`]; its doc says what it takes and returns.
//!
//! # Errors
//! `error.code` is one of [`ErrorCode`]; `error.message` names the field and the reason.

use serde_json::Value;

/// Every method of the local API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `CreatePool(rspec, slice_name) -> {rcap}`: owner only. Creates a root pool holding
    /// `rspec` (XML) for `slice_name` (a slice, or an authority such as `plc`).
    CreatePool,
    /// `GetRcap(slice_name?) -> {rcaps: [hex]}`: the rcaps of the caller's slice's pools.
    /// The owner may name any slice, or none for every pool.
    GetRcap,
    /// `GetRSpec(rcap) -> {rspec}`: the RSpec (XML) of the pool or VM the rcap refers to.
    GetRSpec,
    /// `SplitPool(rcap, rspec) -> {rcap}`: carves `rspec`'s resources out of the pool into
    /// a new pool; fails, changing nothing, when the pool holds less.
    SplitPool,
    /// `Bind(rcap, slice_name) -> {vm, ...}`: binds the pool to the slice's VM, creating
    /// and starting the VM if it does not exist, else adding the resources to it.
    Bind,
    /// `DestroyPool(rcap) -> {}`: gives an unbound pool's resources back to its parent.
    DestroyPool,
    /// `ListPools() -> {pools: [...]}`: pools visible to the caller.
    ListPools,
    /// `ListVMs() -> {vms: [...]}`: VMs visible to the caller, with live state.
    ListVMs,
    /// `VmStatus(vm) -> {...}`: one VM's record and live state, limits in force.
    VmStatus,
    /// `StartVM(vm)`: starts a stopped VM (the bootscript runs).
    StartVM,
    /// `StopVM(vm)`: stops a VM, keeping its disk.
    StopVM,
    /// `DestroyVM(vm)`: removes a VM; its pools become unbound again.
    DestroyVM,
    /// `VmLog(vm, bytes?) -> {log}`: the tail of the VM's console (init and bootscript).
    VmLog,
    /// `NodeInfo() -> {...}`: VM types supported, networking, counts.
    NodeInfo,
    /// `Orphans() -> {orphans: [...]}`: owner only; VMs a backend holds without a record.
    Orphans,
    /// `CleanOrphans() -> {removed: [...]}`: owner only; destroys the orphans.
    CleanOrphans,
    /// `SignCertificate(public_key) -> {certificate}`: a slice only (section 5.5). The node
    /// manager certifies that `public_key` belongs to the calling slice on this node,
    /// signing with the node's MA-issued certificate; the chain (service, node, MA)
    /// verifies back to the root, so the slice can `AuthenticateCertificate` with an
    /// authority without holding any shared secret.
    SignCertificate,
}

impl Method {
    /// Every method, for docs and tests.
    pub const ALL: [Method; 17] = [
        Method::CreatePool,
        Method::GetRcap,
        Method::GetRSpec,
        Method::SplitPool,
        Method::Bind,
        Method::DestroyPool,
        Method::ListPools,
        Method::ListVMs,
        Method::VmStatus,
        Method::StartVM,
        Method::StopVM,
        Method::DestroyVM,
        Method::VmLog,
        Method::NodeInfo,
        Method::Orphans,
        Method::CleanOrphans,
        Method::SignCertificate,
    ];

    /// The method's wire name.
    pub fn name(self) -> &'static str {
        match self {
            Method::CreatePool => "CreatePool",
            Method::GetRcap => "GetRcap",
            Method::GetRSpec => "GetRSpec",
            Method::SplitPool => "SplitPool",
            Method::Bind => "Bind",
            Method::DestroyPool => "DestroyPool",
            Method::ListPools => "ListPools",
            Method::ListVMs => "ListVMs",
            Method::VmStatus => "VmStatus",
            Method::StartVM => "StartVM",
            Method::StopVM => "StopVM",
            Method::DestroyVM => "DestroyVM",
            Method::VmLog => "VmLog",
            Method::NodeInfo => "NodeInfo",
            Method::Orphans => "Orphans",
            Method::CleanOrphans => "CleanOrphans",
            Method::SignCertificate => "SignCertificate",
        }
    }

    /// Parameter names, in positional order.
    pub fn params(self) -> &'static [&'static str] {
        match self {
            Method::CreatePool => &["rspec", "slice_name"],
            Method::GetRcap => &["slice_name"],
            Method::GetRSpec | Method::DestroyPool => &["rcap"],
            Method::SplitPool => &["rcap", "rspec"],
            Method::Bind => &["rcap", "slice_name"],
            Method::VmStatus | Method::StartVM | Method::StopVM | Method::DestroyVM => &["vm"],
            Method::VmLog => &["vm", "bytes"],
            Method::SignCertificate => &["public_key"],
            Method::ListPools | Method::ListVMs | Method::NodeInfo | Method::Orphans | Method::CleanOrphans => &[],
        }
    }

    /// Looks a method up by wire name.
    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// Error codes: JSON-RPC's own, then the node manager's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum ErrorCode {
    /// The line is not JSON.
    ParseError = -32700,
    /// Not a JSON-RPC 2.0 request, or over 1 MiB.
    InvalidRequest = -32600,
    /// No such method.
    MethodNotFound = -32601,
    /// A parameter is missing or malformed.
    InvalidParams = -32602,
    /// The caller may not do this.
    PermissionDenied = 1,
    /// The rcap is not known (malformed rcaps get the same answer).
    UnknownRcap = 2,
    /// The RSpec document is malformed or invalid.
    InvalidRSpec = 3,
    /// A split asks for more than the pool holds, or a VM for less than it needs.
    Resources = 4,
    /// No such VM.
    NotFound = 5,
    /// The object is in a state that does not allow this (bound pool, busy VM).
    Conflict = 6,
    /// The VM type is not supported on this node.
    Unsupported = 7,
    /// The backend failed to carry the operation out; nothing was changed.
    Backend = 8,
    /// The node manager failed (storage); nothing was changed.
    Internal = 9,
}

/// An error answer: a code and a message that names the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    /// The code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

impl RpcError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into() }
    }

    /// The one answer for any rcap that is malformed or not known.
    pub fn unknown_rcap() -> RpcError {
        RpcError::new(ErrorCode::UnknownRcap, "unknown rcap")
    }

    /// The JSON-RPC error object.
    pub fn to_json(&self) -> Value {
        serde_json::json!({ "code": self.code as i64, "message": self.message })
    }
}

/// Named access to a request's params, whether given by name or by position.
pub struct Params<'a> {
    method: Method,
    value: &'a Value,
}

impl<'a> Params<'a> {
    /// Wraps `params` (object, array or absent) for `method`.
    pub fn new(method: Method, value: &'a Value) -> Result<Params<'a>, RpcError> {
        match value {
            Value::Object(o) => {
                if let Some(k) = o.keys().find(|k| !method.params().contains(&k.as_str())) {
                    return Err(RpcError::new(
                        ErrorCode::InvalidParams,
                        format!("{}: unknown parameter {k:?} (takes {:?})", method.name(), method.params()),
                    ));
                }
            }
            Value::Array(a) if a.len() > method.params().len() => {
                return Err(RpcError::new(
                    ErrorCode::InvalidParams,
                    format!("{}: takes at most {} parameters", method.name(), method.params().len()),
                ))
            }
            Value::Array(_) | Value::Null => {}
            _ => return Err(RpcError::new(ErrorCode::InvalidParams, "params must be an object or an array")),
        }
        Ok(Params { method, value })
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        let v = match self.value {
            Value::Object(o) => o.get(name),
            Value::Array(a) => self.method.params().iter().position(|p| *p == name).and_then(|i| a.get(i)),
            _ => None,
        };
        v.filter(|v| !v.is_null())
    }

    /// A string parameter, if given.
    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(RpcError::new(ErrorCode::InvalidParams, format!("{name}: must be a string"))),
        }
    }

    /// A required string parameter.
    pub fn str(&self, name: &str) -> Result<&'a str, RpcError> {
        self.opt_str(name)?
            .ok_or_else(|| RpcError::new(ErrorCode::InvalidParams, format!("{}: missing parameter {name}", self.method.name())))
    }

    /// An optional non-negative integer parameter.
    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| RpcError::new(ErrorCode::InvalidParams, format!("{name}: must be a non-negative integer"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_by_name_or_position() {
        let by_name = serde_json::json!({"rcap": "ab", "rspec": "<x/>"});
        let p = Params::new(Method::SplitPool, &by_name).unwrap();
        assert_eq!(p.str("rspec").unwrap(), "<x/>");
        let by_pos = serde_json::json!(["ab", "<x/>"]);
        let p = Params::new(Method::SplitPool, &by_pos).unwrap();
        assert_eq!(p.str("rspec").unwrap(), "<x/>");
        let e = Params::new(Method::GetRSpec, &serde_json::json!({"rcap": "a", "slice": 1})).err().unwrap();
        assert!(e.message.contains("unknown parameter \"slice\""));
        let p = Params::new(Method::GetRSpec, &Value::Null).unwrap();
        assert!(p.str("rcap").unwrap_err().message.contains("missing parameter rcap"));
        let bad = serde_json::json!({"rcap": 5});
        assert!(Params::new(Method::GetRSpec, &bad).unwrap().str("rcap").unwrap_err().message.starts_with("rcap:"));
    }

    #[test]
    fn method_names_round_trip() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()), Some(m));
        }
        assert_eq!(Method::parse("createpool"), None);
    }
}
