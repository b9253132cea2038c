//! A stored response and the RFC 9111 rules that decide whether a response
//! may be stored (§3), how long it stays fresh (§4.2) and whether a stored
//! response may answer a request (§4, §4.2.4, §5.2.1).

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, DATE, ETAG, EXPIRES,
    LAST_MODIFIED, PRAGMA, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::{HeaderMap, StatusCode, Version};

use super::sf::{self, Item};
use crate::directives::{Directives, DELTA_MAX};

pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
const PROXY_AUTHENTICATION_INFO: HeaderName = HeaderName::from_static("proxy-authentication-info");
const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// Fixed bookkeeping counted for every stored response besides its bytes
/// and header slots: the entry struct and its `Arc` (about 300 bytes),
/// moka's nodes, the variant list, the shared-buffer headers of the body
/// and header values, and the allocator's cost per block (about 25 blocks
/// an entry), as measured by `tests/cache_alloc.rs` with a counting
/// allocator (rounded up: counting more than is held only costs capacity).
const ENTRY_OVERHEAD: usize = 1280;

/// A stored response, ready to send: headers prepared once at store time,
/// the body a `Bytes` that every hit clones without copying. `Clone` for
/// revalidation, which stores a copy marked stale (`revalidate.rs`).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// The stored fields (no hop-by-hop fields, no `Age` or `Cache-Status`
    /// of ours) plus an `Age` placeholder and, when the origin sent no
    /// `Cache-Status`, a placeholder for ours: a hit replaces their values
    /// in place, so the map it clones never grows (and reallocates) per
    /// hit. Kept compact: no spare capacity.
    pub(crate) headers: HeaderMap,
    /// Whether `headers` holds the `Cache-Status` placeholder.
    pub(crate) status_placeholder: bool,
    pub(crate) body: Bytes,
    /// The request's values of the fields the response's `Vary` named.
    pub(crate) vary: Box<[(HeaderName, Option<HeaderValue>)]>,
    /// The user key closure's value for the request that stored it.
    pub(crate) extra: Option<Box<str>>,
    pub(crate) fresh: Freshness,
    /// Purge tags from `Surrogate-Key` / `Cache-Tag`.
    pub(crate) tags: Box<[Box<str>]>,
    /// Whether a request with `Authorization` may reuse it (RFC 9111 §3.5).
    pub(crate) auth_ok: bool,
    /// The content codings the cache made of `body` (issue 9), `None` until
    /// the compression job is done, or for a body never compressed. Counted
    /// in `weight`. Shared: a revalidated entry keeps the bodies.
    pub(crate) reprs: Option<std::sync::Arc<super::representation::stored::Representations>>,
    pub(crate) weight: usize,
}

/// The freshness facts of a stored response (RFC 9111 §4.2).
#[derive(Debug, Clone)]
pub(crate) struct Freshness {
    pub(crate) lifetime: u64,
    /// `corrected_initial_age` of §4.2.3, in seconds.
    pub(crate) initial_age: u64,
    /// `response_time`, on the monotonic clock.
    pub(crate) stored_at: Instant,
    pub(crate) swr: Option<u64>,
    pub(crate) sie: Option<u64>,
    /// `no-cache`: never reused without validation (§5.2.2.4).
    pub(crate) no_cache: bool,
    /// `must-revalidate` or `proxy-revalidate`: never served stale (§4.2.4).
    pub(crate) must_revalidate: bool,
    /// `s-maxage` carries `proxy-revalidate` for a shared cache (§5.2.2.10).
    pub(crate) s_maxage: bool,
    /// How long past `stored_at` the entry is worth keeping in memory.
    pub(crate) keep_for: Duration,
}

impl Freshness {
    /// `current_age` (§4.2.3), in whole seconds, saturating at 2^31.
    pub(crate) fn age(&self, now: Instant) -> u64 {
        let resident = now.saturating_duration_since(self.stored_at).as_secs();
        self.initial_age
            .saturating_add(resident)
            .min(u64::from(DELTA_MAX))
    }

    /// `freshness_lifetime − current_age`: negative once stale (RFC 9211 §2.4).
    pub(crate) fn ttl(&self, now: Instant) -> i64 {
        self.ttl_at_age(self.age(now))
    }

    /// [`ttl`](Self::ttl) for an `age` already read from the clock.
    pub(crate) fn ttl_at_age(&self, age: u64) -> i64 {
        // Saturating: a lifetime read from another process (the Redis tier)
        // need not respect the 2^31 cap, and must neither panic nor wrap to
        // fresh forever.
        let lifetime = i64::try_from(self.lifetime).unwrap_or(i64::MAX);
        let age = i64::try_from(age).unwrap_or(i64::MAX);
        lifetime.saturating_sub(age)
    }

    /// The strict directives under which nothing stale is served, neither
    /// on error nor for a client's `max-stale` (§4.2.4; DESIGN decisions).
    fn strict(&self) -> bool {
        self.no_cache || self.must_revalidate || self.s_maxage
    }

    /// Whether `stale-while-revalidate` may serve it now. An explicit
    /// window is honoured even beside `s-maxage` (a documented deviation:
    /// SSR frameworks send `s-maxage=N, stale-while-revalidate=M` to ask for
    /// exactly this), but never beside `no-cache` or `*-revalidate`.
    pub(crate) fn swr_allows(&self, now: Instant) -> bool {
        match self.swr {
            Some(window) if !self.no_cache && !self.must_revalidate => {
                let staleness = self.ttl(now).saturating_neg();
                u64::try_from(staleness).is_ok_and(|s| s <= window)
            }
            _ => false,
        }
    }

    /// Whether `stale-if-error` (the response's or the request's) lets it
    /// stand in for an error now (RFC 5861 §4), never under the strict
    /// directives.
    pub(crate) fn sie_allows(&self, now: Instant, request_sie: Option<u64>) -> bool {
        if self.strict() {
            return false;
        }
        let window = match (self.sie, request_sie) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => match a.or(b) {
                Some(w) => w,
                None => return false,
            },
        };
        let staleness = -self.ttl(now);
        staleness <= window as i64
    }
}

impl Entry {
    pub(crate) fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(ETAG)
    }

    pub(crate) fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(LAST_MODIFIED)
    }

    pub(crate) fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| &**t == tag)
    }

    /// Whether this variant was stored for a request like `headers`
    /// (RFC 9111 §4.1) with the same user key value.
    pub(crate) fn matches(&self, headers: &HeaderMap, extra: Option<&str>) -> bool {
        self.extra.as_deref() == extra
            && self
                .vary
                .iter()
                .all(|(name, want)| joined(headers, name).as_ref() == want.as_ref())
    }
}

