//! A hit through `CacheLayer` beside the moka lookup written in a handler
//! that sends the same headers (and beside the same handler also tagging
//! its response with the `CacheOutcome` extension, as the layer does),
//! measured side by side: short batches of each, in rotating order, many
//! rounds; the figures are the medians of the per-round ratios. On a shared
//! machine whose speed drifts by tens of percent within seconds,
//! criterion's medians measured a minute apart give a ratio that moves more
//! than the difference sought; a ratio taken within one round of some
//! milliseconds does not see the drift.
//!
//! ```text
//! cargo bench --bench hit_side_by_side
//! ROUNDS=300 BATCH=20000 cargo bench --bench hit_side_by_side
//! # steadier across builds: the whole program optimised as one unit
//! CARGO_PROFILE_BENCH_LTO=fat CARGO_PROFILE_BENCH_CODEGEN_UNITS=1 \
//!   cargo bench --bench hit_side_by_side
//! ```
//!
//! With the default profile (16 codegen units) the ratio moves by several
//! per cent between two builds that execute the same instructions (code
//! placement and inlining); see BENCHMARKS.md.
//!
//! Prints the median time per hit of each and the median, first and third
//! quartile of the ratios layer / handler.

mod support;

use std::hint::black_box;
use std::time::Instant;

use support::hit::{layered_with_page, page, request, same_headers_handler, same_response_handler};
use support::{block_on, drain};
use tower::Service;
use tower_ssr::cache::ResponseCache;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nanoseconds per call of `f` over `n` calls.
fn batch(n: usize, f: &mut dyn FnMut() -> usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        black_box(f());
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn main() {
    let rounds = env("ROUNDS", 100);
    let n = env("BATCH", 10_000);
    let body = page();
    let mut headers = same_headers_handler(body.clone());
    let mut response = same_response_handler(body.clone());
    let cache = ResponseCache::new();
    let mut layered = layered_with_page(cache.clone(), body);

    let mut runs: [(&str, Box<dyn FnMut() -> usize>); 3] = [
        (
            "hit/moka_in_handler_same_headers",
            Box::new(move || {
                drain(
                    block_on(headers.call(request("/posts/1")))
                        .unwrap()
                        .into_body(),
                )
            }),
        ),
        (
            "hit/moka_in_handler_same_response",
            Box::new(move || {
                drain(
                    block_on(response.call(request("/posts/1")))
                        .unwrap()
                        .into_body(),
                )
            }),
        ),
        (
            "hit/layer",
            Box::new(move || {
                drain(
                    block_on(layered.call(request("/posts/1")))
                        .unwrap()
                        .into_body(),
                )
            }),
        ),
    ];

    // Warm all: caches, allocator pools, branch predictors.
    for _ in 0..5 {
        for (_, f) in runs.iter_mut() {
            batch(n, f.as_mut());
        }
    }
    let mut times: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        let mut this = [0.0; 3];
        // Rotate the order so that no service always runs first.
        for k in 0..3 {
            let i = (round + k) % 3;
            this[i] = batch(n, runs[i].1.as_mut());
        }
        for i in 0..3 {
            times[i].push(this[i]);
        }
    }
    assert!(cache.stats().hits as usize >= rounds * n);
    println!("{rounds} rounds of {n} hits each, order rotating");
    for (i, (name, _)) in runs.iter().enumerate() {
        println!(
            "{name:<36} median {:>8.1} ns",
            quantile(&sorted(times[i].clone()), 0.5)
        );
    }
    for (i, against) in [(0, "same_headers"), (1, "same_response")] {
        let ratio = sorted(times[2].iter().zip(&times[i]).map(|(l, h)| l / h).collect());
        println!(
            "ratio layer / {against:<14} median {:.3}  (quartiles {:.3} .. {:.3})",
            quantile(&ratio, 0.5),
            quantile(&ratio, 0.25),
            quantile(&ratio, 0.75)
        );
    }
}
