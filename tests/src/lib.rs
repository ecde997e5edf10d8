//! Shared harness for cross-component tests and benchmarks: a node is a network namespace
//! this process creates plus a real `plab-nm serve` running in it.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.
#![allow(missing_docs)]

pub mod testbed;
pub mod xen;

use plab_nm::NmClient;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "/var/cache/plab/images/vserver-bookworm";

fn require(cond: bool, what: &str) {
    assert!(cond, "integration test prerequisite missing: {what}");
}

/// A container VM's console log is rotated past this size.
pub const CONSOLE_CAP: u64 = vm_types::vserver::CONSOLE_CAP;

pub fn prerequisites() {
    require(nix::unistd::geteuid().is_root(), "run as root (make test does)");
    for (tool, pkg) in [("runc", "runc"), ("ssh", "openssh-client"), ("ip", "iproute2"), ("mkfs.ext4", "e2fsprogs")] {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success());
        require(ok.unwrap_or(false), &format!("`{tool}`: apt-get install {pkg}"));
    }
    let image = std::env::var("PLAB_IMAGE_DIR").unwrap_or_else(|_| IMAGE.into());
    require(Path::new(&image).join(".plab-image").exists(), &format!("container image {image}: run `make image`"));
}

/// A node: a network namespace and a node manager serving in it. Dropping it tears
/// everything down.
pub struct TestNode {
    pub netns: String,
    pub dir: tempfile::TempDir,
    nm: Option<Child>,
}

impl TestNode {
    pub fn new(tag: &str) -> TestNode {
        TestNode::with_config(tag, "")
    }

