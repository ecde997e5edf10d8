//! The plab node manager (section 4.3 of the PlanetLab architecture overview).
//!
//! It keeps the persistent rcap/RSpec table of resource pools and slivers, serves the
//! local API ([`api`]: `CreatePool`, `GetRcap`, `GetRSpec`, `SplitPool`, `Bind`, and what
//! operators need) over Unix sockets, and drives VM backends through the
//! `vm_types::Backend` trait.
#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod config;
pub mod network;
pub mod node;
pub mod rcap;
pub mod server;
pub mod shaping;
pub mod store;
pub mod wire;

pub use client::NmClient;
pub use config::Config;
pub use jsonrpc::ClientError;
pub use node::{Caller, NodeManager};
