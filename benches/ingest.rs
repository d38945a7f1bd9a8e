//! The collector's ingest rate (issue 4, "Benchmark"), and the load
//! generator for the soak of issue 6: N simulated agents send OTLP/gRPC
//! metrics over loopback to a real `querywatch collector` process (release
//! build), as fast as it acknowledges them.
//!
//!     cargo bench --bench ingest                       # scenarios (a) and (b), 20 s each
//!     cargo bench --bench ingest -- --seconds 1800 --agents 50 --fingerprints 10000   # soak
//!
//! Flags (after `--`): `--agents N` (8), `--fingerprints F` distinct statement
//! shapes in total (default: both scenarios below), `--points-per-request P`
//! (500), `--seconds S` (20), `--concurrency C` requests in flight per agent
//! (2), `--rss-limit-mb M` the collector's `[store] memory_limit_mb` (512),
//! `--warmup W` seconds not counted in the steady-state figures (S/10, 2..60),
//! `--backoff-ms` pause of a stream after a refusal (100), `--slot-seconds`
//! how often the data's timestamps are renewed (60), `--rate R` total
//! requests/s, paced (default: flat out, each stream sends as soon as its
//! previous request is answered: saturation, where latency is queueing),
//! `--detect-interval` the collector's `[detect] interval`, `--queue` its
//! `[receive] queue` (a small one exercises throttling), `--no-gzip`.
//!
//! Without `--fingerprints`, two scenarios, each against a fresh collector:
//! (a) throughput with 10,000 shapes; (b) 100,000 shapes (`max_fingerprints
//! = 200000` so they fit), for the collector's RSS against its memory bound.
//!
//! The workload. Shape `i` is a masked statement (`$n` placeholders) of one
//! of six kinds (point SELECT, SELECT with ORDER BY/LIMIT, UPDATE, INSERT,
//! a join with an aggregate, DELETE … = ANY), on tables and columns named
//! with letters only, so every shape has its own pg_query fingerprint (checked
//! before the run with the collector's own fingerprinter). A request is what
//! an agent exports for one interval: P distinct statements (one chunk of
//! the F shapes), each with 1–6 calls whose durations lie within one decade
//! of the statement's own base latency, bases spread from 100 µs to 1 s
//! (log-uniform): one exponential-histogram data point per statement, plus
//! the ~15 health and overflow points the encoder always adds. Every agent
//! (its own `querywatch.node`) cycles through all chunks, starting at a
//! different one, so each agent sends every shape once per round.
//!
//! Requests are pre-encoded before the clock starts: `encode_metrics`,
//! protobuf, gzip (as the agent sends, `grpc-encoding: gzip`) and the gRPC
//! frame, so the generator only writes bytes during the run; they go out as
//! raw HTTP/2 requests on a tonic `Channel` (one connection per agent). The
//! data points carry the interval `(now - 10 s, now)`: the collector places a
//! batch by its interval end and drops data older than its retention, so the
//! whole set is re-encoded with fresh timestamps every `--slot-seconds` in a
//! background thread (only runs longer than a slot do this; its CPU is in
//! the generator's figure, not the collector's).
//!
//! Measured: every second the collector's utime+stime (`/proc/<pid>/stat`),
//! VmRSS and VmHWM; every window its `/metrics` (store size and
//! fingerprints). Points acknowledged per second and per collector
//! CPU-second over the steady part (after the warm-up) and over the whole
//! run including the drain of the collector's queue; client round trips of
//! acknowledged requests; outcomes (accepted, throttled, refused, failed).
//! After the run it waits until the store merged every queued batch and
//! checks the client's books against the collector's counters: every point
//! sent is accepted or refused with a reason. Exits non-zero only when points
//! were lost or nothing was accepted; the targets (≥ 1M histogram points/s
//! per collector core, RSS within the memory bound) are reported, not
//! enforced (a shared 2-core machine). Results are recorded by hand in
//! BENCHMARKS.md; configs and the collector's stderr stay in
//! `target/bench-ingest/`.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it only says how
//! to run it.

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Parser;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;
use querywatch_collector::fingerprint::{Method, fingerprint_with_method};
use querywatch_wire::otlp::{ResourceInfo, encode_metrics};
use querywatch_wire::{Observations, StatementKey};
use rayon::prelude::*;
use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::codegen::{Bytes, Service, http};
use tonic::transport::{Channel, Endpoint};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
/// Scenario (a) and (b) shape counts.
const THROUGHPUT_SHAPES: usize = 10_000;
const CARDINALITY_SHAPES: usize = 100_000;
/// The target of issue 4, per collector core.
const TARGET_PER_CORE: f64 = 1_000_000.0;
/// The agent's export interval: the data points' span.
const INTERVAL_NS: u64 = 10_000_000_000;
/// A request that takes longer than this is counted as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Shape kinds, see [`shape`].
const KINDS: usize = 6;
/// Heavy statements per request (`--heavy`), read by [`chunk_observations`].
static HEAVY: AtomicUsize = AtomicUsize::new(0);
/// Calls of each heavy statement per request.
const HEAVY_CALLS: u64 = 20;
/// Columns per table in the generated shapes.
const COLUMNS: usize = 64;

#[derive(Parser, Debug)]
#[command(name = "ingest bench", about = "OTLP/gRPC load generator against a real querywatch collector")]
struct Args {
    /// Simulated agents (one node and one HTTP/2 connection each).
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// Distinct statement shapes in total (default: scenarios a = 10000 and b = 100000).
    #[arg(long)]
    fingerprints: Option<usize>,
    /// Statements (exponential-histogram data points) per request.
    #[arg(long, default_value_t = 500)]
    points_per_request: usize,
    /// Load duration per scenario.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Requests in flight per agent.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// The collector's `[store] memory_limit_mb`.
    #[arg(long, default_value_t = 512)]
    rss_limit_mb: usize,
    /// Seconds at the start not counted in the steady-state figures (default S/10, 2..60).
    #[arg(long)]
    warmup: Option<u64>,
    /// Total requests/s over all streams, paced (default: flat out, each
    /// stream sends as soon as its previous request is answered). Paced
    /// runs give the latency at a load below saturation.
    #[arg(long)]
    rate: Option<f64>,
    /// Pause of a stream after a throttled, refused or failed request.
    #[arg(long, default_value_t = 100)]
    backoff_ms: u64,
    /// The data's timestamps are renewed (the set re-encoded) this often.
    #[arg(long, default_value_t = 60)]
    slot_seconds: u64,
    /// The collector's `[detect] interval` (its default, 10s, when not given),
    /// e.g. `1h` to see the ingest path without detection passes.
    #[arg(long)]
    detect_interval: Option<String>,
    /// The collector's `[receive] queue` (batches; its default, 256, when
    /// not given): a small queue exercises throttling.
    #[arg(long)]
    queue: Option<usize>,
    /// Send uncompressed protobuf instead of gzip.
    #[arg(long)]
    no_gzip: bool,
    /// The collector's `[store] max_fingerprints` (default: twice
    /// `--fingerprints`, at least 50,000, so every shape fits). Its own
    /// default, 50,000, below `--fingerprints` makes a cardinality attack.
    #[arg(long)]
    max_fingerprints: Option<usize>,
    /// The collector's `[store] retention` (its default, 1h, when not
    /// given): a soak longer than it reaches the store's steady state.
    #[arg(long)]
    retention: Option<String>,
    /// Heavy statements added to every request (20 calls of
    /// 200–390 ms each, far above the generated shapes): after the run the
    /// collector's top statements by time must be exactly these, with every
    /// call the acknowledged requests carried (the check of a cardinality
    /// attack: the flood must not push the statements that matter out).
    #[arg(long, default_value_t = 0)]
    heavy: usize,
    /// Set by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "ingest bench: N agents against a real collector over OTLP/gRPC; run `cargo bench --bench ingest` \
             (flags after `--`, e.g. `-- --seconds 1800 --agents 50 --fingerprints 10000`)"
        );
        return Ok(());
    }
    let args = Args::parse();
    ensure!(args.agents > 0 && args.concurrency > 0, "--agents and --concurrency must be at least 1");
    ensure!(args.points_per_request > 0 && args.seconds > 0, "--points-per-request and --seconds must be at least 1");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = repo.join("target/bench-ingest");
    fs::create_dir_all(&out)?;
    let clk_tck: f64 = String::from_utf8(Command::new("getconf").arg("CLK_TCK").output()?.stdout)?
        .trim()
        .parse()
        .context("getconf CLK_TCK")?;
    println!("machine: {} cores, {}, {}", num_cpus(), cpu_model(), mem_total());
    println!("load average at start: {}", fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());

    HEAVY.store(args.heavy, Relaxed);
    for h in 0..args.heavy {
        let (_, m) = fingerprint_with_method(&heavy_shape(h));
        ensure!(m != Method::Fallback, "heavy shape {:?} does not parse with pg_query", heavy_shape(h));
    }
    let scenarios: Vec<(&str, usize)> = match args.fingerprints {
        Some(f) => vec![("custom", f)],
        None => vec![("a (throughput)", THROUGHPUT_SHAPES), ("b (100k fingerprints)", CARDINALITY_SHAPES)],
    };
    let mut results = Vec::new();
    for (name, shapes) in scenarios {
        ensure!(shapes >= args.points_per_request, "--fingerprints must be at least --points-per-request");
        println!();
        println!("=== scenario {name}: {shapes} fingerprints ===");
        results.push(run_scenario(&args, name, shapes, &out, clk_tck)?);
    }

    println!();
    println!("=== summary ===");
    let mut lost_any = false;
    for r in &results {
        println!("{}", r.summary);
        lost_any |= r.lost > 0 || r.accepted_hist == 0;
    }
    if lost_any {
        bail!("points were lost or nothing was accepted (see above)");
    }
    Ok(())
}

