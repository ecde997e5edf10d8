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
//! The node's private key and every file it writes are created 0600 in a 0700 state
//! directory, atomically. `plab-boot serve` repeats the update check daily and serves the
//! MA's `BootTrigger` call (sent when an operator sets the node to debug), which re-runs
//! the boot process; see [`TriggerServer`].

use crate::client::{AuthorityClient, ClientError};
use crate::types::*;
use credentials::boot_hmac::{BootAuth, NodeKey, MAX_SKEW};
use credentials::pki::KeyPair;
use jsonrpc::{Call, ErrorCode, RpcError, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The node configuration file (section 4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlNode {
    /// NODE_ID.
    pub node_id: i64,
    /// NODE_KEY.
    pub node_key: NodeKey,
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
            let (k, v) =
                line.split_once('=').ok_or_else(|| format!("plnode.txt line {}: expected KEY = \"value\"", i + 1))?;
            m.insert(k.trim().to_owned(), v.trim().trim_matches('"').to_owned());
        }
        let get = |k: &str| m.get(k).cloned().ok_or_else(|| format!("plnode.txt: {k} is missing"));
        Ok(PlNode {
            node_id: get("NODE_ID")?.parse().map_err(|_| "plnode.txt: NODE_ID is not a number".to_string())?,
            node_key: NodeKey::from_hex(&get("NODE_KEY")?).map_err(|e| format!("plnode.txt: NODE_KEY: {e}"))?,
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
        vm_types::files::private_dir(state_dir, 0o700)
            .map_err(|e| ClientError::Setup(format!("{}: {e}", state_dir.display())))?;
        Ok(BootManager { plnode, client, state_dir: state_dir.to_owned() })
    }

    /// One HMAC-authenticated boot call, raw.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let auth =
            BootAuth::sign(&self.plnode.node_key, self.plnode.node_id, method, &Value::Array(vec![params.clone()]));
        let auth = serde_json::to_value(auth).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.client.call_with_auth(method, auth, vec![params])
    }

    /// One HMAC-authenticated boot call, typed: `params` is the call's one object.
    fn typed<C: Call>(&mut self, params: Value) -> Result<C::Result, ClientError> {
        let v = self.call(C::METHOD, params)?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(format!("{}: {e}", C::METHOD)))
    }

    fn write(&self, name: &str, text: &str) -> Result<(), ClientError> {
        vm_types::files::write_private(&self.state_dir.join(name), text.as_bytes(), 0o600)
            .map_err(|e| ClientError::Setup(format!("{}: {e}", self.state_dir.join(name).display())))
    }

    fn packages(&self) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.state_dir.join("packages.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn update(&mut self) -> Result<usize, ClientError> {
        use crate::api::calls::BootCheckUpdates;
        let mut have = self.packages();
        let r = self.typed::<BootCheckUpdates>(serde_json::json!({ "packages": have }))?;
        for u in &r.updates {
            have.insert(u.name.clone(), u.version.clone());
        }
        self.write("packages.json", &serde_json::to_string_pretty(&have).unwrap_or_default())?;
        Ok(r.updates.len())
    }

    /// Runs the boot process once. `trigger_port` is where this node listens for the MA.
    pub fn boot(&mut self, trigger_port: Option<u16>) -> Result<Outcome, ClientError> {
        use crate::api::calls::{BootGetCertificate, BootGetState, BootUpdateState};
        let params = match trigger_port {
            Some(p) => serde_json::json!({ "trigger_port": p }),
            None => serde_json::json!({}),
        };
        let mut state = self.typed::<BootGetState>(params)?.state;
        let mut installed = false;
        if matches!(state, BootState::Install | BootState::Reinstall) {
            // Stand-in for wiping the disk and installing: a fresh node directory.
            for d in ["nm", "certs"] {
                vm_types::files::private_dir(&self.state_dir.join(d), 0o700)
                    .map_err(|e| ClientError::Setup(e.to_string()))?;
            }
            self.write("packages.json", "{}")?;
            self.update()?;
            state = self.typed::<BootUpdateState>(serde_json::json!({ "state": BootState::Boot }))?.state;
            installed = true;
        }
        match state {
            BootState::Boot => {
                let key = KeyPair::generate();
                let r = self.typed::<BootGetCertificate>(serde_json::json!({ "public_key": key.public_key_pem() }))?;
                self.write("node.key", &key.to_pem())?;
                self.write("node-cert.pem", &r.certificate)?;
                self.write("root.pem", &r.root)?;
                let updated = self.update()?;
                self.write("boot-state", "boot\n")?;
                Ok(Outcome::Booted { installed, updated })
            }
            BootState::Debug => {
                self.write("boot-state", "debug\n")?;
                Ok(Outcome::Debug)
            }
            _ => {
                self.write("boot-state", "failboot\n")?;
                Ok(Outcome::Failed)
            }
        }
    }
}

