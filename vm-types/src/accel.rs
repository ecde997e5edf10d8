//! Which accelerator a hypervisor VM type gets on this host: KVM when it can really run a
//! stock guest kernel, QEMU's TCG otherwise.
//!
//! "Does /dev/kvm exist" is the wrong question. On some nested-virtualization hosts
//! `/dev/kvm` is served by `kvm_pvm` (pagetable-based virtual machines): it opens, reports
//! the usual capabilities and even runs a tiny real-mode guest, but it only runs
//! PVM-enabled guest kernels, and a stock kernel hangs during boot. So the probe asks:
//!
//! 1. Which vendor module backs `/dev/kvm`? `kvm_intel` or `kvm_amd` can run stock
//!    guests; `kvm_pvm` alone cannot.
//! 2. Does a guest actually run? A real-mode guest writes a byte to an I/O port and halts;
//!    the probe checks both exits (it runs in a thread and gives up after a timeout).

use std::path::Path;
use std::time::Duration;

/// The accelerator chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accelerator {
    /// KVM runs stock guests here.
    Kvm,
    /// QEMU's TCG, with the reason KVM was not used.
    Tcg(String),
}

impl Accelerator {
    /// `kvm` or `tcg`, as the node reports it.
    pub fn name(&self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg(_) => "tcg",
        }
    }
}

/// What the probe found out about the host, separated from the decision so that the
/// decision is unit-tested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `/dev/kvm` opened and reported API version 12.
    pub kvm_opens: Result<(), String>,
    /// Loaded vendor modules among kvm_intel, kvm_amd, kvm_pvm.
    pub vendor_modules: Vec<String>,
    /// The real-mode test guest's result.
    pub guest_ran: Result<(), String>,
}

/// Decides from the facts.
pub fn decide(f: &HostFacts) -> Accelerator {
    if let Err(e) = &f.kvm_opens {
        return Accelerator::Tcg(format!("/dev/kvm is not usable ({e})"));
    }
    let stock_capable = f.vendor_modules.iter().any(|m| m == "kvm_intel" || m == "kvm_amd");
    if !stock_capable {
        if f.vendor_modules.iter().any(|m| m == "kvm_pvm") {
            return Accelerator::Tcg(
                "/dev/kvm is PVM (kvm_pvm): it runs only PVM-enabled guest kernels and stock guests hang, so guests run under TCG".into(),
            );
        }
        return Accelerator::Tcg(format!(
            "no KVM vendor module that runs stock guests is loaded (found: {:?})",
            f.vendor_modules
        ));
    }
    match &f.guest_ran {
        Ok(()) => Accelerator::Kvm,
        Err(e) => Accelerator::Tcg(format!("KVM did not run a test guest ({e})")),
    }
}

/// Looks at this host (takes at most `timeout` for the test guest).
pub fn probe(timeout: Duration) -> HostFacts {
    let vendor_modules = ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .iter()
        .filter(|m| Path::new("/sys/module").join(m).exists())
        .map(|m| m.to_string())
        .collect();
    let kvm_opens = match kvm_ioctls::Kvm::new() {
        Ok(k) if k.get_api_version() == 12 => Ok(()),
        Ok(k) => Err(format!("API version {}", k.get_api_version())),
        Err(e) => Err(e.to_string()),
    };
    let guest_ran = if kvm_opens.is_ok() {
        let (tx, rx) = std::sync::mpsc::channel();
        // A guest that never exits would block this thread in KVM_RUN; it is left behind
        // (detached) and the probe reports the timeout.
        std::thread::spawn(move || {
            let _ = tx.send(run_test_guest());
        });
        rx.recv_timeout(timeout).unwrap_or_else(|_| Err(format!("no exit within {} ms", timeout.as_millis())))
    } else {
        Err("skipped".into())
    };
    HostFacts { kvm_opens, vendor_modules, guest_ran }
}

/// `mov al, 0x42; out 0x10, al; hlt` in real mode at 0x1000.
fn run_test_guest() -> Result<(), String> {
    use kvm_ioctls::{Kvm, VcpuExit};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
    const BASE: GuestAddress = GuestAddress(0x1000);
    const SIZE: usize = 0x1000;
    // Declared before the VM, so dropped after it: the guest never outlives its memory.
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(BASE, SIZE)]).map_err(|e| format!("guest memory: {e}"))?;
    mem.write_slice(&[0xb0u8, 0x42, 0xe6, 0x10, 0xf4], BASE).map_err(|e| format!("guest memory: {e}"))?;
    let host = mem.get_host_address(BASE).map_err(|e| format!("guest memory: {e}"))?;
    let kvm = Kvm::new().map_err(|e| e.to_string())?;
    let vm = kvm.create_vm().map_err(|e| format!("create_vm: {e}"))?;
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: BASE.0,
        memory_size: SIZE as u64,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: the region describes `mem`'s one mapping, SIZE bytes at `host`, which is
    // dropped only after `vm` (declared earlier, dropped later); if the guest never exits
    // this thread never returns and the mapping is never unmapped.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("set_user_memory_region: {e}"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("create_vcpu: {e}"))?;
    let mut sregs = vcpu.get_sregs().map_err(|e| e.to_string())?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(|e| e.to_string())?;
    let mut regs = vcpu.get_regs().map_err(|e| e.to_string())?;
    regs.rip = BASE.0;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(|e| e.to_string())?;
    let mut wrote = false;
    for _ in 0..4 {
        match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::IoOut(0x10, [0x42]) => wrote = true,
            VcpuExit::Hlt if wrote => return Ok(()),
            other => return Err(format!("unexpected exit {other:?}")),
        }
    }
    Err("the guest did not halt".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn facts(modules: &[&str], ran: bool) -> HostFacts {
        HostFacts {
            kvm_opens: Ok(()),
            vendor_modules: modules.iter().map(|s| s.to_string()).collect(),
            guest_ran: if ran { Ok(()) } else { Err("timeout".into()) },
        }
    }

    #[test]
    fn pvm_means_tcg_even_when_the_test_guest_runs() {
        let a = decide(&facts(&["kvm_pvm"], true));
        assert!(matches!(&a, Accelerator::Tcg(r) if r.contains("PVM")), "{a:?}");
        assert_eq!(decide(&facts(&["kvm_intel"], true)), Accelerator::Kvm);
        assert_eq!(decide(&facts(&["kvm_amd", "kvm_pvm"], true)), Accelerator::Kvm);
        assert!(matches!(decide(&facts(&["kvm_intel"], false)), Accelerator::Tcg(_)));
        assert!(matches!(decide(&facts(&[], true)), Accelerator::Tcg(_)));
        let no_dev = HostFacts { kvm_opens: Err("No such file".into()), ..facts(&["kvm_intel"], true) };
        assert!(matches!(decide(&no_dev), Accelerator::Tcg(r) if r.contains("/dev/kvm")));
    }

    #[test]
    fn probing_this_host_agrees_with_its_modules() {
        // Whatever this host is, the probe must reach a verdict quickly and, where a
        // stock-capable module is loaded, the test guest must have run.
        let f = probe(Duration::from_secs(5));
        let a = decide(&f);
        let stock = f.vendor_modules.iter().any(|m| m == "kvm_intel" || m == "kvm_amd");
        if Path::new("/dev/kvm").exists() && stock {
            assert_eq!(f.guest_ran, Ok(()), "{f:?}");
        }
        if f.vendor_modules == ["kvm_pvm"] {
            assert!(matches!(a, Accelerator::Tcg(_)), "{f:?}");
        }
    }
}
