//! `Accept-Encoding` (RFC 9110 §12.5.3): parsing and the choice of a
//! stored representation.
//!
//! Parsing allocates nothing and keeps only what can change a choice: the
//! weight of each coding the cache knows, and of `*`. Unknown codings are
//! skipped, since the cache never has a representation in them.

use http::header::ACCEPT_ENCODING;
use http::HeaderMap;

use super::coding::Coding;

/// A weight (RFC 9110 §12.4.2) in thousandths: 0 to 1000.
pub(crate) type Quality = u16;

/// Members read from one request's `Accept-Encoding`; more are ignored, so
/// a hostile field costs bounded work.
const MAX_MEMBERS: usize = 64;

/// Lines longer than this are parsed every time (no browser sends one).
const MEMO_LINE: usize = 128;
/// Lines remembered per thread, replaced in turn.
const MEMO_LINES: usize = 8;

/// The last lines parsed on this thread, and what they said.
#[derive(Default)]
struct Memo {
    lines: Vec<(Vec<u8>, AcceptEncoding)>,
    next: usize,
}

thread_local! {
    static MEMO: std::cell::RefCell<Memo> = std::cell::RefCell::new(Memo::default());
}

/// A request's `Accept-Encoding`, as far as the cache's codings go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AcceptEncoding {
    /// Whether the request had the field at all.
    present: bool,
    /// The weight given to each coding by name (`Coding::index`), the first
    /// member naming it winning.
    listed: [Option<Quality>; 5],
    /// The weight of `*`, if listed.
    star: Option<Quality>,
}

/// The outcome of negotiation (RFC 9110 §12.5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Negotiation {
    /// Send this representation.
    Use(Coding),
    /// Nothing available is acceptable and identity was refused
    /// explicitly (`identity;q=0`, or `*;q=0` without an `identity`
    /// member): the one case where a `406 Not Acceptable` is right.
    NotAcceptable,
}

