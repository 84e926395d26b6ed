//! This module's directives and the settings they produce, as plain Rust: parsing and checking
//! every value, and finding a balancer's settings. The httpd side (the command table and the
//! per-server configuration records) is in [`crate::directives`].
//!
//! Every directive goes inside `<Proxy "balancer://name">` and applies to that balancer, in the
//! virtual host where it is written (virtual hosts inherit the main server's balancers and
//! their settings, as httpd does for the balancers themselves).

mod discover;
mod outlier;

// The glue alone uses `MemberParams`, and the glue is left out of test builds.
#[cfg_attr(test, allow(unused_imports))]
pub use discover::{Discover, Family, MemberParams, Name};
pub use outlier::{Failures, Outliers};
use std::any::Any;
use std::ffi::CStr;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Settings of one balancer. `None` means "not written": the default applies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BalancerSettings {
    /// `LBSlowStart`: ramp time of a member that becomes usable again.
    pub slow_start: Option<Duration>,
    /// `LBMaxInflight`: the most attempts in flight to one member, across all processes.
    pub max_inflight: Option<Cap>,
    /// `LBHashKey`: what `byhash` hashes.
    pub hash_key: Option<HashKey>,
    /// `LBHashBalanceFactor`: `c` of the load bound; infinite when `off`.
    pub hash_balance_factor: Option<f64>,
    /// `LBLatencyDecay`: how fast `bylatency`'s estimates forget.
    pub latency_decay: Option<Duration>,
    /// `LBOutlierDetection`: which outcomes are failures, and when a member that fails is
    /// ejected.
    pub outliers: Option<Outliers>,
    /// `LBQueue`: how long, and how many, requests may wait for a place when every usable
    /// member is at its `LBMaxInflight` cap.
    pub queue: Option<Queue>,
    /// `LBDiscover`: DNS names whose addresses are members, followed as they change.
    pub discover: Vec<Discover>,
}

/// `LBQueue timeout=<time> [max=<n>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queue {
    /// The longest a request waits; then it is refused (503 with `Retry-After`).
    pub timeout: Duration,
    /// The most requests waiting at once, across all processes; one more is refused at once.
    pub max: u32,
}

/// `LBQueue`'s `max` when not written, and the most it may be: the waiting list of a balancer
/// in shared memory has room for twice as many tickets (`shm::queue`).
pub const MAX_QUEUED: u32 = 1024;
/// The longest `LBQueue timeout=`.
const MAX_QUEUE_TIMEOUT: Duration = Duration::from_secs(300);

/// `LBHashBalanceFactor` when not written (HAProxy's and the paper's usual value).
pub const DEFAULT_HASH_BALANCE_FACTOR: f64 = 1.25;
/// `LBLatencyDecay` when not written: how long an estimate takes to come down (by 1/e) once a
/// member answers fast again. Short, because a slow sample raises it at once and `bylatency`
/// probes avoided members once a second (see `methods::bylatency`).
pub const DEFAULT_LATENCY_DECAY: Duration = Duration::from_millis(250);

impl BalancerSettings {
    /// The load bound's factor, `None` when the bound is off.
    pub fn balance_factor(&self) -> Option<f64> {
        Some(self.hash_balance_factor.unwrap_or(DEFAULT_HASH_BALANCE_FACTOR)).filter(|c| c.is_finite())
    }

    pub fn latency_decay(&self) -> Duration {
        self.latency_decay.unwrap_or(DEFAULT_LATENCY_DECAY)
    }

    /// Outlier detection's settings, when it is on.
    pub fn outlier_detection(&self) -> Option<&Outliers> {
        self.outliers.as_ref().filter(|o| o.enabled)
    }

    /// What counts as a member's failure (for outlier detection and `bylatency`).
    pub fn failures(&self) -> &Failures {
        static DEFAULT: std::sync::LazyLock<Failures> = std::sync::LazyLock::new(Failures::default);
        self.outliers.as_ref().map_or(&DEFAULT, |o| &o.failures)
    }

