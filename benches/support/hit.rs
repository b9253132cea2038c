//! The two services the hit benches compare: the cache layer with one page
//! stored, and the lookup a user would write in a handler sending the same
//! response (origin `Date` and `Content-Length` kept, `Age` and a
//! `Cache-Status` member formatted per hit).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, Service};
use tower_ssr::cache::{CacheLayer, CacheOutcome, ResponseCache};

use super::{block_on, drain};

/// A 30 KB page.
pub(crate) fn page() -> Bytes {
    Bytes::from(
        (0..30 * 1024)
            .map(|i| b"<p>lorem ipsum dolor sit amet</p>\n"[i % 34])
            .collect::<Vec<u8>>(),
    )
}

/// What a renderer answers: type, caching policy and a weak ETag.
pub(crate) fn typical_response(body: Bytes, cc: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
    h.insert(
        header::ETAG,
        HeaderValue::from_static("W/\"0123456789abcdef0123456789abcdef\""),
    );
    res
}

/// A browser-less GET for `uri` on `example.com`.
pub(crate) fn request(uri: &str) -> Request<()> {
    Request::get(uri)
        .header(header::HOST, "example.com")
        .header(header::ACCEPT, "text/html")
        .body(())
        .unwrap()
}

/// The hand-written lookup sending what the layer sends.
pub(crate) fn same_headers_handler(
    body: Bytes,
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    handler(body, false)
}

/// [`same_headers_handler`] that also tags its response with the
/// `CacheOutcome` extension, as the layer does (issue 11's typed outcome
/// for access logs): the same response, extensions included.
pub(crate) fn same_response_handler(
    body: Bytes,
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    handler(body, true)
}

fn handler(
    body: Bytes,
    tag: bool,
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    let map: moka::sync::Cache<String, Arc<(http::HeaderMap, Bytes)>> =
        moka::sync::Cache::new(10_000);
    let mut stored = typical_response(body.clone(), "public, s-maxage=600");
    stored.headers_mut().insert(
        header::DATE,
        HeaderValue::from_static("Thu, 26 Nov 2026 19:00:00 GMT"),
    );
    stored
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    map.insert(
        "http://example.com/posts/1".to_owned(),
        Arc::new((stored.headers().clone(), body)),
    );
    service_fn(move |req: Request<()>| {
        let host = req.headers()[header::HOST].to_str().unwrap_or("");
        let key = format!("http://{host}{}", req.uri().path());
        let found = map.get(&key);
        async move {
            let (headers, body) = &*found.expect("stored");
            let mut res = Response::new(Full::new(body.clone()));
            *res.headers_mut() = headers.clone();
            let h = res.headers_mut();
            h.insert(header::AGE, HeaderValue::from(0u64));
            let status = format!("tower-ssr; hit; ttl={}", 600);
            h.insert("cache-status", HeaderValue::from_str(&status).unwrap());
            if tag {
                res.extensions_mut().insert(CacheOutcome::Hit);
            }
            Ok::<_, Infallible>(res)
        }
    })
}

/// `CacheLayer` over a renderer of `body`, with `/posts/1` stored and
/// checked to be a hit.
pub(crate) fn layered_with_page(
    cache: ResponseCache,
    body: Bytes,
) -> impl Service<
    Request<()>,
    Response = Response<tower_ssr::cache::ResponseBody<Full<Bytes>>>,
    Error = Infallible,
> {
    let renderer = service_fn(move |_req: Request<()>| {
        let res = typical_response(body.clone(), "public, s-maxage=600");
        async move { Ok::<_, Infallible>(res) }
    });
    let mut layered = CacheLayer::new(cache).layer(renderer);
    let res = block_on(layered.call(request("/posts/1"))).unwrap();
    drain(res.into_body());
    let res = block_on(layered.call(request("/posts/1"))).unwrap();
    assert!(
        res.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit"),
        "{:?}",
        res.headers()
    );
    layered
}
