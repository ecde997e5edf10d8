//! `plab-nm`: the node manager daemon.

use anyhow::Context;
use clap::{Parser, Subcommand};
use plab_nm::{server, Config, Node};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vm_types::Registry;

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
    ProbeKvm,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PLAB_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let (config, state_dir, socket, node_netns, image_dir) = match Cli::parse().cmd {
        Cmd::ProbeKvm => {
            let facts = vm_types::accel::probe(Duration::from_secs(5));
            let a = vm_types::accel::decide(&facts);
            println!("accelerator: {}", a.name());
            if let vm_types::accel::Accelerator::Tcg(why) = &a {
                println!("reason: {why}");
            }
            println!("facts: {facts:?}");
            return Ok(());
        }
        Cmd::Serve { config, state_dir, socket, node_netns, image_dir } => (config, state_dir, socket, node_netns, image_dir),
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
        let f = std::fs::File::open(&path)
            .with_context(|| format!("node_netns: {} does not exist (create it with `ip netns add {ns}`)", path.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).context("node_netns: setns failed (run as root)")?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let r = rt.block_on(serve(cfg, host_netns_path));
    drop(host_netns);
    r
}

fn registry(cfg: &Config, accel: &str, host_netns: &std::path::Path) -> anyhow::Result<Registry> {
    let mut reg = Registry::new();
    let vserver = vm_types::vserver::VserverBackend::new(vm_types::vserver::VserverConfig {
        vm_dir: cfg.state_dir.join("vms"),
        image_dir: cfg.image_dir.clone(),
        runtime: cfg.oci_runtime.clone(),
        runtime_root: cfg.state_dir.join("runc"),
        bridge: cfg.bridge.clone(),
        stop_timeout: Duration::from_secs(cfg.stop_timeout_secs),
    })?;
    use vm_types::Backend;
    let vserver_ok = match vserver.check() {
        Ok(()) => {
            reg.register(Arc::new(vserver));
            Ok(())
        }
        Err(e) => {
            tracing::warn!("linux-vserver-x86 is unavailable on this node: {e}");
            Err(e.to_string())
        }
    };
    for t in [vm_types::VmType::LinuxKvmX86, vm_types::VmType::LinuxXenX86] {
        match libvirt_backend(cfg, t, accel, host_netns) {
            Ok(b) => reg.register(Arc::new(b)),
            Err(e) => {
                tracing::info!("{t} is unavailable on this node: {e:#}");
                reg.mark_unavailable(t, format!("{e:#}"));
            }
        }
    }
    if let Err(e) = vserver_ok {
        reg.mark_unavailable(vm_types::VmType::LinuxVserverX86, e);
    }
    if reg.types().is_empty() {
        anyhow::bail!("no VM type is usable on this node (see the warnings above)");
    }
    Ok(reg)
}

/// linux-kvm-x86 through `libvirt_uri`, or linux-xen-x86 through a Xen host's libvirt
/// (`xen:///system`), when libvirt answers and the guest image (`guest_image`) is there.
fn libvirt_backend(
    cfg: &Config,
    vm_type: vm_types::VmType,
    accel: &str,
    host_netns: &std::path::Path,
) -> anyhow::Result<vm_types::libvirt::LibvirtBackend> {
    let xen = vm_type == vm_types::VmType::LinuxXenX86;
    use vm_types::Backend;
    let image = vm_types::libvirt::GuestImage::open(&cfg.guest_image)?;
    std::fs::create_dir_all(&cfg.guest_dir)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.guest_dir, std::fs::Permissions::from_mode(0o711))?;
    }
    if xen && !std::path::Path::new("/proc/xen").exists() {
        anyhow::bail!("this host is not a Xen host (no /proc/xen): linux-xen-x86 needs Xen and libvirt's Xen driver");
    }
    let b = vm_types::libvirt::LibvirtBackend::connect(vm_types::libvirt::LibvirtConfig {
        uri: if xen { "xen:///system".into() } else { cfg.libvirt_uri.clone() },
        vm_type,
        domain_type: if xen { "xen".into() } else if accel == "kvm" { "kvm".into() } else { "qemu".into() },
        vm_dir: cfg.guest_dir.clone(),
        image,
        bridge: cfg.bridge.clone(),
        stop_timeout: Duration::from_secs(cfg.stop_timeout_secs),
        tap_move: if xen { None } else { cfg.node_netns.clone().map(|ns| (host_netns.to_owned(), ns)) },
    })?;
    b.check()?;
    Ok(b)
}

async fn serve(cfg: Config, host_netns: PathBuf) -> anyhow::Result<()> {
    let prefix = plab_nm::config::Prefix::parse(&cfg.vm_prefix).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("state_dir {}", cfg.state_dir.display()))?;
    let (accel, why) = match cfg.accelerator.as_str() {
        "kvm" => ("kvm".to_string(), "forced by the accelerator setting".to_string()),
        "tcg" => ("tcg".to_string(), "forced by the accelerator setting".to_string()),
        _ => match vm_types::accel::decide(&vm_types::accel::probe(Duration::from_secs(5))) {
            vm_types::accel::Accelerator::Kvm => ("kvm".to_string(), "KVM ran a test guest".to_string()),
            vm_types::accel::Accelerator::Tcg(why) => {
                tracing::warn!("hypervisor guests will run under TCG (slow): {why}; set accelerator = \"kvm\" to override");
                ("tcg".to_string(), why)
            }
        },
    };
    let reg = registry(&cfg, &accel, &host_netns)?;
    vm_types::host::ensure_bridge(&cfg.bridge, prefix.gateway(), prefix.len).context("node bridge")?;
    // Owner-only unless local services act as slices; SO_PEERCRED decides either way.
    let mode = if cfg.slice_uids.is_empty() { 0o600 } else { 0o666 };
    let listener = server::bind_socket(&cfg.socket, mode).with_context(|| format!("socket {}", cfg.socket.display()))?;
    let node = Node::open(cfg.clone(), reg)?;
    node.set_accelerator(&accel, &why);
    for line in node.reconcile().await {
        tracing::warn!("reconcile: {line}");
    }
    tracing::info!(socket = %cfg.socket.display(), state = %cfg.state_dir.display(), "plab-nm serving");
    let serving = tokio::spawn(server::serve(node.clone(), listener));
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