    /// These settings with those written in `over` on top.
    fn overlaid(&self, over: &BalancerSettings) -> BalancerSettings {
        BalancerSettings {
            slow_start: over.slow_start.or(self.slow_start),
            max_inflight: over.max_inflight.or(self.max_inflight),
            hash_key: over.hash_key.clone().or_else(|| self.hash_key.clone()),
            hash_balance_factor: over.hash_balance_factor.or(self.hash_balance_factor),
            latency_decay: over.latency_decay.or(self.latency_decay),
            outliers: over.outliers.clone().or_else(|| self.outliers.clone()),
            queue: over.queue.or(self.queue),
            discover: if over.discover.is_empty() { self.discover.clone() } else { over.discover.clone() },
        }
    }
}

/// The `LBHashKey` expression: its text, and the compiled form httpd evaluates.
#[derive(Clone, Debug, PartialEq)]
pub struct HashKey {
    pub source: String,
    pub compiled: Compiled,
}

/// An expression as httpd parsed it, opaque here: whatever the glue's parser made of it, which
/// the glue alone reads back.
#[derive(Clone)]
pub struct Compiled(Arc<dyn Any + Send + Sync>);

impl Compiled {
    pub fn new<T: Any + Send + Sync>(parsed: T) -> Compiled {
        Compiled(Arc::new(parsed))
    }

    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl PartialEq for Compiled {
    fn eq(&self, other: &Compiled) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Compiled")
    }
}

/// A per-member in-flight limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub limit: u32,
    /// `per-loadfactor`: the limit is per unit of loadfactor (a member with loadfactor 2 may
    /// have twice as many in flight).
    pub per_loadfactor: bool,
}

impl Cap {
    /// The limit for a member whose loadfactor x 100 is `lbfactor`.
    pub fn for_member(self, lbfactor: u32) -> u64 {
        if self.per_loadfactor {
            (u64::from(self.limit) * u64::from(lbfactor)).div_ceil(100).max(1)
        } else {
            u64::from(self.limit)
        }
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.limit, if self.per_loadfactor { " per-loadfactor" } else { "" })
    }
}

/// The settings written in one server (virtual host), by balancer name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerSettings {
    balancers: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    /// Lowercased `balancer://name`.
    name: String,
    settings: BalancerSettings,
    /// The directives written for it in this server (empty when all came from the main server).
    written: Vec<Directive>,
}

impl ServerSettings {
    /// The settings of `balancer` (`balancer://name`, any case), default when none are written.
    pub fn balancer(&self, balancer: &str) -> BalancerSettings {
        self.entry(balancer).map(|e| e.settings.clone()).unwrap_or_default()
    }

    fn entry(&self, balancer: &str) -> Option<&Entry> {
        let key = balancer_key(balancer);
        self.balancers.iter().find(|e| e.name == key)
    }

    fn entry_mut(&mut self, balancer: &str) -> &mut Entry {
        let key = balancer_key(balancer);
        let index = match self.balancers.iter().position(|e| e.name == key) {
            Some(index) => index,
            None => {
                let entry = Entry { name: key, settings: BalancerSettings::default(), written: Vec::new() };
                self.balancers.push(entry);
                self.balancers.len() - 1
            }
        };
        &mut self.balancers[index]
    }

    /// Applies `directive` with `args`, written inside `<Proxy "balancer">` in this server.
    ///
    /// `compile` turns an `LBHashKey` expression into httpd's parsed form, or says why not.
    pub fn apply(
        &mut self,
        balancer: &str,
        directive: Directive,
        args: &[&str],
        compile: impl FnOnce(&str) -> Result<Compiled, String>,
    ) -> Result<(), String> {
        let entry = self.entry_mut(balancer);
        directive.apply(&mut entry.settings, args, compile)?;
        if !entry.written.contains(&directive) {
            entry.written.push(directive);
        }
        Ok(())
    }

