//! The management authority's boot manager interface (section 4.8.2). Every call is
//! authenticated by an HMAC over the node key ([`credentials::boot_hmac`]); the MA also
//! checks that the call comes from the node's registered address (a sanity check: the
//! node is trusted to be physically secure) and refuses replayed requests.

use crate::api::{calls, Authority, Method, Request};
use crate::error::AuthError;
use crate::ma::NodeRow;
use crate::types::*;
use credentials::boot_hmac::{BootAuth, MAX_SKEW};
use credentials::identity::Identity;
use credentials::pki::{issue, Profile};
use jsonrpc::{reply, RpcError, Value};
use std::net::IpAddr;

/// How long a node certificate is valid, in days (a node asks for a new one at every boot).
pub const NODE_CERT_DAYS: i64 = 30;

impl Authority {
    async fn boot_auth(
        &self,
        m: Method,
        auth: &Value,
        params: &Value,
        peer: IpAddr,
        now: i64,
    ) -> Result<NodeRow, AuthError> {
        let ba: BootAuth = serde_json::from_value(auth.clone())
            .map_err(|e| AuthError::unauthenticated(format!("auth: a boot call needs HMAC auth ({e})")))?;
        let n = self
            .node(ba.node_id)
            .await
            .map_err(|_| AuthError::unauthenticated(format!("auth.node_id: no node {}", ba.node_id)))?;
        ba.verify(&n.key()?, m.name(), params, now).map_err(|e| AuthError::unauthenticated(e.to_string()))?;
        let registered: IpAddr = n.ip.parse().map_err(|_| AuthError::internal("stored node address is invalid"))?;
        if registered != peer {
            return Err(AuthError::Forbidden(format!(
                "node {} must call from its registered address {registered}, not {peer} (is plnode.txt in the right machine?)",
                n.id
            )));
        }
        // A nonce may be used once; the MAC already binds it to this node and time.
        let mut tx = self.db.begin().await?;
        sqlx::query(&self.db.q("DELETE FROM boot_nonces WHERE seen < ?"))
            .bind(now - 2 * MAX_SKEW)
            .execute(&mut *tx)
            .await?;
        let seen: Option<(i64,)> =
            sqlx::query_as(&self.db.q("SELECT 1 AS x FROM boot_nonces WHERE node_id = ? AND nonce = ?"))
                .bind(n.id)
                .bind(ba.nonce.clone())
                .fetch_optional(&mut *tx)
                .await?;
        if seen.is_some() {
            return Err(AuthError::unauthenticated("auth.nonce: replayed request refused"));
        }
        sqlx::query(&self.db.q("INSERT INTO boot_nonces (node_id, nonce, seen) VALUES (?, ?, ?)"))
            .bind(n.id)
            .bind(ba.nonce)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&self.db.q("UPDATE nodes SET last_contact = ? WHERE id = ?"))
            .bind(now)
            .bind(n.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    pub(crate) async fn boot_call(
        &self,
        m: Method,
        auth: &Value,
        params: Value,
        peer: IpAddr,
    ) -> Result<Value, RpcError> {
        let now = credentials::now();
        let n = self.boot_auth(m, auth, &params, peer, now).await?;
        let state = n.boot_state()?;
        match Request::decode(m.name(), params)? {
            Request::BootGetState(p) => {
                reply::<calls::BootGetState>(self.boot_get_state(n, state, p).await.map_err(RpcError::from))
            }
            Request::BootUpdateState(p) => {
                let to = p.params.state;
                let ok = matches!(
                    (state, to),
                    (BootState::Install | BootState::Reinstall, BootState::Boot) | (_, BootState::Failboot)
                );
                if !ok {
                    return Err(AuthError::conflict(format!(
                        "params.state: a node in {state} may not move itself to {to}"
                    ))
                    .into());
                }
                sqlx::query(&self.db.q("UPDATE nodes SET state = ? WHERE id = ?"))
                    .bind(to.to_string())
                    .bind(n.id)
                    .execute(self.db.pool())
                    .await
                    .map_err(AuthError::from)?;
                reply::<calls::BootUpdateState>(Ok(StateResult { state: to }))
            }
            Request::BootGetCertificate(p) => {
                if state != BootState::Boot {
                    return Err(AuthError::conflict(format!(
                        "the node is in state {state}; certificates are issued in boot state"
                    ))
                    .into());
                }
                let cert = issue(
                    &self.ca.ma.cert_pem,
                    &self.ca.ma.key,
                    &Identity::Node(n.id),
                    &p.params.public_key,
                    Profile::Node,
                    NODE_CERT_DAYS,
                )
                .map_err(|e| AuthError::invalid("params.public_key", e))?;
                sqlx::query(&self.db.q("UPDATE nodes SET cert = ? WHERE id = ?"))
                    .bind(cert.clone())
                    .bind(n.id)
                    .execute(self.db.pool())
                    .await
                    .map_err(AuthError::from)?;
                // The old key's service certificates and their sessions die with it.
                self.sessions.forget_node_services(&self.db, n.id).await?;
                reply::<calls::BootGetCertificate>(Ok(CertResult {
                    certificate: format!("{cert}{}", self.ca.ma.cert_pem),
                    root: self.ca.root.cert_pem.clone(),
                }))
            }
            Request::BootCheckUpdates(p) => {
                let rows: Vec<(String, String)> = sqlx::query_as("SELECT name, version FROM packages ORDER BY name")
                    .fetch_all(self.db.pool())
                    .await
                    .map_err(AuthError::from)?;
                let updates = rows
                    .into_iter()
                    .filter(|(name, version)| p.params.packages.get(name) != Some(version))
                    .map(|(name, version)| PackageVersion { name, version })
                    .collect();
                reply::<calls::BootCheckUpdates>(Ok(UpdatesResult { updates, state }))
            }
            other => Err(AuthError::NoMethod(format!("{}: not a boot call", other.method())).into()),
        }
    }

    async fn boot_get_state(
        &self,
        n: NodeRow,
        state: BootState,
        p: BootGetStateParams,
    ) -> Result<BootStateResult, AuthError> {
        if let Some(port) = p.params.and_then(|t| t.trigger_port) {
            if port == 0 {
                return Err(AuthError::invalid("params.trigger_port", "must be a port number"));
            }
            sqlx::query(&self.db.q("UPDATE nodes SET trigger_port = ? WHERE id = ?"))
                .bind(port as i64)
                .bind(n.id)
                .execute(self.db.pool())
                .await?;
        }
        Ok(BootStateResult { node_id: n.id, hostname: n.hostname, state })
    }
}
