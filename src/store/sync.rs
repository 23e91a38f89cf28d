//! The sync thread and its epochs: group commit for every file the store writes.
//!
//! One thread (`sync_loop`) does every write and every fsync. Writers (queue logs, the
//! definitions journal) append to a buffer under their own lock, register themselves as
//! dirty if they are not yet, and read the current epoch, all in that one critical section.
//! The thread, in a loop: takes the dirty list and bumps the epoch (one step, under the dirty
//! lock), writes each buffer, syncs every file written and every directory whose entries
//! changed, then publishes the old epoch as synced. So one sync covers every writer waiting at
//! that moment, with no timer.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};

use tokio::sync::watch;

use super::fs::{FileIo, Fs};
use super::seal::SealKey;

/// How long the sync thread waits before retrying writes that failed (a full disk).
const SYNC_RETRY_MS: u64 = 100;

/// At most how long a lazy write (an acknowledgement or a delivery mark, which nothing waits
/// for) stays buffered when no other write comes to carry it to disk.
pub const LAZY_WRITE_MS: u64 = 200;

/// Failed epochs remembered one by one for waiters that look late; far more than can be in
/// flight. Older ones are not forgotten: every epoch up to the last one let go counts as
/// failed (`Failed::forgotten_upto`), since a forgotten failure must never read as durable.
const FAILED_EPOCHS_KEPT: usize = 65_536;

/// The epochs some of whose writes failed.
#[derive(Default)]
struct Failed {
    /// The latest `FAILED_EPOCHS_KEPT` of them.
    epochs: BTreeSet<u64>,
    /// Every epoch up to this one reads as failed (0: none): the failed epochs let go of
    /// were all at or below it. A durable one among them reads as failed too, which makes
    /// a late waiter give up on a write that lasted, never trust one that did not.
    forgotten_upto: u64,
}

/// What became of the writes of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not synced yet.
    Pending,
    /// On disk.
    Durable,
    /// A write or a sync covering them failed: they must not be confirmed.
    Failed,
}

/// What a journal's flush leaves to sync: the files it wrote, and the directories whose
/// entries changed.
pub type ToSync = (Vec<Arc<dyn FileIo>>, Vec<PathBuf>);

/// Something with buffered writes the sync thread must write and sync.
///
/// The protocol that makes one sync cover every waiting writer: a writer appends, registers
/// the journal if it is not registered, and reads [`Shared::epoch`], all inside the journal's
/// own lock. The sync thread starts an epoch and takes the registered journals in one step,
/// then flushes each under its lock. So an append is flushed and synced before the epoch its
/// writer read is published. After a sync that left no journal registered, the sync thread
/// publishes the next epoch too (under the same lock writers register under), so a writer
/// that appended while that cycle was running does not wait for a cycle that never comes.
///
/// Writes nobody waits for (acknowledgements, delivery marks) register lazily
/// ([`Shared::mark_lazy`]): they read no epoch, and every cycle takes them along, so a write
/// that waits and was appended after a lazy one makes it durable too (an ack followed by a
/// confirmed publish on the same channel is on disk, as `tests/crash.rs` checks).
pub trait Journal: Send + Sync {
    /// Writes what is buffered; returns the files and the directories (whose entries
    /// changed) to sync. On an error, what was buffered stays buffered, to be written again.
    fn flush(&self) -> io::Result<ToSync>;
    /// Work to do outside the publish path after a sync (preparing the next segment).
    fn after_sync(self: Arc<Self>) {}
    /// Whether the journal was deleted with its directory (its queue was deleted), so that
    /// a directory it asked to sync may be gone.
    fn removed(&self) -> bool {
        false
    }
}

