//! The balancer and the reverse proxy over real sockets on 127.0.0.1.
#![cfg(feature = "proxy")]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use common::{send, serve_proxy, Seen};
use http::Request;
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tower_ssr::balance::{
    Endpoints, Key, LeastInFlight, PassiveHealth, PowerOfTwo, Rendezvous, Retries, RoundRobin,
    TrustedProxies,
};
use tower_ssr::proxy::ReverseProxy;

/// A running upstream: answers `x-upstream: NAME` and echoes the request
/// headers in its body; counts its requests.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    fn uri(&self) -> Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }

    /// Closes the listener and every connection.
    async fn kill(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.await;
    }
}

async fn upstream_on(addr: SocketAddr, name: &'static str, delay: Duration) -> Upstream {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let h = Arc::clone(&h);
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let echo: String = headers
                .iter()
                .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?")))
                .collect();
            ([("x-upstream", name)], echo).into_response()
        }
    });
    serve_app(addr, app, hits).await
}

async fn serve_app(addr: SocketAddr, app: Router, hits: Arc<AtomicUsize>) -> Upstream {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Upstream {
        addr,
        hits,
        stop: Some(tx),
        task,
    }
}

async fn upstream(name: &'static str) -> Upstream {
    upstream_on("127.0.0.1:0".parse().unwrap(), name, Duration::ZERO).await
}

fn set_of<S: tower_ssr::balance::Strategy>(strategy: S, ups: &[&Upstream]) -> Endpoints<Uri> {
    let set = Endpoints::new(strategy);
    for u in ups {
        set.add(&u.uri().to_string(), u.uri()).unwrap();
    }
    set
}

fn who(seen: &Seen) -> String {
    seen.one("x-upstream").to_owned()
}

/// Guards against hangs only; never a timing assertion.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("hung")
}

#[tokio::test]
async fn round_robin_goes_in_exact_order() {
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let proxy =
        serve_proxy(ReverseProxy::builder(set_of(RoundRobin::new(), &[&a, &b, &c])).build()).await;
    let mut order = Vec::new();
    for _ in 0..7 {
        let res = common::get(proxy, "/").await;
        assert_eq!(res.status, StatusCode::OK);
        order.push(who(&res));
    }
    assert_eq!(order, ["a", "b", "c", "a", "b", "c", "a"]);
}

#[tokio::test]
async fn weights_set_the_shares() {
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let set = Endpoints::new(RoundRobin::new());
    for (u, w) in [(&a, 1), (&b, 2), (&c, 3)] {
        set.add_weighted(&u.uri().to_string(), u.uri(), w).unwrap();
    }
    let proxy = serve_proxy(ReverseProxy::builder(set).build()).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        *counts
            .entry(who(&common::get(proxy, "/").await))
            .or_default() += 1;
    }
    assert_eq!((counts["a"], counts["b"], counts["c"]), (10, 20, 30));
}

async fn slow_gets_less(strategy_name: &str) {
    let slow = upstream_on(
        "127.0.0.1:0".parse().unwrap(),
        "slow",
        Duration::from_millis(300),
    )
    .await;
    let (a, b) = (upstream("a").await, upstream("b").await);
    let set = match strategy_name {
        "p2c" => set_of(PowerOfTwo::with_seed(11), &[&slow, &a, &b]),
        _ => set_of(LeastInFlight::new(), &[&slow, &a, &b]),
    };
    let proxy = serve_proxy(ReverseProxy::builder(set).build()).await;
    // Six clients, each sending requests one after another.
    let workers: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..20 {
                    assert_eq!(common::get(proxy, "/").await.status, StatusCode::OK);
                }
            })
        })
        .collect();
    within(async {
        for w in workers {
            w.await.unwrap();
        }
    })
    .await;
    let (s, a, b) = (
        slow.hits.load(Ordering::SeqCst),
        a.hits.load(Ordering::SeqCst),
        b.hits.load(Ordering::SeqCst),
    );
    assert_eq!(s + a + b, 120);
    assert!(s < a && s < b, "{strategy_name}: slow {s}, a {a}, b {b}");
}

