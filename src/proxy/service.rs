//! [`ReverseProxy`] and its builder.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;

use super::forward::{has_hop_by_hop, prepare};
use super::future::ResponseFuture;
use super::stall::{Guarded, UpstreamBody};
#[cfg(feature = "tls")]
use super::TlsRoots;
use super::{
    upgrade, BoxError, ConfigError, Forward, Forwarding, ForwardingHeaders, ProxyBody, ProxyError,
};
use crate::balance::{Balance, Connect, Endpoints, Key, ResponseBody, Retries, TrustedProxies};
use crate::limits::HeaderLimits;

/// [`Rewrite`](crate::balance::Rewrite) over [`Forward`], which also tells
/// the balancer which failures are the client's: those count against no
/// upstream and are not retried. The endpoint's base URI goes to the
/// client beside the request instead of into its URI (see `Transport`).
#[derive(Debug, Clone)]
pub(super) struct ToUpstream {
    client: Guard,
}

/// [`Forward`] to one upstream (`base`, or the request's absolute URI),
/// with each response body in an [`UpstreamBody`].
#[derive(Debug, Clone)]
pub(super) struct Guard {
    client: Forward,
    // How long a response body may stall (see `UpstreamBody`).
    idle_timeout: Duration,
    base: Option<Uri>,
}

impl Service<Request<ProxyBody>> for Guard {
    type Response = Response<UpstreamBody>;
    type Error = ProxyError;
    type Future = Guarded;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.client.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Guarded {
        Guarded::new(self.client.send(self.base.as_ref(), req), self.idle_timeout)
    }
}

impl Connect<Uri, ProxyBody> for ToUpstream {
    type Service = Guard;

    fn connect(&self, base: &Uri, mut req: Request<ProxyBody>) -> (Guard, Request<ProxyBody>) {
        if base.scheme_str() == Some("unix") && !req.headers().contains_key(http::header::HOST) {
            // A socket path is no host: hyper-util would send the URI's
            // hex-encoded one.
            req.headers_mut()
                .insert(http::header::HOST, HeaderValue::from_static("localhost"));
        }
        let guard = Guard {
            client: self.client.client.clone(),
            idle_timeout: self.client.idle_timeout,
            base: Some(base.clone()),
        };
        (guard, req)
    }

    fn is_endpoint_failure(&self, error: &ProxyError) -> bool {
        !error.is_client_fault()
    }
}

struct Settings {
    fwd: Forwarding,
    header_limits: HeaderLimits,
    replay_buffer: usize,
    buffer_timeout: Duration,
    // How long a tunnel may carry nothing either way before it is closed.
    idle_timeout: Duration,
}

