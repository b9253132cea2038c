//! Cache keys and expiry tried from the outside (issue 8; a second
//! review of the hit-path work of 2026-11-30): the key is the validated
//! `Host` text, port included, so nothing rendered for one spelling of an
//! authority is served to another; entries past their keep time are never
//! served, revived or counted as evictions. Raw requests over real sockets
//! on 127.0.0.1 through `CacheLayer` alone, over `ReverseProxy`, and the
//! public handle. No timing assertions.
#![cfg(all(feature = "proxy", feature = "cache"))]

mod common;

use common::raw::{body, get_host, header, is_hit, raw, raw_bytes, serve_svc, status};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::{HeaderMap, Request, Response, Uri};
use tower::Layer;

use tower_ssr::balance::{Endpoints, RoundRobin};
use tower_ssr::cache::{CacheLayer, ResponseCache};
use tower_ssr::proxy::ReverseProxy;

type Heads = Arc<Mutex<Vec<HeaderMap>>>;

/// An app that renders absolute links the way SSR frameworks do behind a
/// proxy: from `X-Forwarded-Proto` (else `http`) and `X-Forwarded-Host`
/// (else `Host`); cacheable.
fn link_app(heads: Heads) -> Router {
    let handler = move |headers: HeaderMap| {
        let heads = Arc::clone(&heads);
        async move {
            heads.lock().unwrap().push(headers.clone());
            let v = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
            let proto = v("x-forwarded-proto").unwrap_or("http").to_owned();
            let host = v("x-forwarded-host")
                .or_else(|| v("host"))
                .unwrap_or("-")
                .to_owned();
            (
                [("cache-control", "public, max-age=600")],
                format!("<a href=\"{proto}://{host}/login\">log in</a> host={host}\n"),
            )
        }
    };
    Router::new().route("/{*rest}", get(handler))
}

/// An app that serves one virtual host by exact `Host` match (as axum's
/// `Host` extractor, a `match` on the header, or many vhost routers do),
/// and a cacheable "no such site" page for any other.
fn vhost_app(heads: Heads) -> Router {
    let handler = move |headers: HeaderMap| {
        let heads = Arc::clone(&heads);
        async move {
            heads.lock().unwrap().push(headers.clone());
            let host = headers.get("host").and_then(|v| v.to_str().ok());
            let page = match host {
                Some("a.test") => "welcome to a.test\n",
                _ => "no such site\n",
            };
            ([("cache-control", "public, max-age=600")], page)
        }
    };
    Router::new().route("/{*rest}", get(handler))
}

/// CacheLayer over ReverseProxy (examples/proxy), the proxy told that
/// clients reach it over TLS (a terminator in front), over `app`.
async fn proxy_stack_with(app: Router, https: bool) -> (SocketAddr, ResponseCache) {
    let upstream = common::serve(app).await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("r1", format!("http://{upstream}").parse::<Uri>().unwrap())
        .unwrap();
    let proxy = ReverseProxy::builder(set).https(https).build();
    let cache = ResponseCache::builder().max_bytes(16 << 20).build();
    (
        serve_svc(CacheLayer::new(cache.clone()).layer(proxy)).await,
        cache,
    )
}

/// CacheLayer over an axum app, in the process.
async fn app_stack_with(app: Router) -> (SocketAddr, ResponseCache) {
    let cache = ResponseCache::builder().max_bytes(16 << 20).build();
    let svc = tower::ServiceBuilder::new()
        .map_response(|res: Response<_>| res.map(axum::body::Body::new))
        .layer(CacheLayer::new(cache.clone()))
        .service(app);
    let svc = tower::util::MapRequest::new(svc, |req: Request<hyper::body::Incoming>| {
        req.map(axum::body::Body::new)
    });
    (serve_svc(svc).await, cache)
}

// ---------------------------------------------------------------------
// 2. The cache key: the Host text as sent, port included.
// ---------------------------------------------------------------------

