use super::*;

fn problems(text: &str) -> Vec<Problem> {
    match Config::from_toml_str(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.problems().to_vec(),
    }
}

fn one_problem(text: &str) -> Problem {
    let mut p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    p.remove(0)
}

#[test]
fn empty_text_is_the_default() {
    let c = Config::from_toml_str("").expect("empty config is valid");
    assert_eq!(c, Config::default());
    assert!(c.tenants.is_empty());
    assert_eq!(c.sip.udp, Some("127.0.0.1:5060".parse().expect("addr")));
    assert_eq!(c.http.listen, "127.0.0.1:8080".parse().expect("addr"));
}

#[test]
fn demo_validates() {
    let demo = Config::demo();
    demo.validate().expect("demo is valid");
    assert_eq!(demo.tenants.len(), 1);
    assert_eq!(demo.tenants[0].name, "demo");
    let users: Vec<&str> = demo.users().map(|(_, u)| u.user.as_str()).collect();
    assert_eq!(users.len(), 10);
    assert_eq!(users.first(), Some(&"1001"));
    assert_eq!(users.last(), Some(&"1010"));
    assert!(demo.users().all(|(_, u)| u.password == "secret"));
    assert!(demo.sip.udp.is_some_and(|a| a.ip().is_loopback()));
    assert!(demo.sip.tcp.is_some_and(|a| a.ip().is_loopback()));
    assert!(demo.http.listen.ip().is_loopback());
}

#[test]
fn example_file_is_the_demo() {
    let parsed = Config::from_toml_str(EXAMPLE_TOML).expect("example parses");
    assert_eq!(parsed, Config::demo());
}

#[test]
fn full_schema_parses() {
    let text = r#"
[sip]
udp = "0.0.0.0:5080"
tcp = ""
domain = "example.com"
t1_ms = 250
t2_ms = 2000
t4_ms = 3000
max_message_bytes = 4096
[http]
listen = "[::1]:0"
[registrar]
min_expires = 30
max_expires = 600
default_expires = 300
nonce_ttl_s = 60
algorithms = ["MD5"]
[proxy]
record_route = false
health_interval_ms = 1000
node_timeout_ms = 500
[[proxy.routes]]
prefix = "5"
nodes = ["127.0.0.1:5070", "127.0.0.1:5071"]
[[proxy.routes]]
prefix = ""
nodes = ["127.0.0.1:5072"]
[drain]
grace_ms = 0
[[tenants]]
name = "acme"
[[tenants.users]]
user = "alice"
password = "pw"
"#;
    let c = Config::from_toml_str(text).expect("valid");
    assert_eq!(c.sip.udp, Some("0.0.0.0:5080".parse().expect("addr")));
    assert_eq!(c.sip.tcp, None);
    assert_eq!(c.registrar.algorithms, vec![DigestAlgorithm::Md5]);
    assert!(!c.proxy.record_route);
    assert_eq!(c.drain.grace_ms, 0);
    // Tenant domain defaults to sip.domain.
    assert_eq!(c.tenants[0].domain, "example.com");
    assert_eq!(
        c.tenant_by_domain("EXAMPLE.com").map(|t| t.name.as_str()),
        Some("acme")
    );
    assert_eq!(c.proxy.route_for("5000").map(|r| r.nodes.len()), Some(2));
    assert_eq!(
        c.proxy.route_for("6000").map(|r| r.prefix.as_str()),
        Some("")
    );
    assert_eq!(c.sip.t1(), Duration::from_millis(250));
}

#[test]
fn unknown_key_names_key_and_line() {
    let p = one_problem("[sip]\ndomain = \"x\"\nudp_port = 5060\n");
    assert_eq!(p.key.as_deref(), Some("sip.udp_port"));
    assert_eq!(p.line, Some(3));
    assert_eq!(p.column, Some(1));
    assert!(p.message.contains("unknown field `udp_port`"), "{p}");
    let shown = p.to_string();
    assert!(shown.contains("line 3"), "{shown}");
    assert!(shown.contains("sip.udp_port"), "{shown}");
}

