//! A `throttle-group` object as the block layer uses it: one set of leaky
//! buckets ([`super::bucket`]) shared by every `throttle` node that names
//! the group, and the queues of the requests waiting for them (QEMU's
//! `block/throttle-groups.c`, with futures for coroutines).
//!
//! A request that may go at once (no request of the group waits in its
//! direction and the buckets allow it) is counted and goes. Otherwise it
//! queues behind the earlier requests of its node (its member of the
//! group). In each direction one waiting request of the whole group, the
//! head, waits on a tokio timer for the moment the buckets let it
//! through; when it goes, the next head is the oldest request of the next
//! member in round-robin order that has requests waiting, so nodes that
//! share a group take turns whatever their queue depths. Reads and writes
//! queue separately and count in their own buckets besides the totals.
//!
//! A waiting request is its own future: the queues hold only an id and a
//! waker per request, and dropping the future leaves the queue (a head
//! hands its turn on). New limits (`qom-set`) empty the buckets, as QEMU
//! does, and wake the heads, which then wait by the new limits at once.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use schema::object::ThrottleLimits;
use tokio::time::{Instant, Sleep};

use super::bucket::{Buckets, Direction, ThrottleConfig};
use crate::error::BlockResult;

/// A throttle group: its limits and their state, shared by its members.
pub struct ThrottleGroup {
    name: String,
    state: Mutex<GroupState>,
}

struct GroupState {
    buckets: Buckets,
    /// Deleted (`object-del`): no node may join any more.
    retired: bool,
    /// The members, in round-robin order.
    members: Vec<MemberQueues>,
    /// The next member or waiter id.
    next_id: u64,
    /// Per direction, the request whose turn it is, if any waits: the
    /// first of its member's queue.
    heads: [Option<Head>; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    member: u64,
    waiter: u64,
}

/// A member's waiting requests, per direction, oldest first.
struct MemberQueues {
    id: u64,
    waiting: [VecDeque<Waiter>; 2],
}

struct Waiter {
    id: u64,
    waker: Waker,
}

impl ThrottleGroup {
    /// A group named `name` (the object's id) with these limits.
    pub fn new(name: impl Into<String>, config: ThrottleConfig) -> Arc<Self> {
        Arc::new(ThrottleGroup {
            name: name.into(),
            state: Mutex::new(GroupState {
                buckets: Buckets::new(config, Instant::now()),
                retired: false,
                members: Vec::new(),
                next_id: 0,
                heads: [None, None],
            }),
        })
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // Every update leaves the queues consistent before it can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limits in force.
    pub fn config(&self) -> ThrottleConfig {
        self.lock().buckets.config().clone()
    }

    /// Sets the members of `limits` that are given over the limits in
    /// force (`qom-set` of `limits`); all or nothing. The buckets start
    /// empty and the waiting requests are measured by the new limits at
    /// once.
    pub fn set_limits(&self, limits: &ThrottleLimits) -> BlockResult<()> {
        let mut state = self.lock();
        let config = state.buckets.config().with_limits(limits)?;
        state.buckets.configure(config, Instant::now());
        for direction in 0..2 {
            if let Some(head) = state.heads[direction] {
                if let Some(waiter) = state.queue(head.member, direction).front() {
                    waiter.waker.wake_by_ref();
                }
            }
        }
        Ok(())
    }

    /// Marks the group deleted if no node uses it (`object-del`); no node
    /// can join it afterwards. Returns whether it was unused.
    pub fn retire(&self) -> bool {
        let mut state = self.lock();
        if state.members.is_empty() {
            state.retired = true;
        }
        state.retired
    }

    /// Makes a new member (a node's handle), unless the group was
    /// deleted.
    pub fn join(self: &Arc<Self>) -> Option<Member> {
        let mut state = self.lock();
        if state.retired {
            return None;
        }
        let id = state.new_id();
        state.members.push(MemberQueues {
            id,
            waiting: [VecDeque::new(), VecDeque::new()],
        });
        Some(Member {
            group: self.clone(),
            id,
            unlimited: AtomicUsize::new(0),
        })
    }
}

/// Handles are equal when they are of the same group.
impl PartialEq for ThrottleGroup {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for ThrottleGroup {}

impl std::fmt::Debug for ThrottleGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleGroup")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl GroupState {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn position(&self, member: u64) -> usize {
        self.members
            .iter()
            .position(|m| m.id == member)
            .expect("a member stays registered while its requests wait")
    }

