//! The request target and `Host` as each hop wants them (RFC 9112 §3.2,
//! RFC 9113 §8.3.1): the origin-form target an upstream at a base URI
//! gets for the client's, and the HTTP/1.1 and HTTP/2 forms of a request
//! on its way out of the pool.

use http::uri::{Parts, PathAndQuery};
use http::{header, HeaderValue, Method, Request, Uri};

use super::client::SendError;
use super::ProxyBody;

/// The request target an upstream at `base` gets for the client's `uri`
/// in origin form (RFC 9112 §3.2.1; the rule is
/// [`path_under`](crate::balance::path_under)), `None` when that is `uri`
/// as it is, or an error when the two together are longer than a URI may
/// be (the client's target alone fits: it must not go without the base
/// path).
pub(super) fn origin_target(base: &Uri, uri: &Uri) -> Result<Option<Uri>, SendError> {
    let bare = base.path().trim_end_matches('/').is_empty();
    let asterisk = uri.path() == "*" && uri.query().is_none();
    if (bare || asterisk) && uri.authority().is_none() {
        return Ok(None);
    }
    let mut parts = Parts::default();
    parts.path_and_query =
        Some(crate::balance::path_under(base, uri).ok_or_else(SendError::target_too_long)?);
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| SendError::target_too_long())
}

/// An HTTP/1.1 request's target and `Host` as hyper-util's client makes
/// them, for an upstream at `dst` (a target without authority is in
/// origin form already).
pub(super) fn to_origin_form(req: &mut Request<ProxyBody>, dst: &Uri) {
    set_host(req, dst);
    if req.uri().authority().is_none() {
        return;
    }
    if req.method() == Method::CONNECT {
        authority_form(req.uri_mut());
    } else {
        origin_form(req.uri_mut());
    }
}

/// An HTTP/2 request's `:scheme` and `:authority` for an upstream at
/// `dst`: the scheme is the upstream's, the authority the client's `Host`
/// (RFC 9113 §8.3.1: "Clients MUST NOT generate a request with a Host
/// header field that differs from the :authority pseudo-header field",
/// and an intermediary forwarding over HTTP/2 takes `:authority` from the
/// original request's authority). The proxy keeps the client's `Host` for
/// the upstream (`preserve_host`): sent beside an `:authority` naming the
/// upstream, a server that treats that as malformed (Python's h2 does;
/// RFC 9113 says it should) refused every request. So `Host` becomes the
/// authority and is removed; without a `Host` (or with one that is no
/// authority) the URI's authority stays, or the upstream's is used. The
/// connection was already picked by the upstream.
pub(super) fn to_h2_form(req: &mut Request<ProxyBody>, dst: &Uri) {
    let host = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.authority = host
        .or(parts.authority)
        .or_else(|| dst.authority().cloned());
    parts.scheme = dst.scheme().cloned();
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
}

/// `Host` from the URI's authority (or the upstream's, for a target in
/// origin form) when the request has none (RFC 9112 §3.2: every HTTP/1.1
/// request carries one), as hyper-util does.
fn set_host(req: &mut Request<ProxyBody>, dst: &Uri) {
    if req.headers().contains_key(header::HOST) {
        return;
    }
    let uri = if req.uri().authority().is_some() {
        req.uri()
    } else {
        dst
    };
    let Some(authority) = uri.authority() else {
        return;
    };
    let default_port = match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    let value = match authority.port_u16() {
        Some(port) if Some(port) != default_port => HeaderValue::from_str(authority.as_str()),
        _ => HeaderValue::from_str(authority.host()),
    };
    if let Ok(value) = value {
        req.headers_mut().insert(header::HOST, value);
    }
}

