//! One validated request authority, and the forwarding headers that must not
//! contradict it.
//!
//! The authority a cache keys on, the `Host` an inner service or upstream
//! receives and the host in every forwarding header must be one and the same
//! value, validated once; when they can differ, one client can make a page
//! for one host be stored under another (cache poisoning). [`normalize`] is
//! that single source: both [`CacheLayer`](crate::cache::CacheLayer) and
//! [`ReverseProxy`](crate::proxy::ReverseProxy) call it before anything
//! else, answer `400 Bad Request` on its errors, and pass the request on
//! with `Host` rewritten to the authority it returned.
//!
//! # Rules
//!
//! | request | result |
//! |---|---|
//! | absolute-form target (`GET http://a.test/ HTTP/1.1`), any valid `Host` | the target's authority; `Host` rewritten to it (RFC 9112 §3.2.2) |
//! | HTTP/2 `:authority` (hyper puts it in the URI), no `Host` | `:authority`; `Host` set to it (RFC 9113 §8.3.1) |
//! | HTTP/2 `:authority` and a different `Host` | [`AuthorityError::Conflict`] (RFC 9113 §8.3.1: malformed) |
//! | origin-form target, one valid `Host` | the `Host` |
//! | more than one `Host` line | [`AuthorityError::SeveralHosts`] (RFC 9112 §3.2) |
//! | HTTP/1.1 (or later) with no `Host` and no authority in the target | [`AuthorityError::MissingHost`] (RFC 9112 §3.2) |
//! | HTTP/1.0 (or 0.9) with neither | `Ok(None)`: no authority; the cache neither stores nor serves it, the proxy lets the upstream's own authority stand (as nginx uses its `server_name`) |
//! | a `Host` or target authority that is not `uri-host [ ":" port ]` | [`AuthorityError::Invalid`] (RFC 9112 §3.2, RFC 9110 §7.2) |
//! | userinfo (`user@host`) | [`AuthorityError::Invalid`] (RFC 9110 §4.2.4) |
//!
//! *Valid* means: a `reg-name` (letters, digits, `-._~`, `!$&'()*+,;=`,
//! `%XX`), an IPv4 address or a bracketed IPv6 literal (RFC 3986 §3.2.2), not
//! empty (RFC 9110 §4.2.1), optionally followed by `:` and 1 to 5 digits
//! naming a port of at most 65535. A slash, `?`, `#`, `@`, whitespace,
//! control or non-ASCII byte anywhere makes it invalid. The authority is
//! lowercased (RFC 3986 §6.2.2.1), so the cache key and the `Host` the inner
//! service sees are byte for byte the same text.
//!
//! # Forwarding headers
//!
//! Frameworks derive the client address, scheme, host, port and path prefix
//! from a family of request headers (Express `trust proxy`, Rails, Django
//! `USE_X_FORWARDED_HOST`, Spring `ForwardedHeaderFilter`, ASP.NET, Ktor
//! `XForwardedHeaders`, axum's `Host` extractor). From a client that is not a
//! trusted proxy every one of them is a lie waiting to be believed, so
//! [`remove_forwarding_headers`] removes all of [`FORWARDING_HEADERS`] (the
//! union of what Traefik's `forwardedHeaders`, Envoy's external-request
//! sanitising and the headers the frameworks above read), and the
//! method-override headers of [`METHOD_OVERRIDE_HEADERS`] on every method
//! but `POST` (they exist to tunnel a method through `POST`; on a `GET` they
//! would let a cached page be produced by a `DELETE` handler).

use std::fmt;

use bytes::Bytes;
use http::header::HOST;
use http::request::Parts;
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Method, Version};

/// Why a request has no valid authority; each answers `400 Bad Request`
/// (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthorityError {
    /// An HTTP/1.1 request with no `Host` and no authority in its target.
    MissingHost,
    /// More than one `Host` field line.
    SeveralHosts,
    /// A `Host` value or target authority that is not
    /// `uri-host [ ":" port ]`, or that carries userinfo.
    Invalid,
    /// An HTTP/2 request whose `Host` names another authority than its
    /// `:authority` (RFC 9113 §8.3.1).
    Conflict,
}

impl AuthorityError {
    /// The status to answer with: always `400 Bad Request`.
    #[must_use]
    pub fn status(self) -> http::StatusCode {
        http::StatusCode::BAD_REQUEST
    }
}

