//! A caching, balancing reverse proxy in front of renderer processes.
//!
//! ```text
//! cargo run --release --example proxy -- --listen 127.0.0.1:8080 \
//!     --upstream http://127.0.0.1:9001 --upstream http://127.0.0.1:9002 \
//!     [--strategy round-robin|least-in-flight|p2c|ip-hash|header-hash:NAME] \
//!     [--weights 1,2] [--cache-mb 256 | --no-cache] \
//!     [--trust CIDR]... [--probe /healthz] [--threads N] \
//!     [--connect-timeout MS] [--timeout MS] [--metrics ADDR] \
//!     [--redis redis://127.0.0.1:6379] [--no-compress] [--no-targeted-field]
//! ```
//!
//! The cache compresses each stored page once (br, zstd, gzip) and answers
//! every client with the coding it accepts; `--no-compress` turns that off.
//! It honours `CDN-Cache-Control` (RFC 9213) ahead of `Cache-Control`;
//! `--no-targeted-field` turns that off.
//!
//! With `--metrics 127.0.0.1:9100` it serves Prometheus text at
//! `http://127.0.0.1:9100/metrics` (see `tower_ssr::metrics` for the
//! names) and adds `Server-Timing` to every cached or forwarded answer.
//!
//! `--redis URL` (built with feature `redis`) puts a shared Redis tier
//! behind the memory cache.
//!
//! It forwards every method and path, streams bodies both ways and returns
//! the upstream's headers minus hop-by-hop ones; it adds no Cache-Control of
//! its own. It prints `listening on ADDR` once ready and stops cleanly on
//! Ctrl-C or SIGTERM. Try `cargo run --example renderer -- --listen
//! 127.0.0.1:9001` for upstreams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, Uri};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tower::{Layer, Service};
use tower_ssr::balance::{
    ActiveProbes, ClientAddr, Endpoints, Key, LeastInFlight, PowerOfTwo, Rendezvous, RoundRobin,
    Strategy, TrustedProxies,
};
use tower_ssr::cache::{CacheLayer, ResponseCache};
use tower_ssr::proxy::{http_check, ReverseProxy};

#[path = "support/prometheus.rs"]
mod prometheus;

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    upstreams: Vec<Uri>,
    strategy: String,
    weights: Option<Vec<u32>>,
    /// `None`: --no-cache.
    cache_mb: Option<u64>,
    trust: Vec<String>,
    probe: Option<String>,
    /// Runtime threads; 1 runs a single-threaded runtime (nginx's model of
    /// one worker per core).
    threads: usize,
    /// Connect timeout to an upstream.
    connect_timeout: Duration,
    /// Time to response headers from an upstream.
    timeout: Duration,
    /// Where to serve Prometheus text at `/metrics`.
    metrics: Option<SocketAddr>,
    /// `--redis URL`: a Redis second tier behind the memory cache.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    redis: Option<String>,
    /// `--no-compress`: the cache stores and serves what the upstream sent,
    /// and forwards the client's `Accept-Encoding`.
    #[cfg_attr(not(feature = "compression"), allow(dead_code))]
    no_compress: bool,
    /// `--no-targeted-field`: `CDN-Cache-Control` is not read (RFC 9213).
    no_targeted_field: bool,
}

fn parse(argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = None;
    let mut upstreams = Vec::new();
    let mut strategy = String::from("round-robin");
    let mut weights = None;
    let mut cache_mb = None;
    let mut no_cache = false;
    let mut no_compress = false;
    let mut no_targeted_field = false;
    let mut trust = Vec::new();
    let mut probe = None;
    let mut metrics = None;
    let mut threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut connect_timeout = tower_ssr::proxy::DEFAULT_CONNECT_TIMEOUT;
    let mut timeout = tower_ssr::proxy::DEFAULT_RESPONSE_TIMEOUT;
    let mut redis = None;
    let mut it = argv;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--upstream" => {
                let v = value()?;
                let uri: Uri = v.parse().map_err(|e| format!("--upstream {v}: {e}"))?;
                if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                    return Err(format!("--upstream {v}: expected http://HOST:PORT"));
                }
                upstreams.push(uri);
            }
            "--strategy" => strategy = value()?,
            "--weights" => {
                let v = value()?;
                let w = v
                    .split(',')
                    .map(|x| x.trim().parse::<u32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--weights {v}: {e}"))?;
                weights = Some(w);
            }
            "--cache-mb" => {
                let v = value()?;
                let mb: u64 = v.parse().map_err(|e| format!("--cache-mb {v}: {e}"))?;
                if mb == 0 {
                    return Err(
                        "--cache-mb must be at least 1 (use --no-cache to turn it off)".into(),
                    );
                }
                cache_mb = Some(mb);
            }
            "--no-cache" => no_cache = true,
            "--no-compress" => no_compress = true,
            "--no-targeted-field" => no_targeted_field = true,
            "--trust" => trust.push(value()?),
            "--probe" => probe = Some(value()?),
            "--metrics" => {
                let v = value()?;
                metrics = Some(v.parse().map_err(|e| format!("--metrics {v}: {e}"))?);
            }
            "--threads" => {
                let v = value()?;
                threads = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--threads {v}: expected a count"))?;
            }
            "--connect-timeout" | "--timeout" => {
                let v = value()?;
                let ms: u64 = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("{flag} {v}: expected milliseconds"))?;
                let d = Duration::from_millis(ms);
                if flag == "--timeout" {
                    timeout = d;
                } else {
                    connect_timeout = d;
                }
            }
            "--redis" if cfg!(feature = "redis") => redis = Some(value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let listen = listen.ok_or("--listen ADDR is required")?;
    if upstreams.is_empty() {
        return Err("at least one --upstream URL is required".into());
    }
    if no_cache && cache_mb.is_some() {
        return Err("--cache-mb and --no-cache exclude each other".into());
    }
    if no_cache && redis.is_some() {
        return Err("--redis needs the cache (drop --no-cache)".into());
    }
    // Validated here so that a typo gets the usage text.
    let _ = strategy_and_key(&strategy, TrustedProxies::none())?;
    if let Some(w) = &weights {
        if w.len() != upstreams.len() {
            return Err(format!(
                "--weights has {} values for {} upstreams",
                w.len(),
                upstreams.len()
            ));
        }
    }
    Ok(Args {
        listen,
        upstreams,
        strategy,
        weights,
        // The cache is on by default, 256 MB.
        cache_mb: if no_cache {
            None
        } else {
            Some(cache_mb.unwrap_or(256))
        },
        trust,
        probe,
        threads,
        connect_timeout,
        timeout,
        metrics,
        redis,
        no_compress,
        no_targeted_field,
    })
}

