//! A caching, balancing reverse proxy in front of renderer processes.
//!
//! ```text
//! cargo run --release --example proxy -- --listen 127.0.0.1:8080 \
//!     --upstream http://127.0.0.1:9001 --upstream https://render.internal:9443 \
//!     --upstream h2c://127.0.0.1:9003 --upstream unix:/run/renderer.sock \
//!     [--ca-file PEM] \
//!     [--strategy round-robin|least-in-flight|p2c|ip-hash|header-hash:NAME] \
//!     [--weights 1,2,1,1] [--cache-mb 256 | --no-cache] \
//!     [--trust CIDR]... [--probe /healthz] [--threads N] \
//!     [--connect-timeout MS] [--timeout MS] [--idle-timeout MS] \
//!     [--pool-idle-timeout MS] [--metrics ADDR] [--redis redis://127.0.0.1:6379] \
//!     [--no-compress] [--no-targeted-field]
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
//! its own. Upstreams may mix `http://`, `https://` (system roots plus
//! `--ca-file`), `h2c://` (HTTP/2 prior knowledge) and `unix:/PATH`.
//! Clients may speak HTTP/1.1 or HTTP/2 (h2c) on the same port; WebSocket
//! upgrades are tunnelled (idle ones close after `--idle-timeout`, which
//! also bounds idle keep-alive connections and cuts off a response body that stalls as long).
//! Idle upstream connections close after `--pool-idle-timeout` (3 s by
//! default, below Node's 5 s keep-alive; at most `--idle-timeout`). It prints `listening on ADDR` once ready and stops cleanly on
//! Ctrl-C or SIGTERM. Try `cargo run --example renderer -- --listen
//! 127.0.0.1:9001` for upstreams.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, Uri};
use tower::Layer;
use tower_ssr::balance::{
    ActiveProbes, Endpoints, Key, LeastInFlight, PowerOfTwo, Rendezvous, RoundRobin, Strategy,
    TrustedProxies,
};
use tower_ssr::cache::{CacheLayer, ResponseCache};
use tower_ssr::proxy::{self, ReverseProxy, TlsRoots};

