//! Writing: an entry stored on this instance goes to Redis as well (fire
//! and forget), under the purge generation read before its render, with
//! its tag indexes; and, once the compression job has made them, its
//! representations (br, zstd, gzip) over the value of the same body.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

#[cfg(feature = "compression")]
use redis::Script;

use super::{RenderLock, Tier};
use crate::cache::codec;
use crate::cache::entry::Entry;
use crate::cache::handle::Counters;
use crate::metrics::L2Outcome;

/// Variants kept per key in Redis, as in memory.
const MAX_VARIANTS: usize = crate::cache::store::MAX_VARIANTS;

/// A value of another type under the entry key (another program's, or an
/// older layout) is replaced rather than failing every write for the key.
/// `ARGV[5]`, when not empty, is the purge generation (`KEYS[2]`) read
/// before the render: a purge since then refuses the write (0).
/// `KEYS[3..]` are the entry's tag indexes; every key is named in `KEYS`,
/// all in one slot on a cluster.
pub(super) const WRITE: &str = r"
if ARGV[5] ~= '' and (redis.call('GET', KEYS[2]) or '0') ~= ARGV[5] then return 0 end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
   and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
local left = redis.call('PTTL', KEYS[1])
if #KEYS >= 3 then
  local now = redis.call('TIME')
  now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  for i = 3, #KEYS do
    local t = KEYS[i]
    local kind = redis.call('TYPE', t)['ok']
    if kind == 'set' then
      -- The index of an older version: its members live at most as long
      -- as the set.
      local old = redis.call('SMEMBERS', t)
      local until_ = now + math.max(redis.call('PTTL', t), 0)
      redis.call('DEL', t)
      for _, k in ipairs(old) do redis.call('ZADD', t, until_, k) end
    elseif kind ~= 'zset' and kind ~= 'none' then
      redis.call('DEL', t)
    end
    redis.call('ZADD', t, 'GT', now + left, KEYS[1])
    redis.call('ZREMRANGEBYSCORE', t, '-inf', now)
    -- The index lives as long as its longest-lived member.
    local last = redis.call('ZRANGE', t, -1, -1, 'WITHSCORES')
    if #last == 2 then redis.call('PEXPIREAT', t, last[2]) end
  end
end
return 1
";

/// Replaces field `ARGV[1]` of the entry hash with `ARGV[2]` only if the
/// value there begins with the same `ARGV[3]` bytes (format and body hash):
/// the representations made of a body go only where that body still is.
#[cfg(feature = "compression")]
const REPLACE_SAME_BODY: &str = r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return 0 end
local old = redis.call('HGET', KEYS[1], ARGV[1])
local n = tonumber(ARGV[3])
if not old or string.sub(old, 1, n) ~= string.sub(ARGV[2], 1, n) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

impl Tier {
    /// Writes `entry` (fire and forget) unless it is over the size cap;
    /// `lock`, if held, is released once the write has landed, so that
    /// instances waiting on it find the entry. With the generation `lock`
    /// read before the render, Redis refuses the write if a purge came
    /// since (validations of a stale copy and background refreshes read it
    /// too, in `before_render` / `before_refresh`); without one (Redis did
    /// not answer then, or a purge was still queued here) it is written
    /// as is.
    pub(crate) fn write(self: &Arc<Self>, key: &str, entry: &Entry, lock: Option<RenderLock>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let now = crate::date::monotonic_now();
        let resident = now.saturating_duration_since(entry.fresh.stored_at);
        let ttl = entry.fresh.keep_for.saturating_sub(resident).as_millis();
        if ttl == 0 {
            return;
        }
        let value = codec::encode(entry, now, SystemTime::now());
        if value.len() > self.cfg.max_value {
            tracing::debug!(
                key,
                bytes = value.len(),
                "entry too large for the redis tier"
            );
            return;
        }
        let Some(share) = self.reserve(key, value.len()) else {
            return;
        };
        let field = format!("{:016x}", variant_id(entry));
        let rkey = self.layout.entry(key);
        let bucket = self.layout.bucket(key);
        let tags: Vec<String> = entry
            .tags
            .iter()
            .map(|t| self.layout.tag_index(bucket, t))
            .collect();
        let generation = lock
            .as_ref()
            .and_then(|l| l.generation)
            .map_or_else(String::new, |g| g.to_string());
        let tier = Arc::clone(self);
        rt.spawn(async move {
            let mut inv = tier.write.key(&rkey);
            inv.key(tier.layout.generation(bucket))
                .arg(&field)
                .arg(value)
                .arg(u64::try_from(ttl).unwrap_or(u64::MAX))
                .arg(MAX_VARIANTS)
                .arg(generation);
            for t in &tags {
                inv.key(t);
            }
            let inv = &inv;
            let done: Option<i64> = tier
                .call(|mut c| async move { inv.invoke_async(&mut c).await })
                .await;
            match done {
                Some(1) => {
                    Counters::bump(&tier.counters.l2_writes);
                    tier.counters.metrics().l2(L2Outcome::Write);
                }
                Some(_) => tracing::debug!("redis write refused: a purge came after its render"),
                None => {}
            }
            drop(lock);
            drop(share);
        });
    }

