//! A lean pool of upstream connections for the built-in transports
//! (`http://`, `https://`, `unix:`), on `hyper::client::conn` (issue 10).
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
//! no spawn, one clock read for the response timeout, which runs on the
//! connection's one timer (a tokio timer registered and removed per
//! request cost about 600 instructions; one request is in flight on an
//! HTTP/1.1 connection at a time). A response body dropped before its end
//! makes hyper close the connection, which then never comes back.
//!
//! Idle connections of one upstream are kept last-in first-out (the most
//! recently used one is the warmest), at most [`MAX_IDLE_PER_HOST`]. One
//! task per pool sweeps the idle lists every quarter of the idle timeout
//! and closes the connections that stayed idle and unused for four sweeps
//! in a row: a connection closes after between 1 and 1¼ timeouts idle,
//! with no clock read and no timer per request. A request sent on a
//! pooled connection that turns out closed before the request was written
//! (hyper hands it back) is sent once more on a new connection, as
//! hyper-util's `retry_canceled_requests` does.
//!
//! When TLS ALPN picks `h2` (RFC 9113 §3.2), or always for `h2c://`
//! (prior knowledge, §3.3), the upstream gets one HTTP/2
//! connection whose sender every request clones (RFC 9113 §9.1: one
//! connection per origin); the sweeper drops it once no request was sent
//! on it for the idle timeout, and hyper closes it after its last stream.
//! Unlike hyper-util, requests that find no HTTP/2 connection yet each
//! connect; the last one made is kept, the others close when done.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Poll;
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

use super::body::Kind as BodyKind;
use super::client::{Connector, SendError};
use super::target::{to_h2_form, to_origin_form};
use super::timer::{ConnSleep, ConnTimer};
use super::ProxyBody;

/// The most idle connections kept per upstream: 128. hyper-util keeps
/// any number; nginx's `keepalive` is per worker for all upstreams. A
/// connection that becomes idle beyond this is closed. An idle HTTP/1.1
/// connection costs the proxy a socket and hyper's buffers (tens of KiB),
/// and the upstream a socket and often a worker's attention.
pub(super) const MAX_IDLE_PER_HOST: usize = 128;

/// Whether an upstream is reached over TCP (`http://`), TLS (`https://`),
/// a Unix socket, or cleartext HTTP/2 with prior knowledge (`h2c://`,
/// RFC 9113 §3.3): the same authority may name several (a socket path is
/// hex-encoded in it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Tcp = 0,
    Unix = 1,
    Tls = 2,
    H2c = 3,
}

impl Kind {
    /// Whether the upstream may speak HTTP/2: TLS when ALPN picks `h2`,
    /// h2c always.
    fn may_h2(self) -> bool {
        matches!(self, Kind::Tls | Kind::H2c)
    }
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
    hosts: Mutex<[Hosts; 4]>,
    idle_timeout: Duration,
    // The idle sweeper runs (started with the first connection, inside the
    // runtime).
    sweeping: AtomicBool,
}

/// Upstreams by authority, spelled exactly: the balancer rewrites every
/// request to its endpoint's base URI, so one upstream is always spelled
/// alike (two spellings of one host would only get a pool each).
/// `Authority`'s own `Hash` and `Eq` go byte by byte, case-insensitively;
/// with SipHash that cost about 1,000 instructions per request. FxHash
/// (the `rustc-hash` crate) over the bytes a word at a time instead: the keys are the upstreams
/// requests are sent to (the balancer's endpoints, under `ReverseProxy`),
/// not a client's choosing, and colliding ones would only slow the
/// lookup.
type Hosts = HashMap<HostKey, Arc<Host>, rustc_hash::FxBuildHasher>;

/// An authority compared and hashed as its exact bytes, looked up by
/// `&str` (`Borrow<str>`, with `str`'s `Hash`).
#[derive(PartialEq, Eq, Hash)]
struct HostKey(Box<str>);

impl std::borrow::Borrow<str> for HostKey {
    fn borrow(&self) -> &str {
        &self.0
    }
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
    // The upstream's HTTP/2 connection, when TLS ALPN picked `h2`: one,
    // multiplexed, shared by every request (RFC 9113 §9.1).
    h2: Mutex<H2>,
}