#[path = "support/malloc.rs"]
mod malloc;
#[path = "support/prometheus.rs"]
mod prometheus;

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    /// As spelled (the endpoint's name) and as a base URI.
    upstreams: Vec<(String, Uri)>,
    /// Extra CA bundles for `https://` upstreams.
    ca_files: Vec<String>,
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
    /// Idle tunnels and idle client keep-alive connections close after
    /// this; a response body that sends nothing for as long is cut off.
    idle_timeout: Duration,
    /// Idle pooled upstream connections close after this (at most
    /// `idle_timeout`).
    pool_idle_timeout: Duration,
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
    let mut ca_files = Vec::new();
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
    let mut idle_timeout = tower_ssr::proxy::DEFAULT_IDLE_TIMEOUT;
    let mut pool_idle_timeout = tower_ssr::proxy::DEFAULT_POOL_IDLE_TIMEOUT;
    let mut it = argv;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--upstream" => {
                let v = value()?;
                let uri = proxy::upstream(&v).map_err(|e| {
                    format!(
                        "--upstream {v}: {e} (expected http://HOST:PORT, https://HOST:PORT, \
                         h2c://HOST:PORT or unix:/PATH)"
                    )
                })?;
                upstreams.push((v, uri));
            }
            "--ca-file" => ca_files.push(value()?),
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
            "--connect-timeout" | "--timeout" | "--idle-timeout" | "--pool-idle-timeout" => {
                let v = value()?;
                let ms: u64 = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("{flag} {v}: expected milliseconds"))?;
                let d = Duration::from_millis(ms);
                match flag.as_str() {
                    "--timeout" => timeout = d,
                    "--idle-timeout" => idle_timeout = d,
                    "--pool-idle-timeout" => pool_idle_timeout = d,
                    _ => connect_timeout = d,
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
        ca_files,
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
        idle_timeout,
        pool_idle_timeout,
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
[--connect-timeout MS] [--timeout MS] [--idle-timeout MS] [--pool-idle-timeout MS] [--ca-file PEM]... \
[--metrics ADDR] [--redis URL] [--no-compress] [--no-targeted-field] \
(URL: http://HOST:PORT, https://HOST:PORT, h2c://HOST:PORT or unix:/PATH)";

fn main() {
    // Before any thread starts: glibc tuned for a cache (see the module).
    malloc::fix_mmap_threshold();
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
    for (i, (name, uri)) in args.upstreams.iter().enumerate() {
        let weight = args.weights.as_ref().map_or(1, |w| w[i]);
        upstreams.add_weighted(name, uri.clone(), weight)?;
    }
    let mut roots = TlsRoots::system();
    for file in &args.ca_files {
        roots = roots.try_add_pem_file(file)?;
    }
    // The proxy believes forwarding headers only from --trust peers, and
    // answers 431 to a header line over 16 KiB or a section over 64 KiB.
    let proxy = ReverseProxy::builder(upstreams)
        .key(key)
        .trusted_proxies(trusted)
        .connect_timeout(args.connect_timeout)
        .response_timeout(args.timeout)
        .idle_timeout(args.idle_timeout)
        .pool_idle_timeout(args.pool_idle_timeout)
        .tls_roots(roots)
        .try_build()?;
    // Probes go over the proxy's own client (its transports and CA bundle).
    let _probes = args.probe.as_deref().map(|path| {
        ActiveProbes::new()
            .interval(Duration::from_secs(5))
            .spawn(proxy.endpoints(), proxy.http_check(path))
    });

    // The cache (on by default) is a pure RFC 9111 shared cache: it stores
    // what the upstreams' own headers allow and injects no policy. With
    // --trust, forwarding headers pass it for the proxy to judge by peer.
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let idle = args.idle_timeout;
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
            proxy::serve(listener, layer.layer(proxy))
                .idle_timeout(idle)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
        }
        None => {
            proxy::serve(listener, proxy)
                .idle_timeout(idle)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
        }
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
            "--listen 127.0.0.1:1 --upstream http://h:1 --connect-timeout 1500 --timeout 2500 \
             --idle-timeout 3500",
        )
        .unwrap();
        assert_eq!(a.connect_timeout, Duration::from_millis(1500));
        assert_eq!(a.timeout, Duration::from_millis(2500));
        assert_eq!(a.idle_timeout, Duration::from_millis(3500));
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
    fn every_transport_spelling_parses_and_mixes() {
        let a = args(
            "--listen 127.0.0.1:1 --upstream http://127.0.0.1:9001 \
             --upstream https://render.test:9443 --upstream h2c://127.0.0.1:9003 \
             --upstream unix:/tmp/renderer.sock --ca-file /etc/ca.pem --weights 1,2,1,1",
        )
        .unwrap();
        let names: Vec<&str> = a.upstreams.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "http://127.0.0.1:9001",
                "https://render.test:9443",
                "h2c://127.0.0.1:9003",
                "unix:/tmp/renderer.sock"
            ]
        );
        assert_eq!(a.upstreams[2].1.scheme_str(), Some("h2c"));
        assert_eq!(a.upstreams[3].1.scheme_str(), Some("unix"));
        assert_eq!(a.ca_files, ["/etc/ca.pem"]);
        assert_eq!(a.idle_timeout, tower_ssr::proxy::DEFAULT_IDLE_TIMEOUT);
        assert_eq!(
            a.pool_idle_timeout,
            tower_ssr::proxy::DEFAULT_POOL_IDLE_TIMEOUT
        );
        let a =
            args("--listen 127.0.0.1:1 --upstream http://h:1 --pool-idle-timeout 1500").unwrap();
        assert_eq!(a.pool_idle_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(args("--listen 127.0.0.1:1 --upstream unix:relative.sock").is_err());
        assert!(args("--listen 127.0.0.1:1 --upstream h2c://h").is_err());
        assert!(args("--listen 127.0.0.1:1 --upstream http://h:1 --idle-timeout 0").is_err());
        assert!(args("--listen 127.0.0.1:1 --upstream http://h:1 --ca-file").is_err());
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
