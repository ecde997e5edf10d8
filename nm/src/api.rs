//! The node manager's local API: JSON-RPC 2.0, one JSON object per line, over a Unix
//! stream socket. Every method, its params and its result are listed once below; the
//! daemon, [`crate::client::NmClient`] and the `plab` CLI all use these types.
//!
//! ```text
//! → {"jsonrpc":"2.0","id":1,"method":"GetRSpec","params":{"rcap":"8f3c…"}}
//! ← {"jsonrpc":"2.0","id":1,"result":{"rspec":"<PoolRSpec …>…</PoolRSpec>\n"}}
//! ```
//!
//! Params are an object with the names below, or an array in the same order (the
//! specification's argument order). A request line may be at most 1 MiB; a longer one
//! gets error -32600 and the connection is closed. A connection idle for
//! [`IDLE_SECS`] seconds is closed, and each caller may hold at most
//! [`MAX_CONNECTIONS_PER_CALLER`] connections at once. Batches (arrays of requests) and
//! notifications (no `id`) work as JSON-RPC 2.0 says.
//!
//! # Who is calling
//! The caller is never named in a request. It is found from the socket:
//! - on the node socket (`/run/plab/nm.sock`), the peer's uid from `SO_PEERCRED`: root or
//!   a uid in `owner_uids` is the **owner** (site_admin); a uid in `slice_uids` is that
//!   slice; anyone else is refused;
//! - on a VM's own socket (`/run/plab/nm.sock` *inside* the VM, a read-only bind mount of
//!   a per-VM socket on the host), the caller is the VM's slice. A process inside a VM can
//!   reach no other socket of the node manager, so it cannot claim another slice.
//!
//! # Errors
//! `error.code` is one of the codes in [`jsonrpc::ErrorCode`]; `error.message` names the
//! field and the reason.

use jsonrpc::NoParams;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vm_types::{SliceName, SshKey, VmState, VmType};

/// Largest request line accepted.
pub const MAX_REQUEST: usize = 1 << 20;
/// Seconds a connection may stay silent before it is closed.
pub const IDLE_SECS: u64 = 300;
/// Connections one caller (a uid on the node socket, or one VM's socket) may hold at once.
pub const MAX_CONNECTIONS_PER_CALLER: usize = 32;
/// Largest console log excerpt `VmLog` returns, in bytes.
pub const MAX_LOG_BYTES: u64 = 1 << 20;

jsonrpc::params! {
    /// `CreatePool(rspec, slice_name)`.
    pub struct CreatePoolParams {
        /// The pool's RSpec (XML).
        pub rspec: String,
        /// The slice or authority that may retrieve the pool.
        pub slice_name: SliceName,
    }

    /// `GetRcap(slice_name?)`.
    pub struct GetRcapParams {
        /// The slice to ask about (owner only); a slice gets its own.
        pub slice_name: Option<SliceName>,
    }

    /// Params naming one rcap.
    pub struct RcapParams {
        /// The rcap, 32 hex digits.
        pub rcap: String,
    }

    /// `SplitPool(rcap, rspec)`.
    pub struct SplitPoolParams {
        /// The pool to split.
        pub rcap: String,
        /// The new sub-pool's RSpec (XML).
        pub rspec: String,
    }

    /// `Bind(rcap, slice_name)`.
    pub struct BindParams {
        /// The pool to bind.
        pub rcap: String,
        /// The slice whose VM gets it.
        pub slice_name: SliceName,
    }

    /// Params naming one VM.
    pub struct VmParams {
        /// The VM's name (the slice's login).
        pub vm: String,
    }

    /// `VmLog(vm, bytes?)`.
    pub struct VmLogParams {
        /// The VM's name.
        pub vm: String,
        /// How many bytes from the end (64 KiB by default, at most 1 MiB); with `from`,
        /// how many bytes from there.
        pub bytes: Option<u64>,
        /// Read from this position (a previous answer's `next`) instead of the end: for
        /// following the log.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub from: Option<u64>,
    }

    /// `UpdateVM(vm, keys, bootscript)`.
    pub struct UpdateVmParams {
        /// The VM's name.
        pub vm: String,
        /// Every key that may log in from now on (the list replaces the VM's).
        pub keys: Vec<SshKey>,
        /// The bootscript from now on (none: no bootscript).
        pub bootscript: Option<String>,
    }

    /// `Blacklist(name)` and `Unblacklist(name)`.
    pub struct BlacklistParams {
        /// A slice, or an authority (everything below it).
        pub name: SliceName,
    }

    /// `SignCertificate(public_key, server?)`.
    pub struct SignCertificateParams {
        /// The service's public key, SubjectPublicKeyInfo PEM.
        pub public_key: String,
        /// A TLS server certificate for the node's public address (for a service that
        /// listens there, such as the slice creation service's ticket endpoint) instead of
        /// a client certificate.
        pub server: Option<bool>,
        /// The owner only: one of the node's local services (`slice_uids`) to certify the
        /// key for, for a daemon that runs as root (the auditing service).
        pub slice: Option<SliceName>,
    }
}

