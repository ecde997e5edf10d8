//! Small helpers for driving host tools (`ip`, `mount`, ...) with errors that say what to
//! install when a tool is missing.

use crate::backend::BackendError;
use std::path::Path;
use std::process::{Command, Stdio};

/// Debian package that provides a tool, for "install this" messages.
fn package_of(prog: &str) -> &str {
    match prog {
        "ip" => "iproute2",
        "mkfs.ext4" | "resize2fs" => "e2fsprogs",
        "mount" | "umount" | "losetup" => "mount",
        "runc" => "runc",
        _ => prog,
    }
}

/// Runs a command to completion; its stdout on success, its stderr in the error otherwise.
pub fn run(prog: &str, args: &[&str]) -> Result<String, BackendError> {
    let started = std::time::Instant::now();
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(prog, e))?;
    tracing::debug!(ms = started.elapsed().as_secs_f64() * 1000.0, "{prog} {}", args.join(" "));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(BackendError::Command {
            command: format!("{prog} {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Like [`run`], feeding `input` on standard input (for `ip -batch -`).
pub fn run_with_input(prog: &str, args: &[&str], input: &str) -> Result<String, BackendError> {
    use std::io::Write;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(prog, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(|e| BackendError::Io(format!("{prog} stdin"), e))?;
    }
    let out = child.wait_with_output().map_err(|e| BackendError::Io(prog.to_owned(), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(BackendError::Command {
            command: format!("{prog} {} <<< {:?}", args.join(" "), input.lines().next().unwrap_or("")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
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

/// True when `path` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4).map(unescape_mountinfo).as_deref() == Some(&*want))
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

/// Does a network interface of this name exist in the current network namespace?
/// (Asked over netlink: /sys/class/net shows the namespace that mounted /sys, which is not
/// ours when the node manager runs in a node namespace.)
pub fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).is_ok()
}

/// Makes sure the node bridge exists, carries `gateway/prefix_len` and is up. Idempotent.
pub fn ensure_bridge(bridge: &str, gateway: std::net::Ipv4Addr, prefix_len: u8) -> Result<(), BackendError> {
    if !link_exists(bridge) {
        run("ip", &["link", "add", bridge, "type", "bridge"])?;
    }
    run("ip", &["addr", "replace", &format!("{gateway}/{prefix_len}"), "dev", bridge])?;
    run("ip", &["link", "set", bridge, "up"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_unescapes_octal() {
        assert_eq!(super::unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(super::unescape_mountinfo("/plain"), "/plain");
    }
}
