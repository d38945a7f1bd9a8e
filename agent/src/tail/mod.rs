//! The log tailer: follows PostgreSQL's log files as they are written and
//! rotated, hands their bytes to a consumer (a [`crate::logparse::Parser`])
//! in bounded chunks, and remembers — in a checkpoint — how far the data
//! has been made durable downstream.
//!
//! # Contract
//!
//! [`Tailer::poll`] discovers files, notices rotation, truncation and
//! deletion, and reads what is new, calling the consumer with [`Chunk`]s.
//! The consumer returns how many leading bytes of the chunk it consumed
//! (the parser contract); the rest is kept and handed back, prefixed to the
//! next read, so an entry PostgreSQL is still writing is never split or
//! lost. Each file *generation* (a [`FileId`]: a file, or a file's content
//! after a truncation) gets its chunks in order, and a generation that got
//! any chunk ends with exactly one chunk with `eof: true`, after which the
//! consumer may drop its per-file state (parser, format).
//!
//! Reading and committing are separate. [`Tailer::watermark`] captures how
//! far every file has been *consumed*, cheaply, at the moment the caller
//! cuts a batch; [`Tailer::commit`] declares such a watermark durable (the
//! collector acknowledged the batch, or the spool stored it), and
//! [`Tailer::checkpoint`] writes only committed offsets. A restart resumes
//! at the committed offsets: data read but never acknowledged is read
//! again, acknowledged data is not.
//!
//! ```no_run
//! # use querywatch_agent::tail::{Tailer, TailConfig, Source, Chunk};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = TailConfig::new(
//!     vec![Source::Directory { dir: "/var/log/postgresql".into(), pattern: "postgresql-*.csv".into() }],
//!     "/var/lib/querywatch".into(),
//! );
//! let mut tailer = Tailer::new(config)?;
//! loop {
//!     let status = tailer.poll(&mut |chunk: Chunk<'_>| {
//!         // parsers.entry(chunk.file)...parse(chunk.data, chunk.eof, &mut sink)
//!         chunk.data.len()
//!     });
//!     for w in tailer.take_warnings() {
//!         eprintln!("querywatch: warning: {w}");
//!     }
//!     // At the end of an interval: cut the batch and capture the watermark
//!     // together; once the batch is acknowledged:
//!     let watermark = tailer.watermark();
//!     tailer.commit(&watermark);
//!     tailer.checkpoint()?;
//!     if !status.more {
//!         std::thread::sleep(std::time::Duration::from_millis(250));
//!     }
//! }
//! # }
//! ```
//!
//! # Files and streams
//!
//! A watch is a directory with a file-name glob, or one explicit path.
//! Within a watch, the files of one log destination (`.log`, `.csv`,
//! `.json`) form a *stream*, read one file at a time in the order they were
//! discovered (and, among files discovered together, by modification time,
//! then the checkpoint's order, then name). The stream moves from a file to the next only when the next
//! one has data and the current one has then been read to its end: a
//! writer (PostgreSQL's logging collector, or a server reopening its log
//! after logrotate) switches to the new file before writing to it, so by
//! then the old file is complete. A file rotated away by rename is read
//! through its open handle (and, on Linux, checkpointed under its new
//! name, so a restart finds it even outside the watched names); a deleted
//! file is read to its end and dropped.
//!
//! A file is identified by device and inode plus a fingerprint of its
//! first 256 bytes (and its birth time, where the file system has one), so
//! a reused inode or a file rewritten in place (`log_truncate_on_rotation`,
//! copytruncate) starts again at 0, counted. The copy copytruncate leaves
//! behind is recognized by its head and continues where the original was
//! read to, so lines written between the tailer's last read and the
//! truncation are still read, once.
//!
//! Runtime trouble (permissions, a directory where a file was, I/O errors)
//! never stops the tailer: it is counted in [`TailStats`], reported once
//! through [`Tailer::take_warnings`], and retried on the next poll. Only a
//! bad configuration fails [`Tailer::new`].
//!
//! Shortcuts taken on purpose:
//! - Only the first few files of a stream are held open ahead of their
//!   turn (a backlog can be thousands of files), so a file far back in the
//!   line that is deleted before its turn is counted as vanished, not read
//!   (and were it empty, a new file given its inode at once would take its
//!   place in line, where the birth time does not tell them apart).
//! - A copy is recognized by a head of at least 64 bytes, or one covering
//!   all that was read of the original. A copy outside the watched names
//!   is not looked for: lines written to the original after the last read
//!   are then lost (the truncation is still counted).
//! - A file written to after the stream moved past it (a writer that kept
//!   the old file open) is read again from where it ended, late and counted,
//!   if it still matches the watch; otherwise those writes are not seen.
//! - Unix only (device and inode numbers, positioned reads).

#![cfg(unix)]

mod checkpoint;
mod discover;
mod identity;

pub use checkpoint::{Checkpoint, Entry as CheckpointEntry, FILE_NAME as CHECKPOINT_FILE_NAME};
pub use identity::{FINGERPRINT_BYTES, FileKey, Fingerprint};

use discover::{Problem, Seen, Watch};
use identity::Opened;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// What to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Files in `dir` whose name matches the glob `pattern`
    /// (`postgresql-*.log`, `*.csv`); new ones are picked up as they appear.
    Directory { dir: PathBuf, pattern: String },
    /// One path, followed across rotations of whatever file it names.
    File(PathBuf),
}

/// Where a stream without checkpoint begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// After the last complete line of the newest file: a production agent
    /// should not replay old logs.
    End,
    /// At the start of every file already there, oldest first.
    Beginning,
}

/// The tailer's settings.
#[derive(Debug, Clone)]
pub struct TailConfig {
    pub sources: Vec<Source>,
    /// Directory holding the checkpoint ([`CHECKPOINT_FILE_NAME`]); created
    /// if missing.
    pub state_dir: PathBuf,
    /// Where a first start begins (later starts resume from the checkpoint).
    pub start_at: StartAt,
    /// Bytes read at once.
    pub chunk_bytes: usize,
    /// The consumer's entry cap: a consumer may keep at most this many
    /// unconsumed bytes; beyond it the oldest are dropped and counted.
    pub max_entry_bytes: usize,
    /// Bytes read in one [`Tailer::poll`] at most, so a backlog does not
    /// hold the caller up; [`PollStatus::more`] says there is more.
    pub max_bytes_per_poll: usize,
}

impl TailConfig {
    /// Defaults: start at the end, 256 KiB chunks, the parsers' default
    /// entry cap, 16 MiB per poll.
    pub fn new(sources: Vec<Source>, state_dir: PathBuf) -> TailConfig {
        TailConfig {
            sources,
            state_dir,
            start_at: StartAt::End,
            chunk_bytes: 256 << 10,
            max_entry_bytes: crate::logparse::DEFAULT_ENTRY_CAP,
            max_bytes_per_poll: 16 << 20,
        }
    }
}

