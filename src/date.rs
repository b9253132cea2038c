//! HTTP-date helpers (RFC 9110 §5.6.7).

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

thread_local! {
    /// The last value formatted on this thread: (unix seconds, value). A
    /// response rate of thousands a second shares one formatted string per
    /// second instead of formatting each time.
    static LAST: RefCell<(u64, HeaderValue)> =
        const { RefCell::new((0, HeaderValue::from_static(""))) };
}

/// `now + secs` as an IMF-fixdate (`GMT`, never `+0000`), whole seconds.
pub(crate) fn http_date_in(secs: u64) -> HeaderValue {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // Saturate far-future values at the largest date httpdate can format
    // (year 9999) rather than overflow.
    let at = now.saturating_add(secs).min(253_402_300_799);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != at || last.1.is_empty() {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(at));
            last.1 = HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
            last.0 = at;
        }
        last.1.clone()
    })
}

/// The current time as an IMF-fixdate, formatted at most once a second per
/// thread.
#[cfg_attr(not(feature = "cache"), allow(dead_code))]
pub(crate) fn http_date_now() -> HeaderValue {
    http_date_in(0)
}

/// A monotonic clock reading for ages and residence times (RFC 9111
/// §4.2.3). With the `tokio` feature it is tokio's clock, so tests can pause
/// and advance it; it is the std clock otherwise.
#[cfg(feature = "cache")]
pub(crate) fn monotonic_now() -> std::time::Instant {
    #[cfg(feature = "tokio")]
    {
        tokio::time::Instant::now().into_std()
    }
    #[cfg(not(feature = "tokio"))]
    {
        std::time::Instant::now()
    }
}

/// Parses an HTTP-date in any of the three forms of RFC 9110 §5.6.7
/// (IMF-fixdate, RFC 850, asctime), trimming surrounding whitespace.
#[cfg_attr(not(feature = "cache"), allow(dead_code))]
pub(crate) fn parse(value: &HeaderValue) -> Option<SystemTime> {
    parse_str(value.to_str().ok()?)
}

