//! Regression tests for the reverse proxy and the balancer, over real
//! sockets: each one failed before the fix it names.
#![cfg(feature = "proxy")]

mod common;

use common::serve_proxy;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Empty;
use std::any::Any;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::Service;

use tower_ssr::balance::{
    ActiveProbes, Candidates, ClientAddr, Endpoints, PassiveHealth, RoundRobin, Strategy,
};
use tower_ssr::proxy::{BoxError, ReverseProxy};

/// What a raw upstream received, one string per connection.
type Heads = Arc<Mutex<Vec<String>>>;

/// An upstream that records each request head and answers `200` with an
/// empty body, then closes.
async fn recording_upstream() -> (SocketAddr, Heads) {
    common::raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await
}

/// The request line of each head an upstream received.
fn request_lines(heads: &Heads) -> Vec<String> {
    heads
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.lines().next().unwrap_or_default().to_owned())
        .collect()
}

fn uri(addr: SocketAddr, path: &str) -> Uri {
    format!("http://{addr}{path}").parse().unwrap()
}

/// Guards against hangs only; never a timing assertion.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("hung")
}

fn with_client<B>(mut req: Request<B>) -> Request<B> {
    req.extensions_mut()
        .insert(ClientAddr("203.0.113.9:5000".parse().unwrap()));
    req
}

