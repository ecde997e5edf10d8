//! The plab VM type system, shared by the node manager and every service that talks to it.
//!
//! It holds the specification's vocabulary as types (section 4.10 of the PlanetLab
//! architecture overview): [`SliceName`], [`Resources`], the [`RSpec`] hierarchy with its
//! XML form, [`VmType`], and the [`Backend`] trait that each VM type implements. The node
//! manager only ever talks to a `dyn Backend`; the real backends live in feature-gated
//! modules (`vserver`, `libvirt`), every host side effect goes through [`host::Host`],
//! and [`fake`] is an in-memory backend for unit tests.
#![warn(missing_docs)]

#[cfg(feature = "kvm-probe")]
pub mod accel;
pub mod backend;
pub mod console;
pub mod fake;
pub mod files;
pub mod host;
pub mod host_key;
pub mod idmap;
#[cfg(feature = "libvirt")]
pub mod libvirt;
#[cfg(feature = "netlink")]
pub mod netlink;
pub mod resources;
pub mod rspec;
pub mod slice_name;
pub mod vm_type;
#[cfg(feature = "vserver")]
pub mod vserver;

pub use backend::{vm_mac, Backend, BackendError, Registry, VmNetwork, VmSpec, VmState, VmStatus};
pub use resources::{Quantity, ResourceError, Resources};
pub use rspec::{PoolRSpec, RSpec, RSpecClass, RSpecError, SliceAuthorityRef, SliceRSpec, SshKey};
pub use slice_name::{SliceName, SliceNameError};
pub use vm_type::VmType;
