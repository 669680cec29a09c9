//! `taskbroker bench` against a real 1-node cluster: a small produce and e2e run complete, the
//! JSON report adds up, and the CPU of the server process is sampled (by pid).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, Cluster};

/// Bound on one bench invocation.
const BENCH_TIMEOUT: Duration = Duration::from_secs(60);

fn bench(c: &Cluster, args: &[&str]) -> serde_json::Value {
    let pid = c.nodes[0].child.as_ref().expect("running").id().to_string();
    let mut child = Command::new(bin())
        .arg("bench")
        .args(["--brokers", &c.nodes[0].listen, "--output", "json"])
        .args(args)
        .args(["--pids", &pid, "--replication", "1", "--partitions", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn taskbroker bench");
    let deadline = Instant::now() + BENCH_TIMEOUT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("taskbroker bench {args:?} did not finish in {BENCH_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

#[test]
fn bench_produce_and_e2e_report_throughput_latency_and_cpu() {
    let cluster = Cluster::start(1);

    let r = bench(
        &cluster,
        &[
            "produce",
            "--tasks",
            "300",
            "--size",
            "256",
            "--producers",
            "2",
        ],
    );
    assert_eq!(r["workload"], "produce");
    assert_eq!(r["tasks"], 300);
    assert_eq!(r["errors"], 0);
    assert!(r["tasks_per_s"].as_f64().expect("rate") > 0.0);
    let lat = &r["latency"];
    assert_eq!(lat["count"], 300);
    let (p50, p99, max) = (
        lat["p50_us"].as_u64().expect("p50"),
        lat["p99_us"].as_u64().expect("p99"),
        lat["max_us"].as_u64().expect("max"),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{lat}");
    let cpu = &r["cpu"];
    assert_eq!(cpu["server_processes"], 1, "{cpu}");
    assert!(cpu["server_us"].as_u64().expect("server cpu") > 0, "{cpu}");

    let r = bench(
        &cluster,
        &[
            "e2e",
            "--tasks",
            "200",
            "--size",
            "64",
            "--rate",
            "400",
            "--workers",
            "2",
        ],
    );
    assert_eq!(r["workload"], "e2e");
    assert_eq!(r["tasks"], 200);
    assert_eq!(r["rate"], 400.0);
    assert_eq!(r["latency"]["count"], 200);
    assert_eq!(r["produce_latency"]["count"], 200);
    // 200 tasks at 400/s take at least half a second.
    assert!(r["elapsed_s"].as_f64().expect("elapsed") >= 0.45, "{r}");
}
