//! This module's section of mod_status's `/server-status` (added through mod_status's
//! `status_hook`): an HTML section per balancer on the page, and lines for tools in its
//! machine-readable form (`?auto`). Rendered from the same snapshot as the status page.

use super::html::escape;
use super::{BalancerStatus, MemberStatus, Snapshot};
use std::fmt::Write;

/// How mod_status asked for its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `?auto`: plain text lines, `Key: value`.
    Auto,
    /// The HTML page, with tables.
    Html,
    /// The HTML page without tables (`?notable`).
    HtmlWithoutTables,
}

pub fn render_server_status(snapshot: &Snapshot, form: Form) -> String {
    match form {
        Form::Auto => auto(snapshot),
        Form::Html | Form::HtmlWithoutTables => html(snapshot, form == Form::Html),
    }
}

/// `?auto`: one `LBRSBalancer:` line per balancer and one `LBRSMember:` line per member, each
/// a list of `name=value` fields separated by spaces. Values are percent-encoded where they
/// would break that (space, `%`, control characters), and empty when there is none.
fn auto(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for b in &snapshot.balancers {
        let inflight: u64 = b.members.iter().map(|m| m.inflight).sum();
        let _ = writeln!(
            out,
            "LBRSBalancer: server={} balancer={} method={} members={} usable={} inflight={inflight} shed={} diverted={}",
            field(&b.server),
            field(&b.name),
            field(&b.method),
            b.members.len(),
            usable(b),
            b.shed,
            b.diverted,
        );
        if let Some(q) = &b.queue {
            let _ = writeln!(
                out,
                "LBRSQueue: server={} balancer={} waiting={} peak={} max={} joined={} served={} timed_out={} gone={} \
                 full={} wait_seconds_total={:.6} wait_seconds_max={:.6}",
                field(&b.server),
                field(&b.name),
                q.waiting,
                q.peak,
                q.max,
                q.joined,
                q.served,
                q.timed_out,
                q.gone,
                q.full,
                q.wait_seconds_total,
                q.wait_seconds_max,
            );
        }
        for m in &b.members {
            let _ = writeln!(
                out,
                "LBRSMember: server={} balancer={} member={} route={} state={} up={} inflight={} limit={} selected={} \
                 completed={} failed={} latency_ms={} weight={} loadfactor={} slow_start={} ejected={} ejections={}",
                field(&b.server),
                field(&b.name),
                field(&m.name),
                field(&m.route),
                m.state,
                u8::from(m.up),
                m.inflight,
                m.max_inflight.map_or(String::new(), |n| n.to_string()),
                m.selected,
                m.completed,
                m.failed,
                m.latency_ms.map_or(String::new(), |l| format!("{l:.3}")),
                m.effective_weight,
                m.loadfactor,
                m.slow_start_progress.map_or(String::new(), |p| format!("{p:.3}")),
                u8::from(m.ejected),
                m.ejections,
            );
        }
    }
    out
}

fn usable(b: &BalancerStatus) -> usize {
    b.members.iter().filter(|m| m.up).count()
}

/// A value of an `?auto` field: one word, whatever the configuration holds (space, `%` and
/// control characters percent-encoded; other characters, UTF-8 included, as they are).
fn field(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' ' | '%' | '\u{0}'..='\u{1f}' | '\u{7f}' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn html(snapshot: &Snapshot, tables: bool) -> String {
    let mut out = String::from("<hr />\n<h2>mod_lbmethod_rs balancers</h2>\n");
    if snapshot.balancers.is_empty() {
        out.push_str("<p>No balancers are configured.</p>\n");
    }
    for b in &snapshot.balancers {
        let inflight: u64 = b.members.iter().map(|m| m.inflight).sum();
        let _ = writeln!(
            out,
            "<h3>{} ({}, method {}{})</h3>\n<p>{} of {} members usable, {inflight} in flight, {} shed{}.</p>",
            escape(&b.name),
            escape(&b.server),
            escape(&b.method),
            if b.tracked { "" } else { ", not one of this module's: counters idle" },
            usable(b),
            b.members.len(),
            b.shed,
            if b.method == "byhash" { format!(", {} diverted", b.diverted) } else { String::new() },
        );
        if let Some(q) = &b.queue {
            let _ = writeln!(
                out,
                "<p>Queue: {} waiting (peak {} of {}), {} served after waiting, {} timed out, {} gone, {} refused \
                 full; longest wait {:.3} s.</p>",
                q.waiting, q.peak, q.max, q.served, q.timed_out, q.gone, q.full, q.wait_seconds_max
            );
        }
        if tables {
            out.push_str(concat!(
                "<table border=\"0\">\n<tr><th>Member</th><th>Route</th><th>State</th><th>In flight</th>",
                "<th>Cap</th><th>Selected</th><th>Failed</th><th>Latency (ms)</th><th>Weight</th></tr>\n",
            ));
            for m in &b.members {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&m.name),
                    escape(&m.route),
                    escape(state(m)),
                    m.inflight,
                    m.max_inflight.map_or(String::new(), |n| n.to_string()),
                    m.selected,
                    m.failed,
                    latency(m),
                    weight(m),
                );
            }
            out.push_str("</table>\n");
        } else {
            out.push_str("<ul>\n");
            for m in &b.members {
                let _ = writeln!(
                    out,
                    "<li>{}: {}, {} in flight, {} selected, {} failed, latency {} ms, weight {}</li>",
                    escape(&m.name),
                    escape(state(m)),
                    m.inflight,
                    m.selected,
                    m.failed,
                    if m.latency_ms.is_some() { latency(m) } else { "unknown".to_string() },
                    weight(m),
                );
            }
            out.push_str("</ul>\n");
        }
    }
    out
}

