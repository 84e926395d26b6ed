//! `bylatency`: least in flight among the members that answer about as fast as the fastest;
//! a member much slower than that, or failing, or keeping requests waiting without answering,
//! is avoided in proportion to how much slower it is, and probed once a second so that its
//! recovery is seen at once.
//!
//! **The estimate.** Each member has a latency estimate shared by every process (kept in its
//! member slot, updated by [`record`] as each attempt ends, from the pick to the response's
//! first byte): Finagle's peak EWMA, with the peak confirmed. Two samples in a row above twice
//! the estimate raise it at once to the lower of them (a member that turns slow is avoided from
//! its second slow answer, which under load comes right after the first); a single sample above
//! twice the estimate counts as twice the estimate (a scheduling hiccup, or the first answer
//! after a long idle time, does not make a member look slow, and the ordinary spread of answers
//! does not make the estimates of equal members drift apart); any other sample moves it as an
//! exponentially weighted moving average over an uneven time series, `w = exp(-dt / decay)`,
//! `estimate = sample * (1 - w) + estimate * w`, `decay` being `LBLatencyDecay` (250 ms by
//! default). A member's second sample replaces its first if lower, and a member ranks on its
//! estimate only from its second sample (one answer slowed by a cold connection sets no member
//! apart).
//!
//! **Failures are not fast answers.** An attempt that failed, as the balancer's failures are
//! defined (`LBOutlierDetection failures=`; by default gateway failures and the member's own
//! 5xx answers, whether or not outlier detection is on), counts as four times the estimate,
//! or as the ceiling when there is none yet: a member that answers errors fast climbs out of
//! the band from its second failure in a row and never ranks fastest. No estimate ever exceeds
//! [`CEILING_US`] (60 s) or is anything but a finite positive number: whatever is read that is
//! not (a segment from an older build, a value carried over a restart) counts as no sample.
//!
//! **Stalls are slowness before the answers come.** A member that has requests waiting and has
//! answered none of them for a while ranks on that while instead of its estimate, when it is
//! longer (`shm::attempt::unanswered_for`): a member that hangs is avoided three times the
//! fastest latency after its last answer, long before its slow answers (or timeouts) reach the
//! estimate. Only requests waiting for their first byte count: a member streaming a long answer
//! or holding a WebSocket has answered.
//!
//! **The rule.** Among the candidates, the fastest estimate `best` sets the scale. A member
//! within [`BAND`] (3) times `best`, or without an estimate yet, ranks as `byinflight` does, on
//! `(inflight + 1) / weight`; a slower member ranks on that times `latency / best`. The least
//! rank wins; equal ranks take turns from a shared rotating start, as in `byinflight`. So:
//!
//! ```text
//!     four members, one turns 16x slower:   the three others take everything, as long as
//!                                           (inflight + 1) on them stays below 16 times the
//!                                           slow member's (inflight + 1);
//!     it recovers:                          its next probe answers fast, its estimate drops
//!                                           to that answer (a second since its last sample
//!                                           is four decay times), and it is back in the band
//! ```
//!
//! **Probes.** Each member outside the band gets one request in 200 picks of its balancer (0.5%
//! of the requests), or one a second when there are fewer (one process wins each probe,
//! through an atomic claim in the member's slot; each avoided member has its own budget); while
//! requests wait on it for an answer, one a second only: a probe into a stall may wait too, but
//! what waits may never answer (a long upload, a long poll), and a member never probed would
//! stay avoided for good.
//! A probe's answer replaces the member's estimate (it is the only recent evidence; one that
//! fails counts as a failure): a member that recovered, from slowness, from errors (httpd's retry
//! timer, a health check, balancer-manager), or from answering 503, is back in the band with its
//! next probe, tens of milliseconds after recovering at thousands of requests a second, a second
//! at most; one that is still slow stays out, and two slow answers in a row push a member that
//! only answered one probe fast back out. A member that is still slow costs 0.5% of the
//! requests (one a second, when traffic is light); one that hangs, one request per hang.
//!
//! **The pick's cost.** Each process reads its balancer's estimates and stalls from the shared
//! segment into a [`View`] at most once a millisecond; a pick then looks each candidate up in
//! it, finds the fastest, and compares ranks by cross multiplication: no shared memory read and
//! no division per candidate.
//!
//! **Why not power of two choices.** P2C (Finagle's, Linkerd's, Envoy's) exists because a
//! balancer usually sees stale or partial load: two random draws avoid herding on one stale
//! minimum. Here every process reads exact shared in-flight counts, and a scan of every
//! candidate costs little (docs/benchmark.md). Measured against P2C on peak EWMA (the previous
//! version of this method), with equal members it spread 64 clients over 10 members as evenly
//! as `byinflight` where P2C's busiest member got 1.39 times its idlest one's requests, and a
//! member that recovered got its share back within about a second where P2C took over 10
//! seconds (docs/benchmark.md, `recover`, `down`, `steady`).
//!
//! Tests check the EWMA rules, the ceiling and the handling of non-finite values, that members
//! in the band share as `byinflight` does, that one slow answer sets no member apart, that a
//! slow member is avoided but probed once a second, that a stalled one is avoided before it
//! answers and not probed into its stall, and that a probe that answers fast brings it back.

