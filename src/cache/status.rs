//! The `Cache-Status` member this cache adds (RFC 9211).

use std::fmt::Write;

use http::HeaderValue;

/// Why a request went forward (RFC 9211 §2.2), most specific known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fwd {
    /// Configured not to use the cache for this request.
    Bypass,
    /// The method must go to the origin.
    Method,
    /// Nothing stored for the URI.
    UriMiss,
    /// The URI is stored, but no variant matched the request.
    VaryMiss,
    /// A fresh entry existed, but the request's directives forbade it.
    Request,
    /// A stale (or must-revalidate) entry was selected.
    Stale,
}

impl Fwd {
    pub(crate) const ALL: [Fwd; 6] = [
        Fwd::Bypass,
        Fwd::Method,
        Fwd::UriMiss,
        Fwd::VaryMiss,
        Fwd::Request,
        Fwd::Stale,
    ];

    fn token(self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Request => "request",
            Fwd::Stale => "stale",
        }
    }
}

/// The cache's identifier as an RFC 8941 Token when it is one, else as a
/// String (RFC 9211 §2).
pub(crate) fn member_name(name: &str) -> String {
    let is_token = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'*')
        && name
            .bytes()
            .all(|b| crate::directives::is_tchar(b) || b == b':' || b == b'/');
    if is_token {
        return name.to_owned();
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        // sf-string admits printable ASCII only; anything else is dropped.
        if c == '"' || c == '\\' {
            out.push('\\');
            out.push(c);
        } else if (' '..='~').contains(&c) {
            out.push(c);
        }
    }
    out.push('"');
    out
}

fn value(text: &str) -> HeaderValue {
    // Built from a token or sf-string and integers: always a valid value.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("cache"))
}

/// `name; hit; ttl=N`.
pub(crate) fn hit(name: &str, ttl: i64) -> HeaderValue {
    let mut s = String::with_capacity(name.len() + 20);
    let _ = write!(s, "{name}; hit; ttl={ttl}");
    value(&s)
}

/// `name; hit; ttl=N; detail=D`, for a hit from the shared tier.
#[cfg(feature = "redis")]
pub(crate) fn hit_detail(name: &str, ttl: i64, detail: &str) -> HeaderValue {
    let mut s = String::with_capacity(name.len() + 40);
    let _ = write!(s, "{name}; hit; ttl={ttl}; detail={detail}");
    value(&s)
}

/// `name; fwd=reason[; fwd-status=N][; stored][; collapsed[=?0]]`.
pub(crate) fn fwd(
    name: &str,
    fwd: Fwd,
    fwd_status: Option<u16>,
    stored: bool,
    collapsed: Option<bool>,
) -> HeaderValue {
    let mut s = String::with_capacity(name.len() + 48);
    let _ = write!(s, "{name}; fwd={}", fwd.token());
    if let Some(status) = fwd_status {
        let _ = write!(s, "; fwd-status={status}");
    }
    if stored {
        s.push_str("; stored");
    }
    match collapsed {
        Some(true) => s.push_str("; collapsed"),
        Some(false) => s.push_str("; collapsed=?0"),
        None => {}
    }
    value(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_serialise_as_rfc_8941() {
        assert_eq!(hit("tower-ssr", 42), "tower-ssr; hit; ttl=42");
        assert_eq!(hit("tower-ssr", -3), "tower-ssr; hit; ttl=-3");
        assert_eq!(
            fwd("tower-ssr", Fwd::Stale, Some(304), true, None),
            "tower-ssr; fwd=stale; fwd-status=304; stored"
        );
        assert_eq!(
            fwd("c", Fwd::UriMiss, None, false, Some(false)),
            "c; fwd=uri-miss; collapsed=?0"
        );
    }

    #[test]
    fn names_that_are_not_tokens_are_quoted() {
        assert_eq!(member_name("tower-ssr"), "tower-ssr");
        assert_eq!(member_name("My Cache"), "\"My Cache\"");
        assert_eq!(member_name("1cache"), "\"1cache\"");
        assert_eq!(member_name("a\"b"), "\"a\\\"b\"");
    }
}
