//! The primary cache key: method-normalised scheme, host, path and query
//! (RFC 9111 §2). `Vary` and the user's key closure select among the
//! variants stored under one key (see `store.rs`).

use http::header::HOST;
use http::{HeaderMap, Uri};

/// How the query string takes part in the cache key.
///
/// The query is part of the target URI, so RFC 9111 §2 keys on it; dropping
/// it serves `/search?q=a` to a request for `/search?q=b`, a bug other
/// caches shipped as a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueryKey {
    /// The query as received, byte for byte (the default).
    #[default]
    Keep,
    /// Parameters sorted, so `?b=2&a=1` and `?a=1&b=2` share an entry. Only
    /// right when the application ignores parameter order.
    Sort,
    /// The query ignored. Only right when no response depends on it.
    Drop,
}

/// Writes `scheme://host/path?query` into `out`. The host is lowercased
/// (RFC 3986 §6.2.2.1); the scheme is the request URI's, or `http` for an
/// origin-form target.
///
/// Returns `false` (and `out` is then no key) when the target names no one
/// URI: a `Host` that is not a bare authority, several `Host` lines, or
/// userinfo. Such a request must bypass the cache: the text of a `Host` such
/// as `victim.com/admin` would otherwise be pasted in front of the path and
/// key the page `/admin/…` of `victim.com` (RFC 9111 §2, §4).
#[must_use]
pub(crate) fn write_uri_key(
    out: &mut String,
    uri: &Uri,
    headers: &HeaderMap,
    query: QueryKey,
) -> bool {
    // RFC 9112 §3.2.2: an absolute-form target's authority replaces Host
    // (and `http` has parsed it already).
    let host = match uri.authority() {
        Some(a) => a.as_str(),
        None => {
            let mut lines = headers.get_all(HOST).iter();
            match (lines.next(), lines.next()) {
                // No authority at all (HTTP/1.0 without Host; HTTP/1.1 is
                // refused before this): no URI, no key. Keying it under an
                // empty host would share one page among every site.
                (None, _) => return false,
                // RFC 9112 §3.2: a request with several Host lines is bad.
                (Some(_), Some(_)) => return false,
                (Some(h), None) if h.is_empty() => return false,
                // RFC 9110 §7.2: Host is `uri-host [ ":" port ]`; anything
                // that does not parse as an authority (a '/', '?', '#',
                // spaces, non-ASCII) cannot be part of a key.
                (Some(h), None) => match h.to_str() {
                    Ok(text) if crate::authority::is_valid(h.as_bytes()) => text,
                    _ => return false,
                },
            }
        }
    };
    // RFC 9110 §4.2.4: userinfo is to be treated as an error (it disguises
    // the authority); never key on what follows it.
    if host.contains('@') {
        return false;
    }
    write_key(out, uri, host, query);
    true
}

/// Writes the key of `uri` with `host`, an authority already validated
/// (by [`crate::authority::normalize_host`], or as in [`write_uri_key`]).
pub(crate) fn write_key(out: &mut String, uri: &Uri, host: &str, query: QueryKey) {
    out.clear();
    out.push_str(uri.scheme_str().unwrap_or("http"));
    out.push_str("://");
    let start = out.len();
    out.push_str(host);
    out[start..].make_ascii_lowercase();
    let path = uri.path();
    out.push_str(if path.is_empty() { "/" } else { path });
    match (uri.query(), query) {
        (Some(q), QueryKey::Keep) => {
            out.push('?');
            out.push_str(q);
        }
        (Some(q), QueryKey::Sort) => {
            let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            params.sort_unstable();
            out.push('?');
            for (i, p) in params.iter().enumerate() {
                if i > 0 {
                    out.push('&');
                }
                out.push_str(p);
            }
        }
        (_, _) => {}
    }
}