use super::{Candidate, Choice, Method, Pick, Reason, Scored};
use crate::shm::{BalancerSlot, MemberSlot, Segment, attempt};
use std::sync::atomic::Ordering;

/// A member this many times slower than the fastest is ranked on its slowness.
pub const BAND: f64 = 3.0;
/// A member outside the band is probed once in this many picks of its balancer (0.5% of the
/// requests each), and at least once a second when there are fewer.
pub const PROBE_EVERY_PICKS: u64 = 200;
pub const PROBE_INTERVAL_US: u64 = 1_000_000;
/// The highest estimate (60 s): a failing member's estimate climbs to it and no further.
pub const CEILING_US: f64 = 60_000_000.0;
/// A failed attempt counts as this many times the estimate.
const FAILURE_PENALTY: f64 = 4.0;
/// Two samples in a row above this many times the estimate raise it at once.
const PEAK: f64 = 2.0;

/// The method.
pub struct ByLatency;

impl Method for ByLatency {
    fn choose(&self, pick: &mut Pick<'_>) -> Option<Choice> {
        let mut view = std::mem::take(&mut pick.local.latency);
        view.read(pick.shared, pick.segment, pick.now_us);
        let choice = choose_among(pick, &mut view);
        pick.local.latency = view;
        choice
    }

    /// The rank the method picks on, with the loadfactor as configured: `(inflight + 1) /
    /// loadfactor`, times `latency / fastest` for a member outside the band.
    fn scores(&self, members: &[Scored]) -> Vec<Option<f64>> {
        let best = members.iter().filter_map(|m| m.latency_us).fold(f64::INFINITY, f64::min);
        members
            .iter()
            .map(|m| {
                let load = (m.inflight + 1) as f64 / (f64::from(m.weight.max(1)) / 100.0);
                Some(load * slowness(m.latency_us, best))
            })
            .collect()
    }
}

/// How long a process's [`View`] of a balancer's members serves before it is read again.
pub const VIEW_EVERY_US: u64 = 1_000;

/// This process's view of a balancer's members, by worker index, read from the shared segment
/// at most once per [`VIEW_EVERY_US`]: a pick then costs a look-up per candidate instead of
/// reading every member's shared slot (which other processes keep writing). A millisecond old
/// is recent enough for estimates that move over hundreds of milliseconds and stalls seen
/// after three times the fastest latency.
#[derive(Default)]
pub struct View {
    read_us: Option<u64>,
    /// Each member's estimate in microseconds (0: none, or not yet confirmed by a second
    /// sample), and what it is ranked on: its estimate, or how long it has kept requests
    /// waiting without answering any, whichever is longer (a stall is slowness before the
    /// answers come).
    members: Vec<Seen>,
    /// Each member's last probe (when, and the balancer's pick number then) and whether
    /// requests wait on it, for the look for a member due for a probe.
    probes: Vec<Probed>,
    /// The fastest estimate of all the members (infinite when none has one), and that member's
    /// worker index: the fastest candidate's, when that member is a candidate.
    fastest: f64,
    fastest_index: u32,
    /// Each member's slowness against `fastest`, what picks multiply its load by when the
    /// fastest member is a candidate.
    slowness: Vec<f64>,
}

#[derive(Clone, Copy, Default)]
struct Probed {
    at_us: u64,
    pick: u64,
    waiting: bool,
}

#[derive(Clone, Copy, Default)]
struct Seen {
    estimate: f64,
    ranked: f64,
}

impl View {
    /// Reads the balancer's members again if the view is older than [`VIEW_EVERY_US`].
    fn read(&mut self, shared: &BalancerSlot, segment: &Segment, now_us: u64) {
        let slots = shared.member_slots.load(Ordering::Relaxed) as usize;
        let fresh = self.read_us.is_some_and(|at| now_us.abs_diff(at) < VIEW_EVERY_US);
        if fresh && self.members.len() == slots {
            return;
        }
        self.members.clear();
        self.probes.clear();
        self.fastest = f64::INFINITY;
        for worker_index in 0..slots {
            let (seen, probed) = match segment.member_of(shared, worker_index) {
                Some(member) => {
                    let estimate = ranking_estimate(member).unwrap_or(0.0);
                    let stalled = attempt::unanswered_for(member, now_us) as f64;
                    let probed = Probed {
                        at_us: member.latency.probe_us.load(Ordering::Relaxed),
                        pick: member.latency.probe_pick.load(Ordering::Relaxed),
                        waiting: member.load.waiting.load(Ordering::Relaxed) != 0,
                    };
                    (Seen { estimate, ranked: estimate.max(stalled) }, probed)
                }
                None => Default::default(),
            };
            if seen.estimate > 0.0 && seen.estimate < self.fastest {
                self.fastest = seen.estimate;
                self.fastest_index = worker_index as u32;
            }
            self.members.push(seen);
            self.probes.push(probed);
        }
        let (band, fastest) = (BAND * self.fastest, self.fastest);
        self.slowness.clear();
        self.slowness.extend(self.members.iter().map(|seen| slowness_against(seen.ranked, band, fastest)));
        self.read_us = Some(now_us);
    }

