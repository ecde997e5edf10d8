//! Each VM's ssh host key, made by the node manager rather than inside the VM.
//!
//! The node manager knows the key before the VM first answers, so it can show the VM's
//! `known_hosts` line (status detail `ssh_host_key`) and a researcher need not trust the
//! first connection blindly. It also spares a guest under TCG the key generation at first
//! boot. The key is Ed25519 from the OS CSPRNG, kept 0600 in the VM's node-side directory
//! and reused for the VM's whole life (a Bind that updates the VM keeps it).
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::{LineEnding, PrivateKey};

use crate::BackendError;

/// The file name of the private key inside a VM's node-side directory.
pub const FILE: &str = "ssh_host_ed25519_key";

/// A VM's host key pair, in OpenSSH encodings.
#[derive(Debug, Clone)]
pub struct HostKey {
    /// The private key file's content (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub private_openssh: String,
    /// The public key line (`ssh-ed25519 AAAA... comment`).
    pub public_openssh: String,
}

/// Makes a new Ed25519 host key for VM `name`.
pub fn generate(name: &str) -> Result<HostKey, BackendError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| BackendError::Io("OS random generator".into(), e.into()))?;
    let data = KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed));
    seed.fill(0);
    let key = PrivateKey::new(data, format!("root@{name}")).map_err(encoding)?;
    let private_openssh = key.to_openssh(LineEnding::LF).map_err(encoding)?.to_string();
    let public_openssh = key.public_key().to_openssh().map_err(encoding)?;
    Ok(HostKey { private_openssh, public_openssh })
}

/// The host key kept in `dir` (see [`FILE`]), made and stored first if there is none.
pub fn ensure(dir: &Path, name: &str) -> Result<HostKey, BackendError> {
    let path = dir.join(FILE);
    if let Ok(text) = fs::read_to_string(&path) {
        if let Ok(key) = PrivateKey::from_openssh(&text) {
            let public_openssh = key.public_key().to_openssh().map_err(encoding)?;
            return Ok(HostKey { private_openssh: text, public_openssh });
        }
        tracing::warn!(path = %path.display(), "unreadable ssh host key replaced");
    }
    let key = generate(name)?;
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    f.write_all(key.private_openssh.as_bytes()).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(key)
}

/// The public key line of the host key kept in `dir`, if there is one.
pub fn public(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join(FILE)).ok()?;
    PrivateKey::from_openssh(&text).ok()?.public_key().to_openssh().ok()
}

fn encoding(e: ssh_key::Error) -> BackendError {
    BackendError::Command { command: "ssh host key".into(), message: e.to_string() }
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |e| BackendError::Io(p.display().to_string(), e)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_private_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let a = ensure(d.path(), "s1").unwrap();
        assert!(a.public_openssh.starts_with("ssh-ed25519 "), "{}", a.public_openssh);
        assert!(a.public_openssh.ends_with(" root@s1"));
        assert!(a.private_openssh.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(d.path().join(FILE)).unwrap().permissions().mode() & 0o777, 0o600);
        // Kept: a second call returns the same key; another VM gets another key.
        assert_eq!(ensure(d.path(), "s1").unwrap().public_openssh, a.public_openssh);
        assert_eq!(public(d.path()).unwrap(), a.public_openssh);
        let e = tempfile::tempdir().unwrap();
        assert_ne!(ensure(e.path(), "s1").unwrap().public_openssh, a.public_openssh);
        // OpenSSH itself accepts the private key and derives the same public key.
        let out =
            std::process::Command::new("ssh-keygen").arg("-y").arg("-f").arg(d.path().join(FILE)).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let derived = String::from_utf8(out.stdout).unwrap();
        assert_eq!(derived.split_whitespace().nth(1), a.public_openssh.split_whitespace().nth(1));
    }
}
