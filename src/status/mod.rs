//! The status page (`SetHandler lbmethod-rs-status`): one snapshot of every balancer, rendered
//! as HTML for people, JSON for tools, Prometheus metrics, or a section of mod_status's
//! `/server-status`. Building the snapshot reads httpd; rendering is here.

mod html;
mod prometheus;
mod server_status;
mod sha256;

pub use html::render_html;
pub use prometheus::render_prometheus;
// Only the glue uses it, and the glue is left out of test builds.
#[cfg_attr(test, allow(unused_imports))]
pub use server_status::{Form as ServerStatusForm, render_server_status};

use serde::Serialize;

/// Everything the page shows, read once per request.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub module_version: &'static str,
    /// Every word a member's `state` can be (httpd's status bits as `httpd::proxy` reads
    /// them), for formats that list them all (the metrics' 0/1 series, the page's legend).
    #[serde(skip)]
    pub member_states: &'static [&'static str],
    pub balancers: Vec<BalancerStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BalancerStatus {
    /// `balancer://name`.
    pub name: String,
    /// The virtual host the balancer belongs to (`host:port`); balancers inherited by several
    /// virtual hosts appear once per virtual host, as in balancer-manager.
    pub server: String,
    /// The balancer's current lbmethod (ours or another).
    pub method: String,
    /// True when `method` is one of this module's methods, so the counters below are live.
    pub tracked: bool,
    /// `LBSlowStart` in seconds, if set.
    pub slow_start_seconds: Option<f64>,
    /// `LBMaxInflight`, if set, and whether it is per unit of loadfactor.
    pub max_inflight: Option<u32>,
    pub max_inflight_per_loadfactor: bool,
    /// Requests refused with 503 because every usable member was at its cap.
    pub shed: u64,
    /// `byhash`: the `LBHashKey` expression, the load bound's factor (`null`: bound off), the
    /// table's size in this process, and requests sent past a member at the bound.
    pub hash_key: Option<String>,
    pub hash_balance_factor: Option<f64>,
    pub hash_table_size: Option<usize>,
    pub diverted: u64,
    /// `bylatency`: `LBLatencyDecay` in seconds.
    pub latency_decay_seconds: f64,
    /// `LBOutlierDetection`, as written (`null`: off).
    pub outlier_detection: Option<String>,
    /// `LBQueue`'s settings and what its waiting line has seen (`null`: no queue).
    pub queue: Option<QueueStatus>,
    /// `LBDiscover`: each name the balancer follows.
    pub discovery: Vec<DiscoveryStatus>,
    pub members: Vec<MemberStatus>,
}

/// One `LBDiscover` line: what its lookups said.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiscoveryStatus {
    /// The URL as written (`http://app.internal:8080`, `srv+http://_http._tcp.app`).
    pub name: String,
    /// `resolver=`, or "system" (`/etc/resolv.conf`).
    pub resolver: String,
    /// Addresses in the last good answer, and its TTL.
    pub answer: u32,
    pub ttl_seconds: u32,
    /// Seconds since the last good answer (`None`: none yet), and until the next lookup.
    pub resolved_seconds_ago: Option<u64>,
    pub next_lookup_seconds: u64,
    /// Members it gave the balancer, by where they stand.
    pub serving: u32,
    pub draining: u32,
    pub removed: u32,
    pub lookups: u64,
    pub failures: u64,
    /// Failed lookups since the last good one, and the last failure's message.
    pub failing: u32,
    pub error: Option<String>,
    pub added: u64,
    pub drained: u64,
    pub removed_total: u64,
    pub returned: u64,
    /// The process that resolves now.
    pub resolver_pid: Option<u32>,
    /// The balancer's member slots still free for addresses that appear (httpd's growth).
    pub free_slots: u32,
}

/// Where a member came from, when a name gave it.
#[derive(Debug, Clone, Serialize)]
pub struct Origin {
    /// The `LBDiscover` URL.
    pub name: String,
    /// `serving`, `draining` (gone from the answer, requests in flight finish) or `removed`.
    pub standing: &'static str,
}

