//! Byte ranges of a stored representation (RFC 9110 §14) and `If-Range`
//! (§13.1.5).
//!
//! One range is served as `206 Partial Content`; a request whose ranges
//! are all unsatisfiable gets `416` with `Content-Range: bytes */len`.
//! Several satisfiable ranges get the whole representation (`200`): §14.2
//! lets a server ignore `Range`, and `multipart/byteranges` is rarely
//! asked for by anything but download managers, which cope with a `200`.
//! A `Range` that is malformed, in another unit, or with more than
//! [`MAX_RANGES`] members is ignored the same way.
//!
//! On a miss the cache asks inward for the whole response (without `Range`
//! or `If-Range`, as nginx's `proxy_cache` does), stores it when it may,
//! and cuts the client's range from it with the same [`plan`].

use std::time::SystemTime;

use http::header::{DATE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::etag::ETag;

/// Range specs read from one `Range`; a longer list is ignored whole
/// (RFC 9110 §14.2 warns of many small ranges as a denial of service).
pub(crate) const MAX_RANGES: usize = 32;

/// How to answer a request against a representation of known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangePlan {
    /// The whole representation, as if there were no `Range`.
    Full,
    /// `206` with bytes `start..=end` (inclusive, as `Content-Range` says).
    Partial {
        /// First byte, from 0.
        start: u64,
        /// Last byte, inclusive; `end < len`.
        end: u64,
    },
    /// `416 Range Not Satisfiable` with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// One `range-spec` of `bytes=` (§14.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-last` or `first-` (`last` then `None`).
    From(u64, Option<u64>),
    /// `-suffix`: the last `suffix` bytes.
    Suffix(u64),
}

/// What a request asks of a stored response of `len` bytes: the
/// representation is selected already (its headers give the validators for
/// `If-Range`).
///
/// Only a `GET` for a `200` is served in part (§14.2: GET is the only
/// method with range handling; another status is sent whole). `Range` is
/// ignored when `If-Range` does not match (§13.1.5) or cannot be parsed.
pub(crate) fn plan(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    len: u64,
) -> RangePlan {
    if method != Method::GET || status != StatusCode::OK {
        return RangePlan::Full;
    }
    let mut lines = request.get_all(RANGE).iter();
    let Some(range) = lines.next() else {
        return RangePlan::Full;
    };
    if lines.next().is_some() {
        // A singleton field sent twice: malformed, ignored.
        return RangePlan::Full;
    }
    if !if_range_holds(request, response) {
        return RangePlan::Full;
    }
    evaluate(range.as_bytes(), len)
}

/// `Range` against a representation of `len` bytes.
pub(crate) fn evaluate(value: &[u8], len: u64) -> RangePlan {
    let Some(specs) = parse(value) else {
        return RangePlan::Full;
    };
    let mut satisfiable = None;
    let mut count = 0;
    for spec in specs.iter().flatten() {
        let span = match *spec {
            // §14.1.1: satisfiable when first-pos < length.
            Spec::From(first, last) if first < len => {
                Some((first, last.map_or(len - 1, |l| l.min(len - 1))))
            }
            Spec::From(..) => None,
            // A non-zero suffix is satisfiable; longer than the
            // representation means all of it. An empty representation has
            // no bytes to send in a 206: sent whole below.
            Spec::Suffix(n) if n > 0 && len > 0 => Some((len - n.min(len), len - 1)),
            Spec::Suffix(n) if n > 0 => return RangePlan::Full,
            Spec::Suffix(_) => None,
        };
        if let Some(span) = span {
            count += 1;
            satisfiable.get_or_insert(span);
        }
    }
    match (count, satisfiable) {
        (1, Some((start, end))) => RangePlan::Partial { start, end },
        (0, _) => RangePlan::Unsatisfiable,
        _ => RangePlan::Full,
    }
}

/// Parses `bytes=spec, spec, …`: `None` when malformed (another unit, a
/// `first > last`, a missing number, too many specs), so `Range` is
/// ignored. The unit is case-insensitive; whitespace may surround the
/// list's commas and the `=`.
fn parse(value: &[u8]) -> Option<[Option<Spec>; MAX_RANGES]> {
    let eq = value.iter().position(|b| *b == b'=')?;
    if !value[..eq].trim_ascii().eq_ignore_ascii_case(b"bytes") {
        return None;
    }
    let mut specs = [None; MAX_RANGES];
    let mut n = 0;
    for member in value[eq + 1..].split(|b| *b == b',') {
        let member = member.trim_ascii();
        if member.is_empty() {
            continue;
        }
        let slot = specs.get_mut(n)?;
        n += 1;
        let dash = member.iter().position(|b| *b == b'-')?;
        let (first, last) = (&member[..dash], &member[dash + 1..]);
        *slot = Some(if first.is_empty() {
            Spec::Suffix(number(last)?)
        } else {
            let first = number(first)?;
            let last = if last.is_empty() {
                None
            } else {
                Some(number(last)?)
            };
            if last.is_some_and(|l| l < first) {
                return None;
            }
            Spec::From(first, last)
        });
    }
    // `bytes=` with no spec at all is malformed.
    (n > 0).then_some(specs)
}

