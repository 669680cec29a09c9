//! The node's Prometheus metrics (served on `/metrics`).
//!
//! Families (all prefixed `taskbroker_`, base units, counters end in `_total`; the full list
//! is in ARCHITECTURE.md):
//! - node: `requests_total{api}`, `request_duration_seconds{api}`, `tasks_total{op}`,
//!   `errors_total{kind}`, `network_received_bytes_total{conn}`,
//!   `network_sent_bytes_total{conn}`, `connections_open`;
//! - per Raft group (`topic`, `partition`; the metadata group is `topic="__metadata"`):
//!   `raft_leader`, `raft_term`, `raft_last_log_index`, `raft_commit_index`,
//!   `raft_applied_index`, `raft_follower_lag_entries{follower}`,
//!   `raft_follower_lag_seconds{follower}`, `raft_elections_total`, `log_size_bytes`,
//!   `log_segments`;
//! - storage: `storage_append_seconds`, `storage_fdatasync_seconds`,
//!   `storage_group_commit_bytes`, `storage_backend{backend}`;
//! - per consumer group and partition (`topic`, `partition`, `group`; reported by the
//!   partition's leader only, so a cluster-wide sum counts each partition once):
//!   `group_ready_tasks`, `group_delayed_tasks`, `group_in_flight_tasks`,
//!   `group_dead_letter_tasks`, `group_lag_tasks`, `group_acked_total`,
//!   `group_dead_lettered_total`, `group_oldest_ready_age_seconds`.
//!
//! # Design notes
//! - Request and storage metrics are recorded as they happen. Group and partition metrics are
//!   read from the replicated state at scrape time (families built per scrape, so a deleted
//!   topic's series disappear with it), except elections and the seconds a follower lags,
//!   which need history: [`Metrics::sample`] runs every [`SAMPLE_INTERVAL`] and at each scrape.
//! - Storage latencies are measured by [`MeteredDisk`], a decorator of the real [`Disk`], so
//!   the storage crate stays free of metrics code. Simulated nodes are not metered (their
//!   disk and time are simulated).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    exponential_buckets, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use taskbroker_client::proto::ApiError;
use taskbroker_raft::{GroupId, RaftNode};
use taskbroker_storage::io::{AlignedBuf, BackendKind, Disk, DiskFile, IoFuture};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How often elections and follower catch-up times are sampled between scrapes.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Label `topic` of the metadata group.
pub const METADATA_TOPIC_LABEL: &str = "__metadata";

/// The node's Prometheus metrics (cheap to share behind an `Arc`).
pub struct Metrics {
    registry: Registry,
    /// Open connections (client and Raft).
    pub connections_open: IntGauge,
    /// Errors by kind.
    pub errors: IntCounterVec,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    tasks: IntCounterVec,
    received_bytes: IntCounterVec,
    sent_bytes: IntCounterVec,
    elections: IntCounterVec,
    append_seconds: Histogram,
    fdatasync_seconds: Histogram,
    group_commit_bytes: Histogram,
    samples: Mutex<Samples>,
}

/// History that scrape-time state alone cannot give.
#[derive(Default)]
struct Samples {
    /// Last term seen per group, and the group's labels.
    terms: BTreeMap<GroupId, (u64, Option<(String, String)>)>,
    /// Per (group, follower): when the follower was last seen with every entry of the leader.
    caught_up_at: BTreeMap<(GroupId, u64), Instant>,
}

