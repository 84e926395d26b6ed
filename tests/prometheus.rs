//! The metrics (`/lb-status?format=prometheus`) through real apache2: the exposition passes
//! Debian's `promtool check metrics`, a real Prometheus server scrapes it and answers queries
//! with the right values, and the shipped alert rules and dashboard (monitoring/) pass promtool
//! (`check rules`, and `test rules` with their unit tests) and use only metrics the module
//! exposes; and no counter goes back across a graceful restart that moves the counters.

use lbrs_harness::prometheus::{Prometheus, ScrapeJob, promtool};
use lbrs_harness::{Apache, ApacheConfig, Backend, BackendSpec, Load, backends, balancer_block, wait_for};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring").join(file)
}

/// The members of `balancer://web`: the backends, but the fourth refuses connections (nothing
/// listens on its port), so that the first request it gets puts it in error.
fn web_members(b: &[Backend]) -> Vec<String> {
    let refused = format!("http://127.0.0.1:{}", lbrs_harness::apache::free_port().unwrap());
    b.iter().enumerate().map(|(i, backend)| if i == 3 { refused.clone() } else { backend.url() }).collect()
}

/// A server with members in every state the configuration can set, an escaped route, a cap,
/// slow start, and a balancer of each method that ranks or hashes, after some traffic.
fn varied_server(b: &[Backend]) -> Apache {
    let mut body = String::from("<Proxy \"balancer://web\">\n");
    let params = [
        "loadfactor=2 route=<script>\"x\"\\y</script>",
        "",
        "status=+H",
        "loadfactor=2 retry=600",
        "status=+D",
        "status=+N",
        "status=+R",
        "status=+S",
    ];
    for (url, params) in web_members(b).iter().zip(params) {
        body.push_str(&format!("    BalancerMember \"{url}\" {params}\n"));
    }
    body.push_str(concat!(
        "    LBMaxInflight 4\n    LBQueue timeout=5s\n    LBSlowStart 30s\n    ProxySet lbmethod=byinflight\n</Proxy>\n",
        "ProxyPass \"/web/\" \"balancer://web/\"\n",
    ));
    body.push_str(&balancer_block("cache", "/cache/", &[(&b[0], ""), (&b[1], "")], "lbmethod=byhash"));
    body.push_str("<Proxy \"balancer://cache\">\n    LBHashKey \"%{REQUEST_URI}\"\n</Proxy>\n");
    // Members from a name too: its name server (port 9, nobody) does not answer, so the
    // discovery series show a failing lookup.
    body.push_str(&balancer_block(
        "api",
        "/api/",
        &[(&b[0], ""), (&b[1], "loadfactor=3")],
        "lbmethod=bylatency\n    LBDiscover http://api.internal resolver=127.0.0.1:9 dns-timeout=200ms slots=4",
    ));
    let apache = Apache::start(ApacheConfig::new(&body)).expect("start apache2");
    for path in ["/web/", "/cache/", "/api/"] {
        let report = Load::new(path, 2, 20).run(apache.addr());
        assert_eq!(report.count_status(200), 20, "{path}: {:?}", report.per_status());
    }
    // Until the refusing member has had its request (the method may not have picked it yet).
    let refusing = &web_members_of(&apache)[3];
    let in_error = wait_for(Duration::from_secs(10), || {
        assert_eq!(apache.get("/web/").map(|r| r.status).ok(), Some(200), "failover hides the refusal");
        apache.member_status("balancer://web", refusing).is_ok_and(|m| m["status"] == "error")
    });
    assert!(in_error, "{:?}", apache.member_status("balancer://web", refusing));
    apache
}

/// The member URLs of `balancer://web`, from the status page.
fn web_members_of(apache: &Apache) -> Vec<String> {
    let status = apache.status().unwrap();
    let web = status["balancers"].as_array().unwrap().iter().find(|b| b["name"] == "balancer://web").unwrap();
    web["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect()
}

fn exposition(apache: &Apache) -> String {
    let response = apache.get("/lb-status?format=prometheus").expect("the metrics answer");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    response.text()
}

/// The sample lines of metric `name` whose labels contain every one of `labels`.
fn samples<'a>(text: &'a str, name: &str, labels: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .collect()
}

