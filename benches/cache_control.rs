//! Costs of the Cache-Control layer, each beside its baseline in one run.
//!
//! ```text
//! cargo bench --bench cache_control
//! ```

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{header, Request, Response};
use http_body_util::Full;
use support::{block_on, drain};
use tower::{service_fn, Layer, Service};
use tower_ssr::cache_control::{CacheControlLayer, Directives, ETagMode, PathGlob, Rule};

const TYPICAL: &str = "public, max-age=0, s-maxage=60, stale-while-revalidate=300";

fn page(bytes: usize) -> Bytes {
    Bytes::from(
        (0..bytes)
            .map(|i| b"<p>lorem ipsum dolor sit amet</p>\n"[i % 34])
            .collect::<Vec<u8>>(),
    )
}

fn layer(etag: ETagMode) -> CacheControlLayer {
    let d = Directives::new()
        .public()
        .max_age(Duration::ZERO)
        .s_maxage(Duration::from_secs(60))
        .stale_while_revalidate(Duration::from_secs(300));
    CacheControlLayer::new()
        .rule(
            Rule::path("/assets/**")
                .unwrap()
                .cache_control(Directives::immutable_asset()),
        )
        .rule(Rule::path("/**").unwrap().cache_control(d))
        .etag(etag)
}

fn directives(c: &mut Criterion) {
    let mut g = c.benchmark_group("directives");
    g.bench_function("parse typical", |b| {
        b.iter(|| black_box(TYPICAL).parse::<Directives>().unwrap())
    });
    let d: Directives = TYPICAL.parse().unwrap();
    g.bench_function("format typical", |b| {
        b.iter(|| black_box(&d).to_header_value())
    });
    g.finish();

    let mut g = c.benchmark_group("path glob");
    for pattern in ["/assets/**", "/**", "/posts/*", "/assets/app.*.js"] {
        let glob: PathGlob = pattern.parse().unwrap();
        g.bench_function(pattern, |b| {
            b.iter(|| black_box(&glob).matches(black_box("/posts/1")))
        });
    }
    g.finish();
}

fn per_response(c: &mut Criterion) {
    for (name, size, mode) in [
        ("small body, no etag", 13, ETagMode::Off),
        ("30KB body, weak etag", 30 * 1024, ETagMode::Weak),
    ] {
        let body = page(size);
        let inner = service_fn(move |_req: Request<()>| {
            let body = body.clone();
            async move {
                let mut res = Response::new(Full::new(body));
                res.headers_mut()
                    .insert(header::CONTENT_TYPE, "text/html".parse().unwrap());
                Ok::<_, Infallible>(res)
            }
        });
        let mut g = c.benchmark_group(format!("per response/{name}"));
        g.throughput(if size > 1024 {
            Throughput::Bytes(size as u64)
        } else {
            Throughput::Elements(1)
        });
        let mut bare = inner.clone();
        g.bench_function("bare service", |b| {
            b.iter(|| {
                let res = block_on(bare.call(Request::get("/posts/1").body(()).unwrap())).unwrap();
                drain(res.into_body())
            })
        });
        let mut layered = layer(mode).layer(inner);
        g.bench_function("with CacheControlLayer", |b| {
            b.iter(|| {
                let res =
                    block_on(layered.call(Request::get("/posts/1").body(()).unwrap())).unwrap();
                drain(res.into_body())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, directives, per_response);
criterion_main!(benches);
