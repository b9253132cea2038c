//! Which endpoint answered, as a typed response extension; and what each
//! attempt reports (metrics, a `tracing` span, health events).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::endpoint::{EndpointId, EndpointState};

/// The endpoint that answered a request: inserted into the extensions of
/// every response [`Balance`](super::Balance) (and so
/// [`ReverseProxy`](crate::proxy::ReverseProxy)) gets from an endpoint,
/// so an access log or `tower_http::trace::TraceLayer` can record it. A
/// `503` for want of an endpoint has none.
///
/// ```
/// # use tower_ssr::balance::Upstream;
/// # let res = http::Response::new(());
/// let served_by = res.extensions().get::<Upstream>().map(Upstream::name);
/// # assert_eq!(served_by, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    id: EndpointId,
    name: Arc<str>,
}

impl Upstream {
    pub(crate) fn of(state: &EndpointState) -> Self {
        Upstream {
            id: state.id,
            name: Arc::clone(&state.name),
        }
    }

    /// The endpoint's id in its [`Endpoints`](super::Endpoints) set.
    #[must_use]
    pub fn id(&self) -> EndpointId {
        self.id
    }

    /// The endpoint's name, as given to
    /// [`Endpoints::add`](super::Endpoints::add) (for
    /// [`ReverseProxy`](crate::proxy::ReverseProxy), its address).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The `debug` span of one attempt on one endpoint; its `status` and
/// `duration_ms` are filled in when the attempt is answered.
#[cfg(feature = "tracing")]
pub(crate) fn attempt_span(state: &EndpointState) -> tracing::Span {
    tracing::debug_span!(
        target: "tower_ssr::balance",
        "upstream_attempt",
        endpoint = %state.name,
        attempt = tracing::field::Empty,
        status = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    )
}

/// Reports an attempt's answer: `status` is `None` when no response came.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn answered(
    state: &EndpointState,
    #[cfg(feature = "tracing")] span: &tracing::Span,
    number: usize,
    status: Option<StatusCode>,
    elapsed: Option<Duration>,
) {
    state.metrics.answered(status, elapsed);
    #[cfg(feature = "tracing")]
    {
        span.record("attempt", number);
        if let Some(status) = status {
            span.record("status", status.as_u16());
        }
        if let Some(elapsed) = elapsed {
            span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
        }
        span.in_scope(|| match status {
            Some(status) => tracing::debug!(
                target: "tower_ssr::balance",
                endpoint = %state.name,
                attempt = number,
                status = status.as_u16(),
                "upstream answered"
            ),
            None => tracing::debug!(
                target: "tower_ssr::balance",
                endpoint = %state.name,
                attempt = number,
                "upstream attempt failed"
            ),
        });
    }
}

/// An endpoint ejected by passive health, for `backoff`.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn ejected(state: &EndpointState, backoff: Duration) {
    state.metrics.ejected();
    #[cfg(feature = "tracing")]
    tracing::warn!(
        target: "tower_ssr::balance",
        endpoint = %state.name,
        backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
        "endpoint ejected"
    );
}

/// An ejected endpoint's trial request succeeded.
pub(crate) fn readmitted(state: &EndpointState) {
    state.metrics.healthy(state.is_pickable());
    #[cfg(feature = "tracing")]
    tracing::info!(
        target: "tower_ssr::balance",
        endpoint = %state.name,
        "trial request succeeded; endpoint back in service"
    );
}

/// Active probes changed their verdict on an endpoint.
#[cfg(feature = "tokio")]
pub(crate) fn probed(state: &EndpointState, up: bool) {
    state.metrics.healthy(state.is_pickable());
    #[cfg(feature = "tracing")]
    if up {
        tracing::info!(target: "tower_ssr::balance", endpoint = %state.name, "probe: endpoint up");
    } else {
        tracing::warn!(target: "tower_ssr::balance", endpoint = %state.name, "probe: endpoint down");
    }
    #[cfg(not(feature = "tracing"))]
    let _ = up;
}
