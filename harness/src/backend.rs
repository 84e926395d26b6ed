//! A small HTTP/1.1 backend that behaves like an application server: a fixed number of worker
//! slots, a service time per request, and requests beyond the slots waiting in a queue. It
//! records what it saw (requests, in flight now, the most in flight at once) so tests can check
//! the balancer from the backend's side.
//!
//! Every response carries `X-Backend: <name>` and the name as its body. A request whose path
//! contains `/__reset` gets its connection reset without an answer (a crashing backend); one
//! whose path contains `/health` gets 503 while the backend is marked unhealthy, and every request
//! does while it is in maintenance. A request whose path contains `/__error` gets a `500` at once
//! (an application bug every backend shares), and every request does while the backend is
//! failing ([`Backend::set_failing`]: up, but answering errors fast). A request whose path
//! contains `/__headers` gets, after the
//! name, its request line and headers as the backend received them (to see what a proxy
//! added); one whose path contains `/__redirect` gets a `302` to `http://<its Host>/landing`
//! and a cookie for that host, as an application that builds its own URLs does. A backend
//! made with [`BackendSpec::refuse_when_full`] answers `503` at once when every slot is busy
//! (an application pool with no backlog, like a PHP-FPM pool whose listen queue is full).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How a backend behaves.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    pub name: String,
    /// Requests served at once; more wait in line. 0 means no limit.
    pub slots: usize,
    /// Service time of each request.
    pub delay: Duration,
    /// With slots: answer 503 at once when every slot is busy, instead of queueing.
    pub refuse_when_full: bool,
}

impl BackendSpec {
    pub fn new(name: &str) -> BackendSpec {
        BackendSpec { name: name.to_string(), slots: 0, delay: Duration::ZERO, refuse_when_full: false }
    }

    pub fn slots(mut self, slots: usize) -> BackendSpec {
        self.slots = slots;
        self
    }

    pub fn delay(mut self, delay: Duration) -> BackendSpec {
        self.delay = delay;
        self
    }

    pub fn refuse_when_full(mut self) -> BackendSpec {
        self.refuse_when_full = true;
        self
    }
}

/// What a backend has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Requests received (the errors answered included).
    pub requests: u64,
    pub inflight: u64,
    pub max_inflight: u64,
    /// Requests answered `500` (failing, or `/__error`).
    pub errors: u64,
    /// Requests answered `503` because every slot was busy ([`BackendSpec::refuse_when_full`]).
    pub refused: u64,
}

struct Shared {
    name: String,
    delay_us: AtomicU64,
    slots: Slots,
    requests: AtomicU64,
    inflight: AtomicU64,
    max_inflight: AtomicU64,
    stopping: AtomicBool,
    unhealthy: AtomicBool,
    maintenance: AtomicBool,
    failing: AtomicBool,
    errors: AtomicU64,
    refused: AtomicU64,
    connections: Mutex<Connections>,
}

