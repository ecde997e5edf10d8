//! `plab sa` and `plab ma` against a real `plab-authority serve`, as a user types them:
//! arguments read as each parameter needs them (numbers for numeric attributes, JSON
//! strings, objects and lists), errors that name the parameter. Needs no root.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use plab_tests::bin;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Authority {
    child: Child,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Authority {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn authority() -> Authority {
    let dir = tempfile::tempdir().unwrap();
    let (child, _) = plab_tests::spawn_authority(dir.path(), None);
    let a = Authority { child, config: dir.path().join("operator/plab.toml"), _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.plab(&["sa", "get-orgs"]).0 {
        assert!(Instant::now() < deadline, "plab-authority did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    a
}

impl Authority {
    fn plab(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(bin("plab")).env("PLAB_AUTHORITY_CONFIG", &self.config).args(args).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.plab(args);
        assert!(ok, "plab {}: {out}", args.join(" "));
        out
    }
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

#[test]
fn arguments_are_read_as_each_parameter_needs() {
    let a = authority();
    a.ok(&["sa", "add-org", r#"{"name": "princeton", "authority": "plc.princeton"}"#]);
    a.ok(&["sa", "create-slice", "plc.princeton.codeen"]);
    // A number for a numeric attribute, as a user types it, and as a JSON string.
    a.ok(&["sa", "set-slice-attr", "plc.princeton.codeen", "mem_limit", "512"]);
    a.ok(&["sa", "set-slice-attr", "plc.princeton.codeen", "disk_quota", r#""2.5""#]);
    a.ok(&["sa", "set-slice-attr", "plc.princeton.codeen", "cpu_share", "3"]);
    // Text that looks like JSON is still text where text is wanted.
    a.ok(&["sa", "set-slice-attr", "plc.princeton.codeen", "bootscript", "true"]);
    let s = &a.json(&["sa", "get-slices"])[0];
    let rspec = vm_types::RSpec::from_xml(s["rspec"].as_str().unwrap()).unwrap();
    assert_eq!(rspec.resources.mem_limit.to_string(), "512");
    assert_eq!(rspec.resources.disk_quota.to_string(), "2.5");
    assert_eq!(rspec.resources.cpu_share.to_string(), "3");
    assert_eq!(rspec.slice().unwrap().bootscript.as_deref(), Some("true"));
    // Package versions that look like numbers.
    a.ok(&["ma", "set-package", "plab-nm", "2"]);
    // Lists and objects.
    a.ok(&["ma", "add-site", r#"{"org": "princeton", "name": "pcs"}"#]);
    let node = a.json(&["ma", "add-node", r#"{"site": "pcs", "hostname": "n1.test", "ip": "127.0.0.1"}"#])["node_id"]
        .as_i64()
        .unwrap();
    a.ok(&["sa", "add-slice-node", "plc.princeton.codeen", &format!("[{node}]")]);
    assert_eq!(a.json(&["sa", "get-slices"])[0]["nodes"], serde_json::json!([node]));
    // Errors name the parameter, before anything is sent.
    let (ok, out) = a.plab(&["sa", "set-slice-attr", "plc.princeton.codeen", "mem_limit", "lots"]);
    assert!(!ok && out.contains("value: mem_limit"), "{out}");
    let (ok, out) = a.plab(&["sa", "add-slice-node", "plc.princeton.codeen", "three"]);
    assert!(!ok && out.contains("nodes:"), "{out}");
    let (ok, out) = a.plab(&["sa", "add-org", r#"{"name": "x"}"#]);
    assert!(!ok && out.contains("org.authority: missing"), "{out}");
    let (ok, out) = a.plab(&["sa", "create-slice", "plc.princeton.a", "extra"]);
    assert!(!ok && out.contains("at most 1"), "{out}");
}
