//! The authority API's params and results, shared by the server, [`crate::client`] and
//! the `plab` CLI. Params are given after `auth`, by position (the specification's
//! argument order) or by name; see [`crate::api`] for the method list.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vm_types::SliceName;

/// A role (sections 4.7 and 4.8): the union of the SA's and MA's role sets, plus the
/// authority's own operators.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    /// Staff of the authority itself (PLC operators): every call.
    Operator,
    /// An organisation's administrative contact (PI).
    Admin,
    /// A researcher.
    User,
    /// A site's technical contact.
    Tech,
}

impl Role {
    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        s.parse().ok()
    }
    /// The role's name.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// A node's boot state (section 4.8: install, boot, debug; plus reinstall and failboot).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::VariantNames,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum BootState {
    /// Wipe the disk and install at the next boot.
    Install,
    /// Boot the standard system.
    Boot,
    /// Come up in a safe mode: no slices, only MA operators may log in.
    Debug,
    /// Install again at the next boot.
    Reinstall,
    /// The boot failed; the MA holds the node here.
    Failboot,
}

/// A slice attribute's value: text, or a number (written as the same text), so that
/// `SetSliceAttr(auth, s, "mem_limit", 512)` and `... "512"` mean the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    /// Text.
    Text(String),
    /// A number.
    Number(serde_json::Number),
}

impl AttrValue {
    /// The value as the text the RSpec holds.
    pub fn text(&self) -> String {
        match self {
            AttrValue::Text(t) => t.clone(),
            AttrValue::Number(n) => n.to_string(),
        }
    }
}

/// An organisation to add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgSpec {
    /// Short name.
    pub name: String,
    /// Its slice-name prefix (`plc.princeton`).
    pub authority: SliceName,
    /// Postal address.
    #[serde(default)]
    pub address: Option<String>,
}

/// A principal registering itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Login name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// Organisation name.
    pub org: String,
    /// Public key, SubjectPublicKeyInfo PEM.
    pub public_key: String,
}

/// A principal added by an admin or operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPrincipal {
    /// Login name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// Organisation name.
    pub org: String,
    /// Role.
    pub role: Role,
    /// Public key, SubjectPublicKeyInfo PEM.
    pub public_key: String,
}

/// A site to add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    /// Organisation name.
    pub org: String,
    /// Site name.
    pub name: String,
    /// Comma-separated network prefixes.
    #[serde(default)]
    pub subnets: Option<String>,
    /// Latitude.
    #[serde(default)]
    pub latitude: Option<f64>,
    /// Longitude.
    #[serde(default)]
    pub longitude: Option<f64>,
    /// The technical contact's login.
    #[serde(default)]
    pub tech: Option<String>,
}

/// A node to add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Site name.
    pub site: String,
    /// DNS name.
    pub hostname: String,
    /// Address.
    pub ip: String,
    /// MAC address.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Changes to a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeChanges {
    /// New DNS name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// New address.
    #[serde(default)]
    pub ip: Option<String>,
    /// New MAC address.
    #[serde(default)]
    pub mac: Option<String>,
    /// New boot state; `debug` contacts the node at once.
    #[serde(default)]
    pub state: Option<BootState>,
    /// Anything else (a node's site never changes): refused with the field's name.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

