//! `plab-authority`: the slice and management authority server.

use anyhow::Context;
use clap::{Parser, Subcommand};
use plab_authority::ca::Ca;
use plab_authority::db::Db;
use plab_authority::{server, Authority, Settings};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "plab-authority", version, about = "plab slice and management authority")]
struct Cli {
    /// State directory: credentials, SQLite database.
    #[arg(long, global = true, default_value = "/var/lib/plab/authority")]
    state_dir: PathBuf,
    /// The authority's name: the top of its slice names (`plc`).
    #[arg(long, global = true, default_value = "plc")]
    name: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the root CA, the SA and MA certificates, the server certificate, the
    /// authority's own organisation and a first operator with a `plab` CLI config.
    Init {
        /// Host names or addresses the HTTPS server is reached at.
        #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        server_names: Vec<String>,
        /// The first operator's login.
        #[arg(long, default_value = "admin")]
        operator: String,
        /// The first operator's email.
        #[arg(long, default_value = "admin@localhost")]
        email: String,
        /// Database URL (default: SQLite in the state directory).
        #[arg(long)]
        db: Option<String>,
        /// The URL clients will use (written into the CLI config).
        #[arg(long, default_value = "https://127.0.0.1:8443")]
        url: String,
    },
    /// Serve the API.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: String,
        /// Database URL: sqlite:///path or postgres://user:pass@host/db.
        #[arg(long)]
        db: Option<String>,
        /// Which authorities to host: sa, ma or both.
        #[arg(long, default_value = "sa,ma")]
        roles: String,
        /// A slice whose services on a node may learn the node's slices and report its
        /// slivers (repeatable; default `<name>.scs`).
        #[arg(long = "node-service")]
        node_services: Vec<String>,
        /// A slice whose services on a node may upload the node's flows to the archive
        /// (repeatable; default `<name>.audit`).
        #[arg(long = "audit-service")]
        audit_services: Vec<String>,
        /// Days the flow archive keeps a flow.
        #[arg(long, default_value_t = 90)]
        flow_retention_days: i64,
    },
}

fn db_url(state: &Path, db: Option<String>) -> String {
    db.unwrap_or_else(|| format!("sqlite://{}", state.join("authority.db").display()))
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PLAB_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    vm_types::SliceName::parse(&cli.name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Init { server_names, operator, email, db, url } => {
                let creds = plab_authority::setup::init(
                    &cli.state_dir,
                    &cli.name,
                    &server_names,
                    &operator,
                    &email,
                    &db_url(&cli.state_dir, db),
                    &url,
                )
                .await?;
                println!("authority {} initialised in {}", cli.name, cli.state_dir.display());
                println!("operator {operator}: export PLAB_AUTHORITY_CONFIG={}", creds.config.display());
                Ok(())
            }
            Cmd::Serve { listen, db, roles, node_services, audit_services, flow_retention_days } => {
                for s in &node_services {
                    vm_types::SliceName::parse(s).map_err(|e| anyhow::anyhow!("--node-service {s}: {e}"))?;
                }
                for s in &audit_services {
                    vm_types::SliceName::parse(s).map_err(|e| anyhow::anyhow!("--audit-service {s}: {e}"))?;
                }
                if !(1..=3650).contains(&flow_retention_days) {
                    anyhow::bail!("--flow-retention-days: {flow_retention_days} must be 1 to 3650");
                }
                let ca = Ca::load(&cli.state_dir, &cli.name)?;
                let db = Db::open(&db_url(&cli.state_dir, db)).await?;
                let settings = Settings {
                    sa: roles.contains("sa"),
                    ma: roles.contains("ma"),
                    node_services,
                    audit_services,
                    flow_retention_days,
                    ..Settings::default()
                };
                let a = Arc::new(Authority::new(db, ca, settings).await?);
                let tls = Arc::new(server::tls_config(&a)?);
                let listener =
                    tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("--listen {listen}"))?;
                tracing::info!(%listen, roles, "plab-authority serving");
                tokio::select! {
                    _ = server::serve(a, listener, tls) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                Ok(())
            }
        }
    })
}
