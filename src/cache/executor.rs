//! Where background refreshes run.

use std::future::Future;
use std::pin::Pin;

/// A background task of the cache (a `stale-while-revalidate` refresh).
pub type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Runs the cache's background work: `stale-while-revalidate` refreshes,
/// and the fetch of a request that others wait for, so that it goes on
/// when its client hangs up.
///
/// With the `tokio` feature (on by default) the cache uses
/// [`TokioSpawner`]. Any `Fn(Task)` closure is an executor too, for other
/// runtimes. A task that is dropped unrun is harmless: the refresh it
/// carried is tried again by a later request.
///
/// # Example
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use tower_ssr::cache::{CacheLayer, Executor, ResponseCache, Task};
///
/// // Any runtime: here, a closure that counts and runs tasks on a thread.
/// let spawned = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&spawned);
/// let executor = move |task: Task| {
///     counter.fetch_add(1, Ordering::Relaxed);
///     std::thread::spawn(move || futures_lite_block_on(task));
/// };
/// # fn futures_lite_block_on(task: Task) {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(task)
/// # }
/// executor.execute(Box::pin(async {}));
/// assert_eq!(spawned.load(Ordering::Relaxed), 1);
/// let layer = CacheLayer::new(ResponseCache::new()).executor(executor);
/// # let _ = layer;
/// ```
pub trait Executor: Send + Sync + 'static {
    /// Runs `task` to completion in the background.
    fn execute(&self, task: Task);
}

impl<F> Executor for F
where
    F: Fn(Task) + Send + Sync + 'static,
{
    fn execute(&self, task: Task) {
        self(task);
    }
}

/// Spawns background refreshes on the current tokio runtime; outside a
/// runtime the refresh is skipped (a later request tries again). The
/// default executor with the `tokio` feature.
///
/// Not hyper-util's `TokioExecutor` (which runs hyper's connection tasks);
/// this one was called `TokioExecutor` too, hence the rename.
///
/// # Example
///
/// ```
/// use tower_ssr::cache::{CacheLayer, ResponseCache, TokioSpawner};
///
/// let layer = CacheLayer::new(ResponseCache::new()).executor(TokioSpawner);
/// # let _ = layer;
/// ```
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSpawner;

#[cfg(feature = "tokio")]
impl Executor for TokioSpawner {
    fn execute(&self, task: Task) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            drop(handle.spawn(task));
        }
    }
}

/// The old name of [`TokioSpawner`].
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[deprecated(
    since = "0.2.0",
    note = "renamed `TokioSpawner` (hyper-util has a `TokioExecutor` of its own)"
)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioExecutor;

#[cfg(feature = "tokio")]
#[allow(deprecated)]
impl Executor for TokioExecutor {
    fn execute(&self, task: Task) {
        TokioSpawner.execute(task);
    }
}
