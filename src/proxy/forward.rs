//! Readying a request for an upstream: one authority, hop-by-hop fields
//! removed, forwarding headers, `Via`. Public as [`Forwarding`] for users
//! who build their own leaf service.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

use crate::authority::AuthorityError;
use crate::balance::{peer_addr, TrustedProxies};

/// What an intermediary does to a request before forwarding it and to the
/// response before relaying it, as [`ReverseProxy`](super::ReverseProxy)
/// does: for a leaf service of your own (another client, another
/// balancer) that must forward like the proxy.
///
/// ```
/// use tower_ssr::balance::ClientAddr;
/// use tower_ssr::proxy::Forwarding;
///
/// let fwd = Forwarding::new();
/// let mut req = http::Request::get("/page")
///     .header("host", "shop.example")
///     .header("x-forwarded-for", "6.6.6.6") // spoofed: removed
///     .header("connection", "close")
///     .body(())
///     .unwrap();
/// req.extensions_mut().insert(ClientAddr("203.0.113.9:50000".parse().unwrap()));
/// let (mut parts, _body) = req.into_parts();
/// fwd.prepare_request(&mut parts).unwrap();
/// assert_eq!(parts.headers["x-forwarded-for"], "203.0.113.9");
/// assert_eq!(parts.headers["via"], "1.1 tower-ssr");
/// assert!(!parts.headers.contains_key("connection"));
/// ```
#[derive(Debug, Clone)]
pub struct Forwarding {
    pub(super) preserve_host: bool,
    pub(super) trusted: TrustedProxies,
    pub(super) forwarding: ForwardingHeaders,
    pub(super) proto: HeaderValue,
}

impl Default for Forwarding {
    fn default() -> Self {
        Self::new()
    }
}

impl Forwarding {
    /// The proxy's defaults: `Host` preserved, no trusted proxies,
    /// [`ForwardingHeaders::XForwarded`], clients on plain HTTP.
    #[must_use]
    pub fn new() -> Self {
        Forwarding {
            preserve_host: true,
            trusted: TrustedProxies::none(),
            forwarding: ForwardingHeaders::XForwarded,
            proto: HeaderValue::from_static("http"),
        }
    }

    /// As [`ProxyBuilder::preserve_host`](super::ProxyBuilder::preserve_host).
    #[must_use]
    pub fn preserve_host(mut self, yes: bool) -> Self {
        self.preserve_host = yes;
        self
    }

    /// As [`ProxyBuilder::trusted_proxies`](super::ProxyBuilder::trusted_proxies).
    #[must_use]
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }

    /// As [`ProxyBuilder::forwarding_headers`](super::ProxyBuilder::forwarding_headers).
    #[must_use]
    pub fn headers(mut self, h: ForwardingHeaders) -> Self {
        self.forwarding = h;
        self
    }

    /// As [`ProxyBuilder::https`](super::ProxyBuilder::https).
    #[must_use]
    pub fn https(mut self, yes: bool) -> Self {
        self.proto = HeaderValue::from_static(if yes { "https" } else { "http" });
        self
    }

    /// Readies a request's head for an upstream: one validated authority
    /// in `Host` (RFC 9112 §3.2, §3.2.2; dropped unless preserved),
    /// hop-by-hop fields removed (RFC 9110 §7.6.1) but `TE: trailers`
    /// kept, forwarding headers of untrusted peers removed and ours written
    /// (RFC 7239 or `X-Forwarded-*`), `Via` appended (RFC 9110 §7.6.3).
    /// The client's address is read from [`ClientAddr`](crate::balance::ClientAddr)
    /// (or axum's `ConnectInfo` with feature `axum`).
    ///
    /// # Errors
    ///
    /// The request's authority is missing, repeated or invalid; answer
    /// with [`AuthorityError::status`] (`400`) and forward nothing.
    pub fn prepare_request(&self, parts: &mut Parts) -> Result<(), AuthorityError> {
        prepare_request(parts, self)
    }

    /// Readies a response's headers for the client: hop-by-hop fields
    /// removed (RFC 9110 §7.6.1); `Trailer` is kept.
    pub fn prepare_response(&self, headers: &mut HeaderMap) {
        remove_hop_by_hop(headers);
    }
}