/// The member's state, `ejected` while outlier detection keeps it out.
fn state(m: &MemberStatus) -> &'static str {
    if m.ejected { "ejected" } else { m.state }
}

fn latency(m: &MemberStatus) -> String {
    m.latency_ms.map_or(String::new(), |l| format!("{l:.2}"))
}

/// The weight now, and the loadfactor when slow start holds it lower.
fn weight(m: &MemberStatus) -> String {
    if m.effective_weight < m.loadfactor {
        format!("{} of {}", m.effective_weight, m.loadfactor)
    } else {
        m.loadfactor.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::sample;

    #[test]
    fn auto_has_one_line_per_balancer_and_member() {
        let text = render_server_status(&sample(), Form::Auto);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(
            lines[0],
            "LBRSBalancer: server=localhost:80 balancer=balancer://app method=byweight members=2 usable=1 inflight=2 shed=4 diverted=0"
        );
        assert_eq!(
            lines[1],
            "LBRSQueue: server=localhost:80 balancer=balancer://app waiting=3 peak=12 max=100 joined=40 served=30 \
             timed_out=5 gone=2 full=1 wait_seconds_total=7.500000 wait_seconds_max=5.000000"
        );
        let lines = [lines[0], lines[2], lines[3]];
        assert!(lines[1].starts_with(
            "LBRSMember: server=localhost:80 balancer=balancer://app member=http://127.0.0.1:8081 "
        ));
        assert!(lines[1].contains(" state=ok up=1 inflight=2 limit=8 selected=10 "), "{}", lines[1]);
        assert!(
            lines[1].contains(" latency_ms=4.500 weight=0.75 loadfactor=1.5 slow_start=0.500"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains(" route= state=error up=0 "), "{}", lines[2]);
        assert!(lines[2].contains(" latency_ms= "), "{}", lines[2]);
        assert!(lines[1].ends_with(" ejected=0 ejections=2") && lines[2].ends_with(" ejected=1 ejections=1"));
        // Every line is `Key: value`, and every field one word.
        for line in lines {
            let (_, fields) = line.split_once(": ").unwrap();
            assert!(fields.split(' ').all(|f| f.contains('=')), "{line}");
        }
    }

    #[test]
    fn auto_values_stay_one_word() {
        assert_eq!(field("a b%c\nd"), "a%20b%25c%0Ad");
        assert_eq!(field("é x"), "é%20x");
        assert_eq!(field("<script>"), "<script>", "plain text: nothing to escape for HTML");
    }

    #[test]
    fn html_escapes_and_has_a_row_per_member() {
        let html = render_server_status(&sample(), Form::Html);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert_eq!(html.matches("<tr><td>").count(), 2);
        assert!(html.contains("1 of 2 members usable, 2 in flight, 4 shed."), "{html}");
        assert!(html.contains("<td>0.75 of 1.5</td>"), "{html}");
        let plain = render_server_status(&sample(), Form::HtmlWithoutTables);
        assert!(!plain.contains("<table") && plain.matches("<li>").count() == 2, "{plain}");
    }
}
