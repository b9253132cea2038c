use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use tower_layer::Layer;

use super::rules::{Rule, CACHE_TAG, CDN_CACHE_CONTROL, SURROGATE_CONTROL, SURROGATE_KEY};
use super::service::CacheControl;
use crate::directives::Directives;
use crate::etag::ETagMode;

/// Bodies up to this size are buffered to hash an ETag by default.
const DEFAULT_ETAG_MAX_BODY: usize = 1024 * 1024;

/// Puts caching headers and validators on responses; see the
/// [module docs](crate::cache_control).
///
/// The layer is its own builder: every setter takes and returns `self`.
/// Building never fails; the fallible parts (globs, content types, tags) fail
/// where a [`Rule`] is built.
#[derive(Debug, Clone)]
pub struct CacheControlLayer {
    config: Arc<Config>,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) rules: Vec<Rule>,
    pub(crate) server_error: Option<Rule>,
    pub(crate) etag: ETagMode,
    pub(crate) etag_max_body: usize,
    pub(crate) last_modified: Option<(SystemTime, HeaderValue)>,
    pub(crate) conditional: bool,
    pub(crate) private_on_set_cookie: bool,
}

impl Default for CacheControlLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheControlLayer {
    /// A layer with no rules and safe defaults: 5xx responses get
    /// `no-store`, weak content ETags on bodies up to 1 MiB, conditional
    /// requests answered with 304, and `private` for responses that set a
    /// cookie.
    #[must_use]
    pub fn new() -> Self {
        CacheControlLayer {
            config: Arc::new(Config {
                rules: Vec::new(),
                server_error: Some(server_error_rule(Directives::no_store_policy())),
                etag: ETagMode::Weak,
                etag_max_body: DEFAULT_ETAG_MAX_BODY,
                last_modified: None,
                conditional: true,
                private_on_set_cookie: true,
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Adds a rule. Rules are tried **in the order added** and the first one
    /// that matches the response wins, so put specific rules before general
    /// ones (`/assets/**` before `/**`).
    #[must_use]
    pub fn rule(mut self, rule: Rule) -> Self {
        self.config().rules.push(rule);
        self
    }

    /// The `Cache-Control` for 5xx responses that no rule matched and that
    /// carry none of their own; `None` leaves them untouched. Default:
    /// `no-store`, so an error page is never cached.
    #[must_use]
    pub fn server_errors(mut self, directives: Option<Directives>) -> Self {
        self.config().server_error = directives.map(server_error_rule);
        self
    }

    /// How ETags are derived from response bodies (default
    /// [`ETagMode::Weak`]). Only `200 OK` responses to `GET` without an
    /// ETag of their own get one.
    #[must_use]
    pub fn etag(mut self, mode: ETagMode) -> Self {
        self.config().etag = mode;
        self
    }

    /// The largest body buffered to hash an ETag (default 1 MiB). A longer
    /// body streams through untouched, without an ETag.
    #[must_use]
    pub fn etag_max_body(mut self, bytes: usize) -> Self {
        self.config().etag_max_body = bytes;
        self
    }

    /// Sets `Last-Modified` on `200 OK` responses that lack one, for
    /// example to the deploy time. A time later than the response's `Date`
    /// (or now) is sent as that time instead (RFC 9110 §8.8.2.1).
    #[must_use]
    pub fn last_modified(mut self, time: SystemTime) -> Self {
        let value = HeaderValue::from_str(&httpdate::fmt_http_date(time)).ok();
        self.config().last_modified = value.map(|v| (time, v));
        self
    }

    /// Whether to answer `If-None-Match` / `If-Modified-Since` on `GET` and
    /// `HEAD` with `304 Not Modified` (default `true`).
    #[must_use]
    pub fn conditional_requests(mut self, enabled: bool) -> Self {
        self.config().conditional = enabled;
        self
    }

    /// Whether a response that sets a cookie is made `private`, with
    /// `s-maxage`, `CDN-Cache-Control`, `Surrogate-Control` and the purge
    /// tags (`Surrogate-Key`, `Cache-Tag`) removed, even when the handler
    /// set them (default `true`). Shared-cacheable responses keep their
    /// tags. A shared cache that
    /// stored it would hand one user's session to others.
    #[must_use]
    pub fn private_on_set_cookie(mut self, enabled: bool) -> Self {
        self.config().private_on_set_cookie = enabled;
        self
    }
}

fn server_error_rule(directives: Directives) -> Rule {
    Rule::any()
        .and_status_range(500..=599)
        .cache_control(directives)
}

impl<S> Layer<S> for CacheControlLayer {
    type Service = CacheControl<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheControl::from_config(inner, Arc::clone(&self.config))
    }
}

/// Which rules' path conditions matched the request: one bit a rule for the
/// first 64, which covers any real configuration without allocating.
#[derive(Debug, Clone)]
pub(crate) enum PathMatches {
    Small(u64),
    Large(Vec<bool>),
}

impl PathMatches {
    fn get(&self, i: usize) -> bool {
        match self {
            PathMatches::Small(bits) => i < 64 && bits & (1 << i) != 0,
            PathMatches::Large(v) => v.get(i).copied().unwrap_or(false),
        }
    }
}

impl Config {
    pub(crate) fn match_paths(&self, path: &str) -> PathMatches {
        if self.rules.len() <= 64 {
            let mut bits = 0u64;
            for (i, r) in self.rules.iter().enumerate() {
                if r.path_matches(path) {
                    bits |= 1 << i;
                }
            }
            PathMatches::Small(bits)
        } else {
            PathMatches::Large(self.rules.iter().map(|r| r.path_matches(path)).collect())
        }
    }

    /// Applies the first matching rule to the response head and returns the
    /// ETag mode in force for it.
    pub(crate) fn apply(
        &self,
        paths: &PathMatches,
        status: StatusCode,
        headers: &mut HeaderMap,
    ) -> ETagMode {
        let has_cookie = self.private_on_set_cookie && headers.contains_key(header::SET_COOKIE);
        let rule = self
            .rules
            .iter()
            .enumerate()
            .find(|(i, r)| paths.get(*i) && r.response_matches(status, headers))
            .map(|(_, r)| r)
            .or_else(|| {
                self.server_error
                    .as_ref()
                    .filter(|r| r.response_matches(status, headers))
            });
        if let Some(rule) = rule {
            rule.apply(headers, has_cookie);
        }
        if has_cookie {
            downgrade_existing(headers);
        }
        if status == StatusCode::OK {
            if let Some((time, value)) = &self.last_modified {
                if !headers.contains_key(header::LAST_MODIFIED) {
                    headers.insert(header::LAST_MODIFIED, clamp_to_date(*time, value, headers));
                }
            }
        }
        rule.and_then(Rule::etag_mode).unwrap_or(self.etag)
    }
}

/// Makes whatever `Cache-Control` the response now carries safe for a
/// response that sets a cookie, and drops the shared-cache targets and
/// purge tags (the handler's own too): tags only serve shared caches, and
/// on a private page they show browsers how purges are organised.
fn downgrade_existing(headers: &mut HeaderMap) {
    headers.remove(&CDN_CACHE_CONTROL);
    headers.remove(&SURROGATE_CONTROL);
    headers.remove(&SURROGATE_KEY);
    headers.remove(&CACHE_TAG);
    if headers.contains_key(header::CACHE_CONTROL) {
        let mut d = Directives::from_headers(headers);
        let before = d.clone();
        d.downgrade_to_private();
        if d != before {
            headers.insert(header::CACHE_CONTROL, d.to_header_value());
        }
    }
}

/// RFC 9110 §8.8.2.1: a Last-Modified later than the message's Date (or
/// now) must be replaced with that Date.
fn clamp_to_date(time: SystemTime, value: &HeaderValue, headers: &HeaderMap) -> HeaderValue {
    let date = headers
        .get(header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .unwrap_or_else(SystemTime::now);
    if time > date {
        HeaderValue::from_str(&httpdate::fmt_http_date(date)).unwrap_or_else(|_| value.clone())
    } else {
        value.clone()
    }
}
