//! VM types (section 4.2): operating system, VMM and machine architecture.

use std::fmt;

/// A VM type this project knows. The name is the specification's `os-vmm-arch` triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VmType {
    /// Containers through an OCI runtime (the specification's vserver type).
    LinuxVserverX86,
    /// Full guests under QEMU/KVM through libvirt.
    LinuxKvmX86,
    /// Guests under Xen through libvirt's Xen driver.
    LinuxXenX86,
}

impl VmType {
    /// Every known VM type.
    pub const ALL: [VmType; 3] = [VmType::LinuxVserverX86, VmType::LinuxKvmX86, VmType::LinuxXenX86];

    /// The type's name as written in RSpecs.
    pub fn name(self) -> &'static str {
        match self {
            VmType::LinuxVserverX86 => "linux-vserver-x86",
            VmType::LinuxKvmX86 => "linux-kvm-x86",
            VmType::LinuxXenX86 => "linux-xen-x86",
        }
    }

    /// The RSpec class (XML element) specific to this VM type (`VServerSlice`, ...).
    pub fn slice_class(self) -> &'static str {
        match self {
            VmType::LinuxVserverX86 => "VServerSlice",
            VmType::LinuxKvmX86 => "KvmSlice",
            VmType::LinuxXenX86 => "XenSlice",
        }
    }

    /// Parses a VM type name.
    pub fn parse(s: &str) -> Option<VmType> {
        VmType::ALL.into_iter().find(|t| t.name() == s)
    }
}

impl fmt::Display for VmType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
