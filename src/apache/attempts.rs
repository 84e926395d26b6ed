//! A request's attempts, from the pick to the end of the request. An attempt is one try of
//! one request on one member; its life on the shared counters, and why every count stays
//! exact whatever happens to the process, is `shm::attempt`'s. Here is when each step happens:
//!
//! - **start**: the finder's reservation started it ([`start`]); a sticky-session request,
//!   which mod_proxy_balancer routes without calling the method, is started when mod_proxy
//!   sends it ([`Started`]), on the copy of the balancer that routed it;
//! - **failover**: the same request picks again, so the attempt failed: it ends at once
//!   ([`failover`]);
//! - **refusal**: every candidate was at its cap: no attempt, a `Retry-After`, and the request
//!   counts once as shed if it ends without being served ([`refuse`]);
//! - **answer**: the first byte of the member's answer goes out ([`FirstByte`]): the attempt no
//!   longer waits (`bylatency`'s stall signal), and its latency is known;
//! - **end**: when the request's pool goes (the answer sent, the client gone, an error, a
//!   timeout, an HTTP/2 stream end), the attempt ends, failed on the shared counters if the
//!   member is in error now or the answer is a gateway error; its outcome, classified by the
//!   balancer's `failures=` ([`Answer`]), goes to outlier detection and, with its latency
//!   (from the pick to the first byte of the answer), to the member's estimate;
//! - **kill**: a process killed with attempts under way never ends them; the parent does, when
//!   it reaps the process (`shm::attempt::reap`).

use super::module::{PROVIDERS, runtime};
use crate::config::BalancerSettings;
use crate::httpd::filter::{self, FirstOutput};
use crate::httpd::log::{Level, log_request};
use crate::httpd::proxy::{AttemptStart, ProxyConf};
use crate::httpd::request::RequestState;
use crate::httpd::{Request, Worker};
use crate::methods::{bylatency, outlier};
use crate::shm::{Attempt, BalancerSlot, Outcome, monotonic_us};
use std::sync::atomic::{AtomicU64, Ordering};

/// This module's state for one request.
#[derive(Default)]
pub struct Requested {
    current: Option<Current>,
    /// The first-byte filter is in the request's output chain.
    timed: bool,
    /// Refused because every candidate was at its cap, and not served since: the balancer's
    /// shed counter, moved once when the request ends so.
    shed: Option<&'static AtomicU64>,
    /// The balancer had no usable member for it (and none since).
    no_member: bool,
    /// `LBQueue` refused it (its wait timed out, its client went, or the line was full): httpd's
    /// balancer `timeout=` asking again does not make it wait again.
    refused_by_queue: bool,
}

/// `LBQueue` refused the request.
pub fn queue_refused(r: Request<'_>) {
    r.with_state(|state: &mut Requested| state.refused_by_queue = true);
}

/// Whether `LBQueue` has refused the request before.
pub fn refused_by_queue(r: Request<'_>) -> bool {
    r.with_existing_state(|state: &mut Requested| state.refused_by_queue).unwrap_or(false)
}

/// The balancer had no usable member for the request: httpd answers 503 (for the log).
pub fn no_member(r: Request<'_>) {
    r.with_state(|state: &mut Requested| state.no_member = true);
}

/// The attempt under way.
struct Current {
    attempt: Attempt,
    worker: Worker,
    /// When it was picked, and when the answer's first byte went out (0: not yet), in
    /// monotonic microseconds.
    picked_us: u64,
    first_byte_us: u64,
    /// The balancer it was picked on, and its settings.
    balancer: &'static BalancerSlot,
    settings: &'static BalancerSettings,
    /// A probe: its answer replaces the member's latency estimate.
    probe: bool,
    /// mod_proxy has sent it (its scheme handler ran for this member).
    sent: bool,
}

/// An attempt the finder started.
pub struct Picked {
    pub attempt: Attempt,
    pub worker: Worker,
    pub picked_us: u64,
    pub balancer: &'static BalancerSlot,
    pub settings: &'static BalancerSettings,
    /// A probe (see `methods::Choice::is_probe`).
    pub probe: bool,
}

impl Picked {
    fn into_current(self, r: Request<'_>, sent: bool) -> Current {
        let Picked { mut attempt, worker, picked_us, balancer, settings, probe } = self;
        // An upgrade (WebSocket) is answered with a 101 that mod_proxy_http sends past the
        // request's filters, and then lasts as long as the client stays: it would look like a
        // request the member never answers.
        if r.header_in(c"Upgrade").is_none() {
            attempt.await_answer(picked_us);
        }
        Current { attempt, worker, picked_us, first_byte_us: 0, balancer, settings, probe, sent }
    }
}

