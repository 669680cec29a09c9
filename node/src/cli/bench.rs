//! `taskbroker bench produce|work|e2e`: load generators that drive an existing cluster through
//! the real client crate and report throughput, latency percentiles and CPU per task.
//!
//! # What is measured
//! - `produce`: `--producers` [`Producer`]s enqueue `--tasks` tasks of `--size` bytes; latency
//!   is from the moment a task is due (rate-limited mode) or enqueued (saturation) until its
//!   commit is confirmed (replicated and fsynced by a quorum).
//! - `work`: first loads `--tasks` tasks (not measured), then `--workers` [`Worker`](taskbroker_client::Worker)s lease and
//!   ack them; latency is from the moment a task is handed to the worker loop until its ack is
//!   confirmed (including `--work-time-ms`).
//! - `e2e`: producers and workers at once; latency is from the moment a task is due/enqueued to
//!   the moment its ack is confirmed (the send instant travels in the payload's first 8 bytes;
//!   producers and workers are in this one process, so one monotonic clock serves both).
//!
//! CPU: utime+stime of the server processes (`--pids`, or every process named
//! `--server-process` whose command line holds `serve`) and of this process, read from
//! `/proc/<pid>/stat` before and after the measured phase, divided by the tasks completed.
//!
//! # Design notes
//! - Rate-limited mode (`--rate`) uses one global schedule: task `i` is due at `start + i/rate`.
//!   Latency is measured from the due instant, not the actual send, so a stalled producer does
//!   not hide its own queueing (no coordinated omission).
//! - Every producer task keeps at most `--in-flight` tasks unanswered (a pipelining window);
//!   the client's byte budget bounds memory as well.
//! - Histograms are per task (producer or worker loop) and merged at the end: recording takes
//!   no lock.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use taskbroker_client::{Client, Error as ClientError, Producer, Task, TopicSpec};
use tokio::task::JoinSet;

use super::common::{CliError, ClientArgs, Output};

/// Highest latency a histogram records, µs (larger values are clamped). Why: a fixed bound keeps
/// histograms small; a task slower than a minute is a failure anyway.
pub const LATENCY_MAX_US: u64 = 60_000_000;
/// Clock ticks per second of `/proc/<pid>/stat` times. Why a constant: the kernel reports these
/// in USER_HZ, which is 100 on every Linux architecture we run on (x86-64, arm64), whatever the
/// kernel's internal HZ; reading `sysconf(_SC_CLK_TCK)` would need unsafe code for the same 100.
const USER_HZ: u64 = 100;
/// Significant digits of the latency histograms.
const LATENCY_SIGFIGS: u8 = 3;
/// Payload bytes that carry the send instant in `e2e`.
pub const STAMP_BYTES: usize = 8;
/// Largest accepted `--size`. Why: the client refuses larger tasks; fail early and clearly.
pub const TASK_SIZE_MAX_BYTES: usize = 4 << 20;
/// Most producers or workers. Why: each is a task with its own buffers.
pub const CONCURRENCY_MAX: usize = 4096;
/// Longest wait for a created topic's partitions to have leaders.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Progress refresh period.
const PROGRESS_TICK: Duration = Duration::from_millis(200);
/// Longest wait for the cluster to answer a task before the run is declared failed.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// `taskbroker bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Connection and output.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Workload.
    #[command(subcommand)]
    pub workload: Workload,
}

/// The three workloads.
#[derive(Debug, Subcommand)]
pub enum Workload {
    /// Produce N tasks with P producers; latency = enqueue (or due) to commit.
    Produce(ProduceOpts),
    /// Load N tasks, then lease and ack them with W workers; latency = handed to ack confirmed.
    Work(WorkOpts),
    /// Producers and workers at once; latency = produce (or due) to ack confirmed.
    E2e(E2eOpts),
}

/// Options of every workload.
#[derive(Debug, Clone, Args)]
pub struct CommonOpts {
    /// Tasks to complete.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    pub tasks: u64,
    /// Payload bytes per task.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Stop after this long even if fewer tasks completed (500ms, 30s, 5m).
    #[arg(long, value_parser = super::common::parse_duration)]
    pub duration: Option<Duration>,
    /// Topic (created if missing; default: a fresh `bench-<ms>` topic, deleted at the end).
    #[arg(long)]
    pub topic: Option<String>,
    /// Partitions of a created topic.
    #[arg(long, default_value_t = 12)]
    pub partitions: u32,
    /// Replication factor of a created topic.
    #[arg(long, default_value_t = 3)]
    pub replication: u32,
    /// Server process ids to sample CPU of (default: processes found by --server-process).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Name of the server processes to find when --pids is not given ("" = none).
    #[arg(long, default_value = "taskbroker")]
    pub server_process: String,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Keep the created topic at the end.
    #[arg(long)]
    pub keep_topic: bool,
}

