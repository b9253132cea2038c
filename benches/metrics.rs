//! What the `metrics` feature costs a cache hit: the same hit through two
//! caches in one run, one whose handles bound to no recorder (the
//! `metrics` facade's no-op) and one whose handles bound to the Prometheus
//! recorder (`metrics-exporter-prometheus`), so every hit increments a
//! real counter.
//!
//! ```text
//! cargo bench --bench metrics
//! ```

mod support;

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::Request;
use support::hit::{page, request, typical_response};
use support::{block_on, drain};
use tower::{service_fn, Layer, Service};
use tower_ssr::cache::{CacheLayer, CacheOutcome, ResponseCache};

fn hit(c: &mut Criterion) {
    let body = page();
    let renderer = service_fn(move |_req: Request<()>| {
        let res = typical_response(body.clone(), "public, s-maxage=600");
        async move { Ok::<_, Infallible>(res) }
    });
    // A cache's handles register on its first answer, with whichever
    // recorder is current then: none for the first cache, the Prometheus
    // recorder (thread-local for the first answer only) for the second.
    let mut plain = CacheLayer::new(ResponseCache::new())
        .cache_name("no-recorder")
        .layer(renderer.clone());
    drain(
        block_on(plain.call(request("/posts/1")))
            .unwrap()
            .into_body(),
    );
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = prometheus.handle();
    let mut recorded = CacheLayer::new(ResponseCache::new())
        .cache_name("prometheus")
        .layer(renderer);
    metrics::with_local_recorder(&prometheus, || {
        drain(
            block_on(recorded.call(request("/posts/1")))
                .unwrap()
                .into_body(),
        );
    });
    for svc in [&mut plain, &mut recorded] {
        let res = block_on(svc.call(request("/posts/1"))).unwrap();
        assert_eq!(
            res.extensions().get::<CacheOutcome>(),
            Some(&CacheOutcome::Hit)
        );
    }

    let mut group = c.benchmark_group("metrics_hit");
    group.throughput(Throughput::Elements(1));
    group.bench_function("no_recorder", |b| {
        b.iter(|| {
            let res = block_on(plain.call(request("/posts/1"))).unwrap();
            black_box(drain(res.into_body()))
        })
    });
    group.bench_function("prometheus_recorder", |b| {
        b.iter(|| {
            let res = block_on(recorded.call(request("/posts/1"))).unwrap();
            black_box(drain(res.into_body()))
        })
    });
    group.bench_function("no_recorder_again", |b| {
        b.iter(|| {
            let res = block_on(plain.call(request("/posts/1"))).unwrap();
            black_box(drain(res.into_body()))
        })
    });
    group.finish();
    // The recorded cache's hits did reach the recorder.
    let text = handle.render();
    assert!(
        text.contains(r#"tower_ssr_cache_requests_total{cache="prometheus",outcome="hit"}"#),
        "{text}"
    );
    assert!(!text.contains(r#"cache="no-recorder""#), "{text}");
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = hit
}
criterion_main!(benches);
