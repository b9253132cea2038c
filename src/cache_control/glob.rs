//! Path globs that pick Cache-Control rules by request path.
//!
//! Globs rather than regular expressions: a rule table is configuration
//! written by people, `/assets/**` reads better than `^/assets(/.*)?$`, and a
//! glob whose only wildcards are `*`, `?` and `**` can be matched without
//! backtracking blow-up, so a hostile request path cannot make rule selection
//! slow.
//!
//! Patterns are compiled once into a [`Matcher`]; matching then walks the
//! path in place and never allocates, because it runs on every response.

use std::fmt;
use std::str::FromStr;

/// A compiled path glob such as `/assets/**` or `/posts/*`.
///
/// Used to pick a Cache-Control rule by request path, the way nginx
/// `location` blocks or Varnish VCL `req.url ~` tests do, but with globs.
///
/// # Syntax
///
/// A pattern is a list of segments separated by `/`, and must start with `/`.
/// Within a segment:
///
/// - `*` matches zero or more characters, never `/`. A segment may hold
///   several: `/assets/app.*.js`, `/x/*-*.css`.
/// - `?` matches exactly one character, never `/`.
/// - `\` makes the next character literal: `\*`, `\?`, `\\`. A trailing lone
///   `\` is an error, and so is `\/` (a `/` always separates segments).
/// - Every other character matches itself.
///
/// A segment that is exactly `**` matches zero or more whole segments, so
/// `/assets/**` covers `/assets` itself and everything below it. `**` inside
/// a longer segment (`/a**b`, `/**.js`) is an error.
///
/// `[`, `]`, `{` and `}` are rejected as not supported, so that character
/// classes and brace alternatives can be added later without changing the
/// meaning of an accepted pattern; write `\[` etc. to match them literally.
/// The empty pattern is an error; `/**` matches every path.
///
/// | Pattern             | Matches                                          | Does not match                  |
/// |---------------------|--------------------------------------------------|---------------------------------|
/// | `/about`            | `/about`                                         | `/about/`, `/About`             |
/// | `/posts/*`          | `/posts/1`, `/posts/`                            | `/posts`, `/posts/1/2`          |
/// | `/assets/**`        | `/assets`, `/assets/`, `/assets/a/b.js`          | `/assetsx`, `/static/a.js`      |
/// | `/**`               | every path                                       | `*` (not a path)                |
/// | `/a/**/z`           | `/a/z`, `/a/b/z`, `/a/b/c/z`                     | `/a/zz`, `/a/b/z/`              |
/// | `/assets/app.*.js`  | `/assets/app.3f9a1c.js`, `/assets/app..js`       | `/assets/app.js`                |
/// | `/v?/users`         | `/v1/users`, `/v2/users`                         | `/v/users`, `/v10/users`        |
/// | `/files/\*`         | `/files/*`                                       | `/files/a`                      |
///
/// # Matching
///
/// Match against the path only: the caller strips the query (`?…`), which is
/// not part of the path (RFC 3986 §3.3). Matching is byte-exact and
/// case-sensitive, because paths are (RFC 3986 §6.2.2.1 only makes the scheme
/// and host case-insensitive). The path is matched as sent: percent-encoding
/// is not decoded (`/a%2Fb` is one segment and does not match `/a/b`), and
/// dot segments, repeated `/` and a trailing `/` are significant. A path that
/// does not start with `/` (such as the `*` of `OPTIONS *`) matches nothing.
///
/// `?` and `*` count characters (Unicode scalar values); in a path as sent,
/// which is ASCII, that is one byte each.
///
/// Matching never allocates and takes time polynomial in the pattern and path
/// lengths, whatever they hold. A pattern without wildcards is a string
/// comparison, and one of the form `/literal/prefix/**` a prefix check.
///
/// # Examples
///
/// ```
/// use tower_ssr::cache_control::PathGlob;
///
/// let assets = PathGlob::new("/assets/**")?;
/// assert!(assets.matches("/assets/app.3f9a1c.js"));
/// assert!(assets.matches("/assets"));
/// assert!(!assets.matches("/assetsx"));
///
/// let posts: PathGlob = "/posts/*".parse()?;
/// assert!(posts.matches("/posts/hello-world"));
/// assert!(!posts.matches("/posts/hello-world/comments"));
/// assert_eq!(posts.to_string(), "/posts/*");
/// # Ok::<(), tower_ssr::cache_control::InvalidGlob>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    pattern: String,
    matcher: Matcher,
}

