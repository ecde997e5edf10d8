//! Guest images: the shared, read-only disk every VM disk of a libvirt backend is an
//! overlay on, and how it boots.

use crate::backend::BackendError;
use crate::host::{s, Cmd, Host};
use std::fs;
use std::path::{Path, PathBuf};

/// The format (`qcow2` or `raw`) and guest-visible size of a disk image: a qcow2 file
/// starts with `QFI\xfb` and holds its size big-endian at byte 24; anything else is taken
/// as raw, whose size is the file's.
pub fn disk_virtual_size(path: &Path) -> std::io::Result<(&'static str, u64)> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut head = [0u8; 32];
    let n = f.read(&mut head)?;
    if n == 32 && &head[..4] == b"QFI\xfb" {
        let mut size = [0u8; 8];
        size.copy_from_slice(&head[24..32]);
        return Ok(("qcow2", u64::from_be_bytes(size)));
    }
    Ok(("raw", f.metadata()?.len()))
}

/// How a guest image boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestBoot {
    /// The project's image: the kernel and initramfs are given to QEMU (or Xen) directly.
    Direct {
        /// Guest kernel.
        kernel: PathBuf,
        /// Guest initramfs.
        initrd: PathBuf,
    },
    /// A stock cloud image: the firmware boots the disk's own boot loader.
    Firmware,
}

/// The shared, read-only image every VM disk of one backend is an overlay on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The disk image.
    pub disk: PathBuf,
    /// Its format as qemu-img names it: `qcow2` or `raw`.
    pub format: &'static str,
    /// The disk size the guest sees, in bytes: the smallest possible `disk_quota`.
    pub virtual_size: u64,
    /// How it boots.
    pub boot: GuestBoot,
}

impl GuestImage {
    /// The project's image built by `images/build-guest.sh` in directory `dir`.
    pub fn project(dir: &Path) -> GuestImage {
        let disk = dir.join("base.qcow2");
        GuestImage {
            virtual_size: disk_virtual_size(&disk).map(|(_, n)| n).unwrap_or(0),
            disk,
            format: "qcow2",
            boot: GuestBoot::Direct { kernel: dir.join("vmlinuz"), initrd: dir.join("initrd.img") },
        }
    }

    /// The image at `path`: a directory is the project's image (it must have been built
    /// completely); a file is a stock cloud image, qcow2 or raw (told apart by the qcow2
    /// magic), that boots by itself and runs cloud-init.
    pub fn open(path: &Path) -> Result<GuestImage, BackendError> {
        let meta = fs::metadata(path).map_err(|e| {
            BackendError::Unavailable(format!(
                "guest_image {}: {e}: build the project's image with `make image`, or point guest_image at a cloud image file",
                path.display()
            ))
        })?;
        if meta.is_dir() {
            // Checked before reading the disk's size, so a half-built image is named as such.
            for f in [".plab-image", "base.qcow2", "vmlinuz", "initrd.img"].map(|f| path.join(f)) {
                if !f.exists() {
                    return Err(BackendError::Unavailable(format!(
                        "guest_image {}: {} is missing: build the image with `make image`",
                        path.display(),
                        f.display()
                    )));
                }
            }
            return Ok(GuestImage::project(path));
        }
        let (format, virtual_size) = disk_virtual_size(path).map_err(|e| {
            BackendError::Unavailable(format!("guest_image {}: not a readable disk image: {e}", path.display()))
        })?;
        Ok(GuestImage { disk: path.to_owned(), format, virtual_size, boot: GuestBoot::Firmware })
    }

    /// Makes `disk`, a qcow2 overlay on this image whose virtual size is `bytes`. The file
    /// is made readable by root only before qemu-img writes it (libvirt hands it to QEMU's
    /// user when the domain starts).
    pub fn create_overlay(&self, host: &dyn Host, disk: &Path, bytes: u64) -> Result<(), BackendError> {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(disk)
            .map_err(|e| BackendError::Io(disk.display().to_string(), e))?;
        let cmd = Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", self.format, "-b"])
            .arg(&self.disk)
            .arg(disk)
            .arg(bytes.to_string());
        host.run(&cmd).map(|_| ())
    }
}

/// Disk sizes in whole 512-byte sectors, rounded down: qemu-img would round up, giving
/// the VM more than its quota.
pub fn sector_floor(bytes: u64) -> u64 {
    bytes - bytes % 512
}

/// Grows a stopped VM's disk to `bytes`.
pub fn grow(host: &dyn Host, disk: &Path, bytes: u64) -> Result<(), BackendError> {
    host.run(&Cmd::new("qemu-img").args(["resize", "-q", &s(disk), &sector_floor(bytes).to_string()])).map(|_| ())
}

