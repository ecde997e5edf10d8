//! The management authority's public interface (section 4.8.1): sites, nodes, their
//! configuration files, and the package versions nodes compare against.

use crate::api::Authority;
use crate::auth::{Caller, Role};
use crate::error::{conflict_on_unique, AuthError};
use crate::sa::check_name;
use crate::types::*;
use credentials::boot_hmac::{BootAuth, NodeKey};
use jsonrpc::Empty;
use std::net::IpAddr;
use std::time::Duration;

/// A node's row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct NodeRow {
    pub id: i64,
    pub site_id: i64,
    pub hostname: String,
    pub ip: String,
    pub mac: String,
    pub state: String,
    pub node_key: String,
    pub trigger_port: Option<i64>,
}

impl NodeRow {
    /// The node's boot state.
    pub fn boot_state(&self) -> Result<BootState, AuthError> {
        self.state.parse().map_err(|_| {
            AuthError::internal(format!("node {}: stored state {:?} is not a boot state", self.id, self.state))
        })
    }

    /// The node key (section 5.2).
    pub fn key(&self) -> Result<NodeKey, AuthError> {
        NodeKey::from_hex(&self.node_key)
            .map_err(|_| AuthError::internal(format!("node {}: stored node key is not hex", self.id)))
    }
}