#[tokio::test]
async fn p2c_sends_less_to_a_slow_endpoint() {
    slow_gets_less("p2c").await;
}

#[tokio::test]
async fn least_in_flight_sends_less_to_a_slow_endpoint() {
    slow_gets_less("least").await;
}

#[tokio::test]
async fn header_hash_keeps_keys_and_moves_only_the_leavers_keys() {
    let ups = [
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
        upstream("d").await,
    ];
    let set = set_of(Rendezvous::new(), &ups.iter().collect::<Vec<_>>());
    let proxy_svc = ReverseProxy::builder(set.clone())
        .key(Key::header(http::HeaderName::from_static("x-user")))
        .build();
    let proxy = serve_proxy(proxy_svc).await;
    let route = |user: String| async move {
        who(&common::get_with(proxy, "/", &[("x-user", &user)]).await)
    };
    let mut before = HashMap::new();
    for k in 0..200 {
        let w = route(format!("user-{k}")).await;
        // stable: the same key again lands on the same upstream
        assert_eq!(route(format!("user-{k}")).await, w);
        before.insert(k, w);
    }
    set.remove(set.id_of(&ups[1].uri().to_string()).unwrap());
    let mut moved = 0;
    for k in 0..200 {
        let w = route(format!("user-{k}")).await;
        if before[&k] == "b" {
            assert_ne!(w, "b");
            moved += 1;
        } else {
            assert_eq!(w, before[&k], "a key not on the leaver moved");
        }
    }
    let share = f64::from(moved) / 200.0;
    assert!((0.12..0.40).contains(&share), "moved {share}");
}

#[tokio::test]
async fn ip_hash_uses_the_rightmost_untrusted_hop() {
    let ups = [
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
        upstream("d").await,
    ];
    let set = set_of(Rendezvous::new(), &ups.iter().collect::<Vec<_>>());
    let trusted = TrustedProxies::try_new(["127.0.0.1"]).unwrap();
    let proxy = serve_proxy(
        ReverseProxy::builder(set)
            .key(Key::client_ip(trusted.clone()))
            // The proxy removes forwarding headers of untrusted peers
            // before the key reads them: the same trust in both places.
            .trusted_proxies(trusted)
            .build(),
    )
    .await;
    // The leftmost entry is whatever the client made up; the hop our
    // trusted peer appended decides.
    let first =
        who(&common::get_with(proxy, "/", &[("x-forwarded-for", "6.6.6.6, 198.51.100.7")]).await);
    for spoof in ["7.7.7.7", "8.8.8.8", "1.1.1.1", "9.9.9.9"] {
        let xff = format!("{spoof}, 198.51.100.7");
        assert_eq!(
            who(&common::get_with(proxy, "/", &[("x-forwarded-for", &xff)]).await),
            first
        );
    }
    let mut spread = std::collections::HashSet::new();
    for i in 0..40 {
        let xff = format!("203.0.113.{i}");
        spread.insert(who(&common::get_with(
            proxy,
            "/",
            &[("x-forwarded-for", &xff)],
        )
        .await));
    }
    assert!(spread.len() >= 3, "{spread:?}");
}

