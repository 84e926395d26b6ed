//! `LBDiscover <url> [key=value ...]`: a balancer's members from a DNS name.

use super::parse_duration;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One `LBDiscover` line.
#[derive(Clone, Debug, PartialEq)]
pub struct Discover {
    /// As written, for messages and the status page.
    pub source: String,
    /// The member scheme (`http`, `https`, `h2c`, `ajp`, ...).
    pub scheme: String,
    pub name: Name,
    /// The path members get after their address (`/app` in `http://app.internal:8080/app`).
    pub path: String,
    /// `resolver=`: the one name server to ask; `None`: the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// Bounds on how long an answer is kept before asking again (`ttl-min=`, `ttl-max=`).
    pub ttl_min: Duration,
    pub ttl_max: Duration,
    /// How long one lookup may take in all (`dns-timeout=`).
    pub dns_timeout: Duration,
    /// Which address records (`family=`).
    pub family: Family,
    /// Whether httpd may start when the name does not resolve (`startup=`).
    pub refuse_unresolved: bool,
    /// Member slots to keep free for addresses that appear (`slots=`).
    pub slots: u32,
    /// What every discovered member gets, as a `BalancerMember` would.
    pub member: MemberParams,
}

/// What is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Name {
    /// A and/or AAAA records of `host`; every address is a member on `port`.
    Addresses { host: String, port: u16 },
    /// SRV records of `name`: each target's addresses on the record's port, its weight as the
    /// loadfactor and its priority as the lbset.
    Srv { name: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Any,
    Ipv4,
    Ipv6,
}

/// `BalancerMember` parameters applied to every member found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberParams {
    /// Loadfactor x 100, as httpd keeps it.
    pub loadfactor: Option<u32>,
    pub lbset: Option<i32>,
    pub retry: Option<Duration>,
    pub timeout: Option<Duration>,
    pub connection_timeout: Option<Duration>,
    pub ping: Option<Duration>,
    pub keepalive: Option<bool>,
    pub disablereuse: Option<bool>,
    pub ttl: Option<Duration>,
    pub max: Option<u32>,
    /// mod_proxy_hcheck's parameters: the method (upper case, one of [`HC_METHODS`]), the
    /// interval, passes, fails and URI.
    pub hc_method: Option<String>,
    pub hc_interval: Option<Duration>,
    pub hc_passes: Option<u32>,
    pub hc_fails: Option<u32>,
    pub hc_uri: Option<String>,
}

/// The health check methods mod_proxy_hcheck implements for HTTP members.
pub const HC_METHODS: [&str; 7] = ["TCP", "OPTIONS", "HEAD", "GET", "OPTIONS11", "HEAD11", "GET11"];

/// Member slots kept free for discovered members when `slots=` is not written.
pub const DEFAULT_SLOTS: u32 = 64;
const MAX_SLOTS: u32 = 1000;
pub const DEFAULT_TTL_MIN: Duration = Duration::from_secs(1);
pub const DEFAULT_TTL_MAX: Duration = Duration::from_secs(30);
const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);

const SCHEMES: [(&str, u16); 10] = [
    ("http", 80),
    ("https", 443),
    ("h2c", 80),
    ("h2", 443),
    ("ws", 80),
    ("wss", 443),
    ("ajp", 8009),
    ("fcgi", 8000),
    ("scgi", 4000),
    ("uwsgi", 3031),
];

impl Discover {
    /// The member URL for an address and port, written as httpd writes a member's name: without
    /// the port when it is the scheme's default (`ap_proxy_port_of_scheme`).
    pub fn member_url(&self, address: IpAddr, port: u16) -> String {
        let port = match httpd_default_port(&self.scheme) {
            Some(default) if default == port => String::new(),
            _ => format!(":{port}"),
        };
        match address {
            IpAddr::V4(v4) => format!("{}://{v4}{port}{}", self.scheme, self.path),
            IpAddr::V6(v6) => format!("{}://[{v6}]{port}{}", self.scheme, self.path),
        }
    }

