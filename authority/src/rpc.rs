//! JSON-RPC 2.0 plumbing of the authority API: error codes, parameter access and the
//! request decoder (fuzzed by the tests: it must never panic on any input).

use serde_json::{json, Value};

/// Error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum Code {
    /// Not JSON.
    ParseError = -32700,
    /// Not a JSON-RPC 2.0 request.
    InvalidRequest = -32600,
    /// No such method.
    MethodNotFound = -32601,
    /// A parameter is missing or malformed.
    InvalidParams = -32602,
    /// The caller is authenticated but may not do this.
    PermissionDenied = 1,
    /// The caller could not be authenticated.
    NotAuthenticated = 2,
    /// No such object.
    NotFound = 3,
    /// The object exists already, or its state forbids this.
    Conflict = 4,
    /// Storage or another internal failure; nothing was changed.
    Internal = 5,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    /// Code.
    pub code: Code,
    /// Message naming the field and the reason.
    pub message: String,
}

impl RpcError {
    /// An error.
    pub fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into() }
    }
    /// PermissionDenied naming the method and what is needed.
    pub fn denied(method: &str, need: &str) -> RpcError {
        RpcError::new(Code::PermissionDenied, format!("{method}: permission denied: needs {need}"))
    }
    /// InvalidParams for a field.
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> RpcError {
        RpcError::new(Code::InvalidParams, format!("{field}: {why}"))
    }
}

impl From<crate::db::DbError> for RpcError {
    fn from(e: crate::db::DbError) -> RpcError {
        if let sqlx::Error::Database(d) = &e.0 {
            if d.is_unique_violation() {
                return RpcError::new(Code::Conflict, "already exists");
            }
            if d.is_foreign_key_violation() {
                return RpcError::new(Code::NotFound, "refers to something that does not exist");
            }
        }
        tracing::error!("{e}");
        RpcError::new(Code::Internal, "internal storage error; nothing was changed")
    }
}

impl From<sqlx::Error> for RpcError {
    fn from(e: sqlx::Error) -> RpcError {
        RpcError::from(crate::db::DbError(e))
    }
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The id (absent for notifications).
    pub id: Option<Value>,
    /// Method name.
    pub method: String,
    /// Positional params (objects are not used by this API: every call is `(auth, ...)`).
    pub params: Vec<Value>,
}

/// Decodes a request body. Errors carry the id when one could be read.
pub fn decode(body: &[u8]) -> Result<Request, (Value, RpcError)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| (Value::Null, RpcError::new(Code::ParseError, format!("not JSON: {e}"))))?;
    let Value::Object(mut o) = v else {
        return Err((Value::Null, RpcError::new(Code::InvalidRequest, "a request must be a JSON object")));
    };
    let id = o.remove("id");
    let rid = id.clone().unwrap_or(Value::Null);
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((rid, RpcError::new(Code::InvalidRequest, "jsonrpc: must be \"2.0\"")));
    }
    let method = match o.remove("method") {
        Some(Value::String(m)) if m.len() <= 64 => m,
        _ => return Err((rid, RpcError::new(Code::InvalidRequest, "method: missing or not a short string"))),
    };
    let params = match o.remove("params") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a,
        Some(_) => return Err((rid, RpcError::new(Code::InvalidParams, "params: must be an array (auth first)"))),
    };
    Ok(Request { id, method, params })
}

/// The reply for a result or an error.
pub fn reply(id: Value, r: Result<Value, RpcError>) -> Value {
    match r {
        Ok(v) => json!({ "jsonrpc": "2.0", "id": id, "result": v }),
        Err(e) => json!({ "jsonrpc": "2.0", "id": id, "error": { "code": e.code as i64, "message": e.message } }),
    }
}

/// Positional parameter access after `auth`.
pub struct Args<'a> {
    method: &'a str,
    params: &'a [Value],
}

impl<'a> Args<'a> {
    /// Params of `method` (index 0 is auth).
    pub fn new(method: &'a str, params: &'a [Value]) -> Args<'a> {
        Args { method, params }
    }
    /// Parameter `i` (1-based after auth) or Null.
    pub fn get(&self, i: usize) -> &'a Value {
        self.params.get(i).unwrap_or(&Value::Null)
    }
    /// Every parameter after `auth`, as the HMAC covers them.
    pub fn rest(&self) -> Vec<Value> {
        self.params.iter().skip(1).cloned().collect()
    }
    /// A required string.
    pub fn str(&self, i: usize, name: &str) -> Result<&'a str, RpcError> {
        match self.get(i) {
            Value::String(s) if s.len() <= 256 * 1024 => Ok(s),
            Value::String(_) => Err(RpcError::invalid(name, "too long")),
            Value::Null => Err(RpcError::invalid(name, format!("missing ({} takes it as parameter {})", self.method, i + 1))),
            _ => Err(RpcError::invalid(name, "must be a string")),
        }
    }
    /// A required integer.
    pub fn int(&self, i: usize, name: &str) -> Result<i64, RpcError> {
        match self.get(i) {
            Value::Number(n) => n.as_i64().ok_or_else(|| RpcError::invalid(name, "must be an integer")),
            Value::Null => Err(RpcError::invalid(name, format!("missing ({} takes it as parameter {})", self.method, i + 1))),
            _ => Err(RpcError::invalid(name, "must be an integer")),
        }
    }
    /// A required object.
    pub fn obj(&self, i: usize, name: &str) -> Result<&'a serde_json::Map<String, Value>, RpcError> {
        self.get(i).as_object().ok_or_else(|| RpcError::invalid(name, "must be an object"))
    }
    /// An array of strings.
    pub fn strs(&self, i: usize, name: &str) -> Result<Vec<&'a str>, RpcError> {
        let a = self.get(i).as_array().ok_or_else(|| RpcError::invalid(name, "must be an array of strings"))?;
        a.iter().map(|v| v.as_str().ok_or_else(|| RpcError::invalid(name, "must be an array of strings"))).collect()
    }
    /// An array of integers.
    pub fn ints(&self, i: usize, name: &str) -> Result<Vec<i64>, RpcError> {
        let a = self.get(i).as_array().ok_or_else(|| RpcError::invalid(name, "must be an array of integers"))?;
        a.iter().map(|v| v.as_i64().ok_or_else(|| RpcError::invalid(name, "must be an array of integers"))).collect()
    }
}

/// A string field of a params object.
pub fn field<'a>(o: &'a serde_json::Map<String, Value>, obj: &str, key: &str) -> Result<&'a str, RpcError> {
    match o.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(RpcError::invalid(&format!("{obj}.{key}"), "must be a string")),
        None => Err(RpcError::invalid(&format!("{obj}.{key}"), "missing")),
    }
}

/// An optional string field.
pub fn opt_field<'a>(o: &'a serde_json::Map<String, Value>, obj: &str, key: &str) -> Result<Option<&'a str>, RpcError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RpcError::invalid(&format!("{obj}.{key}"), "must be a string")),
    }
}

/// Checks a principal or site name: 1 to 64 of a-z, 0-9, '-', '_', '.'.
pub fn check_name(field: &str, s: &str) -> Result<(), RpcError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RpcError::invalid(field, format!("{s:?} must be 1 to 64 characters of a-z, 0-9, '-', '_', '.', starting with a letter")))
    }
}