/// A balancer's waiting line (`LBQueue`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStatus {
    pub timeout_seconds: f64,
    pub max: u32,
    /// Waiting now, and the most at once (HAProxy's qcur and qmax).
    pub waiting: u32,
    pub peak: u32,
    /// Requests that joined the line; served after waiting; refused when the timeout passed;
    /// whose client went away (or whose process was killed) while waiting; refused at once
    /// because `max` were waiting. The last three are also in the balancer's `shed`.
    pub joined: u64,
    pub served: u64,
    pub timed_out: u64,
    pub gone: u64,
    pub full: u64,
    /// Waits that ended: their total and the longest, in seconds, and how many ended within
    /// each bound, cumulative: `[[0.01, n], [0.05, n], ...]` (all of them: `served +
    /// timed_out + gone`).
    pub wait_seconds_total: f64,
    pub wait_seconds_max: f64,
    pub wait_buckets: Vec<(f64, u64)>,
}

impl QueueStatus {
    /// Waits that ended (served, timed out, gone).
    pub fn waits(&self) -> u64 {
        self.served + self.timed_out + self.gone
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    /// The member URL.
    pub name: String,
    pub route: String,
    /// One word: `ok`, `draining`, or why the member cannot take requests (httpd's status bits
    /// read by `httpd::proxy::WorkerState`).
    pub status: &'static str,
    /// `status`, told apart by role when that is `ok`: `standby` (`+H`) or `spare` (`+R`).
    /// One of [`Snapshot::member_states`].
    pub state: &'static str,
    /// httpd counts the member usable (`PROXY_WORKER_IS_USABLE`): initialized, and not
    /// stopped, disabled, shut down, in error or failing its health check. A draining member,
    /// a standby and a spare are usable.
    pub up: bool,
    /// Every status flag set, by name.
    pub flags: Vec<&'static str>,
    /// Configured weight as in the config (`loadfactor=`), changed live by balancer-manager.
    pub loadfactor: f64,
    /// The weight the methods use now: `loadfactor`, reduced while on a slow-start ramp.
    pub effective_weight: f64,
    /// Progress of the member's slow-start ramp (0 to 1), while it is on one.
    pub slow_start_progress: Option<f64>,
    /// The member's in-flight cap (`LBMaxInflight`, scaled by loadfactor if asked), if any.
    pub max_inflight: Option<u64>,
    /// The latency estimate (milliseconds, first byte) as `bylatency` reads it now: it fades
    /// while the member is idle. `null` before the first sample.
    pub latency_ms: Option<f64>,
    pub latency_samples: u64,
    /// What the balancer's method ranks the member on, lower is better: `byinflight`
    /// (inflight+1)/weight, `bylatency` latency_ms x (inflight+1)/weight; `null` for the others.
    pub score: Option<f64>,
    /// `byhash`: the member's share of the hash table (0 to 1).
    pub hash_share: Option<f64>,
    pub lbset: i32,
    /// Attempts this module gave the member, since the module was loaded (kept over graceful
    /// restarts).
    pub selected: u64,
    /// Attempts under way now, across all processes.
    pub inflight: u64,
    pub peak_inflight: u64,
    pub completed: u64,
    pub failed: u64,
    /// Attempts in flight when a graceful restart moved the counters to a new segment (the
    /// previous generation finished them): `selected = completed + failed + handed_over +
    /// inflight`.
    pub handed_over: u64,
    /// httpd's own counters, as balancer-manager shows them (`Elected`, `Busy`).
    pub elected: u64,
    pub busy: u64,
    /// Outlier detection: ejected now (the methods are not offered it), why
    /// (`consecutive-failures` or `success-rate`) and for how many more seconds; ejections
    /// so far, and failures in a row now.
    pub ejected: bool,
    pub ejection_reason: Option<&'static str>,
    pub ejection_seconds_left: Option<f64>,
    pub ejections: u64,
    pub consecutive_failures: u32,
    /// `LBDiscover`: the name that gave this member; `None` for a `BalancerMember`.
    pub origin: Option<Origin>,
}

/// The format a status request asks for with `?format=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Html,
    Json,
    Prometheus,
}

/// The longest auto-refresh period the HTML page accepts (`?refresh=`), in seconds: one hour.
pub const MAX_REFRESH_SECONDS: u32 = 3600;

/// The first value of `name=` in a query string.
fn parameter<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

