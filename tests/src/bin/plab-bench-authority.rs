//! `plab-bench-authority`: the authority's benchmarks, SQLite against PostgreSQL in one run.
//!
//! 1. Node polling (`GetSlicesForNode`) with 1,000 and 10,000 registered nodes, each
//!    running 5 of 50 started slices: requests per second at saturation (client threads
//!    on one connection each) and the server's CPU time per request (from /proc), for
//!    the answer that reads the database (a node's first fetch, and every fetch after a
//!    change) and for the "unchanged" answer, which does not; and what 1,000 nodes
//!    polling every 10 s would cost.
//! 2. Slice creation to ticket (CreateSlice, AddSlicePrincipal, SetSliceAttr,
//!    GetSliceTicket): calls per second.
//! 3. 1,000 nodes long-polling against the same 1,000 polling every 10 s, while the
//!    operator changes a slice every 10 s: the server's CPU, and how long each change
//!    takes to reach the nodes (p50, p95).
//!
//! The server is a real `plab-authority serve` child process on 127.0.0.1. Needs the
//! PostgreSQL that `make test` sets up (postgres://plab:plab@127.0.0.1/plab).
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use plab_authority::AuthorityClient;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::process::Child;
use std::time::{Duration, Instant};

const PG_ADMIN: &str = "postgres://plab:plab@127.0.0.1/plab";

