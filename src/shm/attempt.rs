//! An attempt on the shared counters: one try of one request on one member, from its start to
//! its end, and what the parent does when the process that made it is killed. Every count the
//! methods, `LBMaxInflight` and the status page use stays exact whatever instruction a process
//! is killed at; this file is the whole argument, beside the code it is about.
//!
//! **What is counted where.** Each member has one shared in-flight count (`Load::word`), the
//! one every pick reads and `LBMaxInflight` checks and takes in one atomic step. Each process
//! has its own row, with a cell per member (`Cell`): its own attempts in flight there
//! (`open`'s low half), and its totals `selected`, `completed` and `failed`. Only the process
//! writes its row, until it has exited; then only the parent does.
//!
//! **Starting and ending.** Both are four steps:
//!
//! ```text
//!     start:  1. open.pending += 1                   end:  1. open.pending += 1
//!             2. count += 1 (if below the cap)             2. count -= 1
//!             3. selected += 1                             3. completed or failed += 1
//!             4. open += 1, open.pending -= 1              4. open -= 1, open.pending -= 1
//! ```
//!
//! Step 2 is the only write to the shared count; steps 1 and 4 bracket it, so a cell whose
//! `pending` is 0 says exactly how much its process has in the count: `open`. A start refused
//! at the cap undoes step 1 and stops.
//!
//! **A process that exits.** httpd's parent tells the module when it reaps a child, and the
//! module looks every few seconds for a child that vanished without httpd telling. The parent
//! then, for every member, moves the dead process's totals into the member's kept totals
//! (whatever it did not see end counts as failed: it died with it), clears the cell and frees
//! the slot. Where the cell's `pending` is 0 the dead process's `open` attempts are exactly
//! its part of the count, and the parent takes them off it. Where `pending` is not 0 it died
//! inside a start or an end, and nothing says whether its step 2 happened: the parent
//! recounts that member. Only the parent reaps: a reaping cut short by a kill would leave the
//! counts wrong, and the parent is the one process that is not killed while httpd runs.
//!
//! **Until the parent reaps.** httpd's parent notices a dead child within about a second. A
//! child about to refuse a request because every member is full marks the dead siblings
//! holding places on them (a mark added to the slot's pid, nothing else: a child killed while
//! marking leaves nothing wrong), and those places are lent to new attempts: the cap is raised
//! by as much as the dead processes hold ([`Loans`]), and the count drops back when the parent
//! reaps them. A start that used a loan checks, after it counted, that no reaping began since
//! the loans were read; if one did, it undoes itself (inside its own bracket), so no member ever
//! holds more live attempts than its cap.
//!
//! **The recount** sets the count to the sum of `open` over the rows in use, if it can read
//! them all with no `pending`, no row being reaped and no change to the count meanwhile: it
//! reads the count (its high half counts every change), sums the rows, and swaps the sum in
//! only if the count is still what it read. Why that is exact: a thread whose step 2 happened before the count was
//! read either finished its step 4 before its row was read (its `open` is counted, and so is
//! its step 2) or had not (its `pending` was seen, and the recount waits); a thread whose step
//! 2 came after the count was read changed the count, and the swap fails. Rows of processes
//! that are dead but not yet reaped are summed like the others: their part is still in the
//! count until their own reaping takes it off. The recount is tried at once and then once a
//! second until it succeeds; until then the member's count may be off by the few starts and
//! ends the dead child was in the middle of.
//!
//! **Totals** are the kept totals plus every row's; a reader rereads while a reaper is moving
//! a row (`Header::retirements_begun` and `_ended`, a sequence lock). Whatever a process does, `selected =
//! completed + failed + open` holds in its cell whenever its `pending` is 0, and the parent
//! keeps it so in the kept totals; so at rest, for every member, `selected = completed +
//! failed + handed_over + inflight` (`handed_over`: attempts a graceful restart left to the
//! previous segment, `shm::carry_over`).
//!
//! What is not covered: a process that found the process table full counts in the shared
//! row, which no reaping can take apart (the table has room for twice httpd's process limit,
//! so this is a misconfiguration that the child logs).