#[test]
fn unknown_table_names_key_and_line() {
    let p = one_problem("\n[sipp]\nudp = \"127.0.0.1:1\"\n");
    assert_eq!(p.key.as_deref(), Some("sipp"));
    assert_eq!(p.line, Some(2));
}

#[test]
fn unknown_key_in_array_of_tables() {
    let p = one_problem(
        "[[tenants]]\nname = \"a\"\n[[tenants.users]]\nuser = \"1\"\npassword = \"x\"\npin = 1\n",
    );
    assert_eq!(p.key.as_deref(), Some("tenants[0].users[0].pin"));
    assert_eq!(p.line, Some(6));
}

#[test]
fn bad_type_names_key_and_line() {
    let p = one_problem("[sip]\n\nt1_ms = \"fast\"\n");
    assert_eq!(p.key.as_deref(), Some("sip.t1_ms"));
    assert_eq!(p.line, Some(3));
    assert_eq!(p.column, Some(9));
    assert!(p.message.contains("invalid type"), "{p}");
}

#[test]
fn bad_address_names_key_and_line() {
    let p = one_problem("[http]\nlisten = \"localhost:80\"\n");
    assert_eq!(p.key.as_deref(), Some("http.listen"));
    assert_eq!(p.line, Some(2));
    assert!(p.message.contains("not a socket address"), "{p}");

    let p = one_problem(
        "[[proxy.routes]]\nprefix = \"5\"\nnodes = [\"127.0.0.1:5070\",\n  \"nope\"]\n",
    );
    assert_eq!(p.key.as_deref(), Some("proxy.routes[0].nodes[1]"));
    assert_eq!(p.line, Some(4));
}

#[test]
fn bad_algorithm_names_key() {
    let p = one_problem("[registrar]\nalgorithms = [\"SHA-1\"]\n");
    assert_eq!(p.key.as_deref(), Some("registrar.algorithms[0]"));
    assert_eq!(p.line, Some(2));
}

#[test]
fn syntax_error_names_line_and_guessed_key() {
    let p = one_problem("[http]\nlisten = \n");
    assert_eq!(p.line, Some(2));
    assert_eq!(p.key.as_deref(), Some("http.listen"));
}

#[test]
fn missing_required_key() {
    let p = one_problem("[[proxy.routes]]\nprefix = \"5\"\n");
    assert!(p.message.contains("missing field `nodes`"), "{p}");
    assert!(p.line.is_some(), "{p:?}");
}

#[test]
fn semantic_errors_are_all_reported_with_lines() {
    let text = r#"[registrar]
min_expires = 7200
max_expires = 3600

[[proxy.routes]]
prefix = "5"
nodes = []

[[tenants]]
name = "demo"
[[tenants.users]]
user = "1001"
password = ""
[[tenants.users]]
user = "1001"
password = "x"
"#;
    let p = problems(text);
    let find = |key: &str| {
        p.iter()
            .find(|p| p.key.as_deref() == Some(key))
            .unwrap_or_else(|| panic!("no problem for {key} in {p:?}"))
    };
    assert_eq!(find("registrar.min_expires").line, Some(2));
    assert_eq!(find("proxy.routes[0].nodes").line, Some(7));
    assert_eq!(find("tenants[0].users[0].password").line, Some(13));
    let dup = find("tenants[0].users[1].user");
    assert_eq!(dup.line, Some(15));
    assert!(dup.message.contains("defined twice"), "{dup}");
    assert_eq!(p.len(), 4, "{p:?}");
}

