//! The authority API: every method in one enum, the shared context, and dispatch.
//!
//! JSON-RPC 2.0 over HTTPS, `POST /rpc`, params positional with `auth` first (section
//! 4.7: "For all four operations (as well as those that follow), auth contains
//! authorization information for the call"). See [`crate::auth`] for `auth`'s forms.
//! The slice authority ([`crate::sa`]) and management authority ([`crate::ma`], with its
//! boot manager interface [`crate::boot`]) are separate modules sharing only principals
//! and this dispatcher; one server may host either or both.

use crate::auth::{resolve, Caller, Sessions};
use crate::ca::Ca;
use crate::db::{int, Db};
use crate::rpc::{decode, reply, Args, Code, RpcError};
use credentials::pki::Cert;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};

/// Which authority a method belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Slice authority (section 4.7).
    Sa,
    /// Management authority, public interface (4.8.1).
    Ma,
    /// Management authority, boot manager interface (4.8.2).
    Boot,
    /// Both (authentication).
    Both,
}

macro_rules! methods {
    ($( $(#[$doc:meta])* $name:ident = $part:ident ),* $(,)?) => {
        /// Every method of the authority API.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Method { $( $(#[$doc])* $name, )* }
        impl Method {
            /// Every method.
            pub const ALL: &'static [Method] = &[$( Method::$name, )*];
            /// Wire name.
            pub fn name(self) -> &'static str { match self { $( Method::$name => stringify!($name), )* } }
            /// The authority it belongs to.
            pub fn part(self) -> Part { match self { $( Method::$name => Part::$part, )* } }
            /// By wire name.
            pub fn parse(s: &str) -> Option<Method> { match s { $( stringify!($name) => Some(Method::$name), )* _ => None } }
        }
    };
}

methods! {
    /// `AuthenticateCertificate(null, chain_pem) -> {session (sealed to the cert's key), expires, identity}` (5.5).
    AuthenticateCertificate = Both,
    /// `AddOrg(auth, {name, authority, address})`: operator. `authority` is the org's slice-name prefix.
    AddOrg = Sa,
    /// `GetOrgs(auth)`: any principal.
    GetOrgs = Sa,
    /// `RegisterPrincipal(null, {name, email, org, public_key})`: anyone; waits for approval.
    RegisterPrincipal = Sa,
    /// `ApprovePrincipal(auth, name)`: the org's admin or an operator; issues the certificate.
    ApprovePrincipal = Sa,
    /// `AddPrincipal(auth, {name, email, org, role, public_key})`: admin (user/tech) or operator (any role).
    AddPrincipal = Sa,
    /// `GetPrincipals(auth)`: operators all, admins their org, others themselves.
    GetPrincipals = Sa,
    /// `GetPrincipalCert(null, name) -> {certificate, root}`: anyone (certificates are public).
    GetPrincipalCert = Sa,
    /// `AddPrincipalKey(auth, ssh_key)`: a principal adds an ssh key to itself.
    AddPrincipalKey = Sa,
    /// `CreateSlice(auth, slice_name)`: admin of the org whose authority covers the name, or operator.
    CreateSlice = Sa,
    /// `SetSliceAttr(auth, slice_name, attribute, value)`: privilege per attribute (see `sa::attribute_privilege`).
    SetSliceAttr = Sa,
    /// `AddSlicePrincipal(auth, slice_name, [principal names])`: slice members, the org's admin, operators.
    AddSlicePrincipal = Sa,
    /// `AddSliceNode(auth, slice_name, [node ids])`: slice members, the org's admin, operators.
    AddSliceNode = Sa,
    /// `StartSlice(auth, slice_name)`: state central+start: slice creation services create it.
    StartSlice = Sa,
    /// `StopSlice(auth, slice_name)`.
    StopSlice = Sa,
    /// `DeleteSlice(auth, slice_name)`: the record is kept (state deleted) for audit.
    DeleteSlice = Sa,
    /// `RenewSlice(auth, slice_name, expires)`: at most eight weeks ahead.
    RenewSlice = Sa,
    /// `GetSlices(auth)`: slices the caller may see.
    GetSlices = Sa,
    /// `GetSliceTicket(auth, slice_name) -> signed ticket`: state becomes delegated.
    GetSliceTicket = Sa,
    /// `GetSlicesForNode(auth, node_id, since) -> {generation, unchanged | slices}`: a node's services poll this.
    GetSlicesForNode = Sa,
    /// `AddSite(auth, {org, name, subnets, latitude?, longitude?, tech?})`: the org's admin or operator.
    AddSite = Ma,
    /// `GetSites(auth)`: any principal.
    GetSites = Ma,
    /// `AddNode(auth, {site, hostname, ip, mac?}) -> node_id`: the site's tech, the org's admin, operator.
    AddNode = Ma,
    /// `UpdateNode(auth, node_id, {hostname?, ip?, mac?, state?})`: as AddNode; state debug contacts the node.
    UpdateNode = Ma,
    /// `DeleteNode(auth, node_id)`: as AddNode; the record is kept for audit.
    DeleteNode = Ma,
    /// `GetManagedNodes(auth) -> [node_id]`: any authenticated caller.
    GetManagedNodes = Ma,
    /// `GetNodes(auth, [node_id]?) -> [node values]`: any authenticated caller; never the node key.
    GetNodes = Ma,
    /// `GetNodeConfig(auth, node_id) -> plnode.txt`: the site's tech, the org's admin, operator.
    GetNodeConfig = Ma,
    /// `SetPackage(auth, name, version)`: operator; what nodes' daily update check compares against.
    SetPackage = Ma,
    /// `BootGetState(hmac, {trigger_port?}) -> {state, ...}`.
    BootGetState = Boot,
    /// `BootUpdateState(hmac, {state})`: install/reinstall -> boot, or failboot.
    BootUpdateState = Boot,
    /// `BootGetCertificate(hmac, {public_key}) -> {certificate, root}`: in boot state.
    BootGetCertificate = Boot,
    /// `BootCheckUpdates(hmac, {packages: {name: version}}) -> {updates, state}`.
    BootCheckUpdates = Boot,
}

/// Settings of an authority server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Host the slice authority.
    pub sa: bool,
    /// Host the management authority.
    pub ma: bool,
    /// Session lifetime, seconds.
    pub session_ttl: i64,
    /// Ticket lifetime, seconds (capped by the slice's expiry).
    pub ticket_ttl: i64,
    /// A new slice's lifetime, seconds (two weeks).
    pub slice_ttl: i64,
    /// How far ahead a slice may be renewed, seconds (eight weeks).
    pub slice_max_ttl: i64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { sa: true, ma: true, session_ttl: 86400, ticket_ttl: 7 * 86400, slice_ttl: 14 * 86400, slice_max_ttl: 56 * 86400 }
    }
}

