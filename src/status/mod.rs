//! The status page (`SetHandler lbmethod-rs-status`): one snapshot of every balancer, rendered
//! as HTML for people or JSON for tools. Building the snapshot reads httpd; rendering is here.

mod html;

pub use html::render_html;

use serde::Serialize;

/// Everything the page shows, read once per request.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub module_version: &'static str,
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
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    /// The member URL.
    pub name: String,
    pub route: String,
    /// One word: `ok`, `draining`, or why the member cannot take requests (httpd's status bits
    /// read by `httpd::proxy::WorkerState`).
    pub status: &'static str,
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
}

/// The format a status request asks for with `?format=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Html,
    Json,
}

impl Format {
    /// Reads `format=` from a query string; `None` for an unknown format.
    pub fn from_query(query: Option<&str>) -> Option<Format> {
        let value =
            query.unwrap_or("").split('&').find_map(|pair| pair.strip_prefix("format=")).unwrap_or("html");
        match value {
            "html" | "" => Some(Format::Html),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Html => "text/html; charset=utf-8",
            Format::Json => "application/json",
        }
    }
}

pub fn render(snapshot: &Snapshot, format: Format) -> String {
    match format {
        Format::Html => render_html(snapshot),
        // Serializing plain structs of strings and numbers cannot fail.
        Format::Json => serde_json::to_string_pretty(snapshot).unwrap_or_default(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Snapshot {
        Snapshot {
            module_version: "test",
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
                members: vec![
                    MemberStatus {
                        name: "http://127.0.0.1:8081".into(),
                        route: "<script>alert(1)</script>".into(),
                        status: "ok",
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
                    },
                    MemberStatus {
                        name: "http://127.0.0.1:8082/?a=1&b=\"2\"".into(),
                        route: String::new(),
                        status: "error",
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
    }

    #[test]
    fn json_has_the_documented_shape() {
        let json: serde_json::Value = serde_json::from_str(&render(&sample(), Format::Json)).unwrap();
        let balancer = &json["balancers"][0];
        assert_eq!(balancer["name"], "balancer://app");
        assert_eq!(balancer["method"], "byweight");
        let member = &balancer["members"][0];
        for key in ["name", "status", "loadfactor", "selected", "inflight"] {
            assert!(!member[key].is_null(), "member field {key}");
        }
        assert_eq!(member["loadfactor"], 1.5);
        assert_eq!(balancer["members"][1]["status"], "error");
        assert_eq!(balancer["members"][1]["flags"], serde_json::json!(["error", "hot-standby"]));
    }
}
