//! What a purge is ([`Purge`]: by key, path, prefix, tag, everything, or
//! a revalidation of a path, prefix or tag), its message in the purge log,
//! and how it is applied: to this instance's memory, and in Redis (the
//! purge generation of every bucket it may cover raised first, then the
//! deletions: by tag through each bucket's index, in batches, otherwise
//! by SCAN on every master). How a purge reaches Redis and the other
//! instances, however long Redis is away, is [`purge_log`](super::purge_log).

use std::future::Future;

use super::Tier;
use crate::cache::handle::Shared;
use crate::cache::key;
use crate::cache::revalidate::{mark_stale, Scope};

/// Entry keys one call of a purge by tag deletes.
const PURGE_BATCH: usize = 500;
/// Buckets a purge works on at once (a cluster has 256).
const BUCKET_FANOUT: usize = 32;

/// A purge to apply in Redis and on every instance.
#[derive(Debug, Clone)]
pub(crate) enum Purge {
    Key(String),
    Path(String),
    Prefix(String),
    Tag(String),
    All,
    /// Revalidations (soft purges): marked stale in memory; in Redis the
    /// shared copies are removed, so that no refresh takes one back.
    RevalidatePath(String),
    RevalidatePrefix(String),
    RevalidateTag(String),
}

impl Purge {
    pub(super) fn message(&self, id: u64) -> String {
        let (kind, arg) = match self {
            Purge::Key(k) => ('k', k.as_str()),
            Purge::Path(p) => ('p', p.as_str()),
            Purge::Prefix(p) => ('x', p.as_str()),
            Purge::Tag(t) => ('t', t.as_str()),
            Purge::All => ('a', ""),
            Purge::RevalidatePath(p) => ('P', p.as_str()),
            Purge::RevalidatePrefix(p) => ('X', p.as_str()),
            Purge::RevalidateTag(t) => ('T', t.as_str()),
        };
        format!("{id:016x} {kind} {arg}")
    }

    /// The sender's id and the purge; `None` for a message we do not know.
    pub(super) fn parse(msg: &[u8]) -> Option<(u64, Purge)> {
        let msg = std::str::from_utf8(msg).ok()?;
        let (id, rest) = msg.split_once(' ')?;
        let id = u64::from_str_radix(id, 16).ok()?;
        let (kind, arg) = rest.split_once(' ')?;
        let purge = match kind {
            "k" => Purge::Key(arg.into()),
            "p" => Purge::Path(arg.into()),
            "x" => Purge::Prefix(arg.into()),
            "t" => Purge::Tag(arg.into()),
            "a" => Purge::All,
            "P" => Purge::RevalidatePath(arg.into()),
            "X" => Purge::RevalidatePrefix(arg.into()),
            "T" => Purge::RevalidateTag(arg.into()),
            _ => return None,
        };
        Some((id, purge))
    }

    /// Applies the purge to this instance's memory tier.
    pub(crate) fn apply_local(&self, shared: &Shared) {
        match self {
            Purge::Key(k) => {
                shared.store.remove_uri(k);
            }
            Purge::Path(p) => shared.store.purge_path(p),
            Purge::Prefix(p) => shared.store.purge_prefix(p),
            Purge::Tag(t) => shared.store.purge_tag(t),
            Purge::All => shared.store.clear(),
            Purge::RevalidatePath(p) => mark_stale(&shared.store, Scope::Path(p)),
            Purge::RevalidatePrefix(p) => mark_stale(&shared.store, Scope::Prefix(p)),
            Purge::RevalidateTag(t) => mark_stale(&shared.store, Scope::Tag(t)),
        }
    }
}

