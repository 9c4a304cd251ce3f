//! How fast the dial plan resolves numbers with 1,000 rules in one tenant.
//!
//! The rules are a mix: 250 each of exact, prefix, range and regex patterns, by ascending
//! priority, none shadowing the DNs. Lookups:
//! * `dn`: the called number is a DN (no rule is tried);
//! * `first_rule`: the first rule matches;
//! * `last_rule`: only the last rule (a regex) matches: every rule is tried;
//! * `no_route`: no rule matches (every rule tried, then the error is built);
//! * `inbound_did`: from a trunk to a DID of its range (DID target, then a DN).
//!
//! `cargo bench -p switchboard-services --bench dialplan`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use switchboard_config::{DialRule, DidRange, Dn, DnKind, RuleRoute, RuleScope, Tenant, Trunk};
use switchboard_services::dialplan::{Dialplan, Ingress, Query};

fn rule(i: u32) -> DialRule {
    let mut r = DialRule {
        name: format!("r{i:04}"),
        priority: i,
        applies_to: RuleScope::Any,
        exact: None,
        prefix: None,
        range: None,
        regex: None,
        strip: 0,
        replace: None,
        add_prefix: String::new(),
        route: RuleRoute::External,
        trunk: Some("carrier".into()),
    };
    match i % 4 {
        0 => r.exact = Some(format!("7{i:06}")),
        1 => r.prefix = Some(format!("8{i:04}")),
        2 => r.range = Some(format!("6{i:04}000-6{i:04}999")),
        _ => r.regex = Some(format!("^9{i:04}[0-9]{{6}}$")),
    }
    r.strip = 1;
    r.add_prefix = "+1".into();
    r
}

fn tenant() -> Tenant {
    let mut t = Tenant::new("bench", "bench.example");
    t.dns = (1000..2000)
        .map(|n| Dn::new(n.to_string(), DnKind::Extension))
        .collect();
    t.trunks = vec![Trunk {
        name: "carrier".into(),
        addresses: vec!["192.0.2.1".into()],
        dids: vec![DidRange {
            first: "+15550000000".into(),
            last: "+15550009999".into(),
            target: Some("1500".into()),
        }],
    }];
    t.dialplan = (0..1000).map(rule).collect();
    t
}

fn bench(c: &mut Criterion) {
    let t = tenant();
    assert!(t.entity_problems().is_empty(), "{:?}", t.entity_problems());
    let plan = Dialplan::build([&t]);
    assert_eq!(plan.rule_count(), 1000);
    assert!(plan.problems().is_empty());
    let q = |called: &'static str, ingress: Ingress<'static>| Query {
        tenant: Some("bench"),
        called,
        calling: "1001",
        ingress,
        default_gateway: false,
    };
    let cases = [
        ("dn", q("1999", Ingress::Device), true),
        ("first_rule", q("7000000", Ingress::Device), true),
        ("last_rule", q("90999123456", Ingress::Device), true),
        ("no_route", q("55555", Ingress::Device), false),
        (
            "inbound_did",
            q("+15550001234", Ingress::Trunk("carrier")),
            true,
        ),
    ];
    let mut g = c.benchmark_group("resolve_1000_rules");
    g.throughput(Throughput::Elements(1));
    for (name, query, routes) in cases {
        assert_eq!(plan.resolve(&query).is_ok(), routes, "{name}");
        g.bench_function(name, |b| b.iter(|| plan.resolve(black_box(&query))));
    }
    g.finish();
    c.bench_function("build_1000_rules", |b| b.iter(|| Dialplan::build([&t])));
}

criterion_group!(benches, bench);
criterion_main!(benches);