use super::layout::{Cell, DEAD, Load, MemberSlot};
use super::segment::Segment;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// `open`'s high half: threads between step 1 and step 4.
const PENDING: u64 = 1 << 32;
/// The low half of `open` and of the count word.
const LOW: u64 = 0xffff_ffff;
/// One change of the count word (its high half).
const CHANGE: u64 = 1 << 32;

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Ended without the member failing (which is not the same as a `200`).
    Completed,
    /// The member failed it: an error, a gateway error answer, a failover to another member.
    Failed,
}

/// The counts one process keeps: its row of the segment.
#[derive(Clone, Copy)]
pub struct Counts {
    segment: Segment,
    row: u32,
}

impl Counts {
    /// The counts of the process in process slot `slot`, or in the shared row when it has none.
    pub fn new(segment: Segment, slot: Option<usize>) -> Counts {
        let row = slot.filter(|&s| s < segment.shared_row()).unwrap_or(segment.shared_row());
        Counts { segment, row: row as u32 }
    }

    /// Starts an attempt on member slot `member` if it has fewer than `cap` in flight (the check
    /// and the count are one atomic step, so no number of processes can push it past its cap).
    /// `None` when it is full, or when `member` is not a member slot.
    pub fn begin(&self, member: usize, cap: u64) -> Option<Attempt> {
        self.begin_with(member, cap, &Loans::NONE)
    }

    /// [`Counts::begin`], with the places dead processes hold on the member lent ([`Loans`]): the
    /// count may reach `cap` plus what they hold, since that much of it is theirs until the
    /// parent reaps them. If a reaping began since the loans were read, the count may already
    /// be without them: the start is undone and `None` returned.
    pub fn begin_with(&self, member: usize, cap: u64, loans: &Loans) -> Option<Attempt> {
        let (cell, load) = self.places(member)?;
        let lent = loans.of(&self.segment, member);
        let cap = cap.saturating_add(lent).min(LOW);
        cell.open.fetch_add(PENDING, SeqCst);
        let counted = load
            .word
            .fetch_update(SeqCst, SeqCst, |word| (word & LOW < cap).then(|| word.wrapping_add(1 + CHANGE)));
        let Ok(before) = counted else {
            cell.open.fetch_sub(PENDING, SeqCst);
            return None;
        };
        if lent > 0 && !loans.still_good(&self.segment) {
            // Undone within the same bracket: a kill here leaves `pending` set, and the parent
            // recounts.
            let _ = load
                .word
                .fetch_update(SeqCst, SeqCst, |word| (word & LOW > 0).then(|| word.wrapping_add(CHANGE) - 1));
            cell.open.fetch_sub(PENDING, SeqCst);
            return None;
        }
        cell.selected.fetch_add(1, SeqCst);
        cell.open.fetch_add(1u64.wrapping_sub(PENDING), SeqCst);
        let now = (before & LOW) + 1;
        if now > load.peak.load(SeqCst) {
            load.peak.fetch_max(now, SeqCst);
        }
        Some(Attempt { counts: *self, member: member as u32, awaiting: false })
    }

    fn places(&self, member: usize) -> Option<(&Cell, &Load)> {
        Some((self.segment.cell(self.row as usize, member)?, &self.segment.member(member)?.load))
    }
}

/// An attempt under way, counted on its member. End it exactly once, with [`Attempt::end`].
#[must_use = "an attempt stays counted until it is ended"]
pub struct Attempt {
    counts: Counts,
    member: u32,
    /// Counted in the member's `waiting` ([`Attempt::await_answer`]) and not answered yet.
    awaiting: bool,
}

impl Attempt {
    /// The member slot it is counted on.
    pub fn member(&self) -> usize {
        self.member as usize
    }

    /// The segment it is counted in.
    pub fn segment(&self) -> &Segment {
        &self.counts.segment
    }