/// The default [`ProxyBuilder::connect_timeout`]: 2 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default [`ProxyBuilder::response_timeout`]: 15 s.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);
/// The default [`ProxyBuilder::idle_timeout`]: 60 s (nginx's
/// `proxy_read_timeout`, the figure WebSocket users know).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default [`ProxyBuilder::pool_idle_timeout`]: 3 s. An HTTP/1.1
/// connection idle that long closes within 3¾ s, before the upstream's own
/// keep-alive timeout closes it under a request: Node's
/// `server.keepAliveTimeout` and uvicorn's `timeout_keep_alive` are 5 s.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

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
    idle_timeout: Duration,
    pool_idle_timeout: Duration,
    // The user's own client; `None` builds the built-in transports.
    client: Option<Forward>,
    #[cfg(feature = "tls")]
    tls_roots: Option<TlsRoots>,
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

    /// How long a tunnel (an upgraded connection, e.g. a WebSocket) may
    /// carry nothing either way before both sides are closed, and how long
    /// a response body may send nothing before it is cut off (the client
    /// gets the status and a cut-off body; zero: no limit). It also caps
    /// [`pool_idle_timeout`](Self::pool_idle_timeout) (zero keeps no
    /// upstream connection idle). Default: [`DEFAULT_IDLE_TIMEOUT`] (60 s).
    /// WebSocket apps that ping less often need more.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// How long an idle pooled upstream connection is kept: an HTTP/1.1
    /// one closes within a quarter of this after it, an HTTP/2 one once no
    /// request was sent on it for as long; zero keeps none idle. At most
    /// [`idle_timeout`](Self::idle_timeout). Default:
    /// [`DEFAULT_POOL_IDLE_TIMEOUT`] (3 s).
    ///
    /// Keep it below the upstream's own keep-alive timeout (nginx users set
    /// `keepalive_timeout` below the renderer's for the same reason): a
    /// connection the upstream closes at its timeout just as a request is
    /// written to it fails that request, a `502` (or a retry on another
    /// endpoint) counted against a healthy upstream. Node's
    /// `keepAliveTimeout` and uvicorn's are 5 s, gunicorn's 2 s.
    pub fn pool_idle_timeout(mut self, d: Duration) -> Self {
        self.pool_idle_timeout = d;
        self
    }

    /// The CA certificates `https://` upstreams are verified against.
    /// Default: [`TlsRoots::system`], read when the proxy is built.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_roots(mut self, roots: TlsRoots) -> Self {
        self.tls_roots = Some(roots);
        self
    }

    /// Forwards with the user's own hyper-util client instead of the
    /// built-in transports: its connector (TLS, DNS, socket options,
    /// timeouts) and pool settings are the user's, and the schemes it
    /// speaks are whatever the connector accepts (nothing is checked at
    /// build time). The proxy still applies
    /// [`response_timeout`](Self::response_timeout);
    /// [`connect_timeout`](Self::connect_timeout),
    /// [`tls_roots`](Self::tls_roots) and the pool part of
    /// [`idle_timeout`](Self::idle_timeout) are then the connector's
    /// business. For upgrades (WebSocket) to work the client must be
    /// hyper-util's legacy client, which keeps them enabled.
    ///
    /// ```
    /// use hyper_util::client::legacy::{connect::HttpConnector, Client};
    /// use hyper_util::rt::TokioExecutor;
    /// use tower_ssr::balance::{Endpoints, RoundRobin};
    /// use tower_ssr::proxy::{ProxyBody, ReverseProxy};
    ///
    /// let mut connector = HttpConnector::new();
    /// connector.set_keepalive(Some(std::time::Duration::from_secs(30)));
    /// let client = Client::builder(TokioExecutor::new()).build::<_, ProxyBody>(connector);
    /// let proxy = ReverseProxy::builder(Endpoints::new(RoundRobin::new()))
    ///     .client(client)
    ///     .try_build()
    ///     .unwrap();
    /// # drop(proxy);
    /// ```
    pub fn client<C>(mut self, client: hyper_util::client::legacy::Client<C, ProxyBody>) -> Self
    where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    {
        self.client = Some(Forward::with_client(client, self.response_timeout));
        self
    }

    /// Builds the proxy, checking what can be checked before the first
    /// request: every upstream's scheme is one the built-in transports
    /// speak (see [`upstream`](super::upstream)), and `https://` upstreams
    /// have authorities to trust. Its client spawns connection tasks on the
    /// tokio runtime when used.
    ///
    /// # Errors
    ///
    /// [`ConfigError::UnsupportedScheme`] (e.g. `https://` without feature
    /// `tls`), [`ConfigError::NoTrustedRoots`], [`ConfigError::Tls`]. With
    /// [`client`](Self::client), none: the user's connector decides.
    pub fn try_build(self) -> Result<ReverseProxy, ConfigError> {
        let client = match &self.client {
            Some(c) => c.with_response_timeout(self.response_timeout),
            None => {
                let values = self.endpoints.values();
                for uri in &values {
                    super::client::check_scheme(uri)?;
                }
                #[cfg(feature = "tls")]
                {
                    let roots = self.tls_roots.clone().unwrap_or_else(TlsRoots::system);
                    if roots.is_empty() && values.iter().any(|u| u.scheme_str() == Some("https")) {
                        return Err(ConfigError::NoTrustedRoots);
                    }
                    Forward::builtin(
                        self.connect_timeout,
                        self.response_timeout,
                        self.pool_idle(),
                        &roots,
                    )?
                }
                #[cfg(not(feature = "tls"))]
                Forward::builtin(
                    self.connect_timeout,
                    self.response_timeout,
                    self.pool_idle(),
                )?
            }
        };
        Ok(self.finish(client))
    }

    /// Builds the proxy without the checks of [`try_build`](Self::try_build):
    /// an upstream this build cannot speak then fails each request sent to
    /// it (`502`, counted against the endpoint), and with no trusted
    /// authority every TLS handshake fails. Prefer `try_build`.
    pub fn build(self) -> ReverseProxy {
        let client = match &self.client {
            Some(c) => c.with_response_timeout(self.response_timeout),
            #[cfg(feature = "tls")]
            None => Forward::builtin(
                self.connect_timeout,
                self.response_timeout,
                self.pool_idle(),
                &self.tls_roots.clone().unwrap_or_else(TlsRoots::system),
            )
            .unwrap_or_else(|_| Forward::new(self.connect_timeout, self.response_timeout)),
            #[cfg(not(feature = "tls"))]
            None => Forward::builtin(
                self.connect_timeout,
                self.response_timeout,
                self.pool_idle(),
            )
            .unwrap_or_else(|_| Forward::new(self.connect_timeout, self.response_timeout)),
        };
        self.finish(client)
    }

    /// How long the built-in pool keeps a connection idle.
    fn pool_idle(&self) -> Duration {
        self.pool_idle_timeout.min(self.idle_timeout)
    }

    fn finish(self, client: Forward) -> ReverseProxy {
        let config = crate::balance::Config {
            key: self.key,
            retries: self.retries,
        };
        let balance = Balance::with_connect(
            self.endpoints,
            ToUpstream {
                client: Guard {
                    client: client.clone(),
                    idle_timeout: self.idle_timeout,
                    base: None,
                },
            },
            config,
        );
        ReverseProxy {
            balance,
            client,
            settings: Arc::new(Settings {
                fwd: Forwarding::new()
                    .preserve_host(self.preserve_host)
                    .trusted_proxies(self.trusted)
                    .headers(self.forwarding)
                    .https(self.https),
                header_limits: self.header_limits,
                replay_buffer: self.replay_buffer,
                buffer_timeout: self.response_timeout,
                idle_timeout: self.idle_timeout,
            }),
        }
    }
}

