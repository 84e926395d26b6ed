//! docs/quick-start.md: the page's configuration, taken from the page itself, through the real
//! apache2 with the module and three real backends: twelve requests split exactly 2, 4 and 6,
//! and the status page shows what the page says to look at.

mod guide_common;

use guide_common::backend;
use lbrs_harness::apache::free_port;
use lbrs_harness::{Apache, ApacheConfig, Recipe, backends};
use std::collections::BTreeMap;

const DOC: &str = "docs/quick-start.md";

#[test]
fn twelve_requests_split_two_four_six_and_the_status_page_says_so() {
    let b = backends(&["app1", "app2", "app3"]);
    let port = free_port().unwrap();
    let recipe = Recipe::load(DOC, "quick-start")
        .replace("*:80", &format!("*:{port}"))
        .replace("http://10.0.0.11:8080", &b[0].url())
        .replace("http://10.0.0.12:8080", &b[1].url())
        .replace("http://10.0.0.13:8080", &b[2].url());
    let apache = Apache::start(ApacheConfig::new(recipe.text()).port(port)).unwrap();

    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..12 {
        let response = apache.get("/").unwrap();
        assert_eq!(response.status, 200);
        *served.entry(backend(&response)).or_default() += 1;
    }
    let expected: BTreeMap<String, u64> =
        [("app1", 2), ("app2", 4), ("app3", 6)].iter().map(|(name, n)| (name.to_string(), *n)).collect();
    assert_eq!(served, expected);

    // What the page's jq line prints: name, status, selected, inflight.
    let status = apache.status().unwrap();
    let balancer = &status["balancers"][0];
    assert_eq!(
        (balancer["name"].as_str(), balancer["method"].as_str()),
        (Some("balancer://app"), Some("byweight"))
    );
    let rows: Vec<(String, String, u64, u64)> = balancer["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["status"].as_str().unwrap().to_string(),
                m["selected"].as_u64().unwrap(),
                m["inflight"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, u64, u64)> =
        b.iter().zip([2, 4, 6]).map(|(member, n)| (member.url(), "ok".to_string(), n, 0)).collect();
    assert_eq!(rows, expected);
}
