//! A minimal HTTP/1.1 client and a closed-loop load generator, bounded in count and in time.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive connection.
pub struct Connection {
    addr: SocketAddr,
    /// True once a response has been read (the connection is being kept alive).
    pub reused: bool,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    pub fn open(addr: SocketAddr, timeout: Duration) -> io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Connection { addr, reused: false, reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    /// Sends a request and reads the whole response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        self.send(method, path, headers, body)?;
        let response = read_response(&mut self.reader, method == "HEAD")?;
        self.reused = true;
        Ok(response)
    }

    /// Sends a request without reading the answer (to abort it, drop the connection).
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<()> {
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        self.writer.write_all(head.as_bytes())?;
        self.writer.write_all(body)
    }

    /// Closes the connection with a reset, as a client that gives up would.
    pub fn abort(self) {
        let _ = self.writer.set_linger_zero();
    }
}

trait LingerZero {
    fn set_linger_zero(&self) -> io::Result<()>;
}

impl LingerZero for TcpStream {
    fn set_linger_zero(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt on a live socket with a correctly sized linger struct.
        let rc = unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    request(addr, "GET", path, &[], b"")
}

/// One request of any method on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut headers = headers.to_vec();
    headers.push(("Connection", "close"));
    Connection::open(addr, Duration::from_secs(10))?.request(method, path, &headers, body)
}

fn read_response(reader: &mut impl BufRead, head: bool) -> io::Result<Response> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in headers"));
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let mut response = Response { status, headers, body: Vec::new() };
    if head || status == 204 || status == 304 {
        return Ok(response);
    }
    if response.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                let mut trailer = String::new();
                while reader.read_line(&mut trailer)? > 2 {
                    trailer.clear();
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            chunk.truncate(size);
            response.body.extend_from_slice(&chunk);
        }
    } else if let Some(length) = response.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        response.body = vec![0; length];
        reader.read_exact(&mut response.body)?;
    } else {
        reader.read_to_end(&mut response.body)?;
    }
    Ok(response)
}

/// A closed-loop load: `concurrency` clients, each sending its next request as soon as the
/// previous one is answered, until `requests` are done or `deadline` has passed.
#[derive(Clone, Debug)]
pub struct Load {
    pub path: String,
    pub concurrency: usize,
    pub requests: u64,
    pub deadline: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// This percentage of requests (spread evenly) is abandoned by its client after
    /// `abort_after`, with a reset.
    pub abort_percent: u64,
    pub abort_after: Duration,
    /// Every `every`-th request (0: none) goes to this other path instead.
    pub other_path: (u64, String),
    /// Extra request headers; `{n}` in a value becomes the request's sequence number.
    pub headers: Vec<(String, String)>,
    /// Extra request headers whose values are drawn per request (see [`Load::random_header`]).
    pub random_headers: Vec<RandomHeader>,
}

/// A request header whose value is made, for each request, from a pseudo-random number drawn
/// from a seed and the request's sequence number: see [`Load::random_header`].
#[derive(Clone)]
pub struct RandomHeader {
    pub name: String,
    pub seed: u64,
    /// Makes the value from the request's number [`request_random`]`(seed, n)`.
    pub value: Arc<dyn Fn(u64) -> String + Send + Sync>,
}

impl fmt::Debug for RandomHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RandomHeader").field("name", &self.name).field("seed", &self.seed).finish()
    }
}

