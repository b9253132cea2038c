//! The representations stored beside an entry's own body, and the choice
//! of one for a request.
//!
//! Identity is always kept (the entry's body when the renderer sent
//! identity, as it is asked to): ranges are cut from it, clients without
//! `Accept-Encoding` (scripts, bots, `curl`) get it without a decode per
//! request, and it is what the others are made from again after a purge.
//! Varnish instead keeps only gzip and decodes for the rare client without
//! it; with br and zstd at about a fifth of the page each, the identity
//! copy costs about as much memory as the codings together, and saves CPU
//! on every such request.

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, ETAG, VARY};
use http::{HeaderMap, HeaderValue};

use super::accept::{AcceptEncoding, Negotiation};
use super::coding::Coding;
use super::validator::etag_for;
use crate::cache::entry::body_footprint;

/// One representation made by the cache: its bytes and the complete header
/// map it is sent with (`Content-Encoding`, `Content-Length` and `ETag` of
/// its own), prepared once so a hit only clones it.
#[derive(Debug)]
pub(crate) struct Made {
    pub(crate) coding: Coding,
    pub(crate) body: Bytes,
    pub(crate) headers: HeaderMap,
}

/// What the cache made of one stored response.
#[derive(Debug)]
pub(crate) struct Representations {
    /// The coding of the entry's own body (as the renderer sent it).
    pub(crate) origin: Coding,
    /// The others, in the server's order of preference.
    pub(crate) made: Box<[Made]>,
}

/// What one made representation holds besides its body and its fields'
/// names and values, in bytes: the `Made` itself, its header map's index
/// and bucket arrays beyond the 100 bytes per field counted with each
/// field, the values' shared handles, the body's handle, and malloc's
/// block headers. Measured by `tests/cache_alloc.rs` (a counting
/// allocator): with 64 here, compressed 10 KiB pages held 6.4 % more than
/// they weighed, about 380 bytes per representation (issue 8 §6).
const MADE_OVERHEAD: usize = 448;

impl Representations {
    /// The bytes they add to the store's count: bodies, each header map as
    /// `entry::weigh` counts a map (name, value and 100 per field), and
    /// [`MADE_OVERHEAD`] each.
    pub(crate) fn weight(&self) -> usize {
        self.made
            .iter()
            .map(|m| {
                body_footprint(m.body.len())
                    + MADE_OVERHEAD
                    + m.headers
                        .iter()
                        .map(|(n, v)| n.as_str().len() + v.len() + 100)
                        .sum::<usize>()
            })
            .sum()
    }

    /// The same bodies with their header maps made again from `stored`
    /// (the entry's headers after a 304 updated them, RFC 9111 §4.3.4), so
    /// no representation keeps fields the origin has since replaced.
    pub(crate) fn rebase(&self, stored: &HeaderMap) -> Representations {
        Representations {
            origin: self.origin,
            made: self
                .made
                .iter()
                .map(|m| Made {
                    coding: m.coding,
                    body: m.body.clone(),
                    headers: headers_for(stored, self.origin, m.coding, m.body.len()),
                })
                .collect(),
        }
    }

    /// The codings available, the entry's own first.
    pub(crate) fn available(&self) -> impl Iterator<Item = Coding> + '_ {
        std::iter::once(self.origin).chain(self.made.iter().map(|m| m.coding))
    }

    fn get(&self, coding: Coding) -> Option<&Made> {
        self.made.iter().find(|m| m.coding == coding)
    }
}