/// The request target as an origin server expects it (RFC 9112 §3.2.1):
/// path and query only.
fn origin_form(uri: &mut Uri) {
    *uri = match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => {
            let mut parts = Parts::default();
            parts.path_and_query = Some(path.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        // `Uri::default()` is `/`.
        _ => Uri::default(),
    };
}

/// A `CONNECT` request's target is the authority alone (RFC 9112 §3.2.3).
fn authority_form(uri: &mut Uri) {
    if let Some(authority) = uri.authority() {
        let mut parts = Parts::default();
        parts.authority = Some(authority.clone());
        *uri = Uri::from_parts(parts).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> Request<ProxyBody> {
        Request::get(uri).body(ProxyBody::empty()).unwrap()
    }

    fn dst(uri: &str) -> Uri {
        uri.parse().unwrap()
    }

    #[test]
    fn origin_form_keeps_path_and_query_only() {
        let up = dst("http://a.test:8080/");
        let mut req = request("http://a.test:8080/p/q?x=1");
        to_origin_form(&mut req, &up);
        assert_eq!(req.uri(), "/p/q?x=1");
        let mut root = request("http://a.test");
        to_origin_form(&mut root, &up);
        assert_eq!(root.uri(), "/");
        let mut connect = Request::connect("http://a.test:443")
            .body(ProxyBody::empty())
            .unwrap();
        to_origin_form(&mut connect, &up);
        assert_eq!(connect.uri(), "a.test:443");
    }

    #[test]
    fn a_target_in_origin_form_stays_and_gets_the_upstreams_host() {
        let mut req = request("/p?x=1");
        to_origin_form(&mut req, &dst("http://up.test:3000/"));
        assert_eq!(req.uri(), "/p?x=1");
        assert_eq!(req.headers()[header::HOST], "up.test:3000");
        let mut asterisk = Request::options("*").body(ProxyBody::empty()).unwrap();
        to_origin_form(&mut asterisk, &dst("http://up.test/"));
        assert_eq!(asterisk.uri(), "*");
        assert_eq!(asterisk.headers()[header::HOST], "up.test");
    }

    #[test]
    fn host_gets_the_port_only_when_not_the_schemes_default() {
        let host = |uri: &str| {
            let mut req = request(uri);
            set_host(&mut req, &dst("http://other.test:9/"));
            req.headers()[header::HOST].clone()
        };
        assert_eq!(host("http://a.test:80/"), "a.test");
        assert_eq!(host("http://a.test:8080/"), "a.test:8080");
        assert_eq!(host("https://a.test:443/"), "a.test");
        assert_eq!(host("https://a.test/"), "a.test");
        let mut kept = request("http://a.test:8080/");
        kept.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("front.test"));
        set_host(&mut kept, &dst("http://a.test:8080/"));
        assert_eq!(kept.headers()[header::HOST], "front.test");
    }

    #[test]
    fn http2_takes_the_upstreams_scheme_and_the_clients_host() {
        let mut req = request("/p?x=1");
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("front.test"));
        to_h2_form(&mut req, &dst("https://up.test:8443/"));
        assert_eq!(req.uri(), "https://front.test/p?x=1");
        assert!(!req.headers().contains_key(header::HOST));
        // No Host (HTTP/1.0 without one): the upstream's authority.
        let mut bare = request("/");
        to_h2_form(&mut bare, &dst("http://up.test:8080/"));
        assert_eq!(bare.uri(), "http://up.test:8080/");
        // Sent again after that: the authority it already carries stays.
        to_h2_form(&mut req, &dst("https://up.test:8443/"));
        assert_eq!(req.uri(), "https://front.test/p?x=1");
    }

    fn target(base: &str, uri: &str) -> Option<String> {
        origin_target(&base.parse().unwrap(), &uri.parse().unwrap())
            .unwrap()
            .map(|u| u.to_string())
    }

    #[test]
    fn a_target_too_long_under_the_base_path_is_refused_not_sent_without_it() {
        let base: Uri = "http://up.test/app".parse().unwrap();
        let long: Uri = format!("/admin?{}", "q".repeat(65_526)).parse().unwrap();
        assert!(origin_target(&base, &long).is_err());
        assert!(crate::balance::rewrite_uri_checked(&base, &long).is_none());
    }

    #[test]
    fn an_origin_form_target_under_a_bare_base_goes_as_it_is() {
        assert_eq!(target("http://up.test:3000", "/p?x=1"), None);
        assert_eq!(target("http://up.test:3000/", "/"), None);
        assert_eq!(target("http://up.test:3000/", "*"), None);
    }

    #[test]
    fn the_base_path_prefixes_the_target() {
        assert_eq!(
            target("http://up.test/app/", "/p?x=1").as_deref(),
            Some("/app/p?x=1")
        );
        assert_eq!(target("http://up.test/app", "/").as_deref(), Some("/app/"));
        // The asterisk-form names the server, never a path under the base.
        assert_eq!(target("http://up.test/app/", "*"), None);
    }

    #[test]
    fn an_absolute_form_target_loses_the_clients_authority() {
        assert_eq!(
            target("http://up.test", "http://front.test/p?q").as_deref(),
            Some("/p?q")
        );
        assert_eq!(
            target("http://up.test/app", "http://front.test/p").as_deref(),
            Some("/app/p")
        );
        assert_eq!(
            target("http://up.test", "http://front.test").as_deref(),
            Some("/")
        );
    }
}