fn must<T>(r: prometheus::Result<T>, name: &str) -> T {
    // Metric names and labels are constants: an error here is a bug in this file.
    r.unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

impl Metrics {
    /// Registers every metric; `backend` is the storage backend in use.
    pub fn new(backend: BackendKind) -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn Collector>, name: &str| must(registry.register(c), name);
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels), name);
            reg(Box::new(c.clone()), name);
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = must(
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)),
                name,
            );
            reg(Box::new(h.clone()), name);
            h
        };
        // 50 µs .. ~26 s.
        let latency = || must(exponential_buckets(0.000_05, 2.0, 20), "latency buckets");
        let connections_open = must(
            IntGauge::new(
                "taskbroker_connections_open",
                "Open connections (client and Raft)",
            ),
            "connections_open",
        );
        reg(Box::new(connections_open.clone()), "connections_open");
        let backend_gauge = must(
            IntGaugeVec::new(
                Opts::new(
                    "taskbroker_storage_backend",
                    "1 for the storage backend in use",
                ),
                &["backend"],
            ),
            "storage_backend",
        );
        backend_gauge
            .with_label_values(&[&backend.to_string()])
            .set(1);
        reg(Box::new(backend_gauge), "storage_backend");
        let request_seconds = must(
            HistogramVec::new(
                HistogramOpts::new(
                    "taskbroker_request_duration_seconds",
                    "Client API request latency by API (fetch includes its long-poll wait)",
                )
                .buckets(latency()),
                &["api"],
            ),
            "request_duration_seconds",
        );
        reg(
            Box::new(request_seconds.clone()),
            "request_duration_seconds",
        );
        Metrics {
            connections_open,
            errors: counter_vec("taskbroker_errors_total", "Errors by kind", &["kind"]),
            requests: counter_vec(
                "taskbroker_requests_total",
                "Client API requests by API",
                &["api"],
            ),
            request_seconds,
            tasks: counter_vec(
                "taskbroker_tasks_total",
                "Tasks by operation: produced, leased, acked, nacked, extended, streamed",
                &["op"],
            ),
            received_bytes: counter_vec(
                "taskbroker_network_received_bytes_total",
                "Bytes received on client and Raft connections this node accepted (outgoing Raft connections are counted by the peer that accepted them)",
                &["conn"],
            ),
            sent_bytes: counter_vec(
                "taskbroker_network_sent_bytes_total",
                "Bytes sent on client and Raft connections this node accepted (outgoing Raft connections are counted by the peer that accepted them)",
                &["conn"],
            ),
            elections: counter_vec(
                "taskbroker_raft_elections_total",
                "Elections (new terms) seen by this node since it started",
                &["topic", "partition"],
            ),
            append_seconds: histogram(
                "taskbroker_storage_append_seconds",
                "Group-commit write of appended frames including its fdatasync",
                latency(),
            ),
            fdatasync_seconds: histogram(
                "taskbroker_storage_fdatasync_seconds",
                "Other writes+fdatasync and plain fdatasync calls (segment headers, truncation, metadata)",
                latency(),
            ),
            group_commit_bytes: histogram(
                "taskbroker_storage_group_commit_bytes",
                "Bytes written per group commit (block-aligned)",
                must(exponential_buckets(4096.0, 2.0, 14), "byte buckets"),
            ),
            samples: Mutex::new(Samples::default()),
            registry,
        }
    }

    /// Counts one API call of `api` that took `elapsed` and its error, if any.
    pub fn observe_request<T>(&self, api: &str, elapsed: Duration, result: &Result<T, ApiError>) {
        self.requests.with_label_values(&[api]).inc();
        self.request_seconds
            .with_label_values(&[api])
            .observe(elapsed.as_secs_f64());
        if let Err(e) = result {
            self.errors
                .with_label_values(&[crate::http::admin::status_of(e).1])
                .inc();
        }
    }

    /// Counts `n` tasks that went through `op` (`produced`, `leased`, `acked`, ...).
    pub fn count_tasks(&self, op: &str, n: u64) {
        if n > 0 {
            self.tasks.with_label_values(&[op]).inc_by(n);
        }
    }

    /// Task counters by operation and the number of client API requests, since the node
    /// started (what the web UI turns into rates).
    pub fn totals(&self) -> (BTreeMap<String, u64>, u64) {
        let mut tasks = BTreeMap::new();
        for f in self.tasks.collect() {
            for m in f.get_metric() {
                let op = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "op")
                    .map(|l| l.value().to_string())
                    .unwrap_or_default();
                tasks.insert(op, m.get_counter().get_value() as u64);
            }
        }
        let requests = self
            .requests
            .collect()
            .iter()
            .flat_map(|f| {
                f.get_metric()
                    .iter()
                    .map(|m| m.get_counter().get_value() as u64)
            })
            .sum();
        (tasks, requests)
    }

    /// Wraps a connection of kind `conn` (`client` or `raft`) so its bytes are counted.
    pub fn count_conn<C>(&self, inner: C, conn: &str) -> CountingConn<C> {
        CountingConn {
            inner,
            received: self.received_bytes.with_label_values(&[conn]),
            sent: self.sent_bytes.with_label_values(&[conn]),
        }
    }

    /// Updates the sampled history (elections, follower catch-up times) from `raft`.
    pub fn sample(&self, raft: &RaftNode) {
        let labels = group_labels(raft);
        let now = Instant::now();
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let ids = raft.group_ids();
        for &id in &ids {
            let Some(g) = raft.group(id) else { continue };
            let m = g.metrics();
            let prev = s
                .terms
                .insert(id, (m.term, labels.get(&id).cloned()))
                .map(|(t, _)| t);
            if let Some((topic, partition)) = labels.get(&id) {
                // The first sight creates the series at 0; later term changes count.
                let c = self
                    .elections
                    .with_label_values(&[topic.as_str(), partition.as_str()]);
                if let Some(prev) = prev.filter(|p| m.term > *p) {
                    c.inc_by(m.term - prev);
                }
            }
            for (follower, lag) in &m.follower_lag {
                let at = s.caught_up_at.entry((id, *follower)).or_insert(now);
                if *lag == 0 {
                    *at = now;
                }
            }
            if !m.is_leader {
                s.caught_up_at.retain(|(g, _), _| *g != id);
            }
        }
        // A group gone from this node (topic deleted, replica moved) takes its series along.
        let gone: Vec<GroupId> = s
            .terms
            .keys()
            .filter(|g| !ids.contains(g))
            .copied()
            .collect();
        for g in gone {
            if let Some((_, Some((topic, partition)))) = s.terms.remove(&g) {
                let _ = self
                    .elections
                    .remove_label_values(&[topic.as_str(), partition.as_str()]);
            }
        }
        s.caught_up_at.retain(|(g, _), _| ids.contains(g));
    }

    /// The text exposition of every metric.
    pub fn render(&self, raft: &RaftNode, now_ms: u64) -> String {
        self.sample(raft);
        let mut families = self.registry.gather();
        families.extend(self.state_families(raft, now_ms));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Partition, log and group families read from the state at scrape time.
    fn state_families(&self, raft: &RaftNode, now_ms: u64) -> Vec<MetricFamily> {
        let labels = group_labels(raft);
        let gauge = |name: &str, help: &str, l: &[&str]| {
            must(GaugeVec::new(Opts::new(name, help), l), name)
        };
        let counter = |name: &str, help: &str, l: &[&str]| {
            must(IntCounterVec::new(Opts::new(name, help), l), name)
        };
        let tp = ["topic", "partition"];
        let leader = gauge(
            "taskbroker_raft_leader",
            "1 if this node leads the group",
            &tp,
        );
        let term = gauge(
            "taskbroker_raft_term",
            "Current Raft term of the group",
            &tp,
        );
        let last = gauge(
            "taskbroker_raft_last_log_index",
            "Index of the last log entry",
            &tp,
        );
        let commit = gauge("taskbroker_raft_commit_index", "Commit index", &tp);
        let applied = gauge("taskbroker_raft_applied_index", "Applied index", &tp);
        let lag_entries = gauge(
            "taskbroker_raft_follower_lag_entries",
            "Leader only: entries a follower is behind the leader's last log index",
            &["topic", "partition", "follower"],
        );
        let lag_seconds = gauge(
            "taskbroker_raft_follower_lag_seconds",
            "Leader only: seconds since the follower last had every entry of the leader (0 when caught up)",
            &["topic", "partition", "follower"],
        );
        let log_bytes = gauge(
            "taskbroker_log_size_bytes",
            "Bytes in the group's segment files",
            &tp,
        );
        let segments = gauge("taskbroker_log_segments", "Segment files of the group", &tp);
        let gl = ["topic", "partition", "group"];
        let ready = gauge("taskbroker_group_ready_tasks", "Tasks ready to lease", &gl);
        let delayed = gauge(
            "taskbroker_group_delayed_tasks",
            "Tasks waiting for a not-before or retry time",
            &gl,
        );
        let in_flight = gauge(
            "taskbroker_group_in_flight_tasks",
            "Tasks leased to workers",
            &gl,
        );
        let dead = gauge(
            "taskbroker_group_dead_letter_tasks",
            "Current dead letters",
            &gl,
        );
        let lag = gauge(
            "taskbroker_group_lag_tasks",
            "Queue: tasks not done; stream: offsets not consumed",
            &gl,
        );
        let oldest = gauge(
            "taskbroker_group_oldest_ready_age_seconds",
            "Age of the oldest ready task since it was produced (0 when none is ready)",
            &gl,
        );
        let acked = counter(
            "taskbroker_group_acked_total",
            "Tasks acked since the group was created (replicated; rate() gives the ack rate)",
            &gl,
        );
        let dead_total = counter(
            "taskbroker_group_dead_lettered_total",
            "Tasks dead-lettered since the group was created",
            &gl,
        );
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for id in raft.group_ids() {
            let Some(g) = raft.group(id) else { continue };
            let Some((topic, partition)) = labels.get(&id) else {
                continue;
            };
            let l = [topic.as_str(), partition.as_str()];
            let m = g.metrics();
            let idx = |i: Option<u64>| i.map_or(-1.0, |i| i as f64);
            leader
                .with_label_values(&l)
                .set(f64::from(u8::from(m.is_leader)));
            term.with_label_values(&l).set(m.term as f64);
            last.with_label_values(&l).set(idx(m.last_log_index));
            commit.with_label_values(&l).set(idx(m.commit_index));
            applied.with_label_values(&l).set(idx(m.applied_index));
            for (fid, behind) in &m.follower_lag {
                let f = fid.to_string();
                let fl = [topic.as_str(), partition.as_str(), f.as_str()];
                lag_entries.with_label_values(&fl).set(*behind as f64);
                let secs = if *behind == 0 {
                    0.0
                } else {
                    samples
                        .caught_up_at
                        .get(&(id, *fid))
                        .map_or(0.0, |at| now.duration_since(*at).as_secs_f64())
                };
                lag_seconds.with_label_values(&fl).set(secs);
            }
            let st = g.log().stats();
            log_bytes.with_label_values(&l).set(st.bytes as f64);
            segments.with_label_values(&l).set(st.segments as f64);
            if !m.is_leader || id.is_metadata() {
                continue;
            }
            let guard = g.state().read();
            let Some(p) = guard.partition() else { continue };
            for (name, _) in p.groups() {
                let Some(s) = p.group_stats(name, now_ms) else {
                    continue;
                };
                let gl = [topic.as_str(), partition.as_str(), name];
                ready.with_label_values(&gl).set(s.ready as f64);
                delayed.with_label_values(&gl).set(s.delayed as f64);
                in_flight.with_label_values(&gl).set(s.in_flight as f64);
                dead.with_label_values(&gl).set(s.dead_letters as f64);
                lag.with_label_values(&gl).set(s.lag as f64);
                oldest
                    .with_label_values(&gl)
                    .set(s.oldest_ready_age_ms.unwrap_or(0) as f64 / 1000.0);
                acked.with_label_values(&gl).inc_by(s.acked_total);
                dead_total
                    .with_label_values(&gl)
                    .inc_by(s.dead_lettered_total);
            }
        }
        drop(samples);
        let mut out = Vec::new();
        for g in [
            &leader,
            &term,
            &last,
            &commit,
            &applied,
            &lag_entries,
            &lag_seconds,
            &log_bytes,
            &segments,
            &ready,
            &delayed,
            &in_flight,
            &dead,
            &lag,
            &oldest,
        ] {
            out.extend(g.collect());
        }
        out.extend(acked.collect());
        out.extend(dead_total.collect());
        // An empty vector still yields its family with no samples: drop those, the encoder
        // rejects them.
        out.retain(|f| !f.get_metric().is_empty());
        out
    }
}