/// The key drops `:80`, but the request goes on with `Host: a.test:80`:
/// the page rendered for that text is stored under `a.test`'s key and
/// served to every visitor of `a.test`. Behind a TLS terminator the app
/// builds `https://a.test:80/login` (the classic unkeyed-port poisoning).
/// src/authority.rs: "the cache key and the `Host` the inner service sees
/// are byte for byte the same text".
#[tokio::test]
async fn a_page_rendered_for_host_with_port_80_is_never_served_to_the_portless_host() {
    let heads: Heads = Arc::default();
    let (addr, _cache) = proxy_stack_with(link_app(Arc::clone(&heads)), true).await;
    let poison = get_host(addr, "/home", "a.test:80").await;
    assert_eq!(status(&poison), "200", "{poison}");
    let visitor = get_host(addr, "/home", "a.test").await;
    assert_eq!(status(&visitor), "200", "{visitor}");
    assert!(
        !body(&visitor).contains("a.test:80"),
        "a visitor of a.test was served the page rendered for Host a.test:80 \
         (cache-status {:?}): {}",
        header(&visitor, "cache-status"),
        body(&visitor)
    );
}

/// The same through CacheLayer alone over an app that routes on the exact
/// `Host`: a.test's visitors get the "no such site" page.
#[tokio::test]
async fn a_vhost_app_behind_the_cache_is_not_poisoned_through_port_80() {
    let heads: Heads = Arc::default();
    let (addr, _cache) = app_stack_with(vhost_app(Arc::clone(&heads))).await;
    let first = get_host(addr, "/home", "a.test:80").await;
    assert_eq!(status(&first), "200", "{first}");
    let visitor = get_host(addr, "/home", "a.test").await;
    assert_eq!(
        body(&visitor),
        "welcome to a.test\n",
        "cache-status {:?}",
        header(&visitor, "cache-status")
    );
}

/// `ResponseCache::purge` is documented as taking the key "its `Host`
/// lowercased with any port": a purge of `http://a.test:80/home` must drop
/// the page that `Host: a.test:80` stored.
#[tokio::test]
async fn purge_by_url_with_the_default_port_drops_the_entry() {
    let heads: Heads = Arc::default();
    let (addr, cache) = app_stack_with(vhost_app(Arc::clone(&heads))).await;
    let first = get_host(addr, "/home", "a.test:80").await;
    assert_eq!(status(&first), "200", "{first}");
    assert!(is_hit(&get_host(addr, "/home", "a.test:80").await));
    let purged = cache.purge("http://a.test:80/home");
    let after = get_host(addr, "/home", "a.test:80").await;
    assert!(
        purged && !is_hit(&after),
        "purge(\"http://a.test:80/home\") returned {purged}; next request: {:?}",
        header(&after, "cache-status")
    );
}

/// Purges by key (in either spelling of the default port), path, prefix
/// and of everything reach the entry stored through `:80`.
#[tokio::test]
async fn purges_by_key_path_and_prefix_reach_port_80_entries() {
    let heads: Heads = Arc::default();
    let (addr, cache) = app_stack_with(vhost_app(Arc::clone(&heads))).await;
    for (i, purge) in ["key", "path", "prefix", "all"].into_iter().enumerate() {
        let path = format!("/p{i}");
        get_host(addr, &path, "a.test:80").await;
        assert!(is_hit(&get_host(addr, &path, "a.test:80").await), "{purge}");
        assert!(!is_hit(&get_host(addr, &path, "a.test").await), "{purge}");
        match purge {
            // Either spelling of the default port purges the URI.
            "key" => assert!(cache.purge(&format!("http://a.test{path}"))),
            "path" => drop(cache.purge_path(&path)),
            "prefix" => drop(cache.purge_prefix(&path)),
            _ => drop(cache.purge_all()),
        }
        let after = get_host(addr, &path, "a.test:80").await;
        assert!(!is_hit(&after), "{purge}: {after}");
    }
}

