//! What every answer of the cache reports: its [`CacheOutcome`] as a
//! response extension and a metric, a `Server-Timing` entry when enabled,
//! and a `debug` event. One call per answer, from `service/`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, HeaderValue, AGE};
use http::Response;

use super::entry::CACHE_STATUS;
use super::layer::Config;
use super::outcome::CacheOutcome;

/// `Server-Timing` (W3C Server Timing).
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// Reports one answer and tags the response with its outcome. `upstream`
/// is how long the inner service took to answer this request's own call,
/// when it made one.
#[inline]
pub(crate) fn seen<B>(
    config: &Config,
    mut res: Response<B>,
    outcome: CacheOutcome,
    upstream: Option<Duration>,
) -> Response<B> {
    config.metrics.outcome(outcome);
    if config.server_timing {
        server_timing(res.headers_mut(), outcome, upstream);
    }
    tracing::debug!(
        target: "tower_ssr::cache",
        cache = %config.name,
        outcome = outcome.as_str(),
        status = res.status().as_u16(),
        cache_status = ?res.headers().get_all(CACHE_STATUS).iter().next_back(),
        age = ?res.headers().get(AGE),
        upstream_ms = upstream.map(|d| d.as_secs_f64() * 1000.0),
        "cache decision"
    );
    res.extensions_mut().insert(outcome);
    res
}

/// [`seen`] for the answers of `fetch`; a background refresh's answer
/// goes to no client: only a `debug` event.
pub(crate) fn fetched<B>(
    config: &Config,
    res: Response<B>,
    outcome: CacheOutcome,
    upstream: Option<Duration>,
    refresh: bool,
) -> Response<B> {
    if refresh {
        tracing::debug!(
            target: "tower_ssr::cache",
            outcome = outcome.as_str(),
            status = res.status().as_u16(),
            upstream_ms = upstream.map(|d| d.as_secs_f64() * 1000.0),
            "background refresh answered"
        );
        return res;
    }
    seen(config, res, outcome, upstream)
}

/// Runs a future that forwards a request and reports its answer with the
/// time the inner service took (for forwards that return at the response
/// head: the body streams afterwards).
pub(crate) async fn forwarded<F, B, E>(
    config: Arc<Config>,
    outcome: CacheOutcome,
    forward: F,
) -> Result<Response<B>, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    let started = Instant::now();
    let res = forward.await?;
    Ok(seen(&config, res, outcome, Some(started.elapsed())))
}

/// The `debug` span a miss (and what it forwards) runs in, with a hash of
/// the key rather than the key itself (a URL is no field for every log
/// line). Computed only when the span is enabled.
pub(crate) fn miss_span(key: &str) -> tracing::Span {
    let span = tracing::debug_span!(target: "tower_ssr::cache", "cache_miss", key_hash = tracing::field::Empty);
    if !span.is_disabled() {
        span.record(
            "key_hash",
            tracing::field::display(format_args!(
                "{:016x}",
                xxhash_rust::xxh3::xxh3_64(key.as_bytes())
            )),
        );
    }
    span
}

/// The span a background refresh runs in.
pub(crate) fn refresh_span(key: &str) -> tracing::Span {
    let span = miss_span(key);
    tracing::debug_span!(target: "tower_ssr::cache", parent: &span, "cache_refresh")
}

fn desc(outcome: CacheOutcome) -> &'static str {
    match outcome {
        CacheOutcome::Hit => "cache;desc=hit",
        CacheOutcome::Stale => "cache;desc=stale",
        CacheOutcome::Miss => "cache;desc=miss",
        CacheOutcome::Bypass => "cache;desc=bypass",
        CacheOutcome::Revalidated => "cache;desc=revalidated",
        CacheOutcome::Coalesced => "cache;desc=coalesced",
    }
}

/// Adds `cache;desc=<outcome>` and, when this request called the inner
/// service, `upstream;dur=<milliseconds>`, after any entries the
/// application set (one field line: some tools read only the first).
fn server_timing(headers: &mut HeaderMap, outcome: CacheOutcome, upstream: Option<Duration>) {
    let ours = desc(outcome);
    let existing = headers.get(SERVER_TIMING).is_some();
    if !existing && upstream.is_none() {
        headers.insert(SERVER_TIMING, HeaderValue::from_static(ours));
        return;
    }
    let mut value = String::with_capacity(64);
    for line in headers.get_all(SERVER_TIMING) {
        if let Ok(line) = line.to_str() {
            let line = line.trim();
            if !line.is_empty() {
                value.push_str(line);
                value.push_str(", ");
            }
        }
    }
    value.push_str(ours);
    if let Some(d) = upstream {
        use std::fmt::Write;
        let _ = write!(value, ", upstream;dur={:.1}", d.as_secs_f64() * 1000.0);
    }
    // Built from valid header values and ASCII: cannot fail.
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(SERVER_TIMING, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(headers: &HeaderMap) -> Vec<&str> {
        headers
            .get_all(SERVER_TIMING)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn hit_gets_cache_desc_only() {
        let mut h = HeaderMap::new();
        server_timing(&mut h, CacheOutcome::Hit, None);
        assert_eq!(timing(&h), ["cache;desc=hit"]);
    }

    #[test]
    fn forwarded_gets_upstream_duration_in_milliseconds() {
        let mut h = HeaderMap::new();
        server_timing(
            &mut h,
            CacheOutcome::Miss,
            Some(Duration::from_micros(12_345)),
        );
        assert_eq!(timing(&h), ["cache;desc=miss, upstream;dur=12.3"]);
    }

    #[test]
    fn application_entries_are_kept_first_in_one_line() {
        let mut h = HeaderMap::new();
        h.append(SERVER_TIMING, HeaderValue::from_static("db;dur=53"));
        h.append(SERVER_TIMING, HeaderValue::from_static("render;dur=8.1"));
        server_timing(&mut h, CacheOutcome::Stale, None);
        assert_eq!(timing(&h), ["db;dur=53, render;dur=8.1, cache;desc=stale"]);
    }
}
