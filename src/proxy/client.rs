//! The leaf client that sends a prepared request to one upstream, and the
//! transports under it: TCP (`http://`), TLS (`https://`, feature `tls`),
//! cleartext HTTP/2 with prior knowledge (`h2c://`), Unix domain sockets
//! (`unix:/PATH`), or a hyper-util client of the user's own.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connect, Connected, Connection, HttpConnector};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower_service::Service;

use super::body::BodyWatch;
use super::future::ForwardFuture;
use super::pool::{Kind, Pool, PoolFuture};
use super::target::origin_target;
#[cfg(feature = "tls")]
use super::TlsRoots;
use super::{BoxError, ConfigError, ProxyBody, ProxyError};

/// Sends one request on some pooled client: type erasure over the
/// connector, so that [`Forward`] (and the proxy) stay one type whatever
/// client the user brings. The request's URI is absolute, or `base` names
/// the upstream (`SCHEME://AUTHORITY[/BASE]`) and the URI is the client's
/// target (origin-form, or absolute-form whose authority was already
/// checked: `authority::normalize_host`), as the balancer hands it over.
/// With `timeout`, the response headers must come within it (from now).
trait Transport: Send + Sync + 'static {
    fn request(
        &self,
        base: Option<&Uri>,
        req: Request<ProxyBody>,
        timeout: Option<Duration>,
    ) -> Sending;
}

impl<C> Transport for Client<C, ProxyBody>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    fn request(
        &self,
        base: Option<&Uri>,
        mut req: Request<ProxyBody>,
        timeout: Option<Duration>,
    ) -> Sending {
        if let Some(base) = base {
            // hyper-util's client picks the connection by the URI.
            match crate::balance::rewrite_uri_checked(base, req.uri()) {
                Some(uri) => *req.uri_mut() = uri,
                None => return Sending::failed(SendError::target_too_long()),
            }
        }
        let fut = Client::request(self, req);
        match timeout {
            Some(t) => Sending::LegacyTimed {
                fut: tokio::time::timeout(t, fut),
            },
            None => Sending::Legacy { fut },
        }
    }
}

/// The built-in transports: the crate's pool over [`Connector`] for
/// `http://`, `https://` and `unix:` upstreams (HTTP/1.1, or HTTP/2 when
/// TLS ALPN picks it; see `pool`) and `h2c://` ones (HTTP/2 with prior
/// knowledge, RFC 9113 §3.3).
///
/// h2c went through hyper-util's client until `:authority` had to carry
/// the client's `Host` (RFC 9113 §8.3.1): that client picks the connection
/// by the URI's authority, so the URI could not name the upstream and the
/// client's host at once; the pool picks it by the upstream apart from
/// the URI.
struct Builtin {
    pool: Pool,
}

