//! The binary form of a stored response in the shared tier.
//!
//! Instances of different crate versions may share one Redis during a
//! rolling deploy, so every value starts with a magic and a version byte:
//! a value this build does not know (another version, another program's
//! key, a truncated write) decodes to `None` and counts as a miss, never as
//! an error and never as a misread response.
//!
//! Times cross processes as wall-clock milliseconds: `Instant`s mean
//! nothing in another process. What RFC 9111 §4.2.3 needs to compute
//! `current_age` later is kept: the corrected initial age and the
//! response time; the reader adds the time since as resident time.
//!
//! Version 2 (issue 9) keeps the representations the cache made beside the
//! body (br, zstd, gzip: each coding's bytes; their header maps are made
//! again from the stored headers on reading), so an instance that finds
//! the entry in Redis serves them without compressing anything. A version
//! 1 value reads as a miss; the next render writes it anew. Right after
//! the magic and version comes an xxh3-64 of the body: a value is only
//! ever replaced by one holding the same body (see [`SAME_BODY`]), and a
//! value whose body does not match it (a torn or corrupted write) is a
//! miss.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode, Version};

use super::entry::{weigh, Entry, Freshness};
use super::representation::coding::Coding;
use super::representation::stored::{headers_for, Made, Representations};
use crate::directives::DELTA_MAX;

/// `TSR` then the format version; bump the version on any layout change.
const MAGIC: &[u8; 3] = b"TSR";
const VERSION: u8 = 2;

/// The leading bytes two values share when they hold the same body in the
/// same format: magic, version and the body's hash. The Redis tier
/// replaces a value with one that adds representations only when these
/// match, so a purge or a new render in between is never undone.
// Used by the compression job's write; kept in the layout without it.
#[cfg_attr(not(feature = "compression"), allow(dead_code))]
pub(crate) const SAME_BODY: usize = MAGIC.len() + 1 + 8;

/// At most this many representations beside the body: every other coding.
const MAX_MADE: usize = Coding::ALL.len() - 1;

/// The longest `keep_for` a decoded entry may claim: three capped deltas.
const KEEP_MAX: Duration = Duration::from_secs(3 << 31);

const F_NO_CACHE: u8 = 1;
const F_MUST_REVALIDATE: u8 = 1 << 1;
const F_S_MAXAGE: u8 = 1 << 2;
const F_AUTH_OK: u8 = 1 << 3;
const F_PLACEHOLDER: u8 = 1 << 4;