/// What the request asks of the cache (RFC 9111 §5.2.1, §5.4).
#[derive(Debug, Default, Clone)]
pub(crate) struct RequestDirectives {
    /// `no-cache`, `Pragma: no-cache` without `Cache-Control`, or `max-age=0`.
    pub(crate) no_cache: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) max_stale: Option<u64>,
    pub(crate) min_fresh: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
    pub(crate) no_store: bool,
    pub(crate) only_if_cached: bool,
}

impl RequestDirectives {
    pub(crate) fn from_headers(headers: &HeaderMap, ignore_no_cache: bool) -> Self {
        if !headers.contains_key(CACHE_CONTROL) {
            // §5.4: Pragma: no-cache counts only without Cache-Control.
            let pragma = !ignore_no_cache
                && headers.get_all(PRAGMA).iter().any(|v| {
                    v.as_bytes()
                        .split(|b| *b == b',')
                        .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"no-cache"))
                });
            return RequestDirectives {
                no_cache: pragma,
                ..Self::default()
            };
        }
        let d = Directives::from_headers(headers);
        let (no_cache, max_age) = if ignore_no_cache {
            (false, None)
        } else {
            (d.is_no_cache(), d.max_age_secs())
        };
        RequestDirectives {
            no_cache,
            max_age,
            max_stale: d.max_stale_secs(),
            min_fresh: d.min_fresh_secs(),
            stale_if_error: d.stale_if_error_secs(),
            no_store: d.is_no_store(),
            only_if_cached: d.is_only_if_cached(),
        }
    }
}

/// Why a stored response cannot answer a request by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Fresh enough for this request.
    Fresh,
    /// Stale, but the client's `max-stale` accepts it.
    StaleAccepted,
    /// Stale within `stale-while-revalidate`: serve, refresh behind.
    StaleWhileRevalidate,
    /// Fresh, but the request's directives ask for the origin (`fwd=request`).
    ForwardRequest,
    /// Stale or `no-cache`: validate first (`fwd=stale`).
    ForwardStale,
}

/// RFC 9111 §4 and §4.2.4: may `fresh` answer a request with `req`?
pub(crate) fn reuse(fresh: &Freshness, req: &RequestDirectives, now: Instant) -> Reuse {
    let age = fresh.age(now);
    let ttl = fresh.ttl_at_age(age);
    if fresh.no_cache {
        return Reuse::ForwardStale;
    }
    let wants_origin = req.no_cache
        || req.max_age.is_some_and(|max| age > max)
        || req
            .min_fresh
            .is_some_and(|min| fresh.lifetime < age.saturating_add(min));
    if ttl > 0 {
        return if wants_origin {
            Reuse::ForwardRequest
        } else {
            Reuse::Fresh
        };
    }
    if wants_origin {
        return Reuse::ForwardStale;
    }
    // §5.2.1.2: max-stale never overrides the strict directives (§4.2.4).
    if let Some(max_stale) = req.max_stale {
        if !fresh.strict() && (-ttl) as u64 <= max_stale {
            return Reuse::StaleAccepted;
        }
    }
    if fresh.swr_allows(now) {
        return Reuse::StaleWhileRevalidate;
    }
    Reuse::ForwardStale
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStorable {
    /// A property of the response: remember the key as uncacheable.
    Response(&'static str),
    /// A property of this request only (`no-store`, `Authorization`).
    Request(&'static str),
}

/// Options from the layer that shape storing.
#[derive(Debug, Clone)]
pub(crate) struct StoreRules {
    pub(crate) default_ttl: Option<u64>,
    pub(crate) heuristic_max: Option<u64>,
    pub(crate) targeted: Option<HeaderName>,
    pub(crate) keep_stale: Duration,
}

/// The policy of a storable response, decided from its head alone.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) fresh: Freshness,
    pub(crate) vary_names: Vec<HeaderName>,
    pub(crate) auth_ok: bool,
}

/// The directives that govern caching: the configured targeted field when
/// present, valid and non-empty (RFC 9213 §2.2), else `Cache-Control`. The
/// flag says whether the targeted field was used, in which case `Expires`
/// is ignored.
fn governing(headers: &HeaderMap, targeted: Option<&HeaderName>) -> (Directives, bool) {
    if let Some(d) = targeted.and_then(|name| targeted_directives(headers, name)) {
        return (d, true);
    }
    (Directives::from_headers(headers), false)
}

/// RFC 9213 §2.1: a targeted field is an RFC 8941 Dictionary, its lines
/// combined first (RFC 8941 §4.2). `None` when it is absent, empty or fails
/// to parse: the whole field is then ignored. A member of the wrong type
/// (`max-age=1.5`, `no-store=1`) is ignored rather than coerced ("SHOULD
/// NOT accept values that break these constraints"), and a Boolean false
/// (`no-store=?0`) is read as the directive's absence.
fn targeted_directives(headers: &HeaderMap, name: &HeaderName) -> Option<Directives> {
    let mut combined = Vec::new();
    for (i, line) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            combined.extend_from_slice(b", ");
        }
        combined.extend_from_slice(line.as_bytes());
    }
    let dictionary = sf::parse_dictionary(&combined)?;
    if dictionary.is_empty() {
        return None;
    }
    let mut d = Directives::new();
    for (key, item) in dictionary {
        d = match (key.as_str(), item) {
            (_, Item::Boolean(false)) => d,
            ("max-age", Item::Integer(n)) if n >= 0 => d.max_age(secs(n)),
            ("s-maxage", Item::Integer(n)) if n >= 0 => d.s_maxage(secs(n)),
            ("stale-while-revalidate", Item::Integer(n)) if n >= 0 => {
                d.stale_while_revalidate(secs(n))
            }
            ("stale-if-error", Item::Integer(n)) if n >= 0 => d.stale_if_error(secs(n)),
            ("no-store", Item::Boolean(true)) => d.no_store(),
            ("public", Item::Boolean(true)) => d.public(),
            ("must-revalidate", Item::Boolean(true)) => d.must_revalidate(),
            ("proxy-revalidate", Item::Boolean(true)) => d.proxy_revalidate(),
            ("must-understand", Item::Boolean(true)) => d.must_understand(),
            ("immutable", Item::Boolean(true)) => d.immutable(),
            ("no-transform", Item::Boolean(true)) => d.no_transform(),
            ("no-cache", Item::Boolean(true)) => d.no_cache(),
            ("no-cache", Item::String(fields)) => d.no_cache_fields(field_names(&fields)),
            ("private", Item::Boolean(true)) => d.private(),
            ("private", Item::String(fields)) => d.private_fields(field_names(&fields)),
            // RFC 9111 §5.2.3: unknown directives are ignored.
            _ => d,
        };
    }
    Some(d)
}

/// An SF Integer already checked to be non-negative, as seconds.
fn secs(n: i64) -> Duration {
    Duration::from_secs(u64::try_from(n).unwrap_or(0))
}

