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
/// hyper-util's pooled client, or `proxy::Forward` (feature `proxy`),
/// which adds a connect timeout and a timeout on response headers. Neither
/// adds forwarding headers (`Via`, `X-Forwarded-For`, `Forwarded`) or
/// removes hop-by-hop ones: [`ReverseProxy`](crate::proxy::ReverseProxy)
/// does, so use it to forward a client's request. For in-process services
/// use [`Balance::new`] instead.
///
/// Services made by one layer share the endpoint set and one retry budget.
///
/// # Example
///
/// ```
/// use http::{Request, Response, Uri};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_ssr::balance::{BalanceLayer, Endpoints, RoundRobin};
/// use tower_ssr::ServiceBuilderExt as _;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let upstreams = Endpoints::new(RoundRobin::new());
/// upstreams.add("r1", "http://10.0.0.1:4000".parse::<Uri>()?)?;
/// upstreams.add("r2", "http://10.0.0.2:4000".parse::<Uri>()?)?;
/// // A stand-in for an HTTP client: answers with the URI it was sent to.
/// let client = service_fn(|req: Request<String>| async move {
///     let mut res = Response::new(String::new());
///     res.headers_mut().insert("x-upstream", req.uri().to_string().parse()?);
///     Ok::<_, http::header::InvalidHeaderValue>(res)
/// });
/// let svc = ServiceBuilder::new()
///     .balance(BalanceLayer::new(upstreams))
///     .service(client);
/// let res = svc.clone().oneshot(Request::get("/posts/1").body(String::new())?).await?;
/// assert_eq!(res.headers()["x-upstream"], "http://10.0.0.1:4000/posts/1");
/// let res = svc.oneshot(Request::get("/posts/1").body(String::new())?).await?;
/// assert_eq!(res.headers()["x-upstream"], "http://10.0.0.2:4000/posts/1");
/// # Ok(())
/// # }
/// ```
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
        // Every service this layer makes shares the set and the retry
        // budget (clones of `Retries` share it).
        Balance::with_connect(
            self.endpoints.clone(),
            Rewrite::new(client),
            self.config.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response, Uri};
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    use super::*;
    use crate::balance::RoundRobin;
    use crate::ServiceBuilderExt;

    #[tokio::test]
    async fn the_layer_rewrites_the_target_to_the_chosen_upstream() {
        let set = Endpoints::new(RoundRobin::new());
        set.add("a", "http://10.0.0.1:3000".parse().unwrap())
            .unwrap();
        set.add("b", "http://10.0.0.2:3000/app".parse().unwrap())
            .unwrap();
        // A client that answers with the URI it was asked for.
        let client = service_fn(|req: Request<String>| async move {
            Ok::<_, std::convert::Infallible>(Response::new(req.uri().to_string()))
        });
        let svc = ServiceBuilder::new()
            .balance(BalanceLayer::new(set))
            .service(client);
        let mut seen = Vec::new();
        for _ in 0..2 {
            let req = Request::get("/posts/1?x=2").body(String::new()).unwrap();
            let res = svc.clone().oneshot(req).await.unwrap();
            let bytes = http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap()
                .to_bytes();
            let uri: Uri = std::str::from_utf8(&bytes).unwrap().parse().unwrap();
            seen.push(uri.to_string());
        }
        assert_eq!(
            seen,
            [
                "http://10.0.0.1:3000/posts/1?x=2",
                "http://10.0.0.2:3000/app/posts/1?x=2"
            ]
        );
    }
}
