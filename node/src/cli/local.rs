//! `taskbroker local --nodes N`: a loopback cluster of child processes in one command.

use std::process::Stdio;
use std::time::Duration;

use super::LocalArgs;

/// Errors of `taskbroker local`.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Bad arguments.
    #[error("{0}")]
    Args(String),
    /// A child could not be started.
    #[error("cannot start node {node}: {source}")]
    Spawn {
        /// Node id.
        node: u32,
        /// Why.
        source: std::io::Error,
    },
}

/// Starts the nodes, prints their addresses, waits for Ctrl-C (or a child's exit), stops all.
pub async fn run(args: LocalArgs) -> Result<(), LocalError> {
    if args.nodes == 0 || args.nodes > 9 {
        return Err(LocalError::Args("--nodes must be between 1 and 9".into()));
    }
    let exe = std::env::current_exe().map_err(|e| LocalError::Args(e.to_string()))?;
    let port = |base: u16, i: u32| base as u32 + i - 1;
    let peers: Vec<String> = (1..=args.nodes)
        .map(|i| format!("{i}=127.0.0.1:{}", port(args.base_port, i)))
        .collect();
    let peers = peers.join(",");
    let mut children = Vec::new();
    for i in 1..=args.nodes {
        let listen = format!("127.0.0.1:{}", port(args.base_port, i));
        let http = format!("127.0.0.1:{}", port(args.base_http_port, i));
        let dir = args.data_dir.join(format!("node-{i}"));
        let child = tokio::process::Command::new(&exe)
            .arg("serve")
            .args([
                "--node-id",
                &i.to_string(),
                "--listen",
                &listen,
                "--http",
                &http,
            ])
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "--peers",
                &peers,
                "--storage-backend",
                &args.storage_backend,
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LocalError::Spawn { node: i, source })?;
        println!(
            "node {i}: client {listen}  http http://{http}  data {}",
            dir.display()
        );
        children.push(child);
    }
    println!(
        "taskbroker: {} nodes running; web UI and metrics at http://127.0.0.1:{}/ ; brokers {}",
        args.nodes,
        args.base_http_port,
        (1..=args.nodes)
            .map(|i| format!("127.0.0.1:{}", port(args.base_port, i)))
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("Ctrl-C stops the cluster.");
    let mut exited = Box::pin(async {
        // Poll the children so one that dies is noticed.
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for (i, c) in children.iter_mut().enumerate() {
                if let Ok(Some(status)) = c.try_wait() {
                    return (i + 1, status);
                }
            }
        }
    });
    tokio::select! {
        biased;
        _ = crate::cli::shutdown_signal() => println!("stopping the cluster"),
        (i, status) = &mut exited => eprintln!("node {i} exited ({status}); stopping the cluster"),
    }
    drop(exited);
    for c in children.iter_mut() {
        if let Some(pid) = c.id() {
            // SIGTERM lets each node hand off leadership and flush.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }
    for c in children.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }
    Ok(())
}
