//! The authority API: every method in one list with its params and result types, the
//! shared context, and dispatch.
//!
//! JSON-RPC 2.0 over HTTPS, `POST /rpc`, with `auth` first (section 4.7: "For all four
//! operations (as well as those that follow), auth contains authorization information
//! for the call"). Params are an array (`[auth, ...]`, the specification's order) or an
//! object (`{"auth": ..., name: value, ...}`). See [`crate::auth`] for `auth`'s forms and
//! [`crate::types`] for the params and results.
//!
//! The slice authority ([`crate::sa`]) and management authority ([`crate::ma`], with its
//! boot manager interface [`crate::boot`]) are separate modules sharing only principals
//! and this dispatcher; one server may host either or both.

use crate::auth::{resolve, Caller, Sessions};
use crate::ca::Ca;
use crate::db::Db;
use crate::error::AuthError;
use crate::types::*;
use credentials::pki::Cert;
use jsonrpc::{reply, NoParams, RpcError, Value};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};

/// The PostgreSQL channel on which servers announce a new generation.
pub const GENERATION_CHANNEL: &str = "plab_generation";

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

jsonrpc::api! {
    /// Every method of the authority API.
    pub api Method, Request, calls {
        /// `AuthenticateCertificate(null, certificate) -> {session (sealed to the cert's key), expires, identity}` (5.5).
        AuthenticateCertificate(AuthenticateParams) -> SessionResult;
        /// `AddOrg(auth, {name, authority, address})`: operator. `authority` is the org's slice-name prefix.
        AddOrg(AddOrgParams) -> OrgIdResult;
        /// `GetOrgs(auth)`: any principal.
        GetOrgs(NoParams) -> Vec<OrgInfo>;
        /// `RegisterPrincipal(null, {name, email, org, public_key})`: anyone; waits for approval.
        RegisterPrincipal(RegisterParams) -> RegisteredResult;
        /// `ApprovePrincipal(auth, name)`: the org's admin or an operator; issues the certificate.
        ApprovePrincipal(NameParams) -> PrincipalCertResult;
        /// `AddPrincipal(auth, {name, email, org, role, public_key})`: admin (user/tech) or operator (any role).
        AddPrincipal(AddPrincipalParams) -> PrincipalCertResult;
        /// `GetPrincipals(auth)`: operators all, admins their org, others themselves.
        GetPrincipals(NoParams) -> Vec<PrincipalInfo>;
        /// `GetPrincipalCert(null, name) -> {certificate, root}`: anyone (certificates are public).
        GetPrincipalCert(NameParams) -> CertResult;
        /// `RekeyPrincipal(auth, public_key) -> {principal_id, certificate}`: a principal replaces its
        /// own certificate (a lost or stolen key); the old certificate stops working at once.
        RekeyPrincipal(PublicKeyParams) -> PrincipalCertResult;
        /// `AddPrincipalKey(auth, ssh_key)`: a principal adds an ssh key to itself.
        AddPrincipalKey(SshKeyParams) -> jsonrpc::Empty;
        /// `CreateSlice(auth, slice_name)`: admin of the org whose authority covers the name, or operator.
        CreateSlice(SliceParams) -> SliceCreated;
        /// `SetSliceAttr(auth, slice_name, attribute, value)`: privilege per attribute (see `sa::attribute_privilege`).
        SetSliceAttr(SetSliceAttrParams) -> jsonrpc::Empty;
        /// `AddSlicePrincipal(auth, slice_name, [principal names])`: slice members, the org's admin, operators.
        AddSlicePrincipal(SlicePrincipalsParams) -> jsonrpc::Empty;
        /// `AddSliceNode(auth, slice_name, [node ids])`: slice members, the org's admin, operators.
        AddSliceNode(SliceNodesParams) -> jsonrpc::Empty;
        /// `StartSlice(auth, slice_name)`: state central+start: slice creation services create it.
        StartSlice(SliceParams) -> SliceStateResult;
        /// `StopSlice(auth, slice_name)`.
        StopSlice(SliceParams) -> SliceStateResult;
        /// `DeleteSlice(auth, slice_name)`: the record is kept (state deleted) for audit.
        DeleteSlice(SliceParams) -> SliceStateResult;
        /// `RenewSlice(auth, slice_name, expires)`: at most eight weeks ahead.
        RenewSlice(RenewParams) -> ExpiresResult;
        /// `GetSlices(auth)`: slices the caller may see.
        GetSlices(NoParams) -> Vec<SliceInfo>;
        /// `GetSliceTicket(auth, slice_name) -> signed ticket`: state becomes delegated.
        GetSliceTicket(SliceParams) -> credentials::ticket::SignedTicket;
        /// `GetSlicesForNode(auth, node_id, since, wait) -> {generation, unchanged | slices}`: a node's services poll this.
        GetSlicesForNode(SlicesForNodeParams) -> SlicesForNodeResult;
        /// `ReportSlivers(auth, node_id, [{slice, state, address?, ssh?, message?}])`: a node's
        /// designated service reports every sliver of this authority's slices on the node.
        ReportSlivers(ReportSliversParams) -> ReportedResult;
        /// `ArchiveFlows(auth, node_id, [{id, flow}])`: a node's auditing service (a slice in
        /// `audit_services`, certified by that node) uploads finished flows; at least once,
        /// a repeat is a no-op.
        ArchiveFlows(ArchiveFlowsParams) -> ArchivedResult;
        /// `SliceContacts(auth, node_id, [slice names]) -> {contacts}`: a node's auditing
        /// service (as for ArchiveFlows) asks who is responsible for the slices running on
        /// its node, to name them on the node's public page.
        SliceContacts(SliceContactsParams) -> SliceContactsResult;
        /// `QueryFlows(null, src, dst?, from?, to?) -> {flows}`: anyone; the public query of
        /// section 4.6 across every node that uploads here.
        QueryFlows(QueryFlowsParams) -> FlowsResult;
        /// `GetSliceStatus(auth, slice_name) -> {slice, state, expires, slivers: [{node_id, hostname, state, ssh, ...}]}`:
        /// as GetSlices.
        GetSliceStatus(SliceParams) -> SliceStatusResult;
        /// `AddSite(auth, {org, name, subnets, latitude?, longitude?, tech?})`: the org's admin or operator.
        AddSite(AddSiteParams) -> SiteIdResult;
        /// `GetSites(auth)`: any authenticated caller.
        GetSites(NoParams) -> Vec<SiteInfo>;
        /// `AddNode(auth, {site, hostname, ip, mac?}) -> node_id`: the site's tech, the org's admin, operator.
        AddNode(AddNodeParams) -> NodeIdResult;
        /// `UpdateNode(auth, node_id, {hostname?, ip?, mac?, state?})`: as AddNode; state debug contacts the node.
        UpdateNode(UpdateNodeParams) -> NodeUpdated;
        /// `DeleteNode(auth, node_id)`: as AddNode; the record is kept for audit.
        DeleteNode(NodeParams) -> NodeDeleted;
        /// `GetManagedNodes(auth) -> [node_id]`: any authenticated caller.
        GetManagedNodes(NoParams) -> Vec<i64>;
        /// `GetNodes(auth, [node_id]?) -> [node values]`: any authenticated caller; never the node key.
        GetNodes(GetNodesParams) -> Vec<NodeInfo>;
        /// `GetNodeConfig(auth, node_id) -> plnode.txt`: the site's tech, the org's admin, operator.
        GetNodeConfig(NodeParams) -> NodeConfigResult;
        /// `SetPackage(auth, name, version)`: operator; what nodes' daily update check compares against.
        SetPackage(PackageParams) -> jsonrpc::Empty;
        /// `BootGetState(hmac, {trigger_port?}) -> {state, ...}`.
        BootGetState(BootGetStateParams) -> BootStateResult;
        /// `BootUpdateState(hmac, {state})`: install/reinstall -> boot, or failboot.
        BootUpdateState(BootUpdateStateParams) -> StateResult;
        /// `BootGetCertificate(hmac, {public_key}) -> {certificate, root}`: in boot state.
        BootGetCertificate(BootCertificateParams) -> CertResult;
        /// `BootCheckUpdates(hmac, {packages: {name: version}}) -> {updates, state}`.
        BootCheckUpdates(BootCheckUpdatesParams) -> UpdatesResult;
    }
}

