//! The testbed when things go wrong: bad tickets (forged, expired, from an authority the
//! node has no pool for, for a slice outside the pool's authority, for more than the pool
//! holds); an authority that answers garbage, is slow, or is down; and the node manager or
//! the slice creation service killed with SIGKILL at random moments, twenty times, after
//! which the node converges with no duplicate VM, no orphan and no lost pool. Needs root.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use credentials::ticket::TicketBody;
use plab_tests::testbed::{Options, Testbed};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(90);

fn slice(op: &mut plab_authority::AuthorityClient, name: &str, nodes: &[i64]) {
    op.call("CreateSlice", vec![json!(name)]).unwrap();
    op.call("AddSlicePrincipal", vec![json!(name), json!(["alice"])]).unwrap();
    op.call("SetSliceAttr", vec![json!(name), json!("mem_limit"), json!(48)]).unwrap();
    op.call("SetSliceAttr", vec![json!(name), json!("disk_quota"), json!(0.05)]).unwrap();
    op.call("AddSliceNode", vec![json!(name), json!(nodes)]).unwrap();
}

fn vm_slices(tb: &Testbed) -> Vec<String> {
    let mut v: Vec<String> = tb.nodes[0].vms().iter().map(|v| v["slice"].as_str().unwrap().to_owned()).collect();
    v.sort();
    v
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

#[test]
fn integration_testbed_bad_tickets_are_refused_and_change_nothing() {
    let tb = Testbed::new(Options { nodes: 1, ..Options::default() });
    let alice = tb.researcher("alice");
    let node = tb.nodes[0].id;
    let rspec = |name: &str, mem: u64| {
        format!(
            r#"<VServerSlice name="{name}"><resources cpu_share="1" disk_quota="0.05" mem_limit="{mem}"/><key>{}</key></VServerSlice>"#,
            std::fs::read_to_string(alice.ssh_key.with_extension("pub")).unwrap().trim()
        )
    };
    let body = |name: &str, mem: u64, ttl: i64| TicketBody::new("plc", name, rspec(name, mem), vec![node], ttl);
    let code = |r: Result<Value, jsonrpc::ClientError>| match r {
        Err(e) => (e.code().map(|c| c.0).unwrap_or(0), e.to_string()),
        Ok(v) => panic!("accepted: {v}"),
    };
    // Forged: the body altered after signing.
    let mut forged = tb.sign_ticket(&body("plc.princeton.f", 48, 600));
    let b = forged["body"].as_str().unwrap().to_owned();
    forged["body"] = json!(format!("{}{}", &b[..b.len() - 4], if b.ends_with("AAA=") { "BBB=" } else { "AAA=" }));
    let (c, m) = code(tb.redeem(0, &forged));
    assert!(c == 2 && m.contains("not signed by a slice authority this node has a pool for"), "{c} {m}");
    // Expired.
    let (c, m) = code(tb.redeem(0, &tb.sign_ticket(&body("plc.princeton.e", 48, -10))));
    assert!(c == 4 && m.contains("expired"), "{c} {m}");
    // Signed by another authority (its own root and SA): the node has no pool for it.
    let rk = credentials::pki::KeyPair::generate();
    let root = credentials::pki::new_root("evil", &rk, 10).unwrap();
    let (sa, sak) =
        credentials::pki::new_authority(&root, &rk, credentials::identity::AuthorityKind::Sa, "plc", 10).unwrap();
    let foreign = serde_json::to_value(body("plc.princeton.x", 48, 600).sign(&sak.to_pem(), &sa).unwrap()).unwrap();
    let (c, m) = code(tb.redeem(0, &foreign));
    assert!(c == 2 && m.contains("not signed"), "{c} {m}");
    // A slice outside the pool's authority.
    let mut outside = body("com.startup.voip", 48, 600);
    outside.rspec = rspec("com.startup.voip", 48);
    let (c, m) = code(tb.redeem(0, &tb.sign_ticket(&outside)));
    assert!(c == 1 && m.contains("not below plc"), "{c} {m}");
    // More than the pool holds (8192 MB).
    let (c, m) = code(tb.redeem(0, &tb.sign_ticket(&body("plc.princeton.big", 100_000, 600))));
    assert!(c == 8 && m.contains("holds only"), "{c} {m}");
    // For another node.
    let mut elsewhere = body("plc.princeton.w", 48, 600);
    elsewhere.nodes = vec![node + 100];
    let (c, m) = code(tb.redeem(0, &tb.sign_ticket(&elsewhere)));
    assert!(c == 1 && m.contains("not this node"), "{c} {m}");
    // Nothing was made, and every pool is whole.
    assert!(tb.nodes[0].vms().is_empty(), "{:?}", tb.nodes[0].vms());
    let pools = tb.nodes[0].nm().call_value("ListPools", json!({})).unwrap();
    assert_eq!(pools["pools"].as_array().unwrap().len(), 1, "{pools}");
    // A good one works, once.
    let good = tb.sign_ticket(&body("plc.princeton.ok", 48, 600));
    let r = tb.redeem(0, &good).unwrap();
    assert_eq!(r["vm"], "plc_princeton_ok", "{r}");
    let (c, m) = code(tb.redeem(0, &good));
    assert!(c == 4 && m.contains("replay"), "{c} {m}");
}

/// A proxy in front of the authority that passes traffic, refuses it, holds it, or
/// answers garbage over TLS with the authority's own certificate.
const PASS: u8 = 0;
const DOWN: u8 = 1;
const SLOW: u8 = 2;
const GARBAGE: u8 = 3;

fn proxy(tb: &Testbed, mode: Arc<AtomicU8>) -> std::thread::JoinHandle<()> {
    let (listen, upstream) = tb.proxy_and_authority();
    let ca = tb.authority_dir.join("ca");
    let cert = std::fs::read_to_string(ca.join("server.pem")).unwrap();
    let key = std::fs::read_to_string(ca.join("server.key")).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            use rustls::pki_types::pem::PemObject;
            let certs: Vec<_> =
                rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()).map(|c| c.unwrap()).collect();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            let tls = Arc::new(
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .unwrap(),
            );
            let l = tokio::net::TcpListener::bind(&listen).await.unwrap();
            loop {
                let Ok((mut c, _)) = l.accept().await else { continue };
                let (now, upstream, tls, mode) =
                    (mode.load(Ordering::SeqCst), upstream.clone(), tls.clone(), mode.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    match now {
                        PASS => {
                            // Passed until the mode changes: then the connection is cut, as
                            // a failing authority would cut it.
                            if let Ok(mut u) = tokio::net::TcpStream::connect(&upstream).await {
                                let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
                                tokio::pin!(copy);
                                loop {
                                    tokio::select! {
                                        _ = &mut copy => break,
                                        _ = tokio::time::sleep(Duration::from_millis(50)) => {
                                            if mode.load(Ordering::SeqCst) != PASS { break }
                                        }
                                    }
                                }
                            }
                        }
                        SLOW => tokio::time::sleep(Duration::from_secs(25)).await,
                        GARBAGE => {
                            if let Ok(mut s) = tokio_rustls::TlsAcceptor::from(tls).accept(c).await {
                                let mut buf = vec![0u8; 65536];
                                let _ = s.read(&mut buf).await;
                                let body = "<html>this is not JSON-RPC</html>";
                                let _ = s
                                    .write_all(
                                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                                            .as_bytes(),
                                    )
                                    .await;
                                let _ = s.shutdown().await;
                            }
                        }
                        _ => drop(c),
                    }
                });
            }
        });
    })
}

