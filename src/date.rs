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
}
