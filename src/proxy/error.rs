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
}

impl ProxyError {
    /// Whether the failure is the client's, not the upstream's: it neither
    /// counts against the upstream's health nor moves the request to
    /// another upstream.
    #[must_use]
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::RequestBody(_) | ProxyError::RequestBodyTimeout
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
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxyError::Connect(e) | ProxyError::Upstream(e) | ProxyError::RequestBody(e) => {
                Some(&**e)
            }
            ProxyError::Timeout | ProxyError::RequestBodyTimeout => None,
        }
    }
}
