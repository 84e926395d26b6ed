//! The few calls the harness makes to the operating system that std does not offer: who runs
//! the tests, and signals to the processes they started. The one place outside the module's
//! own bindings where the harness and the tests call libc for these.

/// True when running as root, which namespaces and the machine's apache2 need.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Sends `signal` to process `pid`; false if it could not (the process is gone).
pub fn signal(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions; a bad pid or signal is an error.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Sends `signal` to every process of group `group`; false if it could not.
pub fn signal_group(group: i32, signal: i32) -> bool {
    // SAFETY: as for kill(2).
    unsafe { libc::killpg(group, signal) == 0 }
}