    /// A virtual host's settings: the main server's, with the virtual host's own on top.
    pub fn merge(base: &ServerSettings, own: &ServerSettings) -> ServerSettings {
        let mut merged = ServerSettings {
            balancers: base.balancers.iter().map(|e| Entry { written: Vec::new(), ..e.clone() }).collect(),
        };
        for entry in &own.balancers {
            let target = merged.entry_mut(&entry.name);
            target.settings = target.settings.overlaid(&entry.settings);
            target.written = entry.written.clone();
        }
        merged
    }

    /// Errors for settings written here for balancers this server does not have (`known`:
    /// the names of its balancers). Settings inherited from the main server are not checked
    /// here: with `BalancerInherit Off` a virtual host legitimately lacks the main server's.
    pub fn check(&self, known: &[String]) -> Vec<String> {
        self.balancers
            .iter()
            .filter(|e| !e.written.is_empty() && !known.iter().any(|k| balancer_key(k) == e.name))
            .map(|e| {
                let directives: Vec<&str> = e.written.iter().map(|d| d.name()).collect();
                format!(
                    "{} in <Proxy \"{}\">: no balancer has that name here (a balancer needs a BalancerMember, or \
                     a ProxySet line when its members come from LBDiscover)",
                    directives.join(" and "),
                    e.name
                )
            })
            .collect()
    }
}

/// A balancer name as httpd keys it (`ap_proxy_get_balancer`): lowercased, with any path after
/// the name cut off, so `<Proxy "balancer://App/">` is `balancer://app`.
fn balancer_key(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let host_start = lower.find("://").map_or(0, |i| i + 3);
    match lower[host_start..].find('/') {
        Some(slash) => lower[..host_start + slash].to_string(),
        None => lower,
    }
}

/// A directive of this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Directive {
    SlowStart,
    MaxInflight,
    HashKey,
    HashBalanceFactor,
    LatencyDecay,
    OutlierDetection,
    Queue,
    Discover,
}

impl Directive {
    pub const ALL: [Directive; 8] = [
        Directive::SlowStart,
        Directive::MaxInflight,
        Directive::HashKey,
        Directive::HashBalanceFactor,
        Directive::LatencyDecay,
        Directive::OutlierDetection,
        Directive::Queue,
        Directive::Discover,
    ];