/// The path-and-query part of a key written by [`write_uri_key`].
pub(crate) fn path_of(key: &str) -> &str {
    let rest = key.find("://").map_or(key, |i| &key[i + 3..]);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// The `scheme://host` part of a key, for comparing origins (RFC 9111 §4.4).
pub(crate) fn origin_of(key: &str) -> &str {
    let start = key.find("://").map_or(0, |i| i + 3);
    match key[start..].find('/') {
        Some(i) => &key[..start + i],
        None => key,
    }
}

/// A key split as `scheme://`, host, port (without `:`), rest.
fn split_authority(key: &str) -> Option<(&str, &str, Option<&str>, &str)> {
    let start = key.find("://")? + 3;
    let end = key[start..].find('/').map_or(key.len(), |i| start + i);
    let authority = &key[start..end];
    // The colon of an IPv6 literal is no port separator.
    let colon = authority
        .rfind(':')
        .filter(|&i| !authority.starts_with('[') || authority[..i].ends_with(']'));
    let (host, port) = match colon {
        Some(i) => (&authority[..i], Some(&authority[i + 1..])),
        None => (authority, None),
    };
    Some((&key[..start], host, port, &key[end..]))
}

/// The scheme's default port, as written in a key.
fn default_port(scheme: &str) -> Option<(&'static str, u16)> {
    match scheme {
        "http://" => Some(("80", 80)),
        "https://" => Some(("443", 443)),
        _ => None,
    }
}

/// Every key naming the same URI as `key` with or without its scheme's
/// default port (RFC 9110 §4.2.3), `key` first: `http://a.test/x` and
/// `http://a.test:80/x`. Keys keep the `Host` text as sent, because the
/// inner service renders for that text; an unsafe method invalidates each
/// spelling (RFC 9111 §4.4).
pub(crate) fn spellings(key: &str) -> Vec<String> {
    let mut all = vec![key.to_owned()];
    let Some((scheme, host, port, rest)) = split_authority(key) else {
        return all;
    };
    let Some((text, number)) = default_port(scheme) else {
        return all;
    };
    match port {
        None => all.push(format!("{scheme}{host}:{text}{rest}")),
        Some(p) if p.parse::<u16>().ok() == Some(number) => {
            all.push(format!("{scheme}{host}{rest}"));
            if p != text {
                all.push(format!("{scheme}{host}:{text}{rest}"));
            }
        }
        Some(_) => {}
    }
    all
}

/// Whether two keys have one origin (RFC 6454), a default port written or
/// not (RFC 9110 §4.2.3).
pub(crate) fn same_origin(a: &str, b: &str) -> bool {
    let canonical = |key| {
        let (scheme, host, port, _) = split_authority(key)?;
        let port = match (port, default_port(scheme)) {
            (Some(p), Some((_, n))) if p.parse::<u16>().ok() == Some(n) => None,
            (port, _) => port,
        };
        Some((scheme, host, port))
    };
    canonical(a).is_some() && canonical(a) == canonical(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_invalidated_in_every_spelling_of_its_default_port() {
        assert_eq!(
            spellings("http://a.test/x"),
            ["http://a.test/x", "http://a.test:80/x"]
        );
        assert_eq!(
            spellings("http://a.test:0080/x?q"),
            [
                "http://a.test:0080/x?q",
                "http://a.test/x?q",
                "http://a.test:80/x?q"
            ]
        );
        assert_eq!(
            spellings("https://[::1]:443/"),
            ["https://[::1]:443/", "https://[::1]/"]
        );
        assert_eq!(
            spellings("http://[::80]/"),
            ["http://[::80]/", "http://[::80]:80/"]
        );
        assert_eq!(spellings("http://a.test:8080/x"), ["http://a.test:8080/x"]);
        assert_eq!(spellings("https://a.test:80/x"), ["https://a.test:80/x"]);
        assert!(same_origin("http://a.test:0080/x", "http://a.test/y"));
        assert!(!same_origin("http://a.test:443/x", "https://a.test/y"));
        assert!(!same_origin("http://a.test:8080/x", "http://a.test/y"));
        assert!(!same_origin("http://[::1]/x", "http://[::80]/x"));
    }

    fn key(uri: &str, host: Option<&str>, q: QueryKey) -> String {
        let uri: Uri = uri.parse().unwrap();
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(HOST, host.parse().unwrap());
        }
        let mut out = String::new();
        assert!(write_uri_key(&mut out, &uri, &h, q), "{uri} {host:?}");
        out
    }

    fn valid(uri: &str, hosts: &[&[u8]]) -> bool {
        let uri: Uri = uri.parse().unwrap();
        let mut h = HeaderMap::new();
        for host in hosts {
            h.append(HOST, http::HeaderValue::from_bytes(host).unwrap());
        }
        write_uri_key(&mut String::new(), &uri, &h, QueryKey::Keep)
    }

    #[test]
    fn a_host_that_is_not_one_authority_gives_no_key() {
        for host in [
            &b"victim.com/admin"[..],
            b"victim.com?x",
            b"victim.com#x",
            b"user@victim.com",
            b"victim.com:80/",
            b"vic tim.com",
            b"caf\xc3\xa9.test",
        ] {
            assert!(!valid("/a", &[host]), "{:?}", String::from_utf8_lossy(host));
        }
        assert!(!valid("/a", &[b"a.test", b"b.test"]), "two Host lines");
        assert!(!valid("http://user@h.test/a", &[]), "userinfo in the URI");
        assert!(valid("/a", &[b"h.test:8080"]));
        assert!(valid("/a", &[b"[::1]:8080"]));
        assert!(!valid("/a", &[]), "no Host: no key");
        assert!(!valid("/a", &[b""]), "empty Host: no key");
        // The absolute-form authority wins over Host (RFC 9112 §3.2.2).
        assert_eq!(
            key("http://h.test/a", Some("other.test"), QueryKey::Keep),
            "http://h.test/a"
        );
    }

    #[test]
    fn key_keeps_scheme_host_path_and_query() {
        assert_eq!(
            key("/a?x=1", Some("Example.COM:8080"), QueryKey::Keep),
            "http://example.com:8080/a?x=1"
        );
        assert_eq!(
            key("https://h.test/a?x=2", None, QueryKey::Keep),
            "https://h.test/a?x=2"
        );
        assert_ne!(
            key("/a?x=1", Some("h"), QueryKey::Keep),
            key("/a?x=2", Some("h"), QueryKey::Keep)
        );
        assert_ne!(
            key("/a", Some("h1"), QueryKey::Keep),
            key("/a", Some("h2"), QueryKey::Keep)
        );
    }

    #[test]
    fn query_can_be_sorted_or_dropped() {
        assert_eq!(
            key("/a?b=2&a=1", Some("h"), QueryKey::Sort),
            key("/a?a=1&b=2", Some("h"), QueryKey::Sort)
        );
        assert_eq!(key("/a?b=2", Some("h"), QueryKey::Drop), "http://h/a");
    }

    #[test]
    fn path_and_origin_are_recovered_from_a_key() {
        assert_eq!(path_of("http://h:1/a/b?x"), "/a/b?x");
        assert_eq!(origin_of("http://h:1/a/b?x"), "http://h:1");
        assert_eq!(path_of("http://h"), "/");
    }
}