/// What the summary and the exit status need from a scenario.
struct ScenarioResult {
    summary: String,
    lost: u64,
    accepted_hist: u64,
}

fn run_scenario(args: &Args, name: &str, shapes: usize, out: &Path, clk_tck: f64) -> Result<ScenarioResult> {
    let p = args.points_per_request;
    let chunks = shapes.div_ceil(p);
    let warmup = args.warmup.unwrap_or((args.seconds / 10).clamp(2, 60)).min(args.seconds.saturating_sub(1));
    let gzip = !args.no_gzip;

    // The shapes must parse and be distinct for pg_query, or the scenario
    // would measure something else than its name says.
    let started = Instant::now();
    let fps: Vec<(u64, Method)> = (0..shapes)
        .into_par_iter()
        .map(|i| {
            let (fp, m) = fingerprint_with_method(&shape(i));
            (fp.0, m)
        })
        .collect();
    let fallback = fps.iter().filter(|(_, m)| *m == Method::Fallback).count();
    let distinct = fps.iter().map(|(fp, _)| *fp).collect::<HashSet<_>>().len();
    ensure!(fallback == 0, "{fallback} generated shapes do not parse with pg_query (e.g. {:?})", shape(0));
    if distinct != shapes {
        let mut seen = std::collections::HashMap::new();
        let pair = fps.iter().enumerate().find_map(|(i, (fp, _))| seen.insert(*fp, i).map(|j| (j, i)));
        let (j, i) = pair.unwrap_or_default();
        bail!(
            "the {shapes} generated shapes have only {distinct} distinct fingerprints: {:?} = {:?}",
            shape(j),
            shape(i)
        );
    }
    println!(
        "shapes: {shapes} parse with pg_query, {distinct} distinct fingerprints (checked in {:.1} s)",
        secs(started)
    );

    let resources: Vec<ResourceInfo> = (0..args.agents).map(resource).collect();
    let started = Instant::now();
    let end_ns = now_ns();
    let set = RequestSet::encode(&resources, shapes, p, end_ns, gzip, true)?;
    check_splice(&set, &resources[0], shapes, p, end_ns)?;
    let (req0, bytes_avg, raw_avg) = set.shape_stats();
    println!(
        "requests: {} pre-encoded ({} agents x {chunks} chunks) in {:.1} s; each {} data points ({} histogram), \
         {:.1} KiB on the wire{} ({:.1} KiB protobuf)",
        set.count(),
        args.agents,
        secs(started),
        req0.points,
        req0.hist_points,
        bytes_avg / 1024.0,
        if gzip { " gzip" } else { "" },
        raw_avg / 1024.0,
    );

    // The collector.
    let max_fingerprints = args.max_fingerprints.unwrap_or((2 * shapes).max(50_000));
    let config = out.join(format!("collector-{shapes}.toml"));
    fs::write(
        &config,
        format!(
            "# written by benches/ingest.rs\n[receive]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n{}\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [store]\nmax_fingerprints = {max_fingerprints}\nmemory_limit_mb = {}\n{}{}",
            args.queue.map_or(String::new(), |q| format!("queue = {q}\n")),
            args.rss_limit_mb,
            args.retention.as_ref().map_or(String::new(), |r| format!("retention = {r:?}\n")),
            args.detect_interval.as_ref().map_or(String::new(), |d| format!("[detect]\ninterval = {d:?}\n")),
        ),
    )?;
    let stderr_path = out.join(format!("collector-{shapes}.stderr"));
    let mut collector = Collector::start(&config, &stderr_path)?;
    let pid = collector.pid();
    println!(
        "collector: pid {pid}, OTLP gRPC {}, API {} (config {}: max_fingerprints {max_fingerprints}, \
         memory_limit_mb {})",
        collector.grpc,
        collector.api,
        config.display(),
        args.rss_limit_mb
    );
    let rss_idle_kib = status_kib(pid, "VmRSS")?;

    let counters = Arc::new(Counters::default());
    let set = Arc::new(RwLock::new(Arc::new(set)));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let window = (args.seconds / 20).max(5) as usize;
    println!(
        "load: {} agents x {} streams, {p} statements per request, {}, {} s (warm-up {warmup} s), backoff {} ms, \
         timestamps renewed every {} s",
        args.agents,
        args.concurrency,
        args.rate.map_or("flat out".into(), |r| format!("paced at {r} requests/s")),
        args.seconds,
        args.backoff_ms,
        args.slot_seconds
    );

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let channels = runtime.block_on(async {
        let mut channels = Vec::new();
        for _ in 0..args.agents {
            let endpoint = Endpoint::from_shared(format!("http://{}", collector.grpc))?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(10));
            channels.push(endpoint.connect().await.context("connecting to the collector")?);
        }
        anyhow::Ok(channels)
    })?;

    let self_ticks0 = proc_ticks(std::process::id())?.context("no /proc/self")?;
    let t0 = Instant::now();
    let sampler = Sampler { pid, api: collector.api, counters: counters.clone(), t0, scrape_every: window };
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler_thread = {
        let stop = sampler_stop.clone();
        thread::spawn(move || sampler.run(&stop))
    };
    let renewer = (args.seconds > args.slot_seconds).then(|| {
        let (set, stop, resources) = (set.clone(), stop.clone(), resources.clone());
        let slot = Duration::from_secs(args.slot_seconds);
        thread::spawn(move || renew(&set, &stop, &resources, shapes, p, gzip, slot))
    });

    let streams = (args.agents * args.concurrency) as f64;
    let pace = args.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(streams / r));
    let cfg = LoadConfig { agents: args.agents, chunks, backoff: Duration::from_millis(args.backoff_ms), gzip, pace };
    let latencies = runtime.block_on(async {
        let mut tasks = Vec::new();
        let cursors: Arc<Vec<AtomicUsize>> = Arc::new((0..args.agents).map(|_| AtomicUsize::new(0)).collect());
        for (agent, channel) in channels.iter().enumerate() {
            for _ in 0..args.concurrency {
                let stream = Stream {
                    agent,
                    channel: channel.clone(),
                    set: set.clone(),
                    counters: counters.clone(),
                    cursors: cursors.clone(),
                    stop: stop.clone(),
                    measuring: measuring.clone(),
                    cfg: cfg.clone(),
                };
                tasks.push(tokio::spawn(stream.run()));
            }
        }
        tokio::time::sleep(Duration::from_secs(warmup)).await;
        measuring.store(true, Relaxed);
        tokio::time::sleep(Duration::from_secs(args.seconds - warmup)).await;
        measuring.store(false, Relaxed);
        stop.store(true, Relaxed);
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await?);
        }
        anyhow::Ok(latencies)
    })?;
    let load_end = secs(t0);
    let self_ticks1 = proc_ticks(std::process::id())?.context("no /proc/self")?;
    if let Some(r) = renewer {
        r.join().map_err(|_| anyhow!("the timestamp renewer panicked"))?;
    }

    // Drain: the store has merged every batch the receiver queued.
    let drain_start = Instant::now();
    let metrics = loop {
        let m = scrape(collector.api)?;
        let queued = m.receiver_batches_queued()?;
        let merged = m.get("querywatch_collector_batches_total", &[]).unwrap_or(0.0);
        if m.get("querywatch_collector_queue_batches", &[]) == Some(0.0) && merged >= queued {
            break m;
        }
        ensure!(drain_start.elapsed() < Duration::from_secs(120), "the store did not drain within 120 s");
        thread::sleep(Duration::from_millis(100));
    };
    let drained = secs(t0);
    let heavy_problems =
        if args.heavy > 0 { check_heavy(collector.api, args.heavy, counters.snapshot().acked)? } else { Vec::new() };
    sampler_stop.store(true, Relaxed);
    let samples = sampler_thread.join().map_err(|_| anyhow!("the sampler panicked"))??;
    let hwm_kib = status_kib(pid, "VmHWM")?;
    let rss_end_kib = status_kib(pid, "VmRSS")?;
    let ticks_end = proc_ticks(pid)?.context("the collector is gone")?;
    let status = collector.stop()?;
    let stderr_text = fs::read_to_string(&stderr_path).unwrap_or_default();
    ensure!(status.success(), "the collector exited with {status}:\n{stderr_text}");

    // Figures.
    let c = counters.snapshot();
    let first = samples.first().context("no samples")?;
    let steady_from = samples.iter().find(|s| s.at >= warmup as f64).context("no sample after the warm-up")?;
    let steady_to = samples.iter().rev().find(|s| s.at <= load_end + 0.5).context("no sample at the end")?;
    let span = steady_to.at - steady_from.at;
    ensure!(span > 0.5, "the steady window is too short ({span:.1} s)");
    let hist_rate = (steady_to.acked_hist - steady_from.acked_hist) as f64 / span;
    let req_rate = (steady_to.acked_requests - steady_from.acked_requests) as f64 / span;
    let cpu_s = (steady_to.ticks - steady_from.ticks) as f64 / clk_tck;
    let per_core = (steady_to.acked_hist - steady_from.acked_hist) as f64 / cpu_s.max(1e-9);
    let whole_cpu_s = (ticks_end - first.ticks) as f64 / clk_tck;
    let whole_per_core = c.acked_hist as f64 / whole_cpu_s.max(1e-9);
    let self_cpu = (self_ticks1 - self_ticks0) as f64 / clk_tck / load_end;

    let mut lat = latencies;
    lat.sort_unstable();
    let q = |x: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 * x).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i]) / 1000.0
    };
    let (p50, p99, pmax) = (q(0.5), q(0.99), lat.last().map_or(f64::NAN, |&m| f64::from(m) / 1000.0));

    println!();
    println!("time series (windows of {window} s; CPU in % of one core; RSS and store at the window's end):");
    println!(
        "{:>11} {:>12} {:>8} {:>9} {:>7} {:>9} {:>10} {:>12} {:>6}",
        "window s", "hist pts/s", "req/s", "throttled", "CPU %", "RSS MiB", "store MiB", "fingerprints", "queue"
    );
    let load_samples = samples.iter().take_while(|s| s.at <= load_end + 0.5).count();
    let mut i = 0;
    while i + 1 < load_samples {
        let j = (i + window).min(load_samples - 1);
        let (a, b) = (&samples[i], &samples[j]);
        let dt = b.at - a.at;
        if dt < 0.5 {
            i = j;
            continue;
        }
        let scraped = |f: fn(&Scraped) -> Option<f64>, scale: f64| {
            b.scraped.as_ref().and_then(f).map_or("-".into(), |v| format!("{:.1}", v / scale))
        };
        println!(
            "{:>5.0}-{:<5.0} {:>12.0} {:>8.0} {:>9} {:>7.1} {:>9.1} {:>10} {:>12} {:>6}",
            a.at,
            b.at,
            (b.acked_hist - a.acked_hist) as f64 / dt,
            (b.acked_requests - a.acked_requests) as f64 / dt,
            b.throttled - a.throttled,
            100.0 * (b.ticks - a.ticks) as f64 / clk_tck / dt,
            b.rss_kib as f64 / 1024.0,
            scraped(|s| s.store_bytes, 1048576.0),
            scraped(|s| s.fingerprints, 1.0),
            scraped(|s| s.queue, 1.0),
        );
        i = j;
    }
    if let (Some(a), Some(b)) = (samples.get(load_samples.saturating_sub(1)), samples.last())
        && b.at > a.at
    {
        println!(
            "{:>5.0}-{:<5.0} {:>12} {:>8} {:>9} {:>7.1} {:>9.1}   (drain: the store merges what was queued)",
            a.at,
            b.at,
            "-",
            "-",
            "-",
            100.0 * (b.ticks - a.ticks) as f64 / clk_tck / (b.at - a.at),
            b.rss_kib as f64 / 1024.0,
        );
    }
    let rss_warm = steady_from.rss_kib as f64 / 1024.0;
    let rss_last = steady_to.rss_kib as f64 / 1024.0;
    let rss_max_after =
        samples.iter().filter(|s| s.at >= steady_from.at).map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0;

    // The books: every point sent is accepted or refused with a reason,
    // client side and collector side.
    let sent = c.sent_points;
    let col_accepted = metrics.receiver_points_accepted()?;
    let col_ignored = metrics.receiver_points_ignored()?;
    let col_requests = metrics.receiver_metrics_requests()?;
    let col_throttled = metrics.receiver_rejected("throttled")?;
    let col_rejected_all = metrics.receiver_rejected_all()?;
    let too_old = metrics.get("querywatch_collector_store_events_total", &[("kind", "too_old_batches")]).unwrap_or(0.0);
    let folded =
        metrics.get("querywatch_collector_store_events_total", &[("kind", "memory_folded_rows")]).unwrap_or(0.0);
    let early = metrics.get("querywatch_collector_store_events_total", &[("kind", "early_rollups")]).unwrap_or(0.0);
    let overflow_calls = metrics.get("querywatch_collector_overflow", &[("kind", "fingerprint_calls")]).unwrap_or(0.0);
    let store_fps = metrics.get("querywatch_collector_store_fingerprints", &[]).unwrap_or(f64::NAN);
    let store_bytes = metrics.get("querywatch_collector_store_bytes", &[]).unwrap_or(f64::NAN);
    let store_rows = metrics.get("querywatch_collector_store_rows", &[]).unwrap_or(f64::NAN);
    let merged = metrics.get("querywatch_collector_batches_total", &[]).unwrap_or(f64::NAN);
    let mut problems = Vec::new();
    if c.failed_points > 0 {
        problems.push(format!("{} points in {} requests with no answer (transport errors)", c.failed_points, c.failed));
    }
    if col_accepted as u64 != c.acked_points - c.ignored_points {
        problems.push(format!(
            "the collector counted {col_accepted} points accepted, the clients {} acknowledged",
            c.acked_points - c.ignored_points
        ));
    }
    if col_requests as u64 != c.attempts {
        problems.push(format!("the collector counted {col_requests} export requests, the clients sent {}", c.attempts));
    }
    if col_throttled as u64 != c.throttled {
        problems
            .push(format!("the collector counted {col_throttled} throttled requests, the clients saw {}", c.throttled));
    }
    if col_rejected_all as u64 != c.throttled + c.refused {
        problems.push(format!(
            "the collector counted {col_rejected_all} refused requests, the clients saw {}",
            c.throttled + c.refused
        ));
    }
    if too_old > 0.0 {
        problems.push(format!("the store dropped {too_old} batches as too old"));
    }
    problems.extend(heavy_problems);
    let lost = c.failed_points + (c.acked_points - c.ignored_points).abs_diff(col_accepted as u64);

    println!();
    println!(
        "throughput, steady ({span:.1} s after the {warmup} s warm-up): {hist_rate:.0} histogram points/s, \
         {req_rate:.0} requests/s"
    );
    println!(
        "collector CPU, steady: {cpu_s:.2} s = {:.2} cores -> {per_core:.0} histogram points per CPU-second \
         (target >= {TARGET_PER_CORE:.0}: {})",
        cpu_s / span,
        if per_core >= TARGET_PER_CORE { "MET" } else { "MISSED" }
    );
    println!(
        "collector CPU, whole run incl. warm-up and drain ({:.1} s): {whole_cpu_s:.2} s for {} histogram points \
         -> {whole_per_core:.0} per CPU-second",
        drained - first.at,
        c.acked_hist
    );
    println!("load generator (this process) CPU: {:.2} cores over the load", self_cpu);
    println!(
        "latency, client round trip of acknowledged requests after the warm-up ({}): p50 {p50:.2} ms, \
         p99 {p99:.2} ms, max {pmax:.2} ms",
        lat.len()
    );
    println!(
        "latency, collector's handling (its /metrics, whole run): p50 {}, p99 {}, max {}",
        metrics.receiver_latency("0.5").map_or("-".into(), |v| format!("{:.2} ms", v * 1e3)),
        metrics.receiver_latency("0.99").map_or("-".into(), |v| format!("{:.2} ms", v * 1e3)),
        metrics.receiver_latency("1").map_or("-".into(), |v| format!("{:.2} ms", v * 1e3)),
    );
    println!(
        "requests: {} sent, {} acknowledged, {} throttled, {} refused {:?}, {} failed",
        c.attempts,
        c.acked,
        c.throttled,
        c.refused,
        c.refused_codes(),
        c.failed
    );
    println!(
        "points: sent {sent} = accepted {} + not ours {} + throttled {} + refused {} + failed {} \
         (histogram points accepted: {})",
        c.acked_points - c.ignored_points,
        c.ignored_points,
        c.throttled_points,
        c.refused_points,
        c.failed_points,
        c.acked_hist
    );
    println!(
        "collector /metrics: accepted {col_accepted}, ignored {col_ignored}, export requests {col_requests}, \
         rejected {col_rejected_all} (throttled {col_throttled}); store merged {merged} batches; \
         too old {too_old}, memory-folded rows {folded}, early rollups {early}, calls folded into <other> \
         {overflow_calls}"
    );
    println!(
        "store: {store_fps} fingerprints, {store_rows} rows, estimate {:.1} MiB (limit {} MiB)",
        store_bytes / 1048576.0,
        args.rss_limit_mb
    );
    println!(
        "collector RSS: idle {:.1} MiB, at warm-up end {rss_warm:.1}, max after {rss_max_after:.1}, at load end \
         {rss_last:.1} ({:+.1} since warm-up), final {:.1}, peak (VmHWM) {:.1} MiB; memory_limit_mb {} -> {}",
        rss_idle_kib as f64 / 1024.0,
        rss_last - rss_warm,
        rss_end_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0,
        args.rss_limit_mb,
        if (hwm_kib as f64 / 1024.0) <= args.rss_limit_mb as f64 { "within" } else { "OVER" }
    );
    if problems.is_empty() {
        println!(
            "books: balanced (every point sent is accepted or refused with a reason; the store merged every batch)"
        );
    } else {
        for pr in &problems {
            println!("books: PROBLEM: {pr}");
        }
    }
    let summary = format!(
        "{name}: {shapes} fps, {} agents x {}: {hist_rate:.0} hist pts/s, {per_core:.0} per collector CPU-s \
         (whole run {whole_per_core:.0}), {req_rate:.0} req/s, p50/p99/max {p50:.1}/{p99:.1}/{pmax:.1} ms, \
         throttled {}, refused {}, failed {}, RSS peak {:.1} MiB final {:.1} MiB (limit {} MiB), store estimate \
         {:.1} MiB, {store_fps} fingerprints, lost {lost}",
        args.agents,
        args.concurrency,
        c.throttled,
        c.refused,
        c.failed,
        hwm_kib as f64 / 1024.0,
        rss_end_kib as f64 / 1024.0,
        args.rss_limit_mb,
        store_bytes / 1048576.0,
    );
    let lost = lost + u64::from(!problems.is_empty());
    Ok(ScenarioResult { summary, lost, accepted_hist: c.acked_hist })
}

