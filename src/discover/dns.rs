//! A small DNS client: the three queries `LBDiscover` asks (A, AAAA, SRV), over UDP with TCP
//! when an answer is truncated, and the system's resolver settings from `/etc/resolv.conf`.
//!
//! Written here rather than taken from the C library because `getaddrinfo` says nothing of
//! TTLs, SRV records or which server answered, and blocks for as long as it likes; these
//! queries run in one background thread with a deadline each (`super::Resolver`).
//!
//! Every byte from the network is checked: a malformed or spoofed answer (wrong id, wrong
//! question, pointer loops, lengths past the end) is an error, never a panic.

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Record types asked for or read.
pub const A: u16 = 1;
pub const AAAA: u16 = 28;
pub const SRV: u16 = 33;

/// The data of a record this client reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    Address(IpAddr),
    Srv { priority: u16, weight: u16, port: u16, target: String },
    Other,
}

/// One resource record: its owner name (lowercase, no final dot), TTL and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: Data,
}

/// A response: its return code and the answer and additional sections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub rcode: u8,
    pub answers: Vec<Record>,
    pub additional: Vec<Record>,
}

/// `rcode` values read.
pub const NOERROR: u8 = 0;
pub const NXDOMAIN: u8 = 3;

/// Why a query got no usable response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// No response before the deadline.
    Timeout,
    /// The server answered with this code (2 SERVFAIL, 5 REFUSED, ...).
    Server(u8),
    /// Could not send or receive.
    Network(String),
    /// The response did not parse or does not answer the question.
    Malformed(&'static str),
    /// A name that cannot be asked (too long, empty label, ...).
    BadName,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout => f.write_str("no answer in time"),
            Error::Server(2) => f.write_str("server failure (SERVFAIL)"),
            Error::Server(5) => f.write_str("query refused (REFUSED)"),
            Error::Server(code) => write!(f, "error code {code}"),
            Error::Network(why) => f.write_str(why),
            Error::Malformed(why) => write!(f, "malformed answer: {why}"),
            Error::BadName => f.write_str("not a valid DNS name"),
        }
    }
}

/// The wire form of a query for `name` (no final dot needed) of type `qtype`, with id `id`
/// and recursion desired.
pub fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(32 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    encode_name(name, &mut out)?;
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    Ok(out)
}

fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), Error> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > 253 {
        return Err(Error::BadName);
    }
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(Error::BadName);
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    Ok(())
}

/// Reads a response to query `id` for `name` of type `qtype`. `Err(Malformed("truncated"))`
/// when the server set TC (ask again over TCP).
pub fn parse(message: &[u8], id: u16, name: &str, qtype: u16) -> Result<Response, Error> {
    let mut reader = Reader { message, at: 0 };
    let header = reader.take(12).ok_or(Error::Malformed("shorter than a header"))?;
    if u16::from_be_bytes([header[0], header[1]]) != id {
        return Err(Error::Malformed("another query's id"));
    }
    let flags = u16::from_be_bytes([header[2], header[3]]);
    if flags & 0x8000 == 0 {
        return Err(Error::Malformed("not a response"));
    }
    if flags & 0x0200 != 0 {
        return Err(Error::Malformed("truncated"));
    }
    let count = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]) as usize;
    let (questions, answers, authority, additional) = (count(4), count(6), count(8), count(10));
    if questions != 1 {
        return Err(Error::Malformed("not one question"));
    }
    let asked = reader.name()?;
    let fixed = reader.take(4).ok_or(Error::Malformed("question cut short"))?;
    let wanted = name.strip_suffix('.').unwrap_or(name);
    if !asked.eq_ignore_ascii_case(wanted) || u16::from_be_bytes([fixed[0], fixed[1]]) != qtype {
        return Err(Error::Malformed("answers another question"));
    }
    let mut response = Response { rcode: (flags & 0x000f) as u8, ..Response::default() };
    for _ in 0..answers {
        response.answers.push(reader.record()?);
    }
    for _ in 0..authority {
        reader.record()?;
    }
    // The additional section is a bonus: a cut-short one is ignored.
    for _ in 0..additional {
        match reader.record() {
            Ok(record) => response.additional.push(record),
            Err(_) => break,
        }
    }
    Ok(response)
}

