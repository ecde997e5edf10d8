//! The authorities' database: SQLite by default, PostgreSQL at scale, through one code
//! path (sqlx's `Any` driver). Queries are written with `?` placeholders and rewritten to
//! `$n` for PostgreSQL; the only dialect difference in the schema is the id column.
//! Integers, flags (0/1) and Unix timestamps are all BIGINT, so rows decode the same way
//! from either database.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::borrow::Cow;

/// A database error, with the statement's purpose.
#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
pub struct DbError(#[from] pub sqlx::Error);

/// The database.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    pg: bool,
}

fn schema(id: &str) -> String {
    format!(
        "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS orgs (
    id {id}, name TEXT NOT NULL UNIQUE, authority TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL, created BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS principals (
    id {id}, name TEXT NOT NULL UNIQUE, email TEXT NOT NULL, org_id BIGINT NOT NULL REFERENCES orgs(id),
    roles TEXT NOT NULL, public_key TEXT NOT NULL, cert TEXT, approved BIGINT NOT NULL, created BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS ssh_keys (
    principal_id BIGINT NOT NULL REFERENCES principals(id), key TEXT NOT NULL, PRIMARY KEY (principal_id, key));
CREATE TABLE IF NOT EXISTS sites (
    id {id}, org_id BIGINT NOT NULL REFERENCES orgs(id), name TEXT NOT NULL UNIQUE,
    tech_id BIGINT REFERENCES principals(id), subnets TEXT NOT NULL, latitude DOUBLE PRECISION, longitude DOUBLE PRECISION,
    created BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id {id}, site_id BIGINT NOT NULL REFERENCES sites(id), hostname TEXT NOT NULL, ip TEXT NOT NULL, mac TEXT NOT NULL,
    state TEXT NOT NULL, node_key TEXT NOT NULL, cert TEXT, trigger_port BIGINT, last_contact BIGINT,
    deleted BIGINT NOT NULL, created BIGINT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS nodes_live_hostname ON nodes (hostname) WHERE deleted = 0;
CREATE TABLE IF NOT EXISTS slices (
    id {id}, name TEXT NOT NULL, org_id BIGINT NOT NULL REFERENCES orgs(id), delegated BIGINT NOT NULL,
    started BIGINT NOT NULL, deleted BIGINT NOT NULL, rspec TEXT NOT NULL, created BIGINT NOT NULL, expires BIGINT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS slices_live_name ON slices (name) WHERE deleted = 0;
CREATE TABLE IF NOT EXISTS slice_principals (
    slice_id BIGINT NOT NULL REFERENCES slices(id), principal_id BIGINT NOT NULL REFERENCES principals(id),
    PRIMARY KEY (slice_id, principal_id));
CREATE TABLE IF NOT EXISTS slice_nodes (
    slice_id BIGINT NOT NULL REFERENCES slices(id), node_id BIGINT NOT NULL REFERENCES nodes(id),
    PRIMARY KEY (slice_id, node_id));
CREATE INDEX IF NOT EXISTS slice_nodes_node ON slice_nodes (node_id);
CREATE TABLE IF NOT EXISTS sessions (key_hash TEXT PRIMARY KEY, identity TEXT NOT NULL, expires BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS boot_nonces (node_id BIGINT NOT NULL, nonce TEXT NOT NULL, seen BIGINT NOT NULL, PRIMARY KEY (node_id, nonce));
CREATE TABLE IF NOT EXISTS packages (name TEXT PRIMARY KEY, version TEXT NOT NULL);
"
    )
}

impl Db {
    /// Opens `url`: `sqlite:///path/to/file.db` or `postgres://user:pass@host/db`.
    pub async fn open(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let pg = url.starts_with("postgres");
        let url = if pg || url.contains('?') { url.to_owned() } else { format!("{url}?mode=rwc") };
        let pool = AnyPoolOptions::new()
            .max_connections(if pg { 8 } else { 4 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if !pg {
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let db = Db { pool, pg };
        let ddl = schema(if pg { "BIGSERIAL PRIMARY KEY" } else { "INTEGER PRIMARY KEY" });
        for stmt in ddl.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(stmt).execute(&db.pool).await?;
        }
        Ok(db)
    }

    /// True on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.pg
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// `sql` with `?` placeholders in this database's dialect.
    pub fn q<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        if !self.pg {
            return Cow::Borrowed(sql);
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }
}

/// Reads an i64 column.
pub fn int(row: &AnyRow, col: &str) -> i64 {
    row.try_get::<i64, _>(col).unwrap_or(0)
}

/// Reads a text column ("" when NULL).
pub fn text(row: &AnyRow, col: &str) -> String {
    row.try_get::<Option<String>, _>(col).ok().flatten().unwrap_or_default()
}

/// Reads a nullable text column.
pub fn opt_text(row: &AnyRow, col: &str) -> Option<String> {
    row.try_get::<Option<String>, _>(col).ok().flatten()
}

/// Reads a nullable i64 column.
pub fn opt_int(row: &AnyRow, col: &str) -> Option<i64> {
    row.try_get::<Option<i64>, _>(col).ok().flatten()
}