// ---------------------------------------------------------------- workload

/// A name of letters only (pg_query's fingerprint may ignore digits in
/// identifiers): 0 → `a`, 25 → `z`, 26 → `ba`, …
fn letters(mut n: usize) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'a' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Masked statement shape `i`: six kinds, on table `t_<n / 64>` and column
/// `c_<n % 64>` (`n = i / 6`), so every `i` is its own shape.
fn shape(i: usize) -> String {
    let n = i / KINDS;
    let t = letters(n / COLUMNS);
    let c = letters(n % COLUMNS);
    let c2 = letters((n + 1) % COLUMNS);
    match i % KINDS {
        0 => format!("SELECT c_{c} FROM t_{t} WHERE id = $1"),
        1 => {
            format!("SELECT id, c_{c}, c_{c2} FROM t_{t} WHERE c_{c} > $1 AND c_{c2} = $2 ORDER BY c_{c} DESC LIMIT $3")
        }
        2 => format!("UPDATE t_{t} SET c_{c} = c_{c} + $1, updated_at = now() WHERE id = $2"),
        3 => format!("INSERT INTO t_{t} (id, c_{c}, created_at) VALUES ($1, $2, $3)"),
        // No aliases: pg_query fingerprints an aliased relation by its alias.
        4 => format!(
            "SELECT t_{t}.c_{c}, count(*), sum(u_{c}.amount) FROM t_{t} JOIN u_{c} ON u_{c}.t_id = t_{t}.id \
             WHERE t_{t}.created_at > $1 GROUP BY t_{t}.c_{c}"
        ),
        _ => format!("DELETE FROM t_{t} WHERE c_{c} = ANY($1) AND created_at < $2"),
    }
}

