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
//! definitions[.N].log   journals of changes since the snapshot (checksummed lines)
//! queues/<id>/*.seg     segment files of the durable queue <id>
//! paging/<id>/*.seg     segment files of a transient queue paging to disk (wiped at start)
//! lost+found/           logs of queues the definitions did not know, moved aside at start
//! seal.key              the key mixed into every record's checksum (`store::seal`)
//! ```

mod ack;
mod compact;
pub mod definitions;
pub mod export;
pub mod file_cache;
pub mod fs;
pub mod idle;
pub mod intervals;
pub mod log;
mod positions;
mod prepare;
mod read_back;
pub mod record;
mod recover;
mod returned;
pub mod seal;
pub mod sim;
pub mod sync;
mod write_out;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use fs::{Fs, RealFs};
pub use log::{Position, QueueLog, ReadBack, Recovered, TailReader};
pub use read_back::uncharged;
use sync::{Shared, sync_loop};

/// The store of one broker.
pub struct Store {
    pub data_dir: PathBuf,
    pub shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The background thread (segment preparation), joined at close.
    background: Mutex<Option<JoinHandle<()>>>,
    /// The thread that closes deleted files (`Shared::close_in_background`), joined at close.
    closer: Mutex<Option<JoinHandle<()>>>,
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
        Self::open_on(Arc::new(RealFs), data_dir, segment_bytes)
    }

    /// [`Store::open`] on a file system of the caller's choosing (tests simulate faults).
    pub fn open_on(fs: Arc<dyn Fs>, data_dir: &Path, segment_bytes: u64) -> io::Result<Store> {
        let store = Self::open_manual(fs, data_dir, segment_bytes)?;
        *store.background.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(store.shared.start_background()?);
        *store.closer.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(store.shared.start_closer()?);
        let waiter: std::sync::Weak<dyn idle::WakeOnIdle> = Arc::downgrade(&store.shared) as _;
        idle::register(waiter);
        let worker = store.shared.clone();
        let thread = std::thread::Builder::new()
            .name("lepus-sync".into())
            .spawn(move || sync_loop(&worker))?;
        *store.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        Ok(store)
    }

    /// A store without its sync thread: nothing is written until [`Store::sync_now`] is
    /// called. The storage fault simulation drives a store this way, one step at a time,
    /// so that a seed replays a run exactly.
    pub fn open_manual(fs: Arc<dyn Fs>, data_dir: &Path, segment_bytes: u64) -> io::Result<Store> {
        // Before the queues' directory is made: its entries say whether logs from before
        // keys may exist.
        let seals = seal::SealKey::load_or_create(&*fs, data_dir)?;
        fs.create_dir_all(&data_dir.join("queues"))?;
        let paging = data_dir.join("paging");
        if fs.exists(&paging) {
            fs.remove_dir_all(&paging)?;
        }
        // Made again when a queue first pages; on a full disk the start goes on without it.
        if let Err(e) = fs.create_dir_all(&paging) {
            tracing::warn!(error = %e, "cannot make the paging directory");
        }
        Ok(Store {
            data_dir: data_dir.to_owned(),
            shared: Arc::new(Shared::new(segment_bytes, fs).with_seals(seals)),
            thread: Mutex::new(None),
            background: Mutex::new(None),
            closer: Mutex::new(None),
            next_paging_id: AtomicU64::new(1),
        })
    }

    /// Runs one write-and-sync cycle now (a store opened with [`Store::open_manual`]).
    /// Returns whether there was anything to write.
    pub fn sync_now(&self) -> bool {
        sync::sync_once(&self.shared)
    }

    /// Where the log of durable queue `id` lives.
    pub fn queue_dir(&self, id: u64) -> PathBuf {
        self.data_dir.join("queues").join(id.to_string())
    }

    /// A new log for a durable queue.
    pub fn create_queue_log(&self, id: u64) -> io::Result<Arc<QueueLog>> {
        let dir = self.queue_dir(id);
        if self.shared.fs.exists(&dir) {
            // Left over from a queue that no longer exists: kept aside, never deleted.
            self.move_aside(id)?;
        }
        QueueLog::create(dir, self.shared.clone(), true)
    }

    /// Moves the directory of queue `id` to `lost+found/` in the data directory: the logs of
    /// queues the definitions do not know are kept for an operator, never deleted.
    pub fn move_aside(&self, id: u64) -> io::Result<PathBuf> {
        let fs = &self.shared.fs;
        let lost = self.data_dir.join("lost+found");
        fs.create_dir_all(&lost)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let to = lost.join(format!("queue-{id}-{stamp}"));
        fs.rename(&self.queue_dir(id), &to)?;
        // The sync thread syncs `queues/` too, for the directory of a log it created: a
        // failure here may be the one its fsync should have seen (`Shared::sync_turn`).
        let turn = self.shared.sync_turn();
        let synced = fs
            .sync_dir(&lost)
            .and_then(|()| fs.sync_dir(&self.data_dir.join("queues")));
        if let Err(e) = &synced {
            self.shared
                .fail_stop(&turn, e, "moving a queue's log to lost+found");
        }
        drop(turn);
        synced.map(|()| to)
    }

    /// A new paging log for a transient queue; it does not survive a restart.
    pub fn create_paging_log(&self) -> io::Result<Arc<QueueLog>> {
        let id = self.next_paging_id.fetch_add(1, Ordering::Relaxed);
        self.shared
            .fs
            .create_dir_all(&self.data_dir.join("paging"))?;
        QueueLog::create(
            self.data_dir.join("paging").join(id.to_string()),
            self.shared.clone(),
            false,
        )
    }

    /// Recovers the log of durable queue `id`.
    pub fn recover_queue_log(&self, id: u64) -> io::Result<(Arc<QueueLog>, Recovered)> {
        let dir = self.queue_dir(id);
        if !self.shared.fs.exists(&dir) {
            return Ok((
                QueueLog::create(dir, self.shared.clone(), true)?,
                Recovered::default(),
            ));
        }
        QueueLog::recover(dir, self.shared.clone())
    }

    /// Ids of the queue directories on disk.
    pub fn queue_ids_on_disk(&self) -> Vec<u64> {
        self.shared
            .fs
            .read_dir(&self.data_dir.join("queues"))
            .map(|names| names.iter().filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Writes and syncs everything, then stops the sync thread. Called at shutdown.
    pub fn close(&self) {
        self.shared.request_stop();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        for thread in [&self.background, &self.closer] {
            let handle = thread.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}
