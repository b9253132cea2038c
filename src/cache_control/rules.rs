//! Rules: which responses get which caching headers.

use std::fmt;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::glob::{InvalidGlob, PathGlob};
use crate::directives::Directives;
use crate::etag::ETagMode;

pub(crate) use crate::etag::{CACHE_TAG, CDN_CACHE_CONTROL, SURROGATE_CONTROL, SURROGATE_KEY};

/// One caching policy and the responses it applies to.
///
/// A rule matches on the request path ([`Rule::path`], a [`PathGlob`]), the
/// response's `Content-Type` ([`Rule::content_type`]) and its status
/// ([`Rule::status`]); each condition left unset matches anything. What it
/// sets: `Cache-Control`, `CDN-Cache-Control` (RFC 9213), `Surrogate-Control`,
/// `Expires`, `Vary` and tags.
///
/// **Status.** A *cacheable* policy (one without `no-store`) applies only to
/// successful (2xx) and redirect (3xx) responses unless the rule names
/// statuses itself, so a 404 never inherits a one-year asset policy. A
/// policy with `no-store` applies to every status.
///
/// **Existing headers.** The handler's own header wins: a rule fills in only
/// the fields the response lacks, unless [`Rule::override_existing`] is set.
/// `Vary` is always merged, token by token.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use http::header::ACCEPT_LANGUAGE;
/// use tower_ssr::cache_control::{Directives, Rule};
///
/// let pages = Rule::path("/posts/*")?
///     .and_content_type("text/html")?
///     .cache_control(Directives::new().public().s_maxage(Duration::from_secs(60)))
///     .vary(ACCEPT_LANGUAGE)
///     .tags(["posts"])?;
/// # Ok::<(), tower_ssr::cache_control::InvalidRule>(())
/// ```
#[derive(Debug, Clone)]
pub struct Rule {
    path: Option<PathGlob>,
    content_types: Vec<MediaRange>,
    statuses: Vec<(u16, u16)>,
    cache_control: Option<Targeted>,
    cdn_cache_control: Option<HeaderValue>,
    surrogate_control: Option<HeaderValue>,
    expires: bool,
    vary: Vec<HeaderName>,
    tags: Option<(HeaderValue, HeaderValue)>,
    override_existing: bool,
    etag: Option<ETagMode>,
}

/// A `Cache-Control` policy with its values formatted once, when the rule is
/// built, so that no request pays for formatting.
#[derive(Debug, Clone)]
struct Targeted {
    directives: Directives,
    value: HeaderValue,
    /// The same policy downgraded for a response that sets a cookie.
    private_value: HeaderValue,
}

impl Targeted {
    fn new(directives: Directives) -> Self {
        let mut private = directives.clone();
        private.downgrade_to_private();
        Targeted {
            value: directives.to_header_value(),
            private_value: private.to_header_value(),
            directives,
        }
    }
}

/// A `type/subtype` or `type/*` pattern, lowercase.
#[derive(Debug, Clone)]
struct MediaRange {
    kind: String,
    /// `None` for `type/*`.
    subtype: Option<String>,
}

/// Why a rule could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRule {
    kind: InvalidRuleKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum InvalidRuleKind {
    Glob(InvalidGlob),
    ContentType(String),
    Tag(String),
}

/// What was wrong with a rule, to match on: [`InvalidRule::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleErrorKind {
    /// The path glob ([`InvalidRule::glob`] has the details).
    Glob,
    /// The content-type pattern is not `type/subtype` or `type/*`.
    ContentType,
    /// A purge tag is empty or holds a space, a comma or a non-visible
    /// character.
    Tag,
}

impl InvalidRule {
    /// Which part of the rule was invalid.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_ssr::cache_control::{Rule, RuleErrorKind};
    ///
    /// let err = Rule::any().tags(["two words"]).unwrap_err();
    /// assert_eq!(err.kind(), RuleErrorKind::Tag);
    /// let err = Rule::path("no-slash").unwrap_err();
    /// assert_eq!(err.kind(), RuleErrorKind::Glob);
    /// assert_eq!(err.glob().map(|g| g.pattern()), Some("no-slash"));
    /// ```
    #[must_use]
    pub fn kind(&self) -> RuleErrorKind {
        match self.kind {
            InvalidRuleKind::Glob(_) => RuleErrorKind::Glob,
            InvalidRuleKind::ContentType(_) => RuleErrorKind::ContentType,
            InvalidRuleKind::Tag(_) => RuleErrorKind::Tag,
        }
    }

