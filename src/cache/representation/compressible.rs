//! Whether the cache may make other codings of a response it stores.

use http::header::{CACHE_CONTROL, CONTENT_RANGE, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};

use super::coding::{response_coding, Coding};
use super::config::Compression;

/// Types never compressed whatever the patterns say: their bytes are
/// compressed already (another pass gains nothing and costs CPU on both
/// ends), or they stream.
const NEVER: &[&str] = &[
    "image/*",
    "audio/*",
    "video/*",
    "font/woff",
    "font/woff2",
    "application/font-woff",
    "application/zip",
    "application/gzip",
    "application/x-gzip",
    "application/zstd",
    "application/x-brotli",
    "application/x-bzip2",
    "application/x-xz",
    "application/x-7z-compressed",
    "application/x-rar-compressed",
    "application/vnd.rar",
    "application/pdf",
    "application/octet-stream",
    "text/event-stream",
];

/// Patterns that [`NEVER`] would catch but that compress well.
const EXCEPT: &[&str] = &["image/svg+xml", "image/x-icon", "image/vnd.microsoft.icon"];

/// The decision for one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Make the configured codings from the body, which is in `source`
    /// coding (identity, or one the cache decodes first).
    Compress {
        /// The coding the body arrived in.
        source: Coding,
    },
    /// Store the body as it is, and only that.
    Keep(&'static str),
}

/// Decides whether a response about to be stored gets other codings:
/// a status with a full body, a compressible type (see
/// [`Compression::content_types`]), at least
/// [`min_size`](Compression::min_size) bytes, a body in identity or one
/// coding the cache decodes, and no `no-transform` (RFC 9110 §7.7: a proxy
/// MUST NOT transform such content; RFC 9111 §5.2.2.6).
pub(crate) fn decide(
    status: StatusCode,
    headers: &HeaderMap,
    body_len: usize,
    config: &Compression,
) -> Decision {
    if config.codings.is_empty() {
        return Decision::Keep("compression off");
    }
    if matches!(
        status,
        StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
    ) || status.is_informational()
        || headers.contains_key(CONTENT_RANGE)
    {
        return Decision::Keep("status");
    }
    if has_no_transform(headers) {
        return Decision::Keep("no-transform");
    }
    if body_len < config.min_size {
        return Decision::Keep("too small");
    }
    let Some(source) = response_coding(headers) else {
        return Decision::Keep("content-encoding");
    };
    let Some(media) = media_type(headers) else {
        return Decision::Keep("content-type");
    };
    let compressible = config.types.iter().any(|p| matches(p, &media))
        && (EXCEPT.iter().any(|p| matches(p, &media)) || !NEVER.iter().any(|p| matches(p, &media)));
    if !compressible {
        return Decision::Keep("content-type");
    }
    Decision::Compress { source }
}

/// Whether a `Cache-Control` line says `no-transform` (request or
/// response: RFC 9111 §5.2.1.6, §5.2.2.6).
pub(crate) fn has_no_transform(headers: &HeaderMap) -> bool {
    headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|d| {
            let d = d.trim_ascii();
            let name = d.split(|b| *b == b'=').next().unwrap_or(d).trim_ascii();
            name.eq_ignore_ascii_case(b"no-transform")
        })
    })
}

/// The `type/subtype` of the one `Content-Type`, lowercased.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let mut all = headers.get_all(CONTENT_TYPE).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    let essence = v.to_str().ok()?.split(';').next()?.trim();
    let (ty, sub) = essence.split_once('/')?;
    if ty.is_empty() || sub.is_empty() || sub.contains('/') {
        return None;
    }
    Some(essence.to_ascii_lowercase())
}

