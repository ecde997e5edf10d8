//! Finished flows in SQLite, each with the VM, slice and people responsible for it and
//! the VM's place behind the node's NAT, kept for `retention_days`.

use crate::query::Query;
pub use plab_authority::flows::{FlowRecord, VmMeta};
use rusqlite::{params, Connection};
use std::path::Path;

/// The columns a flow is read from, in [`Row`]'s order.
const COLUMNS: &str = "proto, src, sport, dst, dport, first_ms, last_ms, bytes, packets, tcp_flags, post_nat_src, meta";

/// A flow as stored.
struct Row(u8, String, u16, String, u16, i64, i64, i64, i64, u8, Option<String>, String);

impl Row {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Row::read_from(r, 0)
    }

    fn read_from(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Row> {
        Ok(Row(
            r.get(at)?,
            r.get(at + 1)?,
            r.get(at + 2)?,
            r.get(at + 3)?,
            r.get(at + 4)?,
            r.get(at + 5)?,
            r.get(at + 6)?,
            r.get(at + 7)?,
            r.get(at + 8)?,
            r.get(at + 9)?,
            r.get(at + 10)?,
            r.get(at + 11)?,
        ))
    }

    fn record(self) -> anyhow::Result<FlowRecord> {
        let Row(proto, src, sport, dst, dport, first_ms, last_ms, bytes, packets, tcp_flags, post_nat_src, meta) = self;
        let meta: VmMeta = serde_json::from_str(&meta)?;
        Ok(FlowRecord {
            proto,
            src: src.parse()?,
            sport,
            dst: dst.parse()?,
            dport,
            first_ms,
            last_ms,
            bytes: u64::try_from(bytes).unwrap_or(0),
            packets: u64::try_from(packets).unwrap_or(0),
            tcp_flags,
            post_nat_src,
            meta,
        })
    }
}

