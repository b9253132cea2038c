//! The cache's `Service`: how one request is answered, split by path.
//!
//! - `call`: checks, keys and looks the request up; answers hits at once.
//! - `answer`: responses made from stored entries (hits, 304s, ranges).
//! - `passthrough`: what is forwarded as it is (other methods, bypasses).
//! - `miss`: coalescing, then one request leads to the inner service.
//! - `fetch`: the inner call, the answer decided on, stored as it streams.
//! - `merge`: 304s merged into stored responses (RFC 9111 §4.3.4).
//! - `refresh`: background refreshes and renders that outlive their client.

mod answer;
mod call;
mod fetch;
mod merge;
mod miss;
mod passthrough;
mod refresh;

#[cfg(test)]
pub(crate) use call::has_content;
pub use call::Cache;
