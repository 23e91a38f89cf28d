use super::*;
use crate::store::fs::RealFs;

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lepus-file-cache-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cache(max_open: usize) -> CachedFs {
    CachedFs::new(Arc::new(RealFs), max_open)
}

fn written(fs: &CachedFs, path: &Path, body: &[u8], sync: bool) -> Arc<dyn FileIo> {
    let file = fs.open(path, OpenMode::FRESH).unwrap();
    file.write_all_at(body, 0).unwrap();
    if sync {
        file.sync_data().unwrap();
    }
    file
}

fn read(file: &Arc<dyn FileIo>, len: usize) -> Vec<u8> {
    file.read_exact_vec_at(len, 0).unwrap()
}

/// A thousand durable queues' segments take no more descriptors than the cache's bound
/// once their writes are synced, and each reads back what was written to it.
#[test]
fn no_more_than_the_bound_of_synced_files_stay_open() {
    let d = dir("bound");
    let fs = cache(4);
    let files: Vec<_> = (0..200)
        .map(|i| {
            written(
                &fs,
                &d.join(format!("{i}.seg")),
                format!("file {i:04}").as_bytes(),
                true,
            )
        })
        .collect();
    assert!(fs.open_files() <= 4, "{} open", fs.open_files());
    for (i, file) in files.iter().enumerate().rev() {
        assert_eq!(read(file, 9), format!("file {i:04}").as_bytes());
        assert!(fs.open_files() <= 4, "{} open", fs.open_files());
    }
    drop(files);
    assert_eq!(fs.open_files(), 0);
    assert!(fs.cache.names.read().unwrap().is_empty());
}

/// A file written since its last sync is never closed: a write-back error must reach the
/// sync that will be asked for it. Once synced, it may be closed again, and past the bound
/// is closed by that sync; a paging file (never synced) may be closed dirty.
#[test]
fn files_with_unsynced_writes_stay_open() {
    let d = dir("dirty");
    let fs = cache(2);
    let files: Vec<_> = (0..10)
        .map(|i| written(&fs, &d.join(format!("{i}.seg")), b"unsynced", false))
        .collect();
    assert_eq!(fs.open_files(), 10);
    for file in &files {
        file.sync_data().unwrap();
    }
    // A sync made each clean, and closed it past the bound, without waiting for another
    // file to be opened (the clock turns only then).
    assert!(fs.open_files() <= 2, "{} open", fs.open_files());
    for file in &files {
        assert_eq!(read(file, 8), b"unsynced");
    }
    let _next = written(&fs, &d.join("next.seg"), b"x", true);
    assert!(fs.open_files() <= 2, "{} open", fs.open_files());
    // Written again after its sync: dirty again, and kept open.
    files[0].write_all_at(b"again", 0).unwrap();
    for i in 0..10 {
        let _more = written(&fs, &d.join(format!("more-{i}.seg")), b"x", true);
    }
    assert!(files[0].len().is_ok());
    assert!(fs.cache.clock.lock().unwrap().iter().any(|h| {
        h.upgrade().is_some_and(|h| {
            let slot = h.slot.lock().unwrap();
            slot.dirty && slot.file.is_some()
        })
    }));
    let scratch: Vec<_> = (0..10)
        .map(|i| {
            let path = d.join(format!("paging-{i}.seg"));
            let file = fs.open(&path, OpenMode::FRESH.scratch_if(true)).unwrap();
            file.write_all_at(b"paged", 0).unwrap();
            file
        })
        .collect();
    assert!(fs.open_files() <= 4, "{} open", fs.open_files());
    for file in &scratch {
        assert_eq!(read(file, 5), b"paged");
    }
}

