//! The incremental handshake reader both ends use: the client for the
//! proxy's replies (`client`), the server for the client's greeting,
//! credentials and request (`crate::server`).
//!
//! Each read takes whatever has arrived: a message costs one `recvfrom`, where
//! reading it field by field took several, and a short read tells tokio the
//! socket is drained, which saves the read that would only return EAGAIN. A
//! `codec` parser then says whether a message is whole (see `codec::Parsed`).
//! Bytes past the last message are kept, never lost: the target's first data
//! behind a proxy's reply, or the data a client pipelined behind its request.

use super::codec::{CodecError, Parsed};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why no message came.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes can never become a valid message.
    Codec(CodecError),
    /// The peer closed first; `Reader::pending` holds what came of the message.
    Closed,
    /// A read failed.
    Io(io::Error),
    /// `N` bytes and still no whole message: longer than any the caller expects.
    TooLong,
}

/// Up to `N` bytes received and not yet consumed. `N` bounds what a peer can
/// make us buffer.
pub struct Reader<const N: usize> {
    buf: [u8; N],
    start: usize,
    end: usize,
}

impl<const N: usize> Default for Reader<N> {
    fn default() -> Self {
        Reader {
            buf: [0; N],
            start: 0,
            end: 0,
        }
    }
}

impl<const N: usize> Reader<N> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes received and not consumed by a message.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// One read from `s`, of whatever has arrived.
    pub async fn fill<S: AsyncRead + Unpin>(&mut self, s: &mut S) -> Result<(), ReadError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == N {
            return Err(ReadError::TooLong);
        }
        match s.read(&mut self.buf[self.end..]).await {
            Ok(0) => Err(ReadError::Closed),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// The next message, parsed by `parse` (a codec parser: `None` while the
    /// bytes are incomplete), reading from `s` until it is whole; its bytes
    /// are consumed.
    pub async fn next<S: AsyncRead + Unpin, T>(
        &mut self,
        s: &mut S,
        parse: impl Fn(&[u8]) -> Parsed<T>,
    ) -> Result<T, ReadError> {
        loop {
            match parse(self.pending()) {
                Ok(Some((m, used))) => {
                    self.start += used;
                    return Ok(m);
                }
                Ok(None) => self.fill(s).await?,
                Err(e) => return Err(ReadError::Codec(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socks::codec;
    use tokio::io::AsyncWriteExt;

    /// A message split over reads is put together, what follows it is kept,
    /// and a peer that closes mid-message leaves its bytes pending.
    #[tokio::test]
    async fn split_messages_and_what_follows() {
        let (mut a, mut b) = tokio::io::duplex(1);
        tokio::spawn(async move {
            b.write_all(&[5, 2, 0, 2, 5, 1]).await.unwrap();
        });
        let mut r = Reader::<16>::new();
        let methods = r.next(&mut a, codec::parse_greeting).await.unwrap();
        assert_eq!(methods, [0, 2]);
        assert!(matches!(
            r.next(&mut a, codec::parse_greeting).await,
            Err(ReadError::Closed)
        ));
        assert_eq!(r.pending(), [5, 1]);
    }

    #[tokio::test]
    async fn errors_and_the_cap() {
        let mut bad: &[u8] = &[4, 1];
        let mut r = Reader::<16>::new();
        assert!(matches!(
            r.next(&mut bad, codec::parse_greeting).await,
            Err(ReadError::Codec(CodecError::BadVersion(4)))
        ));
        // A 255-byte method list never fits in 16 bytes.
        let long = [&[5u8, 255][..], &[0; 30]].concat();
        let mut s: &[u8] = &long;
        let mut r = Reader::<16>::new();
        assert!(matches!(
            r.next(&mut s, codec::parse_greeting).await,
            Err(ReadError::TooLong)
        ));
    }
}
