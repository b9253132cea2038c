//! The shared second tier on Redis (feature `redis`). Only [`RedisTier`],
//! a configuration of our own, is public: no type of the Redis client
//! leaves this file.
//!
//! Layout in Redis, under a namespace (`tower-ssr` by default):
//!
//! - `{ns}:e:{key}`: a hash per cache key, one field per variant (`Vary`
//!   values and user key, hashed), each value a [`codec`](super::codec)
//!   entry; its TTL is the longest usable life of its variants (freshness
//!   plus the stale windows), so Redis drops it when no instance could use
//!   it any more.
//! - `{ns}:t:{tag}`: a sorted set of the entry keys tagged `tag`, each
//!   scored by its expiry (Redis time, ms), so that a purge by tag on any
//!   instance finds them; every write trims the members that expired, so
//!   the index holds about as many members as live entries.
//! - `{ns}:l:{key}`: the cross-instance render lock.
//! - `{ns}:g`: the purge generation, a counter every purge raises first; a
//!   write carries the generation read before its render and is refused if
//!   a purge came since, so a slow write never puts a purged page back.
//! - `{ns}:purge`: the pub/sub channel over which purges reach every
//!   instance's memory tier.
//!
//! Failure is never the user's problem: every call has a timeout; an error
//! or a timeout drops the connection and the tier stays off for a short
//! back-off, during which the cache runs on memory alone; then it
//! reconnects by itself. The first failure is logged at `warn`, the
//! recovery at `info`, nothing in between.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http::HeaderMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, RedisResult, Script};

use super::codec;
use super::entry::{reuse, Entry, RequestDirectives, Reuse};
use super::flight::Lead;
use super::handle::{Counters, Shared};
use super::key;
use crate::metrics::{L2Outcome, PurgeKind};
use tracing::Instrument;

/// Values larger than this stay in memory only, by default.
const DEFAULT_MAX_VALUE: usize = 1024 * 1024;
/// Entry keys one call of a purge by tag deletes.
const PURGE_BATCH: usize = 500;
/// Variants kept per key in Redis, as in memory.
const MAX_VARIANTS: usize = super::store::MAX_VARIANTS;

/// The shared Redis tier's configuration, given to
/// [`ResponseCacheBuilder::redis`](super::ResponseCacheBuilder::redis).
///
/// ```
/// use std::time::Duration;
/// use tower_ssr::cache::{RedisTier, ResponseCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tier = RedisTier::new("redis://127.0.0.1:6379")?
///     .namespace("shop")
///     .timeout(Duration::from_millis(50))
///     .render_lock(Duration::from_secs(2));
/// // Nothing connects yet; with no Redis there, the cache runs on memory.
/// let cache = ResponseCache::builder().redis(tier).build();
/// # let _ = cache;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisTier {
    client: Client,
    namespace: String,
    timeout: Duration,
    connect_timeout: Duration,
    retry_after: Duration,
    max_value: usize,
    lock_wait: Option<Duration>,
    lock_ttl: Duration,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may carry a password.
        f.debug_struct("RedisTier")
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry_after", &self.retry_after)
            .field("max_value_bytes", &self.max_value)
            .field("render_lock", &self.lock_wait)
            .field("lock_ttl", &self.lock_ttl)
            .finish()
    }
}

/// A Redis URL that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRedisUrl {
    reason: String,
}

impl std::fmt::Display for InvalidRedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid Redis URL: {}", self.reason)
    }
}

impl std::error::Error for InvalidRedisUrl {}

impl RedisTier {
    /// A tier on the Redis at `url` (`redis://[:password@]host[:port][/db]`,
    /// or `rediss://` where the client was built with TLS). Only the URL is
    /// checked here; the connection is made on first use, and a Redis that
    /// is not there only means the cache runs on memory alone.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL.
    pub fn new(url: &str) -> Result<Self, InvalidRedisUrl> {
        let client = Client::open(url).map_err(|e| InvalidRedisUrl {
            reason: e.to_string(),
        })?;
        Ok(RedisTier {
            client,
            namespace: "tower-ssr".into(),
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(500),
            retry_after: Duration::from_secs(1),
            max_value: DEFAULT_MAX_VALUE,
            lock_wait: None,
            lock_ttl: Duration::from_secs(10),
        })
    }