    /// The attempt waits for the member's answer from `now_us` (monotonic microseconds) until
    /// [`Attempt::answered`] or its end: it counts in the member's `waiting`, which tells how
    /// long the member has kept requests waiting without answering ([`unanswered_for`]).
    pub fn await_answer(&mut self, now_us: u64) {
        let segment = self.counts.segment;
        let Some(member) = segment.member(self.member as usize).filter(|_| !self.awaiting) else { return };
        self.awaiting = true;
        if member.load.waiting.fetch_add(1, SeqCst) == 0 {
            member.load.waiting_since_us.store(now_us, SeqCst);
        }
    }

    /// The member answered (the first byte of its answer came) at `now_us`.
    pub fn answered(&mut self, now_us: u64) {
        if let Some(load) = self.stop_waiting() {
            load.answered_us.store(now_us, SeqCst);
        }
    }

    /// Takes the attempt out of the member's `waiting`, if it is in it.
    fn stop_waiting(&mut self) -> Option<&Load> {
        if !std::mem::take(&mut self.awaiting) {
            return None;
        }
        let load = &self.counts.segment.member(self.member as usize)?.load;
        let _ = load.waiting.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
        Some(load)
    }

    /// Ends the attempt: the member's count goes down and its outcome is counted.
    pub fn end(mut self, outcome: Outcome) {
        self.stop_waiting();
        let Some((cell, load)) = self.counts.places(self.member as usize) else { return };
        cell.open.fetch_add(PENDING, SeqCst);
        // Never below 0: an attempt ends only after its start counted it, and a recount keeps
        // every attempt of a live process in the count.
        let _ = load
            .word
            .fetch_update(SeqCst, SeqCst, |word| (word & LOW > 0).then(|| word.wrapping_add(CHANGE) - 1));
        match outcome {
            Outcome::Completed => cell.completed.fetch_add(1, SeqCst),
            Outcome::Failed => cell.failed.fetch_add(1, SeqCst),
        };
        // open - 1 and pending - 1 in one step (this attempt made open at least 1).
        cell.open.fetch_add(0u64.wrapping_sub(1 + PENDING), SeqCst);
    }
}

/// Attempts in flight on member slot `member` now, across all processes.
pub fn inflight(segment: &Segment, member: usize) -> u64 {
    segment.member(member).map_or(0, |m| m.load.word.load(SeqCst) & LOW)
}

/// How long member slot `member` has kept requests waiting without answering any at `now_us`
/// (0: none waiting): since the last answer, or since requests began waiting if that was
/// later. A member that answers slowly but steadily keeps this near its latency; one that
/// stalls sees it grow from its first unanswered request.
pub fn unanswered_for(member: &MemberSlot, now_us: u64) -> u64 {
    let load = &member.load;
    if load.waiting.load(SeqCst) == 0 || load.word.load(SeqCst) & LOW == 0 {
        return 0;
    }
    let since = load.waiting_since_us.load(SeqCst).max(load.answered_us.load(SeqCst));
    now_us.saturating_sub(since)
}

/// The places process `pid` holds now, by member slot (its attempts in flight; those it was
/// starting or ending when it died count as held). For the parent, before [`reap`] takes them
/// back: which balancers' waiting lines get them.
pub fn held_by(segment: &Segment, pid: u32) -> Vec<(usize, u64)> {
    let Some(slot) = (pid != 0).then(|| segment.find_process(pid)).flatten() else {
        return Vec::new();
    };
    (0..segment.capacity().members as usize)
        .filter_map(|member| {
            let open = segment.cell(slot, member)?.open.load(SeqCst);
            let held = (open & LOW) + u64::from(open >> 32 != 0);
            (held > 0).then_some((member, held))
        })
        .collect()
}

/// What the parent took back from a process that exited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Attempts it still had in flight (they count as failed).
    pub attempts: u64,
    /// Members it died starting or ending an attempt on, whose count was recounted.
    pub recounted: usize,
    /// Of those, members whose recount found no quiet moment yet: the parent tries again
    /// every few seconds.
    pub recounts_due: usize,
}