/// `(topic, partition)` labels of every hosted group that the local metadata knows.
fn group_labels(raft: &RaftNode) -> BTreeMap<GroupId, (String, String)> {
    let mut out = BTreeMap::new();
    out.insert(
        GroupId::METADATA,
        (METADATA_TOPIC_LABEL.to_string(), "0".to_string()),
    );
    let Some(meta) = raft.group(GroupId::METADATA) else {
        return out;
    };
    let guard = meta.state().read();
    if let Some(m) = guard.metadata() {
        for t in m.topics() {
            for p in &t.partitions {
                out.insert(
                    GroupId(p.group_id),
                    (t.name.clone(), p.partition.to_string()),
                );
            }
        }
    }
    out
}

/// Runs [`Metrics::sample`] every [`SAMPLE_INTERVAL`] until the task is aborted.
pub async fn sample_loop(metrics: Arc<Metrics>, raft: Arc<RaftNode>) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        metrics.sample(&raft);
    }
}

/// A connection whose received and sent bytes are counted.
pub struct CountingConn<C> {
    inner: C,
    received: prometheus::IntCounter,
    sent: prometheus::IntCounter,
}

impl<C: AsyncRead + Unpin> AsyncRead for CountingConn<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.received.inc_by(n as u64);
        r
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for CountingConn<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.sent.inc_by(*n as u64);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A [`Disk`] decorator that times group-commit writes and fdatasyncs into [`Metrics`].
#[derive(Debug)]
pub struct MeteredDisk {
    inner: Arc<dyn Disk>,
    timers: Arc<DiskTimers>,
}

