//! Durable definitions: vhosts, users, permissions, durable exchanges and queues, bindings
//! between durable objects, and policies.
//!
//! They live in `definitions.json`, in the shape of RabbitMQ's definitions export (so it can
//! be read by people and tools), plus a journal of changes since that snapshot: one line per
//! change, `crc32 json`. A change is appended to the journal and synced by the store's sync
//! thread before the client hears declare-ok. A torn last line is detected by its checksum
//! and dropped. A switch of journals syncs the old one before it makes the next, so a
//! later journal on disk means every earlier one is whole; an older journal whose last line
//! was cut short anyway (a data directory of an earlier version, which did not) ends the
//! history there, and the later journals, which hold nothing that was confirmed, are
//! deleted.
//!
//! Journals come in generations (`definitions.log` is generation 0, then
//! `definitions.1.log`, ...), so that the snapshot can be rewritten without stopping changes:
//! under the lock, the definitions are copied and new changes switch to the next generation's
//! journal; then, with the lock released and off the sync thread, the copy is written
//! (temporary file, fsync, rename, fsync directory) naming that generation, and the older
//! journals are deleted. A start loads the snapshot and replays the journals of its
//! generation and later, so a crash at any point finds every change exactly once.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::fs::{FileIo, Fs, OpenMode};
use super::sync::{Journal, Shared, ToSync};

pub use super::export::*;

/// Journal lines after which the snapshot is rewritten.
const SNAPSHOT_AFTER_CHANGES: usize = 10_000;

/// How long after a failed snapshot the next is tried.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(10);

struct State {
    defs: Definitions,
    journal: Arc<dyn FileIo>,
    /// The journal's generation.
    generation: u64,
    /// Where the next journal line goes.
    journal_len: u64,
    pending: Vec<u8>,
    changes_since_snapshot: usize,
    registered: bool,
    /// Journals left behind by a switch of generation, still to be synced once.
    old_journals: Vec<Arc<dyn FileIo>>,
    /// A journal file was created: the directory needs a sync.
    dir_dirty: bool,
    /// A snapshot is being written in the background.
    snapshotting: bool,
    /// After a snapshot failed, none is tried before this (not at every sync cycle).
    snapshot_retry_at: Option<Instant>,
    /// The epoch the last recorded change is durable in: waiting for it waits for every
    /// change recorded before.
    last_epoch: u64,
}

/// The definitions on disk, and the changes on their way there.
pub struct DefinitionsStore {
    dir: PathBuf,
    shared: Arc<Shared>,
    state: Mutex<State>,
    /// Serialises snapshot writes; holds the generation of the last one written, so an
    /// older copy never replaces a newer one.
    written: Mutex<u64>,
    /// Held by whoever writes the journal (the sync thread's flush, which writes without
    /// the state's lock, and a switch of generation, at a snapshot or at shutdown), so
    /// that the journal and where its next line goes do not change under a write.
    /// Taken before the state's lock.
    journal_write: Mutex<()>,
}

impl std::fmt::Debug for DefinitionsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefinitionsStore")
            .field("dir", &self.dir)
            .finish()
    }
}

fn snapshot_path(dir: &Path) -> PathBuf {
    dir.join("definitions.json")
}

fn journal_path(dir: &Path, generation: u64) -> PathBuf {
    if generation == 0 {
        dir.join("definitions.log")
    } else {
        dir.join(format!("definitions.{generation}.log"))
    }
}

