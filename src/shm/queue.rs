//! The waiting line in front of a balancer's `LBMaxInflight` caps (`LBQueue`): requests that
//! find every usable member full wait for a place, first come first served across all
//! processes, instead of being refused at once.
//!
//! **Tickets.** A request that joins takes the next ticket (`tail`). Ticket `t` owns place
//! `t % PLACES` of the balancer's ring for that lap: the place's 32-bit word holds the lap and
//! a state, and the waiter sleeps on that word (a futex on the shared mapping, so another
//! process can wake exactly this waiter). `head` is the oldest ticket not yet given a place.
//!
//! ```text
//!     word = lap << 2 | state        state: WAITING, GRANTED (a place is yours), LEFT (gone)
//!
//!     join:   ticket = tail++; place.word: (older lap) -> (lap, WAITING)
//!     grant:  at head: WAITING -> GRANTED, wake it, head++      (LEFT, GRANTED: head++, next)
//!     leave:  WAITING -> LEFT (timeout, client gone); head moves past leading LEFTs
//! ```
//!
//! Every transition is a compare-and-swap on the place's word, so a grant and a leave racing
//! for one ticket agree on one outcome: a waiter that finds its word granted as it times out
//! takes the place. A grant that reaches a ticket whose joiner has not yet written its word
//! (it is between taking the ticket and the swap) writes GRANTED in its stead; the joiner's
//! swap then fails and it sees it is served.
//!
//! **Who grants.** The end of any attempt on the balancer (a place freed) grants one ticket,
//! and so does the parent when it reaps a killed child's attempts. A granted waiter picks with
//! the method as any request does; if the place went to a request that does not queue (a
//! sticky one) it goes back to the front (`requeue`: its word back to WAITING, `head` back to
//! its ticket). Places can also free with no attempt ending (a member back from an error, a
//! cap raised): the waiter at the head looks every [`POLL`] on its own, which also bounds what
//! a waker killed between freeing a place and waking costs. No other waiter ever wakes
//! without a grant, a timeout or that look.
//!
//! **Killed processes.** A waiter killed while waiting leaves its word WAITING; the parent,
//! when it reaps the process, marks its tickets LEFT (each place also records its waiter's
//! pid) and passes on a grant it held. A joiner killed between taking its ticket and writing
//! its word leaves a ticket the parent's sweep takes out once it is older than any timeout
//! (`sweep`), with whatever grant reached it; until then the head's look goes past it only
//! after a grant does.

use super::layout::QueueCounters;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

/// Places in a balancer's ring: tickets from `head` to `tail` must fit, so joining is refused
/// when they would not (`LBQueue max=` is at most half of it, `config::MAX_QUEUED`).
pub const PLACES: usize = 2048;
/// How often the waiter at the head looks for a place that freed without a grant.
pub const POLL: Duration = Duration::from_millis(200);
/// A ticket this old has no live waiter: the longest `LBQueue timeout` (300 s) and a margin.
pub const STALE: Duration = Duration::from_secs(360);
/// Upper bounds (microseconds) of the wait-time histogram's buckets; waits above the last
/// are counted by the total only.
pub const WAIT_BUCKETS_US: [u64; 6] = [10_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000];

const WAITING: u32 = 1;
const GRANTED: u32 = 2;
const LEFT: u32 = 3;
const STATE: u32 = 3;
const LAPS: u32 = u32::MAX >> 2;

/// One place of the ring: its word (the futex), the pid of its waiter, and when it joined
/// (monotonic microseconds), for the parent that reaps a killed waiter.
#[repr(C)]
pub struct Place {
    pub word: AtomicU32,
    pub pid: AtomicU32,
    pub joined_us: AtomicU64,
}

/// A balancer's places, one per ticket of a lap.
#[repr(C)]
pub struct Ring(pub [Place; PLACES]);

/// A balancer's waiting line: its counters and its ring.
#[derive(Clone, Copy)]
pub struct Queue<'s> {
    counters: &'s QueueCounters,
    places: &'s [Place; PLACES],
}