    /// The fastest candidate's estimate (infinite when none has one).
    fn fastest_of(&self, candidates: &[Candidate]) -> f64 {
        let fastest_is_candidate = self.fastest.is_finite()
            && candidates.binary_search_by_key(&self.fastest_index, |c| c.worker_index).is_ok();
        if fastest_is_candidate || !self.fastest.is_finite() {
            return self.fastest;
        }
        candidates.iter().filter_map(|c| self.estimate_of(c)).fold(f64::INFINITY, f64::min)
    }

    fn seen(&self, candidate: &Candidate) -> Seen {
        self.members.get(candidate.worker_index as usize).copied().unwrap_or_default()
    }

    fn estimate_of(&self, candidate: &Candidate) -> Option<f64> {
        Some(self.seen(candidate).estimate).filter(|&e| e > 0.0)
    }

    fn ranked_of(&self, candidate: &Candidate) -> f64 {
        self.seen(candidate).ranked
    }
}

/// The pick, given the view of the members.
fn choose_among(pick: &mut Pick<'_>, view: &mut View) -> Option<Choice> {
    let pick_number = pick.shared.turns.rotation.fetch_add(1, Ordering::Relaxed);
    let start = pick_number as usize;
    // The fastest candidate's estimate sets the scale (stalls never lower it).
    let best = view.fastest_of(pick.candidates());
    let chosen = |pick: &Pick<'_>, view: &View, position: usize, probe: bool| {
        let candidate = &pick.candidates()[position];
        let rank = rank(candidate, view.ranked_of(candidate), best);
        let latency_us = view.estimate_of(candidate);
        Choice { position, reason: Reason::Latency { rank, latency_us, probe } }
    };
    for _ in 0..pick.candidates().len() {
        // A member outside the band that is due for a probe gets this request.
        if let Some(position) = due_probe(pick, pick_number, best, view)
            && pick.reserve(position)
        {
            return Some(chosen(pick, view, position, true));
        }
        let position = least_rank(pick.candidates(), view, best, start)?;
        if pick.reserve(position) {
            return Some(chosen(pick, view, position, false));
        }
    }
    None
}

/// The position of the non-full candidate of least rank, the fastest estimate `best` setting
/// the scale, scanning from `start` (modulo the number of candidates) to the end, then from the
/// beginning; ties keep the first seen, so that equal members take turns as the shared start
/// rotates. Ranks are compared by cross multiplication (`a / wa < b / wb` as `a x wb < b x
/// wa`): no division per candidate.
fn least_rank(candidates: &[Candidate], view: &View, best: f64, start: usize) -> Option<usize> {
    let mut least = Least { chosen: None, load: f64::INFINITY, weight: 1.0 };
    let start = start % candidates.len().max(1);
    let (before, after) = candidates.split_at(start);
    // Every member a candidate, the fastest among them (the common case): member `i` is
    // candidate `i`, and its slowness is the view's, read side by side.
    let all = candidates.len() == view.slowness.len()
        && candidates.first().is_none_or(|c| c.worker_index == 0)
        && candidates.last().is_none_or(|c| c.worker_index as usize == candidates.len() - 1);
    if all && best == view.fastest {
        let (slowness_before, slowness_after) = view.slowness.split_at(start);
        least.scan(start, after.iter().zip(slowness_after.iter().copied()));
        least.scan(0, before.iter().zip(slowness_before.iter().copied()));
    } else {
        let band = BAND * best;
        let slowness = |c: &Candidate| slowness_against(view.ranked_of(c), band, best);
        least.scan(start, after.iter().map(|c| (c, slowness(c))));
        least.scan(0, before.iter().map(|c| (c, slowness(c))));
    }
    least.chosen
}

/// The slowness of a member ranked on `ranked` microseconds, the fastest being `best` and the
/// band reaching `band` (3 x `best`): 1 within the band, `ranked / best` beyond.
fn slowness_against(ranked: f64, band: f64, best: f64) -> f64 {
    if ranked > band { ranked / best } else { 1.0 }
}

/// The least rank found so far.
struct Least {
    chosen: Option<usize>,
    /// The chosen candidate's `(inflight + 1) x slowness`, and its weight.
    load: f64,
    weight: f64,
}