/// Odd ports and IPv6 literals: what shares an entry and what is refused.
#[tokio::test]
async fn odd_ports_and_ipv6_literals_key_apart_or_are_refused() {
    let heads: Heads = Arc::default();
    let (addr, _cache) = app_stack_with(vhost_app(Arc::clone(&heads))).await;
    // Refused outright.
    for bad in [
        "a.test:65616",
        "a.test:+80",
        "a.test: 80",
        "a.test:",
        "a.test:000080",
        "a.test:80:80",
        "a.test:8o",
        "a.test:-80",
        "[::1]80",
        "[::1]:",
        "[::1]:65536",
        "::1:80",
        "[::1%25eth0]:80",
        "[v1.x]:80",
    ] {
        let a = get_host(addr, "/v6", bad).await;
        assert_eq!(status(&a), "400", "{bad:?}: {a}");
    }
    // Each spelling is its own key: what the app renders for one is
    // never served to another, even where they name one origin.
    let n = || heads.lock().unwrap().len();
    let before = n();
    for host in [
        "[::1]:80",
        "[::1]",
        "[::1]:00080",
        "[::80]",
        "[::]:80",
        "[::]",
    ] {
        let a = get_host(addr, "/v6", host).await;
        assert!(!is_hit(&a), "{host}: {a}");
        assert!(is_hit(&get_host(addr, "/v6", host).await), "{host}");
    }
    assert_eq!(n(), before + 6);
    for other in [
        "a.test:80",
        "a.test:443",
        "a.test:8080",
        "a.test:8",
        "a.test:800",
        "a.test:0",
    ] {
        get_host(addr, "/port", "a.test").await;
        let a = get_host(addr, "/port", other).await;
        assert!(!is_hit(&a), "{other}: {a}");
    }
}

/// Absolute-form targets: the target's authority wins over `Host`, and
/// scheme and port are part of the key as written.
#[tokio::test]
async fn absolute_form_targets_with_ports_and_schemes() {
    let heads: Heads = Arc::default();
    let (addr, _cache) = app_stack_with(link_app(Arc::clone(&heads))).await;
    let req = |target: &str, host: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    let a = raw(addr, &req("http://a.test:80/abs", "evil.test")).await;
    assert!(!a.contains("evil"), "{a}");
    let b = get_host(addr, "/abs", "a.test:80").await;
    assert!(is_hit(&b), "{b}");
    assert!(!b.contains("evil"), "{b}");
    assert!(!is_hit(&get_host(addr, "/abs", "a.test").await));
    let c = raw(addr, &req("http://evil.test:80/abs", "a.test")).await;
    assert!(!is_hit(&c) && c.contains("host=evil.test"), "{c}");
    // https: its own keys.
    let d = raw(addr, &req("https://a.test:443/tls", "a.test")).await;
    assert_eq!(status(&d), "200", "{d}");
    let e = raw(addr, &req("https://a.test:443/tls", "a.test")).await;
    assert!(is_hit(&e), "{e}");
    let e = raw(addr, &req("https://a.test/tls", "a.test")).await;
    assert!(!is_hit(&e), "another spelling, another key: {e}");
    let f = get_host(addr, "/tls", "a.test").await;
    assert!(!is_hit(&f), "http is not https: {f}");
    let g = raw(addr, &req("https://a.test:80/tls", "a.test")).await;
    assert!(
        !is_hit(&g),
        "https://a.test:80 is not https://a.test:443: {g}"
    );
    let h = get_host(addr, "/tls", "a.test:443").await;
    assert!(!is_hit(&h), "origin-form a.test:443 keys as http: {h}");
}

// ---------------------------------------------------------------------
// 1. Expiry on lookup and by sweep (no moka timers).
// ---------------------------------------------------------------------

/// A scripted origin: `?cc=` is the Cache-Control, `etag=1` adds an ETag,
/// `tag=` a Surrogate-Key, `vary=` a Vary; the body is `call N` (N counts
/// calls over all paths); while `fail` is set it answers 500.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl Origin {
    fn app(&self) -> Router {
        let me = self.clone();
        let handler = move |q: axum::extract::Query<std::collections::HashMap<String, String>>| {
            let me = me.clone();
            async move {
                let n = me.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let mut res = Response::builder();
                if me.fail.load(Ordering::SeqCst) {
                    return res
                        .status(500)
                        .body(axum::body::Body::from("down"))
                        .unwrap();
                }
                if let Some(cc) = q.get("cc") {
                    res = res.header("cache-control", cc.as_str());
                }
                if q.get("etag").is_some() {
                    res = res.header("etag", "\"same\"");
                }
                if let Some(t) = q.get("tag") {
                    res = res.header("surrogate-key", t.as_str());
                }
                if let Some(v) = q.get("vary") {
                    res = res.header("vary", v.as_str());
                }
                let mut text = format!("call {n}");
                if let Some(kb) = q.get("kb").and_then(|k| k.parse::<usize>().ok()) {
                    text.push('\n');
                    text.push_str(&"x".repeat(kb * 1024));
                }
                res.body(axum::body::Body::from(text)).unwrap()
            }
        };
        Router::new().route("/{*rest}", get(handler))
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn sleep_s(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s)).await;
}

