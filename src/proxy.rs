//! Reverse-proxy forwarding over hyper-util's pooled client (feature
//! `proxy`).
//!
//! [`ReverseProxy`] is a whole reverse proxy as one service: it prepares the
//! request as an intermediary must (hop-by-hop headers removed, RFC 9110
//! §7.6.1; `Via` added, §7.6.3; `X-Forwarded-*` or `Forwarded`, RFC 7239),
//! balances it over the upstreams with [`Balance`], forwards it with
//! [`Forward`] (connect and response timeouts), and streams bodies both ways,
//! trailers included (`TE: trailers` is forwarded; `Trailer` is not
//! hop-by-hop).
//!
//! # Authority and forwarding headers
//!
//! The upstream sees one validated authority: an absolute-form target's
//! authority replaces `Host` (RFC 9112 §3.2.2), and the same value goes
//! into `X-Forwarded-Host` / `Forwarded: host=`; see
//! [`authority`](crate::authority). Unless the socket peer is one of
//! [`trusted_proxies`](ProxyBuilder::trusted_proxies), every forwarding
//! header of [`FORWARDING_HEADERS`](crate::authority::FORWARDING_HEADERS)
//! is removed before the proxy writes its own:
//!
//! `Forwarded`, `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto`,
//! `X-Forwarded-Protocol`, `X-Forwarded-Port`, `X-Forwarded-Prefix`,
//! `X-Forwarded-Path`, `X-Forwarded-Uri`, `X-Forwarded-Method`,
//! `X-Forwarded-Server`, `X-Forwarded-Ssl`, `X-Forwarded-Scheme`,
//! `X-Forwarded-Tls-Client-Cert`, `X-Forwarded-Tls-Client-Cert-Info`,
//! `X-Forwarded-Client-Cert`, `X-Original-Forwarded-For`,
//! `Front-End-Https`, `X-Url-Scheme`, `X-Real-IP`, `X-Client-IP`,
//! `Client-IP`, `True-Client-IP`, `CF-Connecting-IP`, `Fastly-Client-IP`,
//! `X-Cluster-Client-IP`, `X-Original-URL`, `X-Rewrite-URL`,
//! `X-Original-URI`, `X-Original-Host`, `X-Host`;
//!
//! and `X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override` on
//! every method but `POST`, from any peer. That is the union of Traefik's
//! `forwardedHeaders` list, Envoy's external-request sanitising
//! (`X-Forwarded-*`, `X-Forwarded-Client-Cert`) and the headers Express,
//! Rails, Django, Spring, ASP.NET, Symfony and Ktor read. With
//! [`ForwardingHeaders::XForwarded`] the proxy then writes
//! `X-Forwarded-For: <peer>`, `X-Forwarded-Proto` and `X-Forwarded-Host`.
//!
//! # Timeouts
//!
//! Connecting may take [`DEFAULT_CONNECT_TIMEOUT`] (2 s), response headers
//! [`DEFAULT_RESPONSE_TIMEOUT`] (15 s) from the end of the request body.
//! Both count as failures of the endpoint for passive health, so an upstream
//! that accepts connections and never answers is ejected.
//! Failures become responses: `502 Bad Gateway` when no upstream could be
//! reached after retries, `504 Gateway Timeout` when the last attempt timed
//! out, `503` when no upstream is eligible.
//!
//! # Example
//!
//! ```no_run
//! use tower_ssr::proxy::ReverseProxy;
//! use tower_ssr::balance::{Endpoints, RoundRobin};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let upstreams = Endpoints::new(RoundRobin::new());
//! upstreams.add("r1", "http://127.0.0.1:9001".parse()?)?;
//! upstreams.add("r2", "http://127.0.0.1:9002".parse()?)?;
//! let proxy = ReverseProxy::builder(upstreams).build();
//! // serve `proxy` with hyper, inserting `ClientAddr` per connection;
//! // see examples/proxy.rs
//! # drop(proxy);
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! | situation | response |
//! |---|---|
//! | an upstream answered | its status, headers minus hop-by-hop ones, body streamed |
//! | every attempt failed to connect or broke before headers | `502 Bad Gateway` |
//! | the last attempt outlasted the response timeout | `504 Gateway Timeout` |
//! | no eligible upstream | `503 Service Unavailable` |
//! | several `Host` lines, none on HTTP/1.1, an invalid one (see [`authority`](crate::authority)) | `400 Bad Request`, nothing forwarded |
//! | a header line or the header section over [`header_limits`](ProxyBuilder::header_limits) | `431 Request Header Fields Too Large`, nothing forwarded |
//! | the client's body failed (being buffered or streamed) | `400 Bad Request`, no failure counted against the upstream |
//! | the client's body stalled longer than the response timeout | `408 Request Timeout`, no failure counted against the upstream |
//!
//! The response timeout runs from the end of the request body: a slow
//! upload may take longer as long as it keeps moving.
//!
//! Idempotent requests with an empty body, or a body of known length up to
//! [`replay_buffer`](ProxyBuilder::replay_buffer) (buffered first), can be
//! retried on another upstream; other bodies stream straight through and are
//! never replayed. Protocol upgrades (WebSocket) are not forwarded: the
//! `Upgrade` header is hop-by-hop and removed.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

