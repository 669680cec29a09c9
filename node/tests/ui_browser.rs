//! The web UI in a real browser: headless Chromium, driven over the DevTools protocol, loads
//! the UI of a running 3-node cluster (real processes on loopback) through a node that is not
//! the metadata leader, creates a topic through the form, produces a task through the form,
//! finds it in the browse view, and saves a screenshot of every page.
//!
//! Screenshots go to `$TASKBROKER_UI_ARTIFACTS` (default `<target>/ui-artifacts`). Chromium
//! comes from `scripts/ensure-chromium.sh` (run by `make test`); without it the test fails,
//! unless `TASKBROKER_SKIP_BROWSER=1` asks to skip it.

#[path = "common/cdp.rs"]
mod cdp;
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use taskbroker_client::proto::FetchRequest;

fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("TASKBROKER_UI_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .map(|p| p.join("ui-artifacts"))
                .unwrap_or_else(|| PathBuf::from("target/ui-artifacts"))
        });
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

fn save(page: &mut cdp::Page, dir: &std::path::Path, name: &str) {
    let png = page.screenshot();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000,
        "{name}: not a real screenshot ({} bytes)",
        png.len()
    );
    let path = dir.join(name);
    std::fs::write(&path, &png).expect("write screenshot");
    eprintln!("screenshot {} ({} bytes)", path.display(), png.len());
}

