//! Group commit: the holds and settlements of concurrent calls share one
//! transaction.
//!
//! Every call writes twice (a budget hold before it runs, its settlement
//! after), and a commit costs far more than the rows in it: WAL frames for
//! every page touched, file locks, an fsync in `full` mode. So writes queue
//! here and whoever finds no batch running (the *leader*) commits every
//! queued write in one transaction, then publishes each write's answer.
//! Batching changes how many commits there are, never when a caller learns
//! its write is safe: every answer is published after its commit.
//!
//! Two kinds of callers wait here:
//! - **threads** ([`Ledger::group_commit`]) block on a condition variable;
//! - **tasks** ([`Ledger::group_commit_async`]) await a [`Notify`], so a
//!   waiting call does not hold a runtime worker. This matters on a small
//!   machine: with two workers, blocking waiters meant at most two writes
//!   could ever be queued, so batches stayed at about two writes.
//!
//! Invariants:
//! - Only a caller actually running [`Ledger::lead`] holds the lead
//!   ([`Lead::Running`]); it never yields while holding it, so a thread
//!   waiting on a running leader always wakes.
//! - When a leader finishes and writes are still queued, it hands the lead
//!   on: to the waiting threads if any is queued, else to the first queued
//!   task ([`Lead::Handed`]). A handed lead may be taken by any caller
//!   who sees it first, so a task that is slow to be polled never stalls
//!   the others.
//! - A task about to lead yields once first if others are likely to write
//!   too (answers not yet collected, writes queued), so their writes join
//!   its batch; a lone caller leads at once.
//! - A task that goes away (its future dropped) never strands anything:
//!   its write is still committed (a settlement is a record, never lost); a
//!   hold committed for nobody is released in a later batch; a lead handed
//!   to it is passed on, or taken and run in its drop.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::Notify;

use super::{
    CallRecord, Ledger, LedgerError, LimitCheck, Overspend, ReservationId, drop_expired_holds,
    hold, insert, lock_ignoring_poison,
};

/// The group-commit queue: writes waiting for the next commit, and the
/// answers of committed ones until their callers collect them.
///
/// Callers wait on `answered` (threads) or their own [`Notify`] (tasks),
/// never on the connection: a caller whose write was committed by someone
/// else wakes as soon as the answers are published, instead of queueing
/// for the connection just to learn it is done. (An earlier version did
/// that; with 8 threads each commit then held one write.)
#[derive(Default)]
pub(super) struct CommitQueue {
    pub(super) state: Mutex<QueueState>,
    /// Signalled whenever a batch's answers are published and whenever the
    /// lead changes, so waiting threads re-check.
    answered: Condvar,
}

#[derive(Default)]
pub(super) struct QueueState {
    /// Writes not yet taken by a leader, in arrival order.
    pub(super) pending: Vec<Pending>,
    /// Answers not yet collected, by ticket, with the hold a settlement
    /// among them was to replace (released if nobody collects a failure).
    answers: HashMap<u64, (Done, Option<ReservationId>)>,
    /// Tickets of writes in a running batch whose caller went away: their
    /// answers are dropped (and a hold among them released) on publish.
    abandoned: HashSet<u64>,
    pub(super) lead: Lead,
    next_ticket: u64,
    /// Batches run and writes committed in them, for [`Ledger::commit_stats`].
    pub(super) batches: u64,
    pub(super) ops: u64,
}

/// Who runs the next batch.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Lead {
    /// Nobody: the next caller to look leads.
    #[default]
    Idle,
    /// A caller is running a batch now.
    Running,
    /// Offered to the task that queued this ticket; anyone may take it.
    Handed(u64),
}

/// A write queued for the next group commit.
pub(super) struct Pending {
    op: Op,
    ticket: u64,
    waiter: Waiter,
}

/// How the caller of a queued write learns its answer is published.
#[derive(Clone)]
enum Waiter {
    /// A thread blocked on [`CommitQueue::answered`].
    Thread,
    /// A task awaiting this.
    Task(Arc<Notify>),
    /// Nobody: the caller went away, or the write is the ledger's own
    /// (releasing a hold nobody will use).
    Nobody,
}