/// `1*DIGIT`; a value past u64 is read as u64::MAX (it can only be past
/// the end of any representation).
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// RFC 9110 §13.1.5: true without `If-Range`; with it, true only when its
/// entity-tag matches the representation's `ETag` by strong comparison, or
/// its date equals the `Last-Modified` and that date is a strong validator
/// (at least one second before `Date`, §8.8.2.2). Anything else, a weak or
/// malformed tag included, means "send it whole".
pub(crate) fn if_range_holds(request: &HeaderMap, response: &HeaderMap) -> bool {
    let mut lines = request.get_all(IF_RANGE).iter();
    let Some(value) = lines.next() else {
        return true;
    };
    if lines.next().is_some() {
        return false;
    }
    let bytes = value.as_bytes().trim_ascii();
    if bytes.starts_with(b"\"") || bytes.starts_with(b"W/") {
        let (Some(want), Some(have)) = (ETag::parse(bytes), single(response, &ETAG)) else {
            return false;
        };
        return ETag::parse(have.as_bytes()).is_some_and(|have| have.strong_eq(&want));
    }
    let Some(since) = std::str::from_utf8(bytes)
        .ok()
        .and_then(crate::date::parse_str)
    else {
        return false;
    };
    let date = |name| single(response, name).and_then(crate::date::parse);
    match (date(&LAST_MODIFIED), date(&DATE)) {
        (Some(lm), Some(date)) => lm == since && strong_date(lm, date),
        _ => false,
    }
}

fn strong_date(last_modified: SystemTime, date: SystemTime) -> bool {
    date.duration_since(last_modified)
        .is_ok_and(|d| d.as_secs() >= 1)
}

fn single<'a>(headers: &'a HeaderMap, name: &http::header::HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let v = all.next()?;
    all.next().is_none().then_some(v)
}

