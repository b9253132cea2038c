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
    fn far_future_saturates_instead_of_overflowing() {
        assert_eq!(http_date_in(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }
}
