//! Memory and disk alarms, as RabbitMQ raises them.
//!
//! A monitor thread looks at the process's resident memory and the free space of the data
//! directory's file system every `monitor_interval_ms`. When memory passes the high watermark
//! (`vm_memory_high_watermark`, a share of the machine's or the cgroup's memory, or an
//! absolute size) or free disk falls below `disk_free_limit`, the alarm is raised: connections
//! that publish are blocked until it clears (see `amqp::connection`). Consumers keep draining,
//! which is what clears a memory alarm.
//!
//! Connections watch [`Alarms::subscribe`]; the watermarks can be changed while the broker
//! runs (`set_vm_memory_high_watermark`, `set_disk_free_limit`), as with `rabbitmqctl`.

use std::path::{Path, PathBuf};

use crate::store::sync::Shared;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use super::heap;
use super::memory::Memory;
use crate::config::{DiskFreeLimit, MemoryWatermark};

/// Which alarms are raised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Raised {
    pub memory: bool,
    pub disk: bool,
}

impl Raised {
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The reason RabbitMQ gives in `connection.blocked`.
    pub fn reason(self) -> &'static str {
        match (self.memory, self.disk) {
            (true, true) => "low on memory & disk",
            (true, false) => "low on memory",
            (false, true) => "low on disk",
            (false, false) => "",
        }
    }
}

/// The thresholds in force.
#[derive(Debug, Clone, Copy)]
struct Thresholds {
    memory: MemoryWatermark,
    disk: DiskFreeLimit,
}

struct Inner {
    thresholds: Mutex<Thresholds>,
    /// Held by each check from reading the thresholds to raising or clearing the alarms.
    /// The monitor and a change of threshold both check: without it, the monitor's check
    /// begun with the old threshold could finish after the change's own, and clear the
    /// alarm it had just raised (a publish sent after a watermark was lowered was let
    /// through, and its publisher never told it was blocked).
    checking: Mutex<()>,
    /// The memory gauge, whose paging limit follows the watermark.
    gauge: &'static Memory,
    raised: watch::Sender<Raised>,
    data_dir: PathBuf,
    /// The store: a disk that refuses writes raises the disk alarm too.
    store: Arc<Shared>,
    interval: Duration,
    stop: AtomicBool,
    /// The least the process held beyond the accounted memory, at a check since freed
    /// memory was last released to the system (`heap`; see [`slack_to_release`]).
    slack_floor_bytes: AtomicUsize,
    /// The slack at the previous check: only what lasts two checks counts.
    slack_last_bytes: AtomicUsize,
    /// Wakes the monitor early (thresholds changed, or stop).
    wake: std::sync::Condvar,
    wake_lock: Mutex<bool>,
    /// What to do at each check while the broker holds more than its memory budget, before
    /// memory is measured (`Broker::relieve_memory`).
    over_budget: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// The broker's alarms and the thread that watches for them.
pub struct Alarms {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Alarms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alarms")
            .field("raised", &self.raised())
            .finish_non_exhaustive()
    }
}