/// One file generation: unique within the process, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(u64);

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Process-wide, so a watermark from a dropped tailer can never match a
/// file of its successor.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Bytes handed to the consumer.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub file: FileId,
    /// Where the file was last seen (a rotated file keeps its new name).
    pub path: &'a Path,
    /// File offset of `data[0]`.
    pub offset: u64,
    /// The unconsumed rest of the previous chunk, then new bytes.
    pub data: &'a [u8],
    /// The generation ends here: consume everything (bytes not consumed
    /// are dropped and counted), then forget this file.
    pub eof: bool,
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollStatus {
    /// Bytes read from files.
    pub bytes: u64,
    /// The per-poll budget ran out with data left: poll again soon.
    pub more: bool,
}

/// How far every file had been consumed at one moment. Capture it when the
/// data consumed so far is cut into a batch; commit it once that batch is
/// durable. Commits are monotonic, so committing an older watermark after
/// a newer one changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermark {
    // Only generations with something uncommitted at capture time: usually
    // one or two, whatever the number of files in the directory.
    offsets: Vec<(u64, u64)>,
}

impl Watermark {
    /// Whether it holds nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

/// One file as the tailer sees it (see [`Tailer::files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    pub file: FileId,
    pub path: PathBuf,
    /// Read up to here (what is past `consumed` is kept for the consumer).
    pub read: u64,
    pub consumed: u64,
    pub committed: u64,
    /// As last seen on disk.
    pub size: u64,
    /// Read to its end; kept so it is not read again.
    pub finished: bool,
}

/// The tailer's counters, for the agent's own health metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailStats {
    pub bytes_read: u64,
    /// Files opened for reading.
    pub files_opened: u64,
    /// A stream moved from a file it had read from to the next one.
    pub rotations: u64,
    /// A file started again at 0: shrunk below the read offset, or its
    /// first bytes changed (copytruncate, `log_truncate_on_rotation`,
    /// inode reuse).
    pub truncations: u64,
    /// copytruncate's copy recognized and continued where the original was.
    pub copies_followed: u64,
    /// A file grew again after its stream had moved past it.
    pub late_writes: u64,
    /// Tracked files that disappeared (deleted, or no longer matching).
    pub files_vanished: u64,
    /// Bytes a consumer left unconsumed at a file's end or beyond the cap.
    pub bytes_dropped: u64,
    pub errors: ErrorCounts,
}

/// Runtime errors by kind (each counted once per episode, like its warning).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    pub permission_denied: u64,
    /// A directory, FIFO, socket or device where a log file was expected.
    pub not_a_file: u64,
    /// A watched directory or file that does not exist (yet).
    pub missing: u64,
    /// A file that is a copy of one already followed, ignored.
    pub duplicate: u64,
    pub io: u64,
    pub checkpoint: u64,
}

