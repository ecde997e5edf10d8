//! The flow archive (section 4.6): each node's auditing service uploads its finished
//! flows (`ArchiveFlows`, at least once from a disk spool, so a repeat is a no-op), and
//! anyone asks the public query across every node (`QueryFlows`), as on a node's own page;
//! the node's page names each slice's principals from here (`SliceContacts`).

use crate::api::Authority;
use crate::auth::Caller;
use crate::error::AuthError;
use crate::flows::{FlowRecord, Query};
use crate::types::{
    ArchiveFlowsParams, ArchivedFlow, ArchivedResult, FlowsResult, QueryFlowsParams, SliceContactsParams,
    SliceContactsResult,
};
use std::collections::btree_map::{BTreeMap, Entry};

/// Flows one upload may carry.
pub const MAX_UPLOAD: usize = 1000;
/// Slice names one `SliceContacts` call may ask about.
pub const MAX_CONTACT_SLICES: usize = 256;
/// Flows one answer lists.
pub const MAX_ANSWER: usize = 1000;
/// Candidates one query reads from the database before matching.
const MAX_CANDIDATES: i64 = 5000;
/// The longest flow the archive takes: a node's active timeout is at most a day.
pub const MAX_FLOW_MS: i64 = 86_400_000;
/// How far in the future a flow may end (clock skew between node and authority).
const MAX_SKEW_MS: i64 = 300_000;

/// Checks one uploaded flow from the node at `node_ip`; the reason names the field.
fn check(i: usize, f: &FlowRecord, now_ms: i64, oldest_ms: i64, node_ip: &str) -> Result<(), AuthError> {
    let bad = |field: &str, why: &str| AuthError::invalid("flows", format!("[{i}].{field}: {why}"));
    if f.first_ms < oldest_ms || f.first_ms > f.last_ms {
        return Err(bad("first_ms", "after last_ms, or older than the archive keeps"));
    }
    if f.last_ms - f.first_ms > MAX_FLOW_MS || f.last_ms > now_ms + MAX_SKEW_MS {
        return Err(bad("last_ms", "more than a day after first_ms, or in the future"));
    }
    if f.packets == 0 || f.bytes > i64::MAX as u64 || f.packets > i64::MAX as u64 {
        return Err(bad("packets", "a flow has at least one packet, and counts fit in 63 bits"));
    }
    let m = &f.meta;
    for (field, v) in [("meta.vm", &m.vm), ("meta.slice", &m.slice), ("meta.iface", &m.iface)] {
        if v.is_empty() || v.len() > 255 {
            return Err(bad(field, "must be 1 to 255 bytes"));
        }
    }
    if m.users.len() > 64 || m.users.iter().any(|u| u.len() > 255) {
        return Err(bad("meta.users", "at most 64 names of at most 255 bytes"));
    }
    if f.post_nat_src.as_ref().is_some_and(|s| s.len() > 64) {
        return Err(bad("post_nat_src", "longer than 64 bytes"));
    }
    if m.nat_ports.is_some_and(|(a, b)| a > b) {
        return Err(bad("meta.nat_ports", "the block's first port is after its last"));
    }
    // The public address is the node's own, as the authority has it: a node cannot file
    // flows under another address.
    if m.public_addr.is_some_and(|a| a.to_string() != node_ip) {
        return Err(bad("meta.public_addr", &format!("is not this node's address ({node_ip})")));
    }
    // What the outside saw is the public address with the VM's block or a port in it.
    if let Some(p) = &f.post_nat_src {
        let addr = p.rsplit_once(':').map(|(a, _)| a);
        if m.public_addr.is_none() || addr != m.public_addr.map(|a| a.to_string()).as_deref() {
            return Err(bad("post_nat_src", "not the flow's meta.public_addr"));
        }
        if let Some(port) = f.post_nat_port() {
            if !m.nat_ports.is_some_and(|(a, b)| (a..=b).contains(&port)) {
                return Err(bad("post_nat_src", "the port is not in meta.nat_ports"));
            }
        }
    }
    Ok(())
}

