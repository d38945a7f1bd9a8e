//! The live agent's own cost (issue 3): CPU and RSS of `querywatch agent`
//! while a real PostgreSQL 15 logs every statement at 5,000 statements/s.
//! Target: < 2% of one core and < 40 MB RSS.
//!
//!     cargo bench --bench agent
//!
//! One run: a throwaway cluster (temp dir, server as the unprivileged user
//! `querywatch-pg` when run as root, as bench/generate-log.sh does) with
//! `logging_collector = on`, stderr logs with the agent's documented prefix
//! `%m [%p] %q%u@%d `, `log_min_duration_statement = 0` and a 10 MB
//! `log_rotation_size`; an OTLP/HTTP sink in this process (a std-only HTTP/1.1
//! server answering every `POST /v1/metrics` and `/v1/logs` with 200 and an
//! empty protobuf body); `querywatch agent` (release binary, `interval =
//! "10s"`, protocol http/protobuf, gzip) following the log directory; then
//! pgbench at `--rate` 5,000 transactions/s of one cheap SELECT each, `-M
//! simple`, 4 clients, for LOAD_SECS.
//!
//! Sampled every second: the agent's utime+stime (`/proc/<pid>/stat`) and
//! VmRSS; the whole PostgreSQL process tree's CPU (postmaster with its reaped
//! children plus live children) for context, and pgbench's CPU from
//! `/usr/bin/time`. After the load, the agent gets one more interval to
//! export, then SIGTERM (it exports the last interval on the way out); the
//! sink's requests are decoded and the exported calls compared with the
//! `duration:` lines the server wrote while the agent ran. Exits non-zero
//! when the agent exported nothing or lost statements; the targets are
//! reported, not enforced (a shared 2-core machine). Results are recorded by
//! hand in BENCHMARKS.md; the run's files stay in `target/bench-agent/`.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it only says how
//! to run it.

