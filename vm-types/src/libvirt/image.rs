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
