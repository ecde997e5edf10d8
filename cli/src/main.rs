//! `plab`: a thin command-line client. It parses arguments and calls the same client
//! libraries the services use; `--json` prints the raw answers for scripts.

use anyhow::Context;
use clap::{Parser, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use plab_nm::NmClient;
use serde_json::{json, Value};
use std::path::PathBuf;

mod authority;

#[derive(Parser)]
#[command(name = "plab", version, about = "plab: PlanetLab-style testbed control")]
struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// RSpec documents.
    Rspec {
        #[command(subcommand)]
        cmd: RspecCmd,
    },
    /// The slice authority (sections 4.7, 5.5): `plab sa` lists its calls.
    Sa {
        /// Authority settings file (url, root, cert, key).
        #[arg(long, global = true)]
        authority_config: Option<PathBuf>,
        /// The call (kebab-case, e.g. create-slice) and its arguments after auth.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
    /// The management authority (section 4.8): `plab ma` lists its calls.
    Ma {
        /// Authority settings file (url, root, cert, key).
        #[arg(long, global = true)]
        authority_config: Option<PathBuf>,
        /// The call (kebab-case, e.g. add-node) and its arguments after auth.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
    /// Make a P-256 key pair to register with an authority.
    Keygen {
        /// Directory for key.pem (private, mode 0600) and public.pem.
        dir: PathBuf,
    },
    /// Verify a slice ticket against a slice authority's certificate.
    VerifyTicket {
        /// The ticket (JSON, as get-slice-ticket prints it with --json).
        ticket: PathBuf,
        /// The slice authority's certificate (PEM).
        #[arg(long)]
        sa_cert: PathBuf,
    },
    /// The node manager on this node.
    Nm {
        /// The node manager socket.
        #[arg(long, env = "PLAB_NM_SOCKET", default_value = "/run/plab/nm.sock", global = true)]
        socket: PathBuf,
        #[command(subcommand)]
        cmd: NmCmd,
    },
}

#[derive(Subcommand)]
enum RspecCmd {
    /// Check RSpec files; errors give line and column.
    Validate {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum NmCmd {
    /// Create a root pool for a slice or authority (owner only).
    CreatePool {
        /// RSpec file (PoolRSpec or a slice class).
        rspec: PathBuf,
        /// The slice (or authority) that may retrieve the pool.
        slice: String,
    },
    /// List the rcaps of your slice's pools (the owner may name a slice).
    GetRcap {
        /// Slice to ask about (owner only).
        slice: Option<String>,
    },
    /// Print the RSpec of an rcap.
    GetRspec {
        /// The rcap (32 hex digits).
        rcap: String,
    },
    /// Split a sub-pool off a pool.
    SplitPool {
        /// The pool's rcap.
        rcap: String,
        /// RSpec file of the new sub-pool.
        rspec: PathBuf,
    },
    /// Bind a pool to a slice's VM, creating and starting the VM if needed.
    Bind {
        /// The pool's rcap.
        rcap: String,
        /// The slice.
        slice: String,
    },
    /// Give an unbound pool's resources back to its parent.
    DestroyPool {
        /// The pool's rcap.
        rcap: String,
    },
    /// List VMs.
    Ls,
    /// List pools.
    Pools,
    /// Show a VM's state and the limits in force.
    Status {
        /// VM name.
        vm: String,
    },
    /// Print a VM's `known_hosts` line (its address and the ssh host key the node manager
    /// made for it), for `>> ~/.ssh/known_hosts`.
    KnownHosts {
        /// VM name.
        vm: String,
    },
    /// Start a VM.
    Start {
        /// VM name.
        vm: String,
    },
    /// Stop a VM (its disk is kept).
    Stop {
        /// VM name.
        vm: String,
    },
    /// Destroy a VM; its pools become unbound.
    Destroy {
        /// VM name.
        vm: String,
    },
    /// Show a VM's console log (init and bootscript output).
    Log {
        /// VM name.
        vm: String,
        /// How many bytes from the end.
        #[arg(long, default_value_t = 65536)]
        bytes: u64,
    },
    /// Node facts: VM types supported, networking.
    Info,
    /// VMs a backend holds that the node manager has no record of.
    Orphans,
    /// Destroy the orphans.
    CleanOrphans,
}

fn read(p: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(headers.to_vec());
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn resources(v: &Value) -> String {
    ["cpu_share", "mem_limit", "disk_quota"].iter().map(|k| format!("{k}={}", s(&v[*k]))).collect::<Vec<_>>().join(" ")
}

/// A result as text: a table for arrays of objects and for objects, the value otherwise.
pub(crate) fn render(v: &Value) -> String {
    match v {
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            let headers: Vec<String> = items[0].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
            let rows = items.iter().map(|i| headers.iter().map(|h| s(&i[h])).collect()).collect();
            format!("{}\n", table(&headers.iter().map(String::as_str).collect::<Vec<_>>(), rows))
        }
        Value::Object(o) if !o.is_empty() => {
            let rows = o.iter().map(|(k, v)| vec![k.clone(), s(v)]).collect();
            format!("{}\n", table(&["FIELD", "VALUE"], rows))
        }
        Value::Array(a) => a.iter().map(|x| format!("{}\n", s(x))).collect(),
        Value::Object(_) => "ok\n".into(),
        v => format!("{}\n", s(v)),
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("plab: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Rspec { cmd: RspecCmd::Validate { files } } => {
            let mut bad = 0;
            for f in &files {
                match vm_types::RSpec::from_xml(&read(f)?) {
                    Ok(r) => println!("{}: ok ({})", f.display(), r.class_name()),
                    Err(e) => {
                        eprintln!("{}:{}:{}: {}", f.display(), e.line, e.column, e.message);
                        bad += 1;
                    }
                }
            }
            if bad > 0 {
                anyhow::bail!("{bad} of {} files invalid", files.len());
            }
            Ok(())
        }
        Cmd::Nm { socket, cmd } => nm(&socket, cmd, cli.json),
        Cmd::Sa { authority_config, words } => authority::run(plab_authority::api::Part::Sa, authority_config, &words, cli.json),
        Cmd::Ma { authority_config, words } => authority::run(plab_authority::api::Part::Ma, authority_config, &words, cli.json),
        Cmd::Keygen { dir } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::create_dir_all(&dir)?;
            let k = credentials::pki::KeyPair::generate();
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join("key.pem"))
                .with_context(|| format!("{}/key.pem", dir.display()))?;
            f.write_all(k.to_pem().as_bytes())?;
            std::fs::write(dir.join("public.pem"), k.public_key_pem())?;
            println!("{}/key.pem (keep it), {}/public.pem (register it)", dir.display(), dir.display());
            Ok(())
        }
        Cmd::VerifyTicket { ticket, sa_cert } => {
            let t: credentials::ticket::SignedTicket = serde_json::from_str(&read(&ticket)?).context("ticket")?;
            let sa = credentials::pki::Cert::from_pem(&read(&sa_cert)?)?;
            let body = t.verify(&sa, credentials::now())?;
            println!("valid ticket for {} from {}, expires at {} (Unix time), nodes {:?}", body.slice, body.authority, body.expires, body.nodes);
            Ok(())
        }
    }
}

fn nm(socket: &PathBuf, cmd: NmCmd, as_json: bool) -> anyhow::Result<()> {
    let mut c = NmClient::connect(socket)?;
    let (method, params) = match &cmd {
        NmCmd::CreatePool { rspec, slice } => ("CreatePool", json!({"rspec": read(rspec)?, "slice_name": slice})),
        NmCmd::GetRcap { slice } => ("GetRcap", json!({"slice_name": slice})),
        NmCmd::GetRspec { rcap } => ("GetRSpec", json!({"rcap": rcap})),
        NmCmd::SplitPool { rcap, rspec } => ("SplitPool", json!({"rcap": rcap, "rspec": read(rspec)?})),
        NmCmd::Bind { rcap, slice } => ("Bind", json!({"rcap": rcap, "slice_name": slice})),
        NmCmd::DestroyPool { rcap } => ("DestroyPool", json!({"rcap": rcap})),
        NmCmd::Ls => ("ListVMs", json!({})),
        NmCmd::Pools => ("ListPools", json!({})),
        NmCmd::Status { vm } | NmCmd::KnownHosts { vm } => ("VmStatus", json!({"vm": vm})),
        NmCmd::Start { vm } => ("StartVM", json!({"vm": vm})),
        NmCmd::Stop { vm } => ("StopVM", json!({"vm": vm})),
        NmCmd::Destroy { vm } => ("DestroyVM", json!({"vm": vm})),
        NmCmd::Log { vm, bytes } => ("VmLog", json!({"vm": vm, "bytes": bytes})),
        NmCmd::Info => ("NodeInfo", json!({})),
        NmCmd::Orphans => ("Orphans", json!({})),
        NmCmd::CleanOrphans => ("CleanOrphans", json!({})),
    };
    let v = c.call(method, params)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match cmd {
        NmCmd::CreatePool { .. } | NmCmd::SplitPool { .. } => println!("{}", s(&v["rcap"])),
        NmCmd::GetRcap { .. } => v["rcaps"].as_array().into_iter().flatten().for_each(|r| println!("{}", s(r))),
        NmCmd::GetRspec { .. } => print!("{}", s(&v["rspec"])),
        NmCmd::Log { .. } => print!("{}", s(&v["log"])),
        NmCmd::Ls => {
            let rows = v["vms"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|vm| {
                    vec![s(&vm["vm"]), s(&vm["slice"]), s(&vm["vm_type"]), s(&vm["state"]), s(&vm["ssh"]), resources(&vm["resources"])]
                })
                .collect();
            println!("{}", table(&["VM", "SLICE", "TYPE", "STATE", "SSH", "RESOURCES"], rows));
        }
        NmCmd::Pools => {
            let rows = v["pools"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| vec![s(&p["id"]), s(&p["parent"]), s(&p["slice"]), s(&p["class"]), s(&p["vm"]), resources(&p["resources"])])
                .collect();
            println!("{}", table(&["ID", "PARENT", "SLICE", "CLASS", "VM", "RESOURCES"], rows));
        }
        NmCmd::Status { .. } | NmCmd::Start { .. } | NmCmd::Stop { .. } | NmCmd::Bind { .. } | NmCmd::Info => {
            let mut rows = Vec::new();
            if let Value::Object(o) = &v {
                for (k, val) in o {
                    match val {
                        Value::Object(inner) => {
                            for (ik, iv) in inner {
                                rows.push(vec![format!("{k}.{ik}"), s(iv)]);
                            }
                        }
                        _ => rows.push(vec![k.clone(), s(val)]),
                    }
                }
            }
            println!("{}", table(&["FIELD", "VALUE"], rows));
        }
        NmCmd::KnownHosts { vm } => match v["details"]["ssh_host_key"].as_str() {
            Some(key) => println!("{} {key}", s(&v["address"])),
            None => anyhow::bail!("VM {vm} has no ssh host key yet (it is made when the VM is created)"),
        },
        NmCmd::Destroy { vm } => println!("destroyed {vm}"),
        NmCmd::DestroyPool { .. } => println!("pool destroyed; its resources went back to its parent"),
        NmCmd::Orphans => v["orphans"].as_array().into_iter().flatten().for_each(|o| println!("{} ({})", s(&o["vm"]), s(&o["vm_type"]))),
        NmCmd::CleanOrphans => v["removed"].as_array().into_iter().flatten().for_each(|o| println!("removed {}", s(o))),
    }
    Ok(())
}
