//! Upstream selection: spread requests over renderer workers or processes,
//! keep failing ones out, retry elsewhere.
//!
//! An [`Endpoints`] set holds the endpoints with stable ids, weights, health
//! and in-flight counters; a [`Strategy`] picks one per request:
//! [`RoundRobin`] (smooth weighted, as nginx), [`LeastInFlight`],
//! [`PowerOfTwo`] (P2C over in-flight), or consistent hashing on a request
//! [`Key`] with [`Rendezvous`] or [`Maglev`] (optionally with bounded
//! load). [`Balance`] balances over in-process services; [`BalanceLayer`]
//! balances one HTTP client over upstream base URIs. Both are `Clone`, always
//! ready, and answer `503` at once when no endpoint is eligible.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, ServiceExt};
//! use tower_ssr::balance::{Balance, Endpoints, RoundRobin};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let worker = |name: &'static str| {
//!     service_fn(move |_req: Request<String>| async move {
//!         Ok::<_, std::convert::Infallible>(
//!             Response::builder().header("x-worker", name).body(String::new()).unwrap(),
//!         )
//!     })
//! };
//! let set = Endpoints::new(RoundRobin::new());
//! set.add("a", worker("a"))?;
//! set.add("b", worker("b"))?;
//! let svc = Balance::new(set.clone());
//!
//! let res = svc.clone().oneshot(Request::new(String::new())).await?;
//! assert_eq!(res.headers()["x-worker"], "a");
//! let res = svc.clone().oneshot(Request::new(String::new())).await?;
//! assert_eq!(res.headers()["x-worker"], "b");
//!
//! // Drained and removed endpoints take no new requests; nothing left: 503.
//! for s in set.stats() {
//!     set.remove(s.id);
//! }
//! let res = svc.oneshot(Request::new(String::new())).await?;
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! | situation | what the balancer does |
//! |---|---|
//! | an eligible endpoint | the strategy picks it; the request counts as in flight there until the response body ends or is dropped |
//! | no active endpoint (empty set, all drained, all tried) | `503 Service Unavailable`, empty body, at once |
//! | the endpoint's service errors before response headers | failure counted; with [`Retries`] (on by default, for every entry point) an idempotent request (RFC 9110 §9.2.2) whose body type can be replayed ([`ReplayBody`]) moves to an endpoint it has not tried, within the budget; otherwise the error is returned |
//! | a `5xx` response | passed on; a failure for health only with [`PassiveHealth::server_errors_are_failures`]; never retried |
//! | consecutive failures reach the threshold | the endpoint is ejected for a backoff growing with each ejection; at most a share of the set is out; afterwards one trial request decides |
//! | every endpoint ejected or probed down | fail open: pick among all of them |
//! | a hashing strategy and a request without a key | the strategy's fallback picks (P2C by default) |
//!
//! # Ordering
//!
//! The balancer is the leaf of the stack: `CacheLayer` → `CacheControlLayer`
//! → `BalanceLayer` → client. Outside it, a cache hit never reaches an
//! upstream and the headers set by `CacheControlLayer` cover responses from
//! every upstream alike. Timeouts belong inside (on the client), so that a
//! timed-out attempt can be retried elsewhere.

mod body;
mod endpoint;
mod future;
mod health;
mod key;
mod layer;
#[cfg(feature = "tokio")]
mod probe;
mod retry;
mod service;
mod strategy;
mod upstream;

pub use body::ResponseBody;
pub use endpoint::{EndpointError, EndpointId, EndpointStats, Endpoints, EndpointsBuilder};
pub use future::ResponseFuture;
pub use health::PassiveHealth;
pub use key::{
    client_ip, hash_key, peer_addr, ClientAddr, ForwardedHeader, InvalidCidr, Key, TrustedProxies,
};
pub use layer::BalanceLayer;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use probe::{ActiveProbes, NoRuntime, ProbeHandle};
pub use retry::{ReplayBody, Retries};
pub use service::{Balance, Connect, Direct, Rewrite};
pub use strategy::{
    Candidates, LeastInFlight, Maglev, PowerOfTwo, Rendezvous, RoundRobin, Strategy,
};
pub use upstream::Upstream;
#[cfg(feature = "proxy")]
pub(crate) use {
    retry::is_idempotent, service::path_under, service::rewrite_uri, service::rewrite_uri_checked,
    service::Config,
};

/// A `tracing` debug event when the `tracing` feature is on; nothing
/// otherwise.
macro_rules! trace {
    ($($t:tt)*) => {
        #[cfg(feature = "tracing")]
        {
            tracing::debug!(target: "tower_ssr::balance", $($t)*);
        }
    };
}
pub(crate) use trace;
