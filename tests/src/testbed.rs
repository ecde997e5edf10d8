//! A whole testbed on one machine: an authority (SQLite, or several servers on one
//! PostgreSQL database), and nodes, each a network namespace with its own booted node
//! manager, owner script and slice creation service, joined by a bridge in a backbone
//! namespace; a researcher namespace on the same bridge to ssh from. Everything the
//! testbed sends stays on addresses it made (`10.251.K.0/24`, K picked per testbed).
//!
//! ```text
//!  root namespace            backbone namespace (bridge)
//!  plab-authority ── veth ──┬── node 1 namespace: plab-nm, plab-scs (uid 64100), VMs
//!  10.251.K.1               ├── node 2 ...                           10.251.K.11, .12, ...
//!                           └── researcher namespace                 10.251.K.200
//! ```

use crate::{bin, keypair, ssh_in, ANY_HOST_KEY, IMAGE};
use plab_authority::AuthorityClient;
use plab_nm::NmClient;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The uid slice creation services run as (mapped to `plc.scs` by each node manager).
pub const SCS_UID: u32 = 64100;
/// The ticket endpoint's port on each node.
pub const TICKET_PORT: u16 = 8444;

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many nodes.
    pub nodes: usize,
    /// 0: SQLite and one server; n: n servers on one fresh PostgreSQL database.
    pub postgres_servers: usize,
    /// Node managers use the in-memory fake backend (the control path alone is measured).
    pub fake_backend: bool,
    /// How long the services' long polls wait.
    pub poll_wait_secs: u64,
    /// The owners' pools name a proxy in front of the authority (see
    /// [`Testbed::proxy_and_authority`]), which the test runs.
    pub via_proxy: bool,
    /// Services poll every this many seconds instead of long-polling (0: long poll).
    pub poll_interval_secs: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            nodes: 3,
            postgres_servers: 0,
            fake_backend: false,
            poll_wait_secs: 20,
            via_proxy: false,
            poll_interval_secs: 0,
        }
    }
}

