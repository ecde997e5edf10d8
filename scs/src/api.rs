//! The ticket endpoint (section 4.5: "Users may also contact the SCS directly if they
//! wish to synchronously create a slice on a particular node"): JSON-RPC 2.0 over HTTPS,
//! `POST /rpc`, on the node's public address, with a server certificate the node manager
//! issued (chain: service, node, MA), so a client holding the root checks it is talking
//! to a service on that node.
//!
//! ```text
//! → {"jsonrpc":"2.0","id":1,"method":"RedeemTicket","params":{"ticket":{"body":…,"signature":…,"signer":…}}}
//! ← {"jsonrpc":"2.0","id":1,"result":{"vm":"plc_princeton_codeen","state":"running","ssh":"ssh -p 22001 …",…}}
//! ```

use credentials::ticket::SignedTicket;
use serde::{Deserialize, Serialize};

jsonrpc::params! {
    /// `RedeemTicket(ticket)`.
    pub struct RedeemParams {
        /// The ticket as `GetSliceTicket` gave it.
        pub ticket: SignedTicket,
    }
}

/// The VM a ticket made (or refreshed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeemed {
    /// The slice.
    pub slice: String,
    /// The VM's name (its login).
    pub vm: String,
    /// Its state.
    pub state: String,
    /// The command that logs in.
    pub ssh: String,
    /// The node keeps the VM until then, Unix seconds.
    pub expires: i64,
}

jsonrpc::api! {
    /// The ticket endpoint's methods.
    pub api Method, Request, calls {
        /// `RedeemTicket(ticket) -> {slice, vm, state, ssh, expires}`: verifies the ticket
        /// against the slice authority certificate in this node's pool for that authority,
        /// checks that it names this node, is fresh and was not redeemed before, and makes
        /// (or refreshes) the slice's VM within the pool.
        RedeemTicket(RedeemParams) -> Redeemed;
    }
}
