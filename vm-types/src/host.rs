//! Everything the backends do to the host goes through [`Host`]: commands (`mount`,
//! `runc`, `qemu-img`, `mkfs`, ...), mount checks and network set-up. [`LinuxHost`] does
//! it for real; [`recording::RecordingHost`] (feature `test-util`) records each step and
//! can be told to fail any of them, so backends' undo paths are tested without root.
//!
//! Network operations are typed methods whose default implementations run `ip`; the real
//! host does them over netlink ([`crate::netlink`], with the `vserver` feature), and the
//! recording double logs the `ip` command equivalent to each one.

use crate::backend::BackendError;
pub use crate::idmap::IdMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// A command line for the host: a program, its arguments and, optionally, standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    /// The program.
    pub prog: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Text fed to its standard input.
    pub input: Option<String>,
}

impl Cmd {
    /// `prog` with no arguments.
    pub fn new(prog: impl Into<String>) -> Cmd {
        Cmd { prog: prog.into(), args: Vec::new(), input: None }
    }

    /// Adds one argument.
    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Cmd {
        self.args.push(a.as_ref().to_string_lossy().into_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, args: I) -> Cmd {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_string_lossy().into_owned()));
        self
    }

    /// Feeds `text` on standard input.
    pub fn input(mut self, text: impl Into<String>) -> Cmd {
        self.input = Some(text.into());
        self
    }

    /// The command as one line, for logs, errors and recorded calls.
    pub fn line(&self) -> String {
        std::iter::once(self.prog.as_str()).chain(self.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
    }
}

/// What backends ask of the host.
pub trait Host: Send + Sync {
    /// Runs `cmd` to completion: its standard output on success, an error carrying its
    /// standard error otherwise.
    fn run(&self, cmd: &Cmd) -> Result<String, BackendError>;

    /// Runs `cmd` with standard output and error appended to `log` (for a program that
    /// hands them on to a VM's init, so they must be a file, never a pipe). Whether it
    /// succeeded.
    fn run_logged(&self, cmd: &Cmd, log: &Path) -> Result<bool, BackendError>;

    /// True when `path` is a mount point.
    fn is_mounted(&self, path: &Path) -> bool;

    /// Does the named network namespace (`/run/netns/<name>`) exist?
    fn netns_exists(&self, name: &str) -> bool {
        Path::new("/var/run/netns").join(name).exists()
    }

    /// Does a network interface of this name exist in the current network namespace?
    fn link_exists(&self, name: &str) -> bool {
        self.run(&Cmd::new("ip").args(["link", "show", "dev", name])).is_ok()
    }

    /// Makes sure a VM's network is in place, idempotently (see [`VmLink`]).
    fn vm_network(&self, link: &VmLink<'_>) -> Result<(), BackendError> {
        vm_network_with_ip(self, link)
    }

    /// Removes a network namespace (and the VM end of its veth with it).
    fn netns_del(&self, name: &str) -> Result<(), BackendError> {
        if self.netns_exists(name) {
            self.run(&Cmd::new("ip").args(["netns", "del", name]))?;
        }
        Ok(())
    }

    /// For each `(src, dst)`, mounts at `dst` a read-only clone of the tree at `src` whose
    /// owners appear shifted by `map` (idmapped mounts, see [`crate::idmap`]).
    fn idmapped_binds(&self, pairs: &[(&Path, &Path)], map: IdMap) -> Result<(), BackendError> {
        let _ = (pairs, map);
        Err(BackendError::Unavailable("this host cannot make idmapped mounts".into()))
    }

    /// Sets sysctl `key` (dotted, `net.ipv4.ip_unprivileged_port_start`) to `value` in the
    /// named network namespace.
    fn netns_sysctl(&self, netns: &str, key: &str, value: &str) -> Result<(), BackendError> {
        self.run(&Cmd::new("ip").args(["netns", "exec", netns, "sysctl", "-qw", &format!("{key}={value}")])).map(|_| ())
    }