jsonrpc::params! {
    /// `AuthenticateCertificate(null, certificate)`.
    pub struct AuthenticateParams {
        /// The certificate chain, PEM, leaf first.
        pub certificate: String,
    }
    /// `AddOrg(auth, org)`.
    pub struct AddOrgParams {
        /// The organisation.
        pub org: OrgSpec,
    }
    /// `RegisterPrincipal(null, principal)`.
    pub struct RegisterParams {
        /// Who registers.
        pub principal: Registration,
    }
    /// Params naming a principal.
    pub struct NameParams {
        /// The principal's login name.
        pub name: String,
    }
    /// `AddPrincipal(auth, principal)`.
    pub struct AddPrincipalParams {
        /// The new principal.
        pub principal: NewPrincipal,
    }
    /// `RekeyPrincipal(auth, public_key)`.
    pub struct PublicKeyParams {
        /// The new public key, SubjectPublicKeyInfo PEM.
        pub public_key: String,
    }
    /// `AddPrincipalKey(auth, ssh_key)`.
    pub struct SshKeyParams {
        /// An OpenSSH public key line.
        pub ssh_key: String,
    }
    /// Params naming a slice.
    pub struct SliceParams {
        /// The slice.
        pub slice_name: String,
    }
    /// `SetSliceAttr(auth, slice_name, attribute, value)`.
    pub struct SetSliceAttrParams {
        /// The slice.
        pub slice_name: String,
        /// cpu_share, disk_quota, mem_limit, base_rate, burst_rate, sustained_rate, vm_type or bootscript.
        pub attribute: String,
        /// The value (a number may be given as a number).
        pub value: AttrValue,
    }
    /// `AddSlicePrincipal(auth, slice_name, principals)`.
    pub struct SlicePrincipalsParams {
        /// The slice.
        pub slice_name: String,
        /// Principal login names.
        pub principals: Vec<String>,
    }
    /// `AddSliceNode(auth, slice_name, nodes)`.
    pub struct SliceNodesParams {
        /// The slice.
        pub slice_name: String,
        /// Node ids.
        pub nodes: Vec<i64>,
    }
    /// `RenewSlice(auth, slice_name, expires)`.
    pub struct RenewParams {
        /// The slice.
        pub slice_name: String,
        /// The new expiry, Unix seconds.
        pub expires: i64,
    }
    /// `GetSlicesForNode(auth, node_id, since, wait)`.
    pub struct SlicesForNodeParams {
        /// The node.
        pub node_id: i64,
        /// The generation the caller has (0 or absent: none).
        pub since: Option<i64>,
        /// Seconds to wait for the generation to move past `since` before answering
        /// `unchanged` (a long poll); 0 or absent answers at once.
        pub wait: Option<u64>,
    }
    /// `ArchiveFlows(auth, node_id, flows)`.
    pub struct ArchiveFlowsParams {
        /// The node the flows were recorded on.
        pub node_id: i64,
        /// The node's flow database's own id (random, made with it): flow ids count
        /// within it.
        pub epoch: String,
        /// Finished flows, each with the node's id for it.
        pub flows: Vec<ArchivedFlow>,
    }
    /// `SliceContacts(auth, node_id, slices)`.
    pub struct SliceContactsParams {
        /// The node asking (its auditing service).
        pub node_id: i64,
        /// Slice names, of VMs on that node.
        pub slices: Vec<String>,
    }
    /// `QueryFlows(auth, src, dst?, from?, to?)`: the public query (as on each node's
    /// page; `from` and `to` are Unix seconds or RFC 3339, the window defaults to the last
    /// hour).
    pub struct QueryFlowsParams {
        /// The packet's source, `ADDR[:PORT]`.
        pub src: String,
        /// Its destination, `ADDR[:PORT]`.
        pub dst: Option<String>,
        /// The window's start.
        pub from: Option<String>,
        /// Its end.
        pub to: Option<String>,
    }
    /// `ReportSlivers(auth, node_id, slivers)`.
    pub struct ReportSliversParams {
        /// The node.
        pub node_id: i64,
        /// Every sliver of this authority's slices on the node.
        pub slivers: Vec<SliverReport>,
    }
    /// `AddSite(auth, site)`.
    pub struct AddSiteParams {
        /// The site.
        pub site: SiteSpec,
    }
    /// `AddNode(auth, node)`.
    pub struct AddNodeParams {
        /// The node.
        pub node: NodeSpec,
    }
    /// `UpdateNode(auth, node_id, node)`.
    pub struct UpdateNodeParams {
        /// The node.
        pub node_id: i64,
        /// What changes.
        pub node: NodeChanges,
    }
    /// Params naming a node.
    pub struct NodeParams {
        /// The node.
        pub node_id: i64,
    }
    /// `GetNodes(auth, node_ids?)`.
    pub struct GetNodesParams {
        /// Only these nodes (all when absent).
        pub node_ids: Option<Vec<i64>>,
    }
    /// `SetPackage(auth, name, version)`.
    pub struct PackageParams {
        /// Package name.
        pub name: String,
        /// Version nodes should run.
        pub version: AttrValue,
    }
    /// `BootGetState(hmac, {trigger_port?})`.
    pub struct BootGetStateParams {
        /// What the node tells the MA.
        pub params: Option<TriggerPort>,
    }
    /// `BootUpdateState(hmac, {state})`.
    pub struct BootUpdateStateParams {
        /// The state the node moves to.
        pub params: NewBootState,
    }
    /// `BootGetCertificate(hmac, {public_key})`.
    pub struct BootCertificateParams {
        /// The node's new public key.
        pub params: PublicKey,
    }
    /// `BootCheckUpdates(hmac, {packages})`.
    pub struct BootCheckUpdatesParams {
        /// What the node runs.
        pub params: Packages,
    }
}