impl AcceptEncoding {
    /// Reads every `Accept-Encoding` line of `headers`.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let mut lines = headers.get_all(ACCEPT_ENCODING).iter();
        match (lines.next(), lines.next()) {
            (None, _) => AcceptEncoding::default(),
            (Some(one), None) => Self::parse_line(one.as_bytes()),
            (Some(_), Some(_)) => Self::parse_lines(
                headers
                    .get_all(ACCEPT_ENCODING)
                    .iter()
                    .map(|v| v.as_bytes()),
            ),
        }
    }

    /// One line, through a per-thread memo of the last few lines parsed:
    /// browsers send a handful of spellings, byte for byte the same on
    /// every request, and parsing one costs more than the rest of a hit's
    /// negotiation (about 1,100 instructions for Chrome's under callgrind;
    /// a memo hit is a compare of at most [`MEMO_LINE`] bytes).
    fn parse_line(line: &[u8]) -> Self {
        if line.len() > MEMO_LINE {
            return Self::parse_lines(std::iter::once(line));
        }
        MEMO.with(|memo| {
            let mut memo = memo.borrow_mut();
            if let Some((_, parsed)) = memo.lines.iter().find(|(l, _)| l == line) {
                return *parsed;
            }
            let parsed = Self::parse_lines(std::iter::once(line));
            let slot = memo.next % MEMO_LINES;
            memo.next = memo.next.wrapping_add(1);
            if let Some(old) = memo.lines.get_mut(slot) {
                old.0.clear();
                old.0.extend_from_slice(line);
                old.1 = parsed;
            } else {
                memo.lines.push((line.to_vec(), parsed));
            }
            parsed
        })
    }

    /// Parses the lines of a present field. Malformed members (a bad
    /// token, a weight outside 0–1 or with more than three decimals, an
    /// unknown parameter) are ignored one by one, never the whole field.
    pub(crate) fn parse_lines<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut out = AcceptEncoding {
            present: true,
            ..AcceptEncoding::default()
        };
        let mut seen = 0;
        for line in lines {
            for member in line.split(|b| *b == b',') {
                let member = member.trim_ascii();
                if member.is_empty() {
                    // RFC 9110 §5.6.1: empty list elements are ignored.
                    continue;
                }
                seen += 1;
                if seen > MAX_MEMBERS {
                    return out;
                }
                let Some((name, q)) = parse_member(member) else {
                    continue;
                };
                let slot = if name == b"*" {
                    &mut out.star
                } else {
                    match Coding::from_token(name) {
                        Some(c) => &mut out.listed[c.index()],
                        None => continue,
                    }
                };
                // The first occurrence wins, as everywhere in the crate.
                if slot.is_none() {
                    *slot = Some(q);
                }
            }
        }
        out
    }

    /// Whether the request carried the field.
    #[cfg(test)]
    pub(crate) fn is_present(&self) -> bool {
        self.present
    }

    /// The weight of `coding` for this request, `None` when it is
    /// acceptable only by default (identity not mentioned, RFC 9110
    /// §12.5.3) and `Some(0)` when it is not acceptable.
    pub(crate) fn quality(&self, coding: Coding) -> Option<Quality> {
        if !self.present {
            // No field: any coding is acceptable.
            return None;
        }
        if let Some(q) = self.listed[coding.index()] {
            return Some(q);
        }
        if let Some(q) = self.star {
            // `*` matches any coding not listed, identity included.
            return Some(q);
        }
        if coding == Coding::Identity {
            None
        } else {
            Some(0)
        }
    }

    /// Whether identity was refused explicitly (`identity;q=0`, or `*;q=0`
    /// without an `identity` member).
    #[cfg(test)]
    pub(crate) fn refuses_identity(&self) -> bool {
        self.quality(Coding::Identity) == Some(0)
    }

    /// Chooses among the `available` representations.
    ///
    /// The highest weight wins; ties go to the earlier coding in
    /// `preference` (codings missing from it rank after those in it, and
    /// identity, unless named, last). Identity acceptable only by default
    /// ranks below every coding with a non-zero weight.
    ///
    /// Without the field, RFC 9110 allows any coding, but the cache sends
    /// identity when it has it: clients that send no `Accept-Encoding`
    /// (scripts, `curl` without `--compressed`, some bots) rarely decode.
    ///
    /// When nothing available is acceptable, RFC 9110 §12.5.3 says to send
    /// identity unless identity is refused; refused, it is
    /// [`Negotiation::NotAcceptable`] (`406`, §15.5.7). Should identity
    /// itself not be available, that is `NotAcceptable` too: the cache
    /// never sends a coding the client did not accept.
    pub(crate) fn negotiate(&self, available: &[Coding], preference: &[Coding]) -> Negotiation {
        if !self.present {
            if available.contains(&Coding::Identity) {
                return Negotiation::Use(Coding::Identity);
            }
            return match first_by_preference(available, preference) {
                Some(c) => Negotiation::Use(c),
                None => Negotiation::NotAcceptable,
            };
        }
        // (explicit weight, weight, minus server rank): larger is better.
        let mut best: Option<(bool, Quality, usize, Coding)> = None;
        for coding in available.iter().copied() {
            let (explicit, q) = match self.quality(coding) {
                Some(0) => continue,
                Some(q) => (true, q),
                None => (false, 1000),
            };
            let rank = server_rank(coding, preference);
            let better = match best {
                None => true,
                Some((e, bq, br, _)) => (explicit, q, usize::MAX - rank) > (e, bq, usize::MAX - br),
            };
            if better {
                best = Some((explicit, q, rank, coding));
            }
        }
        match best {
            Some((.., c)) => Negotiation::Use(c),
            None => Negotiation::NotAcceptable,
        }
    }
}

