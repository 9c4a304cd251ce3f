use rusqlite::Connection;
use switchboard_config::Config;

use crate::sqlite::{Migration, SqliteStore, MIGRATIONS};
use crate::*;

fn store() -> SqliteStore {
    SqliteStore::open_in_memory().expect("store opens")
}

fn demo_store() -> SqliteStore {
    let s = store();
    s.seed(&Config::demo()).expect("demo seeds");
    s
}

fn json(kind: Kind, text: &str) -> Record {
    Record::parse_json(kind, text.as_bytes()).expect("valid body")
}

#[test]
fn migrations_ascend_and_apply_at_open() {
    let mut last = 0;
    for m in MIGRATIONS {
        assert!(m.version > last, "migration {} out of order", m.version);
        last = m.version;
    }
    let s = store();
    assert_eq!(s.schema_version().unwrap(), last);
}

#[test]
fn migrations_resume_from_an_older_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let conn = Connection::open(&path).unwrap();
        let s = SqliteStore::with_connection(conn, &MIGRATIONS[..1]).unwrap();
        assert_eq!(s.schema_version().unwrap(), 1);
        s.create_tenant(&TenantInfo::new("a", "a.example").unwrap())
            .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(
        s.schema_version().unwrap(),
        MIGRATIONS.last().unwrap().version
    );
    // The data of version 1 is still there, and version 2's unique domain index works.
    assert_eq!(s.tenants().unwrap().len(), 1);
    let e = s
        .create_tenant(&TenantInfo::new("b", "a.example").unwrap())
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict { ref field, .. } if field == "domain"),
        "{e}"
    );
    // Opening again applies nothing and keeps the data.
    drop(s);
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.tenants().unwrap().len(), 1);
}

#[test]
fn a_failing_migration_rolls_back_the_whole_open() {
    let conn = Connection::open_in_memory().unwrap();
    let broken = [
        MIGRATIONS[0],
        Migration {
            version: 2,
            name: "broken",
            sql: "CREATE TABLE extra (x INTEGER); THIS IS NOT SQL;",
        },
    ];
    let e = SqliteStore::with_connection(conn, &broken)
        .err()
        .expect("the broken migration fails");
    assert!(e.to_string().contains("migration 2 (broken)"), "{e}");

    // On a file: nothing of the failed open stays behind, not even migration 1.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let e = SqliteStore::with_connection(Connection::open(&path).unwrap(), &broken);
    assert!(e.is_err());
    let conn = Connection::open(&path).unwrap();
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 0);
    let tables: u32 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
}

#[test]
fn a_newer_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let e = SqliteStore::open(&path).err().expect("refused");
    assert!(e.to_string().contains("newer"), "{e}");
}

#[test]
fn seeding_is_idempotent_and_the_store_wins() {
    let s = store();
    let config = Config::demo();
    let first = s.seed(&config).unwrap();
    assert_eq!(first.created, vec!["demo".to_string()]);
    let loaded = s.load("demo").unwrap().expect("demo");
    let demo = &config.tenants[0];
    assert_eq!(loaded.dns, demo.dns);
    assert_eq!(loaded.agents, demo.agents);
    assert_eq!(loaded.dialplan, demo.dialplan);
    assert_eq!(loaded.trunks, demo.trunks);
    assert_eq!(loaded.mailboxes, demo.mailboxes);
    assert!(loaded.users.is_empty(), "SIP users stay in the file");

    // A change through the store survives a second seed.
    s.delete("demo", Kind::DialRule, "operator").unwrap();
    let again = s.seed(&config).unwrap();
    assert!(again.created.is_empty());
    assert_eq!(again.kept, vec!["demo".to_string()]);
    assert!(s.get("demo", Kind::DialRule, "operator").unwrap().is_none());
}