fn run(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn log_file(p: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap()
}

/// One node of the testbed.
pub struct TbNode {
    /// Its id at the management authority.
    pub id: i64,
    /// Its network namespace.
    pub ns: String,
    /// Its public address.
    pub addr: String,
    /// Its files.
    pub dir: PathBuf,
    /// The authority server its services use.
    pub url: String,
    nm: Option<Child>,
    scs: Option<Child>,
    audit: Option<Child>,
    scs_bin: PathBuf,
    guest_dir: PathBuf,
}

impl TbNode {
    /// The node manager's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("nm.sock")
    }

    /// A client of the node manager, as the owner.
    pub fn nm(&self) -> NmClient {
        NmClient::connect(&self.socket()).unwrap()
    }

    /// Starts the node manager (after a kill, or at first).
    pub fn start_nm(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = log_file(&self.dir.join("nm.log"));
        let image = std::env::var("PLAB_IMAGE_DIR").unwrap_or_else(|_| IMAGE.into());
        let child = Command::new(bin("plab-nm"))
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("nm.toml"))
            .args(["--image-dir", &image])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nm = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while NmClient::connect(&self.socket()).is_err() {
            assert!(Instant::now() < deadline, "plab-nm did not start:\n{}", self.log("nm.log"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the node manager with SIGKILL.
    pub fn kill_nm(&mut self) {
        if let Some(mut c) = self.nm.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the slice creation service, unprivileged, in the node's namespace.
    pub fn start_scs(&mut self) {
        let log = log_file(&self.dir.join("scs.log"));
        let uid = format!("--reuid={SCS_UID}");
        let gid = format!("--regid={SCS_UID}");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "setpriv", &uid, &gid, "--clear-groups"])
            .arg(&self.scs_bin)
            .args(["serve", "--config"])
            .arg(self.dir.join("scs.toml"))
            .env("PLAB_LOG", std::env::var("PLAB_SCS_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.scs = Some(child);
    }

    /// Kills the slice creation service with SIGKILL.
    pub fn kill_scs(&mut self) {
        if let Some(mut c) = self.scs.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the auditing service (`plab-audit serve`) on the node: capture on every
    /// VM interface, the public query at `ADDR:8880`, upload to the archive at
    /// `authority_url` (whose root certificate is `root`); flows idle 2 s end.
    pub fn start_audit(&mut self, authority_url: &str, root: &Path) {
        let config = self.dir.join("audit.toml");
        std::fs::write(
            &config,
            format!(
                "nm_socket = \"{d}/nm.sock\"\ndb = \"{d}/audit/flows.db\"\nlisten = \"{a}:8880\"\nidle_timeout_secs = 2\n\
                 archive_url = \"{authority_url}\"\narchive_root = \"{r}\"\n",
                d = self.dir.display(),
                a = self.addr,
                r = root.display(),
            ),
        )
        .unwrap();
        let log = log_file(&self.dir.join("audit.log"));
        let child = Command::new(bin("plab-audit"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.audit = Some(child);
    }

    /// Whether the auditing service captures on a VM's interface yet.
    pub fn audit_captures(&self) -> bool {
        self.log("audit.log").contains("capturing")
    }

    /// Kills the auditing service.
    pub fn kill_audit(&mut self) {
        if let Some(mut c) = self.audit.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A log of this node (`nm.log`, `scs.log`, `boot.log`, `audit.log`).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// The VMs the node manager has.
    pub fn vms(&self) -> Vec<Value> {
        self.nm().call_value("ListVMs", json!({})).unwrap()["vms"].as_array().cloned().unwrap_or_default()
    }

    /// Runs `plab` as the owner against this node, with `args`.
    pub fn site_admin(&self, args: &[&str]) -> (bool, String) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../owner/site-admin.py");
        let out = Command::new("python3").arg(script).arg("--socket").arg(self.socket()).args(args).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }
}

/// A researcher: a principal with an ssh key, and a client of the authority.
pub struct Researcher {
    /// Login.
    pub name: String,
    /// The authority client, authenticated with the researcher's certificate.
    pub client: AuthorityClient,
    /// The ssh private key file.
    pub ssh_key: PathBuf,
    /// The authority settings file for `plab` as this researcher.
    pub config: PathBuf,
}

/// The testbed.
pub struct Testbed {
    /// Its files.
    pub dir: tempfile::TempDir,
    /// `10.251.K`.
    pub net: String,
    backbone: String,
    /// The researcher's network namespace.
    pub researcher_ns: String,
    root_if: String,
    /// The authority's state directory.
    pub authority_dir: PathBuf,
    /// Its servers' URLs.
    pub urls: Vec<String>,
    servers: Vec<Child>,
    db: Option<String>,
    /// The nodes.
    pub nodes: Vec<TbNode>,
    /// The root certificate.
    pub root_pem: String,
    /// The operator's settings file.
    pub operator_config: PathBuf,
    /// The options it was built with.
    pub options: Options,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Testbed {
    /// Builds a testbed: the authority with an organisation (`princeton`, `plc.princeton`)
    /// and a site, and `options.nodes` booted nodes running a node manager and a slice
    /// creation service each, whose owners gave `plc.scs` a pool for authority `plc`.
    pub fn new(options: Options) -> Testbed {
        let _ = rustls::crypto::ring::default_provider().install_default();
        crate::prerequisites();
        let c = COUNTER.fetch_add(1, Ordering::SeqCst);
        let k = (std::process::id().wrapping_mul(7).wrapping_add(c * 31)) % 200 + 20;
        let tag = format!("{}{}", std::process::id() % 10000, c);
        let net = format!("10.251.{k}");
        let dir = tempfile::tempdir().unwrap();
        // The services' uid traverses it (and reads only what is made readable).
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let backbone = format!("tbb-{tag}");
        let researcher_ns = format!("tbr-{tag}");
        let root_if = format!("tba{k}x{}", c % 100);
        for ns in [&backbone, &researcher_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &backbone, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &backbone, "link", "set", "br0", "up"]);
        let _ = Command::new("ip").args(["link", "del", &root_if]).stderr(Stdio::null()).status();
        let bb = backbone.clone();
        let attach = move |ns: Option<&str>, name: &str, addr: &str| {
            let backbone = &bb;
            let peer = format!("{name}p");
            ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
            ip(&["link", "set", &peer, "netns", backbone]);
            ip(&["-n", backbone, "link", "set", &peer, "master", "br0", "up"]);
            match ns {
                Some(ns) => {
                    ip(&["link", "set", name, "netns", ns]);
                    ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", name]);
                    ip(&["-n", ns, "link", "set", name, "up"]);
                }
                None => {
                    ip(&["addr", "add", &format!("{addr}/24"), "dev", name]);
                    ip(&["link", "set", name, "up"]);
                }
            }
        };
        attach(None, &root_if, &format!("{net}.1"));
        attach(Some(&researcher_ns), &format!("tb{k}r{}", c % 100), &format!("{net}.200"));

        // The authority, in the root namespace on the testbed's own address.
        let authority_dir = dir.path().join("authority");
        let db = (options.postgres_servers > 0).then(|| {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect("postgres://plab:plab@127.0.0.1/plab")
                    .await
                    .expect("PostgreSQL at postgres://plab:plab@127.0.0.1/plab (make test sets it up)");
                let name = format!("plab_tb_{}", hex::encode(credentials::random_bytes::<4>()));
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
                format!("postgres://plab:plab@127.0.0.1/{name}")
            })
        });
        let servers_n = options.postgres_servers.max(1);
        let ports: Vec<u16> = (0..servers_n).map(|i| 18400 + (k as u16) * 4 + i as u16).collect();
        let urls: Vec<String> = ports.iter().map(|p| format!("https://{net}.1:{p}")).collect();
        let mut init = Command::new(bin("plab-authority"));
        init.arg("--state-dir").arg(&authority_dir).args([
            "init",
            "--server-name",
            &format!("{net}.1"),
            "--url",
            &urls[0],
        ]);
        if let Some(db) = &db {
            init.args(["--db", db]);
        }
        run(init.stdout(Stdio::null()));
        let mut tb = Testbed {
            root_pem: std::fs::read_to_string(authority_dir.join("ca/root.pem")).unwrap(),
            operator_config: authority_dir.join("operator/plab.toml"),
            dir,
            net,
            backbone,
            researcher_ns,
            root_if,
            authority_dir,
            urls,
            servers: vec![],
            db,
            nodes: vec![],
            options: options.clone(),
        };
        for i in 0..servers_n {
            tb.start_server(i);
        }

        // The organisation, its site and the nodes.
        let mut op = tb.operator();
        op.call("AddOrg", vec![json!({"name": "princeton", "authority": "plc.princeton"})]).unwrap();
        op.call("AddSite", vec![json!({"org": "princeton", "name": "princeton-cs"})]).unwrap();
        let scs_bin = tb.dir.path().join("plab-scs");
        std::fs::copy(bin("plab-scs"), &scs_bin).unwrap();
        for i in 0..options.nodes {
            let addr = format!("{}.{}", tb.net, 11 + i);
            let id = op
                .call(
                    "AddNode",
                    vec![json!({"site": "princeton-cs", "hostname": format!("node{}.tb.test", i + 1), "ip": addr})],
                )
                .unwrap()["node_id"]
                .as_i64()
                .unwrap();
            let plnode = op.call("GetNodeConfig", vec![json!(id)]).unwrap()["plnode"].as_str().unwrap().to_owned();
            let ns = format!("tbn-{tag}-{}", i + 1);
            let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            attach(Some(&ns), &format!("tb{k}n{}x{}", i + 1, c % 10), &addr);
            let ndir = tb.dir.path().join(format!("node{}", i + 1));
            std::fs::create_dir_all(ndir.join("scs")).unwrap();
            std::fs::set_permissions(&ndir, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
            std::os::unix::fs::chown(ndir.join("scs"), Some(SCS_UID), Some(SCS_UID)).unwrap();
            std::fs::write(ndir.join("plnode.txt"), plnode).unwrap();
            // Boot: the node gets its certificate from the MA, from its own address.
            let url = tb.urls[i % tb.urls.len()].clone();
            let pool_url =
                if options.via_proxy { format!("https://{}", tb.proxy_and_authority().0) } else { url.clone() };
            let boot = Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(bin("plab-boot"))
                .arg("--plnode")
                .arg(ndir.join("plnode.txt"))
                .args(["--server", &url, "--root"])
                .arg(tb.authority_dir.join("ca/root.pem"))
                .arg("--state-dir")
                .arg(ndir.join("node"))
                .arg("run")
                .output()
                .unwrap();
            std::fs::write(ndir.join("boot.log"), [&boot.stdout[..], &boot.stderr[..]].concat()).unwrap();
            assert!(boot.status.success(), "plab-boot on node {}: {}", i + 1, String::from_utf8_lossy(&boot.stderr));
            let guest_dir = PathBuf::from(format!("/var/lib/plab/guests/tb-{tag}-{}", i + 1));
            let fake = if options.fake_backend { "fake_backend = true\n" } else { "" };
            std::fs::write(
                ndir.join("nm.toml"),
                format!(
                    "state_dir = \"{d}/nm\"\nsocket = \"{d}/nm.sock\"\nnode_netns = \"{ns}\"\nvm_prefix = \"10.213.0.0/24\"\n\
                     node_cert = \"{d}/node/node-cert.pem\"\nnode_key = \"{d}/node/node.key\"\npublic_address = \"{addr}\"\n\
                     guest_dir = \"{g}\"\nstop_timeout_secs = 60\ninstance = \"t{tag}n{n}\"\nvm_uid_base = {uids}\n{fake}[slice_uids]\n{SCS_UID} = \"plc.scs\"\n",
                    n = i + 1,
                    // Each node's VMs a uid range of their own (a /24 holds at most 256).
                    uids = (1u32 << 30) + ((i as u32 + 1) << 24),
                    d = ndir.display(),
                    g = guest_dir.display(),
                ),
            )
            .unwrap();
            std::fs::write(
                ndir.join("scs.toml"),
                format!(
                    "nm_socket = \"{d}/nm.sock\"\nstate_dir = \"{d}/scs\"\nticket_listen = \"{addr}:{TICKET_PORT}\"\n\
                     poll_wait_secs = {w}\nresync_secs = 5\npoll_interval_secs = {p}\n",
                    d = ndir.display(),
                    w = options.poll_wait_secs,
                    p = options.poll_interval_secs,
                ),
            )
            .unwrap();
            std::fs::set_permissions(ndir.join("scs.toml"), std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
            std::fs::write(
                ndir.join("site-admin.toml"),
                format!(
                    "[[authority]]\nname = \"plc\"\nurl = \"{pool_url}\"\ncertificate = \"{cert}\"\nservice = \"plc.scs\"\n\
                     resources = {{ cpu_share = 64, disk_quota = 200, mem_limit = 8192, base_rate = 100000, burst_rate = 100000, sustained_rate = 100000 }}\n",
                    cert = tb.authority_dir.join("ca/node-owners.pem").display(),
                ),
            )
            .unwrap();
            let mut node = TbNode {
                id,
                ns,
                addr,
                dir: ndir,
                url,
                nm: None,
                scs: None,
                audit: None,
                scs_bin: scs_bin.clone(),
                guest_dir,
            };
            node.start_nm();
            let (ok, out) = node.site_admin(&["apply", &node.dir.join("site-admin.toml").to_string_lossy()]);
            assert!(ok, "site-admin apply on node {}: {out}", i + 1);
            node.start_scs();
            tb.nodes.push(node);
        }
        tb
    }

    /// Starts authority server `i` (after a kill, or at first).
    pub fn start_server(&mut self, i: usize) {
        let listen = self.urls[i].trim_start_matches("https://").to_owned();
        let mut serve = Command::new(bin("plab-authority"));
        serve.arg("--state-dir").arg(&self.authority_dir).args(["serve", "--listen", &listen]);
        if let Some(db) = &self.db {
            serve.args(["--db", db]);
        }
        let log = log_file(&self.dir.path().join(format!("authority{i}.log")));
        let child = serve.env("PLAB_LOG", "info").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        if self.servers.len() <= i {
            self.servers.push(child);
        } else {
            self.servers[i] = child;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut c = AuthorityClient::new(&self.urls[i], &self.root_pem, None, None).unwrap();
        while c.call("GetPrincipalCert", vec![json!("admin")]).is_err() {
            assert!(Instant::now() < deadline, "plab-authority {i} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills authority server `i` with SIGKILL.
    pub fn kill_server(&mut self, i: usize) {
        if let Some(c) = self.servers.get_mut(i) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The operator's client (of server 0).
    pub fn operator(&self) -> AuthorityClient {
        let op = self.authority_dir.join("operator");
        let cert = std::fs::read_to_string(op.join("cert.pem")).unwrap();
        let key = std::fs::read_to_string(op.join("key.pem")).unwrap();
        AuthorityClient::new(&self.urls[0], &self.root_pem, Some((&cert, &key)), None).unwrap()
    }

    /// A new researcher of organisation princeton, with an ssh key registered.
    pub fn researcher(&self, name: &str) -> Researcher {
        let d = self.dir.path().join(format!("researcher-{name}"));
        std::fs::create_dir_all(&d).unwrap();
        let (ssh_key, public) = keypair(&d);
        let k = credentials::pki::KeyPair::generate();
        let r = self
            .operator()
            .call(
                "AddPrincipal",
                vec![json!({"name": name, "email": format!("{name}@tb.test"), "org": "princeton", "role": "user", "public_key": k.public_key_pem()})],
            )
            .unwrap();
        let cert = r["certificate"].as_str().unwrap().to_owned();
        std::fs::write(d.join("cert.pem"), &cert).unwrap();
        std::fs::write(d.join("key.pem"), k.to_pem()).unwrap();
        std::fs::write(d.join("root.pem"), &self.root_pem).unwrap();
        let config = d.join("plab.toml");
        std::fs::write(
            &config,
            format!(
                "url = \"{}\"\nroot = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                self.urls[0],
                d.join("root.pem").display(),
                d.join("cert.pem").display(),
                d.join("key.pem").display()
            ),
        )
        .unwrap();
        let mut client = AuthorityClient::new(&self.urls[0], &self.root_pem, Some((&cert, &k.to_pem())), None).unwrap();
        client.call("AddPrincipalKey", vec![json!(public)]).unwrap();
        Researcher { name: name.into(), client, ssh_key, config }
    }

    /// Waits up to `limit` until `check` holds for the slice's status (GetSliceStatus as
    /// the operator); returns the last status and how long it took.
    pub fn wait_status(&self, slice: &str, limit: Duration, check: impl Fn(&Value) -> bool) -> (Value, Duration) {
        let t = Instant::now();
        let mut op = self.operator();
        loop {
            let st = op.call("GetSliceStatus", vec![json!(slice)]).unwrap_or(Value::Null);
            if check(&st) || t.elapsed() > limit {
                return (st, t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `cmd` over OpenSSH from the researcher's namespace with the command the
    /// authority shows (`ssh -p PORT login@NODE`); returns (status, output).
    pub fn ssh(&self, key: &Path, ssh_command: &str, cmd: &str) -> (i32, String) {
        let words: Vec<&str> = ssh_command.split_whitespace().collect();
        let (port, target) = match words.as_slice() {
            ["ssh", "-p", port, target] => (*port, *target),
            other => panic!("not an ssh command: {other:?}"),
        };
        let port = format!("Port={port}");
        let mut options = ANY_HOST_KEY.to_vec();
        options.push(&port);
        let out = ssh_in(&self.researcher_ns, key, target, &options, cmd);
        (
            out.status.code().unwrap_or(-1),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// Like [`Testbed::ssh`], retrying for up to `limit` until it succeeds.
    pub fn ssh_wait(&self, key: &Path, ssh_command: &str, limit: Duration) -> (i32, String) {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.ssh(key, ssh_command, "echo $(id -un)@$(hostname)");
            if r.0 == 0 || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Redeems `ticket` at node `i`'s ticket endpoint (from the root namespace).
    pub fn redeem(&self, i: usize, ticket: &Value) -> Result<Value, jsonrpc::ClientError> {
        let url = format!("https://{}:{TICKET_PORT}", self.nodes[i].addr);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let https = plab_authority::client::Https::new(&url, &self.root_pem, None, None)?;
            let mut c = jsonrpc::AsyncClient::new(https);
            c.call_value("RedeemTicket", json!({ "ticket": ticket })).await
        })
    }

    /// Signs a ticket with this authority's SA key, as `GetSliceTicket` would, for tests
    /// that need one it would not give (expired, too large, ...).
    pub fn sign_ticket(&self, body: &credentials::ticket::TicketBody) -> Value {
        let ca = self.authority_dir.join("ca");
        let key = std::fs::read_to_string(ca.join("sa.key")).unwrap();
        let cert = std::fs::read_to_string(ca.join("sa.pem")).unwrap();
        serde_json::to_value(body.sign(&key, &cert).unwrap()).unwrap()
    }

    /// The address and port a node's pools point at for the authority (server 0, or the
    /// proxy in front of it when the testbed was built `via_proxy`), and server 0's.
    pub fn proxy_and_authority(&self) -> (String, String) {
        let a = self.urls[0].trim_start_matches("https://").to_owned();
        let (host, port) = a.rsplit_once(':').unwrap();
        (format!("{host}:{}", port.parse::<u16>().unwrap() + 1000), a)
    }

    /// Every node's logs, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for f in ["scs.log", "nm.log"] {
                let l = n.log(f);
                let tail: String =
                    l.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                out += &format!("--- node {} {f} ---\n{tail}\n", i + 1);
            }
        }
        for i in 0..self.urls.len() {
            let l = std::fs::read_to_string(self.dir.path().join(format!("authority{i}.log"))).unwrap_or_default();
            let tail: String =
                l.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            out += &format!("--- authority {i} ---\n{tail}\n");
        }
        out
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep every log of a failed run where CI can show it.
            let keep = std::env::temp_dir().join("plab-testbed-failed");
            let _ = std::fs::create_dir_all(&keep);
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "cd '{}' && find . -name '*.log' | cpio -pdm '{}' 2>/dev/null",
                    self.dir.path().display(),
                    keep.display()
                ))
                .status();
            eprintln!("testbed logs kept in {}\n{}", keep.display(), self.logs());
        }
        for n in &mut self.nodes {
            n.kill_scs();
            n.kill_audit();
        }
        for n in &mut self.nodes {
            if n.nm.is_none() {
                n.start_nm();
            }
            if let Ok(mut c) = NmClient::connect(&n.socket()) {
                if let Ok(v) = c.call_value("ListVMs", json!({})) {
                    for vm in v["vms"].as_array().into_iter().flatten() {
                        let _ = c.call_value("DestroyVM", json!({"vm": vm["vm"]}));
                    }
                }
            }
            n.kill_nm();
            let _ = Command::new("ip").args(["netns", "del", &n.ns]).status();
            let _ = std::fs::remove_dir_all(&n.guest_dir);
        }
        for i in 0..self.servers.len() {
            self.kill_server(i);
        }
        let _ = Command::new("ip").args(["link", "del", &self.root_if]).status();
        for ns in [&self.backbone, &self.researcher_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