/// Soft purges must not bring back what expiry already let go: an entry
/// with `max-age=1` and no validator (keep time 1 s) that nobody asked for
/// since is past its keep time, never to be served. It waits in memory for
/// a lookup or the next sweep, and `revalidate_*` must not mark it with a
/// stale window (RFC 9111 §4.2.4: stale only with permission; the origin
/// gave none and the entry was dead before the revalidation was asked for).
#[tokio::test]
async fn revalidation_does_not_revive_an_entry_past_its_keep_time() {
    for how in ["tag", "path", "prefix"] {
        let origin = Origin::default();
        let (addr, cache) = app_stack_with(origin.app()).await;
        let path = "/r?cc=max-age%3D1&tag=t";
        let first = get_host(addr, path, "a.test").await;
        assert_eq!(body(&first), "call 1");
        // Past its keep time (1 s), long before the first sweep (60 s).
        sleep_s(2.5).await;
        let _ = match how {
            "tag" => cache.revalidate_tag("t"),
            "path" => cache.revalidate_path(path),
            _ => cache.revalidate_prefix("/r"),
        };
        let next = get_host(addr, path, "a.test").await;
        assert!(
            body(&next) != "call 1",
            "revalidate_{how}: an entry 1.5 s past its keep time was served: \
             cache-status {:?}, age {:?}",
            header(&next, "cache-status"),
            header(&next, "age")
        );
    }
}

/// Control for the above: without the revalidation the dead entry is a
/// uri-miss (held).
#[tokio::test]
async fn an_entry_past_its_keep_time_is_a_uri_miss() {
    let origin = Origin::default();
    let (addr, _cache) = app_stack_with(origin.app()).await;
    let path = "/u?cc=max-age%3D1";
    get_host(addr, path, "a.test").await;
    sleep_s(2.2).await;
    let next = get_host(addr, path, "a.test").await;
    assert_eq!(body(&next), "call 2");
    assert!(
        header(&next, "cache-status")
            .unwrap()
            .contains("fwd=uri-miss"),
        "{next}"
    );
}

/// stale-if-error: served stale while within its window (keep time =
/// 1 s fresh + 4 s), even with no validator; the strict directives never
/// (RFC 9111 §4.2.4, §5.2.2.2, §5.2.2.10; RFC 5861 §4). Held.
#[tokio::test]
async fn stale_if_error_windows_hold_and_strict_directives_never_serve_stale() {
    let origin = Origin::default();
    let (addr, _cache) = app_stack_with(origin.app()).await;
    let ok = "/e1?cc=max-age%3D1%2C%20stale-if-error%3D4";
    let strict = [
        "/e2?cc=max-age%3D1%2C%20stale-if-error%3D30%2C%20must-revalidate&etag=1",
        "/e3?cc=s-maxage%3D1%2C%20stale-if-error%3D30&etag=1",
        "/e4?cc=max-age%3D1%2C%20stale-if-error%3D30%2C%20proxy-revalidate&etag=1",
        "/e5?cc=no-cache%2C%20max-age%3D60%2C%20stale-if-error%3D30&etag=1",
    ];
    get_host(addr, ok, "a.test").await;
    for p in strict {
        get_host(addr, p, "a.test").await;
    }
    sleep_s(2.2).await;
    origin.fail.store(true, Ordering::SeqCst);
    let stale = get_host(addr, ok, "a.test").await;
    assert_eq!(body(&stale), "call 1", "{stale}");
    for p in strict {
        for extra in [
            "",
            "Cache-Control: max-stale\r\n",
            "Cache-Control: stale-if-error=600\r\n",
        ] {
            let a = raw(
                addr,
                &format!("GET {p} HTTP/1.1\r\nHost: a.test\r\n{extra}Connection: close\r\n\r\n"),
            )
            .await;
            assert!(
                !body(&a).starts_with("call"),
                "{p} {extra:?}: served stale: {a}"
            );
        }
    }
}