/// Options of the producing side.
#[derive(Debug, Clone, Args)]
pub struct ProducerOpts {
    /// Producers (each a client `Producer` driven by its own task).
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Distinct keys (tasks get key `k<i mod keys>`); 0 = no keys (round-robin).
    #[arg(long, default_value_t = 0)]
    pub keys: u64,
    /// Target batch size in bytes.
    #[arg(long, default_value_t = taskbroker_client::producer::DEFAULT_BATCH_BYTES_MAX)]
    pub batch_size: usize,
    /// Linger: how long a task may wait for its batch to fill, ms.
    #[arg(long, default_value_t = 1)]
    pub linger_ms: u64,
    /// Tasks each producer keeps unanswered (the pipelining window).
    #[arg(long, default_value_t = 4096)]
    pub in_flight: usize,
    /// Total tasks per second over all producers (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

/// Options of the working side.
#[derive(Debug, Clone, Args)]
pub struct WorkerOpts {
    /// Workers (each a client `Worker` with its own fetcher).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Tasks each worker processes at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Tasks each worker leases ahead of processing.
    #[arg(long, default_value_t = 64)]
    pub prefetch: usize,
    /// Simulated work per task, ms.
    #[arg(long, default_value_t = 0)]
    pub work_time_ms: u64,
    /// Consumer group.
    #[arg(long, default_value = "bench")]
    pub group: String,
}

/// `bench produce`.
#[derive(Debug, Clone, Args)]
pub struct ProduceOpts {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonOpts,
    /// Producer options.
    #[command(flatten)]
    pub producer: ProducerOpts,
}

/// `bench work`.
#[derive(Debug, Clone, Args)]
pub struct WorkOpts {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonOpts,
    /// Worker options.
    #[command(flatten)]
    pub worker: WorkerOpts,
    /// Producers used to load the tasks before the measured phase.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
}

/// `bench e2e`.
#[derive(Debug, Clone, Args)]
pub struct E2eOpts {
    /// Shared options.
    #[command(flatten)]
    pub common: CommonOpts,
    /// Producer options.
    #[command(flatten)]
    pub producer: ProducerOpts,
    /// Worker options.
    #[command(flatten)]
    pub worker: WorkerOpts,
}

/// Latency percentiles, µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
}

impl Latency {
    /// The summary of `h` (µs values).
    ///
    /// ```
    /// use taskbroker_node::cli::bench::{new_histogram, Latency};
    /// let mut h = new_histogram();
    /// for v in 1..=1000u64 { h.saturating_record(v); }
    /// let l = Latency::of(&h);
    /// assert_eq!(l.count, 1000);
    /// assert!(l.p50_us >= 499 && l.p50_us <= 501);
    /// ```
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// CPU time used during the measured phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuUsage {
    /// Server processes sampled.
    pub server_processes: usize,
    /// utime+stime of the server processes, µs.
    pub server_us: u64,
    /// utime+stime of this process, µs.
    pub client_us: u64,
    /// (server + client) / tasks completed, µs.
    pub per_task_us: f64,
    /// server / tasks completed, µs.
    pub server_per_task_us: f64,
    /// client / tasks completed, µs.
    pub client_per_task_us: f64,
}

/// The result of one run (the `--output json` document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `produce`, `work` or `e2e`.
    pub workload: String,
    /// Topic used.
    pub topic: String,
    /// Payload bytes per task.
    pub size_bytes: usize,
    /// Producers (0 for `work`'s measured phase).
    pub producers: usize,
    /// Workers (0 for `produce`).
    pub workers: usize,
    /// Target rate, tasks/s (None = unlimited).
    pub rate: Option<f64>,
    /// Tasks completed (committed for `produce`, acked otherwise).
    pub tasks: u64,
    /// Tasks that failed.
    pub errors: u64,
    /// Measured phase, seconds.
    pub elapsed_s: f64,
    /// Tasks per second.
    pub tasks_per_s: f64,
    /// Payload megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Latency of the workload (see the module docs).
    pub latency: Latency,
    /// `e2e` only: produce-to-commit latency.
    pub produce_latency: Option<Latency>,
    /// CPU time, when /proc could be read.
    pub cpu: Option<CpuUsage>,
}

impl Report {
    /// The text form: one block of aligned lines.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} on {}: {} tasks of {} B in {:.2} s ({} errors)\n",
            self.workload, self.topic, self.tasks, self.size_bytes, self.elapsed_s, self.errors
        );
        let mut rows = vec![
            ("producers", self.producers.to_string()),
            ("workers", self.workers.to_string()),
            (
                "rate",
                self.rate
                    .map_or("unlimited".to_string(), |r| format!("{r:.0} tasks/s")),
            ),
            ("throughput", format!("{:.0} tasks/s", self.tasks_per_s)),
            ("bandwidth", format!("{:.2} MB/s", self.mb_per_s)),
            ("latency", fmt_latency(&self.latency)),
        ];
        if let Some(p) = &self.produce_latency {
            rows.push(("produce latency", fmt_latency(p)));
        }
        if let Some(c) = &self.cpu {
            rows.push((
                "cpu per task",
                format!(
                    "{:.1} us (servers {:.1} us over {} processes, client {:.1} us)",
                    c.per_task_us, c.server_per_task_us, c.server_processes, c.client_per_task_us
                ),
            ));
        }
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        for (k, v) in rows {
            s.push_str(&format!("  {k:<width$}  {v}\n"));
        }
        s
    }
}

