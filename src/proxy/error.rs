//! Why forwarding to an upstream failed.

use std::fmt;

use super::BoxError;

/// Why forwarding to an upstream failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyError {
    /// The connection could not be made (refused, unreachable, connect
    /// timeout).
    Connect(BoxError),
    /// No response headers within the response timeout.
    Timeout,
    /// The upstream broke the exchange before response headers.
    Upstream(BoxError),
    /// The client's request body failed while it was being forwarded (the
    /// client hung up, or sent a broken chunk): the client's fault, not the
    /// upstream's.
    RequestBody(BoxError),
    /// The client's request body stalled (nothing for longer than the
    /// response timeout) while it was being forwarded: the client's fault,
    /// not the upstream's.
    RequestBodyTimeout,
    /// The client's request target is too long to go under the upstream's
    /// base path (the two together are longer than a URI may be): the
    /// client's fault.
    TargetTooLong,
}

impl ProxyError {
    /// Whether the failure is the client's, not the upstream's: it neither
    /// counts against the upstream's health nor moves the request to
    /// another upstream.
    #[must_use]
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::RequestBody(_) | ProxyError::RequestBodyTimeout | ProxyError::TargetTooLong
        )
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Connect(_) => f.write_str("could not connect to the upstream"),
            ProxyError::Timeout => f.write_str("the upstream did not answer in time"),
            ProxyError::Upstream(_) => f.write_str("the upstream failed before response headers"),
            ProxyError::RequestBody(_) => f.write_str("the client's request body failed"),
            ProxyError::RequestBodyTimeout => f.write_str("the client's request body stalled"),
            ProxyError::TargetTooLong => {
                f.write_str("the request target is too long under the upstream's base path")
            }
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxyError::Connect(e) | ProxyError::Upstream(e) | ProxyError::RequestBody(e) => {
                Some(&**e)
            }
            ProxyError::Timeout | ProxyError::RequestBodyTimeout | ProxyError::TargetTooLong => {
                None
            }
        }
    }
}

/// Why a proxy could not be configured: reported when it is built, never
/// per request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// An upstream that does not parse (see [`upstream`](super::upstream)).
    InvalidUpstream(String),
    /// An upstream whose scheme this build cannot speak: `https://` without
    /// feature `tls`, `unix:` off Unix, or a scheme none of the transports
    /// know.
    UnsupportedScheme(String),
    /// A CA bundle that cannot be read or holds no usable certificate.
    Ca(String),
    /// `https://` upstreams are configured, but no authority is trusted
    /// (no system store found and no CA bundle given).
    NoTrustedRoots,
    /// rustls refused the TLS configuration.
    Tls(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::InvalidUpstream(s) => write!(f, "invalid upstream {s}"),
            ConfigError::UnsupportedScheme(s) => {
                write!(f, "this build cannot speak to upstream {s}")
            }
            ConfigError::Ca(s) => write!(f, "CA bundle: {s}"),
            ConfigError::NoTrustedRoots => f.write_str(
                "https upstreams are configured but no certificate authority is trusted",
            ),
            ConfigError::Tls(s) => write!(f, "TLS configuration: {s}"),
        }
    }
}

impl std::error::Error for ConfigError {}