impl Method {
    /// The authority it belongs to.
    pub fn part(self) -> Part {
        use Method::*;
        match self {
            AuthenticateCertificate => Part::Both,
            AddSite | GetSites | AddNode | UpdateNode | DeleteNode | GetManagedNodes | GetNodes | GetNodeConfig
            | SetPackage => Part::Ma,
            BootGetState | BootUpdateState | BootGetCertificate | BootCheckUpdates => Part::Boot,
            _ => Part::Sa,
        }
    }

    /// May an anonymous caller (`auth` null) call it?
    pub fn anonymous(self) -> bool {
        matches!(
            self,
            Method::AuthenticateCertificate | Method::RegisterPrincipal | Method::GetPrincipalCert | Method::QueryFlows
        )
    }
}

/// Splits a call's params into `auth` and the rest (by position or by name).
pub fn split_auth(params: Value) -> Result<(Value, Value), AuthError> {
    match params {
        Value::Null => Ok((Value::Null, Value::Null)),
        Value::Array(mut a) => {
            if a.is_empty() {
                return Ok((Value::Null, Value::Array(a)));
            }
            let auth = a.remove(0);
            Ok((auth, Value::Array(a)))
        }
        Value::Object(mut o) => {
            let auth = o.remove("auth").unwrap_or(Value::Null);
            Ok((auth, Value::Object(o)))
        }
        _ => Err(AuthError::invalid("params", "must be an array (auth first) or an object")),
    }
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
    /// Longest long poll of `GetSlicesForNode`, seconds.
    pub max_wait: u64,
    /// The slices whose services on a node may learn that node's slices and report its
    /// slivers (`GetSlicesForNode`, `ReportSlivers`): the slice creation services this
    /// authority trusts. Empty: `<name>.scs` (for example `plc.scs`).
    pub node_services: Vec<String>,
    /// The slices whose services on a node may upload that node's flows to the archive
    /// (`ArchiveFlows`): the auditing services. Empty: `<name>.audit` (`plc.audit`).
    pub audit_services: Vec<String>,
    /// Days the archive keeps a flow (by its last packet).
    pub flow_retention_days: i64,
    /// Seconds between sweeps for expired slices (which also read the generation other
    /// servers on the database moved).
    pub sweep_secs: u64,
    /// Seconds an anonymous registration may wait for approval before the sweep removes
    /// it (30 days), so that waiting ones cannot pile up to the cap for good.
    pub registration_ttl: i64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            sa: true,
            ma: true,
            session_ttl: 86400,
            ticket_ttl: 7 * 86400,
            slice_ttl: 14 * 86400,
            slice_max_ttl: 56 * 86400,
            max_wait: 60,
            node_services: vec![],
            audit_services: vec![],
            flow_retention_days: 90,
            sweep_secs: 2,
            registration_ttl: 30 * 86400,
        }
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
    /// The last generation this server saw (see [`crate::sa`]'s `GetSlicesForNode`).
    generation: AtomicI64,
    /// Woken whenever the generation moves.
    pub(crate) changed: tokio::sync::watch::Sender<i64>,
    /// Trusted roots for client chains.
    pub roots: Vec<Cert>,
    /// Anonymous registrations per source address.
    pub(crate) registrations: governor::DefaultKeyedRateLimiter<IpAddr>,
    /// Anonymous flow queries per source address.
    pub(crate) flow_queries: governor::DefaultKeyedRateLimiter<IpAddr>,
}

