//! Reading a VM's console log from a position, across a rotation: positions count every
//! byte the console has printed since the VM was made, so a reader that follows the log
//! (`plab nm log --follow`) asks for "from where I stopped" and gets what came after, or
//! learns how much it missed.

use crate::backend::BackendError;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// A part of a console log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleChunk {
    /// The bytes from the position asked for (or the oldest still kept), at most the
    /// number asked for.
    pub bytes: Vec<u8>,
    /// The position after them: where to ask from next time.
    pub next: u64,
    /// Bytes between the position asked for and the oldest still kept (rotated away).
    pub skipped: u64,
}

/// A console log kept as `current` (being written) and, optionally, `old` (its last
/// rotated part), `rotated` bytes having gone before `current` began: the bytes from
/// position `from`, at most `max`.
pub fn chunk(
    current: &Path,
    old: Option<&Path>,
    rotated: u64,
    from: u64,
    max: u64,
) -> Result<ConsoleChunk, BackendError> {
    let len = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let (cur_len, old_len) = (len(current), old.map(len).unwrap_or(0));
    let end = rotated + cur_len;
    let oldest = rotated.saturating_sub(old_len);
    let start = from.clamp(oldest, end);
    let skipped = start - from.min(start);
    let mut bytes = Vec::new();
    let mut pos = start;
    if let Some(old) = old.filter(|_| pos < rotated) {
        let want = (rotated - pos).min(max);
        bytes.extend(read_at(old, pos - oldest, want)?);
        pos += bytes.len() as u64;
    }
    let room = max.saturating_sub(bytes.len() as u64);
    if pos >= rotated && room > 0 && pos < end {
        let got = read_at(current, pos - rotated, room)?;
        pos += got.len() as u64;
        bytes.extend(got);
    }
    Ok(ConsoleChunk { bytes, next: pos, skipped })
}

/// The last `max` bytes of the file at `path` (nothing when there is no file).
pub fn tail(path: &Path, max: u64) -> Result<Vec<u8>, BackendError> {
    let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    read_at(path, len.saturating_sub(max), max)
}

fn read_at(path: &Path, offset: u64, max: u64) -> Result<Vec<u8>, BackendError> {
    let io = |e| BackendError::Io(path.display().to_string(), e);
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).map_err(io)?;
    Ok(buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn positions_run_on_across_a_rotation_and_what_was_rotated_away_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (cur, old) = (dir.path().join("c"), dir.path().join("c.1"));
        // 10 bytes printed, rotated: the last 4 ("6789") kept; then "abc".
        fs::write(&old, "6789").unwrap();
        fs::write(&cur, "abc").unwrap();
        let c = |from, max| chunk(&cur, Some(&old), 10, from, max).unwrap();
        let text = |c: &ConsoleChunk| String::from_utf8(c.bytes.clone()).unwrap();
        let all = c(0, 100);
        assert_eq!((text(&all), all.next, all.skipped), ("6789abc".into(), 13, 6));
        let mid = c(8, 3);
        assert_eq!((text(&mid), mid.next, mid.skipped), ("89a".into(), 11, 0));
        let rest = c(mid.next, 100);
        assert_eq!((text(&rest), rest.next), ("bc".into(), 13));
        let none = c(13, 100);
        assert_eq!((none.bytes.len(), none.next), (0, 13));
        assert_eq!(c(99, 100).next, 13, "past the end: the end");
        // Never rotated: the current file alone.
        let plain = chunk(&cur, None, 0, 1, 100).unwrap();
        assert_eq!((text(&plain), plain.next, plain.skipped), ("bc".into(), 3, 0));
    }
}