use crate::balance::{
    peer_addr, Balance, Connect, Endpoints, Key, ReplayBody, ResponseBody, Retries, TrustedProxies,
};
use crate::limits::HeaderLimits;

/// Errors a body or client may return, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to an upstream: held in memory (replayable on
/// a retry) or streamed from the client (sent once).
pub struct ProxyBody {
    kind: Kind,
    // Set by `Forward` for the attempt that sends this body: how the
    // sending goes, to tell the client's faults from the upstream's.
    watch: Option<Arc<BodyWatch>>,
}

/// How a request body's sending goes, shared between the body (inside
/// hyper's connection task) and the attempt's future.
struct BodyWatch {
    // The body has ended: the response timeout starts from here.
    sent: AtomicBool,
    // The client's body failed (it hung up, or sent a broken chunk).
    failed: AtomicBool,
    // The last poll of the body found nothing ready: it is the client we
    // are waiting for, not an upstream that stopped reading.
    waiting_on_client: AtomicBool,
    last_progress: Mutex<tokio::time::Instant>,
    waker: Mutex<Option<Waker>>,
}

impl BodyWatch {
    fn new() -> Self {
        BodyWatch {
            sent: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            waiting_on_client: AtomicBool::new(false),
            last_progress: Mutex::new(tokio::time::Instant::now()),
            waker: Mutex::new(None),
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn progress(&self) {
        self.waiting_on_client.store(false, Ordering::Release);
        *Self::lock(&self.last_progress) = tokio::time::Instant::now();
    }

    fn last_progress(&self) -> tokio::time::Instant {
        *Self::lock(&self.last_progress)
    }

    fn end(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Release);
        if let Some(w) = Self::lock(&self.waker).take() {
            w.wake();
        }
    }

    fn register(&self, waker: &Waker) {
        let mut slot = Self::lock(&self.waker);
        match &*slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    fn ended(&self) -> bool {
        self.sent.load(Ordering::Acquire) || self.failed.load(Ordering::Acquire)
    }
}

enum Kind {
    Full(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full(b) => f
                .debug_struct("ProxyBody")
                .field("full", &b.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Stream(_) => f.debug_struct("ProxyBody").field("stream", &true).finish(),
        }
    }
}

impl ProxyBody {
    /// An empty body.
    #[must_use]
    pub fn empty() -> Self {
        ProxyBody {
            kind: Kind::Full(None),
            watch: None,
        }
    }

    /// A body held in memory.
    #[must_use]
    pub fn full(bytes: Bytes) -> Self {
        ProxyBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            watch: None,
        }
    }

    /// A body streamed from elsewhere.
    pub fn stream<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        ProxyBody {
            kind: Kind::Stream(body.map_err(Into::into).boxed_unsync()),
            watch: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(s) => Pin::new(s).poll_frame(cx),
        };
        if let Some(watch) = &this.watch {
            match &polled {
                Poll::Pending => watch.waiting_on_client.store(true, Ordering::Release),
                Poll::Ready(Some(Ok(_))) => {
                    watch.progress();
                    if this.kind_is_end_stream() {
                        watch.end(&watch.sent);
                    }
                }
                Poll::Ready(Some(Err(_))) => watch.end(&watch.failed),
                Poll::Ready(None) => watch.end(&watch.sent),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.kind_is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(s) => s.size_hint(),
        }
    }
}

impl ProxyBody {
    fn kind_is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Stream(s) => s.is_end_stream(),
        }
    }
}

impl ReplayBody for ProxyBody {
    fn try_replay(&self) -> Option<Self> {
        match &self.kind {
            Kind::Full(b) => Some(ProxyBody {
                kind: Kind::Full(b.clone()),
                watch: None,
            }),
            Kind::Stream(s) if s.is_end_stream() => Some(ProxyBody::empty()),
            Kind::Stream(_) => None,
        }
    }
}