    /// The prefix of every Redis key and of the purge channel (default
    /// `tower-ssr`): instances share entries only within one namespace.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long one Redis call may take before the request goes on
    /// without it (default 100 ms). A timeout also switches the tier off
    /// for [`retry_after`](Self::retry_after).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take (default 500 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the tier stays off after a failure before reconnecting
    /// (default 1 s); meanwhile requests use memory alone and pay nothing.
    pub fn retry_after(mut self, pause: Duration) -> Self {
        self.retry_after = pause;
        self
    }

    /// Encoded entries larger than this stay in memory only (default
    /// 1 MiB): one huge value would stall Redis for every instance.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value = bytes;
        self
    }

    /// Coalesces misses across instances: the first instance to miss a key
    /// takes a Redis lock and renders; the others wait up to `wait` for its
    /// entry to appear in Redis, then render themselves. Off by default.
    pub fn render_lock(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait);
        self
    }

    /// How long a render lock lives at most (default 10 s): an instance
    /// that crashed while holding one blocks no one for longer.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }
}

/// A purge to apply in Redis and on every instance.
#[derive(Debug, Clone)]
pub(crate) enum Purge {
    Key(String),
    Path(String),
    Prefix(String),
    Tag(String),
    All,
}

impl Purge {
    fn message(&self, id: u64) -> String {
        let (kind, arg) = match self {
            Purge::Key(k) => ('k', k.as_str()),
            Purge::Path(p) => ('p', p.as_str()),
            Purge::Prefix(p) => ('x', p.as_str()),
            Purge::Tag(t) => ('t', t.as_str()),
            Purge::All => ('a', ""),
        };
        format!("{id:016x} {kind} {arg}")
    }

    /// The sender's id and the purge; `None` for a message we do not know.
    fn parse(msg: &[u8]) -> Option<(u64, Purge)> {
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
            _ => return None,
        };
        Some((id, purge))
    }

    /// Applies the purge to this instance's memory tier.
    pub(crate) fn apply_local(&self, shared: &Shared) {
        match self {
            Purge::Key(k) => {
                shared.store.remove(k);
            }
            Purge::Path(p) => shared.store.purge_path(p),
            Purge::Prefix(p) => shared.store.purge_prefix(p),
            Purge::Tag(t) => shared.store.purge_tag(t),
            Purge::All => shared.store.clear(),
        }
    }
}

#[derive(Default)]
struct ConnState {
    manager: Option<ConnectionManager>,
    /// Off until then, after a failure.
    retry_at: Option<Instant>,
    /// A connection attempt began then (one at a time).
    connecting_since: Option<Instant>,
}

/// A value of another type under the entry key (another program's, or an
/// older layout) is replaced rather than failing every write for the key.
/// `ARGV[6]`, when not empty, is the purge generation (`KEYS[2]`) read
/// before the render: a purge since then refuses the write (0).
const WRITE: &str = r"
if ARGV[6] ~= '' and (redis.call('GET', KEYS[2]) or '0') ~= ARGV[6] then return 0 end
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
if #ARGV >= 7 then
  local now = redis.call('TIME')
  now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  for i = 7, #ARGV do
    local t = ARGV[5] .. ARGV[i]
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

/// The purge generation (`KEYS[2]`), then the variants of an entry key no
/// larger than `ARGV[1]` bytes. Another
/// type under the key (another program's, or an older layout of ours) is
/// not ours to read: a miss, which our next write replaces.
const READ: &str = r"
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

/// One batch of a purge by tag: drops the members that expired, then
/// deletes up to `ARGV[1]` live entry keys and takes them out of the index;
/// 1 while members remain. In batches, so a tag on many entries never
/// holds Redis (and every instance) for longer than one batch.
const PURGE_TAG: &str = r"
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