impl PathGlob {
    /// Compiles `pattern`; see the [type-level docs](PathGlob#syntax) for the
    /// syntax.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidGlob`] if the pattern is empty, does not start with
    /// `/`, has `**` inside a longer segment, ends in a lone `\`, escapes a
    /// `/`, or contains an unescaped `[`, `]`, `{` or `}`.
    pub fn new(pattern: &str) -> Result<PathGlob, InvalidGlob> {
        Ok(PathGlob {
            pattern: pattern.to_owned(),
            matcher: Matcher::compile(parse(pattern)?),
        })
    }

    /// The pattern as written, before compilation.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the request `path` (without its query) matches this glob.
    ///
    /// See [Matching](PathGlob#matching) for what is compared.
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        self.matcher.matches(path)
    }
}

impl FromStr for PathGlob {
    type Err = InvalidGlob;

    fn from_str(pattern: &str) -> Result<Self, Self::Err> {
        PathGlob::new(pattern)
    }
}

impl fmt::Display for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// Why a glob pattern was rejected by [`PathGlob::new`].
///
/// Its [`Display`](fmt::Display) output names the pattern, the reason and,
/// where there is one, the byte offset of the offending character, so it can
/// be shown as is in a configuration error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidGlob {
    pattern: String,
    reason: Reason,
}

impl InvalidGlob {
    /// The rejected pattern.
    #[must_use]
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Why it was rejected, to match on.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_ssr::cache_control::{GlobErrorKind, PathGlob};
    ///
    /// assert_eq!(PathGlob::new("posts/*").unwrap_err().kind(), GlobErrorKind::NoLeadingSlash);
    /// assert_eq!(PathGlob::new("").unwrap_err().kind(), GlobErrorKind::Empty);
    /// ```
    #[must_use]
    pub fn kind(&self) -> GlobErrorKind {
        match self.reason {
            Reason::Empty => GlobErrorKind::Empty,
            Reason::NoLeadingSlash => GlobErrorKind::NoLeadingSlash,
            Reason::DoubleStarInSegment { .. } => GlobErrorKind::DoubleStarInSegment,
            Reason::Unsupported { .. } => GlobErrorKind::Unsupported,
            Reason::EscapedSlash { .. } => GlobErrorKind::EscapedSlash,
            Reason::TrailingBackslash => GlobErrorKind::TrailingBackslash,
        }
    }
}

/// Why a glob was rejected: [`InvalidGlob::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GlobErrorKind {
    /// The pattern is empty (`/**` matches every path).
    Empty,
    /// The pattern does not start with `/`.
    NoLeadingSlash,
    /// `**` is not a whole segment (`/a**`).
    DoubleStarInSegment,
    /// `[`, `]`, `{` or `}` unescaped (reserved for character classes and
    /// braces).
    Unsupported,
    /// An escaped `/` (`\/`).
    EscapedSlash,
    /// A `\` with nothing after it.
    TrailingBackslash,
}

impl fmt::Display for InvalidGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid path glob {:?}: ", self.pattern)?;
        match self.reason {
            Reason::Empty => f.write_str("the pattern is empty (`/**` matches every path)"),
            Reason::NoLeadingSlash => f.write_str("the pattern must start with `/`"),
            Reason::DoubleStarInSegment { at } => write!(
                f,
                "`**` at byte {at} must be a whole segment, as in `/a/**/b`; \
                 use `*` within a segment"
            ),
            Reason::Unsupported { ch, at } => write!(
                f,
                "`{ch}` at byte {at} is not supported (reserved for character classes \
                 and braces); write `\\{ch}` to match it literally"
            ),
            Reason::EscapedSlash { at } => write!(
                f,
                "`\\/` at byte {at} is not allowed: `/` always separates segments"
            ),
            Reason::TrailingBackslash => f.write_str("the trailing `\\` escapes nothing"),
        }
    }
}

impl std::error::Error for InvalidGlob {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Empty,
    NoLeadingSlash,
    DoubleStarInSegment { at: usize },
    Unsupported { ch: char, at: usize },
    EscapedSlash { at: usize },
    TrailingBackslash,
}