/// State shared by the store, its logs and the sync thread.
pub struct Shared {
    /// Size of a segment file.
    pub segment_bytes: u64,
    /// The file system everything is written to.
    pub fs: Arc<dyn Fs>,
    /// How records are sealed: the data directory's key (`store::seal`).
    pub seals: SealKey,
    /// Epochs some of whose writes failed (the disk was full, or refused a write).
    failed: Mutex<Failed>,
    /// Some epoch ever failed: until then `failed` need not be looked at.
    ever_failed: AtomicBool,
    /// From this epoch on nothing is durable: an fsync failed (`u64::MAX` while healthy).
    read_only_from: AtomicU64,
    /// The last cycle could not write everything: the disk is full or failing.
    write_failing: AtomicBool,
    /// Bytes roll-overs left behind writes in progress and not written yet
    /// (`store::write_out`), in every log of the store; past `UNWRITTEN_MAX_BYTES` the disk
    /// counts as failing.
    unwritten_bytes: AtomicU64,
    /// `UNWRITTEN_MAX_BYTES`, smaller in tests.
    unwritten_max_bytes: AtomicU64,
    /// Writes of queue logs in progress outside their locks: while one is, a roll-over
    /// leaves its bytes to the sync thread rather than write beside it (the device may have
    /// stopped answering).
    writes_in_flight: AtomicUsize,
    /// Journals with writes to make.
    dirty: Mutex<Dirty>,
    wake: Condvar,
    /// The epoch new writes belong to.
    epoch: AtomicU64,
    /// The last epoch whose writes are all on disk.
    synced: watch::Sender<u64>,
    /// Taken by the sync thread from its fsyncs until it has published their epoch, and by
    /// every fsync outside it until a failure is recorded (`Shared::sync_turn`). Linux may
    /// report a failed write-back only to the first fsync after it: were the two to overlap,
    /// a failure seen elsewhere could rob an epoch's own fsync of its error, and the epoch
    /// be confirmed before `fail_stop` ran.
    sync_turns: Mutex<()>,
    pub(super) stop: AtomicBool,
    /// The sync thread waits for the runtime's workers to run out of work (`store::idle`).
    waiting_for_idle: AtomicBool,
    /// Work the sync thread hands off so that no epoch waits for it (making and syncing the
    /// next segment); `None` in a store driven by hand, or once stopping, and
    /// then such work runs in place.
    background: Mutex<Option<mpsc::Sender<BackgroundJob>>>,
    /// The closer thread's queue (`Shared::close_in_background`), bounded by
    /// `CLOSES_QUEUED`; `None` as `background` is.
    closer: Mutex<Option<mpsc::SyncSender<BackgroundJob>>>,
}

/// At most this many bytes of queue logs, left by roll-overs, wait behind writes in
/// progress (`store::write_out`): past it a roll-over refuses the append, as a failed write
/// did, and the disk alarm holds publishers back until the writes catch up. Above the
/// largest message (`max_message_size`, 128 MiB): a healthy disk writing one large message
/// must not count as failing.
pub const UNWRITTEN_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Batches of files waiting for the closer thread, at most. Past it the caller closes them
/// itself, as it did before there was a closer: slower, but descriptors and deleted files'
/// disk space do not pile up behind a device that frees blocks slowly.
pub const CLOSES_QUEUED: usize = 64;

/// The journals the next cycle writes.
#[derive(Default)]
struct Dirty {
    /// Someone waits for these writes: the sync thread runs a cycle at once.
    eager: Vec<Arc<dyn Journal>>,
    /// Nobody waits for these (acknowledgements, delivery marks): they go with the next cycle,
    /// or once they have waited `LAZY_WRITE_MS`. A journal may be on both lists; its second
    /// flush in a cycle finds nothing to write.
    lazy: Vec<Arc<dyn Journal>>,
    /// When `lazy` became non-empty.
    lazy_since: Option<std::time::Instant>,
}

/// A turn at fsyncing the data directory (`Shared::sync_turn`), until dropped: the sync
/// thread's, from its fsyncs to their epoch's publish, or an fsync's elsewhere.
pub struct SyncTurn<'a> {
    /// Held, never read: the turn is the lock.
    _held: std::sync::MutexGuard<'a, ()>,
}

