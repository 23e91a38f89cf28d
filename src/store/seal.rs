//! Seals: the value mixed into a record's checksum that says which segment, of which data
//! directory, the record was written for.
//!
//! A record is found by its checksum alone where the log cannot say where it starts: past
//! damage, recovery looks for the next record byte by byte, and a reused segment file's
//! earlier records lie past its new ones. Message bodies lie there too, and a publisher
//! chooses every byte of a body. A seal anyone can compute (the segment number alone, as
//! before this module) let a body hold a record that read as the queue's own: an Ack forged
//! so dropped another publisher's confirmed message at the next start. So the seal mixes in
//! a random key kept in the data directory (`seal.key`), which no client ever sees, and
//! which records leave no trace of except 32 bits per segment on disk: a forged record reads
//! with a chance of 2^-32 per try, and [`super::recover`] takes a resynchronised record only
//! when a record of the segment (or the end of its data) follows it, so that one body is one
//! try, not millions.
//!
//! Data directories written before keys keep reading: a segment whose first record is
//! sealed the old way (or not at all, older still) is read the old way, and gets no more
//! appends; its queue's next record starts a keyed segment.

use std::io;
use std::path::Path;

use super::fs::Fs;

/// How the records of one segment are checksummed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// Keyed: the data directory's key mixed with the segment number. Only records sealed
    /// so read.
    Keyed(u32),
    /// A segment written before keys: sealed with its number alone, which anyone can work
    /// out, or (older still) a plain CRC-32. Both read, except where recovery resynchronises
    /// (see [`Seal::accepts`]).
    Legacy(u32),
}

impl Seal {
    /// The old seal of segment `segment`: its number, mixed. Never 0 below 2^32 - 1
    /// segments, so a plain CRC-32 does not pass for it.
    pub fn legacy(segment: u64) -> Seal {
        Seal::Legacy((segment as u32).wrapping_add(1).wrapping_mul(0x9E37_79B1))
    }

    /// The value XORed into a record's CRC-32 when it is written.
    pub fn value(self) -> u32 {
        match self {
            Seal::Keyed(v) | Seal::Legacy(v) => v,
        }
    }

    /// Whether a record whose stored checksum is `stored`, and whose payload's CRC-32 is
    /// `computed`, was written for this segment. `resynchronising`: the record was found by
    /// looking byte by byte (through what may be a body), where an unsealed record is not
    /// taken: a plain CRC-32 is anyone's to compute.
    pub fn accepts(self, computed: u32, stored: u32, resynchronising: bool) -> bool {
        match self {
            Seal::Keyed(v) => computed ^ v == stored,
            Seal::Legacy(v) => computed ^ v == stored || (!resynchronising && computed == stored),
        }
    }
}

/// The file in the data directory that holds the key.
const KEY_FILE: &str = "seal.key";
/// Its first line: what the file is, and the version of its format.
const KEY_FILE_HEADER: &str = "lepus-seal-key 1";

/// The data directory's seal key, and whether it may hold segments from before keys.
#[derive(Debug, Clone, Copy)]
pub struct SealKey {
    /// The key; `None` when it could not be written (a full disk at start): new segments are
    /// then sealed the old way, as they were before keys, until a start that can write it.
    key: Option<u64>,
    /// Logs existed when the key was made: their segments may be sealed the old way.
    legacy: bool,
}

impl SealKey {
    /// A key of this process only, never written: for stores whose logs do not outlive it.
    pub fn ephemeral() -> SealKey {
        SealKey {
            key: Some(random_u64()),
            legacy: false,
        }
    }

