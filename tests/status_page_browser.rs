//! The status page in a real browser: Debian's headless Chromium loads the page served by the
//! real apache2, with members in every state an operator meets (ok, error, disabled through
//! balancer-manager, draining, hot standby, hot spare, a slow-start ramp, requests in flight
//! near a cap) and a route that is a `<script>` element. The DOM has a row per member with its
//! state in words and colour, the route is text, nothing is logged to the console (a
//! Content-Security-Policy violation would be), the page fits 1280 pixels without scrolling
//! sideways, and a screenshot is saved for a person to look at:
//! target/screenshots/status-page.png.

use lbrs_harness::chromium::Chromium;
use lbrs_harness::{
    Apache, ApacheConfig, Backend, BackendSpec, Load, backends, balancer_block, balancer_manager_set,
    wait_for,
};
use std::path::Path;
use std::time::Duration;

const ROUTE: &str = "<script>alert(\"x\")</script>";

/// Members of balancer://web in configuration order, with the state each should show.
const WEB: [(&str, &str); 7] = [
    ("loadfactor=2 route=ROUTE", "ok"),
    ("", "ok"),
    ("retry=600", "error"),
    ("", "disabled"),
    ("status=+N", "draining"),
    ("status=+H", "standby"),
    ("status=+R", "spare"),
];