/// A piece of work for the store's background thread.
pub type BackgroundJob = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("epoch", &self.epoch.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Queues a journal for the next write and sync.
    pub fn mark_dirty(&self, journal: Arc<dyn Journal>) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let first = dirty.eager.is_empty();
        dirty.eager.push(journal);
        // Notified after the lock is let go: on one core the woken sync thread runs at once,
        // and would find the lock still held and sleep on it again (two more switches).
        // Only the first eager journal of a cycle wakes it: it looks at the list after that.
        drop(dirty);
        if first {
            self.wake.notify_one();
        }
    }

    /// Queues a journal whose writes nobody waits for: they are written with the next
    /// cycle, or within `LAZY_WRITE_MS`. Under a steady stream of acknowledgements this
    /// wakes the sync thread once per `LAZY_WRITE_MS`, not once per acknowledgement.
    pub fn mark_lazy(&self, journal: Arc<dyn Journal>) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.lazy.push(journal);
        if dirty.lazy_since.is_none() {
            dirty.lazy_since = Some(std::time::Instant::now());
            // The thread may be waiting with no deadline: it learns of one (after the lock
            // is let go, as in `mark_dirty`). Not while an eager journal waits: a cycle is
            // coming anyway, and takes this one along.
            let idle = dirty.eager.is_empty();
            drop(dirty);
            if idle {
                self.wake.notify_one();
            }
        }
    }

    /// The epoch to wait for, read after appending: once it is synced, the append is durable.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn synced(&self) -> u64 {
        *self.synced.borrow()
    }

    /// What became of the writes of `epoch`.
    pub fn outcome(&self, epoch: u64) -> Outcome {
        if epoch > self.synced() {
            Outcome::Pending
        } else if self.failed(epoch) {
            Outcome::Failed
        } else {
            Outcome::Durable
        }
    }

    /// Whether the writes of `epoch`, synced already, failed.
    pub fn failed(&self, epoch: u64) -> bool {
        if epoch >= self.read_only_from.load(Ordering::SeqCst) {
            return true;
        }
        // The common case, on the confirm path: no write has ever failed.
        if !self.ever_failed.load(Ordering::Acquire) {
            return false;
        }
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        epoch <= failed.forgotten_upto || failed.epochs.contains(&epoch)
    }

    /// Whether the store still writes: false for good after an fsync failed.
    pub fn writable(&self) -> bool {
        self.read_only_from.load(Ordering::SeqCst) == u64::MAX
    }

    /// Whether the last writes failed (a full or failing disk), the writes in progress are
    /// `UNWRITTEN_MAX_BYTES` behind (a device that stopped answering, or far slower than
    /// the appends), or the store stopped writing: publishers should be held back.
    pub fn write_failing(&self) -> bool {
        self.write_failing.load(Ordering::SeqCst)
            || self.unwritten_bytes.load(Ordering::SeqCst)
                > self.unwritten_max_bytes.load(Ordering::Relaxed)
            || !self.writable()
    }

    /// Counts `bytes` more taken to be written (`store::write_out`).
    pub(super) fn add_unwritten(&self, bytes: u64) {
        self.unwritten_bytes.fetch_add(bytes, Ordering::SeqCst);
    }

    /// Counts `bytes` taken to be written as written (or dropped with their log).
    pub(super) fn remove_unwritten(&self, bytes: u64) {
        // Never below zero, whatever the order of the two counts.
        let _ = self
            .unwritten_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                Some(b.saturating_sub(bytes))
            });
    }

    /// Sets the bound `UNWRITTEN_MAX_BYTES` is in the broker.
    #[cfg(test)]
    pub(super) fn set_unwritten_max_bytes(&self, bytes: u64) {
        self.unwritten_max_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Whether a queue log's write is in progress outside its lock.
    pub(super) fn writes_in_flight(&self) -> bool {
        self.writes_in_flight.load(Ordering::SeqCst) > 0
    }

    /// Notes that a write outside a log's lock starts (`true`) or ends.
    pub(super) fn note_write_in_flight(&self, starts: bool) {
        if starts {
            self.writes_in_flight.fetch_add(1, Ordering::SeqCst);
        } else {
            self.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits for the sync thread to have published the epoch its fsyncs are for, and keeps
    /// it from starting the next until the turn is let go: an fsync made outside the sync
    /// thread (a directory synced after a rename) runs, and a failure of it is recorded with
    /// [`Shared::fail_stop`], holding one. Held there for the fsync and nothing else; the
    /// sync thread holds it from its fsyncs to the publish of their epoch.
    pub fn sync_turn(&self) -> SyncTurn<'_> {
        SyncTurn {
            _held: self.sync_turns.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Stops the store for good after an fsync outside the sync thread failed (`turn` held
    /// across it). Linux reports a failed write-back once, to whoever syncs first: the sync
    /// thread's own next sync of the same directory could succeed without the lost entries
    /// being on disk. So nothing not yet synced is confirmed, as when the sync thread's fsync
    /// fails. Every epoch published before the turn was taken had its fsyncs done before
    /// this one started, and had their errors reported to them: those stay durable.
    pub fn fail_stop(&self, _turn: &SyncTurn<'_>, error: &io::Error, what: &str) {
        let epoch = self.synced().saturating_add(1);
        self.read_only_from.fetch_min(epoch, Ordering::SeqCst);
        self.synced.send_replace(u64::MAX);
        tracing::error!(
            %error,
            epoch,
            what,
            "an fsync of the data directory failed: nothing written since the last good sync is confirmed, and nothing more is written; restart the broker to recover from what is on disk"
        );
    }

    fn fail_epoch(&self, epoch: u64) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.epochs.insert(epoch);
        self.ever_failed.store(true, Ordering::Release);
        while failed.epochs.len() > FAILED_EPOCHS_KEPT {
            if let Some(oldest) = failed.epochs.pop_first() {
                failed.forgotten_upto = failed.forgotten_upto.max(oldest);
            }
        }
    }

    /// A receiver that changes whenever an epoch is synced.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.synced.subscribe()
    }
}

impl super::idle::WakeOnIdle for Shared {
    fn workers_idle(&self) {
        if self.waiting_for_idle.swap(false, Ordering::SeqCst) {
            // Once the lock the sync thread checked the workers under is free, it is waiting
            // (it waits on the condition, which lets the lock go): the notification finds it.
            drop(self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
            self.wake.notify_one();
        }
    }
}

impl Shared {
    /// State for a new store: epoch 1 is the first to be written, nothing synced yet.
    pub fn new(segment_bytes: u64, fs: Arc<dyn Fs>) -> Shared {
        let (synced, _) = watch::channel(0);
        Shared {
            segment_bytes,
            fs,
            seals: SealKey::ephemeral(),
            failed: Mutex::new(Failed::default()),
            ever_failed: AtomicBool::new(false),
            read_only_from: AtomicU64::new(u64::MAX),
            write_failing: AtomicBool::new(false),
            unwritten_bytes: AtomicU64::new(0),
            unwritten_max_bytes: AtomicU64::new(UNWRITTEN_MAX_BYTES),
            writes_in_flight: AtomicUsize::new(0),
            dirty: Mutex::new(Dirty::default()),
            wake: Condvar::new(),
            epoch: AtomicU64::new(1),
            synced,
            sync_turns: Mutex::new(()),
            stop: AtomicBool::new(false),
            waiting_for_idle: AtomicBool::new(false),
            background: Mutex::new(None),
            closer: Mutex::new(None),
        }
    }

    /// The same, sealing records with `seals` (the data directory's key).
    pub fn with_seals(self, seals: SealKey) -> Shared {
        Shared { seals, ..self }
    }

    /// Starts the thread that runs [`Shared::in_background`] work.
    pub fn start_background(&self) -> io::Result<std::thread::JoinHandle<()>> {
        let (tx, rx) = mpsc::channel::<BackgroundJob>();
        let thread = job_thread("lepus-prepare", rx)?;
        *self.background.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        Ok(thread)
    }

    /// Runs `job` on the background thread, or here if there is none.
    pub fn in_background(&self, job: BackgroundJob) {
        let sender = self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match sender {
            Some(tx) => {
                if let Err(mpsc::SendError(job)) = tx.send(job) {
                    job();
                }
            }
            None => job(),
        }
    }

    /// Starts the thread that closes deleted files (`Shared::close_in_background`). A thread
    /// of its own, not the background thread: a gigabyte of segments takes it 0.6 s to
    /// close, and the next segment of a busy log must not wait behind that.
    pub fn start_closer(&self) -> io::Result<std::thread::JoinHandle<()>> {
        let (tx, rx) = mpsc::sync_channel::<BackgroundJob>(CLOSES_QUEUED);
        let thread = job_thread("lepus-closer", rx)?;
        *self.closer.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        Ok(thread)
    }

    /// Runs `job` on the closer thread, or here if there is none or it is `CLOSES_QUEUED`
    /// jobs behind.
    pub(super) fn on_closer(&self, job: BackgroundJob) {
        let sender = self
            .closer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(tx) = sender else {
            return job();
        };
        if let Err(mpsc::TrySendError::Full(job) | mpsc::TrySendError::Disconnected(job)) =
            tx.try_send(job)
        {
            job();
        }
    }

    /// Closes the files of deleted segments on the closer thread. The last close of a
    /// deleted file is what frees its blocks, and on a file system mounted with `discard`
    /// it waits for the device: 5 ms for an 8 MiB segment, measured on ext4. A persistent
    /// backlog drained by a no-ack consumer spent 0.7 s of its 1.8 s in such closes, on the
    /// runtime worker and under the queue's lock, before they moved here. Unlink the file
    /// while it is open, then hand it here: the unlink itself is then cheap (30 us).
    /// Files someone else still holds are closed by them, and are left out (their handle
    /// is dropped here): list each file once, or neither handle counts as the last.
    pub fn close_in_background(&self, files: Vec<Arc<dyn FileIo>>) {
        let last: Vec<Arc<dyn FileIo>> = files
            .into_iter()
            .filter(|f| Arc::strong_count(f) == 1)
            .collect();
        if !last.is_empty() {
            self.on_closer(Box::new(move || drop(last)));
        }
    }

    /// Asks the sync thread to finish what is queued and stop.
    pub fn request_stop(&self) {
        self.background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.closer.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Under the lock the thread checks `stop` under before it waits: set between its
        // check and its wait, the notification would find nobody waiting, and the thread
        // would sleep through its stop (and `Store::close` wait for it for good).
        let dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        self.stop.store(true, Ordering::SeqCst);
        drop(dirty);
        self.wake.notify_all();
    }
}

/// A thread named `name` that runs the jobs `jobs` gives it, in order. It ends when the
/// store stops and drops the sender.
fn job_thread(
    name: &str,
    jobs: mpsc::Receiver<BackgroundJob>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Ok(job) = jobs.recv() {
                job();
            }
        })
}

/// The sync thread's loop; returns once stopped and idle.
///
/// The failure model: a write that fails (a full disk: `ENOSPC`, or `EIO`) fails the epoch
/// it belonged to, whose waiters are told (publishes are nacked, replies that wait for the
/// disk fail); what was buffered stays buffered and is written again every
/// `SYNC_RETRY_MS`, and while that fails [`Shared::write_failing`] holds publishers back.
/// When the disk has room again the store goes on by itself. An fsync that fails is fatal
/// for the store (the kernel may have dropped the dirty pages, so a retry that succeeds
/// would prove nothing): that epoch and every later one fail, nothing more is written, and
/// the data directory is recovered at the next start from what is on it.
pub fn sync_loop(shared: &Shared) {
    while let Some((journals, epoch)) = take_dirty(shared, true) {
        if !run_cycle(shared, journals, epoch, true) {
            return;
        }
    }
}

/// Runs one cycle now if something is dirty (for a store driven by hand, as the storage
/// fault simulation drives it). Returns whether there was anything to do.
pub fn sync_once(shared: &Shared) -> bool {
    match take_dirty(shared, false) {
        Some((journals, epoch)) => {
            run_cycle(shared, journals, epoch, false);
            true
        }
        None => false,
    }
}

/// Takes the dirty journals and starts the next epoch; waits for some with `wait` (until
/// stopped: then `None`). Lazy journals go with any cycle, and make one of their own once
/// they have waited `LAZY_WRITE_MS`.
fn take_dirty(shared: &Shared, wait: bool) -> Option<(Vec<Arc<dyn Journal>>, u64)> {
    let mut dirty = shared.dirty.lock().unwrap_or_else(|e| e.into_inner());
    while wait && dirty.eager.is_empty() && !shared.stop.load(Ordering::SeqCst) {
        let Some(since) = dirty.lazy_since else {
            dirty = shared.wake.wait(dirty).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        let due = since + std::time::Duration::from_millis(LAZY_WRITE_MS);
        let (woken, due_now) = wait_until(shared, dirty, due);
        dirty = woken;
        if due_now {
            break;
        }
    }
    if dirty.eager.is_empty() && dirty.lazy.is_empty() {
        return None;
    }
    if wait && !dirty.eager.is_empty() {
        // Let the workers finish what they are processing first (see `store::idle`).
        let give_up = super::idle::give_up_at();
        while super::idle::workers_busy(&shared.waiting_for_idle)
            && !shared.stop.load(Ordering::SeqCst)
        {
            let (woken, given_up) = wait_until(shared, dirty, give_up);
            dirty = woken;
            if given_up {
                break;
            }
        }
        shared.waiting_for_idle.store(false, Ordering::SeqCst);
    }
    // Taking the list and starting the next epoch happen together, under the lock a writer
    // registers under: a journal registered after this point reads a later epoch. Writers
    // read the epoch inside the same critical section as their append, so an append and the
    // epoch it waits for cannot fall apart (see `Journal`).
    let epoch = shared.epoch.fetch_add(1, Ordering::SeqCst);
    let mut journals = std::mem::take(&mut dirty.eager);
    journals.append(&mut dirty.lazy);
    dirty.lazy_since = None;
    Some((journals, epoch))
}

/// Waits on the sync thread's condition until `deadline` at the latest; says whether the
/// deadline had already passed (then without waiting).
fn wait_until<'a>(
    shared: &Shared,
    dirty: std::sync::MutexGuard<'a, Dirty>,
    deadline: std::time::Instant,
) -> (std::sync::MutexGuard<'a, Dirty>, bool) {
    let now = std::time::Instant::now();
    if now >= deadline {
        return (dirty, true);
    }
    let (dirty, _) = shared
        .wake
        .wait_timeout(dirty, deadline - now)
        .unwrap_or_else(|e| e.into_inner());
    (dirty, false)
}

/// One cycle: write, sync, publish the outcome. Returns false when the thread must stop.
fn run_cycle(shared: &Shared, journals: Vec<Arc<dyn Journal>>, epoch: u64, pause: bool) -> bool {
    tracing::trace!(epoch, journals = journals.len(), "sync cycle");
    if !shared.writable() {
        // Read-only after a failed fsync: nothing is written (every epoch has failed).
        return true;
    }
    // Held from the cycle's fsyncs until its epoch is published (`Shared::sync_turns`).
    let Cycle {
        retry,
        turn,
        files: synced_files,
    } = sync_cycle(shared, &journals, epoch);
    let failed_writes = !retry.is_empty();
    shared.write_failing.store(failed_writes, Ordering::SeqCst);
    if failed_writes {
        shared.fail_epoch(epoch);
    }
    // Only upwards: a store stopped by this cycle's own failed fsync has published u64::MAX,
    // every epoch settled, and must not go back to `epoch`, which would leave every later
    // one pending for good. (No `fail_stop` elsewhere can run meanwhile: the turn is held.)
    if shared.writable() {
        shared.synced.send_if_modified(|synced| {
            let later = *synced < epoch;
            if later {
                *synced = epoch;
            }
            later
        });
    }
    if failed_writes {
        drop(turn);
        shared.close_in_background(synced_files);
        if shared.stop.load(Ordering::SeqCst) {
            // Shutting down on a failing disk: what was not written is not confirmed.
            return false;
        }
        if pause {
            std::thread::sleep(std::time::Duration::from_millis(SYNC_RETRY_MS));
        }
        let mut dirty = shared.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.eager.extend(retry);
        return true;
    }
    tracing::trace!(epoch, "synced");
    {
        // Nothing left to write: everything appended so far is on disk, including appends
        // that read the epoch after it was bumped above.
        let dirty = shared.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if dirty.eager.is_empty() && shared.writable() {
            let e = shared.epoch.fetch_add(1, Ordering::SeqCst);
            shared.synced.send_replace(e);
            tracing::trace!(epoch = e, "synced (idle)");
        }
    }
    drop(turn);
    // A segment deleted since its flush is closed last, after the publish: closing a
    // deleted file may take milliseconds, and no confirm waits for it.
    shared.close_in_background(synced_files);
    if shared.writable() {
        for j in &journals {
            j.clone().after_sync();
        }
    }
    true
}

/// What a cycle's writes and fsyncs leave to do.
struct Cycle<'a> {
    /// The journals whose writes failed, to be written again.
    retry: Vec<Arc<dyn Journal>>,
    /// The turn its fsyncs took, for the epoch to be published under.
    turn: SyncTurn<'a>,
    /// The files it synced, to be closed after the publish: those of deleted segments may
    /// hold their last reference.
    files: Vec<Arc<dyn FileIo>>,
}

