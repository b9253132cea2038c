//! Content codings (RFC 9110 §8.4.1) the cache knows by name.

use http::HeaderValue;

/// A content coding (RFC 9110 §8.4.1) the cache can store, serve or decode.
///
/// `Identity` is the body as the renderer made it. `Gzip` (RFC 1952),
/// `Deflate` (the zlib format of RFC 1950, as RFC 9110 §8.4.1.2 defines
/// it), `Br` (RFC 7932) and `Zstd` (RFC 8878) are the codings browsers
/// accept today. Names compare case-insensitively, and `x-gzip` is read as
/// `gzip` (RFC 9110 §8.4.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Coding {
    /// No coding: the body as the renderer sent it.
    Identity,
    /// `gzip` (RFC 1952).
    Gzip,
    /// `deflate`: the zlib format (RFC 1950) around deflate data (RFC 1951).
    Deflate,
    /// `br`: Brotli (RFC 7932).
    Br,
    /// `zstd`: Zstandard (RFC 8878).
    Zstd,
}

impl Coding {
    /// Every coding, in index order.
    pub(crate) const ALL: [Coding; 5] = [
        Coding::Identity,
        Coding::Gzip,
        Coding::Deflate,
        Coding::Br,
        Coding::Zstd,
    ];

    /// The coding's registered name, lowercase: `identity`, `gzip`,
    /// `deflate`, `br` or `zstd`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }

    /// A stable small index, for per-coding arrays.
    pub(crate) const fn index(self) -> usize {
        match self {
            Coding::Identity => 0,
            Coding::Gzip => 1,
            Coding::Deflate => 2,
            Coding::Br => 3,
            Coding::Zstd => 4,
        }
    }

    /// Reads a coding token, case-insensitively; `x-gzip` is `gzip`.
    /// `None` for any other token (`compress`, `exi`, unknown ones).
    pub(crate) fn from_token(token: &[u8]) -> Option<Coding> {
        Coding::ALL
            .into_iter()
            .find(|c| token.eq_ignore_ascii_case(c.as_str().as_bytes()))
            .or_else(|| {
                token
                    .eq_ignore_ascii_case(b"x-gzip")
                    .then_some(Coding::Gzip)
            })
    }

    /// The `Content-Encoding` value for this coding (`None` for identity,
    /// which is never sent: RFC 9110 §8.4.1 says it is only for
    /// `Accept-Encoding`).
    pub(crate) fn content_encoding(self) -> Option<HeaderValue> {
        match self {
            Coding::Identity => None,
            c => Some(HeaderValue::from_static(c.as_str())),
        }
    }
}

impl std::fmt::Display for Coding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The coding of a response's `Content-Encoding`: `Some(Identity)` when
/// the field is absent, empty or says `identity`; `Some(c)` for exactly one
/// known coding; `None` for several codings (`gzip, br`), an unknown one
/// or a malformed field: the body is then left as it is.
#[cfg(feature = "compression")]
pub(crate) fn response_coding(headers: &http::HeaderMap) -> Option<Coding> {
    let mut found = Coding::Identity;
    for line in headers.get_all(http::header::CONTENT_ENCODING) {
        for member in line.as_bytes().split(|b| *b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() {
                continue;
            }
            match Coding::from_token(member)? {
                Coding::Identity => {}
                c if found == Coding::Identity => found = c,
                // A second coding: layered codings are not undone.
                _ => return None,
            }
        }
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "compression")]
    use http::header::CONTENT_ENCODING;
    #[cfg(feature = "compression")]
    use http::HeaderMap;

    #[test]
    fn tokens_are_case_insensitive_and_x_gzip_is_gzip() {
        assert_eq!(Coding::from_token(b"GZip"), Some(Coding::Gzip));
        assert_eq!(Coding::from_token(b"x-gzip"), Some(Coding::Gzip));
        assert_eq!(Coding::from_token(b"X-GZIP"), Some(Coding::Gzip));
        assert_eq!(Coding::from_token(b"BR"), Some(Coding::Br));
        assert_eq!(Coding::from_token(b"zstd"), Some(Coding::Zstd));
        assert_eq!(Coding::from_token(b"Identity"), Some(Coding::Identity));
        assert_eq!(Coding::from_token(b"compress"), None);
        assert_eq!(Coding::from_token(b"x-compress"), None);
        assert_eq!(Coding::from_token(b""), None);
    }

    #[test]
    fn indexes_are_distinct_and_match_all() {
        for (i, c) in Coding::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }

    #[test]
    fn identity_has_no_content_encoding_value() {
        assert_eq!(Coding::Identity.content_encoding(), None);
        assert_eq!(Coding::Br.content_encoding().unwrap(), "br");
    }

    #[cfg(feature = "compression")]
    fn ce(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CONTENT_ENCODING, http::HeaderValue::from_static(v));
        }
        h
    }

    #[cfg(feature = "compression")]
    #[test]
    fn response_coding_reads_one_known_coding_only() {
        assert_eq!(response_coding(&ce(&[])), Some(Coding::Identity));
        assert_eq!(response_coding(&ce(&[""])), Some(Coding::Identity));
        assert_eq!(response_coding(&ce(&["identity"])), Some(Coding::Identity));
        assert_eq!(response_coding(&ce(&["GZIP"])), Some(Coding::Gzip));
        assert_eq!(response_coding(&ce(&["x-gzip"])), Some(Coding::Gzip));
        assert_eq!(response_coding(&ce(&[" br "])), Some(Coding::Br));
        assert_eq!(
            response_coding(&ce(&["identity, zstd"])),
            Some(Coding::Zstd)
        );
        assert_eq!(response_coding(&ce(&["gzip, br"])), None);
        assert_eq!(response_coding(&ce(&["gzip", "br"])), None);
        assert_eq!(response_coding(&ce(&["compress"])), None);
    }
}