/// Process `pid` has exited (httpd's parent reaped it): its totals go into the members' kept
/// totals, what it had in flight comes off the counts, and its slot is freed. `None` if it had
/// no slot. The parent alone calls it, one process at a time: a reaping cut short would leave
/// the counts wrong, and the parent is the one process that is not killed while httpd runs.
pub fn reap(segment: &Segment, pid: u32) -> Option<Reaped> {
    let slot = (pid != 0).then(|| segment.find_process(pid)).flatten()?;
    let process = segment.process(slot)?;
    let mut reaped = Reaped::default();
    let mut due = Vec::new();
    let header = segment.header();
    header.retirements_begun.fetch_add(1, SeqCst);
    for member in 0..segment.capacity().members as usize {
        let (Some(cell), Some(slot_of_member)) = (segment.cell(slot, member), segment.member(member)) else {
            continue;
        };
        let open = cell.open.load(SeqCst);
        let (selected, completed) = (cell.selected.load(SeqCst), cell.completed.load(SeqCst));
        if open == 0 && selected == 0 {
            continue;
        }
        let (attempts, pending) = (open & LOW, open >> 32);
        if pending == 0 {
            if attempts > 0 {
                let _ = slot_of_member.load.word.fetch_update(SeqCst, SeqCst, |word| {
                    Some(word.wrapping_add(CHANGE) - attempts.min(word & LOW))
                });
            }
        } else {
            due.push(member);
        }
        // Its attempts that still waited for an answer never will. It cannot say which of its
        // attempts were answered: all of them come off, so the count errs low (a stall seen
        // late), never high (a member seen stalled for good).
        if attempts > 0 {
            let waiting = &slot_of_member.load.waiting;
            let _ = waiting.fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(attempts)));
        }
        reaped.attempts += attempts;
        let life = &slot_of_member.life;
        life.kept_selected.fetch_add(selected, SeqCst);
        life.kept_completed.fetch_add(completed, SeqCst);
        // Whatever it selected and did not see complete failed: it died with them.
        life.kept_failed.fetch_add(selected.saturating_sub(completed), SeqCst);
        for counter in [&cell.open, &cell.selected, &cell.completed, &cell.failed] {
            counter.store(0, SeqCst);
        }
    }
    header.retirements_ended.fetch_add(1, SeqCst);
    if process.pid.swap(0, SeqCst) & DEAD != 0 {
        let _ = header.dead_marked.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
    }
    reaped.recounted = due.len();
    for member in due {
        if let Some(slot_of_member) = segment.member(member) {
            slot_of_member.life.audit_due.store(1, SeqCst);
        }
        if !recount(segment, member) {
            reaped.recounts_due += 1;
        }
    }
    Some(reaped)
}

/// How often, at most, a process looks for dead siblings holding places.
pub const HOLDERS_CHECK_INTERVAL_US: u64 = 50_000;
/// How long a request about to be refused waits, at most, for another process's look.
const HOLDERS_WAIT_US: u64 = 5_000;

/// What [`mark_dead_holders`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holders {
    /// It looked, and marked this many processes dead.
    Marked(usize),
    /// Another process looked since the pick began: places may be lent now; pick again.
    LookedElsewhere,
    /// Nobody found anything.
    Nothing,
}