fn fmt_latency(l: &Latency) -> String {
    format!(
        "p50 {}  p99 {}  p99.9 {}  max {}  (mean {})",
        fmt_us(l.p50_us),
        fmt_us(l.p99_us),
        fmt_us(l.p999_us),
        fmt_us(l.max_us),
        fmt_us(l.mean_us.round() as u64)
    )
}

/// Microseconds for humans: `850us`, `1.25ms`, `2.50s`.
///
/// ```
/// use taskbroker_node::cli::bench::fmt_us;
/// assert_eq!(fmt_us(850), "850us");
/// assert_eq!(fmt_us(1250), "1.25ms");
/// assert_eq!(fmt_us(2_500_000), "2.50s");
/// ```
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// An empty latency histogram (µs, 1 µs to [`LATENCY_MAX_US`], 3 significant digits).
///
/// ```
/// let h = taskbroker_node::cli::bench::new_histogram();
/// assert_eq!(h.len(), 0);
/// ```
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIGS) {
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram bounds are valid: {e}"),
    }
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.clamp(1, LATENCY_MAX_US));
}

/// The global send schedule of rate-limited mode: task `i` is due `i / rate` seconds after the
/// start. Sans-IO: callers supply the instants.
///
/// ```
/// use std::time::Duration;
/// use taskbroker_node::cli::bench::RateSchedule;
/// let s = RateSchedule::new(1000.0).expect("positive rate");
/// assert_eq!(s.due(0), Duration::ZERO);
/// assert_eq!(s.due(1500), Duration::from_millis(1500));
/// assert!(RateSchedule::new(0.0).is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSchedule {
    nanos_per_task: f64,
}

impl RateSchedule {
    /// A schedule of `rate` tasks per second; `None` for a rate that is not positive and
    /// finite (meaning: unlimited).
    pub fn new(rate: f64) -> Option<RateSchedule> {
        (rate.is_finite() && rate > 0.0).then(|| RateSchedule {
            nanos_per_task: 1e9 / rate,
        })
    }

    /// When task `i` is due, after the start.
    pub fn due(&self, i: u64) -> Duration {
        Duration::from_nanos((i as f64 * self.nanos_per_task).round() as u64)
    }
}

/// utime+stime of a process, in clock ticks, from the text of `/proc/<pid>/stat`.
///
/// ```
/// use taskbroker_node::cli::bench::parse_proc_stat_ticks;
/// let stat = "42 (task broker) S 1 42 42 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 9 0 1 1 1";
/// assert_eq!(parse_proc_stat_ticks(stat), Some(320));
/// assert_eq!(parse_proc_stat_ticks("garbage"), None);
/// ```
pub fn parse_proc_stat_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces or ')': fields resume after the
    // last ')'. Fields after it start at field 3 (state); utime and stime are fields 14, 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of `pid` so far, µs; `None` if the process is gone or /proc is unreadable.
pub fn process_cpu_us(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_proc_stat_ticks(&text)?;
    Some(ticks.saturating_mul(1_000_000) / USER_HZ)
}

