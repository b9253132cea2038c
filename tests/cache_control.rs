//! The Cache-Control layer through an axum server on 127.0.0.1:0.

mod common;

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get as route, post};
use axum::Router;
use bytes::Bytes;
use common::{get, get_with, send, serve};
use tower_ssr::cache_control::{CacheControlLayer, Directives, ETagMode, Rule};

const PAGE: &str = "<html><body>a page</body></html>";

fn page_policy() -> Directives {
    Directives::new()
        .public()
        .max_age(Duration::ZERO)
        .s_maxage(Duration::from_secs(60))
        .stale_while_revalidate(Duration::from_secs(300))
}

fn routes() -> Router {
    Router::new()
        .route("/", route(|| async { Html(PAGE) }))
        .route("/posts/{id}", route(|| async { Html(PAGE) }))
        .route(
            "/assets/{file}",
            route(|| async { ([(header::CONTENT_TYPE, "text/javascript")], "js") }),
        )
        .route(
            "/missing",
            route(|| async { (StatusCode::NOT_FOUND, Html("nope")) }),
        )
        .route(
            "/boom",
            route(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route(
            "/own",
            route(|| async { ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)) }),
        )
        .route(
            "/login",
            route(|| async { ([(header::SET_COOKIE, "sid=1; HttpOnly")], Html(PAGE)) }),
        )
        .route(
            "/cookie-own",
            route(|| async {
                (
                    [
                        (header::SET_COOKIE, "sid=1"),
                        (header::CACHE_CONTROL, "public, s-maxage=600, max-age=10"),
                        (
                            header::HeaderName::from_static("cdn-cache-control"),
                            "max-age=600",
                        ),
                    ],
                    Html(PAGE),
                )
            }),
        )
        .route("/submit", post(|| async { Html(PAGE) }))
}

fn standard_layer() -> CacheControlLayer {
    CacheControlLayer::new()
        .rule(
            Rule::path("/assets/**")
                .unwrap()
                .cache_control(Directives::immutable_asset()),
        )
        .rule(Rule::path("/**").unwrap().cache_control(page_policy()))
}

async fn standard() -> std::net::SocketAddr {
    serve(routes().layer(standard_layer())).await
}

#[tokio::test]
async fn first_matching_rule_wins_in_order_added() {
    let addr = standard().await;
    let asset = get(addr, "/assets/app.1a2b.js").await;
    assert_eq!(
        asset.one("cache-control"),
        "public, max-age=31536000, immutable"
    );
    let page = get(addr, "/posts/7").await;
    assert_eq!(
        page.one("cache-control"),
        "public, max-age=0, s-maxage=60, stale-while-revalidate=300"
    );

    // The same rules in the other order: `/**` now shadows the asset rule.
    let shadowed = CacheControlLayer::new()
        .rule(Rule::path("/**").unwrap().cache_control(page_policy()))
        .rule(
            Rule::path("/assets/**")
                .unwrap()
                .cache_control(Directives::immutable_asset()),
        );
    let addr = serve(routes().layer(shadowed)).await;
    let asset = get(addr, "/assets/app.1a2b.js").await;
    assert!(asset.one("cache-control").contains("s-maxage=60"));
}

#[tokio::test]
async fn single_star_glob_matches_one_segment() {
    let layer = CacheControlLayer::new().rule(
        Rule::path("/posts/*")
            .unwrap()
            .cache_control(Directives::no_store_policy()),
    );
    let addr = serve(routes().layer(layer)).await;
    assert_eq!(get(addr, "/posts/1").await.one("cache-control"), "no-store");
    assert!(!get(addr, "/").await.has("cache-control"));
}

#[tokio::test]
async fn content_type_rule_picks_html_only() {
    let layer = CacheControlLayer::new().rule(
        Rule::content_type("text/html")
            .unwrap()
            .cache_control(page_policy()),
    );
    let addr = serve(routes().layer(layer)).await;
    assert!(get(addr, "/")
        .await
        .one("cache-control")
        .contains("s-maxage=60"));
    assert!(!get(addr, "/assets/x.js").await.has("cache-control"));
}

#[tokio::test]
async fn not_found_does_not_inherit_a_cacheable_policy() {
    let addr = standard().await;
    let res = get(addr, "/missing").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert!(!res.has("cache-control"), "{:?}", res.headers);
}

#[tokio::test]
async fn rule_naming_a_status_applies_to_it() {
    let layer = CacheControlLayer::new()
        .rule(
            Rule::status(StatusCode::NOT_FOUND)
                .cache_control(Directives::new().public().max_age(Duration::from_secs(30))),
        )
        .rule(Rule::path("/**").unwrap().cache_control(page_policy()));
    let addr = serve(routes().layer(layer)).await;
    assert_eq!(
        get(addr, "/missing").await.one("cache-control"),
        "public, max-age=30"
    );
}

