//! The shared Redis tier against a real `redis-server` on 127.0.0.1.
//!
//! Two cache instances in one test (two separate stacks, each with its own
//! memory tier, each served on its own socket) stand for two processes.
//! Most tests share the server whose URL is in `TOWER_SSR_REDIS_URL`, or
//! else one this binary starts from `PATH` (`tests/common/redis.rs`), each
//! in a key namespace of its own; the outage and write-refusal tests start
//! a private `redis-server` so they can kill it or starve it. Without a
//! Redis they are reported as ignored (`build.rs` sets the cfg).
//!
//! The tests over the shared server run twice (`on_both!`): on one node
//! and on a Redis Cluster of three masters (`TOWER_SSR_REDIS_CLUSTER_URLS`,
//! or one this binary makes from `PATH`), where keys of one page must
//! share a slot and purges must reach every master; a few more look at the
//! cluster alone. The outage tests (`on_every_outage!`: purges are never
//! lost while Redis is paused, killed and restarted empty, or refusing
//! writes) run on a private server and on a private cluster of three
//! masters, struck whole, or only the master that holds the purge log's
//! slot, or only the one that holds the test's pages.
#![cfg(feature = "redis")]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::Uri;
use axum::response::Response;
use axum::Router;
use common::redis::{
    answers_ping, cluster_urls, command, free_port, pid, raw_command, redis_url, signal,
    spawn_watched, Cluster,
};
use common::{get_with, serve, Seen};
use tower_ssr::cache::{CacheLayer, PurgeError, RedisKeys, RedisTier, ResponseCache};

/// A hang guard only: nothing here is expected to take more than moments.
const PATIENCE: Duration = Duration::from_secs(20);

/// A namespace of its own per test and run, so tests sharing one server
/// never see each other's entries or purges.
fn namespace(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test-{test}-{}-{nanos}", std::process::id())
}

/// The renderer behind both instances: counts renders per path-and-query.
/// `kb` sets the body size, `count` makes each render differ, `tag` a Surrogate-Key, `sleep` a render time in
/// milliseconds, `ttl` the `s-maxage` (60 by default), `swr` a
/// `stale-while-revalidate`; `gate` holds the
/// render until the test lets it go.
#[derive(Clone)]
struct Origin {
    renders: Arc<Mutex<HashMap<String, usize>>>,
    /// Renders with `gate` in the query wait for a permit here.
    gate: Arc<tokio::sync::Semaphore>,
}

impl Default for Origin {
    fn default() -> Self {
        Origin {
            renders: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }
}

impl Origin {
    fn renders(&self, pq: &str) -> usize {
        self.renders.lock().unwrap().get(pq).copied().unwrap_or(0)
    }
}

async fn render(
    State(origin): State<Origin>,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let pq = uri.path_and_query().unwrap().as_str().to_owned();
    let nth = {
        let mut renders = origin.renders.lock().unwrap();
        let n = renders.entry(pq.clone()).or_insert(0);
        *n += 1;
        *n
    };
    if q.contains_key("gate") {
        origin.gate.acquire().await.unwrap().forget();
    }
    if let Some(ms) = q.get("sleep") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    let kb: usize = q.get("kb").map_or(1, |k| k.parse().unwrap());
    let body = if q.contains_key("noise") {
        // Random lowercase letters: text that compresses to about 0.6.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..kb * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b'a' + (x % 26) as u8
            })
            .collect::<Vec<u8>>()
    } else {
        format!("<p>{pq}</p>")
            .into_bytes()
            .into_iter()
            .cycle()
            .take(kb * 1024)
            .collect::<Vec<u8>>()
    };
    // `count`: each render differs from the one before (a changed page).
    let body = if q.contains_key("count") {
        [body, format!("<!-- render {nth} -->").into_bytes()].concat()
    } else {
        body
    };
    let ttl = q.get("ttl").map_or("60", String::as_str);
    let swr = q
        .get("swr")
        .map_or(String::new(), |s| format!(", stale-while-revalidate={s}"));
    let mut res = Response::builder()
        .header("cache-control", format!("public, s-maxage={ttl}{swr}"))
        .header("content-type", "text/html");
    if let Some(tag) = q.get("tag") {
        res = res.header("surrogate-key", tag.as_str());
    }
    res.body(Body::from(body)).unwrap()
}

/// One instance: its own cache (own memory tier) on the shared Redis.
async fn instance(origin: &Origin, tier: RedisTier) -> (SocketAddr, ResponseCache) {
    let cache = ResponseCache::builder().redis(tier).build();
    let app = Router::new()
        .fallback(render)
        .with_state(origin.clone())
        .layer(CacheLayer::new(cache.clone()));
    let addr = serve(app).await;
    (addr, cache)
}

/// Both instances are reached under the same public host, as behind a
/// load balancer (the host is part of the cache key).
async fn get(addr: SocketAddr, path: &str) -> Seen {
    tokio::time::timeout(PATIENCE, get_with(addr, path, &[("host", "shop.example")]))
        .await
        .expect("a request hung")
}

/// Polls `cond` until it holds; panics after [`PATIENCE`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Where the shared tier runs: every test over the shared server runs on
/// both (`on_both!`), one `redis-server` and a Redis Cluster of three
/// masters (`common::redis::cluster_urls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    Single,
    Cluster,
}

impl Setup {
    /// A tier on it, in namespace `ns`.
    fn tier(self, ns: &str) -> RedisTier {
        match self {
            Setup::Single => RedisTier::new(&redis_url()).unwrap(),
            Setup::Cluster => RedisTier::cluster(cluster_urls()).unwrap(),
        }
        .namespace(ns)
    }

    /// Where `cache_key` lives in namespace `ns`.
    fn keys(self, ns: &str, cache_key: &str) -> RedisKeys {
        self.tier(ns).keys_for(cache_key)
    }

    /// Sends one RESP command whose first argument is a key over a raw
    /// (blocking, loopback) socket, to the node that holds the key (a
    /// cluster's `-MOVED` is followed), and returns the reply: enough to
    /// plant values no instance wrote.
    fn resp(self, args: &[&[u8]]) -> String {
        let url = match self {
            Setup::Single => redis_url(),
            Setup::Cluster => cluster_urls()[0].clone(),
        };
        let reply = raw_command(host_port(&url), args);
        match reply.strip_prefix("-MOVED ") {
            Some(moved) => raw_command(moved.split_whitespace().nth(1).unwrap(), args),
            None => reply,
        }
    }
}

/// `host:port` of a `redis://` URL.
fn host_port(url: &str) -> &str {
    let rest = url.trim_start_matches("redis://").trim_end_matches('/');
    rest.rsplit('@').next().unwrap()
}

/// Runs each `async fn name(setup: Setup)` as two tests, `name::single_node`
/// and `name::cluster`, each ignored (with the reason) where its Redis is
/// not at hand.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(tower_ssr_redis),
                ignore = "needs redis-server on PATH or TOWER_SSR_REDIS_URL"
            )]
            async fn single_node() {
                super::$name(super::Setup::Single).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(tower_ssr_redis_cluster),
                ignore = "needs redis-server and redis-cli on PATH or TOWER_SSR_REDIS_CLUSTER_URLS"
            )]
            async fn cluster() {
                super::$name(super::Setup::Cluster).await
            }
        }
    )*};
}

on_both!(
    a_page_rendered_by_one_instance_is_a_hit_on_the_other,
    a_purge_on_one_instance_empties_both,
    a_burst_over_both_instances_renders_once_with_the_render_lock,
    a_value_of_another_format_version_or_garbage_is_a_miss,
    hostile_freshness_values_from_redis_are_capped_not_a_panic,
    values_over_the_size_cap_stay_in_memory,
    a_lock_left_by_a_crashed_instance_blocks_no_one_past_its_expiry,
    an_unsafe_method_on_one_instance_invalidates_the_uri_on_both,
    a_foreign_value_under_an_entry_key_is_a_miss_and_is_overwritten,
    values_over_the_size_cap_are_not_read_and_the_tier_stays_on,
    the_tag_index_forgets_entries_that_expired,
    a_write_rendered_before_a_purge_does_not_land_after_it,
    a_revalidation_on_one_instance_renders_once_across_both,
    a_revalidation_serves_stale_on_both_and_renders_each_key_once,
);

async fn two_instances(
    test: &str,
    setup: Setup,
    lock: bool,
) -> (Origin, [(SocketAddr, ResponseCache); 2]) {
    let ns = namespace(test);
    let tier = || {
        let t = setup.tier(&ns);
        if lock {
            t.render_lock(PATIENCE)
        } else {
            t
        }
    };
    let origin = Origin::default();
    let a = instance(&origin, tier()).await;
    let b = instance(&origin, tier()).await;
    for (_, cache) in [&a, &b] {
        assert!(
            cache.redis_ready(PATIENCE).await,
            "redis ({setup:?}) is not reachable"
        );
    }
    (origin, [a, b])
}

async fn a_page_rendered_by_one_instance_is_a_hit_on_the_other(setup: Setup) {
    let (origin, [(a, ca), (b, cb)]) = two_instances("share", setup, false).await;

    let first = get(a, "/posts/1?kb=30").await;
    assert_eq!(first.one("cache-status"), "tower-ssr; fwd=uri-miss; stored");
    eventually("the write reaches redis", || ca.stats().l2_writes == 1).await;

    let other = get(b, "/posts/1?kb=30").await;
    assert!(
        other
            .one("cache-status")
            .starts_with("tower-ssr; hit; ttl=")
            && other.one("cache-status").ends_with("; detail=redis"),
        "{:?}",
        other.headers
    );
    assert_eq!(other.body, first.body);
    assert_eq!(other.status, 200);
    assert_eq!(origin.renders("/posts/1?kb=30"), 1);
    // The Redis hit filled the other instance's memory.
    let again = get(b, "/posts/1?kb=30").await;
    assert!(!again.one("cache-status").contains("redis"));
    let (sa, sb) = (ca.stats(), cb.stats());
    assert_eq!((sb.l2_hits, sb.hits), (1, 1));
    assert_eq!(
        sa.l2_misses, 1,
        "the first instance looked before rendering"
    );
    assert_eq!(
        sa.l2_errors + sb.l2_errors + sa.l2_timeouts + sb.l2_timeouts,
        0
    );
}