/// An upstream's HTTP/2 connection and its use, for the sweeper.
#[derive(Default)]
struct H2 {
    tx: Option<http2::SendRequest<ProxyBody>>,
    // Requests sent on it so far, at the last sweep, and sweeps in a row
    // that found none sent since the one before (as `State`'s).
    uses: u64,
    seen: Option<u64>,
    quiet: u8,
}

/// A new connection: HTTP/1.1 (a sender of its own), or HTTP/2 (a clone
/// of the shared sender).
enum Fresh {
    Http1(Arc<Conn>, http1::SendRequest<ProxyBody>),
    Http2(http2::SendRequest<ProxyBody>),
}

/// One connection, shared by the task that drives it and the requests
/// sent on it.
struct Conn {
    state: Mutex<State>,
    // The response timeout of the request in flight on it.
    timer: ConnTimer,
}

struct State {
    // The connection's sender: here while idle or while a request is in
    // flight, taken while a request is handed over, gone for good once the
    // connection is closed.
    tx: Option<http1::SendRequest<ProxyBody>>,
    // In its upstream's idle list (the list may also hold it after it was
    // closed; checkout then finds no sender).
    idle: bool,
    // Checkouts so far: the sweeper tells from it whether the connection
    // was used between two sweeps.
    uses: u64,
    // `uses` at the last sweep, if the connection was idle then.
    seen: Option<u64>,
    // Sweeps in a row that found it idle and unused since the one before.
    quiet: u8,
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
                hosts: Mutex::default(),
                idle_timeout,
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Sends a request with an absolute URI to its upstream; with
    /// `timeout`, its response headers must come within it.
    pub(super) fn request(
        &self,
        kind: Kind,
        req: Request<ProxyBody>,
        timeout: Option<Duration>,
    ) -> PoolFuture {
        match self.inner.host(kind, req.uri()) {
            Ok(host) => self.send(host, req, timeout),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    /// Sends a request to the upstream at `base` (`SCHEME://AUTHORITY`),
    /// its URI the target in origin form; `timeout` as for `request`.
    pub(super) fn request_to(
        &self,
        kind: Kind,
        base: &Uri,
        req: Request<ProxyBody>,
        timeout: Option<Duration>,
    ) -> PoolFuture {
        match self.inner.host(kind, base) {
            Ok(host) => self.send(host, req, timeout),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    /// Sends `req` to `host`, its URI absolute or already in origin form.
    ///
    /// On a pooled HTTP/1.1 connection the request is handed to hyper
    /// before the future is made, so that the future ([`Pooled`]) holds
    /// only hyper's answer and what a second try needs: a few hundred
    /// bytes, where an `async fn` holding every path's state was 1.6 KB,
    /// too big for the allocator's per-thread cache. Its response timeout
    /// runs on the connection's one timer: registering a tokio timer per
    /// request and removing it cost about 600 instructions.
    fn send(
        &self,
        host: Arc<Host>,
        mut req: Request<ProxyBody>,
        timeout: Option<Duration>,
    ) -> PoolFuture {
        let inner = Arc::clone(&self.inner);
        if let Some(tx) = host.h2_sender() {
            return within(timeout, inner.send_h2(host, tx, req));
        }
        let Some((conn, mut tx, rested)) = host.checkout() else {
            return within(timeout, async move { inner.send_fresh(&host, req).await });
        };
        to_origin_form(&mut req, &host.dst);
        // A connection that sat idle may be closed by the upstream's own
        // keep-alive timer just as the request is written to it: an
        // idempotent request is then sent again (RFC 9110 §9.2.2), as
        // nginx's and Go's clients do. Only then is a copy kept: on a busy
        // connection the race does not arise, and the copy would cost
        // every request.
        let spare = if rested { spare(&req) } else { None };
        let deadline = timeout.map(|t| conn.timer.until(tokio::time::Instant::now() + t));
        let answer = tx.try_send_request(req);
        // Back before the response comes, so that the connection's task
        // can pool it once it is ready.
        conn.hand_back(tx, &host);
        Box::pin(Pooled {
            answer,
            deadline,
            retry: Some(Retry {
                pool: inner,
                host,
                spare,
            }),
            again: None,
        })
    }
}

/// `fut` failing with a timeout once `timeout` (if any) has passed, boxed.
fn within<F>(timeout: Option<Duration>, fut: F) -> PoolFuture
where
    F: Future<Output = Result<Response<Incoming>, SendError>> + Send + 'static,
{
    match timeout {
        None => Box::pin(fut),
        Some(t) => Box::pin(async move {
            tokio::time::timeout(t, fut)
                .await
                .unwrap_or_else(|_| Err(SendError::timeout()))
        }),
    }
}

pin_project_lite::pin_project! {
    /// A request handed to hyper on a pooled HTTP/1.1 connection: hyper's
    /// answer, the response timeout on the connection's timer, and what a
    /// second try on a new connection needs (see `Inner::after_failure`).
    struct Pooled<F> {
        #[pin]
        answer: F,
        deadline: Option<ConnSleep>,
        retry: Option<Retry>,
        // The second try, once the answer was a failure that allows one.
        again: Option<PoolFuture>,
    }
}

struct Retry {
    pool: Arc<Inner>,
    host: Arc<Host>,
    spare: Option<Box<Request<ProxyBody>>>,
}

impl<F> Future for Pooled<F>
where
    F: Future<Output = Result<Response<Incoming>, TrySendError<Request<ProxyBody>>>>,
{
    type Output = Result<Response<Incoming>, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(again) = this.again.as_mut() {
            if let Poll::Ready(r) = again.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
        } else {
            match this.answer.as_mut().poll(cx) {
                Poll::Ready(Ok(res)) => return Poll::Ready(Ok(res)),
                Poll::Ready(Err(e)) => {
                    let Some(Retry { pool, host, spare }) = this.retry.take() else {
                        return Poll::Ready(Err(SendError::upstream(e.into_error().into())));
                    };
                    let mut again = pool.after_failure(&host, e, spare, closed_under);
                    let polled = again.as_mut().poll(cx);
                    *this.again = Some(again);
                    if let Poll::Ready(r) = polled {
                        return Poll::Ready(r);
                    }
                }
                Poll::Pending => {}
            }
        }
        // The second try has the same deadline: the client's wait is one.
        if let Some(deadline) = this.deadline.as_mut() {
            if Pin::new(deadline).poll(cx).is_ready() {
                return Poll::Ready(Err(SendError::timeout()));
            }
        }
        Poll::Pending
    }
}

impl Inner {
    /// Sends on the upstream's shared HTTP/2 connection.
    async fn send_h2(
        self: Arc<Self>,
        host: Arc<Host>,
        mut tx: http2::SendRequest<ProxyBody>,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, SendError> {
        to_h2_form(&mut req, &host.dst);
        let spare = spare(&req);
        let again = match tx.try_send_request(req).await {
            Ok(res) => return Ok(res),
            Err(e) => self.after_failure(&host, e, spare, refused),
        };
        again.await
    }

    /// What follows a request that failed on a pooled connection (or the
    /// shared HTTP/2 one): one more try on a new connection when hyper
    /// hands the request back (it was never written: the connection
    /// closed while idle), or when the failure says it was not processed
    /// (`unprocessed`) and a copy was kept; else the error.
    fn after_failure(
        self: &Arc<Self>,
        host: &Arc<Host>,
        mut e: TrySendError<Request<ProxyBody>>,
        spare: Option<Box<Request<ProxyBody>>>,
        unprocessed: fn(&hyper::Error) -> bool,
    ) -> PoolFuture {
        let again = match (e.take_message(), spare) {
            (Some(req), _) => req,
            (None, Some(copy)) if unprocessed(e.error()) => *copy,
            (None, _) => {
                return Box::pin(std::future::ready(Err(SendError::upstream(
                    e.into_error().into(),
                ))))
            }
        };
        let (pool, host) = (Arc::clone(self), Arc::clone(host));
        // Boxed apart: the handshakes' states (TLS, HTTP/2) are
        // kilobytes; a connect is rare.
        Box::pin(async move { pool.send_fresh(&host, again).await })
    }

    /// Sends on a new connection (HTTP/1.1 or HTTP/2, as ALPN picks).
    async fn send_fresh(
        self: &Arc<Self>,
        host: &Arc<Host>,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let fresh = self.connect(host).await?;
        let sent = match fresh {
            Fresh::Http1(conn, tx) => {
                to_origin_form(&mut req, &host.dst);
                send_on(host, &conn, tx, req).await
            }
            Fresh::Http2(mut tx) => {
                to_h2_form(&mut req, &host.dst);
                tx.try_send_request(req).await
            }
        };
        sent.map_err(|e| SendError::upstream(e.into_error().into()))
    }

    /// The upstream of an absolute URI, made on first use.
    fn host(&self, kind: Kind, uri: &Uri) -> Result<Arc<Host>, SendError> {
        // On the wire h2c's scheme is `http` (`:scheme`, RFC 9113 §8.3.1);
        // the kind is what makes it HTTP/2.
        let h2c = Scheme::HTTP;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(SendError::upstream(
                "the request URI is not absolute".into(),
            ));
        };
        let mut hosts = lock(&self.hosts);
        let map = &mut hosts[kind as usize];
        if let Some(host) = map.get(authority.as_str()) {
            return Ok(Arc::clone(host));
        }
        let scheme = if kind == Kind::H2c { &h2c } else { scheme };
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
            h2: Mutex::default(),
        });
        map.insert(HostKey(authority.as_str().into()), Arc::clone(&host));
        Ok(host)
    }

    /// A new connection to `host`, its task spawned on tokio. A failure
    /// forgets the upstream unless something else holds it.
    async fn connect(self: &Arc<Self>, host: &Arc<Host>) -> Result<Fresh, SendError> {
        let fresh = self.try_connect(host).await;
        if fresh.is_err() {
            self.forget(host);
        }
        fresh
    }

    async fn try_connect(self: &Arc<Self>, host: &Arc<Host>) -> Result<Fresh, SendError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::connect)?;
        let io = connector
            .call(host.dst.clone())
            .await
            .map_err(SendError::connect)?;
        self.start_sweeper();
        if host.kind == Kind::H2c || io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| SendError::connect(e.into()))?;
            // A connection made meanwhile by another request is replaced:
            // its requests finish, and it closes with its last sender.
            lock(&host.h2).tx = Some(tx.clone());
            let (host, pool) = (Arc::clone(host), Arc::downgrade(self));
            tokio::spawn(async move {
                let _ = conn.await;
                if let Some(pool) = pool.upgrade() {
                    pool.forget(&host);
                }
            });
            return Ok(Fresh::Http2(tx));
        }
        let (tx, conn) = http1::handshake(io)
            .await
            .map_err(|e| SendError::connect(e.into()))?;
        let me = Arc::new(Conn {
            state: Mutex::new(State {
                tx: None,
                idle: false,
                uses: 1,
                seen: None,
                quiet: 0,
            }),
            timer: ConnTimer::new(),
        });
        // Upgrades stay possible (a 101 hands the connection to the
        // tunnel, see `upgrade`), as hyper-util's client keeps them.
        tokio::spawn(drive(
            conn.with_upgrades(),
            Arc::clone(&me),
            Arc::clone(host),
            Arc::downgrade(self),
        ));
        Ok(Fresh::Http1(me, tx))
    }

    /// Spawns the task that closes idle connections, once per pool.
    fn start_sweeper(self: &Arc<Self>) {
        if self.idle_timeout.is_zero() || self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        let period = (self.idle_timeout / 4).max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                // Gone with the last `Forward` (and request) using it.
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep();
            }
        });
    }

    /// Closes the connections idle and unused for four sweeps in a row
    /// (dropping the sender makes hyper close an idle connection), and
    /// drops closed ones from the idle lists.
    fn sweep(&self) {
        let hosts: Vec<Arc<Host>> = lock(&self.hosts)
            .iter()
            .flat_map(|m| m.values().cloned())
            .collect();
        for host in hosts {
            if host.kind.may_h2() {
                lock(&host.h2).sweep();
            }
            lock(&host.idle).retain(|conn| {
                // The other lock order (connection, then list) is the
                // pooling one: a connection being pooled right now is
                // skipped, not waited for.
                match conn.state.try_lock() {
                    Ok(mut st) => !st.idle_too_long(),
                    Err(_) => true,
                }
            });
        }
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
        if Arc::strong_count(host) == 2
            && map
                .get(authority.as_str())
                .is_some_and(|h| Arc::ptr_eq(h, host))
        {
            map.remove(authority.as_str());
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Nothing can use the idle connections any more: dropping their
        // senders makes hyper close them now rather than at their timeout.
        // Their tasks see the pool gone and pool nothing more.
        let hosts = std::mem::take(&mut *lock(&self.hosts));
        for host in hosts.iter().flat_map(HashMap::values) {
            // Taken out first: a connection's lock is never taken under
            // its list's (the pooling order is the other way round).
            let idle = std::mem::take(&mut *lock(&host.idle));
            for conn in idle {
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
    /// A sender on the upstream's HTTP/2 connection, if it has one open.
    fn h2_sender(&self) -> Option<http2::SendRequest<ProxyBody>> {
        if !self.kind.may_h2() {
            return None;
        }
        let mut h2 = lock(&self.h2);
        match &h2.tx {
            Some(tx) if !tx.is_closed() => {
                let tx = tx.clone();
                h2.uses += 1;
                Some(tx)
            }
            Some(_) => {
                h2.tx = None;
                None
            }
            None => None,
        }
    }

    /// The most recently used idle connection that is still open, its
    /// sender (ready: it was pooled only once hyper wanted a request), and
    /// whether it rested: idle since before the last sweep (no clock is
    /// read; a connection in steady use never has).
    fn checkout(&self) -> Option<(Arc<Conn>, http1::SendRequest<ProxyBody>, bool)> {
        loop {
            // The list's lock is released before the connection's: the
            // connection's task takes them the other way round.
            let conn = lock(&self.idle).pop()?;
            let (tx, rested) = {
                let mut st = lock(&conn.state);
                st.idle = false;
                let rested = st.seen == Some(st.uses);
                st.uses += 1;
                (st.tx.take(), rested)
            };
            match tx {
                Some(tx) if !tx.is_closed() => return Some((conn, tx, rested)),
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
        self.pool_if_ready(&mut st, host, true);
    }

    /// After each poll of the connection: pools it if hyper now wants the
    /// next request. `false` when it is to close instead (no room, or the
    /// pool is gone: `keep` is false).
    fn settle(self: &Arc<Self>, host: &Host, keep: bool) -> bool {
        let mut st = lock(&self.state);
        self.pool_if_ready(&mut st, host, keep)
    }

    fn pool_if_ready(self: &Arc<Self>, st: &mut State, host: &Host, keep: bool) -> bool {
        // `is_ready` turns true only inside a poll of the connection (its
        // dispatcher asks for the next message), so looking after each
        // poll, and once when the sender comes back, misses nothing.
        if st.idle || !st.tx.as_ref().is_some_and(http1::SendRequest::is_ready) {
            return true;
        }
        let mut idle = lock(&host.idle);
        if !keep || idle.len() >= host.max_idle {
            st.tx = None;
            return false;
        }
        st.idle = true;
        idle.push(Arc::clone(self));
        true
    }
}

impl H2 {
    /// At a sweep: drops the sender (hyper then closes the connection once
    /// its last request is done) when no request was sent on it for four
    /// sweeps in a row, or it is closed.
    fn sweep(&mut self) {
        let Some(tx) = &self.tx else { return };
        if tx.is_closed() {
            self.tx = None;
            return;
        }
        if self.seen == Some(self.uses) {
            self.quiet += 1;
        } else {
            self.quiet = 0;
        }
        self.seen = Some(self.uses);
        if self.quiet >= 4 {
            self.tx = None;
            self.seen = None;
            self.quiet = 0;
        }
    }
}

impl State {
    /// At a sweep of an idle connection: whether it has now been idle and
    /// unused for four sweeps in a row, or is closed. If so its sender is
    /// dropped (under the lock, so no checkout can take it any more).
    fn idle_too_long(&mut self) -> bool {
        if !self.idle || self.tx.as_ref().map_or(true, http1::SendRequest::is_closed) {
            self.tx = None;
            return true;
        }
        if self.seen == Some(self.uses) {
            self.quiet += 1;
        } else {
            self.quiet = 0;
        }
        self.seen = Some(self.uses);
        if self.quiet >= 4 {
            self.tx = None;
            return true;
        }
        false
    }
}

/// A connection's task: drives hyper's connection, pools it whenever it is
/// ready for the next request, and forgets it once closed.
async fn drive<C>(conn: C, me: Arc<Conn>, host: Arc<Host>, pool: Weak<Inner>)
where
    C: Future<Output = hyper::Result<()>>,
{
    let mut conn = pin!(conn);
    poll_fn(|cx| {
        // Closed, failed, or handed over to an upgrade: done either way
        // (errors reach the request that was in flight, if any).
        if conn.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if !me.settle(&host, pool.strong_count() > 0) {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
    lock(&me.state).tx = None;
    if let Some(pool) = pool.upgrade() {
        pool.forget(&host);
    }
}

/// A copy of an idempotent request whose body is in memory (RFC 9110
/// §9.2.2: it may be sent again), for a stream the upstream refuses
/// (HTTP/2) or a rested connection closed under it (HTTP/1.1). Boxed: it
/// is held across the send, and the send's future, boxed per request,
/// would otherwise grow by a whole request for every request.
fn spare(req: &Request<ProxyBody>) -> Option<Box<Request<ProxyBody>>> {
    if !crate::balance::is_idempotent(req.method()) {
        return None;
    }
    let BodyKind::Full(bytes) = &req.body().kind else {
        return None;
    };
    let mut copy = Request::new(ProxyBody {
        kind: BodyKind::Full(bytes.clone()),
        watch: req.body().watch.clone(),
    });
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(Box::new(copy))
}

/// Whether an HTTP/1.1 connection closed under a request before any of
/// the response came: hyper's "connection closed before message
/// completed", or a reset or broken pipe while writing or reading.
fn closed_under(e: &hyper::Error) -> bool {
    e.is_incomplete_message()
        || cause::<std::io::Error>(e).is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            )
        })
}

/// Whether the upstream closed a stream without processing it: a
/// `REFUSED_STREAM` reset, or a `GOAWAY` whose last stream ID is below it
/// (RFC 9113 §8.7, §6.8: "can be safely retried"). An upstream restarting
/// gracefully sends that `GOAWAY` to the requests sharing its connection;
/// they were answered 502 and counted against it.
fn refused(e: &hyper::Error) -> bool {
    cause::<h2::Error>(e).is_some_and(|h2| {
        h2.is_remote() && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM))
    })
}

/// The first error of type `T` in `e`'s chain of sources.
fn cause<T: std::error::Error + 'static>(e: &hyper::Error) -> Option<&T> {
    std::iter::successors(std::error::Error::source(e), |c| c.source())
        .find_map(|c| c.downcast_ref::<T>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_found_by_their_authority_as_spelled() {
        let mut map = Hosts::default();
        let dst: Uri = "http://a.test:8080/".parse().unwrap();
        map.insert(
            HostKey("a.test:8080".into()),
            Arc::new(Host {
                dst,
                kind: Kind::Tcp,
                idle: Mutex::default(),
                max_idle: MAX_IDLE_PER_HOST,
                h2: Mutex::default(),
            }),
        );
        let uri: Uri = "http://a.test:8080/page".parse().unwrap();
        assert!(map.contains_key(uri.authority().unwrap().as_str()));
        assert!(!map.contains_key("a.test:8081"));
        // Another spelling is another pool, never a wrong one.
        assert!(!map.contains_key("A.test:8080"));
    }
}
