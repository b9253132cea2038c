use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderValue, AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, IF_MATCH, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LOCATION, PRAGMA, RANGE,
};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use super::body::ResponseBody;
use super::entry::{
    self, has_authorization, reuse, Entry, NotStorable, RequestDirectives, Reuse, CACHE_STATUS,
};
use super::flight::{Join, Lead, Outcome};
use super::future::ResponseFuture;
use super::handle::{Counters, ResponseCache, Shared};
use super::key::{origin_of, write_uri_key};
use super::layer::Config;
use super::observe::{self, forwarded, seen};
use super::outcome::CacheOutcome::{Bypass, Coalesced, Hit, Miss, Revalidated, Stale};
use super::status::Fwd;
use super::store::Variants;
use super::tee::Pending;
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

/// The service that `poll_ready` made ready, leaving a clone in its place
/// (tower's usual way to move a ready service into a future).
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
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
) -> Lookup {
    let Some(variants) = shared.store.get(key) else {
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
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

        let is_head = parts.method == Method::HEAD;
        if parts.method != Method::GET && !is_head {
            // RFC 9111 §4: never answered from the cache.
            Counters::bump(&shared.counters.misses);
            let inner = take_ready(&mut self.inner);
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

        let extra = match &config.key_fn {
            None => Some(None),
            Some(f) => f(&parts).map(|s| Some(s.into_boxed_str())),
        };
        let req_cc = RequestDirectives::from_headers(&parts.headers, config.ignore_client_no_cache);
        let has_auth = has_authorization(&parts.headers);
        // The hit path builds its key in a per-thread buffer: no allocation.
        let found = KEY.with(|buf| {
            let mut buf = buf.borrow_mut();
            // No key, no cache: a bad Host bypasses (see write_uri_key).
            if !write_uri_key(&mut buf, &parts.uri, &parts.headers, config.query) {
                return None;
            }
            let extra = extra.as_ref()?;
            (buf.len() <= config.max_key)
                .then(|| lookup(shared, &buf, &parts.headers, extra.as_deref(), has_auth))
        });
        let (Some(found), Some(extra)) = (found, extra) else {
            Counters::bump(&shared.counters.misses);
            let inner = take_ready(&mut self.inner);
            let member = config.fwd_member(Fwd::Bypass, None, false, None);
            let req = Request::from_parts(parts, body);
            let pass = pass(inner, req, member);
            return ResponseFuture::miss(Box::pin(forwarded(
                Arc::clone(&self.config),
                Bypass,
                pass,
            )));
        };

        let now = crate::date::monotonic_now();
        let mut fwd = Fwd::UriMiss;
        let mut stale = None;
        match found {
            Lookup::Found(variants, i) => {
                let entry = &variants.list[i];
                match reuse(&entry.fresh, &req_cc, now) {
                    Reuse::Fresh => {
                        Counters::bump(&shared.counters.hits);
                        let response = hit(config, entry, &parts, now);
                        return ResponseFuture::ready(seen(config, response, Hit, None));
                    }
                    Reuse::StaleAccepted => {
                        Counters::bump(&shared.counters.hits);
                        Counters::bump(&shared.counters.stale);
                        let response = hit(config, entry, &parts, now);
                        return ResponseFuture::ready(seen(config, response, Stale, None));
                    }
                    Reuse::StaleWhileRevalidate if config.executor.is_some() => {
                        Counters::bump(&shared.counters.hits);
                        Counters::bump(&shared.counters.stale);
                        let response = seen(config, hit(config, entry, &parts, now), Stale, None);
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
                                fwd: Fwd::Stale,
                                req_cc,
                                has_auth,
                                refresh: true,
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
        let inner = take_ready(&mut self.inner);
        // HEAD is never stored (its response has no body to store) and a
        // HEAD miss goes inward as HEAD, so a HEAD can never leave an empty
        // body where a GET will look. Ranges and origin-only preconditions
        // (RFC 9111 §4.3.2) go inward untouched too.
        if is_head
            || parts.headers.contains_key(RANGE)
            || parts.headers.contains_key(IF_MATCH)
            || parts.headers.contains_key(IF_UNMODIFIED_SINCE)
        {
            let member = config.fwd_member(fwd, None, false, None);
            let req = Request::from_parts(parts, body);
            let pass = pass(inner, req, member);
            return ResponseFuture::miss(Box::pin(forwarded(Arc::clone(&self.config), Miss, pass)));
        }
        let key = owned_key(config, &parts);
        let flight_key = flight_key(&key, extra.as_deref());
        if stale.is_none() && shared.is_uncacheable(&flight_key) {
            // Just seen uncacheable: straight through, as if there were no
            // cache, without queueing or copying anything for a store.
            let member = config.fwd_member(fwd, None, false, None);
            let req = Request::from_parts(parts, body);
            let shared = Arc::clone(shared);
            let config = Arc::clone(&self.config);
            let fwd = forward_uncacheable(inner, req, member, config, shared, flight_key);
            return ResponseFuture::miss(Box::pin(forwarded(Arc::clone(&self.config), Miss, fwd)));
        }
        let job = Job {
            config: Arc::clone(&self.config),
            shared: Arc::clone(shared),
            conditionals: Conditionals::from_request(&parts.method, &parts.headers),
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
fn from_entry<B: Body>(
    entry: &Entry,
    is_head: bool,
    conditionals: Option<&Conditionals>,
    member: HeaderValue,
    now: Instant,
) -> Response<ResponseBody<B>> {
    let mut res = Response::new(if is_head {
        ResponseBody::empty()
    } else {
        ResponseBody::stored(entry.body.clone())
    });
    *res.status_mut() = entry.status;
    *res.headers_mut() = entry.headers.clone();
    let age = age_value(entry.fresh.age(now));
    let mut placeholder = entry.status_placeholder;
    if conditionals
        .is_some_and(|c| c.evaluate(entry.status, &entry.headers) == Condition::NotModified)
    {
        // The 304 keeps only validators and caching fields (RFC 9110
        // §15.4.5); no Cache-Status line survives, so ours is appended.
        let (parts, _) = res.into_parts();
        placeholder = false;
        res = Response::from_parts(not_modified_parts(parts), ResponseBody::empty());
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
    now: Instant,
) -> Response<ResponseBody<B>> {
    let conditionals = Conditionals::from_request(&parts.method, &parts.headers);
    let member = config.hit_member(entry.fresh.ttl(now));
    from_entry(
        entry,
        parts.method == Method::HEAD,
        conditionals.as_ref(),
        member,
        now,
    )
}

/// A response from an entry the shared tier had (`detail=redis`).
#[cfg(feature = "redis")]
fn l2_hit<B: Body>(
    config: &Config,
    entry: &Entry,
    parts: &Parts,
    now: Instant,
) -> Response<ResponseBody<B>> {
    let conditionals = Conditionals::from_request(&parts.method, &parts.headers);
    let member = super::status::hit_detail(&config.name, entry.fresh.ttl(now), "redis");
    from_entry(entry, false, conditionals.as_ref(), member, now)
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
    let (mut parts, body) = inner.call(req).await?.into_parts();
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
    parts.headers.append(CACHE_STATUS, member);
    Ok(Response::from_parts(parts, ResponseBody::stream(body)))
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

/// The miss path: coalesce with other requests for the key, or lead.
async fn miss<S, ReqBody, B>(
    mut inner: S,
    #[cfg_attr(not(feature = "redis"), allow(unused_mut))] mut job: Job<ReqBody>,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body<Data = Bytes>,
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
                    if let Lookup::Found(variants, i) = lookup(
                        &job.shared,
                        &job.key,
                        &job.parts.headers,
                        job.extra.as_deref(),
                        false,
                    ) {
                        let entry = &variants.list[i];
                        let now = crate::date::monotonic_now();
                        if matches!(reuse(&entry.fresh, &job.req_cc, now), Reuse::Fresh) {
                            lead.finish(Outcome::Stored);
                            let response = hit(&job.config, entry, &job.parts, now);
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
                                let response = l2_hit(&job.config, &entry, &job.parts, now);
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
                return fetch(&mut inner, job, Some(lead), collapsed).await;
            }
            Join::Wait(wait) => {
                Counters::bump(&job.shared.counters.coalesced);
                tracing::debug!(key = %job.key, "waiting for a request in flight");
                let waited_from = crate::date::monotonic_now();
                match wait.limit(Some(job.config.lock_timeout)).await {
                    Outcome::Stored => {
                        let found = lookup(
                            &job.shared,
                            &job.key,
                            &job.parts.headers,
                            job.extra.as_deref(),
                            false,
                        );
                        let now = crate::date::monotonic_now();
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
                            if !usable(entry) {
                                return fetch(&mut inner, job, None, Some(false)).await;
                            }
                            // Just fetched or validated for the leader, so
                            // good for this request too, whatever it asked.
                            let member = job.config.fwd_member(job.fwd, None, true, Some(true));
                            let response =
                                from_entry(entry, false, job.conditionals.as_ref(), member, now);
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
                            let response =
                                from_entry(entry, false, job.conditionals.as_ref(), member, now);
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
    let validating = stale
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
    let request_time = crate::date::monotonic_now();
    let started = Instant::now();
    let result = inner.call(Request::from_parts(parts, body)).await;
    let upstream = Some(started.elapsed());
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
                    from_entry(entry, false, conditionals.as_ref(), member, now),
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
            let response = revalidated(
                &config,
                &shared,
                &key,
                &entry,
                &head.headers,
                &req_cc,
                has_auth,
                request_time,
                response_time,
                fwd,
                collapsed,
                conditionals.as_ref(),
            );
            finish(lead, Outcome::Stored);
            return Ok(report(response, Revalidated));
        }
    }

    // RFC 5861 §4: 500, 502, 503 and 504 count as errors.
    if matches!(status.as_u16(), 500 | 502 | 503 | 504) {
        if let Some(response) = serve_stale(Some(status.as_u16())) {
            finish(lead, Outcome::Failed);
            return Ok(response);
        }
    }

    let fwd_status = validating.is_some().then_some(status.as_u16());
    let policy = entry::storable(
        status,
        &head.headers,
        &req_cc,
        has_auth,
        &config.rules,
        request_time,
        response_time,
    );
    let policy = match policy {
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
                passthrough(head, body, conditionals.as_ref(), member),
                Miss,
            ));
        }
    };

    let declared = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
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
    };
    // A body of unknown length (a streamed render) is stored as it passes
    // to the client, so the first bytes are not held back; unless the
    // client's own conditional may turn the answer into a 304, which needs
    // the whole response first.
    if fits && declared.is_none() && hint.exact().is_none() && conditionals.is_none() {
        if let Some(field) = &config.strip_field {
            head.headers.remove(field);
        }
        // Whether it ends up stored is not known yet: no `stored`.
        head.headers.append(CACHE_STATUS, member(false));
        let response = Response::from_parts(head, ResponseBody::tee(body, pending));
        return Ok(report(response, Miss));
    }
    let collected = if fits {
        collect(body, cap).await
    } else {
        Collected::TooLong(VecDeque::new(), Box::pin(body))
    };
    let response: Result<_, S::Error> = match collected {
        // §3.3: a body shorter than announced is incomplete: not stored.
        Collected::Complete(bytes) if declared.map_or(true, |n| n == bytes.len() as u64) => {
            pending.len = bytes.len();
            pending.chunks.push(bytes);
            let (entry, stored) = pending.store();
            Ok(from_entry(
                &entry,
                false,
                conditionals.as_ref(),
                member(stored),
                crate::date::monotonic_now(),
            ))
        }
        Collected::Complete(bytes) => {
            if let Some(lead) = pending.lead.take() {
                lead.finish(Outcome::Failed);
            }
            head.headers.remove(CONTENT_LENGTH);
            head.headers.append(CACHE_STATUS, member(false));
            Ok(Response::from_parts(head, ResponseBody::stored(bytes)))
        }
        Collected::TooLong(buffered, rest) => {
            pending.too_long();
            head.headers.append(CACHE_STATUS, member(false));
            Ok(Response::from_parts(
                head,
                ResponseBody::replay(buffered, None, Some(rest)),
            ))
        }
        Collected::Failed(buffered, error) => {
            // Nothing partial is stored; the flight failed.
            pending.fail();
            head.headers.append(CACHE_STATUS, member(false));
            Ok(Response::from_parts(
                head,
                ResponseBody::replay(buffered, Some(error), None),
            ))
        }
    };
    response.map(|response| report(response, Miss))
}

/// Whether a response that may not be stored says the resource is no longer
/// storable, so that it replaces the stored variant and the key is
/// remembered as uncacheable. Not when only this request forbade storing
/// (a request's `no-store` concerns that request alone, RFC 9111 §5.2.1.5;
/// `Authorization`, §3.5), nor for an answer to what this request asked
/// rather than a new representation: a range (206, 416) or a precondition
/// (304, 412; §3, §4.3.2). Nor a server error: the cache may forward it or
/// act as if the origin did not answer (§4.3.3), and one failure must not
/// drop a good entry or stop coalescing during an outage. RFC 9111 asks to
/// purge only on §4.4.
fn supersedes(reason: NotStorable, status: StatusCode) -> bool {
    matches!(reason, NotStorable::Response(_))
        && !matches!(status.as_u16(), 206 | 304 | 412 | 416)
        && !status.is_server_error()
}

/// A 304 answered our validators: freshen the stored entry (RFC 9111
/// §4.3.4) and answer from it.
#[allow(clippy::too_many_arguments)]
fn revalidated<B: Body>(
    config: &Config,
    shared: &Shared,
    key: &str,
    entry: &Arc<Entry>,
    not_modified: &HeaderMap,
    req_cc: &RequestDirectives,
    has_auth: bool,
    request_time: Instant,
    response_time: (Instant, SystemTime),
    fwd: Fwd,
    collapsed: Option<bool>,
    conditionals: Option<&Conditionals>,
) -> Response<ResponseBody<B>> {
    let now = response_time.0;
    // §4.3.4: a 304 naming another strong validator selects no stored
    // response: answer from what we have, and let the next request fetch.
    let same_tag = match (not_modified.get(http::header::ETAG), entry.etag()) {
        (Some(a), Some(b)) => {
            let (a, b) = (
                crate::etag::ETag::parse(a.as_bytes()),
                crate::etag::ETag::parse(b.as_bytes()),
            );
            matches!((a, b), (Some(a), Some(b)) if a.weak_eq(&b))
        }
        _ => true,
    };
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
    match policy {
        Ok(policy) if same_tag => {
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
            let fresh = Arc::new(fresh);
            if !shared.store.insert(key, Arc::clone(&fresh)) {
                // The merged headers made it too heavy for the tier.
                shared.store.remove_variant(key, entry);
                return from_entry(&fresh, false, conditionals, member(false), now);
            }
            shared.stored_l2(key, &fresh, None);
            Counters::bump(&shared.counters.revalidations);
            shared.count_store();
            tracing::debug!(key, "stored response revalidated");
            from_entry(&fresh, false, conditionals, member(true), now)
        }
        _ => {
            shared.store.remove_variant(key, entry);
            from_entry(entry, false, conditionals, member(false), now)
        }
    }
}

/// An unstored response streamed through, the client's conditionals
/// answered from its head.
fn passthrough<B: Body>(
    mut head: http::response::Parts,
    body: B,
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
    Response::from_parts(head, ResponseBody::stream(body))
}

enum Collected<B: Body> {
    Complete(Bytes),
    TooLong(VecDeque<Bytes>, Pin<Box<B>>),
    Failed(VecDeque<Bytes>, B::Error),
}

/// Reads a body whole, up to `cap` bytes. Trailers are dropped (RFC 9111
/// §3.1 allows it).
async fn collect<B: Body<Data = Bytes>>(body: B, cap: usize) -> Collected<B> {
    let mut body = Box::pin(body);
    let mut chunks = VecDeque::new();
    let mut len = 0usize;
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    len = len.saturating_add(data.len());
                    if !data.is_empty() {
                        chunks.push_back(data);
                    }
                    if len > cap {
                        return Collected::TooLong(chunks, body);
                    }
                }
            }
            Err(e) => return Collected::Failed(chunks, e),
        }
    }
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(len);
            for c in chunks {
                all.extend_from_slice(&c);
            }
            all.freeze()
        }
    };
    Collected::Complete(bytes)
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