    /// The directive's name, as httpd's command table needs it.
    pub const fn c_name(self) -> &'static CStr {
        match self {
            Directive::SlowStart => c"LBSlowStart",
            Directive::MaxInflight => c"LBMaxInflight",
            Directive::HashKey => c"LBHashKey",
            Directive::HashBalanceFactor => c"LBHashBalanceFactor",
            Directive::LatencyDecay => c"LBLatencyDecay",
            Directive::OutlierDetection => c"LBOutlierDetection",
            Directive::Queue => c"LBQueue",
            Directive::Discover => c"LBDiscover",
        }
    }

    /// The one-line syntax httpd prints for a misused directive (and `httpd -L`).
    pub const fn c_help(self) -> &'static CStr {
        match self {
            Directive::SlowStart => {
                c"LBSlowStart <time>: a member that becomes usable again ramps its weight up over this time (e.g. 30s)"
            }
            Directive::MaxInflight => {
                c"LBMaxInflight <n> [per-loadfactor]: most requests in flight to one member across all processes"
            }
            Directive::HashKey => {
                c"LBHashKey <expression>: what byhash hashes, an Apache string expression such as \"%{REMOTE_ADDR}\""
            }
            Directive::HashBalanceFactor => {
                c"LBHashBalanceFactor <c>|off: byhash skips a member above c times the average load (default 1.25)"
            }
            Directive::LatencyDecay => {
                c"LBLatencyDecay <time>: how fast bylatency's latency estimate comes down again (default 250ms)"
            }
            Directive::OutlierDetection => {
                c"LBOutlierDetection on|off [key=value ...]: eject members that fail (consecutive=5 eject=10s max-ejected=50% ...)"
            }
            Directive::Queue => {
                c"LBQueue timeout=<time> [max=<n>]: requests wait in line, up to that long, when every member is at its LBMaxInflight cap"
            }
            Directive::Discover => {
                c"LBDiscover <url> [key=value ...]: members from a DNS name, followed as it changes (http://app.internal:8080 or srv+http://_http._tcp.app.internal)"
            }
        }
    }

    pub fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or_default()
    }

    pub fn help(self) -> &'static str {
        self.c_help().to_str().unwrap_or_default()
    }

    /// Applies the directive's arguments (`args`, already split by httpd) to `settings`;
    /// `compile` parses an `LBHashKey` expression (see [`ServerSettings::apply`]).
    pub fn apply(
        self,
        settings: &mut BalancerSettings,
        args: &[&str],
        compile: impl FnOnce(&str) -> Result<Compiled, String>,
    ) -> Result<(), String> {
        match self {
            Directive::SlowStart => {
                let [value] = args else { return Err(self.usage()) };
                let ramp = parse_duration(value).map_err(|why| self.invalid(value, &why))?;
                if ramp.is_zero() || ramp > MAX_SLOW_START {
                    return Err(self.invalid(value, "expected a time from 1ms to 1h"));
                }
                settings.slow_start = Some(ramp);
            }
            Directive::MaxInflight => {
                let (value, per_loadfactor) = match args {
                    [value] => (*value, false),
                    [value, "per-loadfactor"] => (*value, true),
                    [_, other] => return Err(self.invalid(other, "the only option is per-loadfactor")),
                    _ => return Err(self.usage()),
                };
                let limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_INFLIGHT_LIMIT).contains(n))
                    .ok_or_else(|| self.invalid(value, "expected a whole number from 1 to 1000000"))?;
                settings.max_inflight = Some(Cap { limit, per_loadfactor });
            }
            Directive::HashKey => {
                let [source] = args else { return Err(self.usage()) };
                if source.trim().is_empty() {
                    return Err(self.invalid(source, "the expression is empty"));
                }
                let compiled = compile(source).map_err(|why| self.invalid(source, &why))?;
                settings.hash_key = Some(HashKey { source: source.to_string(), compiled });
            }
            Directive::HashBalanceFactor => {
                let [value] = args else { return Err(self.usage()) };
                let factor = if value.eq_ignore_ascii_case("off") {
                    f64::INFINITY
                } else {
                    value.parse::<f64>().ok().filter(|c| (1.0..=100.0).contains(c)).ok_or_else(|| {
                        self.invalid(value, "expected a number from 1 to 100 (such as 1.25), or off")
                    })?
                };
                settings.hash_balance_factor = Some(factor);
            }
            Directive::LatencyDecay => {
                let [value] = args else { return Err(self.usage()) };
                let decay = parse_duration(value).map_err(|why| self.invalid(value, &why))?;
                if decay < Duration::from_millis(10) || decay > Duration::from_secs(3600) {
                    return Err(self.invalid(value, "expected a time from 10ms to 1h"));
                }
                settings.latency_decay = Some(decay);
            }
            Directive::OutlierDetection => {
                let outliers = outlier::parse(args).map_err(|why| format!("{}: {why}", self.name()))?;
                settings.outliers = Some(outliers);
            }
            Directive::Queue => settings.queue = Some(self.parse_queue(args)?),
            Directive::Discover => {
                let discover = discover::parse(args).map_err(|why| format!("{}: {why}", self.name()))?;
                if settings.discover.iter().any(|d| d.source.eq_ignore_ascii_case(&discover.source)) {
                    return Err(self.invalid(&discover.source, "written twice for this balancer"));
                }
                settings.discover.push(discover);
            }
        }
        Ok(())
    }

    /// `timeout=<time> [max=<n>]`, in any order; `timeout=` is required.
    fn parse_queue(self, args: &[&str]) -> Result<Queue, String> {
        let (mut timeout, mut max) = (None, MAX_QUEUED);
        if args.is_empty() {
            return Err(self.usage());
        }
        for arg in args {
            match arg.split_once('=') {
                Some(("timeout", value)) => {
                    let time = parse_duration(value).map_err(|why| self.invalid(arg, &why))?;
                    if time.is_zero() || time > MAX_QUEUE_TIMEOUT {
                        return Err(self.invalid(arg, "expected a time from 1ms to 300s"));
                    }
                    timeout = Some(time);
                }
                Some(("max", value)) => {
                    max = value.parse::<u32>().ok().filter(|n| (1..=MAX_QUEUED).contains(n)).ok_or_else(
                        || self.invalid(arg, &format!("expected a whole number from 1 to {MAX_QUEUED}")),
                    )?;
                }
                _ => return Err(self.invalid(arg, "expected timeout=<time> or max=<n>")),
            }
        }
        let timeout = timeout
            .ok_or_else(|| format!("{}: timeout=<time> is missing; usage: {}", self.name(), self.help()))?;
        Ok(Queue { timeout, max })
    }

    fn invalid(self, value: &str, why: &str) -> String {
        format!("{}: invalid value \"{value}\": {why}", self.name())
    }

    fn usage(self) -> String {
        format!("{}: wrong number of arguments; usage: {}", self.name(), self.help())
    }

    /// The error for a directive written outside `<Proxy "balancer://...">`.
    pub fn misplaced(self, section: Option<&str>) -> String {
        match section {
            Some(path) => format!(
                "{} is only valid inside <Proxy \"balancer://...\">, not in a section for \"{path}\"",
                self.name()
            ),
            None => format!("{} is only valid inside <Proxy \"balancer://...\">", self.name()),
        }
    }
}

