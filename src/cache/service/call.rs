//! `Cache::call`: the request is checked, keyed and looked up once, then
//! answered from a stored entry or handed to the miss path.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use crate::cache::body::ResponseBody;
use crate::cache::entry::{reuse, Entry, RequestDirectives, Reuse};
use crate::cache::fields::Present;
use crate::cache::future::ResponseFuture;
use crate::cache::handle::{Counters, ResponseCache, Shared};
use crate::cache::key::{write_key, write_uri_key};
use crate::cache::layer::Config;
use crate::cache::observe::{self, forwarded, seen};
use crate::cache::outcome::CacheOutcome::{self, Bypass, Hit, Miss, Stale};
use crate::cache::representation::stored::Wants;
use crate::cache::status::Fwd;
use crate::cache::store::Variants;
use crate::etag::Conditionals;

use super::{
    answer::{hit, take_range},
    miss::miss,
    passthrough::{forward_method, forward_uncacheable, pass},
    refresh::refresh_in_background,
};

/// Middleware that answers requests from a [`ResponseCache`]; built by
/// [`CacheLayer`](crate::cache::CacheLayer).
///
/// The inner service must be `Clone` and `Send` (axum's `Router` is): a
/// request that waits for another to fill the cache, or a background
/// refresh, calls a clone of it later. Its error type is kept.
#[derive(Debug, Clone)]
pub struct Cache<S> {
    inner: S,
    config: Arc<Config>,
    cache: ResponseCache,
}

impl<S> Cache<S> {
    pub(crate) fn from_parts(inner: S, config: Arc<Config>, cache: ResponseCache) -> Self {
        Cache {
            inner,
            config,
            cache,
        }
    }

    crate::macros::define_inner_service_accessors!();
}

/// Waits for the inner service's readiness. Only the miss path calls it,
/// inside its future: `Cache` itself is always ready (as axum's router and
/// tower's `Balance` are), so a concurrency limit or rate limiter inside the
/// cache throttles misses and never holds back a hit.
pub(super) async fn ready<S, R>(inner: &mut S) -> Result<(), S::Error>
where
    S: Service<R>,
{
    poll_fn(|cx| inner.poll_ready(cx)).await
}

/// Whether an answer says something about the moment rather than the
/// resource: a timeout (408), too early (425), a rate limit (429) or a
/// server error. Such an answer never replaces, evicts or stores anything,
/// never marks a key uncacheable, and counts as an error for
/// `stale-if-error` and for the flight's waiters (RFC 9111 §4.3.3 lets a
/// cache act as if the origin had not answered; RFC 5861 §4).
/// Awaits the inner service's readiness and calls it, adding the time the
/// call took to `upstream`.
pub(super) async fn send<S, ReqBody, B>(
    inner: &mut S,
    req: Request<ReqBody>,
    upstream: &mut Option<std::time::Duration>,
) -> Result<Response<B>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
{
    ready(inner).await?;
    let started = Instant::now();
    let result = inner.call(req).await;
    *upstream = Some(upstream.unwrap_or_default() + started.elapsed());
    result
}

pub(super) fn transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 425 | 429) || status.is_server_error()
}

/// What a lookup found for a request.
pub(super) enum Lookup {
    UriMiss,
    VaryMiss,
    /// The variants of the key and the index of the one that matched:
    /// kept as is so a hit clones no entry `Arc`.
    Found(Arc<Variants>, usize),
}

pub(super) fn lookup(
    shared: &Shared,
    key: &str,
    headers: &HeaderMap,
    extra: Option<&str>,
    has_auth: bool,
    now: Instant,
) -> Lookup {
    let Some(variants) = shared.store.get(key, now) else {
        return Lookup::UriMiss;
    };
    // §4: the most recent matching variant (later ones were stored later).
    match variants
        .list
        .iter()
        .rposition(|e| e.matches(headers, extra))
    {
        // §3.5: a response to another user's authenticated request is
        // shared only if it said so.
        Some(i) if has_auth && !variants.list[i].auth_ok => Lookup::VaryMiss,
        Some(i) => Lookup::Found(variants, i),
        None => Lookup::VaryMiss,
    }
}

