//! The slice creation service (sections 4.5 and 5.3): on start it asks the node manager
//! for the pools the owner gave it (`GetRcap`, `GetRSpec`), each naming a slice authority
//! with its URL and certificate; it has the node manager certify a key of its own
//! (`SignCertificate`), authenticates to each authority with it, and then, for each:
//!
//! - long-polls `GetSlicesForNode` and, whenever the answer changes (and at least every
//!   `resync_secs`), brings the node in line with it: VMs made, changed, started, stopped
//!   and removed through the node manager, always within the authority's pools;
//! - reports every sliver back (`ReportSlivers`), with the command that logs in;
//! - keeps the last good answer on disk, so that a node whose authority is down or
//!   answers nonsense keeps running what it was told, and retries with backoff.
//!
//! It also redeems tickets ([`Scs::redeem`]). Every change to the node happens under one
//! lock, so a ticket and a reconciliation never race for a pool.

use crate::nm::Nm;
use crate::plan::{self, Action, Desired, Have, Source};
use crate::state::{Cached, State, StateFile, TicketSlice};
use crate::{api::Redeemed, config::Config};
use credentials::pki::{Cert, KeyPair};
use credentials::ticket::SignedTicket;
use jsonrpc::{ClientError, ErrorCode, RpcError};
use plab_authority::types::{NodeSlice, SliverReport};
use plab_authority::AsyncAuthorityClient;
use plab_nm::api::{self as nm_api, calls as nm_calls, PoolInfo, VmInfo, Wanted};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_types::{RSpec, RSpecClass, SliceName, VmState, VmType};

/// One of the owner's pools for this service.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRef {
    /// Its rcap.
    pub rcap: String,
    /// Its node-local id.
    pub id: i64,
    /// The VM type it is restricted to.
    pub vm_type: Option<VmType>,
}

/// A slice authority this node's owner lets the service act for.
pub struct Link {
    /// The authority's name (the slices it may make are below it).
    pub name: SliceName,
    /// Its API.
    pub url: String,
    /// The slice authority's certificate (tickets are signed with its key).
    pub sa: Cert,
    /// The root it chains to (the TLS trust anchor).
    pub root_pem: String,
    /// The owner's pools for it.
    pub pools: Mutex<Vec<PoolRef>>,
    /// The client reports go through.
    reporter: tokio::sync::Mutex<Option<AsyncAuthorityClient>>,
    /// What went wrong last, for the log (each distinct problem is logged once).
    last_error: Mutex<Option<String>>,
    /// Set when the owner's pools no longer name the authority this way (removed, or
    /// given another URL or certificate): its follower stops.
    retired: AtomicBool,
}

impl Link {
    /// Whether the owner's pools stopped naming this authority this way.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Whether `other` names the same authority at the same place with the same keys.
    fn same_as(&self, other: &Link) -> bool {
        self.url == other.url && self.sa.der == other.sa.der && self.root_pem == other.root_pem
    }

    fn pools(&self) -> Vec<PoolRef> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Logs `e` unless it is the problem last logged; `None` clears it.
    fn note(&self, e: Option<String>) {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match (&e, last.as_ref()) {
            (Some(new), Some(old)) if new == old => {}
            (Some(new), _) => tracing::warn!(authority = %self.name, "{new}"),
            (None, Some(_)) => tracing::info!(authority = %self.name, "the authority answers again"),
            (None, None) => {}
        }
        *last = e;
    }
}

