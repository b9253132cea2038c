//! The compression pool's threads (`tower-ssr-compress`, one set per
//! layer): started at the first job, ended once the layer, its services and
//! its queued jobs are gone; never more than `jobs` of them; jobs queued
//! when the runtime shuts down neither panic nor hold anything up; a layer
//! outside a runtime starts none. The tests count this process's threads
//! by name, so each takes a lock and builds its own runtime: no two
//! overlap. Waits poll for a state with a hang guard; nothing depends on
//! timing.
#![cfg(feature = "compression")]

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};
use tower_ssr::cache::{CacheLayer, Compression, ResponseCache};

use common::GUARD;

/// One test at a time: they count the process's threads. Returns once
/// the test before has left no pool thread behind.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    until("no thread left by another test", || compress_threads() == 0);
    guard
}

/// A multi-thread runtime with two workers, as `examples/proxy` runs.
fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Threads of this process named as the pool names its own (`comm` keeps
/// 15 bytes of a name).
fn compress_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "tower-ssr-compr")
        .count()
}

/// The pool's threads, without the ones that only carry its name for a
/// moment: a thread inherits its starter's name until it sets its own, and
/// a job starts one of tokio's blocking threads (the waiter that keeps a
/// paused clock still), so one read can count one more. The pool's own
/// threads live as long as the pool, so the least of a few reads a few
/// milliseconds apart still counts every one of them.
fn pool_threads() -> usize {
    let mut least = compress_threads();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(2));
        let now = compress_threads();
        if now == least {
            break;
        }
        least = least.min(now);
    }
    least
}

/// Waits (on this thread) until `cond` holds; panics after [`GUARD`].
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < GUARD, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Panics seen on the pool's threads: a job's panic is caught there, so
/// only the hook sees it.
fn count_pool_panics() -> Arc<AtomicUsize> {
    static SEEN: std::sync::OnceLock<Arc<AtomicUsize>> = std::sync::OnceLock::new();
    Arc::clone(SEEN.get_or_init(|| {
        let seen = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&seen);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tower-ssr-compress") {
                count.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
        seen
    }))
}

/// 200 KiB of markup per path: distinct per path, compressible.
fn page(path: &str) -> Bytes {
    format!("<li>{path} render hydrate</li>\n")
        .repeat(200 * 1024 / (path.len() + 27) + 1)
        .into()
}

async fn render(req: Request) -> Response {
    let path = req.uri().path().to_owned();
    Response::builder()
        .header("content-type", "text/html")
        .header("cache-control", "public, max-age=600")
        .body(Body::from(page(&path)))
        .unwrap()
}

/// Serves `layer` over a renderer until `stop` fires, then lets every
/// connection end: the task ends, and with it the last clone of the
/// service.
async fn serve_until(
    layer: CacheLayer,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let app = Router::new().fallback(render).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop.await;
            })
            .await
            .unwrap();
    });
    (addr, task)
}

async fn get(addr: SocketAddr, path: &str, ae: &str) -> http::Response<Bytes> {
    // A client per request: its connection closes when it is dropped.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = http::Request::get(format!("http://{addr}{path}"))
        .header("accept-encoding", ae)
        .body(Empty::new())
        .unwrap();
    let res = tokio::time::timeout(GUARD, client.request(req))
        .await
        .expect("a request hung")
        .unwrap();
    let (parts, body) = res.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

async fn until_br(addr: SocketAddr, path: &str) {
    tokio::time::timeout(GUARD, async {
        while get(addr, path, "br")
            .await
            .headers()
            .get("content-encoding")
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{path} never served in br"));
}

fn fast() -> Compression {
    Compression::new().br_level(1).zstd_level(1).gzip_level(1)
}

/// Many layers, each used and dropped, in one long-lived runtime and in
/// runtimes of their own: none leaves a thread behind.
#[test]
fn layers_dropped_leave_no_compression_thread() {
    let _serial = serial();
    let rt = two_workers();
    rt.block_on(async {
        for i in 0..20 {
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let layer = CacheLayer::new(ResponseCache::new()).compression(fast().jobs(2));
            let (addr, task) = serve_until(layer, stopped).await;
            let path = format!("/layer-{i}");
            assert_eq!(get(addr, &path, "br").await.body(), &page(&path));
            until_br(addr, &path).await;
            assert!(pool_threads() >= 1);
            stop.send(()).unwrap();
            tokio::time::timeout(GUARD, task).await.unwrap().unwrap();
        }
    });
    until("the threads of 20 dropped layers end", || {
        compress_threads() == 0
    });
    // The runtime still runs: the threads did not wait for its end.
    drop(rt);
    for i in 0..10 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (_stop, stopped) = tokio::sync::oneshot::channel();
            let layer = CacheLayer::new(ResponseCache::new()).compression(fast().jobs(3));
            let (addr, _task) = serve_until(layer, stopped).await;
            let path = format!("/runtime-{i}");
            get(addr, &path, "br").await;
            until_br(addr, &path).await;
        });
        // Dropping the runtime drops the server task and the layer in it.
        drop(rt);
    }
    until("the threads of 10 dropped runtimes end", || {
        compress_threads() == 0
    });
}

