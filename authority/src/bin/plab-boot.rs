//! `plab-boot`: a node's boot manager (section 4.8.2).

use anyhow::Context;
use clap::{Parser, Subcommand};
use plab_authority::bootmgr::{serve_triggers, BootManager, Outcome, PlNode, TriggerServer};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "plab-boot", version, about = "plab node boot manager")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// The node configuration file from the MA.
    #[arg(long, global = true, default_value = "/etc/plab/plnode.txt")]
    plnode: PathBuf,
    /// The MA's boot server.
    #[arg(long, global = true, default_value = "https://boot.plab.example:8443")]
    server: String,
    /// The root CA certificate (from the boot medium).
    #[arg(long, global = true, default_value = "/etc/plab/root.pem")]
    root: PathBuf,
    /// Where the node keeps its state.
    #[arg(long, global = true, default_value = "/var/lib/plab/node")]
    state_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the boot process once and print the outcome.
    Run,
    /// Boot, then check for updates every --update-secs and re-boot when the MA triggers.
    Serve {
        /// Port to listen on (at the node's address) for the MA's trigger.
        #[arg(long, default_value_t = 8120)]
        trigger_port: u16,
        /// Seconds between update checks (a day by default).
        #[arg(long, default_value_t = 86400)]
        update_secs: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let text = std::fs::read_to_string(&cli.plnode).with_context(|| format!("{}", cli.plnode.display()))?;
    let plnode = PlNode::parse(&text).map_err(anyhow::Error::msg)?;
    let root = std::fs::read_to_string(&cli.root).with_context(|| format!("{}", cli.root.display()))?;
    let mut bm = BootManager::new(plnode, &cli.server, &root, &cli.state_dir)?;
    match cli.cmd {
        Cmd::Run => {
            let o = bm.boot(None)?;
            println!("{}", describe(&o));
        }
        Cmd::Serve { trigger_port, update_secs } => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let listener = rt
                .block_on(tokio::net::TcpListener::bind((bm.plnode.ip, trigger_port)))
                .with_context(|| format!("listening on {}:{trigger_port}", bm.plnode.ip))?;
            let (tx, mut rx) = tokio::sync::mpsc::channel(1);
            let server = Arc::new(TriggerServer::new(bm.plnode.node_id, bm.plnode.node_key.clone(), tx));
            rt.spawn(serve_triggers(server, listener));
            println!("{}", describe(&bm.boot(Some(trigger_port))?));
            loop {
                // The next trigger from the MA, or the daily update check, whichever comes first.
                match rt.block_on(tokio::time::timeout(Duration::from_secs(update_secs), rx.recv())) {
                    Ok(Some(state)) => eprintln!("plab-boot: trigger from the MA: state {state}; booting again"),
                    Ok(None) => anyhow::bail!("the trigger listener stopped"),
                    Err(_) => {}
                }
                match bm.boot(Some(trigger_port)) {
                    Ok(o) => println!("{}", describe(&o)),
                    Err(e) => {
                        eprintln!("plab-boot: boot failed (trying again at the next trigger or update check): {e}")
                    }
                }
            }
        }
    }
    Ok(())
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Booted { installed: true, updated } => format!("installed, then booted ({updated} packages updated)"),
        Outcome::Booted { installed: false, updated } => format!("booted ({updated} packages updated)"),
        Outcome::Debug => "debug: slices stay stopped; only MA operators may log in".into(),
        Outcome::Failed => "failboot: the MA holds this node in failboot".into(),
    }
}
