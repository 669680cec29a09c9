//! `/metrics` of a real 3-node cluster after produce/lease/ack traffic, parsed with a
//! Prometheus text-format parser.

mod common;

use std::time::Duration;

use common::*;
use prometheus_parse::{Scrape, Value};
use taskbroker_client::proto::{FetchRequest, Settle, SettleRequest, TopicSpec};

/// The parsed `/metrics` of the node with HTTP address `http`.
fn scrape(http: &str) -> Scrape {
    let resp = http_get(http, "/metrics").expect("metrics answer");
    let (head, body) = resp.split_once("\r\n\r\n").expect("http response");
    assert!(head.contains(" 200 "), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("valid exposition format")
}

/// The value of the one sample of `metric` whose labels include `labels`.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = s
        .samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)));
    let sample = found.next()?;
    Some(match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(b) => b
            .iter()
            .find(|c| c.less_than.is_infinite())
            .map_or(0.0, |c| c.count),
        Value::Summary(_) => panic!("{metric} is a summary"),
    })
}

fn must(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    value(s, metric, labels).unwrap_or_else(|| {
        let names: std::collections::BTreeSet<&str> =
            s.samples.iter().map(|x| x.metric.as_str()).collect();
        panic!("no sample {metric}{labels:?}; families: {names:?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_produce_and_ack_traffic() {
    let cluster = Cluster::start(3);
    let c = cluster.client(1).await;
    eventually(
        Duration::from_secs(20),
        "three registered nodes",
        || async { (metadata(&c).await.nodes.len() >= 3).then_some(()) },
    )
    .await;
    let spec = TopicSpec {
        partitions: Some(1),
        replication_factor: Some(3),
        ..Default::default()
    };
    eventually(Duration::from_secs(20), "topic creation", || async {
        match c.create_topic(ctx(), "m".into(), spec.clone()).await {
            Ok(Ok(_)) => Some(()),
            Ok(Err(e)) if e.is_retryable() => None,
            Ok(Err(e)) => panic!("create_topic: {e}"),
            Err(_) => None,
        }
    })
    .await;
    let (resp, leader) = produce_routed(
        &cluster,
        1,
        "m",
        0,
        batch(7, 0, &["a", "b", "c", "d", "e"], None),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(resp.count, 5);
    let lc = cluster.client(leader).await;
    let fetched = lc
        .fetch(
            ctx(),
            FetchRequest {
                topic: "m".into(),
                partition: 0,
                group: "g".into(),
                worker: "w".into(),
                max_tasks: 3,
                visibility_timeout_ms: Some(60_000),
                wait_ms: 1_000,
            },
        )
        .await
        .expect("rpc")
        .expect("fetch");
    assert_eq!(fetched.leases.len(), 3);
    let acks = lc
        .settle(
            ctx(),
            SettleRequest {
                topic: "m".into(),
                partition: 0,
                group: "g".into(),
                items: fetched
                    .leases
                    .iter()
                    .take(2)
                    .map(|l| (l.token, Settle::Ack))
                    .collect(),
            },
        )
        .await
        .expect("rpc")
        .expect("settle");
    assert!(acks.iter().all(|r| r.is_ok()), "{acks:?}");

    let http = cluster.node(leader).http.clone();
    let s = tokio::task::spawn_blocking(move || scrape(&http))
        .await
        .expect("scrape");
    let tp = [("topic", "m"), ("partition", "0")];
    let gl = [("topic", "m"), ("partition", "0"), ("group", "g")];

    // Per node.
    assert!(must(&s, "taskbroker_requests_total", &[("api", "produce")]) >= 1.0);
    assert!(must(&s, "taskbroker_requests_total", &[("api", "fetch")]) >= 1.0);
    assert!(must(&s, "taskbroker_requests_total", &[("api", "settle")]) >= 1.0);
    assert!(
        must(
            &s,
            "taskbroker_request_duration_seconds",
            &[("api", "produce")]
        ) >= 1.0
    );
    assert!(
        must(
            &s,
            "taskbroker_request_duration_seconds_sum",
            &[("api", "produce")]
        ) > 0.0
    );
    assert_eq!(
        must(&s, "taskbroker_tasks_total", &[("op", "produced")]),
        5.0
    );
    assert_eq!(must(&s, "taskbroker_tasks_total", &[("op", "leased")]), 3.0);
    assert_eq!(must(&s, "taskbroker_tasks_total", &[("op", "acked")]), 2.0);
    assert!(
        must(
            &s,
            "taskbroker_network_received_bytes_total",
            &[("conn", "client")]
        ) > 100.0
    );
    assert!(
        must(
            &s,
            "taskbroker_network_sent_bytes_total",
            &[("conn", "client")]
        ) > 100.0
    );
    assert!(
        must(
            &s,
            "taskbroker_network_sent_bytes_total",
            &[("conn", "raft")]
        ) > 0.0
    );
    assert!(must(&s, "taskbroker_connections_open", &[]) >= 1.0);

    // Per partition.
    assert_eq!(must(&s, "taskbroker_raft_leader", &tp), 1.0);
    assert!(must(&s, "taskbroker_raft_term", &tp) >= 1.0);
    let commit = must(&s, "taskbroker_raft_commit_index", &tp);
    let applied = must(&s, "taskbroker_raft_applied_index", &tp);
    assert!(
        commit >= 2.0 && applied >= 2.0,
        "commit {commit} applied {applied}"
    );
    assert!(applied <= must(&s, "taskbroker_raft_last_log_index", &tp));
    let followers: Vec<_> = s
        .samples
        .iter()
        .filter(|x| {
            x.metric == "taskbroker_raft_follower_lag_entries" && x.labels.get("topic") == Some("m")
        })
        .collect();
    assert_eq!(followers.len(), 2, "{followers:?}");
    for f in &followers {
        let follower = f.labels.get("follower").expect("follower label");
        assert_ne!(follower, leader.to_string());
        let secs = must(
            &s,
            "taskbroker_raft_follower_lag_seconds",
            &[("topic", "m"), ("follower", follower)],
        );
        assert!((0.0..60.0).contains(&secs), "{secs}");
    }
    // Each term seen after the node started counts; the counter exists for the partition.
    assert!(value(&s, "taskbroker_raft_elections_total", &tp).is_some());
    assert!(must(&s, "taskbroker_log_size_bytes", &tp) > 0.0);
    assert!(must(&s, "taskbroker_log_segments", &tp) >= 1.0);
    assert_eq!(
        must(&s, "taskbroker_raft_leader", &[("topic", "__metadata")]),
        f64::from(u8::from(metadata(&c).await.controller == Some(leader)))
    );

    // Storage.
    assert_eq!(
        must(&s, "taskbroker_storage_backend", &[("backend", "std")]),
        1.0
    );
    assert!(must(&s, "taskbroker_storage_append_seconds", &[]) >= 1.0);
    assert!(must(&s, "taskbroker_storage_group_commit_bytes", &[]) >= 1.0);
    assert!(value(&s, "taskbroker_storage_fdatasync_seconds", &[]).is_some());

    // Per group and partition: 5 produced, 3 leased, 2 of them acked.
    assert_eq!(must(&s, "taskbroker_group_ready_tasks", &gl), 2.0);
    assert_eq!(must(&s, "taskbroker_group_in_flight_tasks", &gl), 1.0);
    assert_eq!(must(&s, "taskbroker_group_delayed_tasks", &gl), 0.0);
    assert_eq!(must(&s, "taskbroker_group_dead_letter_tasks", &gl), 0.0);
    assert_eq!(must(&s, "taskbroker_group_lag_tasks", &gl), 3.0);
    assert_eq!(must(&s, "taskbroker_group_acked_total", &gl), 2.0);
    assert_eq!(must(&s, "taskbroker_group_dead_lettered_total", &gl), 0.0);
    let age = must(&s, "taskbroker_group_oldest_ready_age_seconds", &gl);
    assert!((0.0..120.0).contains(&age), "{age}");

    // A follower reports the partition but not the group (the leader does).
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    let fh = cluster.node(follower).http.clone();
    let fs = tokio::task::spawn_blocking(move || scrape(&fh))
        .await
        .expect("scrape");
    assert_eq!(must(&fs, "taskbroker_raft_leader", &tp), 0.0);
    assert!(value(&fs, "taskbroker_group_ready_tasks", &gl).is_none());
    // Every family follows the naming conventions.
    for x in s.samples.iter().chain(fs.samples.iter()) {
        assert!(x.metric.starts_with("taskbroker_"), "{}", x.metric);
        if matches!(x.value, Value::Counter(_)) {
            assert!(x.metric.ends_with("_total"), "{}", x.metric);
        }
    }
}
