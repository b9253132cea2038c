//! The Cache-Control layer in front of a raw hyper server (no axum) on
//! 127.0.0.1:0.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tower::{service_fn, Layer};
use tower_ssr::cache_control::{CacheControlLayer, Directives, Rule};

async fn render(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let status = if req.uri().path() == "/gone" {
        StatusCode::GONE
    } else {
        StatusCode::OK
    };
    Ok(Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html")
        .body(Full::new(Bytes::from_static(b"<h1>raw hyper</h1>")))
        .unwrap())
}

async fn serve() -> std::net::SocketAddr {
    let layer = CacheControlLayer::new().rule(
        Rule::path("/**")
            .unwrap()
            .cache_control(Directives::new().public().max_age(Duration::from_secs(60))),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = TowerToHyperService::new(layer.layer(service_fn(render)));
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn raw_hyper_gets_policy_etag_and_304() {
    let addr = serve().await;
    let res = common::get(addr, "/page").await;
    assert_eq!(res.one("cache-control"), "public, max-age=60");
    let tag = res.one("etag").to_owned();
    let res = common::get_with(addr, "/page", &[("if-none-match", &tag)]).await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    assert_eq!(res.one("etag"), tag);
}

#[tokio::test]
async fn raw_hyper_gone_keeps_no_policy() {
    let addr = serve().await;
    let res = common::get(addr, "/gone").await;
    assert_eq!(res.status, StatusCode::GONE);
    assert!(!res.has("cache-control"));
}

/// RFC 9111 §4.3.4 with hyper's `Incoming` request body, which the cache
/// cannot make an empty copy of to send the request again: a `304` that
/// selects no stored response updates nothing, the client gets what the
/// 304 vouched for, and the entry is dropped so the next request fetches
/// the page anew.
#[tokio::test]
async fn raw_hyper_a_304_that_selects_nothing_updates_nothing() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower_ssr::cache::{CacheLayer, ResponseCache};

    let calls = Arc::new(AtomicUsize::new(0));
    let origin = {
        let calls = calls.clone();
        service_fn(move |req: Request<Incoming>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let conditional = req.headers().contains_key(header::IF_MODIFIED_SINCE);
            async move {
                let res = Response::builder();
                Ok::<_, Infallible>(
                    match (n, conditional) {
                        // Stale on arrival, validated by Last-Modified alone.
                        (1, _) => res
                            .header("cache-control", "max-age=1")
                            .header("age", "5")
                            .header("last-modified", "Thu, 01 Jan 2026 00:00:00 GMT")
                            .body(Full::new(Bytes::from_static(b"v1"))),
                        // A strong tag the stored response never had.
                        (_, true) => res
                            .status(StatusCode::NOT_MODIFIED)
                            .header("cache-control", "max-age=60")
                            .header("etag", "\"n\"")
                            .body(Full::new(Bytes::new())),
                        (_, false) => res
                            .header("cache-control", "max-age=60")
                            .header("etag", "\"n\"")
                            .body(Full::new(Bytes::from_static(b"v2"))),
                    }
                    .unwrap(),
                )
            }
        })
    };
    let cache = ResponseCache::new();
    let layer = CacheLayer::new(cache);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(layer.layer(origin.clone()));
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    assert_eq!(&common::get(addr, "/p").await.body[..], b"v1");
    let vouched = common::get(addr, "/p").await;
    assert_eq!(&vouched.body[..], b"v1");
    let status = vouched.one("cache-status");
    assert!(
        status.contains("fwd-status=304") && !status.contains("stored"),
        "{status}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let anew = common::get(addr, "/p").await;
    assert_eq!(&anew.body[..], b"v2");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let hit = common::get(addr, "/p").await;
    assert!(hit.one("cache-status").contains("hit"), "{hit:?}");
}