#[tokio::test]
async fn empty_set_answers_503_at_once() {
    let set: Endpoints<Uri> = Endpoints::new(RoundRobin::new());
    let proxy = serve_proxy(ReverseProxy::builder(set).build()).await;
    let res = within(common::get(proxy, "/")).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// A port on which nothing listens any more.
async fn dead_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn post_is_not_retried_and_gets_502() {
    let dead = dead_port().await;
    let live = upstream("live").await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("dead", format!("http://{dead}").parse().unwrap())
        .unwrap();
    set.add("live", live.uri()).unwrap();
    let proxy = serve_proxy(ReverseProxy::builder(set).build()).await;
    // Round robin: the first request goes to "dead".
    let res = send(proxy, Method::POST, "/form", &[]).await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    assert_eq!(live.hits.load(Ordering::SeqCst), 0);
    // The same for GET is retried on "live".
    let res = send(proxy, Method::GET, "/", &[]).await;
    assert_eq!(res.status, StatusCode::OK);
    let res = send(proxy, Method::GET, "/", &[]).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(live.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn small_put_bodies_are_replayed_on_retry() {
    let dead = dead_port().await;
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    let app = Router::new().fallback(move |body: Bytes| {
        let g = Arc::clone(&g);
        async move {
            g.lock().unwrap().push(body);
            StatusCode::NO_CONTENT
        }
    });
    let live = serve_app("127.0.0.1:0".parse().unwrap(), app, Arc::default()).await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("dead", format!("http://{dead}").parse().unwrap())
        .unwrap();
    set.add("live", live.uri()).unwrap();
    let proxy = serve_proxy(ReverseProxy::builder(set).build()).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let req = Request::put(format!("http://{proxy}/doc"))
        .body(http_body_util::Full::new(Bytes::from_static(
            b"the document",
        )))
        .unwrap();
    let res = within(client.request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        got.lock().unwrap().as_slice(),
        [Bytes::from_static(b"the document")]
    );
}

#[tokio::test]
async fn a_killed_upstream_is_ejected_and_no_get_fails() {
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let set = Endpoints::builder()
        .strategy(RoundRobin::new())
        .health(
            PassiveHealth::new()
                .consecutive_failures(3)
                .base_ejection(Duration::from_secs(3600)),
        )
        .build();
    for u in [&a, &b, &c] {
        set.add(&u.uri().to_string(), u.uri()).unwrap();
    }
    let b_id = set.id_of(&b.uri().to_string()).unwrap();
    let proxy = serve_proxy(ReverseProxy::builder(set.clone()).build()).await;
    for _ in 0..6 {
        assert_eq!(common::get(proxy, "/").await.status, StatusCode::OK);
    }
    b.kill().await;
    for i in 0..60 {
        let res = within(common::get(proxy, "/")).await;
        assert_eq!(res.status, StatusCode::OK, "request {i} failed");
        assert_ne!(who(&res), "b");
    }
    let stats = set.stats_of(b_id).unwrap();
    assert!(stats.ejected);
    // Three failures ejected it; after that it was never picked.
    assert_eq!(stats.failures, 3);
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test]
async fn an_ejected_upstream_returns_after_its_backoff() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let b_addr = b.addr;
    let set = Endpoints::builder()
        .strategy(RoundRobin::new())
        .health(
            PassiveHealth::new()
                .consecutive_failures(1)
                .base_ejection(Duration::from_millis(50)),
        )
        .build();
    set.add("a", a.uri()).unwrap();
    let b_id = set.add("b", b.uri()).unwrap();
    let proxy = serve_proxy(ReverseProxy::builder(set.clone()).build()).await;
    b.kill().await;
    while !set.stats_of(b_id).unwrap().ejected {
        assert_eq!(within(common::get(proxy, "/")).await.status, StatusCode::OK);
    }
    let _revived = upstream_on(b_addr, "b-again", Duration::ZERO).await;
    within(async {
        loop {
            let res = common::get(proxy, "/").await;
            assert_eq!(res.status, StatusCode::OK);
            if who(&res) == "b-again" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!set.stats_of(b_id).unwrap().ejected);
}

#[tokio::test]
async fn a_slow_upstream_gets_504() {
    let slow = upstream_on(
        "127.0.0.1:0".parse().unwrap(),
        "slow",
        Duration::from_secs(20),
    )
    .await;
    let set = set_of(RoundRobin::new(), &[&slow]);
    let proxy = serve_proxy(
        ReverseProxy::builder(set)
            .response_timeout(Duration::from_millis(200))
            .retries(Retries::none())
            .build(),
    )
    .await;
    let res = within(common::get(proxy, "/")).await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn forwarding_headers_and_hop_by_hop_removal() {
    let a = upstream("a").await;
    let proxy = serve_proxy(ReverseProxy::builder(set_of(RoundRobin::new(), &[&a])).build()).await;
    let res = common::get_with(
        proxy,
        "/x?q=1",
        &[
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("x-forwarded-for", "6.6.6.6"),
            ("authorization", "Bearer t"),
        ],
    )
    .await;
    let echo = String::from_utf8(res.body.to_vec()).unwrap();
    assert!(!echo.contains("x-private"), "{echo}");
    assert!(
        // The peer is no trusted proxy: its list is replaced, not extended.
        echo.contains("x-forwarded-for: 127.0.0.1\n"),
        "{echo}"
    );
    assert!(echo.contains("x-forwarded-proto: http\n"), "{echo}");
    assert!(
        echo.contains(&format!("x-forwarded-host: {proxy}\n")),
        "{echo}"
    );
    assert!(echo.contains(&format!("host: {proxy}\n")), "{echo}");
    assert!(echo.contains("via: 1.1 tower-ssr\n"), "{echo}");
    assert!(echo.contains("authorization: Bearer t\n"), "{echo}");
}

#[tokio::test]
async fn in_flight_lasts_until_a_streamed_body_ends() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let app = Router::new().fallback(move || {
        let rx = rx.lock().unwrap().take();
        async move {
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx.expect("one request"));
            Response::new(Body::from_stream(stream))
        }
    });
    let up = serve_app("127.0.0.1:0".parse().unwrap(), app, Arc::default()).await;
    let set = set_of(RoundRobin::new(), &[&up]);
    let id = set.id_of(&up.uri().to_string()).unwrap();
    let proxy = serve_proxy(ReverseProxy::builder(set.clone()).build()).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let res = within(client.get(format!("http://{proxy}/").parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    tx.send(Ok(Bytes::from_static(b"<html>shell")))
        .await
        .unwrap();
    // Headers are out, the body is still streaming: still in flight.
    assert_eq!(set.stats_of(id).unwrap().in_flight, 1);
    tx.send(Ok(Bytes::from_static(b"rest</html>")))
        .await
        .unwrap();
    drop(tx);
    let body = within(res.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(&body[..], b"<html>shellrest</html>");
    within(async {
        while set.stats_of(id).unwrap().in_flight != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn http_probes_take_a_failing_upstream_out_and_bring_it_back() {
    use std::sync::atomic::AtomicBool;
    use tower_ssr::balance::ActiveProbes;
    use tower_ssr::proxy::http_check;

    let healthy = Arc::new(AtomicBool::new(true));
    let h = Arc::clone(&healthy);
    let app = Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let ok = h.load(Ordering::SeqCst);
            async move {
                if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let up = serve_app("127.0.0.1:0".parse().unwrap(), app, Arc::default()).await;
    let set = set_of(RoundRobin::new(), &[&up]);
    let id = set.id_of(&up.uri().to_string()).unwrap();
    let _probes = ActiveProbes::new()
        .interval(Duration::from_millis(20))
        .unhealthy_threshold(2)
        .healthy_threshold(2)
        .spawn(&set, http_check("/healthz"));
    let probe_healthy = || set.stats_of(id).unwrap().probe_healthy;
    healthy.store(false, Ordering::SeqCst);
    within(async {
        while probe_healthy() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    healthy.store(true, Ordering::SeqCst);
    within(async {
        while !probe_healthy() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_connect_info_is_the_client_ip_key() {
    use tower_ssr::balance::Balance;

    type Worker = tower::util::BoxCloneSyncService<Request<Body>, Response, Infallible>;
    use std::convert::Infallible;
    let set = Endpoints::new(Rendezvous::new());
    for name in ["w1", "w2", "w3", "w4"] {
        let w = tower::service_fn(move |_req: Request<Body>| async move {
            Ok::<_, Infallible>(([("x-upstream", name)], "page").into_response())
        });
        set.add(name, Worker::new(w)).unwrap();
    }
    let balance = Balance::new(set).key(Key::client_ip(TrustedProxies::none()));
    let app = Router::new().route_service("/", balance);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    // Without the key the fallback (P2C) would spread these over four
    // workers; with it, one client IP always lands on one worker.
    let first = who(&common::get(addr, "/").await);
    for _ in 0..20 {
        assert_eq!(who(&common::get(addr, "/").await), first);
    }
}

#[tokio::test]
async fn garbage_or_silent_upstreams_give_502_and_the_proxy_goes_on() {
    for reply in [&b"HTTP/1.1 abc\r\n\r\n"[..], b"", b"SSH-2.0-OpenSSH\r\n"] {
        let bad = common::raw::canned_upstream("", reply).await;
        let set = Endpoints::new(RoundRobin::new());
        set.add("bad", format!("http://{bad}").parse().unwrap())
            .unwrap();
        let proxy = serve_proxy(ReverseProxy::builder(set).build()).await;
        for _ in 0..3 {
            let res = within(common::get(proxy, "/")).await;
            assert_eq!(res.status, StatusCode::BAD_GATEWAY, "{reply:?}");
        }
    }
}

#[tokio::test]
async fn a_client_hanging_up_mid_body_releases_the_count() {
    // An endless page: one chunk every few milliseconds, forever.
    let app = Router::new().fallback(|| async {
        let stream = futures_stream();
        Response::new(Body::from_stream(stream))
    });
    let up = serve_app("127.0.0.1:0".parse().unwrap(), app, Arc::default()).await;
    let set = set_of(RoundRobin::new(), &[&up]);
    let id = set.id_of(&up.uri().to_string()).unwrap();
    let proxy = serve_proxy(ReverseProxy::builder(set.clone()).build()).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let res = within(client.get(format!("http://{proxy}/").parse().unwrap()))
        .await
        .unwrap();
    let mut body = res.into_body();
    let first = within(body.frame()).await.unwrap().unwrap();
    assert!(first.is_data());
    assert_eq!(set.stats_of(id).unwrap().in_flight, 1);
    drop(body);
    drop(client);
    within(async {
        while set.stats_of(id).unwrap().in_flight != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

fn futures_stream() -> impl tokio_stream::Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while tx
            .send(Ok(Bytes::from_static(b"<p>more</p>")))
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// An endpoint's body that fails with its head and first chunks still in
/// the server's buffer (nothing was pending between them): the client gets
/// the status line and the chunks, then the cut, never a connection closed
/// without a status (issue 8 §8's kind, without a cache in front). With
/// stalls the server writes between, so every count gives the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_body_that_breaks_off_leaves_the_status_line() {
    use tower_ssr::balance::Balance;
    type Worker = tower::util::BoxCloneSyncService<
        http::Request<hyper::body::Incoming>,
        http::Response<axum::body::Body>,
        std::convert::Infallible,
    >;
    for stalls in 0..4 {
        let set = Endpoints::new(RoundRobin::new());
        let w = tower::service_fn(
            move |_req: http::Request<hyper::body::Incoming>| async move {
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-length", "300000")
                        .body(axum::body::Body::new(common::raw::BreaksOff::new(stalls)))
                        .unwrap(),
                )
            },
        );
        set.add("w", Worker::new(w)).unwrap();
        let addr = common::raw::serve_svc(Balance::new(set)).await;
        let reply = common::raw::get_host(addr, "/", "a.test").await;
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "{stalls} stalls: {:?}",
            &reply[..reply.len().min(40)]
        );
        let at = reply.find("\r\n\r\n").unwrap() + 4;
        assert!(
            reply.len() - at >= 8192,
            "{stalls}: the first chunk arrived"
        );
        assert!(reply.len() - at < 300_000, "{stalls}: looks complete");
    }
}