/// The node's side of the MA's trigger: a one-method JSON-RPC server (`BootTrigger`),
/// one message per line. A trigger must carry a valid HMAC with the node key, be fresh
/// (within the HMAC's clock skew) and never have been seen before: a trigger captured on
/// the wire cannot be replayed.
pub struct TriggerServer {
    node_id: i64,
    key: NodeKey,
    seen: Mutex<HashMap<String, i64>>,
    /// Where accepted triggers go (to the boot loop).
    pub accepted: tokio::sync::mpsc::Sender<BootState>,
}

impl TriggerServer {
    /// A trigger server for node `node_id` with `key`; accepted triggers are sent on `accepted`.
    pub fn new(node_id: i64, key: NodeKey, accepted: tokio::sync::mpsc::Sender<BootState>) -> TriggerServer {
        TriggerServer { node_id, key, seen: Mutex::new(HashMap::new()), accepted }
    }

    /// Checks one trigger (its `auth` and params) at time `now`.
    pub fn check(&self, auth: &Value, params: &Value, now: i64) -> Result<BootState, RpcError> {
        let denied = |m: String| RpcError::new(ErrorCode::NOT_AUTHENTICATED, m);
        let ba: BootAuth = serde_json::from_value(auth.clone()).map_err(|e| denied(format!("auth: {e}")))?;
        if ba.node_id != self.node_id {
            return Err(denied(format!("auth.node_id: for node {}, not this one", ba.node_id)));
        }
        ba.verify(&self.key, "BootTrigger", params, now).map_err(|e| denied(e.to_string()))?;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.retain(|_, at| now.abs_diff(*at) <= 2 * MAX_SKEW as u64);
            if seen.insert(ba.nonce.clone(), now).is_some() {
                return Err(denied("auth.nonce: replayed trigger refused".into()));
            }
        }
        let p: TriggerParams = jsonrpc::params::decode("BootTrigger", params.clone())?;
        Ok(p.params.state)
    }
}

impl jsonrpc::server::Handler for TriggerServer {
    type Caller = ();
    async fn call(&self, _: &(), method: &str, params: Value) -> Result<Value, RpcError> {
        if TriggerMethod::parse(method).is_none() {
            return Err(RpcError::new(ErrorCode::METHOD_NOT_FOUND, format!("method: no method {method:?}")));
        }
        let (auth, rest) = crate::api::split_auth(params)?;
        let state = self.check(&auth, &rest, credentials::now())?;
        // A full queue means a boot is pending already: this trigger is folded into it.
        let _ = self.accepted.try_send(state);
        jsonrpc::reply::<trigger_calls::BootTrigger>(Ok(TriggerResult { accepted: true }))
    }
}

/// How long one trigger connection may take, from accept to answer.
pub const TRIGGER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest trigger message.
pub const MAX_TRIGGER: usize = 8 * 1024;

/// Serves the trigger on `listener`: each connection in its own task, with a whole-
/// connection deadline and a small line limit, so no peer (a VM included) can hold the
/// listener or the boot manager's memory.
pub async fn serve_triggers(server: std::sync::Arc<TriggerServer>, listener: tokio::net::TcpListener) {
    let limits = jsonrpc::server::LineLimits { max_line: MAX_TRIGGER, idle: TRIGGER_DEADLINE, write: TRIGGER_DEADLINE };
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many trigger connections; dropped one");
            continue;
        };
        let s = server.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (r, w) = stream.into_split();
            let _ = tokio::time::timeout(TRIGGER_DEADLINE, jsonrpc::server::serve_lines(&*s, &(), r, w, limits)).await;
        });
    }
}
