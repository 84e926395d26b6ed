//! `LBOutlierDetection`: which outcomes of an attempt count as the member's failure, and when a
//! member that fails is ejected (`methods::outlier` has the rule).

use super::parse_duration;
use std::time::Duration;

/// What counts as a member's failure, for outlier detection and for `bylatency`'s estimate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failures {
    /// Gateway failures: no answer from the member (connection refused or reset, timeout),
    /// answered for it by httpd (502, 503, 504), or given up for another member (failover).
    pub gateway: bool,
    /// Any 5xx answer from the member itself.
    pub server_errors: bool,
    /// These answers from the member, whatever else is set.
    pub statuses: Vec<u16>,
}

impl Default for Failures {
    fn default() -> Failures {
        Failures { gateway: true, server_errors: true, statuses: Vec::new() }
    }
}

impl Failures {
    /// Whether an attempt failed: `answered` is the member's own status, if it answered.
    pub fn counts(&self, answered: Option<u16>) -> bool {
        match answered {
            None => self.gateway,
            Some(status) => (self.server_errors && status >= 500) || self.statuses.contains(&status),
        }
    }
}

/// `LBOutlierDetection` as written (defaults for what is not).
#[derive(Clone, Debug, PartialEq)]
pub struct Outliers {
    /// `on`: members that fail are ejected; `off`: only `failures` applies (to `bylatency`).
    pub enabled: bool,
    pub failures: Failures,
    /// Failures in a row that eject a member (0: never on that ground).
    pub consecutive: u32,
    /// The first ejection's length; each ejection in a row doubles it, up to `max_eject`.
    pub eject: Duration,
    pub max_eject: Duration,
    /// The largest share of a balancer's members ejected at once (at least one member).
    pub max_ejected_percent: u32,
    /// Success-rate ejection: a member whose success rate over the last `interval` is more
    /// than `stdev` standard deviations below the balancer's mean, among members with at least
    /// `min_requests` attempts, when at least `min_members` have that many.
    pub success_rate: bool,
    pub stdev: f64,
    pub min_requests: u64,
    pub min_members: u32,
    pub interval: Duration,
}

impl Default for Outliers {
    fn default() -> Outliers {
        Outliers {
            enabled: false,
            failures: Failures::default(),
            consecutive: 5,
            eject: Duration::from_secs(10),
            max_eject: Duration::from_secs(300),
            max_ejected_percent: 50,
            success_rate: true,
            stdev: 1.9,
            min_requests: 100,
            min_members: 5,
            interval: Duration::from_secs(10),
        }
    }
}

/// The parameters as a directive would write them (every one, defaults included).
impl std::fmt::Display for Outliers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut failures: Vec<String> = Vec::new();
        if self.failures.gateway {
            failures.push("gateway".into());
        }
        if self.failures.server_errors {
            failures.push("5xx".into());
        }
        failures.extend(self.failures.statuses.iter().map(u16::to_string));
        write!(
            f,
            "{} failures={} consecutive={} eject={} max-eject={} max-ejected={}% success-rate={}",
            if self.enabled { "on" } else { "off" },
            failures.join(","),
            self.consecutive,
            show(self.eject),
            show(self.max_eject),
            self.max_ejected_percent,
            if self.success_rate { "on" } else { "off" },
        )?;
        if self.success_rate {
            write!(
                f,
                " stdev={} min-requests={} min-members={} interval={}",
                self.stdev,
                self.min_requests,
                self.min_members,
                show(self.interval)
            )?;
        }
        Ok(())
    }
}

/// A duration as `parse_duration` reads it back.
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) { format!("{ms}ms") } else { format!("{}s", ms / 1000) }
}

/// Reads `on|off [key=value ...]`; `Err` names the parameter and value.
pub fn parse(args: &[&str]) -> Result<Outliers, String> {
    let (switch, parameters) = args.split_first().ok_or_else(|| "expected on or off".to_string())?;
    let enabled = match switch.to_ascii_lowercase().as_str() {
        "on" => true,
        "off" => false,
        _ => {
            return Err(format!("invalid value \"{switch}\": expected on or off, then key=value parameters"));
        }
    };
    let mut outliers = Outliers { enabled, ..Outliers::default() };
    let mut max_eject_given = false;
    for parameter in parameters {
        let Some((key, value)) = parameter.split_once('=') else {
            return Err(format!("invalid parameter \"{parameter}\": expected key=value"));
        };
        let invalid = |why: &str| format!("invalid value \"{value}\" in \"{parameter}\": {why}");
        let duration = |least: Duration, most: Duration| {
            parse_duration(value).map_err(|why| invalid(&why)).and_then(|d| {
                (least..=most).contains(&d).then_some(d).ok_or_else(|| {
                    invalid(&format!("expected a time from {} to {}", show(least), show(most)))
                })
            })
        };
        match key.to_ascii_lowercase().as_str() {
            "failures" => outliers.failures = parse_failures(value).map_err(|why| invalid(&why))?,
            "consecutive" => {
                outliers.consecutive = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= 1000)
                    .ok_or_else(|| invalid("expected a whole number from 0 (off) to 1000"))?
            }
            "eject" => outliers.eject = duration(Duration::from_millis(100), Duration::from_secs(3600))?,
            "max-eject" => {
                outliers.max_eject = duration(Duration::from_millis(100), Duration::from_secs(86_400))?;
                max_eject_given = true;
            }
            "max-ejected" => {
                outliers.max_ejected_percent = value
                    .strip_suffix('%')
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| invalid("expected a share from 1% to 100%"))?
            }
            "success-rate" => {
                outliers.success_rate = match value.to_ascii_lowercase().as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(invalid("expected on or off")),
                }
            }
            "stdev" => {
                outliers.stdev = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| (0.1..=10.0).contains(s))
                    .ok_or_else(|| invalid("expected a number from 0.1 to 10"))?
            }
            "min-requests" => {
                outliers.min_requests = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| invalid("expected a whole number from 1 to 1000000"))?
            }
            "min-members" => {
                outliers.min_members = value
                    .parse()
                    .ok()
                    .filter(|n| (2..=10_000).contains(n))
                    .ok_or_else(|| invalid("expected a whole number from 2 to 10000"))?
            }
            "interval" => outliers.interval = duration(Duration::from_secs(1), Duration::from_secs(3600))?,
            _ => {
                return Err(format!(
                    "unknown parameter \"{key}\" in \"{parameter}\" (known: failures, consecutive, eject, \
                     max-eject, max-ejected, success-rate, stdev, min-requests, min-members, interval)"
                ));
            }
        }
    }
    if !max_eject_given {
        // The default cap never undercuts a longer first ejection.
        outliers.max_eject = outliers.max_eject.max(outliers.eject);
    }
    if outliers.max_eject < outliers.eject {
        return Err(format!(
            "max-eject ({:?}) is shorter than eject ({:?})",
            outliers.max_eject, outliers.eject
        ));
    }
    // Among n members, none can be more than sqrt(n - 1) standard deviations below the
    // mean: with a larger stdev= and that few members, success-rate ejection could never act.
    let members = f64::from(outliers.min_members.max(1) - 1).sqrt();
    if outliers.success_rate && outliers.stdev >= members {
        return Err(format!(
            "stdev={} can never be reached among min-members={} members (at most {members:.2} standard \
             deviations below the mean): lower stdev, or raise min-members above {}",
            outliers.stdev,
            outliers.min_members,
            (outliers.stdev * outliers.stdev).floor() as u64 + 1
        ));
    }
    Ok(outliers)
}