use anyhow::{Context, Result, bail, ensure};
use prost::Message;
use querywatch_wire::otlp::{ExportMetricsServiceRequest, decode_metrics};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The agent's documented example prefix (deploy/agent.toml): user and
/// database names come with every entry.
const PREFIX: &str = "%m [%p] %q%u@%d ";
const RATE: u32 = 5_000;
const CLIENTS: u32 = 4;
const LOAD_SECS: u64 = 60;
/// Idle agent before the load (a window of its own, for context).
const IDLE_SECS: u64 = 10;
/// CPU is reported per window of this many seconds (the agent's interval).
const WINDOW_SECS: usize = 10;
const PG_USER: &str = "querywatch-pg";
const SCRIPT: &str = "\\set aid random(1, 100000 * :scale)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n";

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("agent bench: the live agent's CPU and RSS at 5,000 statements/s; run `cargo bench --bench agent`");
        return Ok(());
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = repo.join("target/bench-agent");
    fs::create_dir_all(&out)?;
    ensure!(Path::new("/usr/bin/time").exists(), "/usr/bin/time not found: run scripts/deps.sh (as root)");
    let deps = Command::new("bash").arg(repo.join("scripts/deps.sh")).stderr(Stdio::inherit()).output()?;
    ensure!(deps.status.success(), "scripts/deps.sh failed: run it (as root) first");
    let pg_bin = PathBuf::from(String::from_utf8(deps.stdout)?.trim());
    let clk_tck: f64 = String::from_utf8(Command::new("getconf").arg("CLK_TCK").output()?.stdout)?
        .trim()
        .parse()
        .context("getconf CLK_TCK")?;

    let cluster = Cluster::start(&pg_bin)?;
    let version = String::from_utf8(Command::new(pg_bin.join("postgres")).arg("--version").output()?.stdout)?;
    println!("machine: {} cores, {}", num_cpus(), cpu_model());
    println!("server: {}, cluster in {}", version.trim(), cluster.work.path().display());
    cluster.psql("postgres", "CREATE ROLE bench LOGIN")?;
    cluster.psql("postgres", "CREATE DATABASE bench OWNER bench")?;
    let init = cluster.client("pgbench").args(["-U", "bench", "-i", "-s", "1", "-q", "bench"]).output()?;
    ensure!(init.status.success(), "pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr));

    let sink = Sink::start()?;
    let state_dir = cluster.work.path().join("agent-state");
    let config = out.join("agent.toml");
    fs::write(
        &config,
        format!(
            "node = \"bench-1\"\ncluster = \"bench\"\ninterval = \"10s\"\nstate_dir = {state:?}\n\
             [logs]\ndirectory = {dir:?}\npattern = \"postgresql-*.log\"\nformat = \"stderr\"\nprefix = {PREFIX:?}\n\
             [export]\nendpoint = \"http://{addr}\"\nprotocol = \"http/protobuf\"\n",
            state = state_dir.display().to_string(),
            dir = cluster.log_dir().display().to_string(),
            addr = sink.addr,
        ),
    )?;
    let agent_stderr = out.join("agent.stderr");
    let mut agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_querywatch"))
            .args(["agent", "--config"])
            .arg(&config)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
            .env_remove("OTEL_RESOURCE_ATTRIBUTES")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .env_remove("QUERYWATCH_DSN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&agent_stderr)?)
            .spawn()
            .context("starting querywatch agent")?,
    );
    let agent_pid = agent.0.id();
    // Ready: it says where it exports once the tailer and exporter are set up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&agent_stderr)?.contains("exporting every") {
        ensure!(agent.0.try_wait()?.is_none(), "the agent exited: {}", fs::read_to_string(&agent_stderr)?);
        ensure!(Instant::now() < deadline, "the agent did not start within 30s");
        thread::sleep(Duration::from_millis(50));
    }
    let lines_at_start = duration_lines(&cluster.log_dir())?;
    let postmaster = cluster.postmaster_pid()?;
    let sampler = Sampler { agent: agent_pid, postmaster, start: Instant::now() };

    // Idle agent.
    eprintln!("agent bench: {IDLE_SECS} s idle");
    let mut idle = Vec::new();
    sampler.sample_for(Duration::from_secs(IDLE_SECS), &mut idle)?;

    // The load.
    let script = cluster.work.path().join("select.pgbench");
    fs::write(&script, SCRIPT)?;
    let pgbench_out = out.join("pgbench.out");
    let pgbench_time = out.join("pgbench.time");
    eprintln!("agent bench: pgbench --rate {RATE} for {LOAD_SECS} s");
    let mut pgbench = cluster
        .client_env(&mut Command::new("/usr/bin/time"))
        .args(["-f", "%e %U %S", "-o"])
        .arg(&pgbench_time)
        .arg(pg_bin.join("pgbench"))
        .args(["-U", "bench", "-n", "-M", "simple", "--random-seed=42", "-P", "10"])
        .args(["-c", &CLIENTS.to_string(), "-j", "2", "-R", &RATE.to_string(), "-T", &LOAD_SECS.to_string(), "-f"])
        .arg(&script)
        .arg("bench")
        .stdout(fs::File::create(&pgbench_out)?)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting pgbench")?;
    let mut load = vec![sampler.sample()?];
    loop {
        thread::sleep(Duration::from_secs(1));
        if pgbench.try_wait()?.is_some() {
            break;
        }
        load.push(sampler.sample()?);
    }
    load.push(sampler.sample()?);
    let mut pgbench_err = String::new();
    pgbench.stderr.take().context("pgbench stderr")?.read_to_string(&mut pgbench_err)?;
    let status = pgbench.wait()?;
    fs::write(out.join("pgbench.stderr"), &pgbench_err)?;
    let pgbench_report = fs::read_to_string(&pgbench_out)?;
    ensure!(status.success(), "pgbench failed ({status}):\n{pgbench_err}\n{pgbench_report}");

    // One more interval to export what it read, then a clean stop.
    eprintln!("agent bench: drain ({WINDOW_SECS} s), then SIGTERM");
    let mut drain = Vec::new();
    sampler.sample_for(Duration::from_secs(WINDOW_SECS as u64 + 2), &mut drain)?;
    let hwm_kib = status_kib(agent_pid, "VmHWM")?;
    let lines_at_end = duration_lines(&cluster.log_dir())?;
    let (log_files, log_bytes) = dir_size(&cluster.log_dir())?;
    let term = Command::new("kill").args(["-TERM", &agent_pid.to_string()]).status()?;
    ensure!(term.success(), "kill -TERM {agent_pid} failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    let agent_status = loop {
        if let Some(status) = agent.0.try_wait()? {
            break status;
        }
        ensure!(Instant::now() < deadline, "the agent did not stop within 30s of SIGTERM");
        thread::sleep(Duration::from_millis(50));
    };
    let agent_err = fs::read_to_string(&agent_stderr)?;
    ensure!(agent_status.success(), "the agent exited with {agent_status}:\n{agent_err}");

    // Report.
    let load_wall = load.last().context("samples")?.at - load[0].at;
    println!();
    println!("load: {}", pgbench_summary(&pgbench_report));
    let logged = lines_at_end - lines_at_start;
    println!(
        "duration lines written while the agent ran: {logged} ({:.0}/s over the {load_wall:.1} s load)",
        logged as f64 / load_wall
    );
    let windows = cpu_windows(&load, clk_tck, |s| s.agent_ticks);
    let each: Vec<String> = windows.iter().map(|w| format!("{w:.2}")).collect();
    let agent_cpu = median(windows.clone());
    let agent_mean = cpu_between(&load[0], load.last().context("samples")?, clk_tck, |s| s.agent_ticks);
    let idle_cpu = cpu_between(&idle[0], idle.last().context("idle samples")?, clk_tck, |s| s.agent_ticks);
    let rss: Vec<f64> = load.iter().map(|s| s.agent_rss_kib as f64 / 1024.0).collect();
    let rss_median = median(rss.clone());
    let rss_max = rss.iter().copied().fold(0.0, f64::max);
    let hwm = hwm_kib as f64 / 1024.0;
    let pg_windows = cpu_windows(&load, clk_tck, |s| s.pg_ticks);
    let pg_cpu = median(pg_windows.clone());
    let pg_mean = cpu_between(&load[0], load.last().context("samples")?, clk_tck, |s| s.pg_ticks);
    let pgbench_cpu = pgbench_cpu(&fs::read_to_string(&pgbench_time)?)?;

    println!();
    println!("{:<34} {:>10} {:>10}  per 10 s window", "CPU, % of one core", "median", "mean");
    println!("{:<34} {agent_cpu:>10.2} {agent_mean:>10.2}  {}", "querywatch agent", each.join(" "));
    println!("{:<34} {:>10} {idle_cpu:>10.2}", "querywatch agent, idle (before)", "-");
    let pg_each: Vec<String> = pg_windows.iter().map(|w| format!("{w:.1}")).collect();
    println!("{:<34} {pg_cpu:>10.1} {pg_mean:>10.1}  {}", "PostgreSQL (all processes)", pg_each.join(" "));
    println!("{:<34} {:>10} {pgbench_cpu:>10.1}", "pgbench (whole run)", "-");
    println!();
    println!(
        "agent RSS MiB: median {rss_median:.1}, max sampled {rss_max:.1}, VmHWM {hwm:.1} (idle: {:.1})",
        idle.last().context("idle samples")?.agent_rss_kib as f64 / 1024.0
    );

    let seen = sink.seen.lock().map_err(|_| anyhow::anyhow!("sink lock poisoned"))?;
    let (metrics, logs) =
        (seen.iter().filter(|r| r.path == "/v1/metrics").count(), seen.iter().filter(|r| r.path == "/v1/logs").count());
    let bytes: usize = seen.iter().map(|r| r.body.len()).sum();
    let mut calls = 0u64;
    for r in seen.iter().filter(|r| r.path == "/v1/metrics") {
        let body = if r.gzip { gunzip(&r.body)? } else { r.body.clone() };
        let req = ExportMetricsServiceRequest::decode(&body[..]).context("decoding an export request")?;
        for (_, obs) in decode_metrics(&req).context("decoding metrics")?.batches {
            calls += obs.statements.values().map(|s| s.calls).sum::<u64>() + obs.overflow_calls;
        }
    }
    println!(
        "export: the sink saw {metrics} POST /v1/metrics and {logs} POST /v1/logs ({bytes} bytes on the wire); \
         {calls} calls exported"
    );
    println!(
        "verdict: CPU {agent_cpu:.2}% of one core (target < 2%): {}; RSS peak {:.1} MiB = {:.1} MB (target < 40 MB): {}",
        if agent_cpu < 2.0 { "MET" } else { "MISSED" },
        hwm.max(rss_max),
        hwm.max(rss_max) * 1.048576,
        if hwm.max(rss_max) * 1.048576 < 40.0 { "MET" } else { "MISSED" }
    );
    println!(
        "server log: {log_files} files, {:.1} MiB (log_rotation_size 10MB); agent: {}",
        log_bytes as f64 / (1024.0 * 1024.0),
        agent_err.lines().find_map(|l| l.strip_prefix("querywatch agent: stopped: ")).unwrap_or("no stop line")
    );
    println!("files: {}", out.display());
    ensure!(metrics > 0, "the agent exported no metrics");
    // Every statement the server logged while the agent ran is exported
    // once; at most one entry per file may wait for the next start (a stderr
    // entry is complete only when the next one begins).
    if calls > logged || logged - calls > log_files {
        bail!("the agent exported {calls} calls; the server logged {logged} duration lines meanwhile");
    }
    Ok(())
}

