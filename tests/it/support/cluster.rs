//! Throwaway PostgreSQL clusters: `initdb` in a temp dir, a free port, the
//! server run as an unprivileged user, stopped and removed on drop.
//!
//! As root (CI), `initdb` refuses to run, so server binaries run through
//! `runuser -u querywatch-pg` (the system user is created on first use, like
//! `tests/fixtures/generate.sh` does). Clients (`psql`, `pgbench`) connect over
//! TCP to 127.0.0.1 and run as the test's own user.
//!
//! Missing PostgreSQL is a test failure that says how to fix it
//! (`scripts/deps.sh`), never a silent pass; `QUERYWATCH_SKIP_PG=1` is the
//! explicit opt-out, checked with [`skip_pg`].

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// The system user that owns clusters when the tests run as root.
pub const SERVER_USER: &str = "querywatch-pg";
/// The bootstrap superuser of every cluster (`initdb -U`); trust auth.
pub const SUPERUSER: &str = "postgres";
const HOST: &str = "127.0.0.1";

/// Interval between polls of a condition (readiness, a child's exit).
const POLL: Duration = Duration::from_millis(50);

/// The `tests/fixtures` directory of the repository.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The workload shared with the fixture generator.
pub fn workload_dir() -> PathBuf {
    fixtures_dir().join("workload")
}

/// True when the PostgreSQL-backed tests are explicitly switched off with
/// `QUERYWATCH_SKIP_PG=1`; says so on stderr, since a skipped test passes.
pub fn skip_pg(test: &str) -> bool {
    let skip = std::env::var_os("QUERYWATCH_SKIP_PG").is_some_and(|v| v == "1");
    if skip {
        eprintln!("{test}: SKIPPED because QUERYWATCH_SKIP_PG=1 (needs a real PostgreSQL server)");
    }
    skip
}

/// The PostgreSQL bin directory; panics with the fix when there is none.
pub fn pg_bin() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(find_pg_bin) {
        Ok(p) => p,
        Err(why) => panic!(
            "PostgreSQL server binaries not found ({why}).\n\
             Run `scripts/deps.sh` (as root it installs postgresql, postgresql-contrib, \
             libclang-dev and pgbadger), or set QUERYWATCH_SKIP_PG=1 to skip the tests \
             that need a real server."
        ),
    }
}