/// A balancing reverse proxy as one service; see the [module docs](crate::proxy).
#[derive(Clone)]
pub struct ReverseProxy {
    balance: Balance<Uri, ToUpstream>,
    // The same client the balancer forwards with, for health checks.
    client: Forward,
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
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            client: None,
            #[cfg(feature = "tls")]
            tls_roots: None,
        }
    }

    /// An HTTP check for [`ActiveProbes`](crate::balance::ActiveProbes)
    /// over this proxy's own client (its transports, CA bundle, or the
    /// user's client): `GET base + path`, healthy on a `2xx` or `3xx`.
    ///
    /// ```no_run
    /// # use tower_ssr::balance::{ActiveProbes, Endpoints, RoundRobin};
    /// # use tower_ssr::proxy::ReverseProxy;
    /// # async fn f(upstreams: Endpoints<http::Uri>) -> Result<(), tower_ssr::proxy::ConfigError> {
    /// let proxy = ReverseProxy::builder(upstreams.clone()).try_build()?;
    /// let _probes = ActiveProbes::new().spawn(&upstreams, proxy.http_check("/healthz"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn http_check(
        &self,
        path: &str,
    ) -> impl Fn(Uri) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync + 'static {
        self.client.check(path)
    }

    /// The upstream set, to change it at run time or read its stats.
    #[must_use]
    pub fn endpoints(&self) -> &Endpoints<Uri> {
        self.balance.endpoints()
    }
}

/// The body of the proxy's responses.
pub type ProxyResponseBody = ResponseBody<UpstreamBody>;

