use http::Uri;
use tower_layer::Layer;

use super::endpoint::Endpoints;
use super::key::Key;
use super::retry::Retries;
use super::service::{Balance, Config, Rewrite};

/// Balances the requests of one HTTP client service over upstreams given as
/// base URIs: each request's target is rewritten to the chosen upstream.
///
/// The layer wraps the client (the leaf of the stack), for example
/// hyper-util's pooled client, or `proxy::Forward` (feature `proxy`)
/// which adds timeouts and forwarding headers. For in-process services use
/// [`Balance::new`] instead.
#[derive(Debug, Clone)]
#[must_use]
pub struct BalanceLayer {
    endpoints: Endpoints<Uri>,
    config: Config,
}

impl BalanceLayer {
    /// Balances over `endpoints`, whose values are the upstreams' base URIs.
    pub fn new(endpoints: Endpoints<Uri>) -> Self {
        BalanceLayer {
            endpoints,
            config: Config::default(),
        }
    }

    /// What consistent-hashing strategies hash. Default: [`Key::none`].
    pub fn key(mut self, key: Key) -> Self {
        self.config.key = key;
        self
    }

    /// When failed requests move to another upstream. Default:
    /// [`Retries::new`].
    pub fn retries(mut self, retries: Retries) -> Self {
        self.config.retries = retries;
        self
    }
}

impl<C> Layer<C> for BalanceLayer {
    type Service = Balance<Uri, Rewrite<C>>;

    fn layer(&self, client: C) -> Self::Service {
        // Every service this layer makes shares the set, and each gets its
        // own retry budget (a clone of the settings).
        Balance::with_connect(
            self.endpoints.clone(),
            Rewrite::new(client),
            self.config.clone(),
        )
    }
}