    /// Reads the key of the data directory `data_dir`, or makes one (written whole: a
    /// temporary file, synced, renamed, and the directory synced, before any record uses
    /// it). A key file that cannot be read stops the start: without
    /// its key no keyed record reads, and a new key would make every log read as damage.
    pub fn load_or_create(fs: &dyn Fs, data_dir: &Path) -> io::Result<SealKey> {
        let path = data_dir.join(KEY_FILE);
        if fs.exists(&path) {
            let text = fs.read(&path)?;
            return parse(&text).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: not a seal key (the queue logs cannot be read without it)",
                        path.display()
                    ),
                )
            });
        }
        // Logs written before keys: their segments are read the old way.
        let legacy = fs
            .read_dir(&data_dir.join("queues"))
            .is_ok_and(|entries| !entries.is_empty());
        let made = SealKey {
            key: Some(random_u64()),
            legacy,
        };
        let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
        let written = fs
            .write_synced(&tmp, made.file_text().as_bytes())
            .and_then(|()| fs.rename(&tmp, &path));
        if let Err(e) = written {
            // No key file then (a rename is whole or not at all). A start on a full disk
            // must come up (the storage-faults promise): records are sealed as before keys,
            // and a later start makes the key, for a directory with logs from before it.
            let _ = fs.remove_file(&tmp);
            tracing::warn!(file = %path.display(), error = %e, "cannot write the seal key; queue logs are sealed without one until a start that can write it");
            return Ok(SealKey { key: None, legacy });
        }
        // A failed directory sync may have lost the entry after records depend on it: as
        // everywhere in the store, it stops (here, the start).
        fs.sync_dir(data_dir)?;
        Ok(made)
    }

    /// The seal of a segment made now.
    pub fn for_new_segment(&self, segment: u64) -> Seal {
        match self.key {
            Some(key) => Seal::Keyed(keyed(key, segment)),
            None => Seal::legacy(segment),
        }
    }

    /// Whether a segment of seal `seal` takes appends: one sealed the old way while a key
    /// exists does not (its queue moves on to a keyed segment).
    pub fn takes_appends(&self, seal: Seal) -> bool {
        match seal {
            Seal::Keyed(_) => true,
            Seal::Legacy(_) => self.key.is_none(),
        }
    }

    /// The seal segment `segment` was written with, as its first record shows. A segment
    /// whose first record reads under neither is taken as keyed (the old way is never
    /// guessed past damage, where a body could pass for a record): a data directory from
    /// before keys then loses the records of that segment, as it would any after damage it
    /// cannot see past.
    pub fn recovered(&self, segment: u64, first_record_reads: impl Fn(Seal) -> bool) -> Seal {
        let new = self.for_new_segment(segment);
        let legacy = Seal::legacy(segment);
        if first_record_reads(new) {
            new
        } else if (self.legacy || self.key.is_none()) && first_record_reads(legacy) {
            legacy
        } else {
            new
        }
    }
}

/// The seal of segment `segment` under `key`: not a MAC (nothing here needs one, as no
/// client sees a seal), but unpredictable without the key. Never 0, which would accept a
/// plain CRC-32.
fn keyed(key: u64, segment: u64) -> u32 {
    let v = mix(key ^ mix(segment.wrapping_add(0x9E37_79B9_7F4A_7C15))) as u32;
    if v == 0 { 0x5EA1_5EA1 } else { v }
}

/// SplitMix64's finaliser: every bit of the output depends on every bit of the input.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits from the operating system: the standard library's hash maps seed their
/// keys from it (`getrandom` on Linux), so a hash under a fresh `RandomState` is as random,
/// without a dependency for it.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    state.hash_one((now, std::process::id()))
}

impl SealKey {
    /// What the key file holds.
    fn file_text(&self) -> String {
        format!(
            "{KEY_FILE_HEADER}\nkey {:016x}\nlegacy-segments {}\n",
            self.key.unwrap_or(0),
            if self.legacy { "yes" } else { "no" }
        )
    }
}

