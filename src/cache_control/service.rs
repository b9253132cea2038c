use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::ResponseBody;
use super::future::{RequestContext, ResponseFuture};
use super::layer::Config;
use crate::etag::Conditionals;

/// Middleware that puts caching headers and validators on responses; built
/// by [`CacheControlLayer`](super::CacheControlLayer).
#[derive(Debug, Clone)]
pub struct CacheControl<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> CacheControl<S> {
    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        CacheControl { inner, config }
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheControl<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = req.method();
        let ctx = RequestContext {
            // Hashing needs the body, which HEAD responses do not carry.
            is_get: method == Method::GET,
            conditionals: if self.config.conditional {
                Conditionals::from_request(method, req.headers())
            } else {
                None
            },
            paths: self.config.match_paths(req.uri().path()),
            config: Arc::clone(&self.config),
        };
        ResponseFuture::new(self.inner.call(req), ctx)
    }
}
