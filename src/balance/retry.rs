use std::any::Any;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Extensions, Method, Request, Uri, Version};
use http_body::Body;

use super::endpoint::now_ms;

/// When a failed request is sent again to another endpoint.
///
/// A retry happens only when the inner service failed before giving
/// response headers (a connection refused or reset, a timeout), the method
/// is idempotent (RFC 9110 §9.2.2: `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`,
/// `DELETE`; never `POST` or `PATCH`), the body can be replayed (its type
/// is one the balancer knows, see [`ReplayBody`]), and the retry budget
/// allows it. Each retry goes to an endpoint this request has not tried
/// yet. A body of any other type is simply never retried: balancing works
/// with every body type.
///
/// The budget caps retries at [`ratio`](Self::budget) of recent requests
/// plus a floor per second, so a dead cluster costs at most that much extra
/// load instead of multiplying it.
///
/// **One default everywhere:** [`Balance::new`](super::Balance::new),
/// [`BalanceLayer`](super::BalanceLayer) and the proxy all start with
/// [`Retries::new`]. Clones share one budget (the budget is state, not
/// configuration), so a `Retries` handed to several services caps their
/// retries together.
///
/// # Example
///
/// ```
/// use tower_ssr::balance::Retries;
///
/// // At most one retry per request, within 10 % of requests plus 5 per second.
/// let retries = Retries::new().max_retries(1).budget(0.1, 5);
/// assert_eq!(retries.max(), 1);
/// // Clones share the budget.
/// let shared = retries.clone();
/// assert!(shared.shares_budget_with(&retries));
/// assert_eq!(Retries::none().max(), 0);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Retries {
    pub(crate) max: u32,
    ratio: f64,
    floor: u32,
    // Shared by clones: one budget however many services hold it.
    budget: Arc<Budget>,
    // Body types registered with `replay_body`, beyond the built-in ones.
    replayers: Arc<[Replayer]>,
}

#[derive(Debug)]
struct Budget {
    /// Retry tokens in thousandths.
    tokens: AtomicI64,
    /// Second (of [`now_ms`]) of the last floor refill.
    refilled: AtomicU64,
}

impl Budget {
    fn new(floor: u32) -> Arc<Self> {
        Arc::new(Budget {
            tokens: AtomicI64::new(i64::from(floor) * 1000),
            refilled: AtomicU64::new(0),
        })
    }
}

impl Default for Retries {
    fn default() -> Self {
        Self::new()
    }
}

impl Retries {
    /// Up to 2 retries per request, within 20 % of requests plus 10 per
    /// second. The default of every entry point.
    pub fn new() -> Self {
        Retries {
            max: 2,
            ratio: 0.2,
            floor: 10,
            budget: Budget::new(10),
            replayers: Arc::new([]),
        }
    }

    /// Never retries.
    pub fn none() -> Self {
        Self::new().max_retries(0)
    }

    /// The most retries of one request.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max = n;
        self
    }

    /// The most retries of one request (0: retries are off).
    #[must_use]
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Retries may add `ratio` (0.0 to 1.0, clamped) of the requests, plus
    /// `floor_per_second` so that a quiet service can still retry. Starts a
    /// new budget (earlier clones keep the old one).
    pub fn budget(mut self, ratio: f64, floor_per_second: u32) -> Self {
        self.ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.floor = floor_per_second;
        self.budget = Budget::new(floor_per_second);
        self
    }

    /// Whether `self` and `other` draw on the same budget (one is a clone
    /// of the other).
    #[must_use]
    pub fn shares_budget_with(&self, other: &Retries) -> bool {
        Arc::ptr_eq(&self.budget, &other.budget)
    }

    /// Also replays request bodies of type `B` (a body type of your own
    /// that implements [`ReplayBody`]). The built-in types need no
    /// registration; see [`ReplayBody`].
    pub fn replay_body<B: ReplayBody + 'static>(mut self) -> Self {
        let mut v: Vec<Replayer> = self.replayers.to_vec();
        v.push(Replayer(replay_as::<B>));
        self.replayers = v.into();
        self
    }

    /// A copy of `body` for a retry: `None` when its type is not one the
    /// balancer can replay, or this value cannot be sent twice.
    pub(crate) fn replay<B: 'static>(&self, body: &B) -> Option<B> {
        let mut out: Option<B> = None;
        for r in BUILT_IN.iter().chain(self.replayers.iter()) {
            if (r.0)(body, &mut out) {
                return out;
            }
        }
        None
    }

    fn cap(&self) -> i64 {
        (i64::from(self.floor) + 100) * 1000
    }

    /// Every request adds `ratio` of a token.
    pub(crate) fn deposit(&self) {
        if self.max == 0 {
            return;
        }
        let add = (self.ratio * 1000.0) as i64;
        if add > 0 {
            let cap = self.cap();
            let _ = self
                .budget
                .tokens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    (t < cap).then_some((t + add).min(cap))
                });
        }
    }

    /// Takes one token for a retry, if there is one.
    pub(crate) fn withdraw(&self) -> bool {
        self.withdraw_at(now_ms() / 1000)
    }

    fn withdraw_at(&self, sec: u64) -> bool {
        let b = &*self.budget;
        let last = b.refilled.load(Ordering::Relaxed);
        if sec != last
            && self
                .budget
                .refilled
                .compare_exchange(last, sec, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let floor = i64::from(self.floor) * 1000;
            let _ = self
                .budget
                .tokens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    (t < floor).then_some(floor)
                });
        }
        b.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
    }
}

