//! A request body as the host hands it to a component, watched for two things:
//!
//! - Slow clients: a body that stops arriving for longer than the client timeout fails with
//!   `connection-read-timeout` and signals the server, which stops the handler and answers 408 itself, so
//!   a slow-loris client cannot hold an instance and its memory. Headers have the same limit through
//!   hyper's header read timeout.
//! - Whether it was read to its end. A response sent before that (a 429 or 401 refused before any
//!   instance, a 404 for a path no handler reads) must say `Connection: close`: hyper cannot reuse a
//!   connection with body bytes still unread and closes it, and a client that was not told would send
//!   its next request into the closed connection and lose it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::Error;

/// A request body that fails once no data has arrived for `idle`, and records when it has ended.
pub(super) struct ClientBody<B> {
    inner: B,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    timed_out: Arc<Notify>,
    ended: Arc<AtomicBool>,
}

/// Notified when a request's body timed out; travels in the request's extensions.
#[derive(Clone)]
pub(super) struct BodyTimedOut(pub Arc<Notify>);

/// Whether the request body has been read to its end (or had none).
#[derive(Clone)]
pub(super) struct BodyEnded(Arc<AtomicBool>);

impl BodyEnded {
    pub(super) fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl<B: Body> ClientBody<B> {
    pub(super) fn new(inner: B, idle: Duration) -> (Self, BodyTimedOut, BodyEnded) {
        let timed_out = Arc::new(Notify::new());
        let ended = Arc::new(AtomicBool::new(inner.is_end_stream()));
        let body = Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            timed_out: timed_out.clone(),
            ended: ended.clone(),
        };
        (body, BodyTimedOut(timed_out), BodyEnded(ended))
    }
}

impl<B> Body for ClientBody<B>
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
                if frame.is_none() || self.inner.is_end_stream() {
                    self.ended.store(true, Ordering::Release);
                }
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
