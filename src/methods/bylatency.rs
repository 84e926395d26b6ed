//! `bylatency`: least in flight among the members that answer about as fast as the fastest;
//! a member much slower than that is avoided in proportion to how much slower it is, and
//! probed once a second so that its recovery is seen at once.
//!
//! **The estimate.** Each member has a latency estimate shared by every process (kept in its
//! member slot, updated by [`record`] as each attempt ends, from the pick to the response's
//! first byte): Finagle's peak EWMA, with the peak confirmed. Two samples in a row above twice
//! the estimate raise it at once to the lower of them (a member that turns slow is avoided from
//! its second slow answer, which under load comes right after the first; a single slow answer
//! among fast ones, a scheduling hiccup, does not make it look slow, and the ordinary spread of
//! answers does not make the estimates of equal members drift apart); any other sample moves it
//! as an exponentially weighted moving average over an uneven time series,
//! `w = exp(-dt / decay)`, `estimate = sample * (1 - w) + estimate * w`, `decay` being
//! `LBLatencyDecay` (250 ms by default). A failed attempt counts as four times the estimate, or
//! as the ceiling when there is none yet (a member failing fast must not look fast), and no estimate ever exceeds [`CEILING_US`] (60 s) or is anything but a finite
//! positive number: whatever is read that is not (a segment from an older build, a value
//! carried over a restart) counts as no sample.
//!
//! **The rule.** Among the candidates, the fastest estimate `best` sets the scale. A member
//! within [`BAND`] (3) times `best`, or without a sample yet, ranks as `byinflight` does, on
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
//! through an atomic claim in the member's slot; each avoided member has its own budget).
//! A probe's answer replaces the member's estimate (it is the only recent evidence; one that
//! fails counts as a failure): a member that recovered, from slowness, from errors (httpd's retry
//! timer, a health check, balancer-manager), or from answering 503, is back in the band with its
//! next probe, tens of milliseconds after recovering at thousands of requests a second, a second
//! at most; one that is still slow stays out, and two slow answers in a row push a member that
//! only answered one probe fast back out. A member that is still slow costs 0.5% of the
//! requests (one a second, when traffic is light).
//!
//! **Why not power of two choices.** P2C (Finagle's, Linkerd's, Envoy's) exists because a
//! balancer usually sees stale or partial load: two random draws avoid herding on one stale
//! minimum. Here every process reads exact shared in-flight counts, and a scan of every
//! candidate costs little against a proxied request's milliseconds (docs/benchmark.md: about
//! 160 ns at 16 members, 9 µs at 1000). Measured against P2C on peak EWMA (the previous version of this method), with
//! equal members it spread 64 clients over 10 members as evenly as `byinflight` where P2C's
//! busiest member got 1.39 times its idlest one's requests, and a member that recovered got its
//! share back within about a second where P2C took over 10 seconds (docs/benchmark.md,
//! `recover`, `down`, `steady`).
//!
//! Tests check the EWMA rules, the ceiling and the handling of non-finite values, that members
//! in the band share as `byinflight` does, that a slow member is avoided but probed once a
//! second, and that a probe that answers fast brings it back.

use super::{Candidate, Choice, Method, Pick, Reason, Scored};
use crate::shm::MemberSlot;
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
        // Each candidate's estimate, read once, into the pick's reused buffer.
        let mut latencies = std::mem::take(&mut pick.local.latencies);
        latencies.clear();
        latencies.extend(
            pick.candidates()
                .iter()
                .map(|c| c.member.and_then(|m| pick.segment.member(m as usize)).and_then(estimate)),
        );
        let choice = choose_among(pick, &latencies);
        pick.local.latencies = latencies;
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

