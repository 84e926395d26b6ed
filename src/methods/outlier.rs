//! Outlier detection (`LBOutlierDetection`): passive, from the outcomes of real requests, shared
//! by every process and every method. A member that fails is ejected (not offered to the
//! method) for a while, then comes back on its own.
//!
//! **What is a failure.** The balancer's `failures=` (gateway failures and the member's own 5xx
//! answers by default; `config::Failures`). Every attempt's end is [`note`]d on its member's
//! shared record (`shm::layout::Health`): failures in a row, the last success, the success-rate
//! window's counts.
//!
//! **Two grounds for ejection**, as Envoy's outlier detection has them:
//! - *consecutive failures*: `consecutive=` failures in a row (5) across all processes. The
//!   attempt that reaches the count asks for a review, which the next pick of the balancer
//!   does, in any process;
//! - *success rate*: once per `interval=` (10 s), among members with at least
//!   `min-requests=` attempts in it (100), when there are at least `min-members=` of them (5),
//!   a member whose success rate is more than `stdev=` (1.9) standard deviations below their
//!   mean, *and* whose failure share is more than twice theirs.
//!
//! **What ejects nobody.** A failure every member shares (one URL that every member answers with
//! 500, a database down behind all of them) is not a member's fault, and ejecting members for it
//! only moves the failure around while taking capacity away. So: a member reaching its count is
//! ejected only if another member, usable and not ejected, has succeeded since this one last
//! did and its own last attempt succeeded; the success-rate ground needs the failure share to
//! stand out, not only the rate (noise around a shared failure rate ejects nobody).
//!
//! **Limits.** At most `max-ejected=` (50%) of the balancer's members are ejected at once (at
//! least one), and never the last member of its tier (lbset and standby) that is usable and
//! not ejected: an ejection never leaves a tier empty. Should every offered member be ejected
//! anyway (a race between two processes' reviews), the finder offers them all.
//!
//! **How long.** `eject=` (10 s) the first time; each ejection that follows the last return by
//! less than `eject=` times its level doubles the next one, up to `max-eject=` (5 min); every
//! `eject=` of health since the last return takes a doubling off again. A member comes back
//! when its time is up, whether or not a review has noticed (picks compare the time); the
//! review logs its return, and slow start, if configured, ramps it up as any member coming back.
//!
//! **Reviews** run in a pick, at most one at a time across the processes (a claim in the
//! balancer's slot, which expires after a second should the reviewing process die): when a
//! member asked for one, when an ejection ends, when the success-rate window is over.

use super::Tier;
use crate::config::Outliers;
use crate::shm::{BalancerEvents, DUE_RATE, DUE_STREAK, Health, MemberSlot};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::time::Duration;

/// Why a member was ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Consecutive,
    SuccessRate,
}

impl Why {
    fn code(self) -> u32 {
        match self {
            Why::Consecutive => 1,
            Why::SuccessRate => 2,
        }
    }

    fn from_code(code: u32) -> Option<Why> {
        match code {
            1 => Some(Why::Consecutive),
            2 => Some(Why::SuccessRate),
            _ => None,
        }
    }

    /// As the status page and the metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            Why::Consecutive => "consecutive-failures",
            Why::SuccessRate => "success-rate",
        }
    }
}

/// Records an attempt's outcome on its member. True when the member has just reached the
/// consecutive-failure count: the balancer wants a review ([`want_review`]).
pub fn note(health: &Health, failed: bool, settings: &Outliers, now_us: u64) -> bool {
    if settings.success_rate {
        health.window_attempts.fetch_add(1, Relaxed);
        if failed {
            health.window_failures.fetch_add(1, Relaxed);
        }
    }
    if !failed {
        // Loads first: a member that keeps succeeding writes nothing here most of the time.
        if health.consecutive.load(Relaxed) != 0 {
            health.consecutive.store(0, Relaxed);
        }
        if now_us.saturating_sub(health.succeeded_us.load(Relaxed)) >= 1_000 {
            health.succeeded_us.store(now_us, Relaxed);
        }
        return false;
    }
    let streak = health.consecutive.fetch_add(1, AcqRel).saturating_add(1);
    // At the count, and again at each multiple of it while the failures go on (a member spared
    // once is looked at again).
    if settings.consecutive != 0 && streak.is_multiple_of(settings.consecutive) {
        health.due.fetch_or(DUE_STREAK, AcqRel);
        return true;
    }
    false
}