/// Why forwarding to an upstream failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyError {
    /// The connection could not be made (refused, unreachable, connect
    /// timeout).
    Connect(BoxError),
    /// No response headers within the response timeout.
    Timeout,
    /// The upstream broke the exchange before response headers.
    Upstream(BoxError),
    /// The client's request body failed while it was being forwarded (the
    /// client hung up, or sent a broken chunk): the client's fault, not the
    /// upstream's.
    RequestBody(BoxError),
    /// The client's request body stalled (nothing for longer than the
    /// response timeout) while it was being forwarded: the client's fault,
    /// not the upstream's.
    RequestBodyTimeout,
}

impl ProxyError {
    /// Whether the failure is the client's, not the upstream's: it neither
    /// counts against the upstream's health nor moves the request to
    /// another upstream.
    #[must_use]
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::RequestBody(_) | ProxyError::RequestBodyTimeout
        )
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Connect(_) => f.write_str("could not connect to the upstream"),
            ProxyError::Timeout => f.write_str("the upstream did not answer in time"),
            ProxyError::Upstream(_) => f.write_str("the upstream failed before response headers"),
            ProxyError::RequestBody(_) => f.write_str("the client's request body failed"),
            ProxyError::RequestBodyTimeout => f.write_str("the client's request body stalled"),
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxyError::Connect(e) | ProxyError::Upstream(e) | ProxyError::RequestBody(e) => {
                Some(&**e)
            }
            ProxyError::Timeout | ProxyError::RequestBodyTimeout => None,
        }
    }
}

/// The leaf HTTP/1 client: hyper-util's pooled client with a connect
/// timeout and a timeout on response headers. Requests must carry an
/// absolute URI ([`BalanceLayer`](crate::balance::BalanceLayer) rewrites them to one).
#[derive(Clone)]
pub struct Forward {
    client: Client<HttpConnector, ProxyBody>,
    response_timeout: Duration,
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward")
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl Forward {
    /// A client with these timeouts.
    #[must_use]
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Forward {
            client,
            response_timeout,
        }
    }
}

impl Service<Request<ProxyBody>> for Forward {
    type Response = Response<Incoming>;
    type Error = ProxyError;
    // Boxed: each call is a network round trip, which dwarfs one allocation.
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ProxyBody>) -> Self::Future {
        let watch = Arc::new(BodyWatch::new());
        if req.body().kind_is_end_stream() {
            // hyper never polls an empty body.
            watch.sent.store(true, Ordering::Release);
        }
        req.body_mut().watch = Some(Arc::clone(&watch));
        let fut = self.client.request(req);
        let timeout = self.response_timeout;
        Box::pin(async move {
            let classify = |e: hyper_util::client::legacy::Error| {
                if watch.failed.load(Ordering::Acquire) {
                    ProxyError::RequestBody(Box::new(e))
                } else if e.is_connect() {
                    ProxyError::Connect(Box::new(e))
                } else {
                    ProxyError::Upstream(Box::new(e))
                }
            };
            let mut fut = std::pin::pin!(fut);
            // While the request body is on its way, the clock is its idle
            // time, not the response timeout: an upload may take longer
            // than that, and the upstream cannot answer before it has the
            // request (RFC 9110 §15.5.9: a client too slow to send its
            // request gets 408, and it is not the upstream's failure).
            let mut idle = Box::pin(tokio::time::sleep(timeout));
            let phase = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                    return Poll::Ready(Phase::Done(r));
                }
                watch.register(cx.waker());
                if watch.ended() {
                    return Poll::Ready(Phase::Sent);
                }
                loop {
                    if idle.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let deadline = watch.last_progress() + timeout;
                    if deadline <= tokio::time::Instant::now() {
                        // Stalled: on the client when the body had nothing
                        // to give, else on an upstream that stopped reading.
                        return Poll::Ready(Phase::Stalled(
                            if watch.waiting_on_client.load(Ordering::Acquire) {
                                ProxyError::RequestBodyTimeout
                            } else {
                                ProxyError::Timeout
                            },
                        ));
                    }
                    idle.as_mut().reset(deadline);
                }
            })
            .await;
            match phase {
                Phase::Stalled(e) => return Err(e),
                Phase::Done(r) => return r.map_err(classify),
                Phase::Sent => {}
            }
            match tokio::time::timeout(timeout, fut).await {
                Err(_) => Err(ProxyError::Timeout),
                Ok(r) => r.map_err(classify),
            }
        })
    }
}

