//! Unit tests of the turns to build answers.
use super::*;

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
    let second = tokio::spawn({
        let turns = turns.clone();
        async move { turns.take("greedy").await.is_some() }
    });
    settle().await;
    assert!(!second.is_finished(), "the same user's second build waits");
    let other = turns.take("patient").await;
    assert!(other.is_some(), "another user's build has the turn left");
    drop(first);
    assert!(second.await.unwrap_or(false), "then the second one runs");
    // Two turns in all: with both taken by two users, a third waits for one of them.
    let held = turns.take("patient-2").await;
    let third = tokio::spawn({
        let turns = turns.clone();
        async move { turns.take("third").await.is_some() }
    });
    settle().await;
    assert!(!third.is_finished(), "both turns are taken");
    drop(held);
    assert!(third.await.unwrap_or(false), "a turn came back");
    drop(other);
}