/// Errors: configuration errors from [`Tailer::new`]; the others are
/// runtime warnings ([`Tailer::take_warnings`]) or a failed checkpoint write.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("no log source: give a directory with a pattern, or files")]
    NoSources,
    #[error("invalid file name pattern {pattern:?}: {source}")]
    Pattern { pattern: String, source: glob::PatternError },
    #[error("{field} must be at least {min}, not {value}")]
    Setting { field: &'static str, min: usize, value: usize },
    #[error("state directory {path}: {source}")]
    StateDir { path: PathBuf, source: io::Error },
    #[error("checkpoint {path}: {source} (move it away to start over)")]
    CheckpointLoad { path: PathBuf, source: checkpoint::LoadError },
    #[error("writing checkpoint {path}: {source}")]
    CheckpointWrite { path: PathBuf, source: io::Error },
    #[error("{path}: is a {kind}, not a regular file: skipped")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{path}: does not exist (yet); watching for it")]
    Missing { path: PathBuf },
    #[error("{path}: permission denied; retrying")]
    PermissionDenied { path: PathBuf },
    #[error("{path}: starts like {original}, of which it is a copy: ignored")]
    Duplicate { path: PathBuf, original: PathBuf },
    #[error("{path}: the consumer kept more than {cap} bytes unconsumed: {dropped} bytes dropped")]
    Overflow { path: PathBuf, cap: usize, dropped: u64 },
    #[error("{path}: {op}: {source}")]
    Io { path: PathBuf, op: &'static str, source: io::Error },
}

/// Copies recognized after their original was truncated, and files
/// dropped, remembered by head so a copy (or a file moved back) resumes
/// where its content was read to. A few suffice: copies appear right away.
const RETIRED: usize = 64;

/// Warnings kept for the caller at most; more would mean it never drains.
const MAX_WARNINGS: usize = 256;

/// Files at the front of a stream held open, the current one included.
const EAGER: usize = 4;

/// Files at the back of a stream held open: the one being written, and
/// the one before (a rotation between two polls).
const EAGER_LAST: usize = 2;

/// A file generation.
#[derive(Debug)]
struct Gen {
    id: u64,
    stream: usize,
    /// Position in its stream; `u64::MAX` until assigned.
    order: u64,
    path: PathBuf,
    key: FileKey,
    fp: Fingerprint,
    /// Open while being read; kept after the end until committed.
    file: Option<File>,
    /// Read position: bytes before it were consumed or are in `tail`.
    offset: u64,
    tail: Vec<u8>,
    committed: u64,
    /// Set when the generation is finished (read to its end, flushed).
    end: Option<u64>,
    /// As last seen on disk.
    size: u64,
    mtime: Option<SystemTime>,
    /// Birth time, where the file system keeps one: tells a reused inode
    /// from the file that had it, even when both are empty.
    created: Option<SystemTime>,
    /// Found at a watched path in this poll (and the newest generation of
    /// its inode).
    visible: bool,
    was_visible: bool,
    /// Delivered a chunk, so it owes the consumer an `eof` chunk.
    announced: bool,
    /// Found truncated or rewritten in this poll, not yet handled.
    truncated: bool,
    /// Its entry's index in the checkpoint it was resumed from.
    from_checkpoint: Option<usize>,
    /// Continues the content an earlier generation read up to this one's
    /// start (a copy found after its original was truncated): until that
    /// one is committed to its end, this one is committed no further than
    /// it, so a restart reads those bytes again rather than losing them.
    resumed_from: Option<(u64, u64)>,
}

impl Gen {
    fn new(stream: usize, path: PathBuf, key: FileKey, fp: Fingerprint, offset: u64) -> Gen {
        Gen {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            stream,
            order: u64::MAX,
            path,
            key,
            fp,
            file: None,
            offset,
            tail: Vec::new(),
            committed: offset,
            end: None,
            size: 0,
            mtime: None,
            created: None,
            visible: true,
            was_visible: true,
            announced: false,
            truncated: false,
            from_checkpoint: None,
            resumed_from: None,
        }
    }

    fn consumed(&self) -> u64 {
        self.offset.saturating_sub(self.tail.len() as u64)
    }

    fn finished(&self) -> bool {
        self.end.is_some()
    }
}

/// A head remembered after its file was truncated or dropped.
#[derive(Debug, Clone, Copy)]
struct Retired {
    fp: Fingerprint,
    offset: u64,
    /// The generation that read it, while it may still have uncommitted
    /// bytes (0 for none).
    reader: u64,
}

/// What warn-once remembers: a path and what was wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum WarnKind {
    NotAFile,
    Missing,
    PermissionDenied,
    Duplicate,
    Overflow,
    Io(&'static str),
}

impl WarnKind {
    fn of(err: &TailError) -> WarnKind {
        match err {
            TailError::NotAFile { .. } => WarnKind::NotAFile,
            TailError::Missing { .. } => WarnKind::Missing,
            TailError::PermissionDenied { .. } => WarnKind::PermissionDenied,
            TailError::Duplicate { .. } => WarnKind::Duplicate,
            TailError::Overflow { .. } => WarnKind::Overflow,
            TailError::Io { op, .. } => WarnKind::Io(op),
            _ => WarnKind::Io("checkpoint"),
        }
    }
}

/// Follows log files; see the module documentation.
#[derive(Debug)]
pub struct Tailer {
    watches: Vec<Watch>,
    /// (watch, destination class) of each stream.
    streams: Vec<(usize, u8)>,
    gens: BTreeMap<u64, Gen>,
    /// The newest generation of each inode.
    index: HashMap<FileKey, u64>,
    retired: VecDeque<Retired>,
    next_order: u64,
    polls: usize,
    chunk: usize,
    cap: usize,
    budget: usize,
    start_at: StartAt,
    checkpoint_path: PathBuf,
    /// The bytes of the last checkpoint written, to skip identical writes.
    last_written: Option<Vec<u8>>,
    stats: TailStats,
    warnings: Vec<TailError>,
    /// Problems reported and not yet cleared, so each is reported once.
    warned: HashSet<(PathBuf, WarnKind)>,
    /// The same for discovery's problems, which are re-evaluated as a whole
    /// on every poll: one not found again is cleared.
    discovery_warned: HashSet<(PathBuf, WarnKind)>,
}

impl Tailer {
    /// Validates the configuration, loads the checkpoint (if any), finds the
    /// files and fixes where each is read from, and writes the checkpoint
    /// — so a crash before the first commit does not move a first start's
    /// "end" forward and lose what was written in between.
    pub fn new(config: TailConfig) -> Result<Tailer, TailError> {
        if config.sources.is_empty() {
            return Err(TailError::NoSources);
        }
        for (field, min, value) in [
            ("chunk_bytes", 1, config.chunk_bytes),
            ("max_entry_bytes", 1, config.max_entry_bytes),
            ("max_bytes_per_poll", config.chunk_bytes, config.max_bytes_per_poll),
        ] {
            if value < min {
                return Err(TailError::Setting { field, min, value });
            }
        }
        let mut watches = Vec::new();
        for s in &config.sources {
            watches.push(match s {
                Source::File(p) => Watch::File(p.clone()),
                Source::Directory { dir, pattern } => Watch::Dir {
                    dir: dir.clone(),
                    pattern: glob::Pattern::new(pattern)
                        .map_err(|source| TailError::Pattern { pattern: pattern.clone(), source })?,
                },
            });
        }
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|source| TailError::StateDir { path: config.state_dir.clone(), source })?;
        let checkpoint_path = config.state_dir.join(checkpoint::FILE_NAME);
        let loaded = checkpoint::load(&checkpoint_path)
            .map_err(|source| TailError::CheckpointLoad { path: checkpoint_path.clone(), source })?;
        let mut tailer = Tailer {
            watches,
            streams: Vec::new(),
            gens: BTreeMap::new(),
            index: HashMap::new(),
            retired: VecDeque::new(),
            next_order: 0,
            polls: 0,
            chunk: config.chunk_bytes,
            cap: config.max_entry_bytes,
            budget: config.max_bytes_per_poll,
            start_at: config.start_at,
            checkpoint_path,
            last_written: None,
            stats: TailStats::default(),
            warnings: Vec::new(),
            warned: HashSet::new(),
            discovery_warned: HashSet::new(),
        };
        tailer.initial_scan(loaded);
        tailer.checkpoint()?;
        Ok(tailer)
    }

    /// Where the checkpoint lives.
    pub fn checkpoint_path(&self) -> &Path {
        &self.checkpoint_path
    }

    pub fn stats(&self) -> &TailStats {
        &self.stats
    }

    /// The files known now, in stream order, for health reporting.
    pub fn files(&self) -> Vec<FileStatus> {
        let mut gens: Vec<&Gen> = self.gens.values().collect();
        gens.sort_by_key(|g| (g.stream, g.order, g.id));
        gens.into_iter()
            .map(|g| FileStatus {
                file: FileId(g.id),
                path: g.path.clone(),
                read: g.offset,
                consumed: g.consumed(),
                committed: g.committed,
                size: g.size,
                finished: g.finished(),
            })
            .collect()
    }

    /// Warnings since the last call, each about a new problem (a problem
    /// that persists is reported once; once it clears it may be again).
    pub fn take_warnings(&mut self) -> Vec<TailError> {
        std::mem::take(&mut self.warnings)
    }

    /// Captures how far each file has been consumed. Cheap: it holds only
    /// files with consumed-but-uncommitted bytes.
    pub fn watermark(&self) -> Watermark {
        Watermark {
            offsets: self.gens.values().filter(|g| g.consumed() > g.committed).map(|g| (g.id, g.consumed())).collect(),
        }
    }

    /// Declares everything up to `watermark` durable downstream: the next
    /// [`checkpoint`](Tailer::checkpoint) records it, and a restart will
    /// not read it again.
    pub fn commit(&mut self, watermark: &Watermark) {
        for (id, offset) in &watermark.offsets {
            if let Some(g) = self.gens.get_mut(id) {
                g.committed = g.committed.max(*offset);
            }
        }
        // A copy's start is committed once the generation that read up to
        // it is (or has been forgotten, which it is only when committed).
        let resumed: Vec<(u64, u64, u64)> =
            self.gens.values().filter_map(|g| g.resumed_from.map(|(from, start)| (g.id, from, start))).collect();
        for (id, from, start) in resumed {
            let (upto, done) = match self.gens.get(&from) {
                Some(f) => (f.committed.min(start), f.committed >= start),
                None => (start, true),
            };
            if let Some(g) = self.gens.get_mut(&id) {
                g.committed = g.committed.max(upto);
                if done {
                    g.resumed_from = None;
                }
            }
        }
        self.cleanup();
    }

    /// Writes the committed offsets atomically (nothing is written when
    /// they are what the last write recorded). On error the previous
    /// checkpoint stays in place; the caller reports it and tries again.
    pub fn checkpoint(&mut self) -> Result<(), TailError> {
        let bytes = serde_json::to_vec_pretty(&self.snapshot()).unwrap_or_default();
        if self.last_written.as_ref() == Some(&bytes) {
            return Ok(());
        }
        match checkpoint::write_atomic(&self.checkpoint_path, &bytes) {
            Ok(()) => {
                self.last_written = Some(bytes);
                Ok(())
            }
            Err(source) => {
                self.stats.errors.checkpoint += 1;
                Err(TailError::CheckpointWrite { path: self.checkpoint_path.clone(), source })
            }
        }
    }

    /// What the checkpoint would record now. Files with nothing committed
    /// are left out: a restart reads them from 0 as new files anyway, and
    /// an entry for a file that was empty would identify nothing (an
    /// empty head matches any file that later takes its inode).
    pub fn snapshot(&self) -> Checkpoint {
        let mut gens: Vec<&Gen> = self.gens.values().filter(|g| g.committed > 0).collect();
        gens.sort_by_key(|g| (g.stream, g.order, g.id));
        let files = gens
            .into_iter()
            .map(|g| {
                // A file renamed out of the watched names can only be found
                // again after a restart at the name it has now.
                let path = match &g.file {
                    Some(f) if !g.visible => identity::current_path(f).unwrap_or_else(|| g.path.clone()),
                    _ => g.path.clone(),
                };
                CheckpointEntry {
                    path: path.to_string_lossy().into_owned(),
                    dev: g.key.dev,
                    inode: g.key.ino,
                    fingerprint: g.fp.hex(),
                    fingerprint_bytes: g.fp.len,
                    offset: g.committed,
                }
            })
            .collect();
        Checkpoint { version: checkpoint::VERSION, sources: self.watches.iter().map(Watch::describe).collect(), files }
    }

    /// Looks for new files and changes to known ones, then reads what is
    /// new, handing it to `consume` (see [`Chunk`]).
    pub fn poll<C: FnMut(Chunk<'_>) -> usize>(&mut self, consume: &mut C) -> PollStatus {
        let seen = self.discover();
        self.reconcile(seen, consume);
        let before = self.stats.bytes_read;
        let more = self.read_streams(consume);
        self.cleanup();
        PollStatus { bytes: self.stats.bytes_read - before, more }
    }

    // ---- discovery and bookkeeping -------------------------------------

    fn discover(&mut self) -> Vec<Seen> {
        let (mut seen, mut problems) = (Vec::new(), Vec::new());
        discover::discover(&self.watches, &mut seen, &mut problems);
        let mut now = HashSet::new();
        for p in problems {
            let (path, err) = match p {
                Problem::NotAFile { path, kind } => (path.clone(), TailError::NotAFile { path, kind }),
                Problem::Missing { path } => (path.clone(), TailError::Missing { path }),
                Problem::PermissionDenied { path } => (path.clone(), TailError::PermissionDenied { path }),
                Problem::Io { path, op, source } => (path.clone(), TailError::Io { path, op, source }),
            };
            let key = (path, WarnKind::of(&err));
            if !self.discovery_warned.contains(&key) {
                self.report(err);
            }
            now.insert(key);
        }
        self.discovery_warned = now;
        // Warnings about files that are gone can never clear otherwise.
        self.warned.retain(|(path, _)| path.exists());
        seen
    }

    /// Reports `err` about `path` unless the same problem was reported and
    /// has not cleared since.
    fn warn(&mut self, path: PathBuf, err: TailError) {
        if self.warned.insert((path, WarnKind::of(&err))) {
            self.report(err);
        }
    }

    /// Counts `err` by kind and hands it to the caller.
    fn report(&mut self, err: TailError) {
        let e = &mut self.stats.errors;
        match WarnKind::of(&err) {
            WarnKind::NotAFile => e.not_a_file += 1,
            WarnKind::Missing => e.missing += 1,
            WarnKind::PermissionDenied => e.permission_denied += 1,
            WarnKind::Duplicate => e.duplicate += 1,
            WarnKind::Overflow => {}
            WarnKind::Io(_) => e.io += 1,
        }
        // A caller that never drains gets the first ones; all are counted.
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(err);
        }
    }

    fn clear_warning(&mut self, path: &Path, kind: WarnKind) {
        if !self.warned.is_empty() {
            self.warned.remove(&(path.to_path_buf(), kind));
        }
    }

    fn stream_of(&mut self, source: usize, class: u8) -> usize {
        match self.streams.iter().position(|s| *s == (source, class)) {
            Some(i) => i,
            None => {
                self.streams.push((source, class));
                self.streams.len() - 1
            }
        }
    }

    /// Opens a discovered file and reads its head; `None` (after a warning
    /// where it is worth one) when it cannot be followed now.
    /// A generation for a file seen for the first time, at offset 0, with
    /// its stream; the caller decides where reading starts.
    fn new_gen(&mut self, s: &Seen, meta: &std::fs::Metadata, head: &[u8]) -> (usize, Gen) {
        let stream = self.stream_of(s.source, s.class);
        let mut g = Gen::new(stream, s.path.clone(), s.key, Fingerprint::of(head), 0);
        g.size = meta.len();
        g.mtime = s.mtime;
        g.created = s.created;
        (stream, g)
    }

    fn open_seen(&mut self, path: &Path, key: FileKey) -> Option<(File, std::fs::Metadata, Vec<u8>)> {
        match identity::open_regular(path) {
            Ok(Opened::File { file, meta }) => {
                self.clear_warning(path, WarnKind::PermissionDenied);
                if FileKey::of(&meta) != key {
                    return None; // replaced since the listing: next poll
                }
                match identity::read_head(&file) {
                    Ok(head) => Some((file, meta, head)),
                    Err(source) => {
                        self.warn(path.into(), TailError::Io { path: path.into(), op: "read", source });
                        None
                    }
                }
            }
            Ok(Opened::NotAFile(kind)) => {
                self.warn(path.into(), TailError::NotAFile { path: path.into(), kind });
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                self.warn(path.into(), TailError::PermissionDenied { path: path.into() });
                None
            }
            Err(source) => {
                self.warn(path.into(), TailError::Io { path: path.into(), op: "open", source });
                None
            }
        }
    }

    /// Adds a generation; it takes its place in its stream's order when
    /// [`Tailer::assign_order`] runs. `opened`: its handle is a new one.
    fn insert(&mut self, g: Gen, opened: bool) {
        if opened && g.file.is_some() {
            self.stats.files_opened += 1;
        }
        self.index.insert(g.key, g.id);
        self.gens.insert(g.id, g);
    }

    /// Orders the generations added since the last call, after everything
    /// already known: by modification time (the last write to a rotated
    /// file precedes the first to its successor); on a tie (the clock's
    /// granularity), in the checkpoint's order, as they were read before;
    /// then by name.
    fn assign_order(&mut self) {
        let mut new: Vec<&mut Gen> = self.gens.values_mut().filter(|g| g.order == u64::MAX).collect();
        let rank = |g: &Gen| g.from_checkpoint.unwrap_or(usize::MAX);
        new.sort_by(|a, b| (a.mtime, rank(a), &a.path, a.id).cmp(&(b.mtime, rank(b), &b.path, b.id)));
        for g in new {
            g.order = self.next_order;
            self.next_order += 1;
        }
    }

    /// Remembers a head read to `offset` by generation `reader` (0: by no
    /// generation with anything left to commit).
    fn retire(&mut self, fp: Fingerprint, offset: u64, reader: u64) {
        if fp.identifies_copy_read_to(offset) {
            if self.retired.len() == RETIRED {
                self.retired.pop_front();
            }
            self.retired.push_back(Retired { fp, offset, reader });
        }
    }

    /// Starts `g` (a new file found to continue retired content) where
    /// that content was read to, committed as far as its reader was.
    fn resume(&mut self, g: &mut Gen, r: Retired) {
        g.offset = r.offset.min(g.size);
        g.committed = g.offset;
        if let Some(from) = self.gens.get(&r.reader) {
            // Its content is older than anything queued after its reader.
            g.order = from.order;
            if from.committed < g.offset {
                g.committed = from.committed;
                g.resumed_from = Some((from.id, g.offset));
            }
        }
        self.stats.copies_followed += 1;
    }

    /// What a file never seen before, starting with `head`, is.
    fn classify(&mut self, stream: usize, head: &[u8]) -> Novel {
        // copytruncate: the original was found truncated in this very poll
        // and this file starts like it.
        let original = self.gens.values().find(|g| {
            g.truncated && g.stream == stream && g.fp.identifies_copy_read_to(g.offset) && g.fp.matches(head)
        });
        if let Some(g) = original {
            return Novel::CopyOfTruncated(g.id);
        }
        // A copy of a file still being followed (a copy in progress, or a
        // backup someone made): its data arrives through the original. A
        // false match would ignore a file, so only long heads count here.
        let copied = self.gens.values().find(|g| {
            !g.truncated
                && self.index.get(&g.key) == Some(&g.id)
                && (g.visible || !g.finished())
                && g.fp.identifies_copies()
                && g.fp.matches(head)
        });
        if let Some(g) = copied {
            return Novel::CopyOfLive(g.path.clone());
        }
        match self.retired.iter().rposition(|r| r.fp.matches(head)) {
            Some(i) => self.retired.remove(i).map_or(Novel::New, Novel::Resume),
            None => Novel::New,
        }
    }

    // ---- first start and restart -----------------------------------------

    fn initial_scan(&mut self, loaded: Option<Checkpoint>) {
        let (started, entries) = match loaded {
            Some(c) => (c.sources, c.files),
            None => (Vec::new(), Vec::new()),
        };
        let entries: Vec<(CheckpointEntry, Fingerprint)> =
            entries.into_iter().filter_map(|e| e.fingerprint().map(|fp| (e, fp))).collect();
        // A watch the checkpoint has not seen start begins as configured;
        // the others resume, and their files that appeared while the agent
        // was down are read from the beginning.
        let started: Vec<bool> = self.watches.iter().map(|w| started.contains(&w.describe())).collect();
        let mut used = vec![false; entries.len()];
        let mut fresh = Vec::new();
        for s in self.discover() {
            if self.index.contains_key(&s.key) {
                continue;
            }
            let Some((file, meta, head)) = self.open_seen(&s.path, s.key) else { continue };
            let mut resume: Option<(u64, usize)> = None;
            for (i, (e, fp)) in entries.iter().enumerate() {
                // Several entries can match: a file's earlier generation
                // not yet committed to its end. The smallest offset wins.
                if e.key() == s.key && fp.matches(&head) {
                    used[i] = true;
                    resume = Some(resume.map_or((e.offset, i), |(r, j)| (r.min(e.offset), j.min(i))));
                }
            }
            let Some((mut offset, rank)) = resume else {
                fresh.push((s, file, meta, head));
                continue;
            };
            if offset > meta.len() {
                // The same head but shorter than what was read: truncated
                // and written again while the agent was down.
                self.stats.truncations += 1;
                offset = 0;
            }
            let stream = self.stream_of(s.source, s.class);
            let mut g = Gen::new(stream, s.path, s.key, Fingerprint::of(&head), offset);
            g.size = meta.len();
            g.mtime = s.mtime;
            g.created = s.created;
            g.from_checkpoint = Some(rank);
            // Opened again when its turn comes (see the module notes).
            drop(file);
            self.insert(g, false);
        }
        // Entries no listed file matched: a file renamed out of the watched
        // names is looked for where the checkpoint saw it last.
        for (i, (e, fp)) in entries.iter().enumerate() {
            if used[i] || self.index.contains_key(&e.key()) {
                continue;
            }
            let path = PathBuf::from(&e.path);
            let Ok(Opened::File { file, meta }) = identity::open_regular(&path) else { continue };
            let Ok(head) = identity::read_head(&file) else { continue };
            if FileKey::of(&meta) != e.key() || !fp.matches(&head) {
                continue;
            }
            let source = self.watches.iter().position(|w| match w {
                Watch::Dir { dir, .. } => path.parent() == Some(dir.as_path()),
                Watch::File(p) => p.parent() == path.parent(),
            });
            let Some(source) = source else { continue };
            used[i] = true;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let stream = self.stream_of(source, discover::class_of(&name));
            let mut g = Gen::new(stream, path, e.key(), Fingerprint::of(&head), e.offset.min(meta.len()));
            g.size = meta.len();
            g.mtime = meta.modified().ok();
            g.created = meta.created().ok();
            g.from_checkpoint = Some(i);
            g.visible = false;
            g.file = Some(file);
            self.insert(g, true);
        }
        for (i, (e, fp)) in entries.iter().enumerate() {
            if !used[i] {
                self.retire(*fp, e.offset, 0);
            }
        }
        // Files not in the checkpoint.
        let mut first: BTreeMap<usize, Vec<Gen>> = BTreeMap::new();
        for (s, file, meta, head) in fresh {
            let (stream, mut g) = self.new_gen(&s, &meta, &head);
            match self.classify(stream, &head) {
                Novel::CopyOfLive(original) => {
                    self.warn(s.path.clone(), TailError::Duplicate { path: s.path, original });
                    continue;
                }
                Novel::Resume(r) => {
                    // copytruncate's copy, made while the agent was down.
                    self.resume(&mut g, r);
                    g.from_checkpoint = Some(entries.len());
                    self.insert(g, false);
                }
                Novel::New | Novel::CopyOfTruncated(_) if started[s.source] || self.start_at == StartAt::Beginning => {
                    self.insert(g, false);
                }
                Novel::New | Novel::CopyOfTruncated(_) => {
                    g.file = Some(file);
                    first.entry(stream).or_default().push(g);
                }
            }
        }
        // First start at the end: the newest file of each stream is read
        // from after its last complete line, the older ones are done.
        for (_, mut gens) in first {
            gens.sort_by(|a, b| (a.mtime, &a.path).cmp(&(b.mtime, &b.path)));
            let newest = gens.len().saturating_sub(1);
            for (i, mut g) in gens.into_iter().enumerate() {
                if i == newest {
                    let start = g.file.as_ref().map_or(g.size, |f| last_line_end(f, g.size));
                    g.offset = start;
                    g.committed = start;
                    self.insert(g, true);
                } else {
                    g.file = None;
                    g.offset = g.size;
                    g.committed = g.size;
                    g.end = Some(g.size);
                    self.insert(g, false);
                }
            }
        }
        self.assign_order();
        self.open_eagerly();
    }

    // ---- one poll --------------------------------------------------------

    /// Brings the generations up to date with what discovery found: new
    /// files, renamed ones, truncated or rewritten ones, copies.
    fn reconcile<C: FnMut(Chunk<'_>) -> usize>(&mut self, seen: Vec<Seen>, consume: &mut C) {
        for g in self.gens.values_mut() {
            g.was_visible = g.visible;
            g.visible = false;
        }
        let mut novel = Vec::new();
        let mut changed = Vec::new();
        for s in seen {
            let Some(&id) = self.index.get(&s.key) else {
                novel.push(s);
                continue;
            };
            let Some(g) = self.gens.get_mut(&id) else { continue };
            if g.visible {
                continue; // a second name for the same file
            }
            if matches!((g.created, s.created), (Some(a), Some(b)) if a != b) {
                // The file was deleted and its inode given to a new one.
                self.index.remove(&s.key);
                self.stats.files_vanished += 1;
                novel.push(s);
                continue;
            }
            g.visible = true;
            g.path = s.path.clone();
            if g.finished() {
                if s.size != g.size || s.mtime != g.mtime {
                    changed.push((id, s));
                }
            } else if g.file.is_none() {
                g.size = s.size;
                g.mtime = s.mtime;
                // Shrunk while waiting unopened (a rewrite with as many
                // bytes shows when it is opened).
                g.truncated |= s.size < g.offset;
            }
        }

        self.open_eagerly();

        // Open generations: truncated or rewritten since the last poll?
        let open: Vec<u64> =
            self.gens.values().filter(|g| !g.finished() && !g.truncated && g.file.is_some()).map(|g| g.id).collect();
        for id in open {
            self.check_open(id);
        }

        // Finished files that changed on disk.
        for (id, s) in changed {
            self.check_finished(id, s);
        }

        // Files never seen before.
        for s in novel {
            if self.index.contains_key(&s.key) {
                continue;
            }
            let Some((file, meta, head)) = self.open_seen(&s.path, s.key) else { continue };
            let (stream, mut g) = self.new_gen(&s, &meta, &head);
            match self.classify(stream, &head) {
                Novel::CopyOfTruncated(id) => {
                    self.take_over(id, g, file);
                    continue;
                }
                Novel::CopyOfLive(original) => {
                    // Looked at again next poll, in case the original turns
                    // out truncated by then (copytruncate caught half way).
                    self.warn(s.path.clone(), TailError::Duplicate { path: s.path, original });
                    continue;
                }
                Novel::Resume(r) => self.resume(&mut g, r),
                Novel::New => {}
            }
            self.clear_warning(&s.path, WarnKind::Duplicate);
            g.file = Some(file);
            self.insert(g, true);
        }

        // Truncated files without a copy: their generation ends here.
        let truncated: Vec<u64> = self.gens.values().filter(|g| g.truncated).map(|g| g.id).collect();
        for id in truncated {
            self.restart_at_zero(id, consume);
        }
        self.assign_order();
    }

    /// Keeps the first files of each stream open (the current one and those
    /// next in line) and the last ones (the one being written). A file
    /// rotated away is then read through its handle, a truncation of the
    /// file being written is seen in time to follow copytruncate's copy,
    /// and an inode cannot be given to another file while it is held. The
    /// rest of a backlog waits unopened.
    fn open_eagerly(&mut self) {
        for stream in 0..self.streams.len() {
            let queue = self.queue(stream);
            let n = queue.len();
            for (i, id) in queue.into_iter().enumerate() {
                if (i < EAGER || i + EAGER_LAST >= n) && matches!(self.ensure_open(id), Ready::Gone) {
                    self.drop_gen(id);
                }
            }
        }
    }

    /// Checks an open, unfinished generation against its file: shrunk below
    /// the read offset, or a different head, means truncated.
    fn check_open(&mut self, id: u64) {
        let Some(g) = self.gens.get_mut(&id) else { return };
        let Some(file) = &g.file else { return };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(source) => {
                let path = g.path.clone();
                self.warn(path.clone(), TailError::Io { path, op: "stat", source });
                return;
            }
        };
        g.size = meta.len();
        g.mtime = meta.modified().ok();
        if meta.len() < g.offset {
            g.truncated = true;
            return;
        }
        // Rewritten in place with at least as many bytes: only the head
        // tells. 256 bytes per poll and open file, from the page cache.
        if g.offset > 0 || (g.fp.is_partial() && meta.len() > u64::from(g.fp.len)) {
            match identity::read_head(file) {
                Ok(head) if g.fp.matches(&head) => {
                    if g.fp.is_partial() {
                        g.fp = Fingerprint::of(&head);
                    }
                }
                Ok(_) => g.truncated = true,
                Err(_) => {} // the read that follows reports it
            }
        }
    }

    /// A finished file whose size or time changed: written to again (late
    /// data, read from where it ended) or rewritten (read from 0).
    fn check_finished(&mut self, id: u64, s: Seen) {
        let Some((file, meta, head)) = self.open_seen(&s.path, s.key) else { return };
        let Some(g) = self.gens.get_mut(&id) else { return };
        let end = g.end.unwrap_or(g.offset);
        let same = g.fp.matches(&head);
        if same && meta.len() == end {
            g.size = meta.len();
            g.mtime = s.mtime;
            return;
        }
        // The old generation is no longer its inode's newest: once its
        // end is committed it is forgotten.
        g.visible = false;
        let (stream, fp, was_visible) = (g.stream, g.fp, g.was_visible);
        let mut next = Gen::new(stream, s.path, s.key, Fingerprint::of(&head), 0);
        if same && meta.len() > end {
            next.offset = end;
            next.committed = end;
            self.stats.late_writes += 1;
        } else {
            // A reused inode of a deleted file is new, not truncated.
            if was_visible {
                self.stats.truncations += 1;
            }
            self.retire(fp, end, id);
        }
        next.size = meta.len();
        next.mtime = s.mtime;
        next.created = s.created;
        next.file = Some(file);
        self.insert(next, true);
    }

    /// copytruncate: the content of generation `id` now lives in `copy`;
    /// the generation continues there (same consumer state, same offset)
    /// and the original file starts a new generation at 0.
    fn take_over(&mut self, id: u64, copy: Gen, file: File) {
        let Some(g) = self.gens.get_mut(&id) else { return };
        let original = g.file.replace(file);
        let (orig_key, orig_visible) = (g.key, g.visible);
        let orig_path = std::mem::replace(&mut g.path, copy.path);
        g.key = copy.key;
        g.fp = copy.fp;
        g.size = copy.size;
        g.mtime = copy.mtime;
        g.created = copy.created;
        g.truncated = false;
        // Read past the copy's end: PostgreSQL wrote after logrotate's copy
        // and before its truncation, and the tailer read that from the
        // original. The copy has everything before it; kept at the read
        // offset, the shorter copy looked truncated on the next poll and was
        // read again from its start (a day of lines twice).
        // (What the consumer holds may then reach past the copy's start:
        // positions below are saturating.)
        if g.offset > g.size {
            g.offset = g.size;
            g.committed = g.committed.min(g.offset);
        }
        g.visible = true;
        let stream = g.stream;
        self.index.insert(copy.key, id);
        self.stats.files_opened += 1;
        self.stats.copies_followed += 1;
        self.stats.truncations += 1;
        let head = original.as_ref().and_then(|f| identity::read_head(f).ok()).unwrap_or_default();
        let mut next = Gen::new(stream, orig_path, orig_key, Fingerprint::of(&head), 0);
        next.visible = orig_visible;
        if let Some(m) = original.as_ref().and_then(|f| f.metadata().ok()) {
            next.size = m.len();
            next.mtime = m.modified().ok();
            next.created = m.created().ok();
        }
        next.file = original;
        self.insert(next, false);
    }

    /// Ends a truncated generation (flushing what the consumer holds) and
    /// starts its file again at 0 as a new one, on the same handle.
    fn restart_at_zero<C: FnMut(Chunk<'_>) -> usize>(&mut self, id: u64, consume: &mut C) {
        self.finish(id, consume);
        let Some(g) = self.gens.get_mut(&id) else { return };
        g.truncated = false;
        let visible = std::mem::replace(&mut g.visible, false);
        let (file, reopened) = match g.file.take() {
            Some(f) => (Some(f), false),
            None => match identity::open_regular(&g.path) {
                Ok(Opened::File { file, meta }) if FileKey::of(&meta) == g.key => (Some(file), true),
                // Gone or unreadable: discovery finds the file again, if it
                // is there, as a changed version of this finished generation.
                _ => (None, false),
            },
        };
        let Some(file) = file else { return };
        let (stream, path, key, fp, end) = (g.stream, g.path.clone(), g.key, g.fp, g.offset);
        self.stats.files_opened += u64::from(reopened);
        self.retire(fp, end, id);
        self.stats.truncations += 1;
        let head = identity::read_head(&file).unwrap_or_default();
        let mut next = Gen::new(stream, path, key, Fingerprint::of(&head), 0);
        next.visible = visible;
        if let Ok(m) = file.metadata() {
            next.size = m.len();
            next.mtime = m.modified().ok();
            next.created = m.created().ok();
        }
        next.file = Some(file);
        self.insert(next, false);
    }

    /// The unfinished generations of a stream, in order.
    fn queue(&self, stream: usize) -> Vec<u64> {
        let mut q: Vec<(u64, u64)> =
            self.gens.values().filter(|g| g.stream == stream && !g.finished()).map(|g| (g.order, g.id)).collect();
        q.sort_unstable();
        q.into_iter().map(|(_, id)| id).collect()
    }

    /// Reads every stream's current file; returns whether the budget ran
    /// out with data left.
    fn read_streams<C: FnMut(Chunk<'_>) -> usize>(&mut self, consume: &mut C) -> bool {
        let mut budget = self.budget;
        // Each poll starts with another stream, so a backlog in one cannot
        // starve the others.
        let n = self.streams.len();
        self.polls = self.polls.wrapping_add(1);
        let first = self.polls;
        for stream in (0..n).map(|i| (i + first) % n) {
            loop {
                let queue = self.queue(stream);
                let Some(&head) = queue.first() else { break };
                // The later files' sizes were taken before the read below,
                // so if one has data the writer had switched to it before
                // the end we are about to reach: that end is final.
                let successor_has_data =
                    queue[1..].iter().filter_map(|id| self.gens.get(id)).any(|g| g.size > g.offset);
                match self.ensure_open(head) {
                    Ready::Yes => {}
                    Ready::Gone => {
                        self.drop_gen(head);
                        continue;
                    }
                    Ready::Later => break,
                }
                if self.gens.get(&head).is_some_and(|g| g.truncated) {
                    // Rewritten while it waited: its new content is the
                    // newest there is, so it goes to the end of the line.
                    self.restart_at_zero(head, consume);
                    self.assign_order();
                    continue;
                }
                match self.read_to_end(head, consume, &mut budget) {
                    Read::End => {
                        let Some(g) = self.gens.get_mut(&head) else { break };
                        let meta = g.file.as_ref().and_then(|f| f.metadata().ok());
                        if g.fp.is_partial() && g.offset > u64::from(g.fp.len) {
                            // Fingerprint what was read, so a copy made right
                            // now is recognized.
                            if let Some(head) = g.file.as_ref().and_then(|f| identity::read_head(f).ok()) {
                                if g.fp.matches(&head) {
                                    g.fp = Fingerprint::of(&head);
                                }
                            }
                        }
                        let deleted = meta.is_some_and(|m| m.nlink() == 0);
                        if !(successor_has_data || deleted) {
                            break;
                        }
                        if successor_has_data && g.announced {
                            self.stats.rotations += 1;
                        }
                        self.finish(head, consume);
                    }
                    Read::Budget => return true,
                    Read::Failed => break,
                }
            }
        }
        false
    }

    /// Opens a generation whose turn has come, checking that it is still
    /// the file it was.
    fn ensure_open(&mut self, id: u64) -> Ready {
        let Some(g) = self.gens.get(&id) else { return Ready::Gone };
        if g.file.is_some() {
            return Ready::Yes;
        }
        let path = g.path.clone();
        let (file, meta) = match identity::open_regular(&path) {
            Ok(Opened::File { file, meta }) => (file, meta),
            Ok(Opened::NotAFile(_)) => return Ready::Gone,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ready::Gone,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                self.warn(path.clone(), TailError::PermissionDenied { path });
                return Ready::Later;
            }
            Err(source) => {
                self.warn(path.clone(), TailError::Io { path, op: "open", source });
                return Ready::Later;
            }
        };
        self.clear_warning(&path, WarnKind::PermissionDenied);
        let head = match identity::read_head(&file) {
            Ok(h) => h,
            Err(source) => {
                self.warn(path.clone(), TailError::Io { path, op: "read", source });
                return Ready::Later;
            }
        };
        let Some(g) = self.gens.get_mut(&id) else { return Ready::Gone };
        let created = meta.created().ok();
        if FileKey::of(&meta) != g.key || matches!((g.created, created), (Some(a), Some(b)) if a != b) {
            // Another file has the name now; ours moved or was deleted, and
            // discovery will say which.
            return if g.visible { Ready::Later } else { Ready::Gone };
        }
        if !g.fp.matches(&head) || meta.len() < g.offset {
            // Truncated or rewritten while it waited; handled like any
            // truncation (a copy may hold the rest of what it had).
            g.truncated = true;
        } else if g.fp.is_partial() {
            g.fp = Fingerprint::of(&head);
        }
        g.size = meta.len();
        g.mtime = meta.modified().ok();
        g.created = g.created.or(created);
        g.file = Some(file);
        self.stats.files_opened += 1;
        Ready::Yes
    }

    /// Reads a generation until its end, the budget, or an error, handing
    /// each chunk to the consumer.
    fn read_to_end<C: FnMut(Chunk<'_>) -> usize>(&mut self, id: u64, consume: &mut C, budget: &mut usize) -> Read {
        let (chunk, cap) = (self.chunk, self.cap);
        loop {
            if *budget == 0 {
                return Read::Budget;
            }
            let Some(g) = self.gens.get_mut(&id) else { return Read::Failed };
            let Some(file) = &g.file else { return Read::Failed };
            let start = g.tail.len();
            g.tail.resize(start + chunk.min(*budget), 0);
            let n = match file.read_at(&mut g.tail[start..], g.offset) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    g.tail.truncate(start);
                    continue;
                }
                Err(source) => {
                    g.tail.truncate(start);
                    let path = g.path.clone();
                    self.warn(path.clone(), TailError::Io { path, op: "read", source });
                    return Read::Failed;
                }
            };
            g.tail.truncate(start + n);
            if n == 0 {
                let path = g.path.clone();
                self.clear_warning(&path, WarnKind::Io("read"));
                return Read::End;
            }
            g.offset += n as u64;
            self.stats.bytes_read += n as u64;
            *budget -= n;
            let used = consume(Chunk {
                file: FileId(g.id),
                path: &g.path,
                offset: g.offset.saturating_sub(g.tail.len() as u64),
                data: &g.tail,
                eof: false,
            });
            g.announced = true;
            g.tail.drain(..used.min(g.tail.len()));
            if g.tail.len() > cap {
                // Only a consumer breaking the parser contract gets here;
                // memory stays bounded all the same.
                let dropped = g.tail.len() - cap;
                g.tail.drain(..dropped);
                self.stats.bytes_dropped += dropped as u64;
                let path = g.path.clone();
                self.warn(path.clone(), TailError::Overflow { path, cap, dropped: dropped as u64 });
            }
        }
    }

    /// Ends a generation: the consumer gets what it still holds, with `eof`.
    fn finish<C: FnMut(Chunk<'_>) -> usize>(&mut self, id: u64, consume: &mut C) {
        let Some(g) = self.gens.get_mut(&id) else { return };
        if g.finished() {
            return;
        }
        if g.announced {
            let used = consume(Chunk {
                file: FileId(g.id),
                path: &g.path,
                offset: g.offset.saturating_sub(g.tail.len() as u64),
                data: &g.tail,
                eof: true,
            });
            self.stats.bytes_dropped += (g.tail.len() - used.min(g.tail.len())) as u64;
        }
        g.tail = Vec::new();
        g.end = Some(g.offset);
        // Compared with what discovery sees next: a file that grows after
        // its end was reached is checked for late writes, once.
        g.size = g.offset;
        g.mtime = None;
    }

    /// Forgets a generation: its file is gone, or it was superseded and
    /// is committed to its end.
    fn drop_gen(&mut self, id: u64) {
        let Some(g) = self.gens.remove(&id) else { return };
        if self.index.get(&g.key) == Some(&id) {
            self.index.remove(&g.key);
            self.stats.files_vanished += 1;
            // Dropped only when committed to its end, or never read.
            self.retire(g.fp, g.end.unwrap_or(g.offset), 0);
        }
    }

    /// Closes files whose data is all committed, and forgets the ones that
    /// are gone from view as well. A finished file that is still there is
    /// remembered, or the next start would read it again.
    fn cleanup(&mut self) {
        let mut gone = Vec::new();
        for g in self.gens.values_mut() {
            match g.end {
                // Waiting its turn, unopened, and nowhere to be found.
                None if g.file.is_none() && !g.visible => gone.push(g.id),
                None => {}
                Some(end) if g.committed >= end => {
                    g.file = None;
                    if !g.visible {
                        gone.push(g.id);
                    }
                }
                Some(_) => {}
            }
        }
        for id in gone {
            self.drop_gen(id);
        }
    }
}

/// What a file seen for the first time is.
enum Novel {
    /// copytruncate's copy of this generation, truncated in this poll.
    CopyOfTruncated(u64),
    /// A copy of a file still followed.
    CopyOfLive(PathBuf),
    /// A file whose content was read before (a copy made of a file since
    /// truncated, or a file moved back into view).
    Resume(Retired),
    New,
}

enum Ready {
    Yes,
    /// The file is gone: forget the generation.
    Gone,
    /// Try again next poll.
    Later,
}

enum Read {
    End,
    Budget,
    Failed,
}

/// Where a first start at the end begins: after the last newline in the
/// file's last 64 KiB, so a line PostgreSQL is still writing is read whole;
/// at 0 when the file is shorter and has none (its only line is open).
fn last_line_end(file: &File, size: u64) -> u64 {
    const WINDOW: u64 = 64 << 10;
    let from = size.saturating_sub(WINDOW);
    let mut buf = vec![0u8; (size - from) as usize];
    match file.read_exact_at(&mut buf, from) {
        Ok(()) => match memchr::memrchr(b'\n', &buf) {
            Some(i) => from + i as u64 + 1,
            None if from == 0 => 0,
            None => size,
        },
        Err(_) => size,
    }
}