/// Anonymous `QueryFlows` calls one address may make: this many at once, then this many
/// a second.
pub const FLOW_QUERY_BURST: u32 = 20;
/// See [`FLOW_QUERY_BURST`].
pub const FLOW_QUERIES_PER_SEC: u32 = 5;

/// Anonymous `RegisterPrincipal` calls one address may make: this many at once, then one
/// more every [`REGISTRATION_EVERY_SECS`].
pub const REGISTRATION_BURST: u32 = 5;

/// Whose allowance a registration from `ip` spends: an IPv4 address (IPv4-mapped IPv6
/// included) is one; an IPv6 address counts as its /64, which one client usually holds
/// whole.
pub fn registration_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// Seconds between further registrations from one address.
pub const REGISTRATION_EVERY_SECS: u64 = 60;

/// Registrations waiting for approval the authority holds at most (from every address
/// together): past it, anonymous registration waits until an admin approves or removes some.
pub const MAX_PENDING_REGISTRATIONS: i64 = 10_000;

/// What the transport knows about a request: where it comes from and the TLS client
/// chain it presented.
pub struct Peer {
    /// The peer's address.
    pub ip: IpAddr,
    /// The TLS client certificate chain, if any.
    pub chain: Option<std::sync::Arc<Vec<Cert>>>,
}

