//! A bounded pool for compression jobs, off the request path.
//!
//! Jobs run on tokio's blocking threads (`spawn_blocking`) behind a
//! semaphore, so at most `size` compress at once whatever the load, and the
//! async workers that serve hits never run an encoder. At most `max_queue`
//! jobs wait or run; past that a job is refused and the caller keeps what
//! it has. A job that never runs (the runtime shut down) is harmless: its
//! representation is simply never made.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Why a job was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_queue` jobs are waiting or running.
    Full,
    /// Not called from within a tokio runtime.
    NoRuntime,
}

/// The pool; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    permits: Arc<Semaphore>,
    /// Jobs accepted and not yet finished.
    queued: Arc<AtomicUsize>,
    max_queue: usize,
}

/// Decrements the queue count when the job is done or dropped unrun.
struct Queued(Arc<AtomicUsize>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// A pool running at most `size` jobs at once (at least one) with at
    /// most `max_queue` accepted (at least one).
    pub(crate) fn new(size: usize, max_queue: usize) -> Self {
        Pool {
            permits: Arc::new(Semaphore::new(size.max(1))),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queue: max_queue.max(1),
        }
    }

    /// Jobs accepted and not yet finished.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Runs `job` on the blocking pool when a slot is free.
    ///
    /// # Errors
    ///
    /// [`Refused::Full`] past `max_queue`, [`Refused::NoRuntime`] outside
    /// a tokio runtime; `job` is then dropped unrun.
    pub(crate) fn spawn<F>(&self, job: F) -> Result<(), Refused>
    where
        F: FnOnce() + Send + 'static,
    {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Err(Refused::NoRuntime);
        };
        let taken = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_queue).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Refused::Full);
        }
        let queued = Queued(Arc::clone(&self.queued));
        let permits = Arc::clone(&self.permits);
        drop(handle.spawn(async move {
            // Kept so the count drops with the job, run or not.
            let _queued = queued;
            // The semaphore is never closed.
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            // Held until the job ends: the permit bounds running jobs.
            let _ = tokio::task::spawn_blocking(job).await;
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn outside_a_runtime_jobs_are_refused() {
        let pool = Pool::new(1, 10);
        assert_eq!(pool.spawn(|| {}), Err(Refused::NoRuntime));
        assert_eq!(pool.queued(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_and_the_queue_empties() {
        let pool = Pool::new(2, 100);
        let (tx, rx) = mpsc::channel();
        for i in 0..10 {
            let tx = tx.clone();
            pool.spawn(move || tx.send(i).unwrap()).unwrap();
        }
        drop(tx);
        let mut got: Vec<i32> = tokio::task::spawn_blocking(move || rx.iter().collect())
            .await
            .unwrap();
        got.sort_unstable();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        while pool.queued() > 0 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_size_jobs_run_at_once() {
        let pool = Pool::new(2, 100);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = shared_channel();
        let (done_tx, done_rx) = mpsc::channel();
        for _ in 0..6 {
            let (running, most, release, done) = (
                Arc::clone(&running),
                Arc::clone(&most),
                Arc::clone(&release_rx),
                done_tx.clone(),
            );
            pool.spawn(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Wait to be released, one job per message.
                let _ = release.lock().unwrap().recv();
                running.fetch_sub(1, Ordering::SeqCst);
                done.send(()).unwrap();
            })
            .unwrap();
        }
        drop(done_tx);
        // Wait until two jobs hold their slots, then release all, one by
        // one: a third could only have started past the semaphore.
        while running.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.queued(), 6);
        for _ in 0..6 {
            release_tx.send(()).unwrap();
        }
        let finished = tokio::task::spawn_blocking(move || done_rx.iter().count())
            .await
            .unwrap();
        assert_eq!(finished, 6);
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    /// A channel whose receiver several jobs share.
    fn shared_channel() -> (mpsc::Sender<()>, Arc<std::sync::Mutex<mpsc::Receiver<()>>>) {
        let (tx, rx) = mpsc::channel();
        (tx, Arc::new(std::sync::Mutex::new(rx)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_max_queue_jobs_are_refused_until_one_finishes() {
        let pool = Pool::new(1, 2);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        let done = done_tx.clone();
        pool.spawn(move || {
            let _ = release_rx.recv();
            done.send(()).unwrap();
        })
        .unwrap();
        let done = done_tx.clone();
        pool.spawn(move || done.send(()).unwrap()).unwrap();
        assert_eq!(pool.spawn(|| {}), Err(Refused::Full));
        release_tx.send(()).unwrap();
        let rx = tokio::task::spawn_blocking(move || {
            done_rx.recv().unwrap();
            done_rx.recv().unwrap();
            done_rx
        })
        .await
        .unwrap();
        while pool.queued() > 0 {
            tokio::task::yield_now().await;
        }
        let done = done_tx.clone();
        pool.spawn(move || done.send(()).unwrap()).unwrap();
        tokio::task::spawn_blocking(move || rx.recv().unwrap())
            .await
            .unwrap();
    }
}