#[test]
fn crud_of_a_dn() {
    let s = demo_store();
    let rev = s.revision();
    let changes = s.subscribe();
    let change = s
        .create(
            "demo",
            json(
                Kind::Dn,
                r#"{"number":"2001","kind":"extension","name":"Desk"}"#,
            ),
        )
        .unwrap();
    assert_eq!(change.op, Op::Created);
    assert_eq!(change.revision, rev + 1);
    assert!(changes.has_changed().unwrap());
    let Some(Record::Dn(dn)) = s.get("demo", Kind::Dn, "2001").unwrap() else {
        panic!("DN 2001 stored");
    };
    assert_eq!(dn.name, "Desk");
    assert_eq!(dn.kind, DnKind::Extension);

    // Listed after the demo's DNs, in creation order.
    let list = s.list("demo", Kind::Dn).unwrap();
    assert_eq!(list.last().map(Record::key), Some("2001"));

    s.replace(
        "demo",
        "2001",
        json(
            Kind::Dn,
            r#"{"number":"2001","kind":"extension","name":"Front desk"}"#,
        ),
    )
    .unwrap();
    let Some(Record::Dn(dn)) = s.get("demo", Kind::Dn, "2001").unwrap() else {
        panic!("DN 2001 stored");
    };
    assert_eq!(dn.name, "Front desk");

    s.delete("demo", Kind::Dn, "2001").unwrap();
    assert!(s.get("demo", Kind::Dn, "2001").unwrap().is_none());
    assert!(matches!(
        s.delete("demo", Kind::Dn, "2001"),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.revision(), rev + 3);
}

#[test]
fn duplicates_are_refused() {
    let s = demo_store();
    let e = s
        .create(
            "demo",
            json(Kind::Dn, r#"{"number":"1001","kind":"extension"}"#),
        )
        .unwrap_err();
    assert_eq!(
        e,
        StoreError::Duplicate {
            kind: Kind::Dn,
            key: "1001".into()
        }
    );
    let e = s
        .create_tenant(&TenantInfo::new("demo", "other").unwrap())
        .unwrap_err();
    assert_eq!(e, StoreError::TenantExists("demo".into()));
}

#[test]
fn invalid_fields_are_named() {
    let s = demo_store();
    let cases: &[(Kind, &str, &str)] = &[
        (Kind::Dn, r#"{"number":"12a","kind":"extension"}"#, "number"),
        (Kind::Dn, r#"{"number":"2002","kind":"trunk"}"#, "trunk"),
        (Kind::Agent, r#"{"login_id":"x","dn":"9999"}"#, "dn"),
        (
            Kind::Agent,
            r#"{"login_id":"y","skills":{"sales":101}}"#,
            "skills.sales",
        ),
        (
            Kind::Agent,
            r#"{"login_id":"z","skills":{"golf":1}}"#,
            "skills.golf",
        ),
        (
            Kind::DialRule,
            r#"{"name":"r","priority":1,"range":"3000-299","route":"local"}"#,
            "range",
        ),
        (
            Kind::DialRule,
            r#"{"name":"r","priority":1,"regex":"(","route":"local"}"#,
            "regex",
        ),
        (
            Kind::DialRule,
            r#"{"name":"r","priority":1,"prefix":"9","route":"external"}"#,
            "trunk",
        ),
        (
            Kind::Trunk,
            r#"{"name":"t2","addresses":["not an ip"]}"#,
            "addresses[0]",
        ),
        (
            Kind::RoutePoint,
            r#"{"number":"1001","strategy_url":"builtin:x"}"#,
            "number",
        ),
        (
            Kind::Mailbox,
            r#"{"number":"8300","owner_group":"sales","pin":"12"}"#,
            "pin",
        ),
    ];
    for (kind, body, field) in cases {
        match s.create("demo", json(*kind, body)) {
            Err(StoreError::Invalid { field: f, message }) => {
                assert_eq!(&f, field, "{body}: {message}")
            }
            other => panic!("{body}: expected Invalid on {field}, got {other:?}"),
        }
    }
}

#[test]
fn malformed_bodies_name_the_field() {
    let cases = [
        (Kind::Dn, r#"{"kind":"extension"}"#, "number"),
        (
            Kind::Dn,
            r#"{"number":"1","kind":"extension","colour":"red"}"#,
            "colour",
        ),
        (Kind::Dn, r#"{"number":5,"kind":"extension"}"#, "number"),
        (Kind::Dn, r#"{"number":"5","kind":"phone"}"#, "kind"),
        (
            Kind::Trunk,
            r#"{"name":"t","addresses":["1.2.3.4"],"dids":[{"first":1}]}"#,
            "dids[0].first",
        ),
    ];
    for (kind, body, field) in cases {
        let e = Record::parse_json(kind, body.as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{body}: {e}");
    }
    let e = Record::parse_json(Kind::Dn, b"{not json").unwrap_err();
    assert_eq!(e.field, "");
    let e = Record::parse_json(Kind::Dn, br#"{"number":"1","kind":"queue"} x"#).unwrap_err();
    assert!(e.message.contains("trailing"), "{e}");
    let e = TenantInfo::parse_json(br#"{"name":"a b","domain":"x"}"#).unwrap_err();
    assert_eq!(e.field, "name");
    let e = TenantInfo::parse_json(br#"{"name":"ab","domain":""}"#).unwrap_err();
    assert_eq!(e.field, "domain");
}

#[test]
fn references_block_deletes_and_kind_changes() {
    let s = demo_store();
    // Agent a1001 sits on DN 1001.
    let e = s.delete("demo", Kind::Dn, "1001").unwrap_err();
    match e {
        StoreError::Conflict { field, .. } => assert_eq!(field, "agents/a1001.dn"),
        other => panic!("{other:?}"),
    }
    let e = s
        .replace(
            "demo",
            "1001",
            json(Kind::Dn, r#"{"number":"1001","kind":"queue"}"#),
        )
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict { ref field, .. } if field == "agents/a1001.dn"),
        "{e:?}"
    );
    // The trunk is used by dial-plan rules and DID ranges of the tenant.
    assert!(matches!(
        s.delete("demo", Kind::Trunk, "carrier"),
        Err(StoreError::Conflict { .. })
    ));
    // A key that differs from the path is refused.
    let e = s
        .replace(
            "demo",
            "1001",
            json(Kind::Dn, r#"{"number":"1002","kind":"extension"}"#),
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { ref field, .. } if field == "number"));
}

#[test]
fn unknown_tenants_and_entities() {
    let s = demo_store();
    assert_eq!(
        s.list("nope", Kind::Dn).unwrap_err(),
        StoreError::NoTenant("nope".into())
    );
    assert_eq!(
        s.create("nope", json(Kind::Skill, r#"{"name":"x"}"#))
            .unwrap_err(),
        StoreError::NoTenant("nope".into())
    );
    assert!(s.get("demo", Kind::Agent, "nobody").unwrap().is_none());
    assert!(matches!(
        s.replace("demo", "x", json(Kind::Skill, r#"{"name":"x"}"#)),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn trunks_are_unique_across_tenants() {
    let s = demo_store();
    s.create_tenant(&TenantInfo::new("acme", "acme.example").unwrap())
        .unwrap();
    let e = s
        .create(
            "acme",
            json(
                Kind::Trunk,
                r#"{"name":"carrier","addresses":["192.0.2.1"]}"#,
            ),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Duplicate {
                kind: Kind::Trunk,
                ..
            }
        ),
        "{e:?}"
    );
    let e = s
        .create(
            "acme",
            json(
                Kind::Trunk,
                r#"{"name":"sbc","addresses":["127.0.0.1:5090"]}"#,
            ),
        )
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict { ref field, .. } if field == "addresses[0]"),
        "{e:?}"
    );
    s.create(
        "acme",
        json(
            Kind::Trunk,
            r#"{"name":"sbc","addresses":["192.0.2.1:5060"]}"#,
        ),
    )
    .unwrap();
}

#[test]
fn deleting_a_tenant_deletes_its_entities() {
    let s = demo_store();
    s.delete_tenant("demo").unwrap();
    assert!(s.load("demo").unwrap().is_none());
    assert_eq!(
        s.delete_tenant("demo").unwrap_err(),
        StoreError::NoTenant("demo".into())
    );
    // Its trunk name is free again.
    s.create_tenant(&TenantInfo::new("acme", "acme.example").unwrap())
        .unwrap();
    s.create(
        "acme",
        json(
            Kind::Trunk,
            r#"{"name":"carrier","addresses":["127.0.0.1"]}"#,
        ),
    )
    .unwrap();
    let all = s.load_all().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].trunks.len(), 1);
}

#[test]
fn the_store_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.seed(&Config::demo()).unwrap();
        s.create("demo", json(Kind::Skill, r#"{"name":"french"}"#))
            .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert!(s.get("demo", Kind::Skill, "french").unwrap().is_some());
    assert_eq!(
        s.revision(),
        0,
        "revisions count the changes of this process"
    );
}
