//! Which of the request fields the cache reads are present, found in one
//! pass over the field names.
//!
//! The hit path reads a dozen request fields (framing, `Upgrade`,
//! `Cache-Control`, `Pragma`, `Authorization`, the conditionals, `Range`,
//! `Accept-Encoding`), and most requests carry few of them. One pass over
//! the names a request has costs less than the hashed lookups for each
//! absent one (about 1,100 instructions of a 10,700-instruction hit in
//! `cargo bench --bench cache -- '^hit/layer$'` under callgrind). Readers
//! keep their own parsing: they are handed the request's fields when one
//! of theirs is present and an empty map otherwise ([`Present::view`]), so
//! what they answer cannot differ from reading the request itself.

use std::sync::OnceLock;

use http::HeaderMap;

/// A set of request fields, as bits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct Present(u16);

impl Present {
    /// `Content-Length`, `Transfer-Encoding` (RFC 9112 §6).
    pub(crate) const CONTENT: Present = Present(1);
    /// `Upgrade` (RFC 9110 §7.8).
    pub(crate) const UPGRADE: Present = Present(1 << 1);
    /// `Cache-Control`, `Pragma` (RFC 9111 §5.2.1, §5.4).
    pub(crate) const DIRECTIVES: Present = Present(1 << 2);
    /// `Authorization`: credentials restrict reuse (RFC 9111 §3.5).
    pub(crate) const AUTHORIZATION: Present = Present(1 << 3);
    /// `If-None-Match`, `If-Modified-Since`: the preconditions a cache
    /// evaluates (RFC 9111 §4.3.2).
    pub(crate) const CONDITIONAL: Present = Present(1 << 4);
    /// `Range` (RFC 9110 §14.2). `If-Range` alone is not in it: without
    /// `Range` it is ignored (§13.1.5), and with one it is read beside it.
    pub(crate) const RANGE: Present = Present(1 << 5);
    /// `If-Match`, `If-Unmodified-Since`: preconditions only the origin
    /// can evaluate (RFC 9111 §4.3.2).
    pub(crate) const ORIGIN_CONDITIONAL: Present = Present(1 << 6);
    /// `Accept-Encoding` (RFC 9110 §12.5.3).
    pub(crate) const ENCODING: Present = Present(1 << 7);

    /// The fields of this set that `headers` has, in one pass over its
    /// names.
    pub(crate) fn scan(headers: &HeaderMap) -> Present {
        let mut bits = 0;
        for name in headers.keys() {
            // Names are lowercase; a match on the text compiles to a
            // switch on its length and a compare or two.
            bits |= match name.as_str() {
                "content-length" | "transfer-encoding" => Self::CONTENT.0,
                "upgrade" => Self::UPGRADE.0,
                "cache-control" | "pragma" => Self::DIRECTIVES.0,
                "authorization" => Self::AUTHORIZATION.0,
                "if-none-match" | "if-modified-since" => Self::CONDITIONAL.0,
                "range" => Self::RANGE.0,
                "if-match" | "if-unmodified-since" => Self::ORIGIN_CONDITIONAL.0,
                "accept-encoding" => Self::ENCODING.0,
                _ => 0,
            };
        }
        Present(bits)
    }

    /// Whether any field of `of` is present.
    pub(crate) fn any(self, of: Present) -> bool {
        self.0 & of.0 != 0
    }

    /// `headers` when a field of `of` is present, otherwise an empty map.
    /// A reader that reads only fields of `of` answers the same for both.
    pub(crate) fn view(self, of: Present, headers: &HeaderMap) -> &HeaderMap {
        if self.any(of) {
            headers
        } else {
            static EMPTY: OnceLock<HeaderMap> = OnceLock::new();
            EMPTY.get_or_init(HeaderMap::new)
        }
    }
}

impl std::ops::BitOr for Present {
    type Output = Present;

    fn bitor(self, other: Present) -> Present {
        Present(self.0 | other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::RequestDirectives;
    use crate::cache::representation::stored::Wants;
    use crate::etag::Conditionals;
    use http::header::{HeaderName, HeaderValue};
    use http::Method;

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn each_field_sets_its_bit_and_others_set_none() {
        for (name, bit) in [
            ("content-length", Present::CONTENT),
            ("transfer-encoding", Present::CONTENT),
            ("upgrade", Present::UPGRADE),
            ("cache-control", Present::DIRECTIVES),
            ("pragma", Present::DIRECTIVES),
            ("authorization", Present::AUTHORIZATION),
            ("if-none-match", Present::CONDITIONAL),
            ("if-modified-since", Present::CONDITIONAL),
            ("range", Present::RANGE),
            ("if-match", Present::ORIGIN_CONDITIONAL),
            ("if-unmodified-since", Present::ORIGIN_CONDITIONAL),
            ("accept-encoding", Present::ENCODING),
        ] {
            let found = Present::scan(&map(&[("host", "a.test"), (name, "x")]));
            assert_eq!(found, bit, "{name}");
        }
        let browser = map(&[
            ("host", "a.test"),
            ("accept", "text/html"),
            ("accept-language", "en"),
            ("user-agent", "Mozilla/5.0"),
            ("cookie", "a=b"),
            ("sec-fetch-mode", "navigate"),
            ("x-range", "1"),
            // Ignored without `Range` (RFC 9110 §13.1.5).
            ("if-range", "\"a\""),
        ]);
        assert_eq!(Present::scan(&browser), Present::default());
    }

    /// The readers given the view answer as they do given the request:
    /// every field a reader reads belongs to the set it is viewed through.
    #[test]
    fn readers_answer_the_same_through_the_view() {
        let requests = [
            map(&[]),
            map(&[("accept", "text/html")]),
            map(&[("cache-control", "no-cache")]),
            map(&[("cache-control", "max-age=0, no-transform")]),
            map(&[("pragma", "no-cache")]),
            map(&[("authorization", "Bearer x")]),
            map(&[("if-none-match", "\"a\"")]),
            map(&[("if-modified-since", "Thu, 26 Nov 2026 19:00:00 GMT")]),
            map(&[("accept-encoding", "gzip, br;q=0.5")]),
            map(&[
                ("accept-encoding", "identity;q=0"),
                ("cache-control", "no-transform"),
            ]),
            map(&[("content-length", "0")]),
            map(&[("transfer-encoding", "chunked")]),
        ];
        for h in &requests {
            let p = Present::scan(h);
            let d = |h| format!("{:?}", RequestDirectives::from_headers(h, false));
            assert_eq!(d(h), d(p.view(Present::DIRECTIVES, h)), "{h:?}");
            // §3.5: credentials restrict reuse whatever their value.
            assert_eq!(
                h.contains_key("authorization"),
                p.any(Present::AUTHORIZATION)
            );
            let c = |h| format!("{:?}", Conditionals::from_request(&Method::GET, h));
            assert_eq!(c(h), c(p.view(Present::CONDITIONAL, h)), "{h:?}");
            let w = |h| format!("{:?}", Wants::from_headers(h));
            let view = p.view(Present::ENCODING | Present::DIRECTIVES, h);
            assert_eq!(w(h), w(view), "{h:?}");
            assert_eq!(
                crate::cache::service::has_content(h),
                crate::cache::service::has_content(p.view(Present::CONTENT, h))
            );
        }
    }
}
