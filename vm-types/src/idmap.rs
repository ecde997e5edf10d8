//! Idmapped mounts (Linux 5.12+): a clone of a directory tree whose files appear to have
//! owners shifted into a VM's host uid/gid range, so that a container VM whose root is an
//! unprivileged host uid sees the shared read-only image, and the files the node manager
//! writes for it, as its own root's. Nothing on disk changes.
//!
//! `mount_setattr(2)` with `MOUNT_ATTR_IDMAP` needs a user namespace carrying the mapping:
//! one is made for the call (a `sleep` child that unshares it, whose maps the node manager
//! writes) and let go once the mount holds it. Written by hand on `libc::syscall`: neither
//! `nix` nor `rustix` wraps `mount_setattr`, and runc 1.1 cannot idmap the root filesystem.

#[cfg(feature = "netlink")]
pub use syscalls::{bind, user_namespace};

/// A contiguous mapping: ids `0..count` of a tree (or of a VM) are host ids
/// `host_base..host_base + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// The host id that id 0 maps to.
    pub host_base: u32,
    /// How many ids are mapped.
    pub count: u32,
}

/// Host uids (and gids) each VM's user namespace maps: 0..65536 in the VM.
pub const VM_IDS: u32 = 65536;

/// VM number `index`'s host uid/gid range under `uid_base` ([`VM_IDS`] ids from
/// `uid_base + index * VM_IDS`), if it fits below the last uid.
pub fn host_ids(uid_base: u32, index: u32) -> Option<IdMap> {
    index
        .checked_mul(VM_IDS)
        .and_then(|o| o.checked_add(uid_base))
        .filter(|b| b.checked_add(VM_IDS).is_some())
        .map(|host_base| IdMap { host_base, count: VM_IDS })
}

impl IdMap {
    /// The line `/proc/PID/uid_map` (and `gid_map`) takes.
    pub fn proc_line(&self) -> String {
        format!("0 {} {}\n", self.host_base, self.count)
    }

    /// The host id of the VM's `id`, if mapped.
    pub fn host_id(&self, id: u32) -> Option<u32> {
        (id < self.count).then(|| self.host_base.checked_add(id)).flatten()
    }
}

/// The system calls (with the `netlink` feature, which brings `libc` and `nix`).
#[cfg(feature = "netlink")]
mod syscalls {
    use super::IdMap;
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::{Command, Stdio};

    // Constants of <linux/mount.h>: part of the kernel's ABI.
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

    /// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }

    fn cstr(p: &Path) -> io::Result<CString> {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: NUL in path", p.display())))
    }

    /// A user namespace with `map` for uids and gids, as a file descriptor.
    pub fn user_namespace(map: IdMap) -> io::Result<OwnedFd> {
        let mut cmd = Command::new("sleep");
        cmd.arg("60").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: runs in the forked child before exec; unshare(2) is async-signal-safe and
        // the closure touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(io::Error::from));
        }
        // `spawn` returns once the child has exec'd, so its namespace exists by then.
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let made = (|| {
            std::fs::write(format!("/proc/{pid}/uid_map"), map.proc_line())?;
            std::fs::write(format!("/proc/{pid}/gid_map"), map.proc_line())?;
            std::fs::File::open(format!("/proc/{pid}/ns/user")).map(OwnedFd::from)
        })();
        let _ = child.kill();
        let _ = child.wait();
        made
    }

    /// For each `(src, dst)`, mounts at `dst` (an existing directory) a read-only clone of
    /// the tree at `src` whose files' owners appear through `map` (owner n of the tree
    /// appears as `map.host_base + n`).
    /// Read-only: through it, host root could otherwise delete the tree (an `rm -rf` of a VM's
    /// directory would empty the shared image).
    pub fn bind(pairs: &[(&Path, &Path)], map: IdMap) -> io::Result<()> {
        // One user namespace serves every mount of the call.
        let userns = user_namespace(map)?;
        for (src, dst) in pairs {
            bind_one(src, dst, &userns)?;
        }
        Ok(())
    }

    fn bind_one(src: &Path, dst: &Path, userns: &OwnedFd) -> io::Result<()> {
        let (src, dst) = (cstr(src)?, cstr(dst)?);
        let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
        // SAFETY: `src` is a NUL-terminated string that outlives the call; the result is a
        // new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, src.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::other("open_tree returned no descriptor"))?;
        // SAFETY: `fd` was just returned by open_tree and nothing else owns it.
        let tree = unsafe { OwnedFd::from_raw_fd(fd) };
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.as_raw_fd() as u64,
        };
        // SAFETY: `attr` and the empty path live for the call, and the size passed is
        // `attr`'s.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the empty path and `dst` are NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                dst.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_stay_inside_the_range() {
        let m = IdMap { host_base: 1 << 30, count: 65536 };
        assert_eq!(m.proc_line(), "0 1073741824 65536\n");
        assert_eq!(m.host_id(0), Some(1 << 30));
        assert_eq!(m.host_id(65535), Some((1 << 30) + 65535));
        assert_eq!(m.host_id(65536), None);
        assert_eq!(IdMap { host_base: u32::MAX, count: 2 }.host_id(1), None);
    }
}