/// A file the cache closed is reopened by the name it has now: renames of the file, or of
/// its directory, move it.
#[test]
fn a_renamed_file_is_reopened_by_its_new_name() {
    let d = dir("rename");
    let fs = cache(1);
    std::fs::create_dir_all(d.join("q1")).unwrap();
    let spare = written(&fs, &d.join("q1/spare.tmp"), b"spare", true);
    let other = written(&fs, &d.join("other"), b"other", true);
    fs.rename(&d.join("q1/spare.tmp"), &d.join("q1/0001.seg"))
        .unwrap();
    let _third = written(&fs, &d.join("third"), b"third", true);
    assert_eq!(read(&spare, 5), b"spare");
    fs.rename(&d.join("q1"), &d.join("lost+found")).unwrap();
    assert_eq!(read(&other, 5), b"other");
    assert_eq!(fs.open_files(), 1, "the spare was closed again");
    assert_eq!(read(&spare, 5), b"spare");
    assert_eq!(
        *spare_path(&fs, &d.join("lost+found/0001.seg")),
        *d.join("lost+found/0001.seg")
    );
}

fn spare_path(fs: &CachedFs, path: &Path) -> PathBuf {
    let names = fs.cache.names.read().unwrap();
    let h = names
        .get(path)
        .and_then(|h| h.upgrade())
        .expect("known by its new name");
    let p = h.path.lock().unwrap().clone();
    drop(names);
    p
}

/// Whoever holds a file reads what it wrote after the file is deleted, or replaced by a
/// rename onto its name, as with a descriptor kept open.
#[test]
fn a_deleted_or_replaced_file_stays_readable_to_whoever_holds_it() {
    let d = dir("pinned");
    let fs = cache(1);
    let deleted = written(&fs, &d.join("deleted"), b"deleted", true);
    let replaced = written(&fs, &d.join("segment"), b"old one", true);
    let copy = written(&fs, &d.join("segment.tmp"), b"new one", true);
    let _ = written(&fs, &d.join("filler"), b"x", true);
    fs.remove_file(&d.join("deleted")).unwrap();
    fs.rename(&d.join("segment.tmp"), &d.join("segment"))
        .unwrap();
    for i in 0..5 {
        let _ = written(&fs, &d.join(format!("more-{i}")), b"x", true);
    }
    assert_eq!(read(&deleted, 7), b"deleted");
    assert_eq!(read(&replaced, 7), b"old one");
    assert_eq!(read(&copy, 7), b"new one");
    assert_eq!(std::fs::read(d.join("segment")).unwrap(), b"new one");
    // The two pinned ones stay open; the copy is closed past the bound like any other.
    assert_eq!(fs.open_files(), 2);
}

/// A failed sync leaves the file dirty: it stays open until a sync succeeds.
#[test]
fn a_failed_sync_keeps_the_file_open() {
    use crate::store::sim::{Faults, SimFs};
    let sim = SimFs::new(7);
    let fs = CachedFs::new(Arc::new(sim.clone()), 1);
    let d = PathBuf::from("/sim/failed-sync");
    fs.create_dir_all(&d).unwrap();
    let file = fs.open(&d.join("a"), OpenMode::FRESH).unwrap();
    file.write_all_at(b"data", 0).unwrap();
    sim.set_faults(Faults {
        fsync_error: 1.0,
        ..Faults::default()
    });
    assert!(file.sync_data().is_err());
    sim.set_faults(Faults::default());
    for i in 0..5 {
        let _ = written(&fs, &d.join(format!("other-{i}")), b"x", true);
    }
    let slot = |f: &CachedFs| {
        let names = f.cache.names.read().unwrap();
        let h = names.get(&d.join("a")).and_then(|h| h.upgrade()).unwrap();
        let open = h.slot.lock().unwrap().file.is_some();
        drop(names);
        open
    };
    assert!(slot(&fs), "a file whose sync failed is not closed");
    file.sync_data().unwrap();
    let _ = written(&fs, &d.join("last"), b"x", true);
    let _ = written(&fs, &d.join("last2"), b"x", true);
    assert!(!slot(&fs), "closed once a sync succeeded");
}

