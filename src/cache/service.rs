use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{
    HeaderValue, AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_RANGE, HOST,
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LOCATION, PRAGMA,
    RANGE, TRANSFER_ENCODING,
};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use super::body::ResponseBody;
use super::entry::{self, reuse, Entry, NotStorable, RequestDirectives, Reuse, CACHE_STATUS};
use super::fields::Present;
use super::flight::{Join, Lead, Outcome};
use super::future::ResponseFuture;
use super::handle::{Counters, ResponseCache, Shared};
use super::handoff;
use super::key::{origin_of, write_key, write_uri_key};
use super::layer::Config;
use super::observe::{self, forwarded, seen};
use super::outcome::CacheOutcome::{Bypass, Coalesced, Hit, Miss, Revalidated, Stale};
use super::representation::stored::{choose, Wants};
use super::status::Fwd;
use super::store::Variants;
use super::tee::Pending;
use super::validation;
use crate::etag::{not_modified_parts, Condition, Conditionals};

/// Middleware that answers requests from a [`ResponseCache`]; built by
/// [`CacheLayer`](super::CacheLayer).
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
async fn ready<S, R>(inner: &mut S) -> Result<(), S::Error>
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
async fn send<S, ReqBody, B>(
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

fn transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 425 | 429) || status.is_server_error()
}

/// What a lookup found for a request.
enum Lookup {
    UriMiss,
    VaryMiss,
    /// The variants of the key and the index of the one that matched:
    /// kept as is so a hit clones no entry `Arc`.
    Found(Arc<Variants>, usize),
}