/// Heavy statement `h`: on its own `hot_` table, so it shares no
/// fingerprint with the generated shapes.
fn heavy_shape(h: usize) -> String {
    format!("SELECT total, status FROM hot_{} WHERE customer_id = $1 ORDER BY created_at DESC", letters(h))
}

/// The collector's top statements by time after a run with `--heavy`: they
/// must be the heavy shapes, each with every call of the acknowledged
/// requests. Returns the problems found.
fn check_heavy(api: SocketAddr, heavy: usize, acked_requests: u64) -> Result<Vec<String>> {
    // One more than asked: the `<other>` row (what the caps folded, the
    // flood itself) is listed like a statement and may rank among them.
    let v = get_json(api, &format!("/api/v1/queries?sort=time&limit={}&from=0", heavy + 1))?;
    let all = v["queries"].as_array().context("no `queries` in /api/v1/queries")?;
    let other = all.iter().find(|r| r["text"] == "<other>").and_then(|r| r["calls"].as_u64());
    if let Some(calls) = other {
        println!("the <other> row: {calls} calls");
    }
    let rows: Vec<&serde_json::Value> = all.iter().filter(|r| r["text"] != "<other>").take(heavy).collect();
    let want_calls = acked_requests * HEAVY_CALLS;
    let mut problems = Vec::new();
    let mut texts: Vec<&str> = Vec::new();
    for r in &rows {
        let text = r["text"].as_str().unwrap_or("");
        let calls = r["calls"].as_u64().unwrap_or(0);
        texts.push(text);
        if !text.contains("FROM hot_") {
            problems.push(format!("a top statement by time is not a heavy one: {text:?}"));
        } else if calls != want_calls {
            problems.push(format!("{text:?}: {calls} calls, the acknowledged requests carried {want_calls}"));
        }
    }
    if rows.len() != heavy {
        problems.push(format!("{} top statements returned, {heavy} asked for", rows.len()));
    }
    // The per-statement answer too: it must not copy the store (it did),
    // and it must count the same calls.
    if let Some(fp) = rows.first().and_then(|r| r["fingerprint"].as_str()) {
        let v = get_json(api, &format!("/api/v1/queries/{fp}?from=0"))?;
        let calls = v["query"]["calls"].as_u64().unwrap_or(0);
        let nodes = v["per_node"].as_array().map_or(0, Vec::len);
        println!("/api/v1/queries/{fp}: {calls} calls from {nodes} nodes");
        if calls != want_calls {
            problems
                .push(format!("/api/v1/queries/{fp}: {calls} calls, the acknowledged requests carried {want_calls}"));
        }
    }
    println!(
        "top {heavy} statements by time: {} heavy, each {} calls (want {want_calls}){}",
        texts.iter().filter(|t| t.contains("FROM hot_")).count(),
        rows.first().and_then(|r| r["calls"].as_u64()).unwrap_or(0),
        if problems.is_empty() { ": correct" } else { ": WRONG" }
    );
    Ok(problems)
}

