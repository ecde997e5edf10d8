//! The management authority's boot manager interface (section 4.8.2). Every call is
//! authenticated by an HMAC over the node key ([`credentials::boot_hmac`]); the MA also
//! checks that the call comes from the node's registered address (a sanity check: the
//! node is trusted to be physically secure) and refuses replayed requests.

use crate::api::{Authority, Method};
use crate::ma::NodeRow;
use crate::rpc::{field, Args, Code, RpcError};
use credentials::boot_hmac::{BootAuth, MAX_SKEW};
use credentials::identity::Identity;
use credentials::pki::{issue, Profile};
use serde_json::{json, Value};
use std::net::IpAddr;

impl Authority {
    async fn boot_auth(&self, m: Method, auth: &Value, a: &Args<'_>, peer: IpAddr, now: i64) -> Result<NodeRow, RpcError> {
        let ba: BootAuth = serde_json::from_value(auth.clone())
            .map_err(|e| RpcError::new(Code::NotAuthenticated, format!("auth: a boot call needs HMAC auth ({e})")))?;
        let n = self
            .node(ba.node_id)
            .await
            .map_err(|_| RpcError::new(Code::NotAuthenticated, format!("auth.node_id: no node {}", ba.node_id)))?;
        let key = hex::decode(&n.node_key).map_err(|_| RpcError::new(Code::Internal, "stored node key is not hex"))?;
        let params = Value::Array(a.rest());
        ba.verify(&key, m.name(), &params, now).map_err(|e| RpcError::new(Code::NotAuthenticated, e.to_string()))?;
        let registered: IpAddr = n.ip.parse().map_err(|_| RpcError::new(Code::Internal, "stored node address is invalid"))?;
        if registered != peer {
            return Err(RpcError::new(
                Code::PermissionDenied,
                format!("node {} must call from its registered address {registered}, not {peer} (is plnode.txt in the right machine?)", n.id),
            ));
        }
        // A nonce may be used once; the MAC already binds it to this node and time.
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(&self.db.q("DELETE FROM boot_nonces WHERE seen < ?")).bind(now - 2 * MAX_SKEW).execute(&mut *tx).await?;
        let seen = sqlx::query(&self.db.q("SELECT 1 AS x FROM boot_nonces WHERE node_id = ? AND nonce = ?"))
            .bind(n.id)
            .bind(ba.nonce.clone())
            .fetch_optional(&mut *tx)
            .await?;
        if seen.is_some() {
            return Err(RpcError::new(Code::NotAuthenticated, "auth.nonce: replayed request refused"));
        }
        sqlx::query(&self.db.q("INSERT INTO boot_nonces (node_id, nonce, seen) VALUES (?, ?, ?)"))
            .bind(n.id)
            .bind(ba.nonce)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&self.db.q("UPDATE nodes SET last_contact = ? WHERE id = ?")).bind(now).bind(n.id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(n)
    }

    pub(crate) async fn boot_call(&self, m: Method, auth: &Value, a: &Args<'_>, peer: IpAddr) -> Result<Value, RpcError> {
        let now = credentials::now();
        let n = self.boot_auth(m, auth, a, peer, now).await?;
        let o = match a.get(1) {
            Value::Null => serde_json::Map::new(),
            _ => a.obj(1, "params")?.clone(),
        };
        match m {
            Method::BootGetState => {
                if let Some(p) = o.get("trigger_port") {
                    let port = p.as_u64().filter(|p| (1..=65535).contains(p)).ok_or_else(|| RpcError::invalid("params.trigger_port", "must be a port number"))?;
                    sqlx::query(&self.db.q("UPDATE nodes SET trigger_port = ? WHERE id = ?")).bind(port as i64).bind(n.id).execute(self.db.pool()).await?;
                }
                Ok(json!({ "node_id": n.id, "hostname": n.hostname, "state": n.state }))
            }
            Method::BootUpdateState => {
                let to = field(&o, "params", "state")?;
                let ok = matches!((n.state.as_str(), to), ("install" | "reinstall", "boot") | (_, "failboot"));
                if !ok {
                    return Err(RpcError::new(Code::Conflict, format!("params.state: a node in {} may not move itself to {to}", n.state)));
                }
                sqlx::query(&self.db.q("UPDATE nodes SET state = ? WHERE id = ?")).bind(to.to_owned()).bind(n.id).execute(self.db.pool()).await?;
                Ok(json!({ "state": to }))
            }
            Method::BootGetCertificate => {
                if n.state != "boot" {
                    return Err(RpcError::new(Code::Conflict, format!("the node is in state {}; certificates are issued in boot state", n.state)));
                }
                let pk = field(&o, "params", "public_key")?;
                let cert = issue(&self.ca.ma.cert_pem, &self.ca.ma.key, &Identity::Node(n.id), pk, Profile::Node, 30)
                    .map_err(|e| RpcError::invalid("params.public_key", e))?;
                sqlx::query(&self.db.q("UPDATE nodes SET cert = ? WHERE id = ?")).bind(cert.clone()).bind(n.id).execute(self.db.pool()).await?;
                Ok(json!({ "certificate": format!("{cert}{}", self.ca.ma.cert_pem), "root": self.ca.root.cert_pem }))
            }
            Method::BootCheckUpdates => {
                let have = o.get("packages").and_then(Value::as_object).cloned().unwrap_or_default();
                let rows = sqlx::query("SELECT name, version FROM packages ORDER BY name").fetch_all(self.db.pool()).await?;
                let updates: Vec<Value> = rows
                    .iter()
                    .filter(|r| have.get(&crate::db::text(r, "name")).and_then(Value::as_str) != Some(crate::db::text(r, "version").as_str()))
                    .map(|r| json!({"name": crate::db::text(r, "name"), "version": crate::db::text(r, "version")}))
                    .collect();
                Ok(json!({ "updates": updates, "state": n.state }))
            }
            _ => Err(RpcError::new(Code::MethodNotFound, format!("{}: not a boot call", m.name()))),
        }
    }
}
