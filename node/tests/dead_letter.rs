//! Dead-letter topics against real 3-node clusters on loopback: tasks that use up their attempts
//! are forwarded to the topic's dead-letter topic with their origin headers, requeue brings
//! them back to the group they failed in, and a leader kill while forwarding loses and
//! duplicates nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use taskbroker_client::proto::headers;
use taskbroker_client::{Client, LeasedTask, RetryPolicy, Task, TopicSpec, Worker};

async fn client(c: &Cluster) -> Client {
    Client::builder()
        .seeds(c.nodes.iter().map(|n| n.listen.clone()).collect::<Vec<_>>())
        .request_timeout(Duration::from_secs(5))
        .retry(RetryPolicy {
            max_attempts: 40,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
        })
        .connect()
        .await
        .expect("connect")
}

async fn topic(cluster: &Cluster, client: &Client, name: &str, spec: TopicSpec) {
    eventually(Duration::from_secs(30), "topic creation", || async {
        client.admin().create_topic(name, spec.clone()).await.ok()
    })
    .await;
    eventually(Duration::from_secs(30), "partition leaders", || async {
        let t = client.admin().describe_topic(name).await.ok()?;
        t.partitions
            .iter()
            .all(|p| p.leader.is_some())
            .then_some(())
    })
    .await;
    // Every node knows the topic (a node still applying the creation would answer
    // UnknownTopic to the client's first metadata request).
    for n in &cluster.nodes {
        let c = connect(&n.listen).await;
        eventually(
            Duration::from_secs(30),
            "topic known everywhere",
            || async {
                let m = c.metadata(ctx(), vec![]).await.ok()?.ok()?;
                m.topics.iter().any(|t| t.name == name).then_some(())
            },
        )
        .await;
    }
}

fn spec(partitions: u32, max_attempts: u32, dlq: &str) -> TopicSpec {
    TopicSpec {
        partitions: Some(partitions),
        replication_factor: Some(3),
        visibility_timeout_ms: Some(10_000),
        max_attempts: Some(max_attempts),
        dead_letter_topic: Some(dlq.into()),
        ..TopicSpec::default()
    }
}

async fn worker(client: &Client, topic: &str, group: &str) -> Worker {
    client
        .worker(topic, group)
        .concurrency(8)
        .wait(Duration::from_millis(500))
        .build()
        .await
        .expect("worker")
}

/// The next task, or `None` after `wait`.
async fn next(w: &Worker, wait: Duration) -> Option<LeasedTask> {
    tokio::time::timeout(wait, w.next())
        .await
        .ok()
        .and_then(|r| r.expect("worker"))
}