/// A tier full of
/// entries past their keep time, popular before they expired and asked
/// for by no one since; then new pages. With moka's timers the dead ones
/// were gone within a housekeeping round; now they stay until the sweep
/// (the first one 60 s after the cache is made) and compete with new
/// pages for admission.
async fn dead_but_popular_then_new(cache_kb: u64) -> (u64, u64, tower_ssr::cache::CacheStats) {
    let origin = Origin::default();
    let cache = ResponseCache::builder().max_bytes(cache_kb << 10).build();
    let svc = tower::ServiceBuilder::new()
        .map_response(|res: Response<_>| res.map(axum::body::Body::new))
        .layer(CacheLayer::new(cache.clone()).no_compression())
        .service(origin.app());
    let svc = tower::util::MapRequest::new(svc, |req: Request<hyper::body::Incoming>| {
        req.map(axum::body::Body::new)
    });
    let addr = serve_svc(svc).await;
    for i in 0..24 {
        for _ in 0..20 {
            get_host(addr, &format!("/hot/{i}?cc=max-age%3D1&kb=8"), "a.test").await;
        }
    }
    sleep_s(2.2).await;
    let (mut hits, mut repeats) = (0, 0);
    for j in 0..24 {
        let p = format!("/new/{j}?cc=max-age%3D600&kb=8");
        get_host(addr, &p, "a.test").await;
        for _ in 0..2 {
            repeats += 1;
            if is_hit(&get_host(addr, &p, "a.test").await) {
                hits += 1;
            }
        }
    }
    (hits, repeats, cache.stats())
}

/// New pages are still admitted, and `CacheStats::evictions` ("entries
/// evicted for lack of room", the figure an operator grows the cache by)
/// does not count the 24 dead entries that size pushed out (it counted 23
/// of them before the listener checked). Live pages the dead ones held
/// room from until the early sweep ran are counted: they were evicted.
#[tokio::test]
async fn dead_entries_pushed_out_by_size_are_not_counted_as_evictions() {
    let (hits, repeats, stats) = dead_but_popular_then_new(256).await;
    eprintln!("new pages: {hits}/{repeats} repeats hit; stats {stats:?}");
    assert_eq!(hits, repeats, "new pages admitted");
    assert!(
        stats.evictions < 24,
        "dead entries pushed out are no evictions: {stats:?}"
    );
}

// ---------------------------------------------------------------------
// 3. Authority validation (one table of allowed host bytes).
// ---------------------------------------------------------------------

/// The proxy alone (no cache) over `app`.
async fn proxy_alone(app: Router) -> SocketAddr {
    let upstream = common::serve(app).await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("r1", format!("http://{upstream}").parse::<Uri>().unwrap())
        .unwrap();
    common::serve_proxy(ReverseProxy::builder(set).build()).await
}

fn reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
}

