//! `LBDiscover`: what a DNS name says a balancer's members are, and what has to change in the
//! balancer to follow it. Plain Rust: the DNS client ([`dns`]), the lookup of one `LBDiscover`
//! line ([`lookup`]), and the comparison of an answer with the members a balancer has
//! ([`changes`]). The glue (`apache::discovery`) applies the changes to httpd's balancer.

pub mod dns;

use crate::config::{Discover, Family, Name};
use dns::{Data, Error, Record, SystemResolver};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// One member a name points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub address: IpAddr,
    pub port: u16,
    /// Loadfactor x 100 (as httpd keeps it): an SRV record's weight, or `loadfactor=`.
    pub loadfactor: u32,
    /// An SRV record's priority as a rank (0 for the lowest priority number), or `lbset=`.
    pub lbset: i32,
}

/// A successful lookup: its members (sorted, no duplicates) and how long it may be kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub targets: Vec<Target>,
    /// The smallest TTL of the records used, in seconds.
    pub ttl: u32,
    /// The server that answered.
    pub server: SocketAddr,
    /// Part of the answer failed (an address type or an SRV target timed out or got
    /// SERVFAIL): what it has is added, but nothing missing from it is taken to be gone.
    pub partial: bool,
}

/// Most targets taken from one answer.
pub const MAX_TARGETS: usize = 256;

/// Looks `discover`'s name up, asking `discover.resolver` or else the servers of `system`
/// in turn, each until one answers; all before `discover.dns_timeout` is up. An answer with
/// no address is an error too: a name that says "nothing" is kept as it was last seen (the
/// members are never all drained because of what may be a DNS fault).
pub fn lookup(discover: &Discover, system: &SystemResolver) -> Result<Found, String> {
    let deadline = Instant::now() + discover.dns_timeout;
    let (servers, names) = match discover.resolver {
        Some(server) => (vec![server], vec![discover.asked().trim_end_matches('.').to_string()]),
        None => (system.servers.clone(), system.candidates(discover.asked())),
    };
    let mut last_error = String::from("no name server to ask");
    for (i, server) in servers.iter().enumerate() {
        // Each server gets an equal share of the time left: a silent first server does not
        // use up the time of the others.
        let left = deadline.saturating_duration_since(Instant::now());
        let own = Instant::now() + left / (servers.len() - i) as u32;
        match lookup_at(discover, *server, &names, own) {
            Ok(Some(found)) => return Ok(found),
            Ok(None) => {
                last_error = format!("{server} knows no address for {}", names.join(" or "));
            }
            Err(error) => last_error = format!("{server}: {error}"),
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Err(last_error)
}

/// The lookup at one server: the first of `names` that has addresses.
fn lookup_at(
    discover: &Discover,
    server: SocketAddr,
    names: &[String],
    deadline: Instant,
) -> Result<Option<Found>, Error> {
    let member = &discover.member;
    for name in names {
        let mut partial = false;
        let (mut targets, ttl) = match &discover.name {
            Name::Addresses { port, .. } => {
                let Some((addresses, ttl)) =
                    addresses(server, name, discover.family, deadline, &mut partial)?
                else {
                    continue;
                };
                let targets = addresses
                    .into_iter()
                    .map(|address| Target {
                        address,
                        port: *port,
                        loadfactor: member.loadfactor.unwrap_or(100),
                        lbset: member.lbset.unwrap_or(0),
                    })
                    .collect::<Vec<_>>();
                (targets, ttl)
            }
            Name::Srv { .. } => {
                let Some(found) = srv(server, name, discover.family, deadline, &mut partial)? else {
                    continue;
                };
                found
            }
        };
        targets.sort_by_key(|t| (t.address, t.port));
        targets.dedup_by_key(|t| (t.address, t.port));
        targets.truncate(MAX_TARGETS);
        if !targets.is_empty() {
            return Ok(Some(Found { targets, ttl, server, partial }));
        }
    }
    Ok(None)
}

/// Whether an error is the server's definite "no" (it refuses the question: dnsmasq without an
/// upstream, for a type it has no record of) rather than a fault (no answer, SERVFAIL).
fn definite(error: &Error) -> bool {
    matches!(error, Error::Server(5))
}

/// The addresses of `name` and their smallest TTL; `None` when it has none. `partial` is set
/// when a type failed by a fault while another gave addresses.
fn addresses(
    server: SocketAddr,
    name: &str,
    family: Family,
    deadline: Instant,
    partial: &mut bool,
) -> Result<Option<(Vec<IpAddr>, u32)>, Error> {
    let types: &[u16] = match family {
        Family::Any => &[dns::A, dns::AAAA],
        Family::Ipv4 => &[dns::A],
        Family::Ipv6 => &[dns::AAAA],
    };
    let (mut found, mut ttl, mut failure) = (Vec::new(), u32::MAX, None);
    for &qtype in types {
        // A server that refuses or fails one type (some refuse AAAA for names they only have
        // an A record for) does not sink the other's answer.
        let response = match dns::ask(server, name, qtype, deadline) {
            Ok(response) => response,
            Err(error) => {
                *partial |= !definite(&error);
                failure.get_or_insert(error);
                continue;
            }
        };
        let before = found.len();
        found.extend(response.answers.iter().filter_map(|record| match (qtype, &record.data) {
            (dns::A, Data::Address(address @ IpAddr::V4(_))) => Some(*address),
            (dns::AAAA, Data::Address(address @ IpAddr::V6(_))) => Some(*address),
            _ => None,
        }));
        // The TTLs of the CNAMEs that led to the addresses count too.
        if found.len() > before {
            ttl = response.answers.iter().fold(ttl, |t, r| t.min(r.ttl));
        }
    }
    match failure {
        Some(error) if found.is_empty() => Err(error),
        _ => Ok((!found.is_empty()).then_some((found, ttl))),
    }
}

/// The targets of SRV name `name`: each target's addresses (from the additional section, or
/// asked), weights as loadfactors (1 to 100) and priorities as lbsets (ranked).
fn srv(
    server: SocketAddr,
    name: &str,
    family: Family,
    deadline: Instant,
    partial: &mut bool,
) -> Result<Option<(Vec<Target>, u32)>, Error> {
    let response = dns::ask(server, name, dns::SRV, deadline)?;
    let mut ttl = u32::MAX;
    let records: Vec<(u16, u16, u16, &str)> = response
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            // A target of "." says the service is not offered here.
            Data::Srv { priority, weight, port, target } if !target.is_empty() && *port > 0 => {
                ttl = ttl.min(record.ttl);
                Some((*priority, *weight, *port, target.as_str()))
            }
            _ => None,
        })
        .collect();
    let mut priorities: Vec<u16> = records.iter().map(|r| r.0).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let mut targets = Vec::new();
    let mut failure = None;
    for (k, &(priority, weight, port, target)) in records.iter().enumerate() {
        let given = given_addresses(&response.additional, target, family);
        let (addresses, target_ttl) = if given.0.is_empty() {
            // Each target asked gets a share of the time left; one that fails is left out.
            let left = deadline.saturating_duration_since(Instant::now());
            let own = Instant::now() + left / (records.len() - k) as u32;
            match addresses(server, target, family, own, partial) {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(error) => {
                    *partial |= !definite(&error);
                    failure.get_or_insert(error);
                    continue;
                }
            }
        } else {
            given
        };
        ttl = ttl.min(target_ttl);
        let lbset = priorities.iter().position(|&p| p == priority).unwrap_or(0).min(99) as i32;
        // Weights are relative within a priority: a tier whose heaviest weight is above 100
        // (httpd's largest loadfactor) is scaled down, keeping the proportions.
        let heaviest = records.iter().filter(|r| r.0 == priority).map(|r| u32::from(r.1)).max().unwrap_or(1);
        let weight = u32::from(weight);
        let scaled = if heaviest > 100 { (weight * 100 + heaviest / 2) / heaviest } else { weight };
        let loadfactor = scaled.clamp(1, 100) * 100;
        targets.extend(addresses.into_iter().map(|address| Target { address, port, loadfactor, lbset }));
    }
    match failure {
        Some(error) if targets.is_empty() => Err(error),
        _ => Ok((!targets.is_empty()).then_some((targets, ttl))),
    }
}

