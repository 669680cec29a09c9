//! A minimal Chrome DevTools Protocol client for the browser test: headless Chromium started
//! with `--remote-debugging-port=0`, one WebSocket (RFC 6455, client frames masked) to the
//! page target, JSON-RPC calls answered by id. Blocking std I/O with timeouts: every wait is
//! bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long Chromium may take to start and print its DevTools address.
pub const BROWSER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one CDP call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium binary: `$CHROMIUM` or the first of the Debian names on `PATH`.
pub fn chromium_binary() -> Option<String> {
    if let Ok(c) = std::env::var("CHROMIUM") {
        return Some(c);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|b| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {b}"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|s| s.to_string())
}

/// A running headless Chromium (killed on drop).
pub struct Browser {
    child: Child,
    port: u16,
}

impl Browser {
    /// Starts `binary` headless with a fresh profile in `profile_dir` and a laptop-sized window.
    pub fn start(binary: &str, profile_dir: &Path) -> Browser {
        let mut child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--hide-scrollbars",
                "--window-size=1366,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile_dir.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                    if let Some(t) = tx.take() {
                        let _ = t.send(rest.to_string());
                    }
                }
                // Keep draining so Chromium never blocks on a full pipe.
            }
        });
        let addr = match rx.recv_timeout(BROWSER_START_TIMEOUT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("{binary} printed no DevTools address within {BROWSER_START_TIMEOUT:?}");
            }
        };
        let port = addr
            .split('/')
            .next()
            .and_then(|hp| hp.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad DevTools address {addr:?}"));
        Browser { child, port }
    }

    /// Connects to the first page target.
    pub fn page(&self) -> Page {
        let deadline = Instant::now() + BROWSER_START_TIMEOUT;
        loop {
            if let Some(ws) = self.page_ws_url() {
                return Page::connect(&ws);
            }
            assert!(Instant::now() < deadline, "no page target in Chromium");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn page_ws_url(&self) -> Option<String> {
        // DevTools' HTTP server answers HTTP/1.1 only and keeps the connection open: read
        // exactly Content-Length bytes.
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut reader = BufReader::new(s);
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().ok()?;
                }
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).ok()?;
        let list: Value = serde_json::from_slice(&body).ok()?;
        list.as_array()?
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .map(str::to_string)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket connection to one page target.
pub struct Page {
    stream: TcpStream,
    next_id: u64,
}

impl Page {
    fn connect(ws_url: &str) -> Page {
        let rest = ws_url.strip_prefix("ws://").expect("ws url");
        let (host, path) = rest.split_once('/').expect("ws path");
        let mut stream = TcpStream::connect(host).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(CALL_TIMEOUT))
            .expect("timeout");
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .expect("handshake");
        // Read the 101 answer byte by byte up to the blank line (frames may follow at once).
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut b).expect("handshake answer");
            head.push(b[0]);
            assert!(head.len() < 16 * 1024, "handshake answer too long");
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "WebSocket refused: {head}"
        );
        Page { stream, next_id: 1 }
    }

    fn send_text(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).expect("send frame");
    }

    /// One whole message (continuation frames joined; pings answered).
    fn read_message(&mut self) -> Vec<u8> {
        let mut message = Vec::new();
        loop {
            let mut h = [0u8; 2];
            self.stream.read_exact(&mut h).expect("frame header");
            let fin = h[0] & 0x80 != 0;
            let opcode = h[0] & 0x0f;
            let masked = h[1] & 0x80 != 0;
            let mut len = u64::from(h[1] & 0x7f);
            if len == 126 {
                let mut l = [0u8; 2];
                self.stream.read_exact(&mut l).expect("len16");
                len = u64::from(u16::from_be_bytes(l));
            } else if len == 127 {
                let mut l = [0u8; 8];
                self.stream.read_exact(&mut l).expect("len64");
                len = u64::from_be_bytes(l);
            }
            assert!(len < 256 << 20, "frame of {len} bytes");
            let mut mask = [0u8; 4];
            if masked {
                self.stream.read_exact(&mut mask).expect("mask");
            }
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).expect("payload");
            if masked {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            match opcode {
                0x8 => panic!("DevTools closed the connection"),
                0x9 => {
                    // Ping: answer with a masked pong carrying the same payload.
                    let mut f = vec![0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    f.extend_from_slice(&payload);
                    self.stream.write_all(&f).expect("pong");
                    continue;
                }
                0xa => continue,
                _ => message.extend_from_slice(&payload),
            }
            if fin {
                return message;
            }
        }
    }

    /// Calls `method` and returns its `result` (panics on a protocol error).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(&json!({"id": id, "method": method, "params": params}).to_string());
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "{method}: no answer");
            let msg: Value = serde_json::from_slice(&self.read_message()).expect("CDP json");
            if msg["id"] == json!(id) {
                if let Some(e) = msg.get("error") {
                    panic!("{method}: {e}");
                }
                return msg["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page and returns its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Navigates to `url` and waits for the document to finish loading.
    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for(
            &format!(
                "document.readyState === 'complete' && location.href.startsWith({})",
                json!(url.split('#').next().unwrap_or(url))
            ),
            "page load",
        );
    }

    /// Polls `expr` until it is true (up to [`CALL_TIMEOUT`]).
    pub fn wait_for(&mut self, expr: &str, what: &str) {
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            if self.eval(&format!("!!({expr})")) == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({expr}); page text: {}",
                self.eval("document.body ? document.body.innerText.slice(0, 2000) : ''")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` into the element `selector` (focused, then inserted as keyboard input).
    pub fn type_into(&mut self, selector: &str, text: &str) {
        let found = self.eval(&format!(
            "(() => {{ const e = document.querySelector({s}); if (!e) return false; e.focus(); e.value = ''; return true; }})()",
            s = json!(selector)
        ));
        assert_eq!(found, json!(true), "no element {selector}");
        self.call("Input.insertText", json!({"text": text}));
    }

    /// Selects `value` in the `<select>` `selector`.
    pub fn select(&mut self, selector: &str, value: &str) {
        let ok = self.eval(&format!(
            "(() => {{ const e = document.querySelector({s}); if (!e) return false; e.value = {v}; return e.value === {v}; }})()",
            s = json!(selector),
            v = json!(value)
        ));
        assert_eq!(ok, json!(true), "cannot select {value} in {selector}");
    }

    /// Clicks the element `selector` with real mouse events at its centre.
    pub fn click(&mut self, selector: &str) {
        let rect = self.eval(&format!(
            "(() => {{ const e = document.querySelector({s}); if (!e) return null; e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; }})()",
            s = json!(selector)
        ));
        let (x, y) = (
            rect[0]
                .as_f64()
                .unwrap_or_else(|| panic!("no element {selector}")),
            rect[1].as_f64().expect("y"),
        );
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// A PNG screenshot of the whole page.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        base64_decode(r["data"].as_str().expect("screenshot data"))
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
}
