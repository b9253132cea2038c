//! Warming: renders a list of pages through the cache's normal miss path
//! (coalescing, the Redis tier and its render lock, storing rules), a few
//! at a time, e.g. from a sitemap after a deploy.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::{Cache, CacheOutcome, ResponseBody};

/// What [`Cache::warm`] did with the requests it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Warmed {
    /// Requests sent through the cache.
    pub requested: usize,
    /// Responses rendered (or validated) and stored by this warm-up.
    pub stored: usize,
    /// Requests answered from what was stored already (fresh or stale, in
    /// memory or Redis, or by another request in flight for the key).
    pub cached: usize,
    /// Responses rendered but not stored (not cacheable, too large, an
    /// error status, ...).
    pub not_stored: usize,
    /// Requests whose inner service failed or whose body broke off.
    pub failed: usize,
}

impl<S> Cache<S> {
    /// Sends `requests` through this cache, at most `concurrency` at a time
    /// (at least 1), reads each response body to the end (a streamed body
    /// is stored as it is read) and reports what happened.
    ///
    /// Each request goes the way a client's would: a page fresh in memory
    /// or in Redis is not rendered again, concurrent requests for one key
    /// render once, and the stored response follows the usual rules. Build
    /// requests as clients send them: a `GET` with the `Host` (and any
    /// header the pages `Vary` on) of the site, e.g.
    /// `Request::get("/posts/1").header("host", "shop.example")`.
    /// "Stored" is read from the response's `Cache-Status` (`stored`).
    /// Needs no runtime of its own: the requests are polled on the
    /// caller's task.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use tower::{service_fn, Layer};
    /// # use tower_ssr::cache::{CacheLayer, ResponseCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let render = service_fn(|_req: http::Request<String>| async {
    ///     let res = http::Response::builder()
    ///         .header("cache-control", "public, max-age=60")
    ///         .body(String::from("<p>hello</p>"))
    ///         .unwrap();
    ///     Ok::<_, Infallible>(res)
    /// });
    /// let svc = CacheLayer::new(ResponseCache::new()).layer(render);
    /// let pages = ["/", "/about", "/posts/1"].map(|p| {
    ///     http::Request::get(p)
    ///         .header("host", "shop.example")
    ///         .body(String::new())
    ///         .unwrap()
    /// });
    /// let warmed = svc.warm(pages, 8).await;
    /// assert_eq!((warmed.requested, warmed.stored), (3, 3));
    /// # }
    /// ```
    pub async fn warm<ReqBody, ResBody, I>(&self, requests: I, concurrency: usize) -> Warmed
    where
        Self: Service<Request<ReqBody>, Response = Response<ResponseBody<ResBody>>> + Clone,
        ResBody: Body<Data = Bytes>,
        I: IntoIterator<Item = Request<ReqBody>>,
    {
        let concurrency = concurrency.max(1);
        let mut requests = requests.into_iter();
        let mut report = Warmed::default();
        // Boxed: one allocation per warmed page, off the request path.
        let mut running: Vec<Pin<Box<dyn Future<Output = Kind> + '_>>> = Vec::new();
        loop {
            while running.len() < concurrency {
                let Some(req) = requests.next() else { break };
                report.requested += 1;
                let mut svc = self.clone();
                running.push(Box::pin(async move { one(&mut svc, req).await }));
            }
            if running.is_empty() {
                return report;
            }
            let done = poll_fn(|cx| {
                for i in 0..running.len() {
                    if let Poll::Ready(kind) = running[i].as_mut().poll(cx) {
                        drop(running.swap_remove(i));
                        return Poll::Ready(kind);
                    }
                }
                Poll::Pending
            })
            .await;
            match done {
                Kind::Stored => report.stored += 1,
                Kind::Cached => report.cached += 1,
                Kind::NotStored => report.not_stored += 1,
                Kind::Failed => report.failed += 1,
            }
        }
    }
}

/// What became of one warmed request.
enum Kind {
    Stored,
    Cached,
    NotStored,
    Failed,
}

async fn one<S, ReqBody, ResBody>(svc: &mut S, req: Request<ReqBody>) -> Kind
where
    S: Service<Request<ReqBody>, Response = Response<ResponseBody<ResBody>>>,
    ResBody: Body<Data = Bytes>,
{
    if poll_fn(|cx| svc.poll_ready(cx)).await.is_err() {
        return Kind::Failed;
    }
    let Ok(res) = svc.call(req).await else {
        return Kind::Failed;
    };
    let stored = res
        .headers()
        .get_all("cache-status")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|member| member.split(';').any(|p| p.trim() == "stored"));
    let outcome = res.extensions().get::<CacheOutcome>().copied();
    let mut body = std::pin::pin!(res.into_body());
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if frame.is_err() {
            return Kind::Failed;
        }
    }
    match outcome {
        _ if stored => Kind::Stored,
        Some(CacheOutcome::Revalidated) => Kind::Stored,
        Some(CacheOutcome::Hit | CacheOutcome::Stale | CacheOutcome::Coalesced) => Kind::Cached,
        _ => Kind::NotStored,
    }
}