/// A request's place in line.
#[derive(Debug)]
pub struct Ticket {
    number: u64,
    joined_us: u64,
}

/// What a granted request that found no place does.
#[derive(Debug, PartialEq, Eq)]
pub enum Requeued {
    /// A spare grant is its: pick again now.
    Again,
    /// Back at the front of the line: wait again.
    Waiting,
    /// Its place is gone (the ring went round): refuse.
    Lost,
}

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    /// A place freed for this ticket: pick.
    Granted,
    /// The ticket is at the head and [`POLL`] has passed: pick, in case a place freed without
    /// a grant.
    Look,
    /// The timeout passed: refuse.
    TimedOut,
    /// The client went away.
    Gone,
}

/// What a queue has seen (the status page's and the metrics' view).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Waiting now, and the most at once.
    pub waiting: u32,
    pub peak: u32,
    /// Requests that joined; served after waiting; refused when their timeout passed; whose
    /// client went away (or whose process was killed) while they waited; refused at once
    /// because `max` were waiting.
    pub joined: u64,
    pub served: u64,
    pub timed_out: u64,
    pub gone: u64,
    pub full: u64,
    /// Waits that ended (served, timed out, gone): their total and longest, and how many ended
    /// within each of [`WAIT_BUCKETS_US`] (not cumulative).
    pub wait_total_us: u64,
    pub wait_max_us: u64,
    pub wait_buckets: [u64; WAIT_BUCKETS_US.len()],
}

fn lap_of(ticket: u64) -> u32 {
    // Lap 0 is the zeroed ring's: no ticket's.
    ((ticket / PLACES as u64) as u32 % LAPS).wrapping_add(1) & LAPS
}

fn word(lap: u32, state: u32) -> u32 {
    (lap << 2) | state
}

fn lap_in(word: u32) -> u32 {
    word >> 2
}

fn state_in(word: u32) -> u32 {
    word & STATE
}

/// Whether lap `a` comes before lap `b` (laps wrap; the ring never spans half their range).
fn before(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) & LAPS < LAPS / 2
}