/// Deletes the lock only if it is still ours: it may have expired and been
/// taken by another instance since.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The running tier of one [`ResponseCache`](super::ResponseCache).
pub(crate) struct Tier {
    cfg: RedisTier,
    /// Tells this instance's own purge messages apart.
    id: u64,
    conn: Mutex<ConnState>,
    down: AtomicBool,
    listening: AtomicBool,
    subscribed: AtomicBool,
    counters: Arc<Counters>,
    read: Script,
    write: Script,
    purge_tag: Script,
    release: Script,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("cfg", &self.cfg)
            .field("down", &self.down)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A per-process, per-cache random id (no RNG dependency: the std hasher's
/// random keys, the clock and the pid).
fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

impl Tier {
    pub(crate) fn new(cfg: RedisTier, counters: Arc<Counters>) -> Self {
        Tier {
            cfg,
            id: random_id(),
            conn: Mutex::new(ConnState::default()),
            down: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            counters,
            read: Script::new(READ),
            write: Script::new(WRITE),
            purge_tag: Script::new(PURGE_TAG),
            release: Script::new(RELEASE),
        }
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}:e:{key}", self.cfg.namespace)
    }

    fn generation_key(&self) -> String {
        format!("{}:g", self.cfg.namespace)
    }

    fn tag_prefix(&self) -> String {
        format!("{}:t:", self.cfg.namespace)
    }

    fn channel(&self) -> String {
        format!("{}:purge", self.cfg.namespace)
    }

    /// A connection, or `None` while the tier is off.
    async fn connection(&self) -> Option<ConnectionManager> {
        let now = Instant::now();
        {
            let mut s = lock(&self.conn);
            if let Some(m) = &s.manager {
                return Some(m.clone());
            }
            if s.retry_at.is_some_and(|t| now < t)
                || s.connecting_since
                    .is_some_and(|t| now < t + self.cfg.connect_timeout)
            {
                return None;
            }
            s.connecting_since = Some(now);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.cfg.connect_timeout)
            .set_response_timeout(self.cfg.timeout)
            .set_number_of_retries(0);
        let made = tokio::time::timeout(
            self.cfg.connect_timeout,
            ConnectionManager::new_with_config(self.cfg.client.clone(), config),
        )
        .await;
        let mut s = lock(&self.conn);
        s.connecting_since = None;
        match made {
            Ok(Ok(m)) => {
                s.manager = Some(m.clone());
                s.retry_at = None;
                drop(s);
                self.up();
                Some(m)
            }
            Ok(Err(e)) => {
                s.retry_at = Some(Instant::now() + self.cfg.retry_after);
                drop(s);
                Counters::bump(&self.counters.l2_errors);
                self.counters.metrics().l2(L2Outcome::Error);
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                s.retry_at = Some(Instant::now() + self.cfg.retry_after);
                drop(s);
                Counters::bump(&self.counters.l2_timeouts);
                self.counters.metrics().l2(L2Outcome::Timeout);
                self.failed("connecting timed out");
                None
            }
        }
    }

    /// Switches the tier off for the back-off: the next call reconnects.
    fn reset(&self) {
        let mut s = lock(&self.conn);
        s.manager = None;
        s.retry_at = Some(Instant::now() + self.cfg.retry_after);
    }

    fn failed(&self, why: &str) {
        if !self.down.swap(true, Relaxed) {
            tracing::warn!(
                error = why,
                "redis tier unavailable: the cache goes on with memory alone and reconnects by itself"
            );
        }
    }

    fn up(&self) {
        if self.down.swap(false, Relaxed) {
            tracing::info!("redis tier reconnected");
        }
    }

    /// Runs one call with the timeout; `None` on any failure, counted.
    async fn call<'a, T, F, Fut>(&'a self, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>> + 'a,
    {
        let conn = self.connection().await?;
        // One `debug` span per Redis call; free when nothing listens.
        let span = tracing::debug_span!(target: "tower_ssr::cache", "redis_call");
        match tokio::time::timeout(self.cfg.timeout, f(conn).instrument(span)).await {
            Ok(Ok(v)) => {
                self.up();
                Some(v)
            }
            Ok(Err(e)) => {
                Counters::bump(&self.counters.l2_errors);
                self.counters.metrics().l2(L2Outcome::Error);
                if is_connection_error(&e) {
                    self.reset();
                    self.failed(&e.to_string());
                } else {
                    tracing::debug!(error = %e, "redis call failed");
                }
                None
            }
            Err(_) => {
                Counters::bump(&self.counters.l2_timeouts);
                self.counters.metrics().l2(L2Outcome::Timeout);
                self.reset();
                self.failed("a call timed out");
                None
            }
        }
    }

    /// Every variant stored under `key`, decoded (unknown values skipped).
    /// Values over the size cap are skipped in Redis, not fetched: one key
    /// holding huge values (another writer's, or a larger cap elsewhere)
    /// would otherwise stall this call past its timeout and switch the
    /// whole tier off for every other key.
    /// With the purge generation as of the read.
    async fn read(&self, key: &str) -> Option<(u64, Vec<Entry>)> {
        let mut inv = self.read.key(self.entry_key(key));
        inv.key(self.generation_key()).arg(self.cfg.max_value);
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
    async fn lookup(
        &self,
        key: &str,
        headers: &HeaderMap,
        extra: Option<&str>,
        req_cc: &RequestDirectives,
        generation: &mut Option<u64>,
    ) -> Option<(Arc<Entry>, Reuse)> {
        let (seen, found) = self.read(key).await?;
        *generation = Some(seen);
        let best = found
            .into_iter()
            .filter(|e| e.matches(headers, extra))
            .max_by_key(|e| e.fresh.stored_at);
        let Some(entry) = best else {
            Counters::bump(&self.counters.l2_misses);
            self.counters.metrics().l2(L2Outcome::Miss);
            return None;
        };
        let how = reuse(&entry.fresh, req_cc, crate::date::monotonic_now());
        if matches!(how, Reuse::Fresh | Reuse::StaleAccepted) {
            Counters::bump(&self.counters.l2_hits);
            self.counters.metrics().l2(L2Outcome::Hit);
        } else {
            Counters::bump(&self.counters.l2_misses);
            self.counters.metrics().l2(L2Outcome::Miss);
        }
        Some((Arc::new(entry), how))
    }

    /// Tries to take the render lock for `flight_key`: `Taken`, `Held` by
    /// another instance, or `Failed` when Redis refused or did not answer
    /// (out of memory, read-only replica, ...): then no one can publish an
    /// entry through Redis either, so waiting would only delay the render.
    async fn try_lock(self: &Arc<Self>, flight_key: &str) -> LockAttempt {
        let lkey = format!("{}:l:{flight_key}", self.cfg.namespace);
        let token = format!("{:016x}", random_id());
        let ttl = u64::try_from(self.cfg.lock_ttl.as_millis()).unwrap_or(u64::MAX);
        let (k, t) = (lkey.clone(), token.clone());
        let got: Option<Option<String>> = self
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(&t)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut c)
                    .await
            })
            .await;
        match got {
            Some(Some(_)) => LockAttempt::Taken(lkey, token),
            Some(None) => LockAttempt::Held,
            None => LockAttempt::Failed,
        }
    }

    /// Before a render on this instance: the entry from Redis if there is
    /// one, else, with the render lock on, another instance's entry once it
    /// lands. When this instance renders, `lead` keeps the render lock if
    /// taken and the purge generation read before the render, for the
    /// write.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn before_render(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        key: &str,
        flight_key: &str,
        headers: &HeaderMap,
        extra: Option<&str>,
        req_cc: &RequestDirectives,
        lead: &mut Lead,
    ) -> Option<(Arc<Entry>, Reuse)> {
        self.listen(shared);
        let mut generation = None;
        let mut held = None;
        let found = self
            .find_or_lock(
                key,
                flight_key,
                headers,
                extra,
                req_cc,
                &mut generation,
                &mut held,
            )
            .await;
        if held.is_some() || generation.is_some() {
            lead.render_lock = Some(RenderLock {
                tier: Arc::clone(self),
                held,
                generation,
            });
        }
        found
    }

    #[allow(clippy::too_many_arguments)]
    async fn find_or_lock(
        self: &Arc<Self>,
        key: &str,
        flight_key: &str,
        headers: &HeaderMap,
        extra: Option<&str>,
        req_cc: &RequestDirectives,
        generation: &mut Option<u64>,
        held: &mut Option<(String, String)>,
    ) -> Option<(Arc<Entry>, Reuse)> {
        if let Some(found) = self.lookup(key, headers, extra, req_cc, generation).await {
            return Some(found);
        }
        let wait = self.cfg.lock_wait?;
        let deadline = Instant::now() + wait;
        // Short polls: the entry usually lands within a render's time.
        let poll = (wait / 20).clamp(Duration::from_millis(5), Duration::from_millis(50));
        loop {
            match self.try_lock(flight_key).await {
                LockAttempt::Taken(lkey, token) => {
                    *held = Some((lkey, token));
                    return None;
                }
                LockAttempt::Failed => return None,
                LockAttempt::Held => {}
            }
            if self.down.load(Relaxed) || Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(poll).await;
            if let Some((entry, how)) = self.lookup(key, headers, extra, req_cc, generation).await {
                if matches!(how, Reuse::Fresh | Reuse::StaleAccepted) {
                    return Some((entry, how));
                }
            }
        }
    }

    /// Writes `entry` (fire and forget) unless it is over the size cap;
    /// `lock`, if held, is released once the write has landed, so that
    /// instances waiting on it find the entry. With the generation `lock`
    /// read before the render, Redis refuses the write if a purge came
    /// since; without one (a revalidation, a background refresh) it is
    /// written as is.
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
        let field = format!("{:016x}", variant_id(entry));
        let rkey = self.entry_key(key);
        let tags: Vec<String> = entry.tags.iter().map(|t| t.to_string()).collect();
        let generation = lock
            .as_ref()
            .and_then(|l| l.generation)
            .map_or_else(String::new, |g| g.to_string());
        let tier = Arc::clone(self);
        rt.spawn(async move {
            let mut inv = tier.write.key(&rkey);
            inv.key(tier.generation_key())
                .arg(&field)
                .arg(value)
                .arg(u64::try_from(ttl).unwrap_or(u64::MAX))
                .arg(MAX_VARIANTS)
                .arg(tier.tag_prefix())
                .arg(generation);
            for t in &tags {
                inv.arg(t);
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
        });
    }

    /// Applies `purge` in Redis, then tells every instance (fire and
    /// forget; this instance's memory is purged already).
    pub(crate) fn purge(self: &Arc<Self>, purge: Purge) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("purge outside a tokio runtime: this instance only");
            return;
        };
        let tier = Arc::clone(self);
        rt.spawn(async move {
            tier.purge_remote(&purge).await;
            let msg = purge.message(tier.id);
            let channel = tier.channel();
            let _: Option<i64> = tier
                .call(|mut c| async move {
                    redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(&msg)
                        .query_async(&mut c)
                        .await
                })
                .await;
        });
    }

    async fn purge_remote(&self, purge: &Purge) {
        // First: from here on, a write whose render began before this purge
        // is refused, even if it reaches Redis after the deletions below.
        // One counter for every purge: a write is rarely in flight, and
        // refusing one costs one render, never a stale page.
        let generation = self.generation_key();
        let _: Option<i64> = self
            .call(|mut c| async move {
                redis::cmd("INCR")
                    .arg(&generation)
                    .query_async(&mut c)
                    .await
            })
            .await;
        match purge {
            Purge::Key(k) => {
                let rkey = self.entry_key(k);
                let _: Option<i64> =
                    self.call(|mut c| async move {
                        redis::cmd("DEL").arg(&rkey).query_async(&mut c).await
                    })
                    .await;
            }
            Purge::Tag(t) => {
                let tkey = format!("{}{t}", self.tag_prefix());
                let mut inv = self.purge_tag.key(&tkey);
                inv.arg(PURGE_BATCH);
                let inv = &inv;
                // Bounded: writes may tag new entries meanwhile.
                for _ in 0..10_000 {
                    let more: Option<i64> = self
                        .call(|mut c| async move { inv.invoke_async(&mut c).await })
                        .await;
                    if more != Some(1) {
                        break;
                    }
                }
            }
            Purge::Path(p) => {
                self.scan_delete(&format!("{}:e:", self.cfg.namespace), |k| {
                    key::path_of(k) == p
                })
                .await;
            }
            Purge::Prefix(p) => {
                self.scan_delete(&format!("{}:e:", self.cfg.namespace), |k| {
                    key::path_of(k).starts_with(p.as_str())
                })
                .await;
            }
            Purge::All => {
                self.scan_delete(&format!("{}:e:", self.cfg.namespace), |_| true)
                    .await;
                self.scan_delete(&self.tag_prefix(), |_| true).await;
            }
        }
    }

    /// Deletes the keys under `prefix` whose rest `doomed` picks: a SCAN,
    /// never KEYS, so Redis keeps serving other instances meanwhile.
    async fn scan_delete(&self, prefix: &str, doomed: impl Fn(&str) -> bool) {
        let pattern = format!("{}*", glob_escape(prefix));
        let mut cursor: u64 = 0;
        loop {
            let pattern = &pattern;
            let page: Option<(u64, Vec<Vec<u8>>)> = self
                .call(|mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut c)
                        .await
                })
                .await;
            let Some((next, keys)) = page else { return };
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .filter(|k| {
                    std::str::from_utf8(k)
                        .ok()
                        .and_then(|k| k.strip_prefix(prefix))
                        .is_some_and(&doomed)
                })
                .collect();
            if !keys.is_empty() {
                let keys = &keys;
                let _: Option<i64> =
                    self.call(|mut c| async move {
                        redis::cmd("DEL").arg(keys).query_async(&mut c).await
                    })
                    .await;
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }

    /// Starts the purge listener, once, if a tokio runtime is at hand.
    pub(crate) fn listen(self: &Arc<Self>, shared: &Arc<Shared>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.listening.swap(true, Relaxed) {
            return;
        }
        let shared = Arc::downgrade(shared);
        let tier = Arc::downgrade(self);
        rt.spawn(listen(shared, tier));
    }

    /// Whether the tier is connected and its purge listener subscribed.
    pub(crate) async fn ready(self: &Arc<Self>, shared: &Arc<Shared>) -> bool {
        self.listen(shared);
        let pinged: Option<String> = self
            .call(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
            .await;
        pinged.is_some() && self.subscribed.load(Relaxed)
    }

    async fn release(&self, key: &str, token: &str) {
        let mut inv = self.release.key(key);
        inv.arg(token);
        let inv = &inv;
        let _: Option<i64> = self
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await;
    }
}