impl Least {
    /// Looks at candidates from position `offset` on, each with its slowness.
    fn scan<'a>(&mut self, offset: usize, candidates: impl Iterator<Item = (&'a Candidate, f64)>) {
        for (i, (candidate, slowness)) in candidates.enumerate() {
            if candidate.full {
                continue;
            }
            let load = (f64::from(candidate.inflight) + 1.0) * slowness;
            let weight = f64::from(candidate.weight.max(1));
            if self.chosen.is_none() || load * self.weight < self.load * weight {
                self.chosen = Some(offset + i);
                (self.load, self.weight) = (load, weight);
            }
        }
    }
}

/// How much a member's rank is multiplied for being slow: 1 within the band (or without a
/// sample), else its latency over the fastest's.
fn slowness(latency_us: Option<f64>, best_us: f64) -> f64 {
    match latency_us {
        Some(latency) if best_us.is_finite() && latency > BAND * best_us => latency / best_us,
        _ => 1.0,
    }
}

/// A candidate's rank: `(inflight + 1) / weight`, times its [`slowness`] (`latency_us`: what it
/// is ranked on, 0 for nothing known).
fn rank(candidate: &Candidate, latency_us: f64, best_us: f64) -> f64 {
    let latency = Some(latency_us).filter(|&l| l > 0.0);
    (f64::from(candidate.inflight) + 1.0) / f64::from(candidate.weight.max(1)) * slowness(latency, best_us)
}

/// Picks of a balancer between two looks for members due for a probe, and the longest time
/// between two looks when there are fewer picks: a member due for a probe gets it at most that
/// much late, and a pick that does not look costs nothing.
const PROBE_LOOK_EVERY_PICKS: u64 = 16;
const PROBE_LOOK_EVERY_US: u64 = 100_000;

/// A candidate outside the band that is due for a probe (its last one was
/// [`PROBE_EVERY_PICKS`] picks of the balancer or [`PROBE_INTERVAL_US`] ago; only the second
/// while it keeps requests waiting for an answer, as a probe into a stall may wait too), the
/// one probed longest ago, claimed for this pick: one process wins each probe of a
/// member (an atomic claim in its slot), and each avoided member has its own budget. Looks
/// only once in [`PROBE_LOOK_EVERY_PICKS`] picks or [`PROBE_LOOK_EVERY_US`], and then costs
/// nothing per member in the band.
fn due_probe(pick: &Pick<'_>, pick_number: u64, best: f64, view: &mut View) -> Option<usize> {
    let now = pick.now_us;
    let looked = &pick.shared.turns.probe_look_us;
    let last_look = looked.load(Ordering::Relaxed);
    let time_to_look = now.saturating_sub(last_look) >= PROBE_LOOK_EVERY_US
        && looked.compare_exchange(last_look, now, Ordering::Relaxed, Ordering::Relaxed).is_ok();
    if !pick_number.is_multiple_of(PROBE_LOOK_EVERY_PICKS) && !time_to_look {
        return None;
    }
    // Found in this process's view; the claim below checks it against the shared slot.
    let (position, probed) = pick
        .candidates()
        .iter()
        .enumerate()
        .filter(|(_, candidate)| {
            !candidate.full && slowness(Some(view.ranked_of(candidate)).filter(|&l| l > 0.0), best) > 1.0
        })
        .filter_map(|(position, candidate)| {
            let probed = *view.probes.get(candidate.worker_index as usize)?;
            // Signed: a pick number taken before another process claimed a later one is not due.
            let picks_since = pick_number.wrapping_sub(probed.pick) as i64;
            let a_second = now.saturating_sub(probed.at_us) >= PROBE_INTERVAL_US;
            // Into a member that keeps requests waiting, once a second only: what waits may
            // never answer (a long upload, a request the member holds on purpose), and without
            // probes a member avoided for it would never answer again either.
            let due = a_second || (!probed.waiting && picks_since >= PROBE_EVERY_PICKS as i64);
            due.then_some((position, probed))
        })
        .min_by_key(|&(_, probed)| probed.at_us)?;
    let candidate = pick.candidates()[position];
    let latency = &pick.segment.member(candidate.member? as usize)?.latency;
    // The claim: whoever moves the member's probe time first probes it. The pick number only
    // ever moves forward. The view learns the outcome either way.
    let claimed = now.max(probed.at_us + 1);
    let claim = latency.probe_us.compare_exchange(probed.at_us, claimed, Ordering::AcqRel, Ordering::Relaxed);
    let seen = view.probes.get_mut(candidate.worker_index as usize)?;
    match claim {
        Ok(_) => {
            latency.probe_pick.fetch_max(pick_number, Ordering::Relaxed);
            *seen = Probed { at_us: claimed, pick: pick_number.max(seen.pick), waiting: true };
            Some(position)
        }
        Err(actual) => {
            seen.at_us = actual;
            seen.pick = latency.probe_pick.load(Ordering::Relaxed);
            None
        }
    }
}

