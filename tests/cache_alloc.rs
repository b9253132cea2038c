//! What a stored response really holds in memory, counted by the global
//! allocator, against what the cache's weigher says it holds: the byte
//! bound (`max_bytes`) bounds the process only if the two agree.
//!
//! The responses come from a real HTTP origin over a socket through
//! hyper's client, as in `examples/proxy`: hyper hands out bodies and
//! header values as slices of each connection's read buffer, so a stored
//! slice would keep a whole buffer alive, uncounted (issue 8, §6).
//!
//! Alone in its binary so that no other test allocates meanwhile; the
//! measurements also take a lock, so they never overlap each other. The
//! allocator counts every thread; the figures are differences between two
//! points that both hold a warm runtime, connection pool and cache, so only
//! the stored entries remain. Nothing here depends on timing.
#![cfg(feature = "cache")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_ssr::cache::{CacheLayer, ResponseCache};

/// Counts every allocation of this test binary. `stats_alloc` rather than a
/// counting allocator of our own: the crate forbids `unsafe`, which a
/// `GlobalAlloc` impl needs.
#[global_allocator]
static ALLOC: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// One measurement at a time: the allocator's counts are process-wide.
static MEASURING: Mutex<()> = Mutex::new(());

/// What the allocator spends on each block besides the bytes asked for:
/// glibc's 8-byte header and rounding up to 16 bytes, about 16 on average.
const PER_BLOCK: usize = 16;

/// Serves pages of `body` bytes (their own allocation each, as a renderer
/// makes them) with the headers a renderer behind the proxy sends.
async fn origin(body: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let page = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let mut html = format!("<!doctype html><title>{}</title>", req.uri()).into_bytes();
                html.resize(body, b'x');
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/html; charset=utf-8")
                            .header("cache-control", "public, s-maxage=600")
                            .header("etag", "W/\"0123456789abcdef\"")
                            .header("x-upstream", "r1")
                            .header("surrogate-key", "pages posts")
                            .body(Full::new(Bytes::from(html)))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), page)
                    .await;
            });
        }
    });
    addr
}

/// Live bytes and live blocks now. (`bytes_allocated` and
/// `bytes_deallocated` already count what reallocations grew or shrank;
/// `bytes_reallocated` is the same again.)
fn live() -> (isize, isize) {
    let s = INSTRUMENTED_SYSTEM.stats();
    let bytes = s.bytes_allocated as isize - s.bytes_deallocated as isize;
    let blocks = s.allocations as isize - s.deallocations as isize;
    (bytes, blocks)
}

/// Bodies from this size up are stored in anonymous mappings of their own,
/// which the allocator does not see: their resident bytes are read from
/// `/proc/self/smaps` instead (Linux).
const MAPPED_BODY: usize = 64 * 1024;

/// Resident bytes in anonymous mappings with no name (not the `[heap]`,
/// not a stack, not a file) that are not a thread's malloc heap: mapped
/// bodies, and blocks malloc took with mmap (which `live` counts too; none
/// of those outlive a request here). A thread's heap (glibc maps 64 MiB,
/// makes the used part writable and keeps the rest reserved, `---p`, right
/// behind it) is left out: it grows and shrinks with what malloc frees,
/// which `live` already counts, and counting it too made this measure move
/// by whole heaps between runs.
fn mapped() -> isize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    // Per mapping: start, end, whether writable anonymous, resident KiB.
    let mut maps: Vec<(u64, u64, bool, bool, isize)> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // `start-end perms offset dev inode [name]`
            let (start, end) = first.split_once('-').unwrap_or(("0", "0"));
            let start = u64::from_str_radix(start, 16).unwrap_or(0);
            let end = u64::from_str_radix(end, 16).unwrap_or(0);
            let perms = fields.next().unwrap_or("");
            let anonymous =
                fields.nth(2).is_some_and(|inode| inode == "0") && fields.next().is_none();
            maps.push((start, end, anonymous, perms == "---p", 0));
        } else if first == "Rss:" {
            if let Some(m) = maps.last_mut() {
                m.4 = fields.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            }
        }
    }
    let mut kib = 0isize;
    for (i, &(_, end, anonymous, reserved, rss)) in maps.iter().enumerate() {
        let heap = maps
            .get(i + 1)
            .is_some_and(|next| next.3 && next.0 == end && next.2);
        if anonymous && !reserved && !heap {
            kib += rss;
        }
    }
    kib * 1024
}

/// Per stored entry: the memory really held (bytes plus the allocator's
/// cost per block) and the weight the cache counted for it.
struct PerEntry {
    held: usize,
    weighed: usize,
}