/// A running backend. Dropping it stops it: the listener closes, open connections are shut
/// down and every thread is joined.
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend on a free loopback port.
    pub fn start(spec: BackendSpec) -> io::Result<Backend> {
        Self::start_on("127.0.0.1:0".parse().expect("literal address"), spec)
    }

    /// Starts a backend on `addr` (port 0: any free port).
    pub fn start_on(addr: SocketAddr, spec: BackendSpec) -> io::Result<Backend> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: spec.name,
            delay_us: AtomicU64::new(spec.delay.as_micros() as u64),
            slots: Slots::new(spec.slots, spec.refuse_when_full),
            requests: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            max_inflight: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            unhealthy: AtomicBool::new(false),
            maintenance: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            connections: Mutex::new(Connections::default()),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("backend-{}", shared.name))
            .spawn(move || accept_loop(listener, accept_shared))?;
        Ok(Backend { addr, shared, acceptor: Some(acceptor) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn stats(&self) -> BackendStats {
        BackendStats {
            requests: self.shared.requests.load(Ordering::SeqCst),
            inflight: self.shared.inflight.load(Ordering::SeqCst),
            max_inflight: self.shared.max_inflight.load(Ordering::SeqCst),
            errors: self.shared.errors.load(Ordering::SeqCst),
            refused: self.shared.refused.load(Ordering::SeqCst),
        }
    }

    /// Changes the service time from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.delay_us.store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// Makes every request answer 503 at once (true), as an application behind a maintenance
    /// page does, or serve again (false).
    pub fn set_maintenance(&self, on: bool) {
        self.shared.maintenance.store(on, Ordering::SeqCst);
    }

    /// Makes every request answer `500 Internal Server Error` at once (true), as an application
    /// whose database went away does while its server stays up, or serve again (false). Health
    /// checks of `/health` still pass: the process is up.
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes `/health` answer 503 (false) or 200 (true), for health checks.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    /// Forgets the counts so far (the most-in-flight mark restarts from the current count).
    /// A reader of the requests received so far, usable from another thread.
    pub fn counter(&self) -> impl Fn() -> u64 + Send + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.requests.load(Ordering::Relaxed)
    }

    pub fn reset_stats(&self) {
        self.shared.requests.store(0, Ordering::SeqCst);
        self.shared.errors.store(0, Ordering::SeqCst);
        self.shared.refused.store(0, Ordering::SeqCst);
        let now = self.shared.inflight.load(Ordering::SeqCst);
        self.shared.max_inflight.store(now, Ordering::SeqCst);
    }

    /// Stops accepting and drops every open connection, as a crashed server would.
    pub fn stop(&mut self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the acceptor with a connection of our own; it sees `stopping` and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.shared.slots.close();
        let connections =
            std::mem::take(&mut *self.shared.connections.lock().unwrap_or_else(|e| e.into_inner()));
        for stream in connections.open.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for thread in connections.threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Open connections (a second handle on each, to shut them down when the backend stops) and
/// the threads serving them.
#[derive(Default)]
struct Connections {
    next_id: u64,
    open: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let Ok(tracked) = stream.try_clone() else { continue };
        let mut connections = shared.connections.lock().unwrap_or_else(|e| e.into_inner());
        let id = connections.next_id;
        connections.next_id += 1;
        connections.open.insert(id, tracked);
        connections.threads.retain(|thread| !thread.is_finished());
        let conn_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("conn-{}", shared.name))
            .stack_size(128 * 1024)
            .spawn(move || {
                let _ = serve_connection(stream, &conn_shared);
                // Dropping the last handle closes the socket (with a reset, if asked for).
                conn_shared.connections.lock().unwrap_or_else(|e| e.into_inner()).open.remove(&id);
            });
        match thread {
            Ok(thread) => connections.threads.push(thread),
            Err(_) => {
                connections.open.remove(&id);
            }
        }
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let Some(request) = read_request(&mut reader)? else {
            return Ok(());
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        if request.path.contains("/__reset") {
            reset(&writer);
            return Ok(());
        }
        let maintenance = shared.maintenance.load(Ordering::SeqCst);
        if maintenance || (request.path.contains("/health") && shared.unhealthy.load(Ordering::SeqCst)) {
            let response = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
            writer.write_all(response.as_bytes())?;
            continue;
        }
        let failing = shared.failing.load(Ordering::SeqCst) && !request.path.contains("/health");
        if failing || request.path.contains("/__error") {
            shared.requests.fetch_add(1, Ordering::SeqCst);
            shared.errors.fetch_add(1, Ordering::SeqCst);
            let body = format!("{}\n", shared.name);
            let response = format!(
                "HTTP/1.1 500 Internal Server Error\r\nX-Backend: {}\r\nContent-Length: {}\r\n\r\n{}",
                shared.name,
                body.len(),
                if request.head { "" } else { &body }
            );
            writer.write_all(response.as_bytes())?;
            if request.close {
                return Ok(());
            }
            continue;
        }
        let now = shared.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_inflight.fetch_max(now, Ordering::SeqCst);
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let served = shared.slots.with_slot(|| {
            let delay = shared.delay_us.load(Ordering::SeqCst);
            if delay > 0 {
                thread::sleep(Duration::from_micros(delay));
            }
        });
        let mut body = format!("{}\n", shared.name);
        let mut status = "200 OK".to_string();
        let mut extra = String::new();
        if request.path.contains("/__headers") {
            body.push_str(&request.head_text);
        } else if request.path.contains("/__redirect") {
            let host = request.host.as_deref().unwrap_or("localhost");
            let domain = host.rsplit_once(':').map_or(host, |(name, _)| name);
            status = "302 Found".to_string();
            extra =
                format!("Location: http://{host}/landing\r\nSet-Cookie: app=1; Domain={domain}; Path=/\r\n");
        }
        let response = if served == Slot::Served {
            format!(
                "HTTP/1.1 {status}\r\nX-Backend: {}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{}",
                shared.name,
                body.len(),
                if request.close { "Connection: close\r\n" } else { "" },
                if request.head { "" } else { &body },
            )
        } else if served == Slot::Full {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let close = if request.close { "Connection: close\r\n" } else { "" };
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nX-Backend: {}\r\nContent-Length: 0\r\n{close}\r\n",
                shared.name
            )
        } else {
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        };
        let written = writer.write_all(response.as_bytes());
        shared.inflight.fetch_sub(1, Ordering::SeqCst);
        written?;
        if request.close || served == Slot::Stopped {
            return Ok(());
        }
    }
}

/// Closes the connection with a reset (RST), not an orderly close.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a live socket with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

struct Request {
    path: String,
    head: bool,
    close: bool,
    /// The `Host` header, if any.
    host: Option<String>,
    /// The request line and headers as received, one per line.
    head_text: String,
}

/// Reads one request (line, headers, body by Content-Length). `None` at end of stream.
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let http10 = parts.next().is_some_and(|v| v == "HTTP/1.0");
    let mut length = 0usize;
    let mut close = http10;
    let mut host = None;
    let mut head_text = format!("{}\n", line.trim_end());
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Ok(None);
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        head_text.push_str(header);
        head_text.push('\n');
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("host") {
                host = Some(value.to_string());
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
    }
    if length > 0 {
        io::copy(&mut reader.take(length as u64), &mut io::sink())?;
    }
    Ok(Some(Request { path, head: method == "HEAD", close, host, head_text }))
}

/// A counting semaphore: at most `limit` holders; the rest wait in line.
struct Slots {
    limit: usize,
    refuse_when_full: bool,
    state: Mutex<(usize, bool)>,
    freed: Condvar,
}

/// What became of a request at the slots.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Served,
    /// Every slot was busy, and the backend refuses rather than queues.
    Full,
    /// The backend stopped while it waited.
    Stopped,
}

impl Slots {
    fn new(limit: usize, refuse_when_full: bool) -> Slots {
        Slots { limit, refuse_when_full, state: Mutex::new((0, false)), freed: Condvar::new() }
    }

    /// Runs `work` holding a slot.
    fn with_slot(&self, work: impl FnOnce()) -> Slot {
        if self.limit == 0 {
            work();
            return Slot::Served;
        }
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.0 >= self.limit && self.refuse_when_full {
                return Slot::Full;
            }
            while state.0 >= self.limit && !state.1 {
                state = self.freed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.1 {
                return Slot::Stopped;
            }
            state.0 += 1;
        }
        work();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        self.freed.notify_one();
        Slot::Served
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.freed.notify_all();
    }
}
