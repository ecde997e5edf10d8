//! `plab-audit serve`: the node's auditing service. See the crate documentation.

use anyhow::Context;
use clap::{Parser, Subcommand};
use plab_audit::authority::AuthorityLink;
use plab_audit::capture::{self, Capture, Timeouts};
use plab_audit::config::Config;
use plab_audit::conntrack::{NatPorts, Tuple};
use plab_audit::contacts::Contacts;
use plab_audit::spool::{self, Sink};
use plab_audit::store::{FlowRecord, Store};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "plab-audit", version, about = "The node's auditing service: flows per VM and the public query")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Captures on every VM interface and serves the public query.
    Serve {
        /// Settings file (TOML; every key optional).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `nm_socket`.
        #[arg(long)]
        nm_socket: Option<PathBuf>,
        /// Overrides `db`.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Overrides `listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PLAB_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let Cmd::Serve { config, nm_socket, db, listen } = Cli::parse().cmd;
    let mut cfg = match config {
        Some(p) => Config::load(&p)?,
        None => Config::default(),
    };
    if let Some(v) = nm_socket {
        cfg.nm_socket = v;
    }
    if let Some(v) = db {
        cfg.db = v;
    }
    if let Some(v) = listen {
        cfg.listen = v;
    }
    cfg.validate()?;
    // The node manager says where the node's networking lives; join it while still
    // single-threaded, so every capture and the public listener are there.
    let info = plab_nm::NmClient::connect(&cfg.nm_socket)
        .with_context(|| format!("nm_socket: no node manager at {}", cfg.nm_socket.display()))?
        .call_value("NodeInfo", serde_json::json!({}))
        .context("NodeInfo")?;
    let public: Option<Ipv4Addr> = info["public_address"].as_str().and_then(|a| a.parse().ok());
    let vm_net = info["vm_prefix"].as_str().and_then(plab_audit::vms::prefix);
    if let Some(ns) = info["node_netns"].as_str() {
        let path = PathBuf::from("/var/run/netns").join(ns);
        let f = std::fs::File::open(&path).with_context(|| format!("the node's namespace {}", path.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the node's namespace (run as root)")?;
    }
    if let Some(dir) = cfg.db.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("db: {}", dir.display()))?;
    }
    let store = Arc::new(Mutex::new(Store::open(&cfg.db).with_context(|| format!("db: {}", cfg.db.display()))?));
    let (tx, rx) = mpsc::channel::<Vec<FlowRecord>>();
    let stop = Arc::new(AtomicBool::new(false));
    // The exact port the node's NAT gave each connection, from conntrack's events.
    let ports = Arc::new(NatPorts::default());
    let conntrack = {
        let (ports, stop) = (ports.clone(), stop.clone());
        std::thread::spawn(move || {
            if let Err(e) = plab_audit::conntrack::listen(&ports, &stop) {
                tracing::warn!(
                    "conntrack events: {e}: outbound flows name the VM's block of NAT ports, not the exact port"
                );
            }
        })
    };
    let writer = {
        let (store, ports) = (store.clone(), ports.clone());
        let retention_ms = i64::try_from(cfg.retention_days * 86_400_000).unwrap_or(i64::MAX);
        std::thread::spawn(move || write_flows(&store, &rx, retention_ms, &ports))
    };
    let metrics = Arc::new(plab_audit::metrics::Metrics::default());
    let link = match &cfg.archive_url {
        Some(url) => {
            let root = cfg.archive_root.as_ref().context("archive_root")?;
            let root_pem =
                std::fs::read_to_string(root).with_context(|| format!("archive_root: {}", root.display()))?;
            Some(AuthorityLink {
                url: url.clone(),
                root_pem,
                service: cfg.archive_service.clone(),
                nm_socket: cfg.nm_socket.clone(),
            })
        }
        None => None,
    };
    // The people responsible for each slice, from the authority when there is one.
    let contacts = Contacts::default();
    let contacts_thread = link.clone().map(|link| {
        let (contacts, stop, metrics) = (contacts.clone(), stop.clone(), metrics.clone());
        std::thread::spawn(move || {
            let slices =
                || metrics.vms.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|v| v.slice.clone()).collect();
            plab_audit::contacts::run(&link, slices, &contacts, &stop)
        })
    });
    let manager = {
        let (cfg, stop, metrics, contacts) = (cfg.clone(), stop.clone(), metrics.clone(), contacts.clone());
        let t = Timeouts {
            idle_ms: i64::try_from(cfg.idle_timeout_secs * 1000).unwrap_or(15_000),
            active_ms: i64::try_from(cfg.active_timeout_secs * 1000).unwrap_or(60_000),
        };
        std::thread::spawn(move || manage(&cfg, (public, vm_net), t, &tx, &stop, &metrics, &contacts))
    };
    let mut sinks: Vec<Box<dyn Sink + Send>> = Vec::new();
    if let Some(link) = link {
        let epoch = store.lock().unwrap_or_else(|p| p.into_inner()).epoch().context("db: its epoch")?;
        tracing::info!(url = %link.url, service = %link.service, "uploading flows to the archive");
        sinks.push(Box::new(spool::Archive::new(link, epoch)));
    }
    if let Some(collector) = cfg.ipfix_collector {
        let exporter = plab_audit::ipfix::Exporter::new(collector, cfg.ipfix_domain)
            .with_context(|| format!("ipfix_collector: {collector}"))?;
        tracing::info!(%collector, domain = cfg.ipfix_domain, "exporting IPFIX");
        sinks.push(Box::new(spool::Ipfix { collector, exporter }));
    }
    // Senders stop after the writer, so they send what the captures flushed last.
    let sinks_stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = sinks
        .into_iter()
        .map(|mut sink| {
            let (store, stop) = (store.clone(), sinks_stop.clone());
            std::thread::spawn(move || spool::run(&store, sink.as_mut(), &stop))
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("listen: {}", cfg.listen))?;
        tracing::info!(listen = %cfg.listen, db = %cfg.db.display(), "plab-audit serving");
        let server = tokio::spawn(plab_audit::http::serve(listener, store.clone(), metrics.clone()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        server.abort();
        anyhow::Ok(())
    })?;
    // Every flow being counted is stored before the service ends.
    stop.store(true, Ordering::Relaxed);
    let _ = manager.join();
    let _ = conntrack.join();
    if let Some(t) = contacts_thread {
        let _ = t.join();
    }
    let _ = writer.join();
    sinks_stop.store(true, Ordering::Relaxed);
    for s in senders {
        let _ = s.join();
    }
    tracing::info!("plab-audit stopped, flows stored");
    Ok(())
}

