//! The authorities' database: SQLite by default, PostgreSQL at scale, through one code
//! path (sqlx's `Any` driver). Queries are written with `?` placeholders and rewritten to
//! `$n` for PostgreSQL (a query never holds a literal `?`); the only dialect difference
//! in the schema is the id column. Integers, flags (0/1) and Unix timestamps are all
//! BIGINT, so rows decode into the same `FromRow` structs from either database, and a
//! column that does not decode is an error, never a default. The schema is versioned by
//! sqlx migrations (`migrations/<dialect>/`).

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use std::borrow::Cow;

/// A database error.
#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
pub struct DbError(#[from] pub sqlx::Error);

impl DbError {
    /// A unique constraint refused the change.
    pub fn is_unique_violation(&self) -> bool {
        matches!(&self.0, sqlx::Error::Database(d) if d.is_unique_violation())
    }
    /// A foreign key refused the change.
    pub fn is_foreign_key_violation(&self) -> bool {
        matches!(&self.0, sqlx::Error::Database(d) if d.is_foreign_key_violation())
    }
}

/// The database.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    pg: bool,
    url: String,
}

/// The schema's steps, one directory per dialect (they differ only in the id column).
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// How many schema steps this release knows.
pub fn schema_version() -> usize {
    SQLITE.iter().count()
}

/// Creates the SQLite file of `url` mode 0600 when it does not exist yet (SQLite would make
/// it, and its `-wal` and `-shm` files, with the umask's mode: every node's boot key is in
/// it). An existing file is left as it is.
fn create_private(url: &str) -> Result<(), DbError> {
    use std::os::unix::fs::OpenOptionsExt;
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(DbError(sqlx::Error::Io(std::io::Error::new(e.kind(), format!("{path}: {e}"))))),
    }
}

impl Db {
    /// Opens `url`: `sqlite:///path/to/file.db` or `postgres://user:pass@host/db`.
    pub async fn open(url: &str) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let pg = url.starts_with("postgres");
        if !pg {
            create_private(url)?;
        }
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
        let db = Db { pool, pg, url: url.clone() };
        let migrator = if pg { &POSTGRES } else { &SQLITE };
        migrator.run(&db.pool).await.map_err(|e| DbError(e.into()))?;
        Ok(db)
    }

    /// The URL it was opened with (it may hold a password: never log it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// True on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.pg
    }

    /// Begins a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads and then writes fails with "database
    /// is locked", without waiting, when another writer went first.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        if self.pg {
            self.pool.begin().await
        } else {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        }
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
