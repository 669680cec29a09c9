//! `taskbroker-probe`: the image's health check and the deploy scripts' window into a node.
//!
//! The image is `FROM scratch` (no shell, no curl), so this tiny std-only program, built as a
//! static binary next to `taskbroker`, does one HTTP/1.0 GET on the node's own HTTP port:
//!
//! ```text
//! taskbroker-probe health        # GET /health, exit 0 on 200
//! taskbroker-probe ready         # GET /ready,  exit 0 on 200
//! taskbroker-probe get /metrics  # print the body, exit 0 on 200
//! ```
//!
//! The port comes from `TASKBROKER_HTTP` (as the node reads it; default `0.0.0.0:8080`); the
//! probe always connects to 127.0.0.1 on that port (or `TASKBROKER_PROBE_ADDR`, HOST:PORT).
//! Exit codes: 0 ok, 1 not ok (non-200 or connection failure), 2 usage.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

fn target() -> String {
    if let Ok(a) = std::env::var("TASKBROKER_PROBE_ADDR") {
        return a;
    }
    let http = std::env::var("TASKBROKER_HTTP").unwrap_or_else(|_| "0.0.0.0:8080".into());
    let port = http.rsplit_once(':').map_or("8080", |(_, p)| p).to_string();
    format!("127.0.0.1:{port}")
}

fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(3);
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}: malformed answer"))?;
    Ok((status, body.to_string()))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] | ["health"] => "/health".to_string(),
        ["ready"] => "/ready".to_string(),
        ["get", p] => p.to_string(),
        _ => {
            eprintln!("usage: taskbroker-probe [health | ready | get PATH]");
            std::process::exit(2);
        }
    };
    match get(&target(), &path) {
        Ok((200, body)) => {
            print!("{body}");
        }
        Ok((code, body)) => {
            eprintln!("{path}: HTTP {code}: {}", body.trim());
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    }
}
