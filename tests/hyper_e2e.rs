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