    /// Puts `entry`, whose representations were just made (br, zstd,
    /// gzip), in place of the value written for it at store time, so that
    /// other instances serve them without compressing (fire and forget).
    /// Only over a value holding the same body (see `codec::SAME_BODY`):
    /// a purge or a new render since then wins, and the key's TTL and tag
    /// index stay as that write set them. Not when the value would be over
    /// the size cap: the identity-only value stays.
    #[cfg(feature = "compression")]
    pub(crate) fn write_representations(self: &Arc<Self>, key: &str, entry: &Entry) {
        static REPLACE: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let value = codec::encode(entry, crate::date::monotonic_now(), SystemTime::now());
        if value.len() > self.cfg.max_value {
            tracing::debug!(
                key,
                bytes = value.len(),
                "representations too large for the redis tier"
            );
            return;
        }
        let Some(share) = self.reserve(key, value.len()) else {
            return;
        };
        let field = format!("{:016x}", variant_id(entry));
        let rkey = self.layout.entry(key);
        let tier = Arc::clone(self);
        rt.spawn(async move {
            let _share = share;
            let script = REPLACE.get_or_init(|| Script::new(REPLACE_SAME_BODY));
            let mut inv = script.key(&rkey);
            inv.arg(&field).arg(value).arg(codec::SAME_BODY);
            let inv = &inv;
            let done: Option<i64> = tier
                .call(|mut c| async move { inv.invoke_async(&mut c).await })
                .await;
            if done == Some(1) {
                Counters::bump(&tier.counters.l2_representation_writes);
            }
        });
    }
}

/// A write's bytes in `Tier::in_flight`, given back when the write is
/// answered, times out, or is dropped with its task.
pub(super) struct InFlight {
    count: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Tier {
    /// Counts `bytes` as on their way to Redis, unless
    /// `max_in_flight_bytes` already are (one value always goes when none
    /// is in flight, so a cap below `max_value_bytes` never stops all
    /// writes). A refused write is counted as skipped.
    fn reserve(&self, key: &str, bytes: usize) -> Option<InFlight> {
        let cap = self.cfg.max_in_flight;
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n == 0 || n.saturating_add(bytes) <= cap).then(|| n.saturating_add(bytes))
            });
        if taken.is_err() {
            Counters::bump(&self.counters.l2_writes_skipped);
            self.counters.metrics().l2(L2Outcome::Skipped);
            tracing::debug!(key, bytes, "redis write skipped: too many bytes in flight");
            return None;
        }
        Some(InFlight {
            count: Arc::clone(&self.in_flight),
            bytes,
        })
    }

    /// Bytes of values on their way to Redis now.
    #[cfg(test)]
    pub(crate) fn in_flight_bytes(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// Which variant of a key an entry is: its `Vary` values and user key.
fn variant_id(entry: &Entry) -> u64 {
    let mut buf = Vec::with_capacity(64);
    for (name, value) in entry.vary.iter() {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.push(0);
        if let Some(v) = value {
            buf.push(1);
            buf.extend_from_slice(v.as_bytes());
        }
        buf.push(0);
    }
    if let Some(e) = &entry.extra {
        buf.push(2);
        buf.extend_from_slice(e.as_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::RedisTier;
    use std::sync::atomic::Ordering::Relaxed;

    fn bounded(max_in_flight: usize) -> (Tier, Arc<Counters>) {
        // Nothing connects until a call is made.
        let cfg = RedisTier::new("redis://127.0.0.1:1")
            .unwrap()
            .max_in_flight_bytes(max_in_flight);
        let counters = Arc::new(Counters::default());
        (Tier::new(cfg, Arc::clone(&counters)), counters)
    }

    #[test]
    fn writes_past_the_bound_are_refused_until_shares_come_back() {
        let (tier, counters) = bounded(100);
        let a = tier.reserve("k", 60).unwrap();
        let b = tier.reserve("k", 40).unwrap();
        assert_eq!(tier.in_flight_bytes(), 100);
        assert!(tier.reserve("k", 1).is_none());
        drop(a);
        let c = tier.reserve("k", 50).unwrap();
        assert!(tier.reserve("k", 20).is_none());
        drop((b, c));
        assert_eq!(tier.in_flight_bytes(), 0);
        assert_eq!(counters.l2_writes_skipped.load(Relaxed), 2);
    }

    #[test]
    fn a_value_over_the_bound_goes_alone() {
        let (tier, counters) = bounded(100);
        let big = tier.reserve("k", 500).expect("nothing else in flight");
        assert!(tier.reserve("k", 1).is_none());
        drop(big);
        assert!(tier.reserve("k", 1).is_some());
        assert_eq!(counters.l2_writes_skipped.load(Relaxed), 1);
        // Even a bound of zero lets one through at a time.
        let (zero, _) = bounded(0);
        let one = zero.reserve("k", 10).unwrap();
        assert!(zero.reserve("k", 10).is_none());
        drop(one);
    }
}