/// The purge listener: subscribes, applies other instances' purges to this
/// instance's memory, and resubscribes after any failure. Ends once the
/// cache is dropped.
async fn listen(shared: Weak<Shared>, tier: Weak<Tier>) {
    loop {
        let Some(t) = tier.upgrade() else { return };
        let (client, channel) = (t.cfg.client.clone(), t.channel());
        let (connect, retry, id) = (t.cfg.connect_timeout, t.cfg.retry_after, t.id);
        drop(t);
        if let Ok(Ok(mut pubsub)) = tokio::time::timeout(connect, client.get_async_pubsub()).await {
            let subscribed = tokio::time::timeout(connect, pubsub.subscribe(&channel)).await;
            if matches!(subscribed, Ok(Ok(()))) {
                if let Some(t) = tier.upgrade() {
                    t.subscribed.store(true, Relaxed);
                }
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    match Purge::parse(msg.get_payload_bytes()) {
                        Some((from, purge)) if from != id => {
                            purge.apply_local(&shared);
                            Counters::bump(&shared.counters.remote_purges);
                            shared.counters.metrics().purged(PurgeKind::Remote);
                            tracing::debug!(?purge, "purge from another instance");
                        }
                        _ => {}
                    }
                }
                if let Some(t) = tier.upgrade() {
                    t.subscribed.store(false, Relaxed);
                }
            }
        }
        tokio::time::sleep(retry).await;
    }
}

