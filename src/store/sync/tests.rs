//! Unit tests of the sync thread: epochs, lazy writes, waiting for the workers.
use super::*;
use crate::store::fs::RealFs;

/// A journal that wrote nothing but asks for a directory to be synced.
struct DirOnly {
    dir: PathBuf,
    removed: bool,
}

impl Journal for DirOnly {
    fn flush(&self) -> io::Result<ToSync> {
        Ok((Vec::new(), vec![self.dir.clone()]))
    }
    fn removed(&self) -> bool {
        self.removed
    }
}

fn gone_dir() -> PathBuf {
    std::env::temp_dir().join(format!("lepus-sync-gone-{}", std::process::id()))
}

/// A journal that counts its flushes.
#[derive(Default)]
struct Counting {
    flushes: std::sync::atomic::AtomicUsize,
}

impl Journal for Counting {
    fn flush(&self) -> io::Result<ToSync> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok((Vec::new(), Vec::new()))
    }
}

/// A journal whose flush stands for another thread's fsync failing (`fail_stop`) while
/// the sync thread is in the middle of the cycle.
struct FailsElsewhere(std::sync::Weak<Shared>);

impl Journal for FailsElsewhere {
    fn flush(&self) -> io::Result<ToSync> {
        if let Some(shared) = self.0.upgrade() {
            let turn = shared.sync_turn();
            shared.fail_stop(&turn, &io::Error::other("EIO"), "a test");
        }
        Ok((Vec::new(), Vec::new()))
    }
}

/// Regression: a directory fsync failing on another thread (segment preparation,
/// compaction, the definitions snapshot) during a cycle failed only the epochs after the
/// cycle's, and the cycle's own epoch read as durable: its publishes were confirmed
/// though the failure may have taken the error its own fsync would have seen.
#[test]
fn a_failure_outside_the_sync_thread_fails_the_epoch_being_synced() {
    let shared = Arc::new(Shared::new(1 << 20, Arc::new(RealFs)));
    shared.mark_dirty(Arc::new(FailsElsewhere(Arc::downgrade(&shared))));
    let epoch = shared.epoch();
    assert!(sync_once(&shared));
    assert_eq!(shared.outcome(epoch), Outcome::Failed);
    assert_eq!(
        shared.synced(),
        u64::MAX,
        "every epoch is settled, none left pending"
    );
    assert!(shared.failed(shared.epoch()), "and later ones fail too");
}

/// A failed epoch is never forgotten as durable: past the ones kept one by one, every
/// epoch up to the last let go reads as failed.
#[test]
fn a_failed_epoch_let_go_still_reads_as_failed() {
    let shared = Shared::new(1 << 20, Arc::new(RealFs));
    for epoch in 1..=FAILED_EPOCHS_KEPT as u64 + 2 {
        shared.fail_epoch(epoch * 2);
    }
    assert!(shared.failed(2), "the first failed epoch, let go");
    assert!(shared.failed(4));
    assert!(
        shared.failed(FAILED_EPOCHS_KEPT as u64 * 2 + 4),
        "the last, kept"
    );
    assert!(
        !shared.failed(FAILED_EPOCHS_KEPT as u64 * 2 + 5),
        "one that never failed"
    );
}

