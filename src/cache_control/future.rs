use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::response::Parts;
use http::{Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use super::body::ResponseBody;
use super::layer::{Config, PathMatches};
use crate::etag::{not_modified_parts, BodyHasher, Condition, Conditionals, ETagMode};

/// What the service learned from the request before handing it on: the
/// request itself is consumed by the inner service.
#[derive(Debug)]
pub(crate) struct RequestContext {
    pub(crate) is_get: bool,
    pub(crate) conditionals: Option<Conditionals>,
    pub(crate) paths: PathMatches,
    pub(crate) config: Arc<Config>,
}

pin_project! {
    /// Response future of [`CacheControl`](super::CacheControl).
    pub struct ResponseFuture<F, B: Body> {
        #[pin]
        state: State<F, B>,
        ctx: RequestContext,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B: Body> {
        Inner { #[pin] future: F },
        Hashing {
            // Boxed so that it can move into the response body afterwards,
            // whether or not the body type is `Unpin`.
            body: Option<Pin<Box<B>>>,
            // Boxed to keep the future small on the common path: the hasher
            // state alone is about 400 bytes, and every response moves the
            // future, hashed or not.
            progress: Box<Progress>,
        },
        Done,
    }
}

impl<F, B: Body> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B: Body> ResponseFuture<F, B> {
    pub(crate) fn new(future: F, ctx: RequestContext) -> Self {
        ResponseFuture {
            state: State::Inner { future },
            ctx,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            match this.state.project() {
                StateProj::Inner { future } => {
                    let (mut parts, body) = ready!(future.poll(cx))?.into_parts();
                    let ctx = &*this.ctx;
                    let mode = ctx
                        .config
                        .apply(&ctx.paths, parts.status, &mut parts.headers);
                    let weak = match mode {
                        ETagMode::Strong => false,
                        ETagMode::Off => {
                            return Poll::Ready(Ok(finish(
                                ctx,
                                parts,
                                ResponseBody::passthrough(body),
                            )))
                        }
                        _ => true,
                    };
                    if !should_hash(ctx, &parts, &body) {
                        return Poll::Ready(Ok(finish(
                            ctx,
                            parts,
                            ResponseBody::passthrough(body),
                        )));
                    }
                    self.as_mut().project().state.set(State::Hashing {
                        body: Some(Box::pin(body)),
                        progress: Box::new(Progress {
                            parts: Some(parts),
                            chunks: VecDeque::new(),
                            len: 0,
                            hasher: BodyHasher::new(),
                            weak,
                            trailers: None,
                        }),
                    });
                }
                StateProj::Hashing { body, progress } => {
                    let Progress {
                        parts,
                        chunks,
                        len,
                        hasher,
                        weak,
                        trailers,
                    } = &mut **progress;
                    let cap = this.ctx.config.etag_max_body;
                    let Some(inner) = body.as_mut() else {
                        return Poll::Pending;
                    };
                    let outcome = loop {
                        match ready!(inner.as_mut().poll_frame(cx)) {
                            None => break Outcome::Complete,
                            Some(Ok(frame)) => match frame.into_data() {
                                Ok(data) => {
                                    *len = len.saturating_add(data.len());
                                    if *len > cap {
                                        chunks.push_back(data);
                                        break Outcome::TooLong;
                                    }
                                    hasher.update(&data);
                                    if !data.is_empty() {
                                        chunks.push_back(data);
                                    }
                                }
                                Err(frame) => {
                                    if let Ok(t) = frame.into_trailers() {
                                        *trailers = Some(t);
                                    }
                                }
                            },
                            Some(Err(e)) => break Outcome::Failed(e),
                        }
                    };
                    let Some(mut head) = parts.take() else {
                        return Poll::Pending;
                    };
                    let chunks = std::mem::take(chunks);
                    let trailers = trailers.take();
                    let body = match outcome {
                        Outcome::Complete => {
                            let hasher = std::mem::take(hasher);
                            head.headers
                                .insert(header::ETAG, hasher.finish(*weak).to_header_value());
                            ResponseBody::replay(chunks, trailers, None, None)
                        }
                        // Over the cap: stream the rest through untouched,
                        // without an ETag.
                        Outcome::TooLong => ResponseBody::replay(chunks, None, None, body.take()),
                        // Passed on to the client after what was read; no
                        // ETag for a body that never completed.
                        Outcome::Failed(e) => ResponseBody::replay(chunks, None, Some(e), None),
                    };
                    let response = finish(this.ctx, head, body);
                    self.as_mut().project().state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Done => return Poll::Pending,
            }
        }
    }
}

/// What has been read while hashing.
struct Progress {
    // The response head, held until the ETag is known.
    parts: Option<Parts>,
    chunks: VecDeque<Bytes>,
    len: usize,
    hasher: BodyHasher,
    weak: bool,
    trailers: Option<HeaderMap>,
}

enum Outcome<E> {
    Complete,
    TooLong,
    Failed(E),
}

fn should_hash<B: Body>(ctx: &RequestContext, parts: &Parts, body: &B) -> bool {
    if !ctx.is_get || parts.status != StatusCode::OK || parts.headers.contains_key(header::ETAG) {
        return false;
    }
    let cap = ctx.config.etag_max_body as u64;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    declared.map_or(true, |n| n <= cap) && body.size_hint().lower() <= cap
}

/// Answers a satisfied conditional request with 304 (RFC 9110 §13.2.2).
fn finish<B: Body>(
    ctx: &RequestContext,
    parts: Parts,
    body: ResponseBody<B>,
) -> Response<ResponseBody<B>> {
    if let Some(cond) = &ctx.conditionals {
        if cond.evaluate(parts.status, &parts.headers) == Condition::NotModified {
            return Response::from_parts(not_modified_parts(parts), ResponseBody::empty());
        }
    }
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use http::{header, HeaderMap, Method, Request, Response, StatusCode};
    use http_body::{Body, Frame};
    use http_body_util::{BodyExt, Full, StreamBody};
    use tower::{service_fn, Layer, ServiceExt};

    use crate::cache_control::{CacheControlLayer, ETagMode};

    type Chunk = Result<Frame<Bytes>, std::io::Error>;

    async fn call<B>(
        layer: CacheControlLayer,
        req: Request<()>,
        res: Response<B>,
    ) -> Response<super::ResponseBody<B>>
    where
        B: Body<Data = Bytes> + Send + 'static,
    {
        let res = std::sync::Mutex::new(Some(res));
        let svc = service_fn(move |_req: Request<()>| {
            let res = res.lock().unwrap().take().unwrap();
            async move { Ok::<_, Infallible>(res) }
        });
        layer.layer(svc).oneshot(req).await.unwrap()
    }

    fn stream(frames: Vec<Chunk>) -> StreamBody<tokio_stream::Iter<std::vec::IntoIter<Chunk>>> {
        StreamBody::new(tokio_stream::iter(frames))
    }

    #[tokio::test]
    async fn head_response_is_not_hashed() {
        let req = Request::builder()
            .method(Method::HEAD)
            .uri("/")
            .body(())
            .unwrap();
        let res = call(
            CacheControlLayer::new(),
            req,
            Response::new(Full::new(Bytes::new())),
        )
        .await;
        assert!(!res.headers().contains_key(header::ETAG));
    }

    #[tokio::test]
    async fn known_length_over_the_cap_is_returned_without_reading_the_body() {
        // A body that never yields: the response must not wait for it.
        let body = StreamBody::new(tokio_stream::pending::<Chunk>());
        let res = Response::builder()
            .header(header::CONTENT_LENGTH, "2048")
            .body(body)
            .unwrap();
        let layer = CacheControlLayer::new().etag_max_body(1024);
        let res = tokio::time::timeout(
            Duration::from_secs(30),
            call(layer, Request::get("/").body(()).unwrap(), res),
        )
        .await
        .expect("the layer waited on a body it should stream");
        assert!(!res.headers().contains_key(header::ETAG));
    }

    #[tokio::test]
    async fn over_the_cap_body_keeps_every_byte_in_order() {
        let frames = (0u8..10)
            .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + i; 300]))))
            .collect();
        let layer = CacheControlLayer::new().etag_max_body(1000);
        let res = call(
            layer,
            Request::get("/").body(()).unwrap(),
            Response::new(stream(frames)),
        )
        .await;
        assert!(!res.headers().contains_key(header::ETAG));
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let expected: Vec<u8> = (0u8..10).flat_map(|i| vec![b'a' + i; 300]).collect();
        assert_eq!(body, expected);
    }

    #[tokio::test]
    async fn trailers_survive_hashing() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-render-ms", "2".parse().unwrap());
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"page"))),
            Ok(Frame::trailers(trailers)),
        ];
        let res = call(
            CacheControlLayer::new(),
            Request::get("/").body(()).unwrap(),
            Response::new(stream(frames)),
        )
        .await;
        assert!(res.headers().contains_key(header::ETAG));
        let collected = res.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-render-ms"], "2");
        assert_eq!(collected.to_bytes(), "page");
    }

    #[tokio::test]
    async fn body_error_while_hashing_is_replayed_then_raised() {
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"partial"))),
            Err(std::io::Error::other("renderer died")),
        ];
        let res = call(
            CacheControlLayer::new(),
            Request::get("/").body(()).unwrap(),
            Response::new(stream(frames)),
        )
        .await;
        assert!(!res.headers().contains_key(header::ETAG));
        let mut body = res.into_body();
        // Not exact: a server must not frame the partial body as complete.
        assert_eq!(body.size_hint().exact(), None);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "partial");
        assert!(body.frame().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn hashed_body_has_an_exact_length() {
        let res = call(
            CacheControlLayer::new(),
            Request::get("/").body(()).unwrap(),
            Response::new(stream(vec![Ok(Frame::data(Bytes::from_static(b"12345")))])),
        )
        .await;
        assert_eq!(res.body().size_hint().exact(), Some(5));
    }

    #[tokio::test]
    async fn strong_mode_gives_a_strong_tag() {
        let layer = CacheControlLayer::new().etag(ETagMode::Strong);
        let res = call(
            layer,
            Request::get("/").body(()).unwrap(),
            Response::new(Full::new(Bytes::from("x"))),
        )
        .await;
        assert!(res.headers()[header::ETAG].as_bytes().starts_with(b"\""));
    }

    #[tokio::test]
    async fn non_ok_status_is_not_hashed() {
        let res = Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from("nope")))
            .unwrap();
        let res = call(
            CacheControlLayer::new(),
            Request::get("/").body(()).unwrap(),
            res,
        )
        .await;
        assert!(!res.headers().contains_key(header::ETAG));
    }

    #[tokio::test]
    async fn last_modified_later_than_date_is_clamped_to_date() {
        let future = SystemTime::now() + Duration::from_secs(86_400);
        let res = Response::builder()
            .header(header::DATE, "Sun, 06 Nov 1994 08:49:37 GMT")
            .body(Full::new(Bytes::from("x")))
            .unwrap();
        let layer = CacheControlLayer::new().last_modified(future);
        let res = call(layer, Request::get("/").body(()).unwrap(), res).await;
        assert_eq!(
            res.headers()[header::LAST_MODIFIED],
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }

    #[tokio::test]
    async fn not_modified_drops_the_body_and_content_headers() {
        let res = Response::builder()
            .header(header::ETAG, "\"v1\"")
            .header(header::CONTENT_TYPE, "text/html")
            .body(Full::new(Bytes::from("page")))
            .unwrap();
        let req = Request::get("/")
            .header(header::IF_NONE_MATCH, "W/\"v1\"")
            .body(())
            .unwrap();
        let res = call(CacheControlLayer::new(), req, res).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert!(!res.headers().contains_key(header::CONTENT_TYPE));
        assert!(res.body().is_end_stream());
    }
}
