//! The slice authority (section 4.7): organisations, principals, slices, tickets, and
//! the call nodes' slice creation services poll.

use crate::api::Authority;
use crate::auth::{Caller, Role};
use crate::db::{int, opt_text, text};
use crate::rpc::{check_name, field, opt_field, Args, Code, RpcError};
use credentials::identity::Identity;
use credentials::pki::{issue, verify_chain, Cert, Profile};
use credentials::ticket::TicketBody;
use serde_json::{json, Value};
use vm_types::{Quantity, RSpec, RSpecClass, Resources, SliceName, SshKey, VmType};

/// Who may set a slice attribute (section 4.7's implementation note): each attribute has
/// a privilege level. `User` means any principal of the slice.
pub fn attribute_privilege(attr: &str) -> Option<Role> {
    match attr {
        "bootscript" | "vm_type" => Some(Role::User),
        "cpu_share" | "mem_limit" | "disk_quota" => Some(Role::Admin),
        "base_rate" | "burst_rate" | "sustained_rate" => Some(Role::Operator),
        _ => None,
    }
}

/// A slice row.
pub(crate) struct SliceRow {
    pub id: i64,
    pub name: String,
    pub org_id: i64,
    pub delegated: bool,
    pub started: bool,
    pub deleted: bool,
    pub rspec: String,
    pub expires: i64,
}

fn slice_state(s: &SliceRow) -> Value {
    json!({
        "mode": if s.delegated { "delegated" } else { "central" },
        "run": if s.started { "start" } else { "stop" },
        "life": if s.deleted { "deleted" } else { "active" },
    })
}