#[test]
fn semantic_checks() {
    let cases: &[(&str, &str)] = &[
        ("[sip]\ndomain = \"\"\n", "sip.domain"),
        ("[sip]\nt1_ms = 0\n", "sip.t1_ms"),
        ("[sip]\nt2_ms = 100\n", "sip.t2_ms"),
        ("[sip]\nmax_message_bytes = 10\n", "sip.max_message_bytes"),
        (
            "[sip]\ntcp = \"127.0.0.1:9000\"\n[http]\nlisten = \"0.0.0.0:9000\"\n",
            "http.listen",
        ),
        ("[registrar]\ndefault_expires = 10\n", "registrar.default_expires"),
        ("[registrar]\nalgorithms = []\n", "registrar.algorithms"),
        (
            "[registrar]\nalgorithms = [\"MD5\", \"MD5\"]\n",
            "registrar.algorithms[1]",
        ),
        ("[proxy]\nnode_timeout_ms = 0\n", "proxy.node_timeout_ms"),
        (
            "[[proxy.routes]]\nprefix = \"5\"\nnodes = [\"127.0.0.1:5070\"]\n[[proxy.routes]]\nprefix = \"5\"\nnodes = [\"127.0.0.1:5071\"]\n",
            "proxy.routes[1].prefix",
        ),
        (
            "[[proxy.routes]]\nprefix = \"5\"\nnodes = [\"127.0.0.1:0\"]\n",
            "proxy.routes[0].nodes[0]",
        ),
        ("[[tenants]]\nname = \"a\"\n[[tenants]]\nname = \"a\"\ndomain = \"other\"\n", "tenants[1].name"),
        ("[[tenants]]\nname = \"a\"\n[[tenants]]\nname = \"b\"\n", "tenants[1].domain"),
        (
            "[[tenants]]\nname = \"a\"\n[[tenants.users]]\nuser = \"a b\"\npassword = \"x\"\n",
            "tenants[0].users[0].user",
        ),
    ];
    for (text, key) in cases {
        let p = problems(text);
        assert!(
            p.iter()
                .any(|p| p.key.as_deref() == Some(key) && p.line.is_some()),
            "{text:?}: expected a located problem for {key}, got {p:?}"
        );
    }
}