/// Makes `picked` the request's attempt.
pub fn start(r: Request<'_>, picked: Picked) {
    r.with_state(|state: &mut Requested| state.begin(r, picked.into_current(r, false)));
}

/// The request is picking again: its attempt failed, and ends now.
pub fn failover(r: Request<'_>) {
    r.with_state(|state: &mut Requested| {
        if let Some(current) = state.current.take() {
            current.end(Outcome::Failed, Answer::None);
        }
    });
}

/// What the member answered an attempt, for `failures=` (`config::Failures`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// Nothing: a gateway failure (no connection, a timeout, an error answered by httpd for
    /// it, or given up for another member).
    None,
    /// Its own answer, with this status.
    Status(u16),
    /// Neither: the request ended before the member answered, without an error (the client
    /// went away first). Says nothing of the member.
    Unknown,
}

impl Answer {
    /// Whether the balancer's `failures=` count it as a failure; `None`: no evidence either way,
    /// also for a failure `failures=` leaves out (a gateway failure under `failures=5xx`, a
    /// `500` under `failures=gateway`): not counted, but no success either, which would reset
    /// the member's failures in a row and vouch for it to the shared-failure rule.
    fn failed(self, settings: &BalancerSettings) -> Option<bool> {
        let failures = settings.failures();
        match self {
            Answer::None => failures.counts(None).then_some(true),
            Answer::Status(status) if failures.counts(Some(status)) => Some(true),
            Answer::Status(status) if status >= 500 => None,
            Answer::Status(_) => Some(false),
            Answer::Unknown => None,
        }
    }
}

/// Every candidate was at its cap: the request is refused (httpd answers 503), with a
/// `Retry-After` header. httpd may ask again for the same request (a balancer `timeout=`); the
/// request counts once in `shed`, when it ends without having been served. Returns the shed
/// count so far, this request included.
pub fn refuse(r: Request<'_>, shed: &'static AtomicU64) -> u64 {
    r.set_error_header("Retry-After", Some("1"));
    r.with_state(|state: &mut Requested| state.shed = Some(shed));
    shed.load(Ordering::Relaxed) + 1
}

impl Requested {
    fn begin(&mut self, r: Request<'_>, current: Current) {
        if let Some(previous) = self.current.replace(current) {
            previous.end(Outcome::Failed, Answer::None);
        }
        if self.shed.take().is_some() {
            // Refused before, served now (the balancer's timeout= let httpd ask again).
            r.set_error_header("Retry-After", None);
        }
        if !self.timed {
            filter::add(r);
            self.timed = true;
        }
    }
}

/// Sets the access log's view of the request (`%{LBRS_OUTCOME}e`, `%{LBRS_MEMBER_MS}e`), just
/// before httpd logs it, for a request one of this module's balancers handled:
///
/// - `LBRS_OUTCOME`: `answered` (the member answered, whatever its status), `no-answer` (httpd
///   answered for it with an error: the connection failed or timed out, or it closed without
///   answering), `client-failed` (no answer, and httpd's status is not an error of its own:
///   the client's request body failed, say), `shed` (every member was at its `LBMaxInflight`
///   cap: 503 from Apache), `no-member` (the balancer had no usable member: 503 from Apache). Whether the client went away is `%X`'s to say: under HTTP/2 a
///   stream's connection reads as aborted once the stream is done.
/// - `LBRS_MEMBER_MS`: milliseconds from the pick to the first byte of the member's answer, when
///   it went out (not when `ProxyErrorOverride` put Apache's page in its place).
pub fn describe_for_log(r: Request<'_>) {
    let described = r.with_existing_state(|state: &mut Requested| {
        if let Some(current) = &state.current {
            let answered = current.first_byte_us != 0 || r.note(c"proxy-error-override").is_some();
            let outcome = if answered {
                "answered"
            } else if r.status() >= 500 {
                "no-answer"
            } else {
                "client-failed"
            };
            if current.first_byte_us != 0 {
                let ms = current.first_byte_us.saturating_sub(current.picked_us) as f64 / 1000.0;
                r.set_env("LBRS_MEMBER_MS", &format!("{ms:.3}"));
            }
            Some(outcome)
        } else if state.shed.is_some() {
            Some("shed")
        } else {
            state.no_member.then_some("no-member")
        }
    });
    if let Some(Some(outcome)) = described {
        r.set_env("LBRS_OUTCOME", outcome);
    }
}

