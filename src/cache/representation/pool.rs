//! A bounded pool for compression jobs, off the request path.
//!
//! Jobs run on `size` threads of the pool's own, started at the first job
//! and ended when the pool is dropped, so at most `size` compress at once
//! whatever the load, and the async workers that serve hits never run an
//! encoder. At most `max_queue` jobs wait or run; past that a job is
//! refused and the caller keeps what it has. A job that never runs is
//! harmless: its representation is simply never made.
//!
//! Why not tokio's blocking pool: it runs each job on whichever of up to
//! 512 threads is free, and starts a new one when the last job's thread
//! has not yet marked itself idle. glibc gives each thread its own heap
//! arena, and each arena kept an encoder's working memory (brotli at
//! quality 11, zstd at 19, gzip at 9: about 1.7 MiB): with 10 KiB pages
//! through a 64 MiB cache, seven such threads held 12 MiB nothing counted
//! (issue 8 §6). A fixed set of threads holds it once per thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::runtime::Handle;

/// Why a job was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_queue` jobs are waiting or running.
    Full,
    /// Not called from within a tokio runtime (a job may spawn tasks, as
    /// the Redis tier's write of the made codings does).
    NoRuntime,
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The pool; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    size: usize,
    /// Jobs accepted and not yet finished.
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    /// The threads' queue, made with the threads at the first job. Dropping
    /// it (with the pool) ends them once the jobs queued are done.
    sender: OnceLock<Mutex<Sender<Job>>>,
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
    /// most `max_queue` accepted (at least one). No thread starts before
    /// the first job.
    pub(crate) fn new(size: usize, max_queue: usize) -> Self {
        Pool {
            inner: Arc::new(Inner {
                size: size.max(1),
                queued: Arc::new(AtomicUsize::new(0)),
                max_queue: max_queue.max(1),
                sender: OnceLock::new(),
            }),
        }
    }

    /// Jobs accepted and not yet finished.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Acquire)
    }

    /// Runs `job` on one of the pool's threads, within the calling task's
    /// tokio runtime (so it may spawn tasks), when a thread is free.
    ///
    /// # Errors
    ///
    /// [`Refused::Full`] past `max_queue`, [`Refused::NoRuntime`] outside
    /// a tokio runtime; `job` is then dropped unrun. A pool whose threads
    /// could not be started refuses as full.
    pub(crate) fn spawn<F>(&self, job: F) -> Result<(), Refused>
    where
        F: FnOnce() + Send + 'static,
    {
        let Ok(handle) = Handle::try_current() else {
            return Err(Refused::NoRuntime);
        };
        let inner = &self.inner;
        let taken = inner
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < inner.max_queue).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Refused::Full);
        }
        let queued = Queued(Arc::clone(&inner.queued));
        let job: Job = Box::new(move || {
            // Kept so the count drops with the job, run or not.
            let _queued = queued;
            let _runtime = handle.enter();
            // While the job runs, a blocking task of the runtime's waits
            // for it: a paused tokio clock (`test-util`) then stands still
            // until the codings are stored, as it did when jobs were
            // blocking tasks themselves, instead of running ahead (a page
            // fresh for a second went stale and was refreshed again and
            // again before its job was done). The waiter runs no encoder
            // (its thread's heap holds nothing of one); like the job
            // before, a running one holds the runtime's drop until done.
            let (running, done) = channel::<()>();
            let waiter = catch_unwind(AssertUnwindSafe(|| {
                handle.spawn_blocking(move || {
                    let _ = done.recv();
                })
            }));
            drop(waiter);
            job();
            drop(running);
        });
        let sender = inner.sender.get_or_init(|| Mutex::new(start(inner.size)));
        let sent = sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(job);
        // Only when no thread could be started: the job (and its count)
        // is dropped with the error.
        sent.map_err(|_| Refused::Full)
    }
}

/// Starts `size` threads taking jobs from one queue, and returns its
/// sending end. Threads the system refuses are not retried; with none at
/// all every job is refused.
fn start(size: usize) -> Sender<Job> {
    let (sender, receiver) = channel::<Job>();
    let receiver = Arc::new(Mutex::new(receiver));
    for _ in 0..size {
        let receiver = Arc::clone(&receiver);
        let started = std::thread::Builder::new()
            .name("tower-ssr-compress".into())
            .spawn(move || work(&receiver));
        if let Err(error) = started {
            // The system is out of threads: more attempts (a `jobs` far
            // past the cores) would only spin.
            tracing::warn!(%error, "compression thread not started");
            break;
        }
    }
    sender
}

/// One thread's loop: jobs until the queue's sender is gone.
fn work(receiver: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting, never while a job runs.
        let next = receiver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recv();
        let Ok(job) = next else { return };
        // An encoder that panics loses its own job, not the thread.
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a compression job panicked");
        }
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_on_no_more_than_size_threads() {
        // tokio's blocking pool spread one job at a time over seven
        // threads, each keeping an encoder's memory in its own arena.
        let pool = Pool::new(2, 1000);
        let (tx, rx) = mpsc::channel();
        for _ in 0..200 {
            let tx = tx.clone();
            pool.spawn(move || tx.send(std::thread::current().id()).unwrap())
                .unwrap();
            tokio::task::yield_now().await;
        }
        drop(tx);
        let threads = tokio::task::spawn_blocking(move || {
            rx.iter().collect::<std::collections::HashSet<_>>()
        })
        .await
        .unwrap();
        assert!(
            (1..=2).contains(&threads.len()),
            "{} threads",
            threads.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_panics_does_not_stop_the_next() {
        let pool = Pool::new(1, 10);
        pool.spawn(|| panic!("an encoder bug")).unwrap();
        let (tx, rx) = mpsc::channel();
        pool.spawn(move || tx.send(()).unwrap()).unwrap();
        tokio::task::spawn_blocking(move || rx.recv().unwrap())
            .await
            .unwrap();
        while pool.queued() > 0 {
            tokio::task::yield_now().await;
        }
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
