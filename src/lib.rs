//! tower-ssr (lib docs placeholder)
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "cache-control")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache-control")))]
pub mod cache_control;