struct DiskTimers {
    append_seconds: Histogram,
    fdatasync_seconds: Histogram,
    group_commit_bytes: Histogram,
}

impl std::fmt::Debug for DiskTimers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskTimers")
    }
}

impl MeteredDisk {
    /// Wraps `inner`; its timings go to `metrics`.
    pub fn wrap(inner: Arc<dyn Disk>, metrics: &Metrics) -> Arc<dyn Disk> {
        Arc::new(MeteredDisk {
            inner,
            timers: Arc::new(DiskTimers {
                append_seconds: metrics.append_seconds.clone(),
                fdatasync_seconds: metrics.fdatasync_seconds.clone(),
                group_commit_bytes: metrics.group_commit_bytes.clone(),
            }),
        })
    }

    fn file(&self, f: Arc<dyn DiskFile>) -> Arc<dyn DiskFile> {
        Arc::new(MeteredFile {
            inner: f,
            timers: self.timers.clone(),
        })
    }
}

impl Disk for MeteredDisk {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn open(&self, path: &Path, create: bool) -> IoFuture<'_, Arc<dyn DiskFile>> {
        let path = path.to_path_buf();
        Box::pin(async move { Ok(self.file(self.inner.open(&path, create).await?)) })
    }
    fn create_dir_all(&self, path: &Path) -> IoFuture<'_, ()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> IoFuture<'_, Vec<String>> {
        self.inner.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> IoFuture<'_, ()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> IoFuture<'_, ()> {
        self.inner.sync_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> IoFuture<'_, ()> {
        self.inner.rename(from, to)
    }
    fn open_direct(&self, path: &Path, create: bool) -> IoFuture<'_, Arc<dyn DiskFile>> {
        let path = path.to_path_buf();
        Box::pin(async move { Ok(self.file(self.inner.open_direct(&path, create).await?)) })
    }
    fn random_u64(&self) -> u64 {
        self.inner.random_u64()
    }
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()> + Send + 'static>>) {
        self.inner.spawn(task)
    }
}

