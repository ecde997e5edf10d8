//! `plab-audit` settings: a TOML file, every key optional.
//!
//! ```toml
//! nm_socket = "/run/plab/nm.sock"       # the node manager, asked for the node's VMs
//! db = "/var/lib/plab/audit/flows.db"   # finished flows (SQLite, owner-only)
//! listen = "0.0.0.0:8880"               # the public query (HTTP)
//! idle_timeout_secs = 15                # a flow with no packet this long has ended
//! active_timeout_secs = 60              # a longer flow is reported and counted anew
//! retention_days = 30                   # flows older than this are removed
//! ipfix_collector = "192.0.2.5:4739"    # send flows as IPFIX (RFC 7011, UDP); unset: no export
//! ipfix_domain = 1                      # the IPFIX observation domain id of this node
//! archive_url = "https://plc.example:8443"  # upload flows to the authority's archive; unset: no upload
//! archive_root = "/etc/plab/root.pem"   # the root certificate the authority chains to
//! archive_service = "plc.audit"         # the root-run service (NM root_services) the upload key is certified for
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The node manager's socket.
    pub nm_socket: PathBuf,
    /// The flow database.
    pub db: PathBuf,
    /// Where the public query listens.
    pub listen: SocketAddr,
    /// Idle timeout of a flow, seconds.
    pub idle_timeout_secs: u64,
    /// Active timeout of a flow, seconds.
    pub active_timeout_secs: u64,
    /// How long flows are kept, days.
    pub retention_days: u64,
    /// The IPFIX collector flows are exported to, if any.
    pub ipfix_collector: Option<SocketAddr>,
    /// The IPFIX observation domain id.
    pub ipfix_domain: u32,
    /// The authority whose flow archive flows are uploaded to, if any.
    pub archive_url: Option<String>,
    /// The root certificate (PEM file) the archive's authority chains to.
    pub archive_root: Option<PathBuf>,
    /// The node's root-run service (`root_services` of the node manager) the upload key is certified for.
    pub archive_service: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            nm_socket: "/run/plab/nm.sock".into(),
            db: "/var/lib/plab/audit/flows.db".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 8880)),
            idle_timeout_secs: 15,
            active_timeout_secs: 60,
            retention_days: 30,
            ipfix_collector: None,
            ipfix_domain: 1,
            archive_url: None,
            archive_root: None,
            archive_service: "plc.audit".into(),
        }
    }
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let c: Config = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        c.validate()?;
        Ok(c)
    }

    /// Refuses settings that cannot work, naming the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.idle_timeout_secs == 0 || self.idle_timeout_secs > 3600 {
            anyhow::bail!("idle_timeout_secs: {} must be 1 to 3600", self.idle_timeout_secs);
        }
        if self.active_timeout_secs < self.idle_timeout_secs || self.active_timeout_secs > 86400 {
            anyhow::bail!(
                "active_timeout_secs: {} must be at least idle_timeout_secs and at most 86400",
                self.active_timeout_secs
            );
        }
        if self.retention_days == 0 || self.retention_days > 3650 {
            anyhow::bail!("retention_days: {} must be 1 to 3650", self.retention_days);
        }
        if let Some(u) = &self.archive_url {
            let parsed = url::Url::parse(u).map_err(|e| anyhow::anyhow!("archive_url: {u:?}: {e}"))?;
            if parsed.scheme() != "https" {
                anyhow::bail!("archive_url: {u:?} must be https://");
            }
            if self.archive_root.is_none() {
                anyhow::bail!("archive_root: needed with archive_url (the root certificate the authority chains to)");
            }
        }
        vm_types::SliceName::parse(&self.archive_service)
            .map_err(|e| anyhow::anyhow!("archive_service: {:?}: {e}", self.archive_service))?;
        if let Some(c) = self.ipfix_collector {
            if c.ip().is_unspecified() || c.port() == 0 {
                anyhow::bail!("ipfix_collector: {c} is not an address and port to send to");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_field() {
        Config::default().validate().unwrap();
        assert!(toml::from_str::<Config>("listn = \"x\"").is_err());
        for (text, field) in [
            ("idle_timeout_secs = 0", "idle_timeout_secs"),
            ("active_timeout_secs = 5", "active_timeout_secs"),
            ("retention_days = 0", "retention_days"),
            ("ipfix_collector = \"0.0.0.0:4739\"", "ipfix_collector"),
            ("archive_url = \"http://x\"\narchive_root = \"/r\"", "archive_url"),
            ("archive_url = \"https://x\"", "archive_root"),
            ("archive_service = \"no dots\"", "archive_service"),
        ] {
            let c: Config = toml::from_str(text).unwrap();
            assert!(c.validate().unwrap_err().to_string().starts_with(field), "{text}");
        }
    }
}