/// Idempotent methods (RFC 9110 §9.2.2): the only ones a proxy may retry on
/// its own.
pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A request body the balancer can send again to another endpoint.
///
/// Only retries need it: [`Balance`](super::Balance) serves requests of
/// every body type, and retries the ones whose type it knows. Built in:
/// `String`, `http_body_util::Full<D>` and `Empty<D>` (`D: Buf + Clone`),
/// `http_body_util::combinators::BoxBody` / `UnsyncBoxBody` (`Bytes` data,
/// when already at their end), hyper's `Incoming` (never: it cannot be
/// copied), `axum::body::Body` (with the `axum` feature, when already at
/// its end: a `GET` without content) and the proxy's own body. For a body
/// type of your own, implement this trait and register it with
/// [`Retries::replay_body`]. (`()` and `Bytes` are not `http_body::Body`
/// types; use `Empty<Bytes>` and `Full<Bytes>`.)
///
/// A streaming body with content is never replayed: its bytes are gone once
/// sent.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_ssr::balance::{ReplayBody, Retries};
///
/// let body = Full::new(Bytes::from_static(b"form=1"));
/// assert!(body.try_replay().is_some());
///
/// // A body type of your own: implement the trait, then register it.
/// # #[derive(Clone)]
/// # struct MyBody(String);
/// # impl http_body::Body for MyBody {
/// #     type Data = Bytes;
/// #     type Error = std::convert::Infallible;
/// #     fn poll_frame(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>)
/// #         -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
/// #         std::task::Poll::Ready(None)
/// #     }
/// # }
/// impl ReplayBody for MyBody {
///     fn try_replay(&self) -> Option<Self> {
///         Some(self.clone())
///     }
/// }
/// let retries = Retries::new().replay_body::<MyBody>();
/// # let _ = retries;
/// ```
pub trait ReplayBody: Body + Sized {
    /// A copy to send on a retry, or `None` when this body cannot be sent
    /// twice.
    fn try_replay(&self) -> Option<Self>;
}

/// Copies a body of one known type: `body` is a `&B`, `out` an
/// `&mut Option<B>`; false when `B` is not the type this replayer knows.
#[derive(Clone, Copy)]
struct Replayer(fn(&dyn Any, &mut dyn Any) -> bool);

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replayer")
    }
}

fn replay_as<R: ReplayBody + 'static>(body: &dyn Any, out: &mut dyn Any) -> bool {
    match (body.downcast_ref::<R>(), out.downcast_mut::<Option<R>>()) {
        (Some(b), Some(o)) => {
            *o = b.try_replay();
            true
        }
        _ => false,
    }
}