#[tokio::test]
async fn server_error_gets_no_store_by_default() {
    let addr = standard().await;
    let res = get(addr, "/boom").await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.one("cache-control"), "no-store");
}

#[tokio::test]
async fn server_error_policy_is_configurable() {
    let custom = standard_layer().server_errors(Some(
        Directives::new().public().max_age(Duration::from_secs(5)),
    ));
    let addr = serve(routes().layer(custom)).await;
    assert_eq!(
        get(addr, "/boom").await.one("cache-control"),
        "public, max-age=5"
    );

    let off = standard_layer().server_errors(None);
    let addr = serve(routes().layer(off)).await;
    assert!(!get(addr, "/boom").await.has("cache-control"));
}

#[tokio::test]
async fn handler_header_wins_by_default() {
    let addr = standard().await;
    assert_eq!(get(addr, "/own").await.one("cache-control"), "no-cache");
}

#[tokio::test]
async fn override_replaces_handler_header_with_a_single_line() {
    let layer = CacheControlLayer::new().rule(
        Rule::path("/own")
            .unwrap()
            .cache_control(page_policy())
            .override_existing(),
    );
    let addr = serve(routes().layer(layer)).await;
    let res = get(addr, "/own").await;
    assert_eq!(
        res.one("cache-control"),
        "public, max-age=0, s-maxage=60, stale-while-revalidate=300"
    );
}

#[tokio::test]
async fn cdn_surrogate_expires_vary_and_tags_are_emitted() {
    let layer = CacheControlLayer::new().rule(
        Rule::path("/posts/*")
            .unwrap()
            .cache_control(Directives::new().public().max_age(Duration::from_secs(120)))
            .cdn_cache_control(Directives::new().max_age(Duration::from_secs(600)))
            .surrogate_control(Directives::new().max_age(Duration::from_secs(900)))
            .expires()
            .vary(header::ACCEPT_LANGUAGE)
            .vary(header::ACCEPT_ENCODING)
            .tags(["post-7", "posts"])
            .unwrap(),
    );
    let app = Router::new()
        .route(
            "/posts/{id}",
            route(|| async { ([(header::VARY, "Accept-Encoding")], Html(PAGE)) }),
        )
        .layer(layer);
    let addr = serve(app).await;
    let res = get(addr, "/posts/7").await;
    assert_eq!(res.one("cache-control"), "public, max-age=120");
    assert_eq!(res.one("cdn-cache-control"), "max-age=600");
    assert_eq!(res.one("surrogate-control"), "max-age=900");
    assert_eq!(res.one("vary"), "Accept-Encoding, accept-language");
    assert_eq!(res.one("surrogate-key"), "post-7 posts");
    assert_eq!(res.one("cache-tag"), "post-7,posts");
    let expires = httpdate::parse_http_date(res.one("expires")).unwrap();
    let date = httpdate::parse_http_date(res.one("date")).unwrap();
    let ahead = expires.duration_since(date).unwrap().as_secs();
    assert!(
        (119..=121).contains(&ahead),
        "Expires is {ahead}s after Date"
    );
    assert!(res.one("expires").ends_with(" GMT"));
}

#[tokio::test]
async fn set_cookie_response_is_private_without_shared_directives() {
    let layer = standard_layer().rule(Rule::any().cache_control(page_policy()));
    let layer = layer.rule(
        Rule::path("/login")
            .unwrap()
            .cdn_cache_control(Directives::new().max_age(Duration::from_secs(60))),
    );
    let addr = serve(routes().layer(layer)).await;
    let res = get(addr, "/login").await;
    assert_eq!(
        res.one("cache-control"),
        "private, max-age=0, stale-while-revalidate=300"
    );
    assert!(!res.has("cdn-cache-control"));
}

#[tokio::test]
async fn set_cookie_downgrades_the_handlers_own_header_too() {
    let addr = standard().await;
    let res = get(addr, "/cookie-own").await;
    assert_eq!(res.one("cache-control"), "private, max-age=10");
    assert!(!res.has("cdn-cache-control"));

    let lenient = standard_layer().private_on_set_cookie(false);
    let addr = serve(routes().layer(lenient)).await;
    let res = get(addr, "/cookie-own").await;
    assert_eq!(res.one("cache-control"), "public, s-maxage=600, max-age=10");
}

