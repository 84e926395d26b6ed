//! The HTML form of the status page: per balancer a summary line and a table of its members,
//! each with its state in colour and in words, bars of its share of the selections against
//! its share of the weight, of its requests in flight against its cap and of its slow-start
//! ramp, its latency and its failures. Fits a 1280-pixel window.
//!
//! The page works without JavaScript and has none: auto-refresh is a `<meta http-equiv=refresh>`.
//! It loads nothing else: one `<style>` element, allowed by its hash in the
//! Content-Security-Policy the handler sends ([`content_security_policy`]), and bars drawn as
//! inline SVG geometry, so that no `style` attribute is needed and the policy allows no inline
//! style at all. Every value that comes from configuration or run time is escaped.

use super::sha256::{base64, sha256};
use super::{BalancerStatus, MemberStatus, Snapshot};
use std::fmt::Write;
use std::sync::OnceLock;

/// The page's only stylesheet. Its hash is in the Content-Security-Policy: a byte changed here
/// changes the hash with it (computed from this text), never one without the other.
const STYLE: &str = concat!(
    ":root{color-scheme:light;--ok:#1a7f37;--ok-bg:#dafbe1;--warn:#9a6700;--warn-bg:#fff8c5;",
    "--bad:#cf222e;--bad-bg:#ffebe9;--off:#57606a;--off-bg:#eaeef2;--role:#0969da;--role-bg:#ddf4ff;",
    "--init:#8250df;--init-bg:#fbefff;--line:#d0d7de;--muted:#57606a}",
    "*{box-sizing:border-box}",
    "body{font:14px/1.4 system-ui,-apple-system,\"Segoe UI\",Roboto,\"DejaVu Sans\",sans-serif;",
    "color:#1f2328;background:#f6f8fa;margin:0;padding:16px 20px}",
    "header{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 24px;margin-bottom:8px}",
    "h1{font-size:22px;margin:0}h2{font-size:17px;margin:0 0 4px;overflow-wrap:anywhere}",
    ".sub{font-size:13px;font-weight:normal;color:var(--muted)}",
    "nav{color:var(--muted)}nav a{color:var(--role)}nav b{color:#1f2328}",
    ".legend{margin:4px 0 12px;color:var(--muted)}.legend .st{margin-right:2px}",
    "section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:12px 14px;margin:0 0 16px}",
    ".summary{margin:0 0 4px}.summary b{font-size:15px}.sep{color:var(--line);margin:0 6px}",
    ".settings{margin:0 0 8px;color:var(--muted);font-size:13px;overflow-wrap:anywhere}",
    "table{width:100%;border-collapse:collapse;table-layout:fixed}",
    "th{font-size:12px;font-weight:600;color:var(--muted);text-align:left;padding:4px 6px;",
    "border-bottom:2px solid var(--line)}",
    "td{padding:6px;border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:anywhere}",
    "tr:last-child td{border-bottom:0}",
    "col.c-name{width:25%}col.c-state{width:10%}col.c-share{width:17%}col.c-load{width:14%}",
    "col.c-lat{width:9%}col.c-ramp{width:9%}col.c-sel{width:8%}col.c-fail{width:8%}",
    ".num{text-align:right;font-variant-numeric:tabular-nums}th.num{text-align:right}",
    ".url{font-family:ui-monospace,\"DejaVu Sans Mono\",monospace;font-size:13px}",
    ".small{font-size:12px;color:var(--muted)}",
    ".st{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;",
    "border:1px solid currentColor}",
    ".st-ok{color:var(--ok);background:var(--ok-bg)}",
    ".st-draining{color:var(--warn);background:var(--warn-bg)}",
    ".st-error,.st-hcheck-failed,.st-ejected{color:var(--bad);background:var(--bad-bg)}",
    ".st-disabled,.st-stopped,.st-shutdown{color:var(--off);background:var(--off-bg)}",
    ".st-standby,.st-spare{color:var(--role);background:var(--role-bg)}",
    ".st-initializing{color:var(--init);background:var(--init-bg)}",
    "tr.down td{background:#fffbfb}",
    "svg.bar{display:block;width:100%;height:14px;margin:2px 0}",
    "svg.bar .track{fill:var(--off-bg)}svg.bar .picks{fill:var(--role)}svg.bar .weight{fill:#9ec5f0}",
    "svg.bar .fill-ok{fill:var(--ok)}svg.bar .fill-warn{fill:#d4a72c}svg.bar .fill-bad{fill:var(--bad)}",
    "svg.bar .ramp{fill:var(--init)}",
    ".bad{color:var(--bad);font-weight:600}",
    "footer{color:var(--muted);font-size:12px}",
);