/// The pick, given each candidate's estimate (`latencies`, in candidate order).
fn choose_among(pick: &mut Pick<'_>, latencies: &[Option<f64>]) -> Option<Choice> {
    let best = latencies.iter().flatten().fold(f64::INFINITY, |a, &b| a.min(b));
    let pick_number = pick.shared.turns.rotation.fetch_add(1, Ordering::Relaxed);
    let start = pick_number as usize;
    for _ in 0..pick.candidates().len() {
        // A member outside the band that is due for a probe gets this request.
        if let Some(position) = due_probe(pick, pick_number, best, latencies)
            && pick.reserve(position)
        {
            let latency_us = latencies[position];
            let rank = rank(&pick.candidates()[position], latency_us, best);
            return Some(Choice { position, reason: Reason::Latency { rank, latency_us, probe: true } });
        }
        let (position, rank) = least_rank(pick.candidates(), latencies, best, start)?;
        if pick.reserve(position) {
            let latency_us = latencies[position];
            return Some(Choice { position, reason: Reason::Latency { rank, latency_us, probe: false } });
        }
    }
    None
}

/// The position and rank of the non-full candidate of least rank, scanning from `start`
/// (modulo the number of candidates) to the end, then from the beginning; ties keep the first
/// seen, so that equal members take turns as the shared start rotates.
fn least_rank(
    candidates: &[Candidate],
    latencies: &[Option<f64>],
    best: f64,
    start: usize,
) -> Option<(usize, f64)> {
    let start = start % candidates.len().max(1);
    let positions = (start..candidates.len()).chain(0..start);
    let mut chosen: Option<(usize, f64)> = None;
    for position in positions {
        let candidate = &candidates[position];
        if candidate.full {
            continue;
        }
        let rank = rank(candidate, latencies[position], best);
        if chosen.is_none_or(|(_, least)| rank < least) {
            chosen = Some((position, rank));
        }
    }
    chosen
}

/// How much a member's rank is multiplied for being slow: 1 within the band (or without a
/// sample), else its latency over the fastest's.
fn slowness(latency_us: Option<f64>, best_us: f64) -> f64 {
    match latency_us {
        Some(latency) if best_us.is_finite() && latency > BAND * best_us => latency / best_us,
        _ => 1.0,
    }
}

/// A candidate's rank: `(inflight + 1) / weight`, times its [`slowness`].
fn rank(candidate: &Candidate, latency_us: Option<f64>, best_us: f64) -> f64 {
    (f64::from(candidate.inflight) + 1.0) / f64::from(candidate.weight.max(1)) * slowness(latency_us, best_us)
}

/// Picks of a balancer between two looks for members due for a probe, and the longest time
/// between two looks when there are fewer picks: a member due for a probe gets it at most that
/// much late, and a pick that does not look costs nothing.
const PROBE_LOOK_EVERY_PICKS: u64 = 16;
const PROBE_LOOK_EVERY_US: u64 = 100_000;

/// A candidate outside the band that is due for a probe (its last one was
/// [`PROBE_EVERY_PICKS`] picks of the balancer or [`PROBE_INTERVAL_US`] ago), the one probed
/// longest ago, claimed for this pick: one process wins each probe of a member (an atomic
/// claim in its slot), and each avoided member has its own budget. Looks only once in
/// [`PROBE_LOOK_EVERY_PICKS`] picks or [`PROBE_LOOK_EVERY_US`], and then costs nothing per
/// member in the band.
fn due_probe(pick: &Pick<'_>, pick_number: u64, best: f64, latencies: &[Option<f64>]) -> Option<usize> {
    let now = pick.now_us;
    let looked = &pick.shared.turns.probe_look_us;
    let last_look = looked.load(Ordering::Relaxed);
    let time_to_look = now.saturating_sub(last_look) >= PROBE_LOOK_EVERY_US
        && looked.compare_exchange(last_look, now, Ordering::Relaxed, Ordering::Relaxed).is_ok();
    if !pick_number.is_multiple_of(PROBE_LOOK_EVERY_PICKS) && !time_to_look {
        return None;
    }
    let (position, latency, probed_us) = pick
        .candidates()
        .iter()
        .zip(latencies)
        .enumerate()
        .filter(|(_, (candidate, latency))| !candidate.full && slowness(**latency, best) > 1.0)
        .filter_map(|(position, (candidate, _))| {
            let latency = &pick.segment.member(candidate.member? as usize)?.latency;
            let probed_us = latency.probe_us.load(Ordering::Relaxed);
            // Signed: a pick number taken before another process claimed a later one is not due.
            let picks_since = pick_number.wrapping_sub(latency.probe_pick.load(Ordering::Relaxed)) as i64;
            let due =
                picks_since >= PROBE_EVERY_PICKS as i64 || now.saturating_sub(probed_us) >= PROBE_INTERVAL_US;
            due.then_some((position, latency, probed_us))
        })
        .min_by_key(|&(_, _, probed_us)| probed_us)?;
    // The claim: whoever moves the member's probe time first probes it. The pick number only
    // ever moves forward.
    latency
        .probe_us
        .compare_exchange(probed_us, now.max(probed_us + 1), Ordering::AcqRel, Ordering::Relaxed)
        .ok()?;
    latency.probe_pick.fetch_max(pick_number, Ordering::Relaxed);
    Some(position)
}

