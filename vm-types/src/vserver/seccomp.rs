//! The container VMs' seccomp filter: Podman's default profile (Debian ships it in
//! `golang-github-containers-common` as `/usr/share/containers/seccomp.json`), turned from
//! its Docker-style form (rules that apply only with some capabilities or on some
//! architectures) into an OCI filter for the VM's capabilities on x86, then tightened.
//!
//! Podman leaves to the user namespace and the capability set what this project must refuse
//! outright while a VM's root is still host uid 0 (issue 9): the kernel keyrings (shared
//! by every container of a host uid), new user namespaces (the usual first step of a kernel
//! exploit), io_uring and bpf.

use oci_spec::runtime::{Capability, LinuxSeccomp};
use serde_json::{json, Value};
use std::collections::HashSet;

/// Where Debian's package puts Podman's profile.
pub const PODMAN_PROFILE: &str = "/usr/share/containers/seccomp.json";

/// Refused with EPERM whatever the profile allows.
pub const DENIED: &[&str] =
    &["keyctl", "add_key", "request_key", "unshare", "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf"];

/// The namespace flags of `clone` (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
/// NEWNET): `clone` is allowed only with none of them.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7e02_0000;

/// ENOSYS: `clone3` answers it, so the C library falls back to `clone`, whose flags the
/// filter can read (`clone3` passes them in memory, out of its reach).
const ENOSYS: u64 = 38;

/// The OCI seccomp filter for a VM whose root holds `caps`, from Podman's profile text.
pub fn filter(podman_profile: &str, caps: &[Capability]) -> Result<LinuxSeccomp, String> {
    let p: Value =
        serde_json::from_str(podman_profile).map_err(|e| format!("{PODMAN_PROFILE}: not a seccomp profile: {e}"))?;
    let caps: HashSet<String> =
        caps.iter().filter_map(|c| serde_json::to_value(c).ok().and_then(|v| v.as_str().map(str::to_owned))).collect();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    };
    let x86 = |arches: &[String]| arches.iter().any(|a| a == "amd64" || a == "x86_64" || a == "x32" || a == "386");
    let mut rules = Vec::new();
    for r in p["syscalls"].as_array().ok_or_else(|| format!("{PODMAN_PROFILE}: no syscalls list"))? {
        let (inc, exc) = (&r["includes"], &r["excludes"]);
        let (inc_caps, inc_arches) = (strings(&inc["caps"]), strings(&inc["arches"]));
        let (exc_caps, exc_arches) = (strings(&exc["caps"]), strings(&exc["arches"]));
        let applies = inc_caps.iter().all(|c| caps.contains(c))
            && (inc_arches.is_empty() || x86(&inc_arches))
            && !exc_caps.iter().any(|c| caps.contains(c))
            && !x86(&exc_arches);
        if !applies {
            continue;
        }
        let names: Vec<String> = strings(&r["names"])
            .into_iter()
            .filter(|n| !DENIED.contains(&n.as_str()) && n != "clone" && n != "clone3")
            .collect();
        if names.is_empty() {
            continue;
        }
        let mut rule = json!({"names": names, "action": r["action"]});
        if let Some(e) = r.get("errnoRet").filter(|e| !e.is_null()) {
            rule["errnoRet"] = e.clone();
        }
        if let Some(args) = r.get("args").filter(|a| a.as_array().is_some_and(|a| !a.is_empty())) {
            rule["args"] = args.clone();
        }
        rules.push(rule);
    }
    rules.push(json!({
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
    }));
    rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    rules.push(json!({"names": DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}));
    let oci = json!({
        "defaultAction": p["defaultAction"].as_str().unwrap_or("SCMP_ACT_ERRNO"),
        "defaultErrnoRet": p["defaultErrnoRet"].as_u64().unwrap_or(1),
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules,
    });
    serde_json::from_value(oci).map_err(|e| format!("{PODMAN_PROFILE}: cannot be turned into an OCI filter: {e}"))
}

/// Reads Podman's profile and makes the filter, or says what to install.
pub fn load(caps: &[Capability]) -> Result<LinuxSeccomp, String> {
    let text = std::fs::read_to_string(PODMAN_PROFILE).map_err(|e| {
        format!(
            "{PODMAN_PROFILE}: {e}; container VMs need Podman's seccomp profile: apt-get install golang-github-containers-common"
        )
    })?;
    filter(&text, caps)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"{
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
        "syscalls": [
            {"names": ["read", "keyctl", "unshare", "clone", "clone3", "io_uring_setup"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "excludes": {"caps": ["CAP_CHOWN"]}}
        ]}"#;

    fn rules(f: &LinuxSeccomp) -> Value {
        serde_json::to_value(f).unwrap()["syscalls"].clone()
    }

    #[test]
    fn capabilities_and_architectures_choose_the_rules_and_the_denied_calls_are_refused() {
        let f = filter(PROFILE, &[Capability::Chown]).unwrap();
        let text = serde_json::to_string(&f).unwrap();
        let r = rules(&f);
        assert_eq!(r[0]["names"], json!(["read"]), "denied names leave the allow rule: {r}");
        // bpf needs CAP_SYS_ADMIN, ptrace is for s390x, mount's rule is excluded by CAP_CHOWN.
        assert!(!text.contains("ptrace") && !text.contains("mount"), "{text}");
        assert!(text.contains("personality"), "an argument rule is kept: {text}");
        let clone = r.as_array().unwrap().iter().find(|x| x["names"] == json!(["clone"])).unwrap();
        assert_eq!(clone["args"][0]["value"], CLONE_NAMESPACE_FLAGS);
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        let denied =
            r.as_array().unwrap().iter().find(|x| x["names"].as_array().unwrap().len() == DENIED.len()).unwrap();
        assert_eq!(denied["action"], "SCMP_ACT_ERRNO");
        assert_eq!(denied["errnoRet"], 1);
        for n in ["keyctl", "unshare", "io_uring_setup", "bpf"] {
            assert!(denied["names"].as_array().unwrap().contains(&json!(n)), "{n}");
        }
        let clone3 = r.as_array().unwrap().iter().find(|x| x["names"] == json!(["clone3"])).unwrap();
        assert_eq!(clone3["errnoRet"], 38);
        assert!(filter("{}", &[]).unwrap_err().contains("no syscalls list"));
        assert!(filter("nonsense", &[]).unwrap_err().contains("not a seccomp profile"));
    }

    #[test]
    fn debians_podman_profile_converts() {
        // Present wherever container VMs run (ci/setup.sh installs it).
        let f = load(&[Capability::Chown, Capability::Setuid]).unwrap();
        assert!(rules(&f).as_array().unwrap().len() > 5);
    }
}