/// GET `path` of the collector's API, parsed as JSON.
fn get_json(api: SocketAddr, path: &str) -> Result<serde_json::Value> {
    serde_json::from_str(&http_get(api, path)?).with_context(|| format!("{path} is not JSON"))
}

/// splitmix64: a fixed, seedable stream for the workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One agent interval's worth of statements: chunk `chunk` of the shapes.
fn chunk_observations(chunk: usize, shapes: usize, per_request: usize, ts_ms: i64) -> Observations {
    let mut obs = Observations::default();
    for k in 0..per_request {
        let i = (chunk * per_request + k) % shapes;
        let text = shape(i);
        let mut rng = Rng(i as u64 ^ 0x5157_0000_0000_0000);
        // The statement's base latency, log-uniform over 100 µs .. 1 s; its
        // calls within one decade above it.
        let base = rng.unit() * 0.75;
        let calls = 1 + rng.next() % 6;
        let key = StatementKey { database: "shop".into(), user: "app".into(), text: text.clone() };
        let s = obs.statements.entry(key).or_default();
        for _ in 0..calls {
            let w = (base + rng.unit() * 0.25).min(1.0);
            let us = 100.0 * 10f64.powf(4.0 * w);
            s.record_call(Duration::from_micros(us as u64), Some(ts_ms), &text);
        }
    }
    for h in 0..HEAVY.load(Relaxed) {
        let text = heavy_shape(h);
        let key = StatementKey { database: "shop".into(), user: "app".into(), text: text.clone() };
        let s = obs.statements.entry(key).or_default();
        for k in 0..HEAVY_CALLS {
            s.record_call(Duration::from_millis(200 + 10 * k), Some(ts_ms), &text);
        }
    }
    obs
}

fn resource(agent: usize) -> ResourceInfo {
    ResourceInfo {
        service_version: env!("CARGO_PKG_VERSION").into(),
        service_instance_id: format!("bench-agent-{agent}"),
        host_name: format!("bench-db-{agent:02}"),
        server_address: "127.0.0.1".into(),
        server_port: Some(5432),
        node: format!("bench-node-{agent:02}"),
        cluster: "bench".into(),
        extra: Vec::new(),
    }
}

/// One pre-encoded request: the gRPC message frame, ready to send.
#[derive(Clone)]
struct Encoded {
    body: Bytes,
    /// Every data point of the request (what the collector counts).
    points: u64,
    /// Exponential-histogram data points (one per statement).
    hist_points: u64,
    /// The protobuf before compression.
    raw_len: usize,
}

/// One chunk's request, encoded once for every agent: the agents'
/// requests differ only in their resource, so the chunk's metrics are
/// encoded once and each agent's request is spliced from bytes (protobuf
/// fields may come in any order, and `ResourceMetrics.resource` is field 1).
/// Only the gzip runs per agent.
fn encode_chunk(obs: &Observations, resources: &[Vec<u8>], interval: (u64, u64), gzip: bool) -> Result<Vec<Encoded>> {
    let mut req: ExportMetricsServiceRequest = encode_metrics(obs, &ResourceInfo::default(), interval);
    let (mut points, mut hist_points) = (0u64, 0u64);
    for m in req.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics) {
        let n = match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => {
                hist_points += h.data_points.len() as u64;
                h.data_points.len()
            }
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        };
        points += n as u64;
    }
    ensure!(req.resource_metrics.len() == 1, "encode_metrics made {} resources", req.resource_metrics.len());
    let mut rm = req.resource_metrics.remove(0);
    rm.resource = None;
    let rest = rm.encode_to_vec();
    let mut out = Vec::with_capacity(resources.len());
    for resource in resources {
        // ExportMetricsServiceRequest { resource_metrics (1): ResourceMetrics { resource (1), rest } }
        let inner_len = resource.len() + rest.len();
        let mut raw = Vec::with_capacity(inner_len + 16);
        raw.push(0x0A);
        prost::encoding::encode_varint(inner_len as u64, &mut raw);
        raw.extend_from_slice(resource);
        raw.extend_from_slice(&rest);
        out.push(frame(raw, gzip, points, hist_points)?);
    }
    Ok(out)
}

/// `ResourceMetrics.resource` (field 1, length-delimited) of an agent.
fn resource_field(resource: &ResourceInfo) -> Result<Vec<u8>> {
    let req = encode_metrics(&Observations::default(), resource, (0, 1));
    let r = req.resource_metrics.first().and_then(|rm| rm.resource.as_ref()).context("no resource encoded")?;
    let bytes = r.encode_to_vec();
    let mut field = vec![0x0A];
    prost::encoding::encode_varint(bytes.len() as u64, &mut field);
    field.extend_from_slice(&bytes);
    Ok(field)
}

