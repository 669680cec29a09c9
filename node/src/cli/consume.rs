//! `taskbroker consume` (print leased tasks) and `taskbroker work` (run a command per task),
//! both through the client's `Worker`.
//!
//! # Design notes
//! - `consume` holds every task it printed until it exits unless `--ack`: releasing one at once
//!   would hand it straight back. At exit the worker's shutdown releases what it still holds.
//! - `work` runs `sh -c CMD` per task in its own process group, so a Ctrl-C in the terminal
//!   reaches taskbroker only: it stops fetching, lets running commands finish (up to
//!   `--shutdown-timeout`), then releases the tasks still held and kills what still runs.
//! - The lease of a task is extended automatically while its command runs (the worker's
//!   automatic extension), so a long command is not redelivered to another worker.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use taskbroker_client::{LeasedTask, Worker};
use tokio::io::AsyncWriteExt;

use super::common::{parse_duration, write_stdout, CliError, ClientArgs, Output};

/// Most tasks `consume` holds unacknowledged at once (its `--count`, or this without one).
/// Why: every held task is a lease the broker tracks and this process extends.
pub const CONSUME_HELD_MAX: usize = 10_000;
/// Acks `consume --ack` keeps in flight. Why: pipelining without an unbounded queue.
pub const ACKS_IN_FLIGHT_MAX: usize = 64;
/// Most commands `work` runs at once. Why: each is a process.
pub const WORK_CONCURRENCY_MAX: usize = 1_024;

/// `taskbroker consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Connection and output.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Topic.
    pub topic: String,
    /// Consumer group (created on first use).
    #[arg(long)]
    pub group: String,
    /// Exit after this many tasks (default: run until Ctrl-C).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Acknowledge each task once printed (else they are released at exit).
    #[arg(long)]
    pub ack: bool,
    /// Exit when no task arrived for this long (500ms, 30s, 5m, 1h).
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Lease length (default: the topic's visibility timeout).
    #[arg(long, value_parser = parse_duration)]
    pub visibility_timeout: Option<Duration>,
}

/// One task in `taskbroker consume --output json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumedTask {
    /// Partition.
    pub partition: u32,
    /// Offset in the partition.
    pub offset: u64,
    /// Delivery attempt.
    pub attempt: u32,
    /// Payload (UTF-8, invalid bytes replaced).
    pub payload: String,
}

/// The result of `taskbroker consume --output json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumed {
    /// Topic.
    pub topic: String,
    /// Group.
    pub group: String,
    /// Whether the tasks were acknowledged.
    pub acked: bool,
    /// The tasks, in the order received.
    pub tasks: Vec<ConsumedTask>,
}

/// `taskbroker work`.
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Connection and output.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Topic.
    pub topic: String,
    /// Consumer group (created on first use).
    #[arg(long)]
    pub group: String,
    /// Shell command run per task (`sh -c`), payload on stdin; exit 0 acks, else nacks. The
    /// environment has TASKBROKER_TOPIC, TASKBROKER_PARTITION, TASKBROKER_OFFSET and
    /// TASKBROKER_ATTEMPT.
    #[arg(long)]
    pub exec: String,
    /// Commands run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=WORK_CONCURRENCY_MAX as u64))]
    pub concurrency: u64,
    /// Delay before a failed task is retried (default: the broker's exponential backoff).
    #[arg(long, value_parser = parse_duration)]
    pub retry_delay: Option<Duration>,
    /// Lease length (default: the topic's visibility timeout); extended while CMD runs.
    #[arg(long, value_parser = parse_duration)]
    pub visibility_timeout: Option<Duration>,
    /// On SIGTERM/Ctrl-C, how long running commands may finish before their tasks are
    /// released and the commands killed.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub shutdown_timeout: Duration,
}

/// The result of `taskbroker work --output json` (printed at exit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WorkSummary {
    /// Commands that exited 0 and whose task was acknowledged.
    pub acked: u64,
    /// Commands that failed (task nacked for a retry).
    pub failed: u64,
    /// Settlements refused (lease lost: the task was redelivered) or not delivered.
    pub settle_errors: u64,
}

/// Runs `taskbroker consume`.
///
/// # Errors
/// The cluster's answer, or a failed stdout.
pub async fn consume(args: ConsumeArgs) -> Result<(), CliError> {
    let client = args.client.connect().await?;
    client.partition_count(&args.topic).await?;
    let held = args
        .count
        .map_or(CONSUME_HELD_MAX, |c| {
            usize::try_from(c).unwrap_or(usize::MAX)
        })
        .min(CONSUME_HELD_MAX);
    let mut builder = client
        .worker(&args.topic, &args.group)
        .concurrency(if args.ack {
            ACKS_IN_FLIGHT_MAX.min(held)
        } else {
            held
        })
        .prefetch(0)
        .wait(Duration::from_millis(500))
        .shutdown_timeout(Duration::from_secs(5));
    if let Some(v) = args.visibility_timeout {
        builder = builder.visibility_timeout(v);
    }
    let worker = builder.build().await?;
    let result = consume_loop(&args, &worker).await;
    worker.shutdown().await?;
    let consumed = result?;
    if args.client.output == Output::Json {
        args.client.print(&consumed, String::new)?;
    }
    Ok(())
}

