//! A simulated disk for the store: an in-memory [`Fs`] that fails on purpose.
//!
//! Each file keeps what reads see (the page cache) apart from what is durable (the platter).
//! `sync_data` makes the dirty ranges durable. The faults, chosen by a seeded generator:
//!
//! - a write fails with `ENOSPC` or `EIO`, possibly after writing part of its bytes (a short
//!   write), or the disk is full past a number of bytes;
//! - an fsync fails, and as on Linux the dirty pages it covered are dropped: they stay
//!   readable but never reach the disk, and a later fsync that succeeds proves nothing;
//! - power is lost ([`SimFs::crash`]): everything not made durable is gone, the last write
//!   of a file may be torn (a random prefix of it survives), and the files of the crashed
//!   process refuse every further operation.
//!
//! A file's name is durable as its data is: creating, renaming or removing a file reaches
//! the disk when its directory is synced (`sync_dir`), and a crash before that finds the
//! directory's entries as they were at its last sync (a file made since is gone, a renamed
//! one back under its old name, a removed one back). Directories themselves are made,
//! renamed and removed durably at once.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::fs::{FileIo, Fs, OpenMode};

/// Which faults to inject, and how often (probabilities per operation, 0 to 1).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// A write fails (`EIO`), after writing a random part of its bytes.
    pub write_error: f64,
    /// An fsync fails (`EIO`) and drops the dirty data it covered.
    pub fsync_error: f64,
    /// Writes fail with `ENOSPC` once the files hold this many bytes.
    pub capacity_bytes: Option<u64>,
    /// A directory's fsync fails (`EIO`).
    pub dir_sync_error: f64,
    /// An unlink fails (`EIO`) and leaves the file where it was.
    pub unlink_error: f64,
    /// A rename fails (`EIO`) and leaves both names as they were.
    pub rename_error: f64,
    /// An open of a file that exists, without creating it, fails (`EMFILE`: the process is
    /// out of descriptors).
    pub open_error: f64,
}

#[derive(Debug, Default)]
struct Node {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a power loss.
    durable: Vec<u8>,
    /// Byte ranges written since they were last made durable (or dropped).
    dirty: Vec<(usize, usize)>,
    /// The last write not yet durable: a power loss may leave a prefix of it.
    last_write: Option<(usize, usize)>,
    /// Blocks (of `BLOCK_BYTES`) holding data: a sparse `set_len` allocates none, so
    /// writing into it can find the disk full, as on a real file system.
    blocks: std::collections::HashSet<u64>,
}

/// The allocation unit of the simulated disk.
const BLOCK_BYTES: usize = 4096;

impl Node {
    /// Blocks a write of `at..end` would newly allocate.
    fn new_blocks(&self, at: usize, end: usize) -> u64 {
        if end <= at {
            return 0;
        }
        let first = (at / BLOCK_BYTES) as u64;
        let last = ((end - 1) / BLOCK_BYTES) as u64;
        (first..=last).filter(|b| !self.blocks.contains(b)).count() as u64
    }

