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
         LBHashBalanceFactor 1.5\n    LBLatencyDecay 5s\n    \
         LBOutlierDetection on failures=gateway,5xx,429 consecutive=3 eject=30s max-eject=10m max-ejected=25%\n    \
         LBQueue timeout=5s max=200\n    \
         LBDiscover http://app.internal:8080/shop resolver=127.0.0.1:8600 ttl-min=2s ttl-max=1m dns-timeout=500ms \
         family=ipv4 startup=warn slots=16 loadfactor=2 lbset=1 retry=0 timeout=30 connectiontimeout=2 ping=1 \
         keepalive=on disablereuse=off ttl=60 max=50\n    \
         LBDiscover srv+https://_https._tcp.app.service.consul",
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
        // Every directive against negative, zero, huge, NaN, unit, empty and junk values.
        ("    LBSlowStart NaN", "", &["LBSlowStart", "\"NaN\""]),
        ("    LBSlowStart 1e3", "", &["LBSlowStart", "\"1e3\""]),
        ("    LBSlowStart 99999999999999h", "", &["LBSlowStart", "\"99999999999999h\"", "too large"]),
        ("    LBSlowStart +5s", "", &["LBSlowStart", "\"+5s\""]),
        ("    LBSlowStart 5sec", "", &["LBSlowStart", "\"5sec\"", "unit"]),
        ("    LBSlowStart \"\"", "", &["LBSlowStart", "usage"]),
        ("    LBMaxInflight NaN", "", &["LBMaxInflight", "\"NaN\""]),
        ("    LBMaxInflight 1e3", "", &["LBMaxInflight", "\"1e3\""]),
        ("    LBMaxInflight 0x10", "", &["LBMaxInflight", "\"0x10\""]),
        ("    LBMaxInflight 2.5", "", &["LBMaxInflight", "\"2.5\""]),
        ("    LBMaxInflight 18446744073709551617", "", &["LBMaxInflight", "\"18446744073709551617\""]),
        ("    LBMaxInflight 5 per-loadfactor extra", "", &["LBMaxInflight", "usage"]),
        ("    LBHashKey \"%{nosuchfunction:REMOTE_ADDR}\"", "", &["LBHashKey", "nosuchfunction"]),
        ("    LBHashBalanceFactor NaN", "", &["LBHashBalanceFactor", "\"NaN\""]),
        ("    LBHashBalanceFactor inf", "", &["LBHashBalanceFactor", "\"inf\""]),
        ("    LBHashBalanceFactor -1.25", "", &["LBHashBalanceFactor", "\"-1.25\""]),
        ("    LBHashBalanceFactor 0", "", &["LBHashBalanceFactor", "\"0\""]),
        ("    LBHashBalanceFactor 101", "", &["LBHashBalanceFactor", "\"101\""]),
        ("    LBHashBalanceFactor 1.25 2", "", &["LBHashBalanceFactor", "usage"]),
        ("    LBLatencyDecay 0", "", &["LBLatencyDecay", "\"0\""]),
        ("    LBLatencyDecay 2h", "", &["LBLatencyDecay", "\"2h\""]),
        ("    LBLatencyDecay -1s", "", &["LBLatencyDecay", "\"-1s\""]),
        ("    LBLatencyDecay NaN", "", &["LBLatencyDecay", "\"NaN\""]),
        ("    LBLatencyDecay", "", &["LBLatencyDecay", "usage"]),
        ("    LBOutlierDetection", "", &["LBOutlierDetection", "on or off"]),
        ("    LBOutlierDetection yes", "", &["LBOutlierDetection", "\"yes\""]),
        (
            "    LBOutlierDetection on consecutive=many",
            "",
            &["LBOutlierDetection", "\"many\" in \"consecutive=many\""],
        ),
        ("    LBOutlierDetection on eject=0", "", &["LBOutlierDetection", "\"0\" in \"eject=0\""]),
        (
            "    LBOutlierDetection on max-ejected=60",
            "",
            &["LBOutlierDetection", "\"60\" in \"max-ejected=60\""],
        ),
        ("    LBOutlierDetection on failures=5xx,299", "", &["LBOutlierDetection", "\"299\""]),
        ("    LBOutlierDetection on stdev=-2", "", &["LBOutlierDetection", "\"-2\" in \"stdev=-2\""]),
        ("    LBOutlierDetection on ejectt=10s", "", &["LBOutlierDetection", "unknown parameter \"ejectt\""]),
        (
            "    LBOutlierDetection on interval",
            "",
            &["LBOutlierDetection", "\"interval\": expected key=value"],
        ),
        ("    LBOutlierDetection on eject=1m max-eject=10s", "", &["LBOutlierDetection", "max-eject"]),
        ("    LBMaxInflight 4\n    LBQueue", "", &["LBQueue", "usage"]),
        ("    LBMaxInflight 4\n    LBQueue max=10", "", &["LBQueue", "timeout=<time> is missing"]),
        ("    LBMaxInflight 4\n    LBQueue timeout=0", "", &["LBQueue", "\"timeout=0\"", "1ms to 300s"]),
        ("    LBMaxInflight 4\n    LBQueue timeout=1h", "", &["LBQueue", "\"timeout=1h\""]),
        ("    LBMaxInflight 4\n    LBQueue timeout=soon", "", &["LBQueue", "\"timeout=soon\""]),
        ("    LBMaxInflight 4\n    LBQueue timeout=5s max=0", "", &["LBQueue", "\"max=0\"", "1 to 1024"]),
        ("    LBMaxInflight 4\n    LBQueue timeout=5s max=5000", "", &["LBQueue", "\"max=5000\""]),
        ("    LBMaxInflight 4\n    LBQueue timeout=5s size=3", "", &["LBQueue", "\"size=3\""]),
        (
            "    LBQueue timeout=5s",
            "",
            &["LBQueue in <Proxy \"balancer://app\">", "LBMaxInflight is missing"],
        ),
        ("    LBDiscover", "", &["LBDiscover", "usage"]),
        (
            "    LBDiscover http://app.internal hcmethod=GET",
            "",
            &["LBDiscover http://app.internal", "need mod_proxy_hcheck", "a2enmod proxy_hcheck"],
        ),
        ("    LBDiscover app.internal", "", &["LBDiscover", "\"app.internal\"", "scheme://"]),
        ("    LBDiscover gopher://app.internal", "", &["LBDiscover", "unknown scheme"]),
        ("    LBDiscover http://127.0.0.1:8080", "", &["LBDiscover", "BalancerMember"]),
        ("    LBDiscover http://app.internal:99999", "", &["LBDiscover", "\"http://app.internal:99999\""]),
        ("    LBDiscover http://app.internal resolver=dns", "", &["LBDiscover", "\"resolver=dns\""]),
        ("    LBDiscover http://app.internal ttl-min=0", "", &["LBDiscover", "\"ttl-min=0\""]),
        (
            "    LBDiscover http://app.internal ttl-min=1m ttl-max=10s",
            "",
            &["LBDiscover", "ttl-min", "ttl-max"],
        ),
        ("    LBDiscover http://app.internal startup=never", "", &["LBDiscover", "\"startup=never\""]),
        ("    LBDiscover http://app.internal route=a", "", &["LBDiscover", "\"route=a\"", "unknown option"]),
        ("    LBDiscover http://app.internal loadfactor=500", "", &["LBDiscover", "\"loadfactor=500\""]),
        ("    LBDiscover srv+http://_http._tcp.app.internal lbset=1", "", &["LBDiscover", "priorities"]),
        (
            "    LBDiscover http://app.internal\n    LBDiscover http://APP.internal",
            "",
            &["LBDiscover", "written twice"],
        ),
        ("", "<Location \"/\">\n    LBDiscover http://app.internal\n</Location>", &["LBDiscover", "\"/\""]),
        (
            "    LBDiscover http://app.internal",
            "<VirtualHost 127.0.0.1:1>\n    ProxyPass \"/x\" \"balancer://app/\"\n</VirtualHost>",
            &[
                "LBDiscover in <Proxy \"balancer://app\">",
                "has a copy of this balancer",
                "BalancerInherit Off",
            ],
        ),
        // Misplaced: in other sections, or at the top of a virtual host.
        ("", "<Directory \"/tmp\">\n    LBSlowStart 5s\n</Directory>", &["LBSlowStart", "\"/tmp/\""]),
        (
            "",
            "<VirtualHost 127.0.0.1:1>\n    LBMaxInflight 5\n</VirtualHost>",
            &["LBMaxInflight is only valid inside"],
        ),
        ("", "<Location \"/\">\n    LBHashKey \"%{REMOTE_ADDR}\"\n</Location>", &["LBHashKey", "\"/\""]),
        ("", "<LocationMatch \"^/x\">\n    LBLatencyDecay 5s\n</LocationMatch>", &["LBLatencyDecay"]),
        ("", "<Proxy \"balancer://*\">\n    LBSlowStart 5s\n</Proxy>", &["LBSlowStart is only valid"]),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for (inside, outside, expected) in cases {
        let body = with_balancer(inside, outside);
        let (ok, output) = config_test(&ApacheConfig::new(&body));
        assert!(!ok, "accepted:\n{body}\n{output}");
        for fragment in *expected {
            assert!(output.contains(fragment), "message for\n{body}\nlacks {fragment:?}:\n{output}");
        }
    }
}

