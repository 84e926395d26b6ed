//! This module's section of mod_status's `/server-status` (the optional hook `status_hook`),
//! through real apache2 with mod_status loaded: the HTML page and the `?auto` lines, nothing
//! with `ExtendedStatus Off`, and the section again after graceful restarts.

use lbrs_harness::{Apache, ApacheConfig, Load, backends, balancer_block, wait_for};
use std::time::Duration;

fn site(extended: &str, members: &str) -> String {
    format!(
        "ExtendedStatus {extended}\nProxyPass /server-status !\n<Location \"/server-status\">\n    SetHandler server-status\n    Require local\n</Location>\n{members}"
    )
}

#[test]
fn server_status_shows_each_balancer_in_html_and_in_auto() {
    let b = backends(&["a", "b"]);
    let members = balancer_block(
        "app",
        "/app/",
        &[(&b[0], "route=<b>r1</b>"), (&b[1], "loadfactor=2 status=+H")],
        "lbmethod=byweight",
    );
    let mut apache = Apache::start(ApacheConfig::new(&site("On", &members)).with_module("status")).unwrap();
    let report = Load::new("/app/", 1, 4).run(apache.addr());
    assert_eq!(report.count_status(200), 4);
    let settled = wait_for(Duration::from_secs(5), || {
        apache.member_status("balancer://app", &b[0].url()).is_ok_and(|m| m["completed"] == 4)
    });
    assert!(settled);

    let page = apache.get("/server-status").unwrap();
    assert_eq!(page.status, 200);
    let html = page.text();
    println!("{}", &html[html.find("<h2>mod_lbmethod_rs").unwrap_or(0)..]);
    assert!(html.contains("Apache Server Status"), "mod_status's own page");
    assert!(html.contains("<h2>mod_lbmethod_rs balancers</h2>"));
    assert!(html.contains("<h3>balancer://app (127.0.0.1, method byweight)</h3>"), "{html}");
    assert!(html.contains("<p>2 of 2 members usable, 0 in flight, 0 shed.</p>"), "{html}");
    assert!(
        html.contains(&format!(
            "<tr><td>{}</td><td>&lt;b&gt;r1&lt;/b&gt;</td><td>ok</td><td>0</td><td></td><td>4</td><td>0</td>",
            b[0].url()
        )),
        "{html}"
    );
    assert!(html.contains(&format!("<tr><td>{}</td><td></td><td>standby</td>", b[1].url())), "{html}");
    assert!(!html.contains("<b>r1"), "the route is escaped");
    assert!(html.trim_end().ends_with("</html>"), "the section is inside mod_status's page");

    let auto = apache.get("/server-status?auto").unwrap();
    assert_eq!(auto.status, 200);
    let text = auto.text();
    println!("{text}");
    assert!(text.lines().any(|l| l.starts_with("ServerVersion: ")), "mod_status's own lines");
    let balancer: Vec<&str> = text.lines().filter(|l| l.starts_with("LBRSBalancer: ")).collect();
    assert_eq!(
        balancer,
        [
            "LBRSBalancer: server=127.0.0.1 balancer=balancer://app method=byweight members=2 usable=2 inflight=0 shed=0 diverted=0"
        ]
    );
    let member_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("LBRSMember: ")).collect();
    assert_eq!(member_lines.len(), 2, "{text}");
    assert!(member_lines[0].starts_with(&format!(
        "LBRSMember: server=127.0.0.1 balancer=balancer://app member={} route=<b>r1</b> state=ok up=1 inflight=0 limit= selected=4 completed=4 failed=0 latency_ms=",
        b[0].url()
    )), "{}", member_lines[0]);
    assert!(
        member_lines[1].contains(" state=standby up=1 inflight=0 limit= selected=0 "),
        "{}",
        member_lines[1]
    );
    // Each field of the section's lines is one `name=value` word.
    for line in balancer.iter().chain(&member_lines) {
        assert!(line.split_once(": ").unwrap().1.split(' ').all(|f| f.contains('=')), "{line}");
    }

    // ExtendedStatus Off: mod_status's short page, without this module's section.
    apache.reconfigure(&site("Off", &members)).unwrap();
    let text = apache.get("/server-status?auto").unwrap().text();
    assert!(text.contains("ServerVersion: ") && !text.contains("LBRS"), "{text}");
    let html = apache.get("/server-status").unwrap().text();
    assert!(!html.contains("mod_lbmethod_rs"), "{html}");
    // And back: the hook is registered again in every generation (APR forgets optional hooks at
    // each restart).
    apache.reconfigure(&site("On", &members)).unwrap();
    let text = apache.get("/server-status?auto").unwrap().text();
    assert_eq!(text.lines().filter(|l| l.starts_with("LBRSMember: ")).count(), 2, "{text}");
}
