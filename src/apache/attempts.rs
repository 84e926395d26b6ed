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
//! - **end**: when the request's pool goes (the answer sent, the client gone, an error, a
//!   timeout, an HTTP/2 stream end), the attempt ends, failed if the member is in error now or
//!   the answer is a gateway error, and its latency (from the pick to the first byte of the
//!   answer, [`FirstByte`]) goes into the member's estimate;
//! - **kill**: a process killed with attempts under way never ends them; the parent does, when
//!   it reaps the process (`shm::attempt::reap`).

use super::module::{PROVIDERS, runtime};
use crate::httpd::filter::{self, FirstOutput};
use crate::httpd::log::{Level, log_request};
use crate::httpd::proxy::{AttemptStart, ProxyConf};
use crate::httpd::request::RequestState;
use crate::httpd::{Request, Worker};
use crate::methods::bylatency;
use crate::shm::{Attempt, Outcome, monotonic_us};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// This module's state for one request.
#[derive(Default)]
pub struct Requested {
    current: Option<Current>,
    /// The first-byte filter is in the request's output chain.
    timed: bool,
    /// Refused because every candidate was at its cap, and not served since: the balancer's
    /// shed counter, moved once when the request ends so.
    shed: Option<&'static AtomicU64>,
}

/// The attempt under way.
struct Current {
    attempt: Attempt,
    worker: Worker,
    /// When it was picked, and when the answer's first byte went out (0: not yet), in
    /// monotonic microseconds.
    picked_us: u64,
    first_byte_us: u64,
    /// The balancer's `LBLatencyDecay`, for the latency sample.
    decay: Duration,
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
    pub decay: Duration,
    /// A probe (see `methods::Choice::is_probe`).
    pub probe: bool,
}

/// Makes `picked` the request's attempt.
pub fn start(r: Request<'_>, picked: Picked) {
    let Picked { attempt, worker, picked_us, decay, probe } = picked;
    r.with_state(|state: &mut Requested| {
        state.begin(r, Current { attempt, worker, picked_us, first_byte_us: 0, decay, probe, sent: false })
    });
}

/// The request is picking again: its attempt failed, and ends now.
pub fn failover(r: Request<'_>) {
    r.with_state(|state: &mut Requested| {
        if let Some(current) = state.current.take() {
            current.end(Outcome::Failed);
        }
    });
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
            previous.end(Outcome::Failed);
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

impl RequestState for Requested {
    /// The request has ended: its attempt ends with the answer's outcome, a refusal that was
    /// never served counts as shed.
    fn at_end(&mut self, r: Request<'_>) {
        if let Some(current) = self.current.take() {
            // The outcome is known only now: httpd's own error answers (a backend timeout, a
            // member refusing) never pass through the first-byte filter.
            let gateway_error = matches!(r.status(), 502..=504);
            let failed = gateway_error || current.worker.state().in_error();
            current.end(if failed { Outcome::Failed } else { Outcome::Completed });
        }
        if let Some(shed) = self.shed.take() {
            shed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Current {
    /// Ends the attempt, and gives its latency to the member's estimate.
    fn end(self, outcome: Outcome) {
        let segment = *self.attempt.segment();
        let member = self.attempt.member();
        self.attempt.end(outcome);
        let now = monotonic_us();
        let answered = if self.first_byte_us != 0 { self.first_byte_us } else { now };
        let sample = answered.saturating_sub(self.picked_us) as f64;
        if let Some(slot) = segment.member(member) {
            let failed = outcome == Outcome::Failed;
            bylatency::record(slot, sample, failed, self.probe, now, self.decay.as_micros() as u64);
        }
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
            let decay = slot.settings.latency_decay();
            let picked_us = monotonic_us();
            state.begin(
                r,
                Current { attempt, worker, picked_us, first_byte_us: 0, decay, probe: false, sent: true },
            );
            log_request!(r, Level::Debug, "sticky session routed to {} (counted)", worker.name());
        });
    }
}