/// Jobs queued (slow ones, at the default levels) when the runtime shuts
/// down: the drop returns, no job panics, and the threads end once the
/// queue is done.
#[test]
fn a_runtime_shut_down_with_jobs_queued_neither_panics_nor_hangs() {
    let _serial = serial();
    let panics = count_pool_panics();
    for flavor in ["multi", "current"] {
        let rt = match flavor {
            "multi" => two_workers(),
            _ => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        };
        let cache = ResponseCache::new();
        let layer =
            CacheLayer::new(cache.clone()).compression(Compression::new().jobs(1).max_queue(2));
        rt.block_on(async {
            let (_stop, stopped) = tokio::sync::oneshot::channel();
            let (addr, _task) = serve_until(layer, stopped).await;
            for i in 0..6 {
                let path = format!("/{flavor}-{i}");
                assert_eq!(get(addr, &path, "br").await.body(), &page(&path));
            }
            assert_eq!(pool_threads(), 1, "jobs(1)");
        });
        drop(rt);
        until("the queued jobs end, and their thread", || {
            compress_threads() == 0
        });
        assert_eq!(panics.load(Ordering::SeqCst), 0, "{flavor}: a job panicked");
        drop(cache);
    }
}

/// A flood of unique pages through a queue of one: every page is served
/// whole, no more threads than `jobs` start, and the queue's count comes
/// back down (pages stored after the flood get their codings again).
#[test]
fn a_flood_of_unique_pages_through_a_tiny_queue() {
    let _serial = serial();
    let rt = two_workers();
    rt.block_on(async {
        let cache = ResponseCache::builder().max_bytes(256 << 20).build();
        let layer = CacheLayer::new(cache.clone()).compression(fast().jobs(2).max_queue(1));
        let (_stop, stopped) = tokio::sync::oneshot::channel();
        let (addr, _task) = serve_until(layer, stopped).await;
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let most = Arc::clone(&most);
            tasks.spawn(async move {
                let path = format!("/flood-{i}");
                let seen = get(addr, &path, "br, gzip").await;
                most.fetch_max(pool_threads(), Ordering::SeqCst);
                if seen.headers().get("content-encoding").is_none() {
                    assert_eq!(seen.body(), &page(&path), "{path}");
                }
            });
            if tasks.len() >= 16 {
                tasks.join_next().await.unwrap().unwrap();
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2, "{most:?} threads");
        assert_eq!(cache.stats().entries, 200);
        // The queue's count came back down: once the last job is done, a
        // page stored then gets its codings. (One stored while the queue
        // is still full keeps identity: hits do not queue again.)
        tokio::time::timeout(GUARD, async {
            for i in 0.. {
                let path = format!("/after-{i}");
                get(addr, &path, "br").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                if get(addr, &path, "br")
                    .await
                    .headers()
                    .get("content-encoding")
                    .is_some()
                {
                    return;
                }
            }
        })
        .await
        .expect("no page stored after the flood got its codings");
    });
}

/// Blocks this thread on `fut`, with no runtime anywhere.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let start = Instant::now();
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        assert!(start.elapsed() < GUARD, "hung outside a runtime");
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

/// A layer used where there is no tokio runtime (an executor of the
/// application's own): pages are stored and served in identity, and no
/// thread is started.
#[test]
fn a_layer_outside_a_runtime_serves_identity_and_starts_no_thread() {
    let _serial = serial();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let inner = tower::service_fn(move |req: http::Request<Empty<Bytes>>| {
        counted.fetch_add(1, Ordering::SeqCst);
        let path = req.uri().path().to_owned();
        async move {
            Ok::<_, Infallible>(
                http::Response::builder()
                    .header("content-type", "text/html")
                    .header("cache-control", "public, max-age=600")
                    .body(Full::new(page(&path)))
                    .unwrap(),
            )
        }
    });
    // An executor that runs nothing (background refreshes are not at
    // issue here).
    let svc = CacheLayer::new(ResponseCache::new())
        .compression(fast().jobs(2))
        .executor(drop::<tower_ssr::cache::Task>)
        .layer(inner);
    for round in 0..3 {
        let req = http::Request::get("http://a.test/outside")
            .header("accept-encoding", "br")
            .body(Empty::new())
            .unwrap();
        let res = block_on(svc.clone().oneshot(req)).unwrap();
        assert!(res.headers().get("content-encoding").is_none(), "{round}");
        let body = block_on(res.into_body().collect()).unwrap().to_bytes();
        assert_eq!(body, page("/outside"), "{round}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "stored once");
    assert_eq!(pool_threads(), 0);
}

/// With tokio's clock paused (`test-util`, as the crate's own tests and
/// applications' tests use it), the clock stands still while a
/// compression job runs, as it did when jobs were tokio blocking tasks
/// (which hold off its auto-advance). Since fec0d99 moved them to the
/// pool's own threads, virtual time ran ahead meanwhile: a page fresh for
/// one second went stale and was refreshed (a new body) again and again
/// before its job was done, and was never served compressed (186 renders
/// in the 60 s guard, no br). On f21349c, and with the fix, the second
/// poll gets br, from the first render.
#[test]
fn a_paused_clock_stands_still_while_codings_are_made() {
    let _serial = serial();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let renders = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&renders);
        let app = Router::new()
            .fallback(move || {
                let counted = Arc::clone(&counted);
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    Response::builder()
                        .header("content-type", "text/html")
                        .header("cache-control", "public, max-age=1")
                        .body(Body::from(
                            (0..40_000)
                                .map(|i| format!("<li>{i}</li>"))
                                .collect::<String>(),
                        ))
                        .unwrap()
                }
            })
            .layer(CacheLayer::new(ResponseCache::new()));
        let addr = common::serve(app).await;
        get(addr, "/lived", "br").await;
        let real = Instant::now();
        loop {
            let seen = get(addr, "/lived", "br").await;
            if seen.headers().get("content-encoding").is_some() {
                break;
            }
            assert!(
                real.elapsed() < GUARD,
                "never served in br: {} renders",
                renders.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            renders.load(Ordering::SeqCst),
            1,
            "stale before its codings"
        );
    });
}
