//! The status page as Prometheus metrics (`?format=prometheus`): the text exposition format
//! 0.0.4, from the same snapshot as the HTML and JSON forms.
//!
//! One naming scheme (docs/monitoring.md lists every metric): `lbrs_` then `balancer_` or
//! `member_`, then what is measured, in base units (`_seconds`, `_ratio` for 0 to 1), with
//! `_total` on counters and `_info` on series whose value is 1 and whose labels carry text.
//! Every series has the labels `server` (the virtual host) and `balancer`; a member's also
//! `member` (its URL). Strings that are not part of a series' identity (the method, a route)
//! are only in the `_info` series, to be joined on when needed.

use super::{BalancerStatus, DiscoveryStatus, MemberStatus, QueueStatus, Snapshot};
use std::fmt::Write;

/// What a sample's value is: counts stay integers, so a large counter is printed exactly.
#[derive(Clone, Copy)]
enum Value {
    Count(u64),
    Real(f64),
}

/// A metric family of members: name, type, help, and the member's value (`None`: no sample).
type MemberFamily = (&'static str, &'static str, &'static str, fn(&MemberStatus) -> Option<Value>);

/// A metric family of balancers: name, type, help, and the balancer's value.
type BalancerFamily = (&'static str, &'static str, &'static str, fn(&BalancerStatus) -> u64);

const MEMBER_FAMILIES: &[MemberFamily] = &[
    (
        "lbrs_member_up",
        "gauge",
        "1 when httpd counts the member usable (initialized, not stopped, disabled, in error, failing its health check or shut down), else 0.",
        |m| Some(Value::Count(u64::from(m.up))),
    ),
    ("lbrs_member_inflight", "gauge", "Attempts under way to the member now, across all processes.", |m| {
        Some(Value::Count(m.inflight))
    }),
    (
        "lbrs_member_inflight_limit",
        "gauge",
        "The member's in-flight cap (LBMaxInflight, scaled by loadfactor with per-loadfactor); absent without a cap.",
        |m| m.max_inflight.map(Value::Count),
    ),
    ("lbrs_member_inflight_peak", "gauge", "The highest in-flight count seen since Apache started.", |m| {
        Some(Value::Count(m.peak_inflight))
    }),
    (
        "lbrs_member_selected_total",
        "counter",
        "Attempts the module gave the member: method picks and sticky-session routes.",
        |m| Some(Value::Count(m.selected)),
    ),
    ("lbrs_member_completed_total", "counter", "Attempts that ended without the member failing.", |m| {
        Some(Value::Count(m.completed))
    }),
    (
        "lbrs_member_failed_total",
        "counter",
        "Attempts that ended with the member in error, abandoned for failover, answered 502, 503 or 504, or whose process was killed.",
        |m| Some(Value::Count(m.failed)),
    ),
    (
        "lbrs_member_handed_over_total",
        "counter",
        "Attempts in flight when a graceful restart moved the counters to a new shared segment; the previous generation finished them.",
        |m| Some(Value::Count(m.handed_over)),
    ),
    (
        "lbrs_member_latency_seconds",
        "gauge",
        "The member's latency estimate, from the pick to the first part of the response; absent before the first sample.",
        |m| m.latency_ms.map(|ms| Value::Real(ms / 1000.0)),
    ),
    (
        "lbrs_member_latency_samples_total",
        "counter",
        "Latency samples taken, one per attempt that ended.",
        |m| Some(Value::Count(m.latency_samples)),
    ),
    (
        "lbrs_member_weight",
        "gauge",
        "The weight the methods use now, in loadfactor units: the loadfactor, lowered while the member is on a slow-start ramp.",
        |m| Some(Value::Real(m.effective_weight)),
    ),
    (
        "lbrs_member_configured_weight",
        "gauge",
        "The member's loadfactor, including live changes made in balancer-manager.",
        |m| Some(Value::Real(m.loadfactor)),
    ),
    (
        "lbrs_member_slow_start_ratio",
        "gauge",
        "How far along its slow-start ramp the member is, from 0 to 1; 1 when it is not on a ramp.",
        |m| Some(Value::Real(m.slow_start_progress.unwrap_or(1.0))),
    ),
    ("lbrs_member_lbset", "gauge", "The member's lbset tier.", |m| Some(Value::Real(f64::from(m.lbset)))),
    (
        "lbrs_member_score",
        "gauge",
        "What the balancer's method ranks the member on now, lower is better (byinflight, bylatency); absent with the other methods.",
        |m| m.score.map(Value::Real),
    ),
    (
        "lbrs_member_ejected",
        "gauge",
        "1 while outlier detection (LBOutlierDetection) keeps the member ejected: no method is offered it; else 0.",
        |m| Some(Value::Count(u64::from(m.ejected))),
    ),
    (
        "lbrs_member_ejection_remaining_seconds",
        "gauge",
        "How long the member's ejection lasts still; absent while it is not ejected.",
        |m| m.ejection_seconds_left.map(Value::Real),
    ),
    (
        "lbrs_member_ejections_total",
        "counter",
        "Times outlier detection ejected the member, since Apache started.",
        |m| Some(Value::Count(m.ejections)),
    ),
    (
        "lbrs_member_consecutive_failures",
        "gauge",
        "The member's failures in a row now, as outlier detection counts them (LBOutlierDetection failures=).",
        |m| Some(Value::Count(u64::from(m.consecutive_failures))),
    ),
    (
        "lbrs_member_hash_share_ratio",
        "gauge",
        "byhash: the member's share of the hash table's slots, from 0 to 1; absent with the other methods.",
        |m| m.hash_share.map(Value::Real),
    ),
];

/// Renders the snapshot in the text exposition format 0.0.4.
pub fn render_prometheus(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(8192);
    let servers = server_labels(&snapshot.balancers);
    let balancers: Vec<(&str, &BalancerStatus)> =
        servers.iter().map(String::as_str).zip(&snapshot.balancers).collect();

    family(&mut out, "lbrs_module_info", "gauge", "The loaded mod_lbmethod_rs; the value is always 1.");
    sample(&mut out, "lbrs_module_info", &[("version", snapshot.module_version)], Value::Count(1));

    family(
        &mut out,
        "lbrs_balancer_info",
        "gauge",
        "A balancer and its current lbmethod (tracked=\"false\": not one of this module's, its counters stay idle); the value is always 1.",
    );
    for &(server, b) in &balancers {
        let tracked = if b.tracked { "true" } else { "false" };
        let labels = [("server", server), ("balancer", &b.name), ("method", &b.method), ("tracked", tracked)];
        sample(&mut out, "lbrs_balancer_info", &labels, Value::Count(1));
    }
    let balancer_families: [BalancerFamily; 4] = [
        (
            "lbrs_balancer_members",
            "gauge",
            "Members of the balancer, configured or added in balancer-manager.",
            |b| b.members.len() as u64,
        ),
        (
            "lbrs_balancer_members_usable",
            "gauge",
            "Members httpd counts usable now (the sum of lbrs_member_up).",
            |b| b.members.iter().filter(|m| m.up).count() as u64,
        ),
        (
            "lbrs_balancer_shed_total",
            "counter",
            "Requests answered 503 because every usable member was at its in-flight cap.",
            |b| b.shed,
        ),
        (
            "lbrs_balancer_diverted_total",
            "counter",
            "byhash: requests sent past an eligible member of their key's walk because it was above the load bound or at its cap.",
            |b| b.diverted,
        ),
    ];
    for (name, kind, help, value) in balancer_families {
        family(&mut out, name, kind, help);
        for &(server, b) in &balancers {
            sample(&mut out, name, &[("server", server), ("balancer", &b.name)], Value::Count(value(b)));
        }
    }

    queue_families(&mut out, &balancers);
    discovery_families(&mut out, &balancers);

    family(
        &mut out,
        "lbrs_member_info",
        "gauge",
        "A member and its route (empty when none); the value is always 1.",
    );
    for &(server, b) in &balancers {
        for m in &b.members {
            let labels =
                [("server", server), ("balancer", &b.name), ("member", &m.name), ("route", &m.route)];
            sample(&mut out, "lbrs_member_info", &labels, Value::Count(1));
        }
    }
    family(
        &mut out,
        "lbrs_member_status",
        "gauge",
        "1 for the member's state, 0 for every other state: each state has a series at every scrape.",
    );
    for &(server, b) in &balancers {
        for m in &b.members {
            for &state in snapshot.member_states {
                let labels =
                    [("server", server), ("balancer", &b.name), ("member", &m.name), ("state", state)];
                sample(&mut out, "lbrs_member_status", &labels, Value::Count(u64::from(m.state == state)));
            }
        }
    }
    for &(name, kind, help, value) in MEMBER_FAMILIES {
        family(&mut out, name, kind, help);
        for &(server, b) in &balancers {
            for m in &b.members {
                if let Some(value) = value(m) {
                    sample(
                        &mut out,
                        name,
                        &[("server", server), ("balancer", &b.name), ("member", &m.name)],
                        value,
                    );
                }
            }
        }
    }
    out
}

/// A discovery metric family: name, type, help, and the line's value.
type DiscoveryFamily = (&'static str, &'static str, &'static str, fn(&DiscoveryStatus) -> u64);

const DISCOVERY_FAMILIES: &[DiscoveryFamily] = &[
    ("lbrs_discovery_lookups_total", "counter", "LBDiscover: lookups of the name.", |d| d.lookups),
    (
        "lbrs_discovery_failures_total",
        "counter",
        "LBDiscover: lookups that failed (the members of the last good answer stay).",
        |d| d.failures,
    ),
    ("lbrs_discovery_failing", "gauge", "LBDiscover: lookups failed since the last good one.", |d| {
        u64::from(d.failing)
    }),
    ("lbrs_discovery_addresses", "gauge", "LBDiscover: addresses in the last good answer.", |d| {
        u64::from(d.answer)
    }),
    ("lbrs_discovery_ttl_seconds", "gauge", "LBDiscover: the TTL of the last good answer.", |d| {
        u64::from(d.ttl_seconds)
    }),
    ("lbrs_discovery_free_slots", "gauge", "LBDiscover: member slots left for addresses that appear.", |d| {
        u64::from(d.free_slots)
    }),
    ("lbrs_discovery_added_total", "counter", "LBDiscover: members added at run time.", |d| d.added),
    (
        "lbrs_discovery_drained_total",
        "counter",
        "LBDiscover: members drained because the name dropped them.",
        |d| d.drained,
    ),
    (
        "lbrs_discovery_returned_total",
        "counter",
        "LBDiscover: drained or removed members the name gave back.",
        |d| d.returned,
    ),
];

/// `LBDiscover` lines: their lookups and answers, and every discovered member with its origin
/// and standing.
fn discovery_families(out: &mut String, balancers: &[(&str, &BalancerStatus)]) {
    if balancers.iter().all(|(_, b)| b.discovery.is_empty()) {
        return;
    }
    for &(name, kind, help, value) in DISCOVERY_FAMILIES {
        family(out, name, kind, help);
        for &(server, b) in balancers {
            for d in &b.discovery {
                let labels = [("server", server), ("balancer", b.name.as_str()), ("name", d.name.as_str())];
                sample(out, name, &labels, Value::Count(value(d)));
            }
        }
    }
    let name = "lbrs_member_discovered";
    family(
        out,
        name,
        "gauge",
        "A member a DNS name gave (LBDiscover), its name and where it stands; always 1.",
    );
    for &(server, b) in balancers {
        for m in &b.members {
            if let Some(origin) = &m.origin {
                let labels = [
                    ("server", server),
                    ("balancer", b.name.as_str()),
                    ("member", m.name.as_str()),
                    ("name", origin.name.as_str()),
                    ("standing", origin.standing),
                ];
                sample(out, name, &labels, Value::Count(1));
            }
        }
    }
}

/// A queue metric family: name, type, help, and the queue's value.
type QueueFamily = (&'static str, &'static str, &'static str, fn(&QueueStatus) -> u64);

const QUEUE_FAMILIES: &[QueueFamily] = &[
    ("lbrs_balancer_queue_waiting", "gauge", "LBQueue: requests waiting for a place now.", |q| {
        u64::from(q.waiting)
    }),
    ("lbrs_balancer_queue_waiting_peak", "gauge", "LBQueue: the most requests waiting at once.", |q| {
        u64::from(q.peak)
    }),
    ("lbrs_balancer_queue_limit", "gauge", "LBQueue max: the most requests that may wait at once.", |q| {
        u64::from(q.max)
    }),
    ("lbrs_balancer_queue_joined_total", "counter", "LBQueue: requests that waited for a place.", |q| {
        q.joined
    }),
    ("lbrs_balancer_queue_served_total", "counter", "LBQueue: requests served after waiting.", |q| q.served),
    (
        "lbrs_balancer_queue_timed_out_total",
        "counter",
        "LBQueue: requests refused (503) because no place freed within the timeout.",
        |q| q.timed_out,
    ),
    (
        "lbrs_balancer_queue_gone_total",
        "counter",
        "LBQueue: requests whose client went away (or whose process was killed) while waiting.",
        |q| q.gone,
    ),
    (
        "lbrs_balancer_queue_full_total",
        "counter",
        "LBQueue: requests refused (503) at once because max requests were waiting.",
        |q| q.full,
    ),
];

/// The waiting lines (`LBQueue`) of the balancers that have one: counts, and the wait time as a
/// histogram (HAProxy's qcur, qmax and qtime).
fn queue_families(out: &mut String, balancers: &[(&str, &BalancerStatus)]) {
    let queues: Vec<(&str, &str, &QueueStatus)> = balancers
        .iter()
        .filter_map(|&(server, b)| Some((server, b.name.as_str(), b.queue.as_ref()?)))
        .collect();
    if queues.is_empty() {
        return;
    }
    for &(name, kind, help, value) in QUEUE_FAMILIES {
        family(out, name, kind, help);
        for &(server, balancer, q) in &queues {
            sample(out, name, &[("server", server), ("balancer", balancer)], Value::Count(value(q)));
        }
    }
    let name = "lbrs_balancer_queue_wait_seconds";
    family(out, name, "histogram", "LBQueue: how long requests waited, served, timed out or gone.");
    for &(server, balancer, q) in &queues {
        for &(bound, count) in &q.wait_buckets {
            let le = float(bound);
            let labels = [("server", server), ("balancer", balancer), ("le", le.as_str())];
            sample(out, &format!("{name}_bucket"), &labels, Value::Count(count));
        }
        let labels = [("server", server), ("balancer", balancer), ("le", "+Inf")];
        sample(out, &format!("{name}_bucket"), &labels, Value::Count(q.waits()));
        let labels = [("server", server), ("balancer", balancer)];
        sample(out, &format!("{name}_sum"), &labels, Value::Real(q.wait_seconds_total));
        sample(out, &format!("{name}_count"), &labels, Value::Count(q.waits()));
    }
}

/// The `server` label of each balancer. A balancer name is unique within a virtual host, but
/// two virtual hosts can have the same name and port (httpd warns and goes on): the second
/// and later copies get ` #2`, ` #3`... so that every series stays unique.
fn server_labels(balancers: &[BalancerStatus]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::with_capacity(balancers.len());
    for (i, b) in balancers.iter().enumerate() {
        let earlier = balancers[..i].iter().filter(|o| o.server == b.server && o.name == b.name).count();
        labels.push(if earlier == 0 { b.server.clone() } else { format!("{} #{}", b.server, earlier + 1) });
    }
    labels
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: Value) {
    out.push_str(name);
    for (i, (label, text)) in labels.iter().enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        let _ = write!(out, "{label}=\"{}\"", escape_label(text));
    }
    if !labels.is_empty() {
        out.push('}');
    }
    out.push(' ');
    match value {
        Value::Count(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Real(x) => out.push_str(&float(x)),
    }
    out.push('\n');
}

/// A float as the format spells it: `NaN`, `+Inf`, `-Inf`, else a plain decimal.
fn float(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{x}")
    }
}

/// A label value: backslash, double quote and line feed are escaped (`\\`, `\"`, `\n`).
pub fn escape_label(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A `# HELP` text: backslash and line feed are escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::sample as snapshot;

    /// Every sample line of `name` (exactly that family, not a longer name).
    fn lines<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| {
                l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .collect()
    }

    #[test]
    fn every_family_has_help_and_type_once_and_its_samples_together() {
        let text = render_prometheus(&snapshot());
        let mut seen = Vec::new();
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(matches!(kind, "gauge" | "counter" | "histogram"), "{line}");
                assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
                assert!(kind != "histogram" || name.ends_with("_seconds"), "{line}");
                assert!(!seen.contains(&name), "{name} declared twice");
                seen.push(name);
                current = name;
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                assert!(!rest.is_empty());
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).filter(|f| *f == current))
                    .unwrap_or(name);
                assert_eq!(family, current, "a sample outside its family: {line}");
            }
        }
        assert!(text.ends_with('\n'));
        assert!(seen.len() >= 20, "{seen:?}");
    }

    #[test]
    fn a_queue_has_its_counts_and_a_cumulative_wait_histogram() {
        let text = render_prometheus(&snapshot());
        let labels = "{server=\"localhost:80\",balancer=\"balancer://app\"}";
        for expected in [
            format!("lbrs_balancer_queue_waiting{labels} 3"),
            format!("lbrs_balancer_queue_waiting_peak{labels} 12"),
            format!("lbrs_balancer_queue_timed_out_total{labels} 5"),
            format!("lbrs_balancer_queue_wait_seconds_sum{labels} 7.5"),
            format!("lbrs_balancer_queue_wait_seconds_count{labels} 37"),
            "lbrs_balancer_queue_wait_seconds_bucket{server=\"localhost:80\",balancer=\"balancer://app\",le=\"0.05\"} 20"
                .to_string(),
            "lbrs_balancer_queue_wait_seconds_bucket{server=\"localhost:80\",balancer=\"balancer://app\",le=\"+Inf\"} 37"
                .to_string(),
        ] {
            assert!(text.lines().any(|l| l == expected), "{expected} missing:\n{text}");
        }
    }

    #[test]
    fn member_series_carry_server_balancer_and_member() {
        let text = render_prometheus(&snapshot());
        let inflight = lines(&text, "lbrs_member_inflight");
        assert_eq!(
            inflight[0],
            "lbrs_member_inflight{server=\"localhost:80\",balancer=\"balancer://app\",member=\"http://127.0.0.1:8081\"} 2"
        );
        assert_eq!(lines(&text, "lbrs_member_selected_total").len(), 2);
        let ejected = lines(&text, "lbrs_member_ejected");
        assert!(ejected[0].ends_with(" 0") && ejected[1].ends_with(" 1"), "{ejected:?}");
        assert!(lines(&text, "lbrs_member_ejections_total")[0].ends_with(" 2"));
        let left = lines(&text, "lbrs_member_ejection_remaining_seconds");
        assert!(left.len() == 1 && left[0].ends_with(" 7.5"), "only the ejected member: {left:?}");
        assert!(
            text.contains(
                "lbrs_balancer_shed_total{server=\"localhost:80\",balancer=\"balancer://app\"} 4\n"
            )
        );
        assert!(text.contains(
            "lbrs_balancer_info{server=\"localhost:80\",balancer=\"balancer://app\",method=\"byweight\",tracked=\"true\"} 1\n"
        ));
        assert!(text.contains(
            "lbrs_balancer_members_usable{server=\"localhost:80\",balancer=\"balancer://app\"} 1\n"
        ));
    }

    #[test]
    fn units_are_base_units() {
        let text = render_prometheus(&snapshot());
        let latency = lines(&text, "lbrs_member_latency_seconds");
        assert_eq!(latency.len(), 1, "no sample before the first measurement");
        assert!(latency[0].ends_with(" 0.0045"), "{}", latency[0]);
        let ramp = lines(&text, "lbrs_member_slow_start_ratio");
        assert!(ramp[0].ends_with(" 0.5") && ramp[1].ends_with(" 1"), "{ramp:?}");
        let weights = lines(&text, "lbrs_member_weight");
        assert!(weights[0].ends_with(" 0.75"), "{weights:?}");
        assert!(lines(&text, "lbrs_member_configured_weight")[0].ends_with(" 1.5"));
    }

    #[test]
    fn every_state_has_a_series_and_exactly_one_is_set() {
        let snap = snapshot();
        let text = render_prometheus(&snap);
        let status = lines(&text, "lbrs_member_status");
        assert_eq!(status.len(), 2 * snap.member_states.len());
        for member in ["http://127.0.0.1:8081\"", "http://127.0.0.1:8082/?a=1&b=\\\"2\\\"\""] {
            let mine: Vec<&&str> = status.iter().filter(|l| l.contains(member)).collect();
            assert_eq!(mine.len(), snap.member_states.len(), "{member}");
            assert_eq!(mine.iter().filter(|l| l.ends_with(" 1")).count(), 1, "{mine:?}");
        }
        assert!(status.iter().any(|l| l.contains("state=\"error\"") && l.ends_with(" 1")));
        assert!(status.iter().any(|l| l.contains("state=\"standby\"") && l.ends_with(" 0")));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        let mut snap = snapshot();
        snap.balancers[0].members[0].route = "r\"1\\\n<x>".into();
        let text = render_prometheus(&snap);
        assert!(text.contains("route=\"r\\\"1\\\\\\n<x>\"} 1\n"), "{text}");
        assert!(lines(&text, "lbrs_member_info").iter().all(|l| !l.contains('\n')));
    }

    #[test]
    fn absent_values_leave_no_sample() {
        let text = render_prometheus(&snapshot());
        assert_eq!(lines(&text, "lbrs_member_score").len(), 1);
        assert_eq!(lines(&text, "lbrs_member_hash_share_ratio").len(), 0);
        assert!(text.contains("# TYPE lbrs_member_hash_share_ratio gauge\n"), "the family is still declared");
    }

    #[test]
    fn a_balancer_seen_twice_in_one_virtual_host_name_stays_unique() {
        let mut snap = snapshot();
        snap.balancers.push(snap.balancers[0].clone());
        let text = render_prometheus(&snap);
        let shed = lines(&text, "lbrs_balancer_shed_total");
        assert_eq!(shed.len(), 2);
        assert!(shed[1].contains("server=\"localhost:80 #2\""), "{shed:?}");
    }

    #[test]
    fn floats_are_spelled_as_the_format_wants() {
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(0.25), "0.25");
        assert_eq!(float(3.0), "3");
    }
}
