use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::tee::Pending;

pin_project! {
    /// The response body of [`Cache`](super::Cache): a stored body (a
    /// `Bytes` shared by every hit, never copied), the inner body streamed
    /// through (and stored as it passes when it may be), or the part read
    /// while trying to store it replayed before the rest.
    pub struct ResponseBody<B: Body> {
        #[pin]
        kind: Kind<B>,
        // The inner body failed: passed on at the next poll, once the
        // server has written what it holds (see `late_error`).
        failed: Option<B::Error>,
    }
    impl<B: Body> PinnedDrop for ResponseBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // A leader's body dropped before its end (its client hung
            // up) while others wait for it: the rest is read in the
            // background, so the waiters get the page without a second
            // origin call. With no one waiting, it is dropped unread.
            if let KindProj::Tee { body, pending, detach, .. } = this.project().kind.project() {
                let lead = pending
                    .as_ref()
                    .and_then(|p| p.lead.as_ref())
                    .is_some_and(super::flight::Lead::has_waiters);
                if let (true, Some(detach)) = (lead, detach.take()) {
                    if let (Some(body), Some(pending)) = (body.take(), pending.take()) {
                        detach(body, pending);
                    }
                }
            }
        }
    }
}

/// Reads the rest of a leader's body in the background, storing it (set by
/// the miss path, which knows the body may move to another task).
pub(crate) type Detach<B> = fn(Pin<Box<B>>, Box<Pending>);

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Stored { data: Option<Bytes> },
        Head {
            // The length of the GET's content, when known: the answer to
            // a HEAD has none, but says how long it would be (RFC 9110
            // §8.6, §9.3.2), so a server or router that writes
            // `Content-Length` from the size hint writes the GET's, never
            // a 0 it would have to retract.
            len: Option<u64>,
        },
        Stream { #[pin] body: B },
        Tee {
            // Chunks read before the headers went out (see `read_start`),
            // sent first; already counted in `pending`.
            buffered: VecDeque<Bytes>,
            // Boxed: it was pinned while its start was read (miss path).
            // `None` only once handed to `detach`.
            body: Option<Pin<Box<B>>>,
            // What storing needs once the body ends; `None` once stored or
            // given up. Boxed: the common variants stay small.
            pending: Option<Box<Pending>>,
            // Where the rest goes if this body is dropped unfinished.
            detach: Option<Detach<B>>,
        },
        Slice {
            // A whole response that is not being stored, of which only
            // bytes `skip..skip + left` go to the client: a range cut from
            // what the miss path fetched without `Range` (RFC 9110 §14).
            // Boxed: the rare case, and the type is recursive.
            body: Pin<Box<ResponseBody<B>>>,
            // Bytes still to drop before the range starts.
            skip: u64,
            // Bytes of the range still to send.
            left: u64,
        },
        Replay {
            // Chunks read while trying to store the response, sent first.
            buffered: VecDeque<Bytes>,
            // An error the inner body raised while being read: passed on
            // after the buffered chunks, so the client sees the failure.
            error: Option<B::Error>,
            // The unread rest of a body longer than the storing cap. Boxed
            // because it was pinned while being read; only bodies too long
            // to store pay for it.
            rest: Option<Pin<Box<B>>>,
        },
    }
}

