//! Bounds on the REST port's connections: a cap on open connections and an idle timeout.
//!
//! `ConnGuard` is an `axum_server` acceptor in front of the HTTP (or TLS) one: a connection over
//! the cap is closed at once, and every accepted stream is an `IdleStream`, which fails (so the
//! connection closes) when no byte has moved either way for the idle time. hyper's header read
//! timeout and the server's first-request timeout bound a client that trickles its request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Bounds of the HTTP server.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// A connection on which no byte moves for this long is closed; a request must arrive
    /// (headers) and be answered within it too.
    pub idle_timeout: Duration,
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            idle_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// The acceptor that enforces `ConnLimits` (wrap the TLS acceptor around it).
#[derive(Clone)]
pub struct ConnGuard {
    slots: Arc<Semaphore>,
    idle: Duration,
    /// Seconds since `epoch` when a refusal was last logged (one line a second at most).
    last_log: Arc<AtomicU64>,
    epoch: std::time::Instant,
}

impl ConnGuard {
    pub fn new(limits: ConnLimits) -> Self {
        ConnGuard {
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            idle: limits.idle_timeout,
            last_log: Arc::new(AtomicU64::new(u64::MAX)),
            epoch: std::time::Instant::now(),
        }
    }
}

impl<I, S> axum_server::accept::Accept<I, S> for ConnGuard
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    type Stream = IdleStream<I>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(IdleStream<I>, S)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        std::future::ready(match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok((IdleStream::new(stream, self.idle, permit), service)),
            Err(_) => {
                let now = self.epoch.elapsed().as_secs();
                if self.last_log.swap(now, Ordering::Relaxed) != now {
                    log::warn!("connection limit reached: closing new connections");
                }
                Err(io::Error::other("connection limit reached"))
            }
        })
    }
}

/// A stream that fails with `TimedOut` once nothing was read or written for `idle`; it holds
/// its connection slot until dropped.
pub struct IdleStream<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl<S> IdleStream<S> {
    fn new(inner: S, idle: Duration, slot: OwnedSemaphorePermit) -> Self {
        IdleStream {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            _slot: slot,
        }
    }

    fn progressed(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// For an operation that is not ready: fail if the connection has been idle too long.
    fn pending_or_timeout<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "idle connection closed",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Polls `op` on the inner stream. With `moved` (a read or write), a ready result resets the
    /// idle deadline; an operation that is not ready fails once the connection has been idle too
    /// long.
    fn poll_inner<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        moved: bool,
        op: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: Unpin,
    {
        let me = self.get_mut();
        match op(Pin::new(&mut me.inner), cx) {
            Poll::Ready(r) => {
                if moved {
                    me.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => me.pending_or_timeout(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_inner(cx, true, |inner, cx| inner.poll_read(cx, buf))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_inner(cx, true, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_inner(cx, true, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_inner(cx, false, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_inner(cx, false, |inner, cx| inner.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_idle_stream_times_out_and_activity_postpones_it() {
        let (a, mut b) = tokio::io::duplex(64);
        let slots = Arc::new(Semaphore::new(1));
        let permit = slots.clone().try_acquire_owned().unwrap();
        let mut s = IdleStream::new(a, Duration::from_secs(10), permit);
        assert_eq!(slots.available_permits(), 0, "the stream holds its slot");
        let mut buf = [0u8; 4];
        // Bytes every 6 s keep it open past 10 s.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(6)).await;
            b.write_all(b"x").await.unwrap();
            assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        }
        let t = Instant::now();
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t.elapsed(), Duration::from_secs(10));
        drop(s);
        assert_eq!(slots.available_permits(), 1, "dropping it frees the slot");
    }
}
