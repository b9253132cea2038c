//! Which stored response a `304` to the cache's own validation request
//! freshens (RFC 9111 §4.3.4), and the request sent again when it
//! freshens none.
//!
//! The cache validates one stored response at a time, sending its `ETag`
//! and `Last-Modified`. A `304` names the representation it stands for by
//! its own validators; when those select nothing the cache holds, the `304`
//! must not update anything, and it says nothing about what the client
//! should get. HTTP/1.1 (RFC 2616 §10.3.5) said what caches still do: send
//! the request again without the conditional, and use that answer. The
//! request has no content (a `GET` or `HEAD` with content never reaches
//! this path), so sending it again only needs an empty body of its type,
//! which [`empty_like`] makes for the body types it knows. For others
//! (hyper's `Incoming`: it cannot be built outside hyper) the stored
//! response is served as the `304` vouched for and left unchanged.

use std::any::Any;

use bytes::Bytes;
use http::header::ETAG;
use http::{HeaderMap, HeaderValue};

use crate::etag::ETag;

/// Whether a `304`'s fields select the stored response whose entity tag
/// is `stored` (RFC 9111 §4.3.4):
///
/// - a strong `ETag` in the `304` selects only a stored response with the
///   same strong tag (strong comparison, RFC 9110 §8.8.3.2);
/// - a weak one selects a stored response whose tag matches it by weak
///   comparison;
/// - a `304` without `ETag` selects the stored response that was
///   validated. §4.3.4's third rule is for a cache that cannot tell which
///   of its responses a validator-less `304` is about; this one sent one
///   response's validators, and the origin found them current. Origins
///   that leave `ETag` out of a `304` (against RFC 9110 §15.4.5) are
///   common, and nginx and Varnish freshen the response as well; sending
///   every such revalidation twice would double their load.
///
/// An `ETag` field that does not parse counts as none given.
pub(crate) fn selects(stored: Option<&HeaderValue>, not_modified: &HeaderMap) -> bool {
    let parse = |v: &HeaderValue| ETag::parse(v.as_bytes());
    let stored = stored.and_then(parse);
    match not_modified.get(ETAG).and_then(parse) {
        Some(new) if new.is_weak() => stored.is_some_and(|s| s.weak_eq(&new)),
        Some(new) => stored.is_some_and(|s| s.strong_eq(&new)),
        None => true,
    }
}

/// An empty request body of the same type as `body`, for sending a
/// request without content again; `None` for a type it cannot make.
///
/// Known: `http_body_util::Empty<Bytes>`, `Full<Bytes>`, `String`, the
/// boxed bodies of `http_body_util` (`Bytes` data), `axum::body::Body`
/// (feature `axum`) and the proxy's `ProxyBody` (feature `proxy`).
pub(crate) fn empty_like<B: 'static>(body: &B) -> Option<B> {
    let _ = body;
    let mut out: Option<B> = None;
    let slot: &mut dyn Any = &mut out;
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    if let Some(o) = slot.downcast_mut::<Option<http_body_util::Empty<Bytes>>>() {
        *o = Some(http_body_util::Empty::new());
    } else if let Some(o) = slot.downcast_mut::<Option<http_body_util::Full<Bytes>>>() {
        *o = Some(http_body_util::Full::new(Bytes::new()));
    } else if let Some(o) = slot.downcast_mut::<Option<String>>() {
        *o = Some(String::new());
    } else if let Some(o) =
        slot.downcast_mut::<Option<http_body_util::combinators::BoxBody<Bytes, BoxError>>>()
    {
        use http_body_util::BodyExt;
        *o = Some(http_body_util::Empty::new().map_err(|n| match n {}).boxed());
    } else if let Some(o) =
        slot.downcast_mut::<Option<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>>()
    {
        use http_body_util::BodyExt;
        *o = Some(
            http_body_util::Empty::new()
                .map_err(|n| match n {})
                .boxed_unsync(),
        );
    } else {
        other(slot);
    }
    out
}

/// The body types of optional features.
fn other(slot: &mut dyn Any) {
    #[cfg(feature = "axum")]
    if let Some(o) = slot.downcast_mut::<Option<axum::body::Body>>() {
        *o = Some(axum::body::Body::empty());
        return;
    }
    #[cfg(feature = "proxy")]
    if let Some(o) = slot.downcast_mut::<Option<crate::proxy::ProxyBody>>() {
        *o = Some(crate::proxy::ProxyBody::empty());
        return;
    }
    let _ = slot;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_etag(tag: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = tag {
            h.insert(ETAG, HeaderValue::from_str(t).unwrap());
        }
        h
    }

    #[test]
    fn a_304_selects_by_the_rules_of_section_4_3_4() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        // (stored ETag, 304 ETag, selected)
        let table: &[(Option<&str>, Option<&str>, bool)] = &[
            (Some("\"x\""), Some("\"x\""), true),
            (Some("\"x\""), Some("\"y\""), false),
            // A strong tag selects only the same strong tag.
            (Some("W/\"x\""), Some("\"x\""), false),
            (None, Some("\"x\""), false),
            // A weak one selects by weak comparison.
            (Some("\"x\""), Some("W/\"x\""), true),
            (Some("W/\"x\""), Some("W/\"x\""), true),
            (Some("W/\"x\""), Some("W/\"y\""), false),
            (None, Some("W/\"x\""), false),
            // No tag: the response that was validated.
            (None, None, true),
            (Some("\"x\""), None, true),
            // A tag that does not parse is none.
            (None, Some("x"), true),
        ];
        for (stored, new, want) in table {
            let stored = stored.map(v);
            assert_eq!(
                selects(stored.as_ref(), &with_etag(*new)),
                *want,
                "stored {stored:?}, 304 {new:?}"
            );
        }
    }

    #[test]
    fn empty_bodies_are_made_for_known_types_only() {
        use http_body::Body;
        let full = http_body_util::Full::new(Bytes::from_static(b"x"));
        assert!(empty_like(&full).is_some_and(|b| b.is_end_stream()));
        assert!(empty_like(&http_body_util::Empty::<Bytes>::new()).is_some());
        assert_eq!(empty_like(&"x".to_owned()).as_deref(), Some(""));
        assert!(empty_like(&42u8).is_none());
        #[cfg(feature = "axum")]
        assert!(empty_like(&axum::body::Body::from("x")).is_some_and(|b| b.is_end_stream()));
        #[cfg(feature = "proxy")]
        assert!(empty_like(&crate::proxy::ProxyBody::empty()).is_some());
    }
}
