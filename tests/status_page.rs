//! The status page (`SetHandler lbmethod-rs-status`) through real apache2: HTML, JSON and
//! Prometheus metrics from the same counters, escaping, headers, methods, formats and refresh.

use lbrs_harness::{Apache, ApacheConfig, Load, backends, balancer_block, client, wait_for};
use std::time::Duration;

#[test]
fn html_and_json_show_the_same_counters() {
    let b = backends(&["a", "b"]);
    let mut body = balancer_block(
        "app",
        "/",
        &[(&b[0], "loadfactor=1 route=<i>r1</i>&x"), (&b[1], "loadfactor=2.5 lbset=1 status=+H")],
        "lbmethod=byweight",
    );
    body.push_str(&balancer_block("builtin", "/builtin", &[(&b[0], ""), (&b[1], "")], "lbmethod=byrequests"));
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    Load::new("/", 2, 10).run(apache.addr());
    // An attempt is released when its request's pool goes, just after the client has the
    // response: wait for the last one.
    let settled = wait_for(Duration::from_secs(5), || {
        apache.member_status("balancer://app", &b[0].url()).is_ok_and(|m| m["completed"] == 10)
    });
    assert!(settled, "{:?}", apache.member_status("balancer://app", &b[0].url()));

    let json = apache.status().unwrap();
    let app = json["balancers"].as_array().unwrap().iter().find(|b| b["name"] == "balancer://app").unwrap();
    assert_eq!(app["method"], "byweight");
    assert_eq!(app["tracked"], true);
    let members = app["members"].as_array().unwrap();
    assert_eq!(members[0]["name"], b[0].url());
    assert_eq!(members[0]["status"], "ok");
    assert_eq!(members[0]["loadfactor"], 1.0);
    assert_eq!(members[0]["selected"], 10);
    assert_eq!(members[0]["completed"], 10);
    assert_eq!(members[0]["inflight"], 0);
    assert_eq!(members[0]["route"], "<i>r1</i>&x");
    assert_eq!(members[1]["loadfactor"], 2.5);
    assert_eq!(members[1]["lbset"], 1);
    assert_eq!(members[1]["flags"], serde_json::json!(["hot-standby"]));
    assert_eq!(
        (&members[1]["status"], &members[1]["state"], &members[1]["up"]),
        (&"ok".into(), &"standby".into(), &true.into())
    );
    assert_eq!(members[1]["selected"], 0);
    let builtin =
        json["balancers"].as_array().unwrap().iter().find(|b| b["name"] == "balancer://builtin").unwrap();
    assert_eq!(builtin["method"], "byrequests");
    assert_eq!(builtin["tracked"], false);

    let html = apache.get("/lb-status").unwrap();
    assert_eq!(html.status, 200);
    assert_eq!(html.header("content-type"), Some("text/html; charset=utf-8"));
    let text = html.text();
    assert!(text.contains("balancer://app"));
    assert!(text.contains(&b[0].url()));
    assert!(text.contains("&lt;i&gt;r1&lt;/i&gt;&amp;x"), "route is escaped");
    assert!(!text.contains("<i>r1"), "no raw markup from the configuration");
    assert!(
        text.contains("<td class=\"num\">10<div class=\"small\">10 done</div></td>"),
        "the selected count appears"
    );
    let policy = html.header("content-security-policy").unwrap_or_default();
    assert!(policy.starts_with("default-src 'none'; style-src 'sha256-"), "{policy}");
    assert_eq!(html.header("x-content-type-options"), Some("nosniff"));
    assert!(!text.contains("<script"), "no script on the page");

    let raw = apache.get("/lb-status?format=json").unwrap();
    assert_eq!(raw.header("content-type"), Some("application/json"));
    assert_eq!(raw.header("cache-control"), Some("no-store"));
    assert_eq!(raw.header("content-security-policy"), None, "only the HTML page has one");

    let metrics = apache.get("/lb-status?format=prometheus").unwrap();
    assert_eq!(metrics.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let selected = format!(
        "lbrs_member_selected_total{{server=\"127.0.0.1\",balancer=\"balancer://app\",member=\"{}\"}} 10\n",
        b[0].url()
    );
    assert!(metrics.text().contains(&selected), "the same counters as JSON:\n{}", metrics.text());
}

#[test]
fn only_get_and_head_in_known_formats() {
    let b = backends(&["a"]);
    let apache =
        Apache::start(ApacheConfig::new(&balancer_block("app", "/", &[(&b[0], "")], "lbmethod=byweight")))
            .unwrap();

    let head = client::request(apache.addr(), "HEAD", "/lb-status?format=json", &[], b"").unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    let post = client::request(apache.addr(), "POST", "/lb-status", &[], b"x=1").unwrap();
    assert_eq!(post.status, 405);
    assert!(post.header("allow").is_some_and(|allow| allow.contains("GET")), "{:?}", post.headers);

    assert_eq!(apache.get("/lb-status?format=yaml").unwrap().status, 400);
    assert_eq!(apache.get("/lb-status?refresh=5").unwrap().status, 200);
    assert!(
        apache
            .get("/lb-status?refresh=5")
            .unwrap()
            .text()
            .contains("<meta http-equiv=\"refresh\" content=\"5\">")
    );
    for bad in ["refresh=0.5", "refresh=3601", "refresh=5%3Cx"] {
        assert_eq!(apache.get(&format!("/lb-status?{bad}")).unwrap().status, 400, "{bad}");
    }
}