fn header(t: &LeasedTask, name: &str) -> String {
    t.header(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// Sum over partitions of a group's (dead letters, ready + delayed + in flight).
async fn group_counts(client: &Client, topic: &str, group: &str) -> Option<(u64, u64)> {
    let d = client.admin().describe_group(topic, group).await.ok()?;
    Some(d.partitions.iter().fold((0, 0), |(dead, open), p| {
        (
            dead + p.dead_letters,
            open + p.ready + p.delayed + p.in_flight,
        )
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exhausted_tasks_reach_the_dead_letter_topic_and_requeue_brings_them_back() {
    let started = Instant::now();
    let cluster = Cluster::start(3);
    let client = client(&cluster).await;
    // The dead-letter topic does not exist yet: the first dead letter creates it.
    topic(&cluster, &client, "jobs", spec(2, 2, "jobs.dlq")).await;

    let n = 6;
    let producer = client.producer().build();
    for i in 0..n {
        producer
            .send(
                "jobs",
                Task::new(format!("job-{i}"))
                    .key(format!("key-{i}"))
                    .header("trace", format!("t{i}")),
            )
            .await
            .expect("produce");
    }
    // Another group of the topic leases every task first (so both groups hold them), and acks
    // them once g is done: it must not see requeued tasks later.
    let other = worker(&client, "jobs", "other").await;
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(
            next(&other, Duration::from_secs(20))
                .await
                .expect("task for other"),
        );
    }
    let g = worker(&client, "jobs", "g").await;

    // Group g fails every task twice (max attempts 2).
    for _ in 0..2 * n {
        let t = next(&g, Duration::from_secs(20)).await.expect("task for g");
        let reason = format!("boom on {}", String::from_utf8_lossy(t.payload()));
        t.nack_with_reason(Some(Duration::ZERO), reason)
            .await
            .expect("nack");
    }
    g.shutdown().await.expect("shutdown");
    for t in held {
        t.ack().await.expect("ack");
    }

    // All of them leave the group...
    eventually(
        Duration::from_secs(30),
        "dead letters forwarded",
        || async { (group_counts(&client, "jobs", "g").await? == (0, 0)).then_some(()) },
    )
    .await;
    // ... and are in the dead-letter topic with their origin.
    let dlq_meta = client
        .admin()
        .describe_topic("jobs.dlq")
        .await
        .expect("the dead-letter topic was created");
    assert_eq!(
        dlq_meta.partitions.len(),
        2,
        "as many partitions as the source"
    );
    let inspect = worker(&client, "jobs.dlq", "inspect").await;
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let t = next(&inspect, Duration::from_secs(20))
            .await
            .expect("dead letter in the dead-letter topic");
        let payload = String::from_utf8_lossy(t.payload()).into_owned();
        let i: usize = payload["job-".len()..].parse().expect("payload");
        assert_eq!(header(&t, headers::ORIGIN_TOPIC), "jobs");
        assert_eq!(header(&t, headers::ORIGIN_GROUP), "g");
        assert_eq!(header(&t, headers::ATTEMPTS), "2");
        assert_eq!(
            header(&t, headers::LAST_ERROR),
            format!("boom on {payload}")
        );
        assert_eq!(
            header(&t, "trace"),
            format!("t{i}"),
            "the task's own headers stay"
        );
        assert_eq!(
            t.key().map(|k| k.to_vec()),
            Some(format!("key-{i}").into_bytes())
        );
        let origin_partition: u32 = header(&t, headers::ORIGIN_PARTITION)
            .parse()
            .expect("origin partition");
        assert_eq!(t.partition(), origin_partition % 2);
        let origin_offset: u64 = header(&t, headers::ORIGIN_OFFSET)
            .parse()
            .expect("origin offset");
        assert!(header(&t, headers::DEAD_LETTERED_AT_MS)
            .parse::<u64>()
            .is_ok());
        assert!(
            seen.insert((origin_partition, origin_offset), payload)
                .is_none(),
            "one dead letter per task"
        );
        t.ack().await.expect("ack dead letter");
    }
    assert_eq!(seen.len(), n);
    assert!(
        next(&inspect, Duration::from_secs(1)).await.is_none(),
        "no more dead letters"
    );

    // Requeue (through any node) moves them back to g, and only to g.
    let moved = client
        .admin()
        .requeue_dead_letters("jobs", "g")
        .await
        .expect("requeue");
    assert_eq!(moved, n as u64);
    let g = worker(&client, "jobs", "g").await;
    let mut back = BTreeSet::new();
    for _ in 0..n {
        let t = next(&g, Duration::from_secs(20))
            .await
            .expect("requeued task");
        assert_eq!(t.attempt(), 1, "attempts start over");
        assert_eq!(header(&t, headers::REQUEUE_GROUP), "g");
        assert_eq!(
            header(&t, headers::ORIGIN_TOPIC),
            "",
            "origin headers are dropped"
        );
        let payload = String::from_utf8_lossy(t.payload()).into_owned();
        let i: usize = payload["job-".len()..].parse().expect("payload");
        assert_eq!(header(&t, "trace"), format!("t{i}"));
        back.insert(payload);
        t.ack().await.expect("ack");
    }
    assert_eq!(back.len(), n);
    assert!(
        next(&other, Duration::from_secs(2)).await.is_none(),
        "requeued tasks are for g only"
    );
    // Requeue again: nothing left to move.
    let again = client
        .admin()
        .requeue_dead_letters("jobs", "g")
        .await
        .expect("requeue");
    assert_eq!(again, 0);
    eprintln!(
        "exhausted_tasks_reach_the_dead_letter_topic_and_requeue_brings_them_back: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_kill_while_dead_lettering_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3);
    let client = client(&cluster).await;
    topic(&cluster, &client, "src", spec(1, 1, "src.dlq")).await;
    topic(
        &cluster,
        &client,
        "src.dlq",
        TopicSpec {
            partitions: Some(1),
            replication_factor: Some(3),
            ..TopicSpec::default()
        },
    )
    .await;

    let n: u64 = 1_000;
    let producer = client.producer().build();
    let sends: Vec<_> = (0..n)
        .map(|i| producer.send("src", Task::new(format!("task-{i}"))))
        .collect();
    for r in futures::future::join_all(sends).await {
        r.expect("produce");
    }
    // A leader may be in hand-over (e.g. back to its preferred replica) at any moment.
    let source_leader = eventually(Duration::from_secs(20), "a partition leader", || async {
        client.admin().describe_topic("src").await.ok()?.partitions[0].leader
    })
    .await;

    // One attempt each: every nack dead-letters, and forwarding starts at once. Nacks go out
    // in bulk so that dead letters pile up faster than they are forwarded.
    let g = client
        .worker("src", "g")
        .concurrency(256)
        .wait(Duration::from_millis(500))
        .build()
        .await
        .expect("worker");
    // Leases lost with the killed leader expire (visibility 10 s) and, with one attempt
    // allowed, become dead letters without a redelivery: loop until the group has nothing open.
    let mut nacked = 0;
    let mut killed = None;
    loop {
        let mut leased = Vec::new();
        while leased.len() < 200 {
            match next(&g, Duration::from_millis(500)).await {
                Some(t) => leased.push(t),
                None => break,
            }
        }
        if leased.is_empty() {
            if killed.is_some()
                && group_counts(&client, "src", "g")
                    .await
                    .is_some_and(|(_, open)| open == 0)
            {
                break;
            }
            continue;
        }
        nacked += leased.len() as u64;
        let nacks = leased
            .into_iter()
            .map(|t| t.nack_with_reason(Some(Duration::ZERO), "fail"));
        for r in futures::future::join_all(nacks).await {
            r.expect("nack");
        }
        if killed.is_none() && nacked >= n / 2 {
            // Kill the source partition's leader while it is forwarding: some letters are in
            // the dead-letter topic, some still in the group.
            let waiting = eventually(Duration::from_secs(30), "dead letters waiting", || async {
                let (dead, _) = group_counts(&client, "src", "g").await?;
                (dead > 0 && dead < nacked).then_some(dead)
            })
            .await;
            cluster.kill(source_leader);
            eprintln!(
                "killed node {source_leader} after {nacked} nacks with {waiting} dead letters \
                 not forwarded yet ({} forwarded)",
                nacked - waiting
            );
            killed = Some(waiting);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "nacking took too long"
        );
    }
    g.shutdown().await.expect("shutdown");

    // The new leader forwards the rest; the killed node comes back later.
    eventually(
        Duration::from_secs(90),
        "all dead letters forwarded",
        || async { (group_counts(&client, "src", "g").await? == (0, 0)).then_some(()) },
    )
    .await;
    cluster.spawn(source_leader);
    cluster.wait_ready(source_leader);

    // The dead-letter topic holds every task exactly once.
    // (A restarted node may answer from metadata it is still replaying: retry UnknownTopic.)
    let mut audit = eventually(Duration::from_secs(30), "stream consumer", || async {
        client
            .stream_consumer("src.dlq", "audit")
            .wait(Duration::from_millis(500))
            .build()
            .await
            .ok()
    })
    .await;
    let mut origins = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (origins.values().sum::<u64>()) < n && Instant::now() < deadline {
        let Ok(r) = tokio::time::timeout(Duration::from_secs(5), audit.next()).await else {
            continue;
        };
        let r = r.expect("stream");
        let origin = r
            .headers
            .iter()
            .find(|(k, _)| k == headers::ORIGIN_OFFSET)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .expect("origin offset header");
        *origins.entry(origin).or_insert(0u64) += 1;
    }
    let duplicates: Vec<_> = origins.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        duplicates.is_empty(),
        "duplicated dead letters: {duplicates:?}"
    );
    assert_eq!(
        origins.len() as u64,
        n,
        "every task reached the dead-letter topic"
    );
    // Nothing more trickles in.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), audit.next())
            .await
            .is_err(),
        "no extra dead letters"
    );
    eprintln!(
        "a_leader_kill_while_dead_lettering_loses_and_duplicates_nothing: {:?}",
        started.elapsed()
    );
}
