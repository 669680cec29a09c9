//! `taskbroker produce TOPIC`: one task per line of stdin, pipelined through the client's
//! [`Producer`](taskbroker_client::Producer).
//!
//! # Design notes
//! - A blocking thread reads stdin (bounded lines: a line longer than the task size limit is an
//!   error, never a huge allocation) and hands lines over a bounded channel; the async side
//!   enqueues them into the producer (which batches per partition and applies backpressure by
//!   bytes) and counts deliveries as they are committed.
//! - The count printed at the end is of tasks whose commit the cluster confirmed; on a failure
//!   the command stops reading, waits for what was already sent, and reports both.

use std::io::BufRead;
use std::time::Duration;

use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use taskbroker_client::batch::BatchLimits;
use taskbroker_client::Task;
use tokio::sync::mpsc;

use super::common::{parse_duration, CliError, ClientArgs};

/// Lines read ahead of the producer. Why: the producer's byte budget is the real bound; this
/// only decouples the reading thread.
pub const STDIN_LINES_QUEUED_MAX: usize = 1024;
/// Deliveries awaited at once. Why: bounds the bookkeeping of a very long stdin.
pub const DELIVERIES_PENDING_MAX: usize = 65_536;

/// `taskbroker produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Connection and output.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Topic.
    pub topic: String,
    /// Key of every task (tasks with one key go to one partition).
    #[arg(long)]
    pub key: Option<String>,
    /// Deliver no earlier than this long from now (500ms, 30s, 5m, 1h).
    #[arg(long, value_parser = parse_duration)]
    pub delay: Option<Duration>,
}

/// The result of `taskbroker produce --output json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Produced {
    /// The topic.
    pub topic: String,
    /// Tasks committed.
    pub produced: u64,
}

/// One line of stdin, or why reading stopped.
enum Line {
    Task(Vec<u8>),
    Failed(CliError),
}

/// Reads `input` line by line (without the line end; empty lines skipped), refusing a line of
/// more than `max` bytes.
fn read_lines<R: BufRead>(input: R, max: usize, tx: mpsc::Sender<Line>) {
    let mut input = input;
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        number += 1;
        let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(2);
        let n = match std::io::Read::take(&mut input, limit).read_until(b'\n', &mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.blocking_send(Line::Failed(CliError::Io {
                    what: "reading stdin".into(),
                    reason: e.to_string(),
                }));
                return;
            }
        };
        if n == 0 {
            return;
        }
        let complete = buf.last() == Some(&b'\n');
        if complete {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        if buf.len() > max || (!complete && n as u64 == limit) {
            let _ = tx.blocking_send(Line::Failed(CliError::Input(format!(
                "line {number} of stdin is longer than the task size limit of {max} bytes"
            ))));
            return;
        }
        if buf.is_empty() {
            continue;
        }
        if tx.blocking_send(Line::Task(buf.clone())).is_err() {
            return;
        }
    }
}

/// Runs `taskbroker produce`.
///
/// # Errors
/// Bad input or a failed produce, with the number of tasks committed before it.
pub async fn run(args: ProduceArgs) -> Result<(), CliError> {
    let client = args.client.connect().await?;
    // Fail fast on an unknown topic, before reading stdin.
    client.partition_count(&args.topic).await?;
    let max = BatchLimits::default()
        .task_bytes_max
        .saturating_sub(args.key.as_ref().map_or(0, String::len));
    let producer = client.producer().build();
    let (tx, mut rx) = mpsc::channel(STDIN_LINES_QUEUED_MAX);
    std::thread::spawn(move || read_lines(std::io::stdin().lock(), max, tx));

    let mut pending = FuturesUnordered::new();
    let mut produced = 0u64;
    let mut failure: Option<CliError> = None;
    let mut reading = true;
    while reading || !pending.is_empty() {
        tokio::select! {
            biased;
            Some(r) = pending.next(), if !pending.is_empty() => match r {
                Ok(_) => produced += 1,
                Err(e) => {
                    failure.get_or_insert(CliError::from(e));
                    reading = false;
                }
            },
            line = rx.recv(), if reading && pending.len() < DELIVERIES_PENDING_MAX => match line {
                Some(Line::Task(payload)) => {
                    let mut task = Task::new(payload);
                    if let Some(k) = &args.key {
                        task = task.key(k.clone());
                    }
                    if let Some(d) = args.delay {
                        task = task.delay(d);
                    }
                    match producer.enqueue(&args.topic, task).await {
                        Ok(d) => pending.push(d),
                        Err(e) => {
                            failure.get_or_insert(CliError::from(e));
                            reading = false;
                        }
                    }
                }
                Some(Line::Failed(e)) => {
                    failure.get_or_insert(e);
                    reading = false;
                }
                None => {
                    reading = false;
                    if let Err(e) = producer.flush().await {
                        failure.get_or_insert(CliError::from(e));
                    }
                }
            },
        }
    }
    if let Some(e) = failure {
        return Err(CliError::Produce {
            produced,
            cause: Box::new(e),
        });
    }
    let p = Produced {
        topic: args.topic,
        produced,
    };
    args.client.print(&p, || {
        format!("produced {} tasks to {}\n", p.produced, p.topic)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &str, max: usize) -> (Vec<String>, Option<String>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let data = input.as_bytes().to_vec();
        std::thread::spawn(move || read_lines(std::io::Cursor::new(data), max, tx))
            .join()
            .expect("reader");
        let mut out = Vec::new();
        let mut err = None;
        while let Ok(l) = rx.try_recv() {
            match l {
                Line::Task(t) => out.push(String::from_utf8(t).expect("utf8")),
                Line::Failed(e) => err = Some(e.to_string()),
            }
        }
        (out, err)
    }

    #[test]
    fn lines_are_split_and_trimmed() {
        let (l, e) = lines("a\r\nbb\n\nccc", 10);
        assert_eq!(l, ["a", "bb", "ccc"]);
        assert!(e.is_none());
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_over_fails() {
        let (l, e) = lines("12345\n123456\nx\n", 5);
        assert_eq!(l, ["12345"]);
        let e = e.expect("error");
        assert!(e.contains("line 2") && e.contains("5 bytes"), "{e}");
        let (l, e) = lines("12345", 5);
        assert_eq!(l, ["12345"]);
        assert!(e.is_none());
        let (_, e) = lines("1234567890", 5);
        assert!(e.is_some());
    }
}
