//! Names the broker makes up: server-named queues (`amq.gen-...`) and consumer tags
//! (`amq.ctag-...`), shaped like RabbitMQ's: the prefix, a dash, and 16 random bytes in
//! URL-safe base64 without padding (22 characters).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 64 unpredictable bits: a process-wide counter hashed with SipHash under a key the standard
/// library draws from the operating system.
pub fn random_u64() -> u64 {
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

/// 22 characters of URL-safe base64 encoding 16 random bytes.
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

/// A server-generated queue name.
pub fn queue_name() -> String {
    format!("amq.gen-{}", random_suffix())
}

/// A server-generated consumer tag.
pub fn consumer_tag() -> String {
    format!("amq.ctag-{}", random_suffix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_look_like_rabbitmq_names() {
        let q = queue_name();
        assert!(q.starts_with("amq.gen-"));
        assert_eq!(q.len(), "amq.gen-".len() + 22);
        assert!(consumer_tag().starts_with("amq.ctag-"));
        assert_ne!(queue_name(), queue_name());
    }
}