#[tokio::test]
async fn options_asterisk_keeps_its_target_under_a_base_path() {
    let (up, heads) = recording_upstream().await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("root", uri(up, "")).unwrap();
    set.add("app", uri(up, "/app")).unwrap();
    let mut proxy = ReverseProxy::builder(set).build();
    for _ in 0..2 {
        let req = Request::builder()
            .method(Method::OPTIONS)
            .uri("*")
            .header("host", "front.example")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = within(proxy.call(with_client(req))).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let lines = request_lines(&heads);
    assert_eq!(lines, ["OPTIONS * HTTP/1.1", "OPTIONS * HTTP/1.1"]);
}

#[tokio::test]
async fn a_target_too_long_for_the_base_path_gets_414_and_never_leaves_it() {
    // The base path and the client's target together are longer than a
    // URI may be (65,534 bytes): the request was sent with the client's
    // target alone, outside the base path.
    let (up, heads) = recording_upstream().await;
    let set = Endpoints::new(RoundRobin::new());
    set.add(
        "app",
        uri(
            up,
            "/confined/to/this/subtree/of/the/upstream/and/nothing/else",
        ),
    )
    .unwrap();
    let mut proxy = ReverseProxy::builder(set).build();
    let target = format!("/admin?{}", "q".repeat(65_480));
    let req = Request::get(target.as_str())
        .header("host", "front.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = within(proxy.call(with_client(req))).await.unwrap();
    assert_eq!(res.status(), StatusCode::URI_TOO_LONG);
    // And a target that fits still goes under the base path.
    let req = Request::get("/admin?q")
        .header("host", "front.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = within(proxy.call(with_client(req))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let lines = request_lines(&heads);
    assert_eq!(
        lines,
        ["GET /confined/to/this/subtree/of/the/upstream/and/nothing/else/admin?q HTTP/1.1"]
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_brings_back_what_the_probes_took_down() {
    let set = Endpoints::new(RoundRobin::new());
    let a = set.add("a", false).unwrap();
    let b = set.add("b", true).unwrap();
    let probes = ActiveProbes::new()
        .interval(Duration::from_secs(1))
        .unhealthy_threshold(1)
        .spawn(&set, |up: bool| async move { up });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!set.stats_of(a).unwrap().probe_healthy);
    drop(probes);
    assert!(set.stats_of(a).unwrap().probe_healthy);
    let picks: Vec<_> = (0..4).map(|_| set.pick(None).unwrap()).collect();
    assert!(picks.contains(&a) && picks.contains(&b), "{picks:?}");
    // And nothing takes it down again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(set.stats_of(a).unwrap().probe_healthy);
}

/// Sends raw bytes and reads the answer to the end (the request says
/// `Connection: close`).
async fn raw_send(addr: SocketAddr, raw: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within(s.read_to_end(&mut out)).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The values of header `name` (case-insensitive) in a raw request head.
fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn a_clients_x_forwarded_host_never_reaches_the_upstream() {
    let (up, heads) = recording_upstream().await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("a", uri(up, "")).unwrap();
    let proxy = serve_proxy(ReverseProxy::builder(set).build()).await;
    // No Host at all (HTTP/1.0): nothing to forward as the host.
    let r1 = raw_send(
        proxy,
        "GET /a HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    // `Connection: host` tried to strip Host so that the spoofed header won.
    let r2 = raw_send(
        proxy,
        "GET /b HTTP/1.1\r\nHost: front.example\r\nConnection: host, close\r\n\
         X-Forwarded-Host: evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(r1.split(' ').nth(1), Some("200"), "{r1}");
    assert_eq!(r2.split(' ').nth(1), Some("200"), "{r2}");
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let (a, b) = if heads[0].starts_with("GET /a") {
        (&heads[0], &heads[1])
    } else {
        (&heads[1], &heads[0])
    };
    assert!(header_values(a, "x-forwarded-host").is_empty(), "{a}");
    assert_eq!(
        header_values(b, "x-forwarded-host"),
        ["front.example"],
        "{b}"
    );
    // preserve_host(true) is the default: the client's Host, not ours.
    assert_eq!(header_values(b, "host"), ["front.example"], "{b}");
}

#[tokio::test]
async fn without_a_client_address_a_clients_x_forwarded_for_is_dropped() {
    let (up, heads) = recording_upstream().await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("a", uri(up, "")).unwrap();
    let mut proxy = ReverseProxy::builder(set).build();
    // No ClientAddr: nothing vouches for the client's list.
    let req = Request::builder()
        .uri("/x")
        .header("host", "front.example")
        .header("x-forwarded-for", "6.6.6.6")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = within(proxy.call(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // With one that is not a trusted proxy, the client's list is replaced
    // by the peer (issue 8 §1: forwarding headers from untrusted peers
    // never reach upstreams).
    let req = Request::builder()
        .uri("/y")
        .header("host", "front.example")
        .header("x-forwarded-for", "6.6.6.6")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = within(proxy.call(with_client(req))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let heads = heads.lock().unwrap().clone();
    let find = |p: &str| heads.iter().find(|h| h.starts_with(p)).unwrap().clone();
    assert!(header_values(&find("GET /x"), "x-forwarded-for").is_empty());
    assert_eq!(
        header_values(&find("GET /y"), "x-forwarded-for"),
        ["203.0.113.9"]
    );
}

/// A request body fed by the test: each item is a chunk or an error.
type Feed = tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, BoxError>>;

fn fed_body() -> (
    Feed,
    http_body_util::StreamBody<
        tokio_stream::wrappers::ReceiverStream<Result<http_body::Frame<Bytes>, BoxError>>,
    >,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (
        tx,
        http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
}

/// An upstream that reads the whole request body and answers with its
/// length.
async fn body_reader() -> SocketAddr {
    let app = axum::Router::new().fallback(|b: Bytes| async move { format!("got {}", b.len()) });
    common::serve(app).await
}

fn upload<B>(body: B, len: usize) -> Request<B> {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/upload")
        .header("host", "front.example")
        .header("content-length", len)
        .body(body)
        .unwrap();
    with_client(req)
}

#[tokio::test]
async fn a_client_hanging_up_mid_upload_gets_400_and_no_upstream_is_blamed() {
    let set = Endpoints::builder()
        .health(PassiveHealth::new().consecutive_failures(3))
        .strategy(RoundRobin::new())
        .build::<Uri>();
    let a = set.add("a", uri(body_reader().await, "")).unwrap();
    let b = set.add("b", uri(body_reader().await, "")).unwrap();
    let proxy = ReverseProxy::builder(set.clone()).build();
    for _ in 0..6 {
        let (tx, body) = fed_body();
        let call = tokio::spawn({
            let mut proxy = proxy.clone();
            async move { proxy.call(upload(body, 100_000)).await.unwrap().status() }
        });
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"hello"))))
            .await
            .unwrap();
        // The client goes away: its body errors.
        tx.send(Err("client hung up".into())).await.unwrap();
        drop(tx);
        assert_eq!(within(call).await.unwrap(), StatusCode::BAD_REQUEST);
    }
    for id in [a, b] {
        let st = set.stats_of(id).unwrap();
        assert_eq!(
            (st.failures, st.ejected, st.in_flight),
            (0, false, 0),
            "{st:?}"
        );
    }
}

#[tokio::test]
async fn a_stalled_upload_gets_408_and_no_upstream_is_blamed() {
    let set = Endpoints::builder()
        .health(
            PassiveHealth::new()
                .consecutive_failures(2)
                .max_ejected_share(1.0),
        )
        .strategy(RoundRobin::new())
        .build::<Uri>();
    let a = set.add("a", uri(body_reader().await, "")).unwrap();
    let proxy = ReverseProxy::builder(set.clone())
        .response_timeout(Duration::from_millis(300))
        .build();
    let mut feeds = Vec::new();
    for _ in 0..2 {
        let (tx, body) = fed_body();
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"hello"))))
            .await
            .unwrap();
        // Kept open: the body neither ends nor fails, it stalls.
        feeds.push(tx);
        let mut proxy = proxy.clone();
        let res = within(proxy.call(upload(body, 100_000))).await.unwrap();
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    }
    let st = set.stats_of(a).unwrap();
    assert_eq!(
        (st.failures, st.ejected, st.in_flight),
        (0, false, 0),
        "{st:?}"
    );
}

#[tokio::test]
async fn an_upload_slower_than_the_response_timeout_goes_through() {
    let set = Endpoints::new(RoundRobin::new());
    let a = set.add("a", uri(body_reader().await, "")).unwrap();
    // The whole upload takes several response timeouts; no pause between
    // chunks comes near one.
    let timeout = Duration::from_millis(400);
    let proxy = ReverseProxy::builder(set.clone())
        .response_timeout(timeout)
        .build();
    let chunks = 12;
    let (tx, body) = fed_body();
    let call = tokio::spawn({
        let mut proxy = proxy.clone();
        async move {
            let res = proxy.call(upload(body, chunks * 5)).await.unwrap();
            let status = res.status();
            let body = http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, body)
        }
    });
    for _ in 0..chunks {
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"hello"))))
            .await
            .unwrap();
        tokio::time::sleep(timeout / 8).await;
    }
    drop(tx);
    let (status, body) = within(call).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, format!("got {}", chunks * 5));
    assert_eq!(set.stats_of(a).unwrap().failures, 0);
}

