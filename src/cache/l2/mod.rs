//! The shared second tier on Redis (feature `redis`). Only [`RedisTier`],
//! a configuration of our own, is public (with [`RedisKeys`] and
//! [`InvalidRedisUrl`]): no type of the Redis client leaves this folder.
//!
//! Layout, in reading order: `config` ([`RedisTier`]), `tier` (the running
//! tier's state), `health` (calls, timeouts, outages), `keys` (key names
//! on one node and on a cluster), `conn` (connections to either), `read`
//! (lookups), `render_lock` (coalescing renders across instances),
//! `refresh` (background refreshes), `write` (entries and their
//! representations), `purge` (what a purge is and how it is applied),
//! `purge_log` (purges delivered to every instance, through outages).
//!
//! Layout in Redis, under a namespace (`tower-ssr` by default), on one
//! node (on Redis Cluster, `{ns}` below stands for a hash tag per bucket of
//! keys, and the log and epoch share a tag of their own: see
//! [`keys`]):
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
//! - `{ns}:g`: the purge generation, a counter every purge raises first (on
//!   a cluster, one per bucket, raised in every bucket the purge may
//!   cover); a write carries the generation read before its render and is
//!   refused if a purge came since, so a slow write never puts a purged
//!   page back.
//! - `{ns}:s`: the purge log, a Redis Stream (`XADD … MAXLEN ~ 10000`)
//!   that every instance follows (`XREAD BLOCK`) from the last id it read,
//!   so a purge issued while an instance was disconnected reaches it when
//!   it reconnects. Pub/sub would drop it.
//! - `{ns}:epoch`: a random value the first instance to connect sets; when
//!   Redis restarts empty (or is flushed), it changes, and every instance
//!   knows its log lost what it had not read yet.
//!
//! On a cluster, every script touches the keys of one bucket, hence one
//! slot; a purge by tag runs in each bucket (each has its own index), a
//! purge by path, prefix or of everything SCANs every master, and the log,
//! in one slot, is read by every instance as on one node.
//!
//! Purges are never lost. One accepted here is applied to this instance's
//! memory at once and queued; a background task (the pump) applies it in
//! Redis (generation first, then the deletions) and appends it to the log,
//! in order, retrying until Redis answers; only then is it taken off the
//! queue. While anything is queued, this instance does not read Redis (an
//! entry there may be one the queued purge will delete). An instance that
//! cannot know what it missed (the epoch changed, or the log was trimmed
//! past its last id) drops its whole memory tier: that covers any purge it
//! missed, at the cost of some renders.
//!
//! Failure is never the user's problem: every call has a timeout; an error
//! or a timeout drops the connection and the tier stays off for a short
//! back-off, during which the cache runs on memory alone; then it
//! reconnects by itself. The first failure is logged at `warn`, the
//! recovery at `info`, nothing in between.

mod config;
mod conn;
mod health;
mod keys;
mod purge;
mod purge_log;
mod read;
mod refresh;
mod render_lock;
mod tier;
mod write;

pub use config::{InvalidRedisUrl, RedisKeys, RedisTier};
pub(crate) use purge::Purge;
pub(crate) use read::Wanted;
pub(crate) use refresh::BeforeRefresh;
pub(crate) use render_lock::RenderLock;
pub(crate) use tier::Tier;
