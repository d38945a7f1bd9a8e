//! The bounded on-disk queue of batches the collector could not take
//! (`state_dir/spool/`): while the collector is unreachable, what the agent
//! has read is kept here rather than in memory, and writing a batch here
//! counts as durable for the caller's checkpoint.
//!
//! One file per batch, named by a sequence number so that the directory
//! listing is the queue order: `00000000000000000042.otlp`. A file is
//! written under a `.tmp` name, fsynced, renamed, and the directory fsynced,
//! so after a crash a file is either whole or absent (leftover `.tmp` files
//! are deleted on open). Format, little-endian:
//!
//! ```text
//! "QWSP"  u16 version (1)  u16 reserved (0)  u32 CRC-32 of everything after it
//! u32 length, metrics request (protobuf)     u32 length, logs request (protobuf)
//! ```
//!
//! Payloads are the uncompressed protobuf: the spool is read back at most a
//! few times, and keeping it plain keeps a corrupt file diagnosable. A part
//! already acknowledged is stored empty (zero length), so draining never
//! sends it twice.
//!
//! The total size stays within `max_bytes`: to make room the oldest files
//! are deleted, and counted. A file that cannot be read back (bad checksum,
//! unknown version, undecodable protobuf) is moved to `spool/corrupt/`
//! (the newest few are kept there for a post-mortem) and counted; it never
//! stops the queue.
//!
//! Disk work runs on tokio's blocking pool: the agent's runtime is
//! single-threaded, and an fsync must not stall the log tailer.

use super::counters::ExportHealth;
use flate2::Crc;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 4] = b"QWSP";
const VERSION: u16 = 1;
/// Magic, version, reserved, CRC.
const HEADER_LEN: usize = 12;
const SUFFIX: &str = ".otlp";
const TMP_SUFFIX: &str = ".tmp";
/// Set-aside files kept for inspection; older ones are deleted.
const KEEP_CORRUPT: usize = 8;

/// Why a spool file cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum Corrupt {
    #[error("shorter than its header")]
    Short,
    #[error("not a spool file (bad magic)")]
    Magic,
    #[error("spool format version {0}, this agent reads {VERSION}")]
    Version(u16),
    #[error("checksum mismatch")]
    Checksum,
    #[error("section lengths do not match the file size")]
    Length,
    #[error("undecodable protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("unreadable: {0}")]
    Io(#[from] io::Error),
}

/// One batch's bytes as stored: both requests, either possibly empty.
pub fn encode_file(metrics: &ExportMetricsServiceRequest, logs: &ExportLogsServiceRequest) -> Vec<u8> {
    let (m, l) = (metrics.encode_to_vec(), logs.encode_to_vec());
    let mut out = Vec::with_capacity(HEADER_LEN + 8 + m.len() + l.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled in below
    for part in [&m, &l] {
        // A request over 4 GiB cannot happen (the aggregator caps shapes);
        // saturating keeps that impossible case a detectable length error.
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(part);
    }
    let mut crc = Crc::new();
    crc.update(&out[HEADER_LEN..]);
    out[8..12].copy_from_slice(&crc.sum().to_le_bytes());
    out
}

/// The inverse of [`encode_file`], strict about everything.
pub fn decode_file(bytes: &[u8]) -> Result<(ExportMetricsServiceRequest, ExportLogsServiceRequest), Corrupt> {
    let header = bytes.get(..HEADER_LEN).ok_or(Corrupt::Short)?;
    if &header[..4] != MAGIC {
        return Err(Corrupt::Magic);
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if version != VERSION {
        return Err(Corrupt::Version(version));
    }
    let stored_crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let body = &bytes[HEADER_LEN..];
    let mut crc = Crc::new();
    crc.update(body);
    if crc.sum() != stored_crc {
        return Err(Corrupt::Checksum);
    }
    let (m, rest) = section(body)?;
    let (l, rest) = section(rest)?;
    if !rest.is_empty() {
        return Err(Corrupt::Length);
    }
    Ok((ExportMetricsServiceRequest::decode(m)?, ExportLogsServiceRequest::decode(l)?))
}

fn section(b: &[u8]) -> Result<(&[u8], &[u8]), Corrupt> {
    let len = b.get(..4).ok_or(Corrupt::Length)?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let rest = &b[4..];
    if rest.len() < len {
        return Err(Corrupt::Length);
    }
    Ok(rest.split_at(len))
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}{SUFFIX}")
}

/// What happened to a batch offered to the spool.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Stored {
        bytes: u64,
    },
    /// Larger than the whole bound: not written.
    TooLarge {
        bytes: u64,
    },
}