fn strategy_and_key(
    name: &str,
    trusted: TrustedProxies,
) -> Result<(Box<dyn FnOnce() -> Endpoints<Uri>>, Key), String> {
    fn set(s: impl Strategy) -> Box<dyn FnOnce() -> Endpoints<Uri>> {
        Box::new(move || Endpoints::new(s))
    }
    Ok(match name {
        "round-robin" => (set(RoundRobin::new()), Key::none()),
        "least-in-flight" => (set(LeastInFlight::new()), Key::none()),
        "p2c" => (set(PowerOfTwo::new()), Key::none()),
        "ip-hash" => (set(Rendezvous::new()), Key::client_ip(trusted)),
        other => match other.strip_prefix("header-hash:") {
            Some(h) => {
                let h = HeaderName::try_from(h).map_err(|e| format!("--strategy {other}: {e}"))?;
                (set(Rendezvous::new()), Key::header(h))
            }
            None => return Err(format!("unknown --strategy {other}")),
        },
    })
}

const USAGE: &str = "usage: proxy --listen ADDR --upstream URL [--upstream URL]... \
[--strategy round-robin|least-in-flight|p2c|ip-hash|header-hash:NAME] [--weights 1,2] \
[--cache-mb N | --no-cache] [--trust CIDR]... [--probe PATH] [--threads N] \
[--connect-timeout MS] [--timeout MS] [--metrics ADDR] [--redis URL] \
[--no-compress] [--no-targeted-field]";