    fn queue(&mut self, member: u64, direction: usize) -> &mut VecDeque<Waiter> {
        let at = self.position(member);
        &mut self.members[at].waiting[direction]
    }

    /// Queues a request of `member`; it is the head if nothing waited.
    fn enqueue(&mut self, member: u64, direction: usize, waker: Waker) -> u64 {
        let id = self.new_id();
        self.queue(member, direction)
            .push_back(Waiter { id, waker });
        if self.heads[direction].is_none() {
            self.heads[direction] = Some(Head { member, waiter: id });
        }
        id
    }

    /// Keeps the waker of a waiting request up to date.
    fn set_waker(&mut self, member: u64, direction: usize, waiter: u64, waker: &Waker) {
        if let Some(entry) = self
            .queue(member, direction)
            .iter_mut()
            .find(|w| w.id == waiter)
        {
            entry.waker.clone_from(waker);
        }
    }

    /// Takes a request out of its queue (it goes, or gave up); if it was
    /// the head, the turn passes to the next member with waiting
    /// requests.
    fn remove(&mut self, member: u64, direction: usize, waiter: u64) {
        let at = self.position(member);
        let queue = &mut self.members[at].waiting[direction];
        if let Some(index) = queue.iter().position(|w| w.id == waiter) {
            queue.remove(index);
        }
        if self.heads[direction] == Some(Head { member, waiter }) {
            self.pass_turn(at + 1, direction);
        }
    }

    /// Makes the oldest request of the first member from `start` (round
    /// robin) that has requests waiting the head, and wakes it.
    fn pass_turn(&mut self, start: usize, direction: usize) {
        let count = self.members.len();
        let next = (0..count)
            .map(|k| &self.members[(start + k) % count])
            .find_map(|m| m.waiting[direction].front().map(|w| (m.id, w)));
        self.heads[direction] = next.map(|(member, waiter)| {
            waiter.waker.wake_by_ref();
            Head {
                member,
                waiter: waiter.id,
            }
        });
    }
}

/// A node's membership of a throttle group; leaving the group when
/// dropped.
pub struct Member {
    group: Arc<ThrottleGroup>,
    id: u64,
    /// Drained sections over the node: while any is open, requests pass
    /// without waiting (still counted), as QEMU's `io_limits_disabled`,
    /// so that a drain never waits for the limits.
    unlimited: AtomicUsize,
}

impl Member {
    /// The group.
    pub fn group(&self) -> &Arc<ThrottleGroup> {
        &self.group
    }

    /// Waits until the group's limits let a request of `bytes` in
    /// `direction` through, and counts it. Cancel-safe: a dropped future
    /// leaves the queue and is not counted.
    /// A drained section begins: waiting requests go now, new ones do
    /// not wait.
    pub fn suspend_limits(&self) {
        self.unlimited.fetch_add(1, Ordering::AcqRel);
        let state = self.group.lock();
        let at = state.position(self.id);
        for queue in &state.members[at].waiting {
            for waiter in queue {
                waiter.waker.wake_by_ref();
            }
        }
    }

    /// A drained section ends.
    pub fn resume_limits(&self) {
        self.unlimited.fetch_sub(1, Ordering::AcqRel);
    }

    /// The drained sections `other` is in now count for this member too
    /// (a reopen moves a drained node to another group).
    pub fn take_suspensions_of(&self, other: &Member) {
        self.unlimited
            .store(other.unlimited.load(Ordering::Acquire), Ordering::Release);
    }

