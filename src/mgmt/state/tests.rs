//! Unit tests of the turns to build answers.
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// A take spawned on its own task.
struct Spawned {
    /// The take has begun (and so, once the runtime has settled, it waits or is done).
    began: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<bool>,
}

fn spawn_take(turns: &Arc<BuildTurns>, user: &'static str) -> Spawned {
    let began = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let (turns, began) = (turns.clone(), began.clone());
        async move {
            began.store(true, Ordering::SeqCst);
            turns.take(user).await.is_some()
        }
    });
    Spawned { began, task }
}

/// A take cancelled between the user's share and everyone's turn gives its share back.
#[tokio::test]
async fn a_build_cancelled_while_it_waits_for_a_turn_gives_its_share_back() {
    let turns = Arc::new(BuildTurns::new(1, 1));
    let busy = turns.take("one").await;
    let waiting = spawn_take(&turns, "two");
    settle().await;
    assert!(waiting.began.load(Ordering::SeqCst));
    assert_eq!(turns.users.users(), 2, "two holds its share while it waits");
    waiting.task.abort();
    assert!(waiting.task.await.is_err(), "cancelled");
    assert_eq!(
        turns.users.users(),
        1,
        "two's share came back with the cancelled take"
    );
    drop(busy);
    assert_eq!(turns.users.users(), 0);
}

/// Lets every task that can go on run until it waits.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// One user's builds wait behind each other, not ahead of another user's: a user with
/// costly lists in flight held both turns, and everyone's lists waited behind them.
#[tokio::test]
async fn a_users_second_build_waits_for_their_first_not_for_others() {
    let turns = Arc::new(BuildTurns::new(BUILDS_AT_ONCE, BUILDS_AT_ONCE_PER_USER));
    let first = turns.take("greedy").await;
    assert!(first.is_some());
    let second = spawn_take(&turns, "greedy");
    settle().await;
    assert!(second.began.load(Ordering::SeqCst));
    assert!(
        !second.task.is_finished(),
        "the same user's second build waits"
    );
    let other = turns.take("patient").await;
    assert!(other.is_some(), "another user's build has the turn left");
    drop(first);
    assert!(
        second.task.await.unwrap_or(false),
        "then the second one runs"
    );
    // Two turns in all: with both taken by two users, a third waits for one of them.
    let held = turns.take("patient-2").await;
    let third = spawn_take(&turns, "third");
    settle().await;
    assert!(third.began.load(Ordering::SeqCst));
    assert!(!third.task.is_finished(), "both turns are taken");
    drop(held);
    assert!(third.task.await.unwrap_or(false), "a turn came back");
    drop(other);
}