/// Addresses of `target` that the server sent along in the additional section.
fn given_addresses(additional: &[Record], target: &str, family: Family) -> (Vec<IpAddr>, u32) {
    let mut ttl = u32::MAX;
    let addresses = additional
        .iter()
        .filter(|r| r.name.eq_ignore_ascii_case(target.trim_end_matches('.')))
        .filter_map(|r| match r.data {
            Data::Address(address) if family_takes(family, address) => {
                ttl = ttl.min(r.ttl);
                Some(address)
            }
            _ => None,
        })
        .collect();
    (addresses, ttl)
}

fn family_takes(family: Family, address: IpAddr) -> bool {
    match family {
        Family::Any => true,
        Family::Ipv4 => address.is_ipv4(),
        Family::Ipv6 => address.is_ipv6(),
    }
}

/// When to ask again after an answer with `ttl`, within the line's bounds.
pub fn refresh_after(discover: &Discover, ttl: u32) -> Duration {
    Duration::from_secs(u64::from(ttl)).clamp(discover.ttl_min, discover.ttl_max)
}

/// When to ask again after a failure: soon, but backing off to `ttl-max` (1, 2, 4 ... seconds).
pub fn retry_after(discover: &Discover, failures: u32) -> Duration {
    let backoff = Duration::from_secs(1u64 << failures.min(12));
    backoff.clamp(Duration::from_secs(1), discover.ttl_max.max(Duration::from_secs(1)))
}

/// Where a member found by a name stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// In the last answer: takes requests.
    Serving,
    /// Gone from the answer: takes no new request; those in flight finish.
    Draining,
    /// Gone, and nothing was in flight any more: disabled until the name has it again.
    Removed,
}