/// Where an attempt stands once its request body is no longer the clock.
enum Phase {
    // The upstream answered (or failed) while the body was being sent.
    Done(Result<Response<Incoming>, hyper_util::client::legacy::Error>),
    // The body stalled: the client's fault or the upstream's.
    Stalled(ProxyError),
    // The body has ended (or failed); the response timeout starts.
    Sent,
}

/// [`Rewrite`](crate::balance::Rewrite) over [`Forward`], which also tells
/// the balancer which failures are the client's: those count against no
/// upstream and are not retried.
#[derive(Debug, Clone)]
struct ToUpstream {
    client: Forward,
}

impl Connect<Uri, ProxyBody> for ToUpstream {
    type Service = Forward;

    fn connect(&self, base: &Uri, mut req: Request<ProxyBody>) -> (Forward, Request<ProxyBody>) {
        *req.uri_mut() = crate::balance::rewrite_uri(base, req.uri());
        (self.client.clone(), req)
    }

    fn is_endpoint_failure(&self, error: &ProxyError) -> bool {
        !error.is_client_fault()
    }
}

/// Which forwarding headers the proxy adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardingHeaders {
    /// `X-Forwarded-For` (the peer; appended to a trusted peer's list),
    /// `X-Forwarded-Proto` and `X-Forwarded-Host` (the validated
    /// authority). An untrusted peer's forwarding headers never reach an
    /// upstream, in any mode (see the [module docs](self)).
    XForwarded,
    /// An element appended to `Forwarded` (RFC 7239):
    /// `for=…;host=…;proto=…`.
    Forwarded,
    /// Neither.
    None,
}

struct Settings {
    preserve_host: bool,
    trusted: TrustedProxies,
    header_limits: HeaderLimits,
    forwarding: ForwardingHeaders,
    proto: HeaderValue,
    replay_buffer: usize,
    buffer_timeout: Duration,
}

/// The default [`ProxyBuilder::connect_timeout`]: 2 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default [`ProxyBuilder::response_timeout`]: 15 s.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Builds a [`ReverseProxy`].
#[must_use]
pub struct ProxyBuilder {
    endpoints: Endpoints<Uri>,
    key: Key,
    retries: Retries,
    connect_timeout: Duration,
    response_timeout: Duration,
    preserve_host: bool,
    trusted: TrustedProxies,
    header_limits: HeaderLimits,
    forwarding: ForwardingHeaders,
    https: bool,
    replay_buffer: usize,
}