/// The headers a representation in `coding` is sent with, from the
/// entry's stored headers (whose body is in `origin`).
pub(crate) fn headers_for(
    stored: &HeaderMap,
    origin: Coding,
    coding: Coding,
    len: usize,
) -> HeaderMap {
    let mut headers = stored.clone();
    match coding.content_encoding() {
        Some(v) => {
            headers.insert(CONTENT_ENCODING, v);
        }
        None => {
            headers.remove(CONTENT_ENCODING);
        }
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(tag) = stored.get(ETAG) {
        match etag_for(tag, origin, coding) {
            Some(t) => {
                headers.insert(ETAG, t);
            }
            None => {
                headers.remove(ETAG);
            }
        }
    }
    add_vary_accept_encoding(&mut headers);
    // Compact: a map built by inserting keeps spare room.
    headers.clone()
}

/// Adds `Accept-Encoding` to `Vary` unless it is there (or `Vary: *`):
/// every answer from a negotiated entry says it varies, so caches further
/// out keep the codings apart.
pub(crate) fn add_vary_accept_encoding(headers: &mut HeaderMap) {
    let named = headers.get_all(VARY).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|n| {
            let n = n.trim_ascii();
            n == b"*" || n.eq_ignore_ascii_case(b"accept-encoding")
        })
    });
    if !named {
        headers.append(VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// Makes the configured codings of a stored body that is in `origin`
/// coding (decoding it first, to at most `cap` bytes, when it is not
/// identity). Runs on the job pool. A coding that would not be smaller than
/// identity is skipped. `None` when the body cannot be decoded.
#[cfg(feature = "compression")]
pub(crate) fn make(
    stored: &HeaderMap,
    body: &Bytes,
    origin: Coding,
    config: &super::config::Compression,
    cap: usize,
) -> Option<Representations> {
    use super::compress::{decode, encode};
    let identity = if origin == Coding::Identity {
        body.clone()
    } else {
        match decode(origin, body, cap) {
            Ok(decoded) => crate::cache::entry::owned_body(&[Bytes::from(decoded)]),
            Err(e) => {
                tracing::debug!(error = %e, coding = %origin, "stored body not decoded");
                return None;
            }
        }
    };
    let mut made = Vec::with_capacity(config.codings.len() + 1);
    if origin != Coding::Identity {
        made.push(Made {
            coding: Coding::Identity,
            headers: headers_for(stored, origin, Coding::Identity, identity.len()),
            body: identity.clone(),
        });
    }
    for coding in config.codings.iter().copied() {
        if coding == origin {
            continue;
        }
        let Ok(encoded) = encode(coding, &identity, config.level(coding)) else {
            continue;
        };
        if encoded.len() >= identity.len() {
            continue;
        }
        made.push(Made {
            coding,
            headers: headers_for(stored, origin, coding, encoded.len()),
            // Exact size: an encoder's output keeps spare capacity (up to
            // the input's size), which `Bytes::from` would hold, uncounted.
            body: crate::cache::entry::owned_body(&[Bytes::from(encoded)]),
        });
    }
    Some(Representations {
        origin,
        made: made.into_boxed_slice(),
    })
}

/// Which stored bytes answer a request.
#[derive(Debug)]
pub(crate) enum Pick<'a> {
    /// The entry's own headers and body.
    Own,
    /// A representation the cache made.
    Made(&'a Made),
    /// `406 Not Acceptable` (RFC 9110 §12.5.3, §15.5.7).
    NotAcceptable,
}

/// Picks the representation for a request: negotiated over what exists
/// (`reprs` is `None` until the job is done, or for entries never
/// compressed: the entry's own body), the entry's own when the request
/// says `no-transform` (RFC 9111 §5.2.1.6), and identity for a `Range`
/// request when identity is acceptable, since ranges are cut from
/// identity.
pub(crate) fn pick<'a>(
    reprs: Option<&'a Representations>,
    accept: &AcceptEncoding,
    no_transform: bool,
    wants_range: bool,
    preference: &[Coding],
) -> Pick<'a> {
    let Some(reprs) = reprs else {
        return Pick::Own;
    };
    if no_transform {
        return Pick::Own;
    }
    let mut available = [Coding::Identity; 5];
    let mut n = 0;
    for c in reprs.available() {
        if n < available.len() {
            available[n] = c;
            n += 1;
        }
    }
    let available = &available[..n];
    if wants_range
        && available.contains(&Coding::Identity)
        && accept.quality(Coding::Identity) != Some(0)
    {
        return own_or(reprs, Coding::Identity);
    }
    match accept.negotiate(available, preference) {
        Negotiation::Use(c) => own_or(reprs, c),
        Negotiation::NotAcceptable => Pick::NotAcceptable,
    }
}

