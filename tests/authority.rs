//! Issue 8 §1 and the proxy side of §8, over real sockets: one validated
//! authority for the cache key, the `Host` the inner service sees and the
//! forwarding headers; `400` for missing, repeated or invalid `Host`;
//! forwarding headers from untrusted peers removed; trailers; `431`;
//! a never-answering upstream ejected. Raw TCP writes, so that targets in
//! absolute form and duplicate `Host` lines reach the server as sent.
#![cfg(all(feature = "proxy", feature = "cache"))]

mod common;

use common::raw::{body, header, raw, serve_svc, status, within};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::{HeaderMap, Request, Response, Uri};
use tokio::net::TcpListener;
use tower::Layer;

use tower_ssr::authority::{FORWARDING_HEADERS, METHOD_OVERRIDE_HEADERS};
use tower_ssr::balance::{Endpoints, PassiveHealth, Retries, RoundRobin};
use tower_ssr::cache::{CacheLayer, ResponseCache};
use tower_ssr::limits::HeaderLimits;
use tower_ssr::proxy::ReverseProxy;

/// Every request head the upstream received.
type Heads = Arc<Mutex<Vec<HeaderMap>>>;

/// An axum app that renders the `Host` it sees into a cacheable page and
/// lists every header it received, one `name: value` line each.
fn echo_app(heads: Heads) -> Router {
    let handler = move |headers: HeaderMap| {
        let heads = Arc::clone(&heads);
        async move {
            heads.lock().unwrap().push(headers.clone());
            let host = headers
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let mut page = format!("<a href=\"http://{host}/next\">host={host}</a>\n");
            for (k, v) in &headers {
                page.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            ([("cache-control", "public, max-age=60")], page)
        }
    };
    Router::new()
        .route("/home", get(handler.clone()))
        .route("/{*rest}", get(handler))
}

/// examples/proxy: CacheLayer over ReverseProxy over the echo app.
async fn proxy_stack() -> (SocketAddr, Heads) {
    let heads: Heads = Arc::default();
    let upstream = common::serve(echo_app(Arc::clone(&heads))).await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("r1", format!("http://{upstream}").parse::<Uri>().unwrap())
        .unwrap();
    let proxy = ReverseProxy::builder(set).build();
    let cache = ResponseCache::builder().max_bytes(16 << 20).build();
    (serve_svc(CacheLayer::new(cache).layer(proxy)).await, heads)
}

/// CacheLayer over an axum app, in the process.
async fn app_stack() -> (SocketAddr, Heads) {
    let heads: Heads = Arc::default();
    let cache = ResponseCache::builder().max_bytes(16 << 20).build();
    let app = echo_app(Arc::clone(&heads));
    let svc = tower::ServiceBuilder::new()
        .map_response(|res: Response<_>| res.map(axum::body::Body::new))
        .layer(CacheLayer::new(cache))
        .service(app);
    let svc = tower::util::MapRequest::new(svc, |req: Request<hyper::body::Incoming>| {
        req.map(axum::body::Body::new)
    });
    (serve_svc(svc).await, heads)
}

async fn stacks() -> [(&'static str, SocketAddr, Heads); 2] {
    let (p, ph) = proxy_stack().await;
    let (a, ah) = app_stack().await;
    [("cache+proxy", p, ph), ("cache+axum", a, ah)]
}

#[tokio::test]
async fn the_absolute_form_authority_wins_and_nothing_is_stored_under_another_host() {
    for (name, addr, heads) in stacks().await {
        // Issue 8 §1, first input.
        let poison = raw(
            addr,
            "GET http://victim.test/home HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status(&poison), "200", "{name}: {poison}");
        assert!(
            body(&poison).contains("host=victim.test"),
            "{name}: {poison}"
        );
        assert!(!body(&poison).contains("evil.test"), "{name}: {poison}");
        // The next ordinary visitor of victim.test: a hit, rendered for
        // victim.test.
        let visitor = raw(
            addr,
            "GET /home HTTP/1.1\r\nHost: victim.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            header(&visitor, "cache-status")
                .unwrap_or("")
                .contains("hit"),
            "{name}: {visitor}"
        );
        assert!(!visitor.contains("evil.test"), "{name}: {visitor}");
        // evil.test has its own entry, rendered for itself.
        let other = raw(
            addr,
            "GET /home HTTP/1.1\r\nHost: EVIL.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(body(&other).contains("host=evil.test"), "{name}: {other}");
        assert!(!other.contains("victim.test"), "{name}: {other}");
        let seen = heads.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{name}: two renders, one per host");
        assert_eq!(seen[0]["host"], "victim.test", "{name}");
    }
}

#[tokio::test]
async fn missing_repeated_and_invalid_hosts_get_400_and_reach_nothing() {
    let hosts: &[&str] = &[
        // Issue 8 §1, second input.
        "Host: a.test\r\nHost: b.test\r\n",
        "Host: a.test\r\nHost: a.test\r\n",
        "",
        "Host: victim.test/admin\r\n",
        // The wider kind.
        "Host: victim.test?x\r\n",
        "Host: victim.test#x\r\n",
        "Host: user@victim.test\r\n",
        "Host: user:pw@victim.test\r\n",
        "Host: vic tim.test\r\n",
        "Host: \r\n",
        "Host: :80\r\n",
        "Host: victim.test:\r\n",
        "Host: victim.test:http\r\n",
        "Host: victim.test:99999\r\n",
        "Host: [::1\r\n",
        "Host: victim.test\\evil\r\n",
        "Host: victim.test, evil.test\r\n",
    ];
    for (name, addr, heads) in stacks().await {
        for host in hosts {
            let answer = raw(
                addr,
                &format!("GET /home HTTP/1.1\r\n{host}Connection: close\r\n\r\n"),
            )
            .await;
            assert_eq!(status(&answer), "400", "{name}: {host:?}: {answer}");
        }
        // An absolute-form target with userinfo, or with a bad Host beside it.
        for req in [
            "GET http://user@victim.test/home HTTP/1.1\r\nHost: victim.test\r\n",
            "GET http://victim.test/home HTTP/1.1\r\nHost: victim.test/admin\r\n",
            "GET http://victim.test/home HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n",
        ] {
            let answer = raw(addr, &format!("{req}Connection: close\r\n\r\n")).await;
            assert_eq!(status(&answer), "400", "{name}: {req:?}: {answer}");
        }
        assert!(heads.lock().unwrap().is_empty(), "{name}: forwarded");
    }
}

#[tokio::test]
async fn http10_without_host_is_served_but_never_stored() {
    for (name, addr, heads) in stacks().await {
        for _ in 0..2 {
            let answer = raw(addr, "GET /home HTTP/1.0\r\n\r\n").await;
            assert_eq!(status(&answer), "200", "{name}: {answer}");
            assert!(
                !header(&answer, "cache-status")
                    .unwrap_or("")
                    .contains("hit"),
                "{name}: {answer}"
            );
        }
        assert_eq!(heads.lock().unwrap().len(), 2, "{name}: both rendered");
        // And a Host-less answer is not what a real host gets.
        let answer = raw(
            addr,
            "GET /home HTTP/1.1\r\nHost: victim.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            body(&answer).contains("host=victim.test"),
            "{name}: {answer}"
        );
    }
}

#[tokio::test]
async fn no_forwarding_header_from_a_client_reaches_the_app() {
    for (name, addr, heads) in stacks().await {
        let mut spoofed = String::new();
        for h in FORWARDING_HEADERS.iter().chain(METHOD_OVERRIDE_HEADERS) {
            spoofed.push_str(&format!("{h}: evil.test\r\n"));
        }
        let answer = raw(
            addr,
            &format!(
                "GET /home HTTP/1.1\r\nHost: victim.test\r\n{spoofed}Connection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(status(&answer), "200", "{name}: {answer}");
        assert!(!answer.contains("evil.test"), "{name}: {answer}");
        let seen = heads.lock().unwrap()[0].clone();
        for h in FORWARDING_HEADERS.iter().chain(METHOD_OVERRIDE_HEADERS) {
            let values: Vec<_> = seen.get_all(*h).iter().collect();
            assert!(
                values.iter().all(|v| v.as_bytes() != b"evil.test"),
                "{name}: {h}: {values:?}"
            );
        }
        if name == "cache+proxy" {
            // The proxy's own, from the connection and the authority.
            assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{name}");
            assert_eq!(seen["x-forwarded-host"], "victim.test", "{name}");
            assert_eq!(seen["x-forwarded-proto"], "http", "{name}");
        }
    }
}

#[tokio::test]
async fn a_proxy_alone_refuses_bad_hosts_and_rewrites_host_to_the_target() {
    let heads: Heads = Arc::default();
    let upstream = common::serve(echo_app(Arc::clone(&heads))).await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("r1", format!("http://{upstream}").parse::<Uri>().unwrap())
        .unwrap();
    let addr = common::serve_proxy(ReverseProxy::builder(set).build()).await;
    let answer = raw(
        addr,
        "GET http://victim.test/home HTTP/1.1\r\nHost: evil.test\r\n\
         X-Forwarded-Host: evil.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(body(&answer).contains("host=victim.test"), "{answer}");
    assert!(!answer.contains("evil.test"), "{answer}");
    for bad in [
        "Host: a.test\r\nHost: b.test\r\n",
        "",
        "Host: victim.test/admin\r\n",
    ] {
        let answer = raw(
            addr,
            &format!("GET /home HTTP/1.1\r\n{bad}Connection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status(&answer), "400", "{bad:?}: {answer}");
    }
    assert_eq!(heads.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn trailers_reach_a_client_that_asked_for_them() {
    let (up, heads) = common::raw_upstream(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\
          connection: close\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n",
    )
    .await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("r1", format!("http://{up}").parse::<Uri>().unwrap())
        .unwrap();
    let addr = common::serve_proxy(ReverseProxy::builder(set).build()).await;
    let answer = raw(
        addr,
        "GET /t HTTP/1.1\r\nHost: a.test\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), "200", "{answer}");
    assert_eq!(header(&answer, "trailer"), Some("x-checksum"), "{answer}");
    let lower = answer.to_lowercase();
    assert!(lower.contains("hello"), "{answer}");
    assert!(
        lower.contains("\r\n0\r\nx-checksum: abc123\r\n"),
        "the trailer after the last chunk: {answer:?}"
    );
    // TE is hop-by-hop, but its `trailers` is forwarded.
    assert!(heads.lock().unwrap()[0]
        .to_lowercase()
        .contains("\r\nte: trailers\r\n"));
}

#[tokio::test]
async fn a_header_line_or_section_over_the_limit_gets_431() {
    let (up, heads) =
        common::raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("r1", format!("http://{up}").parse::<Uri>().unwrap())
        .unwrap();
    let proxy = ReverseProxy::builder(set.clone()).build();
    let addr = common::serve_proxy(proxy).await;
    // Issue 8 §8: a 100 KB header line was forwarded.
    let big = "x".repeat(100_000);
    let answer = raw(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(
        status(&answer),
        "431",
        "{}",
        &answer[..answer.len().min(200)]
    );
    // Many lines under the line limit, over the section limit.
    let line = "y".repeat(10_000);
    let many: String = (0..8).map(|i| format!("X-Part-{i}: {line}\r\n")).collect();
    let answer = raw(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: a.test\r\n{many}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(
        status(&answer),
        "431",
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(heads.lock().unwrap().is_empty());
    // Configurable: a tighter line limit refuses what the default allows.
    let tight = ReverseProxy::builder(set)
        .header_limits(HeaderLimits::new().max_line(1024))
        .build();
    let addr = common::serve_proxy(tight).await;
    let medium = "z".repeat(2000);
    let answer = raw(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-M: {medium}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status(&answer), "431", "{answer}");
    let answer = raw(
        addr,
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-M: small\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), "200", "{answer}");
}

#[tokio::test]
async fn an_upstream_that_accepts_and_never_answers_is_ejected() {
    // Accepts, reads, never answers; the connections are kept open.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let (good, _) = common::raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    )
    .await;
    let set = Endpoints::builder()
        .strategy(RoundRobin::new())
        .health(PassiveHealth::new().consecutive_failures(2))
        .build();
    let silent_id = set
        .add("silent", format!("http://{silent}").parse::<Uri>().unwrap())
        .unwrap();
    set.add("good", format!("http://{good}").parse::<Uri>().unwrap())
        .unwrap();
    let proxy = ReverseProxy::builder(set.clone())
        .retries(Retries::new())
        .response_timeout(Duration::from_millis(300))
        .build();
    let addr = common::serve_proxy(proxy).await;
    let req = "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    within(async {
        while !set.stats_of(silent_id).unwrap().ejected {
            let answer = raw(addr, req).await;
            // A timeout is answered (504) or retried elsewhere (200).
            assert!(matches!(status(&answer), "200" | "504"), "{answer}");
        }
    })
    .await;
    assert!(set.stats_of(silent_id).unwrap().failures >= 2);
    let before = accepted.load(Ordering::SeqCst);
    for _ in 0..10 {
        let answer = raw(addr, req).await;
        assert_eq!(status(&answer), "200", "{answer}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        before,
        "picked while ejected"
    );
}
