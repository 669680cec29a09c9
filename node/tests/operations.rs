//! Operating a cluster of real processes on loopback: `cluster status` from any node, and
//! clean-up of a topic deleted while a node was down.

mod common;

use std::time::{Duration, Instant};

use common::*;
use taskbroker_client::proto::{BrokerApiClient, TopicSpec};

async fn create_topic(cluster: &Cluster, c: &BrokerApiClient, name: &str, partitions: u32) {
    eventually(Duration::from_secs(20), "registered nodes", || async {
        (metadata(c).await.nodes.len() >= 3).then_some(())
    })
    .await;
    let spec = TopicSpec {
        partitions: Some(partitions),
        replication_factor: Some(3),
        ..Default::default()
    };
    eventually(Duration::from_secs(20), "topic creation", || async {
        match c.create_topic(ctx(), name.into(), spec.clone()).await {
            Ok(Ok(_)) => Some(()),
            Ok(Err(e)) if e.is_retryable() => None,
            Ok(Err(e)) => panic!("create_topic: {e}"),
            Err(_) => None,
        }
    })
    .await;
    // Every node knows the topic before the test goes on.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_shows_every_lagging_replica_from_any_node() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3);
    let c1 = cluster.client(1).await;
    create_topic(&cluster, &c1, "lag", 3).await;
    // Registered HTTP addresses are the ones to dial (here: the loopback ones given).
    let meta = metadata(&c1).await;
    for n in &meta.nodes {
        assert_eq!(
            n.http_addr.as_deref(),
            Some(cluster.node(n.id).http.as_str()),
            "node {}",
            n.id
        );
    }

    // Node 3 goes down; 120 entries per partition leave it behind on every partition.
    cluster.kill(3);
    let writes = (0..3u32).map(|p| {
        let cluster = &cluster;
        async move {
            for i in 0..120u64 {
                produce_routed(
                    cluster,
                    1,
                    "lag",
                    p,
                    batch(0, i, &["x"], None),
                    Duration::from_secs(60),
                )
                .await;
            }
        }
    });
    futures::future::join_all(writes).await;

    // Both live nodes report node 3 lagging on all three partitions, including those the
    // answering node does not lead.
    for asked in [1u64, 2] {
        let c = cluster.client(asked).await;
        let lagging = eventually(Duration::from_secs(30), "lagging replicas", || async {
            let s = c.cluster_status(ctx()).await.ok()?.ok()?;
            let on_3: Vec<u32> = s
                .lagging_replicas
                .iter()
                .filter(|(t, _, n, lag)| t == "lag" && *n == 3 && *lag >= 100)
                .map(|(_, p, _, _)| *p)
                .collect();
            (on_3.len() == 3).then_some(s.lagging_replicas)
        })
        .await;
        let leaders: Vec<Option<u64>> = metadata(&c).await.topics[0]
            .partitions
            .iter()
            .map(|p| p.leader)
            .collect();
        eprintln!("node {asked}: leaders {leaders:?}, lagging {lagging:?}");
    }
    eprintln!(
        "cluster_status_shows_every_lagging_replica_from_any_node: {:?}",
        started.elapsed()
    );
}