#[test]
fn validate_without_text_names_key() {
    let mut c = Config::demo();
    c.registrar.min_expires = 10_000;
    let err = c.validate().expect_err("invalid");
    assert_eq!(
        err.problems()[0].key.as_deref(),
        Some("registrar.min_expires")
    );
    assert_eq!(err.problems()[0].line, None);
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("sb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[sip]\nbogus = 1\n").expect("write");
    let err = Config::load(&path).expect_err("invalid");
    let shown = err.to_string();
    assert!(shown.contains("bad.toml"), "{shown}");
    assert!(shown.contains("line 2"), "{shown}");
    assert!(shown.contains("sip.bogus"), "{shown}");
    let missing = Config::load(dir.join("missing.toml")).expect_err("missing");
    assert!(matches!(missing, ConfigError::Read { .. }));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn passwords_are_not_in_debug_output() {
    let shown = format!("{:?}", Config::demo());
    assert!(!shown.contains("secret"), "{shown}");
}

#[test]
fn data_dir_store_and_bus() {
    let c = Config::from_toml_str(
        "data_dir = \"/var/lib/sb\"\n[store]\npath = \"cfg.db\"\n[bus]\nbackend = \"redis\"\nredis_url = \"redis://10.0.0.1:6380\"\n",
    )
    .expect("valid");
    assert_eq!(c.bus.backend, BusBackend::Redis);
    assert_eq!(c.store_path(), PathBuf::from("/var/lib/sb/cfg.db"));
    assert_eq!(c.bus_path(), PathBuf::from("/var/lib/sb/bus.db"));
    let d = Config::default();
    assert_eq!(d.data_dir, PathBuf::from("./data"));
    assert_eq!(d.bus.backend, BusBackend::Embedded);
    assert_eq!(d.store_path(), PathBuf::from("./data/switchboard.db"));
    let abs = Config::from_toml_str("[store]\npath = \"/tmp/x.db\"\n").expect("valid");
    assert_eq!(abs.store_path(), PathBuf::from("/tmp/x.db"));

    let p = one_problem("[bus]\nbackend = \"kafka\"\n");
    assert_eq!(p.key.as_deref(), Some("bus.backend"));
    assert_eq!(p.line, Some(2));
    let p = one_problem("[bus]\nbackend = \"redis\"\nredis_url = \"http://x\"\n");
    assert_eq!(p.key.as_deref(), Some("bus.redis_url"));
    assert_eq!(p.line, Some(3));
    let p = one_problem("[store]\npath = \"\"\n");
    assert_eq!(p.key.as_deref(), Some("store.path"));
    assert_eq!(p.line, Some(2));
    let p = one_problem("data_dir = \"\"\n");
    assert_eq!(p.key.as_deref(), Some("data_dir"));
    assert_eq!(p.line, Some(1));
}

#[test]
fn voicemail_keys() {
    let c = Config::from_toml_str(
        "data_dir = \"/var/lib/sb\"\n[voicemail]\ndir = \"vm\"\nmcp = \"127.0.0.1:5081\"\nurl = \"http://10.0.0.2:8080\"\nudp = \"\"\n",
    )
    .expect("valid");
    assert_eq!(c.voicemail_dir(), PathBuf::from("/var/lib/sb/vm"));
    assert_eq!(c.voicemail.mcp, Some("127.0.0.1:5081".parse().unwrap()));
    assert_eq!(c.voicemail.url, "http://10.0.0.2:8080");
    assert_eq!(c.voicemail.udp, None, "message waiting off");
    let d = Config::default();
    assert_eq!(d.voicemail_dir(), PathBuf::from("./data/voicemail"));
    assert_eq!((d.voicemail.mcp, d.voicemail.url.as_str()), (None, ""));
    assert_eq!(d.voicemail.udp.map(|a| a.port()), Some(0));

    let p = one_problem("[voicemail]\nurl = \"ftp://x\"\n");
    assert_eq!(p.key.as_deref(), Some("voicemail.url"));
    assert_eq!(p.line, Some(2));
    let p = one_problem("[voicemail]\nurl = \"http://x/?a\"\n");
    assert_eq!(p.key.as_deref(), Some("voicemail.url"));
    let p = one_problem("[voicemail]\ndir = \"\"\n");
    assert_eq!(p.key.as_deref(), Some("voicemail.dir"));
    let p = one_problem("[voicemail]\nmcp = \"nope\"\n");
    assert_eq!(p.key.as_deref(), Some("voicemail.mcp"));
}

#[test]
fn load_resolves_data_dir_against_the_file() {
    let dir = std::env::temp_dir().join(format!("sb-config-dd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("sb.toml");
    std::fs::write(&path, "data_dir = \"state\"\n").expect("write");
    let c = Config::load(&path).expect("valid");
    assert_eq!(c.data_dir, dir.join("state"));
    assert_eq!(c.store_path(), dir.join("state").join("switchboard.db"));
    std::fs::write(&path, "data_dir = \"/abs\"\n").expect("write");
    assert_eq!(
        Config::load(&path).expect("valid").data_dir,
        PathBuf::from("/abs")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tenant with one skill, one group, one trunk and a few DNs, followed by `extra`.
fn tenant_with(extra: &str) -> String {
    format!(
        r#"[[tenants]]
name = "t"
[[tenants.skills]]
name = "sales"
[[tenants.agent_groups]]
name = "g"
[[tenants.trunks]]
name = "carrier"
addresses = ["192.0.2.1"]
[[tenants.dns]]
number = "1001"
kind = "extension"
[[tenants.dns]]
number = "5000"
kind = "route_point"
[[tenants.dns]]
number = "6000"
kind = "queue"
{extra}"#
    )
}

#[test]
fn demo_is_a_contact_center() {
    let demo = Config::demo();
    let t = &demo.tenants[0];
    assert_eq!(t.dns.len(), 13);
    assert_eq!(t.dn("5000").map(|d| d.kind), Some(DnKind::RoutePoint));
    assert_eq!(t.dn("6000").map(|d| d.kind), Some(DnKind::Queue));
    assert_eq!(t.dn("7000").map(|d| d.kind), Some(DnKind::VoicemailAccess));
    assert_eq!(t.agents.len(), 10);
    assert_eq!(t.agents[0].login_id, "a1001");
    assert_eq!(t.agents[0].dn.as_deref(), Some("1001"));
    assert!(t.agents.iter().any(|a| a.skills.contains_key("spanish")));
    assert_eq!(t.route_points[0].strategy_url, "builtin:demo-strategy");
    assert_eq!(t.trunks[0].addresses, vec!["127.0.0.1".to_owned()]);
    assert!(t.entity_problems().is_empty(), "{:?}", t.entity_problems());
    assert!(!format!("{demo:?}").contains("1234"), "PINs are redacted");
}

#[test]
fn entities_parse() {
    let text = tenant_with(
        r#"[[tenants.agents]]
login_id = "alice"
dn = "1001"
skills = { sales = 7 }
groups = ["g"]
[[tenants.route_points]]
number = "5000"
strategy_url = "https://example.com/s.scxml"
[[tenants.dialplan]]
name = "ext"
priority = 1
range = "2000-2999"
route = "local"
[[tenants.mailboxes]]
number = "1"
owner_agent = "alice"
pin = "0000"
"#,
    );
    let c = Config::from_toml_str(&text).expect("valid");
    let t = &c.tenants[0];
    assert_eq!(t.agents[0].skills.get("sales"), Some(&7));
    assert_eq!(t.dialplan[0].applies_to, RuleScope::Any);
    assert_eq!(
        t.dialplan[0].pattern(),
        Some(RulePattern::Range("2000", "2999"))
    );
    assert_eq!(t.mailboxes[0].max_message_s, 120);
    assert_eq!(t.mailboxes[0].retention_days, 30);
}

#[test]
fn entity_unknown_key_names_key_and_line() {
    let text = tenant_with("[[tenants.agents]]\nlogin_id = \"a\"\nskill = 1\n");
    let p = one_problem(&text);
    assert_eq!(p.key.as_deref(), Some("tenants[0].agents[0].skill"));
    assert_eq!(p.line, Some(text.lines().count()));
    let text = tenant_with("[[tenants.dns]]\nnumber = \"1\"\nkind = \"phone\"\n");
    let p = one_problem(&text);
    assert_eq!(p.key.as_deref(), Some("tenants[0].dns[3].kind"));
    assert_eq!(p.line, Some(text.lines().count()));
}

#[test]
fn entity_semantic_checks() {
    let cases: &[(&str, &str)] = &[
        ("[[tenants.dns]]\nnumber = \"10 01\"\nkind = \"extension\"\n", "tenants[0].dns[3].number"),
        ("[[tenants.dns]]\nnumber = \"1001\"\nkind = \"extension\"\n", "tenants[0].dns[3].number"),
        ("[[tenants.dns]]\nnumber = \"1\"\nkind = \"extension\"\nmailbox = \"9\"\n", "tenants[0].dns[3].mailbox"),
        ("[[tenants.dns]]\nnumber = \"1\"\nkind = \"extension\"\nno_answer_timeout_s = 0\n", "tenants[0].dns[3].no_answer_timeout_s"),
        ("[[tenants.dns]]\nnumber = \"1\"\nkind = \"extension\"\nagent_group = \"g\"\n", "tenants[0].dns[3].agent_group"),
        ("[[tenants.dns]]\nnumber = \"1\"\nkind = \"queue\"\nagent_group = \"nope\"\n", "tenants[0].dns[3].agent_group"),
        ("[[tenants.dns]]\nnumber = \"1\"\nkind = \"trunk\"\n", "tenants[0].dns[3].trunk"),
        ("[[tenants.dns]]\nnumber = \"1\"\nkind = \"trunk\"\ntrunk = \"other\"\n", "tenants[0].dns[3].trunk"),
        ("[[tenants.agents]]\nlogin_id = \"a b\"\n", "tenants[0].agents[0].login_id"),
        ("[[tenants.agents]]\nlogin_id = \"a\"\n[[tenants.agents]]\nlogin_id = \"a\"\n", "tenants[0].agents[1].login_id"),
        ("[[tenants.agents]]\nlogin_id = \"a\"\ndn = \"9999\"\n", "tenants[0].agents[0].dn"),
        ("[[tenants.agents]]\nlogin_id = \"a\"\ndn = \"5000\"\n", "tenants[0].agents[0].dn"),
        ("[[tenants.agents]]\nlogin_id = \"a\"\nskills = { cooking = 1 }\n", "tenants[0].agents[0].skills.cooking"),
        ("[[tenants.agents]]\nlogin_id = \"a\"\nskills = { sales = 101 }\n", "tenants[0].agents[0].skills.sales"),
        ("[[tenants.agents]]\nlogin_id = \"a\"\ngroups = [\"g\", \"x\"]\n", "tenants[0].agents[0].groups[1]"),
        ("[[tenants.route_points]]\nnumber = \"1001\"\nstrategy_url = \"builtin:x\"\n", "tenants[0].route_points[0].number"),
        ("[[tenants.route_points]]\nnumber = \"5000\"\nstrategy_url = \"ftp://x\"\n", "tenants[0].route_points[0].strategy_url"),
        ("[[tenants.route_points]]\nnumber = \"5000\"\nstrategy_url = \"builtin:x\"\ntimeout_s = 0\n", "tenants[0].route_points[0].timeout_s"),
        ("[[tenants.route_points]]\nnumber = \"5000\"\nstrategy_url = \"builtin:x\"\ndefault_route = \"1 2\"\n", "tenants[0].route_points[0].default_route"),
        ("[[tenants.dns]]\nnumber = \"1\"\nkind = \"extension\"\nforward_busy = \"x\"\n", "tenants[0].dns[3].forward_busy"),
        ("[[tenants.trunks]]\nname = \"b\"\naddresses = []\n", "tenants[0].trunks[1].addresses"),
        ("[[tenants.trunks]]\nname = \"b\"\naddresses = [\"gw.example\"]\n", "tenants[0].trunks[1].addresses[0]"),
        ("[[tenants.trunks]]\nname = \"b\"\naddresses = [\"192.0.2.1:5060\"]\n", "tenants[0].trunks[1].addresses[0]"),
        ("[[tenants.trunks]]\nname = \"b\"\naddresses = [\"192.0.2.2\"]\ndids = [{ first = \"+1555\", last = \"+15550\" }]\n", "tenants[0].trunks[1].dids[0].last"),
        ("[[tenants.trunks]]\nname = \"b\"\naddresses = [\"192.0.2.2\"]\ndids = [{ first = \"200\", last = \"100\" }]\n", "tenants[0].trunks[1].dids[0].last"),
        ("[[tenants.trunks]]\nname = \"b\"\naddresses = [\"192.0.2.2\"]\ndids = [{ first = \"1x\", last = \"19\" }]\n", "tenants[0].trunks[1].dids[0].first"),
        ("[[tenants.trunks]]\nname = \"b\"\naddresses = [\"192.0.2.2\"]\ndids = [{ first = \"100\", last = \"199\" }, { first = \"150\", last = \"250\" }]\n", "tenants[0].trunks[1].dids[1].first"),
        ("[[tenants.trunks]]\nname = \"b\"\naddresses = [\"192.0.2.2\"]\ndids = [{ first = \"100\", last = \"199\", target = \"4\" }]\n", "tenants[0].trunks[1].dids[0].target"),
        ("[[tenants.dialplan]]\nname = \"r\"\npriority = 1\nroute = \"local\"\n", "tenants[0].dialplan[0].prefix"),
        ("[[tenants.dialplan]]\nname = \"r\"\npriority = 1\nprefix = \"9\"\nregex = \"^9\"\nroute = \"local\"\n", "tenants[0].dialplan[0].regex"),
        ("[[tenants.dialplan]]\nname = \"r\"\npriority = 1\nrange = \"10-5\"\nroute = \"local\"\n", "tenants[0].dialplan[0].range"),
        ("[[tenants.dialplan]]\nname = \"r\"\npriority = 1\nrange = \"100-2000\"\nroute = \"local\"\n", "tenants[0].dialplan[0].range"),
        ("[[tenants.dialplan]]\nname = \"r\"\npriority = 1\nregex = \"(\"\nroute = \"local\"\n", "tenants[0].dialplan[0].regex"),
        ("[[tenants.dialplan]]\nname = \"r\"\npriority = 1\nprefix = \"9\"\nreplace = { regex = \"[\", with = \"\" }\nroute = \"local\"\n", "tenants[0].dialplan[0].replace.regex"),
        ("[[tenants.dialplan]]\nname = \"r\"\npriority = 1\nprefix = \"9\"\nroute = \"external\"\n", "tenants[0].dialplan[0].trunk"),
        ("[[tenants.dialplan]]\nname = \"r\"\npriority = 1\nprefix = \"9\"\nroute = \"local\"\ntrunk = \"carrier\"\n", "tenants[0].dialplan[0].trunk"),
        ("[[tenants.dialplan]]\nname = \"resolve\"\npriority = 1\nprefix = \"9\"\nroute = \"local\"\n", "tenants[0].dialplan[0].name"),
        ("[[tenants.dialplan]]\nname = \"r\"\npriority = 1\nprefix = \"9\"\nadd_prefix = \"x\"\nroute = \"local\"\n", "tenants[0].dialplan[0].add_prefix"),
        ("[[tenants.mailboxes]]\nnumber = \"1\"\npin = \"1234\"\n", "tenants[0].mailboxes[0].owner_agent"),
        ("[[tenants.mailboxes]]\nnumber = \"1\"\nowner_group = \"g\"\npin = \"12\"\n", "tenants[0].mailboxes[0].pin"),
        ("[[tenants.mailboxes]]\nnumber = \"1\"\nowner_group = \"g\"\nowner_agent = \"x\"\npin = \"1234\"\n", "tenants[0].mailboxes[0].owner_group"),
        ("[[tenants.mailboxes]]\nnumber = \"1\"\nowner_group = \"g\"\npin = \"1234\"\nmax_messages = 0\n", "tenants[0].mailboxes[0].max_messages"),
        ("[[tenants.mailboxes]]\nnumber = \"1\"\nowner_agent = \"nobody\"\npin = \"1234\"\n", "tenants[0].mailboxes[0].owner_agent"),
        ("[[tenants.skills]]\nname = \"sales\"\n", "tenants[0].skills[1].name"),
        ("[[tenants.agent_groups]]\nname = \"a b\"\n", "tenants[0].agent_groups[1].name"),
        (
            "[[tenants]]\nname = \"u\"\ndomain = \"u.example\"\n[[tenants.trunks]]\nname = \"carrier\"\naddresses = [\"192.0.2.9\"]\n",
            "tenants[1].trunks[0].name",
        ),
        (
            "[[tenants]]\nname = \"u\"\ndomain = \"u.example\"\n[[tenants.trunks]]\nname = \"other\"\naddresses = [\"192.0.2.1:5080\"]\n",
            "tenants[1].trunks[0].addresses[0]",
        ),
    ];
    for (extra, key) in cases {
        let text = tenant_with(extra);
        let p = problems(&text);
        assert!(
            p.iter()
                .any(|p| p.key.as_deref() == Some(key) && p.line.is_some()),
            "{extra:?}: expected a located problem for {key}, got {p:?}"
        );
    }
}

#[test]
fn entity_problems_are_relative_to_the_tenant() {
    let mut t = Config::demo().tenants.remove(0);
    t.agents[2].dn = Some("42".to_owned());
    let p = t.entity_problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key.as_deref(), Some("agents[2].dn"));
    assert_eq!(p[0].line, None);
}

#[test]
fn dial_rule_exact_pattern() {
    let text = tenant_with(
        "[[tenants.dialplan]]\nname = \"op\"\npriority = 1\nexact = \"0\"\nadd_prefix = \"1001\"\nroute = \"local\"\n",
    );
    let c = Config::from_toml_str(&text).expect("valid");
    assert_eq!(
        c.tenants[0].dialplan[0].pattern(),
        Some(RulePattern::Exact("0"))
    );
    let text = tenant_with(
        "[[tenants.dialplan]]\nname = \"op\"\npriority = 1\nexact = \"0\"\nprefix = \"0\"\nroute = \"local\"\n",
    );
    let p = one_problem(&text);
    assert_eq!(p.key.as_deref(), Some("tenants[0].dialplan[0].exact"));
    assert!(p.message.contains("exactly one pattern"), "{p:?}");
    let text = tenant_with(
        "[[tenants.dialplan]]\nname = \"op\"\npriority = 1\nexact = \"0x\"\nroute = \"local\"\n",
    );
    let p = one_problem(&text);
    assert_eq!(p.key.as_deref(), Some("tenants[0].dialplan[0].exact"));
}

#[test]
fn api_key_problems_name_the_key() {
    let text = r#"
[http]
admin_keys = ["platform-admin-key-1"]

[[tenants]]
name = "a"
[[tenants.agents]]
login_id = "ag1"
[[tenants.api_keys]]
name = "short"
key = "tooshort"
role = "admin"
[[tenants.api_keys]]
name = "agent-without-agent"
key = "0123456789abcdef-x"
role = "agent"
[[tenants.api_keys]]
name = "sup"
key = "0123456789abcdef-y"
role = "supervisor"
agent = "ag1"

[[tenants]]
name = "b"
domain = "b.example"
[[tenants.api_keys]]
name = "reused"
key = "platform-admin-key-1"
role = "admin"
"#;
    let p = problems(text);
    let keys: Vec<(&str, &str)> = p
        .iter()
        .map(|p| (p.key.as_deref().unwrap_or(""), p.message.as_str()))
        .collect();
    assert_eq!(p.len(), 4, "{keys:?}");
    assert!(keys.contains(&(
        "tenants[0].api_keys[0].key",
        "must be at least 16 characters"
    )));
    assert!(keys
        .iter()
        .any(|(k, m)| *k == "tenants[0].api_keys[1].agent" && m.contains("names its agent")));
    assert!(keys
        .iter()
        .any(|(k, m)| *k == "tenants[0].api_keys[2].agent" && m.contains("supervisor key")));
    assert!(keys
        .iter()
        .any(|(k, m)| *k == "tenants[1].api_keys[0].key" && m.contains("more than once")));
    // The secret never shows in Debug output.
    let demo = Config::demo();
    assert!(!format!("{demo:?}").contains("demo-admin-key-change-me"));
    assert_eq!(demo.http.auth, HttpAuth::ApiKeys);
    assert_eq!(
        Config::from_toml_str("[http]\nauth = \"none\"")
            .unwrap()
            .http
            .auth,
        HttpAuth::None
    );
}

#[test]
fn orchestrator_limits() {
    let c = Config::from_toml_str("[orchestrator]\nlease_ms = 800\nmax_session_s = 60\n")
        .expect("valid");
    assert_eq!(
        (c.orchestrator.lease_ms, c.orchestrator.max_session_s),
        (800, 60)
    );
    let p = one_problem("[orchestrator]\nlease_ms = 50\n");
    assert_eq!(p.key.as_deref(), Some("orchestrator.lease_ms"));
    assert_eq!(p.line, Some(2));
    let p = one_problem("[orchestrator]\nmax_session_s = 0\n");
    assert_eq!(p.key.as_deref(), Some("orchestrator.max_session_s"));
}
