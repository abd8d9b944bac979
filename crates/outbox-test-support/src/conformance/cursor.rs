//! The [`CursorStore`] contract. Run it with
//! [`cursor_conformance_tests!`](crate::cursor_conformance_tests).
//!
//! A cursor is created with version 1 and every save bumps the version by one.

use super::store::at;
use futures::future::join_all;
use outbox_ports::{Cursor, CursorPosition, CursorStore, StoreError};

fn pos(p: &str) -> CursorPosition {
    CursorPosition(p.to_owned())
}

async fn load<C: CursorStore + ?Sized>(store: &C, name: &str) -> Option<Cursor> {
    store.load(name).await.expect("load")
}

fn assert_conflict(result: Result<Cursor, StoreError>, name: &str, expected: Option<u64>) {
    match result {
        Err(StoreError::Conflict {
            id, expected: e, ..
        }) => {
            assert_eq!(id, name, "the conflict names the cursor");
            if let Some(v) = expected {
                assert_eq!(e, v, "the conflict reports the expected version");
            }
        }
        other => panic!("expected a conflict on {name}, got {other:?}"),
    }
}

/// An unknown cursor loads as `None`.
pub async fn load_of_unknown_is_none<C: CursorStore + ?Sized>(store: &C) {
    assert_eq!(load(store, "projector").await, None);
}

/// Saving with no expected version creates the cursor at version 1, and it loads back
/// exactly; other cursors are unaffected.
pub async fn create_then_load<C: CursorStore + ?Sized>(store: &C) {
    let created = store
        .save("projector", pos("0000000042:17"), None, at(5))
        .await
        .expect("create");
    assert_eq!(created.name, "projector");
    assert_eq!(created.position, pos("0000000042:17"));
    assert_eq!(created.version, 1, "a new cursor starts at version 1");
    assert_eq!(created.updated_at, at(5));
    assert_eq!(load(store, "projector").await, Some(created.clone()));
    assert_eq!(
        load(store, "projector-2").await,
        None,
        "names are compared whole"
    );

    let other = store
        .save("mailer", pos("7"), None, at(6))
        .await
        .expect("create");
    assert_eq!(other.version, 1);
    assert_eq!(
        load(store, "projector").await,
        Some(created),
        "cursors are independent"
    );
}

/// Saving with the current version moves the cursor and bumps its version by one.
pub async fn save_with_current_version_moves_it<C: CursorStore + ?Sized>(store: &C) {
    store
        .save("projector", pos("1"), None, at(0))
        .await
        .expect("create");
    let moved = store
        .save("projector", pos("2"), Some(1), at(10))
        .await
        .expect("move");
    assert_eq!(
        (moved.position.clone(), moved.version, moved.updated_at),
        (pos("2"), 2, at(10))
    );
    assert_eq!(load(store, "projector").await, Some(moved));
    let moved = store
        .save("projector", pos("3"), Some(2), at(20))
        .await
        .expect("move");
    assert_eq!(
        (moved.position.clone(), moved.version, moved.updated_at),
        (pos("3"), 3, at(20))
    );
    assert_eq!(load(store, "projector").await, Some(moved));
}

/// A save with a stale (or future) version fails with [`StoreError::Conflict`] and
/// changes nothing.
pub async fn stale_version_conflicts_and_changes_nothing<C: CursorStore + ?Sized>(store: &C) {
    store
        .save("projector", pos("1"), None, at(0))
        .await
        .expect("create");
    let current = store
        .save("projector", pos("2"), Some(1), at(10))
        .await
        .expect("move");

    let stale = store.save("projector", pos("9"), Some(1), at(20)).await;
    assert_conflict(stale, "projector", Some(1));
    assert_eq!(
        load(store, "projector").await,
        Some(current.clone()),
        "nothing changed"
    );
    let future = store.save("projector", pos("9"), Some(3), at(20)).await;
    assert_conflict(future, "projector", Some(3));
    assert_eq!(load(store, "projector").await, Some(current));
}

/// Creating a cursor that exists fails with [`StoreError::Conflict`], and moving one
/// that does not exist fails with [`StoreError::Conflict`] without creating it.
pub async fn create_and_move_mismatches_conflict<C: CursorStore + ?Sized>(store: &C) {
    let current = store
        .save("projector", pos("1"), None, at(0))
        .await
        .expect("create");
    let again = store.save("projector", pos("9"), None, at(10)).await;
    assert_conflict(again, "projector", None);
    assert_eq!(
        load(store, "projector").await,
        Some(current),
        "nothing changed"
    );

    let missing = store.save("mailer", pos("9"), Some(1), at(10)).await;
    assert_conflict(missing, "mailer", Some(1));
    assert_eq!(load(store, "mailer").await, None, "nothing was created");
}

/// Of several concurrent creators exactly one wins; the others get
/// [`StoreError::Conflict`].
pub async fn concurrent_creates_one_wins<C: CursorStore + ?Sized>(store: &C) {
    let positions: Vec<_> = (0..8).map(|n| pos(&n.to_string())).collect();
    let results = join_all(
        positions
            .iter()
            .map(|p| store.save("projector", p.clone(), None, at(0))),
    )
    .await;
    let winners = one_winner(results, "projector");
    assert_eq!(winners.version, 1);
    assert_eq!(load(store, "projector").await, Some(winners));
}

/// Of several concurrent movers with the same expected version exactly one wins; the
/// others get [`StoreError::Conflict`], and the winner's position is kept.
pub async fn concurrent_moves_one_wins<C: CursorStore + ?Sized>(store: &C) {
    store
        .save("projector", pos("0"), None, at(0))
        .await
        .expect("create");
    let positions: Vec<_> = (1..=8).map(|n| pos(&n.to_string())).collect();
    let results = join_all(
        positions
            .iter()
            .map(|p| store.save("projector", p.clone(), Some(1), at(10))),
    )
    .await;
    let winner = one_winner(results, "projector");
    assert_eq!(winner.version, 2);
    assert_ne!(winner.position, pos("0"));
    assert_eq!(load(store, "projector").await, Some(winner));
}

fn one_winner(results: Vec<Result<Cursor, StoreError>>, name: &str) -> Cursor {
    let mut winners = Vec::new();
    for r in results {
        match r {
            Ok(c) => winners.push(c),
            conflict => assert_conflict(conflict, name, None),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one saver wins: {winners:?}");
    winners.remove(0)
}
