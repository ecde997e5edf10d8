//! `make demo` is the README's first command: run its script against the binaries of
//! this build and check that every stage did what it says.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use plab_tests::{bin, prerequisites};
use std::process::Command;

#[test]
fn integration_demo_script_runs_the_whole_testbed() {
    prerequisites();
    let bindir = bin("plab-nm").parent().unwrap().to_path_buf();
    for b in ["plab", "plab-authority", "plab-boot"] {
        bin(b);
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("bash").arg(repo.join("examples/demo.sh")).arg(&bindir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "demo failed:\n{text}");
    for expect in [
        "logged in as plc_demo on plc-demo",
        "bootscript: hello from plc-demo",
        "No space left on device",
        "installed, then booted",
        "issued a certificate for service:plc.demo@",
        "valid ticket for plc.demo.web from plc",
        "removed the VM, the node manager, namespace plab-demo",
    ] {
        assert!(text.contains(expect), "demo output lacks {expect:?}:\n{text}");
    }
}