struct Reader<'a> {
    message: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.message.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(bytes)
    }

    /// A name at the current position, following compression pointers (a bounded number of
    /// them, so a loop is an error).
    fn name(&mut self) -> Result<String, Error> {
        let (name, end) = read_name(self.message, self.at)?;
        self.at = end;
        Ok(name)
    }

    fn record(&mut self) -> Result<Record, Error> {
        let name = self.name()?;
        let fixed = self.take(10).ok_or(Error::Malformed("record cut short"))?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let length = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let start = self.at;
        let rdata = self.take(length).ok_or(Error::Malformed("record data cut short"))?;
        // RFC 2181: a TTL with the top bit set is read as 0.
        let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
        let data = match (class, rtype) {
            (1, A) => match <[u8; 4]>::try_from(rdata) {
                Ok(octets) => Data::Address(IpAddr::V4(Ipv4Addr::from(octets))),
                Err(_) => return Err(Error::Malformed("A record not 4 bytes")),
            },
            (1, AAAA) => match <[u8; 16]>::try_from(rdata) {
                Ok(octets) => Data::Address(IpAddr::V6(Ipv6Addr::from(octets))),
                Err(_) => return Err(Error::Malformed("AAAA record not 16 bytes")),
            },
            (1, SRV) => {
                if rdata.len() < 7 {
                    return Err(Error::Malformed("SRV record too short"));
                }
                let word = |i: usize| u16::from_be_bytes([rdata[i], rdata[i + 1]]);
                let (target, end) = read_name(self.message, start + 6)?;
                if end != start + length {
                    return Err(Error::Malformed("SRV target overruns its record"));
                }
                Data::Srv { priority: word(0), weight: word(2), port: word(4), target }
            }
            _ => Data::Other,
        };
        Ok(Record { name, ttl, data })
    }
}

/// The name at `at` in `message` and where the bytes after it start.
fn read_name(message: &[u8], at: usize) -> Result<(String, usize), Error> {
    let mut name = String::new();
    let (mut at, mut end, mut jumps) = (at, None, 0);
    loop {
        let length = *message.get(at).ok_or(Error::Malformed("name cut short"))? as usize;
        match length {
            0 => {
                return Ok((name, end.unwrap_or(at + 1)));
            }
            1..=63 => {
                let label =
                    message.get(at + 1..at + 1 + length).ok_or(Error::Malformed("label cut short"))?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.extend(label.iter().map(|&b| (b as char).to_ascii_lowercase()));
                if name.len() > 255 {
                    return Err(Error::Malformed("name too long"));
                }
                at += 1 + length;
            }
            0xc0..=0xff => {
                let low = *message.get(at + 1).ok_or(Error::Malformed("pointer cut short"))? as usize;
                jumps += 1;
                if jumps > 32 {
                    return Err(Error::Malformed("compression loop"));
                }
                end.get_or_insert(at + 2);
                at = ((length & 0x3f) << 8) | low;
            }
            _ => return Err(Error::Malformed("unknown label type")),
        }
    }
}

/// Asks `server` for `name`'s records of type `qtype`: over UDP, then over TCP when the
/// answer was truncated; gives up at `deadline`.
pub fn ask(server: SocketAddr, name: &str, qtype: u16, deadline: Instant) -> Result<Response, Error> {
    let id = random_id();
    let message = query(id, name, qtype)?;
    let response = match ask_udp(server, &message, deadline).and_then(|bytes| parse(&bytes, id, name, qtype))
    {
        Err(Error::Malformed("truncated")) => {
            ask_tcp(server, &message, deadline).and_then(|bytes| parse(&bytes, id, name, qtype))?
        }
        other => other?,
    };
    match response.rcode {
        NOERROR | NXDOMAIN => Ok(response),
        code => Err(Error::Server(code)),
    }
}

fn remaining(deadline: Instant) -> Result<Duration, Error> {
    deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()).ok_or(Error::Timeout)
}

fn network(err: std::io::Error) -> Error {
    match err.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::Timeout,
        _ => Error::Network(err.to_string()),
    }
}

