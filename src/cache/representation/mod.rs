//! Representations: the content codings the cache makes of what it stores,
//! the choice among them for each request, their validators, and byte
//! ranges.
//!
//! The cache owns content coding, as Varnish does with gzip: it asks the
//! renderer for identity, makes gzip, br and zstd once when it stores a
//! compressible response ([`compressible`]), off the request path on a
//! bounded pool of its own threads ([`pool`]), at high quality ([`compress`]), and
//! answers each client with the best coding it accepts ([`accept`], RFC
//! 9110 §12.5.3). Each coding is its own representation with its own strong
//! validator ([`validator`], §8.8.3). Ranges (§14) are served from the
//! identity body ([`range`]).
//!
//! Layout, in reading order: `coding` (names), `accept` (negotiation),
//! `compressible` (what is compressed), `config` ([`Compression`]),
//! `compress` (encoders, bounded decoders), `pool` (the job pool),
//! `validator` (per-coding `ETag`), `range` (`Range`, `If-Range`).

pub(crate) mod accept;
pub(crate) mod coding;
pub(crate) mod range;
pub(crate) mod stored;
pub(crate) mod validator;

#[cfg(feature = "compression")]
pub(crate) mod compress;
#[cfg(feature = "compression")]
pub(crate) mod compressible;
#[cfg(feature = "compression")]
pub(crate) mod config;
#[cfg(feature = "compression")]
pub(crate) mod job;
#[cfg(feature = "compression")]
pub(crate) mod pool;

pub use coding::Coding;
#[cfg(feature = "compression")]
pub use config::Compression;
