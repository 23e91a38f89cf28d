//! The store's open files, within a bound: [`CachedFs`] wraps the file system the store runs
//! on and closes files nobody has used lately once more than its share of descriptors are
//! open, reopening them by path on their next use, as RabbitMQ's file handle cache does.
//!
//! Without it every durable queue held its segment files open, so a client declaring
//! durable queues by the thousand took every descriptor the process had: the listeners could
//! accept no one and no log could open its next segment.
//!
//! What makes closing a file safe:
//! - Only a *clean* file is closed: one with no write since its last successful sync. Linux
//!   reports a write-back error to the descriptors open when it happens (and to the next one
//!   opened, until someone has seen it); a file with unsynced writes closed and its inode
//!   evicted would lose the error, and with it the one thing that stops a false confirm. A
//!   clean file has nothing to write back. Paging files ([`OpenMode::scratch`]) are the
//!   exception: they are never synced, their records are checked by checksum when read back,
//!   and the next start wipes them, so they are closed dirty.
//! - A file is reopened by the path it has now: a rename moves what the cache knows with it.
//!   A file whose path stops naming it (deleted, or replaced by a rename onto its path) is
//!   pinned open first, so whoever still holds it reads what it read before, as with a
//!   descriptor kept open.
//! - An operation in flight keeps its own reference to the open file: a close only drops
//!   the cache's, and the descriptor goes when the operation ends.
//!
//! Lock order: a handle's `slot`, then the cache's `names`, then a handle's `path`. The
//! cache's `clock` is taken with no handle's slot held, and takes slots only by `try_lock`.
//! No lock is held while an `Arc<Handle>` is dropped (its `Drop` takes `names`).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use super::fs::{FileIo, Fs, OpenMode};

/// Handles the clock looks at, at most, to close one file: a bound on what an open costs
/// when every open file is dirty or in use (the cache then stays above its bound until
/// syncs make files clean).
const CLOCK_SCAN_MAX: usize = 64;

/// A file system whose files the store may hold by the thousand, with at most
/// `max_open` of them open at once (more only while they are dirty or pinned).
#[derive(Debug)]
pub struct CachedFs {
    inner: Arc<dyn Fs>,
    cache: Arc<Cache>,
}

#[derive(Debug)]
struct Cache {
    /// Files kept open at most, unless more are dirty, pinned or in use.
    max_open: usize,
    /// Handles whose file is open now.
    open: AtomicUsize,
    /// Every live handle by the path it reopens from. Written across a rename or delete
    /// and the update of what it moves, so that no reopen sees a path in between.
    names: RwLock<BTreeMap<PathBuf, Weak<Handle>>>,
    /// Handles with their file open, in the order the clock visits them.
    clock: Mutex<VecDeque<Weak<Handle>>>,
}

