//! The cloud-init NoCloud seed of a hypervisor VM: keys, bootscript, host key and address,
//! for the project's image (`plab/`) and for stock cloud images (`user-data`,
//! `network-config`, `meta-data`).
//!
//! cloud-init reads its files as YAML, and JSON is YAML: the documents are emitted with
//! `serde_json`, so no key, bootscript or path can break their syntax.

use crate::backend::{BackendError, VmSpec};
use crate::host::{s, Cmd, Host};
use crate::host_key::HostKey;
use serde_json::json;
use std::path::Path;

/// The cloud-init NoCloud `user-data` of a VM, for stock cloud images: the slice login
/// (no other user, no password) with the slice users' keys; the VM's host key, made by the
/// node manager, instead of keys generated in the guest; the bootscript as a per-boot
/// script (run with `sh`), so cloud-init runs it at every boot.
pub fn user_data(spec: &VmSpec, host_key: &HostKey) -> String {
    use base64::Engine;
    let mut doc = json!({
        "users": [{
            "name": spec.slice.login(),
            "shell": "/bin/bash",
            "lock_passwd": true,
            "ssh_authorized_keys": spec.keys.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        }],
        "disable_root": true,
        "ssh_pwauth": false,
        "ssh_deletekeys": true,
        "ssh_genkeytypes": [],
        "ssh_keys": {
            "ed25519_private": host_key.private_openssh,
            "ed25519_public": host_key.public_openssh,
        },
    });
    if let Some(b) = &spec.bootscript {
        // Run with sh, as in every other VM, whether or not it starts with `#!`.
        doc["write_files"] = json!([
            {
                "path": "/var/lib/plab/bootscript",
                "permissions": "0700",
                "encoding": "b64",
                "content": base64::engine::general_purpose::STANDARD.encode(b.as_bytes()),
            },
            {
                "path": "/var/lib/cloud/scripts/per-boot/plab-bootscript",
                "permissions": "0700",
                "content": "#!/bin/sh\nexec sh /var/lib/plab/bootscript\n",
            },
        ]);
    }
    format!("#cloud-config\n{doc}\n")
}

/// The cloud-init NoCloud `network-config` (version 2) of a VM: its address on the node
/// network and the default route, on the interface with the VM's MAC.
pub fn network_config(spec: &VmSpec) -> String {
    let n = &spec.network;
    let doc = json!({
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": { "macaddress": n.mac() },
                "set-name": "eth0",
                "addresses": [format!("{}/{}", n.address, n.prefix_len)],
                "routes": [{ "to": "0.0.0.0/0", "via": n.gateway.to_string() }],
            }
        }
    });
    format!("{doc}\n")
}

/// The NoCloud `meta-data`. The instance id changes with the seed's content, so that a
/// stock image's cloud-init applies changed keys or bootscript at the next boot (it runs
/// its per-instance steps once per instance id). Written as `key: value` lines, which the
/// project's image reads with a shell loop; the values are a slice login, hex and a host
/// name made from the login (`[a-z0-9_-]` only), so they need no quoting in YAML.
pub fn meta_data(spec: &VmSpec, user_data: &str, network_config: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new().chain_update(user_data).chain_update(network_config).finalize();
    let tag: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("instance-id: {}-{tag}\nlocal-hostname: {}\n", spec.name, spec.name.replace('_', "-"))
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
    let what = what.into();
    move |e| BackendError::Io(what, e)
}

/// Writes `<dir>/seed.img`: the VM's cloud-init NoCloud seed, a FAT image labelled
/// `cidata` and readable by root only, holding
/// - `meta-data`, `user-data` and `network-config` for stock cloud images (see
///   [`user_data`], [`network_config`], [`meta_data`]);
/// - `plab/` for the project's image: `login`, `keys/<login>`, `bootscript` (if any) and
///   `ssh_host_ed25519_key`, the same layout the container VMs see at `/etc/plab`.
///
/// The VM's host key is made first if it has none (kept in `<dir>`). The files are staged
/// in a private (0700) directory, each 0600, and the image is made 0600 before anything
/// is written into it and renamed into place when complete.
pub fn write_seed(host: &dyn Host, d: &Path, spec: &VmSpec) -> Result<(), BackendError> {
    use crate::files::write_private;
    let host_key = crate::host_key::ensure(d, &spec.name)?;
    let stage = tempfile::Builder::new().prefix(".seed-").tempdir_in(d).map_err(io("seed staging directory"))?;
    let st = stage.path();
    crate::files::private_dir(&st.join("plab/keys"), 0o700).map_err(io("seed staging directory"))?;
    let (user, net) = (user_data(spec, &host_key), network_config(spec));
    let put =
        |rel: &str, text: &str| write_private(&st.join(rel), text.as_bytes(), 0o600).map_err(io(format!("seed {rel}")));
    put("meta-data", &meta_data(spec, &user, &net))?;
    put("user-data", &user)?;
    put("network-config", &net)?;
    let login = spec.slice.login();
    put("plab/login", &format!("{login}\n"))?;
    let keys: String = spec.keys.iter().map(|k| format!("{}\n", k.as_str())).collect();
    put(&format!("plab/keys/{login}"), &keys)?;
    if let Some(b) = &spec.bootscript {
        put("plab/bootscript", b)?;
    }
    put(&format!("plab/{}", crate::host_key::FILE), &host_key.private_openssh)?;

    let tmp = d.join(".seed.img.tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("seed.img"))?;
        f.set_len(2 << 20).map_err(io("seed.img"))?;
    }
    host.run(&Cmd::new("mkfs.vfat").args(["-n", "CIDATA", &s(&tmp)]))?;
    let mut mcopy = Cmd::new("mcopy").args(["-i", &s(&tmp), "-s"]);
    for entry in ["meta-data", "user-data", "network-config", "plab"] {
        mcopy = mcopy.arg(st.join(entry));
    }
    host.run(&mcopy.arg("::/"))?;
    std::fs::rename(&tmp, d.join("seed.img")).map_err(io("seed.img"))
}
