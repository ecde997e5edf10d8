//! Who is calling: the `auth` parameter every call takes first (section 5.5), resolved to
//! a [`Caller`].
//!
//! | `auth` | meaning |
//! |---|---|
//! | `null` | anonymous: only `RegisterPrincipal`, `GetPrincipalCert` and `AuthenticateCertificate` |
//! | `{"AuthMethod": "certificate"}` | the TLS client certificate chain of this connection |
//! | `{"AuthMethod": "session", "session": HEX}` | a session key from `AuthenticateCertificate` |
//! | `{"AuthMethod": "hmac", ...}` | a node's boot manager, only for `Boot*` calls (see `credentials::boot_hmac`) |

use crate::db::Db;
use crate::error::AuthError;
use credentials::pki::{verify_chain, Cert};
use credentials::Identity;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

pub use crate::types::Role;

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
    pub async fn create(&self, db: &Db, key: &str, identity: &Identity, expires: i64) -> Result<(), AuthError> {
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

    /// Removes the sessions that expired before `now` (anonymous callers can make them by
    /// the thousand: they must not pile up). Returns how many went.
    pub async fn purge_expired(&self, db: &Db, now: i64) -> Result<u64, AuthError> {
        let n = sqlx::query(&db.q("DELETE FROM sessions WHERE expires <= ?"))
            .bind(now)
            .execute(db.pool())
            .await?
            .rows_affected();
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, (_, expires)| *expires > now);
        Ok(n)
    }

    /// Ends every session of the services on `node` (it has a new key, or is gone).
    pub async fn forget_node_services(&self, db: &Db, node: i64) -> Result<(), AuthError> {
        let pattern = format!("service:%@{node}");
        sqlx::query(&db.q("DELETE FROM sessions WHERE identity LIKE ?")).bind(pattern).execute(db.pool()).await?;
        let suffix = format!("@{node}");
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (i, _)| !(i.starts_with("service:") && i.ends_with(&suffix)));
        Ok(())
    }

    /// Ends every session of `identity` (its certificate was replaced).
    pub async fn forget_identity(&self, db: &Db, identity: &Identity) -> Result<(), AuthError> {
        let id = identity.to_string();
        sqlx::query(&db.q("DELETE FROM sessions WHERE identity = ?")).bind(id.clone()).execute(db.pool()).await?;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, (i, _)| *i != id);
        Ok(())
    }

    async fn lookup(&self, db: &Db, key: &str, now: i64) -> Result<Identity, AuthError> {
        let h = session_hash(key);
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&h).cloned();
        let (identity, expires) = match cached {
            Some(c) => c,
            None => {
                let row: (String, i64) =
                    sqlx::query_as(&db.q("SELECT identity, expires FROM sessions WHERE key_hash = ?"))
                        .bind(h.clone())
                        .fetch_optional(db.pool())
                        .await?
                        .ok_or_else(|| AuthError::unauthenticated("auth.session: unknown session"))?;
                self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(h, row.clone());
                row
            }
        };
        if now >= expires {
            return Err(AuthError::unauthenticated("auth.session: expired; authenticate again"));
        }
        Identity::parse(&identity).map_err(AuthError::internal)
    }
}

#[derive(sqlx::FromRow)]
struct PrincipalRow {
    id: i64,
    org_id: i64,
    roles: String,
    approved: i64,
    cert: Option<String>,
}

async fn principal_by_name(db: &Db, name: &str, cert_der: Option<&[u8]>) -> Result<Principal, AuthError> {
    let row: PrincipalRow =
        sqlx::query_as(&db.q("SELECT id, org_id, roles, approved, cert FROM principals WHERE name = ?"))
            .bind(name.to_owned())
            .fetch_optional(db.pool())
            .await?
            .ok_or_else(|| AuthError::unauthenticated(format!("auth: no principal {name:?}")))?;
    if row.approved == 0 {
        return Err(AuthError::unauthenticated(format!("auth: principal {name} is not approved yet")));
    }
    if let Some(der) = cert_der {
        // Only the certificate the authority last issued counts: a replaced one is dead.
        let current = row.cert.as_deref().and_then(|c| Cert::from_pem(c).ok()).map(|c| c.der);
        if current.as_deref() != Some(der) {
            return Err(AuthError::unauthenticated(format!("auth: this certificate of {name} has been replaced")));
        }
    }
    let roles: Vec<Role> = row.roles.split(',').filter_map(Role::parse).collect();
    Ok(Principal { id: row.id, name: name.into(), org_id: row.org_id, roles })
}

