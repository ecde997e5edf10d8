//! The flow archive (section 4.6): each node's auditing service uploads its finished
//! flows (`ArchiveFlows`, at least once from a disk spool, so a repeat is a no-op), and
//! anyone asks the public query across every node (`QueryFlows`), as on a node's own page.

use crate::api::Authority;
use crate::auth::Caller;
use crate::error::AuthError;
use crate::flows::{FlowRecord, Query};
use crate::types::{ArchiveFlowsParams, ArchivedFlow, ArchivedResult, FlowsResult, QueryFlowsParams};

/// Flows one upload may carry.
pub const MAX_UPLOAD: usize = 1000;
/// Flows one answer lists.
pub const MAX_ANSWER: usize = 1000;
/// Candidates one query reads from the database before matching.
const MAX_CANDIDATES: i64 = 20_000;

/// Checks one uploaded flow; the reason names the field.
fn check(i: usize, f: &FlowRecord) -> Result<(), AuthError> {
    let bad = |field: &str, why: &str| AuthError::invalid("flows", format!("[{i}].{field}: {why}"));
    if f.first_ms < 0 || f.last_ms < f.first_ms {
        return Err(bad("last_ms", "before first_ms (or a time before 1970)"));
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
    Ok(())
}

impl Authority {
    /// Is `slice` one of the services this authority lets upload a node's flows?
    fn is_audit_service(&self, slice: &str) -> bool {
        if self.settings.audit_services.is_empty() {
            slice == format!("{}.audit", self.ca.name)
        } else {
            self.settings.audit_services.iter().any(|s| s == slice)
        }
    }

    pub(crate) async fn archive_flows(
        &self,
        c: &Caller,
        p: ArchiveFlowsParams,
        now: i64,
    ) -> Result<ArchivedResult, AuthError> {
        // Only the auditing service the node itself certified uploads for it: a node
        // cannot put flows under another node's name, nor a slice under anyone's.
        match c {
            Caller::Service { slice, node } if *node == p.node_id && self.is_audit_service(slice) => {}
            _ => {
                let services = if self.settings.audit_services.is_empty() {
                    format!("{}.audit", self.ca.name)
                } else {
                    self.settings.audit_services.join(", ")
                };
                return Err(AuthError::denied(
                    "ArchiveFlows",
                    &format!("the auditing service ({services}) of node {}", p.node_id),
                ));
            }
        }
        if p.flows.len() > MAX_UPLOAD {
            return Err(AuthError::invalid("flows", format!("at most {MAX_UPLOAD} per upload")));
        }
        for (i, f) in p.flows.iter().enumerate() {
            check(i, &f.flow)?;
        }
        let mut tx = self.db.begin().await?;
        let mut stored = 0;
        let sql = self.db.q(
            "INSERT INTO flows (node_id, flow_id, proto, src, sport, dst, dport, first_ms, last_ms, record, received)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        );
        for f in &p.flows {
            let r = &f.flow;
            let record = serde_json::to_string(r).map_err(AuthError::internal)?;
            let done = sqlx::query(&sql)
                .bind(p.node_id)
                .bind(f.id)
                .bind(i32::from(r.proto))
                .bind(r.src.to_string())
                .bind(i32::from(r.sport))
                .bind(r.dst.to_string())
                .bind(i32::from(r.dport))
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

    pub(crate) async fn query_flows(&self, p: QueryFlowsParams) -> Result<FlowsResult, AuthError> {
        let qs = {
            let mut qs = url::form_urlencoded::Serializer::new(String::new());
            qs.append_pair("src", &p.src);
            for (k, v) in [("dst", &p.dst), ("from", &p.from), ("to", &p.to)] {
                if let Some(v) = v {
                    qs.append_pair(k, v);
                }
            }
            qs.finish()
        };
        let q = Query::parse(&qs).map_err(|e| AuthError::invalid(e.field, e.reason))?;
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(
            &self.db.q("SELECT node_id, flow_id, record FROM flows WHERE first_ms <= ? AND last_ms >= ?
             ORDER BY first_ms, node_id, flow_id LIMIT ?"),
        )
        .bind(q.to_ms)
        .bind(q.from_ms)
        .bind(MAX_CANDIDATES)
        .fetch_all(self.db.pool())
        .await?;
        let mut flows = Vec::new();
        let mut responsible: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (node, id, record) in rows {
            let Ok(flow) = serde_json::from_str::<FlowRecord>(&record) else { continue };
            if flow.matches(&q) {
                let slice = flow.meta.slice.clone();
                if !responsible.contains_key(&slice) {
                    let people = self.slice_people(&slice).await?;
                    responsible.insert(slice.clone(), people);
                }
                let responsible = responsible.get(&slice).cloned().unwrap_or_default();
                flows.push(ArchivedFlow { id, node_id: Some(node), flow, responsible });
                if flows.len() >= MAX_ANSWER {
                    break;
                }
            }
        }
        Ok(FlowsResult { flows })
    }

    /// The principals of this authority's newest slice named `slice`, as `name <email>`.
    async fn slice_people(&self, slice: &str) -> Result<Vec<String>, AuthError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            &self.db.q("SELECT p.name, p.email FROM slice_principals sp JOIN principals p ON p.id = sp.principal_id
             WHERE sp.slice_id = (SELECT max(id) FROM slices WHERE name = ?) ORDER BY p.name"),
        )
        .bind(slice.to_owned())
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(|(n, e)| format!("{n} <{e}>")).collect())
    }

    /// Removes archived flows whose last packet is older than the retention; how many.
    pub async fn sweep_flows(&self, now: i64) -> Result<u64, AuthError> {
        let before = (now - self.settings.flow_retention_days * 86_400) * 1000;
        let done =
            sqlx::query(&self.db.q("DELETE FROM flows WHERE last_ms < ?")).bind(before).execute(self.db.pool()).await?;
        Ok(done.rows_affected())
    }
}