/// `XEN_ELFNOTE_ENTRY`: a kernel's PV entry point (Linux has it with `CONFIG_XEN_PV`).
const XEN_ELFNOTE_ENTRY: u32 = 1;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: a kernel's PVH entry point (`CONFIG_XEN_PVH`).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Whether Xen can boot `kernel` as a PV guest (linux-xen-x86 boots the project's image
/// PV): a 64-bit ELF with Xen's PV entry note. Only the ELF and program headers and the
/// note segments are read. A bzImage (Xen unpacks it itself) is not looked into: its
/// kernel is compressed, and Xen names a missing entry note when it loads it.
pub fn xen_pv_kernel(kernel: &Path) -> Result<(), BackendError> {
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader};
    let bad = |why: String| {
        BackendError::Unavailable(format!(
            "guest kernel {}: {why}: linux-xen-x86 boots guests PV and needs a 64-bit kernel built with \
             CONFIG_XEN_PV (Debian's linux-image-amd64 is; `make image` builds the project's image with it)",
            kernel.display()
        ))
    };
    use std::io::Read;
    let mut file = fs::File::open(kernel).map_err(|e| bad(e.to_string()))?;
    let mut head = Vec::with_capacity(0x206);
    (&mut file).take(0x206).read_to_end(&mut head).map_err(|e| bad(e.to_string()))?;
    let data = object::ReadCache::new(file);
    if head.len() == 0x206 && &head[0x202..0x206] == b"HdrS" {
        tracing::info!(kernel = %kernel.display(), "a bzImage: Xen checks its PV entry when it unpacks it");
        return Ok(());
    }
    if !head.starts_with(b"\x7fELF") {
        return Err(bad("not a kernel (neither an ELF nor a bzImage)".into()));
    }
    let elf =
        ElfFile64::<object::Endianness, _>::parse(&data).map_err(|e| bad(format!("not a 64-bit ELF kernel ({e})")))?;
    let endian = elf.endian();
    if elf.elf_header().e_machine(endian) != object::elf::EM_X86_64 {
        return Err(bad("not an x86-64 kernel".into()));
    }
    // The types of the `Xen` notes, as Xen's loader reads them: from the note segments,
    // else from the note sections.
    let xen_types = |all: &mut dyn Iterator<
        Item = object::read::elf::NoteIterator<'_, object::elf::FileHeader64<object::Endianness>>,
    >| {
        let mut types = Vec::new();
        for mut notes in all {
            while let Ok(Some(note)) = notes.next() {
                if note.name() == b"Xen" {
                    types.push(note.n_type(endian));
                }
            }
        }
        types
    };
    let mut types =
        xen_types(&mut elf.elf_program_headers().iter().filter_map(|s| s.notes(endian, &data).ok().flatten()));
    if types.is_empty() {
        types = xen_types(&mut elf.elf_section_table().iter().filter_map(|s| s.notes(endian, &data).ok().flatten()));
    }
    if types.contains(&XEN_ELFNOTE_ENTRY) {
        Ok(())
    } else if types.contains(&XEN_ELFNOTE_PHYS32_ENTRY) {
        Err(bad("it has only a PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY), no PV one".into()))
    } else {
        Err(bad("it has no Xen entry point (no \"Xen\" ELF note): it was built without Xen support".into()))
    }
}

/// Writes a minimal x86-64 ELF at `path` whose one note segment holds a `Xen` note of
/// each of `xen_notes` (note types): what [`xen_pv_kernel`] reads of a kernel.
#[cfg(any(test, feature = "test-util"))]
pub fn write_test_kernel(path: &Path, xen_notes: &[u32]) -> std::io::Result<()> {
    let mut notes = Vec::new();
    for t in xen_notes {
        for v in [4u32, 8, *t] {
            notes.extend(v.to_le_bytes());
        }
        notes.extend(b"Xen\0");
        notes.extend([0u8; 8]);
    }
    let mut f = Vec::new();
    f.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend(2u16.to_le_bytes()); // ET_EXEC
    f.extend(62u16.to_le_bytes()); // EM_X86_64
    f.extend(1u32.to_le_bytes());
    f.extend(0u64.to_le_bytes()); // entry
    f.extend(64u64.to_le_bytes()); // program headers
    f.extend(0u64.to_le_bytes()); // no section headers
    f.extend(0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend(v.to_le_bytes());
    }
    f.extend(4u32.to_le_bytes()); // PT_NOTE
    f.extend(4u32.to_le_bytes());
    for v in [120u64, 0, 0, notes.len() as u64, notes.len() as u64, 4] {
        f.extend(v.to_le_bytes());
    }
    f.extend(notes);
    fs::write(path, f)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_a_kernel_with_xens_pv_entry_boots_as_a_pv_guest() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinuz");
        write_test_kernel(&k, &[6, XEN_ELFNOTE_ENTRY, XEN_ELFNOTE_PHYS32_ENTRY]).unwrap();
        xen_pv_kernel(&k).unwrap();
        write_test_kernel(&k, &[6, XEN_ELFNOTE_PHYS32_ENTRY]).unwrap();
        let e = xen_pv_kernel(&k).unwrap_err().to_string();
        assert!(e.contains("only a PVH entry") && e.contains("CONFIG_XEN_PV"), "{e}");
        write_test_kernel(&k, &[]).unwrap();
        let e = xen_pv_kernel(&k).unwrap_err().to_string();
        assert!(e.contains("no Xen entry point") && e.contains(&k.display().to_string()), "{e}");
        fs::write(&k, b"#!/bin/sh\n").unwrap();
        assert!(xen_pv_kernel(&k).unwrap_err().to_string().contains("not a kernel"));
        let e = xen_pv_kernel(&dir.path().join("none")).unwrap_err().to_string();
        assert!(e.contains("No such file"), "{e}");
        // A bzImage: Xen unpacks it and checks it itself.
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        fs::write(&k, bz).unwrap();
        xen_pv_kernel(&k).unwrap();
        // A 32-bit ELF.
        let mut elf32 = vec![0u8; 0x300];
        elf32[..6].copy_from_slice(b"\x7fELF\x01\x01");
        fs::write(&k, elf32).unwrap();
        assert!(xen_pv_kernel(&k).unwrap_err().to_string().contains("not a 64-bit ELF"));
    }
}