/// The agent's child process; killed if the bench fails before SIGTERM.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A throwaway cluster in a temp dir; stopped (immediate) and deleted on drop.
struct Cluster {
    pg_bin: PathBuf,
    work: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn start(pg_bin: &Path) -> Result<Cluster> {
        let work = tempfile::Builder::new().prefix("querywatch-bench-agent.").tempdir()?;
        let root = is_root()?;
        if root {
            let ok = Command::new("id").args(["-u", PG_USER]).stdout(Stdio::null()).stderr(Stdio::null()).status()?;
            if !ok.success() {
                let status = Command::new("useradd")
                    .args(["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER])
                    .status()?;
                ensure!(status.success(), "useradd {PG_USER} failed");
            }
            let status = Command::new("chown").arg(format!("{PG_USER}:")).arg(work.path()).status()?;
            ensure!(status.success(), "chown {} failed", work.path().display());
        }
        let mut cluster = Cluster { pg_bin: pg_bin.to_path_buf(), work, port: 0 };
        let data = cluster.data();
        cluster.as_pg(
            "initdb",
            &["-D", path_str(&data)?, "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"],
        )?;
        let conf = format!(
            "\n# added by benches/agent.rs\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{work}'\n\
             logging_collector = on\n\
             log_destination = 'stderr'\n\
             log_directory = 'log'\n\
             log_filename = 'postgresql-%Y%m%d_%H%M%S.log'\n\
             log_rotation_age = 0\n\
             log_rotation_size = '10MB'\n\
             log_line_prefix = '{PREFIX}'\n\
             lc_messages = 'C'\n\
             log_min_duration_statement = 0\n\
             log_timezone = 'UTC'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = 20\n\
             shared_buffers = '64MB'\n\
             jit = off\n",
            work = cluster.work.path().display()
        );
        fs::OpenOptions::new().append(true).open(data.join("postgresql.conf"))?.write_all(conf.as_bytes())?;
        let startup = cluster.work.path().join("startup.log");
        for _ in 0..5 {
            cluster.port = free_port()?;
            let port = format!("-p {}", cluster.port);
            let args = ["-D", path_str(&data)?, "-l", path_str(&startup)?, "-w", "-t", "60", "-o", &port, "start"];
            if cluster.as_pg("pg_ctl", &args).is_ok() {
                return Ok(cluster);
            }
        }
        bail!("the server did not start: {}", fs::read_to_string(&startup).unwrap_or_default())
    }

    fn data(&self) -> PathBuf {
        self.work.path().join("data")
    }

    fn log_dir(&self) -> PathBuf {
        self.data().join("log")
    }

    /// Runs a server binary as the cluster owner, from a directory it can read.
    fn as_pg(&self, bin: &str, args: &[&str]) -> Result<()> {
        let mut cmd = if is_root()? {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_USER, "--"]).arg(self.pg_bin.join(bin));
            c
        } else {
            Command::new(self.pg_bin.join(bin))
        };
        let out = cmd.args(args).current_dir(self.work.path()).stdin(Stdio::null()).output()?;
        ensure!(out.status.success(), "{bin} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// A client binary (psql, pgbench) connecting over TCP, with none of a
    /// developer's libpq settings (service, options, default database or user).
    fn client(&self, bin: &str) -> Command {
        let mut cmd = Command::new(self.pg_bin.join(bin));
        self.client_env(&mut cmd);
        cmd
    }

    fn client_env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("PGHOST", "127.0.0.1").env("PGPORT", self.port.to_string());
        for var in ["PGPASSFILE", "PGSERVICE", "PGOPTIONS", "PGDATABASE", "PGUSER"] {
            cmd.env_remove(var);
        }
        cmd
    }

    fn psql(&self, db: &str, sql: &str) -> Result<()> {
        let out = self
            .client("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", db, "-c", sql])
            .output()?;
        ensure!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    fn postmaster_pid(&self) -> Result<u32> {
        let pid = fs::read_to_string(self.data().join("postmaster.pid"))?;
        pid.lines().next().context("empty postmaster.pid")?.trim().parse().context("postmaster.pid")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let data = self.data().display().to_string();
            let _ = self.as_pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        }
    }
}