/// The field names of a qualified `no-cache` / `private` String. A name that
/// is not a field name is dropped; an empty list reads as unqualified, the
/// more restrictive reading.
fn field_names(list: &str) -> Vec<HeaderName> {
    list.split(',')
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// RFC 9110 §15.1: statuses cacheable by default (heuristically).
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Decides from the response head whether a response to a GET may be
/// stored (RFC 9111 §3) and with what freshness (§4.2).
pub(crate) fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    req: &RequestDirectives,
    req_has_auth: bool,
    rules: &StoreRules,
    request_time: Instant,
    response_time: (Instant, SystemTime),
) -> Result<Policy, NotStorable> {
    if req.no_store {
        return Err(NotStorable::Request("request no-store"));
    }
    // §3: no 1xx; no 206 or 304 (we implement neither range nor 304 storage).
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(NotStorable::Response("status"));
    }
    let (d, targeted) = governing(headers, rules.targeted.as_ref());
    if d.is_no_store() {
        return Err(NotStorable::Response("no-store"));
    }
    // §3, §5.2.2.7: a shared cache never stores `private`; a qualified
    // `private="F"` is read as unqualified, the safer and common choice.
    if d.is_private() {
        return Err(NotStorable::Response("private"));
    }
    // §7.3: a stored Set-Cookie hands one user's session to every other.
    if headers.contains_key(SET_COOKIE) {
        return Err(NotStorable::Response("set-cookie"));
    }
    // §3.5: only these let a response to an authenticated request be shared.
    let auth_ok = d.is_public() || d.s_maxage_secs().is_some() || d.is_must_revalidate();
    if req_has_auth && !auth_ok {
        return Err(NotStorable::Request("authorization"));
    }
    let vary_names = vary_names(headers).ok_or(NotStorable::Response("vary"))?;

    let (now_mono, now_wall) = response_time;
    let date = single(headers, &DATE).and_then(crate::date::parse);
    let date_value = date.unwrap_or(now_wall);
    let explicit = d
        .s_maxage_secs()
        .or(d.max_age_secs())
        .or_else(|| {
            if targeted {
                return None;
            }
            // §5.3: the first Expires line; an invalid one is in the past.
            headers.get(EXPIRES).map(|v| {
                crate::date::parse(v)
                    .and_then(|exp| exp.duration_since(date_value).ok())
                    .map_or(0, |d| d.as_secs())
            })
        })
        .map(|s| s.min(u64::from(DELTA_MAX)));
    let cacheable_status = heuristically_cacheable(status);
    let lifetime = match explicit {
        Some(l) => l,
        None if !cacheable_status && !d.is_public() => {
            return Err(NotStorable::Response("status without explicit freshness"))
        }
        None => heuristic(headers, date_value, rules.heuristic_max)
            .or(rules.default_ttl)
            .ok_or(NotStorable::Response("no freshness information"))?,
    };
    let has_validator = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    if (lifetime == 0 || d.is_no_cache()) && !has_validator {
        // Could only ever be forwarded again: nothing to validate with.
        return Err(NotStorable::Response("never fresh and no validator"));
    }

    // §4.2.3, the conservative form.
    let age_value = age_value(headers);
    let apparent_age = now_wall
        .duration_since(date_value)
        .map_or(0, |d| d.as_secs());
    let response_delay = now_mono.saturating_duration_since(request_time).as_secs();
    let corrected_age_value = age_value.saturating_add(response_delay);
    let initial_age = apparent_age
        .max(corrected_age_value)
        .min(u64::from(DELTA_MAX));

    let swr = d.stale_while_revalidate_secs();
    let sie = d.stale_if_error_secs();
    let usable = lifetime
        .saturating_sub(initial_age)
        .saturating_add(swr.unwrap_or(0).max(sie.unwrap_or(0)));
    let keep_for = Duration::from_secs(usable).saturating_add(if has_validator {
        rules.keep_stale
    } else {
        Duration::ZERO
    });
    Ok(Policy {
        fresh: Freshness {
            lifetime,
            initial_age,
            stored_at: now_mono,
            swr,
            sie,
            no_cache: d.is_no_cache(),
            must_revalidate: d.is_must_revalidate() || d.is_proxy_revalidate(),
            s_maxage: d.s_maxage_secs().is_some(),
            keep_for,
        },
        vary_names,
        auth_ok,
    })
}

/// §4.2.2: 10% of the time since `Last-Modified`, capped; none without it.
fn heuristic(headers: &HeaderMap, date: SystemTime, max: Option<u64>) -> Option<u64> {
    let max = max?;
    let lm = single(headers, &LAST_MODIFIED).and_then(crate::date::parse)?;
    let since = date.duration_since(lm).ok()?.as_secs();
    Some((since / 10).min(max))
}

/// §5.1: the first member of `Age`; an invalid value counts as 0.
fn age_value(headers: &HeaderMap) -> u64 {
    let Some(v) = headers.get(AGE) else { return 0 };
    let first = v.as_bytes().split(|b| *b == b',').next().unwrap_or(b"");
    let first = first.trim_ascii();
    if first.is_empty() || !first.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    // §1.2.2: too large to represent means 2^31.
    std::str::from_utf8(first)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(u64::from(DELTA_MAX), |a| a.min(u64::from(DELTA_MAX)))
}

fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let v = all.next()?;
    all.next().is_none().then_some(v)
}

/// The field names `Vary` lists, lowercased; `None` for `Vary: *` or a
/// malformed list, which are never stored (§4.1).
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for line in headers.get_all(VARY) {
        for part in line.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() {
                continue;
            }
            if part == b"*" {
                return None;
            }
            let name = HeaderName::from_bytes(part).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// All lines of a request field joined as one list, for Vary matching
/// (§4.1 allows combining lines and trimming whitespace).
pub(crate) fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    let Some(second) = all.next() else {
        return Some(trimmed(first));
    };
    let mut buf = Vec::with_capacity(first.len() + second.len() + 2);
    buf.extend_from_slice(first.as_bytes().trim_ascii());
    for v in std::iter::once(second).chain(all) {
        buf.extend_from_slice(b", ");
        buf.extend_from_slice(v.as_bytes().trim_ascii());
    }
    HeaderValue::from_bytes(&buf).ok()
}

fn trimmed(v: &HeaderValue) -> HeaderValue {
    let t = v.as_bytes().trim_ascii();
    if t.len() == v.len() {
        v.clone()
    } else {
        HeaderValue::from_bytes(t).unwrap_or_else(|_| v.clone())
    }
}

/// Whether a field must never be stored or replayed: hop-by-hop fields
/// (RFC 9110 §7.6.1), proxy authentication (RFC 9111 §3.1), the `Age` we
/// recompute and the `Cache-Status` members we regenerate.
fn never_stored(name: &HeaderName, connection_named: &[HeaderName]) -> bool {
    name == CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == TE
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == TRAILER
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHENTICATION_INFO
        || name == AGE
        || connection_named.contains(name)
}

fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|p| HeaderName::from_bytes(p.trim_ascii()).ok())
        .collect()
}

/// The headers to store (§3.1): every field but the excluded ones, with a
/// `Date` added when the origin sent none (RFC 9110 §6.6.1) and an exact
/// `Content-Length` for the stored body.
pub(crate) fn headers_to_store(headers: &HeaderMap, body_len: usize) -> HeaderMap {
    let named = connection_named(headers);
    let mut out = HeaderMap::with_capacity(headers.len() + 2);
    for (name, value) in headers {
        if !never_stored(name, &named) && name != CONTENT_LENGTH {
            out.append(name.clone(), value.clone());
        }
    }
    if !out.contains_key(DATE) {
        out.insert(DATE, crate::date::http_date_now());
    }
    out.insert(CONTENT_LENGTH, HeaderValue::from(body_len));
    out
}

/// §3.2: the stored headers updated by a 304's: every field the 304 carries
/// replaces the stored one, except the excluded fields and `Content-Length`.
/// The result also carries the 304's own `Age` (or none), for the age
/// calculation only: storing drops it again.
pub(crate) fn merge_304(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let named = connection_named(not_modified);
    let mut out = stored.clone();
    let mut replaced: Vec<&HeaderName> = Vec::new();
    for (name, value) in not_modified {
        if never_stored(name, &named) || name == CONTENT_LENGTH || name == CACHE_STATUS {
            continue;
        }
        if !replaced.contains(&name) {
            out.remove(name);
            replaced.push(name);
        }
        out.append(name.clone(), value.clone());
    }
    // RFC 9110 §6.6.1: a 304 without a valid Date is dated when received.
    // Keeping the stored Date would count apparent_age (§4.2.3) from the
    // first response, leaving the entry this 304 freshens (§4.3.4) already
    // stale, and every later request would go to the origin again.
    if single(not_modified, &DATE)
        .and_then(crate::date::parse)
        .is_none()
    {
        out.insert(DATE, crate::date::http_date_now());
    }
    // §4.2.3: age_value is the Age of the response that validated the
    // entry, not the stored placeholder.
    out.remove(AGE);
    if let Some(age) = not_modified.get(AGE) {
        out.insert(AGE, age.clone());
    }
    out
}

/// Purge tags from `Surrogate-Key` (space-separated) and `Cache-Tag`
/// (comma-separated).
pub(crate) fn tags(headers: &HeaderMap) -> Box<[Box<str>]> {
    let mut out: Vec<Box<str>> = Vec::new();
    for (name, sep) in [(SURROGATE_KEY, b' '), (CACHE_TAG, b',')] {
        for v in headers.get_all(name) {
            let Ok(text) = v.to_str() else { continue };
            for t in text.split(char::from(sep)) {
                let t = t.trim();
                if !t.is_empty() && !out.iter().any(|o| &**o == t) {
                    out.push(t.into());
                }
            }
        }
    }
    out.into_boxed_slice()
}

/// Builds the entry for a storable response.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    body: Bytes,
    policy: Policy,
    request_headers: &HeaderMap,
    extra: Option<Box<str>>,
    strip: Option<&HeaderName>,
) -> Entry {
    let mut stored = headers_to_store(headers, body.len());
    if let Some(field) = strip {
        stored.remove(field);
    }
    let tags = tags(&stored);
    let status_placeholder = !stored.contains_key(CACHE_STATUS);
    stored.insert(AGE, HeaderValue::from_static("0"));
    if status_placeholder {
        stored.insert(CACHE_STATUS, HeaderValue::from_static("-"));
    }
    let stored = owned_headers(&stored);
    let vary: Box<[_]> = policy
        .vary_names
        .into_iter()
        .map(|n| {
            // Copied: the request's value is a slice of its connection's
            // read buffer.
            let v = joined(request_headers, &n).map(|v| owned_value(&v));
            (n, v)
        })
        .collect();
    let weight = weigh(&stored, body.len(), &vary, &tags, extra.as_deref());
    Entry {
        status,
        version,
        headers: stored,
        status_placeholder,
        body,
        vary,
        extra,
        fresh: policy.fresh,
        tags,
        auth_ok: policy.auth_ok,
        reprs: None,
        weight,
    }
}

#[cfg(feature = "compression")]
impl Entry {
    /// The same stored response with `reprs` beside it, its weight counting
    /// them: what the compression job stores in place of `self`.
    pub(crate) fn with_representations(
        &self,
        reprs: std::sync::Arc<super::representation::stored::Representations>,
    ) -> Entry {
        let weight = self
            .weight
            .saturating_sub(self.reprs.as_ref().map_or(0, |r| r.weight()))
            .saturating_add(reprs.weight());
        Entry {
            status: self.status,
            version: self.version,
            headers: self.headers.clone(),
            status_placeholder: self.status_placeholder,
            body: self.body.clone(),
            vary: self.vary.clone(),
            extra: self.extra.clone(),
            fresh: self.fresh.clone(),
            tags: self.tags.clone(),
            auth_ok: self.auth_ok,
            reprs: Some(reprs),
            weight,
        }
    }
}

/// A copy of `headers` that holds nothing of anyone else's and no spare
/// room: every value copied into one allocation of exactly their length.
/// A value from hyper's parser is a slice of its connection's read buffer
/// (8 KiB or more), which a stored slice would keep alive, uncounted, for
/// as long as the entry lives.
pub(crate) fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let mut all = Vec::with_capacity(headers.values().map(HeaderValue::len).sum());
    for v in headers.values() {
        all.extend_from_slice(v.as_bytes());
    }
    let all = Bytes::from(all);
    let mut out = HeaderMap::with_capacity(headers.len());
    let mut at = 0;
    for (name, value) in headers {
        let end = at + value.len();
        // Valid already, so this cannot fail; a clone would only pin.
        let mut v =
            HeaderValue::from_maybe_shared(all.slice(at..end)).unwrap_or_else(|_| value.clone());
        v.set_sensitive(value.is_sensitive());
        out.append(name.clone(), v);
        at = end;
    }
    // A clone allocates exactly what is used: a map built by inserting
    // keeps spare room for twice its fields, which every entry would pay.
    out.clone()
}

/// A value in an allocation of its own, of exactly its length.
fn owned_value(v: &HeaderValue) -> HeaderValue {
    let mut out = HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
    out.set_sensitive(v.is_sensitive());
    out
}

/// Bodies of at least this many bytes are stored in an anonymous memory
/// mapping of their own (see [`owned_body`]).
pub(crate) const MAPPED_BODY: usize = 64 * 1024;