/// The `style-src` source that allows exactly [`STYLE`].
fn style_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| format!("'sha256-{}'", base64(&sha256(STYLE.as_bytes()))))
}

/// The Content-Security-Policy of the HTML page: nothing may load or run, the page's own
/// stylesheet (by its hash) may apply, and no other site may frame the page.
pub fn content_security_policy() -> String {
    format!(
        "default-src 'none'; style-src {}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        style_hash()
    )
}

/// The refresh periods the page offers as links (any other from 1 to 3600 s works by hand).
const REFRESH_CHOICES: [u32; 3] = [5, 10, 30];

pub fn render_html(snapshot: &Snapshot, refresh: Option<u32>) -> String {
    let mut out = String::with_capacity(8192 + 2048 * snapshot.balancers.len());
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    if let Some(seconds) = refresh {
        let _ = writeln!(out, "<meta http-equiv=\"refresh\" content=\"{seconds}\">");
    }
    let _ = writeln!(
        out,
        "<title>Balancers: mod_lbmethod_rs status</title>\n<style>{STYLE}</style>\n</head><body>"
    );
    let _ = write!(
        out,
        "<header><h1>Balancers <span class=\"sub\">mod_lbmethod_rs {}</span></h1>\n<nav>Also as \
         <a href=\"?format=json\">JSON</a> and <a href=\"?format=prometheus\">Prometheus metrics</a>\
         <span class=\"sep\">|</span>Auto-refresh: ",
        escape(snapshot.module_version)
    );
    match refresh {
        None => out.push_str("<b>off</b>"),
        Some(_) => out.push_str("<a href=\"?\">off</a>"),
    }
    for choice in REFRESH_CHOICES {
        if refresh == Some(choice) {
            let _ = write!(out, " · <b>{choice} s</b>");
        } else {
            let _ = write!(out, " · <a href=\"?refresh={choice}\">{choice} s</a>");
        }
    }
    if let Some(seconds) = refresh.filter(|s| !REFRESH_CHOICES.contains(s)) {
        let _ = write!(out, " · <b>{seconds} s</b>");
    }
    out.push_str("</nav></header>\n");
    out.push_str("<p class=\"legend\">States: ");
    for state in snapshot.member_states {
        let _ = write!(out, "{} ", state_badge(state));
    }
    if snapshot.balancers.iter().any(|b| b.outlier_detection.is_some()) {
        out.push_str("<span class=\"st st-ejected\">ejected</span> ");
    }
    out.push_str("</p>\n");
    if snapshot.balancers.is_empty() {
        out.push_str("<section><p>No balancers are configured.</p></section>\n");
    }
    for balancer in &snapshot.balancers {
        balancer_section(&mut out, balancer);
    }
    out.push_str(
        "<footer>Counts since Apache started (kept across graceful restarts). Shares: the member's share of \
         the balancer's selections so far, against its share of the weight of the members taking new \
         requests now.</footer>\n</body></html>\n",
    );
    out
}