impl<'s> Queue<'s> {
    pub fn new(counters: &'s QueueCounters, ring: &'s Ring) -> Queue<'s> {
        Queue { counters, places: &ring.0 }
    }

    fn place(&self, ticket: u64) -> &'s Place {
        &self.places[(ticket % PLACES as u64) as usize]
    }

    /// Whether requests are in line, or granted a place they have not taken yet: a newcomer
    /// then joins too, behind them, rather than taking a place one of them is owed.
    pub fn in_line(&self) -> bool {
        self.counters.waiting.load(SeqCst) > 0
    }

    /// Joins the line for process `pid`, unless `max` are waiting already (or the ring is
    /// full): then `None`, and the request is refused at once.
    pub fn join(&self, max: u32, pid: u32, now_us: u64) -> Option<Ticket> {
        let c = self.counters;
        let room =
            (c.tail.load(SeqCst).saturating_sub(c.head.load(SeqCst))) < (PLACES as u64 - u64::from(max));
        let admitted = room && c.waiting.fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1)).is_ok();
        if !admitted {
            c.full.fetch_add(1, SeqCst);
            return None;
        }
        c.peak.fetch_max(c.waiting.load(SeqCst), SeqCst);
        c.joined.fetch_add(1, SeqCst);
        let number = c.tail.fetch_add(1, SeqCst);
        let (place, lap) = (self.place(number), lap_of(number));
        place.pid.store(pid, SeqCst);
        place.joined_us.store(now_us, SeqCst);
        let mut seen = place.word.load(SeqCst);
        // A grant may already have written this lap's word for us (then we are served).
        while lap_in(seen) != lap {
            match place.word.compare_exchange(seen, word(lap, WAITING), SeqCst, SeqCst) {
                Ok(_) => break,
                Err(now) => seen = now,
            }
        }
        Some(Ticket { number, joined_us: now_us })
    }

    /// Waits until `ticket` is granted a place, its turn to look comes, `deadline_us` passes
    /// (monotonic microseconds), or `gone()` says the client left (asked at each wake, at
    /// least every [`POLL`]).
    pub fn wait(&self, ticket: &Ticket, deadline_us: u64, mut gone: impl FnMut() -> bool) -> Waited {
        let place = self.place(ticket.number);
        let lap = lap_of(ticket.number);
        let mut slept = false;
        loop {
            let seen = place.word.load(SeqCst);
            if lap_in(seen) != lap || state_in(seen) == GRANTED {
                return Waited::Granted;
            }
            if state_in(seen) == LEFT {
                // The parent took it out of the line (`sweep`), and counted it.
                return Waited::Gone;
            }
            // A grant that passed this ticket while it went back to the front (`requeue`)
            // moved `head` past it: bring `head` back, or no grant would reach it again.
            if self.counters.head.load(SeqCst) > ticket.number {
                self.counters.head.fetch_min(ticket.number, SeqCst);
            }
            let now = super::monotonic_us();
            let ending = if now >= deadline_us {
                Some(Waited::TimedOut)
            } else if slept && gone() {
                Some(Waited::Gone)
            } else {
                None
            };
            if let Some(ending) = ending {
                if place.word.compare_exchange(seen, word(lap, LEFT), SeqCst, SeqCst).is_err() {
                    continue; // granted meanwhile: take it
                }
                self.advance_head();
                self.ended(ticket, now, &ending);
                return ending;
            }
            if slept {
                // Tickets ahead that settled (left, or granted and gone) do not keep the
                // front from looking.
                self.advance_head();
                if self.counters.head.load(SeqCst) == ticket.number {
                    return Waited::Look;
                }
            }
            let sleep = (deadline_us - now).min(POLL.as_micros() as u64);
            futex_wait(&place.word, seen, sleep);
            slept = true;
        }
    }

    /// The request got a place after waiting (`looked`: by its own look, not a grant).
    pub fn served(&self, ticket: Ticket, looked: bool, now_us: u64) {
        let granted = self.settle(&ticket);
        if looked {
            if granted {
                // A grant came while it looked: the place freed for it is nobody's yet.
                self.grant();
            }
            self.advance_head();
            // It found a place no attempt's end freed (a member back, a cap raised): there may
            // be more; the next in line looks too.
            self.grant();
        }
        self.ended(&ticket, now_us, &Waited::Granted);
    }

    /// The request leaves the line without a place (no usable member was left for it).
    pub fn quit(&self, ticket: Ticket, now_us: u64) {
        if self.settle(&ticket) {
            self.grant();
        }
        self.advance_head();
        self.ended(&ticket, now_us, &Waited::Gone);
    }

    /// Marks `ticket` done (LEFT), whether it was waiting or granted; true if it was granted.
    fn settle(&self, ticket: &Ticket) -> bool {
        let place = self.place(ticket.number);
        let lap = lap_of(ticket.number);
        let mut seen = place.word.load(SeqCst);
        while lap_in(seen) == lap && matches!(state_in(seen), WAITING | GRANTED) {
            match place.word.compare_exchange(seen, word(lap, LEFT), SeqCst, SeqCst) {
                Ok(_) => return state_in(seen) == GRANTED,
                Err(now) => seen = now,
            }
        }
        false
    }

    /// A granted request found no place (a request that does not queue took it, or another
    /// granted request picked the member the method preferred): back to the front of the line,
    /// keeping its ticket; or, if a place freed meanwhile with nobody at the head to take it (a
    /// spare grant), it may pick again at once. Returns false when its place has been reused
    /// meanwhile (the ring went round): it has lost its place.
    pub fn requeue(&self, ticket: &Ticket) -> Requeued {
        let c = self.counters;
        if c.spare.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Requeued::Again;
        }
        let place = self.place(ticket.number);
        let lap = lap_of(ticket.number);
        match place.word.compare_exchange(word(lap, GRANTED), word(lap, WAITING), SeqCst, SeqCst) {
            Ok(_) => {
                c.head.fetch_min(ticket.number, SeqCst);
                Requeued::Waiting
            }
            Err(seen) if lap_in(seen) == lap && state_in(seen) == WAITING => Requeued::Waiting,
            Err(_) => Requeued::Lost,
        }
    }

    /// A place freed: grants it to the oldest waiting ticket and wakes its waiter. With none
    /// waiting but some granted that have not picked yet, keeps it as a spare grant for one of
    /// them that finds no place (`requeue`). Returns whether anyone was owed it.
    pub fn grant(&self) -> bool {
        let c = self.counters;
        loop {
            let head = c.head.load(SeqCst);
            if head >= c.tail.load(SeqCst) {
                let waiting = c.waiting.load(SeqCst);
                return c.spare.fetch_update(SeqCst, SeqCst, |n| (n < waiting).then_some(n + 1)).is_ok();
            }
            let place = self.place(head);
            let (lap, seen) = (lap_of(head), place.word.load(SeqCst));
            let next = || {
                let _ = c.head.compare_exchange(head, head + 1, SeqCst, SeqCst);
            };
            if lap_in(seen) == lap && state_in(seen) != WAITING {
                next(); // left, or granted already
                continue;
            }
            if lap_in(seen) != lap && !before(lap_in(seen), lap) {
                next(); // the place is a later lap's: this ticket was settled long ago
                continue;
            }
            // Waiting, or its joiner has not written the word yet (then it finds it granted).
            if place.word.compare_exchange(seen, word(lap, GRANTED), SeqCst, SeqCst).is_ok() {
                next();
                futex_wake(&place.word);
                self.advance_head();
                return true;
            }
        }
    }

    /// Moves `head` past the tickets at the front that are no longer waiting.
    fn advance_head(&self) {
        let c = self.counters;
        loop {
            let head = c.head.load(SeqCst);
            if head >= c.tail.load(SeqCst) {
                return;
            }
            let (lap, seen) = (lap_of(head), self.place(head).word.load(SeqCst));
            // A word of an earlier lap: its joiner has not written it yet, so it is waiting.
            let settled =
                if lap_in(seen) == lap { state_in(seen) != WAITING } else { !before(lap_in(seen), lap) };
            if !settled {
                return;
            }
            let _ = c.head.compare_exchange(head, head + 1, SeqCst, SeqCst);
        }
    }

    fn ended(&self, ticket: &Ticket, now_us: u64, how: &Waited) {
        self.count_end(ticket.joined_us, now_us, how);
    }

    fn count_end(&self, joined_us: u64, now_us: u64, how: &Waited) {
        let c = self.counters;
        if c.waiting.fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1))) == Ok(1) {
            c.spare.store(0, SeqCst);
        }
        match how {
            Waited::Granted | Waited::Look => &c.served,
            Waited::TimedOut => &c.timed_out,
            Waited::Gone => &c.gone,
        }
        .fetch_add(1, SeqCst);
        let waited = now_us.saturating_sub(joined_us);
        c.wait_total_us.fetch_add(waited, SeqCst);
        c.wait_max_us.fetch_max(waited, SeqCst);
        if let Some(bucket) = WAIT_BUCKETS_US.iter().position(|&bound| waited <= bound) {
            c.wait_buckets[bucket].fetch_add(1, SeqCst);
        }
    }

    /// The parent reaps process `pid`, which `freed` places with it: its tickets leave the
    /// line, waiting or granted (a grant it held is passed on: granted tickets are behind
    /// `head`, so every ticket the ring still holds is looked at), and the places it freed are
    /// granted.
    pub fn reap(&self, pid: u32, freed: u64, now_us: u64) {
        let c = self.counters;
        let tail = c.tail.load(SeqCst);
        if tail == 0 {
            return; // never used
        }
        let mut grants = freed;
        for ticket in tail.saturating_sub(PLACES as u64)..tail {
            if self.place(ticket).pid.load(SeqCst) == pid {
                grants += self.take_out(ticket, now_us, false);
            }
        }
        self.advance_head();
        for _ in 0..grants {
            if !self.grant() {
                break;
            }
        }
    }

    /// Takes `ticket` out of the line for the parent (its waiter is dead): LEFT, counted as
    /// gone. `unwritten`: also a ticket whose joiner never wrote its word (it died between
    /// taking the ticket and writing it). Returns the grants to pass on (1 if it held one).
    fn take_out(&self, ticket: u64, now_us: u64, unwritten: bool) -> u64 {
        let place = self.place(ticket);
        let lap = lap_of(ticket);
        let mut seen = place.word.load(SeqCst);
        loop {
            let ours = lap_in(seen) == lap && matches!(state_in(seen), WAITING | GRANTED);
            let never_written = unwritten && lap_in(seen) != lap && before(lap_in(seen), lap);
            if !ours && !never_written {
                return 0;
            }
            // A grant may turn it GRANTED meanwhile: try again with what is there.
            match place.word.compare_exchange(seen, word(lap, LEFT), SeqCst, SeqCst) {
                Ok(_) => {
                    self.count_end(place.joined_us.load(SeqCst), now_us, &Waited::Gone);
                    return u64::from(ours && state_in(seen) == GRANTED);
                }
                Err(now) => seen = now,
            }
        }
    }

    /// For the parent, now and then: takes out of the line the tickets nobody can be waiting
    /// on any more, those older than [`STALE`] (longer than any `LBQueue timeout`): a joiner
    /// killed before it wrote its ticket, a grant that reached a ticket as its process died, a
    /// request whose process stopped mid-way. Their grants go on to the next tickets.
    pub fn sweep(&self, now_us: u64) {
        let c = self.counters;
        let tail = c.tail.load(SeqCst);
        if c.waiting.load(SeqCst) == 0 || tail == 0 {
            return;
        }
        let mut grants = 0;
        for ticket in tail.saturating_sub(PLACES as u64)..tail {
            let joined = self.place(ticket).joined_us.load(SeqCst);
            if now_us.saturating_sub(joined) > STALE.as_micros() as u64 {
                grants += self.take_out(ticket, now_us, true);
            }
        }
        self.advance_head();
        for _ in 0..grants {
            if !self.grant() {
                break;
            }
        }
    }

    pub fn stats(&self) -> QueueStats {
        let c = self.counters;
        let mut wait_buckets = [0; WAIT_BUCKETS_US.len()];
        for (out, bucket) in wait_buckets.iter_mut().zip(&c.wait_buckets) {
            *out = bucket.load(SeqCst);
        }
        QueueStats {
            waiting: c.waiting.load(SeqCst),
            peak: c.peak.load(SeqCst),
            joined: c.joined.load(SeqCst),
            served: c.served.load(SeqCst),
            timed_out: c.timed_out.load(SeqCst),
            gone: c.gone.load(SeqCst),
            full: c.full.load(SeqCst),
            wait_total_us: c.wait_total_us.load(SeqCst),
            wait_max_us: c.wait_max_us.load(SeqCst),
            wait_buckets,
        }
    }
}

