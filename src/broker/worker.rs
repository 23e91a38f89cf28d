//! A background thread for work that must not run inside the call that caused it.
//!
//! Dead-lettering is the reason: a queue that drops a message for its dead-letter exchange
//! must not publish into the next queue from inside its own call, or a chain of queues turns
//! into a chain of nested calls (and a stack overflow). The vhost submits the routing of dead
//! letters here as a job instead; jobs run one after another, in submission order, on this
//! thread, and a job that causes more dead letters only submits more jobs. So one event costs
//! its caller a push onto a list, and a long chain costs this thread time, not stack.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// A unit of background work.
pub type Job = Box<dyn FnOnce() + Send>;

/// At shutdown, at most this many queued jobs still run; the rest are dropped (dead letters in
/// flight are at-most-once in RabbitMQ too).
const DRAIN_AT_STOP_JOBS: usize = 100_000;

struct Inner {
    jobs: Mutex<VecDeque<Job>>,
    wake: Condvar,
    stop: AtomicBool,
}

/// The broker's background worker.
pub struct Worker {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Units of work waiting in submitted jobs (dead letters), against a bound the
    /// submitter chooses ([`Worker::reserve`]).
    waiting: AtomicUsize,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts the worker thread.
    pub fn start(name: &str) -> std::io::Result<Arc<Worker>> {
        let inner = Arc::new(Inner {
            jobs: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let run = inner.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run_jobs(&run))?;
        Ok(Arc::new(Worker {
            inner,
            thread: Mutex::new(Some(thread)),
            waiting: AtomicUsize::new(0),
        }))
    }

    /// Counts `n` more units of work as waiting, unless that would make more than `max`:
    /// then nothing is counted and the caller drops the work.
    pub fn reserve(&self, n: usize, max: usize) -> bool {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                w.checked_add(n).filter(|&total| total <= max)
            })
            .is_ok()
    }

    /// `n` units of work counted by [`Worker::reserve`] are done (or dropped).
    pub fn release(&self, n: usize) {
        let _ = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some(w.saturating_sub(n))
            });
    }

    /// Queues a job; it runs after every job queued before it.
    pub fn submit(&self, job: Job) {
        let mut jobs = self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.push_back(job);
        if jobs.len() == 1 {
            self.inner.wake.notify_one();
        }
    }

    /// Runs what is queued (up to a bound), then stops the thread.
    pub fn stop(&self) {
        // Under the lock the thread checks `stop` under before it waits, or the notification
        // could come between the two and the thread sleep through it (and `join` hang).
        let jobs = self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.stop.store(true, Ordering::SeqCst);
        drop(jobs);
        self.inner.wake.notify_one();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

fn run_jobs(inner: &Inner) {
    let mut after_stop = 0usize;
    loop {
        let job = {
            let mut jobs = inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(job) = jobs.pop_front() {
                    break job;
                }
                if inner.stop.load(Ordering::SeqCst) {
                    return;
                }
                jobs = inner.wake.wait(jobs).unwrap_or_else(|e| e.into_inner());
            }
        };
        if inner.stop.load(Ordering::SeqCst) {
            after_stop += 1;
            if after_stop > DRAIN_AT_STOP_JOBS {
                return;
            }
        }
        // A job that panics (a bug) must not take the worker, and every later dead letter,
        // with it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("a background job panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn jobs_run_in_order_and_may_submit_more() {
        let worker = Worker::start("test-worker").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicU64::new(0));
        for i in 0..3 {
            let (seen, done, w) = (seen.clone(), done.clone(), worker.clone());
            worker.submit(Box::new(move || {
                seen.lock().unwrap().push(i);
                let done = done.clone();
                w.submit(Box::new(move || {
                    done.fetch_add(1, Ordering::SeqCst);
                }));
            }));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while done.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(done.load(Ordering::SeqCst), 3);
        worker.stop();
    }
}
