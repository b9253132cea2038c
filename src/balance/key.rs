use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use http::header::{self, HeaderName};
use http::request::Parts;
use http::HeaderMap;

/// Hashes bytes into a request key (xxh3: the same in every process, so
/// replicas of a proxy agree on where a key goes).
#[must_use]
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The client's socket address, for servers that are not axum: insert it
/// into each request's extensions when accepting the connection.
///
/// ```
/// use std::net::SocketAddr;
/// use tower_ssr::balance::ClientAddr;
///
/// let peer: SocketAddr = "203.0.113.9:50123".parse().unwrap();
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(ClientAddr(peer));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// What the consistent-hashing strategies hash for a request.
///
/// A request that yields no key (no client address, no such header or
/// cookie) goes to the strategy's fallback, never all to one endpoint.
#[derive(Clone, Default)]
pub struct Key {
    source: Source,
}

#[derive(Clone, Default)]
enum Source {
    #[default]
    None,
    ClientIp(Arc<TrustedProxies>),
    Header(HeaderName),
    Cookie(Arc<str>),
    Fn(Arc<dyn Fn(&Parts) -> Option<u64> + Send + Sync>),
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::None => f.write_str("Key::none"),
            Source::ClientIp(t) => f.debug_tuple("Key::client_ip").field(t).finish(),
            Source::Header(h) => f.debug_tuple("Key::header").field(h).finish(),
            Source::Cookie(c) => f.debug_tuple("Key::cookie").field(c).finish(),
            Source::Fn(_) => f.write_str("Key::from_fn(..)"),
        }
    }
}

impl Key {
    /// No key: every request goes to the fallback strategy.
    #[must_use]
    pub fn none() -> Self {
        Key::default()
    }

    /// The client IP ([`client_ip`]): sticky sessions per client, like
    /// nginx's `ip_hash`.
    #[must_use]
    pub fn client_ip(trusted: TrustedProxies) -> Self {
        Key {
            source: Source::ClientIp(Arc::new(trusted)),
        }
    }

    /// The value of a request header (its first line); absent or empty
    /// means no key.
    #[must_use]
    pub fn header(name: HeaderName) -> Self {
        Key {
            source: Source::Header(name),
        }
    }

    /// The value of a cookie; absent or empty means no key.
    #[must_use]
    pub fn cookie(name: &str) -> Self {
        Key {
            source: Source::Cookie(Arc::from(name)),
        }
    }

    /// A key computed by a closure; use [`hash_key`] to turn bytes into one.
    #[must_use]
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn(&Parts) -> Option<u64> + Send + Sync + 'static,
    {
        Key {
            source: Source::Fn(Arc::new(f)),
        }
    }

    pub(crate) fn is_none(&self) -> bool {
        matches!(self.source, Source::None)
    }

    pub(crate) fn extract(&self, parts: &Parts) -> Option<u64> {
        match &self.source {
            Source::None => None,
            Source::ClientIp(trusted) => client_ip(parts, trusted).map(|ip| match ip {
                IpAddr::V4(v4) => hash_key(&v4.octets()),
                IpAddr::V6(v6) => hash_key(&v6.octets()),
            }),
            Source::Header(name) => parts
                .headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty())
                .map(hash_key),
            Source::Cookie(name) => cookie(&parts.headers, name).map(hash_key),
            Source::Fn(f) => f(parts),
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for line in headers.get_all(header::COOKIE) {
        for pair in line.as_bytes().split(|&b| b == b';') {
            let pair = trim(pair);
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if &pair[..eq] == name.as_bytes() {
                let v = trim(&pair[eq + 1..]);
                return (!v.is_empty()).then_some(v);
            }
        }
    }
    None
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// Which forwarded header the trusted proxies write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// `Forwarded: for=client, for="[2001:db8::1]:4711"` (RFC 7239).
    Forwarded,
}

/// Proxies whose forwarded headers are believed: a set of addresses and
/// CIDR blocks.
///
/// Only the header the proxies are configured to write is read: a proxy
/// that appends `X-Forwarded-For` passes a client's own `Forwarded` through
/// untouched, so reading both would let clients choose their address.
#[derive(Debug, Clone)]
#[must_use]
pub struct TrustedProxies {
    nets: Vec<Cidr>,
    header: ForwardedHeader,
}

impl Default for TrustedProxies {
    fn default() -> Self {
        Self::none()
    }
}

impl TrustedProxies {
    /// Trusts no one: the client is always the socket peer.
    pub fn none() -> Self {
        TrustedProxies {
            nets: Vec::new(),
            header: ForwardedHeader::XForwardedFor,
        }
    }

