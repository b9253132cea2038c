//! The proxy's transports and tunnels over real sockets on 127.0.0.1:
//! TLS upstreams with a CA made here (right CA, wrong CA, SNI), h2c and
//! Unix socket upstreams, WebSocket through the proxy (echo both ways,
//! close from either side, balancing, stickiness, in-flight for the
//! tunnel's life, idle close), an unrequested `101`, and an HTTP/2 client.
#![cfg(all(feature = "proxy", feature = "tls", feature = "cache"))]

mod common;

use std::convert::Infallible;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tower::{Layer, ServiceExt};

use tower_ssr::balance::{ClientAddr, Endpoints, Key, Rendezvous, RoundRobin};
use tower_ssr::cache::{CacheLayer, ResponseCache};
use tower_ssr::proxy::{self, ConfigError, ReverseProxy, TlsRoots};

/// Guards against hangs only; never a timing assertion.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("hung")
}

/// Answers every request with who served it and how it arrived.
async fn info(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let host = req.headers().get("host").cloned();
    let authority = req.uri().authority().map_or("", |a| a.as_str()).to_owned();
    Ok(Response::builder()
        .header("x-upstream", name)
        .header("x-version", format!("{:?}", req.version()))
        .header("x-seen-xff", xff)
        .header("x-seen-host", host.unwrap_or_else(|| "-".parse().unwrap()))
        .header("x-seen-authority", authority)
        .body(Full::new(Bytes::from_static(b"page")))
        .unwrap())
}

/// An HTTP/1.1 + h2c upstream on TCP.
async fn plain_upstream(name: &'static str) -> SocketAddr {
    serve_upstream(service_fn(move |r| info(name, r))).await
}

/// Serves `svc` on a new loopback port: HTTP/1.1 (upgrades included) and
/// h2c, one task per connection.
async fn serve_upstream<S, B>(svc: S) -> SocketAddr
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

struct TestPki {
    ca_pem: String,
    cert: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    key: Vec<u8>,
}

/// A CA and a certificate for `localhost` signed by it.
fn pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, "tower-ssr test CA");
    let ca = params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    TestPki {
        ca_pem: ca.pem(),
        cert: leaf.der().clone(),
        key: leaf_key.serialize_der(),
    }
}

/// A TLS upstream (ALPN h2, http/1.1) recording the SNI of each handshake.
async fn tls_upstream(pki: &TestPki) -> (u16, Arc<Mutex<Vec<String>>>) {
    tls_upstream_offering(pki, &["h2", "http/1.1"]).await
}

/// A TLS upstream offering these ALPN protocols.
async fn tls_upstream_offering(pki: &TestPki, alpn: &[&str]) -> (u16, Arc<Mutex<Vec<String>>>) {
    use tokio_rustls::rustls;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![pki.cert.clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key.clone().into()),
    )
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sni: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&sni);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                // A failed handshake (the wrong-CA test) just ends here.
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let name = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                seen.lock().unwrap().push(name);
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service_fn(|r| info("tls", r)))
                    .await;
            });
        }
    });
    (port, sni)
}