/// Encodes `entry` as of `now` (monotonic) / `wall` (the same instant on
/// the wall clock).
pub(crate) fn encode(entry: &Entry, now: Instant, wall: SystemTime) -> Vec<u8> {
    let made = entry.reprs.as_ref().map_or(&[][..], |r| &r.made[..]);
    let made = &made[..made.len().min(MAX_MADE)];
    let made_len: usize = made.iter().map(|m| m.body.len() + 5).sum();
    let mut out = Vec::with_capacity(entry.body.len() + made_len + 64 + entry.headers.len() * 48);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    put_u64(&mut out, body_hash(&entry.body));
    out.extend_from_slice(&entry.status.as_u16().to_be_bytes());
    out.push(match entry.version {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 2,
    });
    let f = &entry.fresh;
    let mut flags = 0;
    for (on, bit) in [
        (f.no_cache, F_NO_CACHE),
        (f.must_revalidate, F_MUST_REVALIDATE),
        (f.s_maxage, F_S_MAXAGE),
        (entry.auth_ok, F_AUTH_OK),
        (entry.status_placeholder, F_PLACEHOLDER),
    ] {
        if on {
            flags |= bit;
        }
    }
    out.push(flags);
    // The response time on the wall clock.
    let resident = now.saturating_duration_since(f.stored_at);
    let stored_wall = wall.checked_sub(resident).unwrap_or(wall);
    let stored_ms = stored_wall
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    put_u64(&mut out, stored_ms);
    put_u64(&mut out, f.lifetime);
    put_u64(&mut out, f.initial_age);
    put_opt(&mut out, f.swr);
    put_opt(&mut out, f.sie);
    put_u64(
        &mut out,
        u64::try_from(f.keep_for.as_millis()).unwrap_or(u64::MAX),
    );
    put_u32(&mut out, entry.headers.len());
    for (name, value) in &entry.headers {
        put_bytes(&mut out, name.as_str().as_bytes());
        put_bytes(&mut out, value.as_bytes());
    }
    put_u32(&mut out, entry.vary.len());
    for (name, value) in entry.vary.iter() {
        put_bytes(&mut out, name.as_str().as_bytes());
        match value {
            Some(v) => {
                out.push(1);
                put_bytes(&mut out, v.as_bytes());
            }
            None => out.push(0),
        }
    }
    match &entry.extra {
        Some(e) => {
            out.push(1);
            put_bytes(&mut out, e.as_bytes());
        }
        None => out.push(0),
    }
    put_u32(&mut out, entry.tags.len());
    for t in entry.tags.iter() {
        put_bytes(&mut out, t.as_bytes());
    }
    put_bytes(&mut out, &entry.body);
    match &entry.reprs {
        None => out.push(0),
        Some(reprs) => {
            out.push(1);
            out.push(coding_byte(reprs.origin));
            out.push(made.len() as u8);
            for m in made {
                out.push(coding_byte(m.coding));
                put_bytes(&mut out, &m.body);
            }
        }
    }
    out
}

/// The hash that ties a value to its body (see [`SAME_BODY`]).
fn body_hash(body: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(body)
}

fn coding_byte(c: Coding) -> u8 {
    // At most 4: fits.
    c.index() as u8
}

fn coding_of(b: u8) -> Option<Coding> {
    Coding::ALL.get(usize::from(b)).copied()
}

