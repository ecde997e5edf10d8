//! `plab`: a thin command-line client. It parses arguments and calls the same client
//! libraries the services use; `--json` prints the raw answers for scripts.

use anyhow::Context;
use clap::{Parser, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use plab_nm::api::VmInfo;
use plab_nm::NmClient;
use serde_json::Value;
use std::path::{Path, PathBuf};

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
    /// A node's slice creation service.
    Scs {
        #[command(subcommand)]
        cmd: ScsCmd,
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
enum ScsCmd {
    /// Redeem a slice ticket at a node (section 4.5): the node's slice creation service
    /// makes the slice's VM there at once and answers with how to log in.
    Redeem {
        /// The node's ticket endpoint, `https://NODE:PORT` (8444 by default).
        node: String,
        /// The ticket (JSON, as `plab --json sa get-slice-ticket SLICE` prints it).
        ticket: PathBuf,
        /// Authority settings file: its `root` certificate is what the node's certificate
        /// must chain to.
        #[arg(long)]
        authority_config: Option<PathBuf>,
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
        /// Then print what the VM prints, as it comes (until interrupted).
        #[arg(long, short)]
        follow: bool,
    },
    /// Node facts: VM types supported, networking.
    Info,
    /// Bar a slice, or an authority and every slice below it, from this node (owner
    /// only): their VMs are destroyed and none can be made until `unblacklist`. With no
    /// name, print the blacklist.
    Blacklist {
        /// A slice or an authority.
        name: Option<String>,
    },
    /// Lift a bar (owner only).
    Unblacklist {
        /// A slice or an authority.
        name: String,
    },
    /// VMs a backend holds that the node manager has no record of.
    Orphans,
    /// Destroy the orphans.
    CleanOrphans,
}

fn read(p: &Path) -> anyhow::Result<String> {
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
    // Output piped into `head` and the like: end quietly when the reader goes away, as
    // command-line tools do, instead of panicking on the broken pipe.
    // SAFETY: called first thing, before any other thread exists; SIG_DFL for SIGPIPE
    // installs no handler code, so nothing can run in signal context.
    unsafe {
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
    }
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
        Cmd::Scs { cmd: ScsCmd::Redeem { node, ticket, authority_config } } => {
            let t: credentials::ticket::SignedTicket = serde_json::from_str(&read(&ticket)?).context("ticket")?;
            let r = authority::redeem(authority_config, &node, t)?;
            if cli.json {
                return print_json(&r);
            }
            println!("{}: VM {} {} on {node}; keeps it until {} (Unix time)", r.slice, r.vm, r.state, r.expires);
            println!("log in: {}", r.ssh);
            Ok(())
        }
        Cmd::Sa { authority_config, words } => {
            authority::run(plab_authority::api::Part::Sa, authority_config, &words, cli.json)
        }
        Cmd::Ma { authority_config, words } => {
            authority::run(plab_authority::api::Part::Ma, authority_config, &words, cli.json)
        }
        Cmd::Keygen { dir } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::create_dir_all(&dir)?;
            let k = credentials::pki::KeyPair::generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join("key.pem"))
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
            println!(
                "valid ticket for {} from {}, expires at {} (Unix time), nodes {:?}",
                body.slice, body.authority, body.expires, body.nodes
            );
            Ok(())
        }
    }
}

