//! Entity tags, content hashing and conditional-request evaluation.
//!
//! The layer hashes the response body into an [`ETag`], then answers
//! `If-None-Match` / `If-Modified-Since` with a `304 Not Modified` when the
//! client's copy is still current (RFC 9110 §13).

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use http::header::{
    HeaderName, CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, LAST_MODIFIED, SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
#[cfg(test)]
use xxhash_rust::xxh3::xxh3_128;
use xxhash_rust::xxh3::Xxh3Default;

/// How the layer derives an ETag from the response body.
///
/// The tag is a hash of the body bytes, so it changes exactly when the
/// content changes and every replica computes the same tag for the same page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ETagMode {
    /// Do not derive an ETag from the body.
    Off,
    /// Derive a weak ETag (`W/"…"`) from the body hash.
    ///
    /// This is the safe default: a weak tag only claims semantic equivalence,
    /// so it stays truthful when a later layer or a CDN re-encodes the body
    /// (e.g. compresses it). `If-None-Match` uses weak comparison anyway
    /// (RFC 9110 §13.1.2), so revalidation works just as well.
    #[default]
    Weak,
    /// Derive a strong ETag (`"…"`) from the body hash.
    ///
    /// A strong tag promises byte-for-byte identity (RFC 9110 §8.8.1), which
    /// only holds if nothing after this layer changes the body bytes (no
    /// compression applied downstream). Needed only by clients that require
    /// strong validators, such as `If-Range` (RFC 9110 §13.1.5).
    Strong,
}

/// An entity tag (RFC 9110 §8.8.3): an opaque-tag plus a weakness flag.
///
/// Construct one with [`ETag::strong`], [`ETag::weak`], [`ETag::parse`] or
/// [`str::parse`]; it always holds a syntactically valid tag, so
/// [`ETag::to_header_value`] cannot fail.
///
/// ```
/// use tower_ssr::cache_control::ETag;
///
/// let tag: ETag = "W/\"v1\"".parse().unwrap();
/// assert!(tag.is_weak());
/// assert_eq!(tag.opaque(), "v1");
/// assert!(tag.weak_eq(&ETag::strong("v1").unwrap()));
/// assert!(!tag.strong_eq(&ETag::strong("v1").unwrap()));
/// assert_eq!(tag.to_string(), "W/\"v1\"");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag {
    /// The full serialized form (`W/"x"` or `"x"`): serializing is then free
    /// and the weakness flag cannot disagree with the text.
    value: Box<str>,
}

impl ETag {
    /// Creates a strong entity tag from an opaque-tag given without quotes.
    ///
    /// Every byte must be an `etagc` (RFC 9110 §8.8.3): `!`, `#` to `~`, or
    /// obs-text (any non-ASCII character). Double quotes, spaces, DEL and
    /// control characters are rejected. An empty opaque-tag is valid.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidETag`] if `opaque` contains a byte outside `etagc`.
    pub fn strong(opaque: &str) -> Result<ETag, InvalidETag> {
        Self::new(opaque, false)
    }

    /// Creates a weak entity tag from an opaque-tag given without quotes.
    ///
    /// Accepts the same opaque-tags as [`ETag::strong`].
    ///
    /// # Errors
    ///
    /// Returns [`InvalidETag`] if `opaque` contains a byte outside `etagc`.
    pub fn weak(opaque: &str) -> Result<ETag, InvalidETag> {
        Self::new(opaque, true)
    }

    /// Parses a field value holding exactly one entity-tag: `"abc"` or `W/"abc"`.
    ///
    /// Surrounding whitespace is ignored. The `W/` prefix is case-sensitive
    /// (RFC 9110 §8.8.3). Returns `None` for anything else, including an
    /// opaque-tag whose obs-text bytes are not valid UTF-8 (it could not be
    /// returned by [`ETag::opaque`]).
    #[must_use]
    pub fn parse(value: &[u8]) -> Option<ETag> {
        let (weak, opaque) = split_single(value).ok()?;
        let opaque = std::str::from_utf8(opaque).ok()?;
        Some(Self::from_valid(opaque, weak))
    }

    /// Returns `true` for a weak tag (`W/"…"`).
    #[must_use]
    pub fn is_weak(&self) -> bool {
        self.value.starts_with("W/")
    }

    /// Returns the opaque-tag, without quotes and without the `W/` prefix.
    #[must_use]
    pub fn opaque(&self) -> &str {
        let start = if self.is_weak() { 3 } else { 1 };
        // Both ends are ASCII bytes we wrote ourselves, so these are char
        // boundaries; `get` keeps this panic-free regardless.
        self.value
            .get(start..self.value.len().saturating_sub(1))
            .unwrap_or_default()
    }

    /// Strong comparison (RFC 9110 §8.8.3.2): both tags are strong and their
    /// opaque-tags are identical.
    #[must_use]
    pub fn strong_eq(&self, other: &ETag) -> bool {
        !self.is_weak() && !other.is_weak() && self.opaque() == other.opaque()
    }

    /// Weak comparison (RFC 9110 §8.8.3.2): the opaque-tags are identical,
    /// whether either tag is weak or not.
    #[must_use]
    pub fn weak_eq(&self, other: &ETag) -> bool {
        self.opaque() == other.opaque()
    }

    /// Returns the tag as an `ETag` header value, e.g. `W/"abc"`.
    #[must_use]
    pub fn to_header_value(&self) -> HeaderValue {
        // Every etagc byte (0x21, 0x23-0x7E, 0x80-0xFF) is a valid header
        // value byte, so this never fails for a constructed ETag; the fallback
        // only exists to avoid a panic path.
        HeaderValue::from_str(&self.value).unwrap_or_else(|_| HeaderValue::from_static("W/\"\""))
    }

