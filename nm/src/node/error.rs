//! Why a node manager call failed, and the one place where that becomes a wire code.

use crate::store::StoreError;
use jsonrpc::{ErrorCode, RpcError};
use vm_types::BackendError;

/// Why a node manager call failed. Each variant's doc comment is its message.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum NmError {
    /// unknown rcap
    UnknownRcap,
    /// The caller may not do this; the message says who may.
    #[displaydoc("{0}")]
    PermissionDenied(String),
    /// {field}: {reason}
    InvalidParams {
        /// The parameter.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The RSpec document is malformed or not allowed here.
    #[displaydoc("{0}")]
    InvalidRSpec(String),
    /// More than a pool holds, or less than a VM needs.
    #[displaydoc("{0}")]
    Resources(String),
    /// The object's state does not allow this.
    #[displaydoc("{0}")]
    Conflict(String),
    /// vm: no VM named {0:?} that you may see
    NoSuchVm(String),
    /// No such object.
    #[displaydoc("{0}")]
    NotFound(String),
    /// vm_type: {0}
    Unsupported(String),
    /// {op}: {source}
    Backend {
        /// The API call that failed.
        op: &'static str,
        /// What the backend said.
        source: BackendError,
    },
    /// {0}
    Store(#[from] StoreError),
    /// The node manager itself failed.
    #[displaydoc("{0}")]
    Internal(String),
}

impl NmError {
    /// A backend failure during `op`.
    pub fn backend(op: &'static str) -> impl FnOnce(BackendError) -> NmError {
        move |source| NmError::Backend { op, source }
    }

    /// InvalidParams for `field`.
    pub fn invalid(field: &'static str, reason: impl std::fmt::Display) -> NmError {
        NmError::InvalidParams { field, reason: reason.to_string() }
    }

    /// The wire code: the only place node manager errors are mapped to codes.
    pub fn code(&self) -> ErrorCode {
        match self {
            NmError::UnknownRcap => ErrorCode::UNKNOWN_RCAP,
            NmError::PermissionDenied(_) => ErrorCode::PERMISSION_DENIED,
            NmError::InvalidParams { .. } => ErrorCode::INVALID_PARAMS,
            NmError::InvalidRSpec(_) => ErrorCode::INVALID_RSPEC,
            NmError::Resources(_) => ErrorCode::RESOURCES,
            NmError::Conflict(_) => ErrorCode::CONFLICT,
            NmError::NoSuchVm(_) | NmError::NotFound(_) => ErrorCode::NOT_FOUND,
            NmError::Unsupported(_) => ErrorCode::UNSUPPORTED,
            NmError::Backend { source, .. } => match source {
                BackendError::NotFound(_) => ErrorCode::NOT_FOUND,
                BackendError::Invalid(_) => ErrorCode::RESOURCES,
                BackendError::Internal(_) => ErrorCode::INTERNAL,
                BackendError::Command { .. } | BackendError::Io(..) | BackendError::Unavailable(_) => {
                    ErrorCode::BACKEND
                }
            },
            NmError::Store(_) | NmError::Internal(_) => ErrorCode::INTERNAL,
        }
    }
}

impl From<NmError> for RpcError {
    fn from(e: NmError) -> RpcError {
        let code = e.code();
        if code == ErrorCode::INTERNAL {
            tracing::error!("{e}");
            return RpcError::new(code, format!("{e}; nothing was changed"));
        }
        RpcError::new(code, e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn internal_failures_are_never_resource_errors() {
        let panicked = NmError::Backend { op: "Bind", source: BackendError::Internal("backend task panicked".into()) };
        assert_eq!(RpcError::from(panicked).code, ErrorCode::INTERNAL);
        let small = NmError::Backend { op: "Bind", source: BackendError::Invalid("disk_quota: too small".into()) };
        let e = RpcError::from(small);
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::RESOURCES, "Bind: disk_quota: too small"));
        assert_eq!(RpcError::from(NmError::UnknownRcap).message, "unknown rcap");
        assert_eq!(RpcError::from(NmError::invalid("slice_name", "bad")).message, "slice_name: bad");
    }
}