/// `type/subtype`, `type/*` or `+suffix` against a lowercase media type.
fn matches(pattern: &str, media: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix('+') {
        return media
            .rsplit_once('+')
            .is_some_and(|(_, s)| s.eq_ignore_ascii_case(suffix));
    }
    match pattern.strip_suffix("/*") {
        Some(ty) => media
            .split_once('/')
            .is_some_and(|(t, _)| t.eq_ignore_ascii_case(ty)),
        None => pattern.eq_ignore_ascii_case(media),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    fn decide_for(pairs: &[(&'static str, &'static str)]) -> Decision {
        decide(StatusCode::OK, &headers(pairs), 30_000, &Compression::new())
    }

    const YES: Decision = Decision::Compress {
        source: Coding::Identity,
    };

    #[test]
    fn compressible_types_table() {
        for ct in [
            "text/html",
            "text/html; charset=utf-8",
            "TEXT/HTML",
            "text/css",
            "text/plain",
            "text/javascript",
            "application/javascript",
            "application/json",
            "application/ld+json",
            "application/problem+json",
            "application/xml",
            "application/rss+xml",
            "image/svg+xml",
            "application/wasm",
            "application/manifest+json",
        ] {
            assert_eq!(decide_for(&[("content-type", ct)]), YES, "{ct}");
        }
        for ct in [
            "image/png",
            "image/jpeg",
            "image/webp",
            "video/mp4",
            "audio/ogg",
            "font/woff2",
            "application/zip",
            "application/gzip",
            "application/pdf",
            "application/octet-stream",
            "text/event-stream",
            "nonsense",
            "text/",
            "/html",
        ] {
            assert_eq!(
                decide_for(&[("content-type", ct)]),
                Decision::Keep("content-type"),
                "{ct}"
            );
        }
        assert_eq!(decide_for(&[]), Decision::Keep("content-type"));
        assert_eq!(
            decide_for(&[("content-type", "text/html"), ("content-type", "text/css")]),
            Decision::Keep("content-type")
        );
    }

    #[test]
    fn a_pattern_cannot_unlock_already_compressed_types() {
        let c = Compression::new().content_types(["application/*", "image/*"]);
        let h = headers(&[("content-type", "application/zip")]);
        assert_eq!(
            decide(StatusCode::OK, &h, 30_000, &c),
            Decision::Keep("content-type")
        );
        let h = headers(&[("content-type", "image/svg+xml")]);
        assert_eq!(decide(StatusCode::OK, &h, 30_000, &c), YES);
        let h = headers(&[("content-type", "text/html")]);
        assert_eq!(
            decide(StatusCode::OK, &h, 30_000, &c),
            Decision::Keep("content-type")
        );
    }

    #[test]
    fn no_transform_is_honoured() {
        for cc in [
            "no-transform",
            "public, NO-TRANSFORM, max-age=60",
            "max-age=1,no-transform",
        ] {
            let h = [("content-type", "text/html"), ("cache-control", cc)];
            assert_eq!(decide_for(&h), Decision::Keep("no-transform"), "{cc}");
        }
        let h = [
            ("content-type", "text/html"),
            ("cache-control", "no-transformer"),
        ];
        assert_eq!(decide_for(&h), YES);
    }

    #[test]
    fn small_bodies_are_kept() {
        let c = Compression::new();
        let h = headers(&[("content-type", "text/html")]);
        assert_eq!(
            decide(StatusCode::OK, &h, 1023, &c),
            Decision::Keep("too small")
        );
        assert_eq!(decide(StatusCode::OK, &h, 1024, &c), YES);
        let c = c.min_size(0);
        assert_eq!(decide(StatusCode::OK, &h, 1, &c), YES);
    }

    #[test]
    fn content_encoding_we_can_decode_is_a_source() {
        for (ce, source) in [
            ("identity", Coding::Identity),
            ("gzip", Coding::Gzip),
            ("x-gzip", Coding::Gzip),
            ("deflate", Coding::Deflate),
            ("br", Coding::Br),
            ("zstd", Coding::Zstd),
        ] {
            let h = [("content-type", "text/html"), ("content-encoding", ce)];
            assert_eq!(decide_for(&h), Decision::Compress { source }, "{ce}");
        }
        for ce in ["compress", "gzip, br", "exi"] {
            let h = [("content-type", "text/html"), ("content-encoding", ce)];
            assert_eq!(decide_for(&h), Decision::Keep("content-encoding"), "{ce}");
        }
    }

    #[test]
    fn statuses_without_a_full_body_are_kept() {
        let h = headers(&[("content-type", "text/html")]);
        let c = Compression::new();
        for s in [204, 206, 304] {
            let s = StatusCode::from_u16(s).unwrap();
            assert_eq!(decide(s, &h, 30_000, &c), Decision::Keep("status"));
        }
        assert_eq!(decide(StatusCode::NOT_FOUND, &h, 30_000, &c), YES);
        let h = headers(&[
            ("content-type", "text/html"),
            ("content-range", "bytes 0-1/2"),
        ]);
        assert_eq!(
            decide(StatusCode::OK, &h, 30_000, &c),
            Decision::Keep("status")
        );
    }

    #[test]
    fn no_codings_means_off() {
        let c = Compression::new().codings([]);
        let h = headers(&[("content-type", "text/html")]);
        assert_eq!(
            decide(StatusCode::OK, &h, 30_000, &c),
            Decision::Keep("compression off")
        );
    }
}