impl Transport for Builtin {
    fn request(
        &self,
        base: Option<&Uri>,
        mut req: Request<ProxyBody>,
        timeout: Option<Duration>,
    ) -> Sending {
        let upstream = base.unwrap_or(req.uri());
        let kind = match upstream.scheme_str() {
            Some(UNIX) => Kind::Unix,
            Some("https") => Kind::Tls,
            Some(H2C) => Kind::H2c,
            // No scheme: the pool refuses a URI that is not absolute.
            Some("http") | None => Kind::Tcp,
            Some(other) => {
                let e = SendError::connect(format!("unsupported scheme {other}").into());
                return Sending::failed(e);
            }
        };
        match base {
            Some(base) => {
                // The target stays as the client sent it, unless the base
                // has a path or the client used the absolute form: no
                // absolute URI made per request and undone in the pool
                // (about 600 instructions).
                match origin_target(base, req.uri()) {
                    Ok(Some(target)) => *req.uri_mut() = target,
                    Ok(None) => {}
                    // Never the client's target as it is: that would
                    // leave the base path.
                    Err(e) => return Sending::failed(e),
                }
                Sending::Pool {
                    fut: self.pool.request_to(kind, base, req, timeout),
                }
            }
            None => Sending::Pool {
                fut: self.pool.request(kind, req, timeout),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// A request on its way, by either kind of client; its error says
    /// whether connecting failed or time ran out.
    #[project = SendingProj]
    pub(super) enum Sending {
        // hyper-util's client (boxed inside), without or with a timeout.
        Legacy { fut: ResponseFuture },
        LegacyTimed { #[pin] fut: tokio::time::Timeout<ResponseFuture> },
        // The lean pool (boxed; it keeps the time itself).
        Pool { fut: PoolFuture },
    }
}

impl Sending {
    /// A request that fails before it leaves.
    fn failed(e: SendError) -> Self {
        Sending::Pool {
            fut: Box::pin(std::future::ready(Err(e))),
        }
    }
}

impl Future for Sending {
    type Output = Result<Response<Incoming>, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let legacy = |e: hyper_util::client::legacy::Error| SendError {
            kind: if e.is_connect() {
                Failure::Connect
            } else {
                Failure::Upstream
            },
            error: Box::new(e),
        };
        match self.project() {
            SendingProj::Legacy { fut } => Pin::new(fut).poll(cx).map_err(legacy),
            SendingProj::LegacyTimed { fut } => fut.poll(cx).map(|r| match r {
                Ok(r) => r.map_err(legacy),
                Err(_) => Err(SendError::timeout()),
            }),
            SendingProj::Pool { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// Why a request got no response: connecting failed, the exchange did, or
/// the response headers did not come in time.
#[derive(Debug)]
pub(super) struct SendError {
    kind: Failure,
    error: BoxError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Connect,
    Upstream,
    Timeout,
    // The client's target does not fit under the upstream's base path.
    TargetTooLong,
}

impl SendError {
    pub(super) fn connect(error: BoxError) -> Self {
        SendError {
            kind: Failure::Connect,
            error,
        }
    }

    pub(super) fn upstream(error: BoxError) -> Self {
        SendError {
            kind: Failure::Upstream,
            error,
        }
    }

    pub(super) fn target_too_long() -> Self {
        SendError {
            kind: Failure::TargetTooLong,
            error: "the request target is too long under the upstream's base path".into(),
        }
    }

    pub(super) fn timeout() -> Self {
        SendError {
            kind: Failure::Timeout,
            error: "the upstream did not answer in time".into(),
        }
    }

    /// As the proxy reports it (the client's own faults aside).
    pub(super) fn into_proxy_error(self) -> ProxyError {
        match self.kind {
            Failure::Connect => ProxyError::Connect(self.error),
            Failure::Upstream => ProxyError::Upstream(self.error),
            Failure::Timeout => ProxyError::Timeout,
            Failure::TargetTooLong => ProxyError::TargetTooLong,
        }
    }

    pub(super) fn into_inner(self) -> BoxError {
        self.error
    }
}

const H2C: &str = "h2c";
const UNIX: &str = "unix";

/// Parses an upstream as `examples/proxy` spells it, into the base URI an
/// [`Endpoints`](crate::balance::Endpoints) set holds:
///
/// | spelling | transport |
/// |---|---|
/// | `http://HOST[:PORT][/BASE]` | HTTP/1.1 over TCP |
/// | `https://HOST[:PORT][/BASE]` | TLS (feature `tls`): ALPN `h2` then `http/1.1`, SNI from HOST |
/// | `h2c://HOST:PORT[/BASE]` | cleartext HTTP/2 with prior knowledge (RFC 9113 §3.3) |
/// | `unix:/PATH` | HTTP/1.1 over a Unix domain socket (Unix only) |
///
/// A Unix socket's path is carried hex-encoded in the URI's host
/// (`unix://2f746d70…`), as hyperlocal does, since a path is not a host.
///
/// # Errors
///
/// [`ConfigError::InvalidUpstream`] for a malformed value,
/// [`ConfigError::UnsupportedScheme`] for a scheme this build cannot
/// speak (`https` without feature `tls`, `unix` off Unix, anything else).
pub fn upstream(s: &str) -> Result<Uri, ConfigError> {
    if let Some(path) = s.strip_prefix("unix:") {
        if !cfg!(unix) {
            return Err(ConfigError::UnsupportedScheme(s.to_owned()));
        }
        if !path.starts_with('/') || path.len() > 4096 {
            return Err(ConfigError::InvalidUpstream(format!(
                "{s}: expected unix:/ABSOLUTE/PATH"
            )));
        }
        let hex: String = path.bytes().map(|b| format!("{b:02x}")).collect();
        return Uri::builder()
            .scheme(UNIX)
            .authority(hex.as_str())
            .path_and_query("/")
            .build()
            .map_err(|e| ConfigError::InvalidUpstream(format!("{s}: {e}")));
    }
    let uri: Uri = s
        .parse()
        .map_err(|e| ConfigError::InvalidUpstream(format!("{s}: {e}")))?;
    if uri.authority().is_none() {
        return Err(ConfigError::InvalidUpstream(format!(
            "{s}: expected SCHEME://HOST:PORT"
        )));
    }
    check_scheme(&uri)?;
    if uri.scheme_str() == Some(H2C) && uri.port().is_none() {
        return Err(ConfigError::InvalidUpstream(format!(
            "{s}: h2c needs a port"
        )));
    }
    Ok(uri)
}

/// Whether the built-in transports speak this base URI's scheme.
pub(super) fn check_scheme(uri: &Uri) -> Result<(), ConfigError> {
    match uri.scheme_str() {
        Some("http") | Some(H2C) => Ok(()),
        Some("https") if cfg!(feature = "tls") => Ok(()),
        Some(UNIX) if cfg!(unix) => Ok(()),
        _ => Err(ConfigError::UnsupportedScheme(uri.to_string())),
    }
}

/// The socket path of a `unix://HEX` base URI.
fn unix_path(authority: Option<&Authority>) -> Option<std::path::PathBuf> {
    let hex = authority?.host().as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = hex
        .chunks(2)
        .map(|c| {
            let s = std::str::from_utf8(c).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect::<Option<Vec<u8>>>()?;
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        Some(std::path::PathBuf::from(std::ffi::OsString::from_vec(
            bytes,
        )))
    }
    #[cfg(not(unix))]
    {
        String::from_utf8(bytes).ok().map(std::path::PathBuf::from)
    }
}

#[cfg(feature = "tls")]
type TcpConnector = hyper_rustls::HttpsConnector<HttpConnector>;
#[cfg(feature = "tls")]
type TcpIo = hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
#[cfg(not(feature = "tls"))]
type TcpConnector = HttpConnector;
#[cfg(not(feature = "tls"))]
type TcpIo = TokioIo<tokio::net::TcpStream>;

/// The built-in connector: TCP (with TLS for `https`) or a Unix socket,
/// by the URI's scheme.
#[derive(Clone)]
pub(super) struct Connector {
    tcp: TcpConnector,
    connect_timeout: Duration,
}

impl Service<Uri> for Connector {
    type Response = Io;
    type Error = BoxError;
    // Boxed: once per new connection, never per request.
    type Future = Pin<Box<dyn Future<Output = Result<Io, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::<BoxError>::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        if dst.scheme_str() == Some(UNIX) {
            let path = unix_path(dst.authority());
            let timeout = self.connect_timeout;
            return Box::pin(async move {
                let path = path.ok_or("invalid unix socket upstream")?;
                connect_unix(path, timeout).await
            });
        }
        let fut = self.tcp.call(dst);
        // A conversion only without feature `tls` (hyper-rustls' error is
        // already a BoxError).
        #[allow(clippy::useless_conversion)]
        Box::pin(async move { Ok(Io::Tcp(fut.await.map_err(Into::<BoxError>::into)?)) })
    }
}

#[cfg(unix)]
async fn connect_unix(path: std::path::PathBuf, timeout: Duration) -> Result<Io, BoxError> {
    match tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path)).await {
        Ok(Ok(s)) => Ok(Io::Unix(TokioIo::new(s))),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(Box::new(io::Error::new(
            io::ErrorKind::TimedOut,
            "unix socket connect timed out",
        ))),
    }
}

#[cfg(not(unix))]
async fn connect_unix(_: std::path::PathBuf, _: Duration) -> Result<Io, BoxError> {
    Err("unix sockets are not supported on this platform".into())
}

/// A connection made by [`Connector`].
// The TLS variant is large; it is made once per connection and moved once
// into hyper's connection task, where boxing would cost an indirection on
// every read and write.
#[allow(clippy::large_enum_variant)]
pub(super) enum Io {
    Tcp(TcpIo),
    #[cfg(unix)]
    Unix(TokioIo<tokio::net::UnixStream>),
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Tcp($io) => {
                let $io = Pin::new($io);
                $e
            }
            #[cfg(unix)]
            Io::Unix($io) => {
                let $io = Pin::new($io);
                $e
            }
        }
    };
}

impl Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(io) => io.is_write_vectored(),
            #[cfg(unix)]
            Io::Unix(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }
}

impl Connection for Io {
    fn connected(&self) -> Connected {
        match self {
            Io::Tcp(io) => io.connected(),
            #[cfg(unix)]
            Io::Unix(_) => Connected::new(),
        }
    }
}

/// The leaf client: a pooled hyper-util client (the built-in transports,
/// or the user's own) with a timeout on response headers. Requests must
/// carry an absolute URI ([`BalanceLayer`](crate::balance::BalanceLayer)
/// rewrites them to one).
#[derive(Clone)]
pub struct Forward {
    client: Arc<dyn Transport>,
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
    /// The built-in transports (`http`, `h2c`, `unix`, and `https` with
    /// feature `tls` trusting the system's roots) with these timeouts, and
    /// [`DEFAULT_POOL_IDLE_TIMEOUT`](super::DEFAULT_POOL_IDLE_TIMEOUT) (3 s)
    /// before an idle pooled connection closes.
    ///
    /// A failure to read the system's roots leaves `https` upstreams with
    /// none to trust (every TLS handshake then fails); use
    /// [`ProxyBuilder::try_build`](super::ProxyBuilder::try_build) to have
    /// that reported.
    #[must_use]
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        #[cfg(feature = "tls")]
        let built = Self::builtin(
            connect_timeout,
            response_timeout,
            super::DEFAULT_POOL_IDLE_TIMEOUT,
            &TlsRoots::system(),
        );
        #[cfg(not(feature = "tls"))]
        let built = Self::builtin(
            connect_timeout,
            response_timeout,
            super::DEFAULT_POOL_IDLE_TIMEOUT,
        );
        built.unwrap_or_else(|_| {
            // rustls refused its own safe defaults (it does not with the
            // ring provider): plain HTTP only, rather than a panic.
            let client = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(super::DEFAULT_POOL_IDLE_TIMEOUT)
                .build(http_connector(connect_timeout));
            Self::with_client(client, response_timeout)
        })
    }

    /// The user's own hyper-util client (its own connector: TLS, DNS,
    /// socket options, proxies, pool settings) with a timeout on response
    /// headers. Its connector decides which schemes it speaks and owns the
    /// connect timeout; HTTP/2 is used where it negotiates it.
    pub fn with_client<C>(client: Client<C, ProxyBody>, response_timeout: Duration) -> Self
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        Forward {
            client: Arc::new(client),
            response_timeout,
        }
    }