impl<B: Body> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Stored { .. } => "Stored",
            Kind::Head { .. } => "Head",
            Kind::Stream { .. } => "Stream",
            Kind::Tee { .. } => "Tee",
            Kind::Replay { .. } => "Replay",
            Kind::Slice { .. } => "Slice",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn stored(data: Bytes) -> Self {
        ResponseBody {
            failed: None,
            kind: Kind::Stored {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn empty() -> Self {
        ResponseBody {
            failed: None,
            kind: Kind::Stored { data: None },
        }
    }

    /// The body of an answer to a HEAD whose GET content is `len` bytes
    /// long (`None`: unknown): it has no data, and its size hint is that
    /// length (RFC 9110 §8.6).
    pub(crate) fn head(len: Option<u64>) -> Self {
        ResponseBody {
            failed: None,
            kind: Kind::Head { len },
        }
    }

    pub(crate) fn stream(body: B) -> Self {
        ResponseBody {
            failed: None,
            kind: Kind::Stream { body },
        }
    }

    pub(crate) fn tee(buffered: VecDeque<Bytes>, body: Pin<Box<B>>, pending: Pending) -> Self {
        Self::tee_boxed(buffered, body, Box::new(pending))
    }

    pub(crate) fn tee_boxed(
        buffered: VecDeque<Bytes>,
        body: Pin<Box<B>>,
        pending: Box<Pending>,
    ) -> Self {
        ResponseBody {
            failed: None,
            kind: Kind::Tee {
                buffered,
                body: Some(body),
                pending: Some(pending),
                detach: None,
            },
        }
    }

    /// Should this body (a leader's tee) be dropped before its end while
    /// its flight has waiters, its unread rest goes to `detach`. Other
    /// bodies are left as they are.
    pub(crate) fn detach_on_drop(&mut self, f: Detach<B>) {
        if let Kind::Tee { detach, .. } = &mut self.kind {
            *detach = Some(f);
        }
    }

    /// Whether this body stores the response as it streams: it must then
    /// be read to its end, so it is never cut short for a range.
    pub(crate) fn is_tee(&self) -> bool {
        matches!(self.kind, Kind::Tee { .. })
    }

    /// Bytes `start..start + len` of this body (a range, RFC 9110 §14): a
    /// stored body is sliced in place (`start + len` within it, as `range::
    /// plan` ensures); a streamed one drops what comes before `start` and
    /// ends after `len` bytes, dropping the rest unread. Never called on a
    /// [tee](Self::is_tee).
    pub(crate) fn slice(self, start: u64, len: u64) -> Self {
        if let Kind::Stored { data } = &self.kind {
            let data = data.as_ref().map_or_else(Bytes::new, |d| {
                let from = usize::try_from(start).unwrap_or(usize::MAX).min(d.len());
                let to = from
                    .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
                    .min(d.len());
                d.slice(from..to)
            });
            return Self::stored(data);
        }
        ResponseBody {
            failed: None,
            kind: Kind::Slice {
                body: Box::pin(self),
                skip: start,
                left: len,
            },
        }
    }

    pub(crate) fn replay(
        buffered: VecDeque<Bytes>,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
    ) -> Self {
        ResponseBody {
            failed: None,
            kind: Kind::Replay {
                buffered,
                error,
                rest,
            },
        }
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
        let this = self.project();
        let kind = this.kind;
        crate::late_error::poll_late(this.failed, cx, |cx| poll_kind(kind, cx))
    }

    fn is_end_stream(&self) -> bool {
        if self.failed.is_some() {
            return false;
        }
        match &self.kind {
            Kind::Stored { data } => data.is_none(),
            Kind::Head { .. } => true,
            Kind::Stream { body } => body.is_end_stream(),
            Kind::Slice { left, .. } => *left == 0,
            Kind::Tee { buffered, body, .. } => {
                buffered.is_empty() && body.as_ref().map_or(true, |b| b.is_end_stream())
            }
            Kind::Replay {
                buffered,
                error,
                rest,
            } => {
                buffered.is_empty()
                    && error.is_none()
                    && rest.as_ref().map_or(true, |b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stored { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Head { len } => len.map_or_else(SizeHint::new, SizeHint::with_exact),
            Kind::Stream { body } => body.size_hint(),
            Kind::Slice { left, .. } => SizeHint::with_exact(*left),
            Kind::Tee { buffered, body, .. } => {
                let have: u64 = buffered.iter().map(|b| b.len() as u64).sum();
                let h = body
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
                let mut out = SizeHint::new();
                out.set_lower(h.lower().saturating_add(have));
                if let Some(upper) = h.upper() {
                    out.set_upper(upper.saturating_add(have));
                }
                out
            }
            Kind::Replay {
                buffered,
                error,
                rest,
            } => {
                let have: u64 = buffered.iter().map(|b| b.len() as u64).sum();
                let mut out = SizeHint::new();
                out.set_lower(have);
                match rest {
                    // An exact hint would frame the read part as a complete
                    // body (Content-Length) and hide the error.
                    None if error.is_some() => {}
                    None => return SizeHint::with_exact(have),
                    Some(body) => {
                        let h = body.size_hint();
                        out.set_lower(h.lower().saturating_add(have));
                        if let Some(upper) = h.upper() {
                            out.set_upper(upper.saturating_add(have));
                        }
                    }
                }
                out
            }
        }
    }
}

/// One poll of the body's own kind; failures are held back a poll by
/// [`ResponseBody::poll_frame`].
fn poll_kind<B: Body<Data = Bytes>>(
    kind: Pin<&mut Kind<B>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
    match kind.project() {
        KindProj::Stored { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        KindProj::Head { .. } => Poll::Ready(None),
        KindProj::Stream { body } => body.poll_frame(cx),
        KindProj::Tee {
            buffered,
            body,
            pending,
            ..
        } => {
            let Some(body) = body.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(chunk) = buffered.pop_front() {
                let all = pending.as_ref().is_some_and(|p| p.has_all());
                if buffered.is_empty() && (all || body.is_end_stream()) {
                    if let Some(p) = pending.take() {
                        p.complete();
                    }
                }
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            let frame = std::task::ready!(body.as_mut().poll_frame(cx));
            match &frame {
                Some(Ok(f)) => {
                    if let (Some(data), Some(p)) = (f.data_ref(), pending.as_mut()) {
                        if !p.push(data) {
                            if let Some(p) = pending.take() {
                                p.too_long();
                            }
                        }
                    }
                    // A server stops polling once the body says it has
                    // ended, so that is when the response is complete;
                    // or once it has all it announced.
                    if body.is_end_stream() || pending.as_ref().is_some_and(|p| p.has_all()) {
                        if let Some(p) = pending.take() {
                            p.complete();
                        }
                    }
                }
                // Nothing partial is stored; the flight failed.
                Some(Err(_)) => {
                    if let Some(p) = pending.take() {
                        p.fail();
                    }
                }
                None => {
                    if let Some(p) = pending.take() {
                        p.complete();
                    }
                }
            }
            Poll::Ready(frame)
        }
        KindProj::Slice { body, skip, left } => loop {
            if *left == 0 {
                return Poll::Ready(None);
            }
            match std::task::ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers belong to the whole; a range has none.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let n = data.len() as u64;
                    if *skip >= n {
                        *skip -= n;
                        continue;
                    }
                    // Both below `n`, a usize.
                    let from = *skip as usize;
                    let take = (n - *skip).min(*left) as usize;
                    *skip = 0;
                    *left -= take as u64;
                    return Poll::Ready(Some(Ok(Frame::data(data.slice(from..from + take)))));
                }
                other => return Poll::Ready(other),
            }
        },
        KindProj::Replay {
            buffered,
            error,
            rest,
        } => {
            if let Some(chunk) = buffered.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if let Some(e) = error.take() {
                return Poll::Ready(Some(Err(e)));
            }
            match rest {
                Some(body) => body.as_mut().poll_frame(cx),
                None => Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};

    fn chunked(parts: &[&'static str]) -> ResponseBody<Empty<Bytes>> {
        let chunks = parts.iter().map(|p| Bytes::from_static(p.as_bytes()));
        ResponseBody::replay(chunks.collect(), None, None)
    }

    async fn read(body: ResponseBody<Empty<Bytes>>) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_streamed_slice_crosses_chunks_and_ends_at_its_length() {
        let cases: &[(u64, u64, &str)] = &[
            (2, 5, "cdefg"),
            (7, 3, "hij"),
            (0, 10, "abcdefghij"),
            (3, 1, "d"),
            (9, 1, "j"),
        ];
        for (start, len, want) in cases {
            let body = chunked(&["abc", "defg", "hij"]).slice(*start, *len);
            assert_eq!(body.size_hint().exact(), Some(*len));
            assert_eq!(read(body).await, want.as_bytes(), "{start}+{len}");
        }
    }

    #[tokio::test]
    async fn a_stored_slice_is_cut_in_place() {
        let body: ResponseBody<Empty<Bytes>> =
            ResponseBody::stored(Bytes::from_static(b"abcdefghij"));
        let part = body.slice(4, 3);
        assert!(matches!(part.kind, Kind::Stored { .. }));
        assert_eq!(read(part).await, "efg".as_bytes());
    }
}
