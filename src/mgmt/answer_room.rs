//! Room for answers built whole (a sorted list, the definitions, a Prometheus scrape) while
//! their clients read them: [`MAX_ANSWER_BYTES_HELD`] at once, and for one user (or one
//! address, an IPv6 /64, for answers that need no login) at most
//! [`MAX_ANSWER_BYTES_PER_USER`] of it. The share keeps one user's slow readers from
//! taking the room from the others; the room, whoever asks, bounds the memory (clients
//! with many addresses get a share each, up to the room). The Prometheus listener has a room
//! of its own ([`AnswerRoom::for_scrapes`]), so that clients who never logged in cannot take
//! the API's.
//!
//! Lists in their own order are written as the client reads them, but an answer that must
//! be made whole first stays in memory until the client has taken it, and a client may take
//! a byte a minute. Without a bound, 256 slow clients of the Prometheus endpoint (which asks
//! for no login) could each hold a per-object scrape of a broker with many queues, tens of
//! megabytes each.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_core::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::http::ApiError;
use super::listener::Peer;
use super::user_shares::{UserShare, UserShares};

/// Answers built whole that the API holds at once, at most; one larger than this takes all
/// of it.
pub const MAX_ANSWER_BYTES_HELD: usize = 256 * 1024 * 1024;

/// Answers built whole that one user's requests hold at once, at most; one larger than
/// this takes all of the user's share (while a definitions export larger than it is read,
/// that user's other large answers are refused). Without it, a user allowed to read one queue could
/// keep a few connections each reading a 16 MiB `get` answer a little at a time, and every
/// other user's large answers (a page of queues, the definitions) were refused meanwhile.
pub const MAX_ANSWER_BYTES_PER_USER: usize = MAX_ANSWER_BYTES_HELD / 4;

/// Prometheus scrapes built whole that the metrics listener holds at once, at most, in a
/// room of their own: the endpoint asks for no login, and in the API's room a few slow
/// scrapers from four addresses held it all, so that every large API answer (a page of
/// queues, the definitions) was refused to the operators too.
pub const MAX_SCRAPE_BYTES_HELD: usize = 64 * 1024 * 1024;

/// Scrapes one address (an IPv6 /64) holds at once, at most.
pub const MAX_SCRAPE_BYTES_PER_ADDRESS: usize = MAX_SCRAPE_BYTES_HELD / 2;

/// Answers smaller than this are not counted: 256 connections hold at most 16 MiB of them.
pub const COUNTED_ANSWER_BYTES: usize = 64 * 1024;

/// How much of a held answer is handed to hyper at a time: it asks for more as its write
/// buffer drains.
const HANDED_BYTES: usize = 64 * 1024;

/// The room, counted in KiB.
#[derive(Debug, Clone)]
pub struct AnswerRoom {
    all: Arc<Semaphore>,
    /// The room's size: an answer larger than it takes all of it.
    all_kib: u32,
    /// Each user's (or address's) share of `all`.
    users: Arc<UserShares>,
}

impl Default for AnswerRoom {
    fn default() -> Self {
        AnswerRoom::new(MAX_ANSWER_BYTES_HELD, MAX_ANSWER_BYTES_PER_USER)
    }
}

impl AnswerRoom {
    /// The Prometheus listener's room ([`MAX_SCRAPE_BYTES_HELD`]).
    pub fn for_scrapes() -> Self {
        AnswerRoom::new(MAX_SCRAPE_BYTES_HELD, MAX_SCRAPE_BYTES_PER_ADDRESS)
    }

    fn new(all_bytes: usize, per_user_bytes: usize) -> Self {
        AnswerRoom {
            all: Arc::new(Semaphore::new(all_bytes / 1024)),
            all_kib: (all_bytes / 1024) as u32,
            users: Arc::new(UserShares::new((per_user_bytes / 1024) as u32)),
        }
    }
}

/// Whose answer this is, for the room's shares: set on the answer by the API's login
/// (`api::authenticate`). An answer without it (the Prometheus endpoint, which needs no
/// login) counts against its client's address.
#[derive(Debug, Clone)]
pub struct AnsweredFor(pub String);

/// Middleware for a listener's routes: an answer built whole and at least
/// [`COUNTED_ANSWER_BYTES`] long holds room for its size until the client has read it, or
/// is replaced by a 503 at once if there is none: an answer that waited for room would be
/// held, uncounted, while it waited. Answers written as they are read (lists in their own
/// order) are left as they are.
pub async fn hold_answers(State(room): State<AnswerRoom>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(Peer(addr))| addr.ip());
    let answer = next.run(req).await;
    let Some(len) = answer.body().size_hint().exact() else {
        return answer;
    };
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len < COUNTED_ANSWER_BYTES {
        return answer;
    }
    // An answer larger than the room takes all of it (not more, which it could never get).
    let kib = (len.div_ceil(1024)).min(room.all_kib as usize) as u32;
    let who = match (answer.extensions().get::<AnsweredFor>(), peer) {
        (Some(AnsweredFor(user)), _) => format!("user {user}"),
        (None, Some(ip)) => format!("address {}", crate::broker::connections::network_of(ip)),
        (None, None) => String::new(),
    };
    let share = room.users.try_take(&who, kib.min(room.users.per_user()));
    let permit = room.all.clone().try_acquire_many_owned(kib);
    let (Some(share), Ok(permit)) = (share, permit) else {
        return ApiError::unavailable("too many large answers at once; try again").into_response();
    };
    let (mut parts, body) = answer.into_parts();
    // The body is in memory already: this only takes it out of its wrapper.
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::internal("an answer could not be read back").into_response();
    };
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let held = Held {
        answer: Arc::new(Answer {
            bytes,
            _permit: permit,
            _share: share,
        }),
        at: 0,
    };
    Response::from_parts(parts, Body::from_stream(held))
}