/// What a pool's RSpec says about an authority, checked.
fn link_of(rspec: &RSpec, rcap: &str, id: i64) -> Vec<Result<Link, String>> {
    let RSpecClass::Pool(p) = &rspec.class else { return vec![] };
    p.slice_authorities
        .iter()
        .map(|a| {
            let bundle = a.certificate.as_deref().ok_or_else(|| {
                format!("pool {id}: slice_authority {} has no certificate (the SA's certificate and its root)", a.name)
            })?;
            let certs =
                Cert::bundle_from_pem(bundle).map_err(|e| format!("pool {id}: slice_authority {}: {e}", a.name))?;
            let root =
                certs.iter().find(|c| matches!(c.identity, credentials::Identity::Root(_))).ok_or_else(|| {
                    format!("pool {id}: slice_authority {}: the certificate bundle holds no root", a.name)
                })?;
            let sa = certs
                .iter()
                .find(|c| {
                    matches!(c.identity, credentials::Identity::Authority(credentials::identity::AuthorityKind::Sa, _))
                })
                .ok_or_else(|| {
                    format!(
                        "pool {id}: slice_authority {}: the certificate bundle holds no slice authority certificate",
                        a.name
                    )
                })?;
            credentials::pki::verify_authority(sa, root, credentials::now())
                .map_err(|e| format!("pool {id}: slice_authority {}: the SA certificate: {e}", a.name))?;
            Ok(Link {
                name: a.name.clone(),
                url: a.url.clone(),
                sa: sa.clone(),
                root_pem: root.pem.clone(),
                pools: Mutex::new(vec![PoolRef { rcap: rcap.to_owned(), id, vm_type: rspec.vm_type() }]),
                reporter: tokio::sync::Mutex::new(None),
                last_error: Mutex::new(None),
                retired: AtomicBool::new(false),
            })
        })
        .collect()
}

/// Why a ticket was refused, or a call failed.
fn refused(code: ErrorCode, msg: impl Into<String>) -> RpcError {
    RpcError::new(code, msg.into())
}

/// The slice creation service.
pub struct Scs {
    cfg: Config,
    nm: Nm,
    /// This node's id at its management authority.
    pub node_id: i64,
    /// The node's public address (where VMs' ssh and the ticket endpoint are).
    pub public_address: Option<String>,
    key: KeyPair,
    links: Mutex<BTreeMap<String, Arc<Link>>>,
    /// Held while the node is changed; holds the persisted state.
    work: tokio::sync::Mutex<State>,
    state_file: StateFile,
}

/// What went wrong for one slice: the node manager's error code (when it gave one) and
/// the message.
#[derive(Debug, Clone)]
struct Problem {
    code: Option<ErrorCode>,
    msg: String,
}

impl Problem {
    /// A problem found here (not an error from the node manager).
    fn here(msg: impl Into<String>) -> Problem {
        Problem { code: None, msg: msg.into() }
    }

    /// A node manager call `what` that failed with `e`.
    fn call(what: &str, e: ClientError) -> Problem {
        Problem { code: e.code(), msg: format!("{what}: {e}") }
    }
}

/// One reconciliation's outcome per slice: what went wrong.
type Problems = BTreeMap<String, Problem>;

/// The most slices one authority's answer may give a node; a larger answer is nonsense
/// (or an attack on the service's memory) and is refused, keeping the last good one.
pub const MAX_SLICES: usize = 10_000;

impl Scs {
    /// Starts: finds the node, makes or reads the service's key, reads the state file.
    pub async fn open(cfg: Config) -> anyhow::Result<Arc<Scs>> {
        vm_types::files::private_dir(&cfg.state_dir, 0o700)
            .map_err(|e| anyhow::anyhow!("state_dir {}: {e}", cfg.state_dir.display()))?;
        let nm = Nm::new(cfg.nm_socket.clone());
        let info = nm.call::<nm_calls::NodeInfo>(jsonrpc::NoParams::default()).await?;
        let node_id = info.node_id.ok_or_else(|| {
            anyhow::anyhow!("the node has no node certificate yet (plab-boot writes it when the node boots)")
        })?;
        let key_path = cfg.state_dir.join("key.pem");
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", key_path.display()))?,
            Err(_) => {
                let k = KeyPair::generate();
                vm_types::files::write_private(&key_path, k.to_pem().as_bytes(), 0o600)?;
                k
            }
        };
        let state_file = StateFile::new(&cfg.state_dir);
        let state = state_file.load()?;
        Ok(Arc::new(Scs {
            nm,
            node_id,
            public_address: info.public_address,
            key,
            links: Mutex::new(BTreeMap::new()),
            work: tokio::sync::Mutex::new(state),
            state_file,
            cfg,
        }))
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The node manager.
    pub fn nm(&self) -> &Nm {
        &self.nm
    }