impl fmt::Debug for ProxyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyBuilder")
            .field("endpoints", &self.endpoints)
            .field("key", &self.key)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl ProxyBuilder {
    /// What consistent-hashing strategies hash. Default: [`Key::none`].
    ///
    /// The key reads the request after this proxy removed the forwarding
    /// headers of untrusted peers: with [`Key::client_ip`], pass the same
    /// [`TrustedProxies`] to [`trusted_proxies`](Self::trusted_proxies).
    pub fn key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }

    /// When failed requests move to another upstream. Default:
    /// [`Retries::new`].
    pub fn retries(mut self, retries: Retries) -> Self {
        self.retries = retries;
        self
    }

    /// How long a connection to an upstream may take. Default: 2 s
    /// (renderers are near; Envoy's default is 5 s, HAProxy's advice 5 s,
    /// nginx's 60 s). A timed-out connect counts as a failure of the
    /// endpoint for passive health and is retried on another one.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long an upstream may take to send response headers, counted
    /// from the end of the request body (the response body then streams
    /// for as long as it takes). Also the longest a request body may stall
    /// while it streams: a client that sends nothing for that long gets
    /// `408`, and no failure counts against the upstream. Default: 15 s
    /// (Envoy's route timeout; nginx's `proxy_read_timeout` is 60 s, far
    /// beyond any page a renderer should take). An upstream that outlasts
    /// it gets `504` for the request and a failure for passive health, so
    /// one that accepts and never answers is ejected after
    /// [`PassiveHealth::consecutive_failures`](crate::balance::PassiveHealth::consecutive_failures)
    /// timeouts instead of holding every request sent to it.
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// Whether upstreams see the client's `Host` (default, like HAProxy and
    /// Envoy: SSR apps build absolute URLs from it) or their own authority
    /// (like nginx's default).
    pub fn preserve_host(mut self, yes: bool) -> Self {
        self.preserve_host = yes;
        self
    }

    /// Peers whose forwarding headers are believed (a TLS terminator or CDN
    /// in front). Default: [`TrustedProxies::none`].
    ///
    /// From any other peer (and when the request carries no
    /// [`ClientAddr`](crate::balance::ClientAddr)) every header of
    /// [`authority::FORWARDING_HEADERS`](crate::authority::FORWARDING_HEADERS)
    /// is removed before the proxy writes its own, and the method-override
    /// headers are removed on all methods but `POST`. From a trusted peer
    /// they are kept: `X-Forwarded-For` / `Forwarded` get this hop
    /// appended, and `X-Forwarded-Proto` / `X-Forwarded-Host` are only set
    /// when the peer sent none.
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }

    /// The largest request header line and header section forwarded; a
    /// request over either gets `431 Request Header Fields Too Large`
    /// (RFC 6585 §5) and reaches no upstream. Default:
    /// [`HeaderLimits::new`] (16 KiB per line, 64 KiB in all).
    pub fn header_limits(mut self, limits: HeaderLimits) -> Self {
        self.header_limits = limits;
        self
    }

    /// Which forwarding headers to add. Default:
    /// [`ForwardingHeaders::XForwarded`].
    pub fn forwarding_headers(mut self, h: ForwardingHeaders) -> Self {
        self.forwarding = h;
        self
    }

    /// Whether clients reach this proxy over TLS (terminated in front of
    /// it), for `X-Forwarded-Proto` / `proto=`. Default: `false`.
    pub fn https(mut self, yes: bool) -> Self {
        self.https = yes;
        self
    }

    /// The largest request body (with a known length) that is read into
    /// memory first so that an idempotent request can be retried; 0 replays
    /// only empty bodies. Default: 64 KiB.
    pub fn replay_buffer(mut self, bytes: usize) -> Self {
        self.replay_buffer = bytes;
        self
    }

    /// Builds the proxy. Its client spawns connection tasks on the tokio
    /// runtime when used.
    pub fn build(self) -> ReverseProxy {
        let client = Forward::new(self.connect_timeout, self.response_timeout);
        let config = crate::balance::Config {
            key: self.key,
            retries: self.retries,
        };
        let balance = Balance::with_connect(self.endpoints, ToUpstream { client }, config);
        ReverseProxy {
            balance,
            settings: Arc::new(Settings {
                preserve_host: self.preserve_host,
                trusted: self.trusted,
                header_limits: self.header_limits,
                forwarding: self.forwarding,
                proto: HeaderValue::from_static(if self.https { "https" } else { "http" }),
                replay_buffer: self.replay_buffer,
                buffer_timeout: self.response_timeout,
            }),
        }
    }
}

/// A balancing reverse proxy as one service; see the [module docs](self).
#[derive(Clone)]
pub struct ReverseProxy {
    balance: Balance<Uri, ToUpstream>,
    settings: Arc<Settings>,
}

impl fmt::Debug for ReverseProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReverseProxy")
            .field("balance", &self.balance)
            .finish_non_exhaustive()
    }
}

impl ReverseProxy {
    /// A builder over these upstreams (values are base URIs).
    pub fn builder(endpoints: Endpoints<Uri>) -> ProxyBuilder {
        ProxyBuilder {
            endpoints,
            key: Key::none(),
            retries: Retries::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            preserve_host: true,
            trusted: TrustedProxies::none(),
            header_limits: HeaderLimits::new(),
            forwarding: ForwardingHeaders::XForwarded,
            https: false,
            replay_buffer: 64 * 1024,
        }
    }

    /// The upstream set, to change it at run time or read its stats.
    #[must_use]
    pub fn endpoints(&self) -> &Endpoints<Uri> {
        self.balance.endpoints()
    }
}

/// The body of the proxy's responses.
pub type ProxyResponseBody = ResponseBody<Incoming>;

