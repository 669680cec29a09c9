//! `jsbench`: the NATS JetStream side of the benchmark suite. The same three workloads as
//! `taskbroker bench` (produce, work, e2e), the same options, the same measurements and the same
//! JSON report, against a JetStream cluster, with async-nats.
//!
//! # Setup (mirrors `taskbroker bench`)
//! - A WorkQueue stream (`--stream`, subjects `<stream>.>`), file storage, `--replicas` replicas;
//!   one durable pull consumer with explicit acks shared by all workers.
//! - produce: `--producers` tasks, each with its own connection, keep up to `--in-flight`
//!   publishes unacknowledged (JetStream's publish ack = stored by the stream's quorum);
//!   latency is from the due/enqueue instant to the publish ack.
//! - work: loads `--tasks` messages (not measured), then `--workers` workers (own connection
//!   each, pull batches of `--prefetch`) process one message at a time and `double_ack` it (the
//!   ack confirmed by the server, like taskbroker's ack); latency = handed to ack confirmed.
//! - e2e: both at once; latency = due/enqueue instant (in the payload's first 8 bytes) to ack
//!   confirmed.
//! - CPU: utime+stime from /proc of every `nats-server` process (or `--pids`) and of this one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;

const LATENCY_MAX_US: u64 = 60_000_000;
const STAMP_BYTES: usize = 8;
/// /proc times are in USER_HZ, 100 on Linux.
const USER_HZ: u64 = 100;
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(name = "jsbench", about = "JetStream side of the taskbroker benchmark suite")]
struct Cli {
    /// NATS servers, HOST:PORT,...
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:4222")]
    servers: Vec<String>,
    /// text or json.
    #[arg(long, default_value = "text")]
    output: String,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug, Clone)]
enum Workload {
    Produce {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        p: ProdOpts,
    },
    Work {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        w: WorkOpts,
        #[arg(long, default_value_t = 4)]
        producers: usize,
    },
    E2e {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        p: ProdOpts,
        #[command(flatten)]
        w: WorkOpts,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct Common {
    #[arg(short = 'n', long, default_value_t = 100_000)]
    tasks: u64,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Stream name (deleted and created fresh).
    #[arg(long, default_value = "bench")]
    stream: String,
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    #[arg(long, default_value = "nats-server")]
    server_process: String,
    /// Stop after this many seconds.
    #[arg(long)]
    duration_s: Option<u64>,
}

#[derive(clap::Args, Debug, Clone)]
struct ProdOpts {
    #[arg(long, default_value_t = 4)]
    producers: usize,
    #[arg(long, default_value_t = 4096)]
    in_flight: usize,
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

#[derive(clap::Args, Debug, Clone)]
struct WorkOpts {
    #[arg(long, default_value_t = 4)]
    workers: usize,
    #[arg(long, default_value_t = 64)]
    prefetch: usize,
    #[arg(long, default_value_t = 0)]
    work_time_ms: u64,
}

#[derive(Serialize, Debug, Clone, Copy)]
struct Latency {
    count: u64,
    mean_us: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Serialize, Debug, Clone, Copy)]
struct CpuUsage {
    server_processes: usize,
    server_us: u64,
    client_us: u64,
    per_task_us: f64,
    server_per_task_us: f64,
    client_per_task_us: f64,
}

#[derive(Serialize, Debug)]
struct Report {
    workload: String,
    topic: String,
    size_bytes: usize,
    producers: usize,
    workers: usize,
    rate: Option<f64>,
    tasks: u64,
    errors: u64,
    elapsed_s: f64,
    tasks_per_s: f64,
    mb_per_s: f64,
    latency: Latency,
    produce_latency: Option<Latency>,
    cpu: Option<CpuUsage>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.clamp(1, LATENCY_MAX_US));
}

fn proc_cpu_us(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 1_000_000 / USER_HZ)
}

fn find_pids(name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == name {
                out.push(pid);
            }
        }
    }
    out.sort_unstable();
    out
}

struct Cpu {
    servers: Vec<(u32, u64)>,
    me: u64,
}

impl Cpu {
    fn take(pids: &[u32]) -> Cpu {
        Cpu {
            servers: pids.iter().filter_map(|&p| Some((p, proc_cpu_us(p)?))).collect(),
            me: proc_cpu_us(std::process::id()).unwrap_or(0),
        }
    }
    fn usage(&self, later: &Cpu, tasks: u64) -> CpuUsage {
        let mut server = 0;
        let mut n = 0;
        for (p, b) in &self.servers {
            if let Some((_, a)) = later.servers.iter().find(|(q, _)| q == p) {
                server += a.saturating_sub(*b);
                n += 1;
            }
        }
        let me = later.me.saturating_sub(self.me);
        let per = |v: u64| if tasks == 0 { 0.0 } else { v as f64 / tasks as f64 };
        CpuUsage {
            server_processes: n,
            server_us: server,
            client_us: me,
            per_task_us: per(server + me),
            server_per_task_us: per(server),
            client_per_task_us: per(me),
        }
    }
}

