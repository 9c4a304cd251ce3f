use super::plan::*;
use switchboard_config::{Config, DialRule, RuleRoute, RuleScope, Tenant};

const ACME: &str = r#"
[[tenants]]
name = "acme"
domain = "acme.example"

[[tenants.users]]
user = "2050"
password = "secret"

[[tenants.dns]]
number = "2000"
kind = "extension"
[[tenants.dns]]
number = "2001"
kind = "extension"
[[tenants.dns]]
number = "2500"
kind = "route_point"
[[tenants.dns]]
number = "2600"
kind = "queue"
[[tenants.dns]]
number = "2700"
kind = "voicemail_access"
[[tenants.dns]]
number = "2999"
kind = "trunk"
trunk = "acme-sbc"

[[tenants.agents]]
login_id = "alice"
dn = "2000"

[[tenants.trunks]]
name = "acme-sbc"
addresses = ["192.0.2.10:5080", "192.0.2.11"]
dids = [
  { first = "+493020000000", last = "+493020009999" },
  { first = "+493030000000", last = "+493030000000", target = "2500" },
]

[[tenants.dialplan]]
name = "short"
priority = 10
range = "3000-3999"
strip = 1
add_prefix = "2"
route = "local"

[[tenants.dialplan]]
name = "vip"
priority = 5
exact = "3999"
strip = 4
add_prefix = "2000"
route = "local"

[[tenants.dialplan]]
name = "info"
priority = 20
exact = "411"
replace = { regex = "^411$", with = "+18005551212" }
route = "external"
trunk = "acme-sbc"

[[tenants.dialplan]]
name = "berlin-in"
priority = 30
applies_to = "inbound"
prefix = "+49302000"
strip = 9
route = "local"

[[tenants.dialplan]]
name = "out"
priority = 40
applies_to = "internal"
regex = "^0[1-9][0-9]{5,}$"
strip = 1
add_prefix = "+49"
route = "external"
trunk = "acme-sbc"

[[tenants.dialplan]]
name = "b-tie"
priority = 50
exact = "8"
strip = 1
add_prefix = "2000"
route = "local"

[[tenants.dialplan]]
name = "a-tie"
priority = 50
exact = "8"
strip = 1
add_prefix = "2001"
route = "local"

[[tenants.dialplan]]
name = "dangling"
priority = 60
exact = "55"
route = "local"
"#;

fn tenants() -> Vec<Tenant> {
    let acme = Config::from_toml_str(ACME).expect("the test tenant is valid");
    let mut all = Config::demo().tenants;
    all.extend(acme.tenants);
    all
}

fn plan() -> Dialplan {
    let t = tenants();
    let p = Dialplan::build(&t);
    assert!(p.problems().is_empty(), "{:?}", p.problems());
    p
}

fn ext(trunk: Option<&str>) -> Target {
    Target::External {
        trunk: trunk.map(str::to_owned),
    }
}

