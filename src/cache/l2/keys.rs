//! Where the Redis tier keeps things: the key layout on one Redis node and
//! on Redis Cluster (see [`l2`](super) for what each key holds).
//!
//! On one node every key starts with the namespace (`shop:e:…`). On a
//! cluster a Lua script may only touch keys of one hash slot, so keys are
//! grouped into [`BUCKETS`] buckets, each named by a hash tag
//! (`{shop:17:203}`) that Redis hashes instead of the whole key: a cache
//! key's entry, its render lock, its bucket's purge generation and its
//! bucket's tag indexes share one tag, hence one slot, and every script
//! stays within it. The purge log and the epoch share a tag of their own
//! (`{shop}`).
//!
//! Why buckets rather than the URL as the tag: the purge generation a
//! write is checked against must sit in the entry's slot, and a purge must
//! raise it for every entry it may cover; with one generation per URL a
//! purge by path would have to find every URL first. With 256 buckets a
//! purge raises 256 counters and a purge by tag reads 256 per-bucket
//! indexes (fan-out per bucket, not per node: the buckets follow their
//! slots when a cluster is resharded, the code needs no node list for it).
//! Each bucket's tag is chosen so that its slot falls in the bucket's 1/256
//! of the slot range, so buckets spread evenly over masters that own
//! contiguous slot ranges, as `redis-cli --cluster create` assigns them.

/// Buckets of the cluster layout. Part of the layout: instances that
/// share a cluster must agree on it.
pub(super) const BUCKETS: usize = 256;
/// Hash slots of Redis Cluster.
const SLOTS: u16 = 16384;

/// The key layout of one tier.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// What stands for the namespace in the log's and epoch's names.
    log_base: String,
    /// What every other key starts with, per bucket: the namespace on one
    /// node (one bucket), a hash tag per bucket on a cluster.
    bases: Vec<String>,
}

impl Layout {
    /// The layout on one node: the namespace starts every key, one bucket.
    pub(super) fn single(namespace: &str) -> Self {
        Layout {
            log_base: namespace.into(),
            bases: vec![namespace.into()],
        }
    }

    /// The layout on a cluster: [`BUCKETS`] hash tags. `{` and `}` in the
    /// namespace read as `_` there (they would end or start the tag).
    pub(super) fn cluster(namespace: &str) -> Self {
        let ns: String = namespace
            .chars()
            .map(|c| if matches!(c, '{' | '}') { '_' } else { c })
            .collect();
        let per_bucket = SLOTS / BUCKETS as u16;
        let bases = (0..BUCKETS)
            .map(|bucket| {
                let lo = per_bucket * bucket as u16;
                // About `per_bucket` tries per bucket: microseconds.
                (0u32..)
                    .map(|n| format!("{ns}:{bucket}:{n}"))
                    .find(|tag| (lo..lo + per_bucket).contains(&slot(tag.as_bytes())))
                    .map(|tag| format!("{{{tag}}}"))
                    .expect("every slot is reached by some suffix")
            })
            .collect();
        Layout {
            log_base: format!("{{{ns}}}"),
            bases,
        }
    }

    /// How many buckets purges fan out over (1 on one node).
    pub(super) fn buckets(&self) -> usize {
        self.bases.len()
    }

    /// The bucket of a cache key.
    pub(super) fn bucket(&self, key: &str) -> usize {
        if self.bases.len() == 1 {
            return 0;
        }
        // xxh3: stable across processes and versions, as the layout must be.
        (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % self.bases.len() as u64) as usize
    }

    /// The entry hash of a cache key.
    pub(super) fn entry(&self, key: &str) -> String {
        format!("{}:e:{key}", self.bases[self.bucket(key)])
    }

    /// The render lock of `flight` (a flight key of cache key `key`), in
    /// `key`'s slot.
    pub(super) fn lock(&self, key: &str, flight: &str) -> String {
        format!("{}:l:{flight}", self.bases[self.bucket(key)])
    }

    /// A bucket's purge generation.
    pub(super) fn generation(&self, bucket: usize) -> String {
        format!("{}:g", self.bases[bucket])
    }

    /// A bucket's index of the entries tagged `tag`.
    pub(super) fn tag_index(&self, bucket: usize, tag: &str) -> String {
        format!("{}:t:{tag}", self.bases[bucket])
    }

    /// The purge log (a stream).
    pub(super) fn log(&self) -> String {
        format!("{}:s", self.log_base)
    }

    /// The epoch, beside the log (one script reads both).
    pub(super) fn epoch(&self) -> String {
        format!("{}:epoch", self.log_base)
    }

    /// A SCAN pattern that matches every key of `kind` (`e` entries, `t`
    /// tag indexes) and maybe others; [`Layout::parse`] tells them apart.
    pub(super) fn pattern(&self, kind: char) -> String {
        if self.bases.len() == 1 {
            format!("{}:{kind}:*", glob_escape(&self.bases[0]))
        } else {
            // `{ns}` is the log's base: `{ns:` starts every bucket's tag.
            let open = self.log_base.trim_end_matches('}');
            format!("{}:*", glob_escape(open))
        }
    }