#[derive(Debug)]
struct MeteredFile {
    inner: Arc<dyn DiskFile>,
    timers: Arc<DiskTimers>,
}

impl MeteredFile {
    fn timed<'a, T: Send + 'a>(&'a self, h: &'a Histogram, f: IoFuture<'a, T>) -> IoFuture<'a, T> {
        Box::pin(async move {
            let start = Instant::now();
            let r = f.await;
            h.observe(start.elapsed().as_secs_f64());
            r
        })
    }
}

impl DiskFile for MeteredFile {
    fn read_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, (usize, Vec<u8>)> {
        self.inner.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, Vec<u8>> {
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> IoFuture<'_, ()> {
        self.timed(&self.timers.fdatasync_seconds, self.inner.sync_data())
    }
    fn len(&self) -> IoFuture<'_, u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> IoFuture<'_, ()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> IoFuture<'_, ()> {
        self.inner.allocate(len)
    }
    fn write_all_at_and_sync(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, Vec<u8>> {
        self.timed(
            &self.timers.fdatasync_seconds,
            self.inner.write_all_at_and_sync(buf, pos),
        )
    }
    fn write_blocks_at_and_sync(&self, buf: AlignedBuf, pos: u64) -> IoFuture<'_, AlignedBuf> {
        self.timers.group_commit_bytes.observe(buf.len() as f64);
        self.timed(
            &self.timers.append_seconds,
            self.inner.write_blocks_at_and_sync(buf, pos),
        )
    }
    fn write_blocks_at(&self, buf: AlignedBuf, pos: u64) -> IoFuture<'_, AlignedBuf> {
        // Spare-segment zeroing: forwarded so it stays O_DIRECT (the default would copy it
        // into a buffered write); not an append, so not timed.
        self.inner.write_blocks_at(buf, pos)
    }
    fn is_direct(&self) -> bool {
        self.inner.is_direct()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_observations_show_in_the_registry() {
        let m = Metrics::new(BackendKind::Std);
        m.observe_request::<()>("produce", Duration::from_millis(3), &Ok(()));
        m.observe_request::<()>("produce", Duration::from_millis(3), &Err(ApiError::Timeout));
        m.count_tasks("produced", 5);
        let text = {
            let mut buf = Vec::new();
            TextEncoder::new()
                .encode(&m.registry.gather(), &mut buf)
                .expect("encode");
            String::from_utf8(buf).expect("utf8")
        };
        assert!(
            text.contains("taskbroker_requests_total{api=\"produce\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("taskbroker_errors_total{kind=\"timeout\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("taskbroker_tasks_total{op=\"produced\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("taskbroker_storage_backend{backend=\"std\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("taskbroker_request_duration_seconds_count{api=\"produce\"} 2"),
            "{text}"
        );
    }
}