/// The pseudo-random number of request `n` of a load under `seed` (SplitMix64 of the two):
/// what [`Load::random_header`] hands its function, so that a report can tell afterwards which
/// value each request carried (from [`Outcome::request`]).
pub fn request_random(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Load {
    pub fn new(path: &str, concurrency: usize, requests: u64) -> Load {
        Load {
            path: path.to_string(),
            concurrency,
            requests,
            deadline: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            abort_percent: 0,
            abort_after: Duration::from_millis(5),
            other_path: (0, String::new()),
            headers: Vec::new(),
            random_headers: Vec::new(),
        }
    }

    /// The per-request timeout.
    pub fn timeout(mut self, timeout: Duration) -> Load {
        self.timeout = timeout;
        self
    }

    pub fn deadline(mut self, deadline: Duration) -> Load {
        self.deadline = deadline;
        self
    }

    pub fn abort_percent(mut self, percent: u64, after: Duration) -> Load {
        self.abort_percent = percent;
        self.abort_after = after;
        self
    }

    /// Sends every `every`-th request to `path` instead.
    pub fn every_nth_to(mut self, every: u64, path: &str) -> Load {
        self.other_path = (every, path.to_string());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Load {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds a header whose value `value` makes from a pseudo-random number drawn for each
    /// request: [`request_random`]`(seed, n)` for request `n`. The same seed gives every
    /// request the same value in every run, whichever client sends it; for example
    /// `|r| format!("user-{}", r % 1000)` picks one of 1000 keys uniformly.
    pub fn random_header(
        mut self,
        name: &str,
        seed: u64,
        value: impl Fn(u64) -> String + Send + Sync + 'static,
    ) -> Load {
        self.random_headers.push(RandomHeader { name: name.to_string(), seed, value: Arc::new(value) });
        self
    }

    /// Runs the load against `addr`.
    pub fn run(&self, addr: SocketAddr) -> LoadReport {
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let results: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));
        thread::scope(|scope| {
            for _ in 0..self.concurrency.max(1) {
                let next = Arc::clone(&next);
                let results = Arc::clone(&results);
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    let mut connection: Option<Connection> = None;
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= self.requests || started.elapsed() >= self.deadline {
                            break;
                        }
                        let mut outcome = self.one(addr, n, &mut connection, started);
                        outcome.request = n;
                        mine.push(outcome);
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
                });
            }
        });
        let outcomes = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
        LoadReport::from_outcomes(outcomes, started.elapsed())
    }

    fn one(
        &self,
        addr: SocketAddr,
        n: u64,
        connection: &mut Option<Connection>,
        started: Instant,
    ) -> Outcome {
        let mut headers: Vec<(String, String)> =
            self.headers.iter().map(|(k, v)| (k.clone(), v.replace("{n}", &n.to_string()))).collect();
        headers.extend(
            self.random_headers.iter().map(|h| (h.name.clone(), (h.value)(request_random(h.seed, n)))),
        );
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let begun = Instant::now();
        // n * 37 mod 100 visits every residue once per hundred requests, spread out.
        let abort = n * 37 % 100 < self.abort_percent;
        let path = match &self.other_path {
            (every, other) if *every > 0 && n % every == every - 1 => other.as_str(),
            _ => self.path.as_str(),
        };
        let result = (|| -> io::Result<Outcome> {
            if connection.is_none() {
                *connection = Some(Connection::open(addr, self.timeout)?);
            }
            let conn = connection.as_mut().expect("opened above");
            if abort {
                conn.send("GET", path, &headers, b"")?;
                thread::sleep(self.abort_after);
                if let Some(conn) = connection.take() {
                    conn.abort();
                }
                return Ok(Outcome::aborted(begun.elapsed(), started.elapsed()));
            }
            let response = match conn.request("GET", path, &headers, b"") {
                // A kept-alive connection the server closed just before our request (idle
                // timeout, graceful restart): retry once on a fresh one, as HTTP clients do
                // for idempotent requests that got no response at all.
                Err(err)
                    if conn.reused
                        && matches!(
                            err.kind(),
                            io::ErrorKind::UnexpectedEof
                                | io::ErrorKind::ConnectionReset
                                | io::ErrorKind::BrokenPipe
                        ) =>
                {
                    *connection = Some(Connection::open(addr, self.timeout)?);
                    let conn = connection.as_mut().expect("opened above");
                    conn.request("GET", path, &headers, b"")?
                }
                other => other?,
            };
            if response.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                *connection = None;
            }
            Ok(Outcome::answered(&response, begun.elapsed(), started.elapsed()))
        })();
        result.unwrap_or_else(|err| {
            *connection = None;
            Outcome::failed(err, begun.elapsed(), started.elapsed())
        })
    }
}

/// What happened to one request.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// HTTP status; 0 when there was no answer.
    pub status: u16,
    pub backend: Option<String>,
    pub retry_after: Option<String>,
    pub latency: Duration,
    /// When the request finished, from the start of the load.
    pub at: Duration,
    pub aborted: bool,
    pub error: Option<String>,
    /// The request's sequence number in its load: the `n` of `{n}` and of [`request_random`].
    pub request: u64,
}

impl Outcome {
    fn answered(response: &Response, latency: Duration, at: Duration) -> Outcome {
        Outcome {
            status: response.status,
            backend: response.header("x-backend").map(str::to_string),
            retry_after: response.header("retry-after").map(str::to_string),
            latency,
            at,
            aborted: false,
            error: None,
            request: 0,
        }
    }

    fn aborted(latency: Duration, at: Duration) -> Outcome {
        Outcome {
            status: 0,
            backend: None,
            retry_after: None,
            latency,
            at,
            aborted: true,
            error: None,
            request: 0,
        }
    }

    fn failed(error: io::Error, latency: Duration, at: Duration) -> Outcome {
        Outcome {
            status: 0,
            backend: None,
            retry_after: None,
            latency,
            at,
            aborted: false,
            error: Some(error.to_string()),
            request: 0,
        }
    }
}

