//! Unpredictable numbers and names: salts for password hashes, the random part of
//! server-named queues, consumer tags and direct reply-to names. They come from the operating
//! system's random source.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// 64 unpredictable bits from the operating system.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_ne_bytes(bytes),
        Err(e) => {
            // Linux's getrandom(2) does not fail once the pool is initialised; if a sandbox
            // forbids it, names stay unique and unguessable enough through SipHash under the
            // key std drew at start (itself from the OS), over a counter.
            tracing::warn!(error = %e, "the OS random source failed; using a keyed hash");
            fallback()
        }
    }
}

fn fallback() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static STATE: RandomState = RandomState::new();
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    STATE.with(|s| {
        let mut h = s.build_hasher();
        h.write_u64(n);
        h.finish()
    })
}

const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// 22 characters of URL-safe base64 encoding 16 random bytes, shaped like the random part of
/// RabbitMQ's generated names.
pub fn random_suffix() -> String {
    let mut bytes = [0u8; 18];
    bytes[..8].copy_from_slice(&random_u64().to_be_bytes());
    bytes[8..16].copy_from_slice(&random_u64().to_be_bytes());
    let mut out = String::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16 | (chunk[1] as u32) << 8 | chunk[2] as u32;
        for shift in [18, 12, 6, 0] {
            out.push(URL_SAFE[(n >> shift & 63) as usize] as char);
        }
    }
    // 16 bytes make 21 full characters and 2 bits of a 22nd: drop what the padding made.
    out.truncate(22);
    out
}