    fn new(opaque: &str, weak: bool) -> Result<ETag, InvalidETag> {
        match opaque.bytes().find(|&b| !is_etagc(b)) {
            Some(byte) => Err(InvalidETag {
                kind: InvalidKind::Byte(byte),
            }),
            None => Ok(Self::from_valid(opaque, weak)),
        }
    }

    /// `opaque` must already be known to consist of etagc bytes.
    fn from_valid(opaque: &str, weak: bool) -> ETag {
        let mut value = String::with_capacity(opaque.len() + 4);
        if weak {
            value.push_str("W/");
        }
        value.push('"');
        value.push_str(opaque);
        value.push('"');
        ETag {
            value: value.into_boxed_str(),
        }
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl FromStr for ETag {
    type Err = InvalidETag;

    /// Parses `"abc"` or `W/"abc"`, like [`ETag::parse`] but with an error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (weak, opaque) = split_single(s.as_bytes()).map_err(|kind| InvalidETag { kind })?;
        // The opaque-tag is delimited by ASCII quotes inside a `str`, so it is
        // valid UTF-8; the error arm is unreachable.
        let opaque = std::str::from_utf8(opaque).map_err(|_| InvalidETag {
            kind: InvalidKind::Syntax,
        })?;
        Ok(Self::from_valid(opaque, weak))
    }
}

/// Error for an invalid entity tag.
///
/// Returned by [`ETag::strong`], [`ETag::weak`] and `ETag`'s [`FromStr`]
/// implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidETag {
    kind: InvalidKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvalidKind {
    /// A byte outside `etagc` inside the opaque-tag.
    Byte(u8),
    /// Not of the form `"…"` or `W/"…"`.
    Syntax,
}

impl fmt::Display for InvalidETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            InvalidKind::Byte(b) => write!(
                f,
                "invalid entity-tag: byte 0x{b:02x} is not allowed in an opaque-tag"
            ),
            InvalidKind::Syntax => {
                f.write_str("invalid entity-tag: expected `\"opaque\"` or `W/\"opaque\"`")
            }
        }
    }
}

impl std::error::Error for InvalidETag {}

/// `etagc = %x21 / %x23-7E / obs-text` (RFC 9110 §8.8.3).
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7E).contains(&b) || b >= 0x80
}

/// OWS = *( SP / HTAB ) (RFC 9110 §5.6.3).
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

fn skip_ows(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| is_ows(b)).count();
    s.get(n..).unwrap_or_default()
}

/// Scans one entity-tag at the start of `s`.
/// Returns (weak, opaque-tag, rest of input).
fn scan_entity_tag(s: &[u8]) -> Result<(bool, &[u8], &[u8]), InvalidKind> {
    let (weak, s) = match s.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let body = s.strip_prefix(b"\"").ok_or(InvalidKind::Syntax)?;
    for (i, &b) in body.iter().enumerate() {
        if b == b'"' {
            let opaque = body.get(..i).unwrap_or_default();
            let rest = body.get(i + 1..).unwrap_or_default();
            return Ok((weak, opaque, rest));
        }
        if !is_etagc(b) {
            return Err(InvalidKind::Byte(b));
        }
    }
    // No closing quote.
    Err(InvalidKind::Syntax)
}

/// Parses a value that must be exactly one entity-tag (with optional OWS).
fn split_single(value: &[u8]) -> Result<(bool, &[u8]), InvalidKind> {
    let (weak, opaque, rest) = scan_entity_tag(trim_ows(value))?;
    if rest.is_empty() {
        Ok((weak, opaque))
    } else {
        Err(InvalidKind::Syntax)
    }
}

/// One member of an `If-None-Match` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member<'a> {
    Any,
    /// Only the opaque-tag is kept: `If-None-Match` uses weak comparison.
    Tag(&'a [u8]),
}

/// Visits the members of one `If-None-Match` line.
///
/// A plain split on `,` would be wrong: a comma is a legal `etagc`, so
/// `"a,b"` is a single tag. Empty list elements are skipped, as recipients
/// must tolerate them (RFC 9110 §5.6.1.2). Returns `Err` on the first
/// malformed member.
fn for_each_member<'a>(line: &'a [u8], mut f: impl FnMut(Member<'a>)) -> Result<(), ()> {
    let mut s = line;
    loop {
        s = skip_ows(s);
        let member_rest = match s {
            [] => return Ok(()),
            [b',', rest @ ..] => {
                s = rest;
                continue;
            }
            [b'*', rest @ ..] => {
                f(Member::Any);
                rest
            }
            _ => {
                let (_weak, opaque, rest) = scan_entity_tag(s).map_err(|_| ())?;
                f(Member::Tag(opaque));
                rest
            }
        };
        s = match skip_ows(member_rest) {
            [] => return Ok(()),
            [b',', rest @ ..] => rest,
            _ => return Err(()),
        };
    }
}

/// Streaming content hasher: xxh3-128 over every body chunk.
///
/// The digest depends only on the concatenated bytes, not on how they were
/// chunked, and xxh3 is seedless and platform-independent, so every replica
/// derives the same tag for the same body. xxh3 is not collision-resistant
/// against an adversary; that is acceptable here because the tagged content
/// comes from our own handlers.
#[derive(Default)]
pub(crate) struct BodyHasher {
    state: Xxh3Default,
}

impl fmt::Debug for BodyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyHasher").finish_non_exhaustive()
    }
}

impl BodyHasher {
    /// Creates a hasher for an empty body.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Feeds the next body chunk.
    pub(crate) fn update(&mut self, chunk: &[u8]) {
        self.state.update(chunk);
    }