/// The writes every call makes, which are group-committed.
pub(super) enum Op {
    Reserve {
        user_id: String,
        checks: Vec<LimitCheck>,
        amount_nanos: i64,
        now_ms: i64,
        ttl: Duration,
    },
    Settle {
        reservation: ReservationId,
        rec: Box<CallRecord>,
    },
    /// Drops a hold whose caller went away before learning it was granted.
    Release(ReservationId),
}

/// The answer to an [`Op`].
pub(super) enum Done {
    Reserved(Result<Result<ReservationId, Overspend>, LedgerError>),
    Settled(Result<i64, LedgerError>),
    Released(Result<(), LedgerError>),
}

impl Done {
    /// The answer a write gets when committing it failed with `e`.
    fn failed(op: &Op, e: LedgerError) -> Done {
        match op {
            Op::Reserve { .. } => Done::Reserved(Err(e)),
            Op::Settle { .. } => Done::Settled(Err(e)),
            Op::Release(_) => Done::Released(Err(e)),
        }
    }

    /// The hold this answer granted, if it granted one.
    fn granted_hold(&self) -> Option<ReservationId> {
        match self {
            Done::Reserved(Ok(Ok(id))) => Some(*id),
            _ => None,
        }
    }
}

/// One write of a running batch, as the leader keeps it to publish the
/// answer: the op itself has gone into the transaction.
struct Taken {
    ticket: u64,
    waiter: Waiter,
    /// Kind of the op, to build an error answer if the batch panics.
    kind: fn(LedgerError) -> Done,
    /// The hold a settlement replaces: released if the settlement failed
    /// and its caller is gone (nobody else will).
    settles: Option<ReservationId>,
}

/// Publishes an error answer for every write of the batch if running it
/// panicked, and passes the lead on either way, so no waiter is left
/// waiting for a leader that is gone.
struct LeaderGuard<'a> {
    queue: &'a CommitQueue,
    taken: Vec<Taken>,
    answered: bool,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut st = lock_ignoring_poison(&self.queue.state);
        let taken = std::mem::take(&mut self.taken);
        let results = taken
            .iter()
            .map(|t| {
                (t.kind)(LedgerError::Sqlite(
                    "internal error: the ledger write panicked".into(),
                ))
            })
            .collect();
        publish(&mut st, taken, results);
        // Panicking: nobody here can lead again, so leftovers wait for the
        // next caller (they are releases of holds, which also expire).
        if pass_lead(&mut st) {
            st.lead = Lead::Idle;
        }
        drop(st);
        self.queue.answered.notify_all();
    }
}

/// Hands each write's answer to its caller; a granted hold nobody will
/// collect is queued for release.
fn publish(st: &mut QueueState, taken: Vec<Taken>, results: Vec<Done>) {
    for (t, done) in taken.into_iter().zip(results) {
        let gone = st.abandoned.remove(&t.ticket) || matches!(t.waiter, Waiter::Nobody);
        if gone {
            if let Some(id) = done.granted_hold() {
                enqueue(st, Op::Release(id), Waiter::Nobody);
            }
            match done {
                Done::Released(Err(e)) => {
                    tracing::warn!(error = %e, "could not release an unused hold; it will expire");
                }
                // Its caller (a cancelled call) cannot report this: say it
                // here, and free the money it held.
                Done::Settled(Err(e)) => {
                    tracing::error!(error = %e, "a cancelled call's attempt could NOT be recorded in the ledger");
                    if let Some(id) = t.settles {
                        enqueue(st, Op::Release(id), Waiter::Nobody);
                    }
                }
                _ => {}
            }
            continue;
        }
        st.answers.insert(t.ticket, (done, t.settles));
        if let Waiter::Task(n) = &t.waiter {
            n.notify_one();
        }
    }
}

/// Queues `op` and returns its ticket.
fn enqueue(st: &mut QueueState, op: Op, waiter: Waiter) -> u64 {
    let ticket = st.next_ticket;
    st.next_ticket = st.next_ticket.wrapping_add(1);
    st.pending.push(Pending { op, ticket, waiter });
    ticket
}