/// Takes one latency sample into the member's peak EWMA, as its attempt ends. The answer to a
/// probe that did not fail replaces the estimate; the second sample a member ever gives
/// replaces it if lower (a first answer slowed by a cold start does not stand).
pub fn record(member: &MemberSlot, sample_us: f64, failed: bool, probe: bool, now_us: u64, decay_us: u64) {
    let sample_us = if sample_us.is_finite() { sample_us.clamp(1.0, CEILING_US) } else { CEILING_US };
    let previous_at = member.latency.at_us.swap(now_us, Ordering::AcqRel);
    let elapsed = now_us.saturating_sub(previous_at);
    let second = member.latency.samples.load(Ordering::Acquire) == 1;
    let mut taken = sample_us;
    let _ = member.latency.bits.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
        let current = sane(bits);
        taken = match (failed, current) {
            (true, Some(current)) => sample_us.max(FAILURE_PENALTY * current).min(CEILING_US),
            // A member that has never answered must not look fast by failing fast: out of the
            // band until a probe it answers replaces the estimate.
            (true, None) => CEILING_US,
            (false, _) => sample_us,
        };
        let previous = sane(member.latency.last_sample_bits.load(Ordering::Acquire));
        let next = match current {
            _ if probe && !failed => taken,
            Some(current) if second && !failed => current.min(taken),
            _ => updated(current, previous, taken, elapsed, decay_us),
        };
        Some(next.clamp(1.0, CEILING_US).to_bits())
    });
    member.latency.last_sample_bits.store(taken.to_bits(), Ordering::Release);
    member.latency.samples.fetch_add(1, Ordering::Relaxed);
}

/// The member's estimate in microseconds; `None` before the first sample.
pub fn estimate(member: &MemberSlot) -> Option<f64> {
    sane(member.latency.bits.load(Ordering::Acquire))
}

/// The estimate the method ranks on: `None` until the member has given two samples (one
/// answer, perhaps slowed by a cold connection, does not set a member apart).
pub fn ranking_estimate(member: &MemberSlot) -> Option<f64> {
    (member.latency.samples.load(Ordering::Acquire) >= 2).then(|| estimate(member)).flatten()
}

/// An estimate read from shared memory: a finite positive number up to the ceiling, or no
/// sample (zero bits, or anything else).
fn sane(bits: u64) -> Option<f64> {
    let value = f64::from_bits(bits);
    (bits != 0 && value.is_finite() && value > 0.0).then(|| value.min(CEILING_US))
}

