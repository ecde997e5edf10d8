//! The authority's keys and certificates on disk (`<state_dir>/ca/`), made once by
//! `plab-authority init`:
//!
//! | file | what |
//! |---|---|
//! | `root.pem`, `root.key` | the root CA (its certificate is the well-known root key of section 5.1.1; keep the key offline in production) |
//! | `sa.pem`, `sa.key` | the slice authority: signs principal certificates and tickets |
//! | `ma.pem`, `ma.key` | the management authority: signs node certificates |
//! | `server.pem`, `server.key` | the HTTPS server certificate, for `server_names` |
//! | `node-owners.pem` | the SA certificate and the root: what node owners put in the pools they give this authority (section 4.9) |

use credentials::identity::{AuthorityKind, Identity};
use credentials::pki::{issue, new_root, Cert, KeyPair, Profile};
use std::path::{Path, PathBuf};

/// One certificate with its key.
pub struct Signer {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Parsed certificate.
    pub cert: Cert,
    /// Private key.
    pub key: KeyPair,
    /// Private key PEM.
    pub key_pem: String,
}

/// The authority's credentials.
pub struct Ca {
    /// Root CA.
    pub root: Signer,
    /// Slice authority.
    pub sa: Signer,
    /// Management authority.
    pub ma: Signer,
    /// HTTPS server certificate and key.
    pub server: Signer,
    /// The authority's name (`plc`).
    pub name: String,
}

fn load(dir: &Path, stem: &str) -> anyhow::Result<Signer> {
    let cert_pem = std::fs::read_to_string(dir.join(format!("{stem}.pem")))
        .map_err(|e| anyhow::anyhow!("{}/{stem}.pem: {e} (run `plab-authority init` first)", dir.display()))?;
    let key_pem = std::fs::read_to_string(dir.join(format!("{stem}.key")))
        .map_err(|e| anyhow::anyhow!("{}/{stem}.key: {e}", dir.display()))?;
    Ok(Signer { cert: Cert::from_pem(&cert_pem)?, key: KeyPair::from_pem(&key_pem)?, cert_pem, key_pem })
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

impl Ca {
    /// The directory of an authority's credentials.
    pub fn dir(state_dir: &Path) -> PathBuf {
        state_dir.join("ca")
    }

    /// Creates the credentials (refuses to overwrite existing ones).
    pub fn init(state_dir: &Path, name: &str, server_names: &[String]) -> anyhow::Result<Ca> {
        let dir = Ca::dir(state_dir);
        if dir.join("root.pem").exists() {
            anyhow::bail!("{}: credentials exist already; not overwriting them", dir.display());
        }
        vm_types::files::private_dir(&dir, 0o700).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let rk = KeyPair::generate();
        let root = new_root(name, &rk, 3650)?;
        let make = |stem: &str, id: &Identity, profile: Profile<'_>| -> anyhow::Result<()> {
            let k = KeyPair::generate();
            let c = issue(&root, &rk, id, &k.public_key_pem(), profile, 825)?;
            std::fs::write(dir.join(format!("{stem}.pem")), c)?;
            write_secret(&dir.join(format!("{stem}.key")), &k.to_pem())
        };
        make("sa", &Identity::Authority(AuthorityKind::Sa, name.into()), Profile::Authority)?;
        make("ma", &Identity::Authority(AuthorityKind::Ma, name.into()), Profile::Authority)?;
        make("server", &Identity::Authority(AuthorityKind::Sa, name.into()), Profile::Server(server_names))?;
        std::fs::write(dir.join("root.pem"), &root)?;
        write_secret(&dir.join("root.key"), &rk.to_pem())?;
        let sa = std::fs::read_to_string(dir.join("sa.pem"))?;
        std::fs::write(dir.join("node-owners.pem"), format!("{sa}{root}"))?;
        Ca::load(state_dir, name)
    }

    /// Loads the credentials.
    pub fn load(state_dir: &Path, name: &str) -> anyhow::Result<Ca> {
        let dir = Ca::dir(state_dir);
        Ok(Ca {
            root: load(&dir, "root")?,
            sa: load(&dir, "sa")?,
            ma: load(&dir, "ma")?,
            server: load(&dir, "server")?,
            name: name.into(),
        })
    }
}
