//! IPFIX export against a real collector, Debian's `nfcapd`, read back with `nfdump`: the
//! 5-tuples, byte and packet counts nfdump prints equal the flows exported, first and last
//! times decode to the exact milliseconds, the NAT block arrives, and flows stored while
//! the collector was down arrive once it is up. Needs nfdump (`apt-get install nfdump`).
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use plab_audit::flow::{Flow, FlowKey, TCP, UDP};
use plab_audit::ipfix::Exporter;
use plab_audit::spool::{self, Ipfix};
use plab_audit::store::{FlowRecord, Store, VmMeta};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn flows(base_ms: i64, sport0: u16) -> Vec<FlowRecord> {
    let meta = VmMeta {
        vm: "plc_a".into(),
        slice: "plc.alpha".into(),
        users: vec!["alice@example.org".into()],
        iface: "pv1".into(),
        vm_addr: [10, 213, 0, 2].into(),
        public_addr: Some([192, 0, 2, 10].into()),
        nat_ports: Some((32768, 33023)),
        vm_net: None,
    };
    (0..5u16)
        .map(|i| {
            // Even flows go out through the NAT, odd ones stay on the node's network.
            let dst: Ipv4Addr = if i % 2 == 0 { [198, 51, 100, 7].into() } else { [10, 213, 0, 1].into() };
            let key = FlowKey {
                proto: if i < 3 { UDP } else { TCP },
                src: [10, 213, 0, 2].into(),
                sport: sport0 + i,
                dst,
                dport: 53 + i,
            };
            let f = Flow {
                key,
                first_ms: base_ms + i64::from(i) * 1001,
                last_ms: base_ms + i64::from(i) * 1001 + 2345,
                bytes: 100_000 + u64::from(i) * 7,
                packets: 10 + u64::from(i),
                tcp_flags: if i < 3 { 0 } else { 0x1b },
            };
            let mut r = FlowRecord::new(&f, &meta);
            // The first flow's exact post-NAT port is known (conntrack), the third's is not.
            if i == 0 {
                r.set_post_nat_port(32800);
            }
            r
        })
        .collect()
}

fn ms_text(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[test]
fn nfdump_reads_back_exactly_what_was_exported_including_what_waited_while_the_collector_was_down() {
    for tool in ["nfcapd", "nfdump"] {
        assert!(
            Command::new(tool).arg("-V").output().is_ok(),
            "{tool} is missing: apt-get install nfdump (make test's set-up does)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(Store::open(&dir.path().join("flows.db")).unwrap());
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let collector = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut sink = Ipfix { collector, exporter: Exporter::new(collector, 42).unwrap() };

    // Stored before the sink was configured: not exported (a new collector starts now).
    let base = 1_700_000_000_000 + i64::from(std::process::id() % 1000) * 1000;
    store.lock().unwrap().insert(&flows(base - 100_000, 1000)).unwrap();
    assert_eq!(spool::round(&store, &mut sink).unwrap(), 0);
    // The collector is down: the flows wait.
    let sent = flows(base, 40000);
    store.lock().unwrap().insert(&sent).unwrap();
    let e = spool::round(&store, &mut sink).unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");

    let out = dir.path().join("nfcapd");
    std::fs::create_dir(&out).unwrap();
    let nfcapd = Command::new("nfcapd")
        .args(["-b", "127.0.0.1", "-p", &port.to_string(), "-t", "60", "-w"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until nfcapd binds, a round fails and is tried again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match spool::round(&store, &mut sink) {
            Ok(n) => {
                assert_eq!(n, sent.len());
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "nfcapd never took the flows: {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(spool::round(&store, &mut sink).unwrap(), 0, "each flow is sent once when nothing fails");
    // nfcapd writes its file out when it ends.
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(nfcapd.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let o = nfcapd.wait_with_output().unwrap();
    assert!(o.status.success(), "nfcapd: {}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("nfdump").env("TZ", "UTC").arg("-R").arg(&out).args(["-o", "json", "-N"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "nfdump: {}{text}", String::from_utf8_lossy(&o.stderr));
    let got: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(got.len(), sent.len(), "{text}");
    for f in &sent {
        let r = got
            .iter()
            .find(|r| r["src_port"] == f.sport)
            .unwrap_or_else(|| panic!("flow from port {} missing in {text}", f.sport));
        assert_eq!(r["src4_addr"], f.src.to_string());
        assert_eq!(r["dst4_addr"], f.dst.to_string());
        assert_eq!(r["dst_port"], f.dport);
        assert_eq!(r["proto"], f.proto);
        assert_eq!(r["in_bytes"], f.bytes);
        assert_eq!(r["in_packets"], f.packets);
        assert_eq!(r["first"], ms_text(f.first_ms), "first time: {r}");
        assert_eq!(r["last"], ms_text(f.last_ms), "last time: {r}");
        // Sent out through the NAT: the node's public address travels with the flow.
        let xlt = if f.post_nat_src.is_some() { Value::from("192.0.2.10") } else { Value::Null };
        assert_eq!(r["src4_xlt_ip"], xlt, "{r}");
        // The exact post-NAT port where the node knew it (template 258), and none where
        // it did not (257: the block).
        let port = f.post_nat_port().map_or(Value::Null, |p| Value::from(p.to_string()));
        assert_eq!(r["src_xlt_port"], port, "{r}");
        let flags = if f.proto == TCP { "...AP.SF" } else { "........" };
        assert_eq!(r["tcp_flags"], flags, "{r}");
    }
}
