//! The built-in HTTP/1.1 connection pool over real sockets on 127.0.0.1:
//! reuse (counted as connections the upstream accepted), a connection the
//! upstream closed while idle, a response body dropped early, the idle
//! timeout, concurrent requests, and an upgrade taking a pooled
//! connection for good.
#![cfg(feature = "proxy")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Service, ServiceExt};

use tower_ssr::balance::{ClientAddr, Endpoints, Retries, RoundRobin};
use tower_ssr::proxy::{self, ReverseProxy};

/// Guards against hangs only; never a timing assertion.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("hung")
}

/// What an upstream saw: connections accepted, requests, connections
/// closed.
#[derive(Clone, Default)]
struct Seen {
    conns: Arc<AtomicUsize>,
    reqs: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Seen {
    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
    fn reqs(&self) -> usize {
        self.reqs.load(Ordering::SeqCst)
    }
    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// A hyper HTTP/1.1 upstream: `/big` is 4 MiB, `/slow` answers after
/// 100 ms, `/up` switches to an echo protocol (101), anything else is
/// `page`.
async fn upstream() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let counted = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            counted.conns.fetch_add(1, Ordering::SeqCst);
            let seen = counted.clone();
            tokio::spawn(async move {
                let reqs = Arc::clone(&seen.reqs);
                let svc = service_fn(move |req: Request<Incoming>| {
                    reqs.fetch_add(1, Ordering::SeqCst);
                    answer(req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
                seen.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

async fn answer(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    match req.uri().path() {
        "/big" => Ok(Response::new(Full::new(Bytes::from(vec![b'x'; 4 << 20])))),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(Response::new(Full::new(Bytes::from_static(b"slow"))))
        }
        "/up" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = on_upgrade.await else { return };
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(Full::default())
                .unwrap())
        }
        _ => Ok(Response::new(Full::new(Bytes::from_static(b"page")))),
    }
}

fn proxy_to(addr: SocketAddr, idle_timeout: Duration) -> ReverseProxy {
    let set = Endpoints::new(RoundRobin::new());
    set.add("u", proxy::upstream(&format!("http://{addr}")).unwrap())
        .unwrap();
    // No balancer retries: only the pool's own may hide a failure.
    ReverseProxy::builder(set)
        .retries(Retries::none())
        .idle_timeout(idle_timeout)
        .try_build()
        .unwrap()
}

/// A `GET` as `proxy::serve` hands it over (with the client's address).
fn request(path: &str) -> Request<Empty<Bytes>> {
    let mut req = Request::get(path)
        .header("host", "front.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr("198.51.100.7:5000".parse().unwrap()));
    req
}

async fn get(proxy: &ReverseProxy, path: &str) -> (StatusCode, Bytes) {
    let res = within(proxy.clone().oneshot(request(path))).await.unwrap();
    let status = res.status();
    let body = within(res.into_body().collect()).await.unwrap().to_bytes();
    (status, body)
}

/// Waits (polling) until `cond` holds, for at most 10 s.
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let (addr, seen) = upstream().await;
    let proxy = proxy_to(addr, Duration::from_secs(60));
    for _ in 0..20 {
        assert_eq!(
            get(&proxy, "/page").await,
            (StatusCode::OK, Bytes::from("page"))
        );
    }
    assert_eq!(seen.reqs(), 20);
    assert_eq!(seen.conns(), 1);
}

/// A raw upstream that answers one keep-alive-looking response per
/// connection and then closes it (no `Connection: close`): the proxy
/// pools a connection the upstream has already closed. With
/// `under_the_next`, it first waits for the next request and closes
/// without answering it: its keep-alive timer fired as the request came.
async fn closing_upstream(under_the_next: bool) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let counted = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            counted.conns.fetch_add(1, Ordering::SeqCst);
            let seen = counted.clone();
            tokio::spawn(async move {
                let mut tmp = [0u8; 4096];
                for answered in [true, false]
                    .into_iter()
                    .take(1 + usize::from(under_the_next))
                {
                    let mut buf = Vec::new();
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    seen.reqs.fetch_add(1, Ordering::SeqCst);
                    if answered {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\npage")
                            .await;
                    }
                }
                drop(s);
                seen.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
    let (addr, seen) = closing_upstream(false).await;
    let proxy = proxy_to(addr, Duration::from_secs(60));
    for i in 1..=5 {
        // Right after the close (the proxy may not have read it yet, and
        // then sends on the closed connection and gets the request back)
        // and after a pause (it has).
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            get(&proxy, "/page").await,
            (StatusCode::OK, Bytes::from("page"))
        );
        // Each request reached the upstream once, on a connection of its
        // own.
        assert_eq!(seen.reqs(), i);
        assert_eq!(seen.conns(), i);
    }
}

#[tokio::test]
async fn a_response_body_dropped_early_leaves_no_broken_connection_in_the_pool() {
    let (addr, seen) = upstream().await;
    let proxy = proxy_to(addr, Duration::from_secs(60));
    for _ in 0..3 {
        let mut req = Request::get("/big")
            .header("host", "front.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        req.extensions_mut()
            .insert(ClientAddr("198.51.100.7:5000".parse().unwrap()));
        let res = within(proxy.clone().oneshot(req)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let mut body = res.into_body();
        // One frame of 4 MiB, then gone.
        let _ = within(body.frame()).await;
        drop(body);
        assert_eq!(
            get(&proxy, "/page").await,
            (StatusCode::OK, Bytes::from("page"))
        );
    }
    assert_eq!(seen.reqs(), 6);
    // hyper either drained the rest and kept the connection, or closed it.
    assert!(seen.conns() <= 4, "{}", seen.conns());
    let (status, body) = get(&proxy, "/big").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 4 << 20);
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let (addr, seen) = upstream().await;
    let proxy = proxy_to(addr, Duration::from_millis(200));
    assert_eq!(get(&proxy, "/page").await.0, StatusCode::OK);
    assert_eq!(get(&proxy, "/page").await.0, StatusCode::OK);
    assert_eq!(seen.conns(), 1);
    // Not before the timeout...
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen.closed(), 0);
    // ...but soon after it (1¼ timeouts at most, plus scheduling).
    until("the idle connection is closed", || seen.closed() == 1).await;
    assert_eq!(get(&proxy, "/page").await.0, StatusCode::OK);
    assert_eq!(seen.conns(), 2);
    // A connection in use is not idle, however long its request takes.
    let proxy = proxy_to(addr, Duration::from_millis(40));
    assert_eq!(get(&proxy, "/slow").await.0, StatusCode::OK);
    assert_eq!(get(&proxy, "/slow").await.0, StatusCode::OK);
    assert_eq!(seen.conns(), 3);
}

/// The pool's idle timeout is its own, not the tunnels' 60 s: by default
/// an idle connection closes within 3¾ s, before a renderer's keep-alive
/// (Node's and uvicorn's are 5 s) would close it under a request; set, it
/// closes after its own timeout while `idle_timeout` stays long.
#[tokio::test]
async fn idle_connections_close_before_a_renderers_keep_alive_would() {
    assert!(proxy::DEFAULT_POOL_IDLE_TIMEOUT * 5 / 4 < Duration::from_secs(5));
    let (addr, seen) = upstream().await;
    let build = |pool_idle: Option<Duration>| {
        let set = Endpoints::new(RoundRobin::new());
        set.add("u", proxy::upstream(&format!("http://{addr}")).unwrap())
            .unwrap();
        let b = ReverseProxy::builder(set)
            .retries(Retries::none())
            .idle_timeout(Duration::from_secs(60));
        match pool_idle {
            Some(d) => b.pool_idle_timeout(d),
            None => b,
        }
        .try_build()
        .unwrap()
    };
    let proxy = build(None);
    assert_eq!(get(&proxy, "/page").await.0, StatusCode::OK);
    until("the idle connection is closed", || seen.closed() == 1).await;
    let proxy = build(Some(Duration::from_millis(100)));
    assert_eq!(get(&proxy, "/page").await.0, StatusCode::OK);
    assert_eq!(seen.conns(), 2);
    until("the idle connection is closed", || seen.closed() == 2).await;
}

/// A connection that sat idle (past a sweep of the pool) and is closed
/// under the next request, before any answer: a GET is sent again on a new
/// connection (RFC 9110 §9.2.2), not answered 502 with the upstream
/// blamed; a POST is not sent again.
#[tokio::test]
async fn a_get_on_a_rested_connection_closed_under_it_is_sent_again() {
    let (addr, seen) = closing_upstream(true).await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("u", proxy::upstream(&format!("http://{addr}")).unwrap())
        .unwrap();
    // The pool sweeps every 50 ms and closes a connection idle for 200 ms.
    let proxy = ReverseProxy::builder(set)
        .retries(Retries::none())
        .pool_idle_timeout(Duration::from_millis(200))
        .try_build()
        .unwrap();
    assert_eq!(get(&proxy, "/page").await.0, StatusCode::OK);
    // Idle past a sweep, not past the pool's idle timeout.
    tokio::time::sleep(Duration::from_millis(110)).await;
    assert_eq!(
        get(&proxy, "/page").await,
        (StatusCode::OK, Bytes::from("page"))
    );
    assert_eq!(seen.conns(), 2);

    // The same for a POST: not sent again.
    tokio::time::sleep(Duration::from_millis(110)).await;
    let mut req = Request::post("/form")
        .header("host", "front.test")
        .body(Full::new(Bytes::from_static(b"a=1")))
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr("198.51.100.7:5000".parse().unwrap()));
    let reqs = seen.reqs();
    let res = within(proxy.clone().oneshot(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(seen.reqs(), reqs + 1, "sent once");
}

#[tokio::test]
async fn concurrent_requests_open_several_connections_and_all_are_reused() {
    let (addr, seen) = upstream().await;
    let proxy = proxy_to(addr, Duration::from_secs(60));
    let round = || {
        futures_util::future::join_all((0..8).map(|_| {
            let proxy = proxy.clone();
            async move { get(&proxy, "/slow").await }
        }))
    };
    for (status, body) in round().await {
        assert_eq!((status, body), (StatusCode::OK, Bytes::from("slow")));
    }
    let opened = seen.conns();
    assert_eq!(opened, 8);
    for _ in 0..3 {
        for (status, _) in round().await {
            assert_eq!(status, StatusCode::OK);
        }
    }
    assert_eq!(seen.reqs(), 32);
    assert_eq!(seen.conns(), opened);
}

#[tokio::test]
async fn an_upgrade_takes_its_pooled_connection_for_good() {
    let (addr, seen) = upstream().await;
    let proxy = proxy_to(addr, Duration::from_secs(60));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    let served = proxy.clone();
    tokio::spawn(async move { proxy::serve(listener, served).await.unwrap() });

    // A pooled connection first, which the upgrade then checks out.
    assert_eq!(get(&proxy, "/page").await.0, StatusCode::OK);
    assert_eq!(seen.conns(), 1);
    let mut s = TcpStream::connect(front).await.unwrap();
    s.write_all(b"GET /up HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut tmp = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = within(s.read(&mut tmp)).await.unwrap();
        assert!(n > 0);
        head.extend_from_slice(&tmp[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    assert_eq!(seen.conns(), 1);

    // The tunnel's connection is not pooled again: ordinary requests get
    // a connection of their own, and the tunnel still echoes after them.
    for _ in 0..3 {
        assert_eq!(get(&proxy, "/page").await.0, StatusCode::OK);
    }
    assert_eq!(seen.conns(), 2);
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    within(s.read_exact(&mut echo)).await.unwrap();
    assert_eq!(&echo, b"ping");
}

/// Reads one request head from a raw upstream connection and answers it
/// with a keep-alive `page`.
async fn answer_one(s: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = within(s.read(&mut tmp)).await.unwrap();
        assert!(n > 0, "closed before a request");
        buf.extend_from_slice(&tmp[..n]);
    }
    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\npage")
        .await
        .unwrap();
}

/// Sends a `GET` through `proxy` to the upstream that `listener` is,
/// accepts its new connection and answers it by hand (`200`, keep-alive):
/// the connection, returned, is then pooled.
async fn answered_by_hand(proxy: &ReverseProxy, listener: &TcpListener) -> TcpStream {
    let sent = tokio::spawn({
        let proxy = proxy.clone();
        async move { get(&proxy, "/page").await }
    });
    let (mut conn, _) = within(listener.accept()).await.unwrap();
    answer_one(&mut conn).await;
    assert_eq!(sent.await.unwrap().0, StatusCode::OK);
    conn
}

#[tokio::test]
async fn a_request_sent_on_a_connection_that_closes_under_it_is_sent_again() {
    // The upstream is this test: it accepts and answers by hand, so it
    // can close the pooled connection just as the next request is sent.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = proxy_to(listener.local_addr().unwrap(), Duration::from_secs(60));
    let pooled = answered_by_hand(&proxy, &listener).await;

    // A cue, so that the next request is woken in the same turn as the
    // proxy's connection learns of the close, but before it: the request
    // then finds the connection still open, and hyper hands it back
    // unsent when the connection reads the close.
    let cues = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cue_tx = TcpStream::connect(cues.local_addr().unwrap())
        .await
        .unwrap();
    let (mut cue_rx, _) = cues.accept().await.unwrap();
    let second = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            let _ = cue_rx.read(&mut [0u8; 1]).await;
            get(&proxy, "/page").await
        }
    });
    tokio::task::yield_now().await;
    cue_tx.write_all(b"x").await.unwrap();
    drop(pooled);

    // One new connection, one request on it, and the answer.
    let (mut fresh, _) = within(listener.accept()).await.unwrap();
    answer_one(&mut fresh).await;
    assert_eq!(
        within(second).await.unwrap(),
        (StatusCode::OK, Bytes::from("page"))
    );
}

/// A proxy to the upstream that `listener` is, with a 300 ms response
/// timeout and no balancer retries.
fn timing_out_proxy(listener: &TcpListener) -> ReverseProxy {
    let set = Endpoints::new(RoundRobin::new());
    let base = proxy::upstream(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    set.add("u", base).unwrap();
    ReverseProxy::builder(set)
        .retries(Retries::none())
        .response_timeout(Duration::from_millis(300))
        .try_build()
        .unwrap()
}

/// Keeps reading (and never answering) what comes on `conn`.
fn never_answer(mut conn: TcpStream) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sink = [0u8; 1024];
        while conn.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
}

#[tokio::test]
async fn a_pooled_connection_that_stops_answering_times_out_each_request() {
    // The upstream is this test: it answers the first request on a
    // connection and then reads the next ones without answering. The
    // requests after the first go on the pooled connection, whose one
    // timer carries the response timeout (see `pool`); each gets 504 at
    // its own deadline, after the timer was set for an earlier one.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = timing_out_proxy(&listener);
    let conn = answered_by_hand(&proxy, &listener).await;
    let held = never_answer(conn);
    let (status, _) = get(&proxy, "/page").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    // The timed-out connection is not used again: the next request opens
    // a new one, which answers.
    let _fresh = answered_by_hand(&proxy, &listener).await;
    // And on that pooled connection, silence times out again.
    let (status, _) = get(&proxy, "/page").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    held.abort();
}

/// Polls `fut` the first time as a task that has already spent its tokio
/// coop budget in this poll would (one that awaits many requests at once,
/// say), and as usual after that.
async fn first_polled_out_of_budget<F: std::future::Future>(fut: F) -> F::Output {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..1024 {
        tx.send(()).unwrap();
    }
    let mut fut = std::pin::pin!(fut);
    let mut spent = false;
    std::future::poll_fn(|cx| {
        if !spent {
            spent = true;
            // Ready until the budget is gone (1024 is well above it).
            while rx.poll_recv(cx).is_ready() {}
        }
        fut.as_mut().poll(cx)
    })
    .await
}

#[tokio::test]
async fn a_pooled_request_first_polled_out_of_coop_budget_still_times_out() {
    // The response timeout on a pooled connection's timer must be
    // registered even when its first poll finds the task's coop budget
    // spent (tokio's sleep then returns pending without registering the
    // task, and wakes it at once to be polled again).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = timing_out_proxy(&listener);
    let conn = answered_by_hand(&proxy, &listener).await;
    let held = never_answer(conn);
    let req = request("/page");
    let mut svc = proxy.clone();
    let sent = within(ServiceExt::<Request<Empty<Bytes>>>::ready(&mut svc))
        .await
        .unwrap()
        .call(req);
    // On a task of its own, so that only the proxy's timers can wake it.
    let res = within(tokio::spawn(first_polled_out_of_budget(sent)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    held.abort();
}