impl Authority {
    /// Opens the authority on a database and credentials.
    pub async fn new(db: Db, ca: Ca, settings: Settings) -> anyhow::Result<Authority> {
        sqlx::query(&db.q("INSERT INTO meta (key, value) SELECT 'generation', 1 WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = 'generation')"))
            .execute(db.pool())
            .await?;
        let (gen,): (i64,) =
            sqlx::query_as(&db.q("SELECT value FROM meta WHERE key = 'generation'")).fetch_one(db.pool()).await?;
        let roots = vec![ca.root.cert.clone()];
        let (changed, _) = tokio::sync::watch::channel(gen);
        Ok(Authority {
            db,
            ca,
            settings,
            sessions: Sessions::default(),
            generation: AtomicI64::new(gen),
            changed,
            roots,
            registrations: governor::RateLimiter::keyed(
                governor::Quota::with_period(std::time::Duration::from_secs(REGISTRATION_EVERY_SECS))
                    .ok_or_else(|| anyhow::anyhow!("registration period is zero"))?
                    .allow_burst(std::num::NonZeroU32::new(REGISTRATION_BURST).unwrap_or(std::num::NonZeroU32::MIN)),
            ),
            flow_queries: governor::RateLimiter::keyed(
                governor::Quota::per_second(
                    std::num::NonZeroU32::new(FLOW_QUERIES_PER_SEC).unwrap_or(std::num::NonZeroU32::MIN),
                )
                .allow_burst(std::num::NonZeroU32::new(FLOW_QUERY_BURST).unwrap_or(std::num::NonZeroU32::MIN)),
            ),
        })
    }

    /// Whether an anonymous registration from `ip` may go ahead: a few per address, then
    /// one a minute; and never past [`MAX_PENDING_REGISTRATIONS`] waiting in all.
    async fn admit_registration(&self, ip: IpAddr) -> Result<(), AuthError> {
        if self.registrations.check_key(&registration_key(ip)).is_err() {
            return Err(AuthError::Unavailable(format!(
                "RegisterPrincipal: too many registrations from {ip}: {REGISTRATION_BURST} at once, then one every {REGISTRATION_EVERY_SECS} s; try again later"
            )));
        }
        let (pending,): (i64,) = sqlx::query_as(&self.db.q("SELECT COUNT(*) FROM principals WHERE approved = 0"))
            .fetch_one(self.db.pool())
            .await?;
        if pending >= MAX_PENDING_REGISTRATIONS {
            return Err(AuthError::Unavailable(format!(
                "RegisterPrincipal: {pending} registrations wait for approval already; try again once an admin has dealt with them"
            )));
        }
        Ok(())
    }

