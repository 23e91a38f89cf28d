//! Authentication and authorisation: users, RabbitMQ's password hashes, the SASL mechanisms
//! clients log in with ([`sasl`]), what each user may do where ([`access`]) and the
//! randomness salts and names come from ([`random`]).
//!
//! This layer knows nothing of queues or connections; the broker keeps the users, the AMQP
//! layer runs the mechanisms.

pub mod access;
pub mod random;
pub mod sasl;

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// RabbitMQ's name for the hashing scheme Lepus stores passwords with.
pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

/// RabbitMQ's password hash: base64(salt ++ SHA-256(salt ++ password)) with a 4-byte salt.
pub fn hash_password(password: &str, salt: [u8; 4]) -> String {
    let mut out = salt.to_vec();
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    out.extend_from_slice(&h.finalize());
    BASE64.encode(out)
}

/// A hash of `password` with a fresh random salt.
pub fn new_password_hash(password: &str) -> String {
    let r = random::random_u64().to_be_bytes();
    hash_password(password, [r[0], r[1], r[2], r[3]])
}

/// Whether `hash` is a password hash Lepus can check: RabbitMQ's SHA-256 format.
pub fn is_supported_hash(hash: &str) -> bool {
    BASE64.decode(hash).is_ok_and(|b| b.len() == 4 + 32)
}

/// Reads RabbitMQ's `tags`, a comma-separated list (as `rabbitmqctl set_user_tags` and older
/// exports write it) or a JSON-style list already split.
pub fn parse_tags(text: &str) -> Vec<String> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A user that may log in.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// The salted hash, in RabbitMQ's format; the password itself is never kept.
    pub password_hash: String,
    /// Like RabbitMQ's `loopback_users`: may only connect from a loopback address.
    pub loopback_only: bool,
    /// RabbitMQ's user tags (`administrator`, `monitoring`, `policymaker`, `management`,
    /// `impersonator`, or any other word): the management API authorises by them, and an
    /// `impersonator` may publish with another user's `user_id`.
    pub tags: Vec<String>,
}

impl User {
    pub fn new(name: &str, password_hash: &str, loopback_only: bool) -> Self {
        User {
            name: name.to_owned(),
            password_hash: password_hash.to_owned(),
            loopback_only,
            tags: Vec::new(),
        }
    }

    /// The same user with these tags.
    pub fn with_tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// Checks a password against the stored hash without leaking, through timing, where
    /// they differ. Blank passwords are refused, as RabbitMQ's internal backend does.
    pub fn password_matches(&self, candidate: &str) -> bool {
        let Ok(stored) = BASE64.decode(&self.password_hash) else {
            return false;
        };
        if stored.len() != 4 + 32 || candidate.is_empty() {
            return false;
        }
        let salt = [stored[0], stored[1], stored[2], stored[3]];
        let Ok(computed) = BASE64.decode(hash_password(candidate, salt)) else {
            return false;
        };
        stored.ct_eq(&computed).into()
    }

    /// Whether the user may connect from `peer`.
    pub fn may_connect_from(&self, peer: IpAddr) -> bool {
        !self.loopback_only || peer.is_loopback() || is_mapped_loopback(peer)
    }
}

fn is_mapped_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_as_rabbitmq_password_hash_test_vector() {
        assert_eq!(
            hash_password("test12", [0x90, 0x8D, 0xC6, 0x0A]),
            "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
        );
    }

    #[test]
    fn guest_only_from_loopback() {
        let guest = User::new("guest", &new_password_hash("guest"), true);
        assert!(guest.may_connect_from("127.0.0.1".parse().unwrap()));
        assert!(guest.may_connect_from("::1".parse().unwrap()));
        assert!(!guest.may_connect_from("192.0.2.1".parse().unwrap()));
        assert!(guest.password_matches("guest"));
        assert!(!guest.password_matches("gues"));
    }
}