impl Authority {
    pub(crate) async fn slice(&self, name: &str) -> Result<SliceRow, RpcError> {
        SliceName::parse(name).map_err(|e| RpcError::invalid("slice_name", e))?;
        let r = sqlx::query(&self.db.q(
            "SELECT id, name, org_id, delegated, started, deleted, rspec, expires FROM slices WHERE name = ? AND deleted = 0",
        ))
        .bind(name.to_owned())
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| RpcError::new(Code::NotFound, format!("slice_name: no active slice {name}")))?;
        Ok(SliceRow {
            id: int(&r, "id"),
            name: text(&r, "name"),
            org_id: int(&r, "org_id"),
            delegated: int(&r, "delegated") != 0,
            started: int(&r, "started") != 0,
            deleted: int(&r, "deleted") != 0,
            rspec: text(&r, "rspec"),
            expires: int(&r, "expires"),
        })
    }

    async fn is_member(&self, slice_id: i64, principal_id: i64) -> Result<bool, RpcError> {
        let r = sqlx::query(&self.db.q("SELECT 1 AS x FROM slice_principals WHERE slice_id = ? AND principal_id = ?"))
            .bind(slice_id)
            .bind(principal_id)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(r.is_some())
    }

    /// Checks that the caller holds `need` for the slice: `User` = member (or better),
    /// `Admin` = admin of the slice's org (or operator), `Operator` = operator.
    pub(crate) async fn require_slice(&self, c: &Caller, s: &SliceRow, need: Role, method: &str) -> Result<(), RpcError> {
        let p = c.principal().ok_or_else(|| RpcError::denied(method, "a principal"))?;
        if p.roles.contains(&Role::Operator) {
            return Ok(());
        }
        let admin = p.has(Role::Admin) && p.org_id == s.org_id;
        let ok = match need {
            Role::Operator => false,
            Role::Admin | Role::Tech => admin,
            Role::User => admin || self.is_member(s.id, p.id).await?,
        };
        if ok {
            Ok(())
        } else {
            Err(RpcError::denied(method, &format!("{} of slice {}", need.name(), s.name)))
        }
    }

    async fn org_by_name(&self, name: &str) -> Result<(i64, String), RpcError> {
        let r = sqlx::query(&self.db.q("SELECT id, authority FROM orgs WHERE name = ?"))
            .bind(name.to_owned())
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| RpcError::new(Code::NotFound, format!("org: no organisation {name:?}")))?;
        Ok((int(&r, "id"), text(&r, "authority")))
    }

    pub(crate) async fn authenticate_certificate(&self, a: &Args<'_>, now: i64) -> Result<Value, RpcError> {
        let pem = a.str(1, "certificate")?;
        let chain = Cert::bundle_from_pem(pem).map_err(|e| RpcError::invalid("certificate", e))?;
        let id = verify_chain(&chain, &self.roots, now).map_err(|e| RpcError::new(Code::NotAuthenticated, format!("certificate: {e}")))?;
        if let Identity::Principal(name) = &id {
            let r = sqlx::query(&self.db.q("SELECT cert, approved FROM principals WHERE name = ?"))
                .bind(name.clone())
                .fetch_optional(self.db.pool())
                .await?;
            let current = r.as_ref().filter(|r| int(r, "approved") == 1).and_then(|r| opt_text(r, "cert"));
            let current_der = current.and_then(|c| Cert::from_pem(&c).ok()).map(|c| c.der);
            if current_der.as_deref() != Some(chain[0].der.as_slice()) {
                return Err(RpcError::new(Code::NotAuthenticated, format!("certificate: not the current certificate of {name}")));
            }
        }
        let key = hex::encode(credentials::random_bytes::<32>());
        let sealed = credentials::seal::seal(&chain[0].spki, key.as_bytes()).map_err(|e| RpcError::invalid("certificate", e))?;
        let expires = (now + self.settings.session_ttl).min(chain[0].not_after);
        self.sessions.create(&self.db, &key, &id, expires).await?;
        Ok(json!({ "session": sealed, "expires": expires, "identity": id.to_string() }))
    }

    pub(crate) async fn add_org(&self, c: &Caller, a: &Args<'_>) -> Result<Value, RpcError> {
        if !c.is_operator() {
            return Err(RpcError::denied("AddOrg", "the operator role"));
        }
        let o = a.obj(1, "org")?;
        let name = field(o, "org", "name")?;
        check_name("org.name", name)?;
        let authority = SliceName::parse(field(o, "org", "authority")?).map_err(|e| RpcError::invalid("org.authority", e))?;
        let root = SliceName::parse(&self.ca.name).map_err(|e| RpcError::new(Code::Internal, e.to_string()))?;
        if !root.covers(&authority) {
            return Err(RpcError::invalid("org.authority", format!("{authority} is outside this authority's names ({root})")));
        }
        let address = opt_field(o, "org", "address")?.unwrap_or("");
        let r = sqlx::query(&self.db.q("INSERT INTO orgs (name, authority, address, created) VALUES (?, ?, ?, ?) RETURNING id"))
            .bind(name.to_owned())
            .bind(authority.to_string())
            .bind(address.to_owned())
            .bind(credentials::now())
            .fetch_one(self.db.pool())
            .await
            .map_err(|e| conflict(e, &format!("org: {name} or authority {authority} exists already")))?;
        Ok(json!({ "org_id": int(&r, "id") }))
    }

    pub(crate) async fn get_orgs(&self, c: &Caller) -> Result<Value, RpcError> {
        c.principal().ok_or_else(|| RpcError::denied("GetOrgs", "a principal"))?;
        let rows = sqlx::query("SELECT id, name, authority, address FROM orgs ORDER BY id").fetch_all(self.db.pool()).await?;
        Ok(Value::Array(
            rows.iter()
                .map(|r| json!({"org_id": int(r, "id"), "name": text(r, "name"), "authority": text(r, "authority"), "address": text(r, "address")}))
                .collect(),
        ))
    }

    async fn insert_principal(&self, o: &serde_json::Map<String, Value>, roles: &str, approved: bool, now: i64) -> Result<(i64, String), RpcError> {
        let name = field(o, "principal", "name")?;
        check_name("principal.name", name)?;
        let email = field(o, "principal", "email")?;
        if !email.contains('@') || email.len() > 254 || email.contains(char::is_whitespace) {
            return Err(RpcError::invalid("principal.email", format!("{email:?} is not an email address")));
        }
        let (org_id, _) = self.org_by_name(field(o, "principal", "org")?).await?;
        let public_key = field(o, "principal", "public_key")?;
        let cert = if approved { Some(self.principal_cert(name, public_key)?) } else {
            // Check the key now, so approval cannot fail on it later.
            self.principal_cert(name, public_key)?;
            None
        };
        let r = sqlx::query(&self.db.q(
            "INSERT INTO principals (name, email, org_id, roles, public_key, cert, approved, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        ))
        .bind(name.to_owned())
        .bind(email.to_owned())
        .bind(org_id)
        .bind(roles.to_owned())
        .bind(public_key.to_owned())
        .bind(cert.clone())
        .bind(approved as i64)
        .bind(now)
        .fetch_one(self.db.pool())
        .await
        .map_err(|e| conflict(e, &format!("principal.name: {name} exists already")))?;
        Ok((int(&r, "id"), cert.unwrap_or_default()))
    }

    fn principal_cert(&self, name: &str, public_key: &str) -> Result<String, RpcError> {
        issue(&self.ca.sa.cert_pem, &self.ca.sa.key, &Identity::Principal(name.into()), public_key, Profile::Client, 365)
            .map_err(|e| RpcError::invalid("principal.public_key", e))
    }

    pub(crate) async fn register_principal(&self, a: &Args<'_>, now: i64) -> Result<Value, RpcError> {
        let o = a.obj(1, "principal")?;
        let (id, _) = self.insert_principal(o, "user", false, now).await?;
        Ok(json!({ "principal_id": id, "approved": false }))
    }

    pub(crate) async fn add_principal(&self, c: &Caller, a: &Args<'_>, now: i64) -> Result<Value, RpcError> {
        let p = c.principal().ok_or_else(|| RpcError::denied("AddPrincipal", "a principal"))?;
        let o = a.obj(1, "principal")?;
        let role = Role::parse(field(o, "principal", "role")?)
            .ok_or_else(|| RpcError::invalid("principal.role", "must be operator, admin, user or tech"))?;
        let (org_id, _) = self.org_by_name(field(o, "principal", "org")?).await?;
        let ok = p.roles.contains(&Role::Operator) || (p.has(Role::Admin) && p.org_id == org_id && matches!(role, Role::User | Role::Tech));
        if !ok {
            return Err(RpcError::denied("AddPrincipal", "admin of the org (for users and techs) or the operator role"));
        }
        let (id, cert) = self.insert_principal(o, role.name(), true, now).await?;
        Ok(json!({ "principal_id": id, "certificate": format!("{cert}{}", self.ca.sa.cert_pem) }))
    }

    pub(crate) async fn approve_principal(&self, c: &Caller, a: &Args<'_>) -> Result<Value, RpcError> {
        let p = c.principal().ok_or_else(|| RpcError::denied("ApprovePrincipal", "a principal"))?;
        let name = a.str(1, "name")?;
        let r = sqlx::query(&self.db.q("SELECT id, org_id, public_key, approved FROM principals WHERE name = ?"))
            .bind(name.to_owned())
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| RpcError::new(Code::NotFound, format!("name: no principal {name:?}")))?;
        if !(p.roles.contains(&Role::Operator) || (p.has(Role::Admin) && p.org_id == int(&r, "org_id"))) {
            return Err(RpcError::denied("ApprovePrincipal", "admin of the principal's org"));
        }
        if int(&r, "approved") == 1 {
            return Err(RpcError::new(Code::Conflict, format!("name: {name} is approved already")));
        }
        let cert = self.principal_cert(name, &text(&r, "public_key"))?;
        sqlx::query(&self.db.q("UPDATE principals SET approved = 1, cert = ? WHERE id = ?"))
            .bind(cert.clone())
            .bind(int(&r, "id"))
            .execute(self.db.pool())
            .await?;
        Ok(json!({ "principal_id": int(&r, "id"), "certificate": format!("{cert}{}", self.ca.sa.cert_pem) }))
    }

    pub(crate) async fn get_principals(&self, c: &Caller) -> Result<Value, RpcError> {
        let p = c.principal().ok_or_else(|| RpcError::denied("GetPrincipals", "a principal"))?;
        let rows = sqlx::query(
            "SELECT p.id, p.name, p.email, p.roles, p.approved, p.org_id, o.name AS org FROM principals p JOIN orgs o ON o.id = p.org_id ORDER BY p.id",
        )
        .fetch_all(self.db.pool())
        .await?;
        let keys = sqlx::query("SELECT principal_id, key FROM ssh_keys").fetch_all(self.db.pool()).await?;
        let out: Vec<Value> = rows
            .iter()
            .filter(|r| p.roles.contains(&Role::Operator) || (p.has(Role::Admin) && int(r, "org_id") == p.org_id) || int(r, "id") == p.id)
            .map(|r| {
                let id = int(r, "id");
                let ks: Vec<String> = keys.iter().filter(|k| int(k, "principal_id") == id).map(|k| text(k, "key")).collect();
                json!({"principal_id": id, "name": text(r, "name"), "email": text(r, "email"), "org": text(r, "org"),
                       "roles": text(r, "roles").split(',').collect::<Vec<_>>(), "approved": int(r, "approved") == 1, "ssh_keys": ks})
            })
            .collect();
        Ok(Value::Array(out))
    }

    pub(crate) async fn get_principal_cert(&self, a: &Args<'_>) -> Result<Value, RpcError> {
        let name = a.str(1, "name")?;
        let r = sqlx::query(&self.db.q("SELECT cert FROM principals WHERE name = ? AND approved = 1"))
            .bind(name.to_owned())
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| RpcError::new(Code::NotFound, format!("name: no approved principal {name:?}")))?;
        Ok(json!({ "certificate": format!("{}{}", text(&r, "cert"), self.ca.sa.cert_pem), "root": self.ca.root.cert_pem }))
    }

    pub(crate) async fn add_principal_key(&self, c: &Caller, a: &Args<'_>) -> Result<Value, RpcError> {
        let p = c.principal().ok_or_else(|| RpcError::denied("AddPrincipalKey", "a principal"))?;
        let key = SshKey::parse(a.str(1, "ssh_key")?).map_err(|e| RpcError::invalid("ssh_key", e))?;
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(&self.db.q("INSERT INTO ssh_keys (principal_id, key) VALUES (?, ?)"))
            .bind(p.id)
            .bind(key.as_str().to_owned())
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict(e, "ssh_key: you have this key already"))?;
        self.commit_change(tx).await?;
        Ok(json!({}))
    }

    pub(crate) async fn create_slice(&self, c: &Caller, a: &Args<'_>, now: i64) -> Result<Value, RpcError> {
        let p = c.principal().ok_or_else(|| RpcError::denied("CreateSlice", "a principal"))?;
        let name = SliceName::parse(a.str(1, "slice_name")?).map_err(|e| RpcError::invalid("slice_name", e))?;
        // The org whose authority is the longest prefix of the name approves it. A slice
        // never takes an authority's own name: pools given to that name cover its slices.
        let orgs = sqlx::query("SELECT id, authority FROM orgs").fetch_all(self.db.pool()).await?;
        if orgs.iter().any(|r| text(r, "authority") == name.as_str()) {
            return Err(RpcError::invalid("slice_name", format!("{name} is an authority's name, not a slice's")));
        }
        let org = orgs
            .iter()
            .filter_map(|r| SliceName::parse(&text(r, "authority")).ok().map(|auth| (int(r, "id"), auth)))
            .filter(|(_, auth)| auth.covers(&name) && auth != &name)
            .max_by_key(|(_, auth)| auth.as_str().len());
        let Some((org_id, authority)) = org else {
            return Err(RpcError::invalid("slice_name", format!("{name} is under no organisation's authority")));
        };
        if !(p.roles.contains(&Role::Operator) || (p.has(Role::Admin) && p.org_id == org_id)) {
            return Err(RpcError::denied("CreateSlice", &format!("admin of the organisation for {authority}")));
        }
        let rspec = RSpec { class: RSpecClass::Slice(vm_types::SliceRSpec { name: Some(name.clone()), vm_type: VmType::LinuxVserverX86, keys: vec![], bootscript: None }), resources: Resources::spec_default() };
        let r = sqlx::query(&self.db.q(
            "INSERT INTO slices (name, org_id, delegated, started, deleted, rspec, created, expires) VALUES (?, ?, 0, 0, 0, ?, ?, ?) RETURNING id",
        ))
        .bind(name.to_string())
        .bind(org_id)
        .bind(rspec.to_xml())
        .bind(now)
        .bind(now + self.settings.slice_ttl)
        .fetch_one(self.db.pool())
        .await
        .map_err(|e| conflict(e, &format!("slice_name: an active slice {name} exists already")))?;
        Ok(json!({ "slice_id": int(&r, "id"), "expires": now + self.settings.slice_ttl }))
    }

    pub(crate) async fn set_slice_attr(&self, c: &Caller, a: &Args<'_>) -> Result<Value, RpcError> {
        let s = self.slice(a.str(1, "slice_name")?).await?;
        let attr = a.str(2, "attribute")?;
        let value = a.str(3, "value")?;
        let need = attribute_privilege(attr).ok_or_else(|| {
            RpcError::invalid("attribute", format!("{attr:?} is not a slice attribute (cpu_share, disk_quota, mem_limit, base_rate, burst_rate, sustained_rate, vm_type, bootscript)"))
        })?;
        self.require_slice(c, &s, need, "SetSliceAttr").await?;
        let mut rspec = RSpec::from_xml(&s.rspec).map_err(|e| RpcError::new(Code::Internal, e.to_string()))?;
        match attr {
            "bootscript" => {
                if let RSpecClass::Slice(x) = &mut rspec.class {
                    x.bootscript = (!value.is_empty()).then(|| value.to_owned());
                }
            }
            "vm_type" => {
                let t = VmType::parse(value).ok_or_else(|| RpcError::invalid("value", format!("{value:?} is not a VM type")))?;
                if let RSpecClass::Slice(x) = &mut rspec.class {
                    x.vm_type = t;
                }
            }
            _ => {
                let attr_static = Resources::ATTRIBUTES.iter().map(|(n, _)| *n).find(|n| *n == attr).unwrap_or("value");
                let q = Quantity::parse(attr_static, value).map_err(|e| RpcError::invalid("value", e))?;
                rspec.resources.set(attr, q);
            }
        }
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(&self.db.q("UPDATE slices SET rspec = ? WHERE id = ?")).bind(rspec.to_xml()).bind(s.id).execute(&mut *tx).await?;
        self.commit_change(tx).await?;
        Ok(json!({}))
    }

    pub(crate) async fn add_slice_principal(&self, c: &Caller, a: &Args<'_>) -> Result<Value, RpcError> {
        let s = self.slice(a.str(1, "slice_name")?).await?;
        self.require_slice(c, &s, Role::User, "AddSlicePrincipal").await?;
        let names = a.strs(2, "principals")?;
        let mut tx = self.db.pool().begin().await?;
        for n in names {
            let r = sqlx::query(&self.db.q("SELECT id FROM principals WHERE name = ? AND approved = 1"))
                .bind(n.to_owned())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| RpcError::new(Code::NotFound, format!("principals: no approved principal {n:?}")))?;
            let pid = int(&r, "id");
            if !self.is_member(s.id, pid).await? {
                sqlx::query(&self.db.q("INSERT INTO slice_principals (slice_id, principal_id) VALUES (?, ?)"))
                    .bind(s.id)
                    .bind(pid)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        self.commit_change(tx).await?;
        Ok(json!({}))
    }

    pub(crate) async fn add_slice_node(&self, c: &Caller, a: &Args<'_>) -> Result<Value, RpcError> {
        let s = self.slice(a.str(1, "slice_name")?).await?;
        self.require_slice(c, &s, Role::User, "AddSliceNode").await?;
        let ids = a.ints(2, "nodes")?;
        let mut tx = self.db.pool().begin().await?;
        for id in ids {
            sqlx::query(&self.db.q("SELECT id FROM nodes WHERE id = ? AND deleted = 0"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| RpcError::new(Code::NotFound, format!("nodes: no node {id}")))?;
            let exists = sqlx::query(&self.db.q("SELECT 1 AS x FROM slice_nodes WHERE slice_id = ? AND node_id = ?"))
                .bind(s.id)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                sqlx::query(&self.db.q("INSERT INTO slice_nodes (slice_id, node_id) VALUES (?, ?)")).bind(s.id).bind(id).execute(&mut *tx).await?;
            }
        }
        self.commit_change(tx).await?;
        Ok(json!({}))
    }

    pub(crate) async fn set_slice_flags(
        &self,
        c: &Caller,
        a: &Args<'_>,
        method: &str,
        started: Option<i64>,
        delegated: Option<i64>,
        deleted: Option<i64>,
    ) -> Result<Value, RpcError> {
        let s = self.slice(a.str(1, "slice_name")?).await?;
        self.require_slice(c, &s, Role::User, method).await?;
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(&self.db.q(
            "UPDATE slices SET started = COALESCE(?, started), delegated = COALESCE(?, delegated), deleted = COALESCE(?, deleted) WHERE id = ?",
        ))
        .bind(started)
        .bind(delegated)
        .bind(deleted)
        .bind(s.id)
        .execute(&mut *tx)
        .await?;
        self.commit_change(tx).await?;
        let s2 = SliceRow {
            started: started.map_or(s.started, |v| v != 0),
            delegated: delegated.map_or(s.delegated, |v| v != 0),
            deleted: deleted.map_or(s.deleted, |v| v != 0),
            ..s
        };
        Ok(json!({ "slice_name": s2.name, "state": slice_state(&s2) }))
    }

    pub(crate) async fn renew_slice(&self, c: &Caller, a: &Args<'_>, now: i64) -> Result<Value, RpcError> {
        let s = self.slice(a.str(1, "slice_name")?).await?;
        self.require_slice(c, &s, Role::User, "RenewSlice").await?;
        let expires = a.int(2, "expires")?;
        if expires <= now {
            return Err(RpcError::invalid("expires", "must be in the future"));
        }
        if expires > now + self.settings.slice_max_ttl {
            return Err(RpcError::invalid("expires", format!("at most {} days ahead", self.settings.slice_max_ttl / 86400)));
        }
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(&self.db.q("UPDATE slices SET expires = ? WHERE id = ?")).bind(expires).bind(s.id).execute(&mut *tx).await?;
        self.commit_change(tx).await?;
        Ok(json!({ "expires": expires }))
    }

    /// The slice's RSpec as nodes get it: with its principals' ssh keys.
    async fn rspec_with_keys(&self, s: &SliceRow) -> Result<String, RpcError> {
        let mut rspec = RSpec::from_xml(&s.rspec).map_err(|e| RpcError::new(Code::Internal, e.to_string()))?;
        let keys = sqlx::query(&self.db.q(
            "SELECT k.key FROM ssh_keys k JOIN slice_principals sp ON sp.principal_id = k.principal_id WHERE sp.slice_id = ? ORDER BY k.key",
        ))
        .bind(s.id)
        .fetch_all(self.db.pool())
        .await?;
        if let RSpecClass::Slice(x) = &mut rspec.class {
            x.keys = keys.iter().filter_map(|r| SshKey::parse(&text(r, "key")).ok()).collect();
        }
        Ok(rspec.to_xml())
    }

    async fn slice_json(&self, s: &SliceRow) -> Result<Value, RpcError> {
        let ps = sqlx::query(&self.db.q("SELECT p.name FROM principals p JOIN slice_principals sp ON sp.principal_id = p.id WHERE sp.slice_id = ? ORDER BY p.name"))
            .bind(s.id)
            .fetch_all(self.db.pool())
            .await?;
        let ns = sqlx::query(&self.db.q("SELECT node_id FROM slice_nodes WHERE slice_id = ? ORDER BY node_id")).bind(s.id).fetch_all(self.db.pool()).await?;
        Ok(json!({
            "slice_id": s.id, "name": s.name, "state": slice_state(s), "expires": s.expires,
            "principals": ps.iter().map(|r| text(r, "name")).collect::<Vec<_>>(),
            "nodes": ns.iter().map(|r| int(r, "node_id")).collect::<Vec<_>>(),
            "rspec": self.rspec_with_keys(s).await?,
        }))
    }

    pub(crate) async fn get_slices(&self, c: &Caller) -> Result<Value, RpcError> {
        let p = c.principal().ok_or_else(|| RpcError::denied("GetSlices", "a principal"))?;
        let rows = sqlx::query("SELECT name FROM slices WHERE deleted = 0 ORDER BY id").fetch_all(self.db.pool()).await?;
        let mut out = Vec::new();
        for r in rows {
            let s = self.slice(&text(&r, "name")).await?;
            let visible = p.roles.contains(&Role::Operator) || (p.has(Role::Admin) && p.org_id == s.org_id) || self.is_member(s.id, p.id).await?;
            if visible {
                out.push(self.slice_json(&s).await?);
            }
        }
        Ok(Value::Array(out))
    }

    pub(crate) async fn get_slice_ticket(&self, c: &Caller, a: &Args<'_>, now: i64) -> Result<Value, RpcError> {
        let s = self.slice(a.str(1, "slice_name")?).await?;
        self.require_slice(c, &s, Role::User, "GetSliceTicket").await?;
        if s.expires <= now {
            return Err(RpcError::new(Code::Conflict, format!("slice_name: {} has expired; renew it first", s.name)));
        }
        let nodes = sqlx::query(&self.db.q("SELECT node_id FROM slice_nodes WHERE slice_id = ? ORDER BY node_id")).bind(s.id).fetch_all(self.db.pool()).await?;
        let ttl = self.settings.ticket_ttl.min(s.expires - now);
        let body = TicketBody::new(&self.ca.name, &s.name, self.rspec_with_keys(&s).await?, nodes.iter().map(|r| int(r, "node_id")).collect(), ttl);
        let signed = body.sign(&self.ca.sa.key_pem, &self.ca.sa.cert_pem).map_err(|e| RpcError::new(Code::Internal, e.to_string()))?;
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(&self.db.q("UPDATE slices SET delegated = 1 WHERE id = ?")).bind(s.id).execute(&mut *tx).await?;
        self.commit_change(tx).await?;
        serde_json::to_value(signed).map_err(|e| RpcError::new(Code::Internal, e.to_string()))
    }

    pub(crate) async fn get_slices_for_node(&self, c: &Caller, a: &Args<'_>, now: i64) -> Result<Value, RpcError> {
        let node = a.int(1, "node_id")?;
        let allowed = match c {
            Caller::Service { node: n, .. } | Caller::Node(n) => *n == node,
            Caller::Principal(p) => p.roles.contains(&Role::Operator),
            Caller::Anonymous => false,
        };
        if !allowed {
            return Err(RpcError::denied("GetSlicesForNode", &format!("a service or certificate of node {node}")));
        }
        let since = match a.get(2) {
            Value::Null => 0,
            _ => a.int(2, "since")?,
        };
        // Read the generation before the query: a change racing with it bumps the number
        // past what we return, so the node asks again next time.
        let gen = self.generation();
        if since == gen {
            return Ok(json!({ "generation": gen, "unchanged": true }));
        }
        let rows = sqlx::query(&self.db.q(
            "SELECT s.name FROM slices s JOIN slice_nodes sn ON sn.slice_id = s.id WHERE sn.node_id = ? AND s.deleted = 0 AND s.started = 1 AND s.delegated = 0 AND s.expires > ? ORDER BY s.name",
        ))
        .bind(node)
        .bind(now)
        .fetch_all(self.db.pool())
        .await?;
        let mut slices = Vec::new();
        for r in rows {
            let s = self.slice(&text(&r, "name")).await?;
            slices.push(json!({ "name": s.name, "expires": s.expires, "rspec": self.rspec_with_keys(&s).await? }));
        }
        Ok(json!({ "generation": gen, "unchanged": false, "slices": slices }))
    }
}

/// Maps a unique violation to a Conflict with `msg`.
pub(crate) fn conflict(e: sqlx::Error, msg: &str) -> RpcError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => RpcError::new(Code::Conflict, msg),
        _ => RpcError::from(e),
    }
}
