//! The `Disk` conformance suite against every backend.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::sync::Arc;

use taskbroker_storage::io::{open_disk, BackendChoice, SimDisk};
use taskbroker_storage::testing::disk_conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn std_backend() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    disk_conformance(open_disk(BackendChoice::Std).unwrap(), tmp.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_backend() {
    let Ok(disk) = open_disk(BackendChoice::Uring) else {
        eprintln!("note: io_uring unavailable on this host, skipping");
        return;
    };
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    disk_conformance(disk, tmp.path()).await;
}

#[tokio::test]
async fn sim_backend() {
    disk_conformance(Arc::new(SimDisk::new(1)), Path::new("/sim")).await;
}

#[test]
fn auto_always_yields_a_disk() {
    let disk = open_disk(BackendChoice::Auto).unwrap();
    assert_ne!(disk.kind().to_string(), "sim");
}
