//! The node side of section 4.8.2: `plab-boot`, the boot manager.
//!
//! It reads `plnode.txt`, calls the MA's boot server from the node's own address with
//! every call HMAC-authenticated by the node key, and acts on the node's state:
//!
//! - **install / reinstall**: on a real host this wipes the disk, installs the packages
//!   the MA lists (VMM, node manager, slice creation service) and chain-boots; here it
//!   prepares the node's state directory (`packages.json`, `nm/`), then reports `boot`.
//! - **boot**: makes a fresh node key pair, gets an MA-signed node certificate (the NM
//!   signs service certificates with it, section 5.5), checks for package updates and
//!   applies them, and records `boot`.
//! - **debug**: records `debug`: no slices are instantiated and only MA operators may log in.
//!
//! `plab-boot serve` repeats the update check daily and listens for the MA's trigger
//! (sent when an operator sets the node to debug), which re-runs the boot process.

use crate::client::{AuthorityClient, ClientError};
use credentials::boot_hmac::BootAuth;
use credentials::pki::KeyPair;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The node configuration file (section 4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlNode {
    /// NODE_ID.
    pub node_id: i64,
    /// NODE_KEY, decoded.
    pub node_key: Vec<u8>,
    /// IP_ADDRESS.
    pub ip: IpAddr,
    /// HOST_NAME.
    pub hostname: String,
}

impl PlNode {
    /// Parses `KEY = "value"` lines; `#` starts a comment.
    pub fn parse(text: &str) -> Result<PlNode, String> {
        let mut m = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| format!("plnode.txt line {}: expected KEY = \"value\"", i + 1))?;
            m.insert(k.trim().to_owned(), v.trim().trim_matches('"').to_owned());
        }
        let get = |k: &str| m.get(k).cloned().ok_or_else(|| format!("plnode.txt: {k} is missing"));
        Ok(PlNode {
            node_id: get("NODE_ID")?.parse().map_err(|_| "plnode.txt: NODE_ID is not a number".to_string())?,
            node_key: hex::decode(get("NODE_KEY")?).map_err(|_| "plnode.txt: NODE_KEY is not hex".to_string())?,
            ip: get("IP_ADDRESS")?.parse().map_err(|_| "plnode.txt: IP_ADDRESS is not an address".to_string())?,
            hostname: get("HOST_NAME")?,
        })
    }
}

/// What one boot ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Booted normally; `updated` packages were upgraded, `installed` if it installed first.
    Booted {
        /// Whether an install ran first.
        installed: bool,
        /// Packages upgraded.
        updated: usize,
    },
    /// In debug mode.
    Debug,
    /// The MA has the node in failboot.
    Failed,
}

/// The boot manager of one node.
pub struct BootManager {
    /// The node's configuration.
    pub plnode: PlNode,
    client: AuthorityClient,
    state_dir: PathBuf,
}

impl BootManager {
    /// A boot manager calling `server` (trusting `root_pem`) from the node's address.
    pub fn new(plnode: PlNode, server: &str, root_pem: &str, state_dir: &Path) -> Result<BootManager, ClientError> {
        let client = AuthorityClient::new(server, root_pem, None, Some(plnode.ip))?;
        std::fs::create_dir_all(state_dir).map_err(|e| ClientError::Config(format!("{}: {e}", state_dir.display())))?;
        Ok(BootManager { plnode, client, state_dir: state_dir.to_owned() })
    }

    /// One HMAC-authenticated boot call.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let auth = BootAuth::sign(&self.plnode.node_key, self.plnode.node_id, method, &Value::Array(vec![params.clone()]));
        let auth = serde_json::to_value(auth).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.client.call_with_auth(method, auth, vec![params])
    }

    fn write(&self, name: &str, text: &str) -> Result<(), ClientError> {
        std::fs::write(self.state_dir.join(name), text).map_err(|e| ClientError::Config(format!("{name}: {e}")))
    }

    fn packages(&self) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.state_dir.join("packages.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
    }

    fn update(&mut self) -> Result<usize, ClientError> {
        let mut have = self.packages();
        let r = self.call("BootCheckUpdates", json!({ "packages": have }))?;
        let updates = r["updates"].as_array().cloned().unwrap_or_default();
        for u in &updates {
            if let (Some(n), Some(v)) = (u["name"].as_str(), u["version"].as_str()) {
                have.insert(n.into(), v.into());
            }
        }
        self.write("packages.json", &serde_json::to_string_pretty(&have).unwrap_or_default())?;
        Ok(updates.len())
    }

    /// Runs the boot process once. `trigger_port` is where this node listens for the MA.
    pub fn boot(&mut self, trigger_port: Option<u16>) -> Result<Outcome, ClientError> {
        let params = match trigger_port {
            Some(p) => json!({ "trigger_port": p }),
            None => json!({}),
        };
        let mut state = self.call("BootGetState", params)?["state"].as_str().unwrap_or("").to_owned();
        let mut installed = false;
        if state == "install" || state == "reinstall" {
            // Stand-in for wiping the disk and installing: a fresh node directory.
            for d in ["nm", "certs"] {
                std::fs::create_dir_all(self.state_dir.join(d)).map_err(|e| ClientError::Config(e.to_string()))?;
            }
            self.write("packages.json", "{}")?;
            self.update()?;
            state = self.call("BootUpdateState", json!({ "state": "boot" }))?["state"].as_str().unwrap_or("").to_owned();
            installed = true;
        }
        match state.as_str() {
            "boot" => {
                let key = KeyPair::generate();
                let r = self.call("BootGetCertificate", json!({ "public_key": key.public_key_pem() }))?;
                self.write("node.key", &key.to_pem())?;
                self.write("node-cert.pem", r["certificate"].as_str().unwrap_or(""))?;
                self.write("root.pem", r["root"].as_str().unwrap_or(""))?;
                let updated = self.update()?;
                self.write("boot-state", "boot\n")?;
                Ok(Outcome::Booted { installed, updated })
            }
            "debug" => {
                self.write("boot-state", "debug\n")?;
                Ok(Outcome::Debug)
            }
            _ => {
                self.write("boot-state", "failboot\n")?;
                Ok(Outcome::Failed)
            }
        }
    }

    /// Checks a trigger message from the MA (one JSON line) against the node key.
    pub fn check_trigger(&self, line: &str) -> Result<String, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let auth: BootAuth = serde_json::from_value(v["auth"].clone()).map_err(|e| format!("auth: {e}"))?;
        if auth.node_id != self.plnode.node_id {
            return Err(format!("for node {}, not this one", auth.node_id));
        }
        auth.verify(&self.plnode.node_key, "BootTrigger", &v["params"], credentials::now()).map_err(|e| e.to_string())?;
        Ok(v["params"]["state"].as_str().unwrap_or("").to_owned())
    }
}
