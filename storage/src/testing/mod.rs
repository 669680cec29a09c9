//! Conformance suites shared by the tests of every [`Disk`] backend. Not a stable API.

use std::path::Path;
use std::sync::Arc;

use crate::io::{read_exact_at, Disk};

/// Runs the `Disk`/`DiskFile` conformance suite in `dir` (which must exist and be empty).
/// Panics with a description on the first violation.
pub async fn disk_conformance(disk: Arc<dyn Disk>, dir: &Path) {
    let sub = dir.join("conf");
    disk.create_dir_all(&sub).await.expect("create_dir_all");
    assert_eq!(
        disk.list_dir(&sub).await.expect("list empty"),
        Vec::<String>::new()
    );

    // open without create fails on a missing file
    let missing = disk.open(&sub.join("missing"), false).await;
    assert_eq!(
        missing.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::NotFound)
    );

    let a = disk.open(&sub.join("b.log"), true).await.expect("create");
    let _z = disk.open(&sub.join("a.log"), true).await.expect("create");
    assert_eq!(
        disk.list_dir(&sub).await.expect("list"),
        vec!["a.log", "b.log"]
    );
    assert_eq!(a.len().await.expect("len"), 0);

    // positional writes return the buffer, reads are short at EOF
    let buf = a
        .write_all_at(b"hello world".to_vec(), 0)
        .await
        .expect("write");
    assert_eq!(buf, b"hello world");
    let buf = a.write_all_at(b"W".to_vec(), 6).await.expect("write");
    assert_eq!(buf, b"W");
    assert_eq!(a.len().await.expect("len"), 11);
    let (n, got) = a.read_at(vec![0u8; 32], 0).await.expect("read");
    assert_eq!(&got[..n], b"hello World");
    let (n, _) = a.read_at(vec![0u8; 4], 100).await.expect("read past eof");
    assert_eq!(n, 0);
    assert_eq!(
        read_exact_at(a.as_ref(), 5, 6).await.expect("exact"),
        b"World"
    );
    assert!(read_exact_at(a.as_ref(), 50, 0).await.is_err());

    // holes read as zeros; set_len truncates and extends
    a.write_all_at(vec![7u8; 4], 20)
        .await
        .expect("write past end");
    let (n, got) = a.read_at(vec![1u8; 24], 0).await.expect("read");
    assert_eq!(n, 24);
    assert_eq!(&got[11..20], &[0u8; 9]);
    a.set_len(5).await.expect("set_len");
    assert_eq!(a.len().await.expect("len"), 5);
    a.set_len(8).await.expect("set_len");
    let (n, got) = a.read_at(vec![9u8; 8], 0).await.expect("read");
    assert_eq!((&got[..n], n), (&b"hello\0\0\0"[..], 8));

    // sync, combined write+sync, allocate
    a.sync_data().await.expect("sync");
    let buf = a
        .write_all_at_and_sync(b"XY".to_vec(), 0)
        .await
        .expect("write+sync");
    assert_eq!(buf, b"XY");
    a.allocate(4096).await.expect("allocate");
    let len = a.len().await.expect("len");
    assert!(len == 8 || len == 4096, "allocate changed len to {len}");
    let (_, got) = a.read_at(vec![0u8; 2], 0).await.expect("read");
    assert_eq!(got, b"XY");

    // reopen sees the same data; a second handle shares it
    let b = disk.open(&sub.join("b.log"), false).await.expect("reopen");
    let (_, got) = b.read_at(vec![0u8; 5], 0).await.expect("read");
    assert_eq!(got, b"XYllo");

    // big buffers round-trip
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    b.write_all_at(big.clone(), 8192).await.expect("big write");
    assert_eq!(
        read_exact_at(b.as_ref(), big.len(), 8192)
            .await
            .expect("big read"),
        big
    );

    // remove + sync_dir
    disk.remove_file(&sub.join("a.log")).await.expect("remove");
    assert!(disk.remove_file(&sub.join("a.log")).await.is_err());
    disk.sync_dir(&sub).await.expect("sync_dir");
    assert_eq!(disk.list_dir(&sub).await.expect("list"), vec!["b.log"]);

    // many concurrent operations complete
    let futs: Vec<_> = (0..64u64)
        .map(|i| {
            let b = b.clone();
            async move {
                b.write_all_at(vec![i as u8; 512], 1_000_000 + i * 512)
                    .await
                    .expect("write");
                b.sync_data().await.expect("sync");
            }
        })
        .collect();
    futures::future::join_all(futs).await;
    for i in [0u64, 31, 63] {
        let got = read_exact_at(b.as_ref(), 512, 1_000_000 + i * 512)
            .await
            .expect("read");
        assert!(got.iter().all(|x| *x == i as u8));
    }

    // rename replaces the target, keeps open handles valid and content intact
    let c = disk.open(&sub.join("c.spare"), true).await.expect("create");
    c.write_all_at(b"spare".to_vec(), 0).await.expect("write");
    c.sync_data().await.expect("sync");
    disk.rename(&sub.join("c.spare"), &sub.join("b.log"))
        .await
        .expect("rename over an existing file");
    assert!(disk
        .rename(&sub.join("c.spare"), &sub.join("d.log"))
        .await
        .is_err());
    disk.sync_dir(&sub).await.expect("sync_dir");
    assert_eq!(disk.list_dir(&sub).await.expect("list"), vec!["b.log"]);
    c.write_all_at(b"S".to_vec(), 0)
        .await
        .expect("write via old handle");
    let renamed = disk.open(&sub.join("b.log"), false).await.expect("open");
    assert_eq!(renamed.len().await.expect("len"), 5);
    let (_, got) = renamed.read_at(vec![0u8; 5], 0).await.expect("read");
    assert_eq!(got, b"Spare");
}