fn parse(text: &[u8]) -> Option<SealKey> {
    let text = std::str::from_utf8(text).ok()?;
    let mut lines = text.lines();
    if lines.next()? != KEY_FILE_HEADER {
        return None;
    }
    let key = u64::from_str_radix(lines.next()?.strip_prefix("key ")?, 16).ok()?;
    let legacy = match lines.next()? {
        "legacy-segments yes" => true,
        "legacy-segments no" => false,
        _ => return None,
    };
    Some(SealKey {
        key: Some(key),
        legacy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_seal_apart_and_never_as_a_plain_crc() {
        let a = SealKey {
            key: Some(1),
            legacy: false,
        };
        let b = SealKey {
            key: Some(2),
            legacy: false,
        };
        assert_ne!(a.for_new_segment(5), b.for_new_segment(5));
        assert_ne!(a.for_new_segment(5), a.for_new_segment(6));
        assert_ne!(a.for_new_segment(5).value(), Seal::legacy(5).value());
        let seal = a.for_new_segment(5);
        assert!(!seal.accepts(0x1234, 0x1234, false), "a plain CRC-32");
        assert!(!seal.accepts(0x1234, 0x1234 ^ Seal::legacy(5).value(), false));
        assert!(seal.accepts(0x1234, 0x1234 ^ seal.value(), true));
    }

    /// A directory of its own for each test.
    fn temp_dir() -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lepus-seal-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_key_file_reads_back_as_written_and_a_damaged_one_stops_the_start() {
        let dir = temp_dir();
        let fs = super::super::fs::RealFs;
        let made = SealKey::load_or_create(&fs, &dir).unwrap();
        assert!(!made.legacy, "a new data directory has no old segments");
        let again = SealKey::load_or_create(&fs, &dir).unwrap();
        assert_eq!(made.key, again.key);
        std::fs::write(dir.join(KEY_FILE), b"lepus-seal-key 1\nkey zz\n").unwrap();
        let err = SealKey::load_or_create(&fs, &dir).unwrap_err();
        assert!(err.to_string().contains("seal.key"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_data_directory_with_logs_from_before_keys_reads_them_the_old_way() {
        let dir = temp_dir();
        std::fs::create_dir_all(dir.join("queues/7")).unwrap();
        let key = SealKey::load_or_create(&super::super::fs::RealFs, &dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(key.legacy);
        assert_eq!(key.recovered(3, |s| s == Seal::legacy(3)), Seal::legacy(3));
        assert!(!key.takes_appends(Seal::legacy(3)));
        assert!(key.takes_appends(key.for_new_segment(3)));
        // Damage at the start of a segment: never guessed to be old.
        assert_eq!(key.recovered(3, |_| false), key.for_new_segment(3));
        // A directory made with a key never reads the old way.
        let fresh = SealKey {
            legacy: false,
            ..key
        };
        assert_eq!(
            fresh.recovered(3, |s| s == Seal::legacy(3)),
            fresh.for_new_segment(3)
        );
    }

    /// A start on a full disk comes up without a key (records sealed as before keys), and
    /// the next start that can write one reads what that start wrote.
    #[test]
    fn a_start_that_cannot_write_the_key_seals_the_old_way_and_a_later_one_reads_it() {
        use super::super::sim::{Faults, SimFs};
        let sim = SimFs::new(3);
        let dir = Path::new("/sim/seal");
        sim.create_dir_all(&dir.join("queues/1")).unwrap();
        sim.set_faults(Faults {
            capacity_bytes: Some(0),
            ..Faults::default()
        });
        let full = SealKey::load_or_create(&sim, dir).unwrap();
        assert_eq!(full.key, None);
        assert!(!sim.exists(&dir.join(KEY_FILE)));
        assert!(full.takes_appends(full.for_new_segment(4)));
        assert_eq!(full.for_new_segment(4), Seal::legacy(4));
        sim.set_faults(Faults::default());
        let later = SealKey::load_or_create(&sim, dir).unwrap();
        assert!(later.key.is_some() && later.legacy);
        assert_eq!(
            later.recovered(4, |s| s == Seal::legacy(4)),
            Seal::legacy(4)
        );
    }
}
