//! The module record httpd loads, what the module does at each of httpd's steps, and the
//! method providers it registers.
//!
//! Exactly one symbol is exported: `lbmethod_rs_module`.

use super::generation::Generation;
use super::{attempts, directives, discovery, finder, startup, status_handler};
use crate::config::ServerSettings;
use crate::httpd::hooks::{Module, StatusForm, module_record};
use crate::httpd::log::{Level, log_server};
use crate::httpd::proxy::{Providers, ProxyApi, hook_attempt_start};
use crate::httpd::server::PerGeneration;
use crate::httpd::{Pool, Request, Server, filter, process};
use crate::methods::METHODS;
use crate::shm::{attempt, monotonic_us};
use std::ffi::CStr;

module_record!(lbmethod_rs_module, c"mod_lbmethod_rs.c", LbMethodRs, ServerSettings, directives::COMMANDS);

/// The module.
pub struct LbMethodRs;

/// The provider tables mod_proxy_balancer calls, one per method of [`METHODS`], in its order.
pub static PROVIDERS: Providers<{ METHODS.len() }> = Providers::new::<finder::Find>(method_names());

const fn method_names() -> [&'static CStr; METHODS.len()] {
    let mut names = [c""; METHODS.len()];
    let mut i = 0;
    while i < METHODS.len() {
        names[i] = METHODS[i].name;
        i += 1;
    }
    names
}

/// What the finders and the status page need, for one generation in this process.
pub struct Runtime {
    pub generation: Generation,
    pub proxy: ProxyApi,
    pub main_server: Server,
    /// The number the parent gave this generation in the segment's header (`LBDiscover`'s
    /// resolver stops when it changes).
    pub epoch: u32,
}

static RUNTIME: PerGeneration<Runtime> = PerGeneration::new();

/// The current generation's runtime (set by the parent before it forks).
pub fn runtime() -> Option<&'static Runtime> {
    RUNTIME.get()
}

impl Module for LbMethodRs {
    fn register(pool: Pool) {
        PROVIDERS.register(pool);
        filter::register::<attempts::FirstByte>(c"LBMETHOD_RS_TIMING");
    }

    /// Every module is loaded by now, mod_proxy included whatever the LoadModule order: hook
    /// into mod_proxy (found by name, not linked against).
    fn pre_config() {
        hook_attempt_start::<attempts::Started>();
    }

    /// Settings for balancers that do not exist, `byhash` without a key, a module built for
    /// another httpd (also run by `apachectl -t`).
    fn check_config(main: Server, pconf: Pool) -> Vec<String> {
        let mut errors = startup::check_settings(main);
        errors.extend(startup::check_magic_number().err());
        errors.extend(discovery::check(main));
        // Members from DNS are defined in the pass that starts httpd, not in `apachectl -t`
        // (which asks no name server) nor in the first pass, which httpd throws away. The
        // first pass of a start still looks up the names with startup=refuse: its errors reach
        // the terminal and the exit status, before httpd detaches.
        if errors.is_empty() && !crate::httpd::server::is_first_pass() {
            errors.extend(discovery::define_at_startup(main, pconf, startup::previous_segment().as_ref()));
        } else if errors.is_empty() && crate::httpd::server::starts_a_server() {
            errors.extend(discovery::refuse_unresolved(main));
        }
        errors
    }

    fn post_config(main: Server, pconf: Pool) -> Result<(), String> {
        let runtime = startup::build_runtime(main)
            .map_err(|message| format!("mod_lbmethod_rs cannot start: {message}"))?;
        RUNTIME.install(pconf, runtime);
        Ok(())
    }

    /// A new child process: take a row in the segment's process table, so that the parent can
    /// take back this process's attempts if it is killed.
    fn log_transaction(r: Request<'_>) {
        attempts::describe_for_log(r);
    }

    fn child_init(s: Server, pchild: Pool) {
        let Some(runtime) = runtime() else { return };
        runtime.generation.start_table_builder();
        discovery::start_resolver(runtime, s, pchild);
        if !runtime.generation.join_as_process(std::process::id()) {
            log_server!(
                s,
                Level::Warning,
                "process table full: in-flight counts of this child cannot be repaired if it is killed"
            );
        }
    }

    /// In the parent: a child has exited. Its counts go into the kept totals, and whatever it
    /// had in flight and never ended (it was killed) is taken back.
    fn child_exited(s: Server, pid: u32) {
        let Some(runtime) = runtime() else { return };
        let segment = runtime.generation.segment();
        let held = attempt::held_by(segment, pid);
        let reaped = attempt::reap(segment, pid);
        // Its requests waiting in line leave it, and the places it freed go to the next ones
        // in the line of their balancer.
        let now = monotonic_us();
        for (balancer, queue) in segment.balancers_with_queues() {
            let freed = held
                .iter()
                .filter(|(member, _)| segment.holds_member(balancer, *member))
                .map(|(_, n)| n)
                .sum();
            queue.reap(pid, freed, now);
        }
        if let Some(reaped) = reaped {
            log_reaped(s, pid, reaped);
        }
    }

    /// In the parent, about every ten seconds: recounts that found no quiet moment when a child
    /// died, children that vanished without httpd telling (their slots would stay taken), and
    /// the count of dead marks (a child killed while marking leaves it high).
    fn monitor(s: Server) {
        let Some(runtime) = runtime() else { return };
        let segment = runtime.generation.segment();
        let vanished: Vec<u32> = segment.processes().filter(|&pid| !process::exists(pid)).collect();
        for pid in vanished {
            Self::child_exited(s, pid);
        }
        attempt::recount_due(segment);
        attempt::count_dead_marks(segment);
        sweep_waiting_lines(segment);
    }

    fn handler(r: Request<'_>) -> Option<i32> {
        status_handler::handle(r)
    }

    fn status_section(r: Request<'_>, form: StatusForm) -> bool {
        status_handler::server_status_section(r, form)
    }
}

/// The `notice` line for a dead child whose in-flight attempts were taken back (nothing when it
/// had none).
fn log_reaped(s: Server, pid: u32, reaped: attempt::Reaped) {
    if reaped.attempts == 0 && reaped.recounted == 0 {
        return;
    }
    let recounted = match reaped.recounted {
        0 => String::new(),
        n => format!(
            " ({n} member count(s) recounted{})",
            if reaped.recounts_due > 0 { ", some later: other processes were busy" } else { "" }
        ),
    };
    log_server!(
        s,
        Level::Notice,
        "child {pid} exited with {} attempt(s) in flight; its in-flight counts were given back{recounted}",
        reaped.attempts
    );
}

/// In the parent, from the monitor: tickets of waiting lines that nobody can be waiting on any
/// more (older than any timeout) leave them (`shm::queue::Queue::sweep`).
fn sweep_waiting_lines(segment: &crate::shm::Segment) {
    let now = monotonic_us();
    for queue in segment.queues() {
        queue.sweep(now);
    }
}
