//! The production stack without axum: raw hyper, one `service_fn` as the
//! renderer, and the same layers as `examples/axum_app.rs`.
//!
//! ```text
//! cargo run --example hyper_app                # 127.0.0.1:3000 (PORT=0: any free port)
//! curl -si http://127.0.0.1:3000/hello | grep -i cache-status
//! ```

use std::convert::Infallible;
use std::time::Duration;

use http::{header, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;
use tower_ssr::cache::{CacheLayer, ResponseCache};
use tower_ssr::cache_control::{CacheControlLayer, Directives, Rule};
use tower_ssr::ServiceBuilderExt as _;

/// The renderer: any `Service<Request<_>>` works; hyper's `Incoming` body
/// passes through every layer unchanged.
async fn render(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let body = format!(
        "<!doctype html><h1>{}</h1>{}",
        req.uri().path(),
        "<p>x</p>".repeat(200)
    );
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(body)
        .expect("static headers are valid"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = ResponseCache::builder().max_bytes(64 << 20).build();
    let policy = CacheControlLayer::new().rule(
        Rule::content_type("text/html")?
            .cache_control(Directives::new().public().s_maxage(Duration::from_secs(60))),
    );
    // No body mapping needed: hyper serves any body with `Bytes` data.
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .cache(CacheLayer::new(cache.clone()))
        .cache_control(policy)
        .layer(CompressionLayer::new())
        .service_fn(render);

    let port = std::env::var("PORT").map_or(Ok(3000), |p| p.parse())?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    let graceful = GracefulShutdown::new();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc.clone()));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut ctrl_c => break,
        }
    }
    // Finish the requests in flight (at most 10 s), then exit.
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    println!("stats: {:?}", cache.stats());
    Ok(())
}