    /// A certificate for this service's key from the node manager: a client certificate,
    /// or (`server`) one for the node's public address. Returns (chain, key) PEM.
    pub async fn certificate(&self, server: bool) -> Result<(String, String), ClientError> {
        let params =
            nm_api::SignCertificateParams { public_key: self.key.public_key_pem(), server: Some(server), slice: None };
        let c = self.nm.call::<nm_calls::SignCertificate>(params).await?;
        Ok((c.certificate, self.key.to_pem()))
    }

    /// Reads the owner's pools for this service; returns the authorities newly found.
    pub async fn discover(&self) -> Result<Vec<Arc<Link>>, ClientError> {
        let rcaps = self.nm.call::<nm_calls::GetRcap>(nm_api::GetRcapParams { slice_name: None }).await?.rcaps;
        let listed = self.nm.call::<nm_calls::ListPools>(jsonrpc::NoParams::default()).await?.pools;
        let mut found: BTreeMap<String, Link> = BTreeMap::new();
        for rcap in rcaps {
            let Some(id) = listed.iter().find(|p| p.rcap == rcap).map(|p| p.id) else { continue };
            let xml = self.nm.call::<nm_calls::GetRSpec>(nm_api::RcapParams { rcap: rcap.clone() }).await?.rspec;
            let Ok(rspec) = RSpec::from_xml(&xml) else { continue };
            for l in link_of(&rspec, &rcap, id) {
                match l {
                    Ok(l) => match found.get(l.name.as_str()) {
                        Some(prev) if prev.url != l.url || prev.sa.der != l.sa.der => tracing::warn!(
                            authority = %l.name,
                            "pool {id} names the authority with another URL or certificate than an earlier pool; ignored"
                        ),
                        Some(prev) => prev.pools.lock().unwrap_or_else(|p| p.into_inner()).extend(l.pools()),
                        None => {
                            found.insert(l.name.to_string(), l);
                        }
                    },
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        // Authorities no pool names any more: their followers stop; their VMs stay until
        // the owner removes the pools they came from.
        links.retain(|name, l| {
            let keep = found.contains_key(name);
            if !keep {
                tracing::info!(authority = %name, "no pool names this authority any more; no longer following it");
                l.retired.store(true, Ordering::SeqCst);
            }
            keep
        });
        let mut new = Vec::new();
        for (name, l) in found {
            match links.get(&name) {
                // Known: the pool list may have changed (the owner added or removed one).
                Some(existing) if existing.same_as(&l) => {
                    *existing.pools.lock().unwrap_or_else(|p| p.into_inner()) = l.pools()
                }
                // The owner moved the authority or changed its keys: follow the new one.
                Some(existing) => {
                    tracing::info!(authority = %name, url = %l.url, "the owner's pools name this authority anew");
                    existing.retired.store(true, Ordering::SeqCst);
                    let l = Arc::new(l);
                    links.insert(name, l.clone());
                    new.push(l);
                }
                None => {
                    let l = Arc::new(l);
                    links.insert(name, l.clone());
                    new.push(l);
                }
            }
        }
        Ok(new)
    }

    /// The authorities known.
    pub fn links(&self) -> Vec<Arc<Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// A client of `link`'s authority with a fresh session.
    async fn session(&self, link: &Link) -> Result<AsyncAuthorityClient, String> {
        let (chain, key) = self.certificate(false).await.map_err(|e| format!("SignCertificate: {e}"))?;
        let mut c = AsyncAuthorityClient::new(&link.url, &link.root_pem, None, None)
            .map_err(|e| format!("{}: {e}", link.url))?;
        c.start_session(&chain, &key).await.map_err(|e| format!("AuthenticateCertificate at {}: {e}", link.url))?;
        Ok(c)
    }

    /// Follows one authority for the life of the service: long polls, reconciles on
    /// change, backs off while the authority is unreachable or answers nonsense.
    pub async fn follow(self: Arc<Self>, link: Arc<Link>) {
        let mut client: Option<AsyncAuthorityClient> = None;
        let mut since = self.work.lock().await.cache.get(link.name.as_str()).map_or(0, |c| c.generation);
        let mut backoff = Duration::from_secs(1);
        // Whether the session in `client` is fresh (no answer yet): an authority that
        // refuses a fresh session is not asked again at once.
        let mut fresh = false;
        // The cached answer (if any) is what the node runs until the authority answers.
        self.reconcile_and_report(&link).await;
        while !link.is_retired() {
            if client.is_none() {
                match self.session(&link).await {
                    Ok(c) => {
                        client = Some(c);
                        fresh = true;
                    }
                    Err(e) => {
                        link.note(Some(format!("{e}; retrying in {}s", backoff.as_secs())));
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        continue;
                    }
                }
            }
            let Some(c) = client.as_mut() else { continue };
            let wait = if self.cfg.poll_interval_secs > 0 { 0 } else { self.cfg.poll_wait_secs };
            let params = plab_authority::types::SlicesForNodeParams {
                node_id: self.node_id,
                since: Some(since),
                wait: Some(wait),
            };
            let asked = Instant::now();
            match c.request::<plab_authority::api::calls::GetSlicesForNode>(&params).await {
                Ok(r) if r.slices.as_ref().is_some_and(|s| s.len() > MAX_SLICES) => {
                    link.note(Some(format!(
                        "GetSlicesForNode: the answer lists more than {MAX_SLICES} slices; keeping the last good \
                         answer, retrying in {}s",
                        backoff.as_secs()
                    )));
                    client = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
                Ok(r) => {
                    link.note(None);
                    backoff = Duration::from_secs(1);
                    fresh = false;
                    since = r.generation;
                    // A long poll answered at once with nothing new: the authority does not
                    // wait (an old server, or a broken one); do not ask it in a tight loop.
                    if r.slices.is_none() && wait > 0 && asked.elapsed() < Duration::from_secs(1) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    if let Some(slices) = r.slices {
                        let mut st = self.work.lock().await;
                        st.cache.insert(link.name.to_string(), Cached { generation: r.generation, slices });
                        if let Err(e) = self.state_file.save(&mut st, credentials::now()) {
                            tracing::error!("saving the state: {e}");
                        }
                        drop(st);
                        self.reconcile_and_report(&link).await;
                    }
                    if self.cfg.poll_interval_secs > 0 {
                        tokio::time::sleep(Duration::from_secs(self.cfg.poll_interval_secs)).await;
                    }
                }
                Err(e) => {
                    // A session the authority no longer knows: authenticate again at once
                    // (unless it is the session just made).
                    if e.code() == Some(ErrorCode::NOT_AUTHENTICATED) && !fresh {
                        client = None;
                        continue;
                    }
                    link.note(Some(format!(
                        "GetSlicesForNode: {e}; keeping the last good answer, retrying in {}s",
                        backoff.as_secs()
                    )));
                    client = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
        tracing::info!(authority = %link.name, url = %link.url, "stopped following");
    }

    /// Compares the node with the wanted state every `resync_secs` for the life of the
    /// service (VMs someone removed, slices that expired, pools the owner added).
    pub async fn resync_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(self.cfg.resync_secs)).await;
            match self.discover().await {
                Ok(new) => {
                    for l in new {
                        tracing::info!(authority = %l.name, url = %l.url, "a new slice authority pool");
                        tokio::spawn(self.clone().follow(l));
                    }
                }
                Err(e) => tracing::warn!("reading the service's pools: {e}"),
            }
            for l in self.links() {
                self.reconcile_and_report(&l).await;
            }
        }
    }

    /// Reconciles the node with what `link`'s authority (and its tickets) want, then
    /// reports the slivers to the authority.
    pub async fn reconcile_and_report(&self, link: &Link) {
        if link.is_retired() {
            return;
        }
        let problems = {
            let mut st = self.work.lock().await;
            let p = self.reconcile(link, &mut st).await;
            if let Err(e) = self.state_file.save(&mut st, credentials::now()) {
                tracing::error!("saving the state: {e}");
            }
            p
        };
        if let Err(e) = self.report(link, &problems).await {
            tracing::debug!(authority = %link.name, "ReportSlivers: {e}");
        }
    }

    /// The slices `link`'s authority wants here (from its last good answer and the
    /// tickets redeemed), keeping only those below its name.
    fn wanted(&self, link: &Link, st: &State, problems: &mut Problems) -> Vec<Desired> {
        let mut out = Vec::new();
        let central = st.cache.get(link.name.as_str()).map(|c| c.slices.clone()).unwrap_or_default();
        for s in central {
            match self.desired_of(link, &s) {
                Ok(d) => out.push(d),
                Err(e) => {
                    problems.insert(s.name.clone(), Problem::here(e));
                }
            }
        }
        for (name, t) in st.tickets.iter().filter(|(_, t)| t.authority == link.name.as_str()) {
            let d = SliceName::parse(name).map_err(|e| e.to_string()).and_then(|n| {
                let r = RSpec::from_xml(&t.rspec).map_err(|e| e.to_string())?;
                plan::desired(&n, None, true, t.expires, &r, Source::Ticket)
            });
            match d {
                Ok(d) => out.push(d),
                Err(e) => {
                    problems.insert(name.clone(), Problem::here(e));
                }
            }
        }
        out
    }

    fn desired_of(&self, link: &Link, s: &NodeSlice) -> Result<Desired, String> {
        let name = SliceName::parse(&s.name).map_err(|e| format!("{}: {e}", s.name))?;
        if !link.name.is_above(&name) {
            return Err(format!("{name} is not below authority {}, which this node's pool is for", link.name));
        }
        let rspec = RSpec::from_xml(&s.rspec).map_err(|e| format!("{name}: the authority's RSpec: {e}"))?;
        plan::desired(&name, Some(s.id), s.run == "start", s.expires, &rspec, Source::Central)
    }

    /// The VMs made from `link`'s pools, and the pools split from them that no VM holds.
    fn ours(&self, link: &Link, pools: &[PoolInfo], vms: &[VmInfo], st: &State) -> (Vec<Have>, Vec<String>) {
        let roots: BTreeSet<i64> = link.pools().iter().map(|p| p.id).collect();
        let by_id: BTreeMap<i64, &PoolInfo> = pools.iter().map(|p| (p.id, p)).collect();
        let from_ours = |p: &PoolInfo| {
            let mut cur = Some(p);
            let mut hops = 0;
            while let Some(c) = cur {
                if roots.contains(&c.id) {
                    return true;
                }
                hops += 1;
                cur = c.parent.and_then(|id| by_id.get(&id).copied()).filter(|_| hops < 64);
            }
            false
        };
        let mine: Vec<&PoolInfo> = pools.iter().filter(|p| !roots.contains(&p.id) && from_ours(p)).collect();
        let vm_names: BTreeSet<&str> = mine.iter().filter_map(|p| p.vm.as_deref()).collect();
        let has_children: BTreeSet<i64> = pools.iter().filter_map(|p| p.parent).collect();
        // Only pools the service split for slices below the authority are its to give back.
        let loose = mine
            .iter()
            .filter(|p| p.vm.is_none() && !has_children.contains(&p.id) && link.name.is_above(&p.slice))
            .map(|p| p.rcap.clone())
            .collect();
        let have = vms
            .iter()
            .filter(|v| vm_names.contains(v.vm.as_str()))
            .filter_map(|v| {
                let rspec = RSpec::from_xml(&v.rspec).ok()?;
                let RSpecClass::Slice(spec) = rspec.class else { return None };
                Some(Have {
                    vm: v.vm.clone(),
                    slice: v.slice.clone(),
                    wanted: v.wanted,
                    live: v.state,
                    spec,
                    resources: rspec.resources,
                    slice_id: st.slice_ids.get(&v.vm).copied(),
                })
            })
            .collect();
        (have, loose)
    }

    /// Brings the node in line with `link`'s wanted slices. Returns what failed, by slice
    /// (in the last pass).
    async fn reconcile(&self, link: &Link, st: &mut State) -> Problems {
        let mut problems = Problems::new();
        // A pass can leave work for the next (a destroyed VM's pools come loose, a slice
        // that failed frees room another needs): at most three passes, and only while
        // each still finds something to do.
        for _ in 0..3 {
            problems.clear();
            let (pools, vms) = match self.node_view().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("the node manager: {e}");
                    return problems;
                }
            };
            let want = self.wanted(link, st, &mut problems);
            let (have, loose) = self.ours(link, &pools, &vms, st);
            let actions = plan::plan(&want, &have, &loose, credentials::now());
            tracing::debug!(authority = %link.name, want = want.len(), have = have.len(), ?actions, "reconcile");
            if actions.is_empty() {
                break;
            }
            for a in actions {
                if let Err((slice, e)) = self.apply(link, &a, st).await {
                    tracing::warn!(authority = %link.name, "{slice}: {}", e.msg);
                    problems.insert(slice, e);
                }
            }
        }
        problems
    }

    async fn node_view(&self) -> Result<(Vec<PoolInfo>, Vec<VmInfo>), ClientError> {
        let pools = self.nm.call::<nm_calls::ListPools>(jsonrpc::NoParams::default()).await?.pools;
        let vms = self.nm.call::<nm_calls::ListVMs>(jsonrpc::NoParams::default()).await?.vms;
        Ok((pools, vms))
    }

    /// Splits `rspec` off one of the link's pools that can give it: the sub-pool's rcap.
    async fn split(&self, link: &Link, rspec: &RSpec) -> Result<String, Problem> {
        let want = rspec.vm_type();
        let mut last = Problem {
            code: Some(ErrorCode::UNSUPPORTED),
            msg: format!(
                "no pool of authority {} is for {}",
                link.name,
                want.map(|t| t.to_string()).unwrap_or_default()
            ),
        };
        for p in link.pools().iter().filter(|p| p.vm_type.is_none() || p.vm_type == want) {
            let params = nm_api::SplitPoolParams { rcap: p.rcap.clone(), rspec: rspec.to_xml() };
            match self.nm.call::<nm_calls::SplitPool>(params).await {
                Ok(r) => return Ok(r.rcap),
                Err(e) => last = Problem::call("SplitPool", e),
            }
        }
        Err(last)
    }

    /// Binds `sub` to `slice`; on failure gives the pool back.
    async fn bind(&self, sub: String, slice: &SliceName) -> Result<VmInfo, Problem> {
        let params = nm_api::BindParams { rcap: sub.clone(), slice_name: slice.clone() };
        match self.nm.call::<nm_calls::Bind>(params).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if let Err(de) = self.nm.call::<nm_calls::DestroyPool>(nm_api::RcapParams { rcap: sub }).await {
                    tracing::warn!(%slice, "giving back the pool of a failed Bind: {de} (it is given back next time)");
                }
                Err(Problem::call("Bind", e))
            }
        }
    }

