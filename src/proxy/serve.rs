//! A ready accept loop for the proxy (or any service): HTTP/1.1 and h2c on
//! one port, the client's address in every request, upgrades, graceful
//! shutdown.

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tower_service::Service;

use super::shutdown::Shutdown;
use super::timer::ConnTimer;
use super::BoxError;
use crate::balance::ClientAddr;

/// Serves `service` on `listener` until the shutdown signal (if any), then
/// lets connections in progress finish for up to
/// [`grace`](Serve::grace) (default 10 s).
///
/// Each connection speaks HTTP/1.1 or HTTP/2 with prior knowledge (h2c,
/// RFC 9113 §3.3), detected from its first bytes (hyper-util's
/// `server::conn::auto`). Every request carries the socket peer as
/// [`ClientAddr`] in its extensions, so [`ReverseProxy`](super::ReverseProxy)
/// writes `X-Forwarded-For` and [`Key::client_ip`](crate::balance::Key::client_ip)
/// hashes without axum. HTTP/1.1 upgrades (WebSocket) are enabled. HTTP/2
/// extended CONNECT (RFC 8441, WebSocket over HTTP/2) is not supported:
/// such clients fall back to HTTP/1.1.
///
/// Limits: at most 100 header lines and a 128 KiB read buffer per request
/// head (hyper answers `431` beyond), 30 s to receive a request head (also
/// the longest an idle keep-alive connection waits for its next request;
/// see [`idle_timeout`](Serve::idle_timeout)). `TCP_NODELAY` is set.
///
/// Awaiting it yields `Ok(())` after shutdown; errors accepting a
/// connection (out of file descriptors) are skipped, not returned.
///
/// # Example
///
/// ```no_run
/// use tower_ssr::balance::{Endpoints, RoundRobin};
/// use tower_ssr::proxy::{self, ReverseProxy};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let upstreams = Endpoints::new(RoundRobin::new());
/// upstreams.add("r1", proxy::upstream("http://127.0.0.1:9001")?)?;
/// let service = ReverseProxy::builder(upstreams).try_build()?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// proxy::serve(listener, service)
///     .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
///     .await?;
/// # Ok(())
/// # }
/// ```
pub fn serve<S>(listener: TcpListener, service: S) -> Serve<S> {
    Serve {
        listener,
        service,
        shutdown: None,
        grace: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
    }
}

/// The accept loop returned by [`serve`]; await it.
#[must_use = "a Serve does nothing until awaited"]
pub struct Serve<S> {
    listener: TcpListener,
    service: S,
    // Ends the accept loop when it completes; `None` serves forever.
    shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    grace: Duration,
    idle_timeout: Duration,
}

impl<S> fmt::Debug for Serve<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("service", &std::any::type_name::<S>())
            .field("graceful", &self.shutdown.is_some())
            .field("grace", &self.grace)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl<S> Serve<S> {
    /// Stops accepting when `signal` completes (Ctrl-C, SIGTERM, a
    /// channel), then lets connections in progress finish: HTTP/1.1
    /// connections close after their current response, HTTP/2 ones get a
    /// GOAWAY.
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// How long connections in progress may take to finish after the
    /// shutdown signal; the rest are dropped. Default: 10 s.
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }

    /// How long a client has to send a request head, which bounds how long
    /// an idle HTTP/1.1 keep-alive connection stays open; idle HTTP/2
    /// connections are pinged at this interval and closed when a ping goes
    /// unanswered for as long. Default: 30 s. Tunnels have their own idle
    /// timeout ([`ProxyBuilder::idle_timeout`](super::ProxyBuilder::idle_timeout)).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }
}

impl<S, B> IntoFuture for Serve<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = io::Result<()>;
    // Boxed: once per server.
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self))
    }
}

