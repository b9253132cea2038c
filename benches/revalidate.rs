//! Revalidation and purge delivery across two instances on one Redis:
//! one-shot measurements printed as text (wall-clock figures of one run,
//! not criterion statistics; never asserted anywhere).
//!
//! ```text
//! cargo bench --bench revalidate --features redis
//! ```
//!
//! Starts private `redis-server`s from `PATH` (loopback, free ports, no
//! persistence; stopped when the bench ends); skipped, with a message,
//! without one.
//!
//! 1. Revalidating a tag on 10,000 entries held by both instances (memory
//!    and Redis): time until applied on this instance (the call returns),
//!    until Redis confirmed it, and until the second instance applied it.
//! 2. Then a burst: every key requested 4 times (2 per instance, 64 at a
//!    time): renderer calls per key once the refreshes settled (goal 1).
//! 3. 100 purges issued on one instance during a 5 s Redis outage (the
//!    server paused with SIGSTOP): time from recovery until all are
//!    confirmed and until the other instance applied all 100; and with the
//!    server killed and restarted empty instead, time from the restart
//!    until the other instance dropped its memory copies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, Service};
use tower_ssr::cache::{CacheLayer, RedisTier, ResponseCache};

#[path = "../tests/common/redis.rs"]
mod redis_server;

/// Entries under the tag (`REVALIDATE_KEYS` overrides, for a quick run).
fn keys() -> usize {
    std::env::var("REVALIDATE_KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(10_000)
}
const PATIENCE: Duration = Duration::from_secs(120);

type Renders = Arc<Mutex<HashMap<String, usize>>>;

fn renderer(
    renders: Renders,
) -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    service_fn(move |req: Request<()>| {
        let renders = renders.clone();
        async move {
            let pq = req.uri().path().to_owned();
            *renders.lock().unwrap().entry(pq.clone()).or_insert(0) += 1;
            // A render takes a moment, so a burst overlaps it.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let res = Response::builder()
                .header("cache-control", "public, max-age=3600")
                .header("surrogate-key", "products")
                .header("content-type", "text/html")
                .body(Full::new(Bytes::from(format!("<p>{pq}</p>").repeat(32))))
                .unwrap();
            Ok(res)
        }
    })
}

fn req(path: &str) -> Request<()> {
    Request::get(path)
        .header("host", "bench.example")
        .body(())
        .unwrap()
}

fn cache(url: &str, ns: &str) -> ResponseCache {
    let tier = RedisTier::new(url)
        .unwrap()
        .namespace(ns)
        .timeout(Duration::from_millis(500))
        .retry_after(Duration::from_millis(50))
        .render_lock(Duration::from_secs(5));
    ResponseCache::builder()
        .max_bytes(256 << 20)
        .redis(tier)
        .build()
}

/// Polls `cond` every millisecond; the time it took.
async fn until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A private server on a free port; the watcher child and its port.
async fn server() -> (std::process::Child, u16) {
    let port = redis_server::free_port();
    let child = redis_server::spawn_watched(port, &[]).expect("redis-server on PATH");
    while !redis_server::answers_ping(port) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (child, port)
}

fn redis_pid(port: u16) -> u32 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "server"])
        .output()
        .expect("redis-cli on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .expect("process_id in INFO")
        .trim()
        .parse()
        .unwrap()
}

fn signal(pid: u32, sig: &str) {
    // The shell's own `kill`: no procps needed.
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{sig} {pid}"))
        .status()
        .unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !cfg!(tower_ssr_redis_server) {
        eprintln!("revalidate bench skipped: needs redis-server on PATH");
        return;
    }
    revalidate_tag().await;
    outage().await;
}

