//! The slice creation service, `plab-scs` (sections 4.5, 4.7 and 5.3 of the PlanetLab
//! architecture overview): an unprivileged client of the node manager, running as an
//! infrastructure slice (for example `plc.scs`), that makes its node run the slices its
//! slice authorities assign to the node, and redeems users' tickets.
//!
//! | module | what |
//! |---|---|
//! | [`service`] | discovery of the owner's pools, the long poll, reconciliation, reports, tickets |
//! | [`plan`] | the pure function from wanted and present VMs to node manager calls |
//! | [`state`] | what survives a restart (slice ids, tickets, the last good answers) |
//! | [`api`], [`server`] | the ticket endpoint |
//! | [`nm`] | node manager calls from async code |
//! | [`config`] | settings |
#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod nm;
pub mod plan;
pub mod server;
pub mod service;
pub mod state;

pub use config::Config;
pub use service::Scs;