#[test]
fn the_exposition_passes_promtool_and_shows_every_state() {
    let b = backends(&["a", "b", "c", "d", "e", "f", "g", "h"]);
    let apache = varied_server(&b);
    let text = exposition(&apache);

    let (ok, said) = promtool(&["check", "metrics"], text.as_bytes()).unwrap();
    println!("promtool check metrics: exit {}, said: {said:?}", if ok { 0 } else { 1 });
    assert!(ok && said.trim().is_empty(), "promtool check metrics:\n{said}\n{text}");

    // Each member has every state's series, exactly one of them 1.
    let web = "balancer=\"balancer://web\"";
    let expected = ["ok", "ok", "standby", "error", "disabled", "draining", "spare", "stopped"];
    let members = web_members_of(&apache);
    assert_eq!(members.len(), 8, "{members:?}");
    for (url, state) in members.iter().zip(expected) {
        let member = format!("member=\"{url}\"");
        let status = samples(&text, "lbrs_member_status", &[web, &member]);
        assert_eq!(status.len(), 10, "{status:?}");
        let set: Vec<_> = status.iter().filter(|l| l.ends_with(" 1")).collect();
        assert_eq!(set.len(), 1, "{status:?}");
        assert!(set[0].contains(&format!("state=\"{state}\"")), "{url} is {state}: {set:?}");
        let up = samples(&text, "lbrs_member_up", &[web, &member]);
        let usable = !matches!(state, "error" | "disabled" | "stopped");
        assert_eq!(
            up,
            [format!("lbrs_member_up{{server=\"127.0.0.1\",{web},{member}}} {}", u8::from(usable))]
        );
    }
    assert_eq!(
        samples(&text, "lbrs_balancer_members", &[web]),
        ["lbrs_balancer_members{server=\"127.0.0.1\",balancer=\"balancer://web\"} 8"]
    );
    assert!(samples(&text, "lbrs_balancer_members_usable", &[web])[0].ends_with(" 5"));
    // The route is a label value of the info series, escaped as the format says.
    let info = samples(&text, "lbrs_member_info", &[web, "route=\"<script>"]);
    assert!(info[0].contains("route=\"<script>\\\"x\\\"\\\\y</script>\""), "{info:?}");
    // Counters add up: every attempt selected has ended, completed or failed.
    let sum = |name: &str| -> u64 {
        samples(&text, name, &[web])
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let selected = sum("lbrs_member_selected_total");
    assert!(selected > 20, "{selected}");
    assert_eq!(selected, sum("lbrs_member_completed_total") + sum("lbrs_member_failed_total"));
    assert!(sum("lbrs_member_failed_total") >= 1);
    assert_eq!(samples(&text, "lbrs_member_inflight_limit", &[web]).len(), 8, "a cap on every member");
    assert_eq!(samples(&text, "lbrs_member_hash_share_ratio", &["balancer://cache"]).len(), 2);
    assert_eq!(samples(&text, "lbrs_member_score", &["balancer://api"]).len(), 2);
    assert!(samples(&text, "lbrs_balancer_info", &["balancer://api", "method=\"bylatency\""]).len() == 1);
    let latency = samples(&text, "lbrs_member_latency_seconds", &["balancer://api"]);
    assert!(!latency.is_empty(), "a sample for a member that served");
    assert!(
        latency.iter().all(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() < 1.0),
        "{latency:?}"
    );
}

/// The words of `text` that name this module's metrics (`lbrs_...`, not inside a longer word).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("lbrs_") {
        if text[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String =
            text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        names.insert(name);
    }
    names
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_use_is_exposed() {
    let b = backends(&["a", "b", "c", "d", "e", "f", "g", "h"]);
    let apache = varied_server(&b);
    let text = exposition(&apache);
    // Families, and the names of their samples (a histogram's `_bucket`, `_sum`, `_count`).
    let exposed: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ").or_else(|| (!l.starts_with('#')).then_some(l)))
        .filter_map(|l| l.split([' ', '{']).next())
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect();
    for file in ["lbrs-alerts.yml", "lbrs-dashboard.json"] {
        let used = metric_names(&std::fs::read_to_string(monitoring(file)).unwrap());
        assert!(used.len() >= 4, "{file} uses {used:?}");
        let missing: Vec<_> = used.difference(&exposed).collect();
        assert!(missing.is_empty(), "{file} uses metrics the module does not expose: {missing:?}");
        // Each also has at least one sample in this varied server's exposition.
        for name in &used {
            assert!(!samples(&text, name, &[]).is_empty(), "{file}: no sample of {name}");
        }
    }
}

#[test]
fn the_dashboard_is_grafana_json_and_the_rules_pass_promtool() {
    let (ok, said) =
        promtool(&["check", "rules", monitoring("lbrs-alerts.yml").to_str().unwrap()], b"").unwrap();
    println!("promtool check rules: {said}");
    assert!(ok, "promtool check rules:\n{said}");
    assert!(said.contains("SUCCESS"), "{said}");
    // The rules' unit tests: each alert fires on the series it is for, and only on those.
    let tests = monitoring("lbrs-alerts.test.yml");
    let (ok, said) = promtool(&["test", "rules", tests.to_str().unwrap()], b"").unwrap();
    println!("promtool test rules: {said}");
    assert!(ok && said.contains("SUCCESS"), "promtool test rules:\n{said}");

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring("lbrs-dashboard.json")).unwrap()).unwrap();
    assert!(dashboard["title"].is_string());
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    let mut queries = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel without targets: {panel}"));
        assert!(targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| e.contains("lbrs_"))), "{panel}");
        queries.extend(targets.iter().filter_map(|t| t["expr"].as_str()));
    }
    // Every query of the dashboard is valid PromQL once Grafana has put in its variables:
    // promtool parses them as recording rules (JSON is YAML), read from its standard input.
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, query)| {
            let query = query
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
                .replace("$server", ".*")
                .replace("$balancer", ".*");
            serde_json::json!({ "record": format!("dashboard_query_{i}"), "expr": query })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let (ok, said) = promtool(&["check", "rules", "/dev/stdin"], file.to_string().as_bytes()).unwrap();
    assert!(ok, "the dashboard's queries:\n{said}");
}

