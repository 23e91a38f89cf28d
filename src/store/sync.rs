//! The sync thread and its epochs: group commit for every file the store writes.
//!
//! One thread (`sync_loop`) does every write and every fsync. Writers (queue logs, the
//! definitions journal) append to a buffer under their own lock, register themselves as
//! dirty if they are not yet, and read the current epoch, all in that one critical section.
//! The thread, in a loop: takes the dirty list and bumps the epoch (one step, under the dirty
//! lock), writes each buffer, syncs every file written and every directory whose entries
//! changed, then publishes the old epoch as synced. So one sync covers every writer waiting at
//! that moment, with no timer.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

/// How long the sync thread waits before retrying after a failed fsync.
const SYNC_RETRY_MS: u64 = 100;

/// Something with buffered writes the sync thread must write and sync.
///
/// The protocol that makes one sync cover every waiting writer: a writer appends, registers
/// the journal if it is not registered, and reads [`Shared::epoch`], all inside the journal's
/// own lock. The sync thread starts an epoch and takes the registered journals in one step,
/// then flushes each under its lock. So an append is flushed and synced before the epoch its
/// writer read is published. After a sync that left no journal registered, the sync thread
/// publishes the next epoch too (under the same lock writers register under), so a writer
/// that appended while that cycle was running does not wait for a cycle that never comes.
pub trait Journal: Send + Sync {
    /// Writes what is buffered; returns the files and the directories (whose entries
    /// changed) to sync.
    fn flush(&self) -> io::Result<(Vec<Arc<File>>, Vec<PathBuf>)>;
    /// Work to do outside the publish path after a sync (preparing the next segment).
    fn after_sync(self: Arc<Self>) {}
}

/// Fsyncs a directory, making file creations, renames and deletions in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// State shared by the store, its logs and the sync thread.
pub struct Shared {
    /// Size of a segment file.
    pub segment_bytes: u64,
    /// Journals with writes to make.
    dirty: Mutex<Vec<Arc<dyn Journal>>>,
    wake: Condvar,
    /// The epoch new writes belong to.
    epoch: AtomicU64,
    /// The last epoch whose writes are all on disk.
    synced: watch::Sender<u64>,
    pub(super) stop: AtomicBool,
}

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
        dirty.push(journal);
        self.wake.notify_one();
    }

    /// The epoch to wait for, read after appending: once it is synced, the append is durable.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn synced(&self) -> u64 {
        *self.synced.borrow()
    }

    /// A receiver that changes whenever an epoch is synced.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.synced.subscribe()
    }
}

impl Shared {
    /// State for a new store: epoch 1 is the first to be written, nothing synced yet.
    pub fn new(segment_bytes: u64) -> Shared {
        let (synced, _) = watch::channel(0);
        Shared {
            segment_bytes,
            dirty: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            epoch: AtomicU64::new(1),
            synced,
            stop: AtomicBool::new(false),
        }
    }

    /// Asks the sync thread to finish what is queued and stop.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }
}

/// The sync thread's loop; returns once stopped and idle.
pub fn sync_loop(shared: &Shared) {
    // Files and directories whose sync failed: retried with every later cycle, because their
    // writers are still waiting for it.
    let mut files: Vec<Arc<File>> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    loop {
        let journals = {
            let mut dirty = shared.dirty.lock().unwrap_or_else(|e| e.into_inner());
            while dirty.is_empty() && !shared.stop.load(Ordering::SeqCst) {
                dirty = shared.wake.wait(dirty).unwrap_or_else(|e| e.into_inner());
            }
            if dirty.is_empty() {
                return;
            }
            // Taking the list and starting the next epoch happen together, under the lock a
            // writer registers under: a journal registered after this point reads a later
            // epoch. Writers read the epoch inside the same critical section as their append,
            // so an append and the epoch it waits for cannot fall apart (see `Journal`).
            let epoch = shared.epoch.fetch_add(1, Ordering::SeqCst);
            (std::mem::take(&mut *dirty), epoch)
        };
        let (journals, epoch) = journals;
        tracing::trace!(epoch, journals = journals.len(), "sync cycle");
        for j in &journals {
            match j.flush() {
                Ok((f, changed_dirs)) => {
                    for file in f {
                        if !files.iter().any(|x| Arc::ptr_eq(x, &file)) {
                            files.push(file);
                        }
                    }
                    for d in changed_dirs {
                        if !dirs.contains(&d) {
                            dirs.push(d);
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot write to the data directory"),
            }
        }
        let mut failed = false;
        for f in &files {
            if let Err(e) = f.sync_data() {
                failed = true;
                tracing::error!(error = %e, "fdatasync failed");
            }
        }
        for d in &dirs {
            if let Err(e) = sync_dir(d) {
                failed = true;
                tracing::error!(error = %e, dir = %d.display(), "directory fsync failed");
            }
        }
        if failed {
            // Never confirm what may not be on disk. Writers keep waiting; the journals go
            // back on the list so another cycle retries soon.
            if shared.stop.load(Ordering::SeqCst) {
                // Shutting down with a failing disk: what was not synced is not confirmed.
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(SYNC_RETRY_MS));
            let mut dirty = shared.dirty.lock().unwrap_or_else(|e| e.into_inner());
            dirty.extend(journals);
            continue;
        }
        shared.synced.send_replace(epoch);
        tracing::trace!(epoch, files = files.len(), "synced");
        files.clear();
        dirs.clear();
        {
            // Nothing left to write: everything appended so far is on disk, including
            // appends that read the epoch after it was bumped above.
            let dirty = shared.dirty.lock().unwrap_or_else(|e| e.into_inner());
            if dirty.is_empty() {
                let e = shared.epoch.fetch_add(1, Ordering::SeqCst);
                shared.synced.send_replace(e);
                tracing::trace!(epoch = e, "synced (idle)");
            }
        }
        for j in &journals {
            j.clone().after_sync();
        }
    }
}