async fn a_purge_on_one_instance_empties_both(setup: Setup) {
    let (origin, [(a, ca), (b, cb)]) = two_instances("purge", setup, false).await;

    for path in ["/p/1?tag=pages", "/p/2", "/q/1"] {
        get(a, path).await;
    }
    eventually("three writes", || ca.stats().l2_writes == 3).await;
    for path in ["/p/1?tag=pages", "/p/2", "/q/1"] {
        assert!(get(b, path).await.one("cache-status").contains("redis"));
    }

    // By tag, on the other instance: both memories and Redis lose it.
    cb.purge_tag("pages");
    eventually("the purge reaches the first instance", || {
        ca.stats().remote_purges == 1
    })
    .await;
    let seen = get(a, "/p/1?tag=pages").await;
    assert_eq!(seen.one("cache-status"), "tower-ssr; fwd=uri-miss; stored");
    assert_eq!(origin.renders("/p/1?tag=pages"), 2);
    eventually("the new render is written", || ca.stats().l2_writes == 4).await;
    // The other instance's memory lost it too: its answer comes from Redis.
    let seen = get(b, "/p/1?tag=pages").await;
    assert!(
        seen.one("cache-status").ends_with("detail=redis"),
        "{:?}",
        seen.headers
    );

    // By prefix: the rest of /p/ goes, /q/ stays.
    ca.purge_prefix("/p/");
    eventually("the prefix purge reaches the second instance", || {
        cb.stats().remote_purges == 1
    })
    .await;
    assert!(get(b, "/p/2")
        .await
        .one("cache-status")
        .contains("fwd=uri-miss"));
    assert!(get(b, "/q/1").await.one("cache-status").contains("hit"));
    assert_eq!(origin.renders("/q/1"), 1);

    // All, including what is only in Redis.
    get(a, "/r/1").await;
    eventually("the write", || ca.stats().l2_writes >= 5).await;
    ca.purge_all();
    eventually("purge all reaches the second instance", || {
        cb.stats().remote_purges == 2
    })
    .await;
    assert!(get(b, "/q/1")
        .await
        .one("cache-status")
        .contains("fwd=uri-miss"));
    assert!(get(b, "/r/1")
        .await
        .one("cache-status")
        .contains("fwd=uri-miss"));
}

async fn a_burst_over_both_instances_renders_once_with_the_render_lock(setup: Setup) {
    let (origin, [(a, _), (b, _)]) = two_instances("lock", setup, true).await;

    let mut burst = Vec::new();
    for i in 0..12 {
        let addr = if i % 2 == 0 { a } else { b };
        burst.push(tokio::spawn(async move {
            get(addr, "/hot?sleep=200&kb=30").await
        }));
    }
    for r in burst {
        let seen = r.await.unwrap();
        assert_eq!(seen.status, 200);
        assert_eq!(seen.body.len(), 30 * 1024);
    }
    assert_eq!(origin.renders("/hot?sleep=200&kb=30"), 1);
}

async fn a_value_of_another_format_version_or_garbage_is_a_miss(setup: Setup) {
    let ns = namespace("version");
    let origin = Origin::default();
    let (a, ca) = instance(&origin, setup.tier(&ns)).await;
    assert!(ca.redis_ready(PATIENCE).await);

    let key = setup.keys(&ns, "http://shop.example/v").entry;
    // Version 99 of our magic, plain garbage, and a value of version 1
    // (an older release, during a rolling deploy).
    setup.resp(&[b"HSET", key.as_bytes(), b"f1", b"TSR\x63rest"]);
    setup.resp(&[b"HSET", key.as_bytes(), b"f2", b"<html>"]);
    let old = crafted_v1(60, 0, 60_000, b"from an older release");
    setup.resp(&[b"HSET", key.as_bytes(), b"f3", &old]);
    let seen = get(a, "/v").await;
    assert_eq!(seen.one("cache-status"), "tower-ssr; fwd=uri-miss; stored");
    assert_eq!(origin.renders("/v"), 1);
    let s = ca.stats();
    assert_eq!((s.l2_misses, s.l2_errors), (1, 0));
}

/// A value in this crate's format (version 2) with the given freshness
/// fields, as another writer could leave it in Redis.
fn crafted(lifetime: u64, initial_age: u64, keep_for_ms: u64, body: &[u8]) -> Vec<u8> {
    let v1 = crafted_v1(lifetime, initial_age, keep_for_ms, body);
    let mut v = b"TSR\x02".to_vec();
    v.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(body).to_be_bytes());
    v.extend_from_slice(&v1[4..]);
    v.push(0); // no representations
    v
}

