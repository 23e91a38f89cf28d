//! The file system under the store, as a seam: every file the store reads, writes, syncs,
//! renames or deletes goes through [`Fs`] and [`FileIo`]. The broker runs on [`RealFs`];
//! tests run the same store on a simulated disk (`store::sim`) that fails writes and syncs
//! and loses power on purpose.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// How a file is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode {
    /// Create it if it does not exist.
    pub create: bool,
    /// Empty it.
    pub truncate: bool,
    /// Never synced: a paging file, read back by checksum and wiped at the next start. The
    /// store's file cache (`store::file_cache`) may close it with writes not yet written
    /// back, which it never does to a file that is synced.
    pub scratch: bool,
}

impl OpenMode {
    /// Opens an existing file.
    pub const EXISTING: OpenMode = OpenMode {
        create: false,
        truncate: false,
        scratch: false,
    };
    /// Opens a file, creating it if need be, keeping what it holds.
    pub const CREATE: OpenMode = OpenMode {
        create: true,
        truncate: false,
        scratch: false,
    };
    /// Creates a file, or empties the one there.
    pub const FRESH: OpenMode = OpenMode {
        create: true,
        truncate: true,
        scratch: false,
    };

    /// This mode, for a file that is [`OpenMode::scratch`] if `scratch`.
    pub const fn scratch_if(self, scratch: bool) -> OpenMode {
        OpenMode { scratch, ..self }
    }
}

/// An open file: positioned reads and writes, and syncs. (Its length is asked, never
/// whether it is empty.)
#[allow(clippy::len_without_is_empty)]
pub trait FileIo: Send + Sync + std::fmt::Debug {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Reads exactly `len` bytes at `offset`, into a buffer of their own. This default
    /// zeroes the buffer first; [`RealFile`] reads into it as allocated.
    fn read_exact_vec_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and metadata durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;
}

/// A file system: the operations the store needs, no more.
pub trait Fs: Send + Sync + std::fmt::Debug {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileIo>>;
    /// A whole file's contents.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates, or replaces, a file with `data`, and syncs it.
    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    fn is_dir(&self, path: &Path) -> bool;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries of a directory.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes a directory's entries (creations, renames, deletions) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

/// A file of the operating system's file system.
#[derive(Debug)]
struct RealFile(File);

impl FileIo for RealFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    /// Reads into the buffer as allocated, without zeroing it first: paging a backlog back
    /// in reads it 256 KiB at a time, and zeroing each buffer before the read overwrote it
    /// took 3% of a drain's time (`benches/compare backlog`).
    fn read_exact_vec_at(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::<u8>::with_capacity(len);
        let mut done = 0usize;
        while done < len {
            let spare = buf.spare_capacity_mut();
            let Some(rest) = spare.get_mut(done..len) else {
                return Err(io::ErrorKind::InvalidInput.into());
            };
            let Ok(at) = libc::off_t::try_from(offset + done as u64) else {
                return Err(io::ErrorKind::InvalidInput.into());
            };
            // SAFETY: `rest` is `rest.len()` bytes of `buf`'s allocation that nothing else
            // refers to, and pread writes at most that many bytes there; reading into
            // memory not yet initialised is what pread is for.
            let n = unsafe {
                libc::pread(self.0.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), at)
            };
            match n {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                n => done += n as usize,
            }
        }
        // SAFETY: pread initialised the first `done` (= `len`) bytes of the spare capacity
        // above, and `len` is within the capacity allocated.
        unsafe { buf.set_len(done) };
        Ok(buf)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
}

impl Fs for RealFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileIo>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(mode.create)
            .truncate(mode.truncate)
            .open(path)?;
        Ok(Arc::new(RealFile(file)))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn write_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let file = self.open(path, OpenMode::FRESH)?;
        file.write_all_at(data, 0)?;
        file.sync_all()
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read into a buffer as allocated gives the bytes a zeroed read gives, and fails past
    /// the end of the file as `read_exact_at` does.
    #[test]
    fn a_read_into_a_fresh_buffer_reads_exactly_the_file() {
        let dir = std::env::temp_dir().join(format!("lepus-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("segment");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let file = RealFs.open(&path, OpenMode::FRESH).unwrap();
        file.write_all_at(&data, 0).unwrap();
        for (len, offset) in [(0, 0), (1, 0), (256 * 1024, 7), (300_000, 0), (5, 299_995)] {
            let got = file.read_exact_vec_at(len, offset).unwrap();
            assert_eq!(got, data[offset as usize..offset as usize + len]);
        }
        let past = file.read_exact_vec_at(10, 299_995).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
        let _ = std::fs::remove_dir_all(dir);
    }
}