/// Sleeps while `word` holds `expected`, for at most `micros`, or until a wake. The word is in
/// a shared mapping: the futex is not process-private, so a waker in another process reaches it.
fn futex_wait(word: &AtomicU32, expected: u32, micros: u64) {
    let timeout = libc::timespec {
        tv_sec: (micros / 1_000_000) as libc::time_t,
        tv_nsec: (micros % 1_000_000 * 1000) as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned u32 for the duration of the call, and the timespec is
    // ours; FUTEX_WAIT only reads them. Any result (woken, timed out, interrupted, the word
    // already changed) is fine: the caller looks at the word again.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &timeout as *const libc::timespec,
        );
    }
}

/// Wakes the waiter sleeping on `word` (at most one sleeps on a place's word).
fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE does not dereference it beyond its key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::monotonic_us;
    use crate::shm::testing::{Child, Mapped};
    use crate::shm::tests::seg;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;
    use std::thread;

    fn queue(seg: &Mapped) -> Queue<'_> {
        seg.queue(seg.balancer(0).expect("a balancer slot")).expect("its queue")
    }

    fn soon(ms: u64) -> u64 {
        monotonic_us() + ms * 1000
    }

    #[test]
    fn grants_go_in_ticket_order_and_only_to_waiters() {
        let seg = seg(1, 1);
        let q = queue(&seg);
        assert!(!q.grant(), "nobody waits");
        let tickets: Vec<Ticket> = (0..3).map(|_| q.join(10, 1, monotonic_us()).expect("room")).collect();
        assert!(q.in_line());
        assert!(q.grant());
        // The first ticket is granted at once; the others still wait (and time out).
        assert_eq!(q.wait(&tickets[0], soon(1000), || false), Waited::Granted);
        assert_eq!(q.wait(&tickets[2], soon(30), || false), Waited::TimedOut);
        assert!(q.grant(), "the second ticket");
        assert_eq!(q.wait(&tickets[1], soon(1000), || false), Waited::Granted);
        let mut tickets = tickets.into_iter();
        q.served(tickets.next().unwrap(), false, monotonic_us());
        q.served(tickets.next().unwrap(), false, monotonic_us());
        assert!(!q.grant(), "the third left");
        assert!(!q.in_line());
        let stats = q.stats();
        assert_eq!((stats.waiting, stats.peak, stats.joined, stats.served, stats.timed_out), (0, 3, 3, 2, 1));
    }

    #[test]
    fn max_refuses_at_once_and_a_client_that_goes_is_let_out() {
        let seg = seg(1, 1);
        let q = queue(&seg);
        let first = q.join(2, 1, monotonic_us()).expect("room");
        let _second = q.join(2, 1, monotonic_us()).expect("room");
        assert!(q.join(2, 1, monotonic_us()).is_none(), "max=2");
        assert_eq!(q.stats().full, 1);
        let started = monotonic_us();
        assert_eq!(q.wait(&first, soon(5000), || true), Waited::Gone);
        assert!(monotonic_us() - started < 1_000_000, "seen gone at the first look");
        assert!(q.join(2, 1, monotonic_us()).is_some(), "its room is free again");
    }

    #[test]
    fn a_requeued_ticket_is_granted_before_later_ones() {
        let seg = seg(1, 1);
        let q = queue(&seg);
        let first = q.join(10, 1, monotonic_us()).unwrap();
        let second = q.join(10, 1, monotonic_us()).unwrap();
        assert!(q.grant());
        assert_eq!(q.wait(&first, soon(100), || false), Waited::Granted);
        // Its place was taken by a request that does not queue: back to the front.
        assert_eq!(q.requeue(&first), Requeued::Waiting);
        assert!(q.grant());
        assert_eq!(q.wait(&first, soon(100), || false), Waited::Granted);
        assert_eq!(q.wait(&second, soon(30), || false), Waited::TimedOut);
    }

    #[test]
    fn the_head_looks_for_itself_after_a_while() {
        let seg = seg(1, 1);
        let q = queue(&seg);
        let first = q.join(10, 1, monotonic_us()).unwrap();
        let second = q.join(10, 1, monotonic_us()).unwrap();
        let started = monotonic_us();
        assert_eq!(q.wait(&first, soon(5000), || false), Waited::Look);
        let looked = monotonic_us() - started;
        assert!(looked >= POLL.as_micros() as u64 && looked < 3 * POLL.as_micros() as u64, "{looked}");
        // It found a place: the line moves on, and the second is next.
        q.served(first, true, monotonic_us());
        assert!(q.grant());
        assert_eq!(q.wait(&second, soon(100), || false), Waited::Granted);
    }

    fn wait_for(mut condition: impl FnMut() -> bool) {
        let deadline = soon(5000);
        while !condition() {
            assert!(monotonic_us() < deadline, "not within 5 s");
            thread::yield_now();
        }
    }

    #[test]
    fn threads_are_served_in_the_order_they_joined_one_grant_each() {
        let seg = seg(1, 1);
        let q = queue(&seg);
        let order = Mutex::new(Vec::new());
        let joined = AtomicU64::new(0);
        thread::scope(|scope| {
            let waiters: Vec<_> = (0..8u64)
                .map(|i| {
                    let (order, joined) = (&order, &joined);
                    scope.spawn(move || {
                        wait_for(|| joined.load(SeqCst) == i);
                        let ticket = q.join(100, 1, monotonic_us()).unwrap();
                        joined.fetch_add(1, SeqCst);
                        let waited = q.wait(&ticket, soon(10_000), || false);
                        order.lock().unwrap().push(i);
                        q.served(ticket, waited == Waited::Look, monotonic_us());
                        waited
                    })
                })
                .collect();
            wait_for(|| joined.load(SeqCst) == 8);
            for served in 1..=8 {
                assert!(q.grant());
                wait_for(|| order.lock().unwrap().len() == served);
            }
            let waited: Vec<Waited> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
            assert!(waited.iter().all(|w| *w == Waited::Granted), "{waited:?}");
        });
        assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
        assert_eq!(q.stats().served, 8);
    }

    /// A child process that joins the line and exits with 7 if it is granted a place within
    /// 5 s (it takes it), 1 otherwise.
    fn waiter_in_a_child(q: Queue<'_>) -> Child {
        Child::fork(|pid| {
            let ticket = q.join(10, pid, monotonic_us()).unwrap();
            match q.wait(&ticket, soon(5000), || false) {
                Waited::Granted => {
                    q.served(ticket, false, monotonic_us());
                    7
                }
                _ => 1,
            }
        })
    }

    #[test]
    fn a_waiter_in_another_process_is_woken_and_a_killed_one_leaves_the_line() {
        let seg = seg(1, 1);
        let q = queue(&seg);
        // The first waiter is killed while it waits.
        let mut killed = Child::fork(|pid| {
            let ticket = q.join(10, pid, monotonic_us()).unwrap();
            q.wait(&ticket, soon(60_000), || false);
            0
        });
        wait_for(|| q.stats().joined == 1);
        let mut woken = waiter_in_a_child(q);
        wait_for(|| q.stats().joined == 2);
        killed.kill();
        // The parent reaps it: its ticket leaves the line, and the place it held goes to the
        // next waiter, in the other process.
        q.reap(killed.pid(), 1, monotonic_us());
        assert_eq!(woken.wait(), Some(7));
        let stats = q.stats();
        assert_eq!((stats.waiting, stats.served, stats.gone), (0, 1, 1));
        assert!(!q.in_line());
    }

    #[test]
    fn a_killed_child_that_held_a_grant_passes_it_on_and_leaves_no_count() {
        let seg = seg(1, 1);
        let q = queue(&seg);
        // Granted, then killed before it took its place.
        let mut killed = Child::fork(|pid| {
            let ticket = q.join(10, pid, monotonic_us()).unwrap();
            if q.wait(&ticket, soon(60_000), || false) == Waited::Granted {
                thread::sleep(Duration::from_secs(60));
            }
            0
        });
        wait_for(|| q.stats().joined == 1);
        let mut next = waiter_in_a_child(q);
        wait_for(|| q.stats().joined == 2);
        assert!(q.grant(), "the first ticket");
        thread::sleep(Duration::from_millis(50));
        assert!(q.in_line(), "granted and not served: still in line for newcomers");
        killed.kill();
        q.reap(killed.pid(), 0, monotonic_us());
        assert_eq!(next.wait(), Some(7), "the grant went on to the next ticket");
        let stats = q.stats();
        assert_eq!((stats.waiting, stats.served, stats.gone), (0, 1, 1), "{stats:?}");
        assert!(!q.in_line());
    }

    #[test]
    fn a_ticket_a_late_grant_left_behind_head_brings_head_back() {
        let seg = seg(1, 1);
        let q = queue(&seg);
        let first = q.join(10, 1, monotonic_us()).unwrap();
        // A granter granted `first` (word GRANTED) but had not yet moved head when `first`
        // went back to the front: then it moves head past it.
        let place = q.place(first.number);
        place.word.store(word(lap_of(first.number), GRANTED), SeqCst);
        assert_eq!(q.requeue(&first), Requeued::Waiting);
        q.counters.head.store(first.number + 1, SeqCst);
        // Its next look brings head back, and a grant reaches it again.
        assert_eq!(q.wait(&first, soon(5000), || false), Waited::Look);
        assert_eq!(q.counters.head.load(SeqCst), first.number);
        assert!(q.grant());
        assert_eq!(q.wait(&first, soon(100), || false), Waited::Granted);
    }

    #[test]
    fn a_grant_that_races_a_look_is_passed_on() {
        let seg = seg(1, 1);
        let q = queue(&seg);
        let first = q.join(10, 1, monotonic_us()).unwrap();
        let second = q.join(10, 1, monotonic_us()).unwrap();
        assert_eq!(q.wait(&first, soon(5000), || false), Waited::Look);
        // While it picked by its look, a place freed and was granted to it.
        assert!(q.grant());
        q.served(first, true, monotonic_us());
        assert_eq!(q.wait(&second, soon(100), || false), Waited::Granted, "the grant went on");
    }

    #[test]
    fn a_grant_with_nobody_at_the_head_is_kept_for_a_granted_one_that_finds_no_place() {
        let seg = seg(1, 1);
        let q = queue(&seg);
        let only = q.join(10, 1, monotonic_us()).unwrap();
        assert!(q.grant());
        assert_eq!(q.wait(&only, soon(100), || false), Waited::Granted);
        // Another place frees while it picks; its pick finds none (a sticky request took one).
        assert!(q.grant(), "kept as a spare");
        assert_eq!(q.requeue(&only), Requeued::Again, "it picks again at once");
        assert_eq!(q.requeue(&only), Requeued::Waiting, "one spare only");
        q.served(only, false, monotonic_us());
        assert!(!q.grant(), "nobody left: no spare kept");
    }

    #[test]
    fn a_ticket_that_left_ahead_does_not_keep_the_next_from_looking() {
        let seg = seg(1, 1);
        let q = queue(&seg);
        let first = q.join(10, 1, monotonic_us()).unwrap();
        let second = q.join(10, 1, monotonic_us()).unwrap();
        let third = q.join(10, 1, monotonic_us()).unwrap();
        // The first is granted (head moves to the second), the second's client goes.
        assert!(q.grant());
        assert_eq!(q.wait(&second, soon(1000), || true), Waited::Gone);
        q.served(first, false, monotonic_us());
        // The third is at the front now: it looks after one POLL, not at its timeout.
        let started = monotonic_us();
        assert_eq!(q.wait(&third, soon(1500), || false), Waited::Look);
        assert!(monotonic_us() - started < 3 * POLL.as_micros() as u64);
    }

    #[test]
    fn the_parent_sweeps_out_a_ticket_its_dead_joiner_never_wrote_and_a_lost_grant() {
        let seg = seg(1, 1);
        let q = queue(&seg);
        // A joiner that counted itself in and took a ticket, then died before writing it.
        let long_ago = monotonic_us();
        q.counters.waiting.fetch_add(1, SeqCst);
        let dead = q.counters.tail.fetch_add(1, SeqCst);
        q.place(dead).joined_us.store(long_ago, SeqCst);
        // A live one joins, STALE later (the times here are made up: the sweep only compares).
        let later = long_ago + STALE.as_micros() as u64;
        let live = q.join(10, 1, later).unwrap();
        // A grant reaches the dead ticket first (it looks waiting), and is lost with it.
        assert!(q.grant());
        assert_eq!(q.stats().waiting, 2);
        // Long after, the parent's sweep takes it out and passes its grant on.
        q.sweep(later + 1);
        assert_eq!(q.stats().waiting, 1, "only the live ticket counts");
        assert_eq!(q.wait(&live, soon(100), || false), Waited::Granted, "the grant went on");
        q.served(live, false, monotonic_us());
        assert!(!q.in_line());
    }
}
