//! Who is calling: the `auth` parameter every call takes first (section 5.5), resolved to
//! a [`Caller`].
//!
//! | `auth` | meaning |
//! |---|---|
//! | `null` | anonymous: only `RegisterPrincipal`, `GetPrincipalCert` and `AuthenticateCertificate` |
//! | `{"AuthMethod": "certificate"}` | the TLS client certificate chain of this connection |
//! | `{"AuthMethod": "session", "session": HEX}` | a session key from `AuthenticateCertificate` |
//! | `{"AuthMethod": "hmac", ...}` | a node's boot manager, only for `Boot*` calls (see `credentials::boot_hmac`) |

use crate::db::{int, text, Db};
use crate::rpc::{Code, RpcError};
use credentials::pki::{verify_chain, Cert};
use credentials::Identity;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Mutex;

/// A role (sections 4.7 and 4.8): the union of the SA's and MA's role sets, plus the
/// authority's own operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Staff of the authority itself (PLC operators): every call.
    Operator,
    /// An organisation's administrative contact (PI).
    Admin,
    /// A researcher.
    User,
    /// A site's technical contact.
    Tech,
}

impl Role {
    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            "tech" => Some(Role::Tech),
            _ => None,
        }
    }
    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::User => "user",
            Role::Tech => "tech",
        }
    }
}

/// An approved principal.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Row id.
    pub id: i64,
    /// Login name.
    pub name: String,
    /// Organisation.
    pub org_id: i64,
    /// Roles.
    pub roles: Vec<Role>,
}

impl Principal {
    /// Has the role (operators have every role).
    pub fn has(&self, r: Role) -> bool {
        self.roles.contains(&r) || self.roles.contains(&Role::Operator)
    }
}

/// The caller of one request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No credentials.
    Anonymous,
    /// A person.
    Principal(Principal),
    /// A service slice on a node (certified by that node's NM).
    Service {
        /// The slice.
        slice: String,
        /// The node.
        node: i64,
    },
    /// A node, by its MA-issued certificate.
    Node(i64),
}

impl Caller {
    /// The principal, if any.
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Caller::Principal(p) => Some(p),
            _ => None,
        }
    }
    /// True for operators.
    pub fn is_operator(&self) -> bool {
        self.principal().is_some_and(|p| p.roles.contains(&Role::Operator))
    }
}

/// Session keys, by SHA-256 of the key: identity and expiry. Kept in memory as well as in
/// the database, so checking a session on a hot path (node polling) costs no query.
#[derive(Default)]
pub struct Sessions {
    cache: Mutex<HashMap<String, (String, i64)>>,
}

/// SHA-256 of a session key, hex.
pub fn session_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Sessions {
    /// Remembers a new session.
    pub async fn create(&self, db: &Db, key: &str, identity: &Identity, expires: i64) -> Result<(), RpcError> {
        let h = session_hash(key);
        sqlx::query(&db.q("INSERT INTO sessions (key_hash, identity, expires) VALUES (?, ?, ?)"))
            .bind(h.clone())
            .bind(identity.to_string())
            .bind(expires)
            .execute(db.pool())
            .await?;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(h, (identity.to_string(), expires));
        Ok(())
    }

    async fn lookup(&self, db: &Db, key: &str, now: i64) -> Result<Identity, RpcError> {
        let h = session_hash(key);
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&h).cloned();
        let (identity, expires) = match cached {
            Some(c) => c,
            None => {
                let row = sqlx::query(&db.q("SELECT identity, expires FROM sessions WHERE key_hash = ?"))
                    .bind(h.clone())
                    .fetch_optional(db.pool())
                    .await?
                    .ok_or_else(|| RpcError::new(Code::NotAuthenticated, "auth.session: unknown session"))?;
                let c = (text(&row, "identity"), int(&row, "expires"));
                self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(h, c.clone());
                c
            }
        };
        if now >= expires {
            return Err(RpcError::new(Code::NotAuthenticated, "auth.session: expired; authenticate again"));
        }
        Identity::parse(&identity).map_err(|e| RpcError::new(Code::Internal, e.to_string()))
    }
}

async fn principal_by_name(db: &Db, name: &str, cert_der: Option<&[u8]>) -> Result<Principal, RpcError> {
    let row = sqlx::query(&db.q("SELECT id, org_id, roles, approved, cert FROM principals WHERE name = ?"))
        .bind(name.to_owned())
        .fetch_optional(db.pool())
        .await?
        .ok_or_else(|| RpcError::new(Code::NotAuthenticated, format!("auth: no principal {name:?}")))?;
    if int(&row, "approved") == 0 {
        return Err(RpcError::new(Code::NotAuthenticated, format!("auth: principal {name} is not approved yet")));
    }
    if let Some(der) = cert_der {
        // Only the certificate the authority last issued counts: a replaced one is dead.
        let current = Cert::from_pem(&text(&row, "cert")).map(|c| c.der).unwrap_or_default();
        if current != der {
            return Err(RpcError::new(Code::NotAuthenticated, format!("auth: this certificate of {name} has been replaced")));
        }
    }
    let roles: Vec<Role> = row.try_get::<String, _>("roles").unwrap_or_default().split(',').filter_map(Role::parse).collect();
    Ok(Principal { id: int(&row, "id"), name: name.into(), org_id: int(&row, "org_id"), roles })
}

async fn caller_of(db: &Db, id: Identity, cert_der: Option<&[u8]>) -> Result<Caller, RpcError> {
    match id {
        Identity::Principal(name) => Ok(Caller::Principal(principal_by_name(db, &name, cert_der).await?)),
        Identity::Service { slice, node } => Ok(Caller::Service { slice: slice.to_string(), node }),
        Identity::Node(n) => Ok(Caller::Node(n)),
        other => Err(RpcError::new(Code::NotAuthenticated, format!("auth: {other} cannot call the API"))),
    }
}

/// Resolves `auth` for one call. `peer_chain` is the TLS client chain, if any.
pub async fn resolve(
    db: &Db,
    sessions: &Sessions,
    roots: &[Cert],
    auth: &Value,
    peer_chain: Option<&[Cert]>,
    now: i64,
) -> Result<Caller, RpcError> {
    let method = match auth {
        Value::Null => return Ok(Caller::Anonymous),
        Value::Object(o) => o.get("AuthMethod").and_then(Value::as_str).unwrap_or(""),
        _ => return Err(RpcError::invalid("auth", "must be null or an object with AuthMethod")),
    };
    match method {
        "certificate" => {
            let chain = peer_chain.filter(|c| !c.is_empty()).ok_or_else(|| {
                RpcError::new(Code::NotAuthenticated, "auth: AuthMethod certificate, but the connection presented no client certificate")
            })?;
            let id = verify_chain(chain, roots, now).map_err(|e| RpcError::new(Code::NotAuthenticated, format!("auth: {e}")))?;
            caller_of(db, id, Some(&chain[0].der)).await
        }
        "session" => {
            let key = auth.get("session").and_then(Value::as_str).ok_or_else(|| RpcError::invalid("auth.session", "missing"))?;
            let id = sessions.lookup(db, key, now).await?;
            caller_of(db, id, None).await
        }
        "hmac" => Err(RpcError::new(Code::NotAuthenticated, "auth: hmac authenticates only the boot manager's Boot* calls")),
        other => Err(RpcError::invalid("auth.AuthMethod", format!("{other:?} is not one of certificate, session, hmac"))),
    }
}
