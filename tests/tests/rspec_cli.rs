//! The published RSpec schema, the examples and the `plab rspec validate` command agree:
//! every example is valid for both, and what plab writes is valid for the schema too.
#![allow(clippy::unwrap_used)] // Test and benchmark code: a failed unwrap is a failed test.

use plab_tests::bin;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples/rspec"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    v.sort();
    assert!(v.len() >= 5, "an example for every class");
    v
}

fn xmllint(file: &Path) -> (bool, String) {
    let out = Command::new("xmllint")
        .args(["--noout", "--relaxng"])
        .arg(root().join("docs/rspec.rng"))
        .arg(file)
        .output()
        .expect("xmllint is missing: apt-get install libxml2-utils (make test installs it)");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn examples_are_valid_for_plab_and_for_the_schema() {
    let out = Command::new(bin("plab")).args(["rspec", "validate"]).args(examples()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in examples() {
        let (ok, why) = xmllint(&f);
        assert!(ok, "{}: {why}", f.display());
        // What plab writes back is schema-valid as well.
        let r = vm_types::RSpec::from_xml(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.xml");
        std::fs::write(&out, r.to_xml()).unwrap();
        let (ok, why) = xmllint(&out);
        assert!(ok, "written form of {}: {why}\n{}", f.display(), r.to_xml());
    }
}

#[test]
fn invalid_files_get_line_and_column_and_a_failing_status() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.xml");
    std::fs::write(&bad, "<PoolRSpec xmlns=\"urn:plab:rspec:1\">\n  <resources mem_limit=\"lots\"/>\n</PoolRSpec>\n")
        .unwrap();
    let out = Command::new(bin("plab")).args(["rspec", "validate"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.xml:2:3: mem_limit:"), "{err}");
    assert!(!xmllint(&bad).0, "the schema rejects it too");
}