struct Shared {
    next: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    total: u64,
    start: Instant,
    deadline: Option<Instant>,
}

impl Shared {
    fn new(total: u64, secs: Option<u64>) -> Arc<Shared> {
        let start = Instant::now();
        Arc::new(Shared {
            next: AtomicU64::new(0),
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            total,
            start,
            deadline: secs.map(|s| start + Duration::from_secs(s)),
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

async fn connect(servers: &[String]) -> anyhow::Result<jetstream::Context> {
    let addrs: Vec<async_nats::ServerAddr> = servers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .context("server address")?;
    let client = async_nats::connect(addrs).await.context("connecting to NATS")?;
    Ok(jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .max_ack_inflight(1 << 16)
        .backpressure_on_inflight(true)
        .build(client))
}

/// Deletes and creates the stream, retrying for up to 30 s while the cluster elects its
/// JetStream meta leader.
async fn fresh_stream(js: &jetstream::Context, c: &Common) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = js.delete_stream(&c.stream).await;
        let r = js
            .create_stream(stream::Config {
                name: c.stream.clone(),
                subjects: vec![format!("{}.>", c.stream)],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: c.replicas,
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("jsbench: creating the stream: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("creating the stream"),
        }
    }
}

#[derive(Clone, Copy)]
struct Job {
    size: usize,
    in_flight: usize,
    nanos_per_task: Option<f64>,
    count_done: bool,
    stamp: bool,
}

async fn produce_loop(js: jetstream::Context, subject: String, job: Job, shared: Arc<Shared>) -> Histogram<u64> {
    let mut h = hist();
    let mut pending = FuturesUnordered::new();
    let template = vec![0x5au8; job.size];
    let mut producing = true;
    let settle = |r: Result<_, async_nats::jetstream::context::PublishError>, lat: Duration, h: &mut Histogram<u64>| match r {
        Ok(_) => {
            record(h, lat);
            if job.count_done {
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(e) => {
            eprintln!("jsbench: publish failed: {e}");
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
    };
    while producing || !pending.is_empty() {
        if producing && pending.len() < job.in_flight {
            let i = shared.next.fetch_add(1, Ordering::Relaxed);
            if i >= shared.total || shared.expired() {
                producing = false;
                continue;
            }
            let due = match job.nanos_per_task {
                Some(n) => {
                    let at = shared.start + Duration::from_nanos((i as f64 * n).round() as u64);
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
            match js.publish(subject.clone(), Bytes::from(payload)).await {
                Ok(ack) => pending.push(async move { (ack.await, due.elapsed()) }),
                Err(e) => {
                    eprintln!("jsbench: publish failed: {e}");
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            while let Some(Some((r, lat))) = futures::FutureExt::now_or_never(pending.next()) {
                settle(r, lat, &mut h);
            }
        } else {
            match tokio::time::timeout(STALL_TIMEOUT, pending.next()).await {
                Ok(Some((r, lat))) => settle(r, lat, &mut h),
                Ok(None) => {}
                Err(_) => {
                    shared.errors.fetch_add(pending.len() as u64, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    h
}

async fn producers(servers: &[String], c: &Common, n: usize, job: Job, shared: &Arc<Shared>) -> anyhow::Result<Histogram<u64>> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let js = connect(servers).await?;
        set.spawn(produce_loop(js, format!("{}.{i}", c.stream), job, shared.clone()));
    }
    let mut all = hist();
    while let Some(h) = set.join_next().await {
        all.add(&h?)?;
    }
    Ok(all)
}

async fn workers(servers: &[String], c: &Common, w: &WorkOpts, shared: &Arc<Shared>, stamp: bool) -> anyhow::Result<tokio::task::JoinSet<anyhow::Result<Histogram<u64>>>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..w.workers {
        let js = connect(servers).await?;
        let stream = js.get_stream(&c.stream).await.context("get stream")?;
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                "bench",
                pull::Config {
                    durable_name: Some("bench".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: -1,
                    ..Default::default()
                },
            )
            .await
            .context("consumer")?;
        let (shared, prefetch, work) = (shared.clone(), w.prefetch, Duration::from_millis(w.work_time_ms));
        set.spawn(async move {
            let mut h = hist();
            let mut msgs = consumer
                .stream()
                .max_messages_per_batch(prefetch)
                .expires(Duration::from_millis(500))
                .messages()
                .await?;
            while !shared.finished() {
                let next = match tokio::time::timeout(Duration::from_millis(250), msgs.next()).await {
                    Err(_) => continue,
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        eprintln!("jsbench: fetch: {e}");
                        continue;
                    }
                    Ok(Some(Ok(m))) => m,
                };
                let handed = Instant::now();
                let from = if stamp && next.payload.len() >= STAMP_BYTES {
                    let mut b = [0u8; STAMP_BYTES];
                    b.copy_from_slice(&next.payload[..STAMP_BYTES]);
                    shared.start + Duration::from_nanos(u64::from_le_bytes(b))
                } else {
                    handed
                };
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                match next.double_ack().await {
                    Ok(()) => {
                        record(&mut h, from.elapsed());
                        shared.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("jsbench: ack failed: {e}");
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(h)
        });
    }
    Ok(set)
}

async fn merge(mut set: tokio::task::JoinSet<anyhow::Result<Histogram<u64>>>) -> anyhow::Result<Histogram<u64>> {
    let mut all = hist();
    while let Some(h) = set.join_next().await {
        all.add(&h??)?;
    }
    Ok(all)
}

#[allow(clippy::too_many_arguments)]
fn report(workload: &str, c: &Common, producers: usize, workers: usize, rate: f64, shared: &Shared, elapsed: Duration, lat: &Histogram<u64>, plat: Option<&Histogram<u64>>, cpu: CpuUsage) -> Report {
    let tasks = shared.done.load(Ordering::Relaxed);
    let s = elapsed.as_secs_f64().max(1e-9);
    Report {
        workload: workload.into(),
        topic: c.stream.clone(),
        size_bytes: c.size,
        producers,
        workers,
        rate: (rate > 0.0).then_some(rate),
        tasks,
        errors: shared.errors.load(Ordering::Relaxed),
        elapsed_s: elapsed.as_secs_f64(),
        tasks_per_s: tasks as f64 / s,
        mb_per_s: tasks as f64 * c.size as f64 / s / 1e6,
        latency: Latency::of(lat),
        produce_latency: plat.map(Latency::of),
        cpu: Some(cpu),
    }
}

fn pids(c: &Common) -> Vec<u32> {
    if c.pids.is_empty() {
        find_pids(&c.server_process)
    } else {
        c.pids.clone()
    }
}

fn rate_nanos(rate: f64) -> Option<f64> {
    (rate.is_finite() && rate > 0.0).then(|| 1e9 / rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let servers = cli.servers.clone();
    let r = match cli.workload.clone() {
        Workload::Produce { c, p } => {
            let js = connect(&servers).await?;
            fresh_stream(&js, &c).await?;
            let pids = pids(&c);
            let before = Cpu::take(&pids);
            let shared = Shared::new(c.tasks, c.duration_s);
            let job = Job { size: c.size, in_flight: p.in_flight, nanos_per_task: rate_nanos(p.rate), count_done: true, stamp: false };
            let h = producers(&servers, &c, p.producers, job, &shared).await?;
            let elapsed = shared.start.elapsed();
            let cpu = before.usage(&Cpu::take(&pids), shared.done.load(Ordering::Relaxed));
            report("produce", &c, p.producers, 0, p.rate, &shared, elapsed, &h, None, cpu)
        }
        Workload::Work { c, w, producers: np } => {
            let js = connect(&servers).await?;
            fresh_stream(&js, &c).await?;
            let load = Shared::new(c.tasks, None);
            let job = Job { size: c.size, in_flight: 4096, nanos_per_task: None, count_done: true, stamp: false };
            producers(&servers, &c, np, job, &load).await?;
            if load.done.load(Ordering::Relaxed) < c.tasks {
                bail!("loading failed: {} of {}", load.done.load(Ordering::Relaxed), c.tasks);
            }
            let pids = pids(&c);
            let before = Cpu::take(&pids);
            let shared = Shared::new(c.tasks, c.duration_s);
            let h = merge(workers(&servers, &c, &w, &shared, false).await?).await?;
            let elapsed = shared.start.elapsed();
            let cpu = before.usage(&Cpu::take(&pids), shared.done.load(Ordering::Relaxed));
            report("work", &c, 0, w.workers, 0.0, &shared, elapsed, &h, None, cpu)
        }
        Workload::E2e { c, p, w } => {
            if c.size < STAMP_BYTES {
                bail!("e2e needs --size >= {STAMP_BYTES}");
            }
            let js = connect(&servers).await?;
            fresh_stream(&js, &c).await?;
            let pids = pids(&c);
            let before = Cpu::take(&pids);
            let shared = Shared::new(c.tasks, c.duration_s);
            let wset = workers(&servers, &c, &w, &shared, true).await?;
            let job = Job { size: c.size, in_flight: p.in_flight, nanos_per_task: rate_nanos(p.rate), count_done: false, stamp: true };
            let ph = producers(&servers, &c, p.producers, job, &shared).await?;
            let h = merge(wset).await?;
            let elapsed = shared.start.elapsed();
            let cpu = before.usage(&Cpu::take(&pids), shared.done.load(Ordering::Relaxed));
            report("e2e", &c, p.producers, w.workers, p.rate, &shared, elapsed, &h, Some(&ph), cpu)
        }
    };
    if cli.output == "json" {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} {} x {} B: {:.0} tasks/s, {:.2} MB/s, p50 {} us, p99 {} us, p99.9 {} us, max {} us, cpu/task {:.1} us ({} errors)",
            r.workload, r.tasks, r.size_bytes, r.tasks_per_s, r.mb_per_s, r.latency.p50_us, r.latency.p99_us,
            r.latency.p999_us, r.latency.max_us, r.cpu.map_or(0.0, |c| c.per_task_us), r.errors
        );
    }
    if r.errors > 0 {
        bail!("{} tasks failed", r.errors);
    }
    Ok(())
}