    /// The same client with another response timeout.
    pub(super) fn with_response_timeout(&self, response_timeout: Duration) -> Self {
        Forward {
            client: Arc::clone(&self.client),
            response_timeout,
        }
    }

    pub(super) fn builtin(
        connect_timeout: Duration,
        response_timeout: Duration,
        pool_idle: Duration,
        #[cfg(feature = "tls")] roots: &TlsRoots,
    ) -> Result<Self, ConfigError> {
        let http = http_connector(connect_timeout);
        #[cfg(feature = "tls")]
        let tcp = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(roots.client_config()?)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        #[cfg(not(feature = "tls"))]
        let tcp = http;
        Ok(Self::from_parts(
            tcp,
            connect_timeout,
            response_timeout,
            pool_idle,
        ))
    }

    fn from_parts(
        tcp: TcpConnector,
        connect_timeout: Duration,
        response_timeout: Duration,
        pool_idle: Duration,
    ) -> Self {
        let connector = Connector {
            tcp,
            connect_timeout,
        };
        let pool = Pool::new(connector, pool_idle);
        Forward {
            client: Arc::new(Builtin { pool }),
            response_timeout,
        }
    }
}

fn http_connector(connect_timeout: Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    // `https` and `h2c` URIs reach it too (TLS wraps it; h2c is TCP).
    connector.enforce_http(false);
    connector
}

