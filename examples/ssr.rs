//! The main demo: an axum app standing in for a server-side renderer, with
//! tower-ssr's layers in front of it.
//!
//! ```text
//! cargo run --example ssr            # listens on 127.0.0.1:3000
//! PORT=4000 cargo run --example ssr  # another port
//! curl http://127.0.0.1:9100/metrics # Prometheus text (METRICS_PORT, default 9100)
//! ```
//!
//! Every answer carries `Server-Timing` (`cache;desc=hit`, or
//! `cache;desc=miss, upstream;dur=…`): open the page with the browser's
//! developer tools to see it.
//!
//! Two instances sharing one Redis (feature `redis`; without `REDIS_URL`
//! the shared tier is off and no Redis is needed):
//!
//! ```text
//! redis-server --port 6379 --save '' --appendonly no --daemonize yes
//! REDIS_URL=redis://127.0.0.1:6379 PORT=3000 cargo run --example ssr --features redis
//! REDIS_URL=redis://127.0.0.1:6379 PORT=3001 cargo run --example ssr --features redis
//! curl -si -H 'Host: shop.local' http://127.0.0.1:3000/posts/1 | grep -i cache-status  # fwd=uri-miss; stored
//! curl -si -H 'Host: shop.local' http://127.0.0.1:3001/posts/1 | grep -i cache-status  # hit; ...; detail=redis
//! curl -si -X POST -H 'Host: shop.local' 'http://127.0.0.1:3001/admin/purge?tag=pages'  # purges both
//! curl -si -X POST 'http://127.0.0.1:3000/admin/revalidate?tag=pages'  # soft purge: stale at once, one re-render per page
//! ```
//!
//! On Redis Cluster, `REDIS_CLUSTER` takes the seed nodes instead of
//! `REDIS_URL` (comma-separated; one is enough, the others are learnt from
//! it; setting both is an error):
//!
//! ```text
//! REDIS_CLUSTER=redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002 PORT=3000 cargo run --example ssr --features redis
//! ```
//!
//! With `ADMIN_TOKEN` set, the `/admin/*` routes want it as a bearer
//! token (`curl -H "Authorization: Bearer $ADMIN_TOKEN" …`) and answer
//! `401` without it.
//!
//! The host is part of the cache key: behind a load balancer every
//! instance sees the public host; curling two ports directly, send the same
//! `Host` to both.
//!
//! Every page costs about 1–2 ms of CPU to render (a 20–40 KB HTML page,
//! deterministic per URL), like a real SSR framework would.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post as post_route};
use axum::{Router, ServiceExt as _};
use tower::ServiceBuilder;
use tower_ssr::cache::{CacheLayer, ResponseCache};
use tower_ssr::cache_control::{CacheControlLayer, Directives, Rule};

#[path = "support/malloc.rs"]
mod malloc;
#[path = "support/prometheus.rs"]
mod prometheus;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Before any thread starts: glibc tuned for a cache (see the module).
    malloc::fix_mmap_threshold();
    serve()
}