/// The gRPC length-prefixed message (compressed flag, big-endian length).
fn frame(raw: Vec<u8>, gzip: bool, points: u64, hist_points: u64) -> Result<Encoded> {
    let raw_len = raw.len();
    let payload = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 4), flate2::Compression::default());
        enc.write_all(&raw)?;
        enc.finish()?
    } else {
        raw
    };
    let mut body = Vec::with_capacity(payload.len() + 5);
    body.push(u8::from(gzip));
    body.extend_from_slice(&u32::try_from(payload.len()).context("request over 4 GiB")?.to_be_bytes());
    body.extend_from_slice(&payload);
    Ok(Encoded { body: Bytes::from(body), points, hist_points, raw_len })
}

/// The spliced request of agent 0, chunk 0 decodes to exactly what
/// `encode_metrics` makes for that agent.
fn check_splice(
    set: &RequestSet,
    resource: &ResourceInfo,
    shapes: usize,
    per_request: usize,
    end_ns: u64,
) -> Result<()> {
    let e = set.per_agent.first().and_then(|a| a.first()).context("empty request set")?;
    let payload = &e.body[5..];
    let raw = if e.body[0] == 1 {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(payload).read_to_end(&mut out)?;
        out
    } else {
        payload.to_vec()
    };
    let got = ExportMetricsServiceRequest::decode(&raw[..])?;
    let ts_ms = i64::try_from(end_ns / 1_000_000)? - 1;
    let want =
        encode_metrics(&chunk_observations(0, shapes, per_request, ts_ms), resource, (end_ns - INTERVAL_NS, end_ns));
    ensure!(got == want, "a spliced request differs from encode_metrics' own");
    Ok(())
}

/// Every request of every agent: `per_agent[agent][chunk]`.
struct RequestSet {
    per_agent: Vec<Vec<Encoded>>,
}

impl RequestSet {
    /// Encodes the whole set for the interval ending at `end_ns`, in
    /// parallel (`parallel`) or on this thread only.
    fn encode(
        resources: &[ResourceInfo],
        shapes: usize,
        per_request: usize,
        end_ns: u64,
        gzip: bool,
        parallel: bool,
    ) -> Result<RequestSet> {
        let chunks = shapes.div_ceil(per_request);
        let interval = (end_ns - INTERVAL_NS, end_ns);
        let ts_ms = i64::try_from(end_ns / 1_000_000)? - 1;
        let fields: Vec<Vec<u8>> = resources.iter().map(resource_field).collect::<Result<_>>()?;
        let one = |c: usize| -> Result<Vec<Encoded>> {
            encode_chunk(&chunk_observations(c, shapes, per_request, ts_ms), &fields, interval, gzip)
        };
        let by_chunk: Vec<Vec<Encoded>> = if parallel {
            (0..chunks).into_par_iter().map(one).collect::<Result<_>>()?
        } else {
            (0..chunks).map(one).collect::<Result<_>>()?
        };
        let mut per_agent: Vec<Vec<Encoded>> = resources.iter().map(|_| Vec::with_capacity(chunks)).collect();
        for row in by_chunk {
            for (a, e) in row.into_iter().enumerate() {
                per_agent[a].push(e);
            }
        }
        Ok(RequestSet { per_agent })
    }

    fn count(&self) -> usize {
        self.per_agent.iter().map(Vec::len).sum()
    }

    /// The first request, and the mean wire and protobuf sizes.
    fn shape_stats(&self) -> (Encoded, f64, f64) {
        let all: Vec<&Encoded> = self.per_agent.iter().flatten().collect();
        let n = all.len().max(1) as f64;
        let wire = all.iter().map(|e| e.body.len() as f64).sum::<f64>() / n;
        let raw = all.iter().map(|e| e.raw_len as f64).sum::<f64>() / n;
        let first = all
            .first()
            .map_or_else(|| Encoded { body: Bytes::new(), points: 0, hist_points: 0, raw_len: 0 }, |e| (*e).clone());
        (first, wire, raw)
    }
}

