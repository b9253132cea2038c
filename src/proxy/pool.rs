//! A lean pool of HTTP/1.1 upstream connections for the built-in
//! transports, on `hyper::client::conn::http1` (issue 10).
//!
//! hyper-util's legacy client, per request, checks a connection out of a
//! pool keyed by scheme and authority while racing a lazy connect, reads
//! the clock twice, copies the connector's `HttpInfo` into the response's
//! extensions, and for HTTP/1.1 spawns a task that waits for the
//! connection to be ready again and puts it back. Here every connection's
//! own task (the one that drives it, spawned anyway) puts it back: after
//! each poll of the connection it checks whether hyper wants the next
//! request, which happens only in that poll (the response read to its
//! end, RFC 9112 §9.3 keep-alive). So per request: one checkout, one send,
//! no spawn, no clock. A response body dropped before its end makes hyper
//! close the connection, which then never comes back.
//!
//! Idle connections of one upstream are kept last-in first-out (the most
//! recently used one is the warmest), at most [`MAX_IDLE_PER_HOST`]. Each
//! connection's task closes it once it has been idle for the pool's idle
//! timeout: its timer ticks every quarter of the timeout, so a connection
//! closes after between 1 and 1¼ timeouts idle, without a clock read per
//! request. A request sent on a pooled connection that turns out closed
//! before the request was written (hyper hands it back) is sent once more
//! on a new connection, as hyper-util's `retry_canceled_requests` does.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Poll;
use std::time::Duration;

use http::uri::{Authority, Parts, PathAndQuery};
use http::{header, HeaderValue, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, TrySendError};
use tower_service::Service;

use super::client::{Connector, SendError};
use super::ProxyBody;

/// The most idle connections kept per upstream: 128. hyper-util keeps
/// any number; nginx's `keepalive` is per worker for all upstreams. A
/// connection that becomes idle beyond this is closed. An idle HTTP/1.1
/// connection costs the proxy a socket and hyper's buffers (tens of KiB),
/// and the upstream a socket and often a worker's attention.
pub(super) const MAX_IDLE_PER_HOST: usize = 128;

/// Whether an upstream is reached over TCP (`http://`) or a Unix socket:
/// the same authority may name both (a socket path is hex-encoded in it).
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Tcp = 0,
    Unix = 1,
}

/// The pool: cheap to clone, shared by every clone of the `Forward` that
/// made it.
#[derive(Clone)]
pub(super) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    // Upstreams by transport, then authority: a lookup borrows the
    // request's authority, no key is built per request.
    hosts: Mutex<[HashMap<Authority, Arc<Host>>; 2]>,
    idle_timeout: Duration,
}

/// One upstream's idle connections.
struct Host {
    // Where its connections go (`SCHEME://AUTHORITY/`), made once.
    dst: Uri,
    kind: Kind,
    // Idle connections, the most recently used last.
    idle: Mutex<Vec<Arc<Conn>>>,
    // MAX_IDLE_PER_HOST, or 0 when the idle timeout is zero (no pooling).
    max_idle: usize,
}

/// One connection, shared by the task that drives it and the requests
/// sent on it.
struct Conn {
    state: Mutex<State>,
}

struct State {
    // The connection's sender: here while idle or while a request is in
    // flight, taken while a request is handed over, gone for good once the
    // connection is closed.
    tx: Option<http1::SendRequest<ProxyBody>>,
    // In its upstream's idle list (the list may also hold it after it was
    // closed; checkout then finds no sender).
    idle: bool,
    // Checkouts so far: the idle timer tells from it whether the
    // connection was used between two ticks.
    uses: u64,
}

/// The response future of a request sent through the pool. Boxed: one
/// allocation per request, as hyper-util's `ResponseFuture` has.
pub(super) type PoolFuture =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, SendError>> + Send>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    /// A pool connecting with `connector`, closing connections idle for
    /// `idle_timeout` (zero: none is kept idle).
    pub(super) fn new(connector: Connector, idle_timeout: Duration) -> Self {
        Pool {
            inner: Arc::new(Inner {
                connector,
                hosts: Mutex::new([HashMap::new(), HashMap::new()]),
                idle_timeout,
            }),
        }
    }

    /// Sends a request with an absolute URI to its upstream over HTTP/1.1.
    pub(super) fn request(&self, kind: Kind, req: Request<ProxyBody>) -> PoolFuture {
        Box::pin(Arc::clone(&self.inner).send(kind, req))
    }
}