/// The compiled form of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    /// No wildcards: the path must equal this unescaped text.
    Exact(Box<str>),
    /// `<literal>/**` (the literal may be empty): the path must be this text
    /// or continue it with `/`.
    Subtree(Box<str>),
    /// Anything else, matched segment by segment.
    Segments(Box<[Segment]>),
}

/// One `/`-separated piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Wildcard-free, unescaped; matches exactly one equal segment.
    Literal(Box<str>),
    /// A lone `*`: any one segment, empty included.
    AnyOne,
    /// `**`: zero or more whole segments.
    AnyMany,
    /// A segment with `*` or `?` among other tokens; matches one segment.
    Glob(Box<[Token]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// Unescaped text, never empty.
    Literal(Box<str>),
    /// `*`.
    Star,
    /// `?`.
    One,
}

fn parse(pattern: &str) -> Result<Vec<Segment>, InvalidGlob> {
    let fail = |reason| InvalidGlob {
        pattern: pattern.to_owned(),
        reason,
    };
    if pattern.is_empty() {
        return Err(fail(Reason::Empty));
    }
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err(fail(Reason::NoLeadingSlash));
    };

    let mut segments = Vec::new();
    let mut tokens = Vec::new();
    let mut literal = String::new();
    // Where the first `**` of the current segment starts, to report it if the
    // segment turns out to be more than just `**`.
    let mut double_star_at = None;
    // Offsets are reported against the whole pattern, hence the `+ 1` for the
    // stripped leading `/`.
    let mut chars = rest.char_indices().map(|(i, c)| (i + 1, c));
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                None => return Err(fail(Reason::TrailingBackslash)),
                Some((_, '/')) => return Err(fail(Reason::EscapedSlash { at })),
                Some((_, escaped)) => literal.push(escaped),
            },
            '*' => {
                // Escapes land in `literal`, so a `Star` directly before this
                // one with nothing flushed in between means the source had
                // `**` right here.
                if literal.is_empty() && tokens.last() == Some(&Token::Star) {
                    double_star_at.get_or_insert(at - 1);
                }
                flush(&mut literal, &mut tokens);
                tokens.push(Token::Star);
            }
            '?' => {
                flush(&mut literal, &mut tokens);
                tokens.push(Token::One);
            }
            '[' | ']' | '{' | '}' => return Err(fail(Reason::Unsupported { ch: c, at })),
            '/' => {
                flush(&mut literal, &mut tokens);
                segments.push(finish_segment(&mut tokens, double_star_at.take()).map_err(fail)?);
            }
            _ => literal.push(c),
        }
    }
    flush(&mut literal, &mut tokens);
    segments.push(finish_segment(&mut tokens, double_star_at).map_err(fail)?);
    Ok(segments)
}

fn flush(literal: &mut String, tokens: &mut Vec<Token>) {
    if !literal.is_empty() {
        tokens.push(Token::Literal(std::mem::take(literal).into_boxed_str()));
    }
}

fn finish_segment(
    tokens: &mut Vec<Token>,
    double_star_at: Option<usize>,
) -> Result<Segment, Reason> {
    let segment = match tokens.as_slice() {
        [] => Segment::Literal("".into()),
        [Token::Star, Token::Star] => Segment::AnyMany,
        _ if double_star_at.is_some() => {
            let at = double_star_at.unwrap_or_default();
            return Err(Reason::DoubleStarInSegment { at });
        }
        [Token::Literal(text)] => Segment::Literal(text.clone()),
        [Token::Star] => Segment::AnyOne,
        _ => Segment::Glob(tokens.as_slice().into()),
    };
    tokens.clear();
    Ok(segment)
}