#[test]
fn resolution_table() {
    use Ingress::*;
    let p = plan();
    // (tenant, ingress, calling, called, default gateway) -> (tenant, target, number, rule, caller internal)
    type Case<'a> = (
        Option<&'a str>,
        Ingress<'a>,
        &'a str,
        &'a str,
        bool,
        (&'a str, Target, &'a str, Option<&'a str>, bool),
    );
    let cases: Vec<Case> = vec![
        // demo, internal
        (
            Some("demo"),
            Device,
            "1001",
            "1002",
            false,
            ("demo", Target::Extension, "1002", None, true),
        ),
        (
            Some("demo"),
            Device,
            "1001",
            "0",
            false,
            ("demo", Target::RoutePoint, "5000", Some("operator"), true),
        ),
        (
            Some("demo"),
            Device,
            "1001",
            "0044123456",
            false,
            (
                "demo",
                ext(Some("carrier")),
                "+44123456",
                Some("international"),
                true,
            ),
        ),
        (
            Some("demo"),
            Device,
            "1001",
            "92125551234",
            false,
            (
                "demo",
                ext(Some("carrier")),
                "+12125551234",
                Some("national"),
                true,
            ),
        ),
        (
            Some("demo"),
            Device,
            "1001",
            "6000",
            false,
            ("demo", Target::Queue, "6000", None, true),
        ),
        (
            Some("demo"),
            Device,
            "1001",
            "7000",
            false,
            ("demo", Target::Voicemail, "7000", None, true),
        ),
        (
            Some("demo"),
            Device,
            "1001",
            "8100",
            false,
            ("demo", Target::Mailbox, "8100", None, true),
        ),
        (
            None,
            Device,
            "1001",
            "1003",
            false,
            ("demo", Target::Extension, "1003", None, true),
        ),
        (
            Some("demo"),
            Device,
            "1001",
            "+15550001111",
            true,
            ("demo", ext(None), "+15550001111", None, true),
        ),
        // demo, inbound from its trunk
        (
            None,
            Trunk("carrier"),
            "+447700900123",
            "+15550001234",
            false,
            ("demo", Target::RoutePoint, "5000", None, false),
        ),
        (
            None,
            Trunk("carrier"),
            "+447700900123",
            "1002",
            false,
            ("demo", Target::Extension, "1002", None, false),
        ),
        // unnamed gateway: the DID picks the tenant
        (
            None,
            Gateway,
            "+447700900123",
            "+15550009999",
            false,
            ("demo", Target::RoutePoint, "5000", None, false),
        ),
        (
            None,
            Gateway,
            "+447700900123",
            "+493030000000",
            false,
            ("acme", Target::RoutePoint, "2500", None, false),
        ),
        (
            Some("acme"),
            Gateway,
            "+447700900123",
            "2001",
            false,
            ("acme", Target::Extension, "2001", None, false),
        ),
        // acme, internal: ranges, priorities, ties by name, exact, regex, trunk DNs
        (
            Some("acme"),
            Device,
            "2000",
            "3001",
            false,
            ("acme", Target::Extension, "2001", Some("short"), true),
        ),
        (
            Some("acme"),
            Device,
            "2000",
            "3999",
            false,
            ("acme", Target::Extension, "2000", Some("vip"), true),
        ),
        (
            Some("acme"),
            Device,
            "2000",
            "3500",
            false,
            ("acme", Target::RoutePoint, "2500", Some("short"), true),
        ),
        (
            Some("acme"),
            Device,
            "2000",
            "3600",
            false,
            ("acme", Target::Queue, "2600", Some("short"), true),
        ),
        (
            Some("acme"),
            Device,
            "2000",
            "3700",
            false,
            ("acme", Target::Voicemail, "2700", Some("short"), true),
        ),
        (
            Some("acme"),
            Device,
            "2000",
            "8",
            false,
            ("acme", Target::Extension, "2001", Some("a-tie"), true),
        ),
        (
            Some("acme"),
            Device,
            "2000",
            "411",
            false,
            (
                "acme",
                ext(Some("acme-sbc")),
                "+18005551212",
                Some("info"),
                true,
            ),
        ),
        (
            Some("acme"),
            Device,
            "2000",
            "030123456",
            false,
            (
                "acme",
                ext(Some("acme-sbc")),
                "+4930123456",
                Some("out"),
                true,
            ),
        ),
        (
            Some("acme"),
            Device,
            "2000",
            "2999",
            false,
            ("acme", ext(Some("acme-sbc")), "2999", None, true),
        ),
        (
            Some("acme"),
            Device,
            "2050",
            "2000",
            false,
            ("acme", Target::Extension, "2000", None, true),
        ),
        (
            Some("acme"),
            Device,
            "2000",
            "2050",
            false,
            ("acme", Target::Extension, "2050", None, true),
        ),
        (
            Some("acme"),
            Device,
            "2000",
            "+493020002001",
            true,
            ("acme", ext(None), "+493020002001", None, true),
        ),
        (
            Some("acme"),
            Device,
            "2000",
            "30011",
            true,
            ("acme", ext(None), "30011", None, true),
        ),
        // acme, inbound: DID without target, then the inbound rule
        (
            None,
            Trunk("acme-sbc"),
            "+4917012345",
            "+493020002001",
            false,
            ("acme", Target::Extension, "2001", Some("berlin-in"), false),
        ),
        (
            None,
            Trunk("acme-sbc"),
            "+4917012345",
            "+493030000000",
            false,
            ("acme", Target::RoutePoint, "2500", None, false),
        ),
        // a caller who is not a DN (through the edge) is inbound; `any` rules still apply
        (
            Some("acme"),
            Device,
            "+4917012345",
            "3001",
            false,
            ("acme", Target::Extension, "2001", Some("short"), false),
        ),
    ];
    for (tenant, ingress, calling, called, gw, (t, target, number, rule, internal)) in cases {
        let q = Query {
            tenant,
            called,
            calling,
            ingress,
            default_gateway: gw,
        };
        let r = p
            .resolve(&q)
            .unwrap_or_else(|e| panic!("{q:?}: expected a route, got {e}"));
        assert_eq!(
            (
                r.tenant.as_str(),
                &r.target,
                r.number.as_str(),
                r.rule.as_deref(),
                r.caller_internal
            ),
            (t, &target, number, rule, internal),
            "{q:?}"
        );
        assert_eq!(r.scope == Scope::Internal, internal, "{q:?}");
    }
}