impl Inner {
    async fn send(
        self: Arc<Self>,
        kind: Kind,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let host = self.host(kind, req.uri())?;
        set_host(&mut req);
        if req.method() == Method::CONNECT {
            authority_form(req.uri_mut());
        } else {
            origin_form(req.uri_mut());
        }
        if let Some((conn, tx)) = host.checkout() {
            match send_on(&host, &conn, tx, req).await {
                Ok(res) => return Ok(res),
                Err(mut e) => match e.take_message() {
                    // The pooled connection closed before the request was
                    // written (the upstream's keep-alive ended while it
                    // was idle): nothing reached the upstream, so once
                    // more, on a new connection.
                    Some(again) => req = again,
                    None => return Err(SendError::upstream(e.into_error().into())),
                },
            }
        }
        let (conn, tx) = self.connect(&host).await?;
        send_on(&host, &conn, tx, req)
            .await
            .map_err(|e| SendError::upstream(e.into_error().into()))
    }

    /// The upstream of an absolute URI, made on first use.
    fn host(&self, kind: Kind, uri: &Uri) -> Result<Arc<Host>, SendError> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(SendError::upstream(
                "the request URI is not absolute".into(),
            ));
        };
        let mut hosts = lock(&self.hosts);
        let map = &mut hosts[kind as usize];
        if let Some(host) = map.get(authority) {
            return Ok(Arc::clone(host));
        }
        let dst = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(PathAndQuery::from_static("/"))
            .build()
            .map_err(|e| SendError::upstream(e.into()))?;
        let host = Arc::new(Host {
            dst,
            kind,
            idle: Mutex::new(Vec::new()),
            max_idle: if self.idle_timeout.is_zero() {
                0
            } else {
                MAX_IDLE_PER_HOST
            },
        });
        map.insert(authority.clone(), Arc::clone(&host));
        Ok(host)
    }

    /// A new connection to `host`, its task spawned on tokio.
    async fn connect(
        self: &Arc<Self>,
        host: &Arc<Host>,
    ) -> Result<(Arc<Conn>, http1::SendRequest<ProxyBody>), SendError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::connect)?;
        let io = connector
            .call(host.dst.clone())
            .await
            .map_err(SendError::connect)?;
        let (tx, conn) = http1::handshake(io)
            .await
            .map_err(|e| SendError::connect(e.into()))?;
        let me = Arc::new(Conn {
            state: Mutex::new(State {
                tx: None,
                idle: false,
                uses: 1,
            }),
        });
        // Upgrades stay possible (a 101 hands the connection to the
        // tunnel, see `upgrade`), as hyper-util's client keeps them.
        tokio::spawn(drive(
            conn.with_upgrades(),
            Arc::clone(&me),
            Arc::clone(host),
            Arc::downgrade(self),
            self.idle_timeout,
        ));
        Ok((me, tx))
    }

    /// Forgets an upstream whose last connection closed, unless a request
    /// is on its way to it (so that upstreams gone from the balancer do
    /// not stay in the map).
    fn forget(&self, host: &Arc<Host>) {
        let Some(authority) = host.dst.authority() else {
            return;
        };
        let mut hosts = lock(&self.hosts);
        let map = &mut hosts[host.kind as usize];
        // The map's and the caller's: no other connection or request.
        if Arc::strong_count(host) == 2 && map.get(authority).is_some_and(|h| Arc::ptr_eq(h, host))
        {
            map.remove(authority);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Nothing can use the idle connections any more: dropping their
        // senders makes hyper close them now rather than at their timeout.
        let hosts = std::mem::take(&mut *lock(&self.hosts));
        for host in hosts.iter().flat_map(HashMap::values) {
            for conn in lock(&host.idle).drain(..) {
                lock(&conn.state).tx = None;
            }
        }
    }
}