/// The same in the format of version 1 (before representations), as an
/// instance of an older release leaves it.
fn crafted_v1(lifetime: u64, initial_age: u64, keep_for_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut v = b"TSR\x01".to_vec();
    v.extend_from_slice(&200u16.to_be_bytes());
    v.push(2); // HTTP/1.1
    v.push(0); // no flags
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    v.extend_from_slice(&u64::try_from(now.as_millis()).unwrap().to_be_bytes());
    v.extend_from_slice(&lifetime.to_be_bytes());
    v.extend_from_slice(&initial_age.to_be_bytes());
    for _ in 0..2 {
        // stale-while-revalidate and stale-if-error, both at the maximum
        v.push(1);
        v.extend_from_slice(&u64::MAX.to_be_bytes());
    }
    v.extend_from_slice(&keep_for_ms.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes()); // headers
    v.extend_from_slice(&0u32.to_be_bytes()); // vary
    v.push(0); // no user key
    v.extend_from_slice(&0u32.to_be_bytes()); // tags
    v.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

async fn hostile_freshness_values_from_redis_are_capped_not_a_panic(setup: Setup) {
    let ns = namespace("hostile");
    let origin = Origin::default();
    let (a, ca) = instance(&origin, setup.tier(&ns)).await;
    assert!(ca.redis_ready(PATIENCE).await);

    // Lifetimes past 2^63 overflowed `ttl` (a panic in debug builds, fresh
    // forever in release); a keep-for of u64::MAX ms overflowed deadlines.
    for (path, lifetime, age, keep) in [
        ("/h1", 1u64 << 63, 5, 60_000),
        ("/h2", u64::MAX, 0, 60_000),
        ("/h3", 60, u64::MAX, 60_000),
        ("/h4", 60, 0, u64::MAX),
    ] {
        let key = setup.keys(&ns, &format!("http://shop.example{path}")).entry;
        let value = crafted(lifetime, age, keep, b"from-redis");
        setup.resp(&[b"HSET", key.as_bytes(), b"f", &value]);
        for _ in 0..2 {
            let seen = get(a, path).await;
            assert_eq!(seen.status, 200, "{path}");
        }
    }
    // Capped at 2^31 s (RFC 9111 §1.2.2) like any header value: still fresh.
    let seen = get(a, "/h2").await;
    assert_eq!(&seen.body[..], b"from-redis");
}

async fn values_over_the_size_cap_stay_in_memory(setup: Setup) {
    let ns = namespace("cap");
    let tier = || setup.tier(&ns).max_value_bytes(8 * 1024);
    let origin = Origin::default();
    let (a, ca) = instance(&origin, tier()).await;
    let (b, cb) = instance(&origin, tier()).await;
    assert!(ca.redis_ready(PATIENCE).await && cb.redis_ready(PATIENCE).await);

    get(a, "/big?kb=30").await;
    get(a, "/small?kb=1").await;
    eventually("the small page is written", || ca.stats().l2_writes == 1).await;
    assert!(get(a, "/big?kb=30")
        .await
        .one("cache-status")
        .contains("hit"));
    assert!(get(b, "/small?kb=1")
        .await
        .one("cache-status")
        .contains("redis"));
    assert!(get(b, "/big?kb=30")
        .await
        .one("cache-status")
        .contains("fwd=uri-miss"));
    assert_eq!(origin.renders("/big?kb=30"), 2);
    assert_eq!(ca.stats().l2_writes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_redis_listening_requests_go_on_with_memory_alone() {
    with_no_redis_listening(RedisTier::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_cluster_node_listening_requests_go_on_with_memory_alone() {
    with_no_redis_listening(|url| RedisTier::cluster([url])).await;
}

async fn with_no_redis_listening(
    tier: impl Fn(&str) -> Result<RedisTier, tower_ssr::cache::InvalidRedisUrl>,
) {
    // Needs no server: a port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let origin = Origin::default();
    let tier = tier(&format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .retry_after(Duration::from_millis(1));
    let (a, ca) = instance(&origin, tier).await;
    assert!(!ca.redis_ready(Duration::from_millis(50)).await);

    for _ in 0..3 {
        let seen = get(a, "/down").await;
        assert_eq!(seen.status, 200);
    }
    assert_eq!(origin.renders("/down"), 1, "memory still caches");
    ca.purge_all(); // fire and forget: must not panic or hang
    assert!(get(a, "/down")
        .await
        .one("cache-status")
        .contains("fwd=uri-miss"));
    let s = ca.stats();
    assert!(s.l2_errors + s.l2_timeouts >= 1, "{s:?}");
}

/// A private `redis-server` this test may kill and restart.
struct Server {
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn start(port: u16) -> Option<Child> {
        Self::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> Option<Child> {
        spawn_watched(port, extra)
    }

    async fn up(&self) {
        let start = tokio::time::Instant::now();
        while !answers_ping(self.port) {
            assert!(start.elapsed() < PATIENCE, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server and waits until it is gone (its port free again).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // End of input tells the watching shell to stop the server and
            // wait for it.
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(tower_ssr_redis_server),
    ignore = "needs redis-server on PATH (starts and stops its own)"
)]
async fn killing_redis_fails_no_request_and_a_restart_restores_sharing() {
    let port = free_port();
    let child = Server::start(port).expect("redis-server on PATH");
    let mut server = Server {
        port,
        child: Some(child),
    };
    server.up().await;
    let url = format!("redis://127.0.0.1:{port}");
    let tier = || {
        RedisTier::new(&url)
            .unwrap()
            .retry_after(Duration::from_millis(50))
    };
    let origin = Origin::default();
    let (a, ca) = instance(&origin, tier()).await;
    let (b, cb) = instance(&origin, tier()).await;
    assert!(ca.redis_ready(PATIENCE).await && cb.redis_ready(PATIENCE).await);

    get(a, "/before").await;
    eventually("the write", || ca.stats().l2_writes == 1).await;
    assert!(get(b, "/before")
        .await
        .one("cache-status")
        .contains("redis"));

    server.kill();
    for path in ["/before", "/during", "/during", "/during2"] {
        for addr in [a, b] {
            let seen = get(addr, path).await;
            assert_eq!(seen.status, 200, "{path}");
        }
    }
    // Each instance rendered what it could not share, once, from memory after.
    assert_eq!(origin.renders("/during"), 2);
    assert_eq!(origin.renders("/before"), 1);
    let s = ca.stats();
    assert!(s.l2_errors + s.l2_timeouts >= 1, "{s:?}");

    server.child = Server::start(port);
    server.up().await;
    assert!(ca.redis_ready(PATIENCE).await && cb.redis_ready(PATIENCE).await);
    let writes = ca.stats().l2_writes;
    get(a, "/after").await;
    eventually("a write after the restart", || {
        ca.stats().l2_writes > writes
    })
    .await;
    assert!(get(b, "/after").await.one("cache-status").contains("redis"));
    assert_eq!(origin.renders("/after"), 1);
    // And purges travel again.
    ca.purge_all();
    eventually("purge after the restart", || cb.stats().remote_purges >= 1).await;
    assert!(get(b, "/after")
        .await
        .one("cache-status")
        .contains("fwd=uri-miss"));
}

async fn a_lock_left_by_a_crashed_instance_blocks_no_one_past_its_expiry(setup: Setup) {
    let ns = namespace("crashed");
    let origin = Origin::default();
    // Waits far longer than the planted lock lives: only its expiry can
    // let the request through.
    let tier = setup.tier(&ns).render_lock(PATIENCE);
    let (a, ca) = instance(&origin, tier).await;
    assert!(ca.redis_ready(PATIENCE).await);

    let lock = setup.keys(&ns, "http://shop.example/locked").lock;
    let set = setup.resp(&[b"SET", lock.as_bytes(), b"crashed-holder", b"PX", b"300"]);
    assert!(set.starts_with("+OK"), "{set}");
    let seen = get(a, "/locked").await;
    assert_eq!(seen.status, 200);
    assert_eq!(seen.one("cache-status"), "tower-ssr; fwd=uri-miss; stored");
    assert_eq!(origin.renders("/locked"), 1);
}

async fn an_unsafe_method_on_one_instance_invalidates_the_uri_on_both(setup: Setup) {
    let (origin, [(a, ca), (b, cb)]) = two_instances("unsafe", setup, false).await;

    get(a, "/cart").await;
    eventually("the write", || ca.stats().l2_writes == 1).await;
    assert!(get(b, "/cart").await.one("cache-status").contains("redis"));
    assert!(get(b, "/cart").await.one("cache-status").contains("hit"));

    // RFC 9111 §4.4 on the first instance; the second hears of it.
    let posted = tokio::time::timeout(
        PATIENCE,
        common::send(
            a,
            axum::http::Method::POST,
            "/cart",
            &[("host", "shop.example")],
        ),
    )
    .await
    .unwrap();
    assert_eq!(posted.status, 200);
    eventually("the invalidation reaches the second instance", || {
        cb.stats().remote_purges == 1
    })
    .await;
    assert!(get(b, "/cart")
        .await
        .one("cache-status")
        .contains("fwd=uri-miss"));
    assert_eq!(origin.renders("/cart"), 3, "GET, POST, and the GET after");
}

mod a_redis_refusing_writes_does_not_hold_misses_for_the_render_lock_wait {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(tower_ssr_redis_server),
        ignore = "needs redis-server on PATH (starts and stops its own)"
    )]
    async fn single_node() {
        super::a_redis_refusing_writes_does_not_hold_misses_for_the_render_lock_wait(
            super::Outage::Node,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(all(tower_ssr_redis_server, tower_ssr_redis_cluster)),
        ignore = "needs redis-server and redis-cli on PATH (makes and stops its own cluster)"
    )]
    async fn cluster_all_masters() {
        super::a_redis_refusing_writes_does_not_hold_misses_for_the_render_lock_wait(
            super::Outage::AllMasters,
        )
        .await
    }
}

async fn a_redis_refusing_writes_does_not_hold_misses_for_the_render_lock_wait(outage: Outage) {
    // A private server (or cluster): the whole of it refuses writes (out
    // of memory, no eviction), which would break every other test on a
    // shared one.
    let mut redis = Private::start(outage, "oomlock").await;
    let pages = redis.pages(3, |i| format!("/oom/{i}"));
    redis.starve();
    // A lock wait far past the hang guard: only telling "held" apart from
    // "Redis said no" lets these requests through at all.
    let tier = redis.tier().render_lock(Duration::from_secs(3600));
    let origin = Origin::default();
    let (a, ca) = instance(&origin, tier).await;
    assert!(ca.redis_ready(PATIENCE).await);

    for path in &pages {
        let seen = get(a, path).await;
        assert_eq!(seen.status, 200, "{path}");
        assert_eq!(origin.renders(path), 1);
    }
    let s = ca.stats();
    // Per miss: the refused lock, and the refused write; no polling.
    assert!(s.l2_errors <= 6, "{s:?}");
}

async fn a_foreign_value_under_an_entry_key_is_a_miss_and_is_overwritten(setup: Setup) {
    let ns = namespace("wrongtype");
    let origin = Origin::default();
    let (a, ca) = instance(&origin, setup.tier(&ns)).await;
    let (b, cb) = instance(&origin, setup.tier(&ns)).await;
    assert!(ca.redis_ready(PATIENCE).await && cb.redis_ready(PATIENCE).await);

    // An old format, or another program: a string where a hash belongs.
    let key = setup.keys(&ns, "http://shop.example/w").entry;
    let set = setup.resp(&[b"SET", key.as_bytes(), b"old-format", b"EX", b"600"]);
    assert!(set.starts_with("+OK"), "{set}");

    let seen = get(a, "/w").await;
    assert_eq!(seen.one("cache-status"), "tower-ssr; fwd=uri-miss; stored");
    eventually("the write replaces the foreign value", || {
        ca.stats().l2_writes == 1
    })
    .await;
    let seen = get(b, "/w").await;
    assert!(
        seen.one("cache-status").ends_with("detail=redis"),
        "{:?}",
        seen.headers
    );
    assert_eq!(origin.renders("/w"), 1);
    let (sa, sb) = (ca.stats(), cb.stats());
    assert_eq!((sa.l2_errors, sb.l2_errors), (0, 0), "{sa:?} {sb:?}");
}

async fn values_over_the_size_cap_are_not_read_and_the_tier_stays_on(setup: Setup) {
    let ns = namespace("bigread");
    let origin = Origin::default();
    let tier = setup.tier(&ns).max_value_bytes(8 * 1024);
    let (a, ca) = instance(&origin, tier).await;
    assert!(ca.redis_ready(PATIENCE).await);

    // Left by a writer with a larger cap: a valid, fresh entry of 64 KiB
    // next to raw values of 1 MiB. Fetching them all on every miss of the
    // key is what stalled the tier for every other key.
    let big = setup.keys(&ns, "http://shop.example/big").entry;
    let value = crafted(600, 0, 600_000, &vec![b'b'; 64 * 1024]);
    setup.resp(&[b"HSET", big.as_bytes(), b"f", &value]);
    let raw = vec![b'g'; 1024 * 1024];
    for field in [&b"g1"[..], b"g2", b"g3", b"g4"] {
        setup.resp(&[b"HSET", big.as_bytes(), field, &raw]);
    }
    let small = setup.keys(&ns, "http://shop.example/small").entry;
    let value = crafted(600, 0, 600_000, b"shared");
    setup.resp(&[b"HSET", small.as_bytes(), b"f", &value]);

    let seen = get(a, "/big").await;
    assert_eq!(seen.one("cache-status"), "tower-ssr; fwd=uri-miss; stored");
    assert_eq!(origin.renders("/big"), 1);
    let seen = get(a, "/small").await;
    assert!(
        seen.one("cache-status").ends_with("detail=redis"),
        "{:?}",
        seen.headers
    );
    assert_eq!(&seen.body[..], b"shared");
    let s = ca.stats();
    assert_eq!((s.l2_errors, s.l2_timeouts), (0, 0), "{s:?}");
}

async fn the_tag_index_forgets_entries_that_expired(setup: Setup) {
    let ns = namespace("tagindex");
    let origin = Origin::default();
    let (a, ca) = instance(&origin, setup.tier(&ns)).await;
    assert!(ca.redis_ready(PATIENCE).await);

    // A long-lived entry keeps the index itself alive throughout.
    get(a, "/t/long?tag=hot").await;
    get(a, "/t/1?tag=hot&ttl=3").await;
    eventually("the writes", || ca.stats().l2_writes == 2).await;
    let keys = |path: &str| setup.keys(&ns, &format!("http://shop.example{path}"));
    let short = keys("/t/1?tag=hot&ttl=3").entry;
    assert_eq!(setup.resp(&[b"EXISTS", short.as_bytes()]), ":1\r\n");
    // Redis drops the entry after its seconds (3: with 1 the check above
    // raced the expiry once in a full run on the loaded machine); the
    // index must follow.
    let start = tokio::time::Instant::now();
    while setup.resp(&[b"EXISTS", short.as_bytes()]) != ":0\r\n" {
        assert!(start.elapsed() < PATIENCE, "the entry never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    get(a, "/t/2?tag=hot").await;
    eventually("the third write", || ca.stats().l2_writes == 3).await;
    // One index on one node; on a cluster, one per bucket of the three.
    let mut indexes: Vec<String> = ["/t/long?tag=hot", "/t/1?tag=hot&ttl=3", "/t/2?tag=hot"]
        .iter()
        .map(|p| keys(p).tag_index("hot"))
        .collect();
    indexes.sort();
    indexes.dedup();
    let members: usize = indexes
        .iter()
        .map(|index| {
            // Counted whatever the index's type (a plain set before this fix).
            let card: &[u8] = if setup.resp(&[b"TYPE", index.as_bytes()]) == "+set\r\n" {
                b"SCARD"
            } else {
                b"ZCARD"
            };
            let n = setup.resp(&[card, index.as_bytes()]);
            n.trim_start_matches(':')
                .trim_end()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(members, 2, "only the live entries stay in the index");

    // A purge by tag still reaches the live ones.
    ca.purge_tag("hot");
    let live = keys("/t/long?tag=hot").entry;
    let start = tokio::time::Instant::now();
    while setup.resp(&[b"EXISTS", live.as_bytes()]) != ":0\r\n" {
        assert!(start.elapsed() < PATIENCE, "the purge never reached Redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let other = keys("/t/2?tag=hot").entry;
    assert_eq!(setup.resp(&[b"EXISTS", other.as_bytes()]), ":0\r\n");
    for index in &indexes {
        assert_eq!(setup.resp(&[b"EXISTS", index.as_bytes()]), ":0\r\n");
    }
}

async fn a_write_rendered_before_a_purge_does_not_land_after_it(setup: Setup) {
    let (origin, [(a, ca), (b, cb)]) = two_instances("purgerace", setup, false).await;

    // The first instance misses and renders; the page changes meanwhile
    // and the second instance purges everything.
    let first = tokio::spawn(async move { get(a, "/race?gate").await });
    eventually("the render began", || origin.renders("/race?gate") == 1).await;
    cb.purge_all();
    eventually("the purge is done in Redis and heard", || {
        ca.stats().remote_purges == 1
    })
    .await;
    // The render from before the purge ends now: its write must not put
    // the old page back for every instance.
    origin.gate.add_permits(1);
    assert_eq!(first.await.unwrap().status, 200);
    // A later write from the same instance, to know the first had its turn.
    get(a, "/after-race").await;
    eventually("the later write", || ca.stats().l2_writes >= 1).await;
    origin.gate.add_permits(1); // for the render the test expects
    let seen = get(b, "/race?gate").await;
    assert_eq!(
        seen.one("cache-status"),
        "tower-ssr; fwd=uri-miss; stored",
        "the pre-purge render came back from Redis"
    );
}

/// Where an outage strikes, in the outage tests: a private `redis-server`,
/// or a private Redis Cluster of three masters (all of them, or one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// The one node.
    Node,
    /// Every master.
    AllMasters,
    /// The master holding the purge log's slot; the test's pages are on
    /// another.
    LogMaster,
    /// The master holding the test's pages; the purge log is on another.
    PageMaster,
}

/// Runs each `async fn name(outage: Outage)` as four tests, one per
/// [`Outage`]: `name::single_node`, `name::cluster_all_masters`,
/// `name::cluster_log_master`, `name::cluster_page_master`.
macro_rules! on_every_outage {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(tower_ssr_redis_server),
                ignore = "needs redis-server on PATH (starts and stops its own)"
            )]
            async fn single_node() {
                super::$name(super::Outage::Node).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(all(tower_ssr_redis_server, tower_ssr_redis_cluster)),
                ignore = "needs redis-server and redis-cli on PATH (makes and stops its own cluster)"
            )]
            async fn cluster_all_masters() {
                super::$name(super::Outage::AllMasters).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(all(tower_ssr_redis_server, tower_ssr_redis_cluster)),
                ignore = "needs redis-server and redis-cli on PATH (makes and stops its own cluster)"
            )]
            async fn cluster_log_master() {
                super::$name(super::Outage::LogMaster).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(all(tower_ssr_redis_server, tower_ssr_redis_cluster)),
                ignore = "needs redis-server and redis-cli on PATH (makes and stops its own cluster)"
            )]
            async fn cluster_page_master() {
                super::$name(super::Outage::PageMaster).await
            }
        }
    )*};
}

on_every_outage!(
    a_purge_sent_while_redis_is_paused_is_applied_once_it_resumes,
    a_purge_made_while_redis_is_dead_reaches_the_other_instance_after_a_restart,
    a_purge_made_while_redis_refuses_writes_is_applied_once_it_accepts_them,
);

/// A Redis of one test's own, which it may pause, kill and restart where
/// its [`Outage`] says.
struct Private {
    outage: Outage,
    ns: String,
    redis: PrivateRedis,
    /// The cluster's masters the outage strikes (by index), once the
    /// test's pages are chosen ([`Private::pages`]).
    struck: Vec<usize>,
    /// The one node's pid while it is paused (it answers nothing then).
    paused: Option<u32>,
}

enum PrivateRedis {
    Node(Server),
    Cluster(Cluster),
}

impl Private {
    async fn start(outage: Outage, test: &str) -> Private {
        let redis = if outage == Outage::Node {
            let port = free_port();
            let child = Server::start(port).expect("redis-server on PATH");
            let server = Server {
                port,
                child: Some(child),
            };
            server.up().await;
            PrivateRedis::Node(server)
        } else {
            // Blocking (processes, sleeps): off the runtime's workers.
            PrivateRedis::Cluster(
                tokio::task::spawn_blocking(|| Cluster::start(3))
                    .await
                    .unwrap(),
            )
        };
        Private {
            outage,
            ns: namespace(test),
            redis,
            struck: Vec::new(),
            paused: None,
        }
    }

    /// A tier on it, quick to retry.
    fn tier(&self) -> RedisTier {
        match &self.redis {
            PrivateRedis::Node(s) => RedisTier::new(&format!("redis://127.0.0.1:{}", s.port)),
            PrivateRedis::Cluster(c) => RedisTier::cluster(c.urls()),
        }
        .unwrap()
        .namespace(&self.ns)
        .retry_after(Duration::from_millis(50))
    }

    /// Two instances on it, connected and following the purge log.
    async fn two(&self) -> (Origin, [(SocketAddr, ResponseCache); 2]) {
        let origin = Origin::default();
        let a = instance(&origin, self.tier()).await;
        let b = instance(&origin, self.tier()).await;
        assert!(a.1.redis_ready(PATIENCE).await && b.1.redis_ready(PATIENCE).await);
        (origin, [a, b])
    }

    /// The Redis key of `path`'s entry.
    fn entry(&self, path: &str) -> String {
        self.tier()
            .keys_for(&format!("http://shop.example{path}"))
            .entry
    }

    /// `n` paths of the shape `path(i)` for the test, and the masters the
    /// outage strikes: with [`Outage::LogMaster`] and
    /// [`Outage::PageMaster`], all on one master that does not hold the
    /// purge log. Called once per test.
    fn pages(&mut self, n: usize, path: impl Fn(usize) -> String) -> Vec<String> {
        let PrivateRedis::Cluster(c) = &self.redis else {
            return (0..n).map(path).collect();
        };
        let log = c.owner(&self.tier().keys_for("").log);
        let mut pages: Vec<String> = Vec::new();
        let mut on = None;
        for i in 0.. {
            if pages.len() == n {
                break;
            }
            let p = path(i);
            let owner = c.owner(&self.entry(&p));
            if self.outage == Outage::AllMasters
                || (owner != log && on.map_or(true, |o| o == owner))
            {
                on = Some(owner);
                pages.push(p);
            }
        }
        self.struck = match self.outage {
            Outage::Node => Vec::new(),
            Outage::AllMasters => (0..c.ports.len()).collect(),
            Outage::LogMaster => vec![log],
            Outage::PageMaster => vec![on.unwrap()],
        };
        pages
    }

    /// Whether Redis holds `key` (asked of the master of its slot).
    fn exists(&self, key: &str) -> bool {
        let reply = match &self.redis {
            PrivateRedis::Node(s) => command(s.port, &["EXISTS", key]),
            PrivateRedis::Cluster(c) => command(c.ports[c.owner(key)], &["EXISTS", key]),
        };
        match reply.as_str() {
            ":1\r\n" => true,
            ":0\r\n" => false,
            other => panic!("EXISTS {key}: {other:?}"),
        }
    }

    /// Makes the struck nodes (the one node) refuse writes: out of memory,
    /// no eviction.
    fn starve(&self) {
        self.config(&["maxmemory", "1", "maxmemory-policy", "noeviction"]);
    }

    /// Lets them write again.
    fn feed(&self) {
        self.config(&["maxmemory", "0"]);
    }

    fn config(&self, set: &[&str]) {
        let ports = match &self.redis {
            PrivateRedis::Node(s) => vec![s.port],
            PrivateRedis::Cluster(c) => self.struck.iter().map(|&i| c.ports[i]).collect(),
        };
        for port in ports {
            let args: Vec<&str> = ["CONFIG", "SET"].iter().chain(set).copied().collect();
            let reply = command(port, &args);
            assert!(reply.starts_with("+OK"), "CONFIG SET {set:?}: {reply:?}");
        }
    }

    fn pause(&mut self) {
        match &self.redis {
            PrivateRedis::Node(s) => {
                let pid = pid(s.port);
                self.paused = Some(pid);
                signal(pid, "STOP");
            }
            PrivateRedis::Cluster(c) => self.struck.iter().for_each(|&i| c.pause(i)),
        }
    }

    fn resume(&self) {
        match &self.redis {
            PrivateRedis::Node(_) => signal(self.paused.expect("paused"), "CONT"),
            PrivateRedis::Cluster(c) => self.struck.iter().for_each(|&i| c.resume(i)),
        }
    }

    fn kill(&mut self) {
        match &mut self.redis {
            PrivateRedis::Node(s) => s.kill(),
            PrivateRedis::Cluster(c) => self.struck.iter().for_each(|&i| c.kill(i)),
        }
    }

    /// Restarts what [`Private::kill`] killed (empty, as after a crash
    /// without persistence); a cluster's nodes with their `nodes.conf`, and
    /// waits until the cluster is whole again.
    async fn restart(&mut self) {
        match &mut self.redis {
            PrivateRedis::Node(s) => {
                s.child = Server::start(s.port);
                s.up().await;
            }
            PrivateRedis::Cluster(c) => tokio::task::block_in_place(|| {
                for &i in &self.struck {
                    c.restart(i);
                }
                assert!(c.wait_ok(), "the cluster did not re-form");
            }),
        }
    }
}

async fn a_purge_sent_while_redis_is_paused_is_applied_once_it_resumes(outage: Outage) {
    let mut redis = Private::start(outage, "paused").await;
    let pages = redis.pages(3, |i| format!("/n/{i}?tag=news"));
    let elsewhere = "/elsewhere";
    let (origin, [(a, ca), (b, cb)]) = redis.two().await;
    for path in &pages {
        get(a, path).await;
    }
    eventually("the writes", || ca.stats().l2_writes == 3).await;
    for path in &pages {
        assert!(get(b, path).await.one("cache-status").contains("redis"));
    }
    // In the second instance's memory only.
    get(b, elsewhere).await;
    assert!(get(b, elsewhere)
        .await
        .one("cache-status")
        .starts_with("tower-ssr; hit"));

    redis.pause();
    // The purge is sent to both instances, as an admin hook would.
    let mut on_a = ca.purge_tag("news");
    let mut on_b = cb.purge_tag("news");
    // And one to the first only. A paused Redis confirms nothing.
    let only_a = ca.purge_path(elsewhere);
    assert_eq!(
        ca.purge_path("/nowhere")
            .confirmed(Duration::from_millis(300))
            .await,
        Err(PurgeError::TimedOut {
            within: Duration::from_millis(300)
        })
    );
    assert!(!on_a.is_confirmed() && !on_b.is_confirmed());
    redis.resume();

    // Neither instance serves the purged pages from Redis: each renders.
    // (No one rendered pages[1] since the purge, so a Redis hit there
    // could only be the purged copy.)
    let seen = get(a, &pages[0]).await;
    assert_eq!(seen.one("cache-status"), "tower-ssr; fwd=uri-miss; stored");
    let seen = get(b, &pages[1]).await;
    assert_eq!(seen.one("cache-status"), "tower-ssr; fwd=uri-miss; stored");
    assert_eq!(origin.renders(&pages[0]), 2);
    assert_eq!(origin.renders(&pages[1]), 2);
    on_a.confirmed(PATIENCE).await.unwrap();
    on_b.confirmed(PATIENCE).await.unwrap();
    only_a.confirmed(PATIENCE).await.unwrap();
    // In Redis too: the page no one asked for again is gone.
    assert!(!redis.exists(&redis.entry(&pages[2])), "{outage:?}");
    // And the purge only the first instance was given reaches the second.
    eventually("the purge reaches the second instance", || {
        cb.stats().remote_purges >= 1
    })
    .await;
    assert!(get(b, elsewhere)
        .await
        .one("cache-status")
        .contains("fwd=uri-miss"));
}

async fn a_purge_made_while_redis_is_dead_reaches_the_other_instance_after_a_restart(
    outage: Outage,
) {
    let mut redis = Private::start(outage, "killed").await;
    let pages = redis.pages(2, |i| format!("/k/{i}?tag=news"));
    let (origin, [(a, ca), (b, cb)]) = redis.two().await;
    let page = pages[0].as_str();
    for path in &pages {
        get(a, path).await;
    }
    eventually("the writes", || ca.stats().l2_writes == 2).await;
    assert!(get(b, page).await.one("cache-status").contains("redis"));
    // Now in the second instance's memory too.
    assert!(get(b, page)
        .await
        .one("cache-status")
        .starts_with("tower-ssr; hit"));

    redis.kill();
    let purged = ca.purge_tag("news");
    // A dead Redis confirms nothing; the purge stays queued.
    assert!(matches!(
        ca.purge_path("/elsewhere")
            .confirmed(Duration::from_millis(200))
            .await,
        Err(PurgeError::TimedOut { .. })
    ));
    redis.restart().await;

    // Where Redis came back empty without the purge log, the second
    // instance cannot know what it missed and stops serving its memory
    // copy within some of its reconnect cycles; where the log survived
    // (only the page's master died), the purge reaches it through the log.
    let mut polls = 0;
    loop {
        let seen = get(b, page).await;
        if seen.one("cache-status").contains("fwd=uri-miss") {
            break;
        }
        polls += 1;
        assert!(
            polls < 4000,
            "the second instance kept the purged page ({outage:?})\n{:?}\n{:?}",
            ca.stats(),
            cb.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(origin.renders(page), 2);
    // The first instance's purge reaches the new Redis too.
    purged.confirmed(PATIENCE).await.unwrap();
    assert!(!redis.exists(&redis.entry(&pages[1])), "{outage:?}");
    assert!(cb.redis_ready(PATIENCE).await);
}

async fn a_purge_made_while_redis_refuses_writes_is_applied_once_it_accepts_them(outage: Outage) {
    let mut redis = Private::start(outage, "oompurge").await;
    let pages = redis.pages(2, |i| format!("/m/{i}?tag=news"));
    let (origin, [(a, ca), (b, cb)]) = redis.two().await;
    let page = pages[0].as_str();
    for path in &pages {
        get(a, path).await;
    }
    eventually("the writes", || ca.stats().l2_writes == 2).await;
    assert!(get(b, page).await.one("cache-status").contains("redis"));
    assert!(get(b, page)
        .await
        .one("cache-status")
        .starts_with("tower-ssr; hit"));

    redis.starve();
    let mut purged = ca.purge_tag("news");
    // Refused writes confirm nothing; the purge stays queued.
    assert!(matches!(
        ca.purge_path("/elsewhere")
            .confirmed(Duration::from_millis(300))
            .await,
        Err(PurgeError::TimedOut { .. })
    ));
    assert!(!purged.is_confirmed());
    redis.feed();

    purged.confirmed(PATIENCE).await.unwrap();
    assert!(!redis.exists(&redis.entry(&pages[1])), "{outage:?}");
    eventually("the purge reaches the second instance", || {
        cb.stats().remote_purges >= 1
    })
    .await;
    assert!(get(b, page)
        .await
        .one("cache-status")
        .contains("fwd=uri-miss"));
    assert_eq!(origin.renders(page), 2);
}

async fn a_revalidation_on_one_instance_renders_once_across_both(setup: Setup) {
    let (origin, [(a, ca), (b, cb)]) = two_instances("reval", setup, true).await;
    let page = "/rv?tag=news&sleep=100";
    get(a, page).await;
    eventually("the write", || ca.stats().l2_writes == 1).await;
    assert!(get(b, page).await.one("cache-status").contains("redis"));

    ca.revalidate_tag("news").confirmed(PATIENCE).await.unwrap();
    eventually("the revalidation reaches the second instance", || {
        cb.stats().remote_purges == 1
    })
    .await;
    // Both memories hold a copy marked stale (s-maxage without
    // stale-while-revalidate: refreshed before it is served), Redis none.
    let burst: Vec<_> = (0..12)
        .map(|i| {
            let addr = if i % 2 == 0 { a } else { b };
            tokio::spawn(async move { get(addr, page).await })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.unwrap().status, 200);
    }
    for addr in [a, b] {
        let seen = get(addr, page).await;
        assert!(
            seen.one("cache-status").starts_with("tower-ssr; hit"),
            "{:?}",
            seen.headers
        );
    }
    assert_eq!(origin.renders(page), 2, "one render for both instances");
}

async fn a_revalidation_serves_stale_on_both_and_renders_each_key_once(setup: Setup) {
    // Generous call timeouts: this is about coordination, and one call
    // timing out on a busy machine switches the tier off for a moment
    // (each instance then renders alone, by design).
    let ns = namespace("revalswr");
    let tier = || {
        setup
            .tier(&ns)
            .timeout(Duration::from_secs(5))
            .render_lock(PATIENCE)
    };
    let origin = Origin::default();
    let (a, ca) = instance(&origin, tier()).await;
    let (b, cb) = instance(&origin, tier()).await;
    assert!(ca.redis_ready(PATIENCE).await && cb.redis_ready(PATIENCE).await);
    let pages: Vec<String> = (0..100)
        .map(|i| format!("/w/{i}?tag=wide&swr=60&sleep=5"))
        .collect();
    for p in &pages {
        get(a, p).await;
    }
    eventually("the writes", || ca.stats().l2_writes == 100).await;
    for p in &pages {
        assert!(get(b, p).await.one("cache-status").contains("redis"));
    }

    cb.revalidate_tag("wide").confirmed(PATIENCE).await.unwrap();
    eventually("the revalidation reaches the first instance", || {
        ca.stats().remote_purges == 1
    })
    .await;
    // Every page on both instances at once: stale copies, answered at once.
    let burst: Vec<_> = pages
        .iter()
        .flat_map(|p| [(a, p.clone()), (b, p.clone())])
        .map(|(addr, p)| tokio::spawn(async move { get(addr, &p).await }))
        .collect();
    for r in burst {
        let seen = r.await.unwrap();
        assert_eq!(seen.status, 200);
        assert!(seen.one("cache-status").starts_with("tower-ssr; hit"));
    }
    // Settled once both instances answer every page fresh: no refresh can
    // start after that.
    for p in &pages {
        for addr in [a, b] {
            let mut polls = 0;
            loop {
                let stale = if addr == a {
                    ca.stats().stale
                } else {
                    cb.stats().stale
                };
                get(addr, p).await;
                let now = if addr == a {
                    ca.stats().stale
                } else {
                    cb.stats().stale
                };
                if now == stale {
                    break;
                }
                polls += 1;
                assert!(polls < 4000, "{p} stayed stale");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let counts: Vec<usize> = pages.iter().map(|p| origin.renders(p)).collect();
    assert!(
        counts.iter().all(|&n| n == 2),
        "renders per page (2 = one refresh across both instances): {counts:?}\n{:?}\n{:?}",
        ca.stats(),
        cb.stats()
    );
}

#[test]
#[cfg_attr(
    not(tower_ssr_redis),
    ignore = "needs redis-server on PATH or TOWER_SSR_REDIS_URL"
)]
fn a_cache_built_outside_a_runtime_confirms_a_purge_made_before_any_request_single_node() {
    a_cache_built_outside_a_runtime_confirms_a_purge_made_before_any_request(Setup::Single);
}

#[test]
#[cfg_attr(
    not(tower_ssr_redis_cluster),
    ignore = "needs redis-server and redis-cli on PATH or TOWER_SSR_REDIS_CLUSTER_URLS"
)]
fn a_cache_built_outside_a_runtime_confirms_a_purge_made_before_any_request_cluster() {
    a_cache_built_outside_a_runtime_confirms_a_purge_made_before_any_request(Setup::Cluster);
}

fn a_cache_built_outside_a_runtime_confirms_a_purge_made_before_any_request(setup: Setup) {
    let ns = namespace("cold");
    // No runtime here: nothing can start yet.
    let cache = ResponseCache::builder().redis(setup.tier(&ns)).build();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        cache.purge_tag("pages").confirmed(PATIENCE).await.unwrap();
    });
}

/// The ports of the cluster's masters (`TOWER_SSR_REDIS_CLUSTER_URLS`
/// names them, or the tests' own cluster).
fn cluster_ports() -> Vec<u16> {
    cluster_urls()
        .iter()
        .map(|u| host_port(u).rsplit_once(':').unwrap().1.parse().unwrap())
        .collect()
}

/// How many keys match `pattern` on the node at `port`.
fn count_keys(port: u16, pattern: &str) -> usize {
    let n = command(
        port,
        &["EVAL", "return #redis.call('KEYS', ARGV[1])", "0", pattern],
    );
    n.trim_start_matches(':')
        .trim_end()
        .parse()
        .unwrap_or_else(|_| panic!("KEYS {pattern} on {port}: {n}"))
}

/// Two instances on the cluster in namespace `ns`.
async fn two_on_cluster(ns: &str, lock: bool) -> (Origin, [(SocketAddr, ResponseCache); 2]) {
    let tier = || {
        let t = Setup::Cluster.tier(ns);
        if lock {
            t.render_lock(PATIENCE)
        } else {
            t
        }
    };
    let origin = Origin::default();
    let a = instance(&origin, tier()).await;
    let b = instance(&origin, tier()).await;
    assert!(a.1.redis_ready(PATIENCE).await && b.1.redis_ready(PATIENCE).await);
    (origin, [a, b])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(tower_ssr_redis_cluster),
    ignore = "needs redis-server and redis-cli on PATH or TOWER_SSR_REDIS_CLUSTER_URLS"
)]
async fn on_a_cluster_the_keys_of_one_url_share_a_slot_and_scripts_run() {
    let ns = namespace("slot");
    let (origin, [(a, ca), (b, cb)]) = two_on_cluster(&ns, true).await;
    let page = "/s/1?tag=news&gate";
    let keys = Setup::Cluster.keys(&ns, &format!("http://shop.example{page}"));

    // The first instance holds the render lock while its render waits;
    // the second waits for the entry rather than rendering.
    let first = tokio::spawn(async move { get(a, page).await });
    eventually("the render began", || origin.renders(page) == 1).await;
    assert_eq!(
        Setup::Cluster.resp(&[b"EXISTS", keys.lock.as_bytes()]),
        ":1\r\n"
    );
    let second = tokio::spawn(async move { get(b, page).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    origin.gate.add_permits(1);
    assert_eq!(first.await.unwrap().status, 200);
    let seen = second.await.unwrap();
    assert!(
        seen.one("cache-status").ends_with("detail=redis"),
        "{:?}",
        seen.headers
    );
    assert_eq!(origin.renders(page), 1);
    for k in [&keys.entry, &keys.tag_index("news"), &keys.generation] {
        let exists = Setup::Cluster.resp(&[b"EXISTS", k.as_bytes()]);
        // The generation exists once something was purged; not yet.
        let want = if k == &keys.generation {
            ":0\r\n"
        } else {
            ":1\r\n"
        };
        assert_eq!(exists, want, "{k}");
    }

    // Redis's own slots: entry, lock, generation and tag index in one.
    let port = cluster_ports()[0];
    let slot = |k: &str| command(port, &["CLUSTER", "KEYSLOT", k]);
    let entry_slot = slot(&keys.entry);
    for k in [&keys.lock, &keys.generation, &keys.tag_index("news")] {
        assert_eq!(slot(k), entry_slot, "{k} beside {}", keys.entry);
    }

    // Read, write and purge-by-tag scripts ran without CROSSSLOT errors.
    cb.purge_tag("news").confirmed(PATIENCE).await.unwrap();
    assert_eq!(
        Setup::Cluster.resp(&[b"EXISTS", keys.entry.as_bytes()]),
        ":0\r\n"
    );
    assert_eq!(
        Setup::Cluster.resp(&[b"EXISTS", keys.generation.as_bytes()]),
        ":1\r\n",
        "the purge raised the bucket's generation"
    );
    let (sa, sb) = (ca.stats(), cb.stats());
    assert_eq!(
        (sa.l2_errors, sb.l2_errors, sa.l2_timeouts, sb.l2_timeouts),
        (0, 0, 0, 0),
        "{sa:?} {sb:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(tower_ssr_redis_cluster),
    ignore = "needs redis-server and redis-cli on PATH or TOWER_SSR_REDIS_CLUSTER_URLS"
)]
async fn on_a_cluster_purges_reach_pages_on_every_master_and_the_other_instance() {
    let ns = namespace("spread");
    let (origin, [(a, ca), (b, cb)]) = two_on_cluster(&ns, false).await;
    let pages: Vec<String> = (0..24).map(|i| format!("/m/{i}?tag=spread")).collect();
    for p in &pages {
        get(a, p).await;
    }
    eventually("the writes", || ca.stats().l2_writes == 24).await;
    for p in &pages {
        assert!(get(b, p).await.one("cache-status").contains("redis"));
    }
    let (entries, indexes) = (format!("{{{ns}:*}}:e:*"), format!("{{{ns}:*}}:t:*"));
    let on_each = |pattern: &str| -> Vec<usize> {
        cluster_ports()
            .iter()
            .map(|&p| count_keys(p, pattern))
            .collect()
    };
    let spread = on_each(&entries);
    assert!(
        spread.len() >= 3 && spread.iter().all(|&n| n > 0),
        "entries per master: {spread:?}"
    );
    assert_eq!(spread.iter().sum::<usize>(), 24);

    // By tag, on the second instance: every master's share goes, and the
    // first instance's memory too.
    cb.purge_tag("spread").confirmed(PATIENCE).await.unwrap();
    assert_eq!(on_each(&entries).iter().sum::<usize>(), 0);
    assert_eq!(on_each(&indexes).iter().sum::<usize>(), 0);
    eventually("the purge reaches the first instance", || {
        ca.stats().remote_purges == 1
    })
    .await;
    for p in [&pages[0], &pages[23]] {
        let seen = get(a, p).await;
        assert_eq!(seen.one("cache-status"), "tower-ssr; fwd=uri-miss; stored");
    }

    // By prefix (a SCAN of every master), on the first instance.
    for p in &pages {
        get(a, p).await;
    }
    eventually("the writes again", || ca.stats().l2_writes == 48).await;
    assert_eq!(on_each(&entries).iter().sum::<usize>(), 24);
    ca.purge_prefix("/m/").confirmed(PATIENCE).await.unwrap();
    assert_eq!(on_each(&entries).iter().sum::<usize>(), 0);
    eventually("the prefix purge reaches the second instance", || {
        cb.stats().remote_purges == 1
    })
    .await;
    let seen = get(b, &pages[5]).await;
    assert_eq!(seen.one("cache-status"), "tower-ssr; fwd=uri-miss; stored");
    assert_eq!(origin.renders(&pages[5]), 3);
}

/// `Accept-Encoding` as a browser sends it, and the public host.
async fn get_coded(addr: SocketAddr, path: &str, ae: &str) -> Seen {
    tokio::time::timeout(
        PATIENCE,
        get_with(
            addr,
            path,
            &[("host", "shop.example"), ("accept-encoding", ae)],
        ),
    )
    .await
    .expect("a request hung")
}

#[cfg(feature = "compression")]
fn decoded(seen: &Seen) -> Vec<u8> {
    use std::io::Read;
    let body = &seen.body[..];
    let mut out = Vec::new();
    match seen
        .headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap())
    {
        None => out.extend_from_slice(body),
        Some("gzip") => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("br") => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("zstd") => out = zstd::decode_all(body).unwrap(),
        Some(other) => panic!("{other}"),
    }
    out
}

#[cfg(feature = "compression")]
async fn representations_made_on_one_instance_are_served_by_the_other_uncompressed_again(
    setup: Setup,
) {
    let (origin, [(a, ca), (b, cb)]) = two_instances("reprs", setup, false).await;
    let path = "/posts/9?kb=30";
    let first = get_coded(a, path, "gzip, deflate, br, zstd").await;
    let page = first.body.clone();
    assert!(
        !first.has("content-encoding"),
        "identity until the codings are made"
    );
    // The codings are made on A and go to Redis in a second write.
    tokio::time::timeout(PATIENCE, async {
        while !get_coded(a, path, "br").await.has("content-encoding") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("A never made br");
    eventually("the codings reach redis", || {
        ca.stats().l2_representation_writes == 1
    })
    .await;
    assert_eq!(ca.stats().l2_writes, 1);

    // B never stored the page: its first answer comes from Redis, already
    // in br (B made nothing: its own job would leave the first answer in
    // identity), and the other codings are at hand too.
    let from_redis = get_coded(b, path, "gzip, deflate, br, zstd").await;
    assert!(from_redis.one("cache-status").ends_with("; detail=redis"));
    assert_eq!(from_redis.one("content-encoding"), "br");
    assert_eq!(
        from_redis.one("content-length"),
        from_redis.body.len().to_string()
    );
    assert!(from_redis.body.len() * 3 < page.len());
    assert_eq!(decoded(&from_redis), page);
    for coding in ["zstd", "gzip"] {
        let seen = get_coded(b, path, coding).await;
        assert_eq!(seen.one("content-encoding"), coding);
        assert_eq!(decoded(&seen), page, "{coding}");
    }
    let plain = get_coded(b, path, "").await;
    assert!(!plain.has("content-encoding"));
    assert_eq!(plain.body, page);
    assert_eq!(origin.renders(path), 1);
    assert_eq!(cb.stats().l2_writes, 0, "B wrote nothing back");
}

#[cfg(feature = "compression")]
async fn representations_over_the_size_cap_leave_the_identity_value(setup: Setup) {
    let ns = namespace("reprs-cap");
    let origin = Origin::default();
    // 30 KB of identity fits; with br, zstd and gzip beside it (each about
    // 0.6 of random letters), it does not.
    let tier = || setup.tier(&ns).max_value_bytes(40 * 1024);
    let (a, ca) = instance(&origin, tier()).await;
    let (b, cb) = instance(&origin, tier()).await;
    assert!(ca.redis_ready(PATIENCE).await && cb.redis_ready(PATIENCE).await);
    let path = "/capped?kb=30&noise";
    let page = get_coded(a, path, "br").await.body;
    tokio::time::timeout(PATIENCE, async {
        while !get_coded(a, path, "br").await.has("content-encoding") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("A never made br");
    let s = ca.stats();
    assert_eq!(
        (s.l2_writes, s.l2_representation_writes),
        (1, 0),
        "only the identity value"
    );
    let from_redis = get_coded(b, path, "br").await;
    assert!(from_redis.one("cache-status").ends_with("; detail=redis"));
    assert!(!from_redis.has("content-encoding"), "B makes its own");
    assert_eq!(from_redis.body, page);
    assert_eq!(origin.renders(path), 1);
}

/// Polls `path` on `addr` with `Accept-Encoding: br` until the answer is
/// a fresh hit in br (the page is fresh for 5 s); panics after
/// [`PATIENCE`].
#[cfg(feature = "compression")]
async fn until_fresh_br(addr: SocketAddr, path: &str, what: &str) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let seen = get_coded(addr, path, "br").await;
            let status = seen.one("cache-status");
            if seen.has("content-encoding") && status.contains("hit") && !status.contains("ttl=-") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never happened: {what}"));
}

/// Polls `path` on `addr` until its copy is past its 5 s (stale, although
/// `ttl=` rounds to 0): the answer that says so has started its refresh.
#[cfg(feature = "compression")]
async fn until_stale(addr: SocketAddr, path: &str) {
    tokio::time::timeout(PATIENCE, async {
        while get_coded(addr, path, "br")
            .await
            .one("age")
            .parse::<u64>()
            .unwrap()
            < 5
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the copy never went stale");
}

/// Two instances whose Redis holds a page's identity alone (the codings
/// beside it do not fit: 12 KiB of noise, each coding about 0.6 of it),
/// each with codings of its own, fresh for 5 s (longer than making them
/// takes in a debug build, so polling for them starts no refresh). Both
/// copies go stale; A's stale hit refreshes first (a render written to
/// Redis); B's copy, from Redis a moment after A's, is then served stale
/// once, which starts its refresh. Returns the origin and B.
#[cfg(feature = "compression")]
async fn b_refreshes_after_a(
    setup: Setup,
    test: &str,
    path: &str,
) -> (Origin, SocketAddr, ResponseCache) {
    let ns = namespace(test);
    let origin = Origin::default();
    let tier = || setup.tier(&ns).max_value_bytes(16 * 1024);
    let (a, ca) = instance(&origin, tier()).await;
    let (b, cb) = instance(&origin, tier()).await;
    assert!(ca.redis_ready(PATIENCE).await && cb.redis_ready(PATIENCE).await);
    get_coded(a, path, "br").await;
    eventually("A's write", || ca.stats().l2_writes == 1).await;
    assert!(get_coded(b, path, "br")
        .await
        .one("cache-status")
        .ends_with("; detail=redis"));
    until_fresh_br(b, path, "B makes its codings").await;
    tokio::time::sleep(Duration::from_millis(5100)).await;
    get_coded(a, path, "br").await;
    eventually("A's refresh reaches Redis", || ca.stats().l2_writes == 2).await;
    until_stale(b, path).await;
    (origin, b, cb)
}

/// B's refresh finds A's newer copy in Redis instead of rendering; the
/// page changed between the renders (B's codings are of the old body), so
/// B makes codings of the new one, as a request's miss would.
#[cfg(feature = "compression")]
async fn a_refresh_that_finds_a_newer_copy_in_redis_makes_its_codings(setup: Setup) {
    let path = "/refreshed?kb=12&noise&count&ttl=5&swr=60";
    let (origin, b, cb) = b_refreshes_after_a(setup, "refresh-reprs", path).await;
    until_fresh_br(b, path, "B's refreshed copy gets its codings").await;
    assert_eq!(origin.renders(path), 2, "B's refresh rendered nothing");
    assert_eq!(cb.stats().l2_writes, 0, "B wrote nothing back");
}

/// As above, but the page did not change: B keeps the codings it made of
/// that body instead of making them again at every refresh, so the first
/// fresh answer after its refresh is already in br (with them made again,
/// identity until the job is done).
#[cfg(feature = "compression")]
async fn a_refresh_that_finds_the_same_page_in_redis_keeps_its_codings(setup: Setup) {
    let path = "/same?kb=12&noise&ttl=5&swr=60";
    let (origin, b, cb) = b_refreshes_after_a(setup, "refresh-same", path).await;
    // The first answer from B's refreshed copy.
    let fresh = tokio::time::timeout(PATIENCE, async {
        loop {
            let seen = get_coded(b, path, "br").await;
            if seen.one("age").parse::<u64>().unwrap() < 5 {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("B's refresh never finished");
    assert_eq!(fresh.one("content-encoding"), "br", "{:?}", fresh.headers);
    assert_eq!(origin.renders(path), 2, "B's refresh rendered nothing");
    assert_eq!(cb.stats().l2_writes, 0, "B wrote nothing back");
}

#[cfg(feature = "compression")]
on_both!(
    representations_made_on_one_instance_are_served_by_the_other_uncompressed_again,
    representations_over_the_size_cap_leave_the_identity_value,
    a_refresh_that_finds_a_newer_copy_in_redis_makes_its_codings,
    a_refresh_that_finds_the_same_page_in_redis_keeps_its_codings,
);

/// Codings of 64 KiB and more (kept in mappings of their own) made on one
/// instance reach the other through Redis whole; the job that writes them
/// there spawns its write from the pool's thread onto the runtime the
/// request ran on, a current-thread one included (see
/// `representations_from_a_current_thread_runtime`).
#[cfg(feature = "compression")]
async fn mapped_representations_go_through_redis_whole(setup: Setup) {
    let (origin, [(a, ca), (b, cb)]) = two_instances("mapped-reprs", setup, false).await;
    // 120 KiB of random letters: each coding about 70 KiB.
    let path = "/mapped?kb=120&noise";
    let first = get_coded(a, path, "br").await;
    let page = first.body.clone();
    assert_eq!(page.len(), 120 * 1024);
    assert!(!first.has("content-encoding"));
    tokio::time::timeout(PATIENCE, async {
        while !get_coded(a, path, "br").await.has("content-encoding") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("A never made br");
    eventually("the codings reach redis", || {
        ca.stats().l2_representation_writes == 1
    })
    .await;
    for coding in ["br", "zstd", "gzip"] {
        let on_a = get_coded(a, path, coding).await;
        assert_eq!(on_a.one("content-encoding"), coding);
        assert!(
            on_a.body.len() >= 64 * 1024,
            "{coding}: {}",
            on_a.body.len()
        );
        assert_eq!(decoded(&on_a), page, "{coding} on A");
        let on_b = get_coded(b, path, coding).await;
        assert_eq!(on_b.one("content-encoding"), coding);
        assert!(on_b.body == on_a.body, "{coding}: the same bytes on B");
    }
    let plain = get_coded(b, path, "").await;
    assert!(plain.body == page);
    let range = get_with(
        b,
        path,
        &[("host", "shop.example"), ("range", "bytes=65530-65545")],
    )
    .await;
    assert_eq!(range.status, http::StatusCode::PARTIAL_CONTENT);
    assert!(range.body == page.slice(65530..=65545));
    assert_eq!(origin.renders(path), 1);
    assert_eq!(cb.stats().l2_writes, 0);
    assert_eq!(cb.stats().l2_representation_writes, 0);
}

/// As the tests' default `#[tokio::test]` runs it: one thread, which
/// waits on the socket while the pool's thread spawns the Redis write.
#[cfg(feature = "compression")]
mod representations_from_a_current_thread_runtime {
    #[tokio::test]
    #[cfg_attr(
        not(tower_ssr_redis),
        ignore = "needs redis-server on PATH or TOWER_SSR_REDIS_URL"
    )]
    async fn single_node() {
        super::mapped_representations_go_through_redis_whole(super::Setup::Single).await
    }

    #[tokio::test]
    #[cfg_attr(
        not(tower_ssr_redis_cluster),
        ignore = "needs redis-server and redis-cli on PATH or TOWER_SSR_REDIS_CLUSTER_URLS"
    )]
    async fn cluster() {
        super::mapped_representations_go_through_redis_whole(super::Setup::Cluster).await
    }
}

/// B's background refresh finds in Redis a newer copy that has its codings
/// (A refreshed first and made them): B serves them at once, makes none of
/// its own and writes nothing back.
#[cfg(feature = "compression")]
async fn a_refresh_that_finds_a_newer_copy_with_codings_serves_them(setup: Setup) {
    let (origin, [(a, ca), (b, cb)]) = two_instances("refresh-coded", setup, false).await;
    let path = "/refreshed-coded?kb=12&noise&ttl=5&swr=60";
    get_coded(a, path, "br").await;
    eventually("A's codings reach redis", || {
        ca.stats().l2_representation_writes == 1
    })
    .await;
    let from_redis = get_coded(b, path, "br").await;
    assert!(from_redis.one("cache-status").ends_with("; detail=redis"));
    assert_eq!(from_redis.one("content-encoding"), "br");

    // Both go stale; A refreshes first, and its codings reach Redis.
    tokio::time::sleep(Duration::from_millis(5100)).await;
    get_coded(a, path, "br").await;
    eventually("A's refresh reaches Redis", || ca.stats().l2_writes == 2).await;
    eventually("A's new codings reach Redis", || {
        ca.stats().l2_representation_writes == 2
    })
    .await;
    until_stale(b, path).await;
    until_fresh_br(b, path, "B's refreshed copy, with its codings").await;
    let page = get_coded(b, path, "").await.body;
    for coding in ["br", "zstd", "gzip"] {
        let seen = get_coded(b, path, coding).await;
        assert_eq!(seen.one("content-encoding"), coding);
        assert_eq!(decoded(&seen), page, "{coding}");
    }
    assert_eq!(origin.renders(path), 2, "B's refresh rendered nothing");
    assert_eq!(cb.stats().l2_writes, 0, "B wrote nothing back");
    assert_eq!(cb.stats().l2_representation_writes, 0, "nor codings");
}

#[cfg(feature = "compression")]
on_both!(
    mapped_representations_go_through_redis_whole,
    a_refresh_that_finds_a_newer_copy_with_codings_serves_them,
);

/// Jobs queued (at the default levels, one thread) when the runtime their
/// requests ran on shuts down: each still runs on the pool's thread, and
/// its write of the codings to Redis is spawned onto a runtime that is
/// gone: no job panics, and the runtime's drop returns.
#[cfg(feature = "compression")]
#[test]
#[cfg_attr(
    not(tower_ssr_redis),
    ignore = "needs redis-server on PATH or TOWER_SSR_REDIS_URL"
)]
fn jobs_queued_at_runtime_shutdown_with_a_redis_tier_do_not_panic() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_ssr::cache::Compression;
    let panics = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&panics);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("tower-ssr-compress") {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    let ns = namespace("shutdown-jobs");
    let done = Arc::new(Mutex::new(None::<ResponseCache>));
    for flavor in ["current", "multi"] {
        let rt = match flavor {
            "current" => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .unwrap();
        let keep = Arc::clone(&done);
        rt.block_on(async {
            let cache = ResponseCache::builder()
                .redis(RedisTier::new(&redis_url()).unwrap().namespace(&ns))
                .build();
            assert!(cache.redis_ready(PATIENCE).await);
            let app = Router::new()
                .fallback(render)
                .with_state(Origin::default())
                .layer(
                    CacheLayer::new(cache.clone())
                        .compression(Compression::new().jobs(1).max_queue(3)),
                );
            let addr = serve(app).await;
            for i in 0..5 {
                let path = format!("/shutdown-{flavor}-{i}?kb=100&noise");
                assert_eq!(get(addr, &path).await.body.len(), 100 * 1024);
            }
            eventually("the identity values reach redis", || {
                cache.stats().l2_writes == 5
            })
            .await;
            *keep.lock().unwrap() = Some(cache);
        });
        drop(rt);
        // The cache outlives the runtime: its queued jobs find it whole.
        let cache = done.lock().unwrap().take().unwrap();
        let start = std::time::Instant::now();
        while cache.stats().bytes < 5 * 100 * 1024 + 3 * 3 * 50 * 1024 {
            // The three jobs accepted store their three codings each
            // (about 60 KiB a coding), their runtime gone or not.
            assert!(start.elapsed() < PATIENCE * 3, "{:?}", cache.stats());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(panics.load(Ordering::SeqCst), 0, "{flavor}: a job panicked");
    }
}

/// Writes are fire and forget; a Redis that answers slowly (here: paused
/// for writes, `CLIENT PAUSE … WRITE`) must not gather values in memory
/// without bound. With `max_in_flight_bytes(16 KiB)` and 10 KiB pages,
/// one write waits and the next is skipped (counted), the page staying in
/// this instance's memory alone; once Redis goes on, the waiting write
/// lands and the bound is given back (the next page is written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(tower_ssr_redis_server),
    ignore = "needs redis-server on PATH (starts and stops its own)"
)]
async fn writes_past_the_in_flight_bound_are_skipped_while_redis_is_slow() {
    // A private server: pausing a shared one would stall other tests.
    let redis = Private::start(Outage::Node, "in-flight").await;
    let PrivateRedis::Node(server) = &redis.redis else {
        unreachable!()
    };
    let port = server.port;
    let tier = || {
        redis
            .tier()
            // Far past the test: a write waits for Redis, never times out.
            .timeout(Duration::from_secs(3600))
            .max_in_flight_bytes(16 * 1024)
    };
    let origin = Origin::default();
    let cache = ResponseCache::builder().redis(tier()).build();
    // No codings: their writes would be skipped too and blur the count.
    let layer = CacheLayer::new(cache.clone());
    #[cfg(feature = "compression")]
    let layer = layer.no_compression();
    let app = Router::new()
        .fallback(render)
        .with_state(origin.clone())
        .layer(layer);
    let a = serve(app).await;
    let (b, cb) = instance(&origin, tier()).await;
    assert!(cache.redis_ready(PATIENCE).await && cb.redis_ready(PATIENCE).await);

    // Both renders start (their Redis lookups done), then Redis pauses
    // writes (and scripts that may write), then both are stored.
    let one = tokio::spawn(get(a, "/one?gate&kb=10"));
    let two = tokio::spawn(get(a, "/two?gate&kb=10"));
    eventually("both renders started", || {
        origin.renders("/one?gate&kb=10") == 1 && origin.renders("/two?gate&kb=10") == 1
    })
    .await;
    assert_eq!(
        command(port, &["CLIENT", "PAUSE", "3600000", "WRITE"]).trim(),
        "+OK"
    );
    origin.gate.add_permits(2);
    assert_eq!(one.await.unwrap().status, 200);
    assert_eq!(two.await.unwrap().status, 200);
    eventually("the second write is skipped", || {
        cache.stats().l2_writes_skipped == 1
    })
    .await;
    assert_eq!(cache.stats().l2_writes, 0, "the first still waits");

    assert_eq!(command(port, &["CLIENT", "UNPAUSE"]).trim(), "+OK");
    eventually("the waiting write lands", || cache.stats().l2_writes == 1).await;
    // The bound was given back: the next page is written.
    get(a, "/three?kb=10").await;
    eventually("the next page is written", || cache.stats().l2_writes == 2).await;
    assert_eq!(cache.stats().l2_writes_skipped, 1);

    // On the other instance: exactly one of the two paused pages came
    // from Redis; the skipped one is rendered again.
    let from_redis = ["/one?gate&kb=10", "/two?gate&kb=10"]
        .into_iter()
        .filter(|p| origin.renders(p) == 1)
        .count();
    assert_eq!(from_redis, 2, "each rendered once so far");
    origin.gate.add_permits(1);
    let mut rendered_again = 0;
    for p in ["/one?gate&kb=10", "/two?gate&kb=10"] {
        let seen = get(b, p).await;
        assert_eq!(seen.status, 200);
        if origin.renders(p) == 2 {
            rendered_again += 1;
        } else {
            assert!(seen.one("cache-status").contains("redis"), "{p}");
        }
    }
    assert_eq!(rendered_again, 1);
}