    /// The name asked, as written.
    pub fn asked(&self) -> &str {
        match &self.name {
            Name::Addresses { host, .. } => host,
            Name::Srv { name } => name,
        }
    }
}

/// The port httpd leaves out of a member's name for `scheme` (APR's table, then mod_proxy's;
/// uwsgi is in neither).
fn httpd_default_port(scheme: &str) -> Option<u16> {
    SCHEMES.iter().find(|(known, _)| *known == scheme && scheme != "uwsgi").map(|&(_, port)| port)
}

/// Parses `LBDiscover`'s arguments; the error names the bad one and says what was expected.
pub fn parse(args: &[&str]) -> Result<Discover, String> {
    let Some((url, options)) = args.split_first() else {
        return Err("wrong number of arguments; usage: LBDiscover <url> [key=value ...]".into());
    };
    let invalid = |value: &str, why: &str| format!("invalid value \"{value}\": {why}");
    let (scheme, name, path) = parse_url(url).map_err(|why| invalid(url, &why))?;
    let mut discover = Discover {
        source: url.to_string(),
        scheme,
        name,
        path,
        resolver: None,
        ttl_min: DEFAULT_TTL_MIN,
        ttl_max: DEFAULT_TTL_MAX,
        dns_timeout: DEFAULT_DNS_TIMEOUT,
        family: Family::Any,
        refuse_unresolved: false,
        slots: DEFAULT_SLOTS,
        member: MemberParams::default(),
    };
    for option in options {
        let Some((key, value)) = option.split_once('=') else {
            return Err(invalid(option, "expected key=value"));
        };
        let time = |lowest: Duration, highest: Duration, range: &str| {
            parse_duration(value)
                .ok()
                .filter(|t| (lowest..=highest).contains(t))
                .ok_or_else(|| invalid(option, &format!("expected a time from {range}")))
        };
        let switch = || match value.to_ascii_lowercase().as_str() {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(invalid(option, "expected on or off")),
        };
        let whole = |lowest: u32, highest: u32| {
            value.parse::<u32>().ok().filter(|n| (lowest..=highest).contains(n)).ok_or_else(|| {
                invalid(option, &format!("expected a whole number from {lowest} to {highest}"))
            })
        };
        let member = &mut discover.member;
        match key.to_ascii_lowercase().as_str() {
            "resolver" => {
                discover.resolver = Some(parse_resolver(value).map_err(|why| invalid(option, &why))?)
            }
            "ttl-min" => {
                discover.ttl_min = time(Duration::from_secs(1), Duration::from_secs(3600), "1s to 1h")?
            }
            "ttl-max" => {
                discover.ttl_max = time(Duration::from_secs(1), Duration::from_secs(86400), "1s to 24h")?
            }
            "dns-timeout" => {
                discover.dns_timeout =
                    time(Duration::from_millis(100), Duration::from_secs(30), "100ms to 30s")?
            }
            "family" => {
                discover.family = match value.to_ascii_lowercase().as_str() {
                    "any" => Family::Any,
                    "ipv4" => Family::Ipv4,
                    "ipv6" => Family::Ipv6,
                    _ => return Err(invalid(option, "expected any, ipv4 or ipv6")),
                }
            }
            "startup" => {
                discover.refuse_unresolved = match value.to_ascii_lowercase().as_str() {
                    "warn" => false,
                    "refuse" => true,
                    _ => return Err(invalid(option, "expected warn or refuse")),
                }
            }
            "slots" => discover.slots = whole(1, MAX_SLOTS)?,
            "loadfactor" => {
                let factor = value.parse::<f64>().ok().filter(|f| (1.0..=100.0).contains(f));
                let factor = factor.ok_or_else(|| invalid(option, "expected a number from 1 to 100"))?;
                member.loadfactor = Some((factor * 100.0) as u32);
            }
            "lbset" => member.lbset = Some(whole(0, 99)? as i32),
            "retry" => member.retry = Some(time(Duration::ZERO, Duration::from_secs(86400), "0 to 24h")?),
            "timeout" => {
                member.timeout =
                    Some(time(Duration::from_millis(1), Duration::from_secs(86400), "1ms to 24h")?)
            }
            "connectiontimeout" => {
                member.connection_timeout =
                    Some(time(Duration::from_millis(1), Duration::from_secs(86400), "1ms to 24h")?)
            }
            "ping" => {
                member.ping = Some(time(Duration::from_millis(1), Duration::from_secs(86400), "1ms to 24h")?)
            }
            "keepalive" => member.keepalive = Some(switch()?),
            "disablereuse" => member.disablereuse = Some(switch()?),
            "ttl" => {
                member.ttl = Some(time(Duration::from_secs(1), Duration::from_secs(86400), "1s to 24h")?)
            }
            "max" => member.max = Some(whole(1, 100_000)?),
            "hcmethod" => {
                let method = value.to_ascii_uppercase();
                if !HC_METHODS.contains(&method.as_str()) {
                    return Err(invalid(option, &format!("expected one of {}", HC_METHODS.join(", "))));
                }
                member.hc_method = Some(method);
            }
            "hcinterval" => {
                member.hc_interval =
                    Some(time(Duration::from_millis(100), Duration::from_secs(86400), "100ms to 24h")?)
            }
            "hcpasses" => member.hc_passes = Some(whole(0, 1000)?),
            "hcfails" => member.hc_fails = Some(whole(0, 1000)?),
            "hcuri" => {
                if value.len() >= 64
                    || !value.starts_with('/')
                    || value.contains(|c: char| c.is_whitespace() || c.is_control())
                {
                    return Err(invalid(option, "expected a path starting with /, under 64 characters"));
                }
                member.hc_uri = Some(value.to_string());
            }
            _ => {
                return Err(invalid(
                    option,
                    "unknown option; LBDiscover takes resolver=, ttl-min=, ttl-max=, dns-timeout=, family=, \
                     startup=, slots= and the member parameters loadfactor=, lbset=, retry=, timeout=, \
                     connectiontimeout=, ping=, keepalive=, disablereuse=, ttl=, max=, and mod_proxy_hcheck's \
                     hcmethod=, hcinterval=, hcpasses=, hcfails=, hcuri=",
                ));
            }
        }
    }
    if discover.ttl_min > discover.ttl_max {
        return Err(format!(
            "ttl-min ({}s) is longer than ttl-max ({}s)",
            discover.ttl_min.as_secs(),
            discover.ttl_max.as_secs()
        ));
    }
    if matches!(discover.name, Name::Srv { .. })
        && (discover.member.loadfactor.is_some() || discover.member.lbset.is_some())
    {
        return Err(format!(
            "invalid value \"{url}\": with an SRV name the records' weights are the loadfactors and their \
             priorities the lbsets; remove loadfactor= and lbset="
        ));
    }
    Ok(discover)
}

