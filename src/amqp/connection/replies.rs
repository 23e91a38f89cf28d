//! The frames and errors a connection writes on its own account: channel close and
//! close-ok, and RabbitMQ's texts for methods that cannot be decoded or do not exist.

use amq_protocol::protocol::AMQPClass;

use crate::amqp::output::Output;
use crate::amqp_error;
use crate::protocol::error::{AmqpError, ReplyCode};
use crate::protocol::frame::{FRAME_METHOD, erlang_numeric_binary, octets_description};
use crate::protocol::method::{MethodError, method_ids, write_method};

pub(super) fn write_channel_close_ok(out: &mut Output, channel: u16) {
    write_method(
        out.buf(),
        channel,
        &AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::CloseOk(
            amq_protocol::protocol::channel::CloseOk {},
        )),
    );
}

pub(super) fn write_channel_close(out: &mut Output, channel: u16, e: &AmqpError) {
    let close = amq_protocol::protocol::channel::Close {
        reply_code: e.code.code(),
        reply_text: crate::protocol::error::reply_text(&e.text),
        class_id: e.class_id,
        method_id: e.method_id,
    };
    write_method(
        out.buf(),
        channel,
        &AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Close(close)),
    );
}

/// RabbitMQ's text for method arguments that do not decode.
pub(super) fn cannot_decode(payload: &[u8]) -> AmqpError {
    let (class_id, method_id) = method_ids(payload).unwrap_or((0, 0));
    amqp_error!(
        FrameError,
        "cannot decode {}",
        erlang_numeric_binary(&payload[4.min(payload.len())..])
    )
    .on_method(class_id, method_id)
}

/// An unknown class or method. RabbitMQ's reader crashes on these and resets the socket;
/// Lepus says what happened instead (a documented difference).
pub(super) fn unknown_method(class_id: u16, method_id: u16) -> AmqpError {
    amqp_error!(
        CommandInvalid,
        "unknown method {} of class {}",
        method_id,
        class_id
    )
    .on_method(class_id, method_id)
}

pub(super) fn method_error(e: MethodError, payload: &[u8], on_channel_zero: bool) -> AmqpError {
    match e {
        MethodError::NoIds => amqp_error!(
            FrameError,
            "{}: unknown_frame",
            octets_description(FRAME_METHOD, payload)
        ),
        MethodError::Unknown {
            class_id,
            method_id,
        } => unknown_method(class_id, method_id),
        // Malformed connection-class arguments: RabbitMQ answers a bare INTERNAL_ERROR.
        MethodError::Malformed { .. } if on_channel_zero => {
            AmqpError::bare(ReplyCode::InternalError)
        }
        MethodError::Malformed { .. } => cannot_decode(payload),
        // Same as RabbitMQ 3.10.8, class and method 0 included.
        MethodError::NotUtf8 { .. } if on_channel_zero => AmqpError::bare(ReplyCode::InternalError),
        MethodError::NotUtf8 { .. } => {
            amqp_error!(FrameError, "Malformed UTF-8 in shortstr")
        }
        MethodError::TooDeep {
            class_id,
            method_id,
        } => crate::protocol::table::too_deep_error().on_method(class_id, method_id),
    }
}
