//! One in-process queue per user for writes on the database servers.
//!
//! A write locks its user's row (`items::lock_user`) for the per-user
//! sequence, so one user's writes run one at a time whatever we do. Left to
//! the database, each waiting write holds a pooled connection while it
//! waits for that row lock: a burst of one user's writes (a device
//! replaying its offline queue) took all of a pod's connections, and every
//! other request timed out for a connection (503; `bench/peers.sh`'s
//! fan-out, 34 of 200 writes). Queued here, they wait holding nothing, and
//! are refused only when the queue stops moving.
//!
//! Hand-written: a map of weak references to tokio mutexes is all a keyed
//! lock is, and no well-kept crate offers one for tokio.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use tokio::sync::OwnedMutexGuard;

/// One user's queue, and how many turns it has given (its progress).
#[derive(Debug, Default)]
struct Turn {
    lock: Arc<tokio::sync::Mutex<()>>,
    given: AtomicU64,
}

/// A user's turn, held until dropped.
#[derive(Debug)]
pub struct UserTurn {
    _held: OwnedMutexGuard<()>,
    _turn: Arc<Turn>,
}

/// The users with a write queued or running in this process.
#[derive(Debug, Default)]
pub struct UserTurns {
    turns: Mutex<Map>,
}

#[derive(Debug, Default)]
struct Map {
    by_user: HashMap<String, Weak<Turn>>,
    /// Size at which the map is next swept of users nobody waits for:
    /// doubling keeps the sweeps' cost constant per insert.
    sweep_at: usize,
}

impl UserTurns {
    /// Waits for `user_id`'s turn, in arrival order, for as long as the
    /// queue moves: None when no turn was given for `stall` (the write
    /// ahead is stuck, e.g. on a database that went away), not when the
    /// queue is merely long (a device replaying 200 offline writes).
    pub async fn take(&self, user_id: &str, stall: Duration) -> Option<UserTurn> {
        let turn = self.turn_of(user_id);
        let mut waiting = std::pin::pin!(turn.lock.clone().lock_owned());
        let mut given = turn.given.load(Ordering::Relaxed);
        loop {
            match tokio::time::timeout(stall, &mut waiting).await {
                Ok(held) => {
                    turn.given.fetch_add(1, Ordering::Relaxed);
                    return Some(UserTurn {
                        _held: held,
                        _turn: turn,
                    });
                }
                Err(_) => {
                    let now = turn.given.load(Ordering::Relaxed);
                    if now == given {
                        return None;
                    }
                    given = now;
                }
            }
        }
    }

    fn turn_of(&self, user_id: &str) -> Arc<Turn> {
        let mut map = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(turn) = map.by_user.get(user_id).and_then(Weak::upgrade) {
            return turn;
        }
        if map.by_user.len() >= map.sweep_at {
            map.by_user.retain(|_, w| w.strong_count() > 0);
            map.sweep_at = (map.by_user.len() * 2).max(64);
        }
        let turn = Arc::new(Turn::default());
        map.by_user
            .insert(user_id.to_string(), Arc::downgrade(&turn));
        turn
    }

    /// Users in the map (those with a turn alive, and the dead ones not yet
    /// swept).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_user
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const STALL: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn one_users_writes_wait_for_each_other_and_others_do_not() {
        let turns = UserTurns::default();
        let held = turns.take("alice", STALL).await.expect("free");
        assert!(
            turns.take("alice", STALL).await.is_none(),
            "alice's second write is refused when the first does not move"
        );
        assert!(
            turns.take("bob", STALL).await.is_some(),
            "bob does not wait for alice"
        );
        drop(held);
        assert!(
            turns.take("alice", STALL).await.is_some(),
            "free once released"
        );
    }

    /// 20 turns of 50 ms each: the last waits 1 s, five times the stall
    /// limit, and is given its turn since the queue kept moving.
    #[tokio::test]
    async fn a_long_queue_that_moves_is_waited_out_in_order() {
        let turns = Arc::new(UserTurns::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (turns, order) = (turns.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let turn = turns.take("alice", STALL).await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(50)).await;
                turn.is_some()
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for t in tasks {
            assert!(t.await.unwrap(), "every write had its turn");
        }
        assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn users_nobody_waits_for_are_swept() {
        let turns = UserTurns::default();
        for i in 0..1000 {
            drop(turns.take(&format!("u{i}"), STALL).await);
        }
        assert!(turns.len() <= 64, "{} users kept", turns.len());
        let kept = turns.take("held", STALL).await;
        for i in 0..1000 {
            drop(turns.take(&format!("v{i}"), STALL).await);
        }
        assert!(turns.len() <= 64);
        drop(kept);
    }
}