/// Pids of processes called `name` (as `/proc/<pid>/comm`) running `serve`, other than this one.
pub fn find_server_pids(name: &str) -> Vec<u32> {
    if name.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let base = Path::new("/proc").join(pid.to_string());
            let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
            let cmdline = std::fs::read(base.join("cmdline")).unwrap_or_default();
            comm.trim() == name && cmdline.split(|b| *b == 0).any(|arg| arg == b"serve")
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// CPU counters of the servers and this process at one instant.
struct CpuSample {
    servers: Vec<(u32, u64)>,
    me: Option<u64>,
}

impl CpuSample {
    fn take(pids: &[u32]) -> CpuSample {
        CpuSample {
            servers: pids
                .iter()
                .filter_map(|&p| Some((p, process_cpu_us(p)?)))
                .collect(),
            me: process_cpu_us(std::process::id()),
        }
    }

    /// Usage between `self` and `later` over `tasks` (servers present in both samples).
    fn usage(&self, later: &CpuSample, tasks: u64) -> Option<CpuUsage> {
        let me = later.me?.saturating_sub(self.me?);
        let mut server = 0;
        let mut n = 0;
        for (pid, before) in &self.servers {
            if let Some((_, after)) = later.servers.iter().find(|(p, _)| p == pid) {
                server += after.saturating_sub(*before);
                n += 1;
            }
        }
        let per = |us: u64| {
            if tasks == 0 {
                0.0
            } else {
                us as f64 / tasks as f64
            }
        };
        Some(CpuUsage {
            server_processes: n,
            server_us: server,
            client_us: me,
            per_task_us: per(server + me),
            server_per_task_us: per(server),
            client_per_task_us: per(me),
        })
    }
}

/// Checks options that clap cannot.
///
/// # Errors
/// [`CliError::Input`] naming the bad option.
pub fn validate(
    common: &CommonOpts,
    producers: usize,
    workers: Option<&WorkerOpts>,
) -> Result<(), CliError> {
    let bad = |m: String| Err(CliError::Input(m));
    if common.tasks == 0 {
        return bad("--tasks must be at least 1".into());
    }
    if common.size > TASK_SIZE_MAX_BYTES {
        return bad(format!(
            "--size {} is larger than the task limit of {TASK_SIZE_MAX_BYTES} bytes",
            common.size
        ));
    }
    if producers == 0 || producers > CONCURRENCY_MAX {
        return bad(format!(
            "--producers must be between 1 and {CONCURRENCY_MAX}"
        ));
    }
    if common.partitions == 0 || common.replication == 0 {
        return bad("--partitions and --replication must be at least 1".into());
    }
    if let Some(w) = workers {
        if w.workers == 0 || w.workers > CONCURRENCY_MAX {
            return bad(format!("--workers must be between 1 and {CONCURRENCY_MAX}"));
        }
        if w.concurrency == 0 || w.concurrency > CONCURRENCY_MAX {
            return bad(format!(
                "--concurrency must be between 1 and {CONCURRENCY_MAX}"
            ));
        }
    }
    Ok(())
}

fn validate_producer(p: &ProducerOpts) -> Result<(), CliError> {
    if p.rate < 0.0 || !p.rate.is_finite() {
        return Err(CliError::Input("--rate must be a number >= 0".into()));
    }
    if p.in_flight == 0 {
        return Err(CliError::Input("--in-flight must be at least 1".into()));
    }
    Ok(())
}

/// Runs `taskbroker bench`.
///
/// # Errors
/// Bad options, an unreachable cluster, or a run where tasks failed or stalled.
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    let client = args.client.connect().await?;
    let report = match args.workload {
        Workload::Produce(o) => {
            validate(&o.common, o.producer.producers, None)?;
            validate_producer(&o.producer)?;
            let progress = show_progress(&o.common, args.client.output);
            let topic = prepare_topic(&client, &o.common).await?;
            let r = run_produce(&client, &topic, &o, progress).await;
            cleanup(&client, &o.common, &topic).await;
            r?
        }
        Workload::Work(o) => {
            validate(&o.common, o.producers, Some(&o.worker))?;
            let progress = show_progress(&o.common, args.client.output);
            let topic = prepare_topic(&client, &o.common).await?;
            let r = run_work(&client, &topic, &o, progress).await;
            cleanup(&client, &o.common, &topic).await;
            r?
        }
        Workload::E2e(o) => {
            validate(&o.common, o.producer.producers, Some(&o.worker))?;
            validate_producer(&o.producer)?;
            if o.common.size < STAMP_BYTES {
                return Err(CliError::Input(format!(
                    "e2e needs --size of at least {STAMP_BYTES} bytes (the send instant)"
                )));
            }
            let progress = show_progress(&o.common, args.client.output);
            let topic = prepare_topic(&client, &o.common).await?;
            let r = run_e2e(&client, &topic, &o, progress).await;
            cleanup(&client, &o.common, &topic).await;
            r?
        }
    };
    args.client.print(&report, || report.to_text())?;
    if report.errors > 0 {
        return Err(CliError::Input(format!(
            "{} tasks failed during the run",
            report.errors
        )));
    }
    Ok(())
}

