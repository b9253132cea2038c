//! The typed `Cache-Control` value (RFC 9111 §5.2).

use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL};

/// The largest delta-seconds we keep: RFC 9111 §1.2.2 says a value too large
/// to represent (or a calculation that overflows) becomes 2^31.
pub(crate) const DELTA_MAX: u32 = 1 << 31;

/// A `Cache-Control` value: request and response directives (RFC 9111 §5.2).
///
/// `Directives` is both a parser for what arrives and a builder for what the
/// crate sends.
///
/// **Parsing** is lenient, as RFC 9111 asks of recipients, and never fails:
/// directive names are case-insensitive; arguments may be tokens or
/// quoted-strings (`max-age="5"` is `max-age=5`); several header lines and
/// comma lists combine into one list; empty list elements are skipped;
/// unknown directives are kept as extensions. When a directive appears twice,
/// the **first occurrence wins** (RFC 9111 §4.2.1 allows it, and the whole
/// crate applies the same rule). A delta-seconds value too large to represent
/// is capped at 2^31 (RFC 9111 §1.2.2). An invalid `max-age` or `s-maxage`
/// (`max-age=abc`, `max-age=-1`, `max-age=1.5`) reads as `0`, so the response
/// is stale rather than fresh for ever (§4.2.1); an invalid or bare
/// `stale-while-revalidate`, `stale-if-error`, `min-fresh` or `max-stale=x`
/// is ignored (RFC 5861 §3 calls the bare form malformed). A directive
/// defined without an argument that arrives with one (`no-store=1`) still
/// counts: that is the restrictive reading.
///
/// **Formatting** (`Display`, [`to_header_value`](Self::to_header_value))
/// writes directives in one canonical, stable order: `public`, `private`,
/// `no-cache`, `no-store`, `no-transform`, `must-revalidate`,
/// `proxy-revalidate`, `must-understand`, `max-age`, `s-maxage`,
/// `stale-while-revalidate`, `stale-if-error`, `immutable`, `max-stale`,
/// `min-fresh`, `only-if-cached`, then extensions in the order they were
/// added. The builder takes [`Duration`]s, rounded down to whole seconds, so
/// it cannot express a negative age, and the stale directives take a
/// mandatory value, so it cannot emit a bare `stale-while-revalidate`.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_ssr::cache_control::Directives;
///
/// let page = Directives::new()
///     .public()
///     .max_age(Duration::ZERO)
///     .s_maxage(Duration::from_secs(60))
///     .stale_while_revalidate(Duration::from_millis(300_999));
/// assert_eq!(
///     page.to_string(),
///     "public, max-age=0, s-maxage=60, stale-while-revalidate=300"
/// );
///
/// let parsed: Directives = "Max-Age=\"5\", No-CaChE, max-age=9".parse().unwrap();
/// assert_eq!(parsed.max_age_secs(), Some(5)); // first occurrence wins
/// assert!(parsed.is_no_cache());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    public: bool,
    private: Option<FieldList>,
    no_cache: Option<FieldList>,
    no_store: bool,
    no_transform: bool,
    must_revalidate: bool,
    proxy_revalidate: bool,
    must_understand: bool,
    immutable: bool,
    only_if_cached: bool,
    max_age: Option<u32>,
    s_maxage: Option<u32>,
    stale_while_revalidate: Option<u32>,
    stale_if_error: Option<u32>,
    /// `Some(None)` is a bare `max-stale`: any staleness (§5.2.1.2).
    max_stale: Option<Option<u32>>,
    min_fresh: Option<u32>,
    extensions: Vec<Extension>,
}

/// The argument of `no-cache` or `private`: none (the whole response) or a
/// list of field names (RFC 9111 §5.2.2.4, §5.2.2.7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldList(Vec<HeaderName>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Extension {
    name: String,
    value: Option<String>,
}

/// Why a directive given to the builder was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDirective {
    reason: String,
}

impl fmt::Display for InvalidDirective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid Cache-Control directive: {}", self.reason)
    }
}

impl std::error::Error for InvalidDirective {}

fn secs(d: Duration) -> u32 {
    // Rounded down to whole seconds; capped as RFC 9111 §1.2.2 says.
    u32::try_from(d.as_secs()).map_or(DELTA_MAX, |s| s.min(DELTA_MAX))
}

impl Directives {
    /// An empty set of directives.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// `no-store`: nothing may store the response (RFC 9111 §5.2.2.5).
    #[must_use]
    pub fn no_store_policy() -> Self {
        Self::new().no_store()
    }

