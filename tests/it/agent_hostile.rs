//! The live agent on hostile and broken input: the real `querywatch agent`
//! binary following log files this test writes by hand (no PostgreSQL
//! needed: the point is input PostgreSQL would not write, or a log
//! directory someone broke), exporting to the test's OTLP/gRPC receiver.
//!
//! Each test puts good entries before and after the bad input and checks
//! that
//! - the agent keeps running and every good entry after the bad input is
//!   exported, exactly once (calls per marker, counted on the receiver);
//! - the problem is counted in the agent's exported health
//!   (`querywatch.agent.*`: parse failures, truncated entries, invalid
//!   UTF-8, unreadable files) or, for the spool, said on stderr;
//! - the agent says so on stderr once, naming the file (and, for parse
//!   problems, the byte offset), however many times the problem repeats.
//!
//! The cases: a 200 MB single statement (memory stays bounded: VmHWM
//! against [`HWM_BOUND_MIB`]), a line of NUL bytes, invalid UTF-8 in
//! statement text, a csvlog record with an unterminated quote, a jsonlog
//! line with a truncated object, a log_line_prefix that matches nothing,
//! the log file replaced by a directory and by a FIFO, a file the agent
//! may not read (the agent runs as an unprivileged user for that one: root
//! ignores mode bits), and a full disk under the spool (a 64 KiB tmpfs
//! mounted on `state_dir/spool`, root only) with the collector down —
//! including SIGTERM in that state.

// A test: a failed unwrap is a failed test, with the error.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use querywatch_wire::Observations;

use crate::support::agent::{Receiver, read, start_agent, stop_agent, wait_for};

/// The agent's peak RSS while it reads a 200 MB entry, at most. The
/// parser holds one entry up to its cap (1 MiB) plus one read (256 KiB),
/// the aggregator and the OTLP batch a copy or two of the truncated text;
/// the rest is the agent's baseline (about 15–25 MiB for a debug build).
/// Holding the entry whole would need more than 200 MiB.
const HWM_BOUND_MIB: u64 = 64;

/// The stderr prefix of the stderr-format tests (`[logs] prefix`).
const PREFIX: &str = "%m [%p] %q%u@%d ";

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A csvlog record of PostgreSQL 15 (26 columns) logging `statement`.
fn csv_record(pid: u32, statement: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "2026-11-24 09:00:00.001 UTC,\"bob\",\"shop\",{pid},\"[local]\",6743a0c6.{pid:x},1,\"SELECT\",\
         2026-11-24 08:59:00 UTC,3/4,0,LOG,00000,\"duration: 1.500 ms  statement: "
    )
    .into_bytes();
    r.extend_from_slice(statement);
    r.extend_from_slice(b"\",,,,,,,,,\"psql\",\"client backend\",,0\n");
    r
}

/// `n` csvlog records `SELECT <i> AS <marker>`, then a record of another
/// process, as a live server's log always has one more (the tests do not
/// depend on the last record of a file being read before the next one).
fn csv_good(marker: &str, n: u32) -> Vec<u8> {
    let mut v: Vec<u8> =
        (0..n).flat_map(|i| csv_record(100 + i, format!("SELECT {i} AS {marker}").as_bytes())).collect();
    v.extend_from_slice(
        b"2026-11-24 09:00:00.001 UTC,,,999,,6743a0c6.3e7,1,,2026-11-24 08:59:00 UTC,,0,LOG,00000,\"checkpoint starting: time\",,,,,,,,,\"\",\"checkpointer\",,0\n",
    );
    v
}

/// A stderr line with [`PREFIX`] logging `statement`.
fn stderr_line(pid: u32, statement: &str) -> String {
    format!("2026-11-24 09:00:00.001 UTC [{pid}] bob@shop LOG:  duration: 1.500 ms  statement: {statement}\n")
}

/// `n` stderr entries `SELECT <i> AS <marker>`, then a line of another
/// process: a stderr entry is complete only once the next line begins.
fn stderr_good(marker: &str, n: u32) -> String {
    let mut s: String = (0..n).map(|i| stderr_line(200 + i, &format!("SELECT {i} AS {marker}"))).collect();
    s.push_str("2026-11-24 09:00:00.001 UTC [999] LOG:  checkpoint starting: time\n");
    s
}

