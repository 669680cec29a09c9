//! The client API against real 3-node clusters on loopback.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use taskbroker_client::batch::BatchView;
use taskbroker_client::proto::{
    ApiError, BrokerApiClient, FetchRequest, FetchResponse, ProduceRequest, Settle, SettleRequest,
    TopicSpec,
};

fn spec(partitions: u32, rf: u32) -> TopicSpec {
    TopicSpec {
        partitions: Some(partitions),
        replication_factor: Some(rf),
        ..Default::default()
    }
}

async fn create_topic(c: &BrokerApiClient, name: &str, spec: TopicSpec) {
    eventually(Duration::from_secs(20), "registered nodes", || async {
        let want = spec.replication_factor.unwrap_or(1) as usize;
        (metadata(c).await.nodes.len() >= want).then_some(())
    })
    .await;
    eventually(Duration::from_secs(20), "topic creation", || async {
        match c.create_topic(ctx(), name.into(), spec.clone()).await {
            Ok(Ok(_)) => Some(()),
            Ok(Err(e)) if e.is_retryable() => None,
            Ok(Err(e)) => panic!("create_topic: {e}"),
            Err(_) => None,
        }
    })
    .await
}

/// The leader of `topic/partition` once every replica agrees one exists.
async fn leader_of(cluster: &Cluster, topic: &str, partition: u32) -> u64 {
    eventually(Duration::from_secs(20), "a partition leader", || async {
        let live = cluster.nodes.iter().find(|n| n.child.is_some())?.id;
        let c = cluster.client(live).await;
        let m = c.metadata(ctx(), vec![topic.into()]).await.ok()?.ok()?;
        m.topics.first()?.partitions.get(partition as usize)?.leader
    })
    .await
}

fn payloads(resp: &FetchResponse) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for lease in &resp.leases {
        let b = resp
            .batches
            .iter()
            .find(|b| {
                let n = BatchView::new(&b.bytes).expect("batch").len() as u64;
                lease.token.offset >= b.base_offset && lease.token.offset < b.base_offset + n
            })
            .expect("batch of lease");
        let view = BatchView::new(&b.bytes).expect("view");
        let r = view
            .record((lease.token.offset - b.base_offset) as usize)
            .expect("record");
        out.push((
            lease.token.offset,
            String::from_utf8(r.payload().to_vec()).expect("utf8"),
        ));
    }
    out
}

async fn fetch(
    c: &BrokerApiClient,
    topic: &str,
    group: &str,
    max: u32,
    vis: Option<u64>,
    wait_ms: u64,
) -> FetchResponse {
    c.fetch(
        ctx(),
        FetchRequest {
            topic: topic.into(),
            partition: 0,
            group: group.into(),
            worker: "w".into(),
            max_tasks: max,
            visibility_timeout_ms: vis,
            wait_ms,
        },
    )
    .await
    .expect("rpc")
    .expect("fetch")
}