    /// `public, max-age=31536000, immutable`: a fingerprinted static asset
    /// that never changes under its URL (RFC 8246).
    #[must_use]
    pub fn immutable_asset() -> Self {
        Self::new()
            .public()
            .max_age(Duration::from_secs(31_536_000))
            .immutable()
    }

    // ----- setters --------------------------------------------------------

    /// Adds `public` (RFC 9111 §5.2.2.9) and removes `private`.
    #[must_use]
    pub fn public(mut self) -> Self {
        self.public = true;
        self.private = None;
        self
    }

    /// Adds unqualified `private` (RFC 9111 §5.2.2.7) and removes `public`.
    #[must_use]
    pub fn private(mut self) -> Self {
        self.private = Some(FieldList::default());
        self.public = false;
        self
    }

    /// Adds `private="f1, f2"`: shared caches must not store the named fields
    /// (RFC 9111 §5.2.2.7). An empty list is unqualified `private`.
    #[must_use]
    pub fn private_fields<I: IntoIterator<Item = HeaderName>>(mut self, fields: I) -> Self {
        self.private = Some(FieldList(fields.into_iter().collect()));
        self.public = false;
        self
    }

    /// Adds unqualified `no-cache`: reuse only after validation (RFC 9111 §5.2.2.4).
    #[must_use]
    pub fn no_cache(mut self) -> Self {
        self.no_cache = Some(FieldList::default());
        self
    }

    /// Adds `no-cache="f1, f2"` (RFC 9111 §5.2.2.4). An empty list is
    /// unqualified `no-cache`.
    #[must_use]
    pub fn no_cache_fields<I: IntoIterator<Item = HeaderName>>(mut self, fields: I) -> Self {
        self.no_cache = Some(FieldList(fields.into_iter().collect()));
        self
    }

    /// Adds `no-store` (RFC 9111 §5.2.2.5, §5.2.1.5).
    #[must_use]
    pub fn no_store(mut self) -> Self {
        self.no_store = true;
        self
    }

    /// Adds `no-transform` (RFC 9111 §5.2.2.6).
    #[must_use]
    pub fn no_transform(mut self) -> Self {
        self.no_transform = true;
        self
    }

    /// Adds `must-revalidate` (RFC 9111 §5.2.2.2).
    #[must_use]
    pub fn must_revalidate(mut self) -> Self {
        self.must_revalidate = true;
        self
    }

    /// Adds `proxy-revalidate` (RFC 9111 §5.2.2.8).
    #[must_use]
    pub fn proxy_revalidate(mut self) -> Self {
        self.proxy_revalidate = true;
        self
    }

    /// Adds `must-understand` (RFC 9111 §5.2.2.3).
    #[must_use]
    pub fn must_understand(mut self) -> Self {
        self.must_understand = true;
        self
    }

    /// Adds `immutable` (RFC 8246).
    #[must_use]
    pub fn immutable(mut self) -> Self {
        self.immutable = true;
        self
    }

    /// Adds the request directive `only-if-cached` (RFC 9111 §5.2.1.7).
    #[must_use]
    pub fn only_if_cached(mut self) -> Self {
        self.only_if_cached = true;
        self
    }

