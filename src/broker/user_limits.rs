//! Per-user limits (`rabbitmqctl set_user_limits`, `/api/user-limits`): how many connections
//! and channels one user may have open at once, over all of the user's connections, as
//! RabbitMQ 3.8.10 and later count them.
//!
//! A limit is read when a connection or channel opens, so a change applies to what opens
//! after it; what is open stays open, as in RabbitMQ. Counting is exact: a connection takes
//! its place with a compare-and-swap and gives it back when its [`UserConnection`] drops, a
//! channel likewise with its [`UserChannel`], so every way either ends frees it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Broker;
use crate::store::definitions::UserLimits;

/// What one user has open now.
#[derive(Debug, Default)]
pub struct UserUsage {
    /// Open AMQP connections (counted from `connection.open`).
    connections: AtomicUsize,
    /// Open channels, over all of the user's connections.
    channels: AtomicUsize,
}

/// One of a user's open connections, counted against `max-connections` until dropped.
#[derive(Debug)]
pub struct UserConnection {
    usage: Arc<UserUsage>,
    /// Whose connection this is: each channel opened on it reads the user's limit then.
    user: String,
}

impl Drop for UserConnection {
    fn drop(&mut self) {
        self.usage.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One open channel, counted against its user's `max-channels` until dropped.
#[derive(Debug)]
pub struct UserChannel(Arc<UserUsage>);

impl Drop for UserChannel {
    fn drop(&mut self) {
        self.0.channels.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a place in `count` unless it is at `max`. Same as RabbitMQ's `is_over_limit`: no
/// limit or a negative one lets everything in, 0 lets nothing in. Refused, the limit is
/// the error.
fn take(count: &AtomicUsize, max: Option<i64>) -> Result<(), i64> {
    let max = max.filter(|&m| m >= 0);
    let mut now = count.load(Ordering::Relaxed);
    loop {
        if let Some(max) = max
            && now as i64 >= max
        {
            return Err(max);
        }
        match count.compare_exchange_weak(now, now + 1, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(actual) => now = actual,
        }
    }
}

impl Broker {
    /// A connection of `user` opens, unless the user is at `max-connections` (the limit
    /// that refused it is the error).
    pub fn open_user_connection(&self, user: &str) -> Result<UserConnection, i64> {
        let usage = self.user_usage.entry(user.to_owned()).or_default().clone();
        let max = self.user(user).and_then(|u| u.limits.max_connections);
        take(&usage.connections, max)?;
        Ok(UserConnection {
            usage,
            user: user.to_owned(),
        })
    }

    /// A channel opens on `connection`, unless its user is at `max-channels`.
    pub fn open_user_channel(&self, connection: &UserConnection) -> Result<UserChannel, i64> {
        let max = self
            .user(&connection.user)
            .and_then(|u| u.limits.max_channels);
        take(&connection.usage.channels, max)?;
        Ok(UserChannel(connection.usage.clone()))
    }

    /// `set_user_limits`: the limits given replace those of the same names; the others stay.
    pub fn set_user_limits(&self, name: &str, changes: UserLimits) -> Result<(), String> {
        let _changing = self.changing_users();
        let user = self.existing_user(name)?;
        let limits = user.limits.merged(changes);
        self.put_user(crate::auth::User::clone(&user).with_limits(limits));
        Ok(())
    }

    /// `clear_user_limits`: one limit by name (a name that is no limit clears nothing, as
    /// rabbitmqctl's), or all of them.
    pub fn clear_user_limit(&self, name: &str, limit: Option<&str>) -> Result<(), String> {
        let _changing = self.changing_users();
        let user = self.existing_user(name)?;
        let mut limits = user.limits;
        match limit {
            None => limits = UserLimits::default(),
            Some(limit) => {
                if let Some(slot) = limits.slot(limit) {
                    *slot = None;
                }
            }
        }
        self.put_user(crate::auth::User::clone(&user).with_limits(limits));
        Ok(())
    }

    /// Forgets what a deleted user had open: connections still closing hold their own
    /// reference, so a user created again under the name starts from nothing.
    pub(super) fn forget_user_usage(&self, name: &str) {
        self.user_usage.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_counts_places_taken_and_no_limit_or_a_negative_one_takes_all() {
        let count = AtomicUsize::new(0);
        assert_eq!(take(&count, Some(2)), Ok(()));
        assert_eq!(take(&count, Some(2)), Ok(()));
        assert_eq!(take(&count, Some(2)), Err(2));
        assert_eq!(take(&count, None), Ok(()));
        assert_eq!(take(&count, Some(-1)), Ok(()));
        assert_eq!(count.load(Ordering::Relaxed), 4);
        assert_eq!(take(&AtomicUsize::new(0), Some(0)), Err(0));
    }
}