/// A round robin whose `prepare`, once armed, asks the test to touch the
/// set and waits for it: it deadlocks (until its hang guard) if `prepare`
/// runs under the set's lock.
#[derive(Debug)]
struct Probing {
    inner: RoundRobin,
    armed: std::sync::atomic::AtomicBool,
    ask: std::sync::mpsc::SyncSender<()>,
    done: Mutex<std::sync::mpsc::Receiver<()>>,
    answered: std::sync::atomic::AtomicBool,
}

impl Strategy for Probing {
    fn prepare(&self, weights: &[u32], hashes: &[u64]) -> Arc<dyn Any + Send + Sync> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.ask.send(()).unwrap();
            let ok = self
                .done
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10))
                .is_ok();
            self.answered.store(ok, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.prepare(weights, hashes)
    }

    fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        self.inner.pick(c)
    }
}

#[test]
fn building_a_snapshot_does_not_hold_the_sets_lock() {
    let (ask, asked) = std::sync::mpsc::sync_channel(1);
    let (reply, done) = std::sync::mpsc::sync_channel(1);
    let strategy = Arc::new(Probing {
        inner: RoundRobin::new(),
        armed: std::sync::atomic::AtomicBool::new(false),
        ask,
        done: Mutex::new(done),
        answered: std::sync::atomic::AtomicBool::new(false),
    });
    let set: Endpoints<()> = Endpoints::builder()
        .strategy(SharedStrategy(Arc::clone(&strategy)))
        .build();
    set.add("a", ()).unwrap();
    strategy
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let adder = {
        let set = set.clone();
        std::thread::spawn(move || set.add_weighted("b", (), 7).unwrap())
    };
    asked
        .recv_timeout(Duration::from_secs(30))
        .expect("prepare ran");
    // These take the set's lock: they must not wait for the build.
    let a = set.id_of("a").unwrap();
    assert!(set.stats_of(a).is_some());
    reply.send(()).unwrap();
    let b = adder.join().unwrap();
    assert!(strategy.answered.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(set.id_of("b"), Some(b));
    assert_eq!(set.len(), 2);
}

/// Lets the test keep a handle on the strategy it gives the set.
#[derive(Debug)]
struct SharedStrategy(Arc<Probing>);

impl Strategy for SharedStrategy {
    fn prepare(&self, weights: &[u32], hashes: &[u64]) -> Arc<dyn Any + Send + Sync> {
        self.0.prepare(weights, hashes)
    }

    fn pick(&self, c: &Candidates<'_>) -> Option<usize> {
        self.0.pick(c)
    }
}

/// Copies the response's typed extensions into headers, as an access log
/// at the response would read them.
fn expose<B>(mut res: http::Response<B>) -> http::Response<B> {
    let addr = res
        .extensions()
        .get::<ClientAddr>()
        .map(|a| a.0.to_string());
    let upstream = res
        .extensions()
        .get::<tower_ssr::balance::Upstream>()
        .map(|u| u.name().to_owned());
    for (name, value) in [("x-client-addr", addr), ("x-served-by", upstream)] {
        if let Some(v) = value {
            res.headers_mut()
                .insert(name, http::HeaderValue::from_str(&v).unwrap());
        }
    }
    res
}

#[tokio::test]
async fn the_response_carries_the_client_address_and_the_upstream() {
    let (up, _heads) = recording_upstream().await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("renderer-1", uri(up, "")).unwrap();
    let proxy = ReverseProxy::builder(set).build();
    let served = tower::ServiceBuilder::new()
        .map_response(expose as fn(_) -> _)
        .service(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { tower_ssr::proxy::serve(listener, served).await.unwrap() });
    // `serve` puts `ClientAddr` alone in each request's extensions: that
    // map moves to the response, with `Upstream` added.
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let local = client.local_addr().unwrap();
    client
        .write_all(b"GET /page HTTP/1.1\r\nhost: front.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    within(client.read_to_string(&mut answer)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("x-client-addr: {local}\r\n")),
        "{answer}"
    );
    assert!(lower.contains("x-served-by: renderer-1\r\n"), "{answer}");
}

#[tokio::test]
async fn other_request_extensions_stay_off_the_response() {
    #[derive(Clone)]
    struct Mine;
    let (up, _heads) = recording_upstream().await;
    let set = Endpoints::new(RoundRobin::new());
    set.add("renderer-1", uri(up, "")).unwrap();
    let mut proxy = ReverseProxy::builder(set).build();
    let mut req = with_client(
        Request::get("/page")
            .header("host", "front.test")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    );
    req.extensions_mut().insert(Mine);
    let res = within(proxy.call(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.extensions().get::<ClientAddr>().map(|a| a.0),
        Some("203.0.113.9:5000".parse().unwrap())
    );
    assert_eq!(
        res.extensions()
            .get::<tower_ssr::balance::Upstream>()
            .map(|u| u.name().to_owned())
            .as_deref(),
        Some("renderer-1")
    );
    assert!(res.extensions().get::<Mine>().is_none());
}