    /// Sets `max-age`, rounded down to whole seconds (RFC 9111 §5.2.2.1).
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(secs(age));
        self
    }

    /// Sets `s-maxage`, rounded down to whole seconds (RFC 9111 §5.2.2.10).
    #[must_use]
    pub fn s_maxage(mut self, age: Duration) -> Self {
        self.s_maxage = Some(secs(age));
        self
    }

    /// Sets `stale-while-revalidate`, rounded down to whole seconds (RFC 5861 §3).
    #[must_use]
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(secs(window));
        self
    }

    /// Sets `stale-if-error`, rounded down to whole seconds (RFC 5861 §4).
    #[must_use]
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(secs(window));
        self
    }

    /// Sets the request directive `max-stale=N`, rounded down to whole
    /// seconds (RFC 9111 §5.2.1.2).
    #[must_use]
    pub fn max_stale(mut self, staleness: Duration) -> Self {
        self.max_stale = Some(Some(secs(staleness)));
        self
    }

    /// Sets a bare `max-stale`: any staleness is acceptable (RFC 9111 §5.2.1.2).
    #[must_use]
    pub fn max_stale_any(mut self) -> Self {
        self.max_stale = Some(None);
        self
    }

    /// Sets the request directive `min-fresh`, rounded down to whole seconds
    /// (RFC 9111 §5.2.1.3).
    #[must_use]
    pub fn min_fresh(mut self, fresh: Duration) -> Self {
        self.min_fresh = Some(secs(fresh));
        self
    }

    /// Adds an extension directive (RFC 9111 §5.2.3), such as
    /// `community="UCI"`. A value that is not a token is sent quoted.
    ///
    /// # Errors
    ///
    /// When `name` is not a token, names a directive this type models
    /// (use its setter), or `value` holds control characters.
    pub fn extension(mut self, name: &str, value: Option<&str>) -> Result<Self, InvalidDirective> {
        let lower = name.to_ascii_lowercase();
        if lower.is_empty() || !lower.bytes().all(is_tchar) {
            return Err(InvalidDirective {
                reason: format!("{name:?} is not a token"),
            });
        }
        if KNOWN.contains(&lower.as_str()) {
            return Err(InvalidDirective {
                reason: format!("{name:?} has its own setter"),
            });
        }
        if let Some(v) = value {
            if v.chars().any(|c| c.is_control() && c != '\t') {
                return Err(InvalidDirective {
                    reason: format!("the value of {name:?} holds a control character"),
                });
            }
        }
        if !self.extensions.iter().any(|e| e.name == lower) {
            self.extensions.push(Extension {
                name: lower,
                value: value.map(str::to_owned),
            });
        }
        Ok(self)
    }

    // ----- getters --------------------------------------------------------

    /// Whether `public` is present.
    #[must_use]
    pub fn is_public(&self) -> bool {
        self.public
    }

    /// Whether `private` is present, qualified or not.
    #[must_use]
    pub fn is_private(&self) -> bool {
        self.private.is_some()
    }

    /// The fields named by a qualified `private="…"`; empty when unqualified
    /// or absent.
    #[must_use]
    pub fn private_field_names(&self) -> &[HeaderName] {
        self.private.as_ref().map_or(&[], |l| &l.0)
    }

    /// Whether `no-cache` is present, qualified or not.
    #[must_use]
    pub fn is_no_cache(&self) -> bool {
        self.no_cache.is_some()
    }

    /// The fields named by a qualified `no-cache="…"`; empty when
    /// unqualified or absent.
    #[must_use]
    pub fn no_cache_field_names(&self) -> &[HeaderName] {
        self.no_cache.as_ref().map_or(&[], |l| &l.0)
    }

    /// Whether `no-store` is present.
    #[must_use]
    pub fn is_no_store(&self) -> bool {
        self.no_store
    }

    /// Whether `no-transform` is present.
    #[must_use]
    pub fn is_no_transform(&self) -> bool {
        self.no_transform
    }

    /// Whether `must-revalidate` is present.
    #[must_use]
    pub fn is_must_revalidate(&self) -> bool {
        self.must_revalidate
    }

    /// Whether `proxy-revalidate` is present.
    #[must_use]
    pub fn is_proxy_revalidate(&self) -> bool {
        self.proxy_revalidate
    }

    /// Whether `must-understand` is present.
    #[must_use]
    pub fn is_must_understand(&self) -> bool {
        self.must_understand
    }

    /// Whether `immutable` is present.
    #[must_use]
    pub fn is_immutable(&self) -> bool {
        self.immutable
    }

    /// Whether `only-if-cached` is present.
    #[must_use]
    pub fn is_only_if_cached(&self) -> bool {
        self.only_if_cached
    }

    /// `max-age` in seconds.
    #[must_use]
    pub fn max_age_secs(&self) -> Option<u64> {
        self.max_age.map(u64::from)
    }

    /// `s-maxage` in seconds.
    #[must_use]
    pub fn s_maxage_secs(&self) -> Option<u64> {
        self.s_maxage.map(u64::from)
    }

    /// `stale-while-revalidate` in seconds.
    #[must_use]
    pub fn stale_while_revalidate_secs(&self) -> Option<u64> {
        self.stale_while_revalidate.map(u64::from)
    }

    /// `stale-if-error` in seconds.
    #[must_use]
    pub fn stale_if_error_secs(&self) -> Option<u64> {
        self.stale_if_error.map(u64::from)
    }

    /// `max-stale` in seconds; `u64::MAX` for a bare `max-stale` (any staleness).
    #[must_use]
    pub fn max_stale_secs(&self) -> Option<u64> {
        self.max_stale.map(|v| v.map_or(u64::MAX, u64::from))
    }

    /// `min-fresh` in seconds.
    #[must_use]
    pub fn min_fresh_secs(&self) -> Option<u64> {
        self.min_fresh.map(u64::from)
    }

    /// The extension directives, in order, with their unquoted values.
    pub fn extensions(&self) -> impl Iterator<Item = (&str, Option<&str>)> + '_ {
        self.extensions
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
    }

    /// Whether no directive is present.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    // ----- parsing and formatting ----------------------------------------

    /// Parses every `Cache-Control` line of `headers` as one list
    /// (RFC 9110 §5.3). Absent lines give empty directives.
    #[must_use]
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::from_values(headers.get_all(CACHE_CONTROL))
    }

    /// Parses several field lines, in order, as one list.
    pub fn from_values<'a, I: IntoIterator<Item = &'a HeaderValue>>(values: I) -> Self {
        let mut parser = Parser::default();
        for v in values {
            parser.feed(v.as_bytes());
        }
        parser.out
    }

    /// Parses one field value given as bytes.
    #[must_use]
    pub fn parse_bytes(value: &[u8]) -> Self {
        let mut parser = Parser::default();
        parser.feed(value);
        parser.out
    }

    /// The canonical header value.
    #[must_use]
    pub fn to_header_value(&self) -> HeaderValue {
        // Every part the builder or parser admits is a token, a digit run or
        // a quoted-string without control characters, so this cannot fail;
        // the fallback only keeps the no-panic promise.
        HeaderValue::from_str(&self.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("no-store"))
    }

    /// The value as an RFC 8941 Dictionary, for targeted fields such as
    /// `CDN-Cache-Control` (RFC 9213 §2.1). Extensions that cannot be
    /// expressed as a Dictionary member are left out; `None` when nothing is
    /// left (an empty targeted field would be ignored, RFC 9213 §2.1).
    pub(crate) fn to_targeted_value(&self) -> Option<HeaderValue> {
        let mut out = String::new();
        self.write_known(&mut out);
        for e in &self.extensions {
            let key_ok = e
                .name
                .starts_with(|c: char| c.is_ascii_lowercase() || c == '*')
                && e.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b));
            if !key_ok {
                continue;
            }
            let item = match &e.value {
                None => None,
                Some(v) if is_sf_integer(v) || is_sf_token(v) => Some(v.clone()),
                Some(v) if v.bytes().all(|b| (0x20..0x7f).contains(&b)) => Some(quote(v)),
                Some(_) => continue,
            };
            sep(&mut out);
            out.push_str(&e.name);
            if let Some(item) = item {
                out.push('=');
                out.push_str(&item);
            }
        }
        if out.is_empty() {
            return None;
        }
        HeaderValue::from_str(&out).ok()
    }

    /// Turns a policy for a response that sets a cookie into one no shared
    /// cache may store: `public` becomes `private`, and the shared-cache
    /// directives (`s-maxage`, `proxy-revalidate`) go. `no-store` stays as is.
    pub(crate) fn downgrade_to_private(&mut self) {
        if self.no_store {
            return;
        }
        self.public = false;
        if self.private.is_none() {
            self.private = Some(FieldList::default());
        }
        self.s_maxage = None;
        self.proxy_revalidate = false;
    }

    fn write_known(&self, out: &mut String) {
        let flag = |out: &mut String, on: bool, name: &str| {
            if on {
                sep(out);
                out.push_str(name);
            }
        };
        let delta = |out: &mut String, v: Option<u32>, name: &str| {
            if let Some(v) = v {
                sep(out);
                let _ = write!(out, "{name}={v}");
            }
        };
        let list = |out: &mut String, v: &Option<FieldList>, name: &str| {
            if let Some(l) = v {
                sep(out);
                out.push_str(name);
                if !l.0.is_empty() {
                    // RFC 9111 §5.2.2.4/.7: senders SHOULD use the quoted form.
                    out.push_str("=\"");
                    for (i, f) in l.0.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        out.push_str(f.as_str());
                    }
                    out.push('"');
                }
            }
        };
        flag(out, self.public, "public");
        list(out, &self.private, "private");
        list(out, &self.no_cache, "no-cache");
        flag(out, self.no_store, "no-store");
        flag(out, self.no_transform, "no-transform");
        flag(out, self.must_revalidate, "must-revalidate");
        flag(out, self.proxy_revalidate, "proxy-revalidate");
        flag(out, self.must_understand, "must-understand");
        delta(out, self.max_age, "max-age");
        delta(out, self.s_maxage, "s-maxage");
        delta(out, self.stale_while_revalidate, "stale-while-revalidate");
        delta(out, self.stale_if_error, "stale-if-error");
        flag(out, self.immutable, "immutable");
        match self.max_stale {
            Some(Some(v)) => delta(out, Some(v), "max-stale"),
            Some(None) => flag(out, true, "max-stale"),
            None => {}
        }
        delta(out, self.min_fresh, "min-fresh");
        flag(out, self.only_if_cached, "only-if-cached");
    }
}