/// Sends on a connection, handing its sender back before the response
/// comes, so that the connection's task can pool it once it is ready.
async fn send_on(
    host: &Host,
    conn: &Arc<Conn>,
    mut tx: http1::SendRequest<ProxyBody>,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, TrySendError<Request<ProxyBody>>> {
    let res = tx.try_send_request(req);
    conn.hand_back(tx, host);
    res.await
}

impl Host {
    /// The most recently used idle connection that is still open, and its
    /// sender (ready: it was pooled only once hyper wanted a request).
    fn checkout(&self) -> Option<(Arc<Conn>, http1::SendRequest<ProxyBody>)> {
        loop {
            // The list's lock is released before the connection's: the
            // connection's task takes them the other way round.
            let conn = lock(&self.idle).pop()?;
            let tx = {
                let mut st = lock(&conn.state);
                st.idle = false;
                st.uses += 1;
                st.tx.take()
            };
            match tx {
                Some(tx) if !tx.is_closed() => return Some((conn, tx)),
                // Closed while idle (by the upstream, or its idle timer).
                _ => continue,
            }
        }
    }
}

impl Conn {
    /// Puts the sender back once a request is on its way.
    fn hand_back(self: &Arc<Self>, tx: http1::SendRequest<ProxyBody>, host: &Host) {
        let mut st = lock(&self.state);
        st.tx = Some(tx);
        // Already ready only if the connection's task got through the
        // whole exchange in the meantime (another thread); it looked
        // before the sender was back, so this is the one look.
        self.pool_if_ready(&mut st, host);
    }

    /// After each poll of the connection: pools it if hyper now wants the
    /// next request. `false` when it is to close instead (no room).
    fn settle(self: &Arc<Self>, host: &Host) -> bool {
        let mut st = lock(&self.state);
        self.pool_if_ready(&mut st, host)
    }

    fn pool_if_ready(self: &Arc<Self>, st: &mut State, host: &Host) -> bool {
        // `is_ready` turns true only inside a poll of the connection (its
        // dispatcher asks for the next message), so looking after each
        // poll, and once when the sender comes back, misses nothing.
        if st.idle || !st.tx.as_ref().is_some_and(http1::SendRequest::is_ready) {
            return true;
        }
        let mut idle = lock(&host.idle);
        if idle.len() >= host.max_idle {
            st.tx = None;
            return false;
        }
        st.idle = true;
        idle.push(Arc::clone(self));
        true
    }

    /// At a tick of the idle timer (every quarter of the idle timeout):
    /// whether the connection has now been idle and unused for four whole
    /// ticks. If so its sender is dropped under the lock, so no checkout
    /// can take it any more. `seen` is the count of checkouts at the last
    /// tick if the connection was idle then.
    fn idle_too_long(&self, seen: &mut Option<u64>, quiet: &mut u32) -> bool {
        let mut st = lock(&self.state);
        if !st.idle {
            *seen = None;
            *quiet = 0;
            return false;
        }
        if *seen == Some(st.uses) {
            *quiet += 1;
        } else {
            *quiet = 0;
        }
        *seen = Some(st.uses);
        if *quiet >= 4 {
            st.tx = None;
            return true;
        }
        false
    }
}

/// A connection's task: drives hyper's connection, pools it whenever it is
/// ready for the next request, closes it when idle too long, and forgets
/// it once closed.
async fn drive<C>(
    conn: C,
    me: Arc<Conn>,
    host: Arc<Host>,
    pool: Weak<Inner>,
    idle_timeout: Duration,
) where
    C: Future<Output = hyper::Result<()>>,
{
    let mut conn = pin!(conn);
    let period = (idle_timeout / 4).max(Duration::from_millis(1));
    // One timer per connection, moved once per tick, never per request.
    let mut tick = pin!(tokio::time::sleep(period));
    let (mut seen, mut quiet) = (None, 0);
    poll_fn(|cx| {
        // Closed, failed, or handed over to an upgrade: done either way
        // (errors reach the request that was in flight, if any).
        if conn.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if !me.settle(&host) {
            return Poll::Ready(());
        }
        while tick.as_mut().poll(cx).is_ready() {
            if me.idle_too_long(&mut seen, &mut quiet) {
                return Poll::Ready(());
            }
            tick.as_mut().reset(tokio::time::Instant::now() + period);
        }
        Poll::Pending
    })
    .await;
    lock(&me.state).tx = None;
    if let Some(pool) = pool.upgrade() {
        pool.forget(&host);
    }
}

/// `Host` from the URI's authority when the request has none (RFC 9112
/// §3.2: every HTTP/1.1 request carries one), as hyper-util does.
fn set_host(req: &mut Request<ProxyBody>) {
    if req.headers().contains_key(header::HOST) {
        return;
    }
    let Some(authority) = req.uri().authority() else {
        return;
    };
    let default_port = match req.uri().scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    let value = match authority.port_u16() {
        Some(port) if Some(port) != default_port => HeaderValue::from_str(authority.as_str()),
        _ => HeaderValue::from_str(authority.host()),
    };
    if let Ok(value) = value {
        req.headers_mut().insert(header::HOST, value);
    }
}

/// The request target as an origin server expects it (RFC 9112 §3.2.1):
/// path and query only.
fn origin_form(uri: &mut Uri) {
    *uri = match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => {
            let mut parts = Parts::default();
            parts.path_and_query = Some(path.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        // `Uri::default()` is `/`.
        _ => Uri::default(),
    };
}

/// A `CONNECT` request's target is the authority alone (RFC 9112 §3.2.3).
fn authority_form(uri: &mut Uri) {
    if let Some(authority) = uri.authority() {
        let mut parts = Parts::default();
        parts.authority = Some(authority.clone());
        *uri = Uri::from_parts(parts).unwrap_or_default();
    }
}
