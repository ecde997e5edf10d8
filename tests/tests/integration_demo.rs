//! `make demo` is the README's first command: run it (`plab-demo`) against the binaries of
//! this build and check that every stage did what it says.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use plab_tests::{bin, prerequisites};
use std::process::Command;

#[test]
fn integration_demo_runs_the_whole_testbed() {
    prerequisites();
    let out = Command::new(bin("plab-demo")).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "demo failed:\n{text}");
    for expect in [
        "node 3: id 3",
        "StartSlice to every sliver running",
        "logged in as plc_princeton_demo on plc-princeton-demo",
        "slice \"plc.princeton.demo\", users [\"alice\"], 1 packet(s)",
        "node 1, slice \"plc.princeton.demo\", responsible [\"alice <alice@tb.test>\"], 1 packet(s)",
        "plab scs redeem https://",
        "VM plc_princeton_tkt running",
        "already redeemed on this node (a replay)",
        "blacklisted plc.princeton.demo",
        "node 3 reports: \"failed\"",
        "node 1: VMs now [\"plc.princeton.tkt\"]",
        "nothing left behind",
    ] {
        assert!(text.contains(expect), "demo output lacks {expect:?}:\n{text}");
    }
}
