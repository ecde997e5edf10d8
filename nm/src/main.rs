//! `plab-nm`: the node manager daemon.

use anyhow::Context;
use clap::{Parser, Subcommand};
use plab_nm::config::AcceleratorSetting;
use plab_nm::node::NodeFacts;
use plab_nm::{server, Config, NodeManager};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vm_types::{Registry, VmType};

#[derive(Parser)]
#[command(name = "plab-nm", version, about = "The plab node manager")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the local API until SIGTERM or SIGINT.
    Serve {
        /// TOML settings file (every key optional; see the README).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `state_dir`.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Overrides `socket`.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Overrides `node_netns`.
        #[arg(long)]
        node_netns: Option<String>,
        /// Overrides `image_dir`.
        #[arg(long)]
        image_dir: Option<PathBuf>,
    },
    /// Say whether KVM really runs stock guests on this host, and why (exit 0 either way).
    #[cfg(feature = "kvm-probe")]
    ProbeKvm,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PLAB_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let (config, state_dir, socket, node_netns, image_dir) = match Cli::parse().cmd {
        #[cfg(feature = "kvm-probe")]
        Cmd::ProbeKvm => {
            let facts = vm_types::accel::probe(std::time::Duration::from_secs(5));
            let a = vm_types::accel::decide(&facts);
            println!("accelerator: {}", a.name());
            if let vm_types::accel::Accelerator::Tcg(why) = &a {
                println!("reason: {why}");
            }
            println!("facts: {facts:?}");
            return Ok(());
        }
        Cmd::Serve { config, state_dir, socket, node_netns, image_dir } => {
            (config, state_dir, socket, node_netns, image_dir)
        }
    };
    let mut cfg = match &config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(v) = state_dir {
        cfg.state_dir = v;
    }
    if let Some(v) = socket {
        cfg.socket = v;
    }
    if let Some(v) = node_netns {
        cfg.node_netns = Some(v);
    }
    if let Some(v) = image_dir {
        cfg.image_dir = v;
    }
    cfg.validate()?;
    // Keep a handle on the host's network namespace (libvirtd's), so that guest taps made
    // there can be moved into the node's namespace.
    let host_netns = std::fs::File::open("/proc/self/ns/net").context("opening /proc/self/ns/net")?;
    let host_netns_path = {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), host_netns.as_raw_fd()))
    };
    // Enter the node's network namespace while still single-threaded: setns applies to the
    // calling thread only, and every thread and child made afterwards inherits it.
    if let Some(ns) = &cfg.node_netns {
        let path = PathBuf::from("/var/run/netns").join(ns);
        let f = std::fs::File::open(&path).with_context(|| {
            format!("node_netns: {} does not exist (create it with `ip netns add {ns}`)", path.display())
        })?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).context("node_netns: setns failed (run as root)")?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let r = rt.block_on(serve(cfg, host_netns_path));
    drop(host_netns);
    r
}

/// The accelerator hypervisor VM types get, and why.
fn accelerator(setting: AcceleratorSetting) -> (String, String) {
    match setting {
        AcceleratorSetting::Kvm => ("kvm".into(), "forced by the accelerator setting".into()),
        AcceleratorSetting::Tcg => ("tcg".into(), "forced by the accelerator setting".into()),
        #[cfg(feature = "kvm-probe")]
        AcceleratorSetting::Auto => {
            match vm_types::accel::decide(&vm_types::accel::probe(std::time::Duration::from_secs(5))) {
                vm_types::accel::Accelerator::Kvm => ("kvm".into(), "KVM ran a test guest".into()),
                vm_types::accel::Accelerator::Tcg(why) => {
                    tracing::warn!(
                        "hypervisor guests will run under TCG (slow): {why}; set accelerator = \"kvm\" to override"
                    );
                    ("tcg".into(), why)
                }
            }
        }
        #[cfg(not(feature = "kvm-probe"))]
        AcceleratorSetting::Auto => ("tcg".into(), "this node manager was built without the KVM probe".into()),
    }
}

fn registry(cfg: &Config, accel: &str, host_netns: &Path) -> anyhow::Result<Registry> {
    let mut reg = Registry::new();
    if cfg.fake_backend {
        tracing::warn!(
            "fake_backend: VMs of every type are records in memory, not VMs (for measuring the control path)"
        );
        for t in [VmType::LinuxVserverX86, VmType::LinuxKvmX86] {
            reg.register(Arc::new(vm_types::fake::FakeBackend::of(t)));
        }
        return Ok(reg);
    }
    #[cfg(feature = "vserver")]
    {
        use vm_types::Backend;
        let vserver = vm_types::vserver::VserverBackend::new(
            vm_types::vserver::VserverConfig {
                vm_dir: cfg.state_dir.join("vms"),
                image_dir: cfg.image_dir.clone(),
                runtime: cfg.oci_runtime.clone(),
                runtime_root: cfg.state_dir.join("runc"),
                bridge: cfg.bridge.clone(),
                stop_timeout: std::time::Duration::from_secs(cfg.stop_timeout_secs),
                scope: cfg.instance.clone(),
                uid_base: cfg.vm_uid_base,
                lxcfs_dir: (!cfg.lxcfs_dir.as_os_str().is_empty()).then(|| cfg.lxcfs_dir.clone()),
            },
            vm_types::host::linux(),
        );
        // A node without what containers need (a Xen dom0, say) still offers the
        // hypervisor VM types; NodeInfo says why containers are not offered.
        match vserver.and_then(|v| v.check().map(|()| v)) {
            Ok(vserver) => reg.register(Arc::new(vserver)),
            Err(e) => {
                tracing::warn!("{} is unavailable on this node: {e}", VmType::LinuxVserverX86);
                reg.mark_unavailable(VmType::LinuxVserverX86, e.to_string());
            }
        }
    }
    #[cfg(not(feature = "vserver"))]
    reg.mark_unavailable(VmType::LinuxVserverX86, "this node manager was built without the vserver feature");
    for t in [VmType::LinuxKvmX86, VmType::LinuxXenX86] {
        match libvirt_backend(cfg, t, accel, host_netns) {
            Ok(b) => reg.register(b),
            Err(e) => {
                tracing::info!("{t} is unavailable on this node: {e:#}");
                reg.mark_unavailable(t, format!("{e:#}"));
            }
        }
    }
    if reg.types().is_empty() {
        anyhow::bail!("no VM type is usable on this node (see the warnings above)");
    }
    Ok(reg)
}

