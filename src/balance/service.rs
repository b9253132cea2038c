use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use tower_service::Service;

use super::body::{InFlight, ResponseBody};
use super::endpoint::{EndpointId, EndpointState, Endpoints, Shared};
use super::future::ResponseFuture;
use super::key::Key;
use super::retry::{Retries, Spare};
use super::strategy::Candidates;

/// How the balancer reaches the endpoint it picked: given the endpoint's
/// value and the request, the service to call and the request to send it.
///
/// [`Direct`] calls the endpoint itself (in-process workers); [`Rewrite`]
/// sends through one HTTP client, with the request target rewritten to the
/// endpoint's base URI.
pub trait Connect<T, B> {
    /// The service that handles one attempt.
    type Service: Service<Request<B>>;

    /// The service for endpoint `target`, and the request as it should be
    /// sent there.
    fn connect(&self, target: &T, req: Request<B>) -> (Self::Service, Request<B>);

    /// Whether `error`, from an attempt on an endpoint, is the endpoint's
    /// fault. Only such errors count against its passive health and move
    /// the request to another endpoint; any other (the client hung up in
    /// the middle of its request body, say) ends the request as it is,
    /// with the endpoint's record untouched. Default: every error is.
    fn is_endpoint_failure(&self, error: &<Self::Service as Service<Request<B>>>::Error) -> bool {
        let _ = error;
        true
    }
}

/// Endpoints are services: each attempt calls a clone of the chosen one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Direct;

impl<S, B> Connect<S, B> for Direct
where
    S: Service<Request<B>> + Clone,
{
    type Service = S;

    fn connect(&self, target: &S, req: Request<B>) -> (S, Request<B>) {
        (target.clone(), req)
    }
}

/// Endpoints are base URIs (`http://10.0.0.5:3000`, or with a path prefix
/// `http://10.0.0.5:3000/app`); every attempt goes through one client
/// service with its target rewritten to the chosen endpoint. The `Host`
/// header is left as the request has it. `OPTIONS *` keeps its
/// asterisk-form target (RFC 9112 §3.2.4), whatever the base path.
#[derive(Debug, Clone)]
pub struct Rewrite<C> {
    client: C,
}

impl<C> Rewrite<C> {
    pub(crate) fn new(client: C) -> Self {
        Rewrite { client }
    }
}

/// The path and query an upstream at `base` gets for the request target
/// `uri`: the base's path, then the target's path and query; the
/// asterisk-form as it is. `None` when the two do not fit in one URI (the
/// request must then not go: without the base path it would leave it).
pub(crate) fn path_under(base: &Uri, uri: &Uri) -> Option<PathAndQuery> {
    // `OPTIONS *` asks about the server as a whole, not a resource: the
    // asterisk-form (RFC 9112 §3.2.4) goes through as is, never under the
    // base path (`/app*` names nothing).
    if uri.path() == "*" && uri.query().is_none() {
        return Some(PathAndQuery::from_static("*"));
    }
    let base_path = base.path().trim_end_matches('/');
    if base_path.is_empty() {
        // A clone shares the bytes: no copy, no second validation.
        return Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
    }
    let req_pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    PathAndQuery::try_from(format!("{base_path}{req_pq}")).ok()
}

/// `base` + [`path_under`] it, or `None` as there.
pub(crate) fn rewrite_uri_checked(base: &Uri, uri: &Uri) -> Option<Uri> {
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(path_under(base, uri)?);
    Uri::from_parts(parts).ok()
}

/// [`rewrite_uri_checked`] for [`Rewrite`], which has no way to fail a
/// request: one whose target does not fit under the base path goes to the
/// base URI itself, never outside it. (The proxy answers it `414`.)
pub(crate) fn rewrite_uri(base: &Uri, uri: &Uri) -> Uri {
    rewrite_uri_checked(base, uri).unwrap_or_else(|| base.clone())
}

