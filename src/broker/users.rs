//! Managing users and what they may do: what `rabbitmqctl add_user`, `set_permissions`,
//! `set_topic_permissions` and their kin change, recorded in the definitions journal and in
//! effect at once (checks read the current grants; the publish path's cache notices the
//! change through [`AccessControl::version`](crate::auth::access::AccessControl::version)).
//!
//! Refusals are rabbitmqctl's messages; the management layer turns them into its replies.

use std::sync::Arc;

use super::Broker;
use crate::auth::access::{Pattern, VhostPermissions, expand_topic_pattern};
use crate::auth::{self, Hashing, User};
use crate::store::definitions::{Change, PermissionDef, TopicPermissionDef, UserDef};

impl Broker {
    /// Every user, sorted by name.
    pub fn users(&self) -> Vec<Arc<User>> {
        let mut users: Vec<_> = self.users.iter().map(|u| u.value().clone()).collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    /// `add_user`: refused if the user exists, as rabbitmqctl does.
    pub fn add_user(&self, name: &str, password: &str) -> Result<(), String> {
        let _changing = self.changing_users();
        if self.users.contains_key(name) {
            return Err(format!("User \"{name}\" already exists"));
        }
        self.put_user(User::new(name, &auth::new_password_hash(password)));
        Ok(())
    }

    /// Creates or updates a user with a password hash in RabbitMQ's format (as a
    /// definitions import or the management API gives it); an empty hash lets no password in.
    pub fn put_user_hash(&self, name: &str, hash: &str, hashing: Hashing) -> Result<(), String> {
        let _changing = self.changing_users();
        if !hash.is_empty() && !hashing.accepts(hash) {
            return Err(format!(
                "password_hash of user \"{name}\" is not a {} hash",
                hashing.name()
            ));
        }
        let user = match self.user(name) {
            Some(u) => {
                let mut u = User::clone(&u);
                u.password_hash = hash.to_owned();
                u.hashing = hashing;
                u
            }
            None => User::new(name, hash).with_hashing(hashing),
        };
        self.put_user(user);
        Ok(())
    }

    /// `change_password`.
    pub fn change_password(&self, name: &str, password: &str) -> Result<(), String> {
        let _changing = self.changing_users();
        let user = self.existing_user(name)?;
        let mut changed = User::clone(&user);
        changed.password_hash = auth::new_password_hash(password);
        changed.hashing = Hashing::Sha256;
        self.put_user(changed);
        Ok(())
    }

    /// `set_user_tags`: replaces the user's tags.
    pub fn set_user_tags(&self, name: &str, tags: Vec<String>) -> Result<(), String> {
        let _changing = self.changing_users();
        let user = self.existing_user(name)?;
        self.put_user(User::clone(&user).with_tags(tags));
        Ok(())
    }

    /// `delete_user`, with every permission the user held.
    pub fn delete_user(&self, name: &str) -> Result<(), String> {
        let _changing = self.changing_users();
        self.existing_user(name)?;
        self.users.remove(name);
        self.access.forget_user(name);
        self.forget_user_usage(name);
        self.definitions.record(Change::DeleteUser {
            name: name.to_owned(),
        });
        // Same as RabbitMQ (`rabbit_connection_tracking` on `user_deleted`): the user's
        // connections are closed. Left open, they would keep consuming, and pick up the
        // grants of a user created again under the same name.
        for conn in self.connections.list() {
            if conn.info().opened().is_some_and(|o| o.user == name) {
                conn.close(320, format!("CONNECTION_FORCED - user '{name}' is deleted"));
            }
        }
        Ok(())
    }

    /// `set_permissions`: patterns that do not compile are refused, as RabbitMQ does.
    pub fn set_permissions(
        &self,
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), String> {
        let _changing = self.changing_users();
        self.existing_user(user)?;
        self.existing_vhost(vhost)?;
        for p in [configure, write, read] {
            Pattern::check(p).map_err(|e| format!("Invalid regular expression '{p}': {e}"))?;
        }
        self.access
            .set(user, vhost, VhostPermissions::new(configure, write, read));
        self.definitions
            .record(Change::PutPermission(PermissionDef {
                user: user.to_owned(),
                vhost: vhost.to_owned(),
                configure: configure.to_owned(),
                write: write.to_owned(),
                read: read.to_owned(),
            }));
        Ok(())
    }

    /// `clear_permissions`: the user may no longer open the vhost.
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> Result<(), String> {
        let _changing = self.changing_users();
        self.existing_user(user)?;
        self.existing_vhost(vhost)?;
        self.access.clear(user, vhost);
        self.definitions.record(Change::DeletePermission {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
        });
        Ok(())
    }

    /// `set_topic_permissions` on one exchange.
    pub fn set_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        exchange: &str,
        write: &str,
        read: &str,
    ) -> Result<(), String> {
        let _changing = self.changing_users();
        self.existing_user(user)?;
        self.existing_vhost(vhost)?;
        for p in [write, read] {
            Pattern::check(&expand_topic_pattern(p, user, vhost))
                .map_err(|e| format!("Invalid regular expression '{p}': {e}"))?;
        }
        self.access.set_topic(user, vhost, exchange, write, read);
        self.definitions
            .record(Change::PutTopicPermission(TopicPermissionDef {
                user: user.to_owned(),
                vhost: vhost.to_owned(),
                exchange: exchange.to_owned(),
                write: write.to_owned(),
                read: read.to_owned(),
            }));
        Ok(())
    }

    /// `clear_topic_permissions`, for one exchange or all of the vhost's.
    pub fn clear_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> Result<(), String> {
        let _changing = self.changing_users();
        self.existing_user(user)?;
        self.existing_vhost(vhost)?;
        self.access.clear_topic(user, vhost, exchange);
        self.definitions.record(Change::DeleteTopicPermission {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            exchange: exchange.map(str::to_owned),
        });
        Ok(())
    }

    /// Serialises the changes to users and their grants: each reads a user, changes a copy
    /// and records it, and two at once must not lose one (a limit set beside a tag change)
    /// or bring back a user deleted in between. Held for a few map operations, never across
    /// an `.await`.
    pub(super) fn changing_users(&self) -> std::sync::MutexGuard<'_, ()> {
        self.user_changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn existing_user(&self, name: &str) -> Result<Arc<User>, String> {
        self.user(name)
            .ok_or_else(|| format!("User \"{name}\" does not exist"))
    }

    fn existing_vhost(&self, name: &str) -> Result<(), String> {
        self.vhost(name)
            .map(|_| ())
            .ok_or_else(|| format!("Virtual host \"{name}\" does not exist"))
    }

    pub(super) fn put_user(&self, user: User) {
        self.definitions.record(Change::PutUser(UserDef {
            name: user.name.clone(),
            password_hash: user.password_hash.clone(),
            hashing_algorithm: user.hashing.name().into(),
            tags: user.tags.clone(),
            limits: user.limits,
        }));
        self.users.insert(user.name.clone(), Arc::new(user));
    }
}