/// `QUERYWATCH_PG_BIN`, else `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/<major>/bin` — the same order as `scripts/deps.sh`.
fn find_pg_bin() -> Result<PathBuf, String> {
    let has_server = |p: &Path| p.join("initdb").is_file() && p.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("QUERYWATCH_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(format!("QUERYWATCH_PG_BIN={} has no initdb/pg_ctl", dir.display()))
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no pg_config with a server bin dir, and /usr/lib/postgresql: {e}"))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_server(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| "no /usr/lib/postgresql/<major>/bin with initdb".to_owned())
}

/// Who runs the server binaries.
enum Owner {
    /// Not root: the current user.
    Me,
    /// Root: the unprivileged system user, with its ids for chown.
    User { uid: u32, gid: u32 },
}

fn owner() -> &'static Owner {
    static OWNER: OnceLock<Owner> = OnceLock::new();
    OWNER.get_or_init(|| {
        // /proc/self belongs to the process's effective uid.
        let euid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or_else(|_| {
            let out = run_checked(Command::new("id").arg("-u"), "id -u");
            stdout_of(&out).trim().parse().expect("`id -u` prints a number")
        });
        if euid != 0 {
            return Owner::Me;
        }
        if !user_exists() {
            // Another process may create it at the same moment: judge by the
            // result, not by useradd's exit status.
            let out = Command::new("useradd")
                .args(["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin"])
                .arg(SERVER_USER)
                .output()
                .expect("running useradd");
            assert!(
                user_exists(),
                "could not create the system user {SERVER_USER} to run PostgreSQL as (initdb refuses root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let id = |flag: &str| -> u32 {
            let out = run_checked(Command::new("id").args([flag, SERVER_USER]), "id");
            stdout_of(&out).trim().parse().expect("`id` prints a number")
        };
        Owner::User { uid: id("-u"), gid: id("-g") }
    })
}

/// The uid and gid of [`SERVER_USER`] (created on first use) when the tests
/// run as root; `None` otherwise (then everything runs as the current user).
pub fn server_user_ids() -> Option<(u32, u32)> {
    match owner() {
        Owner::Me => None,
        Owner::User { uid, gid } => Some((*uid, *gid)),
    }
}

fn user_exists() -> bool {
    Command::new("id").arg(SERVER_USER).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Files appended to `postgresql.conf`, in order (e.g. the workload's).
    pub conf_files: Vec<PathBuf>,
    /// Settings appended after the files (later ones win); values are quoted
    /// for you.
    pub settings: Vec<(String, String)>,
    /// How long the server may take to accept connections.
    pub startup_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { conf_files: Vec::new(), settings: Vec::new(), startup_timeout: Duration::from_secs(60) }
    }
}

impl ClusterOptions {
    /// The settings `tests/fixtures/generate.sh` uses: the workload's
    /// `postgresql.conf` (all statements logged, three log formats,
    /// pg_stat_statements and auto_explain preloaded).
    pub fn workload() -> Self {
        ClusterOptions { conf_files: vec![workload_dir().join("postgresql.conf")], ..ClusterOptions::default() }
    }

    /// Adds one setting, e.g. `.set("log_min_duration_statement", "0")`.
    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A running throwaway cluster. Dropping it stops the server
/// (`pg_ctl stop -m immediate`) and removes its directory.
pub struct PgCluster {
    bin: &'static Path,
    /// Owned by the server user; removed (by TempDir) after Drop stops the
    /// server.
    dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    /// The postmaster (or runuser running it) while the server runs.
    postmaster: Option<Child>,
}

impl PgCluster {
    /// initdb, configure, start, and wait until the server accepts
    /// connections (polling `pg_isready` until a deadline).
    pub fn start(options: &ClusterOptions) -> PgCluster {
        let bin = pg_bin();
        // As root, under /tmp rather than $TMPDIR: the server user must be
        // able to reach its data dir, and a root-only TMPDIR would stop it.
        let parent = match owner() {
            Owner::Me => std::env::temp_dir(),
            Owner::User { .. } => PathBuf::from("/tmp"),
        };
        let dir = tempfile::Builder::new()
            .prefix("querywatch-pg.")
            .tempdir_in(parent)
            .expect("creating a temp dir for the cluster");
        if let Owner::User { uid, gid } = owner() {
            std::os::unix::fs::chown(dir.path(), Some(*uid), Some(*gid))
                .expect("handing the cluster dir to the server user");
        }
        let data = dir.path().join("data");
        let mut cluster = PgCluster { bin, dir, data, port: 0, postmaster: None };

        // C locale and UTF8: output independent of the machine's locale.
        cluster.server_cmd_checked(
            "initdb",
            &["-D", cluster.data_arg(), "-U", SUPERUSER, "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"],
        );
        cluster.write_config(options);

        // The port is free when we look; someone may take it before the
        // postmaster binds it, so a bind failure means "try another port".
        for _attempt in 0..5 {
            cluster.port = free_port();
            match cluster.try_start(options.startup_timeout) {
                Ok(()) => return cluster,
                Err(StartError::PortTaken) => continue,
                Err(StartError::Failed(why)) => panic!("PostgreSQL did not start: {why}"),
            }
        }
        panic!("PostgreSQL did not start: the chosen ports kept being taken");
    }

    fn write_config(&self, options: &ClusterOptions) {
        let mut conf = String::from("\n# ---- added by tests/it/support (PgCluster) ----\n");
        for file in &options.conf_files {
            let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            let _ = writeln!(conf, "# from {}\n{text}", file.display());
        }
        for (name, value) in &options.settings {
            let _ = writeln!(conf, "{name} = '{}'", value.replace('\'', "''"));
        }
        let _ = writeln!(conf, "listen_addresses = '{HOST}'");
        // The socket in the private dir never collides with a system server.
        let _ = writeln!(conf, "unix_socket_directories = '{}'", self.dir.path().display());
        let path = self.data.join("postgresql.conf");
        let mut text = fs::read_to_string(&path).expect("reading postgresql.conf after initdb");
        text.push_str(&conf);
        fs::write(&path, text).expect("writing postgresql.conf");
    }

    fn try_start(&mut self, timeout: Duration) -> Result<(), StartError> {
        // The postmaster is our child (through runuser as root), not a
        // daemon: its exit is observable with try_wait, so a server that
        // fails to start is noticed at once instead of at the deadline, and
        // an interrupted test run takes it down with its process group.
        let startup_log = self.dir.path().join("startup.log");
        let log = fs::File::create(&startup_log).expect("creating startup.log");
        let log2 = log.try_clone().expect("cloning a file handle");
        let port = self.port.to_string();
        let child = self
            .server_command("postgres")
            .args(["-D", self.data_arg(), "-p", &port])
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("starting postgres");
        // From here on Drop stops it, whichever way this function ends.
        let child = self.postmaster.insert(child);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for postgres") {
                self.postmaster = None;
                let logs = self.startup_logs();
                if logs.contains("could not bind") || logs.contains("Address already in use") {
                    return Err(StartError::PortTaken);
                }
                return Err(StartError::Failed(format!("the postmaster exited ({status}):\n{logs}")));
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", HOST, "-U", SUPERUSER, "-d", "postgres", "-t", "2", "-p", &port])
                .status()
                .expect("running pg_isready");
            if ready.success() {
                // Make sure it is our server that answers on that port.
                let dir = self.psql("SHOW data_directory");
                let ours = fs::canonicalize(&self.data).expect("canonical data dir");
                if Path::new(dir.trim()) == ours {
                    return Ok(());
                }
                return Err(StartError::Failed(format!("port {port} answered by a server with data_directory {dir}")));
            }
            if Instant::now() > deadline {
                return Err(StartError::Failed(format!(
                    "not accepting connections after {timeout:?}:\n{}",
                    self.startup_logs()
                )));
            }
            thread::sleep(POLL);
        }
    }

    /// The startup log plus the server's own logs, for failure messages.
    fn startup_logs(&self) -> String {
        let mut text = fs::read_to_string(self.dir.path().join("startup.log")).unwrap_or_default();
        if let Ok(entries) = fs::read_dir(self.log_dir()) {
            for entry in entries.filter_map(Result::ok) {
                if entry.path().extension() == Some(OsStr::new("log")) {
                    text.push_str(&fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
        }
        text
    }

    /// Runs a server binary as the cluster owner, from the cluster dir (the
    /// repository may not be readable by the system user).
    fn server_command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = match owner() {
            Owner::Me => Command::new(&exe),
            Owner::User { .. } => {
                let mut c = Command::new("runuser");
                c.args(["-u", SERVER_USER, "--"]).arg(&exe);
                c
            }
        };
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    fn server_cmd(&self, program: &str, args: &[&str]) -> Output {
        self.server_command(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    fn server_cmd_checked(&self, program: &str, args: &[&str]) -> Output {
        let out = self.server_cmd(program, args);
        assert!(
            out.status.success(),
            "{program} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The data directory as an argument (temp dirs have UTF-8 paths).
    fn data_arg(&self) -> &str {
        self.data.to_str().expect("the temp dir path is UTF-8")
    }

    pub fn host(&self) -> &'static str {
        HOST
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bin_dir(&self) -> &Path {
        self.bin
    }

    /// Where the server's logging collector writes (`log_directory = 'log'`).
    pub fn log_dir(&self) -> PathBuf {
        self.data.join("log")
    }

    /// Runs `sql` with psql as the superuser in database `postgres`; returns
    /// the unaligned, tuples-only output. Panics (with psql's stderr) on error.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in(SUPERUSER, "postgres", &["-c", sql])
    }

    /// psql as `user` in `db` with extra arguments (`-c SQL`, `-f FILE`, …).
    pub fn psql_in(&self, user: &str, db: &str, args: &[&str]) -> String {
        let out = self
            .client("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", db])
            .args(args)
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout_of(&out)
    }

    /// A client binary (psql, pgbench, …) set up for this cluster.
    pub fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        self.client_env(&mut cmd);
        cmd
    }

    /// PGHOST/PGPORT/PG_BIN for this cluster, and nothing inherited that could
    /// send a client elsewhere (service files, PGOPTIONS, …).
    fn client_env(&self, cmd: &mut Command) {
        cmd.env_remove("PGSERVICE")
            .env_remove("PGPASSFILE")
            .env_remove("PGOPTIONS")
            .env_remove("PGDATABASE")
            .env_remove("PGUSER")
            .env("PGHOST", HOST)
            .env("PGPORT", self.port.to_string())
            .env("PG_BIN", self.bin)
            .stdin(Stdio::null());
    }

    /// Runs `tests/fixtures/workload/run.sh MODE` against this cluster, the
    /// same workload the fixture generator runs. Fails the test if it fails
    /// or does not finish within `timeout`.
    pub fn run_workload(&self, mode: &str, timeout: Duration) {
        // Output to a file, not a pipe: nobody reads a pipe while we poll, and
        // a full pipe would block the workload.
        let out_path = self.dir.path().join(format!("workload-{mode}.out"));
        let out = fs::File::create(&out_path).expect("creating the workload output file");
        let err = out.try_clone().expect("cloning a file handle");
        let mut run = Command::new("bash");
        run.arg(workload_dir().join("run.sh")).arg(mode);
        self.client_env(&mut run);
        run.stdout(out).stderr(err);
        let mut child = run.spawn().expect("starting workload/run.sh");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for workload/run.sh") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "workload/run.sh {mode} did not finish within {timeout:?}; output:\n{}",
                    fs::read_to_string(&out_path).unwrap_or_default()
                );
            }
            thread::sleep(POLL);
        };
        assert!(
            status.success(),
            "workload/run.sh {mode} failed ({status}); output:\n{}",
            fs::read_to_string(&out_path).unwrap_or_default()
        );
    }

    /// Clean shutdown (`-m fast`, waiting): afterwards every log file is
    /// complete, flushed by the logging collector.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.postmaster.take() {
            self.server_cmd_checked("pg_ctl", &["-D", self.data_arg(), "-m", "fast", "-w", "-t", "60", "stop"]);
            let _ = child.wait();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.postmaster.take() {
            // Immediate: nobody needs a clean shutdown of a throwaway cluster,
            // and this also runs while a failed test unwinds.
            let stopped =
                self.server_cmd("pg_ctl", &["-D", self.data_arg(), "-m", "immediate", "-w", "stop"]).status.success();
            if !stopped {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // The TempDir field removes the directory after this.
    }
}

enum StartError {
    PortTaken,
    Failed(String),
}

/// A port nobody listens on right now: bind port 0 and let the kernel choose.
fn free_port() -> u16 {
    let listener = TcpListener::bind((HOST, 0)).expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address of a bound socket").port()
}

fn run_checked(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The harness itself: settings arrive, the port is ours, the server logs
/// into `log_dir()`, and dropping the cluster stops the server and removes
/// its directory.
#[test]
fn cluster_starts_configured_and_cleans_up() {
    if skip_pg("cluster_starts_configured_and_cleans_up") {
        return;
    }
    let options = ClusterOptions::default()
        .set("logging_collector", "on")
        .set("log_directory", "log")
        .set("cluster_name", "it's quoted");
    let cluster = PgCluster::start(&options);
    assert_eq!(cluster.psql("SHOW cluster_name").trim(), "it's quoted");
    assert_eq!(
        cluster.psql("SELECT inet_server_addr() || ' ' || inet_server_port()").trim(),
        format!("{}/32 {}", cluster.host(), cluster.port())
    );
    let version = cluster.psql("SHOW server_version_num");
    assert!(version.trim().parse::<u32>().is_ok_and(|v| v >= 150_000), "PostgreSQL 15+ needed: {version}");
    let logs: Vec<_> = fs::read_dir(cluster.log_dir()).expect("log dir").collect();
    assert!(!logs.is_empty(), "nothing in {}", cluster.log_dir().display());

    let dir = cluster.dir.path().to_owned();
    let pg_isready = cluster.bin_dir().join("pg_isready");
    let port = cluster.port().to_string();
    drop(cluster);
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    // Stopped: nothing answers on its port any more (exit status 2).
    let status =
        Command::new(pg_isready).args(["-q", "-h", HOST, "-t", "2", "-p", &port]).status().expect("running pg_isready");
    assert_eq!(status.code(), Some(2), "the server still answers after drop");
}
