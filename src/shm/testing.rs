//! Helpers for the tests of the shared segment and of what builds on it: a segment unmapped
//! when dropped, and child processes killed and waited for when dropped, so that a failing
//! test leaves neither mappings nor processes behind.

use super::{Capacity, Segment};
use std::ops::Deref;

/// A segment of this test's own, unmapped when dropped.
pub struct Mapped(Segment);

impl Mapped {
    pub fn new(capacity: Capacity) -> Mapped {
        Mapped(Segment::create(capacity).expect("map a shared segment"))
    }
}

impl Deref for Mapped {
    type Target = Segment;

    fn deref(&self) -> &Segment {
        &self.0
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the test is done with the segment; its children (which share it) are gone or
        // have their own mapping.
        unsafe { self.0.unmap() };
    }
}

/// A forked process.
pub struct Child {
    pid: i32,
    waited: bool,
}

impl Child {
    /// Forks a process that runs `body` with its own pid and exits with the code it returns.
    pub fn fork(body: impl FnOnce(u32) -> i32) -> Child {
        // SAFETY: the child only runs `body`, which touches the shared mapping's atomics, and
        // leaves with _exit (no destructor or test harness code runs in it).
        match unsafe { libc::fork() } {
            0 => {
                let code = body(std::process::id());
                unsafe { libc::_exit(code) }
            }
            -1 => panic!("fork failed"),
            pid => Child { pid, waited: false },
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for it to exit: its exit code, or `None` if a signal ended it.
    pub fn wait(&mut self) -> Option<i32> {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(self.pid, &mut status, 0) }, self.pid);
        self.waited = true;
        libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
    }

    /// Kills it with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        self.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.waited {
            self.kill();
        }
    }
}
