//! Shared by the examples: installs the Prometheus recorder and serves its
//! text on `GET /metrics` of a listener of its own. The library only emits
//! through the `metrics` facade; exporting is the application's choice.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Upstream latency buckets, in seconds: a render takes milliseconds to a
/// few seconds. Without buckets the exporter would send a summary, and
/// Grafana's `histogram_quantile` needs `_bucket` series.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the recorder (before any layer is built, so every handle binds
/// to it) and serves `/metrics` on `addr`; returns the bound address.
pub(crate) async fn serve_metrics(
    addr: SocketAddr,
) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(tower_ssr::metrics::UPSTREAM_REQUEST_DURATION_SECONDS.into()),
            &BUCKETS,
        )?
        .install_recorder()?;
    tower_ssr::metrics::describe();
    let bound = listener.local_addr()?;
    // Histograms are drained on each render; upkeep bounds them between
    // scrapes.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let res = if req.uri().path() == "/metrics" {
                    Response::builder()
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::<bytes::Bytes>::from(handle.render()))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::<bytes::Bytes>::from("try /metrics\n"))
                };
                async move { res }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}