/// A new pool's rcap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcapResult {
    /// The rcap, 32 hex digits.
    pub rcap: String,
}

/// Rcaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcapsResult {
    /// The rcaps, 32 hex digits each.
    pub rcaps: Vec<String>,
}

/// An RSpec document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RSpecResult {
    /// The RSpec (XML).
    pub rspec: String,
}

/// What the node manager wants a VM to be; it makes it so at start (reconciliation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display, strum::EnumString)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Wanted {
    /// Being made by a Bind; a crash leaves it to be removed.
    Creating,
    /// Should run.
    Running,
    /// Should stay stopped.
    Stopped,
}

/// One VM (a sliver: one slice's VM on this node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM's name: the slice's login.
    pub vm: String,
    /// The slice.
    pub slice: SliceName,
    /// The Unix login inside the VM.
    pub login: String,
    /// The VM type.
    pub vm_type: VmType,
    /// The VM's address on the node network.
    pub address: String,
    /// `login@address`, what `ssh` takes on the node.
    pub ssh: String,
    /// The port on the node's public address that forwards to the VM's ssh, when the node
    /// has one (`public_address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// The source ports (`first-last`) VM's outbound connections leave the node's public
    /// address from (ICMP ids too): every port in the block is this VM's and no other's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_ports: Option<String>,
    /// The command that logs in from elsewhere: `ssh -p PORT login@PUBLIC` through the
    /// node's forward, or `ssh login@address` on a node without one.
    #[serde(default)]
    pub ssh_command: String,
    /// The VM's RSpec as recorded (resources, keys, bootscript), XML.
    #[serde(default)]
    pub rspec: String,
    /// What the node manager wants it to be.
    pub wanted: Wanted,
    /// Resources bound to it, with units (`"256 MB"`).
    pub resources: BTreeMap<String, String>,
    /// How many ssh keys it holds.
    pub keys: usize,
    /// How many pools are bound to it.
    pub pools: usize,
    /// Live state, when asked for (`ListVMs`, `VmStatus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<VmState>,
    /// Backend facts when asked for: pid, limits in force read back from the host,
    /// `ssh_host_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<BTreeMap<String, String>>,
}

/// VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmsResult {
    /// The VMs the caller may see.
    pub vms: Vec<VmInfo>,
}

/// One pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// Node-local id.
    pub id: i64,
    /// Its rcap.
    pub rcap: String,
    /// The pool it was split from.
    pub parent: Option<i64>,
    /// The slice (or authority) it belongs to.
    pub slice: SliceName,
    /// Its RSpec class (`PoolRSpec`, `VServerSlice`, ...).
    pub class: String,
    /// The VM type it is for, if restricted.
    pub vm_type: Option<VmType>,
    /// The VM it is bound to.
    pub vm: Option<String>,
    /// Its resources, with units.
    pub resources: BTreeMap<String, String>,
}

/// Pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolsResult {
    /// The pools the caller may see.
    pub pools: Vec<PoolInfo>,
}

/// A destroyed VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestroyedResult {
    /// Its name.
    pub vm: String,
    /// Always true.
    pub destroyed: bool,
}

/// A console log excerpt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmLogResult {
    /// The VM.
    pub vm: String,
    /// The last bytes of its console (or those from `from`).
    pub log: String,
    /// The position after them, to ask `from` next time (when the VM type's console can
    /// be followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
    /// Bytes between `from` and the oldest still kept: rotated away before they were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
}

/// Facts about the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfoResult {
    /// `kvm` or `tcg`: what hypervisor VM types run with here.
    pub accelerator: Option<String>,
    /// Why.
    pub accelerator_reason: Option<String>,
    /// The node manager's version.
    pub version: String,
    /// VM types offered.
    pub vm_types: Vec<VmType>,
    /// VM types not offered, with the reason (what to install or start).
    #[serde(default)]
    pub unavailable: BTreeMap<String, String>,
    /// Problems on this node that make things slow or fail, each with the command that
    /// fixes it.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The node bridge.
    pub bridge: String,
    /// The node-private VM prefix.
    pub vm_prefix: String,
    /// The bridge's address, VMs' gateway.
    pub gateway: String,
    /// The network namespace holding the node's networking, if any.
    pub node_netns: Option<String>,
    /// The node's public address, where VMs' ssh ports are forwarded, if set.
    #[serde(default)]
    pub public_address: Option<String>,
    /// The node's id at its management authority, from its certificate (after boot).
    #[serde(default)]
    pub node_id: Option<i64>,
    /// How many pools.
    pub pools: usize,
    /// How many VMs.
    pub vms: usize,
}

/// A VM a backend holds without a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    /// Its name.
    pub vm: String,
    /// Its VM type.
    pub vm_type: VmType,
}

/// Orphans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphansResult {
    /// VMs without a record.
    pub orphans: Vec<Orphan>,
}

/// Orphans removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedResult {
    /// Names of the VMs removed.
    pub removed: Vec<String>,
}

/// The owner's blacklist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlacklistResult {
    /// Slices and authorities barred from this node.
    pub blacklist: Vec<SliceName>,
    /// VMs this call destroyed.
    #[serde(default)]
    pub destroyed: Vec<String>,
}

/// A service certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateResult {
    /// The chain, PEM: service, node, MA.
    pub certificate: String,
    /// Who it names (`service:SLICE@NODE`).
    pub identity: String,
}