    async fn apply(&self, link: &Link, a: &Action, st: &mut State) -> Result<(), (String, Problem)> {
        let vm_call = |vm: &str| nm_api::VmParams { vm: vm.to_owned() };
        fn fail(slice: &str) -> impl FnOnce(Problem) -> (String, Problem) + '_ {
            move |e| (slice.to_owned(), e)
        }
        fn nm_fail<'a>(vm: &'a str, what: &'a str) -> impl FnOnce(ClientError) -> (String, Problem) + 'a {
            move |e| (vm.to_owned(), Problem::call(what, e))
        }
        match a {
            Action::DropPool(rcap) => self
                .nm
                .call::<nm_calls::DestroyPool>(nm_api::RcapParams { rcap: rcap.clone() })
                .await
                .map(|_| ())
                .map_err(nm_fail("(pool)", "DestroyPool")),
            Action::Create(d) => {
                let rspec = RSpec { class: RSpecClass::Slice(d.vm.clone()), resources: d.resources };
                let sub = self.split(link, &rspec).await.map_err(fail(d.name.as_str()))?;
                let vm = self.bind(sub, &d.name).await.map_err(fail(d.name.as_str()))?;
                match d.id {
                    Some(id) => st.slice_ids.insert(vm.vm.clone(), id),
                    None => st.slice_ids.remove(&vm.vm),
                };
                tracing::info!(authority = %link.name, slice = %d.name, vm = %vm.vm, "created");
                Ok(())
            }
            Action::Grow { vm, slice, extra, spec } => {
                let rspec = RSpec { class: RSpecClass::Slice(spec.clone()), resources: *extra };
                let sub = self.split(link, &rspec).await.map_err(fail(slice.as_str()))?;
                self.bind(sub, slice).await.map_err(fail(slice.as_str()))?;
                tracing::info!(%slice, %vm, "resources added");
                Ok(())
            }
            Action::Update { vm, keys, bootscript } => self
                .nm
                .call::<nm_calls::UpdateVM>(nm_api::UpdateVmParams {
                    vm: vm.clone(),
                    keys: keys.clone(),
                    bootscript: bootscript.clone(),
                })
                .await
                .map(|_| ())
                .map_err(nm_fail(vm, "UpdateVM")),
            Action::Start(vm) => {
                self.nm.call::<nm_calls::StartVM>(vm_call(vm)).await.map(|_| ()).map_err(nm_fail(vm, "StartVM"))
            }
            Action::Stop(vm) => {
                self.nm.call::<nm_calls::StopVM>(vm_call(vm)).await.map(|_| ()).map_err(nm_fail(vm, "StopVM"))
            }
            Action::Destroy(vm) => {
                self.nm.call::<nm_calls::DestroyVM>(vm_call(vm)).await.map_err(nm_fail(vm, "DestroyVM"))?;
                st.slice_ids.remove(vm);
                tracing::info!(authority = %link.name, %vm, "removed");
                Ok(())
            }
        }
    }

    /// Reports the slivers of `link`'s slices on this node.
    async fn report(&self, link: &Link, problems: &Problems) -> Result<(), String> {
        let (pools, vms) = self.node_view().await.map_err(|e| e.to_string())?;
        let st = self.work.lock().await.clone();
        let mut ignored = Problems::new();
        let want = self.wanted(link, &st, &mut ignored);
        let (have, _) = self.ours(link, &pools, &vms, &st);
        let now = credentials::now();
        let mut out: BTreeMap<String, SliverReport> = BTreeMap::new();
        for d in want.iter().filter(|d| d.expires > now) {
            let h = have.iter().find(|h| h.slice == d.name);
            let v = h.and_then(|h| vms.iter().find(|v| v.vm == h.vm));
            let state = match (v, d.run) {
                (Some(v), _) => match v.state {
                    Some(VmState::Running) => "running",
                    Some(VmState::Stopped) => "stopped",
                    _ => "missing",
                },
                (None, false) => "stopped",
                (None, true) => "failed",
            };
            out.insert(
                d.name.to_string(),
                SliverReport {
                    slice: d.name.to_string(),
                    state: state.into(),
                    address: v.map(|v| v.address.clone()),
                    ssh: v.map(|v| v.ssh_command.clone()),
                    message: problems
                        .get(d.name.as_str())
                        .or_else(|| problems.get(&d.name.login()))
                        .map(|p| p.msg.clone()),
                },
            );
        }
        let failed: Vec<(String, String)> = problems
            .iter()
            .filter(|(s, _)| !out.contains_key(*s) && SliceName::parse(s).is_ok())
            .map(|(s, e)| (s.clone(), e.msg.clone()))
            .collect();
        for (slice, e) in failed {
            let r = SliverReport {
                slice: slice.clone(),
                state: "failed".into(),
                address: None,
                ssh: None,
                message: Some(e),
            };
            out.insert(slice, r);
        }
        let mut guard = link.reporter.lock().await;
        if guard.is_none() {
            *guard = Some(self.session(link).await?);
        }
        let Some(c) = guard.as_mut() else { return Ok(()) };
        let params =
            plab_authority::types::ReportSliversParams { node_id: self.node_id, slivers: out.into_values().collect() };
        if let Err(e) = c.request::<plab_authority::api::calls::ReportSlivers>(&params).await {
            *guard = None;
            return Err(e.to_string());
        }
        Ok(())
    }

    /// Redeems a ticket (section 4.5): checks it, makes (or refreshes) the slice's VM within
    /// the pool of the authority that signed it, and answers with how to log in.
    pub async fn redeem(self: &Arc<Self>, t: &SignedTicket) -> Result<Redeemed, RpcError> {
        let now = credentials::now();
        // Which of this node's authorities signed it (tickets are checked against the
        // certificate in the owner's pool, never against the one the ticket carries).
        // Several pools may name authorities with the same key (an authority and one below
        // it): the ticket's slice must be below the one that is used.
        let mut verified = None;
        let mut why = Vec::new();
        let mut not_below = false;
        for l in self.links() {
            match t.verify(&l.sa, now) {
                Ok(body) => {
                    let name = SliceName::parse(&body.slice)
                        .map_err(|e| refused(ErrorCode::INVALID_PARAMS, format!("ticket: slice: {e}")))?;
                    if l.name.is_above(&name) {
                        verified = Some((l, body, name));
                        break;
                    }
                    not_below = true;
                    why.push(format!("slice {name} is not below {}", l.name));
                }
                Err(credentials::CredentialError::Expired(m)) => {
                    return Err(refused(ErrorCode::CONFLICT, format!("ticket: {m}")))
                }
                Err(e) => why.push(format!("{}: {e}", l.name)),
            }
        }
        let Some((link, body, name)) = verified else {
            let why = if why.is_empty() { "it has none".to_string() } else { why.join("; ") };
            return Err(if not_below {
                refused(ErrorCode::PERMISSION_DENIED, format!("ticket: {why}, the authority this node's pool is for"))
            } else {
                refused(
                    ErrorCode::NOT_AUTHENTICATED,
                    format!("ticket: not signed by a slice authority this node has a pool for ({why})"),
                )
            });
        };
        if body.issued > now + 300 {
            return Err(refused(ErrorCode::CONFLICT, "ticket: issued in the future (check the clocks)"));
        }
        if !body.nodes.is_empty() && !body.nodes.contains(&self.node_id) {
            return Err(refused(
                ErrorCode::PERMISSION_DENIED,
                format!("ticket: it is for node(s) {:?}, not this node ({})", body.nodes, self.node_id),
            ));
        }
        let rspec = RSpec::from_xml(&body.rspec)
            .map_err(|e| refused(ErrorCode::INVALID_RSPEC, format!("ticket: rspec: {e}")))?;
        let keep_until = body.slice_expires.unwrap_or(body.expires);
        plan::desired(&name, None, true, keep_until, &rspec, Source::Ticket)
            .map_err(|e| refused(ErrorCode::INVALID_RSPEC, format!("ticket: {e}")))?;
        let mut st = self.work.lock().await;
        if st.nonces.contains_key(&body.nonce) {
            return Err(refused(ErrorCode::CONFLICT, "ticket: already redeemed on this node (a replay)"));
        }
        let before = st.tickets.get(name.as_str()).cloned();
        st.tickets.insert(
            name.to_string(),
            TicketSlice { authority: link.name.to_string(), expires: keep_until, rspec: body.rspec.clone() },
        );
        let problems = self.reconcile(&link, &mut st).await;
        let vm = self
            .nm
            .call::<nm_calls::VmStatus>(nm_api::VmParams { vm: name.login() })
            .await
            .ok()
            .filter(|v| v.state == Some(VmState::Running) || v.wanted == Wanted::Running);
        let result = match (vm, problems.get(name.as_str())) {
            (Some(v), None) => {
                st.nonces.insert(body.nonce.clone(), body.expires);
                Ok(Redeemed {
                    slice: name.to_string(),
                    vm: v.vm,
                    state: v.state.map(|s| s.to_string()).unwrap_or_else(|| v.wanted.to_string()),
                    ssh: v.ssh_command,
                    expires: keep_until,
                })
            }
            (_, problem) => {
                // Nothing was made: the ticket stays unused.
                match before {
                    Some(b) => st.tickets.insert(name.to_string(), b),
                    None => st.tickets.remove(name.as_str()),
                };
                let problem = problem.cloned().unwrap_or_else(|| Problem::here("the VM did not come up"));
                let code = match problem.code {
                    Some(c @ (ErrorCode::RESOURCES | ErrorCode::PERMISSION_DENIED | ErrorCode::UNSUPPORTED)) => c,
                    Some(ErrorCode::INVALID_RSPEC) => ErrorCode::INVALID_RSPEC,
                    _ => ErrorCode::BACKEND,
                };
                Err(refused(code, format!("{name}: {}", problem.msg)))
            }
        };
        if let Err(e) = self.state_file.save(&mut st, now) {
            tracing::error!("saving the state: {e}");
        }
        drop(st);
        // The authority hears of the new sliver in the background: the user has waited
        // long enough.
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.report(&link, &Problems::new()).await {
                tracing::debug!("ReportSlivers: {e}");
            }
        });
        result
    }
}
