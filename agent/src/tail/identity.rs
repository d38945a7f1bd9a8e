//! Who a file is: device and inode, plus a fingerprint of its first bytes.
//!
//! The inode alone is not enough: after a delete the file system hands the
//! number to the next file, and `log_truncate_on_rotation` rewrites a file
//! in place. The first bytes of a PostgreSQL log start with a timestamp and
//! a pid, so a hash of them tells a new file from the old one. The hash is
//! FNV-1a, written out here because it is persisted in checkpoints and must
//! not change with a dependency's version.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bytes of a file's head that the fingerprint covers once it has them.
pub const FINGERPRINT_BYTES: usize = 256;

/// Heads shorter than this never identify a copy: a few bytes of a
/// PostgreSQL log are a timestamp that many files share, and a false match
/// would skip a new file's data. 64 bytes reach past timestamp and pid.
pub const MIN_COPY_FINGERPRINT: u32 = 64;

/// Device and inode: the identity a file keeps across renames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

impl FileKey {
    pub fn of(meta: &Metadata) -> FileKey {
        FileKey { dev: meta.dev(), ino: meta.ino() }
    }
}

/// A hash of the first `len` bytes of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub hash: u64,
    pub len: u32,
}

impl Fingerprint {
    /// The fingerprint of `head` (at most [`FINGERPRINT_BYTES`] of it).
    pub fn of(head: &[u8]) -> Fingerprint {
        let head = &head[..head.len().min(FINGERPRINT_BYTES)];
        Fingerprint { hash: fnv1a(head), len: head.len() as u32 }
    }

    /// Whether `head` (a file's first bytes) starts with the bytes this
    /// fingerprint was taken of.
    pub fn matches(&self, head: &[u8]) -> bool {
        let n = self.len as usize;
        head.len() >= n && fnv1a(&head[..n]) == self.hash
    }

    /// Whether this fingerprint is long enough to recognize a copy by.
    pub fn identifies_copies(&self) -> bool {
        self.len >= MIN_COPY_FINGERPRINT
    }

    /// Whether a file starting with these bytes can be taken for a copy of
    /// a file read to `offset`: the head is long enough, or it covers all
    /// that was read (a new file that begins with the whole content of
    /// another, byte for byte, timestamps and pids included, is a copy).
    pub fn identifies_copy_read_to(&self, offset: u64) -> bool {
        self.len > 0 && (self.identifies_copies() || u64::from(self.len) >= offset)
    }

    /// Whether it could still grow (the file was shorter than the window).
    pub fn is_partial(&self) -> bool {
        (self.len as usize) < FINGERPRINT_BYTES
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.hash)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Reads up to [`FINGERPRINT_BYTES`] from the start of `file`, without
/// moving its cursor (the tailer reads by position anyway).
pub fn read_head(file: &File) -> io::Result<Vec<u8>> {
    let mut head = vec![0u8; FINGERPRINT_BYTES];
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(n);
    Ok(head)
}

// O_NONBLOCK, so that a FIFO swapped in between our stat and our open
// cannot block the tailer's thread (opening a FIFO for reading waits for
// a writer); it changes nothing for regular files. The value differs by
// platform, and std does not export it; 0 (no flag) where unknown leaves
// the stat before the open as the only guard.
const O_NONBLOCK: i32 = if cfg!(target_os = "linux") {
    if cfg!(any(target_arch = "mips", target_arch = "mips64")) {
        0x80
    } else if cfg!(target_arch = "sparc64") {
        0x4000
    } else {
        0o4000
    }
} else if cfg!(any(target_os = "macos", target_os = "freebsd", target_os = "netbsd", target_os = "openbsd")) {
    0x4
} else {
    0
};

/// What an open of a would-be log file found.
pub enum Opened {
    File {
        file: File,
        meta: Metadata,
    },
    /// Not a regular file (directory, FIFO, socket, device).
    NotAFile(&'static str),
}

/// Opens `path` for reading if it is a regular file.
pub fn open_regular(path: &Path) -> io::Result<Opened> {
    let file = OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Ok(Opened::NotAFile(kind_name(&meta)));
    }
    Ok(Opened::File { file, meta })
}

/// A word for what a non-regular file is, for messages.
pub fn kind_name(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// Where an open file lives now, if the system can say (Linux: through
/// `/proc/self/fd`). Used for files renamed out of the watched names, so a
/// checkpoint can still find them after a restart; `None` once deleted.
pub fn current_path(file: &File) -> Option<PathBuf> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    use std::os::fd::AsRawFd;
    let p = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    if p.as_os_str().as_encoded_bytes().ends_with(b" (deleted)") { None } else { Some(p) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_matches_longer_heads_with_the_same_start() {
        let fp = Fingerprint::of(b"2026-11-24 09:00:00.001 UTC [10] LOG:  x\n");
        assert!(fp.matches(b"2026-11-24 09:00:00.001 UTC [10] LOG:  x\nmore"));
        assert!(!fp.matches(b"2026-11-24 09:00:00.002 UTC [10] LOG:  x\n"));
        assert!(!fp.matches(b"2026"), "a shorter head cannot match");
        assert!(fp.is_partial() && !fp.identifies_copies());
        let full = Fingerprint::of(&[b'a'; 1000]);
        assert_eq!(full.len as usize, FINGERPRINT_BYTES);
        assert!(!full.is_partial() && full.identifies_copies());
        assert!(fp.identifies_copy_read_to(fp.len.into()) && !fp.identifies_copy_read_to(u64::from(fp.len) + 1));
        assert!(!Fingerprint::of(b"").identifies_copy_read_to(0));
    }

    #[test]
    fn fnv_is_the_published_function() {
        // Test vectors of FNV-1a 64: the checkpoint format depends on them.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
