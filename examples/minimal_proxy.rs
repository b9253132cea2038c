//! The forwarding-cost baseline for `scripts/bench-proxy.sh`: a reverse
//! proxy written directly on hyper + hyper-util's pooled client, round
//! robin over its upstreams, with no header work at all (no hop-by-hop
//! removal, no `Via`, no forwarding headers, no timeouts, no health).
//! Not a proxy to deploy: a floor to measure `tower_ssr::proxy` against.
//!
//! ```text
//! cargo run --release --example minimal_proxy -- 127.0.0.1:8081 \
//!     127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003
//! ```
//!
//! Single-threaded runtime (one proxy core, like nginx's one worker);
//! prints `listening on ADDR` once ready.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv = std::env::args().skip(1);
    let listen = argv
        .next()
        .ok_or("usage: minimal_proxy LISTEN UPSTREAM...")?;
    let upstreams: Vec<Authority> = argv.map(|a| a.parse()).collect::<Result<_, _>>()?;
    if upstreams.is_empty() {
        return Err("usage: minimal_proxy LISTEN UPSTREAM...".into());
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(listen, upstreams))
}

async fn run(listen: String, upstreams: Vec<Authority>) -> Result<(), Box<dyn std::error::Error>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let upstreams = Arc::new(upstreams);
    let next = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, upstreams, next) = (client.clone(), upstreams.clone(), next.clone());
        let svc = service_fn(move |mut req: Request<Incoming>| {
            let i = next.fetch_add(1, Ordering::Relaxed) % upstreams.len();
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(upstreams[i].clone());
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            let client = client.clone();
            async move {
                Ok::<_, Infallible>(match client.request(req).await {
                    Ok(res) => res.map(BodyExt::boxed_unsync),
                    Err(_) => {
                        let mut res =
                            Response::new(Body::new(Empty::new().map_err(|e| match e {})));
                        *res.status_mut() = StatusCode::BAD_GATEWAY;
                        res
                    }
                })
            }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