fn sep(out: &mut String) {
    if !out.is_empty() {
        out.push_str(", ");
    }
}

fn quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

fn is_sf_integer(v: &str) -> bool {
    let digits = v.strip_prefix('-').unwrap_or(v);
    !digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_sf_token(v: &str) -> bool {
    v.starts_with(|c: char| c.is_ascii_alphabetic() || c == '*')
        && v.bytes().all(|b| is_tchar(b) || b == b':' || b == b'/')
}

impl fmt::Display for Directives {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        self.write_known(&mut out);
        for e in &self.extensions {
            sep(&mut out);
            out.push_str(&e.name);
            if let Some(v) = &e.value {
                out.push('=');
                if !v.is_empty() && v.bytes().all(is_tchar) {
                    out.push_str(v);
                } else {
                    out.push_str(&quote(v));
                }
            }
        }
        f.write_str(&out)
    }
}

impl FromStr for Directives {
    type Err = Infallible;

    /// Parses leniently; see the type's docs. Never fails.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse_bytes(s.as_bytes()))
    }
}

impl From<&HeaderValue> for Directives {
    fn from(value: &HeaderValue) -> Self {
        Self::parse_bytes(value.as_bytes())
    }
}

impl From<&Directives> for HeaderValue {
    fn from(d: &Directives) -> Self {
        d.to_header_value()
    }
}