fn is_root() -> Result<bool> {
    let out = Command::new("id").arg("-u").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("non-UTF-8 path {}", p.display()))
}

/// A port nothing listens on right now (start retries if someone takes it).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `duration:` lines in every log file of `dir` (one per statement here:
/// simple protocol, every statement logged with its duration).
fn duration_lines(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        let mut reader = BufReader::new(fs::File::open(entry?.path())?);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line)? > 0 {
            n += u64::from(memmem(&line, b"LOG:  duration: "));
            line.clear();
        }
    }
    Ok(n)
}

/// Number of files in `dir` and their total size.
fn dir_size(dir: &Path) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for entry in fs::read_dir(dir)? {
        files += 1;
        bytes += entry?.metadata()?.len();
    }
    Ok((files, bytes))
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One request the sink received.
struct Request {
    path: String,
    gzip: bool,
    body: Vec<u8>,
}

/// The smallest OTLP/HTTP receiver: HTTP/1.1 with keep-alive, a
/// Content-Length body, 200 with an empty protobuf body (an
/// ExportMetricsServiceResponse with no partial success) for the two
/// OTLP paths, 404 otherwise. Lives as long as the process.
struct Sink {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Sink {
    fn start() -> Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink_seen = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = sink_seen.clone();
                thread::spawn(move || {
                    if let Err(e) = serve(stream, &seen) {
                        eprintln!("agent bench: sink connection: {e}");
                    }
                });
            }
        });
        Ok(Sink { addr, seen })
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<Request>>) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("").to_string());
        let (mut length, mut gzip) = (0usize, false);
        loop {
            let mut header = String::new();
            ensure!(reader.read_line(&mut header)? > 0, "connection closed in the headers");
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else { continue };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse().context("content-length")?,
                "content-encoding" => gzip = value.eq_ignore_ascii_case("gzip"),
                "transfer-encoding" => bail!("chunked bodies are not supported by this sink"),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let ok = method == "POST" && (path == "/v1/metrics" || path == "/v1/logs");
        if ok {
            seen.lock().map_err(|_| anyhow::anyhow!("sink lock poisoned"))?.push(Request { path, gzip, body });
            writer
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")?;
        } else {
            writer.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?;
        }
        writer.flush()?;
    }
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).context("gunzip")?;
    Ok(out)
}