impl<B> Service<Request<B>> for ReverseProxy
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyResponseBody>;
    type Error = Infallible;
    // Boxed: the request may be buffered before forwarding, and every call
    // is a network round trip.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut balance = self.balance.clone();
        let settings = Arc::clone(&self.settings);
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            if !settings.header_limits.allows(&parts) {
                return Ok(status_response(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
            }
            if let Err(e) = prepare_request(&mut parts, &settings) {
                return Ok(status_response(e.status()));
            }
            let body = match into_proxy_body(&parts, body, &settings).await {
                Ok(b) => b,
                Err(status) => return Ok(status_response(status)),
            };
            let req = Request::from_parts(parts, body);
            let res = match balance.call(req).await {
                Ok(res) => res,
                Err(ProxyError::Timeout) => {
                    return Ok(status_response(StatusCode::GATEWAY_TIMEOUT))
                }
                // The client's own body failed or stalled, as in the
                // buffered path below (RFC 9110 §15.5.1, §15.5.9).
                Err(ProxyError::RequestBody(_)) => {
                    return Ok(status_response(StatusCode::BAD_REQUEST))
                }
                Err(ProxyError::RequestBodyTimeout) => {
                    return Ok(status_response(StatusCode::REQUEST_TIMEOUT))
                }
                Err(_) => return Ok(status_response(StatusCode::BAD_GATEWAY)),
            };
            let (mut parts, body) = res.into_parts();
            remove_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, body))
        })
    }
}

fn status_response(status: StatusCode) -> Response<ProxyResponseBody> {
    let mut res = Response::new(ResponseBody::unavailable());
    *res.status_mut() = status;
    res
}

async fn into_proxy_body<B>(
    parts: &http::request::Parts,
    body: B,
    settings: &Settings,
) -> Result<ProxyBody, StatusCode>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok(ProxyBody::empty());
    }
    let len = body.size_hint().exact();
    let small = len.is_some_and(|n| n <= settings.replay_buffer as u64);
    if !(small && crate::balance::is_idempotent(&parts.method)) {
        return Ok(ProxyBody::stream(body));
    }
    // A client that announces a small body and then stalls must not hold
    // the request forever.
    match tokio::time::timeout(settings.buffer_timeout, body.collect()).await {
        Ok(Ok(collected)) => Ok(ProxyBody::full(collected.to_bytes())),
        Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1): those `Connection` lists, then the
/// fixed ones. `Proxy-Authorization` / `Proxy-Authenticate` are meant for
/// this proxy, never for the upstream. `Trailer` is not hop-by-hop (it
/// announces fields of the message itself) and is kept; `TE` is, and
/// [`prepare_request`] forwards its `trailers` member on its own.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        // `Host` is required in every HTTP/1.1 request (RFC 9112 §3.2) and
        // names the target, so it is never the sender's to make hop-by-hop:
        // `Connection: host` must not strip it (the upstream would see its
        // own authority, or an attacker's `X-Forwarded-Host`).
        .filter(|name| *name != header::HOST)
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn append_value(headers: &mut HeaderMap, name: HeaderName, add: &str) {
    // One line, appended after what earlier proxies wrote (several lines
    // are folded so that the list order stays unambiguous).
    let joined = {
        let existing: Vec<&str> = headers
            .get_all(&name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if existing.is_empty() {
            add.to_owned()
        } else {
            format!("{}, {add}", existing.join(", "))
        }
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(name, v);
    }
}

/// Whether a `TE` field lists `trailers` (RFC 9110 §10.1.4).
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        })
}

