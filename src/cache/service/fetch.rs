//! Fetching from the inner service for a miss: our validators on the
//! request (RFC 9111 §4.3.1), the answer decided on (a 304 merged, a
//! transient failure answered stale, an unstorable answer forwarded), and
//! a storable one stored as it streams to the client.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use crate::cache::body::ResponseBody;
use crate::cache::entry::{self, Entry, NotStorable, Policy, RequestDirectives, CACHE_STATUS};
use crate::cache::flight::{Lead, Outcome};
use crate::cache::handle::{Counters, Shared};
use crate::cache::layer::Config;
use crate::cache::observe;
use crate::cache::outcome::CacheOutcome::{self, Miss, Revalidated, Stale};
use crate::cache::representation::stored::Wants;
use crate::cache::status::Fwd;
use crate::cache::tee::Pending;
use crate::cache::validation;
use crate::etag::{not_modified_parts, Condition, Conditionals};

use super::{
    answer::from_entry,
    call::{send, transient, Job},
    merge::{revalidated, supersedes},
};

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
    let mut validating = with_our_validators(&mut parts, is_head, stale.as_ref());
    let request_headers = parts.headers.clone();
    // The cache makes the codings itself: it asks for identity, the one
    // representation every other is made from (and ranges cut from).
    #[cfg(feature = "compression")]
    if config.compressor().is_some() {
        parts.headers.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    let mut upstream = None;
    let (result, request_time) =
        send_selecting(inner, parts, body, &mut validating, &mut upstream, &key).await;
    let now = crate::date::monotonic_now();
    let mut answered = Answered {
        config,
        shared,
        key,
        flight_key,
        extra,
        stale,
        fwd,
        fwd_status: None,
        req_cc,
        has_auth,
        conditionals,
        refresh,
        is_head,
        wants,
        request_headers,
        lead,
        collapsed,
        upstream,
        request_time,
        response_time: (now, SystemTime::now()),
    };
    match result {
        Ok(res) => Ok(answered.take(res, validating).await),
        Err(e) => {
            answered.finish(Outcome::Failed);
            // RFC 5861 §4: an error may be answered with a stale copy.
            answered.serve_stale(None).ok_or(e)
        }
    }
}

/// A fetch once the inner service has answered: what deciding on the
/// answer, storing it and reporting it need.
struct Answered {
    config: Arc<Config>,
    shared: Arc<Shared>,
    key: String,
    flight_key: String,
    extra: Option<Box<str>>,
    stale: Option<Arc<Entry>>,
    fwd: Fwd,
    /// The status that answered our validators, when we sent some.
    fwd_status: Option<u16>,
    req_cc: RequestDirectives,
    has_auth: bool,
    conditionals: Option<Conditionals>,
    refresh: bool,
    is_head: bool,
    wants: Wants,
    /// The request as sent inward, for the stored entry's `Vary` values.
    request_headers: HeaderMap,
    lead: Option<Lead>,
    collapsed: Option<bool>,
    upstream: Option<Duration>,
    request_time: Instant,
    response_time: (Instant, SystemTime),
}

impl Answered {
    /// Tells the flight's waiters, if this fetch leads one.
    fn finish(&mut self, outcome: Outcome) {
        if let Some(lead) = self.lead.take() {
            lead.finish(outcome);
        }
    }

    fn report<T>(&self, res: Response<T>, outcome: CacheOutcome) -> Response<T> {
        observe::fetched(&self.config, res, outcome, self.upstream, self.refresh)
    }

    /// The `Cache-Status` member for what was forwarded.
    fn member(&self, stored: bool) -> HeaderValue {
        self.config
            .fwd_member(self.fwd, self.fwd_status, stored, self.collapsed)
    }

    /// The stale copy, where `stale-if-error` allows it after `status`
    /// (none: the inner service failed).
    fn serve_stale<B: Body>(&self, status: Option<u16>) -> Option<Response<ResponseBody<B>>> {
        let now = self.response_time.0;
        let entry = self
            .stale
            .as_ref()
            .filter(|e| e.fresh.sie_allows(now, self.req_cc.stale_if_error))?;
        Counters::bump(&self.shared.counters.stale);
        let member = self
            .config
            .fwd_member(Fwd::Stale, status, false, self.collapsed);
        let res = from_entry(
            entry,
            self.is_head,
            self.conditionals.as_ref(),
            &self.wants,
            member,
            now,
        );
        Some(self.report(res, Stale))
    }

    /// The answer forwarded as it is, stored nowhere.
    fn forwarded<B: Body>(
        &self,
        mut head: http::response::Parts,
        body: B,
    ) -> Response<ResponseBody<B>> {
        if let Some(field) = &self.config.strip_field {
            head.headers.remove(field);
        }
        let member = self.member(false);
        let res = passthrough(head, body, self.is_head, self.conditionals.as_ref(), member);
        self.report(res, Miss)
    }