/// One sample: seconds since the start, CPU ticks (utime+stime) of the agent
/// and of the PostgreSQL tree, the agent's VmRSS.
struct Sample {
    at: f64,
    agent_ticks: u64,
    pg_ticks: u64,
    agent_rss_kib: u64,
}

struct Sampler {
    agent: u32,
    postmaster: u32,
    start: Instant,
}

impl Sampler {
    fn sample(&self) -> Result<Sample> {
        let agent = proc_stat(self.agent)?.context("the agent is gone")?;
        Ok(Sample {
            at: self.start.elapsed().as_secs_f64(),
            agent_ticks: agent.ticks,
            pg_ticks: pg_tree_ticks(self.postmaster)?,
            agent_rss_kib: status_kib(self.agent, "VmRSS")?,
        })
    }

    /// Samples every second for `span` (plus one at the start).
    fn sample_for(&self, span: Duration, into: &mut Vec<Sample>) -> Result<()> {
        let end = Instant::now() + span;
        into.push(self.sample()?);
        while Instant::now() < end {
            thread::sleep(Duration::from_secs(1));
            into.push(self.sample()?);
        }
        Ok(())
    }
}

struct Stat {
    ppid: u32,
    /// utime + stime
    ticks: u64,
    /// cutime + cstime: children that exited and were waited for
    child_ticks: u64,
}

