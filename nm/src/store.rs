//! The persistent rcap/RSpec table and VM records: SQLite in WAL mode, with its schema
//! versioned by `rusqlite_migration` (SQLite's `user_version`). A committed
//! transaction is in the WAL before the call returns, so every acknowledged change
//! survives a restart or `kill -9` of the node manager; `synchronous = NORMAL` leaves out
//! the fsync per commit, so a power cut may lose the last changes, never corrupt the table. Every multi-row change is
//! one transaction; a failure changes nothing.

use rusqlite::{params, Connection, OptionalExtension};
use rusqlite_migration::{Migrations, M};
use std::path::Path;
use std::sync::Mutex;

/// A storage failure.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum StoreError {
    /// state database: {0}
    Sql(#[from] rusqlite::Error),
    /// state database schema: {0}
    Schema(#[from] rusqlite_migration::Error),
    /// state database: {0} changed under the node manager (expected one row)
    Lost(&'static str),
    /// state database file {0}
    File(String),
}

/// A pool row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    /// Row id.
    pub id: i64,
    /// The rcap, hex.
    pub rcap: String,
    /// The pool it was split from.
    pub parent: Option<i64>,
    /// The slice allowed to retrieve it.
    pub slice: String,
    /// RSpec XML.
    pub rspec: String,
    /// The VM it is bound to.
    pub vm: Option<String>,
}

/// A VM row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    /// VM name (the slice login).
    pub name: String,
    /// Slice name.
    pub slice: String,
    /// The VM's whole RSpec (XML): resources, keys, bootscript.
    pub rspec: String,
    /// Node-unique index.
    pub idx: u32,
    /// VM address.
    pub address: String,
    /// `creating`, `running` or `stopped`: what the node manager wants it to be.
    pub state: String,
}

/// The database.
pub struct Store {
    conn: Mutex<Connection>,
}