/// One batch of a purge by tag in one bucket: with `ARGV[2]` = `1` (the
/// first batch) raises the bucket's purge generation (`KEYS[2]`) first,
/// then drops the members of the index (`KEYS[1]`) that expired, deletes
/// up to `ARGV[1]` live entry keys and takes them out of the index; 1 while
/// members remain. In batches, so a tag on many entries never holds Redis
/// (and every instance) for longer than one batch. The entries an index
/// names are in its bucket, hence its slot.
pub(super) const PURGE_TAG: &str = r"
if ARGV[2] == '1' then redis.call('INCR', KEYS[2]) end
local kind = redis.call('TYPE', KEYS[1])['ok']
local n = tonumber(ARGV[1])
local keys
if kind == 'zset' then
  local now = redis.call('TIME')
  now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  keys = redis.call('ZRANGE', KEYS[1], 0, n - 1)
  if #keys > 0 then redis.call('ZREM', KEYS[1], unpack(keys)) end
elseif kind == 'set' then
  keys = redis.call('SPOP', KEYS[1], n)
else
  return 0
end
if #keys > 0 then redis.call('DEL', unpack(keys)) end
return redis.call('EXISTS', KEYS[1])
";

impl Tier {
    /// Applies `purge` in Redis; whether every step was done (a purge
    /// half done is done again: each step is idempotent).
    pub(super) async fn purge_remote(&self, purge: &Purge) -> bool {
        // First, in every bucket the purge may cover: from here on, a write
        // whose render began before this purge is refused, even if it
        // reaches Redis after the deletions below. One counter per bucket
        // (one on a single node): a write is rarely in flight, and refusing
        // one costs one render, never a stale page.
        match purge {
            // Every spelling of the default port names the URI.
            Purge::Key(k) => {
                for k in crate::cache::key::spellings(k) {
                    if !self.raise(self.layout.bucket(&k)).await {
                        return false;
                    }
                    let rkey = self.layout.entry(&k);
                    let done: Option<i64> = self
                        .call(|mut c| async move {
                            redis::cmd("DEL").arg(&rkey).query_async(&mut c).await
                        })
                        .await;
                    if done.is_none() {
                        return false;
                    }
                }
                true
            }
            // The script raises each bucket's generation itself, in the
            // same step as that bucket's first deletions.
            Purge::Tag(t) | Purge::RevalidateTag(t) => {
                self.every_bucket(|b| self.purge_tag_in(b, t)).await
            }
            Purge::Path(p) | Purge::RevalidatePath(p) => {
                self.raise_all().await && self.scan_delete('e', |k| key::path_of(k) == p).await
            }
            Purge::Prefix(p) | Purge::RevalidatePrefix(p) => {
                self.raise_all().await
                    && self
                        .scan_delete('e', |k| key::path_of(k).starts_with(p.as_str()))
                        .await
            }
            Purge::All => {
                self.raise_all().await
                    && self.scan_delete('e', |_| true).await
                    && self.scan_delete('t', |_| true).await
            }
        }
    }