/// Before a request is refused because `members` are all full: marks dead the processes that
/// hold places on them and that `gone` says can no longer run (zombies httpd's parent has not
/// reaped yet: it notices within about a second), so that their places are lent ([`Loans`])
/// until the parent takes them back. It writes nothing but the mark, which is tied to the pid;
/// a process killed while marking leaves at worst a count of marks one too high, which the
/// parent corrects ([`count_dead_marks`]).
///
/// Looks at most once per [`HOLDERS_CHECK_INTERVAL_US`] across all processes (whoever moves
/// the header's time first looks), so that a long overload, where every request is refused,
/// costs one look per interval; a process that finds another one looking waits for it (a few
/// milliseconds at most), and is told to pick again if a look ended after its pick began
/// (`since_us`).
pub fn mark_dead_holders(
    segment: &Segment,
    members: impl Iterator<Item = usize> + Clone,
    since_us: u64,
    gone: impl Fn(u32) -> bool,
) -> Holders {
    let header = segment.header();
    let now = super::monotonic_us();
    let last = header.holders_checked_us.load(SeqCst);
    if now.saturating_sub(last) < HOLDERS_CHECK_INTERVAL_US
        || header.holders_checked_us.compare_exchange(last, now, SeqCst, SeqCst).is_err()
    {
        let deadline = now + HOLDERS_WAIT_US;
        while header.holders_done_us.load(SeqCst) < header.holders_checked_us.load(SeqCst)
            && super::monotonic_us() < deadline
        {
            std::thread::yield_now();
        }
        return if header.holders_done_us.load(SeqCst) >= since_us {
            Holders::LookedElsewhere
        } else {
            Holders::Nothing
        };
    }
    let mut marked = 0;
    for (slot, pid, dead) in segment.process_states() {
        let holds =
            members.clone().any(|m| segment.cell(slot, m).is_some_and(|c| c.open.load(SeqCst) & LOW != 0));
        let Some(process) = segment.process(slot).filter(|_| !dead && holds && gone(pid)) else { continue };
        // Counted before the mark, so that a kill in between leaves the count high (the
        // parent corrects it), never low.
        header.dead_marked.fetch_add(1, SeqCst);
        if process.pid.compare_exchange(pid, pid | DEAD, SeqCst, SeqCst).is_err() {
            header.dead_marked.fetch_sub(1, SeqCst);
            continue;
        }
        // The pid could have passed to a new process that took the same slot since `gone`
        // answered: then the mark comes off again.
        if !gone(pid) && process.pid.compare_exchange(pid | DEAD, pid, SeqCst, SeqCst).is_ok() {
            header.dead_marked.fetch_sub(1, SeqCst);
            continue;
        }
        marked += 1;
    }
    header.holders_done_us.fetch_max(super::monotonic_us(), SeqCst);
    if marked == 0 { Holders::Nothing } else { Holders::Marked(marked) }
}

/// Sets the count of dead marks to the number of slots marked (the parent, every few seconds):
/// a process killed between counting a mark and setting it leaves the count too high, which
/// only makes picks look for loans they will not find.
pub fn count_dead_marks(segment: &Segment) {
    let marked = segment.process_states().filter(|&(_, _, dead)| dead).count();
    segment.header().dead_marked.store(marked as u32, SeqCst);
}

/// The places processes marked dead hold, which new attempts may use until httpd's parent
/// reaps those processes and takes them off the count. Read once per pick.
pub struct Loans {
    /// The slots marked dead (the first [`Loans::MOST`]).
    dead: [u32; Loans::MOST],
    count: usize,
    /// `Header::retirements_begun` when they were read: a reaping since makes them stale.
    epoch: u64,
}

impl Loans {
    const MOST: usize = 32;

    /// No loans.
    pub const NONE: Loans = Loans { dead: [0; Loans::MOST], count: 0, epoch: 0 };

    /// The slots marked dead now. None when no slot is marked (one load), or while the parent
    /// is reaping (a row being cleared lends nothing).
    pub fn read(segment: &Segment) -> Loans {
        let header = segment.header();
        if header.dead_marked.load(SeqCst) == 0 {
            return Loans::NONE;
        }
        let ended = header.retirements_ended.load(SeqCst);
        let epoch = header.retirements_begun.load(SeqCst);
        if epoch != ended {
            return Loans::NONE;
        }
        let mut loans = Loans { epoch, ..Loans::NONE };
        for (slot, _, _) in segment.process_states().filter(|&(_, _, dead)| dead).take(Loans::MOST) {
            loans.dead[loans.count] = slot as u32;
            loans.count += 1;
        }
        loans
    }

    /// The places on member slot `member` the dead processes hold: their attempts in flight
    /// there, but for any they were starting or ending when they died (their part of the count
    /// is not known until the parent recounts).
    pub fn of(&self, segment: &Segment, member: usize) -> u64 {
        self.dead[..self.count]
            .iter()
            .filter_map(|&slot| segment.cell(slot as usize, member))
            .map(|cell| {
                let open = cell.open.load(SeqCst);
                (open & LOW).saturating_sub(open >> 32)
            })
            .sum()
    }