impl Alarms {
    /// Starts the monitor; it checks once before returning, so an alarm that holds at start
    /// is raised before the first client connects.
    pub fn start(
        data_dir: &Path,
        store: Arc<Shared>,
        gauge: &'static Memory,
        memory: MemoryWatermark,
        disk: DiskFreeLimit,
        interval_ms: u64,
    ) -> std::io::Result<Alarms> {
        let (raised, _) = watch::channel(Raised::default());
        let inner = Arc::new(Inner {
            thresholds: Mutex::new(Thresholds { memory, disk }),
            checking: Mutex::new(()),
            gauge,
            raised,
            data_dir: data_dir.to_owned(),
            store,
            interval: Duration::from_millis(interval_ms.max(10)),
            stop: AtomicBool::new(false),
            slack_floor_bytes: AtomicUsize::new(usize::MAX),
            slack_last_bytes: AtomicUsize::new(usize::MAX),
            wake: std::sync::Condvar::new(),
            wake_lock: Mutex::new(false),
            over_budget: std::sync::OnceLock::new(),
        });
        check(&inner);
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("lepus-monitor".into())
            .spawn(move || monitor(&worker))?;
        Ok(Alarms {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The alarms raised now.
    pub fn raised(&self) -> Raised {
        *self.inner.raised.borrow()
    }

    /// A receiver that changes whenever an alarm is raised or cleared.
    pub fn subscribe(&self) -> watch::Receiver<Raised> {
        self.inner.raised.subscribe()
    }

    /// Changes the memory high watermark and checks at once.
    pub fn set_memory_watermark(&self, w: MemoryWatermark) {
        lock(&self.inner.thresholds).memory = w;
        check(&self.inner);
    }

    /// Changes the free disk limit and checks at once.
    pub fn set_disk_free_limit(&self, d: DiskFreeLimit) {
        lock(&self.inner.thresholds).disk = d;
        check(&self.inner);
    }

    /// The memory high watermark as set (a share of memory, or bytes).
    pub fn memory_watermark(&self) -> MemoryWatermark {
        lock(&self.inner.thresholds).memory
    }

    /// The memory limit in bytes the watermark stands for on this machine.
    pub fn memory_limit_bytes(&self) -> u64 {
        memory_limit(lock(&self.inner.thresholds).memory)
    }

    /// The free disk space below which the disk alarm is raised, in bytes.
    pub fn disk_free_limit_bytes(&self) -> u64 {
        disk_limit(lock(&self.inner.thresholds).disk)
    }

    /// Sets what the monitor does at each check while the memory gauge is past its budget
    /// (once; later calls are ignored).
    pub fn when_over_budget(&self, relief: impl Fn() + Send + Sync + 'static) {
        let _ = self.inner.over_budget.set(Box::new(relief));
    }

    /// Stops the monitor thread.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        *lock(&self.inner.wake_lock) = true;
        self.inner.wake.notify_all();
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn monitor(inner: &Inner) {
    loop {
        {
            let guard = lock(&inner.wake_lock);
            let (mut woken, _) = inner
                .wake
                .wait_timeout_while(guard, inner.interval, |woken| !*woken)
                .unwrap_or_else(|e| e.into_inner());
            *woken = false;
        }
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        check(inner);
    }
}

/// Whether enough freed memory is kept by the allocator to give it back: `slack` is what the
/// process holds beyond the accounted memory (resident minus the gauge), and `floor` the
/// least slack seen since the last release. Freed memory raises the slack, whether the
/// accounted memory fell at a check or between two (a backlog paged out within a second
/// was seen by no check, and its 80 MB stayed resident). Saying yes resets the floor, so
/// that the next check measures it after the release: memory used but not accounted
/// (queues, channels) asks for one release per `RELEASE_AFTER_FREED_BYTES` it grows.
///
/// Only slack that lasts two checks counts (the lesser of this one and `last`): memory in
/// use for a moment and accounted nowhere (a large management answer, connections coming
/// and going) would otherwise ask for releases that give nothing back, and leave a floor
/// so high that memory freed meanwhile was never released.
fn slack_to_release(floor: &AtomicUsize, last: &AtomicUsize, slack: usize) -> bool {
    let lasting = last.swap(slack, Ordering::Relaxed).min(slack);
    let least = floor.fetch_min(lasting, Ordering::Relaxed).min(lasting);
    if lasting - least >= heap::RELEASE_AFTER_FREED_BYTES {
        floor.store(usize::MAX, Ordering::Relaxed);
        return true;
    }
    false
}

/// Measures and raises or clears the alarms.
fn check(inner: &Inner) {
    if inner.gauge.over_budget()
        && let Some(relief) = inner.over_budget.get()
    {
        relief();
    }
    let _checking = lock(&inner.checking);
    let t = *lock(&inner.thresholds);
    let used = inner.gauge.used();
    let limit = memory_limit(t.memory);
    let mut rss = resident_bytes();
    if let Some(r) = rss
        && slack_to_release(
            &inner.slack_floor_bytes,
            &inner.slack_last_bytes,
            (r as usize).saturating_sub(used),
        )
    {
        // Much was freed and the allocator kept it (a backlog paged out or drained, a queue
        // deleted): give it back.
        heap::release_soon();
    }
    if rss.is_some_and(|r| r > limit) && !inner.raised.borrow().memory {
        // Before blocking publishers, see whether the process holds that much or only the
        // allocator does, with memory freed and kept.
        heap::release_now();
        rss = resident_bytes();
    }
    inner.gauge.set_watermark_bytes(limit);
    let free = free_disk_bytes(&inner.data_dir);
    let disk_limit = disk_limit(t.disk);
    let now = Raised {
        memory: rss.is_some_and(|r| r > limit),
        // A full or failing disk may refuse writes before statvfs says it is low.
        disk: free.is_some_and(|f| f < disk_limit) || inner.store.write_failing(),
    };
    let before = *inner.raised.borrow();
    if now == before {
        return;
    }
    if now.memory != before.memory {
        let state = if now.memory { "set" } else { "cleared" };
        tracing::warn!(
            resident_bytes = rss.unwrap_or(0),
            limit_bytes = limit,
            "memory resource limit alarm {state}"
        );
    }
    if now.disk != before.disk {
        let state = if now.disk { "set" } else { "cleared" };
        tracing::warn!(
            free_bytes = free.unwrap_or(0),
            limit_bytes = disk_limit,
            "disk resource limit alarm {state}"
        );
    }
    inner.raised.send_replace(now);
}

/// The memory a relative watermark is a share of: the machine's, or the cgroup's limit if
/// that is lower (in a container, the container's memory is the machine).
pub fn total_memory_bytes() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib * 1024);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|v| v.trim().parse::<u64>().ok())
    .min()
    .unwrap_or(u64::MAX);
    machine.min(cgroup)
}

fn memory_limit(w: MemoryWatermark) -> u64 {
    match w {
        MemoryWatermark::Relative(share) => (total_memory_bytes() as f64 * share) as u64,
        MemoryWatermark::Absolute(bytes) => bytes,
    }
}

fn disk_limit(d: DiskFreeLimit) -> u64 {
    match d {
        DiskFreeLimit::Absolute(bytes) => bytes,
        DiskFreeLimit::MemRelative(share) => (total_memory_bytes() as f64 * share) as u64,
    }
}

/// The process's resident memory, as the kernel counts it.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant; it has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

/// Open file descriptors and the limit on them.
pub fn file_descriptors() -> (u64, u64) {
    let used = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into the struct we own; no other memory is touched.
    let total = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_cur,
        _ => 0,
    };
    (used, total)
}

