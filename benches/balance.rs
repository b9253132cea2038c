//! Pick cost of each balancing strategy, and a whole balanced call beside
//! tower's P2C balancer over the same services, in one run.
//!
//! ```text
//! cargo bench --bench balance
//! ```

mod support;

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::sync::Barrier;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{Request, Response};
use support::block_on;
use tower::balance::p2c;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::Service;
use tower_ssr::balance::{
    hash_key, Balance, Endpoints, LeastInFlight, Maglev, PowerOfTwo, Rendezvous, Retries,
    RoundRobin, Strategy,
};

/// A renderer that answers at once: what is measured is the balancer.
#[derive(Clone, Copy)]
struct Instant200;

impl Service<Request<String>> for Instant200 {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<String>) -> Self::Future {
        ready(Ok(Response::new(String::new())))
    }
}

const SIZES: [usize; 3] = [4, 16, 64];

fn set_of<S: Strategy>(strategy: S, n: usize) -> Endpoints<Instant200> {
    let set = Endpoints::new(strategy);
    for i in 0..n {
        set.add(&format!("http://10.0.0.{i}:3000"), Instant200)
            .unwrap();
    }
    set
}

fn strategies(n: usize) -> Vec<(&'static str, Endpoints<Instant200>, bool)> {
    vec![
        ("round_robin", set_of(RoundRobin::new(), n), false),
        ("least_in_flight", set_of(LeastInFlight::new(), n), false),
        ("p2c", set_of(PowerOfTwo::with_seed(1), n), false),
        ("rendezvous", set_of(Rendezvous::new(), n), true),
        ("maglev", set_of(Maglev::new(), n), true),
    ]
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for n in SIZES {
        for (name, set, keyed) in strategies(n) {
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                let mut k = 0u64;
                b.iter(|| {
                    k = k.wrapping_add(1);
                    let key = keyed.then(|| hash_key(&k.to_le_bytes()));
                    black_box(set.pick(black_box(key)))
                });
            });
        }
    }
    g.finish();
}

/// Two threads picking from one shared set at once; the time per pick as
/// each thread sees it.
fn pick_contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick_2_threads");
    for n in SIZES {
        for (name, set, keyed) in strategies(n) {
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let barrier = Barrier::new(2);
                    let run = |seed: u64| {
                        barrier.wait();
                        let start = Instant::now();
                        for k in 0..iters {
                            let key = keyed.then(|| hash_key(&(k ^ seed).to_le_bytes()));
                            black_box(set.pick(black_box(key)));
                        }
                        start.elapsed()
                    };
                    let times: Vec<Duration> = std::thread::scope(|s| {
                        let t = s.spawn(|| run(1 << 40));
                        let mine = run(0);
                        vec![mine, t.join().unwrap()]
                    });
                    times.into_iter().max().unwrap_or_default()
                });
            });
        }
    }
    g.finish();
}

/// A whole call through the balancer: pick, in-flight count, the inner
/// call, the response body wrapper. Beside tower's P2C over
/// `PendingRequests` (its load metric closest to in-flight), driven the
/// way tower requires: `poll_ready`, then `call`.
fn call(c: &mut Criterion) {
    let mut g = c.benchmark_group("call");
    for n in SIZES {
        // Without retries (they are on by default): the pick alone.
        let mut ours = Balance::new(set_of(PowerOfTwo::with_seed(1), n)).retries(Retries::none());
        g.bench_with_input(BenchmarkId::new("tower_ssr_p2c", n), &n, |b, _| {
            b.iter(|| {
                let res = block_on(ours.call(Request::new(String::new()))).unwrap();
                black_box(res)
            });
        });
        // With retries, the default of every entry point: a copy of each
        // GET is kept for a retry.
        let mut ours_plain =
            Balance::new(set_of(PowerOfTwo::with_seed(1), n)).retries(Retries::new());
        g.bench_with_input(
            BenchmarkId::new("tower_ssr_p2c_with_retries", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let res = block_on(ours_plain.call(Request::new(String::new()))).unwrap();
                    black_box(res)
                });
            },
        );
        let mut ours_rr = Balance::new(set_of(RoundRobin::new(), n)).retries(Retries::none());
        g.bench_with_input(BenchmarkId::new("tower_ssr_round_robin", n), &n, |b, _| {
            b.iter(|| {
                let res = block_on(ours_rr.call(Request::new(String::new()))).unwrap();
                black_box(res)
            });
        });
        let services: Vec<_> = (0..n)
            .map(|_| PendingRequests::new(Instant200, CompleteOnResponse::default()))
            .collect();
        let mut tower_p2c = p2c::Balance::new(ServiceList::new(services));
        g.bench_with_input(
            BenchmarkId::new("tower_p2c_pending_requests", n),
            &n,
            |b, _| {
                b.iter(|| {
                    block_on(std::future::poll_fn(|cx| tower_p2c.poll_ready(cx))).unwrap();
                    let res = block_on(tower_p2c.call(Request::new(String::new()))).unwrap();
                    black_box(res)
                });
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = pick, pick_contended, call
}
criterion_main!(benches);
