//! Files the node writes: created with their final mode (never widened afterwards), synced
//! and renamed into place, so a reader sees the old content or the new, never a part, and
//! a secret is never readable by others, not even for a moment.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `content` to `path` atomically and durably (synced before the rename), the
/// file created with `mode` (for example 0o600 for a secret).
pub fn write_private(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    write(path, content, mode, true)
}

/// Like [`write_private`] but not synced: for files made again from the node manager's
/// records whenever they are needed (a VM's configuration, rewritten at every start),
/// where a crash may lose the new content but never leaves a part of it.
pub fn replace(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    write(path, content, mode, false)
}

fn write(path: &Path, content: &[u8], mode: u32, sync: bool) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut f = tempfile::Builder::new()
        .prefix(".plab-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    f.write_all(content)?;
    if sync {
        f.as_file().sync_all()?;
    }
    f.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Creates directory `path` (and missing parents) with `mode`, or sets an existing one's.
pub fn private_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().recursive(true).mode(mode).create(path) {
        Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn written_with_the_mode_and_replaced_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        write_private(&p, b"one", 0o600).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        write_private(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temporary file left behind");
        private_dir(&d.path().join("a/b"), 0o700).unwrap();
        assert_eq!(std::fs::metadata(d.path().join("a/b")).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