    /// Puts interface `dev` on `bridge` and brings it up.
    fn enslave(&self, dev: &str, bridge: &str) -> Result<(), BackendError> {
        self.run(&Cmd::new("ip").args(["link", "set", dev, "master", bridge, "up"])).map(|_| ())
    }

    /// Moves interface `dev` from the network namespace at `from` (a path such as
    /// `/proc/1/ns/net`) into the named namespace `to`.
    fn move_link(&self, dev: &str, from: &Path, to: &str) -> Result<(), BackendError> {
        let from = format!("--net={}", from.display());
        self.run(&Cmd::new("nsenter").args([from.as_str(), "ip", "link", "set", dev, "netns", to])).map(|_| ())
    }
}

/// A VM's link to its node: network namespace `netns`, a veth pair whose host end
/// `host_if` joins `bridge` and whose other end is `eth0` (with `mac`) in the namespace,
/// addressed `address/prefix_len` with a default route via `gateway`.
#[derive(Debug, Clone, Copy)]
pub struct VmLink<'a> {
    /// The VM's named network namespace.
    pub netns: &'a str,
    /// The host end of the veth pair.
    pub host_if: &'a str,
    /// The node bridge.
    pub bridge: &'a str,
    /// The VM end's MAC address.
    pub mac: &'a str,
    /// The VM's address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway (the bridge's address).
    pub gateway: Ipv4Addr,
}

/// [`Host::vm_network`] done with two `ip -batch` runs (one in the node's namespace, one
/// in the VM's): what the recording double logs, and the peer the netlink version is
/// measured against (`plab-bench`).
pub fn vm_network_with_ip<H: Host + ?Sized>(host: &H, link: &VmLink<'_>) -> Result<(), BackendError> {
    let VmLink { netns, host_if, bridge, mac, address, prefix_len, gateway } = *link;
    let veth = format!("link add {host_if} type veth peer name eth0 address {mac} netns {netns}\n");
    let mut node_batch = String::new();
    if !host.netns_exists(netns) {
        node_batch += &format!("netns add {netns}\n");
        node_batch += &veth;
    } else if !host.link_exists(host_if) {
        node_batch += &veth;
    }
    node_batch += &format!("link set {host_if} master {bridge} up\n");
    host.run(&Cmd::new("ip").args(["-batch", "-"]).input(node_batch))?;
    let vm_batch = format!(
        "link set lo up\naddr replace {address}/{prefix_len} dev eth0\nlink set eth0 up\nroute replace default via {gateway}\n"
    );
    host.run(&Cmd::new("ip").args(["-n", netns, "-batch", "-"]).input(vm_batch))?;
    Ok(())
}

/// Debian package that provides a tool, for "install this" messages.
pub fn package_of(prog: &str) -> &str {
    match prog {
        "ip" => "iproute2",
        "mkfs.ext4" | "resize2fs" => "e2fsprogs",
        "mount" | "umount" | "losetup" => "mount",
        "mkfs.vfat" => "dosfstools",
        "mcopy" => "mtools",
        "qemu-img" => "qemu-utils",
        "runc" => "runc",
        "nft" => "nftables",
        _ => prog,
    }
}

/// The error for a tool that could not be started.
pub fn spawn_error(prog: &str, e: std::io::Error) -> BackendError {
    if e.kind() == std::io::ErrorKind::NotFound {
        BackendError::Unavailable(format!("`{prog}` is not installed: apt-get install {}", package_of(prog)))
    } else {
        BackendError::Io(format!("starting {prog}"), e)
    }
}

/// The host, for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxHost;

/// The real host, shared.
pub fn linux() -> Arc<dyn Host> {
    Arc::new(LinuxHost)
}