async fn call(proxy: &ReverseProxy, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut req = Request::get(path)
        .header("host", "front.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr("198.51.100.7:5000".parse().unwrap()));
    let res = within(proxy.clone().oneshot(req)).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

fn one_upstream(spelling: &str) -> Endpoints<http::Uri> {
    let set = Endpoints::new(RoundRobin::new());
    set.add("u", proxy::upstream(spelling).unwrap()).unwrap();
    set
}

#[tokio::test]
async fn tls_upstream_trusted_by_the_given_ca_answers_over_h2_with_sni() {
    let pki = pki();
    let (port, sni) = tls_upstream(&pki).await;
    let roots = TlsRoots::empty()
        .try_add_pem(pki.ca_pem.as_bytes())
        .unwrap();
    let proxy = ReverseProxy::builder(one_upstream(&format!("https://localhost:{port}")))
        .tls_roots(roots)
        .try_build()
        .unwrap();
    let (status, headers, body) = call(&proxy, "/page").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-upstream"], "tls");
    // ALPN picked h2.
    assert_eq!(headers["x-version"], "HTTP/2.0");
    assert_eq!(headers["x-seen-xff"], "198.51.100.7");
    assert_eq!(body, "page");
    assert_eq!(sni.lock().unwrap().as_slice(), ["localhost"]);
}

#[tokio::test]
async fn tls_connections_are_pooled_over_http11_and_shared_over_h2() {
    let pki = pki();
    for (alpn, version) in [
        (&["http/1.1"][..], "HTTP/1.1"),
        (&["h2", "http/1.1"][..], "HTTP/2.0"),
    ] {
        let (port, sni) = tls_upstream_offering(&pki, alpn).await;
        let roots = TlsRoots::empty()
            .try_add_pem(pki.ca_pem.as_bytes())
            .unwrap();
        let proxy = ReverseProxy::builder(one_upstream(&format!("https://localhost:{port}")))
            .tls_roots(roots)
            .try_build()
            .unwrap();
        for _ in 0..5 {
            let (status, headers, body) = call(&proxy, "/page").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers["x-version"], version);
            assert_eq!(body, "page");
        }
        // One handshake: the connection was pooled (HTTP/1.1) or shared
        // (HTTP/2).
        assert_eq!(sni.lock().unwrap().len(), 1, "{version}");
    }
}

#[tokio::test]
async fn tls_upstream_with_a_wrong_ca_is_502_and_counted_against_the_endpoint() {
    let (port, sni) = tls_upstream(&pki()).await;
    let stranger = pki();
    let roots = TlsRoots::empty()
        .try_add_pem(stranger.ca_pem.as_bytes())
        .unwrap();
    let proxy = ReverseProxy::builder(one_upstream(&format!("https://localhost:{port}")))
        .tls_roots(roots)
        .try_build()
        .unwrap();
    let (status, _, _) = call(&proxy, "/page").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let stats = proxy.endpoints().stats();
    assert!(stats[0].failures >= 1, "{stats:?}");
    // The handshake never completed on the server side.
    assert!(sni.lock().unwrap().is_empty());
}

#[tokio::test]
async fn schemes_the_build_cannot_speak_fail_at_configuration_time() {
    assert!(matches!(
        proxy::upstream("ftp://h:21"),
        Err(ConfigError::UnsupportedScheme(_))
    ));
    assert!(matches!(
        proxy::upstream("unix:relative.sock"),
        Err(ConfigError::InvalidUpstream(_))
    ));
    assert!(proxy::upstream("h2c://h").is_err());
    let set = Endpoints::new(RoundRobin::new());
    set.add("ftp", "ftp://h:21".parse().unwrap()).unwrap();
    assert!(matches!(
        ReverseProxy::builder(set).try_build(),
        Err(ConfigError::UnsupportedScheme(_))
    ));
    assert!(matches!(
        ReverseProxy::builder(one_upstream("https://localhost:1"))
            .tls_roots(TlsRoots::empty())
            .try_build(),
        Err(ConfigError::NoTrustedRoots)
    ));
    assert!(matches!(
        TlsRoots::empty().try_add_pem(b"not a pem"),
        Err(ConfigError::Ca(_))
    ));
    assert!(TlsRoots::empty()
        .try_add_pem_file("/nonexistent/ca.pem")
        .is_err());
}

#[tokio::test]
async fn h2c_upstream_is_spoken_to_over_http2_with_prior_knowledge() {
    let addr = plain_upstream("h2c").await;
    let proxy = ReverseProxy::builder(one_upstream(&format!("h2c://{addr}")))
        .try_build()
        .unwrap();
    let calls = (0..8).map(|_| call(&proxy, "/page"));
    for (status, headers, body) in futures_util::future::join_all(calls).await {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-version"], "HTTP/2.0");
        assert_eq!(body, "page");
    }
    // A plain http:// endpoint on the same server stays HTTP/1.1.
    let proxy = ReverseProxy::builder(one_upstream(&format!("http://{addr}")))
        .try_build()
        .unwrap();
    assert_eq!(call(&proxy, "/").await.1["x-version"], "HTTP/1.1");
}

/// Issue 10, second review: over HTTP/2 (h2c, or TLS with ALPN `h2`) the
/// proxy sent `:authority` naming the upstream and the client's `Host`
/// beside it; RFC 9113 §8.3.1 forbids a `Host` that differs from
/// `:authority`, and a server that treats that as malformed (Python's h2)
/// refused every request. The client's authority must travel as `:authority` alone.
#[tokio::test]
async fn over_http2_the_clients_host_travels_as_authority_alone() {
    let pki = pki();
    let (tls_port, _) = tls_upstream(&pki).await;
    let h2c = plain_upstream("h2c").await;
    let h1 = plain_upstream("h1").await;
    for (upstream, version) in [
        (format!("h2c://{h2c}"), "HTTP/2.0"),
        (format!("https://localhost:{tls_port}"), "HTTP/2.0"),
        (format!("http://{h1}"), "HTTP/1.1"),
    ] {
        let roots = TlsRoots::empty()
            .try_add_pem(pki.ca_pem.as_bytes())
            .unwrap();
        let proxy = ReverseProxy::builder(one_upstream(&upstream))
            .tls_roots(roots)
            .try_build()
            .unwrap();
        let addr = serve_proxy(proxy).await;
        // Twice: a fresh connection, then the shared (or pooled) one.
        for _ in 0..2 {
            let answer = within(raw_text(
                addr,
                "GET /p?q=1 HTTP/1.1\r\nhost: front.test:8080\r\nconnection: close\r\n\r\n",
            ))
            .await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{upstream}: {answer}");
            let seen = |name: &str| {
                answer
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")[..]))
                    .unwrap_or("")
                    .to_owned()
            };
            assert_eq!(seen("x-version"), version, "{upstream}");
            if version == "HTTP/2.0" {
                assert_eq!(seen("x-seen-authority"), "front.test:8080", "{upstream}");
                assert_eq!(seen("x-seen-host"), "-", "{upstream}");
            } else {
                assert_eq!(seen("x-seen-host"), "front.test:8080", "{upstream}");
            }
        }
    }
}

/// Sends a raw request (ending the connection) and reads all of the answer.
async fn raw_text(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(unix)]
#[tokio::test]
async fn unix_socket_upstream_answers() {
    let dir = std::env::temp_dir().join(format!("tower-ssr-uds-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("renderer.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service_fn(|r| info("uds", r)))
                    .await;
            });
        }
    });
    let proxy = ReverseProxy::builder(one_upstream(&format!("unix:{}", path.display())))
        .try_build()
        .unwrap();
    for _ in 0..3 {
        let (status, headers, body) = call(&proxy, "/page").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-upstream"], "uds");
        assert_eq!(body, "page");
    }
    // Not preserving Host: the upstream gets `localhost`, not hex.
    let proxy = ReverseProxy::builder(one_upstream(&format!("unix:{}", path.display())))
        .preserve_host(false)
        .try_build()
        .unwrap();
    assert_eq!(call(&proxy, "/").await.0, StatusCode::OK);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
}

