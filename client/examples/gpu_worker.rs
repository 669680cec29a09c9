//! A GPU-style worker: one task at a time, no prefetch, long leases kept alive by a
//! heartbeat. `cargo run -p taskbroker-client --example gpu_worker`.
//!
//! Automatic extension is on (every third of the 5-minute visibility timeout); the example also
//! extends explicitly after each "epoch" of the job, the pattern for jobs that report progress.

use std::time::Duration;

use taskbroker_client::{Client, Error};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let brokers = std::env::var("TASKBROKER_BROKERS").unwrap_or_else(|_| "127.0.0.1:7070".into());
    let client = Client::builder()
        .seeds(brokers.split(','))
        .client_id("gpu-0")
        .connect()
        .await?;
    let lease = Duration::from_secs(300);
    let worker = client
        .worker("demo", "gpu")
        .concurrency(1)
        .prefetch(0) // do not hold tasks another GPU could start on
        .visibility_timeout(lease)
        .wait(Duration::from_secs(5))
        .build()
        .await?;

    while let Some(task) = worker.next().await? {
        tracing::info!(
            offset = task.offset(),
            attempt = task.attempt(),
            "job started"
        );
        let mut failed = false;
        for epoch in 0..3 {
            tokio::time::sleep(Duration::from_secs(2)).await; // "train" one epoch
            match task.extend(lease).await {
                Ok(()) => tracing::info!(epoch, "heartbeat: lease extended"),
                Err(Error::StaleLease { .. }) => {
                    tracing::warn!("lease lost; abandoning the job (it was redelivered)");
                    failed = true;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed; retrying next epoch"),
            }
        }
        if failed {
            continue; // dropping the task is fine: its lease is already gone
        }
        match task.ack().await {
            Ok(()) => tracing::info!("job done"),
            Err(e) => tracing::warn!(error = %e, "ack failed"),
        }
    }
    Ok(())
}
