//! The admin API views the web UI reads (`/api/v1/node`, `/nodes`, `/groups`, browsing by
//! offset range, producing a test task) against a real 3-node cluster, through every node:
//! with replication factor 1, two of three nodes host no replica of a partition and must
//! forward to the node that leads it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use taskbroker_client::proto::FetchRequest;

fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
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
    let json = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, serde_json::from_str(json).unwrap_or(Value::Null))
}

/// Retries `f` while it answers 503 (no leader yet), up to 30 s.
fn until_available(what: &str, mut f: impl FnMut() -> (u16, Value)) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, v) = f();
        if code != 503 && code != 504 {
            return (code, v);
        }
        assert!(Instant::now() < deadline, "{what}: still {code} {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_answer_for_the_whole_cluster_through_any_node() {
    let cluster = Cluster::start(3);
    let c = cluster.client(1).await;
    eventually(Duration::from_secs(20), "3 nodes with HTTP", || async {
        let m = metadata(&c).await;
        (m.nodes.iter().filter(|n| n.http_addr.is_some()).count() == 3).then_some(())
    })
    .await;
    let h1 = cluster.node(1).http.clone();
    let (code, v) = tokio::task::spawn_blocking(move || {
        until_available("create", || {
            http(
                &h1,
                "POST",
                "/api/v1/topics",
                Some(r#"{"name":"v","partitions":3,"replication_factor":1}"#),
            )
        })
    })
    .await
    .expect("join");
    assert_eq!(code, 201, "{v}");
    let placement: Vec<u64> = v["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["replicas"][0].as_u64().expect("replica"))
        .collect();
    let https: Vec<String> = cluster.nodes.iter().map(|n| n.http.clone()).collect();
    let leader = placement[0];

    tokio::task::spawn_blocking(move || {
        // Produce one task to every partition through every node (mostly forwarded).
        for (i, h) in https.iter().enumerate() {
            for p in 0..3u32 {
                let body = json!({
                    "partition": p,
                    "key": format!("k{i}"),
                    "payload": format!("from node {} to {p}", i + 1),
                    "headers": {"via": (i + 1).to_string()},
                })
                .to_string();
                let (code, v) = until_available("produce", || {
                    http(h, "POST", "/api/v1/topics/v/tasks", Some(&body))
                });
                assert_eq!(code, 201, "produce via node {}: {v}", i + 1);
                assert_eq!(v["partition"], json!(p));
            }
        }
        // Browse every partition through every node: the same three tasks, in offset order,
        // answered by the partition's only replica.
        for (i, h) in https.iter().enumerate() {
            for p in 0..3u32 {
                let (code, v) = until_available("browse", || {
                    http(
                        h,
                        "GET",
                        &format!("/api/v1/topics/v/partitions/{p}/tasks?from=0&limit=10"),
                        None,
                    )
                });
                assert_eq!(code, 200, "browse via node {}: {v}", i + 1);
                assert_eq!(v["node"], json!(placement[p as usize]), "{v}");
                let tasks = v["tasks"].as_array().expect("tasks");
                assert_eq!(tasks.len(), 3, "{v}");
                for (k, t) in tasks.iter().enumerate() {
                    assert_eq!(t["offset"], json!(k));
                    let payload = t["payload_hex"].as_str().expect("hex");
                    let bytes: Vec<u8> = (0..payload.len())
                        .step_by(2)
                        .map(|j| u8::from_str_radix(&payload[j..j + 2], 16).expect("hex"))
                        .collect();
                    assert_eq!(
                        String::from_utf8(bytes).expect("utf8"),
                        format!("from node {} to {p}", k + 1)
                    );
                    assert_eq!(t["key"], json!(format!("k{k}")));
                    assert_eq!(t["headers"], json!([["via", (k + 1).to_string()]]));
                }
                // An offset range: from 1, at most 1.
                let (_, v) = http(
                    h,
                    "GET",
                    &format!("/api/v1/topics/v/partitions/{p}/tasks?from=1&limit=1"),
                    None,
                );
                assert_eq!(v["tasks"].as_array().map(Vec::len), Some(1), "{v}");
                assert_eq!(v["tasks"][0]["offset"], json!(1));
                assert_eq!(v["high_watermark"], json!(3));
            }
        }
        // Bad input is a typed error in the usual shape.
        let (code, v) = http(
            &https[0],
            "GET",
            "/api/v1/topics/v/partitions/9/tasks",
            None,
        );
        assert_eq!(
            (code, v["error"]["kind"].as_str()),
            (404, Some("unknown_partition")),
            "{v}"
        );
        let (code, v) = http(
            &https[0],
            "GET",
            "/api/v1/topics/v/partitions/0/tasks?from=x",
            None,
        );
        assert_eq!(
            (code, v["error"]["kind"].as_str()),
            (400, Some("invalid_argument")),
            "{v}"
        );
        let (code, v) = http(
            &https[1],
            "POST",
            "/api/v1/topics/nope/tasks",
            Some(r#"{"payload":"x"}"#),
        );
        assert_eq!(
            (code, v["error"]["kind"].as_str()),
            (404, Some("unknown_topic")),
            "{v}"
        );
        let (code, v) = http(
            &https[1],
            "POST",
            "/api/v1/topics/v/tasks",
            Some(r#"{"nopayload":1}"#),
        );
        assert_eq!(code, 400, "{v}");

        // Every node reports every node up, with the partitions each leads.
        for h in &https {
            let (code, v) = http(h, "GET", "/api/v1/nodes", None);
            assert_eq!(code, 200, "{v}");
            let nodes = v.as_array().expect("nodes");
            assert_eq!(nodes.len(), 3);
            let led: u64 = nodes
                .iter()
                .map(|n| {
                    assert_eq!(n["up"], json!(true), "{n}");
                    n["status"]["partitions_led"].as_u64().expect("led")
                })
                .sum();
            assert_eq!(led, 3, "{v}");
            let controllers = nodes
                .iter()
                .filter(|n| n["status"]["metadata_leader"] == json!(true))
                .count();
            assert_eq!(controllers, 1, "{v}");
        }
    })
    .await
    .expect("views");

    // A group appears in /groups and in the leader's node status with its lease holder.
    let lc = cluster.client(leader).await;
    let leased = lc
        .fetch(
            ctx(),
            FetchRequest {
                topic: "v".into(),
                partition: 0,
                group: "g".into(),
                worker: "w-1".into(),
                max_tasks: 2,
                visibility_timeout_ms: Some(60_000),
                wait_ms: 1_000,
            },
        )
        .await
        .expect("rpc")
        .expect("fetch");
    assert_eq!(leased.leases.len(), 2);
    let h = cluster.node(1).http.clone();
    let lh = cluster.node(leader).http.clone();
    tokio::task::spawn_blocking(move || {
        let (_, v) = http(&h, "GET", "/api/v1/groups", None);
        assert_eq!(v, json!([{"topic": "v", "group": "g", "mode": "Queue"}]));
        let (_, v) = http(&lh, "GET", "/api/v1/node", None);
        let p0 = v["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .find(|p| p["topic"] == json!("v") && p["partition"] == json!(0))
            .expect("partition 0 on its leader")
            .clone();
        assert_eq!(p0["is_leader"], json!(true));
        assert_eq!(p0["high_watermark"], json!(3));
        let g = &p0["groups"][0];
        assert_eq!(
            (g["ready"].clone(), g["in_flight"].clone()),
            (json!(1), json!(2)),
            "{g}"
        );
        assert_eq!(g["workers"], json!(["w-1"]));
        // The browse view shows each task's state in the group.
        let (_, v) = http(&h, "GET", "/api/v1/topics/v/partitions/0/tasks", None);
        let states: Vec<&str> = v["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(|t| t["groups"][0]["state"].as_str().expect("state"))
            .collect();
        assert_eq!(states, ["leased", "leased", "ready"], "{v}");
    })
    .await
    .expect("groups");
}
