//! `plab`: a thin command-line client. It parses arguments and calls the same client
//! libraries the services use; `--json` prints the raw answers for scripts.

use anyhow::Context;
use clap::{Parser, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use plab_nm::NmClient;
use serde_json::{json, Value};
use std::path::PathBuf;

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

fn main() {
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
        NmCmd::Status { vm } => ("VmStatus", json!({"vm": vm})),
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
        NmCmd::Destroy { vm } => println!("destroyed {vm}"),
        NmCmd::DestroyPool { .. } => println!("pool destroyed; its resources went back to its parent"),
        NmCmd::Orphans => v["orphans"].as_array().into_iter().flatten().for_each(|o| println!("{} ({})", s(&o["vm"]), s(&o["vm_type"]))),
        NmCmd::CleanOrphans => v["removed"].as_array().into_iter().flatten().for_each(|o| println!("removed {}", s(o))),
    }
    Ok(())
}