#[tokio::main]
async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    // First: handles taken before the recorder is installed stay no-ops.
    let metrics_port: u16 = match std::env::var("METRICS_PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("METRICS_PORT must be a port number, got {p:?}"))?,
        Err(_) => 9100,
    };
    match prometheus::serve_metrics(SocketAddr::from(([127, 0, 0, 1], metrics_port))).await {
        Ok(bound) => println!("metrics at http://{bound}/metrics"),
        // A second instance on the same machine: the demo goes on.
        Err(e) => eprintln!("no /metrics on port {metrics_port} ({e}); set METRICS_PORT"),
    }
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| format!("PORT must be a port number, got {p:?}"))?,
        Err(_) => 3000,
    };
    // The response cache goes outside the router: a hit costs one lookup
    // and no routing. It stores what CacheControlLayer (inside) decided,
    // asks the router for identity and makes br, zstd and gzip of each
    // stored page once (on by default). tower-http's CompressionLayer goes
    // outside the cache: it skips responses that carry Content-Encoding, so
    // hits are never compressed twice, and compresses what passes unstored.
    // TraceLayer outermost logs every request (RUST_LOG=tower_http=debug).
    tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "tower_http=info,tower_ssr=info".into()),
        )
        .init();
    let cache = shared_tier(ResponseCache::builder().max_bytes(128 << 20))?.build();
    let app = ServiceBuilder::new()
        // Names the request body type for the router below, and turns every
        // body back into axum's, above every other layer.
        .map_request(|req: axum::extract::Request| req)
        .map_response(|res: http::Response<_>| res.map(axum::body::Body::new))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(
            CacheLayer::new(cache.clone())
                .ignore_client_no_cache(true)
                .server_timing(true),
        )
        .service(app(cache)?);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("listening on {base}");
    println!("try:");
    println!("  curl -i {base}/                 # page: public, max-age=0, s-maxage=60, stale-while-revalidate=300, ETag");
    println!("  curl -i {base}/posts/42         # another page, from one of 3 balanced renderer workers (X-Worker)");
    println!("  curl -i --compressed {base}/    # br (or zstd, gzip) from the cache, once made; ETag \"...-br\"");
    println!(
        "  curl -i -H 'If-None-Match: <etag from above>' {base}/posts/42   # 304 Not Modified"
    );
    println!("  curl -i {base}/assets/app.3f9a1c.js   # one year, immutable");
    println!("  curl -i {base}/account          # sets a cookie: private");
    println!("  curl -i {base}/boom             # a 500: no-store");
    println!("  curl -i {base}/ (twice)         # the second is a hit: Age, Cache-Status: tower-ssr; hit");
    println!("  curl -i -X POST '{base}/admin/purge?path=/'   # demo only: purge a path");
    println!("  curl -i -X POST '{base}/admin/purge?tag=pages' # or a tag");
    println!("  curl -i -X POST '{base}/admin/revalidate?tag=pages' # soft purge: stale at once, one re-render each");
    println!("  (with ADMIN_TOKEN set, /admin/* want -H 'Authorization: Bearer $ADMIN_TOKEN')");
    println!("  curl {base}/admin/stats         # cache counters");
    println!("two instances sharing one Redis (feature redis):");
    println!(
        "  REDIS_URL=redis://127.0.0.1:6379 PORT=3001 cargo run --example ssr --features redis"
    );
    println!("  then the same URL with the same Host on both ports: the second instance answers from Redis");
    println!("  (on Redis Cluster: REDIS_CLUSTER=redis://HOST:PORT,redis://HOST:PORT,... instead of REDIS_URL)");
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The shared Redis tier on the node in `REDIS_URL`, or on the cluster
/// whose seed nodes `REDIS_CLUSTER` lists (comma-separated); off when
/// neither is set.
fn shared_tier(
    builder: tower_ssr::cache::ResponseCacheBuilder,
) -> Result<tower_ssr::cache::ResponseCacheBuilder, Box<dyn std::error::Error>> {
    let set = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let (url, cluster) = (set("REDIS_URL"), set("REDIS_CLUSTER"));
    let var = match (&url, &cluster) {
        (None, None) => return Ok(builder),
        (Some(_), Some(_)) => {
            return Err("set REDIS_URL (one node) or REDIS_CLUSTER (seed nodes), not both".into())
        }
        (Some(_), None) => "REDIS_URL",
        (None, Some(_)) => "REDIS_CLUSTER",
    };
    #[cfg(feature = "redis")]
    {
        use tower_ssr::cache::RedisTier;
        let tier = match (url, cluster) {
            (Some(url), _) => RedisTier::new(&url)?,
            (_, Some(seeds)) => {
                RedisTier::cluster(seeds.split(',').filter(|s| !s.trim().is_empty()))?
            }
            (None, None) => unreachable!("returned above"),
        };
        println!("shared cache tier on Redis from {var} (render lock on)");
        Ok(builder.redis(tier.render_lock(Duration::from_secs(2))))
    }
    #[cfg(not(feature = "redis"))]
    {
        Err(
            format!("{var} needs the redis feature: cargo run --example ssr --features redis")
                .into(),
        )
    }
}