impl Authority {
    pub(crate) async fn node(&self, id: i64) -> Result<NodeRow, AuthError> {
        sqlx::query_as(&self.db.q(
            "SELECT id, site_id, hostname, ip, mac, state, node_key, trigger_port FROM nodes WHERE id = ? AND deleted = 0",
        ))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| AuthError::not_found(format!("node_id: no node {id}")))
    }

    /// The site's tech, an admin of its org, or an operator may manage its nodes.
    async fn require_site(&self, c: &Caller, site_id: i64, method: &str) -> Result<(), AuthError> {
        let p = c.principal().ok_or_else(|| AuthError::denied(method, "a principal"))?;
        if p.roles.contains(&Role::Operator) {
            return Ok(());
        }
        let (org, tech): (i64, Option<i64>) =
            sqlx::query_as(&self.db.q("SELECT org_id, tech_id FROM sites WHERE id = ?"))
                .bind(site_id)
                .fetch_optional(self.db.pool())
                .await?
                .ok_or_else(|| AuthError::not_found(format!("site: no site {site_id}")))?;
        if (p.has(Role::Admin) && p.org_id == org)
            || (p.has(Role::Tech) && (tech == Some(p.id) || (tech.is_none() && p.org_id == org)))
        {
            Ok(())
        } else {
            Err(AuthError::denied(method, "the site's tech, an admin of its organisation, or the operator role"))
        }
    }

    pub(crate) async fn add_site(&self, c: &Caller, p: AddSiteParams, now: i64) -> Result<SiteIdResult, AuthError> {
        let me = c.principal().ok_or_else(|| AuthError::denied("AddSite", "a principal"))?;
        let o = p.site;
        let (org_id,): (i64,) = sqlx::query_as(&self.db.q("SELECT id FROM orgs WHERE name = ?"))
            .bind(o.org.clone())
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| AuthError::not_found(format!("site.org: no organisation {:?}", o.org)))?;
        if !(me.roles.contains(&Role::Operator) || (me.has(Role::Admin) && me.org_id == org_id)) {
            return Err(AuthError::denied("AddSite", "admin of the organisation"));
        }
        check_name("site.name", &o.name)?;
        let subnets = o.subnets.unwrap_or_default();
        for s in subnets.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, len) = s
                .split_once('/')
                .ok_or_else(|| AuthError::invalid("site.subnets", format!("{s:?} is not address/length")))?;
            let ok = addr.parse::<IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128);
            if !ok {
                return Err(AuthError::invalid("site.subnets", format!("{s:?} is not address/length")));
            }
        }
        for (k, v, lim) in [("latitude", o.latitude, 90.0), ("longitude", o.longitude, 180.0)] {
            if v.is_some_and(|x: f64| !x.is_finite() || x.abs() > lim) {
                return Err(AuthError::invalid(&format!("site.{k}"), format!("must be a number within ±{lim}")));
            }
        }
        let tech = match &o.tech {
            Some(t) => {
                let (id, roles): (i64, String) =
                    sqlx::query_as(&self.db.q("SELECT id, roles FROM principals WHERE name = ? AND org_id = ?"))
                        .bind(t.clone())
                        .bind(org_id)
                        .fetch_optional(self.db.pool())
                        .await?
                        .ok_or_else(|| AuthError::not_found(format!("site.tech: no principal {t:?} in {}", o.org)))?;
                if !roles.split(',').any(|x| x == "tech") {
                    return Err(AuthError::invalid("site.tech", format!("{t} does not have the tech role")));
                }
                Some(id)
            }
            None => None,
        };
        let (site_id,): (i64,) = sqlx::query_as(&self.db.q(
            "INSERT INTO sites (org_id, name, tech_id, subnets, latitude, longitude, created) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        ))
        .bind(org_id)
        .bind(o.name.clone())
        .bind(tech)
        .bind(subnets)
        .bind(o.latitude)
        .bind(o.longitude)
        .bind(now)
        .fetch_one(self.db.pool())
        .await
        .map_err(conflict_on_unique(&format!("site.name: {} exists already", o.name)))?;
        Ok(SiteIdResult { site_id })
    }

    pub(crate) async fn get_sites(&self) -> Result<Vec<SiteInfo>, AuthError> {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT s.id, s.name, o.name AS org, s.subnets FROM sites s JOIN orgs o ON o.id = s.org_id ORDER BY s.id",
        )
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(|(site_id, name, org, subnets)| SiteInfo { site_id, name, org, subnets }).collect())
    }

    pub(crate) async fn add_node(&self, c: &Caller, p: AddNodeParams, now: i64) -> Result<NodeIdResult, AuthError> {
        let o = p.node;
        let (site_id,): (i64,) = sqlx::query_as(&self.db.q("SELECT id FROM sites WHERE name = ?"))
            .bind(o.site.clone())
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| AuthError::not_found(format!("node.site: no site {:?}", o.site)))?;
        self.require_site(c, site_id, "AddNode").await?;
        check_hostname(&o.hostname)?;
        o.ip.parse::<IpAddr>()
            .map_err(|_| AuthError::invalid("node.ip", format!("{:?} is not an IP address", o.ip)))?;
        let mac = o.mac.unwrap_or_default();
        check_mac(&mac)?;
        let key = NodeKey::generate();
        let (node_id,): (i64,) = sqlx::query_as(&self.db.q(
            "INSERT INTO nodes (site_id, hostname, ip, mac, state, node_key, deleted, created) VALUES (?, ?, ?, ?, 'install', ?, 0, ?) RETURNING id",
        ))
        .bind(site_id)
        .bind(o.hostname.clone())
        .bind(o.ip)
        .bind(mac)
        .bind(key.to_hex())
        .bind(now)
        .fetch_one(self.db.pool())
        .await
        .map_err(conflict_on_unique(&format!("node.hostname: {} is registered already", o.hostname)))?;
        Ok(NodeIdResult { node_id })
    }

    pub(crate) async fn update_node(&self, c: &Caller, p: UpdateNodeParams) -> Result<NodeUpdated, AuthError> {
        let n = self.node(p.node_id).await?;
        self.require_site(c, n.site_id, "UpdateNode").await?;
        let o = p.node;
        if let Some(k) = o.other.keys().next() {
            return Err(AuthError::invalid(&format!("node.{k}"), "cannot be changed (a node never changes site)"));
        }
        if let Some(h) = &o.hostname {
            check_hostname(h)?;
        }
        if let Some(ip) = &o.ip {
            ip.parse::<IpAddr>().map_err(|_| AuthError::invalid("node.ip", format!("{ip:?} is not an IP address")))?;
        }
        if let Some(m) = &o.mac {
            check_mac(m)?;
        }
        let mut tx = self.db.begin().await?;
        sqlx::query(&self.db.q(
            "UPDATE nodes SET hostname = COALESCE(?, hostname), ip = COALESCE(?, ip), mac = COALESCE(?, mac), state = COALESCE(?, state) WHERE id = ?",
        ))
        .bind(o.hostname)
        .bind(o.ip)
        .bind(o.mac)
        .bind(o.state.map(|s| s.to_string()))
        .bind(n.id)
        .execute(&mut *tx)
        .await
        .map_err(conflict_on_unique("node.hostname: taken by another node"))?;
        // A node in debug runs no slices: what it should run changed.
        self.commit_change(tx).await?;
        // Section 4.8.2: when a node is put in debug state, the MA contacts it to trigger
        // the boot process, bringing it into a safe state quickly.
        let contacted =
            if o.state == Some(BootState::Debug) { self.trigger_node(&n, BootState::Debug).await } else { false };
        Ok(NodeUpdated { node_id: n.id, contacted })
    }

    /// Tells a node's boot manager to re-run the boot process: a `BootTrigger` JSON-RPC
    /// call on one TCP connection, authenticated by an HMAC with the node key, so the
    /// node knows it comes from its MA.
    async fn trigger_node(&self, n: &NodeRow, state: BootState) -> bool {
        let Some(port) = n.trigger_port else { return false };
        let Ok(key) = n.key() else { return false };
        let params = serde_json::json!([{ "state": state }]);
        let auth = BootAuth::sign(&key, n.id, "BootTrigger", &params);
        let Ok(auth) = serde_json::to_value(auth) else { return false };
        let mut all = vec![auth];
        all.extend(params.as_array().cloned().unwrap_or_default());
        let mut msg = jsonrpc::client::request(1, "BootTrigger", &serde_json::Value::Array(all));
        msg.push(b'\n');
        let addr = format!("{}:{port}", n.ip);
        let attempt = async {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            s.write_all(&msg).await?;
            let mut line = String::new();
            tokio::io::BufReader::new(s.take(64 * 1024)).read_line(&mut line).await?;
            Ok::<String, std::io::Error>(line)
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(line)) => match jsonrpc::client::result(line.as_bytes()).map(serde_json::from_value::<TriggerResult>)
            {
                Ok(Ok(r)) => r.accepted,
                other => {
                    tracing::warn!(node = n.id, "the node at {addr} refused the trigger: {other:?}");
                    false
                }
            },
            Ok(Err(e)) => {
                tracing::warn!(node = n.id, "contacting the node at {addr}: {e}");
                false
            }
            Err(_) => {
                tracing::warn!(node = n.id, "contacting the node at {addr}: timed out");
                false
            }
        }
    }

    pub(crate) async fn delete_node(&self, c: &Caller, p: NodeParams) -> Result<NodeDeleted, AuthError> {
        let n = self.node(p.node_id).await?;
        self.require_site(c, n.site_id, "DeleteNode").await?;
        let mut tx = self.db.begin().await?;
        sqlx::query(&self.db.q("UPDATE nodes SET deleted = 1 WHERE id = ?")).bind(n.id).execute(&mut *tx).await?;
        self.commit_change(tx).await?;
        self.sessions.forget_node_services(&self.db, n.id).await?;
        Ok(NodeDeleted { node_id: n.id, deleted: true })
    }

    pub(crate) async fn get_managed_nodes(&self) -> Result<Vec<i64>, AuthError> {
        let rows: Vec<(i64,)> =
            sqlx::query_as("SELECT id FROM nodes WHERE deleted = 0 ORDER BY id").fetch_all(self.db.pool()).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    pub(crate) async fn get_nodes(&self, p: GetNodesParams) -> Result<Vec<NodeInfo>, AuthError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: i64,
            hostname: String,
            ip: String,
            mac: String,
            state: String,
            last_contact: Option<i64>,
            cert: Option<String>,
            site: String,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT n.id, n.hostname, n.ip, n.mac, n.state, n.last_contact, n.cert, s.name AS site FROM nodes n JOIN sites s ON s.id = n.site_id WHERE n.deleted = 0 ORDER BY n.id",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter()
            .filter(|r| p.node_ids.as_ref().is_none_or(|w| w.contains(&r.id)))
            .map(|r| {
                Ok(NodeInfo {
                    node_id: r.id,
                    state: r
                        .state
                        .parse()
                        .map_err(|_| AuthError::internal(format!("node {}: stored state {:?}", r.id, r.state)))?,
                    hostname: r.hostname,
                    ip: r.ip,
                    mac: r.mac,
                    site: r.site,
                    last_contact: r.last_contact,
                    certified: r.cert.is_some(),
                })
            })
            .collect()
    }

    pub(crate) async fn get_node_config(&self, c: &Caller, p: NodeParams) -> Result<NodeConfigResult, AuthError> {
        let n = self.node(p.node_id).await?;
        self.require_site(c, n.site_id, "GetNodeConfig").await?;
        let plnode = format!(
            "# plnode.txt for node {id}: copy onto write-protected storage (section 4.1).\nIP_METHOD = \"static\"\nIP_ADDRESS = \"{ip}\"\nHOST_NAME = \"{host}\"\nNET_DEV = \"{mac}\"\nNODE_KEY = \"{key}\"\nNODE_ID = \"{id}\"\n",
            id = n.id,
            ip = n.ip,
            host = n.hostname,
            mac = n.mac,
            key = n.node_key
        );
        Ok(NodeConfigResult { plnode, root: self.ca.root.cert_pem.clone() })
    }

    pub(crate) async fn set_package(&self, c: &Caller, p: PackageParams) -> Result<Empty, AuthError> {
        if !c.is_operator() {
            return Err(AuthError::denied("SetPackage", "the operator role"));
        }
        check_name("name", &p.name)?;
        let version = p.version.text();
        if version.is_empty() || version.len() > 64 || version.contains(char::is_whitespace) {
            return Err(AuthError::invalid("version", "1 to 64 characters, no spaces"));
        }
        let mut tx = self.db.begin().await?;
        sqlx::query(&self.db.q("DELETE FROM packages WHERE name = ?")).bind(p.name.clone()).execute(&mut *tx).await?;
        sqlx::query(&self.db.q("INSERT INTO packages (name, version) VALUES (?, ?)"))
            .bind(p.name)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Empty {})
    }
}

fn check_hostname(h: &str) -> Result<(), AuthError> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(AuthError::invalid("node.hostname", format!("{h:?} is not a DNS host name")))
    }
}

fn check_mac(m: &str) -> Result<(), AuthError> {
    let ok = m.is_empty()
        || (m.len() == 17
            && m.split(':').count() == 6
            && m.split(':').all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())));
    if ok {
        Ok(())
    } else {
        Err(AuthError::invalid("node.mac", format!("{m:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")))
    }
}
