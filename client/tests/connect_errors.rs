//! Connecting to something that is not a broker fails with a clear error within the timeout.

use std::time::{Duration, Instant};

use taskbroker_client::{Client, Error, RetryPolicy};
use tokio::io::AsyncWriteExt;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(800);
/// Slack for scheduling on a loaded CI machine.
const SLACK: Duration = Duration::from_millis(700);

async fn connect(addr: String) -> (Result<Client, Error>, Duration) {
    let started = Instant::now();
    let r = Client::builder()
        .seeds([addr])
        .connect_timeout(CONNECT_TIMEOUT)
        .request_timeout(Duration::from_millis(400))
        .retry(RetryPolicy::none())
        .connect()
        .await;
    (r, started.elapsed())
}

#[tokio::test]
async fn closed_port_gives_connect_error_in_time() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let (r, took) = connect(addr.clone()).await;
    match r {
        Err(Error::Connect { addr: a, reason }) => {
            assert_eq!(a, addr);
            assert!(!reason.is_empty());
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(took <= CONNECT_TIMEOUT + SLACK, "took {took:?}");
}

#[tokio::test]
async fn garbage_speaking_port_gives_protocol_error_in_time() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\nnot a broker\xff\xff\xff\xff")
                    .await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    let (r, took) = connect(addr.clone()).await;
    let e = r.expect_err("a non-broker must not be accepted");
    assert!(
        matches!(&e, Error::Protocol { addr: a, .. } if *a == addr)
            || matches!(e, Error::Timeout { .. }),
        "unexpected error {e:?}"
    );
    assert!(
        e.to_string().contains(&addr) || matches!(e, Error::Timeout { .. }),
        "{e}"
    );
    assert!(took <= CONNECT_TIMEOUT + SLACK, "took {took:?}");
}

#[tokio::test]
async fn silent_port_times_out_in_time() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let (r, took) = connect(addr).await;
    let e = r.expect_err("a silent peer must not be accepted");
    assert!(e.is_retryable(), "{e:?}");
    assert!(took <= CONNECT_TIMEOUT + SLACK, "took {took:?}");
}

#[tokio::test]
async fn unroutable_address_fails_in_time() {
    // TEST-NET-1 (RFC 5737): never routed; the connect hangs or fails at once.
    let (r, took) = connect("192.0.2.1:7070".to_string()).await;
    assert!(
        matches!(r, Err(Error::Connect { .. }) | Err(Error::Timeout { .. })),
        "{r:?}"
    );
    assert!(took <= CONNECT_TIMEOUT + SLACK, "took {took:?}");
}

#[tokio::test]
async fn no_seeds_is_a_config_error() {
    let r = Client::builder().connect().await;
    assert!(matches!(r, Err(Error::Config { .. })));
}