impl Matcher {
    fn compile(mut segments: Vec<Segment>) -> Matcher {
        // `**/**` means the same as `**`; merging them keeps the matcher's
        // backtracking state to one `**` per run and lets `/a/**/**` take the
        // prefix fast path.
        segments.dedup_by(|b, a| *a == Segment::AnyMany && *b == Segment::AnyMany);
        let (subtree, head) = match segments.split_last() {
            Some((Segment::AnyMany, head)) => (true, head),
            _ => (false, segments.as_slice()),
        };
        if let Some(literal) = literal_path(head) {
            return if subtree {
                Matcher::Subtree(literal.into_boxed_str())
            } else {
                Matcher::Exact(literal.into_boxed_str())
            };
        }
        Matcher::Segments(segments.into_boxed_slice())
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Matcher::Exact(literal) => path == &**literal,
            // `/**`: every path. Decided before `strip_prefix`, because
            // stripping an empty prefix measured 66 ns here (in glibc's
            // memcmp), 30 times the whole match.
            Matcher::Subtree(prefix) if prefix.is_empty() => path.starts_with('/'),
            Matcher::Subtree(prefix) => path
                .strip_prefix(&**prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            Matcher::Segments(segments) => match path.strip_prefix('/') {
                Some(rest) => match_segments(segments, rest),
                None => false,
            },
        }
    }
}

/// `/a/b` for literal segments `a`, `b`; `None` if any segment has a wildcard.
fn literal_path(segments: &[Segment]) -> Option<String> {
    let mut path = String::new();
    for segment in segments {
        match segment {
            Segment::Literal(text) => {
                path.push('/');
                path.push_str(text);
            }
            _ => return None,
        }
    }
    Some(path)
}

/// Splits the first segment off `text`, returning the text after its `/`, or
/// `None` if it was the last segment.
fn split_segment(text: &str) -> (&str, Option<&str>) {
    match text.split_once('/') {
        Some((segment, rest)) => (segment, Some(rest)),
        None => (text, None),
    }
}

/// Matches `path` (with its leading `/` removed) segment by segment.
///
/// This is the classic greedy wildcard algorithm with segments as the unit:
/// every non-`**` pattern segment consumes exactly one path segment, so on a
/// mismatch it suffices to let the most recent `**` swallow one more segment
/// and retry from just after it. Earlier `**`s never need revisiting, which
/// bounds the work at (pattern segments × path segments) segment matches.
fn match_segments(pattern: &[Segment], path: &str) -> bool {
    let mut p = 0;
    let mut text = Some(path);
    // (pattern index after the last `**`, path where that `**` stopped).
    let mut retry: Option<(usize, &str)> = None;
    while let Some(current) = text {
        let (segment, next) = split_segment(current);
        match pattern.get(p) {
            Some(Segment::AnyMany) => {
                retry = Some((p + 1, current));
                p += 1;
                continue;
            }
            Some(expected) if expected.matches_one(segment) => {
                p += 1;
                text = next;
                continue;
            }
            _ => {}
        }
        let Some((after_star, star_end)) = retry else {
            return false;
        };
        let (_, swallowed) = split_segment(star_end);
        p = after_star;
        text = swallowed;
        retry = swallowed.map(|rest| (after_star, rest));
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|s| *s == Segment::AnyMany))
}

impl Segment {
    /// Whether this single-segment pattern matches `segment` (which has no
    /// `/`). `**` spans segments, so it is handled by [`match_segments`].
    fn matches_one(&self, segment: &str) -> bool {
        match self {
            Segment::Literal(text) => segment == &**text,
            Segment::AnyOne => true,
            Segment::AnyMany => false,
            Segment::Glob(tokens) => match_tokens(tokens, segment),
        }
    }
}

/// Matches one segment against `*`, `?` and literal tokens.
///
/// The same greedy algorithm as [`match_segments`], one level down: on a
/// mismatch, the most recent `*` takes one more character. Literal runs and
/// `?` consume a length fixed by their start position, which is what makes
/// retrying only the last `*` enough. Positions stay on `char` boundaries
/// because every step consumes whole characters.
fn match_tokens(tokens: &[Token], segment: &str) -> bool {
    let mut p = 0;
    let mut t = 0;
    // (token index after the last `*`, byte offset where that `*` stopped).
    let mut retry: Option<(usize, usize)> = None;
    while let Some(rest) = segment.get(t..).filter(|rest| !rest.is_empty()) {
        match tokens.get(p) {
            Some(Token::Star) => {
                retry = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(Token::Literal(text)) if rest.starts_with(&**text) => {
                t += text.len();
                p += 1;
                continue;
            }
            Some(Token::One) => {
                t += first_char_len(rest);
                p += 1;
                continue;
            }
            _ => {}
        }
        let Some((after_star, star_end)) = retry else {
            return false;
        };
        let swallowed = star_end + segment.get(star_end..).map_or(1, first_char_len);
        p = after_star;
        t = swallowed;
        retry = Some((after_star, swallowed));
    }
    tokens
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|token| *token == Token::Star))
}