struct Server {
    child: Child,
    url: String,
    root: String,
    op: (String, String),
    db: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a system constant; _SC_CLK_TCK is a valid name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn start(db_kind: &str, rt: &tokio::runtime::Runtime) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = match db_kind {
        "sqlite" => format!("sqlite://{}", dir.path().join("a.db").display()),
        _ => rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(PG_ADMIN)
                .await
                .expect("PostgreSQL at postgres://plab:plab@127.0.0.1/plab (make test sets it up)");
            let name = format!("plab_t_bench_{}", hex::encode(credentials::random_bytes::<4>()));
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut c).await.unwrap();
            format!("postgres://plab:plab@127.0.0.1/{name}")
        }),
    };
    let (child, url) = plab_tests::spawn_authority(dir.path(), Some(&db));
    let op_dir = dir.path().join("operator");
    let op = (
        std::fs::read_to_string(op_dir.join("cert.pem")).unwrap(),
        std::fs::read_to_string(op_dir.join("key.pem")).unwrap(),
    );
    let root = std::fs::read_to_string(op_dir.join("root.pem")).unwrap();
    let s = Server { child, url, root, op, db, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.client(true).call("GetOrgs", vec![]).is_err() {
        assert!(Instant::now() < deadline, "plab-authority did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

impl Server {
    fn client(&self, operator: bool) -> AuthorityClient {
        AuthorityClient::new(&self.url, &self.root, operator.then_some((self.op.0.as_str(), self.op.1.as_str())), None)
            .unwrap()
    }
}

/// Registers `n` nodes and 50 started slices on them, straight into the database (set-up,
/// not measured), and returns a session key per node.
fn populate(s: &Server, rt: &tokio::runtime::Runtime, n: usize) -> Vec<(i64, String)> {
    let mut op = s.client(true);
    op.call("AddOrg", vec![json!({"name": "bench", "authority": "plc.bench"})]).unwrap();
    op.call("AddSite", vec![json!({"org": "bench", "name": "bench-site"})]).unwrap();
    for i in 0..50 {
        op.call("CreateSlice", vec![json!(format!("plc.bench.s{i}"))]).unwrap();
        op.call("AddSlicePrincipal", vec![json!(format!("plc.bench.s{i}")), json!(["admin"])]).unwrap();
    }
    let sessions = rt.block_on(async {
        let db = plab_authority::db::Db::open(&s.db).await.unwrap();
        let mut tx = db.pool().begin().await.unwrap();
        let (site,): (i64,) = sqlx::query_as("SELECT id FROM sites").fetch_one(&mut *tx).await.unwrap();
        let mut slice_ids = Vec::new();
        for i in 0..50 {
            let (id,): (i64,) = sqlx::query_as(&db.q("SELECT id FROM slices WHERE name = ?")).bind(format!("plc.bench.s{i}")).fetch_one(&mut *tx).await.unwrap();
            slice_ids.push(id);
        }
        let now = credentials::now();
        let mut sessions = Vec::with_capacity(n);
        for i in 0..n {
            let (id,): (i64,) = sqlx::query_as(&db.q("INSERT INTO nodes (site_id, hostname, ip, mac, state, node_key, deleted, created) VALUES (?, ?, '127.0.0.1', '', 'boot', '00', 0, ?) RETURNING id"))
                .bind(site).bind(format!("n{i}.bench.test")).bind(now)
                .fetch_one(&mut *tx).await.unwrap();
            // Each node's slice creation service has a session.
            let key = hex::encode(credentials::random_bytes::<16>());
            sqlx::query(&db.q("INSERT INTO sessions (key_hash, identity, expires) VALUES (?, ?, ?)"))
                .bind(hex::encode(Sha256::digest(key.as_bytes()))).bind(format!("service:plc.scs@{id}")).bind(now + 86400)
                .execute(&mut *tx).await.unwrap();
            // Each node runs 5 of the 50 slices; every slice runs on a tenth of the nodes.
            for k in 0..5 {
                sqlx::query(&db.q("INSERT INTO slice_nodes (slice_id, node_id) VALUES (?, ?)")).bind(slice_ids[(i + k * 10) % 50]).bind(id).execute(&mut *tx).await.unwrap();
            }
            sessions.push((id, key));
        }
        sqlx::query("UPDATE slices SET started = 1").execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        sessions
    });
    // A change after the bulk insert bumps the generation the server publishes.
    op.call("StartSlice", vec![json!("plc.bench.s0")]).unwrap();
    sessions
}

struct PollResult {
    rps: f64,
    cpu_ms_per_req: f64,
}

/// Polls as the nodes would. `gens` holds each node's last generation (0: never polled)
/// and is updated, unless `refetch`, which asks with generation 0 every time (the answer
/// that reads the database). `secs: None` makes one pass over every node (each node
/// fetches its slices once); `Some(s)` polls round-robin for `s` seconds.
fn poll(
    s: &Server,
    sessions: &[(i64, String)],
    gens: &mut [i64],
    threads: usize,
    secs: Option<u64>,
    refetch: bool,
) -> PollResult {
    let pid = s.child.id();
    let tick0 = cpu_ticks(pid);
    let t0 = Instant::now();
    type Slot<'a> = (usize, &'a (i64, String), i64);
    let mut slots: Vec<Vec<Slot>> = vec![Vec::new(); threads];
    for (i, sess) in sessions.iter().enumerate() {
        slots[i % threads].push((i, sess, gens[i]));
    }
    let results: Vec<(u64, Vec<(usize, i64)>)> = std::thread::scope(|sc| {
        let hs: Vec<_> = slots
            .into_iter()
            .map(|mut chunk| {
                sc.spawn(move || {
                    let mut c = s.client(false);
                    let mut n = 0u64;
                    let end = secs.map(|x| Instant::now() + Duration::from_secs(x));
                    'outer: loop {
                        for (_, (id, key), gen) in chunk.iter_mut() {
                            c.auth = json!({"AuthMethod": "session", "session": key});
                            let since = if refetch { 0 } else { *gen };
                            let r = c.call("GetSlicesForNode", vec![json!(id), json!(since)]).unwrap();
                            if refetch {
                                assert_eq!(r["slices"].as_array().map(Vec::len), Some(5), "{r}");
                            } else {
                                *gen = r["generation"].as_i64().unwrap_or(0);
                            }
                            n += 1;
                            if end.is_some_and(|e| Instant::now() >= e) {
                                break 'outer;
                            }
                        }
                        if end.is_none() {
                            break;
                        }
                    }
                    (n, chunk.into_iter().map(|(i, _, g)| (i, g)).collect())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = 0;
    for (n, gs) in results {
        total += n;
        for (i, g) in gs {
            gens[i] = g;
        }
    }
    let secs_elapsed = t0.elapsed().as_secs_f64();
    let cpu_s = (cpu_ticks(pid) - tick0) as f64 / ticks_per_sec();
    PollResult { rps: total as f64 / secs_elapsed, cpu_ms_per_req: cpu_s * 1000.0 / total as f64 }
}

fn ticket_rate(s: &Server) -> (f64, f64) {
    let mut op = s.client(true);
    op.call("AddOrg", vec![json!({"name": "tix", "authority": "plc.tix"})]).unwrap();
    let n = 100;
    let t = Instant::now();
    for i in 0..n {
        let name = format!("plc.tix.t{i}");
        op.call("CreateSlice", vec![json!(name)]).unwrap();
        op.call("AddSlicePrincipal", vec![json!(name), json!(["admin"])]).unwrap();
        op.call("SetSliceAttr", vec![json!(name), json!("mem_limit"), json!("512")]).unwrap();
        op.call("GetSliceTicket", vec![json!(name)]).unwrap();
    }
    let e = t.elapsed().as_secs_f64();
    (n as f64 / e, 4.0 * n as f64 / e)
}

/// One node's service in section 3: it learns every change either by long-polling
/// (`interval: None`) or by asking every `interval`; returns each move of the generation
/// it saw (from, to, when).
async fn follow_node(
    s_url: String,
    root: String,
    id: i64,
    key: String,
    interval: Option<Duration>,
    offset: Duration,
    until: Instant,
) -> Vec<(i64, i64, Instant)> {
    let mut c = plab_authority::AsyncAuthorityClient::new(&s_url, &root, None, None).unwrap();
    c.auth = json!({"AuthMethod": "session", "session": key});
    let mut since = 0i64;
    let mut seen = vec![];
    tokio::time::sleep(offset).await;
    while Instant::now() < until {
        let wait = if interval.is_some() { 0 } else { 30 };
        let Ok(r) = c.call("GetSlicesForNode", vec![json!(id), json!(since), json!(wait)]).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let g = r["generation"].as_i64().unwrap_or(since);
        if g != since && since != 0 {
            seen.push((since, g, Instant::now()));
        }
        since = g;
        if let Some(i) = interval {
            tokio::time::sleep(i).await;
        }
    }
    seen
}

/// Section 3: 1,000 nodes, long poll against polling every 10 s.
fn long_poll_against_polling(rt: &tokio::runtime::Runtime, secs: u64) {
    // A thousand connections each way: lift the open-file limit to its hard value.
    let _ = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .and_then(|(_, hard)| nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard));
    println!("1,000 nodes following the authority for {secs} s while a slice changes every 10 s (SQLite):");
    let mut cpu = vec![];
    for interval in [None, Some(Duration::from_secs(10))] {
        let s = start("sqlite", rt);
        let sessions = populate(&s, rt, 1000);
        let mut changes = Vec::<(i64, Instant)>::new();
        let until = Instant::now() + Duration::from_secs(secs);
        let pid = s.child.id();
        let tasks: Vec<_> = sessions
            .iter()
            .enumerate()
            .map(|(i, (id, key))| {
                let offset = interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / sessions.len() as f64));
                rt.spawn(follow_node(s.url.clone(), s.root.clone(), *id, key.clone(), interval, offset, until))
            })
            .collect();
        // Let every node connect and fetch once before measuring.
        std::thread::sleep(Duration::from_secs(11));
        let tick0 = cpu_ticks(pid);
        let t0 = Instant::now();
        let mut op = s.client(true);
        let mut k = 0;
        while Instant::now() + Duration::from_secs(12) < until {
            k += 1;
            let when = Instant::now();
            let r =
                op.call("SetSliceAttr", vec![json!("plc.bench.s1"), json!("bootscript"), json!(format!("echo {k}"))]);
            r.unwrap();
            let g = op.call("GetSlicesForNode", vec![json!(sessions[0].0), json!(0)]).unwrap()["generation"]
                .as_i64()
                .unwrap();
            changes.push((g, when));
            std::thread::sleep(Duration::from_secs(10));
        }
        let cpu_s = (cpu_ticks(pid) - tick0) as f64 / ticks_per_sec();
        let window = t0.elapsed().as_secs_f64();
        let events = rt.block_on(async { futures_join(tasks).await });
        let mut lat: Vec<f64> = events
            .iter()
            .flat_map(|(from, to, at)| {
                changes
                    .iter()
                    .filter(move |(g, _)| g > from && g <= to)
                    .map(move |(_, when)| at.duration_since(*when).as_secs_f64())
            })
            .collect();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pct = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(f64::NAN);
        let label = match interval {
            None => "long poll".to_string(),
            Some(i) => format!("every {} s", i.as_secs()),
        };
        println!(
            "  {label:<12} server CPU {:6.2} % of a core   change to node: p50 {:6.2} s  p95 {:6.2} s  ({} node-changes seen)",
            cpu_s / window * 100.0,
            pct(0.5),
            pct(0.95),
            lat.len()
        );
        cpu.push((cpu_s / window, pct(0.5)));
    }
    println!(
        "  ratio long poll / polling every 10 s: CPU {:.2}, latency p50 {:.3}",
        cpu[0].0 / cpu[1].0,
        cpu[0].1 / cpu[1].1
    );
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<Vec<(i64, i64, Instant)>>>) -> Vec<(i64, i64, Instant)> {
    let mut out = vec![];
    for t in tasks {
        out.extend(t.await.unwrap_or_default());
    }
    out
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::args().any(|a| a == "--long-poll-only") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let secs = std::env::var("PLAB_BENCH_LONGPOLL_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
        long_poll_against_polling(&rt, secs);
        return;
    }
    let secs: u64 = std::env::var("PLAB_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rows = Vec::new();
    for n in [1000usize, 10000] {
        for kind in ["sqlite", "postgres"] {
            let s = start(kind, &rt);
            let sessions = populate(&s, &rt, n);
            let mut gens = vec![0i64; sessions.len()];
            // Every node fetches its slices once, then for `secs` nodes ask with generation
            // 0 (the answer read from the database, as after every change), then with
            // their generation (the "nothing changed" answer, the common case).
            let first = poll(&s, &sessions, &mut gens, 2, None, false);
            let db = poll(&s, &sessions, &mut gens.clone(), 2, Some(secs), true);
            let steady = poll(&s, &sessions, &mut gens, 2, Some(secs), false);
            rows.push((n, kind, first, db, steady));
        }
    }
    println!("node polling (GetSlicesForNode over HTTPS, 2 client threads, {secs} s; 5 of 50 slices per node):");
    println!(
        "  {:>6}  {:<9} {:>14} {:>16} {:>14} {:>12} {:>16} {:>24}",
        "nodes",
        "database",
        "first fetch/s",
        "from database/s",
        "CPU/fetch",
        "unchanged/s",
        "CPU/unchanged",
        "1,000 nodes every 10 s"
    );
    for (n, kind, first, db, r) in &rows {
        // 1,000 nodes every 10 s = 100 requests/s.
        let load = 100.0 * r.cpu_ms_per_req / 1000.0 * 100.0;
        println!(
            "  {n:>6}  {kind:<9} {:>14.0} {:>16.0} {:>11.3} ms {:>12.0} {:>13.3} ms {:>19.2} % core",
            first.rps, db.rps, db.cpu_ms_per_req, r.rps, r.cpu_ms_per_req, load
        );
    }
    for n in [1000usize, 10000] {
        let get = |k: &str, f: fn(&(usize, &str, PollResult, PollResult, PollResult)) -> f64| {
            rows.iter().find(|r| r.0 == n && r.1 == k).map(f).unwrap_or(0.0)
        };
        println!(
            "  {n:>6}  ratio postgres/sqlite req/s: from database {:.2}, unchanged {:.2}",
            get("postgres", |r| r.3.rps) / get("sqlite", |r| r.3.rps),
            get("postgres", |r| r.4.rps) / get("sqlite", |r| r.4.rps)
        );
    }
    println!("slice creation to ticket (CreateSlice, AddSlicePrincipal, SetSliceAttr, GetSliceTicket):");
    let mut rates = Vec::new();
    for kind in ["sqlite", "postgres"] {
        let s = start(kind, &rt);
        let (slices, calls) = ticket_rate(&s);
        println!("  {kind:<9} {slices:8.1} slices/s   {calls:8.1} calls/s");
        rates.push(calls);
    }
    println!("  ratio postgres/sqlite calls/s: {:.2}", rates[1] / rates[0]);
    let secs = std::env::var("PLAB_BENCH_LONGPOLL_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    long_poll_against_polling(&rt, secs);
}
