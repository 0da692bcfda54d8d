//! A gRPC request's body, held to the bounds an HTTP body is read within
//! ([`crate::edge::http::body`]): tonic reads and decodes it, this counts what arrives.
//!
//! Without it a gRPC client could do what HTTP's bounds stop: open streams on
//! many connections, send part of a large message on each and stall, pinning
//! `--max-body` bytes per stream for as long as it likes. Here every data
//! frame's bytes join the body's share of `--body-budget` as they arrive
//! (the share is kept until the call is answered, as the decoded message
//! lives that long), and the whole body must arrive within `--body-timeout`.
//! A refusal reaches the client as a gRPC status with HTTP's message:
//! `UNAVAILABLE` for a full budget (HTTP's 503, which clients retry) and
//! `DEADLINE_EXCEEDED` for a body that stopped arriving (HTTP's 408).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};
use tonic::Status;

use crate::edge::app::App;
use crate::edge::http::body::{self, Held};

/// A body's share of the budget, shared between the body (which grows it)
/// and the call (which keeps it until the answer).
pub type Share = Arc<Mutex<Held>>;

pub struct Bounded {
    body: Incoming,
    app: Arc<App>,
    share: Share,
    received: usize,
    /// `--body-timeout` after the request arrived; unset once the body ended.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Bounded {
    pub fn new(body: Incoming, app: Arc<App>, share: Share) -> Bounded {
        let deadline = Instant::now() + app.body.timeout;
        Bounded {
            body,
            app,
            share,
            received: 0,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Counts a data frame of `len` bytes against `--max-body` (its 5-byte
    /// gRPC prefix allowed) and the budget.
    fn admit(&mut self, len: usize) -> Result<(), Status> {
        self.received += len;
        let max_body = self.app.body.max_body;
        if self.received > max_body.saturating_add(5) {
            // The code tonic gives a message past its size limit.
            return Err(Status::out_of_range(body::too_large(max_body, "").message));
        }
        let mut share = self
            .share
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        share
            .grow_to(&self.app.body, self.received)
            .map_err(|err| Status::unavailable(err.message))
    }
}

impl Body for Bounded {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.deadline = None;
            this.app.registry.metrics().body_timed_out();
            let message = body::not_arrived(this.app.body.timeout);
            return Poll::Ready(Some(Err(Box::new(Status::deadline_exceeded(message)))));
        }
        let frame = match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Poll::Ready(Some(Err(Box::new(err)))),
            None => {
                this.deadline = None;
                return Poll::Ready(None);
            }
        };
        if let Some(data) = frame.data_ref()
            && let Err(status) = this.admit(data.len())
        {
            return Poll::Ready(Some(Err(Box::new(status))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
