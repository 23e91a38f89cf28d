//! The files the store holds open, counted: each durable queue keeps its segments' files
//! open, so a client declaring durable queues by the thousand took every descriptor the
//! process had, and then the listeners could accept no connection and every log's next
//! segment failed to open. The store gets a share of the open-files limit
//! (`broker::recovery::share_descriptors`), and a new log past it is refused (`Store::room_for_a_log`).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::fs::{FileIo, Fs, OpenMode};

/// A file system whose open files are counted in `open` while they live.
#[derive(Debug)]
pub struct CountingFs {
    inner: Arc<dyn Fs>,
    open: Arc<AtomicUsize>,
}

impl CountingFs {
    pub fn new(inner: Arc<dyn Fs>, open: Arc<AtomicUsize>) -> CountingFs {
        CountingFs { inner, open }
    }
}

/// An open file, counted until it is dropped (closed).
#[derive(Debug)]
struct Counted {
    file: Arc<dyn FileIo>,
    open: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FileIo for Counted {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn read_exact_vec_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        self.file.read_exact_vec_at(len, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

impl Fs for CountingFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileIo>> {
        let file = self.inner.open(path, mode)?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Counted {
            file,
            open: self.open.clone(),
        }))
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
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sim::SimFs;

    #[test]
    fn a_file_counts_while_it_is_open() {
        let open = Arc::new(AtomicUsize::new(0));
        let sim = SimFs::new(1);
        sim.create_dir_all(Path::new("/d")).unwrap();
        let fs = CountingFs::new(Arc::new(sim), open.clone());
        let a = fs.open(Path::new("/d/a"), OpenMode::FRESH).unwrap();
        let b = fs.open(Path::new("/d/b"), OpenMode::FRESH).unwrap();
        assert_eq!(open.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(open.load(Ordering::Relaxed), 1);
        assert!(
            fs.open(Path::new("/d/missing"), OpenMode::EXISTING)
                .is_err()
        );
        assert_eq!(
            open.load(Ordering::Relaxed),
            1,
            "a failed open counts nothing"
        );
        drop(b);
        assert_eq!(open.load(Ordering::Relaxed), 0);
    }
}