impl Format {
    /// Reads `format=` from a query string; `None` for an unknown format.
    pub fn from_query(query: Option<&str>) -> Option<Format> {
        match parameter(query, "format").unwrap_or("html") {
            "html" | "" => Some(Format::Html),
            "json" => Some(Format::Json),
            "prometheus" => Some(Format::Prometheus),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Html => "text/html; charset=utf-8",
            Format::Json => "application/json",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// What a status request asks for: a format, and for the HTML page an auto-refresh period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub format: Format,
    /// `?refresh=N`: reload the HTML page every N seconds (1 to [`MAX_REFRESH_SECONDS`]);
    /// `None` (the default, also `refresh=0` or `refresh=`) does not reload it.
    pub refresh: Option<u32>,
}

impl Query {
    /// Reads a query string; `None` when a value is not one the page accepts (an unknown
    /// format, a refresh that is not a whole number of seconds from 0 to the maximum).
    pub fn parse(query: Option<&str>) -> Option<Query> {
        let format = Format::from_query(query)?;
        let refresh = match parameter(query, "refresh") {
            None | Some("") => None,
            Some(text) if text.len() <= 4 && text.bytes().all(|b| b.is_ascii_digit()) => {
                match text.parse::<u32>().ok()? {
                    0 => None,
                    n if n <= MAX_REFRESH_SECONDS => Some(n),
                    _ => return None,
                }
            }
            Some(_) => return None,
        };
        Some(Query { format, refresh })
    }
}

/// Headers to send with an answer in `format`, besides its content type and `Cache-Control`:
/// the HTML page's Content-Security-Policy, and for every format `nosniff` (a browser must not
/// read JSON or metrics that name backends as HTML) and no referrer (the page's links would
/// otherwise tell where the status page is).
pub fn security_headers(format: Format) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("X-Content-Type-Options", "nosniff".to_string()),
        ("Referrer-Policy", "no-referrer".to_string()),
    ];
    if format == Format::Html {
        headers.push(("Content-Security-Policy", html::content_security_policy()));
    }
    headers
}