/// A jsonlog line logging `statement` (already JSON-escaped).
fn json_line(pid: u32, statement: &str) -> String {
    format!(
        "{{\"timestamp\":\"2026-11-24 09:00:00.001 UTC\",\"user\":\"bob\",\"dbname\":\"shop\",\"pid\":{pid},\
         \"session_id\":\"6743a0c6.{pid:x}\",\"error_severity\":\"LOG\",\"message\":\"duration: 1.500 ms  statement: \
         {statement}\",\"backend_type\":\"client backend\",\"query_id\":0}}\n"
    )
}

fn json_good(marker: &str, n: u32) -> String {
    (0..n).map(|i| json_line(300 + i, &format!("SELECT {i} AS {marker}"))).collect()
}

/// Calls of statements whose masked text names `marker`.
fn calls(obs: &Observations, marker: &str) -> u64 {
    obs.statements.iter().filter(|(k, _)| k.text.contains(marker)).map(|(_, s)| s.calls).sum()
}

/// Prints how long a test took when it ends (`--nocapture` shows it).
struct Took(&'static str, Instant);

impl Drop for Took {
    fn drop(&mut self) {
        eprintln!("{}: took {:.1} s", self.0, self.1.elapsed().as_secs_f64());
    }
}

/// The agent's warnings, for the test's output.
fn show(test: &str, err: &str) {
    for l in err.lines().filter(|l| l.contains("warning") || l.contains("error")) {
        eprintln!("{test}: agent said: {l}");
    }
}

/// Lines of `text` containing `needle`.
fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// The agent's process, killed if a test fails before stopping it (a
/// failed wait panics; without this the agent would outlive the test).
struct Agent(Child);

impl std::ops::Deref for Agent {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One agent under test: its work dir, log dir, receiver and process.
struct Setup {
    work: tempfile::TempDir,
    logs: PathBuf,
    receiver: Receiver,
    config: PathBuf,
    stderr: PathBuf,
}

impl Setup {
    /// A log dir and a config: `[logs]` lines beyond the directory (format,
    /// prefix, pattern) in `logs_extra`.
    fn new(logs_extra: &str) -> Setup {
        let work = tempfile::tempdir().unwrap();
        let logs = work.path().join("log");
        fs::create_dir(&logs).unwrap();
        let receiver = Receiver::start();
        let config = work.path().join("agent.toml");
        fs::write(
            &config,
            format!(
                "node = \"{node}\"\ncluster = \"it\"\ninterval = \"1s\"\nstate_dir = {state:?}\n\
                 [logs]\ndirectory = {dir:?}\nstart_at = \"beginning\"\n{logs_extra}\n\
                 [export]\nendpoint = \"http://{addr}\"\n",
                node = crate::support::agent::NODE,
                state = work.path().join("state").display().to_string(),
                dir = logs.display().to_string(),
                addr = receiver.addr,
            ),
        )
        .unwrap();
        let stderr = work.path().join("agent.stderr");
        Setup { work, logs, receiver, config, stderr }
    }

    fn state_dir(&self) -> PathBuf {
        self.work.path().join("state")
    }

    fn start(&self) -> Agent {
        Agent(start_agent(&self.config, &self.stderr))
    }

    /// Waits until `marker` has exactly `n` calls; fails at once on more.
    fn wait_calls(&self, agent: &mut Child, marker: &str, n: u64, within: Duration) -> Observations {
        let what = format!("{n} calls of {marker}");
        wait_for(&self.receiver, agent, &self.stderr, within, &what, |o| {
            let c = calls(o, marker);
            assert!(c <= n, "{marker}: {c} calls, more than the {n} written (a duplicate)");
            (c == n).then_some(())
        })
        .1
    }

    /// Waits until the agent's stderr has a line with `needle`.
    fn wait_stderr(&self, agent: &mut Child, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !read(&self.stderr).contains(needle) {
            assert!(agent.try_wait().unwrap().is_none(), "the agent exited; stderr:\n{}", read(&self.stderr));
            assert!(Instant::now() < deadline, "{needle:?} not on stderr within {within:?}:\n{}", read(&self.stderr));
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for `n` more metrics requests (the agent exports every second):
    /// time for a repeated problem to be said again, were it.
    fn wait_batches(&self, agent: &mut Child, n: usize) {
        let seen = self.receiver.requests().len();
        wait_for(&self.receiver, agent, &self.stderr, Duration::from_secs(30), "more batches", |_| {
            (self.receiver.requests().len() >= seen + n).then_some(())
        });
    }
}

fn kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).unwrap();
    line.trim().trim_end_matches("kB").trim().parse().unwrap()
}

#[test]
fn hostile_200mb_single_statement_is_truncated_once_and_memory_stays_bounded() {
    let _took = Took("hostile_200mb_single_statement_is_truncated_once_and_memory_stays_bounded", Instant::now());
    let started = Instant::now();
    let s = Setup::new(&format!("pattern = \"postgresql-*.log\"\nformat = \"stderr\"\nprefix = {PREFIX:?}"));
    let file = s.logs.join("postgresql-1.log");
    // Written before the agent starts, in pieces: the test holds no 200 MB.
    {
        let mut f = std::io::BufWriter::new(fs::File::create(&file).unwrap());
        f.write_all(stderr_good("hostile_before", 3).as_bytes()).unwrap();
        f.write_all(b"2026-11-24 09:00:00.002 UTC [77] bob@shop LOG:  duration: 5.000 ms  statement: SELECT '")
            .unwrap();
        let block = vec![b'x'; 1 << 20];
        for _ in 0..200 {
            f.write_all(&block).unwrap();
        }
        f.write_all(b"' AS hostile_huge\n").unwrap();
        f.write_all(stderr_good("hostile_after", 5).as_bytes()).unwrap();
    }
    let size = fs::metadata(&file).unwrap().len();
    assert!(size > 200 << 20);
    let mut agent = s.start();
    let obs = s.wait_calls(&mut agent, "hostile_after", 5, Duration::from_secs(240));
    let hwm = kib(agent.id(), "VmHWM");
    assert_eq!(calls(&obs, "hostile_before"), 3);
    // The huge entry is exported, truncated (its alias is past the cut).
    assert_eq!(obs.input.truncated, 1, "truncated entries: {:?}", obs.input);
    let huge: Vec<_> = obs.statements.keys().filter(|k| k.text.starts_with("SELECT $1")).collect();
    assert!(huge.iter().all(|k| k.text.len() <= 1 << 20), "the truncated text stays within the cap");
    assert!(hwm < HWM_BOUND_MIB << 10, "agent VmHWM {hwm} kB while reading a {size}-byte entry");
    let err = stop_agent(&mut agent, &s.stderr);
    show("hostile", &err);
    assert_eq!(count(&err, "longer than"), 1, "said once, with context:\n{err}");
    assert!(err.contains("postgresql-1.log") && err.contains("offset"), "file and offset named:\n{err}");
    eprintln!("200 MB statement: agent VmHWM {:.1} MiB, test took {:?}", hwm as f64 / 1024.0, started.elapsed());
}

#[test]
fn hostile_nul_bytes_are_counted_once_and_the_next_entries_survive() {
    let _took = Took("hostile_nul_bytes_are_counted_once_and_the_next_entries_survive", Instant::now());
    let s = Setup::new("pattern = \"postgresql-*.csv\"");
    let file = s.logs.join("postgresql-1.csv");
    let mut bytes = csv_good("hostile_before", 2);
    // A line of NULs (what a crash leaves in a preallocated file), and a
    // NUL run with no newline before the next record.
    bytes.extend_from_slice(&[0u8; 4096]);
    bytes.push(b'\n');
    bytes.extend_from_slice(&[0u8; 100]);
    bytes.push(b'\n');
    bytes.extend(csv_good("hostile_after", 4));
    fs::write(&file, &bytes).unwrap();
    let mut agent = s.start();
    let obs = s.wait_calls(&mut agent, "hostile_after", 4, Duration::from_secs(30));
    assert_eq!(calls(&obs, "hostile_before"), 2);
    assert_eq!(obs.input.unparsed, 2, "the NUL lines are parse failures: {:?}", obs.input);
    // More of the same later: counted, not said again.
    let mut more = vec![0u8; 512];
    more.push(b'\n');
    more.extend(csv_good("hostile_later", 2));
    append(&file, &more);
    let obs = s.wait_calls(&mut agent, "hostile_later", 2, Duration::from_secs(30));
    assert_eq!(obs.input.unparsed, 3, "{:?}", obs.input);
    let err = stop_agent(&mut agent, &s.stderr);
    show("hostile", &err);
    assert_eq!(count(&err, "not recognized as log entries"), 1, "said once:\n{err}");
    assert!(err.contains("postgresql-1.csv") && err.contains("offset"), "file and offset named:\n{err}");
}

#[test]
fn hostile_invalid_utf8_in_statements_is_replaced_counted_and_said_once() {
    let _took = Took("hostile_invalid_utf8_in_statements_is_replaced_counted_and_said_once", Instant::now());
    let s = Setup::new("pattern = \"postgresql-*.csv\"");
    let mut bytes = csv_good("hostile_before", 2);
    for i in 0..3 {
        let mut stmt = b"SELECT '".to_vec();
        stmt.extend_from_slice(&[0xff, 0xfe, 0xc3, b'(']);
        stmt.extend_from_slice(format!("' AS hostile_latin1_{i}").as_bytes());
        bytes.extend(csv_record(500 + i, &stmt));
    }
    bytes.extend(csv_good("hostile_after", 3));
    fs::write(s.logs.join("postgresql-1.csv"), &bytes).unwrap();
    let mut agent = s.start();
    let obs = s.wait_calls(&mut agent, "hostile_after", 3, Duration::from_secs(30));
    assert_eq!(calls(&obs, "hostile_latin1_"), 3, "the entries with bad bytes are kept");
    assert_eq!(obs.input.invalid_utf8, 3, "{:?}", obs.input);
    // The replacement character never reaches a masked text: it was in a literal.
    assert!(obs.statements.keys().all(|k| !k.text.contains('\u{fffd}')), "{:?}", obs.statements.keys());
    let err = stop_agent(&mut agent, &s.stderr);
    show("hostile", &err);
    assert_eq!(count(&err, "not valid UTF-8"), 1, "said once:\n{err}");
    assert!(err.contains("postgresql-1.csv"), "file named:\n{err}");
}

#[test]
fn hostile_csv_record_with_an_unterminated_quote_does_not_swallow_what_follows() {
    let _took = Took("hostile_csv_record_with_an_unterminated_quote_does_not_swallow_what_follows", Instant::now());
    let s = Setup::new("pattern = \"postgresql-*.csv\"");
    let file = s.logs.join("postgresql-1.csv");
    let mut bytes = csv_good("hostile_before", 2);
    // A record cut inside its quoted message (a crash mid-write), then the
    // server goes on appending whole records to the same file.
    let cut = csv_record(400, b"SELECT 'cut here");
    bytes.extend_from_slice(&cut[..cut.iter().position(|b| *b == b'\'').unwrap() + 9]);
    bytes.push(b'\n');
    bytes.extend(csv_good("hostile_after", 5));
    fs::write(&file, &bytes).unwrap();
    let mut agent = s.start();
    let obs = s.wait_calls(&mut agent, "hostile_after", 5, Duration::from_secs(30));
    assert_eq!(calls(&obs, "hostile_before"), 2);
    assert!(obs.input.unparsed >= 1, "the broken record is a parse failure: {:?}", obs.input);
    // And the file goes on normally.
    append(&file, &csv_good("hostile_later", 3));
    let obs = s.wait_calls(&mut agent, "hostile_later", 3, Duration::from_secs(30));
    assert_eq!(calls(&obs, "hostile_after"), 5);
    let err = stop_agent(&mut agent, &s.stderr);
    show("hostile", &err);
    assert_eq!(count(&err, "not recognized as log entries"), 1, "said once:\n{err}");
}

#[test]
fn hostile_json_truncated_object_loses_only_itself() {
    let _took = Took("hostile_json_truncated_object_loses_only_itself", Instant::now());
    let s = Setup::new("pattern = \"postgresql-*.json\"");
    let file = s.logs.join("postgresql-1.json");
    let whole = json_line(600, "SELECT 1 AS hostile_cut");
    let mut text = json_good("hostile_before", 2);
    // A truncated object on a line of its own …
    text.push_str(&whole[..whole.len() / 2]);
    text.push('\n');
    text.push_str(&json_good("hostile_after", 3));
    // … and one cut without a newline, the next record glued to it (the
    // server restarted and appended to the same file).
    text.push_str(&whole[..whole.len() / 3]);
    text.push_str(&json_good("hostile_glued", 2));
    fs::write(&file, &text).unwrap();
    let mut agent = s.start();
    let obs = s.wait_calls(&mut agent, "hostile_glued", 2, Duration::from_secs(30));
    assert_eq!((calls(&obs, "hostile_before"), calls(&obs, "hostile_after")), (2, 3));
    assert_eq!(calls(&obs, "hostile_cut"), 0);
    assert_eq!(obs.input.unparsed, 2, "one per truncated object: {:?}", obs.input);
    let err = stop_agent(&mut agent, &s.stderr);
    show("hostile", &err);
    assert_eq!(count(&err, "not recognized as log entries"), 1, "said once:\n{err}");
    assert!(err.contains("postgresql-1.json"), "file named:\n{err}");
}

#[test]
fn hostile_prefix_that_matches_nothing_is_said_once_and_matching_lines_still_count() {
    let _took = Took("hostile_prefix_that_matches_nothing_is_said_once_and_matching_lines_still_count", Instant::now());
    let s = Setup::new(&format!("pattern = \"postgresql-*.log\"\nformat = \"stderr\"\nprefix = {PREFIX:?}"));
    let file = s.logs.join("postgresql-1.log");
    // The server's log_line_prefix is not the configured one.
    let foreign: String = (0..20)
        .map(|i| {
            format!(
                "<2026-11-24 09:00:00 UTC pid={i}> LOG:  duration: 1.000 ms  statement: SELECT {i} AS hostile_foreign\n"
            )
        })
        .collect();
    fs::write(&file, format!("{foreign}{}", stderr_good("hostile_after", 3))).unwrap();
    let mut agent = s.start();
    let obs = s.wait_calls(&mut agent, "hostile_after", 3, Duration::from_secs(30));
    assert_eq!(calls(&obs, "hostile_foreign"), 0);
    assert_eq!(obs.input.unparsed, 20, "every foreign line is a parse failure: {:?}", obs.input);
    // Another file, as foreign (other pids: not taken for a copy of the first).
    let foreign2: String = (0..20)
        .map(|i| format!("<2026-11-24 09:01:00 UTC pid={}> LOG:  statement: SELECT {i} AS hostile_foreign\n", 500 + i))
        .collect();
    append(&s.logs.join("postgresql-2.log"), foreign2.as_bytes());
    wait_for(&s.receiver, &mut agent, &s.stderr, Duration::from_secs(30), "the second file's 20 failures", |o| {
        (o.input.unparsed == 40).then_some(())
    });
    let err = stop_agent(&mut agent, &s.stderr);
    show("hostile", &err);
    assert_eq!(count(&err, "not recognized as log entries"), 1, "said once:\n{err}");
    assert!(err.contains("log_line_prefix"), "the message points at the prefix:\n{err}");
}

/// The log file (`postgresql.csv`, a fixed name) is deleted and something
/// that is not a file takes its name; later a file again.
fn replaced_by(kind: &str, make: impl Fn(&Path)) {
    let s = Setup::new("pattern = \"postgresql*.csv\"");
    let file = s.logs.join("postgresql.csv");
    fs::write(&file, csv_good("hostile_before", 3)).unwrap();
    let mut agent = s.start();
    s.wait_calls(&mut agent, "hostile_before", 3, Duration::from_secs(30));
    fs::remove_file(&file).unwrap();
    make(&file);
    s.wait_stderr(&mut agent, &format!("is a {kind}, not a regular file"), Duration::from_secs(30));
    // Several polls and batches with it still there: said once.
    s.wait_batches(&mut agent, 3);
    let obs = s.receiver.observations();
    assert!(obs.input.unreadable_files >= 1, "not counted: {:?}", obs.input);
    if kind == "directory" {
        fs::remove_dir(&file).unwrap();
    } else {
        fs::remove_file(&file).unwrap();
    }
    fs::write(&file, csv_good("hostile_after", 4)).unwrap();
    s.wait_calls(&mut agent, "hostile_after", 4, Duration::from_secs(30));
    let err = stop_agent(&mut agent, &s.stderr);
    show("hostile", &err);
    assert_eq!(count(&err, "not a regular file"), 1, "said once:\n{err}");
    assert!(err.contains("postgresql.csv"), "file named:\n{err}");
    assert_eq!(calls(&s.receiver.observations(), "hostile_before"), 3, "nothing read twice across the swap");
}

#[test]
fn hostile_log_file_replaced_by_a_directory() {
    let _took = Took("hostile_log_file_replaced_by_a_directory", Instant::now());
    replaced_by("directory", |p| fs::create_dir(p).unwrap());
}

#[test]
fn hostile_log_file_replaced_by_a_fifo() {
    let _took = Took("hostile_log_file_replaced_by_a_fifo", Instant::now());
    replaced_by("FIFO", |p| {
        let ok = Command::new("mkfifo").arg(p).status().unwrap();
        assert!(ok.success(), "mkfifo failed");
    });
}

#[test]
fn hostile_permission_denied_is_said_once_and_the_file_is_read_once_readable() {
    let _took = Took("hostile_permission_denied_is_said_once_and_the_file_is_read_once_readable", Instant::now());
    // Root reads any file whatever its mode, so the agent runs as the
    // unprivileged user the PostgreSQL tests use (created on first use).
    let s = Setup::new("pattern = \"postgresql-*.csv\"");
    let ids = crate::support::cluster::server_user_ids();
    if let Some((uid, gid)) = ids {
        // The agent's own files: config, state dir, log dir (listable).
        fs::set_permissions(s.work.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let status = Command::new("chown").args(["-R", &format!("{uid}:{gid}")]).arg(s.work.path()).status().unwrap();
        assert!(status.success());
    }
    fs::write(s.logs.join("postgresql-1.csv"), csv_good("hostile_before", 2)).unwrap();
    let locked = s.logs.join("postgresql-2.csv");
    fs::write(&locked, csv_good("hostile_after", 3)).unwrap();
    // Owned by root (or by us) and mode 000: the agent may not open it.
    if is_root() {
        let status = Command::new("chown").args(["0:0"]).arg(&locked).status().unwrap();
        assert!(status.success());
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();

    // setpriv execs the agent (no fork): the child's pid is the agent's.
    let mut cmd = match ids {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".to_owned(), "--".to_owned()]);
            c.arg(env!("CARGO_BIN_EXE_querywatch"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_querywatch")),
    };
    cmd.args(["agent", "--config"])
        .arg(&s.config)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("QUERYWATCH_DSN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&s.stderr).unwrap());
    let mut agent = Agent(cmd.spawn().unwrap());
    s.wait_calls(&mut agent, "hostile_before", 2, Duration::from_secs(30));
    s.wait_stderr(&mut agent, "permission denied", Duration::from_secs(30));
    s.wait_batches(&mut agent, 3);
    let obs = s.receiver.observations();
    assert_eq!(calls(&obs, "hostile_after"), 0);
    assert!(obs.input.unreadable_files >= 1, "not counted: {:?}", obs.input);
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o644)).unwrap();
    s.wait_calls(&mut agent, "hostile_after", 3, Duration::from_secs(30));
    let err = stop_agent(&mut agent, &s.stderr);
    show("hostile", &err);
    assert_eq!(count(&err, "permission denied"), 1, "said once:\n{err}");
    assert!(err.contains("postgresql-2.csv"), "file named:\n{err}");
}

/// A 64 KiB tmpfs on `dir`, unmounted on drop (root only).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(dir).output().ok()?;
        if !out.status.success() {
            eprintln!("mount tmpfs failed: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        // Fill it: a name the spool ignores, every byte the fs has.
        let mut f = fs::File::create(dir.join("filler")).unwrap();
        let block = [0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full spool and the collector down: the agent says so once, holds
/// what it read (the log is the buffer), and when the collector is back
/// everything arrives once. SIGTERM in that state stops it (`stop_midway`),
/// and the next start sends what the first could not.
fn spool_full(stop_midway: bool) {
    if !is_root() {
        // Without root there is no mount, and a spool that is merely
        // unwritable fails at start (a configuration error), not mid-run.
        eprintln!("hostile spool test: SKIPPED (needs root to mount a small tmpfs)");
        return;
    }
    let mut s = Setup::new("pattern = \"postgresql-*.csv\"");
    let Some(_tmpfs) = Tmpfs::mount(&s.state_dir().join("spool")) else {
        panic!("cannot mount a tmpfs as root: the disk-full case needs one");
    };
    let file = s.logs.join("postgresql-1.csv");
    fs::write(&file, csv_good("hostile_before", 2)).unwrap();
    let mut agent = s.start();
    s.wait_calls(&mut agent, "hostile_before", 2, Duration::from_secs(30));
    s.receiver.down();
    append(&file, &csv_good("hostile_down_a", 4));
    // The batch is retried for its time budget (15 s), then the spool fails.
    s.wait_stderr(&mut agent, "cannot write to the spool", Duration::from_secs(60));
    append(&file, &csv_good("hostile_down_b", 3));
    if stop_midway {
        // By now the exporter's queue (4 batches) has filled behind the held
        // batch: the first one was retried for 15 s, one interval a second.
        // The loop waits to submit, and must still hear SIGTERM.
        let t = Instant::now();
        let err = stop_agent(&mut agent, &s.stderr);
        show("hostile", &err);
        show("hostile", &err);
        eprintln!("SIGTERM with the spool full and the collector down: stopped in {:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(20));
        assert_eq!(count(&err, "cannot write to the spool"), 1, "said once:\n{err}");
        s.receiver.up();
        agent = s.start();
    } else {
        s.wait_batches_down(&mut agent, 3);
        s.receiver.up();
    }
    s.wait_calls(&mut agent, "hostile_down_a", 4, Duration::from_secs(60));
    let obs = s.wait_calls(&mut agent, "hostile_down_b", 3, Duration::from_secs(60));
    assert_eq!(calls(&obs, "hostile_before"), 2, "nothing twice");
    let err = stop_agent(&mut agent, &s.stderr);
    show("hostile", &err);
    if !stop_midway {
        assert_eq!(count(&err, "cannot write to the spool"), 1, "said once:\n{err}");
        assert!(err.contains("No space left"), "the cause is named:\n{err}");
    }
}

impl Setup {
    /// With the receiver down: waits `n` of the agent's intervals (1 s),
    /// checking it stays up — time for a repeated message to show.
    fn wait_batches_down(&mut self, agent: &mut Child, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(n);
        while Instant::now() < deadline {
            assert!(agent.try_wait().unwrap().is_none(), "the agent exited:\n{}", read(&self.stderr));
            thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn hostile_spool_on_a_full_disk_holds_the_batch_and_loses_nothing() {
    let _took = Took("hostile_spool_on_a_full_disk_holds_the_batch_and_loses_nothing", Instant::now());
    spool_full(false);
}

#[test]
fn hostile_sigterm_with_a_full_spool_and_the_collector_down_stops_the_agent() {
    let _took = Took("hostile_sigterm_with_a_full_spool_and_the_collector_down_stops_the_agent", Instant::now());
    spool_full(true);
}
