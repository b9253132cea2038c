//! `Compression`: what the cache compresses, how hard, and how much work
//! runs at once.

use super::coding::Coding;

/// Bodies shorter than this are stored as they are by default: below about
/// one TCP packet a coding saves no round trip and costs a decode.
pub(crate) const DEFAULT_MIN_SIZE: usize = 1024;

/// Content types compressed by default; see [`Compression::content_types`].
pub(crate) const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/json",
    "application/xml",
    "application/wasm",
    "application/manifest+json",
    "application/x-ndjson",
    "image/svg+xml",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "font/ttf",
    "font/otf",
    "application/vnd.ms-fontobject",
    "+json",
    "+xml",
];

/// The most compression threads a layer starts (see `Compression::jobs`).
const MAX_JOBS: usize = 256;

/// How the cache makes compressed representations of what it stores;
/// given to `CacheLayer::compression`.
///
/// When the cache stores a compressible response (see
/// [`content_types`](Self::content_types) and
/// [`min_size`](Self::min_size)), it keeps the identity body and makes one
/// representation per coding in [`codings`](Self::codings), once, on a
/// bounded pool of threads of its own, off the request path (see
/// [`jobs`](Self::jobs)); until they are ready,
/// requests get what exists. Hits are then answered with the best
/// representation the client accepts (RFC 9110 §12.5.3), with
/// `Content-Encoding`, its own `Content-Length` and `Vary: Accept-Encoding`.
///
/// The defaults, measured on a 32 KB and a 44 KB SSR page
/// (`BENCHMARKS.md`): brotli quality 11 (0.83–0.86× the bytes nginx sends
/// at `gzip_comp_level 6`), zstd level 19 (0.89–0.92×) and gzip level 9,
/// made once per stored page in about 0.3 s of one core all together
/// (`br_level(9)` and `zstd_level(15)` take about 60 ms for 0.92–0.95×),
/// and served with no CPU per hit.
///
/// ```
/// use tower_ssr::cache::{Coding, Compression};
///
/// let compression = Compression::new()
///     .codings([Coding::Br, Coding::Gzip]) // no zstd; br preferred on ties
///     .br_level(9)
///     .min_size(2048)
///     .jobs(1);
/// assert_eq!(compression.get_codings(), &[Coding::Br, Coding::Gzip]);
/// ```
#[derive(Debug, Clone)]
pub struct Compression {
    pub(crate) codings: Vec<Coding>,
    pub(crate) gzip_level: u32,
    pub(crate) br_level: u32,
    pub(crate) zstd_level: i32,
    pub(crate) min_size: usize,
    pub(crate) types: Vec<Box<str>>,
    /// `None`: half the cores, at least one.
    pub(crate) jobs: Option<usize>,
    pub(crate) max_queue: usize,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            codings: vec![Coding::Br, Coding::Zstd, Coding::Gzip],
            gzip_level: 9,
            br_level: 11,
            zstd_level: 19,
            min_size: DEFAULT_MIN_SIZE,
            types: DEFAULT_TYPES.iter().map(|t| Box::from(*t)).collect(),
            jobs: None,
            max_queue: 1024,
        }
    }
}

impl Compression {
    /// The defaults: br, zstd and gzip (in that order of preference), the
    /// default content types, bodies of at least 1 KiB.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The codings to make, in the server's order of preference: among
    /// codings a client weighs equally (browsers send `gzip, deflate, br,
    /// zstd`, all at q=1), the first listed wins. Default `[Br, Zstd,
    /// Gzip]`: brotli is the smallest on HTML (`BENCHMARKS.md`), zstd
    /// next. `Identity` in the list is ignored (it is always kept);
    /// duplicates count once. An empty list turns compression off.
    #[must_use]
    pub fn codings(mut self, codings: impl IntoIterator<Item = Coding>) -> Self {
        self.codings.clear();
        for c in codings {
            if c != Coding::Identity && !self.codings.contains(&c) {
                self.codings.push(c);
            }
        }
        self
    }

    /// The codings made, in order of preference.
    #[must_use]
    pub fn get_codings(&self) -> &[Coding] {
        &self.codings
    }

    /// gzip and deflate level, 0–9 (clamped); default 9.
    #[must_use]
    pub fn gzip_level(mut self, level: u32) -> Self {
        self.gzip_level = level.min(9);
        self
    }