/// `gateway`, `5xx` and status codes from 400 to 599, separated by commas.
fn parse_failures(value: &str) -> Result<Failures, String> {
    let mut failures = Failures { gateway: false, server_errors: false, statuses: Vec::new() };
    for item in value.split(',') {
        match item.trim().to_ascii_lowercase().as_str() {
            "gateway" => failures.gateway = true,
            "5xx" => failures.server_errors = true,
            code => match code.parse::<u16>() {
                Ok(status @ 400..=599) => failures.statuses.push(status),
                _ => return Err(format!("\"{item}\" is none of gateway, 5xx, or a status from 400 to 599")),
            },
        }
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_alone_takes_the_defaults() {
        let outliers = parse(&["on"]).unwrap();
        assert!(outliers.enabled);
        assert_eq!(outliers, Outliers { enabled: true, ..Outliers::default() });
        assert!(outliers.failures.counts(None) && outliers.failures.counts(Some(500)));
        assert!(!outliers.failures.counts(Some(404)) && !outliers.failures.counts(Some(200)));
    }

    #[test]
    fn every_parameter_is_read() {
        let outliers = parse(&[
            "On",
            "failures=gateway,503",
            "consecutive=3",
            "eject=30s",
            "max-eject=10m",
            "max-ejected=25%",
            "success-rate=off",
            "stdev=2.5",
            "min-requests=50",
            "min-members=8",
            "interval=5s",
        ])
        .unwrap();
        assert_eq!(outliers.failures, Failures { gateway: true, server_errors: false, statuses: vec![503] });
        assert!(outliers.failures.counts(Some(503)) && !outliers.failures.counts(Some(500)));
        assert_eq!((outliers.consecutive, outliers.max_ejected_percent), (3, 25));
        assert_eq!((outliers.eject, outliers.max_eject), (Duration::from_secs(30), Duration::from_secs(600)));
        assert!(!outliers.success_rate);
        assert_eq!((outliers.stdev, outliers.min_requests, outliers.min_members), (2.5, 50, 8));
        assert_eq!(outliers.interval, Duration::from_secs(5));
        assert!(!parse(&["off", "failures=gateway"]).unwrap().enabled);
    }

    #[test]
    fn written_back_it_reads_the_same() {
        for args in
            [&["on"][..], &["on", "failures=gateway,503", "eject=1500ms", "success-rate=off"], &["off"]]
        {
            let outliers = parse(args).unwrap();
            let text = outliers.to_string();
            let words: Vec<&str> = text.split(' ').collect();
            assert_eq!(parse(&words).unwrap(), outliers, "{text}");
        }
    }

    #[test]
    fn bad_parameters_are_named_with_their_value() {
        for (args, expected) in [
            (&["maybe"][..], "\"maybe\""),
            (&[][..], "on or off"),
            (&["on", "consecutive"], "\"consecutive\""),
            (&["on", "consecutive=-1"], "\"-1\" in \"consecutive=-1\""),
            (&["on", "eject=5d"], "\"5d\" in \"eject=5d\""),
            (&["on", "eject=1ms"], "\"1ms\" in \"eject=1ms\""),
            (&["on", "max-ejected=50"], "\"50\" in \"max-ejected=50\""),
            (&["on", "max-ejected=0%"], "\"0%\""),
            (&["on", "failures=gateway,teapot"], "\"teapot\""),
            (&["on", "failures=200"], "\"200\""),
            (&["on", "stdev=NaN"], "\"NaN\" in \"stdev=NaN\""),
            (&["on", "success-rate=yes"], "\"yes\""),
            (&["on", "min-members=1"], "\"1\" in \"min-members=1\""),
            (&["on", "colour=blue"], "unknown parameter \"colour\""),
            (&["on", "eject=1m", "max-eject=30s"], "max-eject"),
            (&["on", "min-members=3"], "stdev=1.9 can never be reached among min-members=3"),
        ] {
            let error = parse(args).unwrap_err();
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }
}