    /// The rest of `rkey` after a bucket's base and `:{kind}:` (the cache
    /// key of an entry, the tag of an index); `None` if it is not such a
    /// key of this layout.
    pub(super) fn parse<'k>(&self, rkey: &'k str, kind: char) -> Option<&'k str> {
        let base = if self.bases.len() == 1 {
            self.bases[0].as_str()
        } else {
            let end = rkey.find('}')?;
            let base = &rkey[..=end];
            // Exactly one of ours: `{shop:1:…}` is not `{shop:1:…}` of a
            // namespace `shop:1`, whose keys the same pattern matches.
            let bucket = base.strip_prefix(self.log_base.trim_end_matches('}'))?;
            let bucket: usize = bucket.strip_prefix(':')?.split(':').next()?.parse().ok()?;
            if self.bases.get(bucket)? != base {
                return None;
            }
            base
        };
        let rest = rkey.strip_prefix(base)?.strip_prefix(':')?;
        rest.strip_prefix(kind)?.strip_prefix(':')
    }
}

/// The Redis Cluster hash slot of `key` (CRC16/XMODEM of its hash tag, or
/// of the whole key without one, modulo 16384).
pub(super) fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            // `{}` is no tag: the whole key is hashed.
            (close > 0).then(|| &key[open + 1..open + 1 + close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Escapes Redis glob characters, so a namespace matches only itself.
pub(super) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_what_redis_computes() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"), "an empty tag is no tag");
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn the_single_node_layout_is_the_namespace_then_the_kind() {
        let l = Layout::single("shop");
        assert_eq!(l.buckets(), 1);
        assert_eq!(l.entry("http://a/x"), "shop:e:http://a/x");
        assert_eq!(
            l.lock("http://a/x", "http://a/x\u{1}u"),
            "shop:l:http://a/x\u{1}u"
        );
        assert_eq!(l.generation(0), "shop:g");
        assert_eq!(l.tag_index(0, "news"), "shop:t:news");
        assert_eq!((l.log(), l.epoch()), ("shop:s".into(), "shop:epoch".into()));
        assert_eq!(l.pattern('e'), "shop:e:*");
        assert_eq!(l.parse("shop:e:http://a/x", 'e'), Some("http://a/x"));
        assert_eq!(l.parse("shop:t:news", 'e'), None);
        assert_eq!(l.parse("shopx:e:http://a/x", 'e'), None);
    }

    #[test]
    fn one_cache_key_keeps_entry_lock_generation_and_tags_in_one_slot() {
        let l = Layout::cluster("shop");
        for key in ["http://a/", "http://a/x?y=1", "http://b/{odd}/path"] {
            let b = l.bucket(key);
            let s = slot(l.entry(key).as_bytes());
            assert_eq!(slot(l.lock(key, &format!("{key}\u{1}extra")).as_bytes()), s);
            assert_eq!(slot(l.generation(b).as_bytes()), s);
            assert_eq!(slot(l.tag_index(b, "news").as_bytes()), s);
        }
        assert_eq!(slot(l.log().as_bytes()), slot(l.epoch().as_bytes()));
    }

    #[test]
    fn cluster_buckets_spread_evenly_over_the_slot_range() {
        let l = Layout::cluster("shop");
        for b in 0..BUCKETS {
            let s = slot(l.generation(b).as_bytes()) as usize;
            assert_eq!(s / (16384 / BUCKETS), b, "bucket {b} at slot {s}");
        }
        // So three masters of contiguous ranges hold about a third each.
        let on_first = (0..BUCKETS)
            .filter(|&b| slot(l.generation(b).as_bytes()) <= 5460)
            .count();
        assert!((85..=86).contains(&on_first), "{on_first}");
    }

    #[test]
    fn cluster_keys_parse_back_and_foreign_ones_do_not() {
        let l = Layout::cluster("shop");
        let e = l.entry("http://a/x");
        assert!(e.starts_with("{shop:"), "{e}");
        assert_eq!(l.parse(&e, 'e'), Some("http://a/x"));
        assert_eq!(l.parse(&e, 't'), None);
        assert_eq!(l.parse(&l.tag_index(3, "news"), 't'), Some("news"));
        // Another namespace that the SCAN pattern also matches.
        let other = Layout::cluster("shop:1");
        assert_eq!(l.parse(&other.entry("http://a/x"), 'e'), None);
        assert_eq!(l.parse("{shop:999:0}:e:x", 'e'), None);
        assert_eq!(l.parse("{shop}:s", 'e'), None);
        assert_eq!(l.pattern('e'), "{shop:*");
    }

    #[test]
    fn braces_in_the_namespace_cannot_break_the_cluster_tags() {
        let l = Layout::cluster("a}b{c");
        let e = l.entry("http://a/x");
        assert!(e.starts_with("{a_b_c:"), "{e}");
        assert_eq!(l.parse(&e, 'e'), Some("http://a/x"));
    }

    #[test]
    fn glob_characters_in_the_namespace_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(Layout::single("a*").pattern('t'), "a\\*:t:*");
    }
}