    /// Returns the tag for all bytes fed so far.
    pub(crate) fn finish(self, weak: bool) -> ETag {
        digest_tag(self.state.digest128(), weak)
    }
}

/// One-shot equivalent of [`BodyHasher`], the reference the streaming
/// hasher is tested against.
#[cfg(test)]
pub(crate) fn hash_bytes(body: &[u8], weak: bool) -> ETag {
    digest_tag(xxh3_128(body), weak)
}

/// Formats the digest as 32 lowercase hex chars, in xxHash's canonical
/// big-endian order (the same text `xxh128sum` prints).
fn digest_tag(digest: u128, weak: bool) -> ETag {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut value = String::with_capacity(36);
    if weak {
        value.push_str("W/");
    }
    value.push('"');
    for shift in (0..32).rev() {
        let nibble = (digest >> (shift * 4)) & 0xF;
        value.push(char::from(HEX[nibble as usize]));
    }
    value.push('"');
    ETag {
        value: value.into_boxed_str(),
    }
}

/// Outcome of evaluating the request's preconditions against the (already
/// generated) response.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum Condition {
    /// The client's copy is current: answer `304 Not Modified`.
    NotModified,
    /// Send the response as generated.
    Proceed,
}

/// A syntactically valid `If-None-Match`.
#[derive(Debug, Clone)]
enum IfNoneMatch {
    Any,
    /// All lines of the field, validated at capture time; parsed again on
    /// evaluation (cheap) rather than copied out into owned tags.
    Tags(Vec<HeaderValue>),
}

/// The request's conditional headers, captured before the request goes to
/// the inner service (the request is consumed by it).
///
/// Malformed conditionals are dropped at capture time: a precondition that
/// cannot be understood is ignored, never turned into an error.
#[derive(Debug, Clone, Default)]
pub(crate) struct Conditionals {
    if_none_match: Option<IfNoneMatch>,
    if_modified_since: Option<SystemTime>,
}

impl Conditionals {
    /// Captures If-None-Match and If-Modified-Since.
    ///
    /// Returns `None` (nothing to do) when the method is not GET or HEAD, or
    /// when neither header is present (or both are malformed), so the common
    /// path costs nothing and allocates nothing.
    pub(crate) fn from_request(method: &Method, headers: &HeaderMap) -> Option<Conditionals> {
        // Both preconditions only apply to GET and HEAD (RFC 9110 §13.1.2,
        // §13.1.3); other methods would need If-Match semantics we don't do.
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        if !headers.contains_key(IF_NONE_MATCH) && !headers.contains_key(IF_MODIFIED_SINCE) {
            return None;
        }
        let conditionals = Conditionals {
            if_none_match: capture_if_none_match(headers),
            // RFC 9110 §13.1.3: If-Modified-Since MUST be ignored when the
            // request contains If-None-Match at all, even one we could not
            // parse and so ignore as well.
            if_modified_since: if headers.contains_key(IF_NONE_MATCH) {
                None
            } else {
                capture_if_modified_since(headers)
            },
        };
        if conditionals.if_none_match.is_none() && conditionals.if_modified_since.is_none() {
            return None;
        }
        Some(conditionals)
    }

    /// Evaluates the captured preconditions against the generated response,
    /// in RFC 9110 §13.2.2 order.
    ///
    /// Only steps 3 (If-None-Match) and 4 (If-Modified-Since) apply: If-Match
    /// and If-Unmodified-Since guard state-changing requests and are left to
    /// the origin, so they are ignored here. Only a `200 OK` can become a
    /// 304: §13.2.1 limits evaluation to 2xx responses, and another 2xx
    /// (206, 204, …) is not a full representation a 304 could stand in for.
    pub(crate) fn evaluate(&self, status: StatusCode, response_headers: &HeaderMap) -> Condition {
        if status != StatusCode::OK {
            return Condition::Proceed;
        }
        // When If-None-Match is present, If-Modified-Since must not be
        // evaluated (RFC 9110 §13.1.3, §13.2.2 step 4): entity tags are the
        // more accurate validator.
        if let Some(inm) = &self.if_none_match {
            return if if_none_match_matches(inm, response_headers) {
                Condition::NotModified
            } else {
                Condition::Proceed
            };
        }
        if let Some(since) = self.if_modified_since {
            // RFC 9110 §13.1.3: false (=> 304) if the representation has not
            // been modified since the given date. Without a valid
            // Last-Modified that cannot be established, so send the body.
            if let Some(last_modified) = single_http_date(response_headers, &LAST_MODIFIED) {
                if last_modified <= since {
                    return Condition::NotModified;
                }
            }
        }
        Condition::Proceed
    }
}

/// RFC 9110 §13.1.2: `*` alone or a list of entity-tags; a list mixing `*`
/// with anything else, or any malformed member, makes the whole field
/// malformed, so it is ignored (`None`).
fn capture_if_none_match(headers: &HeaderMap) -> Option<IfNoneMatch> {
    let mut any = 0usize;
    let mut tags = 0usize;
    let mut lines = 0usize;
    for line in headers.get_all(IF_NONE_MATCH) {
        lines += 1;
        for_each_member(line.as_bytes(), |member| match member {
            Member::Any => any += 1,
            Member::Tag(_) => tags += 1,
        })
        .ok()?;
    }
    match (lines, any, tags) {
        (0, _, _) => None,
        (_, 0, _) => Some(IfNoneMatch::Tags(
            headers.get_all(IF_NONE_MATCH).iter().cloned().collect(),
        )),
        (_, 1, 0) => Some(IfNoneMatch::Any),
        _ => None,
    }
}

