//! `taskbroker-chaos`: a bounded workload with exact accounting, for the Docker chaos test
//! (`deploy/chaos/run.sh`) and the rolling-restart test (`deploy/scripts/rolling-restart-test.sh`).
//!
//! Producers send uniquely numbered tasks one by one (each `send` waits for the commit); workers
//! lease, record and ack. Producing stops after `--duration` seconds or when `--stop-file`
//! exists; workers then drain until every committed task was acked (or `--drain-timeout`).
//! Verdict (exit 1 on failure): every committed task acked at least once (none lost); with
//! `--max-failed-produce N`, at most N sends failed. Duplicates (tasks delivered or acked more
//! than once) are reported, not failed: delivery is at-least-once.
//!
//! The nodes advertise their compose names (`node1:7070`); `--map node1:7070=127.0.0.1:17071,...`
//! makes this process reach them through the ports published on the host.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use taskbroker_client::proto::GroupPartitionState;
use taskbroker_client::transport::{BoxConn, IoFuture, Listener, TokioTransport, Transport};
use taskbroker_client::{Client, Task, TopicSpec};

/// Rewrites advertised addresses to host-reachable ones; everything else goes through as is.
#[derive(Debug)]
struct MapTransport {
    map: HashMap<String, String>,
}

impl Transport for MapTransport {
    fn connect<'a>(&'a self, addr: &'a str) -> IoFuture<'a, BoxConn> {
        let to = self.map.get(addr).map_or(addr, String::as_str);
        TokioTransport.connect(to)
    }
    fn bind<'a>(&'a self, addr: &'a str) -> IoFuture<'a, Box<dyn Listener>> {
        TokioTransport.bind(addr)
    }
}

#[derive(Debug)]
struct Args {
    brokers: Vec<String>,
    map: HashMap<String, String>,
    topic: String,
    partitions: u32,
    producers: usize,
    workers: usize,
    duration: Duration,
    stop_file: Option<PathBuf>,
    drain_timeout: Duration,
    max_failed_produce: Option<u64>,
    no_workers: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        brokers: vec![
            "node1:7070".into(),
            "node2:7070".into(),
            "node3:7070".into(),
        ],
        map: HashMap::new(),
        topic: "chaos".into(),
        partitions: 12,
        producers: 4,
        workers: 4,
        duration: Duration::from_secs(60),
        stop_file: None,
        drain_timeout: Duration::from_secs(180),
        max_failed_produce: None,
        no_workers: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--no-workers" {
            a.no_workers = true;
            continue;
        }
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--brokers" => a.brokers = v.split(',').map(str::to_string).collect(),
            "--map" => {
                for pair in v.split(',').filter(|p| !p.is_empty()) {
                    let (from, to) = pair.split_once('=').context("--map wants FROM=TO,...")?;
                    a.map.insert(from.to_string(), to.to_string());
                }
            }
            "--topic" => a.topic = v,
            "--partitions" => a.partitions = v.parse()?,
            "--producers" => a.producers = v.parse()?,
            "--workers" => a.workers = v.parse()?,
            "--duration" => a.duration = Duration::from_secs(v.parse()?),
            "--stop-file" => a.stop_file = Some(v.into()),
            "--drain-timeout" => a.drain_timeout = Duration::from_secs(v.parse()?),
            "--max-failed-produce" => a.max_failed_produce = Some(v.parse()?),
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(a)
}

