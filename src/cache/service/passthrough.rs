//! Requests the cache does not answer from its store and forwards as they
//! are: other methods (with the invalidation of RFC 9111 §4.4), bypasses,
//! and keys just seen uncacheable.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LOCATION, IF_MODIFIED_SINCE, IF_NONE_MATCH, LOCATION};
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::cache::body::ResponseBody;
use crate::cache::entry::{self, RequestDirectives, CACHE_STATUS};
use crate::cache::handle::Shared;
use crate::cache::key::{origin_of, same_origin, spellings, write_uri_key};
use crate::cache::layer::Config;
use crate::etag::Conditionals;

use super::{call::ready, fetch::passthrough};

/// Forwards a request untouched and streams the response back.
pub(super) async fn pass<S, ReqBody, B>(
    mut inner: S,
    req: Request<ReqBody>,
    member: HeaderValue,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body<Data = Bytes>,
{
    ready(&mut inner).await?;
    let (mut parts, body) = inner.call(req).await?.into_parts();
    parts.headers.append(CACHE_STATUS, member);
    Ok(Response::from_parts(parts, ResponseBody::stream(body)))
}

/// Forwards a request for a key remembered as uncacheable, untouched (the
/// client's conditionals included: the inner service answers them), and
/// streams the response back. Should the response have become storable,
/// the memory is dropped so that the next request leads a flight again.
pub(super) async fn forward_uncacheable<S, ReqBody, B>(
    mut inner: S,
    req: Request<ReqBody>,
    member: HeaderValue,
    config: Arc<Config>,
    shared: Arc<Shared>,
    flight_key: String,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body<Data = Bytes>,
{
    // As on every other miss, the client's conditionals are answered here
    // and a HEAD goes inward as a GET, so the answer does not depend on
    // whether the key was just seen uncacheable.
    let (mut req_parts, req_body) = req.into_parts();
    let conditionals = Conditionals::from_request(&req_parts.method, &req_parts.headers);
    req_parts.headers.remove(IF_NONE_MATCH);
    req_parts.headers.remove(IF_MODIFIED_SINCE);
    let is_head = req_parts.method == Method::HEAD;
    if is_head {
        req_parts.method = Method::GET;
    }
    ready(&mut inner).await?;
    let (mut parts, body) = inner
        .call(Request::from_parts(req_parts, req_body))
        .await?
        .into_parts();
    let now = crate::date::monotonic_now();
    let storable = entry::storable(
        parts.status,
        &parts.headers,
        &RequestDirectives::default(),
        false,
        &config.rules,
        now,
        (now, SystemTime::now()),
    );
    if storable.is_ok() {
        shared.forget_uncacheable(&flight_key);
    }
    if let Some(field) = &config.strip_field {
        parts.headers.remove(field);
    }
    Ok(passthrough(
        parts,
        body,
        is_head,
        conditionals.as_ref(),
        member,
    ))
}

/// Forwards an unsafe (or uncacheable safe) method and, on success,
/// invalidates what it may have changed (RFC 9111 §4.4).
pub(super) async fn forward_method<S, ReqBody, B>(
    mut inner: S,
    req: Request<ReqBody>,
    key: String,
    member: HeaderValue,
    shared: Arc<Shared>,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body<Data = Bytes>,
{
    let unsafe_method = !matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    ready(&mut inner).await?;
    let (mut parts, body) = inner.call(req).await?.into_parts();
    if unsafe_method && (parts.status.is_success() || parts.status.is_redirection()) {
        invalidate(&shared, &key);
        let origin = origin_of(&key);
        for name in [LOCATION, CONTENT_LOCATION] {
            let Some(target) = parts.headers.get(name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            // §4.4: only URIs of the same origin as the target.
            let other = if target.starts_with('/') && !target.starts_with("//") {
                format!("{origin}{target}")
            } else if let Ok(uri) = target.parse::<http::Uri>() {
                if uri.authority().is_none() {
                    continue;
                }
                let mut k = String::new();
                if !write_uri_key(
                    &mut k,
                    &uri,
                    &HeaderMap::new(),
                    crate::cache::key::QueryKey::Keep,
                ) {
                    continue;
                }
                k
            } else {
                continue;
            };
            if same_origin(&other, origin) {
                invalidate(&shared, &other);
            }
        }
    }
    parts.headers.append(CACHE_STATUS, member);
    Ok(Response::from_parts(parts, ResponseBody::stream(body)))
}

/// Drops `key` in every spelling of its default port (RFC 9111 §4.4;
/// RFC 9110 §4.2.3), here and on the other instances.
pub(super) fn invalidate(shared: &Shared, key: &str) {
    // Other instances may hold it too (RFC 9111 §4.4 asks only for this
    // cache, but a cluster is one cache to its users).
    shared.purge_cluster(|| crate::cache::handle::Purge::Key(key.into()));
    if shared.store.remove_uri(key) {
        tracing::debug!(key, "cache invalidated by an unsafe method");
    }
    for key in spellings(key) {
        shared.forget_uncacheable(&key);
    }
}