fn app(cache: ResponseCache) -> Result<Router, Box<dyn std::error::Error>> {
    let page = Directives::new()
        .public()
        .max_age(Duration::ZERO)
        .s_maxage(Duration::from_secs(60))
        .stale_while_revalidate(Duration::from_secs(300));
    let headers = CacheControlLayer::new()
        // First match wins: the specific asset rule goes before the pages.
        .rule(Rule::path("/assets/**")?.cache_control(Directives::immutable_asset()))
        .rule(
            Rule::any()
                .and_content_type("text/html")?
                .cache_control(page)
                .tags(["pages"])?,
        )
        .last_modified(SystemTime::now());
    Ok(Router::new()
        .route("/", get(|| async { Html(render("/")) }))
        .route_service("/posts/{id}", renderer_workers()?)
        .route("/assets/{file}", get(asset))
        .route("/account", get(account))
        .route(
            "/boom",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "the renderer crashed\n") }),
        )
        .layer(headers)
        .merge(admin(cache)))
}

/// Cache administration. Demo only: with `ADMIN_TOKEN` set it wants that
/// bearer token; without it, it is open. A real deployment also puts it on
/// a private listener.
fn admin(cache: ResponseCache) -> Router {
    let token = std::env::var("ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
    Router::new()
        .route("/admin/purge", post_route(purge))
        .route("/admin/revalidate", post_route(revalidate))
        .route("/admin/stats", get(stats))
        .route_layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let allowed = token.as_deref().map_or(true, |t| bearer_is(&req, t));
                async move {
                    if allowed {
                        next.run(req).await
                    } else {
                        (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Bearer")],
                            "admin routes want Authorization: Bearer $ADMIN_TOKEN\n",
                        )
                            .into_response()
                    }
                }
            },
        ))
        .with_state(cache)
}

/// Whether `req` carries `Authorization: Bearer <token>`.
fn bearer_is(req: &axum::extract::Request, token: &str) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| given.as_bytes() == token.as_bytes())
}

/// Waits a moment for the purge to reach Redis and the other instances,
/// and says whether it did (it is applied here already, and never lost).
async fn confirmed(purged: tower_ssr::cache::Purged) -> &'static str {
    match purged.confirmed(Duration::from_secs(1)).await {
        Ok(()) => "applied everywhere",
        Err(_) => "applied here; queued for Redis and the other instances",
    }
}

async fn purge(
    State(cache): State<ResponseCache>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let what = if let Some(path) = q.get("path") {
        let done = confirmed(cache.purge_path(path)).await;
        format!("purged path {path}: {done}\n")
    } else if let Some(prefix) = q.get("prefix") {
        let done = confirmed(cache.purge_prefix(prefix)).await;
        format!("purged prefix {prefix}: {done}\n")
    } else if let Some(tag) = q.get("tag") {
        let done = confirmed(cache.purge_tag(tag)).await;
        format!("purged tag {tag}: {done}\n")
    } else if q.contains_key("all") {
        let done = confirmed(cache.purge_all()).await;
        format!("purged everything: {done}\n")
    } else {
        return (
            StatusCode::BAD_REQUEST,
            "use ?path=/, ?prefix=/posts/, ?tag=pages or ?all\n",
        )
            .into_response();
    };
    ([(header::CACHE_CONTROL, "no-store")], what).into_response()
}

