//! `plab-scs`: the slice creation service.

use clap::{Parser, Subcommand};
use plab_scs::{Config, Scs};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "plab-scs", version, about = "plab slice creation service")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service: follow the slice authorities named in the owner's pools for this
    /// service, and serve tickets when `ticket_listen` is set.
    Serve {
        /// Settings file (TOML; every key optional).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `nm_socket`.
        #[arg(long)]
        nm_socket: Option<PathBuf>,
        /// Overrides `state_dir`.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PLAB_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let Cmd::Serve { config, nm_socket, state_dir } = Cli::parse().cmd;
    let mut cfg = match config {
        Some(p) => Config::load(&p)?,
        None => Config::default(),
    };
    if let Some(s) = nm_socket {
        cfg.nm_socket = s;
    }
    if let Some(s) = state_dir {
        cfg.state_dir = s;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        // The node manager may still be starting, or the node still booting.
        let scs = loop {
            match Scs::open(cfg.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!("waiting for the node: {e}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        tracing::info!(node = scs.node_id, "plab-scs: node found");
        loop {
            match scs.discover().await {
                Ok(links) if !links.is_empty() => {
                    for l in links {
                        tracing::info!(authority = %l.name, url = %l.url, "following slice authority");
                        tokio::spawn(scs.clone().follow(l));
                    }
                    break;
                }
                Ok(_) => tracing::warn!(
                    "the owner has given this service no pool naming a slice authority (CreatePool with a slice_authority); waiting"
                ),
                Err(e) => tracing::warn!("reading the service's pools: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        tokio::spawn(scs.clone().resync_forever());
        if let Some(addr) = scs.config().ticket_listen {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("ticket_listen {addr}: {e}"))?;
            tracing::info!(%addr, "serving tickets");
            tokio::spawn(plab_scs::server::serve(scs.clone(), l));
        }
        tokio::signal::ctrl_c().await?;
        Ok(())
    })
}
