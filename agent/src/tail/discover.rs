//! Finding the files to follow: a directory listed against a file-name
//! glob, and explicit paths. Only `stat` here; opening is the tailer's.

use super::identity::{self, FileKey};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A watched place, validated.
#[derive(Debug, Clone)]
pub(super) enum Watch {
    Dir { dir: PathBuf, pattern: glob::Pattern },
    File(PathBuf),
}

impl Watch {
    /// How the checkpoint names this watch.
    pub(super) fn describe(&self) -> String {
        match self {
            Watch::File(p) => format!("file:{}", p.display()),
            Watch::Dir { dir, pattern } => format!("dir:{}", dir.join(pattern.as_str()).display()),
        }
    }
}

const MATCH: glob::MatchOptions =
    glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: true };

/// One regular file found by a watch.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub path: PathBuf,
    pub source: usize,
    pub class: u8,
    pub key: FileKey,
    pub size: u64,
    pub mtime: Option<SystemTime>,
    pub created: Option<SystemTime>,
}

/// Something found that cannot be followed, or a place that cannot be listed.
#[derive(Debug)]
pub(super) enum Problem {
    NotAFile { path: PathBuf, kind: &'static str },
    Missing { path: PathBuf },
    PermissionDenied { path: PathBuf },
    Io { path: PathBuf, op: &'static str, source: io::Error },
}

/// The log stream a file name belongs to within one watch. PostgreSQL with
/// several `log_destination`s writes the same name with `.log`, `.csv` and
/// `.json`; each is its own stream, read in its own order, so a `.csv` file
/// never counts as the successor of a `.log` file.
pub(super) fn class_of(name: &str) -> u8 {
    if name.contains(".csv") {
        1
    } else if name.contains(".json") {
        2
    } else {
        0
    }
}

/// A rotated file compressed by logrotate (Debian's default: `compress`,
/// `delaycompress`), which a directory pattern such as `postgresql-*` also
/// matches. It holds nothing the plain files did not (it is a day already
/// read), and read as text it was garbage that also displaced the live
/// file as its stream's newest. `analyze` reads such files; the tailer
/// follows plain ones.
fn compressed(name: &str) -> bool {
    const SUFFIXES: [&str; 6] = [".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip"];
    let name = name.as_bytes();
    SUFFIXES.iter().any(|s| name.len() > s.len() && name[name.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes()))
}

/// Lists every watch. Paths that vanish between listing and stat are left
/// out silently: that is a deletion, which the tailer notices on its own.
pub(super) fn discover(watches: &[Watch], seen: &mut Vec<Seen>, problems: &mut Vec<Problem>) {
    for (source, w) in watches.iter().enumerate() {
        match w {
            Watch::File(path) => match fs::metadata(path) {
                Ok(meta) => consider(path.clone(), source, &meta, seen, problems),
                Err(e) if e.kind() == io::ErrorKind::NotFound => problems.push(Problem::Missing { path: path.clone() }),
                Err(e) => problems.push(stat_problem(path, e)),
            },
            Watch::Dir { dir, pattern } => {
                let entries = match fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        problems.push(Problem::Missing { path: dir.clone() });
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                        problems.push(Problem::PermissionDenied { path: dir.clone() });
                        continue;
                    }
                    Err(source) => {
                        problems.push(Problem::Io { path: dir.clone(), op: "listing directory", source });
                        continue;
                    }
                };
                for entry in entries {
                    let entry = match entry {
                        Ok(e) => e,
                        Err(source) => {
                            problems.push(Problem::Io { path: dir.clone(), op: "listing directory", source });
                            break;
                        }
                    };
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if !pattern.matches_with(&name, MATCH) || compressed(&name) {
                        continue;
                    }
                    let path = entry.path();
                    // metadata (not symlink_metadata): a symlink to a log
                    // file is followed, and identified by its target.
                    match fs::metadata(&path) {
                        Ok(meta) => consider(path, source, &meta, seen, problems),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => problems.push(stat_problem(&path, e)),
                    }
                }
            }
        }
    }
}

fn stat_problem(path: &Path, e: io::Error) -> Problem {
    if e.kind() == io::ErrorKind::PermissionDenied {
        Problem::PermissionDenied { path: path.to_path_buf() }
    } else {
        Problem::Io { path: path.to_path_buf(), op: "stat", source: e }
    }
}

fn consider(path: PathBuf, source: usize, meta: &fs::Metadata, seen: &mut Vec<Seen>, problems: &mut Vec<Problem>) {
    if !meta.file_type().is_file() {
        problems.push(Problem::NotAFile { kind: identity::kind_name(meta), path });
        return;
    }
    let class = class_of(&path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    seen.push(Seen {
        class,
        source,
        key: FileKey::of(meta),
        size: meta.len(),
        mtime: meta.modified().ok(),
        created: meta.created().ok(),
        path,
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_stream_per_destination() {
        assert_eq!(class_of("postgresql-2026-11-24_000000.log"), 0);
        assert_eq!(class_of("postgresql-2026-11-24_000000.csv"), 1);
        assert_eq!(class_of("postgresql.csv.1"), 1);
        assert_eq!(class_of("postgresql-Mon.json"), 2);
    }

    #[test]
    fn lists_matching_regular_files_and_reports_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("postgresql-1.log"), b"x").unwrap();
        fs::write(dir.path().join("other.log"), b"x").unwrap();
        fs::write(dir.path().join(".postgresql-hidden.log"), b"x").unwrap();
        fs::create_dir(dir.path().join("postgresql-2.log")).unwrap();
        let watches = vec![
            Watch::Dir { dir: dir.path().to_path_buf(), pattern: glob::Pattern::new("postgresql-*").unwrap() },
            Watch::File(dir.path().join("missing.log")),
        ];
        let (mut seen, mut problems) = (Vec::new(), Vec::new());
        discover(&watches, &mut seen, &mut problems);
        assert_eq!(seen.len(), 1);
        assert!(seen[0].path.ends_with("postgresql-1.log"));
        assert!(matches!(&problems[..], [Problem::NotAFile { kind: "directory", .. }, Problem::Missing { .. }]));
    }
}
