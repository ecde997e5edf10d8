//! VM types (section 4.2): operating system, VMM and machine architecture.

/// A VM type this project knows. The name is the specification's `os-vmm-arch` triple.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
    serde::Serialize,
    serde::Deserialize,
)]
#[strum(serialize_all = "kebab-case")]
#[serde(rename_all = "kebab-case")]
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
    pub const ALL: &'static [VmType] = <VmType as strum::VariantArray>::VARIANTS;

    /// The type's name as written in RSpecs.
    pub fn name(self) -> &'static str {
        self.into()
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
        s.parse().ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(VmType::LinuxVserverX86.name(), "linux-vserver-x86");
        assert_eq!(VmType::LinuxKvmX86.to_string(), "linux-kvm-x86");
        for t in VmType::ALL {
            assert_eq!(VmType::parse(t.name()), Some(*t));
            assert_eq!(serde_json::to_value(t).unwrap(), serde_json::json!(t.name()));
        }
        assert_eq!(VmType::parse("linux-vserver"), None);
        assert_eq!(VmType::parse("Linux-Kvm-X86"), None);
    }
}