    /// The glob error, when the path glob was invalid.
    #[must_use]
    pub fn glob(&self) -> Option<&InvalidGlob> {
        match &self.kind {
            InvalidRuleKind::Glob(g) => Some(g),
            _ => None,
        }
    }
}

impl fmt::Display for InvalidRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            InvalidRuleKind::Glob(e) => write!(f, "invalid rule: {e}"),
            InvalidRuleKind::ContentType(c) => {
                write!(
                    f,
                    "invalid rule: {c:?} is not a `type/subtype` or `type/*` pattern"
                )
            }
            InvalidRuleKind::Tag(t) => write!(
                f,
                "invalid rule: tag {t:?} must be non-empty visible ASCII without spaces or commas"
            ),
        }
    }
}

impl std::error::Error for InvalidRule {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            InvalidRuleKind::Glob(e) => Some(e),
            _ => None,
        }
    }
}

impl From<InvalidGlob> for InvalidRule {
    fn from(e: InvalidGlob) -> Self {
        InvalidRule {
            kind: InvalidRuleKind::Glob(e),
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(crate::directives::is_tchar)
}

impl MediaRange {
    fn parse(pattern: &str) -> Result<Self, InvalidRule> {
        let err = || InvalidRule {
            kind: InvalidRuleKind::ContentType(pattern.to_owned()),
        };
        let lower = pattern.trim().to_ascii_lowercase();
        let (kind, sub) = lower.split_once('/').ok_or_else(err)?;
        if !is_token(kind) || kind == "*" {
            return Err(err());
        }
        let subtype = match sub {
            "*" => None,
            s if is_token(s) => Some(s.to_owned()),
            _ => return Err(err()),
        };
        Ok(MediaRange {
            kind: kind.to_owned(),
            subtype,
        })
    }

    /// Compares with the essence of a `Content-Type` (parameters dropped),
    /// case-insensitively (RFC 9110 §8.3.1).
    fn matches(&self, content_type: &[u8]) -> bool {
        let essence = content_type
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let mut parts = essence.splitn(2, |&b| b == b'/');
        let (Some(kind), Some(sub)) = (parts.next(), parts.next()) else {
            return false;
        };
        kind.eq_ignore_ascii_case(self.kind.as_bytes())
            && self
                .subtype
                .as_ref()
                .map_or(true, |s| sub.eq_ignore_ascii_case(s.as_bytes()))
    }
}

impl Default for Rule {
    fn default() -> Self {
        Self::any()
    }
}

impl Rule {
    /// A rule that matches every path and content type.
    #[must_use]
    pub fn any() -> Self {
        Rule {
            path: None,
            content_types: Vec::new(),
            statuses: Vec::new(),
            cache_control: None,
            cdn_cache_control: None,
            surrogate_control: None,
            expires: false,
            vary: Vec::new(),
            tags: None,
            override_existing: false,
            etag: None,
        }
    }

    /// A rule for request paths matching `glob`; see [`PathGlob`].
    ///
    /// # Errors
    ///
    /// When `glob` is not a valid [`PathGlob`].
    pub fn path(glob: &str) -> Result<Self, InvalidRule> {
        Self::any().and_path(glob)
    }

    /// A rule for responses whose `Content-Type` matches `pattern`:
    /// `text/html` (parameters such as `charset` are ignored) or `image/*`.
    ///
    /// # Errors
    ///
    /// When `pattern` is not `type/subtype` or `type/*`.
    pub fn content_type(pattern: &str) -> Result<Self, InvalidRule> {
        Self::any().and_content_type(pattern)
    }

    /// A rule for responses with this status.
    #[must_use]
    pub fn status(status: StatusCode) -> Self {
        Self::any().and_status(status)
    }

    /// Also requires the request path to match `glob` (replacing any earlier
    /// path condition).
    ///
    /// # Errors
    ///
    /// When `glob` is not a valid [`PathGlob`].
    pub fn and_path(mut self, glob: &str) -> Result<Self, InvalidRule> {
        self.path = Some(PathGlob::new(glob)?);
        Ok(self)
    }

    /// Also requires the response's `Content-Type` to match `pattern`; calls
    /// add alternatives (any one may match).
    ///
    /// # Errors
    ///
    /// When `pattern` is not `type/subtype` or `type/*`.
    pub fn and_content_type(mut self, pattern: &str) -> Result<Self, InvalidRule> {
        self.content_types.push(MediaRange::parse(pattern)?);
        Ok(self)
    }

    /// Names a status this rule applies to; calls add alternatives. Naming
    /// statuses lifts the default limit to 2xx and 3xx.
    #[must_use]
    pub fn and_status(mut self, status: StatusCode) -> Self {
        self.statuses.push((status.as_u16(), status.as_u16()));
        self
    }

    /// Names an inclusive range of statuses this rule applies to, such as
    /// `404..=404` or `400..=499`.
    #[must_use]
    pub fn and_status_range(mut self, range: std::ops::RangeInclusive<u16>) -> Self {
        self.statuses.push((*range.start(), *range.end()));
        self
    }

    /// Sets `Cache-Control`.
    #[must_use]
    pub fn cache_control(mut self, directives: Directives) -> Self {
        self.cache_control = Some(Targeted::new(directives));
        self
    }

    /// Sets `CDN-Cache-Control` (RFC 9213), written as a structured-field
    /// Dictionary. Extension directives that a Dictionary cannot carry are
    /// left out, and an empty policy sets nothing.
    #[must_use]
    #[allow(clippy::needless_pass_by_value)] // by value, like `cache_control`
    pub fn cdn_cache_control(mut self, directives: Directives) -> Self {
        self.cdn_cache_control = directives.to_targeted_value();
        self
    }

    /// Sets `Surrogate-Control` (Edge Architecture Specification), read by
    /// Fastly and Akamai.
    #[must_use]
    #[allow(clippy::needless_pass_by_value)] // by value, like `cache_control`
    pub fn surrogate_control(mut self, directives: Directives) -> Self {
        self.surrogate_control = Some(directives.to_header_value()).filter(|v| !v.is_empty());
        self
    }

    /// Also sets `Expires` to the response time plus the `max-age` of this
    /// rule's `Cache-Control`, for HTTP/1.0 caches (RFC 9111 §5.3). Has no
    /// effect without a `max-age`.
    #[must_use]
    pub fn expires(mut self) -> Self {
        self.expires = true;
        self
    }

    /// Adds a request header to `Vary`, merged with the response's own
    /// `Vary` token by token, case-insensitively, never duplicated. A
    /// `Vary: *` response is left as it is.
    #[must_use]
    pub fn vary(mut self, name: HeaderName) -> Self {
        if !self.vary.contains(&name) {
            self.vary.push(name);
        }
        self
    }

    /// Tags the response for purging, as `Surrogate-Key` (space-separated,
    /// Fastly) and `Cache-Tag` (comma-separated, Cloudflare). The cache
    /// layer reads either to purge by tag.
    ///
    /// # Errors
    ///
    /// When a tag is empty or holds a space, a comma or a non-visible
    /// character.
    pub fn tags<I, T>(mut self, tags: I) -> Result<Self, InvalidRule>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let mut list = Vec::new();
        for tag in tags {
            let tag = tag.as_ref();
            if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                return Err(InvalidRule {
                    kind: InvalidRuleKind::Tag(tag.to_owned()),
                });
            }
            list.push(tag.to_owned());
        }
        self.tags = if list.is_empty() {
            None
        } else {
            // Checked above: visible ASCII only, so both values are valid.
            let keys = HeaderValue::from_str(&list.join(" "));
            let tags = HeaderValue::from_str(&list.join(","));
            keys.ok().zip(tags.ok())
        };
        Ok(self)
    }