/// `Content-Range: bytes start-end/len` for a 206.
pub(crate) fn content_range(start: u64, end: u64, len: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes {start}-{end}/{len}"))
        .unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

/// `Content-Range: bytes */len` for a 416 (§14.4).
pub(crate) fn unsatisfied_range(len: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes */{len}"))
        .unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangePlan::{Full, Partial, Unsatisfiable};

    fn p(start: u64, end: u64) -> RangePlan {
        Partial { start, end }
    }

    #[test]
    fn range_table() {
        let cases: &[(&str, u64, RangePlan)] = &[
            ("bytes=0-499", 10_000, p(0, 499)),
            ("bytes=500-999", 10_000, p(500, 999)),
            ("bytes=9500-", 10_000, p(9500, 9999)),
            ("bytes=-500", 10_000, p(9500, 9999)),
            ("bytes=0-0", 10_000, p(0, 0)),
            ("bytes=-1", 10_000, p(9999, 9999)),
            // Last past the end is clipped; a suffix longer than the whole
            // is the whole.
            ("bytes=9000-20000", 10_000, p(9000, 9999)),
            ("bytes=-20000", 10_000, p(0, 9999)),
            ("bytes=0-99999999999999999999999", 10, p(0, 9)),
            // Case, whitespace around the list and the `=`.
            ("Bytes=0-1", 10, p(0, 1)),
            ("BYTES = 0-1 ,", 10, p(0, 1)),
            ("bytes=  , 2-3", 10, p(2, 3)),
            // Unsatisfiable.
            ("bytes=10-", 10, Unsatisfiable),
            ("bytes=10-20", 10, Unsatisfiable),
            ("bytes=-0", 10, Unsatisfiable),
            ("bytes=10-, 20-30", 10, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=99999999999999999999999-", 10, Unsatisfiable),
            // One satisfiable among unsatisfiable ones.
            ("bytes=50-60, 2-3", 10, p(2, 3)),
            // Several satisfiable: the whole representation.
            ("bytes=0-1, 3-4", 10, Full),
            ("bytes=0-1, -2", 10, Full),
            // An empty representation has nothing to send in part.
            ("bytes=-5", 0, Full),
            // Malformed or another unit: ignored.
            ("bytes=5-1", 10, Full),
            ("bytes=", 10, Full),
            ("bytes=-", 10, Full),
            ("bytes=a-b", 10, Full),
            ("bytes=1", 10, Full),
            ("bytes=1-2-3", 10, Full),
            ("bytes=+1-2", 10, Full),
            ("bytes=1 - 2", 10, Full),
            ("items=0-1", 10, Full),
            ("0-1", 10, Full),
            ("", 10, Full),
        ];
        for (value, len, want) in cases {
            assert_eq!(
                evaluate(value.as_bytes(), *len),
                *want,
                "{value:?} of {len}"
            );
        }
    }

    #[test]
    fn too_many_ranges_are_ignored() {
        let mut many = String::from("bytes=");
        for i in 0..=MAX_RANGES {
            many.push_str(&format!("{i}-{i},"));
        }
        assert_eq!(evaluate(many.as_bytes(), 1000), Full);
        assert_eq!(evaluate(b"bytes=0-0", 1000), p(0, 0));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
    const LATER: &str = "Mon, 01 Jan 2024 00:00:10 GMT";

    fn stored() -> HeaderMap {
        headers(&[("etag", "\"v1\""), ("last-modified", LM), ("date", LATER)])
    }

    #[test]
    fn if_range_table() {
        let cases: &[(&[(&'static str, &str)], RangePlan)] = &[
            (&[("range", "bytes=0-1")], p(0, 1)),
            (&[("range", "bytes=0-1"), ("if-range", "\"v1\"")], p(0, 1)),
            (&[("range", "bytes=0-1"), ("if-range", "\"v2\"")], Full),
            // Weak tags never match strongly.
            (&[("range", "bytes=0-1"), ("if-range", "W/\"v1\"")], Full),
            (&[("range", "bytes=0-1"), ("if-range", LM)], p(0, 1)),
            (&[("range", "bytes=0-1"), ("if-range", LATER)], Full),
            (&[("range", "bytes=0-1"), ("if-range", "yesterday")], Full),
            (&[("range", "bytes=0-1"), ("if-range", "\"v1")], Full),
            // Two Range lines: malformed.
            (&[("range", "bytes=0-1"), ("range", "bytes=2-3")], Full),
            // If-Range without Range changes nothing.
            (&[("if-range", "\"v2\"")], Full),
        ];
        for (req, want) in cases {
            let got = plan(&Method::GET, &headers(req), StatusCode::OK, &stored(), 100);
            assert_eq!(got, *want, "{req:?}");
        }
    }

    #[test]
    fn if_range_date_needs_a_strong_last_modified() {
        let req = headers(&[("range", "bytes=0-1"), ("if-range", LM)]);
        // Date within a second of Last-Modified: weak (§8.8.2.2).
        let weak = headers(&[("last-modified", LM), ("date", LM)]);
        assert_eq!(plan(&Method::GET, &req, StatusCode::OK, &weak, 100), Full);
        let undated = headers(&[("last-modified", LM)]);
        assert_eq!(
            plan(&Method::GET, &req, StatusCode::OK, &undated, 100),
            Full
        );
    }

    #[test]
    fn if_range_etag_against_a_weak_stored_tag_fails() {
        let req = headers(&[("range", "bytes=0-1"), ("if-range", "\"v1\"")]);
        let weak = headers(&[("etag", "W/\"v1\"")]);
        assert_eq!(plan(&Method::GET, &req, StatusCode::OK, &weak, 100), Full);
    }

    #[test]
    fn only_get_of_a_200_is_served_in_part() {
        let req = headers(&[("range", "bytes=0-1")]);
        assert_eq!(
            plan(&Method::HEAD, &req, StatusCode::OK, &stored(), 10),
            Full
        );
        assert_eq!(
            plan(&Method::GET, &req, StatusCode::NOT_FOUND, &stored(), 10),
            Full
        );
        assert_eq!(
            plan(&Method::GET, &req, StatusCode::OK, &stored(), 10),
            p(0, 1)
        );
    }

    #[test]
    fn content_range_values() {
        assert_eq!(content_range(0, 499, 1234), "bytes 0-499/1234");
        assert_eq!(unsatisfied_range(1234), "bytes */1234");
    }

    proptest::proptest! {
        #[test]
        fn any_range_value_never_panics_and_stays_in_bounds(
            value in proptest::collection::vec(proptest::num::u8::ANY, 0..100),
            len in 0u64..5000,
        ) {
            if let Partial { start, end } = evaluate(&value, len) {
                proptest::prop_assert!(start <= end && end < len);
            }
        }

        #[test]
        fn well_formed_ranges_stay_in_bounds(
            specs in proptest::collection::vec((proptest::option::of(0u64..300), proptest::option::of(0u64..300)), 1..5),
            len in 0u64..300,
        ) {
            let list: Vec<String> = specs.iter().map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => format!("{}-{}", a.min(b), a.max(b)),
                (Some(a), None) => format!("{a}-"),
                (None, Some(b)) => format!("-{b}"),
                (None, None) => "0-".to_owned(),
            }).collect();
            let value = format!("bytes={}", list.join(", "));
            match evaluate(value.as_bytes(), len) {
                Partial { start, end } => proptest::prop_assert!(start <= end && end < len),
                Unsatisfiable => {
                    let none_satisfiable = specs.iter().all(|(a, b)| match (a, b) {
                        (Some(a), Some(b)) => *a.min(b) >= len,
                        (Some(a), None) => *a >= len,
                        (None, Some(b)) => *b == 0,
                        (None, None) => len == 0,
                    });
                    proptest::prop_assert!(len == 0 || none_satisfiable);
                }
                Full => {}
            }
        }
    }
}
