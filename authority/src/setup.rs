//! Bootstrapping an authority: credentials, its own organisation, a first operator.

use crate::ca::Ca;
use crate::db::Db;
use credentials::identity::Identity;
use credentials::pki::{issue, KeyPair, Profile};
use std::path::{Path, PathBuf};

/// Where `init` wrote the first operator's credentials.
pub struct OperatorCreds {
    /// Certificate chain (operator + SA), PEM.
    pub cert: String,
    /// Private key, PEM.
    pub key: String,
    /// `plab` CLI settings file.
    pub config: PathBuf,
}

/// Creates the CA files, the authority's organisation (its authority name is the
/// authority's own name) and an operator, whose key, certificate and CLI settings go to
/// `<state>/operator/`.
pub async fn init(
    state: &Path,
    name: &str,
    server_names: &[String],
    operator: &str,
    email: &str,
    db_url: &str,
    url: &str,
) -> anyhow::Result<OperatorCreds> {
    // The CA's keys and the database (every node's boot key) live here: others may not
    // even list it.
    vm_types::files::private_dir(state, 0o700).map_err(|e| anyhow::anyhow!("{}: {e}", state.display()))?;
    let ca = Ca::init(state, name, server_names)?;
    let db = Db::open(db_url).await?;
    let now = credentials::now();
    let (org_id,): (i64,) =
        sqlx::query_as(&db.q("INSERT INTO orgs (name, authority, address, created) VALUES (?, ?, '', ?) RETURNING id"))
            .bind(name.to_owned())
            .bind(name.to_owned())
            .bind(now)
            .fetch_one(db.pool())
            .await?;
    let key = KeyPair::generate();
    let cert = issue(
        &ca.sa.cert_pem,
        &ca.sa.key,
        &Identity::Principal(operator.into()),
        &key.public_key_pem(),
        Profile::Client,
        365,
    )?;
    sqlx::query(&db.q("INSERT INTO principals (name, email, org_id, roles, public_key, cert, approved, created) VALUES (?, ?, ?, 'operator,admin', ?, ?, 1, ?)"))
        .bind(operator.to_owned())
        .bind(email.to_owned())
        .bind(org_id)
        .bind(key.public_key_pem())
        .bind(cert.clone())
        .bind(now)
        .execute(db.pool())
        .await?;
    let dir = state.join("operator");
    std::fs::create_dir_all(&dir)?;
    let chain = format!("{cert}{}", ca.sa.cert_pem);
    std::fs::write(dir.join("cert.pem"), &chain)?;
    std::fs::write(dir.join("root.pem"), &ca.root.cert_pem)?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join("key.pem"))?;
        f.write_all(key.to_pem().as_bytes())?;
    }
    let config = dir.join("plab.toml");
    std::fs::write(
        &config,
        format!(
            "# plab CLI settings for operator {operator}\nurl = \"{url}\"\nroot = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.join("root.pem").display(),
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ),
    )?;
    Ok(OperatorCreds { cert: chain, key: key.to_pem(), config })
}
