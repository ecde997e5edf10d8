//! The slice authority (section 4.7): organisations, principals, slices, tickets, and
//! the call nodes' slice creation services poll.

use crate::api::Authority;
use crate::auth::{Caller, Role};
use crate::error::{conflict_on_unique, AuthError};
use crate::types::*;
use credentials::identity::Identity;
use credentials::pki::{issue, verify_chain, Cert, Profile};
use credentials::ticket::{SignedTicket, TicketBody};
use jsonrpc::Empty;
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
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct SliceRow {
    pub id: i64,
    pub name: String,
    pub org_id: i64,
    pub delegated: i64,
    pub started: i64,
    pub deleted: i64,
    pub rspec: String,
    pub expires: i64,
}

impl SliceRow {
    fn state(&self) -> SliceState {
        SliceState {
            mode: if self.delegated != 0 { "delegated" } else { "central" }.into(),
            run: if self.started != 0 { "start" } else { "stop" }.into(),
            life: if self.deleted != 0 { "deleted" } else { "active" }.into(),
        }
    }
}

const SLICE_COLUMNS: &str = "id, name, org_id, delegated, started, deleted, rspec, expires";

/// Checks a principal or site name: 1 to 64 of a-z, 0-9, '-', '_', '.'.
pub fn check_name(field: &str, s: &str) -> Result<(), AuthError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AuthError::invalid(
            field,
            format!("{s:?} must be 1 to 64 characters of a-z, 0-9, '-', '_', '.', starting with a letter"),
        ))
    }
}

/// The longest a free-text parameter may be.
pub const MAX_TEXT: usize = 256 * 1024;

fn check_len(field: &str, s: &str) -> Result<(), AuthError> {
    if s.len() > MAX_TEXT {
        return Err(AuthError::invalid(field, "too long"));
    }
    Ok(())
}