    fn allocate(&mut self, at: usize, end: usize) {
        if end > at {
            for b in (at / BLOCK_BYTES) as u64..=((end - 1) / BLOCK_BYTES) as u64 {
                self.blocks.insert(b);
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<PathBuf, Arc<Mutex<Node>>>,
    /// The file names a crash leaves: each directory's entries as of its last sync.
    durable_names: HashMap<PathBuf, Arc<Mutex<Node>>>,
    dirs: BTreeSet<PathBuf>,
    faults: Faults,
    rng: u64,
    /// Faults injected so far, by kind.
    injected: Injected,
    /// Directory syncs that succeeded: each is an fsync and a device flush.
    dir_syncs: u64,
}

/// How many faults were injected, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    pub write_errors: u64,
    pub no_space: u64,
    pub fsync_errors: u64,
    pub torn_writes: u64,
    pub unlink_errors: u64,
    pub rename_errors: u64,
    pub open_errors: u64,
}

/// The simulated disk (clones share it).
#[derive(Debug, Clone)]
pub struct SimFs(Arc<Disk>);

#[derive(Debug)]
struct Disk {
    state: Mutex<State>,
    /// Bumped by a crash: files opened before it are dead.
    generation: AtomicU64,
    /// While true, every fsync waits (a disk that takes its time), until `resume_syncs`.
    syncs_held: Mutex<HeldSyncs>,
    syncs_resumed: Condvar,
    /// While true, every write waits (a device that stopped answering), until
    /// `resume_writes`.
    writes_held: Mutex<HeldSyncs>,
    writes_resumed: Condvar,
    /// Reads held back (see [`SimFs::hold_reads_from`]), and how many wait.
    reads_held: Mutex<HeldReads>,
    reads_changed: Condvar,
}

/// Whether fsyncs wait, and how many do now.
#[derive(Debug, Default)]
struct HeldSyncs {
    held: bool,
    waiting: usize,
}

/// Which reads wait, and how many do now.
#[derive(Debug, Default)]
struct HeldReads {
    /// Reads of at least this many bytes wait, until `resume_reads`.
    from_bytes: Option<usize>,
    waiting: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn dead() -> io::Error {
    io::Error::other("the process using this file crashed")
}

impl State {
    /// A pseudo-random number in [0, 1) (xorshift: deterministic for a seed).
    fn next_f64(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }

    fn used_bytes(&self) -> u64 {
        let blocks: u64 = self
            .files
            .values()
            .map(|n| lock(n).blocks.len() as u64)
            .sum();
        blocks * BLOCK_BYTES as u64
    }
}

impl SimFs {
    pub fn new(seed: u64) -> SimFs {
        SimFs(Arc::new(Disk {
            state: Mutex::new(State {
                rng: seed.max(1),
                ..State::default()
            }),
            generation: AtomicU64::new(0),
            syncs_held: Mutex::new(HeldSyncs::default()),
            syncs_resumed: Condvar::new(),
            reads_held: Mutex::new(HeldReads::default()),
            writes_held: Mutex::new(HeldSyncs::default()),
            writes_resumed: Condvar::new(),
            reads_changed: Condvar::new(),
        }))
    }

    /// Makes every fsync from now on wait until [`SimFs::resume_syncs`]: a disk slower than
    /// anything else the broker does.
    pub fn hold_syncs(&self) {
        lock(&self.0.syncs_held).held = true;
    }

    /// Lets held fsyncs (and later ones) go on.
    pub fn resume_syncs(&self) {
        lock(&self.0.syncs_held).held = false;
        self.0.syncs_resumed.notify_all();
    }

    /// Returns once an fsync is held (true), or after `timeout` if none is (false).
    pub fn wait_for_held_sync(&self, timeout: std::time::Duration) -> bool {
        let held = lock(&self.0.syncs_held);
        let (held, _) = self
            .0
            .syncs_resumed
            .wait_timeout_while(held, timeout, |h| h.waiting == 0)
            .unwrap_or_else(|e| e.into_inner());
        held.waiting > 0
    }

    /// Makes every write from now on wait until [`SimFs::resume_writes`]: a device that
    /// stopped answering.
    pub fn hold_writes(&self) {
        lock(&self.0.writes_held).held = true;
    }

    /// Lets held writes (and later ones) go on.
    pub fn resume_writes(&self) {
        lock(&self.0.writes_held).held = false;
        self.0.writes_resumed.notify_all();
    }

    /// Returns once a write is held (true), or after `timeout` if none is (false).
    pub fn wait_for_held_write(&self, timeout: std::time::Duration) -> bool {
        let held = lock(&self.0.writes_held);
        let (held, _) = self
            .0
            .writes_resumed
            .wait_timeout_while(held, timeout, |h| h.waiting == 0)
            .unwrap_or_else(|e| e.into_inner());
        held.waiting > 0
    }

    /// Makes every read of at least `bytes` from now on wait until [`SimFs::resume_reads`]: a
    /// read of a whole segment that takes its time, to see what else goes on meanwhile.
    pub fn hold_reads_from(&self, bytes: usize) {
        lock(&self.0.reads_held).from_bytes = Some(bytes);
    }

    /// Returns once a read is held (true), or after `timeout` if none is (false).
    pub fn wait_for_held_read(&self, timeout: std::time::Duration) -> bool {
        let held = lock(&self.0.reads_held);
        let (held, _) = self
            .0
            .reads_changed
            .wait_timeout_while(held, timeout, |h| h.waiting == 0)
            .unwrap_or_else(|e| e.into_inner());
        held.waiting > 0
    }

    /// Lets held reads (and later ones) go on.
    pub fn resume_reads(&self) {
        lock(&self.0.reads_held).from_bytes = None;
        self.0.reads_changed.notify_all();
    }

    /// Sets the faults injected from now on.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.0.state).faults = faults;
    }

    /// Directory syncs that succeeded so far.
    pub fn dir_syncs(&self) -> u64 {
        lock(&self.0.state).dir_syncs
    }

    /// Bytes the files hold (what a capacity limit counts).
    pub fn used_bytes(&self) -> u64 {
        lock(&self.0.state).used_bytes()
    }

    /// The faults injected so far.
    pub fn injected(&self) -> Injected {
        lock(&self.0.state).injected
    }

    /// Loses power: what is not durable is gone (the last write of a file may survive in
    /// part, when `tear`), and files opened so far refuse every operation.
    pub fn crash(&self, tear: bool) {
        self.0.generation.fetch_add(1, Ordering::SeqCst);
        let mut state = lock(&self.0.state);
        // The names first: each directory as it was at its last sync.
        let names: HashMap<PathBuf, Arc<Mutex<Node>>> = state
            .durable_names
            .iter()
            .filter(|(p, _)| p.parent().is_some_and(|d| state.dirs.contains(d)))
            .map(|(p, n)| (p.clone(), n.clone()))
            .collect();
        state.files = names;
        let nodes: Vec<Arc<Mutex<Node>>> = state.files.values().cloned().collect();
        for node in nodes {
            let mut n = lock(&node);
            let mut data = n.durable.clone();
            if tear
                && let Some((at, end)) = n.last_write
                && state.chance(0.5)
            {
                let keep = ((end - at) as f64 * state.next_f64()) as usize;
                if data.len() < at + keep {
                    data.resize(at + keep, 0);
                }
                data[at..at + keep].copy_from_slice(&n.data[at..at + keep]);
                state.injected.torn_writes += 1;
            }
            n.durable = data.clone();
            n.data = data;
            n.dirty.clear();
            n.last_write = None;
        }
    }
}

#[derive(Debug)]
struct SimFile {
    node: Arc<Mutex<Node>>,
    fs: Arc<Disk>,
    generation: u64,
}

impl SimFile {
    fn alive(&self) -> io::Result<()> {
        if self.fs.generation.load(Ordering::SeqCst) == self.generation {
            Ok(())
        } else {
            Err(dead())
        }
    }
}

impl FileIo for SimFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.alive()?;
        {
            let mut held = lock(&self.fs.writes_held);
            if held.held {
                held.waiting += 1;
                self.fs.writes_resumed.notify_all();
                while held.held {
                    held = self
                        .fs
                        .writes_resumed
                        .wait(held)
                        .unwrap_or_else(|e| e.into_inner());
                }
                held.waiting -= 1;
            }
        }
        let mut state = lock(&self.fs.state);
        let at = offset as usize;
        let end = at + buf.len();
        // Counted before this file is locked: the count locks every file in turn.
        let used = state.faults.capacity_bytes.map(|_| state.used_bytes());
        let mut n = lock(&self.node);
        let growth = n.new_blocks(at, end) * BLOCK_BYTES as u64;
        let full = match (state.faults.capacity_bytes, used) {
            (Some(cap), Some(used)) => growth > 0 && used + growth > cap,
            _ => false,
        };
        let p = state.faults.write_error;
        let fail = full || state.chance(p);
        // A failed write may have written part of its bytes.
        let written = if fail {
            (buf.len() as f64 * state.next_f64()) as usize
        } else {
            buf.len()
        };
        let written = if full {
            // What fits in blocks already allocated.
            let mut fit = 0;
            while fit < written && n.blocks.contains(&(((at + fit) / BLOCK_BYTES) as u64)) {
                fit = ((at + fit) / BLOCK_BYTES + 1) * BLOCK_BYTES - at;
            }
            written.min(fit)
        } else {
            written
        };
        if n.data.len() < at + written {
            n.data.resize(at + written, 0);
        }
        n.data[at..at + written].copy_from_slice(&buf[..written]);
        n.allocate(at, at + written);
        if written > 0 {
            n.dirty.push((at, at + written));
            n.last_write = Some((at, at + written));
        }
        if full {
            state.injected.no_space += 1;
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        if fail {
            state.injected.write_errors += 1;
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.alive()?;
        {
            let holds = |held: &HeldReads| held.from_bytes.is_some_and(|b| buf.len() >= b);
            let mut held = lock(&self.fs.reads_held);
            if holds(&held) {
                held.waiting += 1;
                self.fs.reads_changed.notify_all();
                while holds(&held) {
                    held = self
                        .fs
                        .reads_changed
                        .wait(held)
                        .unwrap_or_else(|e| e.into_inner());
                }
                held.waiting -= 1;
            }
        }
        let n = lock(&self.node);
        let at = offset as usize;
        let Some(src) = n.data.get(at..at + buf.len()) else {
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        buf.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.alive()?;
        let mut n = lock(&self.node);
        let old = n.data.len();
        let len = len as usize;
        n.data.resize(len, 0);
        if len > old {
            n.dirty.push((old, len));
        } else {
            // Shrunk: a crash may keep no part of a write past the end, and the blocks past
            // it are free (the old length stays durable until a sync).
            n.last_write = n
                .last_write
                .filter(|&(at, _)| at < len)
                .map(|(at, end)| (at, end.min(len)));
            let first_free = len.div_ceil(BLOCK_BYTES) as u64;
            n.blocks.retain(|&b| b < first_free);
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.alive()?;
        Ok(lock(&self.node).data.len() as u64)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.alive()?;
        {
            let mut held = lock(&self.fs.syncs_held);
            if held.held {
                held.waiting += 1;
                self.fs.syncs_resumed.notify_all();
                while held.held {
                    held = self
                        .fs
                        .syncs_resumed
                        .wait(held)
                        .unwrap_or_else(|e| e.into_inner());
                }
                held.waiting -= 1;
            }
        }
        let mut state = lock(&self.fs.state);
        let mut n = lock(&self.node);
        let p = state.faults.fsync_error;
        if state.chance(p) {
            // As Linux does: the dirty pages are marked clean without reaching the disk.
            n.dirty.clear();
            n.last_write = None;
            state.injected.fsync_errors += 1;
            return Err(io::Error::from_raw_os_error(5));
        }
        let len = n.data.len();
        let dirty = std::mem::take(&mut n.dirty);
        let Node { data, durable, .. } = &mut *n;
        durable.resize(len, 0);
        for (at, end) in dirty {
            let end = end.min(len);
            if at < end {
                durable[at..end].copy_from_slice(&data[at..end]);
            }
        }
        n.last_write = None;
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }
}

impl Fs for SimFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileIo>> {
        let mut state = lock(&self.0.state);
        let p = state.faults.open_error;
        if !mode.create && state.chance(p) {
            state.injected.open_errors += 1;
            return Err(io::Error::from_raw_os_error(24));
        }
        let node = match state.files.get(path) {
            Some(node) => {
                if mode.truncate {
                    let mut n = lock(node);
                    n.data.clear();
                    n.blocks.clear();
                    n.dirty.push((0, 0));
                    n.last_write = None;
                }
                node.clone()
            }
            None if mode.create => {
                if let Some(parent) = path.parent()
                    && !state.dirs.contains(parent)
                {
                    return Err(io::ErrorKind::NotFound.into());
                }
                let node = Arc::new(Mutex::new(Node::default()));
                state.files.insert(path.to_owned(), node.clone());
                node
            }
            None => return Err(io::ErrorKind::NotFound.into()),
        };
        Ok(Arc::new(SimFile {
            node,
            fs: self.0.clone(),
            generation: self.0.generation.load(Ordering::SeqCst),
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = lock(&self.0.state);
        match state.files.get(path) {
            Some(node) => Ok(lock(node).data.clone()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let file = self.open(path, OpenMode::FRESH)?;
        file.write_all_at(data, 0)?;
        file.sync_all()
    }

    fn exists(&self, path: &Path) -> bool {
        let state = lock(&self.0.state);
        state.files.contains_key(path) || state.dirs.contains(path)
    }

    fn is_dir(&self, path: &Path) -> bool {
        lock(&self.0.state).dirs.contains(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.0.state);
        for dir in path.ancestors() {
            if !dir.as_os_str().is_empty() {
                state.dirs.insert(dir.to_owned());
            }
        }
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.0.state);
        if !state.dirs.contains(path) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let children = state
            .files
            .keys()
            .chain(state.dirs.iter())
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned));
        Ok(children.collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.0.state);
        let p = state.faults.rename_error;
        if state.chance(p) {
            state.injected.rename_errors += 1;
            return Err(io::Error::from_raw_os_error(5));
        }
        if let Some(parent) = to.parent()
            && !state.dirs.contains(parent)
        {
            return Err(io::ErrorKind::NotFound.into());
        }
        if let Some(node) = state.files.remove(from) {
            state.files.insert(to.to_owned(), node);
            return Ok(());
        }
        if !state.dirs.contains(from) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let moved = |p: &Path| p.strip_prefix(from).ok().map(|rest| to.join(rest));
        let files: Vec<PathBuf> = state
            .files
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for p in files {
            if let (Some(node), Some(new)) = (state.files.remove(&p), moved(&p)) {
                state.files.insert(new, node);
            }
        }
        let dirs: Vec<PathBuf> = state
            .dirs
            .iter()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for p in dirs {
            state.dirs.remove(&p);
            if let Some(new) = moved(&p) {
                state.dirs.insert(new);
            }
        }
        // A directory's entries go with it: they are its own, not its parent's.
        let named: Vec<PathBuf> = state
            .durable_names
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for p in named {
            if let (Some(node), Some(new)) = (state.durable_names.remove(&p), moved(&p)) {
                state.durable_names.insert(new, node);
            }
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.0.state);
        let p = state.faults.unlink_error;
        if state.chance(p) {
            state.injected.unlink_errors += 1;
            return Err(io::Error::from_raw_os_error(5));
        }
        match state.files.remove(path) {
            Some(_) => Ok(()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.0.state);
        state.files.retain(|p, _| !p.starts_with(path));
        state.durable_names.retain(|p, _| !p.starts_with(path));
        state.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.0.state);
        let p = state.faults.dir_sync_error;
        if state.chance(p) {
            state.injected.fsync_errors += 1;
            return Err(io::Error::from_raw_os_error(5));
        }
        if state.dirs.contains(path) {
            state.dir_syncs += 1;
            let entries: Vec<(PathBuf, Arc<Mutex<Node>>)> = state
                .files
                .iter()
                .filter(|(p, _)| p.parent() == Some(path))
                .map(|(p, n)| (p.clone(), n.clone()))
                .collect();
            state.durable_names.retain(|p, _| p.parent() != Some(path));
            state.durable_names.extend(entries);
            Ok(())
        } else {
            Err(io::ErrorKind::NotFound.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names reach the disk with their directory's sync, as on a POSIX file system that
    /// promises nothing more: a crash finds each directory as it was last synced.
    #[test]
    fn file_names_are_durable_once_their_directory_is_synced() {
        let fs = SimFs::new(7);
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let write = |name: &str| {
            let f = fs.open(&dir.join(name), OpenMode::FRESH).unwrap();
            f.write_all_at(name.as_bytes(), 0).unwrap();
            f.sync_all().unwrap();
        };
        write("kept");
        write("renamed");
        write("removed");
        fs.sync_dir(dir).unwrap();
        write("unsynced");
        fs.rename(&dir.join("renamed"), &dir.join("new-name"))
            .unwrap();
        fs.remove_file(&dir.join("removed")).unwrap();
        fs.crash(false);
        let mut names = fs.read_dir(dir).unwrap();
        names.sort();
        assert_eq!(names, ["kept", "removed", "renamed"]);
        assert_eq!(fs.read(&dir.join("renamed")).unwrap(), b"renamed");

        fs.rename(&dir.join("renamed"), &dir.join("new-name"))
            .unwrap();
        fs.remove_file(&dir.join("removed")).unwrap();
        fs.sync_dir(dir).unwrap();
        fs.crash(false);
        let mut names = fs.read_dir(dir).unwrap();
        names.sort();
        assert_eq!(names, ["kept", "new-name"]);
    }
}
