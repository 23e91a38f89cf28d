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
//! ```

pub mod definitions;
pub mod intervals;
pub mod log;
pub mod record;
pub mod sync;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use log::{Position, QueueLog, ReadBack, Recovered, TailReader};
use sync::{Shared, sync_loop};

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
        let shared = Arc::new(Shared::new(segment_bytes));
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
        self.shared.request_stop();
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
