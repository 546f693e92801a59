//! The TCP streams of the data path, client and upstream alike: tokio's `TcpStream` with its
//! writes made by `send(2)`.
//!
//! tokio writes a `TcpStream` with `write(2)`, or `writev(2)` when hyper hands it a head and a
//! body chunk separately. Both go through the VFS layer (the file position lookup, the generic
//! iterator path) before reaching the socket; `send(2)` enters the socket layer directly, as
//! nginx and HAProxy do. A proxied request is two writes (upstream, then back to the client),
//! so this is a fixed saving per request. The stream reports no vectored writes, so hyper
//! gathers a head and its body chunks into its own buffer and writes them in one `send`.
//! [`send_all`] is the same write for the lean HTTP/1.1 path, which holds the `TcpStream`
//! itself, and [`Rewind`] hands a connection that path has started reading over to hyper.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A connected TCP stream written with `send(2)`; reads and shutdown are tokio's.
#[derive(Debug)]
pub struct Stream(TcpStream);

impl Stream {
    pub fn new(stream: TcpStream) -> Stream {
        Stream(stream)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.get_mut().0;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            // `try_io` clears the readiness when the socket's buffer is full, so the next
            // `poll_write_ready` waits for the socket to drain.
            match try_send(stream, buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                sent => return Poll::Ready(sent),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here; the socket has TCP_NODELAY.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// One `send(2)` of `buf` if tokio has seen the socket writable; `WouldBlock` (which clears
/// that readiness) otherwise or when its buffer is full.
fn try_send(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    stream.try_io(Interest::WRITABLE, || SockRef::from(stream).send(buf))
}

/// Writes all of `buf` to `stream` with `send(2)`, waiting while its buffer is full.
pub async fn send_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = send_some(stream, buf).await?;
        buf = &buf[n..];
    }
    Ok(())
}

/// Writes some of a non-empty `buf` to `stream` with one `send(2)` once it has room: how many
/// bytes. Cancelled while it waits, it has written nothing.
pub async fn send_some(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        match try_send(stream, buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
}

/// A stream whose first reads return bytes already read from it: how a client connection that
/// the lean HTTP/1.1 path has started reading is handed to hyper.
#[derive(Debug)]
pub struct Rewind<S> {
    read: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(read: Bytes, inner: S) -> Rewind<S> {
        Rewind { read, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn writes_arrive_in_order_and_shutdown_ends_the_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut stream = Stream::new(TcpStream::connect(addr).await.expect("connect"));
            // Larger than a socket buffer, so some writes find it full and wait.
            let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
            stream.write_all(&data).await.expect("write");
            stream.shutdown().await.expect("shutdown");
            data
        });
        let (mut accepted, _) = listener.accept().await.expect("accept");
        let mut received = Vec::new();
        accepted.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, client.await.expect("client"));
    }

    #[tokio::test]
    async fn a_rewound_stream_reads_what_was_read_before_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            send_all(&stream, b"hello, world").await.expect("send");
        });
        let (accepted, _) = listener.accept().await.expect("accept");
        client.await.expect("client");
        let mut first = [0u8; 5];
        let mut accepted = accepted;
        accepted.read_exact(&mut first).await.expect("read");
        let mut rewound = Rewind::new(Bytes::copy_from_slice(&first), accepted);
        let mut received = Vec::new();
        rewound.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, b"hello, world");
    }
}
