//! Costs of the shared Redis tier, each beside its baseline in one run.
//!
//! ```text
//! cargo bench --bench cache_redis --features redis
//! TOWER_SSR_BENCH_CLUSTER=1 cargo bench --bench cache_redis --features redis  # + Redis Cluster
//! ```
//!
//! Uses the Redis at `TOWER_SSR_REDIS_URL`, or else starts its own
//! `redis-server` from `PATH` (stopped when the bench ends); skipped, with
//! a message, when there is neither. With `TOWER_SSR_BENCH_CLUSTER=1` the
//! L2 hit is also measured on a Redis Cluster, in the same run: the
//! masters in `TOWER_SSR_REDIS_CLUSTER_URLS`, or else three of its own
//! (`redis-server --cluster-enabled yes` and `redis-cli --cluster create`).
//!
//! - `l1_hit/*`: a 30 KB page answered from memory, with the Redis tier
//!   configured vs without (an L1 hit never touches Redis, so these should
//!   match).
//! - `l2_hit/*`: the same page answered from Redis with memory empty (a
//!   cache whose memory tier is too small to keep it), beside the L1 hit;
//!   `from_cluster_l1_empty` is the same on the cluster (the read routed
//!   by redis-rs to the master of the page's slot).
//!
//! Every variant is driven by the same current-thread tokio runtime's
//! `block_on`, whose small cost is in every figure alike.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_ssr::cache::{CacheLayer, RedisTier, ResponseCache};

#[path = "../tests/common/redis.rs"]
mod redis_server;

fn page() -> Bytes {
    Bytes::from(
        (0..30 * 1024)
            .map(|i| b"<p>lorem ipsum dolor sit amet</p>\n"[i % 34])
            .collect::<Vec<u8>>(),
    )
}

fn renderer() -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let body = page();
    service_fn(move |_req: Request<()>| {
        let body = body.clone();
        async move {
            let mut res = Response::new(Full::new(body));
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, s-maxage=3600"),
            );
            Ok::<_, Infallible>(res)
        }
    })
}

fn req() -> Request<()> {
    Request::get("http://shop.example/posts/1")
        .body(())
        .unwrap()
}

fn benches(c: &mut Criterion) {
    // Benches have no "ignored": say so loudly instead.
    if !cfg!(tower_ssr_redis) {
        eprintln!("cache_redis bench skipped: needs redis-server on PATH or TOWER_SSR_REDIS_URL");
        return;
    }
    let url = redis_server::redis_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ns = format!("bench-{}", std::process::id());
    let tier = || RedisTier::new(&url).unwrap().namespace(&ns);
    let cluster = std::env::var("TOWER_SSR_BENCH_CLUSTER").is_ok_and(|v| v == "1");
    if cluster && !cfg!(tower_ssr_redis_cluster) {
        eprintln!("cluster variant skipped: needs redis-server and redis-cli on PATH or TOWER_SSR_REDIS_CLUSTER_URLS");
    }
    let cluster_tier = (cluster && cfg!(tower_ssr_redis_cluster)).then(|| {
        RedisTier::cluster(redis_server::cluster_urls())
            .unwrap()
            .namespace(&ns)
    });

    let (plain, tiered, cold, writer_cache, cold_cache, on_cluster) = rt.block_on(async {
        let plain = CacheLayer::new(ResponseCache::new()).layer(renderer());
        let tiered_cache = ResponseCache::builder().redis(tier()).build();
        let tiered = CacheLayer::new(tiered_cache.clone()).layer(renderer());
        // Memory too small for any entry: every request reads Redis.
        let cold_cache = ResponseCache::builder().max_bytes(1).redis(tier()).build();
        let cold = CacheLayer::new(cold_cache.clone()).layer(renderer());
        for c in [&tiered_cache, &cold_cache] {
            assert!(
                c.redis_ready(Duration::from_secs(5)).await,
                "redis is not reachable at {url}"
            );
        }
        // Fill memory (and Redis, through the tiered cache).
        plain.clone().oneshot(req()).await.unwrap();
        tiered.clone().oneshot(req()).await.unwrap();
        while tiered_cache.stats().l2_writes == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let res = cold.clone().oneshot(req()).await.unwrap();
        let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
        assert!(status.ends_with("detail=redis"), "{status}");
        // The same on the cluster: one write through a tiered cache, then
        // a cache with no memory to speak of reads it back every time.
        let on_cluster = match cluster_tier {
            Some(t) => {
                let writer = ResponseCache::builder().redis(t.clone()).build();
                let reader = ResponseCache::builder().max_bytes(1).redis(t).build();
                for c in [&writer, &reader] {
                    assert!(
                        c.redis_ready(Duration::from_secs(5)).await,
                        "the redis cluster is not reachable"
                    );
                }
                let fill = CacheLayer::new(writer.clone()).layer(renderer());
                fill.oneshot(req()).await.unwrap();
                while writer.stats().l2_writes == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let cold = CacheLayer::new(reader.clone()).layer(renderer());
                let res = cold.clone().oneshot(req()).await.unwrap();
                let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
                assert!(status.ends_with("detail=redis"), "{status}");
                Some((cold, writer, reader))
            }
            None => None,
        };
        (plain, tiered, cold, tiered_cache, cold_cache, on_cluster)
    });

    let mut g = c.benchmark_group("l1_hit");
    g.throughput(Throughput::Bytes(30 * 1024));
    g.bench_function("without_tier", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = plain.clone().oneshot(req()).await.unwrap();
                black_box(res.into_body().collect().await.unwrap().to_bytes().len())
            })
        })
    });
    g.bench_function("with_tier", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = tiered.clone().oneshot(req()).await.unwrap();
                black_box(res.into_body().collect().await.unwrap().to_bytes().len())
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("l2_hit");
    g.throughput(Throughput::Bytes(30 * 1024));
    g.bench_function("l1_hit_baseline", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = tiered.clone().oneshot(req()).await.unwrap();
                black_box(res.into_body().collect().await.unwrap().to_bytes().len())
            })
        })
    });
    g.bench_function("from_redis_l1_empty", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = cold.clone().oneshot(req()).await.unwrap();
                black_box(res.into_body().collect().await.unwrap().to_bytes().len())
            })
        })
    });
    if let Some((cold, _, _)) = &on_cluster {
        g.bench_function("from_cluster_l1_empty", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let res = cold.clone().oneshot(req()).await.unwrap();
                    black_box(res.into_body().collect().await.unwrap().to_bytes().len())
                })
            })
        });
    }
    g.finish();

    // Honesty check: how many of the cold cache's answers came from Redis.
    let s = cold_cache.stats();
    eprintln!(
        "cold cache: {} answers from redis, {} from memory",
        s.l2_hits, s.hits
    );
    if let Some((_, writer, reader)) = &on_cluster {
        let s = reader.stats();
        eprintln!(
            "cold cache on the cluster: {} answers from redis, {} from memory",
            s.l2_hits, s.hits
        );
        rt.block_on(async {
            let _ = writer.purge_all().confirmed(Duration::from_secs(5)).await;
        });
    }
    rt.block_on(async {
        writer_cache.purge_all();
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
}

criterion_group!(cache_redis, benches);
criterion_main!(cache_redis);