fn ask_udp(server: SocketAddr, message: &[u8], deadline: Instant) -> Result<Vec<u8>, Error> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(network)?;
    // Only datagrams from the server reach this socket.
    socket.connect(server).map_err(network)?;
    socket.send(message).map_err(network)?;
    let mut buffer = vec![0u8; 4096];
    let id = [message[0], message[1]];
    loop {
        socket.set_read_timeout(Some(remaining(deadline)?)).map_err(network)?;
        let n = socket.recv(&mut buffer).map_err(network)?;
        // A late answer to an earlier query (same port reused) is skipped.
        if n >= 2 && buffer[..2] == id {
            buffer.truncate(n);
            return Ok(buffer);
        }
    }
}

fn ask_tcp(server: SocketAddr, message: &[u8], deadline: Instant) -> Result<Vec<u8>, Error> {
    let mut stream = TcpStream::connect_timeout(&server, remaining(deadline)?).map_err(network)?;
    stream.set_write_timeout(Some(remaining(deadline)?)).map_err(network)?;
    let mut framed = (message.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    stream.write_all(&framed).map_err(network)?;
    stream.set_read_timeout(Some(remaining(deadline)?)).map_err(network)?;
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).map_err(network)?;
    let mut buffer = vec![0u8; u16::from_be_bytes(length) as usize];
    stream.set_read_timeout(Some(remaining(deadline)?)).map_err(network)?;
    stream.read_exact(&mut buffer).map_err(network)?;
    Ok(buffer)
}

/// An unpredictable query id (with the kernel's random source port, what keeps an off-path
/// host from slipping in a forged answer).
fn random_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish() as u16
}

/// The system's resolver settings (`resolv.conf(5)`): its name servers, search list and
/// `ndots`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemResolver {
    pub servers: Vec<SocketAddr>,
    pub search: Vec<String>,
    pub ndots: usize,
}

