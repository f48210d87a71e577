//! A lying proxy for the client fuzz targets: it answers with a script, at
//! most `piece` bytes per read, then hangs up; it keeps what it was sent.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A proxy that says its piece (at most `piece` bytes per read) and hangs up.
pub struct Liar<'a> {
    pub script: &'a [u8],
    pub at: usize,
    pub piece: usize,
    pub written: Vec<u8>,
}

impl AsyncRead for Liar<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = (self.script.len() - self.at)
            .min(self.piece)
            .min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.script[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Liar<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