/// The flow database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating, owner-only) the database at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS flows (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                proto INTEGER NOT NULL, src TEXT NOT NULL, sport INTEGER NOT NULL,
                dst TEXT NOT NULL, dport INTEGER NOT NULL,
                first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,
                bytes INTEGER NOT NULL, packets INTEGER NOT NULL, tcp_flags INTEGER NOT NULL,
                post_nat_src TEXT, meta TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS flows_last ON flows(last_ms);
             CREATE INDEX IF NOT EXISTS flows_first ON flows(first_ms);
             CREATE INDEX IF NOT EXISTS flows_src ON flows(src, first_ms);
             CREATE TABLE IF NOT EXISTS sinks (sink TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS epoch (id TEXT NOT NULL);",
        )?;
        // The database's own random id: flow ids count within it, so the archive tells a
        // reinstalled node's flows from its earlier ones.
        let fresh: String = credentials::random_bytes::<8>().iter().map(|b| format!("{b:02x}")).collect();
        conn.execute("INSERT INTO epoch (id) SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM epoch)", params![fresh])?;
        Ok(Store { conn })
    }

    /// Stores finished flows, all or none.
    pub fn insert(&mut self, flows: &[FlowRecord]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO flows (proto, src, sport, dst, dport, first_ms, last_ms, bytes, packets, tcp_flags, post_nat_src, meta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for f in flows {
                st.execute(params![
                    f.proto,
                    f.src.to_string(),
                    f.sport,
                    f.dst.to_string(),
                    f.dport,
                    f.first_ms,
                    f.last_ms,
                    i64::try_from(f.bytes).unwrap_or(i64::MAX),
                    i64::try_from(f.packets).unwrap_or(i64::MAX),
                    f.tcp_flags,
                    f.post_nat_src,
                    serde_json::to_string(&f.meta)?,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Where sink `sink` (an IPFIX collector, the archive) is in the flows: the id of the
    /// last flow it has. A sink seen for the first time starts after the flows stored
    /// now if `from_now`, else at the first.
    pub fn cursor(&self, sink: &str, from_now: bool) -> anyhow::Result<i64> {
        let start: i64 = if from_now {
            self.conn.query_row("SELECT coalesce(max(id), 0) FROM flows", [], |r| r.get(0))?
        } else {
            0
        };
        self.conn.execute(
            "INSERT INTO sinks (sink, last_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![sink, start],
        )?;
        Ok(self.conn.query_row("SELECT last_id FROM sinks WHERE sink = ?1", params![sink], |r| r.get(0))?)
    }

    /// The database's own random id (made with it).
    pub fn epoch(&self) -> anyhow::Result<String> {
        Ok(self.conn.query_row("SELECT id FROM epoch", [], |r| r.get(0))?)
    }

    /// Records that sink `sink` has every flow up to `last_id`.
    pub fn advance(&self, sink: &str, last_id: i64) -> anyhow::Result<()> {
        self.conn.execute("UPDATE sinks SET last_id = max(last_id, ?2) WHERE sink = ?1", params![sink, last_id])?;
        Ok(())
    }

    /// Flows stored after id `after`, at most `limit`, with their ids, in order.
    pub fn after(&self, after: i64, limit: usize) -> anyhow::Result<Vec<(i64, FlowRecord)>> {
        let mut st =
            self.conn.prepare_cached(&format!("SELECT id, {COLUMNS} FROM flows WHERE id > ?1 ORDER BY id LIMIT ?2"))?;
        let rows = st.query_map(params![after, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok((r.get::<_, i64>(0)?, Row::read_from(r, 1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, row) = row?;
            // A row that does not decode (written by something else) is passed over, not
            // allowed to stop every sink.
            match row.record() {
                Ok(r) => out.push((id, r)),
                Err(e) => tracing::warn!(id, "flow {id} does not decode, not sent: {e:#}"),
            }
        }
        Ok(out)
    }

    /// Removes flows that ended before `before_ms`; how many.
    pub fn sweep(&self, before_ms: i64) -> anyhow::Result<usize> {
        Ok(self.conn.execute("DELETE FROM flows WHERE last_ms < ?1", params![before_ms])?)
    }

    /// How many flows are stored.
    pub fn count(&self) -> anyhow::Result<i64> {
        Ok(self.conn.query_row("SELECT count(*) FROM flows", [], |r| r.get(0))?)
    }

    /// The flows that answer `q`, at most `limit`, earliest first.
    pub fn query(&self, q: &Query, limit: usize) -> anyhow::Result<Vec<FlowRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM flows WHERE first_ms <= ?1 AND last_ms >= ?2
             AND (src = ?3 OR post_nat_src LIKE ?4) ORDER BY first_ms"
        ))?;
        // Candidates by the source's address: on the VM's interface, or the node's public
        // address of a flow that left through the NAT; `matches` decides.
        let addr = q.src.addr.to_string();
        let rows = st.query_map(params![q.to_ms, q.from_ms, addr, format!("{addr}:%")], Row::read)?;
        let mut out = Vec::new();
        for row in rows {
            let rec = row?.record()?;
            if rec.matches(q) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::flow::{Flow, FlowKey, UDP};

    fn meta(vm: &str, addr: [u8; 4], nat: (u16, u16)) -> VmMeta {
        VmMeta {
            vm: vm.into(),
            slice: format!("plc.{vm}"),
            users: vec!["alice@example.org".into()],
            iface: "pv1".into(),
            vm_addr: addr.into(),
            public_addr: Some([192, 0, 2, 10].into()),
            nat_ports: Some(nat),
            vm_net: None,
        }
    }

    fn flow(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, first: i64, last: i64) -> Flow {
        Flow {
            key: FlowKey { proto: UDP, src: src.into(), sport, dst: dst.into(), dport },
            first_ms: first,
            last_ms: last,
            bytes: 100,
            packets: 2,
            tcp_flags: 0,
        }
    }

    fn q(s: &str) -> Query {
        Query::parse(s).unwrap()
    }

    #[test]
    fn the_outside_view_names_the_vm_by_its_nat_block_and_nothing_else_matches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        let mut s = Store::open(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (a, b) = (meta("a", [10, 213, 0, 2], (32768, 33023)), meta("b", [10, 213, 0, 3], (33024, 33279)));
        s.insert(&[
            FlowRecord::new(&flow([10, 213, 0, 2], 40000, [198, 51, 100, 7], 53, 10_000, 12_000), &a),
            FlowRecord::new(&flow([10, 213, 0, 3], 40000, [198, 51, 100, 7], 53, 10_000, 12_000), &b),
            FlowRecord::new(&flow([198, 51, 100, 7], 5000, [10, 213, 0, 3], 22, 20_000, 21_000), &b),
        ])
        .unwrap();
        // What the outside saw: the node's address and a port of B's block.
        let found = s.query(&q("src=192.0.2.10:33100&dst=198.51.100.7:53&from=5&to=15"), 10).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].meta.slice, "plc.b");
        assert_eq!(found[0].post_nat_src.as_deref(), Some("192.0.2.10:33024-33279"));
        // A's block, the inside view, a window that misses, a wrong destination port.
        assert_eq!(s.query(&q("src=192.0.2.10:32800&dst=198.51.100.7&from=5&to=15"), 10).unwrap()[0].meta.vm, "a");
        assert_eq!(s.query(&q("src=10.213.0.2:40000&from=5&to=15"), 10).unwrap().len(), 1);
        assert!(s.query(&q("src=192.0.2.10:33100&dst=198.51.100.7&from=13&to=15"), 10).unwrap().is_empty());
        assert!(s.query(&q("src=192.0.2.10:33100&dst=198.51.100.7:54&from=5&to=15"), 10).unwrap().is_empty());
        assert!(s.query(&q("src=192.0.2.10:40000&from=5&to=15"), 10).unwrap().is_empty(), "a port in no block");
        // Inbound: someone who connected to B.
        let found = s.query(&q("src=198.51.100.7&dst=10.213.0.3:22&from=0&to=100"), 10).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].post_nat_src, None);
        // With the exact port the NAT chose (from conntrack), only that port names the flow.
        let mut exact = FlowRecord::new(&flow([10, 213, 0, 2], 41000, [198, 51, 100, 7], 53, 10_000, 12_000), &a);
        exact.set_post_nat_port(40000);
        assert_eq!(
            exact.post_nat_src.as_deref(),
            Some("192.0.2.10:32768-33023"),
            "a port outside the block is no VM's"
        );
        exact.set_post_nat_port(32900);
        assert_eq!((exact.post_nat_src.as_deref(), exact.post_nat_port()), (Some("192.0.2.10:32900"), Some(32900)));
        s.insert(&[exact]).unwrap();
        let found = s.query(&q("src=192.0.2.10:32900&dst=198.51.100.7:53&from=5&to=15"), 10).unwrap();
        // It, and A's flow whose exact port is not known (any port of the block may be it).
        let ports: Vec<u16> = found.iter().map(|f| f.sport).collect();
        assert_eq!(ports, [40000, 41000], "{found:?}");
        let found = s.query(&q("src=192.0.2.10:32901&dst=198.51.100.7:53&from=5&to=15"), 10).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].sport, 40000, "another port of the block names only A's unported flow");
        // Retention, and the flows outlive the handle.
        assert_eq!(s.sweep(15_000).unwrap(), 3);
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.count().unwrap(), 1);
    }
}
