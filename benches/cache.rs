//! Costs of the response cache, each beside its baseline in one run.
//!
//! ```text
//! cargo bench --bench cache
//! ```
//!
//! - `hit/*`: a 30 KB page through the layer, beside the same page from a
//!   moka lookup written in a handler, beside a bare service that returns
//!   a prebuilt response.
//! - `passthrough/*`: an uncacheable (`no-store`) response through the
//!   layer vs no layer.
//! - `miss/*`: a miss that stores (a new key each time) vs the bare
//!   service.
//! - `passthrough_socket/*`: an uncacheable streamed 30 KB response over a
//!   real loopback connection (keep-alive), through the layer vs without.
//! - `purge/*`: a purge by path that matches nothing, over 10,000 and
//!   50,000 stored 1 KB pages: a walk over the whole tier (purges are
//!   applied before they return); throughput is entries walked.

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use support::hit::{layered_with_page, page, request, same_headers_handler, typical_response};
use support::{block_on, drain};
use tower::{service_fn, Layer, Service};
use tower_ssr::cache::{CacheLayer, ResponseCache};

fn hit(c: &mut Criterion) {
    let body = page();
    let mut group = c.benchmark_group("hit");
    group.throughput(Throughput::Elements(1));

    // Baseline 1: a bare service returning a prebuilt response.
    let prebuilt = typical_response(body.clone(), "public, s-maxage=600");
    let mut bare = service_fn(move |_req: Request<()>| {
        let res = prebuilt.clone();
        async move { Ok::<_, Infallible>(res) }
    });
    group.bench_function("bare_service", |b| {
        b.iter(|| {
            let res = block_on(bare.call(request("/posts/1"))).unwrap();
            black_box(drain(res.into_body()))
        })
    });

    // Baseline 2: the lookup a user would write in a handler: a moka map
    // from path to (headers, body), with Age added per hit.
    let map: moka::sync::Cache<String, Arc<(http::HeaderMap, Bytes)>> =
        moka::sync::Cache::new(10_000);
    let stored = typical_response(body.clone(), "public, s-maxage=600");
    map.insert(
        "http://example.com/posts/1".to_owned(),
        Arc::new((stored.headers().clone(), body.clone())),
    );
    let mut handler = service_fn(move |req: Request<()>| {
        let host = req.headers()[header::HOST].to_str().unwrap_or("");
        let key = format!("http://{host}{}", req.uri().path());
        let found = map.get(&key);
        async move {
            let (headers, body) = &*found.expect("stored");
            let mut res = Response::new(Full::new(body.clone()));
            *res.headers_mut() = headers.clone();
            res.headers_mut()
                .insert(header::AGE, HeaderValue::from(0u64));
            Ok::<_, Infallible>(res)
        }
    });
    group.bench_function("moka_in_handler", |b| {
        b.iter(|| {
            let res = block_on(handler.call(request("/posts/1"))).unwrap();
            black_box(drain(res.into_body()))
        })
    });

    // Baseline 3: the same hand-written lookup sending the same response
    // as the layer: the origin's Date and Content-Length kept, Age and a
    // Cache-Status member formatted per hit.
    let mut handler = same_headers_handler(body.clone());
    group.bench_function("moka_in_handler_same_headers", |b| {
        b.iter(|| {
            let res = block_on(handler.call(request("/posts/1"))).unwrap();
            black_box(drain(res.into_body()))
        })
    });

    // The layer, the page stored once.
    let cache = ResponseCache::new();
    let mut layered = layered_with_page(cache.clone(), body);
    group.bench_function("layer", |b| {
        b.iter(|| {
            let res = block_on(layered.call(request("/posts/1"))).unwrap();
            black_box(drain(res.into_body()))
        })
    });
    group.finish();
    assert!(cache.stats().hits > 0);
}