/// Re-encodes the set with fresh timestamps every `slot` until `stop`, on
/// one thread (the collector keeps the other core).
fn renew(
    set: &RwLock<Arc<RequestSet>>,
    stop: &AtomicBool,
    resources: &[ResourceInfo],
    shapes: usize,
    per_request: usize,
    gzip: bool,
    slot: Duration,
) {
    let mut next = Instant::now() + slot;
    while !stop.load(Relaxed) {
        if Instant::now() < next {
            thread::sleep(Duration::from_millis(200));
            continue;
        }
        next += slot;
        let started = Instant::now();
        match RequestSet::encode(resources, shapes, per_request, now_ns(), gzip, false) {
            Ok(fresh) => {
                if let Ok(mut s) = set.write() {
                    *s = Arc::new(fresh);
                }
                eprintln!("ingest bench: timestamps renewed ({:.1} s of one core)", secs(started));
            }
            Err(e) => eprintln!("ingest bench: re-encoding failed, keeping the old timestamps: {e:#}"),
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------- load

#[derive(Clone)]
struct LoadConfig {
    agents: usize,
    chunks: usize,
    backoff: Duration,
    gzip: bool,
    /// Paced: one request per stream every this long (`--rate`); flat
    /// out when `None`.
    pace: Option<Duration>,
}

/// The client's books, shared by every stream and read by the sampler.
#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    sent_points: AtomicU64,
    acked: AtomicU64,
    acked_points: AtomicU64,
    acked_hist: AtomicU64,
    /// Points the collector said were not ours (partial success).
    ignored_points: AtomicU64,
    throttled: AtomicU64,
    throttled_points: AtomicU64,
    refused: AtomicU64,
    refused_points: AtomicU64,
    /// Refusals by gRPC code (index = code).
    refused_by_code: [AtomicU64; 17],
    failed: AtomicU64,
    failed_points: AtomicU64,
}

struct CountersSnapshot {
    attempts: u64,
    sent_points: u64,
    acked: u64,
    acked_points: u64,
    acked_hist: u64,
    ignored_points: u64,
    throttled: u64,
    throttled_points: u64,
    refused: u64,
    refused_points: u64,
    refused_by_code: Vec<u64>,
    failed: u64,
    failed_points: u64,
}

impl Counters {
    fn snapshot(&self) -> CountersSnapshot {
        let g = |a: &AtomicU64| a.load(Relaxed);
        CountersSnapshot {
            attempts: g(&self.attempts),
            sent_points: g(&self.sent_points),
            acked: g(&self.acked),
            acked_points: g(&self.acked_points),
            acked_hist: g(&self.acked_hist),
            ignored_points: g(&self.ignored_points),
            throttled: g(&self.throttled),
            throttled_points: g(&self.throttled_points),
            refused: g(&self.refused),
            refused_points: g(&self.refused_points),
            refused_by_code: self.refused_by_code.iter().map(g).collect(),
            failed: g(&self.failed),
            failed_points: g(&self.failed_points),
        }
    }
}

impl CountersSnapshot {
    fn refused_codes(&self) -> Vec<(tonic::Code, u64)> {
        self.refused_by_code
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| (tonic::Code::from_i32(i32::try_from(c).unwrap_or(2)), *n))
            .collect()
    }
}

/// What became of one request.
enum Outcome {
    /// OK, with the points the collector said were not ours.
    Acked { ignored: u64 },
    /// Retry later (the ingest queue is full).
    Throttled,
    /// Any other gRPC status.
    Refused(tonic::Code, String),
    /// No gRPC status: connection or HTTP error, timeout.
    Failed(String),
}

/// One request stream of one agent: sends the agent's next request as soon
/// as the previous one is answered.
struct Stream {
    agent: usize,
    channel: Channel,
    set: Arc<RwLock<Arc<RequestSet>>>,
    counters: Arc<Counters>,
    cursors: Arc<Vec<AtomicUsize>>,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
    cfg: LoadConfig,
}

impl Stream {
    /// Returns the round trips (µs) of the acknowledged requests sent while
    /// `measuring`.
    async fn run(mut self) -> Vec<u32> {
        let mut latencies = Vec::new();
        // Agents start at different chunks, so that at any moment they send
        // different shapes.
        let offset = self.agent * self.cfg.chunks / self.cfg.agents;
        let c = self.counters.clone();
        let mut warned = false;
        // Paced streams start spread over one period.
        let mut next =
            self.cfg.pace.map(|p| tokio::time::Instant::now() + p.mul_f64((self.agent as f64 * 0.618_034).fract()));
        while !self.stop.load(Relaxed) {
            if let (Some(at), Some(p)) = (next.as_mut(), self.cfg.pace) {
                tokio::time::sleep_until(*at).await;
                // Behind schedule (the collector is slower than the rate):
                // no burst to catch up.
                *at = (*at + p).max(tokio::time::Instant::now());
                if self.stop.load(Relaxed) {
                    break;
                }
            }
            let n = self.cursors[self.agent].fetch_add(1, Relaxed);
            let chunk = (offset + n) % self.cfg.chunks;
            let set = match self.set.read() {
                Ok(s) => s.clone(),
                Err(_) => break,
            };
            let req = set.per_agent[self.agent][chunk].clone();
            drop(set);
            let measured = self.measuring.load(Relaxed);
            c.attempts.fetch_add(1, Relaxed);
            c.sent_points.fetch_add(req.points, Relaxed);
            let started = Instant::now();
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, self.send(req.body)).await {
                Ok(o) => o,
                Err(_) => Outcome::Failed(format!("no answer within {REQUEST_TIMEOUT:?}")),
            };
            let took = started.elapsed();
            let pause = match outcome {
                Outcome::Acked { ignored } => {
                    c.acked.fetch_add(1, Relaxed);
                    c.acked_points.fetch_add(req.points, Relaxed);
                    c.acked_hist.fetch_add(req.hist_points, Relaxed);
                    c.ignored_points.fetch_add(ignored, Relaxed);
                    if measured && self.measuring.load(Relaxed) {
                        latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                    }
                    false
                }
                Outcome::Throttled => {
                    c.throttled.fetch_add(1, Relaxed);
                    c.throttled_points.fetch_add(req.points, Relaxed);
                    true
                }
                Outcome::Refused(code, message) => {
                    c.refused.fetch_add(1, Relaxed);
                    c.refused_points.fetch_add(req.points, Relaxed);
                    c.refused_by_code[(code as usize).min(16)].fetch_add(1, Relaxed);
                    if !warned {
                        eprintln!("ingest bench: agent {}: refused: {code:?}: {message}", self.agent);
                        warned = true;
                    }
                    true
                }
                Outcome::Failed(e) => {
                    c.failed.fetch_add(1, Relaxed);
                    c.failed_points.fetch_add(req.points, Relaxed);
                    if !warned {
                        eprintln!("ingest bench: agent {}: failed: {e}", self.agent);
                        warned = true;
                    }
                    true
                }
            };
            if pause {
                tokio::time::sleep(self.cfg.backoff).await;
            }
        }
        latencies
    }

    /// One unary gRPC call with a pre-framed body, as tonic's generated
    /// client would make it (same headers), minus the encoding.
    async fn send(&mut self, body: Bytes) -> Outcome {
        let mut builder = http::Request::builder()
            .method(http::Method::POST)
            .uri(EXPORT_PATH)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-accept-encoding", "gzip");
        if self.cfg.gzip {
            builder = builder.header("grpc-encoding", "gzip");
        }
        let request = match builder.body(tonic::body::Body::new(Full::new(body))) {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        if let Err(e) = std::future::poll_fn(|cx| self.channel.poll_ready(cx)).await {
            return Outcome::Failed(e.to_string());
        }
        let response = match self.channel.call(request).await {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let (parts, body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Outcome::Failed(format!("HTTP {}", parts.status));
        }
        let collected = match body.collect().await {
            Ok(c) => c,
            Err(status) => return Outcome::Failed(format!("reading the response: {status}")),
        };
        let status = collected
            .trailers()
            .and_then(tonic::Status::from_header_map)
            .or_else(|| tonic::Status::from_header_map(&parts.headers));
        let Some(status) = status else { return Outcome::Failed("no grpc-status".into()) };
        match status.code() {
            tonic::Code::Ok => match response_message(&collected.to_bytes()) {
                Ok(r) => {
                    let ignored = r.partial_success.map_or(0, |p| u64::try_from(p.rejected_data_points).unwrap_or(0));
                    Outcome::Acked { ignored }
                }
                Err(e) => Outcome::Failed(format!("OK with an unreadable response: {e:#}")),
            },
            tonic::Code::Unavailable => Outcome::Throttled,
            tonic::Code::ResourceExhausted if status.message().contains("retry") => Outcome::Throttled,
            code => Outcome::Refused(code, status.message().to_owned()),
        }
    }
}

/// The ExportMetricsServiceResponse in a gRPC response body (one frame,
/// gzip or not; an empty body is the default message).
fn response_message(data: &[u8]) -> Result<ExportMetricsServiceResponse> {
    if data.is_empty() {
        return Ok(ExportMetricsServiceResponse::default());
    }
    ensure!(data.len() >= 5, "short gRPC frame");
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let msg = data.get(5..5 + len).context("truncated gRPC frame")?;
    if data[0] == 1 {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(msg).read_to_end(&mut out)?;
        Ok(ExportMetricsServiceResponse::decode(&out[..])?)
    } else {
        Ok(ExportMetricsServiceResponse::decode(msg)?)
    }
}

// ---------------------------------------------------------------- collector

/// The collector's child process; killed if the bench fails before SIGTERM.
struct Collector {
    child: Child,
    grpc: SocketAddr,
    api: SocketAddr,
}

impl Collector {
    fn start(config: &Path, stderr_path: &Path) -> Result<Collector> {
        let child = Command::new(env!("CARGO_BIN_EXE_querywatch"))
            .args(["collector", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(stderr_path)?)
            .spawn()
            .context("starting querywatch collector")?;
        let mut c =
            Collector { child, grpc: SocketAddr::from(([127, 0, 0, 1], 0)), api: SocketAddr::from(([0; 4], 0)) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = fs::read_to_string(stderr_path)?;
            if let Some(line) = text.lines().find(|l| l.starts_with("querywatch collector: OTLP gRPC ")) {
                let grpc = line
                    .strip_prefix("querywatch collector: OTLP gRPC ")
                    .and_then(|r| r.split(',').next())
                    .context("no gRPC address in the start line")?;
                let api = line.rsplit("http://").next().context("no API address in the start line")?;
                c.grpc = grpc.trim().parse().with_context(|| format!("gRPC address in {line:?}"))?;
                c.api = api.trim().trim_end_matches('/').parse().with_context(|| format!("API address in {line:?}"))?;
                return Ok(c);
            }
            if let Some(status) = c.child.try_wait()? {
                bail!("the collector exited ({status}):\n{text}");
            }
            ensure!(Instant::now() < deadline, "the collector did not start within 30 s:\n{text}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and its exit status (it drains and stops cleanly).
    fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let term = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status()?;
        ensure!(term.success(), "kill -TERM {} failed", self.pid());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(Instant::now() < deadline, "the collector did not stop within 30 s of SIGTERM");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A sample's labels, in order.
type Labels = Vec<(String, String)>;

/// One `/metrics` exposition: (name, labels, value) per sample.
struct Metrics {
    samples: Vec<(String, Labels, f64)>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name_labels, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = match name_labels.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}').unwrap_or(rest))),
                None => (name_labels, Vec::new()),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Metrics { samples }
    }

    /// The sum of the samples of `name` whose labels include `filter`.
    fn get(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for (n, labels, v) in &self.samples {
            if n == name && filter.iter().all(|(k, want)| labels.iter().any(|(lk, lv)| lk == k && lv == want)) {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// The first of `candidates` the exposition has: the receiver's names
    /// changed while it was being written; both spellings are read.
    fn first(&self, candidates: &[(&str, &[(&str, &str)])]) -> Result<f64> {
        candidates.iter().find_map(|(n, f)| self.get(n, f)).with_context(|| {
            format!("none of {:?} is in the collector's /metrics", candidates.iter().map(|c| c.0).collect::<Vec<_>>())
        })
    }

    fn receiver_points_accepted(&self) -> Result<f64> {
        self.first(&[
            ("querywatch_collector_ingest_data_points_total", &[("result", "accepted")]),
            ("querywatch_collector_points_total", &[("signal", "metrics"), ("outcome", "accepted")]),
        ])
    }

    fn receiver_points_ignored(&self) -> Result<f64> {
        self.first(&[
            ("querywatch_collector_ingest_data_points_total", &[("result", "ignored")]),
            ("querywatch_collector_points_total", &[("signal", "metrics"), ("outcome", "ignored")]),
        ])
    }

    fn receiver_metrics_requests(&self) -> Result<f64> {
        let f: &[(&str, &str)] = &[("transport", "grpc"), ("signal", "metrics")];
        self.first(&[("querywatch_collector_ingest_requests_total", f), ("querywatch_collector_requests_total", f)])
    }

    fn receiver_rejected(&self, reason: &str) -> Result<f64> {
        let f: &[(&str, &str)] = &[("reason", reason)];
        self.first(&[
            ("querywatch_collector_ingest_rejected_total", f),
            ("querywatch_collector_rejected_requests_total", f),
        ])
    }

    fn receiver_rejected_all(&self) -> Result<f64> {
        self.first(&[
            ("querywatch_collector_ingest_rejected_total", &[]),
            ("querywatch_collector_rejected_requests_total", &[]),
        ])
    }

    fn receiver_batches_queued(&self) -> Result<f64> {
        self.first(&[
            ("querywatch_collector_ingest_batches_total", &[]),
            ("querywatch_collector_queued_batches_total", &[]),
        ])
    }

    /// The receiver's handling time at a quantile (`0.5`, `0.99`, `1` = max), seconds.
    fn receiver_latency(&self, q: &str) -> Option<f64> {
        let f: &[(&str, &str)] = &[("quantile", q)];
        self.first(&[
            ("querywatch_collector_ingest_duration_seconds", f),
            ("querywatch_collector_ingest_latency_seconds", f),
        ])
        .ok()
    }
}

fn parse_labels(s: &str) -> Labels {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        if key.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(o) => value.push(o),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key, value));
    }
    out
}

/// GET /metrics.
fn scrape(api: SocketAddr) -> Result<Metrics> {
    Ok(Metrics::parse(&http_get(api, "/metrics")?))
}

/// GET `path` with a std-only HTTP/1.1 client (Connection: close); the
/// body of a 200.
fn http_get(api: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&api, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).with_context(|| format!("{path} is not UTF-8"))?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{path}: {}", head.lines().next().unwrap_or(""));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked { dechunk(body) } else { Ok(body.to_owned()) }
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").context("bad chunk")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).context("chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        s = rest.get(size + 2..).context("short chunk")?;
    }
}

// ---------------------------------------------------------------- sampling

/// One sample, every second.
struct Sample {
    at: f64,
    /// The collector's utime + stime.
    ticks: u64,
    rss_kib: u64,
    acked_hist: u64,
    acked_requests: u64,
    throttled: u64,
    /// From /metrics, every `scrape_every` samples.
    scraped: Option<Scraped>,
}

/// What a sample reads from `/metrics`.
#[derive(Clone)]
struct Scraped {
    store_bytes: Option<f64>,
    fingerprints: Option<f64>,
    queue: Option<f64>,
}

struct Sampler {
    pid: u32,
    api: SocketAddr,
    counters: Arc<Counters>,
    t0: Instant,
    /// Seconds between two scrapes of `/metrics`.
    scrape_every: usize,
}

impl Sampler {
    /// Samples every second until `stop`. `/metrics` is scraped by a
    /// thread of its own (a scrape can take a while under load, and holds
    /// the store's lock while it renders): each sample carries the latest.
    fn run(self, stop: &AtomicBool) -> Result<Vec<Sample>> {
        let latest: Arc<RwLock<Option<Scraped>>> = Arc::new(RwLock::new(None));
        let scraper_stop = Arc::new(AtomicBool::new(false));
        let scraper = {
            let (latest, stop, api) = (latest.clone(), scraper_stop.clone(), self.api);
            let every = Duration::from_secs(self.scrape_every as u64);
            thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Relaxed) {
                    if Instant::now() < next {
                        thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    next += every;
                    if let Ok(m) = scrape(api)
                        && let Ok(mut l) = latest.write()
                    {
                        *l = Some(Scraped {
                            store_bytes: m.get("querywatch_collector_store_bytes", &[]),
                            fingerprints: m.get("querywatch_collector_store_fingerprints", &[]),
                            queue: m.get("querywatch_collector_queue_batches", &[]),
                        });
                    }
                }
            })
        };
        let mut samples = Vec::new();
        let mut k = 0u64;
        while !stop.load(Relaxed) {
            let due = self.t0 + Duration::from_secs(k);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let ticks = proc_ticks(self.pid)?.context("the collector is gone")?;
            let rss_kib = status_kib(self.pid, "VmRSS")?;
            let c = &self.counters;
            samples.push(Sample {
                at: self.t0.elapsed().as_secs_f64(),
                ticks,
                rss_kib,
                acked_hist: c.acked_hist.load(Relaxed),
                acked_requests: c.acked.load(Relaxed),
                throttled: c.throttled.load(Relaxed),
                scraped: latest.read().ok().and_then(|l| l.clone()),
            });
            // Late (a busy machine): the next whole second, no burst of
            // samples to catch up.
            k = (k + 1).max(self.t0.elapsed().as_secs() + 1);
        }
        scraper_stop.store(true, Relaxed);
        scraper.join().map_err(|_| anyhow!("the /metrics scraper panicked"))?;
        Ok(samples)
    }
}

/// utime + stime of a process, or None when it is gone.
fn proc_ticks(pid: u32) -> Result<Option<u64>> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return Ok(None) };
    let rest = &text[text.rfind(')').context("malformed stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    ensure!(f.len() > 12, "malformed /proc/{pid}/stat");
    let n = |i: usize| -> Result<u64> { f[i].parse().with_context(|| format!("/proc/{pid}/stat field {i}")) };
    // f[0] = state (field 3): utime is field 14, stime 15.
    Ok(Some(n(11)? + n(12)?))
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).context("no such field")?;
    line.trim().trim_end_matches("kB").trim().parse().with_context(|| format!("{field} in /proc/{pid}/status"))
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

fn num_cpus() -> usize {
    thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn cpu_model() -> String {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim()));
    model.unwrap_or("unknown CPU").to_string()
}

fn mem_total() -> String {
    let info = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: Option<u64> =
        info.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().trim_end_matches("kB").trim().parse().ok());
    kib.map_or("unknown RAM".into(), |k| format!("{:.0} GiB RAM", k as f64 / 1048576.0))
}