/// Takes one latency sample into the member's peak EWMA, as its attempt ends. The answer to a
/// probe that did not fail replaces the estimate.
pub fn record(member: &MemberSlot, sample_us: f64, failed: bool, probe: bool, now_us: u64, decay_us: u64) {
    let sample_us = if sample_us.is_finite() { sample_us.clamp(1.0, CEILING_US) } else { CEILING_US };
    let previous_at = member.latency.at_us.swap(now_us, Ordering::AcqRel);
    let elapsed = now_us.saturating_sub(previous_at);
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
        let next =
            if probe && !failed { taken } else { updated(current, previous, taken, elapsed, decay_us) };
        Some(next.clamp(1.0, CEILING_US).to_bits())
    });
    member.latency.last_sample_bits.store(taken.to_bits(), Ordering::Release);
    member.latency.samples.fetch_add(1, Ordering::Relaxed);
}

/// The member's estimate in microseconds; `None` before the first sample.
pub fn estimate(member: &MemberSlot) -> Option<f64> {
    sane(member.latency.bits.load(Ordering::Acquire))
}

/// An estimate read from shared memory: a finite positive number up to the ceiling, or no
/// sample (zero bits, or anything else).
fn sane(bits: u64) -> Option<f64> {
    let value = f64::from_bits(bits);
    (bits != 0 && value.is_finite() && value > 0.0).then(|| value.min(CEILING_US))
}

/// The new estimate after a sample of `sample_us`, `elapsed_us` after the last update, the
/// sample before it being `previous_us`.
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
        let pick = local.pick(shared, &settings, &segment, 5_000_001, None, &all, &all, &mut reserve);
        assert_eq!(due_probe(&pick, 999, 5_000.0, &[Some(5_000.0), Some(80_000.0)]), None);
        // A second later it is due by time: claimed, and its pick number is not moved back.
        let pick = local.pick(shared, &settings, &segment, 6_000_001, None, &all, &all, &mut reserve);
        assert_eq!(due_probe(&pick, 999, 5_000.0, &[Some(5_000.0), Some(80_000.0)]), Some(1));
        assert_eq!(slow.probe_pick.load(Ordering::Relaxed), 1_000, "not moved back");
        assert_eq!(due_probe(&pick, 1_000, 5_000.0, &[Some(5_000.0), Some(80_000.0)]), None, "claimed once");
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
        // At a high rate, once in 200 picks: 400 more picks within the same second (nothing held
        // in flight, so only probes reach it), two more.
        let settings = BalancerSettings::default();
        let mut local = Local::default();
        let mut probes = 0;
        for _ in 0..400 {
            let mut reserve = Counts::default();
            let shared = segment.balancer(slot).unwrap();
            let mut pick = local.pick(shared, &settings, &segment, 3_200_000, None, &all, &all, &mut reserve);
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