    /// Decides on the inner service's answer: a 304 merged, a transient
    /// failure forwarded (or answered stale), an unstorable answer
    /// forwarded, a storable one stored as it is read.
    async fn take<B: Body<Data = Bytes>>(
        mut self,
        res: Response<B>,
        validating: Option<Arc<Entry>>,
    ) -> Response<ResponseBody<B>> {
        #[cfg_attr(not(feature = "compression"), allow(unused_mut))]
        let (mut head, body) = res.into_parts();
        let status = head.status;
        if status == StatusCode::NOT_MODIFIED {
            if let Some(entry) = validating {
                return self.not_modified(&entry, &head.headers);
            }
        }
        self.fwd_status = validating.is_some().then_some(status.as_u16());
        // RFC 5861 §4 names 500, 502, 503 and 504; a timeout, a rate limit
        // or any server error is as much a failure to answer (see
        // `transient`).
        if transient(status) {
            self.finish(Outcome::Failed);
            if let Some(response) = self.serve_stale(Some(status.as_u16())) {
                return response;
            }
            tracing::debug!(key = %self.key, status = status.as_u16(), "transient answer: forwarded, nothing evicted");
            return self.forwarded(head, body);
        }
        let policy = entry::storable(
            status,
            &head.headers,
            &self.req_cc,
            self.has_auth,
            &self.config.rules,
            self.request_time,
            self.response_time,
        );
        #[cfg_attr(not(feature = "compression"), allow(unused_mut))]
        let mut policy = match policy {
            Ok(p) => p,
            Err(reason) => return self.not_stored(reason, head, body),
        };
        let declared = head
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        #[cfg(feature = "compression")]
        self.vary_for_codings(&mut policy, &mut head, declared);
        self.store_as_read(head, body, policy, declared).await
    }

    /// A 304 to our validators: merged into the stored response
    /// (RFC 9111 §4.3.4).
    fn not_modified<B: Body>(
        mut self,
        entry: &Arc<Entry>,
        not_modified: &HeaderMap,
    ) -> Response<ResponseBody<B>> {
        let (response, stored) = revalidated(
            &self.config,
            &self.shared,
            (&self.key, &self.flight_key),
            entry,
            not_modified,
            &self.req_cc,
            self.has_auth,
            self.request_time,
            self.response_time,
            self.fwd,
            self.collapsed,
            self.conditionals.as_ref(),
            self.is_head,
            &self.wants,
        );
        // Waiters look up a freshened entry; when the merged response may
        // not be shared they go on alone, and never get this client's
        // response (its Set-Cookie, say).
        self.finish(if stored {
            Outcome::Stored
        } else {
            Outcome::NotStorable
        });
        self.report(response, Revalidated)
    }

    /// An answer that may not be stored, forwarded; one that supersedes the
    /// stored response removes it.
    fn not_stored<B: Body>(
        mut self,
        reason: NotStorable,
        head: http::response::Parts,
        body: B,
    ) -> Response<ResponseBody<B>> {
        let status = head.status;
        tracing::debug!(key = %self.key, ?reason, "response not stored");
        if supersedes(reason, status) {
            self.shared
                .remember_uncacheable(&self.flight_key, self.config.uncacheable_for);
            if let Some(entry) = &self.stale {
                // Superseded by a response that may not be stored.
                self.shared.store.remove_variant(&self.key, entry);
            }
        }
        // To waiters, a server error is a failure: they may answer it with
        // their stale copy (RFC 5861 §4), or one takes over.
        self.finish(if status.is_server_error() {
            Outcome::Failed
        } else {
            Outcome::NotStorable
        });
        self.forwarded(head, body)
    }

    /// An identity response, when the cache negotiates codings itself, is
    /// one stored response for every `Accept-Encoding`: the key does not
    /// vary on the raw value (the origin's `Vary: Accept-Encoding` is
    /// satisfied by the negotiation), and a response the cache may
    /// compress says it varies, so caches further out keep the codings
    /// apart. A response in a coding of its own keeps varying as the origin
    /// said.
    #[cfg(feature = "compression")]
    fn vary_for_codings(
        &self,
        policy: &mut Policy,
        head: &mut http::response::Parts,
        declared: Option<u64>,
    ) {
        use crate::cache::representation::coding::{response_coding, Coding};
        use crate::cache::representation::compressible::{decide, Decision};
        use crate::cache::representation::stored::add_vary_accept_encoding;
        let Some(c) = self.config.compressor() else {
            return;
        };
        if response_coding(&head.headers) != Some(Coding::Identity) {
            return;
        }
        policy
            .vary_names
            .retain(|n| n != http::header::ACCEPT_ENCODING);
        let len = declared.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        if matches!(
            decide(head.status, &head.headers, len, &c.config),
            Decision::Compress { .. }
        ) {
            add_vary_accept_encoding(&mut head.headers);
        }
    }