/// What a client's request says about the representation it may get:
/// its `Accept-Encoding` and whether it asked for `no-transform` (RFC 9111
/// §5.2.1.6). Read without allocating.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Wants {
    pub(crate) accept: AcceptEncoding,
    pub(crate) no_transform: bool,
    /// A GET with `Range`: identity is chosen when acceptable, since
    /// ranges are cut from it.
    pub(crate) range: bool,
}

impl Wants {
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        Wants {
            accept: AcceptEncoding::from_headers(headers),
            no_transform: headers
                .get_all(http::header::CACHE_CONTROL)
                .iter()
                .any(|v| {
                    v.as_bytes().split(|b| *b == b',').any(|d| {
                        let d = d.trim_ascii();
                        let name = d.split(|b| *b == b'=').next().unwrap_or(d).trim_ascii();
                        name.eq_ignore_ascii_case(b"no-transform")
                    })
                }),
            range: false,
        }
    }
}

/// The representation the cache made that answers a request, `None` for
/// the entry's own headers and body. The server's preference among codings
/// of equal weight is the order they were made in (the configured order).
/// When nothing made is acceptable and identity is refused too, the
/// entry's own (identity) body is sent: RFC 9110 §12.5.3 lets a server
/// disregard the field rather than answer 406.
pub(crate) fn choose<'a>(reprs: Option<&'a Representations>, wants: &Wants) -> Option<&'a Made> {
    let reprs = reprs?;
    if reprs.made.is_empty() {
        return None;
    }
    let mut preference = [Coding::Identity; 5];
    for (slot, m) in preference.iter_mut().zip(reprs.made.iter()) {
        *slot = m.coding;
    }
    let preference = &preference[..reprs.made.len().min(5)];
    match pick(
        Some(reprs),
        &wants.accept,
        wants.no_transform,
        wants.range,
        preference,
    ) {
        Pick::Made(m) => Some(m),
        Pick::Own | Pick::NotAcceptable => None,
    }
}