impl fmt::Display for AuthorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthorityError::MissingHost => "the request has no Host",
            AuthorityError::SeveralHosts => "the request has more than one Host line",
            AuthorityError::Invalid => "the request's Host or target authority is invalid",
            AuthorityError::Conflict => "the request's Host contradicts its :authority",
        })
    }
}

impl std::error::Error for AuthorityError {}

/// What [`check`] found, borrowed from the request.
enum Found<'a> {
    /// HTTP/1.0 with neither `Host` nor an absolute-form target.
    Absent,
    /// `Host` is one line and already exactly the authority.
    Exact(&'a HeaderValue),
    /// `Host` must be set to these bytes, lowercased.
    Rewrite(&'a [u8]),
}

/// The rules of the module docs, without allocating.
fn check(parts: &Parts) -> Result<Found<'_>, AuthorityError> {
    let mut lines = parts.headers.get_all(HOST).iter();
    let line = match (lines.next(), lines.next()) {
        (Some(_), Some(_)) => return Err(AuthorityError::SeveralHosts),
        (h, _) => h,
    };
    let host = line.map(HeaderValue::as_bytes);
    // A Host line must be valid even where the target's authority wins
    // (RFC 9112 §3.2: "a Host header field with an invalid field value").
    if host.is_some_and(|h| !is_valid_host(h)) {
        return Err(AuthorityError::Invalid);
    }
    let lower = |b: &[u8]| !b.iter().any(u8::is_ascii_uppercase);
    match parts.uri.authority() {
        Some(target) => {
            let target = target.as_str().as_bytes();
            if !is_valid(target) {
                return Err(AuthorityError::Invalid);
            }
            if parts.version == Version::HTTP_2
                && host.is_some_and(|h| !h.eq_ignore_ascii_case(target))
            {
                return Err(AuthorityError::Conflict);
            }
            Ok(match line {
                Some(line) if host == Some(target) && lower(target) => Found::Exact(line),
                _ => Found::Rewrite(target),
            })
        }
        None => match (line, host) {
            (Some(line), Some(h)) if lower(h) => Ok(Found::Exact(line)),
            (_, Some(h)) => Ok(Found::Rewrite(h)),
            (_, None) if parts.version <= Version::HTTP_10 => Ok(Found::Absent),
            (_, None) => Err(AuthorityError::MissingHost),
        },
    }
}

/// The request's one authority, validated and lowercased, without changing
/// the request; see the [module docs](self) for the rules.
///
/// `Ok(None)` only for an HTTP/1.0 request with neither `Host` nor an
/// absolute-form target.
///
/// # Errors
///
/// An [`AuthorityError`] when the request must be answered `400`.
pub fn resolve(parts: &Parts) -> Result<Option<Authority>, AuthorityError> {
    let raw = match check(parts)? {
        Found::Absent => return Ok(None),
        Found::Rewrite(raw) => raw,
        Found::Exact(line) => line.as_bytes(),
    };
    let bytes = Bytes::from(raw.to_ascii_lowercase());
    Authority::from_maybe_shared(bytes)
        .map(Some)
        .map_err(|_| AuthorityError::Invalid)
}

/// Makes the request carry its one authority in `Host`, validated and
/// lowercased (one line), and says whether it has one; see the
/// [module docs](self) for the rules. `Host` is only rewritten when it is
/// not already exactly that text, so the common request costs a scan of
/// its `Host` and no allocation. The target URI is left alone (an
/// absolute-form URI already names the same authority).
///
/// Returns `Ok(false)` only for an HTTP/1.0 request with neither `Host` nor
/// an absolute-form target.
///
/// Idempotent: calling it again on its own output changes nothing, so a
/// proxy under a cache validates again at little cost.
///
/// # Errors
///
/// As [`resolve`]; the request is then left unchanged.
pub fn normalize_host(parts: &mut Parts) -> Result<bool, AuthorityError> {
    normalized_host(parts).map(|host| host.is_some())
}

/// [`normalize_host`], returning the `Host` value it leaves (a shared
/// copy: no lookup after it).
pub(crate) fn normalized_host(parts: &mut Parts) -> Result<Option<HeaderValue>, AuthorityError> {
    let value = match check(parts)? {
        Found::Absent => return Ok(None),
        Found::Exact(line) => return Ok(Some(line.clone())),
        Found::Rewrite(raw) => HeaderValue::from_bytes(&raw.to_ascii_lowercase()),
    };
    // Valid authorities are visible ASCII, so this cannot fail.
    let value = value.map_err(|_| AuthorityError::Invalid)?;
    parts.headers.insert(HOST, value.clone());
    Ok(Some(value))
}