    /// The current generation, as this server last saw it.
    pub fn generation(&self) -> i64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Records a change of what nodes should run; call inside the changing transaction. On
    /// PostgreSQL the new number is also announced (NOTIFY, delivered at commit) to every
    /// server on the database.
    pub async fn bump(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<i64, AuthError> {
        let (g,): (i64,) =
            sqlx::query_as(&self.db.q("UPDATE meta SET value = value + 1 WHERE key = 'generation' RETURNING value"))
                .fetch_one(&mut **tx)
                .await?;
        if self.db.is_postgres() {
            sqlx::query(&self.db.q("SELECT pg_notify(?, ?)"))
                .bind(GENERATION_CHANNEL)
                .bind(g.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Ok(g)
    }

    /// Follows the generation other servers on the same PostgreSQL database publish
    /// (LISTEN), so their changes wake this server's long polls at once. Reconnects after
    /// a lost connection, reading the number again. Returns at once on SQLite.
    pub async fn follow_generation(self: std::sync::Arc<Self>) {
        if !self.db.is_postgres() {
            return;
        }
        loop {
            match sqlx::postgres::PgListener::connect(self.db.url()).await {
                Ok(mut l) => {
                    if let Err(e) = l.listen(GENERATION_CHANNEL).await {
                        tracing::warn!("LISTEN {GENERATION_CHANNEL}: {e}");
                    } else {
                        if let Err(e) = self.refresh_generation().await {
                            tracing::warn!("reading the generation: {e}");
                        }
                        loop {
                            match l.recv().await {
                                Ok(n) => match n.payload().parse::<i64>() {
                                    Ok(g) => self.published(g),
                                    Err(_) => tracing::warn!(
                                        "NOTIFY {GENERATION_CHANNEL}: {:?} is no generation",
                                        n.payload()
                                    ),
                                },
                                Err(e) => {
                                    tracing::warn!("LISTEN {GENERATION_CHANNEL}: {e}; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("LISTEN {GENERATION_CHANNEL}: cannot connect: {e}"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// Reads the generation from the database (another server on it may have moved it)
    /// and publishes it.
    pub async fn refresh_generation(&self) -> Result<i64, AuthError> {
        let (g,): (i64,) = sqlx::query_as(&self.db.q("SELECT value FROM meta WHERE key = 'generation'"))
            .fetch_one(self.db.pool())
            .await?;
        self.published(g);
        Ok(self.generation())
    }

    /// Publishes a generation seen committed (by this server or another on the same
    /// database), waking long polls.
    pub fn published(&self, gen: i64) {
        if self.generation.fetch_max(gen, Ordering::AcqRel) < gen {
            self.changed.send_replace(gen);
        }
    }

    /// Commits a transaction that changes what some node should run: bumps the
    /// generation inside it, commits, then publishes the new generation.
    pub async fn commit_change(&self, mut tx: sqlx::Transaction<'_, sqlx::Any>) -> Result<(), AuthError> {
        let g = self.bump(&mut tx).await?;
        tx.commit().await?;
        self.published(g);
        Ok(())
    }

    /// Answers one HTTP request body.
    pub async fn handle(&self, body: &[u8], peer: IpAddr, chain: Option<std::sync::Arc<Vec<Cert>>>) -> Value {
        jsonrpc::server::answer(self, &Peer { ip: peer, chain }, body).await.unwrap_or(Value::Null)
    }

    /// Runs one call.
    pub async fn call(&self, method: &str, params: Value, peer: &Peer) -> Result<Value, RpcError> {
        let m = Method::parse(method).ok_or_else(|| AuthError::NoMethod(format!("method: no method {method:?}")))?;
        let hosted = match m.part() {
            Part::Sa => self.settings.sa,
            Part::Ma | Part::Boot => self.settings.ma,
            Part::Both => true,
        };
        if !hosted {
            return Err(AuthError::NoMethod(format!("{method}: this server does not host that authority")).into());
        }
        let (auth, rest) = split_auth(params)?;
        if m.part() == Part::Boot {
            return self.boot_call(m, &auth, rest, peer.ip).await;
        }
        let now = credentials::now();
        let caller =
            resolve(&self.db, &self.sessions, &self.roots, &auth, peer.chain.as_deref().map(Vec::as_slice), now)
                .await?;
        if matches!(caller, Caller::Anonymous) && !m.anonymous() {
            return Err(
                AuthError::unauthenticated(format!("{}: authentication required (auth is null)", m.name())).into()
            );
        }
        let req = Request::decode(method, rest)?;
        if matches!(req, Request::RegisterPrincipal(_)) && matches!(caller, Caller::Anonymous) {
            self.admit_registration(peer.ip).await?;
        }
        if matches!(req, Request::QueryFlows(_))
            && matches!(caller, Caller::Anonymous)
            && self.flow_queries.check_key(&registration_key(peer.ip)).is_err()
        {
            return Err(AuthError::Unavailable(format!(
                "QueryFlows: too many queries from {}: {FLOW_QUERY_BURST} at once, then {FLOW_QUERIES_PER_SEC} a second; try again later",
                peer.ip
            ))
            .into());
        }
        self.dispatch(&caller, req, now).await
    }

    async fn dispatch(&self, c: &Caller, req: Request, now: i64) -> Result<Value, RpcError> {
        use calls as k;
        fn r<T>(x: Result<T, AuthError>) -> Result<T, RpcError> {
            x.map_err(RpcError::from)
        }
        match req {
            Request::AuthenticateCertificate(p) => {
                reply::<k::AuthenticateCertificate>(r(self.authenticate_certificate(p, now).await))
            }
            Request::AddOrg(p) => reply::<k::AddOrg>(r(self.add_org(c, p).await)),
            Request::GetOrgs(_) => reply::<k::GetOrgs>(r(self.get_orgs(c).await)),
            Request::RegisterPrincipal(p) => reply::<k::RegisterPrincipal>(r(self.register_principal(p, now).await)),
            Request::ApprovePrincipal(p) => reply::<k::ApprovePrincipal>(r(self.approve_principal(c, p).await)),
            Request::AddPrincipal(p) => reply::<k::AddPrincipal>(r(self.add_principal(c, p, now).await)),
            Request::GetPrincipals(_) => reply::<k::GetPrincipals>(r(self.get_principals(c).await)),
            Request::GetPrincipalCert(p) => reply::<k::GetPrincipalCert>(r(self.get_principal_cert(p).await)),
            Request::RekeyPrincipal(p) => reply::<k::RekeyPrincipal>(r(self.rekey_principal(c, p).await)),
            Request::AddPrincipalKey(p) => reply::<k::AddPrincipalKey>(r(self.add_principal_key(c, p).await)),
            Request::CreateSlice(p) => reply::<k::CreateSlice>(r(self.create_slice(c, p, now).await)),
            Request::SetSliceAttr(p) => reply::<k::SetSliceAttr>(r(self.set_slice_attr(c, p).await)),
            Request::AddSlicePrincipal(p) => reply::<k::AddSlicePrincipal>(r(self.add_slice_principal(c, p).await)),
            Request::AddSliceNode(p) => reply::<k::AddSliceNode>(r(self.add_slice_node(c, p).await)),
            Request::StartSlice(p) => {
                reply::<k::StartSlice>(r(self.set_slice_flags(c, p, "StartSlice", Some(1), Some(0), None).await))
            }
            Request::StopSlice(p) => {
                reply::<k::StopSlice>(r(self.set_slice_flags(c, p, "StopSlice", Some(0), None, None).await))
            }
            Request::DeleteSlice(p) => {
                reply::<k::DeleteSlice>(r(self.set_slice_flags(c, p, "DeleteSlice", Some(0), None, Some(1)).await))
            }
            Request::RenewSlice(p) => reply::<k::RenewSlice>(r(self.renew_slice(c, p, now).await)),
            Request::GetSlices(_) => reply::<k::GetSlices>(r(self.get_slices(c).await)),
            Request::GetSliceTicket(p) => reply::<k::GetSliceTicket>(r(self.get_slice_ticket(c, p, now).await)),
            Request::GetSlicesForNode(p) => reply::<k::GetSlicesForNode>(r(self.get_slices_for_node(c, p).await)),
            Request::ReportSlivers(p) => reply::<k::ReportSlivers>(r(self.report_slivers(c, p, now).await)),
            Request::ArchiveFlows(p) => reply::<k::ArchiveFlows>(r(self.archive_flows(c, p, now).await)),
            Request::QueryFlows(p) => reply::<k::QueryFlows>(r(self.query_flows(c, p).await)),
            Request::SliceContacts(p) => reply::<k::SliceContacts>(r(self.slice_contacts(c, p).await)),
            Request::GetSliceStatus(p) => reply::<k::GetSliceStatus>(r(self.get_slice_status(c, p).await)),
            Request::AddSite(p) => reply::<k::AddSite>(r(self.add_site(c, p, now).await)),
            Request::GetSites(_) => reply::<k::GetSites>(r(self.get_sites().await)),
            Request::AddNode(p) => reply::<k::AddNode>(r(self.add_node(c, p, now).await)),
            Request::UpdateNode(p) => reply::<k::UpdateNode>(r(self.update_node(c, p).await)),
            Request::DeleteNode(p) => reply::<k::DeleteNode>(r(self.delete_node(c, p).await)),
            Request::GetManagedNodes(_) => reply::<k::GetManagedNodes>(r(self.get_managed_nodes().await)),
            Request::GetNodes(p) => reply::<k::GetNodes>(r(self.get_nodes(p).await)),
            Request::GetNodeConfig(p) => reply::<k::GetNodeConfig>(r(self.get_node_config(c, p).await)),
            Request::SetPackage(p) => reply::<k::SetPackage>(r(self.set_package(c, p).await)),
            Request::BootGetState(_)
            | Request::BootUpdateState(_)
            | Request::BootGetCertificate(_)
            | Request::BootCheckUpdates(_) => Err(AuthError::internal("boot calls are dispatched separately").into()),
        }
    }
}

impl jsonrpc::server::Handler for Authority {
    type Caller = Peer;
    async fn call(&self, peer: &Peer, method: &str, params: Value) -> Result<Value, RpcError> {
        Authority::call(self, method, params, peer).await
    }
}

#[cfg(test)]
mod registration_tests {
    use super::registration_key;

    #[test]
    fn an_ipv6_client_is_its_slash_64_and_a_mapped_ipv4_its_address() {
        let k = |s: &str| registration_key(s.parse().unwrap()).to_string();
        assert_eq!(k("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(k("192.0.2.7"), "192.0.2.7");
    }
}