const KNOWN: &[&str] = &[
    "public",
    "private",
    "no-cache",
    "no-store",
    "no-transform",
    "must-revalidate",
    "proxy-revalidate",
    "must-understand",
    "immutable",
    "only-if-cached",
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
    "max-stale",
    "min-fresh",
];

/// tchar (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A directive argument as received.
enum Arg {
    None,
    Value(Vec<u8>),
    /// Junk followed the argument (`max-age=5 6`), or a token was expected.
    Invalid,
}

/// Reads delta-seconds (RFC 9111 §1.2.2): `1*DIGIT`, capped at 2^31.
fn delta_seconds(arg: &Arg) -> Option<u32> {
    let Arg::Value(v) = arg else { return None };
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        n = n * 10 + u64::from(b - b'0');
        if n >= u64::from(DELTA_MAX) {
            return Some(DELTA_MAX);
        }
    }
    u32::try_from(n).ok()
}

fn field_list(arg: &Arg) -> FieldList {
    let Arg::Value(v) = arg else {
        return FieldList::default();
    };
    FieldList(
        v.split(|&b| b == b',')
            .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
            .collect(),
    )
}

#[derive(Default)]
struct Parser {
    out: Directives,
    /// Known directives already seen, by index in `KNOWN`: the first wins.
    seen: u32,
}

impl Parser {
    fn feed(&mut self, input: &[u8]) {
        let mut i = 0;
        while i < input.len() {
            // Skip OWS and empty list elements (RFC 9110 §5.6.1.2).
            while i < input.len() && matches!(input[i], b' ' | b'\t' | b',') {
                i += 1;
            }
            let start = i;
            while i < input.len() && is_tchar(input[i]) {
                i += 1;
            }
            if start == i {
                if i < input.len() {
                    // Not a directive: skip the whole element.
                    i = skip_element(input, i);
                }
                continue;
            }
            let name = &input[start..i];
            let (arg, next) = read_arg(input, i);
            i = next;
            self.apply(name, &arg);
        }
    }

    fn first(&mut self, name: &str) -> bool {
        let Some(idx) = KNOWN.iter().position(|k| *k == name) else {
            return false;
        };
        let bit = 1u32 << idx;
        let first = self.seen & bit == 0;
        self.seen |= bit;
        first
    }