/// Steps the finishing leader down. Returns `true` if it must lead
/// again: writes are queued and nobody else can run them.
///
/// Waiting threads are preferred (they are blocked anyway, and waking them
/// costs nothing extra: every publish wakes them); otherwise the first
/// queued task is offered the lead and woken.
fn pass_lead(st: &mut QueueState) -> bool {
    if st.pending.is_empty()
        || st
            .pending
            .iter()
            .any(|p| matches!(p.waiter, Waiter::Thread))
    {
        st.lead = Lead::Idle;
        return false;
    }
    let task = st.pending.iter().find_map(|p| match &p.waiter {
        Waiter::Task(n) => Some((p.ticket, n.clone())),
        _ => None,
    });
    match task {
        Some((ticket, n)) => {
            st.lead = Lead::Handed(ticket);
            n.notify_one();
            false
        }
        None => {
            st.lead = Lead::Running;
            true
        }
    }
}

/// Clears up after a task that stopped waiting (its future was dropped):
/// makes sure its write ends well without it.
struct TaskWait<'a> {
    ledger: &'a Ledger,
    ticket: u64,
    finished: bool,
}

impl Drop for TaskWait<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let queue = &*self.ledger.queue;
        let mut st = lock_ignoring_poison(&queue.state);
        let ticket = self.ticket;
        if let Some((done, settles)) = st.answers.remove(&ticket) {
            if let Some(id) = done.granted_hold() {
                enqueue(&mut st, Op::Release(id), Waiter::Nobody);
            }
            // A failed settlement nobody will see: free the money it held,
            // as `publish` does for one whose caller left earlier.
            if let (Done::Settled(Err(e)), Some(id)) = (&done, settles) {
                tracing::error!(error = %e, "a cancelled call's attempt could NOT be recorded in the ledger");
                enqueue(&mut st, Op::Release(id), Waiter::Nobody);
            }
        } else if let Some(p) = st.pending.iter_mut().find(|p| p.ticket == ticket) {
            p.waiter = Waiter::Nobody;
        } else {
            st.abandoned.insert(ticket);
        }
        if st.lead == Lead::Handed(ticket) {
            st.lead = Lead::Idle;
        }
        // With nobody leading, what is queued (this write, a release) must
        // not wait for a caller that may never come: a settlement would sit
        // uncommitted in memory. Hand it on, or run it here.
        if st.lead == Lead::Idle && !st.pending.is_empty() && pass_lead(&mut st) {
            st = self.ledger.lead(st);
        }
        drop(st);
        queue.answered.notify_all();
    }
}