/// [`normalize_host`], returning the authority itself (one allocation
/// more).
///
/// # Errors
///
/// As [`resolve`]; the request is then left unchanged.
pub fn normalize(parts: &mut Parts) -> Result<Option<Authority>, AuthorityError> {
    if normalize_host(parts)? {
        resolve(parts)
    } else {
        Ok(None)
    }
}

/// The longest `Host` value [`is_valid_host`] remembers.
const REMEMBERED_HOST: usize = 64;

std::thread_local! {
    // The last `Host` value found valid on this thread, copied: clients
    // send the same one request after request, and comparing its bytes
    // costs a fraction of checking them again (about 150 instructions per
    // request). A copy, not the header's own bytes, which would keep a
    // connection's read buffer alive.
    static LAST_VALID_HOST: std::cell::Cell<([u8; REMEMBERED_HOST], usize)> =
        const { std::cell::Cell::new(([0; REMEMBERED_HOST], 0)) };
}

/// [`is_valid`] for a `Host` value, remembering the last valid one.
fn is_valid_host(raw: &[u8]) -> bool {
    let known = LAST_VALID_HOST.with(|last| {
        let (bytes, len) = last.get();
        len != 0 && bytes[..len] == *raw
    });
    if known {
        return true;
    }
    let valid = is_valid(raw);
    if valid && raw.len() <= REMEMBERED_HOST {
        let mut bytes = [0; REMEMBERED_HOST];
        bytes[..raw.len()].copy_from_slice(raw);
        LAST_VALID_HOST.with(|last| last.set((bytes, raw.len())));
    }
    valid
}