async fn revalidate_tag() {
    let (server, port) = server().await;
    let url = format!("redis://127.0.0.1:{port}");
    let renders: Renders = Arc::default();
    let (ca, cb) = (cache(&url, "bench"), cache(&url, "bench"));
    let a = CacheLayer::new(ca.clone()).layer(renderer(renders.clone()));
    let b = CacheLayer::new(cb.clone()).layer(renderer(renders.clone()));
    assert!(ca.redis_ready(PATIENCE).await && cb.redis_ready(PATIENCE).await);
    let paths: Vec<String> = (0..keys()).map(|i| format!("/p/{i}")).collect();
    let t = Instant::now();
    let wa = a.warm(paths.iter().map(|p| req(p)), 64).await;
    until("the writes", || ca.stats().l2_writes >= keys() as u64).await;
    let wb = b.warm(paths.iter().map(|p| req(p)), 64).await;
    println!(
        "setup: A stored {} (rendered), B stored {} from Redis ({} L2 hits), in {}",
        wa.stored,
        wb.stored,
        cb.stats().l2_hits,
        ms(t.elapsed())
    );
    let before = cb.stats().remote_purges;

    let t = Instant::now();
    let purged = ca.revalidate_tag("products");
    let here = t.elapsed();
    purged.confirmed(PATIENCE).await.unwrap();
    let redis = t.elapsed();
    until("B applied it", || cb.stats().remote_purges > before).await;
    let there = t.elapsed();
    println!(
        "revalidate_tag on {} entries: applied on A {}, confirmed by Redis {}, applied on B {}",
        keys(),
        ms(here),
        ms(redis),
        ms(there)
    );

    // The burst: every key 4 times, 2 per instance.
    renders.lock().unwrap().clear();
    let t = Instant::now();
    let burst = paths.iter().flat_map(|p| [p, p]);
    let (ra, rb) = tokio::join!(
        a.warm(burst.clone().map(|p| req(p)), 64),
        b.warm(burst.map(|p| req(p)), 64)
    );
    let answered = t.elapsed();
    // Settled: every key rendered at least once and nothing more for a while.
    let mut last = 0;
    let mut quiet = 0;
    while quiet < 20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n: usize = renders.lock().unwrap().values().sum();
        if n == last && renders.lock().unwrap().len() == keys() {
            quiet += 1;
        } else {
            quiet = 0;
        }
        last = n;
    }
    let (sa, sb) = (ca.stats(), cb.stats());
    println!(
        "redis errors/timeouts during the burst: A {}/{}, B {}/{}",
        sa.l2_errors, sa.l2_timeouts, sb.l2_errors, sb.l2_timeouts
    );
    let r = renders.lock().unwrap();
    let mut hist: std::collections::BTreeMap<usize, usize> = Default::default();
    for p in &paths {
        *hist.entry(r.get(p).copied().unwrap_or(0)).or_default() += 1;
    }
    println!(
        "burst of {} requests ({} stale answers on A, {} on B) answered in {}; renders per key: {:?} (renders -> keys)",
        4 * keys(),
        ra.cached,
        rb.cached,
        ms(answered),
        hist
    );
    drop(server);
}

async fn outage() {
    let (server, port) = server().await;
    let url = format!("redis://127.0.0.1:{port}");
    let renders: Renders = Arc::default();
    let (ca, cb) = (cache(&url, "outage"), cache(&url, "outage"));
    let b = CacheLayer::new(cb.clone()).layer(renderer(renders.clone()));
    assert!(ca.redis_ready(PATIENCE).await && cb.redis_ready(PATIENCE).await);
    let pid = redis_pid(port);
    signal(pid, "STOP");
    let pending: Vec<_> = (0..100)
        .map(|i| ca.purge_path(&format!("/p/{i}")))
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = cb.stats().remote_purges;
    signal(pid, "CONT");
    let t = Instant::now();
    for p in pending {
        p.confirmed(PATIENCE).await.unwrap();
    }
    let confirmed = t.elapsed();
    until("B applied all 100", || {
        cb.stats().remote_purges >= before + 100
    })
    .await;
    println!(
        "100 purges during a 5 s pause: all confirmed {} after recovery, all applied on B {}",
        ms(confirmed),
        ms(t.elapsed())
    );
    drop(server);

    // Killed and restarted empty: B cannot know what it missed.
    let (mut child, port) = self::server().await;
    let url = format!("redis://127.0.0.1:{port}");
    let (ca, cb) = (cache(&url, "restart"), cache(&url, "restart"));
    let b2 = CacheLayer::new(cb.clone()).layer(renderer(renders.clone()));
    assert!(ca.redis_ready(PATIENCE).await && cb.redis_ready(PATIENCE).await);
    b2.warm((0..100).map(|i| req(&format!("/q/{i}"))), 16).await;
    drop(child.stdin.take());
    let _ = child.wait();
    let purged = ca.purge_tag("products");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let child = redis_server::spawn_watched(port, &[]).expect("restart");
    let t = Instant::now();
    let gone = until("B dropped its copies", || cb.stats().entries == 0).await;
    purged.confirmed(PATIENCE).await.unwrap();
    println!(
        "killed 5 s, purge on A meanwhile, restarted empty: B dropped its memory copies {} after the restart began, A's purge confirmed {}",
        ms(gone),
        ms(t.elapsed())
    );
    drop(child);
    drop(b);
}