impl Ledger {
    /// Queues `op` and returns its answer once it is committed, blocking
    /// this thread meanwhile. For callers outside an async runtime (the
    /// CLI) and for drops, which cannot await.
    ///
    /// If no batch is running, the caller becomes the leader: it takes
    /// every queued op, runs them in queue order in one transaction and
    /// publishes each op's answer. Otherwise it waits for the running
    /// batch's answers; if its op was queued too late for that batch, it
    /// leads the next one, which holds everything queued meanwhile.
    pub(super) fn group_commit(&self, op: Op) -> Done {
        let queue = &*self.queue;
        let mut st = lock_ignoring_poison(&queue.state);
        let ticket = enqueue(&mut st, op, Waiter::Thread);
        loop {
            if let Some((done, _)) = st.answers.remove(&ticket) {
                return done;
            }
            if st.lead == Lead::Running {
                st = queue.answered.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Idle, or handed to a task not yet polled: take it.
            st.lead = Lead::Running;
            st = self.lead(st);
        }
    }

    /// Returns once every write queued before the call is committed,
    /// blocking this thread meanwhile (leading a batch itself when nobody
    /// runs one). For a read that must see writes other callers queued but
    /// may not have committed yet: a call dropped while its settlement was
    /// queued leaves that write to a batch another task may not have run.
    pub fn drain_writes(&self) {
        let queue = &*self.queue;
        let mut st = lock_ignoring_poison(&queue.state);
        loop {
            if st.lead == Lead::Running {
                st = queue.answered.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            if st.pending.is_empty() {
                return;
            }
            // Idle, or handed to a task not yet polled: take it.
            st.lead = Lead::Running;
            st = self.lead(st);
        }
    }

    /// [`Ledger::group_commit`] for tasks: waiting does not block the
    /// runtime worker, so while one caller commits, the others keep
    /// running and queue their writes for the next batch.
    ///
    /// A caller that finds no batch running leads, synchronously on its
    /// own worker (a commit takes tens of microseconds; handing it to
    /// another thread would cost two wake-ups): at once when alone, after
    /// one yield when others are likely to write too. Cancel-safe: if the future is dropped
    /// while waiting, the write is still committed, a hold granted to
    /// nobody is released, and a lead handed to it is passed on.
    pub(super) async fn group_commit_async(&self, op: Op) -> Done {
        let queue = &*self.queue;
        let notify = Arc::new(Notify::new());
        let ticket = enqueue(
            &mut lock_ignoring_poison(&queue.state),
            op,
            Waiter::Task(notify.clone()),
        );
        let mut wait = TaskWait {
            ledger: self,
            ticket,
            finished: false,
        };
        let mut yielded = false;
        loop {
            let ours = {
                let mut st = lock_ignoring_poison(&queue.state);
                if let Some((done, _)) = st.answers.remove(&ticket) {
                    wait.finished = true;
                    return done;
                }
                // A lead handed to another task is ours to take too, as it
                // is for threads: the task it was offered to may be slow to
                // be polled (or held unpolled), and must not stall the rest.
                let ours = matches!(st.lead, Lead::Idle | Lead::Handed(_));
                // A yield is worth it only with company: callers answered
                // but not yet back (they tend to write again at once), or
                // writes already queued. A lone caller leads at once: on
                // the multi-thread runtime a yield can hand the task to the
                // other worker, which doubled the CPU of a sequential call.
                if ours && st.answers.is_empty() && st.pending.len() <= 1 {
                    yielded = true;
                }
                if ours && yielded {
                    st.lead = Lead::Running;
                    drop(self.lead(st));
                    continue;
                }
                ours
            };
            if ours {
                // Yield once before leading: tasks that are ready (woken by
                // the last batch's answers, say) queue their writes first,
                // so this batch holds them too; without it, batches stayed
                // near one write each.
                yielded = true;
                tokio::task::yield_now().await;
            } else {
                notify.notified().await;
            }
        }
    }

    /// Runs batches while this caller holds the lead ([`Lead::Running`],
    /// set by the caller under the same lock), then passes it on. Returns
    /// the queue state locked again.
    fn lead<'q>(
        &'q self,
        mut st: std::sync::MutexGuard<'q, QueueState>,
    ) -> std::sync::MutexGuard<'q, QueueState> {
        let queue = &*self.queue;
        loop {
            debug_assert_eq!(st.lead, Lead::Running);
            let batch = std::mem::take(&mut st.pending);
            if batch.is_empty() {
                st.lead = Lead::Idle;
                queue.answered.notify_all();
                return st;
            }
            st.batches += 1;
            st.ops += batch.len() as u64;
            drop(st);
            let mut ops = Vec::with_capacity(batch.len());
            let mut guard = LeaderGuard {
                queue,
                taken: Vec::with_capacity(batch.len()),
                answered: false,
            };
            for p in batch {
                guard.taken.push(Taken {
                    ticket: p.ticket,
                    waiter: p.waiter,
                    kind: match p.op {
                        Op::Reserve { .. } => |e| Done::Reserved(Err(e)),
                        Op::Settle { .. } => |e| Done::Settled(Err(e)),
                        Op::Release(_) => |e| Done::Released(Err(e)),
                    },
                    settles: match &p.op {
                        Op::Settle { reservation, .. } => Some(*reservation),
                        _ => None,
                    },
                });
                ops.push(p.op);
            }
            let results = {
                let mut conn = self.lock();
                self.run_batch(&mut conn, &ops)
            };
            st = lock_ignoring_poison(&queue.state);
            guard.answered = true;
            publish(&mut st, std::mem::take(&mut guard.taken), results);
            let again = pass_lead(&mut st);
            queue.answered.notify_all();
            if !again {
                return st;
            }
        }
    }

