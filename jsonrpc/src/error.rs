//! The one table of error codes every plab API answers with, and the error object.
//!
//! | code | name | meaning |
//! |---:|---|---|
//! | -32700 | ParseError | the message is not JSON |
//! | -32600 | InvalidRequest | not a JSON-RPC 2.0 request, or too large |
//! | -32601 | MethodNotFound | no such method (here) |
//! | -32602 | InvalidParams | a parameter is missing or malformed; the message names it |
//! | 1 | PermissionDenied | the caller is known but may not do this |
//! | 2 | NotAuthenticated | the caller could not be authenticated |
//! | 3 | NotFound | no such object (that the caller may see) |
//! | 4 | Conflict | the object exists, or its state does not allow this |
//! | 5 | Internal | the service failed (storage, a crashed task); nothing was changed |
//! | 6 | UnknownRcap | the rcap is not known; malformed rcaps get the same answer |
//! | 7 | InvalidRSpec | the RSpec document is malformed or not allowed here |
//! | 8 | Resources | more than the pool holds, or less than a VM needs |
//! | 9 | Unsupported | the VM type is not offered on this node |
//! | 10 | Backend | the VM backend failed to carry the operation out; nothing was changed |
//! | 11 | Unavailable | a service this call depends on cannot be reached or is overloaded; try later |

use serde::{Deserialize, Serialize};
use std::fmt;

/// A JSON-RPC error code. A number, so that codes from a newer peer survive a round trip;
/// the known ones are the associated constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub i64);

macro_rules! codes {
    ($( $(#[$doc:meta])* $konst:ident = $n:expr, $name:literal; )*) => {
        impl ErrorCode {
            $( $(#[$doc])* pub const $konst: ErrorCode = ErrorCode($n); )*
            /// Every code this table knows.
            pub const ALL: &'static [ErrorCode] = &[$( ErrorCode::$konst, )*];
            /// The code's name in the table above, or `None` for a code it does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $( $n => Some($name), )* _ => None }
            }
        }
    };
}

codes! {
    /// The message is not JSON.
    PARSE_ERROR = -32700, "ParseError";
    /// Not a JSON-RPC 2.0 request, or too large.
    INVALID_REQUEST = -32600, "InvalidRequest";
    /// No such method.
    METHOD_NOT_FOUND = -32601, "MethodNotFound";
    /// A parameter is missing or malformed.
    INVALID_PARAMS = -32602, "InvalidParams";
    /// The caller may not do this.
    PERMISSION_DENIED = 1, "PermissionDenied";
    /// The caller could not be authenticated.
    NOT_AUTHENTICATED = 2, "NotAuthenticated";
    /// No such object.
    NOT_FOUND = 3, "NotFound";
    /// The object exists already, or its state forbids this.
    CONFLICT = 4, "Conflict";
    /// The service failed; nothing was changed.
    INTERNAL = 5, "Internal";
    /// The rcap is not known (malformed rcaps get the same answer).
    UNKNOWN_RCAP = 6, "UnknownRcap";
    /// The RSpec document is malformed or invalid.
    INVALID_RSPEC = 7, "InvalidRSpec";
    /// More than a pool holds, or less than a VM needs.
    RESOURCES = 8, "Resources";
    /// The VM type is not supported on this node.
    UNSUPPORTED = 9, "Unsupported";
    /// The VM backend failed; nothing was changed.
    BACKEND = 10, "Backend";
    /// A service this call needs is unreachable or overloaded; try again later.
    UNAVAILABLE = 11, "Unavailable";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.0),
            None => write!(f, "error {}", self.0),
        }
    }
}

/// An error answer: a code and a message that names the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    /// The code.
    pub code: ErrorCode,
    /// What went wrong, naming the field and the reason.
    pub message: String,
}

impl RpcError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into() }
    }

    /// InvalidParams for `field`.
    pub fn invalid(field: &str, why: impl fmt::Display) -> RpcError {
        RpcError::new(ErrorCode::INVALID_PARAMS, format!("{field}: {why}"))
    }

    /// PermissionDenied naming the method and what the caller would need.
    pub fn denied(method: &str, need: &str) -> RpcError {
        RpcError::new(ErrorCode::PERMISSION_DENIED, format!("{method}: permission denied: needs {need}"))
    }

    /// Internal, logged here (the client only learns that nothing was changed).
    pub fn internal(what: impl fmt::Display) -> RpcError {
        tracing::error!("internal error: {what}");
        RpcError::new(ErrorCode::INTERNAL, format!("internal error ({what}); nothing was changed"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_named() {
        let mut seen = std::collections::BTreeSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.0), "duplicate code {c}");
            assert!(c.name().is_some());
        }
        assert_eq!(ErrorCode(42).name(), None);
        assert_eq!(ErrorCode::NOT_FOUND.to_string(), "NotFound (3)");
        let e = RpcError::new(ErrorCode::CONFLICT, "x");
        assert_eq!(serde_json::to_value(&e).unwrap(), serde_json::json!({"code": 4, "message": "x"}));
    }
}