    /// Lets this rule replace headers the handler set itself. Without it,
    /// the handler's header wins.
    #[must_use]
    pub fn override_existing(mut self) -> Self {
        self.override_existing = true;
        self
    }

    /// Overrides the layer's ETag mode for responses this rule matches, for
    /// example [`ETagMode::Off`] for streamed pages whose first bytes must not
    /// wait for hashing.
    #[must_use]
    pub fn etag(mut self, mode: ETagMode) -> Self {
        self.etag = Some(mode);
        self
    }

    pub(crate) fn etag_mode(&self) -> Option<ETagMode> {
        self.etag
    }

    pub(crate) fn path_matches(&self, path: &str) -> bool {
        self.path.as_ref().map_or(true, |g| g.matches(path))
    }

    /// Whether the rule applies to a response; the path was checked before
    /// the request went in.
    pub(crate) fn response_matches(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if !self.content_types.is_empty() {
            let Some(ct) = headers.get(header::CONTENT_TYPE) else {
                return false;
            };
            if !self.content_types.iter().any(|m| m.matches(ct.as_bytes())) {
                return false;
            }
        }
        let code = status.as_u16();
        if self.statuses.is_empty() {
            let cacheable = self
                .cache_control
                .as_ref()
                .map_or(true, |t| !t.directives.is_no_store());
            !cacheable || status.is_success() || status.is_redirection()
        } else {
            self.statuses
                .iter()
                .any(|&(lo, hi)| (lo..=hi).contains(&code))
        }
    }

