//! docs/routing.md: every recipe, taken from the page itself, through the real apache2 with the
//! module and real backends. Routing by path (and the order of ProxyPass lines), by host name,
//! by cookie or header with mod_rewrite, by key with byhash; the headers backends receive, and
//! ProxyPassReverse rewriting what they send back.

mod guide_common;
use lbrs_harness::apache::ScratchDir;

use guide_common::{backend, get, seen_header, seen_request_line, show, start};
use lbrs_harness::apache::free_port;
use lbrs_harness::{Recipe, backends};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;

const DOC: &str = "docs/routing.md";

#[test]
fn by_path_each_rule_reaches_its_balancer_and_the_first_match_wins() {
    let b = backends(&["app1", "app2", "api1", "api2", "static1", "static2"]);
    let downloads = ScratchDir::new().expect("a scratch directory");
    fs::write(downloads.path().join("report.pdf"), "the report\n").unwrap();
    let mut recipe = Recipe::load(DOC, "by-path").replace("/srv/downloads/", &downloads.slash());
    for (address, member) in
        ["10.0.0.11", "10.0.0.12", "10.0.0.21", "10.0.0.22", "10.0.0.31", "10.0.0.32"].iter().zip(&b)
    {
        recipe = recipe.replace(&format!("http://{address}:8080"), &member.url());
    }
    let apache = start(recipe.text(), &["alias"]);

    let app = ["app1", "app2"];
    let api = ["api1", "api2"];
    let statics = ["static1", "static2"];
    // The API gets its prefix stripped.
    let response = get(&apache, "/api/orders/__headers", &[]);
    assert!(api.contains(&backend(&response).as_str()), "{}", show(&response));
    assert_eq!(seen_request_line(&response), "GET /orders/__headers HTTP/1.1");
    for _ in 0..4 {
        assert!(api.contains(&backend(&get(&apache, "/api/orders/7", &[])).as_str()));
    }
    // Static files by pattern, with their whole path.
    let response = get(&apache, "/css/__headers.css", &[]);
    assert!(statics.contains(&backend(&response).as_str()), "{}", show(&response));
    assert_eq!(seen_request_line(&response), "GET /css/__headers.css HTTP/1.1");
    assert!(statics.contains(&backend(&get(&apache, "/img/logo.svg", &[])).as_str()));
    // A redirect from the API comes back under /api.
    let response = get(&apache, "/api/__redirect", &[]);
    let front = format!("http://{}/api/landing", apache.addr());
    assert_eq!(response.header("location"), Some(front.as_str()), "{}", show(&response));
    // Everything else, /api without its slash included, to the application.
    for path in ["/", "/api", "/account/settings", "/logo.svg.html"] {
        let response = get(&apache, path, &[]);
        assert!(app.contains(&backend(&response).as_str()), "{path}: {}", show(&response));
    }
    // Exclusions: files from disk, the status page from the module; no backend involved.
    let response = get(&apache, "/downloads/report.pdf", &[]);
    assert_eq!(
        (response.status, response.text().as_str(), backend(&response)),
        (200, "the report\n", "".into())
    );
    let status = apache.status().expect("the status page is excluded from ProxyPass");
    let names: BTreeSet<String> = status["balancers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> =
        ["balancer://api", "balancer://app", "balancer://static"].iter().map(|s| s.to_string()).collect();
    assert_eq!(names, expected);
    drop(apache);

    // The same lines with ProxyPass "/" moved first: it takes everything.
    let text = recipe.text().replace("ProxyPass \"/\" \"balancer://app/\"\n", "");
    let text = text.replace(
        "ProxyPass \"/lb-status\" \"!\"\n",
        "ProxyPass \"/\" \"balancer://app/\"\nProxyPass \"/lb-status\" \"!\"\n",
    );
    let apache = start(&text, &["alias"]);
    // (The test server's own "ProxyPass /lb-status !" comes before the page's lines, so the
    // status page is not part of this check.)
    for path in ["/api/orders/7", "/css/site.css", "/downloads/report.pdf"] {
        let response = get(&apache, path, &[]);
        assert!(app.contains(&backend(&response).as_str()), "{path} with \"/\" first: {}", show(&response));
    }
}

#[test]
fn by_host_each_name_reaches_its_balancer_and_backends_see_the_forwarded_headers() {
    let b = backends(&["www1", "www2", "api1", "api2"]);
    let port = free_port().unwrap();
    let mut recipe = Recipe::load(DOC, "by-host").replace("*:80", &format!("*:{port}"));
    for (address, member) in ["10.0.0.11", "10.0.0.12", "10.0.0.21", "10.0.0.22"].iter().zip(&b) {
        recipe = recipe.replace(&format!("http://{address}:8080"), &member.url());
    }
    let config = lbrs_harness::ApacheConfig::new(recipe.text()).port(port).with_module("headers");
    let apache = lbrs_harness::Apache::start(config).unwrap();

    for host in ["www.example.com", "example.com", "WWW.Example.com"] {
        for _ in 0..2 {
            let response = get(&apache, "/", &[("Host", host)]);
            assert!(["www1", "www2"].contains(&backend(&response).as_str()), "{host}: {}", show(&response));
        }
    }
    for _ in 0..4 {
        let response = get(&apache, "/", &[("Host", "api.example.com")]);
        assert!(["api1", "api2"].contains(&backend(&response).as_str()), "{}", show(&response));
    }
    let before: u64 = b.iter().map(|b| b.stats().requests).sum();
    for host in ["unknown.example", "127.0.0.1"] {
        let response = get(&apache, "/", &[("Host", host)]);
        assert_eq!(response.status, 403, "{host} reaches the default virtual host: {}", show(&response));
        let response = get(&apache, "/lb-status", &[("Host", host)]);
        assert_eq!(response.status, 403, "the default virtual host refuses the status page too");
    }
    assert_eq!(b.iter().map(|b| b.stats().requests).sum::<u64>(), before, "no backend saw them");
    let response = get(&apache, "/lb-status?format=json", &[("Host", "www.example.com")]);
    assert_eq!(response.status, 200, "the status page answers with a real name");

    // What the backend receives.
    let response = get(&apache, "/__headers", &[("Host", "www.example.com")]);
    let seen = |name: &str| seen_header(&response, name).unwrap_or_default();
    assert_eq!(seen("Host"), "www.example.com", "ProxyPreserveHost On: {}", response.text());
    assert_eq!(seen("X-Forwarded-For"), "127.0.0.1");
    assert_eq!(seen("X-Forwarded-Host"), "www.example.com");
    assert_eq!(seen("X-Forwarded-Server"), "www.example.com");
    assert_eq!(seen("X-Forwarded-Proto"), "http");
    // A client's own X-Forwarded-For is kept, and the real address appended.
    let response =
        get(&apache, "/__headers", &[("Host", "api.example.com"), ("X-Forwarded-For", "203.0.113.9")]);
    assert_eq!(seen_header(&response, "X-Forwarded-For").as_deref(), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(seen_header(&response, "X-Forwarded-Server").as_deref(), Some("api.example.com"));
}

#[test]
fn by_cookie_or_header_testers_reach_the_beta_balancer() {
    let b = backends(&["app1", "app2", "beta"]);
    let recipe = Recipe::load(DOC, "by-cookie-or-header")
        .replace("http://10.0.0.11:8080", &b[0].url())
        .replace("http://10.0.0.12:8080", &b[1].url())
        .replace("http://10.0.0.41:8080", &b[2].url());
    let apache = start(recipe.text(), &["rewrite"]);
    // What the page says of the alternative: httpd refuses ProxyPass inside <If>.
    let conditional =
        "<Location \"/\">\n<If \"-n req('X-Beta')\">\nProxyPass \"balancer://beta/\"\n</If>\n</Location>\n";
    let (ok, said) = lbrs_harness::config_test(
        &lbrs_harness::ApacheConfig::new(&format!("{}{conditional}", recipe.text())).with_module("rewrite"),
    );
    assert!(!ok && said.contains("ProxyPass cannot occur within <If> section"), "{said}");

    let cases: [(&[(&str, &str)], bool); 9] = [
        (&[], false),
        (&[("Cookie", "beta=1")], true),
        (&[("Cookie", "lang=fr; beta=1")], true),
        (&[("Cookie", "beta=1; lang=fr")], true),
        (&[("Cookie", "notbeta=1")], false),
        (&[("Cookie", "beta=10")], false),
        (&[("Cookie", "beta=0")], false),
        (&[("X-Beta", "1")], true),
        (&[("X-Beta", "yes")], false),
    ];
    let mut to_beta = 0;
    for (headers, beta) in cases {
        for _ in 0..2 {
            let response = get(&apache, "/page", headers);
            let expected: &[&str] = if beta { &["beta"] } else { &["app1", "app2"] };
            assert!(expected.contains(&backend(&response).as_str()), "{headers:?}: {}", show(&response));
            to_beta += u64::from(beta);
        }
    }
    // The status page is left alone, even for testers.
    let response = get(&apache, "/lb-status?format=json", &[("Cookie", "beta=1")]);
    assert_eq!((response.status, backend(&response)), (200, String::new()));
    // The [P] requests went through the balancer: the module picked and counted them.
    let member = apache.member_status("balancer://beta", &b[2].url()).unwrap();
    assert_eq!(member["selected"], to_beta, "{member}");
    assert_eq!(b[2].stats().requests, to_beta);
}

#[test]
fn by_key_each_customer_host_stays_on_one_member() {
    let b = backends(&["t1", "t2", "t3"]);
    let recipe = Recipe::load(DOC, "by-key")
        .replace("http://10.0.0.51:8080", &b[0].url())
        .replace("http://10.0.0.52:8080", &b[1].url())
        .replace("http://10.0.0.53:8080", &b[2].url());
    let apache = start(recipe.text(), &[]);

    let mut member_of: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..3 {
        for n in 0..30 {
            let host = format!("customer{n}.saas.example");
            // The key is lower-cased: the name in any case is the same customer.
            let asked = if round == 1 { host.to_uppercase() } else { host.clone() };
            let response = get(&apache, "/", &[("Host", &asked)]);
            let served = backend(&response);
            assert!(!served.is_empty(), "{}", show(&response));
            let first = member_of.entry(host.clone()).or_insert_with(|| served.clone());
            assert_eq!(*first, served, "{asked} moved in round {round}");
        }
    }
    let used: BTreeSet<&String> = member_of.values().collect();
    assert_eq!(used.len(), 3, "30 customers spread over the three members: {member_of:?}");
    let status = apache.status().unwrap();
    assert_eq!(status["balancers"][0]["method"], "byhash");
    assert_eq!(status["balancers"][0]["diverted"], 0, "nothing was diverted at this load");
}

#[test]
fn reverse_rewrites_the_location_and_the_cookies_a_backend_sends() {
    let b = backends(&["shop1", "shop2"]);
    let recipe = Recipe::load(DOC, "reverse")
        .replace("http://10.0.0.21:8080", &b[0].url())
        .replace("http://10.0.0.22:8080", &b[1].url())
        // The backends write their own address, as the page's example does with 10.0.0.21.
        .replace("\"10.0.0.21\"", "\"127.0.0.1\"")
        .replace("\"10.0.0.22\"", "\"127.0.0.1\"");
    let apache = start(recipe.text(), &[]);

    let mut served = BTreeSet::new();
    for _ in 0..4 {
        let response = get(&apache, "/shop/__redirect", &[("Host", "www.example.com")]);
        assert_eq!(response.status, 302, "{}", show(&response));
        assert_eq!(
            response.header("location"),
            Some("http://www.example.com/shop/landing"),
            "{}",
            show(&response)
        );
        assert_eq!(response.header("set-cookie"), Some("app=1; Domain=www.example.com; Path=/shop/"));
        served.insert(backend(&response));
    }
    assert_eq!(served.len(), 2, "both members' addresses were rewritten: {served:?}");

    // Without the reverse lines, the client would get the members' own addresses.
    let bare: String = recipe
        .text()
        .lines()
        .filter(|l| !l.starts_with("ProxyPassReverse"))
        .map(|l| format!("{l}\n"))
        .collect();
    drop(apache);
    let apache = start(&bare, &[]);
    let response = get(&apache, "/shop/__redirect", &[("Host", "www.example.com")]);
    let location = response.header("location").unwrap_or_default();
    assert!(
        location.starts_with("http://127.0.0.1:") && location.ends_with("/landing"),
        "{}",
        show(&response)
    );
    assert!(response.header("set-cookie").unwrap_or_default().contains("Domain=127.0.0.1; Path=/"));
    drop(apache);

    // With the trailing slashes, mod_proxy leaves a double slash, as the page warns.
    let slashed = recipe.text().replace(
        "ProxyPassReverse \"/shop\" \"balancer://shop\"",
        "ProxyPassReverse \"/shop/\" \"balancer://shop/\"",
    );
    let apache = start(&slashed, &[]);
    let response = get(&apache, "/shop/__redirect", &[("Host", "www.example.com")]);
    assert_eq!(
        response.header("location"),
        Some("http://www.example.com/shop//landing"),
        "{}",
        show(&response)
    );
}
