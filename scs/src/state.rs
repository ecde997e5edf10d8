//! What the service keeps across restarts, in one JSON file written atomically (mode
//! 0600): the slice id each VM was made for, the slices redeemed by ticket and the ticket
//! nonces seen, and each authority's last good answer, so that a node whose authority is
//! unreachable keeps running what it was told to.

use plab_authority::types::NodeSlice;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A slice made from a ticket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketSlice {
    /// The authority that signed the ticket.
    pub authority: String,
    /// Keep the VM until then, Unix seconds.
    pub expires: i64,
    /// The slice's RSpec from the ticket (XML).
    pub rspec: String,
}

/// An authority's last good answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cached {
    /// Its generation.
    pub generation: i64,
    /// The slices for this node.
    pub slices: Vec<NodeSlice>,
}

/// The persisted state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// VM name → the authority's slice id it was made for.
    #[serde(default)]
    pub slice_ids: BTreeMap<String, i64>,
    /// Slice name → the ticket it was made from.
    #[serde(default)]
    pub tickets: BTreeMap<String, TicketSlice>,
    /// Ticket nonce → until when it is remembered (the ticket's expiry).
    #[serde(default)]
    pub nonces: BTreeMap<String, i64>,
    /// Authority name → its last good answer.
    #[serde(default)]
    pub cache: BTreeMap<String, Cached>,
}

/// The state file.
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The file `state.json` in `dir`.
    pub fn new(dir: &Path) -> StateFile {
        StateFile { path: dir.join("state.json") }
    }

    /// Reads the state; a missing file is an empty state, a damaged one an error.
    pub fn load(&self) -> anyhow::Result<State> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", self.path.display())),
        }
    }

    /// Writes the state (atomically, synced, 0600), forgetting nonces and tickets past
    /// their time.
    pub fn save(&self, s: &mut State, now: i64) -> anyhow::Result<()> {
        s.nonces.retain(|_, until| *until > now);
        s.tickets.retain(|_, t| t.expires > now);
        let bytes = serde_json::to_vec_pretty(s)?;
        vm_types::files::write_private(&self.path, &bytes, 0o600)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trips_private_and_forgets_what_expired() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        assert_eq!(f.load().unwrap(), State::default());
        let mut s = State::default();
        s.slice_ids.insert("plc_a".into(), 7);
        s.nonces.insert("old".into(), 5);
        s.nonces.insert("new".into(), 50);
        f.save(&mut s, 10).unwrap();
        let back = f.load().unwrap();
        assert_eq!(back.slice_ids["plc_a"], 7);
        assert_eq!(back.nonces.keys().collect::<Vec<_>>(), ["new"]);
        let mode = std::fs::metadata(dir.path().join("state.json")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(dir.path().join("state.json"), "{not json").unwrap();
        assert!(f.load().unwrap_err().to_string().contains("state.json"));
    }
}