#[test]
fn a_real_prometheus_scrapes_in_flight_and_selected_counts() {
    let fast = Backend::start(BackendSpec::new("fast")).unwrap();
    let slow = Backend::start(BackendSpec::new("slow").delay(Duration::from_secs(8))).unwrap();
    let mut body = balancer_block("fast", "/fast/", &[(&fast, "")], "lbmethod=byweight");
    body.push_str(&balancer_block("slow", "/slow/", &[(&slow, "")], "lbmethod=byinflight"));
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let job = ScrapeJob {
        name: "apache_lbrs".into(),
        target: apache.addr(),
        path: "/lb-status".into(),
        params: vec![("format".into(), "prometheus".into())],
    };
    let prometheus = Prometheus::start(&[job], &[&monitoring("lbrs-alerts.yml")]).unwrap();
    let value = |promql: &str| -> Option<f64> {
        let result = prometheus.query(promql).unwrap_or_default();
        (result.len() == 1).then(|| result[0].1)
    };
    // The first scrape succeeded.
    assert!(
        wait_for(Duration::from_secs(15), || value("up{job=\"apache_lbrs\"}") == Some(1.0)),
        "{:?}",
        prometheus.query("up")
    );

    let report = Load::new("/fast/", 1, 7).run(apache.addr());
    assert_eq!(report.count_status(200), 7);
    let addr = apache.addr();
    let held: Vec<_> =
        (0..3).map(|_| std::thread::spawn(move || lbrs_harness::client::get(addr, "/slow/"))).collect();

    let inflight = format!("lbrs_member_inflight{{balancer=\"balancer://slow\",member=\"{}\"}}", slow.url());
    let seen = wait_for(Duration::from_secs(7), || value(&inflight) == Some(3.0));
    println!("{inflight} = {:?}", prometheus.query(&inflight));
    assert!(seen, "{inflight}: {:?}", prometheus.query(&inflight));
    let selected =
        format!("lbrs_member_selected_total{{balancer=\"balancer://fast\",member=\"{}\"}}", fast.url());
    assert!(
        wait_for(Duration::from_secs(5), || value(&selected) == Some(7.0)),
        "{:?}",
        prometheus.query(&selected)
    );
    println!("{selected} = {:?}", prometheus.query(&selected));
    let up = "sum(lbrs_member_up{job=\"apache_lbrs\"})";
    assert_eq!(value(up), Some(2.0), "{:?}", prometheus.query(up));

    for request in held {
        assert_eq!(request.join().unwrap().unwrap().status, 200);
    }
    let slow_selected = "lbrs_member_selected_total{balancer=\"balancer://slow\"}";
    assert!(wait_for(Duration::from_secs(5), || value(&inflight) == Some(0.0)
        && value(slow_selected) == Some(3.0)));
    println!("after: {inflight} = {:?}, {slow_selected} = {:?}", value(&inflight), value(slow_selected));

    // The shipped alert rules load and evaluate without error against these series.
    let rules = prometheus.rules().unwrap();
    let groups = rules["data"]["groups"].as_array().cloned().unwrap_or_default();
    let loaded: Vec<_> =
        groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect();
    assert!(loaded.len() >= 4, "{rules}");
    assert!(
        wait_for(Duration::from_secs(5), || {
            let rules = prometheus.rules().unwrap_or_default();
            let all: Vec<_> = rules["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            all.iter().all(|r| r["health"] == "ok")
        }),
        "{}",
        prometheus.rules().unwrap_or_default()
    );
}

/// Every `_total` sample of an exposition, by its series (name and labels).
fn counters(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next().is_some_and(|name| name.ends_with("_total")))
        .map(|(series, value)| (series.to_string(), value.parse().expect("a counter is an integer")))
        .collect()
}

