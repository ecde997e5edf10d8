//! The management authority's public interface (section 4.8.1): sites, nodes, their
//! configuration files, and the package versions nodes compare against.

use crate::api::Authority;
use crate::auth::{Caller, Role};
use crate::db::{int, opt_int, opt_text, text};
use crate::rpc::{check_name, field, opt_field, Args, Code, RpcError};
use crate::sa::conflict;
use credentials::boot_hmac::BootAuth;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::Duration;

/// Node boot states (section 4.8, plus reinstall and failboot).
pub const NODE_STATES: [&str; 5] = ["install", "boot", "debug", "reinstall", "failboot"];

/// A node's row.
pub(crate) struct NodeRow {
    pub id: i64,
    pub site_id: i64,
    pub org_id: i64,
    pub hostname: String,
    pub ip: String,
    pub mac: String,
    pub state: String,
    pub node_key: String,
    pub trigger_port: Option<i64>,
}

impl Authority {
    pub(crate) async fn node(&self, id: i64) -> Result<NodeRow, RpcError> {
        let r = sqlx::query(&self.db.q(
            "SELECT n.id, n.site_id, s.org_id, n.hostname, n.ip, n.mac, n.state, n.node_key, n.trigger_port FROM nodes n JOIN sites s ON s.id = n.site_id WHERE n.id = ? AND n.deleted = 0",
        ))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| RpcError::new(Code::NotFound, format!("node_id: no node {id}")))?;
        Ok(NodeRow {
            id,
            site_id: int(&r, "site_id"),
            org_id: int(&r, "org_id"),
            hostname: text(&r, "hostname"),
            ip: text(&r, "ip"),
            mac: text(&r, "mac"),
            state: text(&r, "state"),
            node_key: text(&r, "node_key"),
            trigger_port: opt_int(&r, "trigger_port"),
        })
    }

    /// The site's tech, an admin of its org, or an operator may manage its nodes.
    async fn require_site(&self, c: &Caller, site_id: i64, method: &str) -> Result<(), RpcError> {
        let p = c.principal().ok_or_else(|| RpcError::denied(method, "a principal"))?;
        if p.roles.contains(&Role::Operator) {
            return Ok(());
        }
        let r = sqlx::query(&self.db.q("SELECT org_id, tech_id FROM sites WHERE id = ?"))
            .bind(site_id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| RpcError::new(Code::NotFound, format!("site: no site {site_id}")))?;
        let org = int(&r, "org_id");
        let tech = opt_int(&r, "tech_id");
        if (p.has(Role::Admin) && p.org_id == org) || (p.has(Role::Tech) && (tech == Some(p.id) || (tech.is_none() && p.org_id == org))) {
            Ok(())
        } else {
            Err(RpcError::denied(method, "the site's tech, an admin of its organisation, or the operator role"))
        }
    }

    pub(crate) async fn add_site(&self, c: &Caller, a: &Args<'_>, now: i64) -> Result<Value, RpcError> {
        let p = c.principal().ok_or_else(|| RpcError::denied("AddSite", "a principal"))?;
        let o = a.obj(1, "site")?;
        let org = field(o, "site", "org")?;
        let r = sqlx::query(&self.db.q("SELECT id FROM orgs WHERE name = ?"))
            .bind(org.to_owned())
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| RpcError::new(Code::NotFound, format!("site.org: no organisation {org:?}")))?;
        let org_id = int(&r, "id");
        if !(p.roles.contains(&Role::Operator) || (p.has(Role::Admin) && p.org_id == org_id)) {
            return Err(RpcError::denied("AddSite", "admin of the organisation"));
        }
        let name = field(o, "site", "name")?;
        check_name("site.name", name)?;
        let subnets = opt_field(o, "site", "subnets")?.unwrap_or("");
        for s in subnets.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, len) = s.split_once('/').ok_or_else(|| RpcError::invalid("site.subnets", format!("{s:?} is not address/length")))?;
            let ok = addr.parse::<IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128);
            if !ok {
                return Err(RpcError::invalid("site.subnets", format!("{s:?} is not address/length")));
            }
        }
        let coord = |k: &str, lim: f64| -> Result<Option<f64>, RpcError> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().filter(|x| x.abs() <= lim).map(Some).ok_or_else(|| RpcError::invalid(&format!("site.{k}"), format!("must be a number within ±{lim}"))),
            }
        };
        let (lat, lon) = (coord("latitude", 90.0)?, coord("longitude", 180.0)?);
        let tech = match opt_field(o, "site", "tech")? {
            Some(t) => {
                let r = sqlx::query(&self.db.q("SELECT id, roles FROM principals WHERE name = ? AND org_id = ?"))
                    .bind(t.to_owned())
                    .bind(org_id)
                    .fetch_optional(self.db.pool())
                    .await?
                    .ok_or_else(|| RpcError::new(Code::NotFound, format!("site.tech: no principal {t:?} in {org}")))?;
                if !text(&r, "roles").split(',').any(|x| x == "tech") {
                    return Err(RpcError::invalid("site.tech", format!("{t} does not have the tech role")));
                }
                Some(int(&r, "id"))
            }
            None => None,
        };
        let r = sqlx::query(&self.db.q(
            "INSERT INTO sites (org_id, name, tech_id, subnets, latitude, longitude, created) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        ))
        .bind(org_id)
        .bind(name.to_owned())
        .bind(tech)
        .bind(subnets.to_owned())
        .bind(lat)
        .bind(lon)
        .bind(now)
        .fetch_one(self.db.pool())
        .await
        .map_err(|e| conflict(e, &format!("site.name: {name} exists already")))?;
        Ok(json!({ "site_id": int(&r, "id") }))
    }

    pub(crate) async fn get_sites(&self) -> Result<Value, RpcError> {
        let rows = sqlx::query("SELECT s.id, s.name, s.subnets, o.name AS org FROM sites s JOIN orgs o ON o.id = s.org_id ORDER BY s.id")
            .fetch_all(self.db.pool())
            .await?;
        Ok(Value::Array(rows.iter().map(|r| json!({"site_id": int(r, "id"), "name": text(r, "name"), "org": text(r, "org"), "subnets": text(r, "subnets")})).collect()))
    }

    pub(crate) async fn add_node(&self, c: &Caller, a: &Args<'_>, now: i64) -> Result<Value, RpcError> {
        let o = a.obj(1, "node")?;
        let site = field(o, "node", "site")?;
        let r = sqlx::query(&self.db.q("SELECT id FROM sites WHERE name = ?"))
            .bind(site.to_owned())
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| RpcError::new(Code::NotFound, format!("node.site: no site {site:?}")))?;
        let site_id = int(&r, "id");
        self.require_site(c, site_id, "AddNode").await?;
        let hostname = field(o, "node", "hostname")?;
        check_hostname(hostname)?;
        let ip = field(o, "node", "ip")?;
        ip.parse::<IpAddr>().map_err(|_| RpcError::invalid("node.ip", format!("{ip:?} is not an IP address")))?;
        let mac = opt_field(o, "node", "mac")?.unwrap_or("");
        check_mac(mac)?;
        let key = hex::encode(credentials::random_bytes::<32>());
        let r = sqlx::query(&self.db.q(
            "INSERT INTO nodes (site_id, hostname, ip, mac, state, node_key, deleted, created) VALUES (?, ?, ?, ?, 'install', ?, 0, ?) RETURNING id",
        ))
        .bind(site_id)
        .bind(hostname.to_owned())
        .bind(ip.to_owned())
        .bind(mac.to_owned())
        .bind(key)
        .bind(now)
        .fetch_one(self.db.pool())
        .await
        .map_err(|e| conflict(e, &format!("node.hostname: {hostname} is registered already")))?;
        Ok(json!({ "node_id": int(&r, "id") }))
    }

    pub(crate) async fn update_node(&self, c: &Caller, a: &Args<'_>) -> Result<Value, RpcError> {
        let n = self.node(a.int(1, "node_id")?).await?;
        self.require_site(c, n.site_id, "UpdateNode").await?;
        let o = a.obj(2, "node")?;
        if let Some(k) = o.keys().find(|k| !["hostname", "ip", "mac", "state"].contains(&k.as_str())) {
            return Err(RpcError::invalid(&format!("node.{k}"), "cannot be changed (a node never changes site)"));
        }
        let hostname = opt_field(o, "node", "hostname")?;
        if let Some(h) = hostname {
            check_hostname(h)?;
        }
        let ip = opt_field(o, "node", "ip")?;
        if let Some(ip) = ip {
            ip.parse::<IpAddr>().map_err(|_| RpcError::invalid("node.ip", format!("{ip:?} is not an IP address")))?;
        }
        let mac = opt_field(o, "node", "mac")?;
        if let Some(m) = mac {
            check_mac(m)?;
        }
        let state = opt_field(o, "node", "state")?;
        if let Some(s) = state {
            if !NODE_STATES.contains(&s) {
                return Err(RpcError::invalid("node.state", format!("{s:?} is not one of {}", NODE_STATES.join(", "))));
            }
        }
        sqlx::query(&self.db.q(
            "UPDATE nodes SET hostname = COALESCE(?, hostname), ip = COALESCE(?, ip), mac = COALESCE(?, mac), state = COALESCE(?, state) WHERE id = ?",
        ))
        .bind(hostname.map(str::to_owned))
        .bind(ip.map(str::to_owned))
        .bind(mac.map(str::to_owned))
        .bind(state.map(str::to_owned))
        .bind(n.id)
        .execute(self.db.pool())
        .await
        .map_err(|e| conflict(e, "node.hostname: taken by another node"))?;
        // Section 4.8.2: when a node is put in debug state, the MA contacts it to trigger
        // the boot process, bringing it into a safe state quickly.
        let contacted = if state == Some("debug") { self.trigger_node(&n, "debug").await } else { false };
        Ok(json!({ "node_id": n.id, "contacted": contacted }))
    }

    /// Tells a node's boot manager to re-run the boot process. The message carries an HMAC
    /// with the node key, so the node knows it comes from its MA.
    async fn trigger_node(&self, n: &NodeRow, state: &str) -> bool {
        let Some(port) = n.trigger_port else { return false };
        let Ok(key) = hex::decode(&n.node_key) else { return false };
        let params = json!({ "state": state });
        let auth = BootAuth::sign(&key, n.id, "BootTrigger", &params);
        let msg = json!({ "method": "BootTrigger", "params": params, "auth": auth }).to_string() + "\n";
        let addr = format!("{}:{port}", n.ip);
        let attempt = async {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            s.write_all(msg.as_bytes()).await?;
            let mut line = String::new();
            tokio::io::BufReader::new(s).read_line(&mut line).await?;
            Ok::<bool, std::io::Error>(line.trim() == "ok")
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(ok)) => ok,
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

    pub(crate) async fn delete_node(&self, c: &Caller, a: &Args<'_>) -> Result<Value, RpcError> {
        let n = self.node(a.int(1, "node_id")?).await?;
        self.require_site(c, n.site_id, "DeleteNode").await?;
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(&self.db.q("UPDATE nodes SET deleted = 1 WHERE id = ?")).bind(n.id).execute(&mut *tx).await?;
        self.commit_change(tx).await?;
        Ok(json!({ "node_id": n.id, "deleted": true }))
    }

    pub(crate) async fn get_managed_nodes(&self) -> Result<Value, RpcError> {
        let rows = sqlx::query("SELECT id FROM nodes WHERE deleted = 0 ORDER BY id").fetch_all(self.db.pool()).await?;
        Ok(Value::Array(rows.iter().map(|r| json!(int(r, "id"))).collect()))
    }

    pub(crate) async fn get_nodes(&self, a: &Args<'_>) -> Result<Value, RpcError> {
        let wanted = match a.get(1) {
            Value::Null => None,
            _ => Some(a.ints(1, "node_ids")?),
        };
        let rows = sqlx::query(
            "SELECT n.id, n.hostname, n.ip, n.mac, n.state, n.last_contact, n.cert, s.name AS site FROM nodes n JOIN sites s ON s.id = n.site_id WHERE n.deleted = 0 ORDER BY n.id",
        )
        .fetch_all(self.db.pool())
        .await?;
        Ok(Value::Array(
            rows.iter()
                .filter(|r| wanted.as_ref().is_none_or(|w| w.contains(&int(r, "id"))))
                .map(|r| {
                    json!({"node_id": int(r, "id"), "hostname": text(r, "hostname"), "ip": text(r, "ip"), "mac": text(r, "mac"),
                           "site": text(r, "site"), "state": text(r, "state"), "last_contact": opt_int(r, "last_contact"),
                           "certified": opt_text(r, "cert").is_some()})
                })
                .collect(),
        ))
    }

    pub(crate) async fn get_node_config(&self, c: &Caller, a: &Args<'_>) -> Result<Value, RpcError> {
        let n = self.node(a.int(1, "node_id")?).await?;
        self.require_site(c, n.site_id, "GetNodeConfig").await?;
        let _ = n.org_id;
        let text = format!(
            "# plnode.txt for node {id}: copy onto write-protected storage (section 4.1).\nIP_METHOD = \"static\"\nIP_ADDRESS = \"{ip}\"\nHOST_NAME = \"{host}\"\nNET_DEV = \"{mac}\"\nNODE_KEY = \"{key}\"\nNODE_ID = \"{id}\"\n",
            id = n.id,
            ip = n.ip,
            host = n.hostname,
            mac = n.mac,
            key = n.node_key
        );
        Ok(json!({ "plnode": text, "root": self.ca.root.cert_pem }))
    }

    pub(crate) async fn set_package(&self, c: &Caller, a: &Args<'_>) -> Result<Value, RpcError> {
        if !c.is_operator() {
            return Err(RpcError::denied("SetPackage", "the operator role"));
        }
        let name = a.str(1, "name")?;
        check_name("name", name)?;
        let version = a.str(2, "version")?;
        if version.is_empty() || version.len() > 64 || version.contains(char::is_whitespace) {
            return Err(RpcError::invalid("version", "1 to 64 characters, no spaces"));
        }
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(&self.db.q("DELETE FROM packages WHERE name = ?")).bind(name.to_owned()).execute(&mut *tx).await?;
        sqlx::query(&self.db.q("INSERT INTO packages (name, version) VALUES (?, ?)")).bind(name.to_owned()).bind(version.to_owned()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(json!({}))
    }
}

fn check_hostname(h: &str) -> Result<(), RpcError> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-'));
    if ok {
        Ok(())
    } else {
        Err(RpcError::invalid("node.hostname", format!("{h:?} is not a DNS host name")))
    }
}

fn check_mac(m: &str) -> Result<(), RpcError> {
    let ok = m.is_empty() || (m.len() == 17 && m.split(':').count() == 6 && m.split(':').all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())));
    if ok {
        Ok(())
    } else {
        Err(RpcError::invalid("node.mac", format!("{m:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")))
    }
}
