//! What every client subcommand shares: `--brokers`, `--output`, connecting, durations, errors.
//!
//! # Design notes
//! - Every client subcommand goes through the `taskbroker-client` library (discovery, routing,
//!   retries), exactly as a user's program would; the CLI adds no protocol of its own.
//! - `--output json` prints one JSON document on stdout with the same shapes as the HTTP admin
//!   API ([`crate::http::admin`]), so scripts can use either.

use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;
use taskbroker_client::{Client, RetryPolicy};

/// Default broker address: the embedded single node of `taskbroker serve`.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:7070";
/// Deadline of one request of a CLI command: long enough for a leader election plus a commit.
pub const CLI_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a CLI command keeps retrying a retryable failure (no leader, node down) before it
/// gives up with the last error: about 15 s, enough for a failover.
pub const CLI_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 20,
    initial_backoff: Duration::from_millis(50),
    max_backoff: Duration::from_secs(1),
};

/// Text for humans or one JSON document for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Aligned tables and lines.
    #[default]
    Text,
    /// One JSON document (the HTTP admin API's shapes).
    Json,
}

/// Flags of every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Brokers to discover the cluster from, HOST:PORT,...
    #[arg(
        long,
        global = true,
        env = "TASKBROKER_BROKERS",
        default_value = DEFAULT_BROKERS,
        value_delimiter = ','
    )]
    pub brokers: Vec<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl ClientArgs {
    /// A client connected to the cluster.
    ///
    /// # Errors
    /// No broker answered.
    pub async fn connect(&self) -> Result<Client, CliError> {
        let seeds: Vec<String> = self
            .brokers
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Client::builder()
            .seeds(seeds)
            .request_timeout(CLI_REQUEST_TIMEOUT)
            .retry(CLI_RETRY)
            .connect()
            .await?)
    }

    /// Prints `value` as one JSON document (json) or `text()` (text).
    ///
    /// # Errors
    /// Writing stdout failed.
    pub fn print<T: Serialize>(
        &self,
        value: &T,
        text: impl FnOnce() -> String,
    ) -> Result<(), CliError> {
        let out = match self.output {
            Output::Json => {
                let mut s = serde_json::to_string_pretty(value).map_err(|e| CliError::Io {
                    what: "encoding JSON".into(),
                    reason: e.to_string(),
                })?;
                s.push('\n');
                s
            }
            Output::Text => text(),
        };
        write_stdout(out.as_bytes())
    }
}

/// Writes to stdout, reporting a closed pipe as an error.
///
/// # Errors
/// Writing stdout failed.
pub fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Io {
            what: "writing stdout".into(),
            reason: e.to_string(),
        })
}

/// Failures of client subcommands: each is shown as one line, exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The cluster answered with an error, or could not be reached.
    #[error(transparent)]
    Client(#[from] taskbroker_client::Error),
    /// Bad input (stdin, arguments checked after parsing).
    #[error("{0}")]
    Input(String),
    /// Local IO failed.
    #[error("{what}: {reason}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A produce failed part-way; the tasks before it were committed.
    #[error("{cause} ({produced} tasks produced before the failure)")]
    Produce {
        /// Tasks committed before the failure.
        produced: u64,
        /// The failure.
        cause: Box<CliError>,
    },
}

/// Parses a duration: a number with a unit `ms`, `s`, `m` or `h` (`500ms`, `30s`, `5m`, `1h`);
/// a bare number is seconds.
///
/// ```
/// use std::time::Duration;
/// use taskbroker_node::cli::common::parse_duration;
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
/// assert!(parse_duration("5x").is_err());
/// ```
///
/// # Errors
/// A message for clap when the text is not a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 30s, 5m, 1h)"))?;
    let ms_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// A duration in whole milliseconds (saturating).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Formats rows as left-aligned columns separated by two spaces (the first row is the header).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A duration for humans: `30s`, `500ms`, `5m`.
pub fn human_ms(ms: u64) -> String {
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn human_durations_round_trip() {
        for ms in [500, 30_000, 300_000, 3_600_000, 1_500] {
            assert_eq!(parse_duration(&human_ms(ms)), Ok(Duration::from_millis(ms)));
        }
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&[
            vec!["A".into(), "LONGER".into(), "C".into()],
            vec!["xyz".into(), "1".into(), "2".into()],
        ]);
        assert_eq!(t, "A    LONGER  C\nxyz  1       2\n");
    }
}