/// Everything the miss path needs, moved into its future.
pub(super) struct Job<ReqBody> {
    pub(super) config: Arc<Config>,
    pub(super) shared: Arc<Shared>,
    pub(super) parts: Parts,
    pub(super) body: ReqBody,
    pub(super) key: String,
    pub(super) flight_key: String,
    pub(super) extra: Option<Box<str>>,
    /// The stored entry selected but not usable as is: validate it, or
    /// serve it on error where allowed.
    pub(super) stale: Option<Arc<Entry>>,
    pub(super) fwd: Fwd,
    pub(super) req_cc: RequestDirectives,
    pub(super) has_auth: bool,
    pub(super) conditionals: Option<Conditionals>,
    /// A background refresh: its answer goes to no client, so it is not
    /// reported as one.
    pub(super) refresh: bool,
    /// The client asked with HEAD: the inner service gets a GET, the
    /// client the head of the answer.
    pub(super) is_head: bool,
    /// The client's `Accept-Encoding` and `no-transform`, read before the
    /// request is rewritten for the inner service.
    pub(super) wants: Wants,
    /// A GET's `Range` and `If-Range`, taken off the request so that the
    /// inner service sends the whole response (which may be stored); the
    /// client's range is cut from it (see `miss`).
    pub(super) range: Option<HeaderMap>,
}

impl<ReqBody> Job<ReqBody> {
    /// What this request looks for in the Redis tier.
    #[cfg(feature = "redis")]
    pub(super) fn wanted(&self) -> crate::cache::l2::Wanted<'_> {
        crate::cache::l2::Wanted {
            key: &self.key,
            flight_key: &self.flight_key,
            headers: &self.parts.headers,
            extra: self.extra.as_deref(),
            req_cc: &self.req_cc,
        }
    }

    /// Looks the job's key up again (another request may have stored it
    /// meanwhile). Only requests without `Authorization` join a flight
    /// (see `coalesce`), hence `has_auth` false.
    pub(super) fn look_up(&self, now: Instant) -> Lookup {
        lookup(
            &self.shared,
            &self.key,
            &self.parts.headers,
            self.extra.as_deref(),
            false,
            now,
        )
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    /// Always ready: the inner service's readiness is awaited on the miss
    /// path only, inside the response future, so hits never wait for it.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let config = &*self.config;
        let shared = &self.cache.shared;

        // One authority for the key and for the inner service (RFC 9112
        // §3.2, §3.2.2): `Host` now names it, or the request is refused.
        // HTTP/1.0 without one has no key and bypasses below.
        if let Err(e) = crate::authority::normalize_host(&mut parts) {
            let mut res = Response::new(ResponseBody::empty());
            *res.status_mut() = e.status();
            return ResponseFuture::ready(res);
        }
        if !config.trust_forwarding_headers {
            crate::authority::remove_forwarding_headers(&parts.method, &mut parts.headers);
        }
        let present = Present::scan(&parts.headers);

        if parts.method != Method::GET && parts.method != Method::HEAD {
            // RFC 9111 §4: never answered from the cache.
            Counters::bump(&shared.counters.misses);
            let member = config.fwd_member(Fwd::Method, None, false, None);
            let Some(key) = checked_key(config, &parts) else {
                // A target that names no URI has nothing stored to
                // invalidate (and must not reach another URI's entry).
                return self.pass_inward(parts, body, member, Bypass);
            };
            let req = Request::from_parts(parts, body);
            let fwd = forward_method(self.inner.clone(), req, key, member, Arc::clone(shared));
            return ResponseFuture::miss(Box::pin(forwarded(
                Arc::clone(&self.config),
                Bypass,
                fwd,
            )));
        }

        if present.any(Present::CONTENT) && has_content(&parts.headers) {
            // A GET or HEAD with content: what the origin renders may depend
            // on content that no key covers (a form body injected into the
            // page), so it is neither answered from nor stored in the
            // cache. RFC 9110 §9.3.1: such content has no defined meaning.
            Counters::bump(&shared.counters.misses);
            let member = config.fwd_member(Fwd::Bypass, None, false, None);
            return self.pass_inward(parts, body, member, Bypass);
        }

        // A protocol upgrade (WebSocket, RFC 9110 §7.8) opens a tunnel: it
        // is never answered from the cache, stored or coalesced, and passes
        // untouched (hyper's upgrade handle rides in the extensions).
        if present.any(Present::UPGRADE) {
            let member = config.fwd_member(Fwd::Bypass, None, false, None);
            return self.pass_inward(parts, body, member, Bypass);
        }

        let extra = match &config.key_fn {
            None => Some(None),
            Some(f) => f(&parts).map(|s| Some(s.into_boxed_str())),
        };
        let req_cc = RequestDirectives::from_headers(
            present.view(Present::DIRECTIVES, &parts.headers),
            config.ignore_client_no_cache,
        );
        let has_auth = present.any(Present::AUTHORIZATION);
        let now = crate::date::monotonic_now();
        // The hit path builds its key in a per-thread buffer: no allocation.
        let found = KEY.with(|buf| {
            let mut buf = buf.borrow_mut();
            // No authority (HTTP/1.0 without Host), no key, no cache; a
            // Host that is there was validated by `normalize_host`.
            let host = parts.headers.get(HOST)?.to_str().ok()?;
            write_key(&mut buf, &parts.uri, host, config.query);
            let extra = extra.as_ref()?;
            (buf.len() <= config.max_key).then(|| {
                lookup(
                    shared,
                    &buf,
                    &parts.headers,
                    extra.as_deref(),
                    has_auth,
                    now,
                )
            })
        });
        let (Some(found), Some(extra)) = (found, extra) else {
            Counters::bump(&shared.counters.misses);
            let member = config.fwd_member(Fwd::Bypass, None, false, None);
            return self.pass_inward(parts, body, member, Bypass);
        };

        let mut fwd = Fwd::UriMiss;
        let mut stale = None;
        match found {
            // RFC 9111 §4.3.2: preconditions only the origin can evaluate
            // (`If-Match`, `If-Unmodified-Since`) are never answered from a
            // stored response, hit or miss: a download resumed with
            // `If-Match` against an older version must get the origin's 412,
            // not a range of the newer one.
            Lookup::Found(..) if present.any(Present::ORIGIN_CONDITIONAL) => fwd = Fwd::Request,
            Lookup::Found(variants, i) => {
                let entry = &variants.list[i];
                let reuse = reuse(&entry.fresh, &req_cc, now);
                if matches!(
                    reuse,
                    Reuse::Fresh | Reuse::StaleAccepted | Reuse::StaleWhileRevalidate
                ) {
                    // Recency for the variant eviction (no allocation).
                    variants.touch(i);
                }
                match reuse {
                    Reuse::Fresh => {
                        Counters::bump(&shared.counters.hits);
                        let response = hit(config, entry, &parts, present, now);
                        return ResponseFuture::ready(seen(config, response, Hit, None));
                    }
                    Reuse::StaleAccepted => {
                        Counters::bump(&shared.counters.hits);
                        Counters::bump(&shared.counters.stale);
                        let response = hit(config, entry, &parts, present, now);
                        return ResponseFuture::ready(seen(config, response, Stale, None));
                    }
                    Reuse::StaleWhileRevalidate if config.executor.is_some() => {
                        Counters::bump(&shared.counters.hits);
                        Counters::bump(&shared.counters.stale);
                        let response = hit(config, entry, &parts, present, now);
                        let response = seen(config, response, Stale, None);
                        let looked = Looked {
                            present,
                            extra,
                            req_cc,
                            has_auth,
                            fwd: Fwd::Stale,
                            stale: Some(Arc::clone(entry)),
                        };
                        self.refresh(parts, body, looked);
                        return ResponseFuture::ready(response);
                    }
                    Reuse::StaleWhileRevalidate | Reuse::ForwardStale => {
                        fwd = Fwd::Stale;
                        stale = Some(Arc::clone(entry));
                    }
                    Reuse::ForwardRequest => {
                        fwd = Fwd::Request;
                        stale = Some(Arc::clone(entry));
                    }
                }
            }
            Lookup::VaryMiss => fwd = Fwd::VaryMiss,
            Lookup::UriMiss => {}
        }
        let looked = Looked {
            present,
            extra,
            req_cc,
            has_auth,
            fwd,
            stale,
        };
        self.start_miss(parts, body, looked)
    }
}

