//! Authorisation, as RabbitMQ's internal backend does it: per user and vhost, three regular
//! expressions (configure, write, read) matched against the name of the exchange or queue an
//! operation touches, and per user, vhost and topic exchange two more (write, read) matched
//! against routing keys.
//!
//! Which operation needs which permission is the caller's business (the AMQP channel, the
//! management API); this module answers "may this user do that to this resource" and words
//! the refusal as RabbitMQ does. Grants are compiled once, when set, and replaced whole, so
//! a check is two hash lookups and one regex match; [`AccessControl::version`] changes with
//! every grant so callers may cache what they checked.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::pattern::{Classes, Matcher};
use dashmap::DashMap;

use crate::amqp_error;
use crate::protocol::error::{AmqpError, AmqpResult};

/// The three permissions RabbitMQ grants per vhost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Declare and delete.
    Configure,
    /// Publish to, bind to (as destination).
    Write,
    /// Consume from, get from, purge, bind from (as source).
    Read,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Permission::Configure => "configure",
            Permission::Write => "write",
            Permission::Read => "read",
        })
    }
}

/// What a permission is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    Exchange(&'a str),
    Queue(&'a str),
}

impl Resource<'_> {
    /// The name matched against the patterns: the nameless default exchange is checked as
    /// `amq.default`, as in RabbitMQ.
    fn name(&self) -> &str {
        match self {
            Resource::Exchange("") => "amq.default",
            Resource::Exchange(n) | Resource::Queue(n) => n,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Resource::Exchange(_) => "exchange",
            Resource::Queue(_) => "queue",
        }
    }
}

/// A permission pattern, kept with its source text for listings and exports. Matched as
/// RabbitMQ's `re:run` matches it without the `unicode` option: anywhere in the name, over
/// its bytes, with `.`, `\w`, `\d` and case folding ASCII-only (with Unicode classes,
/// `^q-\d+$` let `q-١٢` through, which RabbitMQ refuses); lookaround and backreferences
/// as PCRE has them (see [`super::pattern`]).
#[derive(Debug, Clone)]
pub struct Pattern {
    pub source: String,
    matcher: Option<Matcher>,
}

impl Pattern {
    /// Compiles a pattern. As in RabbitMQ, the empty pattern grants nothing (it is read as
    /// `^$`); a pattern that does not compile also grants nothing, and says so in the log.
    pub fn new(source: &str) -> Pattern {
        let effective = if source.is_empty() { "^$" } else { source };
        let matcher = match Matcher::compile(effective, Classes::Ascii) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(pattern = source, error = %e, "permission pattern does not compile; it grants nothing");
                None
            }
        };
        Pattern {
            source: source.to_owned(),
            matcher,
        }
    }

    /// Whether `source` compiles, for callers that refuse to store a pattern that does not.
    pub fn check(source: &str) -> Result<(), String> {
        Matcher::compile(source, Classes::Ascii).map(|_| ())
    }

    /// An unanchored search, as Erlang's `re:run` does.
    pub fn matches(&self, name: &str) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.matches(name))
    }
}

/// One user's permissions in one vhost.
#[derive(Debug, Clone)]
pub struct VhostPermissions {
    pub configure: Pattern,
    pub write: Pattern,
    pub read: Pattern,
}

impl VhostPermissions {
    pub fn new(configure: &str, write: &str, read: &str) -> Self {
        VhostPermissions {
            configure: Pattern::new(configure),
            write: Pattern::new(write),
            read: Pattern::new(read),
        }
    }

    fn pattern(&self, p: Permission) -> &Pattern {
        match p {
            Permission::Configure => &self.configure,
            Permission::Write => &self.write,
            Permission::Read => &self.read,
        }
    }
}

/// One user's topic permissions on one exchange of one vhost. The patterns may name
/// `{username}` and `{vhost}`; they are expanded when the grant is made, since both are
/// known then.
#[derive(Debug, Clone)]
pub struct TopicPermissions {
    pub write: Pattern,
    pub read: Pattern,
}

/// Everything granted to one user: copied on a change while a connection still holds it.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// By vhost.
    pub vhosts: HashMap<String, VhostPermissions>,
    /// By vhost, then exchange.
    pub topics: HashMap<String, HashMap<String, TopicPermissions>>,
}

/// A topic pattern with `{username}` and `{vhost}` replaced by the user's and vhost's names,
/// escaped so that they match themselves.
pub fn expand_topic_pattern(pattern: &str, user: &str, vhost: &str) -> String {
    pattern
        .replace("{username}", &regex::escape(user))
        .replace("{vhost}", &regex::escape(vhost))
}