/// Decodes a value written by [`encode`] as of `now` / `wall`; `None` for
/// anything else (another format version included).
pub(crate) fn decode(bytes: &Bytes, now: Instant, wall: SystemTime) -> Option<Entry> {
    let mut r = Reader { buf: bytes, at: 0 };
    if r.take(3)? != MAGIC || r.u8()? != VERSION {
        return None;
    }
    let hash = r.u64()?;
    let status = StatusCode::from_u16(r.u16()?).ok()?;
    let version = match r.u8()? {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => return None,
    };
    let flags = r.u8()?;
    let stored_ms = r.u64()?;
    // Capped as `storable` caps them (RFC 9111 §1.2.2): a value from Redis
    // is input like any other, and another writer (or an attacker with
    // access to Redis) must not make an entry panic the reader or stay
    // fresh forever.
    let delta = |v: u64| v.min(u64::from(DELTA_MAX));
    let lifetime = delta(r.u64()?);
    let initial_age = delta(r.u64()?);
    let swr = r.opt()?.map(delta);
    let sie = r.opt()?.map(delta);
    // At most what `storable` can give: a lifetime plus a stale window
    // (each capped) plus a keep-stale of the same order.
    let keep_for = Duration::from_millis(r.u64()?).min(KEEP_MAX);

    let n = r.u32()?;
    let mut headers = HeaderMap::with_capacity(n.min(256));
    for _ in 0..n {
        let name = HeaderName::from_bytes(r.bytes()?).ok()?;
        let value = HeaderValue::from_bytes(r.bytes()?).ok()?;
        headers.append(name, value);
    }
    let n = r.u32()?;
    let mut vary = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let name = HeaderName::from_bytes(r.bytes()?).ok()?;
        let value = match r.u8()? {
            0 => None,
            1 => Some(HeaderValue::from_bytes(r.bytes()?).ok()?),
            _ => return None,
        };
        vary.push((name, value));
    }
    let extra = match r.u8()? {
        0 => None,
        1 => Some(std::str::from_utf8(r.bytes()?).ok()?.into()),
        _ => return None,
    };
    let n = r.u32()?;
    let mut tags: Vec<Box<str>> = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        tags.push(std::str::from_utf8(r.bytes()?).ok()?.into());
    }
    let body_len = r.len()?;
    let start = r.at;
    r.take(body_len)?;
    let made = match r.u8()? {
        0 => None,
        1 => {
            let origin = coding_of(r.u8()?)?;
            let n = usize::from(r.u8()?);
            if n > MAX_MADE {
                return None;
            }
            let mut made: Vec<(Coding, &[u8])> = Vec::with_capacity(n);
            for _ in 0..n {
                let coding = coding_of(r.u8()?)?;
                if coding == origin || made.iter().any(|(c, _)| *c == coding) {
                    return None;
                }
                made.push((coding, r.bytes()?));
            }
            Some((origin, made))
        }
        _ => return None,
    };
    if r.at != bytes.len() || body_hash(&bytes[start..start + body_len]) != hash {
        return None;
    }
    // Copied out: a slice would keep the whole value read from Redis (and
    // its spare room) alive with the entry.
    let body = super::entry::owned_body(&[bytes.slice(start..start + body_len)]);
    let headers = super::entry::owned_headers(&headers);
    // Each header map made from the stored one, as the compression job
    // makes it; the bytes copied out as the body is (and as the job keeps
    // them: exact-size, or mapped from 64 KiB up, as their weight counts).
    let reprs = made.map(|(origin, made)| Representations {
        origin,
        made: made
            .into_iter()
            .map(|(coding, body)| Made {
                coding,
                headers: headers_for(&headers, origin, coding, body.len()),
                body: super::entry::owned_body(&[bytes.slice_ref(body)]),
            })
            .collect(),
    });

    // Time since the response was received, on this machine's clock; a
    // clock behind the writer's counts as none. `checked_add`: a hostile
    // value can name a time this platform's `SystemTime` cannot hold
    // (Windows' range is narrower than u64 milliseconds), which `+` panics on.
    let since = UNIX_EPOCH
        .checked_add(Duration::from_millis(stored_ms))
        .and_then(|stored| wall.duration_since(stored).ok())
        .unwrap_or(Duration::ZERO);
    // An `Instant` that far back may not exist (just after boot): count the
    // rest as age carried in.
    let (stored_at, initial_age) = match now.checked_sub(since) {
        Some(at) => (at, initial_age),
        None => (now, initial_age.saturating_add(since.as_secs())),
    };
    let vary: Box<[_]> = vary.into_boxed_slice();
    let tags: Box<[_]> = tags.into_boxed_slice();
    let weight = weigh(&headers, body.len(), &vary, &tags, extra.as_deref())
        .saturating_add(reprs.as_ref().map_or(0, Representations::weight));
    Some(Entry {
        status,
        version,
        headers,
        status_placeholder: flags & F_PLACEHOLDER != 0,
        body,
        vary,
        extra,
        fresh: Freshness {
            lifetime,
            initial_age,
            stored_at,
            swr,
            sie,
            no_cache: flags & F_NO_CACHE != 0,
            must_revalidate: flags & F_MUST_REVALIDATE != 0,
            s_maxage: flags & F_S_MAXAGE != 0,
            keep_for,
        },
        tags,
        auth_ok: flags & F_AUTH_OK != 0,
        reprs: reprs.map(std::sync::Arc::new),
        weight,
    })
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_opt(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            out.push(1);
            put_u64(out, v);
        }
        None => out.push(0),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.buf.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_be_bytes)
    }

    fn len(&mut self) -> Option<usize> {
        let n = self.take(4)?.try_into().ok().map(u32::from_be_bytes)?;
        usize::try_from(n).ok()
    }

    fn u32(&mut self) -> Option<usize> {
        self.len()
    }

    fn opt(&mut self) -> Option<Option<u64>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.u64().map(Some),
            _ => None,
        }
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::{build, storable, RequestDirectives, StoreRules};

    fn sample() -> Entry {
        let now = Instant::now();
        let mut h = HeaderMap::new();
        h.insert(
            "cache-control",
            HeaderValue::from_static("public, s-maxage=60, stale-while-revalidate=30"),
        );
        h.insert("vary", HeaderValue::from_static("accept-language"));
        h.insert("surrogate-key", HeaderValue::from_static("pages post-1"));
        h.insert("etag", HeaderValue::from_static("\"v1\""));
        let rules = StoreRules {
            default_ttl: None,
            heuristic_max: None,
            targeted: None,
            keep_stale: Duration::from_secs(60),
        };
        let policy = storable(
            StatusCode::OK,
            &h,
            &RequestDirectives::default(),
            false,
            &rules,
            now,
            (now, SystemTime::now()),
        )
        .unwrap();
        let mut req = HeaderMap::new();
        req.insert("accept-language", HeaderValue::from_static("fr"));
        build(
            StatusCode::OK,
            Version::HTTP_11,
            &h,
            Bytes::from_static(b"<h1>page</h1>"),
            policy,
            &req,
            Some("user-a".into()),
            None,
        )
    }

    #[test]
    fn an_entry_survives_the_round_trip() {
        let e = sample();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let back = decode(&Bytes::from(encode(&e, now, wall)), now, wall).unwrap();
        assert_eq!(back.status, e.status);
        assert_eq!(back.headers, e.headers);
        assert_eq!(back.body, e.body);
        assert_eq!(&*back.vary, &*e.vary);
        assert_eq!(back.extra, e.extra);
        assert_eq!(back.tags, e.tags);
        assert_eq!(back.auth_ok, e.auth_ok);
        assert_eq!(back.status_placeholder, e.status_placeholder);
        assert_eq!(back.weight, e.weight);
        assert_eq!(back.fresh.lifetime, 60);
        assert_eq!(back.fresh.swr, Some(30));
        assert!(back.fresh.s_maxage);
        assert_eq!(back.fresh.keep_for, e.fresh.keep_for);
    }

    /// `sample()` with br and gzip made of its body (made-up bytes: the
    /// codec does not look inside them).
    fn with_codings() -> Entry {
        let e = sample();
        let made = [
            (Coding::Br, &b"br-bytes"[..]),
            (Coding::Gzip, b"gzip-bytes!"),
        ]
        .into_iter()
        .map(|(coding, body)| Made {
            coding,
            body: Bytes::from_static(body),
            headers: headers_for(&e.headers, Coding::Identity, coding, body.len()),
        })
        .collect();
        let reprs = Representations {
            origin: Coding::Identity,
            made,
        };
        let mut e = e;
        e.weight += reprs.weight();
        e.reprs = Some(std::sync::Arc::new(reprs));
        e
    }

    #[test]
    fn representations_survive_the_round_trip_with_their_headers() {
        let e = with_codings();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let back = decode(&Bytes::from(encode(&e, now, wall)), now, wall).unwrap();
        let (want, got) = (e.reprs.as_ref().unwrap(), back.reprs.as_ref().unwrap());
        assert_eq!(got.origin, Coding::Identity);
        assert_eq!(got.made.len(), 2);
        for (w, g) in want.made.iter().zip(got.made.iter()) {
            assert_eq!(
                (g.coding, &g.body, &g.headers),
                (w.coding, &w.body, &w.headers)
            );
        }
        assert_eq!(got.made[0].headers["etag"], "\"v1-br\"");
        assert_eq!(back.weight, e.weight, "the codings are weighed");
        assert_eq!(back.body, e.body);
    }

    /// Bodies from `entry::MAPPED_BODY` up, the identity one and each
    /// coding, come out of a value read from Redis as they do from the
    /// renderer and the compression job: in mappings of their own (page
    /// aligned), which the weight counts in pages, not on the heap among
    /// the read buffers.
    #[test]
    fn large_bodies_and_codings_read_back_are_mapped_as_made_ones_are() {
        use crate::cache::entry::MAPPED_BODY;
        let mut e = sample();
        let big = |n: usize, b: u8| Bytes::from(vec![b; n]);
        e.body = big(MAPPED_BODY + 100, b'p');
        let made = [
            (Coding::Br, MAPPED_BODY + 7),
            (Coding::Gzip, MAPPED_BODY - 1),
        ]
        .into_iter()
        .map(|(coding, n)| Made {
            coding,
            body: big(n, b'c'),
            headers: headers_for(&e.headers, Coding::Identity, coding, n),
        })
        .collect();
        e.reprs = Some(std::sync::Arc::new(Representations {
            origin: Coding::Identity,
            made,
        }));
        let (now, wall) = (Instant::now(), SystemTime::now());
        let back = decode(&Bytes::from(encode(&e, now, wall)), now, wall).unwrap();
        let page_aligned = |b: &Bytes| b.as_ptr() as usize % 4096 == 0;
        assert_eq!(back.body, e.body);
        assert!(page_aligned(&back.body), "the identity body is mapped");
        let got = back.reprs.as_ref().unwrap();
        assert_eq!(got.made[0].body, big(MAPPED_BODY + 7, b'c'));
        assert!(
            page_aligned(&got.made[0].body),
            "a coding of 64 KiB is mapped"
        );
        assert_eq!(got.made[1].body.len(), MAPPED_BODY - 1);
    }

    #[test]
    fn values_of_the_same_body_share_their_leading_bytes() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let plain = encode(&sample(), now, wall);
        let coded = encode(&with_codings(), now, wall);
        assert_eq!(plain[..SAME_BODY], coded[..SAME_BODY]);
        let mut other = sample();
        other.body = Bytes::from_static(b"<h1>another page</h1>");
        assert_ne!(encode(&other, now, wall)[..SAME_BODY], plain[..SAME_BODY]);
    }

    #[test]
    fn a_body_that_does_not_match_its_hash_is_a_miss() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut v = encode(&sample(), now, wall);
        let body = b"<h1>page</h1>";
        let at = v.windows(body.len()).position(|w| w == body).unwrap();
        v[at + 1] = b'p';
        assert!(decode(&Bytes::from(v), now, wall).is_none());
    }

    #[test]
    fn a_duplicate_or_unknown_coding_is_a_miss() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let v = encode(&with_codings(), now, wall);
        // The representations section: flag, origin, count, then each
        // coding byte and its length-prefixed bytes.
        let tail = 3 + (1 + 4 + 8) + (1 + 4 + 11);
        let section = v.len() - tail;
        assert_eq!(&v[section..section + 3], &[1, 0, 2]);
        let br = section + 3;
        for (byte, what) in [
            (1, "gzip twice"),
            (0, "identity beside identity"),
            (9, "unknown"),
        ] {
            let mut bad = v.clone();
            bad[br] = byte;
            assert!(decode(&Bytes::from(bad), now, wall).is_none(), "{what}");
        }
        let mut many = v;
        many[section + 2] = 5;
        assert!(decode(&Bytes::from(many), now, wall).is_none());
    }

    #[test]
    fn a_version_1_value_is_a_miss() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let v = encode(&sample(), now, wall);
        // What version 1 wrote: no hash, no representations section.
        let mut old = v[..3].to_vec();
        old.push(1);
        old.extend_from_slice(&v[SAME_BODY..v.len() - 1]);
        assert!(decode(&Bytes::from(old), now, wall).is_none());
    }

    #[test]
    fn time_spent_in_the_tier_counts_as_age() {
        let e = sample();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let bytes = Bytes::from(encode(&e, now, wall));
        // Read 25 s later by another process.
        let later = now + Duration::from_secs(25);
        let back = decode(&bytes, later, wall + Duration::from_secs(25)).unwrap();
        assert_eq!(back.fresh.age(later), 25);
        assert_eq!(back.fresh.ttl(later), 35);
    }

    #[test]
    fn another_version_or_garbage_is_a_miss() {
        let e = sample();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut v = encode(&e, now, wall);
        assert!(decode(&Bytes::from(v.clone()), now, wall).is_some());
        v[3] = VERSION + 1;
        assert!(decode(&Bytes::from(v.clone()), now, wall).is_none());
        v[3] = VERSION;
        v.pop();
        assert!(
            decode(&Bytes::from(v.clone()), now, wall).is_none(),
            "truncated"
        );
        v.extend_from_slice(b"xx");
        assert!(
            decode(&Bytes::from(v), now, wall).is_none(),
            "trailing bytes"
        );
        assert!(decode(&Bytes::from_static(b"<html>"), now, wall).is_none());
        assert!(decode(&Bytes::new(), now, wall).is_none());
    }

    #[test]
    fn hostile_lifetimes_are_capped_and_never_panic() {
        let e = sample();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut v = encode(&e, now, wall);
        // magic+version, body hash, status, version, flags, stored_ms: then the
        // lifetime, the initial age, swr and sie (each flagged) and keep_for.
        let at = 4 + 8 + 2 + 1 + 1 + 8;
        v[at..at + 8].copy_from_slice(&(1u64 << 63).to_be_bytes());
        v[at + 8..at + 16].copy_from_slice(&u64::MAX.to_be_bytes());
        v[at + 17..at + 25].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(v[at + 25], 0, "no stale-if-error in the sample");
        v[at + 26..at + 34].copy_from_slice(&u64::MAX.to_be_bytes());
        let back = decode(&Bytes::from(v), now, wall).unwrap();
        let cap = u64::from(DELTA_MAX);
        assert_eq!(back.fresh.lifetime, cap);
        assert_eq!(back.fresh.initial_age, cap);
        assert_eq!(back.fresh.swr, Some(cap));
        assert_eq!(back.fresh.ttl(now), 0);
        assert!(back.fresh.swr_allows(now));
        assert!(back.fresh.keep_for <= KEEP_MAX);
    }

    #[test]
    fn every_truncation_decodes_to_none_without_panicking() {
        let e = sample();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let v = encode(&e, now, wall);
        for n in 0..v.len() {
            assert!(decode(&Bytes::copy_from_slice(&v[..n]), now, wall).is_none());
        }
    }
    // ---- properties: a value read from Redis is untrusted input ----

    use proptest::prelude::*;

    fn clocks(offset_ms: u64, back: bool) -> (Instant, SystemTime) {
        let now = Instant::now();
        let d = Duration::from_millis(offset_ms);
        let wall = if back {
            SystemTime::now().checked_sub(d).unwrap_or(UNIX_EPOCH)
        } else {
            SystemTime::now() + d
        };
        (now, wall)
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            with_magic in any::<bool>(),
        ) {
            let mut v = Vec::new();
            if with_magic {
                v.extend_from_slice(MAGIC);
                v.push(VERSION);
            }
            v.extend_from_slice(&bytes);
            let (now, wall) = (Instant::now(), SystemTime::now());
            let _ = decode(&Bytes::from(v), now, wall);
        }

        #[test]
        fn decoding_a_corrupted_value_never_panics(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            wide in proptest::collection::vec((any::<prop::sample::Index>(), any::<u64>()), 0..3),
            cut in proptest::option::of(any::<prop::sample::Index>()),
            tail in proptest::collection::vec(any::<u8>(), 0..4),
            offset_ms in 0u64..(1 << 45),
            back in any::<bool>(),
        ) {
            let e = sample();
            let (now, wall) = (Instant::now(), SystemTime::now());
            let mut v = encode(&e, now, wall);
            for (at, b) in edits {
                let at = at.index(v.len());
                v[at] = b;
            }
            // Whole u64 fields overwritten (times, lifetimes, lengths).
            for (at, n) in wide {
                let at = at.index(v.len() - 8);
                v[at..at + 8].copy_from_slice(&n.to_be_bytes());
            }
            if let Some(cut) = cut {
                v.truncate(cut.index(v.len() + 1));
            }
            v.extend_from_slice(&tail);
            let (now, wall) = clocks(offset_ms, back);
            if let Some(back) = decode(&Bytes::from(v), now, wall) {
                let cap = u64::from(DELTA_MAX);
                prop_assert!(back.fresh.lifetime <= cap);
                prop_assert!(back.fresh.keep_for <= KEEP_MAX);
                let later = now + Duration::from_secs(offset_ms / 1000);
                let _ = (back.fresh.age(later), back.fresh.ttl(later), back.fresh.swr_allows(later));
                let _ = back.fresh.sie_allows(later, Some(cap));
            }
        }

        #[test]
        fn any_entry_survives_the_round_trip(
            status in 200u16..600,
            body in proptest::collection::vec(any::<u8>(), 0..64),
            tags in proptest::collection::vec("[!-+--~]{1,8}", 0..4),
            extra in proptest::option::of("\\PC{0,12}"),
            lang in proptest::option::of("[a-z-]{0,8}"),
            cc in prop_oneof![
                Just("public, max-age=60"),
                Just("s-maxage=5, stale-while-revalidate=30, stale-if-error=9"),
                Just("max-age=0, must-revalidate"),
                Just("no-cache, max-age=99999999999"),
            ],
            delay in 0u64..100_000,
        ) {
            let now = Instant::now();
            let wall = SystemTime::now();
            let mut h = HeaderMap::new();
            h.insert("cache-control", HeaderValue::from_static(cc));
            h.insert("vary", HeaderValue::from_static("accept-language"));
            h.insert("cache-tag", HeaderValue::from_str(&tags.join(",")).unwrap());
            h.insert("etag", HeaderValue::from_static("\"v1\""));
            let rules = StoreRules {
                default_ttl: Some(1),
                heuristic_max: None,
                targeted: None,
                keep_stale: Duration::from_secs(60),
            };
            let status = StatusCode::from_u16(status).unwrap();
            let Ok(policy) = storable(status, &h, &RequestDirectives::default(), false, &rules, now, (now, wall)) else {
                return Ok(());
            };
            let mut req = HeaderMap::new();
            if let Some(lang) = &lang {
                req.insert("accept-language", HeaderValue::from_str(lang).unwrap());
            }
            let e = build(status, Version::HTTP_11, &h, Bytes::from(body), policy, &req, extra.map(Into::into), None);
            let later = now + Duration::from_secs(delay);
            let back = decode(&Bytes::from(encode(&e, now, wall)), later, wall + Duration::from_secs(delay)).unwrap();
            prop_assert_eq!(back.status, e.status);
            prop_assert_eq!(&back.headers, &e.headers);
            prop_assert_eq!(&back.body, &e.body);
            prop_assert_eq!(&*back.vary, &*e.vary);
            prop_assert_eq!(&back.extra, &e.extra);
            prop_assert_eq!(&back.tags, &e.tags);
            prop_assert_eq!(back.weight, e.weight);
            prop_assert_eq!(back.fresh.lifetime, e.fresh.lifetime);
            prop_assert_eq!(back.fresh.swr, e.fresh.swr);
            prop_assert_eq!(back.fresh.sie, e.fresh.sie);
            prop_assert_eq!(back.fresh.no_cache, e.fresh.no_cache);
            prop_assert_eq!(back.fresh.must_revalidate, e.fresh.must_revalidate);
            prop_assert_eq!(back.fresh.age(later), e.fresh.age(later));
        }
    }
}