/// RFC 3986 §3.2.2 / §3.2.3 without userinfo; empty hosts refused (RFC 9110
/// §4.2.1). The cache key writer uses it too: one rule for what an
/// authority is, checked without allocating.
pub(crate) fn is_valid(raw: &[u8]) -> bool {
    let (host, port) = if raw.first() == Some(&b'[') {
        let Some(end) = raw.iter().position(|&c| c == b']') else {
            return false;
        };
        let literal = &raw[1..end];
        let ok = std::str::from_utf8(literal)
            .ok()
            .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
            .is_some();
        if !ok {
            // IPvFuture and zone identifiers are refused: no HTTP client
            // sends them.
            return false;
        }
        match &raw[end + 1..] {
            [] => (&raw[..=end], None),
            [b':', port @ ..] => (&raw[..=end], Some(port)),
            _ => return false,
        }
    } else {
        let (host, port) = match raw.iter().rposition(|&c| c == b':') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        };
        if host.is_empty() || !is_reg_name(host) {
            return false;
        }
        (host, port)
    };
    debug_assert!(!host.is_empty());
    match port {
        None => true,
        Some(p) => {
            !p.is_empty()
                && p.len() <= 5
                && p.iter().all(u8::is_ascii_digit)
                && p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
        }
    }
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )` (an IPv4
/// address is a reg-name too).
fn is_reg_name(s: &[u8]) -> bool {
    // unreserved / sub-delims, one table lookup per byte; `%` is checked
    // apart (it must start a pct-encoded triplet).
    const ALLOWED: [bool; 256] = {
        let mut t = [false; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                );
            c += 1;
        }
        t
    };
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if !ALLOWED[usize::from(b)] {
            let hex = |j: usize| s.get(j).is_some_and(u8::is_ascii_hexdigit);
            if b != b'%' || !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 2;
        }
        i += 1;
    }
    true
}

/// Request headers from which frameworks derive the client address, scheme,
/// host, port, path or TLS identity, lowercase. From an untrusted peer they
/// are removed ([`remove_forwarding_headers`]); a proxy then writes its own.
pub const FORWARDING_HEADERS: &[&str] = &[
    // RFC 7239 and the de facto X-Forwarded-* family (Traefik, nginx, Envoy,
    // Spring, Rails, Django, ASP.NET, Ktor).
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-protocol",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-tls-client-cert",
    "x-forwarded-tls-client-cert-info",
    "x-forwarded-client-cert",
    "x-original-forwarded-for",
    "front-end-https",
    "x-url-scheme",
    // Client address headers of load balancers and CDNs.
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    // URL rewriting headers (IIS, Symfony, Laminas): they replace the path
    // a framework routes on.
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-host",
    "x-host",
];

/// Method-override headers (Express `method-override`, Rails, Symfony,
/// Laravel, Google APIs). Removed on every request whose method is not
/// `POST`.
pub const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Removes every [`FORWARDING_HEADERS`] field, and the
/// [`METHOD_OVERRIDE_HEADERS`] unless `method` is `POST`. For requests from
/// peers that are not trusted proxies.
///
/// Costs one pass over the request's field names when none is present (the
/// common case, and the cache's hit path): the removals run only when one
/// is.
pub fn remove_forwarding_headers(method: &Method, headers: &mut HeaderMap) {
    let post = method == Method::POST;
    let found = headers.keys().any(|k| {
        let k = k.as_str();
        // Every name of both lists starts with one of these; browsers'
        // usual fields (accept-*, cookie, sec-*, user-agent) do not.
        matches!(k.as_bytes().first(), Some(b'x' | b'f' | b'c' | b't'))
            && (FORWARDING_HEADERS.contains(&k) || (!post && METHOD_OVERRIDE_HEADERS.contains(&k)))
    });
    if found {
        for name in FORWARDING_HEADERS {
            headers.remove(*name);
        }
        remove_method_override(method, headers);
    }
}

/// Removes the [`METHOD_OVERRIDE_HEADERS`] unless `method` is `POST`.
pub fn remove_method_override(method: &Method, headers: &mut HeaderMap) {
    if method != Method::POST {
        for name in METHOD_OVERRIDE_HEADERS {
            headers.remove(*name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(uri: &str, version: Version, hosts: &[&[u8]]) -> Parts {
        let mut req = Request::builder()
            .uri(uri)
            .version(version)
            .body(())
            .unwrap();
        for h in hosts {
            req.headers_mut()
                .append(HOST, HeaderValue::from_bytes(h).unwrap());
        }
        req.into_parts().0
    }

    fn host_only(h: &[u8]) -> Result<Option<Authority>, AuthorityError> {
        resolve(&parts("/a", Version::HTTP_11, &[h]))
    }

    #[test]
    fn a_remembered_valid_host_never_lets_another_through() {
        for (raw, valid) in [
            (&b"a.test:8080"[..], true),
            (b"a.test:8080", true),
            (b"a.test:8080/admin", false),
            (b"a.test:808", true),
            (b"a.test:8080", true),
            (b"a.test:80800", false),
            (b"", false),
            (b"a.test:8080", true),
        ] {
            assert_eq!(
                is_valid_host(raw),
                valid,
                "{}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(is_valid(raw), valid);
        }
        // Longer than what is remembered: checked every time.
        let long = format!("{}.test", "a".repeat(REMEMBERED_HOST));
        assert!(is_valid_host(long.as_bytes()));
        assert!(is_valid_host(long.as_bytes()));
        assert!(!is_valid_host(format!("{long}/x").as_bytes()));
    }

    #[test]
    fn absolute_form_authority_wins_and_host_is_rewritten() {
        let mut p = parts("http://victim.test/home", Version::HTTP_11, &[b"evil.test"]);
        let a = normalize(&mut p).unwrap().unwrap();
        assert_eq!(a.as_str(), "victim.test");
        assert_eq!(p.headers[HOST], "victim.test");
        assert_eq!(p.headers.get_all(HOST).iter().count(), 1);
    }

    #[test]
    fn bad_hosts_are_refused() {
        for bad in [
            &b"victim.test/admin"[..],
            b"victim.test?x",
            b"victim.test#x",
            b"user@victim.test",
            b"user:pw@victim.test",
            b"victim.test:80/",
            b"vic tim.test",
            b" victim.test",
            b"",
            b":80",
            b"victim.test:",
            b"victim.test:http",
            b"victim.test:65536",
            b"victim.test:123456",
            b"victim.test:80:80",
            b"caf\xc3\xa9.test",
            b"[::1",
            b"[::1]x",
            b"[v1.x]",
            b"[not-ip]:80",
            b"a.test\\b",
            b"a%zz.test",
            b"a\"b",
        ] {
            assert_eq!(
                host_only(bad),
                Err(AuthorityError::Invalid),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn good_hosts_are_lowercased() {
        for (good, want) in [
            ("Victim.TEST", "victim.test"),
            ("victim.test:8080", "victim.test:8080"),
            ("127.0.0.1:1", "127.0.0.1:1"),
            ("[::1]:8080", "[::1]:8080"),
            ("[::1]", "[::1]"),
            ("xn--caf-dma.test", "xn--caf-dma.test"),
            ("a_b.test:65535", "a_b.test:65535"),
        ] {
            let got = host_only(good.as_bytes()).unwrap().unwrap();
            assert_eq!(got.as_str(), want);
        }
    }

    #[test]
    fn several_or_missing_hosts_are_refused_but_http10_may_omit_it() {
        assert_eq!(
            resolve(&parts("/a", Version::HTTP_11, &[b"a.test", b"a.test"])),
            Err(AuthorityError::SeveralHosts)
        );
        assert_eq!(
            resolve(&parts("/a", Version::HTTP_11, &[])),
            Err(AuthorityError::MissingHost)
        );
        assert_eq!(resolve(&parts("/a", Version::HTTP_10, &[])), Ok(None));
        let p = parts("/a", Version::HTTP_10, &[b"a.test"]);
        assert_eq!(resolve(&p).unwrap().unwrap().as_str(), "a.test");
    }

    #[test]
    fn absolute_form_still_validates_host_and_its_own_authority() {
        assert_eq!(
            resolve(&parts("http://a.test/", Version::HTTP_11, &[b"a.test/x"])),
            Err(AuthorityError::Invalid)
        );
        assert_eq!(
            resolve(&parts("http://u@a.test/", Version::HTTP_11, &[])),
            Err(AuthorityError::Invalid)
        );
        assert_eq!(
            resolve(&parts(
                "http://a.test/",
                Version::HTTP_11,
                &[b"a.test", b"b.test"]
            )),
            Err(AuthorityError::SeveralHosts)
        );
    }

    #[test]
    fn http2_authority_is_used_and_a_contradicting_host_refused() {
        let mut p = parts("http://A.test/x", Version::HTTP_2, &[]);
        assert_eq!(normalize(&mut p).unwrap().unwrap().as_str(), "a.test");
        assert_eq!(p.headers[HOST], "a.test");
        let p = parts("http://a.test/x", Version::HTTP_2, &[b"A.TEST"]);
        assert!(resolve(&p).is_ok());
        let p = parts("http://a.test/x", Version::HTTP_2, &[b"b.test"]);
        assert_eq!(resolve(&p), Err(AuthorityError::Conflict));
    }

    #[test]
    fn normalize_is_idempotent() {
        let mut p = parts("/a", Version::HTTP_11, &[b"A.Test:81"]);
        let a = normalize(&mut p).unwrap();
        let before = p.headers.clone();
        assert_eq!(normalize(&mut p).unwrap(), a);
        assert_eq!(p.headers, before);
    }

    #[test]
    fn every_listed_name_passes_the_first_byte_filter() {
        for name in FORWARDING_HEADERS.iter().chain(METHOD_OVERRIDE_HEADERS) {
            assert!(
                matches!(name.as_bytes()[0], b'x' | b'f' | b'c' | b't'),
                "{name}"
            );
            let mut h = HeaderMap::new();
            h.insert(*name, HeaderValue::from_static("1"));
            remove_forwarding_headers(&Method::GET, &mut h);
            assert!(h.is_empty(), "{name}");
        }
    }

    #[test]
    fn forwarding_headers_are_removed_and_overrides_only_off_post() {
        let mut h = HeaderMap::new();
        for name in FORWARDING_HEADERS.iter().chain(METHOD_OVERRIDE_HEADERS) {
            h.insert(*name, HeaderValue::from_static("x"));
        }
        h.insert("accept", HeaderValue::from_static("*/*"));
        let mut post = h.clone();
        remove_forwarding_headers(&Method::GET, &mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        remove_forwarding_headers(&Method::POST, &mut post);
        assert_eq!(post.len(), 1 + METHOD_OVERRIDE_HEADERS.len());
    }

    proptest::proptest! {
        #[test]
        fn resolve_never_panics_and_accepts_only_what_http_parses(
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..40)
        ) {
            if let Ok(v) = HeaderValue::from_bytes(&raw) {
                let mut p = parts("/", Version::HTTP_11, &[]);
                p.headers.insert(HOST, v);
                if let Ok(Some(a)) = normalize(&mut p) {
                    proptest::prop_assert_eq!(p.headers[HOST].as_bytes(), a.as_str().as_bytes());
                    proptest::prop_assert!(a.as_str().parse::<Authority>().is_ok());
                }
            }
        }
    }
}