    /// Runs `step` for every bucket (one on a single node), up to
    /// [`BUCKET_FANOUT`] at a time; whether every one was done.
    async fn every_bucket<'a, F, Fut>(&'a self, step: F) -> bool
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = bool> + 'a,
    {
        self.every_bucket_by(BUCKET_FANOUT, step).await
    }

    /// [`every_bucket`](Self::every_bucket), `fanout` buckets at a time.
    async fn every_bucket_by<'a, F, Fut>(&'a self, fanout: usize, step: F) -> bool
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = bool> + 'a,
    {
        use futures_util::StreamExt;
        // Connected first: the steps' first calls would otherwise race to
        // connect, all but one would fail at once (one attempt at a time),
        // and the purge would wait a back-off for nothing.
        if self.connection().await.is_none() {
            return false;
        }
        // Every step runs to its end, never cut short at the first
        // failure: a step dropped while it reconnects would leave the
        // next attempt waiting for a connection that never comes. After
        // a failure the others fail fast anyway (the tier is off).
        futures_util::stream::iter(0..self.layout.buckets())
            .map(step)
            .buffer_unordered(fanout)
            .fold(true, |all, done| async move { all && done })
            .await
    }

    /// Raises a bucket's purge generation; whether Redis did.
    async fn raise(&self, bucket: usize) -> bool {
        let generation = self.layout.generation(bucket);
        let raised: Option<i64> = self
            .call(|mut c| async move {
                redis::cmd("INCR")
                    .arg(&generation)
                    .query_async(&mut c)
                    .await
            })
            .await;
        raised.is_some()
    }

    /// Raises every bucket's purge generation; whether Redis did. All
    /// buckets at once (a cluster's 256): an INCR is one small command,
    /// and redis-rs queues them on one connection per master. In waves of
    /// [`BUCKET_FANOUT`] a backlog of purges by path queued during an
    /// outage took 0.6 s to drain on a cluster after it. (One pipeline
    /// cannot do it: redis-rs's cluster connection refuses a pipeline
    /// whose commands span slots, and every bucket is a slot of its own.)
    async fn raise_all(&self) -> bool {
        self.every_bucket_by(self.layout.buckets(), |b| self.raise(b))
            .await
    }

    /// A purge by tag in one bucket, in batches; whether it went through.
    async fn purge_tag_in(&self, bucket: usize, tag: &str) -> bool {
        let (index, generation) = (
            self.layout.tag_index(bucket, tag),
            self.layout.generation(bucket),
        );
        // Bounded: writes may tag new entries meanwhile.
        for batch in 0..10_000 {
            let mut inv = self.purge_tag.key(&index);
            inv.key(&generation)
                .arg(PURGE_BATCH)
                .arg(if batch == 0 { "1" } else { "0" });
            let inv = &inv;
            let more: Option<i64> = self
                .call(|mut c| async move { inv.invoke_async(&mut c).await })
                .await;
            match more {
                Some(1) => {}
                Some(_) => return true,
                None => return false,
            }
        }
        true
    }

    /// Deletes the keys of `kind` (`e` entries, `t` tag indexes) whose rest
    /// (cache key, tag) `doomed` picks, on every master: a SCAN, never
    /// KEYS, so Redis keeps serving other instances meanwhile. Whether it
    /// went through to the end.
    async fn scan_delete(&self, kind: char, doomed: impl Fn(&str) -> bool) -> bool {
        let pattern = self.layout.pattern(kind);
        let masters: Option<Vec<Option<(String, u16)>>> =
            self.call(|mut c| async move { c.masters().await }).await;
        let Some(masters) = masters.filter(|m| !m.is_empty()) else {
            return false;
        };
        for node in &masters {
            let node = node.as_ref();
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500);
                let scan = &scan;
                let page: Option<(u64, Vec<Vec<u8>>)> = self
                    .call(|mut c| async move { c.on_node(node, scan).await })
                    .await;
                let Some((next, keys)) = page else {
                    return false;
                };
                let keys: Vec<Vec<u8>> = keys
                    .into_iter()
                    .filter(|k| {
                        std::str::from_utf8(k)
                            .ok()
                            .and_then(|k| self.layout.parse(k, kind))
                            .is_some_and(&doomed)
                    })
                    .collect();
                if !keys.is_empty() {
                    let keys = &keys;
                    // On a cluster, redis-rs splits a DEL by slot.
                    let done: Option<i64> = self
                        .call(|mut c| async move {
                            redis::cmd("DEL").arg(keys).query_async(&mut c).await
                        })
                        .await;
                    if done.is_none() {
                        return false;
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_messages_round_trip_and_unknown_ones_are_ignored() {
        for p in [
            Purge::Key("http://a/x?y=1 2".into()),
            Purge::Path("/".into()),
            Purge::Prefix("/posts/".into()),
            Purge::Tag("pages".into()),
            Purge::All,
            Purge::RevalidatePath("/a b".into()),
            Purge::RevalidatePrefix("/posts/".into()),
            Purge::RevalidateTag("pages".into()),
        ] {
            let msg = p.message(42);
            let (id, back) = Purge::parse(msg.as_bytes()).unwrap();
            assert_eq!(id, 42);
            assert_eq!(back.message(42), msg);
        }
        assert!(Purge::parse(b"zz k x").is_none());
        assert!(Purge::parse(b"0000000000000001 q x").is_none());
        assert!(Purge::parse(b"").is_none());
        assert!(Purge::parse(&[0xff, 0xfe]).is_none());
    }
}