/// A service speaks for its node only while the node exists and, when its chain is at hand,
/// only under the node's current certificate: a node that booted with a new key, or was
/// deleted, takes every certificate made with its old key with it (a stolen node key is
/// worth nothing after the next boot).
pub(crate) async fn check_service_node(db: &Db, node: i64, node_cert_der: Option<&[u8]>) -> Result<(), AuthError> {
    let row: Option<(Option<String>, i64)> = sqlx::query_as(&db.q("SELECT cert, deleted FROM nodes WHERE id = ?"))
        .bind(node)
        .fetch_optional(db.pool())
        .await?;
    let Some((cert, 0)) = row else {
        return Err(AuthError::unauthenticated(format!(
            "auth: node {node} is not a node of this authority (deleted?)"
        )));
    };
    if let Some(der) = node_cert_der {
        let current = cert.as_deref().and_then(|c| Cert::from_pem(c).ok()).map(|c| c.der);
        if current.as_deref() != Some(der) {
            return Err(AuthError::unauthenticated(format!(
                "auth: this service certificate was made with a node certificate that node {node} no longer has (it booted with a new key)"
            )));
        }
    }
    Ok(())
}

/// The caller `id` speaks as; `chain` is the certificate chain it presented, when it did
/// (a session's caller presented it when the session was made).
async fn caller_of(db: &Db, id: Identity, chain: Option<&[Cert]>) -> Result<Caller, AuthError> {
    match id {
        Identity::Principal(name) => {
            Ok(Caller::Principal(principal_by_name(db, &name, chain.map(|c| c[0].der.as_slice())).await?))
        }
        Identity::Service { slice, node } => {
            let node_cert = chain.map(|c| c.get(1).map(|n| n.der.as_slice()).unwrap_or_default());
            check_service_node(db, node, node_cert).await?;
            Ok(Caller::Service { slice: slice.to_string(), node })
        }
        Identity::Node(n) => Err(AuthError::unauthenticated(format!(
            "auth: node {n}'s certificate certifies services on the node; it cannot call the API itself (the node's boot manager uses its HMAC)"
        ))),
        other => Err(AuthError::unauthenticated(format!("auth: {other} cannot call the API"))),
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
) -> Result<Caller, AuthError> {
    let method = match auth {
        Value::Null => return Ok(Caller::Anonymous),
        Value::Object(o) => o.get("AuthMethod").and_then(Value::as_str).unwrap_or(""),
        _ => return Err(AuthError::invalid("auth", "must be null or an object with AuthMethod")),
    };
    match method {
        "certificate" => {
            let chain = peer_chain.filter(|c| !c.is_empty()).ok_or_else(|| {
                AuthError::unauthenticated(
                    "auth: AuthMethod certificate, but the connection presented no client certificate",
                )
            })?;
            let id = verify_chain(chain, roots, now).map_err(|e| AuthError::unauthenticated(format!("auth: {e}")))?;
            caller_of(db, id, Some(chain)).await
        }
        "session" => {
            let key = auth
                .get("session")
                .and_then(Value::as_str)
                .ok_or_else(|| AuthError::invalid("auth.session", "missing"))?;
            let id = sessions.lookup(db, key, now).await?;
            caller_of(db, id, None).await
        }
        "hmac" => Err(AuthError::unauthenticated("auth: hmac authenticates only the boot manager's Boot* calls")),
        other => {
            Err(AuthError::invalid("auth.AuthMethod", format!("{other:?} is not one of certificate, session, hmac")))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cached(s: &Sessions) -> Vec<String> {
        let mut v: Vec<String> = s.cache.lock().unwrap().values().map(|(i, _)| i.clone()).collect();
        v.sort();
        v
    }

    /// The in-memory cache follows the database: a node's rekey forgets its services'
    /// sessions and nobody else's; purging forgets what expired, to the second.
    #[tokio::test]
    async fn the_session_cache_forgets_exactly_what_the_database_does() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}", dir.path().join("a.db").display())).await.unwrap();
        let s = Sessions::default();
        let svc = |node| Identity::Service { slice: vm_types::SliceName::parse("plc.scs").unwrap(), node };
        let now = 1_000_000;
        s.create(&db, "a", &svc(1), now + 100).await.unwrap();
        s.create(&db, "b", &svc(2), now + 100).await.unwrap();
        s.create(&db, "c", &Identity::Node(1), now + 100).await.unwrap();
        s.create(&db, "d", &Identity::Principal("x1".into()), now + 100).await.unwrap();
        s.forget_node_services(&db, 1).await.unwrap();
        assert_eq!(cached(&s), ["node:1", "principal:x1", "service:plc.scs@2"]);

        let t = Sessions::default();
        t.create(&db, "e", &Identity::Principal("gone".into()), now).await.unwrap();
        t.create(&db, "f", &Identity::Principal("stays".into()), now + 1).await.unwrap();
        assert_eq!(t.purge_expired(&db, now).await.unwrap(), 1);
        assert_eq!(cached(&t), ["principal:stays"]);
    }
}
