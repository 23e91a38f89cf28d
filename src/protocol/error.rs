//! The one place where failures become AMQP reply codes.
//!
//! Every error a client can cause is an [`AmqpError`]: a reply code, the full reply text as
//! RabbitMQ writes it (`"NOT_FOUND - no queue 'q' in vhost '/'"`), and the class and method of
//! the command that caused it. Whether it closes a channel or the whole connection follows from
//! the code, exactly as in RabbitMQ: the "soft" codes (3xx and 4xx) close the channel, every
//! other code closes the connection. Errors raised while handling connection-class methods
//! always close the connection; [`crate::connection`] decides that, not the error.

use std::fmt;

use amq_protocol::types::ShortString;

/// AMQP 0-9-1 reply codes, with the names RabbitMQ puts at the start of reply texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ReplyCode {
    ContentTooLarge = 311,
    NoRoute = 312,
    NoConsumers = 313,
    ConnectionForced = 320,
    InvalidPath = 402,
    AccessRefused = 403,
    NotFound = 404,
    ResourceLocked = 405,
    PreconditionFailed = 406,
    FrameError = 501,
    SyntaxError = 502,
    CommandInvalid = 503,
    ChannelError = 504,
    UnexpectedFrame = 505,
    ResourceError = 506,
    NotAllowed = 530,
    NotImplemented = 540,
    InternalError = 541,
}

impl ReplyCode {
    /// The numeric code sent on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The upper-case name that prefixes every reply text.
    pub fn name(self) -> &'static str {
        match self {
            ReplyCode::ContentTooLarge => "CONTENT_TOO_LARGE",
            ReplyCode::NoRoute => "NO_ROUTE",
            ReplyCode::NoConsumers => "NO_CONSUMERS",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::InvalidPath => "INVALID_PATH",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::FrameError => "FRAME_ERROR",
            ReplyCode::SyntaxError => "SYNTAX_ERROR",
            ReplyCode::CommandInvalid => "COMMAND_INVALID",
            ReplyCode::ChannelError => "CHANNEL_ERROR",
            ReplyCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ReplyCode::ResourceError => "RESOURCE_ERROR",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// Hard errors close the connection; soft errors close only the channel.
    pub fn is_hard(self) -> bool {
        !matches!(
            self,
            ReplyCode::ContentTooLarge
                | ReplyCode::NoRoute
                | ReplyCode::NoConsumers
                | ReplyCode::AccessRefused
                | ReplyCode::NotFound
                | ReplyCode::ResourceLocked
                | ReplyCode::PreconditionFailed
        )
    }
}

/// An error to report to the client with Channel.Close or Connection.Close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    /// The reply code; decides channel- or connection-level (see [`ReplyCode::is_hard`]).
    pub code: ReplyCode,
    /// The complete reply text, starting with the code's name, as clients display it.
    pub text: String,
    /// Class of the method that failed (0 when no method is to blame).
    pub class_id: u16,
    /// Method id of the method that failed (0 when no method is to blame).
    pub method_id: u16,
}

impl AmqpError {
    /// An error whose text is `NAME - detail`, as RabbitMQ formats them.
    pub fn new(code: ReplyCode, detail: impl fmt::Display) -> Self {
        AmqpError {
            code,
            text: format!("{} - {}", code.name(), detail),
            class_id: 0,
            method_id: 0,
        }
    }

    /// An error whose text is the bare code name, as RabbitMQ sends `INTERNAL_ERROR` for
    /// failures it has no words for.
    pub fn bare(code: ReplyCode) -> Self {
        AmqpError {
            code,
            text: code.name().to_owned(),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Blames the method `class_id.method_id`, unless a method was already named.
    pub fn on_method(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    pub fn is_hard(&self) -> bool {
        self.code.is_hard()
    }
}

/// A reply text as a short string, cut as RabbitMQ cuts one (to 252 bytes and `...`) when it
/// is longer than 255 bytes: texts can carry what clients and operators chose (names, an
/// operator's close reason).
pub fn reply_text(text: &str) -> ShortString {
    // Cut to at most 255 bytes: the short string cannot refuse it.
    ShortString::try_new(cut_text(text).into_owned()).unwrap_or_default()
}

fn cut_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= 255 {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(format!("{}...", truncate_utf8(text, 252)))
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.text, self.code.code())
    }
}

impl std::error::Error for AmqpError {}

/// Builds an [`AmqpError`] from a reply code name and a `format!` detail:
/// `amqp_error!(NotFound, "no queue '{}' in vhost '{}'", q, vhost)`.
#[macro_export]
macro_rules! amqp_error {
    ($code:ident, $($arg:tt)*) => {
        $crate::protocol::error::AmqpError::new($crate::protocol::error::ReplyCode::$code, format_args!($($arg)*))
    };
}

pub type AmqpResult<T> = Result<T, AmqpError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_starts_with_the_code_name() {
        let e = amqp_error!(NotFound, "no queue '{}' in vhost '{}'", "q", "/");
        assert_eq!(e.text, "NOT_FOUND - no queue 'q' in vhost '/'");
        assert!(!e.is_hard());
        assert!(amqp_error!(FrameError, "x").is_hard());
    }

    #[test]
    fn reply_text_is_cut_on_a_char_boundary() {
        let e = AmqpError::new(ReplyCode::NotFound, "é".repeat(200));
        let text = reply_text(&e.text);
        assert!(text.as_str().len() <= 255);
        assert!(text.as_str().ends_with("..."));
        assert!(text.as_str().starts_with("NOT_FOUND - "));
    }
}