/// The memory page a mapped body is rounded up to (4 KiB on the platforms
/// this runs on; a larger page only makes the weight an underestimate).
const PAGE: usize = 4096;

/// A body in memory of its own, of exactly its length: a chunk from hyper
/// is a slice of its connection's read buffer, and one read from Redis a
/// slice of the whole value.
///
/// From [`MAPPED_BODY`] up, that memory is an anonymous mapping, handed back
/// to the system when the entry goes. On the heap, large bodies
/// interleave with each response's transient buffers, and glibc's malloc
/// (whose mmap threshold rises to the largest block freed, so an
/// encoder's or a read buffer's megabyte moves 100 KiB bodies onto the
/// heap) kept some 30–50 MiB more than a 64 MiB cache held under a stream
/// of 100 KiB pages (issue 8 §6). When a mapping cannot be made, the heap.
///
/// At most [`MAX_MAPPED`] bodies are mapped at once; past that, the heap.
pub(crate) fn owned_body(chunks: &[Bytes]) -> Bytes {
    let len = chunks.iter().map(Bytes::len).sum();
    if len >= MAPPED_BODY {
        if let Some(mut map) = Mapped::new(len) {
            let mut at = 0;
            for c in chunks {
                map.0[at..at + c.len()].copy_from_slice(c);
                at += c.len();
            }
            return Bytes::from_owner(map);
        }
    }
    match chunks {
        [] => Bytes::new(),
        [one] => Bytes::copy_from_slice(one),
        _ => {
            let mut all = Vec::with_capacity(len);
            for c in chunks {
                all.extend_from_slice(c);
            }
            Bytes::from(all)
        }
    }
}

/// The most bodies mapped at once, process-wide. Each mapping is one of
/// the process's memory maps, which Linux caps (`vm.max_map_count`,
/// 65,530 by default) for everything in the process: thread stacks,
/// malloc's own large blocks, libraries. 16,384 mapped bodies are 1 GiB
/// of 64 KiB pages; a cache holding more puts the rest on the heap.
pub(crate) const MAX_MAPPED: usize = 16_384;

/// Bodies mapped now (see [`MAX_MAPPED`]).
static MAPPED_NOW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A body's own anonymous mapping, counted while it lives.
struct Mapped(memmap2::MmapMut);