    /// Runs `ops` in one transaction; if that fails, each op alone, so
    /// one bad op (or a full disk halfway) gives each caller its own
    /// answer instead of failing them all.
    fn run_batch(&self, conn: &mut Connection, ops: &[Op]) -> Vec<Done> {
        let owner = self.instance_id();
        let run = |conn: &mut Connection, items: &[Op]| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(now_ms) = items.iter().find_map(|op| match op {
                Op::Reserve { now_ms, .. } => Some(*now_ms),
                _ => None,
            }) {
                drop_expired_holds(&tx, now_ms)?;
            }
            let mut out = Vec::with_capacity(items.len());
            for op in items {
                out.push(match op {
                    Op::Settle { reservation, rec } => {
                        let id = insert(&tx, rec)?;
                        tx.prepare_cached("DELETE FROM reservations WHERE id = ?1")?
                            .execute([reservation.0])?;
                        Done::Settled(Ok(id))
                    }
                    Op::Release(reservation) => {
                        tx.prepare_cached("DELETE FROM reservations WHERE id = ?1")?
                            .execute([reservation.0])?;
                        Done::Released(Ok(()))
                    }
                    Op::Reserve {
                        user_id,
                        checks,
                        amount_nanos,
                        now_ms,
                        ttl,
                    } => Done::Reserved(Ok(hold(
                        &tx,
                        user_id,
                        checks,
                        *amount_nanos,
                        *now_ms,
                        *ttl,
                        owner,
                    )?)),
                });
            }
            tx.commit()?;
            Ok::<_, rusqlite::Error>(out)
        };
        // The ledger locked by another process past the busy timeout is
        // no one write's fault: one more try of the whole batch (a
        // settlement deserves a second chance), then the same answer for
        // all, rather than a busy timeout per write while every reader in
        // this process waits for the connection.
        let mut tries = 0;
        loop {
            match run(conn, ops) {
                Ok(out) => return out,
                Err(e) if is_busy(&e) => {
                    tries += 1;
                    if tries >= 2 {
                        let err = self.err(e);
                        let text = err.to_string();
                        return ops
                            .iter()
                            .map(|op| match &err {
                                LedgerError::Locked { path } => {
                                    Done::failed(op, LedgerError::Locked { path: path.clone() })
                                }
                                _ => Done::failed(op, LedgerError::Sqlite(text.clone())),
                            })
                            .collect();
                    }
                }
                Err(_) if ops.len() > 1 => break,
                Err(e) => return vec![Done::failed(&ops[0], self.err(e))],
            }
        }
        ops.iter()
            .map(|op| match run(conn, std::slice::from_ref(op)) {
                Ok(mut out) => out.pop().unwrap_or_else(|| {
                    Done::failed(op, LedgerError::Sqlite("internal error: no result".into()))
                }),
                Err(e) => Done::failed(op, self.err(e)),
            })
            .collect()
    }
}

