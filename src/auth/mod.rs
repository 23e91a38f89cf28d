//! Authentication and authorisation: users, RabbitMQ's password hashes, the SASL mechanisms
//! clients log in with ([`sasl`]), what each user may do where ([`access`]) and the
//! randomness salts and names come from ([`random`]).
//!
//! This layer knows nothing of queues or connections; the broker keeps the users, the AMQP
//! layer runs the mechanisms.

pub mod access;
pub mod pattern;
pub mod random;
pub mod sasl;
pub mod x509;

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::Md5;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::store::definitions::UserLimits;

/// RabbitMQ's name for the hashing scheme Lepus stores new passwords with.
pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

/// RabbitMQ's password hashing schemes: base64(salt ++ H(salt ++ password)) with a 4-byte
/// salt, where H is SHA-256 (the default), SHA-512, or MD5 (in exports from old versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hashing {
    #[default]
    Sha256,
    Sha512,
    Md5,
}

impl Hashing {
    /// Reads `hashing_algorithm` from a definitions file; absent means SHA-256.
    pub fn from_name(name: &str) -> Option<Hashing> {
        match name {
            "" | "rabbit_password_hashing_sha256" => Some(Hashing::Sha256),
            "rabbit_password_hashing_sha512" => Some(Hashing::Sha512),
            "rabbit_password_hashing_md5" => Some(Hashing::Md5),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Hashing::Sha256 => "rabbit_password_hashing_sha256",
            Hashing::Sha512 => "rabbit_password_hashing_sha512",
            Hashing::Md5 => "rabbit_password_hashing_md5",
        }
    }

    fn digest(self, salt: [u8; 4], password: &[u8]) -> Vec<u8> {
        fn run<D: Digest>(salt: [u8; 4], password: &[u8]) -> Vec<u8> {
            let mut h = D::new();
            h.update(salt);
            h.update(password);
            h.finalize().to_vec()
        }
        match self {
            Hashing::Sha256 => run::<Sha256>(salt, password),
            Hashing::Sha512 => run::<Sha512>(salt, password),
            Hashing::Md5 => run::<Md5>(salt, password),
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Hashing::Sha256 => 32,
            Hashing::Sha512 => 64,
            Hashing::Md5 => 16,
        }
    }

    /// Whether `hash` has this scheme's shape (base64 of salt and digest).
    pub fn accepts(self, hash: &str) -> bool {
        BASE64
            .decode(hash)
            .is_ok_and(|b| b.len() == 4 + self.digest_len())
    }
}

/// RabbitMQ's SHA-256 password hash of `password` with this salt.
pub fn hash_password(password: &str, salt: [u8; 4]) -> String {
    let mut out = salt.to_vec();
    out.extend_from_slice(&Hashing::Sha256.digest(salt, password.as_bytes()));
    BASE64.encode(out)
}

/// A hash of `password` with a fresh random salt.
pub fn new_password_hash(password: &str) -> String {
    let r = random::random_u64().to_be_bytes();
    hash_password(password, [r[0], r[1], r[2], r[3]])
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
    /// The scheme of `password_hash` (SHA-256 unless imported otherwise).
    pub hashing: Hashing,
    /// RabbitMQ's user tags (`administrator`, `monitoring`, `policymaker`, `management`,
    /// `impersonator`, or any other word): the management API authorises by them, and an
    /// `impersonator` may publish with another user's `user_id`.
    pub tags: Vec<String>,
    /// How many connections and channels the user may have open at once, over all of the
    /// user's connections (`set_user_limits`); checked when one opens.
    pub limits: UserLimits,
}

impl User {
    pub fn new(name: &str, password_hash: &str) -> Self {
        User {
            name: name.to_owned(),
            password_hash: password_hash.to_owned(),
            hashing: Hashing::Sha256,
            tags: Vec::new(),
            limits: UserLimits::default(),
        }
    }

    /// The same user with these limits.
    pub fn with_limits(mut self, limits: UserLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The same user with a hash of another scheme.
    pub fn with_hashing(mut self, hashing: Hashing) -> Self {
        self.hashing = hashing;
        self
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
        if stored.len() != 4 + self.hashing.digest_len() || candidate.is_empty() {
            return false;
        }
        let salt = [stored[0], stored[1], stored[2], stored[3]];
        let computed = self.hashing.digest(salt, candidate.as_bytes());
        stored[4..].ct_eq(&computed).into()
    }
}

/// Whether `peer` is a loopback address (IPv4-mapped IPv6 included), for RabbitMQ's
/// `loopback_users`: users who may only connect from the broker's own machine.
pub fn is_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        IpAddr::V4(v4) => v4.is_loopback(),
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
    fn imported_sha512_and_md5_hashes_check_like_rabbitmq() {
        let salt = [1, 2, 3, 4];
        for hashing in [Hashing::Sha512, Hashing::Md5] {
            let mut bytes = salt.to_vec();
            bytes.extend(hashing.digest(salt, b"s3cret"));
            let hash = BASE64.encode(bytes);
            assert!(hashing.accepts(&hash));
            assert!(!Hashing::Sha256.accepts(&hash));
            let user = User::new("u", &hash).with_hashing(hashing);
            assert!(user.password_matches("s3cret"));
            assert!(!user.password_matches("s3cre"));
        }
        assert_eq!(Hashing::from_name(""), Some(Hashing::Sha256));
        assert_eq!(
            Hashing::from_name("rabbit_password_hashing_sha512"),
            Some(Hashing::Sha512)
        );
        assert_eq!(Hashing::from_name("bcrypt"), None);
    }

    #[test]
    fn loopback_addresses_and_passwords() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("192.0.2.1".parse().unwrap()));
        let guest = User::new("guest", &new_password_hash("guest"));
        assert!(guest.password_matches("guest"));
        assert!(!guest.password_matches("gues"));
    }
}