#[test]
fn no_counter_goes_back_across_a_graceful_restart_that_changes_the_balancers() {
    let slow = Backend::start(BackendSpec::new("slow").delay(Duration::from_millis(200))).unwrap();
    let fast = Backend::start(BackendSpec::new("fast")).unwrap();
    let mut body = balancer_block("capped", "/capped/", &[(&slow, "")], "lbmethod=byinflight");
    body.push_str("<Proxy \"balancer://capped\">\n    LBMaxInflight 1\n</Proxy>\n");
    let mut apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let report = Load::new("/capped/", 4, 24).run(apache.addr());
    let refused = report.count_status(503) as u64;
    assert!(refused > 0 && report.count_status(200) > 0, "{:?}", report.per_status());
    let shed = |apache: &Apache| apache.status().ok().and_then(|s| s["balancers"][0]["shed"].as_u64());
    assert!(wait_for(Duration::from_secs(5), || shed(&apache) == Some(refused)), "{:?}", shed(&apache));
    let before = counters(&exposition(&apache));
    assert!(before.values().any(|&v| v > 0), "{before:?}");

    // A balancer added: the counters move to a new shared segment, carried over by name.
    body.push_str(&balancer_block("added", "/added/", &[(&fast, "")], "lbmethod=byweight"));
    apache.reconfigure(&body).unwrap();
    assert_eq!(apache.error_log().matches("new shared segment").count(), 2, "{}", apache.error_log());
    let after = counters(&exposition(&apache));
    for (series, value) in &before {
        let now = after.get(series).copied();
        println!("{series}: {value} -> {now:?}");
        assert!(now.is_some_and(|now| now >= *value), "{series} went from {value} to {now:?}");
    }
    assert_eq!(shed(&apache), Some(refused), "shed counts are carried over");
}
