//! The checkpoint file: for every file the tailer knows, its identity and
//! the offset up to which the caller declared the data durable.
//!
//! Versioned JSON, replaced atomically: the new content goes to a temporary
//! file in the same directory, which is fsynced and renamed over the old
//! one, and then the directory is fsynced so the rename itself survives a
//! power loss. A reader therefore sees the old checkpoint or the new one,
//! never a mix; a failed write leaves the old one in place.

use super::identity::{FileKey, Fingerprint};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

/// The checkpoint's file name inside the state directory.
pub const FILE_NAME: &str = "tail-checkpoint.json";

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub version: u32,
    /// The watches that have started (`dir:<dir>/<pattern>`, `file:<path>`):
    /// a watch not listed is on its first start, even if the directory was
    /// empty when the others started.
    #[serde(default)]
    pub sources: Vec<String>,
    pub files: Vec<Entry>,
}

/// One file. `path` is where the file was last seen (informational, and a
/// place to look for a file renamed out of the watched names); `dev`,
/// `inode` and the fingerprint identify it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub path: String,
    pub dev: u64,
    pub inode: u64,
    /// FNV-1a 64 of the first `fingerprint_bytes` bytes, 16 hex digits.
    pub fingerprint: String,
    pub fingerprint_bytes: u32,
    /// Committed offset: bytes before it need not be read again.
    pub offset: u64,
}

impl Entry {
    pub fn key(&self) -> FileKey {
        FileKey { dev: self.dev, ino: self.inode }
    }

    pub fn fingerprint(&self) -> Option<Fingerprint> {
        let hash = u64::from_str_radix(&self.fingerprint, 16).ok()?;
        Some(Fingerprint { hash, len: self.fingerprint_bytes })
    }
}

/// Why a checkpoint could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a querywatch tail checkpoint: {0}")]
    Format(String),
    #[error("checkpoint version {0} is not supported by this agent (it reads version {VERSION})")]
    Version(u32),
}

/// Reads the checkpoint at `path`; `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> Result<Option<Checkpoint>, LoadError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // The version first, so a newer format is reported as such rather than
    // as a field this version does not know.
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned = serde_json::from_slice(&bytes).map_err(|e| LoadError::Format(e.to_string()))?;
    if v.version != VERSION {
        return Err(LoadError::Version(v.version));
    }
    let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| LoadError::Format(e.to_string()))?;
    if let Some(bad) = cp.files.iter().find(|e| e.fingerprint().is_none()) {
        return Err(LoadError::Format(format!("bad fingerprint {:?} for {}", bad.fingerprint, bad.path)));
    }
    Ok(Some(cp))
}

/// The temporary file a write goes through (fixed, so a crashed write's
/// leftover is overwritten by the next one instead of piling up).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Replaces the file at `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

fn write_atomic_with(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: the old checkpoint is intact either way.
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(offset: u64) -> Checkpoint {
        Checkpoint {
            version: VERSION,
            sources: vec!["dir:/var/log/postgresql/postgresql-*".into()],
            files: vec![Entry {
                path: "/var/log/postgresql/postgresql-2026-11-24.log".into(),
                dev: 2049,
                inode: 1234,
                fingerprint: Fingerprint::of(b"head").hex(),
                fingerprint_bytes: 4,
                offset,
            }],
        }
    }

    #[test]
    fn round_trips_and_keeps_the_documented_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert!(load(&path).unwrap().is_none());
        write_atomic(&path, &serde_json::to_vec(&sample(42)).unwrap()).unwrap();
        assert_eq!(load(&path).unwrap().unwrap(), sample(42));
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        for field in ["path", "dev", "inode", "fingerprint", "offset"] {
            assert!(v["files"][0].get(field).is_some(), "{field}");
        }
    }

    #[test]
    fn a_failed_write_leaves_the_old_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let old = serde_json::to_vec(&sample(1)).unwrap();
        write_atomic(&path, &old).unwrap();
        // Fails half way through the new content, as a full disk would.
        let new = serde_json::to_vec(&sample(2)).unwrap();
        let err = write_atomic_with(&path, |f| {
            f.write_all(&new[..new.len() / 2])?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(fs::read(&path).unwrap(), old);
        assert!(!temp_path(&path).exists(), "the half-written temporary file is removed");
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        fs::write(&path, br#"{"version":2,"files":[],"extra":true}"#).unwrap();
        assert!(matches!(load(&path), Err(LoadError::Version(2))));
        fs::write(&path, br#"{"version":1,"files":[{"path":"x""#).unwrap();
        assert!(matches!(load(&path), Err(LoadError::Format(_))));
    }
}
