//! The Rust client (`taskbroker-client`) against real 3-node clusters on loopback.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use taskbroker_client::{Client, RetryPolicy, Task, TopicSpec};

fn seeds(c: &Cluster) -> Vec<String> {
    c.nodes.iter().map(|n| n.listen.clone()).collect()
}

async fn client(c: &Cluster) -> Client {
    Client::builder()
        .seeds(seeds(c))
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

async fn topic(client: &Client, name: &str, partitions: u32, visibility_ms: u64) {
    let spec = TopicSpec {
        partitions: Some(partitions),
        replication_factor: Some(3),
        visibility_timeout_ms: Some(visibility_ms),
        ..TopicSpec::default()
    };
    eventually(Duration::from_secs(20), "topic creation", || async {
        client.admin().create_topic(name, spec.clone()).await.ok()
    })
    .await;
    // Wait for every partition to have a leader.
    eventually(Duration::from_secs(20), "partition leaders", || async {
        let t = client.admin().describe_topic(name).await.ok()?;
        t.partitions
            .iter()
            .all(|p| p.leader.is_some())
            .then_some(())
    })
    .await;
}

async fn produce(client: &Client, topic: &str, n: usize) {
    let producer = client.producer().build();
    let sends: Vec<_> = (0..n)
        .map(|i| producer.send(topic, Task::new(format!("task-{i}"))))
        .collect();
    for r in futures::future::join_all(sends).await {
        r.expect("produce");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_retries_across_a_leader_kill_store_each_task_once() {
    let mut cluster = Cluster::start(3);
    let client = client(&cluster).await;
    topic(&client, "idem", 1, 30_000).await;
    // A leader may be in hand-over (e.g. back to its preferred replica) at any moment.
    let leader = eventually(Duration::from_secs(20), "a partition leader", || async {
        client.admin().describe_topic("idem").await.ok()?.partitions[0].leader
    })
    .await;

    let producer = client.producer().build();
    let total = 400usize;
    let mut handles = Vec::new();
    for i in 0..total {
        let p = producer.clone();
        handles.push(tokio::spawn(async move {
            p.send("idem", Task::new(format!("task-{i}"))).await
        }));
        if i == total / 2 {
            cluster.kill(leader);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut offsets = BTreeSet::new();
    for h in handles {
        let at = h
            .await
            .expect("join")
            .expect("every send succeeds after failover");
        assert!(
            offsets.insert(at.offset),
            "two tasks got offset {}",
            at.offset
        );
    }
    assert_eq!(offsets.len(), total);

    // Read the partition back: every payload exactly once.
    // The killed node may have led the metadata group too: give the cluster time to recover.
    let mut consumer = eventually(Duration::from_secs(60), "a stream consumer", || async {
        client
            .stream_consumer("idem", "check")
            .wait(Duration::from_millis(100))
            .build()
            .await
            .ok()
    })
    .await;
    let mut seen = BTreeMap::new();
    while seen.len() < total {
        let r = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("records arrive")
            .expect("record");
        *seen
            .entry(String::from_utf8_lossy(&r.payload).to_string())
            .or_insert(0) += 1;
    }
    let hw = client
        .admin()
        .describe_group("idem", "check")
        .await
        .expect("group")
        .partitions[0]
        .high_watermark;
    assert_eq!(hw, total as u64, "nothing stored twice");
    assert!(seen.values().all(|c| *c == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_workers_on_four_partitions_all_get_work() {
    let cluster = Cluster::start(3);
    let client = client(&cluster).await;
    topic(&client, "wide", 4, 30_000).await;
    produce(&client, "wide", 640).await;

    let counts = Arc::new(Mutex::new(BTreeMap::<usize, u32>::new()));
    let mut workers = Vec::new();
    for w in 0..32 {
        let worker = client
            .worker("wide", "pool")
            .concurrency(1)
            .prefetch(1)
            .wait(Duration::from_millis(200))
            .build()
            .await
            .expect("worker");
        let counts = counts.clone();
        let runner = worker.clone();
        tokio::spawn(async move {
            runner
                .run(move |_task| {
                    let counts = counts.clone();
                    async move {
                        *counts.lock().unwrap().entry(w).or_insert(0) += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<(), String>(())
                    }
                })
                .await
        });
        workers.push(worker);
    }
    eventually(
        Duration::from_secs(60),
        "all 640 tasks processed",
        || async { (counts.lock().unwrap().values().sum::<u32>() >= 640).then_some(()) },
    )
    .await;
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts.len(), 32, "every worker got work: {counts:?}");
    for w in workers {
        w.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashed_worker_tasks_are_redelivered_and_extended_ones_are_not() {
    let cluster = Cluster::start(3);
    let client = client(&cluster).await;
    topic(&client, "leases", 1, 30_000).await;
    produce(&client, "leases", 2).await;
    let visibility = Duration::from_millis(1500);

    // A "crashing" worker: takes a task, never extends nor settles it.
    let crashing = client
        .worker("leases", "g")
        .visibility_timeout(visibility)
        .prefetch(0)
        .auto_extend(false)
        .build()
        .await
        .expect("worker");
    let lost = crashing.next().await.expect("next").expect("a task");
    let lost_offset = lost.offset();
    std::mem::forget(lost); // the process "dies" holding it

    // A slow worker that keeps its task alive by automatic extension.
    let slow = client
        .worker("leases", "g")
        .visibility_timeout(visibility)
        .prefetch(0)
        .build()
        .await
        .expect("worker");
    let kept = slow.next().await.expect("next").expect("a task");
    assert_ne!(kept.offset(), lost_offset);

    // An observer: must get the crashed task back (attempt 2), never the extended one.
    let observer = client
        .worker("leases", "g")
        .visibility_timeout(visibility)
        .prefetch(0)
        .wait(Duration::from_millis(200))
        .build()
        .await
        .expect("worker");
    let redelivered = tokio::time::timeout(Duration::from_secs(10), observer.next())
        .await
        .expect("redelivery after the visibility timeout")
        .expect("next")
        .expect("task");
    assert_eq!(redelivered.offset(), lost_offset);
    assert_eq!(redelivered.attempt(), 2);
    redelivered.ack().await.expect("ack");

    // Hold the slow task for 3 visibility timeouts; the observer must not get it.
    let none = tokio::time::timeout(visibility * 3, observer.next()).await;
    assert!(none.is_err(), "the extended task was redelivered: {none:?}");
    assert_eq!(kept.attempt(), 1);
    kept.ack().await.expect("the extended lease is still valid");
    observer.shutdown().await.expect("shutdown");
    slow.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_releases_in_flight_tasks_promptly() {
    let cluster = Cluster::start(3);
    let client = client(&cluster).await;
    topic(&client, "release", 1, 60_000).await;
    produce(&client, "release", 6).await;

    let first = client
        .worker("release", "g")
        .concurrency(2)
        .prefetch(4)
        .shutdown_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("worker");
    let held_a = first.next().await.expect("next").expect("task");
    let held_b = first.next().await.expect("next").expect("task");
    let started = std::time::Instant::now();
    first.shutdown().await.expect("shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop((held_a, held_b));

    let second = client
        .worker("release", "g")
        .concurrency(6)
        .wait(Duration::from_millis(200))
        .build()
        .await
        .expect("worker");
    let mut got = BTreeSet::new();
    while got.len() < 6 {
        let t = tokio::time::timeout(Duration::from_secs(10), second.next())
            .await
            .expect("released tasks come back long before the 60 s visibility timeout")
            .expect("next")
            .expect("task");
        got.insert(t.offset());
        t.ack().await.expect("ack");
    }
    second.shutdown().await.expect("shutdown");
}