/// Writes and syncs what the journals buffered; an fsync that fails makes the store
/// read-only from `epoch` on.
fn sync_cycle<'a>(shared: &'a Shared, journals: &[Arc<dyn Journal>], epoch: u64) -> Cycle<'a> {
    let mut files: Vec<Arc<dyn FileIo>> = Vec::new();
    // Each directory with the journal that asked for it.
    let mut dirs: Vec<(PathBuf, &Arc<dyn Journal>)> = Vec::new();
    let mut retry = Vec::new();
    for j in journals {
        match j.flush() {
            Ok((f, changed_dirs)) => {
                for file in f {
                    if !files.iter().any(|x| Arc::ptr_eq(x, &file)) {
                        files.push(file);
                    }
                }
                for d in changed_dirs {
                    if !dirs.iter().any(|(known, _)| *known == d) {
                        dirs.push((d, j));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, epoch, "cannot write to the data directory; the publishes it held are refused");
                retry.push(j.clone());
            }
        }
    }
    // Taken after the writes: a journal's flush may wait for a lock that an fsync outside
    // this thread holds while it waits for its turn.
    let turn = shared.sync_turn();
    let synced_files = files.iter().map(|f| f.sync_data());
    // A queue deleted between its flush and this sync took its directory with it: nothing in
    // it needs to last, and a missing directory is no failed fsync (were it one, a client
    // deleting queues at the wrong moment would make the whole store read-only).
    let synced_dirs = dirs.iter().map(|(d, j)| match shared.fs.sync_dir(d) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && j.removed() => Ok(()),
        other => other,
    });
    if let Some(e) = synced_files.chain(synced_dirs).find_map(Result::err) {
        shared.read_only_from.fetch_min(epoch, Ordering::SeqCst);
        // Every epoch from this one on has failed, including those no cycle will ever run
        // for: waiters learn it now.
        shared.synced.send_replace(u64::MAX);
        tracing::error!(
            error = %e,
            epoch,
            "an fsync of the data directory failed: nothing written since the last good sync is confirmed, and nothing more is written; restart the broker to recover from what is on disk"
        );
    }
    Cycle { retry, turn, files }
}

#[cfg(test)]
mod tests;
