//! The HTML form of the status page: one table per balancer, balancer-manager's familiar
//! columns plus this module's counters. Every value that comes from configuration or run time
//! is escaped.

use super::{BalancerStatus, Snapshot};
use std::fmt::Write;

pub fn render_html(snapshot: &Snapshot, refresh: Option<u32>) -> String {
    let mut out = String::with_capacity(4096);
    out.push_str("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">");
    if let Some(seconds) = refresh {
        let _ = write!(out, "<meta http-equiv=\"refresh\" content=\"{seconds}\">");
    }
    out.push_str(concat!(
        "<title>mod_lbmethod_rs status</title>\n<style>",
        "body{font-family:sans-serif}table{border-collapse:collapse;margin-bottom:2em}",
        "th,td{border:1px solid #999;padding:2px 8px;text-align:right}",
        "td.l,th.l{text-align:left}</style></head>\n<body>\n<h1>mod_lbmethod_rs status</h1>\n",
    ));
    let _ = writeln!(
        out,
        "<p>Module version {}. Also as <a href=\"?format=json\">JSON</a>.</p>",
        escape(snapshot.module_version)
    );
    if snapshot.balancers.is_empty() {
        out.push_str("<p>No balancers are configured.</p>\n");
    }
    for balancer in &snapshot.balancers {
        balancer_table(&mut out, balancer);
    }
    out.push_str("</body></html>\n");
    out
}

fn balancer_table(out: &mut String, balancer: &BalancerStatus) {
    let _ = writeln!(
        out,
        "<h2>{} <small>({}, method {}{})</small></h2>",
        escape(&balancer.name),
        escape(&balancer.server),
        escape(&balancer.method),
        if balancer.tracked { "" } else { ", not one of this module's: counters idle" },
    );
    let slow_start = balancer.slow_start_seconds.map_or("off".to_string(), |s| format!("{s} s"));
    let cap = match balancer.max_inflight {
        Some(n) if balancer.max_inflight_per_loadfactor => format!("{n} per loadfactor"),
        Some(n) => n.to_string(),
        None => "none".to_string(),
    };
    let _ = write!(out, "<p>Slow start: {slow_start}. In-flight cap: {cap}. Shed: {}.", balancer.shed);
    match balancer.method.as_str() {
        "bylatency" => {
            let _ = write!(out, " Latency decay: {} s.", balancer.latency_decay_seconds);
        }
        "byhash" => {
            let key =
                balancer.hash_key.as_deref().map_or("none (balanced as byinflight)".to_string(), escape);
            let bound = balancer.hash_balance_factor.map_or("off".to_string(), |c| c.to_string());
            let table = balancer.hash_table_size.map_or(String::new(), |n| format!(" Table: {n} slots."));
            let _ = write!(
                out,
                " Key: {key}. Load bound factor: {bound}.{table} Diverted: {}.",
                balancer.diverted
            );
        }
        _ => {}
    }
    out.push_str("</p>\n");
    out.push_str(concat!(
        "<table>\n<tr><th class=\"l\">Member</th><th class=\"l\">Route</th>",
        "<th class=\"l\">Status</th><th class=\"l\">Flags</th><th>Load factor</th><th>Weight now</th>",
        "<th>Ramp</th><th>Set</th><th>Cap</th>",
        "<th>Selected</th><th>In flight</th><th>Peak</th><th>Completed</th><th>Failed</th>",
        "<th>Latency (ms)</th><th>Score</th><th>Hash share</th>",
        "<th>httpd Elected</th><th>httpd Busy</th></tr>\n",
    ));
    for m in &balancer.members {
        let ramp = optional(m.slow_start_progress.map(|p| format!("{:.0}%", p * 100.0)));
        let cap = optional(m.max_inflight);
        let latency = optional(m.latency_ms.map(|l| format!("{l:.2}")));
        let score = optional(m.score.map(|s| format!("{s:.3}")));
        let share = optional(m.hash_share.map(|s| format!("{:.1}%", s * 100.0)));
        let _ = writeln!(
            out,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>\
             <td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{ramp}</td><td>{}</td><td>{cap}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{latency}</td><td>{score}</td><td>{share}</td><td>{}</td><td>{}</td></tr>",
            escape(&m.name),
            escape(&m.route),
            escape(m.status),
            escape(&m.flags.join(" ")),
            m.loadfactor,
            m.effective_weight,
            m.lbset,
            m.selected,
            m.inflight,
            m.peak_inflight,
            m.completed,
            m.failed,
            m.elected,
            m.busy,
        );
    }
    out.push_str("</table>\n");
}

fn optional(value: Option<impl ToString>) -> String {
    value.map_or(String::new(), |v| v.to_string())
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::sample;

    #[test]
    fn dynamic_text_is_escaped() {
        let html = render_html(&sample(), None);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("http://127.0.0.1:8082/?a=1&amp;b=&quot;2&quot;"));
        assert!(html.contains("<td class=\"l\">error</td>"));
    }

    #[test]
    fn escape_covers_the_five_characters() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