    /// Trusts these addresses or blocks, for example `"10.0.0.0/8"`,
    /// `"::1"`, `"192.0.2.7"`.
    ///
    /// # Errors
    ///
    /// When one of them is not an address or a CIDR block.
    pub fn try_new<I, S>(nets: I) -> Result<Self, InvalidCidr>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = nets
            .into_iter()
            .map(|s| s.as_ref().parse())
            .collect::<Result<Vec<Cidr>, _>>()?;
        Ok(TrustedProxies {
            nets,
            header: ForwardedHeader::XForwardedFor,
        })
    }

    /// Which header the trusted proxies write. Default: `X-Forwarded-For`.
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Whether `ip` is a trusted proxy.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(ip))
    }
}

/// An address or CIDR block that did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCidr(String);

impl fmt::Display for InvalidCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an IP address or CIDR block: {:?}", self.0)
    }
}

impl std::error::Error for InvalidCidr {}

#[derive(Debug, Clone, Copy)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = InvalidCidr;

    fn from_str(s: &str) -> Result<Self, InvalidCidr> {
        let bad = || InvalidCidr(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr = IpAddr::from_str(addr).map_err(|_| bad())?.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The client's address as the request carries it: [`ClientAddr`], or
/// axum's `ConnectInfo<SocketAddr>` with the `axum` feature.
#[must_use]
pub fn peer_addr(parts: &Parts) -> Option<SocketAddr> {
    if let Some(ClientAddr(a)) = parts.extensions.get::<ClientAddr>() {
        return Some(*a);
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(a)) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*a);
    }
    None
}

/// The client IP of a request.
///
/// The socket peer, unless the peer is a trusted proxy: then the forwarded
/// header is read from the right, skipping trusted hops, and the first
/// untrusted hop is the client (the leftmost entries can be forged by
/// anyone, RFC 7239 §8). `None` when the request carries no peer address,
/// or the hop to use is not an IP (`unknown`, an obfuscated node, garbage):
/// a request without a key, not one more "unknown" client. IPv4-mapped IPv6
/// addresses are normalised to IPv4.
#[must_use]
pub fn client_ip(parts: &Parts, trusted: &TrustedProxies) -> Option<IpAddr> {
    let peer = peer_addr(parts)?.ip().to_canonical();
    if !trusted.contains(peer) {
        return Some(peer);
    }
    let hops: Vec<Hop> = match trusted.header {
        ForwardedHeader::XForwardedFor => {
            let mut hops = Vec::new();
            for line in parts.headers.get_all("x-forwarded-for") {
                let Ok(line) = line.to_str() else {
                    hops.push(Hop::Invalid);
                    continue;
                };
                hops.extend(line.split(',').map(|h| parse_xff_hop(h.trim())));
            }
            hops
        }
        ForwardedHeader::Forwarded => {
            let mut hops = Vec::new();
            for line in parts.headers.get_all(header::FORWARDED) {
                match line.to_str().ok().and_then(parse_forwarded) {
                    Some(h) => hops.extend(h),
                    None => hops.push(Hop::Invalid),
                }
            }
            hops
        }
    };
    for hop in hops.iter().rev() {
        match hop {
            Hop::Ip(ip) if trusted.contains(*ip) => continue,
            Hop::Ip(ip) => return Some(*ip),
            Hop::Invalid | Hop::Unknown => return None,
        }
    }
    // Every hop is trusted: the leftmost is as far as the chain goes.
    match hops.first() {
        Some(Hop::Ip(ip)) => Some(*ip),
        Some(_) => None,
        None => Some(peer),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Ip(IpAddr),
    /// `unknown` or an obfuscated node (RFC 7239 §6.2, §6.3), or an element
    /// without `for`.
    Unknown,
    Invalid,
}

fn parse_xff_hop(s: &str) -> Hop {
    if let Ok(ip) = IpAddr::from_str(s) {
        return Hop::Ip(ip.to_canonical());
    }
    // Some proxies write a port or brackets; accept `1.2.3.4:80` and
    // `[::1]:80`.
    if let Ok(sa) = SocketAddr::from_str(s) {
        return Hop::Ip(sa.ip().to_canonical());
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if let Ok(ip) = IpAddr::from_str(inner) {
            return Hop::Ip(ip.to_canonical());
        }
    }
    if s.eq_ignore_ascii_case("unknown") {
        return Hop::Unknown;
    }
    Hop::Invalid
}

/// Parses one `Forwarded` line (RFC 7239 §4) into its hops' `for` nodes.
/// `None` when the line is malformed.
fn parse_forwarded(line: &str) -> Option<Vec<Hop>> {
    let mut hops = Vec::new();
    let b = line.as_bytes();
    let mut i = 0;
    let mut for_node: Option<Hop> = None;
    let mut seen: Vec<String> = Vec::new();
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        // A pair, or nothing (`forwarded-element` allows empty pairs).
        if i < b.len() && b[i] != b';' && b[i] != b',' {
            let start = i;
            while i < b.len() && is_tchar(b[i]) {
                i += 1;
            }
            let name = line[start..i].to_ascii_lowercase();
            if name.is_empty() || i >= b.len() || b[i] != b'=' {
                return None;
            }
            i += 1;
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let c = *b.get(i + 1)?;
                            v.push(c as char);
                            i += 2;
                        }
                        Some(&c) => {
                            v.push(c as char);
                            i += 1;
                        }
                    }
                }
                v
            } else {
                let start = i;
                while i < b.len() && is_tchar(b[i]) {
                    i += 1;
                }
                if start == i {
                    return None;
                }
                line[start..i].to_owned()
            };
            // "Each parameter MUST NOT occur more than once" (§4).
            if seen.contains(&name) {
                return None;
            }
            if name == "for" {
                for_node = Some(parse_node(&value));
            }
            seen.push(name);
            skip_ws(&mut i);
        }
        match b.get(i) {
            Some(b';') => i += 1,
            Some(b',') | None => {
                hops.push(for_node.take().unwrap_or(Hop::Unknown));
                seen.clear();
                if i >= b.len() {
                    return Some(hops);
                }
                i += 1;
            }
            Some(_) => return None,
        }
    }
}