/// [`parse`] for text. Day and month names and `GMT` are matched
/// case-insensitively (RFC 9111 §4.2: a cache SHOULD), and any zone other
/// than `GMT` is invalid.
pub(crate) fn parse_str(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if let Ok(t) = httpdate::parse_http_date(text) {
        return Some(t);
    }
    // Slow path, only for odd input: rewrite each word in the canonical
    // case (`Sun`, `Nov`, `GMT`) and try once more.
    if text.len() > 40 || !text.is_ascii() {
        return None;
    }
    let mut canonical = String::with_capacity(text.len());
    let mut word_start = true;
    for c in text.chars() {
        if c.is_ascii_alphabetic() {
            canonical.push(if word_start {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            word_start = false;
        } else {
            canonical.push(c);
            word_start = true;
        }
    }
    let canonical = canonical.replace("Gmt", "GMT");
    httpdate::parse_http_date(&canonical).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_imf_fixdate_in_gmt() {
        let v = http_date_in(0);
        let s = v.to_str().unwrap();
        assert_eq!(s.len(), 29);
        assert!(s.ends_with(" GMT"));
    }

    #[test]
    fn parses_dates_case_insensitively() {
        let want = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        for form in [
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUNDAY, 06-NOV-94 08:49:37 GMT",
            "sun nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_str(form), Some(want), "{form}");
        }
        assert_eq!(parse_str("Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(parse_str("Sun, 06 Nov 1994 08:49:37 +0000"), None);
    }

    #[test]
    fn parses_all_three_date_forms() {
        let want = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse(&HeaderValue::from_static(form)), Some(want), "{form}");
        }
        assert_eq!(parse(&HeaderValue::from_static("0")), None);
        assert_eq!(parse(&HeaderValue::from_static("-1")), None);
    }

    #[test]
    fn far_future_saturates_instead_of_overflowing() {
        assert_eq!(http_date_in(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    // ---- properties ----

    use proptest::prelude::*;

    /// The largest time httpdate formats: `Fri, 31 Dec 9999 23:59:59 GMT`.
    const LAST: u64 = 253_402_300_799;

    /// `t` in the three forms of RFC 9110 §5.6.7; the RFC 850 form only for
    /// years whose two digits name one year unambiguously here (1970–2069).
    fn three_forms(t: u64) -> (String, String, Option<String>) {
        let imf = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(t));
        // "Sun, 06 Nov 1994 08:49:37 GMT"
        let (wday, day, mon, year, time) = (
            &imf[0..3],
            &imf[5..7],
            &imf[8..11],
            &imf[12..16],
            &imf[17..25],
        );
        let day_padded = format!("{:>2}", day.trim_start_matches('0'));
        let asctime = format!("{wday} {mon} {day_padded} {time} {year}");
        let long = match wday {
            "Mon" => "Monday",
            "Tue" => "Tuesday",
            "Wed" => "Wednesday",
            "Thu" => "Thursday",
            "Fri" => "Friday",
            "Sat" => "Saturday",
            _ => "Sunday",
        };
        let y: u32 = year.parse().unwrap();
        let rfc850 = (1970..2070)
            .contains(&y)
            .then(|| format!("{long}, {day}-{mon}-{} {time} GMT", &year[2..]));
        (imf, asctime, rfc850)
    }

    fn recase(s: &str, flips: &[bool]) -> String {
        s.chars()
            .zip(flips.iter().cycle())
            .map(|(c, f)| {
                if *f {
                    c.to_ascii_lowercase()
                } else {
                    c.to_ascii_uppercase()
                }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(s in "\\PC{0,48}") {
            let _ = parse_str(&s);
            if let Ok(v) = HeaderValue::from_str(&s) {
                prop_assert_eq!(parse(&v), parse_str(&s));
            }
        }

        #[test]
        fn parse_never_panics_on_date_like_text(s in "[A-Za-z0-9 ,:-]{0,40}") {
            let _ = parse_str(&s);
        }

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let _ = parse(&v);
            }
        }

        #[test]
        fn all_three_forms_in_any_case_parse_to_the_same_time(
            t in 0..=LAST,
            flips in proptest::collection::vec(any::<bool>(), 1..8),
            pad in "[ \t]{0,2}",
        ) {
            let want = Some(UNIX_EPOCH + Duration::from_secs(t));
            let (imf, asctime, rfc850) = three_forms(t);
            for form in [Some(imf), Some(asctime), rfc850].into_iter().flatten() {
                prop_assert_eq!(parse_str(&form), want, "{}", form);
                let odd = format!("{pad}{}{pad}", recase(&form, &flips));
                prop_assert_eq!(parse_str(&odd), want, "{}", odd);
            }
        }

        #[test]
        fn any_zone_but_gmt_is_invalid(t in 0..=LAST, zone in "[A-Za-z+0-9]{1,5}") {
            prop_assume!(!zone.eq_ignore_ascii_case("gmt"));
            let (imf, _, _) = three_forms(t);
            let other = format!("{}{zone}", &imf[..imf.len() - 3]);
            prop_assert_eq!(parse_str(&other), None, "{}", other);
        }

        #[test]
        fn a_two_digit_year_is_never_read_as_more_than_fifty_years_ahead(t in 0..=LAST) {
            // RFC 9110 §5.6.7: whatever century is chosen, never one that
            // puts the date over 50 years in the future.
            let (imf, _, _) = three_forms(t);
            let year = &imf[12..16];
            let day = &imf[5..7];
            let mon = &imf[8..11];
            let text = format!("Sunday, {day}-{mon}-{} {} GMT", &year[2..], &imf[17..25]);
            if let Some(got) = parse_str(&text) {
                let limit = SystemTime::now() + Duration::from_secs(51 * 366 * 86_400);
                prop_assert!(got < limit, "{} read as {:?}", text, got);
            }
        }

        #[test]
        fn formatted_dates_are_imf_fixdate_and_parse_back(secs in any::<u64>()) {
            let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            let v = http_date_in(secs);
            let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            let s = v.to_str().unwrap();
            prop_assert_eq!(s.len(), 29);
            prop_assert!(s.ends_with(" GMT"));
            let got = parse(&v).unwrap().duration_since(UNIX_EPOCH).unwrap().as_secs();
            prop_assert!(got >= before.saturating_add(secs).min(LAST));
            prop_assert!(got <= after.saturating_add(secs).min(LAST));
        }
    }
}