async fn settle(
    c: &BrokerApiClient,
    topic: &str,
    group: &str,
    items: Vec<(taskbroker_client::proto::LeaseToken, Settle)>,
) -> Vec<Result<(), ApiError>> {
    c.settle(
        ctx(),
        SettleRequest {
            topic: topic.into(),
            partition: 0,
            group: group.into(),
            items,
        },
    )
    .await
    .expect("rpc")
    .expect("settle")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_topics_produce_and_bad_input() {
    let started = Instant::now();
    let cluster = Cluster::start(3);
    let c1 = cluster.client(1).await;

    // All three nodes register.
    eventually(Duration::from_secs(20), "3 registered nodes", || async {
        (metadata(&c1).await.nodes.len() == 3).then_some(())
    })
    .await;

    // Create from a node that may not be the controller (forwarded), idempotently.
    let c2 = cluster.client(2).await;
    create_topic(&c2, "jobs", spec(12, 3)).await;
    let again = c1
        .create_topic(ctx(), "jobs".into(), spec(12, 3))
        .await
        .expect("rpc");
    assert!(again.is_ok(), "{again:?}");
    let conflict = c1
        .create_topic(ctx(), "jobs".into(), spec(6, 3))
        .await
        .expect("rpc");
    assert!(
        matches!(conflict, Err(ApiError::TopicConflict { .. })),
        "{conflict:?}"
    );
    let m = metadata(&c1).await;
    let t = m.topics.iter().find(|t| t.name == "jobs").expect("topic");
    assert_eq!(t.partitions.len(), 12);
    assert!(t.partitions.iter().all(|p| p.replicas.len() == 3));

    // Produce to every partition through its leader; a follower answers NotLeader with the
    // right hint and address.
    for p in 0..12u32 {
        // A follower answers NotLeader with the leader's id and address (right after an
        // election it may briefly know no leader: Unavailable). The probe batch is invalid, so
        // if leadership moved to the probed node meanwhile nothing is stored.
        let leader = eventually(
            Duration::from_secs(20),
            "NotLeader from a follower",
            || async {
                let leader = leader_of(&cluster, "jobs", p).await;
                let follower = (1..=3).find(|n| *n != leader).expect("follower");
                let r = cluster
                    .client(follower)
                    .await
                    .produce(
                        ctx(),
                        ProduceRequest {
                            topic: "jobs".into(),
                            partition: p,
                            batch: bytes::Bytes::from_static(b"not a batch"),
                        },
                    )
                    .await
                    .expect("rpc");
                match r {
                    Err(ApiError::NotLeader {
                        leader_hint: Some(h),
                        leader_addr,
                    }) if h == leader => {
                        assert_eq!(
                            leader_addr.as_deref(),
                            Some(cluster.node(h).listen.as_str())
                        );
                        Some(leader)
                    }
                    Err(ApiError::NotLeader { .. })
                    | Err(ApiError::Unavailable { .. })
                    | Err(ApiError::InvalidBatch { .. }) => None,
                    other => panic!("follower {follower} of {p} answered {other:?}"),
                }
            },
        )
        .await;
        let (resp, _) = produce_routed(
            &cluster,
            leader,
            "jobs",
            p,
            batch(7, u64::from(p) * 10, &["a", "b"], None),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(resp.count, 2);
        assert!(!resp.duplicate);
        // Retried batch: deduplicated.
        let (dup, _) = produce_routed(
            &cluster,
            leader,
            "jobs",
            p,
            batch(7, u64::from(p) * 10, &["a", "b"], None),
            Duration::from_secs(20),
        )
        .await;
        assert!(dup.duplicate);
        assert_eq!(dup.base_offset, resp.base_offset);
    }

    // Fetch + ack on partition 0.
    let leader = leader_of(&cluster, "jobs", 0).await;
    let lc = cluster.client(leader).await;
    let f = fetch(&lc, "jobs", "g", 10, None, 1000).await;
    let got = payloads(&f);
    assert_eq!(
        got.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let acks = f.leases.iter().map(|l| (l.token, Settle::Ack)).collect();
    assert!(settle(&lc, "jobs", "g", acks)
        .await
        .iter()
        .all(|r| r.is_ok()));
    let d = c1
        .describe_group(ctx(), "jobs".into(), "g".into())
        .await
        .expect("rpc")
        .expect("describe");
    assert_eq!(d.partitions.len(), 12);
    assert_eq!(d.partitions[0].acked_total, 2);
    assert_eq!(d.partitions[0].in_flight, 0);

    // Unknown topic.
    let r = lc
        .produce(
            ctx(),
            ProduceRequest {
                topic: "nope".into(),
                partition: 0,
                batch: batch(0, 0, &["x"], None),
            },
        )
        .await
        .expect("rpc");
    assert!(matches!(r, Err(ApiError::UnknownTopic { .. })), "{r:?}");

    // Oversize task (default limit 1 MiB).
    let big = "x".repeat(2 << 20);
    let now = now_ms();
    let mut b = taskbroker_client::batch::BatchBuilder::with_limits(
        0,
        0,
        now,
        taskbroker_client::batch::BatchLimits {
            batch_bytes_max: 32 << 20,
            task_bytes_max: 8 << 20,
            records_max: 10,
        },
    );
    b.push(taskbroker_client::batch::TaskRecord::new(
        big.into_bytes(),
        now,
    ))
    .expect("push");
    let r = lc
        .produce(
            ctx(),
            ProduceRequest {
                topic: "jobs".into(),
                partition: 0,
                batch: b.finish().into_bytes(),
            },
        )
        .await
        .expect("rpc");
    assert!(matches!(r, Err(ApiError::TooLarge { .. })), "{r:?}");

    // Invalid batch bytes.
    let r = lc
        .produce(
            ctx(),
            ProduceRequest {
                topic: "jobs".into(),
                partition: 0,
                batch: bytes::Bytes::from_static(&[7u8; 100]),
            },
        )
        .await
        .expect("rpc");
    assert!(matches!(r, Err(ApiError::InvalidBatch { .. })), "{r:?}");

    // Garbage on the client port: raw garbage, and a valid preamble followed by a garbage frame.
    for with_preamble in [false, true] {
        let mut s = std::net::TcpStream::connect(&cluster.node(1).listen).expect("connect");
        if with_preamble {
            s.write_all(&taskbroker_client::transport::Preamble::MAGIC)
                .expect("w");
            s.write_all(&[1, 1, 0, 0]).expect("w");
            s.write_all(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8])
                .expect("w");
        } else {
            s.write_all(b"GET / HTTP/1.1\r\n\r\ngarbage garbage")
                .expect("w");
        }
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("t");
        let mut buf = [0u8; 16];
        let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the node closes a garbage connection");
    }
    // ... and keeps serving.
    let m = metadata(&cluster.client(1).await).await;
    assert!(m.topics.iter().any(|t| t.name == "jobs"));
    let status = c1
        .cluster_status(ctx())
        .await
        .expect("rpc")
        .expect("status");
    assert_eq!(status.meta.nodes.len(), 3);
    assert!(cluster.log(1).contains("closing"));
    eprintln!(
        "cluster_topics_produce_and_bad_input: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_nack_dead_letters_and_delays() {
    let started = Instant::now();
    let cluster = Cluster::start(3);
    let c1 = cluster.client(1).await;
    create_topic(
        &c1,
        "q",
        TopicSpec {
            partitions: Some(1),
            replication_factor: Some(3),
            visibility_timeout_ms: Some(60_000),
            max_attempts: Some(2),
            ..Default::default()
        },
    )
    .await;
    let leader = leader_of(&cluster, "q", 0).await;
    produce_routed(
        &cluster,
        leader,
        "q",
        0,
        batch(0, 0, &["t1"], None),
        Duration::from_secs(20),
    )
    .await;
    let lc = cluster.client(leader).await;

    // Lease expiry redelivers; the first token is stale, the second acks.
    let f1 = fetch(&lc, "q", "g", 1, Some(500), 1000).await;
    assert_eq!(f1.leases.len(), 1);
    let first = f1.leases[0].token;
    assert!(fetch(&lc, "q", "g", 1, Some(500), 0)
        .await
        .leases
        .is_empty());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let f2 = fetch(&lc, "q", "g", 1, Some(5_000), 3000).await;
    assert_eq!(f2.leases.len(), 1, "redelivered after expiry");
    let second = f2.leases[0].token;
    assert_eq!(second.offset, first.offset);
    assert_eq!(second.attempt, 2);
    let r = settle(&lc, "q", "g", vec![(first, Settle::Ack)]).await;
    assert!(matches!(r[0], Err(ApiError::StaleLease { .. })), "{r:?}");
    let r = settle(&lc, "q", "g", vec![(second, Settle::Ack)]).await;
    assert!(r[0].is_ok(), "{r:?}");

    // Nack with a delay holds the task back.
    produce_routed(
        &cluster,
        leader,
        "q",
        0,
        batch(0, 0, &["t2"], None),
        Duration::from_secs(20),
    )
    .await;
    let f = fetch(&lc, "q", "g", 1, None, 2000).await;
    assert_eq!(payloads(&f)[0].1, "t2");
    let nack = Settle::Nack {
        retry_after_ms: Some(1500),
        reason: Some("boom".into()),
    };
    let t0 = Instant::now();
    assert!(settle(&lc, "q", "g", vec![(f.leases[0].token, nack)]).await[0].is_ok());
    assert!(fetch(&lc, "q", "g", 1, None, 500).await.leases.is_empty());
    // Attempt 2 of 2 after the delay; a nack now dead-letters it.
    let f = fetch(&lc, "q", "g", 1, None, 5000).await;
    assert!(t0.elapsed() >= Duration::from_millis(1400), "held back");
    assert_eq!(f.leases.len(), 1);
    assert_eq!(f.leases[0].token.attempt, 2);
    let nack = Settle::Nack {
        retry_after_ms: Some(0),
        reason: None,
    };
    assert!(settle(&lc, "q", "g", vec![(f.leases[0].token, nack)]).await[0].is_ok());
    let d = lc
        .describe_group(ctx(), "q".into(), "g".into())
        .await
        .expect("rpc")
        .expect("describe");
    assert_eq!(d.partitions[0].dead_letters, 1);
    assert!(fetch(&lc, "q", "g", 1, None, 300).await.leases.is_empty());
    // Requeue (asked on a follower: reaches the leader) brings it back.
    let follower = (1..=3).find(|n| *n != leader).expect("follower");
    let n = cluster
        .client(follower)
        .await
        .requeue_dead_letters(ctx(), "q".into(), "g".into())
        .await
        .expect("rpc")
        .expect("requeue");
    assert_eq!(n, 1);
    let f = fetch(&lc, "q", "g", 1, None, 2000).await;
    assert_eq!(payloads(&f)[0].1, "t2");
    assert!(settle(&lc, "q", "g", vec![(f.leases[0].token, Settle::Ack)]).await[0].is_ok());

    // Delayed tasks are not delivered early.
    let not_before = now_ms() + 2000;
    produce_routed(
        &cluster,
        leader,
        "q",
        0,
        batch(0, 0, &["later"], Some(not_before)),
        Duration::from_secs(20),
    )
    .await;
    assert!(fetch(&lc, "q", "g", 1, None, 800).await.leases.is_empty());
    let f = fetch(&lc, "q", "g", 1, None, 5000).await;
    assert!(now_ms() >= not_before, "delivered early");
    assert_eq!(payloads(&f)[0].1, "later");
    eprintln!(
        "lease_expiry_nack_dead_letters_and_delays: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_nothing_and_restart_catches_up() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3);
    let c1 = cluster.client(1).await;
    create_topic(&c1, "k", spec(1, 3)).await;
    drop(c1);
    let leader = leader_of(&cluster, "k", 0).await;
    let mut acked = Vec::new();
    for i in 0..20u64 {
        let payload = format!("before-{i}");
        let (r, _) = produce_routed(
            &cluster,
            leader,
            "k",
            0,
            batch(9, i, &[&payload], None),
            Duration::from_secs(20),
        )
        .await;
        acked.push((r.base_offset, payload));
    }
    cluster.kill(leader);
    let survivor = (1..=3).find(|n| *n != leader).expect("survivor");
    for i in 20..30u64 {
        let payload = format!("after-{i}");
        let (r, node) = produce_routed(
            &cluster,
            survivor,
            "k",
            0,
            batch(9, i, &[&payload], None),
            Duration::from_secs(30),
        )
        .await;
        assert_ne!(node, leader);
        acked.push((r.base_offset, payload));
    }
    // Every acknowledged task is delivered by the new leader.
    let mut seen = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < acked.len() && Instant::now() < deadline {
        let new_leader = leader_of(&cluster, "k", 0).await;
        if cluster.node(new_leader).child.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let l = cluster.client(new_leader).await;
        let r = l
            .fetch(
                ctx(),
                FetchRequest {
                    topic: "k".into(),
                    partition: 0,
                    group: "g".into(),
                    worker: "w".into(),
                    max_tasks: 100,
                    visibility_timeout_ms: None,
                    wait_ms: 500,
                },
            )
            .await;
        let f = match r {
            Ok(Ok(f)) => f,
            other => {
                eprintln!("fetch from {new_leader}: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for (o, p) in payloads(&f) {
            seen.insert(o, p);
        }
    }
    for (o, p) in &acked {
        assert_eq!(seen.get(o), Some(p), "acknowledged task at {o} lost");
    }
    // Restart: the old leader catches up (its replica reaches the leader's high watermark).
    cluster.spawn(leader);
    cluster.wait_ready(leader);
    eventually(
        Duration::from_secs(30),
        "the restarted replica to catch up",
        || async {
            let c = cluster.client(leader).await;
            let d = c
                .describe_partitions(ctx(), "k".into(), "g".into(), vec![0])
                .await
                .ok()?
                .ok()?;
            let hw = d.first()?.as_ref().ok()?.high_watermark;
            (hw == 30).then_some(())
        },
    )
    .await;
    eprintln!(
        "leader_kill_loses_nothing_and_restart_catches_up: {:?}",
        started.elapsed()
    );
}

#[test]
fn foreign_data_dir_is_refused_and_sigterm_exits_cleanly() {
    let started = Instant::now();
    let mut cluster = Cluster::start(1);
    let status = cluster.terminate(1).expect("exit status");
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    // The same data directory, started as a node of another cluster.
    let n = cluster.node(1);
    let other_peers = format!("1={},2=127.0.0.1:{}", n.listen, free_port());
    let out = std::process::Command::new(bin())
        .args(serve_args(1, &n.listen, &n.http, &n.data_dir, &other_peers))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another cluster"), "{err}");
    eprintln!(
        "foreign_data_dir_is_refused_and_sigterm_exits_cleanly: {:?}",
        started.elapsed()
    );
}