/// The schema, one step per version. Step 1 is the schema of the first release (0.1.0),
/// which wrote no version: `IF NOT EXISTS` lets a database it made take the step without
/// change. Later steps only ever add to this list.
const MIGRATIONS: &[M<'static>] = &[
    M::up(
        "
CREATE TABLE IF NOT EXISTS pools (
    id      INTEGER PRIMARY KEY,
    rcap    TEXT NOT NULL UNIQUE,
    parent  INTEGER REFERENCES pools(id),
    slice   TEXT NOT NULL,
    rspec   TEXT NOT NULL,
    vm      TEXT REFERENCES vms(name),
    created INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE TABLE IF NOT EXISTS vms (
    name    TEXT PRIMARY KEY,
    slice   TEXT NOT NULL UNIQUE,
    rspec   TEXT NOT NULL,
    idx     INTEGER NOT NULL UNIQUE,
    address TEXT NOT NULL UNIQUE,
    state   TEXT NOT NULL CHECK (state IN ('creating', 'running', 'stopped')),
    created INTEGER NOT NULL DEFAULT (unixepoch())
);
",
    ),
    // 0.2: the owner's blacklist of slices and authorities (section 3).
    M::up(
        "
CREATE TABLE blacklist (
    name    TEXT PRIMARY KEY,
    added   INTEGER NOT NULL DEFAULT (unixepoch())
);
",
    ),
];

/// The schema version this node manager writes.
pub fn schema_version() -> usize {
    MIGRATIONS.len()
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // The rcaps are capabilities: the file is the owner's alone from its creation
        // (SQLite gives its -wal and -shm files the database's mode).
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::File(format!("{}: {e}", path.display())))?;
            // A database an older node manager made is 0644 (with its -wal and -shm):
            // private from now on.
            use std::os::unix::fs::PermissionsExt;
            for f in [path.to_path_buf(), path.with_extension("db-wal"), path.with_extension("db-shm")] {
                if std::fs::metadata(&f).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| StoreError::File(format!("{}: {e}", f.display())))?;
                }
            }
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut conn = conn;
        Migrations::new(MIGRATIONS.to_vec()).to_latest(&mut conn)?;
        Ok(Store { conn: Mutex::new(conn) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }

    /// The blacklist.
    pub fn blacklist(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            Ok(c.prepare("SELECT name FROM blacklist ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?)
        })
    }

    /// Adds `name` to the blacklist (already there: no change).
    pub fn blacklist_add(&self, name: &str) -> Result<(), StoreError> {
        self.with(|c| Ok(c.execute("INSERT OR IGNORE INTO blacklist (name) VALUES (?1)", params![name]).map(|_| ())?))
    }

    /// Takes `name` off the blacklist; whether it was there.
    pub fn blacklist_remove(&self, name: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM blacklist WHERE name = ?1", params![name])? == 1))
    }

    /// Replaces a VM's recorded RSpec (keys, bootscript).
    pub fn set_vm_rspec(&self, vm: &str, rspec: &str) -> Result<(), StoreError> {
        self.with(|c| match c.execute("UPDATE vms SET rspec = ?1 WHERE name = ?2", params![rspec, vm])? {
            1 => Ok(()),
            _ => Err(StoreError::Lost("the VM")),
        })
    }

    /// Every pool and VM.
    pub fn load(&self) -> Result<(Vec<PoolRow>, Vec<VmRow>), StoreError> {
        self.with(|c| {
            let pools = c
                .prepare("SELECT id, rcap, parent, slice, rspec, vm FROM pools ORDER BY id")?
                .query_map([], |r| {
                    Ok(PoolRow {
                        id: r.get(0)?,
                        rcap: r.get(1)?,
                        parent: r.get(2)?,
                        slice: r.get(3)?,
                        rspec: r.get(4)?,
                        vm: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let vms = c
                .prepare("SELECT name, slice, rspec, idx, address, state FROM vms ORDER BY idx")?
                .query_map([], |r| {
                    Ok(VmRow {
                        name: r.get(0)?,
                        slice: r.get(1)?,
                        rspec: r.get(2)?,
                        idx: r.get(3)?,
                        address: r.get(4)?,
                        state: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((pools, vms))
        })
    }

    /// Adds a root pool; returns its id.
    pub fn insert_pool(&self, rcap: &str, slice: &str, rspec: &str) -> Result<i64, StoreError> {
        self.with(|c| {
            c.execute("INSERT INTO pools (rcap, slice, rspec) VALUES (?1, ?2, ?3)", params![rcap, slice, rspec])?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Shrinks unbound `parent` to `parent_rspec` and adds the split-off child; returns its id.
    pub fn split(
        &self,
        parent: i64,
        parent_rspec: &str,
        rcap: &str,
        slice: &str,
        rspec: &str,
    ) -> Result<i64, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            if tx.execute("UPDATE pools SET rspec = ?1 WHERE id = ?2 AND vm IS NULL", params![parent_rspec, parent])?
                != 1
            {
                return Err(StoreError::Lost("the pool (bound, or gone)"));
            }
            tx.execute(
                "INSERT INTO pools (rcap, parent, slice, rspec) VALUES (?1, ?2, ?3, ?4)",
                params![rcap, parent, slice, rspec],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(id)
        })
    }

    /// Removes `pool`, giving its resources back to `parent` (now `parent_rspec`).
    pub fn remove_pool(&self, pool: i64, parent: Option<(i64, &str)>) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            if let Some((p, rspec)) = parent {
                tx.execute("UPDATE pools SET rspec = ?1 WHERE id = ?2", params![rspec, p])?;
            }
            if tx.execute("DELETE FROM pools WHERE id = ?1 AND vm IS NULL", params![pool])? != 1 {
                return Err(StoreError::Lost("the pool (bound, or gone)"));
            }
            Ok(tx.commit()?)
        })
    }

    /// Records a new VM (state `creating`) and binds `pool` to it, in one transaction. The
    /// pool must be unbound: a pool is never spent twice.
    pub fn bind_new(&self, pool: i64, vm: &VmRow) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO vms (name, slice, rspec, idx, address, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![vm.name, vm.slice, vm.rspec, vm.idx, vm.address, vm.state],
            )?;
            if tx.execute("UPDATE pools SET vm = ?1 WHERE id = ?2 AND vm IS NULL", params![vm.name, pool])? != 1 {
                return Err(StoreError::Lost("the pool (bound already, or gone)"));
            }
            Ok(tx.commit()?)
        })
    }

    /// Binds unbound `pool` to existing VM `vm`, whose RSpec becomes `rspec`.
    pub fn bind_existing(&self, pool: i64, vm: &str, rspec: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            if tx.execute("UPDATE vms SET rspec = ?1 WHERE name = ?2", params![rspec, vm])? != 1 {
                return Err(StoreError::Lost("the VM"));
            }
            if tx.execute("UPDATE pools SET vm = ?1 WHERE id = ?2 AND vm IS NULL", params![vm, pool])? != 1 {
                return Err(StoreError::Lost("the pool (bound already, or gone)"));
            }
            Ok(tx.commit()?)
        })
    }

    /// Sets a VM's wanted state.
    pub fn set_vm_state(&self, vm: &str, state: &str) -> Result<(), StoreError> {
        self.with(|c| Ok(c.execute("UPDATE vms SET state = ?1 WHERE name = ?2", params![state, vm]).map(|_| ())?))
    }

    /// Removes a VM record; its pools become unbound.
    pub fn remove_vm(&self, vm: &str) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("UPDATE pools SET vm = NULL WHERE vm = ?1", params![vm])?;
            tx.execute("DELETE FROM vms WHERE name = ?1", params![vm])?;
            Ok(tx.commit()?)
        })
    }

    /// The VM a slice has, if any (used by tests and checks).
    pub fn vm_of_slice(&self, slice: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            Ok(c.query_row("SELECT name FROM vms WHERE slice = ?1", params![slice], |r| r.get(0)).optional()?)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The rcaps are capabilities: the database is private when made, and one an older
    /// node manager left readable by all is made private.
    #[test]
    fn the_database_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let fresh = dir.path().join("fresh.db");
        drop(Store::open(&fresh).unwrap());
        assert_eq!(mode(&fresh), 0o600);
        let old = dir.path().join("nm.db");
        drop(Store::open(&old).unwrap());
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Store::open(&old).unwrap());
        assert_eq!(mode(&old), 0o600);
    }

    #[test]
    fn changes_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nm.db");
        {
            let s = Store::open(&path).unwrap();
            let root = s.insert_pool("aa", "plc", "<PoolRSpec/>").unwrap();
            let child = s.split(root, "<PoolRSpec>less</PoolRSpec>", "bb", "plc.x", "<VServerSlice/>").unwrap();
            let vm = VmRow {
                name: "plc_x".into(),
                slice: "plc.x".into(),
                rspec: "<VServerSlice/>".into(),
                idx: 1,
                address: "10.0.0.2".into(),
                state: "creating".into(),
            };
            s.bind_new(child, &vm).unwrap();
            s.set_vm_state("plc_x", "running").unwrap();
        }
        let s = Store::open(&path).unwrap();
        let (pools, vms) = s.load().unwrap();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].rspec, "<PoolRSpec>less</PoolRSpec>");
        assert_eq!(pools[1].vm.as_deref(), Some("plc_x"));
        assert_eq!(vms[0].state, "running");
        s.remove_vm("plc_x").unwrap();
        let (pools, vms) = s.load().unwrap();
        assert!(vms.is_empty() && pools[1].vm.is_none());
        assert!(s.set_vm_state("x", "bogus").is_ok(), "no row, no change");
        assert!(s.insert_pool("aa", "plc", "dup").is_err(), "rcaps are unique");
    }
}