    /// No reaping has begun since they were read.
    fn still_good(&self, segment: &Segment) -> bool {
        segment.header().retirements_begun.load(SeqCst) == self.epoch
    }
}

/// Tries again every recount still due (the parent does, about every ten seconds). Returns
/// how many are still due.
pub fn recount_due(segment: &Segment) -> usize {
    (0..segment.capacity().members as usize)
        .filter(|&member| segment.member(member).is_some_and(|m| m.life.audit_due.load(SeqCst) != 0))
        .filter(|&member| !recount(segment, member))
        .count()
}

/// Tries a few times to set member `member`'s count to the sum of the rows (see the top of
/// this file). True when done.
fn recount(segment: &Segment, member: usize) -> bool {
    const TRIES: usize = 100;
    let Some(slot) = segment.member(member) else { return true };
    for _ in 0..TRIES {
        let word = slot.load.word.load(SeqCst);
        let mut sum = 0u64;
        let mut quiet = true;
        for row in segment.rows_in_use() {
            let open = segment.cell(row, member).map_or(0, |cell| cell.open.load(SeqCst));
            if open >> 32 != 0 {
                quiet = false;
                break;
            }
            sum += open & LOW;
        }
        let recounted = (word & !LOW).wrapping_add(CHANGE) | sum.min(LOW);
        if quiet && slot.load.word.compare_exchange(word, recounted, SeqCst, SeqCst).is_ok() {
            slot.life.audit_due.store(0, SeqCst);
            return true;
        }
        std::thread::yield_now();
    }
    false
}

/// A member's totals, read in one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub inflight: u64,
    pub peak_inflight: u64,
    pub selected: u64,
    pub completed: u64,
    pub failed: u64,
    pub handed_over: u64,
}