/// `scheme://host[:port][/path]` or `srv+scheme://_service._proto.name[/path]`.
fn parse_url(url: &str) -> Result<(String, Name, String), String> {
    let (scheme, rest) =
        url.split_once("://").ok_or("expected scheme://name[:port], e.g. http://app.internal:8080")?;
    let scheme = scheme.to_ascii_lowercase();
    let (srv, scheme) = match scheme.strip_prefix("srv+") {
        Some(inner) => (true, inner.to_string()),
        None => (false, scheme),
    };
    let default_port =
        SCHEMES.iter().find(|(known, _)| *known == scheme).map(|&(_, port)| port).ok_or_else(|| {
            format!("unknown scheme \"{scheme}\" (http, https, h2c, h2, ws, wss, ajp, fcgi, scgi, uwsgi)")
        })?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, ""),
    };
    let path = path.trim_end_matches('/').to_string();
    if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err("the path has spaces or control characters".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or("the port is not a number from 1 to 65535")?;
            (host, Some(port))
        }
        None => (authority, None),
    };
    let host = host.to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err("expected a DNS name, such as app.internal".into());
    }
    if host.parse::<IpAddr>().is_ok()
        || host.trim_end_matches('.').split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("an address, not a name: write it as a BalancerMember".into());
    }
    if srv {
        if port.is_some() {
            return Err("an SRV name has no port: its SRV records give each target's port".into());
        }
        Ok((scheme, Name::Srv { name: host }, path))
    } else {
        Ok((scheme, Name::Addresses { host, port: port.unwrap_or(default_port) }, path))
    }
}