    /// Writes this rule's headers into `headers`.
    pub(crate) fn apply(&self, headers: &mut HeaderMap, has_cookie: bool) {
        let over = self.override_existing;
        // One lookup per field; `insert` on an occupied entry replaces every
        // line, so a second line is never appended.
        let set = |headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue| -> bool {
            match headers.entry(name) {
                header::Entry::Vacant(e) => {
                    e.insert(value.clone());
                    true
                }
                header::Entry::Occupied(mut e) if over => {
                    e.insert(value.clone());
                    true
                }
                header::Entry::Occupied(_) => false,
            }
        };
        if let Some(cc) = &self.cache_control {
            let value = if has_cookie {
                &cc.private_value
            } else {
                &cc.value
            };
            let wrote = set(headers, &header::CACHE_CONTROL, value);
            if wrote && self.expires {
                if let Some(age) = cc.directives.max_age_secs() {
                    set(headers, &header::EXPIRES, &crate::date::http_date_in(age));
                }
            }
        }
        // Shared-cache targets are pointless (and unsafe) on a response that
        // sets a cookie; the layer also removes the handler's own.
        if !has_cookie {
            if let Some(v) = &self.cdn_cache_control {
                set(headers, &CDN_CACHE_CONTROL, v);
            }
            if let Some(v) = &self.surrogate_control {
                set(headers, &SURROGATE_CONTROL, v);
            }
        }
        // Purge tags are for shared caches: on a private page they would
        // only show browsers the purge topology.
        if let Some((keys, tags)) = self.tags.as_ref().filter(|_| !has_cookie) {
            set(headers, &SURROGATE_KEY, keys);
            set(headers, &CACHE_TAG, tags);
        }
        if !self.vary.is_empty() {
            merge_vary(headers, &self.vary);
        }
    }
}