/// A queue deleted while its head segment is closed: the write and sync already on their
/// way to it do nothing and succeed, as they did on a descriptor kept open, rather than
/// failing the epoch of every queue; a read of it fails rather than reading another file.
#[test]
fn a_closed_file_under_a_removed_directory_is_gone() {
    let d = dir("gone");
    let fs = cache(1);
    std::fs::create_dir_all(d.join("q")).unwrap();
    let head = written(&fs, &d.join("q/0.seg"), b"head", true);
    let open = fs.open(&d.join("q/1.seg"), OpenMode::FRESH).unwrap();
    open.write_all_at(b"dirty", 0).unwrap();
    let _ = written(&fs, &d.join("other"), b"x", true);
    fs.remove_dir_all(&d.join("q")).unwrap();
    assert!(!d.join("q").exists());
    head.write_all_at(b"late", 4).unwrap();
    head.sync_data().unwrap();
    let refused = head.read_exact_vec_at(4, 0).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::NotFound);
    // The open (dirty) one stays open and readable.
    assert_eq!(read(&open, 5), b"dirty");
    open.sync_data().unwrap();
    assert!(
        fs.cache
            .names
            .read()
            .unwrap()
            .keys()
            .all(|p| !p.starts_with(d.join("q")))
    );
}

/// A sync of a file the cache closed opens nothing: it was clean when closed.
#[test]
fn a_sync_of_a_closed_file_reopens_nothing() {
    let d = dir("sync-closed");
    let fs = cache(1);
    let first = written(&fs, &d.join("first"), b"first", true);
    let _second = written(&fs, &d.join("second"), b"second", true);
    let _third = written(&fs, &d.join("third"), b"third", true);
    assert_eq!(fs.open_files(), 1);
    std::fs::remove_file(d.join("first")).unwrap();
    first.sync_data().unwrap();
    assert_eq!(fs.open_files(), 1);
}

/// When the file a rename would replace, or a delete remove, cannot be reopened to keep it
/// for whoever holds it (the process is out of descriptors), the rename or delete fails and
/// changes nothing: its holder never reads another file by its name.
#[test]
fn a_rename_or_delete_that_cannot_pin_the_file_fails() {
    use crate::store::sim::{Faults, SimFs};
    let sim = SimFs::new(11);
    let fs = CachedFs::new(Arc::new(sim.clone()), 1);
    let d = PathBuf::from("/sim/pin");
    fs.create_dir_all(&d).unwrap();
    let old = written(&fs, &d.join("segment"), b"old one", true);
    let copy = written(&fs, &d.join("segment.tmp"), b"new one", true);
    let _ = written(&fs, &d.join("filler"), b"x", true);
    sim.set_faults(Faults {
        open_error: 1.0,
        ..Faults::default()
    });
    assert!(
        fs.rename(&d.join("segment.tmp"), &d.join("segment"))
            .is_err()
    );
    assert!(fs.remove_file(&d.join("segment")).is_err());
    sim.set_faults(Faults::default());
    assert_eq!(read(&old, 7), b"old one");
    assert_eq!(read(&copy, 7), b"new one");
    fs.rename(&d.join("segment.tmp"), &d.join("segment"))
        .unwrap();
    assert_eq!(read(&old, 7), b"old one");
    assert_eq!(fs.read(&d.join("segment")).unwrap(), b"new one");
}

/// A pin is never undone: a delete of a file already removed with its directory fails
/// (NotFound), and its holder still reads the file it opened.
#[test]
fn a_failed_delete_does_not_undo_a_pin() {
    let d = dir("pin-kept");
    let fs = cache(1);
    std::fs::create_dir_all(d.join("q")).unwrap();
    let file = fs.open(&d.join("q/0.seg"), OpenMode::FRESH).unwrap();
    file.write_all_at(b"kept", 0).unwrap();
    fs.remove_dir_all(&d.join("q")).unwrap();
    file.sync_data().unwrap();
    let gone = fs.remove_file(&d.join("q/0.seg")).unwrap_err();
    assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    for i in 0..5 {
        let _ = written(&fs, &d.join(format!("other-{i}")), b"x", true);
    }
    assert_eq!(read(&file, 4), b"kept");
}