impl Authority {
    /// The services this authority lets upload a node's flows: `audit_services`, or
    /// `<name>.audit` when none is set.
    fn audit_services(&self) -> Vec<String> {
        if self.settings.audit_services.is_empty() {
            vec![format!("{}.audit", self.ca.name)]
        } else {
            self.settings.audit_services.clone()
        }
    }

    /// Is `slice` one of the services this authority lets upload a node's flows?
    pub(crate) fn is_audit_service(&self, slice: &str) -> bool {
        self.audit_services().iter().any(|s| s == slice)
    }

    pub(crate) async fn archive_flows(
        &self,
        c: &Caller,
        p: ArchiveFlowsParams,
        now: i64,
    ) -> Result<ArchivedResult, AuthError> {
        // Only the auditing service the node itself certified uploads for it: a node
        // cannot put flows under another node's name, nor a slice under anyone's.
        self.node_audit_service(c, p.node_id, "ArchiveFlows")?;
        if p.flows.len() > MAX_UPLOAD {
            return Err(AuthError::invalid("flows", format!("at most {MAX_UPLOAD} per upload")));
        }
        if p.epoch.is_empty() || p.epoch.len() > 64 || !p.epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(AuthError::invalid("epoch", "1 to 64 letters and digits"));
        }
        let (node_ip,): (String,) = sqlx::query_as(&self.db.q("SELECT ip FROM nodes WHERE id = ?"))
            .bind(p.node_id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| AuthError::not_found(format!("node_id: no node {}", p.node_id)))?;
        let oldest = now * 1000 - self.settings.flow_retention_days * 86_400_000;
        for (i, f) in p.flows.iter().enumerate() {
            check(i, &f.flow, now * 1000, oldest, &node_ip)?;
        }
        let mut tx = self.db.begin().await?;
        let mut stored = 0;
        let sql = self.db.q(
            "INSERT INTO flows (node_id, epoch, flow_id, proto, src, sport, dst, dport, public_addr, first_ms, last_ms, record, received)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        );
        for f in &p.flows {
            let r = &f.flow;
            let record = serde_json::to_string(r).map_err(AuthError::internal)?;
            let done = sqlx::query(&sql)
                .bind(p.node_id)
                .bind(p.epoch.clone())
                .bind(f.id)
                .bind(i32::from(r.proto))
                .bind(r.src.to_string())
                .bind(i32::from(r.sport))
                .bind(r.dst.to_string())
                .bind(i32::from(r.dport))
                .bind(r.meta.public_addr.map(|a| a.to_string()))
                .bind(r.first_ms)
                .bind(r.last_ms)
                .bind(record)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            stored += done.rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(ArchivedResult { stored, duplicates: p.flows.len() - stored })
    }

    /// Is `c` the auditing service that node `node_id` certified?
    fn node_audit_service(&self, c: &Caller, node_id: i64, method: &str) -> Result<(), AuthError> {
        match c {
            Caller::Service { slice, node } if *node == node_id && self.is_audit_service(slice) => Ok(()),
            _ => Err(AuthError::denied(
                method,
                &format!("the auditing service ({}) of node {node_id}", self.audit_services().join(", ")),
            )),
        }
    }

    /// Who is responsible for the slices on a node, for the node's public page: the
    /// principals (names) of each slice of that name, newest, that has the node.
    pub(crate) async fn slice_contacts(
        &self,
        c: &Caller,
        p: SliceContactsParams,
    ) -> Result<SliceContactsResult, AuthError> {
        self.node_audit_service(c, p.node_id, "SliceContacts")?;
        if p.slices.len() > MAX_CONTACT_SLICES {
            return Err(AuthError::invalid("slices", format!("at most {MAX_CONTACT_SLICES} names per call")));
        }
        let mut contacts = BTreeMap::new();
        for name in p.slices {
            if contacts.contains_key(&name) {
                continue;
            }
            let id: Option<(i64,)> =
                sqlx::query_as(&self.db.q("SELECT id FROM slices WHERE name = ? ORDER BY id DESC LIMIT 1"))
                    .bind(name.clone())
                    .fetch_optional(self.db.pool())
                    .await?;
            let Some((id,)) = id else { continue };
            let people = self.slice_people(id, p.node_id, false).await?;
            if !people.is_empty() {
                contacts.insert(name, people);
            }
        }
        Ok(SliceContactsResult { contacts })
    }

    pub(crate) async fn query_flows(&self, c: &Caller, p: QueryFlowsParams) -> Result<FlowsResult, AuthError> {
        let q = Query::from_fields(Some(&p.src), p.dst.as_deref(), p.from.as_deref(), p.to.as_deref(), Query::now_ms())
            .map_err(|e| AuthError::invalid(e.field, e.reason))?;
        // Candidates by the source's address (on a VM's interface, or the node's public
        // one), within the window widened by the longest flow: each of the three is an
        // index range.
        let addr = q.src.addr.to_string();
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(&self.db.q("SELECT node_id, flow_id, record FROM flows
             WHERE (src = ? OR public_addr = ?) AND first_ms BETWEEN ? AND ? AND last_ms >= ?
             ORDER BY first_ms, node_id, flow_id LIMIT ?"))
        .bind(addr.clone())
        .bind(addr)
        .bind(q.from_ms - MAX_FLOW_MS)
        .bind(q.to_ms)
        .bind(q.from_ms)
        .bind(MAX_CANDIDATES + 1)
        .fetch_all(self.db.pool())
        .await?;
        let mut truncated = rows.len() as i64 > MAX_CANDIDATES;
        let emails = !matches!(c, Caller::Anonymous);
        let mut flows = Vec::new();
        // Database work per distinct slice name and per distinct (slice, node), not per flow.
        let mut slices: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        let mut people: BTreeMap<(i64, i64), Vec<String>> = BTreeMap::new();
        for (node, id, record) in rows.into_iter().take(MAX_CANDIDATES as usize) {
            let Ok(flow) = serde_json::from_str::<FlowRecord>(&record) else { continue };
            if !flow.matches(&q) {
                continue;
            }
            if flows.len() >= MAX_ANSWER {
                truncated = true;
                break;
            }
            if let Entry::Vacant(e) = slices.entry(flow.meta.slice.clone()) {
                let made: Vec<(i64, i64)> =
                    sqlx::query_as(&self.db.q("SELECT id, created FROM slices WHERE name = ? ORDER BY id"))
                        .bind(flow.meta.slice.clone())
                        .fetch_all(self.db.pool())
                        .await?;
                e.insert(made);
            }
            // The slice of that name as it was when the flow began (a name made again
            // later is another slice).
            let at = flow.first_ms / 1000;
            let slice_id = slices
                .get(&flow.meta.slice)
                .and_then(|made| made.iter().rev().find(|(_, created)| *created <= at).map(|(id, _)| *id));
            let responsible = match slice_id {
                None => vec![],
                Some(sid) => {
                    if let Entry::Vacant(e) = people.entry((sid, node)) {
                        e.insert(self.slice_people(sid, node, emails).await?);
                    }
                    people.get(&(sid, node)).cloned().unwrap_or_default()
                }
            };
            flows.push(ArchivedFlow { id, node_id: Some(node), flow, responsible });
        }
        Ok(FlowsResult { flows, truncated })
    }

    /// The principals of slice `slice_id`, if it had node `node`.
    async fn slice_people(&self, slice_id: i64, node: i64, emails: bool) -> Result<Vec<String>, AuthError> {
        let rows: Vec<(String, String)> = sqlx::query_as(&self.db.q(
            "SELECT p.name, p.email FROM slice_principals sp JOIN principals p ON p.id = sp.principal_id
             WHERE sp.slice_id = ?
               AND EXISTS (SELECT 1 FROM slice_nodes sn WHERE sn.slice_id = sp.slice_id AND sn.node_id = ?)
             ORDER BY p.name",
        ))
        .bind(slice_id)
        .bind(node)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(|(n, e)| if emails { format!("{n} <{e}>") } else { n }).collect())
    }

    /// Removes archived flows whose last packet is older than the retention; how many.
    pub async fn sweep_flows(&self, now: i64) -> Result<u64, AuthError> {
        let before = (now - self.settings.flow_retention_days * 86_400) * 1000;
        let done =
            sqlx::query(&self.db.q("DELETE FROM flows WHERE last_ms < ?")).bind(before).execute(self.db.pool()).await?;
        Ok(done.rows_affected())
    }
}