/// linux-kvm-x86 through `libvirt_uri`, or linux-xen-x86 through a Xen host's libvirt
/// (`xen:///system`), when libvirt answers and the guest image (`guest_image`) is there.
#[cfg(feature = "libvirt")]
fn libvirt_backend(
    cfg: &Config,
    vm_type: VmType,
    accel: &str,
    host_netns: &Path,
) -> anyhow::Result<Arc<dyn vm_types::Backend>> {
    use vm_types::libvirt::{GuestImage, LibvirtBackend, LibvirtConfig};
    use vm_types::Backend;
    let xen = vm_type == VmType::LinuxXenX86;
    let image = GuestImage::open(&cfg.guest_image)?;
    std::fs::create_dir_all(&cfg.guest_dir)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.guest_dir, std::fs::Permissions::from_mode(0o711))?;
    }
    if xen && !Path::new("/proc/xen").exists() {
        anyhow::bail!("this host is not a Xen host (no /proc/xen): linux-xen-x86 needs Xen and libvirt's Xen driver");
    }
    let b = LibvirtBackend::connect(
        LibvirtConfig {
            uri: if xen { "xen:///system".into() } else { cfg.libvirt_uri.clone() },
            vm_type,
            domain_type: if xen {
                "xen".into()
            } else if accel == "kvm" {
                "kvm".into()
            } else {
                "qemu".into()
            },
            vm_dir: cfg.guest_dir.clone(),
            image,
            bridge: cfg.bridge.clone(),
            stop_timeout: std::time::Duration::from_secs(cfg.stop_timeout_secs),
            tap_move: if xen { None } else { cfg.node_netns.clone().map(|ns| (host_netns.to_owned(), ns)) },
            owner: LibvirtConfig::owner_of(&cfg.guest_dir),
            scope: cfg.instance.clone(),
            dom0_min_available_mb: if xen { cfg.xen_dom0_min_available_mb } else { 0 },
        },
        vm_types::host::linux(),
    )?;
    b.check()?;
    Ok(Arc::new(b))
}

#[cfg(not(feature = "libvirt"))]
fn libvirt_backend(_: &Config, _: VmType, _: &str, _: &Path) -> anyhow::Result<Arc<dyn vm_types::Backend>> {
    anyhow::bail!("this node manager was built without the libvirt feature")
}

/// Seconds between rounds of VM upkeep (console logs rotated).
const UPKEEP_SECS: u64 = 5;

/// Problems on this host that make VMs slow, fail or see the host, each with its fix.
fn warnings(cfg: &Config) -> Vec<String> {
    let mut w = Vec::new();
    #[cfg(feature = "libvirt")]
    if cfg.libvirt_uri.starts_with("qemu:") {
        if let Err(e) = vm_types::libvirt::qemu_user_can_open_kvm(Path::new("/dev/kvm")) {
            w.push(e);
        }
    }
    #[cfg(feature = "vserver")]
    if !cfg.fake_backend {
        if let Some(e) = vm_types::vserver::lxcfs_problem(&cfg.lxcfs_dir) {
            w.push(e);
        }
    }
    w
}

async fn serve(cfg: Config, host_netns: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("state_dir {}", cfg.state_dir.display()))?;
    let (accel, why) = accelerator(cfg.accelerator);
    let warnings = warnings(&cfg);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let reg = registry(&cfg, &accel, &host_netns)?;
    vm_types::host::ensure_bridge(&*vm_types::host::linux(), &cfg.bridge, cfg.vm_prefix.gateway(), cfg.vm_prefix.len)
        .context("node bridge")?;
    // Owner-only unless local services act as slices; SO_PEERCRED decides either way.
    let mode = if cfg.slice_uids.is_empty() { 0o600 } else { 0o666 };
    let listener =
        server::bind_socket(&cfg.socket, mode).with_context(|| format!("socket {}", cfg.socket.display()))?;
    let host = (!cfg.fake_backend).then(vm_types::host::linux);
    let nm = NodeManager::open_with_network(cfg.clone(), reg, host)?;
    nm.set_facts(NodeFacts { accelerator: Some((accel, why)), warnings });
    for line in nm.reconcile().await {
        tracing::warn!("reconcile: {line}");
    }
    tracing::info!(socket = %cfg.socket.display(), state = %cfg.state_dir.display(), "plab-nm serving");
    let serving = tokio::spawn(server::serve(nm.clone(), listener));
    let upkeep = nm.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(UPKEEP_SECS));
        loop {
            every.tick().await;
            upkeep.maintain().await;
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    serving.abort();
    let _ = std::fs::remove_file(&cfg.socket);
    tracing::info!("plab-nm stopped (VMs keep running)");
    Ok(())
}
