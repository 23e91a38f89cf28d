//! queue.purge on a channel. Its messages leave the queue at once; the acks of the durable
//! ones that were paged out are logged a batch per turn of the connection task, which reads
//! nothing more from the client meanwhile and answers purge-ok once they are logged, as it
//! would have answered a purge done in one go. Read in one go, a tail of gigabytes held a
//! runtime worker, and every connection on it, for seconds.

use amq_protocol::protocol::{AMQPClass, queue};

use super::{After, Channel, reply};
use crate::amqp::output::Output;
use crate::amqp::session::Session;
use crate::auth::access::{Permission, Resource};
use crate::broker::queue::purge::PurgeUnderWay;
use crate::protocol::error::AmqpResult;

/// A purge under way on a channel.
pub struct Purging {
    purge: PurgeUnderWay,
    /// No purge-ok is wanted.
    nowait: bool,
}

impl Channel {
    pub(super) fn purge(
        &mut self,
        s: &Session,
        out: &mut Output,
        p: queue::Purge,
    ) -> AmqpResult<After> {
        let name = self.queue_name(p.queue.as_str())?;
        s.authorize(Resource::Queue(&name), Permission::Read)?;
        let q = s.vhost.usable_queue(&name, s.connection_id)?;
        self.purging = Some(Purging {
            purge: q.purge(),
            nowait: p.nowait,
        });
        Ok(match self.continue_purge(out) {
            true => After::Nothing,
            false => After::Continues,
        })
    }

    /// Logs the acks of the next batch of the purge under way; once it is done, answers.
    /// Returns whether it is done. (A channel that closes first drops the purge, which
    /// reads the rest through at once: see [`PurgeUnderWay`].)
    pub(super) fn continue_purge(&mut self, out: &mut Output) -> bool {
        let Some(purging) = self.purging.as_mut() else {
            return true;
        };
        if !purging.purge.step() {
            return false;
        }
        let Some(done) = self.purging.take() else {
            return true;
        };
        if !done.nowait {
            reply(
                out,
                self.id,
                AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                    message_count: done.purge.count,
                })),
            );
        }
        true
    }
}
