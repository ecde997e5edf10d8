//! `plab-boot`: a node's boot manager (section 4.8.2).

use anyhow::Context;
use clap::{Parser, Subcommand};
use plab_authority::bootmgr::{BootManager, Outcome, PlNode};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
            let listener = std::net::TcpListener::bind((bm.plnode.ip, trigger_port))
                .with_context(|| format!("listening on {}:{trigger_port}", bm.plnode.ip))?;
            listener.set_nonblocking(true)?;
            println!("{}", describe(&bm.boot(Some(trigger_port))?));
            let mut next = Instant::now() + Duration::from_secs(update_secs);
            loop {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        s.set_nonblocking(false)?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        let mut line = String::new();
                        let _ = BufReader::new(s.try_clone()?).read_line(&mut line);
                        match bm.check_trigger(&line) {
                            Ok(state) => {
                                let _ = s.write_all(b"ok\n");
                                eprintln!("plab-boot: trigger from the MA ({peer}): state {state}; booting again");
                                println!("{}", describe(&bm.boot(Some(trigger_port))?));
                            }
                            Err(e) => {
                                let _ = s.write_all(b"refused\n");
                                eprintln!("plab-boot: refused a trigger from {peer}: {e}");
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
                    Err(e) => return Err(e.into()),
                }
                if Instant::now() >= next {
                    next = Instant::now() + Duration::from_secs(update_secs);
                    println!("{}", describe(&bm.boot(Some(trigger_port))?));
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
