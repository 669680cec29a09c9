//! A minimal HTTP/1.1 client for node-to-node calls of the admin API (one request per
//! connection, `Connection: close`): a node that does not hold some data (another node's
//! status, a partition it does not lead) asks the node that does, on its registered HTTP
//! address.
//!
//! # Design notes
//! - Only this cluster's own admin API is called, with small JSON bodies, so the client reads
//!   a whole response up to [`PEER_RESPONSE_BYTES_MAX`] and understands only what axum sends
//!   (`Content-Length` or a body ended by close; chunked bodies are decoded too).
//! - Every call has a deadline ([`PEER_TIMEOUT`]): a dead or slow node costs one timeout, and
//!   the caller reports it (a node shown as down) instead of hanging.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deadline of one node-to-node admin call (connect, request and whole response).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body accepted from a peer: bounds memory (a browse page is capped far
/// below it).
pub const PEER_RESPONSE_BYTES_MAX: usize = 32 << 20;
/// Header marking a request forwarded by another node: it is answered locally, never forwarded
/// again (no loops while leadership moves).
pub const FORWARDED_HEADER: &str = "x-taskbroker-forwarded";

/// Why a peer call failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Connect, write or read failed.
    #[error("node at {addr}: {source}")]
    Io {
        /// The peer's HTTP address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// No complete answer within [`PEER_TIMEOUT`].
    #[error("node at {addr} did not answer within {PEER_TIMEOUT:?}")]
    Timeout {
        /// The peer's HTTP address.
        addr: String,
    },
    /// The answer is not an HTTP response this client understands.
    #[error("node at {addr} sent a malformed response: {reason}")]
    Malformed {
        /// The peer's HTTP address.
        addr: String,
        /// What is wrong.
        reason: String,
    },
}

/// A peer's answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Sends `method path` with an optional JSON `body` to the node at `addr` (host:port), marked
/// as forwarded.
pub async fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<PeerResponse, PeerError> {
    match tokio::time::timeout(PEER_TIMEOUT, call_inner(addr, method, path, body)).await {
        Ok(r) => r,
        Err(_) => Err(PeerError::Timeout { addr: addr.into() }),
    }
}

async fn call_inner(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<PeerResponse, PeerError> {
    let io = |source| PeerError::Io {
        addr: addr.into(),
        source,
    };
    let mut conn = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{FORWARDED_HEADER}: 1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.map_err(io)?;
    conn.write_all(body).await.map_err(io)?;
    let mut raw = Vec::new();
    (&mut conn)
        .take(PEER_RESPONSE_BYTES_MAX as u64 + 64 * 1024)
        .read_to_end(&mut raw)
        .await
        .map_err(io)?;
    parse_response(&raw).map_err(|reason| PeerError::Malformed {
        addr: addr.into(),
        reason,
    })
}

/// Parses a whole HTTP/1.x response.
fn parse_response(raw: &[u8]) -> Result<PeerResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            length = Some(v.parse::<usize>().map_err(|_| "bad content-length")?);
        } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or("body shorter than content-length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    if body.len() > PEER_RESPONSE_BYTES_MAX {
        return Err(format!("body larger than {PEER_RESPONSE_BYTES_MAX} bytes"));
    }
    Ok(PeerResponse { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_close_delimited_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").expect("ok");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("ok");
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
        let r = parse_response(b"HTTP/1.0 503 x\r\n\r\nbody").expect("ok");
        assert_eq!((r.status, r.body.as_slice()), (503, &b"body"[..]));
    }

    #[test]
    fn malformed_responses_are_errors() {
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[tokio::test]
    async fn a_dead_peer_is_an_error_not_a_hang() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        drop(l);
        assert!(call(&addr, "GET", "/x", None).await.is_err());
    }
}