fn own_or(reprs: &Representations, coding: Coding) -> Pick<'_> {
    if coding == reprs.origin {
        return Pick::Own;
    }
    reprs.get(coding).map_or(Pick::Own, Pick::Made)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ETAG, HeaderValue::from_static("\"abc\""));
        h.insert(CONTENT_LENGTH, HeaderValue::from(30_000));
        h.insert("content-type", HeaderValue::from_static("text/html"));
        h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        h
    }

    fn reprs() -> Representations {
        let made = [Coding::Br, Coding::Gzip]
            .into_iter()
            .map(|c| Made {
                coding: c,
                body: Bytes::from_static(b"xxxx"),
                headers: headers_for(&stored(), Coding::Identity, c, 4),
            })
            .collect();
        Representations {
            origin: Coding::Identity,
            made,
        }
    }

    fn ae(v: &str) -> AcceptEncoding {
        AcceptEncoding::parse_lines(std::iter::once(v.as_bytes()))
    }

    const PREF: &[Coding] = &[Coding::Br, Coding::Zstd, Coding::Gzip];

    fn coding_of(p: &Pick<'_>) -> Option<Coding> {
        match p {
            Pick::Own => Some(Coding::Identity),
            Pick::Made(m) => Some(m.coding),
            Pick::NotAcceptable => None,
        }
    }

    #[test]
    fn made_headers_carry_their_own_coding_length_and_tag() {
        let r = reprs();
        let br = r.get(Coding::Br).unwrap();
        assert_eq!(br.headers[CONTENT_ENCODING], "br");
        assert_eq!(br.headers[CONTENT_LENGTH], "4");
        assert_eq!(br.headers[ETAG], "\"abc-br\"");
        assert_eq!(br.headers.get_all(VARY).iter().count(), 1);
        assert_eq!(br.headers["content-type"], "text/html");
    }

    #[test]
    fn vary_gets_accept_encoding_once() {
        let mut h = HeaderMap::new();
        add_vary_accept_encoding(&mut h);
        add_vary_accept_encoding(&mut h);
        assert_eq!(
            h.get_all(VARY).iter().collect::<Vec<_>>(),
            ["accept-encoding"]
        );
        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("Cookie"));
        add_vary_accept_encoding(&mut h);
        assert_eq!(h.get_all(VARY).iter().count(), 2);
        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("*"));
        add_vary_accept_encoding(&mut h);
        assert_eq!(h.get_all(VARY).iter().count(), 1);
    }

    #[test]
    fn pick_table() {
        let r = reprs();
        let cases: &[(Option<&str>, bool, bool, Option<Coding>)] = &[
            (
                Some("gzip, deflate, br, zstd"),
                false,
                false,
                Some(Coding::Br),
            ),
            (Some("gzip"), false, false, Some(Coding::Gzip)),
            // Made only br and gzip: a zstd-only client gets identity.
            (Some("zstd"), false, false, Some(Coding::Identity)),
            (None, false, false, Some(Coding::Identity)),
            // no-transform: what the origin sent.
            (Some("br"), true, false, Some(Coding::Identity)),
            // Ranges come from identity, unless identity is refused.
            (Some("br"), false, true, Some(Coding::Identity)),
            (Some("br, identity;q=0"), false, true, Some(Coding::Br)),
            (Some("zstd, identity;q=0"), false, false, None),
        ];
        for (accept, no_transform, range, want) in cases {
            let accept = accept.map_or_else(AcceptEncoding::default, ae);
            let got = pick(Some(&r), &accept, *no_transform, *range, PREF);
            assert_eq!(coding_of(&got), *want, "{accept:?} {no_transform} {range}");
        }
        // Before the job is done, or never compressible: the entry's own.
        assert!(matches!(
            pick(None, &ae("br"), false, false, PREF),
            Pick::Own
        ));
    }

    #[cfg(feature = "compression")]
    #[test]
    fn make_encodes_every_coding_and_decodes_to_the_same_body() {
        use super::super::compress::decode;
        let page: Bytes = "<p>render hydrate island</p>\n".repeat(1000).into();
        let config = super::super::config::Compression::new();
        let r = make(&stored(), &page, Coding::Identity, &config, 1 << 20).unwrap();
        let codings: Vec<Coding> = r.made.iter().map(|m| m.coding).collect();
        assert_eq!(codings, [Coding::Br, Coding::Zstd, Coding::Gzip]);
        for m in r.made.iter() {
            assert!(m.body.len() < page.len() / 10, "{}", m.coding);
            assert_eq!(decode(m.coding, &m.body, page.len()).unwrap(), page);
            assert_eq!(m.headers[CONTENT_LENGTH], m.body.len().to_string().as_str());
        }
    }

    #[cfg(feature = "compression")]
    #[test]
    fn make_from_a_gzip_body_adds_identity_and_keeps_the_origin_tag() {
        use super::super::compress::encode;
        let page = "<p>render hydrate island</p>\n".repeat(1000);
        let gz = Bytes::from(encode(Coding::Gzip, page.as_bytes(), 6).unwrap());
        let mut h = stored();
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let config = super::super::config::Compression::new();
        let r = make(&h, &gz, Coding::Gzip, &config, 1 << 20).unwrap();
        let identity = r.get(Coding::Identity).unwrap();
        assert_eq!(identity.body, page.as_bytes());
        assert!(!identity.headers.contains_key(CONTENT_ENCODING));
        assert_eq!(identity.headers[ETAG], "\"abc-identity\"");
        assert!(
            r.get(Coding::Gzip).is_none(),
            "the entry's own body is the gzip one"
        );
        // A bomb past the cap makes nothing.
        assert!(make(&h, &gz, Coding::Gzip, &config, 100).is_none());
    }

    #[cfg(feature = "compression")]
    #[test]
    fn incompressible_bytes_make_nothing() {
        let mut x = 1u64;
        let noise: Bytes = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
            .into();
        let config = super::super::config::Compression::new();
        let r = make(&stored(), &noise, Coding::Identity, &config, 1 << 20).unwrap();
        assert!(r.made.is_empty());
    }

    #[test]
    fn weight_counts_bodies_and_header_maps() {
        let r = reprs();
        assert!(r.weight() > 8 + 2 * 4 * 100);
    }
}