impl SystemResolver {
    /// Reads the text of a `resolv.conf`. Without a `nameserver` line, the local one
    /// (127.0.0.1), as the C library does.
    pub fn parse(text: &str) -> SystemResolver {
        let mut resolver = SystemResolver { servers: Vec::new(), search: Vec::new(), ndots: 1 };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let address = words.next().and_then(|a| a.split('%').next()?.parse::<IpAddr>().ok());
                    if let Some(address) = address
                        && resolver.servers.len() < 3
                    {
                        resolver.servers.push(SocketAddr::new(address, 53));
                    }
                }
                Some("search") | Some("domain") => {
                    resolver.search =
                        words.map(|d| d.trim_end_matches('.').to_ascii_lowercase()).take(6).collect();
                }
                Some("options") => {
                    for option in words {
                        if let Some(n) = option.strip_prefix("ndots:").and_then(|n| n.parse::<usize>().ok()) {
                            resolver.ndots = n.min(15);
                        }
                    }
                }
                _ => {}
            }
        }
        if resolver.servers.is_empty() {
            resolver.servers.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
        }
        resolver
    }

    /// The names to ask, in order, for `name` (`resolv.conf(5)`): a name ending with a dot as
    /// it is; one with at least `ndots` dots first as it is, then with each search domain; a
    /// shorter one with each search domain first.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self.search.iter().map(|domain| format!("{name}.{domain}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response as a server would write it, with the question echoed and `records`
    /// (name, type, ttl, rdata) in the answer section.
    fn response(
        id: u16,
        flags: u16,
        name: &str,
        qtype: u16,
        records: &[(&str, u16, u32, Vec<u8>)],
    ) -> Vec<u8> {
        let mut out = query(id, name, qtype).unwrap();
        out[2..4].copy_from_slice(&flags.to_be_bytes());
        out[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (owner, rtype, ttl, rdata) in records {
            encode_name(owner, &mut out).unwrap();
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            out.extend_from_slice(rdata);
        }
        out
    }

    fn srv_rdata(priority: u16, weight: u16, port: u16, target: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [priority, weight, port] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        encode_name(target, &mut out).unwrap();
        out
    }

    #[test]
    fn queries_are_written_as_rfc_1035_says() {
        let q = query(0x1234, "app.test.", A).unwrap();
        assert_eq!(q, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03app\x04test\x00\x00\x01\x00\x01");
        assert_eq!(query(1, "a..b", A), Err(Error::BadName));
        assert_eq!(query(1, &"x".repeat(64), A), Err(Error::BadName));
    }

    #[test]
    fn addresses_and_srv_records_are_read() {
        let bytes = response(
            7,
            0x8180,
            "app.test",
            A,
            &[("app.test", A, 5, vec![198, 18, 0, 2]), ("App.Test", A, 3, vec![198, 18, 0, 3])],
        );
        let r = parse(&bytes, 7, "app.test", A).unwrap();
        assert_eq!(r.answers.len(), 2);
        assert_eq!(r.answers[1].name, "app.test");
        assert_eq!(r.answers[1].ttl, 3);
        assert_eq!(r.answers[0].data, Data::Address("198.18.0.2".parse().unwrap()));

        let bytes = response(
            9,
            0x8180,
            "_http._tcp.app",
            SRV,
            &[("_http._tcp.app", SRV, 10, srv_rdata(1, 20, 8080, "node1.app"))],
        );
        let r = parse(&bytes, 9, "_http._tcp.app", SRV).unwrap();
        assert_eq!(
            r.answers[0].data,
            Data::Srv { priority: 1, weight: 20, port: 8080, target: "node1.app".into() }
        );
    }

    #[test]
    fn compressed_names_are_followed_and_loops_refused() {
        // The answer's owner is a pointer to the question's name (offset 12).
        let mut bytes = query(3, "app.test", A).unwrap();
        bytes[2..4].copy_from_slice(&0x8180u16.to_be_bytes());
        bytes[6..8].copy_from_slice(&1u16.to_be_bytes());
        bytes.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 2]);
        let r = parse(&bytes, 3, "app.test", A).unwrap();
        assert_eq!(r.answers[0].name, "app.test");
        assert_eq!(r.answers[0].ttl, 60);

        // A pointer to itself.
        let mut looped = query(3, "app.test", A).unwrap();
        looped[2..4].copy_from_slice(&0x8180u16.to_be_bytes());
        looped[6..8].copy_from_slice(&1u16.to_be_bytes());
        let at = looped.len() as u8;
        looped.extend_from_slice(&[0xc0, at, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 2]);
        assert_eq!(parse(&looped, 3, "app.test", A), Err(Error::Malformed("compression loop")));
    }

    #[test]
    fn answers_to_something_else_are_refused() {
        let bytes = response(7, 0x8180, "app.test", A, &[]);
        assert_eq!(parse(&bytes, 8, "app.test", A), Err(Error::Malformed("another query's id")));
        assert_eq!(parse(&bytes, 7, "evil.test", A), Err(Error::Malformed("answers another question")));
        assert_eq!(parse(&bytes, 7, "app.test", AAAA), Err(Error::Malformed("answers another question")));
        let truncated = response(7, 0x8380, "app.test", A, &[]);
        assert_eq!(parse(&truncated, 7, "app.test", A), Err(Error::Malformed("truncated")));
        let query_not_answer = response(7, 0x0100, "app.test", A, &[]);
        assert_eq!(parse(&query_not_answer, 7, "app.test", A), Err(Error::Malformed("not a response")));
    }

    #[test]
    fn any_bytes_give_an_answer_or_an_error_never_a_panic() {
        let good = response(5, 0x8180, "a.test", SRV, &[("a.test", SRV, 5, srv_rdata(0, 1, 80, "b.test"))]);
        for cut in 0..good.len() {
            let _ = parse(&good[..cut], 5, "a.test", SRV);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % bytes.len();
                bytes[at] = (state >> 32) as u8;
            }
            let _ = parse(&bytes, 5, "a.test", SRV);
        }
    }

    #[test]
    fn resolv_conf_is_read_as_the_c_library_reads_it() {
        let r = SystemResolver::parse(
            "# comment\nnameserver 198.18.0.53\nnameserver fe80::1%eth0\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5 timeout:2\n",
        );
        assert_eq!(r.servers, vec!["198.18.0.53:53".parse().unwrap(), "[fe80::1]:53".parse().unwrap()]);
        assert_eq!(r.ndots, 5);
        assert_eq!(
            r.candidates("app"),
            vec!["app.default.svc.cluster.local", "app.svc.cluster.local", "app"]
        );
        assert_eq!(r.candidates("app.internal."), vec!["app.internal"]);
        let plain = SystemResolver::parse("search example.\n");
        assert_eq!(plain.servers, vec!["127.0.0.1:53".parse().unwrap()]);
        assert_eq!(plain.candidates("app.internal"), vec!["app.internal", "app.internal.example"]);
    }
}