fn show_progress(common: &CommonOpts, output: Output) -> bool {
    !common.no_progress
        && output == Output::Text
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

async fn prepare_topic(client: &Client, common: &CommonOpts) -> Result<String, CliError> {
    let topic = common.topic.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("bench-{ms}")
    });
    let spec = TopicSpec {
        partitions: Some(common.partitions),
        replication_factor: Some(common.replication),
        ..TopicSpec::default()
    };
    match client.admin().create_topic(&topic, spec).await {
        Ok(_) | Err(ClientError::TopicConflict { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    // A new topic's partitions elect their leaders after the create returns; producing before
    // then fails with "unknown topic" on the node that does not know it yet.
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    loop {
        // The node answering may not have applied the creation yet either.
        let ready = match client.admin().describe_topic(&topic).await {
            Ok(meta) => {
                !meta.partitions.is_empty() && meta.partitions.iter().all(|p| p.leader.is_some())
            }
            Err(ClientError::UnknownTopic { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        if ready {
            break;
        }
        if Instant::now() >= deadline {
            return Err(CliError::Input(format!(
                "topic {topic:?} has partitions without a leader after {TOPIC_READY_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.partition_count(&topic).await?;
    Ok(topic)
}

async fn cleanup(client: &Client, common: &CommonOpts, topic: &str) {
    if common.topic.is_none() && !common.keep_topic {
        if let Err(e) = client.admin().delete_topic(topic).await {
            tracing::warn!(topic, error = %e, "could not delete the bench topic");
        }
    }
}

fn server_pids(common: &CommonOpts) -> Vec<u32> {
    if common.pids.is_empty() {
        find_server_pids(&common.server_process)
    } else {
        common.pids.clone()
    }
}

/// Counters shared by the tasks of a run.
struct Shared {
    /// Next ticket (task index) to produce.
    next: AtomicU64,
    /// Tasks completed (committed or acked).
    done: AtomicU64,
    /// Tasks that failed.
    errors: AtomicU64,
    total: u64,
    deadline: Option<Instant>,
    start: Instant,
}

impl Shared {
    fn new(total: u64, duration: Option<Duration>) -> Arc<Shared> {
        let start = Instant::now();
        Arc::new(Shared {
            next: AtomicU64::new(0),
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            total,
            deadline: duration.map(|d| start + d),
            start,
        })
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn finished(&self) -> bool {
        self.done.load(Ordering::Relaxed) + self.errors.load(Ordering::Relaxed) >= self.total
            || self.expired()
    }
}

/// Draws a progress bar of `shared.done` until `stop` resolves.
fn spawn_progress(
    enabled: bool,
    label: &'static str,
    shared: Arc<Shared>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::new(shared.total);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(label);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROGRESS_TICK);
        loop {
            tick.tick().await;
            bar.set_position(shared.done.load(Ordering::Relaxed));
            if shared.finished() {
                bar.finish_and_clear();
                return;
            }
        }
    }))
}

/// What a producer task does with each committed task.
#[derive(Clone, Copy)]
struct ProduceJob {
    size: usize,
    keys: u64,
    in_flight: usize,
    schedule: Option<RateSchedule>,
    /// Count completions in `done` (false when workers count them).
    count_done: bool,
    /// Put the send instant (ns since `start`) in the payload's first bytes.
    stamp: bool,
}

/// One producer's loop: take tickets until the total is reached, send, record latencies.
async fn produce_loop(
    producer: Producer,
    topic: String,
    job: ProduceJob,
    shared: Arc<Shared>,
) -> Histogram<u64> {
    let mut hist = new_histogram();
    let mut pending = FuturesUnordered::new();
    let template = vec![0x5au8; job.size];
    let mut producing = true;
    while producing || !pending.is_empty() {
        if producing && pending.len() < job.in_flight {
            let i = shared.next.fetch_add(1, Ordering::Relaxed);
            if i >= shared.total || shared.expired() {
                producing = false;
                if let Err(e) = producer.flush().await {
                    tracing::warn!(error = %e, "flush failed");
                }
                continue;
            }
            let due = match job.schedule {
                Some(s) => {
                    let at = shared.start + s.due(i);
                    tokio::time::sleep_until(at.into()).await;
                    at
                }
                None => Instant::now(),
            };
            let mut payload = template.clone();
            if job.stamp {
                let ns = u64::try_from(due.duration_since(shared.start).as_nanos()).unwrap_or(0);
                payload[..STAMP_BYTES].copy_from_slice(&ns.to_le_bytes());
            }
            let mut task = Task::new(payload);
            if job.keys > 0 {
                task = task.key(format!("k{}", i % job.keys));
            }
            match producer.enqueue(&topic, task).await {
                Ok(d) => pending.push(async move { (d.await, due.elapsed()) }),
                Err(e) => {
                    tracing::warn!(error = %e, "enqueue failed");
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Collect whatever is already answered without waiting.
            while let Some(Some((r, lat))) = futures::FutureExt::now_or_never(pending.next()) {
                settle_produced(r, lat, &mut hist, &shared, job.count_done);
            }
        } else {
            match tokio::time::timeout(STALL_TIMEOUT, pending.next()).await {
                Ok(Some((r, lat))) => settle_produced(r, lat, &mut hist, &shared, job.count_done),
                Ok(None) => {}
                Err(_) => {
                    tracing::warn!(
                        pending = pending.len(),
                        "no answer for {STALL_TIMEOUT:?}; giving up"
                    );
                    shared
                        .errors
                        .fetch_add(pending.len() as u64, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    hist
}

fn settle_produced(
    r: taskbroker_client::Result<taskbroker_client::TaskOffset>,
    lat: Duration,
    hist: &mut Histogram<u64>,
    shared: &Shared,
    count_done: bool,
) {
    match r {
        Ok(_) => {
            record(hist, lat);
            if count_done {
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "produce failed");
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn spawn_producers(
    client: &Client,
    topic: &str,
    opts: &ProducerOpts,
    job: ProduceJob,
    shared: &Arc<Shared>,
) -> JoinSet<Histogram<u64>> {
    let mut set = JoinSet::new();
    for _ in 0..opts.producers {
        let producer = client
            .producer()
            .linger(Duration::from_millis(opts.linger_ms))
            .batch_bytes_max(opts.batch_size)
            .build();
        set.spawn(produce_loop(
            producer,
            topic.to_string(),
            job,
            shared.clone(),
        ));
    }
    set
}

async fn merge(mut set: JoinSet<Histogram<u64>>) -> Histogram<u64> {
    let mut all = new_histogram();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(h) => {
                if let Err(e) = all.add(&h) {
                    tracing::warn!(error = %e, "merging histograms");
                }
            }
            Err(e) => tracing::warn!(error = %e, "a bench task failed"),
        }
    }
    all
}

/// What a run was: the fixed part of its [`Report`].
struct Shape<'a> {
    workload: &'a str,
    topic: &'a str,
    size: usize,
    producers: usize,
    workers: usize,
    rate: f64,
}

fn report(
    shape: Shape<'_>,
    shared: &Shared,
    elapsed: Duration,
    latency: &Histogram<u64>,
    produce_latency: Option<&Histogram<u64>>,
    cpu: Option<CpuUsage>,
) -> Report {
    let tasks = shared.done.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64().max(1e-9);
    Report {
        workload: shape.workload.into(),
        topic: shape.topic.into(),
        size_bytes: shape.size,
        producers: shape.producers,
        workers: shape.workers,
        rate: (shape.rate > 0.0).then_some(shape.rate),
        tasks,
        errors: shared.errors.load(Ordering::Relaxed),
        elapsed_s: elapsed.as_secs_f64(),
        tasks_per_s: tasks as f64 / secs,
        mb_per_s: tasks as f64 * shape.size as f64 / secs / 1e6,
        latency: Latency::of(latency),
        produce_latency: produce_latency.map(Latency::of),
        cpu,
    }
}

async fn run_produce(
    client: &Client,
    topic: &str,
    o: &ProduceOpts,
    progress: bool,
) -> Result<Report, CliError> {
    let pids = server_pids(&o.common);
    let before = CpuSample::take(&pids);
    let shared = Shared::new(o.common.tasks, o.common.duration);
    let bar = spawn_progress(progress, "produce", shared.clone());
    let job = ProduceJob {
        size: o.common.size,
        keys: o.producer.keys,
        in_flight: o.producer.in_flight,
        schedule: RateSchedule::new(o.producer.rate),
        count_done: true,
        stamp: false,
    };
    let set = spawn_producers(client, topic, &o.producer, job, &shared);
    let hist = merge(set).await;
    let elapsed = shared.start.elapsed();
    let cpu = before.usage(&CpuSample::take(&pids), shared.done.load(Ordering::Relaxed));
    if let Some(b) = bar {
        let _ = b.await;
    }
    Ok(report(
        Shape {
            workload: "produce",
            topic,
            size: o.common.size,
            producers: o.producer.producers,
            workers: 0,
            rate: o.producer.rate,
        },
        &shared,
        elapsed,
        &hist,
        None,
        cpu,
    ))
}

/// Builds the workers and spawns `concurrency` loops per worker that take, (sleep), ack and
/// record; with `stamp`, latency is from the instant in the payload, else from the hand-over.
async fn spawn_workers(
    client: &Client,
    topic: &str,
    o: &WorkerOpts,
    shared: &Arc<Shared>,
    stamp: bool,
) -> Result<(Vec<taskbroker_client::Worker>, JoinSet<Histogram<u64>>), CliError> {
    let mut workers = Vec::with_capacity(o.workers);
    let mut set = JoinSet::new();
    for _ in 0..o.workers {
        let w = client
            .worker(topic, o.group.clone())
            .concurrency(o.concurrency)
            .prefetch(o.prefetch)
            .wait(Duration::from_millis(200))
            .shutdown_timeout(Duration::from_secs(5))
            .build()
            .await?;
        for _ in 0..o.concurrency {
            let (w, shared) = (w.clone(), shared.clone());
            let work = Duration::from_millis(o.work_time_ms);
            set.spawn(async move {
                let mut hist = new_histogram();
                while !shared.finished() {
                    let next = tokio::time::timeout(Duration::from_millis(250), w.next()).await;
                    let task = match next {
                        Err(_) => continue,
                        Ok(Ok(Some(t))) => t,
                        Ok(Ok(None)) => break,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "fetch failed");
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    };
                    let handed = Instant::now();
                    let from = if stamp {
                        stamp_of(task.payload())
                            .map_or(handed, |ns| shared.start + Duration::from_nanos(ns))
                    } else {
                        handed
                    };
                    if !work.is_zero() {
                        tokio::time::sleep(work).await;
                    }
                    match task.ack().await {
                        Ok(()) => {
                            record(&mut hist, from.elapsed());
                            shared.done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ack failed");
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                hist
            });
        }
        workers.push(w);
    }
    Ok((workers, set))
}

fn stamp_of(payload: &[u8]) -> Option<u64> {
    let b: [u8; STAMP_BYTES] = payload.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

async fn stop_workers(workers: Vec<taskbroker_client::Worker>) {
    let mut set = JoinSet::new();
    for w in workers {
        set.spawn(async move { w.shutdown().await });
    }
    while set.join_next().await.is_some() {}
}

async fn run_work(
    client: &Client,
    topic: &str,
    o: &WorkOpts,
    progress: bool,
) -> Result<Report, CliError> {
    // Load phase (not measured).
    let load = Shared::new(o.common.tasks, None);
    let bar = spawn_progress(progress, "load", load.clone());
    let popts = ProducerOpts {
        producers: o.producers,
        keys: 0,
        batch_size: taskbroker_client::producer::DEFAULT_BATCH_BYTES_MAX,
        linger_ms: 1,
        in_flight: 4096,
        rate: 0.0,
    };
    let job = ProduceJob {
        size: o.common.size,
        keys: 0,
        in_flight: popts.in_flight,
        schedule: None,
        count_done: true,
        stamp: false,
    };
    merge(spawn_producers(client, topic, &popts, job, &load)).await;
    if let Some(b) = bar {
        let _ = b.await;
    }
    let loaded = load.done.load(Ordering::Relaxed);
    if loaded < o.common.tasks {
        return Err(CliError::Input(format!(
            "loading failed: {loaded} of {} tasks committed",
            o.common.tasks
        )));
    }
    // Measured phase.
    let pids = server_pids(&o.common);
    let before = CpuSample::take(&pids);
    let shared = Shared::new(o.common.tasks, o.common.duration);
    let bar = spawn_progress(progress, "work", shared.clone());
    let (workers, set) = spawn_workers(client, topic, &o.worker, &shared, false).await?;
    let hist = merge(set).await;
    let elapsed = shared.start.elapsed();
    let cpu = before.usage(&CpuSample::take(&pids), shared.done.load(Ordering::Relaxed));
    stop_workers(workers).await;
    if let Some(b) = bar {
        let _ = b.await;
    }
    Ok(report(
        Shape {
            workload: "work",
            topic,
            size: o.common.size,
            producers: 0,
            workers: o.worker.workers * o.worker.concurrency,
            rate: 0.0,
        },
        &shared,
        elapsed,
        &hist,
        None,
        cpu,
    ))
}

async fn run_e2e(
    client: &Client,
    topic: &str,
    o: &E2eOpts,
    progress: bool,
) -> Result<Report, CliError> {
    let pids = server_pids(&o.common);
    let before = CpuSample::take(&pids);
    let shared = Shared::new(o.common.tasks, o.common.duration);
    let (workers, wset) = spawn_workers(client, topic, &o.worker, &shared, true).await?;
    let bar = spawn_progress(progress, "e2e", shared.clone());
    let job = ProduceJob {
        size: o.common.size,
        keys: o.producer.keys,
        in_flight: o.producer.in_flight,
        schedule: RateSchedule::new(o.producer.rate),
        count_done: false,
        stamp: true,
    };
    let pset = spawn_producers(client, topic, &o.producer, job, &shared);
    let produce_hist = merge(pset).await;
    let hist = merge(wset).await;
    let elapsed = shared.start.elapsed();
    let cpu = before.usage(&CpuSample::take(&pids), shared.done.load(Ordering::Relaxed));
    stop_workers(workers).await;
    if let Some(b) = bar {
        let _ = b.await;
    }
    Ok(report(
        Shape {
            workload: "e2e",
            topic,
            size: o.common.size,
            producers: o.producer.producers,
            workers: o.worker.workers * o.worker.concurrency,
            rate: o.producer.rate,
        },
        &shared,
        elapsed,
        &hist,
        Some(&produce_hist),
        cpu,
    ))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let mut all = vec!["taskbroker", "bench"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all)?.command {
            Some(Command::Bench(b)) => Ok(b),
            other => panic!("not bench: {other:?}"),
        }
    }

    #[test]
    fn flags_parse_with_the_documented_names() {
        let b = parse(&[
            "--brokers",
            "a:1,b:2",
            "produce",
            "-n",
            "500",
            "--size",
            "16384",
            "--producers",
            "8",
            "--keys",
            "100",
            "--batch-size",
            "65536",
            "--linger-ms",
            "2",
            "--rate",
            "1500",
            "--topic",
            "t",
            "--partitions",
            "6",
            "--replication",
            "1",
            "--duration",
            "30s",
            "--pids",
            "10,11",
            "--output",
            "json",
        ])
        .expect("parse");
        assert_eq!(b.client.brokers, ["a:1", "b:2"]);
        assert_eq!(b.client.output, Output::Json);
        let Workload::Produce(p) = b.workload else {
            panic!("produce expected")
        };
        assert_eq!(p.common.tasks, 500);
        assert_eq!(p.common.size, 16384);
        assert_eq!(p.common.duration, Some(Duration::from_secs(30)));
        assert_eq!(p.common.pids, [10, 11]);
        assert_eq!((p.common.partitions, p.common.replication), (6, 1));
        assert_eq!(p.producer.producers, 8);
        assert_eq!(p.producer.keys, 100);
        assert_eq!(p.producer.batch_size, 65536);
        assert_eq!(p.producer.linger_ms, 2);
        assert_eq!(p.producer.rate, 1500.0);

        let b = parse(&[
            "work",
            "--workers",
            "32",
            "--work-time-ms",
            "5",
            "--tasks",
            "9",
        ])
        .expect("parse");
        let Workload::Work(w) = b.workload else {
            panic!("work expected")
        };
        assert_eq!(
            (w.worker.workers, w.worker.work_time_ms, w.common.tasks),
            (32, 5, 9)
        );

        let b =
            parse(&["e2e", "--rate", "100", "--workers", "4", "--producers", "2"]).expect("parse");
        let Workload::E2e(e) = b.workload else {
            panic!("e2e expected")
        };
        assert_eq!(
            (e.producer.rate, e.worker.workers, e.producer.producers),
            (100.0, 4, 2)
        );

        assert!(parse(&["produce", "--size", "lots"]).is_err());
        assert!(parse(&["nonsense"]).is_err());
    }

    #[test]
    fn bad_values_are_refused_with_a_message() {
        let b = parse(&["produce", "--tasks", "0"]).expect("parse");
        let Workload::Produce(p) = b.workload else {
            panic!()
        };
        let e = validate(&p.common, 1, None).expect_err("zero tasks");
        assert!(e.to_string().contains("--tasks"), "{e}");
        let mut c = p.common.clone();
        c.tasks = 1;
        c.size = TASK_SIZE_MAX_BYTES + 1;
        assert!(validate(&c, 1, None).is_err());
        c.size = 10;
        assert!(validate(&c, 0, None).is_err());
        assert!(validate(&c, 1, None).is_ok());
        let mut prod = p.producer.clone();
        prod.rate = -1.0;
        assert!(validate_producer(&prod).is_err());
        prod.rate = f64::NAN;
        assert!(validate_producer(&prod).is_err());
    }

    #[test]
    fn rate_schedule_spaces_tasks_evenly() {
        let s = RateSchedule::new(4.0).expect("rate");
        assert_eq!(s.due(1), Duration::from_millis(250));
        assert_eq!(s.due(4), Duration::from_secs(1));
        assert_eq!(s.due(10), Duration::from_millis(2500));
        let fast = RateSchedule::new(1e6).expect("rate");
        assert_eq!(fast.due(3), Duration::from_micros(3));
        assert!(RateSchedule::new(-5.0).is_none());
        assert!(RateSchedule::new(f64::INFINITY).is_none());
    }

    #[test]
    fn proc_stat_parsing_handles_odd_names() {
        let stat = "7 (a) b) c) R 1 7 7 0 -1 0 0 0 0 0 11 22 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_proc_stat_ticks(stat), Some(33));
        assert_eq!(parse_proc_stat_ticks("7 (x) R 1 2"), None);
        assert!(process_cpu_us(std::process::id()).is_some());
    }

    #[test]
    fn cpu_usage_is_split_per_task() {
        let a = CpuSample {
            servers: vec![(1, 1_000), (2, 5_000), (3, 0)],
            me: Some(100),
        };
        // Process 3 vanished; it is left out.
        let b = CpuSample {
            servers: vec![(1, 3_000), (2, 6_000)],
            me: Some(1_100),
        };
        let u = a.usage(&b, 100).expect("usage");
        assert_eq!(
            (u.server_processes, u.server_us, u.client_us),
            (2, 3_000, 1_000)
        );
        assert_eq!(u.per_task_us, 40.0);
        assert_eq!(u.server_per_task_us, 30.0);
        assert_eq!(u.client_per_task_us, 10.0);
    }

    #[test]
    fn reports_format_as_text_and_json() {
        let mut h = new_histogram();
        for us in [100u64, 200, 300, 400, 10_000] {
            h.saturating_record(us);
        }
        let shared = Shared::new(5, None);
        shared.done.store(5, Ordering::Relaxed);
        let r = report(
            Shape {
                workload: "produce",
                topic: "t",
                size: 1024,
                producers: 2,
                workers: 0,
                rate: 0.0,
            },
            &shared,
            Duration::from_millis(500),
            &h,
            None,
            Some(CpuUsage {
                server_processes: 3,
                server_us: 40,
                client_us: 10,
                per_task_us: 10.0,
                server_per_task_us: 8.0,
                client_per_task_us: 2.0,
            }),
        );
        assert_eq!(r.tasks_per_s, 10.0);
        assert!((r.mb_per_s - 0.01024).abs() < 1e-9);
        assert_eq!(r.latency.max_us, h.max());
        assert!(
            r.latency.p50_us >= 299 && r.latency.p50_us <= 301,
            "{:?}",
            r.latency
        );
        let text = r.to_text();
        assert!(
            text.starts_with("produce on t: 5 tasks of 1024 B in 0.50 s (0 errors)\n"),
            "{text}"
        );
        assert!(text.contains("  throughput    10 tasks/s\n"), "{text}");
        assert!(text.contains("  rate          unlimited\n"), "{text}");
        assert!(text.contains("p99.9 10.01ms"), "{text}");
        assert!(
            text.contains("  cpu per task  10.0 us (servers 8.0 us over 3 processes"),
            "{text}"
        );
        let json = serde_json::to_string(&r).expect("json");
        let back: Report = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, r);
    }

    #[test]
    fn latencies_are_recorded_in_microseconds_and_clamped() {
        let mut h = new_histogram();
        record(&mut h, Duration::from_nanos(10));
        record(&mut h, Duration::from_millis(3));
        record(&mut h, Duration::from_secs(3600));
        assert_eq!(h.min(), 1);
        assert!(h.max() >= LATENCY_MAX_US - LATENCY_MAX_US / 500);
        assert!(h.value_at_quantile(0.5) >= 2_995 && h.value_at_quantile(0.5) <= 3_005);
        assert_eq!(stamp_of(&7u64.to_le_bytes()), Some(7));
        assert_eq!(stamp_of(&[1, 2]), None);
    }
}