/// A hit on an entry whose br, zstd and gzip copies are made (issue 9):
/// a browser's `Accept-Encoding` gets br, a client without it identity,
/// from the same entry, against a hit on an entry never compressed.
#[cfg(feature = "compression")]
fn hit_compressed(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The compression job runs on this runtime's blocking pool.
    let _entered = rt.enter();
    let body = page();
    let renderer = service_fn(move |_req: Request<()>| {
        let res = typical_response(body.clone(), "public, s-maxage=600");
        async move { Ok::<_, Infallible>(res) }
    });
    let mut layered = CacheLayer::new(ResponseCache::new()).layer(renderer);
    let browser = |uri: &str| {
        let mut req = request(uri);
        req.headers_mut().insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br, zstd"),
        );
        req
    };
    drain(
        block_on(layered.call(browser("/posts/1")))
            .unwrap()
            .into_body(),
    );
    let made = (0..60_000).any(|_| {
        let res = block_on(layered.call(browser("/posts/1"))).unwrap();
        let br = res
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v == "br");
        drain(res.into_body());
        if !br {
            std::thread::sleep(Duration::from_millis(1));
        }
        br
    });
    assert!(made, "the br copy was never made");
    let mut group = c.benchmark_group("hit_compressed");
    group.throughput(Throughput::Elements(1));
    group.bench_function("br_for_a_browser", |b| {
        b.iter(|| {
            let res = block_on(layered.call(browser("/posts/1"))).unwrap();
            black_box(drain(res.into_body()))
        })
    });
    group.bench_function("identity_without_accept_encoding", |b| {
        b.iter(|| {
            let res = block_on(layered.call(request("/posts/1"))).unwrap();
            black_box(drain(res.into_body()))
        })
    });
    group.finish();
}

#[cfg(not(feature = "compression"))]
fn hit_compressed(_: &mut Criterion) {}

fn passthrough(c: &mut Criterion) {
    let body = page();
    let mut group = c.benchmark_group("passthrough");
    group.throughput(Throughput::Elements(1));
    let make = |body: Bytes| {
        service_fn(move |_req: Request<()>| {
            let res = typical_response(body.clone(), "no-store");
            async move { Ok::<_, Infallible>(res) }
        })
    };
    let mut bare = make(body.clone());
    group.bench_function("no_layer", |b| {
        b.iter(|| {
            let res = block_on(bare.call(request("/api/live"))).unwrap();
            black_box(drain(res.into_body()))
        })
    });
    // Steady state: the key is remembered as uncacheable, so requests
    // skip coalescing and go straight through.
    let mut layered = CacheLayer::new(ResponseCache::new()).layer(make(body.clone()));
    group.bench_function("layer", |b| {
        b.iter(|| {
            let res = block_on(layered.call(request("/api/live"))).unwrap();
            black_box(drain(res.into_body()))
        })
    });
    // The uncacheable memory off: every call takes the full miss path (a
    // flight, the inner call, the storability check).
    let mut layered = CacheLayer::new(ResponseCache::new())
        .uncacheable_for(Duration::ZERO)
        .layer(make(body));
    group.bench_function("layer_no_memory", |b| {
        b.iter(|| {
            let res = block_on(layered.call(request("/api/live"))).unwrap();
            black_box(drain(res.into_body()))
        })
    });
    group.finish();
}

fn miss(c: &mut Criterion) {
    let body = page();
    let mut group = c.benchmark_group("miss");
    group.throughput(Throughput::Elements(1));
    let make = |body: Bytes| {
        service_fn(move |_req: Request<()>| {
            let res = typical_response(body.clone(), "public, s-maxage=600");
            async move { Ok::<_, Infallible>(res) }
        })
    };
    let mut bare = make(body.clone());
    group.bench_function("bare_service", |b| {
        b.iter(|| {
            let res = block_on(bare.call(request("/posts/1"))).unwrap();
            black_box(drain(res.into_body()))
        })
    });
    let cache = ResponseCache::builder().max_bytes(256 << 20).build();
    let mut layered = CacheLayer::new(cache).layer(make(body));
    let n = AtomicU64::new(0);
    group.bench_function("layer_store", |b| {
        b.iter(|| {
            let i = n.fetch_add(1, Ordering::Relaxed);
            let res = block_on(layered.call(request(&format!("/posts/{i}")))).unwrap();
            black_box(drain(res.into_body()))
        })
    });
    group.finish();
}