/// Asks for a review of the balancer at its next pick.
pub fn want_review(events: &BalancerEvents) {
    events.review_wanted.store(1, Release);
}

/// Whether the member is ejected at `now_us`.
pub fn ejected(health: &Health, now_us: u64) -> bool {
    let until = health.ejected_until_us.load(Acquire);
    until != 0 && now_us < until
}

/// Whether any member of the balancer may be ejected now: when not, a pick looks at no
/// member's record.
pub fn any_ejected(events: &BalancerEvents) -> bool {
    events.ejected.load(Acquire) != 0
}

/// How long a review claim lasts: a review that did not finish by then (its process died) is
/// done again by another.
const CLAIM_US: u64 = 1_000_000;

/// Claims the balancer's review if one is due at `now_us` (its time has come, or a member
/// asked) and no other process holds it; the caller then runs [`review`]. The schedule and the
/// hold are apart: a member asking for a review while one runs leaves the hold alone, and
/// the next pick after it reviews again.
pub fn claim_review(events: &BalancerEvents, now_us: u64) -> Option<Claim> {
    if events.review_wanted.load(Acquire) == 0 && now_us < events.review_at_us.load(Acquire) {
        return None;
    }
    let held = events.review_held_until_us.load(Acquire);
    if held > now_us {
        return None;
    }
    let claimed = now_us + CLAIM_US;
    events.review_held_until_us.compare_exchange(held, claimed, AcqRel, Relaxed).ok()?;
    // Cleared under the hold, before reading anything: a request made from now on is seen by
    // this review or causes the next.
    events.review_wanted.store(0, Release);
    Some(Claim { claimed })
}

/// A review this process holds.
pub struct Claim {
    claimed: u64,
}

/// One member as a review sees it.
#[derive(Clone, Copy)]
pub struct Reviewed<'a> {
    pub slot: &'a MemberSlot,
    pub tier: Tier,
    /// httpd would offer it requests (not in error, disabled, draining or stopped).
    pub usable: bool,
}

/// What a review did, for the log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event {
    /// Member `position` (in the review's list) is ejected for `length`; its `ejections`th.
    Ejected { position: usize, why: Why, length: Duration, ejections: u64, detail: Detail },
    /// Member `position` is back.
    Returned { position: usize },
    /// Member `position` failed enough to be ejected, but is not.
    Spared { position: usize, why: Why, because: Spared, detail: Detail },
}

