//! Reading: every variant Redis holds for a key, decoded, with the purge
//! generation as of the read, and the one a request can use, counted as an
//! L2 hit or miss. What is found is put in memory by the cache's miss path
//! (`service.rs`), not here.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderMap;

use super::Tier;
use crate::cache::codec;
use crate::cache::entry::{reuse, Entry, RequestDirectives, Reuse};
use crate::cache::handle::Counters;
use crate::metrics::L2Outcome;

/// The purge generation (`KEYS[2]`), then the variants of an entry key no
/// larger than `ARGV[1]` bytes. Another
/// type under the key (another program's, or an older layout of ours) is
/// not ours to read: a miss, which our next write replaces.
pub(super) const READ: &str = r"
local out = {redis.call('GET', KEYS[2]) or '0'}
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return out end
local cap = tonumber(ARGV[1])
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('HSTRLEN', KEYS[1], f) <= cap then
    out[#out + 1] = redis.call('HGET', KEYS[1], f)
  end
end
return out
";

/// What a request looks for in Redis: its key (and the key its flight
/// and render lock go by), and what picks a stored variant: its headers
/// (`Vary`), the application's extra key part and its `Cache-Control`.
#[derive(Clone, Copy)]
pub(crate) struct Wanted<'a> {
    pub(crate) key: &'a str,
    pub(crate) flight_key: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) extra: Option<&'a str>,
    pub(crate) req_cc: &'a RequestDirectives,
}

impl Tier {
    /// Every variant stored under `key`, decoded (unknown values skipped).
    /// Values over the size cap are skipped in Redis, not fetched: one key
    /// holding huge values (another writer's, or a larger cap elsewhere)
    /// would otherwise stall this call past its timeout and switch the
    /// whole tier off for every other key.
    /// With the purge generation as of the read.
    async fn read(&self, key: &str) -> Option<(u64, Vec<Entry>)> {
        if self.has_pending.load(SeqCst) {
            // A queued purge may cover what Redis holds: not before it is
            // applied there.
            return None;
        }
        let mut inv = self.read.key(self.layout.entry(key));
        inv.key(self.layout.generation(self.layout.bucket(key)))
            .arg(self.cfg.max_value);
        let inv = &inv;
        let values: Vec<Vec<u8>> = self
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let mut values = values.into_iter();
        let generation = values
            .next()
            .and_then(|g| std::str::from_utf8(&g).ok()?.parse().ok())?;
        let (now, wall) = (crate::date::monotonic_now(), SystemTime::now());
        Some((
            generation,
            values
                .filter_map(|v| codec::decode(&Bytes::from(v), now, wall))
                .collect(),
        ))
    }

    /// Looks `key` up for a request; a usable entry with how it may be
    /// reused. Counts the hit or miss; notes the purge generation it read.
    pub(super) async fn lookup(
        &self,
        wanted: Wanted<'_>,
        generation: &mut Option<u64>,
    ) -> Option<(Arc<Entry>, Reuse)> {
        let (seen, found) = self.read(wanted.key).await?;
        *generation = Some(seen);
        let Some((entry, how)) = best(found, wanted) else {
            Counters::bump(&self.counters.l2_misses);
            self.counters.metrics().l2(L2Outcome::Miss);
            return None;
        };
        if matches!(how, Reuse::Fresh | Reuse::StaleAccepted) {
            Counters::bump(&self.counters.l2_hits);
            self.counters.metrics().l2(L2Outcome::Hit);
        } else {
            Counters::bump(&self.counters.l2_misses);
            self.counters.metrics().l2(L2Outcome::Miss);
        }
        Some((entry, how))
    }

    /// [`lookup`](Self::lookup) without counting a hit or miss.
    pub(super) async fn lookup_quiet(
        &self,
        wanted: Wanted<'_>,
        generation: &mut Option<u64>,
    ) -> Option<(Arc<Entry>, Reuse)> {
        let (seen, found) = self.read(wanted.key).await?;
        *generation = Some(seen);
        best(found, wanted)
    }
}

/// The newest of `found` that matches the request, with how it may be
/// reused.
fn best(found: Vec<Entry>, wanted: Wanted<'_>) -> Option<(Arc<Entry>, Reuse)> {
    let entry = found
        .into_iter()
        .filter(|e| e.matches(wanted.headers, wanted.extra))
        .max_by_key(|e| e.fresh.stored_at)?;
    let how = reuse(&entry.fresh, wanted.req_cc, crate::date::monotonic_now());
    Some((Arc::new(entry), how))
}