const MAX_SLOW_START: Duration = Duration::from_secs(3600);
const MAX_INFLIGHT_LIMIT: u32 = 1_000_000;

/// Parses `30`, `30s`, `500ms`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 =
        digits.parse().map_err(|_| "expected a number with an optional unit (ms, s, m, h)".to_string())?;
    let millis = match unit {
        "" | "s" => number.checked_mul(1000),
        "ms" => Some(number),
        "m" | "min" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => return Err(format!("unknown unit \"{unit}\" (use ms, s, m or h)")),
    };
    millis.map(Duration::from_millis).ok_or_else(|| "too large".to_string())
}

/// A section path (`cmd->path`) names a balancer: `balancer://name`, any case, with or without a
/// path after the name (httpd ignores it).
pub fn section_balancer(path: &str) -> Option<&str> {
    let prefix = path.get(..11)?;
    let named = prefix.eq_ignore_ascii_case("balancer://") && !path[11..].starts_with('/') && path.len() > 11;
    (named && !path.contains(['*', '?', '['])).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_compiler(_: &str) -> Result<Compiled, String> {
        unreachable!("only LBHashKey compiles")
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("5 s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("10d").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
    }

    #[test]
    fn directives_check_their_values_and_name_themselves() {
        let mut s = BalancerSettings::default();
        Directive::SlowStart.apply(&mut s, &["30s"], no_compiler).unwrap();
        Directive::MaxInflight.apply(&mut s, &["8", "per-loadfactor"], no_compiler).unwrap();
        Directive::HashBalanceFactor.apply(&mut s, &["1.5"], no_compiler).unwrap();
        Directive::LatencyDecay.apply(&mut s, &["2s"], no_compiler).unwrap();
        Directive::HashKey.apply(&mut s, &["%{REMOTE_ADDR}"], |_| Ok(Compiled::new(42u32))).unwrap();
        assert_eq!(s.slow_start, Some(Duration::from_secs(30)));
        assert_eq!(s.max_inflight, Some(Cap { limit: 8, per_loadfactor: true }));
        assert_eq!(s.balance_factor(), Some(1.5));
        assert_eq!(s.latency_decay(), Duration::from_secs(2));
        let key = s.hash_key.as_ref().unwrap();
        assert_eq!((key.source.as_str(), key.compiled.get::<u32>()), ("%{REMOTE_ADDR}", Some(&42)));
        Directive::HashBalanceFactor.apply(&mut s, &["off"], no_compiler).unwrap();
        assert_eq!(s.balance_factor(), None);
        assert_eq!(BalancerSettings::default().balance_factor(), Some(1.25));
        assert_eq!(BalancerSettings::default().latency_decay(), Duration::from_millis(250));

        let bad: &[(Directive, &[&str], &str)] = &[
            (Directive::SlowStart, &["abc"], "\"abc\""),
            (Directive::SlowStart, &["0"], "\"0\""),
            (Directive::SlowStart, &["2h"], "\"2h\""),
            (Directive::SlowStart, &["1", "2"], "usage"),
            (Directive::MaxInflight, &["0"], "\"0\""),
            (Directive::MaxInflight, &["-3"], "\"-3\""),
            (Directive::MaxInflight, &["ten"], "\"ten\""),
            (Directive::MaxInflight, &["2000000"], "\"2000000\""),
            (Directive::MaxInflight, &["5", "scaled"], "\"scaled\""),
            (Directive::HashKey, &[""], "empty"),
            (Directive::HashKey, &["%{BROKEN"], "bad expression"),
            (Directive::HashBalanceFactor, &["0.5"], "\"0.5\""),
            (Directive::HashBalanceFactor, &["abc"], "\"abc\""),
            (Directive::LatencyDecay, &["1ms"], "\"1ms\""),
        ];
        for (directive, args, expected) in bad {
            let compiler = |_: &str| Err("bad expression".to_string());
            let err = directive.apply(&mut BalancerSettings::default(), args, compiler).unwrap_err();
            assert!(err.starts_with(directive.name()), "{err}");
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn caps_scale_with_loadfactor_on_request() {
        let plain = Cap { limit: 10, per_loadfactor: false };
        let scaled = Cap { limit: 10, per_loadfactor: true };
        assert_eq!(plain.for_member(300), 10);
        assert_eq!(scaled.for_member(300), 30);
        assert_eq!(scaled.for_member(150), 15);
        assert_eq!(Cap { limit: 1, per_loadfactor: true }.for_member(150), 2);
    }

    #[test]
    fn virtual_hosts_inherit_and_override() {
        let mut base = ServerSettings::default();
        base.apply("balancer://App", Directive::SlowStart, &["10s"], no_compiler).unwrap();
        base.apply("balancer://app", Directive::MaxInflight, &["5"], no_compiler).unwrap();
        let mut own = ServerSettings::default();
        own.apply("balancer://app", Directive::SlowStart, &["20s"], no_compiler).unwrap();
        let merged = ServerSettings::merge(&base, &own);
        let app = merged.balancer("BALANCER://APP/");
        assert_eq!(app.slow_start, Some(Duration::from_secs(20)));
        assert_eq!(app.max_inflight, Some(Cap { limit: 5, per_loadfactor: false }));
        assert_eq!(merged.balancer("balancer://other"), BalancerSettings::default());
    }

    #[test]
    fn settings_for_a_balancer_that_does_not_exist_are_an_error() {
        let mut main = ServerSettings::default();
        main.apply("balancer://app", Directive::SlowStart, &["10s"], no_compiler).unwrap();
        main.apply("balancer://typo", Directive::MaxInflight, &["5"], no_compiler).unwrap();
        let errors = main.check(&["balancer://APP".to_string()]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("LBMaxInflight in <Proxy \"balancer://typo\">"), "{errors:?}");

        // A virtual host that does not inherit the main server's balancers is not blamed for
        // the main server's settings.
        let vhost = ServerSettings::merge(&main, &ServerSettings::default());
        assert!(vhost.check(&[]).is_empty());
    }

    #[test]
    fn only_balancer_sections_take_directives() {
        assert_eq!(section_balancer("balancer://app"), Some("balancer://app"));
        assert_eq!(section_balancer("BALANCER://app"), Some("BALANCER://app"));
        assert_eq!(section_balancer("balancer://"), None);
        assert_eq!(section_balancer("http://x"), None);
        assert_eq!(section_balancer("/"), None);
        assert_eq!(section_balancer("balancer://a*"), None);
        assert_eq!(section_balancer("balancer://app/"), Some("balancer://app/"));
        assert_eq!(section_balancer("balancer:///"), None);
    }

    #[test]
    fn balancer_names_are_keyed_as_httpd_keys_them() {
        assert_eq!(balancer_key("balancer://App/"), "balancer://app");
        assert_eq!(balancer_key("balancer://app/some/path"), "balancer://app");
        assert_eq!(balancer_key("BALANCER://APP"), "balancer://app");
        let mut main = ServerSettings::default();
        main.apply("balancer://App/", Directive::MaxInflight, &["5"], no_compiler).unwrap();
        assert!(main.check(&["balancer://app".to_string()]).is_empty(), "the section with a slash names app");
        assert_eq!(
            main.balancer("balancer://app").max_inflight,
            Some(Cap { limit: 5, per_loadfactor: false })
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn directive() -> impl Strategy<Value = Directive> {
            prop::sample::select(Directive::ALL.to_vec())
        }

        proptest! {
            /// Any arguments: an answer, never a panic; a refusal names the directive, and the
            /// value when there is exactly one.
            #[test]
            fn every_directive_answers_any_arguments(
                directive in directive(),
                args in prop::collection::vec(".{0,12}", 0..4),
            ) {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let result = directive.apply(&mut BalancerSettings::default(), &args, |_| Ok(Compiled::new(1u32)));
                if let Err(message) = result {
                    prop_assert!(message.starts_with(directive.name()), "{}", message);
                    if let [value] = args[..] {
                        prop_assert!(message.contains(&format!("\"{value}\"")) || message.contains("usage"), "{}", message);
                    }
                }
            }

            #[test]
            fn durations_read_back_what_they_say(n in 0u64..100_000, unit in prop::sample::select(vec!["", "ms", "s", "m", "h"])) {
                let millis = match unit { "ms" => n, "" | "s" => n * 1000, "m" => n * 60_000, _ => n * 3_600_000 };
                prop_assert_eq!(parse_duration(&format!("{n}{unit}")), Ok(Duration::from_millis(millis)));
            }

            #[test]
            fn max_inflight_takes_exactly_1_to_a_million(n in any::<i64>()) {
                let mut s = BalancerSettings::default();
                let accepted = Directive::MaxInflight.apply(&mut s, &[&n.to_string()], |_| Ok(Compiled::new(0u32))).is_ok();
                prop_assert_eq!(accepted, (1..=1_000_000).contains(&n));
            }

            #[test]
            fn balance_factor_takes_1_to_100_or_off(c in any::<f64>()) {
                let mut s = BalancerSettings::default();
                let accepted = Directive::HashBalanceFactor.apply(&mut s, &[&c.to_string()], |_| Ok(Compiled::new(0u32))).is_ok();
                prop_assert_eq!(accepted, (1.0..=100.0).contains(&c));
                if accepted {
                    prop_assert!(s.balance_factor().is_some_and(f64::is_finite));
                }
            }

            #[test]
            fn a_cap_is_never_zero_and_grows_with_the_loadfactor(limit in 1u32..=1_000_000, a in 1u32..=10_000, b in 1u32..=10_000) {
                let cap = Cap { limit, per_loadfactor: true };
                prop_assert!(cap.for_member(a) >= 1);
                if a <= b {
                    prop_assert!(cap.for_member(a) <= cap.for_member(b));
                }
                prop_assert_eq!(Cap { limit, per_loadfactor: false }.for_member(a), u64::from(limit));
            }

            /// A balancer name keyed twice is keyed once; any case and path name one balancer.
            #[test]
            fn balancer_keys_are_stable(name in "[a-zA-Z0-9._-]{1,20}", path in "(/[a-z]{0,5}){0,3}") {
                let key = balancer_key(&format!("balancer://{name}{path}"));
                prop_assert_eq!(balancer_key(&key), key.clone());
                prop_assert_eq!(key, format!("balancer://{}", name.to_ascii_lowercase()));
            }
        }
    }
}
