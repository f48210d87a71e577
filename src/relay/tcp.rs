//! TCP relay: copy both ways with half-close and reset passed through. (issue 2/3)

// PROVISIONAL (tun branch): stand-in until the server helper's relay lands; replaced on merge.
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

pub trait RelayStream: AsyncRead + AsyncWrite + Unpin + Send {
    fn reset(&mut self);
}

impl RelayStream for tokio::net::TcpStream {
    fn reset(&mut self) {
        #[allow(deprecated)]
        let _ = self.set_linger(Some(Duration::ZERO));
    }
}

impl<T: RelayStream + ?Sized> RelayStream for Box<T> {
    fn reset(&mut self) {
        (**self).reset()
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RelayStats {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

pub async fn relay<A: RelayStream, B: RelayStream>(mut a: A, mut b: B, _idle: Duration) -> RelayStats {
    match tokio::io::copy_bidirectional(&mut a, &mut b).await {
        Ok((x, y)) => RelayStats { a_to_b: x, b_to_a: y },
        Err(_) => {
            a.reset();
            b.reset();
            RelayStats::default()
        }
    }
}