fn lookup(
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
struct Job<ReqBody> {
    config: Arc<Config>,
    shared: Arc<Shared>,
    parts: Parts,
    body: ReqBody,
    key: String,
    flight_key: String,
    extra: Option<Box<str>>,
    /// The stored entry selected but not usable as is: validate it, or
    /// serve it on error where allowed.
    stale: Option<Arc<Entry>>,
    fwd: Fwd,
    req_cc: RequestDirectives,
    has_auth: bool,
    conditionals: Option<Conditionals>,
    /// A background refresh: its answer goes to no client, so it is not
    /// reported as one.
    refresh: bool,
    /// The client asked with HEAD: the inner service gets a GET, the
    /// client the head of the answer.
    is_head: bool,
    /// The client's `Accept-Encoding` and `no-transform`, read before the
    /// request is rewritten for the inner service.
    wants: Wants,
    /// A GET's `Range` and `If-Range`, taken off the request so that the
    /// inner service sends the whole response (which may be stored); the
    /// client's range is cut from it (see `miss`).
    range: Option<HeaderMap>,
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

        let is_head = parts.method == Method::HEAD;
        if parts.method != Method::GET && !is_head {
            // RFC 9111 §4: never answered from the cache.
            Counters::bump(&shared.counters.misses);
            let inner = self.inner.clone();
            let member = config.fwd_member(Fwd::Method, None, false, None);
            let shared = Arc::clone(shared);
            let Some(key) = checked_key(config, &parts) else {
                // A target that names no URI has nothing stored to
                // invalidate (and must not reach another URI's entry).
                let req = Request::from_parts(parts, body);
                let pass = pass(inner, req, member);
                return ResponseFuture::miss(Box::pin(forwarded(
                    Arc::clone(&self.config),
                    Bypass,
                    pass,
                )));
            };
            let req = Request::from_parts(parts, body);
            let fwd = forward_method(inner, req, key, member, shared);
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
            let inner = self.inner.clone();
            let member = config.fwd_member(Fwd::Bypass, None, false, None);
            let req = Request::from_parts(parts, body);
            let pass = pass(inner, req, member);
            return ResponseFuture::miss(Box::pin(forwarded(
                Arc::clone(&self.config),
                Bypass,
                pass,
            )));
        }

        // A protocol upgrade (WebSocket, RFC 9110 §7.8) opens a tunnel: it
        // is never answered from the cache, stored or coalesced, and passes
        // untouched (hyper's upgrade handle rides in the extensions).
        if present.any(Present::UPGRADE) {
            let inner = self.inner.clone();
            let member = config.fwd_member(Fwd::Bypass, None, false, None);
            let req = Request::from_parts(parts, body);
            let pass = pass(inner, req, member);
            return ResponseFuture::miss(Box::pin(forwarded(
                Arc::clone(&self.config),
                Bypass,
                pass,
            )));
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
            let inner = self.inner.clone();
            let member = config.fwd_member(Fwd::Bypass, None, false, None);
            let req = Request::from_parts(parts, body);
            let pass = pass(inner, req, member);
            return ResponseFuture::miss(Box::pin(forwarded(
                Arc::clone(&self.config),
                Bypass,
                pass,
            )));
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
                        let key = owned_key(config, &parts);
                        let flight_key = flight_key(&key, extra.as_deref());
                        if let Some(lead) = shared.flights.try_lead(&flight_key) {
                            let job = Job {
                                config: Arc::clone(&self.config),
                                shared: Arc::clone(shared),
                                conditionals: None,
                                parts: as_get(parts),
                                body,
                                key,
                                flight_key,
                                extra,
                                stale: Some(Arc::clone(entry)),
                                is_head: false,
                                fwd: Fwd::Stale,
                                req_cc,
                                has_auth,
                                refresh: true,
                                wants: Wants::default(),
                                range: None,
                            };
                            refresh_in_background(self.inner.clone(), job, lead);
                        }
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

        if req_cc.only_if_cached {
            // §5.2.1.7; a locally generated response gets no Cache-Status
            // member (RFC 9211 §2).
            let mut res = Response::new(ResponseBody::empty());
            *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            return ResponseFuture::ready(res);
        }

        Counters::bump(&shared.counters.misses);
        let inner = self.inner.clone();
        // A HEAD miss goes inward as a GET (as nginx's
        // `proxy_cache_convert_head`): what comes back is the GET response,
        // stored for later GETs and HEADs, and the HEAD gets its head, so a
        // HEAD carries the validators and length the GET would, cached or
        // not (a content ETag made from an empty HEAD body would differ).
        // Origin-only preconditions (RFC 9111 §4.3.2) go inward untouched,
        // with any `Range` beside them.
        if present.any(Present::ORIGIN_CONDITIONAL) {
            let member = config.fwd_member(fwd, None, false, None);
            let req = Request::from_parts(parts, body);
            let pass = pass(inner, req, member);
            return ResponseFuture::miss(Box::pin(forwarded(Arc::clone(&self.config), Miss, pass)));
        }
        let key = owned_key(config, &parts);
        let flight_key = flight_key(&key, extra.as_deref());
        if stale.is_none() && shared.is_uncacheable(&flight_key) {
            // Just seen uncacheable: straight through, as if there were no
            // cache, without queueing or copying anything for a store. A
            // `Range` goes too: the origin answers it.
            let member = config.fwd_member(fwd, None, false, None);
            let req = Request::from_parts(parts, body);
            let shared = Arc::clone(shared);
            let config = Arc::clone(&self.config);
            let fwd = forward_uncacheable(inner, req, member, config, shared, flight_key);
            return ResponseFuture::miss(Box::pin(forwarded(Arc::clone(&self.config), Miss, fwd)));
        }
        // A range miss asks for the whole (as nginx's `proxy_cache` does):
        // what comes back may be stored, and the range is cut from it.
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
            extra,
            stale,
            fwd,
            req_cc,
            has_auth,
            refresh: false,
        };
        let span = observe::miss_span(&job.flight_key);
        ResponseFuture::miss(Box::pin(miss(inner, job).instrument(span)))
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
fn owned_key(config: &Config, parts: &Parts) -> String {
    checked_key(config, parts).unwrap_or_default()
}

/// The key of a request; `None` when its target names no one URI.
fn checked_key(config: &Config, parts: &Parts) -> Option<String> {
    let mut key = String::with_capacity(64);
    write_uri_key(&mut key, &parts.uri, &parts.headers, config.query).then_some(key)
}

/// Takes `Range` and `If-Range` off a request that has a `Range`: for a
/// GET, returned to be applied to the whole response (RFC 9110 §14); for a
/// HEAD, dropped (§14.2: range handling is defined for GET only). A lone
/// `If-Range` is left alone (§13.1.5 has it ignored).
fn take_range(headers: &mut HeaderMap, is_head: bool) -> Option<HeaderMap> {
    if !headers.contains_key(RANGE) {
        return None;
    }
    let mut range = HeaderMap::new();
    for name in [RANGE, IF_RANGE] {
        if let http::header::Entry::Occupied(e) = headers.entry(name.clone()) {
            for v in e.remove_entry_mult().1 {
                range.append(name.clone(), v);
            }
        }
    }
    (!is_head).then_some(range)
}

/// The range a GET asked for, cut from the whole response the miss path
/// got for it (RFC 9110 §14; the client's `Range` and `If-Range` in
/// `range`): `206` with one range, `416` when none is satisfiable, the
/// response as it is otherwise: another status than 200 (a 304 is never
/// cut, §13.2.2), `If-Range` not matching its validators, several or
/// malformed ranges, a length not known from its head, or a body being
/// stored as it streams (which must be read whole; the miss path reads a
/// ranged response whole first, so this is only a safeguard). A `206` is
/// allowed from any representation, so one in a coding is cut as it is.
fn cut<B: Body<Data = Bytes>>(
    res: Response<ResponseBody<B>>,
    range: &HeaderMap,
) -> Response<ResponseBody<B>> {
    use super::representation::range::{content_range, plan, unsatisfied_range, RangePlan};
    if res.status() != StatusCode::OK || res.body().is_tee() {
        return res;
    }
    let declared = || {
        let mut all = res.headers().get_all(CONTENT_LENGTH).iter();
        let one = all.next()?;
        all.next()
            .is_none()
            .then(|| one.to_str().ok()?.trim().parse::<u64>().ok())?
    };
    let Some(len) = res.body().size_hint().exact().or_else(declared) else {
        return res;
    };
    let (mut head, body) = res.into_parts();
    match plan(&Method::GET, range, head.status, &head.headers, len) {
        RangePlan::Full => Response::from_parts(head, body),
        RangePlan::Partial { start, end } => {
            let n = end - start + 1;
            head.status = StatusCode::PARTIAL_CONTENT;
            head.headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
            head.headers
                .insert(CONTENT_RANGE, content_range(start, end, len));
            Response::from_parts(head, body.slice(start, n))
        }
        RangePlan::Unsatisfiable => {
            head.status = StatusCode::RANGE_NOT_SATISFIABLE;
            head.headers
                .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
            head.headers.insert(CONTENT_RANGE, unsatisfied_range(len));
            Response::from_parts(head, ResponseBody::empty())
        }
    }
}

fn as_get(mut parts: Parts) -> Parts {
    parts.method = Method::GET;
    parts
}

fn flight_key(key: &str, extra: Option<&str>) -> String {
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

/// A response from a stored entry (RFC 9111 §4): `Age` set, the client's
/// own conditionals answered (§4.3.2), no body for HEAD.
///
/// The representation is chosen first (`wants`: the client's
/// `Accept-Encoding` and `no-transform`), and the conditionals are
/// evaluated against its headers: a 304 and a HEAD are per representation,
/// with its own `ETag` and `Content-Length`. An entry without codings made
/// costs nothing more than before.
fn from_entry<B: Body>(
    entry: &Entry,
    is_head: bool,
    conditionals: Option<&Conditionals>,
    wants: &Wants,
    member: HeaderValue,
    now: Instant,
) -> Response<ResponseBody<B>> {
    let age = entry.fresh.age(now);
    from_entry_ranged(entry, is_head, conditionals, wants, None, member, age)
}

/// [`from_entry`], and then, for a GET with `Range` (`ranged`: the
/// request's headers), the range of the chosen representation (RFC 9110
/// §14): `206` with one range, `416` when none is satisfiable, the whole
/// when `If-Range` does not match or the ranges are several or malformed.
/// Conditionals come first (§13.2.2): a 304 is never cut.
fn from_entry_ranged<B: Body>(
    entry: &Entry,
    is_head: bool,
    conditionals: Option<&Conditionals>,
    wants: &Wants,
    ranged: Option<&HeaderMap>,
    member: HeaderValue,
    age: u64,
) -> Response<ResponseBody<B>> {
    let (headers, body) = match choose(entry.reprs.as_deref(), wants) {
        Some(made) => (&made.headers, &made.body),
        None => (&entry.headers, &entry.body),
    };
    let mut res = Response::new(if is_head {
        ResponseBody::empty()
    } else {
        ResponseBody::stored(body.clone())
    });
    *res.status_mut() = entry.status;
    *res.headers_mut() = headers.clone();
    let age = age_value(age);
    let mut placeholder = entry.status_placeholder;
    if conditionals.is_some_and(|c| c.evaluate(entry.status, headers) == Condition::NotModified) {
        // The 304 keeps only validators and caching fields (RFC 9110
        // §15.4.5); no Cache-Status line survives, so ours is appended.
        let (parts, _) = res.into_parts();
        placeholder = false;
        res = Response::from_parts(not_modified_parts(parts), ResponseBody::empty());
    } else if let Some(request) = ranged.filter(|_| !is_head) {
        use super::representation::range::{content_range, plan, unsatisfied_range, RangePlan};
        let len = body.len() as u64;
        match plan(&Method::GET, request, entry.status, headers, len) {
            RangePlan::Full => {}
            RangePlan::Partial { start, end } => {
                // `end < len` (see `plan`), so both fit in usize.
                let (s, e) = (start as usize, end as usize);
                let part = body.slice(s..=e);
                *res.status_mut() = StatusCode::PARTIAL_CONTENT;
                let h = res.headers_mut();
                h.insert(CONTENT_LENGTH, HeaderValue::from(part.len()));
                h.insert(CONTENT_RANGE, content_range(start, end, len));
                *res.body_mut() = ResponseBody::stored(part);
            }
            RangePlan::Unsatisfiable => {
                *res.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                let h = res.headers_mut();
                h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
                h.insert(CONTENT_RANGE, unsatisfied_range(len));
                *res.body_mut() = ResponseBody::empty();
            }
        }
    }
    let headers = res.headers_mut();
    headers.insert(AGE, age);
    if placeholder {
        headers.insert(CACHE_STATUS, member);
    } else {
        headers.append(CACHE_STATUS, member);
    }
    res
}

/// `Age` values up to ten minutes, formatted once.
fn age_value(secs: u64) -> HeaderValue {
    static SMALL: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
    let small = SMALL.get_or_init(|| (0..=600u64).map(HeaderValue::from).collect());
    usize::try_from(secs)
        .ok()
        .and_then(|i| small.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

fn hit<B: Body>(
    config: &Config,
    entry: &Entry,
    parts: &Parts,
    present: Present,
    now: Instant,
) -> Response<ResponseBody<B>> {
    let headers = &parts.headers;
    let conditionals =
        Conditionals::from_request(&parts.method, present.view(Present::CONDITIONAL, headers));
    let age = entry.fresh.age(now);
    let member = config.hit_member(entry.fresh.ttl_at_age(age));
    let ranged = (parts.method == Method::GET && present.any(Present::RANGE)).then_some(headers);
    let mut wants = wants_for(
        entry,
        present.view(Present::ENCODING | Present::DIRECTIVES, headers),
    );
    wants.range = ranged.is_some();
    from_entry_ranged(
        entry,
        parts.method == Method::HEAD,
        conditionals.as_ref(),
        &wants,
        ranged,
        member,
        age,
    )
}

/// The request's wishes about representations, read only when the entry
/// has codings to choose among.
fn wants_for(entry: &Entry, headers: &HeaderMap) -> Wants {
    if entry.reprs.is_some() {
        Wants::from_headers(headers)
    } else {
        Wants::default()
    }
}

/// A response from an entry the shared tier had (`detail=redis`);
/// `job` is the miss's: its `wants` say whether a range is to be cut (from
/// identity, where acceptable).
#[cfg(feature = "redis")]
fn l2_hit<B: Body, ReqBody>(
    job: &Job<ReqBody>,
    entry: &Entry,
    now: Instant,
) -> Response<ResponseBody<B>> {
    let member = super::status::hit_detail(&job.config.name, entry.fresh.ttl(now), "redis");
    from_entry(
        entry,
        job.is_head,
        job.conditionals.as_ref(),
        &job.wants,
        member,
        now,
    )
}

/// Forwards a request untouched and streams the response back.
async fn pass<S, ReqBody, B>(
    mut inner: S,
    req: Request<ReqBody>,
    member: HeaderValue,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body<Data = Bytes>,
{
    ready(&mut inner).await?;
    let (mut parts, body) = inner.call(req).await?.into_parts();
    parts.headers.append(CACHE_STATUS, member);
    Ok(Response::from_parts(parts, ResponseBody::stream(body)))
}

/// Forwards a request for a key remembered as uncacheable, untouched (the
/// client's conditionals included: the inner service answers them), and
/// streams the response back. Should the response have become storable,
/// the memory is dropped so that the next request leads a flight again.
async fn forward_uncacheable<S, ReqBody, B>(
    mut inner: S,
    req: Request<ReqBody>,
    member: HeaderValue,
    config: Arc<Config>,
    shared: Arc<Shared>,
    flight_key: String,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body<Data = Bytes>,
{
    // As on every other miss, the client's conditionals are answered here
    // and a HEAD goes inward as a GET, so the answer does not depend on
    // whether the key was just seen uncacheable.
    let (mut req_parts, req_body) = req.into_parts();
    let conditionals = Conditionals::from_request(&req_parts.method, &req_parts.headers);
    req_parts.headers.remove(IF_NONE_MATCH);
    req_parts.headers.remove(IF_MODIFIED_SINCE);
    let is_head = req_parts.method == Method::HEAD;
    if is_head {
        req_parts.method = Method::GET;
    }
    ready(&mut inner).await?;
    let (mut parts, body) = inner
        .call(Request::from_parts(req_parts, req_body))
        .await?
        .into_parts();
    let now = crate::date::monotonic_now();
    let storable = entry::storable(
        parts.status,
        &parts.headers,
        &RequestDirectives::default(),
        false,
        &config.rules,
        now,
        (now, SystemTime::now()),
    );
    if storable.is_ok() {
        shared.forget_uncacheable(&flight_key);
    }
    if let Some(field) = &config.strip_field {
        parts.headers.remove(field);
    }
    Ok(passthrough(
        parts,
        body,
        is_head,
        conditionals.as_ref(),
        member,
    ))
}

/// Forwards an unsafe (or uncacheable safe) method and, on success,
/// invalidates what it may have changed (RFC 9111 §4.4).
async fn forward_method<S, ReqBody, B>(
    mut inner: S,
    req: Request<ReqBody>,
    key: String,
    member: HeaderValue,
    shared: Arc<Shared>,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body<Data = Bytes>,
{
    let unsafe_method = !matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    ready(&mut inner).await?;
    let (mut parts, body) = inner.call(req).await?.into_parts();
    if unsafe_method && (parts.status.is_success() || parts.status.is_redirection()) {
        invalidate(&shared, &key);
        let origin = origin_of(&key);
        for name in [LOCATION, CONTENT_LOCATION] {
            let Some(target) = parts.headers.get(name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            // §4.4: only URIs of the same origin as the target.
            let other = if target.starts_with('/') && !target.starts_with("//") {
                format!("{origin}{target}")
            } else if let Ok(uri) = target.parse::<http::Uri>() {
                if uri.authority().is_none() {
                    continue;
                }
                let mut k = String::new();
                if !write_uri_key(&mut k, &uri, &HeaderMap::new(), super::key::QueryKey::Keep) {
                    continue;
                }
                k
            } else {
                continue;
            };
            if origin_of(&other) == origin {
                invalidate(&shared, &other);
            }
        }
    }
    parts.headers.append(CACHE_STATUS, member);
    Ok(Response::from_parts(parts, ResponseBody::stream(body)))
}

fn invalidate(shared: &Shared, key: &str) {
    // Other instances may hold it too (RFC 9111 §4.4 asks only for this
    // cache, but a cluster is one cache to its users).
    shared.purge_cluster(|| super::handle::Purge::Key(key.into()));
    if shared.store.remove(key) {
        tracing::debug!(key, "cache invalidated by an unsafe method");
    }
    shared.forget_uncacheable(key);
}

/// The miss path: coalesce with other requests for the key, or lead; then,
/// for a GET with `Range`, the range is cut from the whole response (the
/// leader's, a stored one, or one passed through), as nginx's
/// `proxy_cache` does: a leader and a waiter with and without `Range`
/// share one origin call, and each gets its own answer.
async fn miss<S, ReqBody, B>(
    inner: S,
    mut job: Job<ReqBody>,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    let range = job.range.take();
    let response = coalesce(inner, job).await?;
    Ok(match &range {
        Some(range) => cut(response, range),
        None => response,
    })
}

/// Joins the flight for the key, or leads it.
async fn coalesce<S, ReqBody, B>(
    mut inner: S,
    #[cfg_attr(not(feature = "redis"), allow(unused_mut))] mut job: Job<ReqBody>,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    // Requests that cannot share a response go alone: another user's
    // credentials, or no-store.
    if job.has_auth || job.req_cc.no_store {
        return fetch(&mut inner, job, None, None).await;
    }
    let mut collapsed = None;
    let mut retried = false;
    loop {
        let joined = job.shared.flights.join(&job.flight_key);
        match joined {
            #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
            Join::Lead(mut lead) => {
                // A flight may have stored the response between our lookup
                // and now.
                if job.stale.is_none() {
                    let now = crate::date::monotonic_now();
                    if let Lookup::Found(variants, i) = lookup(
                        &job.shared,
                        &job.key,
                        &job.parts.headers,
                        job.extra.as_deref(),
                        false,
                        now,
                    ) {
                        let entry = &variants.list[i];
                        if matches!(reuse(&entry.fresh, &job.req_cc, now), Reuse::Fresh) {
                            lead.finish(Outcome::Stored);
                            // As `hit`, from what the job read of the
                            // request (its `Range` is taken off already).
                            let member = job.config.hit_member(entry.fresh.ttl(now));
                            let response = from_entry(
                                entry,
                                job.is_head,
                                job.conditionals.as_ref(),
                                &job.wants,
                                member,
                                now,
                            );
                            return Ok(seen(&job.config, response, Hit, None));
                        }
                    }
                }
                // Then the shared tier: another instance may have rendered
                // it (or be rendering it, with the render lock on), also
                // when a stale copy is at hand (a revalidation marks the
                // copies of every instance at once).
                #[cfg(feature = "redis")]
                {
                    if let Some(tier) = job.shared.l2.clone() {
                        let found = tier
                            .before_render(
                                &job.shared,
                                &job.key,
                                &job.flight_key,
                                &job.parts.headers,
                                job.extra.as_deref(),
                                &job.req_cc,
                                &mut lead,
                            )
                            .await;
                        // Another instance may store longer bodies than
                        // this one: such an entry is not ours to keep (nor
                        // to validate and keep), so the page is fetched as
                        // if Redis had none, and found too long to store.
                        let found =
                            found.filter(|(entry, _)| entry.body.len() <= job.config.max_body);
                        match found {
                            Some((entry, Reuse::Fresh | Reuse::StaleAccepted)) => {
                                if job.shared.store.insert(&job.key, Arc::clone(&entry)) {
                                    #[cfg(feature = "compression")]
                                    if let Some(c) = job.config.compressor() {
                                        c.queue(&job.shared, &job.key, &entry);
                                    }
                                    lead.finish(Outcome::Stored);
                                } else {
                                    // Too heavy for memory: waiters would
                                    // find nothing; let them go, and later
                                    // requests too.
                                    job.shared.remember_uncacheable(
                                        &job.flight_key,
                                        job.config.uncacheable_for,
                                    );
                                    lead.finish(Outcome::NotStorable);
                                }
                                let now = crate::date::monotonic_now();
                                let response = l2_hit(&job, &entry, now);
                                return Ok(seen(&job.config, response, Hit, None));
                            }
                            // Not usable as is: validate it like a stale
                            // entry of our own (we keep ours if we have one).
                            Some((entry, how)) if job.stale.is_none() => {
                                job.fwd = if how == Reuse::ForwardRequest {
                                    Fwd::Request
                                } else {
                                    Fwd::Stale
                                };
                                job.stale = Some(entry);
                            }
                            _ => {}
                        }
                    }
                }
                return lead_fetch(inner, job, lead, collapsed).await;
            }
            Join::Wait(wait) => {
                Counters::bump(&job.shared.counters.coalesced);
                tracing::debug!(key = %job.key, "waiting for a request in flight");
                let waited_from = crate::date::monotonic_now();
                match wait.limit(Some(job.config.lock_timeout)).await {
                    Outcome::Stored => {
                        let now = crate::date::monotonic_now();
                        let found = lookup(
                            &job.shared,
                            &job.key,
                            &job.parts.headers,
                            job.extra.as_deref(),
                            false,
                            now,
                        );
                        // The flight covers the whole URI, so the leader may
                        // have stored another variant and left ours as it
                        // was. A waiter only gets a response the leader
                        // stored (RFC-CHECKLIST §4, collapsing), never the
                        // stale one it came with: unvalidated, that would
                        // break §4.2.4 and must-revalidate (§5.2.2.2).
                        let usable = |entry: &Arc<Entry>| {
                            !job.stale.as_ref().is_some_and(|s| Arc::ptr_eq(s, entry))
                                && (entry.fresh.stored_at >= waited_from
                                    || reuse(&entry.fresh, &job.req_cc, now) == Reuse::Fresh)
                        };
                        if let Lookup::Found(variants, i) = found {
                            let entry = &variants.list[i];
                            variants.touch(i);
                            if !usable(entry) {
                                return fetch(&mut inner, job, None, Some(false)).await;
                            }
                            // Just fetched or validated for the leader, so
                            // good for this request too, whatever it asked.
                            let member = job.config.fwd_member(job.fwd, None, true, Some(true));
                            let response = from_entry(
                                entry,
                                job.is_head,
                                job.conditionals.as_ref(),
                                &job.wants,
                                member,
                                now,
                            );
                            return Ok(seen(&job.config, response, Coalesced, None));
                        }
                        return fetch(&mut inner, job, None, Some(false)).await;
                    }
                    Outcome::NotStorable => return fetch(&mut inner, job, None, Some(false)).await,
                    Outcome::Failed => {
                        let now = crate::date::monotonic_now();
                        if let Some(entry) = job
                            .stale
                            .as_ref()
                            .filter(|e| e.fresh.sie_allows(now, job.req_cc.stale_if_error))
                        {
                            Counters::bump(&job.shared.counters.stale);
                            let member = job.config.fwd_member(Fwd::Stale, None, false, Some(true));
                            let response = from_entry(
                                entry,
                                job.is_head,
                                job.conditionals.as_ref(),
                                &job.wants,
                                member,
                                now,
                            );
                            return Ok(seen(&job.config, response, Stale, None));
                        }
                        // One waiter takes over and the others wait for it
                        // (collapsing, RFC 9111 §4), once: a transient
                        // failure is retried by one call, not by every
                        // waiter at once, and no waiter waits more than one
                        // further round.
                        if retried {
                            return fetch(&mut inner, job, None, Some(false)).await;
                        }
                        retried = true;
                        collapsed = Some(false);
                    }
                    // The leader's client hung up: take over.
                    Outcome::Abandoned => collapsed = Some(false),
                    // The leader stalls: go alone, and store nothing, so
                    // that every waiter timing out does not store the page
                    // once more (the leader may still store it).
                    Outcome::TimedOut => {
                        tracing::debug!(key = %job.key, "lock timeout: forwarding alone");
                        let member = job.config.fwd_member(job.fwd, None, false, Some(false));
                        let config = Arc::clone(&job.config);
                        let req = Request::from_parts(job.parts, job.body);
                        return forwarded(config, Miss, pass(inner, req, member)).await;
                    }
                }
            }
        }
    }
}

/// Goes to the inner service for `job`, validating its stale entry if it
/// has one, and stores what may be stored. `lead`, when held, is finished
/// with the outcome so waiters learn it.
async fn fetch<S, ReqBody, B>(
    inner: &mut S,
    job: Job<ReqBody>,
    lead: Option<Lead>,
    collapsed: Option<bool>,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    ReqBody: 'static,
    B: Body<Data = Bytes>,
{
    let Job {
        config,
        shared,
        mut parts,
        body,
        key,
        flight_key,
        extra,
        stale,
        fwd,
        req_cc,
        has_auth,
        conditionals,
        refresh,
        is_head,
        wants,
        range: _,
    } = job;
    let finish = |lead: Option<Lead>, outcome: Outcome| {
        if let Some(lead) = lead {
            lead.finish(outcome);
        }
    };

    // The client's own conditionals are answered here from the full
    // response (§4.3.2); the inner service sees only ours, so that what
    // comes back can be stored.
    parts.headers.remove(IF_NONE_MATCH);
    parts.headers.remove(IF_MODIFIED_SINCE);
    if is_head {
        parts.method = Method::GET;
    }
    let mut validating = stale
        .as_ref()
        .filter(|e| e.etag().is_some() || e.last_modified().is_some())
        .cloned();
    if let Some(entry) = &validating {
        // §4.3.1: the stored entity tag, and Last-Modified as well.
        if let Some(etag) = entry.etag() {
            parts.headers.insert(IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = entry.last_modified() {
            parts.headers.insert(IF_MODIFIED_SINCE, lm.clone());
        }
    }
    let request_headers = parts.headers.clone();
    // The cache makes the codings itself: it asks for identity, the one
    // representation every other is made from (and ranges cut from).
    #[cfg(feature = "compression")]
    let compressor = config.compressor();
    #[cfg(feature = "compression")]
    if compressor.is_some() {
        parts.headers.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    // §4.3.4: the request again without our validators, for a 304 that
    // selects no stored response (see `validation`).
    let mut again = validating
        .as_ref()
        .and_then(|_| validation::empty_like(&body))
        .map(|empty| {
            let mut again = parts.clone();
            again.headers.remove(IF_NONE_MATCH);
            again.headers.remove(IF_MODIFIED_SINCE);
            (again, empty)
        });
    let mut request_time = crate::date::monotonic_now();
    let mut upstream = None;
    let mut result = send(inner, Request::from_parts(parts, body), &mut upstream).await;
    if let (Ok(res), Some(entry)) = (&result, &validating) {
        if res.status() == StatusCode::NOT_MODIFIED
            && !validation::selects(entry.etag(), res.headers())
        {
            if let Some((again, empty)) = again.take() {
                tracing::debug!(key = %key, "304 selects no stored response: sent again unconditionally");
                let validated = validating.take();
                request_time = crate::date::monotonic_now();
                result = send(inner, Request::from_parts(again, empty), &mut upstream).await;
                // RFC 9110 §15.4.5: a 304 answers a conditional request
                // only; one to this unconditional request is no answer for
                // the client (its own validators were taken off). It is
                // handled as the first one was when nothing can be sent
                // again (§4.3.4, see `revalidated`): the stored response
                // it vouches for is served, or freshened if it selects it.
                if matches!(&result, Ok(res) if res.status() == StatusCode::NOT_MODIFIED) {
                    validating = validated;
                }
            }
        }
    }
    let now = crate::date::monotonic_now();
    let report = |res, outcome| observe::fetched(&config, res, outcome, upstream, refresh);
    let response_time = (now, SystemTime::now());

    let serve_stale = |status: Option<u16>| {
        stale
            .as_ref()
            .filter(|e| e.fresh.sie_allows(now, req_cc.stale_if_error))
            .map(|entry| {
                Counters::bump(&shared.counters.stale);
                let member = config.fwd_member(Fwd::Stale, status, false, collapsed);
                report(
                    from_entry(entry, is_head, conditionals.as_ref(), &wants, member, now),
                    Stale,
                )
            })
    };

    let res = match result {
        Ok(res) => res,
        Err(e) => {
            finish(lead, Outcome::Failed);
            // RFC 5861 §4: an error may be answered with a stale copy.
            return serve_stale(None).ok_or(e);
        }
    };
    let (mut head, body) = res.into_parts();
    let status = head.status;

    if status == StatusCode::NOT_MODIFIED {
        if let Some(entry) = validating {
            let (response, stored) = revalidated(
                &config,
                &shared,
                (&key, &flight_key),
                &entry,
                &head.headers,
                &req_cc,
                has_auth,
                request_time,
                response_time,
                fwd,
                collapsed,
                conditionals.as_ref(),
                is_head,
                &wants,
            );
            // Waiters look up a freshened entry; when the merged response
            // may not be shared they go on alone, and never get this
            // client's response (its Set-Cookie, say).
            let outcome = if stored {
                Outcome::Stored
            } else {
                Outcome::NotStorable
            };
            finish(lead, outcome);
            return Ok(report(response, Revalidated));
        }
    }

    let fwd_status = validating.is_some().then_some(status.as_u16());
    // RFC 5861 §4 names 500, 502, 503 and 504; a timeout, a rate limit or
    // any server error is as much a failure to answer (see `transient`).
    if transient(status) {
        finish(lead, Outcome::Failed);
        if let Some(response) = serve_stale(Some(status.as_u16())) {
            return Ok(response);
        }
        tracing::debug!(key = %key, status = status.as_u16(), "transient answer: forwarded, nothing evicted");
        if let Some(field) = &config.strip_field {
            head.headers.remove(field);
        }
        let member = config.fwd_member(fwd, fwd_status, false, collapsed);
        return Ok(report(
            passthrough(head, body, is_head, conditionals.as_ref(), member),
            Miss,
        ));
    }

    let policy = entry::storable(
        status,
        &head.headers,
        &req_cc,
        has_auth,
        &config.rules,
        request_time,
        response_time,
    );
    #[cfg_attr(not(feature = "compression"), allow(unused_mut))]
    let mut policy = match policy {
        Ok(p) => p,
        Err(reason) => {
            tracing::debug!(key = %key, ?reason, "response not stored");
            if supersedes(reason, status) {
                shared.remember_uncacheable(&flight_key, config.uncacheable_for);
                if let Some(entry) = &stale {
                    // Superseded by a response that may not be stored.
                    shared.store.remove_variant(&key, entry);
                }
            }
            // To waiters, a server error is a failure: they may answer it
            // with their stale copy (RFC 5861 §4), or one takes over.
            let outcome = if status.is_server_error() {
                Outcome::Failed
            } else {
                Outcome::NotStorable
            };
            finish(lead, outcome);
            if let Some(field) = &config.strip_field {
                head.headers.remove(field);
            }
            let member = config.fwd_member(fwd, fwd_status, false, collapsed);
            return Ok(report(
                passthrough(head, body, is_head, conditionals.as_ref(), member),
                Miss,
            ));
        }
    };

    let declared = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // An identity response, when the cache negotiates codings itself, is
    // one stored response for every `Accept-Encoding`: the key does not vary
    // on the raw value (the origin's `Vary: Accept-Encoding` is satisfied
    // by the negotiation), and a response the cache may compress says it
    // varies, so caches further out keep the codings apart. A response in
    // a coding of its own keeps varying as the origin said.
    #[cfg(feature = "compression")]
    if let Some(c) = compressor {
        use super::representation::compressible::{decide, Decision};
        if super::representation::coding::response_coding(&head.headers)
            == Some(super::representation::coding::Coding::Identity)
        {
            policy
                .vary_names
                .retain(|n| n != http::header::ACCEPT_ENCODING);
            let len = declared.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
            if matches!(
                decide(status, &head.headers, len, &c.config),
                Decision::Compress { .. }
            ) {
                super::representation::stored::add_vary_accept_encoding(&mut head.headers);
            }
        }
    }
    let cap = config.max_body;
    let hint = body.size_hint();
    let fits = declared.map_or(true, |n| n <= cap as u64) && hint.lower() <= cap as u64;
    let member = |stored: bool| config.fwd_member(fwd, fwd_status, stored, collapsed);
    let mut pending = Pending {
        shared: Arc::clone(&shared),
        config: Arc::clone(&config),
        key,
        flight_key,
        status,
        version: head.version,
        headers: head.headers.clone(),
        policy,
        request_headers,
        extra,
        lead,
        chunks: Vec::new(),
        len: 0,
        declared,
    };
    if let Some(field) = &config.strip_field {
        head.headers.remove(field);
    }
    // Boxed (the miss path) so the part read here and the rest can go to
    // the client as one body.
    let mut body = Box::pin(body);
    // The client's own conditional may turn the answer into a 304, and a
    // HEAD needs the whole GET body stored: both read it whole first.
    // Otherwise the response goes to the client as soon as it has started
    // (see `read_start`) and is stored as it passes.
    // So is a small body of known length (as nginx buffers small
    // responses): an origin that sets `Content-Length` has the body at hand,
    // and one that then breaks off gets a 502 however the close races its
    // first bytes (issue 8 §8). Bigger ones stream.
    // A range is cut from the whole too (see `miss`): only a stored body
    // can be cut without reading the rest for the store.
    let whole = conditionals.is_some()
        || is_head
        || wants.range
        || declared.is_some_and(|n| n <= WHOLE_BELOW)
        || hint.exact().is_some_and(|n| n <= WHOLE_BELOW);
    let read = if !fits {
        Read::TooLong(VecDeque::new())
    } else if !whole && declared.is_none() && hint.exact().is_none() {
        // A body of unknown length (a streamed render) goes out with its
        // headers at once, as it always has: a renderer may flush its head
        // early and take its time over the rest. Only what is ready now is
        // looked at first (a few cooperative yields, no timer), so that a
        // body cut before its first byte gets a 502 rather than a 200 and
        // an aborted connection (issue 8 §8). A later break-off aborts the
        // client's connection; it is never stored either way.
        read_start(&mut body, cap, false, true).await
    } else {
        read_start(&mut body, cap, whole, false).await
    };
    let response: Result<_, S::Error> = match read {
        // §3.3: a body shorter than announced is incomplete: never stored,
        // and never shown as complete.
        Read::Complete(chunks, len) if declared.map_or(true, |n| n == len as u64) => {
            pending.len = len;
            pending.chunks.extend(chunks);
            let (entry, stored) = pending.store();
            Ok(from_entry(
                &entry,
                is_head,
                conditionals.as_ref(),
                &wants,
                member(stored),
                crate::date::monotonic_now(),
            ))
        }
        Read::Complete(..) | Read::Failed(_) => {
            // The upstream broke off before anything reached the client:
            // nothing partial is stored, the flight failed (waiters never
            // see the truncated body), and the client gets a stale copy
            // where allowed, else a clean 502 (RFC 9110 §15.6.3) instead
            // of a connection closed without a status.
            pending.fail();
            if let Some(response) = serve_stale(Some(502)) {
                return Ok(response);
            }
            tracing::debug!(status = status.as_u16(), "upstream body broke off: 502");
            let mut res = Response::new(ResponseBody::empty());
            *res.status_mut() = StatusCode::BAD_GATEWAY;
            res.headers_mut().append(CACHE_STATUS, member(false));
            Ok(res)
        }
        Read::TooLong(buffered) => {
            pending.too_long();
            head.headers.append(CACHE_STATUS, member(false));
            let body = ResponseBody::replay(buffered, None, Some(body));
            // A HEAD gets the GET's head without its content: its length
            // stays what the GET's would be (RFC 9110 §8.6, §9.3.2).
            let body = if is_head {
                ResponseBody::head(body.size_hint().exact())
            } else {
                body
            };
            Ok(Response::from_parts(head, body))
        }
        Read::Started(buffered, len) => {
            pending.len = len;
            pending.chunks.extend(buffered.iter().cloned());
            // Whether it ends up stored is not known yet: no `stored`.
            head.headers.append(CACHE_STATUS, member(false));
            Ok(Response::from_parts(
                head,
                ResponseBody::tee(buffered, body, pending),
            ))
        }
    };
    response.map(|response| report(response, Miss))
}

/// A body of known length up to this size is read whole before the
/// response's head goes out (see `fetch`).
const WHOLE_BELOW: u64 = 64 * 1024;

/// How a response body began.
enum Read<E> {
    /// It ended: its chunks and length.
    Complete(VecDeque<Bytes>, usize),
    /// Data came and the upstream has no more ready: the chunks so far
    /// and their length; the rest streams.
    Started(VecDeque<Bytes>, usize),
    /// Longer than may be stored: the chunks read.
    TooLong(VecDeque<Bytes>),
    Failed(E),
}

/// Cooperative yields granted, after the first data, to an upstream that
/// has nothing more ready, before the headers go out: enough for an
/// upstream connection that already closed to report it (its task runs
/// first), so a body cut short right after its first bytes still gets a
/// 502. Not a timer: each yield only lets ready tasks run.
const START_YIELDS: u8 = 3;

/// Reads the start of a body of known length: the whole of it when
/// `whole`, else until the first data has come and nothing more is ready, so the client gets its
/// first byte as soon as the upstream sent it while a body that breaks off
/// before then still gets a clean answer. The choice for a body that
/// breaks off later: the headers have left, so the client's connection is
/// aborted (a body error) and nothing is stored. Trailers are dropped
/// (RFC 9111 §3.1 allows it).
///
/// `eager`: the headers need not wait for the first data; only for what is
/// ready within the same cooperative yields.
async fn read_start<B: Body<Data = Bytes>>(
    body: &mut Pin<Box<B>>,
    cap: usize,
    whole: bool,
    eager: bool,
) -> Read<B::Error> {
    let mut chunks = VecDeque::new();
    let mut len = 0usize;
    let mut yields = 0u8;
    poll_fn(|cx| loop {
        match body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    len = len.saturating_add(data.len());
                    if !data.is_empty() {
                        chunks.push_back(data);
                    }
                    if len > cap {
                        return Poll::Ready(Read::TooLong(std::mem::take(&mut chunks)));
                    }
                }
                if body.is_end_stream() {
                    return Poll::Ready(Read::Complete(std::mem::take(&mut chunks), len));
                }
                yields = 0;
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Read::Failed(e)),
            Poll::Ready(None) => {
                return Poll::Ready(Read::Complete(std::mem::take(&mut chunks), len))
            }
            Poll::Pending if whole || (chunks.is_empty() && !eager) => return Poll::Pending,
            Poll::Pending if yields < START_YIELDS => {
                yields += 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Pending => return Poll::Ready(Read::Started(std::mem::take(&mut chunks), len)),
        }
    })
    .await
}

/// Whether a response that may not be stored says the resource is no longer
/// storable, so that it replaces the stored variant and the key is
/// remembered as uncacheable. Not when only this request forbade storing
/// (a request's `no-store` concerns that request alone, RFC 9111 §5.2.1.5;
/// `Authorization`, §3.5), nor for an answer to what this request asked
/// rather than a new representation: a range (206, 416) or a precondition
/// (304, 412; §3, §4.3.2). Nor a transient answer (408, 425, 429, 5xx; see
/// `transient`): the cache may forward it or act as if the origin did not
/// answer (§4.3.3), and one failure must not drop a good entry or stop
/// coalescing during an outage. RFC 9111 asks to purge only on §4.4.
fn supersedes(reason: NotStorable, status: StatusCode) -> bool {
    matches!(reason, NotStorable::Response(_))
        && !matches!(status.as_u16(), 206 | 304 | 412 | 416)
        && !transient(status)
}

/// A 304 answered our validators: freshen the stored entry (RFC 9111
/// §4.3.4) and answer from it. The client always gets the merged response:
/// the stored one updated with every field of the 304 that §3.2 lets
/// through (a new `Cache-Control`, a `Set-Cookie`). When the merged
/// response may not be stored (`no-store`, `private`, `Set-Cookie`, ...)
/// the entry is dropped and the key remembered as uncacheable, as for a
/// full response saying so; a restriction of this request alone
/// (`no-store`, `Authorization`) leaves the entry as it was. Returns the
/// response and whether the entry was freshened.
#[allow(clippy::too_many_arguments)]
fn revalidated<B: Body>(
    config: &Config,
    shared: &Shared,
    (key, flight_key): (&str, &str),
    entry: &Arc<Entry>,
    not_modified: &HeaderMap,
    req_cc: &RequestDirectives,
    has_auth: bool,
    request_time: Instant,
    response_time: (Instant, SystemTime),
    fwd: Fwd,
    collapsed: Option<bool>,
    conditionals: Option<&Conditionals>,
    is_head: bool,
    wants: &Wants,
) -> (Response<ResponseBody<B>>, bool) {
    let now = response_time.0;
    // §4.3.4: a 304 that selects no stored response updates none. `fetch`
    // sent the request again where it could; where it could not (a body
    // type it cannot make empty), the client gets what the 304 vouched for
    // and the next request fetches anew.
    if !validation::selects(entry.etag(), not_modified) {
        shared.store.remove_variant(key, entry);
        let member = config.fwd_member(fwd, Some(304), false, collapsed);
        return (
            from_entry(entry, is_head, conditionals, wants, member, now),
            false,
        );
    }
    let mut merged = entry::merge_304(&entry.headers, not_modified);
    if entry.status_placeholder {
        merged.remove(CACHE_STATUS);
    }
    let policy = entry::storable(
        entry.status,
        &merged,
        req_cc,
        has_auth,
        &config.rules,
        request_time,
        response_time,
    );
    let member = |stored| config.fwd_member(fwd, Some(304), stored, collapsed);
    let policy = match policy {
        // The stored response may have been one to another user's
        // `Authorization` request, shared only because it said `public`,
        // `s-maxage` or `must-revalidate` (RFC 9111 §3.5); the entry does not
        // record whose request it was, so a 304 that takes that away drops
        // it (the next request fetches anew) rather than share it on.
        Ok(policy) if entry.auth_ok && !policy.auth_ok => {
            tracing::debug!(key, "revalidated response no longer shareable under §3.5");
            shared.store.remove_variant(key, entry);
            let response =
                merged_response(config, entry, merged, is_head, conditionals, member(false));
            return (response, false);
        }
        Ok(policy) => policy,
        Err(reason) => {
            tracing::debug!(key, ?reason, "revalidated response not stored");
            if matches!(reason, NotStorable::Response(_)) {
                shared.store.remove_variant(key, entry);
                shared.remember_uncacheable(flight_key, config.uncacheable_for);
            }
            let response =
                merged_response(config, entry, merged, is_head, conditionals, member(false));
            return (response, false);
        }
    };
    let mut fresh = entry::build(
        entry.status,
        entry.version,
        &merged,
        entry.body.clone(),
        policy,
        &HeaderMap::new(),
        entry.extra.clone(),
        config.strip_field.as_ref(),
    );
    // The variant stays the one it was.
    fresh.vary = entry.vary.clone();
    // The codings made of the body stay too, their headers updated as the
    // entry's were.
    if let Some(reprs) = &entry.reprs {
        let reprs = reprs.rebase(&fresh.headers);
        fresh.weight = fresh.weight.saturating_add(reprs.weight());
        fresh.reprs = Some(Arc::new(reprs));
    }
    let fresh = Arc::new(fresh);
    if !shared.store.insert(key, Arc::clone(&fresh)) {
        // The merged headers made it too heavy for the tier.
        shared.store.remove_variant(key, entry);
        return (
            from_entry(&fresh, is_head, conditionals, wants, member(false), now),
            false,
        );
    }
    shared.stored_l2(key, &fresh, None);
    Counters::bump(&shared.counters.revalidations);
    shared.count_store();
    tracing::debug!(key, "stored response revalidated");
    (
        from_entry(&fresh, is_head, conditionals, wants, member(true), now),
        true,
    )
}

/// The stored response updated by a 304 that may not be stored, for the
/// client that asked (RFC 9111 §4.3.4): its headers are the merged ones, so
/// the 304's `Cache-Control` and `Set-Cookie` reach this client and no one
/// else. `Age` is the 304's own (a just-validated response).
fn merged_response<B: Body>(
    config: &Config,
    entry: &Entry,
    mut merged: HeaderMap,
    is_head: bool,
    conditionals: Option<&Conditionals>,
    member: HeaderValue,
) -> Response<ResponseBody<B>> {
    if let Some(field) = &config.strip_field {
        merged.remove(field);
    }
    if !merged.contains_key(AGE) {
        merged.insert(AGE, HeaderValue::from_static("0"));
    }
    let mut head = Response::new(()).into_parts().0;
    head.status = entry.status;
    head.version = entry.version;
    head.headers = merged;
    if conditionals
        .is_some_and(|c| c.evaluate(head.status, &head.headers) == Condition::NotModified)
    {
        let mut parts = not_modified_parts(head);
        parts.headers.append(CACHE_STATUS, member);
        return Response::from_parts(parts, ResponseBody::empty());
    }
    head.headers.append(CACHE_STATUS, member);
    let body = if is_head {
        ResponseBody::empty()
    } else {
        ResponseBody::stored(entry.body.clone())
    };
    Response::from_parts(head, body)
}

/// An unstored response streamed through, the client's conditionals
/// answered from its head.
fn passthrough<B: Body>(
    mut head: http::response::Parts,
    body: B,
    is_head: bool,
    conditionals: Option<&Conditionals>,
    member: HeaderValue,
) -> Response<ResponseBody<B>> {
    if conditionals
        .is_some_and(|c| c.evaluate(head.status, &head.headers) == Condition::NotModified)
    {
        let mut parts = not_modified_parts(head);
        parts.headers.append(CACHE_STATUS, member);
        return Response::from_parts(parts, ResponseBody::empty());
    }
    head.headers.append(CACHE_STATUS, member);
    if is_head {
        // The GET's head, Content-Length included, without its body; the
        // body's length when the head has none (RFC 9110 §8.6, §9.3.2).
        return Response::from_parts(head, ResponseBody::head(body.size_hint().exact()));
    }
    Response::from_parts(head, ResponseBody::stream(body))
}

/// Starts a `stale-while-revalidate` refresh on the executor.
fn refresh_in_background<S, ReqBody, B>(mut svc: S, mut job: Job<ReqBody>, lead: Lead)
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
            use super::l2::BeforeRefresh;
            let found = tier
                .before_refresh(
                    &job.shared,
                    &job.key,
                    &job.flight_key,
                    &job.parts.headers,
                    job.extra.as_deref(),
                    &job.req_cc,
                    &mut lead,
                )
                .await;
            match found {
                BeforeRefresh::Found(entry) => {
                    if entry.body.len() <= job.config.max_body
                        && job.shared.store.insert(&job.key, entry)
                    {
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
enum Handed<S, ReqBody, T> {
    /// The fetch ran: its result (a response's body still to stream).
    Done(T),
    /// The executor dropped the task unrun: the leader fetches itself.
    /// Boxed: the rare case.
    Unrun(Box<(S, Job<ReqBody>, Lead)>),
}

/// Gives the leader's job back if the task carrying it is dropped unrun
/// (`TokioExecutor` outside a runtime, a user executor shutting down).
struct Unrun<S, ReqBody, T> {
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
/// [`CacheLayer::executor`]: super::CacheLayer::executor
async fn lead_fetch<S, ReqBody, B>(
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
fn detach<B>(body: Pin<Box<B>>, pending: Box<Pending>)
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
async fn drain<B: Body<Data = Bytes>>(body: B, cap: usize, limit: std::time::Duration) {
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
struct Deadline {
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