fn purge(c: &mut Criterion) {
    let mut group = c.benchmark_group("purge");
    let origin = service_fn(move |_req: Request<()>| {
        let res = typical_response(Bytes::from(vec![b'x'; 1024]), "public, s-maxage=600");
        async move { Ok::<_, Infallible>(res) }
    });
    for entries in [10_000u64, 50_000] {
        let cache = ResponseCache::builder().max_bytes(1 << 30).build();
        let mut layered = CacheLayer::new(cache.clone()).layer(origin);
        for i in 0..entries {
            drain(
                block_on(layered.call(request(&format!("/posts/{i}"))))
                    .unwrap()
                    .into_body(),
            );
        }
        assert_eq!(cache.stats().entries, entries, "every page stored");
        group.throughput(Throughput::Elements(entries));
        group.bench_function(format!("path_matching_nothing_{entries}"), |b| {
            b.iter(|| black_box(cache.purge_path("/absent")))
        });
    }
    group.finish();
}

/// Serves `app` on 127.0.0.1:0 on `rt`; returns its address.
fn serve_on(rt: &tokio::runtime::Runtime, app: axum::Router) -> std::net::SocketAddr {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    })
}

fn passthrough_socket(c: &mut Criterion) {
    use axum::routing::get;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower::ServiceBuilder;

    // One thread runs client and servers: no cross-thread wake-ups, so
    // the figure is the CPU cost of the round trip on a loaded machine.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let chunk = Bytes::from(vec![b'x'; 10 * 1024]);
    let app = move || {
        let chunk = chunk.clone();
        axum::Router::new().route(
            "/live",
            get(move || {
                let chunks = (0..3).map({
                    let chunk = chunk.clone();
                    move |_| Ok::<_, Infallible>(chunk.clone())
                });
                async move {
                    (
                        [(header::CACHE_CONTROL, "no-store")],
                        axum::body::Body::from_stream(tokio_stream::iter(chunks)),
                    )
                }
            }),
        )
    };
    let plain = serve_on(&rt, app());
    // The layer outside the router, as the ssr demo stacks it.
    let layered = {
        let svc = ServiceBuilder::new()
            .map_request(|req: axum::extract::Request| req)
            .map_response(|res: Response<_>| res.map(axum::body::Body::new))
            .layer(CacheLayer::new(ResponseCache::new()))
            .service(app());
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                axum::serve(listener, axum::ServiceExt::into_make_service(svc))
                    .await
                    .unwrap()
            });
            addr
        })
    };
    // The same outer stack without the cache: separates the layer's cost
    // from that of wrapping a Router in a service stack.
    let wrapped = {
        let svc = ServiceBuilder::new()
            .map_request(|req: axum::extract::Request| req)
            .map_response(|res: Response<_>| res.map(axum::body::Body::new))
            .service(app());
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                axum::serve(listener, axum::ServiceExt::into_make_service(svc))
                    .await
                    .unwrap()
            });
            addr
        })
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let fetch = |addr: std::net::SocketAddr| {
        rt.block_on(async {
            let res = client
                .request(
                    Request::get(format!("http://{addr}/live"))
                        .body(Empty::new())
                        .unwrap(),
                )
                .await
                .unwrap();
            res.into_body().collect().await.unwrap().to_bytes().len()
        })
    };
    assert_eq!(fetch(plain), 30 * 1024);
    assert_eq!(fetch(layered), 30 * 1024);
    let mut group = c.benchmark_group("passthrough_socket");
    group.throughput(Throughput::Elements(1));
    group.bench_function("no_layer", |b| b.iter(|| black_box(fetch(plain))));
    group.bench_function("same_stack_no_layer", |b| {
        b.iter(|| black_box(fetch(wrapped)))
    });
    group.bench_function("layer", |b| b.iter(|| black_box(fetch(layered))));
    group.bench_function("no_layer_again", |b| b.iter(|| black_box(fetch(plain))));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = hit, hit_compressed, passthrough, miss, passthrough_socket, purge
}
criterion_main!(benches);