#[test]
fn the_status_page_renders_in_chromium_without_errors_and_fits_1280_pixels() {
    let b = backends(&["a", "b", "d", "e", "f", "g", "h", "i"]);
    let slow = Backend::start(BackendSpec::new("slow").delay(Duration::from_secs(8))).unwrap();
    let refused = format!("http://127.0.0.1:{}", lbrs_harness::apache::free_port().unwrap());
    let urls: Vec<String> =
        (0..WEB.len()).map(|i| if i == 2 { refused.clone() } else { b[i].url() }).collect();
    let mut body = String::from("<Proxy \"balancer://web\">\n");
    for (url, (params, _)) in urls.iter().zip(WEB) {
        body.push_str(&format!("    BalancerMember \"{url}\" {}\n", params.replace("ROUTE", ROUTE)));
    }
    body.push_str("    LBMaxInflight 8\n    ProxySet lbmethod=byweight\n</Proxy>\nProxyPass \"/web/\" \"balancer://web/\"\n");
    body.push_str(&balancer_block(
        "api",
        "/api/",
        &[(&b[0], ""), (&b[7], "loadfactor=2")],
        "lbmethod=bylatency",
    ));
    body.push_str("<Proxy \"balancer://api\">\n    LBSlowStart 600s\n</Proxy>\n");
    body.push_str(&balancer_block(
        "cache",
        "/cache/",
        &[(&b[0], ""), (&b[1], ""), (&b[7], "")],
        "lbmethod=byhash",
    ));
    body.push_str("<Proxy \"balancer://cache\">\n    LBHashKey \"%{REQUEST_URI}\"\n</Proxy>\n");
    body.push_str(&balancer_block("slow", "/slow/", &[(&slow, "")], "lbmethod=byinflight"));
    body.push_str("<Proxy \"balancer://slow\">\n    LBMaxInflight 4\n</Proxy>\n");
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();

    // Disabled through balancer-manager, as an operator does.
    balancer_manager_set(&apache, "web", &urls[3], &[("w_status_D", "1")]).unwrap();
    let report = Load::new("/web/", 2, 60).run(apache.addr());
    assert_eq!(report.count_status(200), 60, "{:?}", report.per_status());
    let in_error = wait_for(Duration::from_secs(10), || {
        let _ = apache.get("/web/");
        apache.member_status("balancer://web", &refused).is_ok_and(|m| m["status"] == "error")
    });
    assert!(in_error, "{:?}", apache.member_status("balancer://web", &refused));
    // A member of api goes down and comes back: it starts a slow-start ramp.
    balancer_manager_set(&apache, "api", &b[7].url(), &[("w_status_D", "1")]).unwrap();
    Load::new("/api/", 1, 5).run(apache.addr());
    balancer_manager_set(&apache, "api", &b[7].url(), &[("w_status_D", "0")]).unwrap();
    Load::new("/api/", 2, 40).run(apache.addr());
    Load::new("/cache/", 2, 30).run(apache.addr());
    // Three requests held in flight on a member capped at 4.
    let addr = apache.addr();
    let _held: Vec<_> =
        (0..3).map(|_| std::thread::spawn(move || lbrs_harness::client::get(addr, "/slow/"))).collect();
    assert!(wait_for(Duration::from_secs(5), || {
        apache.member_status("balancer://slow", &slow.url()).is_ok_and(|m| m["inflight"] == 3)
    }));

    let mut browser = Chromium::start(1280, 900).unwrap();
    let page = browser.new_page().unwrap();
    browser.navigate(&page, &apache.url("/lb-status")).unwrap();
    let facts = browser
        .evaluate(
            &page,
            r#"JSON.stringify({
                scrollWidth: document.documentElement.scrollWidth,
                clientWidth: document.documentElement.clientWidth,
                scripts: document.scripts.length,
                bodyBackground: getComputedStyle(document.body).backgroundColor,
                balancers: [...document.querySelectorAll('section')].map(section => ({
                    name: section.querySelector('h2').firstChild.textContent.trim(),
                    summary: section.querySelector('.summary').textContent,
                    members: [...section.querySelectorAll('tbody tr')].map(row => ({
                        url: row.querySelector('.url').textContent,
                        details: row.querySelector('.url').nextElementSibling.textContent,
                        state: row.querySelector('.st').textContent,
                        colour: getComputedStyle(row.querySelector('.st')).backgroundColor,
                        bars: row.querySelectorAll('svg.bar').length,
                        text: row.innerText,
                    })),
                })),
            })"#,
        )
        .unwrap();
    let facts: serde_json::Value = serde_json::from_str(facts.as_str().unwrap()).unwrap();
    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots/status-page.png");
    browser.screenshot(&page, &screenshot).unwrap();
    println!("screenshot: {}", screenshot.display());
    println!("{}", serde_json::to_string_pretty(&facts).unwrap());

    let problems = browser.problems(&page);
    assert!(problems.is_empty(), "the page logged problems: {problems:#?}");
    assert_eq!(facts["scripts"], 0, "no script element: the route's <script> is text");
    assert_eq!(facts["bodyBackground"], "rgb(246, 248, 250)", "the stylesheet applied (its hash is allowed)");
    let (scroll, client) = (facts["scrollWidth"].as_u64().unwrap(), facts["clientWidth"].as_u64().unwrap());
    assert!(scroll <= client && client <= 1280, "scrolls sideways: {scroll} > {client}");

    let balancers = facts["balancers"].as_array().unwrap();
    let names: Vec<&str> = balancers.iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["balancer://web", "balancer://api", "balancer://cache", "balancer://slow"]);
    let web = &balancers[0];
    assert!(web["summary"].as_str().unwrap().contains("5 of 7 members usable"), "{}", web["summary"]);
    let members = web["members"].as_array().unwrap();
    assert_eq!(members.len(), WEB.len());
    let mut colours = std::collections::BTreeMap::new();
    for ((member, url), (_, state)) in members.iter().zip(&urls).zip(WEB) {
        assert_eq!(member["url"], url.as_str());
        assert_eq!(member["state"], state, "{member}");
        assert!(member["bars"].as_u64().unwrap() >= 2, "selections and in flight against the cap: {member}");
        colours.insert(state, member["colour"].as_str().unwrap().to_string());
    }
    assert!(members[0]["details"].as_str().unwrap().contains(&format!("route {ROUTE}")), "{}", members[0]);
    // Every state has a colour of its own but for the ones of a kind (standby and spare).
    for (a, b) in
        [("ok", "error"), ("ok", "disabled"), ("ok", "draining"), ("ok", "standby"), ("error", "disabled")]
    {
        assert_ne!(colours[a], colours[b], "{a} and {b} look alike");
    }
    // The api member back from disabled is on its slow-start ramp.
    let api = balancers[1]["members"].as_array().unwrap();
    assert!(api[1]["text"].as_str().unwrap().contains("% done"), "{}", api[1]);
    // Three of four in flight on the capped member.
    let held = &balancers[3]["members"][0];
    assert!(held["text"].as_str().unwrap().contains("3 / 4"), "{held}");

    // With ?refresh=5 the page asks to be reloaded, and still logs nothing.
    browser.navigate(&page, &apache.url("/lb-status?refresh=5")).unwrap();
    let refresh = browser
        .evaluate(&page, "document.querySelector('meta[http-equiv=refresh]').getAttribute('content')")
        .unwrap();
    assert_eq!(refresh, "5");
    assert!(browser.problems(&page).is_empty(), "{:#?}", browser.problems(&page));
}
