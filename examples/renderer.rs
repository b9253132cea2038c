//! A stand-in SSR renderer process, for the proxy's tests and benchmarks.
//!
//! ```text
//! cargo run --release --example renderer -- --listen 127.0.0.1:9001 [--name r1] [--bytes 8192] [--render-us 0]
//! ```
//!
//! Every path answers a deterministic HTML page of about `--bytes` bytes,
//! after `--render-us` microseconds of CPU, with `X-Upstream: NAME`;
//! `/healthz` answers `ok`. It prints `listening on ADDR` once ready and
//! stops on Ctrl-C.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

struct Args {
    listen: SocketAddr,
    name: String,
    bytes: usize,
    render: Duration,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 9001)),
        name: String::new(),
        bytes: 8192,
        render: Duration::ZERO,
    };
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
            other => return Err(format!("unknown flag {other}")),
        }
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
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("serve");
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