/// The authority server's state.
pub struct Authority {
    /// Database.
    pub db: Db,
    /// Keys and certificates.
    pub ca: Ca,
    /// Settings.
    pub settings: Settings,
    /// Sessions.
    pub sessions: Sessions,
    /// Bumped by every change that may change what some node should run.
    generation: AtomicI64,
    /// Trusted roots for client chains.
    pub roots: Vec<Cert>,
}

impl Authority {
    /// Opens the authority on a database and credentials.
    pub async fn new(db: Db, ca: Ca, settings: Settings) -> anyhow::Result<Authority> {
        sqlx::query(&db.q("INSERT INTO meta (key, value) SELECT 'generation', 1 WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = 'generation')"))
            .execute(db.pool())
            .await?;
        let row = sqlx::query(&db.q("SELECT value FROM meta WHERE key = 'generation'")).fetch_one(db.pool()).await?;
        let gen = int(&row, "value");
        let roots = vec![ca.root.cert.clone()];
        Ok(Authority { db, ca, settings, sessions: Sessions::default(), generation: AtomicI64::new(gen), roots })
    }

    /// The current generation.
    pub fn generation(&self) -> i64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Records a change of what nodes should run; call inside the changing transaction.
    pub async fn bump(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<i64, RpcError> {
        let row = sqlx::query(&self.db.q("UPDATE meta SET value = value + 1 WHERE key = 'generation' RETURNING value"))
            .fetch_one(&mut **tx)
            .await?;
        Ok(int(&row, "value"))
    }

    /// Publishes a committed generation.
    pub fn published(&self, gen: i64) {
        self.generation.fetch_max(gen, Ordering::AcqRel);
    }

    /// Commits a transaction that changes what some node should run: bumps the
    /// generation inside it, commits, then publishes the new generation.
    pub async fn commit_change(&self, mut tx: sqlx::Transaction<'_, sqlx::Any>) -> Result<(), RpcError> {
        let g = self.bump(&mut tx).await?;
        tx.commit().await?;
        self.published(g);
        Ok(())
    }

    /// Answers one HTTP request body.
    pub async fn handle(&self, body: &[u8], peer: IpAddr, chain: Option<&[Cert]>) -> Value {
        let req = match decode(body) {
            Ok(r) => r,
            Err((id, e)) => return reply(id, Err(e)),
        };
        let id = req.id.clone().unwrap_or(Value::Null);
        let r = self.call(&req.method, &req.params, peer, chain).await;
        if let Err(e) = &r {
            tracing::debug!(method = %req.method, "{}", e.message);
        }
        reply(id, r)
    }

    /// Runs one call.
    pub async fn call(&self, method: &str, params: &[Value], peer: IpAddr, chain: Option<&[Cert]>) -> Result<Value, RpcError> {
        let m = Method::parse(method).ok_or_else(|| RpcError::new(Code::MethodNotFound, format!("method: no method {method:?}")))?;
        let hosted = match m.part() {
            Part::Sa => self.settings.sa,
            Part::Ma | Part::Boot => self.settings.ma,
            Part::Both => true,
        };
        if !hosted {
            return Err(RpcError::new(Code::MethodNotFound, format!("{method}: this server does not host that authority")));
        }
        let args = Args::new(method, params);
        let auth = params.first().unwrap_or(&Value::Null);
        if m.part() == Part::Boot {
            return self.boot_call(m, auth, &args, peer).await;
        }
        let now = credentials::now();
        let caller = resolve(&self.db, &self.sessions, &self.roots, auth, chain, now).await?;
        self.dispatch(m, &caller, &args, now).await
    }

    async fn dispatch(&self, m: Method, c: &Caller, a: &Args<'_>, now: i64) -> Result<Value, RpcError> {
        use Method::*;
        if matches!(c, Caller::Anonymous) && !matches!(m, AuthenticateCertificate | RegisterPrincipal | GetPrincipalCert) {
            return Err(RpcError::new(Code::NotAuthenticated, format!("{}: authentication required (auth is null)", m.name())));
        }
        match m {
            AuthenticateCertificate => self.authenticate_certificate(a, now).await,
            AddOrg => self.add_org(c, a).await,
            GetOrgs => self.get_orgs(c).await,
            RegisterPrincipal => self.register_principal(a, now).await,
            ApprovePrincipal => self.approve_principal(c, a).await,
            AddPrincipal => self.add_principal(c, a, now).await,
            GetPrincipals => self.get_principals(c).await,
            GetPrincipalCert => self.get_principal_cert(a).await,
            AddPrincipalKey => self.add_principal_key(c, a).await,
            CreateSlice => self.create_slice(c, a, now).await,
            SetSliceAttr => self.set_slice_attr(c, a).await,
            AddSlicePrincipal => self.add_slice_principal(c, a).await,
            AddSliceNode => self.add_slice_node(c, a).await,
            StartSlice => self.set_slice_flags(c, a, "StartSlice", Some(1), Some(0), None).await,
            StopSlice => self.set_slice_flags(c, a, "StopSlice", Some(0), None, None).await,
            DeleteSlice => self.set_slice_flags(c, a, "DeleteSlice", Some(0), None, Some(1)).await,
            RenewSlice => self.renew_slice(c, a, now).await,
            GetSlices => self.get_slices(c).await,
            GetSliceTicket => self.get_slice_ticket(c, a, now).await,
            GetSlicesForNode => self.get_slices_for_node(c, a, now).await,
            AddSite => self.add_site(c, a, now).await,
            GetSites => self.get_sites().await,
            AddNode => self.add_node(c, a, now).await,
            UpdateNode => self.update_node(c, a).await,
            DeleteNode => self.delete_node(c, a).await,
            GetManagedNodes => self.get_managed_nodes().await,
            GetNodes => self.get_nodes(a).await,
            GetNodeConfig => self.get_node_config(c, a).await,
            SetPackage => self.set_package(c, a).await,
            BootGetState | BootUpdateState | BootGetCertificate | BootCheckUpdates => {
                Err(RpcError::new(Code::Internal, "boot calls are dispatched separately"))
            }
        }
    }
}
