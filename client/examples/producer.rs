//! Produces tasks: `TASKBROKER_BROKERS=127.0.0.1:7070 cargo run -p taskbroker-client --example producer`.
//!
//! Creates the topic `demo` if needed, sends 1,000 tasks pipelined (batched per partition),
//! some keyed, some delayed, then flushes.

use std::time::Duration;

use taskbroker_client::{Client, Task, TopicSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let brokers = std::env::var("TASKBROKER_BROKERS").unwrap_or_else(|_| "127.0.0.1:7070".into());
    let client = Client::connect(brokers.split(',')).await?;
    client
        .admin()
        .create_topic(
            "demo",
            TopicSpec {
                partitions: Some(4),
                ..TopicSpec::default()
            },
        )
        .await?;

    let producer = client.producer().linger(Duration::from_millis(5)).build();
    let mut deliveries = Vec::new();
    for i in 0..1_000u32 {
        let mut task = Task::new(format!("job {i}")).header("source", "example");
        if i.is_multiple_of(10) {
            task = task.key(format!("user-{}", i % 7)); // same user, same partition
        }
        if i.is_multiple_of(100) {
            task = task.delay(Duration::from_secs(5)); // delivered 5 s later
        }
        deliveries.push(producer.enqueue("demo", task).await?);
    }
    producer.flush().await?;
    let mut per_partition = std::collections::BTreeMap::new();
    for d in deliveries {
        let at = d.await?;
        *per_partition.entry(at.partition).or_insert(0u32) += 1;
    }
    println!("produced 1000 tasks: {per_partition:?} per partition");
    Ok(())
}