/// The figures behind an ejection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Detail {
    /// Failures in a row.
    Streak(u32),
    /// The member's success rate and the threshold it fell under (mean - k x stdev), among
    /// `members` members.
    Rate { rate: f64, threshold: f64, mean: f64, members: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spared {
    /// No other member succeeds: the failure is everyone's.
    Shared,
    /// `max-ejected=` members are ejected already.
    Cap,
    /// It is the last usable member of its tier.
    LastOfTier,
}

/// Reviews the balancer's `members` at `now_us` under `claim`: returns, ejections due to
/// failures in a row, and the success-rate evaluation when its window is over. Pushes what
/// it did to `events`, and sets when the next review is due.
pub fn review(
    claim: Claim,
    balancer: &BalancerEvents,
    members: &[Reviewed<'_>],
    settings: &Outliers,
    now_us: u64,
    events: &mut Vec<Event>,
) {
    // Returns first: a member whose time is up is usable for the counts below.
    let longest = now_us.saturating_add(settings.max_eject.as_micros() as u64);
    for (position, member) in members.iter().enumerate() {
        let health = &member.slot.health;
        let until = health.ejected_until_us.load(Acquire);
        if until > longest {
            // Set under a longer max-eject before a restart.
            let _ = health.ejected_until_us.compare_exchange(until, longest, AcqRel, Relaxed);
        }
        if until != 0
            && until <= now_us
            && health.ejected_until_us.compare_exchange(until, 0, AcqRel, Relaxed).is_ok()
        {
            health.reason.store(0, Relaxed);
            // Failures of requests that were under way when it was ejected do not count
            // towards the next ejection.
            health.consecutive.store(0, Relaxed);
            // Back since its time was up, even if no pick came to review it until later: the
            // health that shortens its next ejection counts from then.
            health.returned_us.store(until, Release);
            events.push(Event::Returned { position });
        }
    }
    let mut ejecting = Ejecting { members, settings, now_us, events };
    for (position, member) in members.iter().enumerate() {
        let health = &member.slot.health;
        if health.due.fetch_and(!DUE_STREAK, AcqRel) & DUE_STREAK == 0 || ejected(health, now_us) {
            continue;
        }
        let streak = health.consecutive.load(Acquire);
        if settings.consecutive == 0 || streak < settings.consecutive {
            continue;
        }
        // A member spared keeps its count: it is still failing, which the next member to reach
        // the count must see.
        let detail = Detail::Streak(streak);
        if !ejecting.someone_else_succeeds(position) {
            ejecting.events.push(Event::Spared {
                position,
                why: Why::Consecutive,
                because: Spared::Shared,
                detail,
            });
            continue;
        }
        ejecting.eject(position, Why::Consecutive, detail);
    }
    if settings.success_rate {
        success_rate(balancer, &mut ejecting);
    }
    let ejected_now = members.iter().filter(|m| m.slot.health.ejected_until_us.load(Acquire) != 0).count();
    balancer.ejected.store(ejected_now as u32, Release);
    // Next: the first ejection to end, the end of the success-rate window.
    let mut next = u64::MAX;
    for member in members {
        let until = member.slot.health.ejected_until_us.load(Acquire);
        if until != 0 {
            next = next.min(until);
        }
    }
    if settings.success_rate {
        let window_start = balancer.window_start_us.load(Acquire);
        next = next.min(window_start.saturating_add(settings.interval.as_micros() as u64));
    }
    balancer.review_at_us.store(next, Release);
    // Released only if still this review's: after CLAIM_US another process may hold it.
    let _ = balancer.review_held_until_us.compare_exchange(claim.claimed, 0, AcqRel, Relaxed);
}

/// A review's ejections: the members, and the limits every ejection checks.
struct Ejecting<'a, 'm> {
    members: &'a [Reviewed<'m>],
    settings: &'a Outliers,
    now_us: u64,
    events: &'a mut Vec<Event>,
}

impl Ejecting<'_, '_> {
    fn available(&self, member: &Reviewed<'_>) -> bool {
        member.usable && !ejected(&member.slot.health, self.now_us)
    }

    /// Another member, usable and not ejected, whose last attempt succeeded and which has
    /// succeeded since member `position` last did.
    fn someone_else_succeeds(&self, position: usize) -> bool {
        let last = self.members[position].slot.health.succeeded_us.load(Acquire);
        self.members.iter().enumerate().any(|(other, member)| {
            let health = &member.slot.health;
            other != position
                && self.available(member)
                && health.consecutive.load(Acquire) == 0
                && health.succeeded_us.load(Acquire) > last
        })
    }

    /// Ejects member `position`, within the limits.
    fn eject(&mut self, position: usize, why: Why, detail: Detail) {
        let member = &self.members[position];
        if !member.usable {
            // httpd has it out already (in error, disabled, draining): nothing to add, and an
            // ejection would take a place under max-ejected from a member that fails in service.
            return;
        }
        let ejected_now =
            self.members.iter().filter(|m| m.usable && ejected(&m.slot.health, self.now_us)).count();
        let most = (self.members.len() * self.settings.max_ejected_percent as usize / 100).max(1);
        let because = if ejected_now >= most {
            Some(Spared::Cap)
        } else if !self
            .members
            .iter()
            .enumerate()
            .any(|(other, m)| other != position && m.tier == member.tier && self.available(m))
        {
            Some(Spared::LastOfTier)
        } else {
            None
        };
        if let Some(because) = because {
            self.events.push(Event::Spared { position, why, because, detail });
            return;
        }
        let health = &member.slot.health;
        let length = ejection_length(health, self.settings, self.now_us);
        // It comes back with a clean slate: `consecutive` new failures eject it again, and its
        // success rate is judged on what it does after its return, not on the failures that
        // ejected it.
        health.consecutive.store(0, Relaxed);
        health.window_attempts.store(0, Relaxed);
        health.window_failures.store(0, Relaxed);
        health.reason.store(why.code(), Relaxed);
        health.ejected_until_us.store(self.now_us + length.as_micros() as u64, Release);
        let ejections = health.ejections.fetch_add(1, Relaxed) + 1;
        self.events.push(Event::Ejected { position, why, length, ejections, detail });
    }
}

/// How long an ejection at `now_us` lasts: `eject` doubled once per level, the level first
/// losing one for every `eject` of health since the last return; the level then rises by one.
fn ejection_length(health: &Health, settings: &Outliers, now_us: u64) -> Duration {
    let base = settings.eject.as_micros().max(1) as u64;
    let healthy_for = now_us.saturating_sub(health.returned_us.load(Acquire));
    let decayed = (healthy_for / base).min(u64::from(u32::MAX)) as u32;
    // The level stops where the length reaches max-eject, so that health brings it down from
    // there at once, not after paying off levels beyond it.
    let top = (0..31).find(|&l| base.saturating_mul(1u64 << l) >= settings.max_eject.as_micros() as u64);
    let level = health.level.load(Acquire).saturating_sub(decayed).min(top.unwrap_or(30));
    health.level.store(level + 1, Release);
    let length = Duration::from_micros(base.saturating_mul(1u64 << level));
    length.min(settings.max_eject)
}

/// The success-rate evaluation, when its window is over: every member's window is read and
/// emptied, whatever the outcome.
fn success_rate(balancer: &BalancerEvents, ejecting: &mut Ejecting<'_, '_>) {
    let settings = ejecting.settings;
    let now = ejecting.now_us;
    let start = balancer.window_start_us.load(Acquire);
    let over = start != 0 && now.saturating_sub(start) >= settings.interval.as_micros() as u64;
    if start != 0 && !over {
        return;
    }
    balancer.window_start_us.store(now, Release);
    let windows: Vec<(u64, u64)> = ejecting
        .members
        .iter()
        .map(|m| {
            (m.slot.health.window_attempts.swap(0, AcqRel), m.slot.health.window_failures.swap(0, AcqRel))
        })
        .collect();
    if !over {
        return; // The first window begins.
    }
    let rated: Vec<Rated> = windows
        .iter()
        .enumerate()
        .filter(|(position, (attempts, _))| {
            *attempts >= settings.min_requests && ejecting.available(&ejecting.members[*position])
        })
        .map(|(position, &(attempts, failures))| Rated {
            position,
            attempts,
            failures: failures.min(attempts),
        })
        .collect();
    let found = outliers_by_rate(&rated, settings);
    for (position, member) in ejecting.members.iter().enumerate() {
        let outlier = found.iter().find(|o| o.0 == position);
        let health = &member.slot.health;
        // Ejected only when it stands out in two evaluations in a row: chance makes one member
        // of many look bad in one window now and then, rarely in two.
        let before = if outlier.is_some() {
            health.due.fetch_or(DUE_RATE, AcqRel)
        } else {
            health.due.fetch_and(!DUE_RATE, AcqRel)
        };
        if let Some(&(_, rate, threshold, mean)) = outlier
            && before & DUE_RATE != 0
        {
            health.due.fetch_and(!DUE_RATE, AcqRel);
            let detail = Detail::Rate { rate, threshold, mean, members: rated.len() };
            ejecting.eject(position, Why::SuccessRate, detail);
        }
    }
}

/// A member's window, as the success-rate evaluation reads it.
#[derive(Clone, Copy, Debug)]
struct Rated {
    position: usize,
    attempts: u64,
    failures: u64,
}

impl Rated {
    fn rate(self) -> f64 {
        1.0 - self.failures as f64 / self.attempts.max(1) as f64
    }
}

/// The members (position, rate, threshold, mean) that stand out, when at least `min-members`
/// are rated: a success rate below `mean - stdev x k` (Envoy's rule), a failure share more
/// than twice the mean's, and more failures than chance explains if every member failed at the
/// balancer's pooled rate (more than 3.5 binomial standard deviations, and at least 5, above
/// the expected count). The last two keep a failure every member shares from picking out
/// the member the noise hit hardest.
fn outliers_by_rate(rated: &[Rated], settings: &Outliers) -> Vec<(usize, f64, f64, f64)> {
    if rated.is_empty() || rated.len() < settings.min_members as usize {
        return Vec::new();
    }
    let n = rated.len() as f64;
    let mean = rated.iter().map(|r| r.rate()).sum::<f64>() / n;
    let variance = rated.iter().map(|r| (r.rate() - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - settings.stdev * variance.sqrt();
    let attempts: u64 = rated.iter().map(|r| r.attempts).sum();
    let pooled = rated.iter().map(|r| r.failures).sum::<u64>() as f64 / attempts.max(1) as f64;
    rated
        .iter()
        .filter(|r| {
            let expected = r.attempts as f64 * pooled;
            let spread = (r.attempts as f64 * pooled * (1.0 - pooled)).sqrt();
            r.rate() < threshold
                && (1.0 - r.rate()) > 2.0 * (1.0 - mean)
                && r.failures as f64 - expected > (3.5 * spread).max(5.0)
        })
        .map(|r| (r.position, r.rate(), threshold, mean))
        .collect()
}

/// A length as the log says it: whole seconds, or milliseconds under 10 s.
pub fn seconds(length: Duration) -> String {
    if length < Duration::from_secs(10) && length.subsec_millis() != 0 {
        format!("{} ms", length.as_millis())
    } else {
        format!("{} s", length.as_secs())
    }
}

/// What made a member a candidate for ejection, in words.
pub fn describe(why: Why, detail: Detail) -> String {
    match (why, detail) {
        (_, Detail::Streak(n)) => format!("{n} failures in a row"),
        (_, Detail::Rate { rate, threshold, mean, members }) => format!(
            "success rate {:.2}% over the last interval, under {:.2}% (the mean {:.2}% of {members} members less the stdev factor)",
            rate * 100.0,
            threshold * 100.0,
            mean * 100.0
        ),
    }
}

impl Spared {
    pub fn reason(self) -> &'static str {
        match self {
            Spared::Shared => "no other member is succeeding, so the failure is not this member's alone",
            Spared::Cap => "max-ejected members are ejected already",
            Spared::LastOfTier => "it is the last usable member of its tier",
        }
    }
}

/// What the status page shows of a member's record.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct State {
    /// Ejected now: why, and for how much longer.
    pub ejected: Option<(Why, Duration)>,
    pub ejections: u64,
    /// Failures in a row now.
    pub consecutive: u32,
}

/// The member's record at `now_us`.
pub fn state(health: &Health, now_us: u64) -> State {
    let until = health.ejected_until_us.load(Acquire);
    let ejected = (until != 0 && now_us < until).then(|| {
        let why = Why::from_code(health.reason.load(Relaxed)).unwrap_or(Why::Consecutive);
        (why, Duration::from_micros(until - now_us))
    });
    State {
        ejected,
        ejections: health.ejections.load(Relaxed),
        consecutive: health.consecutive.load(Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::testing::balancer;
    use crate::shm::Segment;

    fn on() -> Outliers {
        Outliers { enabled: true, ..Outliers::default() }
    }

    fn reviewed(segment: &Segment, n: usize) -> Vec<Reviewed<'_>> {
        (0..n)
            .map(|i| Reviewed { slot: segment.member(i).unwrap(), tier: Tier::default(), usable: true })
            .collect()
    }

    /// One review now, its events.
    fn review_now(
        segment: &Segment,
        slot: usize,
        members: &[Reviewed<'_>],
        settings: &Outliers,
        now: u64,
    ) -> Vec<Event> {
        let events_slot = &segment.balancer(slot).unwrap().events;
        let mut events = Vec::new();
        if let Some(claim) = claim_review(events_slot, now) {
            review(claim, events_slot, members, settings, now, &mut events);
        }
        events
    }

    #[test]
    fn five_failures_in_a_row_eject_for_ten_seconds_then_the_member_returns() {
        let (segment, slot) = balancer(4);
        let members = reviewed(&segment, 4);
        let settings = on();
        let events = &segment.balancer(slot).unwrap().events;
        let mut now = 1_000_000;
        for m in &members[1..] {
            note(&m.slot.health, false, &settings, now);
        }
        for i in 0..5 {
            now += 10;
            let due = note(&members[0].slot.health, true, &settings, now);
            assert_eq!(due, i == 4, "the fifth asks for a review");
        }
        want_review(events);
        let done = review_now(&segment, slot, &members, &settings, now);
        assert!(
            matches!(done[..], [Event::Ejected { position: 0, why: Why::Consecutive, ejections: 1, .. }]),
            "{done:?}"
        );
        assert!(ejected(&members[0].slot.health, now + 9_999_999));
        assert!(!ejected(&members[0].slot.health, now + 10_000_000), "back when its time is up");
        assert!(any_ejected(events));
        assert_eq!(
            state(&members[0].slot.health, now).ejected,
            Some((Why::Consecutive, Duration::from_secs(10)))
        );
        // The next review is due when the ejection ends, and logs the return.
        assert!(claim_review(events, now + 9_000_000).is_none());
        let done = review_now(&segment, slot, &members, &settings, now + 10_000_000);
        assert!(matches!(done[..], [Event::Returned { position: 0, .. }]), "{done:?}");
        assert!(!any_ejected(events));
    }

    #[test]
    fn repeated_ejections_grow_and_health_shrinks_them() {
        let (segment, _) = balancer(1);
        let health = &segment.member(0).unwrap().health;
        let settings = Outliers { max_eject: Duration::from_secs(60), ..on() };
        let mut now = 1_000_000u64;
        let mut lengths = Vec::new();
        for _ in 0..5 {
            let length = ejection_length(health, &settings, now);
            lengths.push(length.as_secs());
            now += length.as_micros() as u64;
            health.returned_us.store(now, Relaxed);
            now += 1_000_000; // fails again a second after its return
        }
        assert_eq!(lengths, vec![10, 20, 40, 60, 60], "doubling up to max-eject");
        // Healthy for 31 s since its return: three doublings off the top (the level stopped
        // where the length reached max-eject): 10 s doubled once.
        let length = ejection_length(health, &settings, now + 30_000_000);
        assert_eq!(length.as_secs(), 20, "10 s doubled once");
    }

    #[test]
    fn a_failure_every_member_shares_ejects_nobody() {
        let (segment, slot) = balancer(4);
        let members = reviewed(&segment, 4);
        let settings = on();
        let mut now = 1_000_000;
        // Everyone succeeded (the first member last), then only the bad URL comes: every
        // member fails in turn.
        for m in members.iter().rev() {
            now += 10;
            note(&m.slot.health, false, &settings, now);
        }
        let mut events = Vec::new();
        for _ in 0..10 {
            for m in &members {
                now += 10;
                if note(&m.slot.health, true, &settings, now) {
                    want_review(&segment.balancer(slot).unwrap().events);
                    events.extend(review_now(&segment, slot, &members, &settings, now));
                }
            }
        }
        assert!(!events.is_empty());
        assert!(
            events.iter().all(|e| matches!(e, Event::Spared { because: Spared::Shared, .. })),
            "{events:?}"
        );
        assert!(members.iter().all(|m| !ejected(&m.slot.health, now)));
    }

    #[test]
    fn at_most_max_ejected_and_never_the_last_of_a_tier() {
        let (segment, slot) = balancer(6);
        let mut members = reviewed(&segment, 6);
        // Members 4 and 5 are a second tier.
        for m in &mut members[4..] {
            m.tier = Tier { lbset: 1, standby: false };
        }
        let settings = Outliers { max_ejected_percent: 50, ..on() };
        let mut now = 1_000_000;
        let fail = |m: &Reviewed<'_>, now: &mut u64| {
            for _ in 0..5 {
                *now += 10;
                note(&m.slot.health, true, &settings, *now);
            }
        };
        let succeed = |m: &Reviewed<'_>, now: &mut u64| {
            *now += 2_000;
            note(&m.slot.health, false, &settings, *now);
        };
        let mut events = Vec::new();
        for failing in [0, 1, 2, 4] {
            for (i, m) in members.iter().enumerate() {
                if i != failing {
                    succeed(m, &mut now);
                }
            }
            fail(&members[failing], &mut now);
            want_review(&segment.balancer(slot).unwrap().events);
            events.extend(review_now(&segment, slot, &members, &settings, now));
        }
        let ejected_positions: Vec<usize> =
            (0..6).filter(|&i| ejected(&members[i].slot.health, now)).collect();
        assert_eq!(ejected_positions, vec![0, 1, 2], "{events:?}: 50% of 6");
        assert!(events.iter().any(|e| matches!(e, Event::Spared { position: 4, because: Spared::Cap, .. })));
        // With room under the cap, the tier rule: 5 is the last of its tier once 4 is out.
        let (segment, slot) = balancer(3);
        let mut members = reviewed(&segment, 3);
        members[1].tier = Tier { lbset: 1, standby: false };
        members[2].tier = Tier { lbset: 1, standby: false };
        members[2].usable = false;
        let settings = Outliers { max_ejected_percent: 100, ..on() };
        let mut now = 1_000_000;
        succeed(&members[0], &mut now);
        fail(&members[1], &mut now);
        want_review(&segment.balancer(slot).unwrap().events);
        let events = review_now(&segment, slot, &members, &settings, now);
        assert!(
            matches!(events[..], [Event::Spared { position: 1, because: Spared::LastOfTier, .. }]),
            "{events:?}"
        );
    }

    #[test]
    fn success_rate_ejects_the_member_that_stands_out_and_not_the_noise() {
        let settings = on();
        let rated = |failures: &[u64], attempts: u64| -> Vec<Rated> {
            failures
                .iter()
                .enumerate()
                .map(|(position, &f)| Rated { position, attempts, failures: f })
                .collect()
        };
        // One member failing half its requests among five healthy ones.
        let found = outliers_by_rate(&rated(&[1, 2, 500, 0, 1, 3], 1000), &settings);
        assert_eq!(found.iter().map(|f| f.0).collect::<Vec<_>>(), vec![2]);
        // A shared 1% failure with noise: nobody, however many members.
        let noisy: Vec<u64> = (0..40).map(|i| if i == 7 { 14 } else { 10 + i % 3 }).collect();
        assert!(outliers_by_rate(&rated(&noisy, 1000), &settings).is_empty());
        // Fewer than min-members rated: nobody.
        assert!(outliers_by_rate(&rated(&[0, 0, 1000, 0], 1000), &settings).is_empty());
    }

    /// A shared 1% failure drawn at random, 100 to 500 requests per member and window, 5 to 20
    /// members: over thousands of windows, no member is an outlier in two windows in a row.
    #[test]
    fn a_shared_failure_drawn_at_random_ejects_nobody_by_success_rate() {
        let settings = on();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (members, attempts) in [(5, 100), (10, 200), (20, 100), (20, 500)] {
            let mut last = vec![false; members];
            let (mut once, mut twice) = (0, 0);
            for _ in 0..2000 {
                let window: Vec<Rated> = (0..members)
                    .map(|position| Rated {
                        position,
                        attempts,
                        failures: (0..attempts).filter(|_| random() % 100 == 0).count() as u64,
                    })
                    .collect();
                let found = outliers_by_rate(&window, &settings);
                for (position, was) in last.iter_mut().enumerate() {
                    let now = found.iter().any(|f| f.0 == position);
                    once += usize::from(now);
                    twice += usize::from(now && *was);
                    *was = now;
                }
            }
            assert_eq!(twice, 0, "{members} members x {attempts}: {once} single windows, {twice} in a row");
        }
    }

    #[test]
    fn success_rate_runs_once_per_interval_over_every_members_window() {
        let (segment, slot) = balancer(5);
        let members = reviewed(&segment, 5);
        let settings = on();
        let start = 1_000_000;
        assert!(review_now(&segment, slot, &members, &settings, start).is_empty(), "the first window begins");
        for window in 1..=2u64 {
            let mut now = start + (window - 1) * 10_000_000;
            for round in 0..200u64 {
                for (i, m) in members.iter().enumerate() {
                    now += 10;
                    // Member 3 fails one in four, never five in a row.
                    note(&m.slot.health, i == 3 && round % 4 == 0, &settings, now);
                }
            }
            assert!(
                review_now(&segment, slot, &members, &settings, now).is_empty(),
                "not before the interval"
            );
            let events = review_now(&segment, slot, &members, &settings, start + window * 10_000_000);
            assert_eq!(members[0].slot.health.window_attempts.load(Relaxed), 0, "windows emptied");
            if window == 1 {
                assert!(events.is_empty(), "one window alone ejects nobody: {events:?}");
            } else {
                assert!(
                    matches!(events[..], [Event::Ejected { position: 3, why: Why::SuccessRate, .. }]),
                    "{events:?}"
                );
            }
        }
    }

    #[test]
    fn a_claim_that_was_never_finished_expires() {
        let (segment, slot) = balancer(1);
        let events = &segment.balancer(slot).unwrap().events;
        let claim = claim_review(events, 5).unwrap();
        assert!(claim_review(events, 6).is_none(), "held");
        let _abandoned = claim; // its process died before finishing
        assert!(claim_review(events, 5 + CLAIM_US).is_some(), "taken again a second later");
    }
}