    fn apply(&mut self, raw_name: &[u8], arg: &Arg) {
        let name = String::from_utf8_lossy(raw_name).to_ascii_lowercase();
        let d = &mut self.out;
        match name.as_str() {
            // Flags: present even with an argument (the restrictive reading).
            "public" | "no-store" | "no-transform" | "must-revalidate" | "proxy-revalidate"
            | "must-understand" | "immutable" | "only-if-cached" => {
                let field = match name.as_str() {
                    "public" => &mut d.public,
                    "no-store" => &mut d.no_store,
                    "no-transform" => &mut d.no_transform,
                    "must-revalidate" => &mut d.must_revalidate,
                    "proxy-revalidate" => &mut d.proxy_revalidate,
                    "must-understand" => &mut d.must_understand,
                    "immutable" => &mut d.immutable,
                    _ => &mut d.only_if_cached,
                };
                *field = true;
            }
            "private" | "no-cache" => {
                if self.first(&name) {
                    let list = Some(field_list(arg));
                    if name == "private" {
                        self.out.private = list;
                    } else {
                        self.out.no_cache = list;
                    }
                }
            }
            // Invalid freshness reads as 0: stale, never fresh for ever
            // (RFC 9111 §4.2.1).
            "max-age" | "s-maxage" => {
                if self.first(&name) {
                    let v = Some(delta_seconds(arg).unwrap_or(0));
                    if name == "max-age" {
                        self.out.max_age = v;
                    } else {
                        self.out.s_maxage = v;
                    }
                }
            }
            // Malformed ones are ignored (RFC 5861 §3), so they do not take
            // the "first occurrence" slot either.
            "stale-while-revalidate" | "stale-if-error" | "min-fresh" => {
                if let Some(v) = delta_seconds(arg) {
                    if self.first(&name) {
                        let slot = match name.as_str() {
                            "stale-while-revalidate" => &mut self.out.stale_while_revalidate,
                            "stale-if-error" => &mut self.out.stale_if_error,
                            _ => &mut self.out.min_fresh,
                        };
                        *slot = Some(v);
                    }
                }
            }
            "max-stale" => {
                let v = match arg {
                    Arg::None => Some(None),
                    other => delta_seconds(other).map(Some),
                };
                if let Some(v) = v {
                    if self.first(&name) {
                        self.out.max_stale = Some(v);
                    }
                }
            }
            _ => {
                if d.extensions.iter().any(|e| e.name == name) {
                    return;
                }
                let value = match arg {
                    Arg::None => None,
                    Arg::Value(v) => {
                        let s = String::from_utf8_lossy(v);
                        if s.chars().any(|c| c.is_control() && c != '\t') {
                            return;
                        }
                        Some(s.into_owned())
                    }
                    Arg::Invalid => return,
                };
                d.extensions.push(Extension { name, value });
            }
        }
    }
}

/// Reads `[ OWS "=" OWS ( token / quoted-string ) ]` and what is left of the
/// list element; returns the argument and the index after the element.
fn read_arg(input: &[u8], mut i: usize) -> (Arg, usize) {
    let ows = |i: &mut usize| {
        while *i < input.len() && matches!(input[*i], b' ' | b'\t') {
            *i += 1;
        }
    };
    ows(&mut i);
    if i >= input.len() || input[i] == b',' {
        return (Arg::None, i);
    }
    if input[i] != b'=' {
        return (Arg::Invalid, skip_element(input, i));
    }
    i += 1;
    ows(&mut i);
    let mut value = Vec::new();
    if i < input.len() && input[i] == b'"' {
        // quoted-string: `\x` reads as `x` (RFC 9110 §5.6.4). An
        // unterminated string runs to the end of the line.
        i += 1;
        while i < input.len() {
            match input[i] {
                b'"' => {
                    i += 1;
                    break;
                }
                b'\\' if i + 1 < input.len() => {
                    value.push(input[i + 1]);
                    i += 2;
                }
                b => {
                    value.push(b);
                    i += 1;
                }
            }
        }
    } else {
        let start = i;
        while i < input.len() && is_tchar(input[i]) {
            i += 1;
        }
        value.extend_from_slice(&input[start..i]);
    }
    ows(&mut i);
    if i < input.len() && input[i] != b',' {
        return (Arg::Invalid, skip_element(input, i));
    }
    (Arg::Value(value), i)
}

