//! A worker with simulated work: `cargo run -p taskbroker-client --example worker`.
//!
//! Processes `demo` tasks 4 at a time with a 3 s visibility timeout; every tenth task takes
//! 7 s, longer than the lease, and is not redelivered because the worker extends its lease
//! automatically (every second) while it runs. Ctrl-C shuts down gracefully: tasks in flight
//! finish, prefetched ones are released.

use std::time::Duration;

use taskbroker_client::Client;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info,taskbroker_client=debug")
        .init();
    let brokers = std::env::var("TASKBROKER_BROKERS").unwrap_or_else(|_| "127.0.0.1:7070".into());
    let client = Client::connect(brokers.split(',')).await?;
    let worker = client
        .worker("demo", "example-workers")
        .concurrency(4)
        .visibility_timeout(Duration::from_secs(3))
        .shutdown_timeout(Duration::from_secs(10))
        .build()
        .await?;

    let stopper = worker.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stopper.shutdown().await;
    });

    worker
        .run(|task| async move {
            let slow = task.offset().is_multiple_of(10);
            let work = if slow {
                Duration::from_secs(7)
            } else {
                Duration::from_millis(50)
            };
            tracing::info!(
                partition = task.partition(),
                offset = task.offset(),
                attempt = task.attempt(),
                fencing_token = task.lease_token().fencing_token(),
                slow,
                "processing"
            );
            tokio::time::sleep(work).await; // the lease is extended meanwhile
            if task.payload().is_empty() {
                return Err("empty payload");
            }
            Ok(())
        })
        .await?;
    Ok(())
}
