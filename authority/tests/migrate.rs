//! A database written by the first release (plab-authority 0.1.0, which wrote no schema
//! version) is migrated by the current one, losing nothing, on SQLite and PostgreSQL.
//! The fixtures are dumps of databases 0.1.0 wrote: the authority's own organisation and
//! operator, an organisation with a user, a site, a node and a started slice.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

mod common;
use plab_authority::db::Db;

async fn check(db: &Db, orgs: i64) {
    let count = |t: &'static str| async move {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {t}")).fetch_one(db.pool()).await.unwrap();
        n
    };
    assert_eq!(count("orgs").await, orgs);
    assert_eq!(count("principals").await, 2);
    assert_eq!(count("sites").await, 1);
    assert_eq!(count("nodes").await, 1);
    assert_eq!(count("slices").await, 1);
    assert_eq!(count("slice_principals").await, 1);
    assert_eq!(count("slice_nodes").await, 1);
    let (name, started, rspec, published): (String, i64, String, i64) =
        sqlx::query_as("SELECT name, started, rspec, expiry_published FROM slices").fetch_one(db.pool()).await.unwrap();
    assert_eq!((name.as_str(), started, published), ("plc.princeton.codeen", 1, 0));
    assert!(rspec.contains("<bootscript>echo hi</bootscript>"), "{rspec}");
    let (key, state): (String, String) =
        sqlx::query_as("SELECT node_key, state FROM nodes").fetch_one(db.pool()).await.unwrap();
    assert_eq!((key.len(), state.as_str()), (64, "install"));
    let (gen,): (i64,) =
        sqlx::query_as("SELECT value FROM meta WHERE key = 'generation'").fetch_one(db.pool()).await.unwrap();
    assert!(gen > 1, "the generation is kept: {gen}");
    let (steps,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success").fetch_one(db.pool()).await.unwrap();
    assert_eq!(steps as usize, plab_authority::db::schema_version());
}

/// The authority's own numbering continues: a new org gets the next id.
async fn add_org(db: &Db) {
    let (id,): (i64,) =
        sqlx::query_as(&db.q("INSERT INTO orgs (name, authority, address, created) VALUES (?, ?, '', 0) RETURNING id"))
            .bind("mit")
            .bind("plc.mit")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(id, 3);
}

#[test]
fn sqlite_from_0_1_0() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let c = rusqlite_free_load(&path, include_str!("fixtures/authority-0.1.0-sqlite.sql")).await;
        drop(c);
        let db = Db::open(&format!("sqlite://{}", path.display())).await.unwrap();
        check(&db, 2).await;
        add_org(&db).await;
        // Opening again changes nothing.
        drop(db);
        check(&Db::open(&format!("sqlite://{}", path.display())).await.unwrap(), 3).await;
    });
}

#[test]
fn postgres_from_0_1_0() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let url = common::fresh_pg().await;
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(include_str!("fixtures/authority-0.1.0-postgres.sql")).execute(&mut c).await.unwrap();
        drop(c);
        let db = Db::open(&url).await.unwrap();
        check(&db, 2).await;
        add_org(&db).await;
    });
}

/// Loads a `sqlite3 .dump` into a new database file.
async fn rusqlite_free_load(path: &std::path::Path, sql: &str) -> sqlx::SqliteConnection {
    use sqlx::{ConnectOptions, Connection};
    let mut c =
        sqlx::sqlite::SqliteConnectOptions::new().filename(path).create_if_missing(true).connect().await.unwrap();
    sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
    c.ping().await.unwrap();
    c
}