/// Every byte value inside a Host, and percent-encodings: the cache alone,
/// the proxy alone and both stacked answer alike, 400 exactly for what is
/// not RFC 3986 reg-name (RFC 9110 §7.2, RFC 9112 §3.2), and nothing
/// refused reaches the app.
#[tokio::test]
async fn every_host_byte_and_percent_encoding_is_judged_alike_by_cache_and_proxy() {
    let heads: Heads = Arc::default();
    let (cache_addr, _c) = app_stack_with(link_app(Arc::clone(&heads))).await;
    let proxy_addr = proxy_alone(link_app(Arc::clone(&heads))).await;
    let (both_addr, _c2) = proxy_stack_with(link_app(Arc::clone(&heads)), false).await;
    let mut cases: Vec<(Vec<u8>, bool)> = (0..=255u8)
        .map(|b| {
            let mut h = b"a".to_vec();
            h.push(b);
            h.extend_from_slice(b"b.test");
            (h, reg_name_byte(b))
        })
        .collect();
    for (h, ok) in [
        ("%", false),
        ("a%", false),
        ("a%4", false),
        ("a%4.test", false),
        ("a%zz.test", false),
        ("a%4g.test", false),
        ("a%%41.test", false),
        ("a%41%.test", false),
        ("a%41.test", true),
        ("a%4a.test", true),
        ("A%4A.TEST", true),
        ("%41", true),
        ("a.test.", true),
        ("a..test", true),
        (".", true),
        ("A.TEST", true),
        ("127.0.0.1:80", true),
        ("[::1]", true),
        ("[::ffff:127.0.0.1]:80", true),
        ("[::1]a", false),
        ("[]", false),
        ("[:::]", false),
        ("a.test:65535", true),
        ("a.test:65536", false),
        ("a.test:99999", false),
        ("a.test:0", true),
        ("a.test:00000", true),
        ("a.test:000000", false),
    ] {
        cases.push((h.as_bytes().to_vec(), ok));
    }
    for (host, ok) in &cases {
        let mut req = b"GET /h HTTP/1.1\r\nHost: ".to_vec();
        req.extend_from_slice(host);
        req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let before = heads.lock().unwrap().len();
        let mut answers = Vec::new();
        for addr in [cache_addr, proxy_addr, both_addr] {
            let a = raw_bytes(addr, &req).await;
            answers.push(status(&a).to_owned());
        }
        let shown = String::from_utf8_lossy(host);
        if *ok {
            assert!(
                answers.iter().all(|s| s == "200"),
                "{shown:?} ({host:?}) is valid: cache, proxy, both: {answers:?}"
            );
        } else {
            // 400 from us, or from hyper's parser (which may also just
            // close on a control byte): never a 200, never the app.
            assert!(
                answers.iter().all(|s| s == "400" || s.is_empty()),
                "{shown:?} ({host:?}) is invalid: cache, proxy, both: {answers:?}"
            );
            assert_eq!(
                heads.lock().unwrap().len(),
                before,
                "{shown:?} reached the app"
            );
        }
    }
}

/// Case and percent-encoding case share an entry; the app sees the same
/// lowercased text the key holds; a trailing dot is another key.
#[tokio::test]
async fn host_case_folds_into_one_entry_and_the_app_sees_the_key_text() {
    let heads: Heads = Arc::default();
    for (name, addr) in [
        (
            "cache",
            app_stack_with(link_app(Arc::clone(&heads))).await.0,
        ),
        (
            "cache+proxy",
            proxy_stack_with(link_app(Arc::clone(&heads)), false)
                .await
                .0,
        ),
    ] {
        let first = get_host(addr, "/c", "A%4A.Test").await;
        assert!(body(&first).contains("host=a%4a.test"), "{name}: {first}");
        let second = get_host(addr, "/c", "a%4a.TEST").await;
        assert!(is_hit(&second), "{name}: {second}");
        let dot = get_host(addr, "/c", "a%4a.test.").await;
        assert!(
            !is_hit(&dot) && body(&dot).contains("host=a%4a.test."),
            "{name}: {dot}"
        );
    }
}

/// Very long hosts: no panic, no 5xx; over the key limit the cache
/// bypasses, the proxy's 16 KiB line limit answers 431.
#[tokio::test]
async fn very_long_hosts_are_bypassed_or_refused_never_crash() {
    let heads: Heads = Arc::default();
    let (cache_addr, cache) = app_stack_with(link_app(Arc::clone(&heads))).await;
    let (both_addr, _c) = proxy_stack_with(link_app(Arc::clone(&heads)), false).await;
    for len in [255, 4096, 8000, 15_000, 20_000, 70_000] {
        let host = format!("{}.test", "a".repeat(len));
        for (name, addr) in [("cache", cache_addr), ("cache+proxy", both_addr)] {
            let a = get_host(addr, "/long", &host).await;
            let s = status(&a);
            assert!(
                s.is_empty() || s.starts_with('2') || s.starts_with('4'),
                "{name} {len}: {}",
                &a[..a.len().min(300)]
            );
        }
    }
    let _ = cache.stats();
}

