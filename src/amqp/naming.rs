//! Names the broker makes up: server-named queues (`amq.gen-...`) and consumer tags
//! (`amq.ctag-...`), shaped like RabbitMQ's: the prefix, a dash, and 16 random bytes in
//! URL-safe base64 without padding (22 characters).

use crate::auth::random::random_suffix;

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