/// The new estimate after a sample of `sample_us`, `elapsed_us` after the last update, the
/// sample before it being `previous_us`. A sample above [`PEAK`] times the estimate that the
/// one before does not confirm counts as [`PEAK`] times the estimate: one slow answer, even
/// after a long idle time (when the average would take the new sample almost whole), moves
/// the estimate up by twice at most, which keeps the member in the band.
pub fn updated(
    estimate_us: Option<f64>,
    previous_us: Option<f64>,
    sample_us: f64,
    elapsed_us: u64,
    decay_us: u64,
) -> f64 {
    match (estimate_us, previous_us) {
        (None, _) => sample_us,
        // A peak confirmed by the sample before: up at once, to the lower of the two.
        (Some(current), Some(previous)) if sample_us > PEAK * current && previous > PEAK * current => {
            sample_us.min(previous)
        }
        (Some(current), _) => {
            let sample_us = sample_us.min(PEAK * current);
            let weight = (-(elapsed_us as f64) / decay_us.max(1) as f64).exp();
            sample_us * (1.0 - weight) + current * weight
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BalancerSettings;
    use crate::methods::testing::{Counts, Local, balancer, candidates};
    use crate::shm::Segment;

    const DECAY: u64 = 250_000;

    #[test]
    fn two_samples_in_a_row_above_twice_the_estimate_raise_it_at_once() {
        assert_eq!(updated(Some(5_000.0), Some(60_000.0), 50_000.0, 1, DECAY), 50_000.0);
        assert_eq!(updated(Some(5_000.0), Some(40_000.0), 50_000.0, 1, DECAY), 40_000.0, "to the lower");
        let spread = updated(Some(5_000.0), Some(8_000.0), 9_000.0, 1_000, DECAY);
        assert!(spread < 5_100.0, "{spread}: less than twice the estimate is ordinary spread");
        assert_eq!(updated(None, None, 7_000.0, 0, DECAY), 7_000.0, "the first sample is the estimate");
        // One slow sample after a fast one barely moves it.
        let hiccup = updated(Some(5_000.0), Some(5_000.0), 50_000.0, 1_000, DECAY);
        assert!(hiccup < 5_200.0, "{hiccup}");
    }

    #[test]
    fn a_first_sample_that_failed_is_the_ceiling_not_a_fast_estimate() {
        let (segment, _) = balancer(1);
        let member = segment.member(0).unwrap();
        // A fresh member answers 503 in 0.3 ms: it must not become the fastest.
        record(member, 300.0, true, false, 1, DECAY);
        assert_eq!(estimate(member), Some(CEILING_US));
        // A probe it answers gives it its real estimate.
        record(member, 5_000.0, false, true, 2, DECAY);
        assert_eq!(estimate(member), Some(5_000.0));
    }

    #[test]
    fn a_pick_number_older_than_the_last_probe_is_not_due() {
        let (segment, slot) = balancer(2);
        let all = with_latencies(&segment, slot, &[Some(5_000.0), Some(80_000.0)]);
        let settings = BalancerSettings::default();
        let mut local = Local::default();
        let mut reserve = Counts::default();
        let shared = segment.balancer(slot).unwrap();
        // Another process claimed the probe at pick 1000, a moment after this one took pick 999.
        let slow = &segment.member(all[1].member.unwrap() as usize).unwrap().latency;
        slow.probe_pick.store(1_000, Ordering::Relaxed);
        slow.probe_us.store(5_000_000, Ordering::Relaxed);
        let mut view = View::default();
        view.read(shared, &segment, 5_000_001);
        let pick = local.pick(shared, &settings, &segment, 5_000_001, None, &all, &all, &mut reserve);
        assert_eq!(due_probe(&pick, 999, 5_000.0, &mut view), None);
        // A second later it is due by time: claimed, and its pick number is not moved back.
        let pick = local.pick(shared, &settings, &segment, 6_000_001, None, &all, &all, &mut reserve);
        view.read(shared, &segment, 6_000_001);
        assert_eq!(due_probe(&pick, 999, 5_000.0, &mut view), Some(1));
        assert_eq!(slow.probe_pick.load(Ordering::Relaxed), 1_000, "not moved back");
        assert_eq!(due_probe(&pick, 1_000, 5_000.0, &mut view), None, "claimed once");
    }

    #[test]
    fn every_avoided_member_has_its_own_probe_budget() {
        let (segment, slot) = balancer(4);
        let all =
            with_latencies(&segment, slot, &[Some(5_000.0), Some(80_000.0), Some(80_000.0), Some(80_000.0)]);
        let settings = BalancerSettings::default();
        let mut local = Local::default();
        let shared = segment.balancer(slot).unwrap();
        let mut probed = [0; 4];
        // Two seconds at ten picks a second: each slow member is probed once a second.
        for tenth in 0..20u64 {
            let mut reserve = Counts::default();
            let now = 10_000_000 + tenth * 100_000;
            let mut pick = local.pick(shared, &settings, &segment, now, None, &all, &all, &mut reserve);
            if let Some(Choice { position, reason: Reason::Latency { probe: true, .. } }) =
                ByLatency.choose(&mut pick)
            {
                probed[position] += 1;
            }
        }
        assert_eq!(probed, [0, 2, 2, 2], "each slow member once a second, not one of them");
    }

    #[test]
    fn a_lower_sample_pulls_it_down_by_the_time_since_the_last() {
        let soon = updated(Some(50_000.0), None, 5_000.0, 1_000, DECAY);
        let later = updated(Some(50_000.0), None, 5_000.0, DECAY, DECAY);
        let a_second_later = updated(Some(50_000.0), None, 5_000.0, 1_000_000, DECAY);
        assert!(soon > 49_000.0, "{soon}");
        assert!((later - (5_000.0 * (1.0 - (-1f64).exp()) + 50_000.0 * (-1f64).exp())).abs() < 1e-6);
        assert!(
            a_second_later < 5_000.0 * 1.02 + 50_000.0 * 0.02,
            "{a_second_later}: a probe a second later counts 98%"
        );
    }

    #[test]
    fn estimates_stay_finite_and_bounded_through_thousands_of_failures_and_long_idling() {
        let (segment, _) = balancer(1);
        let member = segment.member(0).unwrap();
        record(member, 5_000.0, false, false, 1, DECAY);
        let mut now = 1;
        for _ in 0..10_000 {
            now += 100;
            record(member, 300.0, true, false, now, DECAY);
            let value = estimate(member).unwrap();
            assert!(value.is_finite() && value <= CEILING_US, "{value}");
        }
        assert_eq!(estimate(member), Some(CEILING_US), "failures climb to the ceiling, no further");
        // A year idle, then a good answer: it is the estimate again.
        now += 365 * 24 * 3600 * 1_000_000;
        record(member, 5_000.0, false, false, now, DECAY);
        assert!((estimate(member).unwrap() - 5_000.0).abs() < 1.0);
        for bad in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
            record(member, bad, false, false, now + 1, DECAY);
            assert!(estimate(member).is_some_and(|v| v.is_finite() && v > 0.0 && v <= CEILING_US));
        }
        // Garbage in the slot (an older build's, a carried-over value) reads as no sample.
        for bits in [f64::NAN.to_bits(), f64::INFINITY.to_bits(), (-3.0f64).to_bits(), 1] {
            member.latency.bits.store(bits, Ordering::Relaxed);
            assert!(estimate(member).is_none_or(|v| v.is_finite() && v > 0.0), "{bits:#x}");
            record(member, 5_000.0, false, false, now + 2, DECAY);
            assert!(estimate(member).is_some_and(f64::is_finite));
        }
    }

    /// Candidates for the members of `segment`'s balancer, with these latencies recorded.
    fn with_latencies(segment: &Segment, slot: usize, latencies: &[Option<f64>]) -> Vec<Candidate> {
        let shared = segment.balancer(slot).unwrap();
        let mut all = candidates(&vec![100; latencies.len()]);
        for (i, latency) in latencies.iter().enumerate() {
            let index = segment.member_index(shared, i).unwrap();
            all[i].member = Some(index as u32);
            if let Some(latency) = latency {
                record(segment.member(index).unwrap(), *latency, false, false, 1, DECAY);
                record(segment.member(index).unwrap(), *latency, false, false, 2, DECAY);
            }
        }
        all
    }

    /// `picks` picks at time `now`, each attempt held (in flight) until the end.
    fn picks(segment: &Segment, slot: usize, all: &[Candidate], count: usize, now: u64) -> Vec<usize> {
        let settings = BalancerSettings::default();
        let mut local = Local::default();
        let mut inflight = vec![0u32; all.len()];
        let mut chosen = vec![0; all.len()];
        for _ in 0..count {
            let current: Vec<Candidate> =
                all.iter().zip(&inflight).map(|(c, &n)| Candidate { inflight: n, ..*c }).collect();
            let shared = segment.balancer(slot).unwrap();
            let mut reserve = Counts::default();
            let mut pick =
                local.pick(shared, &settings, segment, now, None, &current, &current, &mut reserve);
            let position = ByLatency.choose(&mut pick).unwrap().position;
            inflight[position] += 1;
            chosen[position] += 1;
        }
        chosen
    }

    #[test]
    fn members_in_the_band_share_as_byinflight_does() {
        let (segment, slot) = balancer(4);
        let all = with_latencies(&segment, slot, &[Some(5_000.0), Some(9_000.0), Some(14_000.0), None]);
        // All within 3 times the fastest (or without a sample): in flight evens out.
        assert_eq!(picks(&segment, slot, &all, 40, 2), vec![10, 10, 10, 10]);
    }

    #[test]
    fn a_slow_member_is_avoided_but_probed_once_in_200_picks_or_once_a_second() {
        let (segment, slot) = balancer(4);
        let all =
            with_latencies(&segment, slot, &[Some(5_000.0), Some(5_000.0), Some(5_000.0), Some(80_000.0)]);
        // 16 times slower: the first pick probes it (never probed), then nothing for 30
        // requests in flight over the others (it would take 11 each to rank them above it).
        let first = picks(&segment, slot, &all, 31, 2_000_000);
        assert_eq!(first[3], 1, "{first:?}: one probe");
        let same_second = picks(&segment, slot, &all, 30, 2_500_000);
        assert_eq!(same_second[3], 0, "{same_second:?}: no second probe within the second");
        let next_second = picks(&segment, slot, &all, 30, 3_100_000);
        assert_eq!(next_second[3], 1, "{next_second:?}: a probe a second later");
        // At a high rate, once in 200 picks: 400 more picks within the same second, 10 µs apart
        // (nothing held in flight, so only probes reach it), two more.
        let settings = BalancerSettings::default();
        let mut local = Local::default();
        let mut probes = 0;
        for i in 0..400 {
            let mut reserve = Counts::default();
            let shared = segment.balancer(slot).unwrap();
            let now = 3_200_000 + i * 10;
            let mut pick = local.pick(shared, &settings, &segment, now, None, &all, &all, &mut reserve);
            if let Some(Choice { position: 3, reason: Reason::Latency { probe: true, .. } }) =
                ByLatency.choose(&mut pick)
            {
                probes += 1;
            }
        }
        assert_eq!(probes, 2, "a probe every 200 picks");
    }

    #[test]
    fn a_probe_that_answers_fast_brings_the_member_back() {
        let (segment, slot) = balancer(2);
        let all = with_latencies(&segment, slot, &[Some(5_000.0), Some(80_000.0)]);
        let slow = segment.member(all[1].member.unwrap() as usize).unwrap();
        // Its probe answers in 5 ms, 40 ms after its previous sample: the answer is the estimate.
        record(slow, 5_000.0, false, true, 40_002, DECAY);
        assert_eq!(estimate(slow), Some(5_000.0));
        assert_eq!(picks(&segment, slot, &all, 20, 40_003), vec![10, 10]);
        // Two slow answers in a row put it out again at once.
        record(slow, 80_000.0, false, false, 50_000, DECAY);
        record(slow, 80_000.0, false, false, 51_000, DECAY);
        assert_eq!(estimate(slow), Some(80_000.0));
        // A probe that fails fast is a failure, not a fresh estimate: it does not look fast, and
        // a second failure in a row raises it to four times.
        record(slow, 100.0, true, true, 60_000, DECAY);
        assert!(estimate(slow).unwrap() >= 80_000.0);
        record(slow, 100.0, true, true, 61_000, DECAY);
        assert!(estimate(slow).unwrap() >= 4.0 * 80_000.0, "{:?}", estimate(slow));
    }

    /// One slow answer does not set an equal member apart: not its first (a cold connection),
    /// not one after a long idle time.
    #[test]
    fn one_slow_answer_keeps_a_member_in_the_band() {
        let (segment, slot) = balancer(2);
        let all = with_latencies(&segment, slot, &[Some(5_000.0), None]);
        let cold = segment.member(all[1].member.unwrap() as usize).unwrap();
        record(cold, 90_000.0, false, false, 3, DECAY);
        assert_eq!(ranking_estimate(cold), None, "one sample ranks as none");
        assert_eq!(picks(&segment, slot, &all, 20, 4), vec![10, 10]);
        record(cold, 5_000.0, false, false, 5, DECAY);
        assert_eq!(estimate(cold), Some(5_000.0), "the second sample, lower, replaces the first");
        // A minute idle, then one slow answer: twice the estimate at most, still in the band.
        record(cold, 90_000.0, false, false, 60_000_000, DECAY);
        assert!(estimate(cold).unwrap() <= 10_000.0, "{:?}", estimate(cold));
        assert_eq!(picks(&segment, slot, &all, 20, 60_000_001), vec![10, 10]);
    }

    /// A member that keeps requests waiting without answering is slow before any answer says
    /// so: avoided once it has answered nothing for three times the fastest latency, and
    /// probed only once a second while requests still wait on it.
    #[test]
    fn a_stalled_member_is_avoided_before_it_answers_and_probed_once_a_second_in_its_stall() {
        let (segment, slot) = balancer(3);
        let all = with_latencies(&segment, slot, &[Some(20_000.0), Some(20_000.0), Some(20_000.0)]);
        let stalled = all[2].member.unwrap() as usize;
        let counts = crate::shm::Counts::new(*segment, None);
        let mut held: Vec<_> = (0..3).map(|_| counts.begin(stalled, u64::MAX).unwrap()).collect();
        let t0 = 10_000_000;
        for attempt in &mut held {
            attempt.await_answer(t0);
        }
        let member = segment.member(stalled).unwrap();
        assert_eq!(attempt::unanswered_for(member, t0 + 50_000), 50_000);
        // 50 ms without an answer: within three times 20 ms, ranked on its load as the others.
        let mut with_load = all.clone();
        with_load[2].inflight = 3;
        let early = picks(&segment, slot, &with_load, 12, t0 + 50_000);
        assert!(early[2] > 0, "{early:?}: not yet a stall");
        // 500 ms: 25 times the fastest; the others take 12 more each before it ranks first again.
        let later = picks(&segment, slot, &with_load, 40, t0 + 500_000);
        assert!(later[2] <= 1, "{later:?}: its probe at most");
        let settings = BalancerSettings::default();
        let mut local = Local::default();
        let shared = segment.balancer(slot).unwrap();
        let probe = |now: u64, local: &mut Local| {
            let mut reserve = Counts::default();
            let mut pick = local.pick(shared, &settings, &segment, now, None, &all, &all, &mut reserve);
            matches!(
                ByLatency.choose(&mut pick),
                Some(Choice { position: 2, reason: Reason::Latency { probe: true, .. } })
            )
        };
        // Into the stall, one probe a second at most, and one each second: what waits may
        // never answer, and a member never probed would stay avoided for good.
        let first = (0..400).filter(|i| probe(t0 + 2_000_000 + i, &mut local)).count();
        assert_eq!(first, 1, "one probe into a stall a second");
        let within = (0..400).filter(|i| probe(t0 + 2_500_000 + i, &mut local)).count();
        assert_eq!(within, 0, "not two in a second");
        let next = (0..400).filter(|i| probe(t0 + 3_100_000 + i, &mut local)).count();
        assert_eq!(next, 1, "the next second's");
        for attempt in &mut held {
            attempt.answered(t0 + 2_000_000);
            record(member, 2_000_000.0, false, false, t0 + 2_000_000, DECAY);
        }
        held.into_iter().for_each(|a| a.end(crate::shm::Outcome::Completed));
        assert_eq!(attempt::unanswered_for(member, t0 + 3_000_000), 0);
        assert!(estimate(member).unwrap() >= 1_000_000.0, "its slow answers count");
        assert!((0..400).any(|i| probe(t0 + 3_100_000 + i * 1_000, &mut local)), "probed once nothing waits");
    }

    #[test]
    fn scores_show_the_rank() {
        let members = [
            Scored { inflight: 1, weight: 100, latency_us: Some(5_000.0) },
            Scored { inflight: 1, weight: 200, latency_us: None },
            Scored { inflight: 0, weight: 100, latency_us: Some(50_000.0) },
        ];
        assert_eq!(ByLatency.scores(&members), vec![Some(2.0), Some(1.0), Some(10.0)]);
    }
}
