//! [`ServiceBuilderExt`]: the crate's layers as `ServiceBuilder` methods.

#[cfg(any(feature = "cache-control", feature = "cache", feature = "balance"))]
use tower_layer::Stack;

/// Adds tower-ssr's layers to [`tower::ServiceBuilder`] as methods, the way
/// tower-http does for its own.
///
/// [`tower::ServiceBuilder`]: https://docs.rs/tower/latest/tower/struct.ServiceBuilder.html
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use http::{header, Request, Response};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_ssr::cache_control::{CacheControlLayer, Directives, Rule};
/// use tower_ssr::ServiceBuilderExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let svc = ServiceBuilder::new()
///     .cache_control(CacheControlLayer::new().rule(
///         Rule::any().cache_control(Directives::new().public().max_age(Duration::from_secs(60))),
///     ))
///     .service(service_fn(|_req: Request<()>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(String::from("hi")))
///     }));
/// let res = svc.oneshot(Request::get("/").body(())?).await?;
/// assert_eq!(res.headers()[header::CACHE_CONTROL], "public, max-age=60");
/// # Ok(())
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds a [`CacheControlLayer`](crate::cache_control::CacheControlLayer).
    #[cfg(feature = "cache-control")]
    #[must_use]
    fn cache_control(
        self,
        layer: crate::cache_control::CacheControlLayer,
    ) -> tower::ServiceBuilder<Stack<crate::cache_control::CacheControlLayer, L>>;

    /// Adds a [`CacheLayer`](crate::cache::CacheLayer): the response
    /// cache, outermost but for tracing and the body mapping axum needs
    /// (README, "The production stack").
    #[cfg(feature = "cache")]
    #[must_use]
    fn cache(
        self,
        layer: crate::cache::CacheLayer,
    ) -> tower::ServiceBuilder<Stack<crate::cache::CacheLayer, L>>;

    /// Adds a [`BalanceLayer`](crate::balance::BalanceLayer) over the
    /// client service that follows.
    #[cfg(feature = "balance")]
    #[must_use]
    fn balance(
        self,
        layer: crate::balance::BalanceLayer,
    ) -> tower::ServiceBuilder<Stack<crate::balance::BalanceLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for tower::ServiceBuilder<L> {
    #[cfg(feature = "cache-control")]
    fn cache_control(
        self,
        layer: crate::cache_control::CacheControlLayer,
    ) -> tower::ServiceBuilder<Stack<crate::cache_control::CacheControlLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "cache")]
    fn cache(
        self,
        layer: crate::cache::CacheLayer,
    ) -> tower::ServiceBuilder<Stack<crate::cache::CacheLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "balance")]
    fn balance(
        self,
        layer: crate::balance::BalanceLayer,
    ) -> tower::ServiceBuilder<Stack<crate::balance::BalanceLayer, L>> {
        self.layer(layer)
    }
}

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}
