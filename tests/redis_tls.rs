//! `rediss://` needs the `redis-tls` feature, and says so without it.
#![cfg(feature = "redis")]

use tower_ssr::cache::RedisTier;

#[cfg(feature = "redis-tls")]
#[test]
fn rediss_url_is_accepted_with_redis_tls() {
    // Only the URL is checked: nothing listens there.
    assert!(RedisTier::new("rediss://127.0.0.1:29999").is_ok());
}

#[cfg(not(feature = "redis-tls"))]
#[test]
fn rediss_url_is_refused_without_redis_tls() {
    assert!(RedisTier::new("rediss://127.0.0.1:29999").is_err());
}