/// Byte length of the first character of a non-empty `text`; 1 if empty, so
/// callers always make progress.
fn first_char_len(text: &str) -> usize {
    text.chars().next().map_or(1, char::len_utf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn glob(pattern: &str) -> PathGlob {
        match PathGlob::new(pattern) {
            Ok(glob) => glob,
            Err(e) => panic!("{e}"),
        }
    }

    fn assert_matches(pattern: &str, yes: &[&str], no: &[&str]) {
        let g = glob(pattern);
        for path in yes {
            assert!(g.matches(path), "{pattern} should match {path}");
        }
        for path in no {
            assert!(!g.matches(path), "{pattern} should not match {path}");
        }
    }

    fn reason(pattern: &str) -> Reason {
        match PathGlob::new(pattern) {
            Ok(_) => panic!("{pattern} should be rejected"),
            Err(e) => e.reason,
        }
    }

    #[test]
    fn literal_pattern_matches_only_itself() {
        assert_matches(
            "/about",
            &["/about"],
            &[
                "/about/",
                "/About",
                "/abou",
                "/aboutx",
                "about",
                "",
                "/about?x=1",
            ],
        );
        assert_matches("/", &["/"], &["", "//", "/a"]);
        assert_eq!(glob("/about").matcher, Matcher::Exact("/about".into()));
    }

    #[test]
    fn star_matches_within_one_segment_including_empty() {
        assert_matches(
            "/posts/*",
            &["/posts/1", "/posts/", "/posts/hello-world"],
            &["/posts", "/posts/1/2", "/posts//", "/postsx/1", "/post/1"],
        );
    }

    #[test]
    fn double_star_matches_zero_or_more_segments() {
        assert_matches(
            "/assets/**",
            &[
                "/assets",
                "/assets/",
                "/assets/a",
                "/assets/a/b.js",
                "/assets//x",
            ],
            &[
                "/assetsx",
                "/assetsx/a",
                "/asset",
                "/static/a.js",
                "assets/a",
                "",
            ],
        );
        assert_eq!(
            glob("/assets/**").matcher,
            Matcher::Subtree("/assets".into())
        );
    }

    #[test]
    fn root_double_star_matches_every_path() {
        assert_matches(
            "/**",
            &["/", "/a", "/a/b/c", "//", "/a/"],
            &["", "*", "a/b"],
        );
    }

    #[test]
    fn inner_double_star_spans_any_number_of_segments() {
        assert_matches(
            "/a/**/z",
            &["/a/z", "/a/b/z", "/a/b/c/z", "/a/z/z", "/a//z"],
            &["/a", "/a/", "/a/zz", "/a/b/z/", "/b/z", "/z"],
        );
        assert_matches(
            "/**/x.js",
            &["/x.js", "/a/x.js", "/a/b/x.js"],
            &["/x.jsx", "/a/y.js"],
        );
        assert_matches("/**/", &["/", "/a/", "/a/b/"], &["/a", "/a/b"]);
    }

    #[test]
    fn question_mark_matches_exactly_one_character() {
        assert_matches(
            "/v?/users",
            &["/v1/users", "/v2/users", "/vé/users"],
            &["/v/users", "/v10/users", "/v/1/users"],
        );
        assert_matches("/?", &["/a"], &["/", "/ab", "//"]);
    }

    #[test]
    fn several_stars_in_one_segment() {
        assert_matches(
            "/assets/app.*.js",
            &[
                "/assets/app.3f9a1c.js",
                "/assets/app..js",
                "/assets/app.a.b.js",
            ],
            &[
                "/assets/app.js",
                "/assets/app.3f9a1c.css",
                "/assets/x/app.1.js",
            ],
        );
        assert_matches(
            "/x/*-*.css",
            &["/x/a-b.css", "/x/-.css", "/x/a-b-c.css"],
            &["/x/ab.css", "/x/a-b.cs", "/x/a/-b.css"],
        );
        assert_matches("/*a*a*a*b", &["/aaab", "/xaxaxaxb"], &["/aab", "/aaaa"]);
    }

    #[test]
    fn star_backtracks_only_within_its_segment() {
        assert_matches("/*/b", &["/a/b", "//b"], &["/a/c/b", "/b"]);
        assert_matches("/a*/*z", &["/a/z", "/ab/yz"], &["/a/b/z", "/b/z"]);
    }

    #[test]
    fn escapes_make_wildcards_literal() {
        assert_matches("/files/\\*", &["/files/*"], &["/files/a", "/files/"]);
        assert_matches("/q\\?", &["/q?"], &["/qa"]);
        assert_matches("/a\\\\b", &["/a\\b"], &["/ab"]);
        assert_matches("/\\[x\\]/\\{y\\}", &["/[x]/{y}"], &["/x/y"]);
        assert_matches("/\\a", &["/a"], &["/\\a"]);
        // `\*` next to `*` is a literal star then a wildcard, not `**`.
        assert_matches("/\\**", &["/*", "/*x"], &["/x"]);
        assert_matches("/*\\*", &["/*", "/x*"], &["/x"]);
        assert_matches("/\\*\\*", &["/**"], &["/a"]);
        assert_eq!(
            glob("/files/\\*").matcher,
            Matcher::Exact("/files/*".into())
        );
    }

    #[test]
    fn matching_is_case_sensitive_and_does_not_decode() {
        assert_matches("/Posts/*", &["/Posts/1"], &["/posts/1"]);
        assert_matches("/a/b", &["/a/b"], &["/a%2Fb", "/%61/b", "/a/./b"]);
        assert_matches("/a*", &["/a%2Fb"], &["/a/b"]);
    }

    #[test]
    fn adjacent_double_stars_collapse_and_keep_fast_path() {
        assert_eq!(glob("/a/**/**").matcher, Matcher::Subtree("/a".into()));
        assert_matches("/**/**/x", &["/x", "/a/b/x"], &["/x/a"]);
    }

    #[test]
    fn many_double_stars_on_a_long_path_finish() {
        let long = "/a".repeat(1000);
        let hit = format!("{long}/x");
        assert!(glob("/**/**/**/**/**/x").matches(&hit));
        assert!(!glob("/**/**/**/**/**/x").matches(&long));
        // Not collapsible: every `**` is followed by a segment that matches
        // almost everywhere, the worst case for naive recursion.
        let adversarial = glob("/**/a/**/a/**/a/**/a/**/a/**/x");
        assert!(adversarial.matches(&hit));
        assert!(!adversarial.matches(&long));
        let stars = glob(&format!("/{}b", "*a".repeat(20)));
        assert!(!stars.matches(&format!("/{}", "a".repeat(5000))));
    }

    #[test]
    fn display_and_as_str_return_the_original_pattern() {
        let g: PathGlob = "/a/**/**".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.as_str(), "/a/**/**");
        assert_eq!(g.to_string(), "/a/**/**");
    }

    #[test]
    fn rejects_empty_pattern() {
        assert_eq!(reason(""), Reason::Empty);
    }

    #[test]
    fn rejects_pattern_without_leading_slash() {
        assert_eq!(reason("assets/**"), Reason::NoLeadingSlash);
        assert_eq!(reason("*"), Reason::NoLeadingSlash);
        assert_eq!(reason("**"), Reason::NoLeadingSlash);
    }

    #[test]
    fn rejects_double_star_inside_a_segment() {
        assert_eq!(reason("/a**b"), Reason::DoubleStarInSegment { at: 2 });
        assert_eq!(reason("/**.js"), Reason::DoubleStarInSegment { at: 1 });
        assert_eq!(reason("/x/a**"), Reason::DoubleStarInSegment { at: 4 });
        assert_eq!(reason("/***"), Reason::DoubleStarInSegment { at: 1 });
        assert_eq!(reason("/**/***/x"), Reason::DoubleStarInSegment { at: 4 });
    }

    #[test]
    fn rejects_classes_and_braces_as_not_supported() {
        for (pattern, ch) in [("/[ab]", '['), ("/a]", ']'), ("/{a,b}", '{'), ("/a}", '}')] {
            let err = PathGlob::new(pattern)
                .err()
                .unwrap_or_else(|| panic!("{pattern}"));
            assert_eq!(
                err.reason,
                Reason::Unsupported {
                    ch,
                    at: 1 + pattern[1..].find(ch).unwrap_or(0)
                }
            );
            assert!(err.to_string().contains("not supported"), "{err}");
        }
    }

    #[test]
    fn rejects_trailing_backslash() {
        assert_eq!(reason("/a\\"), Reason::TrailingBackslash);
        assert_eq!(reason("/\\"), Reason::TrailingBackslash);
    }

    #[test]
    fn rejects_escaped_slash() {
        assert_eq!(reason("/a\\/b"), Reason::EscapedSlash { at: 2 });
    }

    #[test]
    fn error_display_names_pattern_and_reason() {
        let err = PathGlob::new("/a**b")
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(err.pattern(), "/a**b");
        let message = err.to_string();
        assert!(message.contains("\"/a**b\""), "{message}");
        assert!(message.contains("whole segment"), "{message}");
        let boxed: Box<dyn std::error::Error> = Box::new(err);
        assert!(boxed.to_string().starts_with("invalid path glob"));
    }

    /// Straightforward recursive matcher for unescaped patterns, used as the
    /// reference the fast one must agree with.
    fn reference(pattern: &str, path: &str) -> bool {
        fn segment(p: &[char], s: &[char]) -> bool {
            match p.split_first() {
                None => s.is_empty(),
                Some(('*', rest)) => (0..=s.len()).any(|i| segment(rest, &s[i..])),
                Some(('?', rest)) => !s.is_empty() && segment(rest, &s[1..]),
                Some((c, rest)) => s.first() == Some(c) && segment(rest, &s[1..]),
            }
        }
        fn segments(p: &[&str], s: &[&str]) -> bool {
            match p.split_first() {
                None => s.is_empty(),
                Some((&"**", rest)) => (0..=s.len()).any(|i| segments(rest, &s[i..])),
                Some((first, rest)) => match s.split_first() {
                    Some((seg, tail)) => {
                        let pc: Vec<char> = first.chars().collect();
                        let sc: Vec<char> = seg.chars().collect();
                        segment(&pc, &sc) && segments(rest, tail)
                    }
                    None => false,
                },
            }
        }
        let (Some(p), Some(s)) = (pattern.strip_prefix('/'), path.strip_prefix('/')) else {
            return false;
        };
        let p: Vec<&str> = p.split('/').collect();
        let s: Vec<&str> = s.split('/').collect();
        segments(&p, &s)
    }

    proptest! {
        #[test]
        fn matching_never_panics(pattern in "\\PC{0,24}", path in "\\PC{0,40}") {
            if let Ok(g) = PathGlob::new(&pattern) {
                let _ = g.matches(&path);
            }
        }

        #[test]
        fn matching_wildcard_heavy_input_never_panics(
            pattern in "/[*?/\\\\aé]{0,16}",
            path in "[/aé*?]{0,24}",
        ) {
            if let Ok(g) = PathGlob::new(&pattern) {
                let _ = g.matches(&path);
            }
        }

        #[test]
        fn wildcard_free_pattern_matches_exactly_itself(
            pattern in "/[a-zA-Z0-9._~%/-]{0,20}",
            other in "/[a-zA-Z0-9._~%/-]{0,20}",
        ) {
            let g = PathGlob::new(&pattern).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(g.matches(&pattern));
            prop_assert_eq!(g.matches(&other), other == pattern);
        }

        #[test]
        fn agrees_with_reference_matcher(
            pattern in "/((\\*\\*|[ab*?]{0,4})/){0,4}(\\*\\*|[ab*?]{0,4})",
            path in "/[ab/é]{0,12}",
        ) {
            // Patterns with `**` glued to other characters are rejected, which
            // the generator cannot avoid; those are covered elsewhere.
            if let Ok(g) = PathGlob::new(&pattern) {
                prop_assert_eq!(g.matches(&path), reference(&pattern, &path), "{} vs {}", pattern, path);
            }
        }

        #[test]
        fn fast_paths_agree_with_segment_matcher(
            pattern in "/([ab]{0,2}/){0,3}(\\*\\*|[ab]{0,2})(/\\*\\*)?",
            path in "[/ab]{0,10}",
        ) {
            let g = PathGlob::new(&pattern).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let slow = match parse(&pattern) {
                Ok(segments) => Matcher::Segments(segments.into_boxed_slice()),
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            };
            prop_assert_eq!(g.matches(&path), slow.matches(&path));
        }
    }
}
