//! The `taskbroker` binary's client commands and the HTTP admin API against a real 3-node
//! cluster: topics, produce/consume, work (ack and nack), group describe, cluster status,
//! errors and exit codes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use taskbroker_client::{ClusterStatus, GroupDescription, TopicMeta};

/// Bound on one CLI invocation.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

fn brokers(c: &Cluster) -> String {
    c.nodes
        .iter()
        .map(|n| n.listen.clone())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `taskbroker ARGS` with `stdin`, bounded by [`CLI_TIMEOUT`].
fn cli(c: &Cluster, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .env("TASKBROKER_BROKERS", brokers(c))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn taskbroker");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let deadline = Instant::now() + CLI_TIMEOUT;
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("taskbroker {args:?} did not finish in {CLI_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().expect("writer");
    child.wait_with_output().expect("output")
}

fn ok(c: &Cluster, args: &[&str], stdin: &str) -> String {
    let out = cli(c, args, stdin);
    assert!(
        out.status.success(),
        "taskbroker {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn json<T: serde::de::DeserializeOwned>(c: &Cluster, args: &[&str]) -> T {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    let out = ok(c, &a, "");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn group(c: &Cluster, topic: &str, g: &str) -> GroupDescription {
    json(c, &["group", "describe", topic, g])
}

#[test]
fn cli_drives_topics_tasks_workers_and_status() {
    let cluster = Cluster::start(3);

    // Topics: create (retried while nodes register), list, describe, text and JSON.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cli(
            &cluster,
            &[
                "topic",
                "create",
                "jobs",
                "--partitions",
                "3",
                "--replication",
                "3",
                "--visibility-timeout",
                "30s",
                "--max-attempts",
                "10",
            ],
            "",
        );
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("created topic jobs"));
            break;
        }
        assert!(Instant::now() < deadline, "topic create: {out:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let created: TopicMeta = json(
        &cluster,
        &[
            "topic",
            "create",
            "scratch",
            "--partitions",
            "2",
            "--retention",
            "1h",
        ],
    );
    assert_eq!(created.partitions.len(), 2);
    assert_eq!(created.retention_ms, Some(3_600_000));
    let listed = ok(&cluster, &["topic", "list"], "");
    assert!(
        listed.contains("jobs") && listed.contains("scratch"),
        "{listed}"
    );
    let topics: Vec<TopicMeta> = json(&cluster, &["topic", "list"]);
    assert_eq!(topics.len(), 2);
    let jobs: TopicMeta = json(&cluster, &["topic", "describe", "jobs"]);
    assert_eq!(jobs.partitions.len(), 3);
    assert_eq!(jobs.replication_factor, 3);
    assert_eq!(jobs.visibility_timeout_ms, 30_000);
    assert_eq!(jobs.max_attempts, 10);
    assert!(jobs.partitions.iter().all(|p| p.replicas.len() == 3));
    let text = ok(&cluster, &["topic", "describe", "jobs"], "");
    assert!(text.contains("visibility timeout: 30s"), "{text}");
    let added: TopicMeta = json(
        &cluster,
        &["topic", "add-partitions", "scratch", "--count", "2"],
    );
    assert_eq!(added.partitions.len(), 4);
    ok(&cluster, &["topic", "delete", "scratch"], "");
    let topics: Vec<TopicMeta> = json(&cluster, &["topic", "list"]);
    assert_eq!(
        topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["jobs"]
    );

    // Produce from stdin, consume exactly those payloads with --count N --ack.
    let payloads: Vec<String> = (0..20).map(|i| format!("job-{i}")).collect();
    let out = ok(
        &cluster,
        &["produce", "jobs"],
        &(payloads.join("\n") + "\n"),
    );
    assert_eq!(out.trim(), "produced 20 tasks to jobs");
    let out = ok(
        &cluster,
        &[
            "consume", "jobs", "--group", "printer", "--count", "20", "--ack",
        ],
        "",
    );
    let mut got: Vec<&str> = out.lines().collect();
    got.sort();
    let mut want: Vec<&str> = payloads.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(got, want);
    let g = group(&cluster, "jobs", "printer");
    assert!(g
        .partitions
        .iter()
        .all(|p| p.ready == 0 && p.in_flight == 0));
    assert_eq!(g.partitions.iter().map(|p| p.acked_total).sum::<u64>(), 20);

    // work --exec: a command that succeeds acks; one that fails nacks (redelivered, attempt
    // grows).
    let dir = tempfile::tempdir().expect("tempdir");
    let done = dir.path().join("done.txt");
    let attempts = dir.path().join("attempts.txt");
    let produced: serde_json::Value = {
        let out = ok(
            &cluster,
            &["produce", "jobs", "--output", "json"],
            "w1\nw2\nw3\nw4\nw5\n",
        );
        serde_json::from_str(&out).expect("json")
    };
    assert_eq!(produced["produced"], 5);
    // One write per task (concurrent commands append whole lines).
    let exec = format!("echo \"$(cat)\" >> {}", done.display());
    let mut worker = Command::new(bin())
        .args([
            "work",
            "jobs",
            "--group",
            "workers",
            "--concurrency",
            "2",
            "--exec",
            &exec,
        ])
        .env("TASKBROKER_BROKERS", brokers(&cluster))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn work");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = std::fs::read_to_string(&done).unwrap_or_default();
        if lines.lines().count() >= 5 {
            let mut l: Vec<&str> = lines.lines().collect();
            l.sort();
            assert_eq!(l, ["w1", "w2", "w3", "w4", "w5"]);
            break;
        }
        assert!(Instant::now() < deadline, "work processed only {lines:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = terminate(&mut worker);
    assert!(status.success(), "work exit status {status}");
    let g = eventually_sync(Duration::from_secs(10), || {
        let g = group(&cluster, "jobs", "workers");
        g.partitions
            .iter()
            .all(|p| p.ready == 0 && p.in_flight == 0)
            .then_some(g)
    });
    assert_eq!(g.partitions.iter().map(|p| p.acked_total).sum::<u64>(), 5);

    ok(&cluster, &["produce", "jobs", "--key", "k"], "doomed\n");
    let exec = format!("echo $TASKBROKER_ATTEMPT >> {}; exit 1", attempts.display());
    let mut failing = Command::new(bin())
        .args([
            "work",
            "jobs",
            "--group",
            "failing",
            "--exec",
            &exec,
            "--retry-delay",
            "100ms",
        ])
        .env("TASKBROKER_BROKERS", brokers(&cluster))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn work");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = std::fs::read_to_string(&attempts).unwrap_or_default();
        let nums: Vec<u32> = seen.lines().filter_map(|l| l.trim().parse().ok()).collect();
        // The group "failing" sees "doomed" (and the retained tasks before it): the doomed task
        // is redelivered with a growing attempt.
        if nums.iter().any(|a| *a >= 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no redelivery with a growing attempt: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(terminate(&mut failing).success());

    // Cluster status lists 3 nodes and a metadata leader.
    let status: ClusterStatus = json(&cluster, &["cluster", "status"]);
    assert_eq!(status.meta.nodes.len(), 3);
    assert!(status.meta.controller.is_some());
    let text = ok(&cluster, &["cluster", "status"], "");
    assert!(text.contains("metadata leader"), "{text}");

    // Errors: one clear line, exit 1; usage errors exit 2.
    let out = cli(&cluster, &["topic", "describe", "nope"], "");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), "taskbroker: error: unknown topic \"nope\"");
    let out = cli(&cluster, &["produce", "nope"], "x\n");
    assert_eq!(out.status.code(), Some(1));
    let out = cli(&cluster, &["group", "describe", "jobs", "never-used"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown group"));
    let out = cli(&cluster, &["topic", "create"], "");
    assert_eq!(out.status.code(), Some(2));
    let out = cli(
        &cluster,
        &["topic", "create", "x", "--visibility-timeout", "3 days"],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    let long = "x".repeat(2 << 20);
    let out = cli(&cluster, &["produce", "jobs"], &format!("ok\n{long}\n"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("size limit"),
        "{err}"
    );
    let out = Command::new(bin())
        .args(["topic", "list", "--brokers", "127.0.0.1:1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("taskbroker: error: "));
}

/// SIGTERM, then the exit status (bounded).
fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker did not stop after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn eventually_sync<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One HTTP/1.0 request: (status code, body).
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {out:?}"));
    let json = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (
        code,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn http_admin_api_creates_lists_describes_and_reports_errors() {
    let cluster = Cluster::start(3);
    // Node 2 answers, whoever leads the metadata group (writes are forwarded).
    let h = cluster.node(2).http.clone();
    let body =
        r#"{"name":"web","partitions":4,"replication_factor":3,"visibility_timeout_ms":5000}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    let created = loop {
        let (code, v) = http(&h, "POST", "/api/v1/topics", Some(body));
        if code == 201 {
            break v;
        }
        assert_eq!(code, 503, "{v}");
        assert!(Instant::now() < deadline, "create over HTTP: {v}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let t: TopicMeta = serde_json::from_value(created).expect("topic");
    assert_eq!(t.partitions.len(), 4);
    assert_eq!(t.visibility_timeout_ms, 5000);

    // A describe by name through any node finds the topic at once (a node whose replica is
    // behind asks the metadata leader); a list is served from each node's own replica and shows
    // the topic once that replica has applied the create.
    let (code, v) = http(&cluster.node(3).http, "GET", "/api/v1/topics/web", None);
    assert_eq!(code, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, v) = http(&cluster.node(3).http, "GET", "/api/v1/topics", None);
        assert_eq!(code, 200);
        let list: Vec<TopicMeta> = serde_json::from_value(v).expect("list");
        if list.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 never listed the topic");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, v) = http(&h, "GET", "/api/v1/topics/web", None);
    assert_eq!(code, 200);
    assert_eq!(v["name"], "web");
    // The same shape as the CLI's --output json.
    let cli_view: TopicMeta = json(&cluster, &["topic", "describe", "web"]);
    assert_eq!(cli_view.name, "web");
    assert_eq!(cli_view.partitions.len(), 4);

    let (code, v) = http(
        &h,
        "POST",
        "/api/v1/topics/web/partitions",
        Some(r#"{"count":2}"#),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["partitions"].as_array().map(Vec::len), Some(6));

    let (code, v) = http(&h, "GET", "/api/v1/cluster", None);
    assert_eq!(code, 200);
    let s: ClusterStatus = serde_json::from_value(v).expect("status");
    assert_eq!(s.meta.nodes.len(), 3);

    // A group exists once used.
    ok(&cluster, &["produce", "web"], "a\nb\n");
    ok(
        &cluster,
        &["consume", "web", "--group", "g", "--count", "2", "--ack"],
        "",
    );
    let (code, v) = http(&h, "GET", "/api/v1/topics/web/groups/g", None);
    assert_eq!(code, 200, "{v}");
    let g: GroupDescription = serde_json::from_value(v).expect("group");
    assert_eq!(g.partitions.iter().map(|p| p.acked_total).sum::<u64>(), 2);
    let (code, v) = http(&h, "POST", "/api/v1/topics/web/groups/g/requeue", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["requeued"], 0);

    // Errors: JSON with a kind and a fitting status.
    let (code, v) = http(&h, "GET", "/api/v1/topics/nope", None);
    assert_eq!(
        (code, v["error"]["kind"].as_str()),
        (404, Some("unknown_topic"))
    );
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("nope")));
    let (code, v) = http(&h, "GET", "/api/v1/topics/web/groups/none", None);
    assert_eq!(
        (code, v["error"]["kind"].as_str()),
        (404, Some("unknown_group"))
    );
    let conflict = r#"{"name":"web","partitions":9}"#;
    let (code, v) = http(&h, "POST", "/api/v1/topics", Some(conflict));
    assert_eq!(
        (code, v["error"]["kind"].as_str()),
        (409, Some("topic_conflict"))
    );
    let (code, v) = http(&h, "POST", "/api/v1/topics", Some("{not json"));
    assert_eq!(
        (code, v["error"]["kind"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (code, v) = http(
        &h,
        "POST",
        "/api/v1/topics/web/partitions",
        Some(r#"{"count":0}"#),
    );
    assert_eq!(
        (code, v["error"]["kind"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (code, _) = http(&h, "GET", "/api/v1/nothing", None);
    assert_eq!(code, 404);

    let (code, v) = http(&h, "DELETE", "/api/v1/topics/web", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["deleted"], true);
    let (code, _) = http(&h, "DELETE", "/api/v1/topics/web", None);
    assert_eq!(code, 404);
}