impl Authority {
    pub(crate) async fn slice(&self, name: &str) -> Result<SliceRow, AuthError> {
        SliceName::parse(name).map_err(|e| AuthError::invalid("slice_name", e))?;
        sqlx::query_as(&self.db.q(&format!("SELECT {SLICE_COLUMNS} FROM slices WHERE name = ? AND deleted = 0")))
            .bind(name.to_owned())
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| AuthError::not_found(format!("slice_name: no active slice {name}")))
    }

    async fn is_member(&self, slice_id: i64, principal_id: i64) -> Result<bool, AuthError> {
        let r: Option<(i64,)> =
            sqlx::query_as(&self.db.q("SELECT 1 AS x FROM slice_principals WHERE slice_id = ? AND principal_id = ?"))
                .bind(slice_id)
                .bind(principal_id)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(r.is_some())
    }

    /// Checks that the caller holds `need` for the slice: `User` = member (or better),
    /// `Admin` = admin of the slice's org (or operator), `Operator` = operator.
    pub(crate) async fn require_slice(
        &self,
        c: &Caller,
        s: &SliceRow,
        need: Role,
        method: &str,
    ) -> Result<(), AuthError> {
        let p = c.principal().ok_or_else(|| AuthError::denied(method, "a principal"))?;
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
            Err(AuthError::denied(method, &format!("{} of slice {}", need.name(), s.name)))
        }
    }

    async fn org_by_name(&self, name: &str) -> Result<(i64, String), AuthError> {
        sqlx::query_as(&self.db.q("SELECT id, authority FROM orgs WHERE name = ?"))
            .bind(name.to_owned())
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| AuthError::not_found(format!("org: no organisation {name:?}")))
    }

    pub(crate) async fn authenticate_certificate(
        &self,
        p: AuthenticateParams,
        now: i64,
    ) -> Result<SessionResult, AuthError> {
        check_len("certificate", &p.certificate)?;
        let chain = Cert::bundle_from_pem(&p.certificate).map_err(|e| AuthError::invalid("certificate", e))?;
        let id = verify_chain(&chain, &self.roots, now)
            .map_err(|e| AuthError::unauthenticated(format!("certificate: {e}")))?;
        if let Identity::Principal(name) = &id {
            let r: Option<(Option<String>, i64)> =
                sqlx::query_as(&self.db.q("SELECT cert, approved FROM principals WHERE name = ?"))
                    .bind(name.clone())
                    .fetch_optional(self.db.pool())
                    .await?;
            let current = r.filter(|(_, approved)| *approved == 1).and_then(|(c, _)| c);
            let current_der = current.and_then(|c| Cert::from_pem(&c).ok()).map(|c| c.der);
            if current_der.as_deref() != Some(chain[0].der.as_slice()) {
                return Err(AuthError::unauthenticated(format!("certificate: not the current certificate of {name}")));
            }
        }
        if let Identity::Service { node, .. } = &id {
            let node_cert = chain.get(1).map(|c| c.der.as_slice()).unwrap_or_default();
            crate::auth::check_service_node(&self.db, *node, Some(node_cert)).await?;
        }
        let key = hex::encode(credentials::random_bytes::<32>());
        let sealed = credentials::seal::seal(&chain[0].spki, key.as_bytes())
            .map_err(|e| AuthError::invalid("certificate", e))?;
        let expires = (now + self.settings.session_ttl).min(chain[0].not_after);
        self.sessions.create(&self.db, &key, &id, expires).await?;
        Ok(SessionResult { session: sealed, expires, identity: id.to_string() })
    }

    pub(crate) async fn add_org(&self, c: &Caller, p: AddOrgParams) -> Result<OrgIdResult, AuthError> {
        if !c.is_operator() {
            return Err(AuthError::denied("AddOrg", "the operator role"));
        }
        let o = p.org;
        check_name("org.name", &o.name)?;
        let root = SliceName::parse(&self.ca.name).map_err(AuthError::internal)?;
        if !root.covers(&o.authority) {
            return Err(AuthError::invalid(
                "org.authority",
                format!("{} is outside this authority's names ({root})", o.authority),
            ));
        }
        let address = o.address.unwrap_or_default();
        check_len("org.address", &address)?;
        let (org_id,): (i64,) = sqlx::query_as(
            &self.db.q("INSERT INTO orgs (name, authority, address, created) VALUES (?, ?, ?, ?) RETURNING id"),
        )
        .bind(o.name.clone())
        .bind(o.authority.to_string())
        .bind(address)
        .bind(credentials::now())
        .fetch_one(self.db.pool())
        .await
        .map_err(conflict_on_unique(&format!("org: {} or authority {} exists already", o.name, o.authority)))?;
        Ok(OrgIdResult { org_id })
    }

    pub(crate) async fn get_orgs(&self, c: &Caller) -> Result<Vec<OrgInfo>, AuthError> {
        c.principal().ok_or_else(|| AuthError::denied("GetOrgs", "a principal"))?;
        let rows: Vec<(i64, String, String, String)> =
            sqlx::query_as("SELECT id, name, authority, address FROM orgs ORDER BY id")
                .fetch_all(self.db.pool())
                .await?;
        Ok(rows
            .into_iter()
            .map(|(org_id, name, authority, address)| OrgInfo { org_id, name, authority, address })
            .collect())
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_principal(
        &self,
        name: &str,
        email: &str,
        org: &str,
        public_key: &str,
        roles: &str,
        approved: bool,
        now: i64,
    ) -> Result<(i64, String), AuthError> {
        check_name("principal.name", name)?;
        if !email.contains('@') || email.len() > 254 || email.contains(char::is_whitespace) {
            return Err(AuthError::invalid("principal.email", format!("{email:?} is not an email address")));
        }
        check_len("principal.public_key", public_key)?;
        let (org_id, _) = self.org_by_name(org).await?;
        // Checked now even when not yet approved, so approval cannot fail on the key later.
        let cert = self.principal_cert(name, public_key)?;
        let cert = approved.then_some(cert);
        let (id,): (i64,) = sqlx::query_as(&self.db.q(
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
        .map_err(conflict_on_unique(&format!("principal.name: {name} exists already")))?;
        Ok((id, cert.unwrap_or_default()))
    }

    fn principal_cert(&self, name: &str, public_key: &str) -> Result<String, AuthError> {
        issue(
            &self.ca.sa.cert_pem,
            &self.ca.sa.key,
            &Identity::Principal(name.into()),
            public_key,
            Profile::Client,
            365,
        )
        .map_err(|e| AuthError::invalid("principal.public_key", e))
    }

    pub(crate) async fn register_principal(&self, p: RegisterParams, now: i64) -> Result<RegisteredResult, AuthError> {
        let r = p.principal;
        let (id, _) = self.insert_principal(&r.name, &r.email, &r.org, &r.public_key, "user", false, now).await?;
        Ok(RegisteredResult { principal_id: id, approved: false })
    }

    pub(crate) async fn add_principal(
        &self,
        c: &Caller,
        p: AddPrincipalParams,
        now: i64,
    ) -> Result<PrincipalCertResult, AuthError> {
        let me = c.principal().ok_or_else(|| AuthError::denied("AddPrincipal", "a principal"))?;
        let n = p.principal;
        let (org_id, _) = self.org_by_name(&n.org).await?;
        let ok = me.roles.contains(&Role::Operator)
            || (me.has(Role::Admin) && me.org_id == org_id && matches!(n.role, Role::User | Role::Tech));
        if !ok {
            return Err(AuthError::denied(
                "AddPrincipal",
                "admin of the org (for users and techs) or the operator role",
            ));
        }
        let (id, cert) =
            self.insert_principal(&n.name, &n.email, &n.org, &n.public_key, n.role.name(), true, now).await?;
        Ok(PrincipalCertResult { principal_id: id, certificate: format!("{cert}{}", self.ca.sa.cert_pem) })
    }

    pub(crate) async fn approve_principal(&self, c: &Caller, p: NameParams) -> Result<PrincipalCertResult, AuthError> {
        let me = c.principal().ok_or_else(|| AuthError::denied("ApprovePrincipal", "a principal"))?;
        let (id, org_id, public_key, approved): (i64, i64, String, i64) =
            sqlx::query_as(&self.db.q("SELECT id, org_id, public_key, approved FROM principals WHERE name = ?"))
                .bind(p.name.clone())
                .fetch_optional(self.db.pool())
                .await?
                .ok_or_else(|| AuthError::not_found(format!("name: no principal {:?}", p.name)))?;
        if !(me.roles.contains(&Role::Operator) || (me.has(Role::Admin) && me.org_id == org_id)) {
            return Err(AuthError::denied("ApprovePrincipal", "admin of the principal's org"));
        }
        if approved == 1 {
            return Err(AuthError::conflict(format!("name: {} is approved already", p.name)));
        }
        let cert = self.principal_cert(&p.name, &public_key)?;
        sqlx::query(&self.db.q("UPDATE principals SET approved = 1, cert = ? WHERE id = ?"))
            .bind(cert.clone())
            .bind(id)
            .execute(self.db.pool())
            .await?;
        Ok(PrincipalCertResult { principal_id: id, certificate: format!("{cert}{}", self.ca.sa.cert_pem) })
    }

    pub(crate) async fn get_principals(&self, c: &Caller) -> Result<Vec<PrincipalInfo>, AuthError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: i64,
            name: String,
            email: String,
            roles: String,
            approved: i64,
            org_id: i64,
            org: String,
        }
        let p = c.principal().ok_or_else(|| AuthError::denied("GetPrincipals", "a principal"))?;
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT p.id, p.name, p.email, p.roles, p.approved, p.org_id, o.name AS org FROM principals p JOIN orgs o ON o.id = p.org_id ORDER BY p.id",
        )
        .fetch_all(self.db.pool())
        .await?;
        let keys: Vec<(i64, String)> =
            sqlx::query_as("SELECT principal_id, key FROM ssh_keys").fetch_all(self.db.pool()).await?;
        Ok(rows
            .into_iter()
            .filter(|r| {
                p.roles.contains(&Role::Operator) || (p.has(Role::Admin) && r.org_id == p.org_id) || r.id == p.id
            })
            .map(|r| PrincipalInfo {
                principal_id: r.id,
                ssh_keys: keys.iter().filter(|k| k.0 == r.id).map(|k| k.1.clone()).collect(),
                roles: r.roles.split(',').filter_map(Role::parse).collect(),
                name: r.name,
                email: r.email,
                org: r.org,
                approved: r.approved == 1,
            })
            .collect())
    }

    pub(crate) async fn get_principal_cert(&self, p: NameParams) -> Result<CertResult, AuthError> {
        let (cert,): (String,) =
            sqlx::query_as(&self.db.q("SELECT cert FROM principals WHERE name = ? AND approved = 1"))
                .bind(p.name.clone())
                .fetch_optional(self.db.pool())
                .await?
                .ok_or_else(|| AuthError::not_found(format!("name: no approved principal {:?}", p.name)))?;
        Ok(CertResult { certificate: format!("{cert}{}", self.ca.sa.cert_pem), root: self.ca.root.cert_pem.clone() })
    }

    pub(crate) async fn rekey_principal(
        &self,
        c: &Caller,
        p: PublicKeyParams,
    ) -> Result<PrincipalCertResult, AuthError> {
        let me = c.principal().ok_or_else(|| AuthError::denied("RekeyPrincipal", "a principal"))?;
        check_len("public_key", &p.public_key)?;
        let cert = issue(
            &self.ca.sa.cert_pem,
            &self.ca.sa.key,
            &Identity::Principal(me.name.clone()),
            &p.public_key,
            Profile::Client,
            365,
        )
        .map_err(|e| AuthError::invalid("public_key", e))?;
        sqlx::query(&self.db.q("UPDATE principals SET public_key = ?, cert = ? WHERE id = ?"))
            .bind(p.public_key)
            .bind(cert.clone())
            .bind(me.id)
            .execute(self.db.pool())
            .await?;
        // Sessions made with the old certificate die with it.
        self.sessions.forget_identity(&self.db, &Identity::Principal(me.name.clone())).await?;
        Ok(PrincipalCertResult { principal_id: me.id, certificate: format!("{cert}{}", self.ca.sa.cert_pem) })
    }

    pub(crate) async fn add_principal_key(&self, c: &Caller, p: SshKeyParams) -> Result<Empty, AuthError> {
        let me = c.principal().ok_or_else(|| AuthError::denied("AddPrincipalKey", "a principal"))?;
        check_len("ssh_key", &p.ssh_key)?;
        let key = SshKey::parse(&p.ssh_key).map_err(|e| AuthError::invalid("ssh_key", e))?;
        let mut tx = self.db.begin().await?;
        sqlx::query(&self.db.q("INSERT INTO ssh_keys (principal_id, key) VALUES (?, ?)"))
            .bind(me.id)
            .bind(key.as_str().to_owned())
            .execute(&mut *tx)
            .await
            .map_err(conflict_on_unique("ssh_key: you have this key already"))?;
        self.commit_change(tx).await?;
        Ok(Empty {})
    }

    pub(crate) async fn create_slice(&self, c: &Caller, p: SliceParams, now: i64) -> Result<SliceCreated, AuthError> {
        let me = c.principal().ok_or_else(|| AuthError::denied("CreateSlice", "a principal"))?;
        let name = SliceName::parse(&p.slice_name).map_err(|e| AuthError::invalid("slice_name", e))?;
        // The org whose authority is the longest prefix of the name approves it. A slice
        // never takes an authority's own name: pools given to that name cover its slices.
        let orgs: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, authority FROM orgs").fetch_all(self.db.pool()).await?;
        if orgs.iter().any(|(_, a)| a == name.as_str()) {
            return Err(AuthError::invalid("slice_name", format!("{name} is an authority's name, not a slice's")));
        }
        // A node's pools and services go by names: a slice whose name extends another's (or
        // an authority's below it, or a node service's) would be taken for it.
        if let Some((_, a)) = orgs.iter().find(|(_, a)| SliceName::parse(a).is_ok_and(|a| name.is_above(&a))) {
            return Err(AuthError::invalid("slice_name", format!("{name} is above the authority {a}")));
        }
        if self.is_node_service(name.as_str()) || self.is_audit_service(name.as_str()) {
            return Err(AuthError::invalid("slice_name", format!("{name} is the name of the nodes' service")));
        }
        let live: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM slices WHERE deleted = 0").fetch_all(self.db.pool()).await?;
        let nested = live
            .iter()
            .filter_map(|(n,)| SliceName::parse(n).ok())
            .find(|other| (name.is_above(other) || other.is_above(&name)) && other != &name);
        if let Some(other) = nested {
            return Err(AuthError::conflict(format!(
                "slice_name: {name} extends, or is extended by, the live slice {other}; slice names do not nest"
            )));
        }
        let org = orgs
            .iter()
            .filter_map(|(id, a)| SliceName::parse(a).ok().map(|auth| (*id, auth)))
            .filter(|(_, auth)| auth.covers(&name) && auth != &name)
            .max_by_key(|(_, auth)| auth.as_str().len());
        let Some((org_id, authority)) = org else {
            return Err(AuthError::invalid("slice_name", format!("{name} is under no organisation's authority")));
        };
        if !(me.roles.contains(&Role::Operator) || (me.has(Role::Admin) && me.org_id == org_id)) {
            return Err(AuthError::denied("CreateSlice", &format!("admin of the organisation for {authority}")));
        }
        let rspec = RSpec {
            class: RSpecClass::Slice(vm_types::SliceRSpec {
                name: Some(name.clone()),
                vm_type: VmType::LinuxVserverX86,
                keys: vec![],
                bootscript: None,
            }),
            resources: Resources::spec_default(),
        };
        let expires = now + self.settings.slice_ttl;
        let (slice_id,): (i64,) = sqlx::query_as(&self.db.q(
            "INSERT INTO slices (name, org_id, delegated, started, deleted, rspec, created, expires) VALUES (?, ?, 0, 0, 0, ?, ?, ?) RETURNING id",
        ))
        .bind(name.to_string())
        .bind(org_id)
        .bind(rspec.to_xml())
        .bind(now)
        .bind(expires)
        .fetch_one(self.db.pool())
        .await
        .map_err(conflict_on_unique(&format!("slice_name: an active slice {name} exists already")))?;
        Ok(SliceCreated { slice_id, expires })
    }

    pub(crate) async fn set_slice_attr(&self, c: &Caller, p: SetSliceAttrParams) -> Result<Empty, AuthError> {
        let s = self.slice(&p.slice_name).await?;
        let attr = p.attribute.as_str();
        let value = p.value.text();
        check_len("value", &value)?;
        let need = attribute_privilege(attr).ok_or_else(|| {
            AuthError::invalid(
                "attribute",
                format!("{attr:?} is not a slice attribute (cpu_share, disk_quota, mem_limit, base_rate, burst_rate, sustained_rate, vm_type, bootscript)"),
            )
        })?;
        self.require_slice(c, &s, need, "SetSliceAttr").await?;
        let mut rspec = RSpec::from_xml(&s.rspec).map_err(AuthError::internal)?;
        match attr {
            "bootscript" => {
                if let RSpecClass::Slice(x) = &mut rspec.class {
                    x.bootscript = (!value.is_empty()).then_some(value);
                }
            }
            "vm_type" => {
                let t = VmType::parse(&value)
                    .ok_or_else(|| AuthError::invalid("value", format!("{value:?} is not a VM type")))?;
                if let RSpecClass::Slice(x) = &mut rspec.class {
                    x.vm_type = t;
                }
            }
            _ => {
                let attr_static = Resources::ATTRIBUTES.iter().map(|(n, _)| *n).find(|n| *n == attr).unwrap_or("value");
                let q = Quantity::parse(attr_static, &value).map_err(|e| AuthError::invalid("value", e))?;
                rspec.resources.set(attr, q);
            }
        }
        let mut tx = self.db.begin().await?;
        sqlx::query(&self.db.q("UPDATE slices SET rspec = ? WHERE id = ?"))
            .bind(rspec.to_xml())
            .bind(s.id)
            .execute(&mut *tx)
            .await?;
        self.commit_change(tx).await?;
        Ok(Empty {})
    }

    pub(crate) async fn add_slice_principal(&self, c: &Caller, p: SlicePrincipalsParams) -> Result<Empty, AuthError> {
        let s = self.slice(&p.slice_name).await?;
        self.require_slice(c, &s, Role::User, "AddSlicePrincipal").await?;
        let mut tx = self.db.begin().await?;
        for n in p.principals {
            let (pid,): (i64,) =
                sqlx::query_as(&self.db.q("SELECT id FROM principals WHERE name = ? AND approved = 1"))
                    .bind(n.clone())
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| AuthError::not_found(format!("principals: no approved principal {n:?}")))?;
            if !self.is_member(s.id, pid).await? {
                sqlx::query(&self.db.q("INSERT INTO slice_principals (slice_id, principal_id) VALUES (?, ?)"))
                    .bind(s.id)
                    .bind(pid)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        self.commit_change(tx).await?;
        Ok(Empty {})
    }

    pub(crate) async fn add_slice_node(&self, c: &Caller, p: SliceNodesParams) -> Result<Empty, AuthError> {
        let s = self.slice(&p.slice_name).await?;
        self.require_slice(c, &s, Role::User, "AddSliceNode").await?;
        let mut tx = self.db.begin().await?;
        for id in p.nodes {
            let found: Option<(i64,)> = sqlx::query_as(&self.db.q("SELECT id FROM nodes WHERE id = ? AND deleted = 0"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            found.ok_or_else(|| AuthError::not_found(format!("nodes: no node {id}")))?;
            let exists: Option<(i64,)> =
                sqlx::query_as(&self.db.q("SELECT 1 AS x FROM slice_nodes WHERE slice_id = ? AND node_id = ?"))
                    .bind(s.id)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_none() {
                sqlx::query(&self.db.q("INSERT INTO slice_nodes (slice_id, node_id) VALUES (?, ?)"))
                    .bind(s.id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        self.commit_change(tx).await?;
        Ok(Empty {})
    }

    pub(crate) async fn set_slice_flags(
        &self,
        c: &Caller,
        p: SliceParams,
        method: &str,
        started: Option<i64>,
        delegated: Option<i64>,
        deleted: Option<i64>,
    ) -> Result<SliceStateResult, AuthError> {
        let s = self.slice(&p.slice_name).await?;
        self.require_slice(c, &s, Role::User, method).await?;
        let mut tx = self.db.begin().await?;
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
            started: started.unwrap_or(s.started),
            delegated: delegated.unwrap_or(s.delegated),
            deleted: deleted.unwrap_or(s.deleted),
            ..s
        };
        Ok(SliceStateResult { state: s2.state(), slice_name: s2.name })
    }

    pub(crate) async fn renew_slice(&self, c: &Caller, p: RenewParams, now: i64) -> Result<ExpiresResult, AuthError> {
        let s = self.slice(&p.slice_name).await?;
        self.require_slice(c, &s, Role::User, "RenewSlice").await?;
        if p.expires <= now {
            return Err(AuthError::invalid("expires", "must be in the future"));
        }
        if p.expires > now + self.settings.slice_max_ttl {
            return Err(AuthError::invalid(
                "expires",
                format!("at most {} days ahead", self.settings.slice_max_ttl / 86400),
            ));
        }
        let mut tx = self.db.begin().await?;
        sqlx::query(&self.db.q("UPDATE slices SET expires = ?, expiry_published = 0 WHERE id = ?"))
            .bind(p.expires)
            .bind(s.id)
            .execute(&mut *tx)
            .await?;
        self.commit_change(tx).await?;
        Ok(ExpiresResult { expires: p.expires })
    }

    /// The slice's RSpec as nodes get it: with its principals' ssh keys.
    async fn rspec_with_keys(&self, s: &SliceRow) -> Result<String, AuthError> {
        let mut rspec = RSpec::from_xml(&s.rspec).map_err(AuthError::internal)?;
        let keys: Vec<(String,)> = sqlx::query_as(&self.db.q(
            "SELECT k.key FROM ssh_keys k JOIN slice_principals sp ON sp.principal_id = k.principal_id WHERE sp.slice_id = ? ORDER BY k.key",
        ))
        .bind(s.id)
        .fetch_all(self.db.pool())
        .await?;
        if let RSpecClass::Slice(x) = &mut rspec.class {
            x.keys = keys.iter().filter_map(|(k,)| SshKey::parse(k).ok()).collect();
        }
        Ok(rspec.to_xml())
    }

    async fn slice_info(&self, s: &SliceRow) -> Result<SliceInfo, AuthError> {
        let ps: Vec<(String,)> = sqlx::query_as(&self.db.q(
            "SELECT p.name FROM principals p JOIN slice_principals sp ON sp.principal_id = p.id WHERE sp.slice_id = ? ORDER BY p.name",
        ))
        .bind(s.id)
        .fetch_all(self.db.pool())
        .await?;
        let ns: Vec<(i64,)> =
            sqlx::query_as(&self.db.q("SELECT node_id FROM slice_nodes WHERE slice_id = ? ORDER BY node_id"))
                .bind(s.id)
                .fetch_all(self.db.pool())
                .await?;
        Ok(SliceInfo {
            slice_id: s.id,
            name: s.name.clone(),
            state: s.state(),
            expires: s.expires,
            principals: ps.into_iter().map(|(n,)| n).collect(),
            nodes: ns.into_iter().map(|(n,)| n).collect(),
            rspec: self.rspec_with_keys(s).await?,
        })
    }

    pub(crate) async fn get_slices(&self, c: &Caller) -> Result<Vec<SliceInfo>, AuthError> {
        let p = c.principal().ok_or_else(|| AuthError::denied("GetSlices", "a principal"))?;
        let rows: Vec<SliceRow> =
            sqlx::query_as(&format!("SELECT {SLICE_COLUMNS} FROM slices WHERE deleted = 0 ORDER BY id"))
                .fetch_all(self.db.pool())
                .await?;
        let mut out = Vec::new();
        for s in rows {
            let visible = p.roles.contains(&Role::Operator)
                || (p.has(Role::Admin) && p.org_id == s.org_id)
                || self.is_member(s.id, p.id).await?;
            if visible {
                out.push(self.slice_info(&s).await?);
            }
        }
        Ok(out)
    }

    pub(crate) async fn get_slice_ticket(
        &self,
        c: &Caller,
        p: SliceParams,
        now: i64,
    ) -> Result<SignedTicket, AuthError> {
        let s = self.slice(&p.slice_name).await?;
        self.require_slice(c, &s, Role::User, "GetSliceTicket").await?;
        if s.expires <= now {
            return Err(AuthError::conflict(format!("slice_name: {} has expired; renew it first", s.name)));
        }
        let nodes: Vec<(i64,)> =
            sqlx::query_as(&self.db.q("SELECT node_id FROM slice_nodes WHERE slice_id = ? ORDER BY node_id"))
                .bind(s.id)
                .fetch_all(self.db.pool())
                .await?;
        let ttl = self.settings.ticket_ttl.min(s.expires - now);
        let mut body = TicketBody::new(
            &self.ca.name,
            &s.name,
            self.rspec_with_keys(&s).await?,
            nodes.into_iter().map(|(n,)| n).collect(),
            ttl,
        );
        body.slice_expires = Some(s.expires);
        let signed = body.sign(&self.ca.sa.key_pem, &self.ca.sa.cert_pem).map_err(AuthError::internal)?;
        let mut tx = self.db.begin().await?;
        sqlx::query(&self.db.q("UPDATE slices SET delegated = 1 WHERE id = ?")).bind(s.id).execute(&mut *tx).await?;
        self.commit_change(tx).await?;
        Ok(signed)
    }

    /// Moves the generation when slices have expired, so that nodes polling with an
    /// unchanged generation learn that an expired slice must go. Each expiry moves it once:
    /// the slice is marked in the same transaction, so several servers on one database
    /// can sweep side by side. Returns how many slices it published.
    pub async fn sweep_expired(&self, now: i64) -> Result<u64, AuthError> {
        let mut tx = self.db.begin().await?;
        let n =
            sqlx::query(&self.db.q(
                "UPDATE slices SET expiry_published = 1 WHERE deleted = 0 AND expiry_published = 0 AND expires <= ?",
            ))
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n > 0 {
            self.commit_change(tx).await?;
        } else {
            tx.commit().await?;
        }
        Ok(n)
    }

    /// Removes registrations that waited for approval longer than `registration_ttl`
    /// (and that nothing refers to: no slice, no site). Returns how many went.
    pub async fn sweep_registrations(&self, now: i64) -> Result<u64, AuthError> {
        let stale = "SELECT id FROM principals WHERE approved = 0 AND created <= ? \
             AND id NOT IN (SELECT principal_id FROM slice_principals) \
             AND id NOT IN (SELECT tech_id FROM sites WHERE tech_id IS NOT NULL)";
        let before = now - self.settings.registration_ttl;
        let mut tx = self.db.begin().await?;
        sqlx::query(&self.db.q(&format!("DELETE FROM ssh_keys WHERE principal_id IN ({stale})")))
            .bind(before)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query(&self.db.q(&format!("DELETE FROM principals WHERE id IN ({stale})")))
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Sweeps expired slices every `every`, for the life of the server, and reads the
    /// generation other servers on the database may have moved (on PostgreSQL LISTEN
    /// brings it sooner; this is the fallback, and all there is on SQLite).
    pub async fn sweep_expiry_forever(self: std::sync::Arc<Self>, every: std::time::Duration) {
        loop {
            if let Err(e) = self.sweep_expired(credentials::now()).await {
                tracing::warn!("expiry sweep: {e}");
            }
            if let Err(e) = self.sessions.purge_expired(&self.db, credentials::now()).await {
                tracing::warn!("purging expired sessions: {e}");
            }
            // Addresses whose registration allowance is full again are forgotten.
            self.registrations.retain_recent();
            self.flow_queries.retain_recent();
            match self.sweep_registrations(credentials::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("removed {n} registrations that waited too long for approval"),
                Err(e) => tracing::warn!("sweeping old registrations: {e}"),
            }
            if let Err(e) = self.sweep_flows(credentials::now()).await {
                tracing::warn!("sweeping old archived flows: {e}");
            }
            if let Err(e) = self.refresh_generation().await {
                tracing::warn!("reading the generation: {e}");
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Is `slice` one of the services this authority lets act for a node?
    fn is_node_service(&self, slice: &str) -> bool {
        if self.settings.node_services.is_empty() {
            slice == format!("{}.scs", self.ca.name)
        } else {
            self.settings.node_services.iter().any(|s| s == slice)
        }
    }

    /// Checks that the caller may act for node `node`'s slivers: a designated service
    /// certified by that node's NM, or an operator.
    fn require_node_service(&self, c: &Caller, node: i64, method: &str) -> Result<(), AuthError> {
        let ok = match c {
            Caller::Service { slice, node: n } => *n == node && self.is_node_service(slice),
            Caller::Principal(pr) => pr.roles.contains(&Role::Operator),
            Caller::Anonymous => false,
        };
        if ok {
            Ok(())
        } else {
            let services = if self.settings.node_services.is_empty() {
                format!("{}.scs", self.ca.name)
            } else {
                self.settings.node_services.join(", ")
            };
            Err(AuthError::denied(method, &format!("a node service ({services}) of node {node}, or an operator")))
        }
    }

    pub(crate) async fn get_slices_for_node(
        &self,
        c: &Caller,
        p: SlicesForNodeParams,
    ) -> Result<SlicesForNodeResult, AuthError> {
        let node = p.node_id;
        self.require_node_service(c, node, "GetSlicesForNode")?;
        let since = p.since.unwrap_or(0);
        // Read the generation before the query: a change racing with it bumps the number
        // past what we return, so the node asks again next time.
        let mut gen = self.generation();
        if since > gen {
            // The caller heard of a change (through another server) that this one has not:
            // read the database's number.
            gen = self.refresh_generation().await?;
        }
        if since == gen {
            let wait = p.wait.unwrap_or(0).min(self.settings.max_wait);
            if wait == 0 {
                return Ok(SlicesForNodeResult { generation: gen, unchanged: true, slices: None });
            }
            let mut rx = self.changed.subscribe();
            let moved = tokio::time::timeout(std::time::Duration::from_secs(wait), rx.wait_for(|g| *g != since)).await;
            gen = self.generation();
            if moved.is_err() || gen == since {
                return Ok(SlicesForNodeResult { generation: gen, unchanged: true, slices: None });
            }
        }
        let now = credentials::now();
        let rows: Vec<SliceRow> = sqlx::query_as(&self.db.q(
            "SELECT s.id, s.name, s.org_id, s.delegated, s.started, s.deleted, s.rspec, s.expires FROM slices s \
             JOIN slice_nodes sn ON sn.slice_id = s.id JOIN nodes n ON n.id = sn.node_id \
             WHERE sn.node_id = ? AND n.deleted = 0 AND s.deleted = 0 AND s.delegated = 0 AND s.expires > ? ORDER BY s.name",
        ))
        .bind(node)
        .bind(now)
        .fetch_all(self.db.pool())
        .await?;
        let mut slices = Vec::new();
        for s in rows {
            slices.push(NodeSlice {
                id: s.id,
                rspec: self.rspec_with_keys(&s).await?,
                run: s.state().run,
                name: s.name,
                expires: s.expires,
            });
        }
        Ok(SlicesForNodeResult { generation: gen, unchanged: false, slices: Some(slices) })
    }

    pub(crate) async fn report_slivers(
        &self,
        c: &Caller,
        p: ReportSliversParams,
        now: i64,
    ) -> Result<ReportedResult, AuthError> {
        self.require_node_service(c, p.node_id, "ReportSlivers")?;
        if p.slivers.len() > 10_000 {
            return Err(AuthError::invalid("slivers", "at most 10000 per report"));
        }
        for (i, s) in p.slivers.iter().enumerate() {
            for (field, v) in [("slice", Some(&s.slice)), ("state", Some(&s.state)), ("address", s.address.as_ref())]
                .into_iter()
                .chain([("ssh", s.ssh.as_ref()), ("message", s.message.as_ref())])
            {
                if v.is_some_and(|v| v.len() > 1024) {
                    return Err(AuthError::invalid("slivers", format!("[{i}].{field}: longer than 1024 bytes")));
                }
            }
        }
        let mut tx = self.db.begin().await?;
        sqlx::query(&self.db.q("DELETE FROM slivers WHERE node_id = ?")).bind(p.node_id).execute(&mut *tx).await?;
        let mut recorded = 0;
        for s in &p.slivers {
            let id: Option<(i64,)> = sqlx::query_as(&self.db.q("SELECT id FROM slices WHERE name = ? AND deleted = 0"))
                .bind(s.slice.clone())
                .fetch_optional(&mut *tx)
                .await?;
            // A slice this authority does not know (any more) is not recorded.
            let Some((slice_id,)) = id else { continue };
            sqlx::query(&self.db.q(
                "INSERT INTO slivers (slice_id, node_id, state, address, ssh, message, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ))
            .bind(slice_id)
            .bind(p.node_id)
            .bind(s.state.clone())
            .bind(s.address.clone())
            .bind(s.ssh.clone())
            .bind(s.message.clone())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            recorded += 1;
        }
        tx.commit().await?;
        Ok(ReportedResult { recorded })
    }

    pub(crate) async fn get_slice_status(&self, c: &Caller, p: SliceParams) -> Result<SliceStatusResult, AuthError> {
        let s = self.slice(&p.slice_name).await?;
        self.require_slice(c, &s, Role::User, "GetSliceStatus").await?;
        #[derive(sqlx::FromRow)]
        struct Row {
            node_id: i64,
            hostname: String,
            state: Option<String>,
            address: Option<String>,
            ssh: Option<String>,
            message: Option<String>,
            updated: Option<i64>,
        }
        let rows: Vec<Row> = sqlx::query_as(&self.db.q(
            "SELECT n.id AS node_id, n.hostname, v.state, v.address, v.ssh, v.message, v.updated \
             FROM slice_nodes sn JOIN nodes n ON n.id = sn.node_id \
             LEFT JOIN slivers v ON v.slice_id = sn.slice_id AND v.node_id = sn.node_id \
             WHERE sn.slice_id = ? AND n.deleted = 0 ORDER BY n.id",
        ))
        .bind(s.id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(SliceStatusResult {
            slice: s.name.clone(),
            state: s.state(),
            expires: s.expires,
            slivers: rows
                .into_iter()
                .map(|r| SliverStatus {
                    node_id: r.node_id,
                    hostname: r.hostname,
                    state: r.state.unwrap_or_else(|| "missing".into()),
                    address: r.address,
                    ssh: r.ssh,
                    message: r.message,
                    updated: r.updated.unwrap_or(0),
                })
                .collect(),
        })
    }
}
