//! docs/sessions.md: every recipe, taken from the page itself, through the real apache2 with the
//! module, mod_headers and real backends. The ROUTEID cookie pins a client to one member; a
//! member that stops moves its clients and their cookie changes; nofailover answers 503
//! instead; a draining member keeps its sessions; the application's own JSESSIONID works too;
//! the module counts sticky requests.

mod guide_common;

use guide_common::{backend, get, show, start};
use lbrs_harness::{Apache, Backend, BackendSpec, Recipe, backends, balancer_manager_set};
use std::collections::BTreeMap;

const DOC: &str = "docs/sessions.md";

/// The route a response's `Set-Cookie: ROUTEID=.<route>; path=/; HttpOnly; SameSite=Lax` gives,
/// if it has one.
fn new_route(response: &lbrs_harness::Response) -> Option<String> {
    let cookie = response.header("set-cookie")?;
    let value = cookie.strip_prefix("ROUTEID=.")?.split(';').next()?;
    assert!(cookie.ends_with("; path=/; HttpOnly; SameSite=Lax"), "{cookie}");
    Some(value.to_string())
}

fn with_route(apache: &Apache, route: &str) -> lbrs_harness::Response {
    get(apache, "/", &[("Cookie", &format!("lang=en; ROUTEID=.{route}"))])
}

#[test]
fn the_routeid_cookie_pins_a_client_and_a_stopped_member_moves_it() {
    let mut b = backends(&["app1", "app2", "app3"]);
    let recipe = Recipe::load(DOC, "routeid")
        .replace("http://10.0.0.11:8080", &b[0].url())
        .replace("http://10.0.0.12:8080", &b[1].url())
        .replace("http://10.0.0.13:8080", &b[2].url());
    let apache = start(recipe.text(), &["headers"]);

    // Six new clients: each gets a cookie naming the member that served it, spread by the method.
    let mut clients: BTreeMap<usize, String> = BTreeMap::new();
    for client in 0..6 {
        let response = get(&apache, "/", &[]);
        let route = new_route(&response).unwrap_or_else(|| panic!("no ROUTEID cookie: {}", show(&response)));
        assert_eq!(route, backend(&response), "the cookie names the member that answered");
        clients.insert(client, route);
    }
    assert_eq!(clients.values().collect::<std::collections::BTreeSet<_>>().len(), 3, "{clients:?}");
    // Each sticks to its member, and no new cookie is sent while it does.
    for _ in 0..5 {
        for route in clients.values() {
            let response = with_route(&apache, route);
            assert_eq!(backend(&response), *route, "{}", show(&response));
            assert_eq!(new_route(&response), None, "no new cookie: {}", show(&response));
        }
    }
    // The module counted the sticky requests: 2 new + 10 sticky per member.
    for member in &b {
        let status = apache.member_status("balancer://app", &member.url()).unwrap();
        assert_eq!(status["selected"], 12, "{status}");
        assert_eq!(status["inflight"], 0, "{status}");
        assert_eq!(member.stats().requests, 12);
    }

    // app2 stops: its clients go elsewhere, get a new cookie, and stay there.
    b[1].stop();
    let response = with_route(&apache, "app2");
    assert_eq!(response.status, 200, "{}", show(&response));
    let moved = backend(&response);
    assert!(moved == "app1" || moved == "app3", "{}", show(&response));
    assert_eq!(new_route(&response).as_deref(), Some(moved.as_str()), "the cookie changes");
    for _ in 0..5 {
        assert_eq!(backend(&with_route(&apache, &moved)), moved);
    }
    // The other clients did not move.
    assert_eq!(backend(&with_route(&apache, "app1")), "app1");
    assert_eq!(backend(&with_route(&apache, "app3")), "app3");

    // The application's own session cookie, or its URL parameter, carries the route just as well.
    drop(apache);
    let jsession = recipe.text().replace("stickysession=ROUTEID", "stickysession=JSESSIONID|jsessionid");
    let apache = start(&jsession, &["headers"]);
    for _ in 0..3 {
        let response = get(&apache, "/cart", &[("Cookie", "JSESSIONID=9C1F07E2A3.app3")]);
        assert_eq!(backend(&response), "app3", "{}", show(&response));
        let response = get(&apache, "/cart;jsessionid=9C1F07E2A3.app1", &[]);
        assert_eq!(backend(&response), "app1", "{}", show(&response));
    }
}

#[test]
fn nofailover_answers_503_until_the_member_is_back() {
    let mut b = backends(&["app1", "app2"]);
    let addr = b[0].addr();
    let recipe = Recipe::load(DOC, "nofailover")
        .replace("http://10.0.0.11:8080", &b[0].url())
        .replace("http://10.0.0.12:8080", &b[1].url())
        // A short retry time instead of the default 60 s, for a quick test.
        .replace("route=app1", "route=app1 retry=1");
    let apache = start(recipe.text(), &["headers"]);
    assert_eq!(backend(&with_route(&apache, "app1")), "app1");

    b[0].stop();
    for _ in 0..3 {
        let response = with_route(&apache, "app1");
        assert_eq!(response.status, 503, "{}", show(&response));
    }
    assert_eq!(backend(&with_route(&apache, "app2")), "app2");
    let response = get(&apache, "/", &[]);
    assert_eq!(backend(&response), "app2", "a new client goes to the member that is up");
    assert_eq!(new_route(&response).as_deref(), Some("app2"));

    b[0] = Backend::start_on(addr, BackendSpec::new("app1")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let response = with_route(&apache, "app1");
    assert_eq!((response.status, backend(&response)), (200, "app1".to_string()), "{}", show(&response));
}

#[test]
fn a_draining_member_keeps_its_sessions_and_gets_no_new_ones() {
    let b = backends(&["app1", "app2", "app3"]);
    let recipe = Recipe::load(DOC, "routeid")
        .replace("http://10.0.0.11:8080", &b[0].url())
        .replace("http://10.0.0.12:8080", &b[1].url())
        .replace("http://10.0.0.13:8080", &b[2].url());
    let apache = start(recipe.text(), &["headers"]);
    balancer_manager_set(&apache, "app", &b[0].url(), &[("w_status_N", "1")]).unwrap();
    assert_eq!(apache.member_status("balancer://app", &b[0].url()).unwrap()["status"], "draining");
    for _ in 0..10 {
        let response = with_route(&apache, "app1");
        assert_eq!((response.status, backend(&response)), (200, "app1".to_string()), "{}", show(&response));
        let fresh = get(&apache, "/", &[]);
        assert_ne!(backend(&fresh), "app1", "no new session on a draining member");
    }
}
