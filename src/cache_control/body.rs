use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The response body of [`CacheControl`](super::CacheControl): the inner
    /// body passed through, the part read ahead to hash an ETag replayed
    /// before the rest, or nothing for a `304 Not Modified`.
    pub struct ResponseBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Passthrough { #[pin] body: B },
        Replay {
            // Chunks read while hashing, sent first.
            buffered: VecDeque<Bytes>,
            trailers: Option<HeaderMap>,
            // An error the inner body raised while being read ahead: passed
            // on after the buffered chunks, so the client sees it too.
            error: Option<B::Error>,
            // The unread rest of an inner body longer than the hashing cap.
            // Boxed because it was pinned while being read ahead and must
            // move into this body; only bodies that are hashed pay for it.
            rest: Option<Pin<Box<B>>>,
        },
        Empty,
    }
}

impl<B: Body> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Passthrough { .. } => "Passthrough",
            Kind::Replay { .. } => "Replay",
            Kind::Empty => "Empty",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn passthrough(body: B) -> Self {
        ResponseBody {
            kind: Kind::Passthrough { body },
        }
    }

    pub(crate) fn replay(
        buffered: VecDeque<Bytes>,
        trailers: Option<HeaderMap>,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
    ) -> Self {
        ResponseBody {
            kind: Kind::Replay {
                buffered,
                trailers,
                error,
                rest,
            },
        }
    }

    pub(crate) fn empty() -> Self {
        ResponseBody { kind: Kind::Empty }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Passthrough { body } => body.poll_frame(cx),
            KindProj::Replay {
                buffered,
                trailers,
                error,
                rest,
            } => {
                if let Some(chunk) = buffered.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if let Some(e) = error.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                if let Some(body) = rest {
                    return body.as_mut().poll_frame(cx);
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { body } => body.is_end_stream(),
            Kind::Replay {
                buffered,
                trailers,
                error,
                rest,
            } => {
                buffered.is_empty()
                    && trailers.is_none()
                    && error.is_none()
                    && rest.as_ref().map_or(true, |b| b.is_end_stream())
            }
            Kind::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { body } => body.size_hint(),
            Kind::Replay {
                buffered,
                rest,
                error,
                ..
            } => {
                let have: u64 = buffered.iter().map(|b| b.len() as u64).sum();
                match rest {
                    // An exact hint would let the server frame the read part
                    // as a complete body (Content-Length) and hide the error.
                    None if error.is_some() => {
                        let mut out = SizeHint::new();
                        out.set_lower(have);
                        out
                    }
                    None => SizeHint::with_exact(have),
                    Some(body) => {
                        let h = body.size_hint();
                        let mut out = SizeHint::new();
                        out.set_lower(h.lower().saturating_add(have));
                        if let Some(upper) = h.upper() {
                            out.set_upper(upper.saturating_add(have));
                        }
                        out
                    }
                }
            }
            Kind::Empty => SizeHint::with_exact(0),
        }
    }
}
