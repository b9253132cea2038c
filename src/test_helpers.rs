//! Helpers shared by unit tests.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// A header map from `(name, value)` pairs, appended in order.
pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}