impl RequestState for Requested {
    /// The request has ended: its attempt ends with the answer's outcome, a refusal that was
    /// never served counts as shed.
    fn at_end(&mut self, r: Request<'_>) {
        if let Some(current) = self.current.take() {
            // The outcome is known only now: httpd's own error answers (a backend timeout, a
            // member refusing) never pass through the first-byte filter.
            let status = u16::try_from(r.status()).unwrap_or(500);
            let in_error = current.worker.state().in_error();
            let failed = matches!(status, 502..=504) || in_error;
            // The member's own answer: its first byte went out, or `ProxyErrorOverride` put
            // httpd's error page in its place (which bypasses the request's filters). No answer
            // and an error status: httpd answered for it.
            let answered = current.first_byte_us != 0 || r.note(c"proxy-error-override").is_some();
            let answer = match (answered, status >= 500 || in_error) {
                (true, _) => Answer::Status(status),
                (false, true) => Answer::None,
                (false, false) => Answer::Unknown,
            };
            current.end(if failed { Outcome::Failed } else { Outcome::Completed }, answer);
        }
        if let Some(shed) = self.shed.take() {
            shed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Current {
    /// Ends the attempt with `outcome` on the shared counters; `answer`, as the balancer's
    /// `failures=` classifies it, goes to outlier detection and, with the latency, to the
    /// member's estimate.
    fn end(self, outcome: Outcome, answer: Answer) {
        let segment = *self.attempt.segment();
        let member = self.attempt.member();
        self.attempt.end(outcome);
        // A place freed: the first request waiting in line for one gets it.
        if self.settings.queue.is_some()
            && let Some(queue) = segment.queue(self.balancer)
            && queue.in_line()
        {
            queue.grant();
        }
        let Some(slot) = segment.member(member) else { return };
        let now = monotonic_us();
        let failed = answer.failed(self.settings);
        if let (Some(outliers), Some(failed)) = (self.settings.outlier_detection(), failed)
            && outlier::note(&slot.health, failed, outliers, now)
        {
            outlier::want_review(&self.balancer.events);
        }
        // Neither an answer nor a failure (the client's body failed, an upgrade ended): its
        // length says nothing of the member's speed.
        let Some(failed) = failed else { return };
        let answered = if self.first_byte_us != 0 { self.first_byte_us } else { now };
        let sample = answered.saturating_sub(self.picked_us) as f64;
        let decay = self.settings.latency_decay().as_micros() as u64;
        bylatency::record(slot, sample, failed, self.probe, now, decay);
    }
}

/// Notes when an answer's first byte goes out.
pub struct FirstByte;

impl FirstOutput for FirstByte {
    fn first_output(r: Request<'_>) {
        r.with_state(|state: &mut Requested| {
            if let Some(current) = &mut state.current
                && current.first_byte_us == 0
            {
                current.first_byte_us = monotonic_us();
                current.attempt.answered(current.first_byte_us);
            }
        });
    }
}

/// mod_proxy is about to send a request to a member.
pub struct Started;

impl AttemptStart for Started {
    /// An attempt the finder picked is marked sent. A member of one of this module's balancers
    /// reached without the finder is one mod_proxy_balancer routed by the request's sticky
    /// session (it notes the route in `r->notes`): it is counted here, on the copy of the
    /// balancer that routed it (mod_proxy_balancer names it in `BALANCER_NAME`, among the
    /// balancers of the server serving the request), and never refused by the cap: a sticky
    /// request must reach its member. Everything comes from the request, so nothing is left
    /// behind for another request when this one fails before it gets here.
    fn starting(r: Request<'_>, worker: Worker, conf: ProxyConf) {
        r.with_state(|state: &mut Requested| {
            if let Some(current) = &mut state.current
                && current.worker == worker
                && !current.sent
            {
                current.sent = true;
                return;
            }
            if r.note(c"session-route").is_none() {
                return;
            }
            let Some(balancer) = r.env(c"BALANCER_NAME").and_then(|name| conf.balancer_named(name)) else {
                return;
            };
            if PROVIDERS.position_of(balancer).is_none() {
                return;
            }
            let Some(runtime) = runtime() else { return };
            let Some(slot) = runtime.generation.balancer(balancer.id()) else { return };
            let segment = runtime.generation.segment();
            let Some(member) = segment.member_index(slot.shared, worker.index() as usize) else { return };
            let Some(attempt) = runtime.generation.counts().begin(member, u64::MAX) else { return };
            let picked_us = monotonic_us();
            let (balancer, settings) = (slot.shared, slot.settings);
            let picked = Picked { attempt, worker, picked_us, balancer, settings, probe: false };
            state.begin(r, picked.into_current(r, true));
            log_request!(r, Level::Debug, "sticky session routed to {} (counted)", worker.name());
        });
    }
}
