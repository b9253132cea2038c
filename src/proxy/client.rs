//! The leaf client that sends a prepared request to one upstream.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

use super::body::BodyWatch;
use super::{ProxyBody, ProxyError};

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