/// The oldest spooled batch, as read back.
pub(crate) enum Head {
    Batch {
        seq: u64,
        metrics: ExportMetricsServiceRequest,
        logs: ExportLogsServiceRequest,
    },
    Corrupt {
        seq: u64,
        why: Corrupt,
    },
    /// Gone from disk behind our back.
    Missing {
        seq: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    seq: u64,
    bytes: u64,
}

pub(crate) struct Spool {
    dir: PathBuf,
    entries: VecDeque<Entry>,
    next_seq: u64,
    total: u64,
    max_bytes: u64,
    health: Arc<ExportHealth>,
}

/// Runs disk work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(io::Error::other(e)))
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dir.join(name))?;
        // The rename is durable only once the directory is.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Spool {
    /// Opens (creating) `dir` and picks up the batches a previous run left.
    /// Synchronous: called once at construction.
    pub(crate) fn open(dir: PathBuf, max_bytes: u64, health: Arc<ExportHealth>) -> io::Result<Spool> {
        fs::create_dir_all(&dir)?;
        let mut entries = Vec::new();
        for item in fs::read_dir(&dir)? {
            let item = item?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TMP_SUFFIX) {
                // A write that never reached its rename: not acknowledged
                // to anyone as durable, so nothing is lost by deleting it.
                let _ = fs::remove_file(item.path());
            } else if let Some(seq) = name.strip_suffix(SUFFIX).and_then(|s| s.parse::<u64>().ok()) {
                entries.push(Entry { seq, bytes: item.metadata()?.len() });
            }
        }
        entries.sort_unstable_by_key(|e| e.seq);
        let mut spool = Spool {
            dir,
            next_seq: entries.last().map_or(0, |e| e.seq + 1),
            total: entries.iter().map(|e| e.bytes).sum(),
            entries: entries.into(),
            max_bytes,
            health,
        };
        // The bound may have been lowered since the files were written.
        spool.make_room(0);
        spool.publish();
        Ok(spool)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(file_name(seq))
    }

    fn publish(&self) {
        ExportHealth::set(&self.health.spool_files, self.entries.len() as u64);
        ExportHealth::set(&self.health.spool_bytes, self.total);
    }

    /// Deletes the oldest files until `incoming` more bytes fit.
    fn make_room(&mut self, incoming: u64) {
        while self.total + incoming > self.max_bytes {
            let Some(old) = self.entries.pop_front() else { break };
            self.total -= old.bytes;
            if remove(&self.path(old.seq)).is_err() {
                // Still counted as dropped: it is out of the queue. If the
                // file survives, the next start picks it up again.
                ExportHealth::add(&self.health.spool_errors, 1);
            }
            ExportHealth::add(&self.health.spool_dropped_batches, 1);
            ExportHealth::add(&self.health.spool_dropped_bytes, old.bytes);
        }
    }

    /// Writes a batch at the end of the queue, durably.
    pub(crate) async fn push(
        &mut self,
        metrics: &ExportMetricsServiceRequest,
        logs: &ExportLogsServiceRequest,
    ) -> io::Result<Pushed> {
        let bytes = encode_file(metrics, logs);
        let size = bytes.len() as u64;
        if size > self.max_bytes {
            ExportHealth::add(&self.health.spool_dropped_batches, 1);
            ExportHealth::add(&self.health.spool_dropped_bytes, size);
            return Ok(Pushed::TooLarge { bytes: size });
        }
        self.make_room(size);
        self.publish();
        let seq = self.next_seq;
        let (dir, name) = (self.dir.clone(), file_name(seq));
        blocking(move || write_atomic(&dir, &name, &bytes)).await?;
        self.next_seq += 1;
        self.entries.push_back(Entry { seq, bytes: size });
        self.total += size;
        self.publish();
        ExportHealth::add(&self.health.spooled_batches, 1);
        ExportHealth::add(&self.health.spooled_bytes, size);
        Ok(Pushed::Stored { bytes: size })
    }

    /// Reads the oldest batch back.
    pub(crate) async fn head(&self) -> Option<Head> {
        let seq = self.entries.front()?.seq;
        let path = self.path(seq);
        Some(match blocking(move || fs::read(path)).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Head::Missing { seq },
            Err(e) => Head::Corrupt { seq, why: Corrupt::Io(e) },
            Ok(bytes) => match decode_file(&bytes) {
                Ok((metrics, logs)) => Head::Batch { seq, metrics, logs },
                Err(why) => Head::Corrupt { seq, why },
            },
        })
    }

    fn forget(&mut self, seq: u64) -> Option<Entry> {
        let i = self.entries.iter().position(|e| e.seq == seq)?;
        let e = self.entries.remove(i)?;
        self.total -= e.bytes;
        self.publish();
        Some(e)
    }

    /// Deletes a batch the collector acknowledged (or refused for good).
    pub(crate) async fn remove(&mut self, seq: u64) {
        if self.forget(seq).is_some() {
            let path = self.path(seq);
            if blocking(move || remove(&path)).await.is_err() {
                ExportHealth::add(&self.health.spool_errors, 1);
            }
        }
    }

    /// Drops a file that vanished from disk out of the queue.
    pub(crate) fn forget_missing(&mut self, seq: u64) {
        if self.forget(seq).is_some() {
            ExportHealth::add(&self.health.spool_errors, 1);
        }
    }

    /// Rewrites a batch after part of it was acknowledged, so the part is
    /// not sent again.
    pub(crate) async fn replace(
        &mut self,
        seq: u64,
        metrics: &ExportMetricsServiceRequest,
        logs: &ExportLogsServiceRequest,
    ) -> io::Result<()> {
        let bytes = encode_file(metrics, logs);
        let size = bytes.len() as u64;
        let (dir, name) = (self.dir.clone(), file_name(seq));
        blocking(move || write_atomic(&dir, &name, &bytes)).await?;
        if let Some(e) = self.entries.iter_mut().find(|e| e.seq == seq) {
            self.total = self.total - e.bytes + size;
            e.bytes = size;
        }
        self.publish();
        Ok(())
    }

    /// Moves an unreadable file to `corrupt/` (or deletes it, if even that
    /// fails) and counts it.
    pub(crate) async fn set_aside(&mut self, seq: u64) {
        if self.forget(seq).is_none() {
            return;
        }
        ExportHealth::add(&self.health.spool_corrupt_files, 1);
        let (dir, name) = (self.dir.clone(), file_name(seq));
        let moved = blocking(move || {
            let aside = dir.join("corrupt");
            fs::create_dir_all(&aside)?;
            let moved = fs::rename(dir.join(&name), aside.join(&name));
            if moved.is_err() {
                remove(&dir.join(&name))?;
            }
            // Keep the newest few (names sort by sequence number); failing
            // to prune only leaves an old file around.
            if let Ok(listing) = fs::read_dir(&aside) {
                let mut kept: Vec<_> = listing.filter_map(|e| Some(e.ok()?.path())).collect();
                kept.sort();
                for old in kept.iter().rev().skip(KEEP_CORRUPT) {
                    let _ = remove(old);
                }
            }
            moved
        })
        .await;
        if moved.is_err() {
            ExportHealth::add(&self.health.spool_errors, 1);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
    use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;

    fn batch(n: usize) -> (ExportMetricsServiceRequest, ExportLogsServiceRequest) {
        (
            ExportMetricsServiceRequest { resource_metrics: vec![ResourceMetrics::default(); n] },
            ExportLogsServiceRequest { resource_logs: vec![ResourceLogs::default(); n + 1] },
        )
    }

    #[test]
    fn file_format_round_trips_and_rejects_damage() {
        let (m, l) = batch(3);
        let bytes = encode_file(&m, &l);
        assert_eq!(&bytes[..4], b"QWSP");
        assert_eq!(decode_file(&bytes).unwrap(), (m.clone(), l.clone()));
        let empty = encode_file(&ExportMetricsServiceRequest::default(), &ExportLogsServiceRequest::default());
        assert_eq!(empty.len(), HEADER_LEN + 8);
        assert!(decode_file(&empty).is_ok());

        assert!(matches!(decode_file(&bytes[..5]), Err(Corrupt::Short)));
        assert!(matches!(decode_file(&bytes[..bytes.len() - 1]), Err(Corrupt::Checksum)));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(decode_file(&flipped), Err(Corrupt::Checksum)));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(matches!(decode_file(&magic), Err(Corrupt::Magic)));
        let mut version = bytes.clone();
        version[4] = 9;
        assert!(matches!(decode_file(&version), Err(Corrupt::Version(9))));
    }

    #[tokio::test]
    async fn bounded_fifo_that_survives_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let health = Arc::new(ExportHealth::default());
        let (m, l) = batch(1);
        let one = encode_file(&m, &l).len() as u64;
        let mut spool = Spool::open(dir.clone(), one * 3, health.clone()).unwrap();
        for _ in 0..5 {
            assert_eq!(spool.push(&m, &l).await.unwrap(), Pushed::Stored { bytes: one });
        }
        let c = health.snapshot();
        assert_eq!((c.spool_files, c.spool_bytes), (3, one * 3));
        assert_eq!((c.spool_dropped_batches, c.spool_dropped_bytes), (2, one * 2));
        let Some(Head::Batch { seq, .. }) = spool.head().await else { panic!("no head") };
        assert_eq!(seq, 2, "the oldest two were dropped");

        // A leftover temp file from a crash is removed; the rest is picked up.
        std::fs::write(dir.join("00000000000000000099.otlp.tmp"), b"partial").unwrap();
        drop(spool);
        let health = Arc::new(ExportHealth::default());
        let mut spool = Spool::open(dir.clone(), one * 3, health.clone()).unwrap();
        assert!(!dir.join("00000000000000000099.otlp.tmp").exists());
        assert_eq!(health.snapshot().spool_files, 3);
        spool.remove(2).await;
        spool.push(&m, &l).await.unwrap();
        assert!(dir.join("00000000000000000005.otlp").exists(), "sequence continues after a restart");

        // Reopening with a smaller bound drops the oldest, counted.
        drop(spool);
        let health = Arc::new(ExportHealth::default());
        let spool = Spool::open(dir.clone(), one, health.clone()).unwrap();
        let c = health.snapshot();
        assert_eq!((c.spool_files, c.spool_dropped_batches), (1, 2));
        let Some(Head::Batch { seq: 5, .. }) = spool.head().await else { panic!("newest kept") };

        // Too large for the whole bound.
        let mut tiny = Spool::open(tmp.path().join("tiny"), 4, health.clone()).unwrap();
        assert!(matches!(tiny.push(&m, &l).await.unwrap(), Pushed::TooLarge { .. }));
        assert!(tiny.is_empty());
    }

    #[tokio::test]
    async fn corrupt_files_are_set_aside_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let health = Arc::new(ExportHealth::default());
        let (m, l) = batch(2);
        let mut spool = Spool::open(dir.clone(), 1 << 20, health.clone()).unwrap();
        spool.push(&m, &l).await.unwrap();
        spool.push(&m, &l).await.unwrap();
        let path = dir.join(file_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55; // a flipped byte on disk
        std::fs::write(&path, bytes).unwrap();
        let Some(Head::Corrupt { seq: 0, why }) = spool.head().await else { panic!("corrupt head") };
        assert!(matches!(why, Corrupt::Checksum), "{why}");
        spool.set_aside(0).await;
        assert!(dir.join("corrupt").join(file_name(0)).exists());
        assert_eq!(health.snapshot().spool_corrupt_files, 1);
        assert_eq!(health.snapshot().spool_files, 1);
        let Some(Head::Batch { seq: 1, metrics, .. }) = spool.head().await else { panic!("next is fine") };
        assert_eq!(metrics, m);
    }
}