/// RFC 9110 §13.1.3: ignored if the value is not a valid HTTP-date or has
/// more than one member. IMF-fixdate itself contains a comma, so "one
/// member" means one field line that parses as a single HTTP-date.
fn capture_if_modified_since(headers: &HeaderMap) -> Option<SystemTime> {
    single_http_date(headers, &IF_MODIFIED_SINCE)
}

/// The value of a singleton date field, if it appears on exactly one line
/// and parses as an HTTP-date in any of the three forms of RFC 9110 §5.6.7.
fn single_http_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = std::str::from_utf8(trim_ows(value.as_bytes())).ok()?;
    crate::date::parse_str(text)
}

/// Weak comparison (RFC 9110 §13.1.2) of every listed tag against the
/// response's ETag.
fn if_none_match_matches(inm: &IfNoneMatch, response_headers: &HeaderMap) -> bool {
    let lines = match inm {
        // `*` is false (=> 304) when a current representation exists, which a
        // 200 response demonstrates.
        IfNoneMatch::Any => return true,
        IfNoneMatch::Tags(lines) => lines,
    };
    // ETag is a singleton field; several lines or a malformed value give us
    // no validator to compare with, so nothing can match.
    let mut etags = response_headers.get_all(ETAG).iter();
    let Some(etag) = etags.next() else {
        return false;
    };
    if etags.next().is_some() {
        return false;
    }
    // Compared as bytes so obs-text tags that are not UTF-8 still work.
    let Ok((_weak, current)) = split_single(etag.as_bytes()) else {
        return false;
    };
    let mut matched = false;
    for line in lines {
        // The lines were validated at capture time, so this cannot fail.
        let _ = for_each_member(line.as_bytes(), |member| {
            matched |= member == Member::Tag(current);
        });
        if matched {
            return true;
        }
    }
    false
}

// Extra fields kept on a 304 beyond RFC 9110 §15.4.5's list: the CDN
// directives and cache keys a CDN needs to refresh its stored copy, and
// Set-Cookie so a session refresh is not lost on revalidation.
pub(crate) const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
pub(crate) const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");
pub(crate) const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
pub(crate) const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

fn kept_on_304(name: &HeaderName) -> bool {
    // RFC 9110 §15.4.5: a 304 must carry the fields a 200 would have sent
    // among Cache-Control, Content-Location, Date, ETag, Expires and Vary;
    // Last-Modified is kept because it helps caches update their copy.
    name == CACHE_CONTROL
        || name == CONTENT_LOCATION
        || name == DATE
        || name == ETAG
        || name == EXPIRES
        || name == VARY
        || name == LAST_MODIFIED
        || name == SET_COOKIE
        || name == CDN_CACHE_CONTROL
        || name == SURROGATE_CONTROL
        || name == SURROGATE_KEY
        || name == CACHE_TAG
}

