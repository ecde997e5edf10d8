//! Settings: a TOML file (`plab-scs serve --config FILE`), every key optional.
//!
//! ```toml
//! nm_socket = "/run/plab/nm.sock"      # the node manager (the service must be mapped to its slice there)
//! state_dir = "/var/lib/plab/scs"      # key, certificate, state.json
//! ticket_listen = "0.0.0.0:8444"       # the ticket endpoint (HTTPS); unset: none
//! poll_wait_secs = 30                  # long poll at the authority
//! resync_secs = 30                     # a full comparison with the node at least this often
//! poll_interval_secs = 0               # 0: long poll; n: ask every n seconds instead (PlanetLab's way)
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The service's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The node manager's socket.
    pub nm_socket: PathBuf,
    /// Where the key, certificates and state live.
    pub state_dir: PathBuf,
    /// Where users redeem tickets (HTTPS, `POST /rpc`).
    pub ticket_listen: Option<SocketAddr>,
    /// How long one long poll waits at the authority, seconds.
    pub poll_wait_secs: u64,
    /// How often, at most, the node is compared with the wanted state without a change at
    /// the authority (VMs someone removed, slices expiring), seconds.
    pub resync_secs: u64,
    /// 0: long poll. n: plain polls every n seconds, as PlanetLab's node manager did (kept
    /// for authorities behind proxies that cut long requests, and as the benchmarks' peer).
    pub poll_interval_secs: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            nm_socket: "/run/plab/nm.sock".into(),
            state_dir: "/var/lib/plab/scs".into(),
            ticket_listen: None,
            poll_wait_secs: 30,
            resync_secs: 30,
            poll_interval_secs: 0,
        }
    }
}

impl Config {
    /// Reads a TOML file; unknown keys are errors.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let c: Config = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if c.poll_wait_secs == 0 || c.poll_wait_secs > 300 {
            anyhow::bail!("{}: poll_wait_secs: {} must be 1 to 300", path.display(), c.poll_wait_secs);
        }
        if c.resync_secs == 0 {
            anyhow::bail!("{}: resync_secs: must be at least 1", path.display());
        }
        Ok(c)
    }
}