/// Where the node's boot manager listens for the MA.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerPort {
    /// The port, at the node's address.
    #[serde(default)]
    pub trigger_port: Option<u16>,
}

/// A boot state to move to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBootState {
    /// The state.
    pub state: BootState,
}

/// A public key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    /// SubjectPublicKeyInfo PEM.
    pub public_key: String,
}

/// Package versions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// Name to version.
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
}

/// A session, sealed to the certificate's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionResult {
    /// The session key, encrypted to the certificate's public key.
    pub session: String,
    /// When it expires, Unix seconds.
    pub expires: i64,
    /// Who it is for.
    pub identity: String,
}

/// A new organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgIdResult {
    /// Its id.
    pub org_id: i64,
}

/// An organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgInfo {
    /// Id.
    pub org_id: i64,
    /// Name.
    pub name: String,
    /// Slice-name prefix.
    pub authority: String,
    /// Address.
    pub address: String,
}

/// A registration waiting for approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredResult {
    /// Its id.
    pub principal_id: i64,
    /// Always false: an admin approves.
    pub approved: bool,
}

/// A principal's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalCertResult {
    /// Its id.
    pub principal_id: i64,
    /// The certificate chain (principal, SA), PEM.
    pub certificate: String,
}

/// A principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalInfo {
    /// Id.
    pub principal_id: i64,
    /// Login name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// Organisation.
    pub org: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// Approved yet?
    pub approved: bool,
    /// ssh keys.
    pub ssh_keys: Vec<String>,
}

/// A certificate with the root it leads to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertResult {
    /// The chain, PEM.
    pub certificate: String,
    /// The root CA certificate, PEM.
    pub root: String,
}

/// A new slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceCreated {
    /// Its id.
    pub slice_id: i64,
    /// When it expires unless renewed, Unix seconds.
    pub expires: i64,
}

/// A slice's state (section 4.7: delegated|central, start|stop, active|deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceState {
    /// `central` or `delegated`.
    pub mode: String,
    /// `start` or `stop`.
    pub run: String,
    /// `active` or `deleted`.
    pub life: String,
}

/// A slice after a state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceStateResult {
    /// The slice.
    pub slice_name: String,
    /// Its state.
    pub state: SliceState,
}

/// A renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiresResult {
    /// The new expiry.
    pub expires: i64,
}

/// A slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceInfo {
    /// Id.
    pub slice_id: i64,
    /// Name.
    pub name: String,
    /// State.
    pub state: SliceState,
    /// Expiry.
    pub expires: i64,
    /// Its principals.
    pub principals: Vec<String>,
    /// Its nodes.
    pub nodes: Vec<i64>,
    /// Its RSpec with the principals' keys (XML).
    pub rspec: String,
}

/// A slice as a node gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSlice {
    /// The slice's database id: a slice deleted and created again under the same name
    /// has a new one, so a node knows to make its VM afresh.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Whether its VMs should run (`start`) or stay stopped (`stop`).
    pub run: String,
    /// Expiry, Unix seconds.
    pub expires: i64,
    /// RSpec with keys (XML).
    pub rspec: String,
}

/// One sliver as a node's slice creation service reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliverReport {
    /// The slice.
    pub slice: String,
    /// `running`, `stopped`, `creating`, `failed`, ...
    pub state: String,
    /// The VM's address on the node.
    #[serde(default)]
    pub address: Option<String>,
    /// The command that logs in (`ssh -p PORT login@node`).
    #[serde(default)]
    pub ssh: Option<String>,
    /// Why it is not running, when it should be.
    #[serde(default)]
    pub message: Option<String>,
}

/// A slice's slivers, as their nodes last reported them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliverStatus {
    /// The node.
    pub node_id: i64,
    /// Its host name.
    pub hostname: String,
    /// The sliver's state (`missing` when the node has not reported one).
    pub state: String,
    /// The VM's address on the node.
    pub address: Option<String>,
    /// How to log in.
    pub ssh: Option<String>,
    /// Why it is not running.
    pub message: Option<String>,
    /// When the node reported it, Unix seconds (0: never).
    pub updated: i64,
}

/// `GetSliceStatus`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceStatusResult {
    /// The slice.
    pub slice: String,
    /// Its state at the authority.
    pub state: SliceState,
    /// Expiry, Unix seconds.
    pub expires: i64,
    /// One entry per node the slice is assigned to.
    pub slivers: Vec<SliverStatus>,
}