    pub fn admit(&self, direction: Direction, bytes: u64) -> Admission<'_> {
        Admission {
            member: self,
            direction,
            bytes,
            waiter: None,
            timer: None,
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut state = self.group.lock();
        let at = state.position(self.id);
        let gone = state.members.remove(at);
        // Admissions borrow the member, so its queues are empty; a
        // forgotten one must not leave the turn with a member that is
        // gone.
        for direction in 0..2 {
            let waiters = &gone.waiting[direction];
            let had_turn = state.heads[direction]
                .is_some_and(|head| head.member == self.id && !waiters.is_empty());
            if had_turn {
                state.pass_turn(at, direction);
            }
        }
    }
}

/// A request waiting for its group's limits: see [`Member::admit`].
pub struct Admission<'a> {
    member: &'a Member,
    direction: Direction,
    bytes: u64,
    /// The request's place in the queue, once it waits.
    waiter: Option<u64>,
    /// The head's timer, once it had to wait.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Future for Admission<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let member = this.member.id;
        let direction = this.direction.index();
        loop {
            let mut state = this.member.group.lock();
            if this.member.unlimited.load(Ordering::Acquire) > 0 {
                if let Some(waiter) = this.waiter.take() {
                    state.remove(member, direction, waiter);
                }
                state.buckets.account(this.direction, this.bytes);
                return Poll::Ready(());
            }
            let now = Instant::now();
            let waiter = match this.waiter {
                Some(waiter) => waiter,
                None => {
                    if state.heads[direction].is_none() {
                        state.buckets.leak(now);
                        if state.buckets.wait(this.direction).is_zero() {
                            state.buckets.account(this.direction, this.bytes);
                            return Poll::Ready(());
                        }
                    }
                    let waiter = state.enqueue(member, direction, cx.waker().clone());
                    this.waiter = Some(waiter);
                    waiter
                }
            };
            state.set_waker(member, direction, waiter, cx.waker());
            if state.heads[direction] != Some(Head { member, waiter }) {
                return Poll::Pending;
            }
            state.buckets.leak(now);
            let wait = state.buckets.wait(this.direction);
            if wait.is_zero() {
                this.waiter = None;
                state.remove(member, direction, waiter);
                state.buckets.account(this.direction, this.bytes);
                return Poll::Ready(());
            }
            drop(state);
            let deadline = now + wait;
            let timer = match &mut this.timer {
                Some(timer) => {
                    timer.as_mut().reset(deadline);
                    timer
                }
                None => this
                    .timer
                    .insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            let mut state = self.member.group.lock();
            state.remove(self.member.id, self.direction.index(), waiter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use serde_json::json;
    use tokio::task::JoinSet;

    fn group(limits: serde_json::Value) -> Arc<ThrottleGroup> {
        let limits: ThrottleLimits = serde_json::from_value(limits).expect("limits");
        let config = ThrottleConfig::default().with_limits(&limits).unwrap();
        ThrottleGroup::new("tg", config)
    }

    /// Admits `count` reads of `bytes` through `member`, `depth` at a
    /// time; returns when the last went, from the start.
    async fn run(member: Arc<Member>, count: usize, bytes: u64, depth: usize) -> Duration {
        let start = Instant::now();
        let mut set = JoinSet::new();
        for _ in 0..count {
            if set.len() == depth {
                set.join_next().await.unwrap().unwrap();
            }
            let member = member.clone();
            set.spawn(async move { member.admit(Direction::Read, bytes).await });
        }
        while set.join_next().await.is_some() {}
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn requests_go_at_the_configured_rate() {
        let tg = group(json!({"bps-total": 1_048_576}));
        let member = Arc::new(tg.join().unwrap());
        // 3 MiB in 64 KiB reads, 4 at a time: a tenth of a second's worth
        // plus one request go at once, the rest at 1 MiB/s.
        let took = run(member, 48, 65536, 4).await;
        let expected = (3.0 * 1_048_576.0 - 104_857.0 - 65536.0) / 1_048_576.0;
        let seconds = took.as_secs_f64();
        assert!(
            seconds >= expected && seconds <= expected + 0.01,
            "{seconds} s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn members_take_turns_whatever_their_queue_depth() {
        let tg = group(json!({"iops-total": 20}));
        let deep = Arc::new(tg.join().unwrap());
        let shallow = Arc::new(tg.join().unwrap());
        let count = |member: Arc<Member>, depth: usize| async move {
            let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut set = JoinSet::new();
            for _ in 0..depth {
                let (member, done) = (member.clone(), done.clone());
                set.spawn(async move {
                    loop {
                        member.admit(Direction::Read, 4096).await;
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
            set.shutdown().await;
            done.load(std::sync::atomic::Ordering::Relaxed)
        };
        let (deep, shallow) = tokio::join!(count(deep, 16), count(shallow, 1));
        // 20 per second for 10 seconds, shared half and half although one
        // node keeps 16 requests waiting and the other 1.
        let total = deep + shallow;
        assert!((200..=203).contains(&total), "{deep} + {shallow}");
        assert!(shallow >= 95 && deep >= 95, "{deep} + {shallow}");
        // The aborted requests left the queues.
        assert_eq!(tg.lock().heads, [None, None]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_request_stops_waiting_and_is_not_counted() {
        let tg = group(json!({"iops-total": 1}));
        let member = tg.join().unwrap();
        member.admit(Direction::Read, 1).await;
        // The next waits a second; give it up after a tenth.
        let start = Instant::now();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(100), member.admit(Direction::Read, 1))
                .await;
        assert!(gave_up.is_err());
        assert_eq!(tg.lock().heads, [None, None]);
        assert!(tg.lock().members[0].waiting[0].is_empty());
        // The one after goes when the first second is over, not later:
        // the dropped request took nothing.
        member.admit(Direction::Read, 1).await;
        assert_about(start.elapsed(), Duration::from_millis(1000));
    }

    /// Equal to the millisecond timer's resolution.
    fn assert_about(took: Duration, expected: Duration) {
        assert!(
            took >= expected && took <= expected + Duration::from_millis(2),
            "{took:?}, not {expected:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_head_hands_its_turn_on_when_dropped() {
        let tg = group(json!({"iops-total": 1}));
        let first = Arc::new(tg.join().unwrap());
        let second = Arc::new(tg.join().unwrap());
        first.admit(Direction::Read, 1).await;
        let start = Instant::now();
        let head = {
            let first = first.clone();
            tokio::spawn(async move { first.admit(Direction::Read, 1).await })
        };
        tokio::task::yield_now().await;
        let next = {
            let second = second.clone();
            tokio::spawn(async move { second.admit(Direction::Read, 1).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        head.abort();
        next.await.unwrap();
        assert_about(start.elapsed(), Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn new_limits_apply_to_waiting_requests_at_once() {
        let tg = group(json!({"iops-total": 1}));
        let member = Arc::new(tg.join().unwrap());
        member.admit(Direction::Read, 1).await;
        let start = Instant::now();
        let waiting = {
            let member = member.clone();
            tokio::spawn(async move { member.admit(Direction::Read, 1).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let faster = serde_json::from_value(json!({"iops-total": 1000})).unwrap();
        tg.set_limits(&faster).unwrap();
        waiting.await.unwrap();
        assert_about(start.elapsed(), Duration::from_millis(10));
        // Invalid limits change nothing.
        let conflicting = serde_json::from_value(json!({"iops-read": 5})).unwrap();
        assert!(tg.set_limits(&conflicting).is_err());
        assert_eq!(tg.config().to_limits().iops_total, Some(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn reads_and_writes_wait_apart() {
        let tg = group(json!({"bps-read": 1000}));
        let member = tg.join().unwrap();
        member.admit(Direction::Read, 4096).await;
        let start = Instant::now();
        member.admit(Direction::Write, 1 << 20).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        member.admit(Direction::Read, 1).await;
        assert!(
            start.elapsed() >= Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_used_group_is_not_retired_and_a_retired_one_takes_no_members() {
        let tg = group(json!({}));
        let member = tg.join().unwrap();
        assert!(!tg.retire());
        drop(member);
        assert!(tg.retire());
        assert!(tg.join().is_none());
    }
}