fn main() {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("proxy: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let result = match runtime {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = result {
        eprintln!("proxy: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // First: handles taken before the recorder is installed stay no-ops.
    if let Some(addr) = args.metrics {
        let bound = prometheus::serve_metrics(addr).await?;
        println!("metrics at http://{bound}/metrics");
    }
    let trusted = TrustedProxies::try_new(&args.trust)?;
    let (make_set, key) = strategy_and_key(&args.strategy, trusted.clone())?;
    let upstreams = make_set();
    for (i, uri) in args.upstreams.iter().enumerate() {
        let weight = args.weights.as_ref().map_or(1, |w| w[i]);
        upstreams.add_weighted(&uri.to_string(), uri.clone(), weight)?;
    }
    let _probes = args.probe.as_deref().map(|path| {
        ActiveProbes::new()
            .interval(Duration::from_secs(5))
            .spawn(&upstreams, http_check(path))
    });
    // The proxy believes forwarding headers only from --trust peers, and
    // answers 431 to a header line over 16 KiB or a section over 64 KiB.
    let proxy = ReverseProxy::builder(upstreams)
        .key(key)
        .trusted_proxies(trusted)
        .connect_timeout(args.connect_timeout)
        .response_timeout(args.timeout)
        .build();

    // The cache (on by default) is a pure RFC 9111 shared cache: it stores
    // what the upstreams' own headers allow and injects no policy. With
    // --trust, forwarding headers pass it for the proxy to judge by peer.
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    match args.cache_mb {
        Some(mb) => {
            let builder = ResponseCache::builder().max_bytes(mb.saturating_mul(1 << 20));
            #[cfg(feature = "redis")]
            let builder = match &args.redis {
                Some(url) => builder.redis(tower_ssr::cache::RedisTier::new(url)?),
                None => builder,
            };
            let cache = builder.build();
            let layer = CacheLayer::new(cache)
                .trust_forwarding_headers(!args.trust.is_empty())
                .server_timing(true);
            // RFC 9213: the CDN's own field, ahead of Cache-Control.
            let layer = if args.no_targeted_field {
                layer
            } else {
                layer.targeted_field(HeaderName::from_static("cdn-cache-control"))
            };
            // The cache makes br, zstd and gzip once per stored page.
            #[cfg(feature = "compression")]
            let layer = if args.no_compress {
                layer.no_compression()
            } else {
                layer
            };
            serve(listener, layer.layer(proxy)).await
        }
        None => serve(listener, proxy).await,
    }
}

/// Accepts connections until Ctrl-C or SIGTERM, then lets requests in
/// progress finish, within reason.
async fn serve<S, B>(
    listener: tokio::net::TcpListener,
    service: S,
) -> Result<(), Box<dyn std::error::Error>>
where
    S: Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    println!("listening on {}", listener.local_addr()?);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    // Out of file descriptors and the like: keep serving.
                    Err(_) => continue,
                };
                let _ = stream.set_nodelay(true);
                let svc = service.clone();
                let handler = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    let mut svc = svc.clone();
                    async move { Ok::<_, Infallible>(svc.call(req).await.unwrap_or_else(|e| match e {})) }
                });
                let conn = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    // hyper answers 431 itself past this read buffer (the
                    // proxy's own limit, 64 KiB of headers, comes first);
                    // at most 100 header lines (hyper's default).
                    .max_buf_size(128 * 1024)
                    .max_headers(100)
                    .serve_connection(TokioIo::new(stream), handler);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    // Let requests in progress finish, within reason.
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {}
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn compression_and_the_targeted_field_are_on_unless_turned_off() {
        let a = args("--listen 127.0.0.1:1 --upstream http://h:1").unwrap();
        assert!(!a.no_compress && !a.no_targeted_field);
        let a =
            args("--listen 127.0.0.1:1 --upstream http://h:1 --no-compress --no-targeted-field")
                .unwrap();
        assert!(a.no_compress && a.no_targeted_field);
    }

    #[test]
    fn the_issue_command_line_parses() {
        let a = args(
            "--listen 127.0.0.1:8080 --upstream http://127.0.0.1:9001 --upstream http://127.0.0.1:9002 \
             --strategy header-hash:x-user --weights 1,2 --cache-mb 64",
        )
        .unwrap();
        assert_eq!(a.upstreams.len(), 2);
        assert_eq!(a.weights, Some(vec![1, 2]));
        assert_eq!(a.cache_mb, Some(64));
        assert_eq!(a.timeout, tower_ssr::proxy::DEFAULT_RESPONSE_TIMEOUT);
        let a = args(
            "--listen 127.0.0.1:1 --upstream http://h:1 --connect-timeout 1500 --timeout 2500",
        )
        .unwrap();
        assert_eq!(a.connect_timeout, Duration::from_millis(1500));
        assert_eq!(a.timeout, Duration::from_millis(2500));
        assert_eq!(
            args("--listen 127.0.0.1:1 --upstream http://h:1 --metrics 127.0.0.1:9100")
                .unwrap()
                .metrics,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(
            args("--listen 127.0.0.1:1 --upstream http://h:1 --no-cache")
                .unwrap()
                .cache_mb,
            None
        );
        assert_eq!(
            args("--listen 127.0.0.1:1 --upstream http://h:1")
                .unwrap()
                .cache_mb,
            Some(256)
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(args("--upstream http://h:1").is_err());
        assert!(args("--listen 127.0.0.1:1").is_err());
        assert!(args("--listen 127.0.0.1:1 --upstream ftp://h:1").is_err());
        assert!(args("--listen 127.0.0.1:1 --upstream http://h:1 --weights 1,2").is_err());
        assert!(args("--listen 127.0.0.1:1 --upstream http://h:1 --cache-mb 0").is_err());
        assert!(
            args("--listen 127.0.0.1:1 --upstream http://h:1 --cache-mb 5 --no-cache").is_err()
        );
        assert!(args("--listen 127.0.0.1:1 --upstream http://h:1 --cache-mb lots").is_err());
        assert!(args("--listen 127.0.0.1:1 --upstream http://h:1 --threads 0").is_err());
        assert!(args("--listen 127.0.0.1:1 --upstream http://h:1 --timeout 0").is_err());
        assert!(args("--listen 127.0.0.1:1 --upstream http://h:1 --connect-timeout 1s").is_err());
        assert!(args("--listen 127.0.0.1:1 --upstream http://h:1 --metrics nowhere").is_err());
        assert!(
            args("--listen 127.0.0.1:1 --upstream http://h:1 --no-cache --redis redis://h")
                .is_err()
        );
        // Known only where the example was built with the Redis tier.
        assert_eq!(
            args("--listen 127.0.0.1:1 --upstream http://h:1 --redis redis://h")
                .map(|a| a.redis)
                .ok(),
            cfg!(feature = "redis").then(|| Some("redis://h".to_string()))
        );
        assert!(strategy_and_key("fastest", TrustedProxies::none()).is_err());
        assert!(strategy_and_key("header-hash:bad header", TrustedProxies::none()).is_err());
    }
}