#[test]
fn a_lazy_write_goes_with_the_next_cycle_for_a_write_that_waits() {
    let shared = Shared::new(1 << 20, Arc::new(RealFs));
    let (lazy, eager) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
    shared.mark_lazy(lazy.clone());
    shared.mark_dirty(eager.clone());
    let epoch = shared.epoch();
    assert!(sync_once(&shared));
    assert_eq!(shared.outcome(epoch), Outcome::Durable);
    assert_eq!(lazy.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(eager.flushes.load(Ordering::SeqCst), 1);
    assert!(!sync_once(&shared), "nothing is left for another cycle");
}

#[test]
fn a_lazy_write_alone_is_written_by_the_sync_thread_without_a_wake_per_write() {
    let shared = Arc::new(Shared::new(1 << 20, Arc::new(RealFs)));
    let thread = {
        let shared = shared.clone();
        std::thread::spawn(move || sync_loop(&shared))
    };
    let journal = Arc::new(Counting::default());
    shared.mark_lazy(journal.clone());
    // Written once LAZY_WRITE_MS have passed; the bound here is only against a hang.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while journal.flushes.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < give_up {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(journal.flushes.load(Ordering::SeqCst), 1);
    shared.request_stop();
    assert!(thread.join().is_ok());
}

/// Waits (up to a bound that only guards against a hang) until `journal` was flushed.
fn flushed(journal: &Counting) -> usize {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while journal.flushes.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < give_up {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    journal.flushes.load(Ordering::SeqCst)
}

#[test]
fn a_cycle_waits_for_busy_workers_but_not_for_ever() {
    use crate::store::idle::{note_worker_busy, register};
    let shared = Arc::new(Shared::new(1 << 20, Arc::new(RealFs)));
    let weak: std::sync::Weak<dyn crate::store::idle::WakeOnIdle> = Arc::downgrade(&shared) as _;
    register(weak);
    let thread = {
        let shared = shared.clone();
        std::thread::spawn(move || sync_loop(&shared))
    };
    // This thread plays a runtime worker that never runs out of work: the cycle starts
    // anyway, IDLE_WAIT_MAX_US later.
    note_worker_busy(true);
    let busy = Arc::new(Counting::default());
    shared.mark_dirty(busy.clone());
    assert_eq!(flushed(&busy), 1);
    // A worker that parks lets the waiting cycle start.
    let parked = Arc::new(Counting::default());
    shared.mark_dirty(parked.clone());
    note_worker_busy(false);
    assert_eq!(flushed(&parked), 1);
    shared.request_stop();
    assert!(thread.join().is_ok());
}

#[test]
fn lazy_writes_are_written_when_the_store_stops() {
    let shared = Arc::new(Shared::new(1 << 20, Arc::new(RealFs)));
    let journal = Arc::new(Counting::default());
    shared.mark_lazy(journal.clone());
    shared.request_stop();
    sync_loop(&shared);
    assert_eq!(journal.flushes.load(Ordering::SeqCst), 1);
}

#[test]
fn a_directory_deleted_with_its_queue_during_a_sync_is_no_failed_fsync() {
    // Regression: a queue deleted between its log's flush and the directory sync made
    // the whole store read-only (found by benches' large-message run).
    let shared = Shared::new(1 << 20, Arc::new(RealFs));
    shared.mark_dirty(Arc::new(DirOnly {
        dir: gone_dir(),
        removed: true,
    }));
    assert!(sync_once(&shared));
    assert!(shared.writable());
}

#[test]
fn a_directory_missing_from_a_live_journal_still_fails_the_store() {
    let shared = Shared::new(1 << 20, Arc::new(RealFs));
    shared.mark_dirty(Arc::new(DirOnly {
        dir: gone_dir(),
        removed: false,
    }));
    assert!(sync_once(&shared));
    assert!(!shared.writable());
}

/// A journal with one file to sync.
struct FlushesFile(Arc<SlowFile>);

impl Journal for FlushesFile {
    fn flush(&self) -> io::Result<ToSync> {
        Ok((vec![self.0.clone() as Arc<dyn FileIo>], Vec::new()))
    }
}

/// A file whose fsync takes a while, and says which epoch's fsync last started.
#[derive(Debug, Default)]
struct SlowFile {
    /// The epoch the next fsync is for.
    epoch: AtomicU64,
    /// The epoch whose fsync started last.
    started: AtomicU64,
}

impl FileIo for SlowFile {
    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Ok(())
    }
    fn read_exact_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(0)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.started
            .store(self.epoch.load(Ordering::SeqCst), Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(5));
        Ok(())
    }
    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }
}

/// Regression (the window earlier notes left open): an fsync outside the sync thread (a
/// directory synced after a rename) could run after a cycle's fsync started and before its
/// epoch was published. Had it failed, taking the error the cycle's fsync would have seen,
/// the epoch was confirmed before `fail_stop` ran. Outside fsyncs now take a turn the sync
/// thread holds from its fsyncs to the publish.
#[test]
fn no_fsync_elsewhere_runs_between_a_cycles_fsync_and_its_publish() {
    let shared = Arc::new(Shared::new(1 << 20, Arc::new(RealFs)));
    let file = Arc::new(SlowFile::default());
    let done = Arc::new(AtomicBool::new(false));
    let elsewhere = {
        let (shared, file, done) = (shared.clone(), file.clone(), done.clone());
        std::thread::spawn(move || {
            let mut overlapped = false;
            while !done.load(Ordering::SeqCst) {
                let _turn = shared.sync_turn();
                overlapped |= file.started.load(Ordering::SeqCst) > shared.synced();
                drop(_turn);
                std::thread::yield_now();
            }
            overlapped
        })
    };
    for _ in 0..20 {
        let epoch = shared.epoch();
        file.epoch.store(epoch, Ordering::SeqCst);
        shared.mark_dirty(Arc::new(FlushesFile(file.clone())));
        assert!(sync_once(&shared));
        assert_eq!(shared.outcome(epoch), Outcome::Durable);
    }
    done.store(true, Ordering::SeqCst);
    assert!(
        !elsewhere.join().unwrap_or(true),
        "an fsync elsewhere ran while a cycle's epoch was synced but not published"
    );
}
