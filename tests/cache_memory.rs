//! What an entry costs in memory beyond its body and headers, measured as
//! the growth of the process's resident set (the crate forbids the unsafe
//! code a counting allocator would need). Alone in its binary so no other
//! test allocates meanwhile.
//!
//! ```text
//! cargo test --release --test cache_memory -- --nocapture
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_ssr::cache::{CacheLayer, ResponseCache};

const ENTRIES: usize = 20_000;
const BODY: usize = 1024;

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[tokio::test(flavor = "current_thread")]
async fn overhead_per_entry_is_bounded() {
    let origin = service_fn(|req: Request<Empty<Bytes>>| async move {
        // A body of its own per response, as a renderer makes.
        let mut body = format!("{}", req.uri()).into_bytes();
        body.resize(BODY, b'x');
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "text/html; charset=utf-8")
                .header("cache-control", "public, max-age=0, s-maxage=600")
                .header("etag", "W/\"0123456789abcdef0123456789abcdef\"")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
    });
    let cache = ResponseCache::builder().max_bytes(1 << 30).build();
    let mut svc = ServiceBuilder::new()
        .layer(CacheLayer::new(cache.clone()))
        .service(origin);
    let mut header_bytes = 0usize;
    // Warm up allocator pools and moka's structures before measuring.
    for i in 0..1000 {
        store(&mut svc, i, &mut header_bytes).await;
    }
    let Some(before) = resident_bytes() else {
        return; // not Linux: nothing to measure
    };
    for i in 1000..1000 + ENTRIES {
        store(&mut svc, i, &mut header_bytes).await;
    }
    let stats = cache.stats();
    let after = resident_bytes().unwrap();
    assert_eq!(stats.stores as usize, 1000 + ENTRIES);
    let per_entry = (after.saturating_sub(before)) as usize / ENTRIES;
    let overhead = per_entry.saturating_sub(BODY + header_bytes);
    println!(
        "resident growth per entry: {per_entry} bytes = body {BODY} + header bytes \
         {header_bytes} + overhead {overhead}; weighed at {} bytes",
        stats.bytes / stats.entries.max(1)
    );
    // A regression guard, not the target (see BENCHMARKS.md).
    assert!(overhead < 4096, "overhead per entry {overhead} bytes");
    // The weigher must count about what an entry really takes, or the
    // byte bound would not bound memory.
    let weighed = (stats.bytes / stats.entries.max(1)) as usize;
    assert!(
        weighed * 4 >= per_entry * 3,
        "weighed {weighed} < 3/4 of {per_entry}"
    );
}

async fn store<S>(svc: &mut S, i: usize, header_bytes: &mut usize)
where
    S: Service<
        Request<Empty<Bytes>>,
        Response = Response<tower_ssr::cache::ResponseBody<Full<Bytes>>>,
    >,
    S::Error: std::fmt::Debug,
{
    let req = Request::get(format!("http://example.com/posts/{i}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    *header_bytes = res
        .headers()
        .iter()
        .filter(|(n, _)| *n != "age" && *n != "cache-status")
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    res.into_body().collect().await.unwrap();
}
