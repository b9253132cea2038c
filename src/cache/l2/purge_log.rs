//! Delivery of purges, never lost: a purge accepted here is queued; the
//! pump applies queued purges in Redis and appends them to the purge log (a
//! Redis Stream), in order, retrying until Redis answers. The follower
//! reads the log and applies other instances' purges to this instance's
//! memory; the epoch, and the log's bounds, tell it when Redis lost what it
//! had not read yet (restarted empty, flushed, or trimmed past its last id),
//! and then it drops the memory tier. Both tasks start on first use inside
//! a tokio runtime and end once the cache is dropped.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::streams::StreamReadReply;
use tokio::sync::oneshot;

use super::conn::Conn;
use super::tier::{lock, random_id};
use super::{Purge, Tier};
use crate::cache::handle::{Counters, Shared};
use crate::metrics::PurgeKind;

/// Purges kept in the purge log (about: `MAXLEN ~`). An instance away for
/// longer than this many purges drops its memory tier when it is back.
const LOG_LEN: usize = 10_000;
/// Purges queued while Redis is away; past this, the queue collapses into
/// one purge of everything (correct, only costlier).
const MAX_PENDING: usize = 10_000;
/// How long one read of the purge log waits for news before the follower
/// checks the epoch again.
const FOLLOW_BLOCK: Duration = Duration::from_secs(1);
/// Log entries read per call.
const FOLLOW_BATCH: usize = 256;

/// The epoch (`KEYS[1]`, set to `ARGV[1]` if absent) and the purge log's
/// (`KEYS[2]`) first id, last generated id and, on Redis 7+, the largest
/// id trimmed away (`''` where absent; the epoch too, when Redis refuses
/// writes and none was set).
pub(super) const LOG_STATE: &str = r"
-- A Redis refusing writes (out of memory) can still be followed.
pcall(redis.call, 'SET', KEYS[1], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[1]) or ''
local first, last, deleted = '', '', ''
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1]
    elseif info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
  end
  local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  if #head > 0 then first = head[1][1] end
end
return {epoch, first, last, deleted}
";

/// A purge waiting for Redis, and who waits for it.
pub(super) struct Pending {
    purge: Purge,
    done: Vec<oneshot::Sender<()>>,
}

impl Tier {
    /// Queues `purge` for Redis and every other instance (this instance's
    /// memory is purged already); the receiver hears once it is applied in
    /// Redis and logged. Queued purges are applied in order, however long
    /// Redis is away (the pump starts with the follower, on first use
    /// inside a tokio runtime).
    pub(crate) fn purge(self: &Arc<Self>, purge: Purge) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = lock(&self.pending);
            q.push_back(Pending {
                purge,
                done: vec![tx],
            });
            if q.len() > MAX_PENDING {
                // The front may be in the pump's hands: keep it; the rest
                // become one purge of everything.
                let front = q.pop_front();
                let done = q.drain(..).flat_map(|p| p.done).collect();
                q.extend(front);
                q.push_back(Pending {
                    purge: Purge::All,
                    done,
                });
            }
            self.has_pending.store(true, SeqCst);
        }
        self.wake.notify_one();
        rx
    }

    /// Applies `purge` in Redis and appends it to the purge log; whether
    /// both were done.
    async fn record(&self, purge: &Purge) -> bool {
        if !self.purge_remote(purge).await {
            return false;
        }
        let (log, msg) = (self.layout.log(), purge.message(self.id));
        let id: Option<String> = self
            .call(|mut c| async move {
                redis::cmd("XADD")
                    .arg(&log)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(LOG_LEN)
                    .arg("*")
                    .arg("m")
                    .arg(&msg)
                    .query_async(&mut c)
                    .await
            })
            .await;
        id.is_some()
    }

    /// Starts the purge log's follower and the pump, once, if a tokio
    /// runtime is at hand.
    pub(crate) fn listen(self: &Arc<Self>, shared: &Arc<Shared>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.listening.swap(true, Relaxed) {
            return;
        }
        let shared = Arc::downgrade(shared);
        let tier = Arc::downgrade(self);
        rt.spawn(follow(shared, tier.clone()));
        rt.spawn(pump(tier));
    }
}

