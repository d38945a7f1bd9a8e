//! The log tailer against real files in temporary directories, driven by
//! explicit `poll()` calls (no sleeping): rotation, truncation, deletion,
//! restarts from committed checkpoints, and a model-based property test
//! over random sequences of all of them.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

mod tail {
    use proptest::prelude::*;
    use querywatch_agent::tail::{
        CHECKPOINT_FILE_NAME, Checkpoint, Chunk, Source, StartAt, TailConfig, TailError, Tailer, Watermark,
    };
    use std::fs::{self, File, OpenOptions};
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, SystemTime};

    /// The parser stand-in: consumes complete lines, and everything at eof.
    fn splitter(out: &mut Vec<String>) -> impl FnMut(Chunk<'_>) -> usize + '_ {
        move |c: Chunk<'_>| {
            let n = if c.eof { c.data.len() } else { c.data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) };
            out.extend(
                c.data[..n]
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| String::from_utf8_lossy(l).into_owned()),
            );
            n
        }
    }

    /// Log and state directories and a tailer over them.
    struct Env {
        logs: tempfile::TempDir,
        state: tempfile::TempDir,
        config: TailConfig,
        tailer: Tailer,
    }

    impl Env {
        fn new(sources: impl FnOnce(&Path) -> Vec<Source>, start_at: StartAt, setup: impl FnOnce(&Path)) -> Env {
            Env::with_budget(sources, start_at, 1 << 20, setup)
        }

        fn with_budget(
            sources: impl FnOnce(&Path) -> Vec<Source>,
            start_at: StartAt,
            max_bytes_per_poll: usize,
            setup: impl FnOnce(&Path),
        ) -> Env {
            let logs = tempfile::tempdir().unwrap();
            let state = tempfile::tempdir().unwrap();
            setup(logs.path());
            let mut config = TailConfig::new(sources(logs.path()), state.path().to_path_buf());
            config.start_at = start_at;
            config.chunk_bytes = 64; // many chunks, so lines straddle them
            config.max_entry_bytes = 4096;
            config.max_bytes_per_poll = max_bytes_per_poll;
            let tailer = Tailer::new(config.clone()).unwrap();
            Env { logs, state, config, tailer }
        }

        /// `app*.log` in the log directory, from the beginning.
        fn glob(setup: impl FnOnce(&Path)) -> Env {
            Env::new(
                |d| vec![Source::Directory { dir: d.to_path_buf(), pattern: "app*.log".into() }],
                StartAt::Beginning,
                setup,
            )
        }

        fn path(&self, name: &str) -> PathBuf {
            self.logs.path().join(name)
        }

        fn poll(&mut self) -> Vec<String> {
            let mut got = Vec::new();
            self.tailer.poll(&mut splitter(&mut got));
            got
        }

        fn commit_now(&mut self) {
            let wm = self.tailer.watermark();
            self.tailer.commit(&wm);
            self.tailer.checkpoint().unwrap();
        }

        /// Drops the tailer (as a crash would: nothing more is written) and
        /// starts a new one from the checkpoint on disk.
        fn restart(&mut self) {
            self.tailer = Tailer::new(self.config.clone()).unwrap();
        }

        fn checkpoint(&self) -> Checkpoint {
            serde_json::from_slice(&fs::read(self.state.path().join(CHECKPOINT_FILE_NAME)).unwrap()).unwrap()
        }
    }

    fn append(path: &Path, text: &str) {
        OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
    }

    fn lines(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
        range.map(|i| format!("line {i:03} of a PostgreSQL-like log, long enough for a fingerprint")).collect()
    }

    fn text(lines: &[String]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn partial_line_is_completed_later_never_split() {
        let mut env = Env::glob(|d| append(&d.join("app.log"), "first\nsec"));
        assert_eq!(env.poll(), ["first"]);
        assert_eq!(env.poll(), Vec::<String>::new());
        append(&env.path("app.log"), "ond half\nthird");
        assert_eq!(env.poll(), ["second half"]);
        // A restart without commit re-reads from the last committed offset
        // (0 here), and the partial line is still whole.
        env.restart();
        append(&env.path("app.log"), " line\n");
        assert_eq!(env.poll(), ["first", "second half", "third line"]);
    }

    #[test]
    fn rotation_by_rename_reads_the_old_file_to_its_end_first() {
        let all = lines(1..=9);
        let mut env = Env::glob(|d| append(&d.join("app.log"), &text(&all[..2])));
        assert_eq!(env.poll(), all[..2]);
        // The writer keeps its handle across the rename and writes more
        // before switching; the tailer has not polled in between.
        let mut writer = OpenOptions::new().append(true).open(env.path("app.log")).unwrap();
        writer.write_all(text(&all[2..3]).as_bytes()).unwrap();
        fs::rename(env.path("app.log"), env.path("app-000001.log")).unwrap();
        writer.write_all(text(&all[3..5]).as_bytes()).unwrap();
        append(&env.path("app.log"), &text(&all[5..7]));
        assert_eq!(env.poll(), all[2..7]);
        assert_eq!(env.tailer.stats().rotations, 1);

        // Next rotation: the new file exists but is empty, so the old one
        // is still the current one and what is written to it is read.
        let mut writer = OpenOptions::new().append(true).open(env.path("app.log")).unwrap();
        fs::rename(env.path("app.log"), env.path("app-000002.log")).unwrap();
        File::create(env.path("app.log")).unwrap();
        writer.write_all(text(&all[7..8]).as_bytes()).unwrap();
        assert_eq!(env.poll(), all[7..8]);
        append(&env.path("app.log"), &text(&all[8..9]));
        assert_eq!(env.poll(), all[8..9]);
        assert_eq!(env.tailer.stats().rotations, 2);
    }

    #[test]
    fn rotation_of_an_explicit_file_and_restart_finds_the_renamed_file() {
        let all = lines(1..=6);
        let mut env = Env::new(
            |d| vec![Source::File(d.join("postgresql.log"))],
            StartAt::Beginning,
            |d| append(&d.join("postgresql.log"), &text(&all[..2])),
        );
        assert_eq!(env.poll(), all[..2]);
        env.commit_now();
        // logrotate: rename to a name the watch does not cover, the server
        // writes a little more to the old file, then reopens.
        let mut writer = OpenOptions::new().append(true).open(env.path("postgresql.log")).unwrap();
        fs::rename(env.path("postgresql.log"), env.path("postgresql.log.1")).unwrap();
        writer.write_all(text(&all[2..4]).as_bytes()).unwrap();
        append(&env.path("postgresql.log"), &text(&all[4..5]));
        assert_eq!(env.poll(), all[2..5]);
        // Checkpointed without commit, then killed: the checkpoint points
        // at the renamed file, so the uncommitted lines are read again.
        env.tailer.checkpoint().unwrap();
        let cp = env.checkpoint();
        assert!(cp.files.iter().any(|f| f.path.ends_with("postgresql.log.1") && f.offset > 0), "{cp:?}");
        env.restart();
        append(&env.path("postgresql.log"), &text(&all[5..6]));
        assert_eq!(env.poll(), all[2..6]);
    }

    #[test]
    fn copytruncate_recovers_lines_written_before_the_truncation() {
        let all = lines(1..=8);
        let mut env = Env::glob(|d| append(&d.join("app.log"), &text(&all[..3])));
        assert_eq!(env.poll(), all[..3]);
        // Written after the last poll, before logrotate copies: only the
        // copy holds these lines once the original is truncated.
        append(&env.path("app.log"), &text(&all[3..5]));
        fs::copy(env.path("app.log"), env.path("app-000001.log")).unwrap();
        OpenOptions::new().write(true).open(env.path("app.log")).unwrap().set_len(0).unwrap();
        append(&env.path("app.log"), &text(&all[5..7]));
        assert_eq!(env.poll(), all[3..7]);
        let s = env.tailer.stats();
        assert_eq!((s.truncations, s.copies_followed), (1, 1));
        append(&env.path("app.log"), &text(&all[7..8]));
        assert_eq!(env.poll(), all[7..8]);
        // A restart reads nothing twice: the copy is known by inode.
        env.commit_now();
        env.restart();
        assert_eq!(env.poll(), Vec::<String>::new());
    }

    #[test]
    fn a_copy_found_after_the_truncation_resumes_and_commits_with_its_original() {
        let all = lines(1..=5);
        let mut env = Env::glob(|d| append(&d.join("app.log"), &text(&all[..2])));
        assert_eq!(env.poll(), all[..2]);
        let batch = env.tailer.watermark();
        // The copy is made under a name the watch does not cover, and moved
        // into view only after the tailer saw the truncation.
        append(&env.path("app.log"), &text(&all[2..3]));
        fs::copy(env.path("app.log"), env.path("app.copy")).unwrap();
        OpenOptions::new().write(true).open(env.path("app.log")).unwrap().set_len(0).unwrap();
        assert_eq!(env.poll(), Vec::<String>::new());
        fs::rename(env.path("app.copy"), env.path("app-000001.log")).unwrap();
        append(&env.path("app.log"), &text(&all[3..4]));
        // Line 3 never reached the tailer: written after its last read and
        // copied away. The copy resumes where the original was read to,
        // and takes the original's place in line, before app.log's new
        // content.
        assert_eq!(env.poll(), all[2..4]);
        assert_eq!(env.tailer.stats().copies_followed, 1);

        // Killed before the batch with lines 1–2 was acknowledged: the
        // copy must not claim them committed.
        env.tailer.checkpoint().unwrap();
        env.restart();
        assert_eq!(env.poll(), all[..4], "everything uncommitted is read again, in order");

        // The batch with lines 1–2 acknowledged (by the first tailer's
        // watermark, which this one does not know: nothing changes), then
        // everything: a restart reads nothing again.
        env.tailer.commit(&batch);
        env.commit_now();
        env.restart();
        append(&env.path("app.log"), &text(&all[4..5]));
        assert_eq!(env.poll(), all[4..5]);
    }

    #[test]
    fn a_late_copy_commits_through_the_generation_that_read_its_start() {
        let all = lines(1..=3);
        let mut env = Env::glob(|d| append(&d.join("app.log"), &text(&all[..2])));
        assert_eq!(env.poll(), all[..2]);
        let batch = env.tailer.watermark();
        fs::copy(env.path("app.log"), env.path("app.copy")).unwrap();
        OpenOptions::new().write(true).open(env.path("app.log")).unwrap().set_len(0).unwrap();
        assert_eq!(env.poll(), Vec::<String>::new());
        fs::rename(env.path("app.copy"), env.path("app-000001.log")).unwrap();
        append(&env.path("app.log"), &text(&all[2..3]));
        assert_eq!(env.poll(), all[2..3]);
        // The batch cut before the copy appeared covers lines 1–2; its
        // acknowledgement commits the copy's start too, so a restart reads
        // only line 3 (uncommitted) again.
        env.tailer.commit(&batch);
        env.tailer.checkpoint().unwrap();
        env.restart();
        assert_eq!(env.poll(), all[2..3]);
    }

    #[test]
    fn a_line_read_between_the_copy_and_the_truncation_reads_nothing_twice() {
        let all = lines(1..=8);
        let mut env = Env::glob(|d| append(&d.join("app.log"), &text(&all[..6])));
        assert_eq!(env.poll(), all[..6]);
        // logrotate copied; PostgreSQL wrote line 7, which the tailer read
        // from the original before logrotate truncated it: the copy is
        // shorter than what was read.
        fs::copy(env.path("app.log"), env.path("app-000001.log")).unwrap();
        append(&env.path("app.log"), &text(&all[6..7]));
        assert_eq!(env.poll(), all[6..7]);
        OpenOptions::new().write(true).open(env.path("app.log")).unwrap().set_len(0).unwrap();
        append(&env.path("app.log"), &text(&all[7..8]));
        assert_eq!(env.poll(), all[7..8]);
        assert_eq!(env.poll(), Vec::<String>::new(), "the copy is not read again from its start");
        assert_eq!(env.tailer.stats().copies_followed, 1);
    }

    #[test]
    fn a_copy_shorter_than_the_entry_held_is_not_read_twice_either() {
        let first = lines(1..=4);
        let mut env = Env::glob(|d| append(&d.join("app.log"), &text(&first)));
        assert_eq!(env.poll(), first);
        fs::copy(env.path("app.log"), env.path("app-000001.log")).unwrap();
        // A long entry, still being written: the reader holds all of it,
        // more bytes than the copy has.
        append(&env.path("app.log"), &format!("a 2 {}", "x".repeat(2000)));
        assert_eq!(env.poll(), Vec::<String>::new());
        OpenOptions::new().write(true).open(env.path("app.log")).unwrap().set_len(0).unwrap();
        append(&env.path("app.log"), "a 3\n");
        let got = env.poll();
        assert!(got.iter().all(|l| !first.contains(l)), "read again: {got:?}");
        assert_eq!(got.last().map(String::as_str), Some("a 3"));
        assert_eq!(env.poll(), Vec::<String>::new());
    }

    #[test]
    fn compressed_rotations_in_the_watched_directory_are_not_read() {
        // Debian's logrotate: copytruncate, then `.log.1`, then `.log.2.gz`
        // (delaycompress), all matching the default `postgresql-*`.
        let mut env = Env::new(
            |d| vec![Source::Directory { dir: d.to_path_buf(), pattern: "app*".into() }],
            StartAt::Beginning,
            |d| append(&d.join("app.log"), "a 1\n"),
        );
        assert_eq!(env.poll(), ["a 1"]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"an old day of log lines\n").unwrap();
        fs::write(env.path("app.log.2.gz"), gz.finish().unwrap()).unwrap();
        fs::write(env.path("app.log.3.xz"), b"\xfd7zXZ\x00 not text\n").unwrap();
        append(&env.path("app.log"), "a 2\n");
        assert_eq!(env.poll(), ["a 2"]);
        assert_eq!(env.tailer.stats().rotations, 0);
        append(&env.path("app.log"), "a 3\n");
        assert_eq!(env.poll(), ["a 3"]);
    }

    #[test]
    fn copytruncate_with_a_copy_out_of_view_starts_again_at_zero() {
        let all = lines(1..=4);
        let mut env = Env::glob(|d| append(&d.join("app.log"), &text(&all[..2])));
        assert_eq!(env.poll(), all[..2]);
        fs::copy(env.path("app.log"), env.path("app.log.1")).unwrap();
        OpenOptions::new().write(true).open(env.path("app.log")).unwrap().set_len(0).unwrap();
        append(&env.path("app.log"), &text(&all[2..4]));
        assert_eq!(env.poll(), all[2..4]);
        assert_eq!(env.tailer.stats().truncations, 1);
    }

    #[test]
    fn rewritten_in_place_with_more_bytes_is_noticed_by_its_head() {
        // log_truncate_on_rotation reusing a name, and the new content
        // already longer than the old offset when the tailer looks.
        let mut env = Env::glob(|d| append(&d.join("app.log"), "monday 1\nmonday 2\n"));
        assert_eq!(env.poll(), ["monday 1", "monday 2"]);
        let mut f = OpenOptions::new().write(true).truncate(true).open(env.path("app.log")).unwrap();
        f.write_all(b"tuesday 1\ntuesday 2\ntuesday 3\n").unwrap();
        assert_eq!(env.poll(), ["tuesday 1", "tuesday 2", "tuesday 3"]);
        assert_eq!(env.tailer.stats().truncations, 1);
    }

    #[test]
    fn deleted_file_is_read_to_its_end_then_dropped() {
        let all = lines(1..=5);
        let mut env = Env::glob(|d| append(&d.join("app.log"), &text(&all[..2])));
        assert_eq!(env.poll(), all[..2]);
        append(&env.path("app.log"), &text(&all[2..4]));
        fs::remove_file(env.path("app.log")).unwrap();
        let mut eofs = 0;
        let mut got = Vec::new();
        {
            let mut split = splitter(&mut got);
            env.tailer.poll(&mut |c: Chunk<'_>| {
                eofs += usize::from(c.eof);
                split(c)
            });
        }
        assert_eq!(got, all[2..4]);
        assert_eq!(eofs, 1, "the consumer is told the file ended");
        env.commit_now();
        assert_eq!(env.tailer.stats().files_vanished, 1);
        assert!(env.checkpoint().files.is_empty(), "a deleted, committed file is forgotten");
        append(&env.path("app.log"), &text(&all[4..5]));
        assert_eq!(env.poll(), all[4..5]);
    }

    #[test]
    fn a_reused_inode_with_different_content_is_a_new_file() {
        let mut env = Env::glob(|d| append(&d.join("app.log"), "old content, read and committed\n"));
        assert_eq!(env.poll().len(), 1);
        env.commit_now();
        fs::remove_file(env.path("app.log")).unwrap();
        append(&env.path("app.log"), "new file 1\nnew file 2, longer than the old one was\n");
        // Make the checkpoint claim the new file's inode, as a file system
        // that reuses the number at once would: only the fingerprint can
        // tell the files apart.
        let ino = fs::metadata(env.path("app.log")).unwrap().ino();
        let mut cp = env.checkpoint();
        cp.files[0].inode = ino;
        fs::write(env.state.path().join(CHECKPOINT_FILE_NAME), serde_json::to_vec(&cp).unwrap()).unwrap();
        env.restart();
        assert_eq!(env.poll(), ["new file 1", "new file 2, longer than the old one was"]);
    }

    #[test]
    fn first_start_at_the_end_skips_old_lines_but_not_a_line_being_written() {
        let mut env = Env::new(
            |d| vec![Source::Directory { dir: d.to_path_buf(), pattern: "app*.log".into() }],
            StartAt::End,
            |d| {
                append(&d.join("app-old.log"), "old 1\n");
                let f = File::options().write(true).open(d.join("app-old.log")).unwrap();
                f.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
                append(&d.join("app.log"), "new 1\nnew 2\nbeing wri");
            },
        );
        append(&env.path("app.log"), "tten\nnew 3\n");
        assert_eq!(env.poll(), ["being written", "new 3"]);
        // The start position was checkpointed at construction: a crash
        // before the first commit does not skip what came in between.
        append(&env.path("app.log"), "new 4\n");
        env.restart();
        assert_eq!(env.poll(), ["being written", "new 3", "new 4"]);
    }

    #[test]
    fn first_start_at_the_beginning_reads_old_files_oldest_first() {
        let mut env = Env::glob(|d| {
            append(&d.join("app-b.log"), "b\n");
            append(&d.join("app-a.log"), "a\n");
            let f = File::options().write(true).open(d.join("app-b.log")).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
        });
        assert_eq!(env.poll(), ["b", "a"], "by modification time, not name");
    }

    #[test]
    fn restart_reads_exactly_the_uncommitted_remainder() {
        let all = lines(1..=10);
        let mut env = Env::glob(|d| append(&d.join("app.log"), &text(&all[..4])));
        assert_eq!(env.poll(), all[..4]);
        // The batch holding lines 1–4 is cut here; its acknowledgement
        // arrives after more was read.
        let batch: Watermark = env.tailer.watermark();
        append(&env.path("app.log"), &text(&all[4..7]));
        assert_eq!(env.poll(), all[4..7]);
        env.tailer.commit(&batch);
        env.tailer.checkpoint().unwrap();
        // Killed: 5–7 were read but never acknowledged.
        env.restart();
        append(&env.path("app.log"), &text(&all[7..8]));
        assert_eq!(env.poll(), all[4..8]);
        // Committing everything, then restarting, reads nothing again.
        env.commit_now();
        env.restart();
        append(&env.path("app.log"), &text(&all[8..10]));
        assert_eq!(env.poll(), all[8..10]);
        // An old watermark committed late does not move anything back.
        env.commit_now();
        env.tailer.commit(&batch);
        env.tailer.checkpoint().unwrap();
        env.restart();
        assert_eq!(env.poll(), Vec::<String>::new());
    }

    #[test]
    fn a_failed_checkpoint_write_leaves_the_old_checkpoint() {
        let mut env = Env::glob(|d| append(&d.join("app.log"), "a\nb\n"));
        let path = env.state.path().join(CHECKPOINT_FILE_NAME);
        let before = fs::read(&path).unwrap();
        assert_eq!(env.poll(), ["a", "b"]);
        // The temporary file's place is taken, so the write fails.
        let tmp = env.state.path().join(format!(".{CHECKPOINT_FILE_NAME}.tmp"));
        fs::create_dir(&tmp).unwrap();
        let wm = env.tailer.watermark();
        env.tailer.commit(&wm);
        let err = env.tailer.checkpoint().unwrap_err();
        assert!(matches!(err, TailError::CheckpointWrite { .. }), "{err}");
        assert_eq!(env.tailer.stats().errors.checkpoint, 1);
        assert_eq!(fs::read(&path).unwrap(), before, "old checkpoint intact");
        // It still resumes from the old one; and writing works again later.
        fs::remove_dir(&tmp).unwrap();
        env.tailer.checkpoint().unwrap();
        assert!(env.checkpoint().files[0].offset == 4);
    }

    #[test]
    fn a_directory_or_fifo_where_a_file_should_be_is_skipped_with_one_warning() {
        let mut env = Env::glob(|d| {
            append(&d.join("app.log"), "ok 1\n");
            fs::create_dir(d.join("app-dir.log")).unwrap();
        });
        let fifo = env.path("app-fifo.log");
        let have_fifo = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        assert_eq!(env.poll(), ["ok 1"]);
        append(&env.path("app.log"), "ok 2\n");
        assert_eq!(env.poll(), ["ok 2"]);
        let warnings: Vec<String> = env.tailer.take_warnings().iter().map(ToString::to_string).collect();
        let expected = 1 + usize::from(have_fifo);
        assert_eq!(warnings.len(), expected, "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("app-dir.log") && w.contains("directory")));
        assert_eq!(env.tailer.stats().errors.not_a_file, expected as u64);

        // The followed file itself replaced by a directory: what remains
        // is read through the handle, then the directory is reported.
        append(&env.path("app.log"), "ok 3\n");
        fs::remove_file(env.path("app.log")).unwrap();
        fs::create_dir(env.path("app.log")).unwrap();
        assert_eq!(env.poll(), ["ok 3"]);
        assert!(env.tailer.take_warnings().iter().any(|w| matches!(w, TailError::NotAFile { .. })));

        // An explicit path that is a FIFO: never opened, so never blocks.
        if have_fifo {
            let mut env = Env::new(
                |d| vec![Source::File(d.join("pipe"))],
                StartAt::Beginning,
                |d| {
                    std::process::Command::new("mkfifo").arg(d.join("pipe")).status().unwrap();
                },
            );
            assert!(env.poll().is_empty());
            assert_eq!(env.tailer.stats().errors.not_a_file, 1);
        }
    }

    #[test]
    fn permission_denied_is_counted_once_and_retried() {
        use std::os::unix::fs::PermissionsExt;
        let mut env = Env::glob(|_| {});
        append(&env.path("app.log"), "secret\n");
        fs::set_permissions(env.path("app.log"), fs::Permissions::from_mode(0o000)).unwrap();
        if File::open(env.path("app.log")).is_ok() {
            return; // running as root: permissions are not enforced
        }
        assert!(env.poll().is_empty());
        assert!(env.poll().is_empty());
        assert_eq!(env.tailer.stats().errors.permission_denied, 1);
        assert_eq!(env.tailer.take_warnings().len(), 1);
        fs::set_permissions(env.path("app.log"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(env.poll(), ["secret"]);
    }

    #[test]
    fn each_log_destination_is_its_own_stream() {
        let mut env = Env::new(
            |d| vec![Source::Directory { dir: d.to_path_buf(), pattern: "postgresql-*".into() }],
            StartAt::Beginning,
            |d| {
                append(&d.join("postgresql-1.log"), "log 1\n");
                append(&d.join("postgresql-1.csv"), "csv 1\n");
            },
        );
        let mut got = env.poll();
        got.sort();
        assert_eq!(got, ["csv 1", "log 1"]);
        append(&env.path("postgresql-1.log"), "log 2\n");
        append(&env.path("postgresql-1.csv"), "csv 2\n");
        let mut got = env.poll();
        got.sort();
        assert_eq!(got, ["csv 2", "log 2"], "a .csv file is not the .log file's successor");
        assert_eq!(env.tailer.stats().rotations, 0);
    }

    #[test]
    fn memory_stays_bounded_and_a_backlog_is_read_over_several_polls() {
        let mut env = Env::glob(|d| append(&d.join("app.log"), &"x".repeat(10_000)));
        // A consumer that never consumes: the kept tail is capped.
        let mut longest = 0;
        env.tailer.poll(&mut |c: Chunk<'_>| {
            longest = longest.max(c.data.len());
            0
        });
        assert!(longest <= 4096 + 64, "{longest}");
        assert_eq!(env.tailer.stats().bytes_dropped, 10_000 - 4096);

        let mut config = env.config.clone();
        config.max_bytes_per_poll = 1000;
        config.state_dir = env.state.path().join("other");
        let mut tailer = Tailer::new(config).unwrap();
        let (mut polls, mut bytes) = (0, 0);
        loop {
            let status = tailer.poll(&mut |c: Chunk<'_>| c.data.len());
            polls += 1;
            bytes += status.bytes;
            if !status.more {
                break;
            }
        }
        assert_eq!((bytes, polls), (10_000, 11));
    }

    #[test]
    fn configuration_errors_fail_construction() {
        let dir = tempfile::tempdir().unwrap();
        let bad = TailConfig::new(
            vec![Source::Directory { dir: dir.path().into(), pattern: "postgresql-[".into() }],
            dir.path().join("state"),
        );
        assert!(matches!(Tailer::new(bad), Err(TailError::Pattern { .. })));
        fs::write(dir.path().join("file"), b"").unwrap();
        let not_a_dir = TailConfig::new(vec![Source::File(dir.path().join("x.log"))], dir.path().join("file"));
        assert!(matches!(Tailer::new(not_a_dir), Err(TailError::StateDir { .. })));
        fs::create_dir(dir.path().join("state2")).unwrap();
        fs::write(dir.path().join("state2").join(CHECKPOINT_FILE_NAME), b"{\"version\":1,").unwrap();
        let corrupt = TailConfig::new(vec![Source::File(dir.path().join("x.log"))], dir.path().join("state2"));
        let err = Tailer::new(corrupt).unwrap_err();
        assert!(matches!(err, TailError::CheckpointLoad { .. }) && err.to_string().contains("start over"), "{err}");
        assert!(matches!(Tailer::new(TailConfig::new(vec![], dir.path().into())), Err(TailError::NoSources)));
    }

    // ---- the model -----------------------------------------------------

    #[derive(Debug, Clone)]
    enum Op {
        /// Append `n` lines of `len` extra bytes; `partial`: the last one
        /// only half, finished by the next write.
        Write {
            n: usize,
            len: usize,
            partial: bool,
        },
        /// Rename the live file away; the writer keeps writing to it.
        RenameAway,
        /// Create a new live file and switch the writer to it.
        CreateNew,
        /// Poll until caught up, then copy the live file away and truncate it.
        CopyTruncate,
        /// Delete the oldest rotated file, if its lines are committed
        /// durably (before that, the file is the agent's only buffer).
        DeleteRotated,
        Poll,
        /// Capture a watermark now, to commit later.
        Capture,
        CommitCaptured,
        Commit,
        Checkpoint,
        /// Kill the tailer and start a new one from the checkpoint.
        Restart {
            commit_first: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1usize..4, 0usize..90, any::<bool>()).prop_map(|(n, len, partial)| Op::Write { n, len, partial }),
            2 => Just(Op::RenameAway),
            2 => Just(Op::CreateNew),
            1 => Just(Op::CopyTruncate),
            1 => Just(Op::DeleteRotated),
            6 => Just(Op::Poll),
            1 => Just(Op::Capture),
            1 => Just(Op::CommitCaptured),
            1 => Just(Op::Commit),
            1 => Just(Op::Checkpoint),
            2 => any::<bool>().prop_map(|commit_first| Op::Restart { commit_first }),
        ]
    }

    struct Model {
        env: Env,
        writer: File,
        /// The writer's file is the one named `app.log`.
        live: bool,
        /// The second half of a line begun by a partial write.
        pending: Option<String>,
        /// Every line the tailer must deliver, in order.
        expected: Vec<String>,
        /// Delivered lines, with those a restart re-delivers taken back.
        accepted: Vec<String>,
        committed: usize,
        durable: usize,
        captured: Option<(Watermark, usize)>,
        seq: usize,
        rotated: usize,
        /// Rotated files and how many expected lines precede their end
        /// (`None` while the writer still writes to it).
        old_files: Vec<(PathBuf, Option<usize>)>,
        /// A logical clock for modification times: real ones tie within a
        /// clock tick, while real rotations are seconds apart.
        clock: SystemTime,
    }

    impl Model {
        fn new(start_at: StartAt, pre: usize) -> Model {
            let pre_lines: Vec<String> = (0..pre).map(|i| format!("P{i:05} written before the start")).collect();
            // A small read budget, so polls stop part way through files.
            let env = Env::with_budget(
                |d| vec![Source::Directory { dir: d.to_path_buf(), pattern: "app*.log".into() }],
                start_at,
                200,
                |d| append(&d.join("app.log"), &text(&pre_lines)),
            );
            let writer = OpenOptions::new().append(true).open(env.path("app.log")).unwrap();
            let expected = if start_at == StartAt::Beginning { pre_lines } else { Vec::new() };
            let mut m = Model {
                env,
                writer,
                live: true,
                pending: None,
                expected,
                accepted: Vec::new(),
                committed: 0,
                durable: 0,
                captured: None,
                seq: 0,
                rotated: 0,
                old_files: Vec::new(),
                clock: SystemTime::now() - Duration::from_secs(86_400),
            };
            m.write(b"");
            m
        }

        /// Sets `file`'s modification time to the next tick.
        fn touch(&mut self, file: &File) {
            self.clock += Duration::from_secs(1);
            file.set_modified(self.clock).unwrap();
        }

        fn write(&mut self, bytes: &[u8]) {
            self.writer.write_all(bytes).unwrap();
            let writer = self.writer.try_clone().unwrap();
            self.touch(&writer);
        }

        fn finish_pending(&mut self) {
            if let Some(rest) = self.pending.take() {
                self.write(rest.as_bytes());
            }
        }

        /// Polls once; every delivered line must be the next expected one.
        fn poll(&mut self) -> u64 {
            let mut got = Vec::new();
            let status = self.env.tailer.poll(&mut splitter(&mut got));
            for line in got {
                let i = self.accepted.len();
                assert!(i < self.expected.len(), "delivered {line:?} beyond what was written");
                assert_eq!(line, self.expected[i], "line {i}: lost, duplicated or out of order");
                self.accepted.push(line);
            }
            status.bytes
        }

        fn catch_up(&mut self) {
            for _ in 0..1000 {
                if self.poll() == 0 {
                    return;
                }
            }
            panic!("the tailer never caught up");
        }

        fn commit(&mut self, wm: &Watermark, len: usize) {
            self.env.tailer.commit(wm);
            self.committed = self.committed.max(len);
        }

        fn apply(&mut self, op: Op) {
            match op {
                Op::Write { n, len, partial } => {
                    self.finish_pending();
                    let mut out = String::new();
                    for k in 0..n {
                        self.seq += 1;
                        let line = format!("L{:06} {}", self.seq, "abcdefghij".repeat(10)[..len].to_owned());
                        self.expected.push(line.clone());
                        if partial && k == n - 1 {
                            let half = line.len() / 2;
                            out.push_str(&line[..half]);
                            self.pending = Some(format!("{}\n", &line[half..]));
                        } else {
                            out.push_str(&line);
                            out.push('\n');
                        }
                    }
                    self.write(out.as_bytes());
                }
                Op::RenameAway if self.live => {
                    self.rotated += 1;
                    let to = self.env.path(&format!("app-{:06}.log", self.rotated));
                    fs::rename(self.env.path("app.log"), &to).unwrap();
                    self.old_files.push((to, None));
                    self.live = false;
                }
                Op::CreateNew if !self.live => {
                    // A writer finishes its line before it switches files.
                    self.finish_pending();
                    if let Some((_, end)) = self.old_files.last_mut() {
                        *end = Some(self.expected.len());
                    }
                    self.writer = OpenOptions::new().create(true).append(true).open(self.env.path("app.log")).unwrap();
                    self.write(b"");
                    self.live = true;
                }
                Op::CopyTruncate if self.live => {
                    self.finish_pending();
                    self.catch_up();
                    self.rotated += 1;
                    let to = self.env.path(&format!("app-{:06}.log", self.rotated));
                    fs::copy(self.env.path("app.log"), &to).unwrap();
                    self.touch(&OpenOptions::new().append(true).open(&to).unwrap());
                    self.old_files.push((to, Some(self.expected.len())));
                    self.writer.set_len(0).unwrap();
                    self.write(b"");
                }
                Op::DeleteRotated => {
                    if let Some((path, Some(end))) = self.old_files.first().cloned() {
                        if self.durable >= end {
                            fs::remove_file(path).unwrap();
                            self.old_files.remove(0);
                        }
                    }
                }
                Op::RenameAway | Op::CreateNew | Op::CopyTruncate => {}
                Op::Poll => {
                    self.poll();
                }
                Op::Capture => self.captured = Some((self.env.tailer.watermark(), self.accepted.len())),
                Op::CommitCaptured => {
                    if let Some((wm, len)) = self.captured.take() {
                        self.commit(&wm, len);
                    }
                }
                Op::Commit => {
                    let wm = self.env.tailer.watermark();
                    self.commit(&wm, self.accepted.len());
                }
                Op::Checkpoint => {
                    self.env.tailer.checkpoint().unwrap();
                    self.durable = self.committed;
                }
                Op::Restart { commit_first } => {
                    if commit_first {
                        self.apply(Op::Commit);
                        self.apply(Op::Checkpoint);
                    }
                    self.env.restart();
                    // Everything after the last durable commit comes again.
                    self.accepted.truncate(self.durable);
                    self.committed = self.durable;
                    self.captured = None;
                }
            }
        }
    }

    proptest! {
        // PROPTEST_CASES=5000 for a longer hunt; each case syncs checkpoints.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn model_no_loss_no_duplicates(
            beginning in any::<bool>(),
            pre in 0usize..3,
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let start_at = if beginning { StartAt::Beginning } else { StartAt::End };
            let mut m = Model::new(start_at, pre);
            for op in ops {
                m.apply(op);
            }
            m.finish_pending();
            m.catch_up();
            prop_assert_eq!(m.accepted.len(), m.expected.len(), "lines never delivered");
        }
    }
}
