//! Responses made from stored entries: hits, `304`s, `HEAD`s and ranges
//! (RFC 9111 §4, RFC 9110 §13 and §14), and ranges cut from a miss.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, AGE, CONTENT_LENGTH, CONTENT_RANGE, IF_RANGE, RANGE};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body::Body;

use crate::cache::body::ResponseBody;
use crate::cache::entry::{Entry, CACHE_STATUS};
use crate::cache::fields::Present;
use crate::cache::layer::Config;
use crate::cache::representation::stored::{choose, Wants};
use crate::etag::{not_modified_parts, Condition, Conditionals};

use super::call::Job;

/// Takes `Range` and `If-Range` off a request that has a `Range`: for a
/// GET, returned to be applied to the whole response (RFC 9110 §14); for a
/// HEAD, dropped (§14.2: range handling is defined for GET only). A lone
/// `If-Range` is left alone (§13.1.5 has it ignored).
pub(super) fn take_range(headers: &mut HeaderMap, is_head: bool) -> Option<HeaderMap> {
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
pub(super) fn cut<B: Body<Data = Bytes>>(
    res: Response<ResponseBody<B>>,
    range: &HeaderMap,
) -> Response<ResponseBody<B>> {
    use crate::cache::representation::range::{content_range, plan, unsatisfied_range, RangePlan};
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

/// A response from a stored entry (RFC 9111 §4): `Age` set, the client's
/// own conditionals answered (§4.3.2), no body for HEAD.
///
/// The representation is chosen first (`wants`: the client's
/// `Accept-Encoding` and `no-transform`), and the conditionals are
/// evaluated against its headers: a 304 and a HEAD are per representation,
/// with its own `ETag` and `Content-Length`. An entry without codings made
/// costs nothing more than before.
pub(super) fn from_entry<B: Body>(
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
pub(super) fn from_entry_ranged<B: Body>(
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
        use crate::cache::representation::range::{
            content_range, plan, unsatisfied_range, RangePlan,
        };
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
pub(super) fn age_value(secs: u64) -> HeaderValue {
    static SMALL: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
    let small = SMALL.get_or_init(|| (0..=600u64).map(HeaderValue::from).collect());
    usize::try_from(secs)
        .ok()
        .and_then(|i| small.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

pub(super) fn hit<B: Body>(
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
pub(super) fn wants_for(entry: &Entry, headers: &HeaderMap) -> Wants {
    if entry.reprs.is_some() {
        Wants::from_headers(headers)
    } else {
        Wants::default()
    }
}

impl<ReqBody> Job<ReqBody> {
    /// [`from_entry`] for this job's request: its method, its own
    /// conditionals and its wishes about representations.
    pub(super) fn answer<B: Body>(
        &self,
        entry: &Entry,
        member: HeaderValue,
        now: Instant,
    ) -> Response<ResponseBody<B>> {
        from_entry(
            entry,
            self.is_head,
            self.conditionals.as_ref(),
            &self.wants,
            member,
            now,
        )
    }
}

/// A response from an entry the shared tier had (`detail=redis`);
/// `job` is the miss's: its `wants` say whether a range is to be cut (from
/// identity, where acceptable).
#[cfg(feature = "redis")]
pub(super) fn l2_hit<B: Body, ReqBody>(
    job: &Job<ReqBody>,
    entry: &Entry,
    now: Instant,
) -> Response<ResponseBody<B>> {
    let member = crate::cache::status::hit_detail(&job.config.name, entry.fresh.ttl(now), "redis");
    job.answer(entry, member, now)
}