/// Readies a request for an upstream: one validated authority in `Host`,
/// hop-by-hop fields removed (but `TE: trailers` kept, as gRPC proxies do,
/// so an upstream may send trailers the client asked for), forwarding
/// headers from untrusted peers removed and ours written, `Via` added.
fn prepare_request(
    parts: &mut http::request::Parts,
    settings: &Settings,
) -> Result<(), crate::authority::AuthorityError> {
    // RFC 9112 §3.2, §3.2.2: the absolute-form authority wins over Host,
    // and a missing, repeated or invalid Host is refused. `Host` now holds
    // the one authority (or, for HTTP/1.0 without one, is absent).
    crate::authority::normalize_host(parts)?;
    let trailers = accepts_trailers(&parts.headers);
    remove_hop_by_hop(&mut parts.headers);
    if trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let host = parts.headers.get(header::HOST).cloned();
    if !settings.preserve_host {
        // hyper-util then sets Host from the upstream's URI.
        parts.headers.remove(header::HOST);
    }
    let peer: Option<IpAddr> = peer_addr(parts).map(|a| a.ip().to_canonical());
    let trusted = peer.is_some_and(|ip| settings.trusted.contains(ip));
    if trusted {
        crate::authority::remove_method_override(&parts.method, &mut parts.headers);
    } else {
        // Never the client's: the host, scheme, port, prefix, path and
        // client address an upstream may build URLs and decisions from
        // (cache poisoning, reset links, IP allow lists).
        crate::authority::remove_forwarding_headers(&parts.method, &mut parts.headers);
    }
    match settings.forwarding {
        ForwardingHeaders::XForwarded => {
            let xff = HeaderName::from_static("x-forwarded-for");
            if let Some(ip) = peer {
                // A trusted peer's list is kept and our hop appended:
                // upstreams read it from the right with their own trusted
                // set (DESIGN.md "Balancing"). An untrusted peer's list was
                // removed above, so ours is the whole of it.
                append_value(&mut parts.headers, xff, &ip.to_string());
            }
            let xfp = HeaderName::from_static("x-forwarded-proto");
            if !(trusted && parts.headers.contains_key(&xfp)) {
                parts.headers.insert(xfp, settings.proto.clone());
            }
            let xfh = HeaderName::from_static("x-forwarded-host");
            if let Some(h) = &host {
                if !(trusted && parts.headers.contains_key(&xfh)) {
                    parts.headers.insert(xfh, h.clone());
                }
            }
        }
        ForwardingHeaders::Forwarded => {
            let node = match peer {
                Some(IpAddr::V4(v4)) => v4.to_string(),
                // IPv6 must be quoted and bracketed (RFC 7239 §6).
                Some(IpAddr::V6(v6)) => format!("\"[{v6}]\""),
                None => "unknown".to_owned(),
            };
            let mut element = format!("for={node}");
            if let Some(h) = host.as_ref().and_then(|h| h.to_str().ok()) {
                element.push_str(";host=");
                element.push_str(&quote_if_needed(h));
            }
            element.push_str(";proto=");
            element.push_str(settings.proto.to_str().unwrap_or("http"));
            append_value(&mut parts.headers, header::FORWARDED, &element);
        }
        ForwardingHeaders::None => {}
    }
    // RFC 9110 §7.6.3: a gateway MUST send Via on forwarded requests.
    let version = match parts.version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        _ => "1.1",
    };
    append_value(
        &mut parts.headers,
        header::VIA,
        &format!("{version} tower-ssr"),
    );
    Ok(())
}