// ---------------------------------------------------------------------
// The Redis tier (a redis-server of this process's own, from PATH).
// ---------------------------------------------------------------------

#[cfg(feature = "redis")]
mod redis_tier {
    use super::*;
    use tower_ssr::cache::RedisTier;

    fn namespace(test: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("review-{test}-{}-{nanos}", std::process::id())
    }

    /// One instance on the shared Redis: CacheLayer over `origin`.
    async fn instance(origin: &Origin, ns: &str) -> (SocketAddr, ResponseCache) {
        let tier = RedisTier::new(&common::redis::redis_url())
            .unwrap()
            .namespace(ns);
        let cache = ResponseCache::builder().redis(tier).build();
        let svc = tower::ServiceBuilder::new()
            .map_response(|res: Response<_>| res.map(axum::body::Body::new))
            .layer(CacheLayer::new(cache.clone()))
            .service(origin.app());
        let svc = tower::util::MapRequest::new(svc, |req: Request<hyper::body::Incoming>| {
            req.map(axum::body::Body::new)
        });
        (serve_svc(svc).await, cache)
    }

    /// `a.test:80` on one instance and `a.test` on another share the
    /// Redis copy; a promoted copy expires on its keep time like any
    /// other, in memory and in Redis (held).
    #[cfg_attr(not(tower_ssr_redis), ignore = "needs redis-server")]
    #[tokio::test]
    async fn promoted_copies_expire_with_their_keep_time_in_both_tiers() {
        let ns = namespace("l2port");
        let origin = Origin::default();
        let (a, _ca) = instance(&origin, &ns).await;
        let (b, cb) = instance(&origin, &ns).await;
        let p = "/l2?cc=max-age%3D2";
        assert_eq!(body(&get_host(a, p, "a.test:80").await), "call 1");
        // The write to Redis is behind the response.
        common::until("A's write to Redis", || _ca.stats().l2_writes >= 1).await;
        let got = get_host(b, p, "a.test:80").await;
        assert_eq!(body(&got), "call 1", "{got}");
        assert!(cb.stats().l2_hits >= 1);
        // Another spelling is another key, in Redis too.
        assert_ne!(body(&get_host(b, p, "a.test").await), "call 1");
        // Past the keep time (2 s): neither tier serves it.
        sleep_s(3.0).await;
        for (addr, host) in [(b, "a.test:80"), (a, "a.test:80")] {
            let late = get_host(addr, p, host).await;
            assert!(!body(&late).starts_with("call 1"), "{host}: {late}");
        }
    }

    /// A purge by URL with the port (as `ResponseCache::purge` documents
    /// its argument) reaches neither tier.
    #[cfg_attr(not(tower_ssr_redis), ignore = "needs redis-server")]
    #[tokio::test]
    async fn a_purge_by_url_with_a_port_reaches_redis() {
        let ns = namespace("l2purge");
        let origin = Origin::default();
        let (a, ca) = instance(&origin, &ns).await;
        let (b, cb) = instance(&origin, &ns).await;
        let p = "/pp?cc=max-age%3D600";
        assert_eq!(body(&get_host(a, p, "a.test:80").await), "call 1");
        common::until("A's write to Redis", || ca.stats().l2_writes >= 1).await;
        let got = get_host(b, p, "a.test:80").await;
        assert_eq!(body(&got), "call 1");
        // B forgets its memory copy by the documented key form; then A
        // purges the cluster by the URL as clients sent it.
        let _ = ca.purge(&format!("http://a.test:80{p}"));
        let _ = cb.purge(&format!("http://a.test:80{p}"));
        sleep_s(1.0).await;
        let after = get_host(b, p, "a.test:80").await;
        assert_ne!(
            body(&after),
            "call 1",
            "still served after purge(\"http://a.test:80{p}\") on both instances: {:?}",
            header(&after, "cache-status")
        );
    }
}