/// The results of a load.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub outcomes: Vec<Outcome>,
    pub elapsed: Duration,
}

impl LoadReport {
    fn from_outcomes(mut outcomes: Vec<Outcome>, elapsed: Duration) -> LoadReport {
        outcomes.sort_by_key(|o| o.at);
        LoadReport { outcomes, elapsed }
    }

    /// Answered requests per backend name.
    pub fn per_backend(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for outcome in &self.outcomes {
            if let Some(backend) = &outcome.backend {
                *counts.entry(backend.clone()).or_default() += 1;
            }
        }
        counts
    }

    pub fn count_backend(&self, name: &str) -> u64 {
        self.outcomes.iter().filter(|o| o.backend.as_deref() == Some(name)).count() as u64
    }

    /// Responses per HTTP status (0: no answer, not counting deliberate aborts).
    pub fn per_status(&self) -> BTreeMap<u16, u64> {
        let mut counts = BTreeMap::new();
        for outcome in self.outcomes.iter().filter(|o| !o.aborted) {
            *counts.entry(outcome.status).or_default() += 1;
        }
        counts
    }

    pub fn count_status(&self, status: u16) -> u64 {
        self.outcomes.iter().filter(|o| !o.aborted && o.status == status).count() as u64
    }

    pub fn errors(&self) -> Vec<&str> {
        self.outcomes.iter().filter_map(|o| o.error.as_deref()).collect()
    }

    pub fn completed(&self) -> u64 {
        self.outcomes.iter().filter(|o| !o.aborted && o.status != 0).count() as u64
    }

    /// Answered requests per second.
    pub fn throughput(&self) -> f64 {
        self.completed() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency percentile (0..=100) of answered 2xx requests.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut latencies: Vec<Duration> =
            self.outcomes.iter().filter(|o| (200..300).contains(&o.status)).map(|o| o.latency).collect();
        percentile(&mut latencies, p)
    }
}

/// The `p`th percentile (nearest rank) of `values`; zero when empty.
pub fn percentile(values: &mut [Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// A TCP connection to `addr` whose local end is bound to `local` (port chosen by the
/// kernel): another loopback address (127.0.0.2, 127.0.0.3...) gives a test client another
/// source address, as another host would have.
pub fn connect_from(local: std::net::IpAddr, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let (std::net::IpAddr::V4(local), SocketAddr::V4(remote)) = (local, addr) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 addresses only"));
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket, owned by the TcpStream below from the moment it exists.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let bind_to = sockaddr(local, 0);
    // SAFETY: bind on our socket with a correctly sized sockaddr_in.
    if unsafe { libc::bind(fd, &bind_to as *const libc::sockaddr_in as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let to = sockaddr(*remote.ip(), remote.port());
    // SAFETY: as above; a blocking connect to a loopback address answers at once.
    if unsafe { libc::connect(fd, &to as *const libc::sockaddr_in as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One request on a fresh connection from the local address `local` (see [`connect_from`]).
pub fn request_from(
    local: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    let stream = connect_from(local, addr, Duration::from_secs(10))?;
    let mut connection =
        Connection { addr, reused: false, reader: BufReader::new(stream.try_clone()?), writer: stream };
    let mut headers = headers.to_vec();
    headers.push(("Connection", "close"));
    connection.request(method, path, &headers, b"")
}

/// Sends `bytes` as they are on a fresh connection from `local`, then reads until the server
/// closes the connection or `timeout` passes: what came back, parsed when it is an HTTP
/// response. For what a well-behaved client never sends (a PROXY protocol header, a broken
/// request).
pub fn raw_exchange(
    local: std::net::IpAddr,
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> io::Result<Option<Response>> {
    let stream = connect_from(local, addr, timeout)?;
    (&stream).write_all(bytes)?;
    let mut reader = BufReader::new(stream);
    match read_response(&mut reader, false) {
        Ok(response) => Ok(Some(response)),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(err) if err.kind() == io::ErrorKind::ConnectionReset => Ok(None),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_random_is_reproducible_and_spreads_over_keys() {
        assert_eq!(request_random(7, 42), request_random(7, 42));
        assert_ne!(request_random(7, 42), request_random(8, 42));
        let mut counts = [0u32; 10];
        for n in 0..100_000 {
            counts[(request_random(1, n) % 10) as usize] += 1;
        }
        // 10,000 expected per bucket; sampling noise is about 95.
        assert!(counts.iter().all(|&c| (9_500..=10_500).contains(&c)), "{counts:?}");
    }
}