impl Service<Request<ProxyBody>> for Forward {
    type Response = Response<Incoming>;
    type Error = ProxyError;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        self.send(None, req)
    }
}

impl Forward {
    /// [`Service::call`], with the upstream named apart from the request
    /// when `base` is given (see `Transport`).
    pub(super) fn send(&self, base: Option<&Uri>, mut req: Request<ProxyBody>) -> ForwardFuture {
        // hyper-util refuses an HTTP/2 request on an HTTP/1 connection:
        // the version is the hop's, not the message's (RFC 9110 §6.2), and
        // the client picks it per connection (ALPN, h2c, or the user's).
        *req.version_mut() = http::Version::HTTP_11;
        let timeout = self.response_timeout;
        if req.body().kind_is_end_stream() {
            // No body to watch (hyper never polls an empty one): the
            // response timeout starts now, and any failure is upstream's.
            // Not boxed: this is every GET.
            return ForwardFuture::plain(self.client.request(base, req, Some(timeout)));
        }
        let watch = Arc::new(BodyWatch::new());
        req.body_mut().watch = Some(Arc::clone(&watch));
        let fut = self.client.request(base, req, None);
        // Boxed: a request with a body, watched in phases (rarer).
        ForwardFuture::boxed(async move {
            let classify = |e: SendError| {
                if watch.failed.load(Ordering::Acquire) {
                    ProxyError::RequestBody(e.into_inner())
                } else {
                    e.into_proxy_error()
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
    Done(Result<Response<Incoming>, SendError>),
    // The body stalled: the client's fault or the upstream's.
    Stalled(ProxyError),
    // The body has ended (or failed); the response timeout starts.
    Sent,
}

/// An HTTP check for [`ActiveProbes`](crate::balance::ActiveProbes): `GET base +
/// path`, healthy on a `2xx` or `3xx`, over the built-in transports (any
/// upstream spelling of [`upstream`]; `https://` trusts the system's
/// roots). To probe with the proxy's own client (its CA bundle, or a
/// client of your own), use [`ReverseProxy::http_check`](super::ReverseProxy::http_check).
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
    Forward::new(
        super::DEFAULT_CONNECT_TIMEOUT,
        super::DEFAULT_RESPONSE_TIMEOUT,
    )
    .check(path)
}

impl Forward {
    /// An HTTP check over this client; see [`http_check`].
    pub(super) fn check(
        &self,
        path: &str,
    ) -> impl Fn(Uri) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync + 'static {
        let client = Arc::clone(&self.client);
        let path: Arc<str> = Arc::from(if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        });
        move |base: Uri| {
            let client = Arc::clone(&client);
            let target =
                crate::balance::rewrite_uri(&base, &Uri::try_from(&*path).unwrap_or_default());
            Box::pin(async move {
                let Ok(mut req) = Request::get(target).body(ProxyBody::empty()) else {
                    return false;
                };
                if base.scheme_str() == Some(UNIX) {
                    req.headers_mut().insert(
                        http::header::HOST,
                        http::HeaderValue::from_static("localhost"),
                    );
                }
                match client.request(None, req, None).await {
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
}
