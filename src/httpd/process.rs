//! What httpd's processes need from the operating system besides httpd: threads that leave
//! httpd's signals alone, and whether a process still exists.

/// Starts `body` in a thread of its own with every signal blocked, so that the signals httpd's
/// MPM relies on (graceful stop and restart, the parent's pipe of death) keep reaching the
/// threads that handle them. Returns false if the thread could not start.
pub fn spawn_quiet(name: &str, body: Box<dyn FnOnce() + Send>) -> bool {
    // SAFETY: sigfillset/pthread_sigmask only read and write the sets we own; the new thread
    // inherits the blocked mask, and this thread's own mask is put back at once.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        let started = std::thread::Builder::new().name(name.to_string()).spawn(body).is_ok();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        started
    }
}

/// Whether process `pid` still exists (a zombie that its parent has not reaped does).
pub fn exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Whether process `pid` can no longer run: it no longer exists, or it has exited and waits,
/// a zombie, for its parent to reap it (Linux's `/proc/<pid>/stat` says so). Reads into stack
/// buffers only.
pub fn gone(pid: u32) -> bool {
    use std::io::{Read, Write};
    use std::os::unix::ffi::OsStrExt;
    if !exists(pid) {
        return true;
    }
    let mut path = [0u8; 32];
    let length = {
        let mut cursor = &mut path[..];
        if write!(cursor, "/proc/{pid}/stat").is_err() {
            return false;
        }
        32 - cursor.len()
    };
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&path[..length]));
    let mut stat = [0u8; 512];
    let read = std::fs::File::open(path).and_then(|mut file| file.read(&mut stat));
    let Ok(read) = read else { return !exists(pid) };
    // "pid (command) state ...": the state follows the last ')' (a command may hold one).
    let stat = &stat[..read];
    let state = stat.iter().rposition(|&b| b == b')').and_then(|end| stat.get(end + 2));
    matches!(state, Some(b'Z' | b'X'))
}