/// `node = nodename [ ":" node-port ]` (RFC 7239 §6).
fn parse_node(v: &str) -> Hop {
    if let Some(rest) = v.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return Hop::Invalid;
        };
        if !(after.is_empty() || valid_port(after.strip_prefix(':').unwrap_or("!"))) {
            return Hop::Invalid;
        }
        return match ip.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => Hop::Ip(IpAddr::V6(ip).to_canonical()),
            Err(_) => Hop::Invalid,
        };
    }
    let (name, port) = match v.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (v, None),
    };
    if port.is_some_and(|p| !valid_port(p)) {
        return Hop::Invalid;
    }
    if name.eq_ignore_ascii_case("unknown") || name.starts_with('_') {
        return Hop::Unknown;
    }
    match name.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => Hop::Ip(IpAddr::V4(ip)),
        Err(_) => Hop::Invalid,
    }
}

fn valid_port(p: &str) -> bool {
    let digits = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = p.len() > 1
        && p.starts_with('_')
        && p[1..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    digits || obfuscated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder().uri("/");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(()).unwrap();
        req.extensions_mut()
            .insert(ClientAddr(peer.parse().unwrap()));
        req.into_parts().0
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn lan() -> TrustedProxies {
        TrustedProxies::try_new(["10.0.0.0/8", "::1"]).unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_the_headers_say() {
        let p = parts("203.0.113.5:1000", &[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(client_ip(&p, &lan()), ip("203.0.113.5"));
    }

    #[test]
    fn spoofed_leftmost_xff_is_ignored() {
        // The client sent "6.6.6.6"; our proxy 10.0.0.2 appended the real peer.
        let p = parts(
            "10.0.0.2:1000",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.7")],
        );
        assert_eq!(client_ip(&p, &lan()), ip("198.51.100.7"));
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let p = parts(
            "10.0.0.2:1000",
            &[(
                "x-forwarded-for",
                "6.6.6.6, 198.51.100.7, 10.1.1.1, 10.2.2.2",
            )],
        );
        assert_eq!(client_ip(&p, &lan()), ip("198.51.100.7"));
    }

    #[test]
    fn several_xff_lines_form_one_list() {
        let p = parts(
            "10.0.0.2:1000",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "198.51.100.7, 10.9.9.9"),
            ],
        );
        assert_eq!(client_ip(&p, &lan()), ip("198.51.100.7"));
    }

    #[test]
    fn garbage_hop_means_no_key() {
        let p = parts(
            "10.0.0.2:1000",
            &[("x-forwarded-for", "1.2.3.4, not-an-ip")],
        );
        assert_eq!(client_ip(&p, &lan()), None);
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost() {
        let p = parts(
            "10.0.0.2:1000",
            &[("x-forwarded-for", "10.3.3.3, 10.4.4.4")],
        );
        assert_eq!(client_ip(&p, &lan()), ip("10.3.3.3"));
        let p = parts("10.0.0.2:1000", &[]);
        assert_eq!(client_ip(&p, &lan()), ip("10.0.0.2"));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_normalised() {
        let p = parts("[::ffff:203.0.113.5]:1000", &[]);
        assert_eq!(client_ip(&p, &lan()), ip("203.0.113.5"));
        // and a mapped trusted peer is trusted
        let p = parts(
            "[::ffff:10.0.0.2]:1000",
            &[("x-forwarded-for", "::ffff:198.51.100.7")],
        );
        assert_eq!(client_ip(&p, &lan()), ip("198.51.100.7"));
    }

    fn fwd() -> TrustedProxies {
        lan().header(ForwardedHeader::Forwarded)
    }

    #[test]
    fn forwarded_with_quotes_and_ports() {
        let p = parts(
            "10.0.0.2:1000",
            &[(
                "forwarded",
                r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https"#,
            )],
        );
        assert_eq!(client_ip(&p, &fwd()), ip("2001:db8:cafe::17"));
        let p = parts(
            "10.0.0.2:1000",
            &[("forwarded", r#"For="192.0.2.43:47011""#)],
        );
        assert_eq!(client_ip(&p, &fwd()), ip("192.0.2.43"));
    }

    #[test]
    fn forwarded_unquoted_port_is_malformed() {
        // `:` is not a token character (RFC 7239 §6).
        let p = parts("10.0.0.2:1000", &[("forwarded", "for=192.0.2.43:47011")]);
        assert_eq!(client_ip(&p, &fwd()), None);
    }

    #[test]
    fn forwarded_unknown_and_obfuscated_are_not_addresses() {
        let p = parts("10.0.0.2:1000", &[("forwarded", "for=unknown")]);
        assert_eq!(client_ip(&p, &fwd()), None);
        let p = parts(
            "10.0.0.2:1000",
            &[("forwarded", "for=_hidden, for=10.1.1.1")],
        );
        assert_eq!(client_ip(&p, &fwd()), None);
    }

    #[test]
    fn forwarded_several_lines_and_trusted_hops() {
        let p = parts(
            "10.0.0.2:1000",
            &[
                ("forwarded", "for=6.6.6.6"),
                ("forwarded", r#"for=198.51.100.7;by="[::1]", for=10.7.7.7"#),
            ],
        );
        assert_eq!(client_ip(&p, &fwd()), ip("198.51.100.7"));
    }

    #[test]
    fn forwarded_duplicate_parameter_is_malformed() {
        let p = parts("10.0.0.2:1000", &[("forwarded", "for=1.2.3.4;for=5.6.7.8")]);
        assert_eq!(client_ip(&p, &fwd()), None);
    }

    #[test]
    fn forwarded_is_ignored_when_proxies_write_xff() {
        let p = parts(
            "10.0.0.2:1000",
            &[
                ("forwarded", "for=6.6.6.6"),
                ("x-forwarded-for", "198.51.100.7"),
            ],
        );
        assert_eq!(client_ip(&p, &lan()), ip("198.51.100.7"));
    }

    #[test]
    fn cidr_parsing_rejects_garbage() {
        assert!(TrustedProxies::try_new(["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::try_new(["10.0.0.0/"]).is_err());
        assert!(TrustedProxies::try_new(["nope"]).is_err());
        let t = TrustedProxies::try_new(["192.168.0.0/16", "2001:db8::/32"]).unwrap();
        assert!(t.contains(ip("192.168.44.1").unwrap()));
        assert!(!t.contains(ip("192.169.0.1").unwrap()));
        assert!(t.contains(ip("2001:db8:1::5").unwrap()));
        let all = TrustedProxies::try_new(["0.0.0.0/0"]).unwrap();
        assert!(all.contains(ip("8.8.8.8").unwrap()));
    }

    #[test]
    fn header_and_cookie_keys() {
        let p = parts(
            "1.2.3.4:5",
            &[("cookie", "a=1; sid=abc ; b=2"), ("x-user", "u1")],
        );
        assert_eq!(Key::cookie("sid").extract(&p), Some(hash_key(b"abc")));
        assert_eq!(Key::cookie("nope").extract(&p), None);
        assert_eq!(
            Key::header(HeaderName::from_static("x-user")).extract(&p),
            Some(hash_key(b"u1"))
        );
        let p = parts("1.2.3.4:5", &[("x-user", "")]);
        assert_eq!(
            Key::header(HeaderName::from_static("x-user")).extract(&p),
            None
        );
    }

    proptest::proptest! {
        #[test]
        fn forwarded_headers_never_panic(line in "[ -~]{0,80}", peer in 0u8..=255) {
            let peer = format!("10.0.0.{peer}:1");
            for name in ["forwarded", "x-forwarded-for"] {
                let p = parts(&peer, &[(name, &line)]);
                let _ = client_ip(&p, &fwd());
                let _ = client_ip(&p, &lan());
            }
        }

        #[test]
        fn forwarded_lines_of_arbitrary_bytes_never_panic(
            lines in proptest::collection::vec(
                (0usize..2, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..60)),
                0..4,
            ),
            shaped in "((for|For|by|proto|host)=(\"?\\[?[0-9a-f:.]{0,20}\\]?(:[0-9_a-z]{0,6})?\"?|unknown|_[a-z]{0,3})[;, ]{0,2}){0,4}",
            peer in proptest::prop_oneof!["10\\.0\\.0\\.[1-9]:1", "\\[::1\\]:1", "203\\.0\\.113\\.9:1"],
        ) {
            let mut req = http::Request::builder().uri("/").body(()).unwrap();
            for (which, bytes) in lines {
                if let Ok(v) = http::HeaderValue::from_bytes(&bytes) {
                    let name = ["forwarded", "x-forwarded-for"][which];
                    req.headers_mut().append(name, v);
                }
            }
            for name in ["forwarded", "x-forwarded-for"] {
                req.headers_mut().append(name, http::HeaderValue::from_str(&shaped).unwrap());
            }
            req.extensions_mut().insert(ClientAddr(peer.parse().unwrap()));
            let p = req.into_parts().0;
            let _ = client_ip(&p, &fwd());
            let _ = client_ip(&p, &lan());
            // Headers from an untrusted peer are never read.
            let peer: SocketAddr = peer.parse().unwrap();
            proptest::prop_assert_eq!(client_ip(&p, &TrustedProxies::none()), Some(peer.ip().to_canonical()));
        }

        #[test]
        fn a_trusted_chain_never_yields_a_trusted_hop_unless_all_are(
            hops in proptest::collection::vec((0u8..4, 0u8..=255), 1..6),
        ) {
            // Hops in 10/8 are trusted, others not.
            let ips: Vec<String> = hops
                .iter()
                .map(|(net, host)| if *net == 0 { format!("203.0.113.{host}") } else { format!("10.{net}.0.{host}") })
                .collect();
            let p = parts("10.0.0.2:1", &[("x-forwarded-for", &ips.join(", "))]);
            let got = client_ip(&p, &lan()).unwrap();
            let rightmost_untrusted = ips.iter().rev().find(|ip| ip.starts_with("203."));
            match rightmost_untrusted {
                Some(ip) => proptest::prop_assert_eq!(got.to_string(), ip.clone()),
                None => proptest::prop_assert_eq!(got.to_string(), ips[0].clone()),
            }
        }
    }

    #[test]
    fn no_peer_means_no_ip_key() {
        let p = http::Request::new(()).into_parts().0;
        assert_eq!(Key::client_ip(TrustedProxies::none()).extract(&p), None);
    }
}
