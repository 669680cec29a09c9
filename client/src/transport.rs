//! The network seam: how every taskbroker component opens and accepts byte streams.
//!
//! Production uses [`TokioTransport`] (TCP); simulations plug in turmoil's TCP through the same
//! [`Transport`] trait, so the node, the Raft network and the client run unchanged under both.
//!
//! # Design notes
//! - A connection starts with a fixed [`Preamble`] naming what it carries ([`ConnKind`]): one
//!   listen address serves both the client API and Raft traffic.
//! - Streams are boxed trait objects: one allocation per connection, not per message.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A boxed future returned by transport operations.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// A bidirectional byte stream (a TCP connection or a simulated one).
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

/// A boxed [`Conn`].
pub type BoxConn = Box<dyn Conn>;

/// Opens connections and listeners.
///
/// # Example
/// ```
/// use taskbroker_client::transport::{TokioTransport, Transport};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let transport = TokioTransport;
/// let mut listener = transport.bind("127.0.0.1:0").await.unwrap();
/// let addr = listener.local_addr().unwrap().to_string();
/// let connect = transport.connect(&addr);
/// let (accepted, connected) = tokio::join!(listener.accept(), connect);
/// assert!(accepted.is_ok() && connected.is_ok());
/// # });
/// ```
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Connects to `addr` (`host:port`).
    fn connect<'a>(&'a self, addr: &'a str) -> IoFuture<'a, BoxConn>;
    /// Binds a listener on `addr` (`host:port`; port 0 picks a free port).
    fn bind<'a>(&'a self, addr: &'a str) -> IoFuture<'a, Box<dyn Listener>>;
}

/// Accepts connections.
pub trait Listener: Send + 'static {
    /// Waits for the next connection and returns it with the peer's address.
    fn accept(&mut self) -> IoFuture<'_, (BoxConn, SocketAddr)>;
    /// The address this listener is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// The production transport: tokio TCP with `TCP_NODELAY`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioTransport;

impl Transport for TokioTransport {
    fn connect<'a>(&'a self, addr: &'a str) -> IoFuture<'a, BoxConn> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxConn)
        })
    }

    fn bind<'a>(&'a self, addr: &'a str) -> IoFuture<'a, Box<dyn Listener>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TokioListener(listener)) as Box<dyn Listener>)
        })
    }
}

struct TokioListener(tokio::net::TcpListener);

impl Listener for TokioListener {
    fn accept(&mut self) -> IoFuture<'_, (BoxConn, SocketAddr)> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            stream.set_nodelay(true)?;
            Ok((Box::new(stream) as BoxConn, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// What a connection carries, announced in its [`Preamble`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnKind {
    /// The task API (producers, workers, admin).
    Client = 1,
    /// Raft RPCs between nodes.
    Raft = 2,
}

/// The first bytes of every connection: magic, protocol version, [`ConnKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// What the connection carries.
    pub kind: ConnKind,
}

/// Errors reading a connection preamble.
#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    /// The peer closed or failed before sending a whole preamble.
    #[error("connection preamble: {0}")]
    Io(#[from] io::Error),
    /// The peer does not speak taskbroker (e.g. HTTP sent to the client port).
    #[error("not a taskbroker connection (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// A version this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// An unknown connection kind.
    #[error("unknown connection kind {0}")]
    UnknownKind(u8),
}

impl Preamble {
    /// Magic bytes that open every taskbroker connection.
    pub const MAGIC: [u8; 4] = *b"TBK\x01";
    /// The protocol version this build speaks.
    pub const VERSION: u8 = 1;
    /// Encoded length in bytes.
    pub const LEN: usize = 8;

    /// Writes the preamble to `conn`.
    pub async fn write<W: AsyncWrite + Unpin + ?Sized>(&self, conn: &mut W) -> io::Result<()> {
        let mut buf = [0u8; Self::LEN];
        buf[..4].copy_from_slice(&Self::MAGIC);
        buf[4] = Self::VERSION;
        buf[5] = self.kind as u8;
        conn.write_all(&buf).await?;
        conn.flush().await
    }

    /// Reads and checks a preamble from `conn`.
    pub async fn read<R: AsyncRead + Unpin + ?Sized>(conn: &mut R) -> Result<Self, PreambleError> {
        let mut buf = [0u8; Self::LEN];
        conn.read_exact(&mut buf).await?;
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&buf[..4]);
        if magic != Self::MAGIC {
            return Err(PreambleError::BadMagic(magic));
        }
        if buf[4] != Self::VERSION {
            return Err(PreambleError::UnsupportedVersion(buf[4]));
        }
        let kind = match buf[5] {
            1 => ConnKind::Client,
            2 => ConnKind::Raft,
            other => return Err(PreambleError::UnknownKind(other)),
        };
        Ok(Preamble { kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn preamble_round_trip_and_garbage() {
        let (mut a, mut b) = tokio::io::duplex(64);
        Preamble {
            kind: ConnKind::Raft,
        }
        .write(&mut a)
        .await
        .unwrap();
        assert_eq!(Preamble::read(&mut b).await.unwrap().kind, ConnKind::Raft);

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(matches!(
            Preamble::read(&mut b).await,
            Err(PreambleError::BadMagic(_))
        ));

        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(matches!(
            Preamble::read(&mut b).await,
            Err(PreambleError::Io(_))
        ));
    }
}