#[tokio::test]
async fn weak_etag_by_default_and_stable_across_replicas() {
    let a = standard().await;
    let b = standard().await;
    let ra = get(a, "/").await;
    let rb = get(b, "/").await;
    let tag = ra.one("etag");
    assert!(tag.starts_with("W/\""), "{tag}");
    assert_eq!(tag, rb.one("etag"));
    assert_eq!(ra.body, PAGE.as_bytes());
    // Another body, another tag.
    let other = get(a, "/assets/app.js").await;
    assert_ne!(other.one("etag"), tag);
}

#[tokio::test]
async fn strong_etag_on_request() {
    let addr = serve(routes().layer(standard_layer().etag(ETagMode::Strong))).await;
    let tag = get(addr, "/").await.one("etag").to_owned();
    assert!(tag.starts_with('"'), "{tag}");
}

#[tokio::test]
async fn etag_off_per_rule_skips_hashing() {
    let layer = CacheControlLayer::new()
        .rule(Rule::path("/posts/*").unwrap().etag(ETagMode::Off))
        .rule(Rule::any());
    let addr = serve(routes().layer(layer)).await;
    assert!(!get(addr, "/posts/1").await.has("etag"));
    assert!(get(addr, "/").await.has("etag"));
}

/// A page whose handler sets its own ETag, `"v1"`.
async fn serve_with_handler_etag() -> std::net::SocketAddr {
    let app = Router::new()
        .route(
            "/",
            route(|| async { ([(header::ETAG, "\"v1\"")], Html(PAGE)) }),
        )
        .layer(standard_layer());
    serve(app).await
}

#[tokio::test]
async fn handler_etag_is_kept() {
    let addr = serve_with_handler_etag().await;
    assert_eq!(get(addr, "/").await.one("etag"), "\"v1\"");
    let res = get_with(addr, "/", &[("if-none-match", "W/\"v1\"")]).await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
}

fn chunked(chunks: Vec<&'static [u8]>) -> Response {
    let stream = futures_stream(chunks);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn futures_stream(
    chunks: Vec<&'static [u8]>,
) -> impl tokio_stream::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    tokio_stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c))))
}

#[tokio::test]
async fn chunked_body_hashes_like_the_same_bytes_in_one_piece() {
    let app = Router::new()
        .route("/one", route(|| async { Html(PAGE) }))
        .route(
            "/chunked",
            route(|| async { chunked(vec![&PAGE.as_bytes()[..10], &PAGE.as_bytes()[10..]]) }),
        )
        .layer(standard_layer());
    let addr = serve(app).await;
    let one = get(addr, "/one").await;
    let chunked = get(addr, "/chunked").await;
    assert_eq!(chunked.body, PAGE.as_bytes());
    assert_eq!(one.one("etag"), chunked.one("etag"));
}

#[tokio::test]
async fn body_over_the_cap_streams_through_without_etag() {
    static BIG: [u8; 64 * 1024] = [b'x'; 64 * 1024];
    let app = Router::new()
        .route(
            "/big",
            route(|| async { chunked(vec![&BIG[..], &BIG[..], &BIG[..]]) }),
        )
        .route("/sized", route(|| async { Html(&BIG[..]) }))
        .layer(standard_layer().etag_max_body(100 * 1024));
    let addr = serve(app).await;
    let res = get(addr, "/big").await;
    assert!(!res.has("etag"));
    assert_eq!(res.body.len(), 3 * BIG.len());
    assert!(res.body.iter().all(|&b| b == b'x'));
    // Known length under the cap: hashed.
    assert!(get(addr, "/sized").await.has("etag"));
}

#[tokio::test]
async fn if_none_match_gets_304_keeping_validators_and_policy() {
    let layer = CacheControlLayer::new().rule(
        Rule::path("/**")
            .unwrap()
            .cache_control(Directives::new().public().max_age(Duration::from_secs(60)))
            .expires()
            .vary(header::ACCEPT_LANGUAGE),
    );
    let app = Router::new()
        .route(
            "/",
            route(|| async { ([(header::CONTENT_LOCATION, "/index.html")], Html(PAGE)) }),
        )
        .layer(layer);
    let addr = serve(app).await;
    let full = get(addr, "/").await;
    let tag = full.one("etag").to_owned();
    let res = get_with(addr, "/", &[("if-none-match", &tag)]).await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    assert!(res.body.is_empty());
    assert_eq!(res.one("etag"), tag);
    assert_eq!(res.one("cache-control"), "public, max-age=60");
    assert_eq!(res.one("vary"), "accept-language");
    assert_eq!(res.one("content-location"), "/index.html");
    assert!(res.has("expires"));
    assert!(res.has("date"));
    assert!(!res.has("content-type"));
}