/// The journal generations present in `dir`, in order.
fn journal_generations(fs: &dyn Fs, dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for name in fs.read_dir(dir)? {
        if name == "definitions.log" {
            found.push(0);
        } else if let Some(g) = name
            .strip_prefix("definitions.")
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|g| g.parse::<u64>().ok())
        {
            found.push(g);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Deletes the journals written after a torn one (none of their changes was confirmed),
/// durably: left in place, one would be replayed after the lines appended to the torn
/// journal from now on, so the start stops rather than leave it; and the deletions are on
/// disk before the torn journal is cut clean, so that a crash between the two cannot find
/// it ending whole with a later journal after it.
fn delete_journals(fs: &dyn Fs, dir: &Path, generations: &[u64]) -> io::Result<()> {
    if generations.is_empty() {
        return Ok(());
    }
    for g in generations {
        let path = journal_path(dir, *g);
        tracing::warn!(
            journal = %path.display(),
            "dropping a definitions journal written after a torn one (none of its changes was confirmed)"
        );
        fs.remove_file(&path)?;
    }
    fs.sync_dir(dir)
}

/// How a journal replayed.
struct Replayed {
    /// Length of its good prefix (where the next line goes, for the last journal).
    good_len: u64,
    changes: usize,
    /// Damaged lines skipped (only with `skip_damaged`).
    skipped: usize,
    /// It ended in a torn line, cut.
    torn: bool,
}

/// Replays one journal into `defs`. A damaged last line of the last journal is a torn write
/// and is cut; so is a last line of an older journal that never got its newline (a crash
/// while a snapshot switched journals wrote it: see [`DefinitionsStore::open`]). A damaged
/// line anywhere else stops the start with an error naming the file and line, unless
/// `skip_damaged` says to skip it (every change it held is lost).
fn replay(
    fs: &dyn Fs,
    path: &Path,
    defs: &mut Definitions,
    last_journal: bool,
    skip_damaged: bool,
) -> io::Result<Replayed> {
    let data = fs.read(path)?;
    let mut at = 0usize;
    let mut out = Replayed {
        good_len: 0,
        changes: 0,
        skipped: 0,
        torn: false,
    };
    let mut line_no = 0usize;
    while at < data.len() {
        line_no += 1;
        let nl = data[at..].iter().position(|&b| b == b'\n');
        let line_end = nl.map_or(data.len(), |n| at + n);
        match parse_line(&data[at..line_end]) {
            Some(change) if nl.is_some() => {
                defs.apply(change);
                out.changes += 1;
                at = line_end + 1;
                out.good_len = at as u64;
                continue;
            }
            _ => {}
        }
        // In an older journal only a line cut short counts: a complete line damaged there
        // is rot, and taking it for a torn write would drop every journal after it.
        let is_tail = if last_journal {
            nl.is_none() || line_end + 1 >= data.len()
        } else {
            nl.is_none()
        };
        if is_tail {
            out.torn = true;
            tracing::warn!(
                journal = %path.display(),
                line = line_no,
                "dropping a torn last entry of the definitions journal"
            );
            break;
        }
        if !skip_damaged {
            return Err(io::Error::other(format!(
                "definitions journal {} line {line_no} is damaged; the definitions after it cannot be trusted. Start with --skip-damaged-definitions to skip damaged lines (the changes they held are lost)",
                path.display()
            )));
        }
        tracing::error!(
            journal = %path.display(),
            line = line_no,
            "skipping a damaged line of the definitions journal"
        );
        out.skipped += 1;
        at = nl.map_or(data.len(), |_| line_end + 1);
        out.good_len = at as u64;
    }
    Ok(out)
}

impl DefinitionsStore {
    /// Loads the snapshot and replays the journals. Returns the store, what was loaded, and
    /// whether this is the first start (no definitions yet). `skip_damaged` lets a start
    /// skip damaged journal lines instead of refusing (`--skip-damaged-definitions`).
    pub fn open(
        dir: &Path,
        shared: Arc<Shared>,
        skip_damaged: bool,
    ) -> io::Result<(Arc<Self>, Definitions, bool)> {
        let fs = shared.fs.clone();
        let snapshot = snapshot_path(dir);
        let generations = journal_generations(&*fs, dir)?;
        let first_boot = !fs.exists(&snapshot) && generations.is_empty();
        let mut defs: Definitions = if fs.exists(&snapshot) {
            serde_json::from_slice(&fs.read(&snapshot)?)
                .map_err(|e| io::Error::other(format!("{}: {e}", snapshot.display())))?
        } else {
            Definitions::default()
        };
        let base = defs.lepus_journal_generation;
        let mut current = base;
        let mut good_len = 0u64;
        let mut changes = 0usize;
        let mut skipped = 0usize;
        let last = generations.last().copied();
        // Journals after an older one that ended torn, dropped: see below.
        let mut after_torn: Vec<u64> = Vec::new();
        let mut ended_torn = false;
        for g in generations {
            if ended_torn {
                after_torn.push(g);
                continue;
            }
            let path = journal_path(dir, g);
            if g < base {
                // Contained in the snapshot: left over from a snapshot that completed, and
                // skipped whether or not it can be deleted now (a disk refusing to delete
                // must not stop a start).
                if let Err(e) = fs.remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot delete a definitions journal the snapshot contains");
                }
                continue;
            }
            let replayed = replay(&*fs, &path, &mut defs, Some(g) == last, skip_damaged)?;
            current = g;
            good_len = replayed.good_len;
            changes += replayed.changes;
            skipped += replayed.skipped;
            // An older journal cut short: a crash while a snapshot switched journals, in the
            // write of its last lines, as earlier builds could leave it (they
            // made the next journal before this one was synced; now its sync comes first).
            // That write was synced with the next journal's first lines, and a change is
            // confirmed only once that sync is done: nothing the later journals hold was
            // confirmed, and every change in them was made after the lost one. History ends
            // here, as it does at a torn line of the last journal.
            ended_torn = replayed.torn;
        }
        delete_journals(&*fs, dir, &after_torn)?;
        let file = fs.open(&journal_path(dir, current), OpenMode::CREATE)?;
        // Cut a torn tail so the next line starts clean.
        file.set_len(good_len)?;
        file.sync_all()?;
        fs.sync_dir(dir)?;
        // The caller gets a copy (shared items, no positions); the store keeps the
        // definitions indexed, so that no change waits for the index to be built.
        let loaded = defs.clone();
        defs.index();
        let store = Arc::new(DefinitionsStore {
            dir: dir.to_owned(),
            shared,
            state: Mutex::new(State {
                defs,
                journal: file,
                generation: current,
                journal_len: good_len,
                pending: Vec::new(),
                changes_since_snapshot: changes,
                registered: false,
                old_journals: Vec::new(),
                dir_dirty: false,
                snapshotting: false,
                snapshot_retry_at: None,
                last_epoch: 0,
            }),
            written: Mutex::new(base),
            journal_write: Mutex::new(()),
        });
        if skipped > 0 {
            // Retire the damaged journals: the definitions as loaded become the snapshot.
            store.write_snapshot()?;
        }
        Ok((store, loaded, first_boot))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a change. Returns the epoch after which it is durable.
    pub fn record(self: &Arc<Self>, change: Change) -> u64 {
        {
            let mut state = self.lock();
            match serde_json::to_vec(&change) {
                Ok(json) => {
                    let crc = crc32fast::hash(&json);
                    let _ = write!(state.pending, "{crc:08x} ");
                    state.pending.extend_from_slice(&json);
                    state.pending.push(b'\n');
                }
                Err(e) => tracing::error!(error = %e, "cannot encode a definitions change"),
            }
            state.defs.apply(change);
            state.changes_since_snapshot += 1;
            if !state.registered {
                state.registered = true;
                self.shared.mark_dirty(self.clone());
            }
            // Read inside the lock: see the protocol on `Journal`.
            state.last_epoch = self.shared.epoch();
            state.last_epoch
        }
    }

    /// The policies as recorded, for callers that change one and re-apply them all.
    pub fn policies(&self) -> Vec<PolicyDef> {
        self.lock().defs.policies.clone()
    }

    /// The epoch every change recorded so far is durable in.
    pub fn last_epoch(&self) -> u64 {
        self.lock().last_epoch
    }

    /// The operator policies as recorded.
    pub fn operator_policies(&self) -> Vec<PolicyDef> {
        self.lock().defs.operator_policies.clone()
    }

    /// The global parameters as recorded (the cluster's name, once set, and its id).
    pub fn global_parameters(&self) -> Vec<GlobalParameterDef> {
        self.lock().defs.global_parameters.clone()
    }

    /// Everything recorded, for an export.
    pub fn current(&self) -> Definitions {
        self.lock().defs.clone()
    }

    /// A vhost's recorded definition.
    pub fn vhost(&self, name: &str) -> Option<VhostDef> {
        self.lock()
            .defs
            .vhosts
            .iter()
            .find(|v| v.name == name)
            .cloned()
    }

    /// The next id for a durable queue, reserved.
    pub fn next_queue_id(&self) -> u64 {
        let mut state = self.lock();
        let id = state.defs.lepus_next_queue_id;
        state.defs.lepus_next_queue_id += 1;
        id
    }

    /// Rewrites the snapshot now (at shutdown): afterwards the journal is empty, unless a
    /// background snapshot switched journals again meanwhile (either way, a start finds
    /// every change once).
    pub fn write_snapshot(&self) -> io::Result<()> {
        let (defs, generation) = self.switch_generation()?;
        self.write_snapshot_file(&defs, generation)
    }

    /// Copies the definitions and switches new changes to the next journal generation.
    /// Everything in the copy is in the journals before it; nothing after is. The old
    /// journal is synced before the next one is made, without the state's lock (changes go
    /// on being recorded meanwhile, and go to the next journal): a next journal on disk
    /// means the one before is whole, so no crash can leave a later journal's changes
    /// without an earlier one's.
    fn switch_generation(&self) -> io::Result<(Definitions, u64)> {
        self.refuse_unless_writable()?;
        let _writing = self.journal_write.lock().unwrap_or_else(|e| e.into_inner());
        let (old, (defs, next)) = self.write_pending(|state| {
            let mut defs = state.defs.clone();
            defs.lepus_version = env!("CARGO_PKG_VERSION").to_owned();
            let next = state.generation + 1;
            defs.lepus_journal_generation = next;
            (defs, next)
        })?;
        let turn = self.shared.sync_turn();
        if let Err(e) = old.sync_all() {
            // The lines it held may be lost, and some may have been confirmed by a cycle
            // that counted on this file's sync: the store stops, as for any failed fsync.
            self.shared
                .fail_stop(&turn, &e, "syncing the definitions journal at a switch");
            return Err(e);
        }
        drop(turn);
        let file = self
            .shared
            .fs
            .open(&journal_path(&self.dir, next), OpenMode::FRESH)?;
        let mut state = self.lock();
        let old = std::mem::replace(&mut state.journal, file);
        // Synced above; its file is closed with the next cycle's.
        state.old_journals.push(old);
        state.dir_dirty = true;
        state.generation = next;
        state.journal_len = 0;
        // Changes recorded while the old journal synced are pending for the next one, and
        // not in the copy: the copy is what the old journals hold.
        state.changes_since_snapshot = state.pending.iter().filter(|&&b| b == b'\n').count();
        Ok((defs, next))
    }

    /// Refuses once a sync of the data directory failed: a snapshot then could hold changes
    /// whose clients were told they failed.
    fn refuse_unless_writable(&self) -> io::Result<()> {
        if self.shared.writable() {
            return Ok(());
        }
        Err(io::Error::other(
            "an fsync of the data directory failed: no definitions snapshot is written",
        ))
    }

    /// Writes a copy made by [`switch_generation`] as the snapshot, then deletes the
    /// journals it contains. Runs without the definitions lock.
    fn write_snapshot_file(&self, defs: &Definitions, generation: u64) -> io::Result<()> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if *written >= generation {
            return Ok(());
        }
        let json = serde_json::to_vec_pretty(defs).map_err(io::Error::other)?;
        let fs = &self.shared.fs;
        let tmp = self.dir.join("definitions.json.tmp");
        fs.write_synced(&tmp, &json)?;
        // Again at the rename, where the snapshot takes effect: a sync that failed while it
        // was made (the sync thread's fsync of the same journal may take the error that the
        // switch's own fsync then does not see) must not make it the definitions.
        if let Err(e) = self.refuse_unless_writable() {
            let _ = fs.remove_file(&tmp);
            return Err(e);
        }
        fs.rename(&tmp, &snapshot_path(&self.dir))?;
        // The directory also holds the new generation's journal, made by
        // `switch_generation`: this fsync failing may have taken the error the sync thread's
        // own sync of the directory would have seen, so the store stops as for any fsync
        // outside the sync thread (`Shared::fail_stop`).
        let turn = self.shared.sync_turn();
        if let Err(e) = fs.sync_dir(&self.dir) {
            self.shared.fail_stop(
                &turn,
                &e,
                "syncing the definitions directory after a snapshot",
            );
            return Err(e);
        }
        drop(turn);
        *written = generation;
        // The snapshot is written: journals it contains that cannot be deleted now are
        // skipped at the next start, which tries again.
        for g in journal_generations(&**fs, &self.dir)? {
            let path = journal_path(&self.dir, g);
            if g < generation
                && let Err(e) = fs.remove_file(&path)
            {
                tracing::warn!(file = %path.display(), error = %e, "cannot delete a definitions journal the snapshot contains");
            }
        }
        Ok(())
    }

    /// Rewrites the snapshot in the background once the journal has grown long.
    fn snapshot_if_long(self: &Arc<Self>) {
        {
            let mut state = self.lock();
            if state.snapshotting
                || state.changes_since_snapshot <= SNAPSHOT_AFTER_CHANGES
                || state
                    .snapshot_retry_at
                    .is_some_and(|at| Instant::now() < at)
            {
                return;
            }
            state.snapshotting = true;
        }
        let store = self.clone();
        let write = move || {
            let result = store
                .switch_generation()
                .and_then(|(defs, g)| store.write_snapshot_file(&defs, g));
            let mut state = store.lock();
            state.snapshotting = false;
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot write the definitions snapshot; trying again in {} s", SNAPSHOT_RETRY.as_secs());
                state.snapshot_retry_at = Some(Instant::now() + SNAPSHOT_RETRY);
            }
        };
        // Switching journals (a sync of the old one) and serialising and syncing a large
        // snapshot must not hold up the sync thread (and the confirms waiting on it); the
        // sync thread waits for the switch (the old journal's write and fsync, the next
        // one's open) only in a cycle that has the definitions to flush.
        // If no thread can be had, the snapshot waits for the next try; the journals hold
        // everything meanwhile.
        if let Err(e) = std::thread::Builder::new()
            .name("lepus-snapshot".into())
            .spawn(write)
        {
            tracing::error!(error = %e, "cannot start writing the definitions snapshot");
            self.lock().snapshotting = false;
        }
    }

    /// Takes the lines recorded so far, and under the same lock what `also` makes of the
    /// state, then writes the lines to the journal without the state's lock, which every
    /// durable declaration takes on a runtime worker (a device that stopped answering would
    /// stop the worker). A failed write gives them back, to be written first. The caller
    /// holds `journal_write`, so nothing else moves `journal_len` or the journal meanwhile.
    /// Returns the journal written to, and what `also` made.
    fn write_pending<T>(
        &self,
        also: impl FnOnce(&mut State) -> T,
    ) -> io::Result<(Arc<dyn FileIo>, T)> {
        let (journal, offset, lines, made) = {
            let mut state = self.lock();
            let lines = std::mem::take(&mut state.pending);
            let offset = state.journal_len;
            state.journal_len += lines.len() as u64;
            let made = also(&mut state);
            (state.journal.clone(), offset, lines, made)
        };
        if !lines.is_empty()
            && let Err(e) = journal.write_all_at(&lines, offset)
        {
            let mut state = self.lock();
            let mut lines = lines;
            lines.extend_from_slice(&state.pending);
            state.pending = lines;
            state.journal_len = offset;
            return Err(e);
        }
        Ok((journal, made))
    }
}

fn parse_line(line: &[u8]) -> Option<Change> {
    let (crc, json) = (line.get(..8)?, line.get(9..)?);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    if crc32fast::hash(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok()
}

impl Journal for DefinitionsStore {
    /// Writes the journal lines recorded so far without holding the state's lock, which
    /// every durable declaration takes (on a runtime worker): a device that stopped answering
    /// would have stopped the worker. `journal_write` keeps a switch of generation out
    /// meanwhile, so nothing else moves `journal_len` or the journal.
    fn flush(&self) -> io::Result<ToSync> {
        let _writing = self.journal_write.lock().unwrap_or_else(|e| e.into_inner());
        self.write_pending(|state| state.registered = false)?;
        let mut state = self.lock();
        let mut files = std::mem::take(&mut state.old_journals);
        files.push(state.journal.clone());
        let dirs = if std::mem::take(&mut state.dir_dirty) {
            vec![self.dir.clone()]
        } else {
            Vec::new()
        };
        Ok((files, dirs))
    }

    fn after_sync(self: Arc<Self>) {
        self.snapshot_if_long();
    }
}

#[cfg(test)]
mod tests;
