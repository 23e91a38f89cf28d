//! Durability: where queues keep persistent messages and page out what does not fit in
//! memory, and where definitions are kept across restarts.
//!
//! The store deals in bytes and sequence numbers only: it does not import the broker's types.
//! The broker turns its messages into [`record::MessageParts`] to write them and rebuilds them
//! from [`record::StoredMessage`]s it reads back.
//!
//! One sync thread does all the writing and syncing (group commit). Writers append to
//! in-memory buffers and note the current *epoch*; the thread bumps the epoch, writes every
//! dirty buffer, syncs the files it wrote, and announces that epoch as synced. A publisher
//! confirm (or a durable declare-ok, or a tx.commit-ok) waits until its epoch is synced, so
//! one fdatasync covers every publisher waiting at that moment, with no artificial delay.
//!
//! Layout of the data directory:
//!
//! ```text
//! definitions.json      snapshot of durable definitions (atomically replaced)
//! definitions.log       journal of changes since the snapshot (checksummed lines)
//! queues/<id>/*.seg     segment files of the durable queue <id>
//! paging/<id>/*.seg     segment files of a transient queue paging to disk (wiped at start)
//! ```

pub mod definitions;
pub mod intervals;
pub mod log;
pub mod record;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::watch;

pub use log::{Position, QueueLog, ReadBack, Recovered, TailReader};

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
    /// Writes what is buffered; returns the files to sync and whether a directory entry
    /// changed.
    fn flush(&self) -> io::Result<(Vec<Arc<File>>, Option<PathBuf>)>;
    /// Work to do outside the publish path after a sync (preparing the next segment).
    fn after_sync(&self) {}
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
    stop: AtomicBool,
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

/// The store of one broker.
pub struct Store {
    pub data_dir: PathBuf,
    pub shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    next_paging_id: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl Store {
    /// Opens the data directory, wipes paging files of the previous run, and starts the
    /// sync thread.
    pub fn open(data_dir: &Path, segment_bytes: u64) -> io::Result<Store> {
        std::fs::create_dir_all(data_dir.join("queues"))?;
        let paging = data_dir.join("paging");
        if paging.exists() {
            std::fs::remove_dir_all(&paging)?;
        }
        std::fs::create_dir_all(&paging)?;
        let (synced, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            segment_bytes,
            dirty: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            epoch: AtomicU64::new(1),
            synced,
            stop: AtomicBool::new(false),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("lepus-sync".into())
            .spawn(move || sync_loop(&worker))?;
        Ok(Store {
            data_dir: data_dir.to_owned(),
            shared,
            thread: Mutex::new(Some(thread)),
            next_paging_id: AtomicU64::new(1),
        })
    }

    /// Where the log of durable queue `id` lives.
    pub fn queue_dir(&self, id: u64) -> PathBuf {
        self.data_dir.join("queues").join(id.to_string())
    }

    /// A new log for a durable queue.
    pub fn create_queue_log(&self, id: u64) -> io::Result<Arc<QueueLog>> {
        let dir = self.queue_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        QueueLog::create(dir, self.shared.clone())
    }

    /// A new paging log for a transient queue; it does not survive a restart.
    pub fn create_paging_log(&self) -> io::Result<Arc<QueueLog>> {
        let id = self.next_paging_id.fetch_add(1, Ordering::Relaxed);
        QueueLog::create(
            self.data_dir.join("paging").join(id.to_string()),
            self.shared.clone(),
        )
    }

    /// Recovers the log of durable queue `id`.
    pub fn recover_queue_log(&self, id: u64) -> io::Result<(Arc<QueueLog>, Recovered)> {
        let dir = self.queue_dir(id);
        if !dir.exists() {
            return Ok((
                QueueLog::create(dir, self.shared.clone())?,
                Recovered::default(),
            ));
        }
        QueueLog::recover(dir, self.shared.clone())
    }

    /// Ids of the queue directories on disk.
    pub fn queue_ids_on_disk(&self) -> Vec<u64> {
        std::fs::read_dir(self.data_dir.join("queues"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes and syncs everything, then stops the sync thread. Called at shutdown.
    pub fn close(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn sync_loop(shared: &Shared) {
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
                Ok((f, dir)) => {
                    for file in f {
                        if !files.iter().any(|x| Arc::ptr_eq(x, &file)) {
                            files.push(file);
                        }
                    }
                    if let Some(d) = dir
                        && !dirs.contains(&d)
                    {
                        dirs.push(d);
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
            j.after_sync();
        }
    }
}

impl Journal for QueueLog {
    fn flush(&self) -> io::Result<(Vec<Arc<File>>, Option<PathBuf>)> {
        let (files, dir_changed) = QueueLog::flush(self)?;
        Ok((files, dir_changed.then(|| self.dir().to_owned())))
    }

    fn after_sync(&self) {
        if let Err(e) = self.prepare_next() {
            tracing::warn!(error = %e, "cannot prepare the next segment");
        }
    }
}