/// An answer's bytes and the room they hold: both go when the last piece of it does.
struct Answer {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
    /// Given back after `_permit`.
    _share: UserShare,
}

/// A piece of an answer, which keeps the whole answer (and its room) while hyper holds it:
/// pieces sharing the answer's bytes alone kept them in memory, uncounted, while hyper's
/// write queue waited on a client taking a byte a minute.
struct Piece {
    answer: Arc<Answer>,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.answer.bytes[self.range.clone()]
    }
}

/// An answer handed to hyper a piece at a time.
struct Held {
    answer: Arc<Answer>,
    /// Where the next piece starts.
    at: usize,
}

impl Stream for Held {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let len = this.answer.bytes.len();
        if this.at >= len {
            return Poll::Ready(None);
        }
        let end = len.min(this.at + HANDED_BYTES);
        let piece = Piece {
            answer: this.answer.clone(),
            range: this.at..end,
        };
        this.at = end;
        Poll::Ready(Some(Ok(Bytes::from_owner(piece))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mgmt::listener::{Bounded, serve};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket, TcpStream};

    const ANSWER_BYTES: usize = 16 * 1024 * 1024;

    /// Asks for `path` from a client that takes almost nothing of the answer; returns the
    /// connection and the first bytes of the answer.
    async fn ask(addr: std::net::SocketAddr, path: &str) -> (TcpStream, String) {
        ask_as(addr, path, "").await
    }

    /// [`ask`] for `user` (the test's handlers answer for the user an `x-user` header
    /// names, as the API's login marks its answers).
    async fn ask_as(addr: std::net::SocketAddr, path: &str, user: &str) -> (TcpStream, String) {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("buffer size");
        let mut stream = socket.connect(addr).await.expect("connect");
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nx-user: {user}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("send");
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).await.expect("answer");
        (stream, String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Serves `/large` (an answer of [`ANSWER_BYTES`]) for the user an `x-user` header
    /// names, as the API's login marks its answers, through `room`.
    async fn serve_large_answers_for_x_user(
        room: AnswerRoom,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let large = |headers: axum::http::HeaderMap| async move {
            let user = headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let mut answer = vec![b'x'; ANSWER_BYTES].into_response();
            answer.extensions_mut().insert(AnsweredFor(user));
            answer
        };
        let app = axum::Router::new()
            .route("/large", axum::routing::get(large))
            .layer(axum::middleware::from_fn_with_state(room, hold_answers));
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = inner.local_addr().expect("address");
        let head_timeout = std::time::Duration::from_secs(20);
        (
            addr,
            tokio::spawn(serve(Bounded::new(inner), app, head_timeout)),
        )
    }

    /// An answer larger than the whole room takes all of it, and is served: the scrape
    /// room (64 MiB) asked for up to 256 MiB, and refused every scrape larger than itself.
    #[tokio::test]
    async fn an_answer_larger_than_the_room_takes_it_all() {
        // Shares of half the room: the second user's answer finds its share free and the
        // room taken.
        let room = AnswerRoom::new(4 * 1024 * 1024, 2 * 1024 * 1024);
        let (addr, server) = serve_large_answers_for_x_user(room).await;
        let (_slow, answer) = ask_as(addr, "/large", "first").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let (_, refused) = ask_as(addr, "/large", "second").await;
        assert!(
            refused.starts_with("HTTP/1.1 503"),
            "the room is taken: {refused}"
        );
        server.abort();
    }

    /// Same bound as for request bodies, for answers: a client that reads nothing of a
    /// large answer holds its room, and a second large answer finds none and is a 503;
    /// small answers still go out, and the room comes back when the slow client goes.
    #[tokio::test]
    async fn large_answers_held_at_once_are_bounded() {
        let room = AnswerRoom::new(20 * 1024 * 1024, 20 * 1024 * 1024);
        let app = axum::Router::new()
            .route(
                "/large",
                axum::routing::get(|| async { vec![b'x'; ANSWER_BYTES] }),
            )
            .route("/small", axum::routing::get(|| async { "small" }))
            .layer(axum::middleware::from_fn_with_state(room, hold_answers));
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = inner.local_addr().expect("address");
        let head_timeout = std::time::Duration::from_secs(20);
        let server = tokio::spawn(serve(Bounded::new(inner), app, head_timeout));

        let (slow, answer) = ask(addr, "/large").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("content-length: 16777216"), "{answer}");
        let (_, refused) = ask(addr, "/large").await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(
            refused.contains("too many large answers at once"),
            "{refused}"
        );
        let (_, small) = ask(addr, "/small").await;
        assert!(small.starts_with("HTTP/1.1 200"), "{small}");
        // The room comes back once the server has seen the slow client go.
        drop(slow);
        let again = async {
            loop {
                let (_, answer) = ask(addr, "/large").await;
                if !answer.starts_with("HTTP/1.1 503") {
                    return answer;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        let answer = tokio::time::timeout(std::time::Duration::from_secs(30), again)
            .await
            .expect("the room never came back");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        server.abort();
    }

    /// One user's slow readers hold at most their share of the room: their next large
    /// answer is refused, another user's is served.
    #[tokio::test]
    async fn one_user_holds_at_most_a_share_of_the_room() {
        let room = AnswerRoom::new(40 * 1024 * 1024, 20 * 1024 * 1024);
        let (addr, server) = serve_large_answers_for_x_user(room).await;

        let (_slow, answer) = ask_as(addr, "/large", "greedy").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let (_, refused) = ask_as(addr, "/large", "greedy").await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        let (_other, served) = ask_as(addr, "/large", "other").await;
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
        server.abort();
    }
}
