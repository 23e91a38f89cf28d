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
//! - A file is reopened by the path it has now: a rename moves what the cache knows with it,
//!   and keeps the files it moves open while it runs. A file whose path stops naming it
//!   (deleted, or replaced by a rename onto its path) is reopened and pinned open first, so
//!   whoever still holds it reads what it read before, as with a descriptor kept open; when
//!   that reopen fails, the delete or rename fails instead. A file under a directory the store
//!   removes ([`Fs::remove_dir_all`], only ever a log it destroys) that is closed then stays
//!   closed: it is *gone*, writes and syncs to it do nothing (no one can read them back) and
//!   reads of it fail.
//! - A sync of a closed file does nothing and reopens nothing: it was clean when closed, and
//!   a write since would have reopened it.
//! - An operation in flight keeps its own reference to the open file: a close only drops
//!   the cache's, and the descriptor goes when the operation ends.
//!
//! Lock order: a handle's `slot`, then its `path`; the cache's `names`, then a handle's
//! `path`. `names` and a slot are never held together, and `names` never across a system
//! call; the `clock` is taken with no slot held, and
//! takes slots only by `try_lock`. No lock is held while an `Arc<Handle>` is dropped (its
//! `Drop` takes `names`).

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
    /// Every live handle by the path it reopens from (pinned and gone ones leave it).
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
    /// Renames moving it under way: not closed until they are done.
    held: u32,
    /// Closed, and its directory removed: nothing can reopen it.
    gone: bool,
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
        if slot.pinned || slot.held > 0 || slot.writing > 0 || (slot.dirty && !self.scratch) {
            return Closed::Kept;
        }
        slot.on_clock = false;
        self.cache.open.fetch_sub(1, Ordering::Relaxed);
        match slot.file.take() {
            Some(file) => Closed::Now(file),
            None => Closed::Already,
        }
    }

    /// Reopens the file by its path if the cache closed it (and it is not gone). Returns
    /// whether it did, and then whether to put it on the clock ([`Cache::opened`], called
    /// once the slot is let go).
    fn reopen(&self, slot: &mut Slot) -> io::Result<Option<bool>> {
        if slot.file.is_some() || slot.gone {
            return Ok(None);
        }
        let path = lock(&self.path).clone();
        let file = self.inner.open(&path, OpenMode::EXISTING)?;
        // Counted while the slot is held, so that no close is counted first.
        self.cache.open.fetch_add(1, Ordering::Relaxed);
        slot.file = Some(file);
        let put_on_clock = !slot.on_clock;
        slot.on_clock = true;
        Ok(Some(put_on_clock))
    }

    /// The open file for `purpose`, reopened if the cache closed it; `None` for a write or a
    /// sync that has nothing to do (a gone file; a sync of a closed one).
    fn file(self: &Arc<Self>, purpose: Use) -> io::Result<Option<InUse>> {
        self.used.store(true, Ordering::Relaxed);
        let mut slot = lock(&self.slot);
        if slot.file.is_none() {
            if slot.gone {
                return match purpose {
                    Use::Read => Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "a store file whose directory was removed while it was closed",
                    )),
                    Use::Write | Use::Sync => Ok(None),
                };
            }
            if purpose == Use::Sync && !self.scratch {
                return Ok(None);
            }
        }
        let reopened = self.reopen(&mut slot)?;
        let Some(file) = slot.file.clone() else {
            return Ok(None);
        };
        if purpose == Use::Write {
            slot.writes += 1;
            slot.writing += 1;
            slot.dirty = true;
        }
        let (writes, writing) = (slot.writes, slot.writing > 0);
        drop(slot);
        if let Some(put_on_clock) = reopened {
            self.cache.opened(Arc::downgrade(self), put_on_clock);
        }
        Ok(Some(InUse {
            file,
            writes,
            writing,
        }))
    }

    /// Keeps the file open for as long as the handle lives: its path has stopped naming
    /// it. Called with the file held open ([`Handle::hold`]) since before that happened.
    fn pin(&self) {
        lock(&self.slot).pinned = true;
    }

    /// Keeps the file open (reopening it first if need be) while a rename or delete that
    /// moves, replaces or removes it runs: no reopen looks for it by a path that is about to
    /// change, and whoever holds it keeps the file it opened. Undone by [`Handle::release`].
    fn hold(self: &Arc<Self>) -> io::Result<()> {
        let mut slot = lock(&self.slot);
        let reopened = self.reopen(&mut slot)?;
        slot.held += 1;
        drop(slot);
        if let Some(put_on_clock) = reopened {
            self.cache.opened(Arc::downgrade(self), put_on_clock);
        }
        Ok(())
    }

    fn release(&self) {
        let mut slot = lock(&self.slot);
        slot.held = slot.held.saturating_sub(1);
    }

    /// Its directory is being removed: an open file stays open for whoever holds it; a
    /// closed one is gone.
    fn removed(&self) {
        let mut slot = lock(&self.slot);
        if slot.file.is_some() {
            slot.pinned = true;
        } else {
            slot.gone = true;
        }
    }

    fn read<T>(self: &Arc<Self>, op: impl FnOnce(&dyn FileIo) -> io::Result<T>) -> io::Result<T> {
        match self.file(Use::Read)? {
            Some(using) => op(&*using.file),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn write(self: &Arc<Self>, op: impl FnOnce(&dyn FileIo) -> io::Result<()>) -> io::Result<()> {
        let Some(using) = self.file(Use::Write)? else {
            return Ok(());
        };
        let result = op(&*using.file);
        let mut slot = lock(&self.slot);
        slot.writing = slot.writing.saturating_sub(1);
        result
    }

    /// A sync that began after `writes` writes, none in flight, and succeeds makes the file
    /// clean, unless it was written since. Past the cache's bound, a file made clean is
    /// closed at once: the clock turns only when a file is opened, so files that were dirty
    /// past the bound (hundreds of queues acknowledged within one sync) stayed open until
    /// the next open.
    fn sync(self: &Arc<Self>, op: impl FnOnce(&dyn FileIo) -> io::Result<()>) -> io::Result<()> {
        let Some(using) = self.file(Use::Sync)? else {
            return Ok(());
        };
        op(&*using.file)?;
        let mut slot = lock(&self.slot);
        let mut closed = None;
        if !using.writing && slot.writes == using.writes {
            slot.dirty = false;
            if self.cache.open.load(Ordering::Relaxed) > self.cache.max_open
                && !slot.pinned
                && slot.held == 0
                && slot.writing == 0
            {
                closed = slot.file.take();
                if closed.is_some() {
                    self.cache.open.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        // Closed (once `using` goes too) with no lock held; it stays on the clock, which
        // finds it closed, or reopened.
        drop(slot);
        drop(closed);
        Ok(())
    }
}

/// A handle's file, taken for one operation.
struct InUse {
    file: Arc<dyn FileIo>,
    /// Writes begun before it was taken.
    writes: u64,
    /// One of them still in flight.
    writing: bool,
}

/// What a handle's file is wanted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Read,
    Write,
    Sync,
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
        self.0.read(|f| f.read_exact_at(buf, offset))
    }
    fn read_exact_vec_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        self.0.read(|f| f.read_exact_vec_at(len, offset))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.write(|f| f.set_len(len))
    }
    fn len(&self) -> io::Result<u64> {
        self.0.read(|f| f.len())
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
        // Another handle of the same path (the same file: nothing renamed or deleted it in
        // between) is pinned open first, as only one is known by the path. The store opens
        // no path twice; if it did and the other could not be reopened, the open fails.
        let other = {
            let names = self.cache.names.read().unwrap_or_else(|e| e.into_inner());
            names.get(path).and_then(Weak::upgrade)
        };
        if let Some(other) = &other {
            other.hold()?;
            other.pin();
            other.release();
        }
        drop(other);
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
                // A truncation is a change a sync must cover, as a write is.
                dirty: mode.truncate,
                ..Slot::default()
            }),
        });
        let displaced = {
            let mut names = self.cache.names.write().unwrap_or_else(|e| e.into_inner());
            names.insert(path.to_owned(), Arc::downgrade(&handle))
        };
        self.cache.opened(Arc::downgrade(&handle), true);
        drop(displaced);
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
    /// Moves what the cache knows of `from` (a file, or a directory's files) to `to`, holding
    /// them open meanwhile; a file `to` named before is pinned open first.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let replaced = self.handles_under(to);
        let moving = self.handles_under(from);
        let mut held = Vec::new();
        let result = (|| {
            for h in replaced.iter().chain(&moving) {
                h.hold()?;
                held.push(h.clone());
            }
            self.inner.rename(from, to)
        })();
        if result.is_ok() {
            for h in &replaced {
                h.pin();
            }
            let mut names = self.cache.names.write().unwrap_or_else(|e| e.into_inner());
            for h in &replaced {
                forget(&mut names, &lock(&h.path), h);
            }
            for h in &moving {
                let mut path = lock(&h.path);
                let Ok(rest) = path.strip_prefix(from) else {
                    continue;
                };
                let new = if rest.as_os_str().is_empty() {
                    to.to_owned()
                } else {
                    to.join(rest)
                };
                forget(&mut names, &path, h);
                names.insert(new.clone(), Arc::downgrade(h));
                *path = new;
            }
        }
        for h in &held {
            h.release();
        }
        result
    }
    /// Pins the file open first, for whoever still holds it; a file that cannot be reopened
    /// to pin it is not removed.
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let removed: Vec<_> = self
            .handles_under(path)
            .into_iter()
            .filter(|h| *lock(&h.path) == path)
            .collect();
        let mut held = Vec::new();
        let result = (|| {
            for h in &removed {
                h.hold()?;
                held.push(h.clone());
            }
            self.inner.remove_file(path)
        })();
        if result.is_ok() {
            for h in &removed {
                h.pin();
            }
            let mut names = self.cache.names.write().unwrap_or_else(|e| e.into_inner());
            for h in &removed {
                forget(&mut names, path, h);
            }
        }
        for h in &held {
            h.release();
        }
        result
    }
    /// Destroys a directory: what the cache knows below it is forgotten, whether or not the
    /// removal succeeds (the store removes only the directory of a log it destroys, or the
    /// paging files of a previous run). Open files stay open for whoever holds them; closed
    /// ones are gone.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let forgotten: Vec<Weak<Handle>> = {
            let mut names = self.cache.names.write().unwrap_or_else(|e| e.into_inner());
            paths_under(&names, path)
                .iter()
                .filter_map(|p| names.remove(p))
                .collect()
        };
        let forgotten: Vec<Arc<Handle>> = forgotten.iter().filter_map(Weak::upgrade).collect();
        for h in &forgotten {
            h.removed();
        }
        self.inner.remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
}

/// Removes `path`'s entry in `names` if it is `handle`'s.
fn forget(names: &mut BTreeMap<PathBuf, Weak<Handle>>, path: &Path, handle: &Arc<Handle>) {
    if names
        .get(path)
        .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(handle)))
    {
        names.remove(path);
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