/// The position of `coding` in the server's order: its index in
/// `preference`, else after all of them, identity last of all.
fn server_rank(coding: Coding, preference: &[Coding]) -> usize {
    match preference.iter().position(|c| *c == coding) {
        Some(i) => i,
        None if coding == Coding::Identity => usize::MAX - 1,
        None => preference.len() + coding.index(),
    }
}

/// The available coding the server ranks first.
fn first_by_preference(available: &[Coding], preference: &[Coding]) -> Option<Coding> {
    available
        .iter()
        .copied()
        .min_by_key(|c| server_rank(*c, preference))
}

/// One member: `coding [ OWS ";" OWS "q=" qvalue ]`, the coding a token
/// or `*`. `None` when malformed.
fn parse_member(member: &[u8]) -> Option<(&[u8], Quality)> {
    let mut parts = member.split(|b| *b == b';');
    let name = parts.next()?.trim_ascii();
    if name != b"*" && (name.is_empty() || !name.iter().all(|b| is_tchar(*b))) {
        return None;
    }
    let mut q = None;
    for param in parts {
        let param = param.trim_ascii();
        let (key, value) = match param.iter().position(|b| *b == b'=') {
            Some(i) => (&param[..i], &param[i + 1..]),
            None => return None,
        };
        // Only a weight is defined (§12.5.3), once; "q" is case-insensitive.
        if !key.eq_ignore_ascii_case(b"q") || q.is_some() {
            return None;
        }
        q = Some(parse_qvalue(value)?);
    }
    Some((name, q.unwrap_or(1000)))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in
/// thousandths (RFC 9110 §12.4.2).
pub(crate) fn parse_qvalue(value: &[u8]) -> Option<Quality> {
    let (int, frac) = match value.iter().position(|b| *b == b'.') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (value, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: Quality = 0;
    for (i, d) in frac.iter().enumerate() {
        thousandths += Quality::from(d - b'0') * [100, 10, 1][i];
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Coding::{Br, Deflate, Gzip, Identity, Zstd};

    const PREF: &[Coding] = &[Br, Zstd, Gzip, Deflate];
    const ALL: &[Coding] = &[Identity, Gzip, Deflate, Br, Zstd];

    fn ae(value: &str) -> AcceptEncoding {
        AcceptEncoding::parse_lines(std::iter::once(value.as_bytes()))
    }

    #[test]
    fn the_per_thread_memo_answers_as_the_parser_does() {
        let mut values: Vec<String> = [
            "gzip, deflate, br, zstd",
            "gzip, deflate, br",
            "identity;q=0",
            "br;q=0.5, *;q=0",
            "",
        ]
        .iter()
        .map(|v| v.to_string())
        .collect();
        // More spellings than the memo holds, so lines are replaced, and
        // one longer than it remembers.
        values.extend((0..2 * MEMO_LINES).map(|i| format!("gzip;q=0.{i}, br")));
        values.push(format!("{}br", "x, ".repeat(MEMO_LINE)));
        for round in 0..3 {
            for v in &values {
                let mut h = HeaderMap::new();
                h.insert(ACCEPT_ENCODING, v.parse().unwrap());
                assert_eq!(
                    AcceptEncoding::from_headers(&h),
                    ae(v),
                    "round {round}: {v:?}"
                );
            }
        }
        // Two lines are one list (RFC 9110 §5.3), never memoised as one.
        let mut h = HeaderMap::new();
        h.append(ACCEPT_ENCODING, "gzip;q=0".parse().unwrap());
        h.append(ACCEPT_ENCODING, "br".parse().unwrap());
        let both = AcceptEncoding::parse_lines([&b"gzip;q=0"[..], b"br"].into_iter());
        assert_eq!(AcceptEncoding::from_headers(&h), both);
    }

    fn pick(value: Option<&str>, available: &[Coding]) -> Negotiation {
        let accept = match value {
            None => AcceptEncoding::default(),
            Some(v) => ae(v),
        };
        accept.negotiate(available, PREF)
    }

    #[test]
    fn qvalues_parse_to_thousandths_and_reject_out_of_grammar() {
        for (text, want) in [
            ("0", Some(0)),
            ("0.", Some(0)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.123", Some(123)),
            ("0.999", Some(999)),
            ("1", Some(1000)),
            ("1.", Some(1000)),
            ("1.000", Some(1000)),
            ("1.001", None),
            ("1.5", None),
            ("0.1234", None),
            (".5", None),
            ("2", None),
            ("", None),
            ("-0", None),
            ("0.5a", None),
            ("00.5", None),
            ("0,5", None),
        ] {
            assert_eq!(parse_qvalue(text.as_bytes()), want, "{text:?}");
        }
    }

    /// RFC 9110 §12.5.3 and the choices documented on `negotiate`.
    #[test]
    fn negotiation_table() {
        use Negotiation::{NotAcceptable as No, Use};
        let cases: &[(Option<&str>, &[Coding], Negotiation)] = &[
            // Absent: anything goes, identity preferred.
            (None, ALL, Use(Identity)),
            (None, &[Gzip, Br], Use(Br)),
            // Empty: identity only.
            (Some(""), ALL, Use(Identity)),
            (Some(""), &[Gzip], No),
            // Browsers.
            (Some("gzip, deflate, br, zstd"), ALL, Use(Br)),
            (Some("gzip, deflate, br"), ALL, Use(Br)),
            (Some("gzip, deflate"), ALL, Use(Gzip)),
            (Some("gzip"), ALL, Use(Gzip)),
            // Not yet compressed: what exists.
            (Some("gzip, br"), &[Identity], Use(Identity)),
            (Some("gzip, br"), &[Identity, Gzip], Use(Gzip)),
            // Highest weight wins over the server's order.
            (Some("br;q=0.5, gzip"), ALL, Use(Gzip)),
            (Some("br;q=0.8, gzip;q=0.9, zstd;q=0.9"), ALL, Use(Zstd)),
            (Some("br;q=0.801, zstd;q=0.8"), ALL, Use(Br)),
            // Case and whitespace.
            (Some("  GZIP ; Q=0.5 ,BR;q=0.4"), ALL, Use(Gzip)),
            (Some("gzip\t;\tq=1"), ALL, Use(Gzip)),
            (Some("x-gzip"), ALL, Use(Gzip)),
            // q=0 refuses.
            (Some("br;q=0, gzip"), ALL, Use(Gzip)),
            (Some("br;q=0"), ALL, Use(Identity)),
            (
                Some("gzip;q=0, br;q=0, zstd;q=0, deflate;q=0"),
                ALL,
                Use(Identity),
            ),
            // `*` matches what is not listed.
            (Some("*"), ALL, Use(Br)),
            (Some("*;q=0.5, gzip"), ALL, Use(Gzip)),
            (Some("*, br;q=0"), ALL, Use(Zstd)),
            (Some("*;q=0"), ALL, No),
            (Some("*;q=0, identity"), ALL, Use(Identity)),
            (Some("*;q=0, gzip"), ALL, Use(Gzip)),
            (Some("*;q=0, gzip"), &[Identity], No),
            // Identity refused.
            (Some("identity;q=0"), &[Identity], No),
            (Some("identity;q=0, gzip"), &[Identity], No),
            (Some("identity;q=0, gzip"), &[Identity, Gzip], Use(Gzip)),
            // Identity named competes by weight.
            (Some("identity, gzip;q=0.5"), ALL, Use(Identity)),
            (Some("identity;q=0.5, gzip;q=0.5"), ALL, Use(Gzip)),
            // Implicit identity ranks below any listed coding.
            (Some("gzip;q=0.001"), ALL, Use(Gzip)),
            // Unknown codings change nothing.
            (Some("compress, exi, sdch"), ALL, Use(Identity)),
            (Some("compress;q=0, *;q=0"), ALL, No),
            // Malformed members are ignored one by one.
            (Some("br;q=2, gzip"), ALL, Use(Gzip)),
            (Some("br;q=0.5;q=0.6, gzip;q=0.1"), ALL, Use(Gzip)),
            (Some("br;level=5, gzip;q=0.1"), ALL, Use(Gzip)),
            (Some("br;q, gzip;q=0.1"), ALL, Use(Gzip)),
            (Some("b r, gzip;q=0.1"), ALL, Use(Gzip)),
            (Some("identity;q=x"), &[Identity], Use(Identity)),
            (Some(",,, ,br,"), ALL, Use(Br)),
            // First occurrence wins.
            (Some("gzip;q=0, gzip"), &[Identity, Gzip], Use(Identity)),
            (Some("gzip, gzip;q=0"), &[Identity, Gzip], Use(Gzip)),
        ];
        for (value, available, want) in cases {
            assert_eq!(
                pick(*value, available),
                *want,
                "{value:?} over {available:?}"
            );
        }
    }

    #[test]
    fn several_lines_are_one_list() {
        let mut h = HeaderMap::new();
        h.append(ACCEPT_ENCODING, "gzip;q=0.5".parse().unwrap());
        h.append(ACCEPT_ENCODING, "zstd".parse().unwrap());
        let accept = AcceptEncoding::from_headers(&h);
        assert!(accept.is_present());
        assert_eq!(accept.negotiate(ALL, PREF), Negotiation::Use(Zstd));
    }

    #[test]
    fn absent_is_not_empty() {
        let absent = AcceptEncoding::from_headers(&HeaderMap::new());
        assert!(!absent.is_present());
        assert_eq!(absent.quality(Br), None);
        let empty = ae("");
        assert!(empty.is_present());
        assert_eq!(empty.quality(Br), Some(0));
        assert_eq!(empty.quality(Identity), None);
        assert!(!empty.refuses_identity());
        assert!(ae("*;q=0").refuses_identity());
        assert!(!ae("*;q=0, identity;q=0.1").refuses_identity());
    }

    #[test]
    fn server_preference_breaks_ties_and_is_configurable() {
        let chrome = ae("gzip, deflate, br, zstd");
        assert_eq!(
            chrome.negotiate(ALL, &[Zstd, Br, Gzip]),
            Negotiation::Use(Zstd)
        );
        assert_eq!(chrome.negotiate(ALL, &[Gzip]), Negotiation::Use(Gzip));
        // Codings missing from the preference still beat identity.
        assert_eq!(
            chrome.negotiate(&[Identity, Deflate], &[]),
            Negotiation::Use(Deflate)
        );
    }

    #[test]
    fn members_past_the_cap_are_ignored() {
        let mut value = "compress, ".repeat(MAX_MEMBERS);
        value.push_str("br");
        assert_eq!(pick(Some(&value), ALL), Negotiation::Use(Identity));
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let accept = AcceptEncoding::parse_lines(std::iter::once(&bytes[..]));
            let _ = accept.negotiate(ALL, PREF);
        }

        #[test]
        fn negotiation_only_picks_what_is_available_and_acceptable(
            value in "([a-zA-Z*-]{0,8}(;[qQ]=[01](\\.[0-9]{0,4})?)?[ ,]{0,3}){0,8}",
            mask in 0u8..32,
        ) {
            let available: Vec<Coding> = Coding::ALL.into_iter().filter(|c| mask & (1 << c.index()) != 0).collect();
            let accept = ae(&value);
            match accept.negotiate(&available, PREF) {
                Negotiation::Use(c) => {
                    proptest::prop_assert!(available.contains(&c));
                    proptest::prop_assert_ne!(accept.quality(c), Some(0));
                }
                Negotiation::NotAcceptable => {
                    for c in &available {
                        proptest::prop_assert_eq!(accept.quality(*c), Some(0));
                    }
                }
            }
        }
    }
}
