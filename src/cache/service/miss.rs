//! The miss path: one request per key leads (the others wait for what it
//! stores, or go on their own after the lock timeout), the inner service
//! answers, and the answer is stored as it streams to the client.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use crate::cache::body::ResponseBody;
use crate::cache::entry::{self, reuse, Entry, Reuse, CACHE_STATUS};
use crate::cache::flight::{Join, Lead, Outcome};
use crate::cache::handle::Counters;
use crate::cache::observe::{self, forwarded, seen};
use crate::cache::outcome::CacheOutcome::{Coalesced, Hit, Miss, Revalidated, Stale};
use crate::cache::status::Fwd;
use crate::cache::tee::Pending;
use crate::cache::validation;
use crate::etag::{not_modified_parts, Condition, Conditionals};

#[cfg(feature = "redis")]
use super::answer::l2_hit;
use super::{
    answer::{cut, from_entry},
    call::{send, transient, Job, Lookup},
    merge::{revalidated, supersedes},
    passthrough::pass,
    refresh::lead_fetch,
};

/// The miss path: coalesce with other requests for the key, or lead; then,
/// for a GET with `Range`, the range is cut from the whole response (the
/// leader's, a stored one, or one passed through), as nginx's
/// `proxy_cache` does: a leader and a waiter with and without `Range`
/// share one origin call, and each gets its own answer.
pub(super) async fn miss<S, ReqBody, B>(
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
pub(super) async fn coalesce<S, ReqBody, B>(
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
                if let Some(response) = stored_meanwhile(&job) {
                    lead.finish(Outcome::Stored);
                    return Ok(response);
                }
                // Then the shared tier: another instance may have rendered
                // it (or be rendering it, with the render lock on), also
                // when a stale copy is at hand (a revalidation marks the
                // copies of every instance at once).
                #[cfg(feature = "redis")]
                {
                    lead = match from_shared_tier(&mut job, lead).await {
                        Ok(response) => return Ok(response),
                        Err(lead) => lead,
                    };
                }
                return lead_fetch(inner, job, lead, collapsed).await;
            }
            Join::Wait(wait) => {
                Counters::bump(&job.shared.counters.coalesced);
                tracing::debug!(key = %job.key, "waiting for a request in flight");
                let waited_from = crate::date::monotonic_now();
                match wait.limit(Some(job.config.lock_timeout)).await {
                    Outcome::Stored => {
                        return match stored_for_waiter(&job, waited_from) {
                            Some(response) => Ok(response),
                            None => fetch(&mut inner, job, None, Some(false)).await,
                        };
                    }
                    Outcome::NotStorable => return fetch(&mut inner, job, None, Some(false)).await,
                    Outcome::Failed => {
                        if let Some(response) = stale_on_failure(&job) {
                            return Ok(response);
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

/// The response a flight stored between this request's lookup and its
/// leading one, when fresh: answered as `hit` would, from what the job
/// read of the request (its `Range` is taken off already).
fn stored_meanwhile<ReqBody, B: Body>(job: &Job<ReqBody>) -> Option<Response<ResponseBody<B>>> {
    if job.stale.is_some() {
        return None;
    }
    let now = crate::date::monotonic_now();
    let Lookup::Found(variants, i) = job.look_up(now) else {
        return None;
    };
    let entry = &variants.list[i];
    if !matches!(reuse(&entry.fresh, &job.req_cc, now), Reuse::Fresh) {
        return None;
    }
    let member = job.config.hit_member(entry.fresh.ttl(now));
    let response = job.answer(entry, member, now);
    Some(seen(&job.config, response, Hit, None))
}

/// The shared tier's answer for a leader: a usable entry is stored in
/// memory (its codings queued) and served, the flight finished; one that
/// is not usable as is becomes the stale entry to validate (ours is kept
/// when we have one). `Err(lead)` when the leader is to fetch.
#[cfg(feature = "redis")]
async fn from_shared_tier<ReqBody, B: Body>(
    job: &mut Job<ReqBody>,
    mut lead: Lead,
) -> Result<Response<ResponseBody<B>>, Lead> {
    let Some(tier) = job.shared.l2.clone() else {
        return Err(lead);
    };
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
    // Another instance may store longer bodies than this one: such an
    // entry is not ours to keep (nor to validate and keep), so the page is
    // fetched as if Redis had none, and found too long to store.
    let found = found.filter(|(entry, _)| entry.body.len() <= job.config.max_body);
    match found {
        Some((entry, Reuse::Fresh | Reuse::StaleAccepted)) => {
            if job.shared.store.insert(&job.key, Arc::clone(&entry)) {
                #[cfg(feature = "compression")]
                if let Some(c) = job.config.compressor() {
                    c.queue(&job.shared, &job.key, &entry);
                }
                lead.finish(Outcome::Stored);
            } else {
                // Too heavy for memory: waiters would find nothing; let
                // them go, and later requests too.
                job.shared
                    .remember_uncacheable(&job.flight_key, job.config.uncacheable_for);
                lead.finish(Outcome::NotStorable);
            }
            let now = crate::date::monotonic_now();
            let response = l2_hit(job, &entry, now);
            Ok(seen(&job.config, response, Hit, None))
        }
        Some((entry, how)) if job.stale.is_none() => {
            job.fwd = if how == Reuse::ForwardRequest {
                Fwd::Request
            } else {
                Fwd::Stale
            };
            job.stale = Some(entry);
            Err(lead)
        }
        _ => Err(lead),
    }
}

/// What a waiter gets once its leader stored a response: that response,
/// when it is the variant this request selects. The flight covers the
/// whole URI, so the leader may have stored another variant and left ours
/// as it was. A waiter only gets a response the leader stored
/// (RFC-CHECKLIST §4, collapsing), never the stale one it came with:
/// unvalidated, that would break §4.2.4 and must-revalidate (§5.2.2.2).
/// `None`: the waiter fetches on its own.
fn stored_for_waiter<ReqBody, B: Body>(
    job: &Job<ReqBody>,
    waited_from: Instant,
) -> Option<Response<ResponseBody<B>>> {
    let now = crate::date::monotonic_now();
    let Lookup::Found(variants, i) = job.look_up(now) else {
        return None;
    };
    let entry = &variants.list[i];
    variants.touch(i);
    let usable = !job.stale.as_ref().is_some_and(|s| Arc::ptr_eq(s, entry))
        && (entry.fresh.stored_at >= waited_from
            || reuse(&entry.fresh, &job.req_cc, now) == Reuse::Fresh);
    if !usable {
        return None;
    }
    // Just fetched or validated for the leader, so good for this request
    // too, whatever it asked.
    let member = job.config.fwd_member(job.fwd, None, true, Some(true));
    let response = job.answer(entry, member, now);
    Some(seen(&job.config, response, Coalesced, None))
}

/// A waiter whose leader failed: its stale entry where `stale-if-error`
/// allows (RFC 5861 §4).
fn stale_on_failure<ReqBody, B: Body>(job: &Job<ReqBody>) -> Option<Response<ResponseBody<B>>> {
    let now = crate::date::monotonic_now();
    let entry = job
        .stale
        .as_ref()
        .filter(|e| e.fresh.sie_allows(now, job.req_cc.stale_if_error))?;
    Counters::bump(&job.shared.counters.stale);
    let member = job.config.fwd_member(Fwd::Stale, None, false, Some(true));
    let response = job.answer(entry, member, now);
    Some(seen(&job.config, response, Stale, None))
}

/// Goes to the inner service for `job`, validating its stale entry if it
/// has one, and stores what may be stored. `lead`, when held, is finished
/// with the outcome so waiters learn it.
pub(super) async fn fetch<S, ReqBody, B>(
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

    let mut validating = with_our_validators(&mut parts, is_head, stale.as_ref());
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
    let mut upstream = None;
    let (result, request_time) =
        send_selecting(inner, parts, body, &mut validating, &mut upstream, &key).await;
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
        use crate::cache::representation::compressible::{decide, Decision};
        if crate::cache::representation::coding::response_coding(&head.headers)
            == Some(crate::cache::representation::coding::Coding::Identity)
        {
            policy
                .vary_names
                .retain(|n| n != http::header::ACCEPT_ENCODING);
            let len = declared.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
            if matches!(
                decide(status, &head.headers, len, &c.config),
                Decision::Compress { .. }
            ) {
                crate::cache::representation::stored::add_vary_accept_encoding(&mut head.headers);
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
pub(super) const WHOLE_BELOW: u64 = 64 * 1024;

/// How a response body began.
pub(super) enum Read<E> {
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
pub(super) const START_YIELDS: u8 = 3;

/// Readies the request of a miss for the inner service: the client's own
/// conditionals are taken off (they are answered here from the full
/// response, RFC 9111 §4.3.2, so that what comes back can be stored), ours
/// put on when the stale entry has a validator (§4.3.1: its entity tag,
/// and `Last-Modified` as well), and a HEAD asked as a GET. Returns the
/// entry being validated.
fn with_our_validators(
    parts: &mut Parts,
    is_head: bool,
    stale: Option<&Arc<Entry>>,
) -> Option<Arc<Entry>> {
    parts.headers.remove(IF_NONE_MATCH);
    parts.headers.remove(IF_MODIFIED_SINCE);
    if is_head {
        parts.method = Method::GET;
    }
    let validating = stale
        .filter(|e| e.etag().is_some() || e.last_modified().is_some())
        .cloned();
    if let Some(entry) = &validating {
        if let Some(etag) = entry.etag() {
            parts.headers.insert(IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = entry.last_modified() {
            parts.headers.insert(IF_MODIFIED_SINCE, lm.clone());
        }
    }
    validating
}

/// Sends the request of a miss. When a 304 answers our validators but
/// selects no stored response (RFC 9111 §4.3.4, see `validation`), the
/// request goes again without them where its body can be made again, and
/// `validating` is then cleared (unless that answer is a 304 too). Returns
/// the answer and when the request that got it was sent.
async fn send_selecting<S, ReqBody, B>(
    inner: &mut S,
    parts: Parts,
    body: ReqBody,
    validating: &mut Option<Arc<Entry>>,
    upstream: &mut Option<std::time::Duration>,
    key: &str,
) -> (Result<Response<B>, S::Error>, Instant)
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    ReqBody: 'static,
{
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
    let mut result = send(inner, Request::from_parts(parts, body), upstream).await;
    let unselected = |res: &Response<B>, entry: &Arc<Entry>| {
        res.status() == StatusCode::NOT_MODIFIED
            && !validation::selects(entry.etag(), res.headers())
    };
    if let (Ok(res), Some(entry)) = (&result, &*validating) {
        if unselected(res, entry) {
            if let Some((again, empty)) = again.take() {
                tracing::debug!(key = %key, "304 selects no stored response: sent again unconditionally");
                let validated = validating.take();
                request_time = crate::date::monotonic_now();
                result = send(inner, Request::from_parts(again, empty), upstream).await;
                // RFC 9110 §15.4.5: a 304 answers a conditional request
                // only; one to this unconditional request is no answer for
                // the client (its own validators were taken off). It is
                // handled as the first one was when nothing can be sent
                // again (§4.3.4, see `revalidated`): the stored response
                // it vouches for is served, or freshened if it selects it.
                if matches!(&result, Ok(res) if res.status() == StatusCode::NOT_MODIFIED) {
                    *validating = validated;
                }
            }
        }
    }
    (result, request_time)
}

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
pub(super) async fn read_start<B: Body<Data = Bytes>>(
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

/// An unstored response streamed through, the client's conditionals
/// answered from its head.
pub(super) fn passthrough<B: Body>(
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