fn balancer_section(out: &mut String, b: &BalancerStatus) {
    let usable = b.members.iter().filter(|m| m.up).count();
    let inflight: u64 = b.members.iter().map(|m| m.inflight).sum();
    let _ = write!(
        out,
        "<section>\n<h2>{} <span class=\"sub\">{}</span></h2>\n<p class=\"summary\">method <b>{}</b>{}\
         <span class=\"sep\">|</span><b>{usable}</b> of {} members usable<span class=\"sep\">|</span>\
         <b>{inflight}</b> in flight<span class=\"sep\">|</span><b{}>{}</b> shed",
        escape(&b.name),
        escape(&b.server),
        escape(&b.method),
        if b.tracked { "" } else { " (not one of this module's: counters idle)" },
        b.members.len(),
        if b.shed > 0 { " class=\"bad\"" } else { "" },
        b.shed,
    );
    if b.method == "byhash" {
        let _ = write!(out, "<span class=\"sep\">|</span><b>{}</b> diverted", b.diverted);
    }
    if let Some(q) = &b.queue {
        let _ = write!(
            out,
            "<span class=\"sep\">|</span>queue <b>{}</b> waiting (peak {} of {}), {} served after waiting, \
             <b{}>{}</b> timed out, {} gone, {} refused full; longest wait {:.3} s",
            q.waiting,
            q.peak,
            q.max,
            q.served,
            if q.timed_out > 0 { " class=\"bad\"" } else { "" },
            q.timed_out,
            q.gone,
            q.full,
            q.wait_seconds_max,
        );
    }
    out.push_str("</p>\n");
    for d in &b.discovery {
        let resolved = d.resolved_seconds_ago.map_or("never".to_string(), |s| format!("{s} s ago"));
        let _ = write!(
            out,
            "<p class=\"small\">members from DNS: <b>{}</b> (resolver {}): {} address(es), TTL {} s, resolved \
             {resolved}, next lookup in {} s<span class=\"sep\">|</span>{} serving, {} draining, {} removed, \
             {} slot(s) free<span class=\"sep\">|</span>{} added, {} back, {} lookups, <b{}>{}</b> failed",
            escape(&d.name),
            escape(&d.resolver),
            d.answer,
            d.ttl_seconds,
            d.next_lookup_seconds,
            d.serving,
            d.draining,
            d.removed,
            d.free_slots,
            d.added,
            d.returned,
            d.lookups,
            if d.failing > 0 { " class=\"bad\"" } else { "" },
            d.failures,
        );
        if let (Some(error), 1..) = (&d.error, d.failing) {
            let _ = write!(out, " (failing now: {})", escape(error));
        }
        out.push_str("</p>\n");
    }

    let slow_start = b.slow_start_seconds.map_or("off".to_string(), |s| format!("{s} s"));
    let cap = match b.max_inflight {
        Some(n) if b.max_inflight_per_loadfactor => format!("{n} per loadfactor"),
        Some(n) => n.to_string(),
        None => "none".to_string(),
    };
    let _ = write!(out, "<p class=\"settings\">Slow start: {slow_start}. In-flight cap: {cap}.");
    if let Some(outliers) = &b.outlier_detection {
        let _ = write!(out, " Outlier detection: {}.", escape(outliers));
    }
    match b.method.as_str() {
        "bylatency" => {
            let _ = write!(out, " Latency decay: {} s.", b.latency_decay_seconds);
        }
        "byhash" => {
            let key = b.hash_key.as_deref().map_or("none (balanced as byinflight)".to_string(), escape);
            let bound = b.hash_balance_factor.map_or("off".to_string(), |c| c.to_string());
            let table = b.hash_table_size.map_or(String::new(), |n| format!(" Table: {n} slots."));
            let _ = write!(out, " Key: {key}. Load bound factor: {bound}.{table}");
        }
        _ => {}
    }
    out.push_str("</p>\n");

    out.push_str(concat!(
        "<table>\n<colgroup><col class=\"c-name\"><col class=\"c-state\"><col class=\"c-share\">",
        "<col class=\"c-load\"><col class=\"c-lat\"><col class=\"c-ramp\"><col class=\"c-sel\">",
        "<col class=\"c-fail\"></colgroup>\n",
        "<thead><tr><th>Member</th><th>State</th><th>Selections vs weight</th><th>In flight / cap</th>",
        "<th class=\"num\">Latency</th><th>Slow start</th><th class=\"num\">Selected</th>",
        "<th class=\"num\">Failed</th></tr></thead>\n<tbody>\n",
    ));
    let shares = Shares::of(b);
    for (i, m) in b.members.iter().enumerate() {
        member_row(out, m, shares.picks[i], shares.weight[i]);
    }
    out.push_str("</tbody></table>\n</section>\n");
}

/// Each member's share of the balancer's selections so far, and of the weight of the members
/// that take new requests now: state `ok`, in the lowest `lbset` that has one (standbys,
/// spares, draining and unusable members take none, and a higher set only when a lower one has
/// no usable member). `None` where there is nothing to share.
struct Shares {
    picks: Vec<Option<f64>>,
    weight: Vec<Option<f64>>,
}

impl Shares {
    fn of(b: &BalancerStatus) -> Shares {
        let selected: u64 = b.members.iter().map(|m| m.selected).sum();
        let picks =
            b.members.iter().map(|m| (selected > 0).then(|| m.selected as f64 / selected as f64)).collect();
        let taking = |m: &MemberStatus| m.state == "ok" && !m.ejected;
        let tier = b.members.iter().filter(|m| taking(m)).map(|m| m.lbset).min();
        let in_rotation = |m: &MemberStatus| taking(m) && Some(m.lbset) == tier;
        let total: f64 = b.members.iter().filter(|m| in_rotation(m)).map(|m| m.effective_weight).sum();
        let weight = b
            .members
            .iter()
            .map(|m| (total > 0.0).then(|| if in_rotation(m) { m.effective_weight / total } else { 0.0 }))
            .collect();
        Shares { picks, weight }
    }
}