/// The pump: applies queued purges in Redis and logs them, in order,
/// retrying each [`RedisTier::retry_after`](super::RedisTier::retry_after) until Redis answers. Ends once
/// the cache is dropped.
async fn pump(tier: Weak<Tier>) {
    loop {
        let Some(t) = tier.upgrade() else { return };
        loop {
            let front = lock(&t.pending).front().map(|p| p.purge.clone());
            let Some(purge) = front else { break };
            if !t.record(&purge).await {
                break;
            }
            let done = {
                let mut q = lock(&t.pending);
                let done = q.pop_front();
                if q.is_empty() {
                    t.has_pending.store(false, SeqCst);
                }
                done
            };
            tracing::debug!(?purge, "purge applied in redis and logged");
            for tx in done.into_iter().flat_map(|p| p.done) {
                let _ = tx.send(());
            }
        }
        let (wake, retry) = (Arc::clone(&t.wake), t.cfg.retry_after);
        let idle = !t.has_pending.load(SeqCst);
        drop(t);
        if idle {
            // A permit stored by `notify_one` meanwhile is not lost. Wake
            // now and then anyway, to end once the cache is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(5), wake.notified()).await;
        } else {
            tokio::time::sleep(retry).await;
        }
    }
}

/// A stream id (`ms-seq`) as a comparable pair; `(0, 0)` for nonsense.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// What the follower learns from the epoch and the log's bounds.
#[derive(Debug, PartialEq, Eq)]
enum Resume {
    /// Read on from the last id read.
    From(String),
    /// Some purges may have been missed: drop the memory tier, then read
    /// on from this id.
    Lost(String),
}

/// Where to read the log from, given what the follower knew (`known`: the
/// epoch and last id read, `None` before its first connection), whether
/// memory already holds entries, and what Redis says now (`now`: epoch,
/// first id, last generated id, largest trimmed id; `''` where absent).
fn resume(
    known: Option<(&str, &str)>,
    memory_filled: bool,
    now: (&str, &str, &str, &str),
) -> Resume {
    let (epoch, first, newest, trimmed) = now;
    let newest = if newest.is_empty() { "0-0" } else { newest };
    let Some((old_epoch, last)) = known else {
        // First connection: what memory holds was stored while no log was
        // followed.
        return if memory_filled {
            Resume::Lost(newest.into())
        } else {
            Resume::From(newest.into())
        };
    };
    if old_epoch != epoch {
        // Redis restarted empty or was flushed: its log is not the one we
        // read.
        return Resume::Lost(newest.into());
    }
    let missed = if trimmed.is_empty() {
        // Before Redis 7 there is no record of what was trimmed: a head
        // past the last id read may have had entries before it.
        !first.is_empty() && stream_id(first) > stream_id(last) && stream_id(last) != (0, 0)
    } else {
        stream_id(trimmed) > stream_id(last)
    };
    if missed {
        Resume::Lost(newest.into())
    } else {
        Resume::From(last.into())
    }
}

/// The follower: reads the purge log from the last id it read and applies
/// other instances' purges to this instance's memory; on every
/// (re)connection, and between reads, checks the epoch and the log's
/// bounds, and drops the memory tier when it cannot know what it missed.
/// Ends once the cache is dropped.
async fn follow(shared: Weak<Shared>, tier: Weak<Tier>) {
    // The epoch and the last id read, once known.
    let mut known: Option<(String, String)> = None;
    loop {
        let Some(t) = tier.upgrade() else { return };
        let backend = t.cfg.backend.clone();
        let (connect, retry, timeout) = (t.cfg.connect_timeout, t.cfg.retry_after, t.cfg.timeout);
        drop(t);
        // A connection of its own: reads block for up to `FOLLOW_BLOCK`.
        let conn = tokio::time::timeout(
            connect,
            backend.connect_blocking(connect, FOLLOW_BLOCK + timeout),
        )
        .await;
        if let Ok(Ok(mut conn)) = conn {
            let _ = follow_on(&shared, &tier, &mut conn, &mut known, timeout).await;
            if let Some(t) = tier.upgrade() {
                t.subscribed.store(false, Relaxed);
            }
        }
        if tier.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(retry).await;
    }
}