#[test]
fn integration_testbed_an_authority_that_answers_garbage_is_slow_or_is_down_changes_nothing_on_the_node() {
    let tb = Testbed::new(Options { nodes: 1, via_proxy: true, poll_wait_secs: 2, ..Options::default() });
    let mode = Arc::new(AtomicU8::new(PASS));
    let _proxy = proxy(&tb, mode.clone());
    tb.researcher("alice");
    let mut op = tb.operator();
    let node = tb.nodes[0].id;
    slice(&mut op, "plc.princeton.one", &[node]);
    op.call("StartSlice", vec![json!("plc.princeton.one")]).unwrap();
    assert!(wait_until(LIMIT, || vm_slices(&tb) == ["plc.princeton.one"]), "{}", tb.logs());
    let mut changes = 0;
    for (m, what) in [(GARBAGE, "not understood"), (SLOW, "timed out"), (DOWN, "")] {
        mode.store(m, Ordering::SeqCst);
        // A change the node cannot hear of yet.
        changes += 1;
        let s = format!("plc.princeton.c{changes}");
        slice(&mut op, &s, &[node]);
        op.call("StartSlice", vec![json!(s)]).unwrap();
        std::thread::sleep(Duration::from_secs(if m == SLOW { 30 } else { 8 }));
        assert_eq!(vm_slices(&tb), ["plc.princeton.one"], "the node keeps what it runs and makes nothing new");
        let log = tb.nodes[0].log("scs.log");
        assert!(log.contains("keeping the last good answer") && log.contains(what), "mode {m}: {log}");
    }
    // The authority is back: the node catches up (after its backoff) with every change.
    mode.store(PASS, Ordering::SeqCst);
    let mut want: Vec<String> = std::iter::once("plc.princeton.one".to_string())
        .chain((1..=changes).map(|i| format!("plc.princeton.c{i}")))
        .collect();
    want.sort();
    assert!(wait_until(LIMIT, || vm_slices(&tb) == want), "{:?}\n{}", vm_slices(&tb), tb.logs());
    // The service restarted while the authority is down still runs the node from its
    // last good answer (on disk).
    mode.store(DOWN, Ordering::SeqCst);
    let mut tb = tb;
    tb.nodes[0].kill_scs();
    tb.nodes[0].start_scs();
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(vm_slices(&tb), want, "{}", tb.logs());
}

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn integration_testbed_sigkill_of_the_node_manager_or_the_service_twenty_times_leaves_a_consistent_node() {
    let mut tb = Testbed::new(Options { nodes: 1, poll_wait_secs: 5, ..Options::default() });
    tb.researcher("alice");
    let mut op = tb.operator();
    let node = tb.nodes[0].id;
    let seed = std::env::var("PLAB_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(std::process::id() as u64);
    eprintln!("seed {seed} (PLAB_SEED={seed} replays it)");
    let mut rng = Lcg(seed);
    let pools_before = tb.nodes[0].nm().call_value("ListPools", json!({})).unwrap();
    let mut live: Vec<String> = vec![];
    for i in 0..20 {
        // Churn: a new slice starts, and the one from two rounds ago is deleted.
        let s = format!("plc.princeton.k{i}");
        slice(&mut op, &s, &[node]);
        op.call("StartSlice", vec![json!(s)]).unwrap();
        live.push(s);
        if live.len() > 3 {
            let old = live.remove(0);
            op.call("DeleteSlice", vec![json!(old)]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(rng.next(400)));
        if rng.next(2) == 0 {
            tb.nodes[0].kill_nm();
            tb.nodes[0].start_nm();
        } else {
            tb.nodes[0].kill_scs();
            tb.nodes[0].start_scs();
        }
    }
    live.sort();
    let converged = wait_until(LIMIT, || vm_slices(&tb) == live);
    assert!(converged, "VMs {:?}, wanted {live:?}\n{}", vm_slices(&tb), tb.logs());
    let mut nm = tb.nodes[0].nm();
    // No duplicate VM (one per slice, and the backend holds exactly those) and no orphan.
    // A VM whose start a kill interrupted is started again by the node manager's
    // reconciliation (or the service's next pass): all run in the end.
    let all_running = || {
        let vms = tb.nodes[0].nm().call_value("ListVMs", json!({})).unwrap();
        vms["vms"].as_array().unwrap().iter().all(|v| v["state"] == "running")
    };
    if !wait_until(LIMIT, all_running) {
        let vms = nm.call_value("ListVMs", json!({})).unwrap();
        let logs: Vec<String> = vms["vms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["state"] != "running")
            .map(|v| format!("{}: {}", v["vm"], nm.call_value("VmLog", json!({"vm": v["vm"]})).unwrap_or_default()))
            .collect();
        panic!("not all VMs run: {vms}\n{}\n{}", logs.join("\n"), tb.logs());
    }
    assert_eq!(nm.call_value("Orphans", json!({})).unwrap()["orphans"], json!([]));
    // No lost pool: every pool is the authority's or bound to a live VM, and the
    // resources add up to what the owner gave.
    assert!(wait_until(LIMIT, || {
        let p = tb.nodes[0].nm().call_value("ListPools", json!({})).unwrap();
        p["pools"].as_array().unwrap().iter().all(|p| p["parent"].is_null() || !p["vm"].is_null())
    }));
    let pools = nm.call_value("ListPools", json!({})).unwrap();
    let mb = |p: &Value| p["resources"]["mem_limit"].as_str().unwrap().trim_end_matches(" MB").parse::<f64>().unwrap();
    let total: f64 = pools["pools"].as_array().unwrap().iter().map(mb).sum();
    assert_eq!(total, mb(&pools_before["pools"][0]), "{pools}");
    assert_eq!(pools["pools"].as_array().unwrap().len(), 1 + live.len(), "{pools}");
}