fn member_row(out: &mut String, m: &MemberStatus, picks: Option<f64>, weight: Option<f64>) {
    let _ = write!(out, "<tr{}>", if m.up { "" } else { " class=\"down\"" });

    // Member: URL, then route, lbset, weight and flags in small print.
    let _ = write!(out, "<td><div class=\"url\">{}</div><div class=\"small\">", escape(&m.name));
    if !m.route.is_empty() {
        let _ = write!(out, "route {} · ", escape(&m.route));
    }
    let _ = write!(out, "lbset {} · weight {}", m.lbset, m.loadfactor);
    if let Some(origin) = &m.origin {
        let _ = write!(out, " · from DNS {} ({})", escape(&origin.name), origin.standing);
    }
    if m.effective_weight < m.loadfactor {
        let _ = write!(out, " (now {})", m.effective_weight);
    }
    out.push_str("</div></td>");

    // State, in colour and in words, with every flag set; an ejection, why and how long.
    let _ = write!(out, "<td>{}", state_badge(m.state));
    if let (true, Some(why), Some(left)) = (m.ejected, m.ejection_reason, m.ejection_seconds_left) {
        let _ =
            write!(out, " {}<div class=\"small\">{why}, back in {left:.1} s</div>", state_badge("ejected"));
    }
    if !m.flags.is_empty() {
        let _ = write!(out, "<div class=\"small\">{}</div>", escape(&m.flags.join(", ")));
    }
    if m.ejections > 0 {
        let _ = write!(out, "<div class=\"small\">{} ejection(s) so far</div>", m.ejections);
    }
    out.push_str("</td>");

    // Share of the selections (upper bar) against share of the weight (lower bar).
    out.push_str("<td>");
    let p = picks.unwrap_or(0.0);
    let w = weight.unwrap_or(0.0);
    let _ = write!(
        out,
        "<svg class=\"bar\" viewBox=\"0 0 100 14\" preserveAspectRatio=\"none\" role=\"img\" \
         aria-label=\"{} of the selections, {} of the weight\"><rect class=\"track\" width=\"100\" height=\"14\"/>\
         <rect class=\"picks\" width=\"{:.2}\" height=\"7\"/><rect class=\"weight\" y=\"7\" width=\"{:.2}\" height=\"7\"/></svg>",
        percent(picks),
        percent(weight),
        p * 100.0,
        w * 100.0,
    );
    let _ = write!(out, "<div class=\"small\">{} of picks · {} of weight", percent(picks), percent(weight));
    if let Some(share) = m.hash_share {
        let _ = write!(out, " · hash {:.1}%", share * 100.0);
    }
    out.push_str("</div></td>");

    // In flight against the cap.
    out.push_str("<td>");
    match m.max_inflight {
        Some(cap) if cap > 0 => {
            let used = (m.inflight as f64 / cap as f64).min(1.0);
            let class = if used >= 0.9 {
                "fill-bad"
            } else if used >= 0.7 {
                "fill-warn"
            } else {
                "fill-ok"
            };
            let _ = write!(
                out,
                "<svg class=\"bar\" viewBox=\"0 0 100 14\" preserveAspectRatio=\"none\" role=\"img\" \
                 aria-label=\"{} in flight of a cap of {cap}\"><rect class=\"track\" width=\"100\" height=\"14\"/>\
                 <rect class=\"{class}\" width=\"{:.2}\" height=\"14\"/></svg><div><b>{}</b> / {cap}",
                m.inflight,
                used * 100.0,
                m.inflight,
            );
        }
        _ => {
            let _ = write!(out, "<div><b>{}</b> <span class=\"small\">(no cap)</span>", m.inflight);
        }
    }
    let _ = write!(out, " <span class=\"small\">peak {}</span></div></td>", m.peak_inflight);

    // Latency, and the score the method ranks on.
    match m.latency_ms {
        Some(ms) => {
            let _ = write!(out, "<td class=\"num\">{ms:.2} ms");
        }
        None => out.push_str("<td class=\"num\">–"),
    }
    if let Some(score) = m.score {
        let _ = write!(out, "<div class=\"small\">score {score:.3}</div>");
    }
    out.push_str("</td>");

    // Slow-start progress.
    match m.slow_start_progress {
        Some(progress) => {
            let _ = write!(
                out,
                "<td><svg class=\"bar\" viewBox=\"0 0 100 14\" preserveAspectRatio=\"none\" role=\"img\" \
                 aria-label=\"slow start {:.0}% done\"><rect class=\"track\" width=\"100\" height=\"14\"/>\
                 <rect class=\"ramp\" width=\"{:.2}\" height=\"14\"/></svg><div class=\"small\">ramp {:.0}% done</div></td>",
                progress * 100.0,
                progress * 100.0,
                progress * 100.0,
            );
        }
        None => out.push_str("<td class=\"small\">–</td>"),
    }

    // Selected, completed; failed and their share of the attempts that ended.
    let _ =
        write!(out, "<td class=\"num\">{}<div class=\"small\">{} done</div></td>", m.selected, m.completed);
    let ended = m.completed + m.failed;
    let _ = write!(
        out,
        "<td class=\"num\"><span{}>{}</span><div class=\"small\">{}</div></td>",
        if m.failed > 0 { " class=\"bad\"" } else { "" },
        m.failed,
        if ended > 0 { format!("{:.1}%", m.failed as f64 * 100.0 / ended as f64) } else { "–".to_string() },
    );
    out.push_str("</tr>\n");
}