/// Member slot `member`'s totals: its kept totals and every row's. Completed and failed are
/// read before selected, so that a reading taken while attempts start and end never shows
/// more ended than selected.
pub fn totals(segment: &Segment, member: usize) -> Totals {
    let Some(slot) = segment.member(member) else { return Totals::default() };
    let life = &slot.life;
    let header = segment.header();
    let sum = |field: fn(&Cell) -> &AtomicU64| -> u64 {
        segment.rows_in_use().filter_map(|row| segment.cell(row, member)).map(|c| field(c).load(SeqCst)).sum()
    };
    // A reaping takes microseconds; a reading that keeps meeting one (never, in practice) gives
    // up waiting after a while rather than spin.
    let mut tries = 0;
    loop {
        tries += 1;
        let ended = header.retirements_ended.load(SeqCst);
        let begun = header.retirements_begun.load(SeqCst);
        if begun != ended && tries < 10_000 {
            std::thread::yield_now();
            continue;
        }
        let completed = life.kept_completed.load(SeqCst) + sum(|c| &c.completed);
        let failed = life.kept_failed.load(SeqCst) + sum(|c| &c.failed);
        let selected = life.kept_selected.load(SeqCst) + sum(|c| &c.selected);
        if header.retirements_begun.load(SeqCst) == begun || tries >= 10_000 {
            return Totals {
                inflight: slot.load.word.load(SeqCst) & LOW,
                peak_inflight: slot.load.peak.load(SeqCst),
                selected,
                completed,
                failed,
                handed_over: life.handed_over.load(SeqCst),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::Capacity;
    use crate::shm::testing::{Child, Mapped};
    use crate::shm::tests::adds_up;
    use std::time::{Duration, Instant};

    /// A pseudo-random number from a counter.
    fn draw(n: u64) -> u64 {
        crate::shm::fnv1a(&n.to_le_bytes())
    }

    /// A forked process that takes a slot and runs `body` until it is killed.
    fn victim(segment: &Segment, body: fn(Counts, u64)) -> Child {
        let child = Child::fork(|pid| {
            body(Counts::new(*segment, segment.claim_process(pid)), u64::from(pid));
            0
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while segment.find_process(child.pid()).is_none() {
            assert!(Instant::now() < deadline, "the child never took a slot");
            std::thread::yield_now();
        }
        child
    }

    /// Kills it and reaps it as httpd's parent does.
    fn kill(segment: &Segment, mut victim: Child) -> Reaped {
        victim.kill();
        reap(segment, victim.pid()).expect("the victim had a slot")
    }

    /// Starts and ends attempts on both members as fast as it can, one of them under a cap of
    /// 2, with both outcomes, holding up to two at a time, until it is killed.
    fn churn(counts: Counts, seed: u64) {
        let mut i = seed;
        loop {
            i += 1;
            let first = counts.begin(0, u64::MAX).expect("no cap");
            let second = counts.begin(1, 2);
            first.end(if draw(i).is_multiple_of(5) { Outcome::Failed } else { Outcome::Completed });
            if let Some(second) = second {
                second.end(Outcome::Completed);
            }
        }
    }

    /// Kills processes at random instructions, two at a time, a thousand times, reaping them
    /// as httpd's parent does: no count drifts, and the attempt the test itself holds stays.
    #[test]
    fn a_thousand_random_kills_leave_every_count_exact() {
        let segment = Mapped::new(Capacity { balancers: 1, members: 2, processes: 8 });
        let mine = Counts::new(*segment, segment.claim_process(std::process::id()));
        let held = mine.begin(0, u64::MAX).unwrap();
        let (mut kills, mut recounts) = (0, 0);
        for round in 0..500u64 {
            let victims = [victim(&segment, churn), victim(&segment, churn)];
            std::thread::sleep(Duration::from_micros(draw(round) % 1500));
            // Both die at once; while the second is not reaped yet, a recount the first one
            // needs may wait for it (the second may have died in the middle of a start).
            for victim in victims {
                recounts += kill(&segment, victim).recounted;
                kills += 1;
            }
            assert_eq!(recount_due(&segment), 0, "nothing else runs: a recount succeeds at once");
            let (t0, t1) = (totals(&segment, 0), totals(&segment, 1));
            assert_eq!((t0.inflight, t1.inflight), (1, 0), "round {round}: {t0:?} {t1:?}");
            assert!(adds_up(&t0) && adds_up(&t1), "round {round}: {t0:?} {t1:?}");
        }
        held.end(Outcome::Completed);
        let t0 = totals(&segment, 0);
        assert_eq!(t0.inflight, 0);
        assert!(adds_up(&t0));
        assert_eq!(segment.processes().count(), 1, "every victim's slot was freed");
        eprintln!("{kills} kills, {recounts} recount(s), 0 drift; member 0: {t0:?}");
    }

    /// A request about to be refused marks dead the processes holding places on its members,
    /// and only those, at most once per interval; their places are lent until the parent reaps.
    #[test]
    fn a_refusal_marks_dead_holders_of_its_members_and_their_places_are_lent() {
        let segment = Mapped::new(Capacity { balancers: 1, members: 2, processes: 8 });
        let holder = |member: usize| {
            victim(
                &segment,
                if member == 0 {
                    |counts: Counts, _| hold(counts, 0)
                } else {
                    |counts: Counts, _| hold(counts, 1)
                },
            )
        };
        fn hold(counts: Counts, member: usize) {
            let _held = counts.begin(member, 1);
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let (on_0, on_1) = (holder(0), holder(1));
        while inflight(&segment, 0) + inflight(&segment, 1) < 2 {
            std::thread::yield_now();
        }
        let dead = [on_0.pid(), on_1.pid()];
        let gone = |pid: u32| dead.contains(&pid);
        let lent = |member| Loans::read(&segment).of(&segment, member);
        let since = crate::shm::monotonic_us();
        assert_eq!(lent(0), 0);
        let marked = mark_dead_holders(&segment, [0].into_iter(), since, gone);
        assert_eq!(marked, Holders::Marked(1), "only member 0's holder");
        assert_eq!((lent(0), lent(1)), (1, 0));
        assert_eq!((inflight(&segment, 0), inflight(&segment, 1)), (1, 1), "the count waits for the parent");
        // A start may use the loan: the cap of 1 is not reached by live attempts.
        let counts = Counts::new(*segment, segment.claim_process(std::process::id()));
        let loans = Loans::read(&segment);
        let borrowed = counts.begin_with(0, 1, &loans).expect("the dead holder's place is lent");
        assert!(counts.begin_with(0, 1, &loans).is_none(), "one place lent, one taken");
        // Within the interval, nobody looks again: a request whose pick began before the last
        // look ended is told to pick again, a later one is not.
        assert_eq!(mark_dead_holders(&segment, [1].into_iter(), since, gone), Holders::LookedElsewhere);
        let later = crate::shm::monotonic_us() + 1;
        assert_eq!(mark_dead_holders(&segment, [1].into_iter(), later, gone), Holders::Nothing);
        std::thread::sleep(Duration::from_micros(HOLDERS_CHECK_INTERVAL_US));
        let since = crate::shm::monotonic_us();
        assert_eq!(mark_dead_holders(&segment, [1].into_iter(), since, gone), Holders::Marked(1));
        assert_eq!(lent(1), 1);
        // The parent reaps them: their places come off the count, nothing is lent any more, and
        // loans read before the reaping no longer admit anything past the cap.
        let stale = Loans::read(&segment);
        for holder in [on_0, on_1] {
            assert_eq!(kill(&segment, holder).attempts, 1);
        }
        assert_eq!((inflight(&segment, 0), inflight(&segment, 1)), (1, 0));
        assert_eq!((lent(0), lent(1)), (0, 0));
        assert_eq!(segment.header().dead_marked.load(SeqCst), 0);
        assert!(counts.begin_with(0, 1, &stale).is_none(), "a stale loan is undone");
        assert_eq!(inflight(&segment, 0), 1, "and leaves the count as it was");
        assert_eq!(
            segment.cell(segment.find_process(std::process::id()).unwrap(), 0).unwrap().open.load(SeqCst),
            1
        );
        borrowed.end(Outcome::Completed);
    }

    /// A process killed between counting a dead mark and setting it leaves the count high; the
    /// parent sets it right.
    #[test]
    fn the_count_of_dead_marks_is_set_right_by_the_parent() {
        let segment = Mapped::new(Capacity { balancers: 1, members: 1, processes: 2 });
        segment.header().dead_marked.store(3, SeqCst);
        count_dead_marks(&segment);
        assert_eq!(segment.header().dead_marked.load(SeqCst), 0);
    }

    /// The same while another process keeps working: the recounts that a kill inside a start
    /// or an end makes necessary are exact while that process starts and ends attempts.
    #[test]
    fn recounts_are_exact_while_another_process_works() {
        let segment = Mapped::new(Capacity { balancers: 1, members: 2, processes: 8 });
        // The worker holds each attempt about 20 µs, as a fast request would.
        let worker = victim(&segment, |counts, seed| {
            let mut i = seed;
            loop {
                i += 1;
                let attempt = counts.begin((i % 2) as usize, 2);
                std::thread::sleep(Duration::from_micros(20));
                if let Some(attempt) = attempt {
                    attempt.end(if draw(i).is_multiple_of(3) { Outcome::Failed } else { Outcome::Completed });
                }
            }
        });
        let (mut recounted, mut due) = (0, 0);
        for round in 0..200u64 {
            let churning = victim(&segment, churn);
            std::thread::sleep(Duration::from_micros(draw(round) % 1000));
            recounted += kill(&segment, churning).recounted;
            let deadline = Instant::now() + Duration::from_secs(10);
            while recount_due(&segment) != 0 {
                due += 1;
                assert!(Instant::now() < deadline, "a recount never found a quiet moment");
            }
        }
        // Stops the worker between two attempts: the only way to be sure it holds none is to
        // let it be reaped, which takes back whatever it held, exactly.
        kill(&segment, worker);
        assert_eq!(recount_due(&segment), 0, "nothing else runs: a recount succeeds at once");
        for member in 0..2 {
            let t = totals(&segment, member);
            assert_eq!(t.inflight, 0, "{t:?}");
            assert!(adds_up(&t), "{t:?}");
        }
        eprintln!("200 kills beside a working process: {recounted} recount(s), {due} retried later");
    }
}