#[tokio::test]
async fn if_none_match_uses_weak_comparison_lists_and_star() {
    let addr = standard().await;
    let tag = get(addr, "/").await.one("etag").to_owned();
    let strong_form = tag.trim_start_matches("W/").to_owned();
    let list = format!("\"other\", {strong_form}");
    for inm in [strong_form.as_str(), list.as_str(), "*"] {
        let res = get_with(addr, "/", &[("if-none-match", inm)]).await;
        assert_eq!(res.status, StatusCode::NOT_MODIFIED, "If-None-Match: {inm}");
    }
    let res = get_with(addr, "/", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body, PAGE.as_bytes());
}

#[tokio::test]
async fn if_modified_since_uses_last_modified_in_any_date_form() {
    let deployed = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
    let app = routes().layer(standard_layer().etag(ETagMode::Off).last_modified(deployed));
    let addr = serve(app).await;
    let full = get(addr, "/").await;
    assert_eq!(full.one("last-modified"), "Sun, 06 Nov 1994 08:49:37 GMT");
    for ims in [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "Mon, 07 Nov 1994 00:00:00 GMT",
    ] {
        let res = get_with(addr, "/", &[("if-modified-since", ims)]).await;
        assert_eq!(
            res.status,
            StatusCode::NOT_MODIFIED,
            "If-Modified-Since: {ims}"
        );
    }
    let earlier = get_with(
        addr,
        "/",
        &[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")],
    )
    .await;
    assert_eq!(earlier.status, StatusCode::OK);
}

#[tokio::test]
async fn if_none_match_takes_precedence_over_if_modified_since() {
    let deployed = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
    let addr = serve(routes().layer(standard_layer().last_modified(deployed))).await;
    let res = get_with(
        addr,
        "/",
        &[
            ("if-none-match", "\"nope\""),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    // RFC 9110 §13.1.3: even an If-None-Match we cannot parse turns
    // If-Modified-Since off.
    let res = get_with(
        addr,
        "/",
        &[
            ("if-none-match", "abc"),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_conditionals_are_ignored() {
    let addr = standard().await;
    for (name, value) in [
        ("if-none-match", "not-a-tag"),
        ("if-none-match", "*, \"a\""),
        ("if-modified-since", "yesterday"),
        ("if-modified-since", "0"),
    ] {
        let res = get_with(addr, "/", &[(name, value)]).await;
        assert_eq!(res.status, StatusCode::OK, "{name}: {value}");
        assert_eq!(res.body, PAGE.as_bytes());
    }
}

#[tokio::test]
async fn errors_and_unsafe_methods_never_become_304() {
    let addr = standard().await;
    let res = get_with(addr, "/missing", &[("if-none-match", "*")]).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    let res = get_with(addr, "/boom", &[("if-none-match", "*")]).await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    let res = send(addr, Method::POST, "/submit", &[("if-none-match", "*")]).await;
    assert_eq!(res.status, StatusCode::OK);
}

#[tokio::test]
async fn head_is_answered_304_from_a_handler_etag() {
    let addr = serve_with_handler_etag().await;
    let res = send(addr, Method::HEAD, "/", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(res.status, StatusCode::NOT_MODIFIED);
    assert_eq!(res.one("etag"), "\"v1\"");
}

#[tokio::test]
async fn conditional_requests_can_be_switched_off() {
    let addr = serve(routes().layer(standard_layer().conditional_requests(false))).await;
    let res = get_with(addr, "/", &[("if-none-match", "*")]).await;
    assert_eq!(res.status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_handler_cache_control_passes_through() {
    let app = Router::new()
        .route(
            "/",
            route(|| async {
                let mut res = Html(PAGE).into_response();
                res.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("max-age=\"oops, ,,=="),
                );
                res
            }),
        )
        .layer(standard_layer());
    let addr = serve(app).await;
    assert_eq!(
        get(addr, "/").await.one("cache-control"),
        "max-age=\"oops, ,,=="
    );
}

#[tokio::test]
async fn body_error_is_passed_on_without_etag() {
    let app = Router::new()
        .route(
            "/",
            route(|| async {
                let stream = tokio_stream::iter(vec![
                    Ok(Bytes::from_static(b"partial")),
                    Err(std::io::Error::other("renderer died")),
                ]);
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/html")
                    .body(Body::from_stream(stream))
                    .unwrap()
            }),
        )
        .layer(standard_layer());
    let addr = serve(app).await;
    // The client sees a broken response (the connection is cut), never a
    // complete-looking one with an ETag.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    match client.get(format!("http://{addr}/").parse().unwrap()).await {
        // hyper may abort before the head is flushed...
        Err(_) => {}
        // ...or after it: then the body must fail, and no ETag was sent.
        Ok(res) => {
            assert!(!res.headers().contains_key("etag"));
            let body = http_body_util::BodyExt::collect(res.into_body()).await;
            assert!(body.is_err());
        }
    }
}