impl Host for LinuxHost {
    fn run(&self, cmd: &Cmd) -> Result<String, BackendError> {
        let started = std::time::Instant::now();
        let mut c = Command::new(&cmd.prog);
        c.args(&cmd.args).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.stdin(if cmd.input.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = c.spawn().map_err(|e| spawn_error(&cmd.prog, e))?;
        if let (Some(text), Some(mut stdin)) = (&cmd.input, child.stdin.take()) {
            use std::io::Write;
            stdin.write_all(text.as_bytes()).map_err(|e| BackendError::Io(format!("{} stdin", cmd.prog), e))?;
        }
        let out = child.wait_with_output().map_err(|e| BackendError::Io(cmd.prog.clone(), e))?;
        tracing::debug!(ms = started.elapsed().as_secs_f64() * 1000.0, "{}", cmd.line());
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let first_input_line =
                cmd.input.as_deref().and_then(|i| i.lines().next()).map(|l| format!(" <<< {l:?}")).unwrap_or_default();
            Err(BackendError::Command {
                command: format!("{}{first_input_line}", cmd.line()),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    fn run_logged(&self, cmd: &Cmd, log: &Path) -> Result<bool, BackendError> {
        use std::os::unix::fs::OpenOptionsExt;
        // A VM's console may print what its bootscript holds: the owner's alone.
        let f = std::fs::OpenOptions::new()
            .mode(0o600)
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| BackendError::Io(log.display().to_string(), e))?;
        let f2 = f.try_clone().map_err(|e| BackendError::Io(log.display().to_string(), e))?;
        let status = Command::new(&cmd.prog)
            .args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .status()
            .map_err(|e| spawn_error(&cmd.prog, e))?;
        Ok(status.success())
    }

    #[cfg(feature = "netlink")]
    fn netns_exists(&self, name: &str) -> bool {
        crate::netlink::netns_exists(name)
    }

    #[cfg(feature = "netlink")]
    fn link_exists(&self, name: &str) -> bool {
        crate::netlink::link_exists(name)
    }

    #[cfg(feature = "netlink")]
    fn vm_network(&self, link: &VmLink<'_>) -> Result<(), BackendError> {
        crate::netlink::vm_network(link)
    }

    #[cfg(feature = "netlink")]
    fn netns_del(&self, name: &str) -> Result<(), BackendError> {
        crate::netlink::netns_del(name)
    }

    #[cfg(feature = "netlink")]
    fn enslave(&self, dev: &str, bridge: &str) -> Result<(), BackendError> {
        crate::netlink::enslave(dev, bridge)
    }

    #[cfg(feature = "netlink")]
    fn move_link(&self, dev: &str, from: &Path, to: &str) -> Result<(), BackendError> {
        crate::netlink::move_link(dev, from, to)
    }

    #[cfg(feature = "netlink")]
    fn idmapped_binds(&self, pairs: &[(&Path, &Path)], map: IdMap) -> Result<(), BackendError> {
        crate::idmap::bind(pairs, map).map_err(|e| {
            let what: Vec<String> = pairs.iter().map(|(s, d)| format!("{} at {}", s.display(), d.display())).collect();
            BackendError::Unavailable(format!(
                "idmapped mount of {}: {e} (needs Linux 5.12 or later and a filesystem that supports idmapped mounts, such as ext4, xfs, btrfs or, from Linux 6.3, tmpfs)",
                what.join(", ")
            ))
        })
    }

    #[cfg(feature = "netlink")]
    fn netns_sysctl(&self, netns: &str, key: &str, value: &str) -> Result<(), BackendError> {
        crate::netlink::sysctl(netns, key, value)
    }

    fn is_mounted(&self, path: &Path) -> bool {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
        let want = path.to_string_lossy();
        info.lines().any(|l| l.split(' ').nth(4).map(unescape_mountinfo).as_deref() == Some(&*want))
    }
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes sure the node bridge exists, carries `gateway/prefix_len` and is up. Idempotent.
pub fn ensure_bridge(host: &dyn Host, bridge: &str, gateway: Ipv4Addr, prefix_len: u8) -> Result<(), BackendError> {
    if !host.link_exists(bridge) {
        host.run(&Cmd::new("ip").args(["link", "add", bridge, "type", "bridge"]))?;
    }
    host.run(&Cmd::new("ip").args(["addr", "replace", &format!("{gateway}/{prefix_len}"), "dev", bridge]))?;
    host.run(&Cmd::new("ip").args(["link", "set", bridge, "up"]))?;
    Ok(())
}

/// A path as a command argument.
pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(any(test, feature = "test-util"))]
pub mod recording {
    //! A host that records every step and fails the ones it is told to: the test double
    //! for backends (after youki's `TestHelperSyscall`).

    use super::{Cmd, Host};
    use crate::backend::BackendError;
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    struct Rule {
        prefix: String,
        times: usize,
        outcome: Result<String, String>,
    }

    #[derive(Default)]
    struct State {
        calls: Vec<Cmd>,
        rules: Vec<Rule>,
        mounted: BTreeSet<PathBuf>,
        pinned: BTreeSet<PathBuf>,
        netns: BTreeSet<String>,
    }

    /// Records commands; every command succeeds with empty output unless a rule says
    /// otherwise. `mount`/`umount` and `ip netns add`/`del` are tracked, so mount and
    /// namespace checks answer as a real host would after them.
    #[derive(Default)]
    pub struct RecordingHost {
        state: Mutex<State>,
    }

    impl RecordingHost {
        /// A host on which everything succeeds.
        pub fn new() -> RecordingHost {
            RecordingHost::default()
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Commands whose line starts with `prefix` print `stdout` (every time). The rule
        /// set last wins over earlier ones for the same command.
        pub fn reply(&self, prefix: &str, stdout: &str) {
            self.lock().rules.insert(0, Rule { prefix: prefix.into(), times: usize::MAX, outcome: Ok(stdout.into()) });
        }

        /// The next `times` commands whose line starts with `prefix` fail with `message`.
        pub fn fail(&self, prefix: &str, times: usize, message: &str) {
            self.lock().rules.insert(0, Rule { prefix: prefix.into(), times, outcome: Err(message.into()) });
        }

        /// Every command run so far.
        pub fn calls(&self) -> Vec<Cmd> {
            self.lock().calls.clone()
        }

        /// Every command run so far, one line each.
        pub fn lines(&self) -> Vec<String> {
            self.lock().calls.iter().map(Cmd::line).collect()
        }

        /// Forgets the calls made so far.
        pub fn clear(&self) {
            self.lock().calls.clear();
        }

        /// Marks `path` mounted (or not), as if a mount had happened outside the backend.
        pub fn set_mounted(&self, path: &Path, mounted: bool) {
            let mut s = self.lock();
            if mounted {
                s.mounted.insert(path.to_owned());
            } else {
                s.mounted.remove(path);
            }
        }

        /// Keeps `path` mounted whatever unmounts it (a mount the kernel will not let go).
        pub fn pin_mounted(&self, path: &Path) {
            let mut s = self.lock();
            s.mounted.insert(path.to_owned());
            s.pinned.insert(path.to_owned());
        }

        /// Paths mounted now.
        pub fn mounted(&self) -> Vec<PathBuf> {
            self.lock().mounted.iter().cloned().collect()
        }

        /// Network namespaces that exist now.
        pub fn namespaces(&self) -> Vec<String> {
            self.lock().netns.iter().cloned().collect()
        }

        fn outcome(&self, cmd: &Cmd) -> Result<String, String> {
            let mut s = self.lock();
            s.calls.push(cmd.clone());
            let line = cmd.line();
            let mut result = Ok(String::new());
            if let Some(r) = s.rules.iter_mut().find(|r| r.times > 0 && line.starts_with(&r.prefix)) {
                if r.times != usize::MAX {
                    r.times -= 1;
                }
                result = r.outcome.clone();
            }
            if result.is_ok() {
                track(&mut s, cmd);
            }
            result
        }
    }

    /// Follows mounts and namespaces the way the real host would.
    fn track(s: &mut State, cmd: &Cmd) {
        let last = cmd.args.last().map(PathBuf::from);
        match (cmd.prog.as_str(), last) {
            ("mount", Some(target)) => {
                s.mounted.insert(target);
            }
            ("umount", Some(target)) if !s.pinned.contains(&target) => {
                s.mounted.remove(&target);
            }
            ("ip", _) => {
                let text = match &cmd.input {
                    Some(i) => i
                        .lines()
                        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
                        .collect::<Vec<_>>(),
                    None => vec![cmd.args.clone()],
                };
                for words in text {
                    match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                        ["netns", "add", n] => {
                            s.netns.insert(n.to_string());
                        }
                        ["netns", "del", n] => {
                            s.netns.remove(*n);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    impl Host for RecordingHost {
        fn run(&self, cmd: &Cmd) -> Result<String, BackendError> {
            self.outcome(cmd).map_err(|message| BackendError::Command { command: cmd.line(), message })
        }

        fn run_logged(&self, cmd: &Cmd, log: &Path) -> Result<bool, BackendError> {
            match self.outcome(cmd) {
                Ok(_) => {
                    // Like an OCI runtime's `create --pid-file FILE`.
                    if let Some(i) = cmd.args.iter().position(|a| a == "--pid-file") {
                        if let Some(file) = cmd.args.get(i + 1) {
                            std::fs::write(file, "4242").map_err(|e| BackendError::Io(file.clone(), e))?;
                        }
                    }
                    Ok(true)
                }
                Err(message) => {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(log)
                        .map_err(|e| BackendError::Io(log.display().to_string(), e))?;
                    let _ = writeln!(f, "{message}");
                    Ok(false)
                }
            }
        }

        fn is_mounted(&self, path: &Path) -> bool {
            self.lock().mounted.contains(path)
        }

        fn idmapped_binds(&self, pairs: &[(&Path, &Path)], map: super::IdMap) -> Result<(), BackendError> {
            for (src, dst) in pairs {
                let cmd = Cmd::new("idmapped-bind").arg(src).arg(format!("{}:{}", map.host_base, map.count)).arg(dst);
                self.run(&cmd).map(|_| ())?;
                self.lock().mounted.insert(dst.to_path_buf());
            }
            Ok(())
        }

        fn netns_exists(&self, name: &str) -> bool {
            self.lock().netns.contains(name)
        }

        fn link_exists(&self, name: &str) -> bool {
            self.run(&Cmd::new("ip").args(["link", "show", "dev", name])).is_ok()
        }
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        use super::*;

        #[test]
        fn records_fails_n_times_and_tracks_mounts() {
            let h = RecordingHost::new();
            h.fail("mkfs.ext4", 2, "no space");
            h.reply("runc --root /r state", "{\"status\":\"running\"}");
            assert!(h.run(&Cmd::new("mkfs.ext4").arg("/x")).is_err());
            assert!(h.run(&Cmd::new("mkfs.ext4").arg("/x")).is_err());
            assert!(h.run(&Cmd::new("mkfs.ext4").arg("/x")).is_ok(), "only twice");
            assert_eq!(
                h.run(&Cmd::new("runc").args(["--root", "/r", "state", "a"])).unwrap(),
                "{\"status\":\"running\"}"
            );
            h.run(&Cmd::new("mount").args(["-o", "loop", "/img", "/mnt"])).unwrap();
            assert!(h.is_mounted(Path::new("/mnt")));
            h.run(&Cmd::new("umount").args(["-l", "/mnt"])).unwrap();
            assert!(!h.is_mounted(Path::new("/mnt")));
            h.run(&Cmd::new("ip").args(["-batch", "-"]).input("netns add plab-a\nlink set x up\n")).unwrap();
            assert!(h.netns_exists("plab-a"));
            h.netns_del("plab-a").unwrap();
            assert!(!h.netns_exists("plab-a"));
            assert_eq!(h.lines().len(), 8);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn mountinfo_unescapes_octal() {
        assert_eq!(super::unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(super::unescape_mountinfo("/plain"), "/plain");
    }
}