/// Soft purge: the pages stay, marked stale; the next request for each is
/// answered at once while one re-render runs.
async fn revalidate(
    State(cache): State<ResponseCache>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let what = if let Some(path) = q.get("path") {
        let done = confirmed(cache.revalidate_path(path)).await;
        format!("revalidating path {path}: {done}\n")
    } else if let Some(prefix) = q.get("prefix") {
        let done = confirmed(cache.revalidate_prefix(prefix)).await;
        format!("revalidating prefix {prefix}: {done}\n")
    } else if let Some(tag) = q.get("tag") {
        let done = confirmed(cache.revalidate_tag(tag)).await;
        format!("revalidating tag {tag}: {done}\n")
    } else {
        return (
            StatusCode::BAD_REQUEST,
            "use ?path=/, ?prefix=/posts/ or ?tag=pages\n",
        )
            .into_response();
    };
    ([(header::CACHE_CONTROL, "no-store")], what).into_response()
}

async fn stats(State(cache): State<ResponseCache>) -> Response {
    let s = cache.stats();
    let text = format!(
        "hits {}\nmisses {}\nstale {}\nrevalidations {}\ncoalesced {}\nstores {}\nevictions {}\npurges {}\nbytes {}\nentries {}\n",
        s.hits, s.misses, s.stale, s.revalidations, s.coalesced, s.stores, s.evictions, s.purges, s.bytes, s.entries
    );
    ([(header::CACHE_CONTROL, "no-store")], text).into_response()
}

/// Post pages come from a pool of in-process renderer workers, balanced by
/// least requests in flight (bodies included). A real app would give each
/// worker its own thread or JS isolate; here they share the runtime.
fn renderer_workers() -> Result<
    impl tower::Service<
            axum::extract::Request,
            Response = impl IntoResponse,
            Error = std::convert::Infallible,
            Future = impl Send,
        > + Clone
        + Send
        + Sync,
    Box<dyn std::error::Error>,
> {
    use tower_ssr::balance::{Balance, Endpoints, LeastInFlight};
    let workers = Endpoints::new(LeastInFlight::new());
    for name in ["worker-1", "worker-2", "worker-3"] {
        let worker = tower::service_fn(move |req: axum::extract::Request| async move {
            let mut res = Html(render(req.uri().path())).into_response();
            res.headers_mut()
                .insert("x-worker", HeaderValue::from_static(name));
            Ok::<_, std::convert::Infallible>(res)
        });
        workers.add(name, worker)?;
    }
    // Any request body balances; retries (on by default) replay the body
    // types they know (axum's with the `axum` feature).
    Ok(Balance::new(workers))
}

async fn asset(Path(file): Path<String>) -> Response {
    // Fingerprinted bundles only: app.<hex hash>.js
    let hash = file
        .strip_prefix("app.")
        .and_then(|f| f.strip_suffix(".js"));
    match hash {
        Some(h) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()) => (
            [(header::CONTENT_TYPE, "text/javascript")],
            format!("console.log(\"app bundle {h}\");\n"),
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn account() -> Response {
    let mut res = Html(render("/account")).into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("session=demo; Path=/; HttpOnly"),
    );
    res
}

/// A deterministic stand-in for an SSR framework: the same URL always gives
/// the same bytes, after about 1–2 ms of CPU.
fn render(path: &str) -> String {
    let mut seed = path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    const WORDS: [&str; 12] = [
        "render", "stream", "hydrate", "cache", "edge", "layout", "props", "route", "island",
        "signal", "suspense", "shell",
    ];
    let mut html = String::with_capacity(40 * 1024);
    html.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>");
    html.push_str(path);
    html.push_str(
        "</title><script src=\"/assets/app.3f9a1c.js\" defer></script></head><body><main>",
    );
    for section in 0..60 {
        html.push_str(&format!(
            "<section id=\"s{section}\"><h2>Section {section}</h2><p>"
        ));
        for _ in 0..70 {
            // Component work: a little arithmetic per word, as a virtual DOM
            // diff or template engine would spend.
            let mut x = next();
            for _ in 0..300 {
                x = std::hint::black_box(x.rotate_left(5) ^ x.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            }
            html.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
            html.push(' ');
        }
        html.push_str("</p></section>");
    }
    html.push_str("</main></body></html>\n");
    html
}
