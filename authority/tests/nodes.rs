//! What a node's slice creation service sees of the authority: the slices for its node
//! with their run state and id, the long poll that answers as soon as something changes
//! (on the server that made the change, and on another server on the same PostgreSQL
//! database), and the slivers it reports back, shown per slice.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

mod common;
use common::{Backend, Harness};
use plab_authority::AuthorityClient;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn slice_names(v: &Value) -> Vec<(String, String)> {
    v["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s["run"].as_str().unwrap().to_owned()))
        .collect()
}

/// Long-polls `GetSlicesForNode` from `since` on another thread; returns the answer and
/// how long it took.
fn long_poll(
    url: &str,
    root: &str,
    svc: &(String, String),
    node: i64,
    since: i64,
    wait: u64,
) -> std::thread::JoinHandle<(Value, Duration)> {
    let (url, root, svc) = (url.to_owned(), root.to_owned(), svc.clone());
    std::thread::spawn(move || {
        let mut c = AuthorityClient::new(&url, &root, None, None).unwrap();
        c.start_session(&svc.0, &svc.1).unwrap();
        let t = Instant::now();
        let r = c.call("GetSlicesForNode", vec![json!(node), json!(since), json!(wait)]).unwrap();
        (r, t.elapsed())
    })
}

#[test]
fn a_long_poll_answers_when_the_nodes_slices_change_and_not_before() {
    let h = Harness::start(Backend::Sqlite);
    let (mut op, node, svc) = h.node_with_service();
    let mut scs = h.client(None);
    scs.start_session(&svc.0, &svc.1).unwrap();
    op.call("CreateSlice", vec![json!("plc.princeton.codeen")]).unwrap();
    op.call("AddSliceNode", vec![json!("plc.princeton.codeen"), json!([node])]).unwrap();
    let first = scs.call("GetSlicesForNode", vec![json!(node), json!(0)]).unwrap();
    assert_eq!(first["unchanged"], false);
    assert_eq!(slice_names(&first), [("plc.princeton.codeen".into(), "stop".into())], "not started yet: {first}");
    let g = first["generation"].as_i64().unwrap();
    // Nothing changes: the poll waits its time and says so.
    let (r, took) = long_poll(&h.url, &h.root, &svc, node, g, 1).join().unwrap();
    assert_eq!((r["unchanged"].as_bool(), r["generation"].as_i64()), (Some(true), Some(g)), "{r}");
    assert!(took >= Duration::from_millis(900), "it waited: {took:?}");
    // A change wakes it: the answer carries the new state.
    let waiting = long_poll(&h.url, &h.root, &svc, node, g, 30);
    std::thread::sleep(Duration::from_millis(300));
    op.call("StartSlice", vec![json!("plc.princeton.codeen")]).unwrap();
    let (r, _) = waiting.join().unwrap();
    assert_eq!(r["unchanged"], false, "{r}");
    assert_eq!(slice_names(&r), [("plc.princeton.codeen".into(), "start".into())]);
    assert!(r["slices"][0]["rspec"].as_str().unwrap().contains("plc.princeton.codeen"));
    let id = r["slices"][0]["id"].as_i64().unwrap();
    // Deleted and made again under the same name: another id, so the node starts afresh.
    op.call("DeleteSlice", vec![json!("plc.princeton.codeen")]).unwrap();
    let gone = scs.call("GetSlicesForNode", vec![json!(node), json!(0)]).unwrap();
    assert!(slice_names(&gone).is_empty(), "{gone}");
    op.call("CreateSlice", vec![json!("plc.princeton.codeen")]).unwrap();
    op.call("AddSliceNode", vec![json!("plc.princeton.codeen"), json!([node])]).unwrap();
    let again = scs.call("GetSlicesForNode", vec![json!(node), json!(0)]).unwrap();
    assert_ne!(again["slices"][0]["id"].as_i64().unwrap(), id);
}

#[test]
fn slivers_reported_by_nodes_show_per_slice() {
    let h = Harness::start(Backend::Sqlite);
    let (mut op, node, svc) = h.node_with_service();
    let other = op.call("AddNode", vec![json!({"site": "pcs", "hostname": "n2.test", "ip": "127.0.0.3"})]).unwrap()
        ["node_id"]
        .as_i64()
        .unwrap();
    op.call("CreateSlice", vec![json!("plc.princeton.codeen")]).unwrap();
    op.call("AddSliceNode", vec![json!("plc.princeton.codeen"), json!([node, other])]).unwrap();
    let mut scs = h.client(None);
    scs.start_session(&svc.0, &svc.1).unwrap();
    let report = json!([
        {"slice": "plc.princeton.codeen", "state": "running", "address": "10.213.0.2", "ssh": "ssh -p 22001 plc_princeton_codeen@127.0.0.1"},
        {"slice": "plc.nobody.here", "state": "running"}
    ]);
    let r = scs.call("ReportSlivers", vec![json!(node), report]).unwrap();
    assert_eq!(r["recorded"], 1, "a slice the authority does not know is not recorded: {r}");
    // The service of one node cannot report for another.
    let e = scs.call("ReportSlivers", vec![json!(other), json!([])]).unwrap_err();
    assert_eq!(common::code(&e), 1, "{e}");
    let st = op.call("GetSliceStatus", vec![json!("plc.princeton.codeen")]).unwrap();
    let slivers = st["slivers"].as_array().unwrap();
    assert_eq!(slivers.len(), 2, "{st}");
    assert_eq!(slivers[0]["state"], "running");
    assert_eq!(slivers[0]["ssh"], "ssh -p 22001 plc_princeton_codeen@127.0.0.1");
    assert_eq!(slivers[1]["state"], "missing", "the other node has not reported: {st}");
    // A new report replaces the node's last one.
    scs.call("ReportSlivers", vec![json!(node), json!([])]).unwrap();
    let st = op.call("GetSliceStatus", vec![json!("plc.princeton.codeen")]).unwrap();
    assert_eq!(st["slivers"][0]["state"], "missing", "{st}");
    // Bad reports are refused whole, naming the field.
    let long = "x".repeat(2000);
    let e = scs.call("ReportSlivers", vec![json!(node), json!([{"slice": "plc.princeton.codeen", "state": long}])]);
    let e = e.unwrap_err();
    assert!(e.to_string().contains("slivers") && e.to_string().contains("[0].state"), "{e}");
    let e =
        scs.call("ReportSlivers", vec![json!(node), json!([{"slice": "a", "state": "b", "extra": 1}])]).unwrap_err();
    assert!(e.to_string().contains("extra"), "{e}");
}

#[test]
fn a_change_made_through_one_server_wakes_a_long_poll_on_another() {
    let h = Harness::start(Backend::Postgres);
    let second = h.another_server();
    let (mut op, node, svc) = h.node_with_service();
    op.call("CreateSlice", vec![json!("plc.princeton.codeen")]).unwrap();
    op.call("AddSliceNode", vec![json!("plc.princeton.codeen"), json!([node])]).unwrap();
    let mut scs = AuthorityClient::new(&second.url, &h.root, None, None).unwrap();
    scs.start_session(&svc.0, &svc.1).unwrap();
    let g = scs.call("GetSlicesForNode", vec![json!(node), json!(0)]).unwrap()["generation"].as_i64().unwrap();
    // The node long-polls server 2; the change is made through server 1.
    let waiting = long_poll(&second.url, &h.root, &svc, node, g, 30);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    op.call("StartSlice", vec![json!("plc.princeton.codeen")]).unwrap();
    let (r, _) = waiting.join().unwrap();
    let after = t.elapsed();
    assert_eq!(r["unchanged"], false, "{r}");
    assert_eq!(slice_names(&r), [("plc.princeton.codeen".into(), "start".into())]);
    // Server 2 reads the database's generation only through LISTEN (its periodic read is
    // an hour away), so NOTIFY is what woke the poll.
    eprintln!("change on server 1 reached the long poll on server 2 after {after:?}");
    assert!(r["generation"].as_i64().unwrap() > g);
    drop(second);
}

#[test]
fn concurrent_writers_on_sqlite_wait_for_each_other_instead_of_failing() {
    // Slice creation and node reports at once, as a testbed makes them: on SQLite a
    // transaction that reads before it writes must not fail with "database is locked".
    let h = Harness::start(Backend::Sqlite);
    let (_op, node, svc) = h.node_with_service();
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let (url, root, op, svc) = (h.url.clone(), h.root.clone(), h.op.clone(), svc.clone());
            std::thread::spawn(move || {
                let mut failures = vec![];
                if t % 2 == 0 {
                    let mut c = AuthorityClient::new(&url, &root, Some((&op.0, &op.1)), None).unwrap();
                    for i in 0..15 {
                        let s = format!("plc.princeton.t{t}x{i}");
                        for (m, p) in [
                            ("CreateSlice", vec![json!(s)]),
                            ("AddSliceNode", vec![json!(s), json!([node])]),
                            ("StartSlice", vec![json!(s)]),
                        ] {
                            if let Err(e) = c.call(m, p) {
                                failures.push(format!("{m}: {e}"));
                            }
                        }
                    }
                } else {
                    let mut c = AuthorityClient::new(&url, &root, None, None).unwrap();
                    c.start_session(&svc.0, &svc.1).unwrap();
                    for _ in 0..30 {
                        let r = json!([{"slice": format!("plc.princeton.t0x0"), "state": "running"}]);
                        if let Err(e) = c.call("ReportSlivers", vec![json!(node), r]) {
                            failures.push(format!("ReportSlivers: {e}"));
                        }
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn slice_state_calls_answer_with_the_new_state() {
    let h = Harness::start(Backend::Sqlite);
    let mut op = h.operator();
    op.call("AddOrg", vec![json!({"name": "princeton", "authority": "plc.princeton"})]).unwrap();
    op.call("CreateSlice", vec![json!("plc.princeton.s")]).unwrap();
    let st = |v: Value| (v["state"]["mode"].clone(), v["state"]["run"].clone(), v["state"]["life"].clone());
    let start = op.call("StartSlice", vec![json!("plc.princeton.s")]).unwrap();
    assert_eq!(st(start), (json!("central"), json!("start"), json!("active")));
    op.call("GetSliceTicket", vec![json!("plc.princeton.s")]).unwrap();
    let stop = op.call("StopSlice", vec![json!("plc.princeton.s")]).unwrap();
    assert_eq!(st(stop), (json!("delegated"), json!("stop"), json!("active")));
    let gone = op.call("DeleteSlice", vec![json!("plc.princeton.s")]).unwrap();
    assert_eq!(st(gone), (json!("delegated"), json!("stop"), json!("deleted")));
}

#[test]
fn a_tech_manages_the_sites_of_its_own_organisation_that_have_no_tech_of_their_own() {
    let h = Harness::start(Backend::Sqlite);
    let mut op = h.operator();
    op.call("AddOrg", vec![json!({"name": "princeton", "authority": "plc.princeton"})]).unwrap();
    op.call("AddOrg", vec![json!({"name": "mit", "authority": "plc.mit"})]).unwrap();
    op.call("AddSite", vec![json!({"org": "princeton", "name": "pcs"})]).unwrap();
    let tina = h.principal(&mut op, "tina", "princeton", "tech");
    let mo = h.principal(&mut op, "mo", "mit", "tech");
    let node = json!({"site": "pcs", "hostname": "n9.test", "ip": "127.0.0.9"});
    let e = h.client(Some((&mo.0, &mo.1))).call("AddNode", vec![node.clone()]).unwrap_err();
    assert_eq!(common::code(&e), 1, "a tech of another organisation: {e}");
    h.client(Some((&tina.0, &tina.1))).call("AddNode", vec![node]).unwrap();
}
