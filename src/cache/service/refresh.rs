//! Background work: `stale-while-revalidate` refreshes on the executor, and
//! a render that goes on for its waiters after the leading client left.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
    PRAGMA, RANGE,
};
use http::{Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use crate::cache::body::ResponseBody;
use crate::cache::entry::RequestDirectives;
use crate::cache::flight::Lead;
use crate::cache::handoff;
use crate::cache::observe::{self};
use crate::cache::tee::Pending;

use super::{call::Job, fetch::fetch};

/// Starts a `stale-while-revalidate` refresh on the executor.
pub(super) fn refresh_in_background<S, ReqBody, B>(mut svc: S, mut job: Job<ReqBody>, lead: Lead)
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    let Some(executor) = job.config.executor.clone() else {
        return;
    };
    // The refresh is the cache's own request (RFC 5861 §3): a plain GET
    // validated with the stored validators (RFC 9111 §4.3.1, added by
    // `fetch`), not the client's range, preconditions or directives, whose
    // answers (206, 412, a response not to store) would refresh nothing.
    // A header the stored variant varies on stays, to refresh that variant.
    let varies_on = |name: &http::HeaderName| {
        job.stale
            .as_ref()
            .is_some_and(|e| e.vary.iter().any(|(n, _)| n == name))
    };
    for name in [
        RANGE,
        IF_RANGE,
        IF_MATCH,
        IF_UNMODIFIED_SINCE,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        CACHE_CONTROL,
        PRAGMA,
    ] {
        if !varies_on(&name) {
            job.parts.headers.remove(name);
        }
    }
    job.req_cc = RequestDirectives::default();
    tracing::debug!(key = %job.key, "background refresh");
    let limit = job.config.lock_timeout;
    let span = observe::refresh_span(&job.flight_key);
    let refresh = async move {
        if poll_fn(|cx| svc.poll_ready(cx)).await.is_err() {
            return; // the lead guard drops: a later request tries again
        }
        // The response only matters for what it stores: read its body to
        // the end, since a streamed one is stored as it is read.
        // Another instance may have refreshed it already, or be refreshing
        // it under the render lock: one render per key across instances.
        #[cfg(feature = "redis")]
        let mut lead = lead;
        #[cfg(feature = "redis")]
        if let Some(tier) = job.shared.l2.clone() {
            use crate::cache::flight::Outcome;
            use crate::cache::l2::BeforeRefresh;
            let found = tier
                .before_refresh(&job.shared, job.wanted(), &mut lead)
                .await;
            match found {
                BeforeRefresh::Found(entry) => {
                    // The same page again, without the codings this
                    // instance made of it (they did not fit Redis, or the
                    // other instance makes none): they are kept rather
                    // than made again at every refresh.
                    #[cfg(feature = "compression")]
                    let entry = with_codings_kept(&job.shared.store, &job.key, entry);
                    if entry.body.len() <= job.config.max_body
                        && job
                            .shared
                            .store
                            .insert(&job.key, std::sync::Arc::clone(&entry))
                    {
                        // As when a request finds it there: a copy stored
                        // without its codings gets them made here.
                        #[cfg(feature = "compression")]
                        if let Some(c) = job.config.compressor() {
                            c.queue(&job.shared, &job.key, &entry);
                        }
                        lead.finish(Outcome::Stored);
                        return;
                    }
                }
                // The lead drops: a later request's refresh finds it.
                BeforeRefresh::Skip => return,
                BeforeRefresh::Render => {}
            }
        }
        if let Ok(res) = fetch(&mut svc, job, Some(lead), None).await {
            let mut body = std::pin::pin!(res.into_body());
            while let Some(Ok(_)) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {}
        }
    };
    let refresh = refresh.instrument(span);
    executor.execute(Box::pin(async move {
        // No client waits on a refresh to hang up: a fetch or a body that
        // never ends would hold the key's flight for good. Past the limit
        // the refresh is dropped, and with it the lead: a later request
        // fetches the page.
        #[cfg(feature = "tokio")]
        if tokio::runtime::Handle::try_current().is_ok() {
            if tokio::time::timeout(limit, refresh).await.is_err() {
                tracing::debug!("background refresh given up after the lock timeout");
            }
            return;
        }
        #[cfg(not(feature = "tokio"))]
        let _ = limit;
        refresh.await;
    }));
}

/// What the leader's detached fetch hands back to the leader's future.
pub(super) enum Handed<S, ReqBody, T> {
    /// The fetch ran: its result (a response's body still to stream).
    Done(T),
    /// The executor dropped the task unrun: the leader fetches itself.
    /// Boxed: the rare case.
    Unrun(Box<(S, Job<ReqBody>, Lead)>),
}

/// Gives the leader's job back if the task carrying it is dropped unrun
/// (`TokioExecutor` outside a runtime, a user executor shutting down).
pub(super) struct Unrun<S, ReqBody, T> {
    job: Option<(S, Job<ReqBody>, Lead)>,
    tx: Option<handoff::Sender<Handed<S, ReqBody, T>>>,
}

impl<S, ReqBody, T> Drop for Unrun<S, ReqBody, T> {
    fn drop(&mut self) {
        if let (Some((inner, job, lead)), Some(tx)) = (self.job.take(), self.tx.take()) {
            let _ = tx.send(Handed::Unrun(Box::new((inner, job, lead))));
        }
    }
}