#[derive(Default)]
struct Book {
    /// Payload id -> times a send of it failed (ambiguous: it may still have been committed).
    failed: Mutex<HashMap<u64, u32>>,
    /// Committed payload ids.
    committed: Mutex<Vec<u64>>,
    /// Payload id -> (deliveries, successful acks).
    seen: Mutex<HashMap<u64, (u32, u32)>>,
    /// Payload id -> partition, for tasks whose ack returned an error (ambiguous: the ack may
    /// have been applied and only its reply lost).
    ack_failed: Mutex<HashMap<u64, u32>>,
    /// Payload id -> partition, for tasks acked successfully.
    acked_on: Mutex<HashMap<u64, u32>>,
    produce_errors: Mutex<HashMap<String, u64>>,
    ack_errors: AtomicU64,
    lease_errors: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn short(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    s.split(':').next().unwrap_or("").chars().take(60).collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(io::stderr)
        .init();
    let args = parse_args()?;
    let transport = Arc::new(MapTransport {
        map: args.map.clone(),
    });
    let client = Client::builder()
        .seeds(args.brokers.clone())
        .transport(transport)
        .connect()
        .await
        .context("connecting")?;
    // Topic creation is retried: the cluster may have just formed.
    let spec = TopicSpec {
        partitions: Some(args.partitions),
        replication_factor: Some(3),
        visibility_timeout_ms: Some(10_000),
        ..TopicSpec::default()
    };
    let t0 = Instant::now();
    loop {
        match client.admin().create_topic(&args.topic, spec.clone()).await {
            Ok(_) => break,
            Err(e) if e.to_string().contains("exists") => break,
            Err(e) if t0.elapsed() < Duration::from_secs(60) => {
                eprintln!("chaos: create topic: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("creating the topic"),
        }
    }
    let book = Arc::new(Book::default());
    let stop_producing = Arc::new(AtomicBool::new(false));
    let stop_workers = Arc::new(AtomicBool::new(false));
    let start = Instant::now();

    let mut producers = tokio::task::JoinSet::new();
    for p in 0..args.producers {
        let (client, book, stop, topic) = (
            client.clone(),
            book.clone(),
            stop_producing.clone(),
            args.topic.clone(),
        );
        producers.spawn(async move {
            let producer = client.producer().build();
            let mut seq: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = ((p as u64) << 40) | seq;
                seq += 1;
                match producer.send(&topic, Task::new(id.to_string())).await {
                    Ok(_) => lock(&book.committed).push(id),
                    Err(e) => {
                        *lock(&book.failed).entry(id).or_default() += 1;
                        *lock(&book.produce_errors).entry(short(&e)).or_default() += 1;
                        eprintln!(
                            "chaos: {:>6.1}s produce {id} failed: {e}",
                            start.elapsed().as_secs_f64()
                        );
                    }
                }
            }
        });
    }

    let mut workers = tokio::task::JoinSet::new();
    let worker_count = if args.no_workers { 0 } else { args.workers };
    for w in 0..worker_count {
        let (client, book, stop, topic) = (
            client.clone(),
            book.clone(),
            stop_workers.clone(),
            args.topic.clone(),
        );
        workers.spawn(async move {
            let worker = loop {
                match client
                    .worker(&topic, "chaos-workers")
                    .worker_id(format!("chaos-{w}"))
                    .wait(Duration::from_millis(500))
                    .build()
                    .await
                {
                    Ok(wk) => break wk,
                    Err(e) => {
                        eprintln!("chaos: worker {w} build: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            while !stop.load(Ordering::Relaxed) {
                match worker.next().await {
                    Ok(Some(task)) => {
                        let id: u64 = String::from_utf8_lossy(task.payload())
                            .parse()
                            .unwrap_or(u64::MAX);
                        lock(&book.seen).entry(id).or_default().0 += 1;
                        let partition = task.partition();
                        match task.ack().await {
                            Ok(()) => {
                                lock(&book.seen).entry(id).or_default().1 += 1;
                                lock(&book.acked_on).insert(id, partition);
                            }
                            Err(_) => {
                                book.ack_errors.fetch_add(1, Ordering::Relaxed);
                                lock(&book.ack_failed).insert(id, partition);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(_) => {
                        book.lease_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            let _ = worker.shutdown().await;
        });
    }

    // Produce until the duration is over or the stop file appears; report progress.
    let mut last = Instant::now();
    loop {
        let stop_file = args.stop_file.as_ref().is_some_and(|f| f.exists());
        if start.elapsed() >= args.duration || stop_file {
            break;
        }
        if last.elapsed() >= Duration::from_secs(5) {
            last = Instant::now();
            let c = lock(&book.committed).len();
            let f: u32 = lock(&book.failed).values().sum();
            let a = lock(&book.seen).values().filter(|v| v.1 > 0).count();
            println!(
                "chaos: {:>5.0}s committed={c} failed_sends={f} acked={a}",
                start.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_producing.store(true, Ordering::Relaxed);
    while producers.join_next().await.is_some() {}
    let produce_secs = start.elapsed().as_secs_f64();

    // Drain: every committed task acked.
    let drain_start = Instant::now();
    let committed = lock(&book.committed).clone();
    if worker_count > 0 {
        let mut last_books_check = Instant::now();
        loop {
            let (missing, ambiguous) = {
                let seen = lock(&book.seen);
                let ack_failed = lock(&book.ack_failed);
                let missing: Vec<u64> = committed
                    .iter()
                    .copied()
                    .filter(|id| seen.get(id).is_none_or(|v| v.1 == 0))
                    .collect();
                let ambiguous = missing.iter().all(|id| ack_failed.contains_key(id));
                (missing.len(), ambiguous)
            };
            // Only tasks whose ack reply was lost remain: once the broker has nothing pending,
            // no redelivery can come; the verdict below checks them against its books.
            let settled = missing > 0
                && ambiguous
                && last_books_check.elapsed() >= Duration::from_secs(5)
                && {
                    last_books_check = Instant::now();
                    broker_books(&client, &args.topic, false)
                        .await
                        .is_some_and(|b| b.values().all(|x| x.0 == 0))
                };
            if missing == 0 || settled || drain_start.elapsed() >= args.drain_timeout {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // A little longer, to see late redeliveries (duplicates) too.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    stop_workers.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while workers.join_next().await.is_some() {}
    })
    .await;

    let seen = lock(&book.seen).clone();
    let failed = lock(&book.failed).clone();
    let unacked: Vec<u64> = if worker_count > 0 {
        committed
            .iter()
            .copied()
            .filter(|id| seen.get(id).is_none_or(|v| v.1 == 0))
            .collect()
    } else {
        Vec::new()
    };
    // A task whose only ack failed may have been acked anyway (the reply was lost). It is
    // excused only if the broker's own books agree, per partition: nothing pending (no ready,
    // delayed or in-flight task) and the broker's ack count covers every ack the workers saw
    // succeed plus these excused tasks.
    let ack_failed = lock(&book.ack_failed).clone();
    let acked_on = lock(&book.acked_on).clone();
    let mut acked_reply_lost = 0usize;
    let mut lost = Vec::new();
    if !unacked.is_empty() {
        let books = broker_books(&client, &args.topic, true).await;
        let mut excused: HashMap<u32, Vec<u64>> = HashMap::new();
        for id in unacked {
            match (ack_failed.get(&id), &books) {
                (Some(p), Some(b)) if b.get(p).is_some_and(|x| x.0 == 0) => {
                    excused.entry(*p).or_default().push(id)
                }
                _ => lost.push(id),
            }
        }
        for (p, ids) in excused {
            let client_acked = acked_on.values().filter(|q| **q == p).count() as u64;
            let broker_acked = books.as_ref().and_then(|b| b.get(&p)).map_or(0, |x| x.1);
            if broker_acked >= client_acked + ids.len() as u64 {
                acked_reply_lost += ids.len();
            } else {
                println!("chaos: partition {p}: broker acked {broker_acked} < workers' {client_acked} + {} ambiguous", ids.len());
                lost.extend(ids);
            }
        }
    }
    let dup_deliveries = seen.values().filter(|v| v.0 > 1).count();
    let dup_acks = seen.values().filter(|v| v.1 > 1).count();
    let failed_then_delivered = failed.keys().filter(|id| seen.contains_key(id)).count();
    let unknown = seen
        .keys()
        .filter(|id| !committed.contains(id) && !failed.contains_key(id))
        .count();
    let failed_sends: u32 = failed.values().sum();
    println!("chaos: RESULT produce_seconds={produce_secs:.0} drain_seconds={:.0} committed={} failed_sends={failed_sends} (of which delivered anyway: {failed_then_delivered}) acked={} acked_reply_lost={acked_reply_lost} lost={} tasks_delivered_more_than_once={dup_deliveries} tasks_acked_more_than_once={dup_acks} ack_errors={} lease_errors={} unknown_payloads={unknown}",
        drain_start.elapsed().as_secs_f64(),
        committed.len(),
        seen.values().filter(|v| v.1 > 0).count(),
        lost.len(),
        book.ack_errors.load(Ordering::Relaxed),
        book.lease_errors.load(Ordering::Relaxed));
    let errs = lock(&book.produce_errors).clone();
    if !errs.is_empty() {
        println!("chaos: produce errors by kind: {errs:?}");
    }
    let mut ok = true;
    if !lost.is_empty() {
        println!(
            "chaos: FAIL: {} committed tasks never acked, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        for id in lost.iter().take(10) {
            println!(
                "chaos:   {id}: seen={:?} ack_failed_on_partition={:?}",
                seen.get(id),
                ack_failed.get(id)
            );
        }
        ok = false;
    }
    if committed.is_empty() {
        println!("chaos: FAIL: nothing was committed");
        ok = false;
    }
    if let Some(max) = args.max_failed_produce {
        if u64::from(failed_sends) > max {
            println!("chaos: FAIL: {failed_sends} failed sends (at most {max} allowed)");
            ok = false;
        }
    }
    if !ok {
        std::process::exit(1);
    }
    println!("chaos: PASS");
    Ok(())
}

/// Per partition of the workers' group: (ready + delayed + in-flight, acked + dead-lettered), or
/// `None` when the group cannot be described (then nothing is excused).
async fn broker_books(
    client: &Client,
    topic: &str,
    verbose: bool,
) -> Option<HashMap<u32, (u64, u64)>> {
    for _ in 0..10 {
        match client.admin().describe_group(topic, "chaos-workers").await {
            Ok(d) => {
                let m = d
                    .partitions
                    .iter()
                    .map(|p| {
                        let pending = p.ready + p.delayed + p.in_flight;
                        (p.partition, (pending, p.acked_total + p.dead_letters))
                    })
                    .collect::<HashMap<_, _>>();
                if verbose {
                    let sum = |f: fn(&GroupPartitionState) -> u64| {
                        d.partitions.iter().map(f).sum::<u64>()
                    };
                    println!(
                        "chaos: broker books: {} partitions, high watermarks {}, acked {}, dead letters {}, pending {}",
                        d.partitions.len(),
                        sum(|p| p.high_watermark),
                        sum(|p| p.acked_total),
                        sum(|p| p.dead_letters),
                        sum(|p| p.ready + p.delayed + p.in_flight)
                    );
                }
                return Some(m);
            }
            Err(e) => {
                eprintln!("chaos: describe group: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    None
}