/// Merges `names` into `Vary`, token-wise and case-insensitively (RFC 9110
/// §12.5.5), keeping what is there in order and never duplicating a name.
pub(crate) fn merge_vary(headers: &mut HeaderMap, names: &[HeaderName]) {
    let mut existing: Vec<&[u8]> = Vec::new();
    for line in headers.get_all(header::VARY) {
        for token in line.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token == b"*" {
                return;
            }
            if !token.is_empty() {
                existing.push(token);
            }
        }
    }
    let missing: Vec<&HeaderName> = names
        .iter()
        .filter(|n| {
            !existing
                .iter()
                .any(|e| e.eq_ignore_ascii_case(n.as_str().as_bytes()))
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    let mut out: Vec<u8> = Vec::new();
    for token in existing
        .iter()
        .copied()
        .chain(missing.iter().map(|n| n.as_str().as_bytes()))
    {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(token);
    }
    if let Ok(v) = HeaderValue::from_bytes(&out) {
        headers.insert(header::VARY, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::test_helpers::headers;

    #[test]
    fn cacheable_rule_skips_client_and_server_errors() {
        let rule = Rule::any().cache_control(Directives::immutable_asset());
        let h = HeaderMap::new();
        assert!(rule.response_matches(StatusCode::OK, &h));
        assert!(rule.response_matches(StatusCode::MOVED_PERMANENTLY, &h));
        assert!(!rule.response_matches(StatusCode::NOT_FOUND, &h));
        assert!(!rule.response_matches(StatusCode::INTERNAL_SERVER_ERROR, &h));
    }

    #[test]
    fn no_store_rule_applies_to_every_status() {
        let rule = Rule::any().cache_control(Directives::no_store_policy());
        assert!(rule.response_matches(StatusCode::NOT_FOUND, &HeaderMap::new()));
    }

    #[test]
    fn named_statuses_lift_the_success_limit() {
        let rule = Rule::status(StatusCode::NOT_FOUND)
            .cache_control(Directives::new().public().max_age(Duration::from_secs(30)));
        assert!(rule.response_matches(StatusCode::NOT_FOUND, &HeaderMap::new()));
        assert!(!rule.response_matches(StatusCode::OK, &HeaderMap::new()));
        let range = Rule::any().and_status_range(400..=499);
        assert!(range.response_matches(StatusCode::GONE, &HeaderMap::new()));
    }

    #[test]
    fn content_type_matches_essence_case_insensitively() {
        let rule = Rule::content_type("text/html").unwrap();
        assert!(rule.response_matches(
            StatusCode::OK,
            &headers(&[("content-type", "Text/HTML; charset=utf-8")])
        ));
        assert!(!rule.response_matches(StatusCode::OK, &headers(&[("content-type", "text/plain")])));
        assert!(!rule.response_matches(StatusCode::OK, &HeaderMap::new()));
        let wild = Rule::content_type("image/*").unwrap();
        assert!(wild.response_matches(StatusCode::OK, &headers(&[("content-type", "image/png")])));
    }

    #[test]
    fn invalid_content_type_pattern_fails_at_build() {
        for bad in ["html", "*/*", "text/", "te xt/html", "text/ht ml"] {
            assert!(Rule::content_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_tags_fail_at_build() {
        assert!(Rule::any().tags(["a b"]).is_err());
        assert!(Rule::any().tags(["a,b"]).is_err());
        assert!(Rule::any().tags([""]).is_err());
    }

    #[test]
    fn handler_header_wins_unless_override() {
        let rule = Rule::any().cache_control(Directives::new().max_age(Duration::from_secs(5)));
        let mut h = headers(&[("cache-control", "no-cache")]);
        rule.apply(&mut h, false);
        assert_eq!(h["cache-control"], "no-cache");
        let rule = rule.override_existing();
        rule.apply(&mut h, false);
        assert_eq!(h.get_all("cache-control").iter().count(), 1);
        assert_eq!(h["cache-control"], "max-age=5");
    }

    #[test]
    fn cookie_response_gets_private_policy_and_no_cdn_header() {
        let rule = Rule::any()
            .cache_control(Directives::new().public().s_maxage(Duration::from_secs(60)))
            .cdn_cache_control(Directives::new().max_age(Duration::from_secs(600)));
        let mut h = HeaderMap::new();
        rule.apply(&mut h, true);
        assert_eq!(h["cache-control"], "private");
        assert!(!h.contains_key("cdn-cache-control"));
    }

    #[test]
    fn cookie_response_gets_no_purge_tags() {
        let rule = Rule::any()
            .cache_control(Directives::new().public().s_maxage(Duration::from_secs(60)))
            .tags(["posts"])
            .unwrap();
        let mut h = HeaderMap::new();
        rule.apply(&mut h, true);
        assert!(!h.contains_key("surrogate-key"));
        assert!(!h.contains_key("cache-tag"));
    }

    #[test]
    fn vary_merges_tokens_without_duplicates() {
        let mut h = headers(&[("vary", "accept-encoding"), ("vary", "Accept-Language ")]);
        merge_vary(
            &mut h,
            &[header::ACCEPT_LANGUAGE, HeaderName::from_static("x-theme")],
        );
        assert_eq!(h.get_all("vary").iter().count(), 1);
        assert_eq!(h["vary"], "accept-encoding, Accept-Language, x-theme");
    }

    #[test]
    fn vary_star_is_left_alone() {
        let mut h = headers(&[("vary", "*")]);
        merge_vary(&mut h, &[header::ACCEPT_LANGUAGE]);
        assert_eq!(h["vary"], "*");
    }

    #[test]
    fn tags_become_surrogate_key_and_cache_tag() {
        let rule = Rule::any().tags(["post-1", "posts"]).unwrap();
        let mut h = HeaderMap::new();
        rule.apply(&mut h, false);
        assert_eq!(h["surrogate-key"], "post-1 posts");
        assert_eq!(h["cache-tag"], "post-1,posts");
    }

    #[test]
    fn expires_follows_max_age() {
        let rule = Rule::any()
            .cache_control(Directives::new().max_age(Duration::from_secs(3600)))
            .expires();
        let mut h = HeaderMap::new();
        rule.apply(&mut h, false);
        let exp = httpdate::parse_http_date(h["expires"].to_str().unwrap()).unwrap();
        let ahead = exp
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .as_secs();
        assert!((3598..=3600).contains(&ahead), "{ahead}");
    }
}
