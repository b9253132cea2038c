//! Reverse-proxy forwarding over pooled upstream connections (feature
//! `proxy`): hyper's client connections in a pool of the crate's own
//! (or a hyper-util client of your own).
//!
//! [`ReverseProxy`] is a whole reverse proxy as one service: it prepares the
//! request as an intermediary must (hop-by-hop headers removed, RFC 9110
//! §7.6.1; `Via` added, §7.6.3; `X-Forwarded-*` or `Forwarded`, RFC 7239),
//! balances it over the upstreams with [`Balance`](crate::balance::Balance), forwards it with
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
//! A response body that sends nothing for
//! [`idle_timeout`](ProxyBuilder::idle_timeout) (60 s by default) is cut
//! off: the client has the status and what came, then the connection (or
//! HTTP/2 stream) is reset.
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
//! upstreams.add("r1", tower_ssr::proxy::upstream("http://127.0.0.1:9001")?)?;
//! upstreams.add("r2", tower_ssr::proxy::upstream("unix:/run/renderer.sock")?)?;
//! let proxy = ReverseProxy::builder(upstreams).try_build()?;
//! // serve it with tower_ssr::proxy::serve(listener, proxy); see examples/proxy.rs
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
//! | `CONNECT` (a tunnel to a target of the client's choosing) | `501 Not Implemented`, nothing forwarded |
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
//! never replayed.
//!
//! # Transports
//!
//! Upstreams are base URIs, best made with [`upstream`] (which refuses, at
//! configuration time, a scheme this build cannot speak):
//!
//! | upstream | how |
//! |---|---|
//! | `http://HOST:PORT` | HTTP/1.1 over TCP, pooled (below) |
//! | `https://HOST:PORT` | TLS via rustls (feature `tls`, on by default; ring provider, no OpenSSL): [`TlsRoots::system`] plus any CA bundle, SNI from HOST, ALPN `h2` then `http/1.1` (HTTP/2 when the upstream picks it) |
//! | `h2c://HOST:PORT` | cleartext HTTP/2 with prior knowledge (RFC 9113 §3.3), multiplexed on one connection |
//! | `unix:/PATH` | HTTP/1.1 over a Unix domain socket, pooled |
//! | anything | your own hyper-util client: [`ProxyBuilder::client`] |
//!
//! HTTP/1.1 connections to `http://`, `https://` and `unix:` upstreams are
//! kept open for the next request once a response has been read to its
//! end (RFC 9112 §9.3), at most 128 idle ones per upstream (hyper-util
//! keeps any number), the most recently used first; one idle for
//! [`pool_idle_timeout`](ProxyBuilder::pool_idle_timeout) (3 s by default,
//! below renderers' own keep-alive: Node's is 5 s) is closed (within a
//! quarter of it). A response body dropped before its end closes its
//! connection. A request sent on a pooled connection that closes before
//! the request is written is sent once more on a new one; so is an
//! idempotent request with its body in memory sent on a connection that
//! had sat idle and closed under it before any answer (the upstream's own
//! keep-alive timer fired as it was written), and one whose HTTP/2 stream the
//! upstream refused unprocessed (`REFUSED_STREAM`, or above a `GOAWAY`'s
//! last stream, RFC 9113 §8.7), as an upstream shutting down does. An `https://`
//! upstream whose TLS ALPN picks `h2` gets one HTTP/2 connection that all
//! requests share, closed once unused for the pool's idle timeout; so does an
//! `h2c://` upstream. Over HTTP/2 the client's authority (its `Host`, kept
//! by [`preserve_host`](ProxyBuilder::preserve_host)) is sent as
//! `:authority`, with no `Host` beside it (RFC 9113 §8.3.1).
//!
//! [`ProxyBuilder::try_build`] fails with a [`ConfigError`] for an upstream
//! it cannot speak; no request is ever sent to find out.
//!
//! # Upgrades (WebSocket)
//!
//! An HTTP/1.1 request with `Upgrade` and `Connection: upgrade` (RFC 9110
//! §7.8) is forwarded with both fields to the endpoint the balancer picks
//! (a consistent-hashing [`Key`](crate::balance::Key) keeps a client on one
//! renderer). When the upstream answers `101 Switching Protocols` for a
//! protocol the client offered, the `101` is relayed and bytes are copied
//! both ways until both sides have closed, or nothing moved for
//! [`idle_timeout`](ProxyBuilder::idle_timeout) (60 s by default). The
//! tunnel counts as in flight on its endpoint for as long as it is open.
//! A `101` the client did not ask for, or for a protocol it did not offer,
//! is answered `502 Bad Gateway` and never relayed. The server must hand
//! connections over: [`serve`] does; with hyper directly, use
//! `serve_connection_with_upgrades` / `.with_upgrades()`.
//! [`CacheLayer`](crate::cache::CacheLayer) passes upgrade requests through
//! untouched. HTTP/2 extended CONNECT (RFC 8441, WebSocket over HTTP/2) is
//! not supported, neither from clients nor to upstreams; nor are upgrades
//! to `h2c://` upstreams (HTTP/2 has no `Upgrade`).
//!
//! # Serving
//!
//! [`serve`] runs the accept loop: HTTP/1.1 and HTTP/2 (h2c) on one port,
//! the client's address as [`ClientAddr`](crate::balance::ClientAddr) in
//! every request (so `X-Forwarded-For` works without axum), upgrades,
//! graceful shutdown. Under axum, enable feature `axum` and serve with
//! `into_make_service_with_connect_info::<SocketAddr>()`; a request
//! without a client address makes the proxy warn once.
//!
//! The proxy's responses carry, in their extensions, the
//! [`Upstream`](crate::balance::Upstream) that answered and the request's
//! [`ClientAddr`](crate::balance::ClientAddr) (when it had one), for an
//! access log written at the response.

mod body;
mod client;
mod error;
mod forward;
mod future;
mod pool;
mod serve;
mod service;
mod shutdown;
mod stall;
mod target;
mod timer;
#[cfg(feature = "tls")]
mod tls;
mod upgrade;

pub use body::{BoxError, ProxyBody};
pub use client::{http_check, upstream, Forward};
pub use error::{ConfigError, ProxyError};
pub use forward::{Forwarding, ForwardingHeaders};
pub use future::{ForwardFuture, ResponseFuture};
pub use serve::{serve, Serve};
pub use service::{
    ProxyBuilder, ProxyResponseBody, ReverseProxy, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT,
};
pub use stall::UpstreamBody;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::TlsRoots;
