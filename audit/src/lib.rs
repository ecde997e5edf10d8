//! The plab auditing service (section 4.6 of the PlanetLab architecture overview).
//!
//! `plab-audit serve` captures on every VM interface of its node ([`capture`]), counts
//! packets into flows ([`flow`]), stores finished flows with the slice and people
//! responsible ([`store`]) and answers the public question "which slice sent this?" over
//! HTTP ([`http`], [`query`]), with Prometheus metrics per slice ([`metrics`]). With an
//! authority configured, flows go to its archive ([`spool`]) and the people named are its
//! principals ([`contacts`]).
#![warn(missing_docs)]

pub mod authority;
pub mod capture;
pub mod config;
pub mod conntrack;
pub mod contacts;
pub mod flow;
pub mod http;
pub mod ipfix;
pub mod metrics;
pub mod query;
pub mod spool;
pub mod store;
pub mod vms;
