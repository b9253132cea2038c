//! Limits on the size of a request's header section (RFC 6585 §5:
//! `431 Request Header Fields Too Large`).
//!
//! A server bounds what it reads into memory and what it passes on; an
//! upstream that accepts a 100 KB header line would otherwise receive one
//! from anyone. [`HeaderLimits`] is a plain value with a check;
//! [`ReverseProxy`](crate::proxy::ReverseProxy) applies it to every request
//! before forwarding.

use http::request::Parts;

/// The longest header field line and the largest header section a request
/// may have; a request over either gets `431` (RFC 6585 §5).
///
/// A field line counts `name: value` (name, two bytes, value); the section
/// counts every field line plus 2 bytes of CRLF each, plus the request
/// target. Defaults: 16 KiB per line (twice nginx's
/// `large_client_header_buffers 4 8k`, which real cookie headers outgrow),
/// 64 KiB for the section (Envoy's `max_request_headers_kb` is 60 KiB,
/// nginx's 4 × 8 KiB buffers 32 KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    line: usize,
    block: usize,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderLimits {
    /// 16 KiB per field line, 64 KiB for the header section.
    #[must_use]
    pub const fn new() -> Self {
        HeaderLimits {
            line: 16 * 1024,
            block: 64 * 1024,
        }
    }

    /// The longest field line, in bytes (`name: value`).
    #[must_use]
    pub const fn max_line(mut self, bytes: usize) -> Self {
        self.line = bytes;
        self
    }

    /// The largest header section, in bytes (field lines with their CRLF,
    /// plus the request target).
    #[must_use]
    pub const fn max_block(mut self, bytes: usize) -> Self {
        self.block = bytes;
        self
    }

    /// No limit (`usize::MAX` for both): for a server in front that already
    /// bounds its headers.
    #[must_use]
    pub const fn unlimited() -> Self {
        HeaderLimits {
            line: usize::MAX,
            block: usize::MAX,
        }
    }

    /// Whether the request's header section is within the limits; `false`
    /// means answer `431 Request Header Fields Too Large`.
    #[must_use]
    pub fn allows(&self, parts: &Parts) -> bool {
        let target = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        let mut total = target;
        for (name, value) in &parts.headers {
            let line = name.as_str().len() + 2 + value.len();
            if line > self.line {
                return false;
            }
            total = total.saturating_add(line + 2);
            if total > self.block {
                return false;
            }
        }
        total <= self.block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, String)]) -> Parts {
        let mut b = http::Request::builder().uri("/p");
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_long_line_or_a_large_block_is_refused() {
        let limits = HeaderLimits::new().max_line(100).max_block(300);
        assert!(limits.allows(&parts(&[("a", "x".repeat(97))])));
        assert!(!limits.allows(&parts(&[("a", "x".repeat(98))])));
        let many: Vec<(&str, String)> = (0..5).map(|_| ("cookie", "x".repeat(60))).collect();
        assert!(!limits.allows(&parts(&many)));
        assert!(limits.allows(&parts(&many[..3])));
        assert!(HeaderLimits::unlimited().allows(&parts(&[("a", "x".repeat(100_000))])));
        assert!(!HeaderLimits::new().allows(&parts(&[("a", "x".repeat(100_000))])));
    }
}