/// Stores `n` pages of `body` bytes fetched over a socket, after a warm-up,
/// and returns what each costs.
async fn measure(body: usize, n: usize, compressed: bool) -> PerEntry {
    let addr = origin(body).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let upstream = service_fn(move |req: Request<Empty<Bytes>>| {
        let client = client.clone();
        async move {
            let (mut parts, body) = req.into_parts();
            parts.uri = format!("http://{addr}{}", parts.uri.path())
                .parse()
                .unwrap();
            client.request(Request::from_parts(parts, body)).await
        }
    });
    let cache = ResponseCache::builder().max_bytes(1 << 40).build();
    // Identity only, unless measuring the codings: a compression job
    // finishing during the measurement would make it depend on timing.
    let layer = CacheLayer::new(cache.clone());
    #[cfg(feature = "compression")]
    let layer = if compressed {
        layer.compression(tower_ssr::cache::Compression::new().jobs(1))
    } else {
        layer.no_compression()
    };
    let mut svc = layer.layer(upstream);
    // Warm: the connection, its buffers, moka's structures.
    let warm = n / 4 + 16;
    store(&mut svc, 0..warm, body, compressed).await;
    store(&mut svc, 0..warm, body, compressed).await;
    let before_stats = cache.stats();
    let before = live();
    let before_mapped = mapped();
    store(&mut svc, warm..warm + n, body, false).await;
    // And once more each, from the cache: a hit's clones may allocate too
    // (a `Bytes` made shared on its first clone). With compression, each
    // until its gzip copy is served: every job has then run.
    store(&mut svc, warm..warm + n, body, compressed).await;
    let after_stats = cache.stats();
    let after = live();
    let after_mapped = mapped();
    assert_eq!(after_stats.entries - before_stats.entries, n as u64);
    if !compressed {
        assert_eq!(after_stats.hits - before_stats.hits, n as u64);
    }
    let bytes = usize::try_from(after.0 - before.0).unwrap_or(0);
    let blocks = usize::try_from(after.1 - before.1).unwrap_or(0);
    // Only where bodies are mapped: below that, anonymous memory moves
    // with malloc's own mappings, already in `live`. With the codings on,
    // the identity bodies' mappings are taken as their whole pages (what
    // the same page without codings measures, above): the encoder thread's
    // heap, new in that test, grows and shrinks beside them, and Linux
    // merges a mapping next to it into one region, so `/proc/self/smaps`
    // cannot tell the two apart. The codings themselves are smaller than a
    // mapped body (checked in `store`), so `live` counts them.
    let mapped = if body < MAPPED_BODY {
        0
    } else if compressed {
        n * body.div_ceil(4096) * 4096
    } else {
        usize::try_from(after_mapped - before_mapped).unwrap_or(0)
    };
    PerEntry {
        held: (bytes + blocks * PER_BLOCK + mapped) / n,
        weighed: usize::try_from(after_stats.bytes - before_stats.bytes).unwrap() / n,
    }
}

/// Asks for pages `ids` once each, reading each body to its end (which
/// stores it).
async fn store<S, B>(svc: &mut S, ids: std::ops::Range<usize>, body: usize, gzip: bool)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    for i in ids {
        loop {
            let req = Request::get(format!("http://site.test/posts/{i}"))
                .header("accept-encoding", if gzip { "gzip" } else { "identity" })
                .body(Empty::<Bytes>::new())
                .unwrap();
            let res = svc.ready().await.unwrap().call(req).await.unwrap();
            let coded = res.headers().contains_key("content-encoding");
            let got = res.into_body().collect().await.unwrap().to_bytes();
            if coded {
                assert!(got.len() < body.min(MAPPED_BODY));
                break;
            }
            assert_eq!(got.len(), body);
            if !gzip {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// The weigher counts what an entry holds, within 10 %: more held than
/// counted would let the process outgrow `max_bytes` (a body pinning its
/// connection's read buffer held about 8 KiB more per entry than counted);
/// far less held than counted would waste the capacity.
fn check(body: usize, n: usize, compressed: bool) {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let PerEntry { held, weighed } = rt.block_on(measure(body, n, compressed));
    println!(
        "{body} B pages (compressed: {compressed}): {held} bytes held per entry, {weighed} weighed"
    );
    assert!(
        held >= body,
        "{held} bytes held per entry for {body} B pages: not measuring"
    );
    assert!(
        held * 10 <= weighed * 11,
        "{body} B pages: {held} bytes held per entry, only {weighed} weighed"
    );
    assert!(
        weighed * 10 <= held * 15,
        "{body} B pages: {weighed} weighed per entry, only {held} held"
    );
}

#[test]
fn the_weigher_counts_what_a_1_kib_page_holds() {
    check(1024, 2000, false);
}

#[test]
fn the_weigher_counts_what_a_10_kib_page_holds() {
    check(10 * 1024, 500, false);
}

#[test]
fn the_weigher_counts_what_a_100_kib_page_holds() {
    check(100 * 1024, 60, false);
}

/// The same with the cache's codings made (issue 9): an entry and its br,
/// zstd and gzip copies, each with its own header map.
#[cfg(feature = "compression")]
#[test]
fn the_weigher_counts_what_a_compressed_10_kib_page_holds() {
    check(10 * 1024, 120, true);
}

#[cfg(feature = "compression")]
#[test]
fn the_weigher_counts_what_a_compressed_100_kib_page_holds() {
    check(100 * 1024, 60, true);
}
