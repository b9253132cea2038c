//! A stand-in SSR renderer process, for the proxy's tests and benchmarks.
//!
//! ```text
//! cargo run --release --example renderer -- --listen 127.0.0.1:9001 [--name r1] [--bytes 8192] [--render-us 0] \
//!     [--tls-cert cert.pem --tls-key key.pem [--h2]]
//! ```
//!
//! Every path answers a deterministic HTML page of about `--bytes` bytes,
//! after `--render-us` microseconds of CPU, with `X-Upstream: NAME`;
//! `/healthz` answers `ok`. It prints `listening on ADDR` once ready and
//! stops on Ctrl-C.
//!
//! With `--tls-cert` and `--tls-key` (PEM: the certificate chain, then its
//! private key) it serves HTTPS only, with rustls on the ring provider, and
//! offers ALPN `http/1.1` alone, so every client speaks HTTP/1.1 over TLS
//! (`--h2` offers `h2` first as well). It prints one line per handshake
//! (`tls: TLSv1_3 TLS13_AES_256_GCM_SHA384 alpn=http/1.1 sni=- Full`), so a
//! benchmark can count handshakes and resumptions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

struct Args {
    listen: SocketAddr,
    name: String,
    bytes: usize,
    render: Duration,
    /// `--tls-cert` and `--tls-key`: serve HTTPS instead of HTTP.
    tls: Option<(String, String)>,
    /// `--h2`: ALPN offers `h2` before `http/1.1` (TLS only).
    h2: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
        name: String::new(),
        bytes: 8192,
        render: Duration::ZERO,
        tls: None,
        h2: false,
    };
    let (mut cert, mut key) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--name" => args.name = value()?,
            "--bytes" => args.bytes = value()?.parse().map_err(|e| format!("--bytes: {e}"))?,
            "--render-us" => {
                args.render = Duration::from_micros(
                    value()?.parse().map_err(|e| format!("--render-us: {e}"))?,
                )
            }
            "--tls-cert" => cert = Some(value()?),
            "--tls-key" => key = Some(value()?),
            "--h2" => args.h2 = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    args.tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    if args.h2 && args.tls.is_none() {
        return Err("--h2 needs --tls-cert and --tls-key".into());
    }
    if args.name.is_empty() {
        args.name = args.listen.to_string();
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("renderer: {e}");
            std::process::exit(2);
        }
    };
    let tls = match &args.tls {
        Some((cert, key)) => match tls_acceptor(cert, key, args.h2) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("renderer: {e}");
                std::process::exit(2);
            }
        },
        None => None,
    };
    let name = HeaderValue::from_str(&args.name).expect("--name must be a header value");
    let page: &'static str = Box::leak(page(args.bytes).into_boxed_str());
    let render = args.render;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .fallback(move || async move {
            // Spin rather than sleep: a render costs CPU, not waiting.
            let start = Instant::now();
            while start.elapsed() < render {
                std::hint::spin_loop();
            }
            let mut res: Response = Html(page).into_response();
            res.headers_mut().insert("x-upstream", name.clone());
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, s-maxage=60"),
            );
            res
        });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .expect("bind");
    println!(
        "listening on {}",
        listener.local_addr().expect("local addr")
    );
    match tls {
        Some(acceptor) => serve_tls(listener, app, acceptor).await,
        None => axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .expect("serve"),
    }
}

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3, the
/// library's default session cache and TLS 1.3 tickets) for the PEM files.
fn tls_acceptor(cert: &str, key: &str, h2: bool) -> Result<tokio_rustls::TlsAcceptor, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {cert}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {cert}: no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {key}: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// `axum::serve` over TLS: the same hyper-util connection builder, after a
/// rustls handshake. Ctrl-C stops accepting.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
            _ = &mut stop => return,
        };
        // A response can leave in more than one TLS record; Nagle would
        // hold the last one back until the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("tls: handshake failed: {e}");
                    return;
                }
            };
            let conn = tls.get_ref().1;
            let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            println!(
                "tls: {} {} alpn={} sni={} {}",
                or_dash(conn.protocol_version().map(|v| format!("{v:?}"))),
                or_dash(
                    conn.negotiated_cipher_suite()
                        .map(|s| format!("{:?}", s.suite()))
                ),
                or_dash(
                    conn.alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                ),
                conn.server_name().unwrap_or("-"),
                or_dash(conn.handshake_kind().map(|k| format!("{k:?}"))),
            );
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(app))
                .await;
        });
    }
}

fn page(bytes: usize) -> String {
    let mut html =
        String::from("<!doctype html><html><head><title>page</title></head><body><main>");
    let mut i = 0;
    while html.len() + 24 < bytes {
        html.push_str(&format!("<p>paragraph {i}</p>"));
        i += 1;
    }
    html.push_str("</main></body></html>\n");
    html
}