/// A member a name has given the balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub target: Target,
    pub standing: Standing,
}

/// What to do to follow an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new address: add a member.
    Add(Target),
    /// Known member `usize` (an index into the known list) is in the answer again.
    Return(usize, Target),
    /// Known member `usize` serves on with another loadfactor or lbset (SRV).
    Reweigh(usize, Target),
    /// Known member `usize` is no longer in the answer.
    Drain(usize),
}

/// The changes that make `known` follow `targets`.
pub fn changes(known: &[Known], targets: &[Target]) -> Vec<Change> {
    let mut out = Vec::new();
    let same = |a: &Target, b: &Target| a.address == b.address && a.port == b.port;
    for target in targets {
        match known.iter().position(|k| same(&k.target, target)) {
            None => out.push(Change::Add(*target)),
            Some(i) if known[i].standing != Standing::Serving => out.push(Change::Return(i, *target)),
            Some(i) if known[i].target != *target => out.push(Change::Reweigh(i, *target)),
            Some(_) => {}
        }
    }
    for (i, k) in known.iter().enumerate() {
        if k.standing == Standing::Serving && !targets.iter().any(|t| same(t, &k.target)) {
            out.push(Change::Drain(i));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(last: u8, port: u16) -> Target {
        Target { address: IpAddr::from([127, 0, 0, last]), port, loadfactor: 100, lbset: 0 }
    }

    #[test]
    fn an_answer_adds_drains_returns_and_reweighs() {
        let known = [
            Known { target: target(2, 80), standing: Standing::Serving },
            Known { target: target(3, 80), standing: Standing::Serving },
            Known { target: target(4, 80), standing: Standing::Removed },
            Known { target: target(5, 80), standing: Standing::Draining },
        ];
        let heavier = Target { loadfactor: 300, ..target(3, 80) };
        let answer = [target(2, 80), heavier, target(4, 80), target(6, 80), target(2, 81)];
        assert_eq!(
            changes(&known, &answer),
            vec![
                Change::Reweigh(1, heavier),
                Change::Return(2, target(4, 80)),
                Change::Add(target(6, 80)),
                Change::Add(target(2, 81)),
            ]
        );
        assert_eq!(changes(&known, &[target(3, 80)]), vec![Change::Drain(0)]);
        assert!(changes(&known[..2], &[target(2, 80), target(3, 80)]).is_empty());
    }

    /// A name server on 127.0.0.1 that answers every A query with `address` (TTL 5) and every
    /// other query with no record, for `queries` queries.
    fn answering(address: [u8; 4], queries: usize) -> std::net::SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            for _ in 0..queries {
                let Ok((n, from)) = socket.recv_from(&mut buffer) else { return };
                let query = &buffer[..n];
                let mut answer = query.to_vec();
                answer[2..4].copy_from_slice(&0x8180u16.to_be_bytes());
                let is_a = query[n - 4..n - 2] == [0, 1];
                if is_a {
                    answer[6..8].copy_from_slice(&1u16.to_be_bytes());
                    answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
                    answer.extend_from_slice(&address);
                }
                let _ = socket.send_to(&answer, from);
            }
        });
        addr
    }

    fn discover(args: &[&str]) -> Discover {
        let mut settings = crate::config::BalancerSettings::default();
        crate::config::Directive::Discover.apply(&mut settings, args, |_| unreachable!()).unwrap();
        settings.discover.remove(0)
    }

    #[test]
    fn a_silent_first_name_server_leaves_time_for_the_next() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let good = answering([127, 0, 0, 9], 4);
        let system = SystemResolver {
            servers: vec![silent.local_addr().unwrap(), good],
            search: Vec::new(),
            ndots: 1,
        };
        let found = lookup(&discover(&["http://app.test:8080", "dns-timeout=1s"]), &system).unwrap();
        assert_eq!(found.server, good);
        assert_eq!(found.targets[0].address, IpAddr::from([127, 0, 0, 9]));
        assert_eq!(found.ttl, 5);
    }

    #[test]
    fn refreshes_follow_the_ttl_within_bounds() {
        let d = crate::config::Directive::Discover;
        let mut settings = crate::config::BalancerSettings::default();
        d.apply(&mut settings, &["http://app.test", "ttl-min=2s", "ttl-max=20s"], |_| unreachable!())
            .unwrap();
        let discover = &settings.discover[0];
        assert_eq!(refresh_after(discover, 0), Duration::from_secs(2));
        assert_eq!(refresh_after(discover, 5), Duration::from_secs(5));
        assert_eq!(refresh_after(discover, 600), Duration::from_secs(20));
        assert_eq!(retry_after(discover, 0), Duration::from_secs(1));
        assert_eq!(retry_after(discover, 3), Duration::from_secs(8));
        assert_eq!(retry_after(discover, 30), Duration::from_secs(20));
    }
}
