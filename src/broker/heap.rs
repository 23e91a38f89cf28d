//! Giving freed memory back to the operating system.
//!
//! The allocator (glibc's) keeps what the broker frees in its arenas for the next
//! allocation, and returns little of it by itself: a heap whose top is still in use cannot
//! shrink, whatever is free below it. So a queue that pages 60 MiB of its backlog out to disk
//! frees 60 MiB that the process keeps: measured here, a broker holding a paged backlog of
//! 100,000 x 1 KiB stayed at 86 MB resident, against 22 MB once the free pages were returned.
//! Resident memory is what operators, the memory alarm and the kernel's OOM killer see.
//!
//! Returning them (`malloc_trim`) takes each arena's lock while it works, 10-20 ms for 60 MiB
//! here, so it never runs on a runtime worker: it runs on a thread of its own, after large
//! frees only (a queue paging out, or the memory monitor seeing the process hold
//! `RELEASE_AFTER_FREED_BYTES` more beyond the accounted memory than it did), and at most
//! once per `RELEASE_INTERVAL_MS`.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// At least this long between two releases: a burst of requests makes one more, after it.
pub const RELEASE_INTERVAL_MS: u64 = 1000;

/// The memory monitor asks for a release when the process holds this much more beyond the
/// accounted memory than it did after the last one (`alarms::slack_to_release`).
pub const RELEASE_AFTER_FREED_BYTES: usize = 32 * 1024 * 1024;

/// A release was asked for and has not started yet.
static REQUESTED: AtomicBool = AtomicBool::new(false);
/// The releasing thread runs (or waits out its interval).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Asks for the free heap memory to be returned to the operating system soon, on the
/// releasing thread: at once if none ran in the last `RELEASE_INTERVAL_MS`. Cheap to call
/// again: requests meanwhile make one release.
pub fn release_soon() {
    REQUESTED.store(true, Ordering::SeqCst);
    if RUNNING.swap(true, Ordering::SeqCst) {
        // The running thread sees the request once its interval is over.
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("lepus-release".into())
        .spawn(releaser);
    if let Err(e) = spawned {
        RUNNING.store(false, Ordering::SeqCst);
        tracing::debug!(error = %e, "cannot start the thread that releases freed memory");
    }
}

/// The releasing thread: releases, waits out the interval, and goes on while asked again.
fn releaser() {
    loop {
        REQUESTED.store(false, Ordering::SeqCst);
        release_now();
        std::thread::sleep(Duration::from_millis(RELEASE_INTERVAL_MS));
        if REQUESTED.load(Ordering::SeqCst) {
            continue;
        }
        RUNNING.store(false, Ordering::SeqCst);
        // A request between the load and the store saw RUNNING set and left it to this
        // thread: take it on unless a new thread already has.
        if !REQUESTED.load(Ordering::SeqCst) || RUNNING.swap(true, Ordering::SeqCst) {
            return;
        }
    }
}

/// Returns the allocator's free pages to the operating system now, on the calling thread
/// (which must not be a runtime worker: this can take milliseconds).
pub fn release_now() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only rearranges the allocator's own free
    // memory, under the allocator's locks; it is safe to call from any thread at any time.
    // Measured: resident memory holding a paged backlog, 86 MB -> 22 MB (module docs).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Gives back most of a map's room once it holds a quarter of it. A hash map never shrinks
/// by itself: 65,536 consumers made and cancelled on each channel of a connection left
/// tables of gigabytes that nothing counted. Halving at a quarter keeps the rehashes
/// amortised O(1) per removal.
pub fn shrink_map<K: Hash + Eq, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.capacity() / 2);
    }
}

#[cfg(test)]
mod map_tests {
    use super::*;

    #[test]
    fn a_map_emptied_one_removal_at_a_time_gives_its_room_back() {
        let mut map: HashMap<u64, [u8; 64]> = (0..100_000).map(|k| (k, [0; 64])).collect();
        let peak = map.capacity();
        for k in 0..100_000 {
            map.remove(&k);
            shrink_map(&mut map);
            assert!(
                map.capacity() <= 4 * map.len() + 128,
                "{} for {}",
                map.capacity(),
                map.len()
            );
        }
        assert!(map.capacity() * 100 < peak, "{} of {peak}", map.capacity());
    }
}

#[cfg(test)]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// This process's resident memory (`VmRSS`), in bytes.
    fn resident_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    #[test]
    fn memory_freed_below_memory_in_use_goes_back_to_the_system() {
        // 128 MiB in 4 KiB blocks, every 256th kept: the heap cannot shrink by itself,
        // as under a paged-out backlog.
        const BLOCK: usize = 4096;
        const BLOCKS: usize = 128 * 1024 * 1024 / BLOCK;
        let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|i| vec![i as u8; BLOCK]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(256).map(std::mem::take).collect();
        drop(blocks);
        let Some(before) = resident_bytes() else {
            return;
        };
        release_now();
        let after = resident_bytes().unwrap_or(before);
        assert!(
            before.saturating_sub(after) >= 64 * 1024 * 1024,
            "resident {before} -> {after} bytes"
        );
        drop(kept);
    }
}