    /// Brotli quality, 0–11 (clamped); default 11.
    #[must_use]
    pub fn br_level(mut self, level: u32) -> Self {
        self.br_level = level.min(11);
        self
    }

    /// zstd level, 1–22 (clamped); default 19.
    #[must_use]
    pub fn zstd_level(mut self, level: i32) -> Self {
        self.zstd_level = level.clamp(1, 22);
        self
    }

    /// The smallest body compressed, in bytes; default 1024.
    #[must_use]
    pub fn min_size(mut self, bytes: usize) -> Self {
        self.min_size = bytes;
        self
    }

    /// The content types compressed, replacing the default list.
    ///
    /// Each pattern is `type/subtype`, `type/*`, or a structured syntax
    /// suffix `+json` / `+xml` (RFC 6838 §4.2.8); matching ignores case and
    /// parameters (`; charset=utf-8`). The default list: `text/*`,
    /// JavaScript, JSON, XML, SVG, wasm, web manifests, icons, TrueType /
    /// OpenType fonts, `+json` and `+xml`. Types that are compressed already
    /// (images but SVG and icons, audio, video, `woff`/`woff2`, archives,
    /// PDF) and `text/event-stream` are never compressed, even when a
    /// pattern matches them.
    #[must_use]
    pub fn content_types<'a>(mut self, types: impl IntoIterator<Item = &'a str>) -> Self {
        self.types = types
            .into_iter()
            .map(|t| t.trim().to_ascii_lowercase().into_boxed_str())
            .collect();
        self
    }

    /// How many compression jobs run at once; default half the cores, at
    /// least one, so the other half keeps serving. 0 is read as 1, more
    /// than 256 as 256. Each running job takes its encoder's working
    /// memory: up to about 14 MiB at the default levels (brotli 11 on a
    /// page of 1 MiB or more; 1.6 MiB for a 10 KiB page).
    ///
    /// Each layer runs its jobs on this many threads of its own (named
    /// `tower-ssr-compress`), started at the first job and ended when the
    /// layer and its services are dropped; not on tokio's blocking pool,
    /// whose many threads each kept an encoder's working memory (about
    /// 1.7 MiB at the default levels) in a heap arena of their own.
    #[must_use]
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.jobs = Some(jobs.clamp(1, MAX_JOBS));
        self
    }

    /// The most jobs waiting or running; past it, a stored response keeps
    /// only what it has (identity) until it is stored again (its next
    /// fetch or refresh). Default 1024.
    #[must_use]
    pub fn max_queue(mut self, jobs: usize) -> Self {
        self.max_queue = jobs.max(1);
        self
    }

    /// The level for `coding`, as its encoder reads it.
    pub(crate) fn level(&self, coding: Coding) -> i32 {
        match coding {
            Coding::Identity => 0,
            Coding::Gzip | Coding::Deflate => self.gzip_level as i32,
            Coding::Br => self.br_level as i32,
            Coding::Zstd => self.zstd_level,
        }
    }

    /// The concurrency of the job pool.
    pub(crate) fn pool_size(&self) -> usize {
        self.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get().div_ceil(2))
                .max(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codings_drop_identity_and_duplicates() {
        let c = Compression::new().codings([
            Coding::Gzip,
            Coding::Identity,
            Coding::Gzip,
            Coding::Zstd,
        ]);
        assert_eq!(c.get_codings(), &[Coding::Gzip, Coding::Zstd]);
    }

    #[test]
    fn levels_are_clamped() {
        let c = Compression::new()
            .gzip_level(20)
            .br_level(99)
            .zstd_level(-5);
        assert_eq!(c.level(Coding::Gzip), 9);
        assert_eq!(c.level(Coding::Br), 11);
        assert_eq!(c.level(Coding::Zstd), 1);
        assert_eq!(Compression::new().zstd_level(40).level(Coding::Zstd), 22);
    }

    #[test]
    fn jobs_are_at_least_one() {
        assert_eq!(Compression::new().jobs(0).pool_size(), 1);
        assert_eq!(Compression::new().jobs(3).pool_size(), 3);
        assert_eq!(Compression::new().jobs(usize::MAX).pool_size(), 256);
        assert!(Compression::new().pool_size() >= 1);
    }
}