impl<B> Service<Request<B>> for ReverseProxy
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        let (mut parts, body) = req.into_parts();
        let settings = &*self.settings;
        if !settings.header_limits.allows(&parts) {
            return ResponseFuture::ready(status_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ));
        }
        if parts.method == Method::CONNECT {
            // A reverse proxy is no tunnel to a target of the client's
            // choosing (RFC 9110 §9.3.6). Forwarded, the target was
            // rewritten to the upstream's own authority, and an upstream
            // answering 2xx (an SSR fallback route answers every method)
            // told the client its tunnel was up, with nothing behind it.
            // Nothing is forwarded; 501, as for a method not implemented
            // (RFC 9110 §15.6.2).
            return ResponseFuture::ready(status_response(StatusCode::NOT_IMPLEMENTED));
        }
        // Taken before hop-by-hop removal, which drops `Upgrade`.
        let hop = has_hop_by_hop(&parts.headers);
        let upgrade = if hop { upgrade::take(&mut parts) } else { None };
        if let Err(e) = prepare(&mut parts, &settings.fwd, hop) {
            return ResponseFuture::ready(status_response(e.status()));
        }
        if let Some(u) = &upgrade {
            u.restore(&mut parts.headers);
        }
        let body = match into_proxy_body(&mut parts, body, settings) {
            Ok(body) => body,
            Err(body) => {
                // A small body of an idempotent request is read whole
                // first, so that a retry can send it again.
                let mut this = self.clone();
                return ResponseFuture::boxed(async move {
                    let body = match buffer_body(body, this.settings.buffer_timeout).await {
                        Ok(b) => b,
                        Err(status) => return Ok(status_response(status)),
                    };
                    this.forward(parts, body, upgrade).await
                });
            }
        };
        self.forward(parts, body, upgrade)
    }
}

impl ReverseProxy {
    /// Hands the prepared request to the balancer.
    fn forward(
        &mut self,
        mut parts: http::request::Parts,
        body: ProxyBody,
        upgrade: Option<upgrade::Requested>,
    ) -> ResponseFuture {
        // The key reads the request as prepared (forwarding headers of
        // untrusted peers removed). The client's address, which only
        // `prepare_request` and the key read, moves to the response: the
        // upstream never sees extensions, and the balancer's copy of the
        // request for retries then clones no extension map.
        let key = self.balance.key_of(&parts);
        let extensions = client_addr_for_response(&mut parts.extensions);
        let req = Request::from_parts(parts, body);
        let fut = self.balance.call_with_key(req, key, extensions);
        ResponseFuture::forwarding(fut, upgrade, self.settings.idle_timeout)
    }
}

/// Takes [`ClientAddr`](crate::balance::ClientAddr) out of a request's
/// extensions, as the start of the response's. When it is all they hold
/// (as [`serve`](super::serve) makes them) the map itself moves: one map
/// per request instead of one dropped here and another made for the
/// response's [`Upstream`](crate::balance::Upstream) (about 700
/// instructions).
fn client_addr_for_response(ext: &mut http::Extensions) -> http::Extensions {
    if ext.len() == 1 && ext.get::<crate::balance::ClientAddr>().is_some() {
        return std::mem::take(ext);
    }
    let mut response = http::Extensions::new();
    if let Some(addr) = ext.remove::<crate::balance::ClientAddr>() {
        response.insert(addr);
    }
    response
}

pub(super) fn status_response(status: StatusCode) -> Response<ProxyResponseBody> {
    let mut res = Response::new(ResponseBody::unavailable());
    *res.status_mut() = status;
    res
}

/// The request body as forwarded, or back as it came when it must be read
/// whole first ([`buffer_body`]).
fn into_proxy_body<B>(
    parts: &mut http::request::Parts,
    body: B,
    settings: &Settings,
) -> Result<ProxyBody, B>
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
        if len.is_none() && matches!(parts.method, Method::GET | Method::HEAD) {
            // The client's `Transfer-Encoding` went with the hop-by-hop
            // fields, and hyper's client sends a GET or HEAD body of
            // unknown length as none at all (it assumes they have none):
            // the body was dropped. The message must reach the upstream
            // as it came (RFC 9110 §9.3.1 gives it no meaning, but a proxy
            // does not decide that): chunked, asked for explicitly.
            // hyper's HTTP/2 client removes the field again.
            parts.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        return Ok(ProxyBody::stream(body));
    }
    Err(body)
}

/// Reads a small request body whole, so a retry can replay it.
async fn buffer_body<B>(body: B, timeout: Duration) -> Result<ProxyBody, StatusCode>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // A client that announces a small body and then stalls must not hold
    // the request forever.
    match tokio::time::timeout(timeout, body.collect()).await {
        Ok(Ok(collected)) => Ok(ProxyBody::full(collected.to_bytes())),
        Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
}