impl Mapped {
    /// A mapping of `len` bytes, unless [`MAX_MAPPED`] are live or the
    /// system refuses one.
    fn new(len: usize) -> Option<Self> {
        use std::sync::atomic::Ordering::Relaxed;
        MAPPED_NOW
            .fetch_update(Relaxed, Relaxed, |n| (n < MAX_MAPPED).then_some(n + 1))
            .ok()?;
        match memmap2::MmapMut::map_anon(len) {
            Ok(map) => Some(Mapped(map)),
            Err(_) => {
                MAPPED_NOW.fetch_sub(1, Relaxed);
                None
            }
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        MAPPED_NOW.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// What a body of `len` bytes takes in memory: a mapped one (see
/// [`owned_body`]) whole pages.
pub(crate) fn body_footprint(len: usize) -> usize {
    if len >= MAPPED_BODY {
        len.next_multiple_of(PAGE)
    } else {
        len
    }
}

/// What an entry is counted as in the store's byte bound.
pub(crate) fn weigh(
    headers: &HeaderMap,
    body_len: usize,
    vary: &[(HeaderName, Option<HeaderValue>)],
    tags: &[Box<str>],
    extra: Option<&str>,
) -> usize {
    let mut weight = ENTRY_OVERHEAD + body_footprint(body_len);
    for (name, value) in headers {
        // A map slot is about 100 bytes besides the name and value.
        weight += name.as_str().len() + value.len() + 100;
    }
    for (name, value) in vary {
        weight += name.as_str().len() + value.as_ref().map_or(0, HeaderValue::len) + 32;
    }
    weight += tags.iter().map(|t| t.len() + 16).sum::<usize>();
    weight += extra.map_or(0, str::len);
    weight
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_copied_whole_below_and_above_the_mapped_size() {
        for len in [0, 1, 1000, MAPPED_BODY - 1, MAPPED_BODY, 100 * 1024 + 7] {
            let page: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let page = Bytes::from(page);
            // One chunk, and the same in uneven chunks, as hyper reads it.
            let chunks: Vec<Bytes> = (0..len)
                .step_by(3000)
                .map(|at| page.slice(at..(at + 3000).min(len)))
                .collect();
            for body in [owned_body(std::slice::from_ref(&page)), owned_body(&chunks)] {
                assert_eq!(body, page, "{len}");
                // Its own memory, not a slice of what it was read from.
                assert!(len == 0 || body.as_ptr() != page.as_ptr());
            }
        }
    }

    #[test]
    fn mapped_bodies_are_counted_while_they_live() {
        use std::sync::atomic::Ordering::Relaxed;
        // Other tests map bodies too: only a lower bound while this test's
        // bodies live.
        let page = Bytes::from(vec![7u8; MAPPED_BODY]);
        let before = MAPPED_NOW.load(Relaxed);
        let bodies: Vec<Bytes> = (0..3)
            .map(|_| owned_body(std::slice::from_ref(&page)))
            .collect();
        assert!(MAPPED_NOW.load(Relaxed) >= 3.min(MAX_MAPPED - before));
        assert!(bodies.iter().all(|b| *b == page));
        drop(bodies);
        assert!(MAPPED_NOW.load(Relaxed) <= MAX_MAPPED);
    }

    #[test]
    fn a_mapped_body_weighs_its_pages() {
        assert_eq!(body_footprint(MAPPED_BODY - 1), MAPPED_BODY - 1);
        assert_eq!(body_footprint(MAPPED_BODY), MAPPED_BODY);
        assert_eq!(body_footprint(100 * 1024 + 1), 100 * 1024 + 4096);
        let small = weigh(&HeaderMap::new(), 1000, &[], &[], None);
        let mapped = weigh(&HeaderMap::new(), MAPPED_BODY + 1, &[], &[], None);
        assert_eq!(mapped - small, MAPPED_BODY + 4096 - 1000);
    }

    fn rules() -> StoreRules {
        StoreRules {
            default_ttl: None,
            heuristic_max: None,
            targeted: None,
            keep_stale: Duration::from_secs(60),
        }
    }

    fn hm(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn policy(status: u16, pairs: &[(&'static str, &'static str)]) -> Result<Policy, NotStorable> {
        let now = Instant::now();
        storable(
            StatusCode::from_u16(status).unwrap(),
            &hm(pairs),
            &RequestDirectives::default(),
            false,
            &rules(),
            now,
            (now, SystemTime::now()),
        )
    }

    #[test]
    fn s_maxage_wins_over_max_age_and_expires() {
        let p = policy(
            200,
            &[
                ("cache-control", "max-age=10, s-maxage=20"),
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
            ],
        )
        .unwrap();
        assert_eq!(p.fresh.lifetime, 20);
        let p = policy(200, &[("cache-control", "max-age=10")]).unwrap();
        assert_eq!(p.fresh.lifetime, 10);
    }

    #[test]
    fn expires_minus_date_gives_the_lifetime_and_invalid_expires_is_past() {
        let p = policy(
            200,
            &[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
                ("etag", "\"x\""),
            ],
        )
        .unwrap();
        assert_eq!(p.fresh.lifetime, 60);
        let p = policy(200, &[("expires", "0"), ("etag", "\"x\"")]).unwrap();
        assert_eq!(p.fresh.lifetime, 0);
        assert!(policy(200, &[("expires", "garbage")]).is_err());
    }

    #[test]
    fn rfc850_and_asctime_dates_are_understood() {
        for (date, expires) in [
            (
                "Sunday, 06-Nov-94 08:49:37 GMT",
                "Sunday, 06-Nov-94 08:50:37 GMT",
            ),
            ("Sun Nov  6 08:49:37 1994", "Sun Nov  6 08:50:37 1994"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(DATE, HeaderValue::from_static(date));
            h.insert(EXPIRES, HeaderValue::from_static(expires));
            let now = Instant::now();
            let p = storable(
                StatusCode::OK,
                &h,
                &RequestDirectives::default(),
                false,
                &rules(),
                now,
                (now, SystemTime::now()),
            )
            .unwrap();
            assert_eq!(p.fresh.lifetime, 60, "{date}");
        }
    }

    #[test]
    fn never_stores_no_store_private_set_cookie_or_vary_star() {
        for pairs in [
            &[("cache-control", "max-age=60, no-store")][..],
            &[("cache-control", "max-age=60, private")],
            &[("cache-control", "max-age=60, private=\"x-user\"")],
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            &[("cache-control", "max-age=60"), ("vary", "*")],
            &[("cache-control", "max-age=60"), ("vary", "accept, *")],
            &[("cache-control", "No-StOrE, max-age=60")],
        ] {
            assert!(
                matches!(policy(200, pairs), Err(NotStorable::Response(_))),
                "{pairs:?}"
            );
        }
        assert!(policy(206, &[("cache-control", "max-age=60")]).is_err());
    }

    #[test]
    fn statuses_without_explicit_freshness_are_not_stored_unless_heuristic() {
        assert!(policy(302, &[]).is_err());
        assert!(policy(200, &[]).is_err());
        assert!(policy(302, &[("cache-control", "max-age=5")]).is_ok());
    }

    #[test]
    fn heuristic_is_a_tenth_of_the_time_since_last_modified_capped() {
        let mut r = rules();
        r.heuristic_max = Some(3600);
        let now = Instant::now();
        let wall = httpdate::parse_http_date("Sun, 06 Nov 1994 10:00:00 GMT").unwrap();
        let h = hm(&[
            ("date", "Sun, 06 Nov 1994 10:00:00 GMT"),
            ("last-modified", "Sun, 06 Nov 1994 09:00:00 GMT"),
        ]);
        let p = storable(
            StatusCode::OK,
            &h,
            &RequestDirectives::default(),
            false,
            &r,
            now,
            (now, wall),
        )
        .unwrap();
        assert_eq!(p.fresh.lifetime, 360);
    }

    #[test]
    fn authorization_needs_public_s_maxage_or_must_revalidate() {
        let now = Instant::now();
        let run = |cc: &'static str| {
            storable(
                StatusCode::OK,
                &hm(&[("cache-control", cc)]),
                &RequestDirectives::default(),
                true,
                &rules(),
                now,
                (now, SystemTime::now()),
            )
        };
        assert_eq!(
            run("max-age=60").unwrap_err(),
            NotStorable::Request("authorization")
        );
        assert!(run("public, max-age=60").is_ok());
        assert!(run("s-maxage=60").is_ok());
        assert!(run("max-age=60, must-revalidate").is_ok());
    }

    #[test]
    fn age_header_and_apparent_age_feed_the_initial_age() {
        let p = policy(200, &[("cache-control", "max-age=60"), ("age", "25, 3")]).unwrap();
        assert_eq!(p.fresh.initial_age, 25);
        let p = policy(200, &[("cache-control", "max-age=60"), ("age", "-1")]).unwrap();
        assert_eq!(p.fresh.initial_age, 0);
        let p = policy(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("age", "99999999999999999999"),
            ],
        )
        .unwrap();
        assert_eq!(p.fresh.initial_age, u64::from(DELTA_MAX));
    }

    fn fresh(lifetime: u64, age: u64) -> Freshness {
        Freshness {
            lifetime,
            initial_age: age,
            stored_at: Instant::now(),
            swr: None,
            sie: None,
            no_cache: false,
            must_revalidate: false,
            s_maxage: false,
            keep_for: Duration::ZERO,
        }
    }

    #[test]
    fn age_equal_to_lifetime_is_stale() {
        let now = Instant::now();
        let f = fresh(10, 10);
        assert_eq!(
            reuse(&f, &RequestDirectives::default(), now),
            Reuse::ForwardStale
        );
        let f = fresh(10, 9);
        assert_eq!(reuse(&f, &RequestDirectives::default(), now), Reuse::Fresh);
    }

    #[test]
    fn max_stale_never_overrides_the_strict_directives() {
        let now = Instant::now();
        let req = RequestDirectives {
            max_stale: Some(u64::MAX),
            ..Default::default()
        };
        let f = fresh(10, 20);
        assert_eq!(reuse(&f, &req, now), Reuse::StaleAccepted);
        for strict in [
            |f: &mut Freshness| f.must_revalidate = true,
            |f: &mut Freshness| f.s_maxage = true,
            |f: &mut Freshness| f.no_cache = true,
        ] {
            let mut f = fresh(10, 20);
            strict(&mut f);
            assert_eq!(reuse(&f, &req, now), Reuse::ForwardStale);
        }
    }

    #[test]
    fn swr_is_honoured_beside_s_maxage_but_not_must_revalidate() {
        let now = Instant::now();
        let mut f = fresh(10, 15);
        f.swr = Some(10);
        f.s_maxage = true;
        assert_eq!(
            reuse(&f, &RequestDirectives::default(), now),
            Reuse::StaleWhileRevalidate
        );
        assert!(
            !f.sie_allows(now, Some(100)),
            "no stale-if-error with s-maxage"
        );
        f.must_revalidate = true;
        assert_eq!(
            reuse(&f, &RequestDirectives::default(), now),
            Reuse::ForwardStale
        );
        let mut f = fresh(10, 25);
        f.swr = Some(10);
        assert_eq!(
            reuse(&f, &RequestDirectives::default(), now),
            Reuse::ForwardStale
        );
    }

    #[test]
    fn client_no_cache_max_age_and_min_fresh_ask_for_the_origin() {
        let now = Instant::now();
        let f = fresh(100, 10);
        for req in [
            RequestDirectives {
                no_cache: true,
                ..Default::default()
            },
            RequestDirectives {
                max_age: Some(5),
                ..Default::default()
            },
            RequestDirectives {
                min_fresh: Some(95),
                ..Default::default()
            },
        ] {
            assert_eq!(reuse(&f, &req, now), Reuse::ForwardRequest, "{req:?}");
        }
    }

    #[test]
    fn pragma_counts_only_without_cache_control_and_can_be_ignored() {
        let h = hm(&[("pragma", "no-cache")]);
        assert!(RequestDirectives::from_headers(&h, false).no_cache);
        assert!(!RequestDirectives::from_headers(&h, true).no_cache);
        let h = hm(&[("pragma", "no-cache"), ("cache-control", "max-stale")]);
        assert!(!RequestDirectives::from_headers(&h, false).no_cache);
        let h = hm(&[("cache-control", "No-CaChE")]);
        assert!(RequestDirectives::from_headers(&h, false).no_cache);
    }

    #[test]
    fn stored_headers_drop_hop_by_hop_and_connection_named_fields() {
        let h = hm(&[
            ("connection", "x-hop, keep-alive"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-authenticate", "Basic"),
            ("age", "3"),
            ("x-kept", "1"),
            ("content-length", "99"),
        ]);
        let s = headers_to_store(&h, 5);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s["x-kept"], "1");
        assert_eq!(s[CONTENT_LENGTH], "5");
        assert!(s.contains_key(DATE));
    }

    #[test]
    fn merge_304_replaces_fields_but_not_content_length() {
        let stored = hm(&[
            ("cache-control", "max-age=10"),
            ("content-length", "5"),
            ("x-a", "1"),
        ]);
        let nm = hm(&[
            ("cache-control", "max-age=100"),
            ("content-length", "0"),
            ("x-b", "2"),
        ]);
        let m = merge_304(&stored, &nm);
        assert_eq!(m["cache-control"], "max-age=100");
        assert_eq!(m["content-length"], "5");
        assert_eq!(m["x-a"], "1");
        assert_eq!(m["x-b"], "2");
    }

    #[test]
    fn merge_304_without_date_is_dated_on_receipt_and_brings_its_age() {
        let stored = hm(&[
            ("cache-control", "max-age=60"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("age", "0"),
        ]);
        let m = merge_304(&stored, &hm(&[("age", "7")]));
        let date = crate::date::parse(&m[DATE]).unwrap();
        let behind = SystemTime::now().duration_since(date).unwrap_or_default();
        assert!(behind < Duration::from_secs(60), "{:?}", m[DATE]);
        let p = storable(
            StatusCode::OK,
            &m,
            &RequestDirectives::default(),
            false,
            &rules(),
            Instant::now(),
            (Instant::now(), SystemTime::now()),
        )
        .unwrap();
        assert_eq!(p.fresh.initial_age, 7, "the 304's Age, not the old Date");

        let m = merge_304(&stored, &hm(&[("date", "garbage")]));
        assert_ne!(m[DATE], "garbage");
        assert!(!m.contains_key(AGE));
    }

    #[test]
    fn merge_304_keeps_a_valid_date_of_the_304() {
        let stored = hm(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let nm = hm(&[("date", "Mon, 07 Nov 1994 08:49:37 GMT")]);
        assert_eq!(
            merge_304(&stored, &nm)[DATE],
            "Mon, 07 Nov 1994 08:49:37 GMT"
        );
    }

    #[test]
    fn targeted_field_maps_types_and_falls_back_when_invalid() {
        let name = HeaderName::from_static("cdn-cache-control");
        let read = |cdn: &'static str| {
            let h = hm(&[("cache-control", "max-age=5"), ("cdn-cache-control", cdn)]);
            governing(&h, Some(&name))
        };
        let (d, targeted) = read("s-maxage=60, no-cache=\"x-a, x-b\", private=?0, x=1.5");
        assert!(targeted);
        assert_eq!(d.s_maxage_secs(), Some(60));
        assert_eq!(d.no_cache_field_names().len(), 2);
        assert!(!d.is_private(), "?0 is the directive's absence");
        // Wrong types are ignored, never coerced.
        let (d, targeted) = read("max-age=1.5, no-store=1, must-revalidate=\"y\", s-maxage=-1");
        assert!(targeted);
        assert!(d.is_empty(), "{d:?}");
        // Invalid or empty: Cache-Control governs.
        for bad in ["Max-Age=60", "max-age=60,", "", "max-age=99999999999999999"] {
            let (d, targeted) = read(bad);
            assert!(!targeted, "{bad:?}");
            assert_eq!(d.max_age_secs(), Some(5), "{bad:?}");
        }
        // Integers up to 15 digits cap at 2^31 (RFC 9111 §1.2.2).
        let (d, _) = read("max-age=999999999999999");
        assert_eq!(d.max_age_secs(), Some(u64::from(DELTA_MAX)));
    }

    #[test]
    fn tags_come_from_surrogate_key_and_cache_tag() {
        let t = tags(&hm(&[("surrogate-key", "a b"), ("cache-tag", "b, c")]));
        assert_eq!(&*t, &["a".into(), "b".into(), "c".into()] as &[Box<str>]);
    }

    // ---- properties: every response- and request-side field read here ----

    use proptest::prelude::*;

    /// A field value: arbitrary bytes (kept when `HeaderValue` accepts them)
    /// or text shaped like the fields read here.
    fn value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_filter_map("not a field value", |b| HeaderValue::from_bytes(&b).ok()),
            "[ -~]{0,40}".prop_filter_map("not a field value", |s| HeaderValue::from_str(&s).ok()),
            "((no-store|no-cache|private|public|must-revalidate|proxy-revalidate|s-maxage=[0-9]{1,12}|max-age=\"?-?[0-9]{0,22}\"?|stale-while-revalidate=[0-9]{1,4}|stale-if-error=[0-9]{1,4}|immutable|x=\"[a,]{0,3}\"|[a-z*]{1,5}|\\?0|\\?1)[ ,;]{0,2}){0,5}"
                .prop_filter_map("not a field value", |s| HeaderValue::from_str(&s).ok()),
            "([A-Za-z]{3}, [0-9]{2} [A-Za-z]{3} [0-9]{4} [0-9:]{8} [A-Z]{3}|-?[0-9]{1,25}|[0-9]{1,3}, [0-9]{1,3})"
                .prop_filter_map("not a field value", |s| HeaderValue::from_str(&s).ok()),
        ]
    }

    /// Lines of the fields a response or request carries into this module.
    fn fields() -> impl Strategy<Value = HeaderMap> {
        let name = prop_oneof![
            Just("cache-control"),
            Just("cdn-cache-control"),
            Just("expires"),
            Just("date"),
            Just("age"),
            Just("last-modified"),
            Just("etag"),
            Just("vary"),
            Just("pragma"),
            Just("surrogate-key"),
            Just("cache-tag"),
            Just("connection"),
            Just("set-cookie"),
            Just("content-length"),
        ];
        proptest::collection::vec((name, value()), 0..8).prop_map(|lines| {
            let mut h = HeaderMap::new();
            for (n, v) in lines {
                h.append(n, v);
            }
            h
        })
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}".prop_filter("`*` alone is Vary: *", |t| t != "*")
    }

    proptest! {
        #[test]
        fn storable_never_panics_and_caps_every_delta(
            status in 100u16..1000,
            headers in fields(),
            request in fields(),
            auth in any::<bool>(),
            targeted in any::<bool>(),
            later in 0u64..10_000_000_000,
        ) {
            let now = Instant::now();
            let rules = StoreRules {
                targeted: targeted.then(|| HeaderName::from_static("cdn-cache-control")),
                heuristic_max: Some(86_400),
                ..rules()
            };
            let req = RequestDirectives::from_headers(&request, false);
            let _ = RequestDirectives::from_headers(&request, true);
            let status = StatusCode::from_u16(status).unwrap();
            if let Ok(p) = storable(status, &headers, &req, auth, &rules, now, (now, SystemTime::now())) {
                let cap = u64::from(DELTA_MAX);
                prop_assert!(p.fresh.lifetime <= cap);
                prop_assert!(p.fresh.initial_age <= cap);
                prop_assert!(!headers.contains_key(SET_COOKIE));
                let at = now + Duration::from_secs(later);
                prop_assert!(p.fresh.age(at) <= cap);
                let _ = (p.fresh.ttl(at), p.fresh.swr_allows(at), p.fresh.sie_allows(at, req.stale_if_error));
                let e = build(status, Version::HTTP_11, &headers, Bytes::new(), p, &request, None, None);
                prop_assert_eq!(e.headers.get_all(AGE).iter().count(), 1);
            }
        }

        #[test]
        fn header_helpers_never_panic(a in fields(), b in fields(), len in 0usize..1_000_000) {
            let _ = vary_names(&a);
            let _ = age_value(&a);
            let _ = tags(&a);
            let _ = connection_named(&a);
            let stored = headers_to_store(&a, len);
            prop_assert_eq!(stored.get_all(CONTENT_LENGTH).iter().count(), 1);
            prop_assert_eq!(stored.get_all(DATE).iter().count().min(1), 1);
            let merged = merge_304(&stored, &b);
            prop_assert_eq!(merged.get_all(CONTENT_LENGTH).iter().count(), 1);
            for name in [VARY, PRAGMA, CACHE_CONTROL, HeaderName::from_static("x-a")] {
                let _ = joined(&a, &name);
            }
        }

        #[test]
        fn vary_lists_parse_to_their_lowercased_names(
            names in proptest::collection::vec(token(), 0..6),
            split in proptest::collection::vec(any::<bool>(), 0..6),
            ows in "[ \t]{0,2}",
            star in proptest::option::of(0usize..6),
        ) {
            let mut members: Vec<String> = names.clone();
            if let Some(at) = star {
                members.insert(at.min(members.len()), "*".into());
            }
            // Members spread over lines, with empty elements and OWS.
            let mut h = HeaderMap::new();
            let mut line = String::new();
            for (i, m) in members.iter().enumerate() {
                line.push_str(&format!("{ows}{m}{ows},"));
                if split.get(i).copied().unwrap_or(false) {
                    h.append(VARY, HeaderValue::from_str(&line).unwrap());
                    line.clear();
                }
            }
            h.append(VARY, HeaderValue::from_str(&line).unwrap());
            let got = vary_names(&h);
            if star.is_some() {
                prop_assert_eq!(got, None);
            } else {
                let mut want: Vec<HeaderName> = Vec::new();
                for n in &names {
                    let n = HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).unwrap();
                    if !want.contains(&n) {
                        want.push(n);
                    }
                }
                prop_assert_eq!(got, Some(want));
            }
        }

        #[test]
        fn age_is_the_first_member_capped_or_zero_when_invalid(
            first in prop_oneof!["[0-9]{1,30}", "[ -~]{0,12}"],
            rest in "(, ?[ -~]{0,6}){0,2}",
        ) {
            let text = format!("{first}{rest}");
            prop_assume!(!first.contains(','));
            let Ok(v) = HeaderValue::from_str(&text) else { return Ok(()) };
            let mut h = HeaderMap::new();
            h.insert(AGE, v);
            let trimmed = first.trim_matches(|c| c == ' ' || c == '\t');
            let want = if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
                trimmed.parse::<u64>().map_or(u64::from(DELTA_MAX), |n| n.min(u64::from(DELTA_MAX)))
            } else {
                0
            };
            prop_assert_eq!(age_value(&h), want, "{}", text);
        }

