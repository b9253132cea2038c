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
/// [`TokioExecutor`]. Any `Fn(Task)` closure is an executor too, for other
/// runtimes. A task that is dropped unrun is harmless: the refresh it
/// carried is tried again by a later request.
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
/// runtime the refresh is skipped (a later request tries again).
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioExecutor;

#[cfg(feature = "tokio")]
impl Executor for TokioExecutor {
    fn execute(&self, task: Task) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            drop(handle.spawn(task));
        }
    }
}