/// One variant of a key past its keep time while another keeps the key:
/// the dead variant is not served stale to a plain request (held), and a
/// background refresh under `stale-while-revalidate` replaces it (held).
#[tokio::test]
async fn a_dead_variant_beside_a_live_one_and_swr_refreshes() {
    let origin = Origin::default();
    let (addr, _cache) = app_stack_with(origin.app()).await;
    let p = "/v?cc=max-age%3D1&vary=x-v";
    let req = |v: &str, extra: &str| {
        format!("GET {p} HTTP/1.1\r\nHost: a.test\r\nX-V: {v}\r\n{extra}Connection: close\r\n\r\n")
    };
    assert_eq!(body(&raw(addr, &req("a", "")).await), "call 1");
    sleep_s(1.2).await;
    assert_eq!(body(&raw(addr, &req("b", "")).await), "call 2");
    // a: past its keep time (1 s); b: fresh until 2.2 s.
    sleep_s(0.5).await;
    let a = raw(addr, &req("a", "")).await;
    assert_eq!(body(&a), "call 3", "{a}");
    // SWR: served stale at once, refreshed behind, the refresh then hit.
    let s = "/swr?cc=max-age%3D1%2C%20stale-while-revalidate%3D3";
    let first = get_host(addr, s, "a.test").await;
    let n1 = body(&first).to_owned();
    sleep_s(1.5).await;
    let before = origin.calls();
    let stale = get_host(addr, s, "a.test").await;
    assert_eq!(body(&stale), n1, "served stale within the window: {stale}");
    common::until("the background refresh", || origin.calls() > before).await;
    let mut fresh = String::new();
    for _ in 0..500 {
        fresh = get_host(addr, s, "a.test").await;
        if body(&fresh) != n1 {
            break;
        }
        sleep_s(0.01).await;
    }
    assert_ne!(body(&fresh), n1, "{fresh}");
    assert!(is_hit(&fresh), "{fresh}");
}

/// Many clients on one key that expires every second: no error, every
/// answer a page; print how many renders it took (each expiry should
/// cost one render, give or take the refresh that raced a lookup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_and_stores_on_an_expiring_key_always_answer_whole_pages() {
    let origin = Origin::default();
    let (addr, cache) = app_stack_with(origin.app()).await;
    let p = "/race?cc=max-age%3D1";
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let a = get_host(addr, p, "a.test").await;
                assert_eq!(status(&a), "200", "{a}");
                assert!(body(&a).starts_with("call "), "{a}");
                n += 1;
            }
            n
        }));
    }
    sleep_s(5.0).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    eprintln!(
        "{total} requests over 5 s, {} renders, stats {:?}",
        origin.calls(),
        cache.stats()
    );
    // Coalescing holds while the key expires every second: far fewer
    // renders than requests.
    assert!(
        origin.calls() < total / 2,
        "{} renders for {total}",
        origin.calls()
    );
}

/// RFC 9111 §4.4 across port spellings: a POST through `a.test:80`
/// invalidates `a.test`'s entry, and a `Location` naming
/// `http://A.TEST:0080/other` invalidates `/other` (held).
#[tokio::test]
async fn unsafe_methods_invalidate_every_spelling_of_the_default_port() {
    let n = Arc::new(AtomicUsize::new(0));
    let app = {
        let n = Arc::clone(&n);
        let page = move || {
            let k = n.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                (
                    [("cache-control", "public, max-age=600")],
                    format!("page {k}"),
                )
            }
        };
        Router::new()
            .route(
                "/form",
                get(page.clone())
                    .post(|| async { ([("location", "http://A.TEST:0080/other")], "done") }),
            )
            .route("/other", get(page))
    };
    let (addr, _cache) = app_stack_with(app).await;
    get_host(addr, "/form", "a.test").await;
    get_host(addr, "/other", "a.test").await;
    assert!(is_hit(&get_host(addr, "/form", "a.test").await));
    assert!(is_hit(&get_host(addr, "/other", "a.test").await));
    let post = raw(
        addr,
        "POST /form HTTP/1.1\r\nHost: a.test:80\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&post), "200", "{post}");
    assert!(!is_hit(&get_host(addr, "/form", "a.test").await));
    assert!(!is_hit(&get_host(addr, "/other", "a.test").await));
}