/// What the lookup of a request left for its miss.
struct Looked {
    present: Present,
    extra: Option<Box<str>>,
    req_cc: RequestDirectives,
    has_auth: bool,
    fwd: Fwd,
    /// The stored entry selected but not usable as is.
    stale: Option<Arc<Entry>>,
}

impl<S> Cache<S> {
    /// Forwards a request untouched, its answer reported as `outcome`.
    fn pass_inward<ReqBody, ResBody>(
        &self,
        parts: Parts,
        body: ReqBody,
        member: HeaderValue,
        outcome: CacheOutcome,
    ) -> ResponseFuture<ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        let pass = pass(self.inner.clone(), Request::from_parts(parts, body), member);
        ResponseFuture::miss(Box::pin(forwarded(Arc::clone(&self.config), outcome, pass)))
    }

    /// Starts the background refresh of a `stale-while-revalidate` hit,
    /// unless one is in flight for the key.
    fn refresh<ReqBody, ResBody>(&self, parts: Parts, body: ReqBody, looked: Looked)
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        let shared = &self.cache.shared;
        let key = owned_key(&self.config, &parts);
        let flight_key = flight_key(&key, looked.extra.as_deref());
        let Some(lead) = shared.flights.try_lead(&flight_key) else {
            return;
        };
        let job = Job {
            config: Arc::clone(&self.config),
            shared: Arc::clone(shared),
            conditionals: None,
            parts: as_get(parts),
            body,
            key,
            flight_key,
            extra: looked.extra,
            stale: looked.stale,
            is_head: false,
            fwd: looked.fwd,
            req_cc: looked.req_cc,
            has_auth: looked.has_auth,
            refresh: true,
            wants: Wants::default(),
            range: None,
        };
        refresh_in_background(self.inner.clone(), job, lead);
    }

    /// A request the store could not answer: `only-if-cached` refused,
    /// origin-only preconditions and keys just seen uncacheable forwarded
    /// as they are, and the rest handed to the miss path.
    fn start_miss<ReqBody, ResBody>(
        &self,
        mut parts: Parts,
        body: ReqBody,
        looked: Looked,
    ) -> ResponseFuture<ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Send + 'static,
    {
        let config = &*self.config;
        let shared = &self.cache.shared;
        if looked.req_cc.only_if_cached {
            // §5.2.1.7; a locally generated response gets no Cache-Status
            // member (RFC 9211 §2).
            let mut res = Response::new(ResponseBody::empty());
            *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            return ResponseFuture::ready(res);
        }

        Counters::bump(&shared.counters.misses);
        // A HEAD miss goes inward as a GET (as nginx's
        // `proxy_cache_convert_head`): what comes back is the GET response,
        // stored for later GETs and HEADs, and the HEAD gets its head, so a
        // HEAD carries the validators and length the GET would, cached or
        // not (a content ETag made from an empty HEAD body would differ).
        // Origin-only preconditions (RFC 9111 §4.3.2) go inward untouched,
        // with any `Range` beside them.
        if looked.present.any(Present::ORIGIN_CONDITIONAL) {
            let member = config.fwd_member(looked.fwd, None, false, None);
            return self.pass_inward(parts, body, member, Miss);
        }
        let key = owned_key(config, &parts);
        let flight_key = flight_key(&key, looked.extra.as_deref());
        if looked.stale.is_none() && shared.is_uncacheable(&flight_key) {
            // Just seen uncacheable: straight through, as if there were no
            // cache, without queueing or copying anything for a store. A
            // `Range` goes too: the origin answers it.
            let member = config.fwd_member(looked.fwd, None, false, None);
            let req = Request::from_parts(parts, body);
            let shared = Arc::clone(shared);
            let config = Arc::clone(&self.config);
            let fwd =
                forward_uncacheable(self.inner.clone(), req, member, config, shared, flight_key);
            return ResponseFuture::miss(Box::pin(forwarded(Arc::clone(&self.config), Miss, fwd)));
        }
        // A range miss asks for the whole (as nginx's `proxy_cache` does):
        // what comes back may be stored, and the range is cut from it.
        let is_head = parts.method == Method::HEAD;
        let range = take_range(&mut parts.headers, is_head);
        let mut wants = Wants::from_headers(&parts.headers);
        wants.range = range.is_some();
        let job = Job {
            config: Arc::clone(&self.config),
            shared: Arc::clone(shared),
            conditionals: Conditionals::from_request(&parts.method, &parts.headers),
            wants,
            range,
            is_head,
            flight_key,
            parts,
            body,
            key,
            extra: looked.extra,
            stale: looked.stale,
            fwd: looked.fwd,
            req_cc: looked.req_cc,
            has_auth: looked.has_auth,
            refresh: false,
        };
        let span = observe::miss_span(&job.flight_key);
        ResponseFuture::miss(Box::pin(miss(self.inner.clone(), job).instrument(span)))
    }
}