/// Which forwarding headers the proxy adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardingHeaders {
    /// `X-Forwarded-For` (the peer; appended to a trusted peer's list),
    /// `X-Forwarded-Proto` and `X-Forwarded-Host` (the validated
    /// authority). An untrusted peer's forwarding headers never reach an
    /// upstream, in any mode (see the [module docs](crate::proxy)).
    XForwarded,
    /// An element appended to `Forwarded` (RFC 7239):
    /// `for=…;host=…;proto=…`.
    Forwarded,
    /// Neither.
    None,
}

/// Hop-by-hop fields (RFC 9110 §7.6.1): those `Connection` lists, then the
/// fixed ones. `Proxy-Authorization` / `Proxy-Authenticate` are meant for
/// this proxy, never for the upstream. `Trailer` is not hop-by-hop (it
/// announces fields of the message itself) and is kept; `TE` is, and
/// [`prepare_request`] forwards its `trailers` member on its own.
pub(super) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names first: most messages carry none of these,
    // and a scan of a few standard names is cheaper than eight hashed
    // removals (this runs on every request and every response).
    if !has_hop_by_hop(headers) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        // `Host` is required in every HTTP/1.1 request (RFC 9112 §3.2) and
        // names the target, so it is never the sender's to make hop-by-hop:
        // `Connection: host` must not strip it (the upstream would see its
        // own authority, or an attacker's `X-Forwarded-Host`).
        .filter(|name| *name != header::HOST)
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
// Constants, so that the names are checked at compile time: a
// `from_static` in a function body validates its string on every call
// (about 140 instructions each, three per request).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a field is hop-by-hop by itself (those a `Connection` field
/// lists are found through `Connection`, which is one of these).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::PROXY_AUTHORIZATION
        || *name == header::PROXY_AUTHENTICATE
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

fn append_value(headers: &mut HeaderMap, name: HeaderName, add: &str) {
    if !headers.contains_key(&name) {
        // The common case: ours is the only value.
        if let Ok(v) = HeaderValue::from_str(add) {
            headers.insert(name, v);
        }
        return;
    }
    // One line, appended after what earlier proxies wrote (several lines
    // are folded so that the list order stays unambiguous).
    let joined = {
        let existing: Vec<&str> = headers
            .get_all(&name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if existing.is_empty() {
            add.to_owned()
        } else {
            format!("{}, {add}", existing.join(", "))
        }
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(name, v);
    }
}

/// Whether a `TE` field lists `trailers` (RFC 9110 §10.1.4).
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        })
}

/// Readies a request for an upstream: one validated authority in `Host`,
/// hop-by-hop fields removed (but `TE: trailers` kept, as gRPC proxies do,
/// so an upstream may send trailers the client asked for), forwarding
/// headers from untrusted peers removed and ours written, `Via` added.
pub(super) fn prepare_request(
    parts: &mut http::request::Parts,
    settings: &Forwarding,
) -> Result<(), AuthorityError> {
    let hop = has_hop_by_hop(&parts.headers);
    prepare(parts, settings, hop)
}

/// Whether any header field is hop-by-hop by itself (RFC 9110 §7.6.1).
/// Most requests carry none (HTTP/2 ones never do): then one pass over
/// the names spares the lookups of `TE`, `Connection` and `Upgrade`.
pub(super) fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(is_hop_by_hop)
}

