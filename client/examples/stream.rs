//! Reads `demo` in order with a stream group and commits offsets every 100 records:
//! `cargo run -p taskbroker-client --example stream`.

use std::time::Duration;

use taskbroker_client::Client;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let brokers = std::env::var("TASKBROKER_BROKERS").unwrap_or_else(|_| "127.0.0.1:7070".into());
    let client = Client::connect(brokers.split(',')).await?;
    let mut consumer = client
        .stream_consumer("demo", "example-stream")
        .wait(Duration::from_millis(500))
        .build()
        .await?;
    println!("starting at {:?}", consumer.positions());
    let mut seen = 0u64;
    loop {
        let record = tokio::select! {
            r = consumer.next() => r?,
            _ = tokio::signal::ctrl_c() => break,
        };
        seen += 1;
        println!(
            "{}:{} {}",
            record.partition,
            record.offset,
            String::from_utf8_lossy(&record.payload)
        );
        if seen.is_multiple_of(100) {
            consumer.commit().await?;
        }
    }
    consumer.commit().await?;
    println!("committed {:?}", consumer.positions());
    Ok(())
}