pub fn render(snapshot: &Snapshot, query: &Query) -> String {
    match query.format {
        Format::Html => render_html(snapshot, query.refresh),
        // Serializing plain structs of strings and numbers cannot fail.
        Format::Json => serde_json::to_string_pretty(snapshot).unwrap_or_default(),
        Format::Prometheus => render_prometheus(snapshot),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Snapshot {
        Snapshot {
            module_version: "test",
            member_states: &[
                "stopped",
                "disabled",
                "shutdown",
                "error",
                "hcheck-failed",
                "initializing",
                "draining",
                "standby",
                "spare",
                "ok",
            ],
            balancers: vec![BalancerStatus {
                name: "balancer://app".into(),
                server: "localhost:80".into(),
                method: "byweight".into(),
                tracked: true,
                slow_start_seconds: Some(30.0),
                max_inflight: Some(8),
                max_inflight_per_loadfactor: false,
                shed: 4,
                hash_key: None,
                hash_balance_factor: Some(1.25),
                hash_table_size: None,
                diverted: 0,
                latency_decay_seconds: 10.0,
                outlier_detection: Some("on consecutive=5 eject=10s".into()),
                queue: Some(QueueStatus {
                    timeout_seconds: 5.0,
                    max: 100,
                    waiting: 3,
                    peak: 12,
                    joined: 40,
                    served: 30,
                    timed_out: 5,
                    gone: 2,
                    full: 1,
                    wait_seconds_total: 7.5,
                    wait_seconds_max: 5.0,
                    wait_buckets: vec![(0.01, 10), (0.05, 20), (0.1, 25), (0.5, 30), (1.0, 31), (5.0, 31)],
                }),
                discovery: vec![DiscoveryStatus {
                    name: "http://app.test:8080".into(),
                    resolver: "127.0.0.1:5353".into(),
                    answer: 1,
                    ttl_seconds: 5,
                    resolved_seconds_ago: Some(2),
                    next_lookup_seconds: 3,
                    serving: 1,
                    draining: 1,
                    lookups: 9,
                    failures: 1,
                    failing: 1,
                    error: Some("<b>timeout</b>".into()),
                    added: 2,
                    drained: 1,
                    ..DiscoveryStatus::default()
                }],
                members: vec![
                    MemberStatus {
                        name: "http://127.0.0.1:8081".into(),
                        route: "<script>alert(1)</script>".into(),
                        status: "ok",
                        state: "ok",
                        up: true,
                        flags: Vec::new(),
                        loadfactor: 1.5,
                        effective_weight: 0.75,
                        slow_start_progress: Some(0.5),
                        max_inflight: Some(8),
                        latency_ms: Some(4.5),
                        latency_samples: 10,
                        score: Some(2.0),
                        hash_share: None,
                        lbset: 0,
                        selected: 10,
                        inflight: 2,
                        peak_inflight: 3,
                        completed: 8,
                        failed: 0,
                        handed_over: 0,
                        elected: 10,
                        busy: 2,
                        ejected: false,
                        ejection_reason: None,
                        ejection_seconds_left: None,
                        ejections: 2,
                        consecutive_failures: 1,
                        origin: Some(Origin { name: "http://app.test:8080".into(), standing: "serving" }),
                    },
                    MemberStatus {
                        name: "http://127.0.0.1:8082/?a=1&b=\"2\"".into(),
                        route: String::new(),
                        status: "error",
                        state: "error",
                        up: false,
                        flags: vec!["error", "hot-standby"],
                        loadfactor: 1.0,
                        effective_weight: 1.0,
                        slow_start_progress: None,
                        max_inflight: Some(8),
                        latency_ms: None,
                        latency_samples: 0,
                        score: None,
                        hash_share: None,
                        lbset: 1,
                        selected: 0,
                        inflight: 0,
                        peak_inflight: 0,
                        completed: 0,
                        failed: 0,
                        handed_over: 0,
                        elected: 0,
                        busy: 0,
                        ejected: true,
                        ejection_reason: Some("success-rate"),
                        ejection_seconds_left: Some(7.5),
                        ejections: 1,
                        consecutive_failures: 0,
                        origin: None,
                    },
                ],
            }],
        }
    }

    #[test]
    fn format_comes_from_the_query() {
        assert_eq!(Format::from_query(None), Some(Format::Html));
        assert_eq!(Format::from_query(Some("format=json")), Some(Format::Json));
        assert_eq!(Format::from_query(Some("x=1&format=json")), Some(Format::Json));
        assert_eq!(Format::from_query(Some("format=xml")), None);
        assert_eq!(Format::from_query(Some("format=prometheus")), Some(Format::Prometheus));
        assert_eq!(Format::from_query(Some("xformat=json")), Some(Format::Html), "not format=");
        assert_eq!(
            Format::from_query(Some("format=json&format=xml")),
            Some(Format::Json),
            "the first counts"
        );
    }

    #[test]
    fn refresh_is_bounded_and_validated() {
        let refresh = |q: &str| Query::parse(Some(q)).map(|q| q.refresh);
        assert_eq!(Query::parse(None), Some(Query { format: Format::Html, refresh: None }));
        assert_eq!(refresh("refresh=5"), Some(Some(5)));
        assert_eq!(refresh("format=html&refresh=3600"), Some(Some(3600)));
        assert_eq!(refresh("refresh=0"), Some(None));
        assert_eq!(refresh("refresh="), Some(None));
        for bad in
            ["refresh=3601", "refresh=-1", "refresh=1.5", "refresh=5s", "refresh=99999999999", "refresh=+5"]
        {
            assert_eq!(refresh(bad), None, "{bad}");
        }
        assert_eq!(Query::parse(Some("format=yaml&refresh=5")), None);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let query = Query { format: Format::Json, refresh: None };
        let json: serde_json::Value = serde_json::from_str(&render(&sample(), &query)).unwrap();
        let balancer = &json["balancers"][0];
        assert_eq!(balancer["name"], "balancer://app");
        assert_eq!(balancer["method"], "byweight");
        let member = &balancer["members"][0];
        for key in ["name", "status", "loadfactor", "selected", "inflight"] {
            assert!(!member[key].is_null(), "member field {key}");
        }
        assert_eq!(member["loadfactor"], 1.5);
        assert_eq!(balancer["members"][1]["status"], "error");
        assert_eq!(balancer["members"][1]["state"], "error");
        assert_eq!(balancer["members"][1]["up"], false);
        assert!(json.get("member_states").is_none(), "the list of states is not part of the document");
        assert_eq!(balancer["members"][1]["flags"], serde_json::json!(["error", "hot-standby"]));
    }
}