jsonrpc::api! {
    /// Every method of the local API.
    pub api Method, Request, calls {
        /// `CreatePool(rspec, slice_name) -> {rcap}`: owner only. Creates a root pool holding
        /// `rspec` (XML) for `slice_name` (a slice, or an authority such as `plc`).
        CreatePool(CreatePoolParams) -> RcapResult;
        /// `GetRcap(slice_name?) -> {rcaps: [hex]}`: the rcaps of the caller's slice's pools.
        /// The owner may name any slice, or none for every pool.
        GetRcap(GetRcapParams) -> RcapsResult;
        /// `GetRSpec(rcap) -> {rspec}`: the RSpec (XML) of the pool or VM the rcap refers to.
        GetRSpec(RcapParams) -> RSpecResult;
        /// `SplitPool(rcap, rspec) -> {rcap}`: carves `rspec`'s resources out of the pool into
        /// a new pool; fails, changing nothing, when the pool holds less.
        SplitPool(SplitPoolParams) -> RcapResult;
        /// `Bind(rcap, slice_name) -> VM`: binds the pool to the slice's VM, creating and
        /// starting the VM if it does not exist, else adding the resources to it.
        Bind(BindParams) -> VmInfo;
        /// `DestroyPool(rcap) -> {}`: gives an unbound pool's resources back to its parent.
        DestroyPool(RcapParams) -> jsonrpc::Empty;
        /// `ListPools() -> {pools: [...]}`: pools visible to the caller.
        ListPools(NoParams) -> PoolsResult;
        /// `ListVMs() -> {vms: [...]}`: VMs visible to the caller, with live state.
        ListVMs(NoParams) -> VmsResult;
        /// `VmStatus(vm) -> VM`: one VM's record and live state, limits in force.
        VmStatus(VmParams) -> VmInfo;
        /// `StartVM(vm) -> VM`: starts a stopped VM (the bootscript runs).
        StartVM(VmParams) -> VmInfo;
        /// `StopVM(vm) -> VM`: stops a VM, keeping its disk.
        StopVM(VmParams) -> VmInfo;
        /// `DestroyVM(vm) -> {vm, destroyed}`: removes a VM; its pools become unbound again.
        DestroyVM(VmParams) -> DestroyedResult;
        /// `VmLog(vm, bytes?) -> {vm, log}`: the tail of the VM's console (init and bootscript).
        VmLog(VmLogParams) -> VmLogResult;
        /// `NodeInfo() -> {...}`: VM types supported, networking, counts, warnings.
        NodeInfo(NoParams) -> NodeInfoResult;
        /// `Orphans() -> {orphans: [...]}`: owner only; VMs a backend holds without a record.
        Orphans(NoParams) -> OrphansResult;
        /// `CleanOrphans() -> {removed: [...]}`: owner only; destroys the orphans.
        CleanOrphans(NoParams) -> RemovedResult;
        /// `SignCertificate(public_key) -> {certificate, identity}`: a slice only (section
        /// 5.5). The node manager certifies that `public_key` belongs to the calling slice on
        /// this node, signing with the node's MA-issued certificate; the chain (service,
        /// node, MA) verifies back to the root, so the slice can `AuthenticateCertificate`
        /// with an authority without holding any shared secret.
        SignCertificate(SignCertificateParams) -> CertificateResult;
        /// `UpdateVM(vm, keys, bootscript) -> VM`: replaces the VM's keys and bootscript
        /// (its slice, or a service designated for it). Containers see new keys at once;
        /// hypervisor guests at their next boot.
        UpdateVM(UpdateVmParams) -> VmInfo;
        /// `Blacklist(name) -> {blacklist, destroyed}`: owner only. Bars a slice, or an
        /// authority and every slice below it, from this node: their VMs are destroyed and
        /// no pool can be split or bound for them until `Unblacklist`.
        Blacklist(BlacklistParams) -> BlacklistResult;
        /// `Unblacklist(name) -> {blacklist}`: owner only.
        Unblacklist(BlacklistParams) -> BlacklistResult;
        /// `GetBlacklist() -> {blacklist}`: the owner's blacklist (anyone may read it).
        GetBlacklist(NoParams) -> BlacklistResult;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn positional_and_named_params_decode_alike() {
        let a = Request::decode("SplitPool", serde_json::json!({"rcap": "ab", "rspec": "<x/>"})).unwrap();
        let b = Request::decode("SplitPool", serde_json::json!(["ab", "<x/>"])).unwrap();
        match (a, b) {
            (Request::SplitPool(a), Request::SplitPool(b)) => assert_eq!(a, b),
            other => panic!("{other:?}"),
        }
        let e = Request::decode("GetRSpec", serde_json::json!({"rcap": "a", "slice": 1})).unwrap_err();
        assert!(e.message.contains("unknown parameter \"slice\""), "{e}");
        let e = Request::decode("Bind", serde_json::json!(["ab", "plc.Demo"])).unwrap_err();
        assert!(e.message.starts_with("slice_name: slice name \"plc.Demo\""), "{e}");
        assert_eq!(
            Request::decode("createpool", serde_json::Value::Null).unwrap_err().code,
            jsonrpc::ErrorCode::METHOD_NOT_FOUND
        );
    }

    #[test]
    fn method_names_round_trip() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()), Some(*m));
        }
        assert_eq!(Method::Bind.params(), ["rcap", "slice_name"]);
    }
}