/// A state in colour and in words. The class is made only of the word's letters and dashes.
fn state_badge(state: &str) -> String {
    let class: String = state.chars().filter(|c| c.is_ascii_lowercase() || *c == '-').collect();
    format!("<span class=\"st st-{class}\">{}</span>", escape(state))
}

fn percent(share: Option<f64>) -> String {
    share.map_or("–".to_string(), |s| format!("{:.0}%", s * 100.0))
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
        assert!(html.contains("<span class=\"st st-error\">error</span>"));
    }

    #[test]
    fn escape_covers_the_five_characters() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn no_script_and_no_style_attribute() {
        let html = render_html(&sample(), Some(5));
        assert!(!html.contains("<script"), "the page works without JavaScript and has none");
        assert!(!html.contains("style=\""), "inline style attributes would need 'unsafe-inline'");
        assert_eq!(html.matches("<style>").count(), 1);
    }

    #[test]
    fn the_policy_allows_exactly_the_stylesheet() {
        let html = render_html(&sample(), None);
        let start = html.find("<style>").unwrap() + "<style>".len();
        let end = html.find("</style>").unwrap();
        let digest = base64(&sha256(&html.as_bytes()[start..end]));
        let policy = content_security_policy();
        assert!(policy.contains(&format!("style-src 'sha256-{digest}';")), "{policy}");
        assert!(policy.starts_with("default-src 'none';"));
        assert!(!policy.contains("unsafe"));
    }

    #[test]
    fn refresh_is_a_meta_refresh_only_when_asked() {
        assert!(!render_html(&sample(), None).contains("http-equiv"));
        let html = render_html(&sample(), Some(10));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
        assert!(html.contains("<b>10 s</b>") && html.contains("<a href=\"?\">off</a>"));
        assert!(render_html(&sample(), Some(7)).contains("<b>7 s</b>"));
    }

    #[test]
    fn each_member_has_its_row_state_and_bars() {
        let html = render_html(&sample(), None);
        assert_eq!(
            html.matches("<tr>").count() + html.matches("<tr class=\"down\">").count(),
            3,
            "header and 2 members"
        );
        assert!(html.contains("<tr class=\"down\">"), "the member in error");
        assert!(html.contains("<span class=\"st st-ejected\">ejected</span><div class=\"small\">success-rate, back in 7.5 s</div>"), "{html}");
        assert!(
            html.contains("2 ejection(s) so far")
                && html.contains("Outlier detection: on consecutive=5 eject=10s.")
        );
        // First member: every selection so far, all the weight taking requests; 2 of a cap of 8.
        assert!(html.contains("100% of picks · 100% of weight"), "{html}");
        assert!(html.contains("<b>2</b> / 8"));
        assert!(html.contains("4.50 ms"));
        assert!(html.contains("ramp 50% done"), "slow start");
        assert!(html.contains("<b>1</b> of 2 members usable"));
        assert!(html.contains("<b class=\"bad\">4</b> shed"));
        for state in sample().member_states {
            assert!(
                html.contains(&format!("<span class=\"st st-{state}\">{state}</span>")),
                "legend: {state}"
            );
        }
    }
}