/// Skips to the next comma outside a quoted-string.
fn skip_element(input: &[u8], mut i: usize) -> usize {
    let mut quoted = false;
    while i < input.len() {
        match input[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b',' if !quoted => return i,
            _ => {}
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Directives {
        s.parse().unwrap()
    }

    #[test]
    fn names_are_case_insensitive() {
        let d = p("No-CaChE, MAX-AGE=5, Private");
        assert!(d.is_no_cache());
        assert!(d.is_private());
        assert_eq!(d.max_age_secs(), Some(5));
    }

    #[test]
    fn quoted_and_token_arguments_are_equal() {
        assert_eq!(p("max-age=\"5\""), p("max-age=5"));
        assert_eq!(p("s-maxage=\"60\"").s_maxage_secs(), Some(60));
    }

    #[test]
    fn quoted_string_unescapes_backslash() {
        let d = p(r#"foo="a\"b", max-age=1"#);
        assert_eq!(d.extensions().next(), Some(("foo", Some("a\"b"))));
        assert_eq!(d.max_age_secs(), Some(1));
    }

    #[test]
    fn unknown_extension_with_comma_in_quotes_does_not_break_list() {
        let d = p(r#"community="a,b", max-age=5"#);
        assert_eq!(d.max_age_secs(), Some(5));
        assert_eq!(d.extensions().next(), Some(("community", Some("a,b"))));
    }

    #[test]
    fn several_lines_combine_in_order() {
        let mut h = HeaderMap::new();
        h.append(CACHE_CONTROL, HeaderValue::from_static("public"));
        h.append(
            CACHE_CONTROL,
            HeaderValue::from_static("max-age=10, max-age=20"),
        );
        h.append(CACHE_CONTROL, HeaderValue::from_static("max-age=30"));
        let d = Directives::from_headers(&h);
        assert!(d.is_public());
        assert_eq!(d.max_age_secs(), Some(10));
    }

    #[test]
    fn empty_elements_are_accepted() {
        assert!(p("no-store,,").is_no_store());
        assert!(p(" , ,no-store").is_no_store());
        assert!(p("").is_empty());
    }

    #[test]
    fn duplicate_directive_first_occurrence_wins() {
        assert_eq!(p("max-age=5, max-age=100").max_age_secs(), Some(5));
        assert_eq!(p("s-maxage=7, s-maxage=1").s_maxage_secs(), Some(7));
        assert_eq!(
            p("stale-while-revalidate=1, stale-while-revalidate=9").stale_while_revalidate_secs(),
            Some(1)
        );
    }

    #[test]
    fn overflowing_delta_seconds_caps_at_2_pow_31() {
        let d = p("max-age=99999999999999999999");
        assert_eq!(d.max_age_secs(), Some(2_147_483_648));
        assert_eq!(d.to_string(), "max-age=2147483648");
        assert_eq!(p("max-age=2147483647").max_age_secs(), Some(2_147_483_647));
    }

    #[test]
    fn invalid_max_age_reads_as_stale() {
        for v in [
            "max-age=abc",
            "max-age=-1",
            "max-age=1.5",
            "max-age",
            "max-age=",
            "max-age=5 6",
        ] {
            assert_eq!(p(v).max_age_secs(), Some(0), "{v}");
        }
    }

    #[test]
    fn bare_stale_directives_are_ignored() {
        let d = p("stale-while-revalidate, stale-if-error=x, max-age=1");
        assert_eq!(d.stale_while_revalidate_secs(), None);
        assert_eq!(d.stale_if_error_secs(), None);
        assert_eq!(d.max_age_secs(), Some(1));
    }

    #[test]
    fn flag_with_argument_still_counts() {
        assert!(p("no-store=1").is_no_store());
        assert!(p("immutable=yes").is_immutable());
    }

    #[test]
    fn qualified_no_cache_and_private_keep_field_names() {
        let d = p(r#"no-cache="Set-Cookie, X-Foo", private=authorization"#);
        assert_eq!(d.no_cache_field_names(), ["set-cookie", "x-foo"]);
        assert_eq!(d.private_field_names(), ["authorization"]);
        assert_eq!(
            d.to_string(),
            r#"private="authorization", no-cache="set-cookie, x-foo""#
        );
    }

    #[test]
    fn max_stale_bare_means_any_staleness() {
        assert_eq!(p("max-stale").max_stale_secs(), Some(u64::MAX));
        assert_eq!(p("max-stale=30").max_stale_secs(), Some(30));
        assert_eq!(p("max-stale=x").max_stale_secs(), None);
    }

    #[test]
    fn garbage_elements_are_skipped() {
        let d = p("=5, \"quoted\", max-age=3, @@@");
        assert_eq!(d.max_age_secs(), Some(3));
    }

    #[test]
    fn canonical_order_is_stable() {
        let d = p("immutable, max-age=1, foo, public, s-maxage=2, no-transform");
        assert_eq!(
            d.to_string(),
            "public, no-transform, max-age=1, s-maxage=2, immutable, foo"
        );
    }

    #[test]
    fn durations_round_down_to_whole_seconds() {
        let d = Directives::new()
            .max_age(Duration::from_millis(1999))
            .stale_if_error(Duration::from_nanos(999_999_999));
        assert_eq!(d.to_string(), "max-age=1, stale-if-error=0");
    }

    #[test]
    fn huge_duration_caps_at_2_pow_31() {
        let d = Directives::new().max_age(Duration::MAX);
        assert_eq!(d.max_age_secs(), Some(2_147_483_648));
    }

    #[test]
    fn public_and_private_exclude_each_other_in_builder() {
        assert_eq!(Directives::new().public().private().to_string(), "private");
        assert_eq!(Directives::new().private().public().to_string(), "public");
    }

    #[test]
    fn extension_setter_validates() {
        assert!(Directives::new().extension("bad name", None).is_err());
        assert!(Directives::new().extension("max-age", Some("1")).is_err());
        assert!(Directives::new().extension("x", Some("a\nb")).is_err());
        let d = Directives::new()
            .extension("community", Some("UCI org"))
            .unwrap();
        assert_eq!(d.to_string(), r#"community="UCI org""#);
    }

    #[test]
    fn downgrade_turns_public_into_private_and_drops_shared_directives() {
        let mut d = p("public, max-age=60, s-maxage=600, proxy-revalidate");
        d.downgrade_to_private();
        assert_eq!(d.to_string(), "private, max-age=60");
        let mut keep = p("no-store");
        keep.downgrade_to_private();
        assert_eq!(keep.to_string(), "no-store");
    }

    #[test]
    fn targeted_value_is_a_structured_dictionary() {
        let d = Directives::new()
            .s_maxage(Duration::from_secs(600))
            .extension("x-token", Some("abc"))
            .unwrap()
            .extension("x-str", Some("1.5 x"))
            .unwrap()
            .extension("x-bin", Some("é"))
            .unwrap();
        assert_eq!(
            d.to_targeted_value().unwrap(),
            r#"s-maxage=600, x-token=abc, x-str="1.5 x""#
        );
        assert_eq!(Directives::new().to_targeted_value(), None);
    }

    #[test]
    fn header_value_conversions_agree() {
        let v = HeaderValue::from_static("public, max-age=60");
        let d = Directives::from(&v);
        assert_eq!(d.to_header_value(), v);
        assert_eq!(HeaderValue::from(&d), v);
    }

    fn arb_directives() -> impl Strategy<Value = Directives> {
        let name = "[a-z][a-z0-9-]{0,8}"
            .prop_filter("not a known directive", |n| !KNOWN.contains(&n.as_str()));
        let field =
            "[a-z][a-z0-9-]{0,8}".prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap());
        (
            (
                any::<[bool; 10]>(),
                proptest::option::of(0u64..3_000_000_000),
            ),
            (
                proptest::option::of(0u64..100_000),
                proptest::option::of(0u64..100_000),
                proptest::option::of(0u64..100_000),
                proptest::option::of(proptest::option::of(0u64..100_000)),
            ),
            (
                proptest::option::of(proptest::collection::vec(field.clone(), 0..3)),
                proptest::option::of(proptest::collection::vec(field, 0..3)),
            ),
            proptest::collection::vec((name, proptest::option::of("[ -~]{0,6}")), 0..3),
        )
            .prop_map(|((flags, max_age), (s, swr, sie, ms), (nc, pv), exts)| {
                let mut d = Directives::new();
                let setters: [fn(Directives) -> Directives; 9] = [
                    Directives::public,
                    Directives::no_store,
                    Directives::no_transform,
                    Directives::must_revalidate,
                    Directives::proxy_revalidate,
                    Directives::must_understand,
                    Directives::immutable,
                    Directives::only_if_cached,
                    Directives::private,
                ];
                for (on, set) in flags.iter().zip(setters) {
                    if *on {
                        d = set(d);
                    }
                }
                if let Some(a) = max_age {
                    d = d.max_age(Duration::from_secs(a));
                }
                if let Some(s) = s {
                    d = d.s_maxage(Duration::from_secs(s));
                }
                if let Some(v) = swr {
                    d = d.stale_while_revalidate(Duration::from_secs(v));
                }
                if let Some(v) = sie {
                    d = d.min_fresh(Duration::from_secs(v));
                }
                match ms {
                    Some(Some(v)) => d = d.max_stale(Duration::from_secs(v)),
                    Some(None) => d = d.max_stale_any(),
                    None => {}
                }
                if let Some(f) = nc {
                    d = d.no_cache_fields(f);
                }
                if let Some(f) = pv {
                    if !d.is_public() {
                        d = d.private_fields(f);
                    }
                }
                if flags[9] {
                    d = d.stale_if_error(Duration::from_secs(7));
                }
                for (n, v) in exts {
                    d = d.extension(&n, v.as_deref()).unwrap();
                }
                d
            })
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(d in arb_directives()) {
            let text = d.to_string();
            prop_assert_eq!(&p(&text), &d);
            prop_assert_eq!(Directives::from(&d.to_header_value()), d);
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let d = Directives::parse_bytes(&bytes);
            // Whatever was read formats to a valid header value.
            let _ = d.to_header_value();
            let _ = d.to_targeted_value();
        }

        #[test]
        fn parsed_output_reparses_to_the_same_value(s in "[ -~]{0,80}") {
            let d = p(&s);
            prop_assert_eq!(p(&d.to_string()), d);
        }
    }
}