/// Stores what the captures hand on; sweeps old flows every hour. Ends when every
/// capture (and the manager) has gone.
fn write_flows(store: &Mutex<Store>, rx: &mpsc::Receiver<Vec<FlowRecord>>, retention_ms: i64, ports: &NatPorts) {
    let mut swept = Instant::now() - Duration::from_secs(3600);
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(mut flows) => {
                for f in flows.iter_mut().filter(|f| f.post_nat_src.is_some()) {
                    let orig = Tuple { proto: f.proto, src: f.src, sport: f.sport, dst: f.dst, dport: f.dport };
                    if let Some(port) = ports.port(&orig, f.first_ms, f.last_ms) {
                        f.set_post_nat_port(port);
                    }
                }
                if let Err(e) = store.lock().unwrap_or_else(|p| p.into_inner()).insert(&flows) {
                    tracing::error!("storing {} flows failed: {e:#}", flows.len());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if swept.elapsed() >= Duration::from_secs(3600) {
            swept = Instant::now();
            match store.lock().unwrap_or_else(|p| p.into_inner()).sweep(capture::now_ms() - retention_ms) {
                Ok(n) if n > 0 => tracing::info!(removed = n, "retention"),
                Err(e) => tracing::error!("retention sweep: {e:#}"),
                _ => {}
            }
        }
    }
}

/// Keeps one capture per running VM's interface, following the node manager's records.
fn manage(
    cfg: &Config,
    (public, vm_net): (Option<Ipv4Addr>, Option<(Ipv4Addr, u8)>),
    t: Timeouts,
    tx: &mpsc::Sender<Vec<FlowRecord>>,
    stop: &AtomicBool,
    metrics: &plab_audit::metrics::Metrics,
    contacts: &Contacts,
) {
    let mut captures: HashMap<String, Capture> = HashMap::new();
    let mut nm: Option<plab_nm::NmClient> = None;
    while !stop.load(Ordering::Relaxed) {
        if nm.is_none() {
            nm = plab_nm::NmClient::connect(&cfg.nm_socket).ok();
        }
        let list = nm.as_mut().map(|c| c.call_value("ListVMs", serde_json::json!({})));
        match list {
            Some(Ok(list)) => {
                let mut vms = plab_audit::vms::from_list(&list, public, vm_net);
                plab_audit::contacts::apply(contacts, vms.iter_mut());
                // Ended captures (their interface went away) and VMs no longer running.
                let live: Vec<&str> = vms.iter().map(|v| v.iface.as_str()).collect();
                let gone: Vec<String> = captures
                    .iter()
                    .filter(|(i, c)| c.ended() || !live.contains(&i.as_str()))
                    .map(|(i, _)| i.clone())
                    .collect();
                for i in gone {
                    if let Some(c) = captures.remove(&i) {
                        capture::stop(c);
                    }
                }
                *metrics.vms.lock().unwrap_or_else(|p| p.into_inner()) = vms.clone();
                for v in vms {
                    match captures.get(&v.iface) {
                        Some(c) => *c.meta.lock().unwrap_or_else(|p| p.into_inner()) = v,
                        None => {
                            let iface = v.iface.clone();
                            match capture::start(v, t, tx.clone()) {
                                Ok(c) => {
                                    tracing::info!(%iface, "capturing");
                                    captures.insert(iface, c);
                                }
                                Err(e) => tracing::warn!(%iface, "cannot capture: {e}"),
                            }
                        }
                    }
                }
            }
            Some(Err(e)) => {
                tracing::warn!("node manager: {e}");
                nm = None;
            }
            None => tracing::warn!(socket = %cfg.nm_socket.display(), "the node manager does not answer"),
        }
        *metrics.captures.lock().unwrap_or_else(|p| p.into_inner()) = captures
            .iter()
            .map(|(i, c)| {
                (i.clone(), plab_audit::metrics::CaptureCounters { packets: c.packets.clone(), drops: c.drops.clone() })
            })
            .collect();
        let until = Instant::now() + capture::REFRESH;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            // The authority's names reach the flows being counted at once.
            let mut metas: Vec<_> =
                captures.values().map(|c| c.meta.lock().unwrap_or_else(|p| p.into_inner())).collect();
            plab_audit::contacts::apply(contacts, metas.iter_mut().map(|m| &mut **m));
        }
    }
    for (_, c) in captures.drain() {
        capture::stop(c);
    }
}
