//! plab's slice authority and management authority (sections 4.7 and 4.8 of the PlanetLab
//! architecture overview), served together or apart by `plab-authority serve`, and the
//! node-side boot manager client `plab-boot`.
#![warn(missing_docs)]

pub mod api;
pub mod archive;
pub mod auth;
pub mod boot;
pub mod bootmgr;
pub mod ca;
pub mod client;
pub mod db;
pub mod error;
pub mod flows;
pub mod ma;
pub mod sa;
pub mod server;
pub mod setup;
pub mod types;

pub use api::{Authority, Method, Settings};
pub use client::{AsyncAuthorityClient, AuthorityClient, ClientError};
pub use error::AuthError;