    /// A node whose node manager reads `config` (TOML) as its settings file.
    pub fn with_config(tag: &str, config: &str) -> TestNode {
        let netns = format!("plab-it-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &netns]).stderr(Stdio::null()).status();
        assert!(Command::new("ip").args(["netns", "add", &netns]).status().unwrap().success());
        let dir = tempfile::tempdir().unwrap();
        // Container VMs' roots (unprivileged host uids) pass through to their directories.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        std::fs::write(dir.path().join("nm.toml"), config).unwrap();
        let mut n = TestNode { netns, dir, nm: None };
        n.start_nm();
        n
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("nm.sock")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn start_nm(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("nm.log")).unwrap();
        let image = std::env::var("PLAB_IMAGE_DIR").unwrap_or_else(|_| IMAGE.into());
        let child = Command::new(bin("plab-nm"))
            .arg("serve")
            .arg("--config")
            .arg(self.dir.path().join("nm.toml"))
            .arg("--state-dir")
            .arg(self.state())
            .arg("--socket")
            .arg(self.socket())
            .args(["--node-netns", &self.netns, "--image-dir", &image])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nm = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while NmClient::connect(&self.socket()).is_err() {
            assert!(Instant::now() < deadline, "plab-nm did not start:\n{}", self.nm_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The node manager's process id.
    pub fn nm_pid(&self) -> Option<u32> {
        self.nm.as_ref().map(|c| c.id())
    }

    pub fn kill_nm(&mut self) {
        if let Some(mut c) = self.nm.take() {
            let _ = c.kill(); // SIGKILL: no chance to clean up
            let _ = c.wait();
        }
    }

    pub fn nm_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nm.log")).unwrap_or_default()
    }

    pub fn client(&self) -> NmClient {
        NmClient::connect(&self.socket()).unwrap()
    }

    /// Runs `cmd` in the VM over OpenSSH as the slice's login; returns (status, output).
    pub fn ssh(&self, key: &Path, login: &str, addr: &str, cmd: &str) -> (i32, String) {
        self.ssh_with(key, login, addr, &ANY_HOST_KEY, cmd)
    }

    /// Runs `cmd` over ssh, accepting only `host_key` (an OpenSSH public key line, as the
    /// node manager shows it in a VM's status) as the server's key.
    pub fn ssh_verified(&self, key: &Path, login: &str, addr: &str, host_key: &str, cmd: &str) -> (i32, String) {
        let known = self.dir.path().join(format!("known_hosts-{addr}"));
        std::fs::write(&known, format!("{addr} {host_key}\n")).unwrap();
        let known = format!("UserKnownHostsFile={}", known.display());
        self.ssh_with(key, login, addr, &["StrictHostKeyChecking=yes", &known], cmd)
    }

    /// OpenSSH from inside the node's namespace, batch mode, with host key `options`.
    fn ssh_with(&self, key: &Path, login: &str, addr: &str, options: &[&str], cmd: &str) -> (i32, String) {
        let out = ssh_in(&self.netns, key, &format!("{login}@{addr}"), options, cmd);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// Waits up to `limit` until a TCP connection to `addr`:22 gets sshd's banner
    /// (`SSH-`): the moment a VM reaches ssh, before any key exchange or login.
    pub fn ssh_banner_wait(&self, addr: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let probe = format!("exec 3<>/dev/tcp/{addr}/22 && head -c 4 <&3");
        while Instant::now() < deadline {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.netns, "timeout", "3", "bash", "-c", &probe])
                .stderr(Stdio::null())
                .output()
                .unwrap();
            if out.stdout.starts_with(b"SSH-") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Waits until ssh answers (sshd starts a moment after the container; on a loaded
    /// 2-core machine running other tests beside, allow a minute).
    pub fn ssh_ready(&self, key: &Path, login: &str, addr: &str) -> (i32, String) {
        self.ssh_wait(key, login, addr, Duration::from_secs(60))
    }

    /// Waits (up to a minute) until VM `vm`'s console log holds `needle` `count` times,
    /// and returns the log: output a VM writes in the background may come after its
    /// sshd answers.
    pub fn wait_log(&self, vm: &str, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self
                .client()
                .call_value("VmLog", json!([vm]))
                .ok()
                .and_then(|v| v["log"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if log.matches(needle).count() >= count || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits up to `limit` for ssh to answer (a guest under TCG takes a while to boot).
    pub fn ssh_wait(&self, key: &Path, login: &str, addr: &str, limit: Duration) -> (i32, String) {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.ssh(key, login, addr, "true");
            if r.0 == 0 || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if self.nm.is_none() {
            self.start_nm();
        }
        if let Ok(mut c) = NmClient::connect(&self.socket()) {
            if let Ok(v) = c.call_value("ListVMs", json!({})) {
                for vm in v["vms"].as_array().into_iter().flatten() {
                    let _ = c.call_value("DestroyVM", json!({"vm": vm["vm"]}));
                }
            }
        }
        self.kill_nm();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

pub fn keypair(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "alice@test", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_owned())
}

pub fn mounts_under(p: &Path) -> usize {
    let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    m.lines().filter(|l| l.contains(&*p.to_string_lossy())).count()
}

/// A binary of this workspace, next to the running executable (`target/<profile>/`).
/// OpenSSH to `target` (`login@addr`) from inside network namespace `netns`, in batch
/// mode with a 5 s connect timeout, with the given `-o` options (host key checking).
pub fn ssh_in(netns: &str, key: &Path, target: &str, options: &[&str], cmd: &str) -> std::process::Output {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, "ssh", "-i"]).arg(key);
    for o in options.iter().chain(&[
        "BatchMode=yes",
        "ConnectTimeout=5",
        "ServerAliveInterval=5",
        "ServerAliveCountMax=3",
        "LogLevel=ERROR",
    ]) {
        c.args(["-o", o]);
    }
    c.arg(target).arg(cmd).output().unwrap()
}

/// Host key options that accept whatever key the server shows (for tests that check the
/// host key some other way, or not at all).
pub const ANY_HOST_KEY: [&str; 2] = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"];

/// Runs `plab-authority init` in `dir` (database `db`, SQLite in `dir` when `None`) and
/// then `plab-authority serve` on a free loopback port: the server and its URL. The
/// caller waits until it answers.
pub fn spawn_authority(dir: &Path, db: Option<&str>) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("https://127.0.0.1:{port}");
    let db_args: Vec<&str> = db.map(|d| vec!["--db", d]).unwrap_or_default();
    let st = Command::new(bin("plab-authority"))
        .arg("--state-dir")
        .arg(dir)
        .arg("init")
        .args(&db_args)
        .args(["--url", &url])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "plab-authority init failed");
    let child = Command::new(bin("plab-authority"))
        .env("PLAB_LOG", "warn")
        .arg("--state-dir")
        .arg(dir)
        .arg("serve")
        .args(&db_args)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .spawn()
        .unwrap();
    (child, url)
}

pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(p.exists(), "{} is not built: run `cargo build --workspace --bins` first (make test does)", p.display());
    p
}

/// The guest image `make image` builds for linux-kvm-x86.
pub const GUEST_IMAGE: &str = "/var/cache/plab/images/guest-bookworm";

/// The files a guest boots from, as the libvirt backend makes them: a qcow2 overlay on
/// the guest image sized to the quota (`<dir>/disk.qcow2`) and the NoCloud seed
/// (`<dir>/seed.img`).
pub fn guest_files(dir: &Path, spec: &vm_types::VmSpec) {
    let g = Path::new(GUEST_IMAGE);
    assert!(g.join(".plab-image").exists(), "guest image {GUEST_IMAGE} missing: run `make image`");
    vm_types::libvirt::write_seed(&vm_types::host::LinuxHost, dir, spec).unwrap();
    let _ = std::fs::remove_file(dir.join("disk.qcow2"));
    let quota = vm_types::libvirt::sector_floor(spec.resources.disk_quota_bytes());
    vm_types::libvirt::GuestImage::project(g)
        .create_overlay(&vm_types::host::LinuxHost, &dir.join("disk.qcow2"), quota)
        .unwrap();
}

/// Raw QEMU booting the guest in `dir` (see [`guest_files`]) the way the libvirt backend's
/// domain does (same kernel, initramfs, command line, rng device), inside network
/// namespace `netns` on an existing tap.
pub fn raw_qemu(
    netns: &str,
    accel: &str,
    dir: &Path,
    spec: &vm_types::VmSpec,
    tap: &str,
    console: Option<&Path>,
) -> Command {
    let g = Path::new(GUEST_IMAGE);
    let n = &spec.network;
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, "qemu-system-x86_64", "-accel", if accel == "kvm" { "kvm" } else { "tcg" }])
        .args(["-m", "256", "-smp", "1", "-nodefaults", "-display", "none", "-kernel"])
        .arg(g.join("vmlinuz"))
        .arg("-initrd")
        .arg(g.join("initrd.img"))
        .arg("-append")
        .arg(format!(
            "console=ttyS0 root=/dev/vda {} plab.ip={}/{} plab.gw={}",
            vm_types::libvirt::DIRECT_CMDLINE,
            n.address,
            n.prefix_len,
            n.gateway
        ))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", dir.join("disk.qcow2").display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw,readonly=on", dir.join("seed.img").display()))
        .arg("-netdev")
        .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={}", vm_types::vm_mac(n.address)))
        .args(["-device", "virtio-rng-pci"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(p) = console {
        c.arg("-serial").arg(format!("file:{}", p.display()));
    }
    c
}

/// Asserts that an ssh attempt reached the VM's sshd and was refused for its key: ssh's
/// exit status 255 with sshd's own "Permission denied (publickey...)", not a network
/// failure, a timeout or a host key mismatch.
pub fn assert_key_refused(r: &(i32, String), what: &str) {
    assert_eq!(r.0, 255, "{what}: ssh must fail: {}", r.1);
    assert!(
        r.1.contains("Permission denied (publickey"),
        "{what}: refused by sshd for the key, not otherwise: {}",
        r.1
    );
}

/// Asserts that ssh refused the server because its host key is not the one expected.
pub fn assert_host_key_refused(r: &(i32, String), what: &str) {
    assert_eq!(r.0, 255, "{what}: ssh must fail: {}", r.1);
    assert!(r.1.contains("Host key verification failed"), "{what}: refused for the host key: {}", r.1);
}

/// Asserts that a command run over ssh exited with exactly `code`.
pub fn assert_exit(r: &(i32, String), code: i32, what: &str) {
    assert_eq!(r.0, code, "{what}: {}", r.1);
}

/// The domain's live libvirt XML (`virsh dumpxml`).
pub fn virsh_dumpxml(domain: &str) -> String {
    let o = Command::new("virsh").args(["-c", "qemu:///system", "dumpxml", domain]).output().unwrap();
    assert!(o.status.success(), "virsh dumpxml {domain}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The command line of the QEMU process libvirt runs for `domain`.
pub fn qemu_cmdline(domain: &str) -> String {
    let pid = std::fs::read_to_string(format!("/var/run/libvirt/qemu/{domain}.pid")).unwrap_or_default();
    let cmd = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
    String::from_utf8_lossy(&cmd).replace('\0', " ")
}

/// The libvirt domain id of a running domain (changes when it is started again).
pub fn virsh_domid(domain: &str) -> String {
    let o = Command::new("virsh").args(["-c", "qemu:///system", "domid", domain]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// An "outside" network namespace joined to a node's namespace: the node gets `pub` with
/// 10.77.0.1/24 (its public address in tests), the outside `eth0` with 10.77.0.2/24 and a
/// route to the VMs (so only the node's rules keep it out). Removed on drop.
pub struct Outside {
    /// The namespace.
    pub netns: String,
}

impl Outside {
    /// Joins a new outside namespace to `node_netns`.
    pub fn new(node_netns: &str, tag: &str) -> Outside {
        let netns = format!("plab-out-{tag}-{}", std::process::id());
        let ip = |args: String| {
            let o = Command::new("sh").arg("-c").arg(format!("ip {args}")).output().unwrap();
            assert!(o.status.success(), "ip {args}: {}", String::from_utf8_lossy(&o.stderr));
        };
        let _ = Command::new("ip").args(["netns", "del", &netns]).stderr(Stdio::null()).status();
        ip(format!("netns add {netns}"));
        ip(format!("-n {node_netns} link add pub type veth peer name eth0 netns {netns}"));
        ip(format!("-n {node_netns} addr add 10.77.0.1/24 dev pub"));
        ip(format!("-n {node_netns} link set pub up"));
        ip(format!("-n {netns} link set lo up"));
        ip(format!("-n {netns} addr add 10.77.0.2/24 dev eth0"));
        ip(format!("-n {netns} link set eth0 up"));
        ip(format!("-n {netns} route add 10.213.0.0/16 via 10.77.0.1"));
        Outside { netns }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

/// Runs `f` on a thread that has joined network namespace `ns`, and waits for it.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// A plain HTTP GET from network namespace `ns`: (status, body), or why it failed.
pub fn try_http_get(ns: &str, addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    try_http(ns, addr, "GET", path, None)
}

/// A plain HTTP/1.1 request from network namespace `ns`, with a JSON body if given:
/// (status, body). The server must answer with a length or by closing (not chunked).
pub fn try_http(ns: &str, addr: &str, method: &str, path: &str, json: Option<&str>) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    in_netns(ns, || {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let body = json.unwrap_or("");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        // Read the head, then the body: as long as Content-Length says (some servers,
        // chromedriver among them, keep the connection open), else until closed.
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut buf)?;
            if n == 0 {
                break raw.len();
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        let length = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
        });
        let mut body = raw[head_end..].to_vec();
        match length {
            Some(n) => {
                while body.len() < n {
                    let got = s.read(&mut buf)?;
                    if got == 0 {
                        break;
                    }
                    body.extend_from_slice(&buf[..got]);
                }
            }
            None => {
                s.read_to_end(&mut body)?;
            }
        }
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

/// A headless Chromium (Debian's `chromium`, driven by `chromedriver` over W3C WebDriver)
/// browsing from network namespace `ns`. Both end on drop.
pub struct Browser {
    ns: String,
    session: String,
    driver: Child,
}

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Where chromedriver listens, inside the browser's namespace.
const DRIVER: &str = "127.0.0.1:9515";

impl Browser {
    /// Starts chromedriver in `ns` and opens a headless session.
    pub fn start(ns: &str) -> Browser {
        for (tool, pkg) in [("chromedriver", "chromium-driver"), ("chromium", "chromium")] {
            let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).stdout(Stdio::null()).status();
            require(
                found.is_ok_and(|s| s.success()),
                &format!("{tool} (apt-get install {pkg}; make test's set-up does)"),
            );
        }
        let driver = Command::new("ip")
            .args(["netns", "exec", ns, "chromedriver", "--port=9515"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut b = Browser { ns: ns.to_owned(), session: String::new(), driver };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !try_http(ns, DRIVER, "GET", "/status", None)
            .is_ok_and(|(s, body)| s == 200 && body.contains("\"ready\":true"))
        {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {DRIVER} in {ns} within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Root needs --no-sandbox; a namespace without /dev/shm room needs the last one.
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}}}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_owned();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let text = body.map(|b| b.to_string());
        let (status, answer) = try_http(&self.ns, DRIVER, method, path, text.as_deref()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{path}: {e}: {answer}"));
        assert_eq!(status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    /// Opens `url` and waits until it has loaded.
    pub fn goto(&self, url: &str) {
        self.call("POST", &self.at("/url"), Some(json!({"url": url})));
    }

    /// The element `css` selects (the first), by its WebDriver reference.
    pub fn find(&self, css: &str) -> String {
        let v = self.call("POST", &self.at("/element"), Some(json!({"using": "css selector", "value": css})));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_owned()
    }

    /// Types `text` into the input `css` selects, as a person would.
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &self.at(&format!("/element/{e}/value")), Some(json!({"text": text})));
    }

    /// Clicks what `css` selects.
    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &self.at(&format!("/element/{e}/click")), Some(json!({})));
    }

    /// Waits up to 20 s until the page shown has an element `css` selects (a click that
    /// submits a form returns before the next page is there).
    pub fn wait_for(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let body = json!({"using": "css selector", "value": css}).to_string();
            let (status, _) = try_http(&self.ns, DRIVER, "POST", &self.at("/element"), Some(&body)).unwrap();
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "no element {css} on {} within 20 s", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The visible text of what `css` selects.
    pub fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &self.at(&format!("/element/{e}/text")), None).as_str().unwrap_or_default().to_owned()
    }

    /// The address of the page shown.
    pub fn url(&self) -> String {
        self.call("GET", &self.at("/url"), None).as_str().unwrap_or_default().to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = try_http(&self.ns, DRIVER, "DELETE", &self.at(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A plain HTTP GET from network namespace `ns`: (status, body).
pub fn http_get(ns: &str, addr: &str, path: &str) -> (u16, String) {
    try_http_get(ns, addr, path).unwrap()
}