/// `IP`, `IP:PORT`, `[IPv6]:PORT` (port 53 when not written).
fn parse_resolver(value: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = value.parse::<SocketAddr>() {
        return Ok(address);
    }
    let bare = value.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| "expected an address with an optional port, such as 127.0.0.1:8600 or [::1]:53".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_options_are_read() {
        let d = parse(&[
            "http://App.Internal:8080/shop/",
            "resolver=127.0.0.1:5353",
            "ttl-max=10s",
            "loadfactor=2.5",
            "retry=0",
        ])
        .unwrap();
        assert_eq!(d.name, Name::Addresses { host: "app.internal".into(), port: 8080 });
        assert_eq!(d.path, "/shop");
        assert_eq!(d.resolver, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(d.ttl_max, Duration::from_secs(10));
        assert_eq!(d.member.loadfactor, Some(250));
        assert_eq!(d.member.retry, Some(Duration::ZERO));
        assert_eq!(d.member_url("127.0.0.2".parse().unwrap(), 8080), "http://127.0.0.2:8080/shop");
        assert_eq!(d.member_url("::1".parse().unwrap(), 80), "http://[::1]/shop");
        assert_eq!(d.member_url("::1".parse().unwrap(), 443), "http://[::1]:443/shop");
        let https = parse(&["https://app"]).unwrap();
        assert_eq!(https.member_url("127.0.0.2".parse().unwrap(), 443), "https://127.0.0.2");
        let uwsgi = parse(&["uwsgi://app"]).unwrap();
        assert_eq!(uwsgi.member_url("127.0.0.2".parse().unwrap(), 3031), "uwsgi://127.0.0.2:3031");

        let srv = parse(&["srv+https://_app._tcp.service.consul", "resolver=[::1]"]).unwrap();
        assert_eq!(srv.scheme, "https");
        assert_eq!(srv.name, Name::Srv { name: "_app._tcp.service.consul".into() });
        assert_eq!(srv.resolver, Some("[::1]:53".parse().unwrap()));
        assert_eq!(
            parse(&["ajp://backend"]).unwrap().name,
            Name::Addresses { host: "backend".into(), port: 8009 }
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "usage"),
            (&["app.internal"], "\"app.internal\""),
            (&["gopher://app"], "unknown scheme"),
            (&["http://127.0.0.1:80"], "BalancerMember"),
            (&["http://app:0"], "\"http://app:0\""),
            (&["http://a pp"], "DNS name"),
            (&["srv+http://_x._tcp.app:80"], "no port"),
            (&["http://app", "resolver=app"], "\"resolver=app\""),
            (&["http://app", "ttl-min=0"], "\"ttl-min=0\""),
            (&["http://app", "ttl-min=10s", "ttl-max=5s"], "longer than ttl-max"),
            (&["http://app", "loadfactor=0.5"], "\"loadfactor=0.5\""),
            (&["http://app", "route=a"], "unknown option"),
            (&["http://app", "keepalive=yes"], "on or off"),
            (&["http://app", "startup=maybe"], "warn or refuse"),
            (&["http://app", "slots=0"], "\"slots=0\""),
            (&["srv+http://_x._tcp.app", "loadfactor=2"], "weights"),
            (&["http://app", "family"], "key=value"),
            (&["http://app", "hcmethod=PING"], "\"hcmethod=PING\""),
            (&["http://app", "hcinterval=10ms"], "\"hcinterval=10ms\""),
            (&["http://app", "hcuri=health"], "\"hcuri=health\""),
        ];
        for (args, expected) in cases {
            let err = parse(args).unwrap_err();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }
}
