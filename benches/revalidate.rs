//! Revalidation and purge delivery across two instances on one Redis:
//! one-shot measurements printed as text (wall-clock figures of one run,
//! not criterion statistics; never asserted anywhere).
//!
//! ```text
//! cargo bench --bench revalidate --features redis
//! TOWER_SSR_BENCH_CLUSTER=1 cargo bench --bench revalidate --features redis  # + Redis Cluster
//! ```
//!
//! Starts private `redis-server`s from `PATH` (loopback, free ports, no
//! persistence; stopped when the bench ends); skipped, with a message,
//! without one. With `TOWER_SSR_BENCH_CLUSTER=1` every measurement is also
//! made on a private Redis Cluster of three masters (`redis-server
//! --cluster-enabled yes`, `redis-cli --cluster create`; node timeout
//! 5 s), after the single node's, in the same run; the outages there
//! strike every master, or only the master of the purge log's slot
//! (paused), or only another one (killed: the purge log survives, so the
//! other instance must get the purges through it).
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

fn cache(redis: &Redis, ns: &str) -> ResponseCache {
    let tier = redis
        .tier()
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

/// Where a measurement runs: a private `redis-server`, or a private
/// cluster of three masters.
enum Redis {
    Node {
        /// The watching shell (see `spawn_watched`); `None` while killed.
        watcher: Option<std::process::Child>,
        port: u16,
        /// The server's pid, for signals.
        pid: u32,
    },
    Cluster(redis_server::Cluster),
}

/// Which of a cluster's masters an outage strikes (the one node always).
#[derive(Clone, Copy, Debug)]
enum Strike {
    All,
    /// The master of the purge log's slot in namespace `.0`.
    LogMaster(&'static str),
    /// A master that does not hold the purge log of namespace `.0`.
    OtherMaster(&'static str),
}

impl Redis {
    async fn node() -> Redis {
        let port = redis_server::free_port();
        let watcher = redis_server::spawn_watched(port, &[]).expect("redis-server on PATH");
        while !redis_server::answers_ping(port) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Redis::Node {
            watcher: Some(watcher),
            port,
            pid: redis_server::pid(port),
        }
    }

    async fn cluster() -> Redis {
        let c = tokio::task::spawn_blocking(|| redis_server::Cluster::start(3))
            .await
            .unwrap();
        Redis::Cluster(c)
    }

    fn name(&self) -> &'static str {
        match self {
            Redis::Node { .. } => "single node",
            Redis::Cluster(_) => "cluster (3 masters)",
        }
    }

    fn tier(&self) -> RedisTier {
        match self {
            Redis::Node { port, .. } => RedisTier::new(&format!("redis://127.0.0.1:{port}")),
            Redis::Cluster(c) => RedisTier::cluster(c.urls()),
        }
        .unwrap()
    }

    /// The cluster's masters `strike` names.
    fn struck(&self, strike: Strike) -> Vec<usize> {
        let Redis::Cluster(c) = self else {
            return vec![0];
        };
        let log = |ns: &str| c.owner(&self.tier().namespace(ns).keys_for("").log);
        match strike {
            Strike::All => (0..c.ports.len()).collect(),
            Strike::LogMaster(ns) => vec![log(ns)],
            Strike::OtherMaster(ns) => vec![(log(ns) + 1) % c.ports.len()],
        }
    }

    /// Sends `sig` to the struck nodes.
    fn signal(&self, struck: &[usize], sig: &str) {
        match self {
            Redis::Node { pid, .. } => redis_server::signal(*pid, sig),
            Redis::Cluster(c) => struck
                .iter()
                .for_each(|&i| redis_server::signal(c.pids()[i], sig)),
        }
    }

    fn kill(&mut self, struck: &[usize]) {
        match self {
            Redis::Node { watcher, .. } => {
                if let Some(mut w) = watcher.take() {
                    drop(w.stdin.take());
                    let _ = w.wait();
                }
            }
            Redis::Cluster(c) => struck.iter().for_each(|&i| c.kill(i)),
        }
    }

    /// Restarts what [`Redis::kill`] killed (empty); a cluster's nodes
    /// with their `nodes.conf`. Returns once they answer `PING`.
    async fn restart(&mut self, struck: &[usize]) {
        match self {
            Redis::Node { watcher, port, pid } => {
                *watcher = redis_server::spawn_watched(*port, &[]);
                while !redis_server::answers_ping(*port) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                *pid = redis_server::pid(*port);
            }
            Redis::Cluster(c) => tokio::task::block_in_place(|| {
                struck.iter().for_each(|&i| c.restart(i));
            }),
        }
    }

    /// A task that measures how long after `t` every node says
    /// `cluster_state:ok` (one node: answers `PING`), polled every 5 ms.
    fn whole_after(&self, t: Instant) -> tokio::task::JoinHandle<Duration> {
        let (ports, cluster) = match self {
            Redis::Node { port, .. } => (vec![*port], false),
            Redis::Cluster(c) => (c.ports.clone(), true),
        };
        tokio::task::spawn_blocking(move || loop {
            let whole = ports.iter().all(|&p| {
                if cluster {
                    redis_server::command(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                } else {
                    redis_server::answers_ping(p)
                }
            });
            if whole {
                return t.elapsed();
            }
            assert!(t.elapsed() < PATIENCE, "redis never came back");
            std::thread::sleep(Duration::from_millis(5));
        })
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !cfg!(tower_ssr_redis_server) {
        eprintln!("revalidate bench skipped: needs redis-server on PATH");
        return;
    }
    let cluster = std::env::var("TOWER_SSR_BENCH_CLUSTER").is_ok_and(|v| v == "1");
    if cluster && !cfg!(tower_ssr_redis_cluster) {
        eprintln!("revalidate bench: no cluster: needs redis-cli on PATH");
    }
    println!("== single node");
    revalidate_tag(Redis::node().await).await;
    paused(Redis::node().await, Strike::All).await;
    killed(Redis::node().await, Strike::All).await;
    if cluster && cfg!(tower_ssr_redis_cluster) {
        println!("== cluster of 3 masters");
        revalidate_tag(Redis::cluster().await).await;
        paused(Redis::cluster().await, Strike::All).await;
        paused(Redis::cluster().await, Strike::LogMaster("outage")).await;
        killed(Redis::cluster().await, Strike::All).await;
        killed(Redis::cluster().await, Strike::OtherMaster("restart")).await;
    }
}

async fn revalidate_tag(server: Redis) {
    let name = server.name();
    let redis = &server;
    let renders: Renders = Arc::default();
    let (ca, cb) = (cache(redis, "bench"), cache(redis, "bench"));
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
        "{}: revalidate_tag on {} entries: applied on A {}, confirmed by Redis {}, applied on B {}",
        name,
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

/// 100 purges issued on A while `strike` is paused for 5 s: time from
/// the resume until all are confirmed and until B applied all of them.
async fn paused(redis: Redis, strike: Strike) {
    let renders: Renders = Arc::default();
    let (ca, cb) = (cache(&redis, "outage"), cache(&redis, "outage"));
    let b = CacheLayer::new(cb.clone()).layer(renderer(renders.clone()));
    assert!(ca.redis_ready(PATIENCE).await && cb.redis_ready(PATIENCE).await);
    let struck = redis.struck(strike);
    redis.signal(&struck, "STOP");
    let pending: Vec<_> = (0..100)
        .map(|i| ca.purge_path(&format!("/p/{i}")))
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = cb.stats().remote_purges;
    redis.signal(&struck, "CONT");
    let t = Instant::now();
    let whole = redis.whole_after(t);
    for p in pending {
        p.confirmed(PATIENCE).await.unwrap();
    }
    let confirmed = t.elapsed();
    until("B applied all 100", || {
        cb.stats().remote_purges >= before + 100
    })
    .await;
    let applied = t.elapsed();
    println!(
        "{}, {strike:?} paused 5 s, 100 purges on A meanwhile: after SIGCONT, Redis whole again {}, all confirmed {}, all applied on B {}",
        redis.name(),
        ms(whole.await.unwrap()),
        ms(confirmed),
        ms(applied)
    );
    drop(b);
}

/// `strike` killed for 5 s, 100 purges by path on A meanwhile of the 100
/// pages B holds in memory, then restarted empty: time from the restart
/// (spawning the servers) until B holds none of them (it dropped its
/// memory when the purge log was lost with its node, or applied the 100
/// purges from the log) and until A's purges are all confirmed.
async fn killed(mut redis: Redis, strike: Strike) {
    let renders: Renders = Arc::default();
    let (ca, cb) = (cache(&redis, "restart"), cache(&redis, "restart"));
    let b = CacheLayer::new(cb.clone()).layer(renderer(renders.clone()));
    assert!(ca.redis_ready(PATIENCE).await && cb.redis_ready(PATIENCE).await);
    b.warm((0..100).map(|i| req(&format!("/q/{i}"))), 16).await;
    until("B holds the 100", || cb.stats().entries == 100).await;
    let struck = redis.struck(strike);
    redis.kill(&struck);
    let pending: Vec<_> = (0..100)
        .map(|i| ca.purge_path(&format!("/q/{i}")))
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = Instant::now();
    redis.restart(&struck).await;
    let answering = t.elapsed();
    let whole = redis.whole_after(t);
    let (gone, confirmed) = tokio::join!(
        until("B dropped its copies", || cb.stats().entries == 0),
        async {
            for p in pending {
                p.confirmed(PATIENCE).await.unwrap();
            }
            t.elapsed()
        }
    );
    let gone = gone + answering;
    println!(
        "{}, {strike:?} killed 5 s, 100 purges on A meanwhile, restarted empty: after the restart began, answering PING {}, whole again {}, B holds none of the 100 {}, A's 100 confirmed {} ({} remote purges applied on B)",
        redis.name(),
        ms(answering),
        ms(whole.await.unwrap()),
        ms(gone),
        ms(confirmed),
        cb.stats().remote_purges
    );
    drop(b);
}