#[test]
fn unroutable_numbers_say_why() {
    use Ingress::*;
    let p = plan();
    // (tenant, ingress, calling, called, default gateway, why)
    type Case<'a> = (
        Option<&'a str>,
        Ingress<'a>,
        &'a str,
        &'a str,
        bool,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Some("demo"),
            Device,
            "1001",
            "77",
            true,
            "not a DN of tenant demo",
        ),
        // operator is for internal callers only
        (
            None,
            Trunk("carrier"),
            "+447700900123",
            "0",
            true,
            "no dial-plan rule matches",
        ),
        // external callers never get the default gateway
        (
            None,
            Trunk("carrier"),
            "+447700900123",
            "+15559990000",
            true,
            "no dial-plan rule matches",
        ),
        (
            Some("acme"),
            Device,
            "+4917012345",
            "030123456",
            true,
            "no dial-plan rule matches",
        ),
        // the inbound rule is not for internal callers, and there is no gateway
        (
            Some("acme"),
            Device,
            "2000",
            "+493020002001",
            false,
            "no dial-plan rule matches",
        ),
        // a DID whose translation is not a DN
        (
            None,
            Trunk("acme-sbc"),
            "+4917012345",
            "+493020005555",
            false,
            "which is not a DN",
        ),
        (
            Some("acme"),
            Device,
            "2000",
            "55",
            false,
            "which is not a DN",
        ),
        (Some("nope"), Device, "1", "2", false, "no tenant \"nope\""),
        (
            None,
            Trunk("nosuch"),
            "1",
            "2",
            false,
            "no trunk \"nosuch\"",
        ),
        (
            Some("acme"),
            Trunk("carrier"),
            "1",
            "2",
            false,
            "no trunk \"carrier (of tenant acme)\"",
        ),
        (
            Some("nope"),
            Trunk("carrier"),
            "1",
            "2",
            false,
            "no tenant \"nope\"",
        ),
        (Some("demo"), Device, "1001", "", true, "not a DN"),
    ];
    for (tenant, ingress, calling, called, gw, why) in cases {
        let q = Query {
            tenant,
            called,
            calling,
            ingress,
            default_gateway: gw,
        };
        match p.resolve(&q) {
            Ok(r) => panic!("{q:?}: expected no route, got {r:?}"),
            Err(e) => assert!(e.to_string().contains(why), "{q:?}: {e}"),
        }
    }
    let empty = Dialplan::build(&[]);
    let q = Query {
        tenant: None,
        called: "1",
        calling: "2",
        ingress: Ingress::Device,
        default_gateway: true,
    };
    assert_eq!(
        empty.resolve(&q).unwrap_err(),
        ResolveError::UnknownTenant(String::new())
    );
}

