//! `plab-bench-testbed`: the whole testbed's speed.
//!
//! 1. `StartSlice` at the authority to every sliver reported running (`GetSliceStatus`),
//!    for 1, 10 and 50 nodes (1 and 10 with real containers, 50 with node managers on the
//!    in-memory fake backend so that the control path is what is measured), p50 and p95;
//!    against the same testbed whose services poll every 10 s instead of long-polling.
//! 2. A ticket redeemed at a node to its sliver running, against the owner's direct
//!    `SplitPool` and `Bind` on the same node.
//!
//! Needs root, like the integration tests. `PLAB_BENCH_REPS` (default 5) sets repetitions.
#![allow(clippy::unwrap_used)] // Benchmark code: a failed unwrap is a failed run.

use credentials::ticket::TicketBody;
use plab_tests::testbed::{Options, Testbed};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Starts `reps` slices, one after the other, on every node of `tb`; the seconds from
/// `StartSlice` to every sliver reported running. Each start waits a pseudo-random part of
/// `jitter` first, so that starts fall at every phase of a polling node's cycle.
fn start_to_running(tb: &Testbed, reps: usize, tag: &str, jitter: Duration) -> Vec<f64> {
    let mut op = tb.operator();
    let nodes: Vec<i64> = tb.nodes.iter().map(|n| n.id).collect();
    let n = nodes.len();
    let mut out = vec![];
    for r in 0..reps {
        let s = format!("plc.princeton.{tag}{r}");
        op.call("CreateSlice", vec![json!(s)]).unwrap();
        op.call("AddSlicePrincipal", vec![json!(s), json!(["alice"])]).unwrap();
        op.call("SetSliceAttr", vec![json!(s), json!("mem_limit"), json!(48)]).unwrap();
        op.call("SetSliceAttr", vec![json!(s), json!("disk_quota"), json!(0.05)]).unwrap();
        op.call("AddSliceNode", vec![json!(s), json!(nodes)]).unwrap();
        let running = |st: &Value| {
            let v = st["slivers"].as_array().cloned().unwrap_or_default();
            v.len() == n && v.iter().all(|x| x["state"] == "running")
        };
        std::thread::sleep(jitter.mul_f64(((r * 7919 + 13) % 100) as f64 / 100.0));
        let t = Instant::now();
        op.call("StartSlice", vec![json!(s)]).unwrap();
        let (st, _) = tb.wait_status(&s, Duration::from_secs(300), running);
        assert!(running(&st), "{st:#}\n{}", tb.logs());
        out.push(t.elapsed().as_secs_f64());
        op.call("DeleteSlice", vec![json!(s)]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        while tb.nodes.iter().any(|node| !node.vms().is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    out
}

fn main() {
    let reps: usize = std::env::var("PLAB_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    println!("StartSlice to every sliver running (GetSliceStatus), {reps} slices each:");
    let mut long_poll_10 = 0.0;
    for (nodes, fake) in [(1, false), (10, false), (50, true)] {
        let t = Instant::now();
        let tb = Testbed::new(Options { nodes, fake_backend: fake, ..Options::default() });
        tb.researcher("alice");
        let built = t.elapsed().as_secs_f64();
        let jitter = if nodes == 10 { Duration::from_secs(10) } else { Duration::ZERO };
        let mut v = start_to_running(&tb, reps, &format!("n{nodes}x"), jitter);
        let (p50, p95) = (pct(&mut v, 0.5), pct(&mut v, 0.95));
        if nodes == 10 {
            long_poll_10 = p50;
        }
        println!(
            "  {nodes:>3} nodes ({}): p50 {p50:6.2} s   p95 {p95:6.2} s   (testbed built in {built:.0} s)",
            if fake { "fake backend" } else { "containers" }
        );
    }
    // The peer: the same services polling every 10 s (PlanetLab polled every 600 s, plus up
    // to 301 s of random delay).
    let tb = Testbed::new(Options { nodes: 10, poll_interval_secs: 10, ..Options::default() });
    tb.researcher("alice");
    let mut v = start_to_running(&tb, reps, "poll", Duration::from_secs(10));
    let (p50, p95) = (pct(&mut v, 0.5), pct(&mut v, 0.95));
    println!("   10 nodes polling every 10 s:  p50 {p50:6.2} s   p95 {p95:6.2} s");
    println!("  ratio long poll / polling every 10 s (10 nodes, p50): {:.3}", long_poll_10 / p50);
    drop(tb);

    // 2. Ticket redemption against a direct Bind on the same node.
    let tb = Testbed::new(Options { nodes: 1, ..Options::default() });
    let alice = tb.researcher("alice");
    let key = std::fs::read_to_string(alice.ssh_key.with_extension("pub")).unwrap();
    let node = tb.nodes[0].id;
    let mut nm = tb.nodes[0].nm();
    let pool = r#"<PoolRSpec><resources cpu_share="16" disk_quota="20" mem_limit="2048"/></PoolRSpec>"#;
    let owner_pool = nm.call_str("CreatePool", json!([pool, "plc.owner"]), "rcap").unwrap();
    let (mut redeem, mut bind) = (vec![], vec![]);
    for r in 0..reps * 2 {
        let rspec = |name: &str| {
            format!(
                r#"<VServerSlice name="{name}"><resources cpu_share="1" disk_quota="0.05" mem_limit="48"/><key>{}</key></VServerSlice>"#,
                key.trim()
            )
        };
        let tname = format!("plc.princeton.t{r}");
        let ticket = tb.sign_ticket(&TicketBody::new("plc", &tname, rspec(&tname), vec![node], 600));
        let t = Instant::now();
        let got = tb.redeem(0, &ticket).unwrap();
        redeem.push(t.elapsed().as_secs_f64());
        assert_eq!(got["state"], "running", "{got}");
        let bname = format!("plc.owner.b{r}");
        let t = Instant::now();
        let sub = nm.call_str("SplitPool", json!([owner_pool, rspec(&bname)]), "rcap").unwrap();
        nm.call_value("Bind", json!([sub, bname])).unwrap();
        bind.push(t.elapsed().as_secs_f64());
        nm.call_value("DestroyVM", json!([bname.replace('.', "_")])).unwrap();
        nm.call_value("DestroyPool", json!([sub])).unwrap();
    }
    let (r50, b50) = (pct(&mut redeem, 0.5), pct(&mut bind, 0.5));
    println!(
        "ticket redeemed at the node to its sliver running, against the owner's SplitPool + Bind ({} each):",
        reps * 2
    );
    println!(
        "  RedeemTicket p50 {:7.1} ms  p95 {:7.1} ms   SplitPool+Bind p50 {:7.1} ms  p95 {:7.1} ms   ratio {:.2}",
        r50 * 1e3,
        pct(&mut redeem, 0.95) * 1e3,
        b50 * 1e3,
        pct(&mut bind, 0.95) * 1e3,
        r50 / b50
    );
}