/// A finished flow in the archive: the node's record of it and the node's id for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedFlow {
    /// The node's id for the flow (its row in the node's database).
    pub id: i64,
    /// The node it was recorded on (set by the archive in answers; ignored in uploads,
    /// where the caller's node counts).
    #[serde(default)]
    pub node_id: Option<i64>,
    /// The flow.
    pub flow: crate::flows::FlowRecord,
    /// In answers: the slice's principals at this authority, when the slice is this
    /// authority's and had the node at the time (the node's record has only its users'
    /// key comments): `name <email>` for authenticated callers, the name for anonymous ones.
    #[serde(default)]
    pub responsible: Vec<String>,
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedResult {
    /// Flows stored now.
    pub stored: usize,
    /// Flows the archive already had (an upload repeated).
    pub duplicates: usize,
}

/// The principals responsible for slices on a node, by slice name: names only (the node
/// shows them on its public page). A slice this authority does not have, or that does not
/// have the node, is left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceContactsResult {
    /// Slice name to its principals' names.
    pub contacts: std::collections::BTreeMap<String, Vec<String>>,
}

/// The flows that answer a query, earliest first, from every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsResult {
    /// The flows.
    pub flows: Vec<ArchivedFlow>,
    /// Whether there were more than one answer lists (narrow the window, give the port).
    #[serde(default)]
    pub truncated: bool,
}

/// How many reports were recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedResult {
    /// Slivers recorded.
    pub recorded: usize,
}

/// What a node should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlicesForNodeResult {
    /// The generation this answer reflects.
    pub generation: i64,
    /// True when the generation is still the caller's `since`: nothing changed.
    pub unchanged: bool,
    /// The slices, when changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices: Option<Vec<NodeSlice>>,
}

/// A new site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteIdResult {
    /// Its id.
    pub site_id: i64,
}

/// A site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteInfo {
    /// Id.
    pub site_id: i64,
    /// Name.
    pub name: String,
    /// Organisation.
    pub org: String,
    /// Network prefixes.
    pub subnets: String,
}

/// A new node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdResult {
    /// Its id.
    pub node_id: i64,
}

/// A node updated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUpdated {
    /// Its id.
    pub node_id: i64,
    /// Whether the MA reached the node's boot manager (after a change to debug).
    pub contacted: bool,
}

/// A node deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDeleted {
    /// Its id.
    pub node_id: i64,
    /// Always true.
    pub deleted: bool,
}

/// A node (never its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Id.
    pub node_id: i64,
    /// DNS name.
    pub hostname: String,
    /// Address.
    pub ip: String,
    /// MAC address.
    pub mac: String,
    /// Site.
    pub site: String,
    /// Boot state.
    pub state: BootState,
    /// Last boot-manager contact, Unix seconds.
    pub last_contact: Option<i64>,
    /// Whether it holds an MA-issued node certificate.
    pub certified: bool,
}

/// A node's configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfigResult {
    /// `plnode.txt`'s text (section 4.1).
    pub plnode: String,
    /// The root CA certificate, PEM.
    pub root: String,
}

/// What the boot server tells a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootStateResult {
    /// The node.
    pub node_id: i64,
    /// Its DNS name.
    pub hostname: String,
    /// Its state.
    pub state: BootState,
}

/// A state moved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateResult {
    /// The state.
    pub state: BootState,
}

/// One package to update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageVersion {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
}

/// Updates for a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatesResult {
    /// Packages whose version differs.
    pub updates: Vec<PackageVersion>,
    /// The node's state.
    pub state: BootState,
}

/// The trigger the MA sends a node's boot manager (`BootTrigger`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// The state the node was set to.
    pub state: BootState,
}

jsonrpc::params! {
    /// `BootTrigger(hmac, {state})`: the MA to a node's boot manager.
    pub struct TriggerParams {
        /// What happened.
        pub params: Trigger,
    }
}

/// The boot manager's answer to a trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerResult {
    /// True when the trigger was accepted and the boot process runs again.
    pub accepted: bool,
}

jsonrpc::api! {
    /// The boot manager's one method, served on the node (`plab-boot serve`).
    pub api TriggerMethod, TriggerRequest, trigger_calls {
        /// `BootTrigger(hmac, {state}) -> {accepted}`: re-run the boot process now.
        BootTrigger(TriggerParams) -> TriggerResult;
    }
}