/// What [`Tier::try_lock`] got.
enum LockAttempt {
    /// The lock's key and token.
    Taken(String, String),
    Held,
    Failed,
}

/// What a render on this instance carries to its Redis write: the
/// cross-instance render lock if it holds one (dropping this releases it,
/// only if it is still ours, in the background) and the purge generation
/// read before the render.
pub(crate) struct RenderLock {
    tier: Arc<Tier>,
    /// The lock's key and token.
    held: Option<(String, String)>,
    generation: Option<u64>,
}

impl std::fmt::Debug for RenderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderLock")
            .field("key", &self.held.as_ref().map(|(k, _)| k))
            .field("generation", &self.generation)
            .finish()
    }
}

impl Drop for RenderLock {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // it expires by itself
        };
        let Some((key, token)) = self.held.take() else {
            return;
        };
        let tier = Arc::clone(&self.tier);
        rt.spawn(async move { tier.release(&key, &token).await });
    }
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
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

/// Escapes Redis glob characters, so a namespace matches only itself.
fn glob_escape(s: &str) -> String {
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
    fn purge_messages_round_trip_and_unknown_ones_are_ignored() {
        for p in [
            Purge::Key("http://a/x?y=1 2".into()),
            Purge::Path("/".into()),
            Purge::Prefix("/posts/".into()),
            Purge::Tag("pages".into()),
            Purge::All,
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

    #[test]
    fn a_bad_url_is_a_clear_error_and_debug_hides_the_url() {
        let err = RedisTier::new("http://nope").unwrap_err();
        assert!(err.to_string().starts_with("invalid Redis URL"), "{err}");
        let tier = RedisTier::new("redis://:secret@127.0.0.1:6379").unwrap();
        assert!(!format!("{tier:?}").contains("secret"));
    }

    #[test]
    fn glob_characters_in_the_namespace_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