/// A virtual host whose `ProxyPass` names a main server's balancer gets a copy of it with
/// httpd's default method, byrequests. Where that method is not loaded (Debian enables no stock
/// lbmethod module), httpd's own check passes and its start then fails (AH02432, also at a
/// graceful restart, which leaves no server): the module's check fails first, naming the
/// balancer and the fix. Where it is loaded, the module warns that the copy is not balanced by
/// its method.
#[test]
fn a_virtual_host_copy_without_a_loaded_method_fails_the_check() {
    let vhost = |pass: &str| {
        with_balancer("", &format!("<VirtualHost *:*>\n    ServerName b.test\n    {pass}\n</VirtualHost>"))
    };
    let plain = vhost("ProxyPass \"/b/\" \"balancer://app/\"");
    let (ok, output) = config_test(&ApacheConfig::new(&plain).without_stock_methods());
    assert!(!ok, "{output}");
    for fragment in
        ["<Proxy \"balancer://app\"> in b.test", "lbmethod byrequests is not loaded", "AH02432", "lbmethod="]
    {
        assert!(output.contains(fragment), "lacks {fragment:?}: {output}");
    }
    let (ok, output) = config_test(&ApacheConfig::new(&plain));
    assert!(ok, "{output}");
    assert!(output.contains("uses lbmethod byrequests, the main server's byinflight"), "{output}");
    let set = vhost("ProxyPass \"/b/\" \"balancer://app/\" lbmethod=byinflight");
    let (ok, output) = config_test(&ApacheConfig::new(&set).without_stock_methods());
    assert!(ok && !output.contains("lbmethod byrequests"), "{output}");
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

/// What httpd would accept, the module accepts: duplicates (the last one counts, as for httpd's
/// own directives), a balancer with no member, units, "off", and a thousand members.
#[test]
fn what_httpd_would_accept_is_accepted() {
    let cases: &[(&str, &str)] = &[
        ("    LBSlowStart 5s\n    LBSlowStart 10s", "LBSlowStart twice"),
        ("    LBMaxInflight 1000000", "the largest cap"),
        ("    LBMaxInflight 1 per-loadfactor", "the smallest cap per loadfactor"),
        ("    LBHashBalanceFactor OFF", "off in capitals"),
        ("    LBHashBalanceFactor 100", "the largest factor"),
        ("    LBLatencyDecay 10ms", "the shortest decay"),
        ("    LBLatencyDecay 1h", "the longest decay"),
        ("    LBOutlierDetection off", "detection off"),
        ("    LBOutlierDetection ON success-rate=off consecutive=0", "on in capitals, both grounds off"),
        ("    LBOutlierDetection on failures=gateway", "gateway failures only"),
        (
            "    LBOutlierDetection on stdev=0.5 min-requests=1000000 min-members=2 interval=1h",
            "the extremes",
        ),
        ("    LBOutlierDetection on stdev=10 min-members=102", "the largest stdev"),
        ("    LBSlowStart 1ms", "the shortest ramp"),
        ("    LBSlowStart 60m", "the longest ramp, in minutes"),
        ("    LBHashKey \"%{HTTP:X-User}-%{REMOTE_ADDR}\"", "a composed key"),
    ];
    for (inside, what) in cases {
        let (ok, output) = config_test(&ApacheConfig::new(&with_balancer(inside, "")));
        assert!(ok, "{what}: {output}");
    }
    let empty =
        "<Proxy \"balancer://empty\">\n    ProxySet lbmethod=byweight\n    LBMaxInflight 3\n</Proxy>\n";
    let (ok, output) = config_test(&ApacheConfig::new(&format!("{empty}{}", with_balancer("", ""))));
    assert!(ok, "a balancer without members: {output}");
    let mut thousand = String::from("<Proxy \"balancer://big\">\n");
    for i in 0..1000 {
        thousand.push_str(&format!(
            "    BalancerMember \"http://127.0.0.1:{}\" loadfactor={}\n",
            20_000 + i,
            1 + i % 100
        ));
    }
    thousand.push_str("    ProxySet lbmethod=byweight\n    LBMaxInflight 10 per-loadfactor\n</Proxy>\n");
    let (ok, output) = config_test(&ApacheConfig::new(&thousand));
    assert!(ok, "a thousand members: {output}");
}