#[test]
fn devices_trunks_and_hosts() {
    let p = plan();
    let d = p.device("acme", "2000").expect("DN 2000");
    assert_eq!(d.contact, "sip:2000@acme.example");
    assert_eq!(d.agent.as_deref(), Some("alice"));
    assert_eq!(d.dn.kind, switchboard_config::DnKind::Extension);
    let d = p.device("demo", "1004").expect("DN 1004");
    assert_eq!(d.agent.as_deref(), Some("a1004"));
    assert_eq!(d.dn.name, "Desk 1004");
    assert!(p.device("acme", "1004").is_none());
    assert!(p.device("nope", "1004").is_none());
    // A SIP user without a DN entry is an extension without an agent.
    let d = p.device("acme", "2050").expect("user 2050");
    assert_eq!(d.agent, None);

    let at = |s: &str| p.trunk_at(s.parse().unwrap());
    assert_eq!(at("192.0.2.10:5080"), Some(("acme", "acme-sbc")));
    assert_eq!(at("192.0.2.10:5060"), None);
    assert_eq!(at("192.0.2.11:7000"), Some(("acme", "acme-sbc")));
    assert_eq!(at("127.0.0.1:40000"), Some(("demo", "carrier")));
    assert_eq!(at("198.51.100.1:5060"), None);
    assert_eq!(
        p.trunk_gateway("acme", "acme-sbc"),
        Some("192.0.2.10:5080".parse().unwrap())
    );
    assert_eq!(
        p.trunk_gateway("demo", "carrier"),
        Some("127.0.0.1:5060".parse().unwrap())
    );
    assert_eq!(p.trunk_gateway("demo", "acme-sbc"), None);
    assert_eq!(p.tenant_for_host("ACME.example"), Some("acme"));
    assert_eq!(p.tenant_for_host("10.0.0.1"), Some("demo"));
    assert_eq!(p.domain("acme"), Some("acme.example"));
    assert!(p.is_dn("acme", "2050"));
    assert!(!p.is_dn("demo", "2050"));
    assert_eq!(p.tenant_names().collect::<Vec<_>>(), vec!["demo", "acme"]);
}

#[test]
fn a_rule_that_does_not_compile_is_skipped_and_reported() {
    let mut t = tenants();
    t[0].dialplan.push(DialRule {
        name: "broken".into(),
        priority: 1,
        applies_to: RuleScope::Any,
        exact: None,
        prefix: None,
        range: None,
        regex: Some("(".into()),
        strip: 0,
        replace: None,
        add_prefix: String::new(),
        route: RuleRoute::Local,
        trunk: None,
    });
    let p = Dialplan::build(&t);
    assert_eq!(p.problems().len(), 1);
    assert_eq!(p.problems()[0].rule, "broken");
    // The others still work.
    let q = Query {
        tenant: Some("demo"),
        called: "0",
        calling: "1001",
        ingress: Ingress::Device,
        default_gateway: false,
    };
    assert_eq!(p.resolve(&q).unwrap().rule.as_deref(), Some("operator"));
}

#[test]
fn strange_input_never_panics() {
    let p = plan();
    for called in [
        "",
        "+",
        "ä",
        "3",
        "🙂🙂🙂🙂",
        "0000000000000000000000000000000000000000",
        "3ä99",
    ] {
        for calling in ["", "2000", "é"] {
            for ingress in [
                Ingress::Device,
                Ingress::Gateway,
                Ingress::Trunk("acme-sbc"),
            ] {
                let _ = p.resolve(&Query {
                    tenant: Some("acme"),
                    called,
                    calling,
                    ingress,
                    default_gateway: true,
                });
            }
        }
    }
}

#[test]
fn mailboxes_and_agents_of_a_tenant() {
    let p = plan();
    assert_eq!(
        p.mailbox("demo", "8100")
            .and_then(|m| m.owner_group.as_deref()),
        Some("sales")
    );
    assert!(p.mailbox("demo", "1001").is_none());
    assert!(p.mailbox("nope", "8100").is_none());
    let mut boxes: Vec<&str> = p.mailboxes("demo").map(|m| m.number.as_str()).collect();
    boxes.sort();
    assert_eq!(boxes, ["8100", "8200"]);
    assert!(p.agents("demo").iter().any(|a| a.login_id == "a1001"));
    assert!(p.agents("nope").is_empty());
}
