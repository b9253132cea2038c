//! The forwarding-cost baseline for `scripts/bench-proxy.sh`: a reverse
//! proxy written directly on hyper + hyper-util's pooled client, round
//! robin over its upstreams, with no header work at all (no hop-by-hop
//! removal, no `Via`, no forwarding headers, no timeouts, no health).
//! Not a proxy to deploy: a floor to measure `tower_ssr::proxy` against.
//!
//! ```text
//! cargo run --release --example minimal_proxy -- 127.0.0.1:8081 \
//!     127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003
//! cargo run --release --example minimal_proxy -- 127.0.0.1:8081 \
//!     https://127.0.0.1:9001 https://127.0.0.1:9002 --ca-file ca.pem
//! ```
//!
//! An upstream is `HOST:PORT` or `http://HOST:PORT` (plain HTTP/1.1), or
//! `https://HOST:PORT`: TLS through hyper-rustls (ring provider; HTTP/1.1
//! with no ALPN, like nginx's `proxy_ssl`), trusting the system's roots
//! plus each `--ca-file PEM`.
//!
//! Single-threaded runtime (one proxy core, like nginx's one worker);
//! prints `listening on ADDR` once ready.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;
type Error = Box<dyn std::error::Error>;

const USAGE: &str = "usage: minimal_proxy LISTEN UPSTREAM... [--ca-file PEM]...";

fn main() -> Result<(), Error> {
    let mut argv = std::env::args().skip(1);
    let listen = argv.next().ok_or(USAGE)?;
    let (mut upstreams, mut ca_files) = (Vec::new(), Vec::new());
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "--ca-file" => ca_files.push(argv.next().ok_or(USAGE)?),
            _ => upstreams.push(upstream(&arg)?),
        }
    }
    if upstreams.is_empty() {
        return Err(USAGE.into());
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(listen, upstreams, &ca_files))
}

/// `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`.
fn upstream(arg: &str) -> Result<(Scheme, Authority), Error> {
    let (scheme, authority) = match arg.split_once("://") {
        Some(("http", rest)) => (Scheme::HTTP, rest),
        Some(("https", rest)) => (Scheme::HTTPS, rest),
        Some(_) => return Err(format!("{arg}: expected HOST:PORT, http:// or https://").into()),
        None => (Scheme::HTTP, arg),
    };
    Ok((scheme, authority.trim_end_matches('/').parse()?))
}

/// A pooled client for `https://` upstreams: the system's roots plus the
/// given CA bundles, rustls with the ring provider as the crate uses.
fn https_client(
    ca_files: &[String],
) -> Result<Client<HttpsConnector<HttpConnector>, Incoming>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    for file in ca_files {
        for cert in CertificateDer::pem_file_iter(file)? {
            roots.add(cert?)?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

async fn run(
    listen: String,
    upstreams: Vec<(Scheme, Authority)>,
    ca_files: &[String],
) -> Result<(), Error> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    // Plain upstreams keep the plain client: no TLS wrapper in their path.
    let tls = https_client(ca_files)?;
    let upstreams = Arc::new(upstreams);
    let next = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, tls, upstreams, next) =
            (client.clone(), tls.clone(), upstreams.clone(), next.clone());
        let svc = service_fn(move |mut req: Request<Incoming>| {
            let i = next.fetch_add(1, Ordering::Relaxed) % upstreams.len();
            let (scheme, authority) = &upstreams[i];
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = Some(scheme.clone());
            parts.authority = Some(authority.clone());
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            let res = if *scheme == Scheme::HTTPS {
                tls.request(req)
            } else {
                client.request(req)
            };
            async move {
                Ok::<_, Infallible>(match res.await {
                    Ok(res) => res.map(BodyExt::boxed_unsync),
                    Err(_) => {
                        let mut res =
                            Response::new(Body::new(Empty::new().map_err(|e| match e {})));
                        *res.status_mut() = StatusCode::BAD_GATEWAY;
                        res
                    }
                })
            }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