/// Partition groups (not the metadata group) with files in their log directory on a node.
fn partition_groups_with_data(data_dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("groups")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.parse::<u64>().is_ok_and(|id| id != 0))
        .filter(|name| {
            std::fs::read_dir(data_dir.join("groups").join(name).join("log"))
                .is_ok_and(|mut d| d.next().is_some())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_while_a_node_was_down_leaves_its_disk_after_restart() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3);
    let c1 = cluster.client(1).await;
    create_topic(&cluster, &c1, "gone", 3).await;
    for p in 0..3 {
        produce_routed(
            &cluster,
            1,
            "gone",
            p,
            batch(0, 0, &["x"], None),
            Duration::from_secs(60),
        )
        .await;
    }
    let dir3 = cluster.node(3).data_dir.clone();
    eventually(
        Duration::from_secs(20),
        "node 3 holds the partitions",
        || async { (partition_groups_with_data(&dir3).len() == 3).then_some(()) },
    )
    .await;

    cluster.kill(3);
    eventually(Duration::from_secs(30), "topic deletion", || async {
        match c1.delete_topic(ctx(), "gone".into()).await {
            Ok(Ok(())) => Some(()),
            Ok(Err(e)) if e.is_retryable() => None,
            Ok(Err(e)) => panic!("delete_topic: {e}"),
            Err(_) => None,
        }
    })
    .await;
    // The live nodes delete their replicas at once.
    for id in [1, 2] {
        let dir = cluster.node(id).data_dir.clone();
        eventually(
            Duration::from_secs(20),
            "live nodes delete the data",
            || async { partition_groups_with_data(&dir).is_empty().then_some(()) },
        )
        .await;
    }
    assert_eq!(
        partition_groups_with_data(&dir3).len(),
        3,
        "node 3 was down"
    );

    // Node 3 learns the deletion from the metadata when it comes back and deletes its data.
    cluster.spawn(3);
    cluster.wait_ready(3);
    eventually(
        Duration::from_secs(30),
        "node 3 deletes the data",
        || async {
            // Replaying its metadata log from before the creation, the node may still see
            // the topic for a moment and open its groups (the reconciler then deletes them:
            // "partition group deleted"); from a metadata snapshot taken after the deletion
            // it never opens them and the disk sweep deletes them.
            let log = cluster.log(3);
            let logged = log
                .matches("deleted the data of a deleted topic's partition")
                .count()
                + log.matches("partition group deleted").count();
            (partition_groups_with_data(&dir3).is_empty() && logged == 3).then_some(())
        },
    )
    .await;
    eprintln!(
        "a_topic_deleted_while_a_node_was_down_leaves_its_disk_after_restart: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "open bug: under CI load (other tests beside it) failover away from a killed node has not finished within 90 s in 2 of 3 clean-clone runs; passes alone in 9-12 s; see the session-2 note"]
async fn leadership_returns_to_preferred_replicas_after_a_restart() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3);
    let c2 = cluster.client(2).await;
    create_topic(&cluster, &c2, "spread", 6).await;
    let preferred: Vec<u64> = metadata(&c2).await.topics[0]
        .partitions
        .iter()
        .map(|p| p.replicas[0])
        .collect();
    let on_1 = preferred.iter().filter(|n| **n == 1).count();
    assert!(
        on_1 >= 1,
        "placement spreads preferred leaders: {preferred:?}"
    );
    let leaders = |c: BrokerApiClient| async move {
        let m = c.metadata(ctx(), vec!["spread".into()]).await.ok()?.ok()?;
        Some(
            m.topics
                .first()?
                .partitions
                .iter()
                .map(|p| p.leader)
                .collect::<Vec<_>>(),
        )
    };
    // Node 1 dies: its partitions fail over to the others.
    cluster.kill(1);
    // Bounded generously: on 2 loaded cores (CI runs other tests beside this one) detecting a
    // dead leader of quiet groups and electing took longer than 30 s once.
    eventually(
        Duration::from_secs(90),
        "failover away from node 1",
        || async {
            let l = leaders(cluster.client(2).await).await?;
            l.iter().all(|l| l.is_some_and(|n| n != 1)).then_some(())
        },
    )
    .await;
    // Some writes while it is down, so it has to catch up.
    for p in 0..6 {
        produce_routed(
            &cluster,
            2,
            "spread",
            p,
            batch(0, 0, &["x", "y"], None),
            Duration::from_secs(60),
        )
        .await;
    }
    // Back up: within a bounded time every partition is led by its preferred replica again.
    cluster.spawn(1);
    cluster.wait_ready(1);
    let restarted = Instant::now();
    let want: Vec<Option<u64>> = preferred.iter().map(|p| Some(*p)).collect();
    eventually(
        Duration::from_secs(45),
        "leadership back on preferred replicas",
        || async {
            let l = leaders(cluster.client(2).await).await?;
            (l == want).then_some(())
        },
    )
    .await;
    eprintln!(
        "leadership back on the preferred replicas {:?} after the restart ({on_1} partitions to node 1); test {:?}",
        restarted.elapsed(),
        started.elapsed()
    );
}