/// [`prepare_request`], told whether the request has hop-by-hop fields.
pub(super) fn prepare(
    parts: &mut http::request::Parts,
    settings: &Forwarding,
    hop: bool,
) -> Result<(), AuthorityError> {
    // RFC 9112 §3.2, §3.2.2: the absolute-form authority wins over Host,
    // and a missing, repeated or invalid Host is refused. `Host` now holds
    // the one authority (or, for HTTP/1.0 without one, is absent).
    let host = crate::authority::normalized_host(parts)?;
    if hop {
        let trailers = accepts_trailers(&parts.headers);
        remove_hop_by_hop(&mut parts.headers);
        if trailers {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if !settings.preserve_host {
        // hyper-util then sets Host from the upstream's URI.
        parts.headers.remove(header::HOST);
    }
    let peer: Option<IpAddr> = peer_addr(parts).map(|a| a.ip().to_canonical());
    if peer.is_none() {
        super::serve::warn_no_client_addr();
    }
    let trusted = peer.is_some_and(|ip| settings.trusted.contains(ip));
    if trusted {
        crate::authority::remove_method_override(&parts.method, &mut parts.headers);
    } else {
        // Never the client's: the host, scheme, port, prefix, path and
        // client address an upstream may build URLs and decisions from
        // (cache poisoning, reset links, IP allow lists).
        crate::authority::remove_forwarding_headers(&parts.method, &mut parts.headers);
    }
    match settings.forwarding {
        ForwardingHeaders::XForwarded => {
            let xff = X_FORWARDED_FOR;
            if let Some(ip) = peer {
                // A trusted peer's list is kept and our hop appended:
                // upstreams read it from the right with their own trusted
                // set (DESIGN.md "Balancing"). An untrusted peer's list was
                // removed above, so ours is the whole of it.
                // One lookup: `entry` hashes and probes once, where
                // `contains_key` then `insert` did it twice; and from an
                // untrusted peer there is none left to keep.
                if !trusted {
                    parts.headers.insert(xff, ip_value(ip));
                } else {
                    match parts.headers.entry(xff) {
                        header::Entry::Vacant(e) => {
                            e.insert(ip_value(ip));
                        }
                        header::Entry::Occupied(e) => {
                            let xff = e.key().clone();
                            append_value(&mut parts.headers, xff, &ip.to_string());
                        }
                    }
                }
            }
            let xfp = X_FORWARDED_PROTO;
            if !(trusted && parts.headers.contains_key(&xfp)) {
                parts.headers.insert(xfp, settings.proto.clone());
            }
            let xfh = X_FORWARDED_HOST;
            if let Some(h) = &host {
                if !(trusted && parts.headers.contains_key(&xfh)) {
                    parts.headers.insert(xfh, h.clone());
                }
            }
        }
        ForwardingHeaders::Forwarded => {
            let node = match peer {
                Some(IpAddr::V4(v4)) => v4.to_string(),
                // IPv6 must be quoted and bracketed (RFC 7239 §6).
                Some(IpAddr::V6(v6)) => format!("\"[{v6}]\""),
                None => "unknown".to_owned(),
            };
            let mut element = format!("for={node}");
            if let Some(h) = host.as_ref().and_then(|h| h.to_str().ok()) {
                element.push_str(";host=");
                element.push_str(&quote_if_needed(h));
            }
            element.push_str(";proto=");
            element.push_str(settings.proto.to_str().unwrap_or("http"));
            append_value(&mut parts.headers, header::FORWARDED, &element);
        }
        ForwardingHeaders::None => {}
    }
    // RFC 9110 §7.6.3: a gateway MUST send Via on forwarded requests.
    let via = match parts.version {
        http::Version::HTTP_10 => "1.0 tower-ssr",
        http::Version::HTTP_2 => "2 tower-ssr",
        _ => "1.1 tower-ssr",
    };
    match parts.headers.entry(header::VIA) {
        header::Entry::Vacant(e) => {
            e.insert(HeaderValue::from_static(via));
        }
        header::Entry::Occupied(_) => append_value(&mut parts.headers, header::VIA, via),
    }
    Ok(())
}

std::thread_local! {
    // The last address written and its header value: a keep-alive
    // connection sends many requests from one address, and a clone of a
    // shared `HeaderValue` is a reference count, where formatting one
    // costs two allocations (and a third when the balancer copies it).
    static LAST_IP: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `ip` as a header value (`X-Forwarded-For` of an untrusted peer).
fn ip_value(ip: IpAddr) -> HeaderValue {
    let cached = LAST_IP.with(|last| match &*last.borrow() {
        Some((a, v)) if *a == ip => Some(v.clone()),
        _ => None,
    });
    if let Some(v) = cached {
        return v;
    }
    let mut buf = [0u8; 64];
    let len = {
        use std::io::Write;
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        // An address is at most 45 bytes: the write cannot fail.
        let _ = write!(cursor, "{ip}");
        cursor.position() as usize
    };
    // An address formats to digits, dots, colons and hex: always valid.
    let v = HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&buf[..len]))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    // `clone` makes the bytes shared once, so later clones only count.
    let keep = v.clone();
    LAST_IP.with(|last| *last.borrow_mut() = Some((ip, keep)));
    v
}

fn quote_if_needed(v: &str) -> String {
    let token = !v.is_empty()
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
    if token {
        v.to_owned()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn settings(forwarding: ForwardingHeaders) -> Forwarding {
        Forwarding::new().headers(forwarding)
    }

    fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = Request::builder().uri("/p");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = b.body(()).unwrap();
        req.extensions_mut().insert(crate::balance::ClientAddr(
            "[::ffff:198.51.100.7]:5000".parse().unwrap(),
        ));
        req.into_parts().0
    }

    #[test]
    fn hop_by_hop_headers_are_removed_with_those_connection_lists() {
        let mut p = parts(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("authorization", "Bearer kept"),
            ("host", "front.example"),
        ]);
        prepare_request(&mut p, &settings(ForwardingHeaders::None)).unwrap();
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
        ] {
            assert!(!p.headers.contains_key(gone), "{gone}");
        }
        // RFC 9110 §11.6.2: Authorization is not ours to touch.
        assert_eq!(p.headers["authorization"], "Bearer kept");
        assert_eq!(p.headers["host"], "front.example");
        assert_eq!(p.headers["via"], "1.1 tower-ssr");
    }

    #[test]
    fn te_trailers_is_forwarded_alone() {
        let mut p = parts(&[("te", "gzip, Trailers;q=1"), ("host", "h.test")]);
        prepare_request(&mut p, &settings(ForwardingHeaders::None)).unwrap();
        assert_eq!(p.headers["te"], "trailers");
    }

    #[test]
    fn an_untrusted_peers_forwarding_headers_are_replaced_by_ours() {
        let mut p = parts(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
            ("x-real-ip", "6.6.6.6"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("host", "front.example"),
        ]);
        prepare_request(&mut p, &settings(ForwardingHeaders::XForwarded)).unwrap();
        assert_eq!(p.headers["x-forwarded-for"], "198.51.100.7");
        assert_eq!(p.headers["x-forwarded-proto"], "http");
        assert_eq!(p.headers["x-forwarded-host"], "front.example");
        for gone in ["x-real-ip", "x-original-url", "x-http-method-override"] {
            assert!(!p.headers.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn a_trusted_peers_forwarding_headers_are_kept_and_appended_to() {
        let mut s = settings(ForwardingHeaders::XForwarded);
        s.trusted = TrustedProxies::try_new(["198.51.100.0/24"]).unwrap();
        let mut p = parts(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "203.0.113.9"),
            ("x-http-method-override", "DELETE"),
            ("host", "front.example"),
        ]);
        prepare_request(&mut p, &s).unwrap();
        assert_eq!(p.headers["x-forwarded-for"], "203.0.113.9, 198.51.100.7");
        assert_eq!(p.headers["x-forwarded-proto"], "https");
        assert_eq!(p.headers["x-real-ip"], "203.0.113.9");
        assert!(!p.headers.contains_key("x-http-method-override"));
    }

    #[test]
    fn forwarded_element_is_ours_alone_quoted_where_needed() {
        let mut p = parts(&[("forwarded", "for=6.6.6.6"), ("host", "front.example:8080")]);
        prepare_request(&mut p, &settings(ForwardingHeaders::Forwarded)).unwrap();
        assert_eq!(
            p.headers["forwarded"],
            "for=198.51.100.7;host=\"front.example:8080\";proto=http"
        );
    }

    #[test]
    fn the_absolute_form_authority_replaces_host_and_bad_hosts_are_refused() {
        let mut req = Request::get("http://victim.test/home")
            .header("host", "evil.test")
            .body(())
            .unwrap();
        req.extensions_mut().insert(crate::balance::ClientAddr(
            "198.51.100.7:5000".parse().unwrap(),
        ));
        let mut p = req.into_parts().0;
        prepare_request(&mut p, &settings(ForwardingHeaders::XForwarded)).unwrap();
        assert_eq!(p.headers["host"], "victim.test");
        assert_eq!(p.headers["x-forwarded-host"], "victim.test");
        let mut p = parts(&[("host", "victim.test/admin")]);
        assert!(prepare_request(&mut p, &settings(ForwardingHeaders::None)).is_err());
        let mut p = parts(&[]);
        assert!(prepare_request(&mut p, &settings(ForwardingHeaders::None)).is_err());
    }

    #[test]
    fn host_is_dropped_when_not_preserved() {
        let mut p = parts(&[("host", "front.example")]);
        let mut s = settings(ForwardingHeaders::None);
        s.preserve_host = false;
        prepare_request(&mut p, &s).unwrap();
        assert!(!p.headers.contains_key("host"));
    }

    #[test]
    fn response_hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("trailer", HeaderValue::from_static("x-t"));
        h.insert(
            "cache-control",
            HeaderValue::from_static("public, s-maxage=60"),
        );
        remove_hop_by_hop(&mut h);
        // Trailer is not hop-by-hop (RFC 9110 §6.6.2, §7.6.1).
        assert_eq!(h.len(), 2);
        assert_eq!(h["trailer"], "x-t");
    }
}