/// The coalescing leader's fetch (§8(c) of issue 8: when the leader's
/// client goes away, the render goes on for the waiters; one origin call,
/// not two).
///
/// With an executor (the `tokio` feature, or [`CacheLayer::executor`]) the
/// fetch runs as a task of its own and hands the response to this future.
/// If the client hangs up first, the task goes on: it stores the response
/// (reading its body to the end, as it does when the client leaves mid-body,
/// see `detach`) and releases the waiters, within the lock timeout and the
/// storing cap. Without an executor the fetch runs here, as before: if this
/// client hangs up, the flight is abandoned and one waiter takes over.
///
/// [`CacheLayer::executor`]: crate::cache::CacheLayer::executor
pub(super) async fn lead_fetch<S, ReqBody, B>(
    mut inner: S,
    job: Job<ReqBody>,
    lead: Lead,
    collapsed: Option<bool>,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    let Some(executor) = job.config.executor.clone() else {
        return fetch(&mut inner, job, Some(lead), collapsed).await;
    };
    let (tx, rx) = handoff::channel();
    let limit = job.config.lock_timeout;
    let mut unrun = Unrun {
        job: Some((inner, job, lead)),
        tx: Some(tx),
    };
    let task = async move {
        let (Some((mut inner, job, lead)), Some(tx)) = (unrun.job.take(), unrun.tx.take()) else {
            return;
        };
        let fetched = fetch(&mut inner, job, Some(lead), collapsed);
        let mut fetched = std::pin::pin!(fetched);
        let mut deadline = Deadline::default();
        // The fetch runs to its end while the client waits; once the
        // client has gone, for at most the lock timeout.
        let result = poll_fn(|cx| {
            if let Poll::Ready(r) = fetched.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            if tx.poll_closed(cx) && deadline.expired(cx, limit) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let Some(result) = result else {
            tracing::debug!("leader's fetch given up after the lock timeout");
            return;
        };
        if let Err(Handed::Done(Ok(res))) = tx.send(Handed::Done(result)) {
            // The client hung up: a body being stored is read on for the
            // waiters (see `detach`); any other is dropped unread.
            let mut body = res.into_body();
            body.detach_on_drop(detach::<B>);
        }
    };
    let span = tracing::Span::current();
    executor.execute(Box::pin(task.instrument(span)));
    match rx.await {
        // Should this client leave mid-body, the rest is read for the
        // waiters all the same.
        Some(Handed::Done(result)) => result.map(|mut res| {
            res.body_mut().detach_on_drop(detach::<B>);
            res
        }),
        Some(Handed::Unrun(unrun)) => {
            let (mut inner, job, lead) = *unrun;
            fetch(&mut inner, job, Some(lead), collapsed).await
        }
        // The task was dropped while running (the runtime shuts down):
        // its lead went with it, so the waiters take over; this client
        // gets a clean answer rather than a hang.
        None => {
            let mut res = Response::new(ResponseBody::empty());
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok(res)
        }
    }
}

/// The rest of a leader's body whose client hung up mid-body: read in the
/// background so that it is stored and the waiters get it. Without an
/// executor the body is dropped, and one waiter takes over.
pub(super) fn detach<B>(body: Pin<Box<B>>, pending: Box<Pending>)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    let Some(executor) = pending.config.executor.clone() else {
        return;
    };
    let (cap, limit) = (pending.config.max_body, pending.config.lock_timeout);
    tracing::debug!(key = %pending.key, "client left mid-body: reading the rest to store it");
    let rest = ResponseBody::tee_boxed(VecDeque::new(), body, pending);
    executor.execute(Box::pin(drain(rest, cap, limit)));
}

/// Reads a body to its end for what it stores, giving up past `cap` bytes
/// (it can no longer be stored) or, with tokio's timer, after `limit`.
/// Dropping it unfinished ends its flight as abandoned.
pub(super) async fn drain<B: Body<Data = Bytes>>(body: B, cap: usize, limit: std::time::Duration) {
    let mut body = std::pin::pin!(body);
    let mut read = 0usize;
    let mut deadline = Deadline::default();
    poll_fn(|cx| loop {
        if deadline.expired(cx, limit) {
            tracing::debug!("background body read given up after the lock timeout");
            return Poll::Ready(());
        }
        match std::task::ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                read = read.saturating_add(frame.data_ref().map_or(0, Bytes::len));
                if read > cap {
                    return Poll::Ready(());
                }
            }
            Some(Err(_)) | None => return Poll::Ready(()),
        }
    })
    .await;
}

/// A timer started on first use: tokio's, when the `tokio` feature is on
/// and a runtime is running; otherwise it never expires.
#[derive(Default)]
pub(super) struct Deadline {
    #[cfg(feature = "tokio")]
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    #[cfg_attr(not(feature = "tokio"), allow(unused_variables))]
    fn expired(&mut self, cx: &mut Context<'_>, limit: std::time::Duration) -> bool {
        #[cfg(feature = "tokio")]
        {
            if self.sleep.is_none() && tokio::runtime::Handle::try_current().is_ok() {
                self.sleep = Some(Box::pin(tokio::time::sleep(limit)));
            }
            if let Some(sleep) = self.sleep.as_mut() {
                return sleep.as_mut().poll(cx).is_ready();
            }
        }
        false
    }
}

/// `entry` (a copy read from Redis) with the codings of the variant of
/// `key` in memory whose body has the same bytes, when it has none of its
/// own; their headers follow `entry`'s (as after a 304).
#[cfg(all(feature = "redis", feature = "compression"))]
fn with_codings_kept(
    store: &crate::cache::store::Store,
    key: &str,
    entry: std::sync::Arc<crate::cache::entry::Entry>,
) -> std::sync::Arc<crate::cache::entry::Entry> {
    if entry.reprs.is_some() {
        return entry;
    }
    let Some(reprs) = store
        .coded_with_body(key, &entry.body)
        .and_then(|coded| coded.reprs.clone())
    else {
        return entry;
    };
    std::sync::Arc::new(
        entry.with_representations(std::sync::Arc::new(reprs.rebase(&entry.headers))),
    )
}