/// SQLite gave up waiting for another connection's lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ffi::ErrorCode::DatabaseBusy | rusqlite::ffi::ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::Lead;
    use crate::ledger::tests::{ledger, rec};
    use crate::ledger::{Ledger, LedgerError, LimitCheck, lock_ignoring_poison};

    const TTL: Duration = Duration::from_secs(60);

    fn roomy() -> [LimitCheck; 1] {
        [LimitCheck {
            scope: "u".into(),
            since_ms: 0,
            limit_nanos: i64::MAX / 4,
        }]
    }

    /// Waits (briefly sleeping) until the queue is in the state `done`
    /// describes: the tests line callers up behind a blocked leader.
    fn wait_for(l: &Ledger, done: impl Fn(Lead, usize) -> bool) {
        wait_for_state(l, |st| done(st.lead, st.pending.len()))
    }

    fn wait_for_state(l: &Ledger, done: impl Fn(&super::QueueState) -> bool) {
        loop {
            let st = lock_ignoring_poison(&l.queue.state);
            if done(&st) {
                return;
            }
            drop(st);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn holds(l: &Ledger) -> i64 {
        l.reserved_now("u", 100).unwrap()
    }

    /// Tasks waiting behind a running batch do not hold runtime workers,
    /// so with two workers all 7 still queue and share the next commit
    /// (blocking waiters could queue at most one per worker).
    #[test]
    fn tasks_queued_during_a_commit_share_the_next_one() {
        let (_d, l) = ledger();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let (b0, o0) = l.commit_stats();
        let limit = roomy();
        let conn = l.lock();
        std::thread::scope(|s| {
            // A leader blocked on the connection with its one write.
            let leader = s.spawn(|| l.reserve("u", &limit, 10, 100, TTL).unwrap().unwrap());
            wait_for(&l, |lead, n| lead == Lead::Running && n == 0);
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let l = l.clone();
                    rt.spawn(async move {
                        let limit = roomy();
                        l.reserve_async("u", &limit, 10, 100, TTL).await
                    })
                })
                .collect();
            wait_for(&l, |lead, n| lead == Lead::Running && n == 8);
            drop(conn);
            leader.join().unwrap();
            for t in tasks {
                rt.block_on(t).unwrap().unwrap().unwrap();
            }
        });
        let (b1, o1) = l.commit_stats();
        assert_eq!((b1 - b0, o1 - o0), (2, 9));
        assert_eq!(holds(&l), 90);
    }

    /// A task answered by a batch that writes again while the others
    /// answered with it have not collected their answers yields before
    /// leading, so their next writes join its batch. (Deterministic on a
    /// current-thread runtime; `benches/ledger.rs` shows the effect with
    /// 32 tasks on two workers: about 20 writes per commit, 1.3 without.)
    #[test]
    fn tasks_writing_again_after_a_batch_share_a_commit() {
        let (_d, l) = ledger();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let limit = roomy();
        let conn = l.lock();
        let tasks = std::thread::scope(|s| {
            let leader = s.spawn(|| l.reserve("u", &limit, 10, 100, TTL).unwrap().unwrap());
            wait_for(&l, |lead, n| lead == Lead::Running && n == 0);
            let tasks: Vec<_> = (0..2)
                .map(|_| {
                    let l = l.clone();
                    rt.spawn(async move {
                        let limit = roomy();
                        for _ in 0..2 {
                            l.reserve_async("u", &limit, 10, 100, TTL)
                                .await
                                .unwrap()
                                .unwrap();
                        }
                    })
                })
                .collect();
            // Run both until their first writes are queued behind the leader.
            rt.block_on(async {
                while lock_ignoring_poison(&l.queue.state).pending.len() < 2 {
                    tokio::task::yield_now().await;
                }
            });
            drop(conn);
            leader.join().unwrap();
            tasks
        });
        let (b0, o0) = l.commit_stats();
        rt.block_on(async {
            for t in tasks {
                t.await.unwrap();
            }
        });
        let (b1, o1) = l.commit_stats();
        // Both first writes in one batch, both second writes in another.
        assert_eq!((b1 - b0, o1 - o0), (2, 4));
        assert_eq!(holds(&l), 50);
    }

    /// A lone caller (nothing queued, nobody just answered) leads at once:
    /// no yield, which on the multi-thread runtime can hand the task to
    /// the other worker and cost a thread wake-up per write.
    #[test]
    fn a_lone_task_leads_without_yielding() {
        let (_d, l) = ledger();
        let limit = roomy();
        // Polled once: it must finish in that poll, so it did not yield.
        let got = l.reserve_async("u", &limit, 10, 100, TTL).now_or_never();
        assert!(got.is_some(), "a lone write yielded before leading");
        assert_eq!(holds(&l), 10);
    }

    /// A task dropped while its writes wait: its settlement is still
    /// recorded, and a hold granted to nobody is released, not left held.
    #[test]
    fn dropped_waiters_lose_no_record_and_keep_no_hold() {
        let (_d, l) = ledger();
        let limit = roomy();
        let settling = l.reserve("u", &limit, 7, 100, TTL).unwrap().unwrap();
        assert_eq!(holds(&l), 7);
        let calls = l.count_calls().unwrap();
        let conn = l.lock();
        std::thread::scope(|s| {
            let leader = s.spawn(|| l.reserve("u", &limit, 10, 100, TTL).unwrap().unwrap());
            wait_for(&l, |lead, n| lead == Lead::Running && n == 0);
            // Each is polled once (queued behind the blocked leader), then dropped.
            let record = rec("u", 100, 0.5, true);
            assert!(l.settle_async(settling, &record).now_or_never().is_none());
            assert!(
                l.reserve_async("u", &limit, 1000, 100, TTL)
                    .now_or_never()
                    .is_none()
            );
            wait_for(&l, |_, n| n == 2);
            drop(conn);
            leader.join().unwrap();
        });
        assert_eq!(
            l.count_calls().unwrap(),
            calls + 1,
            "the settlement was lost"
        );
        assert_eq!(holds(&l), 10, "only the leader's hold may remain");
        let (b, o) = l.commit_stats();
        // The reserve, the leader's batch, the orphans' batch, the release.
        assert_eq!((b, o), (4, 5));
    }

    /// A settlement dropped while the lead is offered to another task,
    /// which is then dropped too before it ran: the second drop has
    /// nobody to pass the lead to, so it commits the queue itself; the
    /// settlement is not left in memory for a next write that may never
    /// come, and the hold granted to nobody is released.
    #[test]
    fn writes_dropped_with_nobody_to_lead_are_committed_by_the_drop() {
        let (_d, l) = ledger();
        let limit = roomy();
        let h = l.reserve("u", &limit, 7, 100, TTL).unwrap().unwrap();
        let calls = l.count_calls().unwrap();
        let conn = l.lock();
        let offered = std::thread::scope(|s| {
            let leader = s.spawn(|| l.reserve("u", &limit, 10, 100, TTL).unwrap().unwrap());
            wait_for(&l, |lead, n| lead == Lead::Running && n == 0);
            let mut offered = Box::pin(l.reserve_async("u", &limit, 1000, 100, TTL));
            assert!((&mut offered).now_or_never().is_none());
            wait_for(&l, |_, n| n == 1);
            drop(conn);
            leader.join().unwrap();
            offered
        });
        wait_for(&l, |lead, _| matches!(lead, Lead::Handed(_)));
        let record = rec("u", 100, 0.5, true);
        assert!(l.settle_async(h, &record).now_or_never().is_none());
        assert_eq!(
            l.count_calls().unwrap(),
            calls,
            "committed before anyone led"
        );
        drop(offered);
        assert_eq!(
            l.count_calls().unwrap(),
            calls + 1,
            "the settlement was left queued"
        );
        assert_eq!(holds(&l), 10, "only the leader's hold may remain");
    }

    /// A future reserving 1000, polled once and then left idle, and a task
    /// reserving 20, queued behind a leader (holding 10) that has
    /// committed: the lead is offered to the idle future, and the task
    /// waits.
    fn lead_offered_to_an_idle_future<'l>(
        l: &'l Ledger,
        rt: &tokio::runtime::Runtime,
    ) -> (
        std::pin::Pin<Box<impl std::future::Future<Output = ReserveAnswer> + 'l>>,
        tokio::task::JoinHandle<ReserveAnswer>,
    ) {
        let limit = roomy();
        let conn = l.lock();
        let (first, second) = std::thread::scope(|s| {
            let leader = s.spawn(|| l.reserve("u", &limit, 10, 100, TTL).unwrap().unwrap());
            wait_for(l, |lead, n| lead == Lead::Running && n == 0);
            let mut first = Box::pin(async move {
                let limit = roomy();
                l.reserve_async("u", &limit, 1000, 100, TTL).await
            });
            assert!((&mut first).now_or_never().is_none());
            let second = {
                let l = l.clone();
                rt.spawn(async move { l.reserve_async("u", &roomy(), 20, 100, TTL).await })
            };
            wait_for(l, |_, n| n == 2);
            drop(conn);
            leader.join().unwrap();
            (first, second)
        });
        wait_for(l, |lead, _| matches!(lead, Lead::Handed(_)));
        (first, second)
    }

    /// A write queued by a task that was then left unpolled, holding the
    /// lead handed to it, is committed by `drain_writes` (a read after a
    /// dropped call must see the call's settlement).
    #[test]
    fn draining_commits_what_an_unpolled_task_left_queued() {
        let (_d, l) = ledger();
        let limit = roomy();
        let conn = l.lock();
        let mut first = std::thread::scope(|s| {
            let leader = s.spawn(|| l.reserve("u", &limit, 10, 100, TTL).unwrap().unwrap());
            wait_for(&l, |lead, n| lead == Lead::Running && n == 0);
            let mut first = Box::pin(async {
                let limit = roomy();
                l.reserve_async("u", &limit, 1000, 100, TTL).await
            });
            assert!((&mut first).now_or_never().is_none());
            wait_for(&l, |_, n| n == 1);
            drop(conn);
            leader.join().unwrap();
            first
        });
        wait_for(&l, |lead, _| matches!(lead, Lead::Handed(_)));
        assert_eq!(holds(&l), 10, "queued, not committed yet");
        l.drain_writes();
        assert_eq!(holds(&l), 1010);
        assert!((&mut first).now_or_never().unwrap().unwrap().is_ok());
        l.drain_writes();
    }

    type ReserveAnswer =
        Result<Result<crate::ledger::ReservationId, crate::ledger::Overspend>, LedgerError>;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap()
    }

    /// A lead handed to a task that is then dropped, before it ran, passes
    /// to the next task, which commits everything (no one waits forever).
    #[test]
    fn a_lead_handed_to_a_dropped_task_passes_on() {
        let (_d, l) = ledger();
        let rt = runtime();
        let (first, second) = lead_offered_to_an_idle_future(&l, &rt);
        drop(first);
        let got = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), second).await })
            .expect("the second task was never given the lead");
        got.unwrap().unwrap().unwrap();
        assert_eq!(holds(&l), 30, "the dropped task's hold must be released");
    }

    /// A lead offered to a task that is never polled again (a future held
    /// but not awaited) does not stall anyone: the next task to arrive
    /// takes it and commits the waiting writes with its own.
    #[test]
    fn a_lead_offered_to_an_idle_future_is_taken_by_the_next_task() {
        let (_d, l) = ledger();
        let rt = runtime();
        let (first, second) = lead_offered_to_an_idle_future(&l, &rt);
        let third = {
            let l = l.clone();
            rt.spawn(async move { l.reserve_async("u", &roomy(), 40, 100, TTL).await })
        };
        let done = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), async {
                (third.await, second.await)
            })
            .await
        });
        let (third, second) = done.expect("the waiting tasks stalled behind an idle future");
        third.unwrap().unwrap().unwrap();
        second.unwrap().unwrap().unwrap();
        // `first`'s hold was granted in that batch; dropping it releases it.
        assert_eq!(holds(&l), 1070);
        drop(first);
        assert_eq!(holds(&l), 70);
    }

    /// Threads and tasks, some tasks dropped half-way, all on one queue:
    /// every settlement that was queued is recorded, no hold outlives its
    /// call, and nothing hangs.
    #[test]
    fn threads_tasks_and_cancellations_mixed() {
        let (_d, l) = ledger();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let calls0 = l.count_calls().unwrap();
        let settled = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                let l = l.clone();
                let settled = &settled;
                s.spawn(move || {
                    let limit = roomy();
                    for i in 0..40 {
                        let h = l.reserve("u", &limit, 5, 100, TTL).unwrap().unwrap();
                        l.settle(h, &rec("u", 100 + i, 0.001, true)).unwrap();
                        settled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
            let tasks: Vec<_> = (0..8u64)
                .map(|t| {
                    let l = l.clone();
                    rt.spawn(async move {
                        let limit = roomy();
                        let mut queued = 0u64;
                        for i in 0..40u64 {
                            let hold = l.reserve_async("u", &limit, 5, 100, TTL);
                            // Every third hold of odd tasks is abandoned after one poll.
                            if t % 2 == 1 && i % 3 == 0 {
                                if let Some(r) = hold.now_or_never() {
                                    let h = r.unwrap().unwrap();
                                    l.release(h).unwrap();
                                }
                                continue;
                            }
                            let h = hold.await.unwrap().unwrap();
                            let record = rec("u", 1000 + i as i64, 0.001, true);
                            let settle = l.settle_async(h, &record);
                            if t % 2 == 1 && i % 5 == 1 {
                                // Queued at the first poll, then dropped: still recorded.
                                if settle.now_or_never().is_some() {
                                    queued += 1;
                                    continue;
                                }
                                queued += 1;
                                continue;
                            }
                            settle.await.unwrap();
                            queued += 1;
                        }
                        queued
                    })
                })
                .collect();
            for t in tasks {
                let n = rt.block_on(t).unwrap();
                settled.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        });
        // A dropped settlement may still be in the queue: the next write flushes it.
        let h = l.reserve("u", &roomy(), 1, 100, TTL).unwrap().unwrap();
        l.release(h).unwrap();
        let settled = settled.into_inner();
        assert_eq!(l.count_calls().unwrap() - calls0, settled);
        assert_eq!(holds(&l), 0, "a hold outlived its call");
    }
}