/// `/proc/<pid>/stat`, or None when the process is gone.
fn proc_stat(pid: u32) -> Result<Option<Stat>> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return Ok(None) };
    // Fields after the command name (which may hold spaces and parentheses).
    let rest = &text[text.rfind(')').context("malformed stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    ensure!(f.len() > 14, "malformed /proc/{pid}/stat");
    let n = |i: usize| -> Result<u64> { f[i].parse().with_context(|| format!("/proc/{pid}/stat field {i}")) };
    // f[0] = state (field 3): ppid 4, utime 14, stime 15, cutime 16, cstime 17.
    Ok(Some(Stat { ppid: u32::try_from(n(1)?)?, ticks: n(11)? + n(12)?, child_ticks: n(13)? + n(14)? }))
}

/// The whole server's CPU: the postmaster with its reaped children, plus
/// its live children (backends, the logging collector, background workers).
fn pg_tree_ticks(postmaster: u32) -> Result<u64> {
    let pm = proc_stat(postmaster)?.context("the postmaster is gone")?;
    let mut total = pm.ticks + pm.child_ticks;
    for entry in fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Some(s) = proc_stat(pid)?
            && s.ppid == postmaster
        {
            total += s.ticks;
        }
    }
    Ok(total)
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).context("no such field")?;
    line.trim().trim_end_matches("kB").trim().parse().with_context(|| format!("{field} in /proc/{pid}/status"))
}

/// CPU % of one core between two samples.
fn cpu_between(a: &Sample, b: &Sample, clk_tck: f64, ticks: impl Fn(&Sample) -> u64) -> f64 {
    100.0 * (ticks(b) - ticks(a)) as f64 / clk_tck / (b.at - a.at)
}

/// CPU % of one core in consecutive windows of WINDOW_SECS samples.
fn cpu_windows(samples: &[Sample], clk_tck: f64, ticks: impl Fn(&Sample) -> u64 + Copy) -> Vec<f64> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + WINDOW_SECS < samples.len() {
        out.push(cpu_between(&samples[i], &samples[i + WINDOW_SECS], clk_tck, ticks));
        i += WINDOW_SECS;
    }
    out
}

/// pgbench's `/usr/bin/time -f "%e %U %S"`: CPU % of one core over its run.
fn pgbench_cpu(time: &str) -> Result<f64> {
    let last = time.lines().last().context("empty time output")?;
    let f: Vec<f64> = last.split_whitespace().map(str::parse).collect::<Result<_, _>>().context("time output")?;
    ensure!(f.len() == 3, "time output {last:?}");
    Ok(100.0 * (f[1] + f[2]) / f[0])
}

/// The lines of pgbench's report that say what was achieved.
fn pgbench_summary(report: &str) -> String {
    let keep = ["number of transactions actually processed", "latency average", "rate limit schedule lag", "tps ="];
    let lines: Vec<&str> = report.lines().filter(|l| keep.iter().any(|k| l.contains(k))).map(str::trim).collect();
    lines.join("; ")
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn num_cpus() -> usize {
    thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn cpu_model() -> String {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim()));
    model.unwrap_or("unknown CPU").to_string()
}
