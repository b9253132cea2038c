//! Balancing in-process renderer workers: no network, no proxy. One worker
//! is down; retries (on by default) move its requests to a healthy one,
//! passive health ejects it, and the stats show where requests went.
//!
//! ```text
//! cargo run --example balance_in_process
//! ```

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, BoxError, ServiceExt};
use tower_ssr::balance::{Balance, Endpoints, Key, LeastInFlight, Rendezvous};

type Body = Full<Bytes>;

/// A worker that renders, or (when `down`) fails before any response the
/// way a crashed renderer would.
fn worker(
    name: &'static str,
    down: bool,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<String>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    service_fn(move |req: Request<Body>| async move {
        if down {
            return Err::<Response<String>, BoxError>(format!("{name} is down").into());
        }
        Ok(Response::builder()
            .header("x-worker", name)
            .body(format!("{name} rendered {}", req.uri().path()))?)
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Least in-flight: each page goes to the worker with the fewest
    // requests in progress (pages stream, so in-flight lasts until the
    // body ends).
    let workers = Endpoints::new(LeastInFlight::new());
    workers.add("worker-1", worker("worker-1", false))?;
    workers.add("worker-2", worker("worker-2", true))?;
    workers.add("worker-3", worker("worker-3", false))?;
    // `Balance` is `Clone` and always ready; with nothing eligible it
    // answers 503 at once.
    let balance = Balance::new(workers.clone());

    for i in 0..12 {
        let req = Request::get(format!("/posts/{i}")).body(Full::new(Bytes::new()))?;
        let res = balance.clone().oneshot(req).await?;
        assert_eq!(res.status(), StatusCode::OK, "retries hid the dead worker");
        assert_ne!(res.headers()["x-worker"], "worker-2");
    }
    for s in workers.stats() {
        println!(
            "{:<9} requests={:<3} failures={} ejected={}",
            s.name, s.requests, s.failures, s.ejected
        );
    }

    // Consistent hashing on a header: one user always reaches one worker
    // (warm per-user caches), and requests without the header fall back.
    let sticky = Endpoints::new(Rendezvous::new());
    sticky.add("a", worker("a", false))?;
    sticky.add("b", worker("b", false))?;
    let balance = Balance::new(sticky).key(Key::header(http::HeaderName::from_static("x-user")));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let req = Request::get("/me")
            .header("x-user", "42")
            .body(Full::new(Bytes::new()))?;
        let res = balance.clone().oneshot(req).await?;
        seen.push(res.headers()["x-worker"].clone());
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "one user, one worker"
    );
    println!("user 42 always on {:?}", seen[0]);
    println!("ok");
    Ok(())
}
