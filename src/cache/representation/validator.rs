//! Validators per representation (RFC 9110 §8.8.3).
//!
//! Each content coding of a response is a different representation, and a
//! strong validator must change with the bytes: the cache gives a strong
//! `ETag` of a representation it made a suffix naming the coding,
//! `"abc"` → `"abc-br"` (Apache's `mod_deflate` does the same with
//! `-gzip`), so `If-None-Match: "abc-br"` validates exactly the brotli copy
//! and `If-Range` never splices bytes of two codings. A weak `ETag` only
//! claims semantic equivalence, which every coding of one body shares, so it
//! is kept as is on all of them. The representation the origin sent keeps
//! the origin's tag untouched, so revalidation with the origin (which knows
//! only its own tag) is unchanged.

use http::HeaderValue;

use super::coding::Coding;
use crate::etag::ETag;

/// The `ETag` of the `coding` representation of a response whose origin
/// sent `etag` on its `origin` coding.
///
/// `None` when `etag` is not one valid entity-tag: the derived
/// representation then goes without one, rather than claim the origin's
/// unparsed value for other bytes.
pub(crate) fn etag_for(etag: &HeaderValue, origin: Coding, coding: Coding) -> Option<HeaderValue> {
    if coding == origin {
        return Some(etag.clone());
    }
    let tag = ETag::parse(etag.as_bytes())?;
    if tag.is_weak() {
        return Some(etag.clone());
    }
    let mut opaque = String::with_capacity(tag.opaque().len() + 9);
    opaque.push_str(tag.opaque());
    opaque.push('-');
    opaque.push_str(coding.as_str());
    ETag::strong(&opaque).ok().map(|t| t.to_header_value())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etag::{Condition, Conditionals};
    use http::header::{ETAG, IF_NONE_MATCH};
    use http::{HeaderMap, Method, StatusCode};

    fn hv(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn strong_tags_get_a_coding_suffix() {
        let e = hv("\"abc\"");
        assert_eq!(
            etag_for(&e, Coding::Identity, Coding::Identity).unwrap(),
            "\"abc\""
        );
        assert_eq!(
            etag_for(&e, Coding::Identity, Coding::Br).unwrap(),
            "\"abc-br\""
        );
        assert_eq!(
            etag_for(&e, Coding::Identity, Coding::Gzip).unwrap(),
            "\"abc-gzip\""
        );
        assert_eq!(
            etag_for(&e, Coding::Identity, Coding::Zstd).unwrap(),
            "\"abc-zstd\""
        );
        // The origin's coding keeps the origin's tag; identity derived from
        // it is a representation of our own.
        assert_eq!(etag_for(&e, Coding::Gzip, Coding::Gzip).unwrap(), "\"abc\"");
        assert_eq!(
            etag_for(&e, Coding::Gzip, Coding::Identity).unwrap(),
            "\"abc-identity\""
        );
        assert_eq!(
            etag_for(&hv("\"\""), Coding::Identity, Coding::Br).unwrap(),
            "\"-br\""
        );
    }

    #[test]
    fn weak_tags_are_shared() {
        let e = hv("W/\"abc\"");
        for c in Coding::ALL {
            assert_eq!(etag_for(&e, Coding::Identity, c).unwrap(), "W/\"abc\"");
        }
    }

    #[test]
    fn malformed_tags_are_not_carried_over() {
        let e = hv("abc");
        assert_eq!(etag_for(&e, Coding::Identity, Coding::Br), None);
        assert_eq!(
            etag_for(&e, Coding::Identity, Coding::Identity).unwrap(),
            "abc"
        );
    }

    fn evaluate(if_none_match: &'static str, etag: &HeaderValue) -> Condition {
        let mut req = HeaderMap::new();
        req.insert(IF_NONE_MATCH, hv(if_none_match));
        let mut res = HeaderMap::new();
        res.insert(ETAG, etag.clone());
        Conditionals::from_request(&Method::GET, &req)
            .unwrap()
            .evaluate(StatusCode::OK, &res)
    }

    #[test]
    fn if_none_match_validates_each_representation_on_its_own() {
        let origin = hv("\"abc\"");
        let br = etag_for(&origin, Coding::Identity, Coding::Br).unwrap();
        let gzip = etag_for(&origin, Coding::Identity, Coding::Gzip).unwrap();
        assert_eq!(evaluate("\"abc-br\"", &br), Condition::NotModified);
        assert_eq!(evaluate("\"abc-br\"", &gzip), Condition::Proceed);
        assert_eq!(evaluate("\"abc-br\"", &origin), Condition::Proceed);
        assert_eq!(evaluate("\"abc\"", &br), Condition::Proceed);
        assert_eq!(
            evaluate("\"abc-gzip\", \"abc-br\"", &br),
            Condition::NotModified
        );
        // If-None-Match compares weakly (§13.1.2): W/"abc-br" still matches.
        assert_eq!(evaluate("W/\"abc-br\"", &br), Condition::NotModified);
    }
}
