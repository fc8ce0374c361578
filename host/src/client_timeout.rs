//! Slow clients: a request body that stops arriving for longer than the client timeout fails with
//! `connection-read-timeout` and signals the server, which stops the handler and answers 408 itself, so a
//! slow-loris client cannot hold an instance and its memory. Headers have the same limit through hyper's
//! header read timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::Error;

/// A request body that fails once no data has arrived for `idle`.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    timed_out: Arc<Notify>,
}

/// Notified when a request's body timed out; travels in the request's extensions.
#[derive(Clone)]
pub struct BodyTimedOut(pub Arc<Notify>);

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> (Self, BodyTimedOut) {
        let timed_out = Arc::new(Notify::new());
        let body = Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            timed_out: timed_out.clone(),
        };
        (body, BodyTimedOut(timed_out))
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Error>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = Instant::now() + self.idle;
                self.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    // A stored permit: the server may start waiting after this fires.
                    self.timed_out.notify_one();
                    Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