    /// Stores a storable answer as it is read: whole first when it must be
    /// (see below), else streaming to the client from its first bytes.
    async fn store_as_read<B: Body<Data = Bytes>>(
        mut self,
        mut head: http::response::Parts,
        body: B,
        policy: Policy,
        declared: Option<u64>,
    ) -> Response<ResponseBody<B>> {
        let cap = self.config.max_body;
        let hint = body.size_hint();
        let fits = declared.map_or(true, |n| n <= cap as u64) && hint.lower() <= cap as u64;
        let pending = Pending {
            shared: Arc::clone(&self.shared),
            config: Arc::clone(&self.config),
            key: std::mem::take(&mut self.key),
            flight_key: std::mem::take(&mut self.flight_key),
            status: head.status,
            version: head.version,
            headers: head.headers.clone(),
            policy,
            request_headers: std::mem::take(&mut self.request_headers),
            extra: self.extra.take(),
            lead: self.lead.take(),
            chunks: Vec::new(),
            len: 0,
            declared,
        };
        if let Some(field) = &self.config.strip_field {
            head.headers.remove(field);
        }
        // Boxed (the miss path) so the part read here and the rest can go
        // to the client as one body.
        let mut body = Box::pin(body);
        // The client's own conditional may turn the answer into a 304, and
        // a HEAD needs the whole GET body stored: both read it whole first.
        // Otherwise the response goes to the client as soon as it has
        // started (see `read_start`) and is stored as it passes.
        // So is a small body of known length (as nginx buffers small
        // responses): an origin that sets `Content-Length` has the body at
        // hand, and one that then breaks off gets a 502 however the close
        // races its first bytes (issue 8 §8). Bigger ones stream.
        // A range is cut from the whole too (see `miss`): only a stored
        // body can be cut without reading the rest for the store.
        let whole = self.conditionals.is_some()
            || self.is_head
            || self.wants.range
            || declared.is_some_and(|n| n <= WHOLE_BELOW)
            || hint.exact().is_some_and(|n| n <= WHOLE_BELOW);
        let read = if !fits {
            Read::TooLong(VecDeque::new())
        } else if !whole && declared.is_none() && hint.exact().is_none() {
            // A body of unknown length (a streamed render) goes out with
            // its headers at once, as it always has: a renderer may flush
            // its head early and take its time over the rest. Only what is
            // ready now is looked at first (a few cooperative yields, no
            // timer), so that a body cut before its first byte gets a 502
            // rather than a 200 and an aborted connection (issue 8 §8). A
            // later break-off aborts the client's connection; it is never
            // stored either way.
            read_start(&mut body, cap, false, true).await
        } else {
            read_start(&mut body, cap, whole, false).await
        };
        self.respond(read, head, body, pending)
    }

    /// The client's response once the body's start is read: from the
    /// entry stored, a 502 (or the stale copy) for a body that broke off,
    /// or the rest streamed, stored as it passes when it may be.
    fn respond<B: Body<Data = Bytes>>(
        &self,
        read: Read<B::Error>,
        mut head: http::response::Parts,
        body: Pin<Box<B>>,
        mut pending: Pending,
    ) -> Response<ResponseBody<B>> {
        let declared = pending.declared;
        let response = match read {
            // §3.3: a body shorter than announced is incomplete: never
            // stored, and never shown as complete.
            Read::Complete(chunks, len) if declared.map_or(true, |n| n == len as u64) => {
                pending.len = len;
                pending.chunks.extend(chunks);
                let (entry, stored) = pending.store();
                from_entry(
                    &entry,
                    self.is_head,
                    self.conditionals.as_ref(),
                    &self.wants,
                    self.member(stored),
                    crate::date::monotonic_now(),
                )
            }
            Read::Complete(..) | Read::Failed(_) => {
                // The upstream broke off before anything reached the
                // client: nothing partial is stored, the flight failed
                // (waiters never see the truncated body), and the client
                // gets a stale copy where allowed, else a clean 502 (RFC
                // 9110 §15.6.3) instead of a connection closed without a
                // status.
                pending.fail();
                if let Some(response) = self.serve_stale(Some(502)) {
                    return response;
                }
                tracing::debug!(
                    status = head.status.as_u16(),
                    "upstream body broke off: 502"
                );
                let mut res = Response::new(ResponseBody::empty());
                *res.status_mut() = StatusCode::BAD_GATEWAY;
                res.headers_mut().append(CACHE_STATUS, self.member(false));
                res
            }
            Read::TooLong(buffered) => {
                pending.too_long();
                head.headers.append(CACHE_STATUS, self.member(false));
                let body = ResponseBody::replay(buffered, None, Some(body));
                // A HEAD gets the GET's head without its content: its
                // length stays what the GET's would be (RFC 9110 §8.6,
                // §9.3.2).
                let body = if self.is_head {
                    ResponseBody::head(body.size_hint().exact())
                } else {
                    body
                };
                Response::from_parts(head, body)
            }
            Read::Started(buffered, len) => {
                pending.len = len;
                pending.chunks.extend(buffered.iter().cloned());
                // Whether it ends up stored is not known yet: no `stored`.
                head.headers.append(CACHE_STATUS, self.member(false));
                Response::from_parts(head, ResponseBody::tee(buffered, body, pending))
            }
        };
        self.report(response, Miss)
    }
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
