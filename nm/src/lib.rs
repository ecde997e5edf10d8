//! The plab node manager (section 4.3 of the PlanetLab architecture overview).
//!
//! It keeps the persistent rcap/RSpec table of resource pools and VMs, serves the local
//! API (`CreatePool`, `GetRcap`, `GetRSpec`, `SplitPool`, `Bind`, and what operators
//! need) over a Unix socket, and drives VM backends through the `vm_types::Backend` trait.
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod node;
pub mod protocol;
pub mod rcap;
pub mod server;
pub mod store;

pub use client::{ClientError, NmClient};
pub use config::Config;
pub use node::{Caller, Node};