/// Raises this process's soft limit on open files to its hard limit, as Go's runtime and
/// most servers do: each connection takes a descriptor, and so does each open segment of a
/// durable queue. Returns the soft limit in effect afterwards (0 if it cannot be read).
pub fn raise_file_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard
        // one needs no privilege, and a refusal leaves the limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return limit.rlim_max;
        }
    }
    limit.rlim_cur
}

/// File descriptors kept out of the file handle limit RabbitMQ counts from: started with a
/// soft limit of 1,024, RabbitMQ 3.10.8 reports a limit of 927 and 832 sockets (checked).
const DESCRIPTORS_RESERVED: u64 = 97;

/// The client connections a process allowed `fd_limit` open files takes at most: RabbitMQ's
/// share (90% of what is left after [`DESCRIPTORS_RESERVED`], less 2: 832 of 1,024), the
/// rest kept for the store's files. Without it, a client opening idle connections until the
/// process ran out of descriptors left durable queues unable to open their next segment,
/// and the data directory's journals unable to roll over. 0 (unknown) limits nothing.
pub fn sockets_limit(fd_limit: u64) -> usize {
    if fd_limit == 0 || fd_limit == libc::RLIM_INFINITY {
        return usize::MAX;
    }
    let share = (fd_limit.saturating_sub(DESCRIPTORS_RESERVED).max(2) as f64 * 0.9) as u64;
    usize::try_from(share.saturating_sub(2)).unwrap_or(usize::MAX)
}

/// Free space for unprivileged users on the file system holding `dir`.
pub fn free_disk_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `stat` points to writable memory of
    // the right type; statvfs fills it in when it returns 0, and only then is it read. The
    // standard library has no way to ask for free space.
    let ok = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } == 0;
    if !ok {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail * stat.f_frsize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watermark_below_what_the_process_uses_raises_the_memory_alarm() {
        let dir = std::env::temp_dir();
        let store = Arc::new(Shared::new(1 << 20, Arc::new(crate::store::fs::RealFs)));
        let alarms = Alarms::start(
            &dir,
            store,
            Memory::leaked(1 << 20),
            MemoryWatermark::Absolute(1),
            DiskFreeLimit::Absolute(0),
            1000,
        )
        .unwrap();
        assert_eq!(
            alarms.raised(),
            Raised {
                memory: true,
                disk: false
            }
        );
        assert_eq!(alarms.raised().reason(), "low on memory");
        alarms.set_memory_watermark(MemoryWatermark::Relative(0.99));
        alarms.set_disk_free_limit(DiskFreeLimit::Absolute(u64::MAX));
        assert_eq!(alarms.raised().reason(), "low on disk");
        alarms.stop();
    }

    #[test]
    fn freed_memory_the_allocator_keeps_is_released_once_per_threshold_it_grows() {
        const MIB: usize = 1 << 20;
        let (floor, last) = (AtomicUsize::new(usize::MAX), AtomicUsize::new(usize::MAX));
        let check = |slack_mib: usize| slack_to_release(&floor, &last, slack_mib * MIB);
        // 10 MiB beyond what is accounted at start: the floor.
        assert!(!check(10));
        // Memory in use at one check only (a large management answer) asks for nothing.
        assert!(!check(42));
        assert!(!check(10));
        // A backlog paged out between two checks: the gauge fell, the process kept the
        // pages, and still does at the next check.
        assert!(!check(42));
        assert!(check(42));
        // The release gave back 30 MiB: measured again from there.
        assert!(!check(12));
        assert!(!check(44));
        assert!(check(44));
        // A release that gave nothing back (the memory is used, not accounted) is not asked
        // for again until the slack has grown by the threshold once more.
        assert!(!check(44));
        assert!(!check(75));
        assert!(!check(76));
        assert!(check(76));
    }

    #[test]
    fn same_as_rabbitmq_sockets_take_ninety_percent_of_the_descriptors_past_a_hundred() {
        // RabbitMQ 3.10.8 with a soft limit of 1,024 open files: "Sockets: 0, limit: 832".
        assert_eq!(sockets_limit(1024), 832);
        assert_eq!(sockets_limit(65_536), 58_893);
        assert_eq!(sockets_limit(20_000), 17_910);
        assert_eq!(sockets_limit(50), 0);
        assert_eq!(sockets_limit(0), usize::MAX);
        assert_eq!(sockets_limit(libc::RLIM_INFINITY), usize::MAX);
    }
}