        #[test]
        fn purge_tags_round_trip(
            keys in proptest::collection::vec("[!-~]{1,10}", 0..5),
            cache_tags in proptest::collection::vec("[!-+--~]{1,10}", 0..5),
        ) {
            let mut h = HeaderMap::new();
            h.insert("surrogate-key", HeaderValue::from_str(&keys.join("  ")).unwrap());
            h.insert("cache-tag", HeaderValue::from_str(&cache_tags.join(" , ")).unwrap());
            let mut want: Vec<Box<str>> = Vec::new();
            for t in keys.iter().chain(&cache_tags) {
                if !want.iter().any(|w| **w == **t) {
                    want.push(t.as_str().into());
                }
            }
            prop_assert_eq!(&*tags(&h), &*want);
        }

        #[test]
        fn pragma_no_cache_counts_only_without_cache_control(
            members in proptest::collection::vec(prop_oneof![Just("no-cache".to_string()), Just("No-Cache".to_string()), "[a-z=-]{0,8}"], 0..4),
            cc in proptest::option::of("[ -~]{0,20}"),
        ) {
            let mut h = HeaderMap::new();
            h.insert(PRAGMA, HeaderValue::from_str(&members.join(" ,")).unwrap());
            if let Some(cc) = &cc {
                h.insert(CACHE_CONTROL, HeaderValue::from_str(cc).unwrap());
            }
            let d = RequestDirectives::from_headers(&h, false);
            if cc.is_none() {
                let want = members.iter().any(|m| m.eq_ignore_ascii_case("no-cache"));
                prop_assert_eq!(d.no_cache, want);
            }
            prop_assert!(!RequestDirectives::from_headers(&h, true).no_cache);
        }
    }
}