/// Follows the log on one connection until it fails (`None`) or the cache
/// is dropped (`Some`).
async fn follow_on(
    shared: &Weak<Shared>,
    tier: &Weak<Tier>,
    conn: &mut Conn,
    known: &mut Option<(String, String)>,
    timeout: Duration,
) -> Option<()> {
    loop {
        let t = tier.upgrade()?;
        let (epoch_key, log_key, id) = (t.layout.epoch(), t.layout.log(), t.id);
        let mut inv = t.log_state.key(&epoch_key);
        inv.key(&log_key).arg(format!("{:016x}", random_id()));
        let state: (String, String, String, String) =
            tokio::time::timeout(timeout + FOLLOW_BLOCK, inv.invoke_async(conn))
                .await
                .ok()?
                .ok()?;
        let shared_now = shared.upgrade()?;
        let (epoch, first, newest, trimmed) = &state;
        let from = resume(
            known.as_ref().map(|(e, l)| (e.as_str(), l.as_str())),
            shared_now.store.entries() > 0,
            (epoch, first, newest, trimmed),
        );
        let last = match from {
            Resume::From(last) => last,
            Resume::Lost(last) => {
                if known.is_some() {
                    tracing::warn!(
                        "purges may have been missed while away from redis: the memory tier is dropped"
                    );
                }
                shared_now.store.clear();
                last
            }
        };
        *known = Some((epoch.clone(), last.clone()));
        t.subscribed.store(true, Relaxed);
        drop((t, shared_now));

        let block = u64::try_from(FOLLOW_BLOCK.as_millis()).unwrap_or(1000);
        let read: Option<StreamReadReply> = tokio::time::timeout(
            timeout + FOLLOW_BLOCK,
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(FOLLOW_BATCH)
                .arg("BLOCK")
                .arg(block)
                .arg("STREAMS")
                .arg(&log_key)
                .arg(&last)
                .query_async(conn),
        )
        .await
        .ok()?
        .ok()?;
        let shared_now = shared.upgrade()?;
        for entry in read.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            let msg: Option<Vec<u8>> = entry.get("m");
            match msg.as_deref().and_then(Purge::parse) {
                Some((from, purge)) if from != id => {
                    purge.apply_local(&shared_now);
                    Counters::bump(&shared_now.counters.remote_purges);
                    shared_now.counters.metrics().purged(PurgeKind::Remote);
                    tracing::debug!(?purge, "purge from another instance");
                }
                _ => {}
            }
            if let Some((_, last)) = known.as_mut() {
                *last = entry.id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_follower_drops_memory_only_when_it_cannot_know_what_it_missed() {
        use Resume::{From, Lost};
        let r = |known, filled, now| resume(known, filled, now);
        // First connection: from the newest id; memory filled meanwhile goes.
        assert_eq!(r(None, false, ("e", "", "", "")), From("0-0".into()));
        assert_eq!(
            r(None, false, ("e", "1-0", "9-0", "0-0")),
            From("9-0".into())
        );
        assert_eq!(
            r(None, true, ("e", "1-0", "9-0", "0-0")),
            Lost("9-0".into())
        );
        // Same epoch, nothing trimmed past the last id read: read on.
        assert_eq!(
            r(Some(("e", "5-0")), true, ("e", "1-0", "9-0", "4-3")),
            From("5-0".into())
        );
        assert_eq!(
            r(Some(("e", "5-0")), true, ("e", "6-0", "9-0", "5-0")),
            From("5-0".into())
        );
        // Trimmed past it (Redis 7 says so): lost.
        assert_eq!(
            r(Some(("e", "5-0")), true, ("e", "7-0", "9-0", "6-0")),
            Lost("9-0".into())
        );
        assert_eq!(
            r(Some(("e", "5-0")), true, ("e", "5-1", "9-0", "5-1")),
            Lost("9-0".into())
        );
        // Before Redis 7: a head past the last id read counts as lost.
        assert_eq!(
            r(Some(("e", "5-0")), true, ("e", "7-0", "9-0", "")),
            Lost("9-0".into())
        );
        assert_eq!(
            r(Some(("e", "5-0")), true, ("e", "3-0", "9-0", "")),
            From("5-0".into())
        );
        // Another epoch: Redis restarted empty or was flushed.
        assert_eq!(
            r(Some(("e", "5-0")), false, ("f", "", "", "")),
            Lost("0-0".into())
        );
        assert_eq!(
            r(Some(("e", "5-0")), true, ("f", "1-0", "2-0", "0-0")),
            Lost("2-0".into())
        );
    }

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(stream_id("10-0") > stream_id("9-5"));
        assert!(stream_id("9-10") > stream_id("9-9"));
        assert_eq!(stream_id("junk"), (0, 0));
    }
}