/// Prints `v` as JSON for scripts.
fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn resources(r: &std::collections::BTreeMap<String, String>) -> String {
    ["cpu_share", "mem_limit", "disk_quota"]
        .iter()
        .map(|k| format!("{k}={}", r.get(*k).map_or("-", String::as_str)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A VM as FIELD/VALUE rows.
fn vm_rows(v: &VmInfo) -> Vec<Vec<String>> {
    let mut rows = vec![
        vec!["vm".into(), v.vm.clone()],
        vec!["slice".into(), v.slice.to_string()],
        vec!["vm_type".into(), v.vm_type.to_string()],
        vec!["wanted".into(), v.wanted.to_string()],
    ];
    if let Some(st) = v.state {
        rows.push(vec!["state".into(), st.to_string()]);
    }
    rows.extend([
        vec!["address".into(), v.address.clone()],
        vec!["ssh".into(), v.ssh_command.clone()],
        vec!["keys".into(), v.keys.to_string()],
        vec!["pools".into(), v.pools.to_string()],
    ]);
    rows.extend(v.resources.iter().map(|(k, x)| vec![format!("resources.{k}"), x.clone()]));
    rows.extend(v.details.iter().flatten().map(|(k, x)| vec![format!("details.{k}"), x.clone()]));
    rows
}

/// Output a VM's console log may hold: the VM writes it, so control sequences that would
/// act on the reader's terminal (colours, titles, clipboard writes) are shown, not run.
fn printable(log: &str) -> String {
    log.chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => format!("\\x{:02x}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn nm(socket: &Path, cmd: NmCmd, as_json: bool) -> anyhow::Result<()> {
    use plab_nm::api::{calls as c, *};
    let mut nm = NmClient::connect(socket)?;
    macro_rules! show {
        ($v:expr) => {{
            let v = $v;
            if as_json {
                return print_json(&v);
            }
            v
        }};
    }
    match cmd {
        NmCmd::CreatePool { rspec, slice } => {
            let slice_name = parse_slice(&slice)?;
            let r = show!(nm.call::<c::CreatePool>(&CreatePoolParams { rspec: read(&rspec)?, slice_name })?);
            println!("{}", r.rcap);
        }
        NmCmd::GetRcap { slice } => {
            let slice_name = slice.as_deref().map(parse_slice).transpose()?;
            let r = show!(nm.call::<c::GetRcap>(&GetRcapParams { slice_name })?);
            r.rcaps.iter().for_each(|x| println!("{x}"));
        }
        NmCmd::GetRspec { rcap } => print!("{}", show!(nm.call::<c::GetRSpec>(&RcapParams { rcap })?).rspec),
        NmCmd::SplitPool { rcap, rspec } => {
            println!("{}", show!(nm.call::<c::SplitPool>(&SplitPoolParams { rcap, rspec: read(&rspec)? })?).rcap)
        }
        NmCmd::Bind { rcap, slice } => {
            let v = show!(nm.call::<c::Bind>(&BindParams { rcap, slice_name: parse_slice(&slice)? })?);
            println!("{}", table(&["FIELD", "VALUE"], vm_rows(&v)));
        }
        NmCmd::DestroyPool { rcap } => {
            show!(nm.call::<c::DestroyPool>(&RcapParams { rcap })?);
            println!("pool destroyed; its resources went back to its parent");
        }
        NmCmd::Ls => {
            let v = show!(nm.call::<c::ListVMs>(&jsonrpc::NoParams {})?);
            let rows = v
                .vms
                .iter()
                .map(|vm| {
                    let state = vm.state.map_or("-".into(), |s| s.to_string());
                    vec![
                        vm.vm.clone(),
                        vm.slice.to_string(),
                        vm.vm_type.to_string(),
                        state,
                        vm.ssh_command.clone(),
                        resources(&vm.resources),
                    ]
                })
                .collect();
            println!("{}", table(&["VM", "SLICE", "TYPE", "STATE", "SSH", "RESOURCES"], rows));
        }
        NmCmd::Pools => {
            let v = show!(nm.call::<c::ListPools>(&jsonrpc::NoParams {})?);
            let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
            let rows = v
                .pools
                .iter()
                .map(|p| {
                    vec![
                        p.id.to_string(),
                        opt(p.parent.map(|x| x.to_string())),
                        p.slice.to_string(),
                        p.class.clone(),
                        opt(p.vm.clone()),
                        resources(&p.resources),
                    ]
                })
                .collect();
            println!("{}", table(&["ID", "PARENT", "SLICE", "CLASS", "VM", "RESOURCES"], rows));
        }
        NmCmd::Status { vm } => {
            println!("{}", table(&["FIELD", "VALUE"], vm_rows(&show!(nm.call::<c::VmStatus>(&VmParams { vm })?))))
        }
        NmCmd::Start { vm } => {
            println!("{}", table(&["FIELD", "VALUE"], vm_rows(&show!(nm.call::<c::StartVM>(&VmParams { vm })?))))
        }
        NmCmd::Stop { vm } => {
            println!("{}", table(&["FIELD", "VALUE"], vm_rows(&show!(nm.call::<c::StopVM>(&VmParams { vm })?))))
        }
        NmCmd::KnownHosts { vm } => {
            let v = show!(nm.call::<c::VmStatus>(&VmParams { vm: vm.clone() })?);
            match v.details.as_ref().and_then(|d| d.get("ssh_host_key")) {
                Some(key) => println!("{} {key}", v.address),
                None => anyhow::bail!("VM {vm} has no ssh host key yet (it is made when the VM is created)"),
            }
        }
        NmCmd::Destroy { vm } => println!("destroyed {}", show!(nm.call::<c::DestroyVM>(&VmParams { vm })?).vm),
        NmCmd::Log { vm, bytes, follow } => {
            let v = show!(nm.call::<c::VmLog>(&VmLogParams { vm: vm.clone(), bytes: Some(bytes), from: None })?);
            print!("{}", printable(&v.log));
            if follow {
                let Some(mut next) = v.next else {
                    anyhow::bail!("{vm}: this VM type's console cannot be followed");
                };
                loop {
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    let p = VmLogParams { vm: vm.clone(), bytes: Some(1 << 20), from: Some(next) };
                    let v = nm.call::<c::VmLog>(&p)?;
                    if let Some(s) = v.skipped.filter(|s| *s > 0) {
                        eprintln!("[{s} bytes rotated away before they could be shown]");
                    }
                    print!("{}", printable(&v.log));
                    next = v.next.unwrap_or(next);
                }
            }
        }
        NmCmd::Info => {
            let v = show!(nm.call::<c::NodeInfo>(&jsonrpc::NoParams {})?);
            let mut rows = vec![
                vec!["version".into(), v.version.clone()],
                vec!["vm_types".into(), v.vm_types.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")],
                vec!["accelerator".into(), v.accelerator.clone().unwrap_or_else(|| "-".into())],
                vec!["accelerator_reason".into(), v.accelerator_reason.clone().unwrap_or_else(|| "-".into())],
                vec!["bridge".into(), v.bridge.clone()],
                vec!["vm_prefix".into(), v.vm_prefix.clone()],
                vec!["gateway".into(), v.gateway.clone()],
                vec!["node_netns".into(), v.node_netns.clone().unwrap_or_else(|| "-".into())],
                vec!["public_address".into(), v.public_address.clone().unwrap_or_else(|| "-".into())],
                vec!["node_id".into(), v.node_id.map_or_else(|| "- (not booted)".into(), |n| n.to_string())],
                vec!["pools".into(), v.pools.to_string()],
                vec!["vms".into(), v.vms.to_string()],
            ];
            rows.extend(v.unavailable.iter().map(|(t, why)| vec![format!("unavailable.{t}"), why.clone()]));
            rows.extend(v.warnings.iter().map(|w| vec!["warning".into(), w.clone()]));
            println!("{}", table(&["FIELD", "VALUE"], rows));
        }
        NmCmd::Blacklist { name: None } => {
            let r = show!(nm.call::<c::GetBlacklist>(&jsonrpc::NoParams {})?);
            r.blacklist.iter().for_each(|b| println!("{b}"));
        }
        NmCmd::Blacklist { name: Some(name) } => {
            let r = show!(nm.call::<c::Blacklist>(&BlacklistParams { name: parse_slice(&name)? })?);
            println!("blacklisted {name}");
            r.destroyed.iter().for_each(|v| println!("destroyed {v}"));
        }
        NmCmd::Unblacklist { name } => {
            show!(nm.call::<c::Unblacklist>(&BlacklistParams { name: parse_slice(&name)? })?);
            println!("no longer blacklisted: {name}");
        }
        NmCmd::Orphans => show!(nm.call::<c::Orphans>(&jsonrpc::NoParams {})?)
            .orphans
            .iter()
            .for_each(|o| println!("{} ({})", o.vm, o.vm_type)),
        NmCmd::CleanOrphans => show!(nm.call::<c::CleanOrphans>(&jsonrpc::NoParams {})?)
            .removed
            .iter()
            .for_each(|o| println!("removed {o}")),
    }
    Ok(())
}

fn parse_slice(s: &str) -> anyhow::Result<vm_types::SliceName> {
    vm_types::SliceName::parse(s).map_err(|e| anyhow::anyhow!("{e}"))
}