async fn consume_loop(args: &ConsumeArgs, worker: &Worker) -> Result<Consumed, CliError> {
    let mut out = Consumed {
        topic: args.topic.clone(),
        group: args.group.clone(),
        acked: args.ack,
        tasks: Vec::new(),
    };
    let mut unacked: Vec<LeasedTask> = Vec::new();
    let mut acks = tokio::task::JoinSet::new();
    let mut got = 0u64;
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    while args.count.is_none_or(|c| got < c) {
        let idle = args.idle_timeout.unwrap_or(Duration::MAX);
        let next = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = tokio::time::timeout(idle, worker.next()) => match r {
                Ok(r) => r?,
                Err(_) => break,
            },
        };
        let Some(task) = next else { break };
        got += 1;
        if args.client.output == Output::Json {
            out.tasks.push(ConsumedTask {
                partition: task.partition(),
                offset: task.offset(),
                attempt: task.attempt(),
                payload: String::from_utf8_lossy(task.payload()).into_owned(),
            });
        } else {
            let mut line = task.payload().to_vec();
            line.push(b'\n');
            write_stdout(&line)?;
        }
        if args.ack {
            acks.spawn(task.ack());
            // Acks run pipelined, at most ACKS_IN_FLIGHT_MAX at once.
            while acks.len() >= ACKS_IN_FLIGHT_MAX {
                if let Some(r) = acks.join_next().await {
                    joined(r)?;
                }
            }
        } else {
            unacked.push(task);
        }
    }
    while let Some(r) = acks.join_next().await {
        joined(r)?;
    }
    // Dropping the tasks releases them; the worker's shutdown then releases anything left.
    drop(unacked);
    Ok(out)
}

fn joined(
    r: Result<Result<(), taskbroker_client::Error>, tokio::task::JoinError>,
) -> Result<(), CliError> {
    match r {
        Ok(r) => Ok(r?),
        Err(e) => Err(CliError::Io {
            what: "acknowledging".into(),
            reason: e.to_string(),
        }),
    }
}

/// Runs `taskbroker work`.
///
/// # Errors
/// The cluster's answer.
pub async fn work(args: WorkArgs) -> Result<(), CliError> {
    let client = args.client.connect().await?;
    client.partition_count(&args.topic).await?;
    let concurrency = usize::try_from(args.concurrency).unwrap_or(WORK_CONCURRENCY_MAX);
    let mut builder = client
        .worker(&args.topic, &args.group)
        .concurrency(concurrency)
        .prefetch(0)
        .shutdown_timeout(args.shutdown_timeout);
    if let Some(v) = args.visibility_timeout {
        builder = builder.visibility_timeout(v);
    }
    let worker = builder.build().await?;
    let stats = Arc::new(Stats::default());
    let exec = Arc::new(args.exec.clone());
    let retry_delay = args.retry_delay;
    let runner = worker.clone();
    let handler_stats = stats.clone();
    let mut run = tokio::spawn(async move {
        runner
            .run(move |task| {
                let (exec, stats) = (exec.clone(), handler_stats.clone());
                async move {
                    run_one(&exec, task, retry_delay, &stats).await;
                    Ok::<(), String>(())
                }
            })
            .await
    });
    let result = tokio::select! {
        biased;
        _ = super::shutdown_signal() => {
            tracing::info!("stopping: letting running commands finish");
            Ok(())
        }
        r = &mut run => match r {
            Ok(r) => r.map_err(CliError::from),
            Err(e) => Err(CliError::Io { what: "worker task".into(), reason: e.to_string() }),
        },
    };
    worker.shutdown().await?;
    // Commands still running after the shutdown timeout are killed (kill_on_drop); their tasks
    // were released by the shutdown.
    run.abort();
    let _ = run.await;
    result?;
    let summary = WorkSummary {
        acked: stats.acked.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        settle_errors: stats.settle_errors.load(Ordering::Relaxed),
    };
    match args.client.output {
        Output::Json => args.client.print(&summary, String::new),
        Output::Text => {
            eprintln!(
                "taskbroker: {} tasks done, {} failed, {} settle errors",
                summary.acked, summary.failed, summary.settle_errors
            );
            Ok(())
        }
    }
}

#[derive(Default)]
struct Stats {
    acked: AtomicU64,
    failed: AtomicU64,
    settle_errors: AtomicU64,
}

/// Runs the command for one task and settles it.
async fn run_one(exec: &str, task: LeasedTask, retry_delay: Option<Duration>, stats: &Stats) {
    let outcome = run_command(exec, &task).await;
    let settled = match outcome {
        Ok(()) => {
            let r = task.ack().await;
            if r.is_ok() {
                stats.acked.fetch_add(1, Ordering::Relaxed);
            }
            r
        }
        Err(reason) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%reason, "task failed; it will be retried");
            task.nack_with_reason(retry_delay, reason).await
        }
    };
    if let Err(e) = settled {
        stats.settle_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "settling a task failed");
    }
}

/// `sh -c exec` with the payload on stdin: `Err(reason)` unless it exits 0.
async fn run_command(exec: &str, task: &LeasedTask) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(exec)
        .env("TASKBROKER_TOPIC", task.topic())
        .env("TASKBROKER_PARTITION", task.partition().to_string())
        .env("TASKBROKER_OFFSET", task.offset().to_string())
        .env("TASKBROKER_ATTEMPT", task.attempt().to_string())
        .stdin(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run sh -c {exec:?}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin closes the pipe: not a failure.
        let _ = stdin.write_all(task.payload()).await;
        drop(stdin);
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for the command: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("command exited with {status}"))
    }
}
