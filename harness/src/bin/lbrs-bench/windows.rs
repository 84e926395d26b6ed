//! Slicing one load's outcomes by time, for the scenarios where something happens during the
//! run (`recover`, `down`) or where the evenness second by second matters (`steady`,
//! `hash-load`).
//!
//! A request belongs to the window in which it was *sent* (its end minus its latency), because
//! that is when the balancer chose its member: a request sent to a slow member just before it
//! recovers still counts against the slow period, however late it ends.

use lbrs_harness::LoadReport;
use lbrs_harness::client::{Outcome, percentile};
use std::time::Duration;

/// When the request was sent, from the start of the load.
pub fn sent_at(outcome: &Outcome) -> Duration {
    outcome.at.saturating_sub(outcome.latency)
}

/// The outcomes of the requests sent in `[from, to)`.
pub fn sent_between(report: &LoadReport, from: Duration, to: Duration) -> impl Iterator<Item = &Outcome> {
    report.outcomes.iter().filter(move |o| (from..to).contains(&sent_at(o)))
}

/// Of the requests sent in `[from, to)` and answered with 200: how many `member` answered, and
/// how many in all.
pub fn answered_by(report: &LoadReport, member: &str, from: Duration, to: Duration) -> (u64, u64) {
    sent_between(report, from, to)
        .filter(|o| o.status == 200)
        .fold((0, 0), |(mine, all), o| (mine + u64::from(o.backend.as_deref() == Some(member)), all + 1))
}

/// Requests sent in `[from, to)` that got anything but a 200 (another status, or no answer).
pub fn errors_between(report: &LoadReport, from: Duration, to: Duration) -> u64 {
    sent_between(report, from, to).filter(|o| o.status != 200).count() as u64
}

/// The latencies of the 200s sent in `[from, to)`.
pub fn latencies_between(report: &LoadReport, from: Duration, to: Duration) -> Vec<Duration> {
    sent_between(report, from, to).filter(|o| o.status == 200).map(|o| o.latency).collect()
}

/// The `p`th percentile of the latencies of the 200s sent in `[from, to)`.
pub fn percentile_between(report: &LoadReport, from: Duration, to: Duration, p: f64) -> Duration {
    percentile(&mut latencies_between(report, from, to), p)
}

/// `member`'s share of the 200s sent in each whole second `0..seconds` of the load; `None`
/// for a second with no 200 at all.
pub fn share_per_second(report: &LoadReport, member: &str, seconds: u64) -> Vec<Option<f64>> {
    (0..seconds)
        .map(|s| {
            let (mine, all) = answered_by(report, member, Duration::from_secs(s), Duration::from_secs(s + 1));
            (all > 0).then(|| mine as f64 / all as f64)
        })
        .collect()
}

/// The step by which [`back_after`] slides its one-second window.
const STEP: Duration = Duration::from_millis(100);

/// How long after `since` `member` was back to at least `share` of the 200s over one second:
/// the end of the first one-second window that starts at or after `since` (sliding by 100 ms)
/// in which it got that share. One second is thus the soonest; `None` when no such window fits
/// in the load.
pub fn back_after(report: &LoadReport, member: &str, since: Duration, share: f64) -> Option<Duration> {
    let window = Duration::from_secs(1);
    let mut from = since;
    while from + window <= report.elapsed {
        let (mine, all) = answered_by(report, member, from, from + window);
        if all > 0 && mine as f64 >= share * all as f64 {
            return Some(from + window - since);
        }
        from += STEP;
    }
    None
}

/// [`back_after`] for a table: "1.3 s", or "> 10 s" (the `rest` of the load after `since`) when
/// the member was not back within the load.
pub fn back_label(back_after: Option<Duration>, rest: Duration) -> String {
    match back_after {
        Some(after) => format!("{:.1} s", after.as_secs_f64()),
        None => format!("> {:.0} s", rest.as_secs_f64()),
    }
}

/// Shares as whole percentages, each right-aligned in `width` characters (`-` for none).
pub fn percent_series(shares: &[Option<f64>], width: usize) -> String {
    shares
        .iter()
        .map(|share| match share {
            Some(share) => format!("{:>width$.0}", share * 100.0),
            None => format!("{:>width$}", "-"),
        })
        .collect()
}

/// The header of a per-second series: the second each column starts at.
pub fn seconds_header(seconds: u64, width: usize) -> String {
    (0..seconds).map(|s| format!("{s:>width$}")).collect()
}

/// "12.3 ms", or "-" when a window had no request.
pub fn ms_or_dash(latency: Duration) -> String {
    if latency.is_zero() { "-".to_string() } else { format!("{:.1} ms", lbrs_harness::ms(latency)) }
}