/// One file the store opened: what it implements [`FileIo`] with.
#[derive(Debug)]
struct Handle {
    cache: Arc<Cache>,
    inner: Arc<dyn Fs>,
    /// Never synced, read back by checksum only: closed even when dirty.
    scratch: bool,
    /// Used since the clock last passed it: spared once.
    used: AtomicBool,
    /// The path it is reopened from; follows renames.
    path: Mutex<PathBuf>,
    slot: Mutex<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    /// The open file, or `None` once the cache closed it.
    file: Option<Arc<dyn FileIo>>,
    /// Writes (and length changes) begun: a sync that began with none in flight makes the
    /// file clean if this has not moved when it ends.
    writes: u64,
    /// Writes in flight.
    writing: u32,
    /// Written since its last successful sync.
    dirty: bool,
    /// Its path no longer names it (deleted or replaced): never closed by the cache.
    pinned: bool,
    /// On the clock.
    on_clock: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CachedFs {
    /// `inner` with at most `max_open` of the files opened through it open at once.
    pub fn new(inner: Arc<dyn Fs>, max_open: usize) -> CachedFs {
        CachedFs {
            inner,
            cache: Arc::new(Cache {
                max_open: max_open.max(1),
                open: AtomicUsize::new(0),
                names: RwLock::new(BTreeMap::new()),
                clock: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// Files open now through this cache.
    pub fn open_files(&self) -> usize {
        self.cache.open.load(Ordering::Relaxed)
    }

    /// Live handles at `path` and (if it is a directory) below it.
    fn handles_under(&self, path: &Path) -> Vec<Arc<Handle>> {
        let names = self.cache.names.read().unwrap_or_else(|e| e.into_inner());
        names
            .range(path.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(path))
            .filter_map(|(_, h)| h.upgrade())
            .collect()
    }
}

impl Cache {
    /// After a file is opened (and counted) for `handle`: puts it on the clock, and closes
    /// others past the bound.
    fn opened(&self, handle: Weak<Handle>, put_on_clock: bool) {
        let mut seen = Vec::new();
        let mut closing = Vec::new();
        {
            let mut clock = lock(&self.clock);
            if put_on_clock {
                // Handles that went leave their entries behind; they are swept here, at a
                // cost shared out over the pushes that grew the clock.
                let live = self.open.load(Ordering::Relaxed);
                if clock.len() > 2 * live + 64 {
                    clock.retain(|h| h.strong_count() > 0);
                }
                clock.push_back(handle);
            }
            let mut scanned = 0;
            while self.open.load(Ordering::Relaxed) > self.max_open && scanned < CLOCK_SCAN_MAX {
                let Some(weak) = clock.pop_front() else { break };
                scanned += 1;
                let Some(h) = weak.upgrade() else { continue };
                match h.close_if_idle() {
                    Closed::Now(file) => closing.push(file),
                    Closed::Already => {}
                    Closed::Kept => clock.push_back(weak),
                }
                seen.push(h);
            }
        }
        // Closed, and dropped, with no lock held.
        drop(closing);
        drop(seen);
    }
}

/// What the clock did with a handle it passed.
enum Closed {
    /// Closed its file: here it is, to drop with no lock held.
    Now(Arc<dyn FileIo>),
    /// Its file was closed already: it leaves the clock.
    Already,
    /// Kept open (used lately, dirty, pinned or in use): it stays on the clock.
    Kept,
}

impl Handle {
    /// Closes the file if nothing needs it open: not used since the clock last passed, not
    /// dirty (unless scratch), not pinned, not locked by someone using it.
    fn close_if_idle(&self) -> Closed {
        if self.used.swap(false, Ordering::Relaxed) {
            return Closed::Kept;
        }
        let Ok(mut slot) = self.slot.try_lock() else {
            return Closed::Kept;
        };
        if slot.file.is_none() {
            slot.on_clock = false;
            return Closed::Already;
        }
        if slot.pinned || slot.writing > 0 || (slot.dirty && !self.scratch) {
            return Closed::Kept;
        }
        slot.on_clock = false;
        self.cache.open.fetch_sub(1, Ordering::Relaxed);
        match slot.file.take() {
            Some(file) => Closed::Now(file),
            None => Closed::Already,
        }
    }

    /// The open file, reopened by its path if the cache closed it; the writes begun so far,
    /// and whether one is in flight. With `write`, counts a write begun (end it with
    /// [`Handle::written`]).
    fn file(self: &Arc<Self>, write: bool) -> io::Result<(Arc<dyn FileIo>, u64, bool)> {
        self.used.store(true, Ordering::Relaxed);
        let mut slot = lock(&self.slot);
        let mut reopened = None;
        let file = match &slot.file {
            Some(file) => file.clone(),
            None => {
                let file = {
                    let _names = self.cache.names.read().unwrap_or_else(|e| e.into_inner());
                    let path = lock(&self.path).clone();
                    self.inner.open(&path, OpenMode::EXISTING)?
                };
                // Counted while the slot is held, so that no close is counted first.
                self.cache.open.fetch_add(1, Ordering::Relaxed);
                slot.file = Some(file.clone());
                reopened = Some(!slot.on_clock);
                slot.on_clock = true;
                file
            }
        };
        if write {
            slot.writes += 1;
            slot.writing += 1;
            slot.dirty = true;
        }
        let (writes, writing) = (slot.writes, slot.writing > 0);
        drop(slot);
        if let Some(put_on_clock) = reopened {
            self.cache.opened(Arc::downgrade(self), put_on_clock);
        }
        Ok((file, writes, writing))
    }

    fn written(&self) {
        let mut slot = lock(&self.slot);
        slot.writing = slot.writing.saturating_sub(1);
    }

    /// A sync that began after `writes` writes, none in flight, succeeded: the file is clean
    /// unless it was written since.
    fn synced(&self, writes: u64, writing: bool) {
        let mut slot = lock(&self.slot);
        if !writing && slot.writes == writes {
            slot.dirty = false;
        }
    }

    /// Keeps the file open for as long as the handle lives, reopening it first if the cache
    /// closed it (its path still names it): its path is about to stop naming it.
    fn pin(self: &Arc<Self>, reopen: bool) {
        // Pinned first: the reopen's own turn of the clock must not close it again.
        lock(&self.slot).pinned = true;
        if reopen && let Err(e) = self.file(false) {
            let path = lock(&self.path).clone();
            tracing::warn!(path = %path.display(), error = %e, "cannot reopen a store file before its path changes; a later use of it fails");
        }
    }

    fn run<T>(self: &Arc<Self>, op: impl FnOnce(&dyn FileIo) -> io::Result<T>) -> io::Result<T> {
        let (file, _, _) = self.file(false)?;
        op(&*file)
    }

    fn write<T>(self: &Arc<Self>, op: impl FnOnce(&dyn FileIo) -> io::Result<T>) -> io::Result<T> {
        let (file, _, _) = self.file(true)?;
        let result = op(&*file);
        self.written();
        result
    }

    fn sync(self: &Arc<Self>, op: impl FnOnce(&dyn FileIo) -> io::Result<()>) -> io::Result<()> {
        let (file, writes, writing) = self.file(false)?;
        op(&*file)?;
        self.synced(writes, writing);
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let slot = self.slot.get_mut().unwrap_or_else(|e| e.into_inner());
        if slot.file.take().is_some() {
            self.cache.open.fetch_sub(1, Ordering::Relaxed);
        }
        let path = self.path.get_mut().unwrap_or_else(|e| e.into_inner());
        let mut names = self.cache.names.write().unwrap_or_else(|e| e.into_inner());
        // Its entry, unless another handle took the path since.
        if names.get(&*path).is_some_and(|h| h.strong_count() == 0) {
            names.remove(&*path);
        }
    }
}

/// A handle as the store holds it: an `Arc`, so that its operations can reopen and put it
/// on the clock.
#[derive(Debug)]
struct CachedFile(Arc<Handle>);

impl FileIo for CachedFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write(|f| f.write_all_at(buf, offset))
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.run(|f| f.read_exact_at(buf, offset))
    }
    fn read_exact_vec_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        self.0.run(|f| f.read_exact_vec_at(len, offset))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.write(|f| f.set_len(len))
    }
    fn len(&self) -> io::Result<u64> {
        self.0.run(|f| f.len())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync(|f| f.sync_data())
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync(|f| f.sync_all())
    }
}

impl Fs for CachedFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileIo>> {
        let file = self.inner.open(path, mode)?;
        self.cache.open.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(Handle {
            cache: self.cache.clone(),
            inner: self.inner.clone(),
            scratch: mode.scratch,
            used: AtomicBool::new(true),
            path: Mutex::new(path.to_owned()),
            slot: Mutex::new(Slot {
                file: Some(file),
                on_clock: true,
                ..Slot::default()
            }),
        });
        // Another handle of the same path (the same file: nothing renamed or deleted it in
        // between) stays open for as long as it lives, as only one is reopened by path.
        let displaced = {
            let mut names = self.cache.names.write().unwrap_or_else(|e| e.into_inner());
            names.insert(path.to_owned(), Arc::downgrade(&handle))
        };
        if let Some(other) = displaced.and_then(|w| w.upgrade()) {
            other.pin(true);
        }
        self.cache.opened(Arc::downgrade(&handle), true);
        Ok(Arc::new(CachedFile(handle)))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.inner.write_synced(path, data)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.read_dir(path)
    }
    /// Moves what the cache knows of `from` (a file, or a directory's files) to `to`; a
    /// file `to` named before is pinned open first.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let replaced = self.handles_under(to);
        for h in &replaced {
            h.pin(true);
        }
        // Handles taken out of `names`, dropped once it is released.
        let mut keep: Vec<Arc<Handle>> = Vec::new();
        let mut names = self.cache.names.write().unwrap_or_else(|e| e.into_inner());
        self.inner.rename(from, to)?;
        for p in paths_under(&names, to) {
            keep.extend(names.remove(&p).and_then(|w| w.upgrade()));
        }
        for old in paths_under(&names, from) {
            let Some(weak) = names.remove(&old) else {
                continue;
            };
            let (Some(h), Ok(rest)) = (weak.upgrade(), old.strip_prefix(from)) else {
                continue;
            };
            let new = if rest.as_os_str().is_empty() {
                to.to_owned()
            } else {
                to.join(rest)
            };
            *lock(&h.path) = new.clone();
            names.insert(new, weak);
            keep.push(h);
        }
        drop(names);
        drop(keep);
        Ok(())
    }
    /// Pins the file open first, for whoever still holds it.
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let held = self.handles_under(path);
        for h in held.iter().filter(|h| *lock(&h.path) == path) {
            h.pin(true);
        }
        let mut names = self.cache.names.write().unwrap_or_else(|e| e.into_inner());
        self.inner.remove_file(path)?;
        names.remove(path);
        drop(names);
        drop(held);
        Ok(())
    }
    /// Pins the files below `path` that are open; one the cache closed stays closed, and a
    /// use of it fails, as its log is being destroyed.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let held = self.handles_under(path);
        for h in &held {
            h.pin(false);
        }
        let mut names = self.cache.names.write().unwrap_or_else(|e| e.into_inner());
        self.inner.remove_dir_all(path)?;
        for p in paths_under(&names, path) {
            names.remove(&p);
        }
        drop(names);
        drop(held);
        Ok(())
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
}

/// The paths `names` holds at `path` and below it: a contiguous range, as paths are ordered
/// component by component.
fn paths_under(names: &BTreeMap<PathBuf, Weak<Handle>>, path: &Path) -> Vec<PathBuf> {
    names
        .range(path.to_path_buf()..)
        .take_while(|(p, _)| p.starts_with(path))
        .map(|(p, _)| p.clone())
        .collect()
}

#[cfg(test)]
#[path = "file_cache/tests.rs"]
mod tests;
