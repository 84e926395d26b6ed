//! Bad configuration fails `apachectl -t` (here `apache2 -t`) with a message that names the
//! directive and the value; good configuration passes. Real apache2, real module.

use lbrs_harness::{Apache, ApacheConfig, backends, config_test};

/// A balancer with members, so that only the line under test can be wrong.
fn with_balancer(inside: &str, outside: &str) -> String {
    format!(
        "<Proxy \"balancer://app\">\n    BalancerMember \"http://127.0.0.1:9\"\n    ProxySet lbmethod=byinflight\n{inside}\n</Proxy>\n{outside}\nProxyPass \"/\" \"balancer://app/\"\n"
    )
}

#[test]
fn good_settings_pass() {
    let body = with_balancer(
        "    LBSlowStart 30s\n    LBMaxInflight 8 per-loadfactor\n    LBHashKey \"%{REMOTE_ADDR}\"\n    \
         LBHashBalanceFactor 1.5\n    LBLatencyDecay 5s",
        "",
    );
    let (ok, output) = config_test(&ApacheConfig::new(&body));
    assert!(ok, "{output}");
    assert!(output.contains("Syntax OK"), "{output}");
}

#[test]
fn bad_settings_fail_with_the_directive_and_value_named() {
    let cases: &[(&str, &str, &[&str])] = &[
        // (inside <Proxy balancer://app>, elsewhere, what the message must contain)
        ("", "LBSlowStart 30s", &["LBSlowStart is only valid inside <Proxy \"balancer://...\">"]),
        ("", "<Location \"/x\">\n    LBMaxInflight 5\n</Location>", &["LBMaxInflight", "\"/x\""]),
        (
            "",
            "<Proxy \"http://127.0.0.1:9/\">\n    LBSlowStart 5s\n</Proxy>",
            &["LBSlowStart", "http://127.0.0.1:9/"],
        ),
        (
            "",
            "<ProxyMatch \"balancer://.*\">\n    LBSlowStart 5s\n</ProxyMatch>",
            &["LBSlowStart is only valid"],
        ),
        ("    LBSlowStart abc", "", &["LBSlowStart", "\"abc\""]),
        ("    LBSlowStart -5s", "", &["LBSlowStart", "\"-5s\""]),
        ("    LBSlowStart 0", "", &["LBSlowStart", "\"0\""]),
        ("    LBSlowStart 2h", "", &["LBSlowStart", "\"2h\"", "1h"]),
        ("    LBSlowStart 10 20", "", &["LBSlowStart", "usage"]),
        ("    LBSlowStart 1.5s", "", &["LBSlowStart", "\"1.5s\""]),
        ("    LBSlowStart 30d", "", &["LBSlowStart", "\"30d\"", "unit"]),
        ("    LBMaxInflight ten", "", &["LBMaxInflight", "\"ten\""]),
        ("    LBMaxInflight 0", "", &["LBMaxInflight", "\"0\""]),
        ("    LBMaxInflight -1", "", &["LBMaxInflight", "\"-1\""]),
        ("    LBMaxInflight 99999999", "", &["LBMaxInflight", "\"99999999\""]),
        ("    LBMaxInflight 5 scaled", "", &["LBMaxInflight", "\"scaled\"", "per-loadfactor"]),
        ("    LBMaxInflight", "", &["LBMaxInflight", "usage"]),
        ("    LBHashKey \"%{REMOTE_ADDR\"", "", &["LBHashKey", "\"%{REMOTE_ADDR\""]),
        ("    LBHashKey \"%{tolower:}\"", "", &["LBHashKey", "\"%{tolower:}\""]),
        ("    LBHashKey \"\"", "", &["LBHashKey", "usage"]),
        ("    LBHashKey a b", "", &["LBHashKey", "usage"]),
        (
            "    ProxySet lbmethod=byhash",
            "",
            &["lbmethod=byhash", "\"balancer://app\"", "LBHashKey is missing"],
        ),
        ("    LBHashBalanceFactor 0.5", "", &["LBHashBalanceFactor", "\"0.5\""]),
        ("    LBHashBalanceFactor many", "", &["LBHashBalanceFactor", "\"many\"", "off"]),
        ("    LBLatencyDecay 5ms", "", &["LBLatencyDecay", "\"5ms\"", "10ms"]),
        ("    LBLatencyDecay soon", "", &["LBLatencyDecay", "\"soon\""]),
        ("", "LBHashKey \"%{REMOTE_ADDR}\"", &["LBHashKey is only valid inside"]),
        (
            "",
            "<Proxy \"balancer://ghost\">\n    LBMaxInflight 5\n</Proxy>",
            &["LBMaxInflight in <Proxy \"balancer://ghost\">", "no balancer"],
        ),
    ];
    assert!(cases.len() >= 12);
    for (inside, outside, expected) in cases {
        let body = with_balancer(inside, outside);
        let (ok, output) = config_test(&ApacheConfig::new(&body));
        assert!(!ok, "accepted:\n{body}\n{output}");
        for fragment in *expected {
            assert!(output.contains(fragment), "message for\n{body}\nlacks {fragment:?}:\n{output}");
        }
    }
}

/// httpd names the balancer of `<Proxy "balancer://App/">` `balancer://app`: the module's
/// directives in that section belong to it.
#[test]
fn a_section_written_with_a_slash_or_in_capitals_is_the_same_balancer() {
    let b = backends(&["a"]);
    let body = format!(
        "<Proxy \"balancer://App/\">\n    BalancerMember \"{}\"\n    ProxySet lbmethod=byinflight\n    \
         LBMaxInflight 7\n</Proxy>\nProxyPass \"/\" \"balancer://app/\"\n",
        b[0].url()
    );
    let (ok, output) = config_test(&ApacheConfig::new(&body));
    assert!(ok, "{output}");
    let apache = Apache::start(ApacheConfig::new(&body)).unwrap();
    let member = apache.member_status("balancer://app", &b[0].url()).unwrap();
    assert_eq!(member["max_inflight"], 7, "the setting applies: {member}");
}