impl<C, B> Connect<Uri, B> for Rewrite<C>
where
    C: Service<Request<B>> + Clone,
{
    type Service = C;

    fn connect(&self, base: &Uri, mut req: Request<B>) -> (C, Request<B>) {
        *req.uri_mut() = rewrite_uri(base, req.uri());
        (self.client.clone(), req)
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Config {
    pub(crate) key: Key,
    pub(crate) retries: Retries,
}

/// A load balancer over an [`Endpoints`] set; built by [`Balance::new`] over
/// in-process services, or by [`BalanceLayer`](super::BalanceLayer) over
/// one HTTP client.
///
/// `Clone` (clones share the set, its counters and the retry budget) and
/// always ready: the pick happens in `call`, the chosen endpoint's readiness
/// is driven in the response future, and when no endpoint is eligible the
/// answer is `503 Service Unavailable` at once, never a wait.
///
/// Not `tower::balance::p2c::Balance` (which balances over a `Discover`
/// stream of services and waits for readiness): if you use both, rename
/// one on import, `use tower_ssr::balance::Balance as SsrBalance;`.
pub struct Balance<T, C = Direct> {
    inner: Arc<Inner<T, C>>,
}

/// Everything a call needs, behind one `Arc` so that a call clones one
/// pointer, not three.
pub(crate) struct Inner<T, C> {
    pub(crate) endpoints: Endpoints<T>,
    pub(crate) connect: C,
    pub(crate) config: Config,
}

impl<T, C: Clone> Clone for Inner<T, C> {
    fn clone(&self) -> Self {
        Inner {
            endpoints: self.endpoints.clone(),
            connect: self.connect.clone(),
            config: self.config.clone(),
        }
    }
}

impl<T, C> Clone for Balance<T, C> {
    fn clone(&self) -> Self {
        Balance {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T, C: fmt::Debug> fmt::Debug for Balance<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("endpoints", &self.inner.endpoints)
            .field("connect", &self.inner.connect)
            .field("key", &self.inner.config.key)
            .field("retries", &self.inner.config.retries)
            .finish()
    }
}

impl<S> Balance<S, Direct> {
    /// Balances over the in-process services of `endpoints`.
    ///
    /// With [`Retries::new`], the default of every entry point; turn them
    /// off with `.retries(Retries::none())`.
    #[must_use]
    pub fn new(endpoints: Endpoints<S>) -> Self {
        let config = Config {
            key: Key::none(),
            retries: Retries::new(),
        };
        Balance::with_connect(endpoints, Direct, config)
    }
}

impl<T, C> Balance<T, C> {
    pub(crate) fn with_connect(endpoints: Endpoints<T>, connect: C, config: Config) -> Self {
        Balance {
            inner: Arc::new(Inner {
                endpoints,
                connect,
                config,
            }),
        }
    }

    /// The endpoint set, to add, remove, re-weight or drain endpoints and
    /// read their stats.
    #[must_use]
    pub fn endpoints(&self) -> &Endpoints<T> {
        &self.inner.endpoints
    }
}

impl<T, C: Clone> Balance<T, C> {
    /// What consistent-hashing strategies hash. Default: [`Key::none`].
    #[must_use]
    pub fn key(mut self, key: Key) -> Self {
        Arc::make_mut(&mut self.inner).config.key = key;
        self
    }

    /// When failed requests move to another endpoint. Default:
    /// [`Retries::new`] (for [`Balance::new`], [`BalanceLayer`](super::BalanceLayer)
    /// and the proxy alike).
    #[must_use]
    pub fn retries(mut self, retries: Retries) -> Self {
        Arc::make_mut(&mut self.inner).config.retries = retries;
        self
    }
}

/// One attempt on one endpoint.
pub(crate) struct Attempt {
    // Moves into the response body, or drops with the attempt.
    in_flight: Option<InFlight>,
    // This attempt is the single trial of an ejected endpoint, not decided
    // yet.
    trial: bool,
    // Set on the sampled attempts whose latency is measured (all of them
    // with the `metrics` feature: the latency histogram needs each one).
    started: Option<std::time::Instant>,
    // How long it took to be answered, once it was: read once for both
    // the metrics and the endpoint's latency.
    elapsed: Option<std::time::Duration>,
    // The attempt's `debug` span, closed with the attempt.
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

/// One attempt in this many has its latency measured: reading the clock
/// twice would be the largest cost of a balanced call.
const LATENCY_SAMPLE: u64 = 8;

impl Attempt {
    fn new(state: Arc<EndpointState>, trial: bool) -> Self {
        #[cfg(feature = "tracing")]
        let span = super::upstream::attempt_span(&state);
        let (in_flight, n) = InFlight::start(state);
        let measured = n % LATENCY_SAMPLE == 0 || trial || cfg!(feature = "metrics");
        Attempt {
            in_flight: Some(in_flight),
            trial,
            started: measured.then(std::time::Instant::now),
            elapsed: None,
            #[cfg(feature = "tracing")]
            span,
        }
    }

    /// Reports the attempt's answer (`None`: no response) to metrics and
    /// tracing; `number` counts attempts for the request from 1.
    pub(crate) fn answered(&mut self, number: usize, status: Option<http::StatusCode>) {
        self.elapsed = self.started.map(|s| s.elapsed());
        super::upstream::answered(
            self.state(),
            #[cfg(feature = "tracing")]
            &self.span,
            number,
            status,
            self.elapsed,
        );
    }

    pub(crate) fn state(&self) -> &Arc<EndpointState> {
        // Only `finish` takes it, and it consumes the attempt.
        self.in_flight
            .as_ref()
            .map(InFlight::state)
            .expect("attempt already finished")
    }

    /// Records the outcome for health and stats; gives back the in-flight
    /// count for the response body to hold.
    pub(crate) fn finish<T>(mut self, ok: bool, shared: &Shared<T>) -> Option<InFlight> {
        let in_flight = self.in_flight.take()?;
        let state = in_flight.state();
        if let Some(elapsed) = self.elapsed.or_else(|| self.started.map(|s| s.elapsed())) {
            state.record_latency(elapsed);
        }
        state.record_outcome(ok, self.trial, &shared.health, shared);
        self.trial = false;
        Some(in_flight)
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        // Dropped undecided (the caller hung up): give the trial back, or
        // the endpoint would wait for a verdict that never comes.
        if self.trial {
            if let Some(f) = &self.in_flight {
                f.state().release_trial();
            }
        }
    }
}

/// Picks an endpoint and connects to it, counting the request as in flight.
/// With `spare`, also keeps a replayable copy of the request there when a
/// retry could happen (more than one endpoint). Gives the request back when
/// no endpoint is eligible.
#[allow(clippy::result_large_err)] // the request itself, moved back; not boxed on the hot path
pub(crate) fn pick<T, C, B>(
    inner: &Inner<T, C>,
    key: Option<u64>,
    tried: &[EndpointId],
    req: Request<B>,
    spare: Option<&mut Option<Spare<B>>>,
) -> Result<(Attempt, C::Service, Request<B>), Request<B>>
where
    C: Connect<T, B>,
    B: 'static,
{
    let shared = &*inner.endpoints.shared;
    let snap = shared.snapshot.load();
    let mut skip: Vec<EndpointId> = Vec::new();
    for fail_open in [false, true] {
        // A handful of tries: a pick can only be refused here when another
        // request holds an ejected endpoint's trial.
        for _ in 0..4 {
            let excluded: &[EndpointId] = if skip.is_empty() { tried } else { &skip };
            let candidates = Candidates {
                states: &snap.states,
                weights: &snap.weights,
                hashes: &snap.hashes,
                uniform: snap.uniform,
                prepared: &*snap.prepared,
                key,
                tried: excluded,
                fail_open,
                now: std::cell::Cell::new(None),
            };
            let Some(i) = shared.strategy.pick(&candidates) else {
                break;
            };
            let Some(state) = snap.states.get(i) else {
                break;
            };
            let trial = if fail_open {
                false
            } else {
                match state.claim_trial() {
                    Ok(trial) => trial,
                    Err(()) => {
                        if skip.is_empty() {
                            skip.extend_from_slice(tried);
                        }
                        skip.push(state.id);
                        continue;
                    }
                }
            };
            if fail_open {
                crate::balance::trace!(endpoint = %state.name, "no healthy endpoint: failing open");
            }
            if let Some(spare) = spare {
                if snap.states.len() > 1 {
                    *spare = Spare::of(&inner.config.retries, &req);
                }
            }
            let (svc, req) = inner.connect.connect(&snap.values[i], req);
            let attempt = Attempt::new(Arc::clone(state), trial);
            return Ok((attempt, svc, req));
        }
    }
    Err(req)
}

impl<T, C, B, ResB> Service<Request<B>> for Balance<T, C>
where
    C: Connect<T, B>,
    C::Service: Service<Request<B>, Response = Response<ResB>>,
    ResB: http_body::Body,
    B: 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = <C::Service as Service<Request<B>>>::Error;
    type Future = ResponseFuture<T, C, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: readiness of the chosen endpoint is driven in the
        // response future, so one slow endpoint never blocks the others.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let config = &self.inner.config;
        let (req, key) = if config.key.is_none() {
            (req, None)
        } else {
            let (parts, body) = req.into_parts();
            let key = config.key.extract(&parts);
            (Request::from_parts(parts, body), key)
        };
        self.call_with_key(req, key, http::Extensions::new())
    }
}

impl<T, C> Balance<T, C> {
    /// The strategy key of a request head, as [`Service::call`] computes it.
    #[cfg(feature = "proxy")]
    pub(crate) fn key_of(&self, parts: &http::request::Parts) -> Option<u64> {
        let key = &self.inner.config.key;
        if key.is_none() {
            None
        } else {
            key.extract(parts)
        }
    }

    /// [`Service::call`] with the key already taken from the request (by
    /// [`key_of`](Self::key_of)), so the caller may strip what only the
    /// key needed before the request is copied for retries.
    pub(crate) fn call_with_key<B>(
        &mut self,
        req: Request<B>,
        key: Option<u64>,
        response_extensions: http::Extensions,
    ) -> ResponseFuture<T, C, B>
    where
        C: Connect<T, B>,
        B: 'static,
    {
        let retries = &self.inner.config.retries;
        retries.deposit();
        // Keep a copy for retries only when one could happen: idempotent
        // method, replayable body (and, checked in `pick`, more than one
        // endpoint).
        let may_retry = retries.max > 0 && super::retry::is_idempotent(req.method());
        ResponseFuture::start(
            Arc::clone(&self.inner),
            key,
            may_retry,
            req,
            response_extensions,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keeps_path_and_query() {
        let base: Uri = "http://127.0.0.1:9001".parse().unwrap();
        let u = rewrite_uri(&base, &"/posts/1?x=2".parse().unwrap());
        assert_eq!(u, "http://127.0.0.1:9001/posts/1?x=2");
        let u = rewrite_uri(&base, &"http://front.example/a".parse().unwrap());
        assert_eq!(u, "http://127.0.0.1:9001/a");
    }

    #[test]
    fn a_target_too_long_for_the_base_path_never_leaves_it() {
        let base: Uri = "http://10.0.0.5:3000/app".parse().unwrap();
        let long: Uri = format!("/x?{}", "a".repeat(65_530)).parse().unwrap();
        assert!(rewrite_uri_checked(&base, &long).is_none());
        assert_eq!(rewrite_uri(&base, &long), base);
    }

    #[test]
    fn rewrite_prefixes_the_base_path() {
        let base: Uri = "http://10.0.0.5:3000/app/".parse().unwrap();
        let u = rewrite_uri(&base, &"/posts?p=1".parse().unwrap());
        assert_eq!(u, "http://10.0.0.5:3000/app/posts?p=1");
    }
}

#[cfg(test)]
mod balance_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http::{Method, StatusCode};
    use tower::{service_fn, BoxError, ServiceExt};

    use super::*;
    use crate::balance::{PassiveHealth, PowerOfTwo, Rendezvous, RoundRobin};

    type Svc = tower::util::BoxCloneSyncService<Request<String>, Response<String>, BoxError>;

    /// A worker that answers with its name, or fails while `fail` is set.
    fn worker(name: &'static str, calls: Arc<AtomicUsize>, fail: bool) -> Svc {
        Svc::new(service_fn(move |_req: Request<String>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if fail {
                    Err::<Response<String>, BoxError>("connection refused".into())
                } else {
                    Ok(Response::builder()
                        .header("x-worker", name)
                        .body(String::new())
                        .unwrap())
                }
            }
        }))
    }

    fn request(method: Method) -> Request<String> {
        Request::builder()
            .method(method)
            .uri("/")
            .body(String::new())
            .unwrap()
    }

    fn worker_of(res: &Response<ResponseBody<String>>) -> &str {
        res.headers()["x-worker"].to_str().unwrap()
    }

    #[tokio::test]
    async fn empty_set_answers_503_at_once() {
        let set: Endpoints<Svc> = Endpoints::new(RoundRobin::new());
        let res = Balance::new(set)
            .oneshot(request(Method::GET))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn all_drained_answers_503() {
        let set = Endpoints::new(RoundRobin::new());
        let a = set.add("a", worker("a", Arc::default(), false)).unwrap();
        set.drain(a);
        let res = Balance::new(set)
            .oneshot(request(Method::GET))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn failed_get_moves_to_another_endpoint() {
        let set = Endpoints::new(RoundRobin::new());
        let dead_calls = Arc::new(AtomicUsize::new(0));
        set.add("dead", worker("dead", Arc::clone(&dead_calls), true))
            .unwrap();
        set.add("live", worker("live", Arc::default(), false))
            .unwrap();
        let svc = Balance::new(set.clone()).retries(Retries::new());
        for _ in 0..4 {
            let res = svc.clone().oneshot(request(Method::GET)).await.unwrap();
            assert_eq!(worker_of(&res), "live");
        }
        assert!(dead_calls.load(Ordering::SeqCst) >= 1);
        let dead = set.stats().into_iter().find(|s| s.name == "dead").unwrap();
        assert_eq!(dead.failures, dead_calls.load(Ordering::SeqCst) as u64);
        assert_eq!(dead.in_flight, 0);
    }

    #[tokio::test]
    async fn in_process_balance_retries_by_default() {
        let set = Endpoints::new(RoundRobin::new());
        let live_calls = Arc::new(AtomicUsize::new(0));
        set.add("dead", worker("dead", Arc::default(), true))
            .unwrap();
        set.add("live", worker("live", Arc::clone(&live_calls), false))
            .unwrap();
        let res = Balance::new(set)
            .oneshot(request(Method::GET))
            .await
            .unwrap();
        assert_eq!(worker_of(&res), "live");
        assert_eq!(live_calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_type_the_balancer_cannot_replay_is_balanced_not_retried() {
        // No `ReplayBody` impl: it must still compile and balance.
        #[derive(Debug, Default)]
        struct Opaque;
        let set = Endpoints::new(RoundRobin::new());
        let live_calls = Arc::new(AtomicUsize::new(0));
        for (name, calls, fail) in [
            ("dead", Arc::default(), true),
            ("live", Arc::clone(&live_calls), false),
        ] {
            let calls: Arc<AtomicUsize> = calls;
            let svc = service_fn(move |_req: Request<Opaque>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if fail {
                        Err("down")
                    } else {
                        Ok(Response::new(String::from(name)))
                    }
                }
            });
            set.add(name, svc).unwrap();
        }
        let svc = Balance::new(set);
        assert!(svc.clone().oneshot(Request::new(Opaque)).await.is_err());
        assert_eq!(
            live_calls.load(Ordering::SeqCst),
            0,
            "no retry without replay"
        );
        let res = svc.oneshot(Request::new(Opaque)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn post_is_never_retried() {
        let set = Endpoints::new(RoundRobin::new());
        let live_calls = Arc::new(AtomicUsize::new(0));
        set.add("dead", worker("dead", Arc::default(), true))
            .unwrap();
        set.add("live", worker("live", Arc::clone(&live_calls), false))
            .unwrap();
        let svc = Balance::new(set).retries(Retries::new());
        // Round robin sends the first request to "dead".
        let err = svc
            .clone()
            .oneshot(request(Method::POST))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "connection refused");
        assert_eq!(live_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn retries_stop_at_the_budget() {
        let set = Endpoints::builder()
            .health(PassiveHealth::disabled())
            .strategy(RoundRobin::new())
            .build();
        let calls = Arc::new(AtomicUsize::new(0));
        for name in ["a", "b", "c", "d", "e", "f"] {
            set.add(name, worker(name, Arc::clone(&calls), true))
                .unwrap();
        }
        // No floor, no share: never a retry.
        let svc = Balance::new(set.clone()).retries(Retries::new().max_retries(5).budget(0.0, 0));
        assert!(svc.oneshot(request(Method::GET)).await.is_err());
        assert_eq!(calls.swap(0, Ordering::SeqCst), 1);
        // Each request earns one token at 100 %: one retry, not five.
        let svc = Balance::new(set).retries(Retries::new().max_retries(5).budget(1.0, 0));
        assert!(svc.oneshot(request(Method::GET)).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn retries_never_go_back_to_a_tried_endpoint() {
        let set = Endpoints::builder()
            .health(PassiveHealth::disabled())
            .strategy(RoundRobin::new())
            .build();
        let calls = Arc::new(AtomicUsize::new(0));
        set.add("a", worker("a", Arc::clone(&calls), true)).unwrap();
        set.add("b", worker("b", Arc::clone(&calls), true)).unwrap();
        let svc = Balance::new(set).retries(Retries::new().max_retries(5));
        assert!(svc.oneshot(request(Method::GET)).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn consecutive_failures_eject_and_the_trial_brings_it_back() {
        let health = PassiveHealth::new()
            .consecutive_failures(2)
            .base_ejection(Duration::from_millis(1))
            .max_ejected_share(0.5);
        let set = Endpoints::builder()
            .health(health)
            .strategy(RoundRobin::new())
            .build();
        let flaky_calls = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f = Arc::clone(&fail);
        let c = Arc::clone(&flaky_calls);
        let flaky = Svc::new(service_fn(move |_req: Request<String>| {
            c.fetch_add(1, Ordering::SeqCst);
            let fail = f.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err::<Response<String>, BoxError>("reset".into())
                } else {
                    Ok(Response::builder()
                        .header("x-worker", "flaky")
                        .body(String::new())
                        .unwrap())
                }
            }
        }));
        let id = set.add("flaky", flaky).unwrap();
        set.add("a", worker("a", Arc::default(), false)).unwrap();
        let svc = Balance::new(set.clone()).retries(Retries::new());
        while !set.stats_of(id).unwrap().ejected {
            let res = svc.clone().oneshot(request(Method::GET)).await.unwrap();
            assert_eq!(worker_of(&res), "a");
        }
        assert_eq!(flaky_calls.load(Ordering::SeqCst), 2);
        fail.store(false, Ordering::SeqCst);
        // After the (1 ms) backoff the next pick of "flaky" is its trial.
        let mut seen = false;
        for _ in 0..10_000 {
            let res = svc.clone().oneshot(request(Method::GET)).await.unwrap();
            if worker_of(&res) == "flaky" {
                seen = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(seen);
        assert!(!set.stats_of(id).unwrap().ejected);
    }

    #[tokio::test]
    async fn share_cap_keeps_the_last_endpoint_in() {
        let health = PassiveHealth::new()
            .consecutive_failures(1)
            .max_ejected_share(0.5);
        let set = Endpoints::builder()
            .health(health)
            .strategy(RoundRobin::new())
            .build();
        let a = set.add("a", worker("a", Arc::default(), true)).unwrap();
        let b = set.add("b", worker("b", Arc::default(), true)).unwrap();
        let svc = Balance::new(set.clone()).retries(Retries::none());
        for _ in 0..6 {
            let _ = svc.clone().oneshot(request(Method::GET)).await;
        }
        let out = [a, b]
            .iter()
            .filter(|id| set.stats_of(**id).unwrap().ejected)
            .count();
        assert_eq!(out, 1);
    }

    #[tokio::test]
    async fn all_out_fails_open() {
        let set = Endpoints::new(RoundRobin::new());
        let a = set.add("a", worker("a", Arc::default(), false)).unwrap();
        set.shared.snapshot.load().states[0]
            .probe_down
            .store(true, Ordering::SeqCst);
        let res = Balance::new(set.clone())
            .oneshot(request(Method::GET))
            .await
            .unwrap();
        assert_eq!(worker_of(&res), "a");
        assert_eq!(set.stats_of(a).unwrap().requests, 1);
    }

    #[tokio::test]
    async fn in_flight_lasts_until_the_body_is_dropped() {
        let set = Endpoints::new(PowerOfTwo::with_seed(3));
        let a = set.add("a", worker("a", Arc::default(), false)).unwrap();
        let res = Balance::new(set.clone())
            .oneshot(request(Method::GET))
            .await
            .unwrap();
        assert_eq!(set.stats_of(a).unwrap().in_flight, 1);
        drop(res);
        assert_eq!(set.stats_of(a).unwrap().in_flight, 0);
    }

    #[tokio::test]
    async fn header_key_sticks_to_one_endpoint() {
        let set = Endpoints::new(Rendezvous::new());
        for name in ["a", "b", "c", "d"] {
            set.add(name, worker(name, Arc::default(), false)).unwrap();
        }
        let svc = Balance::new(set).key(Key::header(http::HeaderName::from_static("x-user")));
        let mut first = None;
        for _ in 0..20 {
            let req = Request::builder()
                .header("x-user", "u42")
                .body(String::new())
                .unwrap();
            let res = svc.clone().oneshot(req).await.unwrap();
            let w = worker_of(&res).to_owned();
            assert_eq!(first.get_or_insert_with(|| w.clone()), &w);
        }
    }

    #[tokio::test]
    async fn five_xx_counts_only_when_configured() {
        let five = |name: &'static str| {
            Svc::new(service_fn(move |_r: Request<String>| async move {
                Ok::<_, BoxError>(
                    Response::builder()
                        .status(502)
                        .header("x-worker", name)
                        .body(String::new())
                        .unwrap(),
                )
            }))
        };
        for (counted, want) in [(false, 0), (true, 3)] {
            let health = PassiveHealth::new()
                .server_errors_are_failures(counted)
                .consecutive_failures(100);
            let set = Endpoints::builder()
                .health(health)
                .strategy(RoundRobin::new())
                .build();
            let a = set.add("a", five("a")).unwrap();
            let svc = Balance::new(set.clone());
            for _ in 0..3 {
                let res = svc.clone().oneshot(request(Method::GET)).await.unwrap();
                assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
            }
            assert_eq!(set.stats_of(a).unwrap().failures, want);
        }
    }

    #[test]
    fn balance_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync>() {}
        check::<Balance<Svc>>();
        check::<Balance<http::Uri, Rewrite<Svc>>>();
    }
}

#[cfg(test)]
mod trial_tests {
    use std::time::Duration;

    use http::Method;
    use tower::{service_fn, BoxError, ServiceExt};

    use super::*;
    use crate::balance::{PassiveHealth, RoundRobin};

    #[tokio::test]
    async fn a_trial_dropped_undecided_is_given_back() {
        let health = PassiveHealth::new()
            .consecutive_failures(1)
            .base_ejection(Duration::from_millis(1))
            .max_ejected_share(1.0);
        let set = Endpoints::builder()
            .health(health)
            .strategy(RoundRobin::new())
            .build();
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f = Arc::clone(&fail);
        type Svc = tower::util::BoxCloneSyncService<Request<String>, Response<String>, BoxError>;
        let svc = Svc::new(service_fn(move |_r: Request<String>| {
            let fail = f.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if fail {
                    return Err::<Response<String>, BoxError>("refused".into());
                }
                // Answers only when the test lets it.
                std::future::pending::<()>().await;
                Ok(Response::new(String::new()))
            }
        }));
        let id = set.add("a", svc).unwrap();
        let b = service_fn(|_r: Request<String>| async {
            Ok::<_, BoxError>(Response::new(String::new()))
        });
        set.add("b", Svc::new(b)).unwrap();
        let balance = Balance::new(set.clone()).retries(Retries::none());
        let req = || {
            Request::builder()
                .method(Method::GET)
                .body(String::new())
                .unwrap()
        };
        // "a" fails once: ejected.
        let _ = balance.clone().oneshot(req()).await;
        assert!(set.stats_of(id).unwrap().ejected);
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        // Wait out the backoff, then start the trial on "a" and drop it.
        loop {
            let state = Arc::clone(&set.shared.snapshot.load().states[0]);
            if state.claim_trial() == Ok(true) {
                state.release_trial();
                break;
            }
            tokio::task::yield_now().await;
        }
        let mut trial = None;
        for _ in 0..4 {
            let mut fut = Box::pin(balance.clone().oneshot(req()));
            if futures_poll_once(&mut fut).await.is_none() {
                trial = Some(fut);
                break;
            }
        }
        assert!(trial.is_some(), "the trial on `a` should be pending");
        drop(trial);
        // Released: a later request may be the trial again.
        let state = Arc::clone(&set.shared.snapshot.load().states[0]);
        assert_eq!(state.claim_trial(), Ok(true));
    }

    /// Polls once; `Some` if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
