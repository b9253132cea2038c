//! Protocol upgrades (WebSocket and any other `Upgrade`, RFC 9110 §7.8)
//! forwarded as tunnels on HTTP/1.1.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ProxyResponseBody;
use crate::balance::ResponseBody;

/// The client's side of an upgrade it asked for: the protocols it offered
/// and hyper's handle on its connection.
pub(super) struct Requested {
    // The client's `Upgrade` field, forwarded as is.
    offered: HeaderValue,
    // Resolves to the client's connection once our 101 has been written.
    on_upgrade: OnUpgrade,
}

/// Takes the upgrade a request asks for (HTTP/1.1, `Upgrade` present and
/// `Connection` listing `upgrade`, RFC 9110 §7.8), if the server can hand
/// the connection over (hyper's `OnUpgrade` is in the extensions, as
/// [`serve`](super::serve) arranges). `None` leaves the request an
/// ordinary one: its `Upgrade` is then removed as hop-by-hop.
pub(super) fn take(parts: &mut Parts) -> Option<Requested> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let offered = parts.headers.get(header::UPGRADE)?.clone();
    if !lists_token(&parts.headers, header::CONNECTION, "upgrade") {
        return None;
    }
    let on_upgrade = parts.extensions.remove::<OnUpgrade>()?;
    Some(Requested {
        offered,
        on_upgrade,
    })
}

impl Requested {
    /// Puts the upgrade back on the prepared request (hop-by-hop removal
    /// took `Connection` and `Upgrade` away).
    pub(super) fn restore(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.offered.clone());
    }
}

fn lists_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether every protocol of a 101's `Upgrade` was offered by the client
/// (RFC 9110 §7.8: a server must not switch to one it was not offered).
fn offered_all(offered: &HeaderValue, chosen: Option<&HeaderValue>) -> bool {
    let (Ok(offered), Some(Ok(chosen))) = (offered.to_str(), chosen.map(|v| v.to_str())) else {
        return false;
    };
    let mut any = false;
    for c in chosen.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        any = true;
        if !offered.split(',').any(|o| o.trim().eq_ignore_ascii_case(c)) {
            return false;
        }
    }
    any
}

/// Answers an upstream's `101 Switching Protocols`: relays it and joins the
/// two connections, or `502` when the client asked for no upgrade, or not
/// for this protocol, or the upstream's connection cannot be taken over.
///
/// The response body (which holds the endpoint's in-flight count) moves
/// into the tunnel's task: the tunnel counts as in flight until it closes.
pub(super) fn switch(
    res: Response<ProxyResponseBody>,
    requested: Option<Requested>,
    idle_timeout: Duration,
) -> Response<ProxyResponseBody> {
    let (mut parts, body) = res.into_parts();
    let Some(requested) = requested else {
        return bad_gateway();
    };
    let chosen = parts.headers.get(header::UPGRADE).cloned();
    if !offered_all(&requested.offered, chosen.as_ref()) {
        return bad_gateway();
    }
    let Some(upstream) = parts.extensions.remove::<OnUpgrade>() else {
        return bad_gateway();
    };
    super::forward::remove_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(chosen) = chosen {
        parts.headers.insert(header::UPGRADE, chosen);
    }
    let client = requested.on_upgrade;
    tokio::spawn(async move {
        // Kept so the endpoint counts the tunnel in flight until it closes.
        let _in_flight = body;
        let (Ok(upstream), Ok(client)) = tokio::join!(upstream, client) else {
            return;
        };
        tunnel(TokioIo::new(client), TokioIo::new(upstream), idle_timeout).await;
    });
    Response::from_parts(parts, ResponseBody::unavailable())
}

fn bad_gateway() -> Response<ProxyResponseBody> {
    let mut res = Response::new(ResponseBody::unavailable());
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

/// Copies bytes both ways until both sides have closed (a side's end of
/// stream is passed on as a write shutdown), or nothing has moved either
/// way for `idle_timeout`.
async fn tunnel<A, B>(a: A, b: B, idle_timeout: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Arc::new(Activity::new());
    let mut a = Watched {
        io: a,
        clock: Arc::clone(&clock),
    };
    let mut b = Watched {
        io: b,
        clock: Arc::clone(&clock),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    let mut copy = std::pin::pin!(copy);
    let sleep = tokio::time::sleep(idle_timeout);
    let mut sleep = std::pin::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut copy => return,
            () = &mut sleep => {
                let deadline = clock.last() + idle_timeout;
                if deadline <= tokio::time::Instant::now() {
                    // Idle: dropping both sides closes them.
                    return;
                }
                sleep.as_mut().reset(deadline);
            }
        }
    }
}

/// When bytes last moved through a tunnel, in milliseconds from its start.
struct Activity {
    start: tokio::time::Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One side of a tunnel, stamping the clock whenever bytes move.
struct Watched<T> {
    io: T,
    clock: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_101_must_name_only_offered_protocols() {
        let offered = HeaderValue::from_static("websocket, h2c");
        let ok = HeaderValue::from_static("WebSocket");
        let other = HeaderValue::from_static("foo");
        let mixed = HeaderValue::from_static("websocket, foo");
        assert!(offered_all(&offered, Some(&ok)));
        assert!(!offered_all(&offered, Some(&other)));
        assert!(!offered_all(&offered, Some(&mixed)));
        assert!(!offered_all(&offered, None));
        assert!(!offered_all(&offered, Some(&HeaderValue::from_static(""))));
    }

    #[test]
    fn only_http11_requests_with_connection_upgrade_ask_for_one() {
        let req = http::Request::get("/")
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .body(())
            .unwrap();
        let mut parts = req.into_parts().0;
        assert!(lists_token(&parts.headers, header::CONNECTION, "upgrade"));
        // No OnUpgrade handle from a server: an ordinary request.
        assert!(take(&mut parts).is_none());
        parts.version = Version::HTTP_10;
        assert!(take(&mut parts).is_none());
    }
}