async fn run<S, B>(serve: Serve<S>) -> io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Serve {
        listener,
        service,
        shutdown,
        grace,
        idle_timeout,
    } = serve;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .header_read_timeout(idle_timeout)
        .max_buf_size(128 * 1024);
    // No `.max_headers(100)`: 100 is hyper's own limit, and setting it
    // explicitly makes hyper fill a 100-slot header array on every
    // request (about 1,700 instructions) instead of using an
    // uninitialised one.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(idle_timeout)
        .keep_alive_timeout(idle_timeout);
    let graceful = Shutdown::new();
    let mut shutdown = shutdown.unwrap_or_else(|| Box::pin(std::future::pending()));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    // Out of file descriptors and the like: keep serving.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = service.clone();
                let handler = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    let h2 = req.version() == http::Version::HTTP_2;
                    let mut svc = svc.clone();
                    async move {
                        let res = svc.call(req).await?;
                        Ok::<_, Infallible>(res.map(|body| ServedBody::new(body, h2)))
                    }
                });
                // One timer per connection: hyper's header-read timeout
                // then moves one sleep instead of registering a new one
                // per request head (see `ConnTimer`).
                let mut conn_builder = builder.clone();
                conn_builder.http1().timer(ConnTimer::new());
                let conn = conn_builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), handler)
                    .into_owned();
                let conn = graceful.watch(conn, |c| c.graceful_shutdown());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {}
    }
    Ok(())
}

/// How long an HTTP/2 response body's failure is held back before hyper
/// hears of it: see [`ServedBody`].
const H2_FAILURE_HOLD: Duration = Duration::from_millis(20);

pin_project_lite::pin_project! {
    /// A response body as [`serve`] hands it to hyper. On HTTP/2 a body's
    /// failure reaches hyper [`H2_FAILURE_HOLD`] late.
    ///
    /// hyper's HTTP/2 server answers a failing body with `RST_STREAM`
    /// (RFC 9113 §8.1), and h2 then drops every frame of the stream it
    /// still queues, the `HEADERS` included: those are written by the
    /// connection's task, the body is polled by the stream's, and an
    /// upstream that closed short of its `Content-Length` could reset the
    /// stream before the connection task had run. The client then got a
    /// reset and no status at all (curl: exit 92, status 000), about one
    /// request in five. Held back for a moment, the failure finds the head
    /// and the data before it written; the client sees the status and a
    /// cut-off body, then the reset. (HTTP/1.1 needs no more than the one
    /// poll of `late_error`: its connection writes in the same task.)
    struct ServedBody<B> {
        #[pin]
        inner: B,
        h2: bool,
        held: Option<(BoxError, Pin<Box<tokio::time::Sleep>>)>,
    }
}

impl<B> ServedBody<B> {
    fn new(inner: B, h2: bool) -> Self {
        ServedBody {
            inner,
            h2,
            held: None,
        }
    }
}

impl<B> Body for ServedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        if let Some((_, sleep)) = this.held {
            std::task::ready!(sleep.as_mut().poll(cx));
            let (error, _) = this.held.take().expect("held above");
            return Poll::Ready(Some(Err(error)));
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Err(error))) if *this.h2 => {
                let error = error.into();
                let mut sleep = Box::pin(tokio::time::sleep(H2_FAILURE_HOLD));
                // Registers the wake-up; a zero hold would be ready now.
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(error)));
                }
                *this.held = Some((error, sleep));
                Poll::Pending
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

static WARNED_NO_CLIENT_ADDR: AtomicBool = AtomicBool::new(false);

/// Warns once per process that a request reached the proxy without a
/// client address (no [`ClientAddr`], no axum `ConnectInfo`): forwarding
/// headers then carry no client and `Key::client_ip` has no key.
pub(super) fn warn_no_client_addr() {
    if WARNED_NO_CLIENT_ADDR.swap(true, Ordering::Relaxed) {
        return;
    }
    let msg = "tower-ssr proxy: a request carries no client address, so X-Forwarded-For \
               is not written; serve with tower_ssr::proxy::serve, insert \
               tower_ssr::balance::ClientAddr per connection, or enable the `axum` feature \
               and use into_make_service_with_connect_info";
    #[cfg(feature = "tracing")]
    tracing::warn!("{msg}");
    #[cfg(not(feature = "tracing"))]
    eprintln!("{msg}");
}