/// The body types every `Retries` can replay, most common first.
static BUILT_IN: &[Replayer] = &[
    #[cfg(feature = "proxy")]
    Replayer(replay_as::<crate::proxy::ProxyBody>),
    #[cfg(feature = "axum")]
    Replayer(replay_as::<axum::body::Body>),
    Replayer(replay_as::<http_body_util::Empty<bytes::Bytes>>),
    Replayer(replay_as::<http_body_util::Full<bytes::Bytes>>),
    Replayer(replay_as::<String>),
    Replayer(replay_as::<http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>>),
    Replayer(replay_as::<http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>>),
];

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ReplayBody for String {
    fn try_replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D: bytes::Buf> ReplayBody for http_body_util::Empty<D> {
    fn try_replay(&self) -> Option<Self> {
        Some(http_body_util::Empty::new())
    }
}

impl<D: bytes::Buf + Clone> ReplayBody for http_body_util::Full<D> {
    fn try_replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::BoxBody<D, E>
where
    D: bytes::Buf + Send + 'static,
    E: 'static,
{
    fn try_replay(&self) -> Option<Self> {
        use http_body_util::BodyExt;
        self.is_end_stream().then(|| {
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed()
        })
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::UnsyncBoxBody<D, E>
where
    D: bytes::Buf + Send + 'static,
    E: 'static,
{
    fn try_replay(&self) -> Option<Self> {
        use http_body_util::BodyExt;
        self.is_end_stream().then(|| {
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync()
        })
    }
}

#[cfg(feature = "proxy")]
impl ReplayBody for hyper::body::Incoming {
    /// Never: hyper offers no way to make a second `Incoming`. Behind
    /// [`ReverseProxy`](crate::proxy::ReverseProxy) requests are retried
    /// anyway, since it buffers small bodies first.
    fn try_replay(&self) -> Option<Self> {
        None
    }
}

#[cfg(feature = "axum")]
impl ReplayBody for axum::body::Body {
    fn try_replay(&self) -> Option<Self> {
        self.is_end_stream().then(axum::body::Body::empty)
    }
}

/// What a retry sends again: the request's head with its header fields
/// as a plain list, and a replayed body. Kept for every request that may
/// be retried and dropped unused by nearly all of them, so it is cheaper
/// to make than a `HeaderMap` clone (one allocation instead of two, no
/// hash index); a retry rebuilds the map from it.
pub(crate) struct Spare<B> {
    method: Method,
    uri: Uri,
    version: Version,
    // In the map's order: each name's values stay in order.
    headers: Vec<(HeaderName, HeaderValue)>,
    extensions: Extensions,
    body: B,
}

impl<B: 'static> Spare<B> {
    /// A spare of `req`, when its body can be replayed.
    pub(crate) fn of(retries: &Retries, req: &Request<B>) -> Option<Self> {
        let body = retries.replay(req.body())?;
        let mut headers = Vec::with_capacity(req.headers().len());
        headers.extend(req.headers().iter().map(|(n, v)| (n.clone(), v.clone())));
        Some(Spare {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers,
            extensions: req.extensions().clone(),
            body,
        })
    }

    /// A request from this spare, keeping it for a further retry; `None`
    /// if the body cannot be replayed again.
    pub(crate) fn request(&self, retries: &Retries) -> Option<Request<B>> {
        let body = retries.replay(&self.body)?;
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = collect_headers(self.headers.len(), self.headers.iter().cloned());
        *req.extensions_mut() = self.extensions.clone();
        Some(req)
    }

    /// The request itself, for the last retry.
    pub(crate) fn into_request(self) -> Request<B> {
        let Spare {
            method,
            uri,
            version,
            headers,
            extensions,
            body,
        } = self;
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = collect_headers(headers.len(), headers);
        *req.extensions_mut() = extensions;
        req
    }
}

fn collect_headers(
    len: usize,
    fields: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(len);
    for (name, value) in fields {
        map.append(name, value);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_rebuilds_the_request_with_every_field_in_order() {
        let req = Request::put("http://a.example/x?y=1")
            .version(Version::HTTP_10)
            .header("accept", "text/html")
            .header("x-list", "1")
            .header("cookie", "a=1")
            .header("x-list", "2")
            .extension(7u32)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"form",
            )))
            .unwrap();
        let spare = Spare::of(&Retries::new(), &req).unwrap();
        let again = spare.request(&Retries::new()).unwrap();
        let last = spare.into_request();
        for r in [&again, &last] {
            assert_eq!(r.method(), Method::PUT);
            assert_eq!(r.uri(), req.uri());
            assert_eq!(r.version(), Version::HTTP_10);
            assert_eq!(r.headers(), req.headers());
            let list: Vec<_> = r.headers().get_all("x-list").iter().collect();
            assert_eq!(list, ["1", "2"]);
            assert_eq!(r.extensions().get::<u32>(), Some(&7));
        }
    }

    #[test]
    fn only_idempotent_methods_are_retried() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
            assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }

    #[test]
    fn budget_allows_the_floor_then_the_ratio() {
        let r = Retries::new().budget(0.5, 2);
        assert!(r.withdraw_at(7));
        assert!(r.withdraw_at(7));
        assert!(!r.withdraw_at(7));
        // two requests earn one retry at 50 %
        r.deposit();
        r.deposit();
        assert!(r.withdraw_at(7));
        assert!(!r.withdraw_at(7));
        // a new second refills the floor
        assert!(r.withdraw_at(8));
    }

    #[test]
    fn clones_share_one_budget() {
        let a = Retries::new().budget(0.0, 1);
        let b = a.clone();
        assert!(a.withdraw_at(3));
        assert!(!b.withdraw_at(3), "the clone drew on the same budget");
    }

    #[test]
    fn known_bodies_are_replayed_and_others_are_not() {
        let r = Retries::new();
        assert_eq!(r.replay(&String::from("x")).as_deref(), Some("x"));
        let full = http_body_util::Full::new(bytes::Bytes::from_static(b"x"));
        assert!(r.replay(&full).is_some());
        #[derive(Debug)]
        struct Other;
        assert!(r.replay(&Other).is_none());
    }

    #[test]
    fn deposits_are_capped() {
        let r = Retries::new().budget(1.0, 0);
        for _ in 0..10_000 {
            r.deposit();
        }
        let mut n = 0;
        while r.withdraw_at(0) {
            n += 1;
        }
        assert!((100..=101).contains(&n), "{n}");
    }
}