/// Whether a request says it carries content (RFC 9112 §6.1, §6.2): any
/// `Transfer-Encoding`, or a `Content-Length` other than 0 (an invalid one
/// counts as content: it cannot be shown to be empty).
pub(crate) fn has_content(headers: &HeaderMap) -> bool {
    headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().trim_ascii() != b"0")
}

thread_local! {
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The key of a request the hit path has already checked with
/// `write_uri_key`.
pub(super) fn owned_key(config: &Config, parts: &Parts) -> String {
    checked_key(config, parts).unwrap_or_default()
}

/// The key of a request; `None` when its target names no one URI.
pub(super) fn checked_key(config: &Config, parts: &Parts) -> Option<String> {
    let mut key = String::with_capacity(64);
    write_uri_key(&mut key, &parts.uri, &parts.headers, config.query).then_some(key)
}

pub(super) fn as_get(mut parts: Parts) -> Parts {
    parts.method = Method::GET;
    parts
}

pub(super) fn flight_key(key: &str, extra: Option<&str>) -> String {
    match extra {
        None => key.to_owned(),
        Some(e) => {
            let mut k = String::with_capacity(key.len() + e.len() + 1);
            k.push_str(key);
            k.push('\u{1}');
            k.push_str(e);
            k
        }
    }
}
