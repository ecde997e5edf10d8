//! Integration test of the auditing service (issue 10, items 4 and 5): a real node manager
//! with a public side towards an outside namespace, real container VMs, and `plab-audit
//! serve` capturing on their interfaces. Someone outside who received packets from the
//! node asks the public query (JSON and HTML) and gets the slice and its users; flows
//! survive a restart of the service (those being counted when it stopped included); a VM
//! destroyed while it sends has its flows kept and the service goes on; bad queries get
//! 400 naming the field. Needs root, runc, OpenSSH, nft, socat and the image.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use plab_tests::{bin, http_get, keypair, prerequisites, try_http_get, Browser, Outside, TestNode};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process that is killed when dropped (a failed assertion included), with everything
/// it started (it leads a process group of its own).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn spawn_in(ns: &str, cmd: &str) -> Killed {
    Killed(
        Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", cmd])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    )
}

fn sh_in(ns: &str, cmd: &str) -> String {
    let o = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).output().unwrap();
    assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Audit {
    child: Child,
}

impl Audit {
    fn start(node: &TestNode) -> Audit {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(node.dir.path().join("audit.log")).unwrap();
        let config = node.dir.path().join("audit.toml");
        std::fs::write(
            &config,
            "idle_timeout_secs = 2\nactive_timeout_secs = 30\nipfix_collector = \"10.77.0.2:4739\"\nipfix_domain = 9\n",
        )
        .unwrap();
        let child = Command::new(bin("plab-audit"))
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--nm-socket")
            .arg(node.socket())
            .arg("--db")
            .arg(node.dir.path().join("audit/flows.db"))
            .args(["--listen", "10.77.0.1:8880"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Audit { child }
    }

    /// SIGTERM, and wait: the service stores what it was counting before it ends.
    fn stop(mut self) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "plab-audit ended with {status}");
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Asks the public JSON endpoint from outside until `ok` holds for the answer.
fn ask_until(out: &str, path: &str, node: &TestNode, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Until the service listens, the connection is refused.
        let (status, body) = try_http_get(out, "10.77.0.1:8880", path).unwrap_or_default();
        if status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            if ok(&v) {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no answer for {path}: {status} {body}\nA's flows: {:?}\naudit log:\n{}",
            http_get(out, "10.77.0.1:8880", &format!("/api/flows?src=10.213.0.2&from={}", now() - 600.0)),
            std::fs::read_to_string(node.dir.path().join("audit.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn integration_audit_the_public_query_names_the_slice_that_sent_a_packet() {
    prerequisites();
    let node = TestNode::with_config("aud", "public_address = \"10.77.0.1\"\n");
    let out = Outside::new(&node.netns, "aud");
    let (_, public) = keypair(node.dir.path());
    let mut c = node.client();
    let pool = r#"<PoolRSpec vm_type="linux-vserver-x86"><resources cpu_share="8" disk_quota="1" mem_limit="1024"/></PoolRSpec>"#;
    let root = c.call_str("CreatePool", json!([pool, "plc.aud"]), "rcap").unwrap();
    let mut vms = Vec::new();
    for s in ["plc.aud.a", "plc.aud.b"] {
        let r = format!(
            r#"<VServerSlice name="{s}"><resources cpu_share="2" disk_quota="0.05" mem_limit="64"/><key>{public}</key></VServerSlice>"#
        );
        let sub = c.call_str("SplitPool", json!([root, r]), "rcap").unwrap();
        let vm = c.call_value("Bind", json!([sub, s])).unwrap();
        vms.push((vm["vm"].as_str().unwrap().to_owned(), vm["address"].as_str().unwrap().to_owned()));
    }
    let ((a, _), (b, _)) = (vms[0].clone(), vms[1].clone());
    let (a_ns, b_ns) = (format!("plab-{a}"), format!("plab-{b}"));
    // An IPFIX collector outside (Debian's nfcapd) receives the node's flows.
    let ipfix_dir = node.dir.path().join("nfcapd");
    std::fs::create_dir(&ipfix_dir).unwrap();
    let nfcapd = Command::new("ip")
        .args(["netns", "exec", &out.netns, "nfcapd", "-b", "10.77.0.2", "-p", "4739", "-t", "600", "-w"])
        .arg(&ipfix_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("nfcapd: {e} (apt-get install nfdump; make test's set-up does)"));
    let nfcapd = Killed(nfcapd);
    let mut audit = Some(Audit::start(&node));
    // The outside's servers print the source they saw.
    let servers = vec![
        spawn_in(
            &out.netns,
            "exec socat UDP-RECVFROM:8081,reuseaddr,fork 'SYSTEM:echo $SOCAT_PEERADDR $SOCAT_PEERPORT'",
        ),
        spawn_in(&out.netns, "exec socat -u UDP-RECV:8082,reuseaddr OPEN:/dev/null"),
    ];
    // Wait until the service captures (it looks at the node's VMs every 2 s).
    ask_until(&out.netns, "/api/flows?src=10.77.0.2", &node, |_| true);
    std::thread::sleep(Duration::from_secs(3));
    let t0 = now() - 1.0;

    // A sends three datagrams of 100 bytes from one socket; the outside sees the node's
    // address and a port of A's NAT block.
    let seen = sh_in(
        &a_ns,
        "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n\
         for i in range(3): s.sendto(b'x'*100, ('10.77.0.2', 8081)); r=s.recvfrom(100)\n\
         print(r[0].decode().strip())\"",
    );
    let mut words = seen.split_whitespace();
    assert_eq!(words.next(), Some("10.77.0.1"), "{seen}");
    let port: u16 = words.next().unwrap().parse().unwrap();
    let path = format!("/api/flows?src=10.77.0.1:{port}&dst=10.77.0.2:8081&from={t0}&to={}", now() + 60.0);
    let answer = ask_until(&out.netns, &path, &node, |v| v["flows"].as_array().is_some_and(|f| !f.is_empty()));
    let flows = answer["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 1, "{answer}");
    let f = &flows[0];
    assert_eq!(f["meta"]["slice"], "plc.aud.a", "{f}");
    assert_eq!(f["meta"]["users"], json!(["alice@test"]), "{f}");
    assert_eq!((f["proto"].as_u64(), f["dport"].as_u64()), (Some(17), Some(8081)), "{f}");
    assert_eq!((f["packets"].as_u64(), f["bytes"].as_u64()), (Some(3), Some(3 * (20 + 8 + 100))), "exact counts: {f}");
    let (first, last) = (f["first_ms"].as_f64().unwrap() / 1000.0, f["last_ms"].as_f64().unwrap() / 1000.0);
    assert!(t0 <= first && first <= last && last <= now(), "times {first} {last} against {t0}");
    let block = f["meta"]["nat_ports"].as_array().unwrap();
    assert!(block[0].as_u64().unwrap() <= u64::from(port) && u64::from(port) <= block[1].as_u64().unwrap());
    assert_eq!(f["post_nat_src"], format!("10.77.0.1:{port}"), "the exact port the outside saw (conntrack): {f}");
    // Another port of A's own block is not this flow.
    let next = if port > block[0].as_u64().unwrap() as u16 { port - 1 } else { port + 1 };
    let other = format!("/api/flows?src=10.77.0.1:{next}&dst=10.77.0.2:8081&from={t0}");
    assert_eq!(http_get(&out.netns, "10.77.0.1:8880", &other).1, r#"{"flows":[]}"#);
    // The same question about B's block finds nothing; the HTML page names the slice.
    let other = format!("/api/flows?src=10.77.0.1:{}&dst=10.77.0.2:8081&from={t0}", port.wrapping_add(256));
    assert_eq!(http_get(&out.netns, "10.77.0.1:8880", &other).1, r#"{"flows":[]}"#);
    let (status, html) = http_get(&out.netns, "10.77.0.1:8880", &path.replace("/api/flows", "/query"));
    assert_eq!(status, 200);
    assert!(html.contains("<td class=\"slice\">plc.aud.a</td>") && html.contains("alice@test"), "{html}");
    let (status, form) = http_get(&out.netns, "10.77.0.1:8880", "/");
    assert!(status == 200 && form.contains("<form id=\"query\""), "{form}");
    // The same question asked as a person would: a real browser outside fills the form.
    {
        let browser = Browser::start(&out.netns);
        browser.goto("http://10.77.0.1:8880/");
        browser.type_into("#src", &format!("10.77.0.1:{port}"));
        browser.type_into("#dst", "10.77.0.2:8081");
        browser.type_into("#from", &format!("{}", t0 as i64));
        browser.click("#ask");
        browser.wait_for("#answer");
        assert!(browser.url().contains("/query?src=10.77.0.1%3A"), "the form was sent: {}", browser.url());
        assert_eq!(browser.text("tr.flow td.slice"), "plc.aud.a");
        assert_eq!(browser.text("tr.flow td.users"), "alice@test");
        let answer = browser.text("#answer");
        assert!(answer.contains(&format!("10.77.0.1:{port}")), "the port the outside saw: {answer}");
        // A port of no VM's block: the page says so.
        browser.goto("http://10.77.0.1:8880/");
        browser.type_into("#src", "10.77.0.1:1");
        browser.click("#ask");
        browser.wait_for("#answer");
        assert!(browser.text("#answer").starts_with("No flow matches"), "{}", browser.text("#answer"));
    }
    // Metrics: A's bandwidth class counted at least what it sent (3 datagrams of 142
    // bytes on the wire), under its slice.
    let (status, metrics) = http_get(&out.netns, "10.77.0.1:8880", "/metrics");
    assert_eq!(status, 200);
    let up = metrics
        .lines()
        .find_map(|l| l.strip_prefix("plab_vm_bytes_total{slice=\"plc.aud.a\",vm=\"plc_aud_a\",direction=\"up\"} "))
        .unwrap_or_else(|| panic!("no bytes for A:\n{metrics}"));
    assert!(up.parse::<u64>().unwrap() >= 3 * 142, "{metrics}");
    assert!(
        metrics.contains(
            "plab_vm_ceil_bits_per_second{slice=\"plc.aud.b\",vm=\"plc_aud_b\",direction=\"down\"} 100000000"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("plab_audit_captured_packets_total{interface=\"pv1\"}"), "{metrics}");

    // Bad queries: 400 with the field and the reason; the service goes on.
    for (q, says) in [
        ("/api/flows?dst=10.77.0.2", "src: missing"),
        ("/api/flows?src=10.77.0.1:99999", "src: \\\"99999\\\" is not a port"),
        ("/api/flows?src=10.77.0.1&from=yesterday", "from:"),
        ("/query?src=1.2.3", "src:"),
    ] {
        let (status, body) = http_get(&out.netns, "10.77.0.1:8880", q);
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body.contains(says), "{q}: {body}");
    }

    // What the service was counting when it stopped is stored, and stored flows outlive
    // it: B sends, the service stops at once (before the idle timeout), starts again.
    let t1 = now() - 1.0;
    sh_in(&b_ns, "echo stop-flush | socat -u - UDP:10.77.0.2:8082");
    std::thread::sleep(Duration::from_millis(500));
    audit.take().unwrap().stop();
    audit = Some(Audit::start(&node));
    let path_b = format!("/api/flows?src=10.77.0.1&dst=10.77.0.2:8082&from={t1}");
    let answer = ask_until(&out.netns, &path_b, &node, |v| v["flows"].as_array().is_some_and(|f| !f.is_empty()));
    assert_eq!(answer["flows"][0]["meta"]["slice"], "plc.aud.b", "{answer}");
    ask_until(&out.netns, &path, &node, |v| v["flows"].as_array().is_some_and(|f| f.len() == 1));

    // B is destroyed while it sends: its interface vanishes mid-capture, what was counted
    // is kept, and A is still captured afterwards.
    std::thread::sleep(Duration::from_secs(3));
    let t2 = now() - 1.0;
    let sender = spawn_in(&b_ns, "while true; do echo going; sleep 0.1; done | socat -u - UDP:10.77.0.2:8082");
    std::thread::sleep(Duration::from_secs(1));
    c.call_value("DestroyVM", json!([b])).unwrap();
    drop(sender);
    let path_b = format!("/api/flows?src=10.77.0.1&dst=10.77.0.2:8082&from={t2}");
    let answer = ask_until(&out.netns, &path_b, &node, |v| v["flows"].as_array().is_some_and(|f| !f.is_empty()));
    assert!(answer["flows"][0]["packets"].as_u64().unwrap() >= 5, "{answer}");
    let t3 = now() - 1.0;
    sh_in(&a_ns, "echo after | socat -u - UDP:10.77.0.2:8082");
    let path_a = format!("/api/flows?src=10.77.0.1&dst=10.77.0.2:8082&from={t3}");
    ask_until(&out.netns, &path_a, &node, |v| {
        v["flows"].as_array().is_some_and(|f| f.iter().any(|f| f["meta"]["slice"] == "plc.aud.a"))
    });
    drop(servers);
    drop(audit);

    // The collector got A's flow: the 5-tuple on A's interface, exact counts, valid times
    // and the node's public address as the post-NAT source.
    let mut nfcapd = nfcapd;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(nfcapd.0.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    assert!(nfcapd.0.wait().unwrap().success(), "nfcapd failed");
    let o =
        Command::new("nfdump").env("TZ", "UTC").arg("-R").arg(&ipfix_dir).args(["-o", "json", "-N"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "nfdump: {}{text}", String::from_utf8_lossy(&o.stderr));
    let records: Vec<Value> = serde_json::from_str(&text).unwrap();
    let a_flow = records
        .iter()
        .find(|r| r["dst_port"] == 8081 && r["src4_addr"] == "10.213.0.2")
        .unwrap_or_else(|| panic!("A's flow is not at the collector: {text}"));
    assert_eq!((a_flow["proto"].as_u64(), a_flow["src_port"].as_u64()), (Some(17), f["sport"].as_u64()), "{a_flow}");
    assert_eq!((a_flow["in_packets"].as_u64(), a_flow["in_bytes"].as_u64()), (Some(3), Some(384)), "{a_flow}");
    assert_eq!(a_flow["src4_xlt_ip"], "10.77.0.1", "{a_flow}");
    // nfdump prints times in its zone (UTC here), to the millisecond: those the node stored.
    let utc = |ms: i64| {
        let format = time::format_description::parse_borrowed::<2>(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]",
        )
        .unwrap();
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap().format(&format).unwrap()
    };
    assert_eq!(a_flow["first"], utc(f["first_ms"].as_i64().unwrap()), "{a_flow}");
    assert_eq!(a_flow["last"], utc(f["last_ms"].as_i64().unwrap()), "{a_flow}");
    assert!(records.iter().any(|r| r["dst_port"] == 8082), "B's flows too: {text}");
}
