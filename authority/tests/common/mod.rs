//! Test harness: an authority server in this process (its own runtime thread), on
//! 127.0.0.1 and a random port, over SQLite or a fresh PostgreSQL database.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.
#![allow(dead_code)]

use credentials::identity::Identity;
use credentials::pki::{issue, KeyPair, Profile};
use plab_authority::ca::Ca;
use plab_authority::db::Db;
use plab_authority::{server, Authority, AuthorityClient, Settings};
use serde_json::{json, Value};
use std::sync::Arc;

pub const PG_ADMIN: &str = "postgres://plab:plab@127.0.0.1/plab";

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Harness {
    pub url: String,
    pub root: String,
    pub op: (String, String),
    pub authority: Arc<Authority>,
    pub rt: tokio::runtime::Runtime,
    pub state: tempfile::TempDir,
    pub db_url: String,
}

/// A second server on a harness's database and credentials (several servers on one
/// PostgreSQL).
pub struct Server {
    pub url: String,
    pub authority: Arc<Authority>,
    pub rt: tokio::runtime::Runtime,
}

fn pg_url() -> String {
    std::env::var("PLAB_TEST_PG").unwrap_or_else(|_| PG_ADMIN.to_string())
}

/// A fresh PostgreSQL database for one harness.
pub async fn fresh_pg() -> String {
    use sqlx::Connection;
    let admin = pg_url();
    let mut c = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is not reachable at {admin} ({e}): `make test` installs and starts it (ci/setup.sh)")
    });
    let name = format!("plab_t_{}", hex::encode(credentials::random_bytes::<6>()));
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut c).await.unwrap();
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

impl Harness {
    pub fn start(backend: Backend) -> Harness {
        Harness::with_settings(backend, Settings::default())
    }

    pub fn with_settings(backend: Backend, settings: Settings) -> Harness {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let state = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (authority, port, op, db_url) = rt.block_on(async {
            let url = match backend {
                Backend::Sqlite => format!("sqlite://{}", state.path().join("a.db").display()),
                Backend::Postgres => fresh_pg().await,
            };
            let creds = plab_authority::setup::init(
                state.path(),
                "plc",
                &["127.0.0.1".into(), "localhost".into()],
                "admin",
                "admin@plc.test",
                &url,
                "https://127.0.0.1",
            )
            .await
            .unwrap();
            let ca = Ca::load(state.path(), "plc").unwrap();
            let db = Db::open(&url).await.unwrap();
            let a = Arc::new(Authority::new(db, ca, settings).await.unwrap());
            let tls = Arc::new(server::tls_config(&a).unwrap());
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            tokio::spawn(server::serve(a.clone(), l, tls));
            (a, port, (creds.cert, creds.key), url)
        });
        let root = authority.ca.root.cert_pem.clone();
        Harness { url: format!("https://127.0.0.1:{port}"), root, op, authority, rt, state, db_url }
    }

    /// Another server on this harness's database, with the same credentials, that reads
    /// the database's generation only through LISTEN (no periodic read).
    pub fn another_server(&self) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (authority, port) = rt.block_on(async {
            let ca = Ca::load(self.state.path(), "plc").unwrap();
            let db = Db::open(&self.db_url).await.unwrap();
            let settings = Settings { sweep_secs: 3600, ..Settings::default() };
            let a = Arc::new(Authority::new(db, ca, settings).await.unwrap());
            let tls = Arc::new(server::tls_config(&a).unwrap());
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            tokio::spawn(server::serve(a.clone(), l, tls));
            (a, port)
        });
        Server { url: format!("https://127.0.0.1:{port}"), authority, rt }
    }

    /// A booted node `n1.test` (organisation princeton, site pcs, address 127.0.0.1) and the
    /// slice creation service `plc.scs` on it, as its NM certifies it: the operator's client,
    /// the node id and the service's (chain, key).
    pub fn node_with_service(&self) -> (AuthorityClient, i64, (String, String)) {
        let (op, node, plnode) = self.one_node("127.0.0.1");
        let nd = tempfile::tempdir().unwrap();
        let pl = plab_authority::bootmgr::PlNode::parse(&plnode).unwrap();
        plab_authority::bootmgr::BootManager::new(pl, &self.url, &self.root, nd.path()).unwrap().boot(None).unwrap();
        let chain = std::fs::read_to_string(nd.path().join("node-cert.pem")).unwrap();
        let key = std::fs::read_to_string(nd.path().join("node.key")).unwrap();
        let svc = self.service_chain(&chain, &key, "plc.scs", node);
        (op, node, svc)
    }

    pub fn client(&self, identity: Option<(&str, &str)>) -> AuthorityClient {
        AuthorityClient::new(&self.url, &self.root, identity, None).unwrap()
    }

    pub fn operator(&self) -> AuthorityClient {
        self.client(Some((&self.op.0, &self.op.1)))
    }

    /// Adds a principal through `by` and returns its credentials.
    pub fn principal(&self, by: &mut AuthorityClient, name: &str, org: &str, role: &str) -> (String, String) {
        let k = KeyPair::generate();
        let r = by
            .call("AddPrincipal", vec![json!({"name": name, "email": format!("{name}@x.test"), "org": org, "role": role, "public_key": k.public_key_pem()})])
            .unwrap_or_else(|e| panic!("AddPrincipal {name}: {e}"));
        (r["certificate"].as_str().unwrap().to_owned(), k.to_pem())
    }

    /// An organisation `princeton` (`plc.princeton`) with site `pcs` and node `n1.test` at
    /// `ip`, made by the operator: the operator's client, the node's id and its `plnode.txt`.
    pub fn one_node(&self, ip: &str) -> (AuthorityClient, i64, String) {
        let mut op = self.operator();
        op.call("AddOrg", vec![json!({"name": "princeton", "authority": "plc.princeton"})]).unwrap();
        op.call("AddSite", vec![json!({"org": "princeton", "name": "pcs"})]).unwrap();
        let node = op.call("AddNode", vec![json!({"site": "pcs", "hostname": "n1.test", "ip": ip})]).unwrap()
            ["node_id"]
            .as_i64()
            .unwrap();
        let plnode = op.call("GetNodeConfig", vec![json!(node)]).unwrap()["plnode"].as_str().unwrap().to_owned();
        (op, node, plnode)
    }

    /// A service certificate chain for `slice` on node `node`, as that node's NM issues it.
    pub fn service_chain(&self, node_cert_chain: &str, node_key: &str, slice: &str, node: i64) -> (String, String) {
        let nk = KeyPair::from_pem(node_key).unwrap();
        let node_cert = node_cert_chain.split_inclusive("-----END CERTIFICATE-----\n").next().unwrap();
        let sk = KeyPair::generate();
        let id = Identity::Service { slice: vm_types::SliceName::parse(slice).unwrap(), node };
        let c = issue(node_cert, &nk, &id, &sk.public_key_pem(), Profile::Client, 1).unwrap();
        (format!("{c}{node_cert_chain}"), sk.to_pem())
    }
}

/// The error code of a failed call; 0 when the call failed without an answer (a
/// transport error), which no test may take for a refusal.
pub fn code(e: &plab_authority::ClientError) -> i64 {
    e.code().map_or(0, |c| c.0)
}

pub fn s(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
}