fn quote_if_needed(v: &str) -> String {
    let token = !v.is_empty()
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
    if token {
        v.to_owned()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// An HTTP check for [`ActiveProbes`](crate::balance::ActiveProbes): `GET base +
/// path`, healthy on a `2xx` or `3xx`.
///
/// ```no_run
/// # use std::time::Duration;
/// # use tower_ssr::balance::{ActiveProbes, Endpoints, RoundRobin};
/// # use tower_ssr::proxy::http_check;
/// # async fn f(upstreams: Endpoints<http::Uri>) {
/// let _probes = ActiveProbes::new().spawn(&upstreams, http_check("/healthz"));
/// # }
/// ```
pub fn http_check(
    path: &str,
) -> impl Fn(Uri) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync + 'static {
    let client: Client<HttpConnector, ProxyBody> =
        Client::builder(TokioExecutor::new()).build_http();
    let path: Arc<str> = Arc::from(if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    });
    move |base: Uri| {
        let client = client.clone();
        let target = crate::balance::rewrite_uri(&base, &Uri::try_from(&*path).unwrap_or_default());
        Box::pin(async move {
            let Ok(req) = Request::get(target).body(ProxyBody::empty()) else {
                return false;
            };
            match client.request(req).await {
                Ok(res) => {
                    let ok = res.status().is_success() || res.status().is_redirection();
                    // Drain so the connection goes back to the pool.
                    let _ = res.into_body().collect().await;
                    ok
                }
                Err(_) => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(forwarding: ForwardingHeaders) -> Settings {
        Settings {
            preserve_host: true,
            trusted: TrustedProxies::none(),
            header_limits: HeaderLimits::new(),
            forwarding,
            proto: HeaderValue::from_static("http"),
            replay_buffer: 16,
            buffer_timeout: Duration::from_secs(5),
        }
    }

    fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = Request::builder().uri("/p");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = b.body(()).unwrap();
        req.extensions_mut().insert(crate::balance::ClientAddr(
            "[::ffff:198.51.100.7]:5000".parse().unwrap(),
        ));
        req.into_parts().0
    }

    #[test]
    fn hop_by_hop_headers_are_removed_with_those_connection_lists() {
        let mut p = parts(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("authorization", "Bearer kept"),
            ("host", "front.example"),
        ]);
        prepare_request(&mut p, &settings(ForwardingHeaders::None)).unwrap();
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
        ] {
            assert!(!p.headers.contains_key(gone), "{gone}");
        }
        // RFC 9110 §11.6.2: Authorization is not ours to touch.
        assert_eq!(p.headers["authorization"], "Bearer kept");
        assert_eq!(p.headers["host"], "front.example");
        assert_eq!(p.headers["via"], "1.1 tower-ssr");
    }

    #[test]
    fn te_trailers_is_forwarded_alone() {
        let mut p = parts(&[("te", "gzip, Trailers;q=1"), ("host", "h.test")]);
        prepare_request(&mut p, &settings(ForwardingHeaders::None)).unwrap();
        assert_eq!(p.headers["te"], "trailers");
    }

    #[test]
    fn an_untrusted_peers_forwarding_headers_are_replaced_by_ours() {
        let mut p = parts(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
            ("x-real-ip", "6.6.6.6"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("host", "front.example"),
        ]);
        prepare_request(&mut p, &settings(ForwardingHeaders::XForwarded)).unwrap();
        assert_eq!(p.headers["x-forwarded-for"], "198.51.100.7");
        assert_eq!(p.headers["x-forwarded-proto"], "http");
        assert_eq!(p.headers["x-forwarded-host"], "front.example");
        for gone in ["x-real-ip", "x-original-url", "x-http-method-override"] {
            assert!(!p.headers.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn a_trusted_peers_forwarding_headers_are_kept_and_appended_to() {
        let mut s = settings(ForwardingHeaders::XForwarded);
        s.trusted = TrustedProxies::try_new(["198.51.100.0/24"]).unwrap();
        let mut p = parts(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "203.0.113.9"),
            ("x-http-method-override", "DELETE"),
            ("host", "front.example"),
        ]);
        prepare_request(&mut p, &s).unwrap();
        assert_eq!(p.headers["x-forwarded-for"], "203.0.113.9, 198.51.100.7");
        assert_eq!(p.headers["x-forwarded-proto"], "https");
        assert_eq!(p.headers["x-real-ip"], "203.0.113.9");
        assert!(!p.headers.contains_key("x-http-method-override"));
    }

    #[test]
    fn forwarded_element_is_ours_alone_quoted_where_needed() {
        let mut p = parts(&[("forwarded", "for=6.6.6.6"), ("host", "front.example:8080")]);
        prepare_request(&mut p, &settings(ForwardingHeaders::Forwarded)).unwrap();
        assert_eq!(
            p.headers["forwarded"],
            "for=198.51.100.7;host=\"front.example:8080\";proto=http"
        );
    }

    #[test]
    fn the_absolute_form_authority_replaces_host_and_bad_hosts_are_refused() {
        let mut req = Request::get("http://victim.test/home")
            .header("host", "evil.test")
            .body(())
            .unwrap();
        req.extensions_mut().insert(crate::balance::ClientAddr(
            "198.51.100.7:5000".parse().unwrap(),
        ));
        let mut p = req.into_parts().0;
        prepare_request(&mut p, &settings(ForwardingHeaders::XForwarded)).unwrap();
        assert_eq!(p.headers["host"], "victim.test");
        assert_eq!(p.headers["x-forwarded-host"], "victim.test");
        let mut p = parts(&[("host", "victim.test/admin")]);
        assert!(prepare_request(&mut p, &settings(ForwardingHeaders::None)).is_err());
        let mut p = parts(&[]);
        assert!(prepare_request(&mut p, &settings(ForwardingHeaders::None)).is_err());
    }

    #[test]
    fn host_is_dropped_when_not_preserved() {
        let mut p = parts(&[("host", "front.example")]);
        let mut s = settings(ForwardingHeaders::None);
        s.preserve_host = false;
        prepare_request(&mut p, &s).unwrap();
        assert!(!p.headers.contains_key("host"));
    }

    #[test]
    fn response_hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("trailer", HeaderValue::from_static("x-t"));
        h.insert(
            "cache-control",
            HeaderValue::from_static("public, s-maxage=60"),
        );
        remove_hop_by_hop(&mut h);
        // Trailer is not hop-by-hop (RFC 9110 §6.6.2, §7.6.1).
        assert_eq!(h.len(), 2);
        assert_eq!(h["trailer"], "x-t");
    }

    #[test]
    fn full_bodies_replay_streams_do_not() {
        let full = ProxyBody::full(Bytes::from_static(b"abc"));
        assert!(full.try_replay().is_some());
        let stream = ProxyBody::stream(http_body_util::Full::new(Bytes::from_static(b"abc")));
        assert!(stream.try_replay().is_none());
        let ended = ProxyBody::stream(http_body_util::Empty::<Bytes>::new());
        assert!(ended.try_replay().is_some());
    }
}