/// A WebSocket upstream: greets with its name, then echoes every message;
/// a `bye` makes it close the connection itself.
async fn ws_upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                let _ = ws.send(Message::Text(name.to_owned())).await;
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if t == "bye" => {
                            let _ = ws.close(None).await;
                            // Drain until the client's close answer.
                            while let Some(Ok(_)) = ws.next().await {}
                            return;
                        }
                        Message::Text(_) | Message::Binary(_) => {
                            let sent = ws.send(msg).await;
                            if sent.is_err() {
                                return;
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

/// Serves `proxy` (behind the cache, which must let upgrades through) on
/// an ephemeral port.
async fn serve_proxy(proxy: ReverseProxy) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cache = CacheLayer::new(ResponseCache::builder().max_bytes(1 << 20).build());
    tokio::spawn(async move {
        proxy::serve(listener, cache.layer(proxy)).await.unwrap();
    });
    addr
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(proxy: SocketAddr, user: &str) -> (Ws, String) {
    let mut req = format!("ws://{proxy}/live").into_client_request().unwrap();
    req.headers_mut().insert("x-user", user.parse().unwrap());
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut ws, res) = within(tokio_tungstenite::client_async(req, tcp))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    let Some(Ok(Message::Text(greeting))) = within(ws.next()).await else {
        panic!("no greeting");
    };
    (ws, greeting)
}

#[tokio::test]
async fn websocket_echoes_both_ways_and_closes_from_either_side() {
    let up = ws_upstream("r1").await;
    let proxy = ReverseProxy::builder(one_upstream(&format!("http://{up}")))
        .try_build()
        .unwrap();
    let endpoints = proxy.endpoints().clone();
    let addr = serve_proxy(proxy).await;

    // Client closes.
    let (mut ws, greeting) = ws_connect(addr, "a").await;
    assert_eq!(greeting, "r1");
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        within(ws.next()).await.unwrap().unwrap(),
        Message::Text("hello".into())
    );
    ws.send(Message::Binary(vec![0, 1, 2, 255])).await.unwrap();
    assert_eq!(
        within(ws.next()).await.unwrap().unwrap(),
        Message::Binary(vec![0, 1, 2, 255])
    );
    // The tunnel counts in flight on its endpoint while open.
    assert_eq!(endpoints.stats()[0].in_flight, 1);
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = within(ws.next()).await {}
    drop(ws);

    // Upstream closes.
    let (mut ws, _) = ws_connect(addr, "a").await;
    ws.send(Message::Text("bye".into())).await.unwrap();
    let mut saw_close = false;
    while let Some(msg) = within(ws.next()).await {
        match msg {
            Ok(Message::Close(_)) => saw_close = true,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(saw_close);
    drop(ws);

    // Both tunnels ended: nothing stays in flight.
    within(async {
        while endpoints.stats()[0].in_flight != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn tunnels_are_balanced_and_a_hash_key_keeps_a_client_on_one_renderer() {
    let (a, b) = (ws_upstream("a").await, ws_upstream("b").await);
    let rr = Endpoints::new(RoundRobin::new());
    rr.add("a", proxy::upstream(&format!("http://{a}")).unwrap())
        .unwrap();
    rr.add("b", proxy::upstream(&format!("http://{b}")).unwrap())
        .unwrap();
    let addr = serve_proxy(ReverseProxy::builder(rr).try_build().unwrap()).await;
    let mut names = Vec::new();
    let mut open = Vec::new();
    for _ in 0..4 {
        let (ws, name) = ws_connect(addr, "x").await;
        names.push(name);
        open.push(ws);
    }
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"]);

    let sticky = Endpoints::new(Rendezvous::new());
    sticky
        .add("a", proxy::upstream(&format!("http://{a}")).unwrap())
        .unwrap();
    sticky
        .add("b", proxy::upstream(&format!("http://{b}")).unwrap())
        .unwrap();
    let proxy = ReverseProxy::builder(sticky)
        .key(Key::header(http::HeaderName::from_static("x-user")))
        .try_build()
        .unwrap();
    let addr = serve_proxy(proxy).await;
    for user in ["alice", "bob", "carol"] {
        let (_, first) = ws_connect(addr, user).await;
        for _ in 0..3 {
            assert_eq!(ws_connect(addr, user).await.1, first, "{user}");
        }
    }
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let up = ws_upstream("r1").await;
    let proxy = ReverseProxy::builder(one_upstream(&format!("http://{up}")))
        .idle_timeout(Duration::from_millis(200))
        .try_build()
        .unwrap();
    let addr = serve_proxy(proxy).await;
    let (mut ws, _) = ws_connect(addr, "a").await;
    // Nothing sent: the proxy closes both sides; the stream ends.
    loop {
        match within(ws.next()).await {
            None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
}

/// An upstream that answers every request with a raw response head and
/// keeps the connection open, as a switched one would be.
async fn raw_upstream(head: &'static str) -> SocketAddr {
    common::raw::holding_upstream(head, b"").await
}

/// Sends a raw request to the proxy and returns the status line.
async fn raw_status(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 1024];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = within(s.read(&mut tmp)).await.unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&tmp[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn an_unrequested_or_unoffered_101_is_a_502() {
    let up = raw_upstream(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    )
    .await;
    let proxy = ReverseProxy::builder(one_upstream(&format!("http://{up}")))
        .try_build()
        .unwrap();
    let addr = serve_proxy(proxy).await;
    // No upgrade asked for.
    let line = raw_status(addr, "GET / HTTP/1.1\r\nhost: front.test\r\n\r\n").await;
    assert!(line.starts_with("HTTP/1.1 502"), "{line}");
    // An upgrade asked for, but to another protocol.
    let line = raw_status(
        addr,
        "GET / HTTP/1.1\r\nhost: front.test\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n",
    )
    .await;
    assert!(line.starts_with("HTTP/1.1 502"), "{line}");
    // The offered one is relayed.
    let line = raw_status(
        addr,
        "GET / HTTP/1.1\r\nhost: front.test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
}

#[tokio::test]
async fn an_http2_client_is_served_and_forwarded_over_http1() {
    let up = plain_upstream("r1").await;
    let proxy = ReverseProxy::builder(one_upstream(&format!("http://{up}")))
        .try_build()
        .unwrap();
    let addr = serve_proxy(proxy).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    for _ in 0..3 {
        let req = Request::get(format!("http://{addr}/page"))
            .body(Empty::new())
            .unwrap();
        let res = within(client.request(req)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.version(), http::Version::HTTP_2);
        assert_eq!(res.headers()["x-version"], "HTTP/1.1");
        // The served connection's peer reached X-Forwarded-For.
        assert_eq!(res.headers()["x-seen-xff"], "127.0.0.1");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "page");
    }
}

#[tokio::test]
async fn a_users_own_client_forwards_through_its_connector() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::Service;
    let up = plain_upstream("own").await;
    let connects = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connects);
    let http = hyper_util::client::legacy::connect::HttpConnector::new();
    // The user's connector: here, one that counts the connections it makes.
    let connector = tower::service_fn(move |uri: http::Uri| {
        counted.fetch_add(1, Ordering::Relaxed);
        let mut http = http.clone();
        // hyper-util wants an Unpin connect future.
        Box::pin(async move { http.call(uri).await })
    });
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, proxy::ProxyBody>(connector);
    let proxy = ReverseProxy::builder(one_upstream(&format!("http://{up}")))
        .client(client)
        .try_build()
        .unwrap();
    for _ in 0..3 {
        let (status, headers, _) = call(&proxy, "/page").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-upstream"], "own");
    }
    // Every connection came from the user's connector (how many depends
    // on when hyper-util returns a connection to its pool).
    let n = connects.load(Ordering::Relaxed);
    assert!((1..=3).contains(&n), "{n}");
}

/// Reads from a raw connection until the proxy closes it (or resets it);
/// returns what came before.
async fn until_closed(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        match within(s.read(&mut tmp)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn a_request_head_must_arrive_within_the_idle_timeout_on_each_request() {
    let up = plain_upstream("r1").await;
    let proxy = ReverseProxy::builder(one_upstream(&format!("http://{up}")))
        .try_build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        proxy::serve(listener, proxy)
            .idle_timeout(Duration::from_millis(300))
            .await
            .unwrap();
    });

    // Keep-alive requests 150 ms apart, 900 ms in all: each head arrives
    // within the timeout, so the connection stays open throughout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    for _ in 0..6 {
        s.write_all(b"GET /page HTTP/1.1\r\nhost: a.example\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        while !String::from_utf8_lossy(&buf).contains("\r\n\r\npage") {
            let n = within(s.read(&mut tmp)).await.unwrap();
            assert!(n > 0, "closed while requests kept coming");
            buf.extend_from_slice(&tmp[..n]);
        }
        assert!(buf.starts_with(b"HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Then idle: closed.
    let started = std::time::Instant::now();
    until_closed(&mut s).await;
    assert!(started.elapsed() < Duration::from_secs(10));

    // A head that never ends is cut off too.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /page HTTP/1.1\r\nhost: a.exa")
        .await
        .unwrap();
    let answer = until_closed(&mut slow).await;
    assert!(!answer.contains("200"), "{answer}");
}

/// An upstream that promises `Content-Length: 1000`, sends `sent` bytes of
/// it and closes.
async fn short_upstream(sent: usize) -> SocketAddr {
    let body: &'static [u8] = Box::leak(vec![b'x'; sent].into_boxed_slice());
    common::raw::canned_upstream("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n", body).await
}

// The race is between hyper's stream task (which resets the stream when the
// body fails, and h2 then drops the frames it still queues) and the
// connection task (which writes them): two workers, as in examples/proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_gets_the_status_of_a_body_that_breaks_off() {
    for sent in [0, 100] {
        let up = short_upstream(sent).await;
        let proxy = ReverseProxy::builder(one_upstream(&format!("http://{up}")))
            .try_build()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare = listener.local_addr().unwrap();
        tokio::spawn(proxy::serve(listener, proxy.clone()).into_future());
        let cached = serve_proxy(proxy).await;
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Empty<Bytes>>();
        for addr in [bare, cached] {
            for i in 0..30 {
                let req = Request::get(format!("http://{addr}/cut/{i}"))
                    .body(Empty::new())
                    .unwrap();
                // Before the fix, now and then: a reset stream and no
                // HEADERS at all.
                let res = within(client.request(req))
                    .await
                    .unwrap_or_else(|e| panic!("{sent} bytes sent, request {i}: no status: {e:?}"));
                assert_eq!(res.status(), StatusCode::OK);
                assert!(
                    within(res.into_body().collect()).await.is_err(),
                    "a cut-off body must not end cleanly"
                );
            }
        }
    }
}

/// An upstream that sends its head (`Content-Length: 1000`, `extra`
/// fields) and 100 bytes, then keeps the connection open and silent.
async fn stalling_upstream(extra: &'static str) -> SocketAddr {
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n{extra}\r\n");
    common::raw::holding_upstream(Box::leak(head.into_boxed_str()), &[b'x'; 100]).await
}

#[tokio::test]
async fn a_response_body_that_stalls_is_cut_off_after_the_idle_timeout() {
    for extra in ["", "cache-control: max-age=60\r\n"] {
        let up = stalling_upstream(extra).await;
        let proxy = ReverseProxy::builder(one_upstream(&format!("http://{up}")))
            .idle_timeout(Duration::from_millis(200))
            .try_build()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare = listener.local_addr().unwrap();
        tokio::spawn(proxy::serve(listener, proxy.clone()).into_future());
        let cached = serve_proxy(proxy).await;
        for addr in [bare, cached] {
            // Before the fix: no end at all (`within` panics).
            let answer = raw_status_and_body(addr).await;
            let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
            if head.starts_with("HTTP/1.1 200") {
                assert!(body.len() < 1000, "{extra:?}: a cut-off body, {answer}");
            } else {
                // The cache held the start back: nothing was sent yet.
                assert!(head.starts_with("HTTP/1.1 502"), "{extra:?}: {answer}");
            }
        }
    }
}

/// A GET with `Connection: close`, the answer read to its end.
async fn raw_status_and_body(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /stall HTTP/1.1\r\nhost: front.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = within(s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// An h2c upstream that shuts down gracefully after one request per
/// connection, as a renderer being restarted does: it answers the first
/// stream, then sends `GOAWAY` with that stream as the last it processed
/// (RFC 9113 §6.8) and closes. The first connection waits until `streams`
/// requests have arrived on it (and says so once its first one has), so
/// that the others are refused; later ones answer at once. Raw frames: the
/// answer is `:status: 200` (HPACK static index 8) and `ok`.
async fn goaway_upstream(streams: usize) -> (SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    async fn frame(s: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.ok()?;
        Some((head[3], head[4], id, payload))
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut first = Some(first_tx);
        let mut want = streams;
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let signal = first.take();
            let wait_for = std::mem::replace(&mut want, 1);
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if s.read_exact(&mut preface).await.is_err() {
                    return;
                }
                // Empty SETTINGS.
                let _ = s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                let mut signal = signal;
                let mut seen = Vec::new();
                while seen.len() < wait_for {
                    let Some((kind, flags, id, _)) = frame(&mut s).await else {
                        return;
                    };
                    match kind {
                        // SETTINGS without ACK: acknowledge.
                        4 if flags & 1 == 0 => {
                            let _ = s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
                        }
                        1 => {
                            seen.push(id);
                            if let Some(tx) = signal.take() {
                                let _ = tx.send(());
                            }
                        }
                        _ => {}
                    }
                }
                let id = seen[0].to_be_bytes();
                let mut out = Vec::new();
                // HEADERS, END_HEADERS: `:status: 200`.
                out.extend_from_slice(&[0, 0, 1, 1, 4, id[0], id[1], id[2], id[3], 0x88]);
                // DATA, END_STREAM: `ok`.
                out.extend_from_slice(&[0, 0, 2, 0, 1, id[0], id[1], id[2], id[3], b'o', b'k']);
                // GOAWAY, last stream processed = the first, NO_ERROR.
                out.extend_from_slice(&[0, 0, 8, 7, 0, 0, 0, 0, 0]);
                out.extend_from_slice(&id);
                out.extend_from_slice(&[0, 0, 0, 0]);
                let _ = s.write_all(&out).await;
                let _ = s.shutdown().await;
                // Drain until the proxy closes its side.
                let mut sink = [0u8; 1024];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, first_rx)
}

/// Issue 10, second review: requests sharing an HTTP/2 connection with
/// one the upstream answered before a graceful `GOAWAY` were refused
/// (their streams are above its last stream ID: never processed, RFC 9113
/// §6.8) and the proxy answered them 502, blaming a healthy upstream. An
/// idempotent request whose body is in memory is sent once more on a new
/// connection.
#[tokio::test]
async fn requests_refused_by_an_http2_goaway_are_sent_again_on_a_new_connection() {
    let (up, first) = goaway_upstream(4).await;
    let proxy = ReverseProxy::builder(one_upstream(&format!("h2c://{up}")))
        .try_build()
        .unwrap();
    let addr = serve_proxy(proxy).await;
    let get = |path: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nhost: front.test\r\nconnection: close\r\n\r\n");
        tokio::spawn(async move { raw_text(addr, &req).await })
    };
    // The first request opens the connection; the others join it.
    let a = get("/a");
    within(first).await.unwrap();
    let rest = [get("/b"), get("/c"), get("/d")];
    for answer in std::iter::once(a).chain(rest) {
        let answer = within(answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("\r\n2\r\nok\r\n0\r\n\r\n"), "{answer}");
    }
}

/// An HTTP/1.1 upstream that answers with the request's body and how it
/// was framed.
async fn body_echo_upstream() -> SocketAddr {
    serve_upstream(service_fn(|req: Request<Incoming>| async move {
        let framing = if req.headers().contains_key("transfer-encoding") {
            "chunked"
        } else if req.headers().contains_key("content-length") {
            "length"
        } else {
            "none"
        };
        let body = req.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>(
            Response::builder()
                .header("x-framing", framing)
                .body(Full::new(body))
                .unwrap(),
        )
    }))
    .await
}

/// Issue 10, second review: a GET (or HEAD) whose body came chunked
/// reached the upstream without it. `Transfer-Encoding` is hop-by-hop and
/// removed, and hyper's client then sends a GET, HEAD or CONNECT body of
/// unknown length as no body at all; a body with `Content-Length` went
/// through. A body has no defined meaning on GET (RFC 9110 §9.3.1) but the
/// proxy must not change the message: it is forwarded chunked.
#[tokio::test]
async fn a_chunked_get_body_reaches_the_upstream() {
    let up = body_echo_upstream().await;
    let proxy = ReverseProxy::builder(one_upstream(&format!("http://{up}")))
        .try_build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { proxy::serve(listener, proxy).await.unwrap() });
    for method in ["GET", "POST", "DELETE"] {
        let answer = within(raw_text(
            addr,
            &format!(
                "{method} /q HTTP/1.1\r\nhost: front.test\r\ntransfer-encoding: chunked\r\n\
                 connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            ),
        ))
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{method}: {answer}");
        assert!(answer.contains("x-framing: chunked"), "{method}: {answer}");
        assert!(answer.ends_with("hello world"), "{method}: {answer}");
    }
}

/// Issue 10, second review: `CONNECT` was forwarded with its target
/// rewritten to the upstream's own authority, and an upstream that answers
/// every method (an SSR fallback route) made the proxy send the client a
/// `200`, a tunnel with nothing behind it. It is refused and never
/// forwarded.
#[tokio::test]
async fn connect_is_refused_and_never_forwarded() {
    let (up, heads) = {
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = Arc::clone(&heads);
        let addr = serve_upstream(service_fn(move |req: Request<Incoming>| {
            seen.lock()
                .unwrap()
                .push(format!("{} {}", req.method(), req.uri()));
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("page")))) }
        }))
        .await;
        (addr, heads)
    };
    let proxy = ReverseProxy::builder(one_upstream(&format!("http://{up}")))
        .try_build()
        .unwrap();
    let addr = serve_proxy(proxy).await;
    let line = raw_status(
        addr,
        "CONNECT b.example:443 HTTP/1.1\r\nhost: b.example:443\r\n\r\n",
    )
    .await;
    assert!(line.starts_with("HTTP/1.1 501"), "{line}");
    assert!(
        heads.lock().unwrap().is_empty(),
        "{:?}",
        heads.lock().unwrap()
    );
    // Other methods still go through.
    let answer = within(raw_text(
        addr,
        "OPTIONS /x HTTP/1.1\r\nhost: front.test\r\nconnection: close\r\n\r\n",
    ))
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