/// Every user's grants.
#[derive(Debug, Default)]
pub struct AccessControl {
    /// By user name.
    grants: DashMap<String, Arc<Grants>>,
    /// Changes with every grant or revocation, so a cache of checks knows when to forget.
    version: AtomicU64,
}

impl AccessControl {
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn update(&self, user: &str, change: impl FnOnce(&mut Grants)) {
        let mut entry = self.grants.entry(user.to_owned()).or_default();
        // Copied only while a connection holds the old grants: an import setting one
        // user's permissions in N vhosts copied them N times (O(N^2)).
        change(Arc::make_mut(entry.value_mut()));
        drop(entry);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// `set_permissions`: replaces the user's permissions in the vhost.
    pub fn set(&self, user: &str, vhost: &str, perms: VhostPermissions) {
        self.update(user, |g| {
            g.vhosts.insert(vhost.to_owned(), perms);
        });
    }

    /// `clear_permissions`: the user may no longer open the vhost.
    pub fn clear(&self, user: &str, vhost: &str) {
        self.update(user, |g| {
            g.vhosts.remove(vhost);
        });
    }

    /// `set_topic_permissions` for one exchange; `{username}` and `{vhost}` are expanded.
    pub fn set_topic(&self, user: &str, vhost: &str, exchange: &str, write: &str, read: &str) {
        let expand = |p: &str| expand_topic_pattern(p, user, vhost);
        let perms = TopicPermissions {
            write: Pattern::new(&expand(write)),
            read: Pattern::new(&expand(read)),
        };
        self.update(user, |g| {
            g.topics
                .entry(vhost.to_owned())
                .or_default()
                .insert(exchange.to_owned(), perms);
        });
    }

    /// `clear_topic_permissions`, for one exchange or (with `None`) all of the vhost's.
    pub fn clear_topic(&self, user: &str, vhost: &str, exchange: Option<&str>) {
        self.update(user, |g| match exchange {
            Some(x) => {
                if let Some(t) = g.topics.get_mut(vhost) {
                    t.remove(x);
                }
            }
            None => {
                g.topics.remove(vhost);
            }
        });
    }

    /// Forgets everything granted to a user (deleted) or in a vhost (deleted).
    pub fn forget_user(&self, user: &str) {
        self.grants.remove(user);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    pub fn forget_vhost(&self, vhost: &str) {
        for mut g in self.grants.iter_mut() {
            let mut grants = Grants::clone(g.value());
            grants.vhosts.remove(vhost);
            grants.topics.remove(vhost);
            *g.value_mut() = Arc::new(grants);
        }
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Everything granted to `user`.
    pub fn grants(&self, user: &str) -> Option<Arc<Grants>> {
        self.grants.get(user).map(|g| g.value().clone())
    }

    /// Every user's grants, for listings and exports.
    pub fn all(&self) -> Vec<(String, Arc<Grants>)> {
        self.grants
            .iter()
            .map(|g| (g.key().clone(), g.value().clone()))
            .collect()
    }

    /// Whether the user may open the vhost at all: any permissions there, even empty ones.
    pub fn check_vhost(&self, user: &str, vhost: &str) -> AmqpResult<()> {
        if self
            .grants(user)
            .is_some_and(|g| g.vhosts.contains_key(vhost))
        {
            return Ok(());
        }
        Err(amqp_error!(
            NotAllowed,
            "access to vhost '{}' refused for user '{}'",
            vhost,
            user
        ))
    }

    /// Whether the user may do what needs `permission` to the resource in the vhost.
    pub fn check(
        &self,
        user: &str,
        vhost: &str,
        resource: Resource<'_>,
        permission: Permission,
    ) -> AmqpResult<()> {
        let allowed = self.grants(user).is_some_and(|g| {
            g.vhosts
                .get(vhost)
                .is_some_and(|p| p.pattern(permission).matches(resource.name()))
        });
        if allowed {
            return Ok(());
        }
        Err(refused(resource, vhost, user))
    }

    /// Whether the user may publish to (`Write`) or bind from (`Read`) a topic exchange
    /// with this routing key. Without topic permissions for the exchange, everything is
    /// allowed, as in RabbitMQ.
    pub fn check_topic(
        &self,
        user: &str,
        vhost: &str,
        exchange: &str,
        routing_key: &[u8],
        permission: Permission,
    ) -> AmqpResult<()> {
        let Some(grants) = self.grants(user) else {
            return Ok(());
        };
        let Some(t) = grants.topics.get(vhost).and_then(|t| t.get(exchange)) else {
            return Ok(());
        };
        let routing_key = String::from_utf8_lossy(routing_key);
        let pattern = match permission {
            Permission::Write => &t.write,
            Permission::Read => &t.read,
            Permission::Configure => return Ok(()),
        };
        if pattern.matches(&routing_key) {
            return Ok(());
        }
        Err(amqp_error!(
            AccessRefused,
            "access to topic '{}' in exchange '{}' in vhost '{}' refused for user '{}'",
            routing_key,
            exchange,
            vhost,
            user
        ))
    }
}

/// RabbitMQ's refusal names the resource, not the permission that was missing.
fn refused(resource: Resource<'_>, vhost: &str, user: &str) -> AmqpError {
    amqp_error!(
        AccessRefused,
        "access to {} '{}' in vhost '{}' refused for user '{}'",
        resource.kind(),
        resource.name(),
        vhost,
        user
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same as RabbitMQ's `re:run` without the `unicode` option: classes are ASCII, and a
    /// literal outside ASCII still matches its own bytes.
    #[test]
    fn same_as_rabbitmq_pattern_classes_are_ascii() {
        let digits = Pattern::new("^q-\\d+$");
        assert!(digits.matches("q-12"));
        assert!(
            !digits.matches("q-\u{661}\u{662}"),
            "Arabic-Indic digits are not \\d"
        );
        let word = Pattern::new("^\\w+$");
        assert!(!word.matches("caf\u{e9}"));
        assert!(Pattern::new("^caf\u{e9}$").matches("caf\u{e9}"));
        assert!(
            !Pattern::new("^caf.$").matches("caf\u{e9}"),
            "one byte, not one char"
        );
        assert!(Pattern::new("^caf..$").matches("caf\u{e9}"));
    }

    /// Classes match bytes: a character past ASCII inside one is refused (a difference
    /// from RabbitMQ, in conformance/DIFFERENCES.md).
    #[test]
    fn a_class_with_a_character_past_ascii_is_refused() {
        assert!(Pattern::check("^[\u{e4}\u{f6}]$").is_err());
        assert!(Pattern::check("^(?!amq\\.).*").is_ok());
    }

    #[test]
    fn same_as_rabbitmq_patterns_search_unanchored_and_empty_grants_nothing() {
        let acl = AccessControl::default();
        acl.set(
            "u",
            "/",
            VhostPermissions::new("", "^amq\\.default$|^out", "q"),
        );
        let check = |r, p| acl.check("u", "/", r, p).map_err(|e| e.text);
        assert!(check(Resource::Queue("q1"), Permission::Configure).is_err());
        assert!(check(Resource::Queue(""), Permission::Configure).is_ok());
        assert!(check(Resource::Exchange(""), Permission::Write).is_ok());
        assert!(check(Resource::Exchange("outbound"), Permission::Write).is_ok());
        assert!(check(Resource::Queue("my-q"), Permission::Read).is_ok());
        assert_eq!(
            check(Resource::Exchange("x"), Permission::Write),
            Err("ACCESS_REFUSED - access to exchange 'x' in vhost '/' refused for user 'u'".into())
        );
        assert!(acl.check_vhost("u", "/").is_ok());
        assert!(acl.check_vhost("u", "other").is_err());
        assert!(acl.check_vhost("nobody", "/").is_err());
    }

    #[test]
    fn topic_permissions_expand_variables_and_default_to_allowed() {
        let acl = AccessControl::default();
        acl.set("alice", "/", VhostPermissions::new(".*", ".*", ".*"));
        let allowed =
            |exchange: &str, key: &[u8], p| acl.check_topic("alice", "/", exchange, key, p).is_ok();
        assert!(allowed("amq.topic", b"x", Permission::Write));
        acl.set_topic("alice", "/", "amq.topic", "^{username}\\.", "^{vhost}$");
        assert!(allowed("amq.topic", b"alice.a", Permission::Write));
        assert!(!allowed("amq.topic", b"bob.a", Permission::Write));
        assert!(allowed("amq.topic", b"/", Permission::Read));
        assert!(allowed("other", b"bob.a", Permission::Write));
        let v = acl.version();
        acl.clear_topic("alice", "/", None);
        assert!(acl.version() > v);
        assert!(allowed("amq.topic", b"bob.a", Permission::Write));
    }

    #[test]
    fn a_pattern_that_does_not_compile_grants_nothing() {
        let acl = AccessControl::default();
        acl.set("u", "/", VhostPermissions::new("(", "(", "("));
        assert!(
            acl.check("u", "/", Resource::Queue("("), Permission::Read)
                .is_err()
        );
        assert!(Pattern::check("(").is_err());
    }
}
