//! Why an authority call failed, and the one place where that becomes a wire code.

use crate::db::DbError;
use jsonrpc::{ErrorCode, RpcError};

/// Why an authority call failed. Each variant's doc comment is its message.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum AuthError {
    /// {method}: permission denied: needs {need}
    Denied {
        /// The method.
        method: String,
        /// Who may call it.
        need: String,
    },
    /// The caller could not be authenticated; the message says why.
    #[displaydoc("{0}")]
    NotAuthenticated(String),
    /// A refusal that is not about roles (a node calling from the wrong address).
    #[displaydoc("{0}")]
    Forbidden(String),
    /// {field}: {reason}
    Invalid {
        /// The parameter.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No such object; the message names it.
    #[displaydoc("{0}")]
    NotFound(String),
    /// The object exists, or its state does not allow this.
    #[displaydoc("{0}")]
    Conflict(String),
    /// No such method (here).
    #[displaydoc("{0}")]
    NoMethod(String),
    /// Too many requests of this kind; try again later.
    #[displaydoc("{0}")]
    Unavailable(String),
    /// {0}
    Db(#[from] DbError),
    /// The authority itself failed.
    #[displaydoc("{0}")]
    Internal(String),
}

impl From<sqlx::Error> for AuthError {
    fn from(e: sqlx::Error) -> AuthError {
        AuthError::Db(DbError(e))
    }
}

impl AuthError {
    /// PermissionDenied naming the method and who may call it.
    pub fn denied(method: &str, need: &str) -> AuthError {
        AuthError::Denied { method: method.into(), need: need.into() }
    }
    /// InvalidParams for `field`.
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> AuthError {
        AuthError::Invalid { field: field.into(), reason: why.to_string() }
    }
    /// NotFound.
    pub fn not_found(what: impl Into<String>) -> AuthError {
        AuthError::NotFound(what.into())
    }
    /// Conflict.
    pub fn conflict(what: impl Into<String>) -> AuthError {
        AuthError::Conflict(what.into())
    }
    /// NotAuthenticated.
    pub fn unauthenticated(why: impl Into<String>) -> AuthError {
        AuthError::NotAuthenticated(why.into())
    }
    /// Internal.
    pub fn internal(what: impl std::fmt::Display) -> AuthError {
        AuthError::Internal(what.to_string())
    }

    /// The wire code: the only place authority errors are mapped to codes.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Denied { .. } | AuthError::Forbidden(_) => ErrorCode::PERMISSION_DENIED,
            AuthError::NotAuthenticated(_) => ErrorCode::NOT_AUTHENTICATED,
            AuthError::Invalid { .. } => ErrorCode::INVALID_PARAMS,
            AuthError::NotFound(_) => ErrorCode::NOT_FOUND,
            AuthError::Conflict(_) => ErrorCode::CONFLICT,
            AuthError::NoMethod(_) => ErrorCode::METHOD_NOT_FOUND,
            AuthError::Unavailable(_) => ErrorCode::UNAVAILABLE,
            AuthError::Db(e) if e.is_unique_violation() => ErrorCode::CONFLICT,
            AuthError::Db(e) if e.is_foreign_key_violation() => ErrorCode::NOT_FOUND,
            AuthError::Db(_) | AuthError::Internal(_) => ErrorCode::INTERNAL,
        }
    }
}

impl From<AuthError> for RpcError {
    fn from(e: AuthError) -> RpcError {
        let code = e.code();
        let message = match &e {
            AuthError::Db(d) if d.is_unique_violation() => "already exists".to_string(),
            AuthError::Db(d) if d.is_foreign_key_violation() => "refers to something that does not exist".to_string(),
            AuthError::Db(_) | AuthError::Internal(_) => {
                tracing::error!("{e}");
                "internal error; nothing was changed".to_string()
            }
            _ => e.to_string(),
        };
        RpcError::new(code, message)
    }
}

/// Maps a unique violation to a Conflict with `msg`; other errors pass.
pub fn conflict_on_unique(msg: &str) -> impl FnOnce(sqlx::Error) -> AuthError + '_ {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => AuthError::conflict(msg),
        _ => AuthError::from(e),
    }
}