fn text(page: &mut cdp::Page) -> String {
    page.eval("document.body.innerText")
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_ui_in_headless_chromium() {
    let Some(chromium) = cdp::chromium_binary() else {
        if std::env::var("TASKBROKER_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!(
                "SKIP web_ui_in_headless_chromium: TASKBROKER_SKIP_BROWSER=1 and no chromium"
            );
            return;
        }
        panic!(
            "chromium is not installed: run scripts/ensure-chromium.sh (make test does), \
             or set TASKBROKER_SKIP_BROWSER=1 to skip this test explicitly"
        );
    };
    let started = Instant::now();
    let cluster = Cluster::start(3);
    let c = cluster.client(1).await;
    let controller = eventually(
        Duration::from_secs(20),
        "3 nodes and a controller",
        || async {
            let m = metadata(&c).await;
            let all_http = m.nodes.iter().filter(|n| n.http_addr.is_some()).count();
            (m.nodes.len() == 3 && all_http == 3).then_some(m.controller?)
        },
    )
    .await;
    // Serve the UI from a node that does not lead the metadata group: every write and
    // every remote read must be forwarded.
    let via = (1..=3).find(|n| *n != controller).expect("a non-leader");
    let base = format!("http://{}", cluster.node(via).http);
    let dir = artifacts_dir();
    let profile = tempfile::tempdir().expect("profile dir");
    let browser_dir = profile.path().to_path_buf();

    let base2 = base.clone();
    let dir2 = dir.clone();
    // The browser is driven with blocking I/O on a blocking thread.
    let (browser, mut page) = tokio::task::spawn_blocking(move || {
        let browser = cdp::Browser::start(&chromium, &browser_dir);
        let mut page = browser.page();
        page.call("Page.enable", json!({}));
        page.call("Runtime.enable", json!({}));

        // Overview: three nodes up, one metadata leader.
        page.goto(&format!("{base2}/ui"));
        page.wait_for(
            "document.querySelectorAll('table tbody tr .pill.ok').length >= 3",
            "three nodes up",
        );
        let t = text(&mut page);
        assert!(
            t.contains("Cluster overview") && t.contains("metadata leader"),
            "{t}"
        );
        assert!(t.contains(&format!("served by node {via}")), "{t}");
        page.wait_for(
            "document.querySelector('[data-live-status]').textContent === 'live'",
            "live chart polling",
        );
        save(&mut page, &dir2, "01-overview.png");

        // Create a topic through the form (with several settings).
        page.goto(&format!("{base2}/ui/topics"));
        save(&mut page, &dir2, "02-topics-empty.png");
        page.type_into("#create-topic input[name=name]", "uitest");
        page.type_into("#create-topic input[name=partitions]", "3");
        page.type_into("#create-topic input[name=replication_factor]", "3");
        page.type_into("#create-topic input[name=visibility_timeout_ms]", "15000");
        page.type_into("#create-topic input[name=max_attempts]", "4");
        page.click("#create-topic button[type=submit]");
        page.wait_for(
            "location.pathname === '/ui/topics/uitest' && document.readyState === 'complete'",
            "the new topic's page",
        );
        let t = text(&mut page);
        assert!(t.contains("topic uitest created"), "{t}");
        assert!(t.contains("15 s") && t.contains("Max attempts"), "{t}");
        page.wait_for(
            "document.querySelectorAll('#partitions tbody tr').length === 3",
            "three partitions",
        );
        // Partition leaders are elected shortly after creation; reload until all three show.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leaders =
                page.eval("document.querySelectorAll('#partitions tbody tr .pill.ok').length");
            if leaders.as_u64().unwrap_or(0) >= 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "partition leaders not shown: {}",
                text(&mut page)
            );
            std::thread::sleep(Duration::from_millis(300));
            page.goto(&format!("{base2}/ui/topics/uitest"));
        }
        save(&mut page, &dir2, "03-topic-detail.png");

        // Produce a task through the browse page's form, on partition 1.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            page.goto(&format!("{base2}/ui/topics/uitest/browse?partition=1"));
            page.select("#produce-form select[name=partition]", "1");
            page.type_into("#produce-form input[name=key]", "user-7");
            page.type_into(
                "#produce-form textarea[name=payload]",
                r#"{"job":"resize","image":"img-42.png"}"#,
            );
            page.type_into("#produce-form textarea[name=headers]", "trace-id=abc123");
            page.click("#produce-form button[type=submit]");
            page.wait_for(
                "document.readyState === 'complete' && document.querySelector('.flash')",
                "the produce answer",
            );
            let t = text(&mut page);
            if t.contains("produced task at partition 1") {
                break;
            }
            assert!(Instant::now() < deadline, "produce kept failing: {t}");
            std::thread::sleep(Duration::from_millis(500));
        }
        // The redirect shows the browse view from the new task's offset: find it there.
        page.wait_for(
            "document.querySelectorAll('#tasks tbody tr[data-offset]').length >= 1",
            "the produced task in the browse view",
        );
        let t = text(&mut page);
        assert!(t.contains("img-42.png") && t.contains("user-7"), "{t}");
        assert!(t.contains("trace-id=abc123"), "{t}");
        // Pretty JSON view.
        page.select("#browse-form select[name=view]", "json");
        page.click("#browse-form button[type=submit]");
        page.wait_for(
            "location.search.includes('view=json') && document.readyState === 'complete'",
            "the JSON view",
        );
        let pre = page.eval("document.querySelector('#tasks pre.payload').textContent");
        assert_eq!(
            pre.as_str().unwrap_or_default(),
            "{\n  \"image\": \"img-42.png\",\n  \"job\": \"resize\"\n}",
        );
        save(&mut page, &dir2, "04-browse-json.png");
        page.select("#browse-form select[name=view]", "hex");
        page.click("#browse-form button[type=submit]");
        page.wait_for("location.search.includes('view=hex')", "the hex view");
        let pre = page.eval("document.querySelector('#tasks pre.payload').textContent");
        assert!(
            pre.as_str()
                .unwrap_or_default()
                .starts_with("00000000  7b 22 6a 6f 62"),
            "{pre}"
        );
        save(&mut page, &dir2, "05-browse-hex.png");

        (browser, page)
    })
    .await
    .expect("browser steps up to producing");

    // Lease the task in group "ui-workers", then look at it and at the groups pages.
    let leader = eventually(Duration::from_secs(20), "leader of uitest/1", || async {
        let m = c.metadata(ctx(), vec!["uitest".into()]).await.ok()?.ok()?;
        m.topics.first()?.partitions.get(1)?.leader
    })
    .await;
    let lc = cluster.client(leader).await;
    let leased = lc
        .fetch(
            ctx(),
            FetchRequest {
                topic: "uitest".into(),
                partition: 1,
                group: "ui-workers".into(),
                worker: "gpu-box-1".into(),
                max_tasks: 10,
                visibility_timeout_ms: Some(120_000),
                wait_ms: 2_000,
            },
        )
        .await
        .expect("rpc")
        .expect("fetch");
    assert_eq!(leased.leases.len(), 1, "the task produced in the browser");

    let base3 = base.clone();
    tokio::task::spawn_blocking(move || {
        // The browse view shows the task's state in the group.
        page.goto(&format!("{base3}/ui/topics/uitest/browse?partition=1"));
        let t = text(&mut page);
        assert!(t.contains("ui-workers") && t.contains("leased"), "{t}");
        assert!(t.contains("worker gpu-box-1"), "{t}");
        save(&mut page, &dir, "06-browse-leased.png");

        page.goto(&format!("{base3}/ui/groups"));
        let t = text(&mut page);
        assert!(t.contains("ui-workers") && t.contains("uitest"), "{t}");
        save(&mut page, &dir, "07-groups.png");

        page.goto(&format!("{base3}/ui/groups/uitest/ui-workers"));
        let t = text(&mut page);
        assert!(t.contains("queue") && t.contains("gpu-box-1"), "{t}");
        page.wait_for(
            "document.querySelector('[data-live-status]').textContent === 'live'",
            "live group charts",
        );
        page.wait_for(
            "document.querySelector('[data-p=\"1\"][data-f=\"in_flight\"]').textContent === '1'",
            "one task in flight on partition 1",
        );
        // Two polls give the first rate points of the charts.
        std::thread::sleep(Duration::from_millis(4_500));
        save(&mut page, &dir, "08-group.png");

        page.goto(&format!("{base3}/ui/topics"));
        page.wait_for(
            "document.querySelector('#topics a[href=\"/ui/topics/uitest\"]')",
            "the topic in the list",
        );
        save(&mut page, &dir, "09-topics.png");

        // Delete through the form: a wrong confirmation deletes nothing, the right one does.
        page.goto(&format!("{base3}/ui/topics/uitest"));
        page.eval("window.confirm = () => true");
        page.type_into("input[name=confirm]", "wrong");
        page.click("form[action$='/delete'] button");
        page.wait_for(
            "document.readyState === 'complete' && document.querySelector('.flash.bad')",
            "the refused deletion",
        );
        // A transient error (e.g. a leader change) is shown on the page; the user retries.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            page.goto(&format!("{base3}/ui/topics/uitest"));
            page.eval("window.confirm = () => true");
            page.type_into("input[name=confirm]", "uitest");
            page.click("form[action$='/delete'] button");
            page.wait_for(
                "document.readyState === 'complete' && (location.pathname === '/ui/topics' || (document.querySelector('.flash.bad') || {textContent: ''}).textContent.includes('delete:'))",
                "the deletion's answer",
            );
            if page.eval("location.pathname") == json!("/ui/topics") {
                break;
            }
            assert!(Instant::now() < deadline, "deletion kept failing: {}", text(&mut page));
            std::thread::sleep(Duration::from_millis(500));
        }
        let t = text(&mut page);
        assert!(t.contains("topic uitest deleted"), "{t}");
        save(&mut page, &dir, "10-topic-deleted.png");
        drop(browser);
    })
    .await
    .expect("browser steps after leasing");
    eprintln!(
        "web_ui_in_headless_chromium: {:?} (UI through node {via}, controller {controller})",
        started.elapsed()
    );
}