/// Builds the 304 from the full response parts (RFC 9110 §15.4.5).
///
/// Keeps Cache-Control, Content-Location, Date, ETag, Expires, Vary,
/// Last-Modified, CDN-Cache-Control, Surrogate-Control, Surrogate-Key,
/// Cache-Tag and Set-Cookie (every line, in order) and drops everything else,
/// notably the content metadata (Content-Length, Content-Type,
/// Content-Encoding, Transfer-Encoding) which would describe a body the 304
/// does not have. Version and extensions are kept.
pub(crate) fn not_modified_parts(mut parts: http::response::Parts) -> http::response::Parts {
    let mut kept = HeaderMap::new();
    let mut keep_current = false;
    let mut current: Option<HeaderName> = None;
    // `into_iter` yields the name only on the first line of each field, so
    // the keep decision is made once per field and carried over its lines.
    for (name, value) in std::mem::take(&mut parts.headers) {
        if let Some(name) = name {
            keep_current = kept_on_304(&name);
            current = Some(name);
        }
        if keep_current {
            if let Some(name) = &current {
                kept.append(name.clone(), value);
            }
        }
    }
    parts.headers = kept;
    parts.status = StatusCode::NOT_MODIFIED;
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
    use proptest::prelude::*;

    // ---- ETag construction and parsing ----

    #[test]
    fn strong_and_weak_accept_every_etagc_class() {
        let tag = ETag::strong("!#azAZ09~,é").unwrap();
        assert_eq!(tag.opaque(), "!#azAZ09~,é");
        assert!(!tag.is_weak());
        let tag = ETag::weak("").unwrap();
        assert_eq!(tag.opaque(), "");
        assert!(tag.is_weak());
        assert_eq!(tag.to_string(), "W/\"\"");
    }

    #[test]
    fn constructors_reject_dquote_space_controls_and_del() {
        for bad in ["a\"b", "a b", "\t", "a\r\nb", "\0", "\x7f"] {
            assert!(ETag::strong(bad).is_err(), "{bad:?}");
            assert!(ETag::weak(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            ETag::strong("a b").unwrap_err().to_string(),
            "invalid entity-tag: byte 0x20 is not allowed in an opaque-tag"
        );
    }

    #[test]
    fn parse_accepts_strong_and_weak_and_trims_ows() {
        let strong = ETag::parse(b"\"abc\"").unwrap();
        assert!(!strong.is_weak());
        assert_eq!(strong.opaque(), "abc");
        let weak = ETag::parse(b" \tW/\"abc\"\t ").unwrap();
        assert!(weak.is_weak());
        assert_eq!(weak.opaque(), "abc");
        assert_eq!(ETag::parse(b"\"\"").unwrap().opaque(), "");
    }

    #[test]
    fn parse_w_prefix_is_case_sensitive() {
        assert_eq!(ETag::parse(b"w/\"abc\""), None);
    }

    #[test]
    fn parse_rejects_malformed_values() {
        for bad in [
            &b""[..],
            b"abc",
            b"\"abc",
            b"abc\"",
            b"\"",
            b"W/",
            b"W/abc",
            b"W/ \"abc\"",
            b"\"a\"b\"",
            b"\"abc\" x",
            b"\"a b\"",
            b"\"abc\", \"def\"",
            b"*",
        ] {
            assert_eq!(ETag::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn parse_accepts_utf8_obs_text_but_not_invalid_utf8() {
        assert_eq!(
            ETag::parse("\"caf\u{e9}\"".as_bytes()).unwrap().opaque(),
            "caf\u{e9}"
        );
        assert_eq!(ETag::parse(b"\"\xff\""), None);
    }

    #[test]
    fn display_and_from_str_round_trip() {
        for text in ["\"x\"", "W/\"x\"", "\"\""] {
            let tag: ETag = text.parse().unwrap();
            assert_eq!(tag.to_string(), text);
        }
        assert!("x".parse::<ETag>().is_err());
        assert_eq!(
            "\"a b\"".parse::<ETag>().unwrap_err().to_string(),
            "invalid entity-tag: byte 0x20 is not allowed in an opaque-tag"
        );
        assert_eq!(
            "nope".parse::<ETag>().unwrap_err().to_string(),
            "invalid entity-tag: expected `\"opaque\"` or `W/\"opaque\"`"
        );
    }

    #[test]
    fn to_header_value_serializes_weak_prefix_and_obs_text() {
        assert_eq!(ETag::weak("1").unwrap().to_header_value(), "W/\"1\"");
        assert_eq!(ETag::strong("1").unwrap().to_header_value(), "\"1\"");
        let value = ETag::strong("\u{e9}").unwrap().to_header_value();
        assert_eq!(value.as_bytes(), "\"\u{e9}\"".as_bytes());
    }

    /// The comparison table of RFC 9110 §8.8.3.2.
    #[test]
    fn comparison_follows_rfc_9110_table() {
        let w1 = ETag::weak("1").unwrap();
        let w2 = ETag::weak("2").unwrap();
        let s1 = ETag::strong("1").unwrap();
        // (a, b, strong, weak)
        let table = [
            (&w1, &w1, false, true),
            (&w1, &w2, false, false),
            (&w1, &s1, false, true),
            (&s1, &s1, true, true),
        ];
        for (a, b, strong, weak) in table {
            assert_eq!(a.strong_eq(b), strong, "{a} vs {b}");
            assert_eq!(b.strong_eq(a), strong, "{b} vs {a}");
            assert_eq!(a.weak_eq(b), weak, "{a} vs {b}");
            assert_eq!(b.weak_eq(a), weak, "{b} vs {a}");
        }
    }

    #[test]
    fn etag_mode_defaults_to_weak() {
        assert_eq!(ETagMode::default(), ETagMode::Weak);
    }

    // ---- hashing ----

    /// 4 KiB of non-repeating bytes: long enough for xxh3's long-input path.
    fn long_input() -> Vec<u8> {
        (0..4096u32).map(|i| ((i * 31 + 7) % 251) as u8).collect()
    }

    /// Reference digests computed with the C libxxhash 0.8.1
    /// (`XXH3_128bits`, printed high64 then low64, as `xxh128sum` does).
    /// Any change of algorithm or format would silently invalidate every
    /// ETag clients hold, so this must fail loudly.
    #[test]
    fn digest_matches_reference_xxh3_128() {
        let cases: [(&[u8], &str); 3] = [
            (b"", "99aa06d3014798d86001c324468d497f"),
            (b"hello world", "df8d09e93f874900a99b8775cc15b6c7"),
            (
                b"<!doctype html><html><body>tower-ssr</body></html>",
                "9cbdd0de2a004e6022b07f21bc53cb4a",
            ),
        ];
        for (input, hex) in cases {
            assert_eq!(hash_bytes(input, false).to_string(), format!("\"{hex}\""));
            assert_eq!(hash_bytes(input, true).to_string(), format!("W/\"{hex}\""));
        }
        assert_eq!(
            hash_bytes(&long_input(), true).opaque(),
            "92c9e665ac5b016d04a1779c9e7ddcd7"
        );
    }

    #[test]
    fn hasher_is_invariant_under_chunking() {
        let body = long_input();
        let expected = hash_bytes(&body, true);
        for chunk_size in [1, 3, 64, 255, 256, 257, 1000, 4096] {
            let mut hasher = BodyHasher::new();
            for chunk in body.chunks(chunk_size) {
                hasher.update(chunk);
                hasher.update(&[]);
            }
            assert_eq!(hasher.finish(true), expected, "chunk size {chunk_size}");
        }
        // Short inputs take a different code path in xxh3.
        let mut hasher = BodyHasher::new();
        hasher.update(b"hello ");
        hasher.update(b"world");
        assert_eq!(hasher.finish(false), hash_bytes(b"hello world", false));
    }

    #[test]
    fn empty_hasher_matches_empty_body() {
        assert_eq!(BodyHasher::new().finish(true), hash_bytes(b"", true));
    }

    #[test]
    fn hash_tag_is_32_lowercase_hex_chars() {
        let tag = hash_bytes(b"x", true);
        assert!(tag.is_weak());
        assert_eq!(tag.opaque().len(), 32);
        assert!(tag
            .opaque()
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(!hash_bytes(b"x", false).is_weak());
    }

    // ---- conditionals ----

    use crate::test_helpers::headers;

    fn eval(request: &[(&str, &str)], status: StatusCode, response: &[(&str, &str)]) -> Condition {
        match Conditionals::from_request(&Method::GET, &headers(request)) {
            Some(c) => c.evaluate(status, &headers(response)),
            None => Condition::Proceed,
        }
    }

    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    #[test]
    fn from_request_ignores_other_methods() {
        let h = headers(&[("if-none-match", "*"), ("if-modified-since", LM)]);
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            assert!(
                Conditionals::from_request(&method, &h).is_none(),
                "{method}"
            );
        }
        assert!(Conditionals::from_request(&Method::GET, &h).is_some());
        assert!(Conditionals::from_request(&Method::HEAD, &h).is_some());
    }

    #[test]
    fn from_request_is_none_without_conditional_headers() {
        let h = headers(&[("accept", "text/html"), ("if-match", "\"x\"")]);
        assert!(Conditionals::from_request(&Method::GET, &h).is_none());
    }

    #[test]
    fn from_request_is_none_when_every_conditional_is_malformed() {
        let h = headers(&[
            ("if-none-match", "garbage"),
            ("if-modified-since", "yesterday"),
        ]);
        assert!(Conditionals::from_request(&Method::GET, &h).is_none());
    }

    #[test]
    fn default_conditionals_always_proceed() {
        let c = Conditionals::default();
        assert_eq!(
            c.evaluate(StatusCode::OK, &headers(&[("etag", "\"x\"")])),
            Condition::Proceed
        );
    }

    #[test]
    fn if_none_match_exact_tag_gives_not_modified() {
        let r = eval(
            &[("if-none-match", "\"a\"")],
            StatusCode::OK,
            &[("etag", "\"a\"")],
        );
        assert_eq!(r, Condition::NotModified);
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let ok = StatusCode::OK;
        assert_eq!(
            eval(&[("if-none-match", "W/\"a\"")], ok, &[("etag", "\"a\"")]),
            Condition::NotModified
        );
        assert_eq!(
            eval(&[("if-none-match", "\"a\"")], ok, &[("etag", "W/\"a\"")]),
            Condition::NotModified
        );
        assert_eq!(
            eval(&[("if-none-match", "W/\"a\"")], ok, &[("etag", "W/\"a\"")]),
            Condition::NotModified
        );
    }

    #[test]
    fn if_none_match_different_tag_proceeds() {
        let r = eval(
            &[("if-none-match", "\"a\"")],
            StatusCode::OK,
            &[("etag", "\"b\"")],
        );
        assert_eq!(r, Condition::Proceed);
    }

    #[test]
    fn if_none_match_list_spans_several_header_lines() {
        let request = [
            ("if-none-match", "\"x\", W/\"y\""),
            ("if-none-match", "\"z\" ,\"a\""),
        ];
        assert_eq!(
            eval(&request, StatusCode::OK, &[("etag", "W/\"a\"")]),
            Condition::NotModified
        );
        assert_eq!(
            eval(&request, StatusCode::OK, &[("etag", "\"y\"")]),
            Condition::NotModified
        );
        assert_eq!(
            eval(&request, StatusCode::OK, &[("etag", "\"q\"")]),
            Condition::Proceed
        );
    }

    #[test]
    fn if_none_match_tag_may_contain_a_comma() {
        let request = [("if-none-match", "\"a,b\"")];
        assert_eq!(
            eval(&request, StatusCode::OK, &[("etag", "\"a,b\"")]),
            Condition::NotModified
        );
        assert_eq!(
            eval(&request, StatusCode::OK, &[("etag", "\"a\"")]),
            Condition::Proceed
        );
    }

    #[test]
    fn if_none_match_tolerates_empty_list_elements() {
        let request = [("if-none-match", " , \"x\",, \"a\" ,")];
        assert_eq!(
            eval(&request, StatusCode::OK, &[("etag", "\"a\"")]),
            Condition::NotModified
        );
    }

    #[test]
    fn if_none_match_star_matches_any_200() {
        assert_eq!(
            eval(&[("if-none-match", "*")], StatusCode::OK, &[]),
            Condition::NotModified
        );
        assert_eq!(
            eval(
                &[("if-none-match", " * ")],
                StatusCode::OK,
                &[("etag", "\"a\"")]
            ),
            Condition::NotModified
        );
    }

    #[test]
    fn if_none_match_star_mixed_with_tags_is_ignored() {
        let ok = StatusCode::OK;
        let response = [("etag", "\"a\"")];
        assert_eq!(
            eval(&[("if-none-match", "*, \"a\"")], ok, &response),
            Condition::Proceed
        );
        assert_eq!(
            eval(
                &[("if-none-match", "\"a\""), ("if-none-match", "*")],
                ok,
                &response
            ),
            Condition::Proceed
        );
        assert_eq!(
            eval(&[("if-none-match", "*, *")], ok, &response),
            Condition::Proceed
        );
    }

    #[test]
    fn if_none_match_garbage_is_ignored() {
        let ok = StatusCode::OK;
        let response = [("etag", "\"a\"")];
        for garbage in [
            "a",
            "\"a\" \"b\"",
            "\"a",
            "w/\"a\"",
            "\"a\"; q=1",
            "\"a\", b",
            "**",
        ] {
            assert_eq!(
                eval(&[("if-none-match", garbage)], ok, &response),
                Condition::Proceed,
                "{garbage}"
            );
        }
        // One malformed line poisons the whole field, even if another matches.
        let request = [("if-none-match", "\"a\""), ("if-none-match", "nope")];
        assert_eq!(eval(&request, ok, &response), Condition::Proceed);
    }

    #[test]
    fn malformed_if_none_match_still_disables_if_modified_since() {
        let request = [("if-none-match", "*, \"a\""), ("if-modified-since", LM)];
        let response = [("etag", "\"a\""), ("last-modified", LM)];
        assert_eq!(
            eval(&request, StatusCode::OK, &response),
            Condition::Proceed
        );
    }

    #[test]
    fn if_none_match_present_disables_if_modified_since() {
        let request = [("if-none-match", "\"old\""), ("if-modified-since", LM)];
        let response = [("etag", "\"new\""), ("last-modified", LM)];
        assert_eq!(
            eval(&request, StatusCode::OK, &response),
            Condition::Proceed
        );
    }

    #[test]
    fn empty_if_none_match_matches_nothing_but_still_disables_if_modified_since() {
        let request = [("if-none-match", ""), ("if-modified-since", LM)];
        let response = [("etag", "\"a\""), ("last-modified", LM)];
        assert_eq!(
            eval(&request, StatusCode::OK, &response),
            Condition::Proceed
        );
    }

    #[test]
    fn if_none_match_without_response_etag_proceeds() {
        let r = eval(&[("if-none-match", "\"a\"")], StatusCode::OK, &[]);
        assert_eq!(r, Condition::Proceed);
        let r = eval(
            &[("if-none-match", "\"a\"")],
            StatusCode::OK,
            &[("etag", "junk")],
        );
        assert_eq!(r, Condition::Proceed);
        let two = [("etag", "\"a\""), ("etag", "\"a\"")];
        assert_eq!(
            eval(&[("if-none-match", "\"a\"")], StatusCode::OK, &two),
            Condition::Proceed
        );
    }

    #[test]
    fn if_none_match_compares_non_utf8_obs_text_bytes() {
        let mut request = HeaderMap::new();
        request.append(IF_NONE_MATCH, HeaderValue::from_bytes(b"\"\xff\"").unwrap());
        let mut response = HeaderMap::new();
        response.append(ETAG, HeaderValue::from_bytes(b"W/\"\xff\"").unwrap());
        let c = Conditionals::from_request(&Method::GET, &request).unwrap();
        assert_eq!(
            c.evaluate(StatusCode::OK, &response),
            Condition::NotModified
        );
    }

    #[test]
    fn only_200_can_become_not_modified() {
        let request = [("if-none-match", "\"a\""), ("if-modified-since", LM)];
        let response = [("etag", "\"a\""), ("last-modified", LM)];
        for status in [
            StatusCode::CREATED,
            StatusCode::NO_CONTENT,
            StatusCode::PARTIAL_CONTENT,
            StatusCode::MOVED_PERMANENTLY,
            StatusCode::NOT_MODIFIED,
            StatusCode::NOT_FOUND,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            assert_eq!(
                eval(&request, status, &response),
                Condition::Proceed,
                "{status}"
            );
            assert_eq!(
                eval(&[("if-none-match", "*")], status, &response),
                Condition::Proceed
            );
        }
    }

    #[test]
    fn if_modified_since_on_404_proceeds() {
        let r = eval(
            &[("if-modified-since", LM)],
            StatusCode::NOT_FOUND,
            &[("last-modified", LM)],
        );
        assert_eq!(r, Condition::Proceed);
    }

    #[test]
    fn if_modified_since_compares_whole_seconds() {
        let request = [("if-modified-since", LM)];
        let ok = StatusCode::OK;
        // Equal and earlier: not modified.
        assert_eq!(
            eval(&request, ok, &[("last-modified", LM)]),
            Condition::NotModified
        );
        assert_eq!(
            eval(
                &request,
                ok,
                &[("last-modified", "Sun, 06 Nov 1994 08:49:36 GMT")]
            ),
            Condition::NotModified
        );
        // One second later: modified.
        assert_eq!(
            eval(
                &request,
                ok,
                &[("last-modified", "Sun, 06 Nov 1994 08:49:38 GMT")]
            ),
            Condition::Proceed
        );
    }

    #[test]
    fn if_modified_since_accepts_rfc_850_and_asctime() {
        let ok = StatusCode::OK;
        let response = [("last-modified", LM)];
        for date in ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(
                eval(&[("if-modified-since", date)], ok, &response),
                Condition::NotModified,
                "{date}"
            );
        }
        // Also as the response's Last-Modified.
        let r = eval(
            &[("if-modified-since", LM)],
            ok,
            &[("last-modified", "Sun Nov  6 08:49:37 1994")],
        );
        assert_eq!(r, Condition::NotModified);
    }

    #[test]
    fn invalid_if_modified_since_is_ignored() {
        let ok = StatusCode::OK;
        let response = [("last-modified", LM)];
        for bad in [
            "yesterday",
            "",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Nov 1994 25:00:00 GMT",
        ] {
            assert_eq!(
                eval(&[("if-modified-since", bad)], ok, &response),
                Condition::Proceed,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn if_modified_since_with_several_members_is_ignored() {
        let ok = StatusCode::OK;
        let response = [("last-modified", LM)];
        let two_lines = [("if-modified-since", LM), ("if-modified-since", LM)];
        assert_eq!(eval(&two_lines, ok, &response), Condition::Proceed);
        let list = format!("{LM}, {LM}");
        assert_eq!(
            eval(&[("if-modified-since", &list)], ok, &response),
            Condition::Proceed
        );
    }

    #[test]
    fn if_modified_since_tolerates_surrounding_whitespace() {
        let value = format!(" {LM}\t");
        let r = eval(
            &[("if-modified-since", &value)],
            StatusCode::OK,
            &[("last-modified", LM)],
        );
        assert_eq!(r, Condition::NotModified);
    }

    #[test]
    fn if_modified_since_without_valid_last_modified_proceeds() {
        let request = [("if-modified-since", LM)];
        assert_eq!(eval(&request, StatusCode::OK, &[]), Condition::Proceed);
        assert_eq!(
            eval(&request, StatusCode::OK, &[("last-modified", "soon")]),
            Condition::Proceed
        );
        let two = [("last-modified", LM), ("last-modified", LM)];
        assert_eq!(eval(&request, StatusCode::OK, &two), Condition::Proceed);
    }

    // ---- 304 parts ----

    #[test]
    fn not_modified_parts_keeps_validators_and_cache_fields_only() {
        let (mut parts, ()) = http::Response::builder()
            .status(StatusCode::OK)
            .version(http::Version::HTTP_11)
            .header(CONTENT_TYPE, "text/html")
            .header(ETAG, "W/\"a\"")
            .header(VARY, "accept-encoding")
            .header(CONTENT_LENGTH, "1234")
            .header(VARY, "cookie")
            .header(DATE, LM)
            .header(CONTENT_ENCODING, "gzip")
            .header(TRANSFER_ENCODING, "chunked")
            .header(CACHE_CONTROL, "public, max-age=60")
            .header("cdn-cache-control", "max-age=600")
            .header("surrogate-control", "max-age=600")
            .header("surrogate-key", "home")
            .header("cache-tag", "home")
            .header(SET_COOKIE, "a=1")
            .header(SET_COOKIE, "b=2")
            .header(LAST_MODIFIED, LM)
            .header(EXPIRES, LM)
            .header(CONTENT_LOCATION, "/index.html")
            .header("x-custom", "1")
            .body(())
            .unwrap()
            .into_parts();
        parts.extensions.insert(42u32);

        let parts = not_modified_parts(parts);

        assert_eq!(parts.status, StatusCode::NOT_MODIFIED);
        assert_eq!(parts.version, http::Version::HTTP_11);
        assert_eq!(parts.extensions.get::<u32>(), Some(&42));
        let h = &parts.headers;
        assert_eq!(h[ETAG], "W/\"a\"");
        assert_eq!(h[DATE], LM);
        let vary: Vec<_> = h.get_all(VARY).iter().collect();
        assert_eq!(vary, ["accept-encoding", "cookie"]);
        let cookies: Vec<_> = h.get_all(SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        for name in [
            "cache-control",
            "cdn-cache-control",
            "surrogate-control",
            "surrogate-key",
            "cache-tag",
            "last-modified",
            "expires",
            "content-location",
        ] {
            assert!(h.contains_key(name), "{name} dropped");
        }
        for name in [
            CONTENT_LENGTH,
            CONTENT_TYPE,
            CONTENT_ENCODING,
            TRANSFER_ENCODING,
            HeaderName::from_static("x-custom"),
        ] {
            assert!(!h.contains_key(&name), "{name} kept");
        }
        assert_eq!(h.len(), 14);
    }

    // ---- properties ----

    fn etagc_char() -> impl Strategy<Value = char> {
        prop_oneof![
            Just('!'),
            proptest::char::range('#', '~'),
            proptest::char::range('\u{80}', char::MAX),
        ]
    }

    fn valid_tag() -> impl Strategy<Value = ETag> {
        (
            proptest::collection::vec(etagc_char(), 0..24),
            any::<bool>(),
        )
            .prop_map(|(chars, weak)| {
                let opaque: String = chars.into_iter().collect();
                if weak {
                    ETag::weak(&opaque).unwrap()
                } else {
                    ETag::strong(&opaque).unwrap()
                }
            })
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ETag::parse(&bytes);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = s.parse::<ETag>();
            }
        }

        #[test]
        fn conditionals_never_panic_on_arbitrary_headers(
            lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..48), 0..4),
            etag in proptest::collection::vec(any::<u8>(), 0..48),
            date in proptest::collection::vec(any::<u8>(), 0..48),
        ) {
            let mut request = HeaderMap::new();
            for line in &lines {
                if let Ok(v) = HeaderValue::from_bytes(line) {
                    request.append(IF_NONE_MATCH, v);
                }
            }
            if let Ok(v) = HeaderValue::from_bytes(&date) {
                request.append(IF_MODIFIED_SINCE, v.clone());
                let mut response = HeaderMap::new();
                if let Ok(e) = HeaderValue::from_bytes(&etag) {
                    response.append(ETAG, e);
                }
                response.append(LAST_MODIFIED, v);
                if let Some(c) = Conditionals::from_request(&Method::GET, &request) {
                    let _ = c.evaluate(StatusCode::OK, &response);
                }
            }
        }

        #[test]
        fn display_then_parse_round_trips(tag in valid_tag()) {
            let text = tag.to_string();
            prop_assert_eq!(ETag::parse(text.as_bytes()), Some(tag.clone()));
            prop_assert_eq!(text.parse::<ETag>(), Ok(tag.clone()));
            prop_assert_eq!(ETag::parse(tag.to_header_value().as_bytes()), Some(tag));
        }

        #[test]
        fn a_tag_in_if_none_match_matches_itself(tag in valid_tag(), other in valid_tag()) {
            let mut request = HeaderMap::new();
            request.append(IF_NONE_MATCH, other.to_header_value());
            request.append(IF_NONE_MATCH, tag.to_header_value());
            let mut response = HeaderMap::new();
            response.append(ETAG, tag.to_header_value());
            let c = Conditionals::from_request(&Method::GET, &request).unwrap();
            prop_assert_eq!(c.evaluate(StatusCode::OK, &response), Condition::NotModified);
        }
    }
}
